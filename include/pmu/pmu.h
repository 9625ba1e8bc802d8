/*
 * pmu.h: the public C interface of the pymongoose_uring HTTP/1.1 engine.
 *
 * This header is the one seam between the engine (core/, which drives sockets
 * with io_uring and parses with llhttp) and anything built on it: the CPython
 * binding, examples/hello_server, the C tests. Nothing here mentions io_uring
 * or Python.
 *
 * Model
 * -----
 * A server owns N worker threads. Each thread owns one io_uring ring, its own
 * listening socket (SO_REUSEPORT for TCP; one shared socket for a Unix path),
 * a provided-buffer ring for receives, and every connection it accepted.
 * When a pass over the ring's completions has produced complete requests, the
 * thread calls the configured batch handler once with all of them, in the
 * order they completed. The handler answers each request with pmu_respond()
 * either at once (inside the call) or later, from any thread.
 *
 * Errors: functions returning int return >= 0 on success and -errno on
 * failure. pmu_server_error() describes the last start-up failure in words.
 */
#ifndef PMU_PMU_H
#define PMU_PMU_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PMU_VERSION "0.1.0"

typedef struct pmu_server pmu_server_t;

/* One header line as the engine hands it out or takes it in. The strings
 * are not NUL-terminated. */
typedef struct pmu_header {
  const char *name;
  size_t name_len;
  const char *value;
  size_t value_len;
} pmu_header_t;

/*
 * A complete request. Every pointer stays valid until the request is
 * answered with pmu_respond(); the engine owns all of it. Nothing points into
 * the kernel's receive buffers: what a request keeps was copied once into
 * memory the request owns.
 *
 * What reaches the handler obeys RFC 9112 3.2: an HTTP/1.1 request has
 * exactly one Host (any request at most one), whose value is empty or a valid
 * host[:port]; the target is origin-form ("/..."), "*" with OPTIONS only, or
 * absolute-form with an http/https scheme and a host. An absolute-form target
 * ("http://h:8080/p?q") is presented in origin-form: target "/p?q" ("/" when
 * its path is empty), path "/p", query "q", and the Host header's value is the
 * target's authority "h:8080" whatever Host was sent (a Host header is added
 * when an HTTP/1.0 request had none). CONNECT is answered 400 by the engine.
 */
typedef struct pmu_request {
  const char *method; /* NUL-terminated, e.g. "GET" */
  size_t method_len;
  const char *target; /* request-target: path plus "?query" (origin-form) */
  size_t target_len;
  const char *path; /* target up to the first '?' */
  size_t path_len;
  const char *query; /* after the '?', without it; "" when absent */
  size_t query_len;
  const pmu_header_t *headers; /* in the order received; names as sent */
  size_t header_count;
  const char *body; /* whole body, de-chunked; NULL when empty */
  size_t body_len;
  uint8_t http_major;
  uint8_t http_minor;
  uint8_t keep_alive;            /* the connection stays open after this request */
  uint8_t is_head;               /* HEAD: the engine sends no body */
  uint8_t body_streaming;        /* the body comes in pieces through config.on_body */
  uint8_t ws_upgrade;            /* a valid WebSocket opening handshake (RFC 6455 4.2.1):
                                    GET, HTTP/1.1, Upgrade: websocket, Connection containing
                                    "upgrade", a Sec-WebSocket-Key of 16 bytes in base64,
                                    Sec-WebSocket-Version 13. The handler accepts with
                                    pmu_ws_accept() or answers with any ordinary response
                                    (403, 404 ...), which closes the connection. */
  uint8_t tls;                   /* 1: it came on a TLS connection (pmu_request_tls_info) */
  uint16_t thread;               /* index of the worker thread that owns it */
  uint64_t conn_id;              /* unique per server; equal for requests of one connection */
  struct sockaddr_storage peer;  /* client address (AF_UNIX: family only) */
  struct sockaddr_storage local; /* address the connection arrived on
                                    (AF_UNIX: family only; the path is the
                                    server's config.unix_path) */
  void *user;                    /* free for the handler; the engine never reads it */
} pmu_request_t;

/*
 * A response. The engine writes the status line, Server, Date,
 * Content-Length and Connection headers itself; headers the handler gives
 * named Content-Length, Transfer-Encoding or Connection are dropped (framing
 * belongs to the engine), except that "Connection: close" makes the engine
 * close the connection after this response. A handler's own Server or Date
 * header replaces the engine's.
 *
 * The body is copied unless body_release is set: then the engine keeps the
 * pointer until the bytes are on the wire (or the connection is gone) and
 * calls body_release(body_ctx) exactly once, on the request's worker thread.
 */
typedef struct pmu_response {
  int status;
  const pmu_header_t *headers;
  size_t header_count;
  const void *body;
  size_t body_len;
  void (*body_release)(void *body_ctx);
  void *body_ctx;
} pmu_response_t;

/*
 * Called on a worker thread with the requests completed in one pass over its
 * completions (never more than config.batch_max). The array is only valid
 * during the call; the requests stay valid until answered. Every request
 * must be answered exactly once.
 */
typedef void (*pmu_batch_handler_fn)(void *handler_data, pmu_request_t *const *requests,
                                     size_t count);

/* Called on each worker thread after its ring is ready, and before it exits. */
typedef void (*pmu_thread_fn)(void *handler_data, unsigned thread_index);

/*
 * Called on the request's worker thread about one request that the handler
 * still holds (not answered, or a streamed answer not ended):
 * - on_disconnect: its connection is gone. The request stays valid and must
 *   still be answered (or its stream ended) to release it; writes to it are
 *   dropped from now on.
 * - on_drain: the stream's unsent bytes fell to half of output_high_water
 *   after pmu_request_wait_drain() returned 1.
 * - on_peer_eof: the client half-closed its side (sent FIN) after the whole
 *   request and before its answer. The connection stays open and the answer
 *   is still sent (a client may half-close and wait), but a handler that
 *   waits for an event rather than answering (a long poll) may take it as the
 *   client leaving, as uvicorn does (ASGI http.disconnect). Never for a
 *   request whose body is streamed (a body cut short closes the connection:
 *   on_disconnect). pmu_request_peer_eof() tells it afterwards.
 */
typedef void (*pmu_request_fn)(void *handler_data, pmu_request_t *request);

/*
 * A piece of a streamed request body (request->body_streaming), on the
 * request's worker thread, in order; `last` is 1 on the final call (len may
 * be 0 then). data is valid only during the call. The handler has already
 * seen the request. If the handler answers before the last piece, the
 * engine stops delivering, discards the rest and closes the connection after
 * the answer. If the client goes away first, on_disconnect comes instead of
 * the last piece.
 */
typedef void (*pmu_body_fn)(void *handler_data, pmu_request_t *request, const void *data,
                            size_t len, int last);

/*
 * Static files (core/static.c).
 *
 * A mount serves a directory under a URL prefix by the HTTP rules for files:
 * the request path is percent-decoded once, then refused with 400 if it holds a
 * ".." (or any all-dots) segment, an encoded "/" (%2f) or "\\" (%5c), a backslash,
 * NUL or another control byte, or bytes that are not UTF-8 (overlong forms such
 * as %c0%ae); the file is opened with openat2(root, RESOLVE_BENEATH
 * [| RESOLVE_NO_SYMLINKS]) so that the kernel keeps it inside the root
 * (absolute symlinks, and symlinks leading out, are 404). Answers carry a
 * strong ETag ("inode-size-mtime_ns" in hex) and Last-Modified;
 * If-Match / If-Unmodified-Since (412), If-None-Match / If-Modified-Since (304),
 * Range (206, multipart/byteranges for several ranges; 416 with
 * "Content-Range: bytes *\/size"), If-Range are honoured; see README "Static
 * files" for every rule and the choices made.
 */
typedef struct pmu_static {
  const char *prefix;          /* URL path prefix, "/assets" or "/" (no trailing slash
                                  otherwise) */
  const char *root;            /* the directory; opened (O_PATH|O_DIRECTORY) once at start */
  const char *index;           /* served for a directory: default "index.html"; NULL or "":
                                  none */
  int dotfiles;                /* 0 (default): a path with a component starting with '.'
                                  is 404 */
  int listing;                 /* 1: an HTML listing for a directory without index
                                  (default 0) */
  int precompressed;           /* 1 (default): a .br / .gz sibling by Accept-Encoding, with
                                  Vary: Accept-Encoding */
  int follow_symlinks;         /* 1 (default): symlinks that stay inside root are followed
                                  (RESOLVE_BENEATH); 0: RESOLVE_NO_SYMLINKS */
  int fallthrough;             /* 0 (default): a miss under prefix is 404; 1: the request
                                  goes to the handler instead (engine mounts) / -ENOENT
                                  (pmu_serve_static) */
  const char *cache_control;   /* Cache-Control value on its answers; NULL: none */
  const pmu_header_t *headers; /* extra headers on every answer of this mount */
  size_t header_count;
  const char *mime_types; /* overrides "ext=type,ext=type" (pymongoose's form); NULL: none */
} pmu_static_t;

/* Fill *mount with the defaults above (prefix "/", root NULL). */
void pmu_static_init(pmu_static_t *mount);

/*
 * Answer request from mount (its prefix is ignored: rel_path is the part of the
 * decoded path below the mount, e.g. "css/a.css", checked but not decoded again;
 * NULL: the request's path minus mount->prefix, decoded). Any thread (the
 * open-file cache is used only on the request's own ring thread, for a mount
 * given in config.statics). Returns 0 when answered; -ENOENT (not answered)
 * when mount->fallthrough and nothing was found; -errno otherwise (answered
 * with 500). The root is opened per call when the mount was not given at start.
 */
int pmu_serve_static(pmu_request_t *request, const pmu_static_t *mount, const char *rel_path,
                     size_t rel_len);

