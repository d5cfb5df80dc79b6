"""Servers elsewhere that speak OpenAI's API: which kind answered, and what it says of its memory.

kvchat can chat with a model that another program serves: llama.cpp's
llama-server, vLLM, Ollama, LM Studio, another kvchat (`kvchat serve`), or
anything else with OpenAI's `/v1/models` and `/v1/chat/completions`.
`identify` asks a server which kind it is and which models it offers;
`sample_memory` asks it, as that kind is asked, what its memory holds now.
Each figure says where it came from, because each kind reports different
things and some report nothing.

Both are synchronous and take the caller's `httpx.Client` (whose timeout they
obey); the caller runs them off the GUI thread. Every request carries the API
key as a Bearer token when there is one, and none follows a redirect: a 3xx
is an error, so that the key never goes to an address the person did not
type.
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kvchat.engine.protocol import ServerFigure
from kvchat.engine.remote_address import BadAddressError as BadAddressError
from kvchat.engine.remote_address import RemoteError as RemoteError
from kvchat.engine.remote_address import is_this_machine as is_this_machine
from kvchat.engine.remote_address import normalise_base_url as normalise_base_url
from kvchat.engine.remote_address import plain_http_key_warning as plain_http_key_warning
from kvchat.engine.remote_address import where as _where
from kvchat.engine.remote_address import where as where

ServerKind = Literal["kvchat", "llama-server", "vllm", "ollama", "lmstudio", "openai"]
Unit = Literal["tokens", "bytes", "%", "requests", ""]

NO_MEMORY_REPORT = "this server does not report its memory"

_LABELS: dict[ServerKind, str] = {
    "kvchat": "kvchat",
    "llama-server": "llama-server",
    "vllm": "vLLM",
    "ollama": "Ollama",
    "lmstudio": "LM Studio",
    "openai": "an OpenAI-compatible server",
}


class UnreachableError(RemoteError):
    """No connection: refused, a name that does not resolve, TLS, or no answer to connect."""


class NoAnswerInTimeError(RemoteError):
    """Connected, but the answer did not come within the client's timeout."""


class AccessRefusedError(RemoteError):
    """401 or 403: the key is missing, wrong, or not enough."""


class NotOpenAICompatibleError(RemoteError):
    """Something answered, but it has no OpenAI model list."""


class BadAnswerError(RemoteError):
    """Any other failure: a redirect, an error status, a body that is not what was asked for."""


