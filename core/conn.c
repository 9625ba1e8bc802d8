/*
 * conn.c: a connection's life: accept, receive (with backpressure), the
 * ordered output queue, sends (one in flight), timers, close and release.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FREE_CONNS 1024

static void sendbuf_put(pmu__conn_t *c);
static int consume_sent(pmu__conn_t *c, size_t left);
static int after_sent(pmu__conn_t *c, int close_now);

pmu__conn_t *pmu__conn_new(pmu__loop_t *loop, int fd) {
  pmu__list_t *pooled = pmu__list_first(&loop->free_conns);
  pmu__conn_t *c;
  char *stash = NULL;
  size_t stash_cap = 0;
  if (pooled) {
    c = PMU__LIST_ENTRY(pooled, pmu__conn_t, all_link);
    pmu__list_unlink(pooled);
    loop->nfree_conns--;
    stash = c->stash;
    stash_cap = c->stash_cap;
  } else {
    c = malloc(sizeof *c);
    if (!c)
      return NULL;
  }
  memset(c, 0, offsetof(pmu__conn_t, peer));
  c->loop = loop;
  c->fd = fd;
  c->fixed = -1;
  c->stash = stash;
  c->stash_cap = stash_cap;
  c->id = atomic_fetch_add(&loop->server->next_conn_id, 1);

  /* Addresses too long for pmu__sockaddr_t (AF_UNIX paths) keep only
   * their family: a Unix peer has no useful name. */
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  memset(&c->peer, 0, sizeof c->peer);
  if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0)
    memcpy(&c->peer, &ss, len < sizeof c->peer ? len : sizeof c->peer);
  pmu_server_t *s = loop->server;
  memset(&c->local, 0, sizeof c->local);
  if (s->wildcard) {
    len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
      memcpy(&c->local, &ss, len < sizeof c->local ? len : sizeof c->local);
  } else if (s->bound.ss_family == AF_UNIX) {
    c->local.sa.sa_family = AF_UNIX;
  } else {
    memcpy(&c->local, &s->bound, sizeof c->local);
  }

  if (loop->free_slots) {
    if (loop->nfree_slots) {
      int slot = loop->free_slots[--loop->nfree_slots];
      if (pmu__files_update(&loop->ring, (unsigned)slot, fd) == 0)
        c->fixed = slot;
      else
        loop->free_slots[loop->nfree_slots++] = slot;
    }
  }

  pmu__http_init(c);
  pmu__list_insert_head(&loop->all, &c->all_link);
  loop->nconns++;
  return c;
}

void pmu__conn_arm_recv(pmu__conn_t *c) {
  if (pmu__prep_recv(&c->loop->ring, c->fd, c->fixed, c->loop->bufs.bgid, PMU__UD(c, OP_RECV)) <
      0) {
    c->loop->sqe_short = 1; /* no SQE: armed again at the end of a later turn */
    pmu__loop_schedule_resume(c->loop, c);
    return;
  }
  c->recv_armed = 1;
  c->ops++;
}

/* ---- timers ---- */

void pmu__conn_timer_unlink(pmu__conn_t *c) {
  if (c->timer_kind == TIMER_NONE)
    return;
  pmu__list_unlink(&c->timer_link);
  c->timer_kind = TIMER_NONE;
}

void pmu__conn_timer_set(pmu__conn_t *c, unsigned kind) {
  pmu__conn_timer_unlink(c);
  pmu__loop_t *loop = c->loop;
  if (kind == TIMER_NONE || loop->timeout_ms[kind] == 0)
    return;
  c->timer_kind = (uint8_t)kind;
  c->deadline = loop->now_ms + loop->timeout_ms[kind];
  pmu__list_insert_tail(&loop->timers[kind], &c->timer_link);
}

