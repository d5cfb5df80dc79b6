"""Device probes: this machine's CPU through ggml, and a GPU machine's answers replayed
(an H100 80GB's total memory, memory clock and bus width, as CUDA and NVML report them)."""

from __future__ import annotations

import psutil

from kvchat.engine.llama.devices import NvmlDevice, RawDevice, ggml_devices, probe_devices

H100 = RawDevice("CUDA0", "NVIDIA H100 80GB HBM3", 1, 85_030_830_080, 84_480_000_000)
CPU = RawDevice("CPU", "AMD EPYC", 0, 0, 0)


def test_this_machine_has_the_cpu_device() -> None:
    devices = ggml_devices()
    assert devices[0].name == "CPU"
    assert devices[0].type_code == 0
    samples, _ = probe_devices()
    cpu = samples[0]
    assert cpu.kind == "cpu"
    assert cpu.total_bytes == psutil.virtual_memory().total
    assert 0 < cpu.free_bytes <= cpu.total_bytes
    assert cpu.process_bytes is not None and cpu.process_bytes > 0


def test_recorded_gpu_with_nvml() -> None:
    def nvml(pid: int) -> tuple[list[NvmlDevice], str]:
        return [NvmlDevice(5_368_709_120, 2619e6 * 2 * 5120 / 8)], ""

    samples, note = probe_devices(raw=lambda: [CPU, H100], nvml=nvml)
    assert note == ""
    assert [s.name for s in samples] == ["CPU", "CUDA0"]
    gpu = samples[1]
    assert gpu.kind == "gpu"
    assert gpu.total_bytes == H100.total_bytes
    assert gpu.free_bytes == H100.free_bytes
    assert gpu.process_bytes == 5_368_709_120
    assert gpu.peak_bandwidth_bytes_per_s is not None
    assert round(gpu.peak_bandwidth_bytes_per_s / 1e12, 2) == 3.35  # H100 SXM's data sheet


def test_nvml_missing_is_said_and_ggml_figures_stay() -> None:
    samples, note = probe_devices(
        raw=lambda: [CPU, H100], nvml=lambda pid: ([], "NVML unavailable: driver not loaded")
    )
    assert note == "NVML unavailable: driver not loaded"
    assert samples[1].free_bytes == H100.free_bytes
    assert samples[1].process_bytes is None


def test_device_list_failure_falls_back_to_host_ram() -> None:
    def broken() -> list[RawDevice]:
        raise OSError("libggml.so: cannot open shared object file")

    samples, note = probe_devices(raw=broken)
    assert [s.name for s in samples] == ["CPU"]
    assert "showing host RAM only" in note
