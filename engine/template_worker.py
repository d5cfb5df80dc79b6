"""A model's chat template, rendered in a process that can be stopped.

The sandbox in `chat_template` refuses the operations that build huge values,
but a template is code from a stranger's file, and some of its work happens
inside C functions that no Python hook can interrupt. So the host never runs
a model's template itself: a small worker process does, under an
address-space limit, and the host waits for its answer only until a deadline.
A worker that overruns is killed and the template is marked unsafe for the
life of the host: every later render, and every later load of a model with
the same template, goes straight to the fallback instead of into the same
hang. The worker starts again, fresh, for the next template.

Run as `python -P -m kvchat.engine.template_worker` (one JSON request per
line on stdin, one JSON answer per line on stdout).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvchat.engine.chat_template import (
    ChatTemplate,
    TemplateError,
    TemplateRefusedError,
)
from kvchat.engine.children import child_environment, python_command, safe_working_folder
from kvchat.engine.protocol import ChatMessage

# Real templates render in milliseconds; this only stops a runaway one.
RENDER_TIME_LIMIT_S = 5.0
# The worker's whole address space: Python and Jinja take about 60 MiB of it.
MEMORY_LIMIT_BYTES = 1 << 30
# Starting Python and importing Jinja, on a slow and busy machine.
START_TIME_LIMIT_S = 30.0

# Templates that overran or blew up in this process's life, by digest: why.
_unsafe: dict[str, str] = {}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def unsafe_reason(text: str) -> str | None:
    """Why this template is no longer run (it hung or blew up), or None."""
    return _unsafe.get(_digest(text))


class _WorkerGoneError(TemplateError):
    """The worker overran its deadline or died; the template is to blame."""


@dataclass
class TemplateWorker:
    """One worker process, started on first use and again after it is killed."""

    time_limit_s: float = RENDER_TIME_LIMIT_S
    memory_limit_bytes: int = MEMORY_LIMIT_BYTES
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _buffer: bytes = field(default=b"", init=False)

    def ask(self, request: dict[str, object]) -> dict[str, object]:
        """Sends one request and waits for its answer, at most the time limit.

        Raises:
            _WorkerGoneError: the answer did not come in time, or the worker died.
        """
        process = self._started()
        assert process.stdin is not None
        try:
            process.stdin.write(json.dumps(request).encode("utf-8") + b"\n")
            process.stdin.flush()
        except OSError:
            self._kill()
            raise _WorkerGoneError(self._death_reason(process)) from None
        line = self._read_line(process, time.monotonic() + self.time_limit_s)
        if line is None:
            self._kill()
            raise _WorkerGoneError(
                f"the model's chat template ran for more than {self.time_limit_s:g} s "
                "and was stopped"
            )
        if not line:
            self._kill()
            raise _WorkerGoneError(self._death_reason(process))
        answer: dict[str, object] = json.loads(line)
        return answer

    def close(self) -> None:
        """Ends the worker, if one runs."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._buffer = b""
        self._process = subprocess.Popen(
            python_command(
                "kvchat.engine.template_worker", "--memory-limit", str(self.memory_limit_bytes)
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=child_environment(),
            cwd=safe_working_folder(),
        )
        ready = self._read_line(self._process, time.monotonic() + START_TIME_LIMIT_S)
        if not ready:
            self._kill()
            raise TemplateError("kvchat could not start the process that renders chat templates")
        return self._process

    def _read_line(self, process: subprocess.Popen[bytes], deadline: float) -> bytes | None:
        """The next line of the worker's output; b"" if it ended, None at the deadline."""
        assert process.stdout is not None
        descriptor = process.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(descriptor, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    return None
                chunk = os.read(descriptor, 1 << 16)
                if not chunk:
                    return b""
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _death_reason(self, process: subprocess.Popen[bytes]) -> str:
        code = process.wait()
        return (
            "the model's chat template used more memory than kvchat allows "
            f"({self.memory_limit_bytes >> 20} MiB) and was stopped"
            if code != 0
            else "the process rendering the model's chat template ended unexpectedly"
        )

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()


@dataclass
class IsolatedTemplate:
    """A model's template, compiled and rendered by a worker process.

    It renders as a ChatTemplate does (same arguments, same errors).
    """

    text: str
    worker: TemplateWorker
    source: str = "model"

    @classmethod
    def compile(cls, text: str, worker: TemplateWorker, source: str = "model") -> IsolatedTemplate:
        """Checks that the template compiles, in the worker.

        Raises:
            TemplateError: it is not valid Jinja, or it hung or blew up before.
        """
        template = cls(text, worker, source)
        template._ask({"compile": text})
        return template

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        bos_token: str,
        eos_token: str,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text; raises TemplateError or TemplateRefusedError as ChatTemplate does."""
        answer = self._ask(
            {
                "compile": self.text,
                "messages": [[m.role, m.content, m.thinking] for m in messages],
                "bos_token": bos_token,
                "eos_token": eos_token,
                "add_generation_prompt": add_generation_prompt,
            }
        )
        return str(answer["text"])

    def _ask(self, request: dict[str, object]) -> dict[str, object]:
        reason = unsafe_reason(self.text)
        if reason is not None:
            raise TemplateError(f"{reason} earlier, so it is no longer used")
        try:
            answer = self.worker.ask(request)
        except _WorkerGoneError as exc:
            _unsafe[_digest(self.text)] = str(exc)
            raise
        if "refused" in answer:
            raise TemplateRefusedError(str(answer["refused"]))
        if "error" in answer:
            raise TemplateError(str(answer["error"]))
        return answer


def _serve(memory_limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    compiled: dict[str, ChatTemplate] = {}
    out = sys.stdout.buffer
    out.write(b"{}\n")
    out.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        answer: dict[str, object]
        try:
            text = request["compile"]
            template = compiled.get(text)
            if template is None:
                compiled.clear()  # one model's template at a time
                template = compiled[text] = ChatTemplate.compile(text)
            if "messages" in request:
                answer = {
                    "text": template.render(
                        [ChatMessage(*fields) for fields in request["messages"]],
                        bos_token=request["bos_token"],
                        eos_token=request["eos_token"],
                        add_generation_prompt=request["add_generation_prompt"],
                    )
                }
            else:
                answer = {}
        except TemplateRefusedError as exc:
            answer = {"refused": str(exc)}
        except TemplateError as exc:
            answer = {"error": str(exc)}
        out.write(json.dumps(answer).encode("utf-8") + b"\n")
        out.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[sys.argv.index("--memory-limit") + 1]))
