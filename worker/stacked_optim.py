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
        self.dtype = params[0].dtype
        self._derive()

    def _derive(self) -> None:
        """What the update needs besides LR and step count, in the parameters' dtype, once per
        pack rather than once per parameter and step (each is a kernel launch on a GPU); plain
        booleans, so the update has no data-dependent branch."""
        dtype = self.dtype
        self.has_wd = bool(self.wd.any())
        self.has_nesterov = self.name == "momentum" and bool(self.nesterov.any())
        self.wd_p = self.wd.to(dtype)
        if self.name == "momentum":  # p -= (lr * a) * buf: a = m with nesterov, else 1
            self.buf_factor = torch.where(self.nesterov, self.momentum, 1.0)
        if self.name in ("adam", "adamw"):
            self.one_minus_beta1 = (1 - self.beta1).to(dtype)
            self.beta2_p = self.beta2.to(dtype)
            self.one_minus_beta2 = (1 - self.beta2).to(dtype)
        if self.name == "rmsprop":
            self.alpha_p = self.alpha.to(dtype)
            self.one_minus_alpha = (1 - self.alpha).to(dtype)

    def select(self, keep: Tensor) -> None:
        """Keep only the trials at indices ``keep`` (compaction)."""
        for name in ("wd", "momentum", "nesterov", "beta1", "beta2", "alpha", "rms_momentum"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name)[keep])
        self.state = [{k: v[keep] for k, v in s.items()} for s in self.state]
        self._derive()

    @torch.no_grad()
    def step(self, lr: Tensor, params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
        """One update of every parameter from its gradient (``grads`` may be overwritten)."""
        self.steps.add_(1)
        factors = getattr(self, f"_{self.name}_factors")(lr.to(torch.float64))
        update = getattr(self, f"_{self.name}")
        for param, grad, state in zip(params, grads, self.state, strict=True):
            update(param, grad, state, {k: _shape(v, param) for k, v in factors.items()})

    def _l2(self, param: Tensor, grad: Tensor) -> Tensor:
        if not self.has_wd:
            return grad
        return grad.add_(_shape(self.wd_p, param) * param)

    # per step, per trial ([K]) factors shared by every parameter; then each update

    def _sgd_factors(self, lr: Tensor) -> dict[str, Tensor]:
        return {"lr": lr.to(self.dtype)}

    def _sgd(self, param: Tensor, grad: Tensor, state: dict[str, Tensor],
             f: dict[str, Tensor]) -> None:
        grad = self._l2(param, grad)
        param.addcmul_(f["lr"], grad, value=-1)

    def _momentum_factors(self, lr: Tensor) -> dict[str, Tensor]:
        lr_p = lr.to(self.dtype)
        factors = {"buf": lr_p * self.buf_factor}
        if self.has_nesterov:  # nesterov: p -= lr * (grad + m * buf)
            factors["grad"] = lr_p * self.nesterov
        return factors

    def _momentum(self, param: Tensor, grad: Tensor, state: dict[str, Tensor],
                  f: dict[str, Tensor]) -> None:
        grad = self._l2(param, grad)
        state["buf"].mul_(_shape(self.momentum, param)).add_(grad)
        param.addcmul_(f["buf"], state["buf"], value=-1)
        if self.has_nesterov:
            param.addcmul_(f["grad"], grad, value=-1)

    def _adam_factors(self, lr: Tensor) -> dict[str, Tensor]:
        return {"step_size": (lr / (1 - self.beta1**self.steps)).to(self.dtype),
                "bc2_sqrt": ((1 - self.beta2**self.steps) ** 0.5).to(self.dtype)}

    def _adamw_factors(self, lr: Tensor) -> dict[str, Tensor]:
        return {**self._adam_factors(lr), "decay": (1 - lr * self.wd).to(self.dtype)}

    def _adam_like(self, param: Tensor, grad: Tensor, state: dict[str, Tensor],
                   f: dict[str, Tensor]) -> None:
        if "decay" in f:  # adamw: decoupled weight decay
            param.mul_(f["decay"])
        else:
            grad = self._l2(param, grad)
        state["exp_avg"].lerp_(grad, _shape(self.one_minus_beta1, param))
        state["exp_avg_sq"].mul_(_shape(self.beta2_p, param)).addcmul_(
            _shape(self.one_minus_beta2, param) * grad, grad)
        denom = state["exp_avg_sq"].sqrt() / f["bc2_sqrt"] + EPS
        param.addcdiv_(f["step_size"] * state["exp_avg"], denom, value=-1)

    _adam = _adamw = _adam_like

    _rmsprop_factors = _sgd_factors

    def _rmsprop(self, param: Tensor, grad: Tensor, state: dict[str, Tensor],
                 f: dict[str, Tensor]) -> None:
        grad = self._l2(param, grad)
        state["square_avg"].mul_(_shape(self.alpha_p, param)).addcmul_(
            _shape(self.one_minus_alpha, param) * grad, grad)
        avg = state["square_avg"].sqrt() + EPS
        state["buf"].mul_(_shape(self.rms_momentum, param)).add_(grad / avg)
        param.addcmul_(f["lr"], state["buf"], value=-1)