void pmu__conn_timer_update(pmu__conn_t *c) {
  if (c->closing)
    return;
  if (c->ws) {
    pmu__ws_timer_update(c); /* a WebSocket's timers are its own */
    return;
  }
  unsigned kind;
  if (__builtin_expect(c->tls != NULL, 0) && !c->lingering && pmu__tls_handshaking(c)) {
    /* Before its handshake ends a TLS connection has one timer; stopping, the
     * grace a silent connection gets. */
    kind = c->loop->stopping ? TIMER_STOP_GRACE : TIMER_TLS_HS;
    if (kind != c->timer_kind)
      pmu__conn_timer_set(c, kind);
    return;
  }
  if (c->evflags & CONNF_RAW) {
    /* A raw connection has one timer: nothing either way for raw_idle_timeout_ms.
     * Stopping, one whose bytes are all out closes without lingering. */
    if (c->lingering && c->loop->stopping && c->pending == 0 && !c->send_inflight) {
      pmu__conn_close(c);
      return;
    }
    kind = c->lingering ? TIMER_LINGER : TIMER_RAW_IDLE;
    if (kind != c->timer_kind)
      pmu__conn_timer_set(c, kind);
    return;
  }
  if (c->lingering)
    kind = TIMER_LINGER;
  else if (c->send_inflight)
    kind = TIMER_SEND;
  else if (c->paused)
    kind = TIMER_NONE; /* the engine is not reading: the client owes nothing now */
  else if (c->pstate == PS_BODY)
    kind = TIMER_BODY; /* the client owes bytes */
  else if (c->pending > 0)
    kind = TIMER_NONE; /* the handler owes an answer: its business */
  else if (c->pstate == PS_IDLE && c->loop->stopping)
    kind = TIMER_STOP_GRACE; /* a request may be on its way: served if it comes soon */
  else if (c->pstate == PS_HEADERS || !c->served)
    kind = TIMER_HEADER;
  else
    kind = TIMER_IDLE;

  /* Stopping: a keep-alive connection quiet for longer than the grace is
   * closed now (a browser's idle one); a busy client's next request is
   * probably on its way, and gets the grace. */
  if (kind == TIMER_STOP_GRACE && c->served && c->timer_kind == TIMER_IDLE) {
    const pmu__loop_t *loop = c->loop;
    uint64_t idle_since = c->deadline - loop->timeout_ms[TIMER_IDLE];
    if (loop->now_ms - idle_since >= loop->timeout_ms[TIMER_STOP_GRACE]) {
      pmu__conn_close_gracefully(c);
      return;
    }
  }
  if (c->loop->stopping && c->pending == 0 && !c->send_inflight && c->lingering) {
    pmu__conn_close(c);
    return;
  }
  if (kind != c->timer_kind)
    pmu__conn_timer_set(c, kind);

  /* The minimum rate is watched while the header or body timer would run,
   * from the start of each such phase. */
  uint8_t rate_kind = kind == TIMER_HEADER || kind == TIMER_BODY ? (uint8_t)kind : 0;
  if (rate_kind != c->rate_kind) {
    c->rate_kind = rate_kind;
    const pmu_config_t *cfg = &c->loop->server->cfg;
    if (rate_kind && cfg->min_recv_rate) {
      pmu__loop_t *loop = c->loop;
      c->rate_t0 = loop->now_ms;
      c->rate_base = c->rx;
      uint64_t first = loop->now_ms + cfg->min_rate_grace_ms;
      if (first < loop->rate_check_ms)
        loop->rate_check_ms = first;
    }
  }
}

/* The deadline of a watched phase: its start, the grace, and one second for
 * every min_recv_rate bytes received since (Apache's MinRate). A connection
 * paused by backpressure is not the client's doing: no phase is watched while
 * it is paused, and one starts over when reading resumes (the timer update in
 * pause_reading and pmu__conn_maybe_resume). */
void pmu__conn_check_rates(pmu__loop_t *loop) {
  const pmu_config_t *cfg = &loop->server->cfg;
  uint64_t now = loop->now_ms;
  if (!cfg->min_recv_rate || now < loop->rate_check_ms)
    return;
  uint64_t next = UINT64_MAX;
  pmu__list_t *l, *n;
  PMU__LIST_FOREACH_SAFE(&loop->all, l, n) {
    pmu__conn_t *c = PMU__LIST_ENTRY(l, pmu__conn_t, all_link);
    if (!c->rate_kind || c->closing || c->lingering)
      continue;
    uint64_t got = c->rx - c->rate_base;
    uint64_t deadline = c->rate_t0 + cfg->min_rate_grace_ms + got * 1000u / cfg->min_recv_rate;
    if (deadline > now) {
      if (deadline < next)
        next = deadline;
      continue;
    }
    c->rate_kind = 0;
    STAT_ADD(loop, timeouts, 1);
    if (!c->close_err)
      c->close_err = ETIMEDOUT;
    if (c->pstate == PS_IDLE) {
      pmu__conn_close(c); /* nothing of a request came: as the header timeout */
    } else {
      pmu__conn_send_error(c, 408);
      pmu__loop_mark_dirty(loop, c);
    }
  }
  /* Look again at the earliest deadline, but not more often than 10 times a
   * second: the walk is over every connection. */
  loop->rate_check_ms = next == UINT64_MAX ? UINT64_MAX : next > now + 100 ? next : now + 100;
}

