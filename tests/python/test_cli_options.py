"""The command-line options users bring from uvicorn, gunicorn and granian: each one
changes what the server does, as seen over a socket or in the parsed Config; the
access log's status and time for answers given later."""

import json
import logging
import os
import re
import signal
import textwrap
import time

import pytest

from conftest import At, RawClient, port_of, request, run_cli, stop_process as stop
from pymongoose_uring import config_defaults
from pymongoose_uring._adapter import log_access, set_access_log_format
from pymongoose_uring.cli.command import read_env_file
from pymongoose_uring.cli.config import parse

DEFAULTS = config_defaults()

APPS = textwrap.dedent("""
    import os
    import threading

    def wsgi(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"wsgi %d %s" % (len(body), os.environ.get("I13_CLI_VAR", "unset").encode())]

    def make_wsgi():
        def made(environ, start_response):
            start_response("200 OK", [])
            return [b"from the factory"]
        return made

    def native(request):
        if request.path == "/now":
            return 201, [], b"now"
        if request.path == "/hold":  # kept, answered 20 s later
            t = threading.Timer(20, request.reply, (b"held", 200))
            t.daemon = True
            t.start()
            return None
        threading.Timer(0.2, request.reply, (b"later", 202)).start()
        return None  # kept: answered 200 ms later

    async def native_async(request):
        import asyncio

        await asyncio.sleep(0.2)
        return 203, [], b"async"
""")


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "optapps.py").write_text(APPS)
    return tmp_path


def engine(*argv):
    return parse(["optapps:wsgi", *argv], DEFAULTS).engine


# ---- parsing -----------------------------------------------------------------------------


def test_uvicorn_and_gunicorn_names_set_the_engine_knobs():
    assert engine("--timeout-keep-alive", "1.5") == {"keepalive_timeout_ms": 1500}
    assert engine("--keep-alive", "2") == {"keepalive_timeout_ms": 2000}  # gunicorn's name
    assert engine("--timeout-graceful-shutdown", "3") == {"shutdown_timeout_ms": 3000}
    assert engine("--graceful-timeout", "0.25") == {"shutdown_timeout_ms": 250}
    assert engine("--limit-concurrency", "7") == {"max_connections": 7}
    assert engine("--limit-request-body", "0") == {"max_body_bytes": 0}
    assert engine("--limit-request-body", "1024") == {"max_body_bytes": 1024}
    assert engine("--no-server-header") == {"server_header": ""}
    assert engine() == {}  # nothing given: every knob keeps its default
    # Our own name for the knob still works, alone or agreeing.
    assert engine("--keepalive-timeout-ms", "1500", "--timeout-keep-alive", "1.5") == {
        "keepalive_timeout_ms": 1500
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["--timeout-keep-alive", "1", "--keepalive-timeout-ms", "2000"],  # disagree
        ["--limit-concurrency", "-1"],
        ["--timeout-graceful-shutdown", "-1"],
        ["--header", "no-colon"],
        ["--header", "bad name:1"],
        ["--access-log-format", "%(h)d"],  # not a number
        ["--env-file", "/nonexistent/i13-cli.env"],
        ["--log-config", "/nonexistent/i13-cli.json"],
        ["--app-dir", "/nonexistent/i13-cli"],
    ],
)
def test_wrong_options_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["optapps:wsgi", *argv], DEFAULTS)
    assert exc.value.code == 2


def test_header_and_date_options_set_their_knobs():
    argv = ["--header", "X-A: 1", "--header", "X-B:two words", "--no-date-header"]
    assert engine(*argv) == {"extra_headers": "X-A: 1\r\nX-B: two words", "date_header": 0}


