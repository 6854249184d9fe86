"""Where a worker's trials come from and where they go: one interface, two implementations.

``StoreSource`` (``lrtune_worker.stored``) claims and records straight in the database, for one
machine or a trusted network; ``LeaseSource`` (``lrtune_worker.remote``) through the API's
trial-lease protocol over HTTP, holding no database credentials. The loop
(``lrtune_worker.loop``) and the pack runner (``lrtune_worker.pack``) see only this interface,
as Optuna's samplers see only ``BaseStorage``.

A claim is a ``Lot``: one trial, or a pack of one study. For each of its ``slots`` the runner
asks ``configure`` (the trial's schedule and optimizer), trains with ``reporter`` (each epoch's
value and LR; whether to stop), and hands the outcome to ``finish``. What a lot buffers is
written by ``flush`` (once per epoch of a pack: one transaction, or one request);
``reports_done`` marks the moment every trial of a pack has reported an epoch and before any
is asked whether to stop (a lease sends the epoch's report then, in one request).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from lrtune.errors import DatabaseUnavailable
from lrtune.horizon import Rung
from lrtune.space import TrialConfig
from lrtune.spec import StudySpec
from lrtune_worker.integrations import TrialLog
from lrtune_worker.tasks import Task
from lrtune_worker.train import Reporter

if TYPE_CHECKING:
    from lrtune_worker.runner import TrialOutcome


class ApiUnavailable(Exception):
    """The lrtune API could not be reached or could not serve the request (a 5xx): nothing
    was recorded; retry shortly. The HTTP worker's ``DatabaseUnavailable``."""


# The source is away: the claim is abandoned (its trials are reaped as lost and run again)
# and the loop backs off. Every other error of a trial stays in that trial.
UNAVAILABLE: tuple[type[Exception], ...] = (DatabaseUnavailable, ApiUnavailable)

Sizer = Callable[[StudySpec], int]  # trials to claim at once for a study (its pack, sized)


@dataclass
class Slot:
    """One claimed trial. ``params``: its sampled values (filled in by ``Lot.configure`` where
    the worker samples them)."""

    number: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    rung: Rung | None = None  # a horizon ladder's run: trained on its rung's steps


class Lot(Protocol):
    """One claim: ``slots`` of the study ``study`` (its name), created with ``spec``."""

    study: str
    spec: StudySpec
    slots: list[Slot]

    def search_spec(self, device: torch.device) -> StudySpec:
        """The spec to train with (the database's lot runs the LR range test of a study whose
        ``lr`` is "auto" first)."""
        ...

    def heartbeat(self) -> AbstractContextManager[object]:
        """Keeps the lot's trials alive while the context runs."""
        ...

    def configure(self, slot: Slot, spec: StudySpec, task: Task) -> TrialConfig:
        """The trial's schedule, optimizer and batch size (sampled, or as leased)."""
        ...

    def reporter(self, slot: Slot, between_epochs: Callable[[], None], log: TrialLog
                 ) -> Reporter:
        """Takes the trial's epochs (and gives them to ``log``); ``between_epochs`` runs after
        each report and may raise ``Stopping``."""
        ...

    def reports_done(self) -> None:
        """Every trial of a pack has reported this epoch; none has been asked to stop yet."""
        ...

    def flush(self) -> None:
        """Write what is buffered (reports, attributes, endings)."""
        ...

    def finish(self, slot: Slot, outcome: TrialOutcome) -> bool:
        """Record how the trial ended; False when it had ended under the worker (reaped as
        lost: its copy runs again), and nothing was recorded."""
        ...

    def hand_back(self, slots: list[Slot], why: str) -> None:
        """Give these unfinished trials back (they run again elsewhere)."""
        ...


class Source(Protocol):
    """Claims lots. ``name`` says where from (for logs)."""

    name: str

    def claim(self, only: set[int] | None, sizer: Sizer) -> Lot | None:
        """One trial or a pack of a running study (of ``only``, when given), or None when
        there is no work now. Raises one of ``UNAVAILABLE`` when the source is away."""
        ...
