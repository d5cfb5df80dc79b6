"""What the hub offers: GGUF model repositories, and each one's files as people choose them.

A repository's files are grouped the way a person picks one: by
quantization (Q4_K_M, Q8_0, …), a model split into `-00001-of-0000N` parts
as one entry, and a vision projector (`mmproj`) marked as such, since it
goes beside a chat model and is not one.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import httpx
from huggingface_hub import HfApi, ModelInfo, RepoFile, constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from kvchat.engine.gguf_file import SPLIT_NAME, split_part_names

# The hub's sort orders, by the names the command line and the view use.
SORTS = {"downloads": "downloads", "likes": "likes", "recent": "last_modified"}
SEARCH_LIMIT = 40
# How long a reachability answer holds before it is asked again.
REACHABLE_FOR_S = 60.0
PROBE_TIMEOUT_S = 5.0
OFFLINE = "HF_HUB_OFFLINE is set, so kvchat does not reach Hugging Face; local models work as ever"
# A full disk, a full quota, a file size limit.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

# Quantization labels as GGUF file names carry them (llama.cpp's quantize
# names and the usual float types), matched as a whole word of the name.
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|TQ\d_\d|MXFP4(?:_MOE)?|BF16|F16|F32|FP16|FP32)(?![A-Za-z0-9])",
    re.IGNORECASE,
)


class HubError(Exception):
    """The hub could not answer; the message is meant for a person."""


class RefusedError(HubError):
    """What was asked for does not exist, may not be had, or is not a model kvchat
    can use: the person's input, not a failure on the way (`kvchat models` exits 2)."""


@dataclass(frozen=True)
class RepoSummary:
    """One search result: a repository and what the hub says of it."""

    repo: str
    downloads: int | None
    likes: int | None
    last_modified: datetime | None
    license: str | None
    parameters: int | None
    gated: bool


@dataclass(frozen=True)
class HubFile:
    """One file of a repository, as the hub's tree lists it."""

    path: str
    size: int
    # The LFS object's sha256 (None for a file stored in git itself), and
    # the git blob id (what names a file stored in git).
    sha256: str | None
    git_oid: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelFile:
    """A GGUF model as a person chooses it: one file, or all parts of a split one.

    `problem` is set for an entry that cannot be used (parts missing).
    """

    repo: str
    revision: str
    parts: tuple[HubFile, ...]
    quantization: str
    is_projector: bool
    problem: str = ""

    @property
    def path(self) -> str:
        """The first part's path in the repository: the one llama.cpp opens."""
        return self.parts[0].path

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def label(self) -> str:
        if len(self.parts) == 1:
            return self.path
        match = SPLIT_NAME.match(self.path)
        whole = f"{match['prefix']}.gguf" if match else self.path
        return f"{whole} ({len(self.parts)} parts)"


def quantization_of(name: str) -> str:
    """The quantization a file's name states ("Q4_K_M"), or "other"."""
    stem = name.rsplit("/", 1)[-1]
    match = SPLIT_NAME.match(stem)
    stem = match["prefix"] if match else stem.removesuffix(".gguf").removesuffix(".GGUF")
    found = _QUANT.findall(stem)
    return found[-1].upper() if found else "other"


def is_projector(name: str) -> bool:
    """Whether a file is a vision or audio projector (llama.cpp's mmproj files)."""
    return "mmproj" in name.rsplit("/", 1)[-1].lower()


def group_files(repo: str, revision: str, files: list[HubFile]) -> list[ModelFile]:
    """The GGUF models among a repository's files, split parts joined, by quantization then name."""
    by_path = {f.path: f for f in files if f.path.lower().endswith(".gguf")}
    models: list[ModelFile] = []
    seen: set[str] = set()
    for path in sorted(by_path):
        if path in seen:
            continue
        folder, _, name = path.rpartition("/")
        names = split_part_names(name)
        parts: tuple[HubFile, ...]
        if names is None:
            parts, problem = (by_path[path],), ""
        else:
            paths = [f"{folder}/{n}" if folder else n for n in names]
            seen.update(paths)
            parts = tuple(by_path[p] for p in paths if p in by_path)
            missing = len(paths) - len(parts)
            problem = f"{missing} of its {len(paths)} parts are missing" if missing else ""
            if paths[0] not in by_path:
                problem = f"its first part ({names[0]}) is missing"
        models.append(
            ModelFile(
                repo=repo,
                revision=revision,
                parts=parts,
                quantization=quantization_of(path),
                is_projector=is_projector(path),
                problem=problem,
            )
        )
    models.sort(key=lambda m: (m.is_projector, m.quantization, m.label))
    return models


def _host(endpoint: str) -> str:
    return urlsplit(endpoint).netloc or endpoint


