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

static int put(PyObject *d, const char *key, PyObject *v) {
  if (v == NULL)
    return -1;
  int rc = PyDict_SetItemString(d, key, v);
  Py_DECREF(v);
  return rc;
}

/* A C string (NULL: None) as a str; bytes that are not UTF-8 are replaced. */
static PyObject *str_or_none(const char *s) {
  if (s == NULL)
    Py_RETURN_NONE;
  return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

PyObject *pyb_tls_request_dict(const pmu_request_t *request) {
  pmu_tls_info_t info;
  memset(&info, 0, sizeof info);
  if (!request->tls || pmu_request_tls_info(request, &info) < 0)
    Py_RETURN_NONE;
  PyObject *chain = PyList_New(0);
  if (chain == NULL)
    return NULL;
  for (unsigned i = 0; i < info.peer_chain_len; i++) {
    const unsigned char *der;
    size_t len;
    if (pmu_request_tls_peer_cert(request, i, &der, &len) < 0)
      break;
    PyObject *pem = pem_str(der, len);
    if (pem == NULL || PyList_Append(chain, pem) < 0) {
      Py_XDECREF(pem);
      Py_DECREF(chain);
      return NULL;
    }
    Py_DECREF(pem);
  }
  PyObject *d = PyDict_New();
  if (d == NULL || put(d, "version", str_or_none(info.version_name)) < 0 ||
      put(d, "cipher", str_or_none(info.cipher)) < 0 ||
      put(d, "server_name", str_or_none(info.server_name)) < 0 ||
      put(d, "alpn", str_or_none(info.alpn)) < 0 ||
      put(d, "resumed", PyBool_FromLong(info.resumed)) < 0 ||
      put(d, "peer_subject", str_or_none(info.peer_subject)) < 0 ||
      put(d, "peer_cert_chain", Py_NewRef(chain)) < 0 ||
      put(d, "version_number", PyLong_FromLong(info.version)) < 0 ||
      put(d, "cipher_id", PyLong_FromLong(info.cipher_id)) < 0 ||
      put(d, "server_cert", served_cert_pem(info.server_cert_der, info.server_cert_der_len)) < 0 ||
      put(d, "ktls", PyBool_FromLong(info.ktls_tx && info.ktls_rx)) < 0) {
    Py_XDECREF(d);
    Py_DECREF(chain);
    return NULL;
  }
  Py_DECREF(chain);
  return d;
}

/* ---- the ASGI extension ---- */

/* Item `key` of the request.tls dict, or None (a new reference). */
static PyObject *item(PyObject *tls, const char *key) {
  PyObject *v = PyDict_GetItemString(tls, key); /* borrowed */
  return Py_NewRef(v != NULL ? v : Py_None);
}

PyObject *pyb_tls_asgi_from_dict(PyObject *tls) {
  if (tls == Py_None)
    Py_RETURN_NONE;
  PyObject *chain = PyDict_GetItemString(tls, "peer_cert_chain"); /* borrowed */
  PyObject *d = PyDict_New();
  if (d == NULL || put(d, "server_cert", item(tls, "server_cert")) < 0 ||
      put(d, "client_cert_chain",
          chain != NULL && PyList_Check(chain) ? PyList_GetSlice(chain, 0, PY_SSIZE_T_MAX)
                                               : PyList_New(0)) < 0 ||
      put(d, "client_cert_name", item(tls, "peer_subject")) < 0 ||
      put(d, "client_cert_error", Py_NewRef(Py_None)) < 0 ||
      put(d, "tls_version", item(tls, "version_number")) < 0 ||
      put(d, "cipher_suite", item(tls, "cipher_id")) < 0) {
    Py_XDECREF(d);
    return NULL;
  }
  return d;
}
