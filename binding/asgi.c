/*
 * asgi.c: the ASGI adapter's hot path (pymongoose_uring/asgi.py) in C.
 *
 *   asgi_scope(request, base, state, forwarded)  the http scope of a request
 *   ASGICycle                                   the base of asgi.py's _Cycle: one
 *                                               request's receive() and send()
 *   ASGIStarter                                 ASGIHandler._start: a request's
 *                                               scope, coroutine and Task
 *
 * What a plain request needs happens here without a Python frame: the scope
 * dict (interned keys, header pairs built once from the engine's request),
 * receive() of a buffered body, and send() of http.response.start and of a
 * whole http.response.body, which answers the request at once
 * (Request.reply). Those calls return an awaitable that is already done, so
 * `await send(...)` never yields to the loop. Everything else (a streamed
 * body either way, trailers, pathsend, disconnect waits, a body that
 * disagrees with its Content-Length, errors) is left to the Python methods
 * of the subclass, _Cycle._send and _Cycle._receive, whose coroutine is
 * returned instead: one behaviour, two speeds.
 */
#include "binding.h"

#include <structmember.h>
#include <time.h>

struct pyb_asgi {
  PyTypeObject *done_type;    /* an awaitable already done (Done below) */
  PyTypeObject *cycle_type;   /* ASGICycle */
  PyTypeObject *starter_type; /* ASGIStarter */
  PyObject *done_none;        /* the Done whose value is None, shared */
  PyObject *empty_bytes, *empty_tuple, *zero;
  /* scope keys, in the order asgi.py's ASGIHandler.scope gives them */
  PyObject *k_http_version, *k_server, *k_client, *k_method, *k_path, *k_raw_path, *k_query_string,
      *k_headers, *k_extensions, *k_state;
  /* message keys and values */
  PyObject *k_type, *k_status, *k_trailers, *k_body, *k_more_body;
  PyObject *v_http_request, *v_start, *v_body;
  /* attribute and method names */
  PyObject *a_body_streaming, *a_access_log, *a_reply, *a_send, *a_receive, *a_answered, *a_log,
      *a_wake;
  /* ASGIStarter's: the task's methods, the cycle's, the handler's (looked up
   * when used: they are for the rarer paths) */
  PyObject *m_done, *m_cancelled, *m_exception, *m_add_done_callback, *m_receive, *m_send, *m_start,
      *m_failed, *m_ended, *m_finished, *m_unfinished, *m_throw, *m_close, *m_await;
  PyTypeObject *batch_type; /* ASGIBatch */
};

/* ---- Done: an awaitable whose result is there already ---- */

typedef struct {
  PyObject_HEAD
  PyObject *value; /* the result; never NULL */
} DoneObject;

/* A new Done holding `value` (borrowed). New reference or NULL. */
static PyObject *done_new(struct pyb_asgi *a, PyObject *value) {
  if (value == Py_None)
    return Py_NewRef(a->done_none);
  DoneObject *d = PyObject_New(DoneObject, a->done_type);
  if (d == NULL)
    return NULL;
  d->value = Py_NewRef(value);
  return (PyObject *)d;
}

static void done_dealloc(PyObject *op) {
  PyTypeObject *tp = Py_TYPE(op);
  Py_DECREF(((DoneObject *)op)->value);
  tp->tp_free(op);
  Py_DECREF(tp);
}

static PyObject *done_await(PyObject *op) { return Py_NewRef(op); }

/* Iterated (await on an interpreter without am_send): stops at once with the value. */
static PyObject *done_next(PyObject *op) {
  PyObject *value = ((DoneObject *)op)->value;
  if (value == Py_None)
    return NULL; /* StopIteration(None), no exception object needed */
  /* StopIteration(value), wrapped so that a tuple or an exception stays one value. */
  PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
  if (exc != NULL) {
    PyErr_SetObject(PyExc_StopIteration, exc);
    Py_DECREF(exc);
  }
  return NULL;
}

/* The generator protocol, for code that drives an awaitable by hand: send()
 * stops with the value, throw() raises what it is given, close() does nothing. */
static PyObject *done_send_method(PyObject *op, PyObject *arg) {
  PyObject *rc = done_next(op);
  if (rc == NULL && !PyErr_Occurred())
    PyErr_SetNone(PyExc_StopIteration);
  return rc;
}

static PyObject *done_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs < 1 || nargs > 3) {
    PyErr_SetString(PyExc_TypeError, "throw(type[, value[, traceback]])");
    return NULL;
  }
  PyObject *typ = args[0], *val = nargs > 1 ? args[1] : NULL;
  if (PyExceptionInstance_Check(typ)) {
    PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
  } else if (PyExceptionClass_Check(typ)) {
    PyErr_SetObject(typ, val && val != Py_None ? val : NULL);
  } else {
    PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
  }
  return NULL;
}

static PyObject *done_close(PyObject *op, PyObject *unused) { Py_RETURN_NONE; }

static PyMethodDef done_methods[] = {
    {"send", done_send_method, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))done_throw, METH_FASTCALL, NULL},
    {"close", done_close, METH_NOARGS, NULL},
    {NULL},
};

#if PY_VERSION_HEX >= 0x030A0000
static PySendResult done_send(PyObject *op, PyObject *arg, PyObject **result) {
  *result = Py_NewRef(((DoneObject *)op)->value);
  return PYGEN_RETURN;
}
#endif

static PyType_Slot done_slots[] = {
    {Py_tp_dealloc, done_dealloc},
    {Py_am_await, done_await},
    {Py_tp_iter, done_await},
    {Py_tp_iternext, done_next},
    {Py_tp_methods, done_methods},
#if PY_VERSION_HEX >= 0x030A0000
    {Py_am_send, done_send},
#endif
    {Py_tp_doc, "What ASGICycle's send() and receive() return when the answer is there already: "
                "awaiting it gives the value without yielding to the loop."},
    {0, NULL},
};

