/*
 * response.c: the Response type, and the conversion of anything a handler
 * returns into a pmu_response_t.
 *
 * The conversion borrows: body and header pointers point into the Python
 * objects themselves (a bytes object's buffer, a str's cached UTF-8), and
 * the engine copies them inside pmu_respond(). Objects made on the way (a
 * JSON string, str() of an int header) go into pyb_built.keep so they live
 * until then. The engine writes the status line, reason phrase, Server,
 * Date, Content-Length and Connection headers; only Content-Type and the
 * handler's own headers come from here.
 */
#include "binding.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

typedef struct {
  PyObject_HEAD
  int status;
  PyObject *body;         /* bytes or str (sent UTF-8 encoded) */
  PyObject *headers;      /* None, a mapping, or a sequence of (name, value) */
  PyObject *content_type; /* str or None: sent unless headers name a Content-Type */
} ResponseObject;

#define RESP(o) ((ResponseObject *)(o))

/* ---- JSON ----
 *
 * Handlers return small dicts far more often than anything else, so the
 * common shapes are encoded here directly: exact dict (str keys), list,
 * tuple, str, int, finite float, True, False, None, nested up to
 * FAST_JSON_DEPTH. The output is byte for byte what json.dumps(obj,
 * separators=(",", ":")) writes (ASCII only, \uXXXX escapes, float repr).
 * Anything else (subclasses, other key types, NaN, deeper nesting) falls
 * back to json's own C encoder, so behaviour and errors stay json's.
 */

#define FAST_JSON_DEPTH 32

typedef struct jbuf {
  char *data; /* inline (owned by the caller) or PyMem */
  size_t len, cap;
  char *inline_data;
} jbuf;

static int jb_grow(jbuf *b, size_t extra) {
  size_t need = b->len + extra;
  if (need <= b->cap)
    return 0;
  size_t cap = b->cap * 2;
  while (cap < need)
    cap *= 2;
  char *p;
  if (b->data == b->inline_data) {
    p = PyMem_Malloc(cap);
    if (p != NULL && b->len)
      memcpy(p, b->data, b->len);
  } else {
    p = PyMem_Realloc(b->data, cap);
  }
  if (p == NULL) {
    PyErr_NoMemory();
    return -1;
  }
  b->data = p;
  b->cap = cap;
  return 0;
}

static void jb_free(jbuf *b) {
  if (b->data != b->inline_data)
    PyMem_Free(b->data);
  b->data = b->inline_data;
  b->len = 0;
}

#define JB_PUT(b, c)                                 \
  do {                                               \
    if ((b)->len == (b)->cap && jb_grow((b), 1) < 0) \
      return -1;                                     \
    (b)->data[(b)->len++] = (c);                     \
  } while (0)

static int jb_write(jbuf *b, const char *s, size_t n) {
  if (jb_grow(b, n) < 0)
    return -1;
  memcpy(b->data + b->len, s, n);
  b->len += n;
  return 0;
}

static const char hexdigits[] = "0123456789abcdef";

static int jb_escape_unit(jbuf *b, unsigned c) {
  char e[6] = {'\\',
               'u',
               hexdigits[(c >> 12) & 15],
               hexdigits[(c >> 8) & 15],
               hexdigits[(c >> 4) & 15],
               hexdigits[c & 15]};
  return jb_write(b, e, 6);
}

/* A str as a JSON string, escaped as json's ensure_ascii does. */
static int jb_string(jbuf *b, PyObject *s) {
  Py_ssize_t n = PyUnicode_GET_LENGTH(s);
  int kind = PyUnicode_KIND(s);
  const void *data = PyUnicode_DATA(s);
  if (jb_grow(b, (size_t)n + 2) < 0)
    return -1;
  b->data[b->len++] = '"';
  for (Py_ssize_t i = 0; i < n; i++) {
    Py_UCS4 c = PyUnicode_READ(kind, data, i);
    if (c >= ' ' && c <= '~' && c != '"' && c != '\\') {
      JB_PUT(b, (char)c);
      continue;
    }
    char esc = 0;
    switch (c) {
    case '"': esc = '"'; break;
    case '\\': esc = '\\'; break;
    case '\n': esc = 'n'; break;
    case '\r': esc = 'r'; break;
    case '\t': esc = 't'; break;
    case '\b': esc = 'b'; break;
    case '\f': esc = 'f'; break;
    }
    if (esc) {
      char e[2] = {'\\', esc};
      if (jb_write(b, e, 2) < 0)
        return -1;
    } else if (c >= 0x10000) {
      Py_UCS4 v = c - 0x10000;
      if (jb_escape_unit(b, 0xd800 | ((v >> 10) & 0x3ff)) < 0 ||
          jb_escape_unit(b, 0xdc00 | (v & 0x3ff)) < 0)
        return -1;
    } else if (jb_escape_unit(b, c) < 0) {
      return -1;
    }
  }
  JB_PUT(b, '"');
  return 0;
}

