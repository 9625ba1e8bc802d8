"""The app's own cost: a benchmark app (benchmarks/servers/apps.py) called in-process, with no
server, as a server would call it: a minimal WSGI environ and start_response, or a minimal
ASGI scope with receive and send, N calls in a row, CPU µs per call (process CPU time: every
thread the app might use), the median of several repeats. Each answer is checked (status 200,
the body the servers' checks expect), so a broken app cannot look cheap.

The runner (run.py) measures every app its selected servers run, for every selected HTTP
workload's request, in a child process pinned to the server CPUs: before any server starts
(REPEATS repeats), and then right before and right after each round of each server that runs
an app (one repeat each: `pair`). This machine's speed moves by tens of percent from one
minute to the next (the same Flask app at 100-107 µs per call in the repeats before the
servers, 70-75 in those between the rounds, one run): a figure taken minutes away from a
round misreads the server's share of it (a Flask floor measured at -4.8 µs). So each round
of an app row carries the app's cost at that moment (the mean of its two samples) and the
server's own cost of that round (its CPU per request minus that); the row's figures are
the medians over its rounds. The app's own cost printed for the whole run is the median of
every repeat taken.

    python3 benchmarks/bench/appcost.py flask_app GET / 0    # one figure, JSON on stdout
"""

import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time

SERVERS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "servers")

CALLS = 2000  # calls per repeat
REPEATS = 5  # repeats; the median is reported
WARMUP = 200  # calls before the first repeat (imports, caches, JIT-free warm paths)


def app_request(workload):
    """The request (method, path, body length) a wrk workload sends, or None for workloads
    no app answers by itself (WebSocket, files)."""
    if workload.client != "wrk" or workload.needs not in ("hello", "bytes", "echo"):
        return None
    if workload.needs == "echo":
        return ("POST", workload.path, int(workload.script_args[0]))
    return ("GET", workload.path, 0)


def _load(name):
    if SERVERS_DIR not in sys.path:
        sys.path.insert(0, SERVERS_DIR)
    import apps

    return getattr(apps, name), apps.INTERFACES[name]


def _expected(path, body):
    sys.path.insert(0, SERVERS_DIR)
    import common

    if path == common.ECHO_PATH:
        return body
    return common.GET_ROUTES[path][0]


def environ_for(method, path, body):
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
        environ["CONTENT_TYPE"] = "application/octet-stream"
    return environ


def wsgi_body(app, environ, start_response):
    """One WSGI call as a server makes it: the body joined, then the result's close()."""
    result = app(environ, start_response)
    try:
        return b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def wsgi_answer(app, environ):
    """One WSGI call answered as the floor rows answer it from a native handler (no adapter):
    (status code, the app's headers less Content-Length, which the engine writes, the joined
    body)."""
    answer = []

    def start_response(status, headers, exc_info=None):
        answer[:] = [int(status[:3]), headers]

    body = wsgi_body(app, environ, start_response)
    status, headers = answer
    return status, [(k, v) for k, v in headers if k.lower() != "content-length"], body


def _wsgi_calls(app, method, path, body, calls):
    """CPU seconds for `calls` calls; the environs are built before the clock starts. Returns
    (seconds, last status, last body)."""
    environs = [environ_for(method, path, body) for _ in range(calls)]
    got = {}

    def start_response(status, headers, exc_info=None):
        got["status"] = status
        got["headers"] = headers
        return got.setdefault("write", lambda data: None)

    out = b""
    t0 = time.process_time()
    for environ in environs:
        out = wsgi_body(app, environ, start_response)
    return time.process_time() - t0, int(got["status"].split()[0]), out


def _scope(method, path, body):
    headers = [(b"host", b"127.0.0.1:8000")]
    if body:
        headers += [
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/octet-stream"),
        ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def _asgi_calls(app, method, path, body, calls):
    scopes = [_scope(method, path, body) for _ in range(calls)]
    request = {"type": "http.request", "body": body, "more_body": False}
    sent = []

    async def run():
        for scope in scopes:
            given = []

            async def receive(given=given):
                if given:  # asked again after the body: the client is still there
                    await asyncio.sleep(3600)
                given.append(1)
                return request

            async def send(message):
                sent.append(message)

            del sent[:]
            await app(scope, receive, send)

    loop = asyncio.new_event_loop()
    try:
        t0 = time.process_time()
        loop.run_until_complete(run())
        seconds = time.process_time() - t0
    finally:
        loop.close()
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return seconds, status, out


def measure(name, method="GET", path="/", body_len=0, calls=CALLS, repeats=REPEATS):
    """CPU µs per call of apps.py's `name` answering (method, path, a body of body_len bytes):
    {"us_per_call": median, "runs": [each repeat's], "calls": calls}. Raises RuntimeError when
    the app answers wrongly."""
    app, interface = _load(name)
    body = b"a" * body_len
    calls_fn = _wsgi_calls if interface == "wsgi" else _asgi_calls
    _seconds, status, out = calls_fn(app, method, path, body, WARMUP)
    expected = _expected(path, body)
    if status != 200 or out.rstrip(b"\n") != expected:
        raise RuntimeError(
            "%s answered %s %s with %d and %d bytes (expected 200 and %d bytes)"
            % (name, method, path, status, len(out), len(expected))
        )
    runs = [calls_fn(app, method, path, body, calls)[0] * 1e6 / calls for _ in range(repeats)]
    return {"us_per_call": statistics.median(runs), "runs": runs, "calls": calls}


def measure_all(wanted, cpus=None, log=None, timeout=300, repeats=REPEATS):
    """Measure every (app, method, path, body_len) of `wanted` in one child process pinned to
    `cpus` (the server CPUs, so the figure is comparable with the servers'), `repeats` repeats
    each. Returns ({key: result}, {key: error}) with key the tuple given."""
    wanted = sorted(set(wanted))
    if not wanted:
        return {}, {}

    def child():
        if cpus:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--many", json.dumps(wanted), str(repeats)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=child,
        cwd=SERVERS_DIR,
    )
    if log:
        with open(log, "a") as f:
            f.write("==== app's own cost: %s\n%s%s\n" % (wanted, proc.stdout, proc.stderr))
    results, errors = {}, {}
    try:
        answers = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        error = "exit status %d: %s" % (proc.returncode, proc.stderr.strip()[-500:])
        return {}, {tuple(k): error for k in wanted}
    for key, result, error in answers:
        if error:
            errors[tuple(key)] = error
        else:
            results[tuple(key)] = result
    return results, errors


