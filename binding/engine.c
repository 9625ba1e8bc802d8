/*
 * engine.c: the Engine type: one pmu_server_t, and the batch handler that
 * runs Python handlers on the engine's worker threads.
 *
 * GIL discipline. Each worker thread gets one Python thread state when it
 * starts (on_thread_start) and keeps it until it stops; the GIL is
 * taken once per batch (PyEval_RestoreThread), every request of the batch
 * is wrapped, dispatched and answered, and the GIL is released
 * (PyEval_SaveThread) before the engine sends anything. Keeping the thread
 * state makes a batch cost one GIL hand-over, not a thread-state creation.
 *
 * WebSocket events come the same way (on_ws_events, GIL taken once per
 * call) and go to websocket.c, which calls each WebSocket's callbacks.
 * Connection events too (on_conn_events, only with a connection_handler:
 * without one config.conn_handler stays NULL and the engine does nothing
 * for them), to conn.c.
 *
 * Streaming callbacks. on_body, on_drain and on_disconnect are always
 * installed (on_body only with a stream_body_threshold): they come on the
 * worker thread without the GIL and go to stream.c, which takes the GIL
 * (with the same kept thread state) only when Python must be woken.
 *
 * Lifetime. While worker threads may run, the Engine holds a reference to
 * itself (the engine's handler_data points at it), dropped once wait()
 * has seen every thread exit. Every call into the engine that may block
 * (start, stop, wait, destroy) runs with the GIL released, since worker
 * threads need the GIL to finish their batches.
 */
#include "binding.h"

#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

/* One worker thread's Python side. */
typedef struct ring_state {
  PyThreadState *tstate; /* NULL until on_thread_start, and after on_thread_stop */
  pthread_t thread;
  int in_batch; /* the thread holds the GIL for a batch */
  /* For the slow-handler warning (on_slow): the callable of the request being
   * handled (pyb_note_callee), and in a batch of several, the index and
   * callable of the request whose call took longest. Strong references. */
  PyObject *callee;
  PyObject *longest_fn;
  size_t longest_index;
  /* Requests kept and never answered when the stop deadline closed their
   * connections (pmu_request_gone 2), and "METHOD /path" of the first: one
   * line at the thread's end. Touched by the ring thread only. */
  unsigned long cut_at_stop;
  char first_cut[192];
  /* Callables given to after_batch() during the batch: called when it ends,
   * still under the GIL (a list, or NULL when none). */
  PyObject *after;
  /* A driven engine's ring (start_driven): tstate is the driving thread's
   * own, lent while a step runs, never deleted here. */
  int borrowed;
} ring_state;

/* How many knobs of the table are strings (the Engine keeps a copy of each). */
#define PYB_STR_ONE_STR +1
#define PYB_STR_ONE_PORT
#define PYB_STR_ONE_INT
#define PYB_STR_ONE_UINT
#define PYB_STR_ONE_SIZE
#define PYB_STR_ONE_BOOL
#define PYB_STR_ONE(type, name, def, unit, min, max, doc) PYB_STR_ONE_##type
#define PYB_STR_KNOBS (0 PMU_CONFIG_KNOBS(PYB_STR_ONE))

typedef struct {
  PyObject_HEAD
  pyb_state *st; /* borrowed: the type holds the module */
  pmu_config_t config;
  char *owned[PYB_STR_KNOBS]; /* owned copies behind config's strings, by owned_index() */
  PyObject *handler;          /* callable(request): called when no route matches; NULL (raw) */
  PyObject *conn_handler;     /* callable(conn, event, data), or NULL */
  PyObject *routes;           /* dict path -> dict method -> callable, or NULL */
  PyObject *scheduler;        /* callable(list of (request, coroutine)), or NULL */
  PyObject *pool;             /* the handler's WSGIPool (wsgi.c), filled without the GIL; or NULL */
  PyObject *unix_path_str;    /* config.unix_path as a str, or NULL */
  PyObject *statics;          /* tuple of StaticMount behind config.statics, or NULL */
  pmu_static_t *static_array; /* PyMem copies of their pmu_static_t (config.statics) */
  pmu_tls_cert_t *sni_certs;  /* config.ssl_sni_certs and their strings: one PyMem block */
  pmu_server_t *server;
  ring_state *rings;
  unsigned nrings;
  PyInterpreterState *interp;   /* the interpreter that started the engine */
  int running;                  /* worker threads may be alive */
  int driven;                   /* started by start_driven(): its ring runs in step() */
  PyThreadState *driver_tstate; /* the driving thread's, while start_driven() runs */
  PyObject *drive_wake;         /* start_driven(wake): config.on_self_wake calls it */
  int holds_self;
  int initialized; /* __init__ succeeded */
  PyObject *weakreflist;
} EngineObject;

#define ENGINE(o) ((EngineObject *)(o))

/* The ring of the current thread, when it is a worker thread of some engine
 * (a driven engine's thread: while step() runs). */
static _Thread_local ring_state *current_ring;
/* Driven engines whose ring this thread runs (start_driven until the last
 * step): blocking on the engine here would wait for this very thread. */
static _Thread_local int driving;

/* ---- configuration ---- */

enum field_type { F_STR, F_PORT, F_INT, F_UINT, F_SIZE, F_BOOL };

typedef struct field {
  const char *name; /* the C field's name; see knob_name() */
  enum field_type type;
  size_t offset;
  const char *unit;
  long long min;          /* the range pmu_server_start() accepts */
  unsigned long long max; /* (both 0 for a string) */
  const char *doc;
} field;

/* Every knob of pmu_config_t, from the engine's table, in its order. */
/* clang-format off */
#define FIELD(type, name, def, unit, min, max, doc)                                           \
  {#name, F_##type, offsetof(pmu_config_t, name), unit, (long long)(min),                     \
   (unsigned long long)(max), doc},
/* clang-format on */
static const field fields[] = {PMU_CONFIG_KNOBS(FIELD)};
#undef FIELD
#define NFIELDS (sizeof fields / sizeof fields[0])

/* A knob's Python name: the C field's, except body_stream_threshold, which is
 * stream_body_threshold in Python (the name the WSGI and ASGI servers use). */
static const char *knob_name(const field *f) {
  return strcmp(f->name, "body_stream_threshold") == 0 ? "stream_body_threshold" : f->name;
}

static PyObject *field_get(const pmu_config_t *c, const field *f) {
  const char *base = (const char *)c + f->offset;
  switch (f->type) {
  case F_STR: {
    const char *s = *(const char *const *)base;
    if (s == NULL)
      Py_RETURN_NONE;
    return PyUnicode_DecodeFSDefault(s);
  }
  case F_PORT: return PyLong_FromLong(*(const uint16_t *)base);
  case F_INT: return PyLong_FromLong(*(const int *)base);
  case F_UINT: return PyLong_FromUnsignedLong(*(const unsigned *)base);
  case F_SIZE: return PyLong_FromSize_t(*(const size_t *)base);
  case F_BOOL: return PyBool_FromLong(*(const int *)base);
  }
  Py_RETURN_NONE;
}

static PyObject *config_dict(const pmu_config_t *c) {
  PyObject *d = PyDict_New();
  for (size_t i = 0; d && i < NFIELDS; i++) {
    PyObject *v = field_get(c, &fields[i]);
    if (v == NULL || PyDict_SetItemString(d, knob_name(&fields[i]), v) < 0) {
      Py_XDECREF(v);
      Py_CLEAR(d);
      break;
    }
    Py_DECREF(v);
  }
  return d;
}

PyObject *pyb_config_defaults(PyObject *module, PyObject *unused) {
  pmu_config_t c;
  pmu_config_init(&c);
  return config_dict(&c);
}

/* {name: (type, default, unit, min, max, doc)} for every knob, from the
 * engine's table: type is "str", "int" or "bool"; min and max are None for a
 * string. */
PyObject *pyb_config_knobs(PyObject *module, PyObject *unused) {
  pmu_config_t c;
  pmu_config_init(&c);
  PyObject *d = PyDict_New();
  for (size_t i = 0; d && i < NFIELDS; i++) {
    const field *f = &fields[i];
    const char *type = f->type == F_STR ? "str" : f->type == F_BOOL ? "bool" : "int";
    PyObject *def = field_get(&c, f);
    PyObject *v = def == NULL ? NULL
                  : f->type == F_STR
                      ? Py_BuildValue("(sNsOOs)", type, def, f->unit, Py_None, Py_None, f->doc)
                      : Py_BuildValue("(sNsLKs)", type, def, f->unit, f->min, f->max, f->doc);
    if (v == NULL || PyDict_SetItemString(d, knob_name(f), v) < 0)
      Py_CLEAR(d);
    Py_XDECREF(v);
  }
  return d;
}

