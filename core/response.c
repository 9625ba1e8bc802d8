/*
 * response.c: turning an answer into bytes on a connection's queue. The
 * status line, Server, Date, Content-Length and Connection headers are the
 * engine's; the handler's headers are checked and copied.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

int pmu_status_valid(int status) { return status >= 200 && status <= 999; }

const char *pmu_status_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 203: return "Non-Authoritative Information";
  case 204: return "No Content";
  case 205: return "Reset Content";
  case 206: return "Partial Content";
  case 300: return "Multiple Choices";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 402: return "Payment Required";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 406: return "Not Acceptable";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 412: return "Precondition Failed";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 416: return "Range Not Satisfiable";
  case 417: return "Expectation Failed";
  case 418: return "I'm a teapot";
  case 421: return "Misdirected Request";
  case 422: return "Unprocessable Content";
  case 425: return "Too Early";
  case 426: return "Upgrade Required";
  case 428: return "Precondition Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 451: return "Unavailable For Legal Reasons";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

void pmu__format_date(char out[40], time_t now) {
  static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  struct tm tm;
  gmtime_r(&now, &tm);
  /* IMF-fixdate, without the locale that strftime would consult. */
  char *p = out;
  memcpy(p, days[tm.tm_wday], 3);
  p += 3;
  *p++ = ',';
  *p++ = ' ';
  *p++ = (char)('0' + tm.tm_mday / 10);
  *p++ = (char)('0' + tm.tm_mday % 10);
  *p++ = ' ';
  memcpy(p, months[tm.tm_mon], 3);
  p += 3;
  *p++ = ' ';
  int y = tm.tm_year + 1900;
  *p++ = (char)('0' + y / 1000 % 10);
  *p++ = (char)('0' + y / 100 % 10);
  *p++ = (char)('0' + y / 10 % 10);
  *p++ = (char)('0' + y % 10);
  *p++ = ' ';
  *p++ = (char)('0' + tm.tm_hour / 10);
  *p++ = (char)('0' + tm.tm_hour % 10);
  *p++ = ':';
  *p++ = (char)('0' + tm.tm_min / 10);
  *p++ = (char)('0' + tm.tm_min % 10);
  *p++ = ':';
  *p++ = (char)('0' + tm.tm_sec / 10);
  *p++ = (char)('0' + tm.tm_sec % 10);
  memcpy(p, " GMT", 5);
}

/* Threads that answer outside a ring turn (the WSGI pool's, a driven loop's
 * between steps) format the date once a second each, as a ring does. */
static _Thread_local struct {
  time_t sec;
  char date[40];
} thread_date = {(time_t)-1, ""};

const char *pmu__date_now(void) {
  time_t now = time(NULL);
  if (now != thread_date.sec) {
    thread_date.sec = now;
    pmu__format_date(thread_date.date, now);
  }
  return thread_date.date;
}

void pmu__date_refresh(pmu__loop_t *loop, time_t now) {
  if (now != loop->date_sec) {
    loop->date_sec = now;
    pmu__format_date(loop->date, now);
  }
}

static size_t put_u64(char *p, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (size_t i = 0; i < n; i++)
    p[i] = tmp[n - 1 - i];
  return n;
}

#define PUT(p, s, n)       \
  do {                     \
    memcpy((p), (s), (n)); \
    (p) += (n);            \
  } while (0)
#define PUT_LIT(p, lit) PUT(p, lit, sizeof(lit) - 1)

static int out_reserve(pmu__req_t *r, size_t need) {
  return pmu__grow(&r->out, &r->out_cap, need, 256);
}

static int name_eq(const pmu_header_t *h, const char *lit, size_t n) {
  return h->name_len == n && strncasecmp(h->name, lit, n) == 0;
}

/* CR, LF or NUL in a header would let a handler inject headers. */
int pmu__header_safe(const pmu_header_t *h) {
  if (h->name_len == 0)
    return 0;
  for (size_t i = 0; i < h->name_len; i++) {
    unsigned char ch = (unsigned char)h->name[i];
    if (ch <= ' ' || ch == ':' || ch >= 0x7f)
      return 0;
  }
  for (size_t i = 0; i < h->value_len; i++) {
    unsigned char ch = (unsigned char)h->value[i];
    if (ch == '\r' || ch == '\n' || ch == 0)
      return 0;
  }
  return 1;
}

enum { USER_SERVER = 2, USER_DATE = 4, USER_CLOSE = 8, USER_LENGTH = 16 };

/* The answer when the real one cannot be formatted for want of memory: static,
 * so that it needs none, and closing, so that nothing after it is misframed. */
static const char oom_503[] = "HTTP/1.1 503 Service Unavailable\r\n"
                              "Content-Type: text/plain; charset=utf-8\r\n"
                              "Content-Length: 20\r\n"
                              "Connection: close\r\n"
                              "\r\n"
                              "Service Unavailable\n";

