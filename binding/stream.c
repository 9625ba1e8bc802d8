/*
 * stream.c: what a request shares with the engine's worker threads once it
 * streams: the queue of its body pieces, the drain and disconnect signals,
 * and the Python waiters those signals wake (see pyb_reqio in binding.h).
 *
 * Threads and locks. A worker thread calls on_body, on_drain and
 * on_disconnect without the GIL. It finds the request's pyb_reqio through
 * request->user under a link lock (one of a few, chosen by the request's
 * worker index) and takes a reference, so that the Request answering the
 * request on another thread at the same moment cannot free it under the
 * callback. Everything else in a pyb_reqio is under its own mutex.
 *
 * Two rules keep the GIL and these mutexes from deadlocking: nobody waits
 * for the GIL while holding one of them, and nothing that could run Python
 * code (a garbage collection, a finalizer) happens while holding one. A
 * worker thread therefore only looks under the lock at whether a Python
 * waiter exists; only then does it take the GIL, and it takes the waiter
 * under the lock again, with the GIL held, before running anything.
 */
#include "binding.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LINK_LOCKS 16

/* Guard request->user, the link from an engine request to its pyb_reqio. */
static pthread_mutex_t link_locks[LINK_LOCKS] = {[0 ... LINK_LOCKS - 1] =
                                                     PTHREAD_MUTEX_INITIALIZER};

static pthread_mutex_t *link_lock(const pmu_request_t *request) {
  return &link_locks[request->thread % LINK_LOCKS];
}

double pyb_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wait on io->cond until `deadline` (< 0: no deadline). Returns ETIMEDOUT
 * once it has passed. io->lock held. */
static int cond_wait_until(pyb_reqio *io, double deadline) {
  if (deadline < 0)
    return pthread_cond_wait(&io->cond, &io->lock);
  struct timespec ts;
  double whole = (double)(time_t)deadline;
  ts.tv_sec = (time_t)deadline;
  ts.tv_nsec = (long)((deadline - whole) * 1e9);
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return pthread_cond_timedwait(&io->cond, &io->lock, &ts);
}

/* ---- life ---- */

pyb_reqio *pyb_reqio_new(pyb_state *st) {
  pyb_reqio *io = PyMem_RawCalloc(1, sizeof *io);
  if (io == NULL) {
    PyErr_NoMemory();
    return NULL;
  }
  pthread_condattr_t attr;
  int ok = pthread_condattr_init(&attr) == 0;
  if (ok) {
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    ok = pthread_cond_init(&io->cond, &attr) == 0;
    pthread_condattr_destroy(&attr);
  }
  if (!ok) {
    PyMem_RawFree(io);
    PyErr_NoMemory();
    return NULL;
  }
  if (pthread_mutex_init(&io->lock, NULL) != 0) {
    pthread_cond_destroy(&io->cond);
    PyMem_RawFree(io);
    PyErr_NoMemory();
    return NULL;
  }
  atomic_init(&io->refs, 1);
  io->st = st;
  return io;
}

/* Drop one reference; the last frees the queue. Any thread, GIL or not:
 * by then the Request has dropped every Python object (pyb_reqio_drop). */
static void reqio_release(pyb_reqio *io) {
  if (atomic_fetch_sub_explicit(&io->refs, 1, memory_order_acq_rel) != 1)
    return;
  pyb_piece *p = io->head;
  while (p != NULL) {
    pyb_piece *next = p->next;
    free(p);
    p = next;
  }
  pthread_cond_destroy(&io->cond);
  pthread_mutex_destroy(&io->lock);
  PyMem_RawFree(io);
}

/* The pyb_reqio linked to `request`, with a reference, or NULL. */
static pyb_reqio *reqio_acquire(pmu_request_t *request) {
  pthread_mutex_t *m = link_lock(request);
  pthread_mutex_lock(m);
  pyb_reqio *io = request->user;
  if (io != NULL)
    atomic_fetch_add_explicit(&io->refs, 1, memory_order_relaxed);
  pthread_mutex_unlock(m);
  return io;
}

