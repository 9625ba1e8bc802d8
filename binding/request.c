/*
 * request.c: the Request type, a view over one engine request.
 *
 * A Request is created for every request of a batch, so it is cheap: no
 * attribute built until asked for (a hello-world handler that reads nothing
 * costs one small allocation). It is a garbage-collected type, since a
 * handler can make it part of a cycle (request.params["self"] = request, a
 * disconnect callback that refers to it), but it is tracked by the collector
 * only once it holds an object that could refer back (params, query,
 * headers, a disconnect callback): strs, bytes and address tuples cannot. Attributes read the
 * engine's pmu_request_t, which stays valid only until the request is answered. If anything besides
 * the batch loop still holds the Request when it is answered, its data is first copied into one
 * block the Request owns (the "snapshot"), so attributes keep working; otherwise nothing is copied.
 *
 * Every request is answered exactly once: by the batch loop with the
 * handler's result, by reply() from any thread, or, when the last reference
 * goes away unanswered (dropped, or collected in a cycle), by the
 * deallocator with a 500 and a warning.
 *
 * Streaming. A request may instead be answered piece by piece (start(),
 * write(), end()), and a body larger than the engine's stream threshold
 * arrives in pieces after the handler has seen the request (read(),
 * read_async()). Both go through a pyb_reqio (stream.c), made only when
 * needed, so a request that does neither pays nothing for them. A stream
 * that fails half-way (abort(), a handler that raised after start(), a
 * started stream dropped before end()) is aborted: the connection closes
 * without completing the body, so the client cannot take it for whole.
 */
#include "binding.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
  PyObject_HEAD
  pyb_state *st;             /* borrowed: the type holds the module */
  pmu_request_t *live;       /* engine request; NULL once answered */
  const pmu_request_t *view; /* what attributes read: live or snapshot; NULL if lost */
  pmu_request_t *snapshot;   /* owned copy, PyMem_Free'd on dealloc */
  /* Lazily built attributes (strong references or NULL). */
  PyObject *method, *path, *raw_path, *target, *query_string, *query, *headers, *body, *params,
      *client, *server;
  PyObject *unix_path;  /* the server's Unix socket path (str), or NULL */
  PyObject *connection; /* the Connection (conn.c), kept when answered while held; or NULL */
  pyb_reqio *io;        /* shared with the worker thread once streaming, or NULL */
  PyObject *unread;     /* streamed body bytes taken but not handed out, or NULL */
  size_t high_water;    /* the engine's output_high_water */
  size_t body_pos;      /* buffered body: bytes read() handed out */
  uint8_t streamed;     /* the body arrives in pieces (request.body_streaming) */
  uint8_t started;      /* start() was called: answered piece by piece */
  uint8_t ended;        /* the streamed answer was ended */
  int stream_status;    /* start()'s status, for on_answer */
  PyObject *on_answer;  /* _on_answer(fn): fn(status, length) once answered; or NULL */
  PyObject *tls;        /* request.tls (a dict) once built; NULL before (tls.c) */
} RequestObject;

#define REQ(o) ((RequestObject *)(o))

PyObject *pyb_request_new(pyb_state *st, pmu_request_t *request, PyObject *unix_path,
                          size_t high_water) {
  /* Allocated with a GC header, but not tracked until it can be in a cycle
   * (track()): most requests never are, and pay nothing more. */
  RequestObject *self = PyObject_GC_New(RequestObject, st->request_type); /* increfs the type */
  if (self == NULL)
    return NULL;
  memset((char *)self + sizeof(PyObject), 0, sizeof(RequestObject) - sizeof(PyObject));
  self->st = st;
  st->requests_alive++;
  self->live = request;
  self->view = request;
  self->unix_path = Py_XNewRef(unix_path);
  self->high_water = high_water;
  if (request->body_streaming) {
    /* Its pieces follow this batch: the queue must be there for them. */
    self->streamed = 1;
    self->io = pyb_reqio_new(st);
    if (self->io == NULL) {
      self->live = NULL; /* the caller answers it */
      Py_DECREF(self);
      return NULL;
    }
    pyb_reqio_link(self->io, request);
  }
  return (PyObject *)self;
}

/* Let the garbage collector see this Request: called before it keeps an
 * object that may refer back to it. */
static void track(RequestObject *self) {
  if (!PyObject_GC_IsTracked((PyObject *)self))
    PyObject_GC_Track((PyObject *)self);
}

int pyb_request_is_live(PyObject *request) {
  return REQ(request)->live != NULL && !REQ(request)->started;
}

/* The pyb_reqio of a live request, made and linked on first use. Returns
 * 0, or -1 with an exception. */
static int ensure_io(RequestObject *self) {
  if (self->io != NULL)
    return 0;
  if (self->live == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "this request was already answered");
    return -1;
  }
  self->io = pyb_reqio_new(self->st);
  if (self->io == NULL)
    return -1;
  pyb_reqio_link(self->io, self->live);
  return 0;
}

/* Keep the request's Connection object (when the server has a connection
 * handler), for request.connection once the engine's request is gone: called
 * when the request is answered while others hold it. The Connection may refer
 * back through its `user` slot, so the collector must see this Request from
 * now on. */
static void keep_connection(RequestObject *self) {
  if (self->connection != NULL || self->live == NULL)
    return;
  PyObject *conn = pyb_conn_object(pmu_request_conn(self->live)); /* borrowed */
  if (conn == NULL)
    return;
  self->connection = Py_NewRef(conn);
  track(self);
}

/*
 * Copy everything the view points to into one PyMem block, so attributes
 * outlive the engine's request. The body is skipped when request.body was
 * already built (the bytes object holds it). Returns 0, or -1 with
 * MemoryError set (the view is then lost).
 */
static int snapshot(RequestObject *self) {
  const pmu_request_t *r = self->live;
  keep_connection(self);
  /* The session's snapshot is the engine's, held by the live request only:
   * request.tls is built now, or never (a copy cannot reach the session). */
  if (r->tls && self->tls == NULL) {
    if ((self->tls = pyb_tls_request_dict(self->st, r)) == NULL)
      return -1;
    track(self); /* as get_tls: the dict may be made to hold anything */
  }
  size_t body_len = self->body ? 0 : r->body_len;
  size_t total = sizeof(pmu_request_t) + r->header_count * sizeof(pmu_header_t) + r->method_len +
                 r->target_len + r->path_len + r->query_len + 4 + body_len;
  for (size_t i = 0; i < r->header_count; i++)
    total += r->headers[i].name_len + r->headers[i].value_len;
  char *mem = PyMem_Malloc(total);
  if (mem == NULL) {
    PyErr_NoMemory();
    return -1;
  }
  pmu_request_t *copy = (pmu_request_t *)mem;
  *copy = *r;
  pmu_header_t *headers = (pmu_header_t *)(mem + sizeof(pmu_request_t));
  char *p = (char *)(headers + r->header_count);
#define COPY_STR(field, len)       \
  do {                             \
    if (r->len)                    \
      memcpy(p, r->field, r->len); \
    p[r->len] = '\0';              \
    copy->field = p;               \
    p += r->len + 1;               \
  } while (0)
  COPY_STR(method, method_len);
  COPY_STR(target, target_len);
  COPY_STR(path, path_len);
  COPY_STR(query, query_len);
#undef COPY_STR
  for (size_t i = 0; i < r->header_count; i++) {
    const pmu_header_t *h = &r->headers[i];
    memcpy(p, h->name, h->name_len);
    headers[i].name = p;
    headers[i].name_len = h->name_len;
    p += h->name_len;
    if (h->value_len)
      memcpy(p, h->value, h->value_len);
    headers[i].value = p;
    headers[i].value_len = h->value_len;
    p += h->value_len;
  }
  copy->headers = headers;
  if (body_len) {
    memcpy(p, r->body, body_len);
    copy->body = p;
  } else {
    copy->body = NULL;
    copy->body_len = self->body ? copy->body_len : 0;
  }
  copy->user = NULL;
  self->snapshot = copy;
  self->view = copy;
  return 0;
}

/*
 * Let go of the engine request before it is answered: cut the worker
 * thread's link to our pyb_reqio, and copy the request's data if others may
 * still read it. Returns the request, for the caller to answer at once.
 */
static pmu_request_t *detach(RequestObject *self, Py_ssize_t owner_refs) {
  pmu_request_t *live = self->live;
  if (self->io != NULL)
    pyb_reqio_unlink(self->io, live);
  if (self->view == live && Py_REFCNT(self) > owner_refs && snapshot(self) < 0) {
    PyErr_Clear(); /* attributes not yet built now raise; the answer still goes out */
    self->view = NULL;
  }
  if (self->view == live)
    self->view = NULL;
  self->live = NULL;
  return live;
}

/*
 * Call the _on_answer() callback, once: fn(status, length) with the status
 * the answer carries (0: the engine's file rules decide it) and the body's
 * length (None when not known here). An exception it raises is reported as
 * unraisable; one pending before is kept.
 */
static void fire_answered(RequestObject *self, int status, Py_ssize_t length) {
  PyObject *fn = self->on_answer;
  if (fn == NULL)
    return;
  self->on_answer = NULL;
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyObject *r = length >= 0 ? PyObject_CallFunction(fn, "in", status, length)
                            : PyObject_CallFunction(fn, "iO", status, Py_None);
  if (r == NULL)
    PyErr_WriteUnraisable(fn);
  Py_XDECREF(r);
  Py_DECREF(fn);
  PyErr_Restore(type, value, tb);
}

/*
 * Hand `response` to the engine, first copying the request's data if others
 * may still read it. The GIL stays held: from another thread pmu_respond()
 * only takes the ring's short queue mutex, which the engine never holds while
 * it runs a batch or a callback (the only places it waits for the GIL), so
 * releasing the GIL would cost more than it could save.
 */
static void send_response(RequestObject *self, const pmu_response_t *response,
                          Py_ssize_t owner_refs) {
  pmu_request_t *live = detach(self, owner_refs);
  int rc = pmu_respond(live, response);
  if (self->on_answer != NULL)
    fire_answered(self,
                  rc == -ENOMEM ? 503
                  : rc < 0      ? 500
                                : response->status,
                  rc < 0 ? -1 : (Py_ssize_t)response->body_len);
  if (rc == -ENOMEM)
    pyb_log_warning(self->st, "out of memory formatting a response: sent 503 and closed the "
                              "connection");
  else if (rc < 0)
    pyb_log_warning(self->st,
                    "the engine refused a response with status %d and sent 500 "
                    "instead (a final status must be 200..999)",
                    response->status);
}

/* Finish a started stream (pmu_respond_end), or cut it short
 * (pmu_respond_abort: what was written goes out, then the connection closes
 * without completing the body), copying the request's data first as
 * send_response does. */
static void end_stream(RequestObject *self, Py_ssize_t owner_refs, int abort) {
  pmu_request_t *live = detach(self, owner_refs);
  self->ended = 1;
  if (abort)
    pmu_respond_abort(live);
  else
    pmu_respond_end(live);
  if (self->on_answer != NULL)
    fire_answered(self, self->stream_status, -1);
  pyb_drain_released(self->st);
}

