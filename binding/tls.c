/*
 * tls.c: what a request's TLS session looks like from Python.
 *
 * The engine snapshots each TLS session once, at the end of its handshake
 * (pmu_request_tls_info, pmu_request_tls_peer_cert: an immutable block every
 * request of the connection holds). Here that snapshot becomes the dict of
 * request.tls (built on first access, then cached by the Request) and the
 * ASGI "tls" extension, which is made from that dict. Certificates are handed
 * to Python as PEM text, the form ssl.DER_cert_to_PEM_cert gives and the ASGI
 * extension asks for.
 *
 * The certificate a connection was served with is the same DER for every
 * request of every connection on that certificate, so its PEM text is kept in
 * a small cache keyed by the DER bytes themselves (a reload that changes the
 * certificate changes the key): an ASGI app over TLS pays a lookup per
 * request, not a base64 encoding.
 */
#include "binding.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- PEM ---- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

#define PEM_BEGIN "-----BEGIN CERTIFICATE-----\n"
#define PEM_END "-----END CERTIFICATE-----\n"

/* Bytes of the PEM text of `len` DER bytes: base64 in lines of 64
 * characters, each ending in '\n', between the BEGIN and END lines. */
static size_t pem_size(size_t len) {
  size_t chars = (len + 2) / 3 * 4;
  return sizeof PEM_BEGIN - 1 + chars + (chars + 63) / 64 + sizeof PEM_END - 1;
}

/* Write the PEM text of der[0..len) to out (pem_size(len) bytes). */
static void pem_write(const unsigned char *der, size_t len, char *out) {
  char *p = out;
  memcpy(p, PEM_BEGIN, sizeof PEM_BEGIN - 1);
  p += sizeof PEM_BEGIN - 1;
  size_t col = 0;
  for (size_t i = 0; i < len; i += 3) {
    unsigned v = (unsigned)der[i] << 16;
    if (i + 1 < len)
      v |= (unsigned)der[i + 1] << 8;
    if (i + 2 < len)
      v |= der[i + 2];
    char quad[4] = {b64[(v >> 18) & 63], b64[(v >> 12) & 63],
                    i + 1 < len ? b64[(v >> 6) & 63] : '=', i + 2 < len ? b64[v & 63] : '='};
    for (int k = 0; k < 4; k++) {
      *p++ = quad[k];
      if (++col == 64) {
        *p++ = '\n';
        col = 0;
      }
    }
  }
  if (col)
    *p++ = '\n';
  memcpy(p, PEM_END, sizeof PEM_END - 1);
}

/* The PEM text of der as a new str, or NULL with an exception. */
static PyObject *pem_str(const unsigned char *der, size_t len) {
  size_t n = pem_size(len);
  PyObject *s = PyUnicode_New((Py_ssize_t)n, 127);
  if (s == NULL)
    return NULL;
  pem_write(der, len, (char *)PyUnicode_DATA(s));
  return s;
}

/* The served certificate's PEM: a few entries, each a malloc'd DER copy and
 * its PEM, replaced round-robin. A mutex rather than the GIL guards it, so
 * that it stays right with several interpreters. */
#define PEM_CACHE 4
static struct {
  unsigned char *der;
  size_t der_len;
  char *pem;
  size_t pem_len;
} pem_cache[PEM_CACHE];
static unsigned pem_next;
static pthread_mutex_t pem_lock = PTHREAD_MUTEX_INITIALIZER;

static PyObject *served_cert_pem(const unsigned char *der, size_t len) {
  if (der == NULL || len == 0)
    Py_RETURN_NONE;
  pthread_mutex_lock(&pem_lock);
  for (unsigned i = 0; i < PEM_CACHE; i++)
    if (pem_cache[i].der_len == len && memcmp(pem_cache[i].der, der, len) == 0) {
      PyObject *s = PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, pem_cache[i].pem,
                                              (Py_ssize_t)pem_cache[i].pem_len);
      pthread_mutex_unlock(&pem_lock);
      return s;
    }
  pthread_mutex_unlock(&pem_lock);
  PyObject *s = pem_str(der, len);
  if (s == NULL)
    return NULL;
  /* Keep a copy; without memory the answer is still right, only not cached. */
  size_t pem_len = (size_t)PyUnicode_GET_LENGTH(s);
  unsigned char *der_copy = malloc(len);
  char *pem_copy = malloc(pem_len);
  if (der_copy == NULL || pem_copy == NULL) {
    free(der_copy);
    free(pem_copy);
    return s;
  }
  memcpy(der_copy, der, len);
  memcpy(pem_copy, PyUnicode_DATA(s), pem_len);
  pthread_mutex_lock(&pem_lock);
  unsigned slot = pem_next++ % PEM_CACHE;
  free(pem_cache[slot].der);
  free(pem_cache[slot].pem);
  pem_cache[slot].der = der_copy;
  pem_cache[slot].der_len = len;
  pem_cache[slot].pem = pem_copy;
  pem_cache[slot].pem_len = pem_len;
  pthread_mutex_unlock(&pem_lock);
  return s;
}

