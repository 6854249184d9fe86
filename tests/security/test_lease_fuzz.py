"""schemathesis against the lease routes on a real server, once with an owner token and once
with a worker token: no 5xx, every answer as the OpenAPI declares it, and a 2xx from every
lease route (each run's leases are its own token's, so the fuzzer's calls can succeed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CONVERGING_LR, free_port, lrtune_env, spawn, stop, wait_ready

ROUTES = {"POST /v1/leases", "POST /v1/leases/{lease_id}/heartbeat",
          "POST /v1/leases/{lease_id}/report", "POST /v1/leases/{lease_id}/finish",
          "POST /v1/leases/{lease_id}/release"}
WORKER = "lrt_fuzz_worker_token"


@pytest.fixture
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh server per run: each run's leases hold the trial numbers its examples name."""
    tmp: Path = tmp_path_factory.mktemp("lease-fuzz")
    env = lrtune_env(f"sqlite:///{tmp / 'fuzz.db'}", LRTUNE_WORKER_TOKENS=WORKER,
                     LRTUNE_HEARTBEAT_GRACE="600", LRTUNE_MAX_PACK="8")
    owner = subprocess.run([sys.executable, "-m", "lrtune", "token", "create"], env=env,
                           capture_output=True, text=True, check=True, timeout=60
                           ).stdout.strip()
    port = free_port()
    server = spawn(["serve", "--port", str(port), "--workers", "0"], env, tmp / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server)
        headers = {"Authorization": f"Bearer {owner}"}
        cheap = {"pruner": {"name": "none"}, "sampler": {"name": "random"}}  # claims stay fast
        for spec in ({"name": "fuzz-external", "task": "external", "epochs": 5,
                      "n_trials": 5000, **cheap},
                     {"name": "fuzz-linreg", "task": "linreg", "epochs": 5, "n_trials": 5000,
                      "space": {"lr": CONVERGING_LR}, **cheap}):
            r = httpx.post(f"{url}/studies", json=spec, headers=headers, timeout=30)
            assert r.status_code == 201, r.text
        yield url, {"owner": owner, "worker": WORKER}
    finally:
        stop(server)


def leases(url: str, token: str) -> tuple[int, int]:
    """Two leases of this token of 8 trials each: one the fuzzer reports on (its examples
    name trials 5 and 7 of the first), one it may release."""
    headers = {"Authorization": f"Bearer {token}"}
    ids = []
    for _ in range(2):
        r = httpx.post(f"{url}/v1/leases", json={"count": 8}, headers=headers, timeout=60)
        assert r.status_code == 201, r.text
        ids.append(r.json()["lease"])
    return ids[0], ids[1]


def routes_answered_2xx(har: Path) -> set[str]:
    answered: dict[str, set[int]] = defaultdict(set)
    for entry in json.loads(har.read_text())["log"]["entries"]:
        path = re.sub(r"^https?://[^/]+", "", entry["request"]["url"]).split("?")[0]
        template = re.sub(r"^/v1/leases/[^/]+/", "/v1/leases/{lease_id}/", path)
        answered[f"{entry['request']['method']} {template}"].add(entry["response"]["status"])
    return {route for route, codes in answered.items() if any(200 <= c < 300 for c in codes)}


@pytest.mark.parametrize("role", ["owner", "worker"])
def test_lease_routes_conform_and_answer(api: tuple[str, dict[str, str]], role: str,
                                         tmp_path: Path) -> None:
    url, tokens = api
    fuzzed, released = leases(url, tokens[role])
    config = tmp_path / "schemathesis.toml"
    config.write_text(f"""
[parameters]
"path.lease_id" = {fuzzed}

# a body over the byte limit (LRTUNE_MAX_BODY_BYTES) is refused as such, whatever it holds
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 409, 413, 422]

[[operations]]
include-path = "/v1/leases/{{lease_id}}/release"
parameters = {{ "path.lease_id" = {released} }}
""")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "--config-file", str(config), "run",
         f"{url}/openapi.json", "--include-path-regex", "^/v1/", "--checks", "all",
         "--max-examples", "40", "--seed", "2", "--exclude-checks",
         "positive_data_acceptance", "-H", f"Authorization: Bearer {tokens[role]}",
         "--report", "har", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    har = next(tmp_path.glob("har-*.json"))
    assert routes_answered_2xx(har) >= ROUTES, proc.stdout[-3000:]