/* Store `value` into the field; a string is copied into *owned, replacing
 * (and freeing) an earlier copy made during the same call. Returns 0 or -1
 * with an exception. */
static int field_set(pmu_config_t *c, const field *f, PyObject *value, char **owned) {
  char *base = (char *)c + f->offset;
  if (f->type == F_STR) {
    if (value == Py_None) {
      *(const char **)base = NULL;
      return 0;
    }
    PyObject *bytes = NULL;
    if (!PyUnicode_FSConverter(value, &bytes))
      return -1;
    size_t n = (size_t)PyBytes_GET_SIZE(bytes);
    char *copy = PyMem_Malloc(n + 1);
    if (copy == NULL) {
      Py_DECREF(bytes);
      PyErr_NoMemory();
      return -1;
    }
    memcpy(copy, PyBytes_AS_STRING(bytes), n + 1);
    Py_DECREF(bytes);
    PyMem_Free(*owned);
    *owned = copy;
    *(const char **)base = copy;
    return 0;
  }
  if (f->type == F_BOOL) {
    int b = PyObject_IsTrue(value);
    if (b < 0)
      return -1;
    *(int *)base = b;
    return 0;
  }
  if (!PyLong_Check(value) || PyBool_Check(value)) {
    PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", knob_name(f),
                 Py_TYPE(value)->tp_name);
    return -1;
  }
  unsigned long long max = f->type == F_PORT   ? 65535
                           : f->type == F_INT  ? INT_MAX
                           : f->type == F_UINT ? UINT_MAX
                                               : SIZE_MAX;
  unsigned long long v = PyLong_AsUnsignedLongLong(value);
  if (v == (unsigned long long)-1 && PyErr_Occurred()) {
    PyErr_Clear();
    v = max + 1; /* negative or huge: reported below */
  }
  if (v > max) {
    PyErr_Format(PyExc_ValueError, "%s must be between 0 and %llu", knob_name(f), max);
    return -1;
  }
  switch (f->type) {
  case F_PORT: *(uint16_t *)base = (uint16_t)v; break;
  case F_INT: *(int *)base = (int)v; break;
  case F_UINT: *(unsigned *)base = (unsigned)v; break;
  default: *(size_t *)base = (size_t)v; break;
  }
  return 0;
}

/* ---- the batch handler (worker threads) ---- */

static PyObject *route_and_call(EngineObject *self, PyObject *req) {
  PyObject *routes = self->routes;
  if (routes != NULL) {
    PyObject *path = pyb_request_path(req);
    if (path == NULL)
      return NULL;
    PyObject *methods = PyDict_GetItemWithError(routes, path); /* borrowed */
    Py_DECREF(path);
    if (methods != NULL && PyDict_Check(methods)) {
      /* A WebSocket handshake goes to the path's "WEBSOCKET" handler; without
       * one it is routed as the ordinary GET it also is. */
      PyObject *fn = NULL; /* borrowed */
      if (pyb_request_ws_upgrade(req))
        fn = PyDict_GetItemWithError(methods, self->st->str_websocket);
      PyObject *method = fn || PyErr_Occurred() ? NULL : pyb_request_method(req);
      if (method != NULL) {
        fn = PyDict_GetItemWithError(methods, method);
        if (fn == NULL && !PyErr_Occurred() && method == self->st->methods[PYB_M_HEAD])
          fn = PyDict_GetItemWithError(methods, self->st->str_get);
      } else if (fn == NULL) {
        return NULL;
      }
      Py_XDECREF(method);
      if (fn != NULL) {
        Py_INCREF(fn); /* the handler could change the routes while it runs */
        pyb_note_callee(fn);
        PyObject *r = PyObject_CallOneArg(fn, req);
        Py_DECREF(fn);
        return r;
      }
    }
    if (PyErr_Occurred())
      return NULL;
  }
  pyb_note_callee(self->handler);
  return PyObject_CallOneArg(self->handler, req);
}

/* The coarse monotonic clock in ms (a kernel tick, 1-4 ms; ~10 ns a read), as
 * the engine times handler calls. */
static uint64_t coarse_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The end of a handler call: the callables noted for on_slow are let go at
 * once unless the call was slow (then on_slow, right after, lets them go),
 * so that no callback outlives its call here (a WebSocket's bound method
 * would keep the WebSocket alive). A call under half the threshold is
 * practically never one the engine finds slow (it counts from the end of
 * the previous call or the turn's start, microseconds earlier); if it were,
 * the warning would name the engine's handler instead of the route's. */
static void keep_names_if_slow(ring_state *rs, unsigned slow_ms, uint64_t start) {
  if (!slow_ms || coarse_ms() - start < slow_ms / 2) {
    Py_CLEAR(rs->callee);
    Py_CLEAR(rs->longest_fn);
  }
}

void pyb_note_callee(PyObject *fn) {
  ring_state *rs = current_ring;
  if (rs != NULL)
    Py_XSETREF(rs->callee, Py_NewRef(fn));
}

/* The end of a batch (in_batch already 0, the GIL still held): call what
 * after_batch() put off, in order. A callable that raises is logged. */
static void run_after_batch(ring_state *rs) {
  PyObject *after = rs->after;
  if (after == NULL)
    return;
  rs->after = NULL;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(after); i++) {
    PyObject *r = PyObject_CallNoArgs(PyList_GET_ITEM(after, i));
    if (r == NULL)
      PyErr_WriteUnraisable(PyList_GET_ITEM(after, i));
    Py_XDECREF(r);
  }
  Py_DECREF(after);
}

PyObject *pyb_after_batch(PyObject *module, PyObject *fn) {
  (void)module;
  ring_state *rs = current_ring;
  if (rs == NULL || !rs->in_batch)
    return PyObject_CallNoArgs(fn); /* not in a batch: now */
  if (rs->after == NULL && (rs->after = PyList_New(0)) == NULL)
    return NULL;
  if (PyList_Append(rs->after, fn) < 0)
    return NULL;
  Py_RETURN_NONE;
}

/* Hand coroutines to the asyncio side in one call; on failure, close them
 * and answer their requests with 500. `pending` is a list of
 * (request, coroutine) tuples; stolen. */
static void schedule_coroutines(EngineObject *self, PyObject *pending) {
  pyb_state *st = self->st;
  PyObject *r = NULL;
  if (self->scheduler != NULL)
    r = PyObject_CallOneArg(self->scheduler, pending);
  else
    PyErr_SetString(PyExc_RuntimeError,
                    "a handler returned a coroutine but this engine has no async_scheduler");
  if (r == NULL) {
    pyb_log_exception(st, "could not schedule async handlers", NULL);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pending); i++) {
      PyObject *pair = PyList_GET_ITEM(pending, i);
      PyObject *c = PyObject_CallMethod(PyTuple_GET_ITEM(pair, 1), "close", NULL);
      if (c == NULL)
        PyErr_Clear();
      Py_XDECREF(c);
      pyb_request_answer_500(PyTuple_GET_ITEM(pair, 0), 1); /* the pair holds it */
    }
  }
  Py_XDECREF(r);
  Py_DECREF(pending);
}

