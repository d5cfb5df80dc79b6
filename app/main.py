"""kvchat's entry point: the window, `kvchat chat` for scripts, `kvchat estimate` to plan."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import annotated_types
from pydantic import ValidationError

from kvchat.app.paths import DataDirError, resolve_data_dir
from kvchat.app.settings import EngineSettings, Settings
from kvchat.app.settings_file import read_settings, settings_path
from kvchat.engine.children import protect_this_process


class CommandLine(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong, and where help is.

    (argparse prints the whole usage first, which buries the one line that matters.)
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PATH", help="a GGUF model file (default: bundled)")
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep all of kvchat's state here (default: $KVCHAT_DATA_DIR, else the "
        "platform's user data folder)",
    )
    parser.add_argument("--ctx", type=int, metavar="N", help="context size in tokens")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads")
    parser.add_argument("--gpu-layers", type=int, metavar="N", help="layers to offload")


def _settings(args: argparse.Namespace, **extra: object) -> tuple[Settings, str]:
    """settings.json from the data dir, with this run's command-line values on top.

    Returns the settings and what was wrong with the file, if anything.

    Raises:
        ValidationError: a command-line value is out of range.
    """
    loaded = read_settings(settings_path(resolve_data_dir(args.data_dir)))
    values = {"n_ctx": args.ctx, "n_threads": args.threads, "n_gpu_layers": args.gpu_layers}
    values.update(extra)
    chosen = {k: v for k, v in values.items() if v is not None}
    engine = EngineSettings.model_validate({**loaded.settings.engine.model_dump(), **chosen})
    return loaded.settings.model_copy(update={"engine": engine}), loaded.notice


OPTIONS = {"n_ctx": "--ctx", "n_threads": "--threads", "n_gpu_layers": "--gpu-layers"}


def _number(value: object) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range(field: str) -> str:
    """The bounds of a setting in words: "from 512 to 1,048,576"."""
    info = EngineSettings.model_fields.get(field)
    low = high = ""
    for bound in info.metadata if info is not None else ():
        if isinstance(bound, annotated_types.Ge):
            low = f"from {_number(bound.ge)}"
        elif isinstance(bound, annotated_types.Gt):
            low = f"above {_number(bound.gt)}"
        elif isinstance(bound, annotated_types.Le):
            high = f"to {_number(bound.le)}"
        elif isinstance(bound, annotated_types.Lt):
            below = bound.lt
            high = f"to {below - 1:,}" if isinstance(below, int) else f"below {_number(below)}"
    if low.startswith("above") and high:
        high = "and up " + high
    return " ".join(part for part in (low, high) if part)


def _explain(error: ValidationError) -> str:
    """One line for a person: each option, the value given, and what it may be."""
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else "value"
        option = OPTIONS.get(field, "--" + field.replace("_", "-"))
        value: Any = problem.get("input")
        bounds = _range(field)
        if isinstance(value, float) and math.isnan(value):
            why = "is not a number"
        elif bounds and problem["type"] in (
            "greater_than",
            "greater_than_equal",
            "less_than",
            "less_than_equal",
            "finite_number",
        ):
            why = "is out of range"
        else:
            why = f"is not allowed ({problem['msg'][:1].lower()}{problem['msg'][1:]})"
        shown = f" {value}" if isinstance(value, int | float | str) else ""
        lines.append(f"{option}{shown} {why}" + (f": it must be {bounds}" if bounds else ""))
    return "; ".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    protect_this_process()
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except DataDirError as exc:
        print(f"kvchat: {exc}", file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
    if argv[:1] == ["estimate"]:
        from kvchat.app.cli_estimate import main as run_estimate

        return run_estimate(argv[1:])
    if argv[:1] == ["bench"]:
        from kvchat.app.bench import main as run_bench

        return run_bench(argv[1:])
    if argv[:1] == ["chat"]:
        parser = CommandLine(
            prog="kvchat chat",
            description="Stream one reply to stdout, with no window.",
        )
        _add_common_options(parser)
        parser.add_argument("question", help="the message to send")
        parser.add_argument("--max-tokens", type=int, metavar="N")
        parser.add_argument("--temperature", type=float, metavar="T")
        parser.add_argument("--seed", type=int, metavar="N")
        parser.add_argument("--stats", action="store_true", help="print the turn's figures")
        args = parser.parse_args(argv[1:])
        try:
            settings, notice = _settings(
                args, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
            )
        except ValidationError as exc:
            print(f"kvchat: {_explain(exc)}", file=sys.stderr)
            return 2
        if notice:
            print(f"kvchat: {notice}", file=sys.stderr)
        from kvchat.app.cli_chat import run_chat

        return run_chat(
            args.question,
            args.model or settings.model_path,
            settings.engine,
            resolve_data_dir(args.data_dir),
            args.stats,
        )

    parser = CommandLine(
        prog="kvchat",
        description="Chat with a local language model and see where the memory goes.",
        epilog="`kvchat chat QUESTION` streams one reply to stdout instead; "
        "`kvchat estimate MODEL` projects a load's memory per device.",
    )
    _add_common_options(parser)
    args = parser.parse_args(argv)
    try:
        settings, notice = _settings(args)
    except ValidationError as exc:
        print(f"kvchat: {_explain(exc)}", file=sys.stderr)
        return 2
    from kvchat.app.gui import run_gui

    return run_gui(args.model, settings, resolve_data_dir(args.data_dir), notice)


if __name__ == "__main__":
    sys.exit(main())
