"""The app rows (issue 13): one module of apps for every server (servers/apps.py), the app's
own cost measured in-process (bench/appcost.py) and shown beside each row with the server's
own, the `--suite apps` selection, and a server for each row that starts and answers every
check of the workloads it serves.

    python3 -m pytest benchmarks/tests/test_apps.py -q

A peer's server is skipped only where its library is not installed in the interpreter
running the tests (run.py installs the peers with pip; tools/test.sh's venv has Flask and
FastAPI, not granian, gunicorn or uvicorn), and the skip names the library.
"""

import importlib.util
import json
import os
import shutil
import statistics
import sys

import pytest

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(BENCH, "servers"))

import apps  # noqa: E402
from test_provision import free_base_port, quick_main  # noqa: E402

import run  # noqa: E402
from bench import (  # noqa: E402
    appcost,
    checks,
    registry,
    report,
    workloads as wl,  # noqa: E402
)
from bench.serverproc import ServerProcess, Unavailable  # noqa: E402
from bench.session import Built  # noqa: E402

APP_ROWS = {
    # interface row: the servers that must run it (the list)
    "wsgi_raw": {"pymongoose_uring_wsgi", "gunicorn_raw", "granian_wsgi_raw"},
    "asgi_raw": {"pymongoose_uring_asgi", "uvicorn_raw", "granian_asgi"},
    "flask_app": {
        "pymongoose_uring_flask",
        "pymongoose_uring_flask_floor",
        "gunicorn",
        "granian_wsgi",
    },
    "fastapi_app": {"pymongoose_uring_fastapi", "uvicorn", "granian_fastapi"},
}
FRAMEWORK = {"flask_app": "flask", "fastapi_app": "fastapi"}


def need_framework(name):
    module = FRAMEWORK.get(name)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip("%s is not installed here (run.py installs it)" % module)


@pytest.mark.parametrize("name", sorted(apps.INTERFACES))
def test_app_own_cost_is_a_positive_figure_for_every_app(name):
    need_framework(name)
    result = appcost.measure(name, "GET", "/", 0, calls=50, repeats=3)
    assert result["us_per_call"] > 0
    assert len(result["runs"]) == 3 and all(r > 0 for r in result["runs"])
    assert min(result["runs"]) <= result["us_per_call"] <= max(result["runs"])


@pytest.mark.parametrize("name", sorted(apps.INTERFACES))
def test_app_own_cost_of_the_echo_reads_the_body(name):
    need_framework(name)
    assert appcost.measure(name, "POST", "/echo", 65536, calls=20, repeats=1)["us_per_call"] > 0


def test_app_own_cost_refuses_a_wrong_answer(monkeypatch):
    def wrong(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"message":"Hello"}']

    monkeypatch.setattr(apps, "wsgi_raw", wrong)
    with pytest.raises(RuntimeError, match="wsgi_raw answered GET /"):
        appcost.measure("wsgi_raw", "GET", "/", 0, calls=5, repeats=1)


def test_app_own_cost_refuses_a_wrong_status(monkeypatch):
    async def not_found(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b'{"message":"Hello, World!"}'})

    monkeypatch.setattr(apps, "asgi_raw", not_found)
    with pytest.raises(RuntimeError, match="with 404"):
        appcost.measure("asgi_raw", "GET", "/", 0, calls=5, repeats=1)


def test_measure_all_runs_in_a_child_and_reports_each_error():
    results, errors = appcost.measure_all(
        [
            ("wsgi_raw", "GET", "/", 0),
            ("asgi_raw", "GET", "/16k", 0),
            ("no_such_app", "GET", "/", 0),
        ],
        cpus=os.sched_getaffinity(0),
    )
    assert results[("wsgi_raw", "GET", "/", 0)]["us_per_call"] > 0
    assert results[("asgi_raw", "GET", "/16k", 0)]["us_per_call"] > 0
    assert "no_such_app" in errors[("no_such_app", "GET", "/", 0)]