static void run_batch(EngineObject *self, pmu_request_t *const *requests, size_t count) {
  pyb_state *st = self->st;
  PyObject *pending = NULL; /* list of (request, coroutine) */
  pyb_drain_released(st);
  /* Which request's call took longest, should the engine find the batch slow
   * (on_slow): with one request it is that one, with several one coarse clock
   * read per request says. */
  ring_state *rs = current_ring;
  unsigned slow_ms = rs != NULL ? self->config.slow_handler_ms : 0;
  int timed = slow_ms && count > 1;
  uint64_t start = slow_ms ? coarse_ms() : 0, mark = start, longest = 0;
  if (rs != NULL) {
    Py_CLEAR(rs->callee);
    Py_CLEAR(rs->longest_fn);
    rs->longest_index = 0;
  }
  for (size_t i = 0; i < count; i++) {
    PyObject *req =
        pyb_request_new(st, requests[i], self->unix_path_str, self->config.output_high_water);
    if (req == NULL) {
      pyb_log_exception(st, "could not wrap a request; sent 500", NULL);
      pmu_respond(requests[i], &pyb_response_500);
      continue;
    }
    PyObject *result = self->handler ? route_and_call(self, req) : NULL;
    if (self->handler == NULL)
      PyErr_SetString(PyExc_RuntimeError, "the engine has no handler");
    if (result == NULL) {
      pyb_log_exception(st, "handler raised; sent 500", req);
      pyb_request_answer_500(req, 1);
    } else if (result == Py_None) {
      /* Answered already through reply(), or to be answered later. If
       * nobody kept the request, dropping it below answers 500. */
    } else if (PyCoro_CheckExact(result)) {
      PyObject *pair = PyTuple_Pack(2, req, result);
      if (pair != NULL && pending == NULL)
        pending = PyList_New(0);
      if (pair == NULL || pending == NULL || PyList_Append(pending, pair) < 0) {
        pyb_log_exception(st, "could not queue an async handler; sent 500", req);
        pyb_request_answer_500(req, 1);
      }
      Py_XDECREF(pair);
    } else if (!pyb_request_is_live(req)) {
      pyb_log_warning(st,
                      "%R: the handler replied and also returned %.100s; the returned "
                      "value was ignored",
                      req, Py_TYPE(result)->tp_name);
    } else if (pyb_request_answer(req, result, 1) < 0) {
      pyb_log_exception(st, "could not send the handler's response; sent 500", req);
      pyb_request_answer_500(req, 1);
    }
    Py_XDECREF(result);
    Py_DECREF(req);
    if (timed) {
      uint64_t now = coarse_ms();
      if (now - mark > longest && rs->callee != NULL) {
        longest = now - mark;
        rs->longest_index = i;
        Py_XSETREF(rs->longest_fn, Py_NewRef(rs->callee));
      }
      mark = now;
    }
  }
  if (pending != NULL)
    schedule_coroutines(self, pending);
  if (rs != NULL)
    keep_names_if_slow(rs, slow_ms, start);
}

/*
 * A handler with a pool (the WSGI adapter's): the requests go to its queue
 * without the GIL. Those whose body is streamed are wrapped now, under the
 * GIL, since their pieces follow (the handler queues them itself). Returns
 * the number left for the GIL path, moved to the front of `rest`.
 */
static size_t to_pool(EngineObject *self, pmu_request_t *const *requests, size_t count,
                      pmu_request_t **rest) {
  pyb_pool_push(self->pool, requests, count);
  size_t n = 0;
  for (size_t i = 0; i < count; i++)
    if (requests[i]->body_streaming)
      rest[n++] = requests[i];
  return n;
}

static void on_batch(void *data, pmu_request_t *const *requests, size_t count) {
  EngineObject *self = data;
  ring_state *rs = current_ring;
  pmu_request_t **rest = NULL;
  if (self->pool != NULL) {
    size_t streamed = 0;
    for (size_t i = 0; i < count; i++)
      streamed += requests[i]->body_streaming;
    if (streamed == 0) {
      pyb_pool_push(self->pool, requests, count);
      return;
    }
    rest = malloc(streamed * sizeof *rest);
    if (rest != NULL) {
      count = to_pool(self, requests, count, rest);
      requests = rest;
    } /* else: all go through the handler, which queues them itself */
  }
  if (rs != NULL && rs->tstate != NULL) {
    PyEval_RestoreThread(rs->tstate);
    rs->in_batch = 1;
    run_batch(self, requests, count);
    rs->in_batch = 0;
    run_after_batch(rs);
    PyEval_SaveThread();
  } else {
    /* No thread state kept for this thread (the engine called us from a
     * thread it did not announce): pay for a temporary one. */
    PyGILState_STATE g = PyGILState_Ensure();
    run_batch(self, requests, count);
    PyGILState_Release(g);
  }
  free(rest);
}

/* config.ws_handler: the WebSocket events of one pass, under one GIL
 * acquisition, as on_batch does for requests. */
static void on_ws_events(void *data, const pmu_ws_event_t *events, size_t count) {
  EngineObject *self = data;
  pyb_gil g;
  pyb_ring_gil_enter(&g); /* the ring's kept thread state, as on_batch */
  ring_state *rs = current_ring;
  unsigned slow_ms = rs != NULL ? self->config.slow_handler_ms : 0;
  uint64_t start = slow_ms ? coarse_ms() : 0;
  if (rs != NULL)
    Py_CLEAR(rs->callee); /* a slow call names the last callback called */
  pyb_ws_dispatch(self->st, events, count);
  if (rs != NULL)
    keep_names_if_slow(rs, slow_ms, start);
  pyb_ring_gil_leave(&g);
}

/* config.conn_handler: the connection events of one pass, under one GIL
 * acquisition, as on_ws_events. */
static void on_conn_events(void *data, const pmu_conn_event_t *events, size_t count) {
  EngineObject *self = data;
  pyb_gil g;
  pyb_ring_gil_enter(&g);
  pyb_conn_dispatch(self->st, self->conn_handler, self->unix_path_str, events, count);
  pyb_ring_gil_leave(&g);
}

/* A thread state of the engine's interpreter (not PyGILState's, which
 * only knows the main interpreter), kept for the thread's whole life. */
static void on_thread_start(void *data, unsigned index) {
  EngineObject *self = data;
  if (index >= self->nrings)
    return;
  ring_state *rs = &self->rings[index];
  if (self->driven) {
    /* The driving thread's own state, lent to each step (engine_step). */
    rs->tstate = self->driver_tstate;
    rs->thread = pthread_self();
    rs->borrowed = 1;
    return;
  }
  PyThreadState *ts = PyThreadState_New(self->interp);
  if (ts == NULL)
    return; /* on_batch falls back to PyGILState */
  PyEval_RestoreThread(ts);
  rs->tstate = ts;
  rs->thread = pthread_self();
  current_ring = rs;
  PyEval_SaveThread();
}

static void on_thread_stop(void *data, unsigned index) {
  ring_state *rs = current_ring;
  if (rs == NULL || rs->tstate == NULL)
    return;
  PyThreadState *ts = rs->tstate;
  PyEval_RestoreThread(ts);
  pyb_drain_released(((EngineObject *)data)->st);
  if (rs->cut_at_stop) {
    /* What the client saw: its connection closed, no answer. One line for
     * the thread, naming the first. */
    pyb_log_warning(((EngineObject *)data)->st,
                    "%s: the request was kept and never answered before shutdown (%lu such on "
                    "ring thread %u): the stop closed its connection after shutdown_timeout_ms "
                    "(%u ms) and the client got no answer; answer kept requests before the "
                    "server stops, or raise shutdown_timeout_ms",
                    rs->first_cut, rs->cut_at_stop, (unsigned)(rs - ((EngineObject *)data)->rings),
                    ((EngineObject *)data)->config.shutdown_timeout_ms);
    rs->cut_at_stop = 0;
  }
  Py_CLEAR(rs->callee);
  Py_CLEAR(rs->longest_fn);
  Py_CLEAR(rs->after); /* run at each batch's end: empty here */
  rs->tstate = NULL;
  current_ring = NULL;
  if (rs->borrowed) {
    PyEval_SaveThread(); /* the driving thread's: it goes on */
    return;
  }
  PyThreadState_Clear(ts);
  PyThreadState_DeleteCurrent(); /* and drops the GIL */
}

void pyb_ring_gil_enter(pyb_gil *g) {
  ring_state *rs = current_ring;
  if (rs != NULL && rs->in_batch) {
    g->how = 0; /* a callback from inside a batch: the GIL is ours already */
  } else if (rs != NULL && rs->tstate != NULL) {
    g->how = 1;
    PyEval_RestoreThread(rs->tstate);
    rs->in_batch = 1;
  } else {
    g->how = 2;
    g->gstate = PyGILState_Ensure();
  }
}

void pyb_ring_gil_leave(pyb_gil *g) {
  if (g->how == 1) {
    current_ring->in_batch = 0;
    run_after_batch(current_ring);
    PyEval_SaveThread();
  } else if (g->how == 2) {
    PyGILState_Release(g->gstate);
  }
}

int pyb_in_ring_thread(void) { return current_ring != NULL || driving; }

/* The engine's log lines go to the "pymongoose_uring" logger at their level. */
static void on_log(void *data, int level, const char *msg) {
  EngineObject *self = data;
  pyb_gil g;
  pyb_ring_gil_enter(&g);
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyObject *r = PyObject_CallMethod(self->st->logger, "log", "iss", level, "%s", msg);
  Py_XDECREF(r);
  if (PyErr_Occurred())
    PyErr_Clear();
  PyErr_Restore(type, value, tb);
  pyb_ring_gil_leave(&g);
}