/* Make r's answer the static 503 (sent from r->ext_body, no copy) and close
 * after it. */
static void answer_oom(pmu__req_t *r) {
  r->out_len = 0;
  r->ext_body = oom_503;
  r->ext_len = sizeof oom_503 - 1;
  r->ext_release = NULL;
  r->ext_ctx = NULL;
  r->close_after = 1;
  r->status_class = 5;
}

/*
 * Write the response for r into r->out (and r->ext_*). Runs on whichever
 * thread answers; touches only r. With stream set, only the head is written
 * and r->stream_mode says how the body pieces will be framed. Returns 0,
 * -EINVAL (bad status or header: a complete 500 was written instead) or
 * -ENOMEM (r->out cannot grow: the answer is the static 503 that closes,
 * answer_oom, with the handler's body released; for a stream, stream_mode
 * STREAM_NOBODY).
 */
static int serialize(pmu__req_t *r, const pmu_response_t *resp, const char *date, int stopping,
                     int stream) {
  pmu_server_t *s = r->loop->server;
  int status = resp->status;
  int rc = 0;
  size_t hbytes = 0;
  unsigned seen = 0;
  for (size_t i = 0; i < resp->header_count; i++) {
    const pmu_header_t *h = &resp->headers[i];
    if (!pmu__header_safe(h)) {
      rc = -EINVAL;
      break;
    }
    hbytes += h->name_len + h->value_len + 4;
  }
  if (!pmu_status_valid(status))
    rc = -EINVAL;
  if (rc < 0) {
    static const char msg[] = "Internal Server Error\n";
    static const pmu_header_t ct = {"Content-Type", 12, "text/plain; charset=utf-8", 25};
    if (resp->body_release)
      resp->body_release(resp->body_ctx);
    pmu_response_t fallback = {
        .status = 500, .headers = &ct, .header_count = 1, .body = msg, .body_len = sizeof msg - 1};
    serialize(r, &fallback, date, stopping, 0);
    if (stream)
      r->stream_mode = STREAM_NOBODY; /* the 500 is the whole answer */
    return rc;
  }

  r->status_class = (uint8_t)(status / 100); /* counted on the loop's thread */
  const char *reason = pmu_status_reason(status);
  size_t reason_len = strlen(reason);
  int no_body = status == 204 || status == 304 || r->pub.is_head;
  int send_length = status != 204 && status != 304;
  size_t copy_body = (!no_body && !resp->body_release && !stream) ? resp->body_len : 0;
  uint64_t stream_length = 0;
  size_t need = 13 + reason_len + 2 + 10 + s->server_header_len + 2 + 6 + 29 + 2 + hbytes + 16 +
                20 + 2 + 24 + 2 + s->extra_headers_len + copy_body;
  if (PMU__FAULT(PMU__FAULT_SERIALIZE) || out_reserve(r, need) < 0) {
    if (resp->body_release)
      resp->body_release(resp->body_ctx); /* never sent */
    answer_oom(r);
    if (stream)
      r->stream_mode = STREAM_NOBODY;
    return -ENOMEM;
  }

  char *p = r->out;
  PUT_LIT(p, "HTTP/1.1 ");
  p += put_u64(p, (uint64_t)status);
  *p++ = ' ';
  PUT(p, reason, reason_len);
  PUT_LIT(p, "\r\n");
  for (size_t i = 0; i < resp->header_count; i++) {
    const pmu_header_t *h = &resp->headers[i];
    switch (h->name_len) {
    case 4:
      if (name_eq(h, "date", 4))
        seen |= USER_DATE;
      break;
    case 6:
      if (name_eq(h, "server", 6))
        seen |= USER_SERVER;
      break;
    case 10:
      if (name_eq(h, "connection", 10)) {
        if (h->value_len == 5 && strncasecmp(h->value, "close", 5) == 0)
          seen |= USER_CLOSE;
        continue;
      }
      break;
    case 14:
      if (name_eq(h, "content-length", 14)) {
        if (!stream || status == 204 || status == 304)
          continue;
        /* A streamed body of known length is sent as it is. */
        uint64_t v = 0;
        size_t k = 0;
        for (; k < h->value_len && h->value[k] >= '0' && h->value[k] <= '9'; k++)
          v = v * 10 + (uint64_t)(h->value[k] - '0');
        if (k == 0 || k != h->value_len || k > 18)
          continue; /* not a length: ignore it */
        seen |= USER_LENGTH;
        stream_length = v;
      }
      break;
    case 17:
      if (name_eq(h, "transfer-encoding", 17))
        continue;
      break;
    default: break;
    }
    PUT(p, h->name, h->name_len);
    PUT_LIT(p, ": ");
    PUT(p, h->value, h->value_len);
    PUT_LIT(p, "\r\n");
  }
  if (s->extra_headers_len)
    PUT(p, s->extra_headers, s->extra_headers_len);
  if (!(seen & USER_SERVER) && !s->extra_server && s->server_header_len) {
    PUT_LIT(p, "Server: ");
    PUT(p, s->server_header, s->server_header_len);
    PUT_LIT(p, "\r\n");
  }
  if (!(seen & USER_DATE) && !s->extra_date && s->cfg.date_header) {
    PUT_LIT(p, "Date: ");
    PUT(p, date, 29);
    PUT_LIT(p, "\r\n");
  }
  int close = !r->pub.keep_alive || stopping || (seen & USER_CLOSE);
  if (stream) {
    if (no_body) {
      r->stream_mode = STREAM_NOBODY;
    } else if (seen & USER_LENGTH) {
      r->stream_mode = STREAM_LENGTH;
      r->stream_remaining = stream_length;
    } else if (r->pub.http_major == 1 && r->pub.http_minor >= 1) {
      r->stream_mode = STREAM_CHUNKED;
      PUT_LIT(p, "Transfer-Encoding: chunked\r\n");
    } else {
      r->stream_mode = STREAM_CLOSE; /* HTTP/1.0: the end of the body is the close */
      close = 1;
    }
  } else if (send_length) {
    PUT_LIT(p, "Content-Length: ");
    p += put_u64(p, resp->body_len);
    PUT_LIT(p, "\r\n");
  }
  if (close)
    PUT_LIT(p, "Connection: close\r\n");
  else if (r->pub.http_major == 1 && r->pub.http_minor == 0)
    PUT_LIT(p, "Connection: keep-alive\r\n");
  PUT_LIT(p, "\r\n");
  if (copy_body)
    PUT(p, resp->body, copy_body);
  r->out_len = (size_t)(p - r->out);
  r->close_after = (uint8_t)close;
  if (resp->body_release) {
    r->ext_body = resp->body;
    r->ext_len = no_body ? 0 : resp->body_len;
    r->ext_release = resp->body_release;
    r->ext_ctx = resp->body_ctx;
  }
  return 0;
}

