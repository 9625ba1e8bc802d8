/*
 * fuzz_common.c: the server under fuzz (handler answering in several ways by
 * path), the raw client and the strict response checker. See fuzz_common.h.
 *
 * Paths (first segment; anything else gets the default answer):
 *   /echo    200, the request body (de-chunked, or streamed and gathered)
 *   /defer   answered 0-1 ms later from the deferrer thread
 *   /chunk   streamed answer, chunked (no length), two pieces
 *   /cdefer  streamed chunked answer from the deferrer thread
 *   /len     streamed answer with Content-Length: 5, two pieces
 *   /s1 /s2 /s3 /s4 /s5  status 101 (refused by the engine: 500), 204, 304, 404, 500
 *   /close   200 with Connection: close from the handler
 *   /early   a streamed request body answered before its end
 *   default  200, "METHOD target body_len"
 * Every handler answer carries X-M: METHOD, so the checker knows a HEAD's.
 * A WebSocket handshake to /ws is accepted once fuzz_ws_enable() was called (fuzz_ws), and
 * its messages are echoed.
 */
#include "fuzz_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 5000
#define DONE_WAIT_MS 1000 /* fuzz_exchange_after_head: the longest wait for done() */

static pmu_server_t *server;
static uint16_t server_port;

/* ---- the handler ---- */

typedef struct held {
  char *buf; /* gathered streamed body */
  size_t len;
  int waiting; /* streamed body not ended yet */
} held_t;

static int path_is(const pmu_request_t *r, const char *p) {
  size_t n = strlen(p);
  return r->path_len >= n && memcmp(r->path, p, n) == 0 &&
         (r->path_len == n || r->path[n] == '/' || r->path[n] == '?');
}

static void answer(pmu_request_t *r, const char *body, size_t body_len, int deferred);

/* The deferrer: a thread answering requests handed to it. */
static pthread_mutex_t dq_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t dq_cond = PTHREAD_COND_INITIALIZER;
typedef struct dq_item {
  pmu_request_t *r;
  struct dq_item *next;
} dq_item_t;
static dq_item_t *dq_head, *dq_tail;

static void defer_request(pmu_request_t *r) {
  dq_item_t *it = malloc(sizeof *it);
  if (!it)
    abort();
  it->r = r;
  it->next = NULL;
  pthread_mutex_lock(&dq_lock);
  if (dq_tail)
    dq_tail->next = it;
  else
    dq_head = it;
  dq_tail = it;
  pthread_cond_signal(&dq_cond);
  pthread_mutex_unlock(&dq_lock);
}

static void *deferrer(void *arg) {
  (void)arg;
  for (;;) {
    pthread_mutex_lock(&dq_lock);
    while (!dq_head)
      pthread_cond_wait(&dq_cond, &dq_lock);
    dq_item_t *it = dq_head;
    dq_head = it->next;
    if (!dq_head)
      dq_tail = NULL;
    pthread_mutex_unlock(&dq_lock);
    if ((uintptr_t)it & 64) /* sometimes a little later */
      usleep(500);
    answer(it->r, it->r->body, it->r->body_len, 1);
    free(it);
  }
  return NULL;
}

static void answer(pmu_request_t *r, const char *body, size_t body_len, int deferred) {
  pmu_header_t h[2] = {{"X-M", 3, r->method, r->method_len}, {0}};
  if (!deferred && (path_is(r, "/defer") || path_is(r, "/cdefer"))) {
    defer_request(r);
    return;
  }
  if (path_is(r, "/echo")) {
    pmu_respond_simple(r, 200, h, 1, body, body_len);
  } else if (path_is(r, "/chunk") || path_is(r, "/cdefer")) {
    pmu_respond_start(r, 200, h, 1);
    pmu_respond_write(r, "ab", 2, NULL, NULL);
    pmu_respond_write(r, "cde", 3, NULL, NULL);
    pmu_respond_end(r);
  } else if (path_is(r, "/len")) {
    h[1] = (pmu_header_t){"Content-Length", 14, "5", 1};
    pmu_respond_start(r, 200, h, 2);
    pmu_respond_write(r, "ab", 2, NULL, NULL);
    pmu_respond_write(r, "cde", 3, NULL, NULL);
    pmu_respond_end(r);
  } else if (r->path_len == 3 && r->path[0] == '/' && r->path[1] == 's' && r->path[2] >= '1' &&
             r->path[2] <= '5') {
    static const int codes[] = {101, 204, 304, 404, 500};
    pmu_respond_simple(r, codes[r->path[2] - '1'], h, 1, "status", 6);
  } else if (path_is(r, "/close")) {
    h[1] = (pmu_header_t){"Connection", 10, "close", 5};
    pmu_respond_simple(r, 200, h, 2, "closing", 7);
  } else {
    char text[160];
    int n = snprintf(text, sizeof text, "%s %.*s %zu\n", r->method,
                     (int)(r->target_len > 100 ? 100 : r->target_len), r->target, body_len);
    pmu_respond_simple(r, 200, h, 1, text, (size_t)n);
  }
}

