/*
 * http.c: the llhttp glue. Spans the parser reports are copied once into
 * the request's own memory (so the receive buffer can go back at once);
 * limits are enforced while parsing; complete requests join the batch.
 */
#include "internal.h"
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_FREE_REQS 4096
/* Pooled requests keep their buffers; those above SMALL_BUF count against a
 * per-loop budget, so a burst of large bodies cannot pin memory for good,
 * while a steady stream of them does not pay malloc+page faults each time. */
#define SMALL_BUF (64 * 1024)
#define BIG_BUF_MAX (4u << 20)
#define BIG_POOL_BUDGET (32u << 20)
/* Pipelined requests of one connection handed to the handler before the
 * first answer tells their size. */
#define PIPELINE_FIRST 2

/* ---- requests ---- */

static size_t big_bytes(const pmu__req_t *r) {
  return (r->data_cap > SMALL_BUF ? r->data_cap : 0) + (r->out_cap > SMALL_BUF ? r->out_cap : 0);
}

pmu__req_t *pmu__req_alloc(pmu__loop_t *loop) {
  pmu__req_t *r = loop->free_reqs;
  if (r) {
    loop->free_reqs = r->next;
    loop->nfree_reqs--;
    loop->pool_big_bytes -= big_bytes(r);
  } else {
    r = calloc(1, sizeof *r);
    if (!r)
      return NULL;
  }
  r->loop = loop;
  return r;
}

static void req_drop_output(pmu__req_t *r) {
  if (r->h) {
    pmu__connh_unref(r->h);
    r->h = NULL;
  }
  if (r->tls_snap) {
    pmu__tls_snap_unref(r->tls_snap);
    r->tls_snap = NULL;
  }
  free(r->end_seg); /* a stream's end piece never used */
  r->end_seg = NULL;
  if (r->ext_release)
    r->ext_release(r->ext_ctx);
  r->ext_release = NULL;
  while (r->seg_head) {
    pmu__seg_t *g = r->seg_head;
    r->seg_head = g->next;
    pmu__seg_done(g);
  }
  r->seg_tail = NULL;
}

/* Give back what the body holds against the budget: its charge, its file. */
static void req_drop_body(pmu__req_t *r) {
  if (r->body_charged) {
    atomic_fetch_sub(&r->loop->server->body_bytes, r->body_charged);
    __atomic_fetch_sub(&r->loop->stats.body_buffer_bytes, r->body_charged, __ATOMIC_RELAXED);
    r->body_charged = 0;
  }
  if (r->spooled) {
    if (r->spool_map)
      munmap(r->spool_map, r->spool_len);
    if (r->spool_fd >= 0)
      close(r->spool_fd);
    r->spool_map = NULL;
    r->spool_fd = -1;
    r->spooled = 0;
  }
}

/* Reset a request for reuse, keeping its buffers. */
static void req_reset(pmu__req_t *r) {
  req_drop_output(r);
  req_drop_body(r);
  char *data = r->data, *out = r->out;
  pmu__hoff_t *hoff = r->hoff;
  pmu_header_t *headers = r->headers;
  size_t data_cap = r->data_cap, out_cap = r->out_cap, hcap = r->hcap;
  size_t headers_cap = r->headers_cap;
  memset(r, 0, sizeof *r);
  r->data = data;
  r->data_cap = data_cap;
  r->hoff = hoff;
  r->hcap = hcap;
  r->headers = headers;
  r->headers_cap = headers_cap;
  r->out = out;
  r->out_cap = out_cap;
}

static void req_destroy(pmu__req_t *r) {
  req_drop_output(r);
  req_drop_body(r);
  free(r->data);
  free(r->hoff);
  free(r->headers);
  free(r->out);
  free(r);
}

void pmu__req_free(pmu__req_t *r) {
  pmu__loop_t *loop = r->loop;
  if (r->ws)
    pmu__ws_accept_dropped(r); /* a 101 that never reached its connection */
  size_t big = big_bytes(r);
  if (pmu__current_loop != loop || loop->nfree_reqs >= MAX_FREE_REQS || r->data_cap > BIG_BUF_MAX ||
      r->out_cap > BIG_BUF_MAX || loop->pool_big_bytes + big > BIG_POOL_BUDGET) {
    req_destroy(r);
    return;
  }
  loop->pool_big_bytes += big;
  req_reset(r);
  r->next = loop->free_reqs;
  loop->free_reqs = r;
  loop->nfree_reqs++;
}

int pmu__grow(char **buf, size_t *cap, size_t need, size_t first_cap) {
  if (need <= *cap)
    return 0;
  size_t n = *cap ? *cap : first_cap;
  while (n < need)
    n *= 2;
  char *p = realloc(*buf, n);
  if (!p)
    return -ENOMEM;
  *buf = p;
  *cap = n;
  return 0;
}

static int data_reserve(pmu__req_t *r, size_t extra) {
  return pmu__grow(&r->data, &r->data_cap, r->data_len + extra, 512);
}

