"""The dry run: llama.cpp's own allocator asked what a load would take.

Run as `python -m kvchat.engine.llama.dry_run RESULT_PATH` with a JSON request on stdin
(`{"config": LoadConfig fields, "fit": bool}`); it writes
`{"estimate": ...}` or `{"error": "..."}` to RESULT_PATH (with `"model_file":
true` when the file itself is not one llama.cpp may be given). It loads the
model with `no_alloc = True` and `load_mode = LLAMA_LOAD_MODE_NONE`, as
llama.cpp's own memory-fit code does, and creates a context: nothing is
allocated, and llama.cpp logs every buffer it would allocate. Left at its
memory-mapped default, a no_alloc load aborts the process on
GGML_ASSERT(!ml.no_alloc), and other aborts inside ggml cannot be ruled
out, so this always runs in a short-lived child process of its own, where
a crash costs nothing (see `engine.estimate.estimate`).

The same process answers the fit questions with further dry runs, reusing
the loaded model while only the context changes.
"""

from __future__ import annotations

import ctypes
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import llama_cpp

from kvchat.engine.estimate import (
    CannotEstimateError,
    Error,
    Estimate,
    HostWeights,
    Projection,
    check_metadata,
    find_fit,
    missing_key,
    n_ctx_train,
    n_layers,
    project,
    read_dry_run_log,
)
from kvchat.engine.gguf_file import GgufInfo, ModelFileError, read_model
from kvchat.engine.llama.devices import (
    NvmlDevice,
    RawDevice,
    ggml_devices,
    nvml_devices,
    probe_devices,
)
from kvchat.engine.load_params import LoadParams, resolve_load_params
from kvchat.engine.protocol import DeviceSample, LoadConfig

_FEATURE = re.compile(r"(\w+) = 1\b")
# Devices that hold model memory; "accel" devices (BLAS) compute in host RAM.
_MEMORY_KINDS = ("cpu", "gpu", "igpu")


def _discard(_level: int, _text: bytes, _user_data: ctypes.c_void_p) -> None:
    """Where llama.cpp's log goes outside a capture: nowhere."""


# Module level: llama.cpp keeps the pointer, so the callback must outlive every capture.
_DISCARD = llama_cpp.llama_log_callback(_discard)


class LogCapture:
    """Collects llama.cpp's log as whole lines while it is installed.

    llama.cpp has one log callback per process; a capture replaces whatever
    was installed and leaves a silent one behind when it ends.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._partial = ""
        self._callback = llama_cpp.llama_log_callback(self._on_log)

    def _on_log(self, _level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        self._partial += text.decode("utf-8", errors="replace")
        *complete, self._partial = self._partial.split("\n")
        self.lines.extend(complete)

    def take(self) -> list[str]:
        """The lines logged since the last take."""
        taken, self.lines = self.lines, []
        return taken

    def __enter__(self) -> LogCapture:
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._partial:
            self.lines.append(self._partial)
            self._partial = ""
        llama_cpp.llama_log_set(_DISCARD, ctypes.c_void_p(0))


def _complaint(lines: Sequence[str]) -> str:
    """llama.cpp's last words on a failure, for a person."""
    errors = [line.strip() for line in lines if "error" in line.lower() or "fail" in line.lower()]
    chosen = errors[-2:] or [line.strip() for line in lines if line.strip()][-1:]
    return "; ".join(chosen) or "llama.cpp gave no reason"


def cpu_features() -> frozenset[str]:
    """The CPU backend's features as llama.cpp reports them ("AVX2", "REPACK", ...)."""
    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    return frozenset(_FEATURE.findall(info))


