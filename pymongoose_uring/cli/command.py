"""The command line's entry point: parse, set up logging, then serve in this
process or under the supervisor."""

from __future__ import annotations

import json
import logging
import sys
from typing import Optional, Sequence

from .config import Config, parse
from .supervisor import Supervisor
from .worker import EXIT_BOOT_FAILED, serve


def setup_logging(config: Config) -> None:
    """The pymongoose_uring logger at --log-level on stderr; the access logger
    on stderr with --access-log, else quiet."""
    root = logging.getLogger("pymongoose_uring")
    root.setLevel(config.log_level.upper())
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(
            logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(h)
        root.propagate = False
    access = logging.getLogger("pymongoose_uring.access")
    if config.access_log:
        access.setLevel(logging.INFO)
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(h)
        access.propagate = False
    else:
        access.setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """python -m pymongoose_uring ARGS; returns the exit status."""
    from .. import _native, probe

    defaults = _native._pmu.config_defaults() if _native._pmu is not None else {}
    config = parse(argv, defaults)
    if config.probe:
        print(json.dumps(probe(), indent=2))
        return 0 if probe()["available"] else 1
    setup_logging(config)
    if config.supervised:
        return Supervisor(config, serve).run()
    code = serve(config)
    return 1 if code == EXIT_BOOT_FAILED else code
