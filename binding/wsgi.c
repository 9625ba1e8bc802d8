/*
 * wsgi.c: the thread pool's queue of the WSGI adapter (pymongoose_uring/wsgi.py),
 * a C object the ring threads fill without the GIL.
 *
 * Why. A WSGI app runs on pool threads so that the ring never waits for it.
 * Handing each batch over through Python cost the ring the GIL once per batch
 * (often held by a pool thread: the ring then waits a switch interval and
 * forces it back, and the pool thread waits in turn) and a Python call per
 * request. Here the engine's batch handler (engine.c:on_batch) appends the
 * engine's requests themselves to this queue with no GIL at all; the pool
 * thread that takes one wraps it in a Request object under its own GIL.
 *
 * Who runs. Calls run back to back on as few threads as keep up: when every
 * pool thread is parked, a push wakes one ("runner"), which takes requests
 * until the queue is empty, then parks again. More threads are woken only by
 * the watchdog, a plain C thread that never takes the GIL: while requests wait,
 * it looks every `stall` seconds whether any call ended since its last look,
 * and if none did (the runners are blocked: a sleep, I/O, a lock, a call to
 * this very server), wakes one more parked thread. So a blocking call holds
 * the requests queued behind it for about `stall`, an app that calls its own
 * server is answered, and quick calls do not pay for threads handing the GIL
 * and the work to each other.
 *
 * Locking. `lock` guards every field below it. It is never held while waiting
 * for the GIL: a pool thread lets it go before taking the GIL back, so a ring
 * thread (which holds no GIL) or the watchdog never waits behind Python.
 */
#include "binding.h"

#include <structmember.h>

#include <errno.h>
#include <stddef.h>
#include <strings.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* One queued request: the engine's (raw, no Python object yet) or a Request
 * put() from Python (obj, a strong reference). */
typedef struct {
  pmu_request_t *raw;
  PyObject *obj;
} pool_item;

/* One thread in serve(), on its stack, linked into the pool's list (under
 * the pool's lock). */
typedef struct pool_slot {
  struct pool_slot *next;
  uint64_t started; /* calls begun */
  uint64_t seen;    /* `started` at the watchdog's last look */
  int in_call;
  int stuck;           /* the watchdog found it in one call for a whole look */
  uint64_t flushed_ns; /* when it last flushed the wake-ups it held */
} pool_slot;

typedef struct {
  PyObject_HEAD
  pyb_state *st;        /* borrowed: the type holds the module */
  PyObject *unix_path;  /* the server's socket path for request.server, or NULL */
  size_t high_water;    /* the engine's output_high_water, for wrapped requests */
  pthread_mutex_t lock; /* guards what follows */
  pthread_cond_t work;  /* parked pool threads wait here */
  pthread_cond_t watch; /* the watchdog waits here (CLOCK_MONOTONIC) */
  pool_item *items;     /* a ring of cap slots (PyMem_Raw: pushed without the GIL) */
  size_t head, count, cap;
  unsigned awake;      /* pool threads in serve()/get() not parked (or woken) */
  unsigned parked;     /* pool threads parked and not yet woken */
  unsigned tokens;     /* wake-ups given and not yet taken by a parked thread */
  unsigned probes;     /* of them, the watchdog's (see take()) */
  uint64_t probe_done; /* `done` when the watchdog last woke a thread */
  unsigned stuck;      /* awake threads whose slot says stuck */
  pool_slot *slots;    /* the threads in serve() */
  unsigned serial;     /* serve() calls so far: the threads' names */
  uint64_t done;       /* calls ended so far */
  uint64_t wakes;      /* threads woken by the watchdog */
  long stall_ns;       /* the watchdog's look interval */
  int sched_batch;     /* pool threads and the watchdog run under SCHED_BATCH */
  int closing;         /* close(): drain, then every serve() returns */
  int watch_parked;    /* the watchdog sleeps until a push (the pool is idle) */
  int watch_started;
  pthread_t watchdog;
  pmu_wake_batch_t *wakes_held; /* the answers' wake-ups the pool threads hold */
  unsigned calls;               /* threads in a call (their slot's in_call) */
  /* Requests wait while calls run (count and calls above 0): the rings read it
   * without the lock (config.busy). A request just pushed to an idle pool does
   * not count: the pool is not behind, only about to take it. */
  atomic_int behind;
} PoolObject;

/* How long a pool thread holds the wake-ups of its answers while it has more
 * requests to run (see pmu_wake_batch_begin): a worker thread then sends a
 * few answers per turn instead of one, at the price of this much latency. */
#define HOLD_NS 1000000

/* Keep `behind` true to the queue (lock held). */
static void note_behind(PoolObject *q) {
  atomic_store_explicit(&q->behind, q->count > 0 && q->calls > 0, memory_order_relaxed);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#define POOL(o) ((PoolObject *)(o))

/* Give one parked pool thread a wake-up (lock held); `probe`: the
 * watchdog's, which the thread gives up if a call ends before it runs (see
 * take()). Returns whether one was: the caller then signals `work` once it
 * has let the lock go (a thread woken while we hold it would only block on
 * it, and on one CPU that is two more context switches). */
static int wake_one(PoolObject *q, int probe) {
  if (q->parked == 0)
    return 0;
  q->parked--;
  q->awake++;
  q->tokens++;
  if (probe) {
    q->probes++;
    q->probe_done = q->done;
  }
  return 1;
}

/* Room for `more` items (lock held). 0, or -1 when out of memory. */
static int reserve(PoolObject *q, size_t more) {
  if (q->count + more <= q->cap)
    return 0;
  size_t cap = q->cap ? q->cap : 64;
  while (cap < q->count + more)
    cap *= 2;
  pool_item *items = PyMem_RawMalloc(cap * sizeof *items);
  if (items == NULL)
    return -1;
  for (size_t i = 0; i < q->count; i++)
    items[i] = q->items[(q->head + i) % q->cap];
  PyMem_RawFree(q->items);
  q->items = items;
  q->head = 0;
  q->cap = cap;
  return 0;
}

/* Append (lock held, room reserved) and let the pool know. */
static void append(PoolObject *q, pmu_request_t *raw, PyObject *obj) {
  pool_item *it = &q->items[(q->head + q->count) % q->cap];
  it->raw = raw;
  it->obj = obj;
  q->count++;
  note_behind(q);
}

/* New requests are queued (lock held): which threads to signal once the
 * lock is let go (announced()). */
static int announce(PoolObject *q) {
  int wake = 0;
  if (q->awake <= q->stuck && wake_one(q, 0))
    wake |= 1; /* none free (parked, or stuck in a call): one runner takes the batch */
  if (q->watch_parked)
    wake |= 2;
  return wake;
}

static void announced(PoolObject *q, int wake) {
  if (wake & 1)
    pthread_cond_signal(&q->work);
  if (wake & 2)
    pthread_cond_signal(&q->watch);
}

void pyb_pool_push(PyObject *pool, pmu_request_t *const *requests, size_t count) {
  PoolObject *q = POOL(pool);
  pthread_mutex_lock(&q->lock);
  size_t n = 0;
  for (size_t i = 0; i < count; i++)
    n += !requests[i]->body_streaming;
  if (reserve(q, n) < 0) {
    pthread_mutex_unlock(&q->lock);
    for (size_t i = 0; i < count; i++)
      if (!requests[i]->body_streaming)
        pmu_respond(requests[i], &pyb_response_500); /* no memory to queue it */
    return;
  }
  for (size_t i = 0; i < count; i++)
    if (!requests[i]->body_streaming)
      append(q, requests[i], NULL);
  int wake = n ? announce(q) : 0;
  pthread_mutex_unlock(&q->lock);
  announced(q, wake);
}

int pyb_pool_behind(PyObject *pool) {
  return atomic_load_explicit(&POOL(pool)->behind, memory_order_relaxed);
}

void pyb_pool_bind(PyObject *pool, PyObject *unix_path, size_t high_water) {
  PoolObject *q = POOL(pool);
  Py_XSETREF(q->unix_path, Py_XNewRef(unix_path));
  q->high_water = high_water;
}

int pyb_pool_check(pyb_state *st, PyObject *obj) { return Py_TYPE(obj) == st->pool_type; }

/* The watchdog thread: see the file's comment. Never touches Python. */
static void *watchdog_main(void *arg) {
  PoolObject *q = arg;
  pthread_setname_np(pthread_self(), "pmu-wsgi-watch");
  if (q->sched_batch) {
    struct sched_param none = {0};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &none);
  }
  pthread_mutex_lock(&q->lock);
  while (!q->closing) {
    if (q->count == 0 && q->awake == 0) {
      q->watch_parked = 1;
      pthread_cond_wait(&q->watch, &q->lock);
      q->watch_parked = 0;
      continue;
    }
    struct timespec at;
    clock_gettime(CLOCK_MONOTONIC, &at);
    at.tv_nsec += q->stall_ns;
    at.tv_sec += at.tv_nsec / 1000000000L;
    at.tv_nsec %= 1000000000L;
    int rc = 0;
    while (!q->closing && rc != ETIMEDOUT)
      rc = pthread_cond_timedwait(&q->watch, &q->lock, &at); /* early wakes: wait on */
    /* A thread still in the call it was in at the last look is stuck. When
     * every awake thread is, and requests wait, one more thread runs. */
    for (pool_slot *sl = q->slots; sl != NULL; sl = sl->next) {
      int stuck = sl->in_call && sl->started == sl->seen;
      if (stuck != sl->stuck) {
        sl->stuck = stuck;
        if (stuck)
          q->stuck++;
        else
          q->stuck--;
      }
      sl->seen = sl->started;
    }
    int wake = q->count && q->awake <= q->stuck && wake_one(q, 1);
    q->wakes += (uint64_t)wake;
    /* Outside the lock: the signal, and the answers a runner holds, which go
     * out within a look also when its next call blocks. */
    pthread_mutex_unlock(&q->lock);
    if (wake)
      pthread_cond_signal(&q->work);
    pmu_wake_batch_flush(q->wakes_held);
    pthread_mutex_lock(&q->lock);
  }
  pthread_mutex_unlock(&q->lock);
  return NULL;
}

