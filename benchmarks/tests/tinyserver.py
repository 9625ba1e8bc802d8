"""A threaded TCP server on 127.0.0.1 for the runner's tests: one thread accepts,
and each connection gets a thread running the subclass's `_conn(conn)`."""

import socket
import threading


class ThreadedServer:
    def __init__(self, backlog):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn):
        raise NotImplementedError
