/*
 * mgcompat.c: the fast path of pymongoose_uring.compat, pymongoose's API on
 * the engine.
 *
 *   MgHttpMessage  pymongoose's HttpMessage (the `data` of MG_EV_HTTP_MSG): a
 *                  view over a Request, answering as Mongoose's mg_http_*
 *                  functions do (text is UTF-8 with surrogateescape)
 *   MgConnection   the base type of compat's Connection: the slots the hot
 *                  path touches (_request, userdata, _handler, _conn,
 *                  _close_after) and reply(), pymongoose's mg_http_reply
 *   MgDispatcher   the Server's request handler: per request, the compat
 *                  Connection of the request's connection, the message, the
 *                  handler called for MG_EV_HTTP_HDRS and MG_EV_HTTP_MSG; an
 *                  exception is logged and answered 500
 *
 * Why C: compat's hot path in Python (a Connection and an HttpMessage
 * object, their property lookups, reply() building a Response and copying the
 * request) cost twice the native API per pipelined request. Here a request
 * costs one message object and one call more than a native handler.
 *
 * Answering without a copy. Request.reply() copies the request's data first
 * (the "snapshot"), because its caller may read attributes afterwards. A
 * reply() made while the dispatcher runs the handler is only prepared
 * (validated, its header bytes copied) and sent when the handler returns, as
 * Mongoose sends what mg_http_reply() queued once the event handler returns:
 * the message stays readable for the whole call. Then the dispatcher knows
 * who holds the Request (the batch loop, the message, the prepared answer):
 * when nobody else holds the message or the Request, nothing can read the
 * request after the answer, and it goes out without a copy; otherwise the data
 * is copied first. (Were that reasoning ever wrong, a read would raise
 * RuntimeError, not touch freed memory: the Request's view is cut when it is
 * answered.)
 */
#include "binding.h"

#include <structmember.h>

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

#define MG_EV_HTTP_HDRS 10 /* Mongoose 7's event numbers, as compat exports them */
#define MG_EV_HTTP_MSG 11

/* The module's objects for this file (st->mg); every PyObject a strong
 * reference. */
struct pyb_mg {
  PyTypeObject *message_type, *connection_type, *dispatcher_type;
  PyObject *proto_11, *proto_10; /* "HTTP/1.1", "HTTP/1.0" */
  PyObject *ev_http_msg;         /* 11 */
  PyObject *ev_http_hdrs;        /* 10 */
  PyObject *empty_str;           /* "" */
  PyObject *str_send, *str_body, *str_reply_slow;
  PyObject *empty_bytes; /* b"" */
  PyObject *reply_kw[3]; /* "status_code", "body", "headers" */
};

/* ---- MgHttpMessage ---- */

typedef struct {
  PyObject_HEAD
  pyb_state *st;          /* borrowed: the type holds the module */
  PyObject *request;      /* the Request (strong); NULL for an empty message */
  PyObject *method, *uri; /* made with the message (strong) */
  PyObject *query, *body; /* built on first use (strong or NULL) */
} MgMessageObject;

#define MSG(o) ((MgMessageObject *)(o))

static PyObject *mg_text(pyb_state *st, const char *p, size_t n);

/* method and uri are read by nearly every pymongoose handler, often more than
 * once: they are made with the message and are plain slots, which CPython's
 * attribute cache reads without a call (a getter would cost one per read). */
static int message_fill(MgMessageObject *self, PyObject *request) {
  self->request = Py_NewRef(request);
  const pmu_request_t *r = pyb_request_view(request);
  if (r == NULL)
    return -1;
  self->method = pyb_request_method(request); /* interned for the common ones */
  if (self->method == NULL)
    return -1;
  self->uri = mg_text(self->st, r->path, r->path_len);
  return self->uri ? 0 : -1;
}

static PyObject *message_new_for(pyb_state *st, PyObject *request) {
  MgMessageObject *self = PyObject_GC_New(MgMessageObject, st->mg->message_type);
  if (self == NULL)
    return NULL;
  self->st = st;
  self->request = self->method = self->uri = self->query = self->body = NULL;
  PyObject_GC_Track((PyObject *)self);
  if (message_fill(self, request) < 0) {
    Py_DECREF(self);
    return NULL;
  }
  return (PyObject *)self;
}

static PyObject *message_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  pyb_state *st = pyb_state_from_type(type);
  PyObject *request = Py_None;
  static char *kwlist[] = {"request", NULL};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:MgHttpMessage", kwlist, &request))
    return NULL;
  if (request == Py_None) {
    /* An empty message, as pymongoose's HttpMessage over no mg_http_message:
     * "" and None everywhere, false. */
    MgMessageObject *self = (MgMessageObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
      self->st = st;
      self->method = Py_NewRef(st->mg->empty_str);
      self->uri = Py_NewRef(st->mg->empty_str);
    }
    return (PyObject *)self;
  }
  if (!PyObject_TypeCheck(request, st->request_type)) {
    PyErr_Format(PyExc_TypeError, "MgHttpMessage(request): a Request, not %.100s",
                 Py_TYPE(request)->tp_name);
    return NULL;
  }
  if (type == st->mg->message_type)
    return message_new_for(st, request);
  MgMessageObject *self = (MgMessageObject *)type->tp_alloc(type, 0);
  if (self != NULL) {
    self->st = st;
    if (message_fill(self, request) < 0)
      Py_CLEAR(self);
  }
  return (PyObject *)self;
}

static int message_traverse(PyObject *op, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(op));
  Py_VISIT(MSG(op)->request);
  return 0;
}

static int message_clear(PyObject *op) {
  MgMessageObject *self = MSG(op);
  Py_CLEAR(self->request);
  Py_CLEAR(self->method);
  Py_CLEAR(self->uri);
  Py_CLEAR(self->query);
  Py_CLEAR(self->body);
  return 0;
}

static void message_dealloc(PyObject *op) {
  PyTypeObject *type = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  message_clear(op);
  type->tp_free(op);
  Py_DECREF(type);
}

/* The request's data, or NULL with RuntimeError once answered and released. */
static const pmu_request_t *message_view(MgMessageObject *self) {
  if (self->request == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "this message has no request");
    return NULL;
  }
  return pyb_request_view(self->request);
}

/* Bytes as pymongoose's text: UTF-8, surrogateescape; "" when empty. */
static PyObject *mg_text(pyb_state *st, const char *p, size_t n) {
  if (n == 0)
    return Py_NewRef(st->mg->empty_str);
  return PyUnicode_DecodeUTF8(p, (Py_ssize_t)n, "surrogateescape");
}

/* The answers of an empty message (no request), as pymongoose's. */
#define IF_EMPTY(op, value)       \
  do {                            \
    if (MSG(op)->request == NULL) \
      return (value);             \
  } while (0)

static PyObject *get_query(PyObject *op, void *closure) {
  MgMessageObject *self = MSG(op);
  IF_EMPTY(op, Py_NewRef(self->st->mg->empty_str));
  if (self->query == NULL) {
    const pmu_request_t *r = message_view(self);
    if (r == NULL || (self->query = mg_text(self->st, r->query, r->query_len)) == NULL)
      return NULL;
  }
  return Py_NewRef(self->query);
}

