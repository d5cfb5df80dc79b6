"""The memory estimate against what llama.cpp reports when it really loads.

The reference is llama.cpp's own log of a real load through kvchat's
ModelRunner: the buffer lines it prints as it allocates. The estimate comes
from a dry run of the same settings. Models: the bundled SmolLM2 and small
generated GGUF files (tests/model_factory.py) for grouped-query attention,
sliding-window attention (Gemma 2 and 3), a large vocabulary, and repacked
Q4_0 weights with tied embeddings.

This machine has no GPU. The GPU branch is checked against llama.cpp's
rules instead: log lines as a CUDA build prints them, with the layer
assignment of `llama_model_base::load_tensors`, replayed into the
projection with a recorded device list.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from kvchat.engine import estimate as estimate_module
from kvchat.engine.buffer_report import MIB, parse_buffer_report
from kvchat.engine.estimate import (
    CannotEstimateError,
    DeviceUse,
    DryRunError,
    Estimate,
    HostWeights,
    Projection,
    estimate,
    find_fit,
    largest,
    project,
    read_dry_run_log,
)
from kvchat.engine.gguf_file import GgufInfo, ModelFileError, read_gguf
from kvchat.engine.llama import devices as devices_module
from kvchat.engine.llama.devices import NvmlDevice, RawDevice
from kvchat.engine.llama.dry_run import LogCapture, cpu_features, run
from kvchat.engine.llama.runner import LlamaLog, ModelRunner
from kvchat.engine.load_params import KV_TYPES, LoadParams
from kvchat.engine.protocol import DeviceSample, KvType, LoadConfig
from tests.model_factory import (
    GEMMA2_SWA,
    LLAMA_GQA,
    SPECS,
    ModelFactory,
    model_factory,
)

__all__ = ["model_factory"]  # a fixture, imported so that pytest finds it

GIB = 1024 * MIB


# llama.cpp logs sizes to 0.01 MiB: each logged figure is up to this far off.
LOG_ROUNDING = 0.005 * MIB + 1  # + 1: the report turns MiB back into whole bytes


@dataclass(frozen=True)
class Figures:
    """What llama.cpp logged, and how many rounded figures each sum adds up."""

    weights: int
    kv: int
    compute: int
    weights_lines: int
    kv_lines: int
    compute_lines: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute


@pytest.fixture(scope="module")
def llama_log() -> LlamaLog:
    """ModelRunner's error log; reference loads collect lines with their own capture."""
    return LlamaLog()


@pytest.fixture(scope="module")
def models(model_factory: ModelFactory, model_path: Path) -> dict[str, Path]:
    paths = {name: model_factory.path(spec) for name, spec in SPECS.items()}
    paths["bundled"] = model_path
    return paths


def real_load(config: LoadConfig, llama_log: LlamaLog) -> tuple[Figures, list[str]]:
    """What llama.cpp reports for a real load through kvchat's ModelRunner."""
    with LogCapture() as capture:
        runner = ModelRunner(config, read_gguf(config.model_path), llama_log)
        runner.close()
    report = parse_buffer_report(capture.lines)
    figures = Figures(
        weights=report.total("weights"),
        # Summary lines: one per cache, where two caches may share a buffer name.
        kv=sum(layout.bytes for layout in report.kv_caches),
        compute=report.total("compute") + report.total("output"),
        weights_lines=len(report.by_buffer("weights")),
        kv_lines=len(report.kv_caches),
        compute_lines=len(report.by_buffer("compute")) + len(report.by_buffer("output")),
    )
    return figures, capture.lines


def dry_run(
    config: LoadConfig,
    fit: bool = False,
    raw: Callable[[], list[RawDevice]] | None = None,
    nvml: Callable[[int], tuple[list[NvmlDevice], str]] | None = None,
) -> Estimate:
    """The estimate computed in this process: the child's code, without the spawn."""
    probes = {k: v for k, v in (("raw", raw), ("nvml", nvml)) if v is not None}
    answer = run({"config": asdict(config), "fit": fit}, **probes)  # type: ignore[arg-type]
    assert "estimate" in answer, answer
    return Estimate.from_wire(answer["estimate"])  # type: ignore[arg-type]


def close(estimated: int, actual: int, share: float, rounded_figures: int) -> bool:
    """Within `share` of the logged figure, or within the log's own rounding of it."""
    return abs(estimated - actual) <= max(share * actual, rounded_figures * LOG_ROUNDING)