def test_the_runs_between_rounds_join_the_first_and_their_median_is_the_figure():
    """The runner measures an app again beside each round (one repeat each); the figure is
    the median of every repeat, and a key whose first measurement failed stays out."""
    key = ("wsgi_raw", "GET", "/", 0)
    first, _ = appcost.measure_all([key], cpus=os.sched_getaffinity(0))
    assert len(first[key]["runs"]) == appcost.REPEATS
    more, _ = appcost.measure_all([key], cpus=os.sched_getaffinity(0), repeats=1)
    assert len(more[key]["runs"]) == 1
    costs = {key: {"us_per_call": 3.0, "runs": [1.0, 3.0, 5.0], "calls": 2000}}
    appcost.merge(costs, {key: {"us_per_call": 9.0, "runs": [9.0, 10.0]}})
    assert costs[key]["runs"] == [1.0, 3.0, 5.0, 9.0, 10.0]
    assert costs[key]["us_per_call"] == 5.0
    appcost.merge(costs, {("fastapi_app", "GET", "/", 0): {"us_per_call": 1.0, "runs": [1.0]}})
    assert list(costs) == [key]


def test_each_round_is_paired_with_the_app_measured_beside_it():
    """appcost.pair: a round gets the mean of the samples taken right before and after it and
    its own server cost (its CPU less that); the samples join the run's figure; the row is
    the median of its rounds' figures, and annotate() leaves such a row alone."""
    key = ("flask_app", "GET", "/", 0)
    costs = {key: {"us_per_call": 50.0, "runs": [50.0], "calls": 2000}}
    rounds = []
    for cpu, before, after in ((100.0, 70.0, 74.0), (140.0, 100.0, 110.0), (90.0, 80.0, None)):
        p = dict(ROW, rps=1000.0, cpu_us_per_req=cpu)
        samples = [{key: {"us_per_call": before, "runs": [before]}}]
        samples.append({} if after is None else {key: {"us_per_call": after, "runs": [after]}})
        appcost.pair(p, samples, costs, key)
        rounds.append(p)
    assert [p["app_us_per_req"] for p in rounds] == [72.0, 105.0, 80.0]
    assert [p["server_own_us_per_req"] for p in rounds] == [28.0, 35.0, 10.0]
    assert costs[key]["runs"] == [50.0, 70.0, 74.0, 100.0, 110.0, 80.0]
    unpaired = dict(ROW, cpu_us_per_req=90.0)
    appcost.pair(unpaired, [{}, {}], costs, key)  # both samples failed: the run's figure
    row = report.summarize(rounds)
    assert (row["app_us_per_req"], row["server_own_us_per_req"]) == (80.0, 28.0)
    assert row["paired_rounds"] == 3
    other = report.summarize([unpaired])
    assert other["server_own_us_per_req"] is None and other["paired_rounds"] == 0
    summary = {("pymongoose_uring_flask", "keepalive"): row, ("gunicorn", "keepalive"): other}
    appcost.annotate(
        summary,
        {"pymongoose_uring_flask": "flask_app", "gunicorn": "flask_app"},
        {"keepalive": wl.BY_NAME["keepalive"]},
        costs,
    )
    assert row["server_own_us_per_req"] == 28.0  # the rounds' own, not 100 - the run's 77
    assert other["server_own_us_per_req"] == 90.0 - statistics.median(costs[key]["runs"])
    target = report.measured_own_cost_targets(summary)[0]
    assert target["server_own_us"] == 28.0 and target["paired"]
    text = report.targets_table(summary)
    assert "28.00 own (CPU 100.00, app 80.00: medians of rounds, each less the app" in text


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_run_pairs_each_round_of_an_app_row_with_the_app(tmp_path, capsys, monkeypatch):
    """run.py measures the app right before and after each round of a row that runs one:
    every round carries the app's cost and its own, and the row's own cost is the median of
    its rounds'. The row is a stand-in (tests/tinyfiles.py's hello, said to run apps.py's raw
    WSGI app): pymongoose_uring is not installed yet where tools/test.sh runs these tests."""
    name = "tiny_hello_wsgi_raw"
    stand_in = registry.Server(
        name,
        "tinyfiles hello, as the raw WSGI app's row",
        ("{python}", os.path.join(BENCH, "tests", "tinyfiles.py"), "{port}"),
        kind="peer",
        caps=("hello",),
        app="wsgi_raw",
    )
    monkeypatch.setitem(registry.BY_NAME, name, stand_in)
    rc = quick_main([name], tmp_path, "--workloads", "keepalive", "--no-build", rounds=2)
    assert rc == 0, capsys.readouterr().out
    with open(os.path.join(tmp_path, "results.json")) as f:
        results = json.load(f)
    rounds = [p for p in results["points"] if p["server"] == name]
    assert len(rounds) == 2
    for p in rounds:
        assert 0 < p["app_us_per_req"] < p["cpu_us_per_req"]
        assert p["server_own_us_per_req"] == p["cpu_us_per_req"] - p["app_us_per_req"]
    (row,) = [r for r in results["results"] if r["server"] == name]
    assert row["paired_rounds"] == 2
    assert row["server_own_us_per_req"] == statistics.median(
        p["server_own_us_per_req"] for p in rounds
    )
    (cost,) = results["meta"]["app_costs"]
    assert len(cost["runs"]) == appcost.REPEATS + 4  # before the servers, then 2 per round
    assert "(app's own " in capsys.readouterr().out