class BadStatusError(BadAnswerError):
    """An answer with a status other than 2xx, 401 and 403 (a redirect included)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NotJsonError(BadAnswerError):
    """A 2xx answer whose body is not JSON where JSON was asked for."""


@dataclass(frozen=True)
class RemoteModel:
    """A model a server offers, with what the server says of it (None: it says nothing)."""

    id: str
    # The longest context this server gives the model, else the model's own.
    context_length: int | None = None
    size_bytes: int | None = None
    n_params: int | None = None
    # For a person, e.g. "Q4_K_M · llama", from what the server says.
    details: str = ""


@dataclass(frozen=True)
class Identity:
    """Which kind of server answered at `base_url`, and which models it offers."""

    kind: ServerKind
    label: str
    version: str
    models: tuple[RemoteModel, ...]
    # The address as normalised (no trailing "/v1" or "/").
    base_url: str = ""
    # Kept so that `sample_memory` asks with the same key; never shown.
    api_key: str | None = field(default=None, repr=False)

    def model(self, model_id: str) -> RemoteModel | None:
        return next((m for m in self.models if m.id == model_id), None)


# One thing a server reported, for a person; `source` is the request it came from.
# The protocol's own type, so that the figures go to the window as they are.
Figure = ServerFigure


@dataclass(frozen=True)
class Reading:
    """What one answer says: figures to show, and the few values the panels chart.

    What a parser returns; `sample_memory` combines a kind's readings into a
    `ServerMemory`. None means the answer does not say.
    """

    figures: tuple[Figure, ...] = ()
    n_ctx: int | None = None
    kv_used_tokens: int | None = None
    kv_used_fraction: float | None = None
    running_requests: int | None = None
    waiting_requests: int | None = None
    note: str = ""


@dataclass(frozen=True)
class ServerMemory:
    """What a server reports about its memory now.

    `n_ctx` is the context one conversation can use; `kv_used_tokens` and
    `kv_used_fraction` are the server's whole KV cache. `unavailable` lists
    the endpoints that were asked and did not answer, and why.
    """

    kind: ServerKind
    figures: tuple[Figure, ...] = ()
    n_ctx: int | None = None
    kv_used_tokens: int | None = None
    kv_used_fraction: float | None = None
    running_requests: int | None = None
    waiting_requests: int | None = None
    note: str = ""
    # kvchat's own report from GET /kvchat/memory, as it came.
    kvchat_report: dict[str, Any] | None = field(default=None, hash=False)
    unavailable: tuple[str, ...] = ()


# Addresses and the plain-http warning.


# Requests.


def _seconds(exc: httpx.TimeoutException, phase: str, client: httpx.Client) -> str:
    value: object = None
    with contextlib.suppress(RuntimeError):  # no request attached
        value = exc.request.extensions.get("timeout", {}).get(phase)
    if not isinstance(value, int | float):
        value = getattr(client.timeout, phase, None)
    return f"{value:g} s" if isinstance(value, int | float) else "the time allowed"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


_DNS_WORDS = (
    "name or service not known",
    "nodename nor servname",
    "name resolution",
    "getaddrinfo failed",
    "no address associated",
    "name does not resolve",
    "no such host",
)


def _tls_words(reason: str) -> str:
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", reason)
    text = text.replace("_", " ").lower() if text.isupper() else text
    if "wrong version number" in text.lower() or "record layer failure" in text.lower():
        text += " (does the server speak plain http? try http://)"
    return text


def _connect_failure(exc: httpx.TransportError, base_url: str) -> UnreachableError:
    where = _where(base_url)
    host = urlsplit(base_url).hostname or where
    for cause in _causes(exc):
        # ssl sets verify_message and reason; an SSLError made elsewhere may lack them.
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = getattr(cause, "verify_message", None) or "the certificate was not accepted"
            return UnreachableError(f"TLS error: certificate verify failed ({detail})")
        if isinstance(cause, ssl.SSLError):
            reason = getattr(cause, "reason", None) or re.sub(r"^\[SSL: [A-Z_]+\] ", "", str(cause))
            return UnreachableError(f"TLS error: {_tls_words(reason)}")
        if isinstance(cause, socket.gaierror):
            return UnreachableError(f"{host} does not resolve")
        if isinstance(cause, ConnectionRefusedError):
            return UnreachableError(f"cannot reach {where} (connection refused)")
    text = str(exc)
    lowered = text.lower()
    if "certificate" in lowered or "ssl" in lowered or "tls" in lowered:
        reason = re.sub(r"^\[SSL: [A-Z_]+\] ", "", text)
        return UnreachableError(f"TLS error: {_tls_words(reason)}")
    if any(words in lowered for words in _DNS_WORDS):
        return UnreachableError(f"{host} does not resolve")
    if "refused" in lowered:
        return UnreachableError(f"cannot reach {where} (connection refused)")
    reason = re.sub(r"^\[Errno -?\d+\] ", "", text) or type(exc).__name__
    return UnreachableError(f"cannot reach {where} ({reason})")


def _error_detail(response: httpx.Response) -> str:
    """The server's own words about an error, when it gave some briefly."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:200] if text and "<" not in text[:1] else ""
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str):
            return error[:200]
    return ""


def transport_error(exc: httpx.TransportError, base_url: str, client: httpx.Client) -> RemoteError:
    """A request that got no answer, in words: refused, no such name, TLS, a timeout."""
    if isinstance(exc, httpx.ConnectTimeout):
        seconds = _seconds(exc, "connect", client)
        return UnreachableError(f"cannot reach {_where(base_url)} (no answer within {seconds})")
    if isinstance(exc, httpx.TimeoutException):
        seconds = _seconds(exc, "read", client)
        return NoAnswerInTimeError(f"the server did not answer within {seconds}")
    if isinstance(exc, httpx.ConnectError):
        return _connect_failure(exc, base_url)
    reason = str(exc) or type(exc).__name__
    return BadAnswerError(f"the connection to {_where(base_url)} broke ({reason})")


def status_error(response: httpx.Response, request: str, api_key: str | None) -> RemoteError:
    """An answer that is not a success, in words; `request` is "GET /props" or the like."""
    status = response.status_code
    detail = _error_detail(response)
    if detail.lower() == response.reason_phrase.lower():
        detail = ""  # FastAPI's {"detail": "Not Found"} says nothing more
    said = f": {detail}" if detail else ""
    path = request.split(" ", 1)[-1]
    if response.is_redirect or 300 <= status < 400:
        target = response.headers.get("location", "another address")
        return BadStatusError(
            f"the server sends {request} elsewhere ({status} to {target}); kvchat does "
            "not follow redirects, so that the API key goes nowhere else: use the "
            "address it points to",
            status,
        )
    if status == 401:
        if api_key:
            return AccessRefusedError("the server refused the API key (401)")
        return AccessRefusedError("the server wants an API key (401)")
    if status == 403:
        return AccessRefusedError(f"403 {response.reason_phrase or 'Forbidden'}{said}")
    if status == 404:
        return BadStatusError(f"the server has no {path} (404{said})", status)
    if status == 429:
        return BadStatusError(
            f"the server is busy with other requests (429{said}): try again in a moment", status
        )
    if status == 501:
        return BadStatusError(f"{path} is not enabled on the server (501{said})", status)
    if status >= 500:
        return BadStatusError(
            f"the server could not answer ({status} {response.reason_phrase}{said})", status
        )
    return BadStatusError(f"{request}: {status} {response.reason_phrase}{said}", status)


