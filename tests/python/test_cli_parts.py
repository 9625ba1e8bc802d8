"""The command line's parts alone, without serving: config (argv -> Config),
the reloader's change detection, the supervisor's replacement and restart
decisions (with the forking and killing recorded instead of done), and one
real fork with a stand-in worker."""

import importlib.util
import os
import signal
import socket
import stat

import pytest

from pymongoose_uring.cli import (
    config as cli_config,
    supervisor as cli_supervisor,
    worker as cli_worker,
)
from pymongoose_uring.cli.config import Config, parse
from pymongoose_uring.cli.reloader import SourceWatcher
from pymongoose_uring.cli.supervisor import Supervisor, listening_sockets

pytestmark = pytest.mark.no_uring_ok

# Real knob names (Server takes them), so that the test needs no extension.
DEFAULTS = {
    "backlog": 4096,
    "ring_entries": 1024,
    "server_header": "pymongoose_uring",
    "body_spool_dir": None,
    "threads": 1,
    "port": 8000,
}


# ---- config ---------------------------------------------------------------------------


def test_parse_gives_a_config_with_the_engine_knobs_given():
    c = parse(
        [
            "mod:app",
            "--workers",
            "3",
            "--uds",
            "/tmp/x.sock",
            "--ring-entries",
            "256",
            "--server-header",
            "me",
            "--no-proxy-headers",
            "--reload-dir",
            "a",
            "--reload-dir",
            "b",
            "--wsgi-threads",
            "4",
        ],
        DEFAULTS,
    )
    assert (c.app, c.workers, c.unix_path, c.proxy_headers, c.pool_threads) == (
        "mod:app",
        3,
        "/tmp/x.sock",
        False,
        4,
    )
    assert c.reload_dir == ["a", "b"]
    assert c.engine == {"ring_entries": 256, "server_header": "me"}
    assert c.supervised