static int refuse_started(RequestObject *self) {
  PyErr_SetString(PyExc_RuntimeError,
                  self->ended ? "this request's streamed answer was already ended"
                              : "a streamed answer was started on this request with start(); "
                                "finish it with write() and end(), not reply()");
  return -1;
}

/* Whether the request can still be answered whole: 0, or -1 with
 * RuntimeError when a streamed answer was started or it was answered. */
static int check_unanswered(RequestObject *self) {
  if (self->started)
    return refuse_started(self);
  if (self->live == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "this request was already answered");
    return -1;
  }
  return 0;
}

/* Answer with one file through pmu_serve_file (every HTTP rule of static
 * files), copying the request's data first as send_response does. The
 * descriptor in c, if any, goes to the engine. The GIL stays held: opening
 * and statx of a file are short, and the open-file cache makes them rarer. */
static void send_file(RequestObject *self, pyb_file_call *c, Py_ssize_t owner_refs) {
  pmu_request_t *live = detach(self, owner_refs);
  int fd = c->fd;
  c->fd = -1; /* the engine's from here on */
  int rc = pmu_serve_file(live, c->path, fd, &c->opts);
  if (self->on_answer != NULL)
    fire_answered(self, c->opts.status, -1);
  if (rc < 0 && rc != -ENOENT)
    pyb_log_warning(self->st, "serving a file failed (%s); the request was answered with an error",
                    strerror(-rc));
  pyb_drain_released(self->st);
}

int pyb_request_answer(PyObject *request, PyObject *result, Py_ssize_t owner_refs) {
  RequestObject *self = REQ(request);
  if (self->started)
    return refuse_started(self);
  if (Py_TYPE(result) == self->st->file_response_type ||
      PyObject_TypeCheck(result, self->st->file_response_type)) {
    pyb_file_call c;
    int rc = pyb_file_response_call(self->st, result, &c);
    if (rc == 0)
      send_file(self, &c, owner_refs);
    pyb_file_call_release(&c);
    return rc;
  }
  pyb_built built;
  if (pyb_build_response(self->st, result, &built) < 0) {
    pyb_built_release(&built);
    return -1;
  }
  if (built.zero_copy != NULL && pyb_zero_copy(self->st, &built.response, built.zero_copy) < 0)
    built.response.body_release = NULL; /* no memory for the note: copy instead */
  send_response(self, &built.response, owner_refs);
  pyb_built_release(&built);
  pyb_drain_released(self->st);
  return 0;
}

void pyb_request_answer_500(PyObject *request, Py_ssize_t owner_refs) {
  RequestObject *self = REQ(request);
  if (self->live == NULL)
    return;
  if (self->started) {
    /* The head is out and the body failed: make that visible to the client. */
    end_stream(self, owner_refs, 1);
    return;
  }
  send_response(self, &pyb_response_500, owner_refs);
}

/* "METHOD TARGET" of a request for log lines. New references or NULL. */
static void request_words(const pmu_request_t *r, PyObject **method, PyObject **target) {
  *method = PyUnicode_DecodeLatin1(r->method, (Py_ssize_t)r->method_len, NULL);
  *target = PyUnicode_DecodeLatin1(r->target,
                                   (Py_ssize_t)(r->target_len > 200 ? 200 : r->target_len), NULL);
}

static void request_dealloc(PyObject *op) {
  RequestObject *self = REQ(op);
  PyTypeObject *tp = Py_TYPE(op);
  PyObject_GC_UnTrack(op); /* what follows may run Python code */
  if (self->live != NULL || self->io != NULL) {
    /* What follows may log or wake waiters: keep a pending exception. */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (self->live != NULL) {
      PyObject *m, *t;
      request_words(self->live, &m, &t);
      if (m != NULL && t != NULL) {
        if (self->started)
          /* A streamed answer nobody will finish: it may lack its end, so
           * abort it (the client sees an incomplete answer, never a
           * truncated one passed off as whole). */
          pyb_log_warning(self->st,
                          "%U %U: the streamed answer was started but never ended; closed the "
                          "connection without completing it (call request.end() when the "
                          "body is complete)",
                          m, t);
        else if (pmu_request_gone(self->live) == 2)
          ; /* kept past the stop deadline: its ring thread said so at its end */
        else
          /* Nobody kept the request to answer it later: a handler returned
           * None without replying. Answer for it so the client is not left
           * hanging. */
          pyb_log_warning(self->st,
                          "%U %U: the handler returned None and dropped the request without "
                          "replying; sent 500 (keep the request and call request.reply() to "
                          "answer later)",
                          m, t);
      }
      Py_XDECREF(m);
      Py_XDECREF(t);
      PyErr_Clear();
      if (self->started) {
        end_stream(self, 0, 1);
      } else {
        pmu_request_t *live = detach(self, 0);
        pmu_respond(live, &pyb_response_500);
      }
      fire_answered(self, 500, -1);
    }
    if (self->io != NULL) {
      pyb_reqio_drop(self->io);
      self->io = NULL;
    }
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
  }
  Py_CLEAR(self->unread);
  Py_CLEAR(self->method);
  Py_CLEAR(self->path);
  Py_CLEAR(self->raw_path);
  Py_CLEAR(self->target);
  Py_CLEAR(self->query_string);
  Py_CLEAR(self->query);
  Py_CLEAR(self->headers);
  Py_CLEAR(self->body);
  Py_CLEAR(self->params);
  Py_CLEAR(self->client);
  Py_CLEAR(self->server);
  Py_CLEAR(self->unix_path);
  Py_CLEAR(self->connection);
  Py_CLEAR(self->on_answer);
  Py_CLEAR(self->tls);
  if (self->snapshot)
    PyMem_Free(self->snapshot);
  self->st->requests_alive--;
  PyObject_GC_Del(op);
  Py_DECREF(tp);
}

static int request_traverse(PyObject *op, visitproc visit, void *arg) {
  RequestObject *self = REQ(op);
  Py_VISIT(Py_TYPE(op)); /* a heap type's instances hold it */
  Py_VISIT(self->method);
  Py_VISIT(self->path);
  Py_VISIT(self->raw_path);
  Py_VISIT(self->target);
  Py_VISIT(self->query_string);
  Py_VISIT(self->query);
  Py_VISIT(self->headers);
  Py_VISIT(self->body);
  Py_VISIT(self->params);
  Py_VISIT(self->client);
  Py_VISIT(self->server);
  Py_VISIT(self->unix_path);
  Py_VISIT(self->unread);
  Py_VISIT(self->connection);
  Py_VISIT(self->on_answer);
  Py_VISIT(self->tls);
  if (self->io != NULL)
    return pyb_reqio_traverse(self->io, visit, arg);
  return 0;
}

/* Break a cycle: drop what may refer back (the rest is strs, bytes and
 * address tuples, which cannot). The deallocator then answers the request
 * as for any Request dropped unanswered. */
static int request_clear(PyObject *op) {
  RequestObject *self = REQ(op);
  Py_CLEAR(self->params);
  Py_CLEAR(self->query);
  Py_CLEAR(self->headers);
  Py_CLEAR(self->connection);
  Py_CLEAR(self->on_answer);
  Py_CLEAR(self->tls);
  if (self->io != NULL)
    pyb_reqio_clear_callbacks(self->io);
  return 0;
}

/* The view, or NULL with RuntimeError when the data is gone. */
static const pmu_request_t *view_of(RequestObject *self) {
  if (self->view == NULL)
    PyErr_SetString(PyExc_RuntimeError,
                    "this request was answered and its data released; read attributes before "
                    "replying");
  return self->view;
}

/* ---- attribute builders ---- */

static PyObject *build_method(RequestObject *self, const pmu_request_t *r) {
  pyb_state *st = self->st;
  for (int i = 0; i < PYB_M_COUNT; i++) {
    PyObject *m = st->methods[i];
    if ((size_t)PyUnicode_GET_LENGTH(m) == r->method_len &&
        memcmp(PyUnicode_DATA(m), r->method, r->method_len) == 0)
      return Py_NewRef(m);
  }
  return PyUnicode_DecodeLatin1(r->method, (Py_ssize_t)r->method_len, NULL);
}

static PyObject *decode_text(const char *s, size_t n) {
  return PyUnicode_DecodeUTF8(n ? s : "", (Py_ssize_t)n, "surrogateescape");
}

static PyObject *build_path(RequestObject *self, const pmu_request_t *r) {
  PyObject *raw = decode_text(r->path, r->path_len);
  if (raw == NULL || memchr(r->path, '%', r->path_len) == NULL)
    return raw;
  PyObject *decoded = PyObject_CallOneArg(self->st->unquote, raw);
  Py_DECREF(raw);
  return decoded;
}

/* (host, port) of an address's text `host` (len bytes). */
static PyObject *host_port(const char *host, size_t len, uint16_t port) {
  PyObject *h = PyUnicode_DecodeASCII(host, (Py_ssize_t)len, NULL);
  if (h == NULL)
    return NULL;
  PyObject *p = PyLong_FromLong(port);
  if (p == NULL) {
    Py_DECREF(h);
    return NULL;
  }
  PyObject *pair = PyTuple_Pack(2, h, p);
  Py_DECREF(h);
  Py_DECREF(p);
  return pair;
}

/* Dotted-quad text of an IPv4 address (network order) into out[16]; its
 * length. inet_ntop's sprintf costs more than the rest of the scope's
 * "client" (it is asked for on every request). */
static size_t ipv4_text(const struct in_addr *a, char out[16]) {
  const unsigned char *b = (const unsigned char *)&a->s_addr;
  size_t n = 0;
  for (int i = 0; i < 4; i++) {
    unsigned v = b[i];
    if (v >= 100)
      out[n++] = (char)('0' + v / 100);
    if (v >= 10)
      out[n++] = (char)('0' + v / 10 % 10);
    out[n++] = (char)('0' + v % 10);
    if (i < 3)
      out[n++] = '.';
  }
  return n;
}

/* (host, port) of an IP address; None for a family without one. */
static PyObject *make_address(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    char host[16];
    size_t n = ipv4_text(&in->sin_addr, host);
    return host_port(host, n, ntohs(in->sin_port));
  }
  if (ss->ss_family == AF_INET6) {
    char host[INET6_ADDRSTRLEN];
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host) == NULL)
      Py_RETURN_NONE;
    return host_port(host, strlen(host), ntohs(in6->sin6_port));
  }
  Py_RETURN_NONE;
}

/* The address cache: what make_address's text depends on (family, port,
 * address) as key; each address in one place by its hash. 1024 entries (32
 * KiB): 64 held a keep-alive benchmark's 64 clients and the server's address
 * with a third of them evicting each other on every request. */
#define ADDR_BITS 10
#define ADDR_SLOTS (1 << ADDR_BITS)
struct pyb_addr_entry {
  uint64_t lo, hi; /* the address's 16 bytes (IPv4: its 4 in lo) */
  uint32_t tag;    /* family << 16 | port */
  PyObject *value; /* NULL: empty */
};

