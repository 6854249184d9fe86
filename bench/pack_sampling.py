"""What sampling a pack costs with TPE, lrtune's default sampler: milliseconds per trial to
sample a K-trial pack of the full default space (13 families, 5 optimizers: 17 parameter
groups) after N finished trials, with lrtune's TPE (``lrtune.tpe``: each group drawn when the
trial first uses it) and with Optuna's grouped TPE (every group drawn before the trial's
first parameter), on the same history and the same claimed pack, in one run.

    python bench/pack_sampling.py --history 256,512,1024 --pack 128
    python bench/pack_sampling.py --history 1024 --pack 1      # the one-trial path

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


def sample_packs(spec: StudySpec, n: int, k: int, packs: int, sampler: str, db: str
                 ) -> float:
    """Seconds to sample ``packs`` claimed packs of ``k`` trials one after another (each
    finished before the next claim) after ``n`` finished trials, on a fresh database."""
    with tempfile.TemporaryDirectory() as tmp:
        url = fresh_database(db, Path(tmp))
        try:
            store = Store(Settings(database_url=url))
            history(store, store.create_study(spec, "bench"), n)
            space = SearchSpace(spec.space)
            seconds = 0.0
            for _ in range(packs):
                claims = store.claim_pack(k)
                assert len(claims) == k, len(claims)
                if sampler == "optuna":  # a claim reseeds the study's sampler: replace it
                    claims[0].trial.study.sampler = optunas_tpe(spec.sampler.seed or 0)
                start = time.perf_counter()
                for claim in claims:
                    space.sample(claim.trial)
                seconds += time.perf_counter() - start
                for claim in claims:
                    store.finish(claim, optuna.trial.TrialState.COMPLETE, 0.5)
            store.engine.dispose()
            return seconds
        finally:
            drop_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--history", default="256,512,1024",
                        help="finished trials before the pack, comma-separated")
    parser.add_argument("--pack", type=int, default=128,
                        help="trials per claim; 1 is the one-trial path")
    parser.add_argument("--packs", type=int, default=None,
                        help="claims sampled in a row (default: 1, or 30 with --pack 1)")
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = machine()
    packs = args.packs or (30 if args.pack == 1 else 1)
    trials = packs * args.pack
    for n in [int(h) for h in args.history.split(",")]:
        spec = StudySpec(name="sampling", task="digits-mlp", epochs=10,
                         n_trials=n + trials, pack=args.pack,
                         sampler={"name": "tpe", "seed": 0})
        rows = {}
        for sampler in ("lrtune", "optuna"):
            seconds = sample_packs(spec, n, args.pack, packs, sampler, args.db)
            rows[sampler] = {"bench": "pack_sampling", "sampler": sampler, "db": args.db,
                             "history": n, "pack": args.pack, "packs": packs,
                             "seconds": round(seconds, 3),
                             "ms_per_trial": round(seconds / trials * 1e3, 2)}
        ratio = rows["optuna"]["seconds"] / rows["lrtune"]["seconds"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            for row in rows.values():
                row.update(optuna_over_lrtune=round(ratio, 2), machine=info)
                f.write(json.dumps(row) + "\n")
                print({k: v for k, v in row.items() if k != "machine"}, flush=True)


if __name__ == "__main__":
    main()