def exact_kv_bytes(gguf: GgufInfo, n_ctx: int, kv_type: KvType) -> int:
    """K and V of every layer for n_ctx tokens, from the attention shape.

    Every model here gives each layer the same K/V heads and keeps a full
    context in its sliding-window cache too (llama.cpp's swa_full, which
    kvchat keeps), so one formula covers them all.
    """
    meta, arch = gguf.metadata, gguf.architecture
    layers, n_embd = meta[f"{arch}.block_count"], meta[f"{arch}.embedding_length"]
    n_head, n_head_kv = (
        meta[f"{arch}.attention.head_count"],
        meta[f"{arch}.attention.head_count_kv"],
    )
    assert isinstance(layers, int) and isinstance(n_embd, int)
    assert isinstance(n_head, int) and isinstance(n_head_kv, int)
    width = n_head_kv * n_embd // n_head
    row = {"f16": width * 2, "q8_0": width // 32 * 34, "q4_0": width // 32 * 18}[kv_type]
    return n_ctx * layers * 2 * row


def grid_config(path: Path, n_ctx: int, kv_type: KvType, n_batch: int) -> LoadConfig:
    return LoadConfig(
        str(path),
        n_ctx=n_ctx,
        n_batch=n_batch,
        type_k=kv_type,
        type_v=kv_type,
        # A quantized V cache needs flash attention.
        flash_attention="auto" if kv_type == "f16" else "on",
    )


GRID = [
    (n_ctx, kv_type, n_batch)
    for n_ctx in (512, 2048, 4096)
    for kv_type in ("f16", "q8_0", "q4_0")
    for n_batch in (256, 512)
]
MODELS = ("bundled", "llama-gqa", "gemma2-swa", "gemma3-swa", "large-vocab", "llama-q4_0")
CASES = [(name, *setting) for name in MODELS for setting in GRID]


@pytest.mark.parametrize(
    ("name", "n_ctx", "kv_type", "n_batch"),
    CASES,
    ids=[f"{name}-ctx{ctx}-{kv}-b{batch}" for name, ctx, kv, batch in CASES],
)
def test_estimate_matches_the_real_load(
    name: str,
    n_ctx: int,
    kv_type: KvType,
    n_batch: int,
    models: dict[str, Path],
    llama_log: LlamaLog,
) -> None:
    config = grid_config(models[name], n_ctx, kv_type, n_batch)
    actual, lines = real_load(config, llama_log)
    projection = dry_run(config).projection
    cpu = projection.device("CPU")

    assert close(cpu.weights_bytes, actual.weights, 0.01, actual.weights_lines)
    assert close(cpu.kv_bytes, actual.kv, 0.01, actual.kv_lines)
    assert close(cpu.compute_bytes, actual.compute, 0.10, actual.compute_lines)
    all_lines = actual.weights_lines + actual.kv_lines + actual.compute_lines
    assert close(cpu.total_bytes, actual.total, 0.05, all_lines)
    logged = parse_buffer_report(lines).kv_caches
    assert [(c.cells, c.layers) for c in projection.kv_caches] == [
        (c.cells, c.layers) for c in logged
    ]
    assert {(c.type_k, c.type_v) for c in projection.kv_caches} == {(kv_type, kv_type)}
    assert projection.kv_bytes_per_token * projection.n_ctx == cpu.kv_bytes
    # Exact, where the log's 0.01 MiB makes small caches look off by a few percent.
    assert cpu.kv_bytes == exact_kv_bytes(read_gguf(config.model_path), n_ctx, kv_type)


def test_sliding_window_models_get_a_separate_cache(models: dict[str, Path]) -> None:
    gemma2 = dry_run(LoadConfig(str(models["gemma2-swa"]), n_ctx=2048)).projection
    gemma3 = dry_run(LoadConfig(str(models["gemma3-swa"]), n_ctx=2048)).projection
    # (cells, layers): the global layers' cache first, then the windowed ones';
    # kvchat keeps llama.cpp's full-size window cache, so both hold n_ctx cells.
    assert [(c.cells, c.layers) for c in gemma2.kv_caches] == [(2048, 2), (2048, 2)]
    assert [(c.cells, c.layers) for c in gemma3.kv_caches] == [(2048, 1), (2048, 5)]


def test_large_vocabulary_logits_dominate_the_compute_buffer(models: dict[str, Path]) -> None:
    spec = SPECS["large-vocab"]
    projection = dry_run(LoadConfig(str(models["large-vocab"]), n_ctx=2048)).projection
    logits = spec.n_vocab * projection.load_params.n_ubatch * 4  # f32 per token per ubatch
    cpu = projection.device("CPU")
    assert logits <= cpu.compute_bytes < 1.2 * logits
    assert cpu.compute_bytes > 10 * cpu.kv_bytes


def test_repacked_weights_count_twice_as_llama_cpp_reports(
    models: dict[str, Path], llama_log: LlamaLog
) -> None:
    """On AVX2, Q4_0 matrices go to CPU_REPACK, and the mapped file stays mapped."""
    if not {"REPACK", "AVX2"} <= cpu_features():
        pytest.skip("this CPU backend does not repack Q4_0")
    config = LoadConfig(str(models["llama-q4_0"]), n_ctx=1024)
    _actual, lines = real_load(config, llama_log)
    weights = parse_buffer_report(lines).by_buffer("weights")
    assert set(weights) == {"CPU_Mapped", "CPU_REPACK"}
    gguf = read_gguf(config.model_path)
    matrices = sum(t.n_bytes for t in gguf.tensors if t.type_name == "Q4_0")
    # Every Q4_0 matrix, the tied output's copy of the embeddings included.
    assert weights["CPU_REPACK"] == pytest.approx(matrices, rel=0.01)
    estimated = dry_run(config).projection.device("CPU").weights_bytes
    assert estimated == pytest.approx(sum(weights.values()), rel=0.01)


def test_quantized_v_without_flash_attention_is_refused(models: dict[str, Path]) -> None:
    config = LoadConfig(str(models["llama-gqa"]), n_ctx=1024, type_v="q8_0", flash_attention="off")
    answer = run({"config": asdict(config), "fit": False})
    assert answer["error"] == (
        "llama.cpp would refuse a context of 1024 tokens: "
        "llama_init_from_model: quantized V cache requires flash_attn to be enabled"
    )


# Through the child process, as the window and the CLI call it.


def test_estimate_in_a_child_process(model_path: Path) -> None:
    result = estimate(LoadConfig(str(model_path)))
    projection = result.projection
    assert projection.load_params == LoadParams(
        n_ctx=4096,
        n_batch=512,
        n_ubatch=512,
        n_gpu_layers=0,  # a CPU build
        type_k=KV_TYPES["f16"],
        type_v=KV_TYPES["f16"],
        flash_attention="off",  # "auto" on the CPU
    )
    assert not projection.flash_attn
    assert [device.name for device in projection.devices] == ["CPU"]
    assert projection.kv_bytes_per_token == 30 * 2 * 3 * 64 * 2  # layers, K+V, heads, dim, f16
    assert result.n_layers == 31
    assert result.fit is not None
    assert result.fit.max_gpu_layers is None  # no GPU
    assert result.fit.max_context == 8192  # the trained context fits in RAM
    assert result.dry_run_seconds > 0
    assert "every layer runs on the CPU" in " ".join(result.notes)


def test_missing_metadata_is_named(model_factory: ModelFactory) -> None:
    for key in ("llama.block_count", "llama.context_length"):
        path = model_factory.path(LLAMA_GQA.without(key))
        with pytest.raises(CannotEstimateError) as caught:
            estimate(LoadConfig(str(path)))
        assert str(caught.value) == f"estimate unavailable: missing {key}"


def test_metadata_only_llama_cpp_needs_is_named_too(model_factory: ModelFactory) -> None:
    path = model_factory.path(LLAMA_GQA.without("{arch}.attention.layer_norm_rms_epsilon"))
    with pytest.raises(CannotEstimateError) as caught:
        estimate(LoadConfig(str(path)), fit=False)
    assert str(caught.value) == (
        "estimate unavailable: missing llama.attention.layer_norm_rms_epsilon"
    )


def test_a_file_that_is_not_gguf_never_reaches_llama_cpp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_child(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a dry run was started")

    # Told at once, from the file's start: no dry run is started for it.
    monkeypatch.setattr(estimate_module.subprocess, "run", no_child)
    path = tmp_path / "notes.gguf"
    path.write_text("just some notes\n")
    with pytest.raises(ModelFileError, match="not a GGUF file: it is a text file"):
        estimate(LoadConfig(str(path)))
    with pytest.raises(ModelFileError, match="the file does not exist"):
        estimate(LoadConfig(str(tmp_path / "gone.gguf")))


def test_a_header_at_fault_past_its_start_is_refused_by_the_child(tmp_path: Path) -> None:
    # The start is GGUF; the header claims more than the file holds.
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1000) + b"abc")
    with pytest.raises(ModelFileError, match="runs past the end of the file"):
        estimate(LoadConfig(str(path)))


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_a_crashing_dry_run_is_reported(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash = _fake_python(tmp_path, "echo 'GGML_ASSERT' >&2; kill -SEGV $$")
    monkeypatch.setattr("sys.executable", crash)
    with pytest.raises(DryRunError) as caught:
        estimate(LoadConfig(str(model_path)))
    assert str(caught.value) == "the dry run of llama.cpp crashed with SIGSEGV: GGML_ASSERT"


def test_a_hanging_dry_run_is_stopped(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.executable", _fake_python(tmp_path, "exec sleep 30"))
    with pytest.raises(DryRunError, match="took longer than 1 s and was stopped"):
        estimate(LoadConfig(str(model_path)), timeout_s=1)


# Device queries that fail.


def test_without_ggml_devices_the_host_is_still_estimated(model_path: Path) -> None:
    def broken() -> list[RawDevice]:
        raise OSError("libggml.so: cannot open shared object file")

    result = dry_run(LoadConfig(str(model_path)), raw=broken)
    assert [d.name for d in result.projection.devices] == ["CPU"]
    assert result.projection.device("CPU").weights_bytes > 90 * MIB
    assert result.notes[0] == (
        "ggml's device list is unavailable (libggml.so: cannot open shared object file); "
        "showing host RAM only"
    )


def test_without_nvml_the_gpu_is_still_listed(model_path: Path) -> None:
    def recorded() -> list[RawDevice]:
        return [
            RawDevice("CPU", "AMD EPYC", 0, 0, 0),
            RawDevice("CUDA0", "NVIDIA H100 80GB HBM3", 1, 80 * GIB, 79 * GIB),
        ]

    def no_nvml(_pid: int) -> tuple[list[NvmlDevice], str]:
        return [], "NVML unavailable: Driver Not Loaded"

    result = dry_run(LoadConfig(str(model_path)), raw=recorded, nvml=no_nvml)
    gpu = result.projection.device("CUDA0")
    assert gpu.free_bytes == 79 * GIB
    # This build cannot offload, so nothing lands on the recorded GPU.
    assert gpu.total_bytes == 0
    assert "NVML unavailable: Driver Not Loaded" in result.notes


# The fit answers.


def test_largest_finds_the_edge() -> None:
    assert largest(0, 100, lambda x: x <= 37) == 37
    assert largest(0, 100, lambda x: True) == 100
    assert largest(5, 100, lambda x: x < 5) is None


def test_largest_context_in_limited_ram(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 800 MiB free, the bundled model's context stops short of 8192 tokens."""
    memory = SimpleNamespace(total=2 * GIB, available=800 * MIB)
    monkeypatch.setattr(devices_module.psutil, "virtual_memory", lambda: memory)
    result = dry_run(LoadConfig(str(model_path)), fit=True)
    assert result.fit is not None
    best = result.fit.max_context
    assert best is not None and 512 < best < 8192
    assert dry_run(LoadConfig(str(model_path), n_ctx=best)).projection.fits
    assert not dry_run(LoadConfig(str(model_path), n_ctx=best + 256)).projection.fits


def _use(name: str, kind: str, used: int, free: int) -> DeviceUse:
    return DeviceUse(name, kind, used, 0, 0, free)


def test_fit_search_over_gpu_layers_and_context() -> None:
    """A recorded machine: 2 GiB free on the GPU, 300 MiB per layer, 64 KiB per token."""
    params = LoadParams(4096, 512, 512, 999, 1, 1, "auto")

    def measure(candidate: LoadParams) -> Projection:
        layers = min(candidate.n_gpu_layers, 9)
        gpu = layers * 300 * MIB + candidate.n_ctx * 64 * 1024
        devices = (_use("CPU", "cpu", 1 * GIB, 30 * GIB), _use("CUDA0", "gpu", gpu, 2 * GIB))
        return Projection(candidate, True, candidate.n_ctx, (), devices)

    fit = find_fit(params, n_layers=8, n_ctx_train=32768, gpu_offload=True, measure=measure)
    # 1.5 GiB to spend after the 512 MiB margin: 4 layers and 256 MiB of KV.
    assert fit.max_gpu_layers == 4
    # All 9 layers (2.6 GiB) never fit, whatever the context.
    assert fit.max_context is None

    def small(candidate: LoadParams) -> Projection:
        layers = min(candidate.n_gpu_layers, 9)
        gpu = layers * 100 * MIB + candidate.n_ctx * 64 * 1024
        devices = (_use("CPU", "cpu", 1 * GIB, 30 * GIB), _use("CUDA0", "gpu", gpu, 2 * GIB))
        return Projection(candidate, True, candidate.n_ctx, (), devices)

    fit = find_fit(params, n_layers=8, n_ctx_train=32768, gpu_offload=True, measure=small)
    assert fit.max_gpu_layers == 9
    # 1536 - 900 MiB left for 64 KiB per token: 10176 tokens, in steps of 256.
    assert fit.max_context == 9984


# The GPU branch, replayed from llama.cpp's rules and its log format.


def cuda_log(
    n_layer: int, n_gpu_layers: int, gpus: dict[str, int], kv_bytes_per_layer: int
) -> list[str]:
    """Lines a CUDA build logs for a load, with llama.cpp's layer assignment.

    llama-model.cpp: layers from i_gpu_start = n_layer + 1 - n_gpu_layers are
    offloaded, the last of them being the output layer; the offloaded ones
    are split among the GPUs in proportion to their free memory.
    """
    names = list(gpus)
    total = sum(gpus.values())
    splits = []
    running = 0
    for name in names:
        running += gpus[name]
        splits.append(running / total)
    start = max(n_layer + 1 - n_gpu_layers, 0)
    active = min(n_gpu_layers, n_layer + 1)

    def device(layer: int) -> str:
        if layer < start or layer - start >= active:
            return "CPU"
        return names[bisect.bisect_right(splits, (layer - start) / active)]

    lines = [
        f"load_tensors: layer {il:3d} assigned to device {device(il)}, is_swa = 0"
        for il in range(n_layer + 1)
    ]
    lines += [f"load_tensors: {n:>12} model buffer size =     0.00 MiB" for n in ["CPU", *names]]
    lines.append("llama_context:  CUDA_Host  output buffer size =     0.01 MiB")
    lines += [f"llama_kv_cache: layer {il:3d}: dev = {device(il)}" for il in range(n_layer)]
    lines += [f"llama_kv_cache: {n:>10} KV buffer size =     0.00 MiB" for n in ["CPU", *names]]
    mib = kv_bytes_per_layer * n_layer / MIB
    lines.append(
        f"llama_kv_cache: size = {mib:7.2f} MiB (  4096 cells, {n_layer:3d} layers,  1/1 seqs), "
        f"K (f16): {mib / 2:7.2f} MiB, V (f16): {mib / 2:7.2f} MiB"
    )
    lines += [f"sched_reserve: {n:>10} compute buffer size =   100.00 MiB" for n in names]
    lines.append("sched_reserve:  CUDA_Host compute buffer size =    12.00 MiB")
    return lines


def _gpu_machine(gpus: dict[str, int]) -> list[DeviceSample]:
    recorded = [DeviceSample("CPU", "host RAM", "cpu", 64 * GIB, 60 * GIB, None)]
    recorded += [DeviceSample(n, "NVIDIA", "gpu", 24 * GIB, free, None) for n, free in gpus.items()]
    return recorded


def _tensor_bytes(gguf: GgufInfo, prefixes: tuple[str, ...]) -> int:
    return sum(-(-t.n_bytes // 32) * 32 for t in gguf.tensors if t.name.startswith(prefixes))


def _mapped_region(gguf: GgufInfo, prefixes: tuple[str, ...]) -> int:
    chosen = [t for t in gguf.tensors if t.name.startswith(prefixes)]
    return max(t.offset + t.n_bytes for t in chosen) - min(t.offset for t in chosen)


def _gpu_projection(gguf: GgufInfo, n_gpu_layers: int, gpus: dict[str, int]) -> Projection:
    params = LoadParams(4096, 512, 512, n_gpu_layers, 1, 1, "auto")
    kv_per_layer = 4096 * 2 * 2 * 64 * 2  # cells, K+V, K/V heads, head size, f16
    log = read_dry_run_log(cuda_log(4, n_gpu_layers, gpus, kv_per_layer))
    host = HostWeights(mapped=True)  # with a GPU, nothing is repacked
    return project(gguf, params, log, _gpu_machine(gpus), host)


def test_the_first_gpu_layer_is_the_output_layer(model_factory: ModelFactory) -> None:
    gguf = read_gguf(model_factory.path(LLAMA_GQA))
    # llama.cpp counts the output layer first: one GPU layer is the output layer.
    projection = _gpu_projection(gguf, 1, {"CUDA0": 20 * GIB})
    cpu, gpu = projection.device("CPU"), projection.device("CUDA0")
    assert gpu.weights_bytes == _tensor_bytes(gguf, ("output",))
    # The host keeps the mapped file from the embeddings to the last block.
    assert cpu.weights_bytes == _mapped_region(gguf, ("token_embd.", "blk."))
    assert gpu.kv_bytes == 0 and cpu.kv_bytes == 4 * 4096 * 512
    assert gpu.compute_bytes == 100 * MIB
    # CUDA_Host buffers are pinned host RAM.
    assert cpu.compute_bytes == round(12 * MIB) + round(0.01 * MIB)


def test_partial_offload_takes_the_last_blocks(model_factory: ModelFactory) -> None:
    gguf = read_gguf(model_factory.path(LLAMA_GQA))
    projection = _gpu_projection(gguf, 3, {"CUDA0": 20 * GIB})  # the output, blocks 3 and 2
    cpu, gpu = projection.device("CPU"), projection.device("CUDA0")
    assert gpu.weights_bytes == _tensor_bytes(gguf, ("blk.2.", "blk.3.", "output"))
    assert cpu.weights_bytes == _mapped_region(gguf, ("token_embd.", "blk.0.", "blk.1."))
    assert gpu.kv_bytes == 2 * 4096 * 512 and cpu.kv_bytes == 2 * 4096 * 512


def test_tied_embeddings_get_a_copy_on_the_gpu(model_factory: ModelFactory) -> None:
    gguf = read_gguf(model_factory.path(GEMMA2_SWA))
    projection = _gpu_projection(gguf, 999, {"CUDA0": 20 * GIB})
    gpu = projection.device("CUDA0")
    # Every block and the output layer, whose matrix is a second copy of the embeddings.
    assert gpu.weights_bytes == _tensor_bytes(gguf, ("blk.", "output_norm.", "token_embd."))
    assert projection.device("CPU").weights_bytes == _mapped_region(gguf, ("token_embd.",))


def test_layers_split_across_gpus_by_free_memory(model_factory: ModelFactory) -> None:
    gguf = read_gguf(model_factory.path(LLAMA_GQA))
    projection = _gpu_projection(gguf, 999, {"CUDA0": 12 * GIB, "CUDA1": 4 * GIB})
    # Five layers at 0, 0.2, 0.4, 0.6, 0.8 against splits 0.75 and 1.0.
    assert projection.device("CUDA0").weights_bytes == _tensor_bytes(gguf, ("blk.",))
    assert projection.device("CUDA1").weights_bytes == _tensor_bytes(gguf, ("output",))
    assert projection.device("CUDA0").kv_bytes == 4 * 4096 * 512
    assert projection.device("CUDA1").kv_bytes == 0


def test_a_device_fits_with_its_margin() -> None:
    # Up to 8 GiB free, the margin is 512 MiB.
    assert DeviceUse("CUDA0", "gpu", 7 * GIB + 512 * MIB, 0, 0, 8 * GIB).fits
    assert not DeviceUse("CUDA0", "gpu", 7 * GIB + 512 * MIB + 1, 0, 0, 8 * GIB).fits
    # Above, 5% of the free memory: 4 GiB of 80 GiB.
    assert DeviceUse("CUDA0", "gpu", 76 * GIB, 0, 0, 80 * GIB).fits
    assert not DeviceUse("CUDA0", "gpu", 76 * GIB + 1, 0, 0, 80 * GIB).fits


def test_repack_rules_follow_the_cpu(model_factory: ModelFactory) -> None:
    gguf = read_gguf(model_factory.path(SPECS["llama-q4_0"]))
    matrix = next(t for t in gguf.tensors if t.name == "blk.0.attn_q.weight")
    embeddings = next(t for t in gguf.tensors if t.name == "token_embd.weight")
    assert HostWeights(True, frozenset({"AVX2", "REPACK"})).repacks(matrix)
    assert HostWeights(True, frozenset({"NEON", "DOTPROD", "REPACK"})).repacks(matrix)
    assert not HostWeights(True, frozenset({"AVX", "REPACK"})).repacks(matrix)
    assert not HostWeights(True, frozenset({"AVX2"})).repacks(matrix)  # built without repack
    # The input layer's lookup is not a matrix product.
    assert not HostWeights(True, frozenset({"AVX2", "REPACK"})).repacks(embeddings)
    odd_rows = replace(matrix, shape=(matrix.shape[0], 12))
    assert not HostWeights(True, frozenset({"AVX2", "REPACK"})).repacks(odd_rows)
