/*
 * static.c: files answered by the HTTP rules, for engine mounts
 * (config.statics, answered on the ring thread before the handler sees the
 * request), pmu_serve_static and pmu_serve_file.
 *
 * One path through every answer: find the file (a mount: the path decoded
 * once and cleaned by core/static_path.c, then opened with openat2 beneath the
 * mount's root so that the kernel confines it; the open-file cache of the ring
 * thread first), then the conditionals (RFC 9110 13.2.2 order: If-Match,
 * If-Unmodified-Since, If-None-Match, If-Modified-Since), then Range, then the
 * answer: a head with Content-Length and the file's bytes as pieces of a
 * streamed answer.
 *
 * The open-file cache (as nginx's open_file_cache): per ring thread, a hash of
 * (mount, relative path) to a shared open file (fd, its stat, ETag) or to the
 * fact that nothing is there (ENOENT: precompressed siblings that were never
 * made are not looked for on every request), in LRU order, at most
 * config.file_cache_entries; an entry is trusted for config.file_cache_valid_ms,
 * then the path is opened again and the entry replaced when the file changed
 * (inode, size or mtime). A file is shared by
 * the cache and the answers sending it: each holds a reference, dropped by the
 * piece's release callback; the last one closes the fd.
 */
#include "internal.h"
#include "static.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Counters of static answers may be bumped from any thread (pmu_serve_file). */
#define STAT_INC(loop, field) __atomic_fetch_add(&(loop)->stats.field, 1, __ATOMIC_RELAXED)

#define PATH_CAP 4096

/* ---- mounts ------------------------------------------------------------ */

typedef struct mount {
  pmu_static_t pub; /* strings and headers owned by the copy */
  char *prefix;     /* without leading or trailing '/': "" for "/" */
  size_t prefix_len;
  int root_fd; /* O_PATH | O_DIRECTORY */
  unsigned id; /* index in config.statics: part of the cache key */
  char *owned[5];
  pmu_header_t *headers;
} mount_t;

struct pmu__statics {
  size_t n;
  mount_t *m;
};

void pmu_static_init(pmu_static_t *m) {
  memset(m, 0, sizeof *m);
  m->prefix = "/";
  m->index = "index.html";
  m->precompressed = 1;
  m->follow_symlinks = 1;
}

/* "/assets/" -> "assets", "/" -> "" (into a new string). */
static char *prefix_norm(const char *prefix, size_t *len) {
  const char *p = prefix ? prefix : "";
  while (*p == '/')
    p++;
  size_t n = strlen(p);
  while (n && p[n - 1] == '/')
    n--;
  char *s = strndup(p, n);
  *len = n;
  return s;
}

static void mount_free(mount_t *m) {
  for (size_t i = 0; i < sizeof m->owned / sizeof m->owned[0]; i++)
    free(m->owned[i]);
  if (m->headers) {
    for (size_t i = 0; i < m->pub.header_count; i++) {
      free((char *)m->headers[i].name);
      free((char *)m->headers[i].value);
    }
    free(m->headers);
  }
  free(m->prefix);
  if (m->root_fd >= 0)
    close(m->root_fd);
}

static char *dup_opt(const char *s) { return s ? strdup(s) : NULL; }

