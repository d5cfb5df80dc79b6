"""What the installed llama.cpp is, asked of the library itself.

Imports `llama_cpp`, so only the engine host (which sends the answer once as
it starts, `HostStarted.build`) and a child process of kvchat's own import
it. `python -P -m kvchat.engine.llama.build_probe RESULT_PATH` writes the answer as
JSON to RESULT_PATH (standard output without one): `kvchat --version` asks it
so (through `engine.build_info.probe_engine_build`), without loading
llama.cpp into the command line's own process.

Each figure is asked for on its own: an older or odder build that lacks one
of the calls still reports the rest, with "" for what it could not say.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import llama_cpp
from llama_cpp import _ggml

from kvchat.engine.build_info import build_to_json
from kvchat.engine.llama.devices import ggml_backends, ggml_device_names
from kvchat.engine.protocol import BuildDevice, EngineBuild

_Item = TypeVar("_Item")


def _ggml_text(name: str) -> str:
    """One of ggml's version strings (`ggml_version`, `ggml_commit`); "" when the build lacks it."""
    try:
        function = getattr(_ggml.libggml, name)
    except AttributeError:
        return ""
    function.restype = ctypes.c_char_p
    function.argtypes = []
    value = function()
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else ""


def _text(call: Callable[[], bytes]) -> str:
    """What a llama.cpp call that returns text says; "" when the library lacks the call."""
    try:
        return call().decode("utf-8", errors="replace")
    except (AttributeError, OSError):
        return ""


def _listed(call: Callable[[], list[_Item]]) -> tuple[_Item, ...]:
    """ggml's registry as a tuple; empty when the library cannot be asked, or
    answers in bytes that are not UTF-8 (the host must start all the same)."""
    try:
        return tuple(call())
    except (AttributeError, OSError, ValueError):
        return ()


def engine_build() -> EngineBuild:
    """llama.cpp's version and commit, ggml's version, the backends and devices
    the build registered, and each backend's features."""
    devices: tuple[BuildDevice, ...] = _listed(ggml_device_names)
    return EngineBuild(
        llama_cpp=_text(lambda: llama_cpp.llama_version()),
        commit=_ggml_text("ggml_commit"),
        ggml=_ggml_text("ggml_version"),
        backends=_listed(ggml_backends),
        devices=devices,
        system_info=_text(lambda: llama_cpp.llama_print_system_info()).strip(" |"),
        gpu_offload_supported=bool(llama_cpp.llama_supports_gpu_offload()),
    )


def main(argv: list[str]) -> int:
    """Writes the build to the file named in `argv`, or prints it: a file,
    because llama.cpp's native code may print to standard output as its
    backends start."""
    report = build_to_json(engine_build())
    if argv:
        Path(argv[0]).write_text(report, encoding="utf-8")
    else:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
