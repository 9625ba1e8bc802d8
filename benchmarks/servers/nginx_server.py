"""nginx as a C reference, one worker: python nginx_server.py PORT [nocache]

Writes a configuration into /tmp/pmu-bench-nginx-PORT/ and replaces itself with nginx in the
foreground (daemon off, a master and one worker; the runner sums CPU over the process tree).
GET / is a `return 200` of the JSON body, /16k and /1m are static files (sendfile), and
POST /echo uses the echo module that Debian's nginx-light ships; without the module /echo
answers 501, which the runner reads as "workload not supported by this server".
/files/ serves the runner's file directory (common.files_root()) with sendfile and
open_file_cache on (descriptors and stat results kept, as nginx's documentation suggests for
static files), or off with `nocache` (an open and an fstat per request).
"""

import os
import shutil
import sys

import common

MODULE_DIRS = ["/usr/lib/nginx/modules", "/usr/lib64/nginx/modules", "/usr/share/nginx/modules"]

CONFIG = """\
worker_processes 1;
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{load_module}
events {{
    worker_connections 20000;
}}
http {{
    access_log off;
    types {{ }}
    default_type {octets};
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen {host}:{port} backlog=4096;
        root {prefix}/data;
        location = / {{
            default_type {json};
            return 200 '{hello}';
        }}
        location = /16k {{ }}
        location = /1m {{ }}
        location /files/ {{
            root {files_root};
            {open_file_cache}
        }}
        location = /echo {{
            client_max_body_size 2m;
            client_body_buffer_size 2m;
            {echo}
        }}
    }}
}}
"""
# The worker's descriptor limit; benchmarks/hostile_fd.py lowers it (with `ulimit -n`) to see
# what nginx does when accept() runs out of descriptors.
NOFILE = int(os.environ.get("BENCH_NGINX_NOFILE", "65536"))
ECHO_WITH_MODULE = "echo_read_request_body;\n            echo_request_body;"
ECHO_WITHOUT_MODULE = "return 501;"
OPEN_FILE_CACHE = (
    "open_file_cache max=1000 inactive=60s;\n"
    "            open_file_cache_valid 60s;\n"
    "            open_file_cache_min_uses 1;\n"
    "            open_file_cache_errors on;"
)
NO_OPEN_FILE_CACHE = "open_file_cache off;"


def find_nginx():
    return shutil.which("nginx") or next(
        (
            p
            for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
            if os.access(p, os.X_OK)
        ),
        None,
    )


def echo_module():
    for d in MODULE_DIRS:
        path = os.path.join(d, "ngx_http_echo_module.so")
        if os.path.exists(path):
            return path
    return None


def main():
    port = common.port_from_argv(8010)
    options = sys.argv[2:]
    if options not in ([], ["nocache"]):
        sys.exit("nginx_server.py PORT [nocache]")
    nginx = find_nginx()
    if nginx is None:
        common.unavailable("nginx", "no nginx binary on PATH or in /usr/sbin")
    prefix = "/tmp/pmu-bench-nginx-%d" % port
    os.makedirs(os.path.join(prefix, "data"), mode=0o755, exist_ok=True)
    os.makedirs(os.path.join(prefix, "tmp"), mode=0o755, exist_ok=True)
    os.chmod(prefix, 0o755)  # workers run as nobody when started by root
    for name, body in (("16k", common.BYTES_16K), ("1m", common.BYTES_1M)):
        with open(os.path.join(prefix, "data", name), "wb") as f:
            f.write(body)
    module = echo_module()
    with open(os.path.join(prefix, "nginx.conf"), "w") as f:
        f.write(
            CONFIG.format(
                prefix=prefix,
                host=common.HOST,
                port=port,
                hello=common.HELLO.decode(),
                json=common.JSON,
                octets=common.OCTETS,
                nofile=NOFILE,
                load_module="load_module %s;" % module if module else "",
                echo=ECHO_WITH_MODULE if module else ECHO_WITHOUT_MODULE,
                files_root=common.files_root(),
                open_file_cache=NO_OPEN_FILE_CACHE if options else OPEN_FILE_CACHE,
            )
        )
    sys.stdout.flush()
    os.execv(
        nginx,
        [
            nginx,
            "-p",
            prefix,
            "-e",
            os.path.join(prefix, "error.log"),
            "-c",
            os.path.join(prefix, "nginx.conf"),
        ],
    )


if __name__ == "__main__":
    main()
