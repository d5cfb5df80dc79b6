"""The list of servers and their keys: stored, checked, and tested off the GUI thread."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from keyring.backend import KeyringBackend, get_all_keyring
from keyring.backends import fail, null
from keyring.errors import KeyringError, PasswordDeleteError
from pytestqt.qtbot import QtBot

from kvchat.app.core.servers import (
    KEYRING_SERVICE,
    KEYS_FILE,
    SERVERS_FILE,
    InvalidServerError,
    KeyStoreError,
    Server,
    ServerKeys,
    ServerList,
    new_server,
    new_server_list,
    read_servers,
    servers_path,
    usable_backend,
    write_servers,
)
from kvchat.app.presenters.servers_flow import ServersFlow, describe_identity
from kvchat.engine.remote_servers import Identity, RemoteModel
from kvchat.ui.servers_dialog import ServersDialog

SECRET = "sk-test-0123456789abcdef"


class MemoryKeyring(KeyringBackend):
    """A keyring in a dict; `refuse` makes every call fail as a locked keyring does.

    keyring registers every backend class; one that cannot be made without an
    argument is one that its own detection passes over, so no other test's
    "system keyring" is this one.
    """

    priority = 1  # type: ignore[assignment]

    def __init__(self, refuse: type[Exception] | None) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}
        self.refuse = refuse

    def _check(self) -> None:
        if self.refuse is not None:
            raise self.refuse(f"the keyring is locked (it was handed {SECRET})")

    def get_password(self, service: str, username: str) -> str | None:
        self._check()
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self._check()
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self._check()
        if self.passwords.pop((service, username), None) is None:
            raise PasswordDeleteError("no such password")


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# Servers and the list.


def test_a_typed_address_is_kept_as_the_server_root() -> None:
    server = new_server("  GPU box ", "gpu-box:8080/v1/")
    assert server == Server(name="GPU box", base_url="http://gpu-box:8080")


@pytest.mark.parametrize(
    ("name", "address", "words"),
    [
        ("", "http://a:1", "Give the server a name."),
        ("   ", "http://a:1", "Give the server a name."),
        ("x" * 81, "http://a:1", "at most 80 characters; this one has 81"),
        ("a", "", "Give the server's address"),
        ("a", "ftp://files.example.com", "not an http:// or https:// address"),
        ("a", "http://a:1/?q=1", "no ? or # part"),
    ],
)
def test_bad_input_is_refused_in_words(name: str, address: str, words: str) -> None:
    with pytest.raises(InvalidServerError) as caught:
        new_server(name, address)
    assert words in str(caught.value)
    assert "Value error" not in str(caught.value)


def test_eighty_characters_is_a_name() -> None:
    assert new_server("x" * 80, "http://a:1").name == "x" * 80


def test_a_list_names_each_server_and_each_address_once() -> None:
    a = new_server("GPU box", "http://gpu:8080")
    with pytest.raises(InvalidServerError, match="already a server called “GPU box”"):
        new_server_list([a, new_server("gpu BOX", "http://other:8080")])
    with pytest.raises(
        InvalidServerError, match="“GPU box” already has the address http://gpu:8080"
    ):
        new_server_list([a, new_server("Other", "gpu:8080/v1")])
    both = new_server_list([a, new_server("Other", "https://api.example.com")])
    assert both.find("gpu box") == a
    assert both.at("gpu:8080/v1/") == a
    assert both.at("ftp://nowhere") is None


def test_the_list_survives_a_round_trip_and_is_written_only_when_changed(data_dir: Path) -> None:
    servers = new_server_list(
        [new_server("GPU box", "gpu:8080"), new_server("Cloud", "https://api.example.com/v1")]
    )
    assert write_servers(data_dir, servers) is True
    assert write_servers(data_dir, servers) is False
    assert read_servers(data_dir).servers == servers
    assert read_servers(data_dir).notice == ""
    assert sorted(p.name for p in data_dir.iterdir()) == [SERVERS_FILE]  # no temporary left


def test_no_file_is_an_empty_list_without_a_notice(data_dir: Path) -> None:
    loaded = read_servers(data_dir)
    assert loaded.servers == ServerList()
    assert loaded.notice == ""


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "it is empty"),
        ('{"servers": [{"name": "a", ', "it is not valid JSON"),
        ("[1, 2]", "it does not hold a list of servers"),
        ('{"servers": {"name": "a"}}', "it does not hold a list of servers"),
    ],
)
def test_a_damaged_file_is_an_empty_list_and_a_notice(
    data_dir: Path, text: str, reason: str
) -> None:
    path = servers_path(data_dir)
    path.write_text(text, encoding="utf-8")
    loaded = read_servers(data_dir)
    assert loaded.servers == ServerList()
    assert reason in loaded.notice
    assert str(path) in loaded.notice
    backups = [p for p in data_dir.iterdir() if p.name.startswith(f"{SERVERS_FILE}.bad-")]
    assert len(backups) == 1
    assert backups[0].read_text(encoding="utf-8") == text
    assert backups[0].name in loaded.notice
    # The next start has nothing to say.
    assert read_servers(data_dir).notice == ""


def test_the_good_servers_of_a_damaged_file_are_kept(data_dir: Path) -> None:
    entries = [
        {"name": "GPU box", "base_url": "http://gpu:8080"},
        {"name": "", "base_url": "http://empty:1"},
        {"name": "ftp", "base_url": "ftp://files"},
        {"name": "gpu box", "base_url": "http://again:1"},
        {"name": "Cloud", "base_url": "https://api.example.com"},
    ]
    servers_path(data_dir).write_text(json.dumps({"servers": entries}), encoding="utf-8")
    loaded = read_servers(data_dir)
    assert [s.name for s in loaded.servers.servers] == ["GPU box", "Cloud"]
    assert "entry 2 (Give the server a name.)" in loaded.notice
    assert "entry 3 (" in loaded.notice
    assert "entry 4 (There is already a server called “GPU box”.)" in loaded.notice
    assert read_servers(data_dir).servers == loaded.servers


# Keys in a file.


def test_keys_without_a_keyring_go_to_a_file_only_its_owner_reads(data_dir: Path) -> None:
    old_umask = os.umask(0)  # even when new files would be readable by all
    try:
        keys = ServerKeys(data_dir, None)
        keys.set("gpu:8080/v1", SECRET)
    finally:
        os.umask(old_umask)
    path = data_dir / KEYS_FILE
    assert file_mode(path) == 0o600
    assert keys.get("http://gpu:8080") == SECRET
    assert keys.where() == f"a file readable only by you: {path}"
    assert json.loads(path.read_text(encoding="utf-8"))["keys"] == {"http://gpu:8080": SECRET}
    assert sorted(p.name for p in data_dir.iterdir()) == [KEYS_FILE]  # no temporary left


def test_a_file_made_readable_by_others_is_closed_again_on_every_write(data_dir: Path) -> None:
    keys = ServerKeys(data_dir, None)
    keys.set("http://a:1", "first")
    path = data_dir / KEYS_FILE
    os.chmod(path, 0o644)
    keys.set("http://b:1", "second")
    assert file_mode(path) == 0o600
    os.chmod(path, 0o644)
    assert keys.get("http://a:1") == "first"
    assert file_mode(path) == 0o600


def test_an_empty_key_forgets_it(data_dir: Path) -> None:
    keys = ServerKeys(data_dir, None)
    keys.set("http://a:1", "first")
    keys.set("http://b:1", "second")
    keys.set("http://a:1", "")
    assert keys.get("http://a:1") is None
    assert keys.get("http://b:1") == "second"
    keys.set("http://b:1", None)
    assert keys.get("http://b:1") is None
    assert not (data_dir / KEYS_FILE).exists()


def test_a_damaged_key_file_reads_as_no_keys(data_dir: Path) -> None:
    (data_dir / KEYS_FILE).write_text("{not json", encoding="utf-8")
    keys = ServerKeys(data_dir, None)
    assert keys.get("http://a:1") is None
    assert "is damaged" in keys.notice
    keys.set("http://a:1", SECRET)
    assert keys.get("http://a:1") == SECRET


def test_a_key_that_cannot_be_written_is_not_in_the_message(data_dir: Path) -> None:
    keys = ServerKeys(data_dir / "missing" / "deeper", None)
    (data_dir / "missing").write_text("a file where the folder should be", encoding="utf-8")
    with pytest.raises(KeyStoreError) as caught:
        keys.set("http://a:1", SECRET)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


# Keys in a keyring.


def test_keys_go_to_the_keyring_under_the_servers_address(data_dir: Path) -> None:
    backend = MemoryKeyring(refuse=None)
    keys = ServerKeys(data_dir, backend)
    keys.set("gpu:8080/v1/", SECRET)
    assert backend.passwords == {(KEYRING_SERVICE, "http://gpu:8080"): SECRET}
    assert keys.get("http://gpu:8080") == SECRET
    assert not (data_dir / KEYS_FILE).exists()
    assert keys.where() == "the system keyring (test_servers)"
    keys.set("http://gpu:8080", None)
    assert backend.passwords == {}
    keys.set("http://gpu:8080", None)  # forgetting what is not there is fine
    assert keys.get("http://gpu:8080") is None


@pytest.mark.parametrize("error", [KeyringError, RuntimeError])
def test_a_keyring_that_refuses_leaves_the_key_in_the_file(
    data_dir: Path, error: type[Exception]
) -> None:
    backend = MemoryKeyring(refuse=error)
    keys = ServerKeys(data_dir, backend)
    keys.set("http://a:1", SECRET)
    assert "did not take the key for http://a:1" in keys.notice
    assert SECRET not in keys.notice
    assert backend.passwords == {}
    assert file_mode(data_dir / KEYS_FILE) == 0o600
    assert keys.get("http://a:1") == SECRET
    assert "could not be read" in keys.notice
    assert SECRET not in keys.notice
    assert keys.where("http://a:1").startswith("a file readable only by you")
    # Once the keyring works again, the key moves there.
    backend.refuse = None
    keys.set("http://a:1", SECRET)
    assert backend.passwords == {(KEYRING_SERVICE, "http://a:1"): SECRET}
    assert not (data_dir / KEYS_FILE).exists()


def test_a_keyring_that_will_not_forget_says_so(data_dir: Path) -> None:
    backend = MemoryKeyring(refuse=None)
    keys = ServerKeys(data_dir, backend)
    keys.set("http://a:1", SECRET)
    backend.refuse = KeyringError
    with pytest.raises(KeyStoreError, match="did not forget the key for http://a:1") as caught:
        keys.set("http://a:1", None)
    assert SECRET not in str(caught.value)


def test_the_test_keyring_is_never_the_system_one() -> None:
    assert not any(isinstance(b, MemoryKeyring) for b in get_all_keyring())


def test_keyrings_stand_ins_for_no_keyring_are_not_used() -> None:
    assert usable_backend(fail.Keyring()) is None
    assert usable_backend(null.Keyring()) is None
    backend = MemoryKeyring(refuse=None)
    assert usable_backend(backend) is backend


def test_a_stand_in_backend_means_the_file(data_dir: Path) -> None:
    keys = ServerKeys(data_dir, fail.Keyring())
    keys.set("http://a:1", SECRET)
    assert file_mode(data_dir / KEYS_FILE) == 0o600
    assert keys.get("http://a:1") == SECRET


# What a test says.


def test_an_identity_in_words() -> None:
    models = tuple(RemoteModel(name) for name in "abc")
    identity = Identity("llama-server", "llama-server", "b4567", models)
    assert describe_identity(identity) == "llama-server b4567 · 3 models: a, b, c"
    assert describe_identity(Identity("vllm", "vLLM 0.6.1", "0.6.1", models[:1])) == (
        "vLLM 0.6.1 · 1 model: a"
    )
    many = tuple(RemoteModel(f"m{i}") for i in range(8))
    assert describe_identity(Identity("openai", "x", "", many)) == (
        "x · 8 models: m0, m1, m2, m3, m4 and 3 more"
    )
    assert (
        describe_identity(Identity("ollama", "Ollama 0.5", "0.5", ())) == "Ollama 0.5 · no models"
    )


# The flow.


class FakeLlamaServer:
    """llama-server's answers, as an httpx transport; records who asked and from where."""

    def __init__(self, key: str | None = None) -> None:
        self.key = key
        self.seen: list[tuple[str, str | None, int]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization")
        self.seen.append((request.url.path, auth, threading.get_ident()))
        if self.key is not None and auth != f"Bearer {self.key}":
            return httpx.Response(401, json={"error": {"message": "Invalid API Key"}})
        if request.url.path == "/v1/models":
            data = [{"id": name, "object": "model", "owned_by": "llamacpp"} for name in "abc"]
            return httpx.Response(200, json={"object": "list", "data": data})
        if request.url.path == "/props":
            return httpx.Response(
                200,
                json={"default_generation_settings": {"n_ctx": 4096}, "build_info": "b4567"},
            )
        return httpx.Response(404, json={"error": {"message": "File Not Found"}})

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self), follow_redirects=False)


