/*
 * module.c: the module pymongoose_uring._pmu: its state, multi-phase
 * initialisation, probe(), the errno-to-exception mapping and logging.
 *
 * Everything a handler call needs on the hot path (interned method names,
 * json's C encoder, the content types) is prepared once here so that the
 * batch loop in engine.c allocates as little as possible per request.
 */
#include "binding.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <limits.h>
#include <string.h>

pyb_state *pyb_state_from_type(PyTypeObject *type) {
  PyObject *module = PyType_GetModuleByDef(type, &pyb_module_def);
  assert(module != NULL);
  return (pyb_state *)PyModule_GetState(module);
}

static int is_unavailable_errno(int err) {
  return err == ENOSYS || err == EPERM || err == EOPNOTSUPP;
}

int pyb_timeout_arg(PyObject *o, double *out) {
  *out = -1;
  if (o == NULL || o == Py_None)
    return 0;
  double t = PyFloat_AsDouble(o);
  if (t == -1 && PyErr_Occurred())
    return -1;
  *out = t < 0 ? 0 : t;
  return 0;
}

PyObject *pyb_raise_errno(pyb_state *st, int rc, const char *message) {
  int err = rc < 0 ? -rc : rc;
  if (err == ENOMEM)
    return PyErr_NoMemory();
  if (message == NULL || message[0] == '\0')
    message = strerror(err);
  PyObject *cls = is_unavailable_errno(err) ? st->unavailable : st->error;
  PyObject *exc = PyObject_CallFunction(cls, "is", err, message);
  if (exc != NULL) {
    PyErr_SetObject(cls, exc);
    Py_DECREF(exc);
  }
  return NULL;
}

PyObject *pyb_support(pyb_state *st) {
  if (st->support == NULL)
    st->support = PyImport_ImportModule("pymongoose_uring._datastructures");
  return st->support;
}

/* "GET /path" for log lines, or an empty string. New reference. */
static PyObject *request_line(PyObject *request) {
  if (request == NULL)
    return PyUnicode_FromString("");
  PyObject *method = PyObject_GetAttrString(request, "method");
  PyObject *target = method ? PyObject_GetAttrString(request, "target") : NULL;
  PyObject *line = NULL;
  if (method && target)
    line = PyUnicode_FromFormat(" for %U %U", method, target);
  Py_XDECREF(method);
  Py_XDECREF(target);
  if (line == NULL) {
    PyErr_Clear();
    line = PyUnicode_FromString("");
  }
  return line;
}

void pyb_fetch_error(PyObject **type, PyObject **value, PyObject **tb) {
  PyErr_Fetch(type, value, tb);
  if (*type == NULL)
    return;
  PyErr_NormalizeException(type, value, tb);
  if (*tb != NULL && *value != NULL)
    PyException_SetTraceback(*value, *tb);
}

void pyb_log_exception(pyb_state *st, const char *what, PyObject *request) {
  PyObject *type, *value, *tb;
  pyb_fetch_error(&type, &value, &tb);
  if (type == NULL)
    return;
  PyObject *line = request_line(request);
  PyObject *msg = line ? PyUnicode_FromFormat("%s%U", what, line) : NULL;
  PyObject *kwargs = value ? Py_BuildValue("{sO}", "exc_info", value) : NULL;
  PyObject *error = PyObject_GetAttrString(st->logger, "error");
  PyObject *args = msg ? PyTuple_Pack(1, msg) : NULL;
  if (error && args && kwargs) {
    PyObject *r = PyObject_Call(error, args, kwargs);
    Py_XDECREF(r);
  }
  if (PyErr_Occurred())
    PyErr_WriteUnraisable(st->logger);
  Py_XDECREF(args);
  Py_XDECREF(error);
  Py_XDECREF(kwargs);
  Py_XDECREF(msg);
  Py_XDECREF(line);
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
}

void pyb_log_warning(pyb_state *st, const char *format, ...) {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  va_list ap;
  va_start(ap, format);
  PyObject *msg = PyUnicode_FromFormatV(format, ap);
  va_end(ap);
  if (msg != NULL) {
    /* "%s" keeps a % inside msg from being read as a format by logging. */
    PyObject *r = PyObject_CallMethod(st->logger, "warning", "sO", "%s", msg);
    Py_XDECREF(r);
    Py_DECREF(msg);
  }
  if (PyErr_Occurred())
    PyErr_Clear();
  PyErr_Restore(type, value, tb);
}

