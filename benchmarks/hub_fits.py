"""A fits answer before downloading: its time and the bytes it reads, against a local estimate.

For the bundled model (94 MiB) and the 3-part split model of the download
tests, served two ways on 127.0.0.1:
- olah, the self-hosted hub mirror the tests use (offline), which reads a
  whole LFS file into memory and hashes it before it sends the first byte;
- a plain static file server in the hub's URL layout, which streams from
  disk as a CDN does: the header fetch's own cost.
Each run alternates: the remote estimate through olah, through the static
server, and the dry run on the local file (one dry run each: the load at
the chosen settings, without the search for the most that fits). Medians
and ranges over runs.

    PYTHONPATH=. .venv/bin/python benchmarks/hub_fits.py [--runs 5]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kvchat.app.core.settings import EngineSettings
from kvchat.app.hub.catalog import Hub, ModelFile
from kvchat.app.hub.header import estimate_remote
from kvchat.engine.estimate import estimate
from tests.hub_fixture import BUNDLED_NAME, serve_hub

SETTINGS = EngineSettings(n_ctx=4096)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # The header fetch closes its stream once it has the header: the
        # server's write then fails, as it should.
        pass


def _static_server(root: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_Quiet, directory=str(root))
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _timed(work: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    answer = work()
    return time.perf_counter() - started, answer


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, serve_hub(Path(folder)) as served:
        olah = Hub(served.endpoint)
        models = {m.path: m for m in olah.files(served.repo)}
        # The same files at the hub's URLs, /{repo}/resolve/{revision}/{path}.
        root = Path(folder) / "static"
        resolve = root / served.repo / "resolve" / served.revision
        resolve.mkdir(parents=True)
        for name, source in served.files.items():
            (resolve / name).symlink_to(source)
        static = _static_server(root)
        plain = Hub(f"http://127.0.0.1:{static.server_port}")
        try:
            for path in (BUNDLED_NAME, "tiny-split-Q8_0-00001-of-00003.gguf"):
                model: ModelFile = models[path]
                local = served.files[path]
                times: dict[str, list[float]] = {"olah": [], "static": [], "local": []}
                read = 0
                for _ in range(args.runs):
                    spent, answer = _timed(
                        lambda m=model: estimate_remote(olah, m, SETTINGS, fit=False)
                    )
                    times["olah"].append(spent)
                    read = answer.bytes_read  # type: ignore[attr-defined]
                    spent, _ = _timed(
                        lambda m=model: estimate_remote(plain, m, SETTINGS, fit=False)
                    )
                    times["static"].append(spent)
                    spent, _ = _timed(
                        lambda p=local: estimate(SETTINGS.load_config(str(p)), fit=False)
                    )
                    times["local"].append(spent)
                print(
                    f"{model.label}: {model.size / (1 << 20):.1f} MiB in {len(model.parts)} file(s)"
                )
                print(
                    f"  header bytes read: {read / (1 << 20):.2f} MiB, "
                    f"{100 * read / model.size:.1f}% of the file"
                )
                print(f"  fits answer through olah:          {_summary(times['olah'])}")
                print(f"  fits answer from a static server:  {_summary(times['static'])}")
                print(f"  estimate of the local file:        {_summary(times['local'])}")
        finally:
            static.shutdown()
            static.server_close()


if __name__ == "__main__":
    main()
