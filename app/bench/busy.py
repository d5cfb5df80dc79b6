"""`kvchat bench` on a busy machine: the burner that keeps a core busy, and
how long decode takes to recover once it stops.

The sections themselves (app.bench) run kvchat's engine beside a burner and
compare it with llama.cpp's direct loop at each fixed thread count in the
same run; this module holds what they share and can be tested alone.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType

from kvchat.engine.children import child_environment, safe_working_folder

# A burner ends by itself after this long, should the bench die without
# stopping it.
BURNER_LIMIT_S = 900.0
# Decode is back when this many tokens run within RECOVERED_WITHIN of idle.
RECOVERY_WINDOW_TOKENS = 32
RECOVERED_WITHIN = 0.05

# A Python process that spins on one CPU until its time is up.
_SPIN = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end: pass\n"


class Burner:
    """Another process busy on one core, like a compile or a video call on a
    desktop, from `start` to `stop` (a `with` block), and never past
    `BURNER_LIMIT_S`."""

    def __init__(self, limit_s: float = BURNER_LIMIT_S) -> None:
        self._limit_s = limit_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SPIN.format(limit=self._limit_s)],
            env=child_environment(),
            cwd=safe_working_folder(),
        )

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> Burner:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


# A reply as it streamed: (seconds, tokens in the cache) at each arrival.
Fills = Sequence[tuple[float, int]]


def _rate_from(fills: Fills, tokens: int, window: int) -> float | None:
    """Tokens/s over `window` tokens from the first arrival at `tokens` or more."""
    start = next((fill for fill in fills if fill[1] >= tokens), None)
    if start is None:
        return None
    end = next((fill for fill in fills if fill[1] >= start[1] + window), None)
    if end is None or end[0] <= start[0]:
        return None
    return (end[1] - start[1]) / (end[0] - start[0])


def recovery_tokens(
    busy: Fills,
    idle: Fills,
    stopped_at: int,
    window: int = RECOVERY_WINDOW_TOKENS,
    within: float = RECOVERED_WITHIN,
) -> int | None:
    """Tokens from the neighbour's stop until decode is back to idle speed.

    `busy` is a reply during which the neighbour stopped once the cache held
    `stopped_at` tokens; `idle` the same reply on an idle machine (greedy
    sampling makes it the same tokens). Recovered is the first arrival from
    which the next `window` tokens came within `within` of the idle reply's
    speed over the same tokens. None if the reply ended first.
    """
    for _seconds, tokens in busy:
        if tokens < stopped_at:
            continue
        now = _rate_from(busy, tokens, window)
        then = _rate_from(idle, tokens, window)
        if now is None or then is None:
            return None
        if now >= (1 - within) * then:
            return tokens - stopped_at
    return None
