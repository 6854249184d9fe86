"""Trials over HTTP: the trial-lease protocol's side of ``Source`` (``lrtune worker --url``).

The API claims, samples each trial's config, prunes and records; this worker holds a worker
token (``LRTUNE_TOKEN``) and no database credentials, and never opens the database. One lease
is one lot: a single trial or a pack. A pack's epoch is one report request (as it is one
transaction in the database), its endings one finish request (more only when a body would pass
the API's ``max_body_bytes``). A study without a pruner waits on no report: its epochs go
together, in one request at most ``REPORT_EVERY`` seconds after the first of them. The
server's answer to a report names the trials its pruner pruned: they have ended PRUNED there,
and stop here.

A lease that was lost (its trials reaped under the worker, answered 409) is logged and its
trials dropped: their copies run again elsewhere, and the worker goes on. The API out of
reach (or answering 5xx) raises ``ApiUnavailable``: the loop backs off and claims again, and
the abandoned trials are reaped as lost and re-run.

A study's pack size is learnt from its first lease here (one trial, trained alone); from then
on this worker asks for that study's whole pack, packed studies taking turns, before asking for
one trial of any study. A study whose ``lr`` is "auto" is leased only once a database worker
has run its LR range test.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch

from lrtune.client import Client
from lrtune.horizon import Rung
from lrtune.leasing import LEASE_PATH, ClientError
from lrtune.space import TrialConfig
from lrtune.spec import StudySpec
from lrtune_worker.heartbeat import Beating, first_line
from lrtune_worker.integrations import TrialLog
from lrtune_worker.runner import LOST_MEANWHILE, TrialOutcome, batch_size
from lrtune_worker.source import ApiUnavailable, Sizer, Slot
from lrtune_worker.tasks import Task

log = logging.getLogger("lrtune.worker")
STUDYS_PACK = "pack"  # a claim's count: the study's own pack where its spec gives one
Count = int | str
FINISH_MOST = 1024  # endings a report carries (the API's bound)
LOST = (401, 403, 404, 409)  # the lease is gone, or no longer this token's: its trials too
BIGGEST = 1e300  # the protocol's bound on a reported number
BUSY_WAIT = 10.0  # seconds a request answered 503/429 is asked again before giving up
CLAIM_TIMEOUT = 600.0  # seconds to wait for the answer to a claim of a pack (a big one samples)
# A study without a pruner waits on no report: its epochs are sent together, at most this many
# seconds after the first of them, or this many reported values at once (a fast task's epoch
# costs the API a request, its CPU more than the training's)
REPORT_EVERY = 0.5
REPORT_MOST = 4096


def _finite(value: float) -> float:
    """A reported number within the protocol's bounds (a loss past 1e300 is sent as 1e300)."""
    return max(-BIGGEST, min(BIGGEST, float(value)))


def _metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The finite metrics, at most the protocol's 32."""
    kept = {k[:100]: _finite(v) for k, v in metrics.items() if math.isfinite(float(v))}
    return dict(list(kept.items())[:32])