@pytest.fixture
def make_flow(qtbot: QtBot, data_dir: Path) -> Iterator[Callable[..., ServersFlow]]:
    flows: list[ServersFlow] = []

    def make(server: FakeLlamaServer, keys: ServerKeys | None = None) -> ServersFlow:
        keys = keys if keys is not None else ServerKeys(data_dir, MemoryKeyring(refuse=None))
        flow = ServersFlow(data_dir, keys=keys, client_factory=server.client)
        flows.append(flow)
        return flow

    yield make
    for flow in flows:
        flow.close(wait=True)


def open_dialog(qtbot: QtBot, flow: ServersFlow) -> ServersDialog:
    # Not given to qtbot: the flow closes and deletes its dialog.
    return flow.open()


def test_a_test_connection_asks_off_the_gui_thread_and_shows_what_answered(
    qtbot: QtBot, make_flow: Callable[..., ServersFlow]
) -> None:
    server = FakeLlamaServer(key=SECRET)
    flow = make_flow(server)
    dialog = open_dialog(qtbot, flow)
    dialog.add_button.click()
    editor = dialog.editor
    assert editor is not None
    editor.name.setText("GPU box")
    editor.address.setText("gpu-box:8080/v1")
    editor.key.setText(SECRET)
    with qtbot.wait_signal(flow.tested) as blocker:
        editor.test_button.click()
    expected = "llama-server b4567 · 3 models: a, b, c"
    assert blocker.args == ["http://gpu-box:8080", expected, True]
    qtbot.wait_until(lambda: expected in editor.answer.text())
    assert expected in dialog.answer.text()
    assert {auth for _, auth, _ in server.seen} == {f"Bearer {SECRET}"}
    assert threading.get_ident() not in {thread for _, _, thread in server.seen}


