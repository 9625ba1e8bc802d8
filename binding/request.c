/*
 * request.c: the Request type, a view over one engine request.
 *
 * A Request is created for every request of a batch, so it is cheap: no
 * GC header, no attribute built until asked for (a hello-world handler that
 * reads nothing costs one small allocation). Attributes read the engine's
 * pmu_request_t, which stays valid only until the request is answered. If
 * anything besides the batch loop still holds the Request when it is
 * answered, its data is first copied into one block the Request owns (the
 * "snapshot"), so attributes keep working; otherwise nothing is copied.
 *
 * Every request is answered exactly once: by the batch loop with the
 * handler's result, by reply() from any thread, or, when the last reference
 * goes away unanswered, by the deallocator with a 500 and a warning.
 */
#include "binding.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>

typedef struct {
  PyObject_HEAD
  pmu_state *st;             /* borrowed: the type holds the module */
  pmu_request_t *live;       /* engine request; NULL once answered */
  const pmu_request_t *view; /* what attributes read: live or snapshot; NULL if lost */
  pmu_request_t *snapshot;   /* owned copy, PyMem_Free'd on dealloc */
  /* Lazily built attributes (strong references or NULL). */
  PyObject *method, *path, *raw_path, *target, *query_string, *query, *headers, *body, *params,
      *client, *server;
  PyObject *unix_path; /* the server's Unix socket path (str), or NULL */
} RequestObject;

#define REQ(o) ((RequestObject *)(o))

static const pmu_header_t text_plain_header[] = {
    {"Content-Type", 12, "text/plain; charset=utf-8", 25},
};
static const char body_500[] = "Internal Server Error";

PyObject *pmu_request_new(pmu_state *st, pmu_request_t *request, PyObject *unix_path) {
  RequestObject *self = PyObject_Malloc(sizeof(RequestObject));
  if (self == NULL)
    return PyErr_NoMemory();
  memset((char *)self + sizeof(PyObject), 0, sizeof(RequestObject) - sizeof(PyObject));
  PyObject_Init((PyObject *)self, st->request_type); /* increfs the heap type */
  self->st = st;
  self->live = request;
  self->view = request;
  self->unix_path = Py_XNewRef(unix_path);
  return (PyObject *)self;
}

int pmu_request_is_live(PyObject *request) { return REQ(request)->live != NULL; }

/*
 * Copy everything the view points to into one PyMem block, so attributes
 * outlive the engine's request. The body is skipped when request.body was
 * already built (the bytes object holds it). Returns 0, or -1 with
 * MemoryError set (the view is then lost).
 */
static int snapshot(RequestObject *self) {
  const pmu_request_t *r = self->live;
  size_t body_len = self->body ? 0 : r->body_len;
  size_t total = sizeof(pmu_request_t) + r->header_count * sizeof(pmu_header_t) +
                 r->method_len + r->target_len + r->path_len + r->query_len + 4 + body_len;
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
#define COPY_STR(field, len)                                                                  \
  do {                                                                                        \
    if (r->len)                                                                               \
      memcpy(p, r->field, r->len);                                                            \
    p[r->len] = '\0';                                                                         \
    copy->field = p;                                                                          \
    p += r->len + 1;                                                                          \
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
 * Hand `response` to the engine, first copying the request's data if others
 * may still read it. The GIL stays held: from another thread pmu_respond()
 * only takes the ring's short queue mutex, which the engine never holds while
 * it runs a batch (the only place it waits for the GIL), so releasing the
 * GIL would cost more than it could save.
 */
static void send_response(RequestObject *self, const pmu_response_t *response,
                          Py_ssize_t owner_refs) {
  pmu_request_t *live = self->live;
  if (Py_REFCNT(self) > owner_refs && snapshot(self) < 0) {
    PyErr_Clear(); /* attributes not yet built now raise; the answer still goes out */
    self->view = NULL;
  }
  if (self->view == live)
    self->view = NULL;
  self->live = NULL;
  if (pmu_respond(live, response) < 0)
    pmu_log_warning(self->st, "the engine refused a response with status %d and sent 500 "
                              "instead (a final status must be 200..999)",
                    response->status);
}

int pmu_request_answer(PyObject *request, PyObject *result, Py_ssize_t owner_refs) {
  RequestObject *self = REQ(request);
  pmu_built built;
  if (pmu_build_response(self->st, result, &built) < 0) {
    pmu_built_release(&built);
    return -1;
  }
  if (built.zero_copy != NULL && pmu_zero_copy(self->st, &built.response, built.zero_copy) < 0)
    built.response.body_release = NULL; /* no memory for the note: copy instead */
  send_response(self, &built.response, owner_refs);
  pmu_built_release(&built);
  pmu_drain_released(self->st);
  return 0;
}

void pmu_request_answer_500(PyObject *request, Py_ssize_t owner_refs) {
  RequestObject *self = REQ(request);
  if (self->live == NULL)
    return;
  pmu_response_t r = {500, text_plain_header, 1, body_500, sizeof body_500 - 1, NULL, NULL};
  send_response(self, &r, owner_refs);
}

static void request_dealloc(PyObject *op) {
  RequestObject *self = REQ(op);
  PyTypeObject *tp = Py_TYPE(op);
  if (self->live != NULL) {
    /* Nobody kept the request to answer it later: a handler returned None
     * without replying. Answer for it so the client is not left hanging. */
    const pmu_request_t *r = self->live;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *line = PyUnicode_DecodeLatin1(
        r->method, (Py_ssize_t)r->method_len, NULL);
    PyObject *target = PyUnicode_DecodeLatin1(
        r->target, (Py_ssize_t)(r->target_len > 200 ? 200 : r->target_len), NULL);
    if (line != NULL && target != NULL)
      pmu_log_warning(self->st,
                      "%U %U: the handler returned None and dropped the request without "
                      "replying; sent 500 (keep the request and call request.reply() to "
                      "answer later)",
                      line, target);
    Py_XDECREF(line);
    Py_XDECREF(target);
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
    pmu_response_t resp = {500, text_plain_header, 1, body_500, sizeof body_500 - 1, NULL, NULL};
    pmu_request_t *live = self->live;
    self->live = NULL;
    pmu_respond(live, &resp);
  }
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
  if (self->snapshot)
    PyMem_Free(self->snapshot);
  PyObject_Free(op);
  Py_DECREF(tp);
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
  pmu_state *st = self->st;
  for (int i = 0; i < PMU_M_COUNT; i++) {
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

/* (host, port) for IP families; for AF_UNIX, `unix_path` (the engine
 * keeps only the family of Unix addresses) or None. */
static PyObject *build_address(const struct sockaddr_storage *ss, PyObject *unix_path) {
  char host[INET6_ADDRSTRLEN];
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    if (inet_ntop(AF_INET, &in->sin_addr, host, sizeof host) == NULL)
      Py_RETURN_NONE;
    return Py_BuildValue("(si)", host, ntohs(in->sin_port));
  }
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host) == NULL)
      Py_RETURN_NONE;
    return Py_BuildValue("(si)", host, ntohs(in6->sin6_port));
  }
  if (ss->ss_family == AF_UNIX && unix_path != NULL)
    return Py_NewRef(unix_path);
  Py_RETURN_NONE;
}

