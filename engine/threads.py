"""How many threads llama.cpp computes with, chosen while it runs.

llama.cpp's threads meet at a barrier after every step of the graph, and the
OpenMP build they come in spins there. When another process takes one of the
cores, the thread on it is descheduled for a whole time slice while the
others spin, so decode does not slow in proportion: on 2 cores with one busy
neighbour, 2 threads make 12-23 tokens/s where 1 thread makes 50. The fix is
one thread fewer, for as long as the neighbour stays.

Two signals decide, and measurement has the last word:

- The hint: what the kernel's counters say other processes use of the CPUs
  (`CpuLoad`, through psutil). A neighbour that uses a third of a CPU or
  more takes it from us (beside llama.cpp's spinning threads it gets no
  more than a share of one).
- The speed: the time of each decoded token. A change is a trial of
  `TRIAL_TOKENS` tokens; if the new count is slower than the old one was just
  before, the change is undone and not tried again in that direction for a
  while (a back-off that doubles), unless the reading changes. Decode that
  slows to `SLOWED` times its best at the current count tries one thread
  fewer even when the hint sees nothing (a neighbour in another VM shows only
  as stolen time, or not at all); a virtual machine's own speed wanders by a
  fifth from minute to minute, which must not set it off.

A person's explicit thread count is kept as it is: `ThreadTuner.fixed`.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import psutil

# Seconds between two readings of the CPU counters while decoding.
HINT_INTERVAL_S = 0.25
# A neighbour using this much of a CPU or more takes it.
TAKEN_CPU = 0.35
# Tokens a new thread count decodes before it is judged.
TRIAL_TOKENS = 8
# The tokens before a change that its trial is held against.
RECENT_TOKENS = 3
# A trial this much slower (as a ratio of times) than before loses.
LOSES_AT = 1.05
# Decode this much slower than its best at the same count tries one fewer;
# with a reading that shows a neighbour, this much slower is enough.
SLOWED = 1.6
HINT_SLOWED = 1.15
# The best time at a count is forgotten after this many tokens (contexts grow,
# and so do token times).
BEST_KEPT_TOKENS = 512
# Tokens before a lost trial's direction is tried again; doubles on each loss.
FIRST_HOLD_TOKENS = 64
MAX_HOLD_TOKENS = 1024


class Load(Protocol):
    """What the tuner reads of the machine: its CPUs, and what others use of them."""

    cpus: int

    def restart(self) -> None: ...

    def read(self) -> float: ...


class CpuLoad:
    """How many CPUs other processes kept busy since the last reading.

    Busy time is the kernel's (user, system, interrupts and time stolen by
    the hypervisor) over all CPUs, less this process's own CPU time, so the
    engine's own threads, spinning or not, never count as a neighbour.
    Readings may come from any thread.
    """

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._last = self._counters()
        self.cpus = psutil.cpu_count(logical=True) or 1
        self.others = 0.0

    def _counters(self) -> tuple[float, float, float]:
        times = psutil.cpu_times()
        busy = sum(
            getattr(times, name, 0.0)
            for name in ("user", "nice", "system", "irq", "softirq", "steal")
        )
        own = self._process.cpu_times()
        return time.monotonic(), busy, own.user + own.system

    def restart(self) -> None:
        """Forgets what was used so far: the next reading starts now."""
        with self._lock:
            self._last = self._counters()
            self.others = 0.0

    def read(self) -> float:
        """CPUs that other processes used on average since the previous reading."""
        with self._lock:
            now = self._counters()
            wall = now[0] - self._last[0]
            if wall > 0:
                others = (now[1] - self._last[1]) - (now[2] - self._last[2])
                self.others = max(others / wall, 0.0)
                self._last = now
            return self.others


@dataclass
class _Trial:
    """A thread count on trial: the count before it, that count's token time,
    and what the reading allowed before it (to restore if the trial loses)."""

    previous: int
    previous_seconds: float
    down_fitting: int
    fitting: int  # what the reading allowed as the trial began


class ThreadTuner:
    """Chooses the thread count of decode token by token, and of each prefill.

    `most` is the count to use on an idle machine (one per physical core, or
    the person's choice); the tuner never goes above it. `load` is None when
    the count is fixed. `note` tells, for the turn under way, how the count
    changed and why: "2 → 1: another process is using a core".
    """

    def __init__(
        self,
        most: int,
        load: Load | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.most = max(most, 1)
        self.threads = self.most
        self.fixed = load is None
        self._load = load
        self._clock = clock
        self._times: deque[float] = deque(maxlen=TRIAL_TOKENS)
        self._best: dict[int, tuple[float, int]] = {}
        self._trial: _Trial | None = None
        # Direction (+1, -1) -> the token until which it is not tried again,
        # the reading's count then, and the token time the count that lost
        # made: a new reading lifts the hold, and so does the current count
        # becoming slower than that.
        self._hold_until: dict[int, tuple[int, int, float]] = {}
        self._hold_tokens = {+1: FIRST_HOLD_TOKENS, -1: FIRST_HOLD_TOKENS}
        self._token = 0
        self._slow_tokens = 0  # in a row, decoded `SLOWED` times slower than the best
        self._hinted_at = -math.inf
        self._path: list[int] = [self.threads]
        self._reason = ""
        # The count the CPU reading allowed when the threads last went down.
        self._down_fitting = self.most

    @property
    def note(self) -> str:
        """How the count of this turn's decode came to differ from `most`, and
        why; "" when it stayed at `most` all along."""
        if len(self._path) < 2:
            return ""
        return " → ".join(str(n) for n in self._path) + f": {self._reason}"

    def start_turn(self) -> int:
        """Starts a turn's note; returns the thread count for its prompt.

        The prompt's batches take the count decode has found: a prefill is
        too short to put a count on trial, and a reading over the time
        between turns says more about what ran then (another program's
        burst, a benchmark's other side) than about the next second. For the
        same reason the turn's first reading starts now. Token times and a
        trial under way carry over from the turn before.
        """
        self._path = [self.most] if self.threads == self.most else [self.most, self.threads]
        if self._load is not None:
            self._load.restart()
        return self.threads

    def after_token(self, seconds: float) -> int | None:
        """Takes one decoded token's time; returns a new thread count, or None."""
        if self.fixed:
            return None
        self._token += 1
        self._times.append(seconds)
        full = len(self._times) == TRIAL_TOKENS
        if full:
            self._remember_best()
        if self._trial is not None:
            return self._judge() if full else None
        now = self._clock()
        if now - self._hinted_at >= HINT_INTERVAL_S:
            self._hinted_at = now
            others = self._read()
            fitting = self._fitting(others)
            # Down only once decode shows the neighbour's cost, which it
            # does within a few tokens; up as soon as the reading allows.
            if fitting < self.threads and self._slowed(HINT_SLOWED, RECENT_TOKENS):
                return self._try(fitting, _busy_reason(others), fitting)
            if self.threads < fitting and self._down_fitting < fitting:
                return self._try(fitting, "the cores are free again", fitting)
        slowed = full and self.threads > 1 and self._slowed(SLOWED, TRIAL_TOKENS)
        self._slow_tokens = self._slow_tokens + 1 if slowed else 0
        # Held for a window's worth of tokens: a virtual machine stalls for
        # a moment now and then, and a trial costs more than such a stall.
        if self._slow_tokens >= TRIAL_TOKENS:
            self._slow_tokens = 0
            self._hinted_at = now
            others = self._read()
            fitting = self._fitting(others)
            if fitting < self.threads:
                return self._try(fitting, _busy_reason(others), fitting)
            return self._try(self.threads - 1, f"decode slowed down with {self.threads}", fitting)
        if (
            self.threads < self._down_fitting
            and not self._held(+1, self._down_fitting)
            and len(self._times) >= RECENT_TOKENS
        ):
            # Down for a slowdown the reading did not explain: only trying
            # tells when it is over.
            more = self.threads + 1
            return self._try(more, f"{more} threads were faster again", self._down_fitting)
        return None

    def _read(self) -> float:
        assert self._load is not None
        return self._load.read()

    def _fitting(self, others: float) -> int:
        """The most threads that each have a CPU to themselves."""
        assert self._load is not None
        taken = math.floor(others + 1 - TAKEN_CPU)
        return max(1, min(self.most, self._load.cpus - taken))

    def _recent(self, tokens: int = RECENT_TOKENS) -> float:
        """The median time of the last `tokens` tokens."""
        return statistics.median(list(self._times)[-tokens:])

    def _slowed(self, ratio: float, tokens: int) -> bool:
        """Whether the latest `tokens` took (their median) `ratio` times the
        best at this count; True when there is no best to hold them against."""
        if len(self._times) < tokens:
            return False
        best = self._best.get(self.threads)
        return best is None or self._recent(tokens) > ratio * best[0]

    def _remember_best(self) -> None:
        median = statistics.median(self._times)
        best = self._best.get(self.threads)
        if best is None or median <= best[0] or self._token - best[1] > BEST_KEPT_TOKENS:
            self._best[self.threads] = (median, self._token)

    def _try(self, threads: int, reason: str, fitting: int) -> int | None:
        """Puts `threads` on trial, unless that direction is held off.

        `fitting` is what the reading allowed at the time: being below it
        means the reading did not explain the slowdown.
        """
        direction = 1 if threads > self.threads else -1
        if len(self._times) < RECENT_TOKENS or self._held(direction, fitting):
            return None
        self._trial = _Trial(self.threads, self._recent(), self._down_fitting, fitting)
        self._down_fitting = fitting if direction < 0 else self.most
        self._reason = reason
        return self._switch(threads)

    def _judge(self) -> int | None:
        trial = self._trial
        assert trial is not None
        self._trial = None
        direction = 1 if self.threads > trial.previous else -1
        if statistics.median(self._times) > LOSES_AT * trial.previous_seconds:
            self._hold(direction, trial.fitting, statistics.median(self._times))
            self._down_fitting = trial.down_fitting
            tried = self.threads
            self._reason = f"{tried} thread{'' if tried == 1 else 's'} decoded slower"
            return self._switch(trial.previous)
        self._hold_tokens[direction] = FIRST_HOLD_TOKENS
        if direction < 0:
            # The way back up is tried after a while, if the reading cannot tell.
            self._hold_until[+1] = (self._token + self._hold_tokens[+1], trial.fitting, 0.0)
        return None

    def _held(self, direction: int, fitting: int) -> bool:
        until, held_fitting, beaten = self._hold_until.get(direction, (0, 0, 0.0))
        if self._token >= until or fitting != held_fitting:
            return False
        return not beaten or self._recent() <= beaten

    def _hold(self, direction: int, fitting: int, lost_seconds: float) -> None:
        until = self._token + self._hold_tokens[direction]
        self._hold_until[direction] = (until, fitting, lost_seconds)
        self._hold_tokens[direction] = min(2 * self._hold_tokens[direction], MAX_HOLD_TOKENS)

    def _switch(self, threads: int) -> int:
        self.threads = threads
        self._times.clear()
        if self._path[-1] != threads:
            self._path.append(threads)
        return threads


def _busy_reason(others: float) -> str:
    cores = max(1, round(others))
    if cores == 1:
        return "another process is using a core"
    return f"other processes are using {cores} cores"
