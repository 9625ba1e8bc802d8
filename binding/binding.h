/*
 * binding.h: what the files of the CPython extension pymongoose_uring._pmu
 * share. Internal to binding/; the only engine interface used is
 * include/pmu/pmu.h, and nothing here knows about io_uring.
 *
 * The extension has three heap types, each created from a spec with
 * PyType_FromModuleAndSpec so that every instance reaches its module state:
 *
 *   Request   one engine request, its attributes built lazily (request.c)
 *   Response  status, headers and body a handler may return (response.c)
 *   Engine    one pmu_server_t and the batch handler that calls Python
 *             (engine.c)
 *   WebSocket one open WebSocket connection and its callbacks (websocket.c)
 *   Connection one accepted connection as the engine's conn_handler sees it:
 *             its events, raw bytes, close (conn.c)
 *
 * module.c holds the module state, probe(), the error mapping and logging.
 * stream.c holds what a request shares with the engine's worker threads
 * once it streams (its body arriving in pieces, its answer leaving in
 * pieces, its client going away): a small C object reached from both sides.
 *
 * Names say which side of the seam they live on: pmu_ is the engine's public
 * interface (include/pmu/pmu.h), pyb_ (PYB_ for macros) is this binding's
 * own, shared between its files; static names take no prefix.
 */
#ifndef PYB_BINDING_H
#define PYB_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pmu/pmu.h>

#include <pthread.h>
#include <stdatomic.h>

/* Shims for the few newer C-API calls used here (3.9 and 3.10). */
#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *o) {
  Py_INCREF(o);
  return o;
}
static inline PyObject *Py_XNewRef(PyObject *o) {
  Py_XINCREF(o);
  return o;
}
static inline int PyModule_AddObjectRef(PyObject *m, const char *name, PyObject *value) {
  Py_INCREF(value);
  if (PyModule_AddObject(m, name, value) < 0) {
    Py_DECREF(value);
    return -1;
  }
  return 0;
}
typedef enum { PYGEN_RETURN = 0, PYGEN_ERROR = -1, PYGEN_NEXT = 1 } PySendResult;
/* iter.send(arg): NEXT with what it yielded, RETURN with its value, ERROR. */
static inline PySendResult PyIter_Send(PyObject *iter, PyObject *arg, PyObject **presult) {
  *presult = PyObject_CallMethod(iter, "send", "O", arg);
  if (*presult != NULL)
    return PYGEN_NEXT;
  if (!PyErr_ExceptionMatches(PyExc_StopIteration))
    return PYGEN_ERROR;
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  *presult = value ? PyObject_GetAttrString(value, "value") : Py_NewRef(Py_None);
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  return *presult ? PYGEN_RETURN : PYGEN_ERROR;
}
#endif
#if PY_VERSION_HEX < 0x030B0000
/* Walk the MRO for the first heap type created from a module using `def`. */
static inline PyObject *pyb_compat_module_by_def(PyTypeObject *type, PyModuleDef *def) {
  PyObject *mro = type->tp_mro;
  Py_ssize_t n = mro ? PyTuple_GET_SIZE(mro) : 0;
  for (Py_ssize_t i = 0; i < n; i++) {
    PyTypeObject *t = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
    if (!(t->tp_flags & Py_TPFLAGS_HEAPTYPE))
      continue;
    PyObject *m = PyType_GetModule(t);
    if (m && PyModule_GetDef(m) == def)
      return m;
    PyErr_Clear();
  }
  PyErr_SetString(PyExc_TypeError, "type does not belong to pymongoose_uring._pmu");
  return NULL;
}
#define PyType_GetModuleByDef pyb_compat_module_by_def
#endif

/* A Content-Length value as the adapters read it: 1 to 18 ASCII digits, else
 * -1 (the Python paths judge other forms). */
static inline long long pyb_length_digits(const char *p, Py_ssize_t n) {
  if (n < 1 || n > 18)
    return -1;
  long long v = 0;
  for (Py_ssize_t k = 0; k < n; k++) {
    if (p[k] < '0' || p[k] > '9')
      return -1;
    v = v * 10 + (p[k] - '0');
  }
  return v;
}