static PyType_Spec done_spec = {
    .name = "pymongoose_uring._pmu._ASGIDone",
    .basicsize = sizeof(DoneObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = done_slots,
};

/* ---- asgi_scope ---- */

/* Lower-cased bytes of a header name. New reference or NULL. */
static PyObject *lower_bytes(const char *p, size_t n) {
  PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
  if (b == NULL)
    return NULL;
  char *out = PyBytes_AS_STRING(b);
  for (size_t k = 0; k < n; k++) {
    char c = p[k];
    out[k] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
  }
  return b;
}

/* The request's headers as ASGI carries them: [(lower-cased name, value)],
 * bytes. *forwarded is set when an X-Forwarded-For or -Proto is among them.
 * New reference or NULL. */
static PyObject *header_pairs(const pmu_request_t *r, int *forwarded) {
  PyObject *list = PyList_New((Py_ssize_t)r->header_count);
  if (list == NULL)
    return NULL;
  for (size_t i = 0; i < r->header_count; i++) {
    const pmu_header_t *h = &r->headers[i];
    PyObject *name = lower_bytes(h->name, h->name_len);
    PyObject *value =
        name ? PyBytes_FromStringAndSize(h->value_len ? h->value : "", (Py_ssize_t)h->value_len)
             : NULL;
    PyObject *pair = value ? PyTuple_New(2) : NULL;
    if (pair == NULL) {
      Py_XDECREF(name);
      Py_XDECREF(value);
      Py_DECREF(list);
      return NULL;
    }
    if (h->name_len >= 15 && strncasecmp(h->name, "x-forwarded-", 12) == 0) {
      const char *rest = PyBytes_AS_STRING(name) + 12;
      if ((h->name_len == 15 && memcmp(rest, "for", 3) == 0) ||
          (h->name_len == 17 && memcmp(rest, "proto", 5) == 0))
        *forwarded = 1;
    }
    PyTuple_SET_ITEM(pair, 0, name);  /* steals */
    PyTuple_SET_ITEM(pair, 1, value); /* steals */
    PyList_SET_ITEM(list, (Py_ssize_t)i, pair);
  }
  return list;
}

/* Bytes of a view's field (b'' when empty). New reference or NULL. */
static PyObject *field_bytes(const char *p, size_t n) {
  return PyBytes_FromStringAndSize(n ? p : "", (Py_ssize_t)n);
}

/* scope[key] = value, stealing value (NULL: an error is set already). 0 or -1. */
static int put(PyObject *scope, PyObject *key, PyObject *value) {
  if (value == NULL)
    return -1;
  int rc = PyDict_SetItem(scope, key, value);
  Py_DECREF(value);
  return rc;
}

/* A fresh extensions dict: each of base's keys with a new empty dict (an app
 * may write into its request's). New reference or NULL. */
static PyObject *fresh_extensions(PyObject *base_ext) {
  PyObject *ext = PyDict_New();
  if (ext == NULL || base_ext == NULL || !PyDict_Check(base_ext))
    return ext;
  Py_ssize_t pos = 0;
  PyObject *key, *value;
  while (PyDict_Next(base_ext, &pos, &key, &value)) {
    PyObject *fresh = PyDict_Check(value) ? PyDict_Copy(value) : Py_NewRef(value);
    if (put(ext, key, fresh) < 0) {
      Py_DECREF(ext);
      return NULL;
    }
  }
  return ext;
}

PyDoc_STRVAR(asgi_scope_doc,
             "asgi_scope(request, base, state, forwarded=None) -> dict\n\n"
             "The ASGI http scope of `request`: a copy of `base` (the constant items, in\n"
             "scope order: type, asgi, scheme, root_path...) with http_version, server,\n"
             "client, method, path, raw_path, query_string and headers from the request,\n"
             "extensions with a fresh {} per key of base's, and state a shallow copy of\n"
             "`state`. When an X-Forwarded-For or X-Forwarded-Proto header is present and\n"
             "`forwarded` is not None, forwarded(scope) is called last (it may change\n"
             "client and scheme). Equal to asgi.py's ASGIHandler.scope().");

static PyObject *make_scope(pyb_state *st, PyObject *request, const pmu_request_t *r,
                            PyObject *base, PyObject *state, PyObject *forwarded);

static PyObject *asgi_scope(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs < 3 || nargs > 4) {
    PyErr_SetString(PyExc_TypeError, "asgi_scope(request, base, state, forwarded=None)");
    return NULL;
  }
  pyb_state *st = (pyb_state *)PyModule_GetState(module);
  PyObject *request = args[0], *base = args[1], *state = args[2];
  PyObject *forwarded = nargs == 4 ? args[3] : Py_None;
  if (!PyObject_TypeCheck(request, st->request_type) || !PyDict_Check(base) ||
      !PyDict_Check(state)) {
    PyErr_SetString(PyExc_TypeError, "asgi_scope: a Request, a dict and a dict");
    return NULL;
  }
  const pmu_request_t *r = pyb_request_view(request);
  if (r == NULL)
    return NULL;
  return make_scope(st, request, r, base, state, forwarded);
}

/* asgi_scope's work, its arguments checked. New reference or NULL. */
static PyObject *make_scope(pyb_state *st, PyObject *request, const pmu_request_t *r,
                            PyObject *base, PyObject *state, PyObject *forwarded) {
  struct pyb_asgi *a = st->asgi;
  PyObject *scope = PyDict_Copy(base);
  if (scope == NULL)
    return NULL;
  int fwd = 0;
  PyObject *version =
      r->http_major == 1 && r->http_minor == 1 ? Py_NewRef(st->version_11)
      : r->http_major == 1 && r->http_minor == 0
          ? Py_NewRef(st->version_10)
          : PyUnicode_FromFormat("%u.%u", (unsigned)r->http_major, (unsigned)r->http_minor);
  if (put(scope, a->k_http_version, version) < 0)
    goto fail;
  PyObject *server = pyb_request_server(request);
  if (server != NULL && PyUnicode_Check(server)) { /* a Unix socket's path */
    PyObject *pair = PyTuple_Pack(2, server, Py_None);
    Py_SETREF(server, pair);
  }
  if (put(scope, a->k_server, server) < 0 ||
      put(scope, a->k_client, pyb_request_client(request)) < 0 ||
      put(scope, a->k_method, pyb_request_method(request)) < 0 ||
      put(scope, a->k_path, pyb_request_path(request)) < 0 ||
      put(scope, a->k_raw_path, field_bytes(r->path, r->path_len)) < 0 ||
      put(scope, a->k_query_string, field_bytes(r->query, r->query_len)) < 0 ||
      put(scope, a->k_headers, header_pairs(r, &fwd)) < 0 ||
      put(scope, a->k_extensions,
          fresh_extensions(PyDict_GetItemWithError(base, a->k_extensions))) < 0 ||
      put(scope, a->k_state, PyDict_Copy(state)) < 0)
    goto fail;
  if (fwd && forwarded != Py_None) {
    PyObject *rc = PyObject_CallOneArg(forwarded, scope);
    if (rc == NULL)
      goto fail;
    Py_DECREF(rc);
  }
  return scope;
fail:
  Py_DECREF(scope);
  return NULL;
}

/* ---- ASGICycle ---- */

typedef struct {
  PyObject_HEAD
  pyb_state *st;      /* borrowed: the type holds the module */
  struct pyb_asgi *a; /* st->asgi */
  PyObject *request, *handler;
  PyObject *status;   /* http.response.start's, as given (0 before) */
  PyObject *headers;  /* the app's, as given (None before) */
  PyObject *trailers; /* None: not announced; False: announced, body going; a list: the fields */
  PyObject *waiter;   /* a future receive() waits on, or None */
  PyObject *client;   /* scope["client"], for the access log */
  Py_ssize_t sent;    /* body bytes streamed */
  double t0;          /* perf_counter() at the start, when logging accesses; else 0 */
  char started, streaming, done, body_done, gone, watching, access_log;
} CycleObject;

#define CYC(o) ((CycleObject *)(o))

/* time.perf_counter(): CLOCK_MONOTONIC on Linux. */
static double perf_counter(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static PyObject *cycle_make(PyTypeObject *type, pyb_state *st, PyObject *request, PyObject *handler,
                            int access_log);

static PyObject *cycle_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  PyObject *request, *handler;
  if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
    PyErr_SetString(PyExc_TypeError, "ASGICycle(request, handler) takes no keyword arguments");
    return NULL;
  }
  if (!PyArg_ParseTuple(args, "OO:ASGICycle", &request, &handler))
    return NULL;
  pyb_state *st = pyb_state_from_type(type);
  PyObject *log = PyObject_GetAttr(handler, st->asgi->a_access_log);
  int access_log = log ? PyObject_IsTrue(log) : -1;
  Py_XDECREF(log);
  if (access_log < 0)
    return NULL;
  return cycle_make(type, st, request, handler, access_log);
}

/* A new cycle of `type` (ASGICycle or a subclass): cycle_new's work, and
 * ASGIStarter's, which knows the handler's access_log already. */
static PyObject *cycle_make(PyTypeObject *type, pyb_state *st, PyObject *request, PyObject *handler,
                            int access_log) {
  struct pyb_asgi *a = st->asgi;
  CycleObject *self = (CycleObject *)type->tp_alloc(type, 0);
  if (self == NULL)
    return NULL;
  self->st = st;
  self->a = a;
  self->request = Py_NewRef(request);
  self->handler = Py_NewRef(handler);
  self->status = Py_NewRef(a->zero);
  self->headers = Py_NewRef(Py_None);
  self->trailers = Py_NewRef(Py_None);
  self->waiter = Py_NewRef(Py_None);
  self->client = Py_NewRef(Py_None);
  self->access_log = (char)access_log;
  self->t0 = access_log ? perf_counter() : 0.0;
  return (PyObject *)self;
}

static int cycle_traverse(PyObject *op, visitproc visit, void *arg) {
  CycleObject *self = CYC(op);
  Py_VISIT(Py_TYPE(op));
  Py_VISIT(self->request);
  Py_VISIT(self->handler);
  Py_VISIT(self->status);
  Py_VISIT(self->headers);
  Py_VISIT(self->trailers);
  Py_VISIT(self->waiter);
  Py_VISIT(self->client);
  return 0;
}

static int cycle_clear(PyObject *op) {
  CycleObject *self = CYC(op);
  Py_CLEAR(self->request);
  Py_CLEAR(self->handler);
  Py_CLEAR(self->status);
  Py_CLEAR(self->headers);
  Py_CLEAR(self->trailers);
  Py_CLEAR(self->waiter);
  Py_CLEAR(self->client);
  return 0;
}

