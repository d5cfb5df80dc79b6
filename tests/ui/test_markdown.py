"""Cutting a reply into blocks: markdown-it's top-level blocks, spans exact."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kvchat.ui.markdown import split_blocks

LIST_WITH_CODE = (
    "1. Install it:\n"
    "   ```sh\n"
    "   pip install kvchat\n"
    "   ```\n"
    "2. Run it.\n"
    "\n"
    "```python\n"
    "print('top level')\n"
    "```\n"
    "Done.\n"
)


def test_a_fence_inside_a_list_item_stays_in_its_list() -> None:
    blocks = split_blocks(LIST_WITH_CODE)
    assert [b.kind for b in blocks] == ["prose", "code", "prose"]
    assert "pip install kvchat" in blocks[0].text and "2. Run it." in blocks[0].text
    assert blocks[1].text == "print('top level')" and blocks[1].language == "python"
    assert blocks[1].closed


def test_an_open_fence_at_the_end_is_code_being_written() -> None:
    (prose, code) = split_blocks("Here:\n\n~~~~js\nlet a = 1\nlet b")
    assert prose.kind == "prose" and code.kind == "code"
    assert code.text == "let a = 1\nlet b" and not code.closed and code.fence == "~~~~"


PIECES = st.sampled_from(
    [
        "Some prose.\n",
        "\n",
        "- item\n",
        "  continued\n",
        "1. step\n",
        "   ```py\n",
        "```\n",
        "```python\n",
        "x = 1\n",
        "# Heading\n",
        "> quote\n",
        "    indented code\n",
        "text without end",
        "\r\n",
    ]
)


@given(st.lists(PIECES, max_size=30))
def test_spans_cover_the_text_and_a_suffix_splits_alike(pieces: list[str]) -> None:
    text = "".join(pieces)
    blocks = split_blocks(text)
    assert sum(b.length for b in blocks) == len(text)
    # Streaming renders settled blocks once and re-splits what follows them:
    # the blocks after a settled one must come out the same.
    if len(blocks) > 2:
        offset = blocks[0].length
        again = split_blocks(text[offset:])
        assert [(b.kind, b.length) for b in again] == [(b.kind, b.length) for b in blocks[1:]]
