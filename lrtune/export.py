"""A trial's schedule and optimizer as ready-to-paste PyTorch or Keras code.

The code is exact in the ordinary training loop its header states: every batch
``optimizer.step()`` then ``scheduler.step()`` (Keras: a callback before every batch), and for
metric-driven families (plateau) one call with the validation metric at the end of every epoch.
PyTorch code builds the worker's ``torch_plan`` classes where they reproduce the formula,
subclassed to hold the last step's LR past ``TOTAL_STEPS``; metric-driven families, clip and
families with no built-in class run ``LambdaLR`` over the catalogue's pure formula, pasted in
as ``lr_at``, which Keras code always uses.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any, Literal

from lrtune.optimizers import OPTIMIZERS
from lrtune.schedules import FAMILIES, formulas
from lrtune.schedules.torch_plan import torch_plan
from lrtune.space import TrialConfig
from lrtune.tasks import Direction

Framework = Literal["pytorch", "keras"]
KERAS_MARKER = "# --- Keras wiring (needs keras 3) ---"
# lrtune's metric names that Keras logs under another name (``metrics=["accuracy"]``).
KERAS_METRIC_NAMES = {"acc": "accuracy"}


def keras_metric(objective: str) -> str:
    """Keras' log key for an lrtune objective: val_acc -> val_accuracy, train_loss -> loss."""
    prefix = "val_" if objective.startswith("val_") else ""
    name = objective.removeprefix("val_").removeprefix("train_")
    return prefix + KERAS_METRIC_NAMES.get(name, name)


