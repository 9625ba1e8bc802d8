/*
 * conn.c: the Connection type, one accepted connection as the engine's
 * conn_handler sees it (pmu_conn_t), and the dispatch of its events to the
 * Python connection_handler.
 *
 * Lifetime. The object is made when its OPEN event is dispatched and set as
 * the handle's user pointer; the engine side then holds one strong reference
 * until CLOSE has been dispatched. Right after the CLOSE call the handle is
 * given back (pmu_conn_release) and that reference dropped, so a connection
 * nothing else holds is freed at once; one still held (a Request of it, the
 * layer above's own objects) lives on as a closed Connection: `closed` is
 * True, `unsent` 0, send() raises ConnectionClosed. Releasing at CLOSE
 * rather than at deallocation keeps no engine memory behind an object the
 * user may hold for long. While the engine holds its reference the object
 * is not garbage (nothing the collector sees accounts for it), so `user`
 * cycles are collected only after CLOSE, as for WebSocket.
 *
 * Threads. The handle is released under the GIL, on the engine thread, while
 * dispatching CLOSE; every other use of it (send, close, pause, unsent)
 * holds the GIL too, from any thread, so no call can race the release. The
 * engine calls made with the GIL held only take the loop's short queue mutex,
 * which the engine never holds while it waits for the GIL (see request.c).
 *
 * Events. pyb_conn_dispatch runs on the engine thread with the GIL taken once
 * per batch (engine.c:on_conn_events) and calls handler(conn, event, data)
 * once per event. An exception is logged with its traceback and the next
 * event goes on: the handler decides whether a failure closes a connection.
 */
#include "binding.h"

#include <structmember.h>

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

typedef struct {
  PyObject_HEAD
  pyb_state *st;    /* borrowed: the type holds the module */
  pmu_conn_t *conn; /* the engine's handle; NULL once released (after CLOSE) */
  int engine_ref;   /* the engine side holds a reference to this object */
  int close_err;    /* CLOSE's err; -1 before CLOSE */
  uint64_t id;      /* pmu_conn_id */
  unsigned thread;  /* pmu_conn_thread */
  struct sockaddr_storage peer_addr, local_addr; /* copied at OPEN: read after release too */
  PyObject *unix_path;                           /* the server's socket path (str), or NULL */
  PyObject *peer, *local;                        /* built on first use, or NULL */
  PyObject *user;
  PyObject *weakreflist;
} ConnectionObject;

#define CONN(o) ((ConnectionObject *)(o))

PyObject *pyb_conn_object(pmu_conn_t *conn) { return conn ? pmu_conn_user(conn) : NULL; }

PyObject *pyb_conn_user_slot(PyObject *conn) { return CONN(conn)->user; }

/* A new Connection for `conn`, not yet its user. New reference or NULL. */
static ConnectionObject *conn_new(pyb_state *st, pmu_conn_t *conn, PyObject *unix_path) {
  ConnectionObject *self =
      (ConnectionObject *)st->connection_type->tp_alloc(st->connection_type, 0);
  if (self == NULL)
    return NULL;
  self->st = st;
  st->connections_alive++;
  self->close_err = -1;
  self->id = pmu_conn_id(conn);
  self->thread = pmu_conn_thread(conn);
  const struct sockaddr_storage *a = pmu_conn_peer(conn);
  if (a != NULL)
    self->peer_addr = *a;
  a = pmu_conn_local(conn);
  if (a != NULL)
    self->local_addr = *a;
  self->unix_path = Py_XNewRef(unix_path);
  return self;
}

/* After CLOSE: give the handle back, then drop the engine's reference, which
 * may free self: the caller must not touch it afterwards. */
static void release_engine_side(ConnectionObject *self) {
  if (self->conn != NULL) {
    pmu_conn_set_user(self->conn, NULL);
    pmu_conn_release(self->conn);
    self->conn = NULL;
  }
  if (self->engine_ref) {
    self->engine_ref = 0;
    Py_DECREF(self);
  }
}

/* ---- the event handler ---- */