void pmu__conn_timer_touch(pmu__conn_t *c) {
  if (c->timer_kind == TIMER_BODY || c->timer_kind == TIMER_SEND || c->timer_kind == TIMER_RAW_IDLE)
    pmu__conn_timer_set(c, c->timer_kind);
}

/* ---- close and release ---- */

void pmu__conn_close(pmu__conn_t *c) {
  if (c->closing)
    return;
  c->closing = 1;
  pmu__conn_timer_unlink(c);
  /* Completes whatever receive or send is still in flight. */
  if (c->ops)
    shutdown(c->fd, SHUT_RDWR);
  pmu__conn_try_release(c);
}

void pmu__conn_close_gracefully(pmu__conn_t *c) {
  if (c->tls && pmu__tls_close_notify(c, 0))
    return;
  pmu__conn_close(c);
}

void pmu__conn_release(pmu__conn_t *c) {
  pmu__loop_t *loop = c->loop;
  if (c->ws)
    pmu__ws_conn_released(c); /* GONE; the handle lives on until released */
  if (c->h)
    pmu__connh_conn_released(c); /* CLOSE, after the GONE */
  if (c->fixed >= 0) {
    pmu__files_update(&loop->ring, (unsigned)c->fixed, -1);
    loop->free_slots[loop->nfree_slots++] = c->fixed;
  }
  close(c->fd);
  if (c->cur && (!c->cur->pub.body_streaming || c->cur->detached))
    pmu__req_free(c->cur); /* a streamed one is in the queue, orphaned below */
  c->cur = NULL;
  /* Requests the handler holds are orphaned: freed when it answers. Those
   * answered during this loop (on_disconnect may answer) stay allocated
   * until the end of the turn (pmu__loop_bury), so the walk stays safe. */
  pmu__req_t *orphans = NULL;
  for (pmu__req_t *r = c->head, *next; r; r = next) {
    next = r->next;
    if (r->with_handler) {
      r->next = orphans;
      orphans = r;
    } else {
      pmu__req_free(r);
    }
  }
  c->head = c->tail = NULL;
  for (pmu__req_t *r = orphans; r; r = r->next)
    r->conn = NULL;
  for (pmu__req_t *r = orphans; r; r = r->next)
    if (!r->answered)
      pmu__req_orphan(r, c->cut_at_stop);
  pmu__conn_body_list_remove(c);
  sendbuf_put(c);
  pmu__file_conn_released(c);
  if (c->tls)
    pmu__tls_conn_released(c);
  pmu__list_unlink(&c->all_link);
  loop->nconns--;
  if (c->counted)
    atomic_fetch_sub(&loop->server->open_conns, 1);
  if (loop->nfree_conns < MAX_FREE_CONNS && c->stash_cap <= 65536) {
    c->stash_len = c->stash_off = 0;
    pmu__list_insert_head(&loop->free_conns, &c->all_link);
    loop->nfree_conns++;
  } else {
    free(c->stash);
    free(c);
  }
}

/*
 * A closing connection with no SQE in flight goes on the loop's release list;
 * the loop releases it at the end of the turn (pmu__conn_release), once no
 * other list can still name it.
 */
void pmu__conn_try_release(pmu__conn_t *c) {
  if (!c->closing || c->ops || pmu__list_is_linked(&c->grave_link))
    return;
  pmu__list_insert_head(&c->loop->grave, &c->grave_link);
}

/* ---- input ---- */

static int stash_append(pmu__conn_t *c, const char *data, size_t len) {
  if (c->stash_off && c->stash_off == c->stash_len)
    c->stash_off = c->stash_len = 0;
  if (pmu__grow(&c->stash, &c->stash_cap, c->stash_len + len, 4096) < 0)
    return -ENOMEM;
  memcpy(c->stash + c->stash_len, data, len);
  c->stash_len += len;
  return 0;
}

/* Streamed request body delivered to the handler and not yet consumed. */
static size_t body_backlog(const pmu__conn_t *c) {
  const pmu__req_t *r = c->cur;
  if (!r || !r->pub.body_streaming || r->body_dropped)
    return 0;
  return atomic_load(&r->body_delivered) - atomic_load(&r->body_consumed);
}

