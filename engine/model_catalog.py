"""Finding GGUF models where people keep them, and describing each from its header.

Searched: the folders the person configured, the Hugging Face hub cache, LM
Studio's models folders, and the bundled default. Each file's header is read
in Python (engine.gguf_file), which takes milliseconds and never runs
llama.cpp, so a broken file is listed with its problem instead of crashing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gguf import LlamaFileType

from kvchat.engine.gguf_file import SPLIT_NAME, GgufInfo, ModelFileError, read_model
from kvchat.engine.models import bundled_model_path

MAX_DEPTH = 6
# Architectures of files that go beside a chat model rather than being one:
# llama.cpp's vision and audio projectors (mmproj files).
NOT_CHAT_MODELS = frozenset({"clip", "mtmd"})


@dataclass(frozen=True)
class ModelEntry:
    """A model file as the settings dialog lists it; `problem` is set for a bad file."""

    path: str
    name: str
    source: str
    size_bytes: int
    architecture: str = ""
    parameter_count: int = 0
    quantization: str = ""
    context_length: int | None = None
    # The blocks and the output layer: what llama.cpp can put on a GPU.
    offloadable_layers: int = 0
    problem: str = ""


def usual_folders(home: Path | None = None) -> list[tuple[str, Path]]:
    """Where model files usually are on this machine, labelled for the list."""
    home = home or Path.home()
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    hf_home = os.environ.get("HF_HOME")
    hub_path = Path(hub) if hub else (Path(hf_home) / "hub" if hf_home else None)
    if hub_path is None and os.environ.get("XDG_CACHE_HOME"):
        # huggingface_hub puts its cache under XDG_CACHE_HOME when that is set.
        hub_path = Path(os.environ["XDG_CACHE_HOME"]) / "huggingface" / "hub"
    return [
        ("Hugging Face cache", hub_path or home / ".cache" / "huggingface" / "hub"),
        ("LM Studio", home / ".lmstudio" / "models"),
        ("LM Studio", home / ".cache" / "lm-studio" / "models"),
    ]


def _gguf_files(folder: Path) -> Iterator[Path]:
    base_depth = len(folder.parts)
    for root, dirs, files in os.walk(folder, followlinks=True):
        if len(Path(root).parts) - base_depth >= MAX_DEPTH:
            dirs.clear()
        for name in sorted(files):
            if name.lower().endswith(".gguf") and not _is_later_split(name):
                yield Path(root) / name


def _is_later_split(name: str) -> bool:
    """A split model (NAME-00002-of-00003.gguf) is listed by its first part only."""
    part = SPLIT_NAME.match(name)
    return part is not None and int(part["no"]) != 1


def describe(path: Path, source: str) -> ModelEntry:
    """One file's entry; a file that fails the header check says why."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return ModelEntry(str(path), path.stem, source, 0, problem=str(exc.strerror or exc))
    try:
        info = read_model(path)
    except ModelFileError as exc:
        return ModelEntry(str(path), path.stem, source, size, problem=str(exc))
    if info.architecture in NOT_CHAT_MODELS:
        return ModelEntry(
            str(path),
            info.name,
            source,
            info.file_size,
            info.architecture,
            problem="a vision projector (mmproj) for a chat model, not a chat model itself",
        )
    file_type = info.metadata.get("general.file_type")
    quantization = ""
    if isinstance(file_type, int):
        try:
            quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            quantization = f"type {file_type}"
    return ModelEntry(
        path=str(path),
        name=info.name,
        source=source,
        size_bytes=info.file_size,
        architecture=info.architecture,
        parameter_count=info.parameter_count,
        quantization=quantization,
        context_length=info.context_length,
        offloadable_layers=_block_count(info) + 1,
    )


def _block_count(info: GgufInfo) -> int:
    value = info.metadata.get(f"{info.architecture}.block_count")
    return value if isinstance(value, int) else 0


def find_models(
    extra_folders: Iterable[str | Path] = (), home: Path | None = None
) -> list[ModelEntry]:
    """Every GGUF model found, each file once (a file reached twice is listed once)."""
    entries: list[ModelEntry] = []
    seen: set[Path] = set()

    def add(path: Path, source: str) -> None:
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            entries.append(describe(path, source))

    bundled = bundled_model_path()
    if bundled is not None:
        add(bundled, "bundled")
    folders = [("your folder", Path(f).expanduser()) for f in extra_folders]
    for source, folder in folders + usual_folders(home):
        if folder.is_dir():
            for path in _gguf_files(folder):
                add(path, source)
    return entries
