"""The Python client of the lrtune API: studies (create, get, list, watch, cancel, best, best
code) and, through ``Study.trials()``, the trials your own training code runs. With
``lrtune serve`` running and ``LRTUNE_URL`` and ``LRTUNE_TOKEN`` set, this runs as it is:

>>> import torch, lrtune
>>> client = lrtune.Client()
>>> study = client.create(name="client-example", task="external", objective="val_loss",
...                       epochs=3, n_trials=4, pruner={"name": "none"},
...                       space={"families": ["cosine", "onecycle", "step"],
...                              "lr": {"low": 1e-3, "high": 1e-1}})
>>> x, y = torch.randn(256, 8), torch.randn(256, 1)
>>> for trial in study.trials():
...     with trial:  # an error ends the trial FAIL; a pruned trial stops here
...         _ = torch.manual_seed(trial.seed)
...         model = torch.nn.Linear(8, 1)
...         optimizer = trial.optimizer(model.parameters())
...         scheduler = trial.scheduler(optimizer, steps_per_epoch=8)
...         for epoch in range(trial.epochs):
...             for batch in range(8):
...                 rows = slice(32 * batch, 32 * (batch + 1))
...                 loss = torch.nn.functional.mse_loss(model(x[rows]), y[rows])
...                 optimizer.zero_grad()
...                 loss.backward()
...                 optimizer.step()
...                 scheduler.step()  # after every optimizer step
...             trial.report(epoch, loss.item())  # raises lrtune.TrialPruned when pruned
...         trial.complete(loss.item())
>>> study.refresh().status
'done'
>>> "optimizer = torch.optim." in study.best_code()
True

Everything here but ``Trial.optimizer`` and ``Trial.scheduler`` (which build torch objects)
imports without torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx

from lrtune.leasing import LEASE_PATH, ClientError, Trial, lease_trials

__all__ = ["Client", "ClientError", "Study"]
DEFAULT_URL = "http://127.0.0.1:8000"
ENDED = ("done", "failed", "cancelled")


class Client:
    """``Client(url=None, token=None)``: ``url`` and ``token`` default to ``LRTUNE_URL`` and
    ``LRTUNE_TOKEN`` (then to a local ``lrtune serve`` without a token). A refused connection
    is tried again for ``connect_wait`` seconds (an API starting or restarting), a 503 or 429
    (overloaded, database away: nothing was done) for ``busy_wait`` seconds, as Retry-After
    says."""

    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float = 30.0, connect_wait: float = 15.0,
                 busy_wait: float = 120.0) -> None:
        url = url or os.environ.get("LRTUNE_URL") or DEFAULT_URL
        token = token if token is not None else os.environ.get("LRTUNE_TOKEN", "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url, self.token = url.rstrip("/"), token
        self.connect_wait = connect_wait  # seconds to keep trying while the API starts
        self.busy_wait = busy_wait  # seconds to keep trying while it answers 503/429
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; ``ClientError`` with the API's message on a 4xx/5xx, or status 0 when
        the API cannot be reached."""
        deadline = time.monotonic() + self.connect_wait
        busy_until = time.monotonic() + self.busy_wait
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.ConnectError as error:  # nothing was sent: safe to try again
                if time.monotonic() >= deadline:
                    raise ClientError(0, f"cannot reach the lrtune API at {self.url} "
                                      f"({error}): is `lrtune serve` running there? "
                                      "(LRTUNE_URL)") from None
                time.sleep(0.5)
                continue
            except httpx.HTTPError as error:
                raise ClientError(0, f"no answer from the lrtune API at {self.url} ({error})"
                                  ) from None
            # 503/429: shed before any work, or the database away (rolled back): try again
            if response.status_code in (429, 503) and time.monotonic() < busy_until:
                time.sleep(_retry_after(response))
                continue
            break
        if response.status_code >= 400:
            try:
                body = response.json()["error"]
                message, code = body["message"], body.get("code", "")
                field = str(body.get("field") or "")
            except (ValueError, KeyError, TypeError, AttributeError):
                message, code, field = response.text[:500], "", ""
            raise ClientError(response.status_code, message, code, field)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self.call(method, path, **kwargs).json()
        return body

    # -- studies ----------------------------------------------------------------------------
    def create(self, spec: dict[str, Any] | None = None, **fields: Any) -> Study:
        """Create a study from a spec (a dict, and/or its fields as keywords)."""
        return Study(self, self.submit({**(spec or {}), **fields}))

    def get(self, study_id: int) -> Study:
        return Study(self, self.study(study_id))

    def list(self, status: str | None = None, limit: int = 50, offset: int = 0
             ) -> list[Study]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return [Study(self, item) for item in self._json("GET", "/studies",
                                                         params=params)["items"]]

    def watch(self, study_id: int, interval: float = 2.0) -> Iterator[dict[str, Any]]:
        """The study as it progresses, every ``interval`` seconds, until it has ended."""
        while True:
            shown = self.study(study_id)
            yield shown
            if shown["status"] in ENDED:
                return
            time.sleep(interval)

    # -- the REST calls, as JSON ------------------------------------------------------------
    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/studies", json=spec)

    def study(self, study_id: int) -> dict[str, Any]:
        return self._json("GET", f"/studies/{study_id}")

    def trials(self, study_id: int, limit: int = 1000, offset: int = 0) -> dict[str, Any]:
        return self._json("GET", f"/studies/{study_id}/trials",
                          params={"limit": limit, "offset": offset})

    def best(self, study_id: int) -> dict[str, Any]:
        return self._json("GET", f"/studies/{study_id}/best")

    def best_code(self, study_id: int, framework: str = "pytorch") -> str:
        return self.call("GET", f"/studies/{study_id}/best/code",
                         params={"framework": framework}).text

    def plot(self, study_id: int, kind: str) -> bytes:
        return self.call("GET", f"/studies/{study_id}/plot", params={"kind": kind}).content

    def cancel(self, study_id: int) -> dict[str, Any]:
        return self._json("POST", f"/studies/{study_id}/cancel")

    def claim(self, study_id: int | None = None, count: int = 1) -> dict[str, Any] | None:
        """A lease of ``count`` trials (the protocol's JSON), or None when there is nothing
        to claim now; ``ClientError`` with code ``study_ended`` when the study has ended."""
        response = self.call("POST", LEASE_PATH, json={"study_id": study_id, "count": count},
                             timeout=max(self.http.timeout.read or 0, 600.0))  # a big pack
        return None if response.status_code == 204 else dict(response.json())


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", "1")), 0.1), 30.0)
    except ValueError:
        return 1.0