PyObject *pyb_address(pyb_state *st, const struct sockaddr_storage *ss, PyObject *unix_path) {
  struct pyb_addr_entry key = {0};
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    uint32_t a;
    memcpy(&a, &in->sin_addr, 4);
    key.lo = a;
    key.tag = (uint32_t)AF_INET << 16 | in->sin_port;
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    memcpy(&key.lo, &in6->sin6_addr, 8);
    memcpy(&key.hi, (const char *)&in6->sin6_addr + 8, 8);
    key.tag = (uint32_t)AF_INET6 << 16 | in6->sin6_port;
  } else if (ss->ss_family == AF_UNIX && unix_path != NULL) {
    return Py_NewRef(unix_path);
  } else {
    Py_RETURN_NONE;
  }
  if (st->addrs == NULL && (st->addrs = PyMem_Calloc(ADDR_SLOTS, sizeof *st->addrs)) == NULL)
    return make_address(ss); /* no memory for the cache: uncached */
  /* One multiply-and-shift over the folded key: the port (which changes per
   * client) reaches the top bits the slot is taken from. */
  uint64_t h = (key.lo ^ key.hi * 0x9e3779b97f4a7c15u ^ (uint64_t)key.tag << 32 ^ key.tag) *
               0x9e3779b97f4a7c15u;
  struct pyb_addr_entry *e = &st->addrs[h >> (64 - ADDR_BITS)];
  if (e->value != NULL && e->tag == key.tag && e->lo == key.lo && e->hi == key.hi)
    return Py_NewRef(e->value);
  PyObject *value = make_address(ss);
  if (value != NULL) {
    key.value = Py_NewRef(value);
    PyObject *old = e->value;
    *e = key;
    Py_XDECREF(old);
  }
  return value;
}

int pyb_address_traverse(pyb_state *st, visitproc visit, void *arg) {
  for (int i = 0; st->addrs != NULL && i < ADDR_SLOTS; i++)
    Py_VISIT(st->addrs[i].value);
  return 0;
}

void pyb_address_clear(pyb_state *st) {
  struct pyb_addr_entry *addrs = st->addrs;
  st->addrs = NULL;
  for (int i = 0; addrs != NULL && i < ADDR_SLOTS; i++)
    Py_CLEAR(addrs[i].value);
  PyMem_Free(addrs);
}

/* One header's name or value as Python sees it: str, latin-1 decoded
 * (lossless), or bytes, lower-cased when `lower` (an ASGI name). New
 * reference or NULL. */
static PyObject *header_text(const char *p, size_t len, int as_bytes, int lower) {
  if (p == NULL)
    p = "";
  if (!as_bytes)
    return PyUnicode_DecodeLatin1(p, (Py_ssize_t)len, NULL);
  if (!lower)
    return PyBytes_FromStringAndSize(p, (Py_ssize_t)len);
  PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
  if (b == NULL)
    return NULL;
  char *out = PyBytes_AS_STRING(b);
  for (size_t k = 0; k < len; k++) {
    char c = p[k];
    out[k] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
  }
  return b;
}

/* The request's headers as a list of (name, value) pairs: str as sent
 * (Request.headers), or bytes with names lower-cased (what ASGI scopes
 * carry). New reference or NULL. */
static PyObject *build_header_pairs(const pmu_request_t *r, int as_bytes) {
  PyObject *list = PyList_New((Py_ssize_t)r->header_count);
  if (list == NULL)
    return NULL;
  for (size_t i = 0; i < r->header_count; i++) {
    const pmu_header_t *h = &r->headers[i];
    /* "N" steals both, and releases the one made when the other is NULL. */
    PyObject *pair = Py_BuildValue("(NN)", header_text(h->name, h->name_len, as_bytes, 1),
                                   header_text(h->value, h->value_len, as_bytes, 0));
    if (pair == NULL) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)i, pair); /* steals pair */
  }
  return list;
}

/* Build-once getter: `slot` caches, `build` makes it from the view. */
#define CACHED_GETTER(name, slot, build_expr)                \
  static PyObject *get_##name(PyObject *op, void *closure) { \
    RequestObject *self = REQ(op);                           \
    if (self->slot == NULL) {                                \
      const pmu_request_t *r = view_of(self);                \
      if (r == NULL)                                         \
        return NULL;                                         \
      self->slot = (build_expr);                             \
      if (self->slot == NULL)                                \
        return NULL;                                         \
    }                                                        \
    return Py_NewRef(self->slot);                            \
  }

CACHED_GETTER(method, method, build_method(self, r))
CACHED_GETTER(path, path, build_path(self, r))
CACHED_GETTER(raw_path, raw_path, decode_text(r->path, r->path_len))
CACHED_GETTER(target, target, decode_text(r->target, r->target_len))
CACHED_GETTER(query_string, query_string, decode_text(r->query, r->query_len))
CACHED_GETTER(whole_body, body,
              PyBytes_FromStringAndSize(r->body_len ? r->body : "", (Py_ssize_t)r->body_len))
CACHED_GETTER(client, client, pyb_address(self->st, &r->peer, NULL))
CACHED_GETTER(server, server, pyb_address(self->st, &r->local, self->unix_path))

static PyObject *get_body(PyObject *op, void *closure) {
  if (REQ(op)->streamed) {
    PyErr_SetString(PyExc_RuntimeError,
                    "this request's body is streamed (it is larger than stream_body_threshold): "
                    "read it with request.read() in a worker thread or await "
                    "request.read_async()");
    return NULL;
  }
  return get_whole_body(op, closure);
}

PyObject *pyb_request_method(PyObject *request) { return get_method(request, NULL); }
PyObject *pyb_request_path(PyObject *request) { return get_path(request, NULL); }
PyObject *pyb_request_client(PyObject *request) { return get_client(request, NULL); }
PyObject *pyb_request_server(PyObject *request) { return get_server(request, NULL); }

static PyObject *get_query(PyObject *op, void *closure) {
  RequestObject *self = REQ(op);
  if (self->query == NULL) {
    track(self);
    PyObject *qs = get_query_string(op, NULL);
    PyObject *support = qs ? pyb_support(self->st) : NULL;
    if (support != NULL)
      self->query = PyObject_CallMethod(support, "QueryParams", "O", qs);
    Py_XDECREF(qs);
    if (self->query == NULL)
      return NULL;
  }
  return Py_NewRef(self->query);
}

static PyObject *get_headers(PyObject *op, void *closure) {
  RequestObject *self = REQ(op);
  if (self->headers == NULL) {
    track(self);
    const pmu_request_t *r = view_of(self);
    if (r == NULL)
      return NULL;
    PyObject *support = pyb_support(self->st);
    PyObject *pairs = support ? build_header_pairs(r, 0) : NULL;
    if (pairs != NULL)
      self->headers = PyObject_CallMethod(support, "Headers", "O", pairs);
    Py_XDECREF(pairs);
    if (self->headers == NULL)
      return NULL;
  }
  return Py_NewRef(self->headers);
}

/* [(name, value)] as bytes, names lower-cased: what ASGI scopes carry. */
static PyObject *get_raw_headers(PyObject *op, void *closure) {
  const pmu_request_t *r = view_of(REQ(op));
  return r == NULL ? NULL : build_header_pairs(r, 1);
}

static PyObject *get_params(PyObject *op, void *closure) {
  RequestObject *self = REQ(op);
  if (self->params == NULL) {
    track(self);
    if ((self->params = PyDict_New()) == NULL)
      return NULL;
  }
  return Py_NewRef(self->params);
}

static int set_params(PyObject *op, PyObject *value, void *closure) {
  RequestObject *self = REQ(op);
  if (value != NULL && !PyDict_Check(value)) {
    PyErr_SetString(PyExc_TypeError, "params must be a dict");
    return -1;
  }
  track(self);
  Py_XSETREF(self->params, Py_XNewRef(value));
  return 0;
}

static PyObject *get_text(PyObject *op, void *closure) {
  PyObject *body = get_body(op, NULL);
  if (body == NULL)
    return NULL;
  PyObject *text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), "replace");
  Py_DECREF(body);
  return text;
}

static PyObject *get_http_version(PyObject *op, void *closure) {
  RequestObject *self = REQ(op);
  const pmu_request_t *r = view_of(self);
  if (r == NULL)
    return NULL;
  if (r->http_major == 1 && r->http_minor == 1)
    return Py_NewRef(self->st->version_11);
  if (r->http_major == 1 && r->http_minor == 0)
    return Py_NewRef(self->st->version_10);
  return PyUnicode_FromFormat("%u.%u", (unsigned)r->http_major, (unsigned)r->http_minor);
}

static PyObject *get_scheme(PyObject *op, void *closure) {
  RequestObject *self = REQ(op);
  const pmu_request_t *r = view_of(self);
  if (r == NULL)
    return NULL;
  return Py_NewRef(r->tls ? self->st->str_https : self->st->str_http);
}

/* request.tls: None on a plain connection, else the session's dict
 * (tls.c), built once. The dict may be made to hold anything, so the
 * collector sees the Request from then on. */
static PyObject *get_tls(PyObject *op, void *closure) {
  RequestObject *self = REQ(op);
  if (self->tls != NULL)
    return Py_NewRef(self->tls);
  const pmu_request_t *r = view_of(self);
  if (r == NULL)
    return NULL;
  if (!r->tls)
    Py_RETURN_NONE;
  if (self->live == NULL) { /* answered, and nothing kept it (snapshot builds it) */
    PyErr_SetString(PyExc_RuntimeError,
                    "this request was answered and its TLS session released; read request.tls "
                    "before replying");
    return NULL;
  }
  if ((self->tls = pyb_tls_request_dict(self->st, r)) == NULL)
    return NULL;
  track(self);
  return Py_NewRef(self->tls);
}

PyObject *pyb_request_asgi_tls(PyObject *request) {
  RequestObject *self = REQ(request);
  if (self->tls == NULL && self->live != NULL) /* request.tls not needed: skip it */
    return pyb_tls_asgi_from_request(self->st, self->live);
  PyObject *tls = get_tls(request, NULL);
  if (tls == NULL)
    return NULL;
  PyObject *ext = pyb_tls_asgi_from_dict(REQ(request)->st, tls);
  Py_DECREF(tls);
  return ext;
}

PyDoc_STRVAR(asgi_tls_doc, "_asgi_tls() -> dict or None\n\n"
                           "The ASGI 'tls' extension of this request's connection (a new dict),\n"
                           "None on a plain connection.");

static PyObject *request_asgi_tls(PyObject *op, PyObject *unused) {
  return pyb_request_asgi_tls(op);
}

static PyObject *get_keep_alive(PyObject *op, void *closure) {
  const pmu_request_t *r = view_of(REQ(op));
  return r ? PyBool_FromLong(r->keep_alive) : NULL;
}

static PyObject *get_thread(PyObject *op, void *closure) {
  const pmu_request_t *r = view_of(REQ(op));
  return r ? PyLong_FromUnsignedLong(r->thread) : NULL;
}

static PyObject *get_conn_id(PyObject *op, void *closure) {
  const pmu_request_t *r = view_of(REQ(op));
  return r ? PyLong_FromUnsignedLongLong(r->conn_id) : NULL;
}

static PyObject *get_answered(PyObject *op, void *closure) {
  return PyBool_FromLong(REQ(op)->live == NULL || REQ(op)->started);
}

static PyObject *get_body_streaming(PyObject *op, void *closure) {
  return PyBool_FromLong(REQ(op)->streamed);
}

