"""A conversation written out as Markdown (to read) or JSON (to process)."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kvchat.app.core.store import Conversation, Message

JSON_FORMAT = "kvchat-conversation"
# 2: the messages are a tree (each names its parent), with the branch shown.
JSON_VERSION = 2


class Error(Exception):
    """Base class of this module's errors; messages are meant for a person."""


class ExportError(Error):
    """The file could not be written."""


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def to_markdown(
    conversation: Conversation, messages: Sequence[Message], footers: Sequence[str]
) -> str:
    """The branch `messages` of the conversation as a Markdown document;
    `footers` are the lines shown under each message (its figures), "" where
    there is none. A reply's thinking is a collapsed <details> block."""
    lines = [f"# {conversation.title}", ""]
    lines.append(f"- Model: {conversation.model_name} (`{conversation.model_path}`)")
    lines.append(
        f"- Started {_when(conversation.created_at)}, last active {_when(conversation.updated_at)}"
    )
    if conversation.system_prompt:
        lines += ["- System prompt:", "", *_fenced(conversation.system_prompt)]
    lines.append("")
    for message, footer in zip(messages, footers, strict=True):
        heading = "You" if message.role == "user" else conversation.model_name or "Model"
        # The person typed text, not Markdown: it is fenced, so a line "# Fruits"
        # stays a line. A reply is the model's Markdown, quoted, so its headings
        # and rules stay inside its section.
        body = _fenced(message.content) if message.role == "user" else _quoted(message.content)
        lines += [f"## {heading}", ""]
        if message.thinking:
            lines += ["<details><summary>Thinking</summary>", "", *_fenced(message.thinking)]
            lines += ["", "</details>", ""]
        lines += [*body, ""]
        if footer:
            lines += [f"*{footer}*", ""]
    return "\n".join(lines)


def _fenced(text: str) -> list[str]:
    """Text as a fenced block whose fence no run of backticks inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", *text.split("\n"), fence]


def _quoted(text: str) -> list[str]:
    return [f"> {line}" if line else ">" for line in text.split("\n")]


def to_json(conversation: Conversation, messages: Sequence[Message]) -> str:
    """The conversation as JSON: every message of every branch, each with the
    key of the one it follows, its state and figures; `shown_branch_ends_at`
    is the last message of the branch on screen."""
    document = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "title": conversation.title,
        "model": {"name": conversation.model_name, "path": conversation.model_path},
        "system_prompt": conversation.system_prompt,
        "created_at": _iso(conversation.created_at),
        "updated_at": _iso(conversation.updated_at),
        "model_sees_from": conversation.view_start,
        "shown_branch_ends_at": conversation.leaf_key or None,
        "messages": [
            {
                "key": m.key,
                "follows": m.parent_key,
                "role": m.role,
                "content": m.content,
                "thinking": m.thinking,
                "state": m.state,
                "created_at": _iso(m.created_at),
                "stats": json.loads(m.stats) if m.stats else None,
            }
            for m in messages
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_text(path: Path, text: str) -> None:
    """Writes the file whole or not at all (a temporary file, then a rename).

    Raises:
        ExportError: the folder or the disk refused.
    """
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        raise ExportError(f"Could not write {path}: {exc.strerror or exc}") from exc
