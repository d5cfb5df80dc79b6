"""A conversation's messages as a tree of kept alternatives.

Editing a message or regenerating a reply does not replace it: the new one
is a sibling (the same parent), and both are kept. A person sees one branch
at a time, from a first message down to a leaf, and pages through the
versions of any message on it. Qt-free and SQL-free: app.history keeps the
tree in step with the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from kvchat.app.core.store import Message


class ConversationTree:
    """Every message of one conversation, by key, with each one's children.

    Children are kept in the order they were added (the order of their
    versions); `Message.parent_key` is None for the first messages.
    """

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        self._messages: dict[str, Message] = {}
        self._children: dict[str | None, list[str]] = {}
        for message in sorted(messages, key=lambda m: (m.position, m.created_at)):
            self.put(message)

    def __contains__(self, key: object) -> bool:
        return key in self._messages

    def __len__(self) -> int:
        return len(self._messages)

    def get(self, key: str) -> Message | None:
        return self._messages.get(key)

    def put(self, message: Message) -> None:
        """Adds a message, or replaces the one with its key (it keeps its place)."""
        if message.key not in self._messages:
            parent = message.parent_key if message.parent_key in self._messages else None
            self._children.setdefault(parent, []).append(message.key)
        self._messages[message.key] = message

    def remove(self, key: str) -> list[str]:
        """Removes a message and everything that follows it; returns their keys."""
        message = self._messages.get(key)
        if message is None:
            return []
        siblings = self._children.get(self._parent(message), [])
        if key in siblings:
            siblings.remove(key)
        gone = list(self._descendants(key))
        for each in gone:
            del self._messages[each]
            self._children.pop(each, None)
        return gone

    def _parent(self, message: Message) -> str | None:
        return message.parent_key if message.parent_key in self._messages else None

    def _descendants(self, key: str) -> Iterator[str]:
        """The message and all below it, without recursion (a long
        conversation is thousands of levels deep)."""
        waiting = [key]
        while waiting:
            each = waiting.pop()
            yield each
            waiting.extend(self._children.get(each, []))

    def versions(self, message: Message) -> tuple[int, int]:
        """Which version the message is among its siblings (from 1), and how many there are."""
        siblings = self._children.get(self._parent(message), [message.key])
        return siblings.index(message.key) + 1, len(siblings)

    def sibling(self, key: str, step: int) -> Message | None:
        """The version `step` places after (or before) this one; None past either end."""
        message = self._messages.get(key)
        if message is None:
            return None
        siblings = self._children.get(self._parent(message), [key])
        index = siblings.index(key) + step
        return self._messages[siblings[index]] if 0 <= index < len(siblings) else None

    def branch(self, leaf_key: str) -> list[Message]:
        """The messages from a first message down to `leaf_key`, in order.

        A leaf that is not in the tree (a reply that ended before its first
        words were written) gives the branch that was active last.
        """
        if leaf_key not in self._messages:
            roots = self._children.get(None, [])
            if not roots:
                return []
            leaves = [self.latest_leaf(root) for root in roots]
            leaf_key = max(leaves, key=lambda key: self._messages[key].updated_at)
        path: list[Message] = []
        key: str | None = leaf_key
        while key is not None:
            message = self._messages[key]
            path.append(message)
            key = self._parent(message)
        path.reverse()
        return path

    def latest_leaf(self, key: str) -> str:
        """The end of the branch under `key` that was active last: paging to a
        version shows the conversation as the person left it there."""
        best = key
        best_at = float("-inf")
        for each in self._descendants(key):
            if not self._children.get(each):
                at = self._messages[each].updated_at
                if at >= best_at:
                    best, best_at = each, at
        return best

    def all(self) -> list[Message]:
        """Every message, parents before their children, versions in order."""
        ordered: list[Message] = []
        waiting = list(reversed(self._children.get(None, [])))
        while waiting:
            key = waiting.pop()
            ordered.append(self._messages[key])
            waiting.extend(reversed(self._children.get(key, [])))
        return ordered
