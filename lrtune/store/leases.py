"""Trial leases: the claims of clients over HTTP, bound to the token that took them.

Thin on purpose: a lease claims through ``Claims`` (the one budget rule), samples each trial's
configuration here (a lease client does not run Optuna), and ends trials through
``Store.write_trials`` (the one way a trial ends); reaping is the workers' own. A lease's
trials are reported and finished only through it, by its token, and only while they run: a
trial reaped as lost (its copy re-queued) answers ``Conflict`` and nothing changes.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from lrtune import optuna_internals as internals
from lrtune import study as names
from lrtune.errors import Conflict, NotFound, SpecError
from lrtune.horizon import Rung
from lrtune.space import SearchSpace
from lrtune.store.db import now
from lrtune.store.judging import PruneJudge
from lrtune.store.studies import RUNNING, StudyRecord
from lrtune.store.tokens import Principal
from lrtune.store.trials import (
    Ending,
    bulk_insert,
    ids_in,
    record_heartbeats,
    replace_attrs,
    running_locked,
)
from lrtune.tables import lease_trials, leases
from lrtune.tasks import EXTERNAL

KNOWN_LEASES = 4096  # leases kept per process (a lease's token, study and trials never change)
MOST_REPORTED = 16_384  # values in one report, all its epochs: its cost to the server is linear

if TYPE_CHECKING:
    from lrtune.store import Store

ENDED = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}


class Forbidden(Exception):
    """The caller's token may not do this (403); ``field`` names what it asked for."""

    def __init__(self, message: str, field: str = "study_id") -> None:
        super().__init__(message)
        self.field = field


class StudyEnded(Conflict):
    """The study asked for no longer hands out trials (its status says why)."""


@dataclass(frozen=True)
class LeasedTrial:
    number: int
    trial_id: int
    params: dict[str, Any]
    config: dict[str, Any]
    seed: int
    horizon: dict[str, Any] | None = None  # a horizon ladder's rung


@dataclass(frozen=True)
class Lease:
    id: int
    record: StudyRecord
    trials: list[LeasedTrial]


@dataclass(frozen=True)
class EpochReport:
    number: int
    value: float
    lr: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialEnd:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None = None
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Reported:
    """A report's answer: the trials the study's pruner pruned, and those its ``ends``
    ended."""

    pruned: list[int]
    ended: list[int]


