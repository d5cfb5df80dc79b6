"""What a load will cost, per device, before the model is loaded.

The figures come from llama.cpp itself rather than from a formula that
drifts with each release: a short-lived child process (`kvchat.engine.llama.dry_run`)
loads the model with `no_alloc` and creates the context, exactly as
llama.cpp's own memory-fit code does. That takes a fraction of a second,
allocates nothing, and logs the KV caches and compute buffers the real load
would allocate, the device of every layer, and the buffers the weights would
go to (their sizes show as 0.00 MiB). This module turns those log lines,
the GGUF tensor table and the devices' free memory into a projection:
weights, KV cache and compute buffers per device, and whether they fit.

Weights are placed here by llama.cpp's rules (`llama-model.cpp`,
`load_tensors`): the input layer (token embeddings) stays on the CPU, each
repeating layer and the output layer go where the dry run's log says, a
model without an output matrix gets a second copy of its token embeddings
where the output layer is, and host-side weights are sized as llama.cpp
reports them: a memory-mapped file region from the first to the last
mapped tensor, plus the tensors the CPU backend repacks into its own
buffer for faster matrix products.

This module does not import `llama_cpp`; the GUI process may use it. Only
the child process does.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kvchat.engine.accounting import load_memory
from kvchat.engine.buffer_report import (
    MIB,
    BufferReport,
    KvCacheLayout,
    device_of_buffer,
    parse_buffer_report,
)
from kvchat.engine.children import child_environment, python_command, safe_working_folder
from kvchat.engine.gguf_file import GgufInfo, ModelFileError, TensorInfo, check_start
from kvchat.engine.load_params import ALL_LAYERS, KV_TYPE_NAMES, LoadParams
from kvchat.engine.protocol import DeviceSample, KvCache, LoadConfig

# A device "fits" when the load leaves this much of its free memory unused:
# the larger of 512 MiB and 5% of what is free. It covers what the estimate
# cannot see: the GPU runtime's own context in the engine process, other
# programs allocating meanwhile, and allocator fragmentation.
MARGIN_FLOOR_BYTES = 512 * MIB
MARGIN_SHARE = 0.05
# The smallest context kvchat offers, and llama.cpp's padding of n_ctx.
MIN_CONTEXT = 512
CONTEXT_STEP = 256
DRY_RUN_TIMEOUT_S = 120.0
# ggml's minimum buffer alignment (TENSOR_ALIGNMENT); GPU backends align to
# up to 256 bytes, a difference of a few KiB per model.
TENSOR_ALIGNMENT = 32

# Tensors of llama.cpp's input layer, which it always keeps on the CPU.
_INPUT_TENSORS = ("token_embd.", "pos_embd.", "token_types.", "per_layer_token_embd.")
# Tensors that every repeating layer uses; each device holding layers has a copy.
_SHARED_LAYER_TENSORS = ("rope_freqs.", "rope_factors_long.", "rope_factors_short.")
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")

_LAYER_DEVICE = re.compile(r"^load_tensors: layer\s+(\d+) assigned to device (\S+),")
_KV_LAYER_DEVICE = re.compile(r"^llama_kv_cache: layer\s+(\d+): dev = (\S+)")
_N_CTX = re.compile(r"^llama_context: n_ctx\s+= (\d+)")
_FLASH_ATTN_AUTO = re.compile(r"^\w+: Flash Attention (enabled|not supported)")
_MISSING_KEY = re.compile(r"key not found in model: (\S+)")


class Error(Exception):
    """Base class of this module's errors; messages are meant for a person."""


class CannotEstimateError(Error):
    """The file lacks what an estimate needs, or llama.cpp would refuse the load."""


class DryRunError(Error):
    """The dry-run process crashed, hung, or answered nonsense."""


@dataclass(frozen=True)
class DeviceUse:
    """One device's share of a load, and its free memory before the load."""

    name: str
    kind: str
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    free_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes

    @property
    def margin_bytes(self) -> int:
        return max(MARGIN_FLOOR_BYTES, int(self.free_bytes * MARGIN_SHARE))

    @property
    def fits(self) -> bool:
        return self.total_bytes + self.margin_bytes <= self.free_bytes


@dataclass(frozen=True)
class Projection:
    """The memory one set of load parameters takes, per device.

    `compute_bytes` counts the scheduler's compute buffers and the output
    (logits) buffer: both are working memory that grows with the batch and
    the vocabulary, not with the conversation.
    """

    load_params: LoadParams
    flash_attn: bool
    n_ctx: int
    kv_caches: tuple[KvCache, ...]
    devices: tuple[DeviceUse, ...]

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V bytes one token takes in every cache that holds it."""
        return sum(cache.bytes_per_cell for cache in self.kv_caches)

    @property
    def fits(self) -> bool:
        return all(device.fits for device in self.devices)

    def device(self, name: str) -> DeviceUse:
        return next(device for device in self.devices if device.name == name)


@dataclass(frozen=True)
class Fit:
    """The answers to "how far can I go": None where nothing fits or nothing applies.

    `max_gpu_layers` counts the output layer as llama.cpp does (a model with
    N blocks offloads at most N + 1 layers); it is None without a GPU.
    `max_context` is the largest context, in tokens, that fits on every
    device with every layer offloaded (on a machine without a GPU: in host
    RAM), up to the model's trained context.
    """

    max_gpu_layers: int | None
    max_context: int | None


@dataclass(frozen=True)
class Estimate:
    """A projection of the chosen settings, the fit answers, and what to know about them.

    `n_layers` counts what llama.cpp can offload: the blocks and the output layer.
    """

    model_path: str
    n_layers: int
    n_ctx_train: int
    projection: Projection
    fit: Fit | None
    notes: tuple[str, ...] = ()
    dry_run_seconds: float = 0.0
    dry_runs: int = 1

    def to_wire(self) -> dict[str, object]:
        """Plain JSON-able data, as the dry-run process sends it."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, object]) -> Estimate:
        projection = dict(data["projection"])  # type: ignore[call-overload]
        fit = data["fit"]
        return cls(
            model_path=str(data["model_path"]),
            n_layers=int(data["n_layers"]),  # type: ignore[call-overload]
            n_ctx_train=int(data["n_ctx_train"]),  # type: ignore[call-overload]
            projection=Projection(
                load_params=LoadParams(**projection["load_params"]),
                flash_attn=bool(projection["flash_attn"]),
                n_ctx=int(projection["n_ctx"]),
                kv_caches=tuple(KvCache(**cache) for cache in projection["kv_caches"]),
                devices=tuple(DeviceUse(**device) for device in projection["devices"]),
            ),
            fit=Fit(**fit) if isinstance(fit, dict) else None,
            notes=tuple(str(note) for note in data["notes"]),  # type: ignore[attr-defined]
            dry_run_seconds=float(data["dry_run_seconds"]),  # type: ignore[arg-type]
            dry_runs=int(data["dry_runs"]),  # type: ignore[call-overload]
        )


# Reading a dry run's log.


@dataclass(frozen=True)
class LoggedCache:
    """One KV cache from the log: its size and the device of each of its layers."""

    layout: KvCacheLayout
    layer_devices: tuple[str, ...]


@dataclass
class DryRunLog:
    """What one dry run (a model load and a context creation) logged."""

    layer_devices: dict[int, str] = field(default_factory=dict)
    kv_caches: list[LoggedCache] = field(default_factory=list)
    # Buffers allocated for real even in a dry run (recurrent state), by buffer name.
    state_buffers: dict[str, int] = field(default_factory=dict)
    compute_buffers: dict[str, int] = field(default_factory=dict)
    n_ctx: int | None = None
    flash_attn_auto: bool | None = None


def read_dry_run_log(lines: Iterable[str]) -> DryRunLog:
    """Collects the figures of one dry run from llama.cpp's log lines."""
    log = DryRunLog()
    kv_layer_devices: list[str] = []
    compute: dict[str, int] = {}
    output: dict[str, int] = {}
    for line in lines:
        text = line.strip()
        if match := _LAYER_DEVICE.match(text):
            log.layer_devices[int(match[1])] = match[2]
        elif match := _KV_LAYER_DEVICE.match(text):
            kv_layer_devices.append(match[2])
        elif match := _N_CTX.match(text):
            log.n_ctx = int(match[1])
        elif match := _FLASH_ATTN_AUTO.match(text):
            log.flash_attn_auto = match[1] == "enabled"
        else:
            # One line at a time, so that repeated buffer names (two KV caches
            # on one device) are kept apart rather than overwritten.
            report = parse_buffer_report([text])
            for layout in report.kv_caches:
                log.kv_caches.append(LoggedCache(layout, tuple(kv_layer_devices)))
                kv_layer_devices = []
            for name, size in report.by_buffer("kv").items():
                # With no_alloc, attention caches log 0.00 MiB; the recurrent
                # state of Mamba-style layers is allocated for real.
                if size:
                    log.state_buffers[name] = log.state_buffers.get(name, 0) + size
            compute.update(report.by_buffer("compute"))
            output.update(report.by_buffer("output"))
    for buffers in (compute, output):
        for name, size in buffers.items():
            log.compute_buffers[name] = log.compute_buffers.get(name, 0) + size
    return log


def missing_key(lines: Iterable[str]) -> str | None:
    """The metadata key llama.cpp complained of, if its load failed for one."""
    for line in lines:
        if match := _MISSING_KEY.search(line):
            return match[1]
    return None


# Where the weights go.


@dataclass(frozen=True)
class HostWeights:
    """How host RAM holds the weights that stay on the CPU.

    `mapped`: the file is memory-mapped (llama.cpp's default load mode,
    unless a device cannot map files); llama.cpp then reports the file
    region from the first to the last mapped tensor. `cpu_features`: the
    CPU backend's features (llama_print_system_info), which decide which
    quantized matrices it repacks into a buffer of its own.
    """

    mapped: bool
    cpu_features: frozenset[str] = frozenset()

    def repacks(self, tensor: TensorInfo) -> bool:
        """Whether the CPU backend repacks this matrix (ggml-cpu's repack.cpp).

        Only matrices used in matrix products (2-D, or 3-D expert stacks)
        qualify, and only when no GPU's host buffer comes first in the CPU
        buffer list: the caller passes no features then.
        """
        if "REPACK" not in self.cpu_features or len(tensor.shape) not in (2, 3):
            return False
        if tensor.name.startswith(_INPUT_TENSORS) or not tensor.name.endswith(".weight"):
            return False
        features = self.cpu_features
        avx2, avx512 = "AVX2" in features, "AVX512" in features
        neon = "NEON" in features
        i8mm = neon and "MATMUL_INT8" in features
        dotprod = neon and "DOTPROD" in features
        rows = tensor.shape[1]
        by_8, by_4 = rows % 8 == 0, rows % 4 == 0
        rules = {
            "Q4_0": (avx2 and by_8) or ((i8mm or dotprod) and by_4),
            "Q4_K": (avx2 or i8mm or dotprod) and by_8,
            "Q5_K": (i8mm or dotprod) and by_8,
            "Q6_K": (i8mm or dotprod) and by_8,
            "Q2_K": avx512 and by_8,
            "IQ4_NL": (avx2 and by_8) or (dotprod and by_4),
            "MXFP4": (avx2 and by_8) or (dotprod and by_4),
            "Q8_0": (i8mm or dotprod) and by_4,
        }
        return rules.get(tensor.type_name, False)


