"""The test-only fault switch: what it reads, and that a stray value is harmless."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvchat.engine.faults import ENVIRONMENT_VARIABLE, Fault, from_environment


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abort@load", Fault("abort", "load")),
        ("segfault@decode:/tmp/once", Fault("segfault", "decode", Path("/tmp/once"))),
        ("stall@prefill", Fault("stall", "prefill")),
    ],
)
def test_the_switch_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: Fault
) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, value)
    assert from_environment() == expected
    assert expected.to_environment() == value


@pytest.mark.parametrize("value", ["", "abort", "abort@", "explode@load", "abort@lunch", "@load"])
def test_a_malformed_switch_injects_nothing(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, value)
    assert from_environment() is None


def test_a_fault_strikes_only_at_its_point_and_once(tmp_path: Path) -> None:
    once = tmp_path / "struck"
    once.touch()  # it has struck already: a second strike would hang this test
    fault = Fault("stall", "decode", once)
    fault.strike("decode")
    fault.strike("load")
    assert once.exists()
