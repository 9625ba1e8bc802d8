"""Keep-alive, pipelining and many concurrent clients through the binding."""

import asyncio
import http.client
import threading
from concurrent.futures import ThreadPoolExecutor

from conftest import RawClient
from pymongoose_uring import App

CONNECTIONS = 50
PER_CONNECTION = 20  # 50 * 20 = 1,000 requests


def echo_app():
    app = App()

    @app.get("/echo/{n:int}")
    def echo(req):
        return {"n": req.params["n"], "conn": req.conn_id, "thread": req.thread}

    @app.post("/echo/{n:int}")
    def echo_body(req):
        return req.body

    return app


def test_keep_alive_many_requests_one_connection(serve):
    server = serve(echo_app())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conns = set()
    for i in range(50):
        conn.request("GET", "/echo/%d" % i)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200
        assert data.startswith(b'{"n":%d,' % i)
        conns.add(data.split(b'"conn":')[1].split(b",")[0])
    conn.close()
    assert len(conns) == 1
    assert server.stats()["connections_accepted"] == 1


def test_pipelining_keeps_order(serve):
    server = serve(echo_app())
    c = RawClient(server.port)
    n = 64
    reqs = b"".join(
        b"POST /echo/%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
        % (i, len(b"body%d" % i), b"body%d" % i)
        for i in range(n)
    )
    c.send(reqs)
    for i in range(n):
        status, _, body = c.read_response()
        assert (status, body) == (200, b"body%d" % i)
    c.close()
    stats = server.stats()
    # Pipelined requests arrive together: at least one batch held several.
    assert sum(stats["batch_hist"][1:]) >= 1
    assert stats["batches"] < n


def check_counters(server, expected):
    stats = server.stats()
    assert stats["requests"] >= expected and stats["responses"] >= expected
    assert sum(stats["batch_hist"]) == stats["batches"]
    assert stats["parse_errors"] == 0


def test_1000_requests_50_connections_http_client(serve):
    server = serve(echo_app())

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        out = []
        for j in range(PER_CONNECTION):
            n = k * 1000 + j
            conn.request("GET", "/echo/%d" % n)
            resp = conn.getresponse()
            out.append((resp.status, resp.read().startswith(b'{"n":%d,' % n)))
        conn.close()
        return out

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        results = [r for rs in pool.map(client, range(CONNECTIONS)) for r in rs]
    assert len(results) == 1000 and all(r == (200, True) for r in results)
    check_counters(server, 1000)


async def _asyncio_client(port, k):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ok = 0
    for j in range(PER_CONNECTION):
        n = k * 1000 + j
        body = b"payload-%d" % n
        writer.write(
            b"POST /echo/%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (n, len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            [
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ][0]
        )
        got = await reader.readexactly(length)
        ok += head.startswith(b"HTTP/1.1 200") and got == body
    writer.close()
    await writer.wait_closed()
    return ok


def test_1000_requests_50_connections_asyncio(serve):
    server = serve(echo_app())

    async def main():
        return await asyncio.wait_for(
            asyncio.gather(*(_asyncio_client(server.port, k) for k in range(CONNECTIONS))), 60
        )

    assert sum(asyncio.run(main())) == 1000
    check_counters(server, 1000)


def test_two_threads(serve):
    server = serve(echo_app(), threads=2)
    assert server.stats(0) is not None and server.stats(1) is not None
    threads_seen = set()
    lock = threading.Lock()

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        for j in range(10):
            conn.request("GET", "/echo/%d" % j)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            with lock:
                threads_seen.add(int(body.split(b'"thread":')[1].rstrip(b"}")))
        conn.close()

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(client, range(40)))
    total = server.stats()
    per = [server.stats(t) for t in (0, 1)]
    assert total["requests"] == per[0]["requests"] + per[1]["requests"] >= 400
    assert threads_seen <= {0, 1}
    assert server.ring_info(1)["features"] == server.ring_info(0)["features"]
