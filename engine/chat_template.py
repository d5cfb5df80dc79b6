"""Rendering a conversation with the model's own chat template.

Templates come from the model file, which may come from anywhere, so they
run in Jinja's immutable sandbox: no attribute of Python's internals, no
mutation of the objects passed in. Reaching for an internal is an error
here, not the sandbox's silent empty value, so a hostile template fails
loudly. The sandbox does not bound work, so a render here also has a cap
on its output, and the operators, methods and filters that build large
values (`'x' * 10**9`, `2**4096**4096`, `'x'.ljust(2**31)`) refuse before
they run. What no cap can see (a long loop, a large join in C) is bounded
by `template_worker`, which renders a model's template in a process that
has a memory limit and is killed at its deadline. A model without a
template gets ChatML, the format most instruction-tuned models on the hub
were trained with.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, Protocol

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kvchat.engine.protocol import ChatMessage

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Far beyond any prompt a context holds, far below what would exhaust memory.
MAX_RENDERED_CHARS = 1 << 24
# The longest string or list an operator or method may build, and the
# largest integer (in bits) arithmetic may make.
MAX_BUILT_ITEMS = 1 << 20
MAX_INTEGER_BITS = 1 << 16
# Filters whose integer arguments size what they build (a width, a padding).
_SIZED_FILTERS = ("center", "indent", "format", "wordwrap", "truncate")


class Error(Exception):
    """Base class of this module's errors."""


class TemplateError(Error):
    """The model's template could not be compiled or rendered."""


class TemplateRefusedError(TemplateError):
    """The template refused the conversation on purpose (its `raise_exception`)."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateRefusedError(f"the model's chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _too_big(value: object, count: object) -> bool:
    return (
        isinstance(value, str | list | tuple)
        and isinstance(count, int)
        and len(value) * count > MAX_BUILT_ITEMS
    )


def _integer_bits(value: object) -> int:
    return abs(value).bit_length() if isinstance(value, int) and not isinstance(value, bool) else 0


def _power_too_big(base: object, exponent: object) -> bool:
    if not isinstance(exponent, int) or exponent <= 1 or base in (0, 1, -1):
        return False
    return _integer_bits(base) * exponent > MAX_INTEGER_BITS


_FORMAT_WIDTH = re.compile(r"\d+")


def _format_too_wide(text: str) -> bool:
    """A `str.format` string whose widths or precisions exceed what a prompt needs."""
    try:
        fields = [spec for _, name, spec, _ in string.Formatter().parse(text) if name is not None]
    except ValueError:
        return False  # str.format will refuse it itself
    return any(
        int(digits) > MAX_BUILT_ITEMS
        for spec in fields
        for digits in _FORMAT_WIDTH.findall(spec or "")
    )


def _method_too_big(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Why a call of a str method would build a huge value, or None."""
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return None
    name = getattr(method, "__name__", "")
    arguments = (*args, *kwargs.values())
    if any(_integer_bits(a) > 20 for a in arguments):  # a width past ~1M characters
        return f"the template passes a size of more than {MAX_BUILT_ITEMS} to str.{name}"
    if (
        name == "replace"
        and len(args) >= 2
        and isinstance(args[0], str)
        and isinstance(args[1], str)
    ):
        count = owner.count(args[0]) if args[0] else len(owner) + 1
        if len(owner) + count * len(args[1]) > MAX_BUILT_ITEMS:
            return f"the template's str.replace would build more than {MAX_BUILT_ITEMS} characters"
    if name in ("format", "format_map") and _format_too_wide(owner):
        return "the template formats a value wider than kvchat allows"
    return None


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, strict about internals and bounded in what it builds."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*" and (_too_big(left, right) or _too_big(right, left)):
            raise SecurityError(f"the template builds a value of more than {MAX_BUILT_ITEMS} items")
        if operator in ("*", "+") and _integer_bits(left) + _integer_bits(right) > MAX_INTEGER_BITS:
            raise SecurityError(f"the template makes a number of more than {MAX_INTEGER_BITS} bits")
        if (
            operator == "+"
            and isinstance(left, str | list | tuple)
            and isinstance(right, str | list | tuple)
            and len(left) + len(right) > MAX_RENDERED_CHARS
        ):
            raise SecurityError(
                f"the template builds a value of more than {MAX_RENDERED_CHARS} items"
            )
        if operator == "**" and _power_too_big(left, right):
            raise SecurityError(f"the template raises a number to the power {right}")
        if operator == "%" and isinstance(left, str):
            arguments = right if isinstance(right, tuple) else (right,)
            if any(isinstance(a, int) and abs(a) > MAX_BUILT_ITEMS for a in arguments) or any(
                int(digits) > MAX_BUILT_ITEMS for digits in _FORMAT_WIDTH.findall(left)
            ):
                raise SecurityError("the template formats a value wider than kvchat allows")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        owner: str = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            reason = _method_too_big(value, args, kwargs)
            if reason is None and _format_too_wide(owner):
                reason = "the template formats a value wider than kvchat allows"
            if reason is not None:
                raise SecurityError(reason)
            return wrapped(*args, **kwargs)

        return bounded

    def call(
        __self,  # noqa: N805 - Jinja's own signature: `self` may be a keyword argument
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        reason = _method_too_big(__obj, args, kwargs)
        if reason is not None:
            raise SecurityError(reason)
        return super().call(__context, __obj, *args, **kwargs)


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        for argument in (*args[1:], *kwargs.values()):
            if isinstance(argument, int) and abs(argument) > MAX_BUILT_ITEMS:
                raise SecurityError(f"the template passes {argument} to the {name!r} filter")
        return function(*args, **kwargs)

    # Jinja passes the context or environment to filters marked for it.
    bounded.__dict__.update(function.__dict__)
    return bounded


def _environment() -> _Sandbox:
    environment = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
        undefined=jinja2.ChainableUndefined,
    )
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    # Filler text no chat template uses, with a size argument to abuse.
    environment.globals.pop("lipsum", None)
    for name in _SIZED_FILTERS:
        environment.filters[name] = _bounded_filter(name, environment.filters[name])
    return environment