/* ---- request.tls ---- */

/* The keys of both dicts, interned once per module (st->tls_keys, a tuple in
 * this order): building a dict then hashes nothing. */
enum {
  K_VERSION,
  K_CIPHER,
  K_SERVER_NAME,
  K_ALPN,
  K_RESUMED,
  K_PEER_SUBJECT,
  K_PEER_CERT_CHAIN,
  K_VERSION_NUMBER,
  K_CIPHER_ID,
  K_SERVER_CERT,
  K_KTLS,
  K_CLIENT_CERT_CHAIN,
  K_CLIENT_CERT_NAME,
  K_CLIENT_CERT_ERROR,
  K_TLS_VERSION,
  K_CIPHER_SUITE,
  K_COUNT
};
static const char *const key_names[K_COUNT] = {"version",
                                               "cipher",
                                               "server_name",
                                               "alpn",
                                               "resumed",
                                               "peer_subject",
                                               "peer_cert_chain",
                                               "version_number",
                                               "cipher_id",
                                               "server_cert",
                                               "ktls",
                                               "client_cert_chain",
                                               "client_cert_name",
                                               "client_cert_error",
                                               "tls_version",
                                               "cipher_suite"};

/* The interned keys (borrowed), made on first use; NULL with an exception. */
static PyObject *keys(pyb_state *st) {
  if (st->tls_keys != NULL)
    return st->tls_keys;
  PyObject *t = PyTuple_New(K_COUNT);
  for (int i = 0; t != NULL && i < K_COUNT; i++) {
    PyObject *k = PyUnicode_InternFromString(key_names[i]);
    if (k == NULL)
      Py_CLEAR(t);
    else
      PyTuple_SET_ITEM(t, i, k);
  }
  st->tls_keys = t;
  return t;
}

/* d[keys[k]] = v, stealing v (NULL: an exception is set already). 0 or -1. */
static int put(PyObject *d, PyObject *keys, int k, PyObject *v) {
  if (v == NULL)
    return -1;
  int rc = PyDict_SetItem(d, PyTuple_GET_ITEM(keys, k), v);
  Py_DECREF(v);
  return rc;
}

