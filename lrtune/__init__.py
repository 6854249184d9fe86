"""lrtune: search learning-rate schedules with Optuna.

The client side, importable without torch: ``lrtune.Client`` (studies over the REST API and
the trials your own code trains), ``lrtune.Trial``, ``lrtune.TrialPruned`` and
``lrtune.current_trial()`` (inside a script ``lrtune agent`` runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lrtune.client import Client, ClientError, Study
    from lrtune.leasing import Trial, TrialPruned, current_trial

__all__ = ["Client", "ClientError", "Study", "Trial", "TrialPruned", "current_trial"]
_HOMES = {"Client": "lrtune.client", "Study": "lrtune.client", "ClientError": "lrtune.leasing",
          "Trial": "lrtune.leasing", "TrialPruned": "lrtune.leasing",
          "current_trial": "lrtune.leasing"}


def __getattr__(name: str) -> Any:  # imported on first use: the service and workers need none
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lrtune' has no attribute {name!r}")