static PyObject *get_disconnected(PyObject *op, void *closure) {
  RequestObject *self = REQ(op);
  if (self->io == NULL) {
    if (self->live == NULL)
      Py_RETURN_FALSE; /* answered while nobody asked: the last word was ours */
    if (ensure_io(self) < 0)
      return NULL;
  }
  return PyBool_FromLong(pyb_reqio_gone(self->io));
}

const pmu_request_t *pyb_request_view(PyObject *request) { return view_of(REQ(request)); }

int pyb_request_respond(PyObject *request, const pmu_response_t *response, Py_ssize_t owner_refs) {
  RequestObject *self = REQ(request);
  if (check_unanswered(self) < 0)
    return -1;
  send_response(self, response, owner_refs);
  pyb_drain_released(self->st);
  return 0;
}

int pyb_request_ws_upgrade(PyObject *request) {
  const pmu_request_t *r = REQ(request)->view;
  return r != NULL && r->ws_upgrade;
}

static PyObject *get_websocket(PyObject *op, void *closure) {
  return PyBool_FromLong(pyb_request_ws_upgrade(op));
}

PyObject *pyb_request_connection(PyObject *request) {
  RequestObject *self = REQ(request);
  if (self->connection != NULL)
    return self->connection;
  /* While the request is live the engine's handle says; nothing is kept (nor
   * the request tracked): the answer keeps it if others may read it later
   * (snapshot). */
  return self->live ? pyb_conn_object(pmu_request_conn(self->live)) : NULL;
}

static PyObject *get_connection(PyObject *op, void *closure) {
  PyObject *conn = pyb_request_connection(op);
  return Py_NewRef(conn ? conn : Py_None);
}

static PyGetSetDef request_getset[] = {
    {"method", get_method, NULL, "Request method, e.g. 'GET'.", NULL},
    {"path", get_path, NULL, "Path without the query, percent-decoded.", NULL},
    {"raw_path", get_raw_path, NULL, "Path without the query, as sent.", NULL},
    {"target", get_target, NULL, "Request-target: path and '?query' (origin-form).", NULL},
    {"query_string", get_query_string, NULL, "Raw query string, without '?'; '' if none.", NULL},
    {"query", get_query, NULL, "Parsed query string: a QueryParams multi-dict.", NULL},
    {"headers", get_headers, NULL,
     "Request headers: a Headers multi-dict, case-insensitive, several values per name.", NULL},
    {"raw_headers", get_raw_headers, NULL,
     "[(name, value)] as bytes, names lower-cased, in the order received.", NULL},
    {"body", get_body, NULL, "The whole body as bytes (de-chunked); b'' if none.", NULL},
    {"text", get_text, NULL, "The body decoded as UTF-8 (invalid bytes replaced).", NULL},
    {"http_version", get_http_version, NULL, "'1.1' or '1.0'.", NULL},
    {"scheme", get_scheme, NULL, "'https' on a TLS connection, else 'http'.", NULL},
    {"tls", get_tls, NULL,
     "The TLS session of the connection: None on a plain one, else a dict (version, cipher, "
     "server_name, alpn, resumed, peer_subject, peer_cert_chain as PEM, version_number, "
     "cipher_id, server_cert as PEM, ktls: the kernel encrypts its sends), built on first access.",
     NULL},
    {"keep_alive", get_keep_alive, NULL, "Whether the connection stays open after this request.",
     NULL},
    {"client", get_client, NULL, "Client address: (host, port) over TCP, None over a Unix socket.",
     NULL},
    {"server", get_server, NULL,
     "Address the connection arrived on: (host, port), or the Unix socket path.", NULL},
    {"params", get_params, set_params, "Path parameters set by the router (a dict).", NULL},
    {"thread", get_thread, NULL, "Index of the engine thread that owns the request.", NULL},
    {"conn_id", get_conn_id, NULL,
     "Connection id, unique per server; equal for requests of one connection.", NULL},
    {"answered", get_answered, NULL,
     "Whether a response was already given (or a streamed one started).", NULL},
    {"body_streaming", get_body_streaming, NULL,
     "Whether the body arrives in pieces (larger than stream_body_threshold): read it with "
     "read() or read_async(); request.body raises.",
     NULL},
    {"websocket", get_websocket, NULL,
     "Whether this is a valid WebSocket opening handshake: accept it with "
     "accept_websocket(), or answer it as any request (which closes the connection).",
     NULL},
    {"connection", get_connection, NULL,
     "The Connection of this request (the object connection_handler got at OPEN), or None "
     "when the server has no connection_handler.",
     NULL},
    {"disconnected", get_disconnected, NULL,
     "Whether the client went away while this request was unanswered (or its streamed "
     "answer not ended).",
     NULL},
    {NULL},
};

/* ---- methods ---- */

static int name_eq(const pmu_header_t *h, const char *name, Py_ssize_t n) {
  return h->name_len == (size_t)n && strncasecmp(h->name, name, (size_t)n) == 0;
}

PyDoc_STRVAR(header_doc, "header(name, default=None) -> str | None\n\n"
                         "First value of header `name` (case-insensitive), without building\n"
                         "the headers multi-dict.");

static PyObject *request_header(PyObject *op, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs < 1 || nargs > 2) {
    PyErr_SetString(PyExc_TypeError, "header(name, default=None)");
    return NULL;
  }
  Py_ssize_t n;
  const char *name = PyUnicode_AsUTF8AndSize(args[0], &n);
  if (name == NULL)
    return NULL;
  const pmu_request_t *r = view_of(REQ(op));
  if (r == NULL)
    return NULL;
  for (size_t i = 0; i < r->header_count; i++) {
    const pmu_header_t *h = &r->headers[i];
    if (name_eq(h, name, n))
      return PyUnicode_DecodeLatin1(h->value ? h->value : "", (Py_ssize_t)h->value_len, NULL);
  }
  return Py_NewRef(nargs == 2 ? args[1] : Py_None);
}

PyDoc_STRVAR(json_doc, "json() -> object\n\nThe body parsed as JSON.");

static PyObject *request_json(PyObject *op, PyObject *unused) {
  PyObject *body = get_body(op, NULL);
  if (body == NULL)
    return NULL;
  PyObject *r = PyObject_CallOneArg(REQ(op)->st->json_loads, body);
  Py_DECREF(body);
  return r;
}

PyDoc_STRVAR(reply_doc, "reply(response=b'', status=None, headers=None)\n\n"
                        "Answer this request, now or later, from any thread. `response` is\n"
                        "anything a handler may return (Response, bytes, str, dict, list, int,\n"
                        "tuple); `status` and `headers`, when given, apply to a plain body.\n"
                        "Raises RuntimeError if the request was already answered.");

static PyObject *request_reply(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"response", "status", "headers", NULL};
  PyObject *body = NULL, *status = Py_None, *headers = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OOO:reply", kwlist, &body, &status, &headers))
    return NULL;
  RequestObject *self = REQ(op);
  if (self->live == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "this request was already answered");
    return NULL;
  }
  if (body == Py_None) {
    PyErr_SetString(PyExc_TypeError, "reply() needs a response, not None");
    return NULL;
  }
  PyObject *result;
  if (status == Py_None && headers == Py_None) {
    result = body ? Py_NewRef(body) : PyBytes_FromStringAndSize("", 0);
  } else {
    PyObject *empty = body ? NULL : PyBytes_FromStringAndSize("", 0);
    PyObject *code = status == Py_None ? PyLong_FromLong(200) : Py_NewRef(status);
    result = (code && (body || empty)) ? PyTuple_Pack(3, body ? body : empty, code, headers) : NULL;
    Py_XDECREF(code);
    Py_XDECREF(empty);
  }
  if (result == NULL)
    return NULL;
  /* The caller's references are unknown here, so always keep a copy: 0
   * owner references forces the snapshot. */
  int rc = pyb_request_answer(op, result, 0);
  Py_DECREF(result);
  if (rc < 0)
    return NULL;
  Py_RETURN_NONE;
}

PyDoc_STRVAR(reply_raw_doc,
             "reply_raw(data)\n\n"
             "Answer this request with `data` (a bytes-like object, or str as UTF-8) sent\n"
             "verbatim, from any thread: the status line, headers and framing are the\n"
             "caller's, the server adds nothing. The connection goes on as after any\n"
             "answer (kept alive when the request allows it), so the bytes must frame a\n"
             "whole HTTP response. Raises RuntimeError if the request was already\n"
             "answered. bytes and str of 16 KiB or more are sent without a copy.");

/* The status of a leading "HTTP/1.x NNN" in raw answer bytes; 0 if none. */
static int raw_status(const void *data, Py_ssize_t n) {
  const char *p = data;
  if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
    return 0;
  int status = 0;
  for (int i = 9; i < 12; i++) {
    if (p[i] < '0' || p[i] > '9')
      return 0;
    status = status * 10 + (p[i] - '0');
  }
  return status;
}

static PyObject *request_reply_raw(PyObject *op, PyObject *data) {
  RequestObject *self = REQ(op);
  pyb_data d;
  if (check_unanswered(self) < 0 || pyb_data_get(data, &d, "reply_raw() data") < 0)
    return NULL;
  pyb_data_keep(self->st, &d);
  /* The caller's references are unknown, as in reply(): 0 keeps a copy. */
  pmu_request_t *live = detach(self, 0);
  int rc = pmu_respond_raw(live, d.p, (size_t)d.n, d.release, d.ctx);
  if (self->on_answer != NULL)
    fire_answered(self, rc < 0 ? 500 : raw_status(d.p, d.n), -1);
  pyb_data_done(&d);
  pyb_drain_released(self->st);
  if (rc < 0)
    return pyb_raise_errno(self->st, rc, NULL);
  Py_RETURN_NONE;
}

/* ---- streaming ---- */

/* Size argument of read(): None or an int; < 0 means "all". */
static int size_arg(PyObject *o, Py_ssize_t *out) {
  if (o == NULL || o == Py_None) {
    *out = -1;
    return 0;
  }
  if (!PyLong_Check(o)) {
    PyErr_Format(PyExc_TypeError, "size must be an int or None, not %.100s", Py_TYPE(o)->tp_name);
    return -1;
  }
  Py_ssize_t n = PyLong_AsSsize_t(o);
  if (n == -1 && PyErr_Occurred())
    return -1;
  *out = n < 0 ? -1 : n;
  return 0;
}

/* The next slice of a buffered body, as read() hands it out. */
static PyObject *read_buffered(RequestObject *self, Py_ssize_t size) {
  const char *base;
  size_t len;
  if (self->body != NULL) {
    base = PyBytes_AS_STRING(self->body);
    len = (size_t)PyBytes_GET_SIZE(self->body);
  } else {
    const pmu_request_t *r = view_of(self);
    if (r == NULL)
      return NULL;
    base = r->body_len ? r->body : "";
    len = r->body_len;
  }
  size_t left = len - self->body_pos;
  size_t n = (size < 0 || (size_t)size > left) ? left : (size_t)size;
  if (n == len && self->body != NULL) {
    self->body_pos = len;
    return Py_NewRef(self->body);
  }
  PyObject *out = PyBytes_FromStringAndSize(base + self->body_pos, (Py_ssize_t)n);
  if (out != NULL)
    self->body_pos += n;
  return out;
}