def test_gunicorn_bind_and_aliases():
    def config(*argv):
        return parse(["optapps:wsgi", *argv], DEFAULTS)

    c = config("-b", "0.0.0.0:9001")
    assert (c.host, c.port) == ("0.0.0.0", 9001)
    c = config("--bind", "[::1]:9002")
    assert (c.host, c.port) == ("::1", 9002)
    c = config("--bind", "localhost")
    assert (c.host, c.port) == ("localhost", 8000)
    assert config("--bind", "unix:/tmp/i13-cli.sock").unix_path == "/tmp/i13-cli.sock"
    assert config("--bind", "fd://0").fd == 0
    assert config("-w", "3").workers == 3
    assert config("--limit-max-requests", "50").max_requests == 50  # uvicorn's name
    assert config("--access-logformat", "%(s)s").access_log_format == "%(s)s"  # gunicorn's
    assert config("--access-log", "--no-access-log").access_log is False
    c = config("--access-logfile", "-")
    assert c.access_log is True and c.access_logfile == "-"
    assert config("--log-file", "/tmp/i13-cli-err.log").error_logfile == "/tmp/i13-cli-err.log"
    assert config("-e", "A=1", "--env", "B=x=y").env == [("A", "1"), ("B", "x=y")]
    for bad in (["--bind", "h:notaport"], ["--bind", "fd://x"], ["-e", "novalue"]):
        with pytest.raises(SystemExit):
            config(*bad)


def test_read_env_file_without_python_dotenv(tmp_path):
    path = tmp_path / "i13.env"
    path.write_text(
        '# a comment\n\nA=1\nexport B = two \nC=\'x # y\'\nD="line\\nnext \\"q\\""\n'
        "E=value # comment\nnot a pair\n=nokey\n"
    )
    assert read_env_file(str(path)) == {
        "A": "1",
        "B": "two",
        "C": "x # y",
        "D": 'line\nnext "q"',
        "E": "value",
    }


def test_access_log_format_takes_gunicorn_atoms(caplog):
    fmt = '%(h)s %(l)s %(u)s "%(r)s" %(m)s %(U)s %(q)s %(H)s %(s)s %(b)s %(B)s "%(f)s" "%(a)s"'
    fmt += " %(T)s %(M)s %(D)s %(L)s %(p)s %({x-id}i)s %(t)s"
    set_access_log_format(fmt)
    try:
        with caplog.at_level(logging.INFO, logger="pymongoose_uring.access"):
            log_access(
                ("10.0.0.1", 5),
                "POST",
                "/a/b?c=1",
                "1.1",
                201,
                17,
                duration=1.25,
                referer="http://r/",
                user_agent="ua/1",
            )
            log_access(None, "GET", "/", "1.0", "-", None)  # an old call: no duration
    finally:
        set_access_log_format(None)
    first, second = [r.getMessage() for r in caplog.records]
    assert first.startswith(
        '10.0.0.1 - - "POST /a/b?c=1 HTTP/1.1" POST /a/b c=1 HTTP/1.1 201 17 17 "http://r/" '
        f'"ua/1" 1 1250 1250000 1.250000 <{os.getpid()}> - ['
    ), first
    assert re.search(r"\[\d\d/\w\w\w/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]$", first), first
    assert second.startswith('- - - "GET / HTTP/1.0" GET /  HTTP/1.0 - - - "-" "-" - - - - '), (
        second
    )
    # The default line is unchanged.
    with caplog.at_level(logging.INFO, logger="pymongoose_uring.access"):
        caplog.clear()
        log_access(("10.0.0.1", 5), "GET", "/x", "1.1", 200, 3, duration=0.5)
    assert caplog.records[0].getMessage() == '10.0.0.1:5 - "GET /x HTTP/1.1" 200 3'


# ---- over a socket -----------------------------------------------------------------------


def serve(app_dir, *args):
    proc = run_cli(app_dir, *args, "--port", "0")
    return proc, At(port_of(proc))


def test_header_adds_a_header_to_every_answer(app_dir):
    proc, server = serve(app_dir, "optapps:wsgi", "--header", "X-A:1", "--header", "X-B: b")
    try:
        for path in ("/", "/other"):
            status, headers, _, _ = request(server, path=path)
            assert status == 200 and headers["x-a"] == "1" and headers["x-b"] == "b"
    finally:
        stop(proc)


def test_no_date_and_no_server_header(app_dir):
    proc, server = serve(app_dir, "optapps:wsgi")
    try:
        _, headers, _, _ = request(server)
        assert "date" in headers and "server" in headers  # the defaults send both
    finally:
        stop(proc)
    proc, server = serve(app_dir, "optapps:wsgi", "--no-server-header", "--no-date-header")
    try:
        status, headers, body, _ = request(server)
        assert status == 200 and body.startswith(b"wsgi")
        assert "server" not in headers
        assert "date" not in headers
    finally:
        stop(proc)


