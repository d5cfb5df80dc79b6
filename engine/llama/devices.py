"""The devices llama.cpp can run on and their memory, from ggml's own device API.

ggml's backend registry knows every device the installed build can use (the
CPU always; CUDA, Metal, Vulkan... devices when the build has them) and each
device's total and free memory. It is reached through ctypes in the ggml
library that the llama-cpp-python wheel ships. On NVIDIA GPUs, NVML adds
what this process itself holds on the device. Host RAM comes from psutil.

Only the engine host calls `probe_devices`: it loads ggml.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from kvchat.engine.protocol import BuildDevice, DeviceSample

CPU_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


def _ggml_library() -> ctypes.CDLL:
    from llama_cpp import _ggml

    lib: ctypes.CDLL = _ggml.libggml
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_count.argtypes = []
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_count.argtypes = []
    lib.ggml_backend_reg_get.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    return lib


def ggml_backends() -> list[str]:
    """The backends this build registered, in ggml's order ("CUDA", "CPU"):
    what a build can run on, whether or not a device for it is present."""
    lib = _ggml_library()
    return [
        (lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(index)) or b"?").decode()
        for index in range(lib.ggml_backend_reg_count())
    ]


def ggml_device_names() -> list[BuildDevice]:
    """Every device in ggml's registry, without asking for its memory (on a GPU
    that asks the driver for a context: slow, and memory the model may want)."""
    lib = _ggml_library()
    found = []
    for index in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(index)
        found.append(
            BuildDevice(
                name=(lib.ggml_backend_dev_name(device) or b"?").decode(),
                description=(lib.ggml_backend_dev_description(device) or b"").decode(),
                kind=CPU_TYPES.get(int(lib.ggml_backend_dev_type(device)), "other"),
            )
        )
    return found


@dataclass(frozen=True)
class RawDevice:
    """A device as ggml answered, before per-process figures are added."""

    name: str
    description: str
    type_code: int
    total_bytes: int
    free_bytes: int


def ggml_devices() -> list[RawDevice]:
    """Every device in ggml's registry, in registry order."""
    lib = _ggml_library()
    found = []
    for index in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(index)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        found.append(
            RawDevice(
                name=(lib.ggml_backend_dev_name(device) or b"?").decode(),
                description=(lib.ggml_backend_dev_description(device) or b"").decode(),
                type_code=int(lib.ggml_backend_dev_type(device)),
                total_bytes=int(total.value),
                free_bytes=int(free.value),
            )
        )
    return found


@dataclass(frozen=True)
class NvmlDevice:
    """What NVML adds for one NVIDIA GPU."""

    process_bytes: int | None
    peak_bandwidth_bytes_per_s: float | None


def nvml_devices(pid: int) -> tuple[list[NvmlDevice], str]:
    """This process's memory and the peak memory bandwidth of each NVIDIA GPU
    (NVML order), and a note if NVML failed.

    Peak bandwidth = the memory's maximum clock x 2 transfers per clock x the
    bus width: 3.35 TB/s on an H100 SXM, as its data sheet says.
    """
    try:
        import pynvml
    except ImportError:
        return [], "NVML is not installed (nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"NVML unavailable: {exc}"
    try:
        figures: list[NvmlDevice] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            used = None
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == pid and process.usedGpuMemory is not None:
                    used = int(process.usedGpuMemory)
            peak = None
            try:
                clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
                bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
                peak = clock_mhz * 1e6 * 2 * bus_bits / 8
            except pynvml.NVMLError:
                pass
            figures.append(NvmlDevice(used, peak))
        return figures, ""
    except pynvml.NVMLError as exc:
        return [], f"NVML failed: {exc}"
    finally:
        pynvml.nvmlShutdown()


def probe_devices(
    raw: Callable[[], list[RawDevice]] = ggml_devices,
    nvml: Callable[[int], tuple[list[NvmlDevice], str]] = nvml_devices,
) -> tuple[list[DeviceSample], str]:
    """The devices with this process's share of each, and a note on what failed.

    `raw` and `nvml` are parameters so that tests can replay recorded answers
    from machines with GPUs.
    """
    pid = os.getpid()
    notes = []
    try:
        devices = raw()
    except (OSError, AttributeError) as exc:
        devices = []
        notes.append(f"ggml's device list is unavailable ({exc}); showing host RAM only")
    gpus = [d for d in devices if CPU_TYPES.get(d.type_code) != "cpu"]
    nvml_figures: list[NvmlDevice] = []
    if any(d.name.startswith("CUDA") for d in gpus):
        nvml_figures, note = nvml(pid)
        if note:
            notes.append(note)
    memory = psutil.virtual_memory()
    rss = psutil.Process(pid).memory_info().rss
    result = []
    cuda_index = 0
    for device in devices:
        kind = CPU_TYPES.get(device.type_code, "other")
        extra = NvmlDevice(None, None)
        if kind == "cpu":
            # ggml reports host memory for the CPU device; psutil's "available"
            # is what a new allocation can really have.
            host = DeviceSample(
                device.name, device.description, kind, memory.total, memory.available, rss
            )
            result.append(host)
            continue
        if device.name.startswith("CUDA"):
            if cuda_index < len(nvml_figures):
                extra = nvml_figures[cuda_index]
            cuda_index += 1
        result.append(
            DeviceSample(
                device.name,
                device.description,
                kind,
                device.total_bytes,
                device.free_bytes,
                extra.process_bytes,
                extra.peak_bandwidth_bytes_per_s,
            )
        )
    if not any(d.kind == "cpu" for d in result):
        result.insert(
            0, DeviceSample("CPU", "host RAM", "cpu", memory.total, memory.available, rss)
        )
    return result, "; ".join(notes)