class Leases:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.judge = PruneJudge(store.finished_trials, self._running, self._all_finished,
                                store.read_trials)
        self._known: OrderedDict[int, tuple[int, StudyRecord, dict[int, int]]] = OrderedDict()
        self._known_lock = threading.Lock()
        # a trial's LR curve as this process last wrote it: the next report, if it comes
        # here, extends it without reading it back
        self._curves: OrderedDict[int, list[float]] = OrderedDict()

    # -- claim ----------------------------------------------------------------------------------
    def claim(self, caller: Principal, study_id: int | None, count: int | None,
              most: int | None = None) -> Lease | None:
        """Up to ``count`` trials of ``study_id`` (or of any study the caller may train) as
        one lease; None when there is nothing to claim now. ``count=None``: the study's
        ``pack`` where it is a number (at most ``most``), else one trial. An owner trains
        its own studies; a worker token any study of lrtune's own tasks."""
        store = self.store
        if study_id is not None:
            record = store.get_study(study_id)
            self._may_train(caller, record)
            if record.status != RUNNING:
                raise StudyEnded(f"study {study_id} is {record.status}"
                                 + (f" ({record.reason})" if record.reason else ""), "study_id")
            only: set[int] | None = {study_id}
            known = {study_id: record}
        else:
            only, known = None, {}
        only = self._sampled_here(only, caller, known)
        if only is not None and not only:
            return None
        claims = store.claim_pack(count, only, lambda _record: 1,
                                  external=None if not caller.is_worker else False,
                                  owner=None if caller.is_worker else caller.public_id,
                                  most=most)
        if not claims:
            return None
        record = claims[0].record
        try:
            return self._lease(caller, record, claims)
        except BaseException:
            store.hand_back(claims, "handed back: its lease could not be made")
            raise

    def _may_train(self, caller: Principal, record: StudyRecord) -> None:
        if caller.is_worker:
            if record.spec.task == EXTERNAL:
                raise Forbidden(f"study {record.id} is external: only its owner's token "
                                "trains it, not a worker token")
        elif record.owner != caller.public_id:
            raise Forbidden(f"study {record.id} belongs to another principal")

    def _sampled_here(self, only: set[int] | None, caller: Principal,
                      known: Mapping[int, StudyRecord]) -> set[int] | None:
        """Studies whose trials the server can sample: not those whose base LR waits for an
        LR range test (lrtune's own workers run it). ``known``: records read already."""
        ids = only if only is not None else set(self.store.studies.running_ids(
            None if not caller.is_worker else False,
            None if caller.is_worker else caller.public_id))
        ready = set()
        for study_id in ids:
            try:
                record = known.get(study_id) or self.store.get_study(study_id)
            except NotFound:
                continue
            if record.spec.space.lr != "auto" or record.lr_range is not None:
                ready.add(study_id)
            elif only is not None:
                raise StudyEnded(f"study {study_id} waits for its LR range test (space.lr "
                                 '"auto"), which one of lrtune\'s own workers runs first',
                                 "study_id")
        return ready

    def _lease(self, caller: Principal, record: StudyRecord, claims: Sequence[Any]) -> Lease:
        spec = record.search_spec
        space = SearchSpace(spec.space, names.direction(spec))
        attrs: list[dict[str, Any]] = []
        leased = []
        beat = [c.trial_id for c in claims]
        beaten = time.monotonic()  # the claim counts as the trials' first beat
        for claim in claims:
            if time.monotonic() - beaten > self.store.settings.heartbeat_interval:
                self.store.record_heartbeats(beat)  # a slow sampler: its trials look alive
                beaten = time.monotonic()
            config = space.sample(claim.trial)
            attrs.append(_attr(claim.trial_id, names.ATTR_CONFIG, config.to_dict()))
            if spec.steps_per_epoch is not None:
                attrs.append(_attr(claim.trial_id, names.ATTR_STEPS_PER_EPOCH,
                                   spec.steps_per_epoch))
            leased.append(LeasedTrial(claim.trial.number, claim.trial_id,
                                      dict(claim.trial.params), config.to_dict(),
                                      names.derived_seed(spec.seed, claim.trial.number),
                                      claim.rung.attr() if claim.rung else None))
        params = list({id(c.params): c.params for c in claims if c.params}.values())
        with self.store.transaction() as conn:
            self.store.write_rows(conn, record, params=params, user_attrs=attrs)
            lease_id = int(conn.execute(leases.insert().values(
                token_id=caller.token_id, study_id=record.id, created_at=now())
                .returning(leases.c.id)).scalar_one())
            bulk_insert(conn, lease_trials, [
                {"trial_id": t.trial_id, "lease_id": lease_id, "number": t.number}
                for t in leased])
        self._know(lease_id, (caller.token_id, record, {t.number: t.trial_id for t in leased}))
        return Lease(lease_id, record, leased)

    # -- the lease's trials ----------------------------------------------------------------------
    def _held(self, caller: Principal, lease_id: int) -> tuple[StudyRecord, dict[int, int]]:
        """The lease's study and its trials (number -> trial id); NotFound, or Forbidden for
        another token's lease. A lease never changes: kept per process once made or read, with
        its study's record as then (as a direct worker keeps its claim's: the writes that depend
        on the study's status check it in the database)."""
        with self._known_lock:
            known = self._known.get(lease_id)
            if known is not None:
                self._known.move_to_end(lease_id)
        if known is None:
            with self.store.transaction() as conn:
                row = conn.execute(sa.select(leases).where(leases.c.id == lease_id)).first()
                if row is None:
                    raise NotFound(f"no lease {lease_id}", "lease_id")
                held = {int(n): int(t) for t, n in conn.execute(
                    sa.select(lease_trials.c.trial_id, lease_trials.c.number)
                    .where(lease_trials.c.lease_id == lease_id))}
            known = (int(row.token_id), self.store.get_study(int(row.study_id)), held)
            self._know(lease_id, known)
        token_id, record, held = known
        if token_id != caller.token_id:
            raise Forbidden(f"lease {lease_id} belongs to another token", "lease_id")
        return record, held

    def _know(self, lease_id: int, known: tuple[int, StudyRecord, dict[int, int]]) -> None:
        with self._known_lock:
            self._known[lease_id] = known
            while len(self._known) > KNOWN_LEASES:
                self._known.popitem(last=False)

    @staticmethod
    def _in_lease(held: dict[int, int], fields: dict[int, str]) -> dict[int, int]:
        """The trial ids of these numbers (number -> the field that sent it); Conflict naming
        the first that is not in the lease."""
        for number, where in fields.items():
            if number not in held:
                raise Conflict(f"trial {number} is not in this lease", where)
        return {n: held[n] for n in fields}

    def _kept_curves(self, lengths: Mapping[int, int]) -> dict[int, list[float]]:
        """The LR curves this process wrote last for these trials (trial id -> the epoch it
        reports next), where they end just before that epoch (else another replica took a
        report since, or none was kept: read them)."""
        with self._known_lock:
            return {t: curve for t, epoch in lengths.items()
                    if (curve := self._curves.get(t)) is not None and len(curve) == epoch}

    def _keep_curves(self, written: dict[int, list[float]]) -> None:
        with self._known_lock:
            for trial_id, curve in written.items():
                self._curves[trial_id] = curve
                self._curves.move_to_end(trial_id)
            while len(self._curves) > KNOWN_LEASES:
                self._curves.popitem(last=False)

    def _still_running(self, conn: sa.Connection, ids: dict[int, int], fields: dict[int, str]
                       ) -> dict[int, int]:
        """Lock the trials' rows; Conflict naming (``fields``: number -> the field that sent
        it) the first that no longer runs. The epochs each has reported, by trial id."""
        running = running_locked(conn, list(ids.values()))
        for number, where in fields.items():
            if ids[number] not in running:
                state = next((TrialState(v) for v in conn.execute(
                    sa.select(internals.TRIALS.c.state).where(
                        internals.TRIALS.c.trial_id == ids[number])).scalars()), None)
                why = "it was reaped as lost (its copy is re-run by another claim)" \
                    if state == TrialState.FAIL else f"it is {state.name if state else 'gone'}"
                raise Conflict(f"trial {number} is no longer running: {why}", where)
        return running

    def _states(self, trial_ids: list[int]) -> dict[int, TrialState]:
        t = internals.TRIALS
        with self.store.transaction() as conn:
            return {int(i): TrialState(s) for i, s in conn.execute(
                sa.select(t.c.trial_id, t.c.state).where(ids_in(t.c.trial_id, trial_ids)))}

    def heartbeat(self, caller: Principal, lease_id: int) -> list[int]:
        """Beat the lease's running trials; their numbers. Conflict when none runs."""
        _, held = self._held(caller, lease_id)
        states = self._states(list(held.values()))
        running = {n: t for n, t in held.items() if states.get(t) == TrialState.RUNNING}
        if not running:
            raise Conflict(f"lease {lease_id} has no running trial (finished, or reaped as "
                           "lost: their copies are re-run)", "lease_id")
        self.store.record_heartbeats(list(running.values()))
        return sorted(running)

    def report(self, caller: Principal, lease_id: int, epoch: int,
               epochs: Sequence[Sequence[EpochReport]], steps_per_epoch: int | None = None,
               ends: Sequence[TrialEnd] = ()) -> Reported:
        """Record epochs ``epoch``, ``epoch + 1``, … of the lease's trials (``epochs[k]``: the
        metric, LR and metrics of epoch ``epoch + k``; each trial's epochs in order, from
        the next it owes), and beat them; ``ends``: trials that end with it, as ``finish``
        ends them (its request and transaction saved). Answers the numbers the study's
        pruner prunes, judged at each trial's last epoch here (those not ending), which end
        PRUNED here and now, and those of ``ends`` ended. One transaction, the trials' rows
        locked: a finish or a reap in between waits, then finds them ended (409, nothing
        written)."""
        record, held = self._held(caller, lease_id)
        ending = self._check_ends(ends, "finish")
        if sum(len(reports) for reports in epochs) > MOST_REPORTED:
            raise SpecError("later", f"at most {MOST_REPORTED} values in one report (trials "
                            "times epochs): send the rest in another")
        last = epoch + len(epochs) - 1
        if last >= record.spec.epochs:
            where = "epoch" if len(epochs) == 1 else f"later[{len(epochs) - 2}]"
            raise SpecError(where, f"the study trains {record.spec.epochs} epochs (0 to "
                            f"{record.spec.epochs - 1}); got {last}")
        wheres = ["trials", *(f"later[{k}]" for k in range(len(epochs) - 1))]
        for reports, where in zip(epochs, wheres, strict=True):
            numbers = [r.number for r in reports]
            if len(set(numbers)) != len(numbers):
                raise SpecError(where, "a trial is reported twice in one epoch")
        sent: dict[int, str] = {}  # each trial's number -> where it is first named
        for reports, where in zip(epochs, wheres, strict=True):
            for i, r in enumerate(reports):
                sent.setdefault(r.number, f"{where}[{i}].number")
        numbers = list(sent)
        ids = self._in_lease(held, {**ending, **sent})
        iv, attrs = internals.INTERMEDIATE, internals.USER_ATTRS
        applied: list[Ending] = []
        try:
            with self.store.transaction() as conn:
                reported = self._still_running(conn, ids, {**ending, **sent})
                owed = {ids[n]: reported[ids[n]] for n in numbers}  # the next epoch of each
                for k, (reports, where) in enumerate(zip(epochs, wheres, strict=True)):
                    for i, r in enumerate(reports):
                        if owed[ids[r.number]] != epoch + k:
                            raise Conflict(
                                f"trial {r.number} reports epoch {owed[ids[r.number]]} next, "
                                f"not {epoch + k} (epochs are reported once, in order)",
                                f"{where}[{i}].number")
                        owed[ids[r.number]] += 1
                curves = self._kept_curves({ids[n]: reported[ids[n]] for n in numbers})
                if missing := [ids[n] for n in numbers if ids[n] not in curves]:
                    curves.update({int(t): json.loads(v) for t, v in conn.execute(
                        sa.select(attrs.c.trial_id, attrs.c.value_json).where(
                            ids_in(attrs.c.trial_id, missing),
                            attrs.c.key == names.ATTR_LR_CURVE))})
                values, rows = [], []
                curved: dict[int, list[float]] = {}
                metrics: dict[int, dict[str, float]] = {}
                for k, reports in enumerate(epochs):
                    for r in reports:
                        trial_id = ids[r.number]
                        stored, kind = internals.stored_intermediate(r.value)
                        values.append({"trial_id": trial_id, "step": epoch + k,
                                       "intermediate_value": stored,
                                       "intermediate_value_type": kind})
                        if r.lr is not None:  # epochs reported without an LR repeat the last
                            curve = curved.get(trial_id)
                            if curve is None:
                                curve = curved[trial_id] = list(curves.get(trial_id, []))[
                                    :epoch + k]
                            curve += [curve[-1] if curve else r.lr] * (epoch + k - len(curve))
                            curve.append(r.lr)
                        if r.metrics:
                            metrics[trial_id] = r.metrics
                rows += [_attr(t, names.ATTR_LR_CURVE, curve) for t, curve in curved.items()]
                for trial_id, kept in metrics.items():
                    rows.append(_attr(trial_id, names.ATTR_METRICS, kept))
                if steps_per_epoch is not None:
                    rows += [_attr(t, names.ATTR_STEPS_PER_EPOCH, steps_per_epoch)
                             for t in {ids[n] for n in numbers}]  # not those only ending
                bulk_insert(conn, iv, values)
                replace_attrs(conn, rows)
                record_heartbeats(conn, list(ids.values()))  # a report is a sign of life
                if ends:
                    endings, notes = self._endings(conn, record, ids, ends)
                    applied = self.store.write_rows(conn, record, endings=endings,
                                                    end_attrs=notes)
        except sa.exc.IntegrityError:  # the same epoch written by a request at the same time
            raise Conflict(f"epoch {epoch} of these trials was reported already",
                           "epoch") from None
        self._keep_curves(curved)
        if ends:
            self.store.after_endings(record, applied, last_slot=True)
        ended = sorted(e.number for e in applied)
        closing = {ids[n] for n in ending}
        judged = [t for t, next_epoch in owed.items()
                  if next_epoch < record.spec.epochs and t not in closing]
        if not judged:  # the last epoch is a result, never pruned
            return Reported([], ended)
        study = self.store.optuna_study(record)
        pruned = self.judge.prune(record, study, judged)
        if not pruned:
            return Reported([], ended)
        cut = self.store.write_trials(
            record, endings=[Ending(ids[n], n, TrialState.PRUNED) for n in pruned],
            end_attrs={ids[n]: [_attr(ids[n], names.ATTR_REASON, "pruned")] for n in pruned},
            last_slot=True)
        return Reported(sorted(e.number for e in cut), ended)

    def finish(self, caller: Principal, lease_id: int, ends: Sequence[TrialEnd]) -> list[int]:
        """End the lease's trials as the client says; the numbers ended. Conflict when none
        could end (each had ended already: finished, pruned, reaped or handed back)."""
        record, held = self._held(caller, lease_id)
        sent = self._check_ends(ends, "trials")
        ids = self._in_lease(held, sent)
        with self.store.transaction() as conn:
            self._still_running(conn, ids, sent)
            endings, notes = self._endings(conn, record, ids, ends)
        applied = self.store.write_trials(record, endings=endings, end_attrs=notes,
                                          last_slot=True)
        if not applied:  # another request ended them between the check and the ending
            raise Conflict("these trials ended meanwhile (finished by another request, or "
                           "reaped as lost)", "trials[0].number")
        return sorted(e.number for e in applied)

    @staticmethod
    def _check_ends(ends: Sequence[TrialEnd], where: str) -> dict[int, str]:
        """Each ending's number -> the field that sent it; SpecError for a trial ended twice
        or a COMPLETE without a finite value."""
        numbers = [e.number for e in ends]
        if len(set(numbers)) != len(numbers):
            raise SpecError(where, "a trial is finished twice in one request")
        for i, e in enumerate(ends):
            if e.state == "COMPLETE" and (e.value is None or not math.isfinite(e.value)):
                raise SpecError(f"{where}[{i}].value", "a COMPLETE trial needs its finite "
                                'value (a diverged one ends PRUNED with reason "diverged")')
        return {n: f"{where}[{i}].number" for i, n in enumerate(numbers)}

    @staticmethod
    def _endings(conn: sa.Connection, record: StudyRecord, ids: dict[int, int],
                 ends: Sequence[TrialEnd]) -> tuple[list[Ending], dict[int, list[dict[str, Any]]]]:
        """The client's endings as written (a horizon ladder's run below the top rung ends
        PRUNED: only full horizons COMPLETE) and their reasons' and metrics' attributes."""
        short: dict[int, Rung] = {}
        if record.spec.pruner.name == "horizon":
            short = _below_the_top(conn, [ids[e.number] for e in ends])
        notes: dict[int, list[dict[str, Any]]] = {}
        endings = []
        for e in ends:
            trial_id = ids[e.number]
            if e.state == "COMPLETE" and trial_id in short:
                e = TrialEnd(e.number, "PRUNED", None, short[trial_id].reason(), e.metrics)
            rows = notes.setdefault(trial_id, [])
            if e.state != "COMPLETE":
                rows.append(_attr(trial_id, names.ATTR_REASON, (e.reason or (
                    "pruned" if e.state == "PRUNED" else "failed"))[:1000]))
            if e.metrics:
                rows.append(_attr(trial_id, names.ATTR_METRICS, e.metrics))
            endings.append(Ending(trial_id, e.number, ENDED[e.state],
                                  e.value if e.state == "COMPLETE" else None))
        return endings, notes

    def release(self, caller: Principal, lease_id: int, reason: str) -> list[int]:
        """Hand the lease's running trials back (re-queued, not counted as failures)."""
        record, held = self._held(caller, lease_id)
        states = self._states(list(held.values()))
        running = [t for t in held.values() if states.get(t) == TrialState.RUNNING]
        self.store.hand_back_ids(record, running, f"handed back: {reason}"[:1000])
        after = self._states(running)
        handed = {t for t in running if after.get(t) == TrialState.FAIL}
        return sorted(n for n, t in held.items() if t in handed)

    def _all_finished(self, record: StudyRecord) -> list[FrozenTrial]:
        """The study's COMPLETE and PRUNED trials in one bulk read."""
        return self.store.optuna_storage.get_all_trials(
            self.store.optuna_study_id(record), deepcopy=False,
            states=(TrialState.COMPLETE, TrialState.PRUNED))

    def _running(self, record: StudyRecord) -> list[FrozenTrial]:
        return self.store.optuna_storage.get_all_trials(
            self.store.optuna_study_id(record), deepcopy=False, states=(TrialState.RUNNING,))


def _below_the_top(conn: sa.Connection, trial_ids: list[int]) -> dict[int, Rung]:
    """The horizon ladder's rungs of those of ``trial_ids`` that run below the top rung."""
    attrs = internals.USER_ATTRS
    rows = conn.execute(sa.select(attrs.c.trial_id, attrs.c.value_json).where(
        attrs.c.key == names.ATTR_HORIZON, attrs.c.trial_id.in_(trial_ids)))
    rungs = {int(tid): Rung.from_attr(json.loads(value)) for tid, value in rows}
    return {tid: rung for tid, rung in rungs.items() if rung is not None and not rung.top}


def _attr(trial_id: int, key: str, value: Any) -> dict[str, Any]:
    return {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
