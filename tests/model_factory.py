"""Small generated GGUF models that llama.cpp really loads, for tests.

Each model is a few megabytes of zero weights with a real architecture's
metadata and tensor layout and a small SentencePiece-style vocabulary, so
llama.cpp loads it, creates a context, and logs the buffers it allocates as
it would for a trained model of that shape. Files are written at test time
into a directory the caller chooses (a pytest temporary directory), never
committed.

The specs cover the cases the memory estimate must get right:

- `llama-gqa`: grouped-query attention (fewer K/V heads than query heads),
  with head size 64 so that quantized K/V types take llama.cpp's usual path.
- `gemma2-swa` and `gemma3-swa`: sliding-window attention; llama.cpp keeps
  a separate cache for the windowed layers.
- `large-vocab`: a 152k-token vocabulary with a narrow hidden size, so the
  logits of one micro-batch dominate the compute buffer.
- `llama-q4_0`: Q4_0 matrices and tied embeddings; on a CPU with AVX2 (or
  Arm's dot-product extensions) llama.cpp repacks them into a buffer of its
  own and loads the embeddings a second time as the output matrix.
- `TINY` (not in SPECS, which the estimate tests walk): one layer and a
  300-token vocabulary, about 100 kB, for tests that write many variants of
  a file (the header fuzz) or need a quick load.

A spec may carry a chat template for `tokenizer.chat_template`, for tests of
templates that come from the file, and a scripted reply: a few tokens the
model then writes, greedily, after any prompt. Such a model is zero weights
but for its embeddings and output matrix, which make each token of the
script predict the next (attention and feed-forward add nothing to the
residual stream, so the last token alone decides). `TINY_THINKING` is one,
with DeepSeek-R1's habit: its template's generation prompt ends with
`<think>\n`, and its reply thinks, closes the thinking and answers.
`TINY_OPENS_THINKING` opens its thinking itself, as Qwen3 does, and
`TINY_HARMONY` writes gpt-oss's harmony channels.

`tests/engine/test_estimate.py` holds the checks that each of them loads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, TokenType

# SentencePiece's token kinds as llama.cpp reads them.
_BYTE_TOKENS = [f"<0x{value:02X}>" for value in range(256)]
_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a generated model. Weights are zero; only sizes matter."""

    name: str
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    context_length: int = 8192
    sliding_window: int | None = None
    matrix_type: GGMLQuantizationType = GGMLQuantizationType.F16
    embedding_type: GGMLQuantizationType = GGMLQuantizationType.F16
    # A separate output projection; without one, llama.cpp reuses token_embd.
    separate_output: bool = True
    # Metadata keys to leave out, for tests of files that lack them.
    omit_keys: frozenset[str] = field(default_factory=frozenset)
    # `tokenizer.chat_template`, if any.
    chat_template: str | None = None
    # Control tokens after BOS and EOS: a family's turn markers (`<start_of_turn>`).
    control_tokens: tuple[str, ...] = ()
    # Tokens the tokenizer matches as they are written (user-defined): the
    # words of a scripted reply, which a prompt can then hold as those tokens.
    words: tuple[str, ...] = ()
    # The reply, by token text, that the model writes after any prompt: the
    # first token after a prompt that ends in none of them, then each after
    # the one before, then `</s>`. Its tokens must differ from one another.
    reply: tuple[str, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def without(self, *keys: str) -> ModelSpec:
        """The same model with some metadata keys missing (`{arch}` expands)."""
        expanded = {key.format(arch=self.architecture) for key in keys}
        suffix = "-".join(sorted(k.split(".")[-1] for k in expanded))
        return replace(self, name=f"{self.name}-no-{suffix}", omit_keys=self.omit_keys | expanded)


LLAMA_GQA = ModelSpec(
    name="llama-gqa",
    architecture="llama",
    n_layer=4,
    n_embd=256,
    n_head=4,
    n_head_kv=2,
    n_ff=512,
    n_vocab=512,
)
GEMMA2_SWA = ModelSpec(
    name="gemma2-swa",
    architecture="gemma2",
    n_layer=4,
    n_embd=256,
    n_head=4,
    n_head_kv=2,
    n_ff=512,
    n_vocab=512,
    sliding_window=1024,
    separate_output=False,
)
GEMMA3_SWA = ModelSpec(
    name="gemma3-swa",
    architecture="gemma3",
    n_layer=6,  # Gemma 3's pattern: five windowed layers, then one global layer
    n_embd=256,
    n_head=4,
    n_head_kv=1,
    n_ff=512,
    n_vocab=512,
    sliding_window=512,
    separate_output=False,
)
LARGE_VOCAB = ModelSpec(
    name="large-vocab",
    architecture="llama",
    n_layer=2,
    n_embd=32,
    n_head=1,
    n_head_kv=1,
    n_ff=128,
    n_vocab=152_064,
    embedding_type=GGMLQuantizationType.Q8_0,
    separate_output=False,
)

LLAMA_Q4_0 = replace(
    LLAMA_GQA,
    name="llama-q4_0",
    matrix_type=GGMLQuantizationType.Q4_0,
    embedding_type=GGMLQuantizationType.Q4_0,
    separate_output=False,
)

TINY = ModelSpec(
    name="tiny",
    architecture="llama",
    n_layer=1,
    n_embd=64,
    n_head=2,
    n_head_kv=1,
    n_ff=128,
    n_vocab=300,
    context_length=1024,
)

# DeepSeek-R1's shape of template: the generation prompt opens the thinking,
# and an earlier reply's thinking is shown to the model as Qwen3's templates
# show it (from `reasoning_content`).
THINKING_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|Assistant|>"
    "{% if m['reasoning_content'] %}<think>\n{{ m['reasoning_content'] }}\n</think>\n\n{% endif %}"
    "{{ m['content'] }}<|end|>"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)
