"""What a benchmark ran on, recorded with every result line."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(),
        "platform": platform.platform(), "cores": os.cpu_count(),
        "optuna": version("optuna"), "sqlalchemy": version("sqlalchemy"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f
                                if line.startswith("model name")), platform.processor())
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def run_units(work: Callable[[Any], dict[str, Any]], units: Sequence[Any], out: Path,
              jobs: int, describe: Callable[[dict[str, Any]], str]) -> None:
    """``work`` on each unit in ``jobs`` processes; each result appended to ``out`` as a JSON
    line with the machine as it comes (a run stopped midway keeps what it finished)."""
    info = machine()
    out.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(jobs) as pool, out.open("a") as lines:
        for i, line in enumerate(pool.map(work, units), 1):
            lines.write(json.dumps({**line, "machine": info}) + "\n")
            lines.flush()
            print(f"[{i}/{len(units)}] {describe(line)}", flush=True)