def test_the_requests_measured_are_the_workloads():
    assert appcost.app_request(wl.BY_NAME["keepalive"]) == ("GET", "/", 0)
    assert appcost.app_request(wl.BY_NAME["get16k"]) == ("GET", "/16k", 0)
    assert appcost.app_request(wl.BY_NAME["post64k"]) == ("POST", "/echo", 65536)
    assert appcost.app_request(wl.BY_NAME["ws-echo"]) is None
    assert appcost.app_request(wl.BY_NAME["file-16k"]) is None
    defs = [registry.BY_NAME[n] for n in ("pymongoose_uring", "gunicorn_raw", "uvicorn")]
    wanted = appcost.wanted_for(defs, [wl.BY_NAME["keepalive"], wl.BY_NAME["ws-echo"]])
    assert wanted == [("fastapi_app", "GET", "/", 0), ("wsgi_raw", "GET", "/", 0)]


def test_suite_apps_selects_every_app_row_and_the_native_reference():
    args = run.parse_args(["--suite", "apps"])
    servers = set(args.servers.split(","))
    assert args.workloads == "keepalive"
    assert "pymongoose_uring" in servers  # the native API: the ratios' reference
    for app, rows in APP_ROWS.items():
        assert rows <= servers, app
        for name in rows:
            assert registry.BY_NAME[name].app == app, name
    assert run.parse_args(["--suite", "apps", "--workloads", "pipelined"]).workloads == "pipelined"
    with pytest.raises(SystemExit):
        run.parse_args(["--suite", "apps", "--servers", "gunicorn"])


def test_app_rows_share_apps_py():
    """Every server naming an app runs it from apps.py (its script or its argv names it), so
    the in-process figure is that of the app the server runs."""
    for d in registry.SERVERS:
        if not d.app:
            continue
        assert d.app in apps.INTERFACES, d.name
        script = next(a for a in d.argv if a.endswith(".py")).replace("{servers}/", "")
        with open(os.path.join(BENCH, "servers", script)) as f:
            text = f.read()
        assert "apps" in text, d.name