typedef struct pmu_file_opts {
  const char *content_type;    /* NULL: from the extension */
  const char *cache_control;   /* NULL: none */
  const pmu_header_t *headers; /* extra headers */
  size_t header_count;
  int status; /* 0: 200 (with every conditional and Range rule); another status sends the
                 whole file with it and no Range/conditional logic */
} pmu_file_opts_t;

/*
 * Answer with one file (path as given, not confined; or fd >= 0, which the
 * engine then owns and closes) by the same rules as a mount (no precompressed
 * siblings, no directories). 404 when it is missing or not a regular file.
 * opts may be NULL. Any thread. Returns 0 when answered (404 included), -errno
 * when answered with 500.
 */
int pmu_serve_file(pmu_request_t *request, const char *path, int fd, const pmu_file_opts_t *opts);

/* Levels of the engine's log lines (the numbers of Python's logging). */
#define PMU_LOG_INFO 20
#define PMU_LOG_WARNING 30
#define PMU_LOG_ERROR 40

/*
 * A line from the engine about trouble it handles itself (accept failing for
 * want of descriptors, ...), rate-limited by the engine, without a trailing
 * newline. Called on a worker thread; must not block for long.
 */
typedef void (*pmu_log_fn)(void *handler_data, int level, const char *msg);

/* The default log: "pymongoose_uring: MSG\n" on stderr. */
void pmu_log_stderr(void *handler_data, int level, const char *msg);

/* What a slow handler call was given (pmu_slow_t.kind). */
enum pmu_slow_kind { PMU_SLOW_REQUESTS = 0, PMU_SLOW_WS_EVENTS = 1, PMU_SLOW_CONN_EVENTS = 2 };

/*
 * A handler call that held its ring thread longer than config.slow_handler_ms:
 * every connection of that thread waited meanwhile. The engine counts each one
 * (pmu_stats_t.slow_batches) and reports one per ring thread per 10 s at most:
 * to config.on_slow when set, else as a PMU_LOG_WARNING line through
 * config.log. Time is read with the kernel's coarse monotonic clock (a tick,
 * 1-4 ms; about 10 ns a read): held_ms counts from the end of the previous
 * handler call of that turn, or the turn's start, so the engine's own work of
 * the turn (microseconds) is in it.
 */
typedef struct pmu_slow {
  unsigned thread;     /* the ring thread's index */
  int kind;            /* enum pmu_slow_kind: which handler was called */
  uint64_t held_ms;    /* how long the call held the ring */
  uint64_t unreported; /* slow calls of this thread since its last report, not reported */
  uint64_t threshold;  /* config.slow_handler_ms */
  /* kind PMU_SLOW_REQUESTS: the batch the handler was given. on_slow runs right after the
   * handler returned, before anything of the batch is freed: method, target and path of
   * each request may be read (and nothing else), answered or not. NULL, 0 otherwise. */
  pmu_request_t *const *requests;
  size_t count;
} pmu_slow_t;

/* config.on_slow: called on the ring thread, right after the slow handler call. */
typedef void (*pmu_slow_fn)(void *handler_data, const pmu_slow_t *slow);

/*
 * WebSocket (RFC 6455), on the same rings as HTTP.
 *
 * A request whose ws_upgrade is set is a WebSocket opening handshake. The
 * handler accepts it with pmu_ws_accept() (from any thread), which sends 101
 * Switching Protocols and turns the connection into a WebSocket, or answers it
 * like any request (403, 404, ...), which closes the connection. A request
 * with "Upgrade: websocket" whose Sec-WebSocket-Version is not 13 (but that is
 * otherwise a handshake) is answered by the engine: 426 Upgrade Required with
 * Sec-WebSocket-Version: 13, and close. Any other Upgrade is ignored (the
 * request is answered as usual, and the connection closes after it).
 * After a handshake the engine parses nothing more on its connection until it
 * is answered; bytes that came after it are parsed as frames after accept.
 *
 * Events of open WebSockets reach config.ws_handler on the worker thread,
 * batched per pass over the completions; sends, closes and releases may come
 * from any thread, through the same queue as deferred HTTP answers.
 */
typedef struct pmu_ws pmu_ws_t; /* one open WebSocket connection */

#define PMU_WS_CONT 0x0
#define PMU_WS_TEXT 0x1
#define PMU_WS_BINARY 0x2
#define PMU_WS_CLOSE 0x8
#define PMU_WS_PING 0x9
#define PMU_WS_PONG 0xA

typedef struct pmu_ws_accept {
  const char *subprotocol; /* NULL/"" : none. Sent as Sec-WebSocket-Protocol. */
  size_t subprotocol_len;
  const pmu_header_t *headers; /* extra headers of the 101 (Set-Cookie, ...); the engine's
                                  own Upgrade/Connection/Sec-WebSocket-* are never taken
                                  from here (such headers are dropped) */
  size_t header_count;
  void *user; /* pmu_ws_user() returns it; the engine never reads it */
} pmu_ws_accept_t;

enum pmu_ws_event_type {
  PMU_WS_EV_MESSAGE, /* a whole message: opcode PMU_WS_TEXT (valid UTF-8) or PMU_WS_BINARY;
                        data/len the payload, unmasked and inflated */
  PMU_WS_EV_PING,    /* a ping arrived; data/len its payload. Already answered with a pong
                        when config.ws_auto_pong */
  PMU_WS_EV_PONG,    /* a pong arrived (every pong, answers to the engine's keepalive pings
                        too) */
  PMU_WS_EV_CLOSE,   /* the peer sent a close frame: code (1005 when it had none), data/len
                        the reason. Unless the server had begun the close, the engine answers
                        it (echoing the code) when this handler call returns, after what the
                        handler sent during the call (its answers to the messages before the
                        close: RFC 6455 5.5.1); sends are refused after the call */
  PMU_WS_EV_DRAIN,   /* unsent bytes fell to half of ws_send_high_water, after a
                        pmu_ws_send()/pmu_ws_send_msg() that returned 1 */
  PMU_WS_EV_GONE,    /* always the last event of a handle: the connection is closed. code:
                        the close code received from the peer, 1005 if its close frame had
                        none, 1006 if it ended without a close frame from the peer (reset,
                        EOF, ping/close timeout, our protocol-error close, stop deadline).
                        After it the handler must call pmu_ws_release() once (any thread,
                        any time) */
};

typedef struct pmu_ws_event {
  pmu_ws_t *ws;
  uint8_t type;     /* enum pmu_ws_event_type */
  uint8_t opcode;   /* MESSAGE: PMU_WS_TEXT or PMU_WS_BINARY */
  uint16_t code;    /* CLOSE, GONE */
  const char *data; /* valid only during the handler call */
  size_t len;
} pmu_ws_event_t;

/*
 * config.ws_handler: called on the worker thread with the WebSocket events of
 * one pass over its completions, in order (per connection, the order they
 * happened), at most config.batch_max per call, right after the request batch
 * of that pass. Required for pmu_ws_accept() to be usable: without it every
 * ws_upgrade request is answered by the handler as an ordinary request and
 * pmu_ws_accept() fails with EINVAL.
 */
typedef void (*pmu_ws_handler_fn)(void *handler_data, const pmu_ws_event_t *events, size_t count);

/*
 * Connection events and raw byte streams.
 *
 * With config.conn_handler set, every accepted connection (HTTP or raw) gets a
 * handle, pmu_conn_t, and its life is told to the handler as events: OPEN
 * first, CLOSE last, and in raw mode (config.raw) the bytes received (DATA).
 * pmu_conn_send() writes bytes on any connection, pmu_conn_close() closes it,
 * from any thread, through the same queue as deferred answers. With
 * conn_handler NULL the engine makes no handle and delivers nothing: it costs
 * nothing. Connections refused over max_connections get no handle.
 */
typedef struct pmu_conn pmu_conn_t; /* one accepted connection, as config.conn_handler sees it */

enum pmu_conn_event_type {
  PMU_CONN_EV_OPEN,  /* a connection was accepted (HTTP or raw). First event of a handle. */
  PMU_CONN_EV_DATA,  /* raw mode only: bytes arrived; data/len valid only during the call */
  PMU_CONN_EV_READ,  /* only with config.conn_io_events, HTTP connections: len bytes were
                        received (data/len: those bytes, valid during the call) */
  PMU_CONN_EV_SENT,  /* only with config.conn_io_events (HTTP and raw): len bytes reached the
                        socket (one event per completed send) */
  PMU_CONN_EV_DRAIN, /* unsent bytes fell to half of conn_send_high_water after a
                        pmu_conn_send() that returned 1 */
  PMU_CONN_EV_CLOSE, /* always the last event of a handle: the connection is closed (err: 0
                        for an orderly end, else a positive errno: ECONNRESET and the like for
                        a socket error, ETIMEDOUT for a timeout (raw_idle_timeout_ms, the HTTP
                        timeouts), ENOBUFS over conn_send_limit, ENOMEM). After it the handler
                        calls pmu_conn_release() once (any thread) */
};

typedef struct pmu_conn_event {
  pmu_conn_t *conn;
  uint8_t type;     /* enum pmu_conn_event_type */
  int err;          /* CLOSE */
  const char *data; /* DATA, READ: valid only during the handler call */
  size_t len;       /* DATA, READ, SENT */
} pmu_conn_event_t;

/*
 * config.conn_handler (optional; NULL costs nothing anywhere): called on the
 * worker thread with the connection events of one pass over its completions,
 * at most config.batch_max per call. Per connection the order is: OPEN, then
 * (its requests to config.handler / its WebSocket events to ws_handler / DATA,
 * READ, SENT, DRAIN in the order they happened), then CLOSE. So OPEN events
 * are delivered before the request batch of the pass in which the
 * connection's first request completes, and CLOSE after the request and
 * WebSocket batches of the pass. A WebSocket connection gets its
 * PMU_WS_EV_GONE before its PMU_CONN_EV_CLOSE. DATA and READ point into the
 * engine's receive buffers (no copy): keep what you need.
 */
typedef void (*pmu_conn_handler_fn)(void *handler_data, const pmu_conn_event_t *events,
                                    size_t count);

