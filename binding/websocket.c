/*
 * websocket.c: the WebSocket type, one open WebSocket connection
 * (pmu_ws_t), and the engine's WebSocket event handler that calls Python.
 *
 * Lifetime. A WebSocket is made by Request.accept_websocket() (request.c)
 * before the engine is asked to accept, so that the engine's handle can
 * point back at it (pmu_ws_set_user): the engine side then holds one strong
 * reference, taken at accept and dropped after the last event (GONE) has
 * been dispatched and the handle released. Until then the object cannot be
 * garbage: nothing the collector sees accounts for that reference. After
 * GONE the callbacks are dropped too (a closure that refers to the socket
 * makes a cycle that is then broken at once), and only user references keep
 * the object; it is a GC type for the cycles `user` may still make.
 *
 * Threads. The handle is released under the GIL, on the engine thread, while
 * dispatching GONE; every other use of it (send, close, ping, pause) holds
 * the GIL too, from any thread, so no call can race the release. The engine
 * calls made with the GIL held only take the loop's short queue mutex, which
 * the engine never holds while it waits for the GIL (see request.c).
 *
 * Events. pyb_ws_dispatch runs on the engine thread with the GIL taken once
 * for the whole batch (engine.c:on_ws_events) and calls each event's
 * callback attribute. A TEXT message is decoded as UTF-8 without checking
 * more than CPython's decoder does: the engine has validated it.
 */
#include "binding.h"

#include <structmember.h>

#include <errno.h>
#include <string.h>

enum { CB_MESSAGE, CB_PING, CB_PONG, CB_CLOSE, CB_DRAIN, CB_DISCONNECT, NCB };

typedef struct {
  PyObject_HEAD
  pyb_state *st;  /* borrowed: the type holds the module */
  pmu_ws_t *ws;   /* the engine's handle; NULL before accept and once released */
  int engine_ref; /* the engine side holds a reference to this object */
  int close_code; /* -1: none yet */
  PyObject *close_reason;
  /* Copied from the handshake request at accept. */
  PyObject *path, *raw_path, *query_string, *header_block, *headers, *client, *server,
      *http_version, *subprotocols, *subprotocol, *extensions;
  uint64_t conn_id;
  unsigned thread;
  PyObject *cb[NCB];
  PyObject *user;
  PyObject *weakreflist;
} WebSocketObject;

#define WS(o) ((WebSocketObject *)(o))

static const char *const callback_names[NCB] = {"on_message", "on_ping",  "on_pong",
                                                "on_close",   "on_drain", "on_disconnect"};

/* ---- creation and release ---- */

PyObject *pyb_ws_new(pyb_state *st, const pyb_ws_fields *f) {
  WebSocketObject *self = (WebSocketObject *)st->websocket_type->tp_alloc(st->websocket_type, 0);
  if (self == NULL)
    return NULL;
  self->st = st;
  st->websockets_alive++;
  self->close_code = -1;
  self->path = Py_XNewRef(f->path);
  self->raw_path = Py_XNewRef(f->raw_path);
  self->query_string = Py_XNewRef(f->query_string);
  self->header_block = Py_XNewRef(f->header_block);
  self->headers = Py_XNewRef(f->headers);
  self->client = Py_XNewRef(f->client);
  self->server = Py_XNewRef(f->server);
  self->http_version = Py_XNewRef(f->http_version);
  self->subprotocols = Py_XNewRef(f->subprotocols);
  self->subprotocol = Py_XNewRef(f->subprotocol);
  self->conn_id = f->conn_id;
  self->thread = f->thread;
  return (PyObject *)self;
}

int pyb_ws_set_callback(PyObject *op, const char *name, PyObject *fn) {
  for (int i = 0; i < NCB; i++)
    if (strcmp(name, callback_names[i]) == 0) {
      if (fn != Py_None && !PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "%s must be callable or None", name);
        return -1;
      }
      Py_XSETREF(WS(op)->cb[i], fn == Py_None ? NULL : Py_NewRef(fn));
      return 0;
    }
  PyErr_Format(PyExc_TypeError, "accept_websocket() got an unexpected keyword argument '%s'", name);
  return -1;
}

