"""A conversation's own sampling values over the defaults, and what the
database may hold besides: dropped, never raised."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from kvchat.app.core.settings import (
    SAMPLING_FIELDS,
    Appearance,
    EngineSettings,
    apply_overrides,
    clean_overrides,
)
from kvchat.ui.setting_fields import SAMPLING
from kvchat.ui.theme import SCHEMES
from tests.app.test_out_of_range import BAD_VALUES

BAD_SAMPLING = [(name, value) for name in SAMPLING_FIELDS for value in BAD_VALUES[name]]


def test_the_sampling_fields_are_engine_settings_the_views_show() -> None:
    assert set(SAMPLING_FIELDS) <= set(EngineSettings.model_fields)
    assert tuple(SAMPLING) == SAMPLING_FIELDS


def test_good_values_are_kept_as_the_fields_take_them() -> None:
    raw = {"temperature": 0.2, "top_k": 5, "seed": None, "max_tokens": 2.0}
    assert clean_overrides(raw) == {"temperature": 0.2, "top_k": 5, "seed": None, "max_tokens": 2}


@pytest.mark.parametrize(
    ("name", "value"), BAD_SAMPLING, ids=[f"{n}={v!r}" for n, v in BAD_SAMPLING]
)
def test_a_bad_value_from_the_database_is_dropped(name: str, value: object) -> None:
    assert clean_overrides({name: value, "top_p": 0.5}) == {"top_p": 0.5}


@pytest.mark.parametrize(
    "raw", [None, [], ["temperature", 0.2], "temperature", 3, {"n_ctx": 4096, "colour": "red"}]
)
def test_what_is_not_a_mapping_of_sampling_values_is_nothing(raw: object) -> None:
    assert clean_overrides(raw) == {}


def test_overrides_apply_over_the_defaults() -> None:
    defaults = EngineSettings(temperature=0.7, top_k=40, system_prompt="Be kind.", n_ctx=2048)
    applied = apply_overrides(defaults, {"temperature": 0.1, "seed": 9})
    assert (applied.temperature, applied.seed) == (0.1, 9)
    assert applied.model_dump(exclude={"temperature", "seed"}) == defaults.model_dump(
        exclude={"temperature", "seed"}
    )
    assert defaults.temperature == 0.7  # the defaults are not changed
    assert apply_overrides(defaults, {}) == defaults


def test_overrides_that_are_not_valid_fall_back_to_the_defaults() -> None:
    defaults = EngineSettings()
    applied = apply_overrides(
        defaults, {"temperature": math.nan, "top_k": -1, "n_ctx": 512, "min_p": 0.2}
    )
    assert applied == defaults.model_copy(update={"min_p": 0.2})


def test_appearance_bounds_and_defaults() -> None:
    assert Appearance() == Appearance(theme="system", chat_width=820, show_thinking=True)
    for bad in ({"chat_width": -1}, {"chat_width": 10**6}, {"chat_width": True}):
        with pytest.raises(ValidationError):
            Appearance.model_validate(bad)
    with pytest.raises(ValidationError):
        Appearance.model_validate({"theme": "blue"})
    with pytest.raises(ValidationError):
        Appearance.model_validate({"font": "serif"})


def test_every_theme_is_one_the_window_can_show() -> None:
    themes = Appearance.model_fields["theme"].annotation
    assert themes is not None
    assert set(themes.__args__) == set(SCHEMES)