size_t pmu__conn_projected(const pmu__conn_t *c) {
  size_t owed = c->pending;
  /* A request whose body is still streaming in cannot be answered before it:
   * counting it would stop reading the body it waits for. */
  if (owed && c->cur && c->cur->pub.body_streaming && !c->cur->detached)
    owed--;
  return c->out_queued + owed * c->answer_est;
}

static int over_limits(const pmu__conn_t *c) {
  const pmu_config_t *cfg = &c->loop->server->cfg;
  return c->pending >= cfg->max_pipelined || pmu__conn_projected(c) > cfg->output_high_water ||
         body_backlog(c) > cfg->output_high_water;
}

void pmu__conn_body_list_remove(pmu__conn_t *c) {
  if (pmu__list_is_linked(&c->body_link))
    pmu__list_unlink(&c->body_link);
}

/* Reading stops for a body the handler has not consumed: ask it to wake us. */
static void wait_for_body_consumer(pmu__conn_t *c) {
  pmu__req_t *r = c->cur;
  if (!pmu__list_is_linked(&c->body_link))
    pmu__list_insert_head(&c->loop->body_paused, &c->body_link);
  atomic_store(&r->body_wait, 1);
  /* The consumer may have caught up before it could see body_wait. */
  if (body_backlog(c) <= c->loop->server->cfg.output_high_water / 2 &&
      atomic_exchange(&r->body_wait, 0))
    pmu__loop_wake(c->loop);
}

/* Stop reading: the multishot receive is cancelled; what it still delivers
 * lands in the stash. No timer of the client's runs while paused (the body
 * timer and the rate window would count the engine's own wait against it). */
static void pause_reading(pmu__conn_t *c) {
  if (!c->paused) {
    c->paused = 1;
    STAT_ADD(c->loop, recv_paused, 1);
    pmu__conn_timer_update(c);
  }
  if (body_backlog(c))
    wait_for_body_consumer(c);
  if (c->recv_armed && !c->cancel_sent) {
    if (pmu__prep_cancel(&c->loop->ring, PMU__UD(c, OP_RECV), PMU__UD(c, OP_CANCEL)) < 0) {
      c->loop->sqe_short = 1; /* tried again when the next bytes arrive */
      return;
    }
    c->cancel_sent = 1;
    c->ops++;
  }
}

static void feed(pmu__conn_t *c, const char *data, size_t len) {
  size_t used = pmu__http_feed(c, data, len);
  if (c->no_more || c->closing) {
    if (used < len)
      c->linger_on_close = 1; /* input was dropped: close without a reset */
    return;
  }
  if (used < len && stash_append(c, data + used, len - used) < 0) {
    pmu__conn_close(c);
    return;
  }
  if (c->llhttp_paused || used < len)
    pause_reading(c);
}

void pmu__conn_pause(pmu__conn_t *c) { pause_reading(c); }

/* Bytes that arrive while the connection is paused, or while bytes kept
 * earlier wait, join those (the multishot receive may deliver a few more after
 * its cancel). Returns 1 when they were kept (or the connection closed for
 * want of memory), 0 when they can be taken now. */
static int keep_while_paused(pmu__conn_t *c, const char *data, size_t len) {
  if (!c->paused && c->stash_len <= c->stash_off)
    return 0;
  if (stash_append(c, data, len) < 0)
    pmu__conn_fail(c, ENOMEM);
  else if (c->paused && c->recv_armed && !c->cancel_sent)
    pause_reading(c); /* its cancel found no SQE: try again */
  return 1;
}

/* Received bytes of a connection with a handle: DATA (raw mode, the bytes
 * are not HTTP) or READ (conn_io_events, before the parser sees them).
 * Returns 1 when they were taken. */
static int tell_handle(pmu__conn_t *c, const char *data, size_t len) {
  /* A TLS connection's plaintext is in the loop's scratch, reused by the next
   * record: the event gets a copy. */
  int copy = c->tls != NULL;
  if (c->evflags & CONNF_RAW) {
    if (!keep_while_paused(c, data, len))
      pmu__connh_data(c, data, len, copy);
    return 1;
  }
  if (pmu__connh_push(c, PMU_CONN_EV_READ, data, len, copy) < 0) {
    pmu__conn_fail(c, ENOMEM);
    return 1;
  }
  return 0;
}