def test_timeout_keep_alive_closes_an_idle_connection(app_dir):
    proc, server = serve(app_dir, "optapps:wsgi", "--timeout-keep-alive", "1")
    try:
        c = RawClient(server.port, timeout=10)
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = c.read_response()
        assert status == 200
        t0 = time.monotonic()
        assert c.sock.recv(1) == b""  # the server closed the idle connection
        idle = time.monotonic() - t0
        assert 0.7 < idle < 3, idle  # the default is 5 s
    finally:
        stop(proc)


def test_limit_concurrency_answers_503_beyond(app_dir):
    proc, server = serve(app_dir, "optapps:wsgi", "--limit-concurrency", "2")
    try:
        first, second = RawClient(server.port), RawClient(server.port)
        for c in (first, second):  # both open and served
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response()[0] == 200
        third = RawClient(server.port)
        third.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert third.read_response()[0] == 503
        first.sock.close()
        deadline = time.monotonic() + 5
        while True:  # a place is free again once the first is closed
            c = RawClient(server.port)
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status = c.read_response()[0]
            c.sock.close()
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 200
    finally:
        stop(proc)


def test_limit_request_body_answers_413_above(app_dir):
    proc, server = serve(app_dir, "optapps:wsgi", "--limit-request-body", "10")
    try:
        assert request(server, "POST", body=b"x" * 10)[2] == b"wsgi 10 unset"
        assert request(server, "POST", body=b"x" * 11)[0] == 413
    finally:
        stop(proc)


def test_env_file_sets_a_variable_the_app_reads(app_dir, tmp_path):
    env = tmp_path / "i13-cli.env"
    env.write_text("I13_CLI_VAR=from-env-file\n")
    proc, server = serve(app_dir, "optapps:wsgi", "--env-file", str(env))
    try:
        assert request(server)[2] == b"wsgi 0 from-env-file"
    finally:
        stop(proc)


def test_env_sets_a_variable_after_the_env_file(app_dir, tmp_path):
    env = tmp_path / "i13-cli.env"
    env.write_text("I13_CLI_VAR=from-env-file\n")
    proc, server = serve(
        app_dir, "optapps:wsgi", "--env-file", str(env), "-e", "I13_CLI_VAR=from-option"
    )
    try:
        assert request(server)[2] == b"wsgi 0 from-option"
    finally:
        stop(proc)


def test_access_logfile_and_error_logfile(app_dir, tmp_path):
    access, errors = tmp_path / "i13-cli-access.log", tmp_path / "i13-cli-errors.log"
    proc, server = serve(
        app_dir,
        "optapps:native",
        "--access-logfile",
        str(access),
        "--error-logfile",
        str(errors),
        "--log-level",
        "info",
    )
    try:
        request(server, path="/now")
    finally:
        _, err = stop(proc, signal.SIGINT)
    assert '"GET /now HTTP/1.1" 201 3' in access.read_text()
    assert "/now" not in err
    assert errors.read_text().strip()  # the info lines (stopping...) went to the file


def test_factory_calls_the_function_for_the_app(app_dir):
    proc, server = serve(app_dir, "optapps:make_wsgi", "--factory", "--interface", "wsgi")
    try:
        assert request(server)[2] == b"from the factory"
    finally:
        stop(proc)
    # Without --factory the function itself is the app (a WSGI app of one argument
    # fails): the option is what makes the difference.
    proc = run_cli(app_dir, "optapps:wsgi", "--factory", "--port", "0")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "cannot load" in err


def test_app_dir_is_searched_for_the_module(app_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "otherapp.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'from app-dir']\n"
    )
    proc = run_cli(app_dir, "otherapp:app", "--port", "0")  # not found in the cwd
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "otherapp" in err
    proc, server = serve(app_dir, "otherapp:app", "--app-dir", str(elsewhere))
    try:
        assert request(server)[2] == b"from app-dir"
    finally:
        stop(proc)


LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "ACCESS %(message)s"}},
    "handlers": {"file": {"class": "logging.FileHandler", "filename": "", "formatter": "plain"}},
    "loggers": {
        "pymongoose_uring.access": {"handlers": ["file"], "level": "INFO", "propagate": False}
    },
}


