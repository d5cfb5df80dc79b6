"""What kvchat passes to llama.cpp for a person's choices (engine.load_params)."""

from __future__ import annotations

import pytest

from kvchat.engine.load_params import resolve_load_params
from kvchat.engine.protocol import FlashAttention, KvType, LoadConfig


@pytest.mark.parametrize(
    ("asked", "type_v", "gpu_offload", "layers", "passed"),
    [
        ("auto", "f16", False, None, "off"),  # the CPU: off is faster past a few hundred tokens
        ("auto", "f16", True, 0, "off"),  # a GPU build, every layer kept on the CPU
        ("auto", "q8_0", False, None, "auto"),  # a quantized V cache needs flash attention
        ("auto", "f16", True, None, "auto"),  # layers on a GPU: llama.cpp's choice
        ("auto", "f16", True, 4, "auto"),
        ("on", "f16", False, None, "on"),  # the person's explicit choice stands
        ("off", "f16", True, None, "off"),
    ],
)
def test_auto_flash_attention_is_off_on_the_cpu(
    asked: FlashAttention, type_v: KvType, gpu_offload: bool, layers: int | None, passed: str
) -> None:
    config = LoadConfig("m.gguf", flash_attention=asked, type_v=type_v, n_gpu_layers=layers)
    params = resolve_load_params(config, 8192, gpu_offload)
    assert params.flash_attention == passed
    assert params.context_fields()["flash_attn_type"] == {"auto": -1, "off": 0, "on": 1}[passed]