static PyObject *get_proto(PyObject *op, void *closure) {
  MgMessageObject *self = MSG(op);
  IF_EMPTY(op, Py_NewRef(self->st->mg->empty_str));
  const pmu_request_t *r = message_view(self);
  if (r == NULL)
    return NULL;
  if (r->http_major == 1 && r->http_minor == 1)
    return Py_NewRef(self->st->mg->proto_11);
  if (r->http_major == 1 && r->http_minor == 0)
    return Py_NewRef(self->st->mg->proto_10);
  return PyUnicode_FromFormat("HTTP/%u.%u", (unsigned)r->http_major, (unsigned)r->http_minor);
}

/* request.body (the Request's own cache and rules: a streamed body raises). */
static PyObject *get_body_bytes(PyObject *op, void *closure) {
  MgMessageObject *self = MSG(op);
  IF_EMPTY(op, PyBytes_FromStringAndSize("", 0));
  if (self->body == NULL) {
    PyObject *body = PyObject_GetAttr(self->request, self->st->mg->str_body);
    if (body == NULL)
      return NULL;
    if (!PyBytes_Check(body)) {
      Py_DECREF(body);
      PyErr_SetString(PyExc_TypeError, "request.body is not bytes");
      return NULL;
    }
    self->body = body;
  }
  return Py_NewRef(self->body);
}

static PyObject *get_body_text(PyObject *op, void *closure) {
  PyObject *body = get_body_bytes(op, closure);
  if (body == NULL)
    return NULL;
  PyObject *text = mg_text(MSG(op)->st, PyBytes_AS_STRING(body), (size_t)PyBytes_GET_SIZE(body));
  Py_DECREF(body);
  return text;
}

static PyObject *get_request(PyObject *op, void *closure) {
  PyObject *r = MSG(op)->request;
  return Py_NewRef(r ? r : Py_None);
}

/* A str argument as UTF-8 (as pymongoose encodes names). */
static const char *utf8_arg(PyObject *o, Py_ssize_t *n, const char *what) {
  if (!PyUnicode_Check(o)) {
    PyErr_Format(PyExc_TypeError, "%s must be str, not %.100s", what, Py_TYPE(o)->tp_name);
    return NULL;
  }
  return PyUnicode_AsUTF8AndSize(o, n);
}

/* The first header named `name` (ASCII case-insensitive), as Mongoose's
 * mg_http_get_header finds it; NULL when absent. */
static const pmu_header_t *find_header(const pmu_request_t *r, const char *name, Py_ssize_t n) {
  for (size_t i = 0; i < r->header_count; i++) {
    const pmu_header_t *h = &r->headers[i];
    if (h->name_len == (size_t)n && strncasecmp(h->name, name, (size_t)n) == 0)
      return h;
  }
  return NULL;
}

PyDoc_STRVAR(header_doc, "header(name, default=None) -> str | None\n\n"
                         "The first value of header `name` (case-insensitive), else default.");

static PyObject *message_header(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames) {
  PyObject *name = nargs > 0 ? args[0] : NULL, *deflt = nargs > 1 ? args[1] : Py_None;
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < nkw; i++) {
    PyObject *key = PyTuple_GET_ITEM(kwnames, i);
    if (PyUnicode_CompareWithASCIIString(key, "name") == 0 && name == NULL)
      name = args[nargs + i];
    else if (PyUnicode_CompareWithASCIIString(key, "default") == 0 && nargs < 2)
      deflt = args[nargs + i];
    else
      name = NULL, nargs = 3; /* reported below */
  }
  if (name == NULL || nargs > 2) {
    PyErr_SetString(PyExc_TypeError, "header(name, default=None)");
    return NULL;
  }
  Py_ssize_t n;
  const char *s = utf8_arg(name, &n, "name");
  if (s == NULL)
    return NULL;
  IF_EMPTY(op, Py_NewRef(deflt));
  const pmu_header_t *h = NULL;
  const pmu_request_t *r = message_view(MSG(op));
  if (r == NULL)
    return NULL;
  h = find_header(r, s, n);
  if (h == NULL)
    return Py_NewRef(deflt);
  return mg_text(MSG(op)->st, h->value, h->value_len);
}

PyDoc_STRVAR(headers_doc, "headers() -> list[tuple[str, str]]\n\n"
                          "Every header as (name, value), in the order received.");

static PyObject *message_headers(PyObject *op, PyObject *unused) {
  MgMessageObject *self = MSG(op);
  IF_EMPTY(op, PyList_New(0));
  const pmu_request_t *r = message_view(self);
  if (r == NULL)
    return NULL;
  PyObject *list = PyList_New((Py_ssize_t)r->header_count);
  if (list == NULL)
    return NULL;
  for (size_t i = 0; i < r->header_count; i++) {
    const pmu_header_t *h = &r->headers[i];
    /* "N" steals both, and releases the one made when the other is NULL. */
    PyObject *pair = Py_BuildValue("(NN)", mg_text(self->st, h->name, h->name_len),
                                   mg_text(self->st, h->value, h->value_len));
    if (pair == NULL) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)i, pair); /* steals pair */
  }
  return list;
}

static int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = (unsigned char)(c | 0x20);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* What pymongoose's query_var gives for one value: Mongoose decodes it as a
 * form value ('+' is a space, %XX a byte) into a 256-byte buffer; a bad
 * escape, a value that does not fit (more than 255 bytes) and an empty one
 * all give None. */
#define MG_VAR_MAX 256

static PyObject *decode_var(pyb_state *st, const char *p, size_t n) {
  char out[MG_VAR_MAX];
  size_t j = 0;
  for (size_t i = 0; i < n; i++, j++) {
    if (j + 1 >= sizeof out)
      Py_RETURN_NONE; /* too long for Mongoose's buffer */
    if (p[i] == '%') {
      int hi = i + 2 < n ? hex_value((unsigned char)p[i + 1]) : -1;
      int lo = i + 2 < n ? hex_value((unsigned char)p[i + 2]) : -1;
      if (hi < 0 || lo < 0)
        Py_RETURN_NONE;
      out[j] = (char)(hi << 4 | lo);
      i += 2;
    } else {
      out[j] = p[i] == '+' ? ' ' : p[i];
    }
  }
  if (j == 0)
    Py_RETURN_NONE;
  return PyUnicode_DecodeUTF8(out, (Py_ssize_t)j, "surrogateescape");
}

PyDoc_STRVAR(query_var_doc,
             "query_var(name) -> str | None\n\n"
             "The query parameter `name` (case-insensitive), decoded as a form value,\n"
             "as Mongoose's mg_http_get_var gives it: None when absent, empty, badly\n"
             "escaped or longer than 255 bytes decoded.");