static const char *event_name(int type) {
  switch (type) {
  case PMU_CONN_EV_OPEN: return "OPEN";
  case PMU_CONN_EV_DATA: return "DATA";
  case PMU_CONN_EV_READ: return "READ";
  case PMU_CONN_EV_SENT: return "SENT";
  case PMU_CONN_EV_DRAIN: return "DRAIN";
  case PMU_CONN_EV_CLOSE: return "CLOSE";
  default: return "?";
  }
}

/* The `data` argument of an event: bytes for DATA and READ, the length for
 * SENT, err for CLOSE, None otherwise. New reference or NULL. */
static PyObject *event_data(const pmu_conn_event_t *ev) {
  switch (ev->type) {
  case PMU_CONN_EV_DATA:
  case PMU_CONN_EV_READ:
    return PyBytes_FromStringAndSize(ev->len ? ev->data : "", (Py_ssize_t)ev->len);
  case PMU_CONN_EV_SENT: return PyLong_FromSize_t(ev->len);
  case PMU_CONN_EV_CLOSE: return PyLong_FromLong(ev->err);
  default: Py_RETURN_NONE;
  }
}

/* Call handler(self, type, data); a failure (building data included) is
 * logged, never raised. */
static void call_handler(pyb_state *st, PyObject *handler, ConnectionObject *self,
                         const pmu_conn_event_t *ev) {
  PyObject *type = PyLong_FromLong(ev->type);
  PyObject *data = type ? event_data(ev) : NULL;
  PyObject *r = NULL;
  if (data != NULL) {
    PyObject *args[3] = {(PyObject *)self, type, data};
    r = PyObject_Vectorcall(handler, args, 3, NULL);
  }
  Py_XDECREF(type);
  Py_XDECREF(data);
  if (r != NULL) {
    Py_DECREF(r);
    return;
  }
  char what[96];
  snprintf(what, sizeof what, "connection_handler raised on %s of connection %llu",
           event_name(ev->type), (unsigned long long)self->id);
  pyb_log_exception(st, what, NULL);
}

void pyb_conn_dispatch(pyb_state *st, PyObject *handler, PyObject *unix_path,
                       const pmu_conn_event_t *events, size_t count) {
  pyb_drain_released(st);
  Py_INCREF(handler); /* a handler could drop the engine's last reference to itself */
  for (size_t i = 0; i < count; i++) {
    const pmu_conn_event_t *ev = &events[i];
    ConnectionObject *self = pmu_conn_user(ev->conn);
    if (ev->type == PMU_CONN_EV_OPEN && self == NULL) {
      self = conn_new(st, ev->conn, unix_path);
      if (self == NULL) {
        /* No object, no events: the connection cannot be served. */
        pyb_log_exception(st, "could not make a Connection; closed it", NULL);
        pmu_conn_close(ev->conn, PMU_CLOSE_NOW);
        continue;
      }
      self->conn = ev->conn;
      self->engine_ref = 1; /* the new reference: the engine side's until CLOSE */
      pmu_conn_set_user(ev->conn, self);
    }
    if (self == NULL) {
      /* A connection whose OPEN failed: its handle is still given back once. */
      if (ev->type == PMU_CONN_EV_CLOSE)
        pmu_conn_release(ev->conn);
      continue;
    }
    if (ev->type == PMU_CONN_EV_CLOSE) {
      self->close_err = ev->err;
      Py_INCREF(self); /* the handler may close, the release below frees */
      call_handler(st, handler, self, ev);
      release_engine_side(self);
      Py_DECREF(self);
      continue;
    }
    call_handler(st, handler, self, ev);
  }
  Py_DECREF(handler);
  pyb_drain_released(st);
}

/* ---- methods ---- */

/* The exception for a -errno of an engine call on this connection. NULL. */
static PyObject *conn_error(ConnectionObject *self, int rc, const char *what) {
  if (rc == -EPIPE)
    PyErr_Format(self->st->conn_closed, "%s: the connection is closing or closed", what);
  else if (rc == -ENOBUFS)
    PyErr_Format(self->st->conn_closed,
                 "%s: more than conn_send_limit bytes would be unsent; the data was dropped "
                 "and the connection closed",
                 what);
  else if (rc == -EINVAL)
    PyErr_Format(PyExc_RuntimeError,
                 "%s: this connection is a WebSocket now; send with its WebSocket object", what);
  else
    pyb_raise_errno(self->st, rc, NULL);
  return NULL;
}