/* 1: encoded; 0: a shape this path does not handle (b is then garbage, no
 * exception); -1: error with an exception set. */
static int fast_json(jbuf *b, PyObject *o, int depth) {
  if (PyUnicode_CheckExact(o))
    return jb_string(b, o) < 0 ? -1 : 1;
  if (PyLong_CheckExact(o)) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow)
      return 0;
    char num[32];
    int n = snprintf(num, sizeof num, "%lld", v);
    return jb_write(b, num, (size_t)n) < 0 ? -1 : 1;
  }
  if (o == Py_None)
    return jb_write(b, "null", 4) < 0 ? -1 : 1;
  if (o == Py_True)
    return jb_write(b, "true", 4) < 0 ? -1 : 1;
  if (o == Py_False)
    return jb_write(b, "false", 5) < 0 ? -1 : 1;
  if (PyFloat_CheckExact(o)) {
    double d = PyFloat_AS_DOUBLE(o);
    if (!isfinite(d))
      return 0;
    char *r = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (r == NULL)
      return -1;
    int rc = jb_write(b, r, strlen(r));
    PyMem_Free(r);
    return rc < 0 ? -1 : 1;
  }
  if (depth >= FAST_JSON_DEPTH)
    return 0;
  if (PyDict_CheckExact(o)) {
    JB_PUT(b, '{');
    Py_ssize_t pos = 0;
    PyObject *k, *v; /* borrowed */
    int first = 1;
    while (PyDict_Next(o, &pos, &k, &v)) {
      if (!PyUnicode_CheckExact(k))
        return 0;
      if (!first)
        JB_PUT(b, ',');
      first = 0;
      if (jb_string(b, k) < 0)
        return -1;
      JB_PUT(b, ':');
      int rc = fast_json(b, v, depth + 1);
      if (rc <= 0)
        return rc;
    }
    JB_PUT(b, '}');
    return 1;
  }
  if (PyList_CheckExact(o) || PyTuple_CheckExact(o)) {
    JB_PUT(b, '[');
    Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
    for (Py_ssize_t i = 0; i < n; i++) {
      if (i)
        JB_PUT(b, ',');
      /* A list can change under us only if encoding runs Python code,
       * which this path never does. */
      int rc = fast_json(b, PySequence_Fast_GET_ITEM(o, i), depth + 1);
      if (rc <= 0)
        return rc;
    }
    JB_PUT(b, ']');
    return 1;
  }
  return 0;
}

/* json's own encoder: a new str, or NULL. */
static PyObject *slow_json(pyb_state *st, PyObject *obj) {
  if (st->json_encoder == NULL)
    return PyObject_CallOneArg(st->json_dumps, obj);
  PyObject *zero = PyLong_FromLong(0);
  if (zero == NULL)
    return NULL;
  PyObject *args[2] = {obj, zero};
  PyObject *chunks = PyObject_Vectorcall(st->json_encoder, args, 2, NULL);
  Py_DECREF(zero);
  if (chunks == NULL)
    return NULL;
  PyObject *out;
  if (PyList_CheckExact(chunks) && PyList_GET_SIZE(chunks) == 1)
    out = Py_NewRef(PyList_GET_ITEM(chunks, 0));
  else if (PyTuple_CheckExact(chunks) && PyTuple_GET_SIZE(chunks) == 1)
    out = Py_NewRef(PyTuple_GET_ITEM(chunks, 0));
  else {
    PyObject *empty = PyUnicode_FromStringAndSize("", 0);
    out = empty ? PyUnicode_Join(empty, chunks) : NULL;
    Py_XDECREF(empty);
  }
  Py_DECREF(chunks);
  return out;
}

PyObject *pyb_json_bytes(pyb_state *st, PyObject *obj) {
  char inline_data[512];
  jbuf b = {inline_data, 0, sizeof inline_data, inline_data};
  int rc = fast_json(&b, obj, 0);
  if (rc < 0) {
    jb_free(&b);
    return NULL;
  }
  if (rc == 1) {
    PyObject *out = PyBytes_FromStringAndSize(b.data, (Py_ssize_t)b.len);
    jb_free(&b);
    return out;
  }
  jb_free(&b);
  PyObject *s = slow_json(st, obj);
  if (s == NULL)
    return NULL;
  PyObject *out = PyUnicode_AsUTF8String(s);
  Py_DECREF(s);
  return out;
}

/* ---- building a pmu_response_t ---- */

static const pmu_header_t text_plain_header[] = {
    {"Content-Type", 12, "text/plain; charset=utf-8", 25},
};
static const char body_500[] = "Internal Server Error";
const pmu_response_t pyb_response_500 = {
    500, text_plain_header, 1, body_500, sizeof body_500 - 1, NULL, NULL};