class LeaseSource:
    """Claims leases from the API at ``client.url`` with a worker token. ``body_limit``: the
    API's ``max_body_bytes`` (requests are split to stay under it)."""

    def __init__(self, client: Client, body_limit: int) -> None:
        self.client = client
        self.name = f"the lrtune API at {client.url}"
        self.body_limit = body_limit
        self.sizes: dict[int, int] = {}  # study id -> trials per claim, as sized here
        self.unsized: dict[int, StudySpec] = {}  # leased once, to be sized before a claim
        self.several_epochs = True  # False once the API refuses a report's ``later``
        self.finish_in_report = True  # False once it refuses a report's ``finish``
        self.pack_counts = True  # False once it refuses a claim's ``"count": "pack"``
        self.turn = 0

    @classmethod
    def connect(cls, url: str, token: str, body_limit: int) -> LeaseSource:
        # a refused connection, or a 503/429 (the API busy, or its database away), is tried
        # again for a few seconds; longer outages are the loop's to wait out
        return cls(Client(url, token, connect_wait=5.0, busy_wait=BUSY_WAIT), body_limit)

    # -- requests ---------------------------------------------------------------------------
    def post(self, path: str, body: dict[str, Any] | None = None,
             timeout: float | None = None) -> dict[str, Any] | None:
        """POST compact JSON; the answer's JSON (None for 204). ``ApiUnavailable`` when the
        API cannot be reached or fails (5xx); other refusals raise ``ClientError``."""
        content = json.dumps(body, separators=(",", ":")) if body is not None else None
        extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        try:
            response = self.client.call(
                "POST", path, content=content,
                headers={"Content-Type": "application/json"} if content else None, **extra)
        except ClientError as error:
            if error.status == 0 or error.status >= 500:
                raise ApiUnavailable(f"{self.name}: {error}") from None
            raise
        if response.status_code == 204:
            return None
        answer: dict[str, Any] = response.json()
        return answer

    def chunks(self, items: list[dict[str, Any]], room: int) -> Iterator[list[dict[str, Any]]]:
        """``items`` in runs whose JSON stays ``room`` bytes under the body limit."""
        budget = self.body_limit - room - 256
        run: list[dict[str, Any]] = []
        size = 0
        for item in items:
            cost = len(json.dumps(item, separators=(",", ":"))) + 1
            if run and size + cost > budget:
                yield run
                run, size = [], 0
            run.append(item)
            size += cost
        if run:
            yield run

    # -- claims -----------------------------------------------------------------------------
    def claim(self, only: set[int] | None, sizer: Sizer) -> LeaseLot | None:
        for sized, spec in list(self.unsized.items()):  # sized with no lease held
            del self.unsized[sized]
            try:
                self.sizes[sized] = max(1, sizer(spec))
            except Exception:  # noqa: BLE001 - one study's error: it is leased one by one
                log.exception("study %s: sizing its pack failed; claiming one trial at a time",
                              spec.name)
                self.sizes[sized] = 1
        for study_id, count in self._asks(only):
            lease = self._claim(study_id, count)
            if lease is not None:
                lot = LeaseLot(self, lease)
                if lot.study_id not in self.sizes:
                    self.unsized[lot.study_id] = lot.spec
                return lot
        return None

    def _asks(self, only: set[int] | None) -> list[tuple[int | None, Count]]:
        """(study, count) to ask for in turn: the packed studies known here (or those of
        ``only``), each for its pack, taking turns first; then any study, for its pack where
        its spec gives it (``"pack"``: one trial of an ``auto`` one, sized here from it)."""
        if only is not None:
            ids = sorted(only)
        else:
            ids = [s for s, n in self.sizes.items() if n > 1]
        self.turn += 1
        if ids:
            k = self.turn % len(ids)
            ids = ids[k:] + ids[:k]
        first: Count = STUDYS_PACK if self.pack_counts else 1  # a study not sized here
        asks: list[tuple[int | None, Count]] = [(s, self.sizes.get(s, first)) for s in ids]
        return asks if only is not None else [*asks, (None, first)]

    def _claim(self, study_id: int | None, count: Count) -> dict[str, Any] | None:
        try:
            return self.post(LEASE_PATH, {"study_id": study_id, "count": count},
                             CLAIM_TIMEOUT if count != 1 else None)
        except ClientError as error:
            if error.status == 422 and count == STUDYS_PACK and error.field == "count":
                self.pack_counts = False  # an API before it: a first lease of one trial
                return self._claim(study_id, 1)
            if error.code == "study_ended":  # ended, or waits for its LR range test
                if self.sizes.pop(study_id or 0, None) is not None:
                    log.info("study %s hands out no more trials (%s)", study_id, error)
                return None
            if error.status in (403, 404) and study_id is not None:  # gone, or not ours
                self.sizes.pop(study_id, None)
                log.warning("study %d: %s", study_id, error)
                return None
            if error.status == 422 and isinstance(count, int) and count > 1 \
                    and study_id is not None:
                self.sizes[study_id] = max(1, count // 2)  # over the API's max_pack
                log.warning("study %d: a pack of %d refused (%s); asking for %d", study_id,
                            count, error, self.sizes[study_id])
                return None
            raise


class LeaseHeartbeat(Beating):
    """Beats a lease every ``interval`` seconds (the claim itself counts as the first beat);
    stops, logged, when none of its trials runs any more."""

    def __init__(self, lot: LeaseLot) -> None:
        super().__init__(lot.interval, first_at_once=False)
        self.lot = lot

    def beat(self) -> bool:
        try:
            self.lot.source.post(self.lot.path("heartbeat"))
        except ClientError as error:
            if error.status in LOST:
                if self.lot.unended():  # else it ended here, and the beat came after
                    log.warning("study %s lease %d: none of its trials runs any more (%s)",
                                self.lot.study, self.lot.id, first_line(error))
                return False
            raise
        return True

    def failed(self, error: Exception) -> None:
        log.warning("heartbeat of study %s lease %d failed: %s", self.lot.study, self.lot.id,
                    first_line(error))


class LeaseReporter:
    """One leased trial's epochs: buffered in its lot (a pack's epoch is one request, and a
    study without a pruner sends several epochs in one), and given to its ``log``;
    ``should_prune`` sends what is due and reads the answer."""

    def __init__(self, lot: LeaseLot, number: int, between_epochs: Callable[[], None],
                 log: TrialLog) -> None:
        self.lot, self.number, self.between_epochs, self.log = lot, number, between_epochs, log

    def report(self, epoch: int, value: float, lr: float, metrics: dict[str, float]) -> None:
        self.lot.add_report(self.number, epoch, value, lr, metrics)
        self.log.epoch(epoch, value, lr, metrics)
        self.between_epochs()

    def should_prune(self) -> bool:
        self.lot.reports_done()
        return self.number in self.lot.pruned or self.number in self.lot.lost


class LeaseLot:
    """One lease's trials: configs and seeds as leased, reports and endings over HTTP."""

    def __init__(self, source: LeaseSource, lease: dict[str, Any]) -> None:
        self.source = source
        self.id = int(lease["lease"])
        study = lease["study"]
        self.study_id, self.study = int(study["id"]), str(study["name"])
        self.spec = StudySpec.model_validate(study["spec"])
        self.interval = float(lease["heartbeat_interval"])
        self.slots = [Slot(int(t["number"]), int(t["seed"]), dict(t["params"]),
                           Rung.from_attr(t.get("horizon"))) for t in lease["trials"]]
        self.configs: dict[int, dict[str, Any]] = {int(t["number"]): t["config"]
                                                   for t in lease["trials"]}
        self.steps: dict[int, int] = {}  # steps per epoch of each trial
        self.steps_sent: set[int] = set()
        self.pending: list[tuple[int, list[dict[str, Any]]]] = []  # epochs not sent yet
        self.waits = self.spec.pruner.name == "none" and source.several_epochs
        self.sent_at = time.monotonic()
        self.endings: list[dict[str, Any]] = []
        self.pruned: set[int] = set()  # ended PRUNED by the server's pruner
        self.lost: set[int] = set()  # ended under this worker (reaped): dropped here
        self.ended: set[int] = set()  # ended here (perhaps not sent yet)

    def path(self, action: str) -> str:
        return f"{LEASE_PATH}/{self.id}/{action}"

    def unended(self) -> list[int]:
        """The lease's trials neither ended here nor known to have ended on the server."""
        return [s.number for s in self.slots
                if s.number not in self.ended | self.lost | self.pruned]

    def search_spec(self, device: torch.device) -> StudySpec:
        return self.spec  # the configs were sampled by the server

    def heartbeat(self) -> AbstractContextManager[object]:
        return LeaseHeartbeat(self)

    def configure(self, slot: Slot, spec: StudySpec, task: Task) -> TrialConfig:
        config = TrialConfig.from_dict(self.configs[slot.number])
        self.steps[slot.number] = task.steps_per_epoch(batch_size(config, task))
        return config

    def reporter(self, slot: Slot, between_epochs: Callable[[], None], log: TrialLog
                 ) -> LeaseReporter:
        return LeaseReporter(self, slot.number, between_epochs, log)

    # -- reports ----------------------------------------------------------------------------
    def add_report(self, number: int, epoch: int, value: float, lr: float,
                   metrics: dict[str, float]) -> None:
        if self.pending and epoch != self.pending[-1][0]:
            self.reports_done()
        if not self.pending or epoch != self.pending[-1][0]:
            self.pending.append((epoch, []))
        if number in self.lost or number in self.pruned:
            return
        item: dict[str, Any] = {"number": number, "value": _finite(value),
                                "lr": max(0.0, _finite(lr))}
        kept = _metrics(metrics)
        if kept:
            item["metrics"] = kept
        self.pending[-1][1].append(item)

    def reports_done(self) -> None:
        """Send the epochs buffered, unless they may wait: no pruner waits on them, or they
        are the study's last epoch (never judged: it goes with the endings that follow)."""
        held = sum(len(items) for _, items in self.pending)
        last = self.spec.epochs - 1
        if self.source.finish_in_report and self.pending \
                and all(epoch == last for epoch, _ in self.pending):
            return
        if not (self.waits and held < REPORT_MOST
                and time.monotonic() - self.sent_at < REPORT_EVERY):
            self.send_reports()

    def send_reports(self, ends: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The buffered epochs: one request for each batch size (whose steps per epoch are
        sent with a trial's first report), more when a body would be too big. ``ends``:
        endings to send with the last report where it has room (a request saved); those
        that rode on none are returned."""
        pending, self.pending = self.pending, []
        self.sent_at = time.monotonic()
        groups: dict[int | None, list[tuple[int, list[dict[str, Any]]]]] = {}
        for epoch, items in pending:
            by_steps: dict[int | None, list[dict[str, Any]]] = {}
            for item in items:
                by_steps.setdefault(self.steps.get(item["number"]), []).append(item)
            for steps, run in by_steps.items():
                groups.setdefault(steps, []).append((epoch, run))
        bodies = []
        for steps, epochs in groups.items():
            first = steps is not None and any(i["number"] not in self.steps_sent
                                              for _, run in epochs for i in run)
            extra = {"steps_per_epoch": steps} if first else {}
            bodies += [{**body, **extra} for body in self._report_bodies(epochs)]
        left = list(ends or [])
        if bodies and left and self.source.finish_in_report and len(left) <= FINISH_MOST \
                and _size(bodies[-1]) + _size(left) < self.source.body_limit - 512:
            bodies[-1]["finish"], left = left, []
        for body in bodies:
            self._send("report", body)
        return left

    def _report_bodies(self, epochs: list[tuple[int, list[dict[str, Any]]]]
                       ) -> Iterator[dict[str, Any]]:
        """Report bodies of these epochs: runs of consecutive epochs under the body limit and
        of at most ``REPORT_MOST`` values (the API takes 16,384); an epoch too big alone in
        chunks."""
        budget = self.source.body_limit - 512
        run: list[tuple[int, list[dict[str, Any]]]] = []
        size = count = 0
        for epoch, items in epochs:
            cost = len(json.dumps(items, separators=(",", ":"))) + 1
            if run and (epoch != run[-1][0] + 1 or size + cost > budget
                        or count + len(items) > REPORT_MOST):
                yield _report_body(run)
                run, size, count = [], 0, 0
            if cost > budget:
                for chunk in self.source.chunks(items, 512):
                    yield _report_body([(epoch, chunk)])
                continue
            run.append((epoch, items))
            size, count = size + cost, count + len(items)
        if run:
            yield _report_body(run)

    # -- endings ----------------------------------------------------------------------------
    def finish(self, slot: Slot, outcome: TrialOutcome) -> bool:
        number = slot.number
        self.ended.add(number)
        if number in self.lost or outcome.reason == LOST_MEANWHILE:
            return False
        if number in self.pruned:
            return True  # ended PRUNED by the server already
        item: dict[str, Any] = {"number": number, "state": outcome.state.name}
        if outcome.state.name == "COMPLETE" and outcome.value is not None:
            item["value"] = _finite(outcome.value)
        if outcome.reason:
            item["reason"] = outcome.reason[:1000]
        result = outcome.result
        if result is not None and result.epochs_run > len(result.values):
            item["metrics"] = _metrics(result.metrics)  # its last epoch was never reported
        self.endings.append(item)
        return True

    def flush(self) -> None:
        """Endings with every report before them; else the reports that are due."""
        if not self.endings:
            self.reports_done()
            return
        items, self.endings = self.endings, []
        left = self.send_reports([i for i in items if i["number"] not in self.lost])
        self._finish([i for i in left if i["number"] not in self.lost])

    def _finish(self, items: list[dict[str, Any]]) -> None:
        for run in self.source.chunks(items, 32):
            self._send("finish", {"trials": run})

    def hand_back(self, slots: list[Slot], why: str) -> None:
        if not [s for s in slots if s.number not in self.lost | self.pruned]:
            return
        try:
            self.source.post(self.path("release"), {"reason": why[:500]})
        except ClientError as error:
            if error.status not in LOST:
                raise
            log.warning("study %s lease %d: nothing to hand back (%s)", self.study, self.id,
                        first_line(error))

    # -- a lease's trials lost under the worker -----------------------------------------------
    def _send(self, action: str, body: dict[str, Any]) -> None:
        """POST a report or finish of some of the lease's trials. Refused because some of them
        no longer run (reaped as lost): those are dropped, and the rest sent again."""
        while body["trials"]:
            try:
                answer = self.source.post(self.path(action), body)
            except ClientError as error:
                ends = body.get("finish", [])
                if error.status == 422 and "finish" in body and error.field == "finish":
                    self.source.finish_in_report = False  # an API before it
                    self._send(action, {k: v for k, v in body.items() if k != "finish"})
                    self._finish(ends)
                    return
                if error.status == 422 and "later" in body and "later" in str(error):
                    self.source.several_epochs = self.waits = False  # an API before them
                    extra = _extra(body)
                    alone = [{**_report_body([epoch]), **extra} for epoch in _epochs_of(body)]
                    if ends:
                        alone[-1]["finish"] = ends
                    for one in alone:
                        self._send(action, one)
                    return
                if error.status not in LOST:
                    raise
                running = self._running()
                gone = [n for n in _numbers(body) if n not in running]
                if not gone:  # e.g. an epoch reported already, by a request that timed out
                    log.warning("study %s lease %d: %s refused, going on: %s", self.study,
                                self.id, action, first_line(error))
                    self._finish(ends)
                    return
                self.lost.update(gone)
                log.warning("study %s trials %s lost under this worker (reaped: their copies "
                            "run again); dropped: %s", self.study, gone, first_line(error))
                body = _keeping(body, running)
                if "epoch" not in body and body.get("finish"):  # no epoch left to report
                    action, body = "finish", {"trials": body["finish"]}
                continue
            if action == "report" and answer is not None:
                self.pruned.update(int(n) for n in answer["pruned"])
                self.steps_sent.update(_numbers(body))
            return

    def _running(self) -> set[int]:
        """The lease's trials still running on the server (none when the lease is gone)."""
        try:
            answer = self.source.post(self.path("heartbeat"))
        except ClientError as error:
            if error.status in LOST:
                return set()
            raise
        return {int(n) for n in (answer or {}).get("running", [])}


def _report_body(epochs: list[tuple[int, list[dict[str, Any]]]]) -> dict[str, Any]:
    """A report of consecutive epochs: the first as ``epoch`` and ``trials``, the rest as
    ``later`` (left out when there is none, as an API before it expects)."""
    body: dict[str, Any] = {"epoch": epochs[0][0], "trials": epochs[0][1]}
    if len(epochs) > 1:
        body["later"] = [items for _, items in epochs[1:]]
    return body


def _epochs_of(body: dict[str, Any]) -> list[tuple[int, list[dict[str, Any]]]]:
    if "epoch" not in body:
        return []
    return [(body["epoch"] + k, items)
            for k, items in enumerate([body["trials"], *body.get("later", [])])]


def _numbers(body: dict[str, Any]) -> list[int]:
    items = [i for _, run in _epochs_of(body) for i in run] if "epoch" in body \
        else body["trials"]
    return list(dict.fromkeys(int(i["number"]) for i in [*items, *body.get("finish", [])]))


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def _keeping(body: dict[str, Any], running: set[int]) -> dict[str, Any]:
    """``body`` with only the trials in ``running`` (a report: its leading and trailing
    epochs left empty dropped)."""
    if "epoch" not in body:
        return {**body, "trials": [i for i in body["trials"] if i["number"] in running]}
    epochs = [(e, [i for i in items if i["number"] in running]) for e, items in _epochs_of(body)]
    while epochs and not epochs[0][1]:
        epochs.pop(0)
    while epochs and not epochs[-1][1]:
        epochs.pop()
    ends = [i for i in body.get("finish", []) if i["number"] in running]
    kept: dict[str, Any] = {**_report_body(epochs), **_extra(body)} if epochs \
        else {"trials": []}
    return {**kept, "finish": ends} if ends else kept


def _extra(body: dict[str, Any]) -> dict[str, Any]:
    """A report's fields besides its epochs and endings."""
    return {k: v for k, v in body.items() if k not in ("epoch", "trials", "later", "finish")}
