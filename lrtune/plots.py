"""PNG plots of LR and metric curves (matplotlib, no display; imported only when drawing)."""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

import optuna

from lrtune import study as names
from lrtune.lr_range import LrBounds, diverged_at

StudyPlot = Literal["lr", "loss", "families"]
MAX_CURVES = 200  # the most recent finished trials drawn in curve plots


def _figure(panels: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        values = [y for line in ax.get_lines() for y in line.get_ydata()]
        if ax.get_ylabel() not in ("", "LR") and values and min(values) > 0 and \
                max(values) / min(values) > 50:  # a few bad trials would flatten the rest
            ax.set_yscale("log")
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _curve(trial: optuna.trial.FrozenTrial) -> list[float]:
    return [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]


def trial_png(trial: optuna.trial.FrozenTrial, metric: str, title: str) -> bytes:
    """LR and metric per epoch of one trial, side by side."""
    fig, axes = _figure(2)
    lr_ax, metric_ax = axes[0]
    lrs = trial.user_attrs.get(names.ATTR_LR_CURVE, [])
    lr_ax.plot(range(1, len(lrs) + 1), lrs, marker="o")
    lr_ax.set(title="learning rate (first step of each epoch)", xlabel="epoch", ylabel="LR")
    values = _curve(trial)
    metric_ax.plot(range(1, len(values) + 1), values, marker="o", color="tab:orange")
    metric_ax.set(title=metric, xlabel="epoch", ylabel=metric)
    for ax in (lr_ax, metric_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: trial {trial.number} ({trial.state.name}, "
                 f"{trial.params.get('schedule', '?')})")
    return _png(fig)


def study_png(kind: StudyPlot, trials: Sequence[optuna.trial.FrozenTrial], metric: str,
              minimize: bool, title: str) -> bytes:
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                 optuna.trial.TrialState.PRUNED)]
    fig, axes = _figure(1)
    ax = axes[0][0]
    families = sorted({str(t.params.get("schedule", "?")) for t in finished})
    colors = {f: f"C{i % 10}" for i, f in enumerate(families)}
    if kind in ("lr", "loss"):
        diverged = [t for t in finished if t.user_attrs.get(names.ATTR_REASON) == "diverged"]
        drawn = [t for t in finished if kind == "lr" or t not in diverged][-MAX_CURVES:]
        values: list[float] = []
        for t in drawn:
            ys = t.user_attrs.get(names.ATTR_LR_CURVE, []) if kind == "lr" else _curve(t)
            values += [y for y in ys if math.isfinite(y)]
            ax.plot(range(1, len(ys) + 1), ys, color=colors[str(t.params.get("schedule", "?"))],
                    alpha=0.6, linewidth=1)
        for family in families:
            ax.plot([], [], color=colors[family], label=family)
        left_out = f" ({len(diverged)} diverged trials left out)" if kind == "loss" and \
            diverged else ""
        ax.set(xlabel="epoch", ylabel="LR" if kind == "lr" else metric,
               title=f"{title}: {'LR' if kind == 'lr' else metric} per epoch, by family"
                     f"{left_out}")
        if kind == "lr":
            ax.set_yscale("log")
        elif len(values) > 20:  # a few runaway curves must not flatten all the others
            ordered = sorted(values)
            low, high = ordered[0], ordered[int(0.95 * (len(ordered) - 1))]
            if ordered[-1] - low > 4 * (high - low) > 0:
                ax.set_ylim(low - 0.05 * (high - low), high + 0.25 * (high - low))
    else:
        by_family: dict[str, list[float]] = defaultdict(list)
        for t in finished:
            if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
                by_family[str(t.params.get("schedule", "?"))].append(t.value)
        shown = [f for f in families if by_family[f]]
        if shown:
            ax.boxplot([by_family[f] for f in shown], tick_labels=shown)
        ax.set(xlabel="schedule family", ylabel=f"final {metric}",
               title=f"{title}: final {metric} of complete trials by family "
                     f"({'lower' if minimize else 'higher'} is better)")
        ax.tick_params(axis="x", rotation=30)
    if not finished:
        ax.text(0.5, 0.5, "no finished trials yet", ha="center", va="center",
                transform=ax.transAxes)
    if families and kind != "families":
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def range_test_png(bounds: LrBounds, title: str) -> bytes:
    """Loss against LR of each optimizer's sweep, with the suggested search range shaded."""
    fig, axes = _figure(1)
    ax = axes[0][0]
    top, bottom = 0.0, float("inf")
    for i, test in enumerate(bounds.tests):
        end = diverged_at(test.smoothed)  # the blow-up itself would flatten the rest
        shown = list(zip(test.lrs[:end + 1], test.smoothed[:end + 1], strict=True))
        shown = [p for p in shown if p[1] != float("inf")]
        top = max(top, 1.5 * max(test.smoothed[:max(end, 1)]))
        bottom = min([bottom, *(p[1] for p in shown)])
        line = ax.plot([p[0] for p in shown], [p[1] for p in shown], color=f"C{i}",
                       label=f"{test.optimizer}: {test.low:.2g} .. {test.high:.2g}")[0]
        ax.axvline(test.high, color=line.get_color(), linestyle=":", linewidth=1)
    ax.axvspan(bounds.low, bounds.high, color="tab:green", alpha=0.12,
               label=f"searched: {bounds.low:.2g} .. {bounds.high:.2g}")
    ax.set_xscale("log")
    if top > 0:
        ax.set_ylim(bottom - 0.05 * (top - bottom), top)
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss (smoothed)",
           title=f"{title}: LR range test")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)
