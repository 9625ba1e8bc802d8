"""The file workloads (issue 11): the runner's files, the byte-exact check that comes before
the load, the file servers in the registry, the tables against nginx and the targets, and a
whole --files run against stand-ins (tinyfiles.py). No speed is asserted here.

    python3 -m pytest benchmarks/tests/test_files.py -q
"""

import json
import os
import shutil
import stat
import sys

import pytest
from test_bench import TinyServer, response
from test_provision import free_base_port, quick_main

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run  # noqa: E402
from bench import (  # noqa: E402
    WrongAnswer,
    checks,
    files,
    registry,
    report,
    workloads as wl,  # noqa: E402
)
from bench.serverproc import ServerProcess  # noqa: E402
from bench.session import Built  # noqa: E402

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SIZE_16K = files.FILES["16k.bin"]


def test_contents_are_deterministic_and_never_repeat():
    big = files.content(files.FILES["1m.bin"])
    assert big == files.content(files.FILES["1m.bin"]) and len(big) == 1 << 20
    blocks = [big[i : i + 32] for i in range(0, len(big), 32)]
    assert len(set(blocks)) == len(blocks)  # a repeated or shifted chunk cannot pass
    assert files.content(100, seed=b"other") != files.content(100)


def test_prepare_writes_readable_files_and_check_tree_catches_a_changed_byte(tmp_path):
    root = files.prepare(str(tmp_path / "root"))
    for name, size in files.FILES.items():
        path = files.path_in(root, name)
        with open(path, "rb") as f:
            assert f.read() == files.content(size)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    for d in (root, os.path.join(root, files.SUBDIR)):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o755  # nginx's worker runs as nobody
    files.check_tree(root)
    with open(files.path_in(root, "1m.bin"), "r+b") as f:
        f.seek(500_000)
        byte = f.read(1)
        f.seek(500_000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ValueError, match="1m.bin"):
        files.check_tree(root)


def file_server(body_of, hello=True):
    """A TinyServer answering /files/16k.bin with body_of(the file's bytes) (or a status
    given as an int), and GET / with the hello JSON when `hello`."""
    expected = files.content(SIZE_16K)

    def answer(head, _body):
        path = head.split(b" ")[1]
        if path == b"/" and hello:
            return response(b'{"message":"Hello, World!"}'), False
        if path != b"/files/16k.bin":
            return response(b"", status=404), False
        body = body_of(expected)
        if isinstance(body, int):
            return response(b"", status=body), False
        return response(body, "application/octet-stream"), False

    return TinyServer(answer)


def test_the_file_check_passes_the_file_and_nothing_else():
    good = file_server(lambda data: data)
    try:
        assert checks.CHECKS["file-16k"](good.port)["body_bytes"] == SIZE_16K
    finally:
        good.close()
    for body_of, why in (
        (lambda data: b"x" * len(data), "first difference at byte 0"),  # get16k's memory body
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "first difference at byte 16383"),
        (lambda data: data[:8192], "a prefix of it"),
        (lambda data: data + b"\n", "the file, then more"),
        (lambda data: 404, "answered 404"),
    ):
        server = file_server(body_of)
        try:
            with pytest.raises(WrongAnswer, match=why):
                checks.get_file(server.port, "16k.bin")
        finally:
            server.close()
    declined = file_server(lambda data: 501)
    try:
        with pytest.raises(checks.NotSupported):
            checks.get_file(declined.port, "16k.bin")
    finally:
        declined.close()


def test_a_static_file_server_alone_is_probed_on_the_file():
    static = registry.BY_NAME["pymongoose_uring_static"]
    assert not static.hello and static.files_only
    server = file_server(lambda data: data, hello=False)
    try:
        assert checks.probe(static, server.port)["body_bytes"] == SIZE_16K
        with pytest.raises(WrongAnswer):  # GET / is 404 there
            checks.probe(registry.BY_NAME["nginx"], server.port)
    finally:
        server.close()


