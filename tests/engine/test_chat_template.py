import sys
from pathlib import Path

import pytest

from kvchat.engine.chat_template import ChatTemplate, TemplateError, TemplateRefusedError
from kvchat.engine.gguf_file import read_gguf
from kvchat.engine.protocol import ChatMessage

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


# Each attack tries to create MARKER (a file in the test's folder), by a
# shell command or by opening it; the test proves the file never appears.
ATTACKS = {
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "popen via subclasses": (
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'Popen' %}{{ c(['touch', MARKER]) }}{% endif %}{% endfor %}"
    ),
    "cycler globals": "{{ cycler.__init__.__globals__.os.popen('touch ' + MARKER).read() }}",
    "joiner globals": "{{ joiner.__init__.__globals__.os.system('touch ' + MARKER) }}",
    "namespace globals": "{{ namespace.__init__.__globals__.os.system('touch ' + MARKER) }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].system('touch ' + MARKER) }}",
    "our own helper's globals": (
        "{{ raise_exception.__globals__['sys'].modules['os'].system('touch ' + MARKER) }}"
    ),
    "template reference": (
        "{{ self._TemplateReference__context.cycler.__init__.__globals__"
        ".os.system('touch ' + MARKER) }}"
    ),
    "attr filter": (
        "{{ (cycler|attr('__init__')|attr('__globals__'))['os'].system('touch ' + MARKER) }}"
    ),
    "format string": "{{ '{0.__init__.__globals__[os]}'.format(cycler) }}",
    "open": "{{ open(MARKER, 'w').write('x') }}",
    "import": "{{ __import__('os').system('touch ' + MARKER) }}",
    "builtins via messages": (
        "{{ messages.__class__.__init__.__globals__['__builtins__']['open'](MARKER, 'w') }}"
    ),
    "mutating the conversation": "{{ messages.append({'role': 'user', 'content': MARKER}) }}",
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_template_reaching_for_python_fails_and_runs_nothing(attack: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # The marker's path goes in as a literal, as a hostile file would carry it.
    text = "{% set MARKER = " + repr(str(marker)) + " %}" + attack
    with pytest.raises(TemplateError, match="the model's chat template") as caught:
        ChatTemplate.compile(text).render(CONVERSATION, bos_token="", eos_token="")
    assert not isinstance(caught.value, TemplateRefusedError)
    assert not marker.exists()


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 10**9 }}",
        "{{ [0] * 10**9 }}",
        "{{ 10 ** 100000000 }}",
        "{{ '%*s' % (10**9, 'x') }}",
        "{{ 'x'|center(10**9) }}",
        "{{ '%*s'|format(10**9, 'x') }}",
        "{{ range(10**10)|list }}",
        # Output of 10 GB, in pieces each small enough to pass.
        "{% set s = 'x' * 100000 %}{% for i in range(100000) %}{{ s }}{% endfor %}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{{ 1 / 0 }}",
        "{{ 'a' + 1 }}",
    ],
)
def test_template_abusing_resources_fails_with_words(template: str) -> None:
    with pytest.raises(TemplateError, match="the model's chat template"):
        ChatTemplate.compile(template).render(CONVERSATION, bos_token="", eos_token="")


def test_template_that_loops_without_output_is_stopped() -> None:
    # Three nested loops over a long string: no call, no output, ages of work.
    template = ChatTemplate.compile(
        "{% set s = 'x' * 100000 %}"
        "{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}"
    )
    with pytest.raises(TemplateError, match=r"ran for more than 0\.2 s and was stopped"):
        template.render(CONVERSATION, bos_token="", eos_token="", time_limit_s=0.2)


def test_deadline_leaves_no_trace_function_behind() -> None:
    before = sys.gettrace()
    ChatTemplate.compile(None).render(CONVERSATION, bos_token="", eos_token="")
    assert sys.gettrace() is before


def test_refusal_is_told_apart_from_failure() -> None:
    template = ChatTemplate.compile(
        "{% if messages[0]['role'] != 'system' %}"
        "{{ raise_exception('Conversation must start with a system message') }}{% endif %}"
    )
    with pytest.raises(TemplateRefusedError, match="refused the conversation: Conversation must"):
        template.render(CONVERSATION, bos_token="", eos_token="")
