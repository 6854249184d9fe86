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


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ValidationError, match="heartbeat_grace"):
        Settings(_env_file=None, heartbeat_interval=10, heartbeat_grace=10)
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(_env_file=None, database_url="postgresql://lrtune@db/lrtune",
                 database_password="change-me")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(_env_file=None, database_url="postgresql://lrtune:change-me@db/lrtune")
    with pytest.raises(ValidationError, match="db_pool_size \\+ db_max_overflow"):
        Settings(_env_file=None, db_pool_size=1, db_max_overflow=0)
    assert Settings(_env_file=None, db_pool_size=1, db_max_overflow=1).db_pool_size == 1


def test_the_database_password_is_put_in_and_never_shown() -> None:
    odd = "p@ss:w/rd%?#&= ü"
    settings = Settings(_env_file=None, database_url="postgresql+psycopg://lrtune@db:5432/lr",
                        database_password=odd)
    from sqlalchemy.engine import make_url

    assert make_url(settings.connection_url()).password == odd
    assert odd not in settings.printable_url() and "***" in settings.printable_url()
    assert odd not in repr(settings) and odd not in str(settings.model_dump())
