"""Rendering a conversation with the model's own chat template.

Templates come from the model file, which may come from anywhere, so they
run in Jinja's immutable sandbox: no attribute of Python's internals, no
mutation of the objects passed in. Reaching for an internal is an error
here, not the sandbox's silent empty value, so a hostile template fails
loudly. The sandbox does not bound work, so a render here also has a time
limit, a cap on its output, and caps on the operators that build large
values (`'x' * 10**9`). A model without a template gets ChatML, the format
most instruction-tuned models on the hub were trained with.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any, NoReturn

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
# The longest string or list an operator may build, and the largest power.
MAX_BUILT_ITEMS = 1 << 20
MAX_EXPONENT = 4096
# Real templates render in milliseconds; this only stops a runaway one.
RENDER_TIME_LIMIT_S = 5.0
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


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, strict about internals and bounded in what it builds."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*" and (_too_big(left, right) or _too_big(right, left)):
            raise SecurityError(f"the template builds a value of more than {MAX_BUILT_ITEMS} items")
        if (
            operator == "**"
            and isinstance(right, int)
            and right > MAX_EXPONENT
            and left not in (0, 1, -1)
        ):
            raise SecurityError(f"the template raises a number to the power {right}")
        if operator == "%" and isinstance(left, str):
            arguments = right if isinstance(right, tuple) else (right,)
            if any(isinstance(a, int) and abs(a) > MAX_BUILT_ITEMS for a in arguments):
                raise SecurityError("the template formats a value wider than kvchat allows")
        return super().call_binop(context, operator, left, right)


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


class _Deadline:
    """Stops a render that runs past its time, from a trace of the template's own lines.

    The sandbox cannot bound loops (three nested loops over a long string
    run for ages without calling anything), and a thread cannot be stopped
    from outside; a trace function in the rendering thread can raise.
    Only frames of compiled template code are traced, every line of them.
    """

    _CHECK_EVERY = 256

    def __init__(self, seconds: float) -> None:
        self._ends_at = time.monotonic() + seconds
        self._seconds = seconds
        self._lines = 0

    def _on_line(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "line":
            self._lines += 1
            if self._lines % self._CHECK_EVERY == 0 and time.monotonic() > self._ends_at:
                raise TemplateError(
                    f"the model's chat template ran for more than {self._seconds:g} s "
                    "and was stopped"
                )
        return self._on_line

    def _on_call(self, frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code.co_filename == "<template>":
            return self._on_line
        return None

    def __enter__(self) -> _Deadline:
        self._previous = sys.gettrace()
        sys.settrace(self._on_call)
        return self

    def __exit__(self, *_exc: object) -> None:
        sys.settrace(self._previous)


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
        time_limit_s: float = RENDER_TIME_LIMIT_S,
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
            with _Deadline(time_limit_s):
                for part in self._template.generate(
                    messages=[{"role": m.role, "content": m.content} for m in messages],
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
