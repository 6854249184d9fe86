"""The training side of the lease protocol: trials claimed by your own code.

A ``Trial`` is one leased trial: its sampled schedule and optimizer (built in torch by
``optimizer()`` and ``scheduler()``), ``report()`` per epoch (the server's pruner answers),
and one ending (``complete``, ``prune``, ``fail``). Used as ``with trial:``, an exception in
the block ends it FAIL with its message, a pruned trial's ``TrialPruned`` is absorbed, and
Ctrl-C hands it back to the study (re-run elsewhere) before stopping.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("lrtune.client")
PROTOCOL = 1
LEASE_PATH = f"/v{PROTOCOL}/leases"
ENV_LEASE = "LRTUNE_LEASE"  # set by `lrtune agent` for the script it runs: the lease's JSON


class ClientError(RuntimeError):
    """The API refused (``status``: its HTTP status, ``code``: its error code, ``field``: the
    field it names) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str, code: str = "", field: str = "") -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status, self.code, self.field = status, code, field


class TrialPruned(Exception):  # noqa: N818 - Optuna's name for the same signal
    """The study pruned this trial: stop training it (``with trial:`` absorbs this)."""


class Caller(Protocol):
    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...


class Trial:
    """One leased trial. ``params``: the sampled values; ``config``: schedule, optimizer and
    batch size; ``seed``; ``epochs`` and ``objective`` of the study."""

    def __init__(self, caller: Caller, lease: dict[str, Any], index: int = 0) -> None:
        self.caller = caller
        self.lease_id = int(lease["lease"])
        self.study: dict[str, Any] = lease["study"]
        own = lease["trials"][index]
        self.number: int = own["number"]
        self.params: dict[str, Any] = own["params"]
        self.config: dict[str, Any] = own["config"]
        self.seed: int = own["seed"]
        self.ended: str | None = None
        self.steps_per_epoch: int | None = self.study.get("steps_per_epoch")
        self.last_value: float | None = None
        self._driver: Any = None  # the schedule driver of scheduler(), stepped per epoch here
        self._optimizer: Any = None
        self._spe_sent = False
        self._epoch_lr: float | None = None

    def __repr__(self) -> str:
        return (f"Trial(study={self.study['name']!r}, number={self.number}, "
                f"schedule={self.config['schedule']['family']!r}, "
                f"optimizer={self.config['optimizer']['name']!r}, lr={self.lr:.3g})")

    @property
    def epochs(self) -> int:
        return int(self.study["epochs"])

    @property
    def objective(self) -> str:
        return str(self.study["objective"])

    @property
    def lr(self) -> float:
        """The sampled base LR."""
        return float(self.config["optimizer"]["lr"])

    @property
    def batch_size(self) -> int | None:
        """The sampled batch size, when the study searches it."""
        size = self.config.get("batch_size")
        return int(size) if size is not None else None

    # -- torch ----------------------------------------------------------------------------------
    def optimizer(self, params: Any) -> Any:
        """The sampled ``torch.optim`` optimizer over ``params``, at the base LR."""
        from lrtune_worker.leased import build_trial_optimizer

        self._optimizer = build_trial_optimizer(params, self.config)
        self._epoch_lr = self.lr
        return self._optimizer

    def scheduler(self, optimizer: Any, steps_per_epoch: int | None = None) -> Any:
        """The sampled schedule on ``optimizer``: call its ``step()`` after every
        ``optimizer.step()``; ``report()`` steps it across each epoch's end (and feeds
        a plateau schedule the metric). ``steps_per_epoch``: batches per epoch (the spec's
        if it fixes them)."""
        from lrtune_worker.leased import build_trial_scheduler

        spe = steps_per_epoch or self.steps_per_epoch
        if not spe or spe < 1:
            raise ValueError("steps_per_epoch: give the batches per epoch of your loop (the "
                             f"study's spec does not fix them), got {steps_per_epoch=}")
        self.steps_per_epoch = int(spe)
        self._driver = build_trial_scheduler(optimizer, self.config, self.epochs,
                                             self.steps_per_epoch)
        self._epoch_lr = float(optimizer.param_groups[0]["lr"])
        return self._driver.batch_stepper

    def hf_optimizers(self, model: Any, steps_per_epoch: int | None = None
                      ) -> tuple[Any, Any]:
        """``transformers.Trainer(optimizers=...)``: the optimizer over ``model``'s trainable
        parameters and the schedule, which ``Trainer`` steps after every optimizer step (see
        ``lrtune_worker.integrations.transformers``: ``hf_steps_per_epoch`` and the callback
        that reports each evaluation). Built here, with ``optimizer`` and ``scheduler``: the
        core imports nothing of the worker's but ``lrtune_worker.leased``."""
        optimizer = self.optimizer([p for p in model.parameters() if p.requires_grad])
        return optimizer, self.scheduler(optimizer, steps_per_epoch)

    # -- the protocol -----------------------------------------------------------------------------
    def _post(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.caller.call(
            "POST", f"{LEASE_PATH}/{self.lease_id}/{action}", json=body).json()
        return result

    def report(self, epoch: int, value: float, lr: float | None = None,
               **metrics: float) -> None:
        """The objective's ``value`` after ``epoch`` (0-based), the LR the epoch trained at
        (default: the schedule's), and other metrics to show. Raises ``TrialPruned`` when
        the study prunes the trial (it has then ended PRUNED). A NaN or infinite value ends
        it PRUNED ``diverged`` and raises ``TrialPruned`` too."""
        self._check_open()
        value = float(value)
        if not math.isfinite(value):
            self.prune("diverged")
            raise TrialPruned(f"trial {self.number} diverged at epoch {epoch}")
        item: dict[str, Any] = {"number": self.number, "value": value,
                                "lr": lr if lr is not None else self._epoch_lr,
                                "metrics": {k: float(v) for k, v in metrics.items()
                                            if math.isfinite(float(v))}}
        body: dict[str, Any] = {"epoch": epoch, "trials": [item]}
        if self.steps_per_epoch and not self._spe_sent:
            body["steps_per_epoch"] = self.steps_per_epoch
        pruned = self._post("report", body)["pruned"]
        self._spe_sent = self._spe_sent or "steps_per_epoch" in body
        self.last_value = value
        if self._driver is not None:
            self._driver.after_epoch(value)
            self._epoch_lr = float(self._driver.optimizer_lr())
        if self.number in pruned:
            self.ended = "PRUNED"
            raise TrialPruned(f"trial {self.number} pruned at epoch {epoch}")

    def complete(self, value: float | None = None, **metrics: float) -> None:
        """End the trial COMPLETE with the objective's final value (default: the last one
        reported)."""
        value = self.last_value if value is None else float(value)
        if value is None:
            raise ValueError("complete(value): no value given and none reported")
        if not math.isfinite(value):
            self.prune("diverged")
            return
        self._end("COMPLETE", value=value, metrics={k: float(v) for k, v in metrics.items()})

    def prune(self, reason: str = "pruned") -> None:
        """End the trial PRUNED (e.g. ``"diverged"``); its last reported value stands."""
        self._end("PRUNED", reason=reason)

    def fail(self, reason: str) -> None:
        """End the trial FAIL with ``reason`` (it is not re-run)."""
        self._end("FAIL", reason=reason[:1000])

    def release(self, reason: str = "released by its client") -> None:
        """Hand the trial back unfinished: it is re-queued and runs again elsewhere."""
        if self.ended is None:
            self._post("release", {"reason": reason[:500]})
            self.ended = "RELEASED"

    def _end(self, state: str, **fields: Any) -> None:
        self._check_open()
        self._post("finish", {"trials": [{"number": self.number, "state": state, **fields}]})
        self.ended = state

    def _check_open(self) -> None:
        if self.ended is not None:
            raise RuntimeError(f"trial {self.number} has ended ({self.ended})")

    # -- with trial: ---------------------------------------------------------------------------
    def __enter__(self) -> Trial:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if kind is None:
            if self.ended is None:  # the block ended without an ending: its last value
                if self.last_value is not None:
                    self.complete()
                else:
                    self.fail("the training block ended without complete() or a report")
            return False
        if isinstance(error, TrialPruned):
            return True
        if self.ended is None:
            try:
                if isinstance(error, KeyboardInterrupt):
                    self.release("interrupted (Ctrl-C)")
                elif isinstance(error, ClientError) and (error.status == 0
                                                          or error.status >= 500):
                    self.release(f"the lrtune API failed the client: {error}")  # not the trial
                elif isinstance(error, Exception):
                    self.fail(f"failed: {type(error).__name__}: {error}")
            except ClientError as refused:
                log.warning("trial %d: %s", self.number, refused)
        return False


class Heartbeat:
    """Beats a lease every ``interval`` seconds in a daemon thread until ``stop()``."""

    def __init__(self, caller: Caller, lease_id: int, interval: float) -> None:
        self.caller, self.lease_id, self.interval = caller, lease_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lrtune-lease-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.caller.call("POST", f"{LEASE_PATH}/{self.lease_id}/heartbeat")
            except ClientError as error:
                if error.status == 409:  # nothing left running under it
                    return
                log.warning("heartbeat of lease %d failed: %s", self.lease_id, error)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Claimer(Caller, Protocol):
    def claim(self, study_id: int | None = None, count: int = 1) -> dict[str, Any] | None: ...


def leases(client: Claimer, study_id: int, max_leases: int | None = None,
           idle: float = 1.0) -> Iterator[dict[str, Any]]:
    """Leases of one trial of the study until it ends (or ``max_leases``). While every
    remaining trial is held by others it waits, backing off (a lost one comes back)."""
    taken = 0
    pause = idle
    while max_leases is None or taken < max_leases:
        try:
            lease = client.claim(study_id)
        except ClientError as error:
            if error.code == "study_ended":
                log.info("study %d has ended: %s", study_id, error)
                return
            raise
        if lease is None:
            time.sleep(pause)
            pause = min(pause * 1.5, 10.0)
            continue
        pause = idle
        taken += 1
        yield lease


def lease_trials(client: Claimer, study_id: int, max_trials: int | None = None,
                 idle: float = 1.0) -> Iterator[Trial]:
    """Claim, yield and keep alive one trial at a time until the study ends."""
    for lease in leases(client, study_id, max_trials, idle):
        trial = Trial(client, lease)
        beat = Heartbeat(client, trial.lease_id, float(lease["heartbeat_interval"]))
        try:
            yield trial
        except GeneratorExit:  # the loop was left (break, an error): hand it back
            trial.release("the training loop left it unfinished")
            raise
        finally:
            beat.stop()
        if trial.ended is None:
            trial.__exit__(None, None, None)


def current_trial() -> Trial:
    """The trial ``lrtune agent`` runs this script for (it keeps the lease alive)."""
    raw = os.environ.get(ENV_LEASE)
    if not raw:
        raise RuntimeError(f"no trial here: {ENV_LEASE} is not set (run this script with "
                           "`lrtune agent STUDY_ID -- python script.py`)")
    from lrtune.client import Client

    return Trial(Client(), json.loads(raw))
