from kvchat.engine.text_stream import Utf8Stream


def test_character_split_across_pieces_is_held_back() -> None:
    stream = Utf8Stream()
    emoji = "🎉".encode()
    assert stream.push(b"ok " + emoji[:2]) == "ok "
    assert stream.push(emoji[2:3]) == ""
    assert stream.push(emoji[3:] + "日".encode()) == "🎉日"
    assert stream.finish() == ""


def test_bytes_that_never_complete_become_one_replacement() -> None:
    stream = Utf8Stream()
    assert stream.push("é".encode()[:1]) == ""
    assert stream.finish() == "\ufffd"