/* ---- bodies sent without a copy ---- */

/* The engine's body_release: any thread, no GIL, so only a push. */
static void release_body(void *ctx) {
  pyb_released *node = ctx;
  pyb_released *head = atomic_load_explicit(&node->st->released, memory_order_relaxed);
  do {
    node->next = head;
  } while (!atomic_compare_exchange_weak_explicit(&node->st->released, &head, node,
                                                  memory_order_release, memory_order_relaxed));
}

int pyb_keep_until_released(pyb_state *st, PyObject *owner, void (**release)(void *), void **ctx) {
  pyb_released *node = PyMem_RawMalloc(sizeof *node);
  if (node == NULL)
    return -1;
  node->obj = Py_NewRef(owner);
  node->st = st;
  node->next = NULL;
  *release = release_body;
  *ctx = node;
  return 0;
}

int pyb_zero_copy(pyb_state *st, pmu_response_t *response, PyObject *owner) {
  return pyb_keep_until_released(st, owner, &response->body_release, &response->body_ctx);
}

void pyb_drain_released(pyb_state *st) {
  if (atomic_load_explicit(&st->released, memory_order_relaxed) == NULL)
    return;
  pyb_released *node = atomic_exchange_explicit(&st->released, NULL, memory_order_acquire);
  while (node != NULL) {
    pyb_released *next = node->next;
    Py_DECREF(node->obj);
    PyMem_RawFree(node);
    node = next;
  }
}

int pyb_data_get(PyObject *data, pyb_data *d, const char *what) {
  memset(d, 0, sizeof *d);
  if (PyBytes_Check(data)) {
    d->p = PyBytes_AS_STRING(data);
    d->n = PyBytes_GET_SIZE(data);
    d->owner = data;
    return 0;
  }
  if (PyUnicode_Check(data)) {
    d->p = PyUnicode_AsUTF8AndSize(data, &d->n); /* cached in the str: lives as long */
    if (d->p == NULL)
      return -1;
    d->is_text = 1;
    d->owner = data;
    return 0;
  }
  if (PyObject_CheckBuffer(data)) {
    if (PyObject_GetBuffer(data, &d->view, PyBUF_SIMPLE) < 0)
      return -1;
    d->p = d->view.buf;
    d->n = d->view.len;
    d->have_view = 1;
    return 0;
  }
  PyErr_Format(PyExc_TypeError, "%s is str or a bytes-like object, not %.100s", what,
               Py_TYPE(data)->tp_name);
  return -1;
}

void pyb_data_keep(pyb_state *st, pyb_data *d) {
  d->release = NULL;
  d->ctx = NULL;
  if (d->owner != NULL && d->n >= PYB_ZERO_COPY_MIN &&
      pyb_keep_until_released(st, d->owner, &d->release, &d->ctx) < 0)
    d->release = NULL; /* no memory for the note: copy instead */
}

void pyb_data_done(pyb_data *d) {
  if (d->have_view) {
    PyBuffer_Release(&d->view);
    d->have_view = 0;
  }
}

/* ---- module functions ---- */

static int set_int(PyObject *d, const char *key, long long v) {
  PyObject *o = PyLong_FromLongLong(v);
  int rc = o ? PyDict_SetItemString(d, key, o) : -1;
  Py_XDECREF(o);
  return rc;
}

static int set_bool(PyObject *d, const char *key, int v) {
  return PyDict_SetItemString(d, key, v ? Py_True : Py_False);
}

static int set_str(PyObject *d, const char *key, const char *v) {
  PyObject *o = PyUnicode_DecodeUTF8(v, (Py_ssize_t)strlen(v), "replace");
  int rc = o ? PyDict_SetItemString(d, key, o) : -1;
  Py_XDECREF(o);
  return rc;
}

PyDoc_STRVAR(probe_doc, "probe() -> dict\n\n"
                        "Ask the kernel what io_uring offers this engine. Never raises for a\n"
                        "missing io_uring: 'available' is False and 'message' names the cause\n"
                        "and the fix. 'ktls': whether established TLS sessions can be handed\n"
                        "to kernel TLS; 'ktls_message' says why not, or what it supports.");

