"""A trial's schedule and optimizer as ready-to-paste PyTorch or Keras code.

PyTorch code uses the same ``torch_plan`` the worker trains with; where no built-in class
fits, and for Keras, the catalogue's pure formula source is pasted in as ``lr_at``.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from lrtune.optimizers import OPTIMIZERS
from lrtune.schedules import FAMILIES, formulas
from lrtune.schedules.torch_plan import torch_plan
from lrtune.space import TrialConfig

Framework = Literal["pytorch", "keras"]
KERAS_MARKER = "# --- Keras wiring (needs keras 3) ---"

KERAS_OPTIMIZERS = {"sgd": "SGD", "momentum": "SGD", "adam": "Adam", "adamw": "AdamW",
                    "rmsprop": "RMSprop"}


def _kwargs(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _header(config: TrialConfig, epochs: int, steps_per_epoch: int, note: str) -> list[str]:
    s = config.schedule
    mods = "".join(f" + {m}" for m in ("warmup", "clip") if getattr(s, m) is not None)
    return [
        f"# lrtune schedule: {s.family}{mods}; {note}".rstrip("; "),
        f"# formula: {FAMILIES[s.family].formula}",
        "# The schedule is per optimizer step; STEPS_PER_EPOCH must equal len(train_loader).",
        f"EPOCHS = {epochs}",
        f"STEPS_PER_EPOCH = {steps_per_epoch}",
        "TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH",
        f"BASE_LR = {config.optimizer.lr!r}",
        "",
    ]


def formula_source(config: TrialConfig) -> str:
    """Self-contained source defining ``lr_at(t, metrics=())`` for this schedule."""
    s = config.schedule
    fam = FAMILIES[s.family]
    helpers = [formulas.fraction_steps]
    if s.family == "multistep":
        helpers += [formulas.multistep_milestones, formulas.multistep_steps]
    parts = ["import bisect", "import functools", "import math", "import random",
             "from functools import partial", ""]
    parts += [inspect.getsource(f) for f in [*helpers, fam.fn]]
    lines = [f"    fn = partial({fam.fn.__name__}, {_kwargs(s.params)})"]
    if s.warmup is not None:
        wrap = formulas.warmup_scaled if fam.metric_driven else formulas.warmup_sequential
        parts.append(inspect.getsource(wrap))
        lines.append(f"    fn = partial({wrap.__name__}, fn, {_kwargs(s.warmup)})")
    if s.clip is not None:
        parts.append(inspect.getsource(formulas.clip))
        lines.append(f"    fn = partial(clip, fn, {_kwargs(s.clip)})")
    parts.append("def lr_at(t, metrics=()):\n"
                 '    """LR at 0-based optimizer step t; metrics: validation metric per epoch."""\n'
                 + "\n".join(lines)
                 + "\n    return fn(t, TOTAL_STEPS, STEPS_PER_EPOCH, BASE_LR, metrics)\n")
    return "\n".join(parts)


def pytorch_code(config: TrialConfig, epochs: int, steps_per_epoch: int, note: str = "") -> str:
    opt = config.optimizer
    total = epochs * steps_per_epoch
    plan = torch_plan(config.schedule, total, steps_per_epoch, opt.lr)
    out = ["import torch", ""] + _header(config, epochs, steps_per_epoch, note)
    opt_kw = _kwargs(opt.torch_kwargs())
    out.append(f"optimizer = torch.optim.{OPTIMIZERS[opt.name].torch_class}("
               f"model.parameters(), lr=BASE_LR, {opt_kw})")
    step_note = "# Call scheduler.step() after every optimizer.step()."
    if plan.on_metric:
        (cls, kw), = plan.steps
        out.append(f"scheduler = torch.optim.lr_scheduler.{cls}(optimizer, {_kwargs(kw)})")
        step_note = "# Call scheduler.step(val_metric) once at the end of every epoch."
    elif plan.milestone is not None:
        names = []
        for i, (cls, kw) in enumerate(plan.steps):
            names.append(f"phase{i + 1}")
            out.append(f"phase{i + 1} = torch.optim.lr_scheduler.{cls}(optimizer, {_kwargs(kw)})")
        out.append(f"scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, "
                   f"[{', '.join(names)}], milestones=[{plan.milestone}])")
    elif plan.steps:
        (cls, kw), = plan.steps
        out.append(f"scheduler = torch.optim.lr_scheduler.{cls}(optimizer, {_kwargs(kw)})")
    else:
        out += ["", formula_source(config)]
        if FAMILIES[config.schedule.family].metric_driven:
            out += ["VAL_METRICS = []  # append each epoch's validation metric before the "
                    "epoch's last scheduler.step()",
                    "scheduler = torch.optim.lr_scheduler.LambdaLR(",
                    "    optimizer, lambda t: lr_at(t, VAL_METRICS) / BASE_LR)"]
        else:
            out.append("scheduler = torch.optim.lr_scheduler.LambdaLR("
                       "optimizer, lambda t: lr_at(t) / BASE_LR)")
    out.append(step_note)
    return "\n".join(out) + "\n"


def keras_code(config: TrialConfig, epochs: int, steps_per_epoch: int, note: str = "") -> str:
    opt = config.optimizer
    p = opt.params or {}
    kw: dict[str, Any] = {}
    if opt.weight_decay:
        kw["weight_decay"] = opt.weight_decay
    if opt.name == "momentum":
        kw.update(momentum=p["momentum"], nesterov=p["nesterov"])
    elif opt.name in ("adam", "adamw"):
        kw.update(beta_1=p["beta1"], beta_2=p["beta2"])
    elif opt.name == "rmsprop":
        kw.update(rho=p["alpha"], momentum=p["momentum"])
    monitor = "val_loss"
    out = _header(config, epochs, steps_per_epoch, note) + [formula_source(config), KERAS_MARKER,
                                                            "import keras", ""]
    out += [
        "class LrtuneSchedule(keras.callbacks.Callback):",
        '    """Sets the LR before every batch; keeps the per-epoch validation metric."""',
        "",
        f"    def __init__(self, monitor={monitor!r}):",
        "        super().__init__()",
        "        self.monitor, self.step, self.metrics = monitor, 0, []",
        "",
        "    def on_train_batch_begin(self, batch, logs=None):",
        "        self.model.optimizer.learning_rate.assign(lr_at(self.step, self.metrics))",
        "        self.step += 1",
        "",
        "    def on_epoch_end(self, epoch, logs=None):",
        "        self.metrics.append(float((logs or {}).get(self.monitor, float('nan'))))",
        "",
        "",
        f"optimizer = keras.optimizers.{KERAS_OPTIMIZERS[opt.name]}(learning_rate=BASE_LR"
        + (f", {_kwargs(kw)}" if kw else "") + ")",
        "# model.compile(optimizer=optimizer, ...)",
        "# model.fit(..., epochs=EPOCHS, callbacks=[LrtuneSchedule()])",
    ]
    return "\n".join(out) + "\n"


def export(config: TrialConfig, framework: Framework, epochs: int, steps_per_epoch: int,
           note: str = "") -> str:
    if framework == "keras":
        return keras_code(config, epochs, steps_per_epoch, note)
    return pytorch_code(config, epochs, steps_per_epoch, note)
