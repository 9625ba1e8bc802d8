"""Command line: serve an app, or report what the kernel offers.

    python -m pymongoose_uring myapp:app --port 8000 --threads 2 --batch-max 64
    python -m pymongoose_uring --hello --port 8000     # built-in hello-world JSON app
    python -m pymongoose_uring --probe                 # io_uring features, as JSON

Every engine knob is an option (``--ring-entries``, ``--buf-size``, ``--sqpoll 1``...);
``python -m pymongoose_uring --help`` lists them with their defaults.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Callable, List, Optional


def _load(spec: str) -> Callable[[Any], Any]:
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    return obj


def _hello_app() -> Any:
    from . import App
    app = App()
    body = b'{"message":"Hello, World!"}'
    headers = [("Content-Type", "application/json")]

    @app.get("/")
    def hello(request: Any) -> Any:
        return 200, headers, body

    return app


def main(argv: Optional[List[str]] = None) -> int:
    from . import Server, UnavailableError, probe
    from . import _native

    p = argparse.ArgumentParser(prog="python -m pymongoose_uring",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("app", nargs="?", help="MODULE:ATTRIBUTE of an App or handler")
    p.add_argument("--hello", action="store_true", help="serve the built-in hello-world app")
    p.add_argument("--probe", action="store_true", help="print probe() as JSON and exit")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--unix-path", default=None)
    p.add_argument("--threads", type=int, default=1)
    defaults = _native._pmu.config_defaults() if _native._pmu is not None else {}
    for name, value in defaults.items():
        if name in ("host", "port", "unix_path", "threads"):
            continue
        kind = str if name == "server_header" else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"engine default: {value!r}")
    args = p.parse_args(argv)

    if args.probe:
        print(json.dumps(probe(), indent=2))
        return 0 if probe()["available"] else 1
    if not args.hello and not args.app:
        p.error("give MODULE:APP, --hello or --probe")
    app = _hello_app() if args.hello else _load(args.app)
    options = {name: getattr(args, name) for name in defaults
               if name not in ("host", "port", "unix_path", "threads")
               and getattr(args, name, None) is not None}
    try:
        server = Server(app, args.host, args.port, unix_path=args.unix_path,
                        threads=args.threads, **options)
        server.run()
    except UnavailableError as exc:
        print(f"pymongoose_uring: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
