"""What lrtune adds to optuna-dashboard: each trial's curve image and the best-schedule note.

Curve images are Optuna artifacts whose bytes are drawn on request from the trial's stored
data (intermediate values and the ``lr_curve`` attribute): a finished trial gets only the
artifact's meta row, so a fused pack of hundreds of trials pays nothing for images, and a fleet
of workers needs no shared file store. The artifact id encodes the study and trial ids.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from lrtune import study as names

ARTIFACT_PREFIX = "artifacts:"  # Optuna's trial system attribute prefix for artifact meta
CURVE_MARK = 0x6C72_7475_6E65  # "lrtune": the top 48 bits of a curve artifact's id
ID_BITS = 40  # then the study id, then the trial id
NOTE_TRIAL = "lrtune:best_note_trial"  # study system attr: the trial the note describes
log = logging.getLogger("lrtune.dashboard")


def curve_artifact_id(study_id: int, trial_id: int) -> str:
    return str(uuid.UUID(int=(CURVE_MARK << 2 * ID_BITS) | (study_id << ID_BITS) | trial_id))


def curve_ids(artifact_id: str) -> tuple[int, int] | None:
    """(study id, trial id) of a curve artifact; None for any other artifact."""
    try:
        value = uuid.UUID(artifact_id).int
    except ValueError:
        return None
    if value >> 2 * ID_BITS != CURVE_MARK:
        return None
    mask = 2**ID_BITS - 1
    return (value >> ID_BITS) & mask, value & mask


def curve_artifact_attr(study_id: int, trial_id: int, number: int) -> tuple[str, str]:
    """The trial system attribute (key, JSON) that lists the curve artifact on the trial."""
    artifact_id = curve_artifact_id(study_id, trial_id)
    meta = {"artifact_id": artifact_id, "filename": f"trial_{number}_lr_and_loss.png",
            "mimetype": "image/png", "encoding": None}
    return ARTIFACT_PREFIX + artifact_id, json.dumps(meta)


class CurveArtifactStore:
    """An Optuna ``ArtifactStore``: curve artifacts drawn from the storage; anything else
    (files uploaded in the dashboard) kept in ``upload_dir`` when one is set."""

    def __init__(self, storage: optuna.storages.BaseStorage,
                 upload_dir: Path | None = None) -> None:
        self.storage = storage
        self.uploads = FileSystemArtifactStore(str(upload_dir)) if upload_dir else None

    def open_reader(self, artifact_id: str) -> BinaryIO:
        ids = curve_ids(artifact_id)
        if ids is None:
            if self.uploads is None:
                raise ArtifactNotFound(f"no artifact {artifact_id}")
            return self.uploads.open_reader(artifact_id)
        from lrtune.plots import trial_png

        study_id, trial_id = ids
        try:
            trial = self.storage.get_trial(trial_id)
            spec = self.storage.get_study_user_attrs(study_id).get(names.STUDY_ATTR_SPEC, {})
            title = self.storage.get_study_name_from_id(study_id)
        except KeyError:
            raise ArtifactNotFound(f"no trial {trial_id} in study {study_id}") from None
        return io.BytesIO(trial_png(trial, spec.get("objective", "objective"), title))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        if self.uploads is None:
            raise ValueError("uploads are off: set LRTUNE_ARTIFACT_DIR to keep uploaded files")
        self.uploads.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        if curve_ids(artifact_id) is None and self.uploads is not None:
            self.uploads.remove(artifact_id)


def name_objective(study: optuna.Study, objective: str) -> None:
    """The dashboard labels the value axis with the objective's name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([objective])


def best_note(study_name: str, spec: dict[str, Any], trial: optuna.trial.FrozenTrial,
              code: str) -> str:
    """Markdown for the study's dashboard note."""
    params = "\n".join(f"| `{k}` | `{v!r}` |" for k, v in sorted(trial.params.items()))
    return (f"## Best schedule so far: trial {trial.number}\n\n"
            f"**{spec.get('objective', 'objective')} = {trial.value:.6g}** on task "
            f"`{spec.get('task', '?')}`, {spec.get('epochs', '?')} epochs "
            f"(study `{study_name}`; updated by lrtune whenever the best trial changes).\n\n"
            f"| parameter | value |\n|---|---|\n{params}\n\n"
            f"### PyTorch\n\n```python\n{code}```\n")


def note_is_stale(storage: optuna.storages.BaseStorage, study_id: int) -> bool:
    """Whether the study has a best trial the note does not describe yet."""
    try:
        best = storage.get_best_trial(study_id)
    except ValueError:
        return False
    return bool(storage.get_study_system_attrs(study_id).get(NOTE_TRIAL) != best.number)


def update_best_note(storage: optuna.storages.BaseStorage, study_id: int) -> bool:
    """Rewrite the study's note when its best trial changed; True when written. Callers
    serialise it per study: a note is several attribute rows."""
    from optuna_dashboard import save_note

    from lrtune.export import export
    from lrtune.results import parse_spec
    from lrtune.space import SearchSpace

    if not note_is_stale(storage, study_id):
        return False
    best = storage.get_best_trial(study_id)
    raw = storage.get_study_user_attrs(study_id).get(names.STUDY_ATTR_SPEC)
    if raw is None:
        return False
    spec = parse_spec(raw)
    config = SearchSpace(spec.space, names.direction(spec)).decode(best.params)
    spe = int(best.user_attrs.get(names.ATTR_STEPS_PER_EPOCH, 1))
    name = storage.get_study_name_from_id(study_id)
    code = export(config, "pytorch", spec.epochs, spe,
                  f"study {name} trial #{best.number}, {spec.objective} {best.value:.6g}",
                  objective=spec.objective, direction=names.direction(spec))
    study = optuna.load_study(study_name=name, storage=storage)
    save_note(study, best_note(name, raw, best, code))
    storage.set_study_system_attr(study_id, NOTE_TRIAL, best.number)
    return True


class BestNotes:
    """Keeps each study's dashboard note on its best trial. ``serialise(study_id)`` holds the
    study's claim lock (one note writer per study) and yields None when the study is gone."""

    def __init__(self, storage: optuna.storages.BaseStorage,
                 serialise: Callable[[int], AbstractContextManager[object | None]]) -> None:
        self.storage, self.serialise = storage, serialise
        self._noted: dict[int, float | None] = {}  # best value the study's note describes

    def update(self, study_id: int, optuna_study_id: int, name: str, minimize: bool,
               value: float | None = None) -> None:
        """``value``, the trial just finished, skips the check when it cannot be a new best.
        A failure here never fails a trial: it is logged."""
        noted = self._noted.get(study_id)
        if value is not None and noted is not None:
            if (value >= noted) if minimize else (value <= noted):
                return
        try:
            if note_is_stale(self.storage, optuna_study_id):
                with self.serialise(study_id) as held:
                    if held is not None:
                        update_best_note(self.storage, optuna_study_id)
            self._noted[study_id] = self.storage.get_best_trial(optuna_study_id).value
        except Exception as error:  # noqa: BLE001 - cosmetic: log and go on
            log.warning("study %s: best-schedule note not written: %s", name, error)
