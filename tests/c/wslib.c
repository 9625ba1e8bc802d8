/*
 * wslib.c: see wslib.h.
 */
#include "wslib.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

t_ws_seen_t t_ws;

void t_ws_reset(void) { memset(&t_ws, 0, sizeof t_ws); }

static int path_is(const pmu_request_t *r, const char *path) {
  size_t n = strlen(path);
  return r->path_len == n && memcmp(r->path, path, n) == 0;
}

static unsigned long query_num(const pmu_request_t *r, const char *key) {
  size_t n = strlen(key);
  const char *q = r->query, *end = r->query + r->query_len;
  while (q < end) {
    if ((size_t)(end - q) > n && memcmp(q, key, n) == 0 && q[n] == '=')
      return strtoul(q + n + 1, NULL, 10);
    const char *amp = memchr(q, '&', (size_t)(end - q));
    q = amp ? amp + 1 : end;
  }
  return 0;
}

static void count_send(int rc) {
  if (rc == 0)
    atomic_fetch_add(&t_ws.sent_ok, 1);
  else if (rc == 1)
    atomic_fetch_add(&t_ws.sent_over, 1);
  else if (rc == -ENOBUFS)
    atomic_fetch_add(&t_ws.sent_nobufs, 1);
  else if (rc == -EPIPE)
    atomic_fetch_add(&t_ws.sent_epipe, 1);
}

/* Per-handle behaviour, kept in pmu_ws_user. */
enum { WS_ECHO = 1, WS_QUIET = 2 };

static void *defer_accept(void *arg) {
  pmu_request_t *r = arg;
  t_sleep_ms(20);
  pmu_ws_accept_t opts = {.user = (void *)(uintptr_t)WS_ECHO};
  if (pmu_ws_accept(r, &opts))
    atomic_fetch_add(&t_ws.accepted, 1);
  return NULL;
}

typedef struct {
  pmu_ws_t *ws;
  unsigned long n;
} sender_t;

static void lent_release(void *ctx) {
  free(ctx);
  atomic_fetch_add(&t_ws.lent_released, 1);
}

static void *send_from_thread(void *arg) {
  sender_t *job = arg;
  for (unsigned long i = 0; i < job->n; i++) {
    char msg[24];
    int len = snprintf(msg, sizeof msg, "%lu", i);
    if (i % 3 == 0) {
      char *lent = strdup(msg);
      count_send(pmu_ws_send(job->ws, PMU_WS_TEXT, lent, (size_t)len, lent_release, lent));
    } else {
      count_send(pmu_ws_send(job->ws, PMU_WS_TEXT, msg, (size_t)len, NULL, NULL));
    }
  }
  pmu_ws_close(job->ws, 1000, NULL, 0);
  free(job);
  return NULL;
}

static void *resume_later(void *arg) {
  t_sleep_ms(300);
  pmu_ws_pause_reading(arg, 0);
  return NULL;
}

static void ws_request(pmu_request_t *r) {
  pmu_ws_accept_t opts = {.user = (void *)(uintptr_t)WS_ECHO};
  if (path_is(r, "/ws/defer")) {
    pthread_t th;
    if (pthread_create(&th, NULL, defer_accept, r) != 0)
      abort();
    pthread_detach(th);
    return;
  }
  static const pmu_header_t extra = {"X-Extra", 7, "1", 1};
  static char long_proto[4096];
  if (path_is(r, "/ws/proto")) {
    opts.subprotocol = "chat";
    opts.subprotocol_len = 4;
    unsigned long len = query_num(r, "len");
    if (len && len <= sizeof long_proto) {
      memset(long_proto, 'p', len);
      opts.subprotocol = long_proto;
      opts.subprotocol_len = len;
    }
    opts.headers = &extra;
    opts.header_count = 1;
  }
  if (path_is(r, "/ws/quiet"))
    opts.user = (void *)(uintptr_t)WS_QUIET;
  int close_code = path_is(r, "/ws/close") ? (int)query_num(r, "code") : -1;
  unsigned long flood = path_is(r, "/ws/flood") ? query_num(r, "n") : 0;
  pmu_ws_t *ws = pmu_ws_accept(r, &opts);
  if (!ws)
    return;
  atomic_fetch_add(&t_ws.accepted, 1);
  if (close_code >= 0) {
    static const int bad[] = {999, 1004, 1005, 1006, 1015, 1016, 2999, 5000};
    int ok = 1;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
      ok &= pmu_ws_close(ws, bad[i], NULL, 0) == -EINVAL;
    char long_reason[124] = {0};
    ok &= pmu_ws_close(ws, 1000, long_reason, sizeof long_reason) == -EINVAL;
    ok &= pmu_ws_close(ws, 0, "x", 1) == -EINVAL; /* a reason needs a code */
    ok &= !pmu_ws_closing(ws);
    ok &= pmu_ws_close(ws, close_code, "bye", close_code ? 3 : 0) == 0;
    ok &= pmu_ws_closing(ws) == 1;
    ok &= pmu_ws_close(ws, 1000, NULL, 0) == -EPIPE;
    ok &= pmu_ws_send(ws, PMU_WS_TEXT, "x", 1, NULL, NULL) == -EPIPE;
    ok &= pmu_ws_send(ws, 7, "x", 1, NULL, NULL) == -EINVAL;
    atomic_store(&t_ws.close_checks, ok);
  }
  if (path_is(r, "/ws/thread")) {
    sender_t *job = malloc(sizeof *job);
    job->ws = ws;
    job->n = query_num(r, "n");
    pmu_ws_set_user(ws, (void *)(uintptr_t)WS_QUIET);
    pthread_t th;
    if (pthread_create(&th, NULL, send_from_thread, job) != 0)
      abort();
    pthread_detach(th);
  }
  if (path_is(r, "/ws/pause")) {
    /* The handle stays valid: it is released only after GONE, which cannot
     * come before the resume (the client waits for the echo). */
    pmu_ws_pause_reading(ws, 1);
    pthread_t th;
    if (pthread_create(&th, NULL, resume_later, ws) != 0)
      abort();
    pthread_detach(th);
  }
  if (flood) {
    static char chunk[65536];
    pmu_ws_set_user(ws, (void *)(uintptr_t)WS_QUIET);
    for (unsigned long i = 0; i < flood; i++)
      count_send(pmu_ws_send(ws, PMU_WS_BINARY, chunk, sizeof chunk, NULL, NULL));
  }
}

