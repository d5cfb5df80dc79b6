from pytestqt.qtbot import QtBot

from ui.chat_view import ChatView


def test_reply_grows_in_place(qtbot: QtBot) -> None:
    view = ChatView()
    qtbot.addWidget(view)
    view.add_message("You", "Hi <b>there</b>", from_person=True)
    view.begin_reply("Model")
    for piece in ("Hel", "lo", "\nsecond line", " 🎉"):
        view.append_reply(piece)
    assert view.reply_text() == "Hello\nsecond line 🎉"
    view.end_reply("3 tokens")
    text = view.toPlainText()
    # Text is shown as typed, never interpreted as markup.
    assert "Hi <b>there</b>" in text
    assert text.endswith("Model\nHello\nsecond line 🎉\n3 tokens")
    assert view.message_count == 2
    assert not view.replying


def test_appending_keeps_the_view_at_the_bottom(qtbot: QtBot) -> None:
    view = ChatView()
    qtbot.addWidget(view)
    view.resize(300, 200)
    view.show()
    view.begin_reply("Model")
    for index in range(200):
        view.append_reply(f"line {index}\n")
    bar = view.verticalScrollBar()
    assert bar.maximum() > 0
    assert bar.value() == bar.maximum()
