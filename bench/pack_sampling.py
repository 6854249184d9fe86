"""What sampling a pack costs with TPE, lrtune's default sampler: milliseconds per trial to
sample a K-trial pack of the full default space (13 families, 5 optimizers: 17 parameter
groups) after N finished trials, with lrtune's TPE (``lrtune.tpe``: each group drawn when the
trial first uses it) and with Optuna's grouped TPE (every group drawn before the trial's
first parameter), on the same history and the same claimed pack, in one run.

    python bench/pack_sampling.py --history 256,512,1024 --pack 128

Samples through the worker's path (``Store.claim_pack``, then the space's suggestions on each
claim); no training. One JSON line per (history, sampler) into
bench/results/pack_sampling.jsonl, with the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402

from bench.machine import machine  # noqa: E402
from bench.overhead import drop_database, fresh_database  # noqa: E402
from lrtune.settings import Settings  # noqa: E402
from lrtune.space import SearchSpace  # noqa: E402
from lrtune.spec import StudySpec  # noqa: E402
from lrtune.store import Store, StudyRecord  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "pack_sampling.jsonl"


def optunas_tpe(seed: int) -> optuna.samplers.TPESampler:
    """Optuna's own grouped TPE with lrtune's settings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=True, n_startup_trials=10)


def history(store: Store, record: StudyRecord, n: int) -> None:
    """``n`` finished trials of random configs with random values (a fifth PRUNED)."""
    spec = record.spec
    study = store.optuna_study(record)
    space = SearchSpace(spec.space)
    source = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    rng = random.Random(0)
    finished = []
    for i in range(n):
        trial = source.ask()
        space.sample(trial)
        pruned = i % 5 == 4
        finished.append(optuna.trial.create_trial(
            params=trial.params, distributions=trial.distributions,
            state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
            value=None if pruned else rng.random()))
    study.add_trials(finished)


def sample_pack(spec: StudySpec, n: int, k: int, sampler: str, db: str) -> float:
    """Seconds to sample one claimed pack of ``k`` trials after ``n`` finished, on a fresh
    database."""
    with tempfile.TemporaryDirectory() as tmp:
        url = fresh_database(db, Path(tmp))
        try:
            store = Store(Settings(database_url=url))
            history(store, store.create_study(spec, "bench"), n)
            claims = store.claim_pack(k)
            assert len(claims) == k, len(claims)
            if sampler == "optuna":
                claims[0].trial.study.sampler = optunas_tpe(spec.sampler.seed or 0)
            space = SearchSpace(spec.space)
            start = time.perf_counter()
            for claim in claims:
                space.sample(claim.trial)
            seconds = time.perf_counter() - start
            store.engine.dispose()
            return seconds
        finally:
            drop_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--history", default="256,512,1024",
                        help="finished trials before the pack, comma-separated")
    parser.add_argument("--pack", type=int, default=128)
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = machine()
    for n in [int(h) for h in args.history.split(",")]:
        spec = StudySpec(name="sampling", task="digits-mlp", epochs=10,
                         n_trials=n + 4 * args.pack, pack=args.pack,
                         sampler={"name": "tpe", "seed": 0})
        rows = {}
        for sampler in ("lrtune", "optuna"):
            seconds = sample_pack(spec, n, args.pack, sampler, args.db)
            rows[sampler] = {"bench": "pack_sampling", "sampler": sampler, "db": args.db,
                             "history": n, "pack": args.pack, "seconds": round(seconds, 3),
                             "ms_per_trial": round(seconds / args.pack * 1e3, 2)}
        ratio = rows["optuna"]["seconds"] / rows["lrtune"]["seconds"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            for row in rows.values():
                row.update(optuna_over_lrtune=round(ratio, 2), machine=info)
                f.write(json.dumps(row) + "\n")
                print({k: v for k, v in row.items() if k != "machine"}, flush=True)


if __name__ == "__main__":
    main()