class Study:
    """A study on the server: ``id``, ``name``, ``status`` (as last fetched; ``refresh()``)."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self.client, self.data = client, data

    def __repr__(self) -> str:
        return f"Study(id={self.id}, name={self.name!r}, status={self.status!r})"

    @property
    def id(self) -> int:
        return int(self.data["id"])

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    def refresh(self) -> Study:
        self.data = self.client.study(self.id)
        return self

    def watch(self, interval: float = 2.0) -> Iterator[dict[str, Any]]:
        for shown in self.client.watch(self.id, interval):
            self.data = shown
            yield shown

    def wait(self, interval: float = 2.0) -> Study:
        """Block until the study has ended."""
        for _ in self.watch(interval):
            pass
        return self

    def cancel(self) -> Study:
        self.data = self.client.cancel(self.id)
        return self

    def best(self) -> dict[str, Any]:
        return self.client.best(self.id)

    def best_code(self, framework: str = "pytorch") -> str:
        return self.client.best_code(self.id, framework)

    def trials(self, max_trials: int | None = None, idle: float = 1.0) -> Iterator[Trial]:
        """This study's trials, claimed one at a time and kept alive by a heartbeat while
        you train them; stops when the study has ended (or after ``max_trials``). Use each
        as ``with trial:`` (see ``lrtune.Trial``)."""
        return lease_trials(self.client, self.id, max_trials, idle)