def test_a_refused_key_is_shown_as_the_servers_error(
    qtbot: QtBot, make_flow: Callable[..., ServersFlow]
) -> None:
    flow = make_flow(FakeLlamaServer(key=SECRET))
    dialog = open_dialog(qtbot, flow)
    dialog.add_button.click()
    assert dialog.editor is not None
    dialog.editor.address.setText("http://127.0.0.1:8080")
    dialog.editor.key.setText("wrong")
    with qtbot.wait_signal(flow.tested) as blocker:
        dialog.editor.test_button.click()
    assert blocker.args == ["http://127.0.0.1:8080", "the server refused the API key (401)", False]
    qtbot.wait_until(lambda: "refused the API key" in dialog.answer.text())


def test_saving_writes_the_list_and_keeps_the_key_out_of_it(
    qtbot: QtBot, make_flow: Callable[..., ServersFlow], data_dir: Path
) -> None:
    backend = MemoryKeyring(refuse=None)
    server = FakeLlamaServer(key=SECRET)
    flow = make_flow(server, ServerKeys(data_dir, backend))
    dialog = open_dialog(qtbot, flow)
    dialog.add_button.click()
    assert dialog.editor is not None
    dialog.editor.name.setText("GPU box")
    dialog.editor.address.setText("gpu-box:8080")
    dialog.editor.key.setText(SECRET)
    dialog.editor.buttons.button(dialog.editor.buttons.StandardButton.Ok).click()
    with qtbot.wait_signal(flow.servers_changed):
        dialog.buttons.button(dialog.buttons.StandardButton.Save).click()
    assert flow.servers() == [Server(name="GPU box", base_url="http://gpu-box:8080")]
    assert read_servers(data_dir).servers.servers == tuple(flow.servers())
    assert SECRET not in servers_path(data_dir).read_text(encoding="utf-8")
    assert backend.passwords == {(KEYRING_SERVICE, "http://gpu-box:8080"): SECRET}
    assert flow.key_for("http://gpu-box:8080") == SECRET
    qtbot.wait_until(lambda: flow.dialog is None)

    # Reopened: the key is kept, unseen; a test of the row uses it.
    again = open_dialog(qtbot, flow)
    assert again.table.item(0, 2).text() == "kept"
    again.table.selectRow(0)
    with qtbot.wait_signal(flow.tested) as blocker:
        again.test_button.click()
    assert blocker.args[2] is True


