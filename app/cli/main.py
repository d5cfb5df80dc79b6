"""kvchat's entry point: the window, `kvchat chat` for scripts, `kvchat estimate` to plan."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from kvchat.app.cli.command_line import CommandLine, explain
from kvchat.app.core.paths import DataDirError, resolve_data_dir
from kvchat.app.core.settings import EngineSettings, Settings
from kvchat.app.core.settings_file import read_settings, settings_path
from kvchat.engine.children import protect_this_process
from kvchat.engine.protocol import FlashAttention, KvType

# The options the window and its commands share, declared once. Given before
# the command (`kvchat --data-dir D chat "hi"`) or after it, they mean the same.
SHARED_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "model": (("--model",), {"metavar": "PATH", "help": "a GGUF model file (default: bundled)"}),
    "data_dir": (
        ("--data-dir",),
        {
            "metavar": "DIR",
            "help": "keep all of kvchat's state here (default: $KVCHAT_DATA_DIR, else the "
            "platform's user data folder)",
        },
    ),
    "ctx": (("--ctx",), {"type": int, "metavar": "N", "help": "context size in tokens"}),
    "threads": (("--threads",), {"type": int, "metavar": "N", "help": "CPU threads"}),
    "gpu_layers": (
        ("--gpu-layers",),
        {"type": int, "metavar": "N", "help": "layers to offload"},
    ),
}
# Which of them each command takes (the window takes all of them).
COMMAND_OPTIONS = {
    "chat": ("model", "data_dir", "ctx", "threads", "gpu_layers"),
    "estimate": ("model", "ctx", "gpu_layers"),
    "bench": ("model",),
    "serve": ("model", "data_dir", "ctx", "threads", "gpu_layers"),
    "models": ("data_dir", "ctx", "gpu_layers"),
}
DEFAULT_PORT = 8080


def _add_shared(parser: argparse.ArgumentParser, names: Sequence[str], after: bool) -> None:
    for name in names:
        flags, options = SHARED_OPTIONS[name]
        # After the command, an option not given must not undo one given before it.
        default: Any = argparse.SUPPRESS if after else None
        parser.add_argument(*flags, dest=name, default=default, **options)


def _add_remote(parser: argparse.ArgumentParser, after: bool) -> None:
    """A model on a server elsewhere (engine.remote): the window's and `kvchat chat`'s."""
    default: Any = argparse.SUPPRESS if after else None
    parser.add_argument(
        "--server",
        metavar="URL",
        default=default,
        help="chat with a model on this OpenAI-compatible server (llama-server, vLLM, "
        "Ollama, LM Studio, another kvchat); --model then names the server's model "
        "(default: the first it lists)",
    )
    parser.add_argument(
        "--api-key",
        dest="remote_api_key",
        metavar="KEY",
        default=default,
        help="the server's API key (default: $KVCHAT_SERVER_KEY)",
    )


def _remote_model(args: argparse.Namespace) -> tuple[str | None, str | None, str]:
    """With --server: the model's URL, the key, and what went wrong ("" when nothing)."""
    if not args.server:
        return None, None, ""
    from kvchat.engine.remote import choose_model
    from kvchat.engine.remote_servers import RemoteError, plain_http_key_warning

    key = args.remote_api_key or os.environ.get("KVCHAT_SERVER_KEY") or None
    warning = plain_http_key_warning(args.server, key)
    if warning:
        print(f"kvchat: {warning}", file=sys.stderr)
    try:
        return choose_model(args.server, args.model, key), key, ""
    except RemoteError as exc:
        return None, key, f"{args.server}: {exc}"


