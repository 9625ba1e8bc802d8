/*
 * conn_events.c: connection handles (pmu_conn_t) for config.conn_handler. The
 * events of a connection's life (OPEN, DATA in raw mode, READ and SENT with
 * conn_io_events, DRAIN, CLOSE), gathered per pass and handed over in batches;
 * pmu_conn_send's bytes, placed in the connection's ordered output queue; and
 * the commands that reach the loop from any thread (close, pause, release).
 *
 * Threads: a pmu_conn_t is shared, as a pmu_ws_t is. Its loop side (conn,
 * the CLOSE list link) is touched only on its loop's thread; other threads
 * reach it through the loop's stream queue (pmu__seg_deliver) with pieces and
 * commands that keep the order they were given in. What any thread may read
 * is fixed at OPEN or atomic: refs, closing, is_ws, unsent, want_drain.
 *
 * Lifetime: the engine's reference (dropped once CLOSE is delivered, or when
 * the loop exits), the handler's (pmu_conn_release), and one per request
 * handed to the handler (pmu_request_conn stays valid while the request is).
 * Each handle also holds a reference on the server, so that a release after
 * pmu_server_destroy() still finds the loop's queue (which then frees it).
 *
 * Where pmu_conn_send's bytes go: in the connection's output queue of
 * answers, as pieces of a REQ_RAW entry placed after the answers given so
 * far and before the first request that is owed one. A raw connection's
 * queue holds only such entries; consecutive sends share one.
 */
#include "internal.h"
#include "tls.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct pmu_conn {
  /* Fixed at OPEN, read by any thread. */
  pmu__loop_t *loop;
  pmu_server_t *server;
  uint64_t id;
  unsigned thread;
  struct sockaddr_storage peer, local;
  void *user;

  /* Shared. */
  atomic_int refs;        /* the engine's, the handler's, one per request holding it */
  atomic_int closing;     /* closing or closed: sends refused */
  atomic_int is_ws;       /* the connection speaks WebSocket: sends refused */
  atomic_size_t unsent;   /* bytes of pmu_conn_send queued and not on the wire */
  atomic_int want_drain;  /* a send returned 1: DRAIN when unsent falls to half */
  uint8_t close_how;      /* written once, by the thread that set closing */
  int close_reason;       /* ... and the CLOSE err it asks for */
  pmu__seg_t close_seg;   /* pmu_conn_close's command: it needs no memory */
  pmu__seg_t release_seg; /* pmu_conn_release's */

  /* Loop side. */
  pmu__conn_t *conn;         /* NULL once the connection is released */
  pmu__connh_t *closed_next; /* loop->cev_closed: CLOSE to deliver */
  int err;                   /* CLOSE's err */
  uint8_t handler_done;      /* pmu_conn_release came: no more events */
  uint8_t close_queued;      /* a close after send is queued: no bytes after it */

  /* A TLS connection's handshake (a reference), set once by the loop: before
   * OPEN is queued, or, when OPEN came at accept (ssl_cert_per_conn), when the
   * handshake finished (atomic: read by any thread). NULL: plain, or not yet. */
  pmu__tls_snap_t *tls_snap;
  atomic_int tls_answered; /* pmu_conn_tls_use or _decline was called */
};

/* A copy of event data that must outlive its source until the delivery. */
struct pmu__cev_own {
  struct pmu__cev_own *next;
  char data[];
};

static void handle_free(pmu__connh_t *h) {
  pmu_server_t *s = h->server;
  if (h->tls_snap)
    pmu__tls_snap_unref(h->tls_snap);
  free(h);
  pmu__server_unref(s);
}

void pmu__connh_ref(pmu__connh_t *h) {
  atomic_fetch_add_explicit(&h->refs, 1, memory_order_relaxed);
}

void pmu__connh_unref(pmu__connh_t *h) {
  if (atomic_fetch_sub(&h->refs, 1) == 1)
    handle_free(h);
}

/* ---- events ---- */

int pmu__connh_push(pmu__conn_t *c, int type, const char *data, size_t len, int copy) {
  pmu__loop_t *loop = c->loop;
  if (loop->cev_n == loop->cev_cap) {
    size_t cap = loop->cev_cap ? loop->cev_cap * 2 : 64;
    pmu_conn_event_t *a = realloc(loop->cevs, cap * sizeof *a);
    if (!a)
      return -ENOMEM;
    loop->cevs = a;
    loop->cev_cap = cap;
  }
  if (copy && len) {
    struct pmu__cev_own *o = malloc(sizeof *o + len);
    if (!o)
      return -ENOMEM;
    memcpy(o->data, data, len);
    o->next = loop->cev_own;
    loop->cev_own = o;
    data = o->data;
  }
  loop->cevs[loop->cev_n++] =
      (pmu_conn_event_t){.conn = c->h, .type = (uint8_t)type, .data = data, .len = len};
  return 0;
}