static PyObject *message_query_var(PyObject *op, PyObject *name) {
  Py_ssize_t n;
  const char *s = utf8_arg(name, &n, "name");
  if (s == NULL)
    return NULL;
  IF_EMPTY(op, Py_NewRef(Py_None));
  const pmu_request_t *r = message_view(MSG(op));
  if (r == NULL)
    return NULL;
  const char *nul = memchr(s, '\0', (size_t)n); /* Mongoose takes the name as a C string */
  if (nul != NULL)
    n = nul - s;
  const char *q = r->query, *end = r->query + r->query_len;
  while (q < end) {
    const char *amp = memchr(q, '&', (size_t)(end - q));
    const char *entry_end = amp ? amp : end;
    if (entry_end > q) {
      const char *eq = memchr(q, '=', (size_t)(entry_end - q));
      const char *key_end = eq ? eq : entry_end;
      if (key_end - q == n && strncasecmp(q, s, (size_t)n) == 0) {
        if (eq == NULL)
          Py_RETURN_NONE; /* "name" alone: an empty value */
        return decode_var(MSG(op)->st, eq + 1, (size_t)(entry_end - eq - 1));
      }
    }
    q = entry_end + 1;
  }
  Py_RETURN_NONE;
}

PyDoc_STRVAR(status_doc, "status() -> int\n\n"
                         "As Mongoose's mg_http_status: atoi() of the URI, so 0 for a request.");

static PyObject *message_status(PyObject *op, PyObject *unused) {
  /* Mongoose's mg_http_status is atoi() of the first line's second word: the
   * URI of a request, so 0 for every origin-form target; None when empty. */
  IF_EMPTY(op, Py_NewRef(Py_None));
  const pmu_request_t *r = message_view(MSG(op));
  if (r == NULL)
    return NULL;
  const char *p = r->path, *end = r->path + r->path_len;
  while (p < end && (*p == ' ' || (*p >= '\t' && *p <= '\r')))
    p++;
  int negative = p < end && *p == '-';
  if (p < end && (*p == '-' || *p == '+'))
    p++;
  long long v = 0;
  for (; p < end && *p >= '0' && *p <= '9' && v < 1000000000000LL; p++)
    v = v * 10 + (*p - '0');
  return PyLong_FromLongLong(negative ? -v : v);
}

PyDoc_STRVAR(header_var_doc,
             "header_var(header_name, var_name) -> str | None\n\n"
             "The value of `var_name=` inside header `header_name` (e.g. charset of\n"
             "Content-Type), as Mongoose's mg_http_get_header_var finds it: the name is\n"
             "matched case-sensitively, the value runs to ';', ' ' or ',' or is quoted.\n"
             "None when absent or empty.");

static PyObject *message_header_var(PyObject *op, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "header_var(header_name, var_name)");
    return NULL;
  }
  Py_ssize_t hn, vn;
  const char *hs = utf8_arg(args[0], &hn, "header_name");
  const char *vs = hs ? utf8_arg(args[1], &vn, "var_name") : NULL;
  if (vs == NULL)
    return NULL;
  IF_EMPTY(op, Py_NewRef(Py_None));
  const pmu_request_t *r = message_view(MSG(op));
  if (r == NULL)
    return NULL;
  const pmu_header_t *h = find_header(r, hs, hn);
  if (h == NULL || vn == 0)
    Py_RETURN_NONE;
  const char *s = h->value;
  size_t len = h->value_len, v = (size_t)vn;
  for (size_t i = 0; i + v + 2 < len; i++) {
    if (s[i + v] != '=' || memcmp(s + i, vs, v) != 0)
      continue;
    const char *b = s + i + v + 1, *p = b, *x = s + len;
    int quoted = p < x && *p == '"';
    while (p < x && (quoted ? p == b || *p != '"' : *p != ';' && *p != ' ' && *p != ','))
      p++;
    size_t n = (size_t)(p - b) + (size_t)quoted;
    if (n > 1 && b[0] == '"' && b[n - 1] == '"')
      b++, n -= 2; /* the quotes off */
    if (n == 0)
      Py_RETURN_NONE;
    return mg_text(MSG(op)->st, b, n);
  }
  Py_RETURN_NONE;
}

static int message_bool(PyObject *op) { return MSG(op)->request != NULL; }

static PyObject *message_repr(PyObject *op) {
  PyObject *r = MSG(op)->request;
  return r ? PyUnicode_FromFormat("<MgHttpMessage %R>", r)
           : PyUnicode_FromString("<MgHttpMessage>");
}

static PyGetSetDef message_getset[] = {
    {"query", get_query, NULL, "The query string as sent, without '?'; '' if none.", NULL},
    {"proto", get_proto, NULL, "'HTTP/1.1' or 'HTTP/1.0'.", NULL},
    {"body_bytes", get_body_bytes, NULL, "The whole body (bytes).", NULL},
    {"body_text", get_body_text, NULL, "The body as UTF-8 text (surrogateescape).", NULL},
    {"request", get_request, NULL, "The Request this message reads.", NULL},
    {NULL},
};

static PyMemberDef message_members[] = {
    {"method", T_OBJECT_EX, offsetof(MgMessageObject, method), READONLY,
     "The request method, e.g. 'GET'."},
    {"uri", T_OBJECT_EX, offsetof(MgMessageObject, uri), READONLY,
     "The path as sent, without the query."},
    {NULL},
};

static PyMethodDef message_methods[] = {
    {"header", (PyCFunction)(void (*)(void))message_header, METH_FASTCALL | METH_KEYWORDS,
     header_doc},
    {"headers", message_headers, METH_NOARGS, headers_doc},
    {"query_var", message_query_var, METH_O, query_var_doc},
    {"status", message_status, METH_NOARGS, status_doc},
    {"header_var", (PyCFunction)(void (*)(void))message_header_var, METH_FASTCALL, header_var_doc},
    {NULL},
};

PyDoc_STRVAR(message_doc, "MgHttpMessage(request=None)\n\n"
                          "pymongoose's HttpMessage (the data of MG_EV_HTTP_MSG) over a Request;\n"
                          "without one, an empty message (false; '' and None everywhere).");

static PyType_Slot message_slots[] = {
    {Py_tp_new, message_new},
    {Py_tp_dealloc, message_dealloc},
    {Py_tp_traverse, message_traverse},
    {Py_tp_clear, message_clear},
    {Py_tp_repr, message_repr},
    {Py_tp_members, message_members},
    {Py_tp_getset, message_getset},
    {Py_tp_methods, message_methods},
    {Py_nb_bool, message_bool},
    {Py_tp_doc, (void *)message_doc},
    {0, NULL},
};

