"""Faults the engine host injects into itself on purpose, for tests only.

A crash of the engine must never take the window down, and the tests prove
that with real crashes of the real host at the moments that matter. A test
arms a fault in its own process with `arm`; every engine host started from
that process afterwards receives it as an argument of its spawn. Nothing
outside the test suite calls `arm`, and no environment variable or file can
reach it, so an installed kvchat never injects a fault.

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
    restore   while a conversation's saved keys and values are put back in
              the cache (engine.kv_store), from RAM or from disk
once_file:
    the fault strikes only if this file does not exist, and creates it as it
    strikes (before the crash), so a restarted host does not crash again and
    a test can wait for the file to know the fault struck
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["abort", "segfault", "stall"]
Point = Literal["load", "prefill", "decode", "restore"]
KINDS: tuple[Kind, ...] = ("abort", "segfault", "stall")
POINTS: tuple[Point, ...] = ("load", "prefill", "decode", "restore")
# Pieces of reply text streamed before a "decode" fault strikes.
DECODE_PIECES = 3


@dataclass(frozen=True)
class Fault:
    """One fault to inject: what, where, and the file that makes it strike once."""

    kind: Kind
    point: Point
    once_file: Path | None = None

    def strike(self, point: Point) -> None:
        """Injects the fault if `point` is its point (and it has not struck yet)."""
        if point != self.point:
            return
        if self.once_file is not None:
            if self.once_file.exists():
                return  # it struck already
            try:
                # Exclusive creation: of two racing callers, one strikes.
                self.once_file.with_name(self.once_file.name + ".claimed").open("x").close()
            except OSError:
                return
        print(f"--- injecting fault: {self.kind} at {point}", flush=True)
        if self.once_file is not None:
            # Only now, once the log says so: a test that kills the host when
            # the file appears would otherwise kill it before the line is written.
            self.once_file.touch()
        if self.kind == "abort":
            os.abort()
        elif self.kind == "segfault":
            ctypes.string_at(0)
        else:
            threading.Event().wait()


_armed: Fault | None = None


def arm(fault: Fault | None) -> None:
    """Makes every engine host started from this process carry `fault` (None: none)."""
    global _armed
    _armed = fault


def armed() -> Fault | None:
    """The fault a host started now would carry."""
    return _armed
