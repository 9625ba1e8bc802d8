"""apps.py's raw WSGI app through pymongoose_uring's command line:
python pymongoose_uring_wsgi_server.py PORT [--knob V]

Becomes ``python -m pymongoose_uring apps:wsgi_raw --interface wsgi --pool-threads 4`` (same
PID), as a user would run a WSGI app: the app gunicorn_raw and granian_wsgi_raw serve. WSGI
calls run on BENCH_WSGI_THREADS pool threads (default 4, as gunicorn's and granian's
scripts have); engine knobs come from options or PMU_* variables (see knobs.py).
"""

import os
import sys

import common

if __name__ == "__main__":
    threads = os.environ.get("BENCH_WSGI_THREADS", "4")
    common.exec_cli("apps:wsgi_raw", "wsgi", sys.argv[2:], ["--pool-threads", threads])