/* Point request->user at io under the link lock, then mark io gone if the
 * client already is. The engine marks a request gone before it calls
 * on_disconnect, which reads the link under the same lock: either that call
 * finds io, or the mark is already visible here. Takes no reference. */
static void set_link(pyb_reqio *io, pmu_request_t *request) {
  pthread_mutex_t *m = link_lock(request);
  pthread_mutex_lock(m);
  request->user = io;
  pthread_mutex_unlock(m);
  if (pmu_request_gone(request)) {
    pthread_mutex_lock(&io->lock);
    io->gone = 1;
    pthread_cond_broadcast(&io->cond);
    pthread_mutex_unlock(&io->lock);
  }
  if (pmu_request_peer_eof(request)) { /* the same, for on_peer_eof */
    pthread_mutex_lock(&io->lock);
    io->peer_eof = 1;
    pthread_mutex_unlock(&io->lock);
  }
}

void pyb_reqio_link(pyb_reqio *io, pmu_request_t *request) {
  atomic_fetch_add_explicit(&io->refs, 1, memory_order_relaxed);
  set_link(io, request);
}

/* ---- waking Python ---- */

/* Run what the taken objects ask for; GIL held, no lock held. Each
 * argument is a stolen reference or NULL. read_waiter gets a read_ready
 * step on its loop; each drain waiter's future gets `drained`; callbacks
 * are called with no argument. Errors are logged, never raised. */
static void wake_python(pyb_state *st, PyObject *read_waiter, PyObject *drain_waiters, int drained,
                        PyObject *callbacks) {
  if (read_waiter != NULL) {
    PyObject *loop = PyTuple_GET_ITEM(read_waiter, 0);
    PyObject *r =
        PyObject_CallMethod(loop, "call_soon_threadsafe", "OO", st->read_ready, read_waiter);
    if (r == NULL)
      pyb_log_exception(st, "could not wake a read_async() waiter", NULL);
    Py_XDECREF(r);
    Py_DECREF(read_waiter);
  }
  if (drain_waiters != NULL) {
    PyObject *value = drained ? Py_True : Py_False;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(drain_waiters); i++) {
      PyObject *w = PyList_GET_ITEM(drain_waiters, i);
      PyObject *r = PyObject_CallMethod(PyTuple_GET_ITEM(w, 0), "call_soon_threadsafe", "OOO",
                                        st->set_future, PyTuple_GET_ITEM(w, 1), value);
      if (r == NULL)
        pyb_log_exception(st, "could not wake a write_async() waiter", NULL);
      Py_XDECREF(r);
    }
    Py_DECREF(drain_waiters);
  }
  if (callbacks != NULL) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(callbacks); i++) {
      PyObject *r = PyObject_CallNoArgs(PyList_GET_ITEM(callbacks, i));
      if (r == NULL)
        pyb_log_exception(st, "a disconnect callback raised", NULL);
      Py_XDECREF(r);
    }
    Py_DECREF(callbacks);
  }
}

enum { WAKE_READ = 1, WAKE_DRAIN = 2, WAKE_CALLBACKS = 4 };

/* Take the Python objects named by `what` and run them; GIL held. */
static void take_and_wake(pyb_reqio *io, int what) {
  pthread_mutex_lock(&io->lock);
  PyObject *rw = NULL, *dw = NULL, *cb = NULL;
  if (what & WAKE_READ) {
    rw = io->read_waiter;
    io->read_waiter = NULL;
  }
  if (what & WAKE_DRAIN) {
    dw = io->drain_waiters;
    io->drain_waiters = NULL;
  }
  if (what & WAKE_CALLBACKS) {
    cb = io->callbacks;
    io->callbacks = NULL;
  }
  int drained = !io->gone;
  pthread_mutex_unlock(&io->lock);
  wake_python(io->st, rw, dw, drained, cb);
}

/* On a worker thread: take the GIL and wake, if the test under the lock
 * found anything to wake. */
static void wake_from_ring(pyb_reqio *io, int what) {
  pyb_gil g;
  pyb_ring_gil_enter(&g);
  take_and_wake(io, what);
  pyb_ring_gil_leave(&g);
}

