"""The test plugin tasks' metadata, importable without torch (entry-point group
lrtune.task_info)."""

from __future__ import annotations

from lrtune.tasks import TaskInfo


def _info(name: str) -> TaskInfo:
    return TaskInfo(name, f"fault injection: {name}", {"val_loss": "minimize"}, batch_size=64)


RAISE = _info("fault-raise")
NAN = _info("fault-nan")
OOM = _info("fault-oom")  # published as trainable only: a service without torch can't use it
# not a fault: a task that streams its batches through DataLoaders (see lrtune_fault_tasks)
STREAM = TaskInfo("stream-wine", "streaming: scikit-learn's wine through DataLoaders",
                  {"val_loss": "minimize", "val_acc": "maximize", "train_loss": "minimize"},
                  batch_size=16, batch_sizes=(16, 32), default_epochs=3)