/* A C string (NULL: None) as a str; bytes that are not UTF-8 are replaced. */
static PyObject *str_or_none(const char *s) {
  if (s == NULL)
    Py_RETURN_NONE;
  return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

/* The client's certificates as a new list of PEM strs, leaf first; NULL with
 * an exception. */
static PyObject *peer_chain(const pmu_request_t *request, const pmu_tls_info_t *info) {
  PyObject *chain = PyList_New(0);
  for (unsigned i = 0; chain != NULL && i < info->peer_chain_len; i++) {
    const unsigned char *der;
    size_t len;
    if (pmu_request_tls_peer_cert(request, i, &der, &len) < 0)
      break;
    PyObject *pem = pem_str(der, len);
    if (pem == NULL || PyList_Append(chain, pem) < 0)
      Py_CLEAR(chain);
    Py_XDECREF(pem);
  }
  return chain;
}

/* The dict of request.tls (chain: its peer_cert_chain, stolen) or of
 * Connection.tls (chain NULL: no such key). New reference or NULL. */
static PyObject *info_dict(PyObject *k, const pmu_tls_info_t *in, PyObject *chain) {
  pmu_tls_info_t info = *in;
  PyObject *d = PyDict_New();
  if (d == NULL || put(d, k, K_VERSION, str_or_none(info.version_name)) < 0 ||
      put(d, k, K_CIPHER, str_or_none(info.cipher)) < 0 ||
      put(d, k, K_SERVER_NAME, str_or_none(info.server_name)) < 0 ||
      put(d, k, K_ALPN, str_or_none(info.alpn)) < 0 ||
      put(d, k, K_RESUMED, PyBool_FromLong(info.resumed)) < 0 ||
      put(d, k, K_PEER_SUBJECT, str_or_none(info.peer_subject)) < 0 ||
      (chain != NULL && put(d, k, K_PEER_CERT_CHAIN, Py_NewRef(chain)) < 0) ||
      put(d, k, K_VERSION_NUMBER, PyLong_FromLong(info.version)) < 0 ||
      put(d, k, K_CIPHER_ID, PyLong_FromLong(info.cipher_id)) < 0 ||
      put(d, k, K_SERVER_CERT, served_cert_pem(info.server_cert_der, info.server_cert_der_len)) <
          0 ||
      put(d, k, K_KTLS, PyBool_FromLong(info.ktls_tx || info.ktls_rx)) < 0) {
    Py_XDECREF(d);
    Py_XDECREF(chain);
    return NULL;
  }
  Py_XDECREF(chain);
  return d;
}

PyObject *pyb_tls_request_dict(pyb_state *st, const pmu_request_t *request) {
  pmu_tls_info_t info;
  memset(&info, 0, sizeof info);
  if (!request->tls || pmu_request_tls_info(request, &info) < 0)
    Py_RETURN_NONE;
  PyObject *k = keys(st);
  PyObject *chain = k != NULL ? peer_chain(request, &info) : NULL;
  return chain != NULL ? info_dict(k, &info, chain) : NULL;
}

PyObject *pyb_tls_conn_dict(pyb_state *st, const pmu_conn_t *conn) {
  pmu_tls_info_t info;
  memset(&info, 0, sizeof info);
  if (conn == NULL || pmu_conn_tls_info(conn, &info) < 0)
    Py_RETURN_NONE;
  PyObject *k = keys(st);
  return k != NULL ? info_dict(k, &info, NULL) : NULL;
}

/* ---- the ASGI extension ---- */

PyObject *pyb_tls_asgi_from_request(pyb_state *st, const pmu_request_t *request) {
  pmu_tls_info_t info;
  memset(&info, 0, sizeof info);
  if (!request->tls || pmu_request_tls_info(request, &info) < 0)
    Py_RETURN_NONE;
  PyObject *k = keys(st);
  PyObject *d = k != NULL ? PyDict_New() : NULL;
  if (d == NULL ||
      put(d, k, K_SERVER_CERT, served_cert_pem(info.server_cert_der, info.server_cert_der_len)) <
          0 ||
      put(d, k, K_CLIENT_CERT_CHAIN, peer_chain(request, &info)) < 0 ||
      put(d, k, K_CLIENT_CERT_NAME, str_or_none(info.peer_subject)) < 0 ||
      put(d, k, K_CLIENT_CERT_ERROR, Py_NewRef(Py_None)) < 0 ||
      put(d, k, K_TLS_VERSION, PyLong_FromLong(info.version)) < 0 ||
      put(d, k, K_CIPHER_SUITE, PyLong_FromLong(info.cipher_id)) < 0) {
    Py_XDECREF(d);
    return NULL;
  }
  return d;
}

/* Item k of the request.tls dict, or None (a new reference). */
static PyObject *item(PyObject *tls, PyObject *keys, int k) {
  PyObject *v = PyDict_GetItem(tls, PyTuple_GET_ITEM(keys, k)); /* borrowed */
  return Py_NewRef(v != NULL ? v : Py_None);
}

PyObject *pyb_tls_asgi_from_dict(pyb_state *st, PyObject *tls) {
  if (tls == Py_None)
    Py_RETURN_NONE;
  PyObject *k = keys(st);
  if (k == NULL)
    return NULL;
  PyObject *chain = PyDict_GetItem(tls, PyTuple_GET_ITEM(k, K_PEER_CERT_CHAIN)); /* borrowed */
  PyObject *d = PyDict_New();
  if (d == NULL || put(d, k, K_SERVER_CERT, item(tls, k, K_SERVER_CERT)) < 0 ||
      put(d, k, K_CLIENT_CERT_CHAIN,
          chain != NULL && PyList_Check(chain) ? PyList_GetSlice(chain, 0, PY_SSIZE_T_MAX)
                                               : PyList_New(0)) < 0 ||
      put(d, k, K_CLIENT_CERT_NAME, item(tls, k, K_PEER_SUBJECT)) < 0 ||
      put(d, k, K_CLIENT_CERT_ERROR, Py_NewRef(Py_None)) < 0 ||
      put(d, k, K_TLS_VERSION, item(tls, k, K_VERSION_NUMBER)) < 0 ||
      put(d, k, K_CIPHER_SUITE, item(tls, k, K_CIPHER_ID)) < 0) {
    Py_XDECREF(d);
    return NULL;
  }
  return d;
}

/* ---- TlsCerts: a certificate handle for ssl_cert_per_conn ---- */

typedef struct {
  PyObject_HEAD
  pmu_tls_certs_t *certs;
} TlsCertsObject;

static PyObject *certs_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"cert", "key", "ca", "verify", NULL};
  Py_buffer cert = {0}, key = {0}, ca = {0};
  int verify = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|z*z*i:TlsCerts", kwlist, &cert, &key, &ca,
                                   &verify))
    return NULL;
  pmu_tls_certs_opts_t o = {
      .cert = cert.buf,
      .cert_len = (size_t)cert.len,
      .key = key.buf && key.len ? key.buf : NULL,
      .key_len = key.buf ? (size_t)key.len : 0,
      .ca = ca.buf && ca.len ? ca.buf : NULL,
      .ca_len = ca.buf ? (size_t)ca.len : 0,
      .verify = verify,
  };
  char err[256];
  pmu_tls_certs_t *handle;
  Py_BEGIN_ALLOW_THREADS
  handle = pmu_tls_certs_new(&o, err, sizeof err);
  Py_END_ALLOW_THREADS
  PyBuffer_Release(&cert);
  if (key.obj)
    PyBuffer_Release(&key);
  if (ca.obj)
    PyBuffer_Release(&ca);
  if (handle == NULL) {
    if (errno == ENOMEM)
      return PyErr_NoMemory();
    PyErr_Format(PyExc_ValueError, "TlsCerts: %s", err[0] ? err : "cannot use these PEM texts");
    return NULL;
  }
  TlsCertsObject *self = (TlsCertsObject *)type->tp_alloc(type, 0);
  if (self == NULL) {
    pmu_tls_certs_release(handle);
    return NULL;
  }
  self->certs = handle;
  return (PyObject *)self;
}