static int data_append(pmu__req_t *r, const char *at, size_t len) {
  if (data_reserve(r, len) < 0)
    return -ENOMEM;
  memcpy(r->data + r->data_len, at, len);
  r->data_len += len;
  return 0;
}

/* ---- request bodies: memory within the budget, else a temporary file ---- */

static int write_all(int fd, const char *p, size_t len) {
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* An unlinked file in the spool directory: O_TMPFILE, or where the file
 * system lacks it, a named file unlinked at once. */
static int spool_open(const char *dir) {
  int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
    return fd >= 0 ? fd : -errno;
  char path[4096];
  if (snprintf(path, sizeof path, "%s/pmu-body-XXXXXX", dir) >= (int)sizeof path)
    return -ENAMETOOLONG;
  fd = mkostemp(path, O_CLOEXEC);
  if (fd < 0)
    return -errno;
  unlink(path);
  return fd;
}

/* Move the body buffered so far to a file and go on there. */
static int spool_start(pmu__conn_t *c, pmu__req_t *r) {
  int fd = spool_open(c->loop->server->spool_dir ? c->loop->server->spool_dir : "/tmp");
  if (fd < 0)
    return fd;
  size_t held = r->data_len - c->body_off;
  int rc = write_all(fd, r->data + c->body_off, held);
  if (rc < 0) {
    close(fd);
    return rc;
  }
  req_drop_body(r); /* the charge goes back */
  r->spooled = 1;
  r->spool_fd = fd;
  r->spool_len = held;
  r->data_len = c->body_off;
  if (r->data_cap > SMALL_BUF && r->data_cap > 2 * c->body_off) {
    /* Give back the memory the body took. */
    size_t cap = c->body_off ? c->body_off : 1;
    char *p = realloc(r->data, cap);
    if (p) {
      r->data = p;
      r->data_cap = cap;
    }
  }
  STAT_ADD(c->loop, bodies_spooled, 1);
  return 0;
}

/* Keep len more body bytes. Memory grows with what was sent, never ahead of
 * it beyond doubling, and never past the announced length. */
static int body_store(pmu__conn_t *c, pmu__req_t *r, const char *at, size_t len) {
  if (!r->spooled) {
    pmu_server_t *s = c->loop->server;
    size_t budget = s->cfg.body_buffer_budget;
    if (budget && atomic_fetch_add(&s->body_bytes, len) + len > budget) {
      atomic_fetch_sub(&s->body_bytes, len);
      int rc = spool_start(c, r);
      if (rc < 0)
        return rc;
    } else {
      if (budget) {
        r->body_charged += len;
        __atomic_fetch_add(&c->loop->stats.body_buffer_bytes, len, __ATOMIC_RELAXED);
      }
      size_t need = r->data_len + len;
      if (need > r->data_cap) {
        size_t cap = r->data_cap ? r->data_cap * 2 : 512;
        const llhttp_t *p = &c->parser;
        if (p->flags & F_CONTENT_LENGTH) {
          size_t announced = c->body_off + (size_t)c->body_bytes + (size_t)p->content_length;
          if (cap > announced)
            cap = announced; /* content_length counts down: what is still to come */
        }
        if (cap < need)
          cap = need;
        char *q = realloc(r->data, cap);
        if (!q)
          return -ENOMEM;
        r->data = q;
        r->data_cap = cap;
      }
      memcpy(r->data + r->data_len, at, len);
      r->data_len += len;
      return 0;
    }
  }
  int rc = write_all(r->spool_fd, at, len);
  if (rc < 0)
    return rc;
  r->spool_len += len;
  return 0;
}

/* Body bytes kept so far, in memory or in the file. */
static size_t body_kept(const pmu__conn_t *c, const pmu__req_t *r) {
  return r->spooled ? r->spool_len : r->data_len - c->body_off;
}

/* The body is complete: map its file read-only for the handler. */
static int spool_finish(pmu__req_t *r) {
  if (r->spool_len) {
    void *m = mmap(NULL, r->spool_len, PROT_READ, MAP_SHARED, r->spool_fd, 0);
    if (m == MAP_FAILED)
      return -errno;
    r->spool_map = m;
  }
  close(r->spool_fd);
  r->spool_fd = -1;
  r->pub.body = r->spool_map;
  r->pub.body_len = r->spool_len;
  return 0;
}

/* ---- callbacks ---- */

#define CONN(p) ((pmu__conn_t *)(p)->data)

static int fail(pmu__conn_t *c, int status) {
  c->error_status = (uint16_t)status;
  return -1;
}

static int count_header_bytes(pmu__conn_t *c, size_t len) {
  c->header_bytes += len;
  return c->header_bytes > c->loop->server->cfg.max_header_bytes;
}

static int on_message_begin(llhttp_t *p) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = pmu__req_alloc(c->loop);
  if (!r)
    return fail(c, 503);
  r->conn = c;
  r->kind = REQ_USER;
  if (__builtin_expect(c->tls != NULL, 0)) {
    r->pub.tls = 1;
    r->tls_snap = pmu__tls_conn_snap(c);
  }
  c->cur = r;
  c->pstate = PS_HEADERS;
  c->served = 1;
  c->header_bytes = 0;
  c->body_bytes = 0;
  c->data_end = 0;
  c->close_asked = 0;
  c->last_cb = 0;
  pmu__conn_timer_update(c);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = c->cur;
  if (r->url_len + len > c->loop->server->cfg.max_url_bytes)
    return fail(c, 414);
  if (count_header_bytes(c, len))
    return fail(c, 431);
  if (r->url_len == 0)
    r->url_off = (uint32_t)r->data_len;
  r->url_len += (uint32_t)len;
  return data_append(r, at, len) < 0 ? fail(c, 503) : 0;
}

