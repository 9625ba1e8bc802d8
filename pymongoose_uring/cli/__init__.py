"""The command line (python -m pymongoose_uring) as parts that each work alone:
config (argv -> Config), worker (one serving process), supervisor (forked
workers, SIGHUP, --max-requests), reloader (--reload's source watcher) and command (main)."""

from .command import main

__all__ = ["main"]