/*
 * One attempt at the streamed body (see pyb_reqio_take): bytes pushed back
 * by an interrupted read(-1) come first. What is taken from the queue is
 * reported to the engine as consumed, which lets it read on.
 */
static int stream_take(RequestObject *self, Py_ssize_t size, PyObject *waiter, PyObject **out) {
  if (self->unread != NULL && size != 0) {
    Py_ssize_t n = PyBytes_GET_SIZE(self->unread);
    if (size < 0 || size >= n) {
      *out = self->unread;
      self->unread = NULL;
      return PYB_READ_DONE;
    }
    const char *p = PyBytes_AS_STRING(self->unread);
    PyObject *head = PyBytes_FromStringAndSize(p, size);
    PyObject *rest = head ? PyBytes_FromStringAndSize(p + size, n - size) : NULL;
    if (rest == NULL) {
      Py_XDECREF(head);
      return PYB_READ_ERROR;
    }
    Py_SETREF(self->unread, rest);
    *out = head;
    return PYB_READ_DONE;
  }
  int rc = pyb_reqio_take(self->io, size, waiter, out);
  if (rc == PYB_READ_DONE && self->live != NULL && PyBytes_GET_SIZE(*out) > 0)
    pmu_request_body_consumed(self->live, (size_t)PyBytes_GET_SIZE(*out));
  return rc;
}

/* Keep `chunks` (a list of bytes taken by an unfinished read(-1)) for the
 * next read. */
static void push_back(RequestObject *self, PyObject *chunks);

/* The bytes of a list of bytes, joined. New reference. */
static PyObject *join_chunks(PyObject *chunks) {
  if (chunks == NULL || chunks == Py_None)
    return PyBytes_FromStringAndSize("", 0);
  Py_ssize_t n = PyList_GET_SIZE(chunks), total = 0;
  if (n == 1)
    return Py_NewRef(PyList_GET_ITEM(chunks, 0));
  for (Py_ssize_t i = 0; i < n; i++)
    total += PyBytes_GET_SIZE(PyList_GET_ITEM(chunks, i));
  PyObject *out = PyBytes_FromStringAndSize(NULL, total);
  if (out == NULL)
    return NULL;
  char *p = PyBytes_AS_STRING(out);
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *b = PyList_GET_ITEM(chunks, i);
    memcpy(p, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
    p += PyBytes_GET_SIZE(b);
  }
  return out;
}

static void push_back(RequestObject *self, PyObject *chunks) {
  if (chunks == NULL || chunks == Py_None || PyList_GET_SIZE(chunks) == 0)
    return;
  if (self->unread != NULL && PyList_Append(chunks, self->unread) < 0) {
    PyErr_Clear();
    return;
  }
  PyObject *all = join_chunks(chunks);
  if (all == NULL) {
    PyErr_Clear();
    return;
  }
  Py_XSETREF(self->unread, all);
}

static int is_main_thread(pyb_state *st) { return PyThread_get_thread_ident() == st->main_thread; }

/* read() of a streamed body: wait (without the GIL) for what is asked. */
static PyObject *read_stream(RequestObject *self, Py_ssize_t size, double timeout) {
  double deadline = timeout < 0 ? -1 : pyb_now() + timeout;
  PyObject *chunks = NULL; /* size < 0: what was taken so far */
  for (;;) {
    PyObject *b;
    int rc = stream_take(self, size, NULL, &b);
    if (rc == PYB_READ_ERROR)
      goto fail;
    if (rc == PYB_READ_DONE) {
      if (size >= 0)
        return b;
      if (PyBytes_GET_SIZE(b) == 0) {
        Py_DECREF(b);
        PyObject *out = join_chunks(chunks);
        Py_XDECREF(chunks);
        return out;
      }
      if (chunks == NULL && (chunks = PyList_New(0)) == NULL) {
        Py_DECREF(b);
        goto fail;
      }
      int r = PyList_Append(chunks, b);
      Py_DECREF(b);
      if (r < 0)
        goto fail;
      continue;
    }
    if (pyb_in_ring_thread()) {
      PyErr_SetString(PyExc_RuntimeError,
                      "read() would wait for the body on the engine's own thread, which "
                      "delivers it: hand the request to a worker thread, or use read_async()");
      goto fail;
    }
    double now = pyb_now();
    if (deadline >= 0 && now >= deadline) {
      PyErr_SetString(PyExc_TimeoutError, "no request body arrived in time");
      goto fail;
    }
    double until = deadline;
    if (is_main_thread(self->st) && (until < 0 || until > now + 0.1))
      until = now + 0.1; /* signal handlers run between slices */
    pyb_reqio *io = self->io;
    Py_BEGIN_ALLOW_THREADS
    pyb_reqio_wait_data(io, until);
    Py_END_ALLOW_THREADS
    if (PyErr_CheckSignals() < 0)
      goto fail;
  }
fail:
  if (chunks != NULL) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    push_back(self, chunks);
    Py_DECREF(chunks);
    PyErr_Restore(type, value, tb);
  }
  return NULL;
}

PyDoc_STRVAR(read_doc, "read(size=-1, timeout=None) -> bytes\n\n"
                       "Read the body: up to `size` bytes (all that remains when size < 0),\n"
                       "b'' at its end. A streamed body (body_streaming) is waited for with the\n"
                       "GIL released, for at most `timeout` seconds (TimeoutError); raises\n"
                       "ClientDisconnected if the client left before the end. Call it from a\n"
                       "worker thread: on the engine's thread it cannot wait (RuntimeError).\n"
                       "A buffered body is handed out in successive slices.");

static PyObject *request_read(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"size", "timeout", NULL};
  PyObject *size_obj = Py_None, *timeout_obj = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:read", kwlist, &size_obj, &timeout_obj))
    return NULL;
  Py_ssize_t size;
  if (size_arg(size_obj, &size) < 0)
    return NULL;
  double timeout;
  if (pyb_timeout_arg(timeout_obj, &timeout) < 0)
    return NULL;
  RequestObject *self = REQ(op);
  if (!self->streamed)
    return read_buffered(self, size);
  return read_stream(self, size, timeout);
}

/* asyncio.get_running_loop(), imported on first use. New reference. */
static PyObject *running_loop(pyb_state *st) {
  if (st->get_running_loop == NULL) {
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
      return NULL;
    st->get_running_loop = PyObject_GetAttrString(asyncio, "get_running_loop");
    Py_DECREF(asyncio);
    if (st->get_running_loop == NULL)
      return NULL;
  }
  return PyObject_CallNoArgs(st->get_running_loop);
}

/* future.set_result(value) (stolen) or, when value is NULL,
 * future.set_exception(the current exception). Returns 0 or -1. */
static int settle(PyObject *fut, PyObject *value) {
  PyObject *r;
  if (value != NULL) {
    r = PyObject_CallMethod(fut, "set_result", "O", value);
    Py_DECREF(value);
  } else {
    PyObject *type, *exc, *tb;
    pyb_fetch_error(&type, &exc, &tb);
    r = exc ? PyObject_CallMethod(fut, "set_exception", "O", exc) : NULL;
    Py_XDECREF(type);
    Py_XDECREF(exc);
    Py_XDECREF(tb);
  }
  if (r == NULL)
    return -1;
  Py_DECREF(r);
  return 0;
}

/*
 * Advance a read_async(): settle `fut` with what is there, or leave a
 * waiter (loop, fut, request, size, chunks) for the worker thread to hand
 * to read_ready when more comes. `chunks` (borrowed; None or a list) holds
 * what a read of everything has taken so far. Returns 0, or -1 with an
 * exception the future could not take.
 */
static int read_async_step(RequestObject *self, PyObject *loop, PyObject *fut, Py_ssize_t size,
                           PyObject *chunks) {
  PyObject *own = Py_NewRef(chunks);
  int result = 0;
  for (;;) {
    PyObject *waiter = Py_BuildValue("(OOOnO)", loop, fut, (PyObject *)self, size, own);
    if (waiter == NULL) {
      result = settle(fut, NULL);
      break;
    }
    PyObject *b;
    int rc = stream_take(self, size, waiter, &b);
    Py_DECREF(waiter);
    if (rc == PYB_READ_WAIT)
      break;
    if (rc == PYB_READ_ERROR) {
      result = settle(fut, NULL);
      break;
    }
    if (size >= 0) {
      result = settle(fut, b);
      break;
    }
    if (PyBytes_GET_SIZE(b) == 0) {
      Py_DECREF(b);
      PyObject *all = join_chunks(own);
      result = settle(fut, all);
      break;
    }
    if (own == Py_None) {
      PyObject *list = PyList_New(0);
      if (list == NULL) {
        Py_DECREF(b);
        result = settle(fut, NULL);
        break;
      }
      Py_SETREF(own, list);
    }
    int r = PyList_Append(own, b);
    Py_DECREF(b);
    if (r < 0) {
      result = settle(fut, NULL);
      break;
    }
  }
  Py_DECREF(own);
  return result;
}

/* fn(waiter) on the loop's thread, called by the worker thread through
 * loop.call_soon_threadsafe when the body moved: the next step. */
static PyObject *read_ready(PyObject *unused, PyObject *waiter) {
  if (!PyTuple_Check(waiter) || PyTuple_GET_SIZE(waiter) != 5) {
    PyErr_SetString(PyExc_TypeError, "_read_ready(waiter)");
    return NULL;
  }
  PyObject *loop = PyTuple_GET_ITEM(waiter, 0), *fut = PyTuple_GET_ITEM(waiter, 1);
  PyObject *req = PyTuple_GET_ITEM(waiter, 2), *chunks = PyTuple_GET_ITEM(waiter, 4);
  Py_ssize_t size = PyLong_AsSsize_t(PyTuple_GET_ITEM(waiter, 3));
  if (size == -1 && PyErr_Occurred())
    return NULL;
  int is_done = pyb_future_done(fut);
  if (is_done < 0)
    return NULL;
  if (is_done) {
    push_back(REQ(req), chunks); /* cancelled: keep what was taken */
    Py_RETURN_NONE;
  }
  if (read_async_step(REQ(req), loop, fut, size, chunks) < 0)
    return NULL;
  Py_RETURN_NONE;
}

PyMethodDef pyb_read_ready_def = {"_read_ready", read_ready, METH_O,
                                  "_read_ready(waiter): the next step of a read_async()."};

PyDoc_STRVAR(read_async_doc,
             "read_async(size=-1) -> awaitable of bytes\n\n"
             "read() for asyncio code: call it on the thread of a running event loop\n"
             "and await the result; nothing blocks the loop. Only one may wait at a\n"
             "time.");

static PyObject *request_read_async(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"size", NULL};
  PyObject *size_obj = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:read_async", kwlist, &size_obj))
    return NULL;
  Py_ssize_t size;
  if (size_arg(size_obj, &size) < 0)
    return NULL;
  RequestObject *self = REQ(op);
  PyObject *loop = running_loop(self->st);
  if (loop == NULL)
    return NULL;
  PyObject *fut = PyObject_CallMethod(loop, "create_future", NULL);
  int rc = -1;
  if (fut != NULL) {
    if (!self->streamed) {
      PyObject *b = read_buffered(self, size);
      rc = settle(fut, b);
    } else {
      rc = read_async_step(self, loop, fut, size, Py_None);
    }
  }
  Py_DECREF(loop);
  if (rc < 0) {
    Py_XDECREF(fut);
    return NULL;
  }
  return fut;
}