PyDoc_STRVAR(send_doc,
             "send(data) -> bool\n\n"
             "Queue bytes on the connection after everything already queued on it, from\n"
             "any thread: a bytes-like object, or str as UTF-8. On an HTTP connection\n"
             "they go out verbatim between responses. Returns True when more than\n"
             "conn_send_high_water bytes are now unsent (a DRAIN event follows when they\n"
             "fall to half), else False. Raises ConnectionClosed when the connection is\n"
             "closing or closed, or the data would pass conn_send_limit (the connection\n"
             "is then closed). bytes and str of 16 KiB or more are sent without a copy.");

static PyObject *conn_send(PyObject *op, PyObject *data) {
  ConnectionObject *self = CONN(op);
  pyb_data d;
  if (pyb_data_get(data, &d, "send() data") < 0)
    return NULL;
  if (self->conn == NULL) {
    pyb_data_done(&d);
    return conn_error(self, -EPIPE, "send()");
  }
  pyb_data_keep(self->st, &d);
  int rc = pmu_conn_send(self->conn, d.p, (size_t)d.n, d.release, d.ctx);
  pyb_data_done(&d);
  pyb_drain_released(self->st);
  if (rc < 0)
    return conn_error(self, rc, "send()");
  return PyBool_FromLong(rc == 1);
}

PyDoc_STRVAR(close_doc, "close(now=False)\n\n"
                        "Close the connection, from any thread: after what is queued is on the\n"
                        "wire (reading stops at once), or with now=True at once, dropping what\n"
                        "is unsent. A WebSocket gets a close frame 1000 first unless now. The\n"
                        "CLOSE event follows. Does nothing when already closing or closed.");

static PyObject *conn_close(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"now", NULL};
  int now = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p:close", kwlist, &now))
    return NULL;
  ConnectionObject *self = CONN(op);
  if (self->conn != NULL)
    (void)pmu_conn_close(self->conn, now ? PMU_CLOSE_NOW : PMU_CLOSE_AFTER_SEND); /* -EPIPE: done */
  Py_RETURN_NONE;
}

PyDoc_STRVAR(pause_doc, "pause_reading(pause=True)\n\n"
                        "Stop reading the connection (TCP backpressure on the peer), or with\n"
                        "pause=False read it again; any thread. Does nothing once closed.");

static PyObject *conn_pause_reading(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"pause", NULL};
  int pause = 1;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p:pause_reading", kwlist, &pause))
    return NULL;
  ConnectionObject *self = CONN(op);
  if (self->conn != NULL) {
    int rc = pmu_conn_pause_reading(self->conn, pause);
    if (rc < 0 && rc != -EPIPE)
      return pyb_raise_errno(self->st, rc, NULL);
  }
  Py_RETURN_NONE;
}

/* pmu_conn_tls_use / _decline's refusals in words. */
static PyObject *tls_answer_error(ConnectionObject *self, int rc, const char *what) {
  if (rc == -EINVAL)
    PyErr_Format(PyExc_RuntimeError,
                 "%s: this connection has no certificate to be given (its server was not started "
                 "with ssl_cert_per_conn, or it was answered already: the first answer stands)",
                 what);
  else
    conn_error(self, rc, what);
  return NULL;
}

PyDoc_STRVAR(tls_use_doc,
             "tls_use(certs)\n\n"
             "Serve this connection's TLS handshake with certs (a TlsCerts: its chain, key\n"
             "and client verification), on a server started with ssl_cert_per_conn=True,\n"
             "from any thread: the handshake waits for this (or tls_decline()) until\n"
             "ssl_handshake_timeout_ms. Raises ConnectionClosed when the connection is\n"
             "closing or closed, RuntimeError when it has no certificate to be given (not\n"
             "ssl_cert_per_conn, or answered already).");