void pmu__engine_message(pmu__req_t *r, int status, int keep_open) {
  if (status == 100) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (out_reserve(r, sizeof cont) == 0) {
      memcpy(r->out, cont, sizeof cont - 1);
      r->out_len = sizeof cont - 1;
    }
    r->answered = 1;
    return;
  }
  char body[64];
  const char *reason = pmu_status_reason(status);
  size_t n = strlen(reason);
  memcpy(body, reason, n);
  body[n++] = '\n';
  static const pmu_header_t ct = {"Content-Type", 12, "text/plain; charset=utf-8", 25};
  pmu_response_t resp = {
      .status = status, .headers = &ct, .header_count = 1, .body = body, .body_len = n};
  r->pub.keep_alive = (uint8_t)keep_open;
  r->pub.http_major = 1;
  r->pub.http_minor = 1;
  serialize(r, &resp, r->loop->date, 0, 0);
  STAT_ADD(r->loop, status_classes[r->status_class], 1);
  r->answered = 1;
}

void pmu__answer_arrived(pmu__req_t *r) {
  pmu__loop_t *loop = r->loop;
  r->answered = 1;
  if (r->ws)
    pmu__ws_accept_arrived(r); /* a 101: the connection turns into a WebSocket */
  if (r->with_handler) {
    r->with_handler = 0;
    loop->outstanding--;
  }
  STAT_ADD(loop, responses, 1);
  STAT_ADD(loop, status_classes[r->status_class], 1);
  if (!r->conn) {
    pmu__loop_bury(loop, r); /* the connection is gone */
    return;
  }
  pmu__conn_answered(r->conn, r);
}

static void hand_over(pmu__req_t *r);

void pmu__hand_over(pmu__req_t *r) { hand_over(r); }

int pmu__serialize(pmu__req_t *r, const pmu_response_t *resp, int on_loop) {
  pmu__loop_t *loop = r->loop;
  if (on_loop)
    return serialize(r, resp, loop->date, pmu__stop_seen(loop), 0);
  return serialize(r, resp, pmu__date_now(), atomic_load(&loop->server->stop_requested), 0);
}

int pmu_respond(pmu_request_t *request, const pmu_response_t *response) {
  pmu__req_t *r = (pmu__req_t *)request;
  pmu__loop_t *loop = r->loop;
  pmu_server_t *s = loop->server;

  if (r->stream_state)
    return -EINVAL; /* a streamed answer ends with pmu_respond_end() */
  if (pmu__current_loop == loop) {
    int rc = serialize(r, response, loop->date, pmu__stop_seen(loop), 0);
    pmu__answer_arrived(r);
    return rc;
  }

  /* Another thread: serialize here, hand over through the loop's queue. */
  int rc = serialize(r, response, pmu__date_now(), atomic_load(&s->stop_requested), 0);
  hand_over(r);
  return rc;
}

