"""Downloads into the Hugging Face cache: space checked first, bytes checked after.

Each file is fetched by huggingface_hub in a child process
(app.hub.fetch), so other tools that read the cache find it where they
look. kvchat watches the temporary file grow for its progress, checks the
result against the hub's sha256, and on Cancel, a failure or a bad checksum
removes what the download left. A download interrupted by a crash or a
kill is written down in a journal first; `clean_interrupted` removes its
leftovers at the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name

from kvchat.app.hub.catalog import Hub, HubError, HubFile, ModelFile, RefusedError
from kvchat.app.hub.header import fetch_header
from kvchat.engine.children import child_environment, python_command, safe_working_folder

# Room left on the disk beyond the download itself.
SPARE_BYTES = 256 << 20
POLL_S = 0.2
# Speed is measured over this many seconds of progress.
SPEED_WINDOW_S = 3.0
HASH_CHUNK = 1 << 20


class DownloadError(HubError):
    """A download that did not end with a verified file; the message is for a person."""


class DownloadRefusedError(DownloadError, RefusedError):
    """A download refused before its weights come: a file that cannot be used."""


class CancelledError(DownloadError):
    """The download was cancelled, and what it had fetched is removed."""


@dataclass(frozen=True)
class Progress:
    """Where a download is. `phase` is "downloading" or "checking"."""

    done_bytes: int
    total_bytes: int
    bytes_per_s: float
    phase: str
    part: int
    parts: int

    @property
    def seconds_left(self) -> float | None:
        if self.bytes_per_s <= 0:
            return None
        return (self.total_bytes - self.done_bytes) / self.bytes_per_s


def default_cache_dir() -> Path:
    """The Hugging Face cache that huggingface_hub and other tools use (HF_HUB_CACHE, HF_HOME)."""
    return Path(constants.HF_HUB_CACHE)


def _storage(cache_dir: Path, repo: str) -> Path:
    return cache_dir / repo_folder_name(repo_id=repo, repo_type="model")


def _blob_id(part: HubFile) -> str | None:
    """The name huggingface_hub gives the part's blob: the LFS sha256, else the git blob id."""
    return part.sha256 or part.git_oid


def cached_path(model: ModelFile, part: HubFile, cache_dir: Path) -> Path | None:
    """Where `part` of `model` already is in the cache, if it is there."""
    pointer = _storage(cache_dir, model.repo) / "snapshots" / model.revision / part.path
    return pointer if pointer.exists() else None


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_space(model: ModelFile, cache_dir: Path) -> None:
    """Refuses a download that the disk holding the cache has no room for."""
    needed = sum(p.size for p in model.parts if cached_path(model, p, cache_dir) is None)
    if needed == 0:
        return
    free = shutil.disk_usage(_existing_ancestor(cache_dir)).free
    if needed + SPARE_BYTES > free:
        raise DownloadError(
            f"{model.label} needs {needed / (1 << 30):.1f} GiB on the disk that holds "
            f"{cache_dir}, and {free / (1 << 30):.1f} GiB is free"
        )


def file_digest(path: Path, algorithm: str, prefix: bytes = b"") -> str:
    digest = hashlib.new(algorithm)
    digest.update(prefix)
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def matches_hub(path: Path, part: HubFile) -> bool:
    """Whether a downloaded file is the one the hub lists: its sha256, or its git blob id."""
    if path.stat().st_size != part.size:
        return False
    if part.sha256 is not None:
        return file_digest(path, "sha256") == part.sha256
    if part.git_oid is not None:
        # git names a blob by the sha1 of "blob <size>\0" and the content.
        return file_digest(path, "sha1", f"blob {part.size}\0".encode()) == part.git_oid
    return True


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _partials(cache_dir: Path, repo: str, blob: str) -> list[Path]:
    """The temporary files huggingface_hub writes while it fetches `blob`."""
    return sorted((_storage(cache_dir, repo) / "blobs").glob(f"{blob}*.incomplete"))


