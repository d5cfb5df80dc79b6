from collections.abc import Iterator
from pathlib import Path

import pytest

from kvchat.engine.chat_template import ChatTemplate, TemplateError, TemplateRefusedError
from kvchat.engine.gguf_file import read_gguf
from kvchat.engine.protocol import ChatMessage
from kvchat.engine.template_worker import IsolatedTemplate, TemplateWorker, unsafe_reason

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
        "{{ (((2**4096)**4096)**1024) }}",
        "{{ 'x'.ljust(2**31) }}",
        "{{ 'x'.zfill(2**31) }}",
        "{{ 'x'.center(2**31) }}",
        "{{ ('x' * 1000).replace('x', 'y' * 100000) }}",
        "{{ '{:>100000000}'.format('x') }}",
        "{{ '{:>{}}'.format('x', 10**8) }}",
        "{{ '%100000000s' % 'x' }}",
        "{% set ns = namespace(n=3) %}"
        "{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
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


@pytest.fixture
def worker() -> Iterator[TemplateWorker]:
    worker = TemplateWorker(time_limit_s=1.0, memory_limit_bytes=512 << 20)
    yield worker
    worker.close()


def test_template_that_loops_without_output_is_stopped(worker: TemplateWorker) -> None:
    # Three nested loops over a long string: no call, no output, ages of work.
    text = (
        "{% set s = 'x' * 100000 %}"
        "{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}"
    )
    template = IsolatedTemplate.compile(text, worker)
    with pytest.raises(TemplateError, match=r"ran for more than 1 s and was stopped"):
        template.render(CONVERSATION, bos_token="", eos_token="")


def test_work_inside_c_code_is_stopped_at_the_deadline(worker: TemplateWorker) -> None:
    # One call of str.join that builds 400 MB: no Python line runs during it,
    # so no hook could stop it; the worker's deadline does.
    text = "{{ (['x' * 1000] * 400000)|join }}"
    worker.time_limit_s = 0.05
    template = IsolatedTemplate.compile(text, worker)
    with pytest.raises(TemplateError, match=r"ran for more than 0\.05 s and was stopped"):
        template.render(CONVERSATION, bos_token="", eos_token="")


def test_a_render_that_needs_gigabytes_hits_the_memory_limit(worker: TemplateWorker) -> None:
    text = "{{ ((['x' * 1000000] * 1000)|join)|length }}"
    template = IsolatedTemplate.compile(text, worker)
    with pytest.raises(TemplateError, match=r"MemoryError|more memory than kvchat allows"):
        template.render(CONVERSATION, bos_token="", eos_token="")


def test_a_template_that_hung_is_not_run_again(worker: TemplateWorker) -> None:
    text = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}x"
    worker.time_limit_s = 0.2
    template = IsolatedTemplate.compile(text, worker)
    with pytest.raises(TemplateError, match="was stopped"):
        template.render(CONVERSATION, bos_token="", eos_token="")
    assert unsafe_reason(text) is not None
    # The next turn, and the next load of a model with this template, go
    # straight to the fallback: no second hang.
    for attempt in (
        lambda: template.render(CONVERSATION, bos_token="", eos_token=""),
        lambda: IsolatedTemplate.compile(text, worker),
    ):
        with pytest.raises(TemplateError, match="no longer used"):
            attempt()
    # The worker itself carries on for other templates.
    other = IsolatedTemplate.compile("{{ messages[0]['content'] }}", worker)
    assert other.render(CONVERSATION, bos_token="", eos_token="") == "Hi"


def test_the_worker_renders_as_the_template_does(worker: TemplateWorker, model_path: Path) -> None:
    text = read_gguf(model_path).chat_template
    assert text is not None
    isolated = IsolatedTemplate.compile(text, worker)
    local = ChatTemplate.compile(text)
    for messages in (CONVERSATION, CONVERSATION[:1], [ChatMessage("user", "é\n\u2028 {{x}}")]):
        assert isolated.render(messages, bos_token="<s>", eos_token="</s>") == local.render(
            messages, bos_token="<s>", eos_token="</s>"
        )
    refusing = IsolatedTemplate.compile("{{ raise_exception('no') }}", worker)
    with pytest.raises(TemplateRefusedError, match="no"):
        refusing.render(CONVERSATION, bos_token="", eos_token="")
    with pytest.raises(TemplateError, match="not valid Jinja"):
        IsolatedTemplate.compile("{% for %}", worker)


def test_refusal_is_told_apart_from_failure() -> None:
    template = ChatTemplate.compile(
        "{% if messages[0]['role'] != 'system' %}"
        "{{ raise_exception('Conversation must start with a system message') }}{% endif %}"
    )
    with pytest.raises(TemplateRefusedError, match="refused the conversation: Conversation must"):
        template.render(CONVERSATION, bos_token="", eos_token="")


# Reads what a template may read of each message, thinking under both names.
THINKING_READER = (
    "{% for m in messages %}[{{ m['role'] }}|{{ m['reasoning_content'] }}|{{ m['thinking'] }}"
    "|{{ m['reasoning_content'] is defined }}|{{ m['content'] }}]{% endfor %}"
)


def test_a_replys_thinking_reaches_the_template_under_both_names(worker: TemplateWorker) -> None:
    conversation = [
        ChatMessage("user", "Hi", thinking="not a reply's"),
        ChatMessage("assistant", "Hello!", thinking="Greet back."),
        ChatMessage("assistant", "And more."),
    ]
    wanted = (
        "[user|||False|Hi][assistant|Greet back.|Greet back.|True|Hello!]"
        "[assistant|||False|And more.]"
    )
    for template in (
        ChatTemplate.compile(THINKING_READER),
        IsolatedTemplate.compile(THINKING_READER, worker),  # the model's template, as run
    ):
        assert template.render(conversation, bos_token="", eos_token="") == wanted
    chatml = ChatTemplate.chatml("ChatML").render(conversation, bos_token="", eos_token="")
    assert "Hello!" in chatml and "Greet back." not in chatml