static void certs_dealloc(PyObject *op) {
  PyTypeObject *tp = Py_TYPE(op);
  pmu_tls_certs_release(((TlsCertsObject *)op)->certs); /* connections keep their own */
  tp->tp_free(op);
  Py_DECREF(tp);
}

pmu_tls_certs_t *pyb_tls_certs_handle(pyb_state *st, PyObject *obj) {
  if (!PyObject_TypeCheck(obj, st->tls_certs_type)) {
    PyErr_Format(PyExc_TypeError, "expected a TlsCerts, got %.100s", Py_TYPE(obj)->tp_name);
    return NULL;
  }
  return ((TlsCertsObject *)obj)->certs;
}

PyDoc_STRVAR(certs_doc,
             "TlsCerts(cert, key=None, ca=None, verify=0)\n\n"
             "A certificate for Connection.tls_use() (servers with ssl_cert_per_conn):\n"
             "cert the PEM chain, leaf first, key its PEM private key, unencrypted (None:\n"
             "in cert), ca PEM CA certificates that verify client certificates, verify 0\n"
             "(none asked), 1 (optional) or 2 (required; needs ca). Parsed once here, then\n"
             "given to any number of connections. ValueError when the texts cannot be\n"
             "used (the reason: a bad PEM block, a key that does not match).");

static PyType_Slot certs_slots[] = {
    {Py_tp_new, certs_new},
    {Py_tp_dealloc, certs_dealloc},
    {Py_tp_doc, (void *)certs_doc},
    {0, NULL},
};

PyType_Spec pyb_tls_certs_spec = {
    .name = "pymongoose_uring._pmu.TlsCerts",
    .basicsize = sizeof(TlsCertsObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = certs_slots,
};