def test_tables_show_the_app_own_and_the_server_own_cost():
    summary = {
        ("pymongoose_uring", "keepalive"): dict(ROW, cpu_us_per_req=10.0),
        ("pymongoose_uring_flask", "keepalive"): dict(ROW, cpu_us_per_req=60.0),
        ("gunicorn", "keepalive"): dict(ROW, cpu_us_per_req=200.0),
    }
    appcost.annotate(
        summary,
        {"pymongoose_uring_flask": "flask_app", "gunicorn": "flask_app"},
        {"keepalive": wl.BY_NAME["keepalive"]},
        {("flask_app", "GET", "/", 0): {"us_per_call": 55.0}},
    )
    assert summary[("gunicorn", "keepalive")]["server_own_us_per_req"] == 145.0
    assert "app_us_per_req" not in summary[("pymongoose_uring", "keepalive")]
    text = report.tables(
        [wl.BY_NAME["keepalive"]],
        summary,
        {},
        "pymongoose_uring",
        [],
        [],
        {"duration_s": 2},
    )
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("| Framework"))
    assert "| CPU µs/req | App's own µs/req | Server's own µs/req |" in head
    assert any(
        line.startswith("| gunicorn | ") and "| 200.0 | 55.0 | 145.0 |" in line for line in lines
    )
    assert any(
        line.startswith("| **pymongoose_uring** |") and "| 10.0 | - | - |" in line for line in lines
    )
    # the Flask target: the adapter's own cost, 60 - 55 = 5 µs, at most 8
    assert any("Flask: the WSGI adapter's own cost" in line and "met" in line for line in lines)
    assert not any("the floor" in line for line in lines)  # not measured in this run
    summary[("pymongoose_uring_flask", "keepalive")]["server_own_us_per_req"] = 9.0
    target = report.measured_own_cost_targets(summary)[0]
    assert target["met"] is False and target["server_own_us"] == 9.0
    assert target["floor_own_us"] is None
    # the floor: the same app from a native handler, its own cost shown beside the target
    summary[("pymongoose_uring_flask_floor", "keepalive")] = dict(
        ROW, cpu_us_per_req=59.0, app_us_per_req=55.0, server_own_us_per_req=4.0
    )
    assert report.measured_own_cost_targets(summary)[0]["floor_own_us"] == 4.0
    text = report.tables(
        [wl.BY_NAME["keepalive"]], summary, {}, "pymongoose_uring", [], [], {"duration_s": 2}
    )
    assert any(
        "Flask: the WSGI adapter's own cost" in line
        and "native handler without an adapter: 4.0" in line
        for line in text.splitlines()
    )


ROW = dict(
    rounds=1,
    rps=1000.0,
    lat_p50_ms=1.0,
    lat_p99_ms=2.0,
    rss_peak_mib=10.0,
    socket_errors=0,
    status_errors=0,
)


SERVED = ["hello", "pipelined", "close", "get16k", "echo", "ws-echo", "ws-broadcast"]


@pytest.mark.parametrize("name", sorted(set().union(*APP_ROWS.values())))
def test_each_app_row_server_starts_and_answers(name, tmp_path):
    """Started as the runner starts it (pinned, its argv, its environment), it answers GET /
    (ServerProcess.start checks that) and every check of the workloads it serves. Ours need
    pymongoose_uring importable here (the runner builds it; the slow provisioning test
    starts them from a clean tree)."""
    d = registry.BY_NAME[name]
    for module, _requirement in d.pip:
        if importlib.util.find_spec(module) is None:
            pytest.skip("%s is not installed here (run.py installs it with pip)" % module)
    server = ServerProcess(
        d, free_base_port(1), os.sched_getaffinity(0), str(tmp_path / "log"), built=Built()
    )
    try:
        server.start(timeout=30)
    except Unavailable as e:
        if d.project:
            pytest.skip("pymongoose_uring is not importable here: %s" % e)
        pytest.skip(str(e))
    try:
        for check in SERVED:
            if check.startswith("ws-") and not d.supports(wl.BY_NAME[check]):
                continue
            checks.CHECKS[check](server.port)
    finally:
        server.stop()
