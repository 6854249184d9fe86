"""Optimizer catalogue: names, searched parameters, PyTorch and Keras constructor arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lrtune.errors import SpecError
from lrtune.schedules.params import Param, ParamSet

MIN_LR, MAX_LR = 1e-10, 1e3  # base LRs a spec may name (beyond them floats lose the schedule)
# torch's default eps of Adam, AdamW and RMSprop, which the worker keeps; Keras' default is 1e-7.
TORCH_EPS = 1e-8


@dataclass(frozen=True)
class OptimizerKind:
    name: str
    torch_class: str
    keras_class: str
    params: ParamSet

    def torch_kwargs(self, values: dict[str, Any], weight_decay: float) -> dict[str, Any]:
        """Keyword arguments (besides ``lr``) for ``torch.optim.<torch_class>``."""
        kw: dict[str, Any] = {"weight_decay": weight_decay}
        if self.name == "momentum":
            kw.update(momentum=values["momentum"], nesterov=values["nesterov"])
        elif self.name in ("adam", "adamw"):
            kw["betas"] = (values["beta1"], values["beta2"])
        elif self.name == "rmsprop":
            kw.update(alpha=values["alpha"], momentum=values["momentum"])
        return kw

    def keras_kwargs(self, values: dict[str, Any], weight_decay: float) -> dict[str, Any]:
        """Keyword arguments (besides ``learning_rate``) for ``keras.optimizers.<keras_class>``
        with the trial's values wherever Keras' default differs from them (AdamW's weight
        decay is 0.004, epsilon 1e-7, RMSprop's rho 0.9); weight decay always, for clarity."""
        kw: dict[str, Any] = {"weight_decay": weight_decay}
        if self.name == "momentum":
            kw.update(momentum=values["momentum"], nesterov=values["nesterov"])
        elif self.name in ("adam", "adamw"):
            kw.update(beta_1=values["beta1"], beta_2=values["beta2"], epsilon=TORCH_EPS)
        elif self.name == "rmsprop":
            kw.update(rho=values["alpha"], momentum=values["momentum"], epsilon=TORCH_EPS)
        return kw


def _beta(name: str, default: float, low: float, high: float) -> Param:
    return Param(name, "float", default, "", f"Adam {name}", low=low, high=high,
                 min=0.0, max=1.0, open_max=True)


_ADAM = ParamSet((_beta("beta1", 0.9, 0.8, 0.95), _beta("beta2", 0.999, 0.99, 0.9999)))

OPTIMIZERS: dict[str, OptimizerKind] = {o.name: o for o in [
    OptimizerKind("sgd", "SGD", "SGD", ParamSet()),
    OptimizerKind("momentum", "SGD", "SGD", ParamSet((
        Param("momentum", "float", 0.9, "", "heavy-ball momentum", low=0.8, high=0.99,
              min=0.0, max=1.0, open_max=True),
        Param("nesterov", "categorical", False, "", "Nesterov momentum", choices=(False, True)),
    ))),
    OptimizerKind("adam", "Adam", "Adam", _ADAM),
    OptimizerKind("adamw", "AdamW", "AdamW", _ADAM),
    OptimizerKind("rmsprop", "RMSprop", "RMSprop", ParamSet((
        Param("alpha", "float", 0.99, "", "squared-gradient smoothing", low=0.9, high=0.999,
              min=0.0, max=1.0, open_max=True),
        Param("momentum", "float", 0.0, "", "momentum", low=0.0, high=0.9, min=0.0, max=1.0,
              open_max=True, searched=False),
    ))),
]}

WEIGHT_DECAY = Param("weight_decay", "float", 0.0, "", "L2 / decoupled weight decay",
                     low=1e-6, high=1e-2, log=True, min=0.0, max=10.0)


def optimizer(name: str, field_name: str = "optimizer") -> OptimizerKind:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise SpecError(field_name, f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}") \
            from None


@dataclass(frozen=True)
class OptimizerChoice:
    """A concrete optimizer: kind, its parameters, base LR and weight decay."""

    name: str
    lr: float
    weight_decay: float = 0.0
    params: dict[str, Any] | None = None

    @classmethod
    def build(cls, name: str, lr: float, weight_decay: float = 0.0,
              params: dict[str, Any] | None = None) -> OptimizerChoice:
        kind = optimizer(name)
        lr = Param("lr", "float", 0.01, "", "", min=MIN_LR, max=MAX_LR).validate(lr, "lr")
        weight_decay = WEIGHT_DECAY.validate(weight_decay, "weight_decay")
        return cls(name, lr, weight_decay, kind.params.resolve(params or {}, name))

    def torch_kwargs(self) -> dict[str, Any]:
        return OPTIMIZERS[self.name].torch_kwargs(self.params or {}, self.weight_decay)

    def keras_kwargs(self) -> dict[str, Any]:
        return OPTIMIZERS[self.name].keras_kwargs(self.params or {}, self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay,
                "params": dict(self.params or {})}