/* The absolute offset of `at`, a byte of the piece being fed. */
static uint64_t offset_of(const pmu__conn_t *c, const char *at) {
  return c->fed + (uint64_t)(at - c->chunk);
}

/* A field name ends here: remember where, to look for a fold before its value. */
static void name_ended(pmu__conn_t *c, const char *at, size_t len) {
  c->name_end = offset_of(c, at) + len;
  c->lf_after_name = 0;
}

/* The first non-empty value span of a field begins at `at` (llhttp may
 * report an empty one, even after the line's CRLF): was there an LF between
 * the name and it? llhttp takes "Name:CRLF SP value" as the value "value"
 * (obs-fold after an empty first line, RFC 9112 5.2), so that
 * "Content-Length:\r\n 5" would frame a body that a front end reading the
 * fold differently would not. The bytes since the name are in this piece, or
 * were looked at when the last piece ended (pmu__http_feed). */
static int folded_before_value(const pmu__conn_t *c, const char *at) {
  if (c->lf_after_name)
    return 1;
  const char *from = c->name_end > c->fed ? c->chunk + (c->name_end - c->fed) : c->chunk;
  return from < at && memchr(from, '\n', (size_t)(at - from)) != NULL;
}

/* Trailer lines of a chunked body are counted and checked like header lines
 * (a name, no obs-fold), then dropped: nothing keeps them. */
static int trailer_field(pmu__conn_t *c, const char *at, size_t len) {
  name_ended(c, at, len);
  if (c->last_cb != 1) {
    c->last_cb = 1;
    c->trailer_name_len = 0;
  }
  c->trailer_name_len += (uint32_t)len;
  return 0;
}

static int trailer_value(pmu__conn_t *c, const char *at, size_t len) {
  uint64_t start = offset_of(c, at);
  if (c->last_cb != 2) {
    if (c->last_cb != 1 || c->trailer_name_len == 0)
      return fail(c, 400); /* ": value": a field name is never empty */
    c->last_cb = 2;
    c->value_end = 0;
  }
  if (len && !c->value_end && folded_before_value(c, at))
    return fail(c, 400); /* "Name:CRLF SP value": obs-fold */
  if (len && c->value_end && start != c->value_end)
    return fail(c, 400); /* bytes skipped inside one value: obs-fold */
  if (len)
    c->value_end = start + len;
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = c->cur;
  if (count_header_bytes(c, len))
    return fail(c, 431);
  /* RFC 9112 5.1: no whitespace between the field name and the colon. */
  for (size_t i = 0; i < len; i++)
    if (at[i] == ' ' || at[i] == '\t')
      return fail(c, 400);
  if (c->pstate == PS_BODY)
    return trailer_field(c, at, len);
  if (c->last_cb != 1) {
    if (r->hcount >= c->loop->server->cfg.max_headers)
      return fail(c, 431);
    if (r->hcount == r->hcap) {
      size_t cap = r->hcap ? r->hcap * 2 : 16;
      pmu__hoff_t *h = realloc(r->hoff, cap * sizeof *h);
      if (!h)
        return fail(c, 503);
      r->hoff = h;
      r->hcap = cap;
    }
    pmu__hoff_t *h = &r->hoff[r->hcount++];
    h->name_off = (uint32_t)r->data_len;
    h->name_len = 0;
    h->value_off = 0;
    h->value_len = 0;
    c->last_cb = 1;
  }
  r->hoff[r->hcount - 1].name_len += (uint32_t)len;
  name_ended(c, at, len);
  return data_append(r, at, len) < 0 ? fail(c, 503) : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = c->cur;
  if (count_header_bytes(c, len))
    return fail(c, 431);
  if (c->pstate == PS_BODY)
    return trailer_value(c, at, len);
  pmu__hoff_t *h = &r->hoff[r->hcount - 1];
  uint64_t start = offset_of(c, at);
  if (c->last_cb != 2) {
    h->value_off = (uint32_t)r->data_len;
    c->last_cb = 2;
  }
  if (len && !h->value_len && folded_before_value(c, at)) {
    return fail(c, 400); /* "Name:CRLF SP value": obs-fold */
  } else if (len && h->value_len && start != c->value_end) {
    /* llhttp skipped bytes inside one value: a CRLF, i.e. obs-fold
     * (RFC 9112 5.2), which we refuse. */
    return fail(c, 400);
  }
  if (len)
    c->value_end = start + len;
  h->value_len += (uint32_t)len;
  return data_append(r, at, len) < 0 ? fail(c, 503) : 0;
}

