"""``pack: "auto"``: K measured on this machine, within the cap."""

from __future__ import annotations

import logging

import pytest

from lrtune_worker.autopack import _auto


@pytest.mark.parametrize("cap", [1, 4])
def test_auto_pack_stays_within_the_cap(cap: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lrtune.worker")
    k = _auto("linreg", "cpu", cap)
    assert 1 <= k <= cap
    assert f"auto pack for linreg on cpu: K={k} " in caplog.text