class _Server:
    """One server's address and key, and the requests kvchat makes of it."""

    def __init__(self, client: httpx.Client, base_url: str, api_key: str | None) -> None:
        self.client = client
        self.base_url = base_url
        self.api_key = api_key or None

    def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        """A 2xx answer to GET `path`, or RemoteError."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            response = self.client.get(
                self.base_url + path, params=params, headers=headers, follow_redirects=False
            )
        except httpx.TransportError as exc:
            raise transport_error(exc, self.base_url, self.client) from None
        if response.is_success:
            return response
        raise status_error(response, f"GET {path}", self.api_key)

    def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = self.get(path, params)
        try:
            return response.json()
        except ValueError:
            raise NotJsonError("the answer is not JSON") from None

    def probe(self, path: str) -> Any:
        """The JSON answer to GET `path`, or None when there is none to be had."""
        try:
            return self.get_json(path)
        except RemoteError:
            return None


class _Attempts:
    """Figure endpoints asked one after another: a failure is noted and skipped.

    Only a lost connection ends the sampling; a server that cannot be reached
    has no memory to report.
    """

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.unavailable: list[str] = []

    def _skip(self, path: str, reason: str) -> None:
        self.unavailable.append(f"GET {path}: {reason}")

    def json(self, path: str, params: dict[str, str] | None = None, *, note: bool = True) -> Any:
        """The JSON answer, or None (noted in `unavailable` unless `note` is False)."""
        try:
            return self.server.get_json(path, params)
        except UnreachableError:
            raise
        except RemoteError as exc:
            if note:
                self._skip(path, str(exc))
            return None

    def text(self, path: str, params: dict[str, str] | None = None) -> str | None:
        try:
            return self.server.get(path, params).text
        except UnreachableError:
            raise
        except RemoteError as exc:
            self._skip(path, str(exc))
            return None

    def metrics(
        self, path: str, parse: Callable[[str], Reading], params: dict[str, str] | None = None
    ) -> Reading:
        text = self.text(path, params)
        if text is None:
            return Reading()
        try:
            return parse(text)
        except (ValueError, IndexError):
            self._skip(path, "the answer is not Prometheus text")
            return Reading()


# Reading JSON and Prometheus answers.


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _positive(value: object) -> int | None:
    number = _int(value)
    return number if number is not None and number > 0 else None


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _dicts(value: object) -> list[dict[str, Any]]:
    return [item for item in _list(value) if isinstance(item, dict)]


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


_SIZE_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_parameter_size(text: str) -> int | None:
    """Ollama's rounded parameter count, "7.6B" -> 7_600_000_000; None if not of that form."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMBT]?)\s*", text.upper())
    if match is None:
        return None
    return round(float(match.group(1)) * _SIZE_SUFFIXES[match.group(2)])


Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples(text: str) -> Samples:
    """Prometheus samples by sample name (counters keep their `_total`).

    Raises ValueError when the text is not Prometheus exposition text.
    """
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def _counter(samples: Samples, name: str) -> list[tuple[dict[str, str], float]]:
    """A counter's samples whether the server wrote `name_total` or `name`."""
    return samples.get(name + "_total") or samples.get(name) or []


def _values(rows: list[tuple[dict[str, str], float]], model: str | None = None) -> list[float]:
    """The finite values, only those of `model` when some rows are labelled with it."""
    if model is not None and any(labels.get("model_name") == model for labels, _ in rows):
        rows = [row for row in rows if row[0].get("model_name") == model]
    return [value for _, value in rows if math.isfinite(value)]


def _sum(values: list[float]) -> float | None:
    return sum(values) if values else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _whole(value: float | None) -> int | None:
    return round(value) if value is not None else None


# llama-server (llama.cpp's tools/server).


