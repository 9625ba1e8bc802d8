/*
 * files.c: files from Python: the StaticMount and FileResponse types, and the
 * argument handling behind Request.serve_static(), serve_file() and sendfile()
 * (request.c) and Engine(statics=...) (engine.c).
 *
 * A StaticMount is immutable and owns C copies of everything its pmu_static_t
 * points to (strings and extra headers), so the engine, or pmu_serve_static()
 * on any thread, can read it without the GIL while the object lives; the
 * Engine keeps its mounts until it is gone (pmu_server_start copies them
 * anyway). The HTTP rules themselves (confinement, conditionals, Range,
 * precompressed siblings, listing) are all in core/static.c: nothing here
 * looks at a path beyond turning it into bytes.
 *
 * A FileResponse is what a handler returns to answer with one file: the
 * binding hands it to pmu_serve_file() as it would a Response to
 * pmu_respond(), so it gets every conditional and Range rule.
 */
#include "binding.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- shared helpers ---- */

/* A C copy (PyMem) of a str or bytes option: NUL, CR and LF are refused
 * (ValueError naming `what`), since each ends up in a header or a path. None
 * gives NULL when allow_none. Returns 0, or -1 with an exception. */
static int copy_text(PyObject *value, const char *what, int allow_none, char **out) {
  *out = NULL;
  if (value == Py_None && allow_none)
    return 0;
  const char *s;
  Py_ssize_t n;
  if (PyUnicode_Check(value)) {
    s = PyUnicode_AsUTF8AndSize(value, &n);
    if (s == NULL)
      return -1;
  } else if (PyBytes_Check(value)) {
    s = PyBytes_AS_STRING(value);
    n = PyBytes_GET_SIZE(value);
  } else {
    PyErr_Format(PyExc_TypeError, "%s must be a str%s, not %.100s", what,
                 allow_none ? " or None" : "", Py_TYPE(value)->tp_name);
    return -1;
  }
  if (memchr(s, '\0', (size_t)n) || memchr(s, '\r', (size_t)n) || memchr(s, '\n', (size_t)n)) {
    PyErr_Format(PyExc_ValueError, "%s must not contain NUL, CR or LF", what);
    return -1;
  }
  char *copy = PyMem_Malloc((size_t)n + 1);
  if (copy == NULL) {
    PyErr_NoMemory();
    return -1;
  }
  memcpy(copy, s, (size_t)n);
  copy[n] = '\0';
  *out = copy;
  return 0;
}

/* A path argument (str, bytes or os.PathLike) as a C copy in the file system
 * encoding. Returns 0, or -1 with an exception. */
static int copy_path(PyObject *value, const char *what, char **out) {
  *out = NULL;
  PyObject *bytes = NULL;
  if (!PyUnicode_FSConverter(value, &bytes)) {
    if (PyErr_ExceptionMatches(PyExc_TypeError)) {
      PyErr_Clear();
      PyErr_Format(PyExc_TypeError, "%s must be a str, bytes or os.PathLike path, not %.100s", what,
                   Py_TYPE(value)->tp_name);
    }
    return -1;
  }
  Py_ssize_t n = PyBytes_GET_SIZE(bytes);
  char *copy = PyMem_Malloc((size_t)n + 1);
  if (copy == NULL) {
    Py_DECREF(bytes);
    PyErr_NoMemory();
    return -1;
  }
  memcpy(copy, PyBytes_AS_STRING(bytes), (size_t)n + 1);
  Py_DECREF(bytes);
  *out = copy;
  return 0;
}