static void built_init(pyb_built *b) {
  memset(&b->response, 0, sizeof b->response);
  b->headers = b->inline_headers;
  b->count = 0;
  b->capacity = sizeof b->inline_headers / sizeof b->inline_headers[0];
  b->keep = NULL;
  b->has_content_type = 0;
  b->zero_copy = NULL;
  b->json = b->json_inline;
  b->json_len = 0;
  b->json_cap = sizeof b->json_inline;
}

void pyb_built_release(pyb_built *b) {
  if (b->headers != b->inline_headers)
    PyMem_Free(b->headers);
  b->headers = b->inline_headers;
  if (b->json != b->json_inline)
    PyMem_Free(b->json);
  b->json = b->json_inline;
  Py_CLEAR(b->keep);
}

/* Keep `obj` (a new reference, stolen) alive until release. */
static int keep(pyb_built *b, PyObject *obj) {
  if (obj == NULL)
    return -1;
  if (b->keep == NULL && (b->keep = PyList_New(0)) == NULL) {
    Py_DECREF(obj);
    return -1;
  }
  int rc = PyList_Append(b->keep, obj);
  Py_DECREF(obj);
  return rc;
}

/* RFC 9110 tchar: ALPHA, DIGIT and !#$%&'*+-.^_`|~ (a table: this runs for
 * every byte of every header name sent). */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

/* Point (*p, *n) at the bytes of a header name or value: str (UTF-8),
 * bytes, or int. */
static int header_bytes(pyb_built *b, PyObject *o, const char **p, Py_ssize_t *n,
                        const char *what) {
  if (PyUnicode_Check(o)) {
    *p = PyUnicode_AsUTF8AndSize(o, n);
    return *p ? 0 : -1;
  }
  if (PyBytes_Check(o)) {
    *p = PyBytes_AS_STRING(o);
    *n = PyBytes_GET_SIZE(o);
    return 0;
  }
  if (PyLong_Check(o) && !PyBool_Check(o)) {
    PyObject *s = PyObject_Str(o);
    if (s == NULL || keep(b, s) < 0)
      return -1;
    *p = PyUnicode_AsUTF8AndSize(s, n); /* s lives in b->keep */
    return *p ? 0 : -1;
  }
  PyErr_Format(PyExc_TypeError, "header %s must be str, bytes or int, not %.100s", what,
               Py_TYPE(o)->tp_name);
  return -1;
}

/* ValueError with `format` (one %R) applied to the header name. */
static void header_error(const char *name, Py_ssize_t nlen, const char *format) {
  PyObject *n = PyUnicode_DecodeLatin1(name, nlen > 100 ? 100 : nlen, NULL);
  if (n != NULL) {
    PyErr_Format(PyExc_ValueError, format, n);
    Py_DECREF(n);
  }
}

static int push_header(pyb_built *b, const char *name, Py_ssize_t nlen, const char *value,
                       Py_ssize_t vlen) {
  if (nlen == 0) {
    PyErr_SetString(PyExc_ValueError, "empty header name");
    return -1;
  }
  for (Py_ssize_t i = 0; i < nlen; i++)
    if (!tchar[(unsigned char)name[i]]) {
      header_error(name, nlen, "invalid character in header name %R");
      return -1;
    }
  for (Py_ssize_t i = 0; i < vlen; i++) {
    unsigned char c = (unsigned char)value[i];
    if (c < 32 && (c == '\r' || c == '\n' || c == '\0')) {
      header_error(name, nlen,
                   "header %R: value contains CR, LF or NUL (header injection "
                   "refused)");
      return -1;
    }
  }
  if (b->count == b->capacity) {
    size_t cap = b->capacity * 2;
    pmu_header_t *h = PyMem_Malloc(cap * sizeof *h);
    if (h == NULL) {
      PyErr_NoMemory();
      return -1;
    }
    memcpy(h, b->headers, b->count * sizeof *h);
    if (b->headers != b->inline_headers)
      PyMem_Free(b->headers);
    b->headers = h;
    b->capacity = cap;
  }
  if (nlen == 12 && strncasecmp(name, "content-type", 12) == 0)
    b->has_content_type = 1;
  pmu_header_t *h = &b->headers[b->count++];
  h->name = name;
  h->name_len = (size_t)nlen;
  h->value = value;
  h->value_len = (size_t)vlen;
  return 0;
}