def parse_llama_props(data: object) -> Reading:
    """llama-server's GET /props: the context per slot, the slots, the model file, the build.

    A router (several models) answers a stand-in with n_ctx 0 unless asked
    with ?model=; 0 is read as "not said".
    """
    props = _dict(data)
    source = "GET /props"
    settings = _dict(props.get("default_generation_settings"))
    n_ctx = _positive(settings.get("n_ctx"))
    slots = _positive(props.get("total_slots"))
    model_path = _str(props.get("model_path"))
    figures: list[Figure] = []
    if n_ctx is not None:
        figures.append(Figure("context per slot", n_ctx, "tokens", source))
    if slots is not None:
        figures.append(Figure("slots (parallel requests)", slots, "requests", source))
    if model_path and model_path != "none":
        figures.append(Figure("model file", model_path, "", source))
    if props.get("is_sleeping") is True:
        figures.append(Figure("state", "asleep (the model is unloaded while idle)", "", source))
    build = _str(props.get("build_info"))
    if build:
        figures.append(Figure("build", build, "", source))
    return Reading(tuple(figures), n_ctx=n_ctx)


def parse_llama_slots(data: object) -> Reading:
    """llama-server's GET /slots: each slot's context, whether it is busy, the tokens it holds.

    Recent servers say `n_prompt_tokens`: every token in the slot's cache,
    the prompt and what was generated after it. Older ones say only
    `is_processing` (or `state`, 1 for busy).
    """
    source = "GET /slots"
    slots = _dicts(data)
    figures: list[Figure] = []
    busy = 0
    held: list[int] = []
    contexts: list[int] = []
    for index, slot in enumerate(slots):
        slot_id = _int(slot.get("id"))
        name = f"slot {slot_id if slot_id is not None else index}"
        said = slot.get("is_processing")
        processing = said if isinstance(said, bool) else _int(slot.get("state")) not in (None, 0)
        busy += processing
        n_ctx = _positive(slot.get("n_ctx"))
        if n_ctx is not None:
            contexts.append(n_ctx)
            figures.append(Figure(f"{name}: context", n_ctx, "tokens", source))
        figures.append(Figure(f"{name}: state", "busy" if processing else "idle", "", source))
        tokens = _int(slot.get("n_prompt_tokens"))
        if tokens is not None and tokens >= 0:
            held.append(tokens)
            figures.append(Figure(f"{name}: tokens held", tokens, "tokens", source))
    if not slots:
        return Reading()
    used = sum(held) if held and len(held) == len(slots) else None
    fraction = None
    # With several slots their contexts may share one cache or split it
    # (llama.cpp's --kv-unified), and /slots does not say which.
    if used is not None and len(slots) == 1 and contexts:
        fraction = used / contexts[0]
    return Reading(
        tuple(figures),
        n_ctx=max(contexts) if contexts else None,
        kv_used_tokens=used,
        kv_used_fraction=fraction,
        running_requests=busy,
    )


def parse_llama_metrics(text: str) -> Reading:
    """llama-server's GET /metrics (started with --metrics).

    Servers before the 2025 KV cache rework also report the cache's use
    (`llamacpp:kv_cache_usage_ratio`, `llamacpp:kv_cache_tokens`); later
    ones do not. Raises ValueError for text that is not Prometheus text.
    """
    source = "GET /metrics"
    samples = _samples(text)

    def one(name: str) -> float | None:
        return _sum(_values(samples.get(name, [])))

    ratio = one("llamacpp:kv_cache_usage_ratio")
    cached = _whole(one("llamacpp:kv_cache_tokens"))
    running = _whole(one("llamacpp:requests_processing"))
    deferred = _whole(one("llamacpp:requests_deferred"))
    prompt_tokens = _whole(_sum(_values(_counter(samples, "llamacpp:prompt_tokens"))))
    predicted = _whole(_sum(_values(_counter(samples, "llamacpp:tokens_predicted"))))
    # The high watermark of a slot's context. A counter without _total,
    # which the parser reads as llamacpp:n_tokens_max_total.
    most = _whole(_sum(_values(_counter(samples, "llamacpp:n_tokens_max"))))
    figures: list[Figure] = []
    if ratio is not None:
        figures.append(Figure("KV cache used", ratio * 100, "%", source))
    if cached is not None:
        figures.append(Figure("tokens in the KV cache", cached, "tokens", source))
    if running is not None:
        figures.append(Figure("requests being processed", running, "requests", source))
    if deferred is not None:
        figures.append(Figure("requests waiting for a slot", deferred, "requests", source))
    if most is not None:
        figures.append(Figure("most tokens one slot has held", most, "tokens", source))
    if prompt_tokens is not None:
        figures.append(
            Figure("prompt tokens processed since start", prompt_tokens, "tokens", source)
        )
    if predicted is not None:
        figures.append(Figure("tokens generated since start", predicted, "tokens", source))
    return Reading(
        tuple(figures),
        kv_used_tokens=cached,
        kv_used_fraction=ratio,
        running_requests=running,
        waiting_requests=deferred,
    )