/*
 * Park the calling pool thread until a wake-up or close(). Called with the
 * lock and the GIL held, it lets both go (and flushes the answers' wake-ups:
 * nothing more to run) and returns with both held again. Returns 1 when the
 * wake-up was the watchdog's, with *since set to `done` at that moment.
 */
static int park(PoolObject *q, pool_slot *sl, uint64_t *since) {
  q->awake--;
  q->parked++;
  pthread_mutex_unlock(&q->lock);
  pmu_wake_batch_flush(q->wakes_held);
  sl->flushed_ns = now_ns();
  PyThreadState *ts = PyEval_SaveThread();
  pthread_mutex_lock(&q->lock);
  while (q->tokens == 0 && !q->closing)
    pthread_cond_wait(&q->work, &q->lock);
  int probe = 0;
  if (q->tokens) {
    q->tokens--; /* the waker counted us awake */
    if (q->probes) {
      q->probes--;
      probe = 1;
      *since = q->probe_done;
    }
  } else {
    q->parked--;
    q->awake++;
  }
  /* Never wait for the GIL with the lock held: the ring would wait behind Python. */
  pthread_mutex_unlock(&q->lock);
  PyEval_RestoreThread(ts);
  pthread_mutex_lock(&q->lock);
  return probe;
}

/*
 * The next request for the pool thread of `sl` (GIL held on entry and on
 * return): 1 with *out filled, or 0 when the pool is closing and empty (the
 * thread leaves: it is no longer counted). `ended` says it finished a call.
 *
 * One free thread (awake and not stuck) takes the requests back to back; any
 * other free thread parks, so the threads the watchdog woke go back once the
 * stuck calls end. A thread the watchdog woke also parks again when a call
 * ended while it waited for the GIL and another thread is free: the "stuck"
 * thread was only waiting for the GIL (held by another), not blocked, and
 * one more thread would only contend for the GIL. The answers' wake-ups are
 * flushed every HOLD_NS, and before parking.
 */
static int take(PoolObject *q, pool_slot *sl, pool_item *out, int ended) {
  if (ended) {
    uint64_t now = now_ns();
    if (now - sl->flushed_ns >= HOLD_NS) {
      pmu_wake_batch_flush(q->wakes_held); /* (before the lock: it may wake the ring) */
      sl->flushed_ns = now;
    }
  }
  pthread_mutex_lock(&q->lock);
  if (ended) {
    q->done++;
    sl->in_call = 0;
    q->calls--;
    note_behind(q);
    if (sl->stuck) {
      sl->stuck = 0;
      q->stuck--;
    }
  }
  for (;;) {
    if (q->count && (q->awake <= q->stuck + 1 || q->closing)) {
      *out = q->items[q->head];
      q->head = (q->head + 1) % q->cap;
      q->count--;
      sl->in_call = 1;
      q->calls++;
      note_behind(q);
      sl->started++;
      pthread_mutex_unlock(&q->lock);
      return 1;
    }
    if (q->closing && q->count == 0) {
      q->awake--;
      pthread_mutex_unlock(&q->lock);
      return 0;
    }
    uint64_t since;
    while (park(q, sl, &since) && q->done != since && q->awake > q->stuck + 1 && !q->closing) {
      /* parks again */
    }
  }
}

/* A queued item as a Request object (new reference), or NULL after
 * answering it 500 (no memory to wrap it: logged). */
static PyObject *wrap(PoolObject *q, pool_item *it) {
  if (it->obj != NULL)
    return it->obj; /* the queue's reference, now the caller's */
  PyObject *req = pyb_request_new(q->st, it->raw, q->unix_path, q->high_water);
  if (req == NULL) {
    pyb_log_exception(q->st, "could not wrap a request; sent 500", NULL);
    pmu_respond(it->raw, &pyb_response_500);
  }
  return req;
}

PyDoc_STRVAR(serve_doc,
             "serve(handle)\n\nRun on a pool thread: take the queued requests and call "
             "handle(request)\nfor each, parking while none waits; return once close() was "
             "called and\nthe queue is empty. An exception handle raises is logged.");