static void cycle_dealloc(PyObject *op) {
  PyTypeObject *tp = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  cycle_clear(op);
  tp->tp_free(op);
  Py_DECREF(tp);
}

/* message[key] (borrowed), or NULL: *err says whether an exception is set. */
static PyObject *item(PyObject *message, PyObject *key, int *err) {
  PyObject *v = PyDict_GetItemWithError(message, key);
  if (v == NULL && PyErr_Occurred())
    *err = 1;
  return v;
}

/* Whether `kind` is the interned string `want` (or equal to it). */
static int is_kind(PyObject *kind, PyObject *want) {
  return kind == want || (PyUnicode_CheckExact(kind) && PyUnicode_Compare(kind, want) == 0);
}

/*
 * The Content-Length that headers declare, read as _adapter.declared_length
 * reads it (the last value made only of ASCII digits, at most 18): >= 0 the
 * length, -1 none, -2 headers this reader does not take (not a list or tuple
 * of 2-tuples of bytes): the caller lets the Python code decide.
 */
static long long declared_length(PyObject *headers) {
  if (!PyList_Check(headers) && !PyTuple_Check(headers))
    return -2;
  PyObject *seq = headers;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  long long length = -1;
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2)
      return -2;
    PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
    if (!PyBytes_Check(name) || !PyBytes_Check(value))
      return -2;
    if (PyBytes_GET_SIZE(name) != 14 || strncasecmp(PyBytes_AS_STRING(name), "content-length", 14))
      continue;
    long long v = pyb_length_digits(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    if (v >= 0)
      length = v;
  }
  return length;
}

/* The whole answer in one: what _Cycle.send's first body does when the app
 * gives it complete (ASGIHandler._answered). 0, or -1 with an exception. */
