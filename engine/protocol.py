"""The messages that cross the pipe between the GUI process and the engine host.

Commands go down to the host, events come back up. All are frozen
dataclasses of plain values, so they pickle cheaply and can be handed from
one thread to another without copies or locks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FlashAttention = Literal["auto", "on", "off"]
KvType = Literal["f16", "bf16", "q8_0", "q4_0", "f32"]
Role = Literal["system", "user", "assistant"]
StopReason = Literal["eos", "length", "cancelled", "context_full"]


@dataclass(frozen=True)
class LoadConfig:
    """How to load a model. None means "the engine's default for people".

    Defaults: context 4096 capped by the model's trained context; threads =
    physical cores; every layer on the GPU when the build supports offload.
    """

    model_path: str
    n_ctx: int | None = None
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    n_batch: int = 512
    flash_attention: FlashAttention = "auto"
    type_k: KvType = "f16"
    type_v: KvType = "f16"


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 1024
    seed: int | None = None


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


# Commands: GUI process -> host.


@dataclass(frozen=True)
class LoadModel:
    config: LoadConfig


@dataclass(frozen=True)
class Chat:
    request_id: int
    messages: tuple[ChatMessage, ...]
    sampling: Sampling = Sampling()


@dataclass(frozen=True)
class Cancel:
    """Stops a request, or, with no id, whatever runs now (a load included)."""

    request_id: int | None = None


@dataclass(frozen=True)
class Shutdown:
    pass


Command = LoadModel | Chat | Cancel | Shutdown


# Events: host -> GUI process.


@dataclass(frozen=True)
class ModelInfo:
    path: str
    name: str
    architecture: str
    n_params: int
    size_bytes: int
    n_ctx: int
    n_ctx_train: int
    n_threads: int
    n_gpu_layers: int
    n_layers: int
    gpu_offload_supported: bool
    chat_template_source: str
    load_seconds: float


@dataclass(frozen=True)
class TurnStats:
    """What one reply cost. Speeds are tokens per second; 0.0 when unmeasurable."""

    prompt_tokens: int
    reused_tokens: int
    evaluated_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    stop_reason: StopReason


@dataclass(frozen=True)
class HostStarted:
    pid: int
    llama_cpp_version: str
    gpu_offload_supported: bool


@dataclass(frozen=True)
class LoadProgress:
    fraction: float


@dataclass(frozen=True)
class ModelLoaded:
    info: ModelInfo


@dataclass(frozen=True)
class LoadFailed:
    """A load that failed; `loaded` is the model still loaded, if any.

    A file that fails the header check leaves the previous model in place.
    """

    model_path: str
    message: str
    loaded: ModelInfo | None = None


@dataclass(frozen=True)
class TextDelta:
    request_id: int
    text: str


@dataclass(frozen=True)
class TurnFinished:
    request_id: int
    text: str
    stats: TurnStats


@dataclass(frozen=True)
class ChatFailed:
    request_id: int
    message: str


@dataclass(frozen=True)
class HostExited:
    """Made on the GUI side when the pipe closes: the host is gone."""

    exit_code: int | None
    description: str
    log_tail: str


Event = (
    HostStarted
    | LoadProgress
    | ModelLoaded
    | LoadFailed
    | TextDelta
    | TurnFinished
    | ChatFailed
    | HostExited
)