static int finalize(pmu__conn_t *c, pmu__req_t *r, llhttp_t *p);
static void join_batch(pmu__conn_t *c, pmu__req_t *r);

/* Hand the request to the handler now, before its body: the body follows
 * through config.on_body. */
static int start_body_stream(pmu__conn_t *c, pmu__req_t *r, llhttp_t *p) {
  size_t keep = r->data_len;
  r->data_len = c->body_off; /* the request as seen has no body */
  if (finalize(c, r, p) < 0)
    return -ENOMEM;
  r->data_len = keep;
  r->pub.body_streaming = 1;
  r->pub.body = NULL;
  r->pub.body_len = 0;
  join_batch(c, r);
  /* The handler must see the request before its first piece. */
  pmu__loop_dispatch(c->loop);
  return 0;
}

static int value_is(const pmu__req_t *r, const pmu__hoff_t *h, const char *want) {
  size_t n = strlen(want), len = h->value_len;
  const char *v = r->data + h->value_off;
  while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
    len--; /* trailing OWS is not part of the value (RFC 9110 5.5) */
  return len == n && strncasecmp(v, want, n) == 0;
}

static int name_is(const pmu__req_t *r, const pmu__hoff_t *h, const char *want) {
  size_t n = strlen(want);
  return h->name_len == n && strncasecmp(r->data + h->name_off, want, n) == 0;
}

/* ---- request target and Host (RFC 9112 3.2, 3.2.2-3.2.4) ---- */

/* unreserved / sub-delims (RFC 3986), i.e. a reg-name's characters but '%'. */
static int host_char(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         (ch && strchr("-._~!$&'()*+,;=", ch));
}