TINY_THINKING = replace(
    TINY,
    name="tiny-thinking",
    chat_template=THINKING_TEMPLATE,
    # Control tokens, which render as nothing unless the engine asks for them.
    control_tokens=("<think>", "</think>"),
    words=(" Hmm", " so", " Yes", " indeed"),
    reply=(" Hmm", " so", "</think>", " Yes", " indeed"),
)

# Qwen3's habit: the model opens its thinking itself, with tags that are
# text (user-defined tokens), as a server that does not parse them sends them.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_OPENS_THINKING = replace(
    TINY,
    name="tiny-opens-thinking",
    chat_template=CHATML_TEMPLATE,
    words=("<think>", "</think>", " Hmm", " so", " Yes", " indeed"),
    reply=("<think>", " Hmm", " so", "</think>", " Yes", " indeed"),
)

# gpt-oss's harmony format, in brief: channels in each message's header.
HARMONY_TEMPLATE = (
    "{% for m in messages %}<|start|>{{ m['role'] }}"
    "{% if m['role'] == 'assistant' %}"
    "{% if m['thinking'] %}<|channel|>analysis<|message|>{{ m['thinking'] }}<|end|>"
    "<|start|>assistant{% endif %}<|channel|>final{% endif %}"
    "<|message|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant{% endif %}"
)
TINY_HARMONY = replace(
    TINY,
    name="tiny-harmony",
    chat_template=HARMONY_TEMPLATE,
    # As gpt-oss's file has them; llama.cpp makes the first five text.
    control_tokens=(
        "<|start|>",
        "<|channel|>",
        "<|message|>",
        "<|constrain|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
    ),
    words=("assistant", "analysis", "final", " Hmm", " so", " Yes"),
    # After `<|start|>assistant`, the final channel; after thinking that a
    # continued reply left open, the rest of it and then the final channel.
    reply=(
        " Hmm",
        " so",
        "<|end|>",
        "<|start|>",
        "assistant",
        "<|channel|>",
        "final",
        "<|message|>",
        " Yes",
        "<|return|>",
    ),
)

SPECS: dict[str, ModelSpec] = {
    spec.name: spec for spec in (LLAMA_GQA, GEMMA2_SWA, GEMMA3_SWA, LARGE_VOCAB, LLAMA_Q4_0)
}