int pyb_file_fd(PyObject *file, int *out) {
  *out = -1;
  int fd = -1;
  if (PyLong_Check(file) && !PyBool_Check(file)) {
    long v = PyLong_AsLong(file);
    if (v == -1 && PyErr_Occurred())
      return -1;
    if (v < 0 || v > INT_MAX) {
      PyErr_Format(PyExc_ValueError, "not a file descriptor: %ld", v);
      return -1;
    }
    fd = (int)v;
  } else if (PyUnicode_Check(file) || PyBytes_Check(file) ||
             PyObject_HasAttrString(file, "__fspath__")) {
    char *path;
    if (copy_path(file, "file", &path) < 0)
      return -1;
    int opened;
    Py_BEGIN_ALLOW_THREADS
    opened = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    Py_END_ALLOW_THREADS
    if (opened < 0) {
      PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
      PyMem_Free(path);
      return -1;
    }
    PyMem_Free(path);
    *out = opened;
    return 0;
  } else if (PyObject_HasAttrString(file, "fileno")) {
    PyObject *r = PyObject_CallMethod(file, "fileno", NULL);
    if (r == NULL)
      return -1;
    long v = PyLong_Check(r) ? PyLong_AsLong(r) : -1;
    Py_DECREF(r);
    if (v == -1 && PyErr_Occurred())
      return -1;
    if (v < 0 || v > INT_MAX) {
      PyErr_SetString(PyExc_ValueError, "fileno() did not return a file descriptor");
      return -1;
    }
    fd = (int)v;
  } else {
    PyErr_Format(PyExc_TypeError,
                 "a file is a path (str, bytes, os.PathLike), a file descriptor or an object "
                 "with fileno(), not %.100s",
                 Py_TYPE(file)->tp_name);
    return -1;
  }
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (dup < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  *out = dup;
  return 0;
}

/* ---- StaticMount ---- */

typedef struct {
  PyObject_HEAD
  pmu_static_t mount; /* its pointers are the owned copies below */
  char *prefix, *root, *index, *cache_control, *mime_types;
  pmu_header_t *headers; /* one PyMem block: the array, then names and values */
  PyObject *headers_obj; /* tuple of (name, value) str pairs, or None */
  PyObject *root_obj;    /* the root as given (str or bytes), for the attribute */
} MountObject;

#define MOUNT(o) ((MountObject *)(o))

const pmu_static_t *pyb_static_mount(pyb_state *st, PyObject *obj) {
  if (!PyObject_TypeCheck(obj, st->static_mount_type)) {
    PyErr_Format(PyExc_TypeError, "expected a StaticMount, not %.100s", Py_TYPE(obj)->tp_name);
    return NULL;
  }
  return &MOUNT(obj)->mount;
}

/* Copy validated headers into one block; set the attribute's tuple. */
static int mount_headers(MountObject *self, PyObject *headers) {
  self->headers_obj = Py_NewRef(Py_None);
  if (headers == Py_None)
    return 0;
  pyb_built built;
  if (pyb_build_headers(headers, &built) < 0) {
    pyb_built_release(&built);
    return -1;
  }
  size_t n = built.response.header_count, bytes = n * sizeof(pmu_header_t);
  for (size_t i = 0; i < n; i++)
    bytes += built.response.headers[i].name_len + built.response.headers[i].value_len + 2;
  char *mem = PyMem_Malloc(bytes ? bytes : 1);
  PyObject *pairs = PyTuple_New((Py_ssize_t)n);
  if (mem == NULL || pairs == NULL) {
    PyMem_Free(mem);
    Py_XDECREF(pairs);
    pyb_built_release(&built);
    PyErr_NoMemory();
    return -1;
  }
  pmu_header_t *h = (pmu_header_t *)mem;
  char *p = mem + n * sizeof(pmu_header_t);
  for (size_t i = 0; i < n; i++) {
    const pmu_header_t *src = &built.response.headers[i];
    memcpy(p, src->name, src->name_len);
    p[src->name_len] = '\0';
    h[i].name = p;
    h[i].name_len = src->name_len;
    p += src->name_len + 1;
    if (src->value_len)
      memcpy(p, src->value, src->value_len);
    p[src->value_len] = '\0';
    h[i].value = p;
    h[i].value_len = src->value_len;
    p += src->value_len + 1;
    PyObject *pair =
        Py_BuildValue("(NN)", PyUnicode_DecodeLatin1(h[i].name, (Py_ssize_t)h[i].name_len, NULL),
                      PyUnicode_DecodeLatin1(h[i].value, (Py_ssize_t)h[i].value_len, NULL));
    if (pair == NULL) {
      PyMem_Free(mem);
      Py_DECREF(pairs);
      pyb_built_release(&built);
      return -1;
    }
    PyTuple_SET_ITEM(pairs, (Py_ssize_t)i, pair);
  }
  pyb_built_release(&built);
  self->headers = h;
  self->mount.headers = h;
  self->mount.header_count = n;
  Py_SETREF(self->headers_obj, pairs);
  return 0;
}

/* mime_types: None, "ext=type,ext=type" (pymongoose's form) or a mapping
 * {ext: type}, kept in the string form core/static.c reads. */
static int mount_mime_types(MountObject *self, PyObject *value) {
  if (value == Py_None)
    return 0;
  if (PyUnicode_Check(value))
    return copy_text(value, "mime_types", 0, &self->mime_types);
  if (!PyDict_Check(value)) {
    PyErr_Format(PyExc_TypeError,
                 "mime_types must be a str \"ext=type,...\", a dict or None, not %.100s",
                 Py_TYPE(value)->tp_name);
    return -1;
  }
  PyObject *parts = PyList_New(0);
  Py_ssize_t pos = 0;
  PyObject *k, *v; /* borrowed */
  while (parts != NULL && PyDict_Next(value, &pos, &k, &v)) {
    if (!PyUnicode_Check(k) || !PyUnicode_Check(v)) {
      PyErr_SetString(PyExc_TypeError, "mime_types maps str extensions to str types");
      Py_CLEAR(parts);
      break;
    }
    if (PyUnicode_FindChar(k, ',', 0, PyUnicode_GET_LENGTH(k), 1) >= 0 ||
        PyUnicode_FindChar(k, '=', 0, PyUnicode_GET_LENGTH(k), 1) >= 0 ||
        PyUnicode_FindChar(v, ',', 0, PyUnicode_GET_LENGTH(v), 1) >= 0) {
      PyErr_SetString(PyExc_ValueError, "mime_types: an extension or type contains ',' or '='");
      Py_CLEAR(parts);
      break;
    }
    PyObject *item = PyUnicode_FromFormat("%U=%U", k, v);
    if (item == NULL || PyList_Append(parts, item) < 0)
      Py_CLEAR(parts);
    Py_XDECREF(item);
  }
  if (parts == NULL)
    return -1;
  PyObject *sep = PyUnicode_FromString(",");
  PyObject *joined = sep ? PyUnicode_Join(sep, parts) : NULL;
  Py_XDECREF(sep);
  Py_DECREF(parts);
  if (joined == NULL)
    return -1;
  int rc = copy_text(joined, "mime_types", 0, &self->mime_types);
  Py_DECREF(joined);
  return rc;
}

static void mount_free_owned(MountObject *self) {
  PyMem_Free(self->prefix);
  PyMem_Free(self->root);
  PyMem_Free(self->index);
  PyMem_Free(self->cache_control);
  PyMem_Free(self->mime_types);
  PyMem_Free(self->headers);
  self->prefix = self->root = self->index = self->cache_control = self->mime_types = NULL;
  self->headers = NULL;
  Py_CLEAR(self->headers_obj);
  Py_CLEAR(self->root_obj);
}

static PyObject *mount_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"prefix",        "root",          "index",           "dotfiles",
                           "listing",       "precompressed", "follow_symlinks", "fallthrough",
                           "cache_control", "headers",       "mime_types",      NULL};
  PyObject *prefix, *root, *index = NULL, *cache_control = Py_None, *headers = Py_None,
                           *mime_types = Py_None;
  int dotfiles = 0, listing = 0, precompressed = 1, follow = 1, fallthrough = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|$OpppppOOO:StaticMount", kwlist, &prefix,
                                   &root, &index, &dotfiles, &listing, &precompressed, &follow,
                                   &fallthrough, &cache_control, &headers, &mime_types))
    return NULL;
  MountObject *self = (MountObject *)type->tp_alloc(type, 0);
  if (self == NULL)
    return NULL;
  pmu_static_init(&self->mount);
  /* prefix: "/" or "/a/b" (a trailing slash is dropped). */
  if (!PyUnicode_Check(prefix)) {
    PyErr_Format(PyExc_TypeError, "prefix must be a str, not %.100s", Py_TYPE(prefix)->tp_name);
    goto fail;
  }
  if (copy_text(prefix, "prefix", 0, &self->prefix) < 0)
    goto fail;
  if (self->prefix[0] != '/') {
    PyErr_Format(PyExc_ValueError, "a mount's prefix starts with '/': %R", prefix);
    goto fail;
  }
  for (size_t n = strlen(self->prefix); n > 1 && self->prefix[n - 1] == '/'; n--)
    self->prefix[n - 1] = '\0';
  if (strstr(self->prefix, "//") != NULL || strchr(self->prefix, '?') != NULL ||
      strchr(self->prefix, '#') != NULL || strchr(self->prefix, '\\') != NULL) {
    PyErr_Format(PyExc_ValueError, "not a usable mount prefix: %R", prefix);
    goto fail;
  }
  /* root: an existing directory, checked now (the engine opens it at start). */
  if (copy_path(root, "root", &self->root) < 0)
    goto fail;
  {
    struct stat sb;
    if (stat(self->root, &sb) < 0) {
      PyErr_SetFromErrnoWithFilename(PyExc_OSError, self->root);
      goto fail;
    }
    if (!S_ISDIR(sb.st_mode)) {
      errno = ENOTDIR;
      PyErr_SetFromErrnoWithFilename(PyExc_OSError, self->root);
      goto fail;
    }
  }
  self->root_obj = Py_NewRef(root);
  if (index == NULL) {
    self->index = PyMem_Malloc(sizeof "index.html");
    if (self->index == NULL) {
      PyErr_NoMemory();
      goto fail;
    }
    memcpy(self->index, "index.html", sizeof "index.html");
  } else if (copy_text(index, "index", 1, &self->index) < 0) {
    goto fail;
  }
  if (self->index != NULL && strchr(self->index, '/') != NULL) {
    PyErr_SetString(PyExc_ValueError, "index is a file name, without '/'");
    goto fail;
  }
  if (copy_text(cache_control, "cache_control", 1, &self->cache_control) < 0 ||
      mount_headers(self, headers) < 0 || mount_mime_types(self, mime_types) < 0)
    goto fail;
  self->mount.prefix = self->prefix;
  self->mount.root = self->root;
  self->mount.index = self->index && self->index[0] ? self->index : NULL;
  self->mount.dotfiles = dotfiles;
  self->mount.listing = listing;
  self->mount.precompressed = precompressed;
  self->mount.follow_symlinks = follow;
  self->mount.fallthrough = fallthrough;
  self->mount.cache_control = self->cache_control;
  self->mount.mime_types = self->mime_types;
  return (PyObject *)self;