int pyb_reqio_cut(pyb_reqio *io, pmu_request_t *request) {
  pthread_mutex_t *m = link_lock(request);
  int linked = 0;
  pthread_mutex_lock(m);
  if (request->user == io) {
    request->user = NULL;
    linked = 1;
  }
  pthread_mutex_unlock(m);
  return linked;
}

void pyb_reqio_relink(pyb_reqio *io, pmu_request_t *request) { set_link(io, request); }

void pyb_reqio_finish_unlink(pyb_reqio *io, int linked) {
  pthread_mutex_lock(&io->lock);
  io->unlinked = 1;
  pthread_cond_broadcast(&io->cond);
  /* Callbacks will never be called now: dropping them also breaks the
   * cycles they often make with the Request. */
  PyObject *rw = io->read_waiter, *dw = io->drain_waiters, *cb = io->callbacks;
  io->read_waiter = io->drain_waiters = io->callbacks = NULL;
  int drained = !io->gone;
  pthread_mutex_unlock(&io->lock);
  Py_XDECREF(cb);
  wake_python(io->st, rw, dw, drained, NULL);
  if (linked)
    reqio_release(io); /* never the last: the Request holds one */
}

void pyb_reqio_unlink(pyb_reqio *io, pmu_request_t *request) {
  pyb_reqio_finish_unlink(io, pyb_reqio_cut(io, request));
}

void pyb_reqio_drop(pyb_reqio *io) {
  pthread_mutex_lock(&io->lock);
  PyObject *rw = io->read_waiter, *dw = io->drain_waiters, *cb = io->callbacks;
  io->read_waiter = io->drain_waiters = io->callbacks = NULL;
  pthread_mutex_unlock(&io->lock);
  /* A read waiter holds the Request, so there is none here; a drain
   * waiter's future is told False rather than left pending forever. */
  Py_XDECREF(cb);
  wake_python(io->st, rw, dw, 0, NULL);
  reqio_release(io);
}

int pyb_reqio_traverse(pyb_reqio *io, visitproc visit, void *arg) {
  /* Every writer of io->callbacks holds the GIL, as the collector does: the
   * list read here stays until the visit is done. */
  pthread_mutex_lock(&io->lock);
  PyObject *cb = io->callbacks;
  pthread_mutex_unlock(&io->lock);
  Py_VISIT(cb);
  return 0;
}

void pyb_reqio_clear_callbacks(pyb_reqio *io) {
  pthread_mutex_lock(&io->lock);
  PyObject *cb = io->callbacks;
  io->callbacks = NULL;
  pthread_mutex_unlock(&io->lock);
  Py_XDECREF(cb); /* may run Python code: not under the lock */
}

/* ---- the body queue ---- */

/* Copy n <= io->queued bytes out of the queue, freeing emptied pieces.
 * io->lock held. */
static void copy_out(pyb_reqio *io, char *dst, size_t n) {
  io->queued -= n;
  while (n > 0) {
    pyb_piece *p = io->head;
    size_t avail = p->len - io->head_off;
    size_t k = avail < n ? avail : n;
    memcpy(dst, p->data + io->head_off, k);
    dst += k;
    n -= k;
    io->head_off += k;
    if (io->head_off == p->len) {
      io->head = p->next;
      if (io->head == NULL)
        io->tail = NULL;
      io->head_off = 0;
      free(p);
    }
  }
}

