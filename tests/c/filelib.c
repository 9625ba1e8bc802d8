/* filelib.c: see filelib.h. */
#include "filelib.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MAIN_SIZE ((uint64_t)(4u << 20) + 123)
#define SPARSE_SIZE ((uint64_t)2 << 30)
#define SHORT_SIZE ((uint64_t)100000)

static char paths[5][300];
static atomic_ulong opened, released;
static pthread_mutex_t pre_lock = PTHREAD_MUTEX_INITIALIZER;
static int pre_fds[256];
static int pre_count;

uint8_t f_pat(uint64_t i) { return (uint8_t)(((i * 2654435761u) >> 13) ^ (i >> 20) ^ (i >> 31)); }

uint8_t f_byte(int file, uint64_t i) {
  if (file == 1 && i < SPARSE_SIZE - 100)
    return 0;
  return f_pat(i);
}

uint64_t f_main_size(void) { return MAIN_SIZE; }
uint64_t f_sparse_size(void) { return SPARSE_SIZE; }
uint64_t f_short_size(void) { return SHORT_SIZE; }
const char *f_path(int file) { return paths[file]; }

static void write_pattern(int fd, uint64_t from, uint64_t to) {
  static uint8_t buf[65536];
  for (uint64_t at = from; at < to;) {
    size_t n = to - at < sizeof buf ? (size_t)(to - at) : sizeof buf;
    for (size_t k = 0; k < n; k++)
      buf[k] = f_pat(at + k);
    ssize_t w = pwrite(fd, buf, n, (off_t)at);
    T_ASSERT_MSG(w == (ssize_t)n, "pwrite: %s", strerror(errno));
    at += n;
  }
}