/* One (name, value) pair; a list or tuple value gives one header per item. */
static int add_pair(pyb_built *b, PyObject *name, PyObject *value) {
  const char *np, *vp;
  Py_ssize_t nn, vn;
  if (header_bytes(b, name, &np, &nn, "name") < 0)
    return -1;
  if (PyList_Check(value) || PyTuple_Check(value)) {
    PyObject *seq = PySequence_Fast(value, "header values");
    if (seq == NULL || keep(b, seq) < 0)
      return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
      if (header_bytes(b, PySequence_Fast_GET_ITEM(seq, i), &vp, &vn, "value") < 0 ||
          push_header(b, np, nn, vp, vn) < 0)
        return -1;
    }
    return 0;
  }
  if (header_bytes(b, value, &vp, &vn, "value") < 0)
    return -1;
  return push_header(b, np, nn, vp, vn);
}

/* Headers: None, a dict, a list/tuple of pairs, or anything with
 * multi_items() or items(). */
static int add_headers(pyb_built *b, PyObject *headers) {
  if (headers == NULL || headers == Py_None)
    return 0;
  if (PyDict_Check(headers)) {
    Py_ssize_t pos = 0;
    PyObject *k, *v; /* borrowed */
    while (PyDict_Next(headers, &pos, &k, &v))
      if (add_pair(b, k, v) < 0)
        return -1;
    return 0;
  }
  PyObject *fast; /* borrowed: held by the caller's result or by b->keep */
  if (PyList_Check(headers) || PyTuple_Check(headers)) {
    fast = headers;
  } else {
    /* A multi-dict (our Headers) lists every pair with multi_items(). */
    PyObject *items = PyObject_HasAttrString(headers, "multi_items")
                          ? PyObject_CallMethod(headers, "multi_items", NULL)
                          : PyObject_CallMethod(headers, "items", NULL);
    if (items == NULL) {
      PyErr_Format(PyExc_TypeError,
                   "headers must be a dict, a list of (name, value) pairs or a mapping, not "
                   "%.100s",
                   Py_TYPE(headers)->tp_name);
      return -1;
    }
    fast = PySequence_Fast(items, "headers.items()");
    Py_DECREF(items);
    if (fast == NULL || keep(b, Py_NewRef(fast)) < 0) {
      Py_XDECREF(fast);
      return -1;
    }
    Py_DECREF(fast);
  }
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
    PyObject *pair = PySequence_Fast_GET_ITEM(fast, i);
    if (!(PyTuple_Check(pair) || PyList_Check(pair)) || PySequence_Fast_GET_SIZE(pair) != 2) {
      PyErr_SetString(PyExc_TypeError, "each header must be a (name, value) pair");
      return -1;
    }
    if (add_pair(b, PySequence_Fast_GET_ITEM(pair, 0), PySequence_Fast_GET_ITEM(pair, 1)) < 0)
      return -1;
  }
  return 0;
}

/* Set the body from a body-like object; *ct gets the default content type
 * (borrowed). bytes, bytearray and memoryview are sent as they are, str as
 * UTF-8, dict and list as JSON. */
static int set_body(pyb_state *st, pyb_built *b, PyObject *body, PyObject **ct) {
  if (PyBytes_Check(body)) {
    b->response.body = PyBytes_AS_STRING(body);
    b->response.body_len = (size_t)PyBytes_GET_SIZE(body);
    if (b->response.body_len >= PYB_ZERO_COPY_MIN)
      b->zero_copy = body;
    *ct = st->ct_octet;
    return 0;
  }
  if (PyUnicode_Check(body)) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(body, &n); /* cached in the str */
    if (s == NULL)
      return -1;
    b->response.body = s;
    b->response.body_len = (size_t)n;
    if (b->response.body_len >= PYB_ZERO_COPY_MIN)
      b->zero_copy = body;
    *ct = st->ct_text;
    return 0;
  }
  if (PyDict_Check(body) || PyList_Check(body)) {
    jbuf jb = {b->json, 0, b->json_cap, b->json_inline};
    int rc = fast_json(&jb, body, 0);
    b->json = jb.data; /* released by pyb_built_release */
    b->json_cap = jb.cap;
    if (rc < 0)
      return -1;
    *ct = st->ct_json;
    if (rc == 1) {
      b->response.body = jb.data;
      b->response.body_len = jb.len;
      return 0;
    }
    PyObject *json = slow_json(st, body);
    if (json == NULL || keep(b, json) < 0)
      return -1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(json, &n); /* json lives in b->keep */
    if (s == NULL)
      return -1;
    b->response.body = s;
    b->response.body_len = (size_t)n;
    *ct = st->ct_json;
    return 0;
  }
  if (PyByteArray_Check(body) || PyMemoryView_Check(body)) {
    PyObject *bytes = PyBytes_FromObject(body);
    if (bytes == NULL || keep(b, bytes) < 0)
      return -1;
    b->response.body = PyBytes_AS_STRING(bytes);
    b->response.body_len = (size_t)PyBytes_GET_SIZE(bytes);
    *ct = st->ct_octet;
    return 0;
  }
  PyErr_Format(PyExc_TypeError,
               "cannot send %.100s as a response body: use bytes, str, dict or list, or a "
               "Response",
               Py_TYPE(body)->tp_name);
  return -1;
}