/* "module.qualname" of a callable (of its type for an instance without
 * __qualname__). A new reference, or NULL with an exception set. */
static PyObject *callable_name(PyObject *fn) {
  PyObject *qual = PyObject_GetAttrString(fn, "__qualname__");
  PyObject *mod = qual != NULL ? PyObject_GetAttrString(fn, "__module__") : NULL;
  if (qual == NULL || mod == NULL) {
    PyErr_Clear();
    Py_XDECREF(qual);
    qual = PyObject_GetAttrString((PyObject *)Py_TYPE(fn), "__qualname__");
    mod = qual != NULL ? PyObject_GetAttrString((PyObject *)Py_TYPE(fn), "__module__") : NULL;
    if (qual == NULL || mod == NULL) {
      Py_XDECREF(qual);
      Py_XDECREF(mod);
      return NULL;
    }
  }
  PyObject *name = mod != Py_None ? PyUnicode_FromFormat("%S.%S", mod, qual) : PyObject_Str(qual);
  Py_DECREF(qual);
  Py_DECREF(mod);
  return name;
}

/*
 * config.on_slow: a handler call held this ring thread beyond slow_handler_ms
 * (the engine rate-limits these to one per thread per 10 s). The WARNING on
 * the package's logger names the Python callable that ran longest (for a
 * batch of requests, the route's or connection's handler, noted as it was
 * called) and its request, as uvicorn users find the blocking endpoint.
 */
static void on_slow(void *data, const pmu_slow_t *slow) {
  EngineObject *self = data;
  ring_state *rs = current_ring;
  if (rs != NULL && (self->rings == NULL || rs < self->rings || rs >= self->rings + self->nrings))
    rs = NULL; /* another engine's thread: not ours to read */
  pyb_gil g;
  pyb_ring_gil_enter(&g);
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyObject *fn = NULL; /* borrowed */
  const pmu_request_t *req = NULL;
  const char *what = "the WebSocket handlers";
  if (slow->kind == PMU_SLOW_REQUESTS && slow->count > 0) {
    size_t index = 0;
    if (rs != NULL && slow->count > 1 && rs->longest_fn != NULL &&
        rs->longest_index < slow->count) {
      fn = rs->longest_fn;
      index = rs->longest_index;
    } else if (rs != NULL && slow->count == 1 && rs->callee != NULL) {
      fn = rs->callee;
    } else {
      fn = self->handler;
    }
    req = slow->requests[index];
  } else if (slow->kind == PMU_SLOW_CONN_EVENTS) {
    fn = self->conn_handler;
  } else if (rs != NULL) {
    fn = rs->callee; /* the WebSocket callback called last (NULL: none) */
  }
  PyObject *name = fn != NULL ? callable_name(fn) : PyUnicode_FromString(what);
  PyObject *words = NULL;
  if (req != NULL) {
    PyObject *m = PyUnicode_DecodeLatin1(req->method, (Py_ssize_t)req->method_len, NULL);
    PyObject *p = PyUnicode_DecodeUTF8(
        req->path, (Py_ssize_t)(req->path_len > 200 ? 200 : req->path_len), "surrogateescape");
    if (m != NULL && p != NULL)
      words = PyUnicode_FromFormat(" on %U %U", m, p);
    Py_XDECREF(m);
    Py_XDECREF(p);
  } else {
    words = PyUnicode_FromString("");
  }
  PyObject *more =
      slow->unreported
          ? PyUnicode_FromFormat(" (%llu more slow calls on this thread since the last report)",
                                 (unsigned long long)slow->unreported)
          : PyUnicode_FromString("");
  if (name != NULL && more != NULL && words != NULL) {
    PyObject *msg = PyUnicode_FromFormat(
        "slow handler: %U held ring thread %u for %llu ms%U (slow_handler_ms=%llu): every "
        "connection on this ring waited; run blocking work in a thread (threads= / WSGI pool / "
        "ASGI)%U",
        name, slow->thread, (unsigned long long)slow->held_ms, words,
        (unsigned long long)slow->threshold, more);
    if (msg != NULL) {
      PyObject *r = PyObject_CallMethod(self->st->logger, "warning", "sO", "%s", msg);
      Py_XDECREF(r);
      Py_DECREF(msg);
    }
  }
  Py_XDECREF(name);
  Py_XDECREF(words);
  Py_XDECREF(more);
  if (rs != NULL) { /* named: let them go now (see keep_names_if_slow) */
    Py_CLEAR(rs->callee);
    Py_CLEAR(rs->longest_fn);
  }
  if (PyErr_Occurred())
    PyErr_Clear();
  PyErr_Restore(type, value, tb);
  pyb_ring_gil_leave(&g);
}

static void on_body(void *data, pmu_request_t *request, const void *piece, size_t len, int last) {
  pyb_stream_on_body(request, piece, len, last);
}

static void on_disconnect(void *data, pmu_request_t *request) {
  ring_state *rs = current_ring;
  if (rs != NULL && pmu_request_gone(request) == 2 && rs->cut_at_stop++ == 0) {
    int n = snprintf(rs->first_cut, sizeof rs->first_cut, "%.*s %.*s", (int)request->method_len,
                     request->method, (int)(request->path_len > 160 ? 160 : request->path_len),
                     request->path);
    for (int i = 0; i < n && i < (int)sizeof rs->first_cut - 1; i++)
      if ((unsigned char)rs->first_cut[i] >= 0x80 || (unsigned char)rs->first_cut[i] < 0x20)
        rs->first_cut[i] = '?'; /* ASCII for the log line */
  }
  pyb_stream_on_disconnect(request);
}

static void on_drain(void *data, pmu_request_t *request) { pyb_stream_on_drain(request); }

static void on_peer_eof(void *data, pmu_request_t *request) { pyb_stream_on_peer_eof(request); }

static int in_ring_thread(EngineObject *self) {
  ring_state *rs = current_ring;
  if (self->driven && self->running && self->rings != NULL && self->rings[0].tstate != NULL &&
      pthread_equal(self->rings[0].thread, pthread_self()))
    return 1; /* the driving thread, between steps too */
  return rs != NULL && self->rings != NULL && rs >= self->rings && rs < self->rings + self->nrings;
}

/* ---- the Engine type ---- */

static PyObject *engine_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  EngineObject *self = (EngineObject *)type->tp_alloc(type, 0);
  if (self == NULL)
    return NULL;
  self->st = pyb_state_from_type(type);
  pmu_config_init(&self->config);
  return (PyObject *)self;
}

/* Index of a string field's owned copy: its place among the STR knobs of the
 * table (each string knob has a slot of its own). */
#define NOWNED PYB_STR_KNOBS
static int owned_index(const field *f) {
  int k = 0;
  for (size_t i = 0; i < NFIELDS && &fields[i] != f; i++)
    k += fields[i].type == F_STR;
  return k;
}

/* ssl_sni_certs: a sequence of (certfile, keyfile[, password]) (keyfile and
 * password may be None) as one PyMem block, the array first, then the paths
 * it points to. *out NULL and *count 0 for None or an empty sequence.
 * Returns 0, or -1 with an exception. */
