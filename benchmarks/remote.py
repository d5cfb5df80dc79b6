"""A model on another server: kvchat's window against a bare streaming client.

Starts llama-cpp-python's own OpenAI-compatible server (or `kvchat serve`,
with --kvchat) on 127.0.0.1 with the bundled model, then, alternating in one
run:

- bare: an httpx client that streams a chat completion and counts the
  deltas as they arrive (what any program would see);
- window: kvchat's window (offscreen Qt) on the same server's model, its
  reply sent the way the person sends one; the figure is the one under the
  reply, measured as the bytes arrive.

Decode tokens/s is (tokens - 1) / (last token - first token) on both sides.
Then Stop: a long reply is stopped after 20 tokens, and the time until the
server starts on the next request (it serves one at a time) is compared
with that request's usual first-token time.

    .venv/bin/python benchmarks/remote.py [--runs 5] [--tokens 200] [--kvchat]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PROMPT = "Write a long story about a lighthouse keeper and a storm, in many parts."


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_server(kvchat: bool, port: int, folder: Path) -> subprocess.Popen[bytes]:
    from kvchat.engine.models import bundled_model_path

    model = str(bundled_model_path())
    if kvchat:
        command = [sys.executable, "-P", "-m", "kvchat.app.cli.main", "serve", "--model", model]
        command += ["--port", str(port), "--data-dir", str(folder), "--ctx", "2048"]
    else:
        command = [sys.executable, "-P", "-m", "llama_cpp.server", "--model", model]
        command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _bare(base: str, model: str, tokens: int) -> float:
    """Decode tokens/s seen by a plain streaming client."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    times = []
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            choices = json.loads(line[5:]).get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                times.append(time.perf_counter())
    return (len(times) - 1) / (times[-1] - times[0])


def _first_token_s(base: str, model: str) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 2,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if '"content"' in line:
                return time.perf_counter() - started
    raise SystemExit("no token came")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/remote.py", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--kvchat", action="store_true", help="serve with kvchat serve")
    args = parser.parse_args(argv)

    from PySide6.QtWidgets import QApplication

    from kvchat.app.core.settings import EngineSettings
    from kvchat.app.presenters.gui import build_window
    from kvchat.engine.protocol import (
        Cancel,
        Chat,
        ChatFailed,
        ChatMessage,
        LoadConfig,
        LoadFailed,
        LoadModel,
        Sampling,
        TextDelta,
        TurnFinished,
    )
    from kvchat.engine.remote import RemoteHost, choose_model
    from kvchat.engine.remote_address import model_url, split_model_url

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        server = _start_server(args.kvchat, port, Path(folder) / "server")
        try:
            for _ in range(600):
                try:
                    if httpx.get(base + "/v1/models", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            url = choose_model(base, None, None)
            model = split_model_url(url)[1]
            app = QApplication.instance() or QApplication([])
            settings = EngineSettings(temperature=0.0, max_tokens=args.tokens)
            window, controller = build_window(url, settings, Path(folder) / "window")
            while controller.model is None:
                app.processEvents()
                time.sleep(0.01)
            speeds: dict[str, list[float]] = {"bare": [], "window": []}
            for run in range(args.runs):
                print(f"run {run + 1} of {args.runs}", file=sys.stderr)
                for side in ("bare", "window") if run % 2 == 0 else ("window", "bare"):
                    if side == "bare":
                        speeds[side].append(_bare(base, model, args.tokens))
                        continue
                    controller.new_conversation()
                    finished: list[float] = []
                    controller.reply_finished.connect(
                        lambda stats, out=finished: out.append(stats.decode_tokens_per_s)
                    )
                    controller.send(PROMPT)
                    while not finished:
                        app.processEvents()
                        time.sleep(0.002)
                    controller.reply_finished.disconnect()
                    speeds[side].append(finished[0])
            window.close()
            app.processEvents()

            # Stop: how soon the server is free again.
            usual = statistics.median(_first_token_s(base, model) for _ in range(3))
            waits = []
            for run in range(args.runs):
                print(f"stop {run + 1} of {args.runs}", file=sys.stderr)
                host = RemoteHost(Path(folder) / "stop.log")
                host.send(LoadModel(LoadConfig(model_url(base, model))))
                long = Sampling(temperature=0.0, max_tokens=1000)
                host.send(Chat(1, (ChatMessage("user", PROMPT),), long))
                text = ""
                while len(text) < 80:  # some 20 tokens
                    event = host.receive(timeout=30)
                    if isinstance(event, TextDelta):
                        text += event.text
                    elif isinstance(event, ChatFailed | TurnFinished | LoadFailed):
                        raise SystemExit(f"the long reply ended early: {event}")
                stopped = time.perf_counter()
                host.send(Cancel(1))
                _first_token_s(base, model)  # waits while the server still generates
                waits.append(time.perf_counter() - stopped - usual)
                host.close()
        finally:
            server.terminate()
            server.wait(10)

    def spread(values: list[float], unit: str = "") -> str:
        return f"{statistics.median(values):.1f}{unit} ({min(values):.1f}–{max(values):.1f})"

    kind = "kvchat serve" if args.kvchat else "llama-cpp-python's server"
    print(f"{kind}, bundled model, {args.tokens} tokens, {args.runs} runs alternated")
    print(f"decode, bare streaming client: {spread(speeds['bare'])} tokens/s")
    print(f"decode, kvchat's window:       {spread(speeds['window'])} tokens/s")
    ratios = [w / b for w, b in zip(speeds["window"], speeds["bare"], strict=True)]
    print(
        f"ratio window/bare: {statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})"
    )
    print(
        f"Stop to the server free again: {spread([w * 1000 for w in waits], ' ms')} "
        f"beyond a usual first token of {usual * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
