"""The README's tour, run as written, top to bottom: every command of its bash blocks in one
shell, each curl failing on an HTTP error. A step that fails fails the test."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(900)
PORT = 8000  # the tour's own


def tour() -> list[str]:
    """The bash blocks of the README's "The tour" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## The tour\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    blocks = tour()
    assert len(blocks) == 4 and "lrtune submit" in blocks[1] and "curl" in blocks[2]
    assert "--lr auto" in blocks[3]
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", PORT)) == 0:
            pytest.fail(f"the tour serves on port {PORT}, which something else holds")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    script = "\n".join([
        "set -euo pipefail",
        # every curl fails on an HTTP error (the tour's own -f stays -s: the two exclude)
        'curl() { local a args=(); for a in "$@"; do [ "$a" = -fs ] && a=-s; args+=("$a");'
        ' done; command curl --fail-with-body --max-time 120 "${args[@]}" || return $?;'
        ' echo; }',
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",
        *blocks])
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRTUNE_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", LRTUNE_TORCH_THREADS="1")
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=800)
    log = (tmp_path / "serve.log").read_text() if (tmp_path / "serve.log").exists() else ""
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:], log[-3000:])
    for made in ("plots", "lr.png", "t0.png", "lr_find.png"):
        assert (tmp_path / made).exists(), made
    assert "optimizer = torch.optim." in proc.stdout  # the best schedule as code
    assert "Traceback" not in log


def test_tune_your_own_code_runs_as_written(tmp_path: Path) -> None:
    """The "Tune your own training code" commands, as a user types them (the installs done)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Tune your own training code\n", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    lines = [line for line in block.splitlines() if not line.startswith("pip install")]
    assert len(lines) == 3 and "lrtune serve --workers 0 &" in lines[0]
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", PORT)) == 0:
            pytest.fail(f"the section serves on port {PORT}, which something else holds")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    script = "\n".join(["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",
                        *lines])
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRTUNE_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", LRTUNE_TORCH_THREADS="1")
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    assert "study 1 created" in proc.stdout and "status='done'" in proc.stdout
    assert proc.stdout.count("training Trial(") >= 1
