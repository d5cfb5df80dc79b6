"""A fits answer before a download: the header fetched, the dry run on a sparse file.

llama.cpp's dry run (engine.estimate) reads only a model's header and tensor
table. So kvchat streams a file from its start, stops as soon as the header
check (engine.gguf_file) has all of the header, writes those bytes into a
sparse file of the file's full size, and runs the same dry run on it. The
answer equals the one for the downloaded file, since llama.cpp sees the same
header and the same size; the weights it never reads are holes of zeros.
Streaming from the start works whether or not the server honours Range
requests, and a file whose header is not a usable GGUF is refused before the
rest of it is fetched.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from huggingface_hub import get_token, hf_hub_url

from kvchat.app.core.settings import EngineSettings
from kvchat.app.hub.catalog import Hub, HubError, HubFile, ModelFile, RefusedError
from kvchat.engine.estimate import Error as EstimateError
from kvchat.engine.estimate import Estimate, estimate
from kvchat.engine.gguf_file import HeaderIncompleteError, ModelFileError, read_gguf

CHUNK_BYTES = 1 << 16
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RemoteEstimate:
    """An estimate made before downloading, and what getting it took."""

    model: ModelFile
    estimate: Estimate
    bytes_read: int
    header_seconds: float
    dry_run_seconds: float


def fetch_header(hub: Hub, model: ModelFile, part: HubFile, folder: Path) -> int:
    """Writes `part`'s header into a sparse file of its full size in `folder`; returns bytes read.

    Raises:
        HubError: the hub cannot be reached, refuses the file, or the file's
            header is not a usable GGUF header.
    """
    target = folder / part.name
    url = hf_hub_url(model.repo, part.path, revision=model.revision, endpoint=hub.endpoint)
    token = hub.token or get_token()  # HF_TOKEN, or the one `hf auth login` stored
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    received = 0
    needed = 64
    with open(target, "wb") as sparse:
        try:
            sparse.truncate(part.size)
        except OSError as exc:
            raise HubError(f"cannot make a file to read the header into ({exc.strerror})") from None
        try:
            # hub.errors comes first: sending the request, as the stream opens,
            # is where a hub out of reach fails.
            with (
                hub.errors(model.repo, part.path),
                httpx.Client(follow_redirects=True, timeout=TIMEOUT_S) as client,
                client.stream("GET", url, headers=headers) as response,
            ):
                if response.status_code in (401, 403):
                    raise RefusedError(
                        f"{model.repo} is gated or private: accept its license at "
                        f"{hub.page_of(model.repo)}, then set HF_TOKEN"
                    )
                if response.status_code == 404:
                    raise RefusedError(f"{model.repo} has no file {part.path!r}")
                if response.status_code >= 400:
                    raise HubError(
                        f"{hub.host} answered HTTP {response.status_code} for {part.path}"
                    )
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    chunk = chunk[: max(0, part.size - received)]
                    sparse.write(chunk)
                    received += len(chunk)
                    if received < needed and received < part.size:
                        continue
                    sparse.flush()
                    try:
                        read_gguf(target, known=received)
                        return received
                    except HeaderIncompleteError as exc:
                        # Each try walks the header from its start, so the
                        # next waits for twice as much: a few walks in all,
                        # and at most twice the header read.
                        needed = max(exc.needed, 2 * received)
                    if received >= part.size:
                        break
        except httpx.HTTPError as exc:  # what is not a network failure (redirect loops)
            raise HubError(f"cannot read {part.path} from {hub.host}: {exc}") from None
        except ModelFileError as exc:
            raise RefusedError(f"not a model kvchat can use: {exc}") from None
    if received < part.size:
        raise HubError(
            f"{hub.host} ended {part.path} after {received} of its {part.size} bytes, "
            "before the end of its header"
        )
    raise RefusedError("not a model kvchat can use: its header never ends")


def estimate_remote(
    hub: Hub, model: ModelFile, settings: EngineSettings, fit: bool | None = None
) -> RemoteEstimate:
    """The dry run's estimate of loading `model` with `settings`, before any download.

    A split model's parts each give their header, into files of the same
    names, so llama.cpp finds them as it would in the cache. `fit` asks for
    the most GPU layers and the largest context that fit (a few more dry
    runs); by default only when the load does not fit on a machine with a
    GPU, where "partly: N of M layers" is the answer a person needs.

    Raises:
        HubError: as fetch_header, or the dry run could not answer.
    """
    if model.problem:
        raise RefusedError(f"{model.label} cannot be used: {model.problem}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kvchat-header-") as name:
        folder = Path(name)
        bytes_read = sum(fetch_header(hub, model, part, folder) for part in model.parts)
        fetched = time.perf_counter()
        config = settings.load_config(os.fspath(folder / model.parts[0].name))
        try:
            result = estimate(config, fit=bool(fit))
            gpu = any(d.kind != "cpu" for d in result.projection.devices)
            if fit is None and gpu and not result.projection.fits:
                result = estimate(config, fit=True)
        except ModelFileError as exc:
            raise RefusedError(f"not a model kvchat can use: {exc}") from None
        except EstimateError as exc:
            raise HubError(f"no estimate: {exc}") from None
    return RemoteEstimate(
        model, result, bytes_read, fetched - started, time.perf_counter() - fetched
    )
