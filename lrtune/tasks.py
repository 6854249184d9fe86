"""Task metadata the core needs without torch: names, metrics and directions.

The trainable side (model, data) lives in ``lrtune_worker.tasks``. A third-party task registers two
entry points: its trainable class (with an ``info`` attribute) under ``lrtune.tasks``, for
workers, and its ``TaskInfo`` alone, from a module that does not import torch, under
``lrtune.task_info``, so that the service (whose image has no torch) describes and validates
it. Without the second, the service can name the task but not use it, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Literal

from lrtune.errors import SpecError

Direction = Literal["minimize", "maximize"]
ENTRY_POINT_GROUP = "lrtune.tasks"  # trainable task classes, for workers
INFO_GROUP = "lrtune.task_info"  # their TaskInfo, importable without torch
EXTERNAL = "external"  # trained by the user's own code over trial leases, never by workers


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    metrics: dict[str, Direction]
    default_metric: str = "val_loss"
    batch_size: int = 32
    batch_sizes: tuple[int, ...] = ()
    default_epochs: int = 10

    def direction(self, metric: str) -> Direction:
        if self.name == EXTERNAL:
            return "minimize"
        try:
            return self.metrics[metric]
        except KeyError:
            raise SpecError("objective", f"task {self.name!r} reports {sorted(self.metrics)}, "
                            f"not {metric!r}") from None

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "description": self.description, "metrics": self.metrics,
                "default_metric": self.default_metric, "batch_size": self.batch_size,
                "batch_sizes": list(self.batch_sizes), "default_epochs": self.default_epochs}


BUILTIN_TASKS: dict[str, TaskInfo] = {t.name: t for t in [
    TaskInfo("linreg", "Linear regression on generated data, minibatch gradient descent.",
             {"val_loss": "minimize", "train_loss": "minimize"}, batch_size=64,
             batch_sizes=(16, 32, 64, 128), default_epochs=10),
    TaskInfo("digits-mlp", "MLP 64-256-256-10 on scikit-learn's bundled digits.",
             {"val_loss": "minimize", "val_acc": "maximize", "train_loss": "minimize"},
             batch_size=64, batch_sizes=(32, 64, 128), default_epochs=20),
    TaskInfo("charlm", "Character-level transformer on the Python standard library's source.",
             {"val_loss": "minimize", "train_loss": "minimize"}, batch_size=32,
             default_epochs=5),
]}
EXTERNAL_INFO = TaskInfo(EXTERNAL, "Your own training code: trials leased over HTTP to "
                         "lrtune.Client, `lrtune agent` and the Lightning and Hugging Face "
                         "integrations; lrtune's workers never train it. Name the objective "
                         "and its direction in the spec.", {}, default_metric="val_loss")


def plugin_task_names() -> list[str]:
    return sorted({ep.name for group in (ENTRY_POINT_GROUP, INFO_GROUP)
                   for ep in entry_points(group=group)})


def task_names() -> list[str]:
    return sorted(set(BUILTIN_TASKS) | {EXTERNAL} | set(plugin_task_names()))


def task_info(name: str, field_name: str = "task") -> TaskInfo:
    """Metadata of a built-in or entry-point task; SpecError naming ``field_name`` if unknown."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    if name == EXTERNAL:
        return EXTERNAL_INFO
    for ep in entry_points(group=INFO_GROUP, name=name):
        info = ep.load()
        if isinstance(info, TaskInfo):
            return info
        raise SpecError(field_name, f"entry point {name!r} of {INFO_GROUP} is not a TaskInfo")
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            trainable = ep.load()
        except ImportError as e:
            raise SpecError(field_name, f"task {name!r} cannot be described here ({e}): its "
                            f"package must also publish its TaskInfo, from a module without "
                            f"torch, under the entry-point group {INFO_GROUP!r}") from None
        info = getattr(trainable, "info", None)
        if isinstance(info, TaskInfo):
            return info
        raise SpecError(field_name, f"entry point {name!r} has no TaskInfo 'info'")
    raise SpecError(field_name, f"unknown task {name!r}; known: {task_names()}")