static PyObject *probe(PyObject *module, PyObject *unused) {
  pmu_probe_t p;
  memset(&p, 0, sizeof p);
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = pmu_probe(&p);
  Py_END_ALLOW_THREADS
  p.message[sizeof p.message - 1] = '\0';
  p.kernel[sizeof p.kernel - 1] = '\0';
  p.ktls_message[sizeof p.ktls_message - 1] = '\0';
  PyObject *d = PyDict_New();
  if (d == NULL)
    return NULL;
  if (set_bool(d, "available", rc == 0 && p.available) < 0 ||
      set_int(d, "error", rc < 0 ? rc : p.error) < 0 || set_str(d, "message", p.message) < 0 ||
      set_str(d, "kernel", p.kernel) < 0 || set_int(d, "features", p.features) < 0 ||
      set_bool(d, "single_issuer", p.single_issuer) < 0 ||
      set_bool(d, "defer_taskrun", p.defer_taskrun) < 0 ||
      set_bool(d, "coop_taskrun", p.coop_taskrun) < 0 ||
      set_bool(d, "multishot_accept", p.multishot_accept) < 0 ||
      set_bool(d, "multishot_recv", p.multishot_recv) < 0 ||
      set_bool(d, "provided_buffer_ring", p.provided_buffer_ring) < 0 ||
      set_bool(d, "send_zc", p.send_zc) < 0 || set_bool(d, "msg_ring", p.msg_ring) < 0 ||
      set_bool(d, "recv_bundle", p.recv_bundle) < 0 ||
      set_bool(d, "incremental_buffers", p.incremental_buffers) < 0 ||
      set_bool(d, "registered_ring_fd", p.registered_ring_fd) < 0 ||
      set_bool(d, "ext_arg", p.ext_arg) < 0 || set_bool(d, "ktls", p.ktls) < 0 ||
      set_str(d, "ktls_message", p.ktls_message) < 0) {
    Py_DECREF(d);
    return NULL;
  }
  return d;
}

PyDoc_STRVAR(status_reason_doc, "status_reason(status) -> str\n\n"
                                "The reason phrase the engine sends for `status`.");

static PyObject *status_reason(PyObject *module, PyObject *arg) {
  long status = PyLong_AsLong(arg);
  if (status == -1 && PyErr_Occurred())
    return NULL;
  if (status < INT_MIN || status > INT_MAX)
    status = 0;
  return PyUnicode_FromString(pmu_status_reason((int)status));
}

static PyObject *requests_alive(PyObject *module, PyObject *unused) {
  return PyLong_FromSsize_t(((pyb_state *)PyModule_GetState(module))->requests_alive);
}

static PyObject *websockets_alive(PyObject *module, PyObject *unused) {
  return PyLong_FromSsize_t(((pyb_state *)PyModule_GetState(module))->websockets_alive);
}

/* ---- holding the wake-ups of answers (pmu_wake_batch) on a Python thread ---- */

/* The calling thread's batch: made on first use, flushed and freed when the
 * thread ends. */
static pthread_key_t held_key;
static pthread_once_t held_once = PTHREAD_ONCE_INIT;

static void held_free(void *batch) {
  pmu_wake_batch_begin(NULL); /* (the exiting thread's): nothing may note in it after */
  pmu_wake_batch_free(batch); /* flushes */
}
static void held_key_make(void) { (void)pthread_key_create(&held_key, held_free); }

PyDoc_STRVAR(hold_wakeups_doc,
             "hold_wakeups()\n\nFrom now on, the answers this thread gives wake their ring "
             "threads only at\nflush_wakeups(): an event loop that answers a batch of requests "
             "in one turn\nhands the ring all of them at once (one wake-up, one turn of the ring, "
             "the\nanswers sent together) instead of one each. Call flush_wakeups() before the\n"
             "thread waits for anything.");