# vLLM.


def parse_vllm_metrics(text: str, model: str | None) -> Reading:
    """vLLM's GET /metrics, the rows of `model` where several models are labelled.

    KV cache use is `vllm:kv_cache_usage_perc` (0.9 and later; before,
    `vllm:gpu_cache_usage_perc`), a fraction; engines of one server (data
    parallel) are averaged, request counts summed. The prefix cache
    counters count tokens since the server started. Raises ValueError for
    text that is not Prometheus text.
    """
    source = "GET /metrics"
    samples = _samples(text)

    def gauge(*names: str) -> list[float]:
        for name in names:
            values = _values(samples.get(name, []), model)
            if values:
                return values
        return []

    def counter(*names: str) -> float | None:
        for name in names:
            values = _values(_counter(samples, name), model)
            if values:
                return sum(values)
        return None

    fraction = _mean(gauge("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"))
    running = _whole(_sum(gauge("vllm:num_requests_running")))
    waiting = _whole(_sum(gauge("vllm:num_requests_waiting")))
    hits = counter("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")
    queries = counter("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries")
    old_hit_rate = _mean(gauge("vllm:gpu_prefix_cache_hit_rate"))
    preempted = counter("vllm:num_preemptions")
    capacity = _cache_capacity(samples)
    used = round(fraction * capacity) if fraction is not None and capacity is not None else None

    figures: list[Figure] = []
    if fraction is not None:
        figures.append(Figure("KV cache used", fraction * 100, "%", source))
    if capacity is not None:
        figures.append(Figure("KV cache capacity", capacity, "tokens", source))
    if used is not None:
        figures.append(
            Figure("tokens in the KV cache (from the two above)", used, "tokens", source)
        )
    if running is not None:
        figures.append(Figure("requests running", running, "requests", source))
    if waiting is not None:
        figures.append(Figure("requests waiting", waiting, "requests", source))
    if queries is not None and hits is not None:
        figures.append(Figure("prefix cache: tokens looked up", round(queries), "tokens", source))
        figures.append(Figure("prefix cache: tokens found", round(hits), "tokens", source))
        if queries > 0:
            figures.append(
                Figure("prefix cache hit rate since start", hits / queries * 100, "%", source)
            )
    elif old_hit_rate is not None and old_hit_rate >= 0:  # -1: prefix caching is off
        figures.append(Figure("prefix cache hit rate", old_hit_rate * 100, "%", source))
    if preempted is not None:
        figures.append(
            Figure("requests preempted since start", round(preempted), "requests", source)
        )
    return Reading(
        tuple(figures),
        kv_used_tokens=used,
        kv_used_fraction=fraction,
        running_requests=running,
        waiting_requests=waiting,
    )


def _cache_capacity(samples: Samples) -> int | None:
    """Tokens the KV cache holds when full, from `vllm:cache_config_info`'s labels."""
    total = 0
    for labels, _ in samples.get("vllm:cache_config_info", []):
        blocks = labels.get("num_gpu_blocks", "")
        size = labels.get("block_size", "")
        if not (blocks.isdigit() and size.isdigit()):
            return None
        total += int(blocks) * int(size)
    return total or None


# Ollama.


def _ollama_details(entry: dict[str, Any]) -> str:
    details = _dict(entry.get("details"))
    parts = [
        _str(details.get("quantization_level")),
        _str(details.get("family")),
        _str(details.get("parameter_size")),
    ]
    return " · ".join(part for part in parts if part)


def _ollama_names(model: str) -> set[str]:
    return {model, model + ":latest"} if ":" not in model else {model}


def parse_ollama_ps(data: object, model: str) -> Reading:
    """Ollama's GET /api/ps: how much of `model` is loaded, and where, while it is loaded.

    `size` is all the memory the loaded model takes (weights, KV cache,
    buffers), `size_vram` the part of it in GPU memory; `context_length`
    (newer servers) the context it was loaded with.
    """
    source = "GET /api/ps"
    loaded = _dicts(_dict(data).get("models"))
    names = _ollama_names(model)
    entry = next((e for e in loaded if {_str(e.get("name")), _str(e.get("model"))} & names), None)
    figures: list[Figure] = []
    if entry is None:
        figures.append(Figure("models loaded", len(loaded), "", source))
        return Reading(tuple(figures), note=f"{model} is not loaded now")
    size = _int(entry.get("size"))
    vram = _int(entry.get("size_vram"))
    context = _positive(entry.get("context_length"))
    if size is not None:
        figures.append(Figure("memory the loaded model takes", size, "bytes", source))
    if vram is not None:
        figures.append(Figure("of it in GPU memory", vram, "bytes", source))
    if size is not None and vram is not None and size > 0:
        figures.append(Figure("of it in system memory", max(size - vram, 0), "bytes", source))
        figures.append(Figure("share on the GPU", vram / size * 100, "%", source))
    if context is not None:
        figures.append(Figure("context it was loaded with", context, "tokens", source))
    details = _ollama_details(entry)
    if details:
        figures.append(Figure("model", details, "", source))
    expires = _str(entry.get("expires_at"))
    if expires:
        figures.append(Figure("unloads at", expires, "", source))
    return Reading(tuple(figures), n_ctx=context)


