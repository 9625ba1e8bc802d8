/*
 * ws.c: WebSocket (RFC 6455) on the engine's rings. The handshake (detected
 * by the HTTP glue, accepted with a 101), the frame parser fed from the same
 * receives as llhttp, the events gathered per pass and handed to
 * config.ws_handler in one call, and the frames sent through the
 * connection's output queue and its one send in flight.
 *
 * Threads: a pmu_ws_t is shared. Its loop side (parser, output queue,
 * timers) is touched only on its loop's thread; other threads reach it
 * through the loop's stream queue (pmu__seg_deliver), as streamed answers
 * do: frames and commands (pause, resume, release) are pmu__seg_t pieces,
 * applied in the order given. What any thread may read is atomic: refs,
 * closing, unsent, want_drain.
 *
 * Lifetime: two references, the engine's and the handler's. The engine's
 * is dropped once PMU_WS_EV_GONE has been delivered (or the loop exited);
 * the handler's by pmu_ws_release(). Each handle also holds a reference on
 * the server, so that a release after pmu_server_destroy() still finds the
 * loop's queue (which then frees it directly).
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ws_codec.h"

/* ---- SHA-1 and base64, for Sec-WebSocket-Accept (RFC 6455 4.2.2) ---- */

/* One 60-byte input per handshake: a plain SHA-1 (FIPS 180-4) is enough,
 * and needs no crypto library. */
typedef struct {
  uint32_t h[5];
  uint64_t len;
  uint8_t buf[64];
  size_t n;
} sha1_t;

static uint32_t rol(uint32_t x, int k) { return x << k | x >> (32 - k); }

static void sha1_block(sha1_t *s, const uint8_t *p) {
  uint32_t w[80];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
           p[4 * i + 3];
  for (int i = 16; i < 80; i++)
    w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
  uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4];
  for (int i = 0; i < 80; i++) {
    uint32_t f, k;
    if (i < 20) {
      f = (b & c) | (~b & d);
      k = 0x5A827999;
    } else if (i < 40) {
      f = b ^ c ^ d;
      k = 0x6ED9EBA1;
    } else if (i < 60) {
      f = (b & c) | (b & d) | (c & d);
      k = 0x8F1BBCDC;
    } else {
      f = b ^ c ^ d;
      k = 0xCA62C1D6;
    }
    uint32_t t = rol(a, 5) + f + e + k + w[i];
    e = d;
    d = c;
    c = rol(b, 30);
    b = a;
    a = t;
  }
  s->h[0] += a;
  s->h[1] += b;
  s->h[2] += c;
  s->h[3] += d;
  s->h[4] += e;
}