/* A list of (name, value) str pairs, latin-1 decoded (lossless). */
static PyObject *build_header_pairs(const pmu_request_t *r) {
  PyObject *list = PyList_New((Py_ssize_t)r->header_count);
  if (list == NULL)
    return NULL;
  for (size_t i = 0; i < r->header_count; i++) {
    const pmu_header_t *h = &r->headers[i];
    PyObject *pair = Py_BuildValue("(NN)",
                                   PyUnicode_DecodeLatin1(h->name, (Py_ssize_t)h->name_len, NULL),
                                   PyUnicode_DecodeLatin1(h->value ? h->value : "",
                                                          (Py_ssize_t)h->value_len, NULL));
    if (pair == NULL) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)i, pair); /* steals pair */
  }
  return list;
}

/* Build-once getter: `slot` caches, `build` makes it from the view. */
#define CACHED_GETTER(name, slot, build_expr)                                                 \
  static PyObject *get_##name(PyObject *op, void *closure) {                                  \
    RequestObject *self = REQ(op);                                                            \
    if (self->slot == NULL) {                                                                 \
      const pmu_request_t *r = view_of(self);                                                 \
      if (r == NULL)                                                                          \
        return NULL;                                                                          \
      self->slot = (build_expr);                                                              \
      if (self->slot == NULL)                                                                 \
        return NULL;                                                                          \
    }                                                                                         \
    return Py_NewRef(self->slot);                                                             \
  }

CACHED_GETTER(method, method, build_method(self, r))
CACHED_GETTER(path, path, build_path(self, r))
CACHED_GETTER(raw_path, raw_path, decode_text(r->path, r->path_len))
CACHED_GETTER(target, target, decode_text(r->target, r->target_len))
CACHED_GETTER(query_string, query_string, decode_text(r->query, r->query_len))
CACHED_GETTER(body, body, PyBytes_FromStringAndSize(r->body_len ? r->body : "",
                                                    (Py_ssize_t)r->body_len))
CACHED_GETTER(client, client, build_address(&r->peer, NULL))
CACHED_GETTER(server, server, build_address(&r->local, self->unix_path))

PyObject *pmu_request_method(PyObject *request) { return get_method(request, NULL); }
PyObject *pmu_request_path(PyObject *request) { return get_path(request, NULL); }