PyDoc_STRVAR(add_disconnect_callback_doc,
             "add_disconnect_callback(fn)\n\n"
             "Call fn() once, on an engine thread with the GIL held, if the client\n"
             "goes away while this request is unanswered (or its streamed answer\n"
             "not ended), or half-closes its side (sends FIN: it may still read the\n"
             "answer, which can be given as usual; a long poll takes it as the client\n"
             "leaving, as uvicorn does); at once if it already has. Never called for\n"
             "a request already answered. Keep fn short: the engine thread waits for it.");

static PyObject *request_add_disconnect_callback(PyObject *op, PyObject *fn) {
  RequestObject *self = REQ(op);
  if (!PyCallable_Check(fn)) {
    PyErr_SetString(PyExc_TypeError, "the disconnect callback must be callable");
    return NULL;
  }
  if (self->live == NULL)
    Py_RETURN_NONE; /* answered: the client can no longer leave it unanswered */
  if (ensure_io(self) < 0)
    return NULL;
  track(self);
  int rc = pyb_reqio_add_callback(self->io, fn);
  if (rc < 0)
    return NULL;
  if (rc == 0) { /* the client has already gone */
    PyObject *r = PyObject_CallNoArgs(fn);
    if (r == NULL)
      return NULL;
    Py_DECREF(r);
  }
  Py_RETURN_NONE;
}

PyDoc_STRVAR(start_doc, "start(status, headers=None)\n\n"
                        "Begin a streamed answer: send the status line and headers now, the\n"
                        "body with write() and end(). With a Content-Length header the body is\n"
                        "sent as it is and must be that long; otherwise HTTP/1.1 clients get it\n"
                        "chunked and HTTP/1.0 clients until the connection closes. headers as\n"
                        "for reply(); no Content-Type is added. Any thread. RuntimeError if the\n"
                        "request was answered or start() already called.");

static PyObject *request_start(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"status", "headers", NULL};
  PyObject *status_obj, *headers = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:start", kwlist, &status_obj, &headers))
    return NULL;
  RequestObject *self = REQ(op);
  if (self->started) {
    PyErr_SetString(PyExc_RuntimeError, "start() was already called on this request");
    return NULL;
  }
  if (check_unanswered(self) < 0)
    return NULL;
  if (!PyLong_Check(status_obj) || PyBool_Check(status_obj)) {
    PyErr_Format(PyExc_TypeError, "status must be an int, not %.100s",
                 Py_TYPE(status_obj)->tp_name);
    return NULL;
  }
  long status = PyLong_AsLong(status_obj);
  if (status == -1 && PyErr_Occurred())
    return NULL;
  if (status < 0 || status > 999 || !pmu_status_valid((int)status)) {
    PyErr_Format(PyExc_ValueError, "a streamed answer's status must be 200..999, not %ld", status);
    return NULL;
  }
  pyb_built built;
  if (pyb_build_headers(headers, &built) < 0 || ensure_io(self) < 0) {
    pyb_built_release(&built);
    return NULL;
  }
  int rc = pmu_respond_start(self->live, (int)status, built.response.headers,
                             built.response.header_count);
  self->started = 1;
  self->stream_status = (int)status;
  pyb_built_release(&built);
  if (rc == -ENOMEM)
    return PyErr_NoMemory();
  if (rc < 0)
    pyb_log_warning(self->st,
                    "the engine refused the streamed answer's head (status %ld) and "
                    "sent 500 instead",
                    status);
  Py_RETURN_NONE;
}

/* RuntimeError unless a streamed answer is open for writing. */
static int check_open(RequestObject *self, const char *what) {
  if (!self->started) {
    PyErr_Format(PyExc_RuntimeError, "%s before start()", what);
    return -1;
  }
  if (self->ended || self->live == NULL) {
    PyErr_Format(PyExc_RuntimeError, "%s after end()", what);
    return -1;
  }
  return 0;
}

/* Queue `data` on the stream. Returns pmu_respond_write's result (0 or
 * -EPIPE; -ENOMEM), or 1 with an exception (bad type). bytes and str of
 * PYB_ZERO_COPY_MIN or more are sent from the object itself. */
static int queue_write(RequestObject *self, PyObject *data) {
  const char *p;
  Py_ssize_t n;
  PyObject *owner = NULL;
  Py_buffer view;
  int have_view = 0;
  if (PyBytes_Check(data)) {
    p = PyBytes_AS_STRING(data);
    n = PyBytes_GET_SIZE(data);
    owner = data;
  } else if (PyUnicode_Check(data)) {
    p = PyUnicode_AsUTF8AndSize(data, &n); /* cached in the str: immutable */
    if (p == NULL)
      return 1;
    owner = data;
  } else if (PyObject_CheckBuffer(data)) {
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
      return 1;
    p = view.buf;
    n = view.len;
    have_view = 1;
  } else {
    PyErr_Format(PyExc_TypeError, "write() takes bytes, a bytes-like object or str, not %.100s",
                 Py_TYPE(data)->tp_name);
    return 1;
  }
  void (*release)(void *) = NULL;
  void *ctx = NULL;
  if (owner != NULL && n >= PYB_ZERO_COPY_MIN &&
      pyb_keep_until_released(self->st, owner, &release, &ctx) < 0)
    release = NULL; /* no memory for the note: copy instead */
  int rc = pmu_respond_write(self->live, p, (size_t)n, release, ctx);
  if (have_view)
    PyBuffer_Release(&view);
  pyb_drain_released(self->st);
  return rc;
}

PyDoc_STRVAR(write_doc, "write(data, wait=True) -> bool\n\n"
                        "Queue a piece of the streamed answer (bytes-like, or str sent as UTF-8).\n"
                        "With wait, when more than output_high_water bytes are unsent, block\n"
                        "(GIL released) until the engine has sent down to half of it or the\n"
                        "client left. Returns True, or False once the client is gone (the data\n"
                        "is dropped: stop producing and call end()). On an engine thread it\n"
                        "never waits.");

static PyObject *request_write(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"data", "wait", NULL};
  PyObject *data;
  int wait = 1;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:write", kwlist, &data, &wait))
    return NULL;
  RequestObject *self = REQ(op);
  if (check_open(self, "write()") < 0)
    return NULL;
  int rc = queue_write(self, data);
  if (rc == 1)
    return NULL;
  if (rc == -EPIPE)
    Py_RETURN_FALSE;
  if (rc < 0)
    return pyb_raise_errno(self->st, rc, NULL);
  if (!wait || pmu_request_unsent(self->live) <= self->high_water || pyb_in_ring_thread())
    Py_RETURN_TRUE;
  pyb_reqio *io = self->io;
  int gone;
  uint64_t seq = pyb_reqio_drain_seq(io, &gone);
  if (gone)
    Py_RETURN_FALSE;
  int w = pmu_request_wait_drain(self->live);
  if (w == -EPIPE)
    Py_RETURN_FALSE;
  if (w == 0)
    Py_RETURN_TRUE;
  /* io stays ours while we wait: self holds it, and the caller holds self. */
  for (;;) {
    double until = is_main_thread(self->st) ? pyb_now() + 0.1 : -1;
    Py_BEGIN_ALLOW_THREADS
    w = pyb_reqio_wait_drain(io, seq, until);
    Py_END_ALLOW_THREADS
    if (w != 0)
      return PyBool_FromLong(w > 0);
    if (PyErr_CheckSignals() < 0)
      return NULL;
  }
}

PyDoc_STRVAR(write_async_doc, "write_async(data) -> awaitable of bool\n\n"
                              "write() for asyncio code: queues data at once, and the result is\n"
                              "ready when the unsent bytes are at most output_high_water again\n"
                              "(True) or the client has left (False).");

static PyObject *request_write_async(PyObject *op, PyObject *data) {
  RequestObject *self = REQ(op);
  if (check_open(self, "write_async()") < 0)
    return NULL;
  PyObject *loop = running_loop(self->st);
  if (loop == NULL)
    return NULL;
  PyObject *fut = PyObject_CallMethod(loop, "create_future", NULL);
  if (fut == NULL) {
    Py_DECREF(loop);
    return NULL;
  }
  PyObject *result = NULL; /* borrowed: the future's result, once known */
  int rc = queue_write(self, data);
  if (rc == 1)
    goto fail;
  if (rc == -EPIPE) {
    result = Py_False;
  } else if (rc < 0) {
    pyb_raise_errno(self->st, rc, NULL);
    goto fail;
  } else if (pmu_request_unsent(self->live) <= self->high_water) {
    result = Py_True;
  } else {
    int gone;
    uint64_t seq = pyb_reqio_drain_seq(self->io, &gone);
    int w = gone ? -EPIPE : pmu_request_wait_drain(self->live);
    if (w == -EPIPE) {
      result = Py_False;
    } else if (w == 0) {
      result = Py_True;
    } else {
      PyObject *waiter = PyTuple_Pack(2, loop, fut);
      int a = waiter ? pyb_reqio_add_drain_waiter(self->io, seq, waiter) : -2;
      Py_XDECREF(waiter);
      if (a == -2)
        goto fail;
      result = a == 1 ? NULL : a == 0 ? Py_True : Py_False;
    }
  }
  if (result != NULL && settle(fut, Py_NewRef(result)) < 0)
    goto fail;
  Py_DECREF(loop);
  return fut;
fail:
  Py_DECREF(loop);
  Py_DECREF(fut);
  return NULL;
}

PyDoc_STRVAR(end_doc, "end(trailers=None)\n\n"
                      "Finish the streamed answer. Any thread; a second call does nothing.\n"
                      "trailers (headers as for reply()) are sent after the last chunk of a\n"
                      "chunked answer; an answer framed otherwise (a Content-Length, HTTP/1.0,\n"
                      "HEAD) ends without them. Trailers that are not header fields, or a bad\n"
                      "field (CR, LF or NUL in it), end the answer without trailers and raise.");

static PyObject *request_end(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"trailers", NULL};
  PyObject *trailers = Py_None;
  if ((args != NULL && PyTuple_GET_SIZE(args) > 0) || kwargs != NULL) {
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:end", kwlist, &trailers))
      return NULL;
  }
  RequestObject *self = REQ(op);
  if (!self->started) {
    PyErr_SetString(PyExc_RuntimeError, "end() before start(): reply() answers at once");
    return NULL;
  }
  if (self->ended || self->live == NULL)
    Py_RETURN_NONE;
  if (trailers == Py_None) {
    /* The caller's references are unknown: always keep a copy (0). */
    end_stream(self, 0, 0);
    Py_RETURN_NONE;
  }
  pyb_built built;
  if (pyb_build_headers(trailers, &built) < 0) {
    /* Not fields (or a bad one): the answer ends without them; the error stays. */
    pyb_built_release(&built);
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    end_stream(self, 0, 0);
    PyErr_Restore(type, value, tb);
    return NULL;
  }
  pmu_request_t *live = detach(self, 0);
  self->ended = 1;
  int rc = pmu_respond_end_trailers(live, built.response.headers, built.response.header_count);
  pyb_built_release(&built);
  if (rc == -EINVAL)
    pmu_respond_end(live); /* refused with nothing done: end it without them */
  pyb_drain_released(self->st);
  if (rc == -EINVAL) {
    PyErr_SetString(PyExc_ValueError,
                    "a trailer field has a bad name or a CR, LF or NUL in its value; "
                    "the answer was ended without trailers");
    return NULL;
  }
  if (rc == -ENOMEM)
    return PyErr_NoMemory();
  Py_RETURN_NONE;
}

