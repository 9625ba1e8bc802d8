"""Flask on its own threaded development server: python flask_server.py PORT

The app is apps.py's flask_app, the one gunicorn (gunicorn_server.py), granian WSGI
(granian_server.py) and the WSGI adapter (pymongoose_uring_flask_server.py) serve too.
"""

import apps
import common

app = apps.flask_app

if __name__ == "__main__":
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request log line
    app.run(host=common.HOST, port=common.port_from_argv(8004), threaded=True)
