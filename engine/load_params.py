"""The parameters a kvchat load passes to llama.cpp, resolved from a LoadConfig.

The real load (the engine host's ModelRunner) and the memory estimate (a dry
run of llama.cpp's allocator) must pass llama.cpp the same numbers, or the
estimate describes a different load. Both take them from here. This module
does not import `llama_cpp`: the GUI process resolves parameters too, and
llama.cpp's enum values are part of its stable C interface (`llama.h`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from gguf import GGMLQuantizationType

from kvchat.engine.protocol import FlashAttention, KvType, LoadConfig

DEFAULT_CONTEXT = 4096
# More layers than any model has: llama.cpp clamps it to "every layer and the output".
ALL_LAYERS = 999

# ggml type codes for the K/V cache types a person can choose (gguf mirrors ggml's enum).
KV_TYPES: dict[str, int] = {
    name: int(GGMLQuantizationType[name.upper()]) for name in get_args(KvType)
}
KV_TYPE_NAMES: dict[int, str] = {code: name for name, code in KV_TYPES.items()}
UNQUANTIZED: frozenset[KvType] = frozenset({"f16", "bf16", "f32"})

# llama.h: enum llama_flash_attn_type.
FLASH_ATTN_TYPES: dict[FlashAttention, int] = {"auto": -1, "off": 0, "on": 1}


@dataclass(frozen=True)
class LoadParams:
    """What one load passes to llama.cpp, under llama-cpp-python's names.

    `flash_attention` is kvchat's request ("auto" lets llama.cpp decide per
    device); llama-cpp-python's `Llama` takes only a bool, which the
    estimate reports once llama.cpp has resolved "auto".
    """

    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_gpu_layers: int
    type_k: int
    type_v: int
    flash_attention: FlashAttention
    # llama.cpp's defaults, which kvchat keeps: a full-size cache for
    # sliding-window layers (so the cache can be reused across turns) and
    # the KV cache on the device of its layer.
    swa_full: bool = True
    offload_kqv: bool = True

    def context_fields(self) -> dict[str, int | bool]:
        """The `llama_context_params` fields this load sets, by their C names."""
        return {
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_ubatch,
            "type_k": self.type_k,
            "type_v": self.type_v,
            "flash_attn_type": FLASH_ATTN_TYPES[self.flash_attention],
            "swa_full": self.swa_full,
            "offload_kqv": self.offload_kqv,
        }


def default_context(n_ctx_train: int | None) -> int:
    """kvchat's context when the person chose none: 4096, capped by the trained context."""
    return min(DEFAULT_CONTEXT, n_ctx_train or DEFAULT_CONTEXT)


def resolve_load_params(
    config: LoadConfig, n_ctx_train: int | None, gpu_offload: bool
) -> LoadParams:
    """The parameters kvchat passes to llama.cpp for `config`.

    Args:
        config: the person's choices; None fields take kvchat's defaults.
        n_ctx_train: the model's trained context (GGUF `<arch>.context_length`).
        gpu_offload: whether the llama.cpp build can offload layers at all;
            a CPU build gets 0 GPU layers whatever was asked.
    """
    requested_layers = ALL_LAYERS if config.n_gpu_layers is None else config.n_gpu_layers
    n_gpu_layers = requested_layers if gpu_offload else 0
    return LoadParams(
        n_ctx=config.n_ctx or default_context(n_ctx_train),
        n_batch=config.n_batch,
        # One micro-batch per batch: a prompt batch is computed in one pass.
        n_ubatch=config.n_batch,
        n_gpu_layers=n_gpu_layers,
        type_k=KV_TYPES[config.type_k],
        type_v=KV_TYPES[config.type_v],
        flash_attention=_flash_attention(config, n_gpu_layers),
    )


def _flash_attention(config: LoadConfig, n_gpu_layers: int) -> FlashAttention:
    """kvchat's choice where the person left flash attention at "auto".

    On a load that runs wholly on the CPU, llama.cpp's "auto" turns flash
    attention on, and its CPU kernel makes each generated token slower the
    longer the conversation: on the bundled model with 2 threads, on against
    off, 87 against 78 tokens/s at an empty cache, but 45 against 63 at 512
    cached tokens, 19 against 55 at 2,048 and 13 against 37 at 3,072
    (benchmarks/flash_attention.py, medians of 3 runs). Off, then, unless
    a quantized value cache needs it (llama.cpp refuses one without), or
    layers run on a GPU, where llama.cpp's choice stands.
    """
    if config.flash_attention != "auto" or n_gpu_layers > 0:
        return config.flash_attention
    if config.type_v not in UNQUANTIZED or config.type_k not in UNQUANTIZED:
        return "auto"
    return "off"
