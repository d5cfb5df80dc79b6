"""llama.cpp's own report of the buffers it allocates, read from its log.

llama.cpp has no C function that returns its memory breakdown; it logs every
buffer it allocates as it allocates it: the model's weights per buffer type,
the KV cache per device, the output (logits) buffer, and the compute buffer
the scheduler reserves. Those lines are the authority on what a load costs,
so the engine captures them while it loads a model and reads them here.

Buffer names are ggml buffer type names: a device name ("CPU", "CUDA0",
"Vulkan0"), or a device name with a suffix for a variant that lives in the
same memory ("CPU_Mapped", "CPU_REPACK", "CUDA0_Split"), or a backend's host
buffer ("CUDA_Host": pinned host RAM).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MIB = 1024 * 1024

_BUFFER_LINE = re.compile(
    r"^(?P<where>\w+):\s+(?P<buffer>\S+)\s+(?P<kind>model|KV|output|compute|RS)"
    r" buffer size =\s+(?P<mib>[\d.]+) MiB"
)
_KV_SUMMARY = re.compile(
    r"^llama_kv_cache(?:_iswa)?:\s+size =\s+(?P<mib>[\d.]+) MiB \(\s*(?P<cells>\d+) cells,"
    r"\s+(?P<layers>\d+) layers,.*?K \((?P<type_k>\w+)\):\s+[\d.]+ MiB, V \((?P<type_v>\w+)\)"
)

_KINDS = {"model": "weights", "KV": "kv", "RS": "kv", "output": "output", "compute": "compute"}


@dataclass(frozen=True)
class KvCacheLayout:
    """One KV cache as llama.cpp sized it (a model with sliding-window layers has two)."""

    cells: int
    layers: int
    bytes: int
    type_k: str
    type_v: str

    @property
    def bytes_per_cell(self) -> float:
        return self.bytes / self.cells if self.cells else 0.0


@dataclass
class BufferReport:
    """Bytes per buffer name for each kind: weights, kv, output, compute."""

    buffers: dict[str, dict[str, int]] = field(default_factory=dict)
    kv_caches: list[KvCacheLayout] = field(default_factory=list)

    def total(self, kind: str) -> int:
        return sum(self.buffers.get(kind, {}).values())

    def by_buffer(self, kind: str) -> dict[str, int]:
        return dict(self.buffers.get(kind, {}))


def _bytes(mib: str) -> int:
    return round(float(mib) * MIB)


def parse_buffer_report(lines: Iterable[str]) -> BufferReport:
    """Reads the buffer lines of one load and context creation.

    KV lines add up: a model with sliding-window layers allocates one cache
    for them and one for the rest, often on the same device. Any other
    buffer reported twice (the scheduler reserves compute buffers more than
    once while it settles) counts at its last report.
    """
    report = BufferReport()
    for line in lines:
        text = line.strip()
        match = _BUFFER_LINE.match(text)
        if match:
            kind = _KINDS[match["kind"]]
            sizes = report.buffers.setdefault(kind, {})
            size = _bytes(match["mib"])
            if kind == "kv":
                size += sizes.get(match["buffer"], 0)
            sizes[match["buffer"]] = size
            continue
        summary = _KV_SUMMARY.match(text)
        if summary:
            report.kv_caches.append(
                KvCacheLayout(
                    cells=int(summary["cells"]),
                    layers=int(summary["layers"]),
                    bytes=_bytes(summary["mib"]),
                    type_k=summary["type_k"],
                    type_v=summary["type_v"],
                )
            )
    return report


def device_of_buffer(buffer: str, device_names: Iterable[str]) -> str:
    """The device whose memory holds a buffer; host-side buffers belong to "CPU".

    "CUDA0_Split" is on CUDA0, "CPU_REPACK" and "CUDA_Host" are in host RAM.
    """
    names = sorted(device_names, key=len, reverse=True)
    for name in names:
        if name != "CPU" and (buffer == name or buffer.startswith(name + "_")):
            return name
    return "CPU"