static PyType_Spec message_spec = {
    .name = "pymongoose_uring._pmu.MgHttpMessage",
    .basicsize = sizeof(MgMessageObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = message_slots,
};

/* ---- MgConnection ---- */

/*
 * A response reply() prepared, owning what it points to: the body's object
 * and a copy of the header bytes (validated as the native API's). The
 * dispatcher keeps one on its stack while the handler runs: reply() inside
 * the handler fills it and the dispatcher sends it when the handler returns,
 * as Mongoose sends what mg_http_reply() queued after the event handler
 * returns. So the message stays readable for the whole handler call, and the
 * request's data need not be copied for it. Anything that could be ordered
 * after the answer (reading _conn or _request, a second reply()) sends it
 * first.
 */
#define MG_HEADERS_INLINE 8
#define MG_TEXT_INLINE 256

typedef struct mg_answer {
  PyObject *request;    /* strong: the request it answers; NULL when empty */
  PyObject *body_owner; /* strong: keeps body alive, or NULL */
  pmu_response_t resp;
  pmu_header_t *headers; /* headers_inline or PyMem */
  char *text;            /* text_inline or PyMem: the header bytes */
  pmu_header_t headers_inline[MG_HEADERS_INLINE];
  char text_inline[MG_TEXT_INLINE];
} mg_answer;

typedef struct {
  PyObject_HEAD
  PyObject *request;             /* _request: the request to answer, or NULL (None) */
  PyObject *userdata;            /* userdata */
  PyObject *handler;             /* _handler */
  PyObject *conn;                /* _conn: the _pmu.Connection, for raw sends */
  mg_answer *pending;            /* the dispatcher's, while it runs the handler; or NULL */
  unsigned long dispatch_thread; /* the thread running the dispatcher, while pending is set */
  char close_after;              /* _close_after: add "Connection: close" to the answer */
} MgConnObject;

#define CONN(o) ((MgConnObject *)(o))

static int conn_traverse(PyObject *op, visitproc visit, void *arg) {
  MgConnObject *self = CONN(op);
  Py_VISIT(Py_TYPE(op));
  Py_VISIT(self->request);
  Py_VISIT(self->userdata);
  Py_VISIT(self->handler);
  Py_VISIT(self->conn);
  return 0;
}

static int conn_clear(PyObject *op) {
  MgConnObject *self = CONN(op);
  Py_CLEAR(self->request);
  Py_CLEAR(self->userdata);
  Py_CLEAR(self->handler);
  Py_CLEAR(self->conn);
  return 0;
}

static void conn_dealloc(PyObject *op) {
  PyTypeObject *type = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  conn_clear(op);
  type->tp_free(op);
  Py_DECREF(type);
}

/* A reply() body as bytes to send: str as UTF-8, None as b"", bytes as is,
 * anything else as bytes(body) gives it (pymongoose's rule). Sets *p, *n and
 * *owner (a new reference that keeps the bytes alive, or NULL), or returns -1. */
static int reply_body(PyObject *body, const char **p, Py_ssize_t *n, PyObject **owner) {
  if (body == NULL || body == Py_None) {
    *p = "";
    *n = 0;
    *owner = NULL;
    return 0;
  }
  if (PyBytes_Check(body)) {
    *p = PyBytes_AS_STRING(body);
    *n = PyBytes_GET_SIZE(body);
    *owner = Py_NewRef(body);
    return 0;
  }
  if (PyUnicode_Check(body)) {
    *p = PyUnicode_AsUTF8AndSize(body, n); /* cached in the str */
    if (*p == NULL)
      return -1;
    *owner = Py_NewRef(body);
    return 0;
  }
  PyObject *b = PyObject_CallOneArg((PyObject *)&PyBytes_Type, body);
  if (b == NULL)
    return -1;
  *p = PyBytes_AS_STRING(b);
  *n = PyBytes_GET_SIZE(b);
  *owner = b;
  return 0;
}

/* pymongoose writes each header as f"{name}: {value}": values that are
 * neither str, bytes nor int are given as str(value). Returns headers itself
 * (a new reference) when nothing needs converting, else a new dict. */
static PyObject *reply_headers(PyObject *headers) {
  if (!PyDict_Check(headers))
    return Py_NewRef(headers); /* a mapping: pyb_build_headers takes its items() */
  Py_ssize_t pos = 0;
  PyObject *k, *v, *copy = NULL;
  while (PyDict_Next(headers, &pos, &k, &v)) {
    if (PyUnicode_Check(v) || PyBytes_Check(v) || (PyLong_Check(v) && !PyBool_Check(v)))
      continue;
    if (copy == NULL && (copy = PyDict_Copy(headers)) == NULL)
      return NULL;
    PyObject *s = PyObject_Str(v);
    if (s == NULL || PyDict_SetItem(copy, k, s) < 0) {
      Py_XDECREF(s);
      Py_DECREF(copy);
      return NULL;
    }
    Py_DECREF(s);
  }
  return copy ? copy : Py_NewRef(headers);
}

static const pmu_header_t text_plain = {"Content-Type", 12, "text/plain", 10};
static const pmu_header_t conn_close = {"Connection", 10, "close", 5};

static void answer_init(mg_answer *a) {
  a->request = NULL;
  a->body_owner = NULL;
  a->headers = a->headers_inline;
  a->text = a->text_inline;
}

/* Drop what a holds; it is empty again. */
static void answer_release(mg_answer *a) {
  Py_CLEAR(a->request);
  Py_CLEAR(a->body_owner);
  if (a->headers != a->headers_inline)
    PyMem_Free(a->headers);
  if (a->text != a->text_inline)
    PyMem_Free(a->text);
  a->headers = a->headers_inline;
  a->text = a->text_inline;
}

/* Copy the validated headers of `built` (and Connection: close) into a. */
static int copy_headers(mg_answer *a, const pmu_response_t *built, int close_after) {
  size_t count = built->header_count, bytes = 0;
  for (size_t i = 0; i < count; i++)
    bytes += built->headers[i].name_len + built->headers[i].value_len;
  if (count + 1 > MG_HEADERS_INLINE &&
      (a->headers = PyMem_Malloc((count + 1) * sizeof *a->headers)) == NULL)
    goto nomem;
  if (bytes > MG_TEXT_INLINE && (a->text = PyMem_Malloc(bytes)) == NULL)
    goto nomem;
  char *p = a->text;
  for (size_t i = 0; i < count; i++) {
    const pmu_header_t *h = &built->headers[i];
    pmu_header_t *o = &a->headers[i];
    memcpy(p, h->name, h->name_len);
    o->name = p;
    o->name_len = h->name_len;
    p += h->name_len;
    if (h->value_len)
      memcpy(p, h->value, h->value_len);
    o->value = p;
    o->value_len = h->value_len;
    p += h->value_len;
  }
  if (close_after)
    a->headers[count++] = conn_close;
  a->resp.headers = a->headers;
  a->resp.header_count = count;
  return 0;
nomem:
  if (a->headers == NULL)
    a->headers = a->headers_inline;
  if (a->text == NULL)
    a->text = a->text_inline;
  PyErr_NoMemory();
  return -1;
}

/* Whether the headers ask for a chunked answer (Transfer-Encoding naming
 * chunked): one the engine cannot send whole, left to the layer above. */
static int is_chunked(const pmu_response_t *r) {
  for (size_t i = 0; i < r->header_count; i++) {
    const pmu_header_t *h = &r->headers[i];
    if (h->name_len != 17 || strncasecmp(h->name, "transfer-encoding", 17) != 0)
      continue;
    for (size_t k = 0; k + 7 <= h->value_len; k++)
      if (strncasecmp(h->value + k, "chunked", 7) == 0)
        return 1;
  }
  return 0;
}

/* Fill the empty `a` with pymongoose's reply to `request` (live): the body
 * and headers as reply() takes them, validated. 0; 1 when the headers ask for
 * a chunked answer (a stays empty); -1 with an exception (a is then empty). */
static int answer_prepare(mg_answer *a, PyObject *request, int status, PyObject *body,
                          PyObject *headers, int close_after) {
  const char *bp;
  Py_ssize_t bn;
  memset(&a->resp, 0, sizeof a->resp);
  a->resp.status = status;
  if (reply_body(body, &bp, &bn, &a->body_owner) < 0)
    return -1;
  a->resp.body = bp;
  a->resp.body_len = (size_t)bn;
  if (headers == NULL || headers == Py_None) {
    a->headers[0] = text_plain;
    a->headers[1] = conn_close;
    a->resp.headers = a->headers;
    a->resp.header_count = close_after ? 2 : 1;
  } else {
    /* Values are nearly always str: build first, convert only on a TypeError. */
    PyObject *hdrs = Py_NewRef(headers);
    pyb_built built;
    int rc = pyb_build_headers(hdrs, &built);
    if (rc < 0 && PyDict_Check(headers) && PyErr_ExceptionMatches(PyExc_TypeError)) {
      PyErr_Clear();
      pyb_built_release(&built);
      Py_SETREF(hdrs, reply_headers(headers));
      if (hdrs == NULL) {
        answer_release(a);
        return -1;
      }
      rc = pyb_build_headers(hdrs, &built);
    }
    if (rc == 0)
      rc = is_chunked(&built.response) ? 1 : copy_headers(a, &built.response, close_after);
    pyb_built_release(&built);
    Py_DECREF(hdrs);
    if (rc != 0) {
      answer_release(a);
      return rc;
    }
  }
  a->request = Py_NewRef(request);
  return 0;
}

/* Hand a's response to the engine (the request's data copied first if it has
 * more than `owners` references) and empty a. 0, or -1 with an exception (the
 * request was answered some other way meanwhile). */
static int answer_send(pyb_state *st, mg_answer *a, Py_ssize_t owners) {
  PyObject *owner = a->body_owner;
  if (owner != NULL && a->resp.body_len >= PYB_ZERO_COPY_MIN &&
      (PyBytes_CheckExact(owner) || PyUnicode_CheckExact(owner)) &&
      pyb_zero_copy(st, &a->resp, owner) < 0)
    a->resp.body_release = NULL; /* no memory for the note: copied instead */
  int rc = pyb_request_respond(a->request, &a->resp, owners);
  answer_release(a);
  return rc;
}

/* Send the answer reply() left for the dispatcher now, because something may
 * follow it (the request's data is copied: the message is still in use).
 * 0, or -1 with an exception. */
static int flush_pending(MgConnObject *self) {
  mg_answer *a = self->pending;
  if (a == NULL || a->request == NULL || self->dispatch_thread != PyThread_get_thread_ident())
    return 0;
  return answer_send(pyb_state_from_type(Py_TYPE(self)), a, 0);
}

/* The bytes Mongoose's mg_http_reply writes, for a reply with no request
 * left to answer: sent raw on the connection. New reference or NULL. */
static PyObject *raw_reply(int status, PyObject *body, PyObject *headers, int close_after) {
  const char *bp;
  Py_ssize_t bn;
  PyObject *owner = NULL, *out = NULL, *lines = NULL;
  if (reply_body(body, &bp, &bn, &owner) < 0)
    return NULL;
  if (headers == NULL || headers == Py_None) {
    lines = PyUnicode_FromString("Content-Type: text/plain\r\n");
  } else {
    PyObject *items = PyMapping_Items(headers);
    Py_ssize_t n = items ? PyList_GET_SIZE(items) : 0;
    PyObject *parts = items ? PyList_New(n) : NULL;
    for (Py_ssize_t i = 0; parts != NULL && i < n; i++) {
      PyObject *kv = PyList_GET_ITEM(items, i);
      PyObject *line =
          PyTuple_Check(kv) && PyTuple_GET_SIZE(kv) == 2
              ? PyUnicode_FromFormat("%S: %S\r\n", PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1))
              : NULL;
      if (line == NULL) {
        if (!PyErr_Occurred())
          PyErr_SetString(PyExc_TypeError, "headers.items() must give (name, value) pairs");
        Py_CLEAR(parts);
        break;
      }
      PyList_SET_ITEM(parts, i, line);
    }
    if (parts != NULL) {
      PyObject *empty = PyUnicode_FromString("");
      lines = empty ? PyUnicode_Join(empty, parts) : NULL;
      Py_XDECREF(empty);
    }
    Py_XDECREF(parts);
    Py_XDECREF(items);
  }
  if (lines == NULL)
    goto done;
  {
    Py_ssize_t ln;
    const char *l = PyUnicode_AsUTF8AndSize(lines, &ln);
    if (l == NULL)
      goto done;
    PyObject *head = PyBytes_FromFormat("HTTP/1.1 %d %s\r\n%s%sContent-Length: %zd\r\n\r\n", status,
                                        pmu_status_reason(status), l,
                                        close_after ? "Connection: close\r\n" : "", bn);
    if (head == NULL)
      goto done;
    out = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(head) + bn);
    if (out != NULL) {
      memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(head), (size_t)PyBytes_GET_SIZE(head));
      if (bn)
        memcpy(PyBytes_AS_STRING(out) + PyBytes_GET_SIZE(head), bp, (size_t)bn);
    }
    Py_DECREF(head);
  }
