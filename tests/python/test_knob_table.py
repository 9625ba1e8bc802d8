"""Every place that names the engine's knobs and counters agrees with the one table.

The knobs and counters are declared once, in include/pmu/pmu.h (PMU_CONFIG_KNOBS and
PMU_STATS_FIELDS); the binding exposes them as _pmu.knobs() and _pmu.counters(). The C
struct, defaults, range checks, the binding's keyword arguments, stats(), and hello_server's
PMU_* variables and PMU_STATS line are expanded from the table by the compiler. What cannot
be expanded (a Python signature for IDEs, the docstring, the stub, the command line, the
benchmark scripts, the README) is checked here, so that a knob added to the table and
forgotten somewhere fails a test rather than a review.
"""

import ast
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest

import pymongoose_uring
from pymongoose_uring import Server, _native
from pymongoose_uring._server import _ENGINE_OPTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KNOBS = pymongoose_uring.knobs()
COUNTERS = _native._pmu.counters()
# Where to listen: Server takes these before the keyword-only engine knobs, the benchmark
# scripts from their own arguments.
LISTENING = {"host", "port", "unix_path", "listen_fd", "threads"}
# The one knob whose Python name differs from its C field's (pmu_config_t).
C_NAME = {"stream_body_threshold": "body_stream_threshold"}
HELLO_SERVER = os.path.join(ROOT, "build", "test", "hello_server")

pytestmark = pytest.mark.no_uring_ok


def c_name(knob):
    return C_NAME.get(knob, knob)


def read(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def section(text, title):
    """The README section under the heading `title`, up to the next heading."""
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start : end if end >= 0 else len(text)]


def test_the_table_is_whole():
    assert len(KNOBS) >= 30
    for name, knob in KNOBS.items():
        assert knob.type in (str, int, bool), name
        assert knob.doc and "\n" not in knob.doc, name
        if knob.type is str:
            assert knob.min is None and knob.max is None, name
        else:
            assert knob.min <= int(knob.default) <= knob.max, name
    assert pymongoose_uring.config_defaults() == {n: k.default for n, k in KNOBS.items()}
    kinds = {kind for kind, _ in COUNTERS.values()}
    assert kinds == {"counter", "gauge", "array"}


def test_server_signature_has_every_knob():
    params = inspect.signature(Server.__init__).parameters
    given = set(params) - {"self", "app", "loop", "statics", "connection_handler", "ssl_sni_certs"}
    assert given == set(KNOBS), ("missing", set(KNOBS) - given, "unknown", given - set(KNOBS))
    for name in KNOBS:
        annotation = str(params[name].annotation)
        assert KNOBS[name].type.__name__ in annotation, (name, annotation)
    assert set(_ENGINE_OPTIONS) == set(KNOBS) - LISTENING


def test_server_docstring_names_every_knob():
    doc = Server.__doc__
    missing = [n for n in KNOBS if "``%s``" % n not in doc]
    assert not missing, missing


def _stub():
    return ast.parse(read("pymongoose_uring", "_pmu.pyi"))


def _class(tree, name):
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def test_stub_engine_takes_every_knob():
    init = next(
        n
        for n in _class(_stub(), "Engine").body
        if isinstance(n, ast.FunctionDef) and n.name == "__init__"
    )
    args = {a.arg: ast.unparse(a.annotation) for a in init.args.kwonlyargs}
    args.pop("routes")
    args.pop("async_scheduler")
    args.pop("statics")
    args.pop("connection_handler")
    args.pop("ssl_sni_certs")
    assert set(args) == set(KNOBS), (
        "missing",
        set(KNOBS) - set(args),
        "unknown",
        set(args) - set(KNOBS),
    )
    for name, annotation in args.items():
        assert KNOBS[name].type.__name__ in annotation, (name, annotation)


def test_stub_stats_names_every_counter():
    tree = _stub()
    fields = {n.target.id for n in _class(tree, "Stats").body if isinstance(n, ast.AnnAssign)}
    assert fields == set(COUNTERS), (
        "missing",
        set(COUNTERS) - fields,
        "unknown",
        fields - set(COUNTERS),
    )
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"knobs", "counters", "config_defaults"} <= functions