/* Common request methods, kept as interned str objects so that building
 * request.method allocates nothing and route lookups hash nothing. */
enum {
  PYB_M_GET,
  PYB_M_POST,
  PYB_M_PUT,
  PYB_M_DELETE,
  PYB_M_HEAD,
  PYB_M_OPTIONS,
  PYB_M_PATCH,
  PYB_M_CONNECT,
  PYB_M_TRACE,
  PYB_M_COUNT
};

/* A body object the engine no longer needs (see pyb_zero_copy). */
typedef struct pyb_released {
  PyObject *obj;
  struct pyb_released *next;
  struct pyb_state *st;
} pyb_released;

/* Per-module (so per-interpreter) state. Every PyObject here is a strong
 * reference, released in module_clear. */
typedef struct pyb_state {
  /* Bodies sent without a copy, handed back by the engine on a worker
   * thread without the GIL: a lock-free stack, emptied under the GIL. */
  _Atomic(pyb_released *) released;
  PyTypeObject *request_type;
  PyTypeObject *response_type;
  PyTypeObject *engine_type;
  PyObject *error;            /* _pmu.Error(OSError) */
  PyObject *unavailable;      /* _pmu.UnavailableError(Error) */
  PyObject *disconnected;     /* _pmu.ClientDisconnected(ConnectionError) */
  PyObject *get_running_loop; /* asyncio.get_running_loop */
  PyObject *set_future;       /* fn(future, value): set_result unless done (no module ref) */
  PyObject *read_ready;       /* fn(request, future, size, chunks): a read_async step */
  unsigned long main_thread;  /* ident of the thread that imported the module */
  PyObject *logger;           /* logging.getLogger("pymongoose_uring") */
  PyObject *json_encoder;     /* json's C encoder: encoder(obj, 0) -> chunks; or NULL */
  PyObject *json_dumps;       /* fallback when the C encoder is missing: obj -> str */
  PyObject *json_loads;
  PyObject *unquote; /* urllib.parse.unquote */
  PyObject *support; /* pymongoose_uring._datastructures, imported on first use */
  PyObject *methods[PYB_M_COUNT];
  PyObject *version_10, *version_11;
  PyObject *ct_json, *ct_text, *ct_html, *ct_octet; /* default Content-Type values */
  PyObject *str_get;                                /* "GET", same object as methods[PYB_M_GET] */
  Py_ssize_t requests_alive;                        /* Request objects not yet freed (GIL held) */
  PyTypeObject *websocket_type;
  PyObject *ws_closed;              /* _pmu.WebSocketClosed(OSError) */
  PyObject *str_websocket;          /* "WEBSOCKET": the routes' method key of WebSocket handlers */
  Py_ssize_t websockets_alive;      /* WebSocket objects not yet freed (GIL held) */
  PyTypeObject *static_mount_type;  /* StaticMount (files.c) */
  PyTypeObject *file_response_type; /* FileResponse (files.c) */
  struct pyb_mg *mg;                /* mgcompat.c's types and constants (PyMem), or NULL */
  PyTypeObject *connection_type;    /* Connection (conn.c) */
  PyTypeObject *tls_certs_type;     /* TlsCerts (tls.c) */
  PyObject *conn_closed;            /* _pmu.ConnectionClosed(OSError) */
  Py_ssize_t connections_alive;     /* Connection objects not yet freed (GIL held) */
  PyObject *str_http, *str_https;   /* request.scheme's two values */
  PyObject *tls_keys;               /* tls.c's dict keys, interned (a tuple), or NULL */
  struct pyb_asgi *asgi;            /* asgi.c's types and constants (PyMem), or NULL */
  PyTypeObject *pool_type;          /* WSGIPool (wsgi.c) */
  PyTypeObject *wsgi_start_type;    /* WSGIStartResponse (wsgi.c) */
  PyTypeObject *wsgi_call_type;     /* WSGICall (wsgi.c) */
  /* (host, port) tuples of recent IP addresses (pyb_address), direct-mapped;
   * PyMem, NULL until first used. */
  struct pyb_addr_entry *addrs;
} pyb_state;

extern PyModuleDef pyb_module_def;

/* The module state of the module that defined `type` (a type of this module
 * or a subclass of one). Never fails for our own types. */