static PyObject *pool_serve(PyObject *op, PyObject *handle) {
  PoolObject *q = POOL(op);
  pool_slot slot = {0};
  pool_item it;
  pthread_mutex_lock(&q->lock);
  q->awake++;
  slot.next = q->slots;
  q->slots = &slot;
  unsigned serial = q->serial++;
  pthread_mutex_unlock(&q->lock);
  char name[16]; /* for top -H, perf and /proc/PID/task/TID/comm */
  snprintf(name, sizeof name, "pmu-wsgi-%u", serial % 100000);
  pthread_setname_np(pthread_self(), name);
  /* SCHED_BATCH while it serves (see WSGIPool's doc), the thread's own after. */
  int policy = SCHED_OTHER;
  struct sched_param param = {0}, none = {0};
  int switched = q->sched_batch && pthread_getschedparam(pthread_self(), &policy, &param) == 0 &&
                 policy != SCHED_BATCH &&
                 pthread_setschedparam(pthread_self(), SCHED_BATCH, &none) == 0;
  pmu_wake_batch_begin(q->wakes_held);
  slot.flushed_ns = now_ns();
  int ended = 0;
  while (take(q, &slot, &it, ended)) {
    ended = 1;
    PyObject *req = wrap(q, &it);
    if (req == NULL)
      continue;
    PyObject *r = PyObject_CallOneArg(handle, req);
    if (r == NULL)
      pyb_log_exception(q->st, "WSGI pool thread: unexpected error", req);
    Py_XDECREF(r);
    Py_DECREF(req);
  }
  pmu_wake_batch_begin(NULL);
  pmu_wake_batch_flush(q->wakes_held);
  if (switched)
    pthread_setschedparam(pthread_self(), policy, &param);
  pthread_mutex_lock(&q->lock);
  for (pool_slot **p = &q->slots; *p != NULL; p = &(*p)->next)
    if (*p == &slot) {
      *p = slot.next;
      break;
    }
  pthread_mutex_unlock(&q->lock);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(put_doc, "put(request)\n\nQueue a Request for the pool (from Python: the ring's "
                      "handler when it\ndoes not run the app itself).");
static PyObject *pool_put(PyObject *op, PyObject *request) {
  PoolObject *q = POOL(op);
  if (!PyObject_TypeCheck(request, q->st->request_type)) {
    PyErr_Format(PyExc_TypeError, "put() takes a Request, not %.100s", Py_TYPE(request)->tp_name);
    return NULL;
  }
  pthread_mutex_lock(&q->lock);
  if (reserve(q, 1) < 0) {
    pthread_mutex_unlock(&q->lock);
    return PyErr_NoMemory();
  }
  append(q, NULL, Py_NewRef(request));
  int wake = announce(q);
  pthread_mutex_unlock(&q->lock);
  announced(q, wake);
  Py_RETURN_NONE;
}

/* Stop the watchdog and let every serve() return once the queue is empty. */
static void pool_shut(PoolObject *q) {
  pthread_mutex_lock(&q->lock);
  q->closing = 1;
  pthread_cond_broadcast(&q->work);
  pthread_cond_broadcast(&q->watch);
  pthread_mutex_unlock(&q->lock);
  if (q->watch_started) {
    q->watch_started = 0;
    pthread_join(q->watchdog, NULL); /* at once: it never waits for the GIL */
  }
}

PyDoc_STRVAR(close_doc, "close()\n\nLet the pool threads go once the queue is empty (the requests "
                        "queued\nare still handled); stop the watchdog.");
static PyObject *pool_close(PyObject *op, PyObject *unused) {
  pool_shut(POOL(op));
  Py_RETURN_NONE;
}

static Py_ssize_t pool_len(PyObject *op) {
  PoolObject *q = POOL(op);
  pthread_mutex_lock(&q->lock);
  Py_ssize_t n = (Py_ssize_t)q->count;
  pthread_mutex_unlock(&q->lock);
  return n;
}

static PyObject *get_counter(PyObject *op, void *which) {
  PoolObject *q = POOL(op);
  pthread_mutex_lock(&q->lock);
  uint64_t v = which ? q->wakes : q->done;
  pthread_mutex_unlock(&q->lock);
  return PyLong_FromUnsignedLongLong(v);
}

static PyObject *pool_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"stall", "sched_batch", NULL};
  double stall = 0.001;
  int sched_batch = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|dp:WSGIPool", kwlist, &stall, &sched_batch))
    return NULL;
  if (!(stall > 0 && stall <= 60)) {
    PyErr_SetString(PyExc_ValueError, "stall must be above 0 and at most 60 seconds");
    return NULL;
  }
  PoolObject *q = (PoolObject *)type->tp_alloc(type, 0);
  if (q == NULL)
    return NULL;
  q->st = pyb_state_from_type(type);
  q->stall_ns = (long)(stall * 1e9);
  q->sched_batch = sched_batch;
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_mutex_init(&q->lock, NULL);
  pthread_cond_init(&q->work, NULL);
  pthread_cond_init(&q->watch, &attr);
  pthread_condattr_destroy(&attr);
  q->wakes_held = pmu_wake_batch_new();
  if (q->wakes_held == NULL) {
    Py_DECREF(q);
    return PyErr_NoMemory();
  }
  /* The watchdog must not take signals meant for Python's main thread. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int rc = pthread_create(&q->watchdog, NULL, watchdog_main, q);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    Py_DECREF(q);
    errno = rc;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  q->watch_started = 1;
  return (PyObject *)q;
}

static void pool_dealloc(PyObject *op) {
  PoolObject *q = POOL(op);
  PyTypeObject *tp = Py_TYPE(op);
  pool_shut(q);
  /* Nothing serves them any more: answer what is left. */
  while (q->count) {
    pool_item *it = &q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->count--;
    if (it->obj != NULL)
      Py_DECREF(it->obj); /* the Request answers 500 as it goes */
    else
      pmu_respond(it->raw, &pyb_response_500);
  }
  PyMem_RawFree(q->items);
  pmu_wake_batch_free(q->wakes_held);
  Py_CLEAR(q->unix_path);
  pthread_cond_destroy(&q->work);
  pthread_cond_destroy(&q->watch);
  pthread_mutex_destroy(&q->lock);
  tp->tp_free(op);
  Py_DECREF(tp);
}

