import sys

from kvchat.app.cli.main import main

# Guarded: the engine host is started with multiprocessing's spawn, which
# imports this module again in the child under another name.
if __name__ == "__main__":
    sys.exit(main())
