"""engine/overflow.py, the policy for a conversation that outgrows the context,
and the engines that apply it: the host's runner with exact counts, and a
server elsewhere with an estimate (engine.remote)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvchat.engine import client
from kvchat.engine.overflow import SLACK_FRACTION, first_in_view, in_view, turn_starts
from kvchat.engine.protocol import (
    Chat,
    ChatFailed,
    ChatMessage,
    Event,
    HostExited,
    LoadConfig,
    LoadFailed,
    LoadModel,
    ModelLoaded,
    PromptEvaluated,
    Sampling,
    TurnFinished,
)
from kvchat.engine.remote import FIRST_TOKENS_PER_BYTE, RATIO_MARGIN, PromptSize, RemoteHost
from kvchat.engine.remote_address import model_url
from tests.remote_events import events_until

# The policy, with counts made up.


def _exchanges(count: int) -> list[ChatMessage]:
    messages = []
    for index in range(count):
        messages += [ChatMessage("user", f"q{index}"), ChatMessage("assistant", f"a{index}")]
    return messages


class Counts:
    """`tokens_from` over fixed costs: the system prompt's and each message's."""

    def __init__(self, fixed: int, costs: Sequence[int]) -> None:
        self.fixed = fixed
        self.costs = list(costs)
        self.asked: list[int] = []

    def __call__(self, index: int) -> int:
        self.asked.append(index)
        return self.fixed + sum(self.costs[index:])


def test_turns_start_at_the_persons_messages_and_the_system_prompt_is_not_counted() -> None:
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "a"),
        ChatMessage("assistant", "b"),
        ChatMessage("user", "c"),
        ChatMessage("user", "d"),
        ChatMessage("assistant", "e"),
    ]
    assert turn_starts(messages) == [0, 2, 3]
    # The first message starts a turn whoever wrote it.
    assert turn_starts([ChatMessage("assistant", "Hello!"), ChatMessage("user", "Hi")]) == [0, 1]
    assert turn_starts([ChatMessage("system", "Be brief.")]) == []


def test_the_view_keeps_the_system_prompt_wherever_it_is() -> None:
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "a"),
        ChatMessage("assistant", "b"),
        ChatMessage("system", "Now in French."),
        ChatMessage("user", "c"),
        ChatMessage("assistant", "d"),
    ]
    assert [m.content for m in in_view(messages, 2)] == ["Be brief.", "Now in French.", "c", "d"]
    assert in_view(messages, 0) == messages
    assert [m.content for m in in_view(messages, 9)] == ["Be brief.", "Now in French."]


def test_everything_that_fits_stays_and_costs_one_count() -> None:
    counts = Counts(50, [100] * 10)
    messages = _exchanges(5)
    assert first_in_view(counts, turn_starts(messages), n_ctx=2048, reply_room=512) == 0
    assert counts.asked == [0]
    # Exactly full still fits.
    assert first_in_view(Counts(36, [100] * 10), [0, 2, 4, 6, 8], 1548, 512) == 0


def test_whole_turns_leave_with_slack_beyond_the_need() -> None:
    counts = Counts(50, [100] * 20)  # 2050 tokens in all
    starts = turn_starts(_exchanges(10))
    n_ctx, reply_room = 2048, 512
    first = first_in_view(counts, starts, n_ctx, reply_room)
    # Three turns must leave (from message 6 on: 1450 <= 1536), and the
    # slack of an eighth of the context (256) takes one more: 1250 <= 1280.
    need = next(s for s in starts if counts.fixed + sum(counts.costs[s:]) <= n_ctx - reply_room)
    assert need == 6
    assert first == 8
    assert counts.fixed + sum(counts.costs[first:]) <= n_ctx - reply_room - n_ctx // SLACK_FRACTION


def test_without_room_for_the_slack_the_view_starts_where_it_must() -> None:
    # The last turn alone does not leave the slack (1450 > 1500 - 212), so
    # the view keeps all that fits: from message 2 on, 1490 <= 1500.
    costs = [400, 400, 20, 20, 600, 800]
    assert first_in_view(Counts(50, costs), [0, 2, 4], n_ctx=1700, reply_room=200) == 2
    # With less room, only the last turn fits (1450 <= 1450).
    assert first_in_view(Counts(50, costs), [0, 2, 4], n_ctx=1700, reply_room=250) == 4


def test_the_last_turn_alone_is_seen_even_when_it_leaves_too_little_room() -> None:
    counts = Counts(50, [100, 100, 3000])
    assert first_in_view(counts, [0, 2], n_ctx=2048, reply_room=512) == 2
    assert first_in_view(Counts(50, [5000]), [0], n_ctx=2048, reply_room=512) == 0


def test_a_reply_being_continued_stays_with_the_message_it_answers() -> None:
    messages = [*_exchanges(3), ChatMessage("user", "q3"), ChatMessage("assistant", "a long r")]
    starts = turn_starts(messages)
    assert starts[-1] == 6  # the person's message, not the reply after it
    counts = Counts(10, [100] * 7 + [2000])
    assert first_in_view(counts, starts, n_ctx=2048, reply_room=256) == 6


def test_no_messages_but_the_system_prompt_view_from_the_start() -> None:
    assert first_in_view(Counts(5000, []), [], n_ctx=2048, reply_room=512) == 0


def _reference(counts: Callable[[int], int], starts: list[int], n_ctx: int, room: int) -> int:
    """The policy by a scan of every turn, to hold the search to."""
    if counts(starts[0]) + room <= n_ctx:
        return starts[0]
    for target in (n_ctx - room - n_ctx // SLACK_FRACTION, n_ctx - room):
        for start in starts[1:]:
            if counts(start) <= target:
                return start
    return starts[-1]


@given(
    turns=st.lists(st.lists(st.integers(0, 400), min_size=1, max_size=4), min_size=1, max_size=100),
    fixed=st.integers(0, 300),
    n_ctx=st.integers(64, 8192),
    room=st.integers(0, 2048),
)
def test_the_search_finds_what_a_scan_finds_in_few_counts(
    turns: list[list[int]], fixed: int, n_ctx: int, room: int
) -> None:
    costs = [cost for turn in turns for cost in turn]
    starts = [sum(len(turn) for turn in turns[:index]) for index in range(len(turns))]
    counts = Counts(fixed, costs)
    chosen = first_in_view(counts, starts, n_ctx, room)
    assert chosen == _reference(Counts(fixed, costs), starts, n_ctx, room)
    # One count for the whole, then two binary searches that share what they counted.
    assert len(counts.asked) == len(set(counts.asked))
    assert len(counts.asked) <= 1 + 2 * math.ceil(math.log2(len(starts)))


def test_a_long_conversation_is_counted_a_logarithmic_number_of_times() -> None:
    counts = Counts(50, [10] * 20000)  # 10000 turns
    starts = list(range(0, 20000, 2))
    first = first_in_view(counts, starts, n_ctx=4096, reply_room=1024)
    assert counts.fixed + sum(counts.costs[first:]) <= 4096 - 1024 - 512
    assert counts.fixed + sum(counts.costs[first - 2 :]) > 4096 - 1024 - 512
    assert len(counts.asked) <= 1 + 2 * 14


# The runner, through the real engine host, with the model's own counts.

N_CTX = 512
REPLY_ROOM = 64
SYSTEM = ChatMessage("system", "You are a keeper of lighthouses. Answer in one short sentence.")
TIMEOUT_S = 120.0
GREEDY = Sampling(temperature=0.0, max_tokens=16)


def _lighthouses(count: int) -> list[ChatMessage]:
    """A conversation of `count` exchanges, about 60 tokens each."""
    messages = []
    for index in range(count):
        messages += [
            ChatMessage(
                "user",
                f"Tell me about lighthouse number {index} on the northern coast: "
                "its keeper, its lamp and the storms it has seen.",
            ),
            ChatMessage(
                "assistant",
                f"Lighthouse {index} stands on a black rock; its keeper lights the "
                "lamp each night and writes the weather in a book.",
            ),
        ]
    return messages


@pytest.fixture
def host(data_dir: Path) -> Iterator[client.HostProcess]:
    process = client.HostProcess(data_dir / "logs" / "engine.log")
    yield process
    process.close()


def _until(host: client.HostProcess, *kinds: type) -> list[Event]:
    events = []
    while True:
        event = host.receive(TIMEOUT_S)
        assert event is not None, "the host sent nothing in time"
        assert not isinstance(event, HostExited), event
        events.append(event)
        if isinstance(event, kinds):
            return events


def _loaded(host: client.HostProcess, model_path: Path) -> None:
    host.send(LoadModel(LoadConfig(str(model_path), n_ctx=N_CTX)))
    loaded = _until(host, ModelLoaded, LoadFailed)[-1]
    assert isinstance(loaded, ModelLoaded) and loaded.info.n_ctx == N_CTX


def _turn(host: client.HostProcess, chat: Chat) -> tuple[PromptEvaluated, TurnFinished]:
    host.send(chat)
    events = _until(host, TurnFinished, ChatFailed)
    finished = events[-1]
    assert isinstance(finished, TurnFinished), finished
    (prompt,) = [e for e in events if isinstance(e, PromptEvaluated)]
    return prompt, finished


def _refusal(host: client.HostProcess, chat: Chat) -> ChatFailed:
    host.send(chat)
    failed = _until(host, TurnFinished, ChatFailed)[-1]
    assert isinstance(failed, ChatFailed), failed
    return failed


REFUSAL = (
    r"^the conversation is (\d+) tokens long, and the context holds 512: "
    r"start a new conversation or raise the context size$"
)


def test_the_oldest_turns_leave_the_view_and_the_next_turn_reuses_the_cache(
    host: client.HostProcess, model_path: Path
) -> None:
    _loaded(host, model_path)
    # What the system prompt costs, from a conversation that fits.
    short = (SYSTEM, ChatMessage("user", "Hello."))
    alone, _ = _turn(host, Chat(1, short, GREEDY, reply_room=REPLY_ROOM, drop_oldest=True))
    assert alone.view_start == 0

    turns = [*_lighthouses(10), ChatMessage("user", "Which of them is the oldest?")]
    conversation = (SYSTEM, *turns)
    refused = _refusal(host, Chat(2, conversation, GREEDY, reply_room=REPLY_ROOM))
    assert refused.by_request
    match = re.match(REFUSAL, refused.message)
    assert match is not None, refused.message
    assert int(match[1]) > N_CTX  # the whole conversation, counted

    chat = Chat(3, conversation, GREEDY, reply_room=REPLY_ROOM, drop_oldest=True)
    prompt, finished = _turn(host, chat)
    start = prompt.view_start
    assert start > 0 and turns[start].role == "user"
    assert finished.stats.view_start == start
    assert prompt.prompt_tokens + REPLY_ROOM <= N_CTX - N_CTX // SLACK_FRACTION
    assert prompt.system_tokens == alone.system_tokens

    # The next turn, sent from where the view starts (as the window sends
    # it), fits the slack: the view stays, and the first turn's prompt is
    # found in the cache beyond its system prompt and earlier turns.
    following = (
        SYSTEM,
        *turns[start:],
        ChatMessage("assistant", finished.text),
        ChatMessage("user", "And the youngest?"),
    )
    again = Chat(4, following, GREEDY, reply_room=REPLY_ROOM, drop_oldest=True)
    second, _ = _turn(host, again)
    assert second.view_start == 0
    assert second.reused_tokens > prompt.system_tokens + prompt.history_tokens

    # The view started no further on than the slack asks: one turn more would not leave it.
    wider = Chat(5, (SYSTEM, *turns[start - 2 :]), GREEDY, reply_room=REPLY_ROOM)
    earlier, _ = _turn(host, wider)
    assert earlier.prompt_tokens + REPLY_ROOM > N_CTX - N_CTX // SLACK_FRACTION


def test_a_continued_reply_keeps_its_question_and_a_last_turn_too_long_is_refused(
    host: client.HostProcess, model_path: Path
) -> None:
    _loaded(host, model_path)
    question = ChatMessage("user", "Describe the lamp of the oldest one.")
    # About 400 tokens: with the question it answers, more than the slack
    # leaves (384), and with one exchange more, more than the room (448).
    cut = ChatMessage("assistant", "The lamp of the oldest lighthouse is a great brass one, " * 32)
    turns = [*_lighthouses(6), question, cut]
    chat = Chat(
        1, (SYSTEM, *turns), GREEDY, continue_last=True, reply_room=REPLY_ROOM, drop_oldest=True
    )
    prompt, finished = _turn(host, chat)
    # The question stays with the reply being continued, and nothing before it.
    assert prompt.view_start == finished.stats.view_start == len(turns) - 2
    assert prompt.prompt_tokens > N_CTX - REPLY_ROOM - N_CTX // SLACK_FRACTION
    assert prompt.prompt_tokens + REPLY_ROOM <= N_CTX
    assert finished.stats.generated_tokens > 0

    longest = ChatMessage("user", "Tell me everything about the lighthouses. " * 80)
    messages = (SYSTEM, *_lighthouses(2), longest)
    refused = _refusal(host, Chat(2, messages, GREEDY, reply_room=REPLY_ROOM, drop_oldest=True))
    assert refused.by_request
    match = re.match(REFUSAL, refused.message)
    assert match is not None, refused.message
    assert int(match[1]) > N_CTX  # the last turn alone, counted


# A server elsewhere: the estimate, and what RemoteHost sends.


def _sent(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def test_a_prompt_is_estimated_at_a_token_a_byte_until_the_server_counts_one() -> None:
    size = PromptSize()
    assert size.tokens_per_byte == FIRST_TOKENS_PER_BYTE == 1.0
    short = _sent([ChatMessage("user", "Hi")])
    size.learn(short, 3)  # too short to say: the template's own text dominates
    assert size.tokens_per_byte == 1.0
    long = _sent([ChatMessage("user", "word " * 200)])
    size.learn(long, 250)
    assert size.tokens_per_byte == pytest.approx(250 / PromptSize.size_bytes(long) * RATIO_MARGIN)
    # Never above the first ratio, whatever a server says.
    size.learn(long, 10**6)
    assert size.tokens_per_byte == 1.0
    # Thinking counts when it is sent.
    thinking = [{"role": "assistant", "content": "ab", "reasoning_content": "cdef"}]
    plain = [{"role": "assistant", "content": "ab"}]
    assert PromptSize.size_bytes(thinking) == PromptSize.size_bytes(plain) + 4


class FakeServer:
    """An OpenAI-compatible server of one model, through httpx.MockTransport:
    it keeps the messages of each chat request and reports their prompt as
    `tokens_per_byte` times their text's bytes."""

    def __init__(self, context_length: int | None, tokens_per_byte: float) -> None:
        self.context_length = context_length
        self.tokens_per_byte = tokens_per_byte
        self.requests: list[list[dict[str, str]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            model: dict[str, Any] = {"id": "m", "object": "model"}
            if self.context_length:
                model["context_length"] = self.context_length
            return httpx.Response(200, json={"object": "list", "data": [model]})
        if request.url.path != "/v1/chat/completions":
            return httpx.Response(404, json={"detail": "Not Found"})
        messages = json.loads(request.content)["messages"]
        self.requests.append(messages)
        text = sum(len(m["content"].encode()) for m in messages)
        usage = {"prompt_tokens": math.ceil(text * self.tokens_per_byte), "completion_tokens": 1}
        choice = {"index": 0, "delta": {"content": "Yes."}, "finish_reason": "stop"}
        events = [{"choices": [choice]}, {"choices": [], "usage": usage}]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Callable[[FakeServer], RemoteHost]]:
    hosts: list[RemoteHost] = []

    def connect(server: FakeServer) -> RemoteHost:
        host = RemoteHost(tmp_path / "engine.log")
        # Before any command, while no thread uses it: the server is the fake one.
        host._client.close()
        host._client = httpx.Client(transport=httpx.MockTransport(server))
        hosts.append(host)
        host.send(LoadModel(LoadConfig(model_url("http://gpu-box:8080", "m"))))
        assert isinstance(events_until(host, ModelLoaded, TIMEOUT_S)[-1], ModelLoaded)
        return host

    yield connect
    for host in hosts:
        host.close()


def _remote_turn(host: RemoteHost, chat: Chat) -> tuple[PromptEvaluated, TurnFinished]:
    host.send(chat)
    events = events_until(host, TurnFinished, TIMEOUT_S)
    finished = events[-1]
    assert isinstance(finished, TurnFinished), finished
    (prompt,) = [e for e in events if isinstance(e, PromptEvaluated)]
    return prompt, finished


def _long_conversation() -> tuple[ChatMessage, ...]:
    turns = []
    for index in range(12):
        turns += [
            ChatMessage("user", f"Question {index}: " + "tell me more about it. " * 8),
            ChatMessage("assistant", f"Answer {index}: " + "it is a fine thing. " * 8),
        ]
    return (ChatMessage("system", "Be brief."), *turns, ChatMessage("user", "Last one?"))


def test_a_server_elsewhere_is_sent_the_turns_its_context_holds_by_estimate(
    remote: Callable[[FakeServer], RemoteHost],
) -> None:
    n_ctx, room = 1000, 100
    server = FakeServer(context_length=n_ctx, tokens_per_byte=0.25)
    host = remote(server)
    conversation = _long_conversation()
    turns = conversation[1:]
    chat = Chat(1, conversation, Sampling(max_tokens=100), reply_room=room, drop_oldest=True)

    prompt, finished = _remote_turn(host, chat)
    first = prompt.view_start
    assert first > 0 and turns[first].role == "user"
    assert finished.stats.view_start == first
    assert server.requests[-1] == _sent((conversation[0], *turns[first:]))
    roomy = n_ctx - room - n_ctx // SLACK_FRACTION
    # At a token a byte, what was sent fits with the slack even if each byte were a token.
    assert PromptSize.size_bytes(server.requests[-1]) <= roomy

    # The server said what the prompt cost: more of the conversation fits
    # now, by that prompt's ratio with the margin, and no more than fits.
    learned = prompt.prompt_tokens / PromptSize.size_bytes(server.requests[-1]) * RATIO_MARGIN
    prompt, _ = _remote_turn(host, chat)
    second = prompt.view_start
    assert 0 < second < first and turns[second].role == "user"
    sent = server.requests[-1]
    assert sent == _sent((conversation[0], *turns[second:]))
    assert PromptSize.size_bytes(sent) * learned <= roomy
    assert PromptSize.size_bytes(_sent((conversation[0], *turns[second - 2 :]))) * learned > roomy
    assert prompt.prompt_tokens + room <= n_ctx  # by the server's own count

    # Without drop_oldest, everything goes, as the API's requests do.
    prompt, finished = _remote_turn(host, Chat(2, conversation, reply_room=room))
    assert prompt.view_start == finished.stats.view_start == 0
    assert server.requests[-1] == _sent(conversation)


def test_a_server_that_does_not_say_its_context_is_sent_everything(
    remote: Callable[[FakeServer], RemoteHost],
) -> None:
    server = FakeServer(context_length=None, tokens_per_byte=0.25)
    host = remote(server)
    conversation = _long_conversation()
    chat = Chat(1, conversation, reply_room=100, drop_oldest=True)
    prompt, _ = _remote_turn(host, chat)
    assert prompt.view_start == 0
    assert server.requests[-1] == _sent(conversation)
