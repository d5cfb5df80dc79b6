"""The OpenAI-compatible HTTP API over an engine link (engine.link).

An ASGI app (FastAPI) that `kvchat serve` runs with uvicorn, and that the
window runs on a thread of its own over its own engine. It never touches
llama.cpp or Qt: requests become the engine's Chat and Complete commands,
and the engine's events become OpenAI's responses and stream chunks.

A reasoning model's thinking goes apart from its answer, as llama-server
and DeepSeek send it: `delta.reasoning_content` in a stream,
`message.reasoning_content` otherwise, with `content` the answer alone, and
`usage.completion_tokens_details.reasoning_tokens` its count. An assistant
message's `reasoning_content` in a request goes back to the model's template.

Every error has OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`, and leaves the server serving.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.metadata
import ipaddress
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from kvchat.app.api.schemas import ChatRequest, CompletionRequest
from kvchat.engine.link import EngineLink
from kvchat.engine.protocol import (
    Chat,
    ChatFailed,
    ChatMessage,
    Complete,
    Event,
    HostExited,
    ModelInfo,
    PromptEvaluated,
    Sampling,
    TextDelta,
    TurnFinished,
    TurnStats,
)

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_QUEUE = 64
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def api_sampling(base: Sampling) -> Sampling:
    """The defaults for fields a request leaves out: the person's settings, but
    no repeat penalty, which OpenAI's API does not have."""
    return replace(base, repeat_penalty=1.0)


API_SAMPLING = api_sampling(Sampling())
# How often a request waiting for its reply checks that its client is still there.
DISCONNECT_POLL_S = 0.25

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ServeOptions:
    """How the server listens and whom it answers.

    `allowed_hosts`: the names a request's Host header may give besides the
    localhost names (the address it listens on, and for a wildcard address
    the machine's own names and addresses).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str = ""
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    max_queue: int = MAX_QUEUE
    max_body_bytes: int = MAX_BODY_BYTES
    # The defaults of the sampling fields a request leaves out.
    sampling: Sampling = API_SAMPLING
    log_messages: bool = False


def refusal_to_listen(host: str, api_key: str) -> str:
    """Why the server must not listen on `host` ("" when it may)."""
    if is_loopback(host) or api_key:
        return ""
    return (
        f"kvchat serves {host} only with an API key: anyone who can reach this machine "
        "could use the model. Pass --api-key KEY (clients send it as a Bearer token), "
        "or listen on 127.0.0.1."
    )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def error_body(
    message: str, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int, message: str, kind: str = "invalid_request_error", **extra: str | None
) -> JSONResponse:
    return JSONResponse(error_body(message, kind, **extra), status_code=status)


class ServerBusyError(Exception):
    """The queue of requests is full."""


@dataclass
class Usage:
    """What the engine said of one request, for its response and the log line."""

    prompt: PromptEvaluated | None = None
    stats: TurnStats | None = None
    text: str = ""  # the answer
    thinking: str = ""
    failure: str = ""
    failure_is_request: bool = False

    def as_openai(self) -> dict[str, Any]:
        stats = self.stats
        prompt_tokens = (
            stats.prompt_tokens if stats else (self.prompt.prompt_tokens if self.prompt else 0)
        )
        cached = stats.reused_tokens if stats else (self.prompt.reused_tokens if self.prompt else 0)
        completion = stats.generated_tokens if stats else 0
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {
                "reasoning_tokens": stats.thinking_tokens if stats else 0
            },
        }

    def timings(self) -> dict[str, Any]:
        """llama-server's `timings` object: cached, evaluated and predicted tokens."""
        stats = self.stats
        if stats is None:
            return {}
        prompt_ms = (
            1000.0 * stats.evaluated_tokens / stats.prefill_tokens_per_s
            if stats.prefill_tokens_per_s
            else 0.0
        )
        decoded = max(stats.generated_tokens - 1, 0)
        predicted_ms = (
            1000.0 * decoded / stats.decode_tokens_per_s if stats.decode_tokens_per_s else 0.0
        )
        return {
            "cache_n": stats.reused_tokens,
            "prompt_n": stats.evaluated_tokens,
            "prompt_ms": round(prompt_ms, 3),
            "prompt_per_second": round(stats.prefill_tokens_per_s, 3),
            "predicted_n": stats.generated_tokens,
            "predicted_ms": round(predicted_ms, 3),
            "predicted_per_second": round(stats.decode_tokens_per_s, 3),
        }

    def finish_reason(self) -> str:
        if self.stats is None:
            return "stop"
        return "length" if self.stats.stop_reason in ("length", "context_full") else "stop"

    def summary(self) -> str:
        stats = self.stats
        if stats is None:
            return self.failure or "no reply"
        thought = f" ({stats.thinking_tokens} thinking)" if stats.thinking_tokens else ""
        return (
            f"prompt {stats.prompt_tokens} tokens ({stats.reused_tokens} cached) · "
            f"reply {stats.generated_tokens} tokens{thought} · "
            f"{stats.decode_tokens_per_s:.1f} tok/s"
            + (" · cancelled" if stats.stop_reason == "cancelled" else "")
        )


