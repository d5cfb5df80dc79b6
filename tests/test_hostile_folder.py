"""kvchat started from a stranger's folder runs none of the code in it.

`python -m` and multiprocessing's `python -c` put the current folder first on
the import path. The folder here is full of booby traps named like kvchat's
own packages and the standard library modules its children import; each trap
leaves a file behind if it is ever imported. Every command a person runs is
started from that folder, as a person would start it: through the `kvchat`
console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvchat.app.presenters.gui import EXIT_WHEN_READY_ENV

pytestmark = pytest.mark.model

TRAPS = (
    "engine/__init__.py",
    "engine/llama/dry_run.py",
    "engine/llama/bench_direct.py",
    "app/__init__.py",
    "app/__main__.py",
    "ui/__init__.py",
    "resources/__init__.py",
    "kvchat/__init__.py",
    "multiprocessing/__init__.py",
    "socket.py",
    "json.py",
    "selectors.py",
    "signal.py",
    "pickle.py",
    "struct.py",
    "runpy.py",
    "tempfile.py",
    "llama_cpp/__init__.py",
)


@pytest.fixture
def trapped(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of booby traps, and the folder where a sprung trap leaves its mark."""
    folder, marks = tmp_path / "stranger", tmp_path / "marks"
    marks.mkdir()
    for trap in TRAPS:
        path = folder / trap
        path.parent.mkdir(parents=True, exist_ok=True)
        mark = marks / trap.replace("/", "_")
        path.write_text(
            f"open({str(mark)!r}, 'w').close()\n"
            f"raise SystemExit('booby trap {trap} was imported')\n"
        )
    return folder, marks


def _kvchat(folder: Path, *args: str, extra_env: dict[str, str] | None = None) -> str:
    script = Path(sys.executable).with_name("kvchat")
    environment = {**os.environ, **(extra_env or {})}
    environment.pop("PYTHONSAFEPATH", None)
    done = subprocess.run(
        [str(script), *args],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _sprung(marks: Path) -> list[str]:
    return sorted(path.name for path in marks.iterdir())


def test_chat_and_estimate_run_nothing_from_the_current_folder(
    trapped: tuple[Path, Path], data_dir: Path, model_path: Path
) -> None:
    folder, marks = trapped
    out = _kvchat(folder, "chat", "--data-dir", str(data_dir), "--max-tokens", "8", "Hi")
    assert out.strip()
    answer = _kvchat(folder, "estimate", str(model_path), "--json", "--ctx", "1024")
    assert json.loads(answer)["fits"] in (True, False)
    assert _sprung(marks) == []


def test_the_window_runs_nothing_from_the_current_folder(
    trapped: tuple[Path, Path], data_dir: Path
) -> None:
    folder, marks = trapped
    out = _kvchat(folder, "--data-dir", str(data_dir), extra_env={EXIT_WHEN_READY_ENV: "1"})
    report = json.loads(out.strip().splitlines()[-1])
    assert "error" not in report and report["ready"] > 0
    assert _sprung(marks) == []


def test_bench_runs_nothing_from_the_current_folder(
    trapped: tuple[Path, Path], tmp_path: Path, model_path: Path
) -> None:
    folder, marks = trapped
    results = tmp_path / "bench.json"
    _kvchat(folder, "bench", "--quick", "--model", str(model_path), "--json", str(results))
    assert json.loads(results.read_text())["quick"] is True
    assert _sprung(marks) == []


def test_a_fault_switch_in_the_environment_is_ignored(
    trapped: tuple[Path, Path], data_dir: Path, tmp_path: Path
) -> None:
    """The test-only fault injection cannot be reached by an environment variable."""
    folder, _marks = trapped
    once = tmp_path / "struck"
    out = _kvchat(
        folder,
        "chat",
        "--data-dir",
        str(data_dir),
        "--max-tokens",
        "8",
        "Hi",
        extra_env={"KVCHAT_INJECT_FAULT": f"abort@load:{once}"},
    )
    assert out.strip()
    assert not once.exists()