done:
  Py_XDECREF(lines);
  Py_XDECREF(owner);
  return out;
}

PyDoc_STRVAR(reply_doc,
             "reply(status_code, body=b'', headers=None)\n\n"
             "pymongoose's reply: answer _request (then set to None) with this status,\n"
             "body (str as UTF-8; NUL bytes are sent, by length) and headers (a dict;\n"
             "None gives Content-Type: text/plain). With no request left to answer, the\n"
             "response is sent raw on _conn as Mongoose formats it.");

/* getattr without building an AttributeError when it is missing: 1 found
 * (*out a new reference), 0 missing (*out NULL), -1 another error. */
static int lookup_attr(PyObject *obj, PyObject *name, PyObject **out) {
#if PY_VERSION_HEX >= 0x030D0000
  return PyObject_GetOptionalAttr(obj, name, out);
#else
  return _PyObject_LookupAttr(obj, name, out);
#endif
}

static PyObject *conn_reply(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
  MgConnObject *self = CONN(op);
  pyb_state *st = pyb_state_from_type(Py_TYPE(op));
  PyObject *vals[3] = {NULL, NULL, NULL};
  static const char *const names[3] = {"status_code", "body", "headers"};
  if (nargs > 3) {
    PyErr_SetString(PyExc_TypeError, "reply(status_code, body=b'', headers=None)");
    return NULL;
  }
  for (Py_ssize_t i = 0; i < nargs; i++)
    vals[i] = args[i];
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < nkw; i++) {
    PyObject *key = PyTuple_GET_ITEM(kwnames, i);
    int k = 0; /* keyword names are usually interned: compare pointers first */
    while (k < 3 && key != st->mg->reply_kw[k])
      k++;
    if (k == 3)
      for (k = 0; k < 3 && PyUnicode_CompareWithASCIIString(key, names[k]) != 0; k++)
        ;
    if (k == 3 || vals[k] != NULL) {
      PyErr_Format(PyExc_TypeError, "reply() got an unexpected or repeated argument %R", key);
      return NULL;
    }
    vals[k] = args[nargs + i];
  }
  if (vals[0] == NULL) {
    PyErr_SetString(PyExc_TypeError, "reply() missing required argument 'status_code'");
    return NULL;
  }
  if (!PyLong_Check(vals[0])) {
    PyErr_Format(PyExc_TypeError, "status_code must be an int, not %.100s",
                 Py_TYPE(vals[0])->tp_name);
    return NULL;
  }
  int overflow;
  long status = PyLong_AsLongAndOverflow(vals[0], &overflow);
  if (status == -1 && PyErr_Occurred())
    return NULL;
  if (overflow || status < -2147483647L || status > 2147483647L) {
    PyErr_SetString(PyExc_OverflowError, "status_code out of range");
    return NULL;
  }
  /* A reply already waiting for the dispatcher goes first. */
  if (flush_pending(self) < 0)
    return NULL;
  PyObject *request = self->request;
  if (request != NULL && request != Py_None && PyObject_TypeCheck(request, st->request_type) &&
      pyb_request_is_live(request)) {
    if (!pmu_status_valid((int)status)) {
      PyErr_Format(PyExc_ValueError, "HTTP status %ld cannot be sent: a final status is 200..999",
                   status);
      return NULL;
    }
    mg_answer *pending = self->pending, now;
    int deferred = pending != NULL && self->dispatch_thread == PyThread_get_thread_ident();
    mg_answer *a = deferred ? pending : &now;
    if (!deferred)
      answer_init(&now);
    int rc = answer_prepare(a, request, (int)status, vals[1], vals[2], self->close_after);
    if (rc < 0)
      return NULL;
    if (rc == 0) {
      Py_CLEAR(self->request); /* a holds it now */
      /* Deferred: the dispatcher sends it when the handler returns. Else now,
       * copying the request's data (who else reads it is not known here). */
      if (!deferred && answer_send(st, a, 0) < 0)
        return NULL;
      Py_RETURN_NONE;
    }
  }
  /* The rest (a chunked answer begun, no request left to answer) is the
   * subclass's, when it has a _reply_slow(status_code, body, headers). */
  PyObject *slow = NULL;
  if (lookup_attr(op, st->mg->str_reply_slow, &slow) < 0)
    return NULL;
  if (slow != NULL) {
    PyObject *argv[3] = {vals[0], vals[1] ? vals[1] : st->mg->empty_bytes,
                         vals[2] ? vals[2] : Py_None};
    PyObject *r = PyObject_Vectorcall(slow, argv, 3, NULL);
    Py_DECREF(slow);
    return r;
  }
  if (request != NULL && request != Py_None && PyObject_TypeCheck(request, st->request_type) &&
      pyb_request_is_live(request)) {
    PyErr_SetString(PyExc_ValueError, "reply(): a chunked answer needs a _reply_slow()");
    return NULL;
  }
  /* Nothing to answer: as Mongoose, the bytes go out on the connection. */
  if (self->conn == NULL || self->conn == Py_None) {
    PyErr_SetString(PyExc_RuntimeError,
                    "reply(): no request to answer and no connection to send on (a listener?)");
    return NULL;
  }
  PyObject *data = raw_reply((int)status, vals[1], vals[2], self->close_after);
  if (data == NULL)
    return NULL;
  Py_CLEAR(self->request);
  PyObject *r = PyObject_CallMethodOneArg(self->conn, st->mg->str_send, data);
  Py_DECREF(data);
  if (r == NULL)
    return NULL;
  Py_DECREF(r);
  Py_RETURN_NONE;
}

