"""A server that misbehaves on purpose, on 127.0.0.1: each fault a remote model
can meet gets a message in words, the reply so far is kept, and the next
request works. The good servers (kvchat, llama-cpp-python's) cannot be made
to fail these ways, so this one is written to, over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pytestqt.qtbot import QtBot

from kvchat.app.api.background import BackgroundServer
from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.gui import build_window
from kvchat.engine.protocol import (
    Chat,
    ChatFailed,
    ChatMessage,
    Event,
    LoadConfig,
    LoadModel,
    ModelLoaded,
    Sampling,
    TextDelta,
    TurnFinished,
)
from kvchat.engine.remote import RemoteHost
from kvchat.engine.remote_address import model_url
from tests.remote_events import events_until

WAIT_S = 30.0
SEEN_KEYS: list[str | None] = []
SEEN_MESSAGES: list[list[dict[str, str]]] = []


def _chunk(text: str, finish: str | None = None) -> bytes:
    import json

    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return f"data: {json.dumps({'choices': [choice]})}\n\n".encode()


def _misbehaving_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        SEEN_KEYS.append(request.headers.get("authorization"))
        body = await request.json()
        SEEN_MESSAGES.append(body["messages"])
        mode = body["messages"][-1]["content"]
        if mode == "busy":
            return JSONResponse({"error": {"message": "too many requests"}}, status_code=429)
        if mode == "broken":
            return JSONResponse({"error": {"message": "CUDA error"}}, status_code=500)
        if mode == "unknown":
            return JSONResponse({"error": {"message": "model 'm' not found"}}, status_code=404)
        if mode == "redirect":
            return RedirectResponse("http://elsewhere.example/v1/chat/completions", 307)
        if mode == "json":
            return JSONResponse({"choices": [{"message": {"content": "not a stream"}}]})

        async def events() -> AsyncIterator[bytes]:
            if mode == "slow":
                await asyncio.sleep(5)
            yield _chunk("Once upon")
            yield _chunk(" a time")
            if mode == "garbage":
                yield b"data: {not json\n\n"
            elif mode == "cut":
                return  # the connection ends with no finish and no [DONE]
            else:
                yield _chunk(".", "stop")
                yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    server = BackgroundServer(_misbehaving_app())
    assert server.wait_started()
    try:
        yield server.url
    finally:
        server.stop(10.0)


def _events(host: RemoteHost, until: type) -> list[Event]:
    return events_until(host, until, WAIT_S)


def _ask(url: str, tmp_path: Path, mode: str, key: str | None = None) -> list[Event]:
    host = RemoteHost(tmp_path / "engine.log", key)
    host.reply_timeout_s = 1.0
    try:
        host.send(LoadModel(LoadConfig(model_url(url, "m"))))
        assert isinstance(_events(host, ModelLoaded)[-1], ModelLoaded)
        host.send(Chat(1, (ChatMessage("user", mode),), Sampling(max_tokens=8)))
        return _events(host, TurnFinished)
    finally:
        host.close()


@pytest.mark.parametrize(
    ("mode", "said", "kept"),
    [
        ("busy", "the server is busy with other requests (429): try again in a moment", ""),
        ("broken", "the server could not answer (500 Internal Server Error: CUDA error)", ""),
        ("unknown", "the server has no /v1/chat/completions (404: model 'm' not found)", ""),
        ("json", "the server did not answer with a stream of events", ""),
        (
            "garbage",
            "the server stopped mid-reply: the server sent an event that is not JSON",
            "Once upon a time",
        ),
        ("cut", "the server ended the reply without finishing it", "Once upon a time"),
        ("slow", "the server did not answer within 1 s", ""),
        ("redirect", "kvchat does not follow redirects", ""),
    ],
)
def test_each_fault_is_said_in_words_and_the_text_so_far_kept(
    misbehaving: str, tmp_path: Path, mode: str, said: str, kept: str
) -> None:
    events = _ask(misbehaving, tmp_path, mode)
    failed = events[-1]
    assert isinstance(failed, ChatFailed), failed
    assert said in failed.message
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == kept
    # Nothing had come back: the request is at fault, and its message goes back to the composer.
    assert failed.by_request == (not kept)


def test_a_redirect_never_takes_the_key_elsewhere(misbehaving: str, tmp_path: Path) -> None:
    SEEN_KEYS.clear()
    events = _ask(misbehaving, tmp_path, "redirect", key="secret")
    assert isinstance(events[-1], ChatFailed)
    assert SEEN_KEYS == ["Bearer secret"]  # one request, to this server only


def test_the_window_keeps_a_reply_the_server_cut_and_goes_on(
    misbehaving: str, qtbot: QtBot, data_dir: Path
) -> None:
    url = model_url(misbehaving, "m")
    window, controller = build_window(url, EngineSettings(max_tokens=8), data_dir)
    try:
        if controller.model is None:
            with qtbot.waitSignal(controller.engine.model_loaded, timeout=60_000):
                pass
        with qtbot.waitSignal(controller.engine.chat_failed, timeout=60_000):
            controller.send("cut")
        reply = controller.history.messages[-1]
        assert reply.role == "assistant" and reply.state == "interrupted"
        assert reply.content == "Once upon a time"
        shown = window.chat_view.toPlainText()
        assert "interrupted: the server ended the reply without finishing it" in shown
        assert "the server ended the reply" in window.banner.text()
        with qtbot.waitSignal(controller.reply_finished, timeout=60_000):
            controller.send("fine")
        assert controller.history.messages[-1].content == "Once upon a time."
        assert controller.history.messages[-1].state == "done"
        # The server does not say its context, so the whole conversation goes to it.
        assert [m["content"] for m in SEEN_MESSAGES[-1]] == [
            "cut",
            "Once upon a time",
            "fine",
        ]
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)