pyb_state *pyb_state_from_type(PyTypeObject *type);

/* Raise the exception matching `rc` (a -errno) with `message` (or
 * strerror when NULL): UnavailableError when io_uring itself is refused,
 * MemoryError for -ENOMEM, else Error(errno, message). Returns NULL. */
PyObject *pyb_raise_errno(pyb_state *st, int rc, const char *message);

/* A `timeout` argument in seconds: None gives -1 (no limit), a negative
 * number 0. Returns 0, or -1 with an exception set. */
int pyb_timeout_arg(PyObject *o, double *out);

/* Log the current exception through the package logger at ERROR with its
 * traceback, prefixed by `what` and the request line of `request` (may be
 * NULL). Clears the exception; never raises. */
void pyb_log_exception(pyb_state *st, const char *what, PyObject *request);

/* PyErr_Fetch, normalized, the traceback set on the value (as an `except`
 * clause sees it). New references or NULL; all NULL when no error was set. */
void pyb_fetch_error(PyObject **type, PyObject **value, PyObject **tb);

/* Log `message` (a C string, formatted with PyUnicode_FromFormatV) at
 * WARNING. Keeps any pending exception; never raises. */
void pyb_log_warning(pyb_state *st, const char *format, ...);

/* The support module (pymongoose_uring._datastructures), imported on first
 * use. Borrowed reference, or NULL with an exception set. */
PyObject *pyb_support(pyb_state *st);

/* Let the engine send response->body (the buffer of `owner`, a bytes or
 * str object) without copying it: owner is kept until the engine's
 * body_release, which only queues it; pyb_drain_released() drops it later
 * under the GIL. Returns 0, or -1 (no memory: the body is then copied). */
int pyb_zero_copy(pyb_state *st, pmu_response_t *response, PyObject *owner);

/* Drop the references the engine has handed back. GIL held. */
void pyb_drain_released(pyb_state *st);

/* Bytes a caller hands to the engine (WebSocket.send, Connection.send,
 * Request.reply_raw): a str as UTF-8 (is_text set), or any bytes-like object.
 * `owner` (borrowed) is the bytes or str whose buffer could be kept without a
 * copy, or NULL (the bytes must be copied before pyb_data_done). */
typedef struct pyb_data {
  const char *p;
  Py_ssize_t n;
  int is_text;
  PyObject *owner;
  Py_buffer view;
  int have_view;
  void (*release)(void *); /* set by pyb_data_keep, else NULL (the engine copies) */
  void *ctx;
} pyb_data;

/* Fill *d from `data`. Returns 0, or -1 with TypeError naming `what` (a str
 * or a bytes-like object expected). Call pyb_data_done() after a success. */
int pyb_data_get(PyObject *data, pyb_data *d, const char *what);

/* When the bytes are worth it (PYB_ZERO_COPY_MIN, bytes or str), let the
 * engine keep them without a copy: sets d->release and d->ctx, which the
 * engine call takes over (and calls once). Without memory it leaves them
 * NULL: the engine copies. */
void pyb_data_keep(pyb_state *st, pyb_data *d);

/* Release the view taken by pyb_data_get. */
void pyb_data_done(pyb_data *d);

/* tls.c. request.tls of a live request: a new dict describing its TLS
 * session (certificates as PEM), None (new reference) on a plain connection,
 * or NULL with an exception. */
PyObject *pyb_tls_request_dict(pyb_state *st, const pmu_request_t *request);

/* Connection.tls: the same dict without peer_cert_chain, for a connection
 * handle (NULL: released); None on a plain connection. NULL with an exception. */
PyObject *pyb_tls_conn_dict(pyb_state *st, const pmu_conn_t *conn);

/* The ASGI "tls" extension made from a request.tls dict: a new dict, None
 * (new reference) for None, or NULL with an exception. */
PyObject *pyb_tls_asgi_from_dict(pyb_state *st, PyObject *tls);

/* The same extension straight from a live request's session, without
 * building request.tls: a new dict, None (new reference) on a plain
 * connection, or NULL with an exception. */
PyObject *pyb_tls_asgi_from_request(pyb_state *st, const pmu_request_t *request);