static int hex_digit(unsigned char ch) {
  return (ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f');
}

/* host [ ":" port ] with a non-empty host (RFC 9110 4.2.1: an "http" URI
 * with an empty host is invalid): an IP-literal, or a reg-name (an IPv4
 * address is one). No userinfo, no whitespace, no path. */
static int valid_authority(const char *s, size_t n) {
  size_t i = 0;
  if (n && s[0] == '[') {
    for (i = 1; i < n && s[i] != ']'; i++)
      if (!host_char((unsigned char)s[i]) && s[i] != ':')
        return 0;
    if (i == n || i == 1)
      return 0;
    i++; /* past ']' */
  } else {
    for (; i < n && s[i] != ':'; i++) {
      if (s[i] == '%') {
        if (i + 2 >= n || !hex_digit((unsigned char)s[i + 1]) ||
            !hex_digit((unsigned char)s[i + 2]))
          return 0;
        i += 2;
      } else if (!host_char((unsigned char)s[i])) {
        return 0;
      }
    }
    if (i == 0)
      return 0;
  }
  if (i == n)
    return 1;
  if (s[i++] != ':')
    return 0;
  for (; i < n; i++)
    if (s[i] < '0' || s[i] > '9')
      return 0;
  return 1;
}

/* An absolute-form target "http://authority/path?query": the authority
 * becomes the Host header's value (added if absent) and the target becomes
 * the origin-form "/path?query" ("/" for an empty path). Both are moved
 * within the target's own bytes: the scheme leaves room. */
static int absolute_form(pmu__conn_t *c, pmu__req_t *r, size_t scheme_len, long host_idx) {
  char *t = r->data + r->url_off;
  size_t start = scheme_len + 3, a = start;
  while (a < r->url_len && t[a] != '/' && t[a] != '?' && t[a] != '#')
    a++;
  size_t alen = a - start;
  if (!valid_authority(t + start, alen))
    return 400; /* no authority, userinfo, or not a host[:port] */
  if (host_idx < 0) {
    if (r->hcount == r->hcap) {
      size_t cap = r->hcap ? r->hcap * 2 : 16;
      pmu__hoff_t *h = realloc(r->hoff, cap * sizeof *h);
      if (!h)
        return 503;
      r->hoff = h;
      r->hcap = cap;
    }
    host_idx = (long)r->hcount++;
    r->hoff[host_idx].name_off = (uint32_t)r->data_len;
    r->hoff[host_idx].name_len = 4;
    if (data_append(r, "Host", 4) < 0)
      return 503;
    t = r->data + r->url_off;
  }
  memmove(t, t + start, alen);
  r->hoff[host_idx].value_off = r->url_off;
  r->hoff[host_idx].value_len = (uint32_t)alen;
  uint32_t rest = r->url_len - (uint32_t)a;
  if (rest == 0 || t[a] != '/') {
    t[--a] = '/'; /* a - 1 is inside the scheme's old place, past the authority */
    rest++;
  }
  r->url_off += (uint32_t)a;
  r->url_len = rest;
  return 0;
}

/* A field value's length without trailing whitespace (llhttp skips the
 * leading). */
static size_t trimmed_len(const pmu__req_t *r, const pmu__hoff_t *h) {
  size_t n = h->value_len;
  const char *v = r->data + h->value_off;
  while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
    n--;
  return n;
}

/* The value, a comma-separated list, has the token "close". */
static int has_close_token(const pmu__req_t *r, const pmu__hoff_t *h) {
  const char *v = r->data + h->value_off, *end = v + h->value_len;
  while (v < end) {
    while (v < end && (*v == ' ' || *v == '\t' || *v == ','))
      v++;
    const char *t = v;
    while (v < end && *v != ',')
      v++;
    const char *e = v;
    while (e > t && (e[-1] == ' ' || e[-1] == '\t'))
      e--;
    if (e - t == 5 && strncasecmp(t, "close", 5) == 0)
      return 1;
  }
  return 0;
}

/* The rules on the request line and header fields that llhttp leaves to us:
 * 0, or the status to refuse with. */
static int check_head(pmu__conn_t *c, pmu__req_t *r, llhttp_t *p) {
  if (p->method == HTTP_CONNECT)
    return 400; /* an origin server: no tunnels, no authority-form (as nginx) */
  long host_idx = -1;
  for (size_t i = 0; i < r->hcount; i++) {
    const pmu__hoff_t *h = &r->hoff[i];
    if (h->name_len == 0)
      return 400; /* ": value": a field name is a token, never empty */
    if (name_is(r, h, "transfer-encoding") && trimmed_len(r, h) == 0)
      return 400; /* an empty Transfer-Encoding: no coding to decode by */
    if (name_is(r, h, "connection") && has_close_token(r, h))
      c->close_asked = 1; /* also "close\t", which llhttp 8.1 reads as keep-alive */
    if (!name_is(r, h, "host"))
      continue;
    if (host_idx >= 0)
      return 400; /* more than one Host */
    host_idx = (long)i;
  }
  if (host_idx < 0 && p->http_minor >= 1)
    return 400; /* HTTP/1.1 without Host */
  if (host_idx >= 0) {
    const pmu__hoff_t *h = &r->hoff[host_idx];
    size_t n = trimmed_len(r, h);
    if (n && !valid_authority(r->data + h->value_off, n))
      return 400; /* empty is allowed: the target may have no authority */
  }
  const char *t = r->data + r->url_off;
  size_t tn = r->url_len;
  if (tn && t[0] == '/')
    return 0; /* origin-form */
  if (tn == 1 && t[0] == '*')
    return p->method == HTTP_OPTIONS ? 0 : 400; /* asterisk-form */
  if (tn > 7 && strncasecmp(t, "http://", 7) == 0)
    return absolute_form(c, r, 4, host_idx);
  if (tn > 8 && strncasecmp(t, "https://", 8) == 0)
    return absolute_form(c, r, 5, host_idx);
  return 400; /* another scheme, or no scheme */
}

static int on_headers_complete(llhttp_t *p) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = c->cur;
  const pmu_config_t *cfg = &c->loop->server->cfg;
  int has_length = (p->flags & F_CONTENT_LENGTH) != 0;
  int chunked = (p->flags & F_CHUNKED) != 0;
  if (has_length && p->content_length > cfg->max_body_bytes)
    return fail(c, 413);
  int expects_body = chunked || (has_length && p->content_length > 0);
  if (p->http_major != 1)
    return fail(c, p->http_major == 0 ? 400 : 505);             /* HTTP/0.9 or 2+ on this port */
  c->data_end = (p->flags & F_CHUNKED) ? 0 : p->content_length; /* for pmu__http_feed */
  int refuse = check_head(c, r, p);
  if (refuse)
    return fail(c, refuse);

  for (size_t i = 0; i < r->hcount; i++) {
    const pmu__hoff_t *h = &r->hoff[i];
    if (!name_is(r, h, "expect"))
      continue;
    if (!value_is(r, h, "100-continue"))
      return fail(c, 417);
    if (expects_body && p->http_major == 1 && p->http_minor >= 1) {
      /* Tell the client to send the body, ahead of the final answer. */
      pmu__req_t *msg = pmu__req_alloc(c->loop);
      if (!msg)
        return fail(c, 503);
      msg->kind = REQ_ENGINE;
      msg->conn = c;
      pmu__engine_message(msg, 100, 1);
      pmu__conn_enqueue(c, msg);
      pmu__conn_answered(c, msg);
    }
  }

  c->body_off = r->data_len;
  if (expects_body) {
    c->pstate = PS_BODY;
    if (cfg->on_body && cfg->body_stream_threshold && has_length &&
        p->content_length > cfg->body_stream_threshold) {
      if (start_body_stream(c, r, p) < 0)
        return fail(c, 503);
    }
    /* Nothing is reserved for the announced length: memory follows the
     * bytes sent (body_store). */
  }
  pmu__conn_timer_update(c);
  return 0;
}

/* Hand a streamed-body piece to the handler. */
static void deliver_body(pmu__conn_t *c, pmu__req_t *r, const char *at, size_t len, int last) {
  const pmu_config_t *cfg = &c->loop->server->cfg;
  atomic_fetch_add(&r->body_delivered, len);
  cfg->on_body(cfg->handler_data, &r->pub, at, len, last);
}