/* ---- wake batching (pmu_wake_batch_*) ---- */

#define WAKE_BATCH_LOOPS 8

struct pmu_wake_batch {
  pthread_mutex_t lock;
  unsigned count;
  pmu__loop_t *loops[WAKE_BATCH_LOOPS]; /* each holds a reference to its server */
};

static _Thread_local pmu_wake_batch_t *held_wakes;

pmu_wake_batch_t *pmu_wake_batch_new(void) {
  pmu_wake_batch_t *b = calloc(1, sizeof *b);
  if (b != NULL)
    pthread_mutex_init(&b->lock, NULL);
  return b;
}

void pmu_wake_batch_free(pmu_wake_batch_t *b) {
  if (b == NULL)
    return;
  pmu_wake_batch_flush(b);
  pthread_mutex_destroy(&b->lock);
  free(b);
}

void pmu_wake_batch_begin(pmu_wake_batch_t *b) { held_wakes = b; }

unsigned pmu_wake_batch_flush(pmu_wake_batch_t *b) {
  pmu__loop_t *loops[WAKE_BATCH_LOOPS];
  pthread_mutex_lock(&b->lock);
  unsigned n = b->count;
  memcpy(loops, b->loops, n * sizeof loops[0]);
  b->count = 0;
  pthread_mutex_unlock(&b->lock);
  for (unsigned i = 0; i < n; i++) {
    pmu_server_t *s = loops[i]->server;
    pmu__loop_wake(loops[i]);
    pmu__server_unref(s);
  }
  return n;
}

/* Wake `loop` for an answer handed over, or note it in the calling thread's
 * batch (once per loop; when the batch is full, at once). */
static void wake_for_answer(pmu__loop_t *loop) {
  pmu_wake_batch_t *b = held_wakes;
  if (b != NULL) {
    pthread_mutex_lock(&b->lock);
    for (unsigned i = 0; i < b->count; i++)
      if (b->loops[i] == loop) {
        pthread_mutex_unlock(&b->lock);
        return;
      }
    if (b->count < WAKE_BATCH_LOOPS) {
      atomic_fetch_add(&loop->server->refs, 1);
      b->loops[b->count++] = loop;
      pthread_mutex_unlock(&b->lock);
      return;
    }
    pthread_mutex_unlock(&b->lock);
  }
  pmu__loop_wake(loop);
}

/* Give an answered request to its loop: at once on the loop's thread, else
 * through its answer queue (the request is its own link: no memory needed). */
static void hand_over(pmu__req_t *r) {
  pmu__loop_t *loop = r->loop;
  pmu_server_t *s = loop->server;
  if (pmu__current_loop == loop) {
    pmu__answer_arrived(r);
    return;
  }
  pthread_mutex_lock(&loop->qlock);
  if (loop->exited) {
    pthread_mutex_unlock(&loop->qlock);
    pmu__req_free(r);
    pmu__server_unref(s);
    return;
  }
  int was_empty = loop->qhead == NULL && loop->sqhead == NULL;
  r->qnext = NULL;
  r->qseq = loop->qseq++;
  if (loop->qtail)
    loop->qtail->qnext = r;
  else
    loop->qhead = r;
  loop->qtail = r;
  pthread_mutex_unlock(&loop->qlock);
  if (was_empty)
    wake_for_answer(loop);
}