void pyb_ws_attach(PyObject *op, pmu_ws_t *ws) {
  WebSocketObject *self = WS(op);
  self->ws = ws;
  self->engine_ref = 1; /* the reference the caller took for the engine */
  const char *ext = pmu_ws_extensions(ws);
  self->extensions =
      PyUnicode_DecodeLatin1(ext ? ext : "", ext ? (Py_ssize_t)strlen(ext) : 0, NULL);
  if (self->extensions == NULL)
    PyErr_Clear(); /* read as "" */
}

/* After GONE: give the handle back and drop what may refer back. Then drop
 * the engine's reference, which may free self: the caller must not touch it
 * afterwards. */
static void release_engine_side(WebSocketObject *self) {
  if (self->ws != NULL) {
    pmu_ws_release(self->ws);
    self->ws = NULL;
  }
  for (int i = 0; i < NCB; i++)
    Py_CLEAR(self->cb[i]);
  if (self->engine_ref) {
    self->engine_ref = 0;
    Py_DECREF(self);
  }
}

/* ---- the event handler ---- */

/* Log the current exception of a callback and close the connection with
 * 1011 (internal error). Keeps serving. */
static void callback_failed(WebSocketObject *self, int which) {
  if (PyErr_ExceptionMatches(self->st->ws_closed) &&
      (self->ws == NULL || pmu_ws_closing(self->ws))) {
    /* A send that lost the race with the close: the connection is closing
     * anyway, and nothing went wrong in the callback. */
    PyErr_Clear();
    return;
  }
  PyObject *what = PyUnicode_FromFormat("WebSocket %s raised on %S; closed with 1011",
                                        callback_names[which], self->path ? self->path : Py_None);
  const char *w = what ? PyUnicode_AsUTF8(what) : NULL;
  if (w == NULL) {
    /* Keep the callback's exception, not this one's. */
    w = "a WebSocket callback raised; closed with 1011";
  }
  pyb_log_exception(self->st, w, NULL);
  Py_XDECREF(what);
  if (PyErr_Occurred())
    PyErr_Clear();
  if (self->ws != NULL)
    (void)pmu_ws_close(self->ws, 1011, "", 0);
}

/* Call callback `which` with self and up to two more arguments (stolen;
 * NULL when building one failed: then the callback is not called and the
 * error is logged like its own). */
static void call_back(WebSocketObject *self, int which, int nargs, PyObject *a1, PyObject *a2) {
  PyObject *fn = self->cb[which];
  if (fn == NULL || (nargs >= 1 && a1 == NULL) || (nargs >= 2 && a2 == NULL)) {
    Py_XDECREF(a1);
    Py_XDECREF(a2);
    if (fn != NULL)
      callback_failed(self, which);
    return;
  }
  Py_INCREF(fn); /* the callback may replace itself */
  pyb_note_callee(fn);
  PyObject *args[3] = {(PyObject *)self, a1, a2};
  PyObject *r = PyObject_Vectorcall(fn, args, (size_t)(1 + nargs), NULL);
  Py_DECREF(fn);
  Py_XDECREF(a1);
  Py_XDECREF(a2);
  if (r == NULL)
    callback_failed(self, which);
  else
    Py_DECREF(r);
}

static PyObject *reason_str(const char *data, size_t len) {
  return PyUnicode_DecodeUTF8(len ? data : "", (Py_ssize_t)len, "replace");
}

