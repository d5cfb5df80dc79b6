"""`kvchat serve` as a person runs it: a process in a terminal, stopped with Ctrl+C or SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest


def _kvchat_serve(*args: str, data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kvchat.app", "serve", *args, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _url(process: subprocess.Popen[str]) -> str:
    """Reads stdout until the line that says where it serves."""
    assert process.stdout is not None
    for line in process.stdout:
        found = re.search(r"at (http://\S+/v1)", line)
        if found:
            return found.group(1)
    raise AssertionError(
        f"no URL printed; stderr: {process.stderr.read() if process.stderr else ''}"
    )


@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_its_url_logs_each_request_and_stops_cleanly(
    data_dir: Path, stop_with: signal.Signals
) -> None:
    process = _kvchat_serve("--port", "0", "--ctx", "1024", data_dir=data_dir)
    try:
        url = _url(process)
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=5
        )
        assert reply.choices[0].message.content is not None
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200
    finally:
        process.send_signal(stop_with)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    lines = out.splitlines()
    request_line = next(line for line in lines if "/v1/chat/completions" in line)
    assert request_line.startswith("POST /v1/chat/completions 200")
    assert re.search(
        r"prompt \d+ tokens \(\d+ cached\) · reply \d+ tokens · [\d.]+ tok/s", request_line
    )
    assert "Say hi" not in out  # message text is not logged unless asked for
    assert lines[-1] == "kvchat: stopped"
    assert "Traceback" not in err


def test_serve_beyond_loopback_without_a_key_is_refused(data_dir: Path) -> None:
    process = _kvchat_serve("--host", "0.0.0.0", "--port", "0", data_dir=data_dir)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "--api-key" in err and "Traceback" not in err


def test_serve_on_a_port_in_use_says_so(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _kvchat_serve("--port", str(port), data_dir=data_dir)
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"port {port}" in err and "in use" in err
    assert "Traceback" not in err