/* The status class of a raw answer: that of a leading "HTTP/1.x NNN", else 0. */
static uint8_t raw_status_class(const char *p, size_t len) {
  if (len < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ' || p[9] < '1' || p[9] > '9' ||
      p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
    return 0;
  return (uint8_t)(p[9] - '0');
}

int pmu_respond_raw(pmu_request_t *request, const void *data, size_t len,
                    void (*release)(void *ctx), void *ctx) {
  pmu__req_t *r = (pmu__req_t *)request;
  pmu__loop_t *loop = r->loop;
  if (r->stream_state) {
    if (release)
      release(ctx);
    return -EINVAL;
  }
  int on_loop = pmu__current_loop == loop;
  int stopping = pmu__stop_seen(loop);
  int rc = 0;
  r->out_len = 0;
  r->ext_body = NULL;
  r->ext_len = 0;
  r->status_class = raw_status_class(data, len);
  r->close_after = (uint8_t)(!r->pub.keep_alive || stopping);
  if (release) {
    r->ext_body = data;
    r->ext_len = len;
    r->ext_release = release;
    r->ext_ctx = ctx;
  } else if (len && out_reserve(r, len) < 0) {
    answer_oom(r);
    rc = -ENOMEM;
  } else {
    if (len)
      memcpy(r->out, data, len);
    r->out_len = len;
  }
  if (on_loop)
    pmu__answer_arrived(r);
  else
    hand_over(r);
  return rc;
}

int pmu_respond_simple(pmu_request_t *request, int status, const pmu_header_t *headers,
                       size_t header_count, const void *body, size_t body_len) {
  pmu_response_t resp = {.status = status,
                         .headers = headers,
                         .header_count = header_count,
                         .body = body,
                         .body_len = body_len};
  return pmu_respond(request, &resp);
}

const pmu_header_t *pmu_request_header(const pmu_request_t *request, const char *name) {
  size_t n = strlen(name);
  for (size_t i = 0; i < request->header_count; i++) {
    const pmu_header_t *h = &request->headers[i];
    if (h->name_len == n && strncasecmp(h->name, name, n) == 0)
      return h;
  }
  return NULL;
}

/* ---- streamed answers ---- */

void pmu__seg_done(pmu__seg_t *g) {
  if (g->ch) {
    pmu__connh_seg_done(g, 0); /* pmu_conn_send's bytes, dropped */
    return;
  }
  if (g->body)
    atomic_fetch_sub(&g->req->unsent, g->body);
  if (g->release)
    g->release(g->ctx);
  else if (g->kind == SEG_FILE)
    close(g->fd);
  free(g);
}

static void drain_check(pmu__req_t *r) {
  const pmu_config_t *cfg = &r->loop->server->cfg;
  if (atomic_load(&r->want_drain) && atomic_load(&r->unsent) <= cfg->output_high_water / 2 &&
      atomic_exchange(&r->want_drain, 0) && cfg->on_drain)
    cfg->on_drain(cfg->handler_data, &r->pub);
}

void pmu__seg_arrived(pmu__seg_t *g) {
  if (g->ch) {
    pmu__connh_seg_arrived(g);
    return;
  }
  if (g->ws) {
    pmu__ws_seg_arrived(g);
    return;
  }
  pmu__req_t *r = g->req;
  pmu__conn_t *c = r->conn;
  if (g->kind == SEG_END) {
    r->answered = 1;
    r->with_handler = 0;
    r->loop->outstanding--;
    STAT_ADD(r->loop, responses, 1);
    STAT_ADD(r->loop, status_classes[r->status_class], 1);
    if (r->aborted) {
      STAT_ADD(r->loop, responses_aborted, 1);
      /* Requests behind it may be unread: close through lingering, so that
       * the client reads what was sent, then the end of the stream, rather
       * than a reset. */
      if (c)
        c->linger_on_close = 1;
    }
  }
  if (!c) {
    /* The connection is gone: drop the piece; the end releases the request. */
    int end = g->kind == SEG_END;
    pmu__seg_done(g);
    if (end)
      pmu__loop_bury(r->loop, r);
    return;
  }
  r->streaming = 1;
  if (pmu__seg_size(g)) {
    g->next = NULL;
    if (r->seg_tail)
      r->seg_tail->next = g;
    else
      r->seg_head = g;
    r->seg_tail = g;
    c->out_queued += pmu__seg_size(g) + PMU__SEG_COST;
  } else {
    pmu__seg_done(g);
  }
  if (r->answered)
    pmu__conn_answered(c, r);
  else
    pmu__loop_mark_dirty(r->loop, c);
}

void pmu__stream_sent(pmu__req_t *r, pmu__seg_t *g) {
  if (g->ch) {
    pmu__connh_seg_done(g, 1);
    return;
  }
  pmu__seg_done(g);
  drain_check(r);
}

void pmu__req_orphan(pmu__req_t *r, int at_stop) {
  atomic_store(&r->gone, at_stop ? 2 : 1);
  while (r->seg_head) {
    pmu__seg_t *g = r->seg_head;
    r->seg_head = g->next;
    pmu__seg_done(g);
  }
  r->seg_tail = NULL;
  const pmu_config_t *cfg = &r->loop->server->cfg;
  if (cfg->on_disconnect)
    cfg->on_disconnect(cfg->handler_data, &r->pub);
}

/* Hand a piece to its loop: directly on its thread, else through the loop's
 * stream queue. A WebSocket's pieces take the same way, so that they keep
 * their order with the answers before them. */
void pmu__seg_deliver(pmu__seg_t *g, pmu__loop_t *loop) {
  pmu__req_t *r = g->req;
  if (pmu__current_loop == loop) {
    pmu__seg_arrived(g);
    return;
  }
  pthread_mutex_lock(&loop->qlock);
  if (loop->exited) {
    pthread_mutex_unlock(&loop->qlock);
    if (g->ch) {
      pmu__connh_seg_dropped(g);
      return;
    }
    if (g->ws) {
      pmu__ws_seg_dropped(g);
      return;
    }
    int end = g->kind == SEG_END;
    pmu__seg_done(g);
    if (end) {
      pmu_server_t *s = loop->server;
      pmu__req_free(r);
      pmu__server_unref(s);
    }
    return;
  }
  int was_empty = loop->sqhead == NULL && loop->qhead == NULL;
  g->next = NULL;
  g->qseq = loop->qseq++;
  if (loop->sqtail)
    loop->sqtail->next = g;
  else
    loop->sqhead = g;
  loop->sqtail = g;
  pthread_mutex_unlock(&loop->qlock);
  if (was_empty)
    wake_for_answer(loop);
}

static void deliver(pmu__seg_t *g) { pmu__seg_deliver(g, g->req->loop); }

pmu__seg_t *pmu__seg_alloc(int kind, const void *data, size_t len, void (*release)(void *),
                           void *ctx) {
  pmu__seg_t *g = malloc(sizeof *g + (release ? 0 : len));
  if (!g)
    return NULL;
  memset(g, 0, sizeof *g);
  g->kind = (uint8_t)kind;
  g->len = len;
  if (release) {
    g->data = data;
    g->release = release;
    g->ctx = ctx;
  } else {
    if (len)
      memcpy(g->inline_data, data, len);
    g->data = g->inline_data;
  }
  return g;
}

static pmu__seg_t *seg_new(pmu__req_t *r, int kind, const void *data, size_t len,
                           void (*release)(void *), void *ctx) {
  pmu__seg_t *g = PMU__FAULT(PMU__FAULT_SEG) ? NULL : pmu__seg_alloc(kind, data, len, release, ctx);
  if (g)
    g->req = r;
  return g;
}

static void static_data(void *ctx) { (void)ctx; }

static const char last_chunk[] = "0\r\n\r\n";

/*
 * Every failure to allocate below leaves the request able to end: the end
 * piece is allocated first, so pmu_respond_end() needs no memory; a head
 * that cannot be formatted is the static 503 that closes; a piece that
 * cannot be queued makes the end close without the last chunk, so that the
 * client sees the answer incomplete rather than a wrong body.
 */
int pmu_respond_start(pmu_request_t *request, int status, const pmu_header_t *headers,
                      size_t header_count) {
  pmu__req_t *r = (pmu__req_t *)request;
  pmu__loop_t *loop = r->loop;
  if (r->stream_state)
    return -EINVAL;
  r->stream_state = 1;
  r->end_seg = seg_new(r, SEG_END, last_chunk, sizeof last_chunk - 1, NULL, NULL);
  if (!r->end_seg) {
    /* Nothing goes out before the end, which answers 503 through the queue. */
    r->stream_broken = BROKEN_NO_END;
    r->stream_mode = STREAM_NOBODY;
    return -ENOMEM;
  }
  pmu_response_t resp = {.status = status, .headers = headers, .header_count = header_count};
  int rc;
  if (pmu__current_loop == loop) {
    rc = serialize(r, &resp, loop->date, pmu__stop_seen(loop), 1);
  } else {
    rc = serialize(r, &resp, pmu__date_now(), atomic_load(&loop->server->stop_requested), 1);
  }
  pmu__seg_t *g;
  if (rc == -ENOMEM) {
    /* The static 503 travels as the first piece, without a copy. */
    g = seg_new(r, SEG_RAW, r->ext_body, r->ext_len, static_data, NULL);
    r->ext_body = NULL;
    r->ext_len = 0;
    r->stream_broken = BROKEN_CLOSE;
  } else {
    g = seg_new(r, SEG_RAW, r->out, r->out_len, NULL, NULL);
  }
  r->out_len = 0; /* the head travels as the first piece */
  if (!g) {
    /* No head: the end closes with nothing sent for this request. */
    r->stream_broken = BROKEN_CLOSE;
    r->stream_mode = STREAM_NOBODY;
    return -ENOMEM;
  }
  deliver(g);
  return rc;
}

/* The chunk-size line before a piece of len bytes, and the CRLF after it. */
static void chunk_frame(pmu__seg_t *g, uint64_t len) {
  static const char hex[] = "0123456789abcdef";
  char tmp[16];
  int n = 0;
  uint64_t v = len;
  do {
    tmp[n++] = hex[v & 15];
    v >>= 4;
  } while (v);
  for (int i = 0; i < n; i++)
    g->pre[i] = tmp[n - 1 - i];
  g->pre[n] = '\r';
  g->pre[n + 1] = '\n';
  g->pre_len = (uint8_t)(n + 2);
  g->post_len = 2;
}

int pmu_respond_write(pmu_request_t *request, const void *data, size_t len,
                      void (*release)(void *ctx), void *ctx) {
  pmu__req_t *r = (pmu__req_t *)request;
  if (r->stream_state != 1) {
    if (release)
      release(ctx);
    return -EINVAL;
  }
  if (atomic_load(&r->gone)) {
    if (release)
      release(ctx);
    return -EPIPE;
  }
  if (r->stream_mode == STREAM_LENGTH && len > r->stream_remaining) {
    len = (size_t)r->stream_remaining; /* never more than the announced length, */
    r->overflowed = 1;                 /* and nothing after it on this connection */
  }
  if (r->stream_broken) {
    if (release)
      release(ctx);
    return -ENOMEM; /* an earlier failure: this answer ends by closing */
  }
  if (len == 0 || r->stream_mode == STREAM_NOBODY) {
    if (release)
      release(ctx);
    return 0;
  }
  if (r->stream_mode == STREAM_LENGTH)
    r->stream_remaining -= len;
  pmu__seg_t *g = seg_new(r, SEG_RAW, data, len, release, ctx);
  if (!g) {
    if (release)
      release(ctx);
    /* A hole in the body: the end must close, without the last chunk. */
    r->stream_broken = BROKEN_CLOSE;
    return -ENOMEM;
  }
  if (r->stream_mode == STREAM_CHUNKED)
    chunk_frame(g, len);
  g->body = len;
  atomic_fetch_add(&r->unsent, len);
  deliver(g);
  return 0;
}

static void file_release(int fd, void (*release)(void *), void *ctx) {
  if (release)
    release(ctx);
  else
    close(fd);
}

/* Like pmu_respond_write, for a range of a file: the piece holds the fd; the loop sends
 * the bytes (core/file.c). */
int pmu_respond_write_file(pmu_request_t *request, int fd, uint64_t offset, uint64_t length,
                           void (*release)(void *ctx), void *ctx) {
  pmu__req_t *r = (pmu__req_t *)request;
  if (r->stream_state != 1 || fd < 0 || offset > UINT64_MAX - length) {
    if (fd >= 0)
      file_release(fd, release, ctx);
    return -EINVAL;
  }
  if (atomic_load(&r->gone)) {
    file_release(fd, release, ctx);
    return -EPIPE;
  }
  if (r->stream_mode == STREAM_LENGTH && length > r->stream_remaining) {
    length = r->stream_remaining; /* as pmu_respond_write: cut at the announced length */
    r->overflowed = 1;
  }
  if (r->stream_broken) {
    file_release(fd, release, ctx);
    return -ENOMEM;
  }
  if (length == 0 || r->stream_mode == STREAM_NOBODY) {
    file_release(fd, release, ctx); /* HEAD, 204, 304: dropped, released at once */
    return 0;
  }
  if (length > SIZE_MAX - 64) {
    file_release(fd, release, ctx);
    return -EINVAL;
  }
  if (r->stream_mode == STREAM_LENGTH)
    r->stream_remaining -= length;
  pmu__seg_t *g = PMU__FAULT(PMU__FAULT_SEG) ? NULL : pmu__seg_alloc(SEG_FILE, NULL, 0, NULL, NULL);
  if (!g) {
    file_release(fd, release, ctx);
    r->stream_broken = BROKEN_CLOSE; /* a hole in the body: the end closes */
    return -ENOMEM;
  }
  g->req = r;
  g->fd = fd;
  g->foff = offset;
  g->len = (size_t)length;
  g->data = NULL;
  g->release = release;
  g->ctx = ctx;
  if (r->stream_mode == STREAM_CHUNKED)
    chunk_frame(g, length);
  deliver(g);
  return 0;
}

int pmu_respond_file(pmu_request_t *request, int status, const pmu_header_t *headers,
                     size_t header_count, int fd, uint64_t offset, uint64_t length,
                     void (*release)(void *ctx), void *ctx) {
  if (((pmu__req_t *)request)->stream_state) {
    if (fd >= 0)
      file_release(fd, release, ctx);
    return -EINVAL;
  }
  /* The handler's headers, less any framing of its own, plus our Content-Length. */
  pmu_header_t stack[16];
  pmu_header_t *hs = stack;
  if (header_count + 1 > sizeof stack / sizeof stack[0]) {
    hs = malloc(sizeof *hs * (header_count + 1));
    if (!hs) {
      if (fd >= 0)
        file_release(fd, release, ctx);
      pmu_respond_start(request, status, headers, header_count); /* the 503 path if short */
      pmu_respond_abort(request);
      return -ENOMEM;
    }
  }
  size_t n = 0;
  for (size_t i = 0; i < header_count; i++) {
    const pmu_header_t *h = &headers[i];
    if ((h->name_len == 14 && strncasecmp(h->name, "content-length", 14) == 0) ||
        (h->name_len == 17 && strncasecmp(h->name, "transfer-encoding", 17) == 0))
      continue;
    hs[n++] = *h;
  }
  char lenbuf[24];
  size_t ll = put_u64(lenbuf, length);
  hs[n++] = (pmu_header_t){"Content-Length", 14, lenbuf, ll};
  int rc = pmu_respond_start(request, status, hs, n);
  if (hs != stack)
    free(hs);
  int wrc = pmu_respond_write_file(request, fd, offset, length, release, ctx);
  if (wrc < 0 && wrc != -EPIPE && rc == 0)
    rc = wrc;
  int erc = pmu_respond_end(request);
  if (rc == 0 && erc < 0)
    rc = erc;
  return rc;
}

/* The end of a stream: the last chunk, unless aborted; the close when the
 * framing or an abort needs it. close_after and aborted are written before
 * the end is handed over (under the loop's lock, or on its thread), and read
 * by the loop only after it has arrived. The end piece was allocated at
 * start, so finishing needs no memory. */
static int stream_finish(pmu__req_t *r, int abort) {
  if (r->stream_broken == BROKEN_NO_END) {
    /* Nothing of it was delivered: answer 503 like pmu_respond() would. */
    answer_oom(r);
    hand_over(r);
    return 0;
  }
  size_t n = 0;
  if (r->stream_broken)
    abort = 1; /* a piece was lost: incomplete, only a close can say so */
  if (r->stream_mode == STREAM_LENGTH && r->stream_remaining)
    abort = 1; /* shorter than announced: only a close ends it, incomplete */
  if (abort) {
    r->aborted = 1;
    r->close_after = 1;
  } else if (r->stream_mode == STREAM_CHUNKED) {
    n = r->end_seg->len; /* the last chunk, with trailers if any */
  }
  if (r->stream_mode == STREAM_CLOSE || r->overflowed)
    r->close_after = 1;
  pmu__seg_t *g = r->end_seg; /* allocated at start, with room for the last chunk */
  r->end_seg = NULL;
  g->len = n;
  deliver(g);
  return 0;
}

int pmu_respond_end(pmu_request_t *request) {
  pmu__req_t *r = (pmu__req_t *)request;
  if (r->stream_state != 1)
    return -EINVAL;
  r->stream_state = 2;
  return stream_finish(r, 0);
}

int pmu_respond_end_trailers(pmu_request_t *request, const pmu_header_t *trailers, size_t count) {
  pmu__req_t *r = (pmu__req_t *)request;
  if (r->stream_state != 1)
    return -EINVAL;
  size_t need = sizeof last_chunk - 1;
  for (size_t i = 0; i < count; i++) {
    if (!pmu__header_safe(&trailers[i]))
      return -EINVAL; /* nothing done: the caller may still end */
    need += trailers[i].name_len + 2 + trailers[i].value_len + 2;
  }
  if (count == 0 || r->stream_mode != STREAM_CHUNKED || r->stream_broken)
    return pmu_respond_end(request); /* no trailer section to carry them */
  /* "0\r\n", the trailer lines, "\r\n": the end piece, built in place of the
   * one allocated at start. Without memory for it, the answer ends without
   * the trailers (-ENOMEM), still complete. */
  char *text = malloc(need);
  pmu__seg_t *g = NULL;
  if (text != NULL) {
    char *p = text;
    memcpy(p, "0\r\n", 3);
    p += 3;
    for (size_t i = 0; i < count; i++) {
      memcpy(p, trailers[i].name, trailers[i].name_len);
      p += trailers[i].name_len;
      *p++ = ':';
      *p++ = ' ';
      if (trailers[i].value_len)
        memcpy(p, trailers[i].value, trailers[i].value_len);
      p += trailers[i].value_len;
      *p++ = '\r';
      *p++ = '\n';
    }
    *p++ = '\r';
    *p++ = '\n';
    g = seg_new(r, SEG_END, text, (size_t)(p - text), NULL, NULL);
    free(text);
  }
  if (g == NULL) {
    pmu_respond_end(request);
    return -ENOMEM;
  }
  pmu__seg_done(r->end_seg); /* the plain last chunk, never delivered */
  r->end_seg = g;
  r->stream_state = 2;
  return stream_finish(r, 0);
}

int pmu_respond_abort(pmu_request_t *request) {
  pmu__req_t *r = (pmu__req_t *)request;
  if (r->stream_state != 1)
    return -EINVAL;
  r->stream_state = 2;
  return stream_finish(r, 1);
}

size_t pmu_request_unsent(const pmu_request_t *request) {
  return atomic_load(&((const pmu__req_t *)request)->unsent);
}

int pmu_request_gone(const pmu_request_t *request) {
  return atomic_load(&((const pmu__req_t *)request)->gone);
}

int pmu_request_peer_eof(const pmu_request_t *request) {
  return atomic_load(&((const pmu__req_t *)request)->peer_eof) != 0;
}

int pmu_request_wait_drain(pmu_request_t *request) {
  pmu__req_t *r = (pmu__req_t *)request;
  if (atomic_load(&r->gone))
    return -EPIPE;
  atomic_store(&r->want_drain, 1);
  if (atomic_load(&r->unsent) <= r->loop->server->cfg.output_high_water / 2 &&
      atomic_exchange(&r->want_drain, 0))
    return 0;
  return 1;
}