static PyMethodDef pool_methods[] = {
    {"serve", pool_serve, METH_O, serve_doc},
    {"put", pool_put, METH_O, put_doc},
    {"close", pool_close, METH_NOARGS, close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pool_getset[] = {
    {"done", get_counter, NULL, "calls ended so far", NULL},
    {"watchdog_wakes", get_counter, NULL, "pool threads the watchdog woke", (void *)1},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(pool_doc,
             "WSGIPool(stall=0.001, sched_batch=False)\n\nThe WSGI adapter's queue of requests "
             "for its pool threads: the engine\nfills it without the GIL; threads run "
             "serve(handle). A watchdog wakes one\nmore parked thread when requests wait and no "
             "call ended for `stall`\nseconds. With sched_batch, the watchdog and each thread in "
             "serve() run under\nSCHED_BATCH (a thread's own policy comes back when serve() "
             "returns): their\nwake-ups do not preempt the thread running on their CPU.");

static PyType_Slot pool_slots[] = {
    {Py_tp_doc, (void *)pool_doc},
    {Py_tp_new, pool_new},
    {Py_tp_dealloc, pool_dealloc},
    {Py_tp_methods, pool_methods},
    {Py_tp_getset, pool_getset},
    {Py_sq_length, pool_len},
    {0, NULL},
};

PyType_Spec pyb_pool_spec = {
    .name = "pymongoose_uring._pmu.WSGIPool",
    .basicsize = sizeof(PoolObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = pool_slots,
};

/* ==== The call of the app: environ, start_response, the common answer ====
 *
 * WSGICall is wsgi.py's WSGIHandler._handle for the common case, in C: it
 * builds the environ from the engine's request (as WSGIHandler._environ
 * does, which stays the reference: the tests compare the two), calls the
 * app with a C start_response, and when the app returns a list or tuple of
 * one bytes object (or none), or any other iterable under a Content-Length of
 * at most 1 MiB it gave (Flask's and Django's answers: joined, then closed),
 * with a status and headers that need nothing special, answers in one
 * pmu_respond. Everything else (other iterables, files,
 * write(), a Content-Length that disagrees, HEAD, headers to fix or refuse)
 * goes to the Python handler's _finish with the same start_response, so
 * there is one behaviour. An exception from the app goes to _fail.
 */

typedef struct {
  PyObject_HEAD
  pyb_state *st; /* borrowed: the type holds the module */
  PyObject *app;
  PyObject *base;         /* dict copied for every environ */
  PyObject *script_name;  /* str, "" or the prefix without its trailing "/" */
  PyObject *proxies;      /* the trusted proxies (wsgi.py), or None */
  PyObject *stream_input; /* _StreamInput(request) */
  PyObject *bytes_io;     /* io.BytesIO */
  PyObject *empty_input;  /* _EMPTY_INPUT */
  PyObject *finish;       /* handler._finish(request, sr, result, environ) */
  PyObject *fail;         /* handler._fail(request, sr, what) */
  PyObject *write;        /* wsgi._write(sr, data): the legacy write() */
  int scheme_fixed;       /* url_scheme was given: a TLS connection keeps it */
  /* The last server address seen and its (SERVER_NAME, SERVER_PORT). */
  struct sockaddr_storage server_addr;
  PyObject *server_name, *server_port;
  vectorcallfunc vectorcall;
} CallObject;

typedef struct {
  PyObject_HEAD
  PyObject *request;
  PyObject *status;   /* str or NULL */
  PyObject *headers;  /* list or NULL */
  PyObject *write_fn; /* the caller's legacy write helper */
  int streaming;      /* the head was sent with request.start() */
  Py_ssize_t sent;    /* body bytes given to request.write() */
  vectorcallfunc vectorcall;
} StartObject;

#define CALL(o) ((CallObject *)(o))
#define START(o) ((StartObject *)(o))

/* Interned environ keys and constant values. */
static PyObject *k_method, *k_path_info, *k_query, *k_raw_uri, *k_protocol, *k_server_name,
    *k_server_port, *k_remote_addr, *k_remote_port, *k_input, *k_content_length, *k_content_type,
    *k_scheme, *k_cookie, *k_xff, *k_xfp, *v_http11, *v_http10, *v_empty, *v_localhost, *v_zero,
    *s_trusts, *s_client, *s_scheme, *k_https, *v_on, *v_https, *s_close, *s_join, *v_no_bytes;

static int intern_all(void) {
  if (k_method != NULL)
    return 0;
#define I(var, text)                                    \
  if ((var = PyUnicode_InternFromString(text)) == NULL) \
    return -1;
  I(k_path_info, "PATH_INFO")
  I(k_query, "QUERY_STRING")
  I(k_raw_uri, "RAW_URI")
  I(k_protocol, "SERVER_PROTOCOL")
  I(k_server_name, "SERVER_NAME")
  I(k_server_port, "SERVER_PORT")
  I(k_remote_addr, "REMOTE_ADDR")
  I(k_remote_port, "REMOTE_PORT")
  I(k_input, "wsgi.input")
  I(k_content_length, "CONTENT_LENGTH")
  I(k_content_type, "CONTENT_TYPE")
  I(k_scheme, "wsgi.url_scheme")
  I(k_cookie, "HTTP_COOKIE")
  I(k_xff, "HTTP_X_FORWARDED_FOR")
  I(k_xfp, "HTTP_X_FORWARDED_PROTO")
  I(k_https, "HTTPS")
  I(v_on, "on")
  I(v_https, "https")
  I(v_http11, "HTTP/1.1")
  I(v_http10, "HTTP/1.0")
  I(v_empty, "")
  I(v_localhost, "localhost")
  I(v_zero, "0")
  I(s_trusts, "trusts")
  I(s_client, "client")
  I(s_scheme, "scheme")
  I(s_close, "close")
  I(s_join, "join")
  if ((v_no_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL)
    return -1;
  I(k_method, "REQUEST_METHOD") /* last: the flag that all are made */
#undef I
  return 0;
}

/* Bytes as PEP 3333's "bytes as latin-1" str. */
static PyObject *latin1(const char *p, size_t n) {
  return PyUnicode_DecodeLatin1(n ? p : "", (Py_ssize_t)n, NULL);
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c |= 0x20;
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

/* PATH_INFO: the path percent-decoded to bytes (urllib's unquote_to_bytes:
 * a '%' not followed by two hex digits stays), as latin-1. */
static PyObject *path_info(const char *p, size_t n) {
  if (n == 0 || memchr(p, '%', n) == NULL)
    return latin1(p, n);
  char stack[512];
  char *out = n <= sizeof stack ? stack : PyMem_Malloc(n);
  if (out == NULL)
    return PyErr_NoMemory();
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    int hi, lo;
    if (p[i] == '%' && i + 2 < n + 0 && (hi = hexval((unsigned char)p[i + 1])) >= 0 &&
        (lo = hexval((unsigned char)p[i + 2])) >= 0) {
      out[k++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      out[k++] = p[i];
    }
  }
  PyObject *s = latin1(out, k);
  if (out != stack)
    PyMem_Free(out);
  return s;
}

/* The environ key of a request header name: HTTP_ + upper-cased with '-' as
 * '_' (CONTENT_TYPE and CONTENT_LENGTH bare); NULL with no exception for a
 * name with '_' (dropped, as gunicorn and nginx do). New reference. */
static PyObject *header_key(const char *name, size_t n) {
  if (memchr(name, '_', n) != NULL)
    return NULL;
  if (n == 12 && strncasecmp(name, "content-type", 12) == 0)
    return Py_NewRef(k_content_type);
  if (n == 14 && strncasecmp(name, "content-length", 14) == 0)
    return Py_NewRef(k_content_length);
  PyObject *key = PyUnicode_New((Py_ssize_t)n + 5, 127);
  if (key == NULL)
    return NULL;
  Py_UCS1 *d = PyUnicode_1BYTE_DATA(key);
  memcpy(d, "HTTP_", 5);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)name[i];
    d[5 + i] = (Py_UCS1)(c == '-' ? '_' : (c >= 'a' && c <= 'z') ? c - 32 : c);
  }
  return key;
}

/* Set env[key] = value, or join it to the value there (", ", "; " for
 * cookies). Steals value. 0 or -1. */
static int put_header(PyObject *env, PyObject *key, PyObject *value) {
  PyObject *old = PyDict_GetItemWithError(env, key); /* borrowed */
  if (old == NULL) {
    if (PyErr_Occurred()) {
      Py_DECREF(value);
      return -1;
    }
    int rc = PyDict_SetItem(env, key, value);
    Py_DECREF(value);
    return rc;
  }
  PyObject *joined = PyUnicode_FromFormat(key == k_cookie ? "%U; %U" : "%U, %U", old, value);
  Py_DECREF(value);
  if (joined == NULL)
    return -1;
  int rc = PyDict_SetItem(env, key, joined);
  Py_DECREF(joined);
  return rc;
}

/* Set a key to a new reference (stolen). */
static int set_new(PyObject *env, PyObject *key, PyObject *value) {
  if (value == NULL)
    return -1;
  int rc = PyDict_SetItem(env, key, value);
  Py_DECREF(value);
  return rc;
}

/* (SERVER_NAME, SERVER_PORT) for the address the request came on: the last
 * one's are kept. Borrowed into *name and *port. */
static int server_names(CallObject *c, const pmu_request_t *r, PyObject **name, PyObject **port) {
  if (c->server_name == NULL || memcmp(&c->server_addr, &r->local, sizeof r->local) != 0) {
    PyObject *addr = pyb_address(c->st, &r->local, NULL); /* (host, port), or None */
    if (addr == NULL)
      return -1;
    PyObject *n, *p;
    if (PyTuple_Check(addr)) {
      n = Py_NewRef(PyTuple_GET_ITEM(addr, 0));
      p = PyObject_Str(PyTuple_GET_ITEM(addr, 1));
    } else { /* a Unix socket */
      n = Py_NewRef(v_localhost);
      p = Py_NewRef(v_zero);
    }
    Py_DECREF(addr);
    if (p == NULL) {
      Py_DECREF(n);
      return -1;
    }
    Py_XSETREF(c->server_name, n);
    Py_XSETREF(c->server_port, p);
    memcpy(&c->server_addr, &r->local, sizeof r->local);
  }
  *name = c->server_name;
  *port = c->server_port;
  return 0;
}

/* The environ of one request (see WSGIHandler._environ). New reference. */
static PyObject *build_environ(CallObject *c, PyObject *request) {
  const pmu_request_t *r = pyb_request_view(request);
  if (r == NULL)
    return NULL;
  PyObject *env = PyDict_Copy(c->base);
  PyObject *client = NULL;
  if (env == NULL)
    return NULL;
  if (set_new(env, k_method, pyb_request_method(request)) < 0)
    goto fail;
  PyObject *path = path_info(r->path, r->path_len);
  if (path == NULL)
    goto fail;
  Py_ssize_t sn = PyUnicode_GET_LENGTH(c->script_name);
  if (sn > 0 && PyUnicode_Tailmatch(path, c->script_name, 0, sn, -1) == 1 &&
      (PyUnicode_GET_LENGTH(path) == sn || PyUnicode_READ_CHAR(path, sn) == '/')) {
    Py_SETREF(path, PyUnicode_Substring(path, sn, PyUnicode_GET_LENGTH(path)));
  }
  if (set_new(env, k_path_info, path) < 0 ||
      set_new(env, k_query, latin1(r->query, r->query_len)) < 0 ||
      set_new(env, k_raw_uri, latin1(r->target, r->target_len)) < 0)
    goto fail;
  PyObject *proto =
      r->http_major == 1 && r->http_minor == 1 ? Py_NewRef(v_http11)
      : r->http_major == 1 && r->http_minor == 0
          ? Py_NewRef(v_http10)
          : PyUnicode_FromFormat("HTTP/%u.%u", (unsigned)r->http_major, (unsigned)r->http_minor);
  if (set_new(env, k_protocol, proto) < 0)
    goto fail;
  PyObject *sname, *sport; /* borrowed */
  if (server_names(c, r, &sname, &sport) < 0 || PyDict_SetItem(env, k_server_name, sname) < 0 ||
      PyDict_SetItem(env, k_server_port, sport) < 0)
    goto fail;
  client = pyb_address(c->st, &r->peer, NULL);
  if (client == NULL)
    goto fail;
  if (PyTuple_Check(client)) {
    if (PyDict_SetItem(env, k_remote_addr, PyTuple_GET_ITEM(client, 0)) < 0 ||
        set_new(env, k_remote_port, PyObject_Str(PyTuple_GET_ITEM(client, 1))) < 0)
      goto fail;
  } else if (PyDict_SetItem(env, k_remote_addr, v_empty) < 0) {
    goto fail;
  }
  int proxy_header = 0;
  for (size_t i = 0; i < r->header_count; i++) {
    const pmu_header_t *h = &r->headers[i];
    PyObject *key = header_key(h->name ? h->name : "", h->name_len);
    if (key == NULL) {
      if (PyErr_Occurred())
        goto fail;
      continue;
    }
    if (key != k_content_type && key != k_content_length) {
      /* Look the key up interned: the proxy headers are found by identity. */
      PyUnicode_InternInPlace(&key);
      proxy_header |= key == k_xff || key == k_xfp;
    }
    int rc = put_header(env, key, latin1(h->value, h->value_len));
    Py_DECREF(key);
    if (rc < 0)
      goto fail;
  }
  if (r->tls) { /* (as _environ: before the proxy headers, which may say otherwise) */
    if (PyDict_SetItem(env, k_https, v_on) < 0 ||
        (!c->scheme_fixed && PyDict_SetItem(env, k_scheme, v_https) < 0))
      goto fail;
  }
  if (proxy_header && c->proxies != Py_None) {
    PyObject *xff = PyDict_GetItemWithError(env, k_xff); /* borrowed */
    PyObject *xfp = xff || !PyErr_Occurred() ? PyDict_GetItemWithError(env, k_xfp) : NULL;
    if (PyErr_Occurred())
      goto fail;
    PyObject *peer = PyTuple_Check(client) ? client : Py_None;
    PyObject *ok = PyObject_CallMethodOneArg(c->proxies, s_trusts, peer);
    if (ok == NULL)
      goto fail;
    int trusted = PyObject_IsTrue(ok);
    Py_DECREF(ok);
    if (trusted < 0)
      goto fail;
    if (trusted && xff != NULL) {
      Py_INCREF(xff);
      PyObject *named = PyObject_CallMethodObjArgs(c->proxies, s_client, xff, peer, NULL);
      Py_DECREF(xff);
      if (named == NULL)
        goto fail;
      if (PyTuple_Check(named) && PyTuple_GET_SIZE(named) == 2) {
        if (PyDict_SetItem(env, k_remote_addr, PyTuple_GET_ITEM(named, 0)) < 0 ||
            set_new(env, k_remote_port, PyObject_Str(PyTuple_GET_ITEM(named, 1))) < 0) {
          Py_DECREF(named);
          goto fail;
        }
      }
      Py_DECREF(named);
    }
    if (trusted && xfp != NULL) {
      PyObject *scheme = PyDict_GetItemWithError(env, k_scheme); /* borrowed */
      if (scheme == NULL)
        goto fail;
      PyObject *now = PyObject_CallMethodObjArgs(c->proxies, s_scheme, xfp, scheme, NULL);
      if (set_new(env, k_scheme, now) < 0)
        goto fail;
    }
  }
  if (r->body_streaming) {
    if (set_new(env, k_input, PyObject_CallOneArg(c->stream_input, request)) < 0)
      goto fail;
  } else if (r->body_len) {
    PyObject *body = PyObject_GetAttrString(request, "body");
    if (body == NULL)
      goto fail;
    PyObject *input = PyObject_CallOneArg(c->bytes_io, body);
    Py_DECREF(body);
    if (set_new(env, k_input, input) < 0)
      goto fail;
    int has = PyDict_Contains(env, k_content_length);
    if (has < 0 ||
        (!has && set_new(env, k_content_length, PyUnicode_FromFormat("%zu", r->body_len)) < 0))
      goto fail;
  } else if (PyDict_SetItem(env, k_input, c->empty_input) < 0) {
    goto fail;
  }
  Py_DECREF(client);
  return env;
fail:
  Py_XDECREF(client);
  Py_DECREF(env);
  return NULL;
}

/* ---- start_response ---- */

static PyObject *start_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames) {
  StartObject *sr = START(op);
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject *status = nargs > 0 ? args[0] : NULL, *headers = nargs > 1 ? args[1] : NULL,
           *exc_info = nargs > 2 ? args[2] : Py_None;
  if (kwnames != NULL) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
      PyObject *name = PyTuple_GET_ITEM(kwnames, i), *value = args[nargs + i];
      if (PyUnicode_CompareWithASCIIString(name, "status") == 0 && status == NULL)
        status = value;
      else if (PyUnicode_CompareWithASCIIString(name, "headers") == 0 && headers == NULL)
        headers = value;
      else if (PyUnicode_CompareWithASCIIString(name, "exc_info") == 0 && nargs <= 2)
        exc_info = value;
      else {
        PyErr_Format(PyExc_TypeError, "start_response() got an unexpected keyword argument %R",
                     name);
        return NULL;
      }
    }
  }
  if (status == NULL || headers == NULL || nargs > 3) {
    PyErr_SetString(PyExc_TypeError,
                    "start_response(status, response_headers, exc_info=None) takes 2 or 3 "
                    "arguments");
    return NULL;
  }
  if (exc_info != Py_None) {
    if (sr->streaming) {
      /* The head is out: re-raise the app's error (PEP 3333). */
      if (!PyTuple_Check(exc_info) || PyTuple_GET_SIZE(exc_info) != 3 ||
          !PyExceptionInstance_Check(PyTuple_GET_ITEM(exc_info, 1))) {
        PyErr_SetString(PyExc_TypeError, "exc_info must be a sys.exc_info() tuple");
        return NULL;
      }
      PyObject *value = PyTuple_GET_ITEM(exc_info, 1), *tb = PyTuple_GET_ITEM(exc_info, 2);
      if (tb != Py_None && PyException_SetTraceback(value, tb) < 0)
        return NULL;
      PyErr_SetObject((PyObject *)Py_TYPE(value), value);
      return NULL;
    }
  } else if (sr->status != NULL) {
    PyErr_SetString(PyExc_AssertionError,
                    "start_response() was already called; pass exc_info to replace the status "
                    "and headers");
    return NULL;
  }
  if (!PyUnicode_CheckExact(status)) {
    PyErr_Format(PyExc_TypeError, "status must be a str such as '200 OK', not %.100s",
                 Py_TYPE(status)->tp_name);
    return NULL;
  }
  if (!PyList_CheckExact(headers)) {
    PyErr_Format(PyExc_TypeError, "headers must be a list, not %.100s", Py_TYPE(headers)->tp_name);
    return NULL;
  }
  Py_XSETREF(sr->status, Py_NewRef(status));
  Py_XSETREF(sr->headers, Py_NewRef(headers));
  return PyObject_GetAttrString(op, "write");
}

PyDoc_STRVAR(write_doc, "write(data)\n\nThe legacy write() callable: sends at once, streamed.");
static PyObject *start_write(PyObject *op, PyObject *data) {
  return PyObject_CallFunctionObjArgs(START(op)->write_fn, op, data, NULL);
}

static PyObject *start_call(PyObject *op, PyObject *args, PyObject *kwargs) {
  return PyVectorcall_Call(op, args, kwargs);
}

static int start_traverse(PyObject *op, visitproc visit, void *arg) {
  StartObject *sr = START(op);
  Py_VISIT(Py_TYPE(op));
  Py_VISIT(sr->request);
  Py_VISIT(sr->status);
  Py_VISIT(sr->headers);
  Py_VISIT(sr->write_fn);
  return 0;
}

static int start_clear(PyObject *op) {
  StartObject *sr = START(op);
  Py_CLEAR(sr->request);
  Py_CLEAR(sr->status);
  Py_CLEAR(sr->headers);
  Py_CLEAR(sr->write_fn);
  return 0;
}

static void start_dealloc(PyObject *op) {
  PyTypeObject *tp = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  start_clear(op);
  tp->tp_free(op);
  Py_DECREF(tp);
}

/* A start_response for `request`, made without the GC's tracking (most
 * never join a cycle; an app that keeps it in the environ would). */
static PyObject *start_new(PyTypeObject *type, PyObject *request, PyObject *write_fn) {
  StartObject *sr = PyObject_GC_New(StartObject, type);
  if (sr == NULL)
    return NULL;
  sr->request = Py_NewRef(request);
  sr->status = NULL;
  sr->headers = NULL;
  sr->write_fn = Py_NewRef(write_fn);
  sr->streaming = 0;
  sr->sent = 0;
  sr->vectorcall = start_vectorcall;
  PyObject_GC_Track((PyObject *)sr);
  return (PyObject *)sr;
}

static PyObject *start_py_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"request", "write", NULL};
  PyObject *request, *write_fn;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:StartResponse", kwlist, &request, &write_fn))
    return NULL;
  return start_new(type, request, write_fn);
}