void pyb_ws_dispatch(pyb_state *st, const pmu_ws_event_t *events, size_t count) {
  pyb_drain_released(st);
  for (size_t i = 0; i < count; i++) {
    const pmu_ws_event_t *ev = &events[i];
    WebSocketObject *self = pmu_ws_user(ev->ws);
    if (self == NULL) {
      /* Not ours (never happens: every accept sets user); the handle must
       * still be given back once. */
      if (ev->type == PMU_WS_EV_GONE)
        pmu_ws_release(ev->ws);
      continue;
    }
    switch (ev->type) {
    case PMU_WS_EV_MESSAGE:
      if (self->cb[CB_MESSAGE] != NULL) {
        PyObject *data =
            ev->opcode == PMU_WS_TEXT
                ? PyUnicode_DecodeUTF8(ev->len ? ev->data : "", (Py_ssize_t)ev->len, NULL)
                : PyBytes_FromStringAndSize(ev->len ? ev->data : "", (Py_ssize_t)ev->len);
        call_back(self, CB_MESSAGE, 1, data, NULL);
      }
      break;
    case PMU_WS_EV_PING:
    case PMU_WS_EV_PONG: {
      int which = ev->type == PMU_WS_EV_PING ? CB_PING : CB_PONG;
      if (self->cb[which] != NULL)
        call_back(self, which, 1,
                  PyBytes_FromStringAndSize(ev->len ? ev->data : "", (Py_ssize_t)ev->len), NULL);
      break;
    }
    case PMU_WS_EV_CLOSE: {
      PyObject *reason = reason_str(ev->data, ev->len);
      if (reason == NULL)
        PyErr_Clear();
      self->close_code = ev->code;
      Py_XSETREF(self->close_reason, Py_XNewRef(reason));
      if (self->cb[CB_CLOSE] != NULL && reason != NULL)
        call_back(self, CB_CLOSE, 2, PyLong_FromLong(ev->code), Py_NewRef(reason));
      Py_XDECREF(reason);
      break;
    }
    case PMU_WS_EV_DRAIN:
      if (self->cb[CB_DRAIN] != NULL)
        call_back(self, CB_DRAIN, 0, NULL, NULL);
      break;
    case PMU_WS_EV_GONE:
      if (self->close_code < 0)
        self->close_code = ev->code;
      if (self->cb[CB_DISCONNECT] != NULL)
        call_back(self, CB_DISCONNECT, 1, PyLong_FromLong(ev->code), NULL);
      release_engine_side(self); /* self may be freed */
      break;
    default: break;
    }
  }
  pyb_drain_released(st);
}

/* ---- methods ---- */

/* -errno of an engine call to an exception. */
static PyObject *ws_error(WebSocketObject *self, int rc, const char *what) {
  if (rc == -EPIPE)
    PyErr_Format(self->st->ws_closed, "%s: the WebSocket is closing or closed", what);
  else if (rc == -ENOBUFS)
    PyErr_Format(self->st->ws_closed,
                 "%s: more than ws_send_limit bytes would be unsent; the message was dropped "
                 "and the connection closed",
                 what);
  else if (rc == -EMSGSIZE)
    PyErr_Format(PyExc_ValueError, "%s: a control frame's payload is at most 125 bytes", what);
  else
    pyb_raise_errno(self->st, rc, NULL);
  return NULL;
}

static int need_open(WebSocketObject *self, const char *what) {
  if (self->ws != NULL)
    return 0;
  PyErr_Format(self->st->ws_closed, "%s: the WebSocket is closed", what);
  return -1;
}

/* What send() and broadcast() take: str as TEXT (UTF-8), else a bytes-like
 * object as BINARY. Fills *d (see pyb_data_get) and *opcode. 0 or -1. */
static int message_arg(PyObject *data, pyb_data *d, int *opcode) {
  if (pyb_data_get(data, d, "a WebSocket message") < 0)
    return -1;
  *opcode = d->is_text ? PMU_WS_TEXT : PMU_WS_BINARY;
  return 0;
}

PyDoc_STRVAR(send_doc, "send(data) -> bool\n\n"
                       "Queue a message, from any thread: str as TEXT, bytes-like as BINARY.\n"
                       "True while the unsent bytes are under ws_send_high_water, False above\n"
                       "it (on_drain follows when they fall to half). Raises WebSocketClosed\n"
                       "when the connection is closing or closed, or the message would pass\n"
                       "ws_send_limit. bytes and str of 16 KiB or more are sent without a copy.");

