"""The OpenAI-compatible API against the real bundled model, with the official
`openai` package as the client (and httpx for what a well-behaved client never sends)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from kvchat.app.api.background import BackgroundServer
from kvchat.app.api.server import ASGIApp, ServeOptions, create_app, refusal_to_listen
from kvchat.engine.link import LocalEngine
from kvchat.engine.protocol import Event, LoadConfig, TurnFinished
from tests.model_factory import TINY_THINKING, ModelFactory, model_factory

__all__ = ["model_factory"]  # a fixture, imported so that pytest finds it


class ServerThread(BackgroundServer):
    """The server on a free port, started before the test goes on."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        assert self.wait_started()

    def stop(self, join_s: float | None = 10.0) -> None:
        super().stop(join_s)


@dataclass
class Served:
    engine: LocalEngine
    url: str
    model: str
    log: list[str]
    events: list[Event]

    def client(self, **options: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, **options)  # type: ignore[arg-type]


def _start_engine(model_path: Path, tmp: Path) -> LocalEngine:
    engine = LocalEngine(LoadConfig(str(model_path), n_ctx=2048), tmp / "engine.log")
    engine.start()
    return engine


@contextlib.contextmanager
def _serving(model_path: Path, folder: Path) -> Iterator[Served]:
    """A server on a free port over an engine of its own, for a module's tests."""
    engine = _start_engine(model_path, folder)
    state = engine.wait_ready(120)
    assert state.ready and state.model is not None, state
    log: list[str] = []
    events: list[Event] = []
    engine.subscribe(events.append)
    app, gateway = create_app(engine, ServeOptions(max_queue=8), log.append)
    server = ServerThread(app)
    try:
        yield Served(engine, server.url, Path(state.model.path).stem, log, events)
    finally:
        server.stop()
        gateway.close()
        engine.stop()