def write_log_config(tmp_path, kind, log_file):
    config = json.loads(json.dumps(LOG_CONFIG))
    config["handlers"]["file"]["filename"] = str(log_file)
    if kind == "json":
        path = tmp_path / "i13-cli-log.json"
        path.write_text(json.dumps(config))
    elif kind == "yaml":
        yaml = pytest.importorskip("yaml")
        path = tmp_path / "i13-cli-log.yaml"
        path.write_text(yaml.safe_dump(config))
    else:
        path = tmp_path / "i13-cli-log.ini"
        path.write_text(
            textwrap.dedent(f"""
            [loggers]
            keys=root,access
            [handlers]
            keys=file
            [formatters]
            keys=plain
            [logger_root]
            handlers=
            [logger_access]
            qualname=pymongoose_uring.access
            handlers=file
            level=INFO
            propagate=0
            [handler_file]
            class=FileHandler
            formatter=plain
            args=({str(log_file)!r},)
            [formatter_plain]
            format=ACCESS %(message)s
            """)
        )
    return path


@pytest.mark.parametrize("kind", ["json", "yaml", "ini"])
def test_log_config_routes_access_lines_to_a_file(app_dir, tmp_path, kind):
    log_file = tmp_path / "i13-cli-access.log"
    config = write_log_config(tmp_path, kind, log_file)
    proc, server = serve(app_dir, "optapps:wsgi", "--access-log", "--log-config", str(config))
    try:
        request(server, path="/to-the-file?x=1")
    finally:
        _, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    assert re.search(r'^ACCESS .* "GET /to-the-file\?x=1 HTTP/1.1" 200', log_file.read_text(), re.M)
    assert "/to-the-file" not in err  # the file's handler, not stderr


def test_deferred_native_answer_logs_its_status_and_time(app_dir):
    proc, server = serve(
        app_dir,
        "optapps:native",
        "--access-log",
        "--access-log-format",
        '"%(r)s" %(s)s %(b)s %(D)s',
    )
    try:
        assert request(server, path="/later")[:1] == (202,)
        assert request(server, path="/now")[:1] == (201,)
    finally:
        _, err = stop(proc, signal.SIGINT)
    later = re.search(r'"GET /later HTTP/1.1" (\S+) (\S+) (\S+)', err)
    now = re.search(r'"GET /now HTTP/1.1" (\S+) (\S+) (\S+)', err)
    assert later and now, err
    assert later.group(1, 2) == ("202", "5")  # not "-": the status given 200 ms later
    assert 190_000 <= int(later.group(3)) < 2_000_000, later.group(3)  # µs to the answer
    assert now.group(1, 2) == ("201", "3") and int(now.group(3)) < 190_000


def test_async_native_handler_logs_when_its_coroutine_answers(app_dir):
    proc, server = serve(
        app_dir, "optapps:native_async", "--access-log", "--access-log-format", "%(s)s %(D)s"
    )
    try:
        assert request(server)[:1] == (203,)
    finally:
        _, err = stop(proc, signal.SIGINT)
    line = re.search(r"^203 (\d+)$", err, re.M)
    assert line and 190_000 <= int(line.group(1)) < 2_000_000, err


def test_workers_get_env_file_app_dir_and_log_config(app_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "envapp.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [('%s %d' % (os.environ['I13_CLI_VAR'], os.getpid())).encode()]\n"
    )
    env = tmp_path / "i13-cli.env"
    env.write_text("I13_CLI_VAR=in-every-worker\n")
    log_file = tmp_path / "i13-cli-workers.log"
    config = write_log_config(tmp_path, "json", log_file)
    proc = run_cli(
        app_dir,
        "envapp:app",
        "--workers",
        "2",
        "--app-dir",
        str(elsewhere),
        "--env-file",
        str(env),
        "--access-log",
        "--log-config",
        str(config),
        "--port",
        "0",
    )
    try:
        server = At(port_of(proc))
        pids = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            # A new connection each: the kernel spreads them over both workers.
            status, _, body, _ = request(server, path="/w%d" % len(pids))
            word, pid = body.decode().split()
            assert status == 200 and word == "in-every-worker"
            pids.add(int(pid))
        assert len(pids) == 2
    finally:
        _, err = stop(proc, signal.SIGTERM)
    logged = re.findall(r'^ACCESS .* "GET /w\d HTTP/1.1" 200', log_file.read_text(), re.M)
    assert len(logged) >= 2, (log_file.read_text(), err)