void pmu__conn_on_recv(pmu__conn_t *c, const char *data, size_t len) {
  c->rx += len;
  if (c->no_more || c->lingering) {
    c->linger_on_close = 1; /* input was dropped: close without a reset */
    return;                 /* nothing more will be parsed: discard */
  }
  if (c->ws) {
    if (!keep_while_paused(c, data, len))
      pmu__ws_on_recv(c, data, len);
    return;
  }
  if (__builtin_expect(c->evflags != 0, 0) && tell_handle(c, data, len))
    return;
  if (c->upgrade_wait) {
    /* A WebSocket handshake awaits its answer: keep what follows. */
    if (stash_append(c, data, len) < 0)
      pmu__conn_close(c);
    else
      pause_reading(c);
    return;
  }
  if (keep_while_paused(c, data, len))
    return;
  if (over_limits(c)) {
    if (stash_append(c, data, len) < 0) {
      pmu__conn_close(c);
      return;
    }
    pause_reading(c);
    return;
  }
  feed(c, data, len);
}

/* The client half-closed with answers owed: mark every request it sent (those
 * not yet handed over too, so that pmu_request_peer_eof() tells the handler
 * when it gets them), and tell the handler of those it holds unanswered
 * (on_peer_eof). The callback only takes note (it may not answer here), so
 * the walk of the queue stays valid. */
static void tell_peer_eof(pmu__conn_t *c) {
  const pmu_config_t *cfg = &c->loop->server->cfg;
  for (pmu__req_t *r = c->head; r; r = r->next) {
    if (r->kind != REQ_USER || r->answered)
      continue;
    atomic_store(&r->peer_eof, 1);
    if (r->with_handler && cfg->on_peer_eof)
      cfg->on_peer_eof(cfg->handler_data, &r->pub);
  }
}

void pmu__conn_on_eof(pmu__conn_t *c) {
  c->peer_eof = 1;
  if (c->ws) {
    pmu__ws_on_eof(c);
    return;
  }
  if (c->evflags & CONNF_RAW)
    return; /* the DATA of this pass first: raw_resume decides, at the end of the turn */
  /* A half-closed peer that is owed answers still gets them (on_send closes
   * once the last is out); with nothing owed there is nothing to finish. A
   * streamed body cut short can never end: close, so that the handler hears
   * of it through on_disconnect instead of waiting for the body timeout. */
  if (c->lingering || c->pending == 0 || (c->cur && c->cur->pub.body_streaming)) {
    pmu__conn_close(c);
    return;
  }
  tell_peer_eof(c);
}

void pmu__conn_resume_unparsed(pmu__conn_t *c, int held,
                               void (*take)(pmu__conn_t *c, const char *data, size_t len)) {
  if (c->paused && !held) {
    c->paused = 0;
    c->llhttp_paused = 0;
    if (c->stash_len > c->stash_off)
      take(c, c->stash + c->stash_off, c->stash_len - c->stash_off);
    /* An idle WebSocket or raw connection keeps no input buffer (HTTP
     * connections keep theirs for the next request). */
    free(c->stash);
    c->stash = NULL;
    c->stash_off = c->stash_len = c->stash_cap = 0;
    pmu__conn_timer_update(c); /* the timers start again */
  }
  if (!c->paused && !c->recv_armed && !c->cancel_sent && !c->peer_eof && !c->closing)
    pmu__conn_arm_recv(c);
}

/* What a raw connection received while paused: DATA, copied (the stash is
 * freed at once). */
static void raw_take(pmu__conn_t *c, const char *data, size_t len) {
  pmu__connh_data(c, data, len, 1);
}

/* A raw connection reads on, or, once the peer has said all (EOF), closes when
 * the handler has had every DATA (delivered before this, at the end of the pass
 * the EOF came in) and what it queued in answer is out (after_sent). */
static void raw_resume(pmu__conn_t *c) {
  if (!c->peer_eof) {
    pmu__conn_resume_unparsed(c, c->user_paused, raw_take);
    return;
  }
  if (c->paused && c->user_paused)
    return; /* the handler holds the bytes kept meanwhile back */
  if (c->stash_len > c->stash_off) {
    pmu__conn_resume_unparsed(c, 0, raw_take); /* DATA now, the close next turn */
    pmu__loop_schedule_resume(c->loop, c);
    return;
  }
  if (c->pending == 0 && !c->send_inflight)
    pmu__conn_close(c);
}

/*
 * Resume reading when the backpressure that paused it has eased: parse the
 * stash first, then re-arm the receive. Also called to re-arm a receive that
 * ended (ENOBUFS, a multishot that stopped).
 */
