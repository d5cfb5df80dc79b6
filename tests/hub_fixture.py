"""A real, self-hosted Hugging Face mirror for the download tests: `olah`, offline.

The `hub` fixture builds git repositories the way the Hub stores them (each
GGUF file committed as a git-lfs pointer, its bytes under `.git/lfs/objects`),
starts olah on 127.0.0.1 with those repositories as its local mirrors, and
yields where to reach them. `huggingface_hub` talks to it as it would to
huggingface.co, through `endpoint=` or HF_ENDPOINT; nothing leaves the machine.

The git-lfs program is not needed: the pointer text and the object store are
written here, and git (run with no user or system configuration, so a filter
or signing setting of the developer's cannot interfere) commits the pointers
as plain text. olah recognises a pointer by its text and serves the object.

What olah 0.5.4 offline does with local mirrors, read from its source:

- Routes that name a revision (`/api/models/{repo}/revision/main`,
  `/api/models/{repo}/tree/main`, `/{repo}/resolve/main/{file}`) hand the
  revision to GitPython, which resolves `main` in the repository itself.
- The route without one (`/api/models/{repo}`, `HfApi.model_info(repo)`) first
  looks up the newest commit, and offline it looks only in its own cache:
  `{repos-path}/api/models/{repo}/revision/*/meta_head.json`, the newest
  `lastModified` winning. The fixture seeds that file with the commit of
  `main`, in the plain `{"sha", "lastModified"}` form olah's reader accepts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from kvchat.engine.models import bundled_model_path, missing_model_message
from tests.model_factory import TINY, write_model

REPO = "kvchat-test/tiny-gguf"
EMPTY_REPO = "kvchat-test/no-gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct-Q4_1.gguf"
SPLIT_PARTS = 3
# What git-lfs writes to .gitattributes for `git lfs track "*.gguf"`.
GITATTRIBUTES = "*.gguf filter=lfs diff=lfs merge=lfs -text\n"
STARTUP_TIMEOUT_S = 60.0

# git with a fixed identity and none of the developer's configuration.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "kvchat tests",
    "GIT_AUTHOR_EMAIL": "tests@kvchat.invalid",
    "GIT_COMMITTER_NAME": "kvchat tests",
    "GIT_COMMITTER_EMAIL": "tests@kvchat.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


@dataclass(frozen=True)
class Hub:
    """Where the mirror answers and what it holds."""

    # Base URL for `endpoint=` or HF_ENDPOINT, without a trailing slash.
    endpoint: str
    # A model repository with GGUF files of every kind the app meets.
    repo: str
    # A model repository with a README.md and no GGUF file.
    empty_repo: str
    # Each file of `repo` (name in the repository) -> a local file with its bytes.
    files: dict[str, Path]
    # The commit `main` points at in `repo`.
    revision: str


def write_split(source: Path, target: Path, parts: int) -> list[Path]:
    """Rewrites a GGUF model as `parts` shards next to `target`, as llama.cpp's
    gguf-split names them (`<stem>-00001-of-00003.gguf`); returns their paths.

    The factory writes single files only, so the metadata and tensors are
    copied from one it wrote; GGUFWriter puts the metadata in the first shard
    and the split.* keys in every shard.
    """
    reader = GGUFReader(source)
    architecture = reader.fields["general.architecture"].contents()
    per_shard = math.ceil(len(reader.tensors) / parts)
    writer = GGUFWriter(target, architecture, split_max_tensors=per_shard)
    for name, field in reader.fields.items():
        # GGUF.* are the reader's view of the header; the writer adds the architecture.
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    shards = writer.format_shard_names(target)
    if len(shards) != parts:
        raise ValueError(f"{source.name} has too few tensors for {parts} shards")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return shards


def _write_zip(path: Path, size: int) -> Path:
    """A zip archive of about `size` bytes: a download that is no GGUF at all."""
    payload = random.Random(0).randbytes(size)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("weights.bin", payload)
    return path


def _model_files(folder: Path) -> dict[str, Path]:
    """Writes the GGUF files of the main repository; returns name -> file."""
    bundled = bundled_model_path()
    if bundled is None:
        pytest.fail(missing_model_message())
    folder.mkdir()
    q8 = GGMLQuantizationType.Q8_0
    files = {
        BUNDLED_NAME: bundled,
        "tiny-Q8_0.gguf": write_model(
            replace(TINY, name="tiny-Q8_0", matrix_type=q8, embedding_type=q8),
            folder / "tiny-Q8_0.gguf",
        ),
        "tiny-F16.gguf": write_model(replace(TINY, name="tiny-F16"), folder / "tiny-F16.gguf"),
        # A projector's name and architecture; the tensors are the factory's
        # llama ones, which is all a listing or a download looks at.
        "mmproj-tiny-F16.gguf": write_model(
            replace(TINY, name="mmproj-tiny", architecture="clip"),
            folder / "mmproj-tiny-F16.gguf",
        ),
        "broken-Q4_0.gguf": _write_zip(folder / "broken-Q4_0.gguf", 1 << 20),
    }
    shards = write_split(files["tiny-Q8_0.gguf"], folder / "tiny-split-Q8_0.gguf", SPLIT_PARTS)
    files.update({shard.name: shard for shard in shards})
    return files


def _git(repo: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", *args],
        cwd=repo,
        env={**os.environ, **_GIT_ENV},
        check=True,
        capture_output=True,
        text=True,
    )
    return completed.stdout.strip()


def _store_lfs_object(repo: Path, source: Path) -> str:
    """Puts `source` in the repository's LFS object store; returns its pointer text.

    The object is a hard link where the file system allows it: the bundled
    model is 98 MB, and olah only reads it.
    """
    with source.open("rb") as stream:
        oid = hashlib.file_digest(stream, "sha256").hexdigest()
    target = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    # olah reads a blob as a pointer only if it is 121 to 149 bytes long;
    # this text is 125 bytes and the digits of the size.
    size = source.stat().st_size
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def _make_repo(repo: Path, files: dict[str, Path], lfs: frozenset[str]) -> tuple[str, str]:
    """Commits `files` to a new repository at `repo` on branch main, the names
    in `lfs` as LFS pointers; returns the commit's sha and its ISO date."""
    repo.mkdir(parents=True)
    _git(repo, "init", "--quiet", "--initial-branch=main")
    for name, source in files.items():
        if name in lfs:
            (repo / name).write_text(_store_lfs_object(repo, source))
        else:
            shutil.copyfile(source, repo / name)
    _git(repo, "add", "--all")
    _git(repo, "commit", "--quiet", "--message", "Add the test files")
    sha, date = _git(repo, "log", "-1", "--format=%H%n%cI").splitlines()
    return sha, date


