"""The command line's entry point: parse, set up logging, then serve in this
process or under the supervisor."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Dict, Optional, Sequence, TextIO

from .config import Config, parse
from .supervisor import Supervisor
from .worker import EXIT_BOOT_FAILED, serve


def load_env_file(path: str) -> None:
    """--env-file: set the variables of a .env file (those already set keep
    their values, as python-dotenv's load_dotenv does): python-dotenv when
    installed (uvicorn's way), else KEY=VALUE lines read by read_env_file()."""
    try:
        from dotenv import load_dotenv
    except ImportError:
        for key, value in read_env_file(path).items():
            os.environ.setdefault(key, value)
    else:
        load_dotenv(path)


def read_env_file(path: str) -> Dict[str, str]:
    """The KEY=VALUE lines of a .env file, without python-dotenv: blank lines
    and '#' comments skipped, an optional 'export ' prefix, a value in single
    quotes taken as is, in double quotes with \\n and \\" read as escapes,
    unquoted cut at ' #'."""
    env: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[7:].lstrip()
            key, sep, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key:
                continue
            if len(value) >= 2 and value[0] == value[-1] == "'":
                value = value[1:-1]
            elif len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace("\\n", "\n").replace('\\"', '"')
            else:
                value = value.split(" #", 1)[0].rstrip()
            env[key] = value
    return env


def apply_log_config(path: str) -> None:
    """--log-config, as uvicorn reads it: JSON or YAML through dictConfig,
    anything else through fileConfig (disable_existing_loggers False for it, as
    uvicorn; a dictConfig says for itself)."""
    import logging.config

    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            logging.config.dictConfig(json.load(f))
    elif path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise SystemExit(
                f"pymongoose_uring: --log-config {path}: reading YAML needs PyYAML"
            ) from None
        with open(path, encoding="utf-8") as f:
            logging.config.dictConfig(yaml.safe_load(f))
    else:
        logging.config.fileConfig(path, disable_existing_loggers=False)


def _log_handler(path: Optional[str], dash: TextIO) -> logging.Handler:
    """A handler writing to path (appended), to dash for '-' (gunicorn's:
    stdout for the access log, stderr for the error log), stderr when None."""
    if path is None:
        return logging.StreamHandler(sys.stderr)
    if path == "-":
        return logging.StreamHandler(dash)
    return logging.FileHandler(path)


def setup_logging(config: Config) -> None:
    """The pymongoose_uring logger at --log-level on stderr; the access logger
    on stderr with --access-log, else quiet. With --log-config the file's
    handlers and levels are used instead (--log-level, when given, still
    sets the level), and --access-log only makes sure the access logger
    lets INFO through."""
    from .._adapter import set_access_log_format

    set_access_log_format(config.access_log_format)
    root = logging.getLogger("pymongoose_uring")
    access = logging.getLogger("pymongoose_uring.access")
    if config.log_config is not None:
        apply_log_config(config.log_config)
        if config.log_level is not None:
            root.setLevel(config.log_level.upper())
        if config.access_log:
            if access.level == logging.NOTSET or access.level > logging.INFO:
                access.setLevel(logging.INFO)
        else:
            access.setLevel(logging.WARNING)
        return
    root.setLevel((config.log_level or "warning").upper())
    if not root.handlers:
        h = _log_handler(config.error_logfile, sys.stderr)
        h.setFormatter(
            logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(h)
        root.propagate = False
    if config.access_log:
        access.setLevel(logging.INFO)
        h = _log_handler(config.access_logfile, sys.stdout)
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
    if config.env_file is not None:
        load_env_file(config.env_file)
    for key, value in config.env:
        os.environ[key] = value
    setup_logging(config)
    if config.supervised:
        return Supervisor(config, serve).run()
    code = serve(config)
    return 1 if code == EXIT_BOOT_FAILED else code