void t_ws_handler(void *handler_data, pmu_request_t *const *requests, size_t count) {
  t_server_t *server = handler_data;
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    if (r->ws_upgrade && r->path_len >= 3 && memcmp(r->path, "/ws", 3) == 0)
      ws_request(r);
    else if (path_is(r, "/refuse"))
      pmu_respond_simple(r, 403, NULL, 0, "no\n", 3);
    else
      t_handle_request(server, r);
  }
}

void t_ws_events(void *handler_data, const pmu_ws_event_t *events, size_t count) {
  (void)handler_data;
  unsigned long max = atomic_load(&t_ws.max_batch);
  while (count > max && !atomic_compare_exchange_weak(&t_ws.max_batch, &max, count)) {
  }
  for (size_t i = 0; i < count; i++) {
    const pmu_ws_event_t *e = &events[i];
    uintptr_t mode = (uintptr_t)pmu_ws_user(e->ws);
    switch (e->type) {
    case PMU_WS_EV_MESSAGE:
      atomic_fetch_add(&t_ws.messages, 1);
      atomic_fetch_add(&t_ws.bytes_in, e->len);
      if (mode == WS_ECHO)
        count_send(pmu_ws_send(e->ws, e->opcode, e->data, e->len, NULL, NULL));
      break;
    case PMU_WS_EV_PING: atomic_fetch_add(&t_ws.pings, 1); break;
    case PMU_WS_EV_PONG: atomic_fetch_add(&t_ws.pongs, 1); break;
    case PMU_WS_EV_CLOSE:
      atomic_store(&t_ws.last_close_code, e->code);
      atomic_fetch_add(&t_ws.closes, 1);
      break;
    case PMU_WS_EV_DRAIN: atomic_fetch_add(&t_ws.drains, 1); break;
    case PMU_WS_EV_GONE:
      atomic_store(&t_ws.last_gone_code, e->code);
      atomic_fetch_add(&t_ws.gones, 1);
      pmu_ws_release(e->ws);
      atomic_fetch_add(&t_ws.released, 1);
      break;
    default: break;
    }
  }
}

void t_ws_config_init(pmu_config_t *config) {
  t_config_init(config);
  config->handler = t_ws_handler;
  config->ws_handler = t_ws_events;
}

/* ---- the client ---- */

static const uint8_t mask_key[4] = {0x37, 0xfa, 0x21, 0x3d};

size_t t_ws_build(char *out, int b0, const void *data, size_t len, int mask) {
  uint8_t *o = (uint8_t *)out;
  size_t n = 0;
  o[n++] = (uint8_t)b0;
  uint8_t m = mask ? 0x80 : 0;
  if (len < 126) {
    o[n++] = (uint8_t)(m | len);
  } else if (len <= 0xFFFF) {
    o[n++] = m | 126;
    o[n++] = (uint8_t)(len >> 8);
    o[n++] = (uint8_t)len;
  } else {
    o[n++] = m | 127;
    for (int i = 0; i < 8; i++)
      o[n++] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
  }
  if (mask) {
    memcpy(o + n, mask_key, 4);
    n += 4;
  }
  const uint8_t *p = data;
  for (size_t i = 0; i < len; i++)
    o[n + i] = mask ? p[i] ^ mask_key[i & 3] : p[i];
  return n + len;
}

size_t t_ws_request(char *out, size_t cap, const char *path, const char *extra) {
  int n = snprintf(out, cap,
                   "GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n%s\r\n",
                   path, extra ? extra : "");
  return (size_t)n;
}

