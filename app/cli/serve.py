"""`kvchat serve`: the OpenAI-compatible API on an engine of its own, with no window."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import psutil
import uvicorn

from kvchat.app.api.background import bind_listener
from kvchat.app.api.server import (
    ServeOptions,
    api_sampling,
    create_app,
    is_wildcard,
    refusal_to_listen,
)
from kvchat.app.core.paths import engine_log_path, kv_cache_path
from kvchat.app.core.settings import EngineSettings
from kvchat.engine.link import LocalEngine
from kvchat.engine.models import bundled_model_path, missing_model_message

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
LOAD_TIMEOUT_S = 600.0


def machine_names() -> frozenset[str]:
    """This machine's own names and addresses, which a Host header may carry
    when the server listens on every address."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                names.add(address.address.split("%", 1)[0].lower())
    return frozenset(names)


def serve_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if is_wildcard(host) else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/v1"


def _print(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(line, flush=True)


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"kvchat: {message}", file=sys.stderr)
    return code


def run_serve(
    model_path: str | None,
    settings: EngineSettings,
    data_dir: Path,
    host: str,
    port: int,
    api_key: str,
    cors_origins: Iterable[str],
    log_messages: bool = False,
) -> int:
    refusal = refusal_to_listen(host, api_key)
    if refusal:
        return _fail(refusal, EXIT_BAD_INPUT)
    if model_path is None:
        bundled = bundled_model_path()
        if bundled is None:
            return _fail(missing_model_message(), EXIT_BAD_INPUT)
        model_path = str(bundled)
    try:
        listener = bind_listener(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return _fail(f"port {port} on {host} is in use: choose another with --port N")
        return _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")

    # SIGTERM ends the server as Ctrl+C does: while the model loads, and
    # after uvicorn (which handles both while it serves) raises it again.
    signal.signal(signal.SIGTERM, _interrupt)
    load = replace(settings.load_config(model_path), kv_cache_dir=str(kv_cache_path(data_dir)))
    engine = LocalEngine(load, engine_log_path(data_dir))
    gateway = None
    try:
        engine.start()
        _print(f"kvchat: loading {Path(model_path).name} ...")
        state = engine.wait_ready(LOAD_TIMEOUT_S)
        if not state.ready or state.model is None:
            return _fail(f"the model did not load: {state.message} (log: {engine.log_path})")
        if engine.log_note:
            _print(f"kvchat: {engine.log_note}")
        options = ServeOptions(
            host=host,
            port=listener.getsockname()[1],
            api_key=api_key,
            cors_origins=tuple(cors_origins),
            allowed_hosts=machine_names() if is_wildcard(host) else frozenset(),
            sampling=api_sampling(settings.sampling()),
            log_messages=log_messages,
        )
        app, gateway = create_app(engine, options, _print)
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, timeout_graceful_shutdown=3, lifespan="off"
        )
        server = uvicorn.Server(config)
        _print(
            f"kvchat: serving {state.model.name} at {serve_url(host, options.port)} "
            "(Ctrl+C to stop)"
        )
        asyncio.run(server.serve(sockets=[listener]))
    except KeyboardInterrupt:
        pass
    finally:
        if gateway is not None:
            gateway.close()
        engine.stop()
        listener.close()
    _print("kvchat: stopped")
    return 0


def _interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt
