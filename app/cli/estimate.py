"""`kvchat estimate MODEL`: what a load would take, per device, before loading it.

For people who plan before they open the window: a table of weights, KV
cache and compute buffers per device against the free memory, and how far
the settings could go (the most GPU layers at this context, the largest
context with every layer offloaded). With `--json`, one object for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from kvchat.app.cli.command_line import explain
from kvchat.app.core.formatting import format_bytes
from kvchat.app.core.settings import EngineSettings
from kvchat.engine.estimate import (
    CannotEstimateError,
    DryRunError,
    Estimate,
    estimate,
    kv_type_name,
)
from kvchat.engine.gguf_file import ModelFileError
from kvchat.engine.models import bundled_model_path, missing_model_message

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _fail(message: str, code: int) -> int:
    print(f"kvchat: {message}", file=sys.stderr)
    return code


def script_json(result: Estimate, with_fit: bool = False) -> dict[str, object]:
    """The object `--json` prints: the load's parameters, per-device figures, and the verdict.

    `load_params` are the parameters of the same load, as llama.cpp's
    command line names them (cache types "f16", "q8_0", ...; flash attention
    as llama.cpp resolved it).
    """
    projection = result.projection
    params = projection.load_params
    data: dict[str, object] = {
        "load_params": {
            "n_ctx": params.n_ctx,
            "n_batch": params.n_batch,
            "n_ubatch": params.n_ubatch,
            "n_gpu_layers": params.n_gpu_layers,
            "type_k": kv_type_name(params.type_k),
            "type_v": kv_type_name(params.type_v),
            "flash_attn": projection.flash_attn,
            "swa_full": params.swa_full,
            "offload_kqv": params.offload_kqv,
        },
        "kv_bytes_per_token": projection.kv_bytes_per_token,
        "devices": [
            {
                "name": device.name,
                "weights_bytes": device.weights_bytes,
                "kv_bytes": device.kv_bytes,
                "compute_bytes": device.compute_bytes,
                "total_bytes": device.total_bytes,
                "free_bytes": device.free_bytes,
            }
            for device in projection.devices
        ],
        "fits": projection.fits,
        "warnings": context_warnings(result),
    }
    if with_fit and result.fit is not None:
        data["fit"] = {
            "max_gpu_layers": result.fit.max_gpu_layers,
            "max_context": result.fit.max_context,
        }
    return data


def context_warnings(result: Estimate) -> list[str]:
    """What fits in memory but will not work well: a context past the trained one."""
    n_ctx = result.projection.n_ctx
    if result.n_ctx_train and n_ctx > result.n_ctx_train:
        return [
            f"the context ({n_ctx:,} tokens) is larger than the model was trained for "
            f"({result.n_ctx_train:,}): past that, replies lose the thread; the window caps "
            f"the context at {result.n_ctx_train:,}"
        ]
    return []


def format_table(result: Estimate) -> str:
    """The projection as people read it: one row per device, then the fit answers."""
    projection = result.projection
    params = projection.load_params
    fit = result.fit
    layers = f"{min(params.n_gpu_layers, result.n_layers)} of {result.n_layers}"
    kv_types = f"{kv_type_name(params.type_k)}/{kv_type_name(params.type_v)}"
    lines = [
        f"{Path(result.model_path).stem} · context {projection.n_ctx} · K/V {kv_types} · "
        f"flash attention {'on' if projection.flash_attn else 'off'} · "
        f"batch {params.n_batch} · {layers} layers on the GPU",
        "",
    ]
    header = ("device", "weights", "KV cache", "compute", "total", "free", "fits")
    rows = [header] + [
        (
            device.name,
            format_bytes(device.weights_bytes),
            format_bytes(device.kv_bytes),
            format_bytes(device.compute_bytes),
            format_bytes(device.total_bytes),
            format_bytes(device.free_bytes),
            "yes" if device.fits else "no",
        )
        for device in projection.devices
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.append(f"KV cache: {format_bytes(projection.kv_bytes_per_token)} per token")
    if fit is not None:
        if fit.max_gpu_layers is None:
            gpu_answer = "none (no GPU)"
        else:
            gpu_answer = f"{fit.max_gpu_layers} of {result.n_layers}"
        lines.append(f"Most GPU layers that fit at {projection.n_ctx} tokens: {gpu_answer}")
        if fit.max_context is None:
            context_answer = "none: not even 512 tokens fit"
        elif fit.max_context == result.n_ctx_train:
            context_answer = f"{fit.max_context} tokens (the trained context)"
        else:
            context_answer = f"{fit.max_context} tokens"
        lines.append(f"Largest context with every layer offloaded: {context_answer}")
    verdict = "fits" if projection.fits else "does NOT fit"
    lines.append(f"This load {verdict} (each device keeps 512 MiB or 5% of its free memory spare).")
    lines.extend(f"warning: {warning}" for warning in context_warnings(result))
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """`kvchat estimate`, with the arguments main.build_parser parsed."""
    chosen = {
        "n_ctx": args.ctx,
        "n_gpu_layers": args.gpu_layers,
        "type_k": args.kv_type,
        "type_v": args.kv_type,
        "flash_attention": args.flash_attention,
    }
    try:
        settings = EngineSettings(**{k: v for k, v in chosen.items() if v is not None})
    except ValidationError as exc:
        return _fail(explain(exc), EXIT_BAD_INPUT)
    model = args.model_file or args.model
    if model is None:
        bundled = bundled_model_path()
        if bundled is None:
            return _fail(missing_model_message(), EXIT_BAD_INPUT)
        model = str(bundled)
    config = settings.load_config(model)
    try:
        result = estimate(config, fit=not args.json or args.fit)
    except ModelFileError as exc:
        return _fail(f"could not estimate {Path(model).name}: {exc}", EXIT_BAD_INPUT)
    except CannotEstimateError as exc:
        return _fail(f"{Path(model).name}: {exc}", EXIT_BAD_INPUT)
    except DryRunError as exc:
        return _fail(str(exc), EXIT_FAILED)
    if args.json:
        print(json.dumps(script_json(result, with_fit=args.fit)))
        for warning in context_warnings(result):
            print(f"kvchat: warning: {warning}", file=sys.stderr)
        for note in result.notes:
            print(f"kvchat: note: {note}", file=sys.stderr)
    else:
        print(format_table(result))
    return 0
