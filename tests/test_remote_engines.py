"""Models on other servers, end to end: a `kvchat serve` and llama-cpp-python's
own OpenAI-compatible server, both real, on 127.0.0.1, driven through
engine.remote.RemoteHost as the window and `kvchat chat` drive it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pytestqt.qtbot import QtBot

from kvchat.app.api.background import BackgroundServer
from kvchat.app.api.server import ServeOptions, create_app
from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.gui import build_window
from kvchat.app.presenters.settings_flow import SettingsFlow
from kvchat.engine.link import LocalEngine
from kvchat.engine.protocol import (
    Cancel,
    Chat,
    ChatFailed,
    ChatMessage,
    Event,
    LoadConfig,
    LoadFailed,
    LoadModel,
    MemorySample,
    ModelLoaded,
    Sampling,
    TextDelta,
    TurnFinished,
)
from kvchat.engine.remote import RemoteHost, choose_model
from kvchat.engine.remote_address import model_url
from kvchat.engine.remote_servers import RemoteError
from tests.model_factory import TINY_OPENS_THINKING, TINY_THINKING, ModelFactory, model_factory
from tests.remote_events import events_until

__all__ = ["model_factory"]  # a fixture, imported so that pytest finds it

WAIT_S = 120.0
WAIT_MS = 60_000
GREEDY = Sampling(temperature=0.0, max_tokens=12, repeat_penalty=1.0, seed=1)
QUESTION = (ChatMessage("user", "Name three rivers."),)


@dataclass
class Server:
    base_url: str
    model_id: str
    engine: LocalEngine | None = None


def _wait_for(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server ended with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {WAIT_S:g} s")


@contextlib.contextmanager
def _kvchat_serving(model_path: Path, folder: Path) -> Iterator[Server]:
    """`kvchat serve`'s app over a real engine, as another machine would run it."""
    engine = LocalEngine(LoadConfig(str(model_path), n_ctx=2048), folder / "engine.log")
    engine.start()
    state = engine.wait_ready(WAIT_S)
    assert state.ready and state.model is not None, state
    app, gateway = create_app(engine, ServeOptions(), lambda _line: None)
    server = BackgroundServer(app)
    assert server.wait_started()
    try:
        yield Server(server.url, Path(state.model.path).stem, engine)
    finally:
        server.stop(10.0)
        gateway.close()
        engine.stop()


@pytest.fixture(scope="module")
def kvchat_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _kvchat_serving(model_path, tmp_path_factory.mktemp("remote-kvchat")) as server:
        yield server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_llama_cpp_server(model_path: Path, port: int) -> subprocess.Popen[bytes]:
    """llama-cpp-python's server for `model_path`, which it calls smollm2."""
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    command += ["--model_alias", "smollm2"]
    environment = {**os.environ, "PYTHONSAFEPATH": "1"}
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )


@pytest.fixture(scope="module")
def llama_cpp_server(model_path: Path) -> Iterator[Server]:
    """llama-cpp-python's own server (its `server` extra), which nobody here wrote."""
    port = _free_port()
    process = _start_llama_cpp_server(model_path, port)
    try:
        _wait_for(f"http://127.0.0.1:{port}/v1/models", process)
        yield Server(f"http://127.0.0.1:{port}", "smollm2")
    finally:
        process.terminate()
        process.wait(10)


def _events(host: RemoteHost, until: type, timeout: float = WAIT_S) -> list[Event]:
    return events_until(host, until, timeout)


def _loaded_host(tmp_path: Path, server: Server, key: str | None = None) -> RemoteHost:
    host = RemoteHost(tmp_path / "engine.log", key)
    host.send(LoadModel(LoadConfig(model_url(server.base_url, server.model_id))))
    loaded = _events(host, ModelLoaded)
    assert isinstance(loaded[-1], ModelLoaded), loaded[-1]
    return host


