"""The child process that downloads one file into the Hugging Face cache.

Run as `python -P -m kvchat.app.hub.fetch`, with the request as JSON on
stdin; the answer is one JSON line on stdout. A download runs in a child of
its own so that Cancel is immediate whichever way huggingface_hub fetches the
bytes (plain HTTP, or Xet storage in native code): the parent ends the
child, then removes what it left.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from types import FrameType


def _stop(_signum: int, _frame: FrameType | None) -> None:
    # Unwinds through huggingface_hub's own clean-up of its temporary file.
    raise SystemExit(1)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    request = json.loads(sys.stdin.read())
    from huggingface_hub import hf_hub_download

    from kvchat.app.hub.catalog import Hub, HubError

    hub = Hub(request["endpoint"], request.get("token"))
    try:
        with hub.errors(request["repo"], request["filename"]):
            path = hf_hub_download(
                request["repo"],
                request["filename"],
                revision=request["revision"],
                cache_dir=request["cache_dir"],
                endpoint=request["endpoint"],
                token=request.get("token"),
            )
        answer: dict[str, object] = {"path": os.fspath(path)}
    except HubError as exc:
        answer = {"error": str(exc)}
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