static int answer(CycleObject *self, struct pyb_asgi *a, PyObject *body) {
  long long declared = declared_length(self->headers);
  Py_ssize_t body_len = declared >= 0 ? PyObject_Length(body) : 0;
  if (body_len < 0)
    return -1;
  if (declared == -2 || (declared >= 0 && declared != body_len)) {
    /* A length to check or warn about: the Python code knows what to do. */
    PyObject *args[] = {self->handler, self->request, (PyObject *)self, body};
    PyObject *rc =
        PyObject_VectorcallMethod(a->a_answered, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(rc);
    return rc ? 0 : -1;
  }
  PyObject *response = pyb_response_new(self->st, body, self->status, self->headers);
  if (response == NULL)
    return -1;
  PyObject *rc;
  if (Py_TYPE(self->request) == self->st->request_type && pyb_request_is_live(self->request)) {
    /* request.reply(response) without the call: Python may still read the
     * request, so its data is kept (no owner references: 0). */
    int answered = pyb_request_answer(self->request, response, 0);
    Py_DECREF(response);
    if (answered < 0)
      return -1;
  } else { /* answered already, or not a Request: reply() says what is wrong */
    PyObject *margs[] = {self->request, response};
    rc = PyObject_VectorcallMethod(a->a_reply, margs, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(response);
    if (rc == NULL)
      return -1;
    Py_DECREF(rc);
  }
  if (self->access_log) {
    PyObject *t0 = PyFloat_FromDouble(self->t0);
    if (t0 == NULL)
      return -1;
    PyObject *largs[] = {self->handler, self->request, self->client, self->status, t0};
    rc = PyObject_VectorcallMethod(a->a_log, largs, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(t0);
    if (rc == NULL)
      return -1;
    Py_DECREF(rc);
  }
  return 0;
}

/* obj.name(arg), or obj.name() when arg is NULL: the slow paths of the
 * cycle's subclass, a task's methods. New reference or NULL. */
static PyObject *call_method(PyObject *self, PyObject *name, PyObject *arg) {
  PyObject *args[] = {self, arg};
  size_t n = arg ? 2 : 1;
  return PyObject_VectorcallMethod(name, args, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

PyDoc_STRVAR(cycle_send_doc,
             "send(message) -> awaitable\n\n"
             "ASGI send. http.response.start, and an http.response.body that completes\n"
             "the answer in one piece, are handled at once (the returned awaitable is\n"
             "done); anything else is self._send(message), a coroutine.");

static PyObject *cycle_send(PyObject *op, PyObject *message) {
  CycleObject *self = CYC(op);
  struct pyb_asgi *a = self->a;
  int err = 0;
  PyObject *kind = PyDict_CheckExact(message) ? item(message, a->k_type, &err) : NULL;
  if (err)
    return NULL;
  if (kind == NULL)
    goto slow;
  if (is_kind(kind, a->v_start)) {
    if (self->started)
      goto slow;
    PyObject *status = item(message, a->k_status, &err);
    PyObject *trailers = status ? item(message, a->k_trailers, &err) : NULL;
    PyObject *headers = status ? item(message, a->k_headers, &err) : NULL;
    if (err)
      return NULL;
    if (status == NULL)
      goto slow;
    if (trailers != NULL) {
      int t = PyObject_IsTrue(trailers);
      if (t < 0)
        return NULL;
      if (t)
        goto slow;
    }
    int h = headers ? PyObject_IsTrue(headers) : 0;
    if (h < 0)
      return NULL;
    Py_SETREF(self->status, Py_NewRef(status));
    Py_SETREF(self->headers, Py_NewRef(h ? headers : a->empty_tuple));
    self->started = 1;
    return Py_NewRef(a->done_none);
  }
  if (is_kind(kind, a->v_body)) {
    if (!self->started || self->done || self->streaming || self->trailers != Py_None)
      goto slow;
    PyObject *more = item(message, a->k_more_body, &err);
    PyObject *body = item(message, a->k_body, &err);
    if (err)
      return NULL;
    if (more != NULL) {
      int m = PyObject_IsTrue(more);
      if (m < 0)
        return NULL;
      if (m)
        goto slow;
    }
    self->done = 1;
    Py_INCREF(op); /* the app may drop its last reference meanwhile */
    int rc = answer(self, a, body ? body : a->empty_bytes);
    if (rc == 0 && self->waiter != Py_None) {
      PyObject *w = call_method(op, a->a_wake, NULL);
      rc = w ? 0 : -1;
      Py_XDECREF(w);
    }
    Py_DECREF(op);
    return rc == 0 ? Py_NewRef(a->done_none) : NULL;
  }
slow:
  return call_method(op, a->a_send, message);
}

PyDoc_STRVAR(cycle_receive_doc,
             "receive() -> awaitable\n\n"
             "ASGI receive. The first call on a request whose body is buffered gives\n"
             "{'type': 'http.request', 'body': request.body, 'more_body': False} at once\n"
             "(the returned awaitable is done); anything else is self._receive(), a\n"
             "coroutine.");

static PyObject *cycle_receive(PyObject *op, PyObject *unused) {
  CycleObject *self = CYC(op);
  struct pyb_asgi *a = self->a;
  if (!self->body_done) {
    PyObject *streaming = PyObject_GetAttr(self->request, a->a_body_streaming);
    if (streaming == NULL)
      return NULL;
    int s = PyObject_IsTrue(streaming);
    Py_DECREF(streaming);
    if (s < 0)
      return NULL;
    if (!s) {
      PyObject *body = PyObject_GetAttr(self->request, a->k_body);
      if (body == NULL)
        return NULL;
      PyObject *msg = PyDict_New();
      if (msg == NULL || PyDict_SetItem(msg, a->k_type, a->v_http_request) < 0 ||
          PyDict_SetItem(msg, a->k_body, body) < 0 ||
          PyDict_SetItem(msg, a->k_more_body, Py_False) < 0) {
        Py_XDECREF(msg);
        Py_DECREF(body);
        return NULL;
      }
      Py_DECREF(body);
      self->body_done = 1;
      PyObject *d = done_new(a, msg);
      Py_DECREF(msg);
      return d;
    }
  }
  return call_method(op, a->a_receive, NULL);
}

static PyMethodDef cycle_methods[] = {
    {"send", cycle_send, METH_O, cycle_send_doc},
    {"receive", cycle_receive, METH_NOARGS, cycle_receive_doc},
    {NULL},
};

static PyMemberDef cycle_members[] = {
    {"request", T_OBJECT, offsetof(CycleObject, request), READONLY, NULL},
    {"handler", T_OBJECT, offsetof(CycleObject, handler), READONLY, NULL},
    {"status", T_OBJECT, offsetof(CycleObject, status), 0, NULL},
    {"headers", T_OBJECT, offsetof(CycleObject, headers), 0, NULL},
    {"trailers", T_OBJECT, offsetof(CycleObject, trailers), 0, NULL},
    {"waiter", T_OBJECT, offsetof(CycleObject, waiter), 0, NULL},
    {"client", T_OBJECT, offsetof(CycleObject, client), 0, NULL},
    {"sent", T_PYSSIZET, offsetof(CycleObject, sent), 0, NULL},
    {"t0", T_DOUBLE, offsetof(CycleObject, t0), 0, NULL},
    {"started", T_BOOL, offsetof(CycleObject, started), 0, NULL},
    {"streaming", T_BOOL, offsetof(CycleObject, streaming), 0, NULL},
    {"done", T_BOOL, offsetof(CycleObject, done), 0, NULL},
    {"body_done", T_BOOL, offsetof(CycleObject, body_done), 0, NULL},
    {"gone", T_BOOL, offsetof(CycleObject, gone), 0, NULL},
    {"watching", T_BOOL, offsetof(CycleObject, watching), 0, NULL},
    {NULL},
};

PyDoc_STRVAR(cycle_doc, "ASGICycle(request, handler)\n\n"
                        "One ASGI request's receive() and send(): the base of asgi.py's _Cycle,\n"
                        "which gives the slow paths (_send, _receive, _wake) and the answer's\n"
                        "Python side (handler._answered, handler._log).");

static PyType_Slot cycle_slots[] = {
    {Py_tp_new, cycle_new},           {Py_tp_dealloc, cycle_dealloc},
    {Py_tp_traverse, cycle_traverse}, {Py_tp_clear, cycle_clear},
    {Py_tp_methods, cycle_methods},   {Py_tp_members, cycle_members},
    {Py_tp_doc, (void *)cycle_doc},   {0, NULL},
};

static PyType_Spec cycle_spec = {
    .name = "pymongoose_uring._pmu.ASGICycle",
    .basicsize = sizeof(CycleObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = cycle_slots,
};

/* ---- ASGIStarter ---- */

/*
 * What ASGIHandler._start does for a plain http request, without a Python
 * frame: the cycle, the scope, the app's coroutine and the Task that runs it
 * (asyncio.Task(coro, loop=, name=), eagerly on Python 3.12+), then the
 * bookkeeping of its end (asgi.py's _sweep, sweep() here). Called by the
 * engine for each request while the loop's thread drives the ring, and by
 * _drain otherwise; a request on a TLS connection, a WebSocket handshake, or
 * anything this does not take goes to the handler's own _start.
 */
typedef struct {
  PyObject_HEAD
  pyb_state *st; /* borrowed: the type holds the module */
  vectorcallfunc vectorcall;
  PyObject *handler;    /* the ASGIHandler */
  PyObject *cycle_type; /* asgi.py's _Cycle */
  PyObject *app, *loop, *task_type, *kwnames, *name;
  PyObject *base, *state, *forward; /* asgi_scope's arguments (forward: None or callable) */
  PyObject *fresh;                  /* list of (task, cycle), Python < 3.12: sweep() ends them */
  PyObject *tasks;                  /* dict task -> cycle of those still running */
  PyObject *batch_kwnames;          /* ("loop", "name"): a batch's Task */
  PyObject *open_batch;             /* the ASGIBatch taking this turn's requests, or NULL */
  PyObject *batch_done;             /* self._batch_done: a batch Task's done callback */
  struct pyb_asgi *a;               /* st->asgi: the names it calls */
  int eager, websocket, access_log;
} StarterObject;

#define STARTER(o) ((StarterObject *)(o))

static PyObject *starter_call(PyObject *op, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames);

static PyObject *starter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  PyObject *handler, *cycle_type, *task_type, *name;
  int eager;
  static char *kw[] = {"handler", "cycle_type", "task_type", "name", "eager", NULL};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOUp:ASGIStarter", kw, &handler, &cycle_type,
                                   &task_type, &name, &eager))
    return NULL;
  pyb_state *st = pyb_state_from_type(type);
  if (!PyType_Check(cycle_type) ||
      !PyType_IsSubtype((PyTypeObject *)cycle_type, st->asgi->cycle_type)) {
    PyErr_SetString(PyExc_TypeError, "ASGIStarter: cycle_type must be a subclass of ASGICycle");
    return NULL;
  }
  StarterObject *self = (StarterObject *)type->tp_alloc(type, 0);
  if (self == NULL)
    return NULL;
  self->st = st;
  self->a = st->asgi;
  self->vectorcall = NULL; /* set last: a half-made starter is not callable */
  self->handler = Py_NewRef(handler);
  self->cycle_type = Py_NewRef(cycle_type);
  self->task_type = Py_NewRef(task_type);
  self->name = Py_NewRef(name);
  self->eager = eager;
  PyObject *ws = NULL, *log = NULL;
  if ((self->app = PyObject_GetAttrString(handler, "app")) == NULL ||
      (self->loop = PyObject_GetAttrString(handler, "loop")) == NULL ||
      (self->base = PyObject_GetAttrString(handler, "_scope_base")) == NULL ||
      (self->state = PyObject_GetAttrString(handler, "state")) == NULL ||
      (self->forward = PyObject_GetAttrString(handler, "_forward")) == NULL ||
      (self->fresh = PyObject_GetAttrString(handler, "_fresh")) == NULL ||
      (self->tasks = PyObject_GetAttrString(handler, "_tasks")) == NULL ||
      (ws = PyObject_GetAttrString(handler, "websocket")) == NULL ||
      (log = PyObject_GetAttrString(handler, "access_log")) == NULL) {
    Py_XDECREF(ws);
    goto fail;
  }
  self->websocket = PyObject_IsTrue(ws);
  self->access_log = PyObject_IsTrue(log);
  Py_DECREF(ws);
  Py_DECREF(log);
  if (self->websocket < 0 || self->access_log < 0)
    goto fail;
  if (!PyDict_Check(self->base) || !PyDict_Check(self->state) || !PyList_Check(self->fresh) ||
      !PyDict_Check(self->tasks)) {
    PyErr_SetString(PyExc_TypeError,
                    "ASGIStarter: the handler's _scope_base, state, _fresh and _tasks must be a "
                    "dict, a dict, a list and a dict");
    goto fail;
  }
  self->kwnames = eager ? Py_BuildValue("(sss)", "loop", "name", "eager_start")
                        : Py_BuildValue("(ss)", "loop", "name");
  self->batch_kwnames = Py_BuildValue("(ss)", "loop", "name");
  if (self->kwnames == NULL || self->batch_kwnames == NULL)
    goto fail;
  if (!eager &&
      (self->batch_done = PyObject_GetAttrString((PyObject *)self, "_batch_done")) == NULL)
    goto fail;
  self->vectorcall = starter_call;
  return (PyObject *)self;
fail:
  Py_DECREF(self);
  return NULL;
}

/* clang-format off */
#define STARTER_FIELDS(X)                                                                   \
  X(handler) X(cycle_type) X(app) X(loop) X(task_type) X(kwnames) X(name) X(base) X(state) \
  X(forward) X(fresh) X(tasks) X(batch_kwnames) X(open_batch) X(batch_done)
/* clang-format on */

/* A heap type's tp_traverse, a clearing of its fields, and a tp_dealloc that
 * calls its tp_clear, for the object fields FIELDS(X) lists. */
#define VISIT_FIELD(f) Py_VISIT(self->f);
#define CLEAR_FIELD(f) Py_CLEAR(self->f);
#define GC_FUNCTIONS(prefix, Type, FIELDS)                                 \
  static int prefix##_traverse(PyObject *op, visitproc visit, void *arg) { \
    Type *self = (Type *)op;                                               \
    Py_VISIT(Py_TYPE(op));                                                 \
    FIELDS(VISIT_FIELD)                                                    \
    return 0;                                                              \
  }                                                                        \
  static void prefix##_clear_fields(Type *self) { FIELDS(CLEAR_FIELD) }    \
  static int prefix##_clear(PyObject *op);                                 \
  static void prefix##_dealloc(PyObject *op) {                             \
    PyTypeObject *tp = Py_TYPE(op);                                        \
    PyObject_GC_UnTrack(op);                                               \
    prefix##_clear(op);                                                    \
    tp->tp_free(op);                                                       \
    Py_DECREF(tp);                                                         \
  }

GC_FUNCTIONS(starter, StarterObject, STARTER_FIELDS)

static int starter_clear(PyObject *op) {
  STARTER(op)->vectorcall = NULL;
  starter_clear_fields(STARTER(op));
  return 0;
}

/* ---- ASGIBatch: the apps of one ring turn, run one after the other in one Task ---- */

/*
 * Before Python 3.12 (no eager tasks), a Task per request is about half of
 * what the adapter adds to the native API (its creation, its first step as a
 * loop callback, its registration in asyncio's WeakSet and the weak reference's
 * callback at its end: 1.4 of the 2.8 µs a raw ASGI hello costs beyond the
 * native API's 5.9 here). So the
 * requests a turn starts join one ASGIBatch, and one Task runs it: its first
 * step runs each app's coroutine in turn, each in its own copy of the
 * context as a Task of its own would (contextvars set by one app are not seen
 * by the next). An app that answers without waiting ends there, as most do.
 * One that waits keeps the Task (every step of an app is in the same Task, so
 * asyncio.current_task() is the same object all its life, and cancelling it
 * cancels that app); the requests after it go to a new batch and Task. What
 * the app's end means (its exception, an answer never given) is what
 * ASGIHandler._ended does with a request's task: the handler's _failed and
 * _unfinished.
 */
typedef struct {
  PyObject_HEAD
  StarterObject *starter;
  PyObject *items;              /* list of (coroutine, cycle, context) */
  Py_ssize_t next;              /* the first item not yet started */
  PyObject *coro, *cycle, *ctx; /* the app in flight (waiting), or NULL */
  char started;                 /* its Task took a step: no more items join */
} BatchObject;

#define BATCH(o) ((BatchObject *)(o))

#define BATCH_FIELDS(X) X(starter) X(items) X(coro) X(cycle) X(ctx)

GC_FUNCTIONS(batch, BatchObject, BATCH_FIELDS)

static int batch_clear(PyObject *op) {
  batch_clear_fields(BATCH(op));
  return 0;
}

/* A new batch of `items` (NULL: none yet), and the Task that runs it
 * (scheduled, not eager), registered with the handler's tasks (graceful stop
 * waits for it). Borrowed reference (the Task holds it), or NULL. */
static BatchObject *batch_task(StarterObject *st, PyObject *items) {
  BatchObject *b = PyObject_GC_New(BatchObject, st->a->batch_type);
  if (b == NULL)
    return NULL;
  b->starter = (StarterObject *)Py_NewRef(st);
  b->items = items ? Py_NewRef(items) : PyList_New(0);
  b->next = 0;
  b->coro = b->cycle = b->ctx = NULL;
  b->started = 0;
  PyObject_GC_Track(b);
  if (b->items == NULL) {
    Py_DECREF(b);
    return NULL;
  }
  PyObject *args[] = {(PyObject *)b, st->loop, st->name};
  PyObject *task = PyObject_Vectorcall(st->task_type, args, 1, st->batch_kwnames);
  if (task != NULL && PyDict_SetItem(st->tasks, task, Py_None) < 0)
    Py_CLEAR(task);
  if (task != NULL) {
    PyObject *cargs[] = {task, st->batch_done};
    PyObject *rc = PyObject_VectorcallMethod(st->a->m_add_done_callback, cargs,
                                             2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (rc == NULL)
      Py_CLEAR(task);
    Py_XDECREF(rc);
  }
  Py_DECREF(b);     /* the Task holds it */
  Py_XDECREF(task); /* the handler's tasks and the loop hold it */
  return task ? b : NULL;
}

/* handler.name(request, cycle[, exc]) for an app that ended: errors from it
 * are reported as unraisable (the batch goes on with the next app). */
static void batch_report(BatchObject *b, PyObject *name, PyObject *cycle, PyObject *exc) {
  PyObject *args[] = {b->starter->handler, CYC(cycle)->request, cycle, exc};
  PyObject *rc =
      PyObject_VectorcallMethod(name, args, (exc ? 4 : 3) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
  if (rc == NULL)
    PyErr_WriteUnraisable(b->starter->handler);
  Py_XDECREF(rc);
}

/* The items not started yet go to a new batch and Task. 0 or -1. */
static int batch_split(BatchObject *b) {
  Py_ssize_t n = PyList_GET_SIZE(b->items);
  if (b->next >= n)
    return 0;
  PyObject *rest = PyList_GetSlice(b->items, b->next, n);
  if (rest == NULL)
    return -1;
  BatchObject *nb = batch_task(b->starter, rest);
  Py_DECREF(rest);
  if (nb == NULL)
    return -1;
  b->next = n;
  return 0;
}

/* One step of the app in flight, in its context: send(value), or throw(exc)
 * when exc. NEXT: it waits (*result: what it yielded, for the Task). RETURN:
 * it ended (as the handler's _ended would have it). ERROR: KeyboardInterrupt
 * or SystemExit, which go on to the Task (as a Task's own step lets them). */
static PySendResult batch_resume(BatchObject *b, PyObject *value, PyObject *exc,
                                 PyObject **result) {
  PyObject *res = NULL;
  PySendResult sr;
  if (PyContext_Enter(b->ctx) < 0)
    return PYGEN_ERROR;
  if (exc == NULL) {
    sr = PyIter_Send(b->coro, value, &res);
  } else {
    res = call_method(b->coro, b->starter->a->m_throw, exc);
    if (res != NULL) {
      sr = PYGEN_NEXT;
    } else if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
      PyErr_Clear();
      sr = PYGEN_RETURN;
    } else {
      sr = PYGEN_ERROR;
    }
  }
  if (PyContext_Exit(b->ctx) < 0) {
    Py_XDECREF(res);
    return PYGEN_ERROR; /* cannot happen: entered above */
  }
  if (sr == PYGEN_NEXT) {
    *result = res;
    return PYGEN_NEXT;
  }
  Py_XDECREF(res);
  PyObject *cycle = b->cycle;
  b->cycle = NULL;
  Py_CLEAR(b->coro);
  Py_CLEAR(b->ctx);
  PySendResult out = PYGEN_RETURN;
  if (sr == PYGEN_RETURN) {
    if (!CYC(cycle)->done)
      batch_report(b, b->starter->a->m_unfinished, cycle, NULL);
  } else {
    PyObject *type, *val, *tb;
    pyb_fetch_error(&type, &val, &tb);
    int fatal = PyErr_GivenExceptionMatches(type, PyExc_KeyboardInterrupt) ||
                PyErr_GivenExceptionMatches(type, PyExc_SystemExit);
    batch_report(b, b->starter->a->m_failed, cycle, val ? val : Py_None);
    if (fatal) {
      PyErr_Restore(type, val, tb);
      out = PYGEN_ERROR;
    } else {
      Py_XDECREF(type);
      Py_XDECREF(val);
      Py_XDECREF(tb);
    }
  }
  Py_DECREF(cycle);
  return out;
}

/* Each item not started: its coroutine closed, and with exc, the handler's
 * _failed told (a Task cancelled before it ran). A coroutine that cannot be
 * closed is reported as unraisable. */
static void batch_close_rest(BatchObject *b, PyObject *exc) {
  Py_ssize_t n = b->items ? PyList_GET_SIZE(b->items) : 0;
  for (; b->next < n; b->next++) {
    PyObject *item = PyList_GET_ITEM(b->items, b->next);
    PyObject *rc = call_method(PyTuple_GET_ITEM(item, 0), b->starter->a->m_close, NULL);
    if (rc == NULL)
      PyErr_WriteUnraisable(PyTuple_GET_ITEM(item, 0));
    Py_XDECREF(rc);
    if (exc != NULL)
      batch_report(b, b->starter->a->m_failed, PyTuple_GET_ITEM(item, 1), exc);
  }
}

/* A step of the batch's Task: the app in flight first, then each item not
 * started. exc: thrown into the app in flight; with none in flight (the
 * Task was cancelled before it ran), each app not started fails with it. */
static PySendResult batch_step(BatchObject *b, PyObject *value, PyObject *exc, PyObject **result) {
  b->started = 1;
  *result = NULL;
  if (b->coro == NULL && exc != NULL) {
    batch_close_rest(b, exc);
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    return PYGEN_ERROR;
  }
  PySendResult sr = PYGEN_RETURN;
  if (b->coro != NULL)
    sr = batch_resume(b, value, exc, result);
  while (sr == PYGEN_RETURN && b->next < PyList_GET_SIZE(b->items)) {
    PyObject *item = PyList_GET_ITEM(b->items, b->next++);
    b->coro = Py_NewRef(PyTuple_GET_ITEM(item, 0));
    b->cycle = Py_NewRef(PyTuple_GET_ITEM(item, 1));
    b->ctx = Py_NewRef(PyTuple_GET_ITEM(item, 2));
    sr = batch_resume(b, Py_None, NULL, result);
  }
  /* A fatal error (KeyboardInterrupt, SystemExit) is kept aside while the rest is
   * done, and goes on to the Task after. */
  PyObject *type = NULL, *val = NULL, *tb = NULL;
  if (sr == PYGEN_ERROR)
    PyErr_Fetch(&type, &val, &tb);
  int rc = 0;
  if (sr != PYGEN_RETURN && batch_split(b) < 0) { /* the rest go on in a new Task */
    if (sr == PYGEN_NEXT)
      rc = -1;
    else
      PyErr_WriteUnraisable((PyObject *)b);
  }
  /* The apps that ended (all of them, once the batch is done) let their requests go
   * now, not when the app in flight or the Task ends. */
  if (rc == 0 && PyList_SetSlice(b->items, 0, PyList_GET_SIZE(b->items), NULL) < 0)
    rc = -1;
  b->next = 0;
  if (sr == PYGEN_ERROR) {
    if (rc < 0)
      PyErr_WriteUnraisable((PyObject *)b);
    PyErr_Restore(type, val, tb);
    return PYGEN_ERROR;
  }
  if (rc < 0) {
    Py_CLEAR(*result);
    return PYGEN_ERROR;
  }
  if (sr == PYGEN_RETURN)
    *result = Py_NewRef(Py_None);
  return sr;
}

#if PY_VERSION_HEX >= 0x030A0000
static PySendResult batch_am_send(PyObject *op, PyObject *arg, PyObject **result) {
  return batch_step(BATCH(op), arg, NULL, result);
}
#endif

/* A step's outcome as send() and throw() give it: the value yielded, or
 * StopIteration at the end. */
static PyObject *step_value(PySendResult sr, PyObject *result) {
  if (sr == PYGEN_NEXT)
    return result;
  if (sr == PYGEN_RETURN) {
    Py_DECREF(result);
    PyErr_SetNone(PyExc_StopIteration);
  }
  return NULL;
}

static PyObject *batch_send(PyObject *op, PyObject *arg) {
  PyObject *result;
  PySendResult sr = batch_step(BATCH(op), arg, NULL, &result); /* before result is read */
  return step_value(sr, result);
}

static PyObject *batch_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs < 1 || nargs > 3) {
    PyErr_SetString(PyExc_TypeError, "throw(exc) takes one argument (or the old three)");
    return NULL;
  }
  PyObject *exc = args[0];
  PyObject *made = NULL;
  if (PyExceptionClass_Check(exc)) { /* throw(type[, value[, tb]]) */
    PyObject *v = nargs > 1 ? args[1] : NULL;
    made = v && PyExceptionInstance_Check(v)        ? Py_NewRef(v)
           : v && v != Py_None && !PyTuple_Check(v) ? PyObject_CallOneArg(exc, v)
                                                    : PyObject_CallNoArgs(exc);
    if (made == NULL)
      return NULL;
    exc = made;
  } else if (!PyExceptionInstance_Check(exc)) {
    PyErr_SetString(PyExc_TypeError, "exceptions must be classes or instances deriving from "
                                     "BaseException");
    return NULL;
  }
  PyObject *result;
  PySendResult sr = batch_step(BATCH(op), Py_None, exc, &result);
  Py_XDECREF(made);
  return step_value(sr, result);
}

