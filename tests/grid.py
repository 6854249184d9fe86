"""Schedules and horizons to check every family against: defaults plus seeded samples."""

from __future__ import annotations

import random
import zlib
from typing import Any

from lrtune.schedules import FAMILIES, WARMUP, Param, Schedule

HORIZONS = [(7, 13), (20, 5), (3, 1)]  # (epochs, steps per epoch)
# A metric that improves, stalls and wobbles, so plateau reduces several times.
METRICS = [1.0, 0.8, 0.7, 0.7, 0.71, 0.69, 0.69, 0.69, 0.5, 0.5, 0.5, 0.52, 0.5, 0.49,
           0.49, 0.49, 0.49, 0.3, 0.3, 0.3]


def _draw(p: Param, rng: random.Random) -> Any:
    if not p.searched:
        return p.default
    if p.kind == "categorical":
        return rng.choice(p.choices)
    assert p.low is not None and p.high is not None
    if p.kind == "int":
        return rng.randint(int(p.low), int(p.high))
    return rng.uniform(p.low, p.high)


def grid(samples: int = 3) -> list[Schedule]:
    rng = random.Random(42)
    out: list[Schedule] = []
    for name, fam in FAMILIES.items():
        variants = [{}] + [{p.name: _draw(p, rng) for p in fam.params.params}
                           for _ in range(samples)]
        for i, params in enumerate(variants):
            if name == "wsd" and params and params["warmup"] + params["decay"] > 1:
                continue
            warmup = {p.name: _draw(p, rng) for p in WARMUP.params} if i % 2 else None
            out.append(Schedule.build(name, params, warmup))
        out.append(Schedule.build(name, {}, {}, {"min_lr": 1e-3, "max_lr": 0.05}))
    return out


def schedule_id(s: Schedule) -> str:
    mods = "+warmup" if s.warmup else ""
    mods += "+clip" if s.clip else ""
    # crc32, not hash(): the same id in every process (pytest-xdist's workers compare them)
    return f"{s.family}{mods}-{zlib.crc32(repr(s.params).encode()) % 10000}"