/* request.c. The ASGI "tls" extension of a Request (request.tls built first
 * if needed): a new dict, None (new reference) on a plain connection, or NULL
 * with an exception. For scopes built in C. */
PyObject *pyb_request_asgi_tls(PyObject *request);

/* Bodies at least this long are sent without a copy (bytes and str only). */
#define PYB_ZERO_COPY_MIN 16384

/* The release callback and context that keep `owner` (bytes or str) alive
 * until the engine hands it back (then dropped by pyb_drain_released).
 * Returns 0, or -1 without an exception (no memory: copy instead). */
int pyb_keep_until_released(pyb_state *st, PyObject *owner, void (**release)(void *), void **ctx);

/* ---- engine.c: GIL on a worker thread, outside a batch ---- */

typedef struct pyb_gil {
  int how; /* 0: already held (inside a batch), 1: ring thread state, 2: PyGILState */
  PyGILState_STATE gstate;
} pyb_gil;

/* Take the GIL for an engine callback (on_body, on_drain, on_disconnect)
 * on a worker thread; pyb_ring_gil_leave gives it back. */
void pyb_ring_gil_enter(pyb_gil *g);
void pyb_ring_gil_leave(pyb_gil *g);

/* Whether the caller runs on a worker thread of some engine: blocking
 * there for the engine's own progress would deadlock. */
int pyb_in_ring_thread(void);

/* The Python callable about to handle the current request on this ring
 * thread (a route's handler, compat's handler of the connection): named by
 * the warning of a slow handler call (slow_handler_ms). Holds a reference
 * until the next; nothing off a ring thread. */
void pyb_note_callee(PyObject *fn);

/* _pmu.after_batch(fn): on a ring thread in a batch (the GIL held for it),
 * call fn() when the batch ends; anywhere else, now. The asyncio side wakes
 * its loop through this once per batch, not once per event: a wake-up given
 * mid-batch lets the loop take the GIL from the batch and come back for the
 * rest (seen on a busy machine: 4 wake-ups for one read of 100 messages). */
PyObject *pyb_after_batch(PyObject *module, PyObject *fn);

/* ---- stream.c ----
 *
 * A pyb_reqio is what a Request shares with the engine's worker threads:
 * the queue of streamed body pieces (filled by on_body on the worker
 * thread, without the GIL), the drain and disconnect signals, and the
 * asyncio waiters and disconnect callbacks to run when they come. It is
 * reference counted: one reference for the Request object, one for the
 * link from the engine request (request->user), which is cut when the
 * request is answered. Worker threads reach it only through that link,
 * under a lock, so a callback never sees a freed pyb_reqio.
 */
typedef struct pyb_piece {
  struct pyb_piece *next;
  size_t len;
  char data[];
} pyb_piece;

typedef struct pyb_reqio {
  atomic_int refs;
  pyb_state *st;
  pthread_mutex_t lock;
  pthread_cond_t cond; /* signalled on every change below */
  /* Under lock. */
  pyb_piece *head, *tail;
  size_t head_off;    /* bytes of head already handed out */
  size_t queued;      /* bytes in the queue */
  uint64_t drain_seq; /* on_drain calls so far */
  uint8_t body_done;  /* the last piece came */
  uint8_t gone;       /* the client went away while the request was held */
  uint8_t peer_eof;   /* the client half-closed (FIN) while it was held */
  uint8_t unlinked;   /* answered: the engine says nothing more about it */
  /* Python objects: set and taken with both the GIL and the lock held; a
   * worker thread tests them for NULL under the lock alone, to know
   * whether it needs the GIL at all. */
  PyObject *read_waiter;   /* (loop, future, request, size, chunks) or NULL */
  PyObject *drain_waiters; /* list of (loop, future), or NULL */
  PyObject *callbacks;     /* list of disconnect callbacks, or NULL */
} pyb_reqio;

/* A new pyb_reqio with one reference (the caller's), or NULL with
 * MemoryError. GIL held. */
pyb_reqio *pyb_reqio_new(pyb_state *st);

/* Link io to the live engine request (a second reference) and find out
 * whether its client has already gone. GIL held. */
void pyb_reqio_link(pyb_reqio *io, pmu_request_t *request);

