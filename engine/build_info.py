"""llama.cpp's build as JSON, and a short child process that reports it.

The GUI process and the command line never load llama.cpp (only the engine
host does), yet the About box, the diagnostics and `kvchat --version` say
which llama.cpp they run. The host sends its `EngineBuild` once as it
starts; before a host runs, or where none runs at all, `probe_engine_build`
asks a child of its own (`engine.build_probe`) and waits well under a second
on a CPU build. This module imports neither llama.cpp nor Qt.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kvchat.engine.children import child_environment, python_command, safe_working_folder
from kvchat.engine.protocol import BuildDevice, EngineBuild

# A GPU build starts its driver as it registers its devices: seconds on a cold machine.
PROBE_TIMEOUT_S = 20.0


class Error(Exception):
    """llama.cpp's build could not be found out; the message says why, for a person."""


class ProbeFailedError(Error):
    """The child that asks llama.cpp crashed, hung, or answered nonsense."""


def build_to_json(build: EngineBuild) -> str:
    return json.dumps(asdict(build))


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise TypeError(f"{key} is not text")
    return value


def build_from_json(text: str) -> EngineBuild:
    """The build `build_to_json` wrote.

    Raises:
        ProbeFailedError: the text is not such a build.
    """
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        devices = tuple(
            BuildDevice(_text(d, "name"), _text(d, "description"), _text(d, "kind"))
            for d in data.get("devices", [])
        )
        backends = tuple(data.get("backends", []))
        if not all(isinstance(name, str) for name in backends):
            raise TypeError("a backend's name is not text")
        return EngineBuild(
            llama_cpp=_text(data, "llama_cpp"),
            commit=_text(data, "commit"),
            ggml=_text(data, "ggml"),
            backends=backends,
            devices=devices,
            system_info=_text(data, "system_info"),
            gpu_offload_supported=bool(data.get("gpu_offload_supported", False)),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ProbeFailedError(f"llama.cpp's report cannot be read ({exc})") from None


def probe_engine_build(timeout_s: float = PROBE_TIMEOUT_S) -> EngineBuild:
    """Asks a short-lived child process what the installed llama.cpp is.

    Raises:
        ProbeFailedError: the child crashed, took longer than `timeout_s`, or
            its answer cannot be read (llama-cpp-python missing or broken).
    """
    with tempfile.TemporaryDirectory(prefix="kvchat-build-") as folder:
        result = Path(folder) / "build.json"
        try:
            finished = subprocess.run(
                python_command("kvchat.engine.llama.build_probe", str(result)),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=child_environment(),
                cwd=safe_working_folder(),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ProbeFailedError(
                f"llama.cpp did not say what it is within {timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise ProbeFailedError(f"the child process could not start ({exc})") from None
        if finished.returncode != 0 or not result.is_file():
            last = (finished.stderr.strip().splitlines() or [""])[-1]
            how = _how_it_ended(finished.returncode)
            raise ProbeFailedError(f"asking llama.cpp {how}" + (f": {last}" if last else ""))
        return build_from_json(result.read_text(encoding="utf-8"))


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"crashed with {signal.Signals(-returncode).name}"
        except ValueError:
            return f"crashed with signal {-returncode}"
    return f"exited with code {returncode}"
