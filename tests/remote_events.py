"""Reading a RemoteHost's events in a test, up to the one that matters."""

from __future__ import annotations

import time

from kvchat.engine.protocol import ChatFailed, Event, LoadFailed
from kvchat.engine.remote import RemoteHost


def events_until(host: RemoteHost, until: type, timeout: float) -> list[Event]:
    """The host's events up to the first of type `until`, or a failure."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = host.receive(timeout=0.5)
        if event is None:
            continue
        got.append(event)
        if isinstance(event, until | ChatFailed | LoadFailed):
            return got
    raise AssertionError(f"no {until.__name__} within {timeout:g} s: {got}")
