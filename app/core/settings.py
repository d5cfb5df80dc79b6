"""The settings a person can choose, with their bounds.

One typed pydantic tree: every field has bounds and a description, so bad
values are refused with a message that names the field. `None` means "the
engine's default for people" (see `engine.protocol.LoadConfig`). The tree is
kept in settings.json in the data dir (app.settings_file).

The sampling fields and the system prompt are the defaults for new
conversations: each conversation may change its own (`apply_overrides`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kvchat.engine.protocol import FlashAttention, KvType, LoadConfig, Sampling

SCHEMA_VERSION = 1
# The engine's defaults (engine.protocol), which the settings start from: each
# value is written once, where the engine, below the app, can read it too.
# The bounds and descriptions are the settings' own, read by the dialog, the
# conversation panel and the command line (ui.setting_fields, app.cli.command_line).
_SAMPLING = Sampling()
_LOAD = LoadConfig("")


def _bytes(mib: int | None) -> int | None:
    return None if mib is None else mib * 1024 * 1024


def _number_only(value: object) -> object:
    """Refuses true/false and text where a number goes: pydantic would read
    `true` as 1 thread and "8" as 8, hiding a settings file that is wrong."""
    if isinstance(value, bool):
        raise ValueError("should be a number, not true or false")
    if isinstance(value, str):
        raise ValueError("should be a number, not text")
    return value


# The settings a conversation may change for itself, besides its system prompt:
# they take effect at the next reply, where the others need a reload.
SAMPLING_FIELDS: tuple[str, ...] = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "max_tokens",
    "seed",
)


class EngineSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    n_ctx: int | None = Field(
        default=None,
        ge=512,
        le=1 << 20,
        description="Context size in tokens; default 4096, capped by the model's trained context.",
    )
    n_threads: int | None = Field(
        default=None, ge=1, le=512, description="CPU threads; default: the physical cores."
    )
    n_gpu_layers: int | None = Field(
        default=None,
        ge=0,
        le=999,
        description="Layers offloaded to the GPU; default: all, when the build supports it.",
    )
    n_batch: int = Field(
        default=_LOAD.n_batch, ge=32, le=8192, description="Prompt tokens per batch."
    )
    flash_attention: FlashAttention = Field(
        default=_LOAD.flash_attention,
        description="Flash attention: auto is off on the CPU (faster there past a few "
        "hundred tokens) and llama.cpp's choice on a GPU.",
    )
    type_k: KvType = Field(default=_LOAD.type_k, description="Type of the cached keys.")
    type_v: KvType = Field(
        default=_LOAD.type_v,
        description="Type of the cached values (quantized needs flash attention).",
    )
    chat_templates: dict[str, str] = Field(
        default_factory=dict,
        description="The prompt format chosen per model file: llama.cpp:NAME for one of "
        "llama.cpp's built-in formats, or a Jinja template; a model not listed uses its own.",
    )
    temperature: float = Field(
        default=_SAMPLING.temperature, ge=0.0, le=5.0, description="0 samples greedily."
    )
    top_k: int = Field(
        default=_SAMPLING.top_k, ge=0, le=1000, description="Keep the k likeliest tokens."
    )
    top_p: float = Field(
        default=_SAMPLING.top_p, gt=0.0, le=1.0, description="Nucleus sampling mass."
    )
    min_p: float = Field(
        default=_SAMPLING.min_p, ge=0.0, le=1.0, description="Drop tokens below p x best."
    )
    repeat_penalty: float = Field(
        default=_SAMPLING.repeat_penalty, ge=0.5, le=2.0, description="1.0 disables it."
    )
    max_tokens: int = Field(
        default=_SAMPLING.max_tokens, ge=1, le=1 << 20, description="Longest reply."
    )
    seed: int | None = Field(
        default=_SAMPLING.seed, ge=0, lt=1 << 32, description="Sampling seed; default: random."
    )
    system_prompt: str = Field(
        default="", max_length=100_000, description="Sent first in every conversation."
    )
    kv_ram_budget_mib: int | None = Field(
        default=None,
        ge=0,
        le=1 << 20,
        description="Host RAM for conversations' keys and values kept aside, in MiB; "
        "default: a tenth of the RAM (256 MiB to 2 GiB); 0 keeps none.",
    )
    kv_disk_budget_mib: int | None = Field(
        default=None,
        ge=0,
        le=1 << 24,
        description="Disk for them in the data folder, in MiB; default: a tenth of the free "
        "space, at most 4 GiB; 0 keeps none on disk.",
    )

    @field_validator(
        "n_ctx",
        "n_threads",
        "n_gpu_layers",
        "n_batch",
        *SAMPLING_FIELDS,
        "kv_ram_budget_mib",
        "kv_disk_budget_mib",
        mode="before",
    )
    @classmethod
    def _a_number(cls, value: object) -> object:
        return _number_only(value)

    def load_config(self, model_path: str) -> LoadConfig:
        return LoadConfig(
            model_path=model_path,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers,
            n_batch=self.n_batch,
            flash_attention=self.flash_attention,
            type_k=self.type_k,
            type_v=self.type_v,
            chat_template=self.chat_templates.get(model_path, ""),
            kv_ram_budget_bytes=_bytes(self.kv_ram_budget_mib),
            kv_disk_budget_bytes=_bytes(self.kv_disk_budget_mib),
        )

    def sampling(self) -> Sampling:
        return Sampling(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )


def clean_overrides(raw: object) -> dict[str, object]:
    """The valid sampling values in `raw`, read back from the database; never raises.

    A conversation keeps only the values it changed. What a damaged or
    hand-edited database holds besides (not a mapping, an unknown name, a
    value out of its field's bounds or of the wrong type) is dropped, so the
    conversation falls back to the defaults there instead of failing to open.
    """
    if not isinstance(raw, Mapping):
        return {}
    clean: dict[str, object] = {}
    for name in SAMPLING_FIELDS:
        if name not in raw:
            continue
        try:
            # Validated as the field itself: the same bounds and refusals as settings.json.
            checked = EngineSettings.model_validate({name: raw[name]})
        except ValidationError:
            continue
        clean[name] = getattr(checked, name)
    return clean


def apply_overrides(defaults: EngineSettings, overrides: Mapping[str, object]) -> EngineSettings:
    """The settings one conversation samples with: `defaults`, with its own values.

    The overrides pass through `clean_overrides` first, so a value that is
    not valid is the default's instead; this never raises.
    """
    clean = clean_overrides(overrides)
    return defaults.model_copy(update=clean) if clean else defaults


Theme = Literal["system", "light", "dark"]


class Appearance(BaseModel):
    """How the window looks; applied at once, no reload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    theme: Theme = Field(
        default="system",
        description="Light or dark colours, or the system's choice (followed as it changes).",
    )
    chat_width: int = Field(
        default=820,
        ge=0,
        le=3840,
        description="The chat column's widest, in pixels, so lines stay readable; 0: no limit.",
    )
    show_thinking: bool = Field(
        default=True, description="Show reasoning models' thinking above their replies."
    )

    @field_validator("chat_width", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        return _number_only(value)


class Settings(BaseModel):
    """Everything kvchat remembers between runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = Field(
        default=SCHEMA_VERSION,
        ge=1,
        le=SCHEMA_VERSION,
        description="Version of this file's layout; a newer one is read for what it shares.",
    )
    model_path: str | None = Field(
        default=None, description="The model loaded last; None means the bundled one."
    )
    model_folders: tuple[str, ...] = Field(
        default=(), description="Folders searched for GGUF files besides the usual places."
    )
    engine: EngineSettings = Field(
        default_factory=EngineSettings, description="How models load and sample."
    )
    appearance: Appearance = Field(
        default_factory=Appearance, description="Colours, the chat's width, thinking shown."
    )
    serve_on_localhost: bool = Field(
        default=False,
        description="Serve the window's model over the OpenAI-compatible API on 127.0.0.1.",
    )
    serve_port: int = Field(
        default=8080, ge=0, le=65535, description="The API server's port (0: any free one)."
    )