static void sha1_init(sha1_t *s) {
  static const uint32_t h0[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
  memcpy(s->h, h0, sizeof h0);
  s->len = 0;
  s->n = 0;
}

static void sha1_update(sha1_t *s, const void *data, size_t len) {
  const uint8_t *p = data;
  s->len += len;
  while (len) {
    size_t take = 64 - s->n < len ? 64 - s->n : len;
    memcpy(s->buf + s->n, p, take);
    s->n += take;
    p += take;
    len -= take;
    if (s->n == 64) {
      sha1_block(s, s->buf);
      s->n = 0;
    }
  }
}

static void sha1_final(sha1_t *s, uint8_t out[20]) {
  uint64_t bits = s->len * 8;
  uint8_t pad = 0x80;
  sha1_update(s, &pad, 1);
  pad = 0;
  while (s->n != 56)
    sha1_update(s, &pad, 1);
  uint8_t lenb[8];
  for (int i = 0; i < 8; i++)
    lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
  sha1_update(s, lenb, 8);
  for (int i = 0; i < 5; i++) {
    out[4 * i] = (uint8_t)(s->h[i] >> 24);
    out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
    out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
    out[4 * i + 3] = (uint8_t)s->h[i];
  }
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void pmu_ws_accept_key(const char *key, size_t key_len, char out[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  sha1_t s;
  uint8_t d[21];
  sha1_init(&s);
  sha1_update(&s, key, key_len);
  sha1_update(&s, guid, sizeof guid - 1);
  sha1_final(&s, d);
  d[20] = 0;
  char *o = out;
  for (int i = 0; i < 21; i += 3) {
    uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)(i + 1 < 21 ? d[i + 1] : 0) << 8 |
                 (i + 2 < 21 ? d[i + 2] : 0);
    *o++ = b64[v >> 18 & 63];
    *o++ = b64[v >> 12 & 63];
    *o++ = b64[v >> 6 & 63];
    *o++ = b64[v & 63];
  }
  out[27] = '='; /* 20 bytes are 27 digits and one pad */
  out[28] = 0;
}

/* ---- the handle ---- */

/* What a queued frame is (pmu__seg_t.flags). */
enum pmu__ws_seg_flag {
  WSF_MESSAGE = 1,     /* a data message (counted in ws_messages_out) */
  WSF_CLOSE = 2,       /* a close frame: nothing goes after it */
  WSF_CLOSE_AFTER = 4, /* close the connection once it is on the wire */
  WSF_LINGER = 8,      /* ... through a lingering close (input may be unread) */
  WSF_SHARED = 16,     /* a broadcast message's frame (ctx is the pmu_ws_msg_t) */
  WSF_CONTROL = 32,    /* a ping or pong */
};

struct pmu_ws_msg {
  atomic_long refs;
  uint8_t opcode;
  size_t payload_len;
  size_t frame_len;
  char frame[]; /* header and payload, as sent */
};

struct pmu_ws {
  /* Fixed at accept, read by any thread. */
  pmu__loop_t *loop;
  pmu_server_t *server;
  uint64_t conn_id;
  unsigned thread;
  char *ext; /* the negotiated extension ("" when none; owned when not) */
  void *user;

  /* Shared. */
  atomic_int refs;        /* the engine's (until GONE is delivered) and the handler's */
  atomic_int closing;     /* a close frame was queued or received, or gone: sends refused */
  atomic_size_t unsent;   /* bytes of frames queued and not on the wire */
  atomic_int want_drain;  /* a send returned 1: DRAIN when unsent falls to half */
  pmu__seg_t release_seg; /* pmu_ws_release's command: it needs no memory */

  /* Loop side. */
  pmu__conn_t *conn; /* NULL once gone */
  pmu__seg_t *out_head, *out_tail;
  pmu__ws_t *gone_next; /* loop->ws_gone: GONE to deliver */
  pmu__ws_t *fail_next; /* loop->ws_fail: our failing or answering close to send */
  uint16_t fail_code;
  uint8_t close_sent;   /* our close frame is queued: no data frame after it */
  uint8_t close_wired;  /* ... and on the wire */
  uint8_t close_rcvd;   /* the peer's close frame arrived: nothing more is read */
  uint8_t failed;       /* we failed the connection: input is discarded */
  uint8_t listed;       /* on loop->ws_fail */
  uint8_t answer_close; /* the peer's close awaits our answer, sent after this pass's
                           delivery (the handler's answers to what came before it go
                           first, RFC 6455 5.5.1) */
  uint8_t handler_done; /* pmu_ws_release came: no more events */
  uint8_t ping_out;     /* our keepalive ping awaits any frame */
  uint8_t user_paused;  /* pmu_ws_pause_reading */
  uint8_t gone;
  uint8_t deflate;    /* permessage-deflate was negotiated */
  pmu__ws_pmd_t *pmd; /* its state (loop side once accepted); NULL without */
  uint16_t peer_code; /* the code of the peer's close frame (1005: none) */
  uint16_t our_code;  /* the code of ours (0: none yet) */

  /* The frame parser. */
  uint8_t hbuf[14]; /* a frame header split across receives */
  uint8_t hlen;
  uint8_t in_payload; /* a header was read; its payload is being read */
  uint8_t op, fin, rsv1;
  uint8_t key[4];
  uint64_t plen, pgot;
  uint8_t msg_op;       /* TEXT or BINARY of the message being read, 0 between */
  uint8_t msg_deflated; /* its first frame had RSV1 */
  char *msg;            /* a message spanning frames or receives; NULL between */
  size_t msg_len, msg_cap;
  pmu__utf8_t utf8;
  char ctl[125]; /* a control frame's payload */

  pmu__list_t idle_link; /* loop->timers[TIMER_WS_IDLE] */
  uint64_t idle_deadline;
};

/* Where an event's data is: at off in the pass's arena, or in owned. */
struct pmu__ws_evx {
  size_t off;
  char *owned;
};

static const pmu_config_t *cfg_of(const pmu__ws_t *ws) { return &ws->server->cfg; }

static void pmd_drop(pmu__ws_t *ws) {
  if (ws->pmd) {
    pmu__ws_pmd_free(ws->pmd);
    free(ws->pmd);
    ws->pmd = NULL;
  }
}

static void ws_free(pmu__ws_t *ws) {
  pmu_server_t *s = ws->server;
  pmd_drop(ws);
  if (ws->ext && ws->ext[0])
    free(ws->ext);
  free(ws->msg);
  free(ws);
  pmu__server_unref(s);
}

static void ws_unref(pmu__ws_t *ws) {
  if (atomic_fetch_sub(&ws->refs, 1) == 1)
    ws_free(ws);
}

/* ---- events ---- */

/* Room for len bytes of event data in this pass's arena; *off says where
 * (the arena may move as it grows: events keep offsets). */
static char *arena_reserve(pmu__loop_t *loop, size_t len, size_t *off) {
  if (pmu__grow(&loop->ws_arena, &loop->ws_arena_cap, loop->ws_arena_len + len, 16384) < 0)
    return NULL;
  *off = loop->ws_arena_len;
  loop->ws_arena_len += len;
  return loop->ws_arena + *off;
}

/* Record an event whose data is in the arena at off, or in owned (freed
 * after the handler call). Returns 0 or -ENOMEM (owned is then the caller's). */
static int ev_push(pmu__ws_t *ws, int type, int opcode, int code, size_t off, size_t len,
                   char *owned) {
  pmu__loop_t *loop = ws->loop;
  if (loop->ws_nevs == loop->ws_evcap) {
    size_t cap = loop->ws_evcap ? loop->ws_evcap * 2 : 64;
    pmu_ws_event_t *a = realloc(loop->ws_evs, cap * sizeof *a);
    if (!a)
      return -ENOMEM;
    loop->ws_evs = a;
    struct pmu__ws_evx *x = realloc(loop->ws_evx, cap * sizeof *x);
    if (!x)
      return -ENOMEM; /* the first array keeps its new size: harmless */
    loop->ws_evx = x;
    loop->ws_evcap = cap;
  }
  size_t i = loop->ws_nevs++;
  loop->ws_evs[i] = (pmu_ws_event_t){.ws = ws,
                                     .type = (uint8_t)type,
                                     .opcode = (uint8_t)opcode,
                                     .code = (uint16_t)code,
                                     .len = len};
  loop->ws_evx[i].off = off;
  loop->ws_evx[i].owned = owned;
  return 0;
}

/* An event with a copy of data. */
static int ev_push_copy(pmu__ws_t *ws, int type, int code, const char *data, size_t len) {
  size_t off = 0;
  char *p = len ? arena_reserve(ws->loop, len, &off) : NULL;
  if (len && !p)
    return -ENOMEM;
  if (len)
    memcpy(p, data, len);
  return ev_push(ws, type, 0, code, off, len, NULL);
}

/* Handler calls over arr[0, count): PMU__DELIVER_BATCHES. */
static void deliver_events(pmu__loop_t *loop, pmu_ws_event_t *arr, size_t count) {
  const pmu_config_t *cfg = &loop->server->cfg;
#define RELEASED(ev) ((ev).ws->handler_done)
#define CALL(evs, n)                                          \
  do {                                                        \
    cfg->ws_handler(cfg->handler_data, evs, n);               \
    pmu__handler_returned(loop, PMU_SLOW_WS_EVENTS, NULL, 0); \
  } while (0)
  PMU__DELIVER_BATCHES(loop, arr, count, RELEASED, CALL);
#undef RELEASED
#undef CALL
}

/* Send the closes of the connections failed in this pass. */
static void send_fails(pmu__loop_t *loop);

void pmu__ws_dispatch(pmu__loop_t *loop) {
  if (loop->ws_dispatching || (!loop->ws_nevs && !loop->ws_gone && !loop->ws_fail))
    return;
  loop->ws_dispatching = 1;
  /* Take this pass's events: what the handler causes goes to the next. */
  pmu_ws_event_t *evs = loop->ws_evs;
  struct pmu__ws_evx *evx = loop->ws_evx;
  size_t nevs = loop->ws_nevs, evcap = loop->ws_evcap;
  char *arena = loop->ws_arena;
  size_t arena_cap = loop->ws_arena_cap;
  pmu__ws_t *gone = loop->ws_gone;
  loop->ws_evs = NULL;
  loop->ws_evx = NULL;
  loop->ws_nevs = loop->ws_evcap = 0;
  loop->ws_arena = NULL;
  loop->ws_arena_len = loop->ws_arena_cap = 0;
  loop->ws_gone = NULL;
  pmu__ws_t *rev = NULL; /* the order the connections closed in */
  while (gone) {
    pmu__ws_t *next = gone->gone_next;
    gone->gone_next = rev;
    rev = gone;
    gone = next;
  }
  gone = rev;

  for (size_t i = 0; i < nevs; i++)
    evs[i].data = evx[i].owned ? evx[i].owned : evs[i].len ? arena + evx[i].off : NULL;
  if (nevs)
    deliver_events(loop, evs, nevs);
  for (size_t i = 0; i < nevs; i++)
    free(evx[i].owned); /* a message's buffer, released after delivery */
  send_fails(loop);     /* before any GONE: the handles are still alive */

  /* GONE last, from a small array on the stack: it never needs memory. */
  while (gone) {
    pmu_ws_event_t batch[64];
    pmu__ws_t *list[64];
    size_t n = 0;
    for (; gone && n < 64; n++) {
      list[n] = gone;
      batch[n] = (pmu_ws_event_t){
          .ws = gone, .type = PMU_WS_EV_GONE, .code = gone->close_rcvd ? gone->peer_code : 1006};
      gone = gone->gone_next;
    }
    deliver_events(loop, batch, n);
    for (size_t i = 0; i < n; i++)
      ws_unref(list[i]); /* the engine's reference */
  }

  /* Keep the arrays for the next pass unless the handler's doings made new
   * ones; a big arena is not kept. */
  if (!loop->ws_evs && evs) {
    loop->ws_evs = evs;
    loop->ws_evx = evx;
    loop->ws_evcap = evcap;
  } else {
    free(evs);
    free(evx);
  }
  if (!loop->ws_arena && arena && arena_cap <= (1u << 20)) {
    loop->ws_arena = arena;
    loop->ws_arena_cap = arena_cap;
  } else {
    free(arena);
  }
  loop->ws_dispatching = 0;
}

void pmu__ws_loop_exit(pmu__loop_t *loop) {
  /* Events no handler will see any more (the thread is stopping). */
  for (size_t i = 0; i < loop->ws_nevs; i++)
    free(loop->ws_evx[i].owned);
  while (loop->ws_gone) {
    pmu__ws_t *ws = loop->ws_gone;
    loop->ws_gone = ws->gone_next;
    ws_unref(ws);
  }
  free(loop->ws_evs);
  free(loop->ws_evx);
  free(loop->ws_arena);
  loop->ws_fail = NULL;
  if (loop->ws_shared) {
    pmu__ws_pmd_shared_free(loop->ws_shared);
    free(loop->ws_shared);
    loop->ws_shared = NULL;
  }
  loop->ws_evs = NULL;
  loop->ws_evx = NULL;
  loop->ws_arena = NULL;
  loop->ws_nevs = loop->ws_evcap = loop->ws_arena_len = loop->ws_arena_cap = 0;
}

/* ---- the handshake ---- */

static int token_in_list(const char *v, size_t n, const char *tok) {
  size_t tn = strlen(tok);
  const char *end = v + n;
  while (v < end) {
    while (v < end && (*v == ' ' || *v == '\t' || *v == ','))
      v++;
    const char *t = v;
    while (v < end && *v != ',')
      v++;
    const char *e = v;
    while (e > t && (e[-1] == ' ' || e[-1] == '\t'))
      e--;
    if ((size_t)(e - t) == tn && strncasecmp(t, tok, tn) == 0)
      return 1;
  }
  return 0;
}

static int is_b64(char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
         ch == '+' || ch == '/';
}

/* A Sec-WebSocket-Key: 16 bytes in base64, so 22 characters and "==". */
static int key_valid(const pmu_header_t *h) {
  if (!h || h->value_len != 24 || h->value[22] != '=' || h->value[23] != '=')
    return 0;
  for (int i = 0; i < 22; i++)
    if (!is_b64(h->value[i]))
      return 0;
  /* The last character carries 2 bits of data: the other 4 are zero. */
  return strchr("AQgw", h->value[21]) != NULL;
}

/* The only header of this name (NULL when absent or repeated). */
static const pmu_header_t *only_header(const pmu_request_t *q, const char *name) {
  const pmu_header_t *found = NULL;
  size_t n = strlen(name);
  for (size_t i = 0; i < q->header_count; i++) {
    const pmu_header_t *h = &q->headers[i];
    if (h->name_len == n && strncasecmp(h->name, name, n) == 0) {
      if (found)
        return NULL;
      found = h;
    }
  }
  return found;
}

/* Any header of this name has the token. */
static int headers_have_token(const pmu_request_t *q, const char *name, const char *tok) {
  size_t n = strlen(name);
  for (size_t i = 0; i < q->header_count; i++) {
    const pmu_header_t *h = &q->headers[i];
    if (h->name_len == n && strncasecmp(h->name, name, n) == 0 &&
        token_in_list(h->value, h->value_len, tok))
      return 1;
  }
  return 0;
}

int pmu__ws_check_handshake(pmu__req_t *r) {
  pmu_request_t *q = &r->pub;
  if (!headers_have_token(q, "upgrade", "websocket"))
    return 0;
  if (q->method_len != 3 || memcmp(q->method, "GET", 3) != 0 || q->http_major != 1 ||
      q->http_minor < 1 || !headers_have_token(q, "connection", "upgrade") ||
      !key_valid(only_header(q, "sec-websocket-key")))
    return 0; /* not a handshake: the application decides */
  const pmu_header_t *v = only_header(q, "sec-websocket-version");
  if (!v || v->value_len != 2 || memcmp(v->value, "13", 2) != 0)
    return 426;
  q->ws_upgrade = 1;
  return 0;
}

void pmu__ws_answer_426(pmu__req_t *r) {
  static const pmu_header_t hs[] = {
      {"Sec-WebSocket-Version", 21, "13", 2},
      {"Content-Type", 12, "text/plain; charset=utf-8", 25},
  };
  static const char body[] = "Upgrade Required\n";
  pmu_response_t resp = {
      .status = 426, .headers = hs, .header_count = 2, .body = body, .body_len = sizeof body - 1};
  r->pub.keep_alive = 0;
  pmu__serialize(r, &resp, 1);
  r->answered = 1;
  STAT_ADD(r->loop, status_classes[4], 1);
  STAT_ADD(r->loop, responses, 1);
}

static int name_is(const pmu_header_t *h, const char *lit) {
  size_t n = strlen(lit);
  return h->name_len == n && strncasecmp(h->name, lit, n) == 0;
}

/* Headers of the 101 that the engine writes itself. */
static int engine_header(const pmu_header_t *h) {
  return name_is(h, "upgrade") || name_is(h, "connection") || name_is(h, "content-length") ||
         name_is(h, "transfer-encoding") ||
         (h->name_len >= 14 && strncasecmp(h->name, "sec-websocket-", 14) == 0);
}

#define PUT(p, s, n)       \
  do {                     \
    memcpy((p), (s), (n)); \
    (p) += (n);            \
  } while (0)
#define PUT_LIT(p, lit) PUT(p, lit, sizeof(lit) - 1)

/* The 101 into r->out. Returns 0 or -ENOMEM. */
static int write_101(pmu__req_t *r, const pmu_ws_accept_t *o, const char *ext, int on_loop) {
  pmu__loop_t *loop = r->loop;
  pmu_server_t *s = loop->server;
  const pmu_header_t *key = only_header(&r->pub, "sec-websocket-key");
  char accept[29];
  pmu_ws_accept_key(key->value, key->value_len, accept);
  size_t ext_len = strlen(ext);
  size_t proto_len = o && o->subprotocol ? o->subprotocol_len : 0;
  /* 230 bytes of fixed text at most: status line, Upgrade, Connection, Accept,
   * the names of Protocol, Extensions and Server, Date, the blank line. */
  size_t need = 256 + proto_len + ext_len + s->server_header_len + s->extra_headers_len;
  int user_server = 0, user_date = 0;
  for (size_t i = 0; o && i < o->header_count; i++) {
    need += o->headers[i].name_len + o->headers[i].value_len + 4;
    user_server |= name_is(&o->headers[i], "server");
    user_date |= name_is(&o->headers[i], "date");
  }
  if (pmu__grow(&r->out, &r->out_cap, need, 256) < 0)
    return -ENOMEM;
  char *p = r->out;
  PUT_LIT(p, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Accept: ");
  PUT(p, accept, 28);
  PUT_LIT(p, "\r\n");
  if (proto_len) {
    PUT_LIT(p, "Sec-WebSocket-Protocol: ");
    PUT(p, o->subprotocol, proto_len);
    PUT_LIT(p, "\r\n");
  }
  if (ext_len) {
    PUT_LIT(p, "Sec-WebSocket-Extensions: ");
    PUT(p, ext, ext_len);
    PUT_LIT(p, "\r\n");
  }
  for (size_t i = 0; o && i < o->header_count; i++) {
    const pmu_header_t *h = &o->headers[i];
    if (engine_header(h))
      continue;
    PUT(p, h->name, h->name_len);
    PUT_LIT(p, ": ");
    PUT(p, h->value, h->value_len);
    PUT_LIT(p, "\r\n");
  }
  if (s->extra_headers_len)
    PUT(p, s->extra_headers, s->extra_headers_len);
  if (!user_server && !s->extra_server && s->server_header_len) {
    PUT_LIT(p, "Server: ");
    PUT(p, s->server_header, s->server_header_len);
    PUT_LIT(p, "\r\n");
  }
  if (!user_date && !s->extra_date && s->cfg.date_header) {
    const char *date = on_loop ? loop->date : pmu__date_now();
    PUT_LIT(p, "Date: ");
    PUT(p, date, 29);
    PUT_LIT(p, "\r\n");
  }
  PUT_LIT(p, "\r\n");
  r->out_len = (size_t)(p - r->out);
  r->ext_body = NULL;
  r->ext_len = 0;
  r->close_after = 0;
  r->status_class = 1;
  return 0;
}

static pmu__ws_pmd_config_t pmd_config(const pmu_config_t *cfg) {
  pmu__ws_pmd_config_t pc = {.enabled = (uint8_t)(cfg->ws_deflate != 0),
                             .window_bits = (uint8_t)cfg->ws_deflate_window_bits,
                             .mem_level = (uint8_t)cfg->ws_deflate_mem_level,
                             .no_context_takeover =
                                 (uint8_t)(cfg->ws_deflate_no_context_takeover != 0)};
  return pc;
}

/* The loop's streams shared by connections without context takeover, made
 * on first need. NULL on ENOMEM. */
static pmu__ws_pmd_shared_t *loop_shared(pmu__loop_t *loop) {
  if (!loop->ws_shared) {
    pmu__ws_pmd_shared_t *sh = malloc(sizeof *sh);
    if (!sh)
      return NULL;
    pmu__ws_pmd_config_t pc = pmd_config(&loop->server->cfg);
    pmu__ws_pmd_shared_init(sh, &pc);
    loop->ws_shared = sh;
  }
  return loop->ws_shared;
}

static void answer_error(pmu_request_t *q, int status) {
  static const pmu_header_t ct = {"Content-Type", 12, "text/plain; charset=utf-8", 25};
  const char *reason = pmu_status_reason(status);
  char body[64];
  size_t n = strlen(reason);
  memcpy(body, reason, n);
  body[n++] = '\n';
  pmu_respond_simple(q, status, &ct, 1, body, n);
}

pmu_ws_t *pmu_ws_accept(pmu_request_t *request, const pmu_ws_accept_t *opts) {
  pmu__req_t *r = (pmu__req_t *)request;
  pmu__loop_t *loop = r->loop;
  pmu_server_t *s = loop->server;
  int ok = request->ws_upgrade && s->cfg.ws_handler && !r->stream_state;
  if (ok && opts && opts->subprotocol && opts->subprotocol_len) {
    pmu_header_t h = {"Sec-WebSocket-Protocol", 22, opts->subprotocol, opts->subprotocol_len};
    ok = pmu__header_safe(&h);
  }
  for (size_t i = 0; ok && opts && i < opts->header_count; i++)
    ok = pmu__header_safe(&opts->headers[i]);
  if (!ok) {
    if (!r->stream_state)
      answer_error(request, 500);
    errno = EINVAL;
    return NULL;
  }
  pmu__ws_t *ws = calloc(1, sizeof *ws);
  if (!ws) {
    answer_error(request, 503);
    errno = ENOMEM;
    return NULL;
  }
  ws->loop = loop;
  ws->server = s;
  ws->conn_id = request->conn_id;
  ws->thread = request->thread;
  ws->ext = "";
  ws->user = opts ? opts->user : NULL;
  ws->peer_code = 1005;
  atomic_init(&ws->refs, 2);
  atomic_init(&ws->closing, 0);
  atomic_init(&ws->unsent, 0);
  atomic_init(&ws->want_drain, 0);
  ws->release_seg.ws = ws;
  ws->release_seg.kind = SEG_WS_RELEASE;
  pmu__ws_pmd_config_t pc = pmd_config(&s->cfg);
  pmu__ws_pmd_params_t params;
  if (pmu__ws_pmd_negotiate(&pc, request->headers, request->header_count, &params)) {
    char ext[PMU__WS_PMD_RESPONSE_MAX];
    pmu__ws_pmd_format(&params, ext, sizeof ext);
    ws->pmd = malloc(sizeof *ws->pmd);
    ws->ext = ws->pmd ? strdup(ext) : NULL;
    if (!ws->ext) {
      free(ws->pmd);
      free(ws);
      answer_error(request, 503);
      errno = ENOMEM;
      return NULL;
    }
    /* The loop's shared streams are attached on its thread (accept_arrived). */
    pmu__ws_pmd_init(ws->pmd, &params, &pc, NULL);
    ws->deflate = 1;
  }
  int on_loop = pmu__current_loop == loop;
  if (write_101(r, opts, ws->ext, on_loop) < 0) {
    pmd_drop(ws);
    if (ws->ext[0])
      free(ws->ext);
    free(ws);
    answer_error(request, 503);
    errno = ENOMEM;
    return NULL;
  }
  atomic_fetch_add(&s->refs, 1); /* the handle keeps the server */
  r->ws = ws;
  if (r->h)
    pmu__connh_set_ws(r->h); /* pmu_conn_send refuses it from now on */
  if (on_loop)
    pmu__answer_arrived(r);
  else
    pmu__hand_over(r);
  return ws;
}

/* ---- frames out ---- */

/* The header of a server frame (never masked) into out; returns its length. */
static uint8_t frame_header(uint8_t *out, int b0, uint64_t len) {
  out[0] = (uint8_t)b0;
  if (len < 126) {
    out[1] = (uint8_t)len;
    return 2;
  }
  if (len <= 0xFFFF) {
    out[1] = 126;
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    return 4;
  }
  out[1] = 127;
  for (int i = 0; i < 8; i++)
    out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
  return 10;
}

/* A frame to send: header in pre, the payload copied unless release is
 * given. NULL on ENOMEM. */
static pmu__seg_t *frame_new(pmu__ws_t *ws, int b0, const void *data, size_t len,
                             void (*release)(void *), void *ctx, int flags) {
  pmu__seg_t *g = pmu__seg_alloc(SEG_WS_FRAME, data, len, release, ctx);
  if (!g)
    return NULL;
  g->ws = ws;
  g->flags = (uint8_t)flags;
  g->pre_len = frame_header((uint8_t *)g->pre, b0, len);
  g->body = pmu__seg_size(g);
  return g;
}

static void drain_check(pmu__ws_t *ws) {
  const pmu_config_t *cfg = cfg_of(ws);
  if (atomic_load(&ws->want_drain) && atomic_load(&ws->unsent) <= cfg->ws_send_high_water / 2 &&
      !ws->gone && atomic_exchange(&ws->want_drain, 0))
    ev_push(ws, PMU_WS_EV_DRAIN, 0, 0, 0, 0, NULL);
}

/* A frame leaves (sent or dropped): settle its accounting and free it. */
static void frame_done(pmu__seg_t *g) {
  pmu__ws_t *ws = g->ws;
  if (g->body)
    atomic_fetch_sub(&ws->unsent, g->body);
  if (g->release)
    g->release(g->ctx);
  free(g);
}

static void idle_touch(pmu__ws_t *ws) {
  pmu__loop_t *loop = ws->loop;
  if (!loop->timeout_ms[TIMER_WS_IDLE] || ws->gone)
    return;
  if (pmu__list_is_linked(&ws->idle_link))
    pmu__list_unlink(&ws->idle_link);
  ws->idle_deadline = loop->now_ms + loop->timeout_ms[TIMER_WS_IDLE];
  pmu__list_insert_tail(&loop->timers[TIMER_WS_IDLE], &ws->idle_link);
}

/* Queue a frame on the connection (loop thread). */
static void queue_frame(pmu__conn_t *c, pmu__seg_t *g) {
  pmu__ws_t *ws = c->ws;
  pmu__loop_t *loop = c->loop;
  g->next = NULL;
  if (ws->out_tail)
    ws->out_tail->next = g;
  else
    ws->out_head = g;
  ws->out_tail = g;
  c->out_queued += pmu__seg_size(g);
  STAT_ADD(loop, ws_frames_out, 1);
  if (g->flags & WSF_MESSAGE) {
    STAT_ADD(loop, ws_messages_out, 1);
    size_t payload = g->flags & WSF_SHARED ? ((pmu_ws_msg_t *)g->ctx)->payload_len
                     : g->raw_len          ? g->raw_len
                                           : g->len;
    STAT_ADD(loop, ws_bytes_out, payload);
    idle_touch(ws);
  }
  pmu__loop_mark_dirty(loop, c);
}

/* Send our close frame (loop thread): code 0 for none. echo: it answers the
 * peer's, the connection closes once it is out; fail: a protocol error. */
static void close_local(pmu__conn_t *c, int code, const char *reason, size_t rlen, int flags) {
  pmu__ws_t *ws = c->ws;
  if (ws->close_sent)
    return;
  atomic_store(&ws->closing, 1);
  uint8_t payload[125];
  size_t n = 0;
  if (code) {
    payload[0] = (uint8_t)(code >> 8);
    payload[1] = (uint8_t)code;
    if (rlen)
      memcpy(payload + 2, reason, rlen);
    n = 2 + rlen;
  }
  pmu__seg_t *g = frame_new(ws, 0x80 | PMU_WS_CLOSE, payload, n, NULL, NULL, WSF_CLOSE | flags);
  if (!g) {
    pmu__conn_close(c);
    return;
  }
  atomic_fetch_add(&ws->unsent, g->body);
  ws->close_sent = 1;
  ws->our_code = (uint16_t)(code ? code : 1005);
  queue_frame(c, g);
  pmu__conn_timer_update(c);
}

/* Put ws on the loop's list of closes to send after this pass's delivery. */
static void list_for_close(pmu__loop_t *loop, pmu__ws_t *ws) {
  if (ws->listed)
    return; /* once: twice would make the list a cycle */
  ws->listed = 1;
  ws->fail_next = loop->ws_fail;
  loop->ws_fail = ws;
}

/* Fail the connection (RFC 6455 7.1.7): our close with code, input
 * discarded from now on, the connection closed once it is out. */
static void ws_fail(pmu__conn_t *c, int code) {
  pmu__ws_t *ws = c->ws;
  if (ws->failed)
    return;
  ws->failed = 1;
  /* The close goes after the handler has seen the events before the error
   * (its answers to the messages that came whole go first): queued after
   * this pass's delivery. */
  ws->fail_code = (uint16_t)code;
  list_for_close(c->loop, ws);
}

static void send_fails(pmu__loop_t *loop) {
  while (loop->ws_fail) {
    pmu__ws_t *ws = loop->ws_fail;
    loop->ws_fail = ws->fail_next;
    ws->listed = 0;
    pmu__conn_t *c = ws->conn;
    int answer = ws->answer_close;
    ws->answer_close = 0;
    if (!c || c->closing)
      continue;
    if (!ws->failed) {
      /* The answer to the peer's close, echoing its code (none when it had
       * none); the server closes the TCP connection once it is out (RFC 6455
       * 7.1.1). A close of the handler's own queued meanwhile stands. */
      if (answer && !ws->close_sent)
        close_local(c, ws->peer_code == 1005 ? 0 : ws->peer_code, NULL, 0, WSF_CLOSE_AFTER);
      else if (answer)
        atomic_store(&ws->closing, 1);
      pmu__conn_timer_update(c);
      continue;
    }
    if (!ws->close_sent)
      close_local(c, ws->fail_code, NULL, 0, WSF_CLOSE_AFTER | WSF_LINGER);
    else if (ws->out_tail && (ws->out_tail->flags & WSF_CLOSE))
      ws->out_tail->flags |= WSF_CLOSE_AFTER | WSF_LINGER; /* the handler's close, still queued */
    else
      pmu__conn_close(c);
  }
}

static int valid_send_opcode(int op) {
  return op == PMU_WS_TEXT || op == PMU_WS_BINARY || op == PMU_WS_PING || op == PMU_WS_PONG;
}

/* A command for the loop (pause, resume, limit). Returns 0 or -ENOMEM. */
static int command(pmu__ws_t *ws, int kind) {
  pmu__seg_t *g = pmu__seg_alloc(kind, NULL, 0, NULL, NULL);
  if (!g)
    return -ENOMEM;
  g->ws = ws;
  pmu__seg_deliver(g, ws->loop);
  return 0;
}

/* Account a frame of `total` bytes about to be queued. Returns 0, 1 (over
 * the high water) or -ENOBUFS (over the limit: nothing counted, the loop is
 * told to act). */
static int reserve_unsent(pmu__ws_t *ws, size_t total) {
  const pmu_config_t *cfg = cfg_of(ws);
  int rc = pmu__unsent_reserve(&ws->unsent, &ws->want_drain, total, cfg->ws_send_high_water,
                               cfg->ws_send_limit);
  if (rc == -ENOBUFS)
    command(ws, SEG_WS_LIMIT);
  return rc;
}

int pmu_ws_send(pmu_ws_t *ws, int opcode, const void *data, size_t len, void (*release)(void *ctx),
                void *ctx) {
  int rc = 0;
  if (!valid_send_opcode(opcode))
    rc = -EINVAL;
  else if (opcode >= PMU_WS_CLOSE && len > 125)
    rc = -EMSGSIZE;
  else if (atomic_load(&ws->closing))
    rc = -EPIPE;
  if (rc < 0) {
    if (release)
      release(ctx);
    return rc;
  }
  int control = opcode >= PMU_WS_CLOSE;
  pmu__seg_t *g =
      frame_new(ws, 0x80 | opcode, data, len, release, ctx, control ? WSF_CONTROL : WSF_MESSAGE);
  if (!g) {
    if (release)
      release(ctx);
    return -ENOMEM;
  }
  rc = reserve_unsent(ws, g->body);
  if (rc < 0) {
    g->body = 0;
    frame_done(g);
    return rc;
  }
  pmu__seg_deliver(g, ws->loop);
  return rc;
}

pmu_ws_msg_t *pmu_ws_msg_new(int opcode, const void *data, size_t len) {
  if (opcode != PMU_WS_TEXT && opcode != PMU_WS_BINARY) {
    errno = EINVAL;
    return NULL;
  }
  pmu_ws_msg_t *m = malloc(sizeof *m + 10 + len);
  if (!m)
    return NULL;
  atomic_init(&m->refs, 1);
  m->opcode = (uint8_t)opcode;
  m->payload_len = len;
  uint8_t n = frame_header((uint8_t *)m->frame, 0x80 | opcode, len);
  if (len)
    memcpy(m->frame + n, data, len);
  m->frame_len = n + len;
  return m;
}

void pmu_ws_msg_release(pmu_ws_msg_t *m) {
  if (m && atomic_fetch_sub(&m->refs, 1) == 1)
    free(m);
}

static void msg_release(void *ctx) { pmu_ws_msg_release(ctx); }

int pmu_ws_send_msg(pmu_ws_t *ws, pmu_ws_msg_t *m) {
  if (atomic_load(&ws->closing))
    return -EPIPE;
  pmu__seg_t *g = malloc(sizeof *g);
  if (!g)
    return -ENOMEM;
  memset(g, 0, sizeof *g);
  g->ws = ws;
  g->kind = SEG_WS_FRAME;
  g->flags = WSF_MESSAGE | WSF_SHARED;
  g->data = m->frame; /* framed once, shared by every connection */
  g->len = m->frame_len;
  g->body = m->frame_len;
  int rc = reserve_unsent(ws, g->body);
  if (rc < 0) {
    free(g);
    return rc;
  }
  atomic_fetch_add(&m->refs, 1);
  g->release = msg_release;
  g->ctx = m;
  pmu__seg_deliver(g, ws->loop);
  return rc;
}

static int close_code_sendable(int code) {
  return code == 0 || (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
         (code >= 3000 && code <= 4999);
}

int pmu_ws_close(pmu_ws_t *ws, int code, const char *reason, size_t reason_len) {
  if (!close_code_sendable(code) || reason_len > 123 || (code == 0 && reason_len))
    return -EINVAL;
  if (atomic_exchange(&ws->closing, 1))
    return -EPIPE;
  uint8_t payload[125];
  size_t n = 0;
  if (code) {
    payload[0] = (uint8_t)(code >> 8);
    payload[1] = (uint8_t)code;
    if (reason_len)
      memcpy(payload + 2, reason, reason_len);
    n = 2 + reason_len;
  }
  pmu__seg_t *g = frame_new(ws, 0x80 | PMU_WS_CLOSE, payload, n, NULL, NULL, WSF_CLOSE);
  if (!g) {
    atomic_store(&ws->closing, 0);
    return -ENOMEM;
  }
  atomic_fetch_add(&ws->unsent, g->body);
  pmu__seg_deliver(g, ws->loop);
  return 0;
}

int pmu_ws_pause_reading(pmu_ws_t *ws, int pause) {
  return command(ws, pause ? SEG_WS_PAUSE : SEG_WS_RESUME);
}

size_t pmu_ws_unsent(const pmu_ws_t *ws) { return atomic_load(&ws->unsent); }
int pmu_ws_closing(const pmu_ws_t *ws) { return atomic_load(&ws->closing) != 0; }
void *pmu_ws_user(const pmu_ws_t *ws) { return ws->user; }
void pmu_ws_set_user(pmu_ws_t *ws, void *user) { ws->user = user; }
const char *pmu_ws_extensions(const pmu_ws_t *ws) { return ws->ext; }
uint64_t pmu_ws_conn_id(const pmu_ws_t *ws) { return ws->conn_id; }
unsigned pmu_ws_thread(const pmu_ws_t *ws) { return ws->thread; }

void pmu_ws_release(pmu_ws_t *ws) { pmu__seg_deliver(&ws->release_seg, ws->loop); }

/* ---- pieces reaching the loop ---- */

void pmu__ws_seg_dropped(pmu__seg_t *g) {
  pmu__ws_t *ws = g->ws;
  switch (g->kind) {
  case SEG_WS_FRAME: frame_done(g); break;
  case SEG_WS_RELEASE: ws_unref(ws); break; /* the handler's reference */
  default: free(g); break;
  }
}

/* Over ws_send_limit: drop what is unsent and close 1008, or drop the
 * connection (ws_send_limit_close). */
static void over_limit(pmu__conn_t *c) {
  pmu__ws_t *ws = c->ws;
  if (!cfg_of(ws)->ws_send_limit_close) {
    atomic_store(&ws->closing, 1); /* sends fail from now on */
    pmu__conn_close(c);
    return;
  }
  /* Frames not begun go; the one on the wire (partly sent) must finish. */
  pmu__seg_t **pp = &ws->out_head, *prev = NULL;
  if (*pp && (*pp)->sent) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  while (*pp) {
    pmu__seg_t *g = *pp;
    if (g->flags & WSF_CLOSE) {
      prev = g;
      pp = &g->next;
      continue;
    }
    *pp = g->next;
    c->out_queued -= pmu__seg_size(g);
    frame_done(g);
  }
  ws->out_tail = prev;
  close_local(c, 1008, "send limit", 10, WSF_CLOSE_AFTER | WSF_LINGER);
}

/* A message compressed on its loop, in order (the compressor's window is
 * the connection's): a new frame with RSV1 replaces g when it came out
 * smaller; else g goes as it is. NULL when the connection failed. */
static pmu__seg_t *compress_frame(pmu__conn_t *c, pmu__seg_t *g) {
  pmu__ws_t *ws = c->ws;
  size_t cap = g->len - 1; /* worth it only when smaller */
  pmu__seg_t *z = malloc(sizeof *z + cap);
  if (!z)
    return g;
  size_t out_len = 0;
  int rc = pmu__ws_pmd_compress(ws->pmd, (const uint8_t *)g->data, g->len,
                                (uint8_t *)z->inline_data, cap, &out_len);
  if (rc != 0) {
    free(z);
    if (rc == -EIO) {
      frame_done(g);
      ws_fail(c, 1011);
      return NULL;
    }
    return g; /* did not shrink, or no memory: uncompressed */
  }
  memset(z, 0, sizeof *z);
  z->ws = ws;
  z->kind = SEG_WS_FRAME;
  z->flags = g->flags;
  z->pre_len = frame_header((uint8_t *)z->pre, (uint8_t)g->pre[0] | 0x40, out_len);
  z->data = z->inline_data;
  z->len = out_len;
  z->body = pmu__seg_size(z);
  z->raw_len = g->len;
  atomic_fetch_add(&ws->unsent, z->body);
  STAT_ADD(c->loop, ws_deflate_out_raw, g->len);
  STAT_ADD(c->loop, ws_deflate_out_wire, out_len);
  frame_done(g); /* its bytes leave the count, the producer's data is released */
  return z;
}

void pmu__ws_seg_arrived(pmu__seg_t *g) {
  pmu__ws_t *ws = g->ws;
  pmu__conn_t *c = ws->conn;
  switch (g->kind) {
  case SEG_WS_RELEASE:
    ws->handler_done = 1;
    if (c && !ws->close_sent && !ws->close_rcvd)
      close_local(c, 1001, NULL, 0, 0);
    ws_unref(ws); /* the handler's reference */
    return;
  case SEG_WS_PAUSE:
  case SEG_WS_RESUME: {
    int pause = g->kind == SEG_WS_PAUSE;
    free(g);
    if (!c)
      return;
    ws->user_paused = (uint8_t)pause;
    if (ws->user_paused)
      pmu__conn_pause(c);
    else
      pmu__loop_schedule_resume(c->loop, c);
    return;
  }
  case SEG_WS_LIMIT:
    free(g);
    if (c && !ws->close_sent)
      over_limit(c);
    return;
  default: break;
  }
  /* A frame. Nothing goes after our close frame, nor on a gone connection. */
  if (!c || ws->close_sent || c->closing) {
    frame_done(g);
    drain_check(ws);
    return;
  }
  if (ws->pmd && (g->flags & WSF_MESSAGE) && !(g->flags & WSF_SHARED) &&
      g->len >= cfg_of(ws)->ws_deflate_min_size && g->len) {
    g = compress_frame(c, g);
    if (!g)
      return;
  }
  if (g->flags & WSF_CLOSE) {
    ws->close_sent = 1;
    ws->our_code = g->len >= 2 ? (uint16_t)((uint8_t)g->data[0] << 8 | (uint8_t)g->data[1]) : 1005;
    if (ws->close_rcvd)
      g->flags |= WSF_CLOSE_AFTER; /* both closes exchanged */
  }
  queue_frame(c, g);
  if (g->flags & WSF_CLOSE)
    pmu__conn_timer_update(c);
}

/* ---- the connection's output ---- */

int pmu__ws_gather(pmu__conn_t *c, int n, size_t *total) {
  pmu__ws_t *ws = c->ws;
  for (pmu__seg_t *g = ws->out_head; g && n < PMU__IOV_MAX - 1; g = g->next) {
    size_t skip = g->sent;
    const char *parts[2] = {g->pre, g->data};
    size_t lens[2] = {g->pre_len, g->len};
    for (int k = 0; k < 2; k++) {
      if (skip >= lens[k]) {
        skip -= lens[k];
        continue;
      }
      c->sb->iov[n].iov_base = (char *)parts[k] + skip;
      c->sb->iov[n].iov_len = lens[k] - skip;
      *total += lens[k] - skip;
      skip = 0;
      n++;
    }
  }
  return n;
}

int pmu__ws_consume(pmu__conn_t *c, size_t *left) {
  pmu__ws_t *ws = c->ws;
  int close_now = 0, linger_close = 0;
  while (ws->out_head && !close_now) {
    pmu__seg_t *g = ws->out_head;
    size_t rem = pmu__seg_size(g) - g->sent;
    if (rem > *left) {
      g->sent += *left;
      c->out_queued -= *left;
      *left = 0;
      break;
    }
    *left -= rem;
    c->out_queued -= rem;
    ws->out_head = g->next;
    if (!ws->out_head)
      ws->out_tail = NULL;
    if (g->flags & WSF_CLOSE) {
      ws->close_wired = 1;
      close_now = (g->flags & WSF_CLOSE_AFTER) != 0;
      linger_close = (g->flags & WSF_LINGER) != 0;
    }
    frame_done(g);
  }
  drain_check(ws);
  if (close_now && linger_close)
    c->linger_on_close = 1;
  return close_now;
}

/* ---- the frame parser ---- */

static size_t header_size(const uint8_t *h, size_t have) {
  if (have < 2)
    return 2;
  size_t n = 2 + ((h[1] & 0x80) ? 4 : 0);
  uint8_t l = h[1] & 0x7f;
  return n + (l == 126 ? 2 : l == 127 ? 8 : 0);
}

static int close_code_valid(unsigned code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
         (code >= 3000 && code <= 4999);
}

/* Read a frame header; 0, or the close code to fail with. */
static int frame_begin(pmu__conn_t *c, const uint8_t *h) {
  pmu__ws_t *ws = c->ws;
  const pmu_config_t *cfg = cfg_of(ws);
  uint8_t b0 = h[0], b1 = h[1];
  int op = b0 & 0x0F;
  uint64_t len = b1 & 0x7F;
  size_t k = 2;
  if (len == 126) {
    len = (uint64_t)h[2] << 8 | h[3];
    k = 4;
  } else if (len == 127) {
    len = 0;
    for (int i = 0; i < 8; i++)
      len = len << 8 | h[2 + i];
    k = 10;
    if (len >> 63)
      return 1002; /* the most significant bit must be 0 */
  }
  STAT_ADD(c->loop, ws_frames_in, 1);
  ws->ping_out = 0; /* any frame answers our keepalive ping */
  if (!(b1 & 0x80))
    return 1002; /* a client's frames are masked */
  if (b0 & 0x30)
    return 1002; /* RSV2, RSV3: no extension defines them */
  int rsv1 = (b0 & 0x40) != 0;
  if (op >= 8) {
    if (op > PMU_WS_PONG)
      return 1002;
    if (!(b0 & 0x80) || len > 125 || rsv1)
      return 1002; /* control frames: whole, short, never compressed */
  } else if (op > PMU_WS_BINARY) {
    return 1002;
  } else if (op == PMU_WS_CONT) {
    if (!ws->msg_op || rsv1)
      return 1002; /* a continuation with nothing to continue */
  } else {
    if (ws->msg_op)
      return 1002; /* a new message inside a fragmented one */
    if (rsv1 && !ws->deflate)
      return 1002; /* RSV1 without permessage-deflate */
  }
  if (op < 8) {
    if (cfg->ws_max_frame && len > cfg->ws_max_frame)
      return 1009;
    if (cfg->ws_max_message && ws->msg_len + len > cfg->ws_max_message)
      return 1009;
  }
  ws->op = (uint8_t)op;
  ws->fin = (b0 & 0x80) != 0;
  ws->rsv1 = (uint8_t)rsv1;
  memcpy(ws->key, h + k, 4);
  ws->plen = len;
  ws->pgot = 0;
  ws->in_payload = 1;
  if (op == PMU_WS_TEXT || op == PMU_WS_BINARY) {
    ws->msg_op = (uint8_t)op;
    ws->msg_deflated = (uint8_t)rsv1;
    ws->msg_len = 0;
    pmu__utf8_init(&ws->utf8);
  }
  return 0;
}

/* A whole control frame is in ws->ctl: act on it. 0, or a code to fail with. */
static int control_frame(pmu__conn_t *c) {
  pmu__ws_t *ws = c->ws;
  size_t n = (size_t)ws->plen;
  if (ws->op == PMU_WS_PING) {
    if (cfg_of(ws)->ws_auto_pong && !ws->close_sent) {
      pmu__seg_t *g = frame_new(ws, 0x80 | PMU_WS_PONG, ws->ctl, n, NULL, NULL, WSF_CONTROL);
      if (!g)
        return 1011;
      atomic_fetch_add(&ws->unsent, g->body);
      queue_frame(c, g);
    }
    return ev_push_copy(ws, PMU_WS_EV_PING, 0, ws->ctl, n) < 0 ? 1011 : 0;
  }
  if (ws->op == PMU_WS_PONG)
    return ev_push_copy(ws, PMU_WS_EV_PONG, 0, ws->ctl, n) < 0 ? 1011 : 0;
  /* CLOSE */
  unsigned code = 1005;
  if (n == 1)
    return 1002;
  if (n >= 2) {
    code = (unsigned)(uint8_t)ws->ctl[0] << 8 | (uint8_t)ws->ctl[1];
    if (!close_code_valid(code))
      return 1002;
    pmu__utf8_t u;
    pmu__utf8_init(&u);
    if (pmu__utf8_feed(&u, (const uint8_t *)ws->ctl + 2, n - 2) < 0 || !pmu__utf8_done(&u))
      return 1007;
  }
  ws->close_rcvd = 1;
  ws->peer_code = (uint16_t)code;
  if (ev_push_copy(ws, PMU_WS_EV_CLOSE, (int)code, n > 2 ? ws->ctl + 2 : NULL, n > 2 ? n - 2 : 0) <
      0) {
    atomic_store(&ws->closing, 1);
    pmu__conn_close(c);
    return 0;
  }
  if (!ws->close_sent) {
    /* Answered after this pass's delivery (send_fails), so that what the
     * handler sends in answer to the messages before the close still goes,
     * before our close (RFC 6455 5.5.1 lets an endpoint finish sending). */
    ws->answer_close = 1;
    list_for_close(c->loop, ws);
  } else if (ws->close_wired) {
    pmu__conn_close(c); /* both closes exchanged */
  } else if (ws->out_tail && (ws->out_tail->flags & WSF_CLOSE)) {
    ws->out_tail->flags |= WSF_CLOSE_AFTER; /* ours is still queued */
  }
  pmu__conn_timer_update(c);
  return 0;
}

/* A data frame's payload piece (len bytes at p, masked). Returns 0 or a
 * code to fail with. */
/* Inflate a whole compressed message (unmasked, len bytes at comp) and
 * deliver it; bounded by ws_max_message, so a bomb stops at the limit.
 * Returns 0 or the close code. */
static int inflate_message(pmu__conn_t *c, const char *comp, size_t len, int op) {
  pmu__ws_t *ws = c->ws;
  pmu__loop_t *loop = c->loop;
  struct iovec piece = {.iov_base = (void *)comp, .iov_len = len};
  pmu__ws_buf_t out = {0};
  int rc = pmu__ws_pmd_inflate(ws->pmd, &piece, 1, cfg_of(ws)->ws_max_message, &out);
  if (rc < 0) {
    free(out.data);
    return rc == -EMSGSIZE ? 1009 : rc == -EBADMSG ? 1007 : 1011;
  }
  if (op == PMU_WS_TEXT && !pmu__utf8_valid(out.data, out.len)) {
    free(out.data);
    return 1007;
  }
  STAT_ADD(loop, ws_deflate_in_wire, len);
  STAT_ADD(loop, ws_deflate_in_raw, out.len);
  STAT_ADD(loop, ws_messages_in, 1);
  STAT_ADD(loop, ws_bytes_in, out.len);
  idle_touch(ws);
  if (ev_push(ws, PMU_WS_EV_MESSAGE, op, 0, 0, out.len, (char *)out.data) < 0) {
    free(out.data);
    return 1011;
  }
  return 0;
}

static int data_piece(pmu__conn_t *c, const uint8_t *p, size_t len) {
  pmu__ws_t *ws = c->ws;
  pmu__loop_t *loop = c->loop;
  int text = ws->msg_op == PMU_WS_TEXT && !ws->msg_deflated;
  size_t phase = (size_t)(ws->pgot & 3);
  int whole = ws->fin && ws->op != PMU_WS_CONT && ws->pgot == 0 && len == ws->plen;
  if (whole && ws->msg_deflated) {
    /* A whole compressed message in one receive: unmasked into scratch
     * room at the arena's end, inflated from there, the room given back. */
    size_t off = 0;
    char *tmp = len ? arena_reserve(loop, len, &off) : NULL;
    if (len && !tmp)
      return 1011;
    pmu__ws_unmask((uint8_t *)tmp, p, len, ws->key, 0);
    ws->msg_op = 0;
    int code = inflate_message(c, tmp, len, ws->op);
    if (len)
      loop->ws_arena_len = off;
    return code;
  }
  if (whole) {
    /* A whole message in one receive: unmasked straight into the arena the
     * event points at (the copy and the unmasking are one pass). */
    size_t off = 0;
    char *dst = len ? arena_reserve(loop, len, &off) : NULL;
    if (len && !dst)
      return 1011;
    pmu__ws_unmask((uint8_t *)dst, p, len, ws->key, 0);
    if (text &&
        (pmu__utf8_feed(&ws->utf8, (const uint8_t *)dst, len) < 0 || !pmu__utf8_done(&ws->utf8)))
      return 1007;
    ws->msg_op = 0;
    STAT_ADD(loop, ws_messages_in, 1);
    STAT_ADD(loop, ws_bytes_in, len);
    idle_touch(ws);
    return ev_push(ws, PMU_WS_EV_MESSAGE, ws->op, 0, off, len, NULL) < 0 ? 1011 : 0;
  }
  /* Spanning receives or frames: the connection's message buffer, grown as
   * the bytes come (never ahead of them), bounded by ws_max_message. */
  if (len) {
    if (pmu__grow(&ws->msg, &ws->msg_cap, ws->msg_len + len, 4096) < 0)
      return 1011;
    uint8_t *dst = (uint8_t *)ws->msg + ws->msg_len;
    pmu__ws_unmask(dst, p, len, ws->key, phase);
    if (text && pmu__utf8_feed(&ws->utf8, dst, len) < 0)
      return 1007; /* fail fast: before the rest of the message comes */
    ws->msg_len += len;
  }
  return 0;
}

/* The end of a data frame: at the end of a message, deliver it. */
static int data_frame_end(pmu__conn_t *c) {
  pmu__ws_t *ws = c->ws;
  pmu__loop_t *loop = c->loop;
  if (!ws->fin || !ws->msg_op)
    return 0; /* more fragments to come (or delivered by the fast path) */
  char *buf = ws->msg;
  size_t len = ws->msg_len;
  if (ws->msg_deflated) {
    int op = ws->msg_op;
    int code = inflate_message(c, buf, len, op);
    if (code)
      return code;
    free(ws->msg); /* the compressed bytes: an idle connection holds none */
    ws->msg = NULL;
    ws->msg_cap = ws->msg_len = 0;
    ws->msg_op = 0;
    return 0;
  }
  if (ws->msg_op == PMU_WS_TEXT && !pmu__utf8_done(&ws->utf8))
    return 1007;
  int op = ws->msg_op;
  ws->msg = NULL; /* handed to the event: an idle connection holds none */
  ws->msg_cap = ws->msg_len = 0;
  ws->msg_op = 0;
  STAT_ADD(loop, ws_messages_in, 1);
  STAT_ADD(loop, ws_bytes_in, len);
  idle_touch(ws);
  if (ev_push(ws, PMU_WS_EV_MESSAGE, op, 0, 0, len, buf) < 0) {
    free(buf);
    return 1011;
  }
  return 0;
}

/* Parse received bytes as frames. Everything is consumed. */
static void ws_parse(pmu__conn_t *c, const uint8_t *p, size_t len) {
  pmu__ws_t *ws = c->ws;
  while (len && !ws->failed && !ws->close_rcvd && !c->closing) {
    int code = 0;
    if (!ws->in_payload) {
      const uint8_t *h;
      if (ws->hlen || len < header_size(p, len)) {
        /* A header split across receives: gather it in the spill area. */
        size_t need;
        while (ws->hlen < (need = header_size(ws->hbuf, ws->hlen)) && len) {
          size_t take = need - ws->hlen < len ? need - ws->hlen : len;
          memcpy(ws->hbuf + ws->hlen, p, take);
          ws->hlen = (uint8_t)(ws->hlen + take);
          p += take;
          len -= take;
        }
        if (ws->hlen < header_size(ws->hbuf, ws->hlen))
          return;
        h = ws->hbuf;
        ws->hlen = 0;
      } else {
        h = p;
        size_t n = header_size(p, len);
        p += n;
        len -= n;
      }
      code = frame_begin(c, h);
      if (code) {
        ws_fail(c, code);
        return;
      }
    } else {
      size_t take = ws->plen - ws->pgot < len ? (size_t)(ws->plen - ws->pgot) : len;
      if (ws->op >= 8) {
        pmu__ws_unmask((uint8_t *)ws->ctl + ws->pgot, p, take, ws->key, (size_t)(ws->pgot & 3));
      } else {
        code = data_piece(c, p, take);
      }
      ws->pgot += take;
      p += take;
      len -= take;
      if (code) {
        ws_fail(c, code);
        return;
      }
    }
    if (ws->in_payload && ws->pgot == ws->plen) {
      ws->in_payload = 0;
      if (ws->op >= 8) {
        code = control_frame(c);
      } else {
        if (ws->plen == 0 && ws->fin && ws->op != PMU_WS_CONT) {
          /* An empty whole message: the fast path with no bytes. */
          code = data_piece(c, p, 0);
        } else {
          code = data_frame_end(c);
        }
      }
      if (code) {
        ws_fail(c, code);
        return;
      }
    }
  }
}

void pmu__ws_on_recv(pmu__conn_t *c, const char *data, size_t len) {
  if (c->timer_kind == TIMER_WS_PING)
    pmu__conn_timer_set(c, TIMER_WS_PING); /* silent no more: the interval starts over */
  int was_out = c->ws->ping_out;
  ws_parse(c, (const uint8_t *)data, len);
  if (was_out && !c->ws->ping_out && !c->closing)
    pmu__conn_timer_update(c);
}

void pmu__ws_on_eof(pmu__conn_t *c) {
  pmu__ws_t *ws = c->ws;
  /* Our answer to the peer's close may still be on its way out: it closes
   * once sent. Otherwise nothing more can happen. */
  if (ws->close_rcvd && (ws->out_head || ws->answer_close) && !c->lingering)
    return;
  pmu__conn_close(c);
}

static void ws_take(pmu__conn_t *c, const char *data, size_t len) {
  ws_parse(c, (const uint8_t *)data, len);
}

/* Held by pmu_ws_pause_reading or by pmu_conn_pause_reading (the connection's handle). */
void pmu__ws_resume(pmu__conn_t *c) {
  pmu__conn_resume_unparsed(c, c->ws->user_paused || c->user_paused, ws_take);
}

/* ---- accept, release of the connection ---- */

static void push_gone(pmu__ws_t *ws) {
  pmu__loop_t *loop = ws->loop;
  ws->gone = 1;
  atomic_store(&ws->closing, 1);
  ws->gone_next = loop->ws_gone; /* reversed at dispatch */
  loop->ws_gone = ws;
}

void pmu__ws_accept_arrived(pmu__req_t *r) {
  pmu__ws_t *ws = r->ws;
  pmu__conn_t *c = r->conn;
  pmu__loop_t *loop = r->loop;
  r->ws = NULL;
  if (!c || c->closing || !c->upgrade_wait) {
    push_gone(ws); /* the client left before the answer */
    return;
  }
  if (ws->pmd && !(ws->pmd->shared = loop_shared(loop))) {
    push_gone(ws); /* no memory for the shared streams */
    pmu__conn_close(c);
    return;
  }
  c->upgrade_wait = 0;
  c->ws = ws;
  ws->conn = c;
  STAT_ADD(loop, ws_open, 1);
  STAT_ADD(loop, ws_accepted, 1);
  pmu__conn_timer_unlink(c); /* the HTTP timers stop, the WebSocket's start */
  pmu__conn_timer_update(c);
  idle_touch(ws);
  if (loop->stopping)
    close_local(c, 1001, NULL, 0, 0);
  pmu__loop_schedule_resume(loop, c); /* the bytes after the handshake are frames */
}

void pmu__ws_accept_dropped(pmu__req_t *r) {
  pmu__ws_t *ws = r->ws;
  r->ws = NULL;
  pmd_drop(ws);
  ws->gone = 1;
  atomic_store(&ws->closing, 1);
  ws_unref(ws); /* the engine's: no event will come, the loop is gone */
}

static unsigned close_class(unsigned code) {
  if (code == 1000)
    return 0;
  if (code == 1001)
    return 1;
  if (code == 1002 || code == 1003 || code == 1007)
    return 2;
  if (code == 1008 || code == 1009)
    return 3;
  if (code >= 1010 && code <= 1014)
    return 4;
  if (code == 1006)
    return 5;
  if (code >= 3000 && code <= 4999)
    return 6;
  return 7;
}

void pmu__ws_conn_released(pmu__conn_t *c) {
  pmu__ws_t *ws = c->ws;
  pmu__loop_t *loop = c->loop;
  c->ws = NULL;
  ws->conn = NULL;
  while (ws->out_head) {
    pmu__seg_t *g = ws->out_head;
    ws->out_head = g->next;
    frame_done(g);
  }
  ws->out_tail = NULL;
  free(ws->msg);
  ws->msg = NULL;
  ws->msg_len = ws->msg_cap = 0;
  pmd_drop(ws); /* its streams refer to the loop's shared ones */
  if (pmu__list_is_linked(&ws->idle_link))
    pmu__list_unlink(&ws->idle_link);
  STAT_ADD(loop, ws_open, -1);
  unsigned code = ws->close_rcvd ? ws->peer_code : ws->our_code ? ws->our_code : 1006;
  STAT_ADD(loop, ws_closes[close_class(code)], 1);
  push_gone(ws);
}

/* ---- timers ---- */

void pmu__ws_timer_update(pmu__conn_t *c) {
  pmu__ws_t *ws = c->ws;
  unsigned kind;
  if (c->lingering)
    kind = TIMER_LINGER;
  else if (ws->close_sent || ws->close_rcvd)
    kind = TIMER_WS_CLOSE;
  else if (c->paused)
    kind = TIMER_NONE; /* not reading: the peer's pong could not be seen */
  else if (ws->ping_out)
    kind = TIMER_WS_PONG;
  else
    kind = TIMER_WS_PING;
  if (kind != c->timer_kind)
    pmu__conn_timer_set(c, kind);
}

void pmu__ws_timer_fired(pmu__conn_t *c, unsigned kind) {
  pmu__ws_t *ws = c->ws;
  pmu__loop_t *loop = c->loop;
  if (!ws) {
    pmu__conn_close(c);
    return;
  }
  if (kind == TIMER_WS_PING && !ws->close_sent && !ws->close_rcvd) {
    pmu__seg_t *g = frame_new(ws, 0x80 | PMU_WS_PING, NULL, 0, NULL, NULL, WSF_CONTROL);
    if (g) {
      atomic_fetch_add(&ws->unsent, g->body);
      queue_frame(c, g);
      STAT_ADD(loop, ws_pings_sent, 1);
      ws->ping_out = loop->timeout_ms[TIMER_WS_PONG] != 0;
    }
    pmu__conn_timer_set(c, ws->ping_out ? TIMER_WS_PONG : TIMER_WS_PING);
    return;
  }
  STAT_ADD(loop, timeouts, 1);
  pmu__conn_close(c); /* no pong, no close answer: GONE 1006 */
}

void pmu__ws_expire_idle(pmu__loop_t *loop) {
  pmu__list_t *first;
  while ((first = pmu__list_first(&loop->timers[TIMER_WS_IDLE]))) {
    pmu__ws_t *ws = PMU__LIST_ENTRY(first, pmu__ws_t, idle_link);
    if (ws->idle_deadline > loop->now_ms)
      break;
    pmu__list_unlink(first);
    STAT_ADD(loop, timeouts, 1);
    if (ws->conn)
      close_local(ws->conn, 1001, "idle", 4, 0);
  }
}

uint64_t pmu__ws_next_idle(const pmu__loop_t *loop) {
  const pmu__list_t *first = pmu__list_first(&loop->timers[TIMER_WS_IDLE]);
  return first ? PMU__LIST_ENTRY(first, pmu__ws_t, idle_link)->idle_deadline : UINT64_MAX;
}

void pmu__ws_close_normal(pmu__conn_t *c) {
  pmu__ws_t *ws = c->ws;
  atomic_store(&ws->closing, 1); /* sends are refused from now on, as after pmu_ws_close */
  if (!ws->close_sent && !ws->close_rcvd)
    close_local(c, 1000, NULL, 0, 0);
}

void pmu__ws_going_away(pmu__conn_t *c) {
  pmu__ws_t *ws = c->ws;
  if (!ws->close_sent && !ws->close_rcvd)
    close_local(c, 1001, "going away", 10, 0);
}