/* close(): the app in flight and those not started are closed (GeneratorExit
 * in the one waiting); their requests are left to the engine (which answers
 * or drops them as for any request a handler let go). */
static PyObject *batch_close(PyObject *op, PyObject *unused) {
  BatchObject *b = BATCH(op);
  b->started = 1;
  int failed = 0;
  if (b->coro != NULL) {
    PyObject *rc = NULL;
    if (PyContext_Enter(b->ctx) == 0) {
      rc = call_method(b->coro, b->starter->a->m_close, NULL);
      if (PyContext_Exit(b->ctx) < 0)
        Py_CLEAR(rc);
    }
    failed = rc == NULL;
    Py_XDECREF(rc);
    Py_CLEAR(b->coro);
    Py_CLEAR(b->cycle);
    Py_CLEAR(b->ctx);
  }
  if (!failed)
    batch_close_rest(b, NULL);
  return failed ? NULL : Py_NewRef(Py_None);
}

static PyObject *batch_await(PyObject *op) { return Py_NewRef(op); }

static PyObject *batch_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  PyErr_SetString(PyExc_TypeError, "ASGIBatch objects are made by ASGIStarter only");
  return NULL;
}

static PyObject *batch_next(PyObject *op) { return batch_send(op, Py_None); }

static PyMethodDef batch_methods[] = {
    {"send", batch_send, METH_O, "send(value): a step of the Task that runs the batch."},
    {"throw", (PyCFunction)(void (*)(void))batch_throw, METH_FASTCALL,
     "throw(exc): into the app in flight (or each app not started, before any ran)."},
    {"close", batch_close, METH_NOARGS, "close(): the apps in flight and not started."},
    {NULL},
};

