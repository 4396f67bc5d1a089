"""``python3 -m engine``: run an engine worker (protocol in engine/worker.py and engine/README.md)."""

import sys

from engine.worker import main

if __name__ == "__main__":
    sys.exit(main())