/* The engine's rule (pmu_status_valid), checked where the status is given. */
static int check_status(long status) {
  if (status < 0 || status > 999 || !pmu_status_valid((int)status)) {
    PyErr_Format(PyExc_ValueError,
                 "HTTP status %ld cannot be sent: a final status is 200..999 (1xx are "
                 "interim answers, and protocol upgrades are not supported)",
                 status);
    return -1;
  }
  return 0;
}

static int status_of(PyObject *o, int *out) {
  if (!PyLong_Check(o) || PyBool_Check(o)) {
    PyErr_Format(PyExc_TypeError, "status must be an int, not %.100s", Py_TYPE(o)->tp_name);
    return -1;
  }
  long s = PyLong_AsLong(o);
  if (s == -1 && PyErr_Occurred())
    return -1;
  if (check_status(s) < 0)
    return -1;
  *out = (int)s;
  return 0;
}

/* Append Content-Type: ct unless the handler named one. */
static int finish(pyb_built *b, PyObject *ct) {
  if (!b->has_content_type && ct != NULL && ct != Py_None) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(ct, &n);
    if (s == NULL || push_header(b, "Content-Type", 12, s, n) < 0)
      return -1;
  }
  b->response.headers = b->headers;
  b->response.header_count = b->count;
  return 0;
}

int pyb_build_headers(PyObject *headers, pyb_built *b) {
  built_init(b);
  if (add_headers(b, headers) < 0)
    return -1;
  b->response.headers = b->headers;
  b->response.header_count = b->count;
  return 0;
}

int pyb_build_response(pyb_state *st, PyObject *result, pyb_built *b) {
  built_init(b);
  PyObject *ct = NULL; /* borrowed */
  b->response.status = 200;

  if (PyObject_TypeCheck(result, st->response_type)) {
    ResponseObject *r = RESP(result);
    b->response.status = r->status;
    if (r->body == NULL) {
      PyErr_SetString(PyExc_ValueError, "Response has no body (was it cleared?)");
      return -1;
    }
    if (set_body(st, b, r->body, &ct) < 0 || add_headers(b, r->headers) < 0)
      return -1;
    return finish(b, r->content_type);
  }
  if (PyTuple_Check(result)) {
    /* (body, status[, headers]) as in Flask, or (status, headers, body) /
     * (status, body) as in WSGI: an int first item tells them apart. */
    Py_ssize_t n = PyTuple_GET_SIZE(result);
    if (n < 2 || n > 3) {
      PyErr_SetString(PyExc_TypeError, "a handler may return a tuple (body, status[, headers]) or "
                                       "(status, headers, body)");
      return -1;
    }
    PyObject *first = PyTuple_GET_ITEM(result, 0);
    PyObject *body, *status, *headers = NULL;
    if (PyLong_Check(first) && !PyBool_Check(first)) {
      status = first;
      body = PyTuple_GET_ITEM(result, n - 1);
      if (n == 3)
        headers = PyTuple_GET_ITEM(result, 1);
    } else {
      body = first;
      status = PyTuple_GET_ITEM(result, 1);
      if (n == 3)
        headers = PyTuple_GET_ITEM(result, 2);
    }
    if (PyObject_TypeCheck(body, st->response_type)) {
      PyErr_SetString(PyExc_TypeError, "a Response cannot be the body of a returned tuple");
      return -1;
    }
    if (status_of(status, &b->response.status) < 0 || set_body(st, b, body, &ct) < 0 ||
        add_headers(b, headers) < 0)
      return -1;
    return finish(b, ct);
  }
  if (PyLong_Check(result) && !PyBool_Check(result)) {
    if (status_of(result, &b->response.status) < 0)
      return -1;
    return finish(b, NULL);
  }
  if (!(PyBytes_Check(result) || PyUnicode_Check(result) || PyDict_Check(result) ||
        PyList_Check(result) || PyByteArray_Check(result) || PyMemoryView_Check(result))) {
    PyErr_Format(PyExc_TypeError,
                 "handler returned %.100s; return a Response, bytes, str, dict, list, int, a "
                 "tuple (body, status[, headers]) or (status, headers, body), or None to reply "
                 "later",
                 Py_TYPE(result)->tp_name);
    return -1;
  }
  if (set_body(st, b, result, &ct) < 0)
    return -1;
  return finish(b, ct);
}

/* ---- the Response type ---- */

/* Normalise a body given to Response: bytes and str are kept, None is
 * b"", other buffers become bytes. *ct gets the inferred content type. */
