"""The `hub` fixture answers huggingface_hub as huggingface.co would, for the
calls the app's downloads make: the listing, a download, a streamed read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
from huggingface_hub import HfApi, RepoFile, hf_hub_download

from tests.hub_fixture import BUNDLED_NAME, Hub

FIRST_BYTES = 64 * 1024


def _sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _git_blob_id(path: Path) -> str:
    """The id git gives a file's bytes, which the Hub lists for files outside LFS."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_listing_gives_each_file_with_its_size_and_sha256(hub: Hub) -> None:
    api = HfApi(endpoint=hub.endpoint)
    entries = list(api.list_repo_tree(hub.repo, recursive=True, expand=True))
    listed = {entry.path: entry for entry in entries if isinstance(entry, RepoFile)}

    assert len(listed) == len(entries)  # files only: the repository has no folders
    assert set(listed) == set(hub.files)
    for name, source in hub.files.items():
        entry = listed[name]
        assert entry.size == source.stat().st_size, name
        assert entry.last_commit is not None and entry.last_commit.oid == hub.revision
        if name.endswith(".gguf"):
            assert entry.lfs is not None, name
            assert (entry.lfs.size, entry.lfs.sha256) == (entry.size, _sha256(source)), name
        else:
            assert entry.lfs is None, name
            assert entry.blob_id == _git_blob_id(source), name
    # No revision named: olah's offline lookup of the newest commit, which the fixture seeds.
    info = api.model_info(hub.repo)
    assert info.sha == hub.revision
    assert {sibling.rfilename for sibling in info.siblings or []} == set(hub.files)


def test_download_gives_the_same_bytes(hub: Hub, tmp_path: Path) -> None:
    # The bundled model is left to the streamed read: olah reads a whole file
    # into memory for each GET and hashes it for each HEAD.
    for name, source in hub.files.items():
        if name == BUNDLED_NAME:
            continue
        downloaded = Path(
            hf_hub_download(hub.repo, name, cache_dir=tmp_path, endpoint=hub.endpoint)
        )
        assert downloaded.parent.name == hub.revision
        assert downloaded.read_bytes() == source.read_bytes(), name


def test_streamed_get_gives_the_first_bytes(hub: Hub) -> None:
    url = f"{hub.endpoint}/{hub.repo}/resolve/main/{BUNDLED_NAME}"
    received = bytearray()
    with httpx.stream("GET", url, timeout=30) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) >= FIRST_BYTES:
                break

    with hub.files[BUNDLED_NAME].open("rb") as stream:
        assert bytes(received[:FIRST_BYTES]) == stream.read(FIRST_BYTES)


def test_repo_without_gguf_lists_none(hub: Hub) -> None:
    listed = [
        entry.path
        for entry in HfApi(endpoint=hub.endpoint).list_repo_tree(hub.empty_repo, recursive=True)
    ]

    assert listed == ["README.md"]
