"""`kvchat models`: search Hugging Face, list a repository's GGUF files with fits answers, download.

    kvchat models search QUERY [--sort downloads|likes|recent] [--limit N] [--json]
    kvchat models files REPO [--ctx N] [--gpu-layers N] [--revision R] [--json]
    kvchat models download REPO FILE [--revision R]

HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are honoured (huggingface_hub reads
them). A fits answer comes from the dry run of llama.cpp on the file's
header alone, fetched before any download; a download lands in the Hugging
Face cache, checked against the hub's sha256.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NoReturn

from pydantic import ValidationError
from tqdm import tqdm

from kvchat.app.cli.command_line import explain
from kvchat.app.cli.estimate import EXIT_BAD_INPUT, EXIT_FAILED, script_json
from kvchat.app.core.formatting import format_bytes
from kvchat.app.core.paths import resolve_data_dir
from kvchat.app.core.settings import EngineSettings
from kvchat.app.hub.catalog import Hub, HubError, ModelFile, RefusedError, RepoSummary
from kvchat.app.hub.download import CancelledError, Download, Journal, Progress
from kvchat.app.hub.fits import fits_answer
from kvchat.app.hub.header import estimate_remote
from kvchat.engine.load_params import DEFAULT_CONTEXT
from kvchat.ui.numbers import format_count, format_parameters


def _fail(message: str, code: int) -> int:
    print(f"kvchat: {message}", file=sys.stderr)
    return code


def _exit_code(error: HubError) -> int:
    """Bad input (an unknown repository or file, not a model) is 2; a failure on the way is 1."""
    return EXIT_BAD_INPUT if isinstance(error, RefusedError) else EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    """`kvchat models ACTION`, with the arguments main.build_parser parsed."""
    hub = Hub()
    try:
        if args.models_command == "search":
            return _search(hub, args)
        if args.models_command == "files":
            return _files(hub, args)
        return _download(hub, args)
    except HubError as exc:
        return _fail(str(exc), _exit_code(exc))
    except OSError as exc:  # this machine's side: a temporary folder, the cache
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", EXIT_FAILED)


def _date(value: datetime | None) -> str:
    return value.date().isoformat() if value is not None else ""


def _search(hub: Hub, args: argparse.Namespace) -> int:
    if args.limit < 1:
        return _fail(f"--limit {args.limit}: it must be 1 or more", EXIT_BAD_INPUT)
    found = hub.search(args.query, args.sort, args.limit)
    if args.json:
        print(json.dumps({"results": [_summary_json(r) for r in found]}))
        return 0
    if not found:
        print(f"No GGUF models on {hub.host} match {args.query!r}.")
        return 0
    rows = [("repository", "downloads", "likes", "updated", "license", "parameters")]
    for result in found:
        gated = " (gated)" if result.gated else ""
        rows.append(
            (
                result.repo + gated,
                format_count(result.downloads),
                format_count(result.likes),
                _date(result.last_modified),
                result.license or "",
                format_parameters(result.parameters),
            )
        )
    _print_table(rows)
    return 0


def _summary_json(result: RepoSummary) -> dict[str, object]:
    return {
        "repo": result.repo,
        "downloads": result.downloads,
        "likes": result.likes,
        "last_modified": result.last_modified.isoformat() if result.last_modified else None,
        "license": result.license,
        "parameters": result.parameters,
        "gated": result.gated,
    }


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _engine_settings(args: argparse.Namespace) -> EngineSettings | str:
    chosen = {"n_ctx": args.ctx, "n_gpu_layers": args.gpu_layers}
    try:
        return EngineSettings(**{k: v for k, v in chosen.items() if v is not None})
    except ValidationError as exc:
        return explain(exc)


def _files(hub: Hub, args: argparse.Namespace) -> int:
    settings = _engine_settings(args)
    if isinstance(settings, str):
        return _fail(settings, EXIT_BAD_INPUT)
    models = hub.files(args.repo, args.revision)
    if not models:
        return _fail(f"{args.repo} has no GGUF files", EXIT_BAD_INPUT)
    entries: list[dict[str, object]] = []
    if not args.json:
        context = (
            f"{settings.n_ctx:,} tokens"
            if settings.n_ctx
            else f"the default context ({DEFAULT_CONTEXT:,} tokens, or the model's trained "
            "context where that is less)"
        )
        print(f"{args.repo} at {models[0].revision[:12]}, fits answers at {context}:")
    for model in models:
        entry = _file_entry(hub, model, settings)
        entries.append(entry)
        if not args.json:
            answer = entry.get("fits") or entry.get("error") or ""
            print(
                f"  {model.quantization:<8} {format_bytes(model.size):>10}  {model.label}: {answer}"
            )
    if args.json:
        print(json.dumps({"repo": args.repo, "revision": models[0].revision, "files": entries}))
    return 0


def _file_entry(hub: Hub, model: ModelFile, settings: EngineSettings) -> dict[str, object]:
    """One file's line of `models files --json`: what it is, and its estimate or why none."""
    entry: dict[str, object] = {
        "file": model.path,
        "parts": [part.path for part in model.parts],
        "size_bytes": model.size,
        "quantization": model.quantization,
        "projector": model.is_projector,
    }
    if model.is_projector:
        entry["error"] = "a vision projector: it goes with a chat model, and is not one"
    elif model.problem:
        entry["error"] = model.problem
    else:
        try:
            remote = estimate_remote(hub, model, settings)
        except HubError as exc:
            entry["error"] = str(exc)
        else:
            entry["fits"] = fits_answer(remote.estimate)
            entry["header_bytes_read"] = remote.bytes_read
            entry["estimate"] = script_json(remote.estimate)
    return entry


def _find(models: list[ModelFile], name: str) -> ModelFile | None:
    for model in models:
        if name == model.path or name in (part.path for part in model.parts):
            return model
    return None


def _download(hub: Hub, args: argparse.Namespace) -> int:
    models = hub.files(args.repo, args.revision)
    model = _find(models, args.file)
    if model is None:
        return _fail(f"{args.repo} has no GGUF file {args.file!r}", EXIT_BAD_INPUT)
    journal = Journal(resolve_data_dir(args.data_dir) / "downloads")
    journal.clean_interrupted()
    download = Download(hub, model, journal=journal)
    with tqdm(
        total=model.size, unit="B", unit_scale=True, unit_divisor=1024, desc=model.label
    ) as bar:
        try:
            path = download.run(_progress_to(bar))
        except KeyboardInterrupt:
            download.cancel()
            return _fail(f"the download of {model.label} was cancelled", EXIT_FAILED)
        except CancelledError as exc:
            return _fail(str(exc), EXIT_FAILED)
    print(path)
    return 0


def _progress_to(bar: tqdm[NoReturn]) -> Callable[[Progress], None]:
    def show(progress: Progress) -> None:
        bar.update(progress.done_bytes - bar.n)
        part = f"part {progress.part} of {progress.parts}" if progress.parts > 1 else ""
        checking = "checking the sha256" if progress.phase == "checking" else ""
        bar.set_postfix_str(", ".join(p for p in (part, checking) if p), refresh=False)

    return show