/*
 * HTTPS: one more certificate, chosen by SNI (config.ssl_sni_certs).
 *
 * A certificate answers for the DNS names of its subjectAltName (its subject's
 * CN when it has none); "*.example.com" matches exactly one label. The client's
 * SNI picks the first certificate that answers for it, ssl_sni_certs in order
 * first, then ssl_certfile's; no SNI, or no match: ssl_certfile's. Every
 * certificate is loaded (and its key checked against it) at start.
 */
typedef struct pmu_tls_cert {
  const char *certfile;     /* PEM chain, leaf first */
  const char *keyfile;      /* NULL: the key is in certfile */
  const char *key_password; /* NULL: the key is not encrypted */
} pmu_tls_cert_t;

/*
 * Every knob of the engine, declared once.
 *
 * PMU_CONFIG_KNOBS(X) calls X(type, name, default, unit, min, max, doc) for
 * each knob, in the order of its field in pmu_config_t. From this one table
 * come the fields of pmu_config_t, the defaults pmu_config_init() fills, the
 * range checks pmu_server_start() makes, the Python binding's keyword
 * arguments, config_defaults() and knobs(), and hello_server's PMU_<NAME>
 * environment variables; tests/python/test_knob_table.py fails when a place
 * that cannot derive from it (the Server signature and docstring, the stub,
 * the CLI, the benchmarks, the README) disagrees with it.
 *
 *   type     STR (const char *), PORT (uint16_t), INT (int), UINT (unsigned),
 *            SIZE (size_t) or BOOL (int, nonzero is on)
 *   default  what pmu_config_init() sets
 *   unit     "bytes", "ms", ... or "" for a plain count
 *   min, max the values pmu_server_start() accepts (-EINVAL outside); for
 *            STR both 0 (unchecked). Zero has a special meaning for some
 *            knobs (the doc says which): that is resolved at start.
 *   doc      one line
 *
 * Why an X-macro rather than a header generated from a data file: there is
 * no build step and no generator to keep working (hello_server and the C
 * tests build with nothing but a compiler), the table lives in the one public
 * header that every user already includes, and the C compiler checks every
 * expansion, so a misspelt field or a default of the wrong type fails the
 * build where it is used. libuv declares its errno and handle lists the same
 * way (UV_ERRNO_MAP).
 */