PyDoc_STRVAR(batch_doc, "The requests of one ring turn, run one after the other by one asyncio "
                        "Task (Python < 3.12; made by ASGIStarter, never by hand).");

/* clang-format off */
static PyType_Slot batch_slots[] = {
    {Py_tp_new, batch_new},
    {Py_tp_dealloc, batch_dealloc},
    {Py_tp_traverse, batch_traverse},
    {Py_tp_clear, batch_clear},
    {Py_tp_methods, batch_methods},
    {Py_am_await, batch_await},
#if PY_VERSION_HEX >= 0x030A0000
    {Py_am_send, batch_am_send},
#endif
    {Py_tp_iter, batch_await},
    {Py_tp_iternext, batch_next},
    {Py_tp_doc, (void *)batch_doc},
    {0, NULL},
};
/* clang-format on */

static PyType_Spec batch_spec = {
    .name = "pymongoose_uring._pmu.ASGIBatch",
    .basicsize = sizeof(BatchObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = batch_slots,
};

PyDoc_STRVAR(starter_batch_done_doc, "_batch_done(task)\n\n"
                                     "A batch Task's done callback: it leaves the handler's "
                                     "tasks (its exception, if any, retrieved).");

static PyObject *starter_batch_done(PyObject *op, PyObject *task) {
  StarterObject *self = STARTER(op);
  if (PyDict_DelItem(self->tasks, task) < 0) {
    if (!PyErr_ExceptionMatches(PyExc_KeyError))
      return NULL;
    PyErr_Clear();
  }
  PyObject *c = call_method(task, self->a->m_cancelled, NULL);
  int cancelled = c ? PyObject_IsTrue(c) : -1;
  Py_XDECREF(c);
  if (cancelled < 0)
    return NULL;
  if (!cancelled) { /* retrieved: a fatal error was reported by _failed already */
    PyObject *e = call_method(task, self->a->m_exception, NULL);
    if (e == NULL)
      return NULL;
    Py_DECREF(e);
  }
  Py_RETURN_NONE;
}

/* Whether a done task ended as every plain request does: its app answered
 * (cycle.done) and returned. 1 yes, 0 no (_ended looks at it), -1 error. */
static int ended_plainly(StarterObject *self, PyObject *task, PyObject *cycle) {
  if (!CYC(cycle)->done)
    return 0;
  PyObject *c = call_method(task, self->a->m_cancelled, NULL);
  if (c == NULL)
    return -1;
  int cancelled = PyObject_IsTrue(c);
  Py_DECREF(c);
  if (cancelled)
    return cancelled < 0 ? -1 : 0;
  PyObject *e = call_method(task, self->a->m_exception, NULL);
  if (e == NULL)
    return -1;
  int plain = e == Py_None;
  Py_DECREF(e);
  return plain;
}

/* A task past its first step: ended (through _ended unless plainly) when
 * done, else watched through the done callback. 0 or -1. */
static int settle(StarterObject *self, PyObject *task, PyObject *cycle) {
  PyObject *d = call_method(task, self->a->m_done, NULL);
  if (d == NULL)
    return -1;
  int done = PyObject_IsTrue(d);
  Py_DECREF(d);
  if (done < 0)
    return -1;
  if (done) {
    int plain = ended_plainly(self, task, cycle);
    if (plain != 0) /* 1: nothing more to do; -1: error */
      return plain < 0 ? -1 : 0;
    PyObject *args[] = {self->handler, task, cycle};
    PyObject *rc =
        PyObject_VectorcallMethod(self->a->m_ended, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(rc);
    return rc ? 0 : -1;
  }
  if (PyDict_SetItem(self->tasks, task, cycle) < 0)
    return -1;
  PyObject *finished = PyObject_GetAttr(self->handler, self->a->m_finished);
  if (finished == NULL)
    return -1;
  PyObject *args[] = {task, finished};
  PyObject *rc = PyObject_VectorcallMethod(self->a->m_add_done_callback, args,
                                           2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
  Py_DECREF(finished);
  Py_XDECREF(rc);
  return rc ? 0 : -1;
}

/* The app's coroutine for one request: app(scope, cycle.receive, cycle.send).
 * New reference or NULL. */
static PyObject *app_coroutine(StarterObject *self, PyObject *request, PyObject *cycle,
                               const pmu_request_t *r) {
  PyObject *scope = make_scope(self->st, request, r, self->base, self->state, self->forward);
  if (scope == NULL)
    return NULL;
  /* For the access log: behind a proxy, its client. */
  PyObject *client = PyDict_GetItemWithError(scope, self->a->k_client);
  if (client == NULL && PyErr_Occurred()) {
    Py_DECREF(scope);
    return NULL;
  }
  Py_XSETREF(CYC(cycle)->client, Py_NewRef(client ? client : Py_None));
  PyObject *receive = PyObject_GetAttr(cycle, self->a->m_receive);
  PyObject *send = receive ? PyObject_GetAttr(cycle, self->a->m_send) : NULL;
  PyObject *coro = NULL;
  if (send != NULL) {
    PyObject *args[] = {scope, receive, send};
    coro = PyObject_Vectorcall(self->app, args, 3, NULL);
  }
  Py_XDECREF(send);
  Py_XDECREF(receive);
  Py_DECREF(scope);
  return coro;
}

/* The Task of a coroutine: Task(coro, loop=loop, name=name[, eager_start=True]);
 * an awaitable that is not a coroutine through the handler's _await. New
 * reference or NULL. */
static PyObject *make_task(StarterObject *self, PyObject *coro) {
  PyObject *args[] = {coro, self->loop, self->name, Py_True};
  PyObject *task = PyObject_Vectorcall(self->task_type, args, 1, self->kwnames);
  if (task != NULL || !PyErr_ExceptionMatches(PyExc_TypeError))
    return task;
  PyErr_Clear(); /* loop.create_task(self._await(coro)), as _start does */
  PyObject *wrapped = PyObject_CallMethod(self->handler, "_await", "O", coro);
  if (wrapped == NULL)
    return NULL;
  task = PyObject_CallMethod(self->loop, "create_task", "O", wrapped);
  Py_DECREF(wrapped);
  return task;
}

/* Add (coro, cycle) to the batch of this turn (a new one, and its Task, when
 * the last has started). A coroutine object is taken as it is; any other
 * awaitable through the handler's _await. 0 or -1. */
static int batch_add(StarterObject *self, PyObject *coro, PyObject *cycle) {
  BatchObject *b = (BatchObject *)self->open_batch;
  if (b == NULL || b->started) {
    if ((b = batch_task(self, NULL)) == NULL)
      return -1;
    Py_XSETREF(self->open_batch, Py_NewRef((PyObject *)b));
  }
  PyObject *awaited = NULL;
  if (!PyCoro_CheckExact(coro)) {
    PyObject *args[] = {self->handler, coro};
    awaited =
        PyObject_VectorcallMethod(self->a->m_await, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (awaited == NULL)
      return -1;
    coro = awaited;
  }
  PyObject *ctx = PyContext_CopyCurrent();
  PyObject *item = ctx ? PyTuple_Pack(3, coro, cycle, ctx) : NULL;
  int rc = item ? PyList_Append(b->items, item) : -1;
  Py_XDECREF(item);
  Py_XDECREF(ctx);
  Py_XDECREF(awaited);
  return rc;
}

static PyObject *starter_call(PyObject *op, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames) {
  StarterObject *self = STARTER(op);
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
    PyErr_SetString(PyExc_TypeError, "ASGIStarter(request) takes one argument");
    return NULL;
  }
  PyObject *request = args[0];
  const pmu_request_t *r = NULL;
  if (Py_TYPE(request) == self->st->request_type && (r = pyb_request_view(request)) == NULL)
    return NULL; /* answered already */
  if (r == NULL || r->tls || (self->websocket && pyb_request_ws_upgrade(request))) {
    PyObject *sargs[] = {self->handler, request};
    return PyObject_VectorcallMethod(self->a->m_start, sargs, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
  }
  PyObject *cycle = cycle_make((PyTypeObject *)self->cycle_type, self->st, request, self->handler,
                               self->access_log);
  if (cycle == NULL)
    return NULL;
  PyObject *task = NULL, *coro = app_coroutine(self, request, cycle, r);
  if (coro != NULL && !self->eager) { /* into this turn's batch */
    int rc = batch_add(self, coro, cycle);
    Py_DECREF(coro);
    if (rc == 0) {
      Py_DECREF(cycle);
      Py_RETURN_NONE;
    }
    coro = NULL; /* the error goes to _failed below, as a Task's creation's would */
  }
  if (coro != NULL) {
    task = make_task(self, coro);
    Py_DECREF(coro);
  }
  if (task == NULL) { /* what _start's `except Exception` does: _failed answers */
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
      Py_DECREF(cycle);
      return NULL;
    }
    PyObject *type, *value, *tb;
    pyb_fetch_error(&type, &value, &tb);
    PyObject *fargs[] = {self->handler, request, cycle, value};
    PyObject *rc = PyObject_VectorcallMethod(self->a->m_failed, fargs,
                                             4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    Py_DECREF(cycle);
    return rc;
  }
  int rc;
  if (self->eager) { /* its first step ran in the constructor */
    rc = settle(self, task, cycle);
  } else { /* looked at once the tasks took their first step: sweep() */
    PyObject *pair = PyTuple_Pack(2, task, cycle);
    rc = pair ? PyList_Append(self->fresh, pair) : -1;
    Py_XDECREF(pair);
  }
  Py_DECREF(task);
  Py_DECREF(cycle);
  return rc < 0 ? NULL : Py_NewRef(Py_None);
}

PyDoc_STRVAR(starter_sweep_doc,
             "sweep(count)\n\n"
             "After the first steps of the `count` oldest tasks in the handler's _fresh\n"
             "list: those done end (through the handler's _ended, unless answered and\n"
             "returned plainly), the others get the handler's _finished as done callback.\n"
             "asgi.py's ASGIHandler._sweep.");

static PyObject *starter_sweep(PyObject *op, PyObject *arg) {
  StarterObject *self = STARTER(op);
  Py_ssize_t count = PyLong_AsSsize_t(arg);
  if (count == -1 && PyErr_Occurred())
    return NULL;
  Py_ssize_t size = PyList_GET_SIZE(self->fresh);
  if (count < 0 || count > size)
    count = size;
  PyObject *batch = PyList_GetSlice(self->fresh, 0, count);
  if (batch == NULL || PyList_SetSlice(self->fresh, 0, count, NULL) < 0) {
    Py_XDECREF(batch);
    return NULL;
  }
  int rc = 0;
  for (Py_ssize_t i = 0; i < count && rc == 0; i++) {
    PyObject *pair = PyList_GET_ITEM(batch, i);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
        !PyObject_TypeCheck(PyTuple_GET_ITEM(pair, 1), self->a->cycle_type)) {
      PyErr_SetString(PyExc_TypeError, "sweep: _fresh holds (task, cycle) pairs");
      rc = -1;
      break;
    }
    rc = settle(self, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1));
  }
  Py_DECREF(batch);
  return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static PyMethodDef starter_methods[] = {
    {"_batch_done", starter_batch_done, METH_O, starter_batch_done_doc},
    {"sweep", starter_sweep, METH_O, starter_sweep_doc},
    {NULL},
};

static PyMemberDef starter_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(StarterObject, vectorcall), READONLY, NULL},
    {NULL},
};

PyDoc_STRVAR(starter_doc,
             "ASGIStarter(handler, cycle_type, task_type, name, eager)\n\n"
             "starter(request): ASGIHandler._start for a plain http request, in C: a\n"
             "cycle_type(request, handler), the scope (asgi_scope with the handler's\n"
             "_scope_base, state and _forward), app(scope, cycle.receive, cycle.send), and\n"
             "task_type(coro, loop=handler.loop, name=name[, eager_start=True]). Eager, a\n"
             "task done at once ends here; else (task, cycle) joins handler._fresh for\n"
             "sweep(). TLS requests and WebSocket handshakes go to handler._start. The\n"
             "handler's fields (access_log among them) are read once, here: make it after\n"
             "the lifespan startup.");

static PyType_Slot starter_slots[] = {
    {Py_tp_new, starter_new},
    {Py_tp_dealloc, starter_dealloc},
    {Py_tp_traverse, starter_traverse},
    {Py_tp_clear, starter_clear},
    {Py_tp_methods, starter_methods},
    {Py_tp_members, starter_members},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_doc, (void *)starter_doc},
    {0, NULL},
};

