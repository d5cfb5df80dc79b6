"""`kvchat --version` run as a person runs it, and the rows it shares with the About box."""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import replace
from importlib import metadata

from kvchat.app.presenters.about import (
    NOT_REPORTED,
    backends_text,
    features_text,
    llama_cpp_text,
    version_rows,
    version_text,
)
from kvchat.engine.build_info import probe_engine_build
from kvchat.engine.protocol import BuildDevice, EngineBuild

BUILD = EngineBuild(
    llama_cpp="0.5.0-dev",
    commit="0c1e570",
    ggml="0.25.3",
    backends=("CUDA", "CPU"),
    devices=(BuildDevice("CUDA0", "NVIDIA H200", "gpu"), BuildDevice("CPU", "Xeon", "cpu")),
    system_info="CUDA : ARCHS = 900 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX2 = 1",
    gpu_offload_supported=True,
)


def test_kvchat_version_prints_every_version_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvchat.app", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    shown = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in lines}
    assert lines[0] == f"kvchat            {metadata.version('kvchat')}"
    build = probe_engine_build()
    assert shown["llama.cpp"] == llama_cpp_text(build)
    assert shown["llama.cpp"].startswith(build.llama_cpp + " (commit ")
    assert shown["llama-cpp-python"] == metadata.version("llama-cpp-python")
    assert shown["Backends"] == backends_text(build)
    assert shown["Python"].startswith(platform.python_version())
    assert shown["PySide6"].startswith(metadata.version("PySide6-Essentials"))
    assert list(shown) == [name for name, _value in version_rows(build)]


def test_the_rows_read_the_engines_report() -> None:
    assert llama_cpp_text(BUILD) == "0.5.0-dev (commit 0c1e570, ggml 0.25.3)"
    assert backends_text(BUILD) == "CUDA, CPU"
    assert backends_text(replace(BUILD, backends=("CPU",), gpu_offload_supported=False)) == (
        "CPU (no GPU offload in this build)"
    )
    assert features_text(BUILD) == "CUDA: ARCHS=900 USE_GRAPHS; CPU: SSE3 AVX2"
    rows = dict(version_rows(None))
    assert rows["llama.cpp"] == rows["Backends"] == NOT_REPORTED
    assert rows["kvchat"] == metadata.version("kvchat")


def test_a_failed_probe_is_said_in_the_version_text() -> None:
    text = version_text(None, "unknown: llama.cpp did not say what it is within 20 s")
    assert "llama.cpp         unknown: llama.cpp did not say what it is within 20 s\n" in text
    assert text.startswith("kvchat ")