static PyObject *normalize_body(pyb_state *st, PyObject *body, PyObject **ct) {
  if (body == NULL || body == Py_None) {
    *ct = st->ct_octet;
    return PyBytes_FromStringAndSize("", 0);
  }
  if (PyBytes_Check(body)) {
    *ct = st->ct_octet;
    return Py_NewRef(body);
  }
  if (PyUnicode_Check(body)) {
    *ct = st->ct_text;
    return Py_NewRef(body);
  }
  if (PyObject_CheckBuffer(body)) {
    *ct = st->ct_octet;
    return PyBytes_FromObject(body);
  }
  PyErr_Format(PyExc_TypeError,
               "Response body must be bytes or str, not %.100s (use Response.json() for "
               "objects)",
               Py_TYPE(body)->tp_name);
  return NULL;
}

static int check_content_type(PyObject *ct) {
  if (ct != Py_None && !PyUnicode_Check(ct)) {
    PyErr_SetString(PyExc_TypeError, "content_type must be a str or None");
    return -1;
  }
  return 0;
}

/* A blank Response (200, empty body) so that a subclass whose __init__
 * never calls ours is still sendable. */
static PyObject *response_alloc(PyTypeObject *cls) {
  PyObject *op = cls->tp_alloc(cls, 0);
  if (op == NULL)
    return NULL;
  ResponseObject *self = RESP(op);
  self->status = 200;
  self->body = PyBytes_FromStringAndSize("", 0);
  self->headers = Py_NewRef(Py_None);
  self->content_type = Py_NewRef(Py_None);
  if (self->body == NULL) {
    Py_DECREF(op);
    return NULL;
  }
  return op;
}

static PyObject *response_new(PyTypeObject *cls, PyObject *args, PyObject *kwargs) {
  return response_alloc(cls);
}

/* Response.__init__'s work, its arguments parsed (body and content_type may
 * be NULL: not given). 0, or -1 with an exception set. */
static int response_fill(pyb_state *st, PyObject *op, PyObject *body, int status, PyObject *headers,
                         PyObject *content_type) {
  if (check_status(status) < 0)
    return -1;
  PyObject *ct = NULL;
  PyObject *norm = normalize_body(st, body, &ct);
  if (norm == NULL)
    return -1;
  if (content_type != NULL) {
    if (check_content_type(content_type) < 0) {
      Py_DECREF(norm);
      return -1;
    }
    ct = content_type;
  }
  ResponseObject *self = RESP(op);
  self->status = status;
  Py_XSETREF(self->body, norm);
  Py_XSETREF(self->headers, Py_NewRef(headers));
  Py_XSETREF(self->content_type, Py_NewRef(ct));
  return 0;
}

static int response_init(PyObject *op, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"body", "status", "headers", "content_type", NULL};
  PyObject *body = NULL, *headers = Py_None, *content_type = NULL;
  int status = 200;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OiOO:Response", kwlist, &body, &status, &headers,
                                   &content_type))
    return -1;
  return response_fill(pyb_state_from_type(Py_TYPE(op)), op, body, status, headers, content_type);
}

PyObject *pyb_response_new(pyb_state *st, PyObject *body, PyObject *status, PyObject *headers) {
  if (PyLong_CheckExact(status)) {
    int overflow;
    long s = PyLong_AsLongAndOverflow(status, &overflow);
    if (!overflow && s >= INT_MIN && s <= INT_MAX) {
      PyObject *op = response_alloc(st->response_type);
      if (op != NULL && response_fill(st, op, body, (int)s, headers, Py_None) < 0)
        Py_CLEAR(op);
      return op;
    }
  }
  /* Response()'s own conversion, and its errors */
  return PyObject_CallFunctionObjArgs((PyObject *)st->response_type, body, status, headers, Py_None,
                                      NULL);
}

/* A new instance of cls with the given fields (references borrowed). */
static PyObject *make(PyTypeObject *cls, PyObject *body, int status, PyObject *headers,
                      PyObject *ct) {
  if (check_status(status) < 0)
    return NULL;
  PyObject *op = response_alloc(cls);
  if (op == NULL)
    return NULL;
  ResponseObject *self = RESP(op);
  self->status = status;
  Py_XSETREF(self->body, Py_NewRef(body));
  Py_XSETREF(self->headers, Py_NewRef(headers ? headers : Py_None));
  Py_XSETREF(self->content_type, Py_NewRef(ct));
  return op;
}

static int parse_helper_args(PyObject *args, PyObject *kwargs, const char *fmt, PyObject **data,
                             int *status, PyObject **headers) {
  static char *kwlist[] = {"data", "status", "headers", NULL};
  return PyArg_ParseTupleAndKeywords(args, kwargs, fmt, kwlist, data, status, headers);
}

PyDoc_STRVAR(json_doc, "Response.json(data, status=200, headers=None)\n\n"
                       "A compact JSON response (application/json).");