/* An event that cannot be queued for want of memory: the connection is
 * closed rather than leave its handler with a gap in what it was told. */
static void push_or_fail(pmu__conn_t *c, int type, const char *data, size_t len, int copy) {
  if (pmu__connh_push(c, type, data, len, copy) < 0)
    pmu__conn_fail(c, ENOMEM);
}

void pmu__connh_data(pmu__conn_t *c, const char *data, size_t len, int copy) {
  STAT_ADD(c->loop, raw_bytes_in, len);
  push_or_fail(c, PMU_CONN_EV_DATA, data, len, copy);
  if (c->timer_kind == TIMER_RAW_IDLE)
    pmu__conn_timer_set(c, TIMER_RAW_IDLE); /* not idle: the wait starts over */
}

/* Handler calls over arr[0, count): PMU__DELIVER_BATCHES, counted. */
static void deliver(pmu__loop_t *loop, pmu_conn_event_t *arr, size_t count) {
  const pmu_config_t *cfg = &loop->server->cfg;
#define RELEASED(ev) ((ev).conn->handler_done)
#define CALL(evs, n)                                            \
  do {                                                          \
    STAT_ADD(loop, conn_events, n);                             \
    cfg->conn_handler(cfg->handler_data, evs, n);               \
    pmu__handler_returned(loop, PMU_SLOW_CONN_EVENTS, NULL, 0); \
  } while (0)
  PMU__DELIVER_BATCHES(loop, arr, count, RELEASED, CALL);
#undef RELEASED
#undef CALL
}

void pmu__connh_dispatch(pmu__loop_t *loop, int closes) {
  if (loop->cev_dispatching || (!loop->cev_n && !(closes && loop->cev_closed)))
    return;
  loop->cev_dispatching = 1;
  /* Take this pass's events: what the handler causes goes to the next. */
  pmu_conn_event_t *evs = loop->cevs;
  size_t n = loop->cev_n, cap = loop->cev_cap;
  struct pmu__cev_own *own = loop->cev_own;
  loop->cevs = NULL;
  loop->cev_n = loop->cev_cap = 0;
  loop->cev_own = NULL;
  if (n)
    deliver(loop, evs, n);
  while (own) {
    struct pmu__cev_own *next = own->next;
    free(own);
    own = next;
  }
  if (!loop->cevs) {
    loop->cevs = evs;
    loop->cev_cap = cap;
  } else {
    free(evs);
  }

  /* CLOSE last, in the order the connections closed, from a small array on
   * the stack: it never needs memory. */
  pmu__connh_t *closed = closes ? loop->cev_closed : NULL, *rev = NULL;
  if (closes)
    loop->cev_closed = NULL;
  while (closed) {
    pmu__connh_t *next = closed->closed_next;
    closed->closed_next = rev;
    rev = closed;
    closed = next;
  }
  while (rev) {
    pmu_conn_event_t batch[64];
    pmu__connh_t *list[64];
    size_t k = 0;
    for (; rev && k < 64; k++) {
      list[k] = rev;
      batch[k] = (pmu_conn_event_t){.conn = rev, .type = PMU_CONN_EV_CLOSE, .err = rev->err};
      rev = rev->closed_next;
    }
    deliver(loop, batch, k);
    for (size_t i = 0; i < k; i++)
      pmu__connh_unref(list[i]); /* the engine's reference */
  }
  loop->cev_dispatching = 0;
}

void pmu__connh_loop_exit(pmu__loop_t *loop) {
  /* Events no handler will see any more (the thread is stopping). */
  while (loop->cev_own) {
    struct pmu__cev_own *next = loop->cev_own->next;
    free(loop->cev_own);
    loop->cev_own = next;
  }
  while (loop->cev_closed) {
    pmu__connh_t *h = loop->cev_closed;
    loop->cev_closed = h->closed_next;
    pmu__connh_unref(h);
  }
  free(loop->cevs);
  loop->cevs = NULL;
  loop->cev_n = loop->cev_cap = 0;
}

/* ---- the connection's life ---- */

