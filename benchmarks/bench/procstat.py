"""CPU time and memory of a process tree, and busy time of CPUs, read from /proc.

CPU is utime + stime from /proc/PID/stat (every thread of the process, io_uring's io-wq and
SQPOLL threads included), summed over the process and all its descendants. Memory is the
resident set from /proc/PID/statm, summed the same way.
"""

import os
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name, which may hold spaces."""
    data = _read("/proc/%d/stat" % pid)
    return data[data.rindex(b")") + 2 :].split()


def tree(root):
    """The pid `root` and every live descendant of it."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_ticks(pids):
    """{pid: utime + stime in clock ticks} for the pids still alive."""
    out = {}
    for pid in pids:
        try:
            f = _stat_fields(pid)
            out[pid] = int(f[11]) + int(f[12])  # fields 14 and 15 of stat(5)
        except (OSError, ValueError, IndexError):
            pass
    return out


def cpu_delta_seconds(before, after):
    """CPU seconds used between two cpu_ticks() readings; a pid born in between counts whole."""
    ticks = sum(t - before.get(pid, 0) for pid, t in after.items())
    return ticks / CLK_TCK


def rss_bytes(pids):
    total = 0
    for pid in pids:
        try:
            total += int(_read("/proc/%d/statm" % pid).split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


def cpus_busy_ticks(cpus):
    """Busy ticks (everything but idle and iowait) summed over the given CPUs, softirq
    included: a complement to the per-process figure on a core the server has alone."""
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *values = line.split()
            if int(name[3:]) in cpus:
                v = [int(x) for x in values]
                busy += sum(v[:8]) - v[3] - v[4]
    return busy


class RssSampler(threading.Thread):
    """Samples the resident memory of a process tree every `interval` seconds until stopped;
    `.peak` is the largest sum seen."""

    def __init__(self, root, interval=0.1):
        super().__init__(daemon=True)
        self.root, self.interval, self.peak = root, interval, 0
        self._stop_event = threading.Event()

    def run(self):
        while True:
            self.peak = max(self.peak, rss_bytes(tree(self.root)))
            if self._stop_event.wait(self.interval):
                break

    def stop(self):
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, rss_bytes(tree(self.root)))
        return self.peak


def parse_cpu_list(text):
    """'0-3,6' -> {0, 1, 2, 3, 6}"""
    cpus = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-")
            cpus.update(range(int(lo), int(hi) + 1))
        else:
            cpus.add(int(part))
    return cpus


def now():
    return time.monotonic()
