"""The predecessor's script, unchanged in shape, on pymongoose_uring's compatibility layer:
python pymongoose_server.py PORT

pymongoose users wrote Manager(handler), listen(url, http=True), a poll loop, and
conn.reply(status, body, headers). This script keeps that shape; only the import differs
(and engine knobs from PMU_* variables reach the Manager, as for the native script).
"""

import signal
import sys

import common
import knobs

try:
    from pymongoose_uring.compat import MG_EV_HTTP_MSG, Manager
except ImportError as e:
    common.unavailable("pymongoose_uring.compat", e)

GET = {path: (body, {"Content-Type": ctype}) for path, (body, ctype) in common.GET_ROUTES.items()}
shutdown_requested = False


def handler(conn, ev, data):
    if ev == MG_EV_HTTP_MSG:
        if data.method == "POST" and data.uri == common.ECHO_PATH:
            conn.reply(200, data.body_bytes, headers={"Content-Type": common.OCTETS})
        elif data.uri in GET:
            body, headers = GET[data.uri]
            conn.reply(200, body, headers=headers)
        else:
            conn.reply(404, b"not found\n", headers={"Content-Type": "text/plain"})


def stop(signum, frame):
    global shutdown_requested
    shutdown_requested = True


def main():
    port = common.port_from_argv(8001)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    manager = Manager(handler, **knobs.parse(sys.argv[2:]))
    manager.listen("http://%s:%d" % (common.HOST, port), http=True)
    while not shutdown_requested:
        manager.poll(100)
    manager.close()


if __name__ == "__main__":
    main()