def test_parse_defaults_and_what_implies_the_supervisor():
    c = parse(["--hello"], DEFAULTS)
    assert c == Config(hello=True)
    assert not c.supervised
    assert parse(["--hello", "--max-requests", "5"], DEFAULTS).supervised
    assert parse(["--hello", "--reload"], DEFAULTS).supervised


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give MODULE:APP, --hello, --static URL_PREFIX=DIR or --probe"),
        (["--hello", "--workers", "0"], "--workers must be at least 1"),
        (["--hello", "--threads", "0"], "--threads must be at least 1"),
        (["--hello", "--pool-threads", "0"], "--pool-threads must be at least 1"),
        (["--hello", "--max-requests-jitter", "-1"], "cannot be negative"),
        (["--hello", "--forwarded-allow-ips", "10.0.0.0/99"], "forwarded_allow_ips"),
        (["--hello", "--ring-entries", "many"], "invalid int value"),
        (["--hello", "--port"], "expected one argument"),
    ],
)
def test_parse_refuses_with_the_usage_message(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        parse(argv, DEFAULTS)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m pymongoose_uring")
    assert message in err


def test_parse_checks_that_fd_is_open(capsys):
    r, w = os.pipe()
    os.close(w)
    try:
        assert parse(["--hello", "--fd", str(r)], DEFAULTS).fd == r
    finally:
        os.close(r)
    with pytest.raises(SystemExit):
        parse(["--hello", "--fd", str(r)], DEFAULTS)
    assert "--fd %d: Bad file descriptor" % r in capsys.readouterr().err


def test_probe_skips_the_other_checks():
    assert parse(["--probe", "--workers", "0"], DEFAULTS).probe


def test_a_knob_this_server_does_not_take_is_refused():
    with pytest.raises(SystemExit, match="--no-such-knob is not supported"):
        parse(["--hello", "--no-such-knob", "2"], dict(DEFAULTS, no_such_knob=1))


def test_listening_options_are_not_engine_knobs():
    p = cli_config.build_parser(DEFAULTS)
    assert p.parse_args(["--threads", "2"]).threads == 2  # the CLI's own option, once
    assert "--backlog" in p.format_help() and "engine default: 4096" in p.format_help()


# ---- reloader -------------------------------------------------------------------------


def test_reloader_sees_changed_added_and_removed_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.py").write_text("x = 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("y = 1\n")
    w = SourceWatcher([str(tmp_path)], interval=0)
    assert not w.changed()
    (tmp_path / "app.py").write_text("x = 22\n")
    assert w.changed() and w.last == "app.py"
    assert not w.changed()  # told once
    (tmp_path / "pkg" / "new.py").write_text("")
    assert w.changed() and w.last == os.path.join("pkg", "new.py")
    (tmp_path / "pkg" / "mod.py").unlink()
    assert w.changed() and w.last == os.path.join("pkg", "mod.py")


def test_reloader_ignores_other_files_and_skipped_folders(tmp_path):
    for folder in ("__pycache__", ".git", "venv", "node_modules"):
        (tmp_path / folder).mkdir()
    w = SourceWatcher([str(tmp_path)], interval=0)
    (tmp_path / "notes.txt").write_text("not python")
    (tmp_path / "__pycache__" / "a.py").write_text("")
    (tmp_path / ".git" / "b.py").write_text("")
    (tmp_path / "venv" / "c.py").write_text("")
    assert not w.changed()


def test_reloader_polls_at_most_once_an_interval(tmp_path):
    (tmp_path / "app.py").write_text("x = 1\n")
    w = SourceWatcher([str(tmp_path)], interval=3600)
    assert not w.changed()  # the first poll
    (tmp_path / "app.py").write_text("x = 22\n")
    assert not w.changed()  # not looked at again yet
    w.next_poll = 0.0
    assert w.changed()


def test_reloader_removes_the_stale_bytecode(tmp_path):
    source = tmp_path / "app.py"
    source.write_text("x = 1\n")
    cached = importlib.util.cache_from_source(str(source))
    os.makedirs(os.path.dirname(cached))
    with open(cached, "wb") as f:
        f.write(b"stale")
    w = SourceWatcher([str(tmp_path)], interval=0)
    source.write_text("x = 22\n")
    assert w.changed()
    assert not os.path.exists(cached)


# ---- supervisor's decisions, forks and kills recorded -----------------------------------


class Recorded(Supervisor):
    """A Supervisor whose workers are pids in a table: spawn, kill and the
    'serving' answer are recorded or scripted, nothing forks."""

    def __init__(self, workers=2, serves=lambda index: True):
        super().__init__(Config(hello=True, workers=workers), serve=None)
        self.events = []
        self.logged = []
        self.serves = serves
        self.next_pid = 1000
        for index in range(workers):
            self.spawn(index)
        self.events.clear()

    def spawn(self, index):
        self.next_pid += 1
        self.children[self.next_pid] = index
        self.events.append(("spawn", index, self.next_pid))
        return self.next_pid

    def wait_serving(self, pid, timeout):
        return self.serves(self.children[pid])

    def kill(self, pid, sig):
        self.events.append(("kill", pid, sig))

    def log(self, message):
        self.logged.append(message)


def test_reload_starts_each_new_worker_before_stopping_the_old_one():
    s = Recorded(workers=2)
    s.reload_requested = "SIGHUP received"
    s.reload()
    assert s.events == [
        ("spawn", 0, 1003),
        ("kill", 1001, signal.SIGTERM),
        ("spawn", 1, 1004),
        ("kill", 1002, signal.SIGTERM),
    ]
    assert s.retired == {1001, 1002}  # their exits are not deaths to restart
    assert s.reload_requested is None
    assert s.logged == [
        "SIGHUP received; replacing the 2 workers one by one",
        "reload done: every worker replaced",
    ]


def test_reload_stops_at_a_new_worker_that_does_not_serve_and_keeps_the_old():
    s = Recorded(workers=3, serves=lambda index: index != 1)
    s.reload_requested = "app.py changed"
    s.reload()
    assert s.events == [
        ("spawn", 0, 1004),
        ("kill", 1001, signal.SIGTERM),
        ("spawn", 1, 1005),
        ("kill", 1005, signal.SIGKILL),
    ]
    assert s.retired == {1001, 1005}
    assert 1002 in s.children and 1003 in s.children  # still serving
    assert "the reload stops here and the running workers stay" in s.logged[-1]


def test_a_worker_that_cannot_load_its_app_stops_them_all():
    s = Recorded(workers=2)
    assert s.restart(1001, 0, cli_worker.EXIT_BOOT_FAILED << 8) is False
    assert s.stopping
    assert ("kill", 1002, signal.SIGTERM) in s.events
    assert not [e for e in s.events if e[0] == "spawn"]


def test_a_recycled_worker_is_replaced_at_once(monkeypatch):
    monkeypatch.setattr(cli_supervisor.time, "sleep", lambda s: pytest.fail("slept"))
    s = Recorded(workers=1)
    s.failures[0] = 5
    assert s.restart(1001, 0, cli_worker.EXIT_RECYCLED << 8)
    assert s.events == [("spawn", 0, 1002)] and s.failures[0] == 0
    assert s.logged == []


def test_a_worker_that_keeps_dying_is_restarted_later_each_time(monkeypatch):
    slept = []
    monkeypatch.setattr(cli_supervisor.time, "sleep", slept.append)
    s = Recorded(workers=1)
    now = cli_supervisor.time.monotonic()
    s.started[0] = now  # died at once
    s.restart(1001, 0, signal.SIGSEGV)
    s.started[0] = cli_supervisor.time.monotonic()
    s.restart(1002, 0, 1 << 8)
    assert slept == [0.2, 0.4]
    assert s.logged == [
        "worker 0 (pid 1001) killed by SIGSEGV; restarting in 0.2s",
        "worker 0 (pid 1002) exited with 1; restarting in 0.4s",
    ]
    s.started[0] = now - 60  # served a minute: restarted at once, count reset
    s.restart(1003, 0, signal.SIGKILL)
    assert slept == [0.2, 0.4] and s.failures[0] == 0
    assert [e for e in s.events if e[0] == "spawn"] == [
        ("spawn", 0, 1002),
        ("spawn", 0, 1003),
        ("spawn", 0, 1004),
    ]


def test_stopping_sends_sigterm_once():
    s = Recorded(workers=2)
    s.on_signal(signal.SIGINT, None)
    s.on_signal(signal.SIGTERM, None)
    assert s.events == [("kill", 1001, signal.SIGTERM), ("kill", 1002, signal.SIGTERM)]
    assert s.logged == ["SIGINT received; stopping the workers"]


# ---- one real fork, with a stand-in for the serving worker ------------------------------


def test_spawn_gives_the_worker_its_socket_and_hears_it_serve():
    def serve(config, ready_fd):
        # In the child: its own listening socket, its index, the ready pipe.
        ok = (
            stat.S_ISSOCK(os.fstat(config.fd).st_mode)
            and socket.socket(fileno=os.dup(config.fd)).getsockname()[1] == port
            and os.environ.get("PYMONGOOSE_URING_WORKER") == "1"
        )
        os.write(ready_fd, b"r" if ok else b"x")
        os.close(ready_fd)
        return 7

    config = Config(hello=True, host="127.0.0.1", port=0, workers=2)
    s = Supervisor(config, serve)
    s.log = lambda message: None
    s.sockets = listening_sockets(config, 16)
    try:
        ports = {sock.getsockname()[1] for sock in s.sockets}
        assert len(s.sockets) == 2 and len(ports) == 1  # SO_REUSEPORT, one port
        port = ports.pop()
        pid = s.spawn(1)
        assert s.children == {pid: 1}
        assert s.wait_serving(pid, 30)
        dead = []
        deadline = cli_supervisor.time.monotonic() + 30
        while not dead and cli_supervisor.time.monotonic() < deadline:
            dead = s.reap()
            cli_supervisor.time.sleep(0.01)
        assert [(p, i, os.WEXITSTATUS(st)) for p, i, st in dead] == [(pid, 1, 7)]
        assert s.children == {} and s.ready == {}
    finally:
        for sock in s.sockets:
            sock.close()


# ---- worker ---------------------------------------------------------------------------


def test_load_finds_a_dotted_attribute():
    assert cli_worker.load("os.path:join") is os.path.join
    assert cli_worker.load("os:path.join") is os.path.join
    with pytest.raises(ValueError, match="MODULE:ATTRIBUTE"):
        cli_worker.load(":app")


# ---- WebSocket options, by uvicorn's names --------------------------------------------

WS_DEFAULTS = dict(
    DEFAULTS, ws_max_message=16 << 20, ws_ping_interval_ms=20000, ws_ping_timeout_ms=20000
)
WS_DEFAULTS["ws_deflate"] = 1


def test_uvicorn_ws_options_set_the_engine_knobs():
    c = parse(
        [
            "mod:app",
            "--ws-max-size",
            "1024",
            "--ws-ping-interval",
            "2.5",
            "--ws-ping-timeout",
            "0",
            "--no-ws-per-message-deflate",
            "--ws-max-queue",
            "8",
        ],
        WS_DEFAULTS,
    )
    assert c.engine == {
        "ws_max_message": 1024,
        "ws_ping_interval_ms": 2500,
        "ws_ping_timeout_ms": 0,
        "ws_deflate": 0,
    }
    assert (c.ws, c.ws_max_queue) == ("auto", 8)
    assert parse(["m:a"], WS_DEFAULTS).engine == {}  # nothing given: the engine's defaults
    assert parse(["m:a", "--ws-ping-interval", "0.0001"], WS_DEFAULTS).engine == {
        "ws_ping_interval_ms": 1  # a positive interval never becomes 0 (off)
    }


@pytest.mark.parametrize(
    "argv, deflate",
    [
        (["--ws-per-message-deflate"], 1),
        (["--ws-per-message-deflate", "false"], 0),
        (["--ws-per-message-deflate", "True"], 1),
        (["--ws-per-message-deflate", "0"], 0),
        (["--no-ws-per-message-deflate"], 0),
        (["--ws-deflate", "0", "--no-ws-per-message-deflate"], 0),  # agreeing: fine
    ],
)
def test_per_message_deflate_takes_uvicorns_forms(argv, deflate):
    assert parse(["m:a", *argv], WS_DEFAULTS).engine["ws_deflate"] == deflate


def test_ws_none_and_uvicorns_implementation_names():
    assert parse(["m:a", "--ws", "none"], WS_DEFAULTS).ws == "none"
    for name in ("auto", "websockets", "websockets-sansio", "wsproto"):
        assert parse(["m:a", "--ws", name], WS_DEFAULTS).ws == "auto"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ws-per-message-deflate", "maybe"], "not a boolean"),
        (["--ws-max-queue", "0"], "--ws-max-queue must be at least 1"),
        (["--ws-ping-timeout", "-1"], "--ws-ping-timeout cannot be negative"),
        (["--ws-max-size", "-5"], "--ws-max-size cannot be negative"),
        (["--ws-max-size", "10", "--ws-max-message", "20"], "disagree"),
        (["--ws", "h2"], "invalid choice"),
    ],
)
def test_ws_options_refused(capsys, argv, message):
    with pytest.raises(SystemExit):
        parse(["m:a", *argv], WS_DEFAULTS)
    assert message in capsys.readouterr().err


def test_ws_options_need_an_engine_with_websocket(capsys):
    with pytest.raises(SystemExit):
        parse(["m:a", "--ws-max-size", "10"], DEFAULTS)
    assert "no ws_max_message knob" in capsys.readouterr().err
