"""The longest stall of the GUI thread during a model switch, and while a
reply is saved to a slow disk.

A heartbeat QTimer (a precise timer, every HEARTBEAT_MS) runs on the GUI
thread; the stall of a run is its longest gap between two ticks, less the
interval. Anything the GUI thread does in one go shows: a process joined, a
commit waiting for the disk, a slot that computes too long. The goal is
under 16 ms, one frame at 60 Hz.

- Switch: the whole window (app.presenters.gui.build_window) with the real
  engine host and the bundled model, switched between the model at a
  context of 2,048 tokens and the same model at 4,096 (each switch ends the
  old engine process and loads the model in a new one). A run goes from the
  switch until the new model is loaded and its estimate (the dry run the
  window runs after a load) is shown beside its figures, and 200 ms after.
  Also shown: how long the switch call itself (Controller.switch_model)
  holds the GUI thread, the part that joined the old engine process when
  the GUI thread did that;
  the rest of a switch's stall is the window's own work around a load (its
  slots for the new host's events, painting), and the load competing with
  it for the CPU.
- Slow disk: the whole window with a scripted engine (tests/scripted_engine.py)
  that streams a reply at RATE tokens/s for about three seconds, so it is
  checkpointed about three times (app.presenters.history.CHECKPOINT_MS), then
  finished, and the WAL checkpointed. The store's connections stand for a
  slow disk (a USB stick, a network folder, a disk busy with other writes):
  every commit that wrote something, and every WAL checkpoint, takes
  --fsync-ms longer, as an fsync there does. A run goes from the send until
  every write is on disk, and 200 ms after.

Median and max of the runs' stalls, after one run of each that is not
counted (what is imported or built once, at its first use, is not measured).
Other processes on the machine stall the GUI thread too (it is not
scheduled): figures taken on a busy machine are an upper bound. So does a
virtual machine's host, which runs other machines on the same CPUs: the
time it took (steal, from the kernel's counters) is given for the runs, and
so is the GUI thread's own work in its longest stretch (the CPU time it used
between two heartbeats), which neither changes; a stall well above that
work was spent waiting, for a CPU or for the host.

    .venv/bin/python benchmarks/gui_stall.py [--runs 5] [--switches 6]
        [--fsync-ms 200] [--only switch|disk] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HEARTBEAT_MS = 1
RATE = 100.0  # tokens/s: a reply of TOKENS lasts three seconds
TOKENS = 300
SETTLE_S = 0.2
WAIT_S = 120.0
GOAL_MS = 16.0


def stolen_s() -> float:
    """CPU time the virtual machine's host has taken from it so far, all CPUs
    together (0 on a machine that is not virtual, or does not say)."""
    import psutil

    return float(getattr(psutil.cpu_times(), "steal", 0.0))


class Heartbeat:
    """Ticks on the GUI thread every HEARTBEAT_MS and keeps the longest gap,
    and the most CPU time the GUI thread spent in one gap (its own work; the
    rest of a gap is waiting: for a CPU, for a lock, for the virtual
    machine's host to run it again)."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(HEARTBEAT_MS)
        self._timer.timeout.connect(self._tick)
        self._last = self._last_cpu = 0.0
        self.longest_ms = self.longest_work_ms = 0.0
        self._stolen_from = 0.0
        self.stolen_ms = 0.0

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        self.longest_ms = max(self.longest_ms, (now - self._last) * 1000)
        self.longest_work_ms = max(self.longest_work_ms, (cpu - self._last_cpu) * 1000)
        self._last, self._last_cpu = now, cpu

    def __enter__(self) -> Heartbeat:
        self.longest_ms = self.longest_work_ms = 0.0
        self._stolen_from = stolen_s()
        self._last, self._last_cpu = time.perf_counter(), time.thread_time()
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._timer.stop()
        self.stolen_ms = (stolen_s() - self._stolen_from) * 1000

    @property
    def stall_ms(self) -> float:
        return max(0.0, self.longest_ms - HEARTBEAT_MS)


class Runs:
    """Each run's stall, its longest stretch of the GUI thread's own work,
    and the time the virtual machine's host took meanwhile."""

    def __init__(self) -> None:
        self.stalls: list[float] = []
        self.work: list[float] = []
        self.stolen: list[float] = []

    def add(self, heartbeat: Heartbeat) -> None:
        self.stalls.append(heartbeat.stall_ms)
        self.work.append(heartbeat.longest_work_ms)
        self.stolen.append(heartbeat.stolen_ms)

    def counted(self) -> Runs:
        """Without the first run (a warm-up)."""
        runs = Runs()
        runs.stalls, runs.work, runs.stolen = self.stalls[1:], self.work[1:], self.stolen[1:]
        return runs

    def figures(self) -> dict[str, list[float]]:
        return {"stall_ms": self.stalls, "own_work_ms": self.work, "stolen_ms": self.stolen}


def run_until(done: Callable[[], bool], what: str) -> None:
    """Runs the event loop until `done()` (checked every millisecond)."""
    from PySide6.QtCore import QEventLoop, QTimer

    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"gui_stall: gave up waiting for {what}")
        loop = QEventLoop()
        QTimer.singleShot(1, loop.quit)
        loop.exec()


