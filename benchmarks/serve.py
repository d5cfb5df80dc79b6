"""The API server's speed against the direct llama.cpp loop of `kvchat bench`.

Three figures, written to a JSON file and printed:

1. Decode tokens/s streamed through the server (an HTTP client reading the
   server-sent events, timed from the first text chunk to the last) against
   the direct llama.cpp loop of `kvchat bench`, same model, threads and
   greedy sampling; runs alternate the two sides.
2. Time to first byte of a warm conversation, turn by turn over 20 turns,
   against the direct loop's time to first token on a cache that holds the
   earlier turns.
3. A load run: 32 clients at once, 5 requests each, streamed and not; every
   answer is checked against its own request (its prompt's token count and
   its id), with p50/p99 latency and the server's memory before and after.

    .venv/bin/python benchmarks/serve.py [--runs 5] [--tokens 200] [--turns 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from kvchat.app.api.background import BackgroundServer
from kvchat.app.api.server import ServeOptions, create_app, model_id
from kvchat.app.bench.measure import DECODE_PROMPT, DirectProcess, Spread
from kvchat.app.core.paths import engine_log_path, resolve_data_dir
from kvchat.engine.link import LocalEngine
from kvchat.engine.models import bundled_model_path
from kvchat.engine.protocol import ChatMessage, LoadConfig, MemorySample


@dataclass(frozen=True)
class Figures:
    decode_server: Spread
    decode_direct: Spread
    decode_ratio: Spread
    decode_engine: Spread
    ttfb_server_s: tuple[float, ...]
    ttft_direct_s: tuple[float, ...]
    load_requests: int
    load_ok: int
    load_mixed_up: int
    load_p50_s: float
    load_p99_s: float
    rss_before_bytes: int
    rss_after_bytes: int
    saved_state_bytes_after: int


class _Server:
    def __init__(self, engine: LocalEngine, max_queue: int) -> None:
        app, self.gateway = create_app(engine, ServeOptions(max_queue=max_queue), lambda _l: None)
        self._server = BackgroundServer(app)
        self._server.wait_started()
        self.url = self._server.url

    def stop(self) -> None:
        self._server.stop(10)
        self.gateway.close()


def _events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


def _stream(
    client: httpx.Client, url: str, body: dict[str, Any]
) -> tuple[str, float, float, dict[str, Any]]:
    """Text, time to first text byte, time from first to last text chunk, usage."""
    sent = time.perf_counter()
    first = last = 0.0
    parts: list[str] = []
    usage: dict[str, Any] = {}
    with client.stream(
        "POST", url, json={**body, "stream": True, "stream_options": {"include_usage": True}}
    ) as response:
        response.raise_for_status()
        for event in _events(response):
            if event.get("usage"):
                usage = {**usage, **event["usage"]}
            if event.get("timings"):
                usage = {**usage, "timings": event["timings"]}
            for choice in event.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    parts.append(text)
    return "".join(parts), first - sent, last - first, usage


def _rss(engine_pid: int | None) -> int:
    """The server's memory: this process (not its children: the direct loop is
    one) and the engine host with its template worker."""
    total = psutil.Process().memory_info().rss
    if engine_pid is None:
        return total
    try:
        host = psutil.Process(engine_pid)
        total += host.memory_info().rss
        total += sum(c.memory_info().rss for c in host.children(recursive=True))
    except psutil.NoSuchProcess:
        pass
    return total


def measure(model_path: str, runs: int, tokens: int, turns: int, log_dir: Path) -> Figures:
    engine = LocalEngine(LoadConfig(model_path), engine_log_path(log_dir))
    engine.start()
    state = engine.wait_ready(600)
    if not state.ready or state.model is None:
        raise SystemExit(f"kvchat: the model did not load: {state.message}")
    info = state.model
    samples: list[MemorySample] = []
    engine.subscribe(lambda e: samples.append(e) if isinstance(e, MemorySample) else None)
    server = _Server(engine, max_queue=64)
    direct = DirectProcess(info, 512, log_dir / "bench-serve-direct.log")
    model = model_id(info)
    chat_url = server.url + "/v1/chat/completions"
    client = httpx.Client(timeout=600)
    try:
        decode_body = {
            "model": model,
            "messages": [{"role": "user", "content": DECODE_PROMPT}],
            "max_tokens": tokens,
            "temperature": 0,
        }
        decode_prompt = [ChatMessage("user", DECODE_PROMPT)]
        server_rates: list[float] = []
        direct_rates: list[float] = []
        engine_rates: list[float] = []  # what the engine host measured, before the pipe

        def server_side() -> None:
            _, _, seconds, usage = _stream(client, chat_url, decode_body)
            server_rates.append((usage["completion_tokens"] - 1) / seconds)
            engine_rates.append(usage["timings"]["predicted_per_second"])

        def direct_side() -> None:
            turn = direct.run(decode_prompt, tokens)
            direct_rates.append((turn.generated_tokens - 1) / turn.decode_s)

        print("decode: warming up both sides", file=sys.stderr)
        server_side()
        direct_side()
        server_rates.clear()
        direct_rates.clear()
        engine_rates.clear()
        for run in range(runs):
            print(f"decode: run {run + 1} of {runs}", file=sys.stderr)
            for side in (server_side, direct_side) if run % 2 == 0 else (direct_side, server_side):
                side()

        print(f"time to first byte over {turns} turns", file=sys.stderr)
        ttfb: list[float] = []
        ttft: list[float] = []
        messages: list[dict[str, str]] = []
        direct_messages: list[ChatMessage] = []
        cached = 0
        for turn in range(turns):
            question = f"Question {turn + 1}: name one thing a lighthouse keeper needs, and why."
            messages.append({"role": "user", "content": question})
            direct_messages.append(ChatMessage("user", question))
            body = {"model": model, "messages": messages, "max_tokens": 24, "temperature": 0}
            text, first_byte, _, _ = _stream(client, chat_url, body)
            ttfb.append(first_byte)
            direct_turn = direct.run(direct_messages, 24, cached=cached)
            ttft.append(direct_turn.prefill_s)
            # What the server's cache holds too: the prompt and the reply (its
            # last token is not evaluated when the limit stopped it).
            cached = (
                direct_turn.prompt_tokens
                + direct_turn.generated_tokens
                - (direct_turn.generated_tokens >= 24)
            )
            messages.append({"role": "assistant", "content": text})
            direct_messages.append(ChatMessage("assistant", direct_turn.text))

        print("load: 32 clients, 5 requests each", file=sys.stderr)
        expected: dict[int, int] = {}
        prompts = {c: f"Client {c}: say a word. " + "please " * c for c in range(32)}
        for c, prompt in prompts.items():
            body = {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 1,
            }
            expected[c] = client.post(chat_url, json=body).json()["usage"]["prompt_tokens"]
        rss_before = _rss(engine.pid)
        latencies: list[float] = []
        outcomes: list[tuple[int, int, str]] = []  # client, prompt tokens seen, id
        lock = threading.Lock()

        def one_client(c: int) -> None:
            with httpx.Client(timeout=600) as own:
                for request in range(5):
                    body = {
                        "model": model,
                        "max_tokens": 16,
                        "messages": [{"role": "user", "content": prompts[c]}],
                    }
                    started = time.perf_counter()
                    if (c + request) % 2:
                        _, _, _, usage = _stream(own, chat_url, body)
                        seen, ident = usage.get("prompt_tokens", -1), f"stream-{c}-{request}"
                    else:
                        reply = own.post(chat_url, json=body)
                        data = reply.json() if reply.status_code == 200 else {}
                        seen = data.get("usage", {}).get("prompt_tokens", -1)
                        ident = data.get("id", "")
                    with lock:
                        latencies.append(time.perf_counter() - started)
                        outcomes.append((c, seen, ident))

        threads = [threading.Thread(target=one_client, args=(c,)) for c in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(1.2)  # a memory sample taken after the last request
        rss_after = _rss(engine.pid)
        ok = sum(1 for c, seen, _ in outcomes if seen == expected[c])
        ids = [i for _, _, i in outcomes if not i.startswith("stream-")]
        mixed = len(outcomes) - ok + (len(ids) - len(set(ids)))
        ordered = sorted(latencies)
        return Figures(
            decode_server=Spread.of(server_rates),
            decode_direct=Spread.of(direct_rates),
            decode_ratio=Spread.of(
                [s / d for s, d in zip(server_rates, direct_rates, strict=True)]
            ),
            decode_engine=Spread.of(engine_rates),
            ttfb_server_s=tuple(ttfb),
            ttft_direct_s=tuple(ttft),
            load_requests=len(outcomes),
            load_ok=ok,
            load_mixed_up=mixed,
            load_p50_s=statistics.median(ordered),
            load_p99_s=ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
            rss_before_bytes=rss_before,
            rss_after_bytes=rss_after,
            saved_state_bytes_after=samples[-1].saved_state_bytes if samples else 0,
        )
    finally:
        client.close()
        direct.close()
        server.stop()
        engine.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/serve.py", description=__doc__)
    parser.add_argument("--model", help="a GGUF file (default: bundled)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/serve.json"))
    args = parser.parse_args(argv)
    model = args.model or str(bundled_model_path())
    figures = measure(model, args.runs, args.tokens, args.turns, resolve_data_dir(None))
    args.json.write_text(json.dumps(asdict(figures), indent=2), encoding="utf-8")
    mib = 1024 * 1024
    print(f"decode tok/s, server streamed: {figures.decode_server.text()}")
    print(f"decode tok/s, direct llama.cpp: {figures.decode_direct.text()}")
    print(f"ratio server/direct: {figures.decode_ratio.text(3)}")
    print(f"decode tok/s the engine host measured: {figures.decode_engine.text()}")
    print(
        "time to first byte, turn 1 / 10 / 20 (s): server "
        + " / ".join(
            f"{figures.ttfb_server_s[i]:.3f}" for i in (0, 9, -1) if len(figures.ttfb_server_s) > i
        )
        + "; direct first token "
        + " / ".join(
            f"{figures.ttft_direct_s[i]:.3f}" for i in (0, 9, -1) if len(figures.ttft_direct_s) > i
        )
    )
    print(
        f"load: {figures.load_ok} of {figures.load_requests} answered and matched, "
        f"{figures.load_mixed_up} lost or mixed up; latency p50 {figures.load_p50_s:.2f} s, "
        f"p99 {figures.load_p99_s:.2f} s; RSS {figures.rss_before_bytes / mib:.0f} MiB before, "
        f"{figures.rss_after_bytes / mib:.0f} MiB after, of which "
        f"{figures.saved_state_bytes_after / mib:.0f} MiB saved conversation states"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