# LM Studio.


def _lmstudio_details(entry: dict[str, Any]) -> str:
    kind = _str(entry.get("type"))
    parts = [
        _str(entry.get("quantization")),
        _str(entry.get("arch")),
        kind if kind not in ("", "llm", "vlm") else "",
        _str(entry.get("state")),
    ]
    return " · ".join(part for part in parts if part)


def parse_lmstudio_model(data: object) -> Reading:
    """LM Studio's GET /api/v0/models/{id}: its architecture, quantisation, state and contexts.

    `loaded_context_length` (sent for a loaded model, though the docs do not
    list it) is the context it was loaded with; `max_context_length` the
    model's own.
    """
    entry = _dict(data)
    source = "GET /api/v0/models/{id}"
    if not entry:
        return Reading()
    loaded = _positive(entry.get("loaded_context_length"))
    longest = _positive(entry.get("max_context_length"))
    figures: list[Figure] = []
    for key, label in (
        ("state", "state"),
        ("arch", "architecture"),
        ("quantization", "quantization"),
        ("compatibility_type", "format"),
    ):
        value = _str(entry.get(key))
        if value:
            figures.append(Figure(label, value, "", source))
    if loaded is not None:
        figures.append(Figure("context it was loaded with", loaded, "tokens", source))
    if longest is not None:
        figures.append(Figure("longest context the model takes", longest, "tokens", source))
    return Reading(tuple(figures), n_ctx=loaded)


# Identification.


def _entries(listing: object, where: str) -> list[dict[str, Any]]:
    """The entries of an OpenAI model list; NotOpenAICompatibleError when it is not one."""
    if not isinstance(listing, dict) or "data" not in listing:
        raise NotOpenAICompatibleError(
            f"{where} is not an OpenAI-compatible server (/v1/models is not a model list)"
        )
    data = listing["data"]
    if data is None:  # Ollama with no model pulled
        return []
    if not isinstance(data, list):
        raise NotOpenAICompatibleError(
            f"{where} is not an OpenAI-compatible server (/v1/models is not a model list)"
        )
    return [entry for entry in data if isinstance(entry, dict) and _str(entry.get("id"))]


def _plain_model(entry: dict[str, Any]) -> RemoteModel:
    """What any server's /v1/models entry says, in the fields some servers add."""
    meta = _dict(entry.get("meta"))
    context = _first(
        _positive(entry.get("max_model_len")),
        _positive(entry.get("context_length")),
        _positive(entry.get("max_context_length")),
        _positive(meta.get("n_ctx")),
        _positive(meta.get("n_ctx_train")),
    )
    return RemoteModel(
        id=_str(entry.get("id")),
        context_length=context,
        size_bytes=_first(_positive(meta.get("size")), _positive(meta.get("size_bytes"))),
        n_params=_positive(meta.get("n_params")),
        details=_str(meta.get("architecture")),
    )


def _llama_models(entries: list[dict[str, Any]], props: dict[str, Any]) -> tuple[RemoteModel, ...]:
    n_ctx = _positive(_dict(props.get("default_generation_settings")).get("n_ctx"))
    models = []
    for entry in entries:
        model = _plain_model(entry)
        status = _str(_dict(entry.get("status")).get("value"))  # router mode
        if n_ctx is not None and len(entries) == 1:
            model = replace(model, context_length=n_ctx)
        models.append(replace(model, details=status))
    return tuple(models)


def _vllm_models(entries: list[dict[str, Any]]) -> tuple[RemoteModel, ...]:
    models = []
    for entry in entries:
        root = _str(entry.get("root"))
        details = root if root and root != entry.get("id") else ""
        models.append(replace(_plain_model(entry), details=details))
    return tuple(models)