int pmu__connh_open(pmu__conn_t *c) {
  pmu__loop_t *loop = c->loop;
  pmu_server_t *s = loop->server;
  pmu__connh_t *h = calloc(1, sizeof *h);
  if (!h)
    return -ENOMEM;
  h->loop = loop;
  h->server = s;
  h->id = c->id;
  h->thread = loop->index;
  memcpy(&h->peer, &c->peer, sizeof c->peer);
  memcpy(&h->local, &c->local, sizeof c->local);
  atomic_init(&h->refs, 2);
  atomic_init(&h->closing, 0);
  atomic_init(&h->is_ws, 0);
  atomic_init(&h->unsent, 0);
  atomic_init(&h->want_drain, 0);
  h->close_seg.ch = h;
  h->close_seg.kind = SEG_CONN_CLOSE;
  h->release_seg.ch = h;
  h->release_seg.kind = SEG_CONN_RELEASE;
  h->conn = c;
  c->h = h;
  if (pmu__connh_push(c, PMU_CONN_EV_OPEN, NULL, 0, 0) < 0) {
    c->h = NULL;
    free(h);
    return -ENOMEM;
  }
  atomic_init(&h->tls_answered, 0);
  if (c->tls)
    h->tls_snap = pmu__tls_conn_snap(c); /* NULL before the handshake ends */
  atomic_fetch_add(&s->refs, 1);         /* the handle keeps the server */
  const pmu_config_t *cfg = &s->cfg;
  c->evflags = (uint8_t)((cfg->raw ? CONNF_RAW : 0) | (cfg->conn_io_events ? CONNF_IO : 0));
  return 0;
}

void pmu__connh_tls_done(pmu__conn_t *c) {
  __atomic_store_n(&c->h->tls_snap, pmu__tls_conn_snap(c), __ATOMIC_RELEASE);
}

void pmu__connh_conn_released(pmu__conn_t *c) {
  pmu__connh_t *h = c->h;
  pmu__loop_t *loop = c->loop;
  c->h = NULL;
  h->conn = NULL;
  h->err = c->close_err;
  atomic_store(&h->closing, 1);
  h->closed_next = loop->cev_closed; /* reversed at dispatch */
  loop->cev_closed = h;
}

void pmu__conn_fail(pmu__conn_t *c, int err) {
  if (!c->closing && !c->close_err)
    c->close_err = err;
  pmu__conn_close(c);
}

/* ---- the output queue ---- */

/* The REQ_RAW entry that bytes sent now join: after the answers given so far
 * (and an answer being streamed: it must end first), before the first request
 * still owed an answer; made there when the entry before is not one. NULL on
 * ENOMEM. */
static pmu__req_t *raw_slot(pmu__conn_t *c) {
  pmu__req_t *prev = NULL;
  for (pmu__req_t *r = c->head; r && (r->answered || r->streaming); r = r->next)
    prev = r;
  if (prev && prev->kind == REQ_RAW && !prev->close_after)
    return prev;
  pmu__req_t *r = pmu__req_alloc(c->loop);
  if (!r)
    return NULL;
  r->kind = REQ_RAW;
  r->conn = c;
  r->answered = 1;
  r->streaming = 1;
  r->next = prev ? prev->next : c->head;
  if (prev)
    prev->next = r;
  else
    c->head = r;
  if (!r->next)
    c->tail = r;
  c->pending++;
  return r;
}

/* Close once what is queued is out: a close mark in the queue where bytes
 * sent now would go; nothing more is read or parsed (the rest is discarded
 * by the lingering close). */
static void close_after_send(pmu__conn_t *c) {
  pmu__connh_t *h = c->h;
  if (h)
    h->close_queued = 1;
  if (c->ws) {
    pmu__ws_close_normal(c);
    return;
  }
  pmu__req_t *mark = raw_slot(c);
  if (mark && mark->seg_head) {
    /* The slot holds bytes: the mark is a new entry right after it. */
    pmu__req_t *m = pmu__req_alloc(c->loop);
    if (m) {
      m->kind = REQ_RAW;
      m->conn = c;
      m->answered = 1;
      m->streaming = 1;
      m->next = mark->next;
      mark->next = m;
      if (c->tail == mark)
        c->tail = m;
      c->pending++;
    }
    mark = m;
  }
  if (!mark) {
    pmu__conn_fail(c, ENOMEM);
    return;
  }
  mark->close_after = 1;
  c->no_more = 1;
  c->linger_on_close = 1;
  pmu__loop_mark_dirty(c->loop, c);
}

void pmu__connh_going_away(pmu__conn_t *c) {
  if (c->h)
    atomic_store(&c->h->closing, 1);
  if (!c->h || !c->h->close_queued)
    close_after_send(c);
}