static int sni_certs_parse(PyObject *value, pmu_tls_cert_t **out, size_t *count) {
  *out = NULL;
  *count = 0;
  if (value == Py_None)
    return 0;
  PyObject *items = PySequence_Fast(value, "ssl_sni_certs must be a sequence of "
                                           "(certfile, keyfile[, password]) tuples");
  if (items == NULL)
    return -1;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
  PyObject **parts = n ? PyMem_Calloc((size_t)n * 3, sizeof(PyObject *)) : NULL;
  size_t total = (size_t)n * sizeof(pmu_tls_cert_t);
  int rc = -1;
  if (n && parts == NULL) {
    PyErr_NoMemory();
    goto done;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *entry = PySequence_Fast_GET_ITEM(items, i); /* borrowed */
    Py_ssize_t k = PyTuple_Check(entry) || PyList_Check(entry) ? PySequence_Size(entry) : -1;
    if (k < 2 || k > 3) {
      PyErr_Format(PyExc_TypeError,
                   "ssl_sni_certs[%zd] must be (certfile, keyfile) or (certfile, keyfile, "
                   "password)",
                   i);
      goto done;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
      PyObject *v = PySequence_GetItem(entry, j);
      if (v == NULL)
        goto done;
      if (v == Py_None && j > 0) { /* no key file (in certfile) or no password */
        Py_DECREF(v);
        continue;
      }
      PyObject *bytes = NULL;
      int ok = PyUnicode_FSConverter(v, &bytes);
      Py_DECREF(v);
      if (!ok)
        goto done;
      parts[i * 3 + j] = bytes;
      total += (size_t)PyBytes_GET_SIZE(bytes) + 1;
    }
  }
  if (n == 0) {
    rc = 0;
    goto done;
  }
  char *mem = PyMem_Malloc(total);
  if (mem == NULL) {
    PyErr_NoMemory();
    goto done;
  }
  pmu_tls_cert_t *certs = (pmu_tls_cert_t *)mem;
  char *p = mem + (size_t)n * sizeof(pmu_tls_cert_t);
  for (Py_ssize_t i = 0; i < n; i++) {
    const char **slots[3] = {&certs[i].certfile, &certs[i].keyfile, &certs[i].key_password};
    for (int j = 0; j < 3; j++) {
      PyObject *bytes = parts[i * 3 + j];
      if (bytes == NULL) {
        *slots[j] = NULL;
        continue;
      }
      size_t len = (size_t)PyBytes_GET_SIZE(bytes);
      memcpy(p, PyBytes_AS_STRING(bytes), len + 1);
      *slots[j] = p;
      p += len + 1;
    }
  }
  *out = certs;
  *count = (size_t)n;
  rc = 0;
done:
  for (Py_ssize_t i = 0; parts != NULL && i < n * 3; i++)
    Py_XDECREF(parts[i]);
  PyMem_Free(parts);
  Py_DECREF(items);
  return rc;
}

static int engine_init(PyObject *op, PyObject *args, PyObject *kwargs) {
  EngineObject *self = ENGINE(op);
  if (self->server != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "Engine.__init__ called on a started engine");
    return -1;
  }
  PyObject *handler;
  if (!PyArg_ParseTuple(args, "O:Engine", &handler))
    return -1;
  if (handler != Py_None && !PyCallable_Check(handler)) {
    PyErr_SetString(PyExc_TypeError, "handler must be callable");
    return -1;
  }
  PyObject *routes = NULL, *scheduler = NULL, *statics = NULL, *conn_handler = NULL;
  pmu_static_t *static_array = NULL;
  size_t static_count = 0;
  pmu_tls_cert_t *sni_certs = NULL;
  size_t sni_count = 0;
  int sni_given = 0;
  pmu_config_t c = self->config;
  char *fresh[NOWNED] = {NULL}; /* strings copied by this call */
  if (kwargs != NULL) {
    Py_ssize_t pos = 0;
    PyObject *key, *value; /* borrowed */
    while (PyDict_Next(kwargs, &pos, &key, &value)) {
      const char *name = PyUnicode_AsUTF8(key);
      if (name == NULL)
        goto fail;
      if (strcmp(name, "routes") == 0) {
        if (value != Py_None && !PyDict_Check(value)) {
          PyErr_SetString(PyExc_TypeError, "routes must be a dict or None");
          goto fail;
        }
        routes = value == Py_None ? NULL : value;
        continue;
      }
      if (strcmp(name, "statics") == 0) {
        /* Mounts the engine answers itself: their pmu_static_t point into
         * the StaticMount objects, which this engine keeps. */
        Py_CLEAR(statics);
        PyMem_Free(static_array);
        static_array = NULL;
        static_count = 0;
        if (value == Py_None)
          continue;
        statics = PySequence_Tuple(value);
        if (statics == NULL) {
          PyErr_SetString(PyExc_TypeError, "statics must be a sequence of StaticMount");
          goto fail;
        }
        static_count = (size_t)PyTuple_GET_SIZE(statics);
        static_array = PyMem_Calloc(static_count ? static_count : 1, sizeof(pmu_static_t));
        if (static_array == NULL) {
          PyErr_NoMemory();
          goto fail;
        }
        for (size_t k = 0; k < static_count; k++) {
          const pmu_static_t *m =
              pyb_static_mount(self->st, PyTuple_GET_ITEM(statics, (Py_ssize_t)k));
          if (m == NULL)
            goto fail;
          static_array[k] = *m;
        }
        continue;
      }
      if (strcmp(name, "ssl_sni_certs") == 0) {
        PyMem_Free(sni_certs);
        if (sni_certs_parse(value, &sni_certs, &sni_count) < 0)
          goto fail;
        sni_given = 1;
        continue;
      }
      if (strcmp(name, "connection_handler") == 0) {
        if (value != Py_None && !PyCallable_Check(value)) {
          PyErr_SetString(PyExc_TypeError, "connection_handler must be callable or None");
          goto fail;
        }
        conn_handler = value == Py_None ? NULL : value;
        continue;
      }
      if (strcmp(name, "async_scheduler") == 0) {
        if (value != Py_None && !PyCallable_Check(value)) {
          PyErr_SetString(PyExc_TypeError, "async_scheduler must be callable or None");
          goto fail;
        }
        scheduler = value == Py_None ? NULL : value;
        continue;
      }
      size_t i;
      for (i = 0; i < NFIELDS; i++)
        if (strcmp(name, knob_name(&fields[i])) == 0)
          break;
      if (i == NFIELDS) {
        PyErr_Format(PyExc_TypeError, "Engine() got an unknown option '%s'", name);
        goto fail;
      }
      char **owned = fields[i].type == F_STR ? &fresh[owned_index(&fields[i])] : NULL;
      if (field_set(&c, &fields[i], value, owned) < 0)
        goto fail;
    }
  }
  if (c.threads == 0) {
    PyErr_SetString(PyExc_ValueError, "threads must be at least 1");
    goto fail;
  }
  if (c.raw && conn_handler == NULL) {
    PyErr_SetString(PyExc_ValueError, "raw=True needs a connection_handler (it gets the bytes)");
    goto fail;
  }
  if (handler == Py_None && !c.raw) {
    PyErr_SetString(PyExc_TypeError, "handler must be callable (None only with raw=True)");
    goto fail;
  }
  /* Commit: new copies replace old ones, which config no longer uses. */
  for (int i = 0; i < NOWNED; i++)
    if (fresh[i] != NULL) {
      PyMem_Free(self->owned[i]);
      self->owned[i] = fresh[i];
    }
  if (statics != NULL || (kwargs != NULL && PyDict_GetItemString(kwargs, "statics") != NULL)) {
    Py_XSETREF(self->statics, statics); /* ours now */
    statics = NULL;
    PyMem_Free(self->static_array);
    self->static_array = static_array;
    static_array = NULL;
    c.statics = static_count ? self->static_array : NULL;
    c.static_count = static_count;
  }
  if (sni_given) {
    PyMem_Free(self->sni_certs);
    self->sni_certs = sni_certs;
    sni_certs = NULL;
    c.ssl_sni_certs = self->sni_certs;
    c.ssl_sni_cert_count = sni_count;
  }
  self->config = c;
  Py_CLEAR(self->unix_path_str);
  if (c.unix_path != NULL && (self->unix_path_str = PyUnicode_DecodeFSDefault(c.unix_path)) == NULL)
    return -1;
  Py_XSETREF(self->handler, handler == Py_None ? NULL : Py_NewRef(handler));
  Py_XSETREF(self->routes, Py_XNewRef(routes));
  Py_XSETREF(self->scheduler, Py_XNewRef(scheduler));
  Py_XSETREF(self->conn_handler, Py_XNewRef(conn_handler));
  self->initialized = 1;
  return 0;
fail:
  for (int i = 0; i < NOWNED; i++)
    PyMem_Free(fresh[i]);
  Py_XDECREF(statics);
  PyMem_Free(static_array);
  PyMem_Free(sni_certs);
  return -1;
}

/* Every worker has exited: forget the rings and drop the self-reference.
 * The caller holds its own reference to self. */
static void engine_finished(EngineObject *self) {
  self->running = 0;
  if (self->holds_self) {
    self->holds_self = 0;
    Py_DECREF(self);
  }
}

PyDoc_STRVAR(start_doc, "start()\n\nBind the listener(s) and start the worker threads. Raises\n"
                        "Error (or UnavailableError) naming the cause on failure.");

static PyObject *start_server(EngineObject *self, int driven);

static PyObject *engine_start(PyObject *op, PyObject *unused) {
  return start_server(ENGINE(op), 0);
}

