"""nginx as a C reference, one worker: python nginx_server.py PORT [nocache|tls]

Writes a configuration into /tmp/pmu-bench-nginx-PORT/ and replaces itself with nginx in the
foreground (daemon off, a master and one worker; the runner sums CPU over the process tree).
GET / is a `return 200` of the JSON body, /16k and /1m are static files (sendfile), and
POST /echo uses the echo module that Debian's nginx-light ships; without the module /echo
answers 501, which the runner reads as "workload not supported by this server".
/files/ serves the runner's file directory (common.files_root()) with sendfile and
open_file_cache on (descriptors and stat results kept, as nginx's documentation suggests for
static files), or off with `nocache` (an open and an fstat per request).
With `tls` the listener is HTTPS, configured as nginx is for speed: the certificate and key
the runner made (BENCH_TLS_CERT, BENCH_TLS_KEY), TLS 1.2 and 1.3, the TLS 1.3 suite and TLS
1.2 ciphers every server of the runner gets (common.py), session tickets on (keys made at
start), no session cache (nginx's default; tickets do the resuming), access log off as
everywhere. Without kernel TLS on this machine nginx encrypts in user space, as we do.
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
        listen {host}:{port}{ssl} backlog=4096;
        {tls}root {prefix}/data;
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
# The HTTPS settings of `tls` (the server block's; {cert} and {key} are the runner's files).
TLS = """ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_conf_command Ciphersuites {suites};
        ssl_session_tickets on;
        """


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


def has_ssl_module(nginx):
    """Whether this nginx was built with ngx_http_ssl_module (`nginx -V`; nginx-light is)."""
    import subprocess

    p = subprocess.run([nginx, "-V"], capture_output=True, text=True)
    return "--with-http_ssl_module" in p.stdout + p.stderr


def config(prefix, port, options, module, files_root, tls_files=None):
    """The text of nginx.conf for a server on `port` with `options` ([], ["nocache"] or
    ["tls"]; `tls_files` the (certificate, key) of "tls")."""
    tls = ""
    if "tls" in options:
        cert, key = tls_files
        tls = TLS.format(
            cert=cert, key=key, ciphers=common.TLS12_CIPHERS, suites=common.TLS13_SUITES
        )
    return CONFIG.format(
        prefix=prefix,
        host=common.HOST,
        port=port,
        ssl=" ssl" if tls else "",
        tls=tls,
        hello=common.HELLO.decode(),
        json=common.JSON,
        octets=common.OCTETS,
        nofile=NOFILE,
        load_module="load_module %s;" % module if module else "",
        echo=ECHO_WITH_MODULE if module else ECHO_WITHOUT_MODULE,
        files_root=files_root,
        open_file_cache=NO_OPEN_FILE_CACHE if "nocache" in options else OPEN_FILE_CACHE,
    )


def main():
    port = common.port_from_argv(8010)
    options = sys.argv[2:]
    if options not in ([], ["nocache"], ["tls"]):
        sys.exit("nginx_server.py PORT [nocache|tls]")
    nginx = find_nginx()
    if nginx is None:
        common.unavailable("nginx", "no nginx binary on PATH or in /usr/sbin")
    if "tls" in options and not has_ssl_module(nginx):
        common.unavailable("nginx's ssl module", "%s -V shows no --with-http_ssl_module" % nginx)
    prefix = "/tmp/pmu-bench-nginx-%d" % port
    os.makedirs(os.path.join(prefix, "data"), mode=0o755, exist_ok=True)
    os.makedirs(os.path.join(prefix, "tmp"), mode=0o755, exist_ok=True)
    os.chmod(prefix, 0o755)  # workers run as nobody when started by root
    for name, body in (("16k", common.BYTES_16K), ("1m", common.BYTES_1M)):
        with open(os.path.join(prefix, "data", name), "wb") as f:
            f.write(body)
    with open(os.path.join(prefix, "nginx.conf"), "w") as f:
        f.write(
            config(
                prefix,
                port,
                options,
                echo_module(),
                common.files_root(),
                common.tls_files() if "tls" in options else None,
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