static PyObject *response_json(PyObject *cls, PyObject *args, PyObject *kwargs) {
  PyObject *data, *headers = Py_None;
  int status = 200;
  if (!parse_helper_args(args, kwargs, "O|iO:json", &data, &status, &headers))
    return NULL;
  pyb_state *st = pyb_state_from_type((PyTypeObject *)cls);
  PyObject *body = pyb_json_bytes(st, data);
  if (body == NULL)
    return NULL;
  PyObject *r = make((PyTypeObject *)cls, body, status, headers, st->ct_json);
  Py_DECREF(body);
  return r;
}

static PyObject *text_like(PyObject *cls, PyObject *args, PyObject *kwargs, const char *fmt,
                           int html) {
  PyObject *data, *headers = Py_None;
  int status = 200;
  if (!parse_helper_args(args, kwargs, fmt, &data, &status, &headers))
    return NULL;
  if (!PyUnicode_Check(data)) {
    PyErr_SetString(PyExc_TypeError, "text must be a str");
    return NULL;
  }
  pyb_state *st = pyb_state_from_type((PyTypeObject *)cls);
  return make((PyTypeObject *)cls, data, status, headers, html ? st->ct_html : st->ct_text);
}

PyDoc_STRVAR(text_doc, "Response.text(text, status=200, headers=None)\n\n"
                       "A text/plain; charset=utf-8 response.");

static PyObject *response_text(PyObject *cls, PyObject *args, PyObject *kwargs) {
  return text_like(cls, args, kwargs, "O|iO:text", 0);
}

PyDoc_STRVAR(html_doc, "Response.html(html, status=200, headers=None)\n\n"
                       "A text/html; charset=utf-8 response.");

static PyObject *response_html(PyObject *cls, PyObject *args, PyObject *kwargs) {
  return text_like(cls, args, kwargs, "O|iO:html", 1);
}

PyDoc_STRVAR(redirect_doc, "Response.redirect(location, status=307, headers=None)\n\n"
                           "A redirect to `location` with an empty body.");

static PyObject *response_redirect(PyObject *cls, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"location", "status", "headers", NULL};
  PyObject *location, *headers = Py_None;
  int status = 307;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|iO:redirect", kwlist, &location, &status,
                                   &headers))
    return NULL;
  /* Location first, then the caller's headers (a list keeps both). */
  PyObject *list = PyList_New(0);
  PyObject *pair = list ? Py_BuildValue("(sO)", "Location", location) : NULL;
  if (pair == NULL || PyList_Append(list, pair) < 0)
    goto fail;
  Py_CLEAR(pair);
  if (headers != Py_None) {
    pyb_built tmp;
    built_init(&tmp);
    int rc = add_headers(&tmp, headers); /* validates before we copy the pairs */
    pyb_built_release(&tmp);
    if (rc < 0)
      goto fail;
    PyObject *items = PyDict_Check(headers) ? PyDict_Items(headers)
                      : (PyList_Check(headers) || PyTuple_Check(headers))
                          ? PySequence_List(headers)
                          : PyObject_CallMethod(headers, "items", NULL);
    PyObject *fast = items ? PySequence_Fast(items, "headers") : NULL;
    Py_XDECREF(items);
    if (fast == NULL)
      goto fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++)
      if (PyList_Append(list, PySequence_Fast_GET_ITEM(fast, i)) < 0) {
        Py_DECREF(fast);
        goto fail;
      }
    Py_DECREF(fast);
  }
  PyObject *empty = PyBytes_FromStringAndSize("", 0);
  PyObject *r = empty ? make((PyTypeObject *)cls, empty, status, list, Py_None) : NULL;
  Py_XDECREF(empty);
  Py_DECREF(list);
  return r;
fail:
  Py_XDECREF(pair);
  Py_XDECREF(list);
  return NULL;
}

static int response_traverse(PyObject *op, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(op));
  Py_VISIT(RESP(op)->body);
  Py_VISIT(RESP(op)->headers);
  Py_VISIT(RESP(op)->content_type);
  return 0;
}

static int response_clear(PyObject *op) {
  Py_CLEAR(RESP(op)->body);
  Py_CLEAR(RESP(op)->headers);
  Py_CLEAR(RESP(op)->content_type);
  return 0;
}

static void response_dealloc(PyObject *op) {
  PyTypeObject *tp = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  response_clear(op);
  tp->tp_free(op);
  Py_DECREF(tp);
}

static PyObject *get_status(PyObject *op, void *c) { return PyLong_FromLong(RESP(op)->status); }

static int set_status(PyObject *op, PyObject *v, void *c) {
  int s;
  if (v == NULL) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete status");
    return -1;
  }
  if (status_of(v, &s) < 0)
    return -1;
  RESP(op)->status = s;
  return 0;
}