def _kwargs(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _metric_driven(config: TrialConfig) -> bool:
    return FAMILIES[config.schedule.family].metric_driven


def _header(config: TrialConfig, epochs: int, steps_per_epoch: int, note: str,
            loop: list[str]) -> list[str]:
    s = config.schedule
    mods = "".join(f" + {m}" for m in ("warmup", "clip") if getattr(s, m) is not None)
    past = ("# Past TOTAL_STEPS the LR keeps following the metric; it never rises."
            if _metric_driven(config) else
            "# Past TOTAL_STEPS the LR holds at that of the last step, TOTAL_STEPS - 1.")
    return [
        f"# lrtune schedule: {s.family}{mods}; {note}".rstrip("; "),
        f"# formula: {FAMILIES[s.family].formula}",
        "# The schedule is per optimizer step; STEPS_PER_EPOCH must equal the batches per epoch.",
        *loop,
        past,
        f"EPOCHS = {epochs}",
        f"STEPS_PER_EPOCH = {steps_per_epoch}",
        "TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH",
        f"BASE_LR = {config.optimizer.lr!r}",
        "",
    ]


def _better(direction: Direction) -> str:
    return "lower is better" if direction == "minimize" else "higher is better"


def plain_source(fn: Callable[..., Any]) -> str:
    """``fn``'s source without its type annotations (they name lrtune's types), comments
    and layout kept, to paste into user code."""
    source = inspect.getsource(fn)
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def at(lineno: int, col: int) -> int:
        return offsets[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode())

    node = ast.parse(source).body[0]
    assert isinstance(node, ast.FunctionDef)
    cuts = []
    for arg in [*node.args.args, *node.args.kwonlyargs]:
        if arg.annotation is not None:
            ann = arg.annotation
            assert ann.end_lineno is not None and ann.end_col_offset is not None
            cuts.append((at(arg.lineno, arg.col_offset) + len(arg.arg),
                         at(ann.end_lineno, ann.end_col_offset)))
    if node.returns is not None:
        ret = node.returns
        assert ret.end_lineno is not None and ret.end_col_offset is not None
        end = at(ret.end_lineno, ret.end_col_offset)
        cuts.append((source.rindex("->", 0, at(ret.lineno, ret.col_offset)), end))
    for start, end in sorted(cuts, reverse=True):
        source = source[:start].rstrip(" ") + source[end:]
    return source


def formula_source(config: TrialConfig) -> str:
    """Self-contained source defining ``lr_at(t, metrics=())`` for this schedule."""
    s = config.schedule
    fam = FAMILIES[s.family]
    helpers: list[Callable[..., Any]] = [formulas.fraction_steps]
    if s.family == "multistep":
        helpers += [formulas.multistep_milestones, formulas.multistep_steps]
    parts = ["import bisect", "import functools", "import math", "import random",
             "from functools import partial", ""]
    parts += [plain_source(f) for f in [*helpers, fam.fn]]
    lines = [f"    fn = partial({fam.fn.__name__}, {_kwargs(s.params)})"]
    if s.warmup is not None:
        wrap = formulas.warmup_scaled if fam.metric_driven else formulas.warmup_sequential
        parts.append(plain_source(wrap))
        lines.append(f"    fn = partial({wrap.__name__}, fn, {_kwargs(s.warmup)})")
    if s.clip is not None:
        parts.append(plain_source(formulas.clip))
        lines.append(f"    fn = partial(clip, fn, {_kwargs(s.clip)})")
    if not fam.metric_driven:
        # the formulas are defined over the horizon: past it some climb, go negative or complex
        lines.append("    t = min(t, TOTAL_STEPS - 1)")
    parts.append("def lr_at(t, metrics=()):\n"
                 '    """LR at 0-based optimizer step t; metrics: validation metric per epoch."""\n'
                 + "\n".join(lines)
                 + "\n    return fn(t, TOTAL_STEPS, STEPS_PER_EPOCH, BASE_LR, metrics)\n")
    return "\n".join(parts)


# LambdaLR over lr_at, fed each epoch's metric between the epoch's last step and the next one.
_TORCH_ON_METRIC = '''
class LrtuneScheduler(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR over lr_at; end_epoch(val_metric) feeds it each finished epoch's metric."""

    def __init__(self, optimizer):
        self.val_metrics = []
        super().__init__(optimizer, lambda t: lr_at(t, self.val_metrics) / BASE_LR)

    def step(self):
        # a missed end_epoch would silently keep the LR from ever dropping
        if self.last_epoch // STEPS_PER_EPOCH > len(self.val_metrics):
            raise RuntimeError("call scheduler.end_epoch(val_metric) at the end of every epoch")
        super().step()

    def end_epoch(self, val_metric):
        """Record this epoch's validation metric; the next step's LR follows from it."""
        self.val_metrics.append(float(val_metric))
        lr = lr_at(self.last_epoch, self.val_metrics)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * lr / BASE_LR
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


scheduler = LrtuneScheduler(optimizer)'''

_TORCH_HOLD = '''
class LrtuneScheduler(torch.optim.lr_scheduler.{cls}):
    """{cls} that holds the LR of step TOTAL_STEPS - 1 after it: past their horizon
    built-in schedulers climb back, fail or go on decaying."""

    def step(self):
        if self.last_epoch < TOTAL_STEPS - 1:
            super().step()

'''


def pytorch_code(config: TrialConfig, epochs: int, steps_per_epoch: int, note: str = "",
                 objective: str = "val_loss", direction: Direction = "minimize") -> str:
    opt = config.optimizer
    total = epochs * steps_per_epoch
    plan = torch_plan(config.schedule, total, steps_per_epoch, opt.lr)
    loop = ["# Training loop: every batch optimizer.step() then scheduler.step()."]
    if _metric_driven(config):
        loop.append(f"# At the end of every epoch: scheduler.end_epoch(val_metric), the epoch's "
                    f"{objective} ({_better(direction)}).")
    out = ["import torch", ""] + _header(config, epochs, steps_per_epoch, note, loop)
    out.append(f"optimizer = torch.optim.{OPTIMIZERS[opt.name].torch_class}("
               f"model.parameters(), lr=BASE_LR, {_kwargs(opt.torch_kwargs())})")
    if _metric_driven(config):
        out += ["", formula_source(config), _TORCH_ON_METRIC]
    elif plan.milestone is not None:
        names = []
        for i, (cls, kw) in enumerate(plan.steps):
            names.append(f"phase{i + 1}")
            out.append(f"phase{i + 1} = torch.optim.lr_scheduler.{cls}(optimizer, {_kwargs(kw)})")
        out.append(_TORCH_HOLD.format(cls="SequentialLR"))
        out.append(f"scheduler = LrtuneScheduler(optimizer, [{', '.join(names)}], "
                   f"milestones=[{plan.milestone}])")
    elif plan.steps:
        (cls, kw), = plan.steps
        out.append(_TORCH_HOLD.format(cls=cls))
        out.append(f"scheduler = LrtuneScheduler(optimizer, {_kwargs(kw)})")
    else:
        out += ["", formula_source(config),
                "scheduler = torch.optim.lr_scheduler.LambdaLR("
                "optimizer, lambda t: lr_at(t) / BASE_LR)"]
    return "\n".join(out) + "\n"


def keras_code(config: TrialConfig, epochs: int, steps_per_epoch: int, note: str = "",
               objective: str = "val_loss", direction: Direction = "minimize") -> str:
    opt = config.optimizer
    monitor = keras_metric(objective)
    compile_metrics, fit = "", ""
    if _metric_driven(config):  # the callback reads the objective from fit's epoch logs
        if monitor.removeprefix("val_") != "loss":
            compile_metrics = f", metrics=[{monitor.removeprefix('val_')!r}]"
        if monitor.startswith("val_"):
            fit = "validation_data=..., "
    loop = [f"# Keras: model.compile(optimizer=optimizer, loss=...{compile_metrics}), then",
            f"# model.fit(..., epochs=EPOCHS, {fit}callbacks=[LrtuneSchedule()]) with the "
            "default",
            "# steps_per_execution=1: the callback sets the LR before every batch."]
    callback = [
        "class LrtuneSchedule(keras.callbacks.Callback):",
        '    """Sets the optimizer\'s LR to lr_at(step) before every batch."""',
        "",
        "    def __init__(self):",
        "        super().__init__()",
        "        self.step = 0",
        "",
        "    def on_train_batch_begin(self, batch, logs=None):",
        "        self.model.optimizer.learning_rate.assign(lr_at(self.step))",
        "        self.step += 1",
    ]
    if _metric_driven(config):
        loop += [f"# At every epoch end it reads logs[{monitor!r}], the study's {objective} "
                 f"({_better(direction)})."]
        callback = [
            "class LrtuneSchedule(keras.callbacks.Callback):",
            '    """Sets the optimizer\'s LR to lr_at(step, metrics) before every batch;',
            '    keeps the monitored metric of every finished epoch."""',
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
            "        logs = logs or {}",
            "        if self.monitor not in logs:",
            "            raise KeyError(f'no {self.monitor!r} in the epoch logs {sorted(logs)}: '",
            "                           'see the header for compile and fit')",
            "        self.metrics.append(float(logs[self.monitor]))",
        ]
    kind = OPTIMIZERS[opt.name]
    out = _header(config, epochs, steps_per_epoch, note, loop)
    out += [formula_source(config), KERAS_MARKER, "import keras", "", *callback, "", ""]
    if opt.weight_decay and opt.name in ("momentum", "adam", "rmsprop"):
        out += [f"# torch.optim.{kind.torch_class}, which the trial trained with, adds "
                "weight_decay to the gradient (L2);",
                "# Keras decays the weights directly, as AdamW does."]
    out.append(f"optimizer = keras.optimizers.{kind.keras_class}(learning_rate=BASE_LR, "
               f"{_kwargs(opt.keras_kwargs())})")
    return "\n".join(out) + "\n"


def export(config: TrialConfig, framework: Framework, epochs: int, steps_per_epoch: int,
           note: str = "", *, objective: str = "val_loss", direction: str = "minimize") -> str:
    """Code for ``framework``; ``objective`` and ``direction`` are the study's, which a
    metric-driven schedule (plateau) reads each epoch and whose mode must agree."""
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction=}")
    mode = config.schedule.params.get("mode")
    if _metric_driven(config) and mode != ("min" if direction == "minimize" else "max"):
        raise ValueError(f"plateau mode {mode!r} does not fit {objective} {direction=}")
    better: Direction = "minimize" if direction == "minimize" else "maximize"
    if framework == "keras":
        return keras_code(config, epochs, steps_per_epoch, note, objective, better)
    return pytorch_code(config, epochs, steps_per_epoch, note, objective, better)