static int ws_enabled;
void fuzz_ws_enable(void) { ws_enabled = 1; }

/* The WebSocket echo of /ws. */
static void on_ws(void *data, const pmu_ws_event_t *events, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    const pmu_ws_event_t *e = &events[i];
    if (e->type == PMU_WS_EV_MESSAGE)
      pmu_ws_send(e->ws, e->opcode, e->data, e->len, NULL, NULL);
    else if (e->type == PMU_WS_EV_GONE)
      pmu_ws_release(e->ws);
  }
}

static void on_batch(void *data, pmu_request_t *const *reqs, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = reqs[i];
    if (r->ws_upgrade && ws_enabled && path_is(r, "/ws")) {
      pmu_ws_accept(r, NULL); /* NULL: the engine answered 500/503 */
      continue;
    }
    if (r->body_streaming) {
      if (path_is(r, "/early")) {
        pmu_header_t h = {"X-M", 3, r->method, r->method_len};
        pmu_respond_simple(r, 200, &h, 1, "early", 5);
        continue;
      }
      held_t *st = calloc(1, sizeof *st);
      if (!st)
        abort();
      st->waiting = 1;
      r->user = st;
      continue;
    }
    answer(r, r->body, r->body_len, 0);
  }
}

static void on_body(void *data, pmu_request_t *r, const void *piece, size_t len, int last) {
  (void)data;
  held_t *st = r->user;
  if (!st)
    abort(); /* a piece for a request the handler answered already */
  if (len) {
    char *b = realloc(st->buf, st->len + len);
    if (!b)
      abort();
    memcpy(b + st->len, piece, len);
    st->buf = b;
    st->len += len;
    pmu_request_body_consumed(r, len);
  }
  if (last) {
    r->user = NULL;
    answer(r, st->buf, st->len, 0);
    free(st->buf);
    free(st);
  }
}

static void on_disconnect(void *data, pmu_request_t *r) {
  (void)data;
  held_t *st = r->user;
  if (!st || !st->waiting)
    return; /* deferred: the deferrer answers it */
  r->user = NULL;
  free(st->buf);
  free(st);
  pmu_respond_simple(r, 200, NULL, 0, NULL, 0); /* releases it */
}

void fuzz_server_start(void) {
  if (server)
    return;
  pmu_config_t cfg;
  pmu_config_init(&cfg);
  cfg.host = "127.0.0.1";
  cfg.port = 0;
  cfg.threads = 1;
  cfg.buf_count = 64;
  cfg.buf_size = 512; /* inputs span several receive buffers */
  cfg.batch_max = 4;
  cfg.max_header_bytes = 1024;
  cfg.max_headers = 16;
  cfg.max_url_bytes = 256;
  cfg.max_body_bytes = FUZZ_MAX_BODY;
  cfg.max_pipelined = 4;
  cfg.output_high_water = 2048;
  cfg.body_stream_threshold = FUZZ_STREAM_THRESHOLD;
  cfg.header_timeout_ms = 3000;
  cfg.body_timeout_ms = 3000;
  cfg.keepalive_timeout_ms = 3000;
  cfg.handler = on_batch;
  cfg.on_body = on_body;
  cfg.on_disconnect = on_disconnect;
  cfg.ws_handler = on_ws;
  cfg.ws_max_message = FUZZ_WS_MAX_MESSAGE;
  cfg.ws_max_frame = FUZZ_WS_MAX_FRAME;
  cfg.ws_close_timeout_ms = 1000;
  cfg.ws_deflate_window_bits = 12; /* fuzz_ws predicts the negotiation from it */
  cfg.ws_deflate_min_size = 16;    /* most echoes go back compressed */
  int rc = pmu_server_start(&cfg, &server);
  if (rc < 0) {
    fprintf(stderr, "fuzz: server start failed: %s\n",
            server ? pmu_server_error(server) : strerror(-rc));
    abort();
  }
  server_port = pmu_server_port(server);
  pthread_t t;
  if (pthread_create(&t, NULL, deferrer, NULL) != 0)
    abort();
  pthread_detach(t);
}