/* clang-format off */
#define PMU_CONFIG_KNOBS(X)                                                                   \
  /* Where to listen. unix_path, when set, wins over host/port; listen_fd over all. */       \
  X(STR, host, "127.0.0.1", "", 0, 0, "address to bind; \"::\" or \"::1\" for IPv6")          \
  X(PORT, port, 8000, "", 0, 65535, "TCP port; 0 picks a free one (see pmu_server_port)")     \
  X(STR, unix_path, NULL, "path", 0, 0, "listen on this Unix socket instead of TCP")          \
  X(INT, listen_fd, -1, "fd", INT_MIN, INT_MAX,                                               \
    "serve this listening TCP or Unix socket, made elsewhere (< 0: none); it stays open "     \
    "with its waiting connections when the server stops")                                   \
  X(INT, backlog, 4096, "connections", INT_MIN, INT_MAX, "listen backlog (<= 0: 4096)")       \
  X(UINT, threads, 1, "threads", 1, 1024, "worker threads, one io_uring ring each")          \
  /* io_uring */                                                                              \
  X(UINT, ring_entries, 1024, "entries", 8, 32768, "submission queue entries")                \
  X(UINT, cq_entries, 0, "entries", 0, UINT_MAX, "completion queue entries (0: 8 * ring_entries)") \
  X(UINT, buf_count, 1024, "buffers", 1, 32768,                                               \
    "provided receive buffers per thread (a power of two)")                                  \
  X(UINT, buf_size, 4096, "bytes", 256, 1u << 20, "size of each provided receive buffer")     \
  X(BOOL, defer_taskrun, 1, "", 0, 1, "the ring set up with DEFER_TASKRUN, falling back to COOP_TASKRUN") \
  X(BOOL, sqpoll, 0, "", 0, 1, "a kernel thread polls the submission queue (burns a core)")   \
  X(UINT, sqpoll_idle_ms, 1000, "ms", 0, UINT_MAX, "the SQPOLL thread sleeps after this idle") \
  X(BOOL, registered_files, 0, "", 0, 1, "connections go in the ring's fixed-file table")     \
  X(SIZE, send_zc_threshold, 0, "bytes", 0, SIZE_MAX,                                         \
    "responses of at least this many bytes use SEND_ZC (0: never)")                          \
  /* Files (pmu_respond_write_file) */                                                        \
  X(SIZE, file_splice_min, 64 * 1024, "bytes", 0, SIZE_MAX,                                   \
    "file pieces at least this long go by splice (file -> pipe -> socket); shorter ones "   \
    "are read into memory and sent (0: always splice; SIZE_MAX: never)")                     \
  X(SIZE, file_read_chunk, 64 * 1024, "bytes", 4096, (size_t)1 << 30,                         \
    "the read path's buffer per connection sending a file (bounded memory)")                 \
  X(SIZE, pipe_size, 256 * 1024, "bytes", 0, (size_t)1 << 30,                                 \
    "F_SETPIPE_SZ for the splice pipes (0: the kernel's default; refused: kept as made)")    \
  X(UINT, pipe_pool, 16, "pipes", 0, 65536,                                                   \
    "idle pipes kept per thread for splicing (one is taken per file send, given back after)") \
  /* Batching */                                                                              \
  X(UINT, batch_max, 256, "requests", 0, UINT_MAX, "most requests per handler call (0: 1)")   \
  X(UINT, slow_handler_ms, 100, "ms", 0, UINT_MAX,                                            \
    "a handler call that holds its ring longer is counted (slow_batches) and logged (0: off)") \
  X(UINT, busy_linger_us, 0, "us", 0, 1000000,                                                 \
    "while config.busy says the handler's own queue is behind (the WSGI pool's), a ring with " \
    "nothing to do waits for busy_linger_batch completions or this long, not for the first "  \
    "(lingers; 0: off)")                                                                     \
  X(UINT, busy_linger_batch, 16, "completions", 1, 4096,                                      \
    "the completions a lingering ring waits for (see busy_linger_us)")                       \
  X(BOOL, sched_batch, 0, "", 0, 1,                                                           \
    "ring threads run under SCHED_BATCH: their wake-ups do not preempt the thread running on " \
    "their CPU (the WSGI pool's: the WSGI adapter turns this on)")                            \
  /* Limits */                                                                                \
  X(UINT, max_header_bytes, 16384, "bytes", 0, UINT_MAX,                                      \
    "request line and headers; 431 beyond (0: no limit)")                                    \
  X(UINT, max_headers, 100, "headers", 0, UINT_MAX, "header lines; 431 beyond (0: no limit)") \
  X(UINT, max_url_bytes, 8192, "bytes", 0, UINT_MAX, "request-target; 414 beyond (0: no limit)") \
  X(SIZE, max_body_bytes, 1024 * 1024, "bytes", 0, SIZE_MAX,                                  \
    "request body; 413 beyond (0: no limit)")                                                \
  X(UINT, max_connections, 10000, "connections", 0, UINT_MAX,                                 \
    "open at once, whole server; 503 beyond (0: 2^20)")                                      \
  X(UINT, max_pipelined, 128, "requests", 0, UINT_MAX,                                        \
    "requests awaiting answers per connection before the engine stops reading it (0: 1)")    \
  X(SIZE, output_high_water, 1024 * 1024, "bytes", 0, SIZE_MAX,                               \
    "queued output per connection before the engine stops reading it; also the streamed "   \
    "request body a handler may leave unconsumed (0: no limit)")                             \
  X(SIZE, body_stream_threshold, 0, "bytes", 0, SIZE_MAX,                                     \
    "with on_body set, a request whose body exceeds this is handed over at once and its "   \
    "body streamed (0: off)")                                                                \
  /* Request bodies buffered in memory, all threads together, are held to           \
   * body_buffer_budget. A body that would go beyond it is spooled instead: moved   \
   * to an unlinked temporary file (O_TMPFILE in body_spool_dir) and handed to the  \
   * handler as a read-only mapping of that file, so pmu_request_t.body keeps its   \
   * meaning. Spooling rather than pausing reads: a paused upload never completes   \
   * while slow or silent clients hold the budget, and page cache is reclaimable    \
   * where heap is not. Memory is never reserved ahead of the bytes a client sent. */ \
  X(SIZE, body_buffer_budget, (size_t)64 << 20, "bytes", 0, SIZE_MAX,                         \
    "request bodies in memory, whole server; beyond it they are spooled (0: no budget)")     \
  X(STR, body_spool_dir, NULL, "path", 0, 0,                                                  \
    "directory of spooled bodies (NULL: $TMPDIR, else /tmp); a disk, not a tmpfs")           \
  /* Timeouts; 0 disables that timeout */                                                     \
  X(UINT, header_timeout_ms, 10000, "ms", 0, UINT_MAX,                                        \
    "accept or first byte to end of headers; 408 (0: off)")                                  \
  X(UINT, keepalive_timeout_ms, 5000, "ms", 0, UINT_MAX, "idle between requests; close (0: off)") \
  X(UINT, body_timeout_ms, 30000, "ms", 0, UINT_MAX, "silence while receiving a body; 408 (0: off)") \
  X(UINT, send_timeout_ms, 30000, "ms", 0, UINT_MAX, "no progress sending; close (0: off)")   \
  /* Minimum average rate, as Apache's mod_reqtimeout MinRate: while the header or  \
   * body timer runs, a client must have sent at least min_recv_rate bytes per      \
   * second since min_rate_grace_ms after the phase began (the deadline is start +  \
   * grace + bytes / rate); else 408 and close. 500 B/s is Apache's default: a 2G   \
   * phone link does 10 times that, while a trickle of a byte every few seconds is  \
   * cut after the grace. Neither timer runs, nor the phase, while the engine                 \
   * itself holds reads back (backpressure): both start again when it reads on. */            \
  X(UINT, min_recv_rate, 500, "bytes/s", 0, UINT_MAX,                                         \
    "least average rate of a head or body after the grace; 408 below (0: off)")              \
  X(UINT, min_rate_grace_ms, 10000, "ms", 0, UINT_MAX, "the rate is enforced after this")     \
  X(UINT, shutdown_timeout_ms, 10000, "ms", 0, UINT_MAX, "graceful stop deadline")            \
  X(UINT, accept_backoff_ms, 500, "ms", 0, UINT_MAX,                                          \
    "after accept fails for want of descriptors or memory (EMFILE, ENFILE, ENOMEM, "        \
    "ENOBUFS), accept nothing this long or until a connection closes (0: retry at once)")    \
  X(STR, server_header, "pymongoose_uring", "", 0, 0, "the Server header; NULL or \"\" sends none") \
  X(BOOL, date_header, 1, "", 0, 1, "send the Date header on answers")                       \
  X(STR, extra_headers, NULL, "", 0, 0,                                                       \
    "header lines added to every HTTP answer, \"Name: value\" separated by CRLF (checked at " \
    "start: -EINVAL when malformed)")                                                        \
  /* WebSocket (RFC 6455, permessage-deflate RFC 7692): see pmu_ws_accept() */                \
  X(SIZE, ws_max_message, (size_t)16 << 20, "bytes", 0, SIZE_MAX,                             \
    "a WebSocket message (after inflating) beyond: close 1009 (0: no limit)")                \
  X(SIZE, ws_max_frame, (size_t)16 << 20, "bytes", 0, SIZE_MAX,                               \
    "a WebSocket frame's payload length beyond: close 1009 (0: no limit)")                   \
  X(BOOL, ws_auto_pong, 1, "", 0, 1, "answer WebSocket pings with pongs")                     \
  X(UINT, ws_ping_interval_ms, 20000, "ms", 0, UINT_MAX,                                      \
    "the server pings a WebSocket silent this long (0: off)")                                \
  X(UINT, ws_ping_timeout_ms, 20000, "ms", 0, UINT_MAX,                                       \
    "no frame at all within this after a server ping: closed, GONE 1006 (0: off)")           \
  X(UINT, ws_idle_timeout_ms, 0, "ms", 0, UINT_MAX,                                           \
    "no WebSocket message either way this long: close 1001 (0: off)")                        \
  X(UINT, ws_close_timeout_ms, 5000, "ms", 0, UINT_MAX,                                       \
    "after our close frame, wait this long for the peer's")                                  \
  X(BOOL, ws_deflate, 1, "", 0, 1, "negotiate permessage-deflate when the client offers it")  \
  X(UINT, ws_deflate_window_bits, 12, "", 9, 15,                                              \
    "LZ77 window of our compressor, and the one asked of the client when it lets us")        \
  X(UINT, ws_deflate_mem_level, 5, "", 1, 9, "zlib memLevel of our compressor")               \
  X(SIZE, ws_deflate_min_size, 128, "bytes", 0, SIZE_MAX, "messages shorter go uncompressed") \
  X(BOOL, ws_deflate_no_context_takeover, 0, "", 0, 1,                                        \
    "ask both sides to reset the compression context per message (state shared per thread)") \
  X(SIZE, ws_send_high_water, (size_t)1 << 20, "bytes", 0, SIZE_MAX,                          \
    "unsent bytes beyond which pmu_ws_send returns 1 (and DRAIN follows)")                   \
  X(SIZE, ws_send_limit, (size_t)32 << 20, "bytes", 0, SIZE_MAX,                              \
    "unsent bytes a WebSocket may hold (twice ws_max_message: the echo of the largest "     \
    "message fits); beyond: see ws_send_limit_close (0: no limit)")                          \
  X(BOOL, ws_send_limit_close, 1, "", 0, 1,                                                   \
    "over ws_send_limit: 1 drops the unsent messages and closes with 1008, 0 drops the "    \
    "connection at once (GONE 1006)")                                                        \
  /* Static files (core/static.c): the open-file cache of each ring thread and the  \
   * Range limit of mounts, pmu_serve_static and pmu_serve_file */                            \
  X(UINT, file_cache_entries, 256, "entries", 0, 1u << 20,                                    \
    "open files (fd, statx, ETag) kept per ring thread for static answers (0: no cache)")    \
  X(UINT, file_cache_valid_ms, 1000, "ms", 0, UINT_MAX,                                       \
    "a cached file is checked again (reopened when changed) after this")                     \
  X(UINT, max_ranges, 100, "ranges", 0, UINT_MAX,                                             \
    "a Range header with more ranges is ignored (200, the whole file); 0: Range ignored")     \
  /* Connection events and raw byte streams (config.conn_handler, pmu_conn_t) */              \
  X(BOOL, raw, 0, "", 0, 1,                                                                   \
    "no HTTP: every connection is a byte stream for conn_handler (PMU_CONN_EV_DATA)")        \
  X(BOOL, conn_io_events, 0, "", 0, 1, "PMU_CONN_EV_READ and PMU_CONN_EV_SENT to conn_handler") \
  X(SIZE, conn_send_high_water, (size_t)1 << 20, "bytes", 0, SIZE_MAX,                        \
    "unsent bytes of a connection beyond which pmu_conn_send returns 1 (and DRAIN follows)") \
  X(SIZE, conn_send_limit, (size_t)32 << 20, "bytes", 0, SIZE_MAX,                            \
    "unsent bytes pmu_conn_send may leave on a connection; beyond: dropped and the "        \
    "connection closed (0: no limit)")                                                       \
  X(UINT, raw_idle_timeout_ms, 0, "ms", 0, UINT_MAX,                                          \
    "a raw connection with nothing received or sent this long is closed (0: off)")           \
  /* HTTPS (OpenSSL 3, core/tls_ctx.c and core/tls.c). With ssl_certfile set the    \
   * listener speaks TLS only; the names are uvicorn's. SNI certificates are not a  \
   * knob: config.ssl_sni_certs. Files are read at start and by                      \
   * pmu_server_tls_reload(). */                                                              \
  X(STR, ssl_certfile, NULL, "path", 0, 0,                                                    \
    "PEM certificate chain, leaf first; set: the listener is HTTPS")                         \
  X(STR, ssl_keyfile, NULL, "path", 0, 0, "PEM private key (NULL: the key is in ssl_certfile)") \
  X(STR, ssl_keyfile_password, NULL, "", 0, 0, "password of an encrypted ssl_keyfile")        \
  X(STR, ssl_ca_certs, NULL, "path", 0, 0, "PEM CA bundle that verifies client certificates") \
  X(INT, ssl_cert_reqs, 0, "", 0, 2,                                                          \
    "client certificates: 0 none, 1 optional (verified when given), 2 required (Python's "   \
    "ssl.CERT_*); 1 and 2 need ssl_ca_certs")                                                \
  X(STR, ssl_ciphers, NULL, "", 0, 0,                                                         \
    "TLS 1.2 cipher list, OpenSSL syntax (NULL: ECDHE with AEAD only, Mozilla intermediate)") \
  X(STR, ssl_ciphersuites, NULL, "", 0, 0, "TLS 1.3 cipher suites (NULL: OpenSSL's default)") \
  X(STR, ssl_min_version, "TLSv1.2", "", 0, 0,                                                \
    "lowest protocol accepted: \"TLSv1.2\" or \"TLSv1.3\" (1.3 preferred when offered)")      \
  X(STR, ssl_alpn, "http/1.1", "", 0, 0,                                                      \
    "ALPN protocols, comma-separated, in the server's order of preference; a client offering " \
    "none of them fails the handshake")                                                      \
  X(STR, ssl_ocsp_file, NULL, "path", 0, 0,                                                   \
    "a DER OCSP response for ssl_certfile's certificate, stapled when a client asks (nginx's " \
    "ssl_stapling_file; re-read by pmu_server_tls_reload)")                                  \
  X(BOOL, ssl_session_tickets, 1, "", 0, 1,                                                   \
    "resumption by session tickets (keys random per server, shared by its threads, rotated)") \
  X(UINT, ssl_ticket_rotate_ms, 3600000, "ms", 1000, UINT_MAX,                                \
    "a new ticket key this often; the previous one still decrypts for one more period")      \
  X(UINT, ssl_handshake_timeout_ms, 10000, "ms", 0, UINT_MAX,                                 \
    "a TLS handshake not finished in this time is closed (0: off)")                          \
  X(UINT, ssl_max_handshakes, 256, "connections", 0, UINT_MAX,                                \
    "connections mid-handshake per ring thread; more wait unread for a slot (0: no limit)")  \
  X(BOOL, ssl_ktls, 1, "", 0, 1,                                                              \
    "hand established sessions to kernel TLS when the kernel and OpenSSL can (pmu_probe)")   \
  X(BOOL, ssl_cert_per_conn, 0, "", 0, 1,                                                     \
    "TLS with no ssl_certfile: conn_handler gives each connection its certificate after "   \
    "OPEN (pmu_conn_tls_use); the handshake waits for it")
/* clang-format on */

/* The C type of each knob type of PMU_CONFIG_KNOBS. */
#define PMU_KNOB_CTYPE_STR const char *
#define PMU_KNOB_CTYPE_PORT uint16_t
#define PMU_KNOB_CTYPE_INT int
#define PMU_KNOB_CTYPE_UINT unsigned
#define PMU_KNOB_CTYPE_SIZE size_t
#define PMU_KNOB_CTYPE_BOOL int
#define PMU_KNOB_FIELD(type, name, def, unit, min, max, doc) PMU_KNOB_CTYPE_##type name;

/*
 * The configuration: the knobs above (pmu_config_init() fills their
 * defaults), then the callbacks.
 */