/* _request and _conn: reading them sends a waiting reply first, so that what
 * the caller does next with them (answer, send, close) comes after it. */
static PyObject *get_slot(MgConnObject *self, PyObject *value) {
  if (flush_pending(self) < 0)
    return NULL;
  return Py_NewRef(value ? value : Py_None);
}

static int set_slot(PyObject **slot, PyObject *value) {
  Py_XSETREF(*slot, value == NULL || value == Py_None ? NULL : Py_NewRef(value));
  return 0;
}

static PyObject *get_request_slot(PyObject *op, void *closure) {
  return get_slot(CONN(op), CONN(op)->request);
}
static int set_request_slot(PyObject *op, PyObject *v, void *closure) {
  return set_slot(&CONN(op)->request, v);
}
static PyObject *get_conn_slot(PyObject *op, void *closure) {
  return get_slot(CONN(op), CONN(op)->conn);
}
static int set_conn_slot(PyObject *op, PyObject *v, void *closure) {
  return set_slot(&CONN(op)->conn, v);
}

static PyGetSetDef conn_getset[] = {
    {"_request", get_request_slot, set_request_slot,
     "The request reply() answers, or None (a reply waiting for the end of the handler is "
     "sent first).",
     NULL},
    {"_conn", get_conn_slot, set_conn_slot,
     "The _pmu.Connection a reply without a request is sent on, or None (a reply waiting for "
     "the end of the handler is sent first).",
     NULL},
    {NULL},
};

static PyMemberDef conn_members[] = {
    {"userdata", T_OBJECT, offsetof(MgConnObject, userdata), 0, "Free for the application."},
    {"_handler", T_OBJECT, offsetof(MgConnObject, handler), 0,
     "This connection's handler, or None (the dispatcher's resolve() decides)."},
    {"_close_after", T_BOOL, offsetof(MgConnObject, close_after), 0,
     "Whether reply() adds 'Connection: close'."},
    {NULL},
};

static PyMethodDef conn_methods[] = {
    {"reply", (PyCFunction)(void (*)(void))conn_reply, METH_FASTCALL | METH_KEYWORDS, reply_doc},
    {NULL},
};

PyDoc_STRVAR(conn_doc, "MgConnection()\n\n"
                       "The base of pymongoose_uring.compat.Connection: the slots of its hot "
                       "path and reply().");

static PyType_Slot conn_slots[] = {
    {Py_tp_new, PyType_GenericNew}, {Py_tp_dealloc, conn_dealloc}, {Py_tp_traverse, conn_traverse},
    {Py_tp_clear, conn_clear},      {Py_tp_members, conn_members}, {Py_tp_methods, conn_methods},
    {Py_tp_getset, conn_getset},    {Py_tp_doc, (void *)conn_doc}, {0, NULL},
};