@pytest.mark.parametrize("which", ["kvchat_server", "llama_cpp_server"])
def test_a_reply_streams_from_a_server_with_its_figures(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server: Server = request.getfixturevalue(which)
    host = _loaded_host(tmp_path, server)
    try:
        host.send(Chat(1, QUESTION, GREEDY))
        events = _events(host, TurnFinished)
    finally:
        host.close()
    finished = events[-1]
    assert isinstance(finished, TurnFinished), finished
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert deltas == finished.text and finished.text.strip()
    stats = finished.stats
    if which == "kvchat_server":
        assert stats.prompt_tokens > 10  # the server's count, from its usage
    else:  # llama-cpp-python's server sends no usage in a stream: unknown, not guessed
        assert stats.prompt_tokens == 0
    assert stats.generated_tokens == 12 and stats.stop_reason == "length"
    assert stats.time_to_first_token_s > 0 and stats.decode_tokens_per_s > 0
    # The same greedy reply as the server gives any other client.
    direct = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={
            "model": server.model_id,
            "messages": [{"role": "user", "content": QUESTION[0].content}],
            "max_tokens": 12,
            "temperature": 0,
            "seed": 1,
        },
        timeout=60,
    ).json()
    assert direct["choices"][0]["message"]["content"] == finished.text


def test_another_kvchat_reports_what_its_panels_show(kvchat_server: Server, tmp_path: Path) -> None:
    host = _loaded_host(tmp_path, kvchat_server)
    try:
        sample = _events(host, MemorySample, timeout=30)[-1]
    finally:
        host.close()
    assert isinstance(sample, MemorySample) and sample.server is not None
    assert sample.server.server.startswith("kvchat at 127.0.0.1:")
    assert sample.devices and sample.devices[0].total_bytes > 0  # its devices, not ours
    assert sample.note.startswith("reported by kvchat at 127.0.0.1:")


def test_a_server_that_reports_no_memory_says_so(llama_cpp_server: Server, tmp_path: Path) -> None:
    host = _loaded_host(tmp_path, llama_cpp_server)
    try:
        sample = _events(host, MemorySample, timeout=30)[-1]
    finally:
        host.close()
    assert isinstance(sample, MemorySample) and sample.server is not None
    assert sample.devices == ()
    assert "does not report its memory" in sample.server.note


def test_stop_closes_the_stream_and_the_server_stops_generating(
    kvchat_server: Server, tmp_path: Path
) -> None:
    host = _loaded_host(tmp_path, kvchat_server)
    long = Sampling(temperature=0.0, max_tokens=400, repeat_penalty=1.0)
    try:
        host.send(Chat(7, (ChatMessage("user", "Tell me a very long story."),), long))
        first = _events(host, TextDelta)
        assert isinstance(first[-1], TextDelta)
        host.send(Cancel(7))
        finished = _events(host, TurnFinished)[-1]
        assert isinstance(finished, TurnFinished)
        assert finished.stats.stop_reason == "cancelled"
        # The server's engine is free at once: the next request runs to its end.
        host.send(Chat(8, QUESTION, GREEDY))
        after = _events(host, TurnFinished)[-1]
    finally:
        host.close()
    assert isinstance(after, TurnFinished) and after.stats.stop_reason == "length"


def test_the_first_model_a_server_lists_and_an_unknown_one(llama_cpp_server: Server) -> None:
    assert choose_model(llama_cpp_server.base_url, None, None) == model_url(
        llama_cpp_server.base_url, "smollm2"
    )
    with pytest.raises(RemoteError) as refused:
        choose_model(llama_cpp_server.base_url, "no-such-model", None)
    assert "has no model 'no-such-model' (it offers: smollm2)" in str(refused.value)