void pmu__conn_maybe_resume(pmu__conn_t *c) {
  if (c->closing || c->upgrade_wait)
    return; /* a handshake's answer decides what the bytes after it are */
  if (c->ws) {
    pmu__ws_resume(c);
    return;
  }
  if (c->evflags & CONNF_RAW) {
    raw_resume(c);
    return;
  }
  if (c->paused) {
    const pmu_config_t *cfg = &c->loop->server->cfg;
    if (c->user_paused)
      return; /* pmu_conn_pause_reading: until the handler resumes it */
    if (c->in_turn >= PIPELINE_TURN && c->turn_gen == c->loop->turn_gen)
      return; /* had its share of this turn: resumes at its end (rearm list) */
    if (c->pending > cfg->max_pipelined / 2 ||
        pmu__conn_projected(c) > cfg->output_high_water / 2 ||
        body_backlog(c) > cfg->output_high_water / 2)
      return;
    c->paused = 0;
    pmu__conn_timer_update(c); /* the client's timers start again from now */
    pmu__conn_body_list_remove(c);
    if (c->llhttp_paused) {
      llhttp_resume(&c->parser);
      c->llhttp_paused = 0;
    }
    /* Parse the stash a slice at a time, so that a large stash cannot
     * overshoot the limits that paused it. */
    const size_t slice = c->loop->bufs.size;
    while (c->stash_len > c->stash_off) {
      size_t off = c->stash_off, left = c->stash_len - off;
      size_t len = left < slice ? left : slice;
      size_t used = pmu__http_feed(c, c->stash + off, len);
      c->stash_off += used;
      int drained = c->stash_off == c->stash_len;
      if (drained || c->no_more || c->closing)
        c->stash_off = c->stash_len = 0;
      if (c->no_more || c->closing)
        break;
      if (c->llhttp_paused || used < len || over_limits(c)) {
        pause_reading(c); /* paused again; the receive stays off */
        break;
      }
      if (drained)
        break;
    }
  }
  if (!c->paused && !c->recv_armed && !c->cancel_sent && !c->peer_eof && !c->closing &&
      (!c->no_more || c->lingering))
    pmu__conn_arm_recv(c);
}

/* ---- output ---- */

void pmu__conn_enqueue(pmu__conn_t *c, pmu__req_t *req) {
  req->next = NULL;
  if (c->tail)
    c->tail->next = req;
  else
    c->head = req;
  c->tail = req;
  c->pending++;
}

void pmu__conn_answered(pmu__conn_t *c, pmu__req_t *req) {
  if (c->upgrade_wait && req == c->tail && !c->ws) {
    /* A WebSocket handshake refused: the answer closes; what the client
     * sent after the handshake is never parsed. */
    c->upgrade_wait = 0;
    c->no_more = 1;
    c->linger_on_close = 1;
    c->stash_len = c->stash_off = 0;
    req->close_after = 1;
    pmu__loop_schedule_resume(c->loop, c); /* read on, to discard */
  }
  if (c->cur == req) {
    /* Answered before its streamed body ended: deliver no more of it,
     * discard the rest, close once the answer is out. */
    req->body_dropped = 1;
    req->close_after = 1;
    c->linger_on_close = 1;
    pmu__conn_body_list_remove(c);
    if (c->paused)
      pmu__loop_schedule_resume(c->loop, c); /* read on, to discard; not from
                                                inside the parser */
  }
  c->out_queued += req->out_len + req->ext_len;
  if (req->kind == REQ_USER && !req->streaming)
    c->answer_est = req->out_len + req->ext_len;
  if (req->close_after)
    c->no_more = 1;
  pmu__loop_mark_dirty(c->loop, c);
}

/* Add the unsent part of [base, base+len) at *skip bytes in; *skip counts
 * down across the parts of one item. */
static int add_part(pmu__conn_t *c, int n, const char *base, size_t len, size_t *skip,
                    size_t *total) {
  if (*skip >= len) {
    *skip -= len;
    return n;
  }
  c->sb->iov[n].iov_base = (char *)base + *skip;
  c->sb->iov[n].iov_len = len - *skip;
  *total += len - *skip;
  *skip = 0;
  return n + 1;
}

/*
 * Gather the answers at the head of the queue that are ready into one send,
 * unless a send is already in flight. A streamed answer contributes the
 * pieces it has; nothing after it goes until it has ended.
 */
static pmu__sendbuf_t *sendbuf_get(pmu__loop_t *loop) {
  pmu__sendbuf_t *sb = loop->free_sendbufs;
  if (sb) {
    loop->free_sendbufs = sb->next;
    loop->nfree_sendbufs--;
    return sb;
  }
  return malloc(sizeof *sb);
}

