"""Child Python processes that import nothing from the folder kvchat runs in.

`python -m module` and multiprocessing's `python -c ...` both put the current
folder first on the import path, so a stranger's `engine/`, `socket.py` or
`multiprocessing/` in that folder would run inside kvchat. Every child kvchat
starts is therefore run in safe-path mode (`-P`, and `PYTHONSAFEPATH=1` for the
interpreters multiprocessing starts), from a working folder of kvchat's own.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping

SAFE_PATH_ENV = "PYTHONSAFEPATH"


def python_command(module: str, *args: str) -> list[str]:
    """The command line that runs `module` of kvchat in a safe-path interpreter."""
    return [sys.executable, "-P", "-m", module, *args]


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with safe-path mode on, plus `extra`."""
    environment = dict(os.environ)
    environment[SAFE_PATH_ENV] = "1"
    if extra:
        environment.update(extra)
    return environment


def safe_working_folder() -> str:
    """A folder a child may run in: never one a stranger chose for us."""
    return tempfile.gettempdir()


def protect_this_process() -> None:
    """Keep this process's own children, and its later imports, off the current folder.

    Sets safe-path mode for every interpreter started from here on (the engine
    host and multiprocessing's resource tracker read it as they start), and
    takes the current folder off this process's import path when it was put
    there by `python -m` or `python -c`.
    """
    os.environ[SAFE_PATH_ENV] = "1"
    if sys.flags.safe_path:
        return
    try:
        here = os.getcwd()
    except OSError:
        here = ""
    sys.path[:] = [entry for entry in sys.path if entry not in ("", here)]