def test_an_unreachable_server_fails_the_load_in_words(tmp_path: Path) -> None:
    host = RemoteHost(tmp_path / "engine.log")
    try:
        host.send(LoadModel(LoadConfig(model_url(f"http://127.0.0.1:{_free_port()}", "m"))))
        failed = _events(host, ModelLoaded)[-1]
    finally:
        host.close()
    assert isinstance(failed, LoadFailed)
    assert "cannot reach 127.0.0.1:" in failed.message and "connection refused" in failed.message


def test_a_server_killed_mid_reply_keeps_the_text_and_says_why(
    model_path: Path, tmp_path: Path
) -> None:
    port = _free_port()
    process = _start_llama_cpp_server(model_path, port)
    server = Server(f"http://127.0.0.1:{port}", "smollm2")
    try:
        _wait_for(server.base_url + "/v1/models", process)
        host = _loaded_host(tmp_path, server)
        long = Sampling(temperature=0.0, max_tokens=400, repeat_penalty=1.0)
        host.send(Chat(3, (ChatMessage("user", "Tell me a very long story."),), long))
        assert isinstance(_events(host, TextDelta)[-1], TextDelta)
        process.kill()
        events = _events(host, TurnFinished)
        host.close()
    finally:
        process.kill()
        process.wait(10)
    failed = events[-1]
    assert isinstance(failed, ChatFailed)
    assert failed.message.startswith("the server stopped mid-reply")
    assert not failed.by_request


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("wrong", "the server refused the API key (401)"),
        (None, "the server wants an API key (401)"),
    ],
)
def test_a_wrong_or_missing_key_is_refused_in_words(
    kvchat_server: Server, tmp_path: Path, key: str | None, said: str
) -> None:
    assert kvchat_server.engine is not None
    app, gateway = create_app(kvchat_server.engine, ServeOptions(api_key="right"), print)
    server = BackgroundServer(app)
    assert server.wait_started()
    host = RemoteHost(tmp_path / "engine.log", key)
    try:
        host.send(LoadModel(LoadConfig(model_url(server.url, kvchat_server.model_id))))
        failed = _events(host, ModelLoaded)[-1]
    finally:
        host.close()
        server.stop(10.0)
        gateway.close()
    assert isinstance(failed, LoadFailed)
    assert said in failed.message


# The window on a remote model.


@pytest.mark.parametrize("which", ["kvchat_server", "llama_cpp_server"])
def test_the_window_chats_with_a_remote_model_and_shows_its_servers_figures(
    which: str, request: pytest.FixtureRequest, qtbot: QtBot, data_dir: Path
) -> None:
    server: Server = request.getfixturevalue(which)
    url = model_url(server.base_url, server.model_id)
    window, controller = build_window(url, EngineSettings(seed=1, max_tokens=12), data_dir)
    try:
        if controller.model is None:
            with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
                pass
        assert controller.model is not None and controller.model.path == url
        assert f"{server.model_id} on 127.0.0.1:" in window.chat_view.toPlainText()
        with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
            controller.send("Name three rivers.")
        stats = finished.args[0]
        assert stats.generated_tokens > 0
        assert (stats.prompt_tokens > 10) == (which == "kvchat_server")  # usage, if sent
        reply = controller.history.messages[-1]
        assert reply.state == "done" and reply.content.strip()
        assert reply.content.split()[0] in window.chat_view.toPlainText()
        conversation = controller.history.conversation
        assert conversation is not None and conversation.model_path == url
        panel = window.memory_panel
        qtbot.waitUntil(lambda: panel.server_panel.isVisible(), timeout=WAIT_MS)
        if which == "kvchat_server":
            shown = panel.server_panel.server_label.text()
            assert shown.startswith("Reported by kvchat at 127.0.0.1:")
            qtbot.waitUntil(lambda: bool(panel.device_panel.rows()), timeout=WAIT_MS)
        else:
            assert "does not report its memory" in panel.server_panel.note_label.text()
            assert panel.device_panel.rows() == []
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)


