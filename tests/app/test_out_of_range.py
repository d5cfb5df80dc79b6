"""Numbers out of range wherever a person or a file can write them: the
settings file, the command line, the settings dialog. Each is refused with a
message that names it (the file: reset to its default, the rest kept), or,
in the dialog, held inside the range the settings allow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PySide6.QtWidgets import QDoubleSpinBox, QSpinBox
from pytestqt.qtbot import QtBot

from kvchat.app.cli.main import main
from kvchat.app.core.settings import EngineSettings
from kvchat.app.core.settings_file import read_settings
from kvchat.app.presenters.settings_flow import choice_of, dialog_for, engine_settings

MAX_SEED = 2**32 - 1

BAD_VALUES = {
    "n_ctx": [-5, 0, 511, 2**40, 10**30, 4096.5, "4096", True, math.inf, math.nan],
    "n_threads": [0, -1, 513, 10**12, True, "8"],
    "n_gpu_layers": [-1, 1000, 10**9, False],
    "n_batch": [0, 31, 8193, 10**6, "512", None],
    "temperature": [-0.1, 5.01, math.nan, math.inf, -math.inf, True, "0.5"],
    "top_p": [0, -1, 1.5, math.nan, "1"],
    "top_k": [-1, 1001, 10**9, 3.5, False],
    "min_p": [-0.1, 2, math.nan],
    "repeat_penalty": [0, 0.49, 2.5, -math.inf, math.nan],
    "max_tokens": [0, -1, 2**20 + 1, 10**12, True, math.inf],
    "seed": [-1, 2**32, 2**64, math.nan, True, "42"],
}
CASES = [(field, value) for field, values in BAD_VALUES.items() for value in values]


@pytest.mark.parametrize(("field", "value"), CASES, ids=[f"{f}={v!r}" for f, v in CASES])
def test_a_bad_number_in_settings_json_takes_its_default_and_is_named(
    tmp_path: Path, field: str, value: object
) -> None:
    path = tmp_path / "settings.json"
    good: dict[str, object] = {"system_prompt": "Kept."}
    if field != "top_k":
        good["top_k"] = 7
    path.write_text(json.dumps({"engine": {**good, field: value}}), encoding="utf-8")
    loaded = read_settings(path)
    engine = loaded.settings.engine
    assert getattr(engine, field) == getattr(EngineSettings(), field)
    assert engine.system_prompt == "Kept."
    assert f"engine.{field} (" in loaded.notice
    assert loaded.notice.count("engine.") == 1  # only the bad field is named
    # The cleaned file is written at once: the next start has nothing to say.
    assert read_settings(path).notice == ""


CLI_CASES = [
    ["chat", "--ctx", "-5", "hi"],
    ["chat", "--ctx", str(10**12), "hi"],
    ["chat", "--ctx", "abc", "hi"],
    ["chat", "--threads", "0", "hi"],
    ["chat", "--threads", "100000", "hi"],
    ["chat", "--gpu-layers", "-1", "hi"],
    ["chat", "--max-tokens", "0", "hi"],
    ["chat", "--max-tokens", str(2**64), "hi"],
    ["chat", "--temperature", "nan", "hi"],
    ["chat", "--temperature", "inf", "hi"],
    ["chat", "--temperature", "-1", "hi"],
    ["chat", "--temperature", "1e999", "hi"],
    ["chat", "--seed", "-1", "hi"],
    ["chat", "--seed", str(2**32), "hi"],
    ["chat", "--seed", "1.5", "hi"],
    ["--ctx", "-5"],
    ["--gpu-layers", "10000"],
    ["estimate", "--ctx", "10"],
    ["estimate", "--ctx", "x"],
    ["estimate", "--gpu-layers", str(10**9)],
    ["bench", "--runs", "0"],
    ["bench", "--runs", str(10**11)],
    ["bench", "--tokens", "-3"],
    ["bench", "--tokens", str(10**9)],
]


@pytest.mark.parametrize("argv", CLI_CASES, ids=[" ".join(a)[:40] for a in CLI_CASES])
def test_a_bad_number_on_the_command_line_is_one_line_and_exit_2(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit
        code = exc.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("kvchat"), err
    option = next(a for a in argv if a.startswith("--"))
    assert option in err
    assert "Traceback" not in err and "usage:" not in err


def test_the_command_line_says_what_the_range_is(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chat", "--temperature", "nan", "hi"]) == 2
    assert capsys.readouterr().err == (
        "kvchat: --temperature nan is not a number: it must be from 0 to 5\n"
    )
    assert main(["chat", "--seed", str(2**32), "hi"]) == 2
    assert capsys.readouterr().err == (
        "kvchat: --seed 4294967296 is out of range: it must be from 0 to 4,294,967,295\n"
    )


EXTREMES = EngineSettings(
    n_ctx=512,
    n_threads=1,
    n_gpu_layers=0,
    n_batch=8192,
    temperature=5.0,
    top_p=0.005,
    top_k=1000,
    min_p=0.005,
    repeat_penalty=0.5,
    max_tokens=1 << 20,
    seed=MAX_SEED,
)


def test_the_dialog_keeps_every_allowed_extreme_exactly(qtbot: QtBot) -> None:
    dialog = dialog_for(choice_of("/m.gguf", EXTREMES), max_threads=4)
    qtbot.addWidget(dialog)
    assert engine_settings(dialog.choice(), EXTREMES) == EXTREMES


SPIN_BOXES = ["threads", "n_batch", "temperature", "top_p", "top_k", "min_p"]
SPIN_BOXES += ["repeat_penalty", "max_tokens", "seed", "kv_ram_budget_mib", "kv_disk_budget_mib"]


@pytest.mark.parametrize("name", SPIN_BOXES)
@pytest.mark.parametrize("typed", ["99999999999999", "-5", "1e9", "nan"])
def test_the_dialog_holds_typed_numbers_inside_the_settings_bounds(
    qtbot: QtBot, name: str, typed: str
) -> None:
    dialog = dialog_for(choice_of("/m.gguf", EngineSettings()), max_threads=4)
    qtbot.addWidget(dialog)
    box: QSpinBox | QDoubleSpinBox = (
        dialog.numbers[name].box if name in dialog.numbers else dialog.threads
    )
    box.selectAll()
    qtbot.keyClicks(box, typed)
    box.interpretText()
    # Whatever was typed, the dialog's choice is valid settings (never raises).
    settings = engine_settings(dialog.choice(), EngineSettings())
    assert box.minimum() <= box.value() <= box.maximum()
    assert isinstance(settings, EngineSettings)


def test_a_question_that_is_not_utf8_is_refused_before_loading(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What Python makes of argv bytes that are not UTF-8 (surrogateescape).
    assert main(["chat", "caf\udce9?"]) == 2
    assert capsys.readouterr().err == (
        "kvchat: the question holds bytes that are not UTF-8 text: check the terminal's encoding\n"
    )
