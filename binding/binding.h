/*
 * binding.h: what the files of the CPython extension pymongoose_uring._pmu
 * share. Internal to binding/; the only engine interface used is
 * include/pmu/pmu.h, and nothing here knows about io_uring.
 *
 * The extension has three heap types, each created from a spec with
 * PyType_FromModuleAndSpec so that every instance reaches its module state:
 *
 *   Request   one engine request, its attributes built lazily (request.c)
 *   Response  status, headers and body a handler may return (response.c)
 *   Engine    one pmu_server_t and the batch handler that calls Python
 *             (engine.c)
 *
 * module.c holds the module state, probe(), the error mapping and logging.
 */
#ifndef PMU_BINDING_H
#define PMU_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pmu/pmu.h>

#include <stdatomic.h>

/* Shims for the few newer C-API calls used here (3.9 and 3.10). */
#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *o) {
  Py_INCREF(o);
  return o;
}
static inline PyObject *Py_XNewRef(PyObject *o) {
  Py_XINCREF(o);
  return o;
}
static inline int PyModule_AddObjectRef(PyObject *m, const char *name, PyObject *value) {
  Py_INCREF(value);
  if (PyModule_AddObject(m, name, value) < 0) {
    Py_DECREF(value);
    return -1;
  }
  return 0;
}
#endif
#if PY_VERSION_HEX < 0x030B0000
/* Walk the MRO for the first heap type created from a module using `def`. */
static inline PyObject *pmu_compat_module_by_def(PyTypeObject *type, PyModuleDef *def) {
  PyObject *mro = type->tp_mro;
  Py_ssize_t n = mro ? PyTuple_GET_SIZE(mro) : 0;
  for (Py_ssize_t i = 0; i < n; i++) {
    PyTypeObject *t = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
    if (!(t->tp_flags & Py_TPFLAGS_HEAPTYPE))
      continue;
    PyObject *m = PyType_GetModule(t);
    if (m && PyModule_GetDef(m) == def)
      return m;
    PyErr_Clear();
  }
  PyErr_SetString(PyExc_TypeError, "type does not belong to pymongoose_uring._pmu");
  return NULL;
}
#define PyType_GetModuleByDef pmu_compat_module_by_def
#endif

/* Common request methods, kept as interned str objects so that building
 * request.method allocates nothing and route lookups hash nothing. */
enum {
  PMU_M_GET,
  PMU_M_POST,
  PMU_M_PUT,
  PMU_M_DELETE,
  PMU_M_HEAD,
  PMU_M_OPTIONS,
  PMU_M_PATCH,
  PMU_M_CONNECT,
  PMU_M_TRACE,
  PMU_M_COUNT
};

/* A body object the engine no longer needs (see pmu_zero_copy). */
typedef struct pmu_released {
  PyObject *obj;
  struct pmu_released *next;
  struct pmu_state *st;
} pmu_released;

/* Per-module (so per-interpreter) state. Every PyObject here is a strong
 * reference, released in module_clear. */
typedef struct pmu_state {
  /* Bodies sent without a copy, handed back by the engine on a worker
   * thread without the GIL: a lock-free stack, emptied under the GIL. */
  _Atomic(pmu_released *) released;
  PyTypeObject *request_type;
  PyTypeObject *response_type;
  PyTypeObject *engine_type;
  PyObject *error;       /* _pmu.Error(OSError) */
  PyObject *unavailable; /* _pmu.UnavailableError(Error) */
  PyObject *logger;      /* logging.getLogger("pymongoose_uring") */
  PyObject *json_encoder; /* json's C encoder: encoder(obj, 0) -> chunks; or NULL */
  PyObject *json_dumps;  /* fallback when the C encoder is missing: obj -> str */
  PyObject *json_loads;
  PyObject *unquote;  /* urllib.parse.unquote */
  PyObject *support;  /* pymongoose_uring._datastructures, imported on first use */
  PyObject *methods[PMU_M_COUNT];
  PyObject *version_10, *version_11;
  PyObject *ct_json, *ct_text, *ct_html, *ct_octet; /* default Content-Type values */
  PyObject *str_get; /* "GET", same object as methods[PMU_M_GET] */
} pmu_state;

extern PyModuleDef pmu_module_def;

/* The module state of the module that defined `type` (a type of this module
 * or a subclass of one). Never fails for our own types. */
pmu_state *pmu_state_from_type(PyTypeObject *type);

