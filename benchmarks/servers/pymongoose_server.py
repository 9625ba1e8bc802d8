"""The predecessor's script, unchanged in shape, on pymongoose_uring's compatibility layer:
python pymongoose_server.py PORT

pymongoose users wrote Manager(handler), listen(url, http=True), a poll loop, and
conn.reply(status, body, headers). This script keeps that shape; only the import differs
(and engine knobs from PMU_* variables reach the Manager, as for the native script).

WebSocket as pymongoose's examples do it: conn.ws_upgrade(hm) for /ws/echo and
/ws/broadcast, MG_EV_WS_MSG answered with conn.ws_send(data, op), MG_EV_CLOSE forgetting
the connection; /ws/broadcast sends each message to every connection of /ws/broadcast with
one ws_send each. A build without the WebSocket API answers /ws/* with 501.
"""

import signal
import sys

import common
import knobs

try:
    from pymongoose_uring import compat
    from pymongoose_uring.compat import MG_EV_HTTP_MSG, Manager
except ImportError as e:
    common.unavailable("pymongoose_uring.compat", e)

HAS_WEBSOCKET = hasattr(compat, "MG_EV_WS_MSG")
if HAS_WEBSOCKET:
    from pymongoose_uring.compat import MG_EV_CLOSE, MG_EV_WS_MSG
WS_PATHS = (common.WS_ECHO_PATH, common.WS_BROADCAST_PATH)
subscribers = {}  # the connections of /ws/broadcast

GET = {path: (body, {"Content-Type": ctype}) for path, (body, ctype) in common.GET_ROUTES.items()}
shutdown_requested = False


def handler(conn, ev, data):
    if HAS_WEBSOCKET and ev == MG_EV_WS_MSG:
        if conn in subscribers:
            for peer in list(subscribers):
                peer.ws_send(data.data, data.flags)
        else:
            conn.ws_send(data.data, data.flags)
    elif HAS_WEBSOCKET and ev == MG_EV_CLOSE:
        subscribers.pop(conn, None)
    elif ev == MG_EV_HTTP_MSG:
        if data.uri in WS_PATHS:
            if not HAS_WEBSOCKET:
                conn.reply(501, b"no WebSocket in this build\n")
                return
            if data.uri == common.WS_BROADCAST_PATH:
                subscribers[conn] = None
            conn.ws_upgrade(data)
        elif data.method == "POST" and data.uri == common.ECHO_PATH:
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
