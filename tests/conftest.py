"""Shared fixtures: the bundled model, a private data folder, and a check that
no test leaves a thread, a timer or a process running."""

from __future__ import annotations

import gc
import os

# Before any Qt import: tests run without a screen.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QCoreApplication, QEvent

from kvchat.engine.models import bundled_model_path, missing_model_message
from tests import leaks
from tests.hub_fixture import hub  # noqa: F401  (the download tests' mirror; one olah per session)

# What marks a test `model` (it runs real llama.cpp, so it is not in the fast
# lane): a fixture that gives it a model file, or a module that starts the
# real engine or the real command line: a module-level name that begins with
# one of ENGINE_STARTERS (`_kvchat_serve` starts `kvchat serve`, say).
MODEL_FIXTURES = frozenset({"model_path", "model_factory"})
ENGINE_STARTERS = (
    "build_window",
    "HostProcess",
    "LocalEngine",
    "ModelRunner",
    "run_chat",
    "_kvchat",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Applies the `model` marker by rule, so a new test is sorted the day it is added."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = getattr(item, "module", None)
        names = set(vars(module)) if module is not None else set()
        if fixtures & MODEL_FIXTURES or any(name.startswith(ENGINE_STARTERS) for name in names):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The real bundled model; its absence fails the test rather than skipping it."""
    path = bundled_model_path()
    if path is None:
        pytest.fail(missing_model_message())
    return path


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder of the test's own; KVCHAT_DATA_DIR points there too."""
    path = tmp_path / "data"
    path.mkdir()
    monkeypatch.setenv("KVCHAT_DATA_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def safe_path_restored() -> Iterator[None]:
    """kvchat's main() sets PYTHONSAFEPATH for its own children; called in-process
    by a test, it must not change how later tests start theirs."""
    before = os.environ.get("PYTHONSAFEPATH")
    yield
    if before is None:
        os.environ.pop("PYTHONSAFEPATH", None)
    else:
        os.environ["PYTHONSAFEPATH"] = before


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[object]) -> Iterator[None]:
    """What a module's or the session's fixture starts is that fixture's, even
    when a test's own fixture asks for it first (after the check's snapshot)."""
    if fixturedef.scope == "function":
        yield
        return
    before = leaks.Snapshot.take()
    yield
    leaks.share_what_started_since(before)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Once a test's fixtures are let go of, collects what they leave (here, on
    the main thread, as `nothing_left_running` does) and freezes what outlives
    the test (gc.freeze): the next test's collection then walks only what that
    test made. A full collection over everything imported and kept so far
    takes 0.1 to 0.5 s, and every test ends with one."""
    try:
        return (yield)
    finally:
        gc.collect()
        gc.freeze()


@pytest.fixture(autouse=True)
def nothing_left_running() -> Iterator[None]:
    """Fails a test that leaves a thread, a QThread, an active QTimer or a child
    process running that was not there when it started (tests/leaks.py)."""
    leaks.install()
    before = leaks.Snapshot.take()
    yield
    # Collect the test's Qt wrappers here, on the main thread. Left to chance,
    # a collection may run on the engine reader thread, and Shiboken then
    # deletes widgets from there.
    gc.collect()
    left = leaks.leftovers(before, settle=_settle_qt)
    assert not left, f"left running after the test: {', '.join(left)}"


def _settle_qt() -> None:
    """Lets Qt deliver what is queued (a thread's finished signal, a deferred
    delete), so that what ends on its own is seen to end."""
    app = QCoreApplication.instance()
    if app is not None:
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        app.processEvents()
