"""python -m pymongoose_uring: the command line (pymongoose_uring.cli)."""

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