def _lock_path(cache_dir: Path, repo: str, blob: str) -> Path:
    folder = repo_folder_name(repo_id=repo, repo_type="model")
    return cache_dir / ".locks" / folder / f"{blob}.lock"


def remove_partials(cache_dir: Path, repo: str, blob: str) -> bool:
    """Removes a stopped download's temporary files; False while someone still downloads it."""
    lock = FileLock(_lock_path(cache_dir, repo, blob))
    try:
        with lock.acquire(timeout=0):
            for partial in _partials(cache_dir, repo, blob):
                _remove(partial)
    except Timeout:
        return False
    except FileNotFoundError:
        for partial in _partials(cache_dir, repo, blob):
            _remove(partial)
    return True


class Journal:
    """Downloads under way, one small file each, so a crash's leftovers are found later."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _entry(self, cache_dir: Path, repo: str, blob: str) -> Path:
        key = hashlib.sha256(f"{cache_dir}\0{repo}\0{blob}".encode()).hexdigest()[:32]
        return self.folder / f"{key}.json"

    def begin(self, cache_dir: Path, repo: str, blob: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"cache_dir": os.fspath(cache_dir), "repo": repo, "blob": blob}
        self._entry(cache_dir, repo, blob).write_text(json.dumps(record), encoding="utf-8")

    def end(self, cache_dir: Path, repo: str, blob: str) -> None:
        _remove(self._entry(cache_dir, repo, blob))

    def clean_interrupted(self) -> int:
        """Removes what interrupted downloads left in the cache; returns how many were cleaned."""
        cleaned = 0
        for entry in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                record = json.loads(entry.read_text(encoding="utf-8"))
                cache_dir, repo, blob = Path(record["cache_dir"]), record["repo"], record["blob"]
            except (OSError, ValueError, KeyError, TypeError):
                _remove(entry)
                continue
            if remove_partials(cache_dir, repo, blob):
                _remove(entry)
                cleaned += 1
        return cleaned


class Download:
    """One model (all its parts) into the cache; `run` blocks, `cancel` may come from any thread."""

    def __init__(
        self,
        hub: Hub,
        model: ModelFile,
        cache_dir: Path | None = None,
        journal: Journal | None = None,
    ) -> None:
        if model.problem:
            raise DownloadRefusedError(f"{model.label} cannot be downloaded: {model.problem}")
        self.hub = hub
        self.model = model
        self.cache_dir = cache_dir or default_cache_dir()
        self.journal = journal
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def run(self, on_progress: Callable[[Progress], None] = lambda _: None) -> Path:
        """Downloads and checks every part; returns the first part's path in the cache.

        Raises:
            CancelledError: cancel() was called; nothing fetched is left behind.
            DownloadError: no room, a header that is not a usable GGUF header,
                the hub failed, or a checksum did not match.
        """
        check_space(self.model, self.cache_dir)
        self._check_headers()
        paths: list[Path] = []
        done = 0
        total = self.model.size
        parts = len(self.model.parts)
        for index, part in enumerate(self.model.parts):
            path = cached_path(self.model, part, self.cache_dir)
            if path is None:
                path = self._fetch(part, index, done, on_progress)
            on_progress(Progress(done + part.size, total, 0.0, "checking", index + 1, parts))
            if not matches_hub(path, part):
                self._discard(path)
                raise DownloadError(
                    f"{part.path} as downloaded does not match the hub's checksum, so it was "
                    "deleted; try again (the file may have changed on the hub meanwhile)"
                )
            done += part.size
            paths.append(path)
        return paths[0]

    def _check_headers(self) -> None:
        """Refuses a file whose header is not a usable GGUF header, before its weights come."""
        missing = [
            p for p in self.model.parts if cached_path(self.model, p, self.cache_dir) is None
        ]
        if not missing:
            return
        with tempfile.TemporaryDirectory(prefix="kvchat-header-") as folder:
            for part in missing:
                if self._cancelled.is_set():
                    raise CancelledError(f"the download of {self.model.label} was cancelled")
                try:
                    fetch_header(self.hub, self.model, part, Path(folder))
                except RefusedError as exc:
                    raise DownloadRefusedError(f"{part.path} was not downloaded: {exc}") from None
                except HubError as exc:
                    raise DownloadError(f"{part.path} was not downloaded: {exc}") from None

    def _discard(self, pointer: Path) -> None:
        """Removes a bad file: the cache's blob and the snapshot's link to it."""
        blob = pointer.resolve()
        _remove(pointer)
        if blob != pointer:
            _remove(blob)

    def _fetch(
        self, part: HubFile, index: int, before: int, on_progress: Callable[[Progress], None]
    ) -> Path:
        blob = _blob_id(part) or part.path.replace("/", "_")
        if self.journal is not None:
            self.journal.begin(self.cache_dir, self.model.repo, blob)
        request = {
            "repo": self.model.repo,
            "filename": part.path,
            "revision": self.model.revision,
            "cache_dir": os.fspath(self.cache_dir),
            "endpoint": self.hub.endpoint,
            "token": self.hub.token,
        }
        # The child's output goes to files: a pipe nobody reads while the
        # download runs could fill and stall it.
        with (
            tempfile.TemporaryFile("w+", encoding="utf-8") as output,
            tempfile.TemporaryFile("w+", encoding="utf-8") as errors,
        ):
            child = subprocess.Popen(
                python_command("kvchat.app.hub.fetch"),
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=errors,
                text=True,
                env=child_environment({"HF_HUB_DISABLE_PROGRESS_BARS": "1"}),
                cwd=safe_working_folder(),
            )
            try:
                assert child.stdin is not None
                child.stdin.write(json.dumps(request))
                child.stdin.close()
                self._watch(child, blob, index, before, on_progress)
            except BaseException:
                _end(child)
                self._clean(blob)
                raise
            output.seek(0)
            errors.seek(0)
            answer = _answer(output.read(), errors.read(), child.returncode)
        self._clean(blob)
        if "error" in answer:
            raise DownloadError(str(answer["error"]))
        return Path(str(answer["path"]))

    def _clean(self, blob: str) -> None:
        """Removes a stopped download's temporary files, then its journal entry."""
        if remove_partials(self.cache_dir, self.model.repo, blob) and self.journal is not None:
            self.journal.end(self.cache_dir, self.model.repo, blob)

    def _watch(
        self,
        child: subprocess.Popen[str],
        blob: str,
        index: int,
        before: int,
        on_progress: Callable[[Progress], None],
    ) -> None:
        """Reports the download's progress until the child ends; ends it on cancel()."""
        samples: deque[tuple[float, int]] = deque()
        while child.poll() is None:
            if self._cancelled.wait(POLL_S):
                raise CancelledError(f"the download of {self.model.label} was cancelled")
            fetched = sum(_size(p) for p in _partials(self.cache_dir, self.model.repo, blob))
            now = time.monotonic()
            samples.append((now, fetched))
            while now - samples[0][0] > SPEED_WINDOW_S:
                samples.popleft()
            first_time, first_bytes = samples[0]
            speed = (fetched - first_bytes) / (now - first_time) if now > first_time else 0.0
            parts = len(self.model.parts)
            total = self.model.size
            on_progress(Progress(before + fetched, total, speed, "downloading", index + 1, parts))


def _end(child: subprocess.Popen[str]) -> None:
    """Ends a download's child, first asking it to clean up after itself."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _answer(stdout: str, stderr: str, returncode: int) -> dict[str, object]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if lines:
        try:
            answer = json.loads(lines[-1])
            if isinstance(answer, dict):
                return answer
        except ValueError:
            pass
    tail = " ".join(stderr.strip().splitlines()[-1:])
    return {"error": f"the download stopped (exit code {returncode}){': ' + tail if tail else ''}"}