fail:
  Py_DECREF(self);
  return NULL;
}

static void mount_dealloc(PyObject *op) {
  PyTypeObject *tp = Py_TYPE(op);
  mount_free_owned(MOUNT(op));
  tp->tp_free(op);
  Py_DECREF(tp);
}

static PyObject *text_or_none(const char *s) {
  if (s == NULL)
    Py_RETURN_NONE;
  return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "surrogateescape");
}

static PyObject *mount_get(PyObject *op, void *closure) {
  MountObject *self = MOUNT(op);
  const pmu_static_t *m = &self->mount;
  switch ((int)(intptr_t)closure) {
  case 0: return text_or_none(self->prefix);
  case 1: return Py_NewRef(self->root_obj);
  case 2:
    return PyUnicode_DecodeUTF8(self->index ? self->index : "",
                                self->index ? (Py_ssize_t)strlen(self->index) : 0, NULL);
  case 3: return PyBool_FromLong(m->dotfiles);
  case 4: return PyBool_FromLong(m->listing);
  case 5: return PyBool_FromLong(m->precompressed);
  case 6: return PyBool_FromLong(m->follow_symlinks);
  case 7: return PyBool_FromLong(m->fallthrough);
  case 8: return text_or_none(self->cache_control);
  case 9: return Py_NewRef(self->headers_obj);
  case 10: return text_or_none(self->mime_types);
  }
  Py_RETURN_NONE;
}