static PyObject *ws_send(PyObject *op, PyObject *data) {
  WebSocketObject *self = WS(op);
  if (need_open(self, "send()") < 0)
    return NULL;
  pyb_data d;
  int opcode;
  if (message_arg(data, &d, &opcode) < 0)
    return NULL;
  pyb_data_keep(self->st, &d);
  int rc = pmu_ws_send(self->ws, opcode, d.p, (size_t)d.n, d.release, d.ctx);
  pyb_data_done(&d);
  pyb_drain_released(self->st);
  if (rc < 0)
    return ws_error(self, rc, "send()");
  return PyBool_FromLong(rc == 0);
}

static PyObject *control(WebSocketObject *self, int opcode, PyObject *args, const char *what) {
  Py_buffer data = {0};
  if (!PyArg_ParseTuple(args, "|y*", &data))
    return NULL;
  int rc = need_open(self, what);
  if (rc == 0) {
    rc = pmu_ws_send(self->ws, opcode, data.buf ? data.buf : "", (size_t)data.len, NULL, NULL);
    if (rc < 0)
      ws_error(self, rc, what);
  }
  if (data.obj != NULL)
    PyBuffer_Release(&data);
  if (rc < 0)
    return NULL;
  Py_RETURN_NONE;
}

PyDoc_STRVAR(ping_doc, "ping(data=b'')\n\nSend a ping (payload at most 125 bytes); any thread.");
static PyObject *ws_ping(PyObject *op, PyObject *args) {
  return control(WS(op), PMU_WS_PING, args, "ping()");
}

PyDoc_STRVAR(pong_doc, "pong(data=b'')\n\nSend an unsolicited pong (payload at most 125 bytes).");
static PyObject *ws_pong(PyObject *op, PyObject *args) {
  return control(WS(op), PMU_WS_PONG, args, "pong()");
}

PyDoc_STRVAR(close_doc, "close(code=1000, reason='')\n\n"
                        "Begin the closing handshake after the messages already queued; any\n"
                        "thread. code 1000..4999 (not 1004-1006, 1015, 1016..2999), reason at\n"
                        "most 123 bytes of UTF-8. Does nothing when already closing or closed.");

static PyObject *ws_close(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"code", "reason", NULL};
  int code = 1000;
  const char *reason = "";
  Py_ssize_t reason_len = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|is#:close", kwlist, &code, &reason, &reason_len))
    return NULL;
  WebSocketObject *self = WS(op);
  if (self->ws == NULL)
    Py_RETURN_NONE;
  if (reason_len > 123) {
    PyErr_SetString(PyExc_ValueError, "a close reason is at most 123 bytes of UTF-8");
    return NULL;
  }
  int rc = pmu_ws_close(self->ws, code, reason, (size_t)reason_len);
  if (rc == -EINVAL) {
    PyErr_Format(PyExc_ValueError,
                 "close code %d cannot be sent (1000..4999, not 1004-1006, 1015 nor 1016..2999)",
                 code);
    return NULL;
  }
  Py_RETURN_NONE; /* -EPIPE: already closing */
}

static PyObject *pause_resume(WebSocketObject *self, int pause) {
  if (self->ws != NULL) {
    int rc = pmu_ws_pause_reading(self->ws, pause);
    if (rc < 0 && rc != -EPIPE)
      return pyb_raise_errno(self->st, rc, NULL);
  }
  Py_RETURN_NONE;
}

PyDoc_STRVAR(pause_doc, "pause_reading()\n\nStop reading this connection (TCP backpressure on "
                        "the client); any thread.");
static PyObject *ws_pause_reading(PyObject *op, PyObject *unused) {
  return pause_resume(WS(op), 1);
}

