"""The integrations' fixtures: a real ``lrtune serve --workers 0`` on SQLite (the end-to-end
tests of tests/test_own_code.py run both databases; the integrations only add callers)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_own_code import Api, serve_api

# never a download: no hub, no telemetry; W&B offline, quiet
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DISABLE_GIT": "true", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with serve_api(f"sqlite:///{tmp_path / 'lrtune.db'}", tmp_path, **OFFLINE,
                   WANDB_DIR=str(tmp_path), HF_HOME=str(tmp_path / "hf"),
                   OMP_NUM_THREADS="1") as served:
        yield served


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """In-process fits on one thread: two test files run at once on two cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_wandb() -> Iterator[None]:
    """W&B reads its environment (WANDB_DIR: this test's folder) once per process setup:
    torn down after each test that used it."""
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
