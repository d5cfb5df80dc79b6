"""The API server on a thread of its own, beside a window, a test or a benchmark."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn

from kvchat.app.api.server import ASGIApp

STARTED_TIMEOUT_S = 10.0


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port` (0: any free port), bound here so
    that a port in use is an OSError the caller can put in words."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host.strip("[]"), port))
        listener.listen(128)
    except OSError:
        listener.close()
        raise
    return listener


class BackgroundServer:
    """uvicorn serving `app` on a socket bound here, on a thread with its own event loop.

    The socket is bound before the thread starts, so a port in use fails the
    constructor (OSError) rather than the thread.
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        listener = bind_listener(host, port)
        self.port: int = listener.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)

        def serve() -> None:
            try:
                asyncio.run(self._server.serve(sockets=[listener]))
            finally:
                listener.close()

        self._thread = threading.Thread(target=serve, name="kvchat-api", daemon=True)
        self._thread.start()

    def wait_started(self, timeout: float = STARTED_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._server.started

    def stop(self, join_s: float | None = None) -> None:
        """Asks the server to stop; it ends its thread within about a second.

        `join_s`: wait that long for the thread (None: do not wait, as the GUI
        thread must not).
        """
        self._server.should_exit = True
        if join_s is not None:
            self._thread.join(join_s)