def _kvchat(*arguments: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-P", "-m", "kvchat.app.cli.main", "--data-dir", str(data_dir)]
    return subprocess.run(
        [*command, *arguments], capture_output=True, text=True, timeout=120, check=False
    )


def test_kvchat_chat_streams_one_reply_from_a_server(
    llama_cpp_server: Server, tmp_path: Path
) -> None:
    done = _kvchat(
        "chat", "--server", llama_cpp_server.base_url, "--max-tokens", "8", "--stats",
        "Name a river.", data_dir=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "tok/s" in done.stderr  # the turn's figures


def test_kvchat_chat_says_why_a_server_cannot_be_used(tmp_path: Path) -> None:
    port = _free_port()
    done = _kvchat("chat", "--server", f"http://127.0.0.1:{port}", "Hi", data_dir=tmp_path)
    assert done.returncode == 2
    assert f"cannot reach 127.0.0.1:{port} (connection refused)" in done.stderr
    assert "Traceback" not in done.stderr
    keyed = _kvchat(
        "chat", "--server", "http://192.0.2.1:1", "--api-key", "k", "Hi", data_dir=tmp_path
    )
    assert "over plain http" in keyed.stderr and keyed.returncode == 2


def test_a_servers_models_join_the_model_list_and_one_is_chosen_there(
    llama_cpp_server: Server, qtbot: QtBot, data_dir: Path
) -> None:
    window, controller = build_window(None, EngineSettings(seed=1, max_tokens=8), data_dir)
    try:
        if controller.model is None:
            with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
                pass
        local = controller.model
        assert local is not None
        flow = controller.settings_flow
        assert isinstance(flow, SettingsFlow)
        flow.servers = lambda: [("box", llama_cpp_server.base_url, None)]
        flow.discover_remote()
        switcher = window.model_switcher
        url = model_url(llama_cpp_server.base_url, "smollm2")

        def listed() -> int:
            found = [i for i in range(switcher.count()) if switcher.itemData(i) == url]
            return found[0] if found else -1

        qtbot.waitUntil(lambda: listed() >= 0, timeout=WAIT_MS)
        assert switcher.itemText(listed()) == "smollm2 on box"
        assert any(switcher.itemData(i) == local.path for i in range(switcher.count()))
        with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
            switcher.setCurrentIndex(listed())
            switcher.activated.emit(listed())
        assert controller.model is not None and controller.model.path == url
        with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS):
            controller.send("Name a river.")
        assert controller.history.messages[-1].state == "done"
        assert controller.engine.pid is None  # no engine process here: the server's
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)


def test_continue_goes_on_with_the_reply_where_the_server_can(
    kvchat_server: Server, llama_cpp_server: Server, tmp_path: Path
) -> None:
    cut = (*QUESTION, ChatMessage("assistant", "Three rivers are the Nile,"))
    host = _loaded_host(tmp_path / "kv", kvchat_server)
    try:
        host.send(Chat(1, cut, GREEDY, continue_last=True))
        events = _events(host, TurnFinished)
    finally:
        host.close()
    finished = events[-1]
    assert isinstance(finished, TurnFinished)
    assert finished.text and not finished.text.lstrip().startswith("Three rivers")
    host = _loaded_host(tmp_path / "lcp", llama_cpp_server)
    try:
        host.send(Chat(2, cut, GREEDY, continue_last=True))
        refused = _events(host, TurnFinished)[-1]
    finally:
        host.close()
    assert isinstance(refused, ChatFailed) and refused.by_request
    assert "cannot go on with a reply it cut short" in refused.message


# llama.cpp's own llama-server, when `make llama-server` has built it.

LLAMA_SERVER = (
    Path(__file__).resolve().parent.parent / "build" / "llama.cpp" / "bin" / "llama-server"
)