def _seed_latest_revision(repos_path: Path, repo: str, sha: str, date: str) -> None:
    """Tells olah's offline lookup of a repository's newest commit where main is
    (see the module's docstring): the only source it reads when no revision is named."""
    meta = repos_path / "api" / "models" / repo / "revision" / sha / "meta_head.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"sha": sha, "lastModified": date}))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _write_config(path: Path, port: int, mirrors: Path, repos_path: Path) -> Path:
    # JSON's quoted strings and lists are valid TOML values.
    path.write_text(
        "[basic]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f"repos-path = {json.dumps(str(repos_path))}\n"
        f"mirrors-path = {json.dumps([str(mirrors)])}\n"
        "\n[accessibility]\n"
        "offline = true\n"
    )
    return path


def _wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Polls `url` until olah answers 200; fails with olah's output if it exits
    or does not answer within STARTUP_TIMEOUT_S."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"olah exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"olah did not answer within {STARTUP_TIMEOUT_S:.0f} s:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serve_hub(base: Path) -> Iterator[Hub]:
    """olah serving REPO and EMPTY_REPO offline on 127.0.0.1, its files made under `base`.

    Also used outside the tests, by the download benchmark and to look at
    the window against a hub.
    """
    sources = base / "sources"
    files = _model_files(sources)
    readme = sources / "README.md"
    readme.write_text(
        "---\nlicense: apache-2.0\ntags:\n- gguf\n---\n"
        "# tiny-gguf\n\nGGUF files of every kind kvchat's downloads meet, for its tests.\n"
    )
    attributes = sources / ".gitattributes"
    attributes.write_text(GITATTRIBUTES)
    files |= {"README.md": readme, ".gitattributes": attributes}
    lfs = frozenset(name for name in files if name.endswith(".gguf"))

    # olah looks for a mirrored repository at {mirrors-path}/{type}/{org}/{name}.
    mirrors = base / "mirrors"
    repos_path = base / "olah-cache"
    revision, date = _make_repo(mirrors / "models" / REPO, files, lfs)
    _seed_latest_revision(repos_path, REPO, revision, date)
    empty_revision, empty_date = _make_repo(
        mirrors / "models" / EMPTY_REPO, {"README.md": readme}, frozenset()
    )
    _seed_latest_revision(repos_path, EMPTY_REPO, empty_revision, empty_date)

    port = _free_port()
    config = _write_config(base / "olah.toml", port, mirrors, repos_path)
    log = base / "olah-output.log"
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        # olah also keeps a log of its own, in ./logs.
        process = subprocess.Popen(
            [sys.executable, "-m", "olah.server", "--config", str(config)],
            cwd=base,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(process, f"{endpoint}/api/models/{REPO}/revision/main", log)
        yield Hub(
            endpoint=endpoint,
            repo=REPO,
            empty_repo=EMPTY_REPO,
            files=files,
            revision=revision,
        )
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """The mirror for the whole session (starting olah takes about a second)."""
    with serve_hub(tmp_path_factory.mktemp("hub")) as served:
        yield served