void f_files_create(void) {
  const char *tmp = getenv("TMPDIR");
  if (!tmp || !*tmp)
    tmp = "/tmp";
  const char *names[3] = {"main", "sparse", "short"};
  for (int i = 0; i < 3; i++) {
    snprintf(paths[i], sizeof paths[i], "%s/files-engine-test-%d-%s", tmp, (int)getpid(), names[i]);
    int fd = open(paths[i], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    T_ASSERT_MSG(fd >= 0, "open %s: %s", paths[i], strerror(errno));
    if (i == 0)
      write_pattern(fd, 0, MAIN_SIZE);
    else if (i == 1) {
      T_ASSERT_MSG(ftruncate(fd, (off_t)SPARSE_SIZE) == 0, "ftruncate: %s", strerror(errno));
      write_pattern(fd, SPARSE_SIZE - 100, SPARSE_SIZE);
    } else
      write_pattern(fd, 0, SHORT_SIZE);
    close(fd);
  }
}

void f_big_create(void) {
  snprintf(paths[3], sizeof paths[3], "%.250s-big", paths[0]);
  int fd = open(paths[3], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  T_ASSERT_MSG(fd >= 0, "open %s: %s", paths[3], strerror(errno));
  write_pattern(fd, 0, (uint64_t)64 << 20);
  close(fd);
}

void f_trunc_create(uint64_t size) {
  snprintf(paths[4], sizeof paths[4], "%.250s-trunc", paths[0]);
  int fd = open(paths[4], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  T_ASSERT_MSG(fd >= 0, "open %s: %s", paths[4], strerror(errno));
  write_pattern(fd, 0, size);
  close(fd);
}

void f_files_remove(void) {
  for (int i = 0; i < 5; i++)
    if (paths[i][0])
      unlink(paths[i]);
  pthread_mutex_lock(&pre_lock);
  while (pre_count)
    close(pre_fds[--pre_count]);
  pthread_mutex_unlock(&pre_lock);
}

unsigned long f_releases(void) { return atomic_load(&released); }
long f_releases_pending(void) { return (long)(atomic_load(&opened) - atomic_load(&released)); }

void f_preopen(int n) {
  pthread_mutex_lock(&pre_lock);
  for (int i = 0; i < n && pre_count < (int)T_COUNT(pre_fds); i++) {
    int fd = open(paths[0], O_RDONLY | O_CLOEXEC);
    T_ASSERT(fd >= 0);
    pre_fds[pre_count++] = fd;
  }
  pthread_mutex_unlock(&pre_lock);
}

static void release_fd(void *ctx) {
  close((int)(intptr_t)ctx);
  atomic_fetch_add(&released, 1);
}

static uint64_t qnum(const pmu_request_t *r, const char *key, uint64_t dflt) {
  char q[256];
  snprintf(q, sizeof q, "&%.*s", (int)r->query_len, r->query);
  char k[32];
  snprintf(k, sizeof k, "&%s=", key);
  const char *p = strstr(q, k);
  return p ? strtoull(p + strlen(k), NULL, 10) : dflt;
}

static bool path_is(const pmu_request_t *r, const char *p) {
  return r->path_len == strlen(p) && memcmp(r->path, p, r->path_len) == 0;
}

static const pmu_header_t octet = {"Content-Type", 12, "application/octet-stream", 24};

static void answer(t_server_t *s, pmu_request_t *r) {
  uint64_t off = qnum(r, "o", 0), len = qnum(r, "n", 0);
  if (path_is(r, "/f") || path_is(r, "/pre")) {
    int fd;
    if (path_is(r, "/pre")) {
      pthread_mutex_lock(&pre_lock);
      fd = pre_count ? pre_fds[--pre_count] : -1;
      pthread_mutex_unlock(&pre_lock);
    } else {
      fd = open(paths[qnum(r, "file", 0) % 5], O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
      pmu_respond_simple(r, 500, NULL, 0, "no fd\n", 6);
      return;
    }
    atomic_fetch_add(&opened, 1);
    int rc = pmu_respond_file(r, (int)qnum(r, "st", 200), &octet, 1, fd, off, len, release_fd,
                              (void *)(intptr_t)fd);
    T_ASSERT_MSG(rc == 0 || rc == -EPIPE, "pmu_respond_file: %d", rc);
    return;
  }
  if (path_is(r, "/mix")) {
    int chunked = (int)qnum(r, "chunked", 0);
    char lenbuf[24];
    pmu_header_t h[2] = {octet, {"Content-Length", 14, lenbuf, 0}};
    h[1].value_len = (size_t)snprintf(lenbuf, sizeof lenbuf, "%llu", (unsigned long long)len + 10);
    T_ASSERT_INT_EQ(pmu_respond_start(r, 200, h, chunked ? 1 : 2), 0);
    T_ASSERT_INT_EQ(pmu_respond_write(r, "head-", 5, NULL, NULL), 0);
    int fd = open(paths[0], O_RDONLY | O_CLOEXEC);
    T_ASSERT(fd >= 0);
    atomic_fetch_add(&opened, 1);
    T_ASSERT_INT_EQ(pmu_respond_write_file(r, fd, off, len, release_fd, (void *)(intptr_t)fd), 0);
    T_ASSERT_INT_EQ(pmu_respond_write(r, "-tail", 5, NULL, NULL), 0);
    T_ASSERT_INT_EQ(pmu_respond_end(r), 0);
    return;
  }
  t_handle_request(s, r);
}

static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  t_server_t *s = data;
  atomic_fetch_add(&s->seen, count);
  for (size_t i = 0; i < count; i++)
    answer(s, requests[i]);
}

t_server_t *f_server_start(const pmu_config_t *config) {
  pmu_config_t cfg = *config;
  cfg.handler = handler;
  cfg.handler_data = NULL;
  return t_server_start(&cfg);
}

/* ---- reading ---- */

static void consume(t_conn_t *c, size_t n) {
  memmove(c->buf, c->buf + n, c->len - n);
  c->len -= n;
}

/* At least need bytes in c->buf; false on EOF, error or timeout. */
static bool fill(t_conn_t *c, size_t need, int64_t until) {
  while (c->len < need) {
    int64_t left = until - t_now_ms();
    if (left <= 0)
      return false;
    int rc = t_recv_some(c, (int)left);
    if (rc == 0 || (rc < 0 && rc != -ETIMEDOUT))
      return false;
  }
  return true;
}

bool f_read_head(t_conn_t *c, int *status, long long *length, bool *chunked, int timeout_ms) {
  int64_t until = t_now_ms() + timeout_ms;
  const char *end;
  for (;;) {
    end = c->len ? t_memmem(c->buf, c->len, "\r\n\r\n") : NULL;
    if (end)
      break;
    if (!fill(c, c->len + 1, until))
      return false;
  }
  size_t head_len = (size_t)(end - c->buf) + 4;
  char *head = malloc(head_len + 1);
  memcpy(head, c->buf, head_len);
  head[head_len] = 0;
  consume(c, head_len);
  *status = 0;
  sscanf(head, "HTTP/1.%*d %d", status);
  *length = -1;
  *chunked = false;
  for (char *line = strstr(head, "\r\n"); line && line[2] != '\r';
       line = strstr(line + 2, "\r\n")) {
    const char *l = line + 2;
    if (strncasecmp(l, "Content-Length:", 15) == 0)
      *length = strtoll(l + 15, NULL, 10);
    else if (strncasecmp(l, "Transfer-Encoding:", 18) == 0 && strstr(l, "chunked") &&
             strstr(l, "chunked") < strstr(l, "\r\n"))
      *chunked = true;
  }
  free(head);
  return true;
}

uint64_t f_read_body(t_conn_t *c, int file, uint64_t off, uint64_t len, int timeout_ms) {
  int64_t until = t_now_ms() + timeout_ms;
  uint64_t got = 0;
  while (got < len) {
    if (c->len == 0 && !fill(c, 1, until))
      return got;
    size_t n = c->len;
    if (n > len - got)
      n = (size_t)(len - got);
    for (size_t k = 0; k < n; k++)
      if ((uint8_t)c->buf[k] != f_byte(file, off + got + k))
        return got + k;
    consume(c, n);
    got += n;
  }
  return got;
}

void f_expect_file_response_at(const char *file_, int line, t_conn_t *c, int file, uint64_t off,
                               uint64_t len) {
  int status;
  long long length;
  bool chunked;
  if (!f_read_head(c, &status, &length, &chunked, T_IO_TIMEOUT_MS))
    t_fail_at(file_, line, "no response head (range %llu+%llu)", (unsigned long long)off,
              (unsigned long long)len);
  if (status != 200 || length != (long long)len || chunked)
    t_fail_at(file_, line, "status %d, Content-Length %lld, chunked %d; expected 200, %llu", status,
              length, chunked, (unsigned long long)len);
  uint64_t got = f_read_body(c, file, off, len, T_EVENT_MS);
  if (got != len)
    t_fail_at(file_, line, "file %d range %llu+%llu: %llu bytes right, then %s", file,
              (unsigned long long)off, (unsigned long long)len, (unsigned long long)got,
              c->len ? "a wrong byte" : "nothing (EOF or timeout)");
}

static uint8_t mix_byte(uint64_t off, uint64_t len, uint64_t p) {
  if (p < 5)
    return (uint8_t) "head-"[p];
  if (p < 5 + len)
    return f_pat(off + p - 5);
  return (uint8_t) "-tail"[p - 5 - len];
}

void f_expect_mix_response_at(const char *file_, int line, t_conn_t *c, uint64_t off, uint64_t len,
                              int chunked) {
  int64_t until = t_now_ms() + T_EVENT_MS;
  int status;
  long long length;
  bool is_chunked;
  if (!f_read_head(c, &status, &length, &is_chunked, T_IO_TIMEOUT_MS))
    t_fail_at(file_, line, "no response head");
  if (status != 200 || is_chunked != (chunked != 0) ||
      (!chunked && length != (long long)(len + 10)) || (chunked && length != -1))
    t_fail_at(file_, line, "status %d, Content-Length %lld, chunked %d", status, length,
              is_chunked);
  uint64_t total = len + 10, p = 0;
  while (p < total || chunked) {
    uint64_t piece = total - p;
    if (chunked) {
      const char *eol;
      while (!(eol = c->len ? t_memmem(c->buf, c->len, "\r\n") : NULL))
        if (!fill(c, c->len + 1, until))
          t_fail_at(file_, line, "no chunk-size line at body byte %llu", (unsigned long long)p);
      piece = strtoull(c->buf, NULL, 16);
      consume(c, (size_t)(eol - c->buf) + 2);
      if (piece == 0) {
        if (!fill(c, 2, until) || memcmp(c->buf, "\r\n", 2) != 0)
          t_fail_at(file_, line, "no CRLF after the last chunk");
        consume(c, 2);
        break;
      }
      if (p + piece > total)
        t_fail_at(file_, line, "chunk of %llu at %llu overruns %llu", (unsigned long long)piece,
                  (unsigned long long)p, (unsigned long long)total);
    }
    for (uint64_t q = 0; q < piece;) {
      if (c->len == 0 && !fill(c, 1, until))
        t_fail_at(file_, line, "body ended at %llu of %llu", (unsigned long long)(p + q),
                  (unsigned long long)total);
      size_t n = c->len < piece - q ? c->len : (size_t)(piece - q);
      for (size_t k = 0; k < n; k++)
        if ((uint8_t)c->buf[k] != mix_byte(off, len, p + q + k))
          t_fail_at(file_, line, "wrong byte at body byte %llu", (unsigned long long)(p + q + k));
      consume(c, n);
      q += n;
    }
    p += piece;
    if (chunked) {
      if (!fill(c, 2, until) || memcmp(c->buf, "\r\n", 2) != 0)
        t_fail_at(file_, line, "no CRLF after a chunk");
      consume(c, 2);
    }
  }
  if (p != total)
    t_fail_at(file_, line, "body of %llu, expected %llu", (unsigned long long)p,
              (unsigned long long)total);
}

void f_expect_short_response_at(const char *file_, int line, t_conn_t *c, int file, uint64_t off,
                                uint64_t len, uint64_t size) {
  int status;
  long long length;
  bool chunked;
  if (!f_read_head(c, &status, &length, &chunked, T_IO_TIMEOUT_MS))
    t_fail_at(file_, line, "no response head");
  if (status != 200 || length != (long long)len)
    t_fail_at(file_, line, "status %d, Content-Length %lld", status, length);
  uint64_t real = size > off ? size - off : 0;
  uint64_t got = f_read_body(c, file, off, real, T_EVENT_MS);
  if (got != real)
    t_fail_at(file_, line, "%llu of the file's %llu real bytes right", (unsigned long long)got,
              (unsigned long long)real);
  /* Then nothing more: the end of the connection, soon. */
  int64_t until = t_now_ms() + T_EVENT_MS;
  while (t_now_ms() < until) {
    int rc = t_recv_some(c, 200);
    if (c->len)
      t_fail_at(file_, line, "%zu bytes after the file's end (padding)", c->len);
    if (rc == 0 || (rc < 0 && rc != -ETIMEDOUT))
      return;
  }
  t_fail_at(file_, line, "the connection stayed open after a short file");
}

long f_rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f)
    return -1;
  char line[256];
  long kib = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld", &kib) == 1)
      break;
  fclose(f);
  return kib;
}