/* Cut the link before the request is answered: the engine's callbacks no
 * longer reach io; waiters are woken. GIL held. */
void pyb_reqio_unlink(pyb_reqio *io, pmu_request_t *request);

/* pyb_reqio_unlink in two steps, for an answer that may not happen
 * (Request.serve_static with a fallthrough mount): cut the engine's link
 * (returns whether it was linked), then either restore it
 * (pyb_reqio_relink, the reference kept: only when cut returned 1) or
 * finish the unlink once the request is answered. GIL held. */
int pyb_reqio_cut(pyb_reqio *io, pmu_request_t *request);
void pyb_reqio_relink(pyb_reqio *io, pmu_request_t *request);
void pyb_reqio_finish_unlink(pyb_reqio *io, int linked);

/* The Request is going away: drop its Python objects and its reference.
 * GIL held. */
void pyb_reqio_drop(pyb_reqio *io);

/* The garbage collector's view of the disconnect callbacks, which are the
 * Request's own (they are only ever called for it, and are dropped when it is
 * answered): visit them, or drop them to break a cycle. GIL held. The read
 * and drain waiters are not visited: the engine's thread will wake them, so
 * they are roots, not garbage, even when nothing else refers to them. */
int pyb_reqio_traverse(pyb_reqio *io, visitproc visit, void *arg);
void pyb_reqio_clear_callbacks(pyb_reqio *io);

/* Outcome of one attempt to read from the queue. */
enum { PYB_READ_ERROR = -1, PYB_READ_WAIT = 0, PYB_READ_DONE = 1 };

/*
 * Take bytes from the queue, GIL held: up to `size` (size < 0: all that is
 * queued). PYB_READ_DONE sets *out (b"" at the end of the body);
 * PYB_READ_ERROR sets an exception (ClientDisconnected, or RuntimeError
 * when the request was answered before its body ended); PYB_READ_WAIT
 * means nothing is there yet: then `waiter`, when not NULL, is stored as
 * io->read_waiter in the same locked step (a reference is taken), so no
 * piece can slip in between.
 */
int pyb_reqio_take(pyb_reqio *io, Py_ssize_t size, PyObject *waiter, PyObject **out);

/* Wait, without the GIL, until there is something to take or
 * `deadline` (CLOCK_MONOTONIC seconds; < 0: none) passes. */
void pyb_reqio_wait_data(pyb_reqio *io, double deadline);

/* The drain counter and the gone flag, read under the lock. */
uint64_t pyb_reqio_drain_seq(pyb_reqio *io, int *gone);

/* Wait, without the GIL, until the drain counter moves past `seq`, the
 * client goes or the request is unlinked, or `deadline` (< 0: none)
 * passes. Returns 1 drained (or unlinked: nothing more to wait for),
 * 0 the deadline passed, -1 the client is gone. */
int pyb_reqio_wait_drain(pyb_reqio *io, uint64_t seq, double deadline);

/* Store `waiter`, a (loop, future), to be resolved by the next drain
 * (True) or the client going away (False), unless the drain counter has
 * already moved past `seq`. Returns 1 stored, 0 already drained, -1 the
 * client is gone, -2 with an exception. GIL held. */
int pyb_reqio_add_drain_waiter(pyb_reqio *io, uint64_t seq, PyObject *waiter);

/* Add a disconnect callback. Returns 1 stored, 0 the client has already
 * gone (call it now), -1 with an exception. GIL held. */
int pyb_reqio_add_callback(pyb_reqio *io, PyObject *fn);

/* Whether the client has gone. */
int pyb_reqio_gone(pyb_reqio *io);

/* Whether the last piece of a streamed body has come. */
int pyb_reqio_body_done(pyb_reqio *io);

/* The engine's callbacks, on the request's worker thread, without the GIL. */
void pyb_stream_on_body(pmu_request_t *request, const void *data, size_t len, int last);
void pyb_stream_on_disconnect(pmu_request_t *request);
void pyb_stream_on_drain(pmu_request_t *request);
void pyb_stream_on_peer_eof(pmu_request_t *request);

/* Seconds on CLOCK_MONOTONIC. */
double pyb_now(void);

/* ---- request.c ---- */