void fuzz_set_port(uint16_t port) { server_port = port; }

/* ---- the client ---- */

void fuzz_plan(const uint8_t *data, size_t size, fuzz_plan_t *plan) {
  memset(plan, 0, sizeof *plan);
  if (size == 0)
    return;
  unsigned n = data[0] & 7;
  plan->pause = (data[0] & 8) != 0;
  size_t hdr = 1 + n;
  if (hdr > size)
    hdr = size, n = (unsigned)(size - 1);
  plan->payload = data + hdr;
  plan->len = size - hdr;
  for (unsigned i = 0; i < n; i++) {
    size_t at = (size_t)data[1 + i] * plan->len / 256;
    /* insertion sort, ascending */
    unsigned j = plan->ncuts;
    while (j > 0 && plan->cuts[j - 1] > at) {
      plan->cuts[j] = plan->cuts[j - 1];
      j--;
    }
    plan->cuts[j] = at;
    plan->ncuts++;
  }
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct rbuf {
  char *p;
  size_t len, cap;
  int eof;
} rbuf_t;

/* Read what is there (non-blocking); returns -1 on EOF or reset. */
static int drain(int fd, rbuf_t *b) {
  for (;;) {
    if (b->cap - b->len < 4096) {
      b->cap = b->cap ? b->cap * 2 : 16384;
      b->p = realloc(b->p, b->cap);
      if (!b->p)
        abort();
    }
    ssize_t n = recv(fd, b->p + b->len, b->cap - b->len, MSG_DONTWAIT);
    if (n > 0) {
      b->len += (size_t)n;
      continue;
    }
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      b->eof = 1; /* EOF, or a reset: what came is all there is */
      return -1;
    }
    return 0;
  }
}

/* Send all of p, reading meanwhile; stops quietly if the server closed. */
static void send_all(int fd, const char *p, size_t len, rbuf_t *b, int64_t deadline) {
  while (len > 0 && !b->eof) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      p += n;
      len -= (size_t)n;
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR)
      return; /* EPIPE, ECONNRESET: the server closed (after an error) */
    struct pollfd pfd = {fd, POLLIN | POLLOUT, 0};
    int64_t left = deadline - now_ms();
    if (left <= 0)
      return;
    poll(&pfd, 1, (int)left);
    if (pfd.revents & (POLLIN | POLLHUP | POLLERR))
      drain(fd, b);
  }
}

/* fuzz_exchange and fuzz_exchange_after_head: plan given, or made by on_head. */
static char *exchange(const char *prefix, size_t prefix_len, const fuzz_plan_t *plan,
                      fuzz_on_head_fn on_head, fuzz_done_fn done, void *ctx, size_t *out_len) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("fuzz: socket");
    abort();
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(server_port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  if (rc < 0 && errno == EINTR) {
    /* libFuzzer's SIGALRM (-timeout): the connection goes on; wait for it */
    struct pollfd pfd = {fd, POLLOUT, 0};
    while (poll(&pfd, 1, DEADLINE_MS) < 0 && errno == EINTR)
      ;
    int err = 0;
    socklen_t elen = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
    rc = err ? (errno = err, -1) : 0;
  }
  if (rc < 0) {
    perror("fuzz: connect");
    abort();
  }
  rbuf_t b = {0};
  int64_t deadline = now_ms() + DEADLINE_MS;
  if (prefix_len)
    send_all(fd, prefix, prefix_len, &b, deadline);
  if (on_head) { /* wait for the response head, then ask for the rest */
    while (!b.eof && !(b.p && memmem(b.p, b.len, "\r\n\r\n", 4))) {
      int64_t left = deadline - now_ms();
      if (left <= 0)
        break;
      struct pollfd pfd = {fd, POLLIN, 0};
      poll(&pfd, 1, (int)left);
      drain(fd, &b);
    }
    const char *end = b.p ? memmem(b.p, b.len, "\r\n\r\n", 4) : NULL;
    plan = end ? on_head(ctx, b.p, (size_t)(end - b.p) + 4) : NULL;
  }
  static const fuzz_plan_t nothing;
  if (!plan)
    plan = &nothing;
  size_t off = 0;
  for (unsigned i = 0; i <= plan->ncuts; i++) {
    size_t end = i < plan->ncuts ? plan->cuts[i] : plan->len;
    if (end > off) {
      send_all(fd, (const char *)plan->payload + off, end - off, &b, deadline);
      off = end;
      if (plan->pause && i < plan->ncuts)
        usleep(300);
    }
  }
  if (done) { /* read until the answers are all in, for a while at most */
    int64_t until = now_ms() + DONE_WAIT_MS;
    while (!b.eof && !done(ctx, b.p, b.len)) {
      int64_t left = until - now_ms();
      if (left <= 0)
        break;
      struct pollfd pfd = {fd, POLLIN, 0};
      poll(&pfd, 1, (int)left);
      drain(fd, &b);
    }
  }
  shutdown(fd, SHUT_WR);
  while (!b.eof) {
    int64_t left = deadline - now_ms();
    if (left <= 0) {
      fprintf(stderr, "fuzz: no EOF from the server within %d ms (%zu bytes came)\n", DEADLINE_MS,
              b.len);
      *out_len = b.len;
      close(fd);
      return NULL; /* the caller fails with the input */
    }
    struct pollfd pfd = {fd, POLLIN, 0};
    poll(&pfd, 1, (int)left);
    drain(fd, &b);
  }
  close(fd);
  *out_len = b.len;
  if (!b.p)
    b.p = malloc(1);
  return b.p;
}