/* Raise the exception matching `rc` (a -errno) with `message` (or
 * strerror when NULL): UnavailableError when io_uring itself is refused,
 * MemoryError for -ENOMEM, else Error(errno, message). Returns NULL. */
PyObject *pmu_raise_errno(pmu_state *st, int rc, const char *message);

/* Log the current exception through the package logger at ERROR with its
 * traceback, prefixed by `what` and the request line of `request` (may be
 * NULL). Clears the exception; never raises. */
void pmu_log_exception(pmu_state *st, const char *what, PyObject *request);

/* Log `message` (a C string, formatted with PyUnicode_FromFormatV) at
 * WARNING. Keeps any pending exception; never raises. */
void pmu_log_warning(pmu_state *st, const char *format, ...);

/* The support module (pymongoose_uring._datastructures), imported on first
 * use. Borrowed reference, or NULL with an exception set. */
PyObject *pmu_support(pmu_state *st);

/* Let the engine send response->body (the buffer of `owner`, a bytes or
 * str object) without copying it: owner is kept until the engine's
 * body_release, which only queues it; pmu_drain_released() drops it later
 * under the GIL. Returns 0, or -1 (no memory: the body is then copied). */
int pmu_zero_copy(pmu_state *st, pmu_response_t *response, PyObject *owner);

/* Drop the references the engine has handed back. GIL held. */
void pmu_drain_released(pmu_state *st);

/* Bodies at least this long are sent without a copy (bytes and str only). */
#define PMU_ZERO_COPY_MIN 16384

/* ---- request.c ---- */

/* Wrap an engine request; `unix_path` (borrowed, may be NULL) is the
 * server's socket path, reported as request.server. New reference, or NULL
 * with an exception set (the request is then still unanswered and the
 * caller must answer it). */
PyObject *pmu_request_new(pmu_state *st, pmu_request_t *request, PyObject *unix_path);

/* request.method and request.path, built on first use. New references. */
PyObject *pmu_request_method(PyObject *request);
PyObject *pmu_request_path(PyObject *request);

/* Whether the request is still waiting for its answer. */
int pmu_request_is_live(PyObject *request);

/*
 * Answer `request` with `result`, anything a handler may return (see
 * pmu_build_response). `owner_refs` is how many references the caller knows
 * of; if more exist, the request's data is first copied so that attributes
 * stay readable after the engine frees it. Returns 0, or -1 with an
 * exception set and the request still unanswered.
 */
int pmu_request_answer(PyObject *request, PyObject *result, Py_ssize_t owner_refs);

/* Answer with a plain-text 500; used when a handler failed. No-op when
 * already answered. `owner_refs` as for pmu_request_answer. */
void pmu_request_answer_500(PyObject *request, Py_ssize_t owner_refs);

/* ---- response.c ---- */

/*
 * A response being assembled for pmu_respond(). Pointers inside `response`
 * point into Python objects that `result` or `keep` hold alive, so the
 * struct must be released only after pmu_respond() (which copies).
 */
typedef struct pmu_built {
  pmu_response_t response;
  pmu_header_t inline_headers[16];
  pmu_header_t *headers; /* inline_headers, or PyMem_Malloc'ed when more */
  size_t count, capacity;
  PyObject *keep; /* list of temporaries (encoded JSON, str() of ints), or NULL */
  int has_content_type;
  PyObject *zero_copy; /* borrowed: an immutable body worth sending uncopied */
  char *json;        /* a body encoded by the fast JSON path: json_inline or PyMem */
  size_t json_len, json_cap;
  char json_inline[512];
} pmu_built;

/*
 * Turn a handler's result into `out`: a Response, bytes, bytearray,
 * memoryview, str, dict or list (JSON), int (status alone), or a tuple
 * (body, status[, headers]) or (status, headers, body). Returns 0, or -1
 * with an exception set; call pmu_built_release() either way.
 */
int pmu_build_response(pmu_state *st, PyObject *result, pmu_built *out);
void pmu_built_release(pmu_built *built);

/* Encode `obj` as compact, ASCII-only JSON (what json.dumps(obj,
 * separators=(",", ":")) gives). New reference to a bytes object, or NULL. */
PyObject *pmu_json_bytes(pmu_state *st, PyObject *obj);

/* ---- type specs ---- */
extern PyType_Spec pmu_request_spec;
extern PyType_Spec pmu_response_spec;
extern PyType_Spec pmu_engine_spec;

/* Module-level functions defined outside module.c. */
PyObject *pmu_config_defaults(PyObject *module, PyObject *unused);

#endif /* PMU_BINDING_H */