int pyb_reqio_take(pyb_reqio *io, Py_ssize_t size, PyObject *waiter, PyObject **out) {
  *out = NULL;
  pthread_mutex_lock(&io->lock);
  if (io->queued > 0 && size != 0) {
    size_t n = (size < 0 || (size_t)size > io->queued) ? io->queued : (size_t)size;
    /* A bytes object is not tracked by the garbage collector: allocating
     * it runs no Python code, so it may happen under the lock. */
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (b != NULL)
      copy_out(io, PyBytes_AS_STRING(b), n);
    pthread_mutex_unlock(&io->lock);
    if (b == NULL)
      return PYB_READ_ERROR;
    *out = b;
    return PYB_READ_DONE;
  }
  if (size == 0 || io->body_done) {
    pthread_mutex_unlock(&io->lock);
    *out = PyBytes_FromStringAndSize("", 0);
    return *out ? PYB_READ_DONE : PYB_READ_ERROR;
  }
  if (io->gone) {
    pthread_mutex_unlock(&io->lock);
    PyErr_SetString(io->st->disconnected,
                    "the client closed the connection before the end of the request body");
    return PYB_READ_ERROR;
  }
  if (io->unlinked) {
    pthread_mutex_unlock(&io->lock);
    PyErr_SetString(PyExc_RuntimeError,
                    "the request was answered before its body was read; the engine discards "
                    "the rest of the body");
    return PYB_READ_ERROR;
  }
  if (waiter != NULL) {
    if (io->read_waiter != NULL) {
      pthread_mutex_unlock(&io->lock);
      PyErr_SetString(PyExc_RuntimeError, "another read_async() on this request is still waiting");
      return PYB_READ_ERROR;
    }
    io->read_waiter = Py_NewRef(waiter);
  }
  pthread_mutex_unlock(&io->lock);
  return PYB_READ_WAIT;
}

void pyb_reqio_wait_data(pyb_reqio *io, double deadline) {
  pthread_mutex_lock(&io->lock);
  while (!(io->queued || io->body_done || io->gone || io->unlinked))
    if (cond_wait_until(io, deadline) == ETIMEDOUT)
      break;
  pthread_mutex_unlock(&io->lock);
}

/* ---- drain ---- */

uint64_t pyb_reqio_drain_seq(pyb_reqio *io, int *gone) {
  pthread_mutex_lock(&io->lock);
  uint64_t seq = io->drain_seq;
  *gone = io->gone;
  pthread_mutex_unlock(&io->lock);
  return seq;
}

int pyb_reqio_wait_drain(pyb_reqio *io, uint64_t seq, double deadline) {
  int rc = 0;
  pthread_mutex_lock(&io->lock);
  for (;;) {
    if (io->gone) {
      rc = -1;
      break;
    }
    if (io->drain_seq != seq || io->unlinked) {
      rc = 1;
      break;
    }
    if (cond_wait_until(io, deadline) == ETIMEDOUT) {
      rc = io->gone ? -1 : (io->drain_seq != seq || io->unlinked) ? 1 : 0;
      break;
    }
  }
  pthread_mutex_unlock(&io->lock);
  return rc;
}

int pyb_reqio_add_drain_waiter(pyb_reqio *io, uint64_t seq, PyObject *waiter) {
  /* A list made before locking: making one may collect garbage. */
  PyObject *fresh = PyList_New(1);
  if (fresh == NULL)
    return -2;
  PyList_SET_ITEM(fresh, 0, Py_NewRef(waiter));
  int rc;
  pthread_mutex_lock(&io->lock);
  if (io->gone) {
    rc = -1;
  } else if (io->drain_seq != seq || io->unlinked) {
    rc = 0;
  } else if (io->drain_waiters == NULL) {
    io->drain_waiters = fresh;
    fresh = NULL;
    rc = 1;
  } else {
    rc = PyList_Append(io->drain_waiters, waiter) < 0 ? -2 : 1; /* a realloc, no GC */
  }
  pthread_mutex_unlock(&io->lock);
  Py_XDECREF(fresh);
  return rc;
}

/* ---- disconnect ---- */

int pyb_reqio_add_callback(pyb_reqio *io, PyObject *fn) {
  PyObject *fresh = PyList_New(1);
  if (fresh == NULL)
    return -1;
  PyList_SET_ITEM(fresh, 0, Py_NewRef(fn));
  int rc = 1;
  pthread_mutex_lock(&io->lock);
  if (io->gone || io->peer_eof) {
    rc = 0;
  } else if (io->unlinked) {
    rc = 1; /* answered: it will never be called */
  } else if (io->callbacks == NULL) {
    io->callbacks = fresh;
    fresh = NULL;
  } else if (PyList_Append(io->callbacks, fn) < 0) {
    rc = -1;
  }
  pthread_mutex_unlock(&io->lock);
  Py_XDECREF(fresh);
  return rc;
}

int pyb_reqio_gone(pyb_reqio *io) {
  pthread_mutex_lock(&io->lock);
  int gone = io->gone;
  pthread_mutex_unlock(&io->lock);
  return gone;
}