int pmu__statics_start(pmu_server_t *s) {
  const pmu_config_t *cfg = &s->cfg;
  if (!cfg->static_count)
    return 0;
  if (!cfg->statics) {
    pmu__set_error(s, "config.static_count is %zu but config.statics is NULL", cfg->static_count);
    return -EINVAL;
  }
  struct pmu__statics *st = calloc(1, sizeof *st);
  mount_t *ms = st ? calloc(cfg->static_count, sizeof *ms) : NULL;
  if (!ms) {
    free(st);
    pmu__set_error(s, "out of memory");
    return -ENOMEM;
  }
  st->m = ms;
  s->statics = st;
  for (size_t i = 0; i < cfg->static_count; i++) {
    const pmu_static_t *src = &cfg->statics[i];
    mount_t *m = &ms[i];
    m->root_fd = -1;
    st->n = i + 1;
    m->pub = *src;
    m->id = (unsigned)i;
    if (!src->root || !src->root[0]) {
      pmu__set_error(s, "static mount %zu (%s): no root directory given", i,
                     src->prefix ? src->prefix : "/");
      return -EINVAL;
    }
    if (src->prefix && src->prefix[0] && src->prefix[0] != '/') {
      pmu__set_error(s, "static mount prefix \"%s\" must start with \"/\"", src->prefix);
      return -EINVAL;
    }
    m->owned[0] = dup_opt(src->prefix ? src->prefix : "/");
    m->owned[1] = dup_opt(src->root);
    m->owned[2] = dup_opt(src->index);
    m->owned[3] = dup_opt(src->cache_control);
    m->owned[4] = dup_opt(src->mime_types);
    m->prefix = prefix_norm(src->prefix, &m->prefix_len);
    if (!m->owned[0] || !m->owned[1] || (src->index && !m->owned[2]) ||
        (src->cache_control && !m->owned[3]) || (src->mime_types && !m->owned[4]) || !m->prefix) {
      pmu__set_error(s, "out of memory");
      return -ENOMEM;
    }
    m->pub.prefix = m->owned[0];
    m->pub.root = m->owned[1];
    m->pub.index = m->owned[2];
    m->pub.cache_control = m->owned[3];
    m->pub.mime_types = m->owned[4];
    if (src->header_count) {
      m->headers = calloc(src->header_count, sizeof *m->headers);
      if (!m->headers) {
        pmu__set_error(s, "out of memory");
        return -ENOMEM;
      }
      for (size_t k = 0; k < src->header_count; k++) {
        const pmu_header_t *h = &src->headers[k];
        if (!pmu__header_safe(h)) {
          m->pub.header_count = k;
          pmu__set_error(s, "static mount %s: header %zu holds CR, LF or NUL", m->pub.prefix, k);
          return -EINVAL;
        }
        m->headers[k].name = strndup(h->name, h->name_len);
        m->headers[k].value = strndup(h->value, h->value_len);
        m->headers[k].name_len = h->name_len;
        m->headers[k].value_len = h->value_len;
        m->pub.header_count = k + 1;
        if (!m->headers[k].name || !m->headers[k].value) {
          pmu__set_error(s, "out of memory");
          return -ENOMEM;
        }
      }
    } else {
      m->pub.header_count = 0;
    }
    m->pub.headers = m->headers;
    m->root_fd = open(m->pub.root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (m->root_fd < 0) {
      int err = errno;
      pmu__set_error(s, "static mount %s: cannot open root directory \"%s\": %s", m->pub.prefix,
                     m->pub.root, strerror(err));
      return -err;
    }
    /* Confinement is the kernel's (openat2, Linux 5.6): without it, no mount. */
    struct open_how how = {.flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_BENEATH};
    long probe = syscall(SYS_openat2, m->root_fd, ".", &how, sizeof how);
    if (probe < 0) {
      int err = errno;
      pmu__set_error(s,
                     "static mount %s: openat2 with RESOLVE_BENEATH is refused (%s): static "
                     "mounts need Linux 5.6 or newer",
                     m->pub.prefix, strerror(err));
      return -err;
    }
    close((int)probe);
  }
  return 0;
}

void pmu__statics_free(pmu_server_t *s) {
  struct pmu__statics *st = s->statics;
  if (!st)
    return;
  for (size_t i = 0; i < st->n; i++)
    mount_free(&st->m[i]);
  free(st->m);
  free(st);
  s->statics = NULL;
}

/* ---- open files, shared ------------------------------------------------ */

typedef struct file {
  atomic_int refs;
  int fd;
  mode_t mode;
  dev_t dev;
  ino_t ino;
  uint64_t size;
  int64_t mtime_sec;
  uint64_t mtime_ns; /* whole time in ns */
  char etag[64];     /* "ino-size-mtime_ns" in hex, quoted */
  char last_modified[40];
} file_t;

static void file_put(file_t *f) {
  if (f && atomic_fetch_sub(&f->refs, 1) == 1) {
    close(f->fd);
    free(f);
  }
}

/* Wrap an open fd (taken) with its stat; NULL with *err on failure (fd closed). */
static file_t *file_wrap(int fd, int *err) {
  struct stat st;
  if (fstat(fd, &st) < 0) {
    *err = -errno;
    close(fd);
    return NULL;
  }
  file_t *f = malloc(sizeof *f);
  if (!f) {
    *err = -ENOMEM;
    close(fd);
    return NULL;
  }
  atomic_init(&f->refs, 1);
  f->fd = fd;
  f->mode = st.st_mode;
  f->dev = st.st_dev;
  f->ino = st.st_ino;
  f->size = (uint64_t)st.st_size;
  f->mtime_sec = (int64_t)st.st_mtim.tv_sec;
  f->mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec;
  snprintf(f->etag, sizeof f->etag, "\"%llx-%llx-%llx\"", (unsigned long long)f->ino,
           (unsigned long long)f->size, (unsigned long long)f->mtime_ns);
  pmu__format_date(f->last_modified, (time_t)f->mtime_sec);
  return f;
}

/* openat2 beneath root: the kernel refuses ".." escapes, absolute paths and
 * symlinks leading out (EXDEV), magic links, and with follow 0 any symlink
 * (ELOOP). O_NONBLOCK: a FIFO planted in the root must not block the ring. */
static int open_beneath(int root_fd, const char *rel, int follow) {
  struct open_how how = {
      .flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY,
      .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | (follow ? 0 : RESOLVE_NO_SYMLINKS),
  };
  long fd = syscall(SYS_openat2, root_fd, rel[0] ? rel : ".", &how, sizeof how);
  return fd < 0 ? -errno : (int)fd;
}

/* pmu_serve_file's path: not confined (the handler chose it). */
static int open_as_given(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  return fd < 0 ? -errno : fd;
}

/* ---- the open-file cache of a ring thread ------------------------------- */

typedef struct centry {
  struct centry *hnext;
  struct centry *prev, *next; /* LRU: head most recent */
  uint32_t hash;
  uint64_t checked_ms;
  file_t *file;
  size_t key_len;
  char key[]; /* mount id, '\0', relative path */
} centry_t;

struct pmu__fcache {
  centry_t **buckets;
  size_t nbuckets; /* power of two */
  size_t count;
  centry_t *head, *tail;
};

static uint32_t hash_key(const char *k, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)k[i];
    h *= 16777619u;
  }
  return h;
}