/* Wrap an engine request; `unix_path` (borrowed, may be NULL) is the
 * server's socket path, reported as request.server; `high_water` is the
 * engine's output_high_water (write() waits above it). New reference, or
 * NULL with an exception set (the request is then still unanswered and
 * the caller must answer it). */
PyObject *pyb_request_new(pyb_state *st, pmu_request_t *request, PyObject *unix_path,
                          size_t high_water);

/* request.method and request.path, built on first use. New references. */
PyObject *pyb_request_method(PyObject *request);
PyObject *pyb_request_path(PyObject *request);
PyObject *pyb_request_client(PyObject *request); /* request.client */
PyObject *pyb_request_server(PyObject *request); /* request.server */

/* Whether the request is still waiting for its answer (neither answered
 * nor its streamed answer started). */
int pyb_request_is_live(PyObject *request);

/*
 * Answer `request` with `result`, anything a handler may return (see
 * pyb_build_response). `owner_refs` is how many references the caller knows
 * of; if more exist, the request's data is first copied so that attributes
 * stay readable after the engine frees it. Returns 0, or -1 with an
 * exception set and the request still unanswered.
 */
int pyb_request_answer(PyObject *request, PyObject *result, Py_ssize_t owner_refs);

/* Answer with a plain-text 500; used when a handler failed. No-op when
 * already answered; a started stream is aborted instead (the connection
 * closes without completing it). `owner_refs` as for pyb_request_answer. */
void pyb_request_answer_500(PyObject *request, Py_ssize_t owner_refs);

/* Whether the request is a valid WebSocket handshake (ws_upgrade). */
int pyb_request_ws_upgrade(PyObject *request);

/* What the request's attributes read (the live engine request or the
 * snapshot), or NULL with RuntimeError once it was answered and released.
 * Borrowed: valid while the Request lives and, when live, until answered. */
const pmu_request_t *pyb_request_view(PyObject *request);

/* Answer with a response the caller built (as send_response: the request's
 * data is first copied when it has more than `owner_refs` references).
 * Returns 0, or -1 with RuntimeError when it was already answered or a
 * streamed answer was started. */
int pyb_request_respond(PyObject *request, const pmu_response_t *response, Py_ssize_t owner_refs);

/* The Connection of the request (borrowed), or NULL: no connection_handler,
 * or the connection was closed and its object freed before the request was
 * answered. No attribute lookup, nothing kept: for C callers on the hot path
 * (request.connection is this). GIL held. */
PyObject *pyb_request_connection(PyObject *request);

/* (host, port) for IP families; for AF_UNIX, `unix_path` (borrowed: the
 * engine keeps only the family of Unix addresses) or None. The tuples of
 * recent addresses are kept in st (a connection's client, the server's
 * address: asked for on every request by the scope, the environ). New
 * reference or NULL. GIL held. */
PyObject *pyb_address(pyb_state *st, const struct sockaddr_storage *ss, PyObject *unix_path);
int pyb_address_traverse(pyb_state *st, visitproc visit, void *arg);
void pyb_address_clear(pyb_state *st);

/* ---- conn.c ---- */

/* Dispatch a batch of connection events to `handler` (called handler(conn,
 * event, data) once per event), making the Connection object at OPEN and
 * giving the engine's handle back after CLOSE. `unix_path` (borrowed, may be
 * NULL) is the server's socket path, reported as conn.local. GIL held, on
 * the engine thread. */
void pyb_conn_dispatch(pyb_state *st, PyObject *handler, PyObject *unix_path,
                       const pmu_conn_event_t *events, size_t count);

/* The Connection object of an engine handle (borrowed), or NULL when it has
 * none (the connection handler is off, or making it failed at OPEN). */
PyObject *pyb_conn_object(pmu_conn_t *conn);

/* A Connection object's `user` slot (borrowed), NULL when unset. For
 * mgcompat.c's dispatcher, which reads it per request. */
PyObject *pyb_conn_user_slot(PyObject *conn);

/* ---- websocket.c ---- */

/* What a WebSocket copies from its handshake request (borrowed references;
 * NULL reads as None; header_block is pyb_ws_pack_headers()'s bytes, from which
 * headers and raw_headers are built when asked for, unless headers is given). */
