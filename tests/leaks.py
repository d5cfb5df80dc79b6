"""What a test leaves running: Python threads, QThreads, active QTimers and
child processes that were not there when it started.

Anyone's count: kvchat's own threads and timers, a library's, a test's. A
QThread or QTimer is seen once Python starts it (`install` wraps their
`start`), so timers Qt starts inside C++ for its own widgets are not.
Things that end on their own shortly after a test (a writer thread that
drains its last command, a process being reaped) are given `GRACE_S` to
do so before they count.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import shiboken6
from PySide6.QtCore import QThread, QTimer

from kvchat.engine.client import LAUNCHER_NAME

GRACE_S = 5.0
POLL_S = 0.02

_qthreads: weakref.WeakSet[QThread] = weakref.WeakSet()
_qtimers: weakref.WeakSet[QTimer] = weakref.WeakSet()


def _tracking(original: Callable[..., Any], seen: weakref.WeakSet[Any]) -> Callable[..., Any]:
    def start(self: Any, *args: Any) -> Any:
        seen.add(self)
        return original(self, *args)

    start.__doc__ = original.__doc__
    return start


def install() -> None:
    """Has every QThread and QTimer started from Python noted (once per process)."""
    if getattr(QThread.start, "_kvchat_tracked", False):
        return
    for cls, seen in ((QThread, _qthreads), (QTimer, _qtimers)):
        wrapped = _tracking(cls.start, seen)
        wrapped._kvchat_tracked = True  # type: ignore[attr-defined]
        cls.start = wrapped  # type: ignore[method-assign]


def _alive(obj: Any) -> bool:
    return bool(shiboken6.isValid(obj))


# Children and threads that live as long as the process that started them, by
# design: multiprocessing's resource tracker, started at the first spawn,
# tqdm's monitor of stalled progress bars, started at the first bar, and the
# thread that starts the engine's threads (engine.client._launch).
LIFELONG_CHILDREN = ("multiprocessing.resource_tracker",)
LIFELONG_THREADS = ("tqdm_monitor", LAUNCHER_NAME)


def _children() -> dict[int, psutil.Process]:
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if not any(name in command for name in LIFELONG_CHILDREN):
            found[child.pid] = child
    return found


def _kept(process: psutil.Process, before: Snapshot) -> bool:
    """Whether a process descends from a child that ran before the test (a
    session's server starting its own helpers): that child's business."""
    try:
        started = before.children | _shared_children
        return any(parent.pid in started for parent in process.parents())
    except psutil.Error:
        return False


# What fixtures wider than a test (a module's server, the session's hub)
# started: theirs to end, at their own teardown.
_shared_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_shared_children: set[int] = set()


def share_what_started_since(before: Snapshot) -> None:
    """Counts what started since `before` as a wider fixture's, never a test's leak."""
    now = Snapshot.take()
    _shared_threads.update(now.threads - before.threads)
    _shared_children.update(now.children - before.children)


@dataclass(frozen=True)
class Snapshot:
    """What ran when the test started."""

    threads: frozenset[threading.Thread]
    children: frozenset[int]
    qthreads: frozenset[int]
    qtimers: frozenset[int]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            frozenset(threading.enumerate()) | frozenset(_shared_threads),
            frozenset(_children()) | _shared_children,
            frozenset(id(t) for t in list(_qthreads) if _alive(t) and t.isRunning()),
            frozenset(id(t) for t in list(_qtimers) if _alive(t) and t.isActive()),
        )


def _new(before: Snapshot) -> tuple[list[str], list[psutil.Process]]:
    left = [
        f"thread {t.name!r}"
        for t in threading.enumerate()
        if t not in before.threads
        and t not in _shared_threads
        and t.name not in LIFELONG_THREADS
        and t.is_alive()
    ]
    processes = [
        p
        for pid, p in _children().items()
        if pid not in before.children | _shared_children and not _kept(p, before)
    ]
    for process in processes:
        try:
            left.append(f"child process {process.pid} ({' '.join(process.cmdline()[:4])})")
        except psutil.Error:
            left.append(f"child process {process.pid}")
    left += [
        f"QThread {t.objectName() or type(t).__name__!r}"
        for t in list(_qthreads)
        if _alive(t) and t.isRunning() and id(t) not in before.qthreads
    ]
    left += [
        f"QTimer {t.objectName() or '(unnamed)'!r} of {type(t.parent()).__name__}, "
        f"every {t.interval()} ms"
        for t in list(_qtimers)
        if _alive(t) and t.isActive() and id(t) not in before.qtimers
    ]
    return left, processes


def leftovers(before: Snapshot, settle: Callable[[], None] = lambda: None) -> list[str]:
    """What is still running that was not at `before`, after up to GRACE_S for
    it to end; child processes left are killed, so that they cannot disturb
    the next test. `settle` runs between looks (to let Qt deliver its events)."""
    deadline = time.monotonic() + GRACE_S
    while True:
        settle()
        left, processes = _new(before)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            continue
    return left