static PyGetSetDef mount_getset[] = {
    {"prefix", mount_get, NULL, "URL path prefix ('/' or '/a/b', no trailing slash).", (void *)0},
    {"root", mount_get, NULL, "The directory served, as given.", (void *)1},
    {"index", mount_get, NULL, "File served for a directory ('' for none).", (void *)2},
    {"dotfiles", mount_get, NULL, "Whether paths with a '.name' component are served.", (void *)3},
    {"listing", mount_get, NULL, "HTML listing of a directory without index.", (void *)4},
    {"precompressed", mount_get, NULL, ".br/.gz siblings by Accept-Encoding.", (void *)5},
    {"follow_symlinks", mount_get, NULL, "Symlinks that stay inside root are followed.", (void *)6},
    {"fallthrough", mount_get, NULL, "A miss goes to the handler instead of 404.", (void *)7},
    {"cache_control", mount_get, NULL, "Cache-Control of its answers, or None.", (void *)8},
    {"headers", mount_get, NULL, "Extra headers: a tuple of (name, value), or None.", (void *)9},
    {"mime_types", mount_get, NULL, "Type overrides 'ext=type,...', or None.", (void *)10},
    {NULL},
};

static PyObject *mount_repr(PyObject *op) {
  MountObject *self = MOUNT(op);
  PyObject *prefix = text_or_none(self->prefix);
  if (prefix == NULL)
    return NULL;
  PyObject *r = PyUnicode_FromFormat("StaticMount(%R, %R)", prefix, self->root_obj);
  Py_DECREF(prefix);
  return r;
}