static void lru_unlink(struct pmu__fcache *c, centry_t *e) {
  if (e->prev)
    e->prev->next = e->next;
  else
    c->head = e->next;
  if (e->next)
    e->next->prev = e->prev;
  else
    c->tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push(struct pmu__fcache *c, centry_t *e) {
  e->prev = NULL;
  e->next = c->head;
  if (c->head)
    c->head->prev = e;
  c->head = e;
  if (!c->tail)
    c->tail = e;
}

static void centry_remove(struct pmu__fcache *c, centry_t *e) {
  centry_t **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
  while (*pp != e)
    pp = &(*pp)->hnext;
  *pp = e->hnext;
  lru_unlink(c, e);
  c->count--;
  file_put(e->file);
  free(e);
}

static struct pmu__fcache *fcache_get(pmu__loop_t *loop) {
  const pmu_config_t *cfg = &loop->server->cfg;
  if (!cfg->file_cache_entries)
    return NULL;
  if (!loop->fcache) {
    struct pmu__fcache *c = calloc(1, sizeof *c);
    if (!c)
      return NULL;
    size_t nb = 16;
    while (nb < (size_t)cfg->file_cache_entries * 2)
      nb *= 2;
    c->buckets = calloc(nb, sizeof *c->buckets);
    if (!c->buckets) {
      free(c);
      return NULL;
    }
    c->nbuckets = nb;
    loop->fcache = c;
  }
  return loop->fcache;
}

void pmu__static_loop_exit(pmu__loop_t *loop) {
  struct pmu__fcache *c = loop->fcache;
  if (!c)
    return;
  while (c->head)
    centry_remove(c, c->head);
  free(c->buckets);
  free(c);
  loop->fcache = NULL;
}

/* ---- one answer --------------------------------------------------------- */

typedef struct answer {
  pmu__req_t *r;
  const mount_t *m;  /* NULL for pmu_serve_file */
  int use_cache;     /* on the request's ring thread, with a started mount */
  const char *ctype; /* given Content-Type, or NULL */
  const char *cache_control;
  const pmu_header_t *extra;
  size_t extra_n;
  int status; /* pmu_serve_file's fixed status, or 0 */
} answer_t;

/* The file at rel under the mount, from the cache or opened (a new
 * reference in *out); -errno when it cannot be opened. Only regular files
 * are kept in the cache. */
static int file_get(answer_t *a, const char *rel, file_t **out) {
  const mount_t *m = a->m;
  pmu__loop_t *loop = a->r->loop;
  struct pmu__fcache *c = a->use_cache ? fcache_get(loop) : NULL;
  char key[PATH_CAP + 16];
  size_t key_len = 0;
  uint32_t h = 0;
  centry_t *e = NULL;
  uint64_t now = 0;
  *out = NULL;
  if (c) {
    int k = snprintf(key, sizeof key, "%u", m->id);
    size_t rl = strlen(rel);
    if ((size_t)k + 1 + rl < sizeof key) {
      key[k] = '\0';
      memcpy(key + k + 1, rel, rl);
      key_len = (size_t)k + 1 + rl;
      h = hash_key(key, key_len);
      for (e = c->buckets[h & (c->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && e->key_len == key_len && memcmp(e->key, key, key_len) == 0)
          break;
      now = pmu__now_ms();
      if (e && now - e->checked_ms < loop->server->cfg.file_cache_valid_ms) {
        STAT_INC(loop, file_cache_hits);
        lru_unlink(c, e);
        lru_push(c, e);
        if (!e->file)
          return -ENOENT; /* known missing (a precompressed sibling, most often) */
        atomic_fetch_add(&e->file->refs, 1);
        *out = e->file;
        return 0;
      }
    } else {
      c = NULL;
    }
  }
  STAT_INC(loop, file_cache_misses);
  int fd = m->root_fd == AT_FDCWD ? open_as_given(rel)
                                  : open_beneath(m->root_fd, rel, m->pub.follow_symlinks);
  file_t *f = NULL;
  int err = fd;
  if (fd >= 0) {
    err = 0;
    f = file_wrap(fd, &err);
    if (!f)
      return err;
  }
  /* What the cache keeps: a regular file, or that nothing is there (ENOENT),
   * so that a sibling no one made is not looked for on every request. */
  int keep = f ? S_ISREG(f->mode) : err == -ENOENT;
  if (c && e && f && e->file && e->file->ino == f->ino && e->file->dev == f->dev &&
      e->file->size == f->size && e->file->mtime_ns == f->mtime_ns) {
    /* Unchanged: keep the cached one (and its fd), drop the new. */
    file_put(f);
    f = e->file;
    e->checked_ms = now;
    lru_unlink(c, e);
    lru_push(c, e);
    atomic_fetch_add(&f->refs, 1);
    *out = f;
    return 0;
  }
  if (c && e)
    centry_remove(c, e); /* changed or gone: answers still sending it keep theirs */
  if (c && keep) {
    while (c->count >= loop->server->cfg.file_cache_entries && c->tail)
      centry_remove(c, c->tail);
    centry_t *n = malloc(sizeof *n + key_len);
    if (n) {
      memcpy(n->key, key, key_len);
      n->key_len = key_len;
      n->hash = h;
      n->checked_ms = now;
      n->file = f;
      if (f)
        atomic_fetch_add(&f->refs, 1); /* the cache's */
      size_t b = h & (c->nbuckets - 1);
      n->hnext = c->buckets[b];
      c->buckets[b] = n;
      lru_push(c, n);
      c->count++;
    }
  }
  if (!f)
    return err;
  *out = f;
  return 0;
}

/* Headers of an answer; grown as needed. */
typedef struct hdrs {
  pmu_header_t h[24];
  size_t n;
} hdrs_t;

static void hadd(hdrs_t *hs, const char *name, const char *value) {
  if (hs->n < sizeof hs->h / sizeof hs->h[0])
    hs->h[hs->n++] = (pmu_header_t){name, strlen(name), value, strlen(value)};
}

/* A complete small answer (errors, redirects, 304, 412, 416, listings): the
 * common headers given, then the extra ones (a mount's, or the caller's). */
static int respond_small(answer_t *a, int status, hdrs_t *hs, const char *body, size_t len,
                         const char *ctype) {
  pmu_header_t all[64];
  size_t n = 0;
  if (ctype && body)
    all[n++] = (pmu_header_t){"Content-Type", 12, ctype, strlen(ctype)};
  for (size_t i = 0; hs && i < hs->n; i++)
    all[n++] = hs->h[i];
  for (size_t i = 0; i < a->extra_n && n < sizeof all / sizeof all[0]; i++)
    all[n++] = a->extra[i];
  STAT_INC(a->r->loop, static_answers);
  return pmu_respond_simple(&a->r->pub, status, all, n, body, body ? len : 0);
}

static int respond_error(answer_t *a, int status) {
  char body[64];
  int n = snprintf(body, sizeof body, "%d %s\n", status, pmu_status_reason(status));
  hdrs_t hs = {.n = 0};
  if (status == 405)
    hadd(&hs, "Allow", "GET, HEAD");
  return respond_small(a, status, &hs, body, (size_t)n, "text/plain; charset=utf-8");
}

/* ---- conditionals -------------------------------------------------------- */

static const pmu_header_t *req_header(answer_t *a, const char *name) {
  return pmu_request_header(&a->r->pub, name);
}

/* Does the entity-tag list in v match etag? weak: W/ prefixes ignored on both
 * sides (If-None-Match); strong: a weak tag never matches (If-Match, If-Range). */
static int etag_list_match(const char *v, size_t len, const char *etag, int weak) {
  size_t elen = strlen(etag);
  size_t i = 0;
  while (i < len) {
    while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
      i++;
    if (i >= len)
      break;
    if (v[i] == '*')
      return 1;
    int is_weak = 0;
    if (i + 1 < len && v[i] == 'W' && v[i + 1] == '/') {
      is_weak = 1;
      i += 2;
    }
    if (i >= len || v[i] != '"')
      return 0; /* malformed: nothing matches */
    size_t s = i++;
    while (i < len && v[i] != '"')
      i++;
    if (i >= len)
      return 0;
    i++;
    if ((weak || !is_weak) && i - s == elen && memcmp(v + s, etag, elen) == 0)
      return 1;
  }
  return 0;
}

/* 0: go on; else the status to answer with (304 or 412). RFC 9110 13.2.2. */
static int conditionals(answer_t *a, const file_t *f) {
  const pmu_header_t *h;
  if ((h = req_header(a, "If-Match"))) {
    if (!etag_list_match(h->value, h->value_len, f->etag, 0))
      return 412;
  } else if ((h = req_header(a, "If-Unmodified-Since"))) {
    int64_t t = pmu__http_date_parse(h->value, h->value_len);
    if (t >= 0 && f->mtime_sec > t)
      return 412;
  }
  if ((h = req_header(a, "If-None-Match"))) {
    if (etag_list_match(h->value, h->value_len, f->etag, 1))
      return 304; /* GET and HEAD only reach here */
  } else if ((h = req_header(a, "If-Modified-Since"))) {
    int64_t t = pmu__http_date_parse(h->value, h->value_len);
    if (t >= 0 && f->mtime_sec <= t)
      return 304;
  }
  return 0;
}

/* If-Range absent or matching: the Range applies. */
static int if_range_ok(answer_t *a, const file_t *f) {
  const pmu_header_t *h = req_header(a, "If-Range");
  if (!h)
    return 1;
  size_t i = 0, end = h->value_len;
  while (i < end && (h->value[i] == ' ' || h->value[i] == '\t'))
    i++;
  while (end > i && (h->value[end - 1] == ' ' || h->value[end - 1] == '\t'))
    end--;
  if (i < end &&
      (h->value[i] == '"' || (end - i >= 2 && h->value[i] == 'W' && h->value[i + 1] == '/'))) {
    /* One entity-tag, compared strongly: a weak one (W/) never matches. A date
     * may begin with 'W' too ("Wed, ..."). */
    size_t elen = strlen(f->etag);
    return end - i == elen && memcmp(h->value + i, f->etag, elen) == 0;
  }
  int64_t t = pmu__http_date_parse(h->value, h->value_len);
  return t >= 0 && t == f->mtime_sec;
}

/* ---- sending the bytes -------------------------------------------------- */

static void file_release_cb(void *ctx) { file_put(ctx); }

/* The bytes [off, off + len) of f as a file piece of the streamed answer
 * (spliced or read by the engine, core/file.c); the piece holds a reference
 * to f, dropped by the engine when it is sent or dropped. */
static int send_range(pmu__req_t *r, file_t *f, uint64_t off, uint64_t len) {
  if (!len)
    return 0;
  atomic_fetch_add(&f->refs, 1);
  return pmu_respond_write_file(&r->pub, f->fd, off, len, file_release_cb, f);
}

static void u64s(char *buf, size_t cap, uint64_t v) {
  snprintf(buf, cap, "%llu", (unsigned long long)v);
}

/* The head of one part of a multipart/byteranges body into buf (cap at least
 * strlen(ctype) + 160: the fixed text, a 16-digit boundary and three 20-digit
 * numbers fit); its length. */
static size_t part_head(char *buf, size_t cap, const char *boundary, const char *ctype,
                        const pmu__range_t *range, uint64_t size) {
  int k = snprintf(buf, cap,
                   "\r\n--%s\r\nContent-Type: %s\r\nContent-Range: bytes %llu-%llu/%llu\r\n\r\n",
                   boundary, ctype, (unsigned long long)range->first,
                   (unsigned long long)range->last, (unsigned long long)size);
  return k < 0 ? 0 : (size_t)k < cap ? (size_t)k : cap - 1;
}

/* ---- answering with a file ---------------------------------------------- */

/* Answer with f (a regular file). ctype: its Content-Type; encoding: "br" /
 * "gzip" for a precompressed sibling, else NULL; vary: add Vary. */
static int answer_file(answer_t *a, file_t *f, const char *ctype, const char *encoding, int vary) {
  pmu__req_t *r = a->r;
  hdrs_t hs = {.n = 0};
  char clen[24], crange[80];
  int status = a->status ? a->status : 200;
  if (!a->status) {
    hadd(&hs, "ETag", f->etag);
    hadd(&hs, "Last-Modified", f->last_modified);
  }
  if (a->cache_control)
    hadd(&hs, "Cache-Control", a->cache_control);
  if (vary)
    hadd(&hs, "Vary", "Accept-Encoding");
  if (!a->status) {
    int cond = conditionals(a, f);
    if (cond) {
      if (cond == 304)
        STAT_INC(r->loop, not_modified);
      return respond_small(a, cond, &hs, cond == 412 ? "412 Precondition Failed\n" : NULL,
                           cond == 412 ? 24 : 0, "text/plain; charset=utf-8");
    }
    hadd(&hs, "Accept-Ranges", "bytes");
  }

  pmu__range_t stack_ranges[16], *ranges = stack_ranges;
  int nr = PMU__RANGE_IGNORE;
  const pmu_header_t *rh = a->status ? NULL : req_header(a, "Range");
  unsigned max_ranges = r->loop->server->cfg.max_ranges;
  if (rh && if_range_ok(a, f)) {
    /* Room for every range the header can hold (one more than its commas), up
     * to max_ranges: the parser writes no more. */
    size_t room = 1;
    for (size_t i = 0; i < rh->value_len; i++)
      room += rh->value[i] == ',';
    if (room > max_ranges)
      room = max_ranges;
    if (room > 16) {
      ranges = malloc(sizeof *ranges * room);
      if (!ranges) {
        respond_error(a, 503);
        return -ENOMEM;
      }
    }
    nr = pmu__static_parse_range(rh->value, rh->value_len, f->size, max_ranges, ranges);
  }
  if (nr == PMU__RANGE_UNSATISFIABLE) {
    snprintf(crange, sizeof crange, "bytes */%llu", (unsigned long long)f->size);
    hs.n = 0;
    if (a->cache_control)
      hadd(&hs, "Cache-Control", a->cache_control);
    hadd(&hs, "Content-Range", crange);
    if (ranges != stack_ranges)
      free(ranges);
    return respond_small(a, 416, &hs, "416 Range Not Satisfiable\n", 26,
                         "text/plain; charset=utf-8");
  }

  char boundary[24] = "";
  uint64_t total = f->size;
  pmu_header_t all[64];
  size_t n = 0;
  char mp_ctype[80];
  /* A part's head holds the Content-Type whole (a mount's override or a
   * caller's type can be long): sized by it, never cut short or over-read. */
  size_t part_cap = strlen(ctype) + 160;
  char *part = NULL;
  if (nr >= 2 && !(part = malloc(part_cap))) {
    if (ranges != stack_ranges)
      free(ranges);
    respond_error(a, 503);
    return -ENOMEM;
  }
  if (nr >= 2) {
    uint64_t rnd[2] = {0, 0};
    if (getrandom(rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd)
      rnd[0] = (uint64_t)pmu__now_ms() ^ ((uint64_t)(uintptr_t)r << 16);
    snprintf(boundary, sizeof boundary, "%016llx", (unsigned long long)rnd[0]);
    snprintf(mp_ctype, sizeof mp_ctype, "multipart/byteranges; boundary=%s", boundary);
    /* Each part: CRLF "--" boundary CRLF, its Content-Type and Content-Range,
     * CRLF, the bytes; then CRLF "--" boundary "--" CRLF. */
    total = 0;
    for (int i = 0; i < nr; i++) {
      size_t k = part_head(part, part_cap, boundary, ctype, &ranges[i], f->size);
      total += (uint64_t)k + (ranges[i].last - ranges[i].first + 1);
    }
    total += 2 + 2 + strlen(boundary) + 2 + 2;
    status = 206;
    all[n++] = (pmu_header_t){"Content-Type", 12, mp_ctype, strlen(mp_ctype)};
  } else {
    all[n++] = (pmu_header_t){"Content-Type", 12, ctype, strlen(ctype)};
    if (nr == 1) {
      status = 206;
      total = ranges[0].last - ranges[0].first + 1;
      snprintf(crange, sizeof crange, "bytes %llu-%llu/%llu", (unsigned long long)ranges[0].first,
               (unsigned long long)ranges[0].last, (unsigned long long)f->size);
      hadd(&hs, "Content-Range", crange);
    }
  }
  if (encoding)
    hadd(&hs, "Content-Encoding", encoding);
  u64s(clen, sizeof clen, total);
  all[n++] = (pmu_header_t){"Content-Length", 14, clen, strlen(clen)};
  for (size_t i = 0; i < hs.n; i++)
    all[n++] = hs.h[i];
  for (size_t i = 0; i < a->extra_n && n < sizeof all / sizeof all[0]; i++)
    all[n++] = a->extra[i];
  STAT_INC(r->loop, static_answers);
  int rc = pmu_respond_start(&r->pub, status, all, n);
  if (rc < 0) {
    pmu_respond_end(&r->pub);
    if (ranges != stack_ranges)
      free(ranges);
    free(part);
    return rc;
  }
  int wrc = 0;
  if (!r->pub.is_head) {
    if (nr >= 2) {
      for (int i = 0; i < nr && wrc >= 0; i++) {
        size_t k = part_head(part, part_cap, boundary, ctype, &ranges[i], f->size);
        wrc = pmu_respond_write(&r->pub, part, k, NULL, NULL);
        if (wrc >= 0)
          wrc = send_range(r, f, ranges[i].first, ranges[i].last - ranges[i].first + 1);
      }
      if (wrc >= 0) {
        char tail[40];
        int k = snprintf(tail, sizeof tail, "\r\n--%s--\r\n", boundary);
        wrc = pmu_respond_write(&r->pub, tail, (size_t)k, NULL, NULL);
      }
    } else if (nr == 1) {
      wrc = send_range(r, f, ranges[0].first, ranges[0].last - ranges[0].first + 1);
    } else {
      wrc = send_range(r, f, 0, f->size);
    }
  }
  if (ranges != stack_ranges)
    free(ranges);
  free(part);
  if (wrc < 0 && wrc != -EPIPE) {
    pmu_respond_abort(&r->pub);
    return 0; /* answered (incomplete: the client sees it cut) */
  }
  pmu_respond_end(&r->pub);
  return 0;
}

/* q-value of a coding in Accept-Encoding: -1 when not named (nor by "*"). */
typedef struct accept_enc {
  int br, gzip, identity, star; /* q * 1000, or -1 when not listed */
} accept_enc_t;

static int parse_q(const char *p, const char *end) {
  /* after "q=": "0", "0.5", "1", "1.000" */
  int v = 0;
  if (p >= end || (*p != '0' && *p != '1'))
    return 1000;
  v = (*p - '0') * 1000;
  p++;
  if (p < end && *p == '.') {
    p++;
    int scale = 100;
    while (p < end && *p >= '0' && *p <= '9' && scale) {
      v += (*p - '0') * scale;
      scale /= 10;
      p++;
    }
  }
  return v > 1000 ? 1000 : v;
}

static accept_enc_t parse_accept_encoding(const pmu_header_t *h) {
  accept_enc_t ae = {-1, -1, -1, -1};
  if (!h)
    return ae;
  const char *p = h->value, *end = h->value + h->value_len;
  while (p < end) {
    while (p < end && (*p == ' ' || *p == ',' || *p == '\t'))
      p++;
    const char *tok = p;
    while (p < end && *p != ',' && *p != ';' && *p != ' ')
      p++;
    size_t tl = (size_t)(p - tok);
    int q = 1000;
    while (p < end && *p != ',') {
      if (*p == ';') {
        p++;
        while (p < end && *p == ' ')
          p++;
        if (end - p >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=')
          q = parse_q(p + 2, end);
        continue;
      }
      p++;
    }
    if (tl == 2 && strncasecmp(tok, "br", 2) == 0)
      ae.br = q;
    else if ((tl == 4 && strncasecmp(tok, "gzip", 4) == 0) ||
             (tl == 6 && strncasecmp(tok, "x-gzip", 6) == 0))
      ae.gzip = q;
    else if (tl == 8 && strncasecmp(tok, "identity", 8) == 0)
      ae.identity = q;
    else if (tl == 1 && tok[0] == '*')
      ae.star = q;
  }
  return ae;
}

/* A miss: 404, or not answered for a fallthrough mount. */
static int miss(answer_t *a) {
  if (a->m && a->m->pub.fallthrough)
    return -ENOENT;
  respond_error(a, 404);
  return 0;
}

/* Did an open fail because nothing servable is there (a miss), rather than
 * for want of a resource or by an error (the file may well be there)? */
static int open_missed(int rc) {
  return rc == -ENOENT || rc == -ENOTDIR || rc == -EXDEV || rc == -ELOOP || rc == -ENAMETOOLONG ||
         rc == -ENXIO || rc == -ENODEV;
}

/* An open that failed: 404 (or fallthrough) for a miss, 403 when refused, and
 * for the rest 503 (EMFILE, ENFILE, ENOMEM: try again later) or 500, never a
 * 404 that a cache would keep, nor the fallthrough's answer for a path this
 * mount owns. */
static int open_failed(answer_t *a, int rc) {
  if (open_missed(rc))
    return miss(a);
  if (rc == -EACCES || rc == -EPERM)
    respond_error(a, 403);
  else if (rc == -EMFILE || rc == -ENFILE || rc == -ENOMEM || rc == -EAGAIN)
    respond_error(a, 503);
  else
    respond_error(a, 500);
  return 0;
}

/* 301 from /dir to /dir/ (the query kept). The path as the client sent it, but
 * with one leading "/": "//host/dir" must not become a protocol-relative
 * "Location: //host/dir/" that sends the browser to another host. */
static int respond_redirect(answer_t *a) {
  pmu_request_t *q = &a->r->pub;
  const char *path = q->path;
  size_t path_len = q->path_len;
  while (path_len > 1 && path[0] == '/' && path[1] == '/') {
    path++;
    path_len--;
  }
  size_t need = path_len + 2 + q->query_len + 1;
  char *loc = malloc(need);
  if (!loc)
    return -ENOMEM;
  memcpy(loc, path, path_len);
  size_t k = path_len;
  loc[k++] = '/';
  if (q->query_len) {
    loc[k++] = '?';
    memcpy(loc + k, q->query, q->query_len);
    k += q->query_len;
  }
  loc[k] = '\0';
  hdrs_t hs = {.n = 0};
  hadd(&hs, "Location", loc);
  int rc = respond_small(a, 301, &hs, "301 Moved Permanently\n", 22, "text/plain; charset=utf-8");
  free(loc);
  return rc;
}

/* ---- listings ------------------------------------------------------------ */

typedef struct buf {
  char *p;
  size_t len, cap;
  int failed;
} buf_t;

static void bput(buf_t *b, const char *s, size_t n) {
  if (b->failed)
    return;
  if (pmu__grow(&b->p, &b->cap, b->len + n + 1, 4096) < 0) {
    b->failed = 1;
    return;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void bputs(buf_t *b, const char *s) { bput(b, s, strlen(s)); }

static void put_html(buf_t *b, const char *s) {
  for (;;) {
    size_t run = strcspn(s, "&<>\"'"); /* plain bytes copied at once */
    bput(b, s, run);
    s += run;
    switch (*s) {
    case '\0': return;
    case '&': bputs(b, "&amp;"); break;
    case '<': bputs(b, "&lt;"); break;
    case '>': bputs(b, "&gt;"); break;
    case '"': bputs(b, "&quot;"); break;
    default: bputs(b, "&#39;"); break;
    }
    s++;
  }
}

/* Percent-encode everything but the unreserved characters (RFC 3986). */
static void put_url(buf_t *b, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      bput(b, (const char *)&c, 1);
    } else {
      char e[3] = {'%', hex[c >> 4], hex[c & 15]};
      bput(b, e, 3);
    }
  }
}

typedef struct dent {
  char *name;
  int is_dir;
} dent_t;

static int dent_cmp(const void *x, const void *y) {
  return strcmp(((const dent_t *)x)->name, ((const dent_t *)y)->name);
}

/* A listing names at most this many entries (about 1 MiB of HTML): a huge
 * directory cost 0.8 s of the ring thread and 20 MB per request at 200,000
 * entries, and every connection could hold one. */
#define LISTING_MAX 10000

/* An HTML listing of the directory dir_fd (taken), sorted by name, dotfiles
 * hidden unless the mount allows them, names HTML-escaped, links
 * percent-encoded; the first LISTING_MAX entries read, then a note. */
static int answer_listing(answer_t *a, int dir_fd, const char *rel) {
  DIR *d = fdopendir(dir_fd);
  if (!d) {
    close(dir_fd);
    return -errno;
  }
  dent_t *ents = NULL;
  size_t n = 0, cap = 0;
  int err = 0;
  struct dirent *de;
  int more = 0;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.' &&
        (!a->m->pub.dotfiles || !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")))
      continue;
    if (n == LISTING_MAX) {
      more = 1;
      break;
    }
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 64;
      dent_t *t = realloc(ents, ncap * sizeof *t);
      if (!t) {
        err = -ENOMEM;
        break;
      }
      ents = t;
      cap = ncap;
    }
    int is_dir = de->d_type == DT_DIR;
    if (de->d_type == DT_UNKNOWN || de->d_type == DT_LNK) {
      /* Resolved as a request for it would be (beneath the root, the mount's
       * symlink rule): one that cannot be served is not listed, and nothing
       * outside the root is looked at. */
      char p[PATH_CAP];
      int k = snprintf(p, sizeof p, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name);
      struct open_how how = {.flags = O_PATH | O_CLOEXEC,
                             .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
                                        (a->m->pub.follow_symlinks ? 0 : RESOLVE_NO_SYMLINKS)};
      long fd = k > 0 && (size_t)k < sizeof p
                    ? syscall(SYS_openat2, a->m->root_fd, p, &how, sizeof how)
                    : -1;
      struct stat st;
      if (fd < 0)
        continue;
      is_dir = fstat((int)fd, &st) == 0 && S_ISDIR(st.st_mode);
      close((int)fd);
    }
    ents[n].name = strdup(de->d_name);
    ents[n].is_dir = is_dir;
    if (!ents[n].name) {
      err = -ENOMEM;
      break;
    }
    n++;
  }
  closedir(d);
  buf_t b = {0};
  if (!err) {
    if (n)
      qsort(ents, n, sizeof *ents, dent_cmp);
    bputs(&b, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of /");
    put_html(&b, rel);
    bputs(&b, "</title></head>\n<body><h1>Index of /");
    put_html(&b, rel);
    bputs(&b, "</h1>\n<ul>\n");
    if (rel[0])
      bputs(&b, "<li><a href=\"../\">../</a></li>\n");
    for (size_t i = 0; i < n; i++) {
      bputs(&b, "<li><a href=\"");
      put_url(&b, ents[i].name);
      if (ents[i].is_dir)
        bputs(&b, "/");
      bputs(&b, "\">");
      put_html(&b, ents[i].name);
      if (ents[i].is_dir)
        bputs(&b, "/");
      bputs(&b, "</a></li>\n");
    }
    if (more)
      bputs(&b, "<li>(more entries not listed)</li>\n");
    bputs(&b, "</ul></body></html>\n");
    if (b.failed)
      err = -ENOMEM;
  }
  for (size_t i = 0; i < n; i++)
    free(ents[i].name);
  free(ents);
  if (!err) {
    hdrs_t hs = {.n = 0};
    if (a->cache_control)
      hadd(&hs, "Cache-Control", a->cache_control);
    respond_small(a, 200, &hs, b.p, b.len, "text/html; charset=utf-8");
  }
  free(b.p);
  return err;
}

/* ---- a mount's answer ---------------------------------------------------- */

/* Answer rel (cleaned) of mount; dir: asked with a trailing "/". */
static int serve_rel(answer_t *a, const char *rel, int dir, int dotfile) {
  const mount_t *m = a->m;
  pmu_request_t *q = &a->r->pub;
  char path[PATH_CAP + 64];
  size_t rl = strlen(rel);
  if (dotfile && !m->pub.dotfiles)
    return miss(a);
  int is_get = q->is_head || (q->method_len == 3 && memcmp(q->method, "GET", 3) == 0);
  if (!is_get) {
    if (m->pub.fallthrough)
      return -ENOENT;
    respond_error(a, 405);
    return 0;
  }
  file_t *f = NULL;
  int rc;
  const char *index = m->pub.index && m->pub.index[0] ? m->pub.index : NULL;
  const char *name = rel; /* the file whose type is sent */
  if (dir) {
    if (index) {
      snprintf(path, sizeof path, "%s%s%s", rel, rl ? "/" : "", index);
      rc = file_get(a, path, &f);
      if (rc == 0 && S_ISREG(f->mode)) {
        name = path;
        goto have_file;
      }
      if (rc < 0 && !open_missed(rc))
        return open_failed(a, rc);
      file_put(f);
      f = NULL;
    }
    if (m->pub.listing) {
      int fd = open_beneath(m->root_fd, rel, m->pub.follow_symlinks);
      if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
          rc = answer_listing(a, fd, rel);
          if (rc < 0)
            respond_error(a, 500);
          return rc;
        }
        close(fd);
      } else if (!open_missed(fd)) {
        return open_failed(a, fd);
      }
    }
    return miss(a);
  }
  rc = file_get(a, rel, &f);
  if (rc < 0) /* a miss: ENOENT, ENOTDIR, EXDEV (out of the root), ELOOP (symlink refused) */
    return open_failed(a, rc);
  if (S_ISDIR(f->mode)) {
    file_put(f);
    return respond_redirect(a);
  }
  if (!S_ISREG(f->mode)) {
    file_put(f);
    return miss(a);
  }
have_file:;
  char tbuf[256];
  const char *ctype = pmu__mime_type(name, strlen(name), m->pub.mime_types, tbuf, sizeof tbuf);
  const char *encoding = NULL;
  if (m->pub.precompressed) {
    accept_enc_t ae = parse_accept_encoding(pmu_request_header(q, "Accept-Encoding"));
    int qbr = ae.br >= 0 ? ae.br : ae.star, qgz = ae.gzip >= 0 ? ae.gzip : ae.star;
    int qid = ae.identity >= 0 ? ae.identity : (ae.star == 0 ? 0 : 1000);
    /* In order of preference: the higher q, br before gzip on a tie; a
     * coding is tried only when it is worth at least identity. */
    struct {
      const char *coding, *ext;
      int q;
    } order[2] = {{"br", ".br", qbr}, {"gzip", ".gz", qgz}};
    if (order[1].q > order[0].q) {
      order[0] = (typeof(order[0])){"gzip", ".gz", qgz};
      order[1] = (typeof(order[1])){"br", ".br", qbr};
    }
    size_t nl = strlen(name);
    for (int i = 0; i < 2; i++) {
      if (order[i].q <= 0 || order[i].q < qid || nl + 4 > PATH_CAP)
        continue;
      char sib[PATH_CAP + 8];
      memcpy(sib, name, nl);
      memcpy(sib + nl, order[i].ext, 4);
      file_t *s = NULL;
      if (file_get(a, sib, &s) == 0) {
        if (S_ISREG(s->mode)) {
          file_put(f);
          f = s;
          encoding = order[i].coding;
          break;
        }
        file_put(s);
      }
    }
  }
  rc = answer_file(a, f, ctype, encoding, m->pub.precompressed);
  file_put(f);
  return rc;
}

/* Is clean (a cleaned path) under the prefix? Sets *rel to what lies below. */
static int under_prefix(const mount_t *m, const char *clean, size_t len, const char **rel) {
  if (m->prefix_len == 0) {
    *rel = clean;
    return 1;
  }
  if (len < m->prefix_len || memcmp(clean, m->prefix, m->prefix_len) != 0)
    return 0;
  if (len == m->prefix_len) {
    *rel = clean + len;
    return 1;
  }
  if (clean[m->prefix_len] != '/')
    return 0;
  *rel = clean + m->prefix_len + 1;
  return 1;
}

/* Does a raw (undecoded) path start with the mount's prefix? */
static int raw_under_prefix(const mount_t *m, const char *path, size_t len) {
  if (m->prefix_len == 0)
    return 1;
  if (len < m->prefix_len + 1 || path[0] != '/' || memcmp(path + 1, m->prefix, m->prefix_len) != 0)
    return 0;
  return len == m->prefix_len + 1 || path[m->prefix_len + 1] == '/';
}

static int has_dot_segment(const char *rel) {
  for (const char *p = rel; *p; p++)
    if (*p == '.' && (p == rel || p[-1] == '/'))
      return 1;
  return 0;
}

int pmu__static_dispatch(pmu__req_t *r) {
  const struct pmu__statics *st = r->loop->server->statics;
  pmu_request_t *q = &r->pub;
  char clean[PATH_CAP];
  int dir = 0, dotfile = 0;
  long cl = pmu__static_clean_path(q->path, q->path_len, PMU__PATH_DECODE, clean, sizeof clean,
                                   &dir, &dotfile);
  const mount_t *best = NULL;
  const char *rel = NULL;
  for (size_t i = 0; i < st->n; i++) {
    const mount_t *m = &st->m[i];
    const char *mrel;
    if (cl >= 0 ? under_prefix(m, clean, (size_t)cl, &mrel)
                : raw_under_prefix(m, q->path, q->path_len)) {
      if (!best || m->prefix_len > best->prefix_len) {
        best = m;
        rel = cl >= 0 ? mrel : NULL;
      }
    }
  }
  if (!best)
    return 0;
  answer_t a = {.r = r,
                .m = best,
                .use_cache = 1,
                .cache_control = best->pub.cache_control,
                .extra = best->pub.headers,
                .extra_n = best->pub.header_count};
  if (cl < 0) {
    if (best->pub.fallthrough)
      return 0; /* the application decides what a path it may own means */
    respond_error(&a, 400);
    return 1;
  }
  int rc = serve_rel(&a, rel, dir, has_dot_segment(rel));
  return rc != -ENOENT;
}

/* The same extra headers, in the same order (names and values). */
static int same_headers(const pmu_static_t *p, const pmu_static_t *m) {
  if (p->header_count != m->header_count)
    return 0;
  for (size_t i = 0; i < p->header_count; i++) {
    const pmu_header_t *a = &p->headers[i], *b = &m->headers[i];
    if (a->name_len != b->name_len || a->value_len != b->value_len ||
        memcmp(a->name, b->name, a->name_len) != 0 || memcmp(a->value, b->value, a->value_len) != 0)
      return 0;
  }
  return 1;
}

/* The started mount equal to m (the same prefix, root, options and extra
 * headers), or NULL: a mount that differs only in its headers' values (a
 * Content-Security-Policy, a CORS header) must not get the started one's. */
static const mount_t *started_mount(pmu_server_t *s, const pmu_static_t *m) {
  const struct pmu__statics *st = s->statics;
  for (size_t i = 0; st && i < st->n; i++) {
    const pmu_static_t *p = &st->m[i].pub;
    if (p->root && m->root && !strcmp(p->root, m->root) &&
        !strcmp(p->prefix, m->prefix ? m->prefix : "/") && p->dotfiles == m->dotfiles &&
        p->listing == m->listing && p->precompressed == m->precompressed &&
        p->follow_symlinks == m->follow_symlinks && p->fallthrough == m->fallthrough &&
        !strcmp(p->index ? p->index : "", m->index ? m->index : "") &&
        !strcmp(p->cache_control ? p->cache_control : "",
                m->cache_control ? m->cache_control : "") &&
        !strcmp(p->mime_types ? p->mime_types : "", m->mime_types ? m->mime_types : "") &&
        same_headers(p, m))
      return &st->m[i];
  }
  return NULL;
}

int pmu_serve_static(pmu_request_t *request, const pmu_static_t *mount, const char *rel_path,
                     size_t rel_len) {
  pmu__req_t *r = (pmu__req_t *)request;
  mount_t tmp;
  const mount_t *m = started_mount(r->loop->server, mount);
  answer_t a = {.r = r, .m = NULL};
  int rc;
  if (!m) {
    memset(&tmp, 0, sizeof tmp);
    tmp.pub = *mount;
    tmp.id = UINT32_MAX;
    tmp.prefix = prefix_norm(mount->prefix, &tmp.prefix_len);
    tmp.root_fd = mount->root ? open(mount->root, O_PATH | O_DIRECTORY | O_CLOEXEC) : -1;
    if (!tmp.prefix || tmp.root_fd < 0) {
      rc = tmp.prefix ? -errno : -ENOMEM;
      if (!mount->root)
        rc = -EINVAL;
      free(tmp.prefix);
      if (tmp.root_fd >= 0)
        close(tmp.root_fd);
      a.m = &tmp;
      a.extra = mount->headers;
      a.extra_n = mount->header_count;
      respond_error(&a, 500);
      return rc;
    }
    m = &tmp;
  }
  a.m = m;
  a.use_cache = m != &tmp && pmu__current_loop == r->loop;
  a.cache_control = m->pub.cache_control;
  a.extra = m->pub.headers;
  a.extra_n = m->pub.header_count;
  char clean[PATH_CAP];
  int dir = 0, dotfile = 0;
  const char *rel = NULL;
  long cl;
  if (rel_path) {
    cl = pmu__static_clean_path(rel_path, rel_len, 0, clean, sizeof clean, &dir, &dotfile);
    rel = clean;
  } else {
    cl = pmu__static_clean_path(request->path, request->path_len, PMU__PATH_DECODE, clean,
                                sizeof clean, &dir, &dotfile);
    if (cl >= 0 && !under_prefix(m, clean, (size_t)cl, &rel))
      rel = NULL;
  }
  if (cl < 0) {
    respond_error(&a, 400);
    rc = 0;
  } else if (!rel) {
    rc = miss(&a);
  } else {
    rc = serve_rel(&a, rel, dir, has_dot_segment(rel));
  }
  if (m == &tmp) {
    free(tmp.prefix);
    close(tmp.root_fd);
  }
  return rc;
}

/* The pseudo-mount of pmu_serve_file's paths in the open-file cache: no root
 * (paths are opened as given), an id no mount of config.statics has. */
static const mount_t given_paths = {.root_fd = AT_FDCWD, .id = UINT32_MAX - 1};

int pmu_serve_file(pmu_request_t *request, const char *path, int fd, const pmu_file_opts_t *opts) {
  pmu__req_t *r = (pmu__req_t *)request;
  pmu_file_opts_t none = {0};
  if (!opts)
    opts = &none;
  answer_t a = {.r = r,
                .m = NULL,
                .cache_control = opts->cache_control,
                .extra = opts->headers,
                .extra_n = opts->header_count,
                .status = opts->status == 200 ? 0 : opts->status};
  pmu_request_t *q = request;
  int err = 0;
  file_t *f = NULL;
  if (fd >= 0) {
    f = file_wrap(fd, &err);
  } else if (!path) {
    respond_error(&a, 500);
    return -EINVAL;
  } else {
    /* An absolute path, on the request's ring thread (a native Python handler's
     * FileResponse): through the open-file cache, keyed by the path as given. */
    answer_t by_path = {
        .r = r, .m = &given_paths, .use_cache = path[0] == '/' && pmu__current_loop == r->loop};
    err = file_get(&by_path, path, &f);
  }
  if (!f) {
    if (err == -ENOENT || err == -ENOTDIR || err == -ELOOP || err == -ENAMETOOLONG) {
      respond_error(&a, 404);
      return 0;
    }
    if (err == -EACCES) {
      respond_error(&a, 403);
      return 0;
    }
    respond_error(&a, 500);
    return err;
  }
  if (!S_ISREG(f->mode)) {
    file_put(f);
    respond_error(&a, 404);
    return 0;
  }
  int is_get = q->is_head || (q->method_len == 3 && memcmp(q->method, "GET", 3) == 0);
  if (!is_get)
    a.status = a.status ? a.status : 200; /* another method: the whole file, no conditionals */
  char tbuf[256];
  const char *ctype = opts->content_type;
  if (!ctype) {
    const char *name = path ? path : "";
    ctype = pmu__mime_type(name, strlen(name), NULL, tbuf, sizeof tbuf);
  }
  int rc = answer_file(&a, f, ctype, NULL, 0);
  file_put(f);
  return rc;
}