PyDoc_STRVAR(resume_doc, "resume_reading()\n\nRead this connection again; any thread.");
static PyObject *ws_resume_reading(PyObject *op, PyObject *unused) {
  return pause_resume(WS(op), 0);
}

static PyObject *ws_repr(PyObject *op) {
  WebSocketObject *self = WS(op);
  return PyUnicode_FromFormat("<WebSocket %S %s>", self->path ? self->path : Py_None,
                              self->ws == NULL           ? "closed"
                              : pmu_ws_closing(self->ws) ? "closing"
                                                         : "open");
}

static PyMethodDef ws_methods[] = {
    {"send", ws_send, METH_O, send_doc},
    {"ping", ws_ping, METH_VARARGS, ping_doc},
    {"pong", ws_pong, METH_VARARGS, pong_doc},
    {"close", (PyCFunction)(void (*)(void))ws_close, METH_VARARGS | METH_KEYWORDS, close_doc},
    {"pause_reading", ws_pause_reading, METH_NOARGS, pause_doc},
    {"resume_reading", ws_resume_reading, METH_NOARGS, resume_doc},
    {NULL},
};

/* ---- attributes ---- */

#define FIELD_GETTER(name)                                   \
  static PyObject *get_##name(PyObject *op, void *closure) { \
    PyObject *v = WS(op)->name;                              \
    return Py_NewRef(v ? v : Py_None);                       \
  }
FIELD_GETTER(path)
FIELD_GETTER(raw_path)
FIELD_GETTER(query_string)
FIELD_GETTER(client)
FIELD_GETTER(server)
FIELD_GETTER(http_version)
FIELD_GETTER(subprotocol)

static PyObject *get_subprotocols(PyObject *op, void *closure) {
  WebSocketObject *self = WS(op);
  return self->subprotocols ? PyList_GetSlice(self->subprotocols, 0, PY_SSIZE_T_MAX)
                            : PyList_New(0);
}

PyObject *pyb_ws_pack_headers(const pmu_request_t *r) {
  size_t total = 0;
  for (size_t i = 0; i < r->header_count; i++)
    total += 8 + r->headers[i].name_len + r->headers[i].value_len;
  PyObject *block = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
  if (block == NULL)
    return NULL;
  char *p = PyBytes_AS_STRING(block);
  for (size_t i = 0; i < r->header_count; i++) {
    const pmu_header_t *h = &r->headers[i];
    uint32_t lens[2] = {(uint32_t)h->name_len, (uint32_t)h->value_len};
    memcpy(p, lens, 8);
    p += 8;
    if (h->name_len)
      memcpy(p, h->name, h->name_len);
    p += h->name_len;
    if (h->value_len)
      memcpy(p, h->value, h->value_len);
    p += h->value_len;
  }
  return block;
}

/* The packed headers as a list of pairs: (name, value) as bytes with names
 * lower-cased (raw_headers, what ASGI scopes carry), or as str decoded from
 * latin-1, names as sent (for Headers). New reference or NULL. */
static PyObject *unpack_headers(WebSocketObject *self, int as_bytes) {
  PyObject *list = PyList_New(0);
  if (list == NULL || self->header_block == NULL)
    return list;
  const char *p = PyBytes_AS_STRING(self->header_block);
  const char *end = p + PyBytes_GET_SIZE(self->header_block);
  while (p + 8 <= end) {
    uint32_t lens[2];
    memcpy(lens, p, 8);
    p += 8;
    const char *name = p, *value = p + lens[0];
    p = value + lens[1];
    PyObject *n, *v;
    if (as_bytes) {
      n = PyBytes_FromStringAndSize(NULL, lens[0]);
      if (n != NULL)
        for (uint32_t k = 0; k < lens[0]; k++) {
          char c = name[k];
          PyBytes_AS_STRING(n)[k] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
        }
      v = PyBytes_FromStringAndSize(value, lens[1]);
    } else {
      n = PyUnicode_DecodeLatin1(name, lens[0], NULL);
      v = PyUnicode_DecodeLatin1(value, lens[1], NULL);
    }
    PyObject *pair = Py_BuildValue("(NN)", n, v); /* steals both, NULL-safe */
    if (pair == NULL || PyList_Append(list, pair) < 0) {
      Py_XDECREF(pair);
      Py_DECREF(list);
      return NULL;
    }
    Py_DECREF(pair);
  }
  return list;
}