static PyObject *get_opt(PyObject *op, void *which) {
  PyObject *v = which ? START(op)->headers : START(op)->status;
  return Py_NewRef(v ? v : Py_None);
}

static PyMemberDef start_members[] = {
    {"request", T_OBJECT, offsetof(StartObject, request), READONLY, NULL},
    {"streaming", T_BOOL, offsetof(StartObject, streaming), 0,
     "the head was sent with request.start()"},
    {"sent", T_PYSSIZET, offsetof(StartObject, sent), 0, "body bytes given to request.write()"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(StartObject, vectorcall), READONLY, NULL},
    {NULL},
};

static PyGetSetDef start_getset[] = {
    {"status", get_opt, NULL, "the status given, or None", NULL},
    {"headers", get_opt, NULL, "the headers given, or None", (void *)1},
    {NULL},
};

static PyMethodDef start_methods[] = {
    {"write", start_write, METH_O, write_doc},
    {NULL},
};

static PyType_Slot start_slots[] = {
    {Py_tp_doc, "StartResponse(request, write)\n\nstart_response for one WSGI call (C)."},
    {Py_tp_new, start_py_new},
    {Py_tp_call, start_call},
    {Py_tp_dealloc, start_dealloc},
    {Py_tp_traverse, start_traverse},
    {Py_tp_clear, start_clear},
    {Py_tp_members, start_members},
    {Py_tp_getset, start_getset},
    {Py_tp_methods, start_methods},
    {0, NULL},
};