def _ollama_models(entries: list[dict[str, Any]], tags: dict[str, Any]) -> tuple[RemoteModel, ...]:
    local = _dicts(tags.get("models"))
    models = []
    for entry in entries:
        model = _plain_model(entry)
        names = _ollama_names(model.id)
        tag = next((t for t in local if {_str(t.get("model")), _str(t.get("name"))} & names), None)
        if tag is not None:
            size = _str(_dict(tag.get("details")).get("parameter_size"))
            model = replace(
                model,
                size_bytes=_positive(tag.get("size")),
                n_params=parse_parameter_size(size) if size else None,
                details=_ollama_details(tag),
            )
        models.append(model)
    return tuple(models)


def _lmstudio_models(
    entries: list[dict[str, Any]], native: list[dict[str, Any]]
) -> tuple[RemoteModel, ...]:
    by_id = {_str(e.get("id")): e for e in native}
    models = []
    for entry in entries:
        model = _plain_model(entry)
        info = by_id.get(model.id)
        if info is not None:
            model = replace(
                model,
                context_length=_first(
                    _positive(info.get("loaded_context_length")),
                    _positive(info.get("max_context_length")),
                ),
                details=_lmstudio_details(info),
            )
        models.append(model)
    return tuple(models)


def _looks_like_llama_props(props: object) -> bool:
    if not isinstance(props, dict):
        return False
    if isinstance(props.get("default_generation_settings"), dict):
        return True
    return isinstance(props.get("build_info"), str) and (
        "total_slots" in props or props.get("role") == "router"
    )


def _version_of(answer: object) -> str | None:
    version = _dict(answer).get("version")
    return version if isinstance(version, str) and version else None


def identify(client: httpx.Client, base_url: str, api_key: str | None) -> Identity:
    """Which kind of server answers at `base_url`, and the models it offers.

    Asks GET /v1/models first (every OpenAI-compatible server has it), then
    what only one kind has: kvchat's /kvchat/memory, llama-server's /props,
    vLLM's `owned_by` and /version, Ollama's /api/version and /api/tags, LM
    Studio's /api/v0/models. Raises RemoteError (a subclass of it) with words
    for a person.
    """
    base = normalise_base_url(base_url)
    server = _Server(client, base, api_key)
    where = _where(base)
    try:
        listing = server.get_json("/v1/models")
    except BadStatusError as exc:
        if exc.status == 404:
            raise NotOpenAICompatibleError(
                f"{where} is not an OpenAI-compatible server (no /v1/models)"
            ) from None
        raise
    except NotJsonError:
        raise NotOpenAICompatibleError(
            f"{where} is not an OpenAI-compatible server (/v1/models is not a model list)"
        ) from None
    entries = _entries(listing, where)
    owners = {_str(entry.get("owned_by")) for entry in entries}

    def identity(kind: ServerKind, version: str, models: Iterable[RemoteModel]) -> Identity:
        label = _LABELS[kind]
        if kind in ("vllm", "ollama") and version:
            label = f"{label} {version}"
        return Identity(kind, label, version, tuple(models), base, api_key or None)

    report = server.probe("/kvchat/memory")
    if isinstance(report, dict) and report.get("kvchat") is True:
        return identity("kvchat", _str(report.get("version")), map(_plain_model, entries))
    if "kvchat" in owners:  # a kvchat from before /kvchat/memory
        return identity("kvchat", "", map(_plain_model, entries))

    if "vllm" not in owners:
        props = server.probe("/props")
        if _looks_like_llama_props(props) or "llamacpp" in owners:
            props = _dict(props)
            return identity(
                "llama-server", _str(props.get("build_info")), _llama_models(entries, props)
            )

    if "vllm" in owners:
        version = _version_of(server.probe("/version")) or ""
        return identity("vllm", version, _vllm_models(entries))

    ollama_version = _version_of(server.probe("/api/version"))
    if ollama_version is not None:
        tags = server.probe("/api/tags")
        if isinstance(tags, dict) and isinstance(tags.get("models"), list):
            return identity("ollama", ollama_version, _ollama_models(entries, tags))

    native = server.probe("/api/v0/models")
    native_entries = _dicts(_dict(native).get("data"))
    lmstudio_keys = {"arch", "quantization", "state", "max_context_length"}
    if any(lmstudio_keys & entry.keys() for entry in native_entries):
        return identity("lmstudio", "", _lmstudio_models(entries, native_entries))

    if any("max_model_len" in entry for entry in entries):
        reported = _version_of(server.probe("/version"))
        if reported is not None:
            return identity("vllm", reported, _vllm_models(entries))

    return identity("openai", "", map(_plain_model, entries))


# Memory.