int pyb_reqio_body_done(pyb_reqio *io) {
  pthread_mutex_lock(&io->lock);
  int done = io->body_done;
  pthread_mutex_unlock(&io->lock);
  return done;
}

/* ---- the engine's callbacks (worker thread, no GIL) ---- */

void pyb_stream_on_body(pmu_request_t *request, const void *data, size_t len, int last) {
  pyb_reqio *io = reqio_acquire(request);
  if (io == NULL)
    return; /* answered: the engine discards the rest */
  pyb_piece *p = NULL;
  if (len > 0 && (p = malloc(sizeof *p + len)) != NULL) {
    p->next = NULL;
    p->len = len;
    memcpy(p->data, data, len);
  }
  pthread_mutex_lock(&io->lock);
  if (p != NULL) {
    if (io->tail != NULL)
      io->tail->next = p;
    else
      io->head = p;
    io->tail = p;
    io->queued += len;
  } else if (len > 0) {
    io->gone = 1; /* no memory for the piece: the body is lost; say so */
  }
  if (last)
    io->body_done = 1;
  pthread_cond_broadcast(&io->cond);
  int wake = io->read_waiter != NULL;
  pthread_mutex_unlock(&io->lock);
  if (wake)
    wake_from_ring(io, WAKE_READ);
  reqio_release(io);
}

void pyb_stream_on_disconnect(pmu_request_t *request) {
  pyb_reqio *io = reqio_acquire(request);
  if (io == NULL)
    return;
  pthread_mutex_lock(&io->lock);
  io->gone = 1;
  pthread_cond_broadcast(&io->cond);
  int wake = io->read_waiter != NULL || io->drain_waiters != NULL || io->callbacks != NULL;
  pthread_mutex_unlock(&io->lock);
  if (wake)
    wake_from_ring(io, WAKE_READ | WAKE_DRAIN | WAKE_CALLBACKS);
  reqio_release(io);
}

/* The client half-closed: the disconnect callbacks run now (a long poll ends,
 * as on uvicorn, whose ASGI apps get http.disconnect on a FIN), but the
 * request is not gone: reads, writes and the answer go on as before. */
void pyb_stream_on_peer_eof(pmu_request_t *request) {
  pyb_reqio *io = reqio_acquire(request);
  if (io == NULL)
    return;
  pthread_mutex_lock(&io->lock);
  io->peer_eof = 1;
  int wake = io->callbacks != NULL;
  pthread_mutex_unlock(&io->lock);
  if (wake)
    wake_from_ring(io, WAKE_CALLBACKS);
  reqio_release(io);
}

void pyb_stream_on_drain(pmu_request_t *request) {
  pyb_reqio *io = reqio_acquire(request);
  if (io == NULL)
    return;
  pthread_mutex_lock(&io->lock);
  io->drain_seq++;
  pthread_cond_broadcast(&io->cond);
  int wake = io->drain_waiters != NULL;
  pthread_mutex_unlock(&io->lock);
  if (wake)
    wake_from_ring(io, WAKE_DRAIN);
  reqio_release(io);
}

/* ---- futures ---- */

int pyb_future_done(PyObject *future) {
  PyObject *done = PyObject_CallMethod(future, "done", NULL);
  if (done == NULL)
    return -1;
  int is_done = PyObject_IsTrue(done);
  Py_DECREF(done);
  return is_done;
}

/* fn(future, value) on the loop's thread: set the result unless the
 * future is already done (cancelled by its task, say). */
static PyObject *set_future(PyObject *unused, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "_set_future(future, value)");
    return NULL;
  }
  int is_done = pyb_future_done(args[0]);
  if (is_done < 0)
    return NULL;
  if (!is_done) {
    PyObject *r = PyObject_CallMethod(args[0], "set_result", "O", args[1]);
    if (r == NULL)
      return NULL;
    Py_DECREF(r);
  }
  Py_RETURN_NONE;
}

PyMethodDef pyb_set_future_def = {
    "_set_future", (PyCFunction)(void (*)(void))set_future, METH_FASTCALL,
    "_set_future(future, value): set the result unless the future is done."};
