"""What kvchat is built from, in one set of rows: the About box, the
diagnostics and `kvchat --version` all say the same, in the same order.

llama.cpp's own version and backends come from the engine's report
(`engine.protocol.EngineBuild`): the window has it from the engine host as
it starts, and the command line from a short child (engine.build_info). The
Python packages' versions come from their installed metadata, which needs
neither llama.cpp nor a display. Qt's version is read from QtCore, which
this module imports only when asked (the command line otherwise does without).
"""

from __future__ import annotations

import functools
import platform
from importlib import metadata

from kvchat.engine.protocol import EngineBuild

NOT_REPORTED = "(the engine has not reported yet)"
# The distributions PySide6's wheels install its modules from, the smaller first.
PYSIDE_DISTRIBUTIONS = ("PySide6-Essentials", "PySide6")


@functools.cache
def package_version(name: str) -> str:
    """An installed distribution's version; "not installed" for one that is not.

    Read once a process: what runs is what was imported, whatever is
    installed meanwhile, and each read parses the package's metadata file
    (milliseconds, on the GUI thread when a model loads).
    """
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def package_summary(name: str) -> str:
    """An installed distribution's one-line summary ("" when it has none)."""
    try:
        return metadata.metadata(name)["Summary"] or ""
    except metadata.PackageNotFoundError:
        return ""


@functools.cache
def pyside_version() -> str:
    """PySide6's version from its wheel's metadata, else from the module itself
    (a distribution's packaged PySide6 may have no metadata)."""
    for name in PYSIDE_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import PySide6
    except ImportError:
        return "not installed"
    return str(PySide6.__version__)


def qt_version() -> str:
    """The Qt library PySide6 runs on (it may differ from PySide6's own version)."""
    try:
        from PySide6.QtCore import qVersion
    except ImportError:
        return "not installed"
    return str(qVersion())


def llama_cpp_text(build: EngineBuild | None, missing: str = NOT_REPORTED) -> str:
    """llama.cpp's version, its commit and ggml's: "0.5.0-dev (commit 0c1e570, ggml 0.25.3)"."""
    if build is None:
        return missing
    extra = [f"commit {build.commit}"] if build.commit else []
    if build.ggml:
        extra.append(f"ggml {build.ggml}")
    version = build.llama_cpp or "version not reported"
    return version + (f" ({', '.join(extra)})" if extra else "")


def backends_text(build: EngineBuild | None, missing: str = NOT_REPORTED) -> str:
    """The backends the build registered, as ggml names them: "CUDA, CPU"."""
    if build is None:
        return missing
    names = ", ".join(build.backends) or "none registered"
    return names if build.gpu_offload_supported else f"{names} (no GPU offload in this build)"


def devices_text(build: EngineBuild | None, missing: str = NOT_REPORTED) -> str:
    """ggml's devices with what they are: "CUDA0: NVIDIA H200; CPU: Intel Xeon"."""
    if build is None:
        return missing
    shown = [f"{d.name}: {d.description}" if d.description else d.name for d in build.devices]
    return "; ".join(shown) or "none found"


def features_text(build: EngineBuild | None, missing: str = NOT_REPORTED) -> str:
    """Each backend's features from llama.cpp's system info, "CPU: SSE3 AVX2 REPACK";
    a feature with a value other than 1 keeps it ("ARCHS=890")."""
    if build is None:
        return missing
    groups: list[tuple[str, list[str]]] = []
    for part in build.system_info.split("|"):
        part = part.strip()
        if not part:
            continue
        if " : " in part:  # "CPU : SSE3 = 1": a backend's list starts
            backend, part = (side.strip() for side in part.split(" : ", 1))
            groups.append((backend, []))
        elif not groups:
            groups.append(("", []))
        name, _, value = (side.strip() for side in part.partition("="))
        groups[-1][1].append(name if value in ("", "1") else f"{name}={value}")
    shown = [
        f"{backend}: {' '.join(names)}" if backend else " ".join(names) for backend, names in groups
    ]
    return "; ".join(shown) or "none reported"


def version_rows(build: EngineBuild | None, missing: str = NOT_REPORTED) -> list[tuple[str, str]]:
    """(name, version) for kvchat and everything it runs on; `missing` stands
    for what only the engine can say, while it has not said it."""
    python = f"{platform.python_version()} ({platform.python_implementation()})"
    return [
        ("kvchat", package_version("kvchat")),
        ("llama.cpp", llama_cpp_text(build, missing)),
        ("llama-cpp-python", package_version("llama-cpp-python")),
        ("Backends", backends_text(build, missing)),
        ("Python", python),
        ("PySide6", f"{pyside_version()} (Qt {qt_version()})"),
    ]


def version_text(build: EngineBuild | None, missing: str = NOT_REPORTED) -> str:
    """`kvchat --version`: the About box's rows, a name and its version a line,
    "kvchat 0.1.0" first as scripts that read the first line expect."""
    rows = version_rows(build, missing)
    width = max(len(name) for name, _value in rows) + 2
    return "".join(f"{name:<{width}}{value}\n" for name, value in rows)