def _tensor_shapes(spec: ModelSpec) -> Iterator[tuple[str, tuple[int, ...], bool]]:
    """(name, ggml shape, is a matrix) for every tensor, in llama.cpp's names.

    ggml shapes list the row length first: token_embd is (n_embd, n_vocab).
    """
    kv_width = spec.head_dim * spec.n_head_kv
    yield "token_embd.weight", (spec.n_embd, spec.n_vocab), True
    for layer in range(spec.n_layer):
        prefix = f"blk.{layer}"
        yield f"{prefix}.attn_norm.weight", (spec.n_embd,), False
        yield f"{prefix}.attn_q.weight", (spec.n_embd, spec.n_embd), True
        yield f"{prefix}.attn_k.weight", (spec.n_embd, kv_width), True
        yield f"{prefix}.attn_v.weight", (spec.n_embd, kv_width), True
        yield f"{prefix}.attn_output.weight", (spec.n_embd, spec.n_embd), True
        if spec.architecture in ("gemma2", "gemma3"):
            yield f"{prefix}.post_attention_norm.weight", (spec.n_embd,), False
            yield f"{prefix}.post_ffw_norm.weight", (spec.n_embd,), False
        if spec.architecture == "gemma3":
            yield f"{prefix}.attn_q_norm.weight", (spec.head_dim,), False
            yield f"{prefix}.attn_k_norm.weight", (spec.head_dim,), False
        yield f"{prefix}.ffn_norm.weight", (spec.n_embd,), False
        yield f"{prefix}.ffn_gate.weight", (spec.n_embd, spec.n_ff), True
        yield f"{prefix}.ffn_up.weight", (spec.n_embd, spec.n_ff), True
        yield f"{prefix}.ffn_down.weight", (spec.n_ff, spec.n_embd), True
    yield "output_norm.weight", (spec.n_embd,), False
    if spec.separate_output:
        yield "output.weight", (spec.n_embd, spec.n_vocab), True


def _zeros(shape: tuple[int, ...], ggml_type: GGMLQuantizationType) -> np.ndarray:
    """Zero data of a ggml type, as GGUFWriter takes it (numpy shape: rows last-first)."""
    numpy_shape = tuple(reversed(shape))
    if ggml_type == GGMLQuantizationType.F32:
        return np.zeros(numpy_shape, dtype=np.float32)
    if ggml_type == GGMLQuantizationType.F16:
        return np.zeros(numpy_shape, dtype=np.float16)
    block, size = GGML_QUANT_SIZES[ggml_type]
    row_bytes = shape[0] // block * size
    # All-zero blocks are valid for every block type: a zero scale, zero values.
    return np.zeros((*numpy_shape[:-1], row_bytes), dtype=np.uint8)