PyType_Spec pyb_wsgi_start_spec = {
    .name = "pymongoose_uring._pmu.WSGIStartResponse",
    .basicsize = sizeof(StartObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = start_slots,
};

/* ---- the call ---- */

/* The status code of a WSGI status ("200 OK"), or -1 when it is not one the
 * quick answer sends (Python's _status_code decides, and raises). */
static int status_code(PyObject *status) {
  if (!PyUnicode_IS_ASCII(status) || PyUnicode_GET_LENGTH(status) < 4)
    return -1;
  const char *s = (const char *)PyUnicode_1BYTE_DATA(status);
  if (s[3] != ' ' || s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9' || s[2] < '0' ||
      s[2] > '9')
    return -1;
  int code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
  return pmu_status_valid(code) ? code : -1;
}

/* RFC 9110 tchar. */
static int is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

#define QUICK_HEADERS 32

/*
 * Answer the request in one pmu_respond when the app's result allows it: a
 * list or tuple of one bytes object (or empty), start_response called and
 * nothing streamed, not HEAD, at most QUICK_HEADERS headers, each a tuple of
 * two str whose name is a token and whose value is latin-1 without CR, LF
 * or NUL, and a Content-Length, if any, equal to the body's. Returns 1 when
 * answered, 0 otherwise (nothing sent; no exception).
 */
static int quick_answer(CallObject *c, StartObject *sr, PyObject *result) {
  PyObject *body;
  if (sr->status == NULL || sr->streaming)
    return 0;
  if (PyList_CheckExact(result)) {
    Py_ssize_t n = PyList_GET_SIZE(result);
    if (n > 1)
      return 0;
    body = n ? PyList_GET_ITEM(result, 0) : NULL;
  } else if (PyTuple_CheckExact(result)) {
    Py_ssize_t n = PyTuple_GET_SIZE(result);
    if (n > 1)
      return 0;
    body = n ? PyTuple_GET_ITEM(result, 0) : NULL;
  } else {
    return 0;
  }
  if (body != NULL && !PyBytes_CheckExact(body))
    return 0;
  const pmu_request_t *r = pyb_request_view(sr->request);
  if (r == NULL) {
    PyErr_Clear();
    return 0;
  }
  if (r->is_head)
    return 0;
  int code = status_code(sr->status);
  if (code < 0)
    return 0;
  Py_ssize_t body_len = body ? PyBytes_GET_SIZE(body) : 0;
  Py_ssize_t count = PyList_GET_SIZE(sr->headers);
  if (count > QUICK_HEADERS)
    return 0;
  pmu_header_t headers[QUICK_HEADERS];
  /* body_len in decimal, written back from the end of digits (snprintf was a
   * tenth of a µs a request). */
  char digits[24], *length = digits + sizeof digits;
  size_t v = (size_t)body_len;
  do {
    *--length = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  int length_len = (int)(digits + sizeof digits - length);
  for (Py_ssize_t i = 0; i < count; i++) {
    PyObject *pair = PyList_GET_ITEM(sr->headers, i);
    if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2)
      return 0;
    PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
    if (!PyUnicode_CheckExact(name) || !PyUnicode_CheckExact(value) || !PyUnicode_IS_ASCII(name) ||
        PyUnicode_KIND(value) != PyUnicode_1BYTE_KIND)
      return 0;
    const char *np = (const char *)PyUnicode_1BYTE_DATA(name);
    const char *vp = (const char *)PyUnicode_1BYTE_DATA(value);
    Py_ssize_t nn = PyUnicode_GET_LENGTH(name), vn = PyUnicode_GET_LENGTH(value);
    if (nn == 0)
      return 0;
    for (Py_ssize_t k = 0; k < nn; k++)
      if (!is_tchar((unsigned char)np[k]))
        return 0;
    for (Py_ssize_t k = 0; k < vn; k++) {
      unsigned char ch = (unsigned char)vp[k];
      if (ch == '\r' || ch == '\n' || ch == '\0')
        return 0;
    }
    if (nn == 14 && strncasecmp(np, "content-length", 14) == 0 &&
        (vn != length_len || memcmp(vp, length, (size_t)vn) != 0) && code != 204 && code != 304)
      return 0; /* the app's length disagrees: _reply's rules */
    headers[i].name = np;
    headers[i].name_len = (size_t)nn;
    headers[i].value = vp; /* latin-1 bytes, as WSGI means them */
    headers[i].value_len = (size_t)vn;
  }
  pmu_response_t response = {
      code, headers, (size_t)count, body ? PyBytes_AS_STRING(body) : "", (size_t)body_len,
      NULL, NULL};
  pyb_state *st = pyb_state_from_type(Py_TYPE(c));
  if (body_len >= PYB_ZERO_COPY_MIN && pyb_zero_copy(st, &response, body) < 0)
    response.body_release = NULL; /* no memory for the note: copied instead */
  /* Our references: the pool's loop and this start_response. */
  if (pyb_request_respond(sr->request, &response, 2) < 0) {
    PyErr_Clear();
    return 0;
  }
  return 1;
}

/* After an exception in building the environ or in the app: handler._fail
 * for an Exception (logged, 500), else (SystemExit...) passed on. */
static PyObject *failed_with(CallObject *c, PyObject *request, PyObject *sr, const char *why) {
  if (!PyErr_ExceptionMatches(PyExc_Exception))
    return NULL;
  /* _fail logs it with log.exception(): make it the exception being handled,
   * as in an `except` block, for the call. */
  PyObject *type, *value, *tb, *old_type, *old_value, *old_tb;
  pyb_fetch_error(&type, &value, &tb);
  PyErr_GetExcInfo(&old_type, &old_value, &old_tb);
  PyErr_SetExcInfo(type, value, tb); /* steals */
  PyObject *what = PyUnicode_FromString(why);
  PyObject *r = what ? PyObject_CallFunctionObjArgs(c->fail, request, sr, what, NULL) : NULL;
  Py_XDECREF(what);
  PyErr_SetExcInfo(old_type, old_value, old_tb);
  return r;
}

static PyObject *failed(CallObject *c, PyObject *request, PyObject *sr) {
  return failed_with(c, request, sr, "the WSGI app raised");
}

/* result.close() if it has one, as WSGIHandler._finish does after answering:
 * an exception is logged and dropped. */
static void close_result(CallObject *c, PyObject *result) {
  PyObject *close = PyObject_GetAttr(result, s_close);
  PyObject *r = close != NULL ? PyObject_CallNoArgs(close) : NULL;
  Py_XDECREF(close);
  if (r == NULL) {
    if (close == NULL && PyErr_ExceptionMatches(PyExc_AttributeError))
      PyErr_Clear(); /* none to call */
    else
      pyb_log_exception(pyb_state_from_type(Py_TYPE(c)), "the WSGI app's close() raised", NULL);
    if (PyErr_Occurred())
      PyErr_Clear();
  }
  Py_XDECREF(r);
}

/* The Content-Length the app gave among sr's headers, when it is all digits
 * (at most 18 of them); -1 when there is none or another form (the Python
 * path judges those). */
static long long app_length(StartObject *sr) {
  Py_ssize_t count = PyList_GET_SIZE(sr->headers);
  for (Py_ssize_t i = 0; i < count; i++) {
    PyObject *pair = PyList_GET_ITEM(sr->headers, i);
    if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2)
      return -1;
    PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
    if (!PyUnicode_CheckExact(name) || !PyUnicode_IS_ASCII(name) ||
        PyUnicode_GET_LENGTH(name) != 14 ||
        strncasecmp((const char *)PyUnicode_1BYTE_DATA(name), "content-length", 14) != 0)
      continue;
    if (!PyUnicode_CheckExact(value) || !PyUnicode_IS_ASCII(value))
      return -1;
    return pyb_length_digits((const char *)PyUnicode_1BYTE_DATA(value),
                             PyUnicode_GET_LENGTH(value));
  }
  return -1;
}