@dataclass(frozen=True)
class Activity:
    """A request the engine is working on or has finished, for the window to show."""

    request_id: int
    client: str
    path: str
    done: bool
    summary: str = ""


class Gateway:
    """Carries requests to the engine link and its events back to each request's coroutine.

    The link calls `_on_event` on its reader thread; events are handed to
    the event loop the request waits on.
    """

    def __init__(self, link: EngineLink, max_queue: int) -> None:
        self.link = link
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._open: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event]]] = {}
        self.on_activity: Callable[[Activity], None] = lambda _activity: None
        self._unsubscribe = link.subscribe(self._on_event)

    def close(self) -> None:
        self._unsubscribe()

    def _on_event(self, event: Event) -> None:
        request_id = getattr(event, "request_id", None)
        with self._lock:
            if isinstance(event, HostExited):
                targets = list(self._open.values())
            elif request_id in self._open:
                targets = [self._open[request_id]]
            else:
                return
        for loop, queue in targets:
            loop.call_soon_threadsafe(queue.put_nowait, event)

    def open(self, request: Chat | Complete) -> asyncio.Queue[Event]:
        """Registers a request and sends it; its events arrive on the returned queue.

        Raises:
            ServerBusyError: `max_queue` requests are waiting or running.
        """
        queue: asyncio.Queue[Event] = asyncio.Queue()
        with self._lock:
            if len(self._open) >= self.max_queue:
                raise ServerBusyError
            self._open[request.request_id] = (asyncio.get_running_loop(), queue)
        if not self.link.submit(request):
            queue.put_nowait(HostExited(None, "the engine is not running", ""))
        return queue

    def close_request(self, request_id: int, finished: bool) -> None:
        with self._lock:
            self._open.pop(request_id, None)
        if not finished:
            self.link.cancel(request_id)


def kvchat_version() -> str:
    try:
        return importlib.metadata.version("kvchat")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_id(info: ModelInfo) -> str:
    return Path(info.path).stem


