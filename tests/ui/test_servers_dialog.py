"""The servers dialog: what it shows, what it refuses, and what it asks for."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QDialogButtonBox, QLineEdit
from pytestqt.qtbot import QtBot

from kvchat.ui.servers_dialog import SavedServer, ServerEditor, ServerRow, ServersDialog

ROWS = [
    ServerRow("GPU box", "http://gpu-box:8080", key_kept=True),
    ServerRow("Laptop", "http://127.0.0.1:1234"),
]
WARNING = "The key would cross the network unencrypted."


def check_address(text: str) -> str:
    """A stand-in for app.servers.check_address: http(s) only, no trailing /v1 or /."""
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/").removesuffix("/v1")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{text.strip()!r} is not an http:// or https:// address with a host.")
    return url


def plain_http_warning(typed: str, key: str) -> str:
    try:
        url = check_address(typed)
    except ValueError:
        return ""
    return WARNING if key and url.startswith("http://") and "127.0.0.1" not in url else ""


def make_dialog(qtbot: QtBot, rows: list[ServerRow] = ROWS) -> ServersDialog:
    dialog = ServersDialog(rows, check_address, max_name_length=80, key_warning=plain_http_warning)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def editor_of(dialog: ServersDialog) -> ServerEditor:
    assert dialog.editor is not None, "no editor is open"
    return dialog.editor


def press_ok(editor: ServerEditor) -> None:
    editor.buttons.button(QDialogButtonBox.StandardButton.Ok).click()


def saved_rows(qtbot: QtBot, dialog: ServersDialog) -> list[SavedServer]:
    with qtbot.wait_signal(dialog.saved) as blocker:
        dialog.buttons.button(QDialogButtonBox.StandardButton.Save).click()
    rows = blocker.args[0]
    assert isinstance(rows, list)
    return rows


def cells(dialog: ServersDialog) -> list[tuple[str, str, str]]:
    table = dialog.table
    return [
        (table.item(r, 0).text(), table.item(r, 1).text(), table.item(r, 2).text())
        for r in range(table.rowCount())
    ]


def test_the_list_shows_names_addresses_and_which_keys_are_kept(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    assert cells(dialog) == [
        ("GPU box", "http://gpu-box:8080", "kept"),
        ("Laptop", "http://127.0.0.1:1234", ""),
    ]
    # Nothing is chosen yet: nothing to edit, remove or test.
    assert not dialog.edit_button.isEnabled()
    assert not dialog.test_button.isEnabled()
    dialog.table.selectRow(1)
    assert dialog.edit_button.isEnabled()
    assert dialog.remove_button.isEnabled()
    assert dialog.test_button.isEnabled()


def test_saving_unchanged_gives_back_what_was_given(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    assert saved_rows(qtbot, dialog) == [
        SavedServer("GPU box", "http://gpu-box:8080", None, "http://gpu-box:8080"),
        SavedServer("Laptop", "http://127.0.0.1:1234", None, "http://127.0.0.1:1234"),
    ]


def test_a_server_added_comes_back_with_its_key(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    dialog.add_button.click()
    editor = editor_of(dialog)
    assert editor.key.echoMode() == QLineEdit.EchoMode.Password
    assert editor.key.placeholderText() == "none"
    assert editor.forget_key.isHidden()
    editor.name.setText("  Cloud ")
    editor.address.setText("https://api.example.com/v1/")
    editor.key.setText("sk-secret")
    press_ok(editor)
    qtbot.wait_until(lambda: dialog.editor is None)
    assert cells(dialog)[-1] == ("Cloud", "https://api.example.com", "kept")
    assert saved_rows(qtbot, dialog)[-1] == SavedServer(
        "Cloud", "https://api.example.com", "sk-secret", ""
    )


def test_a_server_added_without_a_key_has_none(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot, [])
    dialog.add_button.click()
    editor = editor_of(dialog)
    editor.name.setText("Local")
    editor.address.setText("127.0.0.1:8080")
    press_ok(editor)
    assert saved_rows(qtbot, dialog) == [SavedServer("Local", "http://127.0.0.1:8080", "", "")]


def test_editing_leaves_a_kept_key_as_it_is_unless_one_is_typed(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    dialog.table.selectRow(0)
    dialog.edit_button.click()
    editor = editor_of(dialog)
    assert editor.name.text() == "GPU box"
    assert editor.address.text() == "http://gpu-box:8080"
    assert editor.key.text() == ""
    assert editor.key.placeholderText() == "(kept)"
    assert not editor.forget_key.isHidden()
    editor.name.setText("Big GPU box")
    editor.address.setText("http://gpu-box:9090")
    press_ok(editor)
    assert saved_rows(qtbot, dialog)[0] == SavedServer(
        "Big GPU box", "http://gpu-box:9090", None, "http://gpu-box:8080"
    )

    dialog.table.selectRow(0)
    dialog.edit_button.click()
    editor = editor_of(dialog)
    editor.key.setText("new-key")
    press_ok(editor)
    assert saved_rows(qtbot, dialog)[0].api_key == "new-key"


def test_a_kept_key_can_be_forgotten(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    dialog.table.selectRow(0)
    dialog.edit_button.click()
    editor = editor_of(dialog)
    editor.forget_key.setChecked(True)
    press_ok(editor)
    assert cells(dialog)[0][2] == ""
    assert saved_rows(qtbot, dialog)[0].api_key == ""


def test_a_removed_server_is_not_saved(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    dialog.table.selectRow(0)
    dialog.remove_button.click()
    assert [row.name for row in saved_rows(qtbot, dialog)] == ["Laptop"]
    assert cells(dialog) == [("Laptop", "http://127.0.0.1:1234", "")]


@pytest.mark.parametrize(
    ("name", "address", "words"),
    [
        ("", "http://x:1", "Give the server a name."),
        ("   ", "http://x:1", "Give the server a name."),
        ("x" * 81, "http://x:1", "at most 80 characters; this one has 81"),
        ("laptop", "http://x:1", "There is already a server called “Laptop”."),
        ("New", "ftp://files.example.com", "is not an http:// or https:// address"),
        ("New", "127.0.0.1:1234/v1", "“Laptop” already has the address http://127.0.0.1:1234."),
    ],
)
def test_bad_input_is_said_and_nothing_typed_is_lost(
    qtbot: QtBot, name: str, address: str, words: str
) -> None:
    dialog = make_dialog(qtbot)
    dialog.add_button.click()
    editor = editor_of(dialog)
    editor.name.setText(name)
    editor.address.setText(address)
    editor.key.setText("typed-key")
    press_ok(editor)
    assert dialog.editor is editor  # still open
    assert not editor.error.isHidden()
    assert words in editor.error.text()
    assert (editor.name.text(), editor.address.text(), editor.key.text()) == (
        name,
        address,
        "typed-key",
    )
    assert len(cells(dialog)) == 2


def test_a_server_can_keep_its_own_name_when_edited(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    dialog.table.selectRow(1)
    dialog.edit_button.click()
    editor = editor_of(dialog)
    editor.address.setText("http://127.0.0.1:4321")
    press_ok(editor)
    assert dialog.editor is None
    assert cells(dialog)[1] == ("Laptop", "http://127.0.0.1:4321", "")


def test_test_connection_carries_the_typed_address_and_key(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    dialog.add_button.click()
    editor = editor_of(dialog)
    editor.address.setText("gpu-2:8080/v1")
    editor.key.setText("sk-typed")
    with qtbot.wait_signal(dialog.test_requested) as blocker:
        editor.test_button.click()
    assert blocker.args == ["http://gpu-2:8080", "sk-typed", ""]
    # The key would go over plain http: said before anything is sent.
    assert editor.warning.text() == WARNING


def test_test_connection_of_a_kept_key_names_where_it_is_kept(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    dialog.table.selectRow(0)
    with qtbot.wait_signal(dialog.test_requested) as blocker:
        dialog.test_button.click()
    assert blocker.args == ["http://gpu-box:8080", "", "http://gpu-box:8080"]
    dialog.edit_button.click()
    editor = editor_of(dialog)
    editor.address.setText("http://gpu-box:9090")
    with qtbot.wait_signal(dialog.test_requested) as blocker:
        editor.test_button.click()
    assert blocker.args == ["http://gpu-box:9090", "", "http://gpu-box:8080"]


def test_test_connection_of_a_bad_address_asks_nothing(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    dialog.add_button.click()
    editor = editor_of(dialog)
    editor.address.setText("ftp://x")
    asked: list[object] = []
    dialog.test_requested.connect(lambda *args: asked.append(args))
    editor.test_button.click()
    assert asked == []
    assert "not an http:// or https:// address" in editor.error.text()


def test_the_result_of_a_test_is_shown(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    dialog.add_button.click()
    editor = editor_of(dialog)
    editor.address.setText("gpu-2:8080")
    answer = "llama-server b4567 · 3 models: a, b, c"
    dialog.show_test_result("http://gpu-2:8080", answer, True)
    assert answer in editor.answer.text()
    assert answer in dialog.answer.text()
    # A result for another address is not shown as this one's.
    dialog.show_test_result("http://elsewhere:1", "cannot reach elsewhere:1", False)
    assert "cannot reach" not in editor.answer.text()
    assert "cannot reach elsewhere:1" in dialog.answer.text()


def test_an_error_is_shown_in_the_list(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot)
    dialog.table.selectRow(1)
    dialog.show_test_result("http://127.0.0.1:1234", "cannot reach 127.0.0.1:1234", False)
    assert "cannot reach 127.0.0.1:1234" in dialog.answer.text()
    dialog.show_warning(WARNING)
    assert dialog.warning.text() == WARNING
    assert not dialog.warning.isHidden()
    dialog.show_error("The list of servers could not be saved (No space left on device).")
    assert "No space left" in dialog.notice.text()


def test_keys_found_after_opening_are_marked(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot, [ServerRow("A", "http://a:1"), ServerRow("B", "http://b:1")])
    dialog.set_keys_kept({"http://b:1"})
    assert [row[2] for row in cells(dialog)] == ["", "kept"]


def test_it_fits_at_900_by_650(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot, [ServerRow(f"Server {i}", f"http://s{i}:8080") for i in range(30)])
    dialog.show_notice("API keys go to a file readable only by you: /home/someone/.local/x.json")
    dialog.show_warning(WARNING)
    dialog.show_test_result("http://s1:8080", "llama-server b4567 · 3 models: a, b, c", True)
    dialog.resize(900, 650)
    hint = dialog.minimumSizeHint()
    assert hint.width() <= 900
    assert hint.height() <= 650
    dialog.table.selectRow(0)
    dialog.edit_button.click()
    editor = editor_of(dialog)
    editor.show_error("There is already a server called “Server 1”.")
    editor.show_warning(WARNING)
    editor.show_result("llama-server b4567 · 3 models: a, b, c")
    editor_hint = editor.minimumSizeHint()
    assert editor_hint.width() <= 900
    assert editor_hint.height() <= 650
    assert dialog.buttons.geometry().bottom() <= dialog.height()