@pytest.fixture(scope="module")
def served(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with _serving(model_path, tmp_path_factory.mktemp("serve")) as serving:
        yield serving


@pytest.fixture(scope="module")
def thinking_served(
    model_factory: ModelFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A model that thinks before it answers (tests/model_factory.py)."""
    path = model_factory.path(TINY_THINKING)
    with _serving(path, tmp_path_factory.mktemp("serve-thinking")) as serving:
        yield serving


def _post(served: Served, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(served.url + path, timeout=60, **kwargs)  # type: ignore[arg-type]


def _chat(served: Served, text: str, **fields: object) -> dict[str, object]:
    response = _post(
        served,
        "/v1/chat/completions",
        json={"model": served.model, "messages": [{"role": "user", "content": text}], **fields},
    )
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def test_models_lists_the_loaded_model_with_its_context(served: Served) -> None:
    models = served.client().models.list()
    assert [m.id for m in models.data] == [served.model]
    meta = models.data[0].model_extra["meta"]  # type: ignore[index]
    assert meta["n_ctx"] == 2048
    assert meta["size_bytes"] > 50_000_000


def test_the_memory_report_is_what_the_panels_show(served: Served) -> None:
    _chat(served, "Say one word.", max_tokens=4)
    report = httpx.get(served.url + "/kvchat/memory").json()
    assert report["kvchat"] is True and report["model_id"] == served.model
    assert report["model"]["n_ctx"] == 2048
    memory = report["memory"]
    assert memory["kv_device"] == "CPU"
    assert sum(b["weights_bytes"] for b in memory["buffers"]) > 50_000_000
    assert memory["kv_caches"][0]["cells"] == 2048
    sample = report["sample"]  # the engine samples about once a second
    assert sample is not None and sample["devices"][0]["total_bytes"] > 0
    assert sample["tokens_in_cache"] > 0


def test_health_says_ok_once_loaded(served: Served) -> None:
    response = httpx.get(served.url + "/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": served.model}


def test_chat_with_usage_and_timings(served: Served) -> None:
    client = served.client()
    reply = client.chat.completions.create(
        model=served.model,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=24,
        temperature=0,
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 5
    assert 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    timings = reply.model_extra["timings"]  # type: ignore[index]
    assert timings["predicted_n"] == usage.completion_tokens
    assert timings["cache_n"] + timings["prompt_n"] == usage.prompt_tokens


def test_streamed_text_equals_unstreamed_and_ends_with_usage(served: Served) -> None:
    client = served.client()
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    # Both answers below then find the question in the cache and evaluate only
    # its last token again: on some CPUs a first prefill's batch rounds
    # differently from one token, enough to change a near tie in greedy decoding.
    client.chat.completions.create(
        model=served.model,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=1,
        temperature=0,
    )
    whole = client.chat.completions.create(
        model=served.model,
        messages=messages,
        max_tokens=32,
        temperature=0,  # type: ignore[arg-type]
    )
    chunks = list(
        client.chat.completions.create(
            model=served.model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=32,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == (
        whole.choices[0].finish_reason
    )


def test_a_continued_conversation_evaluates_only_its_new_tokens(served: Served) -> None:
    client = served.client()
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "You are a patient teacher of geography."},
        {"role": "user", "content": "What is the capital of France? Answer in one sentence."},
    ]
    first = client.chat.completions.create(
        model=served.model,
        messages=messages,
        max_tokens=24,
        temperature=0,  # type: ignore[arg-type]
    )
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "And of Italy?"},
    ]
    second = client.chat.completions.create(
        model=served.model,
        messages=messages,
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
    )
    usage = second.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= first.usage.prompt_tokens  # type: ignore[union-attr]
    assert usage.prompt_tokens - cached < 20


def test_max_tokens_and_stop(served: Served) -> None:
    counted = _chat(served, "Count from 1 to 30, separated by commas.", temperature=0, max_tokens=6)
    assert counted["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    assert counted["usage"]["completion_tokens"] == 6  # type: ignore[index]
    full = _chat(served, "Count from 1 to 30, separated by commas.", temperature=0, max_tokens=60)
    text = full["choices"][0]["message"]["content"]  # type: ignore[index]
    assert "7" in text
    stopped = _chat(served, "Count from 1 to 30, separated by commas.", temperature=0, stop=["7"])
    assert stopped["choices"][0]["message"]["content"] == text[: text.index("7")]  # type: ignore[index]
    assert stopped["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]


def test_json_schema_response_format(served: Served) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    reply = served.client().chat.completions.create(
        model=served.model,
        messages=[{"role": "user", "content": "Give a city and its population."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    value = json.loads(reply.choices[0].message.content or "")
    assert isinstance(value["city"], str) and isinstance(value["population"], int)


def test_completions_plain_and_streamed(served: Served) -> None:
    client = served.client()
    whole = client.completions.create(
        model=served.model, prompt="def add(a, b):\n", max_tokens=12, temperature=0
    )
    assert whole.choices[0].text
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    streamed = client.completions.create(
        model=served.model, prompt="def add(a, b):\n", max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ],
)
def test_invalid_requests_get_400_naming_the_field(
    served: Served, body: dict[str, object], param: str
) -> None:
    request = {"model": served.model, "messages": [{"role": "user", "content": "hi"}], **body}
    response = _post(served, "/v1/chat/completions", json=request)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]


def test_malformed_json_unknown_model_and_route(served: Served) -> None:
    broken = _post(
        served,
        "/v1/chat/completions",
        content=b'{"model": ',
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.NotFoundError) as unknown:
        served.client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert "gpt-4o" in str(unknown.value)
    route = httpx.get(served.url + "/v1/nothing-here")
    assert route.status_code == 404 and route.json()["error"]["code"] == "not_found"


def test_a_body_past_the_limit_gets_413_declared_or_not(served: Served) -> None:
    huge = json.dumps(
        {"model": served.model, "messages": [{"role": "user", "content": "x" * (5 << 20)}]}
    )
    declared = _post(served, "/v1/chat/completions", content=huge)
    assert declared.status_code == 413

    def chunked() -> Iterator[bytes]:
        data = huge.encode()
        for start in range(0, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]

    streamed = _post(served, "/v1/chat/completions", content=chunked())
    assert streamed.status_code == 413
    assert _chat(served, "Still there?", max_tokens=2)["choices"]


def test_a_foreign_host_header_is_refused(served: Served) -> None:
    response = httpx.get(served.url + "/v1/models", headers={"Host": "attacker.example:8080"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(served.url + "/v1/models", headers={"Host": "localhost"}).status_code == 200


def test_no_cors_headers_unless_an_origin_is_named(served: Served) -> None:
    headers = {"Origin": "https://example.com", "Access-Control-Request-Method": "POST"}
    preflight = httpx.options(served.url + "/v1/chat/completions", headers=headers)
    assert "access-control-allow-origin" not in preflight.headers
    get = httpx.get(served.url + "/v1/models", headers={"Origin": "https://example.com"})
    assert "access-control-allow-origin" not in get.headers


def test_a_named_cors_origin_and_only_it_is_allowed(served: Served) -> None:
    app, gateway = create_app(
        served.engine, ServeOptions(cors_origins=("https://editor.example",)), lambda _l: None
    )
    server = ServerThread(app)
    try:
        allowed = httpx.get(server.url + "/v1/models", headers={"Origin": "https://editor.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://editor.example"
        other = httpx.get(server.url + "/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        server.stop()
        gateway.close()


def test_the_api_key_is_required_and_never_logged(served: Served) -> None:
    log: list[str] = []
    key = "s3cret-key-for-test"
    app, gateway = create_app(served.engine, ServeOptions(api_key=key), log.append)
    server = ServerThread(app)
    try:
        base = server.url + "/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
        bare = httpx.get(base + "/models")
        assert bare.status_code == 401 and bare.json()["error"]["type"] == "authentication_error"
        models = openai.OpenAI(base_url=base, api_key=key, max_retries=0).models.list()
        assert models.data[0].id == served.model
        assert httpx.get(server.url + "/health").status_code == 200
    finally:
        server.stop()
        gateway.close()
    assert len(log) == 4
    assert all(key not in line for line in log)


def test_listening_beyond_loopback_needs_a_key() -> None:
    assert refusal_to_listen("127.0.0.1", "") == ""
    assert refusal_to_listen("0.0.0.0", "") != ""
    assert refusal_to_listen("0.0.0.0", "k") == ""
    assert refusal_to_listen("::1", "") == ""
    assert refusal_to_listen("localhost", "") == ""


def test_a_client_that_goes_away_cancels_its_generation(served: Served) -> None:
    served.events.clear()
    body = {
        "model": served.model,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 1500,
        "stream": True,
    }
    with httpx.stream("POST", served.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any('"content"' in line for line in received)
    deadline = time.monotonic() + 30
    finished: list[TurnFinished] = []
    while not finished and time.monotonic() < deadline:
        finished = [e for e in served.events if isinstance(e, TurnFinished)]
        time.sleep(0.05)
    assert finished, "the engine never ended the abandoned request"
    assert finished[0].stats.stop_reason == "cancelled"
    assert finished[0].stats.generated_tokens < 1500
    assert any("client went away" in line for line in served.log)
    assert _chat(served, "Hello?", max_tokens=2)["choices"]


def test_concurrent_clients_each_get_their_own_answer(served: Served) -> None:
    words = ["apple", "river", "mountain", "violin", "lantern", "pepper"]
    results: dict[str, dict[str, object]] = {}

    def ask(word: str) -> None:
        # Prompts of different lengths: each answer's usage shows whose it is.
        results[word] = _chat(
            served,
            f"Repeat the word {word} " + "please " * (8 * words.index(word)),
            max_tokens=6,
            temperature=0,
        )

    threads = [threading.Thread(target=ask, args=(w,)) for w in words]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == sorted(words)
    ids = {r["id"] for r in results.values()}
    assert len(ids) == len(words)
    lengths = [results[w]["usage"]["prompt_tokens"] for w in words]  # type: ignore[index]
    assert lengths == sorted(lengths) and len(set(lengths)) == len(words)


def test_a_full_queue_answers_429_and_the_server_goes_on(served: Served) -> None:
    app, gateway = create_app(served.engine, ServeOptions(max_queue=1), lambda _l: None)
    server = ServerThread(app)
    # Counting goes on for as long as it is let: the first request is still running.
    body = {"model": served.model, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 1500}
    try:
        streamed = {**body, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=streamed, timeout=60) as r:
            # Held: a line iterator that is dropped closes the response.
            lines = r.iter_lines()
            next(lines)
            second = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "queue_full"
            assert next(line for line in lines if line).startswith("data:")  # still answered
        time.sleep(0.5)
        again = httpx.post(
            server.url + "/v1/completions", json={**body, "max_tokens": 2}, timeout=60
        )
        assert again.status_code == 200
    finally:
        server.stop()
        gateway.close()


def test_an_engine_crash_fails_the_request_with_503_and_the_next_one_succeeds(
    model_path: Path, tmp_path: Path
) -> None:
    engine = _start_engine(model_path, tmp_path)
    app, gateway = create_app(engine, ServeOptions(), lambda _l: None)
    server = ServerThread(app)
    try:
        loading = httpx.get(server.url + "/health")
        assert loading.status_code == 503
        assert loading.json()["status"] in ("starting", "loading")
        assert engine.wait_ready(120).ready
        model = Path(engine.state().model.path).stem  # type: ignore[union-attr]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Write a long poem."}],
            max_tokens=1500,
            stream=True,
        )
        with pytest.raises(openai.APIError, match="engine"):
            for count, _chunk in enumerate(stream):
                if count == 3:
                    engine.kill_host()
        # While it starts again: 503, and the health check says why.
        unready = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )
        if unready.status_code != 200:
            assert unready.status_code == 503
        assert engine.wait_ready(120).ready
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
        )
        assert reply.choices[0].message.content is not None
    finally:
        server.stop()
        gateway.close()
        engine.stop()


# A reasoning model's thinking, as llama-server and DeepSeek send it.

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


def test_thinking_comes_as_reasoning_content_apart_from_the_answer(
    thinking_served: Served,
) -> None:
    client = thinking_served.client()
    whole = client.chat.completions.create(model=thinking_served.model, messages=HI, temperature=0)
    message = whole.choices[0].message
    assert message.content == "Yes indeed"
    assert (message.model_extra or {})["reasoning_content"] == " Hmm so"
    usage = whole.usage
    assert usage is not None and usage.completion_tokens == 5
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 3
    chunks = client.chat.completions.create(
        model=thinking_served.model, messages=HI, temperature=0, stream=True
    )
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    thought = [(d.model_extra or {}).get("reasoning_content") or "" for d in deltas]
    assert "".join(thought) == " Hmm so"
    assert "".join(d.content or "" for d in deltas) == "Yes indeed"
    assert not any(d.content and t for d, t in zip(deltas, thought, strict=True))


def test_an_assistant_messages_reasoning_content_goes_back_to_the_model(
    thinking_served: Served,
) -> None:
    """A reply cut inside its thinking, sent back to go on with: the model
    goes on thinking from where it was, so the thinking reached its prompt."""
    cut = [*HI, {"role": "assistant", "content": "", "reasoning_content": " Hmm"}]
    reply = thinking_served.client().chat.completions.create(
        model=thinking_served.model,
        messages=cut,  # type: ignore[arg-type]
        temperature=0,
    )
    message = reply.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == " so"
    assert message.content == "Yes indeed"
