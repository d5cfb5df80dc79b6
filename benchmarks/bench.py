"""`kvchat bench` as a script: kvchat's speed against llama.cpp itself, with a chart.

    .venv/bin/python benchmarks/bench.py [--model PATH] [--runs 5] [--tokens 200]
        [--json FILE] [--chart FILE] [--quick]

app/bench/measure.py says what it measures and how.
"""

import sys

# Everything is imported under the guard: the engine host is started with
# multiprocessing's spawn, which runs this module's top level again in the
# child, and the host should not carry Qt.
if __name__ == "__main__":
    from kvchat.app.cli.main import main

    sys.exit(main(["bench", *sys.argv[1:]]))