/* A chunk announced beyond the body limit is refused before its data. */
static int on_chunk_header(llhttp_t *p) {
  pmu__conn_t *c = CONN(p);
  if (c->body_bytes + p->content_length > c->loop->server->cfg.max_body_bytes)
    return fail(c, 413);
  c->data_end = c->body_bytes + p->content_length; /* for pmu__http_feed */
  c->last_cb = 0;                                  /* trailers, if any, start afresh */
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  pmu__conn_t *c = CONN(p);
  pmu__req_t *r = c->cur;
  const pmu_config_t *cfg = &c->loop->server->cfg;
  c->body_bytes += len;
  if (c->body_bytes > cfg->max_body_bytes)
    return fail(c, 413);
  pmu__conn_timer_touch(c);
  if (r->pub.body_streaming) {
    if (!r->body_dropped)
      deliver_body(c, r, at, len, 0);
    return 0;
  }
  if (body_store(c, r, at, len) < 0)
    return fail(c, 503);
  size_t buffered = body_kept(c, r);
  if (cfg->on_body && cfg->body_stream_threshold && buffered > cfg->body_stream_threshold) {
    /* A chunked body outgrew the threshold: stream from here on, starting
     * with what was buffered. */
    const char *kept = r->data + c->body_off;
    void *map = NULL;
    if (r->spooled) {
      map = mmap(NULL, buffered, PROT_READ, MAP_SHARED, r->spool_fd, 0);
      if (map == MAP_FAILED)
        return fail(c, 503);
      kept = map;
    }
    if (start_body_stream(c, r, p) < 0) {
      if (map)
        munmap(map, buffered);
      return fail(c, 503);
    }
    r->data_len = c->body_off;
    if (!r->body_dropped)
      deliver_body(c, r, kept, buffered, 0);
    if (map) {
      munmap(map, buffered);
      req_drop_body(r); /* the file is done with */
    }
  }
  return 0;
}

/* Turn offsets into the pointers the handler sees. */
static int finalize(pmu__conn_t *c, pmu__req_t *r, llhttp_t *p) {
  pmu_request_t *q = &r->pub;
  if (r->headers_cap < r->hcount) {
    pmu_header_t *hs = realloc(r->headers, r->hcount * sizeof *hs);
    if (!hs)
      return -ENOMEM;
    r->headers = hs;
    r->headers_cap = r->hcount;
  }
  for (size_t i = 0; i < r->hcount; i++) {
    const pmu__hoff_t *h = &r->hoff[i];
    r->headers[i].name = r->data + h->name_off;
    r->headers[i].name_len = h->name_len;
    /* RFC 9110 5.5: a field value has no trailing whitespace (llhttp
     * already skipped the leading). */
    size_t vlen = h->value_len;
    const char *v = r->data + h->value_off;
    while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
      vlen--;
    r->headers[i].value = v;
    r->headers[i].value_len = vlen;
  }
  q->headers = r->headers;
  q->header_count = r->hcount;
  q->method = llhttp_method_name((llhttp_method_t)p->method);
  q->method_len = strlen(q->method);
  q->target = r->data + r->url_off;
  q->target_len = r->url_len;
  const char *qm = memchr(q->target, '?', q->target_len);
  q->path = q->target;
  if (qm) {
    q->path_len = (size_t)(qm - q->target);
    q->query = qm + 1;
    q->query_len = q->target_len - q->path_len - 1;
  } else {
    q->path_len = q->target_len;
    q->query = "";
    q->query_len = 0;
  }
  q->body_len = r->data_len - c->body_off;
  q->body = q->body_len ? r->data + c->body_off : NULL;
  q->http_major = p->http_major;
  q->http_minor = p->http_minor;
  q->keep_alive =
      llhttp_should_keep_alive(p) && !p->upgrade && !pmu__stop_seen(c->loop) && !c->close_asked;
  q->is_head = p->method == HTTP_HEAD;
  q->thread = (uint16_t)c->loop->index;
  q->conn_id = c->id;
  memcpy(&q->peer, &c->peer, sizeof c->peer);
  memcpy(&q->local, &c->local, sizeof c->local);
  return 0;
}

/* The request joins its connection's queue and the loop's batch. */
static void join_batch(pmu__conn_t *c, pmu__req_t *r) {
  pmu__loop_t *loop = c->loop;
  if (c->batch_gen != loop->batch_gen) {
    c->batch_gen = loop->batch_gen;
    c->in_batch = 0;
  }
  if (c->turn_gen != loop->turn_gen) {
    c->turn_gen = loop->turn_gen;
    c->in_turn = 0;
  }
  c->in_batch++;
  c->in_turn++;
  pmu__conn_enqueue(c, r);
  r->with_handler = 1;
  if (c->h) {
    r->h = c->h; /* pmu_request_conn: the handle lives while the request does */
    pmu__connh_ref(c->h);
  }
  loop->batch[loop->batch_len++] = &r->pub;
  STAT_ADD(loop, requests, 1);
  if (loop->batch_len >= loop->server->cfg.batch_max)
    pmu__loop_dispatch(loop); /* a long pipeline: answer in slices */
}