def _vocabulary(
    n_vocab: int, control: tuple[str, ...] = (), words: tuple[str, ...] = ()
) -> tuple[list[str], list[float], list[int]]:
    tokens = _SPECIAL_TOKENS + list(control) + list(words) + _BYTE_TOKENS
    types = (
        [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
        + [TokenType.CONTROL] * len(control)
        + [TokenType.USER_DEFINED] * len(words)
        + [TokenType.BYTE] * 256
    )
    fillers = n_vocab - len(tokens)
    if fillers < 0:
        raise ValueError(f"a vocabulary needs at least {len(tokens)} tokens")
    tokens += [f"\u2581t{index}" for index in range(fillers)]
    types += [TokenType.NORMAL] * fillers
    scores = [0.0] * (len(tokens) - fillers) + [-float(i) for i in range(fillers)]
    return tokens, scores, [int(t) for t in types]


# The scripted reply's logits: its next token's stands this far above the rest.
_SCRIPT_WEIGHT = 10.0


def _scripted_weights(spec: ModelSpec, tokens: list[str]) -> dict[str, np.ndarray]:
    """Embeddings and an output matrix (numpy shapes) that make the model write `spec.reply`.

    Every token's embedding has a small component along dimension 0, which
    the output matrix maps to the reply's first token; each token of the
    reply has a large one along a dimension of its own, mapped to the token
    after it, which outweighs the first after the final norm.
    """
    if not (
        spec.separate_output and spec.embedding_type == spec.matrix_type == GGMLQuantizationType.F16
    ):
        raise ValueError("a scripted reply needs F16 embeddings and an output matrix of its own")
    ids = {text: index for index, text in enumerate(tokens)}
    missing = [text for text in spec.reply if text not in ids]
    if missing or len(set(spec.reply)) != len(spec.reply) or len(spec.reply) >= spec.n_embd:
        raise ValueError(f"a scripted reply needs distinct tokens of the vocabulary: {missing}")
    embeddings = np.zeros((spec.n_vocab, spec.n_embd), dtype=np.float16)
    output = np.zeros((spec.n_vocab, spec.n_embd), dtype=np.float16)
    embeddings[:, 0] = 1.0
    output[ids[spec.reply[0]], 0] = _SCRIPT_WEIGHT
    following = [*spec.reply[1:], "</s>"]
    for dimension, (text, after) in enumerate(zip(spec.reply, following, strict=True), start=1):
        embeddings[ids[text], dimension] = _SCRIPT_WEIGHT
        output[ids[after], dimension] = _SCRIPT_WEIGHT
    return {
        "token_embd.weight": embeddings,
        "output.weight": output,
        "output_norm.weight": np.ones(spec.n_embd, dtype=np.float32),
    }


def write_model(spec: ModelSpec, path: Path) -> Path:
    """Writes the model's GGUF file to `path` and returns the path."""
    arch = spec.architecture
    tokens, scores, types = _vocabulary(spec.n_vocab, spec.control_tokens, spec.words)
    scripted = _scripted_weights(spec, tokens) if spec.reply else {}
    writer = GGUFWriter(str(path), arch)
    metadata: dict[str, object] = {
        f"{arch}.context_length": spec.context_length,
        f"{arch}.embedding_length": spec.n_embd,
        f"{arch}.block_count": spec.n_layer,
        f"{arch}.feed_forward_length": spec.n_ff,
        f"{arch}.attention.head_count": spec.n_head,
        f"{arch}.attention.head_count_kv": spec.n_head_kv,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{arch}.rope.dimension_count": spec.head_dim,
        "general.name": spec.name,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    if spec.sliding_window is not None:
        metadata[f"{arch}.attention.sliding_window"] = spec.sliding_window
    if spec.chat_template is not None:
        metadata["tokenizer.chat_template"] = spec.chat_template
    for key, value in metadata.items():
        if key in spec.omit_keys:
            continue
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_array(key, value)  # type: ignore[arg-type]
    for name, shape, is_matrix in _tensor_shapes(spec):
        if name == "token_embd.weight":
            ggml_type = spec.embedding_type
        elif is_matrix:
            ggml_type = spec.matrix_type
        else:
            ggml_type = GGMLQuantizationType.F32
        data = scripted[name] if name in scripted else _zeros(shape, ggml_type)
        plain = ggml_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16)
        writer.add_tensor(name, data, raw_dtype=None if plain else ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class ModelFactory:
    """Writes each spec's file once into a directory and hands out its path.

    The file name carries a hash of the spec, so factories that share a
    directory (one per test module, say) reuse each other's files.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, spec: ModelSpec | str) -> Path:
        if isinstance(spec, str):
            spec = SPECS[spec]
        digest = hashlib.sha1(repr(spec).encode()).hexdigest()[:10]
        target = self.directory / f"{spec.name}-{digest}.gguf"
        if not target.exists():
            partial = target.with_suffix(".partial")
            write_model(spec, partial)
            partial.rename(target)
        return target


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory: pytest.TempPathFactory) -> ModelFactory:
    """A factory whose files live for the whole test session.

    Import this fixture into a test module (or a conftest) to use it.
    """
    return ModelFactory(tmp_path_factory.getbasetemp() / "generated-models")