static PyObject *get_raw_headers(PyObject *op, void *closure) { return unpack_headers(WS(op), 1); }

/* Headers built on first use from the packed headers. */
static PyObject *get_headers(PyObject *op, void *closure) {
  WebSocketObject *self = WS(op);
  if (self->headers == NULL) {
    PyObject *support = pyb_support(self->st);
    PyObject *pairs = support ? unpack_headers(self, 0) : NULL;
    if (pairs == NULL)
      return NULL;
    self->headers = PyObject_CallMethod(support, "Headers", "O", pairs);
    Py_DECREF(pairs);
    if (self->headers == NULL)
      return NULL;
  }
  return Py_NewRef(self->headers);
}

static PyObject *get_extensions(PyObject *op, void *closure) {
  WebSocketObject *self = WS(op);
  if (self->extensions == NULL)
    return PyUnicode_FromString("");
  return Py_NewRef(self->extensions);
}

static PyObject *get_conn_id(PyObject *op, void *closure) {
  return PyLong_FromUnsignedLongLong(WS(op)->conn_id);
}

static PyObject *get_thread(PyObject *op, void *closure) {
  return PyLong_FromUnsignedLong(WS(op)->thread);
}

static PyObject *get_unsent(PyObject *op, void *closure) {
  WebSocketObject *self = WS(op);
  return PyLong_FromSize_t(self->ws ? pmu_ws_unsent(self->ws) : 0);
}

static PyObject *get_closed(PyObject *op, void *closure) {
  WebSocketObject *self = WS(op);
  return PyBool_FromLong(self->ws == NULL || pmu_ws_closing(self->ws));
}

static PyObject *get_close_code(PyObject *op, void *closure) {
  WebSocketObject *self = WS(op);
  if (self->close_code < 0)
    Py_RETURN_NONE;
  return PyLong_FromLong(self->close_code);
}

static PyObject *get_close_reason(PyObject *op, void *closure) {
  WebSocketObject *self = WS(op);
  if (self->close_reason == NULL)
    return PyUnicode_FromString("");
  return Py_NewRef(self->close_reason);
}

static PyObject *get_callback(PyObject *op, void *closure) {
  PyObject *fn = WS(op)->cb[(intptr_t)closure];
  return Py_NewRef(fn ? fn : Py_None);
}

static int set_callback(PyObject *op, PyObject *value, void *closure) {
  intptr_t i = (intptr_t)closure;
  if (value == NULL)
    value = Py_None;
  return pyb_ws_set_callback(op, callback_names[i], value);
}

static PyObject *get_user(PyObject *op, void *closure) {
  PyObject *u = WS(op)->user;
  return Py_NewRef(u ? u : Py_None);
}

static int set_user(PyObject *op, PyObject *value, void *closure) {
  Py_XSETREF(WS(op)->user, Py_XNewRef(value == Py_None ? NULL : value));
  return 0;
}

