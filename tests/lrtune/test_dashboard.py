"""Curve artifacts drawn from the storage, and the best-schedule note, on a real database."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna_dashboard import get_note

from lrtune import optuna_internals as internals
from lrtune import study as names
from lrtune.dashboard import (
    CurveArtifactStore,
    curve_artifact_attr,
    curve_artifact_id,
    curve_ids,
    update_best_note,
)
from lrtune.store import sqlalchemy_url


def test_curve_ids_round_trip_and_other_ids_are_not_curves() -> None:
    for study_id, trial_id in [(1, 1), (7, 123_456), (2**40 - 1, 2**40 - 1)]:
        assert curve_ids(curve_artifact_id(study_id, trial_id)) == (study_id, trial_id)
    assert curve_ids("0f8fad5b-d9cb-469f-a165-70867728950e") is None
    assert curve_ids("not-a-uuid") is None


@pytest.fixture
def study(db_url: str) -> optuna.Study:
    storage = optuna.storages.RDBStorage(sqlalchemy_url(db_url))
    created = optuna.create_study(storage=storage, study_name="notes")
    created.set_user_attr(names.STUDY_ATTR_SPEC, {
        "name": "notes", "task": "linreg", "epochs": 3, "objective": "val_loss",
        "space": {"families": ["cosine"], "optimizers": ["sgd"]}})
    return created


def finish(study: optuna.Study, value: float, lr: float) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    trial.suggest_categorical("schedule", ["cosine"])
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.suggest_categorical("optimizer", ["sgd"])
    trial.suggest_float("cosine.eta_min_ratio", 0.0, 0.5)
    for epoch, v in enumerate([value * 3, value * 2, value]):
        trial.report(v, epoch)
    trial.set_user_attr(names.ATTR_LR_CURVE, [lr, lr / 2, lr / 4])
    trial.set_user_attr(names.ATTR_STEPS_PER_EPOCH, 5)
    storage = internals.storage_of(study)
    storage.set_trial_system_attr(internals.trial_id(trial), *curve_artifact_attr(
        internals.study_id(study), internals.trial_id(trial), trial.number))
    study.tell(trial, value)
    return study.trials[-1]


def test_curve_artifact_is_a_png_of_the_trial(study: optuna.Study, tmp_path: Path) -> None:
    trial = finish(study, 0.5, 0.1)
    store = CurveArtifactStore(internals.storage_of(study))
    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=internals.storage_of(study))
    assert [m.mimetype for m in metas] == ["image/png"]
    png = store.open_reader(metas[0].artifact_id).read()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    with pytest.raises(ArtifactNotFound):
        store.open_reader(curve_artifact_id(internals.study_id(study), 10_000))
    with pytest.raises(ArtifactNotFound):
        store.open_reader("0f8fad5b-d9cb-469f-a165-70867728950e")
    with pytest.raises(ValueError, match="LRTUNE_ARTIFACT_DIR"):
        store.write("0f8fad5b-d9cb-469f-a165-70867728950e", io.BytesIO(b"x"))
    uploads = CurveArtifactStore(internals.storage_of(study), tmp_path)
    uploads.write("0f8fad5b-d9cb-469f-a165-70867728950e", io.BytesIO(b"kept"))
    assert uploads.open_reader("0f8fad5b-d9cb-469f-a165-70867728950e").read() == b"kept"


def test_note_follows_the_best_trial(study: optuna.Study) -> None:
    storage = internals.storage_of(study)
    assert not update_best_note(storage, internals.study_id(study))  # no complete trial yet
    finish(study, 0.5, 0.1)
    assert update_best_note(storage, internals.study_id(study))
    assert get_note(study).startswith("## Best schedule so far: trial 0\n")
    assert "torch.optim.SGD" in get_note(study)
    assert not update_best_note(storage, internals.study_id(study))  # unchanged best: no rewrite
    finish(study, 0.9, 0.2)  # worse
    assert not update_best_note(storage, internals.study_id(study))
    finish(study, 0.1, 0.3)  # better
    assert update_best_note(storage, internals.study_id(study))
    note = get_note(study)
    assert note.startswith("## Best schedule so far: trial 2\n")
    assert "val_loss = 0.1**" in note and "val_loss = 0.5" not in note  # old text cleared