def _combine(
    kind: ServerKind, shown: list[Reading], charted: list[Reading], attempts: _Attempts
) -> ServerMemory:
    """Figures in `shown`'s order; each charted value from the first of `charted` that says it."""

    def pick(name: str) -> Any:
        return _first(*(getattr(reading, name) for reading in charted))

    return ServerMemory(
        kind=kind,
        figures=tuple(figure for reading in shown for figure in reading.figures),
        n_ctx=pick("n_ctx"),
        kv_used_tokens=pick("kv_used_tokens"),
        kv_used_fraction=pick("kv_used_fraction"),
        running_requests=pick("running_requests"),
        waiting_requests=pick("waiting_requests"),
        note=next((reading.note for reading in shown if reading.note), ""),
        unavailable=tuple(attempts.unavailable),
    )


def _model_reading(identity: Identity, model_id: str) -> Reading:
    model = identity.model(model_id)
    if model is None:
        return Reading()
    source = "GET /v1/models"
    figures = []
    if model.size_bytes is not None:
        figures.append(Figure("model size", model.size_bytes, "bytes", source))
    if model.n_params is not None:
        figures.append(Figure("parameters", model.n_params, "", source))
    return Reading(tuple(figures))


def _sample_llama(attempts: _Attempts, identity: Identity, model_id: str) -> ServerMemory:
    props = attempts.json("/props")
    params: dict[str, str] | None = None
    if _dict(props).get("role") == "router":
        # A router answers for the model named, and must not load it for a look.
        params = {"model": model_id, "autoload": "false"}
        props = attempts.json("/props", params)
    slots = attempts.json("/slots", params)
    metrics = attempts.metrics("/metrics", parse_llama_metrics, params)
    props_reading = parse_llama_props(props)
    slots_reading = parse_llama_slots(slots)
    model_reading = _model_reading(identity, model_id)
    return _combine(
        "llama-server",
        shown=[props_reading, model_reading, slots_reading, metrics],
        charted=[metrics, props_reading, slots_reading],
        attempts=attempts,
    )


def _sample_vllm(attempts: _Attempts, identity: Identity, model_id: str) -> ServerMemory:
    metrics = attempts.metrics("/metrics", lambda text: parse_vllm_metrics(text, model_id))
    model = identity.model(model_id)
    context = model.context_length if model is not None else None
    listed = Reading(
        (Figure("longest context (max_model_len)", context, "tokens", "GET /v1/models"),)
        if context is not None
        else (),
        n_ctx=context,
    )
    return _combine("vllm", [listed, metrics], [metrics, listed], attempts)


def _sample_ollama(attempts: _Attempts, identity: Identity, model_id: str) -> ServerMemory:
    running = attempts.json("/api/ps")
    reading = parse_ollama_ps(running, model_id) if running is not None else Reading()
    return _combine("ollama", [reading], [reading], attempts)


def _sample_lmstudio(attempts: _Attempts, identity: Identity, model_id: str) -> ServerMemory:
    # An id with a "/" in it ("qwen/qwen3-8b") goes as one path segment.
    path = "/api/v0/models/" + quote(model_id, safe="")
    entry = attempts.json(path, note=False)
    if not isinstance(entry, dict) or _str(entry.get("id")) != model_id:
        listing = attempts.json("/api/v0/models")
        entry = next(
            (e for e in _dicts(_dict(listing).get("data")) if e.get("id") == model_id), None
        )
        if entry is None and listing is not None:
            attempts.unavailable.append(f"GET /api/v0/models: it does not list {model_id}")
    reading = parse_lmstudio_model(entry)
    return _combine("lmstudio", [reading], [reading], attempts)


def _sample_kvchat(attempts: _Attempts, identity: Identity, model_id: str) -> ServerMemory:
    report = attempts.json("/kvchat/memory")
    if not isinstance(report, dict):
        return ServerMemory(
            kind="kvchat",
            note="this kvchat server gives no memory report",
            unavailable=tuple(attempts.unavailable),
        )
    return ServerMemory(kind="kvchat", kvchat_report=report)


def sample_memory(client: httpx.Client, identity: Identity, model_id: str) -> ServerMemory:
    """What the server that `identity` describes reports about its memory now.

    An endpoint that fails (not there, not enabled, not JSON, too slow) is
    skipped and listed in `unavailable`. Raises UnreachableError when the server
    cannot be reached at all.
    """
    if identity.kind == "openai":
        return ServerMemory(kind="openai", note=NO_MEMORY_REPORT)
    attempts = _Attempts(_Server(client, identity.base_url, identity.api_key))
    sampler = {
        "llama-server": _sample_llama,
        "vllm": _sample_vllm,
        "ollama": _sample_ollama,
        "lmstudio": _sample_lmstudio,
        "kvchat": _sample_kvchat,
    }[identity.kind]
    return sampler(attempts, identity, model_id)
