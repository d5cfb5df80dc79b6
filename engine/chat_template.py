"""Rendering a conversation with the model's own chat template.

Templates come from the model file, which may come from anywhere, so they
run in Jinja's immutable sandbox: no attribute of Python's internals, no
mutation of the objects passed in. A model without a template gets ChatML,
the format most instruction-tuned models on the hub were trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.protocol import ChatMessage

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Error(Exception):
    """Base class of this module's errors."""


class TemplateError(Error):
    """The model's template could not be compiled or rendered."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(f"the model's chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and where it came from ("model" or "ChatML")."""

    source: str
    _template: jinja2.Template

    @classmethod
    def chatml(cls, source: str) -> ChatTemplate:
        """The ChatML fallback, saying why it is used."""
        template = cls.compile(None)
        return cls(source, template._template)

    @classmethod
    def compile(cls, text: str | None) -> ChatTemplate:
        """Compiles the model's template; falls back to ChatML when it has none.

        Raises:
            TemplateError: the template is not valid Jinja.
        """
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols"],
            undefined=jinja2.ChainableUndefined,
        )
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        source = "model" if text else "ChatML (the model has no template)"
        try:
            return cls(source, environment.from_string(text or CHATML_TEMPLATE))
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the model's chat template is not valid Jinja: {exc}") from exc

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        bos_token: str,
        eos_token: str,
        add_generation_prompt: bool = True,
    ) -> str:
        """Renders the conversation into the prompt text the model expects.

        Raises:
            TemplateError: the template failed or refused the conversation.
        """
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
            )
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the model's chat template failed: {exc}") from exc