/* A request under a static mount (config.statics) is answered by the mount at
 * once, on this thread, and never joins the batch; returns 0 when no mount
 * took it (then it goes to the handler). */
static int static_answer(pmu__conn_t *c, pmu__req_t *r) {
  pmu__conn_enqueue(c, r);
  r->with_handler = 1; /* counted as the handler's until answered */
  c->loop->outstanding++;
  if (pmu__static_dispatch(r)) {
    STAT_ADD(c->loop, requests, 1);
    if (c->turn_gen != c->loop->turn_gen) { /* counts against PIPELINE_TURN as a batch's */
      c->turn_gen = c->loop->turn_gen;
      c->in_turn = 0;
    }
    c->in_turn++;
    return 1;
  }
  /* Not taken: undo (r is the queue's tail), and it joins the batch as any other. */
  pmu__req_t **pp = &c->head, *prev = NULL;
  while (*pp != r) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  *pp = NULL;
  c->tail = prev;
  c->pending--;
  r->with_handler = 0;
  c->loop->outstanding--;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  pmu__conn_t *c = CONN(p);
  pmu__loop_t *loop = c->loop;
  pmu__req_t *r = c->cur;
  c->cur = NULL;
  c->pstate = PS_IDLE;
  if (r->pub.body_streaming) {
    if (!r->body_dropped)
      deliver_body(c, r, NULL, 0, 1);
    else
      c->no_more = 1; /* answered early: the connection closes after it */
    if (r->detached)
      pmu__req_free(r); /* its answer is already out */
  } else {
    if (finalize(c, r, p) < 0 || (r->spooled && spool_finish(r) < 0)) {
      c->cur = r; /* freed with the error below */
      return fail(c, 503);
    }
    if (p->upgrade && pmu__ws_check_handshake(r) == 426) {
      /* A WebSocket handshake of another version: the engine answers. */
      r->kind = REQ_ENGINE;
      pmu__ws_answer_426(r);
      pmu__conn_enqueue(c, r);
      pmu__conn_answered(c, r);
      c->no_more = 1;
      pmu__conn_timer_update(c);
      return HPE_PAUSED;
    }
    if (r->pub.ws_upgrade && loop->server->cfg.ws_handler) {
      /* Nothing more is parsed until the handler answers: what follows
       * is frames if it accepts (core/ws.c), nothing if it refuses. Set
       * before the handler can see the request (join_batch may run it). */
      c->upgrade_wait = 1;
      join_batch(c, r);
      pmu__conn_timer_update(c);
      return HPE_PAUSED;
    }
    if (!loop->server->statics || !static_answer(c, r))
      join_batch(c, r);
  }
  pmu__conn_timer_update(c); /* an answer is owed: no timer runs */
  if (!r->pub.keep_alive || c->no_more) {
    c->no_more = 1; /* whatever follows a closing request is ignored */
    return HPE_PAUSED;
  }
  const pmu_config_t *cfg = &loop->server->cfg;
  if (c->pending >= cfg->max_pipelined || c->out_queued > cfg->output_high_water)
    return HPE_PAUSED;
  /* Bound what the handler produces, not only what is read: read no further
   * once the answers this connection owes would fill output_high_water (its
   * last answer's size is the guess). Before its first answer gives a guess,
   * a pipelining connection's requests are run PIPELINE_FIRST at a time, at
   * once, to learn it; a lone request still waits for the batch. */
  if (pmu__conn_projected(c) > cfg->output_high_water)
    return HPE_PAUSED;
  if (c->answer_est == 0 && !r->pub.body_streaming && c->batch_gen == loop->batch_gen &&
      c->in_batch >= PIPELINE_FIRST) {
    pmu__loop_dispatch(loop);
    if (c->no_more || c->closing || pmu__conn_projected(c) > cfg->output_high_water)
      return HPE_PAUSED;
  }
  /* One connection's burst does not hold the ring: at most PIPELINE_TURN
   * of its requests a turn; the rest are parsed at the end of the turn. */
  if (c->in_turn >= PIPELINE_TURN && c->turn_gen == loop->turn_gen) {
    pmu__loop_schedule_resume(loop, c);
    return HPE_PAUSED;
  }
  return 0;
}

const llhttp_settings_t pmu__llhttp_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_header = on_chunk_header,
    .on_message_complete = on_message_complete,
};

void pmu__http_init(pmu__conn_t *c) {
  llhttp_init(&c->parser, HTTP_REQUEST, &pmu__llhttp_settings);
  c->parser.data = c;
}