typedef struct pmu_config {
  PMU_CONFIG_KNOBS(PMU_KNOB_FIELD)

  pmu_batch_handler_fn handler; /* required (unless config.raw) */
  void *handler_data;
  pmu_thread_fn on_thread_start; /* optional */
  pmu_thread_fn on_thread_stop;  /* optional */
  pmu_request_fn on_disconnect;  /* optional */
  pmu_request_fn on_drain;       /* optional */
  pmu_request_fn on_peer_eof;    /* optional */
  pmu_body_fn on_body;           /* optional: see body_stream_threshold */
  pmu_log_fn log;                /* pmu_log_stderr; NULL: silent. See pmu_log_fn */
  pmu_slow_fn on_slow;           /* optional: slow handler calls (see pmu_slow_t); NULL: log */
  pmu_ws_handler_fn ws_handler;  /* optional: WebSocket events; see pmu_ws_accept */
  /* optional: connection events and raw streams (see pmu_conn_t); required by
   * config.raw, which makes handler optional */
  pmu_conn_handler_fn conn_handler;
  /* Directories the engine serves itself on its ring threads, before the handler
   * sees the request (no handler call per request): see pmu_static_t. The longest
   * matching prefix wins. Copied at pmu_server_start (strings too); a root that
   * cannot be opened fails the start with a clear pmu_server_error(). */
  const struct pmu_static *statics;
  size_t static_count;
  /* More certificates for HTTPS, chosen by the client's SNI (see pmu_tls_cert_t).
   * Copied at pmu_server_start (strings too); used only with ssl_certfile set. */
  const struct pmu_tls_cert *ssl_sni_certs;
  size_t ssl_sni_cert_count;
  /* Driven (1): the engine starts no thread; the thread that calls
   * pmu_server_start runs the one ring (threads must be 1) by calling
   * pmu_server_step whenever pmu_server_fd is readable or the time it asked
   * for has come: an event loop of the embedding program's (asyncio) hosts
   * the ring, and what its callbacks answer needs no thread hand-off. */
  int driven;
  /* Driven only, optional: something for the ring (an answer, a stop) was
   * handed over on the driving thread between steps. Called there, once until
   * the next step, instead of making the descriptor readable (a write to an
   * eventfd, a wake-up through the kernel): it must see that pmu_server_step
   * runs soon (an event loop's call_soon). */
  void (*on_self_wake)(void *handler_data);
  /* Optional, ring threads (not driven): whether the handler's own queue is
   * behind: requests handed over wait while it works on others (the WSGI adapter's
   * pool). Asked each time a ring has nothing to do and would wait for its
   * first completion: while it says so, the ring waits for busy_linger_batch
   * completions or busy_linger_us instead, taking in arrivals and answers in
   * fewer, larger turns (each wake-up of a ring thread that shares a CPU with
   * the handler's threads costs both). Called without locks, often: make it a
   * load of a flag. */
  int (*busy)(void *handler_data);
} pmu_config_t;

/* Fill *config with the defaults above. */
void pmu_config_init(pmu_config_t *config);

/*
 * Create a server, bind its listeners and start its worker threads. Returns
 * 0 and sets *out, or -errno; on failure *out is still set (unless -ENOMEM)
 * so that pmu_server_error() can explain, and must be destroyed. The config
 * is copied (strings too). Returns once every ring is up or one has failed.
 */
int pmu_server_start(const pmu_config_t *config, pmu_server_t **out);

/* Words for the last failure of this server: the cause and the fix. */
const char *pmu_server_error(const pmu_server_t *server);

/* The TCP port actually bound (useful with port 0); 0 for a Unix socket. */
uint16_t pmu_server_port(const pmu_server_t *server);

/* Number of worker threads. */
unsigned pmu_server_threads(const pmu_server_t *server);

/*
 * Begin a graceful stop, from any thread, any number of times: stop
 * accepting, close idle connections, let in-flight requests finish for up to
 * config.shutdown_timeout_ms, then close the rest. Returns at once.
 */
void pmu_server_stop(pmu_server_t *server);

/* Wait until every worker thread has exited; timeout_ms < 0 waits forever.
 * Returns 0, or -ETIMEDOUT. */
int pmu_server_wait(pmu_server_t *server, int timeout_ms);

/*
 * Driven servers (config.driven) only, on the thread that started them:
 *
 * pmu_server_fd: the descriptor to watch for readability (level-triggered:
 * readable while completions wait); -1 for a server that is not driven.
 *
 * pmu_server_step: one turn of the ring, without waiting: reap completions,
 * run handlers, submit what they answered. *next_ms: when to step again
 * even if the descriptor stays quiet (timers): 0 at once (work is left),
 * -1 only when it becomes readable. Returns 1 while the server runs, 0 once
 * it has stopped (after pmu_server_stop and its graceful stop) and released
 * its ring: pmu_server_wait() then returns on any thread; -EINVAL when not
 * driven or on another thread. Answers given on this thread between steps
 * (from the event loop's callbacks) go through the ring's queue as from any
 * other thread: they wake the descriptor (or call config.on_self_wake).
 */
int pmu_server_fd(const pmu_server_t *server);
int pmu_server_step(pmu_server_t *server, int *next_ms);

/*
 * Stop (if running), wait, and release the server. Requests still held by
 * the handler stay valid: answering them later frees them, and the last one
 * releases what remains of the server.
 */
void pmu_server_destroy(pmu_server_t *server);

/*
 * Answer a request, from any thread, exactly once. On its own worker thread
 * (inside the handler or not) the response is queued at once; from another
 * thread it is handed over through a lock-protected queue and the worker is
 * woken. If the connection has gone, the request is simply released.
 * Returns 0, or -EINVAL for a status that pmu_status_valid() refuses (1xx
 * answers are the engine's own, e.g. 100 Continue) or a header containing CR, LF or NUL; the
 * request is then answered with 500 instead.
 */
int pmu_respond(pmu_request_t *request, const pmu_response_t *response);

/* Shorthand: status, headers and a copied body. */
int pmu_respond_simple(pmu_request_t *request, int status, const pmu_header_t *headers,
                       size_t header_count, const void *body, size_t body_len);

/*
 * A streamed answer, for bodies produced piece by piece (WSGI iterables, ASGI
 * send). Like pmu_respond(), every call may come from any thread, and the
 * pieces leave in the order given, after the answers to earlier requests.
 *
 * pmu_respond_start() sends the status and headers. If the headers carry a
 * Content-Length, the body is sent as it is and must be exactly that long;
 * otherwise an HTTP/1.1 client gets Transfer-Encoding: chunked and an
 * HTTP/1.0 client a body delimited by closing the connection. HEAD, 204 and
 * 304 answers send no body: writes are accepted and dropped.
 *
 * pmu_respond_write() queues one piece: copied, unless release is given, in
 * which case the engine keeps data until it is sent and then calls
 * release(ctx) on the worker thread. Returns 0, or -EPIPE once the
 * connection is gone (the piece is dropped; stop producing and end).
 *
 * A piece beyond the Content-Length is cut off at it, and the connection
 * closes after the answer.
 *
 * pmu_respond_end() finishes the answer and releases the request: it must
 * not be touched afterwards. A body shorter than its Content-Length cannot
 * end cleanly: the connection is closed after the bytes written, and the
 * answer counts as aborted (below).
 *
 * pmu_respond_abort() ends a started answer that failed half-way (the
 * producer raised, or was dropped before the end) so that no client or cache
 * can take it for complete: what was written is sent, then the connection
 * is closed without the last chunk (or short of the Content-Length);
 * requests pipelined behind it are dropped (those the handler holds get
 * on_disconnect). It releases the request as pmu_respond_end() does and is
 * counted in stats.responses_aborted.
 *
 * Each returns -EINVAL when called out of order.
 */
int pmu_respond_start(pmu_request_t *request, int status, const pmu_header_t *headers,
                      size_t header_count);
int pmu_respond_write(pmu_request_t *request, const void *data, size_t len,
                      void (*release)(void *ctx), void *ctx);
int pmu_respond_end(pmu_request_t *request);
/*
 * pmu_respond_end() with trailer fields after the body: on a chunked answer
 * they follow the last chunk ("0", the fields, the blank line); an answer
 * framed otherwise (Content-Length, HTTP/1.0, HEAD, 204, 304), or broken,
 * has no place for them and ends without them (0). -EINVAL when called out
 * of order or for a field with a bad name or a CR, LF or NUL in its value
 * (nothing done: end the answer still); -ENOMEM when there was no memory for
 * them: the answer ended without them. The request is released otherwise as
 * by pmu_respond_end(). The head may name them in a Trailer field.
 */
int pmu_respond_end_trailers(pmu_request_t *request, const pmu_header_t *trailers, size_t count);

/*
 * Wake batching, for a thread that answers many requests in a row (a pool
 * thread of a Python adapter). An answer given off the worker thread wakes
 * that worker thread (when its queue of answers was empty): on a thread
 * answering requests one after another, that is a wake-up, and a turn of the
 * worker's loop, per answer. While a batch is set on the calling thread
 * (pmu_wake_batch_begin), those wake-ups are noted in it instead, and
 * pmu_wake_batch_flush() wakes each worker thread once. Until then the answers
 * wait in their worker's queue: the holder flushes when it runs out of work,
 * and at least every few hundred microseconds; any thread may flush (a
 * watchdog of a holder that may block). The batch keeps the servers of the
 * noted threads alive until flushed.
 */
typedef struct pmu_wake_batch pmu_wake_batch_t;

/* A new empty batch, or NULL (no memory). */
pmu_wake_batch_t *pmu_wake_batch_new(void);

/* Flush and free. No thread may still have it set. */
void pmu_wake_batch_free(pmu_wake_batch_t *batch);

/* Note the calling thread's wake-ups in `batch` from now on; NULL: wake at
 * once again (flush the previous batch yourself). */
void pmu_wake_batch_begin(pmu_wake_batch_t *batch);

/* Wake the worker threads noted; any thread. Returns how many were. */
unsigned pmu_wake_batch_flush(pmu_wake_batch_t *batch);
int pmu_respond_abort(pmu_request_t *request);