typedef struct pyb_ws_fields {
  PyObject *path, *raw_path, *query_string, *header_block, *headers, *client, *server,
      *http_version, *subprotocols, *subprotocol;
  uint64_t conn_id;
  unsigned thread;
} pyb_ws_fields;

/* The request's headers packed into one bytes object (per header: name and
 * value lengths as 4-byte host-order integers, then the name and the value, as
 * received): what a WebSocket keeps of them, one object instead of a list of
 * pairs. New reference or NULL. */
PyObject *pyb_ws_pack_headers(const pmu_request_t *request);

/* A new WebSocket, not yet attached to an engine handle. New reference or
 * NULL. */
PyObject *pyb_ws_new(pyb_state *st, const pyb_ws_fields *fields);

/* Set callback `name` ("on_message", ...) to fn (None clears). 0, or -1
 * with TypeError (unknown name, not callable). */
int pyb_ws_set_callback(PyObject *ws, const char *name, PyObject *fn);

/* The engine accepted: ws now speaks through `handle`, and holds the
 * reference the caller took for the engine side until GONE. */
void pyb_ws_attach(PyObject *ws, pmu_ws_t *handle);

/* Dispatch a batch of events to their WebSockets' callbacks. GIL held, on
 * the engine thread. */
void pyb_ws_dispatch(pyb_state *st, const pmu_ws_event_t *events, size_t count);

extern PyMethodDef pyb_ws_broadcast_def;

/* ---- response.c ---- */

/*
 * A response being assembled for pmu_respond(). Pointers inside `response`
 * point into Python objects that `result` or `keep` hold alive, so the
 * struct must be released only after pmu_respond() (which copies).
 */
typedef struct pyb_built {
  pmu_response_t response;
  pmu_header_t inline_headers[16];
  pmu_header_t *headers; /* inline_headers, or PyMem_Malloc'ed when more */
  size_t count, capacity;
  PyObject *keep; /* list of temporaries (encoded JSON, str() of ints), or NULL */
  int has_content_type;
  PyObject *zero_copy; /* borrowed: an immutable body worth sending uncopied */
  char *json;          /* a body encoded by the fast JSON path: json_inline or PyMem */
  size_t json_len, json_cap;
  char json_inline[512];
} pyb_built;

/*
 * Turn a handler's result into `out`: a Response, bytes, bytearray,
 * memoryview, str, dict or list (JSON), int (status alone), or a tuple
 * (body, status[, headers]) or (status, headers, body). Returns 0, or -1
 * with an exception set; call pyb_built_release() either way.
 */
int pyb_build_response(pyb_state *st, PyObject *result, pyb_built *out);

/* Response(body, status, headers, None) without the call's argument parsing
 * (for an exact int status; anything else goes through the call). New
 * reference or NULL. */
PyObject *pyb_response_new(pyb_state *st, PyObject *body, PyObject *status, PyObject *headers);
void pyb_built_release(pyb_built *built);

/* Only headers, for a streamed answer's head: validated as for a
 * response, no Content-Type added. Returns 0, or -1 with an exception;
 * call pyb_built_release() either way. */
int pyb_build_headers(PyObject *headers, pyb_built *out);

/* The answer for a request whose handler failed or dropped it: 500, a
 * text/plain "Internal Server Error" (the engine copies the body). */
extern const pmu_response_t pyb_response_500;

/* Encode `obj` as compact, ASCII-only JSON (what json.dumps(obj,
 * separators=(",", ":")) gives). New reference to a bytes object, or NULL. */
PyObject *pyb_json_bytes(pyb_state *st, PyObject *obj);

/* ---- files.c ---- */

/* A file argument as a new descriptor the caller owns (O_CLOEXEC): a path
 * (str, bytes, os.PathLike) is opened read-only; an int fd, or the fileno()
 * of an object, is duplicated, so the caller may close its own. Sets *out and
 * returns 0, or -1 with an exception (OSError from open or dup, TypeError). */
int pyb_file_fd(PyObject *file, int *out);

/* The pmu_static_t of a StaticMount (valid while the object lives), or NULL
 * with TypeError for anything else. */
const pmu_static_t *pyb_static_mount(pyb_state *st, PyObject *obj);

