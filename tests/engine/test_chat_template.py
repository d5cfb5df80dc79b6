from pathlib import Path

import pytest

from engine.chat_template import ChatTemplate, TemplateError
from engine.gguf_file import read_gguf
from engine.protocol import ChatMessage

CONVERSATION = [
    ChatMessage("user", "Hi"),
    ChatMessage("assistant", "Hello!"),
    ChatMessage("user", "How are you?"),
]


def test_bundled_models_own_template(model_path: Path) -> None:
    template = ChatTemplate.compile(read_gguf(model_path).chat_template)
    assert template.source == "model"
    text = template.render(CONVERSATION, bos_token="", eos_token="<|im_end|>")
    # SmolLM2's template adds its own system prompt when the conversation has none.
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n" in text
    assert text.endswith("<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n")


def test_model_without_template_gets_chatml() -> None:
    template = ChatTemplate.compile(None)
    assert template.source.startswith("ChatML")
    text = template.render(CONVERSATION[:1], bos_token="", eos_token="")
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_template_cannot_reach_python_internals() -> None:
    template = ChatTemplate.compile("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateError):
        template.render(CONVERSATION, bos_token="", eos_token="")


def test_template_raise_exception_is_reported() -> None:
    template = ChatTemplate.compile("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match="roles must alternate"):
        template.render(CONVERSATION, bos_token="", eos_token="")


def test_invalid_template_fails_to_compile() -> None:
    with pytest.raises(TemplateError, match="not valid Jinja"):
        ChatTemplate.compile("{% for %}")


def test_fallback_says_why() -> None:
    template = ChatTemplate.chatml("ChatML (the model's template is broken)")
    assert template.source == "ChatML (the model's template is broken)"
    assert template.render(CONVERSATION[:1], bos_token="", eos_token="").startswith("<|im_start|>")