void pmu__conn_send_error(pmu__conn_t *c, int status) {
  if (c->cur && c->cur->pub.body_streaming) {
    /* The handler holds this request and owes its answer: no error can go
     * in its place. Close; on_disconnect tells the handler. */
    c->cur = NULL;
    pmu__conn_close(c);
    return;
  }
  if (c->cur) {
    pmu__req_free(c->cur);
    c->cur = NULL;
  }
  c->pstate = PS_IDLE;
  c->no_more = 1;
  c->linger_on_close = 1;
  if (status != 408 && status != 503)
    STAT_ADD(c->loop, parse_errors, 1);
  pmu__req_t *r = pmu__req_alloc(c->loop);
  if (!r) {
    pmu__conn_close(c);
    return;
  }
  r->kind = REQ_ENGINE;
  r->conn = c;
  pmu__engine_message(r, status, 0);
  pmu__conn_enqueue(c, r);
  pmu__conn_answered(c, r);
  pmu__conn_timer_update(c);
}

/* ---- feeding llhttp: line ends ---- */

/* Run llhttp over data[from, to). Returns how far it got: `to`, or less when
 * a callback paused it; *stop is set when nothing more may be fed now. */
static size_t execute(pmu__conn_t *c, const char *data, size_t from, size_t to, int *stop) {
  enum llhttp_errno err = from < to ? llhttp_execute(&c->parser, data + from, to - from) : HPE_OK;
  switch (err) {
  case HPE_OK: return to;
  case HPE_PAUSED:
    c->llhttp_paused = 1;
    *stop = 1;
    return (size_t)(llhttp_get_error_pos(&c->parser) - data);
  case HPE_PAUSED_UPGRADE:
    /* A WebSocket handshake waits for its answer (pmu__ws_accept_arrived
     * takes over the bytes after it); any other upgrade is not supported:
     * answer this request, then close. */
    if (c->upgrade_wait)
      c->llhttp_paused = 1;
    else
      c->no_more = 1;
    *stop = 1;
    return (size_t)(llhttp_get_error_pos(&c->parser) - data);
  default:
    pmu__conn_send_error(c, c->error_status ? c->error_status : 400);
    *stop = 1;
    return to;
  }
}

/* Bytes of body data (a Content-Length body, or the current chunk's data)
 * still to come after what llhttp has parsed. */
static uint64_t body_data_left(const pmu__conn_t *c) {
  return c->pstate == PS_BODY && c->data_end > c->body_bytes ? c->data_end - c->body_bytes : 0;
}

/*
 * Feed one received piece to llhttp. Every line of the framing (request line,
 * header and trailer lines, the blank line, empty lines before a request,
 * chunk-size lines and the CRLF after chunk data) must end in CRLF: a CR
 * without its LF, or an LF without its CR, is a 400, whatever llhttp release
 * is used (8.1 takes "\r" plus any byte as a line end, and a lone LF as the
 * blank line or a chunked body's last line). memchr finds the CRs, and the LFs
 * between them; a CRLF needs nothing more. For any other, llhttp parses up to
 * it and the glue's own count of the body bytes still due says whether it is
 * body data (then the rest of that body is skipped) or framing: refused before
 * llhttp sees it. A CR that ends the piece leaves its LF to the next one.
 */
size_t pmu__http_feed(pmu__conn_t *c, const char *data, size_t len) {
  c->chunk = data;
  size_t done = 0, scan = 0;
  int stop = 0;
  if (len && c->cr_pending) {
    c->cr_pending = 0;
    if (data[0] != '\n')
      goto bad_line_end;
    scan = 1;
  }
  uint64_t left = body_data_left(c);
  if (left)
    scan = left < len - scan ? scan + (size_t)left : len;
  while (scan < len) {
    const char *cr = memchr(data + scan, '\r', len - scan);
    size_t pos = cr ? (size_t)(cr - data) : len;
    const char *lf = memchr(data + scan, '\n', pos - scan);
    if (lf) {
      pos = (size_t)(lf - data); /* an LF without a CR before it */
    } else if (!cr) {
      break;
    } else if (pos + 1 < len && data[pos + 1] == '\n') {
      scan = pos + 2;
      continue;
    }
    done = execute(c, data, done, pos, &stop);
    if (stop)
      goto out;
    left = body_data_left(c);
    if (left) {
      scan = left < len - pos ? pos + (size_t)left : len;
      continue;
    }
    if (data[pos] == '\n' || pos + 1 < len)
      goto bad_line_end;
    done = execute(c, data, done, len, &stop);
    c->cr_pending = !stop;
    goto out;
  }
  done = execute(c, data, done, len, &stop);
  goto out;
bad_line_end:
  pmu__conn_send_error(c, 400);
out:
  /* Between a field name and its value when this piece ends: carry whether an
   * LF came since the name, for the value's first span in a later piece. */
  if (c->last_cb == 1 && done)
    c->lf_after_name = folded_before_value(c, data + done);
  c->fed += done;
  return done;
}

void pmu_request_body_consumed(pmu_request_t *request, size_t n) {
  pmu__req_t *r = (pmu__req_t *)request;
  size_t consumed = atomic_fetch_add(&r->body_consumed, n) + n;
  size_t low = r->loop->server->cfg.output_high_water / 2;
  if (atomic_load(&r->body_wait) && atomic_load(&r->body_delivered) - consumed <= low &&
      atomic_exchange(&r->body_wait, 0))
    pmu__loop_wake(r->loop); /* the loop looks at its paused reads */
}
