"""Registry of trainable tasks: built-ins plus the ``lrtune.tasks`` entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points

from lrtune.errors import SpecError
from lrtune.tasks import ENTRY_POINT_GROUP, task_names
from lrtune_worker.tasks.base import Task, TaskData
from lrtune_worker.tasks.charlm import CharLM
from lrtune_worker.tasks.digits import DigitsMLP
from lrtune_worker.tasks.linreg import LinReg

__all__ = ["Task", "TaskData", "get_task"]

BUILTIN: dict[str, type[Task]] = {"linreg": LinReg, "digits-mlp": DigitsMLP, "charlm": CharLM}


def get_task(name: str) -> Task:
    if name in BUILTIN:
        return BUILTIN[name]()
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        loaded = ep.load()
        task = loaded() if isinstance(loaded, type) else loaded
        if not isinstance(task, Task):
            raise SpecError("task", f"entry point {name!r} is not a lrtune_worker.tasks.Task")
        return task
    raise SpecError("task", f"unknown task {name!r}; known: {task_names()}")
