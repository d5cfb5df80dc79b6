"""The models each of the person's servers offers, as entries of the model list.

Qt-free: the settings flow runs it on its worker thread. A server that
cannot be asked is named with the reason, and the local models are listed
as ever.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import httpx

from kvchat.engine.model_catalog import ModelEntry
from kvchat.engine.remote_address import model_url
from kvchat.engine.remote_servers import RemoteError, identify

# (the server's name, its base URL, its API key)
ServerAccess = tuple[str, str, str | None]


def _client() -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)


def list_remote_models(
    servers: Sequence[ServerAccess], client: Callable[[], httpx.Client] = _client
) -> tuple[list[ModelEntry], list[str]]:
    """Each server's models ("Qwen3-32B on gpu-box"), and why a server could not say."""
    entries: list[ModelEntry] = []
    problems: list[str] = []
    for name, base_url, key in servers:
        try:
            with client() as session:
                identity = identify(session, base_url, key)
        except RemoteError as exc:
            problems.append(f"{name}: {exc}")
            continue
        for model in identity.models:
            entries.append(
                ModelEntry(
                    path=model_url(identity.base_url or base_url, model.id),
                    name=f"{model.id} on {name}",
                    source=f"{name} ({identity.label})",
                    size_bytes=model.size_bytes or 0,
                    architecture=model.details,
                    parameter_count=model.n_params or 0,
                    context_length=model.context_length,
                )
            )
    return entries, problems
