"""llama.cpp's own chat templates, for a model whose file carries none.

A GGUF without `tokenizer.chat_template` used to get ChatML, which a model
trained on another format does not know: Gemma 3 printed `<|im_end|>` as
text and invented turns until its token limit. llama.cpp ships the formats
of the common model families in C++; the right one is chosen from the turn
markers the vocabulary holds as control tokens (what the model was trained
with), then from the architecture, and ChatML only when nothing says
otherwise. The host process alone imports this module (it calls llama.cpp).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import llama_cpp

from kvchat.engine.chat_template import TemplateError
from kvchat.engine.protocol import ChatMessage

# Turn markers, as control tokens of the vocabulary, and the format they belong to.
# The first whose markers are all there wins.
_BY_MARKERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("<|im_start|>", "<|im_end|>"), "chatml"),
    (("<|start_header_id|>", "<|eot_id|>"), "llama3"),
    (("<|header_start|>", "<|eot|>"), "llama4"),
    (("<start_of_turn>", "<end_of_turn>"), "gemma"),
    (("<|im_sep|>",), "phi4"),
    (("<|user|>", "<|assistant|>", "<|end|>"), "phi3"),
    (("<|START_OF_TURN_TOKEN|>",), "command-r"),
    (("[SYSTEM_PROMPT]", "[INST]"), "mistral-v7"),
    (("[INST]", "[/INST]"), "mistral-v3"),
)
# Architectures (general.architecture) whose family has one format.
_BY_ARCHITECTURE = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "phi3": "phi3",
    "command-r": "command-r",
    "cohere2": "command-r",
    "deepseek2": "deepseek2",
    "granite": "granite",
    "exaone": "exaone3",
    "chatglm": "chatglm4",
}
FALLBACK = "chatml"


def choose_builtin(architecture: str, control_texts: Iterable[str]) -> str:
    """The name of llama.cpp's built-in template for a model without its own."""
    texts = set(control_texts)
    for markers, name in _BY_MARKERS:
        if all(marker in texts for marker in markers):
            return name
    return _BY_ARCHITECTURE.get(architecture, FALLBACK)


@dataclass(frozen=True)
class BuiltinTemplate:
    """One of llama.cpp's built-in formats; it renders as a ChatTemplate does."""

    name: str
    source: str

    @classmethod
    def for_model(cls, architecture: str, control_texts: Iterable[str]) -> BuiltinTemplate:
        name = choose_builtin(architecture, control_texts)
        return cls(name, f"llama.cpp's {name} (the model has no template)")

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        bos_token: str,
        eos_token: str,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text, in llama.cpp's own rendering of the format.

        Raises:
            TemplateError: llama.cpp does not know the format (a newer name).
        """
        del bos_token, eos_token  # llama.cpp's formats add their own markers
        # C strings end at NUL: a NUL typed in a message reaches the model as U+FFFD.
        encoded = [
            (m.role.encode(), m.content.replace("\x00", "\ufffd").encode("utf-8", "replace"))
            for m in messages
        ]
        chat = (llama_cpp.llama_chat_message * len(encoded))()
        for slot, (role, content) in zip(chat, encoded, strict=True):
            slot.role = role
            slot.content = content
        size = max(1024, 2 * sum(len(c) + 64 for _, c in encoded))
        for _ in range(2):
            buffer = ctypes.create_string_buffer(size)
            needed = llama_cpp.llama_chat_apply_template(
                self.name.encode(), chat, len(encoded), add_generation_prompt, buffer, size
            )
            if needed < 0:
                raise TemplateError(f"llama.cpp has no built-in chat template named {self.name}")
            if needed <= size:
                return buffer.raw[:needed].decode("utf-8", errors="replace")
            size = needed + 1
        raise TemplateError(f"llama.cpp's {self.name} template did not fit its buffer")
