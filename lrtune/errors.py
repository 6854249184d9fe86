"""Domain errors, turned into HTTP 4xx or CLI messages at the edge."""


class SpecError(ValueError):
    """A user-supplied value is invalid; ``field`` names it (e.g. ``space.ranges.step.gamma``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