PyDoc_STRVAR(
    start_driven_doc,
    "start_driven(wake=None, handler=None)\n\nBind the listener(s) and set up the one ring "
    "(threads must be 1)\non this thread, which then runs it: call step() whenever fileno() is\n"
    "readable or the time step() asked for has come (an event loop's reader\n"
    "and timer), until step() returns None. Handlers run inside step(), on\n"
    "this thread. Answers given on it between steps wake fileno(), or, with\n"
    "wake, call wake() once until the next step: it must see that step() runs\n"
    "soon (loop.call_soon), and saves a kernel wake-up per batch. With handler,\n"
    "it replaces the engine's (which had to be given, routes or not): one that\n"
    "only works on this thread (the ASGI adapter's ASGIStarter).");

static PyObject *engine_start_driven(PyObject *op, PyObject *args) {
  PyObject *wake = Py_None, *handler = Py_None;
  if (!PyArg_ParseTuple(args, "|OO:start_driven", &wake, &handler))
    return NULL;
  if (wake != Py_None && !PyCallable_Check(wake)) {
    PyErr_SetString(PyExc_TypeError, "start_driven(wake): wake must be callable or None");
    return NULL;
  }
  EngineObject *self = ENGINE(op);
  if (handler != Py_None && (!PyCallable_Check(handler) || self->handler == NULL)) {
    PyErr_SetString(PyExc_TypeError,
                    self->handler == NULL
                        ? "start_driven(wake, handler): this engine has no handler to replace"
                        : "start_driven(wake, handler): handler must be callable or None");
    return NULL;
  }
  Py_XSETREF(self->drive_wake, wake != Py_None ? Py_NewRef(wake) : NULL);
  PyObject *before = NULL;
  if (handler != Py_None) {
    before = self->handler;
    self->handler = Py_NewRef(handler);
  }
  PyObject *rc = start_server(self, 1);
  if (before != NULL) {
    if (rc == NULL) /* not started: the engine keeps its own handler */
      Py_SETREF(self->handler, before);
    else
      Py_DECREF(before);
  }
  return rc;
}

/* config.on_self_wake: an answer (or a stop) given on the driving thread
 * between steps; the wake callable must see that step() runs soon. */
static void on_self_wake(void *data) {
  EngineObject *self = data;
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyObject *r = PyObject_CallNoArgs(self->drive_wake);
  if (r == NULL)
    PyErr_WriteUnraisable(self->drive_wake);
  Py_XDECREF(r);
  PyErr_Restore(type, value, tb);
  PyGILState_Release(g);
}

/* config.busy: requests wait in the pool's queue (a ring thread, no GIL). */
static int pool_busy(void *data) { return pyb_pool_behind(ENGINE(data)->pool); }

static PyObject *start_server(EngineObject *self, int driven) {
  if (!self->initialized) {
    PyErr_SetString(PyExc_RuntimeError, "Engine.__init__ was not called");
    return NULL;
  }
  if (self->server != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "this engine was already started; make a new one");
    return NULL;
  }
  if (driven && self->config.threads != 1) {
    PyErr_Format(PyExc_ValueError,
                 "a driven engine runs one ring, on the thread that starts it: threads must "
                 "be 1 (it is %u)",
                 self->config.threads);
    return NULL;
  }
  self->interp = PyInterpreterState_Get();
  self->nrings = self->config.threads;
  self->rings = PyMem_Calloc(self->nrings, sizeof(ring_state));
  if (self->rings == NULL)
    return PyErr_NoMemory();

  /* A handler with a pool (wsgi.py's WSGIHandler._pmu_pool(): it starts its
   * threads and returns its WSGIPool, or None when the app may run on the
   * ring) gets the requests through that queue, without the GIL. */
  Py_CLEAR(self->pool);
  if (self->handler != NULL && self->routes == NULL) {
    PyObject *pool = PyObject_HasAttrString(self->handler, "_pmu_pool")
                         ? PyObject_CallMethod(self->handler, "_pmu_pool", NULL)
                         : Py_NewRef(Py_None);
    if (pool == NULL) {
      PyMem_Free(self->rings);
      self->rings = NULL;
      return NULL;
    }
    if (pyb_pool_check(self->st, pool)) {
      pyb_pool_bind(pool, self->unix_path_str, self->config.output_high_water);
      self->pool = pool;
    } else {
      Py_DECREF(pool);
    }
  }
  pmu_config_t c = self->config;
  c.handler = on_batch;
  c.handler_data = self;
  c.on_thread_start = on_thread_start;
  c.on_thread_stop = on_thread_stop;
  c.on_disconnect = on_disconnect;
  c.on_drain = on_drain;
  c.on_peer_eof = on_peer_eof;
  c.ws_handler = on_ws_events;
  c.conn_handler = self->conn_handler ? on_conn_events : NULL;
  c.log = on_log;
  c.on_slow = on_slow;
  c.on_body = c.body_stream_threshold > 0 ? on_body : NULL;
  c.driven = driven;
  c.on_self_wake = driven && self->drive_wake != NULL ? on_self_wake : NULL;
  c.busy = self->pool != NULL ? pool_busy : NULL; /* rings linger while the pool is behind */
  self->driven = driven;
  self->driver_tstate = driven ? PyThreadState_Get() : NULL;

  /* Worker threads inherit this thread's signal mask: block everything so
   * SIGINT and SIGTERM reach Python's main thread, never a ring. */
  sigset_t all, old;
  sigfillset(&all);
  Py_INCREF(self);
  self->holds_self = 1;
  self->running = 1;
  pmu_server_t *server = NULL;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  pthread_sigmask(SIG_BLOCK, &all, &old);
  rc = pmu_server_start(&c, &server);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  Py_END_ALLOW_THREADS
  if (rc < 0) {
    const char *why = server ? pmu_server_error(server) : NULL;
    pyb_raise_errno(self->st, rc, why);
    if (server != NULL) {
      Py_BEGIN_ALLOW_THREADS
      pmu_server_destroy(server);
      Py_END_ALLOW_THREADS
    }
    PyMem_Free(self->rings);
    self->rings = NULL;
    self->nrings = 0;
    self->driven = 0;
    engine_finished(self);
    return NULL;
  }
  self->server = server;
  if (driven)
    driving++;
  Py_RETURN_NONE;
}

PyDoc_STRVAR(step_doc,
             "step() -> int or None\n\nOne turn of a driven engine's ring, without waiting "
             "(on the thread\nthat called start_driven()): completions reaped, handlers run, "
             "answers\nsubmitted. Returns when to step again even if fileno() stays quiet, "
             "in\nms (0: at once, -1: only when it becomes readable), or None once the\nserver "
             "has stopped (after stop() and its graceful stop): wait() then\nreturns at once.");

static PyObject *engine_step(PyObject *op, PyObject *unused) {
  EngineObject *self = ENGINE(op);
  if (!self->driven || self->server == NULL) {
    PyErr_SetString(PyExc_RuntimeError,
                    "step() runs a driven engine: start it with start_driven()");
    return NULL;
  }
  ring_state *rs = &self->rings[0];
  if (rs->tstate == NULL) /* ended: its last step returned None */
    Py_RETURN_NONE;
  if (!pthread_equal(rs->thread, pthread_self())) {
    PyErr_SetString(PyExc_RuntimeError,
                    "step() runs on the thread that called start_driven(), which runs the ring");
    return NULL;
  }
  if (current_ring == rs) {
    PyErr_SetString(PyExc_RuntimeError, "step() called from inside a step (a handler)");
    return NULL;
  }
  ring_state *outer = current_ring;
  current_ring = rs;
  int next = -1, rc;
  Py_BEGIN_ALLOW_THREADS
  rc = pmu_server_step(self->server, &next);
  Py_END_ALLOW_THREADS
  current_ring = outer;
  if (rc < 0)
    return pyb_raise_errno(self->st, rc, NULL);
  if (rc == 0) {
    driving--; /* on_thread_stop let the ring go: nothing here waits for it now */
    Py_RETURN_NONE;
  }
  return PyLong_FromLong(next);
}

PyDoc_STRVAR(fileno_doc, "fileno() -> int\n\nA driven engine's ring descriptor: readable "
                         "while completions wait\n(watch it with an event loop's add_reader); "
                         "-1 when not driven or ended.");

static PyObject *engine_fileno(PyObject *op, PyObject *unused) {
  EngineObject *self = ENGINE(op);
  if (self->server == NULL || !self->driven || self->rings[0].tstate == NULL)
    return PyLong_FromLong(-1);
  return PyLong_FromLong(pmu_server_fd(self->server));
}

PyDoc_STRVAR(stop_doc, "stop()\n\nBegin a graceful stop: stop accepting, let in-flight requests\n"
                       "finish (up to shutdown_timeout_ms). Returns at once; any thread.");