/*
 * An iterable that is not a list or tuple (a generator, werkzeug's
 * ClosingIterator, Django's HttpResponse), under a Content-Length of at most
 * WSGI_BUFFER_LIMIT the app gave with start_response before returning: what
 * WSGIHandler._respond does for it (its chunks joined and answered in one
 * piece), here in C: the chunks joined, answered by quick_answer or else by
 * finish() with the joined body as a one-item list, then result.close().
 * Returns NULL with no exception when the iterable is not one of those (the
 * caller hands it to finish()); else what the call returns.
 */
#define WSGI_BUFFER_LIMIT (1 << 20) /* wsgi.py's BUFFER_LIMIT */

/* The TypeError _join raises for a chunk that is not bytes-like. */
static int not_bytes(PyObject *x) {
  if (PyBytes_Check(x) || PyByteArray_Check(x) || PyMemoryView_Check(x))
    return 0;
  PyErr_Format(PyExc_TypeError, "the WSGI app's body yielded %.100s, not bytes",
               Py_TYPE(x)->tp_name);
  return 1;
}

static PyObject *iter_answer(CallObject *c, PyObject *request, StartObject *sr, PyObject *result,
                             PyObject *env) {
  if (sr->status == NULL || sr->streaming || PyList_CheckExact(result) ||
      PyTuple_CheckExact(result) || PyBytes_Check(result) || PyUnicode_Check(result))
    return NULL;
  /* wsgi.py's FileWrapper and werkzeug's range wrapper around it: sent as files */
  const char *tn = Py_TYPE(result)->tp_name;
  const char *dot = strrchr(tn, '.');
  tn = dot ? dot + 1 : tn;
  if (strcmp(tn, "FileWrapper") == 0 || strcmp(tn, "_RangeWrapper") == 0)
    return NULL;
  long long length = app_length(sr);
  if (length < 0 || length > WSGI_BUFFER_LIMIT)
    return NULL;
  PyObject *it = PyObject_GetIter(result), *first = NULL, *chunks = NULL, *body = NULL;
  PyObject *chunk, *one, *out;
  if (it == NULL)
    goto fail;
  while ((chunk = PyIter_Next(it)) != NULL) {
    if (first == NULL && chunks == NULL) {
      first = chunk; /* mostly the only one */
      continue;
    }
    if (chunks == NULL) {
      if ((chunks = PyList_New(0)) == NULL || PyList_Append(chunks, first) < 0) {
        Py_DECREF(chunk);
        goto fail;
      }
      Py_CLEAR(first);
    }
    int bad = PyList_Append(chunks, chunk);
    Py_DECREF(chunk);
    if (bad < 0)
      goto fail;
  }
  if (PyErr_Occurred())
    goto fail;
  Py_CLEAR(it);
  if (chunks != NULL) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(chunks); i++)
      if (not_bytes(PyList_GET_ITEM(chunks, i))) /* the first, as _join names it */
        goto fail;
    if ((body = PyObject_CallMethodOneArg(v_no_bytes, s_join, chunks)) == NULL)
      goto fail;
    Py_CLEAR(chunks);
  } else if (first == NULL) {
    body = Py_NewRef(v_no_bytes);
  } else if (PyBytes_CheckExact(first)) {
    body = first;
    first = NULL;
  } else if (PyUnicode_Check(first)) {
    /* one str: sent UTF-8 encoded, as the Python path's Response(str) does */
    if ((body = PyUnicode_AsUTF8String(first)) == NULL)
      goto fail;
    Py_CLEAR(first);
  } else {
    if (not_bytes(first) || (body = PyBytes_FromObject(first)) == NULL)
      goto fail;
    Py_CLEAR(first);
  }
  if ((one = PyList_New(1)) == NULL)
    goto fail;
  PyList_SET_ITEM(one, 0, body); /* steals */
  body = NULL;
  if (quick_answer(c, sr, one))
    out = Py_NewRef(Py_None);
  else
    out = PyObject_CallFunctionObjArgs(c->finish, request, (PyObject *)sr, one, env, NULL);
  Py_DECREF(one);
  goto done;