def test_the_registry_has_the_issues_file_servers_and_leaves_them_out_of_other_runs():
    serving = {d.name for d in registry.SERVERS if "files" in d.caps and d.default}
    assert serving == {
        "pymongoose_uring",
        "nginx",
        "nginx_nocache",
        "pymongoose_uring_static",
        "pymongoose_uring_fileresponse",
        "granian_static",
        "uvicorn_staticfiles",
        "uvicorn_fileresponse",
    }
    keepalive = [wl.BY_NAME["keepalive"]]
    idle = {d.name for d in run.idle_servers(registry.SERVERS, keepalive)}
    assert serving - {"nginx", "pymongoose_uring"} <= idle
    assert not idle & {"nginx", "pymongoose_uring"}
    assert wl.FILES == ["file-16k", "file-1m"] and set(wl.FILES) <= set(wl.DEFAULT)
    assert all(wl.BY_NAME[n].reference == "nginx" for n in wl.FILES)
    assert run.parse_args(["--files"]).workloads == "file-16k,file-1m"
    with pytest.raises(SystemExit):
        run.parse_args(["--files", "--workloads", "keepalive"])


def row(cpu, rps=1000.0):
    return dict(
        rounds=1,
        rps=rps,
        cpu_us_per_req=cpu,
        lat_p50_ms=1.0,
        lat_p99_ms=2.0,
        rss_peak_mib=10.0,
        socket_errors=0,
        status_errors=0,
    )


def test_file_tables_are_against_nginx_and_show_the_issues_targets():
    summary = {
        ("nginx", "file-16k"): row(10.0, 50000),
        ("nginx_nocache", "file-16k"): row(14.0, 40000),
        ("pymongoose_uring_static", "file-16k"): row(9.0, 60000),
        ("uvicorn_fileresponse", "file-16k"): row(500.0, 2000),
        ("pymongoose_uring_fileresponse", "file-16k"): row(250.0, 4000),
        ("nginx", "file-1m"): row(200.0, 3000),
        ("pymongoose_uring_static", "file-1m"): row(260.0, 2500),
        ("pymongoose_uring", "keepalive"): row(6.0, 100000),
        ("nginx", "keepalive"): row(7.0, 90000),
    }
    labels = {d.name: d.label for d in registry.SERVERS}
    workloads = [wl.BY_NAME[n] for n in ("keepalive", "file-16k", "file-1m")]
    text = report.tables(
        workloads,
        summary,
        labels,
        "pymongoose_uring",
        [],
        [],
        {"duration_s": 2},
        files_labels=registry.FILES_LABELS,
    )
    sections = text.split("### ")
    keepalive = next(s for s in sections if s.startswith("keep-alive"))
    file16k = next(s for s in sections if s.startswith("16 KiB file"))
    # The hello table keeps the run's reference and nginx's own label ...
    assert "vs pymongoose_uring" in keepalive and "| nginx (1 worker) |" in keepalive
    # ... the file tables are against nginx, named for what serves its files.
    assert "vs nginx (req/s, CPU)" in file16k
    assert "| **nginx (sendfile, open_file_cache on)** | 50,000 |" in file16k
    assert "| pymongoose_uring --static | 60,000 |" in file16k and "1.20× / 0.90× |" in file16k
    assert "| nginx (sendfile, open_file_cache off) | 40,000 |" in file16k
    lines = [line for line in text.splitlines() if line.startswith("| ") and "at most" in line]
    assert lines == [
        "| --static vs nginx (sendfile, open_file_cache), 16 KiB file | 9.00 / 10.00 | 0.90× "
        "| at most 1.0× | met |",
        "| --static vs nginx (sendfile, open_file_cache), 1 MiB file | 260.00 / 200.00 | 1.30× "
        "| at most 1.2× | **not met** |",
        "| Starlette FileResponse, our ASGI adapter vs uvicorn, 16 KiB file | 250.00 / 500.00 "
        "| 0.50× | at most 0.4× | **not met** |",
    ]
    measured = report.measured_targets(summary)
    assert [(t["server"], t["workload"], t["met"]) for t in measured] == [
        ("pymongoose_uring_static", "file-16k", True),
        ("pymongoose_uring_static", "file-1m", False),
        ("pymongoose_uring_fileresponse", "file-16k", False),
    ]
    # Without nginx in the run, a file table falls back to the run's reference.
    del summary[("nginx", "file-16k")]
    text = report.tables(
        [wl.BY_NAME["file-16k"]],
        summary,
        labels,
        "pymongoose_uring_static",
        [],
        [],
        {"duration_s": 2},
    )
    assert "vs pymongoose_uring_static" in text