class DryRunner:
    """Dry runs on one model file: one model loaded at a time, a context per run."""

    def __init__(
        self,
        gguf: GgufInfo,
        capture: LogCapture,
        devices: Sequence[DeviceSample],
        host: HostWeights,
    ) -> None:
        self._gguf = gguf
        self._capture = capture
        self._devices = devices
        self._host = host
        self._model: Any = None
        self._model_layers: int | None = None
        self._model_lines: list[str] = []
        self.runs = 0

    def _load(self, n_gpu_layers: int) -> None:
        self.close()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        model_params.no_alloc = True
        model_params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
        self._capture.take()
        model = llama_cpp.llama_model_load_from_file(str(self._gguf.path).encode(), model_params)
        lines = self._capture.take()
        if not model:
            key = missing_key(lines)
            if key is not None:
                raise CannotEstimateError(f"estimate unavailable: missing {key}")
            raise CannotEstimateError(f"llama.cpp would not load the model: {_complaint(lines)}")
        self._model, self._model_layers, self._model_lines = model, n_gpu_layers, lines

    def measure(self, params: LoadParams) -> Projection:
        """The projection of one load, from a dry run of it."""
        if self._model is None or self._model_layers != params.n_gpu_layers:
            self._load(params.n_gpu_layers)
        context_params = llama_cpp.llama_context_default_params()
        for name, value in params.context_fields().items():
            setattr(context_params, name, value)
        context_params.no_perf = True
        self._capture.take()
        context = llama_cpp.llama_init_from_model(self._model, context_params)
        lines = self._capture.take()
        self.runs += 1
        if not context:
            raise CannotEstimateError(
                f"llama.cpp would refuse a context of {params.n_ctx} tokens: {_complaint(lines)}"
            )
        llama_cpp.llama_free(context)
        log = read_dry_run_log([*self._model_lines, *lines])
        return project(self._gguf, params, log, self._devices, self._host)

    def close(self) -> None:
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None


def run(
    request: dict[str, Any],
    raw: Callable[[], list[RawDevice]] = ggml_devices,
    nvml: Callable[[int], tuple[list[NvmlDevice], str]] = nvml_devices,
) -> dict[str, object]:
    """Answers one request: the estimate as plain data, or the reason there is none.

    `raw` and `nvml` are the device probes, replaceable so that tests can
    replay a machine whose driver query fails.
    """
    try:
        config = LoadConfig(**request["config"])
        gguf = read_model(config.model_path)
    except ModelFileError as exc:
        return {"error": str(exc), "model_file": True}
    try:
        check_metadata(gguf)
    except Error as exc:
        return {"error": str(exc)}
    llama_cpp.llama_backend_init()
    probed, probe_note = probe_devices(raw, nvml)
    devices = [device for device in probed if device.kind in _MEMORY_KINDS]
    gpus = [device for device in devices if device.kind != "cpu"]
    gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
    host = HostWeights(
        # llama.cpp maps the file unless a device cannot map it (integrated GPUs).
        mapped=bool(llama_cpp.llama_supports_mmap()) and not any(d.kind == "igpu" for d in gpus),
        # With a GPU, its pinned host buffer comes before the repacking buffer.
        cpu_features=frozenset() if gpus else cpu_features(),
    )
    params = resolve_load_params(config, n_ctx_train(gguf), gpu_offload)
    notes = [probe_note] if probe_note else []
    if not gpu_offload:
        notes.append("this llama.cpp build has no GPU offload: every layer runs on the CPU")
    with LogCapture() as capture:
        runner = DryRunner(gguf, capture, devices, host)
        try:
            started = time.perf_counter()
            projection = runner.measure(params)
            seconds = time.perf_counter() - started
            fit = None
            if request.get("fit", True):
                layers, trained = n_layers(gguf), n_ctx_train(gguf)
                try:
                    fit = find_fit(params, layers, trained, gpu_offload, runner.measure)
                except Error as exc:
                    # The chosen settings were measured; only the search met a refusal.
                    notes.append(f"no fit answers: {exc}")
        except Error as exc:
            return {"error": str(exc)}
        finally:
            runner.close()
    if projection.n_ctx != params.n_ctx:
        notes.append(f"llama.cpp rounds the context up to {projection.n_ctx} tokens")
    result = Estimate(
        model_path=str(gguf.path),
        n_layers=n_layers(gguf) + 1,
        n_ctx_train=n_ctx_train(gguf),
        projection=projection,
        fit=fit,
        notes=tuple(notes),
        dry_run_seconds=seconds,
        dry_runs=runner.runs,
    )
    return {"estimate": result.to_wire()}


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print(
            "usage: python -m kvchat.engine.llama.dry_run RESULT_PATH < request.json",
            file=sys.stderr,
        )
        return 2
    request = json.loads(sys.stdin.read())
    answer = run(request)
    with open(argv[0], "w", encoding="utf-8") as handle:
        json.dump(answer, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