fail:
  Py_XDECREF(it);
  Py_XDECREF(first);
  Py_XDECREF(chunks);
  Py_XDECREF(body);
  out = failed_with(c, request, (PyObject *)sr, "the WSGI app's response failed");
done:;
  PyObject *t, *v, *tb; /* close() runs with the answer's exception, if any, kept aside */
  PyErr_Fetch(&t, &v, &tb);
  close_result(c, result);
  PyErr_Restore(t, v, tb);
  return out;
}

static PyObject *call_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames) {
  CallObject *c = CALL(op);
  if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
    PyErr_SetString(PyExc_TypeError, "WSGICall takes one Request");
    return NULL;
  }
  PyObject *request = args[0];
  pyb_state *st = pyb_state_from_type(Py_TYPE(op));
  if (!PyObject_TypeCheck(request, st->request_type)) {
    PyErr_Format(PyExc_TypeError, "WSGICall takes a Request, not %.100s",
                 Py_TYPE(request)->tp_name);
    return NULL;
  }
  PyObject *sr = start_new(st->wsgi_start_type, request, c->write);
  if (sr == NULL)
    return NULL;
  PyObject *out = NULL;
  PyObject *env = build_environ(c, request);
  if (env == NULL) {
    out = failed(c, request, sr);
    Py_DECREF(sr);
    return out;
  }
  PyObject *call_args[2] = {env, sr};
  PyObject *result = PyObject_Vectorcall(c->app, call_args, 2, NULL);
  if (result == NULL) {
    out = failed(c, request, sr);
  } else if (quick_answer(c, START(sr), result)) {
    out = Py_NewRef(Py_None);
  } else if ((out = iter_answer(c, request, START(sr), result, env)) == NULL && !PyErr_Occurred()) {
    out = PyObject_CallFunctionObjArgs(c->finish, request, sr, result, env, NULL);
  }
  Py_XDECREF(result);
  Py_DECREF(env);
  Py_DECREF(sr);
  return out;
}

static PyObject *call_call(PyObject *op, PyObject *args, PyObject *kwargs) {
  return PyVectorcall_Call(op, args, kwargs);
}

PyDoc_STRVAR(environ_doc, "environ(request) -> dict\n\nThe environ the app would get for "
                          "request (what WSGIHandler._environ\nbuilds in Python).");
static PyObject *call_environ(PyObject *op, PyObject *request) {
  pyb_state *st = pyb_state_from_type(Py_TYPE(op));
  if (!PyObject_TypeCheck(request, st->request_type)) {
    PyErr_Format(PyExc_TypeError, "environ() takes a Request, not %.100s",
                 Py_TYPE(request)->tp_name);
    return NULL;
  }
  return build_environ(CALL(op), request);
}

static PyObject *call_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"app",   "base",   "script_name", "proxies", "stream_input", "bytes_io",
                           "empty", "finish", "fail",        "write",   "scheme_fixed", NULL};
  PyObject *a[10];
  int scheme_fixed = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!UOOOOOOO|p:WSGICall", kwlist, &a[0],
                                   &PyDict_Type, &a[1], &a[2], &a[3], &a[4], &a[5], &a[6], &a[7],
                                   &a[8], &a[9], &scheme_fixed))
    return NULL;
  if (intern_all() < 0)
    return NULL;
  CallObject *c = (CallObject *)type->tp_alloc(type, 0);
  if (c == NULL)
    return NULL;
  PyObject **slots[10] = {&c->app,          &c->base,     &c->script_name, &c->proxies,
                          &c->stream_input, &c->bytes_io, &c->empty_input, &c->finish,
                          &c->fail,         &c->write};
  for (int i = 0; i < 10; i++)
    *slots[i] = Py_NewRef(a[i]);
  c->st = pyb_state_from_type(type);
  c->scheme_fixed = scheme_fixed;
  c->vectorcall = call_vectorcall;
  return (PyObject *)c;
}

static int call_traverse(PyObject *op, visitproc visit, void *arg) {
  CallObject *c = CALL(op);
  Py_VISIT(Py_TYPE(op));
  Py_VISIT(c->app);
  Py_VISIT(c->base);
  Py_VISIT(c->proxies);
  Py_VISIT(c->stream_input);
  Py_VISIT(c->bytes_io);
  Py_VISIT(c->empty_input);
  Py_VISIT(c->finish);
  Py_VISIT(c->fail);
  Py_VISIT(c->write);
  return 0;
}

static int call_clear(PyObject *op) {
  CallObject *c = CALL(op);
  Py_CLEAR(c->app);
  Py_CLEAR(c->base);
  Py_CLEAR(c->script_name);
  Py_CLEAR(c->proxies);
  Py_CLEAR(c->stream_input);
  Py_CLEAR(c->bytes_io);
  Py_CLEAR(c->empty_input);
  Py_CLEAR(c->finish);
  Py_CLEAR(c->fail);
  Py_CLEAR(c->write);
  Py_CLEAR(c->server_name);
  Py_CLEAR(c->server_port);
  return 0;
}

static void call_dealloc(PyObject *op) {
  PyTypeObject *tp = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  call_clear(op);
  tp->tp_free(op);
  Py_DECREF(tp);
}

static PyMemberDef call_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CallObject, vectorcall), READONLY, NULL},
    {NULL},
};

static PyMethodDef call_methods[] = {
    {"environ", call_environ, METH_O, environ_doc},
    {NULL},
};

PyDoc_STRVAR(call_doc, "WSGICall(app, base, script_name, proxies, stream_input, bytes_io, empty, "
                       "finish, fail, write)\n\nCall the WSGI app for a Request: the environ and "
                       "start_response in C, and the\ncommon answers (one bytes object; an "
                       "iterable under a Content-Length of\nat most 1 MiB, joined) in one "
                       "pmu_respond; otherwise finish(request,\nstart_response, result, environ). "
                       "See WSGIHandler in pymongoose_uring/wsgi.py.");

static PyType_Slot call_slots[] = {
    {Py_tp_doc, (void *)call_doc}, {Py_tp_new, call_new},           {Py_tp_call, call_call},
    {Py_tp_dealloc, call_dealloc}, {Py_tp_traverse, call_traverse}, {Py_tp_clear, call_clear},
    {Py_tp_members, call_members}, {Py_tp_methods, call_methods},   {0, NULL},
};

PyType_Spec pyb_wsgi_call_spec = {
    .name = "pymongoose_uring._pmu.WSGICall",
    .basicsize = sizeof(CallObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = call_slots,
};