static PyObject *conn_tls_use(PyObject *op, PyObject *certs) {
  ConnectionObject *self = CONN(op);
  pmu_tls_certs_t *handle = pyb_tls_certs_handle(self->st, certs);
  if (handle == NULL)
    return NULL;
  int rc = self->conn != NULL ? pmu_conn_tls_use(self->conn, handle) : -EPIPE;
  if (rc < 0)
    return tls_answer_error(self, rc, "tls_use()");
  Py_RETURN_NONE;
}

PyDoc_STRVAR(tls_decline_doc,
             "tls_decline()\n\n"
             "Refuse this connection (ssl_cert_per_conn): its handshake fails with a\n"
             "handshake_failure alert, or it is closed before one when its ClientHello has\n"
             "not come yet; CLOSE follows with ECONNREFUSED. Same errors as tls_use().");

static PyObject *conn_tls_decline(PyObject *op, PyObject *unused) {
  ConnectionObject *self = CONN(op);
  int rc = self->conn != NULL ? pmu_conn_tls_decline(self->conn) : -EPIPE;
  if (rc < 0)
    return tls_answer_error(self, rc, "tls_decline()");
  Py_RETURN_NONE;
}

static PyObject *conn_repr(PyObject *op) {
  ConnectionObject *self = CONN(op);
  return PyUnicode_FromFormat("<Connection %llu %s>", (unsigned long long)self->id,
                              self->conn == NULL             ? "closed"
                              : pmu_conn_closing(self->conn) ? "closing"
                                                             : "open");
}

static PyMethodDef conn_methods[] = {
    {"send", conn_send, METH_O, send_doc},
    {"close", (PyCFunction)(void (*)(void))conn_close, METH_VARARGS | METH_KEYWORDS, close_doc},
    {"pause_reading", (PyCFunction)(void (*)(void))conn_pause_reading, METH_VARARGS | METH_KEYWORDS,
     pause_doc},
    {"tls_use", conn_tls_use, METH_O, tls_use_doc},
    {"tls_decline", conn_tls_decline, METH_NOARGS, tls_decline_doc},
    {NULL},
};

/* ---- attributes ---- */

static PyObject *get_id(PyObject *op, void *closure) {
  return PyLong_FromUnsignedLongLong(CONN(op)->id);
}

static PyObject *get_thread(PyObject *op, void *closure) {
  return PyLong_FromUnsignedLong(CONN(op)->thread);
}

static PyObject *get_peer(PyObject *op, void *closure) {
  ConnectionObject *self = CONN(op);
  if (self->peer == NULL && (self->peer = pyb_address(self->st, &self->peer_addr, NULL)) == NULL)
    return NULL;
  return Py_NewRef(self->peer);
}

static PyObject *get_local(PyObject *op, void *closure) {
  ConnectionObject *self = CONN(op);
  if (self->local == NULL &&
      (self->local = pyb_address(self->st, &self->local_addr, self->unix_path)) == NULL)
    return NULL;
  return Py_NewRef(self->local);
}

static PyObject *get_closed(PyObject *op, void *closure) {
  ConnectionObject *self = CONN(op);
  return PyBool_FromLong(self->conn == NULL || pmu_conn_closing(self->conn));
}

static PyObject *get_unsent(PyObject *op, void *closure) {
  ConnectionObject *self = CONN(op);
  return PyLong_FromSize_t(self->conn ? pmu_conn_unsent(self->conn) : 0);
}

static PyObject *get_close_error(PyObject *op, void *closure) {
  ConnectionObject *self = CONN(op);
  if (self->close_err < 0)
    Py_RETURN_NONE;
  return PyLong_FromLong(self->close_err);
}

/* Connection.tls: built at each access (connection handlers ask rarely). */
static PyObject *get_tls(PyObject *op, void *closure) {
  ConnectionObject *self = CONN(op);
  return pyb_tls_conn_dict(self->st, self->conn);
}

static PyObject *get_user(PyObject *op, void *closure) {
  PyObject *u = CONN(op)->user;
  return Py_NewRef(u ? u : Py_None);
}

static int set_user(PyObject *op, PyObject *value, void *closure) {
  Py_XSETREF(CONN(op)->user, Py_XNewRef(value == Py_None ? NULL : value));
  return 0;
}