/* Unsent bytes fell: DRAIN if a send asked for it. */
static void drain_check(pmu__connh_t *h) {
  const pmu_config_t *cfg = &h->server->cfg;
  pmu__conn_t *c = h->conn;
  if (atomic_load(&h->want_drain) && atomic_load(&h->unsent) <= cfg->conn_send_high_water / 2 &&
      c && !c->closing && atomic_exchange(&h->want_drain, 0))
    push_or_fail(c, PMU_CONN_EV_DRAIN, NULL, 0, 0);
}

void pmu__connh_seg_done(pmu__seg_t *g, int sent) {
  pmu__connh_t *h = g->ch;
  atomic_fetch_sub(&h->unsent, g->len);
  if (g->release)
    g->release(g->ctx);
  free(g);
  if (sent)
    drain_check(h);
}

/* pmu_conn_send's bytes reached the loop. */
static void bytes_arrived(pmu__seg_t *g) {
  pmu__connh_t *h = g->ch;
  pmu__conn_t *c = h->conn;
  if (!c || c->closing || c->ws || h->close_queued) {
    pmu__connh_seg_done(g, 0); /* gone, closing, or a WebSocket now: dropped */
    return;
  }
  pmu__req_t *slot = g->len ? raw_slot(c) : NULL;
  if (!slot) {
    int empty = g->len == 0;
    pmu__connh_seg_done(g, 0);
    if (!empty)
      pmu__conn_fail(c, ENOMEM);
    return;
  }
  STAT_ADD(c->loop, raw_sends, 1);
  STAT_ADD(c->loop, raw_bytes_out, g->len);
  g->req = slot;
  g->next = NULL;
  if (slot->seg_tail)
    slot->seg_tail->next = g;
  else
    slot->seg_head = g;
  slot->seg_tail = g;
  c->out_queued += pmu__seg_size(g) + PMU__SEG_COST;
  pmu__loop_mark_dirty(c->loop, c);
}

void pmu__connh_seg_arrived(pmu__seg_t *g) {
  pmu__connh_t *h = g->ch;
  pmu__conn_t *c = h->conn;
  switch (g->kind) {
  case SEG_RAW: bytes_arrived(g); return;
  case SEG_CONN_RELEASE:
    h->handler_done = 1;
    if (c)
      pmu__conn_close(c); /* released before CLOSE: closed now, no more events */
    pmu__connh_unref(h);  /* the handler's reference */
    return;
  case SEG_CONN_CLOSE:
    if (!c)
      return;
    if (c->tls && pmu__tls_handshaking(c))
      pmu__conn_close(c); /* ssl_cert_per_conn: nothing can be sent before the handshake */
    else if (h->close_how == PMU_CLOSE_NOW)
      pmu__conn_fail(c, h->close_reason);
    else if (!h->close_queued)
      close_after_send(c);
    return;
  case SEG_CONN_PAUSE:
  case SEG_CONN_RESUME: {
    int pause = g->kind == SEG_CONN_PAUSE;
    free(g);
    if (!c || c->closing)
      return;
    c->user_paused = (uint8_t)pause;
    if (pause)
      pmu__conn_pause(c);
    else
      pmu__loop_schedule_resume(c->loop, c);
    return;
  }
  case SEG_CONN_TLS:
    if (c)
      pmu__tls_answer(c, g->ctx); /* takes the reference */
    else
      pmu_tls_certs_release(g->ctx);
    free(g);
    return;
  default: free(g); return;
  }
}

void pmu__connh_seg_dropped(pmu__seg_t *g) {
  switch (g->kind) {
  case SEG_RAW: pmu__connh_seg_done(g, 0); break;
  case SEG_CONN_TLS:
    pmu_tls_certs_release(g->ctx);
    free(g);
    break;
  case SEG_CONN_RELEASE: pmu__connh_unref(g->ch); break; /* the handler's reference */
  case SEG_CONN_CLOSE: break;                            /* part of the handle */
  default: free(g); break;
  }
}

/* ---- the public functions ---- */

int pmu__unsent_reserve(atomic_size_t *unsent, atomic_int *want_drain, size_t total, size_t high,
                        size_t limit) {
  size_t after = atomic_fetch_add(unsent, total) + total;
  if (limit && after > limit) {
    atomic_fetch_sub(unsent, total);
    return -ENOBUFS;
  }
  if (after > high) {
    atomic_store(want_drain, 1);
    return 1;
  }
  return 0;
}

/* Ask the loop to close: once, whoever asks first (closing is the ticket). */
static int request_close(pmu__connh_t *h, int how, int reason) {
  if (atomic_exchange(&h->closing, 1))
    return -EPIPE;
  h->close_how = (uint8_t)how;
  h->close_reason = reason;
  pmu__seg_deliver(&h->close_seg, h->loop);
  return 0;
}

