"""Settings read from LRTUNE_* variables: the fused-compile policy."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lrtune.settings import Settings


def test_fused_compile_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).compile_after == 60.0
    monkeypatch.setenv("LRTUNE_FUSED_COMPILE_AFTER", "5")
    assert Settings(_env_file=None).compile_after == 5.0
    monkeypatch.setenv("LRTUNE_FUSED_COMPILE", "always")
    assert Settings(_env_file=None).compile_after == 0.0
    monkeypatch.setenv("LRTUNE_FUSED_COMPILE", "never")
    assert Settings(_env_file=None).compile_after is None


def test_bad_fused_compile_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRTUNE_FUSED_COMPILE", "sometimes")
    with pytest.raises(ValidationError, match="fused_compile"):
        Settings(_env_file=None)