def template_message(message: ChatMessage) -> dict[str, str]:
    """A message as chat templates read it.

    An assistant reply's thinking goes under both names templates look for:
    `reasoning_content` (Qwen3's, DeepSeek's, llama-server's) and `thinking`
    (gpt-oss's). Whether earlier thinking reaches the model is then the
    template's own choice; most keep only the latest turn's. A message
    without thinking has neither key, so that templates which test for the
    key (`is defined`) render it as they always did.
    """
    fields = {"role": message.role, "content": message.content}
    if message.thinking and message.role == "assistant":
        fields["reasoning_content"] = fields["thinking"] = message.thinking
    return fields


class PromptTemplate(Protocol):
    """What renders a conversation into a prompt: the model's own template in
    a worker process, one of llama.cpp's built-in formats, or ChatML here."""

    @property
    def source(self) -> str:
        """Where the template came from, in words ("model", "ChatML ...")."""
        ...

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        bos_token: str,
        eos_token: str,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text.

        Raises:
            TemplateRefusedError: the template refused the conversation itself.
            TemplateError: the template failed.
        """
        ...


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
        environment = _environment()
        source = "model" if text else "ChatML (the model has no template)"
        try:
            return cls(source, environment.from_string(text or CHATML_TEMPLATE))
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the model's chat template is not valid Jinja: {exc}") from exc
        except (RecursionError, MemoryError) as exc:
            raise TemplateError(f"the model's chat template is too deeply nested: {exc}") from exc

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
            TemplateRefusedError: the template refused the conversation itself.
            TemplateError: the template failed: an error, a reach for Python's
                internals, or a render too long or too large.
        """
        parts: list[str] = []
        size = 0
        try:
            for part in self._template.generate(
                messages=[template_message(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
            ):
                size += len(part)
                if size > MAX_RENDERED_CHARS:
                    raise TemplateError(
                        f"the model's chat template made a prompt of more than "
                        f"{MAX_RENDERED_CHARS} characters and was stopped"
                    )
                parts.append(part)
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the model's chat template failed: {exc}") from exc
        except Exception as exc:
            # Templates are code: they divide by zero, add strings to numbers,
            # recurse without end, run out of memory, and all of it is theirs.
            raise TemplateError(
                f"the model's chat template failed: {type(exc).__name__}: {exc}"
            ) from exc
        return "".join(parts)
