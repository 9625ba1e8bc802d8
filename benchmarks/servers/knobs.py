"""Engine knobs for the benchmark servers: command-line options and PMU_* environment.

Every field of pmu_config_t but the listening ones has a name here. A server
script reads them from ``--ring-entries 2048`` style options or from the environment
(``PMU_RING_ENTRIES=2048``; the option wins); the sweep command sets the environment, so the
same mechanism drives examples/hello_server (which reads PMU_HOST already) and the Python
scripts.
"""

import os


def flag(text):
    """A boolean knob, given as 0/1 (or true/false)."""
    return str(text).strip().lower() not in ("0", "false", "no", "off", "")


# name -> type, for every knob of the engine (include/pmu/pmu.h PMU_CONFIG_KNOBS, by its Python
# name) but where to listen, which each server script takes from its own arguments. This file
# must load without the extension (the benchmark runner reads it before anything is built), so
# the list is written out; tests/python/test_knob_table.py checks it against the table.
LISTENING = ("host", "port", "unix_path", "listen_fd")
KNOBS = {
    "backlog": int,
    "threads": int,
    "ring_entries": int,
    "cq_entries": int,
    "buf_count": int,
    "buf_size": int,
    "defer_taskrun": flag,
    "sqpoll": flag,
    "sqpoll_idle_ms": int,
    "registered_files": flag,
    "send_zc_threshold": int,
    "file_splice_min": int,
    "file_read_chunk": int,
    "pipe_size": int,
    "pipe_pool": int,
    "batch_max": int,
    "slow_handler_ms": int,
    "busy_linger_us": int,
    "busy_linger_batch": int,
    "sched_batch": flag,
    "max_header_bytes": int,
    "max_headers": int,
    "max_url_bytes": int,
    "max_body_bytes": int,
    "max_connections": int,
    "max_pipelined": int,
    "output_high_water": int,
    "stream_body_threshold": int,
    "body_buffer_budget": int,
    "body_spool_dir": str,
    "header_timeout_ms": int,
    "keepalive_timeout_ms": int,
    "body_timeout_ms": int,
    "send_timeout_ms": int,
    "min_recv_rate": int,
    "min_rate_grace_ms": int,
    "shutdown_timeout_ms": int,
    "accept_backoff_ms": int,
    "server_header": str,
    "date_header": flag,
    "extra_headers": str,
    "ws_max_message": int,
    "ws_max_frame": int,
    "ws_auto_pong": flag,
    "ws_ping_interval_ms": int,
    "ws_ping_timeout_ms": int,
    "ws_idle_timeout_ms": int,
    "ws_close_timeout_ms": int,
    "ws_deflate": flag,
    "ws_deflate_window_bits": int,
    "ws_deflate_mem_level": int,
    "ws_deflate_min_size": int,
    "ws_deflate_no_context_takeover": flag,
    "ws_send_high_water": int,
    "ws_send_limit": int,
    "ws_send_limit_close": flag,
    "file_cache_entries": int,
    "file_cache_valid_ms": int,
    "max_ranges": int,
    "raw": flag,
    "conn_io_events": flag,
    "conn_send_high_water": int,
    "conn_send_limit": int,
    "raw_idle_timeout_ms": int,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_keyfile_password": str,
    "ssl_ca_certs": str,
    "ssl_cert_reqs": int,
    "ssl_ciphers": str,
    "ssl_ciphersuites": str,
    "ssl_min_version": str,
    "ssl_alpn": str,
    "ssl_ocsp_file": str,
    "ssl_session_tickets": flag,
    "ssl_ticket_rotate_ms": int,
    "ssl_handshake_timeout_ms": int,
    "ssl_max_handshakes": int,
    "ssl_ktls": flag,
    "ssl_cert_per_conn": flag,
}


def env_name(knob):
    return "PMU_" + knob.upper()


def parse(argv):
    """Knobs set in argv (``--name VALUE`` or ``--name=VALUE``) or the environment.

    Returns {knob: value} for the knobs that were set; unknown options raise SystemExit.
    """
    found = {}
    for knob, kind in KNOBS.items():
        value = os.environ.get(env_name(knob))
        if value not in (None, ""):
            found[knob] = kind(value)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            knob = name.replace("-", "_")
            if knob not in KNOBS:
                raise SystemExit("unknown option %s (knobs: %s)" % (arg, ", ".join(KNOBS)))
            if not value:
                i += 1
                if i == len(argv):
                    raise SystemExit("option %s needs a value" % arg)
                value = argv[i]
            found[knob] = KNOBS[knob](value)
        i += 1
    return found