def test_the_engine_file_counters_note_names_the_paths_taken():
    stats = {"requests": 9, "files_sent": 1200, "file_bytes_spliced": 1 << 30, "file_errors": 0}
    assert report.file_counters_note("pymongoose_uring", stats) == (
        "pymongoose_uring: engine file counters at the end of the run (checks and warm-ups "
        "included): files_sent 1,200, file_bytes_spliced 1,073,741,824, file_errors 0"
    )
    assert report.file_counters_note("x", {"requests": 9}) is None
    assert report.file_counters_note("x", None) is None


@pytest.fixture
def stand_ins(monkeypatch):
    """Stand-in file servers (tinyfiles.py in each MODE) in the registry."""
    made = {}
    for mode in ("right", "no-hello", "x", "missing"):
        name = "tiny_files_" + mode.replace("-", "_")
        made[mode] = registry.Server(
            name,
            "tinyfiles " + mode,
            ("{python}", os.path.join(TESTS_DIR, "tinyfiles.py"), "{port}", mode),
            kind="peer",
            caps=("files",),
            hello=mode != "no-hello",
        )
        monkeypatch.setitem(registry.BY_NAME, name, made[mode])
    affinity = os.sched_getaffinity(0)
    yield made
    os.sched_setaffinity(0, affinity)  # run.main pins itself to the client CPUs


def quick_run(names, out):
    return quick_main(names, out, "--files", "--no-build")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_files_run_measures_both_files_and_removes_its_directory(stand_ins, tmp_path, capsys):
    names = [stand_ins["right"].name, stand_ins["no-hello"].name]
    rc = quick_run(names, tmp_path)
    out = capsys.readouterr().out
    assert rc == 0, out
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    measured = {(r["server"], r["workload"]): r for r in results["results"]}
    assert set(measured) == {(n, w) for n in names for w in wl.FILES}
    for r in measured.values():  # every request answered 200: the files were found
        assert r["requests"] > 0 and r["status_errors"] == 0 and r["socket_errors"] == 0
    # 1 MiB per answer: wrk read the file's bytes, not a short error page.
    for name in names:
        r = measured[(name, "file-1m")]
        assert r["mb_per_s"] >= r["rps"] * 1.04
    assert results["meta"]["files"] == files.FILES
    assert not os.path.exists(results["meta"]["files_root"])  # removed after the run
    assert "### 16 KiB file, 64 connections" in out and "### 1 MiB file, 16 connections" in out
    assert results["targets"] == []  # no target's servers ran
    # What each server's script said for the report (BENCH_NOTE lines of its log), once.
    root = results["meta"]["files_root"]
    assert results["notes"] == [
        "%s: serving %s in mode right" % (names[0], root),
        "%s: serving %s in mode no-hello" % (names[1], root),
    ]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.parametrize("mode", ["x", "missing"])
def test_a_server_answering_other_bytes_or_404_fails_before_any_load(
    stand_ins, mode, tmp_path, capsys
):
    rc = quick_run([stand_ins[mode].name], tmp_path)
    captured = capsys.readouterr()
    assert rc == 1, captured.out
    assert "ERROR: %s: file-16k check: GET /files/16k.bin" % stand_ins[mode].name in captured.err
    assert "file-16k     r1/1" not in captured.out  # never measured


@pytest.mark.skipif(
    shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK),
    reason="nginx is not installed",
)
def test_nginx_serves_the_files_with_and_without_its_open_file_cache(tmp_path):
    built = Built()
    built.files_root = files.prepare()  # in /tmp: nginx's worker may run as nobody
    base = free_base_port(2)
    try:
        for index, name in enumerate(("nginx", "nginx_nocache")):
            definition = registry.BY_NAME[name]
            server = ServerProcess(
                definition,
                base + index,
                os.sched_getaffinity(0),
                str(tmp_path / (name + ".log")),
                built=built,
            )
            server.start()
            try:
                for file in files.FILES:
                    checks.get_file(server.port, file)
                with open("/tmp/pmu-bench-nginx-%d/nginx.conf" % server.port) as f:
                    conf = f.read()
            finally:
                server.stop()
            assert "sendfile on;" in conf and "root %s;" % built.files_root in conf
            if name == "nginx":
                assert "open_file_cache max=" in conf
            else:
                assert "open_file_cache off;" in conf
    finally:
        files.remove(built.files_root)
