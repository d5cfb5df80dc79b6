from kvchat.engine.text_stream import Utf8Stream


def test_character_split_across_pieces_is_held_back() -> None:
    stream = Utf8Stream()
    emoji = "🎉".encode()
    assert stream.push(b"ok " + emoji[:2]) == "ok "
    assert stream.push(emoji[2:3]) == ""
    assert stream.push(emoji[3:] + "日".encode()) == "🎉日"
    assert stream.finish() == ""


def test_a_character_the_reply_ends_inside_is_dropped() -> None:
    stream = Utf8Stream()
    assert stream.push(b"caf" + "é".encode()[:1]) == "caf"
    assert stream.finish() == ""
    assert stream.push(b"ok") == "ok"  # and the stream starts clean


def test_bytes_that_are_not_utf8_mid_reply_become_a_replacement() -> None:
    stream = Utf8Stream()
    assert stream.push(b"a\xffb") == "a\ufffdb"


def _feed(words: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    from kvchat.engine.text_stream import StopWords

    stops = StopWords(words)
    shown = "".join(stops.push(piece) for piece in pieces)
    return shown + stops.finish(), stops.stopped


def test_stop_word_ends_the_text_before_it() -> None:
    assert _feed(("END",), ["Hello ", "wor", "ld E", "ND more"]) == ("Hello world ", True)


def test_stop_word_split_over_pieces_is_never_shown() -> None:
    from kvchat.engine.text_stream import StopWords

    stops = StopWords(("\n\nUser:",))
    assert stops.push("Answer.\n") == "Answer."
    assert stops.push("\nUs") == ""
    assert stops.push("er: hi") == ""
    assert stops.stopped


def test_a_near_miss_is_shown_in_full() -> None:
    assert _feed(("STOP",), ["ST", "OX and more"]) == ("STOX and more", False)


def test_no_stop_words_pass_text_through() -> None:
    assert _feed((), ["a", "b"]) == ("ab", False)


def test_the_earliest_of_several_stop_words_wins() -> None:
    assert _feed(("bb", "a"), ["xxbba"]) == ("xx", True)
