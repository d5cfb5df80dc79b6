"""`kvchat chat` and the command line, run as a person would run them."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from kvchat.app.cli.chat import DIM, UNDIM, ThinkingOutput
from kvchat.app.cli.main import main
from tests.model_factory import TINY_THINKING, ModelFactory, model_factory

__all__ = ["model_factory"]  # a fixture, imported so that pytest finds it


def _kvchat(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvchat.app", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_chat_streams_a_reply_to_stdout(data_dir: Path) -> None:
    result = _kvchat(
        "chat",
        "--stats",
        "--seed",
        "5",
        "--max-tokens",
        "40",
        "Say hello in French.",
        data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    # Figures go to stderr, llama.cpp's log to the data dir, not the terminal.
    assert "tok/s" in result.stderr
    assert "llama" not in result.stderr.lower()
    assert "load_tensors" in (data_dir / "logs" / "engine.log").read_text()


def test_thinking_goes_to_stderr_and_the_answer_alone_to_stdout(
    data_dir: Path, model_factory: ModelFactory
) -> None:
    """So that `kvchat chat ... > answer.txt` keeps the answer, and the
    terminal shows the thinking before it."""
    model = model_factory.path(TINY_THINKING)
    result = _kvchat("chat", "--model", str(model), "--seed", "1", "Hi", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Yes indeed\n"
    assert result.stderr == " Hmm so\n"  # not a terminal: no dimming


class _Terminal(io.TextIOWrapper):
    def isatty(self) -> bool:
        return True


def test_thinking_is_dimmed_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    written = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", _Terminal(written, encoding="ascii"))
    thinking = ThinkingOutput()
    thinking.close()  # nothing was thought: nothing is written
    thinking.write("Hmm, ")
    thinking.write("é")  # UTF-8, whatever stderr's own encoding
    thinking.close()
    thinking.close()
    assert written.getvalue().decode() == f"{DIM}Hmm, é{UNDIM}\n"


def test_chat_with_a_zip_file_says_so(data_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "model.gguf"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("x", "y")
    result = _kvchat("chat", "--model", str(archive), "hello", data_dir=data_dir)
    assert result.returncode == 2
    assert result.stderr == (
        "kvchat: could not load model.gguf: not a GGUF file: it starts with PK, a zip archive?\n"
    )
    assert result.stdout == ""


def test_chat_with_a_missing_model(data_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    result = _kvchat("chat", "--model", str(missing), "hello", data_dir=data_dir)
    assert result.returncode == 2
    assert f"the file does not exist ({missing})" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["chat", "   "], "kvchat: the question is empty\n"),
        (
            ["chat", "--ctx", "0", "hi"],
            "kvchat: --ctx 0 is out of range: it must be from 512 to 1,048,576\n",
        ),
        (
            ["chat", "--threads", "-2", "hi"],
            "kvchat: --threads -2 is out of range: it must be from 1 to 512\n",
        ),
        (
            ["--gpu-layers", "-5"],
            "kvchat: --gpu-layers -5 is out of range: it must be from 0 to 999\n",
        ),
    ],
)
def test_bad_arguments_get_a_clear_message(
    args: list[str], message: str, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--data-dir", str(data_dir)]) == 2
    assert capsys.readouterr().err == message


def test_gui_process_never_imports_llama_cpp() -> None:
    code = (
        "import sys, kvchat.app.presenters.gui, kvchat.app.cli.chat, kvchat.engine.client; "
        "sys.exit('llama_cpp' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_chat_reads_the_same_settings_and_survives_a_bad_file(data_dir: Path) -> None:
    (data_dir / "settings.json").write_text('{"engine": {"n_ctx": 0, "max_tokens": 3}}')
    result = _kvchat("chat", "--stats", "Hello", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "settings file" in result.stderr and "engine.n_ctx (0" in result.stderr
    # The good field was kept: three tokens at most.
    stats_line = result.stderr.strip().splitlines()[-1]
    assert int(stats_line.split(" tokens")[0]) <= 3
    assert list(data_dir.glob("settings.json.bad-*"))
    again = _kvchat("chat", "Hello", "--max-tokens", "2", data_dir=data_dir)
    assert "settings file" not in again.stderr  # said once


def _script(*args: str, **options: Any) -> subprocess.CompletedProcess[Any]:
    """`kvchat ...` through its console script, with the given subprocess options."""
    script = Path(sys.executable).with_name("kvchat")
    return subprocess.run([str(script), *args], timeout=120, check=False, **options)


def test_a_reader_that_stops_early_ends_the_reply_quietly(data_dir: Path) -> None:
    """`kvchat chat ... | head -c 20`: no traceback, the status a closed pipe gives."""
    done = subprocess.run(
        f"'{Path(sys.executable).with_name('kvchat')}' chat --data-dir '{data_dir}' "
        "--max-tokens 60 'Write a poem about the sea.' | head -c 20; "
        'echo "status ${PIPESTATUS[0]}" >&2',
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert len(done.stdout) == 20
    assert done.stderr.strip() == "status 141"


def test_a_closed_or_full_stdout_is_one_line(data_dir: Path) -> None:
    args = ("chat", "--data-dir", str(data_dir), "--max-tokens", "20", "Hi")
    # The shell's `>&-`: the program starts with no file descriptor 1.
    closed = _script(*args, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
    assert closed.returncode == 1
    assert closed.stderr.decode().strip() == (
        "kvchat: standard output is closed: there is nowhere to write the reply"
    )
    with open("/dev/full", "wb") as full:
        filled = _script(*args, stdout=full, stderr=subprocess.PIPE)
    assert filled.returncode == 1
    assert filled.stderr.decode().strip() == (
        "kvchat: could not write the reply to standard output: No space left on device"
    )


@pytest.mark.parametrize("kind", ["file", "long name"])
def test_an_unusable_data_folder_is_one_line(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "a-file" if kind == "file" else tmp_path / ("x" * 256)
    if kind == "file":
        target.write_text("")
    done = _script("chat", "--data-dir", str(target), "Hi", capture_output=True, text=True)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    expected = "is a file, not a folder" if kind == "file" else "File name too long"
    assert line.startswith("kvchat: ") and expected in line


def test_a_utf8_question_passes_under_the_c_locale(data_dir: Path) -> None:
    environment = {
        **os.environ,
        "LANG": "C",
        "LC_ALL": "C",
        "PYTHONCOERCECLOCALE": "0",
        "PYTHONUTF8": "0",
    }
    done = _script(
        "chat",
        "--data-dir",
        str(data_dir),
        "--max-tokens",
        "8",
        "Réponds en français : ça va ?",
        capture_output=True,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode("utf-8").strip()


def _without_display() -> dict[str, str]:
    environment = dict(os.environ)
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        environment.pop(name, None)
    return environment


def test_the_window_without_a_display_is_one_line_and_exit_2(data_dir: Path) -> None:
    done = _script(
        "--data-dir", str(data_dir), capture_output=True, text=True, env=_without_display()
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("kvchat: there is no display to open the window on")


def test_bench_without_a_display_runs_headless(tmp_path: Path, model_path: Path) -> None:
    results = tmp_path / "bench.json"
    done = _script(
        "bench",
        "--quick",
        "--model",
        str(model_path),
        "--json",
        str(results),
        capture_output=True,
        text=True,
        env=_without_display(),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(results.read_text())["machine"]["qt_platform"] == "offscreen"


def test_version_and_help_name_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip().startswith("kvchat ")
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    for command in ("chat", "estimate", "bench"):
        assert f"    {command} " in listed


@pytest.mark.parametrize("before", [True, False])
def test_shared_options_work_before_or_after_the_command(
    data_dir: Path, tmp_path: Path, before: bool
) -> None:
    elsewhere = tmp_path / "elsewhere"
    options = ["--data-dir", str(elsewhere), "--ctx", "1024"]
    args = [*options, "chat", "--stats", "--max-tokens", "4", "Hi"]
    if not before:
        args = ["chat", *options, "--stats", "--max-tokens", "4", "Hi"]
    done = _script(*args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "logs" / "engine.log").exists()
    assert not (data_dir / "logs").exists()
    # llama.cpp's own log line for the context it made.
    assert re.search(r"n_ctx\s*=\s*1024\b", (elsewhere / "logs" / "engine.log").read_text())


def test_an_option_a_command_does_not_take_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--threads", "2", "estimate"])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "kvchat: --threads does not apply to `kvchat estimate` (see kvchat --help)"
    )