class Hub:
    """The hub at one endpoint (HF_ENDPOINT's by default), with HF_TOKEN's token by default."""

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.token = token
        self.api = HfApi(endpoint=self.endpoint, token=token)
        self._reachable_at = -REACHABLE_FOR_S

    @property
    def host(self) -> str:
        return _host(self.endpoint)

    def page_of(self, repo: str) -> str:
        return f"{self.endpoint}/{repo}"

    def check_reachable(self) -> None:
        """Fails fast when the hub cannot be reached at all.

        huggingface_hub retries a refused connection for about 20 seconds, as
        it would a passing outage; a person waiting on a search should hear
        at once that there is no network.
        """
        if constants.HF_HUB_OFFLINE:
            raise HubError(OFFLINE)
        if time.monotonic() - self._reachable_at < REACHABLE_FOR_S:
            return
        try:
            httpx.head(self.endpoint, timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise HubError(
                f"cannot reach {self.host} ({_reason(exc)}); local models work as ever"
            ) from None
        self._reachable_at = time.monotonic()

    @contextmanager
    def errors(self, repo: str | None = None, filename: str | None = None) -> Iterator[None]:
        """Turns huggingface_hub's exceptions into a HubError a person can read."""
        try:
            yield
        except HubError:
            raise
        except GatedRepoError:
            raise RefusedError(
                f"{repo} is gated: accept its license at {self.page_of(str(repo))} "
                "while signed in, then set HF_TOKEN to a token of that account"
            ) from None
        except RevisionNotFoundError:
            raise RefusedError(f"{repo} has no such revision") from None
        except RepositoryNotFoundError:
            raise RefusedError(
                f"{self.host} has no model repository {repo!r} (if it is private, set HF_TOKEN)"
            ) from None
        except EntryNotFoundError:
            raise RefusedError(f"{repo} has no file {filename!r}") from None
        except HFValidationError:
            raise RefusedError(
                f"{repo!r} is not a repository name (they read owner/name)"
            ) from None
        except OfflineModeIsEnabled:
            raise HubError(OFFLINE) from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise HubError(f"{self.host} answered with an error (HTTP {status})") from None
        except OSError as exc:
            if exc.errno in _NO_ROOM:
                raise HubError(
                    f"no room left for the file ({exc.strerror}), so it stopped"
                ) from None
            if exc.filename:  # the cache on this machine, not the hub
                raise HubError(f"{exc.filename}: {exc.strerror or exc}") from None
            raise HubError(f"{self.host}: {exc.strerror or exc}") from None
        except ValueError:
            # An answer that is not the hub's JSON: a proxy's page, or a mirror
            # that lacks the route.
            raise HubError(f"{self.host} answered in a form kvchat cannot read") from None
        except Exception as exc:
            # huggingface_hub's HTTP client (httpx2) raises its own transport
            # errors, which share no base class with ours but their names.
            if is_transport_error(exc):
                raise HubError(f"cannot reach {self.host} ({_reason(exc)})") from None
            raise

    def search(
        self, query: str, sort: str = "downloads", limit: int = SEARCH_LIMIT
    ) -> list[RepoSummary]:
        """GGUF model repositories matching `query`, most downloaded (or liked, or recent) first."""
        self.check_reachable()
        with self.errors():
            found = self.api.list_models(
                search=query or None,
                filter="gguf",
                sort=SORTS.get(sort, "downloads"),  # type: ignore[arg-type]
                limit=limit,
                expand=["downloads", "likes", "lastModified", "tags", "gguf", "gated"],
            )
            return [_summary(info) for info in found]

    def files(self, repo: str, revision: str | None = None) -> list[ModelFile]:
        """The GGUF models of `repo` at `revision` (its main branch by default)."""
        self.check_reachable()
        with self.errors(repo):
            info = self.api.model_info(repo, revision=revision)
            commit = info.sha or revision or "main"
            tree = self.api.list_repo_tree(repo, revision=commit, recursive=True)
            files = [
                HubFile(
                    path=entry.path,
                    size=int(entry.size),
                    sha256=entry.lfs.sha256 if entry.lfs is not None else None,
                    git_oid=entry.blob_id,
                )
                for entry in tree
                if isinstance(entry, RepoFile)
            ]
        return group_files(repo, commit, files)


def is_transport_error(exc: BaseException) -> bool:
    """Whether `exc` is a network failure of httpx or of huggingface_hub's own client.

    huggingface_hub 2 talks through httpx2, whose exceptions mirror httpx's
    names but share no base class with them.
    """
    return any(cls.__name__ == "TransportError" for cls in type(exc).__mro__)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "no answer in time"
    if "name or service not known" in text.lower() or "nodename" in text.lower():
        return "the name does not resolve: no network?"
    return text or type(exc).__name__


def _summary(info: ModelInfo) -> RepoSummary:
    tags = list(info.tags or [])
    license_tag = next((t.split(":", 1)[1] for t in tags if t.startswith("license:")), None)
    gguf = info.gguf
    parameters = gguf.get("total") if isinstance(gguf, dict) else None
    return RepoSummary(
        repo=info.id,
        downloads=info.downloads,
        likes=info.likes,
        last_modified=info.last_modified,
        license=license_tag,
        parameters=int(parameters) if isinstance(parameters, (int, float)) else None,
        gated=bool(info.gated),
    )