PyDoc_STRVAR(abort_doc, "abort()\n\n"
                        "Cut the streamed answer short because producing it failed: what was\n"
                        "written is sent, then the connection is closed without completing the\n"
                        "body (no last chunk, or short of the Content-Length), so that neither\n"
                        "the client nor a cache takes it for whole. Any thread; after end() or\n"
                        "abort() it does nothing. A handler that raises after start(), and a\n"
                        "started request dropped before end(), are aborted the same way.");

static PyObject *request_abort(PyObject *op, PyObject *unused) {
  RequestObject *self = REQ(op);
  if (!self->started) {
    PyErr_SetString(PyExc_RuntimeError,
                    "abort() before start(): reply() with an error status answers at once");
    return NULL;
  }
  if (self->ended || self->live == NULL)
    Py_RETURN_NONE;
  end_stream(self, 0, 1);
  Py_RETURN_NONE;
}

/* ---- files ---- */

PyDoc_STRVAR(serve_static_doc,
             "serve_static(mount, path=None) -> bool\n\n"
             "Answer from a StaticMount's directory with every rule of static files\n"
             "(confinement, index and redirect, ETag/304/412, Range, precompressed\n"
             "siblings, listing, HEAD, 405). path: the part below the mount, already\n"
             "decoded ('css/a.css'); None: the request's path minus mount.prefix.\n"
             "Returns True when answered; False only for a fallthrough mount that has\n"
             "no such file (the request is still yours to answer). Any thread; with a\n"
             "fallthrough mount, another thread than the handler's only once a streamed\n"
             "body has been read (RuntimeError before).");

static PyObject *request_serve_static(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"mount", "path", NULL};
  PyObject *mount, *path = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:serve_static", kwlist, &mount, &path))
    return NULL;
  RequestObject *self = REQ(op);
  if (check_unanswered(self) < 0)
    return NULL;
  const pmu_static_t *m = pyb_static_mount(self->st, mount);
  if (m == NULL)
    return NULL;
  const char *rel = NULL;
  Py_ssize_t rel_len = 0;
  if (path != Py_None) {
    if (!PyUnicode_Check(path)) {
      PyErr_Format(PyExc_TypeError, "path must be a str or None, not %.100s",
                   Py_TYPE(path)->tp_name);
      return NULL;
    }
    rel = PyUnicode_AsUTF8AndSize(path, &rel_len); /* cached in the str, which args hold */
    if (rel == NULL)
      return NULL;
  }
  pmu_request_t *live = self->live;
  /* While the link is cut, a body piece the worker thread delivers would be
   * lost; on that thread itself none can come. */
  if (m->fallthrough && self->streamed && !pyb_reqio_body_done(self->io) && !pyb_in_ring_thread()) {
    PyErr_SetString(PyExc_RuntimeError,
                    "serve_static() with a fallthrough mount on a request whose body is still "
                    "arriving: read the body first (or call it from the handler itself)");
    return NULL;
  }
  /* The attributes must outlive the answer: copy first (the caller's
   * references are unknown), then cut the engine's link to our stream state,
   * to be restored if the mount passes the request on. */
  if (self->view == live && snapshot(self) < 0)
    return NULL;
  int linked = self->io != NULL ? pyb_reqio_cut(self->io, live) : 0;
  int rc = pmu_serve_static(live, m, rel, (size_t)rel_len);
  if (rc == -ENOENT && m->fallthrough) {
    if (linked)
      pyb_reqio_relink(self->io, live);
    Py_RETURN_FALSE;
  }
  self->live = NULL;
  if (self->io != NULL)
    pyb_reqio_finish_unlink(self->io, linked);
  if (self->on_answer != NULL)
    fire_answered(self, rc == -ENOENT ? 404 : 0, -1);
  if (rc < 0 && rc != -ENOENT)
    pyb_log_warning(self->st, "serving a static file failed (%s); answered with an error",
                    strerror(-rc));
  pyb_drain_released(self->st);
  Py_RETURN_TRUE;
}

PyDoc_STRVAR(serve_file_doc,
             "serve_file(path_or_fd, *, content_type=None, cache_control=None, headers=None,\n"
             "           status=0)\n\n"
             "Answer with one file (a path used as given, not confined; an int fd or an\n"
             "object with fileno(), which is duplicated) with every rule of static\n"
             "files: ETag, Last-Modified, 304, 412, Range (206, multipart/byteranges,\n"
             "416), If-Range, HEAD. status 0 (or 200): those rules; another status\n"
             "sends the whole file with it. A missing file, or one that is not a\n"
             "regular file, is answered 404. content_type None: from the extension.\n"
             "Any thread. RuntimeError if the request was already answered.");

static PyObject *request_serve_file(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"path_or_fd", "content_type", "cache_control",
                           "headers",    "status",       NULL};
  PyObject *file, *content_type = Py_None, *cache_control = Py_None, *headers = Py_None;
  int status = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$OOOi:serve_file", kwlist, &file, &content_type,
                                   &cache_control, &headers, &status))
    return NULL;
  RequestObject *self = REQ(op);
  if (check_unanswered(self) < 0)
    return NULL;
  pyb_file_call c;
  int rc = pyb_file_call_build(self->st, file, content_type, cache_control, headers, status, &c);
  if (rc == 0)
    send_file(self, &c, 0); /* the caller's references are unknown: keep a copy */
  pyb_file_call_release(&c);
  if (rc < 0)
    return NULL;
  Py_RETURN_NONE;
}

PyDoc_STRVAR(sendfile_doc,
             "sendfile(file, offset=0, count=None) -> bool\n\n"
             "Queue bytes [offset, offset + count) of a regular file as a piece of the\n"
             "streamed answer (after start()), in order with write()'s pieces. The\n"
             "engine sends them without passing through Python (splice, or read+send\n"
             "for small pieces). file: a path (str, bytes, os.PathLike), an int fd or\n"
             "an object with fileno(); the descriptor is duplicated, so the caller may\n"
             "close its own at once. count None: to the end of the file as it is now.\n"
             "A file that shrinks before it is sent closes the connection after what\n"
             "was sent (never padded). Returns True, or False once the client is gone.\n"
             "Any thread.");

static PyObject *request_sendfile(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"file", "offset", "count", NULL};
  PyObject *file, *count_obj = Py_None;
  long long offset = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|LO:sendfile", kwlist, &file, &offset,
                                   &count_obj))
    return NULL;
  RequestObject *self = REQ(op);
  if (check_open(self, "sendfile()") < 0)
    return NULL;
  long long count = -1;
  if (count_obj != Py_None) {
    if (!PyLong_Check(count_obj) || PyBool_Check(count_obj)) {
      PyErr_Format(PyExc_TypeError, "count must be an int or None, not %.100s",
                   Py_TYPE(count_obj)->tp_name);
      return NULL;
    }
    count = PyLong_AsLongLong(count_obj);
    if (count == -1 && PyErr_Occurred())
      return NULL;
    if (count < 0) {
      PyErr_SetString(PyExc_ValueError, "count cannot be negative");
      return NULL;
    }
  }
  if (offset < 0) {
    PyErr_SetString(PyExc_ValueError, "offset cannot be negative");
    return NULL;
  }
  int fd;
  if (pyb_file_fd(file, &fd) < 0)
    return NULL;
  struct stat sb;
  if (fstat(fd, &sb) < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    close(fd);
    return NULL;
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    PyErr_SetString(PyExc_ValueError, "sendfile() sends a regular file (use write() for others)");
    return NULL;
  }
  if (count < 0) {
    if (offset > (long long)sb.st_size) {
      close(fd);
      PyErr_Format(PyExc_ValueError, "offset %lld is past the end of the file (%lld bytes)", offset,
                   (long long)sb.st_size);
      return NULL;
    }
    count = (long long)sb.st_size - offset;
  }
  if (count == 0) {
    close(fd);
    Py_RETURN_TRUE;
  }
  /* The engine owns fd from here, whatever it answers. */
  int rc = pmu_respond_write_file(self->live, fd, (uint64_t)offset, (uint64_t)count, NULL, NULL);
  if (rc == -EPIPE)
    Py_RETURN_FALSE;
  if (rc < 0)
    return pyb_raise_errno(self->st, rc, NULL);
  Py_RETURN_TRUE;
}

/* The subprotocols a handshake offers: every Sec-WebSocket-Protocol value,
 * split at commas, blanks trimmed, in order. New reference or NULL. */
static PyObject *offered_subprotocols(const pmu_request_t *r) {
  PyObject *list = PyList_New(0);
  static const char name[] = "sec-websocket-protocol";
  for (size_t i = 0; list != NULL && i < r->header_count; i++) {
    const pmu_header_t *h = &r->headers[i];
    if (!name_eq(h, name, (Py_ssize_t)(sizeof name - 1)))
      continue;
    const char *p = h->value ? h->value : "", *end = p + h->value_len;
    while (p < end) {
      const char *comma = memchr(p, ',', (size_t)(end - p));
      const char *stop = comma ? comma : end;
      const char *a = p, *b = stop;
      while (a < b && (*a == ' ' || *a == '\t'))
        a++;
      while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
        b--;
      if (b > a) {
        PyObject *item = PyUnicode_DecodeLatin1(a, b - a, NULL);
        if (item == NULL || PyList_Append(list, item) < 0)
          Py_CLEAR(list);
        Py_XDECREF(item);
      }
      p = comma ? comma + 1 : end;
    }
  }
  return list;
}

/* A subprotocol is an RFC 7230 token: visible ASCII but separators. */
static int is_token(const char *s, Py_ssize_t n) {
  if (n == 0)
    return 0;
  for (Py_ssize_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= 0x20 || c >= 0x7f || strchr("()<>@,;:\\\"/[]?={}", c) != NULL)
      return 0;
  }
  return 1;
}

PyDoc_STRVAR(accept_websocket_doc,
             "accept_websocket(subprotocol=None, headers=None, *, on_message=None, ...,\n"
             "                 user=None) -> WebSocket\n\n"
             "Accept this WebSocket handshake (request.websocket) instead of answering\n"
             "it, from any thread: the engine sends 101 Switching Protocols with the\n"
             "chosen subprotocol, the negotiated permessage-deflate and `headers`, and\n"
             "the connection speaks WebSocket from then on. The request counts as\n"
             "answered. The callbacks (on_message, on_ping, on_pong, on_close,\n"
             "on_drain, on_disconnect) and user may be given here: set before the engine\n"
             "can deliver anything, which matters when accepting from another thread.\n"
             "RuntimeError if the request was answered or is not a handshake;\n"
             "ValueError for a bad header or subprotocol.");