int pmu_conn_send(pmu_conn_t *h, const void *data, size_t len, void (*release)(void *ctx),
                  void *ctx) {
  int rc = 0;
  if (atomic_load(&h->is_ws))
    rc = -EINVAL;
  else if (atomic_load(&h->closing))
    rc = -EPIPE;
  if (rc < 0) {
    if (release)
      release(ctx);
    return rc;
  }
  pmu__seg_t *g = pmu__seg_alloc(SEG_RAW, data, len, release, ctx);
  if (!g) {
    if (release)
      release(ctx);
    return -ENOMEM;
  }
  g->ch = h;
  const pmu_config_t *cfg = &h->server->cfg;
  rc = pmu__unsent_reserve(&h->unsent, &h->want_drain, len, cfg->conn_send_high_water,
                           cfg->conn_send_limit);
  if (rc < 0) {
    g->len = 0; /* not counted */
    pmu__connh_seg_done(g, 0);
    request_close(h, PMU_CLOSE_NOW, ENOBUFS);
    return rc;
  }
  pmu__seg_deliver(g, h->loop);
  return rc;
}

int pmu_conn_close(pmu_conn_t *h, int how) {
  return request_close(h, how == PMU_CLOSE_NOW ? PMU_CLOSE_NOW : PMU_CLOSE_AFTER_SEND, 0);
}

int pmu_conn_pause_reading(pmu_conn_t *h, int pause) {
  if (atomic_load(&h->closing))
    return -EPIPE;
  pmu__seg_t *g = pmu__seg_alloc(pause ? SEG_CONN_PAUSE : SEG_CONN_RESUME, NULL, 0, NULL, NULL);
  if (!g)
    return -ENOMEM;
  g->ch = h;
  pmu__seg_deliver(g, h->loop);
  return 0;
}

size_t pmu_conn_unsent(const pmu_conn_t *h) { return atomic_load(&h->unsent); }
int pmu_conn_closing(const pmu_conn_t *h) { return atomic_load(&h->closing) != 0; }
uint64_t pmu_conn_id(const pmu_conn_t *h) { return h->id; }
unsigned pmu_conn_thread(const pmu_conn_t *h) { return h->thread; }
const struct sockaddr_storage *pmu_conn_peer(const pmu_conn_t *h) { return &h->peer; }
const struct sockaddr_storage *pmu_conn_local(const pmu_conn_t *h) { return &h->local; }
void *pmu_conn_user(const pmu_conn_t *h) { return h->user; }
void pmu_conn_set_user(pmu_conn_t *h, void *user) { h->user = user; }
void pmu_conn_release(pmu_conn_t *h) { pmu__seg_deliver(&h->release_seg, h->loop); }

pmu_conn_t *pmu_request_conn(const pmu_request_t *request) {
  return ((const pmu__req_t *)request)->h;
}

/* The handle learns that its connection speaks WebSocket (pmu_ws_accept). */
void pmu__connh_set_ws(pmu__connh_t *h) { atomic_store(&h->is_ws, 1); }

int pmu_conn_tls_info(const pmu_conn_t *conn, pmu_tls_info_t *out) {
  pmu__tls_snap_t *snap = __atomic_load_n(&conn->tls_snap, __ATOMIC_ACQUIRE);
  if (!snap)
    return -EINVAL;
  pmu__tls_snap_info(snap, out);
  return 0;
}

/* The handler's answer for the connection's certificate, to the loop. */
static int tls_answer(pmu_conn_t *h, pmu_tls_certs_t *certs) {
  if (atomic_load(&h->closing))
    return -EPIPE;
  if (!h->server->cfg.ssl_cert_per_conn || atomic_exchange(&h->tls_answered, 1))
    return -EINVAL;
  pmu__seg_t *g = pmu__seg_alloc(SEG_CONN_TLS, NULL, 0, NULL, NULL);
  if (!g) {
    atomic_store(&h->tls_answered, 0);
    return -ENOMEM;
  }
  if (certs)
    pmu__tls_certs_ref(certs);
  g->ch = h;
  g->ctx = certs;
  pmu__seg_deliver(g, h->loop);
  return 0;
}

int pmu_conn_tls_use(pmu_conn_t *h, pmu_tls_certs_t *certs) {
  return certs ? tls_answer(h, certs) : -EINVAL;
}

int pmu_conn_tls_decline(pmu_conn_t *h) { return tls_answer(h, NULL); }