def test_cli_has_an_option_for_every_knob():
    out = subprocess.run(
        [sys.executable, "-m", "pymongoose_uring", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    from pymongoose_uring.cli.config import CONNECTION_HANDLER_KNOBS

    assert set(CONNECTION_HANDLER_KNOBS) <= set(KNOBS)
    missing = [
        n
        for n in KNOBS
        if n not in CONNECTION_HANDLER_KNOBS and "--" + n.replace("_", "-") not in out.stdout
    ]
    assert not missing, missing
    # A knob only a connection_handler gives meaning to is not an option.
    present = [
        n for n in CONNECTION_HANDLER_KNOBS if "--" + n.replace("_", "-") + " " in out.stdout
    ]
    assert not present, present


def test_benchmark_knobs_are_the_table():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks", "servers"))
    try:
        import knobs as bench_knobs
    finally:
        sys.path.pop(0)
    names = set(bench_knobs.KNOBS) | set(bench_knobs.LISTENING)
    assert names == set(KNOBS), ("missing", set(KNOBS) - names, "unknown", names - set(KNOBS))
    for name, parse in bench_knobs.KNOBS.items():
        expected = {bool: bench_knobs.flag, int: int, str: str}[KNOBS[name].type]
        assert parse is expected, name


def test_sweep_counter_lists_are_the_table():
    tree = ast.parse(read("benchmarks", "sweep.py"))
    gauges = next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "GAUGES"
    )
    assert gauges == {n for n, (kind, _) in COUNTERS.items() if kind == "gauge"}
    derived = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "derived")
    named = {
        c.value
        for c in ast.walk(derived)
        if isinstance(c, ast.Constant)
        and isinstance(c.value, str)
        and re.fullmatch(r"[a-z_]+", c.value)
        and not c.value.endswith(("_per_batch", "_per_wait", "_per_request"))
    }
    assert named and named <= set(COUNTERS), named - set(COUNTERS)


def test_readme_knob_tables_name_every_knob():
    readme = read("README.md")
    python_part = section(readme, "### Configuration")
    missing = [n for n in KNOBS if "`%s`" % n not in python_part]
    assert not missing, ("### Configuration", missing)
    c_part = section(readme, "### Knobs (`pmu_config_t`, defaults)")
    missing = [c_name(n) for n in KNOBS if "`%s`" % c_name(n) not in c_part]
    assert not missing, ("### Knobs", missing)


def test_readme_names_every_counter():
    part = section(read("README.md"), "### Counters and batching")
    missing = [n for n in COUNTERS if "`%s`" % n not in part]
    assert not missing, missing


def _hello_server():
    if not os.access(HELLO_SERVER, os.X_OK):
        pytest.skip("no %s: build it with meson (./tools/test.sh does)" % HELLO_SERVER)
    return HELLO_SERVER


def _distinct(knob):
    """A value unlike the default, within the knob's range, and its text for PMU_*."""
    if knob.type is str:
        return "/knob-table", "/knob-table"
    if knob.type is bool:
        value = int(not knob.default)
        return value, str(value)
    value = knob.default + 1 if knob.default < knob.max else knob.default - 1
    return value, str(value)


def test_hello_server_reads_every_knob_from_the_environment():
    env = dict(os.environ)
    expected = {}
    for name, knob in KNOBS.items():
        value, text = _distinct(knob)
        env["PMU_" + c_name(name).upper()] = text
        expected[c_name(name)] = value
    out = subprocess.run(
        [_hello_server(), "--config"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("PMU_CONFIG "))
    config = json.loads(line[len("PMU_CONFIG ") :])
    assert config == expected


@pytest.mark.skipif(not pymongoose_uring.probe()["available"], reason="io_uring unavailable")
def test_hello_server_prints_every_counter():
    proc = subprocess.Popen([_hello_server(), "0"], stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        port = int(re.search(r":(\d+) with", first).group(1))
        urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=10).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    line = next(l for l in rest.splitlines() if l.startswith("PMU_STATS "))
    stats = json.loads(line[len("PMU_STATS ") :])
    assert set(stats) == set(COUNTERS)
    assert stats["requests"] == 1 and stats["status_classes"]["2xx"] == 1
    assert len(stats["batch_hist"]) == _native._pmu.BATCH_BUCKETS


@pytest.mark.skipif(not pymongoose_uring.probe()["available"], reason="io_uring unavailable")
def test_stats_has_every_counter():
    with Server(lambda request: "x", port=0) as server:
        urllib.request.urlopen(server.url + "/", timeout=10).read()
        assert set(server.stats()) == set(COUNTERS)