/*
 * The arguments of one pmu_serve_file() call, built from Python values: the
 * file as a path (path, a C copy) or a descriptor (fd, owned until handed to
 * the engine: set it to -1 then), the options with their strings and
 * validated extra headers. Pointers in opts stay valid until
 * pyb_file_call_release(), which the caller runs whether building
 * succeeded or not.
 */
typedef struct pyb_file_call {
  pmu_file_opts_t opts;
  char *path;
  int fd;
  char *content_type, *cache_control;
  pyb_built built;
  int have_built;
} pyb_file_call;

/* From serve_file()'s arguments (status 0 or 200: every rule; another:
 * the whole file with it). Returns 0, or -1 with an exception. */
int pyb_file_call_build(pyb_state *st, PyObject *file, PyObject *content_type,
                        PyObject *cache_control, PyObject *headers, int status, pyb_file_call *c);
/* From a FileResponse (result must be one). */
int pyb_file_response_call(pyb_state *st, PyObject *result, pyb_file_call *c);
void pyb_file_call_release(pyb_file_call *c);

/* ---- mgcompat.c: pymongoose's HttpMessage, Connection and dispatch ---- */

/* Create MgHttpMessage, MgConnection and MgDispatcher in `module` and their
 * constants in st->mg. 0, or -1 with an exception. */
int pyb_mg_exec(PyObject *module, pyb_state *st);
int pyb_mg_traverse(pyb_state *st, visitproc visit, void *arg);
void pyb_mg_clear(pyb_state *st);

/* ---- asgi.c: the ASGI adapter's scope, receive() and send() ---- */

/* Create ASGICycle and asgi_scope in `module`, their constants in st->asgi.
 * 0, or -1 with an exception. */
int pyb_asgi_exec(PyObject *module, pyb_state *st);
int pyb_asgi_traverse(pyb_state *st, visitproc visit, void *arg);
void pyb_asgi_clear(pyb_state *st);

/* ---- wsgi.c: the WSGI pool's queue ---- */

/* Whether obj is a WSGIPool. */
int pyb_pool_check(pyb_state *st, PyObject *obj);

/* What the pool's Request objects report (request.server of a Unix socket,
 * write()'s high water): the engine's, set when it starts. GIL held. */
void pyb_pool_bind(PyObject *pool, PyObject *unix_path, size_t high_water);

/* Queue the requests of a batch whose body is not streamed (the others are
 * skipped: their pieces follow, so they are wrapped at once by the caller).
 * Any thread, GIL or not; wakes a pool thread if all are parked. Out of
 * memory, the requests are answered 500. */
void pyb_pool_push(PyObject *pool, pmu_request_t *const *requests, size_t count);
/* Whether requests wait in the pool's queue (no lock, no GIL: config.busy). */
int pyb_pool_behind(PyObject *pool);

/* ---- type specs ---- */
extern PyType_Spec pyb_request_spec;
extern PyType_Spec pyb_response_spec;
extern PyType_Spec pyb_engine_spec;
extern PyType_Spec pyb_websocket_spec;
extern PyType_Spec pyb_static_mount_spec;
extern PyType_Spec pyb_file_response_spec;
extern PyType_Spec pyb_connection_spec;
extern PyType_Spec pyb_tls_certs_spec;
/* The engine's handle of a TlsCerts object (borrowed), or NULL with TypeError
 * set when obj is not one. */
pmu_tls_certs_t *pyb_tls_certs_handle(pyb_state *st, PyObject *obj);
extern PyType_Spec pyb_pool_spec;
extern PyType_Spec pyb_wsgi_start_spec;
extern PyType_Spec pyb_wsgi_call_spec;

/* Module-level functions defined outside module.c. */
PyObject *pyb_config_defaults(PyObject *module, PyObject *unused);
PyObject *pyb_config_knobs(PyObject *module, PyObject *unused);
PyObject *pyb_stats_counters(PyObject *module, PyObject *unused);

/* The C functions behind st->set_future and st->read_ready. */
extern PyMethodDef pyb_set_future_def;
/* future.done(): 1, 0, or -1 with an exception set (stream.c). */
int pyb_future_done(PyObject *future);
extern PyMethodDef pyb_read_ready_def;

#endif /* PYB_BINDING_H */