static PyObject *engine_stop(PyObject *op, PyObject *unused) {
  EngineObject *self = ENGINE(op);
  if (self->server != NULL && self->running) {
    pmu_server_t *server = self->server;
    Py_BEGIN_ALLOW_THREADS
    pmu_server_stop(server);
    Py_END_ALLOW_THREADS
  }
  Py_RETURN_NONE;
}

/* Wait for the workers to exit, `timeout` seconds (< 0: forever), checking
 * for signals every slice. 1: exited, 0: timed out, -1: exception. */
static int wait_workers(EngineObject *self, double timeout) {
  if (self->server == NULL || !self->running)
    return 1;
  if (in_ring_thread(self)) {
    PyErr_SetString(PyExc_RuntimeError,
                    "cannot wait for the server from one of its own handlers (it would wait "
                    "for itself); call stop() alone");
    return -1;
  }
  double deadline = pyb_now() + timeout;
  pmu_server_t *server = self->server;
  for (;;) {
    int slice = 100;
    if (timeout >= 0) {
      double left = deadline - pyb_now();
      if (left <= 0)
        return 0;
      if (left * 1000 < slice)
        slice = (int)(left * 1000) + 1;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pmu_server_wait(server, slice);
    Py_END_ALLOW_THREADS
    if (rc == 0) {
      engine_finished(self);
      return 1;
    }
    if (rc != -ETIMEDOUT) {
      pyb_raise_errno(self->st, rc, NULL);
      return -1;
    }
    if (PyErr_CheckSignals() < 0)
      return -1;
  }
}

PyDoc_STRVAR(wait_doc, "wait(timeout=None) -> bool\n\nWait until every worker thread has "
                       "exited (after stop()); True if\nthey have, False on timeout. Signal "
                       "handlers run while waiting.");

static PyObject *engine_wait(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"timeout", NULL};
  PyObject *timeout_obj = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:wait", kwlist, &timeout_obj))
    return NULL;
  double timeout;
  if (pyb_timeout_arg(timeout_obj, &timeout) < 0)
    return NULL;
  int rc = wait_workers(ENGINE(op), timeout);
  if (rc < 0)
    return NULL;
  return PyBool_FromLong(rc);
}

static void destroy_server(EngineObject *self) {
  pmu_server_t *server = self->server;
  self->server = NULL;
  if (server != NULL) {
    Py_BEGIN_ALLOW_THREADS
    pmu_server_destroy(server);
    Py_END_ALLOW_THREADS
  }
  pyb_drain_released(self->st);
  PyMem_Free(self->rings);
  self->rings = NULL;
  self->nrings = 0;
}

PyDoc_STRVAR(close_doc, "close()\n\nStop gracefully, wait for the workers and release the "
                        "server. Idempotent.");

static PyObject *engine_close(PyObject *op, PyObject *unused) {
  EngineObject *self = ENGINE(op);
  if (self->server == NULL)
    Py_RETURN_NONE;
  if (self->running) {
    if (in_ring_thread(self)) {
      PyErr_SetString(PyExc_RuntimeError,
                      "cannot close the server from one of its own handlers; call stop()");
      return NULL;
    }
    pmu_server_t *server = self->server;
    Py_BEGIN_ALLOW_THREADS
    pmu_server_stop(server);
    Py_END_ALLOW_THREADS
    if (wait_workers(self, -1) < 0)
      return NULL;
  }
  destroy_server(self);
  Py_RETURN_NONE;
}

static int need_server(EngineObject *self) {
  if (self->server == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "the engine is not started (or already closed)");
    return -1;
  }
  return 0;
}

#define STAT(name)                                            \
  do {                                                        \
    PyObject *v = PyLong_FromUnsignedLongLong(s.name);        \
    if (v == NULL || PyDict_SetItemString(d, #name, v) < 0) { \
      Py_XDECREF(v);                                          \
      goto fail;                                              \
    }                                                         \
    Py_DECREF(v);                                             \
  } while (0)

/* {name: (kind, doc)} for every counter of stats(), from the engine's table:
 * kind is "counter", "gauge" or "array". */
PyObject *pyb_stats_counters(PyObject *module, PyObject *unused) {
  PyObject *d = PyDict_New();
  if (d == NULL)
    return NULL;
#define COUNTER_SCALAR(name, kind, doc) \
  COUNTER_ENTRY(#name, #kind[0] == 'G' ? "gauge" : "counter", doc)
#define COUNTER_ARRAY(name, size, doc) COUNTER_ENTRY(#name, "array", doc)
#define COUNTER_ENTRY(name, kind, doc)                       \
  do {                                                       \
    PyObject *v = Py_BuildValue("(ss)", kind, doc);          \
    if (v == NULL || PyDict_SetItemString(d, name, v) < 0) { \
      Py_XDECREF(v);                                         \
      Py_DECREF(d);                                          \
      return NULL;                                           \
    }                                                        \
    Py_DECREF(v);                                            \
  } while (0);
  PMU_STATS_FIELDS(COUNTER_SCALAR, COUNTER_ARRAY)
#undef COUNTER_SCALAR
#undef COUNTER_ARRAY
#undef COUNTER_ENTRY
  return d;
}

PyDoc_STRVAR(stats_doc, "stats(thread=-1) -> dict\n\nThe engine's counters for one worker "
                        "thread, or summed over all\n(-1). 'batch_hist'[i] counts batches of "
                        "2**i <= size < 2**(i+1).");

static PyObject *engine_stats(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"thread", NULL};
  int thread = -1;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|i:stats", kwlist, &thread))
    return NULL;
  EngineObject *self = ENGINE(op);
  if (need_server(self) < 0)
    return NULL;
  pmu_stats_t s;
  memset(&s, 0, sizeof s);
  int rc = pmu_server_stats(self->server, thread, &s);
  if (rc < 0) {
    PyErr_Format(PyExc_ValueError, "no worker thread %d", thread);
    return NULL;
  }
  PyObject *d = PyDict_New();
  if (d == NULL)
    return NULL;
#define STAT_SCALAR(name, kind, doc) STAT(name);
#define STAT_ARRAY(name, size, doc) /* below */
  PMU_STATS_FIELDS(STAT_SCALAR, STAT_ARRAY)
#undef STAT_SCALAR
#undef STAT_ARRAY
  {
    PyObject *hist = PyList_New(PMU_BATCH_BUCKETS);
    if (hist == NULL)
      goto fail;
    for (int i = 0; i < PMU_BATCH_BUCKETS; i++) {
      PyObject *v = PyLong_FromUnsignedLongLong(s.batch_hist[i]);
      if (v == NULL) {
        Py_DECREF(hist);
        goto fail;
      }
      PyList_SET_ITEM(hist, i, v);
    }
    int r = PyDict_SetItemString(d, "batch_hist", hist);
    Py_DECREF(hist);
    if (r < 0)
      goto fail;
  }
  {
    /* WebSocket closes by class of code (see PMU_WS_CLOSE_CLASSES). */
    PyObject *closes = PyList_New(PMU_WS_CLOSE_CLASSES);
    if (closes == NULL)
      goto fail;
    for (int i = 0; i < PMU_WS_CLOSE_CLASSES; i++) {
      PyObject *v = PyLong_FromUnsignedLongLong(s.ws_closes[i]);
      if (v == NULL) {
        Py_DECREF(closes);
        goto fail;
      }
      PyList_SET_ITEM(closes, i, v);
    }
    int r = PyDict_SetItemString(d, "ws_closes", closes);
    Py_DECREF(closes);
    if (r < 0)
      goto fail;
  }
  {
    /* {"1xx": n, ..., "5xx": n}, and "6xx".."9xx" when some were sent. */
    PyObject *classes = PyDict_New();
    if (classes == NULL)
      goto fail;
    for (int i = 1; i < PMU_STATUS_CLASSES; i++) {
      if (i > 5 && s.status_classes[i] == 0)
        continue;
      char key[4] = {(char)('0' + i), 'x', 'x', 0};
      PyObject *v = PyLong_FromUnsignedLongLong(s.status_classes[i]);
      if (v == NULL || PyDict_SetItemString(classes, key, v) < 0) {
        Py_XDECREF(v);
        Py_DECREF(classes);
        goto fail;
      }
      Py_DECREF(v);
    }
    int r = PyDict_SetItemString(d, "status_classes", classes);
    Py_DECREF(classes);
    if (r < 0)
      goto fail;
  }
  return d;
fail:
  Py_DECREF(d);
  return NULL;
}

PyDoc_STRVAR(ring_info_doc, "ring_info(thread=0) -> dict\n\nWhat the engine set up for the ring "
                            "of one worker thread.");

static PyObject *engine_ring_info(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"thread", NULL};
  unsigned thread = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|I:ring_info", kwlist, &thread))
    return NULL;
  EngineObject *self = ENGINE(op);
  if (need_server(self) < 0)
    return NULL;
  pmu_ring_info_t ri;
  memset(&ri, 0, sizeof ri);
  if (pmu_server_ring_info(self->server, thread, &ri) < 0) {
    PyErr_Format(PyExc_ValueError, "no worker thread %u", thread);
    return NULL;
  }
  return Py_BuildValue(
      "{sIsIsNsNsNsNsN}", "setup_flags", ri.setup_flags, "features", ri.features, "defer_taskrun",
      PyBool_FromLong(ri.defer_taskrun), "sqpoll", PyBool_FromLong(ri.sqpoll), "registered_files",
      PyBool_FromLong(ri.registered_files), "registered_ring_fd",
      PyBool_FromLong(ri.registered_ring_fd), "sched_batch", PyBool_FromLong(ri.sched_batch));
}

