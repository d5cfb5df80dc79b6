"""Memory before load, after load and after unload over twenty model switches.

Each switch ends the engine process of the old model and starts one for the
new (app.engine_client.EngineClient.switch). Measured with psutil: the
machine's used memory, the GUI process's RSS, and the engine process's RSS.
"Before load" is the engine process started with no model; "after unload" is
after the engine that held the model has ended.

    .venv/bin/python benchmarks/switch_memory.py [--switches 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

MIB = 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=20)
    args = parser.parse_args()

    import psutil
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from kvchat.app.core.settings import EngineSettings
    from kvchat.app.presenters.gui import build_window
    from kvchat.engine.models import bundled_model_path

    def wait(signal: object) -> tuple[object, ...]:
        loop = QEventLoop()
        got: list[tuple[object, ...]] = []
        signal.connect(lambda *a: (got.append(a), loop.quit()))  # type: ignore[attr-defined]
        QTimer.singleShot(120_000, loop.quit)
        loop.exec()
        return got[0]

    def engine_rss() -> int:
        children = [c for c in psutil.Process().children() if "spawn_main" in " ".join(c.cmdline())]
        return sum(c.memory_info().rss for c in children)

    def used() -> int:
        return psutil.virtual_memory().used

    app = QApplication(sys.argv[:1])
    model = str(bundled_model_path())
    gui = psutil.Process()
    with tempfile.TemporaryDirectory() as data_dir:
        baseline_used = used()
        window, controller = build_window(model, EngineSettings(), Path(data_dir))
        wait(controller.engine.model_loaded)
        rows = []
        for index in range(args.switches):
            settings = controller.settings.model_copy(update={"n_ctx": 4096 if index % 2 else 2048})
            controller.engine.shutdown()  # unload: the engine holding the model ends
            time.sleep(0.2)
            unloaded = (used(), gui.memory_info().rss, engine_rss())
            controller.switch_model(model, settings)
            time.sleep(0.5)  # the new engine is up, its model not yet loaded
            wait(controller.engine.model_loaded)
            loaded = (used(), gui.memory_info().rss, engine_rss())
            rows.append((unloaded, loaded))
        window.close()
        app.processEvents()
        time.sleep(0.3)
        final_used = used()

    print(f"{'switch':>6} {'system used, MiB':>28} {'GUI RSS, MiB':>22} {'engine RSS, MiB':>18}")
    print(f"{'':>6} {'unloaded':>13} {'loaded':>13} {'unloaded':>10} {'loaded':>10} {'loaded':>18}")
    for index, (unloaded, loaded) in enumerate(rows, 1):
        print(
            f"{index:>6} {unloaded[0] / MIB:>13.0f} {loaded[0] / MIB:>13.0f} "
            f"{unloaded[1] / MIB:>10.0f} {loaded[1] / MIB:>10.0f} {loaded[2] / MIB:>18.0f}"
        )
    print(
        f"system used before the first load {baseline_used / MIB:.0f} MiB, after closing "
        f"{final_used / MIB:.0f} MiB ({(final_used - baseline_used) / baseline_used:+.1%}); "
        f"GUI RSS first unload {rows[0][0][1] / MIB:.0f} MiB, last unload "
        f"{rows[-1][0][1] / MIB:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
