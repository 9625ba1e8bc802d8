"""The runner's provisioning: from a clean tree every one of the project's own servers is
built and answers, and one that cannot be had fails the run (a peer is only listed).

    python3 -m pytest benchmarks/tests/test_provision.py -q
"""

import os
import random
import shutil
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run  # noqa: E402
from bench import REPO_DIR, registry  # noqa: E402

# The default set's, the app rows' (--suite apps) and the HTTPS rows' (--suite tls) own
# servers.
PROJECT_DEFAULT = [
    d.name
    for d in registry.SERVERS
    if d.project and (d.default or "apps" in d.suites or "tls" in d.suites)
]


def free_base_port(count):
    """A port p such that p .. p+count-1 are all free on 127.0.0.1 now, taken below the
    ephemeral range: the servers start after the build, and in between another process's
    port 0 must not land on them."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random(os.getpid())
    for _ in range(200):
        base = rng.randrange(20000, max(20001, low - count))
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no %d consecutive free ports" % count)


def quick_main(servers, out, *more, rounds=1):
    """run.main on `servers` (names) for a short run: 1 s points, 1 s warm-up, `rounds`
    rounds, no install, no plots, free ports, results in `out`, plus the options `more`.
    The caller's CPU affinity is restored after (run.main pins itself to the client CPUs).
    Returns run.main's exit status."""
    affinity = os.sched_getaffinity(0)
    try:
        return run.main(
            ["--servers", ",".join(servers), "--no-install", "--no-plots"]
            + ["--rounds", str(rounds), "--duration", "1", "--warmup", "1"]
            + ["--base-port", str(free_base_port(len(servers))), "--out", str(out)]
            + list(more)
        )
    finally:
        os.sched_setaffinity(0, affinity)


def clean_tree(dest):
    """What a fresh clone of this checkout would hold (tracked files, plus new files git does
    not ignore, so that uncommitted work is tested too): no build*/ folder, no results."""
    if shutil.which("git") is None or not os.path.exists(os.path.join(REPO_DIR, ".git")):
        pytest.skip("not a git checkout")
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_DIR,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in names)):
        src = os.path.join(REPO_DIR, name)
        if not os.path.isfile(src):
            continue  # deleted in the work tree, not yet committed
        os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, name))
    return dest


@pytest.mark.slow
def test_every_project_server_answers_after_provisioning_a_clean_tree(tmp_path):
    # On a fresh clone the package was built into build-bench/python, then configuring
    # build-bench for hello_server deleted it: both Python servers came out "unavailable".
    assert {"pymongoose_uring", "pymongoose", "hello_c"} <= set(PROJECT_DEFAULT)
    assert {"pymongoose_uring_tls", "hello_c_tls"} <= set(PROJECT_DEFAULT)  # over HTTPS
    tree = clean_tree(str(tmp_path / "clone"))
    assert not any(n.startswith("build") for n in os.listdir(tree))
    env = dict(os.environ)
    env.pop("PMU_HELLO_SERVER", None)
    p = subprocess.run(
        [
            sys.executable,
            os.path.join(tree, "benchmarks", "run.py"),
            "--provision-only",
            "--no-install",
            "--servers",
            ",".join(PROJECT_DEFAULT),
            "--base-port",
            str(free_base_port(len(PROJECT_DEFAULT))),
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = p.stdout + p.stderr
    log = tmp_path / "out" / "logs" / "setup.log"
    assert p.returncode == 0, output + (log.read_text()[-3000:] if log.exists() else "")
    answering = [line for line in p.stdout.splitlines() if line.startswith("servers answering:")]
    assert answering, output
    assert set(answering[0].split(":", 1)[1].replace(",", " ").split()) == set(PROJECT_DEFAULT)
    # Both builds are still there, side by side, after the other one ran.
    assert os.access(os.path.join(tree, "build-bench", "engine", "hello_server"), os.X_OK)
    assert os.path.isdir(os.path.join(tree, "build-bench", "python", "pymongoose_uring"))


@pytest.fixture
def absent_peer(monkeypatch):
    peer = registry.Server(
        "absent_peer",
        "a peer that cannot be installed",
        ("{python}", "-c", "raise SystemExit(3)"),
        kind="peer",
        pip=(("pmu_bench_no_such_module", "pmu-bench-no-such-module"),),
    )
    monkeypatch.setitem(registry.BY_NAME, peer.name, peer)
    affinity = os.sched_getaffinity(0)
    yield peer
    os.sched_setaffinity(0, affinity)  # run.main pins itself to the client CPUs


def test_an_unavailable_peer_is_listed_and_the_run_goes_on(absent_peer, tmp_path, capsys):
    rc = run.main(
        ["--provision-only", "--no-install", "--servers", "absent_peer", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "unavailable peer: absent_peer (missing pmu_bench_no_such_module" in out


def test_an_unavailable_project_server_fails_the_run_naming_it_and_why(
    absent_peer, tmp_path, capsys
):
    missing = str(tmp_path / "no-hello-server")
    rc = run.main(
        [
            "--provision-only",
            "--no-install",
            "--servers",
            "absent_peer,hello_c",
            "--hello-server",
            missing,
            "--out",
            str(tmp_path),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1, captured.out
    assert (
        "ERROR: hello_c: this project's own server is unavailable: %s is not an executable"
        % missing
    ) in captured.err
    assert "unavailable peer: absent_peer" in captured.out
    # --keep-going goes on past it, and still exits 1.
    rc = run.main(
        [
            "--provision-only",
            "--no-install",
            "--keep-going",
            "--servers",
            "hello_c,absent_peer",
            "--hello-server",
            missing,
            "--out",
            str(tmp_path),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1 and "FAILED: hello_c" in captured.out
    assert "unavailable peer: absent_peer" in captured.out
