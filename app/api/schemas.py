"""OpenAI's request shapes, as pydantic models, and what of them kvchat can do.

Only requests are modelled: fields kvchat honours are typed and checked;
fields it cannot honour are refused by name (`unsupported`), so a client
never gets an answer that silently ignored what it asked for. Fields that
change nothing about the answer (`user`, `store`, `metadata`, ...) pass.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
TokenCount = Annotated[int, Field(ge=1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # "developer" is OpenAI's newer name for the system role.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    # An assistant reply's thinking, as llama-server and DeepSeek send it
    # (`reasoning_content`) and as Ollama and OpenRouter do (`reasoning`).
    reasoning_content: str | None = None
    reasoning: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def thinking(self) -> str:
        """The reply's thinking, for the model's template; "" for a person's message."""
        if self.role != "assistant":
            return ""
        return self.reasoning_content or self.reasoning or ""


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = "reply"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Sampled(BaseModel):
    """Fields that chat and completions share."""

    model_config = ConfigDict(extra="allow")

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    max_tokens: TokenCount | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: int | None = None
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_words(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def unsupported(self) -> str:
        """The first field asked for that kvchat cannot do, named; "" when none."""
        if self.n not in (None, 1):
            return "n: kvchat writes one choice per request"
        if self.logprobs:
            return "logprobs: kvchat does not return token probabilities"
        if self.logit_bias:
            return "logit_bias: kvchat does not bias tokens"
        extra = self.model_extra or {}
        for name in ("tools", "functions", "audio", "prediction", "top_logprobs"):
            if extra.get(name):
                return f"{name}: not supported by kvchat"
        if extra.get("tool_choice") not in (None, "none"):
            return "tool_choice: kvchat does not call tools"
        if extra.get("modalities") not in (None, ["text"]):
            return "modalities: kvchat writes text only"
        return ""


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: TokenCount | None = None
    response_format: ResponseFormat | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def json_mode(self) -> tuple[Literal["", "object", "schema"], str]:
        """How the reply is constrained: ("", ""), ("object", ""), or ("schema", its JSON)."""
        chosen = self.response_format
        if chosen is None or chosen.type == "text":
            return "", ""
        if chosen.type == "json_object":
            return "object", ""
        if chosen.json_schema is None or not chosen.json_schema.schema_:
            return "object", ""
        return "schema", json.dumps(chosen.json_schema.schema_)

    def unsupported(self) -> str:
        found = super().unsupported()
        if found:
            return found
        for message in self.messages:
            if message.role == "assistant" and (message.model_extra or {}).get("tool_calls"):
                return "tool_calls: kvchat does not call tools"
        return ""


class CompletionRequest(_Sampled):
    prompt: str | list[str]
    suffix: str | None = None
    echo: bool = False

    def prompt_text(self) -> str | None:
        """The one prompt of the request, or None when it holds several."""
        if isinstance(self.prompt, str):
            return self.prompt
        return self.prompt[0] if len(self.prompt) == 1 else None

    def unsupported(self) -> str:
        found = super().unsupported()
        if found:
            return found
        if self.suffix:
            return "suffix: kvchat does not fill in the middle"
        if self.echo:
            return "echo: kvchat does not repeat the prompt"
        if self.prompt_text() is None:
            return "prompt: kvchat takes one prompt per request"
        return ""