@pytest.fixture(scope="module")
def llama_server(model_path: Path) -> Iterator[Server]:
    if not LLAMA_SERVER.exists():
        pytest.skip("llama.cpp's llama-server is not built here (make llama-server)")
    port = _free_port()
    command = [str(LLAMA_SERVER), "-m", str(model_path), "--host", "127.0.0.1"]
    command += ["--port", str(port), "-c", "2048", "--metrics", "--slots", "-a", "smollm2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(f"http://127.0.0.1:{port}/health", process)
        yield Server(f"http://127.0.0.1:{port}", "smollm2")
    finally:
        process.terminate()
        process.wait(10)


def test_llama_server_is_told_apart_and_reports_its_slots_and_counters(
    llama_server: Server, tmp_path: Path
) -> None:
    host = _loaded_host(tmp_path, llama_server)
    try:
        host.send(Chat(1, QUESTION, GREEDY))
        finished = _events(host, TurnFinished)[-1]
        sample = _events(host, MemorySample, timeout=30)[-1]
    finally:
        host.close()
    assert isinstance(finished, TurnFinished) and finished.text.strip()
    assert finished.stats.prompt_tokens > 10  # from its usage and timings
    assert isinstance(sample, MemorySample) and sample.server is not None
    assert sample.server.server.startswith("llama-server")
    assert sample.server.n_ctx == 2048
    sources = {figure.source for figure in sample.server.figures}
    assert any("/slots" in source for source in sources)
    assert any("/metrics" in source for source in sources)


# Thinking, from servers that send it apart and from one that sends it as text.


def _turn(host: RemoteHost, chat: Chat) -> tuple[str, str, TurnFinished]:
    """The thinking and the answer a turn's deltas carried, and how it finished."""
    host.send(chat)
    events = _events(host, TurnFinished)
    finished = events[-1]
    assert isinstance(finished, TurnFinished), finished
    deltas = [e for e in events if isinstance(e, TextDelta)]
    thinking = "".join(d.text for d in deltas if d.thinking)
    answer = "".join(d.text for d in deltas if not d.thinking)
    return thinking, answer, finished


def test_a_servers_reasoning_content_is_thinking_and_goes_back_to_it(
    model_factory: ModelFactory, tmp_path: Path
) -> None:
    sampling = Sampling(temperature=0.0, max_tokens=24)
    hi = (ChatMessage("user", "Hi"),)
    folder = tmp_path / "server"
    folder.mkdir()
    with _kvchat_serving(model_factory.path(TINY_THINKING), folder) as server:
        host = _loaded_host(tmp_path, server)
        try:
            thinking, answer, finished = _turn(host, Chat(1, hi, sampling))
            # A reply cut inside its thinking goes on there: its thinking
            # reached the server, as `reasoning_content`.
            cut = (*hi, ChatMessage("assistant", "", thinking=" Hmm"))
            more, rest, _ = _turn(host, Chat(2, cut, sampling, continue_last=True))
        finally:
            host.close()
    assert thinking == " Hmm so"
    assert answer == finished.text == "Yes indeed"
    assert finished.stats.thinking_tokens == 3  # the server's count, from its usage
    assert finished.stats.generated_tokens == 5
    assert (more, rest) == (" so", "Yes indeed")


def test_think_tags_a_server_sends_as_text_are_split_here(
    model_factory: ModelFactory, tmp_path: Path
) -> None:
    port = _free_port()
    process = _start_llama_cpp_server(model_factory.path(TINY_OPENS_THINKING), port)
    server = Server(f"http://127.0.0.1:{port}", "smollm2")
    try:
        _wait_for(server.base_url + "/v1/models", process)
        host = _loaded_host(tmp_path, server)
        try:
            sampling = Sampling(temperature=0.0, max_tokens=24, repeat_penalty=1.0)
            thinking, answer, finished = _turn(host, Chat(1, QUESTION, sampling))
        finally:
            host.close()
    finally:
        process.terminate()
        process.wait(10)
    assert thinking == "Hmm so"
    assert answer == finished.text == "Yes indeed"
    # No count from this server: its deltas inside the thinking, tags included.
    assert finished.stats.thinking_tokens == 4