static void sendbuf_put(pmu__conn_t *c) {
  pmu__loop_t *loop = c->loop;
  pmu__sendbuf_t *sb = c->sb;
  c->sb = NULL;
  if (!sb)
    return;
  if (loop->nfree_sendbufs >= MAX_FREE_CONNS) {
    free(sb);
    return;
  }
  sb->next = loop->free_sendbufs;
  loop->free_sendbufs = sb;
  loop->nfree_sendbufs++;
}

void pmu__conn_flush(pmu__conn_t *c) {
  if (c->closing || c->send_inflight || c->out_dead)
    return;
  if (__builtin_expect(c->tls != NULL, 0) && pmu__tls_flush(c))
    return; /* ciphertext went out, or no plaintext can yet */
  if (!c->sb && !(c->sb = sendbuf_get(c->loop))) {
    pmu__conn_close(c);
    return;
  }
  int n = 0;
  size_t total = 0;
  pmu__req_t *r = c->head;
  for (; r && n < PMU__IOV_MAX - 3; r = r->next) {
    if (r->streaming) {
      pmu__seg_t *g = r->seg_head;
      int stop = 0;
      for (; g && n < PMU__IOV_MAX - 3; g = g->next) {
        size_t skip = g->sent;
        n = add_part(c, n, g->pre, g->pre_len, &skip, &total);
        if (g->kind == SEG_FILE) {
          if (skip < g->len) {
            /* Its file bytes: read into the send (core/file.c), or spliced once what
             * precedes them is out. */
            int more;
            int m = pmu__file_gather(c, g, n, &total, &more);
            if (m < 0) {
              sendbuf_put(c); /* a splice is in flight, or the connection closes */
              return;
            }
            n = m;
            if (!more) {
              stop = 1;
              break;
            }
            skip = 0;
          } else {
            skip -= g->len;
          }
        } else {
          n = add_part(c, n, g->data, g->len, &skip, &total);
        }
        n = add_part(c, n, "\r\n", g->post_len, &skip, &total);
      }
      if (!r->answered || g || stop)
        break; /* the stream goes on, or the iovec is full */
    } else if (!r->answered) {
      break;
    }
    size_t skip = r->sent;
    n = add_part(c, n, r->out, r->out_len, &skip, &total);
    n = add_part(c, n, r->ext_body, r->ext_len, &skip, &total);
    if (r->close_after)
      break; /* nothing after a closing response goes out */
  }
  if (c->ws && !r)
    n = pmu__ws_gather(c, n, &total); /* a WebSocket's frames, after the 101 */
  if (n == 0) {
    sendbuf_put(c);
    if (__builtin_expect(c->tls != NULL, 0) && pmu__tls_send_pending(c))
      return; /* records of its own (a ticket); the queue is settled when they are out */
    /* Answers with nothing left to send leave the queue here. */
    if (after_sent(c, consume_sent(c, 0)))
      return;
    pmu__conn_timer_update(c);
    pmu__conn_maybe_resume(c); /* answers left the queue: it may read on */
    return;
  }
  if (__builtin_expect(c->tls != NULL, 0) && !pmu__tls_ktls_tx(c)) {
    int rc = pmu__tls_encrypt(c, c->sb->iov, n, total);
    sendbuf_put(c);
    if (rc < 0)
      pmu__conn_fail(c, ENOMEM);
    return;
  }
  struct msghdr *msg = &c->sb->msg;
  memset(msg, 0, sizeof *msg);
  msg->msg_iov = c->sb->iov;
  msg->msg_iovlen = (size_t)n;
  c->send_len = total;
  const pmu_config_t *cfg = &c->loop->server->cfg;
  int zc = cfg->send_zc_threshold && total >= cfg->send_zc_threshold;
  if (pmu__prep_send(&c->loop->ring, c->fd, c->fixed, msg, zc, PMU__UD(c, OP_SEND)) < 0) {
    sendbuf_put(c);
    c->loop->sqe_short = 1; /* flushed again at the end of a later turn */
    pmu__loop_mark_dirty(c->loop, c);
    return;
  }
  c->send_inflight = 1;
  c->ops++;
  STAT_ADD(c->loop, sends, 1);
  if (zc)
    STAT_ADD(c->loop, send_zc, 1);
  pmu__conn_timer_update(c);
}