def build_parser() -> CommandLine:
    """kvchat's one command line: the window, and its subcommands."""
    parser = CommandLine(
        prog="kvchat",
        description="Chat with a local language model and see where the memory goes. "
        "With no command, the window opens.",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="show the versions of kvchat, llama.cpp, llama-cpp-python, Python and PySide6, "
        "and llama.cpp's backends, and exit",
    )
    _add_shared(parser, list(SHARED_OPTIONS), after=False)
    _add_remote(parser, after=False)
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=CommandLine, title="commands"
    )
    chat = commands.add_parser(
        "chat",
        help="stream one reply to stdout, with no window",
        description="Stream one reply to stdout, with no window.",
    )
    _add_shared(chat, COMMAND_OPTIONS["chat"], after=True)
    _add_remote(chat, after=True)
    chat.add_argument("question", help="the message to send")
    chat.add_argument("--max-tokens", type=int, metavar="N")
    chat.add_argument("--temperature", type=float, metavar="T")
    chat.add_argument("--seed", type=int, metavar="N")
    chat.add_argument("--stats", action="store_true", help="print the turn's figures")
    estimate = commands.add_parser(
        "estimate",
        help="what a load would take per device, and whether it fits",
        description="Project the memory a model takes per device before loading it: "
        "weights, KV cache and compute buffers against the free memory.",
    )
    _add_shared(estimate, COMMAND_OPTIONS["estimate"], after=True)
    estimate.add_argument(
        "model_file", nargs="?", metavar="MODEL", help="a GGUF file (default: bundled)"
    )
    estimate.add_argument(
        "--kv-type", choices=get_args(KvType), default="f16", help="K and V cache type"
    )
    estimate.add_argument(
        "--flash-attention",
        choices=get_args(FlashAttention),
        default="auto",
        help="quantized V types need it on (auto: llama.cpp decides)",
    )
    estimate.add_argument("--json", action="store_true", help="one JSON object for scripts")
    estimate.add_argument(
        "--fit", action="store_true", help="with --json: add the most layers and context that fit"
    )
    measure = commands.add_parser(
        "bench",
        help="kvchat's speed against llama.cpp itself, and what the window costs",
        description="Measure kvchat's speed against llama.cpp itself, and what the window costs.",
    )
    _add_shared(measure, COMMAND_OPTIONS["bench"], after=True)
    measure.add_argument("--runs", type=int, metavar="N", help="runs per figure (default 5)")
    measure.add_argument(
        "--tokens", type=int, metavar="N", help="tokens generated per decode run (default 200)"
    )
    measure.add_argument(
        "--json",
        type=Path,
        default=Path("kvchat-bench.json"),
        metavar="FILE",
        help="write the results here (default: kvchat-bench.json)",
    )
    measure.add_argument(
        "--chart",
        type=Path,
        metavar="FILE",
        help="draw the chart here (default: the JSON file's name with .png)",
    )
    measure.add_argument(
        "--quick", action="store_true", help="tiny sizes that check the benchmark runs"
    )
    measure.add_argument(
        "--llama-bench",
        type=Path,
        metavar="FILE",
        help="llama.cpp's llama-bench, for its decode figure beside kvchat's "
        "(default: build/llama.cpp/bin/llama-bench here, which `make llama-bench` builds)",
    )
    serve = commands.add_parser(
        "serve",
        help="an OpenAI-compatible API on the model, with no window",
        description="Serve the model over an OpenAI-compatible HTTP API (chat completions, "
        "completions, models, health) for editor plugins, scripts and other apps.",
    )
    _add_shared(serve, COMMAND_OPTIONS["serve"], after=True)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        metavar="N",
        help="port (default: 8080; 0: any free one)",
    )
    serve.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("KVCHAT_API_KEY", ""),
        help="clients must send it as a Bearer token (default: $KVCHAT_API_KEY); "
        "needed to listen beyond 127.0.0.1",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web page origin allowed to call the API from a browser (repeatable)",
    )
    serve.add_argument(
        "--log-messages", action="store_true", help="also log what each request said and got"
    )
    _add_models(commands)
    return parser


