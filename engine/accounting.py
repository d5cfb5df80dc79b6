"""Where a loaded model's memory went, from llama.cpp's buffer report.

The buffer report gives each buffer's size rounded to 0.01 MiB. KV bytes per
cell are recomputed exactly from the model's attention shape and the cache
types (a K or V row is a whole number of ggml blocks), so that the bytes the
cache uses follow the tokens in it to the byte. Where the shape is not
uniform across layers, the reported size divided by the cells stands in.
"""

from __future__ import annotations

from collections.abc import Iterable

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from kvchat.engine.buffer_report import MIB, BufferReport, device_of_buffer
from kvchat.engine.gguf_file import GgufInfo
from kvchat.engine.protocol import DeviceBuffers, KvCache, LoadMemory

# The report rounds to 0.01 MiB; an exact figure further off than this means
# the shape assumption does not hold for this model.
_ROUNDING = 0.006 * MIB


def _row_bytes(type_name: str, columns: int) -> int | None:
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]]
    except KeyError:
        return None
    if columns % block:
        return None
    return columns // block * size


def kv_bytes_per_cell(gguf: GgufInfo, layers: int, type_k: str, type_v: str) -> int | None:
    """K and V bytes that one token takes in a cache of `layers` layers, or
    None when the metadata does not give one attention shape for every layer."""
    arch = gguf.architecture
    meta = gguf.metadata
    n_embd = meta.get(f"{arch}.embedding_length")
    n_head = meta.get(f"{arch}.attention.head_count")
    n_head_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    if not all(isinstance(v, int) and v > 0 for v in (n_embd, n_head, n_head_kv)):
        return None
    assert isinstance(n_embd, int) and isinstance(n_head, int) and isinstance(n_head_kv, int)
    key_length = meta.get(f"{arch}.attention.key_length", n_embd // n_head)
    value_length = meta.get(f"{arch}.attention.value_length", key_length)
    if not isinstance(key_length, int) or not isinstance(value_length, int):
        return None
    k_row = _row_bytes(type_k, n_head_kv * key_length)
    v_row = _row_bytes(type_v, n_head_kv * value_length)
    if k_row is None or v_row is None:
        return None
    return layers * (k_row + v_row)


def load_memory(report: BufferReport, gguf: GgufInfo, device_names: Iterable[str]) -> LoadMemory:
    """Per device weights, KV and compute, and the KV caches' layout."""
    names = list(device_names)
    caches = []
    for layout in report.kv_caches:
        exact = kv_bytes_per_cell(gguf, layout.layers, layout.type_k, layout.type_v)
        if exact is None or abs(exact * layout.cells - layout.bytes) > _ROUNDING:
            per_cell = round(layout.bytes / layout.cells) if layout.cells else 0
        else:
            per_cell = exact
        caches.append(KvCache(layout.cells, layout.layers, per_cell, layout.type_k, layout.type_v))

    totals: dict[str, dict[str, int]] = {}
    for kind in ("weights", "kv", "compute", "output"):
        for buffer, size in report.by_buffer(kind).items():
            device = device_of_buffer(buffer, names)
            bucket = "compute" if kind == "output" else kind
            per_device = totals.setdefault(device, {"weights": 0, "kv": 0, "compute": 0})
            per_device[bucket] += size
    buffers = tuple(
        DeviceBuffers(device, t["weights"], t["kv"], t["compute"]) for device, t in totals.items()
    )
    kv_by_device = {b.device: b.kv_bytes for b in buffers if b.kv_bytes}
    kv_device = max(kv_by_device, key=lambda d: kv_by_device[d]) if kv_by_device else "CPU"
    return LoadMemory(buffers, tuple(caches), kv_device)