/* Of the next k bytes of piece g to leave, those that are its file's (not its framing). */
static size_t file_bytes_in(const pmu__seg_t *g, size_t k) {
  size_t a = g->sent, b = g->sent + k;
  size_t lo = g->pre_len, hi = g->pre_len + g->len;
  if (a < lo)
    a = lo;
  if (b > hi)
    b = hi;
  return b > a ? b - a : 0;
}

/*
 * Account `left` bytes written: finish the pieces and answers they cover, in
 * queue order. Returns 1 if an answer that closes the connection is done.
 */
static int consume_sent(pmu__conn_t *c, size_t left) {
  while (c->head) {
    pmu__req_t *r = c->head;
    while (r->seg_head) {
      pmu__seg_t *g = r->seg_head;
      size_t rem = pmu__seg_size(g) - g->sent;
      if (rem > left) {
        if (g->kind == SEG_FILE)
          pmu__file_sent(c, g, file_bytes_in(g, left), 0);
        g->sent += left;
        c->out_queued -= left;
        return 0;
      }
      if (g->kind == SEG_FILE)
        pmu__file_sent(c, g, file_bytes_in(g, rem), 1);
      left -= rem;
      c->out_queued -= rem + PMU__SEG_COST;
      r->seg_head = g->next;
      if (!r->seg_head)
        r->seg_tail = NULL;
      pmu__stream_sent(r, g);
    }
    if (!r->answered)
      return 0; /* a stream still going */
    size_t rem = r->out_len + r->ext_len - r->sent;
    if (rem > left) {
      r->sent += left;
      c->out_queued -= left;
      return 0; /* short send: the rest goes in the next send */
    }
    left -= rem;
    c->out_queued -= rem;
    c->head = r->next;
    if (!c->head)
      c->tail = NULL;
    c->pending--;
    int close_now = r->close_after;
    if (r == c->cur)
      r->detached = 1; /* its body is still being parsed: freed after */
    else
      pmu__req_free(r);
    if (close_now)
      return 1;
  }
  if (c->ws)
    return pmu__ws_consume(c, &left);
  return 0;
}

static void linger(pmu__conn_t *c);

void pmu__conn_linger(pmu__conn_t *c) { linger(c); }

/* After bytes left (or an answer with none left to send, such as the end of
 * a stream whose last piece is already out): close if an answer said so, or
 * if a half-closed peer is owed nothing more. Returns 1 if it closed. */
static int after_sent(pmu__conn_t *c, int close_now) {
  if (close_now) {
    if (__builtin_expect(c->tls != NULL, 0) && pmu__tls_close_notify(c, c->linger_on_close))
      return 1; /* the close, or lingering, once close_notify is out */
    if (c->linger_on_close)
      linger(c);
    else
      pmu__conn_close(c);
    return 1;
  }
  if (c->peer_eof && c->pending == 0) {
    pmu__conn_close(c);
    return 1;
  }
  return 0;
}

/* Enter lingering close: our side is done writing; read and discard what
 * the client still sends, for a short while, so that it sees our answer
 * instead of a reset. */
static void linger(pmu__conn_t *c) {
  c->lingering = 1;
  shutdown(c->fd, SHUT_WR);
  if (c->peer_eof) {
    pmu__conn_close(c);
    return;
  }
  pmu__conn_timer_update(c);
  pmu__conn_maybe_resume(c);
}

void pmu__conn_on_send(pmu__conn_t *c, int res) {
  c->send_inflight = 0;
  sendbuf_put(c);
  if (c->closing) {
    pmu__conn_try_release(c);
    return;
  }
  if (res < 0) {
    pmu__conn_fail(c, -res); /* EPIPE, ECONNRESET */
    return;
  }
  if (__builtin_expect(c->tls != NULL, 0) && (res = pmu__tls_sent(c, res)) < 0)
    return; /* more ciphertext first, or closing */
  pmu__loop_t *loop = c->loop;
  STAT_ADD(loop, bytes_out, res);
  if (__builtin_expect(c->evflags & CONNF_IO, 0) && res > 0 &&
      pmu__connh_push(c, PMU_CONN_EV_SENT, NULL, (size_t)res, 0) < 0) {
    pmu__conn_fail(c, ENOMEM);
    return;
  }
  if ((size_t)res < c->send_len)
    STAT_ADD(loop, short_sends, 1);
  if (res > 0)
    pmu__conn_timer_touch(c);
  if (after_sent(c, consume_sent(c, (size_t)res)))
    return;
  pmu__conn_maybe_resume(c);
  pmu__conn_flush(c);
}