def _chunk(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"


class Guard:
    """ASGI middleware in front of every route: the Host check, the API key, the body
    limit, and one log line per request.

    Pure ASGI, so that a refused request is refused before its body is read.
    """

    def __init__(self, app: ASGIApp, options: ServeOptions, log: Callable[[str], None]) -> None:
        self.app = app
        self.options = options
        self.log = log
        self._hosts = LOCAL_NAMES | {h.lower() for h in options.allowed_hosts}
        if not is_wildcard(options.host):
            self._hosts |= {options.host.lower().strip("[]")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        refusal = self._refusal(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        try:
            if refusal is None:
                body, within_limit = await self._read_body(receive)
                if not within_limit:
                    refusal = self._too_large()
                receive = _replay(body, receive)
            if refusal is not None:
                await refusal(scope, receive, send_logged)
            else:
                await self.app(scope, receive, send_logged)
        finally:
            client = scope.get("client") or ("?", 0)
            detail = state.get("kvchat_detail", "")
            took = time.perf_counter() - started
            self.log(
                f"{scope['method']} {scope['path']} {status or '-'} · {took * 1000:.0f} ms"
                + (f" · {detail}" if detail else "")
                + f" · {client[0]}"
            )

    def _refusal(self, scope: Scope) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = host_name(headers.get("host", ""))
        if host not in self._hosts:
            # A page on another site that points its own name at this machine
            # (DNS rebinding) sends that name here.
            return error_response(
                403,
                f"this server does not answer for the host name {host or '(none)'!r}",
                code="host_not_allowed",
            )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.options.max_body_bytes:
            return self._too_large()
        key = self.options.api_key
        if key and scope["path"] != "/health" and scope["method"] != "OPTIONS":
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode("utf-8", "replace"), key.encode("utf-8")
            ):
                return error_response(
                    401,
                    "a valid API key is needed: send it as 'Authorization: Bearer KEY'",
                    "authentication_error",
                    code="invalid_api_key",
                )
        return None

    def _too_large(self) -> JSONResponse:
        return error_response(
            413,
            f"the request body is larger than {self.options.max_body_bytes // (1024 * 1024)} MiB",
            code="request_too_large",
        )

    async def _read_body(self, receive: Receive) -> tuple[list[Message], bool]:
        """The request's body messages; False when it grows past the limit
        (a chunked body says no length up front)."""
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, True
            seen += len(message.get("body", b""))
            if seen > self.options.max_body_bytes:
                return messages, False
            if not message.get("more_body", False):
                return messages, True


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives the messages already read, then the client's next ones."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def host_name(header: str) -> str:
    """The name in a Host header, without its port: "[::1]:8080" -> "::1"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass
class _Context:
    gateway: Gateway
    options: ServeOptions
    created: int = field(default_factory=lambda: int(time.time()))


def create_app(
    link: EngineLink,
    options: ServeOptions,
    log: Callable[[str], None] = print,
) -> tuple[ASGIApp, Gateway]:
    """The API as an ASGI app over `link`, and the gateway that carries its requests."""
    gateway = Gateway(link, options.max_queue)
    context = _Context(gateway, options)
    api = FastAPI(title="kvchat", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(where) or None
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", code="invalid_json")
        message = first.get("msg", "invalid request")
        return error_response(400, f"{param or 'body'}: {message}", param=param)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, "no such route", code="not_found")
        if exc.status_code == 405:
            return error_response(405, "this route does not take that method")
        return error_response(exc.status_code, str(exc.detail))

    @api.get("/health")
    async def health() -> JSONResponse:
        state = link.state()
        if state.ready and state.model is not None:
            return JSONResponse({"status": "ok", "model": model_id(state.model)})
        body: dict[str, Any] = {"status": state.phase, "message": state.message}
        if state.phase == "loading":
            body["progress"] = round(state.load_fraction, 3)
        return JSONResponse(body, status_code=503)

    @api.get("/v1/models")
    async def models() -> JSONResponse:
        state = link.state()
        data = []
        if state.model is not None:
            info = state.model
            data.append(
                {
                    "id": model_id(info),
                    "object": "model",
                    "created": context.created,
                    "owned_by": "kvchat",
                    "meta": {
                        "name": info.name,
                        "architecture": info.architecture,
                        "n_ctx": info.n_ctx,
                        "n_ctx_train": info.n_ctx_train,
                        "n_params": info.n_params,
                        "size_bytes": info.size_bytes,
                    },
                }
            )
        return JSONResponse({"object": "list", "data": data})

    @api.get("/kvchat/memory")
    async def memory() -> JSONResponse:
        """What this kvchat's memory panels show, for a kvchat elsewhere that
        chats with this one (engine.remote): the model, where its memory went
        at load, and the latest sample of the devices and the KV cache."""
        state = link.state()
        model = state.model
        return JSONResponse(
            {
                "kvchat": True,
                "version": kvchat_version(),
                "model_id": model_id(model) if model is not None else None,
                "model": asdict(model) if model is not None else None,
                "memory": asdict(state.memory) if state.memory is not None else None,
                "sample": asdict(state.sample) if state.sample is not None else None,
            }
        )

    @api.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        refused = _check(body, link)
        if refused is not None:
            return refused
        mode, schema = body.json_mode()
        sampling = _sampling(options.sampling, body, body.token_limit(), link)
        sampling = replace(sampling, json_mode=mode, json_schema=schema)
        messages = tuple(
            ChatMessage("system" if m.role == "developer" else m.role, m.text(), m.thinking())
            for m in body.messages
        )
        # A conversation that ends with the assistant's words is continued from
        # them (a prefill, as llama-server does): the reply goes on where they end.
        continued = len(messages) > 1 and messages[-1].role == "assistant"
        command = Chat(link.new_request_id(), messages, sampling, continue_last=continued)
        return await _answer(context, request, body, command, "chat.completion")

    @api.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        refused = _check(body, link)
        if refused is not None:
            return refused
        sampling = _sampling(options.sampling, body, body.max_tokens, link)
        command = Complete(link.new_request_id(), body.prompt_text() or "", sampling)
        return await _answer(context, request, body, command, "text_completion")

    app: ASGIApp = api
    if options.cors_origins:
        app = CORSMiddleware(
            Guard(api, options, log),
            allow_origins=list(options.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type"],
        )
    else:
        app = Guard(api, options, log)
    return app, gateway


def _check(body: ChatRequest | CompletionRequest, link: EngineLink) -> JSONResponse | None:
    """A refusal for what cannot be answered, or None."""
    unsupported = body.unsupported()
    if unsupported:
        param = unsupported.split(":", 1)[0]
        return error_response(400, unsupported, param=param, code="unsupported_parameter")
    state = link.state()
    if not state.ready or state.model is None:
        message = {
            "loading": "the model is loading",
            "starting": "the engine is starting",
            "restarting": "the engine stopped and is starting again",
        }.get(state.phase, f"no model is ready ({state.message or state.phase})")
        return error_response(503, message, "server_error", code="model_not_ready")
    info = state.model
    if body.model not in (model_id(info), info.name):
        return error_response(
            404,
            f"the model {body.model!r} does not exist here; this server has {model_id(info)!r}",
            param="model",
            code="model_not_found",
        )
    return None


def _sampling(
    base: Sampling, body: ChatRequest | CompletionRequest, limit: int | None, link: EngineLink
) -> Sampling:
    state = link.state()
    context = state.model.n_ctx if state.model is not None else base.max_tokens
    return replace(
        base,
        temperature=body.temperature if body.temperature is not None else base.temperature,
        top_p=body.top_p if body.top_p is not None else base.top_p,
        # No limit asked for: until the model stops or the context is full.
        max_tokens=limit or context,
        seed=body.seed if body.seed is not None else base.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        stop=body.stop_words(),
    )


async def _next_event(queue: asyncio.Queue[Event], request: Request) -> Event | None:
    """The request's next event; None once its client has gone."""
    while True:
        try:
            return await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                return None


def _ended(event: Event, usage: Usage) -> bool:
    """Records an event in `usage`; True when it ends the request."""
    if isinstance(event, PromptEvaluated):
        usage.prompt = event
    elif isinstance(event, TextDelta):
        if event.thinking:
            usage.thinking += event.text
        else:
            usage.text += event.text
    elif isinstance(event, TurnFinished):
        usage.stats = event.stats
        usage.text = event.text
        return True
    elif isinstance(event, ChatFailed):
        usage.failure = event.message
        usage.failure_is_request = event.by_request
        return True
    elif isinstance(event, HostExited):
        usage.failure = f"{event.description}; the request was lost, try it again"
        return True
    return False


def _failure_response(usage: Usage) -> JSONResponse:
    if usage.failure_is_request:
        return error_response(400, usage.failure, code="request_failed")
    return error_response(503, usage.failure, "server_error", code="engine_failed")


async def _answer(
    context: _Context,
    request: Request,
    body: ChatRequest | CompletionRequest,
    command: Chat | Complete,
    kind: str,
) -> Response:
    gateway = context.gateway
    try:
        queue = gateway.open(command)
    except ServerBusyError:
        return error_response(
            429,
            f"the server is busy: {gateway.max_queue} requests are waiting; try again shortly",
            "rate_limit_error",
            code="queue_full",
        )
    client = request.client.host if request.client else "?"
    gateway.on_activity(Activity(command.request_id, client, request.url.path, done=False))
    state = request.scope.setdefault("state", {})
    response_id = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{command.request_id:x}"
    model = body.model
    created = int(time.time())
    usage = Usage()

    def finish(finished: bool) -> None:
        gateway.close_request(command.request_id, finished)
        state["kvchat_detail"] = usage.summary() if finished else "client went away: cancelled"
        if context.options.log_messages:
            asked = (
                command.prompt if isinstance(command, Complete) else command.messages[-1].content
            )
            state["kvchat_detail"] += f" · asked {asked[:200]!r} · got {usage.text[:200]!r}"
        gateway.on_activity(
            Activity(command.request_id, client, request.url.path, True, state["kvchat_detail"])
        )

    if not body.stream:
        finished = False
        try:
            while True:
                event = await _next_event(queue, request)
                if event is None:
                    break
                if _ended(event, usage):
                    finished = True
                    break
        finally:
            finish(finished)
        if not finished:
            return Response(status_code=499)
        if usage.failure:
            return _failure_response(usage)
        if kind == "chat.completion":
            message = {"role": "assistant", "content": usage.text}
            if usage.thinking:
                message["reasoning_content"] = usage.thinking
            choice: dict[str, Any] = {
                "index": 0,
                "message": message,
                "finish_reason": usage.finish_reason(),
                "logprobs": None,
            }
        else:
            choice = {
                "index": 0,
                "text": usage.text,
                "finish_reason": usage.finish_reason(),
                "logprobs": None,
            }
        return JSONResponse(
            {
                "id": response_id,
                "object": kind,
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage.as_openai(),
                "timings": usage.timings(),
            }
        )

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload: dict[str, Any] = {
            "id": response_id,
            "object": chunk_kind,
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = None
        payload.update(extra)
        return _chunk(payload)

    def piece(
        text: str, finish_reason: str | None = None, thinking: bool = False
    ) -> dict[str, Any]:
        if kind == "chat.completion":
            field = "reasoning_content" if thinking else "content"
            return {
                "index": 0,
                "delta": {field: text} if text or finish_reason is None else {},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        return {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}

    async def stream() -> AsyncIterator[bytes]:
        finished = False
        try:
            if kind == "chat.completion":
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
                yield chunk([{**first, "finish_reason": None, "logprobs": None}])
            while True:
                event = await queue.get()
                if isinstance(event, TextDelta) and event.text:
                    yield chunk([piece(event.text, thinking=event.thinking)])
                if _ended(event, usage):
                    finished = True
                    break
            if usage.failure:
                status = "invalid_request_error" if usage.failure_is_request else "server_error"
                yield _chunk(error_body(usage.failure, status, code="request_failed"))
                return
            yield chunk([piece("", usage.finish_reason())], timings=usage.timings())
            if include_usage:
                yield chunk([], usage=usage.as_openai())
            yield b"data: [DONE]\n\n"
        finally:
            # Also when the client went away: the generator is closed, and the
            # engine stops the request at its next token.
            finish(finished)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