def settle() -> None:
    """The event loop for SETTLE_S more: what the run set off ends inside it."""
    until = time.monotonic() + SETTLE_S
    run_until(lambda: time.monotonic() >= until, "nothing")


def measure_switches(switches: int) -> tuple[Runs, list[float]]:
    """Each switch's stall, and how long its call (Controller.switch_model) held
    the GUI thread: the part that joined the old engine process when it did."""
    from kvchat.app.core.settings import EngineSettings
    from kvchat.app.presenters.gui import build_window
    from kvchat.engine.models import bundled_model_path

    path = bundled_model_path()
    if path is None:
        raise SystemExit("gui_stall: the bundled model is not installed")
    model = str(path)
    runs, calls = Runs(), []
    with tempfile.TemporaryDirectory() as data_dir:
        window, controller = build_window(model, EngineSettings(n_ctx=2048), Path(data_dir))
        run_until(lambda: controller.settings_flow is not None, "the settings flow")
        estimates: list[str] = []

        def shown(path: str, _answer: object) -> None:
            estimates.append(path)

        controller.settings_flow.loaded_estimate.connect(shown)  # type: ignore[attr-defined]
        run_until(lambda: bool(estimates), "the first load and its estimate")
        settle()
        for index in range(switches + 1):  # the first warms up
            n_ctx = 4096 if index % 2 == 0 else 2048
            settings = controller.settings.model_copy(update={"n_ctx": n_ctx})
            estimates.clear()
            with Heartbeat() as heartbeat:
                called = time.perf_counter()
                controller.switch_model(model, settings)
                calls.append((time.perf_counter() - called) * 1000)
                # Until the new model's estimate is shown beside its figures:
                # the dry run after a load is part of a switch.
                run_until(
                    lambda n=n_ctx: (
                        controller.model is not None
                        and controller.model.n_ctx == n
                        and bool(estimates)
                    ),
                    "the switched model and its estimate",
                )
                settle()
            runs.add(heartbeat)
        window.close()
        settle()
    return runs.counted(), calls[1:]


class SlowDisk(sqlite3.Connection):
    """A connection on a slow disk: a commit that wrote something, and a WAL
    checkpoint, take FSYNC_S longer (the time an fsync takes there)."""

    FSYNC_S = 0.2

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        statement = sql.lstrip().upper()
        if statement.startswith("BEGIN"):
            self.changes_before = self.total_changes
        cursor = super().execute(sql, parameters)
        wrote = self.total_changes != getattr(self, "changes_before", self.total_changes)
        if (statement.startswith("COMMIT") and wrote) or "WAL_CHECKPOINT" in statement:
            time.sleep(self.FSYNC_S)
        return cursor


