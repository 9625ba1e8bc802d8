"""Flask on its own threaded development server: python flask_server.py PORT

The same `app` runs under gunicorn (gunicorn_server.py) and granian WSGI (granian_server.py).
"""

import common

try:
    from flask import Flask, Response, request
except ImportError as e:
    common.unavailable("flask", e)

app = Flask(__name__)


@app.get("/")
def hello():
    # The idiomatic Flask answer: a dict, sent as compact JSON (Flask appends a newline).
    return {"message": "Hello, World!"}


@app.get("/16k")
def bytes_16k():
    return Response(common.BYTES_16K, mimetype=common.OCTETS)


@app.get("/1m")
def bytes_1m():
    return Response(common.BYTES_1M, mimetype=common.OCTETS)


@app.post(common.ECHO_PATH)
def echo():
    return Response(request.get_data(), mimetype=common.OCTETS)


if __name__ == "__main__":
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request log line
    app.run(host=common.HOST, port=common.port_from_argv(8004), threaded=True)
