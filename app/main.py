"""kvchat's entry point: the window, or `kvchat chat` for scripts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from app.paths import resolve_data_dir
from app.settings import EngineSettings


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


def _settings(args: argparse.Namespace, **extra: object) -> EngineSettings:
    values = {"n_ctx": args.ctx, "n_threads": args.threads, "n_gpu_layers": args.gpu_layers}
    values.update(extra)
    return EngineSettings(**{k: v for k, v in values.items() if v is not None})


def _explain(error: ValidationError) -> str:
    names = {"n_ctx": "--ctx", "n_threads": "--threads", "n_gpu_layers": "--gpu-layers"}
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else "value"
        lines.append(f"{names.get(field, '--' + field.replace('_', '-'))}: {problem['msg']}")
    return "; ".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chat"]:
        parser = argparse.ArgumentParser(
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
            settings = _settings(
                args, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
            )
        except ValidationError as exc:
            print(f"kvchat: {_explain(exc)}", file=sys.stderr)
            return 2
        from app.cli_chat import run_chat

        return run_chat(
            args.question, args.model, settings, resolve_data_dir(args.data_dir), args.stats
        )

    parser = argparse.ArgumentParser(
        prog="kvchat",
        description="Chat with a local language model and see where the memory goes.",
        epilog="`kvchat chat QUESTION` streams one reply to stdout instead.",
    )
    _add_common_options(parser)
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        print(f"kvchat: {_explain(exc)}", file=sys.stderr)
        return 2
    from app.gui import run_gui

    return run_gui(args.model, settings, resolve_data_dir(args.data_dir))


if __name__ == "__main__":
    sys.exit(main())
