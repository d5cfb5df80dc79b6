"""engine/remote_servers.py: telling servers apart and reading their memory figures.

llama-server, vLLM, Ollama and LM Studio cannot run on this machine, so their
answers are recorded under recorded/ from each project's documentation and
source (every file names its origin in "source", or in a first "# source:"
line) and served through httpx.MockTransport.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvchat.engine.remote_servers import (
    NO_MEMORY_REPORT,
    AccessRefusedError,
    BadAddressError,
    BadStatusError,
    Identity,
    NoAnswerInTimeError,
    NotOpenAICompatibleError,
    RemoteError,
    RemoteModel,
    UnreachableError,
    identify,
    is_this_machine,
    normalise_base_url,
    parse_llama_metrics,
    parse_llama_props,
    parse_llama_slots,
    parse_lmstudio_model,
    parse_ollama_ps,
    parse_parameter_size,
    parse_vllm_metrics,
    plain_http_key_warning,
    sample_memory,
)

RECORDED = Path(__file__).parent / "recorded"
BASE = "http://gpu-box:8080"
TIMEOUT_S = 5.0

Handler = Callable[[httpx.Request], httpx.Response]


def recorded(name: str) -> Any:
    """A recorded JSON answer (the file holds it under "answer", beside its "source")."""
    return json.loads((RECORDED / name).read_text(encoding="utf-8"))["answer"]


def recorded_text(name: str) -> str:
    return (RECORDED / name).read_text(encoding="utf-8")


def not_found(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404, json={"detail": "Not Found"})


def lmstudio_unknown(request: httpx.Request) -> httpx.Response:
    # A server that answers a path it does not know with 200 and an error
    # body, as LM Studio does: only the shape of an answer identifies.
    path = request.url.path
    return httpx.Response(200, json={"error": f"Unexpected endpoint or method. (GET {path})"})


class Server:
    """A MockTransport server: answers by path, and keeps every request it saw."""

    def __init__(self, routes: dict[str, Any], otherwise: Handler = not_found) -> None:
        self.routes = routes
        self.otherwise = otherwise
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.routes.get(request.url.path)
        if answer is None:
            return self.otherwise(request)
        if callable(answer):
            response: httpx.Response = answer(request)
            return response
        if isinstance(answer, httpx.Response):
            return answer
        if isinstance(answer, str):
            return httpx.Response(200, text=answer)
        return httpx.Response(200, json=answer)

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self), timeout=TIMEOUT_S, **options)

    def paths(self) -> list[str]:
        return [request.url.path for request in self.requests]


def raising(exc: Exception) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.Client(transport=httpx.MockTransport(handler), timeout=TIMEOUT_S)


def figures(memory: Any) -> dict[str, Any]:
    return {figure.label: figure.value for figure in memory.figures}


LLAMA_ROUTES = {
    "/v1/models": recorded("llama_models.json"),
    "/props": recorded("llama_props.json"),
}
VLLM_ROUTES = {
    "/v1/models": recorded("vllm_models.json"),
    "/version": recorded("vllm_version.json"),
}
OLLAMA_ROUTES = {
    "/v1/models": recorded("ollama_v1_models.json"),
    "/api/version": recorded("ollama_version.json"),
    "/api/tags": recorded("ollama_tags.json"),
}
LMSTUDIO_ROUTES = {
    "/v1/models": recorded("lmstudio_v1_models.json"),
    "/api/v0/models": recorded("lmstudio_models.json"),
}
KVCHAT_ROUTES = {
    "/v1/models": recorded("kvchat_models.json"),
    "/kvchat/memory": {"kvchat": True, "version": "0.1.0", "slots": []},
}
# How llama-server answers an endpoint it was started without
# (tools/server: format_error_response with ERROR_TYPE_NOT_SUPPORTED).
LLAMA_NOT_SUPPORTED = {
    "error": {
        "code": 501,
        "message": "This server does not support metrics endpoint. Start it with `--metrics`",
        "type": "not_supported_error",
    }
}


# llama-server's answers.


def test_llama_props_give_the_context_per_slot_and_the_model_file() -> None:
    reading = parse_llama_props(recorded("llama_props.json"))
    assert reading.n_ctx == 1024
    shown = {figure.label: (figure.value, figure.unit, figure.source) for figure in reading.figures}
    assert shown["context per slot"] == (1024, "tokens", "GET /props")
    assert shown["slots (parallel requests)"] == (1, "requests", "GET /props")
    assert shown["model file"][0] == "../models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"
    assert shown["build"][0] == "b(build number)-(build commit hash)"
    assert "state" not in shown  # is_sleeping is false


def test_a_router_props_stand_in_says_no_context() -> None:
    reading = parse_llama_props(recorded("llama_props_router.json"))
    assert reading.n_ctx is None
    labels = [figure.label for figure in reading.figures]
    assert labels == ["build"]


def test_llama_slots_of_the_readme_say_who_is_busy_but_not_what_is_held() -> None:
    reading = parse_llama_slots(recorded("llama_slots_readme.json"))
    assert reading.running_requests == 2
    assert reading.n_ctx == 65536
    assert reading.kv_used_tokens is None
    assert reading.kv_used_fraction is None
    shown = {figure.label: figure.value for figure in reading.figures}
    assert shown["slot 0: state"] == "busy"
    assert shown["slot 1: context"] == 65536


def test_llama_slots_of_the_source_say_the_tokens_a_slot_holds() -> None:
    reading = parse_llama_slots(recorded("llama_slots_source.json"))
    assert reading.kv_used_tokens == 1290
    assert reading.kv_used_fraction == pytest.approx(1290 / 8192)
    assert reading.running_requests == 0
    shown = {figure.label: figure.value for figure in reading.figures}
    assert shown["slot 0: tokens held"] == 1290
    assert shown["slot 0: state"] == "idle"


def test_older_llama_slots_say_busy_with_a_state_number() -> None:
    # examples/server/README.md of 2024: slot[i].state is 0 when idle, 1 when processing.
    reading = parse_llama_slots([{"id": 0, "n_ctx": 2048, "state": 1}, {"id": 1, "state": 0}])
    assert reading.running_requests == 1


def test_llama_slots_that_are_not_a_list_say_nothing() -> None:
    assert parse_llama_slots(LLAMA_NOT_SUPPORTED).figures == ()


def test_current_llama_metrics_count_requests_but_not_the_cache() -> None:
    reading = parse_llama_metrics(recorded_text("llama_metrics.txt"))
    assert reading.running_requests == 1
    assert reading.waiting_requests == 2
    assert reading.kv_used_fraction is None
    assert reading.kv_used_tokens is None
    shown = {figure.label: figure.value for figure in reading.figures}
    assert shown["prompt tokens processed since start"] == 33065
    assert shown["tokens generated since start"] == 7801
    assert shown["most tokens one slot has held"] == 2048


def test_llama_metrics_of_2024_report_the_cache() -> None:
    reading = parse_llama_metrics(recorded_text("llama_metrics_2024.txt"))
    assert reading.kv_used_fraction == pytest.approx(0.523438)
    assert reading.kv_used_tokens == 2144
    assert reading.running_requests == 1
    assert reading.waiting_requests == 0
    used = next(figure for figure in reading.figures if figure.label == "KV cache used")
    assert used.value == pytest.approx(52.3438)
    assert (used.unit, used.source) == ("%", "GET /metrics")


def test_metrics_parsers_refuse_what_is_not_prometheus_text() -> None:
    with pytest.raises(ValueError):
        parse_llama_metrics("<html><body>Not Found</body></html>")
    with pytest.raises(ValueError):
        parse_vllm_metrics('{"error": "x"}', None)


# vLLM's answers.


def test_vllm_metrics_report_the_cache_the_queue_and_the_prefix_cache() -> None:
    reading = parse_vllm_metrics(recorded_text("vllm_metrics.txt"), "qwen-small")
    assert reading.kv_used_fraction == pytest.approx(0.25)
    assert reading.running_requests == 2
    assert reading.waiting_requests == 1
    assert reading.kv_used_tokens == 4096 * 16 // 4
    shown = {figure.label: figure.value for figure in reading.figures}
    assert shown["KV cache capacity"] == 4096 * 16
    # The current counters, not their deprecated gpu_ twins added on top.
    assert shown["prefix cache: tokens looked up"] == 8192
    assert shown["prefix cache: tokens found"] == 6144
    assert shown["prefix cache hit rate since start"] == pytest.approx(75.0)
    assert shown["requests preempted since start"] == 3


def test_vllm_v0_metrics_use_the_old_names() -> None:
    text = recorded_text("vllm_metrics_v0.txt")
    reading = parse_vllm_metrics(text, "meta-llama/Llama-3.1-8B-Instruct")
    assert reading.kv_used_fraction == pytest.approx(0.5)
    assert reading.kv_used_tokens == 8000
    assert reading.running_requests == 1
    assert reading.waiting_requests == 0
    shown = {figure.label: figure.value for figure in reading.figures}
    assert shown["prefix cache hit rate"] == pytest.approx(40.0)
    assert "prefix cache hit rate since start" not in shown


# Two models' rows in one text, as a proxy in front of two vLLM servers shows them.
TWO_MODELS = """\
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="small"} 0.1
vllm:kv_cache_usage_perc{engine="0",model_name="large"} 0.9
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="small"} 1.0
vllm:num_requests_running{engine="0",model_name="large"} 4.0
"""


def test_vllm_metrics_keep_the_rows_of_the_model_asked_for() -> None:
    assert parse_vllm_metrics(TWO_MODELS, "large").kv_used_fraction == pytest.approx(0.9)
    assert parse_vllm_metrics(TWO_MODELS, "small").running_requests == 1
    # A model no row names: all rows count (fractions averaged, requests summed).
    other = parse_vllm_metrics(TWO_MODELS, "other")
    assert other.kv_used_fraction == pytest.approx(0.5)
    assert other.running_requests == 5


# Ollama's and LM Studio's answers.


def test_ollama_ps_says_where_the_loaded_model_is() -> None:
    reading = parse_ollama_ps(recorded("ollama_ps.json"), "mistral")
    assert reading.n_ctx == 4096
    shown = {figure.label: (figure.value, figure.unit) for figure in reading.figures}
    assert shown["memory the loaded model takes"] == (5137025024, "bytes")
    assert shown["of it in GPU memory"] == (3852768768, "bytes")
    assert shown["of it in system memory"] == (5137025024 - 3852768768, "bytes")
    assert shown["share on the GPU"][0] == pytest.approx(3852768768 / 5137025024 * 100)
    assert shown["model"] == ("Q4_0 · llama · 7.2B", "")
    assert shown["unloads at"] == ("2024-06-04T14:38:31.83753-07:00", "")
    assert reading.note == ""


def test_ollama_ps_says_when_the_model_is_not_loaded() -> None:
    reading = parse_ollama_ps(recorded("ollama_ps.json"), "llama3.2:latest")
    assert reading.note == "llama3.2:latest is not loaded now"
    assert reading.n_ctx is None
    assert {figure.label: figure.value for figure in reading.figures} == {"models loaded": 1}


def test_lmstudio_model_of_the_docs() -> None:
    reading = parse_lmstudio_model(recorded("lmstudio_model.json"))
    shown = {figure.label: figure.value for figure in reading.figures}
    assert shown == {
        "state": "not-loaded",
        "architecture": "qwen2_vl",
        "quantization": "4bit",
        "format": "mlx",
        "longest context the model takes": 32768,
    }
    assert reading.n_ctx is None


def test_a_loaded_lmstudio_model_says_its_context() -> None:
    reading = parse_lmstudio_model(recorded("lmstudio_model_loaded.json"))
    assert reading.n_ctx == 8192
    shown = {figure.label: figure.value for figure in reading.figures}
    assert shown["context it was loaded with"] == 8192
    assert shown["state"] == "loaded"


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("7.6B", 7_600_000_000),
        ("494.03M", 494_030_000),
        ("1.5T", 1_500_000_000_000),
        ("137M", 137_000_000),
        ("", None),
        ("many", None),
    ],
)
def test_ollama_parameter_sizes(text: str, count: int | None) -> None:
    assert parse_parameter_size(text) == count


# Identification.


def test_llama_server_is_told_by_its_props() -> None:
    server = Server(LLAMA_ROUTES)
    with server.client() as client:
        found = identify(client, BASE, None)
    assert (found.kind, found.label) == ("llama-server", "llama-server")
    assert found.version == "b(build number)-(build commit hash)"
    assert found.models == (
        RemoteModel(
            id="../models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",
            context_length=1024,
            size_bytes=4912898304,
            n_params=8030261312,
        ),
    )


def test_vllm_is_told_by_owned_by_and_its_version() -> None:
    server = Server(VLLM_ROUTES)
    with server.client() as client:
        found = identify(client, BASE, None)
    assert (found.kind, found.label, found.version) == ("vllm", "vLLM 0.6.3", "0.6.3")
    assert found.models == (
        RemoteModel(id="qwen-small", context_length=32768, details="Qwen/Qwen2.5-1.5B-Instruct"),
    )


def test_ollama_is_told_by_its_version_and_tags() -> None:
    server = Server(OLLAMA_ROUTES)
    with server.client() as client:
        found = identify(client, BASE, None)
    assert (found.kind, found.label, found.version) == ("ollama", "Ollama 0.5.1", "0.5.1")
    first = found.models[0]
    assert first == RemoteModel(
        id="deepseek-r1:latest",
        size_bytes=4683075271,
        n_params=7_600_000_000,
        details="Q4_K_M · qwen2 · 7.6B",
    )
    assert [model.id for model in found.models] == ["deepseek-r1:latest", "llama3.2:latest"]


def test_lmstudio_is_told_by_its_native_model_list() -> None:
    server = Server(LMSTUDIO_ROUTES, otherwise=lmstudio_unknown)
    with server.client() as client:
        found = identify(client, BASE, None)
    assert (found.kind, found.label, found.version) == ("lmstudio", "LM Studio", "")
    by_id = {model.id: model for model in found.models}
    assert by_id["meta-llama-3.1-8b-instruct"] == RemoteModel(
        id="meta-llama-3.1-8b-instruct",
        context_length=131072,
        details="Q4_K_M · llama · not-loaded",
    )
    assert by_id["text-embedding-nomic-embed-text-v1.5"].details == (
        "Q4_0 · nomic-bert · embeddings · not-loaded"
    )


def test_kvchat_is_told_by_its_memory_report() -> None:
    server = Server(KVCHAT_ROUTES)
    with server.client() as client:
        found = identify(client, BASE, None)
    assert (found.kind, found.label, found.version) == ("kvchat", "kvchat", "0.1.0")
    assert found.models == (
        RemoteModel(
            id="qwen2.5-0.5b-instruct-q4_k_m",
            context_length=4096,
            size_bytes=397808192,
            n_params=494032768,
            details="qwen2",
        ),
    )


def test_anything_else_with_a_model_list_is_an_openai_compatible_server() -> None:
    listing = {"object": "list", "data": [{"id": "gpt-x", "object": "model", "owned_by": "org"}]}
    server = Server({"/v1/models": listing}, otherwise=lmstudio_unknown)
    with server.client() as client:
        found = identify(client, BASE, None)
    assert (found.kind, found.label, found.version) == ("openai", "an OpenAI-compatible server", "")
    assert found.models == (RemoteModel(id="gpt-x"),)


@pytest.mark.parametrize(
    ("typed", "base"),
    [
        ("http://gpu-box:8080", "http://gpu-box:8080"),
        ("http://gpu-box:8080/", "http://gpu-box:8080"),
        ("http://gpu-box:8080/v1", "http://gpu-box:8080"),
        ("  https://host:8000/v1/ ", "https://host:8000"),
        ("gpu-box:8080", "http://gpu-box:8080"),
        ("https://proxy.example/llm/v1", "https://proxy.example/llm"),
        ("http://[::1]:8080/v1", "http://[::1]:8080"),
    ],
)
def test_addresses_are_normalised(typed: str, base: str) -> None:
    assert normalise_base_url(typed) == base


@pytest.mark.parametrize("typed", ["ftp://host", "http://", "http://host:port", "http://h/?x=1"])
def test_what_is_not_an_address_is_refused(typed: str) -> None:
    with pytest.raises(BadAddressError):
        normalise_base_url(typed)


def test_identify_asks_at_the_normalised_address() -> None:
    server = Server(VLLM_ROUTES)
    with server.client() as client:
        found = identify(client, BASE + "/v1/", None)
    assert found.base_url == BASE
    assert str(server.requests[0].url) == BASE + "/v1/models"


def test_the_key_goes_as_a_bearer_token_on_every_request() -> None:
    server = Server({**LLAMA_ROUTES, "/slots": recorded("llama_slots_source.json")})
    with server.client() as client:
        found = identify(client, BASE, "sk-secret")
        sample_memory(client, found, found.models[0].id)
    assert len(server.requests) >= 4
    assert {request.headers.get("authorization") for request in server.requests} == {
        "Bearer sk-secret"
    }
    assert "sk-secret" not in repr(found)


@pytest.mark.parametrize("key", [None, ""])
def test_no_key_no_authorization_header(key: str | None) -> None:
    server = Server(LLAMA_ROUTES)
    with server.client() as client:
        identify(client, BASE, key)
    assert server.requests
    assert all("authorization" not in request.headers for request in server.requests)


# Errors, in words for a person.


def test_connection_refused() -> None:
    cause = ConnectionRefusedError(111, "Connection refused")
    error = httpx.ConnectError("[Errno 111] Connection refused")
    error.__cause__ = cause
    with raising(error) as client, pytest.raises(UnreachableError) as caught:
        identify(client, BASE, None)
    assert str(caught.value) == "cannot reach gpu-box:8080 (connection refused)"


def test_connection_refused_told_only_in_words() -> None:
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    with raising(refused) as client, pytest.raises(UnreachableError) as caught:
        identify(client, "http://10.0.0.7:11434", None)
    assert str(caught.value) == "cannot reach 10.0.0.7:11434 (connection refused)"


def test_a_name_that_does_not_resolve() -> None:
    error = httpx.ConnectError("[Errno -2] Name or service not known")
    error.__cause__ = socket.gaierror(-2, "Name or service not known")
    with raising(error) as client, pytest.raises(UnreachableError) as caught:
        identify(client, BASE, None)
    assert str(caught.value) == "gpu-box does not resolve"


@pytest.mark.parametrize(
    "words",
    [
        "[Errno -3] Temporary failure in name resolution",
        "[Errno 8] nodename nor servname provided, or not known",
        "[Errno 11001] getaddrinfo failed",
    ],
)
def test_names_that_do_not_resolve_as_each_system_says_it(words: str) -> None:
    with raising(httpx.ConnectError(words)) as client, pytest.raises(UnreachableError) as caught:
        identify(client, BASE, None)
    assert str(caught.value) == "gpu-box does not resolve"


def test_a_certificate_that_is_not_trusted() -> None:
    cause = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"
    )
    cause.verify_message = "self-signed certificate"
    error = httpx.ConnectError(str(cause))
    error.__cause__ = cause
    with raising(error) as client, pytest.raises(UnreachableError) as caught:
        identify(client, "https://gpu-box:8443", None)
    assert str(caught.value) == "TLS error: certificate verify failed (self-signed certificate)"


def test_https_to_a_plain_http_server() -> None:
    error = httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)")
    with raising(error) as client, pytest.raises(UnreachableError) as caught:
        identify(client, "https://gpu-box:8080", None)
    assert str(caught.value) == (
        "TLS error: wrong version number (does the server speak plain http? try http://)"
    )


def test_no_answer_in_time() -> None:
    late = httpx.ReadTimeout("timed out")
    with raising(late) as client, pytest.raises(NoAnswerInTimeError) as caught:
        identify(client, BASE, None)
    assert str(caught.value) == "the server did not answer within 5 s"


def test_no_answer_to_connect() -> None:
    late = httpx.ConnectTimeout("timed out")
    with raising(late) as client, pytest.raises(UnreachableError) as caught:
        identify(client, BASE, None)
    assert str(caught.value) == "cannot reach gpu-box:8080 (no answer within 5 s)"


def test_a_refused_key() -> None:
    refusal = httpx.Response(401, json={"error": {"message": "Invalid API Key", "code": 401}})
    server = Server({"/v1/models": refusal})
    with server.client() as client, pytest.raises(AccessRefusedError) as caught:
        identify(client, BASE, "wrong")
    assert str(caught.value) == "the server refused the API key (401)"


def test_a_key_that_is_wanted() -> None:
    server = Server({"/v1/models": httpx.Response(401)})
    with server.client() as client, pytest.raises(AccessRefusedError) as caught:
        identify(client, BASE, None)
    assert str(caught.value) == "the server wants an API key (401)"


def test_forbidden() -> None:
    refusal = httpx.Response(403, json={"error": {"message": "your address is not allowed"}})
    server = Server({"/v1/models": refusal})
    with server.client() as client, pytest.raises(AccessRefusedError) as caught:
        identify(client, BASE, "key")
    assert str(caught.value) == "403 Forbidden: your address is not allowed"


def test_a_server_without_a_model_list() -> None:
    server = Server({})
    with server.client() as client, pytest.raises(NotOpenAICompatibleError) as caught:
        identify(client, BASE, None)
    assert str(caught.value) == "gpu-box:8080 is not an OpenAI-compatible server (no /v1/models)"


def test_a_web_page_where_the_model_list_should_be() -> None:
    server = Server({"/v1/models": "<html><body>Welcome to nginx!</body></html>"})
    with server.client() as client, pytest.raises(NotOpenAICompatibleError) as caught:
        identify(client, BASE, None)
    assert str(caught.value) == (
        "gpu-box:8080 is not an OpenAI-compatible server (/v1/models is not a model list)"
    )


def test_a_server_error_is_told_with_its_own_words() -> None:
    failure = httpx.Response(503, json={"error": {"code": 503, "message": "Loading model"}})
    server = Server({"/v1/models": failure})
    with server.client() as client, pytest.raises(BadStatusError) as caught:
        identify(client, BASE, None)
    assert (
        str(caught.value) == "the server could not answer (503 Service Unavailable: Loading model)"
    )
    assert caught.value.status == 503


def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else() -> None:
    moved = httpx.Response(302, headers={"location": "https://elsewhere.example/v1/models"})
    server = Server({"/v1/models": moved}, otherwise=lambda r: httpx.Response(200, json={}))
    # Even a client that follows redirects by default does not follow them here.
    with server.client(follow_redirects=True) as client, pytest.raises(BadStatusError) as caught:
        identify(client, BASE, "sk-secret")
    assert [str(request.url) for request in server.requests] == [BASE + "/v1/models"]
    assert "does not follow redirects" in str(caught.value)
    assert "https://elsewhere.example/v1/models" in str(caught.value)
    assert isinstance(caught.value, RemoteError)


def test_a_figure_endpoint_that_redirects_is_skipped() -> None:
    server = Server(
        {
            **LLAMA_ROUTES,
            "/slots": recorded("llama_slots_source.json"),
            "/metrics": httpx.Response(307, headers={"location": "http://other-host/metrics/"}),
        }
    )
    with server.client(follow_redirects=True) as client:
        found = identify(client, BASE, "sk-secret")
        memory = sample_memory(client, found, found.models[0].id)
    assert all(request.url.host == "gpu-box" for request in server.requests)
    assert len(memory.unavailable) == 1
    assert memory.unavailable[0].startswith("GET /metrics: the server sends GET /metrics elsewhere")


# Memory, per kind.


def llama_identity(server: Server, client: httpx.Client) -> Identity:
    found = identify(client, BASE, None)
    server.requests.clear()
    return found


def test_llama_server_memory_from_props_slots_and_metrics() -> None:
    server = Server(
        {
            **LLAMA_ROUTES,
            "/slots": recorded("llama_slots_source.json"),
            "/metrics": recorded_text("llama_metrics.txt"),
        }
    )
    with server.client() as client:
        found = llama_identity(server, client)
        memory = sample_memory(client, found, found.models[0].id)
    assert server.paths() == ["/props", "/slots", "/metrics"]
    assert memory.kind == "llama-server"
    assert memory.n_ctx == 1024  # /props says the slot context first
    assert memory.kv_used_tokens == 1290  # from /slots: these metrics do not say
    assert memory.running_requests == 1  # /metrics first
    assert memory.waiting_requests == 2
    assert memory.unavailable == ()
    assert memory.note == ""
    sources = {figure.label: figure.source for figure in memory.figures}
    assert sources["model size"] == "GET /v1/models"
    assert sources["parameters"] == "GET /v1/models"
    assert sources["slot 0: tokens held"] == "GET /slots"
    assert sources["requests waiting for a slot"] == "GET /metrics"
    assert figures(memory)["model size"] == 4912898304


def test_llama_server_endpoints_that_are_off_are_skipped() -> None:
    off = httpx.Response(501, json=LLAMA_NOT_SUPPORTED)
    server = Server({**LLAMA_ROUTES, "/slots": off, "/metrics": off})
    with server.client() as client:
        found = llama_identity(server, client)
        memory = sample_memory(client, found, found.models[0].id)
    assert memory.n_ctx == 1024
    assert memory.running_requests is None
    assert len(memory.unavailable) == 2
    assert memory.unavailable[0].startswith("GET /slots: /slots is not enabled on the server (501")
    assert "Start it with `--metrics`" in memory.unavailable[1]


def test_answers_that_are_not_what_was_asked_for_are_skipped() -> None:
    server = Server({**LLAMA_ROUTES, "/slots": "not json", "/metrics": "<html></html>"})
    with server.client() as client:
        found = llama_identity(server, client)
        memory = sample_memory(client, found, found.models[0].id)
    assert memory.unavailable == (
        "GET /slots: the answer is not JSON",
        "GET /metrics: the answer is not Prometheus text",
    )
    assert figures(memory)["context per slot"] == 1024


def test_a_slow_figure_endpoint_is_skipped() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    server = Server(
        {**LLAMA_ROUTES, "/slots": recorded("llama_slots_source.json"), "/metrics": slow}
    )
    with server.client() as client:
        found = llama_identity(server, client)
        memory = sample_memory(client, found, found.models[0].id)
    assert memory.unavailable == ("GET /metrics: the server did not answer within 5 s",)
    assert memory.kv_used_tokens == 1290


def test_a_llama_router_is_asked_for_the_model_without_loading_it() -> None:
    def props(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("model"):
            return httpx.Response(200, json=recorded("llama_props.json"))
        return httpx.Response(200, json=recorded("llama_props_router.json"))

    server = Server(
        {**LLAMA_ROUTES, "/props": props, "/slots": recorded("llama_slots_readme.json")}
    )
    with server.client() as client:
        found = llama_identity(server, client)
        memory = sample_memory(client, found, "gemma-3-4b")
    asked = [(request.url.path, dict(request.url.params)) for request in server.requests]
    wanted = {"model": "gemma-3-4b", "autoload": "false"}
    assert asked == [("/props", {}), ("/props", wanted), ("/slots", wanted), ("/metrics", wanted)]
    assert memory.n_ctx == 1024
    assert memory.running_requests == 2


def test_vllm_memory_from_metrics() -> None:
    server = Server({**VLLM_ROUTES, "/metrics": recorded_text("vllm_metrics.txt")})
    with server.client() as client:
        found = identify(client, BASE, None)
        memory = sample_memory(client, found, "qwen-small")
    assert memory.kind == "vllm"
    assert memory.n_ctx == 32768
    assert memory.kv_used_fraction == pytest.approx(0.25)
    assert memory.kv_used_tokens == 16384
    assert (memory.running_requests, memory.waiting_requests) == (2, 1)
    sources = {figure.label: figure.source for figure in memory.figures}
    assert sources["longest context (max_model_len)"] == "GET /v1/models"
    assert sources["KV cache used"] == "GET /metrics"


def test_vllm_without_metrics_still_says_its_context() -> None:
    server = Server({**VLLM_ROUTES, "/metrics": "<!doctype html><p>no</p>"})
    with server.client() as client:
        found = identify(client, BASE, None)
        memory = sample_memory(client, found, "qwen-small")
    assert memory.n_ctx == 32768
    assert memory.kv_used_fraction is None
    assert memory.unavailable == ("GET /metrics: the answer is not Prometheus text",)


def test_ollama_memory_from_ps() -> None:
    server = Server({**OLLAMA_ROUTES, "/api/ps": recorded("ollama_ps.json")})
    with server.client() as client:
        found = identify(client, BASE, None)
        memory = sample_memory(client, found, "mistral:latest")
    assert memory.kind == "ollama"
    assert memory.n_ctx == 4096
    assert figures(memory)["of it in GPU memory"] == 3852768768
    assert {figure.source for figure in memory.figures} == {"GET /api/ps"}


def test_lmstudio_memory_from_its_model_entry() -> None:
    server = Server(
        {
            **LMSTUDIO_ROUTES,
            "/api/v0/models/meta-llama-3.1-8b-instruct": recorded("lmstudio_model_loaded.json"),
        },
        otherwise=lmstudio_unknown,
    )
    with server.client() as client:
        found = identify(client, BASE, None)
        memory = sample_memory(client, found, "meta-llama-3.1-8b-instruct")
    assert memory.kind == "lmstudio"
    assert memory.n_ctx == 8192
    assert figures(memory)["quantization"] == "Q4_K_M"
    assert memory.unavailable == ()


def test_lmstudio_ids_with_a_slash_go_as_one_path_segment_and_fall_back_to_the_list() -> None:
    listing = {
        "object": "list",
        "data": [{"id": "qwen/qwen3-8b", "arch": "qwen3", "state": "loaded"}],
    }
    server = Server({"/api/v0/models": listing})
    identity = Identity("lmstudio", "LM Studio", "", (RemoteModel("qwen/qwen3-8b"),), BASE)
    with server.client() as client:
        memory = sample_memory(client, identity, "qwen/qwen3-8b")
    assert server.requests[0].url.raw_path == b"/api/v0/models/qwen%2Fqwen3-8b"
    assert figures(memory) == {"state": "loaded", "architecture": "qwen3"}
    assert memory.unavailable == ()


def test_kvchat_memory_is_its_report_as_it_came() -> None:
    report = {"kvchat": True, "version": "0.1.0", "kv": {"used_tokens": 12}}
    server = Server({**KVCHAT_ROUTES, "/kvchat/memory": report})
    with server.client() as client:
        found = identify(client, BASE, None)
        memory = sample_memory(client, found, found.models[0].id)
    assert memory.kind == "kvchat"
    assert memory.kvchat_report == report
    assert memory.figures == ()


def test_a_kvchat_without_a_memory_report_says_so() -> None:
    server = Server({"/v1/models": recorded("kvchat_models.json")})
    with server.client() as client:
        found = identify(client, BASE, None)
        memory = sample_memory(client, found, found.models[0].id)
    assert found.kind == "kvchat"
    assert memory.kvchat_report is None
    assert memory.note == "this kvchat server gives no memory report"
    assert memory.unavailable == ("GET /kvchat/memory: the server has no /kvchat/memory (404)",)


def test_a_plain_openai_server_reports_no_memory_and_is_not_asked() -> None:
    server = Server({})
    identity = Identity("openai", "an OpenAI-compatible server", "", (RemoteModel("m"),), BASE)
    with server.client() as client:
        memory = sample_memory(client, identity, "m")
    assert memory.note == NO_MEMORY_REPORT
    assert memory.figures == ()
    assert server.requests == []


def test_sampling_a_server_that_went_away_fails() -> None:
    identity = Identity("vllm", "vLLM", "", (RemoteModel("m"),), BASE)
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    with raising(refused) as client, pytest.raises(UnreachableError) as caught:
        sample_memory(client, identity, "m")
    assert str(caught.value) == "cannot reach gpu-box:8080 (connection refused)"


# The plain-http warning.


@pytest.mark.parametrize(
    ("base", "key", "warned"),
    [
        ("http://gpu-box:8080", "k", True),
        ("gpu-box:8080", "k", True),
        ("http://192.168.1.5:8000/v1", "k", True),
        ("https://gpu-box:8080", "k", False),
        ("http://localhost:8080", "k", False),
        ("http://127.0.0.5:1234", "k", False),
        ("http://[::1]:8080", "k", False),
        ("http://[::ffff:127.0.0.1]:8080", "k", False),
        ("http://gpu-box:8080", None, False),
        ("http://gpu-box:8080", "", False),
    ],
)
def test_plain_http_key_warning(base: str, key: str | None, warned: bool) -> None:
    warning = plain_http_key_warning(base, key)
    assert bool(warning) is warned
    if warned:
        assert "plain http" in warning
        assert normalise_base_url(base).split("//")[1].split(":")[0] in warning


@pytest.mark.parametrize(
    ("host", "here"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("app.localhost", True),
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("[::1]", True),
        ("128.0.0.1", False),
        ("localhost.example.com", False),
        ("gpu-box", False),
    ],
)
def test_this_machine(host: str, here: bool) -> None:
    assert is_this_machine(host) is here