static PyObject *get_body(PyObject *op, void *c) {
  PyObject *b = RESP(op)->body;
  if (b == NULL)
    return PyBytes_FromStringAndSize("", 0);
  if (PyUnicode_Check(b))
    return PyUnicode_AsUTF8String(b);
  return Py_NewRef(b);
}

static int set_body_attr(PyObject *op, PyObject *v, void *c) {
  pyb_state *st = pyb_state_from_type(Py_TYPE(op));
  PyObject *ct;
  PyObject *norm = normalize_body(st, v, &ct);
  if (norm == NULL)
    return -1;
  Py_XSETREF(RESP(op)->body, norm);
  return 0;
}

static PyObject *get_headers(PyObject *op, void *c) {
  return Py_NewRef(RESP(op)->headers ? RESP(op)->headers : Py_None);
}

static int set_headers(PyObject *op, PyObject *v, void *c) {
  Py_XSETREF(RESP(op)->headers, Py_NewRef(v ? v : Py_None));
  return 0;
}

static PyObject *get_content_type(PyObject *op, void *c) {
  return Py_NewRef(RESP(op)->content_type ? RESP(op)->content_type : Py_None);
}

static int set_content_type(PyObject *op, PyObject *v, void *c) {
  if (v == NULL)
    v = Py_None;
  if (check_content_type(v) < 0)
    return -1;
  Py_XSETREF(RESP(op)->content_type, Py_NewRef(v));
  return 0;
}

static PyGetSetDef response_getset[] = {
    {"status", get_status, set_status, "HTTP status code (200..999).", NULL},
    {"body", get_body, set_body_attr, "The body as bytes (a str body is UTF-8 encoded).", NULL},
    {"headers", get_headers, set_headers,
     "Extra headers: None, a dict, a list of (name, value) pairs, or a mapping. A list "
     "value in a dict gives one header per item.",
     NULL},
    {"content_type", get_content_type, set_content_type,
     "Content-Type sent unless headers name one; None sends none.", NULL},
    {NULL},
};

static PyObject *response_repr(PyObject *op) {
  ResponseObject *self = RESP(op);
  Py_ssize_t n = 0;
  if (self->body && PyBytes_Check(self->body))
    n = PyBytes_GET_SIZE(self->body);
  else if (self->body && PyUnicode_Check(self->body))
    n = PyUnicode_GET_LENGTH(self->body);
  return PyUnicode_FromFormat("<%s %d %R, %zd-%s body>", Py_TYPE(op)->tp_name, self->status,
                              self->content_type ? self->content_type : Py_None, n,
                              self->body && PyUnicode_Check(self->body) ? "char" : "byte");
}

PyDoc_STRVAR(file_doc, "Response.file(path, *, status=200, headers=None, content_type=None,\n"
                       "              cache_control=None) -> FileResponse\n\n"
                       "A file as the answer, sent by the engine with every rule of static\n"
                       "files (ETag, 304, Range...): see FileResponse.");

static PyObject *response_file(PyObject *cls, PyObject *args, PyObject *kwargs) {
  pyb_state *st = pyb_state_from_type((PyTypeObject *)cls);
  return PyObject_Call((PyObject *)st->file_response_type, args, kwargs);
}

static PyMethodDef response_methods[] = {
    {"json", (PyCFunction)(void (*)(void))response_json, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     json_doc},
    {"text", (PyCFunction)(void (*)(void))response_text, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     text_doc},
    {"html", (PyCFunction)(void (*)(void))response_html, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     html_doc},
    {"redirect", (PyCFunction)(void (*)(void))response_redirect,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS, redirect_doc},
    {"file", (PyCFunction)(void (*)(void))response_file, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     file_doc},
    {NULL},
};

PyDoc_STRVAR(response_doc,
             "Response(body=b'', status=200, headers=None, content_type=<inferred>)\n\n"
             "An HTTP response. body is bytes or str; content_type defaults to\n"
             "'text/plain; charset=utf-8' for str and 'application/octet-stream' for\n"
             "bytes, and is not sent when headers name a Content-Type or when it is\n"
             "None. See also Response.json(), .text(), .html(), .redirect().");

static PyType_Slot response_slots[] = {
    {Py_tp_init, response_init},       {Py_tp_new, response_new},
    {Py_tp_dealloc, response_dealloc}, {Py_tp_traverse, response_traverse},
    {Py_tp_clear, response_clear},     {Py_tp_repr, response_repr},
    {Py_tp_getset, response_getset},   {Py_tp_methods, response_methods},
    {Py_tp_doc, (void *)response_doc}, {0, NULL},
};

PyType_Spec pyb_response_spec = {
    .name = "pymongoose_uring._pmu.Response",
    .basicsize = sizeof(ResponseObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = response_slots,
};
