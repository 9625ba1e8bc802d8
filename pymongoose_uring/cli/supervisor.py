"""--workers, --max-requests, --reload: a parent process that holds the
listening sockets and forks the workers that serve them."""

from __future__ import annotations

import os
import select
import signal
import socket
import stat
import sys
import time
from types import FrameType
from typing import Callable, Dict, List, Optional, Set, Tuple

from .._server import say
from .config import Config
from .reloader import SourceWatcher
from .worker import EXIT_BOOT_FAILED, EXIT_RECYCLED

# serve(config, ready_fd) -> exit status: what a forked worker runs.
ServeFunction = Callable[[Config, int], int]


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGTERM this worker if the supervisor dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux, or no libc
        pass
    if os.getppid() != parent:
        os._exit(0)


def listening_sockets(config: Config, backlog: int) -> List[socket.socket]:
    """The supervisor's listening sockets, made before any worker: one
    SO_REUSEPORT socket per worker for TCP (the kernel spreads connections
    over them), one shared Unix socket, or the inherited --fd. The
    supervisor keeps them open, so a socket's waiting connections outlive
    its worker and the replacement answers them."""
    if config.fd is not None:
        return [socket.socket(fileno=os.dup(config.fd))]
    if config.unix_path:
        path = config.unix_path
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # left over from an earlier run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        return [sock]
    infos = socket.getaddrinfo(
        config.host or None, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _, _, _, address = infos[0]
    sockets: List[socket.socket] = []
    try:
        for _ in range(config.workers):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(backlog)
            address = sock.getsockname()  # with port 0: the others share the one picked
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Supervisor:
    """Forks --workers processes, restarts the ones that die (at once when
    they were replaced for --max-requests), replaces them one by one on
    SIGHUP (each new worker serves before the old one stops, so new code and
    new certificates are loaded without refusing a connection), passes
    SIGUSR2 on to every worker (a TLS server reloads its certificates in
    place), stops them all gracefully on
    SIGTERM/SIGINT (SIGKILL after the shutdown deadline). It holds the
    listening sockets the workers serve. Each worker runs serve(config,
    ready_fd) in the forked child."""

    def __init__(self, config: Config, serve: ServeFunction) -> None:
        self.config = config
        self.serve = serve
        self.children: Dict[int, int] = {}  # pid -> worker index
        self.started: Dict[int, float] = {}  # index -> start time
        self.failures: Dict[int, int] = {}  # index -> quick deaths in a row
        self.stopping = False
        self.reload_requested: Optional[str] = None  # why, when asked
        self.retired: Set[int] = set()  # pids replaced on SIGHUP: not restarted
        self.ready: Dict[int, int] = {}  # pid -> read end of its "serving" pipe
        self.grace = (config.engine.get("shutdown_timeout_ms") or 10000) / 1000.0 + 5.0
        self.sockets: List[socket.socket] = []

    def log(self, message: str) -> None:
        say(message)

    def kill(self, pid: int, sig: int) -> None:
        """Send sig to worker pid, if it still exists."""
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def spawn(self, index: int) -> int:
        """Fork worker index on its socket; returns its pid."""
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(ready_r)
                for fd in self.ready.values():
                    os.close(fd)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                # Until the worker's server takes it (a TLS server reloads its
                # certificates on it), a SIGUSR2 must not kill the worker.
                signal.signal(signal.SIGUSR2, signal.SIG_IGN)
                die_with_parent(parent)
                os.environ["PYMONGOOSE_URING_WORKER"] = str(index)
                mine = self.sockets[index % len(self.sockets)]
                for sock in self.sockets:
                    if sock is not mine:
                        sock.close()
                self.config.fd = mine.fileno()
                code = self.serve(self.config, ready_w)
            except BaseException:  # pragma: no cover - reported, then exit
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(ready_w)
        self.ready[pid] = ready_r
        self.children[pid] = index
        self.started[index] = time.monotonic()
        self.log(f"worker {index} started (pid {pid})")
        return pid

    def wait_serving(self, pid: int, timeout: float) -> bool:
        """Whether worker pid says it serves within timeout (False if it died,
        or the supervisor is stopping)."""
        fd = self.ready.get(pid)
        deadline = time.monotonic() + timeout
        while fd is not None and not self.stopping and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                return os.read(fd, 1) == b"r"
        return False

    def on_hangup(self, signum: int, frame: Optional[FrameType]) -> None:
        self.reload_requested = "SIGHUP received"

    def on_usr2(self, signum: int, frame: Optional[FrameType]) -> None:
        """SIGUSR2: every worker reads its TLS certificates again, in place (nothing
        is closed; a worker without TLS ignores it)."""
        if self.stopping:
            return
        if not self.config.engine.get("ssl_certfile"):
            self.log("SIGUSR2 received; no HTTPS (--ssl-certfile): no certificate to reload")
            return
        self.log(
            f"SIGUSR2 received; telling the {len(self.children)} worker(s) to reload certificates"
        )
        for pid in list(self.children):
            self.kill(pid, signal.SIGUSR2)

    def reload(self) -> None:
        """Replace every worker, one at a time: the new one serves the same
        socket before the old one is stopped gracefully."""
        why, self.reload_requested = self.reload_requested, None
        n = self.config.workers
        self.log(f"{why}; replacing " + ("the worker" if n == 1 else f"the {n} workers one by one"))
        for index in range(self.config.workers):
            old = [pid for pid, i in self.children.items() if i == index]
            new = self.spawn(index)
            if not self.wait_serving(new, 60):
                if self.stopping:
                    return
                self.log(
                    f"worker {index} (pid {new}) did not start serving; the reload stops "
                    "here and the running workers stay"
                )
                self.retired.add(new)
                self.kill(new, signal.SIGKILL)
                return
            for pid in old:
                self.retired.add(pid)
                self.kill(pid, signal.SIGTERM)
        self.log("reload done: every worker replaced")

    def on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if not self.stopping:
            self.stopping = True
            self.log(f"{signal.Signals(signum).name} received; stopping the workers")
            for pid in list(self.children):
                self.kill(pid, signal.SIGTERM)

    def reap(self) -> List[Tuple[int, int, int]]:
        """The workers that ended since the last call, as (pid, index, wait
        status), less the retired ones (replaced on purpose)."""
        dead = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                break
            if pid == 0:
                break
            index = self.children.pop(pid, None)
            fd = self.ready.pop(pid, None)
            if fd is not None:
                os.close(fd)
            if pid in self.retired:
                self.retired.discard(pid)
                continue
            if index is not None:
                dead.append((pid, index, status))
        return dead

    def restart(self, pid: int, index: int, status: int) -> bool:
        """Worker index (pid) ended with wait status: start its successor (at
        once after --max-requests, after a growing delay when it keeps dying
        within a second). False when it could not load its app: then every
        worker is stopped instead."""
        how = (
            f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            if os.WIFSIGNALED(status)
            else f"exited with {os.WEXITSTATUS(status)}"
        )
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_BOOT_FAILED:
            self.log(f"worker {index} (pid {pid}) could not start ({how}); stopping")
            self.on_signal(signal.SIGTERM, None)
            return False
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_RECYCLED:
            self.failures[index] = 0
            self.spawn(index)  # its socket kept the connections that came meanwhile
            return True
        quick = time.monotonic() - self.started.get(index, 0) < 1.0
        self.failures[index] = self.failures.get(index, 0) + 1 if quick else 0
        delay = min(0.1 * 2 ** self.failures[index], 5.0) if quick else 0
        self.log(
            f"worker {index} (pid {pid}) {how}; restarting" + (f" in {delay:.1f}s" if delay else "")
        )
        if delay:
            time.sleep(delay)
        if not self.stopping:
            self.spawn(index)
        return True

    def run(self) -> int:
        """Listen, fork the workers, supervise them until SIGTERM/SIGINT;
        returns the exit status (1 when it cannot listen or a worker cannot
        load its app)."""
        try:
            self.sockets = listening_sockets(self.config, self.config.engine.get("backlog") or 4096)
        except OSError as exc:
            where = self.config.unix_path or f"{self.config.host}:{self.config.port}"
            self.log(f"cannot listen on {where}: {exc.strerror or exc}")
            return 1
        try:
            return self._supervise()
        finally:
            for sock in self.sockets:
                sock.close()
            if self.config.unix_path and self.config.fd is None:
                try:
                    os.unlink(self.config.unix_path)
                except OSError:
                    pass

    def _supervise(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        signal.signal(signal.SIGHUP, self.on_hangup)
        signal.signal(signal.SIGUSR2, self.on_usr2)
        name = self.sockets[0].getsockname()
        scheme = "https" if self.config.engine.get("ssl_certfile") else "http"
        where = (
            f"unix:{name}"
            if self.sockets[0].family == socket.AF_UNIX
            else f"{scheme}://[{name[0]}]:{name[1]}"
            if ":" in name[0]
            else f"{scheme}://{name[0]}:{name[1]}"
        )
        self.log(f"supervising {self.config.workers} workers on {where} (pid {os.getpid()})")
        for i in range(self.config.workers):
            self.spawn(i)
        code = 0
        watcher = (
            SourceWatcher(self.config.reload_dir or [os.getcwd()]) if self.config.reload else None
        )
        while not self.stopping:
            if watcher is not None and watcher.changed():
                self.reload_requested = f"{watcher.last} changed"
            if self.reload_requested:
                self.reload()
            for pid, index, status in self.reap():
                if self.stopping:
                    break
                if not self.restart(pid, index, status):
                    code = 1
                    break
            time.sleep(0.05)
        deadline = time.monotonic() + self.grace
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in list(self.children):
            self.log(f"worker pid {pid} did not stop in time; killing it")
            self.kill(pid, signal.SIGKILL)
        while self.children:
            self.reap()
            time.sleep(0.02)
        self.log("all workers stopped")
        return code