char *fuzz_exchange(const char *prefix, size_t prefix_len, const fuzz_plan_t *plan,
                    size_t *out_len) {
  return exchange(prefix, prefix_len, plan, NULL, NULL, NULL, out_len);
}

char *fuzz_exchange_after_head(const char *prefix, size_t prefix_len, fuzz_on_head_fn on_head,
                               fuzz_done_fn done, void *ctx, size_t *out_len) {
  return exchange(prefix, prefix_len, NULL, on_head, done, ctx, out_len);
}

/* ---- the checker ---- */

static void dump(const char *label, const void *p, size_t len) {
  const unsigned char *s = p;
  fprintf(stderr, "%s (%zu bytes): \"", label, len);
  for (size_t i = 0; i < len && i < 4096; i++) {
    unsigned char c = s[i];
    if (c == '\\' || c == '"')
      fprintf(stderr, "\\%c", c);
    else if (c >= 0x20 && c < 0x7f)
      fputc(c, stderr);
    else if (c == '\r')
      fputs("\\r", stderr);
    else if (c == '\n')
      fputs("\\n", stderr);
    else
      fprintf(stderr, "\\x%02x", c);
  }
  fprintf(stderr, "%s\"\n", len > 4096 ? "..." : "");
}

_Noreturn void fuzz_fail(const char *why, const uint8_t *input, size_t input_len,
                         const char *output, size_t output_len) {
  fprintf(stderr, "\n==== fuzz check failed: %s\n", why);
  dump("input", input, input_len);
  if (output)
    dump("output", output, output_len);
  abort();
}

char *fuzz_exchange_checked(const char *prefix, size_t prefix_len, const fuzz_plan_t *plan,
                            const uint8_t *input, size_t input_len, fuzz_responses_t *rs,
                            size_t *out_len) {
  char *out = fuzz_exchange(prefix, prefix_len, plan, out_len);
  if (!out)
    fuzz_fail("the server kept the connection open after the client half-closed", input, input_len,
              NULL, 0);
  fuzz_parse_responses(out, *out_len, rs, input, input_len);
  size_t heads = fuzz_count_head_ends(plan->payload, plan->len);
  if (prefix)
    heads += fuzz_count_head_ends((const uint8_t *)prefix, prefix_len);
  if (rs->count > heads + 1) {
    char why[160];
    snprintf(why, sizeof why, "%zu final responses for at most %zu requests (+1 error)", rs->count,
             heads);
    fuzz_fail(why, input, input_len, out, *out_len);
  }
  return out;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fuzz_server_start();
  return 0;
}

