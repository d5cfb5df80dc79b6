from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from kvchat.ui.conversation_list import SEARCH_DELAY_MS, ConversationItem, ConversationList
from kvchat.ui.main_window import MainWindow

ITEMS = [
    ConversationItem("b", "Newest", "Model · last active 2026-05-10 12:00"),
    ConversationItem("a", "Older", "Model · last active 2026-05-09 08:00"),
]


def _list(qtbot: QtBot) -> ConversationList:
    listing = ConversationList()
    qtbot.addWidget(listing)
    listing.show()
    listing.set_conversations(ITEMS, current="a")
    return listing


def test_rows_in_the_order_given_with_the_current_one_selected(qtbot: QtBot) -> None:
    listing = _list(qtbot)
    assert listing.titles() == ["Newest", "Older"]
    assert listing.keys() == ["b", "a"]
    assert listing.list.currentItem().text() == "Older"
    assert listing.list.item(0).toolTip() == "Model · last active 2026-05-10 12:00"
    listing.select(None)
    assert listing.list.currentItem() is None


def test_clicking_a_row_chooses_it(qtbot: QtBot) -> None:
    listing = _list(qtbot)
    with qtbot.waitSignal(listing.chosen) as chosen:
        rect = listing.list.visualItemRect(listing.list.item(0))
        qtbot.mouseClick(listing.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert chosen.args == ["b"]


def test_renaming_in_place(qtbot: QtBot) -> None:
    listing = _list(qtbot)
    with qtbot.waitSignal(listing.rename_requested) as renamed:
        listing.list.item(1).setText("  Renamed  ")
    assert renamed.args == ["a", "Renamed"]
    # An empty title is not a name.
    with qtbot.assertNotEmitted(listing.rename_requested):
        listing.list.item(1).setText("   ")


def test_delete_key_and_undo(qtbot: QtBot) -> None:
    listing = _list(qtbot)
    listing.activateWindow()
    listing.list.setFocus()
    qtbot.waitUntil(listing.list.hasFocus)
    listing.list.setCurrentRow(0)
    with qtbot.waitSignal(listing.delete_requested) as deleted:
        qtbot.keyClick(listing.list, Qt.Key.Key_Delete)
    assert deleted.args == ["b"]
    listing.offer_undo("b", "Newest")
    assert listing.undo_label.text() == "Deleted “Newest”."
    with qtbot.waitSignal(listing.undo_requested) as undone:
        qtbot.mouseClick(listing.undo_button, Qt.MouseButton.LeftButton)
    assert undone.args == ["b"]
    assert not listing.undo_bar.isVisible()


def test_search_waits_for_typing_to_pause(qtbot: QtBot) -> None:
    listing = _list(qtbot)
    searches: list[str] = []
    listing.search_changed.connect(searches.append)
    qtbot.keyClicks(listing.search, "kv cache")
    assert searches == []
    qtbot.waitUntil(lambda: searches == ["kv cache"], timeout=SEARCH_DELAY_MS * 10)


def test_new_from_the_button_and_the_menu(qtbot: QtBot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    news: list[bool] = []
    window.conversation_list.new_requested.connect(lambda: news.append(True))
    qtbot.mouseClick(window.conversation_list.new_button, Qt.MouseButton.LeftButton)
    window.new_action.trigger()
    assert news == [True, True]
    assert window.new_action.shortcut().toString() == "Ctrl+N"
    assert window.conversations_dock.isVisibleTo(window)