static PyGetSetDef ws_getset[] = {
    {"path", get_path, NULL, "Path of the handshake request, percent-decoded.", NULL},
    {"raw_path", get_raw_path, NULL, "Path as sent.", NULL},
    {"query_string", get_query_string, NULL, "Raw query, without '?'.", NULL},
    {"headers", get_headers, NULL, "The handshake's headers: a Headers multi-dict.", NULL},
    {"raw_headers", get_raw_headers, NULL,
     "[(name, value)] as bytes, names lower-cased, in the order received.", NULL},
    {"client", get_client, NULL, "(host, port) of the peer; None over a Unix socket.", NULL},
    {"server", get_server, NULL, "(host, port) the connection arrived on, or the socket path.",
     NULL},
    {"http_version", get_http_version, NULL, "HTTP version of the handshake ('1.1').", NULL},
    {"conn_id", get_conn_id, NULL, "Connection id, unique per server.", NULL},
    {"thread", get_thread, NULL, "Index of the engine thread that owns the connection.", NULL},
    {"subprotocols", get_subprotocols, NULL, "Subprotocols the client offered, in order.", NULL},
    {"subprotocol", get_subprotocol, NULL, "The subprotocol chosen at accept, or None.", NULL},
    {"extensions", get_extensions, NULL, "The negotiated extension ('' for none).", NULL},
    {"unsent", get_unsent, NULL, "Bytes queued, not yet on the wire.", NULL},
    {"closed", get_closed, NULL, "Whether a close was sent or received, or the connection is gone.",
     NULL},
    {"close_code", get_close_code, NULL,
     "The peer's close code (1005: none given), or 1006 when it left without one; None before.",
     NULL},
    {"close_reason", get_close_reason, NULL, "The peer's close reason ('' if none).", NULL},
    {"on_message", get_callback, set_callback,
     "on_message(ws, data): a whole message, str for TEXT, bytes for BINARY.",
     (void *)(intptr_t)CB_MESSAGE},
    {"on_ping", get_callback, set_callback,
     "on_ping(ws, data): a ping arrived (already answered when ws_auto_pong).",
     (void *)(intptr_t)CB_PING},
    {"on_pong", get_callback, set_callback, "on_pong(ws, data): a pong arrived.",
     (void *)(intptr_t)CB_PONG},
    {"on_close", get_callback, set_callback,
     "on_close(ws, code, reason): the peer's close frame (already answered).",
     (void *)(intptr_t)CB_CLOSE},
    {"on_drain", get_callback, set_callback,
     "on_drain(ws): unsent bytes fell to half of ws_send_high_water after send() returned False.",
     (void *)(intptr_t)CB_DRAIN},
    {"on_disconnect", get_callback, set_callback,
     "on_disconnect(ws, code): the connection is gone; the last call.",
     (void *)(intptr_t)CB_DISCONNECT},
    {"user", get_user, set_user, "Free for the layer above.", NULL},
    {NULL},
};

/* ---- type ---- */

static int ws_traverse(PyObject *op, visitproc visit, void *arg) {
  WebSocketObject *self = WS(op);
  Py_VISIT(Py_TYPE(op));
  for (int i = 0; i < NCB; i++)
    Py_VISIT(self->cb[i]);
  Py_VISIT(self->user);
  Py_VISIT(self->headers);
  return 0;
}

/* Break a cycle. Never reached while the engine holds a reference (the
 * object is not garbage then), so the handle is already released. */
static int ws_clear(PyObject *op) {
  WebSocketObject *self = WS(op);
  for (int i = 0; i < NCB; i++)
    Py_CLEAR(self->cb[i]);
  Py_CLEAR(self->user);
  Py_CLEAR(self->headers);
  return 0;
}

static void ws_dealloc(PyObject *op) {
  WebSocketObject *self = WS(op);
  PyTypeObject *tp = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  if (self->weakreflist != NULL)
    PyObject_ClearWeakRefs(op);
  if (self->ws != NULL) {
    /* Only when accept failed half-way: nothing else lets go of a live
     * handle, since the engine's reference keeps the object until GONE. */
    pmu_ws_release(self->ws);
    self->ws = NULL;
  }
  ws_clear(op);
  Py_CLEAR(self->close_reason);
  Py_CLEAR(self->path);
  Py_CLEAR(self->raw_path);
  Py_CLEAR(self->query_string);
  Py_CLEAR(self->header_block);
  Py_CLEAR(self->client);
  Py_CLEAR(self->server);
  Py_CLEAR(self->http_version);
  Py_CLEAR(self->subprotocols);
  Py_CLEAR(self->subprotocol);
  Py_CLEAR(self->extensions);
  self->st->websockets_alive--;
  tp->tp_free(op);
  Py_DECREF(tp);
}

