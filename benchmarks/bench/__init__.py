"""The benchmark runner's library: server registry, workloads, /proc measurement, wrk,
provisioning, reports and charts. Entry points: benchmarks/run.py and benchmarks/sweep.py."""

import os

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_DIR = os.path.dirname(BENCH_DIR)
SERVERS_DIR = os.path.join(BENCH_DIR, "servers")
LUA_DIR = os.path.join(BENCH_DIR, "lua")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")


class BenchError(Exception):
    """A failure that must stop the run loudly: a wrong answer, a server that did not start."""


class WrongAnswer(BenchError):
    """A server answered, and the answer was wrong: the run cannot go on measuring it."""
