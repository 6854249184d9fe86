"""lrtune's errors: one root, turned into HTTP 4xx/503 or CLI messages at the edge only."""

from __future__ import annotations


class LrtuneError(Exception):
    """The root of every error lrtune raises on purpose."""


class SpecError(LrtuneError, ValueError):
    """A user-supplied value is invalid; ``field`` names it (e.g. ``space.ranges.step.gamma``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(LrtuneError, LookupError):
    """No such study, trial or token; ``field`` names what was looked up."""

    def __init__(self, message: str, field: str = "id") -> None:
        super().__init__(message)
        self.field = field


class Conflict(LrtuneError, ValueError):
    """The request clashes with the stored state (a taken name, a finished trial)."""

    def __init__(self, message: str, field: str = "name") -> None:
        super().__init__(message)
        self.field = field


class OverQuota(LrtuneError):
    """A principal's limit (running studies, queued trials) would be exceeded."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class DatabaseUnavailable(LrtuneError):
    """The database could not be reached or lost the connection mid-transaction: nothing
    was written, retry shortly. Service and worker both catch this one class."""