PyDoc_STRVAR(mount_doc,
             "StaticMount(prefix, root, *, index='index.html', dotfiles=False, listing=False,\n"
             "            precompressed=True, follow_symlinks=True, fallthrough=False,\n"
             "            cache_control=None, headers=None, mime_types=None)\n\n"
             "A directory served under a URL prefix by the engine itself (Engine(statics=)),\n"
             "or through Request.serve_static(). root must be a directory (FileNotFoundError,\n"
             "NotADirectoryError otherwise). Paths are confined to root by the kernel\n"
             "(openat2 RESOLVE_BENEATH); dotfiles: serve names starting with '.';\n"
             "listing: an HTML index of a directory without `index`; precompressed: a\n"
             ".br/.gz sibling by Accept-Encoding; fallthrough: a miss is not answered\n"
             "(the app gets the request). mime_types: 'ext=type,...' or {ext: type}.");

static PyType_Slot mount_slots[] = {
    {Py_tp_new, mount_new},   {Py_tp_dealloc, mount_dealloc}, {Py_tp_getset, mount_getset},
    {Py_tp_repr, mount_repr}, {Py_tp_doc, (void *)mount_doc}, {0, NULL},
};

PyType_Spec pyb_static_mount_spec = {
    .name = "pymongoose_uring._pmu.StaticMount",
    .basicsize = sizeof(MountObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = mount_slots,
};

/* ---- FileResponse ---- */

typedef struct {
  PyObject_HEAD
  PyObject *path;                         /* as given (str, bytes or PathLike) */
  PyObject *headers;                      /* as given, or None */
  PyObject *content_type, *cache_control; /* str or None */
  int status;
} FileResponseObject;

#define FRESP(o) ((FileResponseObject *)(o))

static PyObject *fresp_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"path", "status", "headers", "content_type", "cache_control", NULL};
  PyObject *path, *headers = Py_None, *content_type = Py_None, *cache_control = Py_None;
  int status = 200;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$iOOO:FileResponse", kwlist, &path, &status,
                                   &headers, &content_type, &cache_control))
    return NULL;
  char *check;
  if (copy_path(path, "path", &check) < 0)
    return NULL;
  PyMem_Free(check);
  if (status < 200 || status > 999 || !pmu_status_valid(status)) {
    PyErr_Format(PyExc_ValueError, "a FileResponse's status must be 200..999, not %d", status);
    return NULL;
  }
  char *tmp;
  if (copy_text(content_type, "content_type", 1, &tmp) < 0)
    return NULL;
  PyMem_Free(tmp);
  if (copy_text(cache_control, "cache_control", 1, &tmp) < 0)
    return NULL;
  PyMem_Free(tmp);
  if (headers != Py_None) {
    pyb_built built;
    int rc = pyb_build_headers(headers, &built);
    pyb_built_release(&built);
    if (rc < 0)
      return NULL;
  }
  FileResponseObject *self = (FileResponseObject *)type->tp_alloc(type, 0);
  if (self == NULL)
    return NULL;
  self->path = Py_NewRef(path);
  self->headers = Py_NewRef(headers);
  self->content_type = Py_NewRef(content_type);
  self->cache_control = Py_NewRef(cache_control);
  self->status = status;
  return (PyObject *)self;
}

static int fresp_traverse(PyObject *op, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(op));
  Py_VISIT(FRESP(op)->path);
  Py_VISIT(FRESP(op)->headers);
  return 0;
}

static int fresp_clear(PyObject *op) {
  Py_CLEAR(FRESP(op)->path);
  Py_CLEAR(FRESP(op)->headers);
  Py_CLEAR(FRESP(op)->content_type);
  Py_CLEAR(FRESP(op)->cache_control);
  return 0;
}

static void fresp_dealloc(PyObject *op) {
  PyTypeObject *tp = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  fresp_clear(op);
  tp->tp_free(op);
  Py_DECREF(tp);
}