def _add_models(commands: argparse._SubParsersAction[CommandLine]) -> None:
    """`kvchat models` and its actions (app.cli_models runs them)."""
    models = commands.add_parser(
        "models",
        help="find GGUF models on Hugging Face, see whether they fit, download them",
        description="Search Hugging Face for GGUF models, list a repository's files with an "
        "exact fits answer made before downloading, and download into the Hugging Face cache. "
        "HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are honoured.",
    )
    _add_shared(models, COMMAND_OPTIONS["models"], after=True)
    actions = models.add_subparsers(
        dest="models_command", metavar="ACTION", parser_class=CommandLine, required=True
    )
    search = actions.add_parser("search", help="GGUF model repositories matching a query")
    search.add_argument("query", help="words to look for in repository names")
    search.add_argument("--sort", choices=("downloads", "likes", "recent"), default="downloads")
    search.add_argument("--limit", type=int, default=20, metavar="N")
    search.add_argument("--json", action="store_true", help="one JSON object for scripts")
    files = actions.add_parser("files", help="a repository's GGUF files, each with its fits answer")
    _add_shared(files, ("ctx", "gpu_layers"), after=True)
    files.add_argument("repo", help="owner/name")
    files.add_argument("--revision", metavar="R", help="a branch, tag or commit (default: main)")
    files.add_argument(
        "--json",
        action="store_true",
        help="one JSON object, with `kvchat estimate --json`'s fields",
    )
    download = actions.add_parser("download", help="download a GGUF file into the cache")
    _add_shared(download, ("data_dir",), after=True)
    download.add_argument("repo", help="owner/name")
    download.add_argument(
        "file", help="the file's path in the repository (a split model: any part)"
    )
    download.add_argument("--revision", metavar="R", help="a branch, tag or commit (default: main)")


class _VersionAction(argparse.Action):
    """`kvchat --version`: the About box's versions, then exit.

    llama.cpp's version and backends are asked of a short child process
    (engine.build_info): this process never loads llama.cpp. Asked only
    when the option is given, so `kvchat --help` and every command start
    without it.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **options: Any) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **options
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from kvchat.app.presenters.about import version_text
        from kvchat.engine.build_info import Error, probe_engine_build

        try:
            build = probe_engine_build()
            missing = ""
        except Error as exc:
            build, missing = None, f"unknown: {exc}"
        sys.stdout.write(version_text(build, missing))
        sys.stdout.flush()
        parser.exit()


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


def main(argv: Sequence[str] | None = None) -> int:
    protect_this_process()
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except DataDirError as exc:
        print(f"kvchat: {exc}", file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command
    if command is not None:
        taken = COMMAND_OPTIONS[command]
        for name in SHARED_OPTIONS:
            if name not in taken and getattr(args, name) is not None:
                flag = SHARED_OPTIONS[name][0][0]
                parser.error(f"{flag} does not apply to `kvchat {command}`")
    if command == "estimate":
        from kvchat.app.cli import estimate as cli_estimate

        return cli_estimate.run(args)
    if command == "bench":
        from kvchat.app.bench import measure as bench

        return bench.run(args)
    if command == "models":
        from kvchat.app.cli import models as cli_models

        return cli_models.run(args)
    extra: dict[str, object] = {}
    if command == "chat":
        extra = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}
    try:
        settings, notice = _settings(args, **extra)
    except ValidationError as exc:
        print(f"kvchat: {explain(exc)}", file=sys.stderr)
        return 2
    if command == "serve":
        if notice:
            print(f"kvchat: {notice}", file=sys.stderr)
        if not 0 <= args.port <= 65535:
            parser.error(f"--port {args.port} is not a port: it must be from 0 to 65535")
        from kvchat.app.cli.serve import run_serve

        return run_serve(
            args.model or settings.model_path,
            settings.engine,
            resolve_data_dir(args.data_dir),
            args.host,
            args.port,
            args.api_key,
            args.cors_origin,
            args.log_messages,
        )
    remote, key, failure = _remote_model(args)
    if failure:
        print(f"kvchat: {failure}", file=sys.stderr)
        return 2
    if command == "chat":
        if notice:
            print(f"kvchat: {notice}", file=sys.stderr)
        from kvchat.app.cli.chat import run_chat

        return run_chat(
            args.question,
            remote or args.model or settings.model_path,
            settings.engine,
            resolve_data_dir(args.data_dir),
            args.stats,
            api_key=key,
        )
    from kvchat.app.presenters.gui import run_gui

    return run_gui(
        remote or args.model, settings, resolve_data_dir(args.data_dir), notice, api_key=key
    )


if __name__ == "__main__":
    sys.exit(main())