t_conn_t *t_ws_connect_at(const char *file, int line, const t_server_t *server, const char *path) {
  char req[1024];
  size_t n = t_ws_request(req, sizeof req, path, NULL);
  t_conn_t *c = t_connect_at(file, line, server);
  t_send_at(file, line, c, req, n);
  t_response_t resp;
  int rc = t_read_response(c, &resp, T_IO_TIMEOUT_MS, true);
  if (rc < 0)
    t_fail_at(file, line, "no answer to the handshake for %s: %d", path, rc);
  if (resp.status != 101)
    t_fail_at(file, line, "handshake for %s: status %d, expected 101", path, resp.status);
  const char *acc = t_header(&resp, "Sec-WebSocket-Accept");
  if (!acc || strcmp(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") != 0)
    t_fail_at(file, line, "Sec-WebSocket-Accept: %s", acc ? acc : "(none)");
  t_response_free(&resp); /* what came after the 101 stays in c->buf */
  return c;
}

void t_ws_send_at(const char *file, int line, t_conn_t *conn, int b0, const void *data,
                  size_t len) {
  char *buf = malloc(len + 14);
  if (!buf)
    abort();
  size_t n = t_ws_build(buf, b0, data, len, 1);
  t_send_at(file, line, conn, buf, n);
  free(buf);
}

/* One frame from conn->buf[0..len): its size, or 0 if incomplete. */
static size_t parse_frame(const t_conn_t *conn, t_ws_frame_t *out) {
  const uint8_t *p = (const uint8_t *)conn->buf;
  size_t have = conn->len;
  if (have < 2)
    return 0;
  size_t n = 2;
  uint64_t len = p[1] & 0x7f;
  if (len == 126) {
    if (have < 4)
      return 0;
    len = (uint64_t)p[2] << 8 | p[3];
    n = 4;
  } else if (len == 127) {
    if (have < 10)
      return 0;
    len = 0;
    for (int i = 0; i < 8; i++)
      len = len << 8 | p[2 + i];
    n = 10;
  }
  int masked = (p[1] & 0x80) != 0;
  if (masked)
    n += 4;
  if (have < n + len)
    return 0;
  out->fin = (p[0] & 0x80) != 0;
  out->rsv = (p[0] >> 4) & 7;
  out->opcode = p[0] & 0x0f;
  out->masked = masked;
  out->len = (size_t)len;
  out->data = malloc(len + 1);
  if (!out->data)
    abort();
  memcpy(out->data, p + n, len);
  out->data[len] = 0;
  return n + (size_t)len;
}

int t_ws_read(t_conn_t *conn, t_ws_frame_t *out, int timeout_ms) {
  int64_t until = t_now_ms() + timeout_ms;
  for (;;) {
    size_t used = parse_frame(conn, out);
    if (used) {
      memmove(conn->buf, conn->buf + used, conn->len - used);
      conn->len -= used;
      return 0;
    }
    int64_t left = until - t_now_ms();
    if (left <= 0)
      return -ETIMEDOUT;
    int rc = t_recv_some(conn, (int)left);
    if (rc == 0 || (rc < 0 && rc != -ETIMEDOUT))
      return -ECONNRESET;
  }
}

void t_ws_frame_free(t_ws_frame_t *frame) {
  free(frame->data);
  frame->data = NULL;
}

int t_ws_read_close(t_conn_t *conn, int timeout_ms, unsigned *skipped) {
  int64_t until = t_now_ms() + timeout_ms;
  for (;;) {
    t_ws_frame_t f;
    int64_t left = until - t_now_ms();
    int rc = t_ws_read(conn, &f, left > 0 ? (int)left : 0);
    if (rc == -ETIMEDOUT)
      return -2;
    if (rc < 0)
      return -1;
    if (f.opcode == PMU_WS_CLOSE) {
      int code = f.len >= 2 ? ((uint8_t)f.data[0] << 8 | (uint8_t)f.data[1]) : 1005;
      t_ws_frame_free(&f);
      return code;
    }
    t_ws_frame_free(&f);
    if (skipped)
      (*skipped)++;
  }
}

void t_ws_expect_at(const char *file, int line, t_conn_t *conn, int opcode, const void *data,
                    size_t len) {
  t_ws_frame_t f;
  int rc = t_ws_read(conn, &f, T_IO_TIMEOUT_MS);
  if (rc < 0)
    t_fail_at(file, line, "no frame (opcode %d, %zu bytes expected): %d", opcode, len, rc);
  if (f.opcode != opcode || f.len != len || !f.fin || f.masked || f.rsv ||
      (len && memcmp(f.data, data, len) != 0))
    t_fail_at(file, line,
              "frame opcode %d fin %d rsv %d masked %d len %zu, expected opcode %d len %zu",
              f.opcode, f.fin, f.rsv, f.masked, f.len, opcode, len);
  t_ws_frame_free(&f);
}
