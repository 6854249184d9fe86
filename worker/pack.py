"""Run a claimed pack: sample every trial, split into sub-packs, train each one fused."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lrtune.errors import DatabaseUnavailable
from lrtune.ledger import PackLedger
from lrtune.spec import StudySpec
from lrtune.store import Claim
from lrtune_worker.fused import split_pack, train_pack
from lrtune_worker.integrations import NO_LOG, TrialLog
from lrtune_worker.runner import (
    OptunaReporter,
    SetAttr,
    Stopping,
    TrialOutcome,
    failed,
    open_log,
    outcome_of,
    prepare,
    run_trial,
    trial_seed,
    unfinished,
)
from lrtune_worker.tasks import get_task
from lrtune_worker.train import Reporter, TrainResult, train_trial

Finish = Callable[[Claim, TrialOutcome], None]


class LedgerReporter:
    """Reports one packed trial through the pack's ledger (batched writes, in-memory pruning),
    and to its ``log`` (W&B, when enabled)."""

    def __init__(self, ledger: PackLedger, number: int,
                 between_epochs: Callable[[], None], log: TrialLog = NO_LOG) -> None:
        self.ledger, self.number, self.between_epochs = ledger, number, between_epochs
        self.log = log

    def report(self, epoch: int, value: float, lr: float, metrics: dict[str, float]) -> None:
        self.ledger.report(self.number, epoch, value)
        self.log.epoch(epoch, value, lr, metrics)
        self.between_epochs()

    def should_prune(self) -> bool:
        return self.ledger.should_prune(self.number)


def run_pack(claims: Sequence[Claim], spec: StudySpec, device: torch.device,
             between_epochs: Callable[[], None], finish: Finish,
             ended: set[int] | None = None, ledger: PackLedger | None = None,
             compile_after: float | None = None, block: int = 0) -> None:
    """Train every claim, calling ``finish`` for each as soon as it ends; the trial numbers
    that ended are added to ``ended``. With a ``ledger``, fused sub-packs report, record
    attributes and flush through it once per epoch; ``compile_after`` and ``block`` as in
    ``train_pack``.

    Raises ``Stopping`` (the caller hands back what did not end) or a database error.
    """
    ended = ended if ended is not None else set()
    inner = finish
    logs: dict[int, TrialLog] = {}  # the open logs of the trials trained fused, by number

    def finish(claim: Claim, outcome: TrialOutcome) -> None:
        inner(claim, outcome)
        ended.add(claim.trial.number)
        log = logs.pop(claim.trial.number, NO_LOG)
        log.end(outcome.state.name, outcome.value, outcome.reason)

    if len(claims) == 1:
        finish(claims[0], run_trial(claims[0].trial, spec, device, between_epochs))
        return
    try:
        _run_fused(claims, spec, device, between_epochs, finish, ended, ledger, compile_after,
                   block, logs)
    except (Stopping, DatabaseUnavailable) as error:
        for log in logs.values():
            log.end("UNFINISHED", None, unfinished(error))
        raise


def _run_fused(claims: Sequence[Claim], spec: StudySpec, device: torch.device,
               between_epochs: Callable[[], None], finish: Finish, ended: set[int],
               ledger: PackLedger | None, compile_after: float | None, block: int,
               logs: dict[int, TrialLog]) -> None:
    """``run_pack`` of two trials or more; each prepared trial's log is opened in ``logs``."""
    task = get_task(spec.task)
    ready: list[Claim] = []
    configs = []
    def attrs(claim: Claim) -> SetAttr | None:
        if ledger is None:
            return None
        return lambda key, value: ledger.set_user_attr(claim.trial.number, key, value)

    for claim in claims:
        try:
            configs.append(prepare(claim.trial, spec, task, attrs(claim)))
            ready.append(claim)
            logs[claim.trial.number] = open_log(claim.trial, spec, configs[-1])
        except DatabaseUnavailable:
            raise
        except Exception as error:
            finish(claim, failed(claim.trial, error, attrs(claim)))
    if ledger is not None:  # the pack's params at once: other workers' samplers, dashboard
        ledger.flush()
    for group in split_pack(configs, task):
        members = [ready[i] for i in group]

        def done(i: int, result: TrainResult, members: list[Claim] = members) -> None:
            finish(members[i], outcome_of(members[i].trial, result, attrs(members[i])))

        reporters: list[Reporter] = (
            [OptunaReporter(c.trial, between_epochs, logs[c.trial.number]) for c in members]
            if ledger is None
            else [LedgerReporter(ledger, c.trial.number, between_epochs, logs[c.trial.number])
                  for c in members])
        try:
            if len(members) == 1:  # vmap's fixed cost buys nothing for one trial
                done(0, train_trial(task, configs[group[0]], spec.epochs, spec.objective,
                                    trial_seed(spec, members[0].trial), device, reporters[0]))
            else:
                train_pack(task, [configs[i] for i in group], spec.epochs, spec.objective,
                           [trial_seed(spec, c.trial) for c in members], device, reporters,
                           done, ledger.flush if ledger is not None else None, compile_after,
                           block)
        except (Stopping, DatabaseUnavailable):
            raise
        except Exception as error:  # the sub-pack's own failure: its unfinished trials FAIL
            for claim in members:
                if claim.trial.number not in ended:
                    finish(claim, failed(claim.trial, error, attrs(claim)))
        if ledger is not None:
            ledger.flush()
