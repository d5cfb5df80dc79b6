"""The direct llama.cpp loop that `kvchat bench` holds kvchat's speed against.

It is what a program calling llama.cpp's C API would do, in one process:
`llama_decode` on the prompt in batches, a sampler chain in C (greedy), one
`llama_decode` per generated token. No pipe, no threads of its own, no Qt.
It loads the model with the settings kvchat's engine reported (context,
batch, threads, layers; flash attention and K/V types at kvchat's defaults)
and renders the same chat template the same way, so
both sides evaluate the same tokens and, sampling greedily, generate the same
reply.

It runs as its own process, `python -m kvchat.engine.llama.bench_direct`, because the GUI
process must never import llama_cpp. It reads one JSON request per line on
stdin and answers one JSON line on stdout; llama.cpp's own output goes to
stderr. It first answers {"ready": true, "rss_before_model_bytes": N} (or
{"error": ...}): its RSS with llama.cpp imported but no model yet, so that
what the model itself takes in memory can be measured. Requests:

    {"op": "run", "messages": [[role, content], ...], "max_tokens": N, "cached": C,
     "threads": T}
        A turn on a cache that holds the prompt's first C tokens (the cache is
        cleared and those are evaluated first, untimed; C is 0 for a fresh
        turn), on T threads (optional: the count it was started with).
        Answers prompt_tokens, evaluated_tokens, prefill_s (from the
        first llama_decode of the rest of the prompt to the first token
        sampled), decode_s (from the first token sampled to the last),
        generated_tokens, tokens (their ids) and text.
    {"op": "bare", "messages": [...], "tokens": [...], "threads": T}
        llama.cpp's bare decode, the floor of any loop around it: after the
        prompt (untimed), each of the reply's tokens but the last evaluated
        one by one, with nothing sampled, detokenized or sent. Given a
        reply's tokens, it evaluates exactly what that reply did. Answers
        decode_s and decoded_tokens.
    {"op": "count", "text": "..."}
        Answers tokens: how many tokens the text is on its own.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO, cast

import llama_cpp
import psutil

from kvchat.engine.chat_template import ChatTemplate, TemplateError
from kvchat.engine.gguf_file import read_gguf
from kvchat.engine.llama import vocab
from kvchat.engine.load_params import FLASH_ATTN_TYPES, resolve_load_params
from kvchat.engine.protocol import ChatMessage, LoadConfig, Role


class DirectError(Exception):
    """llama.cpp refused the model, the context or a batch."""


class DirectLoop:
    """One model and one context, driven the plainest way llama.cpp allows."""

    def __init__(
        self, model_path: str, n_ctx: int, n_batch: int, n_threads: int, n_gpu_layers: int
    ) -> None:
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        model = llama_cpp.llama_model_load_from_file(model_path.encode(), model_params)
        if not model:
            raise DirectError(f"llama.cpp could not load {model_path}")
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = n_ctx
        context_params.n_batch = n_batch
        context_params.n_ubatch = n_batch
        context_params.n_threads = n_threads
        context_params.n_threads_batch = n_threads
        # Flash attention as kvchat resolves its default for this load (off on the CPU).
        resolved = resolve_load_params(
            LoadConfig(model_path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers), None, n_gpu_layers > 0
        )
        context_params.flash_attn_type = FLASH_ATTN_TYPES[resolved.flash_attention]
        context_params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, context_params)
        if not ctx:
            raise DirectError(f"llama.cpp could not create a context of {n_ctx} tokens")
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._n_batch = n_batch
        self._n_threads = n_threads

        chain_params = llama_cpp.llama_sampler_chain_default_params()
        self._sampler = llama_cpp.llama_sampler_chain_init(chain_params)
        llama_cpp.llama_sampler_chain_add(self._sampler, llama_cpp.llama_sampler_init_greedy())

        # The prompt as kvchat's engine renders it: the model's template, or
        # ChatML when it has none or it does not compile, with the BOS token
        # added unless the template already wrote it.
        try:
            self._template = ChatTemplate.compile(read_gguf(model_path).chat_template)
        except TemplateError:
            self._template = ChatTemplate.chatml("ChatML")
        self._bos = vocab.special_text(self._vocab, llama_cpp.llama_vocab_bos(self._vocab))
        self._eos = vocab.special_text(self._vocab, llama_cpp.llama_vocab_eos(self._vocab))
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self._sampler)
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return vocab.tokenize(self._vocab, text, add_special, parse_special)

    def prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        text = self._template.render(messages, bos_token=self._bos, eos_token=self._eos)
        add_bos = self._add_bos and not (self._bos and text.startswith(self._bos))
        return self.tokenize(text, add_special=add_bos, parse_special=True)

    def _decode(self, tokens: ctypes.Array[ctypes.c_int32], count: int) -> None:
        status = llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(tokens, count))
        if status != 0:
            raise DirectError(f"llama_decode failed with status {status}")

    def _batches(self, tokens: Sequence[int]) -> list[ctypes.Array[ctypes.c_int32]]:
        return [
            (llama_cpp.llama_token * len(chunk))(*chunk)
            for chunk in (
                tokens[start : start + self._n_batch]
                for start in range(0, len(tokens), self._n_batch)
            )
        ]

    def use_threads(self, threads: int | None) -> None:
        """Computes on `threads` from now on (None: the count it started with)."""
        count = threads or self._n_threads
        llama_cpp.llama_set_n_threads(self._ctx, count, count)

    def run(
        self, messages: Sequence[ChatMessage], max_tokens: int, cached: int
    ) -> dict[str, object]:
        """One turn: the first `cached` prompt tokens go into the cache
        untimed, then the rest is evaluated in batches and decoding is greedy."""
        prompt = self.prompt(messages)
        cached = min(cached, len(prompt) - 1)
        batches = self._batches(prompt[cached:])
        one = (llama_cpp.llama_token * 1)()
        llama_cpp.llama_memory_clear(self._memory, True)
        for batch in self._batches(prompt[:cached]):
            self._decode(batch, len(batch))
        llama_cpp.llama_sampler_reset(self._sampler)
        reply = bytearray()
        tokens: list[int] = []
        generated = 0

        started = time.perf_counter()
        for batch in batches:
            self._decode(batch, len(batch))
        token = llama_cpp.llama_sampler_sample(self._sampler, self._ctx, -1)
        first = last = time.perf_counter()
        while not llama_cpp.llama_vocab_is_eog(self._vocab, token):
            generated += 1
            tokens.append(token)
            reply += vocab.token_bytes(self._vocab, token)
            if generated >= max_tokens:
                break
            one[0] = token
            self._decode(one, 1)
            token = llama_cpp.llama_sampler_sample(self._sampler, self._ctx, -1)
            last = time.perf_counter()

        return {
            "prompt_tokens": len(prompt),
            "evaluated_tokens": len(prompt) - cached,
            "prefill_s": first - started,
            "decode_s": last - first,
            "generated_tokens": generated,
            "tokens": tokens,
            "text": reply.decode("utf-8", "replace"),
        }

    def bare(self, messages: Sequence[ChatMessage], tokens: Sequence[int]) -> dict[str, object]:
        """The reply's decode steps alone: no sampling, no text (see the module's "bare")."""
        llama_cpp.llama_memory_clear(self._memory, True)
        for batch in self._batches(self.prompt(messages)):
            self._decode(batch, len(batch))
        one = (llama_cpp.llama_token * 1)()
        steps = list(tokens[:-1])  # the last token's logits were never needed
        started = time.perf_counter()
        for token in steps:
            one[0] = token
            self._decode(one, 1)
        return {"decode_s": time.perf_counter() - started, "decoded_tokens": len(steps)}


def _messages(raw: object) -> list[ChatMessage]:
    pairs = cast(list[list[str]], raw)
    return [ChatMessage(cast(Role, role), content) for role, content in pairs]


def _serve(loop: DirectLoop, requests: TextIO, replies: TextIO) -> None:
    for line in requests:
        request = cast(dict[str, object], json.loads(line))
        try:
            loop.use_threads(cast(int | None, request.get("threads")))
            if request["op"] == "run":
                reply = loop.run(
                    _messages(request["messages"]),
                    cast(int, request["max_tokens"]),
                    cast(int, request["cached"]),
                )
            elif request["op"] == "bare":
                reply = loop.bare(
                    _messages(request["messages"]), cast(list[int], request["tokens"])
                )
            elif request["op"] == "count":
                text = cast(str, request["text"])
                reply = {"tokens": len(loop.tokenize(text, add_special=False, parse_special=False))}
            else:
                reply = {"error": f"unknown op {request['op']!r}"}
        except (DirectError, TemplateError) as exc:
            reply = {"error": str(exc)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", required=True)
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--n-batch", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--gpu-layers", type=int, required=True)
    args = parser.parse_args(argv)

    # Replies keep the real stdout; llama.cpp's native prints go to stderr.
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    rss_before_model = psutil.Process().memory_info().rss
    try:
        loop = DirectLoop(args.model, args.n_ctx, args.n_batch, args.threads, args.gpu_layers)
    except DirectError as exc:
        replies.write(json.dumps({"error": str(exc)}) + "\n")
        replies.flush()
        return 1
    replies.write(json.dumps({"ready": True, "rss_before_model_bytes": rss_before_model}) + "\n")
    replies.flush()
    _serve(loop, sys.stdin, replies)
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