static PyType_Spec starter_spec = {
    .name = "pymongoose_uring._pmu.ASGIStarter",
    .basicsize = sizeof(StarterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = starter_slots,
};

/* ---- module ---- */

static PyMethodDef asgi_functions[] = {
    {"asgi_scope", (PyCFunction)(void (*)(void))asgi_scope, METH_FASTCALL, asgi_scope_doc},
    {NULL},
};

static int intern(PyObject **slot, const char *s) {
  *slot = PyUnicode_InternFromString(s);
  return *slot ? 0 : -1;
}

int pyb_asgi_exec(PyObject *module, pyb_state *st) {
  struct pyb_asgi *a = PyMem_Calloc(1, sizeof *a);
  if (a == NULL) {
    PyErr_NoMemory();
    return -1;
  }
  st->asgi = a;
  a->done_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &done_spec, NULL);
  if (a->done_type == NULL)
    return -1;
  a->cycle_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &cycle_spec, NULL);
  a->starter_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &starter_spec, NULL);
  a->batch_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &batch_spec, NULL);
  if (a->batch_type == NULL)
    return -1;
  if (a->cycle_type == NULL || PyModule_AddType(module, a->cycle_type) < 0 ||
      a->starter_type == NULL || PyModule_AddType(module, a->starter_type) < 0 ||
      PyModule_AddFunctions(module, asgi_functions) < 0)
    return -1;
  DoneObject *none = PyObject_New(DoneObject, a->done_type);
  if (none == NULL)
    return -1;
  none->value = Py_NewRef(Py_None);
  a->done_none = (PyObject *)none;
  if ((a->empty_bytes = PyBytes_FromStringAndSize("", 0)) == NULL ||
      (a->empty_tuple = PyTuple_New(0)) == NULL || (a->zero = PyLong_FromLong(0)) == NULL)
    return -1;
  if (intern(&a->k_http_version, "http_version") < 0 || intern(&a->k_server, "server") < 0 ||
      intern(&a->k_client, "client") < 0 || intern(&a->k_method, "method") < 0 ||
      intern(&a->k_path, "path") < 0 || intern(&a->k_raw_path, "raw_path") < 0 ||
      intern(&a->k_query_string, "query_string") < 0 || intern(&a->k_headers, "headers") < 0 ||
      intern(&a->k_extensions, "extensions") < 0 || intern(&a->k_state, "state") < 0 ||
      intern(&a->k_type, "type") < 0 || intern(&a->k_status, "status") < 0 ||
      intern(&a->k_trailers, "trailers") < 0 || intern(&a->k_body, "body") < 0 ||
      intern(&a->k_more_body, "more_body") < 0 || intern(&a->v_http_request, "http.request") < 0 ||
      intern(&a->v_start, "http.response.start") < 0 ||
      intern(&a->v_body, "http.response.body") < 0 ||
      intern(&a->a_body_streaming, "body_streaming") < 0 ||
      intern(&a->a_access_log, "access_log") < 0 || intern(&a->a_reply, "reply") < 0 ||
      intern(&a->a_send, "_send") < 0 || intern(&a->a_receive, "_receive") < 0 ||
      intern(&a->a_answered, "_answered") < 0 || intern(&a->a_log, "_log") < 0 ||
      intern(&a->a_wake, "_wake") < 0 || intern(&a->m_done, "done") < 0 ||
      intern(&a->m_cancelled, "cancelled") < 0 || intern(&a->m_exception, "exception") < 0 ||
      intern(&a->m_add_done_callback, "add_done_callback") < 0 ||
      intern(&a->m_receive, "receive") < 0 || intern(&a->m_send, "send") < 0 ||
      intern(&a->m_start, "_start") < 0 || intern(&a->m_failed, "_failed") < 0 ||
      intern(&a->m_ended, "_ended") < 0 || intern(&a->m_finished, "_finished") < 0 ||
      intern(&a->m_unfinished, "_unfinished") < 0 || intern(&a->m_throw, "throw") < 0 ||
      intern(&a->m_close, "close") < 0 || intern(&a->m_await, "_await") < 0)
    return -1;
  return 0;
}