static PyObject *fresp_get(PyObject *op, void *closure) {
  FileResponseObject *self = FRESP(op);
  switch ((int)(intptr_t)closure) {
  case 0: return Py_NewRef(self->path ? self->path : Py_None);
  case 1: return PyLong_FromLong(self->status);
  case 2: return Py_NewRef(self->headers ? self->headers : Py_None);
  case 3: return Py_NewRef(self->content_type ? self->content_type : Py_None);
  case 4: return Py_NewRef(self->cache_control ? self->cache_control : Py_None);
  }
  Py_RETURN_NONE;
}

static PyGetSetDef fresp_getset[] = {
    {"path", fresp_get, NULL, "The file, as given.", (void *)0},
    {"status", fresp_get, NULL, "200 (with conditionals and Range) or another status.", (void *)1},
    {"headers", fresp_get, NULL, "Extra headers, as given.", (void *)2},
    {"content_type", fresp_get, NULL, "None: from the extension.", (void *)3},
    {"cache_control", fresp_get, NULL, "Cache-Control value, or None.", (void *)4},
    {NULL},
};

static PyObject *fresp_repr(PyObject *op) {
  return PyUnicode_FromFormat("FileResponse(%R, status=%d)", FRESP(op)->path, FRESP(op)->status);
}

PyDoc_STRVAR(fresp_doc,
             "FileResponse(path, *, status=200, headers=None, content_type=None,\n"
             "             cache_control=None)\n\n"
             "A handler's answer that is one file, sent by the engine without passing\n"
             "through Python (splice or read+send). With status 200 every HTTP rule of\n"
             "static files applies: ETag and Last-Modified, If-None-Match /\n"
             "If-Modified-Since (304), If-Match / If-Unmodified-Since (412), Range\n"
             "(206, multipart/byteranges, 416), If-Range, HEAD. Another status sends the\n"
             "whole file with it. A missing file, or one that is not a regular file, is\n"
             "answered 404. content_type None: from the extension. The path is used\n"
             "as given (not confined to any directory).");

static PyType_Slot fresp_slots[] = {
    {Py_tp_new, fresp_new},           {Py_tp_dealloc, fresp_dealloc},
    {Py_tp_traverse, fresp_traverse}, {Py_tp_clear, fresp_clear},
    {Py_tp_getset, fresp_getset},     {Py_tp_repr, fresp_repr},
    {Py_tp_doc, (void *)fresp_doc},   {0, NULL},
};

PyType_Spec pyb_file_response_spec = {
    .name = "pymongoose_uring._pmu.FileResponse",
    .basicsize = sizeof(FileResponseObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = fresp_slots,
};

/* ---- one serve_file call ---- */

int pyb_file_call_build(pyb_state *st, PyObject *file, PyObject *content_type,
                        PyObject *cache_control, PyObject *headers, int status, pyb_file_call *c) {
  memset(c, 0, sizeof *c);
  c->fd = -1;
  c->have_built = 0;
  if (status != 0 && (status < 200 || status > 999 || !pmu_status_valid(status))) {
    PyErr_Format(PyExc_ValueError, "status must be 0 (200 with every rule) or 200..999, not %d",
                 status);
    return -1;
  }
  c->opts.status = status == 200 ? 0 : status;
  if (copy_text(content_type, "content_type", 1, &c->content_type) < 0 ||
      copy_text(cache_control, "cache_control", 1, &c->cache_control) < 0)
    return -1;
  c->opts.content_type = c->content_type;
  c->opts.cache_control = c->cache_control;
  c->have_built = 1;
  if (pyb_build_headers(headers, &c->built) < 0)
    return -1;
  c->opts.headers = c->built.response.headers;
  c->opts.header_count = c->built.response.header_count;
  if (PyLong_Check(file) || (!PyUnicode_Check(file) && !PyBytes_Check(file) &&
                             !PyObject_HasAttrString(file, "__fspath__")))
    return pyb_file_fd(file, &c->fd);
  (void)st;
  return copy_path(file, "path", &c->path);
}

int pyb_file_response_call(pyb_state *st, PyObject *result, pyb_file_call *c) {
  FileResponseObject *r = FRESP(result);
  return pyb_file_call_build(st, r->path, r->content_type, r->cache_control, r->headers, r->status,
                             c);
}

void pyb_file_call_release(pyb_file_call *c) {
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  PyMem_Free(c->path);
  PyMem_Free(c->content_type);
  PyMem_Free(c->cache_control);
  c->path = c->content_type = c->cache_control = NULL;
  if (c->have_built)
    pyb_built_release(&c->built);
  c->have_built = 0;
}
