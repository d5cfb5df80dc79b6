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
# "stop": the reply reached one of the request's stop strings.
StopReason = Literal["eos", "length", "cancelled", "context_full", "stop"]


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
    # The prompt format: "" for the model's own (or llama.cpp's for its
    # family when the file has none), "llama.cpp:NAME" for one of llama.cpp's
    # built-in formats, anything else a Jinja template of the person's.
    chat_template: str = ""
    # Where conversations' keys and values are kept between runs ("": not on disk).
    kv_cache_dir: str = ""
    # Budgets for them in host RAM and on disk; None: sized to the machine.
    kv_ram_budget_bytes: int | None = None
    kv_disk_budget_bytes: int | None = None


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 1024
    seed: int | None = None
    # OpenAI's penalties: subtracted from a token's logit once it has appeared
    # (presence) and per appearance (frequency), over the last tokens.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Text that ends the reply where it appears; it is not part of the reply.
    stop: tuple[str, ...] = ()
    # A reply constrained to JSON: "object" for any JSON object, or a JSON
    # Schema (its JSON text) that llama.cpp turns into a grammar.
    json_mode: Literal["", "object", "schema"] = ""
    json_schema: str = ""


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation.

    `thinking` is an assistant reply's reasoning, apart from its answer in
    `content` (engine.reasoning). It goes back to the model's template as
    the message's `reasoning_content` and `thinking`, which templates that
    keep earlier thinking read; others, and ChatML, drop it.
    """

    role: Role
    content: str
    thinking: str = ""


# Commands: GUI process -> host.


@dataclass(frozen=True)
class LoadModel:
    config: LoadConfig


@dataclass(frozen=True)
class Chat:
    """Asks for a reply. With `continue_last`, the last message is a reply cut
    short (role "assistant"), and the model goes on with it instead of
    starting a new one."""

    request_id: int
    messages: tuple[ChatMessage, ...]
    sampling: Sampling = Sampling()
    continue_last: bool = False
    # The overflow policy (engine.overflow): tokens kept free for the reply,
    # and whether the oldest turns may leave the model's view to keep them
    # (the window), or a prompt that does not fit is refused (the API).
    reply_room: int = 0
    drop_oldest: bool = False


@dataclass(frozen=True)
class Complete:
    """Asks for a continuation of raw text (no chat template), as
    OpenAI's legacy completions endpoint does for editor plugins."""

    request_id: int
    prompt: str
    sampling: Sampling = Sampling()


@dataclass(frozen=True)
class Cancel:
    """Stops a request, or, with no id, whatever runs now (a load included)."""

    request_id: int | None = None


@dataclass(frozen=True)
class ClearSavedStates:
    """Forgets every saved conversation state of the loaded model, in RAM and on disk."""


@dataclass(frozen=True)
class Prepare:
    """A conversation was opened: bring its saved keys and values into the
    cache now, while the person reads and types, not at their next message."""

    messages: tuple[ChatMessage, ...]


@dataclass(frozen=True)
class Shutdown:
    pass


Command = LoadModel | Chat | Complete | Cancel | ClearSavedStates | Prepare | Shutdown


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
    """What one reply cost. Speeds are tokens per second; 0.0 when unmeasurable.

    The prompt splits into the system prompt (with whatever the template puts
    before the first message), the earlier turns, and the current message.
    `template_notice` says, for a person, why the model's own chat template
    was not used for this turn (it failed or refused, and ChatML stood in);
    empty when it was used.
    """

    prompt_tokens: int
    system_tokens: int
    history_tokens: int
    reused_tokens: int
    evaluated_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    stop_reason: StopReason
    template_notice: str = ""
    # Of `reused_tokens`, those brought back from a saved state of an
    # earlier conversation rather than found in the live cache.
    restored_tokens: int = 0
    # Where they came from ("RAM" or "disk"), and how long bringing them back took.
    restored_from: str = ""
    restore_seconds: float = 0.0
    # The threads decode ended the reply with (0: not known, as from a server
    # elsewhere), and how they came to differ from the machine's default,
    # "2 → 1: another process is using a core" (engine.threads); "" if not.
    decode_threads: int = 0
    threads_note: str = ""
    # Of `generated_tokens`, those inside the reply's thinking (its markers
    # included), and the time from the first token to the end of thinking.
    thinking_tokens: int = 0
    thinking_seconds: float = 0.0
    # Where the model's view started (as PromptEvaluated.view_start).
    view_start: int = 0


@dataclass(frozen=True)
class KvCache:
    """One KV cache as llama.cpp allocated it. A model with sliding-window
    layers has two: the windowed layers' cache holds only the last cells."""

    cells: int
    layers: int
    bytes_per_cell: int
    type_k: str
    type_v: str

    @property
    def bytes(self) -> int:
        return self.cells * self.bytes_per_cell

    def bytes_used(self, tokens: int) -> int:
        return min(tokens, self.cells) * self.bytes_per_cell


@dataclass(frozen=True)
class DeviceBuffers:
    """What this model holds on one device, as llama.cpp reported allocating it.

    `compute_bytes` includes the output (logits) buffer.
    """

    device: str
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes


@dataclass(frozen=True)
class LoadMemory:
    """Where a loaded model's memory went; fixed from load to unload."""

    buffers: tuple[DeviceBuffers, ...]
    kv_caches: tuple[KvCache, ...]
    kv_device: str

    @property
    def kv_bytes(self) -> int:
        return sum(cache.bytes for cache in self.kv_caches)

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes one more token adds while every cache still has room."""
        return sum(cache.bytes_per_cell for cache in self.kv_caches)

    def kv_bytes_used(self, tokens: int) -> int:
        return sum(cache.bytes_used(tokens) for cache in self.kv_caches)

    @property
    def weights_bytes(self) -> int:
        return sum(b.weights_bytes for b in self.buffers)


@dataclass(frozen=True)
class DeviceSample:
    """A device's memory at one moment. `process_bytes` is what the engine
    process holds there (RSS on the CPU, NVML on NVIDIA), None if unknown."""

    name: str
    description: str
    kind: str
    total_bytes: int
    free_bytes: int
    process_bytes: int | None
    peak_bandwidth_bytes_per_s: float | None = None


@dataclass(frozen=True)
class BuildDevice:
    """A device in ggml's registry, as the build found it: no memory figures,
    which on a GPU would cost a context on the device to ask for."""

    name: str  # "CUDA0", "Metal", "CPU"
    description: str  # "NVIDIA H200", the CPU's model name
    kind: str  # "cpu", "gpu", "igpu", "accel"


@dataclass(frozen=True)
class EngineBuild:
    """What the engine's llama.cpp is, in the library's own words: what a bug
    report needs and the GUI process may not ask for itself (it never loads
    llama.cpp). Sent once, as the host starts; "" where the library does not say."""

    llama_cpp: str  # llama_version(): the library's version, "0.5.0-dev"
    commit: str  # the llama.cpp commit it was built from, as ggml recorded it
    ggml: str  # ggml's own version, "0.25.3"
    backends: tuple[str, ...]  # ggml's backend registry in order: ("CUDA", "CPU")
    devices: tuple[BuildDevice, ...]
    # llama_print_system_info(): each backend's features, "CPU : AVX2 = 1 | ...".
    system_info: str
    gpu_offload_supported: bool


@dataclass(frozen=True)
class HostStarted:
    pid: int
    # llama-cpp-python's version (llama_cpp.__version__); "" from a server elsewhere.
    llama_cpp_version: str
    gpu_offload_supported: bool
    # The host's llama.cpp; None from a server elsewhere (engine.remote).
    build: EngineBuild | None = None


@dataclass(frozen=True)
class LoadProgress:
    fraction: float


@dataclass(frozen=True)
class ModelLoaded:
    info: ModelInfo
    memory: LoadMemory


@dataclass(frozen=True)
class ServerFigure:
    """One figure a server elsewhere reported, with where it came from ("GET /slots")."""

    label: str
    value: float | int | str
    unit: str  # "tokens", "bytes", "%", "requests" or ""
    source: str


@dataclass(frozen=True)
class ServerFigures:
    """What a server that runs the model elsewhere says about its memory
    (engine.remote): its own figures, never measured here. None where the
    server does not say."""

    server: str  # "llama-server at gpu-box:8080"
    figures: tuple[ServerFigure, ...] = ()
    n_ctx: int | None = None
    kv_used_tokens: int | None = None
    kv_used_fraction: float | None = None
    running_requests: int | None = None
    waiting_requests: int | None = None
    note: str = ""
    # The endpoints that did not answer, and why.
    unavailable: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemorySample:
    """The devices' memory and the KV cache's fill, sent about once a second.

    `seconds` counts from the model's load; `note` says what could not be
    measured (no NVML, no device list).
    """

    seconds: float
    devices: tuple[DeviceSample, ...]
    tokens_in_cache: int
    gpu_offload_supported: bool
    note: str
    # Conversations whose keys and values wait in host RAM (engine.kv_store).
    saved_states: int = 0
    saved_state_bytes: int = 0
    disk_states: int = 0
    disk_state_bytes: int = 0
    # A model on a server elsewhere: what that server reported (then `devices`
    # are the server's too, when it is another kvchat, and empty otherwise).
    server: ServerFigures | None = None


@dataclass(frozen=True)
class LoadFailed:
    """A load that failed; `loaded` is the model still loaded, if any.

    A file that fails the header check leaves the previous model in place.
    """

    model_path: str
    message: str
    loaded: ModelInfo | None = None


@dataclass(frozen=True)
class PromptEvaluated:
    """The prompt of a turn is in the cache; the reply starts next."""

    request_id: int
    prompt_tokens: int
    system_tokens: int
    history_tokens: int
    reused_tokens: int
    evaluated_tokens: int
    # Of `reused_tokens`, those brought back from a saved state, from where, how fast.
    restored_tokens: int = 0
    restored_from: str = ""
    restore_seconds: float = 0.0
    # Where the model's view starts: the index, among the request's messages
    # that are not the system prompt, of the first one it sees (engine.overflow).
    view_start: int = 0


@dataclass(frozen=True)
class TextDelta:
    """More of a reply's text: its thinking when `thinking`, else its answer.

    `tokens_in_cache` is -1 from a server elsewhere, which does not say.
    """

    request_id: int
    text: str
    tokens_in_cache: int
    thinking: bool = False


@dataclass(frozen=True)
class TurnFinished:
    """A reply ended; `text` is its answer (its thinking came in the deltas)."""

    request_id: int
    text: str
    stats: TurnStats


@dataclass(frozen=True)
class ChatFailed:
    """A request that could not run. `by_request`: the request is at fault
    (too long for the context, a schema that cannot be followed), not the engine."""

    request_id: int
    message: str
    by_request: bool = False


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
    | MemorySample
    | LoadFailed
    | PromptEvaluated
    | TextDelta
    | TurnFinished
    | ChatFailed
    | HostExited
)
