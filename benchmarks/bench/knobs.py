"""The engine knobs, loaded from benchmarks/servers/knobs.py (the one list the server
scripts read too)."""

import importlib.util
import os

from . import SERVERS_DIR

_spec = importlib.util.spec_from_file_location(
    "bench_server_knobs", os.path.join(SERVERS_DIR, "knobs.py")
)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

KNOBS = _module.KNOBS
ALL_KNOBS = tuple(KNOBS)
env_name = _module.env_name


def parse_value(knob, text):
    if knob not in KNOBS:
        raise ValueError("unknown knob %r (knobs: %s)" % (knob, ", ".join(KNOBS)))
    return KNOBS[knob](text)


def environment(settings):
    """PMU_* environment variables for {knob: value}."""
    return {
        env_name(k): str(int(v)) if isinstance(v, bool) else str(v) for k, v in settings.items()
    }