static PyType_Spec conn_spec = {
    .name = "pymongoose_uring._pmu.MgConnection",
    .basicsize = sizeof(MgConnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = conn_slots,
};

/* ---- MgDispatcher ---- */

typedef struct {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  pyb_state *st;
  PyObject *resolve;   /* resolve(conn) -> handler or None */
  PyObject *make_conn; /* make_conn(request) -> MgConnection, or NULL */
  PyObject *handler;   /* the default handler, before resolve(); NULL (None) for none */
  char http_hdrs;      /* deliver MG_EV_HTTP_HDRS before MG_EV_HTTP_MSG */
} MgDispatcherObject;

#define DISP(o) ((MgDispatcherObject *)(o))

/* The compat Connection of the request: request.connection.user, else
 * make_conn(request). New reference (Py_None: no user and no make_conn), or
 * NULL with an exception. */
static PyObject *connection_of(MgDispatcherObject *self, PyObject *request) {
  struct pyb_mg *mg = self->st->mg;
  PyObject *conn = NULL;
  /* request.connection.user, read in C. */
  PyObject *handle = pyb_request_connection(request); /* borrowed, NULL without one */
  if (handle != NULL) {
    conn = pyb_conn_user_slot(handle); /* borrowed */
    if (conn == Py_None)
      conn = NULL;
    Py_XINCREF(conn);
  }
  if (conn == NULL) {
    if (self->make_conn == NULL)
      return Py_NewRef(Py_None); /* none: its connection is gone, or was never one of ours */
    conn = PyObject_CallOneArg(self->make_conn, request);
    if (conn == NULL)
      return NULL;
  }
  if (!PyObject_TypeCheck(conn, mg->connection_type)) {
    PyErr_Format(PyExc_TypeError, "the compat Connection must be an MgConnection, not %.100s",
                 Py_TYPE(conn)->tp_name);
    Py_DECREF(conn);
    return NULL;
  }
  return conn;
}

/* The handler for an event on c: its own, else the dispatcher's, else
 * resolve(c). New reference (Py_None: none), or NULL with an exception. */
static PyObject *find_handler(MgDispatcherObject *self, MgConnObject *c) {
  PyObject *handler = c->handler;
  if (handler == NULL || handler == Py_None)
    handler = self->handler;
  if (handler != NULL && handler != Py_None)
    return Py_NewRef(handler);
  return PyObject_CallOneArg(self->resolve, (PyObject *)c);
}

/* "Not Found" for a request nobody handles (live; the request's data copied
 * if others hold it). */
static void answer_404(PyObject *request) {
  static const pmu_header_t ct = {"Content-Type", 12, "text/plain; charset=utf-8", 25};
  static const pmu_response_t nf = {
      .status = 404, .headers = &ct, .header_count = 1, .body = "Not Found", .body_len = 9};
  if (pyb_request_respond(request, &nf, 0) < 0)
    PyErr_Clear(); /* answered otherwise already */
}

static PyObject *dispatch(MgDispatcherObject *self, PyObject *request) {
  pyb_state *st = self->st;
  PyObject *conn = connection_of(self, request);
  if (conn == NULL) {
    pyb_log_exception(st, "pymongoose dispatch failed; sent 500", request);
    pyb_request_answer_500(request, 1);
    Py_RETURN_NONE;
  }
  if (conn == Py_None) {
    /* No compat Connection for it (e.g. closed, its object let go): 404, as
     * compat's own dispatcher answers. */
    Py_DECREF(conn);
    answer_404(request);
    Py_RETURN_NONE;
  }
  MgConnObject *c = CONN(conn);
  PyObject *msg = message_new_for(st, request);
  if (msg == NULL) {
    Py_DECREF(conn);
    return NULL; /* the engine's batch loop answers 500 */
  }
  Py_XSETREF(c->request, Py_NewRef(request));
  mg_answer pending;
  answer_init(&pending);
  mg_answer *outer = c->pending; /* a dispatch further up this thread's stack */
  unsigned long outer_thread = c->dispatch_thread;
  c->pending = &pending;
  c->dispatch_thread = PyThread_get_thread_ident();
  /* MG_EV_HTTP_HDRS, then MG_EV_HTTP_MSG with the same message, as Mongoose
   * delivers a request; each to the connection's handler of the moment. */
  PyObject *result = Py_NewRef(Py_None);
  PyObject *events[2] = {st->mg->ev_http_hdrs, st->mg->ev_http_msg};
  for (int i = self->http_hdrs ? 0 : 1; i < 2 && result != NULL; i++) {
    PyObject *handler = find_handler(self, c);
    if (handler == NULL) {
      Py_CLEAR(result);
    } else if (handler == Py_None) {
      Py_DECREF(handler);
      if (i == 1 && pending.request == NULL && pyb_request_is_live(request)) {
        answer_404(request); /* no handler for the request: what compat answered before */
        if (c->request == request)
          Py_CLEAR(c->request); /* answered: nothing left for a later reply() */
      }
    } else {
      PyObject *argv[3] = {conn, events[i], msg};
      Py_DECREF(result);
      pyb_note_callee(handler); /* the one a slow-handler warning names */
      result = PyObject_Vectorcall(handler, argv, 3, NULL);
      Py_DECREF(handler);
    }
  }
  c->pending = outer;
  c->dispatch_thread = outer_thread;
  if (result == NULL) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (pending.request != NULL && answer_send(st, &pending, 0) < 0)
      PyErr_Clear(); /* answered otherwise meanwhile: the 500 below is a no-op too */
    PyErr_Restore(type, value, tb);
    pyb_log_exception(st, "pymongoose handler raised; sent 500", request);
    pyb_request_answer_500(request, 0);
    if (c->request == request)
      Py_CLEAR(c->request); /* answered: a later reply() goes out raw */
  } else if (pending.request != NULL) {
    /* The handler's reply. Nothing but the message and the request's own
     * holders can read the request now: when nobody kept the message, the
     * data need not be copied (the batch loop, the message and pending hold
     * the Request; anyone else makes pyb_request_respond copy it). */
    Py_ssize_t owners = Py_REFCNT(msg) == 1 ? 3 : 0;
    if (answer_send(st, &pending, owners) < 0)
      pyb_log_exception(st, "a pymongoose reply could not be sent", request);
  }
  Py_XDECREF(result);
  Py_DECREF(msg);
  Py_DECREF(conn);
  Py_RETURN_NONE;
}

static PyObject *dispatcher_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                       PyObject *kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (nargs != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
    PyErr_SetString(PyExc_TypeError, "MgDispatcher takes one argument, the request");
    return NULL;
  }
  MgDispatcherObject *self = DISP(op);
  if (!PyObject_TypeCheck(args[0], self->st->request_type)) {
    PyErr_Format(PyExc_TypeError, "MgDispatcher(request): a Request, not %.100s",
                 Py_TYPE(args[0])->tp_name);
    return NULL;
  }
  return dispatch(self, args[0]);
}