/* ---- Files ---- */

/*
 * A piece of a streamed answer (after pmu_respond_start) that is the byte range
 * [offset, offset + length) of an open regular file. The bytes leave in order with the
 * memory pieces around them and with the answers to other requests, without passing through
 * user space where the kernel allows (splice file -> pipe -> socket, io_uring), or read into
 * memory and sent for small ranges (below config.file_splice_min). Any thread.
 * The engine owns fd from this call on: it keeps it open until the range is sent or the
 * connection is gone, then calls release(ctx) once on the worker thread; with release NULL it
 * closes fd itself. (The file cache passes a release that drops its reference.)
 * Returns 0, -EPIPE once the connection is gone (release/close already done), -EINVAL out of
 * order. length counts against the Content-Length like a memory piece. A file that ends early
 * (shrank) or fails to read mid-send closes the connection after what was sent (counted in
 * file_errors and responses_aborted): a promised length is never padded with garbage.
 * For HEAD, 204 and 304 answers the piece is accepted and dropped (fd released at once).
 *
 * Memory piece bytes count in pmu_request_unsent()/output_high_water; file bytes do not,
 * but a file being sent holds its connection's output: the read path reads at most
 * file_read_chunk bytes ahead, the splice path at most one pipe's worth. A dropped or
 * refused piece (-EINVAL, -EPIPE, -ENOMEM, length 0) is released on the calling thread.
 */
int pmu_respond_write_file(pmu_request_t *request, int fd, uint64_t offset, uint64_t length,
                           void (*release)(void *ctx), void *ctx);

/* Shorthand: start (with Content-Length: length added by the engine, replacing any the
 * headers carry), one file piece, end. Returns what pmu_respond_start() returns, or the
 * piece's error; the request is released either way. */
int pmu_respond_file(pmu_request_t *request, int status, const pmu_header_t *headers,
                     size_t header_count, int fd, uint64_t offset, uint64_t length,
                     void (*release)(void *ctx), void *ctx);

/* Bytes given to pmu_respond_write() for this request not yet on the wire. */
size_t pmu_request_unsent(const pmu_request_t *request);

/*
 * Ask for config.on_drain once this stream's unsent bytes fall to half of
 * output_high_water. Returns 1 if the callback will come, 0 if the bytes are
 * already that low (no callback), -EPIPE if the connection is gone.
 */
int pmu_request_wait_drain(pmu_request_t *request);

/*
 * Nonzero if the connection of this request, held and not yet answered (or
 * its stream not yet ended), is gone: 2 when the server's stop closed it (the
 * shutdown_timeout_ms deadline passed with the request unanswered: the client
 * saw its connection closed without an answer), 1 otherwise (closed by the
 * client, reset, timed out). 0 while connected. Any thread; no side effect.
 * Once nonzero it stays so: the engine sets the mark before it calls
 * config.on_disconnect, and from then on pmu_respond_write() answers -EPIPE
 * and an answer is dropped (it still releases the request).
 */
int pmu_request_gone(const pmu_request_t *request);

/*
 * 1 if the client half-closed (FIN) after sending this request and before it
 * was answered (see on_peer_eof), 0 otherwise. Any thread; no side effect;
 * once 1 it stays 1. The answer can still be given.
 */
int pmu_request_peer_eof(const pmu_request_t *request);

/*
 * For a streamed request body: the handler has finished with n more bytes of
 * it. Any thread. The engine stops reading the connection while more than
 * output_high_water bytes are delivered and not consumed, and resumes when
 * the backlog falls to half of that. Not to be called after answering.
 */
void pmu_request_body_consumed(pmu_request_t *request, size_t n);

/* Find a request header by case-insensitive name; NULL if absent. */
const pmu_header_t *pmu_request_header(const pmu_request_t *request, const char *name);

/*
 * Accept a WebSocket handshake (request->ws_upgrade), from any thread,
 * instead of answering it. Sends 101 Switching Protocols with
 * Sec-WebSocket-Accept, the negotiated permessage-deflate (if config.ws_deflate
 * and the client offered it), the subprotocol and the headers; the connection
 * then speaks WebSocket. The request is released (like pmu_respond): do not
 * touch it afterwards. Returns the handle, or NULL with errno set: EINVAL (not
 * ws_upgrade, no config.ws_handler, or a header with CR/LF/NUL: the request is
 * then answered 500 and released), ENOMEM (answered 503). If the client
 * already left, a handle is still returned, and its first event is
 * PMU_WS_EV_GONE with code 1006.
 */
pmu_ws_t *pmu_ws_accept(pmu_request_t *request, const pmu_ws_accept_t *opts);

/*
 * Queue a message (PMU_WS_TEXT, PMU_WS_BINARY) or a control frame
 * (PMU_WS_PING, PMU_WS_PONG, payload <= 125 bytes), from any thread; messages
 * leave in the order given. The data is copied, unless release is given: then
 * the engine keeps it until sent and calls release(ctx) once on the worker
 * thread (also when it is dropped; on the calling thread when the call fails
 * at once). The engine does not check that TEXT is UTF-8: the caller
 * guarantees it. With permessage-deflate negotiated, a message of at least
 * config.ws_deflate_min_size is compressed (on the worker thread, in order).
 * Returns 0; 1 when, after this, more than ws_send_high_water bytes are unsent
 * (PMU_WS_EV_DRAIN will follow when they fall to half); -EPIPE when closing or
 * closed (data dropped, release called); -EMSGSIZE (control frame > 125
 * bytes); -EINVAL (bad opcode); -ENOMEM; -ENOBUFS: more than ws_send_limit
 * bytes would be unsent: the message is dropped and the connection closed as
 * ws_send_limit_close says.
 */
int pmu_ws_send(pmu_ws_t *ws, int opcode, const void *data, size_t len, void (*release)(void *ctx),
                void *ctx);

/*
 * Broadcast: a message framed once (unmasked, uncompressed: RFC 7692 lets any
 * message go uncompressed), then queued on many connections without copying it
 * per connection. pmu_ws_msg_new copies data once (refcount 1, NULL on ENOMEM
 * or EINVAL: opcode not TEXT/BINARY); pmu_ws_send_msg queues a reference (same
 * returns as pmu_ws_send); pmu_ws_msg_release drops the caller's reference. All
 * three from any thread.
 */
typedef struct pmu_ws_msg pmu_ws_msg_t;
pmu_ws_msg_t *pmu_ws_msg_new(int opcode, const void *data, size_t len);
int pmu_ws_send_msg(pmu_ws_t *ws, pmu_ws_msg_t *msg);
void pmu_ws_msg_release(pmu_ws_msg_t *msg);

/*
 * Begin the closing handshake, from any thread: a close frame with code
 * (1000..4999 but not 1004-1006, 1015, nor 1016..2999; 0 sends a close frame
 * without a code) and reason (<= 123 bytes, UTF-8, caller's duty), after the
 * messages already queued. The connection is closed once the peer's close
 * frame arrives, or after config.ws_close_timeout_ms. Returns 0, -EINVAL (bad
 * code or reason too long), -EPIPE (already closing or closed), -ENOMEM.
 */
int pmu_ws_close(pmu_ws_t *ws, int code, const char *reason, size_t reason_len);

/* Stop reading this connection (pause != 0) or resume it, from any thread: a
 * handler that queues messages for a slow consumer holds the client back this
 * way (TCP backpressure). Returns 0, -EPIPE (gone), -ENOMEM. */
int pmu_ws_pause_reading(pmu_ws_t *ws, int pause);

size_t pmu_ws_unsent(const pmu_ws_t *ws); /* bytes queued, not yet on the wire */
int pmu_ws_closing(const pmu_ws_t *ws);   /* 1 once a close was sent, or the peer's answered,
                                             or gone */
void *pmu_ws_user(const pmu_ws_t *ws);
void pmu_ws_set_user(pmu_ws_t *ws, void *user);
/* The negotiated extension as sent in the 101 ("permessage-deflate; ..."), ""
 * for none. */
const char *pmu_ws_extensions(const pmu_ws_t *ws);
uint64_t pmu_ws_conn_id(const pmu_ws_t *ws);
unsigned pmu_ws_thread(const pmu_ws_t *ws);

/* The handler is done with the handle (after PMU_WS_EV_GONE; calling it
 * earlier closes the connection with 1001 first and then no more events
 * come). Exactly once, from any thread, also after pmu_server_destroy(). */
void pmu_ws_release(pmu_ws_t *ws);

/*
 * Raw bytes on the connection, after everything already queued on it
 * (responses, earlier sends), from any thread; calls from one thread keep
 * their order with each other and with pmu_respond*() on that connection's
 * requests. On an HTTP connection the bytes go out verbatim between responses:
 * after the answers given so far, before the answers to requests not answered
 * yet (a handler that writes its own HTTP takes the framing on itself). The
 * data is copied unless release is given: then it is kept until sent and
 * release(ctx) is called once on the worker thread (on the calling thread if
 * the call fails at once). Returns 0; 1 when more than conn_send_high_water
 * bytes are now unsent (PMU_CONN_EV_DRAIN follows when they fall to half);
 * -EPIPE closing or closed; -EINVAL a WebSocket connection (use pmu_ws_send);
 * -ENOMEM; -ENOBUFS more than conn_send_limit bytes would be unsent: dropped
 * and the connection closed at once (CLOSE err ENOBUFS).
 */
int pmu_conn_send(pmu_conn_t *conn, const void *data, size_t len, void (*release)(void *ctx),
                  void *ctx);

#define PMU_CLOSE_AFTER_SEND 0 /* stop reading, close once what is queued is on the wire */
#define PMU_CLOSE_NOW 1        /* drop what is unsent and close at once */
/*
 * Close the connection, from any thread. AFTER_SEND: nothing more is read or
 * parsed; the bytes and answers already queued go out (an answer being
 * streamed is finished first), then the connection closes (lingering, so the
 * peer reads them all). NOW: closed at once, unsent bytes dropped. On a
 * WebSocket: AFTER_SEND sends a close frame 1000 first (as pmu_ws_close), NOW
 * closes without one. Pending (unanswered) requests of the connection are
 * released by the engine as when the client leaves (on_disconnect). Returns 0,
 * -EPIPE already closing or closed.
 */
