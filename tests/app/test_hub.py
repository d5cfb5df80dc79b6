"""Models from Hugging Face against a real hub (olah, offline, on 127.0.0.1).

The fits answer made from a file's header alone must equal the one made on
the downloaded file; downloads must land verified in the cache, and every
bad input must end in words with nothing half-done left behind.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from kvchat.app.core.settings import EngineSettings
from kvchat.app.hub.catalog import Hub, HubError, HubFile, group_files, quantization_of
from kvchat.app.hub.download import (
    CancelledError,
    Download,
    DownloadError,
    Journal,
    check_space,
)
from kvchat.app.hub.fits import fits_answer
from kvchat.app.hub.header import estimate_remote
from kvchat.engine.estimate import Estimate, estimate
from tests.hub_fixture import BUNDLED_NAME
from tests.hub_fixture import Hub as ServedHub

SETTINGS = EngineSettings(n_ctx=2048)


def _shape(result: Estimate) -> list[tuple[str, int, int, int]]:
    """What an estimate says of the load, without the free memory of the moment."""
    return [
        (d.name, d.weights_bytes, d.kv_bytes, d.compute_bytes) for d in result.projection.devices
    ]


def _model(hub: Hub, served: ServedHub, path: str):  # type: ignore[no-untyped-def]
    return next(m for m in hub.files(served.repo) if path in (p.path for p in m.parts))


def _blobs(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("blobs/*") if p.is_file())


def test_quantization_and_grouping_follow_the_names() -> None:
    assert quantization_of("Qwen3-8B-Q4_K_M.gguf") == "Q4_K_M"
    assert quantization_of("gpt-oss-20b-MXFP4.gguf") == "MXFP4"
    assert quantization_of("model-IQ2_XXS-00001-of-00002.gguf") == "IQ2_XXS"
    assert quantization_of("Llama-3.2-1B-Instruct-f16.gguf") == "F16"
    assert quantization_of("weights.gguf") == "other"
    files = [
        HubFile("big-Q8_0-00001-of-00002.gguf", 10, "a" * 64),
        HubFile("big-Q8_0-00002-of-00002.gguf", 5, "b" * 64),
        HubFile("half-Q4_0-00001-of-00003.gguf", 3, "c" * 64),
        HubFile("mmproj-F16.gguf", 2, "d" * 64),
        HubFile("README.md", 1, None, "e" * 40),
    ]
    models = group_files("o/r", "rev", files)
    assert [(m.label, m.size, m.is_projector) for m in models] == [
        ("half-Q4_0-00001-of-00003.gguf", 3, False),
        ("big-Q8_0.gguf (2 parts)", 15, False),
        ("mmproj-F16.gguf", 2, True),
    ]
    assert models[0].problem == "2 of its 3 parts are missing"


def test_the_listing_groups_the_repository(hub: ServedHub) -> None:
    models = Hub(hub.endpoint).files(hub.repo)
    by_label = {m.label: m for m in models}
    assert set(by_label) == {
        BUNDLED_NAME,
        "tiny-F16.gguf",
        "tiny-Q8_0.gguf",
        "tiny-split-Q8_0.gguf (3 parts)",
        "mmproj-tiny-F16.gguf",
        "broken-Q4_0.gguf",
    }
    split = by_label["tiny-split-Q8_0.gguf (3 parts)"]
    assert split.size == sum(hub.files[p.path].stat().st_size for p in split.parts)
    assert all(m.revision == hub.revision for m in models)
    assert by_label["mmproj-tiny-F16.gguf"].is_projector
    assert (
        by_label[BUNDLED_NAME].parts[0].sha256
        == hashlib.sha256(hub.files[BUNDLED_NAME].read_bytes()).hexdigest()
    )


@pytest.mark.parametrize("path", [BUNDLED_NAME, "tiny-split-Q8_0-00001-of-00003.gguf"])
def test_the_estimate_before_download_equals_the_one_after(
    hub: ServedHub, tmp_path: Path, path: str
) -> None:
    client = Hub(hub.endpoint)
    model = _model(client, hub, path)
    before = estimate_remote(client, model, SETTINGS, fit=False)
    local = Download(client, model, tmp_path / "cache").run()
    after = estimate(SETTINGS.load_config(str(local)), fit=False)
    assert _shape(before.estimate) == _shape(after)
    assert before.estimate.n_layers == after.n_layers
    assert fits_answer(before.estimate).startswith("fits in RAM: ")
    if path == BUNDLED_NAME:
        # The header of the 94 MiB model is under 2 MiB: the rest is never fetched.
        assert before.bytes_read < model.size / 20


def test_a_file_that_is_not_gguf_is_refused_from_its_first_bytes(hub: ServedHub) -> None:
    client = Hub(hub.endpoint)
    model = _model(client, hub, "broken-Q4_0.gguf")
    with pytest.raises(HubError, match="not a GGUF file: it starts with PK, a zip archive"):
        estimate_remote(client, model, SETTINGS)


def test_a_download_of_a_file_that_is_not_gguf_stops_at_its_header(
    hub: ServedHub, tmp_path: Path
) -> None:
    client = Hub(hub.endpoint)
    model = _model(client, hub, "broken-Q4_0.gguf")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="was not downloaded: not a model kvchat can use"):
        Download(client, model, cache).run()
    assert not list(cache.rglob("broken-Q4_0.gguf")) and not _blobs(cache)


def test_a_download_is_verified_and_a_split_brings_every_part(
    hub: ServedHub, tmp_path: Path
) -> None:
    client = Hub(hub.endpoint)
    model = _model(client, hub, "tiny-split-Q8_0-00002-of-00003.gguf")
    seen = []
    first = Download(client, model, tmp_path / "cache", Journal(tmp_path / "journal")).run(
        seen.append
    )
    assert first.name == "tiny-split-Q8_0-00001-of-00003.gguf"
    for part in model.parts:
        assert (first.parent / part.path).read_bytes() == hub.files[part.path].read_bytes()
    assert seen[-1].phase == "checking" and seen[-1].done_bytes == model.size
    assert not list((tmp_path / "cache").rglob("*.incomplete"))
    assert not list((tmp_path / "journal").glob("*.json"))


def test_a_checksum_that_does_not_match_deletes_the_file(hub: ServedHub, tmp_path: Path) -> None:
    client = Hub(hub.endpoint)
    model = _model(client, hub, "tiny-Q8_0.gguf")
    wrong = replace(model, parts=(replace(model.parts[0], sha256="0" * 64),))
    cache = tmp_path / "cache"
    # huggingface_hub names the blob by the hub's ETag, so the lie is only in the listing.
    with pytest.raises(DownloadError, match="does not match the hub's checksum, so it was deleted"):
        Download(client, wrong, cache).run()
    assert not _blobs(cache)
    assert not list(cache.rglob("tiny-Q8_0.gguf"))


def test_no_room_on_the_disk_is_said_before_starting(hub: ServedHub, tmp_path: Path) -> None:
    client = Hub(hub.endpoint)
    model = _model(client, hub, "tiny-Q8_0.gguf")
    huge = replace(model, parts=(replace(model.parts[0], size=1 << 60),))
    with pytest.raises(DownloadError, match=r"needs \d+.\d GiB on the disk that holds .*free"):
        check_space(huge, tmp_path)


def test_a_write_that_fails_mid_download_leaves_nothing(hub: ServedHub, tmp_path: Path) -> None:
    """A file size limit makes the download's writes fail part way, as a full disk does."""
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import resource, signal
        from pathlib import Path
        from kvchat.app.hub.catalog import Hub
        from kvchat.app.hub.download import Download, DownloadError

        class LimitedOnceChecked(Download):
            def _check_headers(self):
                super()._check_headers()
                # From here on, as the transfer starts: the child inherits both.
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))

        hub = Hub({hub.endpoint!r})
        model = next(m for m in hub.files({hub.repo!r}) if m.path == {BUNDLED_NAME!r})
        try:
            LimitedOnceChecked(hub, model, Path({str(cache)!r})).run()
        except DownloadError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert "no room left for the file (File too large), so it stopped" in done.stdout, done.stderr
    assert not _blobs(cache)