static PyObject *request_accept_websocket(PyObject *op, PyObject *args, PyObject *kwargs) {
  RequestObject *self = REQ(op);
  pyb_state *st = self->st;
  PyObject *subprotocol = Py_None, *headers = Py_None, *user = Py_None;
  Py_ssize_t nargs = PyTuple_GET_SIZE(args);
  if (nargs > 2) {
    PyErr_SetString(PyExc_TypeError, "accept_websocket() takes at most 2 positional arguments");
    return NULL;
  }
  if (nargs > 0)
    subprotocol = PyTuple_GET_ITEM(args, 0);
  if (nargs > 1)
    headers = PyTuple_GET_ITEM(args, 1);
  if (self->live == NULL || self->started) {
    PyErr_SetString(PyExc_RuntimeError, "this request was already answered");
    return NULL;
  }
  if (!self->live->ws_upgrade) {
    PyErr_SetString(PyExc_RuntimeError,
                    "not a WebSocket handshake (request.websocket is False): answer it as a "
                    "request");
    return NULL;
  }
  const char *sub = NULL;
  Py_ssize_t sub_len = 0;
  pyb_built built;
  int have_built = 0;
  PyObject *ws = NULL;
  pyb_ws_fields f;
  memset(&f, 0, sizeof f);
  PyObject *owned[9] = {NULL};
  if (kwargs != NULL) {
    PyObject *v;
    if ((v = PyDict_GetItemString(kwargs, "subprotocol")) != NULL) {
      if (nargs > 0)
        goto dup;
      subprotocol = v;
    }
    if ((v = PyDict_GetItemString(kwargs, "headers")) != NULL) {
      if (nargs > 1)
        goto dup;
      headers = v;
    }
    if ((v = PyDict_GetItemString(kwargs, "user")) != NULL)
      user = v;
  }
  if (subprotocol != Py_None) {
    if (!PyUnicode_Check(subprotocol)) {
      PyErr_SetString(PyExc_TypeError, "subprotocol must be a str or None");
      return NULL;
    }
    sub = PyUnicode_AsUTF8AndSize(subprotocol, &sub_len);
    if (sub == NULL)
      return NULL;
    if (!is_token(sub, sub_len)) {
      PyErr_Format(PyExc_ValueError, "%R is not a valid subprotocol (a token)", subprotocol);
      return NULL;
    }
  }
  if (pyb_build_headers(headers, &built) < 0) {
    pyb_built_release(&built);
    return NULL;
  }
  have_built = 1;
  /* What the WebSocket keeps of the request, read while it is still ours. */
  {
    const pmu_request_t *r = self->live;
    f.path = owned[0] = get_path(op, NULL);
    f.raw_path = owned[1] = get_raw_path(op, NULL);
    f.query_string = owned[2] = get_query_string(op, NULL);
    f.header_block = owned[3] = pyb_ws_pack_headers(r);
    f.client = owned[4] = get_client(op, NULL);
    f.server = owned[5] = get_server(op, NULL);
    f.http_version = owned[6] = get_http_version(op, NULL);
    f.subprotocols = owned[7] = offered_subprotocols(r);
    for (int i = 0; i < 8; i++)
      if (owned[i] == NULL)
        goto fail;
    if (PyList_GET_SIZE(owned[7]) == 0)
      f.subprotocols = NULL;   /* read as [] */
    f.headers = self->headers; /* reuse when the handler built it */
    f.subprotocol = subprotocol == Py_None ? NULL : subprotocol;
    f.conn_id = r->conn_id;
    f.thread = r->thread;
  }
  ws = pyb_ws_new(st, &f);
  if (ws == NULL)
    goto fail;
  if (kwargs != NULL) {
    Py_ssize_t pos = 0;
    PyObject *key, *value; /* borrowed */
    while (PyDict_Next(kwargs, &pos, &key, &value)) {
      const char *name = PyUnicode_AsUTF8(key);
      if (name == NULL)
        goto fail;
      if (strcmp(name, "subprotocol") == 0 || strcmp(name, "headers") == 0 ||
          strcmp(name, "user") == 0)
        continue;
      if (pyb_ws_set_callback(ws, name, value) < 0)
        goto fail;
    }
  }
  if (user != Py_None && PyObject_SetAttrString(ws, "user", user) < 0)
    goto fail;

  pmu_ws_accept_t opts;
  memset(&opts, 0, sizeof opts);
  opts.subprotocol = sub;
  opts.subprotocol_len = (size_t)sub_len;
  opts.headers = built.response.headers;
  opts.header_count = built.response.header_count;
  opts.user = ws;
  /* The caller's references are unknown (any thread): keep a copy. */
  pmu_request_t *live = detach(self, 0);
  Py_INCREF(ws); /* the engine side's reference, dropped after GONE */
  errno = 0;
  pmu_ws_t *handle = pmu_ws_accept(live, &opts);
  if (handle == NULL) {
    int err = errno ? errno : EINVAL;
    Py_DECREF(ws); /* the engine's: never attached */
    if (err == ENOMEM)
      pyb_log_warning(st, "out of memory accepting a WebSocket: sent 503");
    else
      pyb_log_warning(st, "the engine refused to accept a WebSocket (%s): sent 500", strerror(err));
    pyb_raise_errno(st, -err,
                    "the engine could not accept the WebSocket; the request was "
                    "answered with an error");
    goto fail;
  }
  pyb_ws_attach(ws, handle);
  if (self->on_answer != NULL)
    fire_answered(self, 101, -1);
  pyb_built_release(&built);
  for (int i = 0; i < 9; i++)
    Py_XDECREF(owned[i]);
  pyb_drain_released(st);
  return ws;
dup:
  PyErr_SetString(PyExc_TypeError, "accept_websocket() got an argument twice");
fail:
  if (have_built)
    pyb_built_release(&built);
  for (int i = 0; i < 9; i++)
    Py_XDECREF(owned[i]);
  Py_XDECREF(ws);
  return NULL;
}

static PyObject *request_repr(PyObject *op) {
  RequestObject *self = REQ(op);
  const pmu_request_t *r = self->view;
  if (r == NULL)
    return PyUnicode_FromString("<Request (released)>");
  PyObject *m = PyUnicode_DecodeLatin1(r->method, (Py_ssize_t)r->method_len, NULL);
  PyObject *t = PyUnicode_DecodeLatin1(
      r->target, (Py_ssize_t)(r->target_len > 200 ? 200 : r->target_len), NULL);
  PyObject *out = NULL;
  if (m != NULL && t != NULL)
    out = PyUnicode_FromFormat("<Request %U %U%s>", m, t, self->live ? "" : " answered");
  Py_XDECREF(m);
  Py_XDECREF(t);
  return out;
}

PyDoc_STRVAR(on_answer_doc,
             "_on_answer(fn)\n\n"
             "Call fn(status, length) once, when the request is answered (from the thread\n"
             "that answers it, with the GIL): status as sent (0: decided by the file rules),\n"
             "length the body's bytes or None. None clears it. For the access log; fn must\n"
             "not raise (it is reported as unraisable).");

static PyObject *request_on_answer(PyObject *op, PyObject *fn) {
  RequestObject *self = REQ(op);
  if (fn != Py_None && !PyCallable_Check(fn)) {
    PyErr_SetString(PyExc_TypeError, "_on_answer() takes a callable or None");
    return NULL;
  }
  if (self->live == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "this request was already answered");
    return NULL;
  }
  if (fn != Py_None)
    track(self); /* fn may refer back to the request */
  PyObject *old = self->on_answer;
  self->on_answer = fn == Py_None ? NULL : Py_NewRef(fn);
  Py_XDECREF(old);
  Py_RETURN_NONE;
}

static PyMethodDef request_methods[] = {
    {"_on_answer", request_on_answer, METH_O, on_answer_doc},
    {"_asgi_tls", request_asgi_tls, METH_NOARGS, asgi_tls_doc},
    {"header", (PyCFunction)(void (*)(void))request_header, METH_FASTCALL, header_doc},
    {"json", request_json, METH_NOARGS, json_doc},
    {"reply", (PyCFunction)(void (*)(void))request_reply, METH_VARARGS | METH_KEYWORDS, reply_doc},
    {"reply_raw", request_reply_raw, METH_O, reply_raw_doc},
    {"read", (PyCFunction)(void (*)(void))request_read, METH_VARARGS | METH_KEYWORDS, read_doc},
    {"read_async", (PyCFunction)(void (*)(void))request_read_async, METH_VARARGS | METH_KEYWORDS,
     read_async_doc},
    {"add_disconnect_callback", request_add_disconnect_callback, METH_O,
     add_disconnect_callback_doc},
    {"start", (PyCFunction)(void (*)(void))request_start, METH_VARARGS | METH_KEYWORDS, start_doc},
    {"write", (PyCFunction)(void (*)(void))request_write, METH_VARARGS | METH_KEYWORDS, write_doc},
    {"write_async", request_write_async, METH_O, write_async_doc},
    {"end", (PyCFunction)(void (*)(void))request_end, METH_VARARGS | METH_KEYWORDS, end_doc},
    {"abort", request_abort, METH_NOARGS, abort_doc},
    {"serve_static", (PyCFunction)(void (*)(void))request_serve_static,
     METH_VARARGS | METH_KEYWORDS, serve_static_doc},
    {"serve_file", (PyCFunction)(void (*)(void))request_serve_file, METH_VARARGS | METH_KEYWORDS,
     serve_file_doc},
    {"sendfile", (PyCFunction)(void (*)(void))request_sendfile, METH_VARARGS | METH_KEYWORDS,
     sendfile_doc},
    {"accept_websocket", (PyCFunction)(void (*)(void))request_accept_websocket,
     METH_VARARGS | METH_KEYWORDS, accept_websocket_doc},
    {NULL},
};

PyDoc_STRVAR(request_doc,
             "An HTTP request. Created by the server for each request; handlers read\n"
             "its attributes (built on first access) and return a response, or keep it\n"
             "and call reply() later from any thread.");

#if PY_VERSION_HEX < 0x030A0000
/* Before 3.10 there is no Py_TPFLAGS_DISALLOW_INSTANTIATION: refuse here. */
static PyObject *request_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  (void)args;
  (void)kwargs;
  PyErr_Format(PyExc_TypeError, "cannot create '%s' instances", type->tp_name);
  return NULL;
}
#endif

static PyType_Slot request_slots[] = {
#if PY_VERSION_HEX < 0x030A0000
    {Py_tp_new, request_new},
#endif
    {Py_tp_dealloc, request_dealloc}, {Py_tp_traverse, request_traverse},
    {Py_tp_clear, request_clear},     {Py_tp_repr, request_repr},
    {Py_tp_getset, request_getset},   {Py_tp_methods, request_methods},
    {Py_tp_doc, (void *)request_doc}, {0, NULL},
};

#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION
#define Py_TPFLAGS_DISALLOW_INSTANTIATION 0 /* request_new refuses instead */
#endif

PyType_Spec pyb_request_spec = {
    .name = "pymongoose_uring._pmu.Request",
    .basicsize = sizeof(RequestObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = request_slots,
};