static PyGetSetDef conn_getset[] = {
    {"id", get_id, NULL,
     "Connection id, unique per server; request.conn_id of the connection's requests.", NULL},
    {"thread", get_thread, NULL, "Index of the engine thread that owns the connection.", NULL},
    {"peer", get_peer, NULL, "(host, port) of the peer; None over a Unix socket.", NULL},
    {"local", get_local, NULL, "(host, port) the connection arrived on, or the socket path.", NULL},
    {"closed", get_closed, NULL, "Whether the connection is closing or closed.", NULL},
    {"unsent", get_unsent, NULL, "Bytes queued, not yet on the wire.", NULL},
    {"close_error", get_close_error, NULL,
     "The CLOSE event's err (0: an orderly end, else an errno); None before CLOSE.", NULL},
    {"tls", get_tls, NULL,
     "The TLS session: None on a plain connection (or once closed), else a dict as "
     "request.tls without peer_cert_chain.",
     NULL},
    {"user", get_user, set_user, "Free for the layer above (default None).", NULL},
    {NULL},
};

/* ---- type ---- */

static int conn_traverse(PyObject *op, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(op));
  Py_VISIT(CONN(op)->user);
  return 0;
}

/* Break a cycle. Never reached while the engine holds a reference (the
 * object is not garbage then), so the handle is already released. */
static int conn_clear(PyObject *op) {
  Py_CLEAR(CONN(op)->user);
  return 0;
}

static void conn_dealloc(PyObject *op) {
  ConnectionObject *self = CONN(op);
  PyTypeObject *tp = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  if (self->weakreflist != NULL)
    PyObject_ClearWeakRefs(op);
  if (self->conn != NULL) {
    /* Never while the engine's reference stands; kept as a guard so a live
     * handle is never lost: close it now and give it back. */
    pmu_conn_set_user(self->conn, NULL);
    pmu_conn_release(self->conn);
    self->conn = NULL;
  }
  conn_clear(op);
  Py_CLEAR(self->peer);
  Py_CLEAR(self->local);
  Py_CLEAR(self->unix_path);
  self->st->connections_alive--;
  tp->tp_free(op);
  Py_DECREF(tp);
}

static PyMemberDef conn_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ConnectionObject, weakreflist), READONLY, NULL},
    {NULL},
};

PyDoc_STRVAR(conn_doc,
             "One accepted connection, HTTP or raw, as the server's connection_handler\n"
             "sees it: made at its OPEN event, the same object for each of its events and\n"
             "for request.connection, closed after its CLOSE event.\n\n"
             "connection_handler(conn, event, data) runs on the engine thread with the GIL,\n"
             "taken once per batch of events; event is CONN_OPEN, CONN_DATA (raw: data is\n"
             "the bytes received), CONN_READ (conn_io_events: the bytes received),\n"
             "CONN_SENT (conn_io_events: data is how many bytes reached the socket),\n"
             "CONN_DRAIN (unsent bytes fell to half of conn_send_high_water) or CONN_CLOSE\n"
             "(the last: data is 0 or an errno). send(), close(), pause_reading() work\n"
             "from any thread.");

#if PY_VERSION_HEX < 0x030A0000
static PyObject *conn_tp_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  PyErr_Format(PyExc_TypeError, "cannot create '%s' instances", type->tp_name);
  return NULL;
}
#endif

static PyType_Slot conn_slots[] = {
#if PY_VERSION_HEX < 0x030A0000
    {Py_tp_new, conn_tp_new},
#endif
    {Py_tp_dealloc, conn_dealloc}, {Py_tp_traverse, conn_traverse}, {Py_tp_clear, conn_clear},
    {Py_tp_repr, conn_repr},       {Py_tp_getset, conn_getset},     {Py_tp_methods, conn_methods},
    {Py_tp_members, conn_members}, {Py_tp_doc, (void *)conn_doc},   {0, NULL},
};

#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION
#define Py_TPFLAGS_DISALLOW_INSTANTIATION 0 /* conn_tp_new refuses instead */
#endif

PyType_Spec pyb_connection_spec = {
    .name = "pymongoose_uring._pmu.Connection",
    .basicsize = sizeof(ConnectionObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = conn_slots,
};
