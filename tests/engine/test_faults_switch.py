"""The test-only fault switch: armed in the test's process, out of reach of
anything an installed kvchat reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvchat.engine import faults
from kvchat.engine.faults import Fault


@pytest.fixture
def disarmed() -> Iterator[None]:
    yield
    faults.arm(None)


def test_nothing_is_armed_unless_a_test_arms_it(disarmed: None) -> None:
    assert faults.armed() is None
    fault = Fault("stall", "decode", Path("/tmp/once"))
    faults.arm(fault)
    assert faults.armed() == fault


def test_the_old_environment_switch_arms_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KVCHAT_INJECT_FAULT", f"abort@load:{tmp_path / 'once'}")
    assert faults.armed() is None


def test_a_fault_strikes_only_at_its_point_and_once(tmp_path: Path) -> None:
    once = tmp_path / "struck"
    once.touch()  # it has struck already: a second strike would hang this test
    fault = Fault("stall", "decode", once)
    fault.strike("decode")
    fault.strike("load")
    assert once.exists()