static PyObject *hold_wakeups(PyObject *module, PyObject *unused) {
  (void)module;
  (void)unused;
  pthread_once(&held_once, held_key_make);
  pmu_wake_batch_t *batch = pthread_getspecific(held_key);
  if (batch == NULL) {
    batch = pmu_wake_batch_new();
    if (batch == NULL || pthread_setspecific(held_key, batch) != 0) {
      pmu_wake_batch_free(batch);
      return PyErr_NoMemory();
    }
  }
  pmu_wake_batch_begin(batch);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(flush_wakeups_doc,
             "flush_wakeups() -> int\n\nStop holding (see hold_wakeups()) and wake the ring "
             "threads the held answers\nwait on; returns how many were woken.");
static PyObject *flush_wakeups(PyObject *module, PyObject *unused) {
  (void)module;
  (void)unused;
  pmu_wake_batch_begin(NULL);
  pthread_once(&held_once, held_key_make);
  pmu_wake_batch_t *batch = pthread_getspecific(held_key);
  return PyLong_FromUnsignedLong(batch != NULL ? pmu_wake_batch_flush(batch) : 0);
}

static PyObject *connections_alive(PyObject *module, PyObject *unused) {
  return PyLong_FromSsize_t(((pyb_state *)PyModule_GetState(module))->connections_alive);
}

static PyMethodDef module_methods[] = {
    {"probe", probe, METH_NOARGS, probe_doc},
    {"status_reason", status_reason, METH_O, status_reason_doc},
    {"config_defaults", pyb_config_defaults, METH_NOARGS,
     "config_defaults() -> dict\n\nEvery engine knob with the engine's default value."},
    {"knobs", pyb_config_knobs, METH_NOARGS,
     "knobs() -> dict\n\nEvery engine knob: {name: (type, default, unit, min, max, doc)}, "
     "type 'str', 'int' or 'bool'; min and max None for a string."},
    {"counters", pyb_stats_counters, METH_NOARGS,
     "counters() -> dict\n\nEvery key of Engine.stats(): {name: (kind, doc)}, kind "
     "'counter', 'gauge' or 'array'."},
    {"hold_wakeups", hold_wakeups, METH_NOARGS, hold_wakeups_doc},
    {"flush_wakeups", flush_wakeups, METH_NOARGS, flush_wakeups_doc},
    {"after_batch", pyb_after_batch, METH_O,
     "after_batch(fn)\n\nOn a ring thread running a batch of callbacks: call fn() when the "
     "batch ends\n(under the GIL, in order; an exception is reported as unraisable). "
     "Elsewhere: call fn() now."},
    {"requests_alive", requests_alive, METH_NOARGS,
     "requests_alive() -> int\n\nRequest objects not yet freed, answered or not, in every "
     "server of this interpreter:\nheld by handlers, waiting for a deferred answer, or "
     "leaked."},
    {"websockets_alive", websockets_alive, METH_NOARGS,
     "websockets_alive() -> int\n\nWebSocket objects not yet freed, open or closed, in every "
     "server of this\ninterpreter: open ones (the engine holds them until on_disconnect), and "
     "closed ones\nstill referenced."},
    {"connections_alive", connections_alive, METH_NOARGS,
     "connections_alive() -> int\n\nConnection objects not yet freed, open or closed, in every "
     "server of this\ninterpreter: open ones (the engine holds them until their CLOSE event), "
     "and closed ones\nstill referenced."},
    {NULL, NULL, 0, NULL},
};

/* ---- state ---- */

static PyObject *make_json_encoder(PyObject **dumps_out) {
  /* json's C encoder called directly skips JSONEncoder.encode's per-call
   * set-up (about 1 us of a hello-world request). markers=None turns off
   * the circular-reference check: a cycle ends in RecursionError instead. */
  PyObject *json = PyImport_ImportModule("json");
  PyObject *encmod = json ? PyImport_ImportModule("json.encoder") : NULL;
  PyObject *make = NULL, *basestring = NULL, *enc_cls = NULL, *proto = NULL, *deflt = NULL;
  PyObject *encoder = NULL;
  if (encmod == NULL)
    goto bail;
  *dumps_out = NULL;
  {
    PyObject *dumps = PyObject_GetAttrString(json, "dumps");
    PyObject *kwargs = Py_BuildValue("{s(ss)}", "separators", ",", ":");
    /* functools.partial(json.dumps, separators=(",", ":")) */
    PyObject *functools = PyImport_ImportModule("functools");
    PyObject *partial = functools ? PyObject_GetAttrString(functools, "partial") : NULL;
    PyObject *args = dumps ? PyTuple_Pack(1, dumps) : NULL;
    if (partial && args && kwargs)
      *dumps_out = PyObject_Call(partial, args, kwargs);
    Py_XDECREF(args);
    Py_XDECREF(partial);
    Py_XDECREF(functools);
    Py_XDECREF(kwargs);
    Py_XDECREF(dumps);
    if (*dumps_out == NULL)
      goto bail;
  }
  make = PyObject_GetAttrString(encmod, "c_make_encoder");
  basestring = make ? PyObject_GetAttrString(encmod, "c_encode_basestring_ascii") : NULL;
  enc_cls = basestring ? PyObject_GetAttrString(encmod, "JSONEncoder") : NULL;
  proto = enc_cls ? PyObject_CallNoArgs(enc_cls) : NULL;
  deflt = proto ? PyObject_GetAttrString(proto, "default") : NULL;
  if (deflt == NULL)
    goto bail;
  if (make != Py_None && basestring != Py_None)
    encoder = PyObject_CallFunction(make, "OOOOssOOO", Py_None, deflt, basestring, Py_None, ":",
                                    ",", Py_False, Py_False, Py_True);
  if (encoder == NULL)
    PyErr_Clear(); /* fall back to json.dumps */
bail:
  Py_XDECREF(deflt);
  Py_XDECREF(proto);
  Py_XDECREF(enc_cls);
  Py_XDECREF(basestring);
  Py_XDECREF(make);
  Py_XDECREF(encmod);
  Py_XDECREF(json);
  return encoder;
}

static const char *const method_names[PYB_M_COUNT] = {
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
};

static int add_type(PyObject *module, PyType_Spec *spec, PyObject *base, PyTypeObject **out) {
  PyObject *t = PyType_FromModuleAndSpec(module, spec, base);
  if (t == NULL)
    return -1;
  *out = (PyTypeObject *)t;
  return PyModule_AddType(module, (PyTypeObject *)t);
}

static int intern_str(PyObject **slot, const char *s) {
  *slot = PyUnicode_InternFromString(s);
  return *slot ? 0 : -1;
}

static int module_exec(PyObject *module) {
  pyb_state *st = (pyb_state *)PyModule_GetState(module);

  st->error = PyErr_NewExceptionWithDoc(
      "pymongoose_uring._pmu.Error",
      "The engine refused: args are (errno, message naming the cause and the fix).", PyExc_OSError,
      NULL);
  if (st->error == NULL || PyModule_AddObjectRef(module, "Error", st->error) < 0)
    return -1;
  st->unavailable = PyErr_NewExceptionWithDoc(
      "pymongoose_uring._pmu.UnavailableError",
      "io_uring cannot be used here (kernel too old, disabled by sysctl, or blocked by "
      "seccomp); the message says which and what to do.",
      st->error, NULL);
  if (st->unavailable == NULL ||
      PyModule_AddObjectRef(module, "UnavailableError", st->unavailable) < 0)
    return -1;

  st->disconnected = PyErr_NewExceptionWithDoc(
      "pymongoose_uring._pmu.ClientDisconnected",
      "The client closed the connection before the request's body (or its streamed "
      "answer) was complete.",
      PyExc_ConnectionError, NULL);
  if (st->disconnected == NULL ||
      PyModule_AddObjectRef(module, "ClientDisconnected", st->disconnected) < 0)
    return -1;
  st->ws_closed = PyErr_NewExceptionWithDoc(
      "pymongoose_uring._pmu.WebSocketClosed",
      "The WebSocket is closing or closed: the message was not sent.", PyExc_OSError, NULL);
  if (st->ws_closed == NULL || PyModule_AddObjectRef(module, "WebSocketClosed", st->ws_closed) < 0)
    return -1;
  st->conn_closed = PyErr_NewExceptionWithDoc(
      "pymongoose_uring._pmu.ConnectionClosed",
      "The connection is closing or closed: the data was not sent.", PyExc_OSError, NULL);
  if (st->conn_closed == NULL ||
      PyModule_AddObjectRef(module, "ConnectionClosed", st->conn_closed) < 0)
    return -1;
  {
    PyObject *fn = PyCFunction_NewEx(&pyb_ws_broadcast_def, module, NULL);
    if (fn == NULL || PyModule_AddObject(module, "broadcast", fn) < 0) {
      Py_XDECREF(fn);
      return -1;
    }
  }
  /* Functions without a module reference: worker threads hand them to
   * loop.call_soon_threadsafe. */
  st->set_future = PyCFunction_NewEx(&pyb_set_future_def, NULL, NULL);
  st->read_ready = PyCFunction_NewEx(&pyb_read_ready_def, NULL, NULL);
  if (st->set_future == NULL || st->read_ready == NULL)
    return -1;
  st->main_thread = PyThread_get_thread_ident();
  {
    /* The thread whose signal handlers run: blocking calls there wait in
     * slices. Usually the importing thread, but not necessarily. */
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *main = threading ? PyObject_CallMethod(threading, "main_thread", NULL) : NULL;
    PyObject *ident = main ? PyObject_GetAttrString(main, "ident") : NULL;
    if (ident != NULL && PyLong_Check(ident))
      st->main_thread = PyLong_AsUnsignedLong(ident);
    if (PyErr_Occurred())
      PyErr_Clear();
    Py_XDECREF(ident);
    Py_XDECREF(main);
    Py_XDECREF(threading);
  }

  if (add_type(module, &pyb_request_spec, NULL, &st->request_type) < 0 ||
      add_type(module, &pyb_response_spec, NULL, &st->response_type) < 0 ||
      add_type(module, &pyb_engine_spec, NULL, &st->engine_type) < 0 ||
      add_type(module, &pyb_websocket_spec, NULL, &st->websocket_type) < 0 ||
      add_type(module, &pyb_static_mount_spec, NULL, &st->static_mount_type) < 0 ||
      add_type(module, &pyb_file_response_spec, NULL, &st->file_response_type) < 0 ||
      add_type(module, &pyb_connection_spec, NULL, &st->connection_type) < 0 ||
      add_type(module, &pyb_tls_certs_spec, NULL, &st->tls_certs_type) < 0 ||
      add_type(module, &pyb_pool_spec, NULL, &st->pool_type) < 0 ||
      add_type(module, &pyb_wsgi_start_spec, NULL, &st->wsgi_start_type) < 0 ||
      add_type(module, &pyb_wsgi_call_spec, NULL, &st->wsgi_call_type) < 0 ||
      pyb_mg_exec(module, st) < 0 || pyb_asgi_exec(module, st) < 0)
    return -1;

  PyObject *logging = PyImport_ImportModule("logging");
  if (logging == NULL)
    return -1;
  st->logger = PyObject_CallMethod(logging, "getLogger", "s", "pymongoose_uring");
  Py_DECREF(logging);
  if (st->logger == NULL)
    return -1;

  st->json_encoder = make_json_encoder(&st->json_dumps);
  if (st->json_dumps == NULL)
    return -1;
  PyObject *json = PyImport_ImportModule("json");
  if (json == NULL)
    return -1;
  st->json_loads = PyObject_GetAttrString(json, "loads");
  Py_DECREF(json);
  if (st->json_loads == NULL)
    return -1;

  PyObject *parse = PyImport_ImportModule("urllib.parse");
  if (parse == NULL)
    return -1;
  st->unquote = PyObject_GetAttrString(parse, "unquote");
  Py_DECREF(parse);
  if (st->unquote == NULL)
    return -1;

  for (int i = 0; i < PYB_M_COUNT; i++)
    if (intern_str(&st->methods[i], method_names[i]) < 0)
      return -1;
  st->str_get = Py_NewRef(st->methods[PYB_M_GET]);
  if (intern_str(&st->str_http, "http") < 0 || intern_str(&st->str_https, "https") < 0)
    return -1;
  if (intern_str(&st->str_websocket, "WEBSOCKET") < 0)
    return -1;
  if (intern_str(&st->version_10, "1.0") < 0 || intern_str(&st->version_11, "1.1") < 0 ||
      intern_str(&st->ct_json, "application/json") < 0 ||
      intern_str(&st->ct_text, "text/plain; charset=utf-8") < 0 ||
      intern_str(&st->ct_html, "text/html; charset=utf-8") < 0 ||
      intern_str(&st->ct_octet, "application/octet-stream") < 0)
    return -1;

  if (PyModule_AddStringConstant(module, "ENGINE_VERSION", PMU_VERSION) < 0 ||
      PyModule_AddIntConstant(module, "BATCH_BUCKETS", PMU_BATCH_BUCKETS) < 0)
    return -1;
  /* The connection events, as connection_handler(conn, event, data) gets them. */
  if (PyModule_AddIntConstant(module, "CONN_OPEN", PMU_CONN_EV_OPEN) < 0 ||
      PyModule_AddIntConstant(module, "CONN_DATA", PMU_CONN_EV_DATA) < 0 ||
      PyModule_AddIntConstant(module, "CONN_READ", PMU_CONN_EV_READ) < 0 ||
      PyModule_AddIntConstant(module, "CONN_SENT", PMU_CONN_EV_SENT) < 0 ||
      PyModule_AddIntConstant(module, "CONN_DRAIN", PMU_CONN_EV_DRAIN) < 0 ||
      PyModule_AddIntConstant(module, "CONN_CLOSE", PMU_CONN_EV_CLOSE) < 0)
    return -1;
  return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg) {
  pyb_state *st = (pyb_state *)PyModule_GetState(module);
  Py_VISIT(st->request_type);
  Py_VISIT(st->response_type);
  Py_VISIT(st->engine_type);
  Py_VISIT(st->websocket_type);
  Py_VISIT(st->static_mount_type);
  Py_VISIT(st->file_response_type);
  Py_VISIT(st->connection_type);
  Py_VISIT(st->tls_certs_type);
  Py_VISIT(st->pool_type);
  Py_VISIT(st->wsgi_start_type);
  Py_VISIT(st->wsgi_call_type);
  Py_VISIT(st->ws_closed);
  Py_VISIT(st->conn_closed);
  Py_VISIT(st->error);
  Py_VISIT(st->unavailable);
  Py_VISIT(st->disconnected);
  Py_VISIT(st->get_running_loop);
  Py_VISIT(st->set_future);
  Py_VISIT(st->read_ready);
  Py_VISIT(st->logger);
  Py_VISIT(st->json_encoder);
  Py_VISIT(st->json_dumps);
  Py_VISIT(st->json_loads);
  Py_VISIT(st->unquote);
  Py_VISIT(st->support);
  int rc = pyb_asgi_traverse(st, visit, arg);
  if (rc == 0)
    rc = pyb_address_traverse(st, visit, arg);
  return rc ? rc : pyb_mg_traverse(st, visit, arg);
}

static int module_clear(PyObject *module) {
  pyb_state *st = (pyb_state *)PyModule_GetState(module);
  pyb_drain_released(st);
  Py_CLEAR(st->request_type);
  Py_CLEAR(st->response_type);
  Py_CLEAR(st->engine_type);
  Py_CLEAR(st->websocket_type);
  Py_CLEAR(st->static_mount_type);
  Py_CLEAR(st->file_response_type);
  Py_CLEAR(st->connection_type);
  Py_CLEAR(st->tls_certs_type);
  Py_CLEAR(st->pool_type);
  Py_CLEAR(st->wsgi_start_type);
  Py_CLEAR(st->wsgi_call_type);
  Py_CLEAR(st->ws_closed);
  Py_CLEAR(st->conn_closed);
  Py_CLEAR(st->str_websocket);
  Py_CLEAR(st->str_http);
  Py_CLEAR(st->str_https);
  Py_CLEAR(st->tls_keys);
  Py_CLEAR(st->error);
  Py_CLEAR(st->unavailable);
  Py_CLEAR(st->disconnected);
  Py_CLEAR(st->get_running_loop);
  Py_CLEAR(st->set_future);
  Py_CLEAR(st->read_ready);
  Py_CLEAR(st->logger);
  Py_CLEAR(st->json_encoder);
  Py_CLEAR(st->json_dumps);
  Py_CLEAR(st->json_loads);
  Py_CLEAR(st->unquote);
  Py_CLEAR(st->support);
  for (int i = 0; i < PYB_M_COUNT; i++)
    Py_CLEAR(st->methods[i]);
  Py_CLEAR(st->str_get);
  Py_CLEAR(st->version_10);
  Py_CLEAR(st->version_11);
  Py_CLEAR(st->ct_json);
  Py_CLEAR(st->ct_text);
  Py_CLEAR(st->ct_html);
  Py_CLEAR(st->ct_octet);
  pyb_mg_clear(st);
  pyb_asgi_clear(st);
  pyb_address_clear(st);
  return 0;
}

static void module_free(void *module) { module_clear((PyObject *)module); }

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#ifdef Py_mod_multiple_interpreters
    /* Ring threads attach to the interpreter that started them; one GIL is
     * assumed while a batch runs, so a separate-GIL subinterpreter is not. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
#endif
#ifdef Py_mod_gil
    /* Request objects are not yet guarded by per-object locks. */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

PyModuleDef pyb_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pymongoose_uring._pmu",
    .m_doc = "The C engine of pymongoose_uring: Engine, Request, Response, WebSocket, Connection, "
             "probe().",
    .m_size = sizeof(pyb_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__pmu(void);
PyMODINIT_FUNC PyInit__pmu(void) { return PyModuleDef_Init(&pyb_module_def); }