def merge(costs, more):
    """Add the repeats of `more` ({key: result}, from measure_all) to `costs` (the same shape):
    each key's "runs" gathers every repeat and "us_per_call" becomes their median. A key not in
    `costs` (its first measurement failed) is left out."""
    for key, result in more.items():
        cost = costs.get(key)
        if cost is None:
            continue
        cost["runs"] = list(cost["runs"]) + list(result["runs"])
        cost["us_per_call"] = statistics.median(cost["runs"])


def pair(point, samples, costs, key):
    """Give `point` (one round of a server running app `key`) the app's own cost at that
    moment: `samples` are measure_all results taken right before and right after the round
    ({key: result} or {} where one failed). Sets point["app_us_per_req"] (their mean) and
    point["server_own_us_per_req"] (the round's CPU per request minus it), and adds the
    samples' repeats to `costs` (merge)."""
    runs = []
    for sample in samples:
        result = sample.get(key)
        if result is not None:
            runs += result["runs"]
            merge(costs, {key: result})
    if not runs:
        return
    point["app_us_per_req"] = statistics.mean(runs)
    if point.get("cpu_us_per_req") is not None:
        point["server_own_us_per_req"] = point["cpu_us_per_req"] - point["app_us_per_req"]


def key_for(definition, workload, costs):
    """The app cost key of `definition`'s rows in `workload`, or None: its server runs no app,
    the workload sends no request an app answers, or that app's cost was not measured."""
    req = app_request(workload)
    if not definition.app or req is None or not definition.supports(workload):
        return None
    key = (definition.app,) + req
    return key if key in costs else None


def wanted_for(defs, workloads):
    """The (app, method, path, body length) to measure: each app the servers `defs` run, for
    each request of the HTTP workloads `workloads` that its server serves."""
    wanted = set()
    for d in defs:
        for w in workloads:
            req = app_request(w)
            if d.app and req and d.supports(w):
                wanted.add((d.app,) + req)
    return sorted(wanted)


def annotate(summary, apps, workloads, costs):
    """Add the app's own cost to every summary row {(server, workload): row} whose server runs
    an app (`apps`: {server: app name}) measured for that workload's request (`costs`, from
    measure_all) and whose rounds were not paired (`pair`: the row then has the medians of its
    rounds' own figures): app_us_per_req, and server_own_us_per_req = cpu_us_per_req - app's
    own."""
    for (server, wname), row in summary.items():
        if row.get("server_own_us_per_req") is not None:
            continue
        w = workloads.get(wname)
        req = app_request(w) if w is not None else None
        cost = costs.get((apps.get(server),) + req) if req and apps.get(server) else None
        if cost is None:
            continue
        row["app_us_per_req"] = cost["us_per_call"]
        if row.get("cpu_us_per_req") is not None:
            row["server_own_us_per_req"] = row["cpu_us_per_req"] - cost["us_per_call"]


def _many(wanted, repeats=REPEATS):
    answers = []
    for key in wanted:
        try:
            answers.append([key, measure(*key, repeats=repeats), None])
        except SystemExit as e:  # common.unavailable(): the app's library is missing
            answers.append([key, None, "unavailable (exit %s)" % e.code])
        except Exception as e:
            answers.append([key, None, "%s: %s" % (type(e).__name__, e)])
    return answers


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--many":
        repeats = int(sys.argv[3]) if len(sys.argv) == 4 else REPEATS
        print(json.dumps(_many([tuple(k) for k in json.loads(sys.argv[2])], repeats)))
    elif len(sys.argv) == 5:
        name, method, path, body_len = sys.argv[1:]
        print(json.dumps(measure(name, method, path, int(body_len))))
    else:
        sys.exit(__doc__)