static PyObject *get_query(PyObject *op, void *closure) {
  RequestObject *self = REQ(op);
  if (self->query == NULL) {
    PyObject *qs = get_query_string(op, NULL);
    PyObject *support = qs ? pmu_support(self->st) : NULL;
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
    const pmu_request_t *r = view_of(self);
    if (r == NULL)
      return NULL;
    PyObject *support = pmu_support(self->st);
    PyObject *pairs = support ? build_header_pairs(r) : NULL;
    if (pairs != NULL)
      self->headers = PyObject_CallMethod(support, "Headers", "O", pairs);
    Py_XDECREF(pairs);
    if (self->headers == NULL)
      return NULL;
  }
  return Py_NewRef(self->headers);
}

static PyObject *get_params(PyObject *op, void *closure) {
  RequestObject *self = REQ(op);
  if (self->params == NULL && (self->params = PyDict_New()) == NULL)
    return NULL;
  return Py_NewRef(self->params);
}

static int set_params(PyObject *op, PyObject *value, void *closure) {
  RequestObject *self = REQ(op);
  if (value != NULL && !PyDict_Check(value)) {
    PyErr_SetString(PyExc_TypeError, "params must be a dict");
    return -1;
  }
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
  return PyBool_FromLong(REQ(op)->live == NULL);
}

static PyGetSetDef request_getset[] = {
    {"method", get_method, NULL, "Request method, e.g. 'GET'.", NULL},
    {"path", get_path, NULL, "Path without the query, percent-decoded.", NULL},
    {"raw_path", get_raw_path, NULL, "Path without the query, as sent.", NULL},
    {"target", get_target, NULL, "Request-target as sent: path and '?query'.", NULL},
    {"query_string", get_query_string, NULL, "Raw query string, without '?'; '' if none.",
     NULL},
    {"query", get_query, NULL, "Parsed query string: a QueryParams multi-dict.", NULL},
    {"headers", get_headers, NULL,
     "Request headers: a Headers multi-dict, case-insensitive, several values per name.",
     NULL},
    {"body", get_body, NULL, "The whole body as bytes (de-chunked); b'' if none.", NULL},
    {"text", get_text, NULL, "The body decoded as UTF-8 (invalid bytes replaced).", NULL},
    {"http_version", get_http_version, NULL, "'1.1' or '1.0'.", NULL},
    {"keep_alive", get_keep_alive, NULL,
     "Whether the connection stays open after this request.", NULL},
    {"client", get_client, NULL,
     "Client address: (host, port) over TCP, None over a Unix socket.", NULL},
    {"server", get_server, NULL,
     "Address the connection arrived on: (host, port), or the Unix socket path.", NULL},
    {"params", get_params, set_params, "Path parameters set by the router (a dict).", NULL},
    {"thread", get_thread, NULL, "Index of the engine thread that owns the request.", NULL},
    {"conn_id", get_conn_id, NULL,
     "Connection id, unique per server; equal for requests of one connection.", NULL},
    {"answered", get_answered, NULL, "Whether a response was already given.", NULL},
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

PyDoc_STRVAR(reply_doc,
             "reply(response=b'', status=None, headers=None)\n\n"
             "Answer this request, now or later, from any thread. `response` is\n"
             "anything a handler may return (Response, bytes, str, dict, list, int,\n"
             "tuple); `status` and `headers`, when given, apply to a plain body.\n"
             "Raises RuntimeError if the request was already answered.");

static PyObject *request_reply(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"response", "status", "headers", NULL};
  PyObject *body = NULL, *status = Py_None, *headers = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OOO:reply", kwlist, &body, &status,
                                   &headers))
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
    result = (code && (body || empty)) ? PyTuple_Pack(3, body ? body : empty, code, headers)
                                       : NULL;
    Py_XDECREF(code);
    Py_XDECREF(empty);
  }
  if (result == NULL)
    return NULL;
  /* The caller's references are unknown here, so always keep a copy: 0
   * owner references forces the snapshot. */
  int rc = pmu_request_answer(op, result, 0);
  Py_DECREF(result);
  if (rc < 0)
    return NULL;
  Py_RETURN_NONE;
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

static PyMethodDef request_methods[] = {
    {"header", (PyCFunction)(void (*)(void))request_header, METH_FASTCALL, header_doc},
    {"json", request_json, METH_NOARGS, json_doc},
    {"reply", (PyCFunction)(void (*)(void))request_reply, METH_VARARGS | METH_KEYWORDS,
     reply_doc},
    {NULL},
};

PyDoc_STRVAR(request_doc,
             "An HTTP request. Created by the server for each request; handlers read\n"
             "its attributes (built on first access) and return a response, or keep it\n"
             "and call reply() later from any thread.");

static PyType_Slot request_slots[] = {
    {Py_tp_dealloc, request_dealloc},
    {Py_tp_repr, request_repr},
    {Py_tp_getset, request_getset},
    {Py_tp_methods, request_methods},
    {Py_tp_doc, (void *)request_doc},
    {0, NULL},
};

#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION
#define Py_TPFLAGS_DISALLOW_INSTANTIATION 0
#endif

PyType_Spec pmu_request_spec = {
    .name = "pymongoose_uring._pmu.Request",
    .basicsize = sizeof(RequestObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = request_slots,
};