def test_cancel_stops_the_download_and_removes_what_it_fetched(
    hub: ServedHub, tmp_path: Path
) -> None:
    client = Hub(hub.endpoint)
    model = _model(client, hub, BUNDLED_NAME)
    cache = tmp_path / "cache"
    journal = Journal(tmp_path / "journal")
    download = Download(client, model, cache, journal)

    def cancel_once_started(progress: object) -> None:
        if getattr(progress, "done_bytes", 0) > 0:
            download.cancel()

    with pytest.raises(CancelledError, match="was cancelled"):
        download.run(cancel_once_started)
    assert not _blobs(cache)
    assert not list(journal.folder.glob("*.json"))


def test_leftovers_of_a_killed_download_are_removed_at_the_next_start(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    blobs = cache / "models--o--r" / "blobs"
    blobs.mkdir(parents=True)
    partial = blobs / f"{'a' * 64}.1234abcd.incomplete"
    partial.write_bytes(b"half")
    other = blobs / f"{'b' * 64}.incomplete"  # another tool's, not in kvchat's journal
    other.write_bytes(b"theirs")
    journal = Journal(tmp_path / "journal")
    journal.begin(cache, "o/r", "a" * 64)
    assert journal.clean_interrupted() == 1
    assert not partial.exists() and other.exists()
    assert not list(journal.folder.glob("*.json"))


def test_unknown_repositories_files_and_unreachable_hubs_are_said_in_words(
    hub: ServedHub,
) -> None:
    client = Hub(hub.endpoint)
    with pytest.raises(HubError, match="has no model repository 'nobody/nothing'"):
        client.files("nobody/nothing")
    with pytest.raises(HubError, match="is not a repository name"):
        client.files("not a name")
    assert client.files(hub.empty_repo) == []
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(HubError, match=r"cannot reach 127.0.0.1:\d+ \(connection refused\)"):
        Hub(f"http://127.0.0.1:{port}").files(hub.repo)


def _kvchat(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvchat.app", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_the_command_line_lists_estimates_and_downloads(hub: ServedHub, tmp_path: Path) -> None:
    env = {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "KVCHAT_DATA_DIR": str(tmp_path / "data"),
    }
    listed = _kvchat("models", "files", hub.repo, "--ctx", "4096", "--json", env=env)
    assert listed.returncode == 0, listed.stderr

    entries = {e["file"]: e for e in json.loads(listed.stdout)["files"]}
    tiny = entries["tiny-Q8_0.gguf"]
    assert tiny["fits"].startswith("fits in RAM")
    estimated = _kvchat(
        "estimate", str(hub.files["tiny-Q8_0.gguf"]), "--ctx", "4096", "--json", env=env
    )
    local = json.loads(estimated.stdout)
    assert set(tiny["estimate"]) == set(local)
    strip = [{k: v for k, v in d.items() if k != "free_bytes"} for d in local["devices"]]
    assert [
        {k: v for k, v in d.items() if k != "free_bytes"} for d in tiny["estimate"]["devices"]
    ] == strip
    assert "not a GGUF file" in entries["broken-Q4_0.gguf"]["error"]
    assert entries["mmproj-tiny-F16.gguf"]["projector"] is True

    fetched = _kvchat("models", "download", hub.repo, "tiny-F16.gguf", env=env)
    assert fetched.returncode == 0, fetched.stderr
    path = Path(fetched.stdout.strip().splitlines()[-1])
    assert path.read_bytes() == hub.files["tiny-F16.gguf"].read_bytes()

    broken = _kvchat("models", "download", hub.repo, "broken-Q4_0.gguf", env=env)
    assert broken.returncode == 2
    assert "not a GGUF file: it starts with PK" in broken.stderr
    missing = _kvchat("models", "download", hub.repo, "nope.gguf", env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"kvchat: {hub.repo} has no GGUF file 'nope.gguf'"
    empty = _kvchat("models", "files", hub.empty_repo, env=env)
    assert (empty.returncode, empty.stderr.strip()) == (
        2,
        f"kvchat: {hub.empty_repo} has no GGUF files",
    )
    # olah has no search route: it answers with an empty body, which is said in words.
    search = _kvchat("models", "search", "smol", env=env)
    assert search.returncode == 1
    assert "answered in a form kvchat cannot read" in search.stderr
    assert "Traceback" not in search.stderr
    offline = _kvchat("models", "files", hub.repo, env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1 and "HF_HUB_OFFLINE is set" in offline.stderr


class _SearchAnswer(http.server.BaseHTTPRequestHandler):
    """The hub's /api/models route, answering with a search result in the hub's JSON shape."""

    answer = (Path(__file__).parent / "data" / "hub_search_smollm.json").read_bytes()
    asked: ClassVar[list[str]] = []

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *_args: object) -> None:
        pass


def test_search_reads_the_hubs_answer() -> None:
    """olah has no search route, so a server answers in the hub's shape for this one."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SearchAnswer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        found = Hub(f"http://127.0.0.1:{server.server_port}").search("smol", "likes", 3)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    asked = _SearchAnswer.asked[-1]
    assert "search=smol" in asked and "filter=gguf" in asked and "sort=likes" in asked
    first, second, gated = found
    assert first.repo == "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
    assert (first.downloads, first.likes, first.license, first.parameters) == (
        18342,
        27,
        "apache-2.0",
        134515008,
    )
    assert first.last_modified is not None and first.last_modified.year == 2025
    assert not first.gated and gated.gated
    assert second.parameters == 1711376384
    assert (gated.license, gated.parameters) == (None, None)


class _HubStandIn(http.server.BaseHTTPRequestHandler):
    """What the hub answers where olah cannot act it out: a gated repository,
    and a file whose first transfer the network breaks half way.

    Its answers carry the headers huggingface_hub reads (X-Error-Code, ETag,
    X-Repo-Commit), as the hub's do.
    """

    content = b""
    sha256 = ""
    broken_once: ClassVar[list[bool]] = []

    def _file_headers(self) -> None:
        self.send_header("ETag", f'"{self.sha256}"')
        self.send_header("X-Repo-Commit", REVISION)
        self.send_header("Content-Length", str(len(self.content)))

    def do_HEAD(self) -> None:
        if "o/gated" in self.path:
            self.send_response(403)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", "Access to model o/gated is restricted.")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self._file_headers()
        self.end_headers()

    def do_GET(self) -> None:
        if "o/gated" in self.path:
            self.do_HEAD()
            return
        self.send_response(200)
        self._file_headers()
        self.end_headers()
        if not type(self).broken_once:
            type(self).broken_once.append(True)
            self.wfile.write(self.content[: len(self.content) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the network breaks
            return
        self.wfile.write(self.content)

    def log_message(self, *_args: object) -> None:
        pass


REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def stand_in(hub: ServedHub) -> Iterator[str]:
    content = hub.files["tiny-F16.gguf"].read_bytes()
    _HubStandIn.content = content
    _HubStandIn.sha256 = hashlib.sha256(content).hexdigest()
    _HubStandIn.broken_once.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubStandIn)
    server.handle_error = lambda *_: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_gated_repository_says_where_its_license_is_accepted(stand_in: str) -> None:
    with pytest.raises(
        HubError, match=f"o/gated is gated: accept its license at {stand_in}/o/gated"
    ):
        Hub(stand_in).files("o/gated")


def test_a_transfer_broken_by_the_network_is_taken_up_again(stand_in: str, tmp_path: Path) -> None:
    """huggingface_hub retries a broken transfer; the file still ends verified."""
    part = HubFile("tiny-F16.gguf", len(_HubStandIn.content), _HubStandIn.sha256)
    model = group_files("o/model", REVISION, [part])[0]
    path = Download(Hub(stand_in), model, tmp_path / "cache").run()
    assert _HubStandIn.broken_once == [True]
    assert path.read_bytes() == _HubStandIn.content
