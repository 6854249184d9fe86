"""The fault tasks' metadata, importable without torch (entry-point group lrtune.task_info)."""

from __future__ import annotations

from lrtune.tasks import TaskInfo


def _info(name: str) -> TaskInfo:
    return TaskInfo(name, f"fault injection: {name}", {"val_loss": "minimize"}, batch_size=64)


RAISE = _info("fault-raise")
NAN = _info("fault-nan")
OOM = _info("fault-oom")  # published as trainable only: a service without torch can't use it