size_t fuzz_count_head_ends(const uint8_t *p, size_t len) {
  /* A head ends with two line endings in a row. Line endings: CRLF and a
   * bare LF (RFC 9112 2.2 lets a server take both). Overlapping pairs all
   * count: an upper bound. A CR followed by another byte is no line ending:
   * an engine reading it as one (llhttp 8 outside strict mode, CVE-2025-23167)
   * answers more requests than this counts. */
  size_t n = 0;
  int prev_eol = 0;
  for (size_t i = 0; i < len;) {
    size_t w = 0;
    if (p[i] == '\n')
      w = 1;
    else if (p[i] == '\r' && i + 1 < len && p[i + 1] == '\n')
      w = 2;
    if (w) {
      n += prev_eol;
      prev_eol = 1;
      i += w;
    } else {
      prev_eol = 0;
      i++;
    }
  }
  return n;
}

static int is_tchar(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int ieq(const char *a, size_t alen, const char *b) {
  size_t n = strlen(b);
  if (alen != n)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z')
      x += 32;
    if (y >= 'A' && y <= 'Z')
      y += 32;
    if (x != y)
      return 0;
  }
  return 1;
}

/* Find CRLF at or after p; returns its offset, or -1. */
static long find_crlf(const char *buf, size_t len, size_t from) {
  for (size_t i = from; i + 1 < len; i++)
    if (buf[i] == '\r' && buf[i + 1] == '\n')
      return (long)i;
  return -1;
}

/* Strict de-chunking of a response body at buf[off..len). Returns the end
 * offset or -1 (why set). */
static long dechunk_response(const char *buf, size_t len, size_t off, fuzz_response_t *r,
                             const char **why) {
  size_t cap = 0;
  for (;;) {
    long e = find_crlf(buf, len, off);
    if (e < 0)
      return *why = "chunked response: truncated chunk-size line", -1;
    size_t size = 0, i = off;
    if (i == (size_t)e)
      return *why = "chunked response: empty chunk size", -1;
    for (; i < (size_t)e; i++) {
      char c = buf[i];
      int v = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (v < 0 || size > (1u << 24))
        return *why = "chunked response: bad chunk size", -1;
      size = size * 16 + (size_t)v;
    }
    off = (size_t)e + 2;
    if (size == 0) {
      if (len - off < 2 || buf[off] != '\r' || buf[off + 1] != '\n')
        return *why = "chunked response: no CRLF after the last chunk (trailers?)", -1;
      return (long)(off + 2);
    }
    if (len - off < size + 2)
      return *why = "chunked response: truncated chunk", -1;
    if (buf[off + size] != '\r' || buf[off + size + 1] != '\n')
      return *why = "chunked response: chunk data not followed by CRLF", -1;
    if (r->body_len + size > cap) {
      cap = (r->body_len + size) * 2;
      r->decoded = realloc(r->decoded, cap);
      if (!r->decoded)
        abort();
    }
    memcpy(r->decoded + r->body_len, buf + off, size);
    r->body_len += size;
    off += size + 2;
  }
}

void fuzz_responses_free(fuzz_responses_t *rs) {
  for (size_t i = 0; i < rs->count; i++)
    free(rs->r[i].decoded);
  rs->count = 0;
}

/* An answer without X-M comes from the engine itself, which knows whether
 * the request was HEAD and the checker does not: read it as a HEAD answer
 * (no body) when its Content-Length does not end on a response boundary and
 * no body does, and the input holds a HEAD. */
static int maybe_head(const char *buf, size_t len, size_t off, size_t cl, const uint8_t *input,
                      size_t input_len) {
  static const char start[] = "HTTP/1.1 ";
  const size_t n = sizeof start - 1;
  size_t end = off + cl;
  if (end == len || (end < len && len - end >= n && memcmp(buf + end, start, n) == 0))
    return 0;
  if (!(off == len || (len - off >= n && memcmp(buf + off, start, n) == 0)))
    return 0;
  return memmem(input, input_len, "HEAD", 4) != NULL;
}