PyDoc_STRVAR(reload_tls_doc,
             "reload_tls()\n\nRead every certificate, key, CA and OCSP file of the configuration\n"
             "again (ssl_certfile, ssl_keyfile, ssl_ca_certs, ssl_sni_certs, ssl_ocsp_file):\n"
             "new handshakes use them, established connections keep theirs. Any thread.\n"
             "Raises Error naming what failed (nothing changes then); on a server without\n"
             "TLS, Error EINVAL.");

static PyObject *engine_reload_tls(PyObject *op, PyObject *unused) {
  EngineObject *self = ENGINE(op);
  if (need_server(self) < 0)
    return NULL;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = pmu_server_tls_reload(self->server);
  Py_END_ALLOW_THREADS
  if (rc < 0) {
    if (rc == -EINVAL && self->config.ssl_certfile == NULL)
      return pyb_raise_errno(self->st, rc, "this server has no TLS (ssl_certfile is not set)");
    return pyb_raise_errno(self->st, rc, pmu_server_error(self->server));
  }
  Py_RETURN_NONE;
}

PyDoc_STRVAR(in_ring_thread_doc, "in_ring_thread() -> bool\n\nWhether the caller runs on one of "
                                 "this engine's worker threads.");

static PyObject *engine_in_ring_thread(PyObject *op, PyObject *unused) {
  return PyBool_FromLong(in_ring_thread(ENGINE(op)));
}

static PyObject *get_port(PyObject *op, void *c) {
  EngineObject *self = ENGINE(op);
  if (self->server != NULL)
    return PyLong_FromLong(pmu_server_port(self->server));
  return PyLong_FromLong(self->config.port);
}

static PyObject *get_threads(PyObject *op, void *c) {
  EngineObject *self = ENGINE(op);
  if (self->server != NULL)
    return PyLong_FromUnsignedLong(pmu_server_threads(self->server));
  return PyLong_FromUnsignedLong(self->config.threads);
}

static PyObject *get_running(PyObject *op, void *c) {
  EngineObject *self = ENGINE(op);
  return PyBool_FromLong(self->server != NULL && self->running);
}

static PyObject *get_config(PyObject *op, void *c) { return config_dict(&ENGINE(op)->config); }

static PyGetSetDef engine_getset[] = {
    {"port", get_port, NULL, "The TCP port bound (after start; useful with port=0).", NULL},
    {"threads", get_threads, NULL, "Number of worker threads.", NULL},
    {"running", get_running, NULL, "Whether worker threads may still run.", NULL},
    {"config", get_config, NULL, "Every engine knob as configured (a new dict).", NULL},
    {NULL},
};

static PyMethodDef engine_methods[] = {
    {"start", engine_start, METH_NOARGS, start_doc},
    {"start_driven", engine_start_driven, METH_VARARGS, start_driven_doc},
    {"step", engine_step, METH_NOARGS, step_doc},
    {"fileno", engine_fileno, METH_NOARGS, fileno_doc},
    {"stop", engine_stop, METH_NOARGS, stop_doc},
    {"wait", (PyCFunction)(void (*)(void))engine_wait, METH_VARARGS | METH_KEYWORDS, wait_doc},
    {"close", engine_close, METH_NOARGS, close_doc},
    {"stats", (PyCFunction)(void (*)(void))engine_stats, METH_VARARGS | METH_KEYWORDS, stats_doc},
    {"ring_info", (PyCFunction)(void (*)(void))engine_ring_info, METH_VARARGS | METH_KEYWORDS,
     ring_info_doc},
    {"in_ring_thread", engine_in_ring_thread, METH_NOARGS, in_ring_thread_doc},
    {"reload_tls", engine_reload_tls, METH_NOARGS, reload_tls_doc},
    {NULL},
};

static int engine_traverse(PyObject *op, visitproc visit, void *arg) {
  EngineObject *self = ENGINE(op);
  Py_VISIT(Py_TYPE(op));
  Py_VISIT(self->handler);
  Py_VISIT(self->routes);
  Py_VISIT(self->scheduler);
  Py_VISIT(self->conn_handler);
  Py_VISIT(self->pool);
  Py_VISIT(self->drive_wake);
  return 0;
}

static int engine_clear(PyObject *op) {
  EngineObject *self = ENGINE(op);
  /* Never reached while workers run: the self-reference keeps a running
   * engine out of every garbage cycle. */
  if (self->running)
    return 0;
  Py_CLEAR(self->handler);
  Py_CLEAR(self->routes);
  Py_CLEAR(self->scheduler);
  Py_CLEAR(self->conn_handler);
  Py_CLEAR(self->pool);
  Py_CLEAR(self->drive_wake);
  Py_CLEAR(self->unix_path_str);
  Py_CLEAR(self->statics);
  return 0;
}

static void engine_dealloc(PyObject *op) {
  EngineObject *self = ENGINE(op);
  PyTypeObject *tp = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  if (self->weakreflist != NULL)
    PyObject_ClearWeakRefs(op);
  /* A running engine holds itself, so here its workers are gone. */
  destroy_server(self);
  self->running = 0;
  engine_clear(op);
  for (int i = 0; i < NOWNED; i++)
    PyMem_Free(self->owned[i]);
  PyMem_Free(self->static_array);
  PyMem_Free(self->sni_certs);
  tp->tp_free(op);
  Py_DECREF(tp);
}

static PyMemberDef engine_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(EngineObject, weakreflist), READONLY, NULL},
    {NULL},
};

PyDoc_STRVAR(engine_doc,
             "Engine(handler, *, routes=None, async_scheduler=None, connection_handler=None,\n"
             "       **config)\n\n"
             "One C server. handler(request) is called for every request whose path\n"
             "and method are not in routes ({path: {method: handler}}; a WebSocket\n"
             "handshake goes to the method key 'WEBSOCKET' first); its result\n"
             "is the response (None: the handler answers later with request.reply()).\n"
             "async_scheduler(list of (request, coroutine)) receives the coroutines\n"
             "async handlers returned, once per batch. config: every pmu_config_t\n"
             "knob by name (see config_defaults()); the C field body_stream_threshold\n"
             "is stream_body_threshold here. statics: a sequence of StaticMount the\n"
             "engine answers itself on its ring threads, before any handler (no Python\n"
             "per request; the longest prefix wins). connection_handler(conn, event,\n"
             "data) gets every connection's events (see Connection); with raw=True\n"
             "connections are byte streams for it alone and handler may be None.\n"
             "ssl_sni_certs: [(certfile, keyfile[, password]), ...], more certificates\n"
             "for a TLS server, chosen by the name the client asks for (SNI).");

static PyType_Slot engine_slots[] = {
    {Py_tp_new, engine_new},         {Py_tp_init, engine_init},
    {Py_tp_dealloc, engine_dealloc}, {Py_tp_traverse, engine_traverse},
    {Py_tp_clear, engine_clear},     {Py_tp_methods, engine_methods},
    {Py_tp_members, engine_members}, {Py_tp_getset, engine_getset},
    {Py_tp_doc, (void *)engine_doc}, {0, NULL},
};

PyType_Spec pyb_engine_spec = {
    .name = "pymongoose_uring._pmu.Engine",
    .basicsize = sizeof(EngineObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = engine_slots,
};