def _padded(n_bytes: int) -> int:
    return -(-n_bytes // TENSOR_ALIGNMENT) * TENSOR_ALIGNMENT


def _layer_of(tensor: TensorInfo, output_layer: int) -> int | None:
    """The llama.cpp layer a tensor belongs to: -1 input, None shared, else the index."""
    if tensor.name.startswith(_INPUT_TENSORS):
        return -1
    if tensor.name.startswith(_SHARED_LAYER_TENSORS):
        return None
    if tensor.name.startswith("token_embd_norm."):
        return 0  # llama.cpp normalises the embeddings in the first layer
    match = _LAYER_TENSOR.match(tensor.name)
    return int(match[1]) if match else output_layer


def weights_by_device(
    gguf: GgufInfo, layer_devices: dict[int, str], host: HostWeights
) -> dict[str, int]:
    """Weight bytes per device name, as llama.cpp's load would report them."""
    output_layer = max(layer_devices, default=0)
    names = {tensor.name for tensor in gguf.tensors}

    def device_of(layer: int) -> str:
        return "CPU" if layer < 0 else layer_devices.get(layer, "CPU")

    placed: list[tuple[TensorInfo, str]] = []
    layer_holders = {device_of(layer) for layer in layer_devices if layer != output_layer}
    for tensor in gguf.tensors:
        layer = _layer_of(tensor, output_layer)
        if layer is None:
            placed.extend((tensor, device) for device in sorted(layer_holders or {"CPU"}))
        else:
            placed.append((tensor, device_of(layer)))
    embeddings = next((t for t in gguf.tensors if t.name == "token_embd.weight"), None)
    if embeddings is not None and "output.weight" not in names:
        # A tied output: llama.cpp loads the embeddings a second time as the
        # output matrix, unless that copy would land in the very buffer that
        # already holds them (the CPU's plain buffer).
        device = device_of(output_layer)
        if device != "CPU" or host.repacks(replace(embeddings, name="output.weight")):
            placed.append((replace(embeddings, name="output.weight"), device))

    totals: dict[str, int] = {}
    mapped: list[TensorInfo] = []
    for tensor, device in placed:
        if device == "CPU" and host.mapped and not host.repacks(tensor):
            mapped.append(tensor)
        else:
            totals[device] = totals.get(device, 0) + _padded(tensor.n_bytes)
    # llama.cpp maps each file of a split model apart, and reports each
    # file's region from its first to its last mapped tensor.
    for part in sorted({t.part for t in mapped}):
        in_part = [t for t in mapped if t.part == part]
        region = max(t.offset + t.n_bytes for t in in_part) - min(t.offset for t in in_part)
        totals["CPU"] = totals.get("CPU", 0) + region
    return totals


def exact_caches(gguf: GgufInfo, log: DryRunLog) -> list[KvCache]:
    """The logged caches with their exact bytes per cell.

    The log rounds sizes to 0.01 MiB; the engine's accounting of a real load
    recomputes the bytes per cell from the attention shape, and the
    estimate takes the same figures.
    """
    report = BufferReport(kv_caches=[cache.layout for cache in log.kv_caches])
    return list(load_memory(report, gguf, ["CPU"]).kv_caches)


def kv_by_device(gguf: GgufInfo, log: DryRunLog, device_names: Sequence[str]) -> dict[str, int]:
    """KV cache and recurrent-state bytes per device.

    Each cache's bytes are shared among its layers equally: llama.cpp sizes
    every layer of one cache alike unless the model varies its K/V heads
    per layer, which only matters when such a model is split across devices.
    """
    totals: dict[str, float] = {}
    for logged, cache in zip(log.kv_caches, exact_caches(gguf, log), strict=True):
        devices = logged.layer_devices or ("CPU",)
        for device in devices:
            totals[device] = totals.get(device, 0.0) + cache.bytes / len(devices)
    for buffer, size in log.state_buffers.items():
        device = device_of_buffer(buffer, device_names)
        totals[device] = totals.get(device, 0.0) + size
    return {device: round(size) for device, size in totals.items()}


def project(
    gguf: GgufInfo,
    params: LoadParams,
    log: DryRunLog,
    devices: Sequence[DeviceSample],
    host: HostWeights,
) -> Projection:
    """The memory per device of a load with `params`, from its dry run's log."""
    names = [device.name for device in devices]
    weights = weights_by_device(gguf, log.layer_devices, host)
    kv = kv_by_device(gguf, log, names)
    compute: dict[str, int] = {}
    for buffer, size in log.compute_buffers.items():
        device = device_of_buffer(buffer, names)
        compute[device] = compute.get(device, 0) + size
    uses = tuple(
        DeviceUse(
            name=device.name,
            kind=device.kind,
            weights_bytes=weights.get(device.name, 0),
            kv_bytes=kv.get(device.name, 0),
            compute_bytes=compute.get(device.name, 0),
            free_bytes=device.free_bytes,
        )
        for device in devices
    )
    if log.flash_attn_auto is not None:
        flash_attn = log.flash_attn_auto
    else:
        flash_attn = params.flash_attention == "on"
    return Projection(
        load_params=params,
        flash_attn=flash_attn,
        n_ctx=log.n_ctx or params.n_ctx,
        kv_caches=tuple(exact_caches(gguf, log)),
        devices=uses,
    )


# The fit answers.


def largest(low: int, high: int, fits: Callable[[int], bool]) -> int | None:
    """The largest value in [low, high] that fits, for a `fits` that only turns False."""
    if high < low or not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def find_fit(
    params: LoadParams,
    n_layers: int,
    n_ctx_train: int,
    gpu_offload: bool,
    measure: Callable[[LoadParams], Projection],
) -> Fit:
    """The most GPU layers at the chosen context, the largest context with all layers.

    Each candidate is measured by a dry run, so the answers hold for
    sliding-window caches, quantized K/V and compute buffers alike.
    """
    max_layers = None
    if gpu_offload:

        def gpus_fit(layers: int) -> bool:
            projection = measure(replace(params, n_gpu_layers=layers))
            return all(d.fits for d in projection.devices if d.kind != "cpu")

        max_layers = largest(0, n_layers + 1, gpus_fit)

    everything = replace(params, n_gpu_layers=ALL_LAYERS if gpu_offload else 0)
    steps = math.ceil(n_ctx_train / CONTEXT_STEP)

    def context_of(step: int) -> int:
        return min(step * CONTEXT_STEP, n_ctx_train)

    def context_fits(step: int) -> bool:
        return measure(replace(everything, n_ctx=context_of(step))).fits

    best = largest(MIN_CONTEXT // CONTEXT_STEP, steps, context_fits)
    return Fit(
        max_gpu_layers=max_layers,
        max_context=None if best is None else context_of(best),
    )


# The parent's side: checking the file and running the dry run.


def _count(gguf: GgufInfo, suffix: str) -> int:
    """A whole-number metadata field of the model's architecture, or why there is none."""
    arch = gguf.metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise CannotEstimateError("estimate unavailable: missing general.architecture")
    value = gguf.metadata.get(f"{arch}.{suffix}")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CannotEstimateError(f"estimate unavailable: missing {arch}.{suffix}")
    return value


def check_metadata(gguf: GgufInfo) -> None:
    """Raises CannotEstimateError naming the first needed field the file lacks.

    llama.cpp needs more (each architecture its own), and the dry run names
    whatever else is missing in the same words.
    """
    for suffix in ("block_count", "context_length", "embedding_length"):
        _count(gguf, suffix)


def n_ctx_train(gguf: GgufInfo) -> int:
    return _count(gguf, "context_length")


def n_layers(gguf: GgufInfo) -> int:
    return _count(gguf, "block_count")


def estimate(
    config: LoadConfig, *, fit: bool = True, timeout_s: float = DRY_RUN_TIMEOUT_S
) -> Estimate:
    """Projects the memory a load of `config` takes, through a dry run in a child process.

    Args:
        config: the model and the settings, as the engine would load them.
        fit: also search for the most GPU layers and the largest context
            that fit (a few more dry runs in the same child).
        timeout_s: how long the child may take before it is killed.

    Raises:
        ModelFileError: the file is missing or not a usable GGUF file.
        CannotEstimateError: the metadata lacks a needed key, or llama.cpp
            would refuse the load.
        DryRunError: the child process crashed or timed out.
    """
    # The child reads and checks the whole header before llama.cpp sees it;
    # this process only looks at the file's start, so that a missing file or
    # one of another kind is told at once. (The whole header, a vocabulary of
    # tens of thousands of strings, is tens of milliseconds of Python that would
    # compete with the window's GUI thread for the GIL.)
    check_start(config.model_path)
    request = {"config": asdict(config), "fit": fit}
    with tempfile.TemporaryDirectory(prefix="kvchat-estimate-") as folder:
        result_path = Path(folder) / "result.json"
        # The answer goes to a file: llama.cpp's native code may print to stdout.
        command = python_command("kvchat.engine.llama.dry_run", str(result_path))
        try:
            finished = subprocess.run(
                command,
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=child_environment(),
                cwd=safe_working_folder(),
            )
        except subprocess.TimeoutExpired:
            raise DryRunError(
                f"the dry run of llama.cpp took longer than {timeout_s:g} s and was stopped"
            ) from None
        if finished.returncode != 0 or not result_path.exists():
            raise DryRunError(_describe_failure(finished.returncode, finished.stderr))
        text = result_path.read_text(encoding="utf-8")
    try:
        answer = json.loads(text)
        if "error" not in answer:
            return Estimate.from_wire(answer["estimate"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DryRunError(f"the dry run answered in a form kvchat cannot read ({exc})") from None
    if answer.get("model_file"):
        raise ModelFileError(str(answer["error"]))
    raise CannotEstimateError(str(answer["error"]))


def _describe_failure(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            how = f"crashed with {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"crashed with signal {-returncode}"
    else:
        how = f"exited with code {returncode}"
    tail = " ".join(stderr.strip().splitlines()[-2:])
    return f"the dry run of llama.cpp {how}" + (f": {tail}" if tail else "")


def kv_type_name(code: int) -> str:
    """A K/V type code as people write it ("f16", "q8_0")."""
    return KV_TYPE_NAMES.get(code, str(code))