static PyObject *dispatcher_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"resolve", "make_conn", "handler", NULL};
  PyObject *resolve, *make_conn = Py_None, *handler = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OO:MgDispatcher", kwlist, &resolve, &make_conn,
                                   &handler))
    return NULL;
  if (!PyCallable_Check(resolve) || (make_conn != Py_None && !PyCallable_Check(make_conn))) {
    PyErr_SetString(PyExc_TypeError,
                    "MgDispatcher(resolve, make_conn=None, handler=None): callables");
    return NULL;
  }
  MgDispatcherObject *self = (MgDispatcherObject *)type->tp_alloc(type, 0);
  if (self == NULL)
    return NULL;
  self->vectorcall = dispatcher_vectorcall;
  self->st = pyb_state_from_type(type);
  self->resolve = Py_NewRef(resolve);
  self->make_conn = make_conn == Py_None ? NULL : Py_NewRef(make_conn);
  self->handler = handler == Py_None ? NULL : Py_NewRef(handler);
  self->http_hdrs = 1;
  return (PyObject *)self;
}

static int dispatcher_traverse(PyObject *op, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(op));
  Py_VISIT(DISP(op)->resolve);
  Py_VISIT(DISP(op)->make_conn);
  Py_VISIT(DISP(op)->handler);
  return 0;
}

static int dispatcher_clear(PyObject *op) {
  Py_CLEAR(DISP(op)->resolve);
  Py_CLEAR(DISP(op)->make_conn);
  Py_CLEAR(DISP(op)->handler);
  return 0;
}

static void dispatcher_dealloc(PyObject *op) {
  PyTypeObject *type = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  dispatcher_clear(op);
  type->tp_free(op);
  Py_DECREF(type);
}

static PyMemberDef dispatcher_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(MgDispatcherObject, vectorcall), READONLY, NULL},
    {"resolve", T_OBJECT, offsetof(MgDispatcherObject, resolve), READONLY, NULL},
    {"handler", T_OBJECT, offsetof(MgDispatcherObject, handler), 0,
     "The handler of connections whose _handler is None (None: resolve(conn) decides)."},
    {"http_hdrs", T_BOOL, offsetof(MgDispatcherObject, http_hdrs), 0,
     "Whether each request is first delivered as MG_EV_HTTP_HDRS (default True, as Mongoose)."},
    {NULL},
};

PyDoc_STRVAR(dispatcher_doc,
             "MgDispatcher(resolve, make_conn=None, handler=None)\n\n"
             "A Server request handler running pymongoose handlers. Per request: conn =\n"
             "request.connection.user (else make_conn(request); neither: 404), an\n"
             "MgConnection;\n"
             "conn._request = request; the handler is conn._handler, else the\n"
             "dispatcher's handler, else resolve(conn) (None: 404); then\n"
             "handler(conn, MG_EV_HTTP_HDRS, msg) (unless http_hdrs is False) and\n"
             "handler(conn, MG_EV_HTTP_MSG, msg), msg = MgHttpMessage(request). A\n"
             "handler that raises is logged with its traceback, its request answered\n"
             "500 and no further event delivered for it.");

static PyType_Slot dispatcher_slots[] = {
    {Py_tp_new, dispatcher_new},           {Py_tp_dealloc, dispatcher_dealloc},
    {Py_tp_traverse, dispatcher_traverse}, {Py_tp_clear, dispatcher_clear},
    {Py_tp_call, PyVectorcall_Call},       {Py_tp_members, dispatcher_members},
    {Py_tp_doc, (void *)dispatcher_doc},   {0, NULL},
};

static PyType_Spec dispatcher_spec = {
    .name = "pymongoose_uring._pmu.MgDispatcher",
    .basicsize = sizeof(MgDispatcherObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = dispatcher_slots,
};

/* ---- module ---- */

static int add(PyObject *module, PyType_Spec *spec, PyTypeObject **out) {
  PyObject *t = PyType_FromModuleAndSpec(module, spec, NULL);
  if (t == NULL)
    return -1;
  *out = (PyTypeObject *)t;
  return PyModule_AddType(module, (PyTypeObject *)t);
}

int pyb_mg_exec(PyObject *module, pyb_state *st) {
  struct pyb_mg *mg = PyMem_Calloc(1, sizeof *mg);
  if (mg == NULL) {
    PyErr_NoMemory();
    return -1;
  }
  st->mg = mg;
  if (add(module, &message_spec, &mg->message_type) < 0 ||
      add(module, &conn_spec, &mg->connection_type) < 0 ||
      add(module, &dispatcher_spec, &mg->dispatcher_type) < 0)
    return -1;
  if ((mg->proto_11 = PyUnicode_InternFromString("HTTP/1.1")) == NULL ||
      (mg->proto_10 = PyUnicode_InternFromString("HTTP/1.0")) == NULL ||
      (mg->empty_str = PyUnicode_FromStringAndSize("", 0)) == NULL ||
      (mg->ev_http_msg = PyLong_FromLong(MG_EV_HTTP_MSG)) == NULL ||
      (mg->ev_http_hdrs = PyLong_FromLong(MG_EV_HTTP_HDRS)) == NULL ||
      (mg->str_send = PyUnicode_InternFromString("send")) == NULL ||
      (mg->str_body = PyUnicode_InternFromString("body")) == NULL ||
      (mg->str_reply_slow = PyUnicode_InternFromString("_reply_slow")) == NULL ||
      (mg->empty_bytes = PyBytes_FromStringAndSize("", 0)) == NULL ||
      (mg->reply_kw[0] = PyUnicode_InternFromString("status_code")) == NULL ||
      (mg->reply_kw[1] = PyUnicode_InternFromString("body")) == NULL ||
      (mg->reply_kw[2] = PyUnicode_InternFromString("headers")) == NULL)
    return -1;
  return 0;
}

int pyb_mg_traverse(pyb_state *st, visitproc visit, void *arg) {
  struct pyb_mg *mg = st->mg;
  if (mg != NULL) {
    Py_VISIT(mg->message_type);
    Py_VISIT(mg->connection_type);
    Py_VISIT(mg->dispatcher_type);
  }
  return 0;
}

void pyb_mg_clear(pyb_state *st) {
  struct pyb_mg *mg = st->mg;
  if (mg == NULL)
    return;
  Py_CLEAR(mg->message_type);
  Py_CLEAR(mg->connection_type);
  Py_CLEAR(mg->dispatcher_type);
  Py_CLEAR(mg->proto_11);
  Py_CLEAR(mg->proto_10);
  Py_CLEAR(mg->empty_str);
  Py_CLEAR(mg->ev_http_msg);
  Py_CLEAR(mg->ev_http_hdrs);
  Py_CLEAR(mg->str_send);
  Py_CLEAR(mg->str_body);
  Py_CLEAR(mg->str_reply_slow);
  Py_CLEAR(mg->empty_bytes);
  for (int i = 0; i < 3; i++)
    Py_CLEAR(mg->reply_kw[i]);
  PyMem_Free(mg);
  st->mg = NULL;
}