int pyb_asgi_traverse(pyb_state *st, visitproc visit, void *arg) {
  struct pyb_asgi *a = st->asgi;
  if (a != NULL) {
    Py_VISIT(a->done_type);
    Py_VISIT(a->cycle_type);
    Py_VISIT(a->starter_type);
    Py_VISIT(a->batch_type);
  }
  return 0;
}

void pyb_asgi_clear(pyb_state *st) {
  struct pyb_asgi *a = st->asgi;
  if (a == NULL)
    return;
  PyObject **objs[] = {
      (PyObject **)&a->done_type,
      (PyObject **)&a->cycle_type,
      (PyObject **)&a->starter_type,
      &a->done_none,
      &a->empty_bytes,
      &a->empty_tuple,
      &a->zero,
      &a->k_http_version,
      &a->k_server,
      &a->k_client,
      &a->k_method,
      &a->k_path,
      &a->k_raw_path,
      &a->k_query_string,
      &a->k_headers,
      &a->k_extensions,
      &a->k_state,
      &a->k_type,
      &a->k_status,
      &a->k_trailers,
      &a->k_body,
      &a->k_more_body,
      &a->v_http_request,
      &a->v_start,
      &a->v_body,
      &a->a_body_streaming,
      &a->a_access_log,
      &a->a_reply,
      &a->a_send,
      &a->a_receive,
      &a->a_answered,
      &a->a_log,
      &a->a_wake,
      &a->m_done,
      &a->m_cancelled,
      &a->m_exception,
      &a->m_add_done_callback,
      &a->m_receive,
      &a->m_send,
      &a->m_start,
      &a->m_failed,
      &a->m_ended,
      &a->m_finished,
      &a->m_unfinished,
      &a->m_throw,
      &a->m_close,
      &a->m_await,
      (PyObject **)&a->batch_type,
  };
  for (size_t i = 0; i < sizeof objs / sizeof objs[0]; i++)
    Py_CLEAR(*objs[i]);
  PyMem_Free(a);
  st->asgi = NULL;
}