def stop_time(app_dir, *args):
    """Seconds from SIGTERM to the exit of a server holding a request 20 s long."""
    proc, server = serve(app_dir, "optapps:native", *args)
    try:
        c = RawClient(server.port, timeout=30)
        c.send(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=25)
        return time.monotonic() - t0
    finally:
        stop(proc)


def test_timeout_graceful_shutdown_bounds_the_wait_for_requests_in_flight(app_dir):
    assert stop_time(app_dir, "--timeout-graceful-shutdown", "0.5") < 3
    assert stop_time(app_dir, "--graceful-timeout", "4") > 3.5  # waits as long as told


def test_options_are_in_the_help(app_dir):
    proc = run_cli(app_dir, "--help")
    out, _ = proc.communicate(timeout=30)
    for option in (
        "--timeout-keep-alive",
        "--keep-alive",
        "--timeout-graceful-shutdown",
        "--graceful-timeout",
        "--limit-concurrency",
        "--limit-request-body",
        "--no-server-header",
        "--no-date-header",
        "--header",
        "--env-file",
        "--app-dir",
        "--factory",
        "--log-config",
        "--access-log-format",
    ):
        assert option in out, option


def test_on_answer_reports_the_status_of_every_way_of_answering(serve, tmp_path):
    """request._on_answer(fn), which the native access log uses: fn(status, length)
    once, when the answer is given, however it is given."""
    import threading

    import pymongoose_uring as pmu

    seen = {}
    done = threading.Event()
    page = tmp_path / "page.txt"
    page.write_text("file body")

    def app(request):
        path = request.path
        request._on_answer(lambda status, length: seen.setdefault(path, (status, length)))
        if path == "/reply":
            return pmu.Response(b"abc", 201)
        if path == "/twice":
            with pytest.raises(TypeError):
                request._on_answer(42)
            request.reply(b"", 204)
            with pytest.raises(RuntimeError):
                request._on_answer(print)  # already answered
            return None
        if path == "/raise":
            raise RuntimeError("i13-cli: a handler that fails (expected in this test)")
        if path == "/stream":
            request.start(206, [("X", "1")])
            request.write(b"part", wait=False)
            request.end()
            return None
        if path == "/raw":
            request.reply_raw(b"HTTP/1.1 299 Odd\r\nContent-Length: 0\r\n\r\n")
            return None
        if path == "/file":
            return pmu.FileResponse(str(page))
        if path == "/later":

            def later():
                request.reply(b"later", 203)
                done.set()

            threading.Timer(0.05, later).start()
            return None
        return None  # dropped: the binding answers 500

    server = serve(app)
    for path in ("/reply", "/twice", "/raise", "/stream", "/raw", "/file", "/later", "/dropped"):
        request(server, path=path)
    assert done.wait(5)
    assert seen["/reply"] == (201, 3)
    assert seen["/raise"][0] == 500
    assert seen["/stream"] == (206, None)
    assert seen["/raw"] == (299, None)
    assert seen["/file"] == (0, None)  # the file rules chose the status (here 200)
    assert seen["/later"] == (203, 5)
    assert seen["/dropped"][0] == 500
    assert seen["/twice"] == (204, 0)


def test_uvicorn_interface_name_and_the_readme_table():
    assert parse(["optapps:wsgi", "--interface", "asgi3"], DEFAULTS).interface == "asgi"
    # Every option of ours that is not an engine knob is in the README's command-line
    # section, and so is each uvicorn/gunicorn option this module tests.
    from pymongoose_uring.cli.config import build_parser

    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    knobs = {"--" + k.replace("_", "-") for k in DEFAULTS}
    for action in build_parser(DEFAULTS)._actions:
        for option in action.option_strings:
            if option.startswith("--") and option not in knobs and option != "--help":
                assert f"`{option}" in readme, option