def slow_down_the_store(fsync_ms: float) -> None:
    """Every connection the store opens is a SlowDisk from now on.

    Done through the store module's `sqlite3`, so that it works on any
    version of the store, one that commits on the GUI thread included.
    """
    import kvchat.app.core.store as store

    SlowDisk.FSYNC_S = fsync_ms / 1000

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        if kwargs.get("factory", sqlite3.Connection) is sqlite3.Connection:
            kwargs["factory"] = SlowDisk
        return sqlite3.connect(*args, **kwargs)

    module = types.SimpleNamespace(
        **{name: getattr(sqlite3, name) for name in dir(sqlite3) if not name.startswith("__")}
    )
    module.connect = connect
    store.sqlite3 = module  # type: ignore[assignment]


def measure_slow_disk(count: int, fsync_ms: float) -> Runs:
    from kvchat.app.core.settings import EngineSettings
    from tests.scripted_engine import ScriptedEngine, open_window

    slow_down_the_store(fsync_ms)
    words = [f"word{i} " for i in range(TOKENS)]
    engine = ScriptedEngine(lambda _messages: words, rate=RATE)
    runs = Runs()
    with tempfile.TemporaryDirectory() as data_dir:
        window, controller = open_window(Path(data_dir), engine, EngineSettings(max_tokens=1000))
        run_until(lambda: controller.model is not None, "the scripted model")
        settle()
        saver = controller.history.saver
        for run in range(count + 1):  # the first warms up
            controller.new_conversation()
            settle()
            finished: list[object] = []

            def note(stats: object, finished: list[object] = finished) -> None:
                finished.append(stats)

            controller.reply_finished.connect(note)
            with Heartbeat() as heartbeat:
                controller.send(f"Question {run}: write three seconds of words.")
                run_until(
                    lambda finished=finished: bool(finished) and saver.pending == 0,
                    "the reply on disk",
                )
                settle()
            controller.reply_finished.disconnect(note)
            runs.add(heartbeat)
        window.close()
        settle()
    return runs.counted()


def summary(name: str, runs: Runs) -> list[str]:
    stalls, work = runs.stalls, runs.work
    verdict = "under" if max(stalls) < GOAL_MS else "over"
    stolen = [ms for ms in runs.stolen if ms > 0]
    return [
        f"  {name:<40} median {statistics.median(stalls):7.1f} ms, max {max(stalls):7.1f} ms "
        f"({len(stalls)} runs; max {verdict} {GOAL_MS:.0f} ms)",
        f"    the GUI thread's own work in one stretch: median {statistics.median(work):.1f} ms, "
        f"max {max(work):.1f} ms",
        f"    time the virtual machine's host took, all CPUs: {sum(runs.stolen):.0f} ms "
        f"in {len(stolen)} of the {len(stalls)} runs",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="replies saved to the slow disk")
    parser.add_argument("--switches", type=int, default=6, help="model switches")
    parser.add_argument("--fsync-ms", type=float, default=200.0, help="the slow disk's fsync")
    parser.add_argument("--only", choices=("switch", "disk"), help="one of the two measures")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()

    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv[:1])
    figures: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "heartbeat_ms": HEARTBEAT_MS,
    }
    lines = [f"Longest GUI-thread stall per run (heartbeat every {HEARTBEAT_MS} ms):"]
    if args.only != "disk":
        switches, calls = measure_switches(args.switches)
        figures["switch"] = switches.figures() | {"call_ms": calls}
        first, *rest = summary("model switch (bundled model, 2k <-> 4k)", switches)
        lines.append(first)
        lines.append(
            f"    of which the switch call itself: median {statistics.median(calls):.1f} ms, "
            f"max {max(calls):.1f} ms"
        )
        lines += rest
    if args.only != "switch":
        saving = measure_slow_disk(args.runs, args.fsync_ms)
        figures["slow_disk"] = saving.figures() | {"fsync_ms": [args.fsync_ms]}
        name = f"reply saved to a disk with {args.fsync_ms:.0f} ms fsync"
        lines += summary(name, saving)
    app.processEvents()
    lines.append(f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