int pmu_conn_close(pmu_conn_t *conn, int how);

/* Stop reading the connection (pause != 0) or resume it, from any thread:
 * TCP backpressure on a client. Returns 0, -EPIPE (closing or closed),
 * -ENOMEM. */
int pmu_conn_pause_reading(pmu_conn_t *conn, int pause);
size_t pmu_conn_unsent(const pmu_conn_t *conn); /* bytes of pmu_conn_send not yet on the wire */
int pmu_conn_closing(const pmu_conn_t *conn);   /* 1 once closing or closed */
uint64_t pmu_conn_id(const pmu_conn_t *conn);   /* == request->conn_id of its requests */
unsigned pmu_conn_thread(const pmu_conn_t *conn);
/* The addresses, as pmu_request_t.peer and .local. */
const struct sockaddr_storage *pmu_conn_peer(const pmu_conn_t *conn);
const struct sockaddr_storage *pmu_conn_local(const pmu_conn_t *conn);
void *pmu_conn_user(const pmu_conn_t *conn); /* NULL until set; the engine never reads it */
void pmu_conn_set_user(pmu_conn_t *conn, void *user);
/* Done with the handle: exactly once, any thread, after CLOSE (earlier:
 * closes NOW first, then no more events come), also after
 * pmu_server_destroy(). */
void pmu_conn_release(pmu_conn_t *conn);

/* The handle of the request's connection (NULL when config.conn_handler is
 * NULL). Valid while the request is (the request holds a reference). */
pmu_conn_t *pmu_request_conn(const pmu_request_t *request);

/*
 * Answer the request with these bytes, verbatim: the engine adds nothing (the
 * handler wrote its own status line, headers and framing). Any thread. The
 * request is released as by pmu_respond. The connection goes on as after any
 * response: kept alive if the request was (the engine cannot check the
 * handler's framing), closed after it otherwise or when the server is
 * stopping. Same copy/release rule as pmu_conn_send. Counted in responses,
 * and in status_classes by the status of a leading "HTTP/1.x NNN" ([0] when
 * there is none). Returns 0, -EINVAL (a streamed answer was begun: release
 * called, the request untouched), -ENOMEM (answered with a 503 that closes).
 */
int pmu_respond_raw(pmu_request_t *request, const void *data, size_t len,
                    void (*release)(void *ctx), void *ctx);

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2): base64 of the
 * SHA-1 of key + the protocol's GUID, 28 characters and a NUL into out. */
void pmu_ws_accept_key(const char *key, size_t key_len, char out[29]);

/*
 * The one rule for the status of an answer given to pmu_respond() or
 * pmu_respond_start(), which the Python binding applies too: 1 if it may be
 * sent as a final answer (200..999), else 0. 1xx are interim answers: 100
 * Continue is the engine's own, and 101 Switching Protocols is sent by
 * pmu_ws_accept() only.
 */
int pmu_status_valid(int status);

/* The reason phrase the engine sends for a status ("Unknown" if none). */
const char *pmu_status_reason(int status);

/* ---- HTTPS (config.ssl_certfile) ---- */

/*
 * Re-read every certificate, key and CA file the config names (ssl_certfile,
 * ssl_keyfile, ssl_ca_certs, ssl_sni_certs) with the same settings: new
 * handshakes use them, established connections keep what they have. Any
 * thread. Returns 0, or -errno with pmu_server_error() saying what failed
 * (nothing changes then); -EINVAL on a server without TLS.
 */
int pmu_server_tls_reload(pmu_server_t *server);

/* What a TLS connection negotiated, snapshotted at the end of its handshake. */
typedef struct pmu_tls_info {
  uint16_t version;         /* 0x0303 TLS 1.2, 0x0304 TLS 1.3 */
  uint16_t cipher_id;       /* IANA number, e.g. 0x1301 */
  const char *version_name; /* "TLSv1.3" */
  const char *cipher;       /* OpenSSL's name, e.g. "TLS_AES_128_GCM_SHA256" */
  const char *server_name;  /* the SNI the client sent; NULL: none */
  const char *alpn;         /* the negotiated protocol; NULL: none */
  uint8_t resumed;          /* the session was resumed (ticket) */
  uint8_t ktls_tx, ktls_rx; /* the kernel encrypts / decrypts this connection */
  uint8_t peer_cert;        /* the client sent a certificate (verified: else no handshake) */
  const char *peer_subject; /* its subject, RFC 4514; NULL: none */
  unsigned peer_chain_len;  /* certificates the client sent, leaf first (0: none) */
  const unsigned char *server_cert_der; /* the certificate this connection was served with */
  size_t server_cert_der_len;
} pmu_tls_info_t;

/*
 * Fill *out for the TLS connection a request came on. Returns 0; -EINVAL on a
 * plain connection. The snapshot is immutable and refcounted, held by every
 * request of the connection: *out (its pointers too) stays valid, from any
 * thread, for as long as the request does, connection closed or not.
 */
int pmu_request_tls_info(const pmu_request_t *request, pmu_tls_info_t *out);
/* The client's certificate `index` (0: the leaf) as DER: 0 and *der, *len;
 * -ENOENT past the end of the chain; -EINVAL on a plain connection. */
int pmu_request_tls_peer_cert(const pmu_request_t *request, unsigned index,
                              const unsigned char **der, size_t *len);
/* The same for a connection handle; valid until pmu_conn_release(). -EINVAL on
 * a plain connection or one still in its handshake. */
int pmu_conn_tls_info(const pmu_conn_t *conn, pmu_tls_info_t *out);

/*
 * A certificate chosen per connection (config.ssl_cert_per_conn).
 *
 * With ssl_cert_per_conn (and conn_handler; ssl_certfile, ssl_sni_certs,
 * ssl_ocsp_file, ssl_ca_certs and ssl_cert_reqs unset: their part is the
 * certificate handle's) the listener speaks TLS with no certificate of its
 * own: OPEN comes at accept, before the handshake, and the handshake waits
 * when it needs a certificate (after the ClientHello) until the handler gives
 * the connection one, pmu_conn_tls_use(), or refuses it, pmu_conn_tls_decline().
 * Either may come from any thread, inside the OPEN call or later; the
 * connection holds a handshake slot (ssl_max_handshakes) while it waits, and
 * ssl_handshake_timeout_ms closes it when no answer comes. Nothing is read or
 * written as plaintext before the handshake ends (pmu_conn_send's bytes wait);
 * pmu_conn_tls_info() answers -EINVAL until then.
 *
 * A handle (pmu_tls_certs_t) is a parsed certificate chain, key and client
 * verification, made once and given to any number of connections of any
 * server: refcounted, any thread, freed when the last connection and the
 * caller's reference (pmu_tls_certs_release) are gone.
 */
typedef struct pmu_tls_certs pmu_tls_certs_t;

typedef struct pmu_tls_certs_opts {
  const void *cert; /* PEM: the chain, leaf first (required) */
  size_t cert_len;
  const void *key; /* PEM private key, unencrypted (NULL: it is in cert) */
  size_t key_len;
  const void *ca; /* PEM CA certificates that verify clients (NULL: none) */
  size_t ca_len;
  int verify; /* client certificates: 0 not asked, 1 optional, 2 required (needs ca) */
} pmu_tls_certs_opts_t;

/* A new handle (refcount 1), or NULL with errno (EINVAL, ENOMEM) and, when
 * err is given, words saying what could not be used ("the private key does
 * not match the certificate", OpenSSL's reason). Any thread. */
pmu_tls_certs_t *pmu_tls_certs_new(const pmu_tls_certs_opts_t *opts, char *err, size_t err_len);
/* Drop the caller's reference. Any thread. */
void pmu_tls_certs_release(pmu_tls_certs_t *certs);

/*
 * The connection's handshake goes on with `certs` (a reference is taken): its
 * chain and key are served and its client verification applies. Any thread.
 * Returns 0; -EPIPE closing or closed; -EINVAL the connection has no
 * per-connection certificate to give (not ssl_cert_per_conn, or already
 * answered: the first answer stands); -ENOMEM.
 */
int pmu_conn_tls_use(pmu_conn_t *conn, pmu_tls_certs_t *certs);
/* Refuse the connection: its handshake fails with a handshake_failure alert
 * (at once when the ClientHello is in, else the connection is closed
 * without one); CLOSE follows with err ECONNREFUSED. Same returns as
 * pmu_conn_tls_use. */
int pmu_conn_tls_decline(pmu_conn_t *conn);

/* Batch sizes are counted in these buckets: 1, 2-3, 4-7, ..., >= 2^15. */
#define PMU_BATCH_BUCKETS 16
#define PMU_STATUS_CLASSES 10
/* WebSocket closes are counted in these classes (see ws_closes). */
#define PMU_WS_CLOSE_CLASSES 8

/*
 * Every counter of the engine, declared once, in the order of pmu_stats_t:
 * PMU_STATS_FIELDS(X, A) calls X(name, kind, doc) for each uint64_t, whose
 * kind is COUNTER (only grows; a difference of two readings is meaningful) or
 * GAUGE (a level now), and A(name, size, doc) for each array of uint64_t.
 * pmu_stats_t, the binding's stats(), hello_server's PMU_STATS line and the
 * static checks of the struct's size come from it; the test of the knob
 * table checks the stub and the README against it. See PMU_CONFIG_KNOBS for
 * why an X-macro.
 */
