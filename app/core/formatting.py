"""Engine figures in words, for the window and for `kvchat chat --stats`."""

from __future__ import annotations

from pathlib import Path

from kvchat.engine.protocol import ModelInfo, TurnStats
from kvchat.engine.remote_address import describe_remote, is_remote


def format_bytes(value: float) -> str:
    """1536 -> "1.5 KiB": binary units, as llama.cpp and the OS report them."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


_STOP_WORDS = {
    "eos": "",
    "length": "stopped at the token limit",
    "cancelled": "stopped",
    "context_full": "stopped: the context is full",
    "stop": "stopped at a stop word",
}


def format_stats(stats: TurnStats) -> str:
    """The quiet line under a reply: what it cost and where its prompt came from."""
    thinking = f" ({stats.thinking_tokens} thinking)" if stats.thinking_tokens else ""
    parts = [
        f"{stats.generated_tokens} tokens{thinking}",
        f"{stats.decode_tokens_per_s:.1f} tok/s",
        f"first token {stats.time_to_first_token_s:.2f} s",
    ]
    if stats.prompt_tokens:
        prefill = (
            f" at {stats.prefill_tokens_per_s:.0f} tok/s" if stats.prefill_tokens_per_s else ""
        )
        parts.append(
            f"prompt {stats.prompt_tokens} tokens: {stats.reused_tokens} from cache, "
            f"{stats.evaluated_tokens} evaluated{prefill}"
        )
    else:
        # A server elsewhere that sent no usage: unknown, not zero.
        parts.append("prompt tokens not reported by the server")
    if stats.restored_tokens:
        where = f" from {stats.restored_from}" if stats.restored_from else ""
        parts.append(
            f"{stats.restored_tokens:,} restored{where} in {stats.restore_seconds * 1000:.0f} ms"
        )
    stop = _STOP_WORDS[stats.stop_reason]
    if stop:
        parts.append(stop)
    if stats.threads_note:
        parts.append(f"threads {stats.threads_note}")
    if stats.template_notice:
        # Stats stored before the field existed load with the default "".
        parts.append(stats.template_notice)
    return " · ".join(parts)


def model_label(path: str) -> str:
    """A model as a person names it: its file's name, or "<model> on <server>"."""
    return describe_remote(path) if is_remote(path) else Path(path).name


def describe_model(info: ModelInfo) -> str:
    if is_remote(info.path):
        # What the server says of it; its threads and layers are the server's business.
        parts = [info.name]
        if info.architecture:
            parts.append(info.architecture)
        if info.n_params:
            parts.append(f"{info.n_params / 1e9:.1f}B parameters")
        if info.size_bytes:
            parts.append(f"{info.size_bytes / 2**30:.1f} GiB")
        if info.n_ctx:
            parts.append(f"context {info.n_ctx:,}")
        parts.append(f"chat template: {info.chat_template_source}")
        return " · ".join(parts)
    device = (
        f"{info.n_gpu_layers} of {info.n_layers} layers on the GPU"
        if info.n_gpu_layers
        else ("CPU only" if not info.gpu_offload_supported else "CPU (no layers offloaded)")
    )
    return (
        f"{info.name} · {info.architecture} · {info.n_params / 1e6:.0f}M parameters · "
        f"{info.size_bytes / 2**20:.0f} MiB · trained context {info.n_ctx_train} · "
        f"{info.n_threads} thread{'' if info.n_threads == 1 else 's'} · {device} · "
        f"chat template: {info.chat_template_source}"
    )
