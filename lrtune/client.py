"""A small HTTP client of the lrtune API (used by the CLI; usable from notebooks)."""

from __future__ import annotations

from typing import Any

import httpx


class ClientError(RuntimeError):
    """The API refused (``status``: its HTTP status) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


class Client:
    def __init__(self, url: str, token: str = "", timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ClientError(0, f"cannot reach the lrtune API at {self.http.base_url} "
                              f"({error}): is `lrtune serve` running there? (LRTUNE_URL)"
                              ) from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise ClientError(response.status_code, message)
        return response

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/studies", json=spec).json()  # type: ignore[no-any-return]

    def study(self, study_id: int) -> dict[str, Any]:
        return self._call("GET", f"/studies/{study_id}").json()  # type: ignore[no-any-return]

    def trials(self, study_id: int, limit: int = 1000, offset: int = 0) -> dict[str, Any]:
        return self._call("GET", f"/studies/{study_id}/trials",  # type: ignore[no-any-return]
                          params={"limit": limit, "offset": offset}).json()

    def best(self, study_id: int) -> dict[str, Any]:
        return self._call("GET", f"/studies/{study_id}/best").json()  # type: ignore[no-any-return]

    def best_code(self, study_id: int, framework: str = "pytorch") -> str:
        return self._call("GET", f"/studies/{study_id}/best/code",
                          params={"framework": framework}).text

    def plot(self, study_id: int, kind: str) -> bytes:
        return self._call("GET", f"/studies/{study_id}/plot", params={"kind": kind}).content

    def cancel(self, study_id: int) -> dict[str, Any]:
        return self._call("POST", f"/studies/{study_id}/cancel").json()  # type: ignore[no-any-return]
