"""Faults the engine host injects into itself on purpose, for tests only.

A crash of the engine must never take the window down, and the tests prove
that with real crashes of the real host at the moments that matter. The
switch is an environment variable, read by each host as it starts (a spawned
child inherits the parent's environment):

    KVCHAT_INJECT_FAULT="<kind>@<point>[:<once-file>]"

kind:
    abort     os.abort(): SIGABRT, as a failed GGML_ASSERT ends a process
    segfault  a read of address 0 through ctypes: SIGSEGV, as a bad pointer does
    stall     the host's main thread waits forever, as a hung GPU kernel
              would; the test then kills it from outside (SIGKILL) or
              checks that the window does
point:
    load      inside llama.cpp's model load, from its progress callback
    prefill   while the prompt is being evaluated, before its first batch
    decode    mid-reply, once a few pieces of text have been streamed
once-file:
    the fault strikes only if this file does not exist, and creates it as it
    strikes (before the crash), so a restarted host does not crash again and
    a test can wait for the file to know the fault struck

Nothing sets the variable outside tests; a malformed value is ignored, so a
stray setting can never stop the engine from running.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ENVIRONMENT_VARIABLE = "KVCHAT_INJECT_FAULT"
Kind = Literal["abort", "segfault", "stall"]
Point = Literal["load", "prefill", "decode"]
KINDS: tuple[Kind, ...] = ("abort", "segfault", "stall")
POINTS: tuple[Point, ...] = ("load", "prefill", "decode")
# Pieces of reply text streamed before a "decode" fault strikes.
DECODE_PIECES = 3


@dataclass(frozen=True)
class Fault:
    """One fault to inject: what, where, and the file that makes it strike once."""

    kind: Kind
    point: Point
    once_file: Path | None = None

    def to_environment(self) -> str:
        """The variable's value that makes a host inject this fault."""
        value = f"{self.kind}@{self.point}"
        return f"{value}:{self.once_file}" if self.once_file is not None else value

    def strike(self, point: Point) -> None:
        """Injects the fault if `point` is its point (and it has not struck yet)."""
        if point != self.point:
            return
        if self.once_file is not None:
            try:
                # Exclusive creation: of two racing callers, one strikes.
                self.once_file.open("x").close()
            except OSError:
                return
        print(f"--- injecting fault: {self.kind} at {point}", flush=True)
        if self.kind == "abort":
            os.abort()
        elif self.kind == "segfault":
            ctypes.string_at(0)
        else:
            threading.Event().wait()


def from_environment() -> Fault | None:
    """The fault named by KVCHAT_INJECT_FAULT, or None (unset or malformed)."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "")
    spec, _, once = value.partition(":")
    kind, _, point = spec.partition("@")
    if kind not in KINDS or point not in POINTS:
        return None
    return Fault(kind, point, Path(once) if once else None)