/* clang-format off */
#define PMU_STATS_FIELDS(X, A)                                                                \
  X(connections_accepted, COUNTER, "connections accepted")                                    \
  X(connections_open, GAUGE, "connections open now")                                          \
  X(connections_rejected, COUNTER, "connections refused over max_connections (503)")          \
  X(accept_errors, COUNTER,                                                                   \
    "accepts failed for want of descriptors or memory (each pauses accepting for "           \
    "accept_backoff_ms)")                                                                    \
  X(requests, COUNTER, "requests received")                                                   \
  X(responses, COUNTER, "responses sent")                                                     \
  X(bytes_in, COUNTER, "bytes received")                                                      \
  X(bytes_out, COUNTER, "bytes sent")                                                         \
  X(parse_errors, COUNTER, "400/413/414/431 sent")                                            \
  X(timeouts, COUNTER, "header, body, idle and send timeouts fired")                          \
  X(enobufs, COUNTER, "times the receive buffer pool ran dry")                                \
  X(short_sends, COUNTER, "sends that wrote less than asked and were resubmitted")            \
  X(sends, COUNTER, "sends submitted")                                                        \
  X(send_zc, COUNTER, "sends done with SEND_ZC")                                              \
  X(recv_paused, COUNTER, "times a connection stopped being read (backpressure)")             \
  X(cq_overflows, COUNTER, "completions the kernel had to hold back")                         \
  X(waits, COUNTER, "io_uring_enter calls that waited for completions")                       \
  X(lingers, COUNTER,                                                                         \
    "waits for busy_linger_batch completions rather than one, the handler being busy")        \
  X(wait_errors, COUNTER,                                                                     \
    "waits that failed other than by timeout, signal or a full CQ (logged; the loop "        \
    "pauses 10 ms after each)")                                                              \
  X(cqes, COUNTER, "completions reaped; cqes / waits = CQEs per wait")                        \
  X(batches, COUNTER, "handler calls")                                                        \
  X(slow_batches, COUNTER,                                                                    \
    "handler calls (request, WebSocket and connection events) that held the ring longer "    \
    "than slow_handler_ms")                                                                  \
  A(batch_hist, PMU_BATCH_BUCKETS, "batches by size: bucket i counts 2^i <= size < 2^(i+1)")  \
  X(deferred, COUNTER, "responses that came from another thread")                             \
  /* Final responses sent, by status / 100: [2] counts 2xx, [4] 4xx, [5] 5xx        \
   * (statuses up to 999 are allowed). The engine's own answers (400, 408, 413,     \
   * 414, 431, 503) count too; 100 Continue does not. */                                      \
  A(status_classes, PMU_STATUS_CLASSES, "final responses by status / 100")                    \
  X(responses_aborted, COUNTER,                                                               \
    "streamed answers cut short (pmu_respond_abort, or a body shorter than its "             \
    "Content-Length): closed without completing them; counted in responses too")            \
  X(bodies_spooled, COUNTER, "request bodies moved to a temporary file")                      \
  X(files_sent, COUNTER, "file pieces (pmu_respond_write_file) sent whole")                   \
  X(file_bytes_spliced, COUNTER, "file bytes sent by splice (file -> pipe -> socket)")        \
  X(file_bytes_read, COUNTER, "file bytes read into memory and sent")                         \
  X(file_errors, COUNTER,                                                                     \
    "file pieces that failed to read or came up short (the file shrank): connection closed") \
  X(pipe_fallbacks, COUNTER, "file pieces sent by the read path for want of a pipe")          \
  X(file_reads_async, COUNTER,                                                                \
    "read-path reads of file bytes not in the page cache, done by the ring (not on its thread)") \
  X(body_buffer_bytes, GAUGE,                                                                 \
    "body bytes held in memory by requests (summed: the server's, against "                  \
    "body_buffer_budget)")                                                                   \
  X(ws_open, GAUGE, "WebSocket connections open now")                                         \
  X(ws_accepted, COUNTER, "WebSocket handshakes accepted (101 sent)")                         \
  X(ws_messages_in, COUNTER, "WebSocket messages received")                                   \
  X(ws_messages_out, COUNTER, "WebSocket messages queued to send")                            \
  X(ws_bytes_in, COUNTER, "WebSocket message payload bytes received (after inflating)")       \
  X(ws_bytes_out, COUNTER, "WebSocket message payload bytes queued (before compressing)")     \
  X(ws_frames_in, COUNTER, "WebSocket frames received (control frames too)")                  \
  X(ws_frames_out, COUNTER, "WebSocket frames queued to send (control frames too)")           \
  X(ws_pings_sent, COUNTER, "keepalive pings the engine sent (ws_ping_interval_ms)")          \
  /* WebSocket connections closed, by the close code that ended them (the peer's,   \
   * else the one we sent, else 1006): [0] 1000, [1] 1001, [2] 1002/1003/1007,      \
   * [3] 1008/1009, [4] 1010-1014, [5] 1006 (no close frame), [6] 3000-4999,        \
   * [7] any other. */                                                                        \
  A(ws_closes, PMU_WS_CLOSE_CLASSES, "WebSocket connections closed, by class of close code")  \
  X(ws_deflate_in_wire, COUNTER, "compressed WebSocket messages received: bytes on the wire") \
  X(ws_deflate_in_raw, COUNTER, "compressed WebSocket messages received: bytes inflated")     \
  X(ws_deflate_out_raw, COUNTER, "WebSocket messages sent compressed: bytes before")          \
  X(ws_deflate_out_wire, COUNTER, "WebSocket messages sent compressed: bytes on the wire")  \
  X(file_cache_hits, COUNTER, "static answers whose file came from the open-file cache")     \
  X(file_cache_misses, COUNTER, "static answers that had to open their file")                \
  X(static_answers, COUNTER,                                                                  \
    "answers by static mounts, pmu_serve_static and pmu_serve_file (any status)")            \
  X(not_modified, COUNTER, "304 Not Modified sent by the static file rules")                \
  X(conn_events, COUNTER, "events delivered to config.conn_handler")                         \
  X(raw_bytes_in, COUNTER, "bytes delivered in PMU_CONN_EV_DATA events (raw connections)")  \
  X(raw_bytes_out, COUNTER, "bytes queued by pmu_conn_send")                                 \
  X(raw_sends, COUNTER, "pmu_conn_send calls queued on their connection")                    \
  X(tls_handshakes, COUNTER, "TLS handshakes finished")                                       \
  X(tls_resumed, COUNTER, "TLS handshakes finished that resumed a session (ticket)")          \
  X(tls_handshake_errors, COUNTER,                                                            \
    "TLS handshakes failed (bad hello, alert, certificate refused, no ALPN overlap, version " \
    "too low)")                                                                              \
  X(tls_handshake_timeouts, COUNTER, "TLS handshakes closed by ssl_handshake_timeout_ms")     \
  X(tls_handshakes_waiting, GAUGE,                                                            \
    "accepted TLS connections waiting for a handshake slot (ssl_max_handshakes) now")        \
  X(tls_plain_http, COUNTER, "plain HTTP requests sent to the TLS port (answered 400)")       \
  X(tls_ktls, COUNTER, "TLS sessions handed to kernel TLS")                                   \
  X(tls_close_notify, COUNTER, "TLS close_notify alerts sent")
/* clang-format on */

#define PMU_STATS_SCALAR(name, kind, doc) uint64_t name;
#define PMU_STATS_ARRAY(name, size, doc) uint64_t name[size];
/* The number of uint64_t in pmu_stats_t: (0 PMU_STATS_FIELDS(PMU_STATS_ONE, PMU_STATS_SIZE)) */
#define PMU_STATS_ONE(name, kind, doc) +1
#define PMU_STATS_SIZE(name, size, doc) +(size)
#define PMU_STATS_WORDS (0 PMU_STATS_FIELDS(PMU_STATS_ONE, PMU_STATS_SIZE))

/* Counters of one worker thread. Read without stopping it. */
typedef struct pmu_stats {
  PMU_STATS_FIELDS(PMU_STATS_SCALAR, PMU_STATS_ARRAY)
} pmu_stats_t;

/* Copy the counters of thread `thread` (or the sum over all threads when
 * thread == -1) into *out. Returns 0 or -EINVAL. */
int pmu_server_stats(const pmu_server_t *server, int thread, pmu_stats_t *out);

/* What the engine found out about the ring of one thread at start-up. */
typedef struct pmu_ring_info {
  unsigned setup_flags; /* IORING_SETUP_* actually used */
  unsigned features;    /* IORING_FEAT_* the kernel reported */
  int defer_taskrun;    /* 1 if DEFER_TASKRUN was accepted */
  int sqpoll;
  int registered_files;
  int registered_ring_fd;
  int sched_batch; /* 1 if the ring's thread runs under SCHED_BATCH (config.sched_batch) */
} pmu_ring_info_t;

int pmu_server_ring_info(const pmu_server_t *server, unsigned thread, pmu_ring_info_t *out);

/* The kernel's io_uring capabilities, as probed by pmu_probe(). */
typedef struct pmu_probe {
  int available;     /* a ring could be created */
  int error;         /* -errno from the first refused step, or 0 */
  char message[512]; /* the cause and the fix when !available, else a summary */
  char kernel[64];   /* uname -r */
  unsigned features; /* IORING_FEAT_* */
  int single_issuer;
  int defer_taskrun;
  int coop_taskrun;
  int multishot_accept;
  int multishot_recv;
  int provided_buffer_ring;
  int send_zc;
  int msg_ring;
  int recv_bundle;         /* IORING_RECVSEND_BUNDLE (6.10+) */
  int incremental_buffers; /* IOU_PBUF_RING_INC (6.12+) */
  int registered_ring_fd;
  int ext_arg; /* timeouts on the wait itself */
  /* Kernel TLS: 1 when this kernel takes TCP_ULP "tls" and the OpenSSL linked
   * has kTLS; ktls_message says why not, or what it supports. */
  int ktls;
  char ktls_message[160];
} pmu_probe_t;

/* Probe the kernel. Returns 0 when io_uring can run this engine, else -errno
 * with out->message naming the cause and the fix. */
int pmu_probe(pmu_probe_t *out);

#ifdef __cplusplus
}
#endif
#endif /* PMU_PMU_H */
