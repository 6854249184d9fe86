"""The five optimizers over stacked parameters (leading dim = trial), per-trial hyper-parameters.

Each update follows torch.optim's single-tensor algorithm step for step, so a fused pack
trains like the same trials one at a time (within float tolerance).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lrtune.optimizers import OptimizerChoice

EPS = 1e-8
STATE = {"sgd": (), "momentum": ("buf",), "adam": ("exp_avg", "exp_avg_sq"),
         "adamw": ("exp_avg", "exp_avg_sq"), "rmsprop": ("square_avg", "buf")}


def _per_trial(values: list[float], device: torch.device, dtype: torch.dtype = torch.float32
               ) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def _shape(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """``step(lr, params, grads)`` updates every stacked parameter; ``lr`` is ``[K]``."""

    def __init__(self, params: list[Tensor], choices: list[OptimizerChoice]) -> None:
        names = {c.name for c in choices}
        if len(names) != 1:
            raise ValueError(f"one optimizer per pack, got {sorted(names)}")
        self.name = names.pop()
        device = params[0].device
        hp = [c.params or {} for c in choices]
        self.wd = _per_trial([c.weight_decay for c in choices], device, torch.float64)
        if self.name == "momentum":
            self.momentum = _per_trial([x["momentum"] for x in hp], device)
            self.nesterov = torch.tensor([bool(x["nesterov"]) for x in hp], device=device)
        if self.name in ("adam", "adamw"):
            self.beta1 = _per_trial([x["beta1"] for x in hp], device, torch.float64)
            self.beta2 = _per_trial([x["beta2"] for x in hp], device, torch.float64)
        if self.name == "rmsprop":
            self.alpha = _per_trial([x["alpha"] for x in hp], device, torch.float64)
            self.rms_momentum = _per_trial([x["momentum"] for x in hp], device)
        # a tensor, so a compiled step does not specialise on the step number; of shape [1]
        # since torch.compile (2.13) drops in-place updates of a 0-d float64 attribute
        self.steps = torch.zeros(1, dtype=torch.float64, device=device)
        # zeros are where torch.optim starts too (momentum's first buffer is the gradient)
        self.state = [{k: torch.zeros_like(p) for k in STATE[self.name]} for p in params]
        self._flags()

    def _flags(self) -> None:
        """Plain booleans, so the update has no data-dependent branch."""
        self.has_wd = bool(self.wd.any())
        self.has_nesterov = self.name == "momentum" and bool(self.nesterov.any())

    def select(self, keep: Tensor) -> None:
        """Keep only the trials at indices ``keep`` (compaction)."""
        for name in ("wd", "momentum", "nesterov", "beta1", "beta2", "alpha", "rms_momentum"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name)[keep])
        self.state = [{k: v[keep] for k, v in s.items()} for s in self.state]
        self._flags()

    def _view(self, name: str, like: Tensor) -> Tensor:
        """A per-trial hyper-parameter shaped to broadcast over ``like``."""
        value = getattr(self, name)
        return _shape(value.to(like.dtype) if value.is_floating_point() else value, like)

    @torch.no_grad()
    def step(self, lr: Tensor, params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
        """One update of every parameter from its gradient (``grads`` may be overwritten)."""
        self.steps.add_(1)
        lr64 = lr.to(torch.float64)
        update = getattr(self, f"_{self.name}")
        for param, grad, state in zip(params, grads, self.state, strict=True):
            update(param, grad, state, lr64)

    def _l2(self, param: Tensor, grad: Tensor) -> Tensor:
        if not self.has_wd:
            return grad
        return grad.add_(self._view("wd", param) * param)

    def _sgd(self, param: Tensor, grad: Tensor, state: dict[str, Tensor], lr: Tensor) -> None:
        grad = self._l2(param, grad)
        param.addcmul_(_shape(lr.to(param.dtype), param), grad, value=-1)

    def _momentum(self, param: Tensor, grad: Tensor, state: dict[str, Tensor],
                  lr: Tensor) -> None:
        grad = self._l2(param, grad)
        m = self._view("momentum", param)
        state["buf"].mul_(m).add_(grad)
        # nesterov: p -= lr * (grad + m * buf); plain: p -= lr * buf. As per-trial factors:
        # p -= (lr * a) * buf + (lr * b) * grad, a = m or 1, b = 1 or 0; no temporaries.
        lr_p = _shape(lr.to(param.dtype), param)
        nesterov = self._view("nesterov", param)
        param.addcmul_(lr_p * torch.where(nesterov, m, 1.0), state["buf"], value=-1)
        if self.has_nesterov:
            param.addcmul_(lr_p * nesterov, grad, value=-1)

    def _adam_like(self, param: Tensor, grad: Tensor, state: dict[str, Tensor], lr: Tensor,
                   decoupled: bool) -> None:
        if decoupled:
            param.mul_(_shape((1 - lr * self.wd).to(param.dtype), param))
        else:
            grad = self._l2(param, grad)
        b1 = _shape(self.beta1, param)
        b2 = _shape(self.beta2, param)
        state["exp_avg"].lerp_(grad, (1 - b1).to(param.dtype))
        state["exp_avg_sq"].mul_(b2.to(param.dtype)).addcmul_(
            (1 - b2).to(param.dtype) * grad, grad)
        step_size = (_shape(lr, param) / (1 - b1**self.steps)).to(param.dtype)
        bc2_sqrt = ((1 - b2**self.steps) ** 0.5).to(param.dtype)
        denom = state["exp_avg_sq"].sqrt() / bc2_sqrt + EPS
        param.addcdiv_(step_size * state["exp_avg"], denom, value=-1)

    def _adam(self, param: Tensor, grad: Tensor, state: dict[str, Tensor], lr: Tensor) -> None:
        self._adam_like(param, grad, state, lr, decoupled=False)

    def _adamw(self, param: Tensor, grad: Tensor, state: dict[str, Tensor], lr: Tensor) -> None:
        self._adam_like(param, grad, state, lr, decoupled=True)

    def _rmsprop(self, param: Tensor, grad: Tensor, state: dict[str, Tensor],
                 lr: Tensor) -> None:
        grad = self._l2(param, grad)
        alpha = _shape(self.alpha, param)
        state["square_avg"].mul_(alpha.to(param.dtype)).addcmul_(
            (1 - alpha).to(param.dtype) * grad, grad)
        avg = state["square_avg"].sqrt() + EPS
        state["buf"].mul_(self._view("rms_momentum", param)).add_(grad / avg)
        param.addcmul_(_shape(lr.to(param.dtype), param), state["buf"], value=-1)
