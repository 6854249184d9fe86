"""Run a claimed lot: configure every trial, split into sub-packs, train each one fused (a
lone trial alone), and record each as it ends. Sees the claim only as a ``Lot``: the same
code whether the trials came from the database or over HTTP."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lrtune.space import TrialConfig
from lrtune.spec import StudySpec
from lrtune_worker.fused import split_pack, train_pack
from lrtune_worker.integrations import NO_LOG, TrialLog
from lrtune_worker.runner import (
    Stopping,
    TrialOutcome,
    ending,
    failure,
    open_log,
    unfinished,
)
from lrtune_worker.source import UNAVAILABLE, Lot, Slot
from lrtune_worker.tasks import get_task
from lrtune_worker.train import TrainResult, train_trial

Finish = Callable[[Slot, TrialOutcome], None]
LEAVE: tuple[type[Exception], ...] = (Stopping, *UNAVAILABLE)  # end the lot, not a trial


def run_pack(lot: Lot, spec: StudySpec, device: torch.device,
             between_epochs: Callable[[], None], finish: Finish,
             ended: set[int] | None = None, compile_after: float | None = None,
             block: int = 0) -> None:
    """Train every trial of ``lot``, calling ``finish`` for each as soon as it ends (after
    ``lot.finish`` has recorded it); the trial numbers that ended are added to ``ended``.
    Fused sub-packs report, record and ``lot.flush()`` once per epoch; ``compile_after``
    and ``block`` as in ``train_pack``.

    Raises ``Stopping`` (the caller hands back what did not end) or one of ``UNAVAILABLE``.
    """
    ended = ended if ended is not None else set()
    logs: dict[int, TrialLog] = {}  # the open logs of the trials being trained, by number

    def end(slot: Slot, outcome: TrialOutcome) -> None:
        log = logs.pop(slot.number, NO_LOG)
        log.end(outcome.state.name, outcome.value, outcome.reason)
        ended.add(slot.number)
        finish(slot, outcome)

    try:
        _run(lot, spec, device, between_epochs, end, ended, compile_after, block, logs)
    except LEAVE as error:
        for log in logs.values():
            log.end("UNFINISHED", None, unfinished(error))
        raise


def _run(lot: Lot, spec: StudySpec, device: torch.device, between_epochs: Callable[[], None],
         end: Finish, ended: set[int], compile_after: float | None, block: int,
         logs: dict[int, TrialLog]) -> None:
    """``run_pack``; each configured trial's log is opened in ``logs``."""
    try:
        task = get_task(spec.task)
    except Exception as error:  # an unknown or broken task: each trial fails with its text
        for slot in lot.slots:
            end(slot, failure(error))
        return
    ready: list[Slot] = []
    configs: list[TrialConfig] = []
    for slot in lot.slots:
        try:
            configs.append(lot.configure(slot, spec, task))
        except LEAVE:
            raise
        except Exception as error:
            end(slot, failure(error))
            continue
        ready.append(slot)
        logs[slot.number] = open_log(slot, spec, configs[-1])
    lot.flush()  # the pack's params at once: other workers' samplers, dashboard
    # a horizon ladder's runs train alone: each stops at its own rung's step
    groups = [[i] for i in range(len(ready))] if any(s.rung for s in ready) \
        else split_pack(configs, task)
    for group in groups:
        members = [ready[i] for i in group]

        def done(i: int, result: TrainResult, members: list[Slot] = members) -> None:
            end(members[i], ending(result, members[i].rung))

        reporters = [lot.reporter(s, between_epochs, logs[s.number]) for s in members]
        try:
            if len(members) == 1:  # vmap's fixed cost buys nothing for one trial
                done(0, train_trial(task, configs[group[0]], spec.epochs, spec.objective,
                                    members[0].seed, device, reporters[0],
                                    rung=members[0].rung))
            else:
                train_pack(task, [configs[i] for i in group], spec.epochs, spec.objective,
                           [s.seed for s in members], device, reporters, done, lot.flush,
                           compile_after, block, after_reports=lot.reports_done)
        except LEAVE:
            raise
        except Exception as error:  # the sub-pack's own failure: its unfinished trials FAIL
            for slot in members:
                if slot.number not in ended:
                    end(slot, failure(error))
        lot.flush()