static PyMemberDef ws_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(WebSocketObject, weakreflist), READONLY, NULL},
    {NULL},
};

PyDoc_STRVAR(ws_doc, "One open WebSocket connection, made by Request.accept_websocket().\n\n"
                     "Callbacks (on_message, on_ping, on_pong, on_close, on_drain,\n"
                     "on_disconnect) run on the engine thread with the GIL, taken once per\n"
                     "batch of events; an exception in one is logged and closes the\n"
                     "connection with 1011. send(), close(), ping() work from any thread.");

#if PY_VERSION_HEX < 0x030A0000
static PyObject *ws_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  PyErr_Format(PyExc_TypeError, "cannot create '%s' instances", type->tp_name);
  return NULL;
}
#endif

static PyType_Slot ws_slots[] = {
#if PY_VERSION_HEX < 0x030A0000
    {Py_tp_new, ws_new},
#endif
    {Py_tp_dealloc, ws_dealloc}, {Py_tp_traverse, ws_traverse}, {Py_tp_clear, ws_clear},
    {Py_tp_repr, ws_repr},       {Py_tp_getset, ws_getset},     {Py_tp_methods, ws_methods},
    {Py_tp_members, ws_members}, {Py_tp_doc, (void *)ws_doc},   {0, NULL},
};

#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION
#define Py_TPFLAGS_DISALLOW_INSTANTIATION 0 /* ws_new refuses instead */
#endif

PyType_Spec pyb_websocket_spec = {
    .name = "pymongoose_uring._pmu.WebSocket",
    .basicsize = sizeof(WebSocketObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ws_slots,
};

/* ---- module functions ---- */

PyDoc_STRVAR(broadcast_doc,
             "broadcast(websockets, data) -> int\n\n"
             "Send one message to many WebSockets, from any thread: framed once (str as\n"
             "TEXT, bytes-like as BINARY; never compressed) and queued on each open one\n"
             "without a copy per connection. Returns how many took it; closed ones\n"
             "and ones over ws_send_limit (which the engine then closes) are skipped.");

PyObject *pyb_ws_broadcast(PyObject *module, PyObject *args) {
  pyb_state *st = (pyb_state *)PyModule_GetState(module);
  PyObject *iterable, *data;
  if (!PyArg_ParseTuple(args, "OO:broadcast", &iterable, &data))
    return NULL;
  pyb_data d;
  int opcode;
  if (message_arg(data, &d, &opcode) < 0)
    return NULL;
  pmu_ws_msg_t *msg = pmu_ws_msg_new(opcode, d.p, (size_t)d.n);
  pyb_data_done(&d);
  if (msg == NULL)
    return PyErr_NoMemory();
  PyObject *it = PyObject_GetIter(iterable);
  if (it == NULL) {
    pmu_ws_msg_release(msg);
    return NULL;
  }
  Py_ssize_t took = 0;
  PyObject *item;
  while ((item = PyIter_Next(it)) != NULL) {
    if (!PyObject_TypeCheck(item, st->websocket_type)) {
      PyErr_Format(PyExc_TypeError, "broadcast() sends to WebSocket objects, not %.100s",
                   Py_TYPE(item)->tp_name);
      Py_DECREF(item);
      break;
    }
    WebSocketObject *ws = WS(item);
    if (ws->ws != NULL && pmu_ws_send_msg(ws->ws, msg) >= 0)
      took++;
    Py_DECREF(item);
  }
  Py_DECREF(it);
  pmu_ws_msg_release(msg);
  if (PyErr_Occurred())
    return NULL;
  return PyLong_FromSsize_t(took);
}

PyMethodDef pyb_ws_broadcast_def = {"broadcast", pyb_ws_broadcast, METH_VARARGS, broadcast_doc};
