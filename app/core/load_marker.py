"""A marker file that remembers a model load until it has finished.

Some model files crash llama.cpp while loading, or take the whole machine's
memory so that the system kills kvchat. Loading such a model again at every
start would leave the person with an app that never opens. So a marker is
written before each load and removed once the load has ended either way (the
model loaded, or llama.cpp refused it with a message); one still there at the
next start names a model whose load never finished, and the app does not load
it on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "loading.json"


@dataclass(frozen=True)
class UnfinishedLoad:
    """A load that never finished: the model, when it began, and the crash if seen."""

    model_path: str
    started_at: float
    crash: str = ""

    def explain(self) -> str:
        """Why the model was not loaded, in words for the person."""
        name = Path(self.model_path).name
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started_at))
        how = (
            f"the engine crashed while loading it ({self.crash})"
            if self.crash
            else "the load never finished (the engine or kvchat was stopped during it)"
        )
        return (
            f"{name} was not loaded automatically: the last time it was loaded, "
            f"on {when}, {how}. Choose it in the model list to try again."
        )


class LoadMarker:
    """The marker file in the data folder; every failure to write it is ignored,
    because a marker only guards the next start and must never stop a load."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME

    def begin(self, model_path: str) -> None:
        """Notes a load about to start."""
        self._write(UnfinishedLoad(model_path, time.time()))

    def crashed(self, description: str) -> None:
        """Adds how the engine ended to the marker of the load in progress."""
        current = self.read()
        if current is not None:
            self._write(UnfinishedLoad(current.model_path, current.started_at, description))

    def finish(self) -> None:
        """The load ended (loaded or refused): nothing to guard against."""
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def read(self) -> UnfinishedLoad | None:
        """The unfinished load, or None; an unreadable marker counts as none."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return UnfinishedLoad(
                str(data["model_path"]), float(data["started_at"]), str(data.get("crash", ""))
            )
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def _write(self, load: UnfinishedLoad) -> None:
        text = json.dumps(
            {"model_path": load.model_path, "started_at": load.started_at, "crash": load.crash}
        )
        partial = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(OSError):
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, self.path)