def test_a_server_moved_to_another_address_takes_its_key_along(
    qtbot: QtBot, make_flow: Callable[..., ServersFlow], data_dir: Path
) -> None:
    backend = MemoryKeyring(refuse=None)
    keys = ServerKeys(data_dir, backend)
    write_servers(data_dir, new_server_list([new_server("GPU box", "http://old:8080")]))
    keys.set("http://old:8080", SECRET)
    flow = make_flow(FakeLlamaServer(key=SECRET), keys)
    dialog = open_dialog(qtbot, flow)
    qtbot.wait_until(lambda: dialog.table.item(0, 2).text() == "kept")
    dialog.table.selectRow(0)
    dialog.edit_button.click()
    assert dialog.editor is not None
    assert dialog.editor.key.placeholderText() == "(kept)"
    dialog.editor.address.setText("http://new:8080")
    # Tested before it is saved, with the key kept for its old address.
    with qtbot.wait_signal(flow.tested) as blocker:
        dialog.editor.test_button.click()
    assert blocker.args == ["http://new:8080", "llama-server b4567 · 3 models: a, b, c", True]
    dialog.editor.buttons.button(dialog.editor.buttons.StandardButton.Ok).click()
    with qtbot.wait_signal(flow.servers_changed):
        dialog.buttons.button(dialog.buttons.StandardButton.Save).click()
    assert backend.passwords == {(KEYRING_SERVICE, "http://new:8080"): SECRET}


def test_a_removed_server_takes_its_key_with_it(
    qtbot: QtBot, make_flow: Callable[..., ServersFlow], data_dir: Path
) -> None:
    keys = ServerKeys(data_dir, None)
    write_servers(data_dir, new_server_list([new_server("GPU box", "http://gpu:8080")]))
    keys.set("http://gpu:8080", SECRET)
    flow = make_flow(FakeLlamaServer(), keys)
    dialog = open_dialog(qtbot, flow)
    dialog.table.selectRow(0)
    dialog.remove_button.click()
    with qtbot.wait_signal(flow.servers_changed):
        dialog.buttons.button(dialog.buttons.StandardButton.Save).click()
    assert flow.servers() == []
    assert keys.get("http://gpu:8080") is None
    assert not (data_dir / KEYS_FILE).exists()


def test_a_damaged_list_is_told_in_the_dialog(
    qtbot: QtBot, make_flow: Callable[..., ServersFlow], data_dir: Path
) -> None:
    servers_path(data_dir).write_text("{oops", encoding="utf-8")
    flow = make_flow(FakeLlamaServer())
    assert flow.servers() == []
    dialog = open_dialog(qtbot, flow)
    assert "it is not valid JSON" in dialog.notice.text()
