"""Engine figures in words, for the window and for `kvchat chat --stats`."""

from __future__ import annotations

from kvchat.engine.protocol import ModelInfo, TurnStats

_STOP_WORDS = {
    "eos": "",
    "length": "stopped at the token limit",
    "cancelled": "stopped",
    "context_full": "stopped: the context is full",
    "stop": "stopped at a stop word",
}


def format_stats(stats: TurnStats) -> str:
    """The quiet line under a reply: what it cost and where its prompt came from."""
    parts = [
        f"{stats.generated_tokens} tokens",
        f"{stats.decode_tokens_per_s:.1f} tok/s",
        f"first token {stats.time_to_first_token_s:.2f} s",
        f"prompt {stats.prompt_tokens} tokens: {stats.reused_tokens} from cache, "
        f"{stats.evaluated_tokens} evaluated at {stats.prefill_tokens_per_s:.0f} tok/s",
    ]
    if stats.restored_tokens:
        where = f" from {stats.restored_from}" if stats.restored_from else ""
        parts.append(
            f"{stats.restored_tokens:,} restored{where} in {stats.restore_seconds * 1000:.0f} ms"
        )
    stop = _STOP_WORDS[stats.stop_reason]
    if stop:
        parts.append(stop)
    if stats.template_notice:
        # Stats stored before the field existed load with the default "".
        parts.append(stats.template_notice)
    return " · ".join(parts)


def describe_model(info: ModelInfo) -> str:
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