void fuzz_parse_responses(const char *buf, size_t len, fuzz_responses_t *out, const uint8_t *input,
                          size_t input_len) {
  memset(out, 0, sizeof *out);
  size_t off = 0;
  const char *why = NULL;
  fuzz_response_t cur;
  while (off < len) {
    memset(&cur, 0, sizeof cur);
    /* status line */
    long e = find_crlf(buf, len, off);
    if (e < 0 || (size_t)e - off < 13 || memcmp(buf + off, "HTTP/1.1 ", 9) != 0 ||
        buf[off + 12] != ' ') {
      why = "malformed or truncated status line";
      goto bad;
    }
    int status = 0;
    for (int i = 9; i < 12; i++) {
      char c = buf[off + i];
      if (c < '0' || c > '9') {
        why = "status code is not 3 digits";
        goto bad;
      }
      status = status * 10 + (c - '0');
    }
    if (status < 100) {
      why = "status below 100";
      goto bad;
    }
    for (size_t i = off + 13; i < (size_t)e; i++)
      if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f) {
        why = "control byte in the reason phrase";
        goto bad;
      }
    cur.status = status;
    off = (size_t)e + 2;
    /* header lines */
    int ncl = 0, chunked = 0, te = 0, has_xm = 0;
    size_t cl = 0;
    for (;;) {
      e = find_crlf(buf, len, off);
      if (e < 0) {
        why = "truncated response head";
        goto bad;
      }
      if ((size_t)e == off) {
        off += 2;
        break;
      }
      const char *line = buf + off;
      size_t ll = (size_t)e - off;
      const char *colon = memchr(line, ':', ll);
      if (!colon || colon == line) {
        why = "header line without a name and a colon";
        goto bad;
      }
      size_t nl = (size_t)(colon - line);
      for (size_t i = 0; i < nl; i++)
        if (!is_tchar((unsigned char)line[i])) {
          why = "header name with a non-token byte";
          goto bad;
        }
      const char *v = colon + 1;
      size_t vl = ll - nl - 1;
      while (vl && (*v == ' ' || *v == '\t'))
        v++, vl--;
      for (size_t i = 0; i < vl; i++)
        if ((unsigned char)v[i] < 0x20 && v[i] != '\t') {
          why = "control byte in a header value";
          goto bad;
        }
      if (ieq(line, nl, "Content-Length")) {
        ncl++;
        cl = 0;
        if (vl == 0 || vl > 12) {
          why = "bad Content-Length";
          goto bad;
        }
        for (size_t i = 0; i < vl; i++) {
          if (v[i] < '0' || v[i] > '9') {
            why = "bad Content-Length";
            goto bad;
          }
          cl = cl * 10 + (size_t)(v[i] - '0');
        }
      } else if (ieq(line, nl, "Transfer-Encoding")) {
        te++;
        chunked = ieq(v, vl, "chunked");
      } else if (ieq(line, nl, "Connection")) {
        cur.close = ieq(v, vl, "close");
      } else if (ieq(line, nl, "X-M")) {
        cur.head = ieq(v, vl, "HEAD");
        has_xm = 1;
      }
      off = (size_t)e + 2;
    }
    if (ncl > 1 || te > 1 || (ncl && te) || (te && !chunked)) {
      why = "ambiguous response framing (Content-Length/Transfer-Encoding)";
      goto bad;
    }
    if (status < 200) {
      if (status != 100 || ncl || te) {
        why = "interim response other than a bare 100 Continue";
        goto bad;
      }
      out->interim++;
      continue;
    }
    /* body */
    if (cur.head || status == 204 || status == 304) {
      if (te && status != 304 && !cur.head) {
        why = "Transfer-Encoding on a 204";
        goto bad;
      }
    } else if (te) {
      long end = dechunk_response(buf, len, off, &cur, &why);
      if (end < 0)
        goto bad;
      cur.body = cur.decoded;
      off = (size_t)end;
    } else if (ncl && !has_xm && maybe_head(buf, len, off, cl, input, input_len)) {
      /* the engine's own answer (a 500 in place of a refused one) to a HEAD */
    } else if (ncl) {
      if (len - off < cl) {
        why = "response body shorter than its Content-Length";
        goto bad;
      }
      cur.body = buf + off;
      cur.body_len = cl;
      off += cl;
    } else {
      /* close-delimited (an HTTP/1.0 client's streamed answer) */
      cur.body = buf + off;
      cur.body_len = len - off;
      off = len;
      cur.close = 1;
    }
    if (out->count == FUZZ_MAX_RESPONSES) {
      why = "more responses than any input of this size can ask for";
      goto bad;
    }
    out->r[out->count++] = cur;
    if (cur.close && off != len) {
      why = "bytes after a response with Connection: close";
      goto bad;
    }
  }
  return;
bad:
  free(cur.decoded);
  fprintf(stderr, "at output offset %zu\n", off);
  fuzz_fail(why, input, input_len, buf, len);
}
