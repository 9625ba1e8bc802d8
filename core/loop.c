/*
 * loop.c: one worker thread and its ring. A turn of the loop is: submit and
 * wait once, walk every completion, run the handler on the batch of requests
 * those completions finished, then expire timers, re-arm receives, flush
 * output and release closed connections before waiting again.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

__thread pmu__loop_t *pmu__current_loop;

uint64_t pmu__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void pmu__loop_wake(pmu__loop_t *loop) {
  const pmu_config_t *cfg = &loop->server->cfg;
  if (cfg->driven && cfg->on_self_wake && pmu__current_loop != loop &&
      pthread_equal(loop->driver, pthread_self())) {
    /* The driving thread, between steps: no kernel wake-up, a step soon. */
    if (!loop->wake_self_pending) {
      loop->wake_self_pending = 1;
      cfg->on_self_wake(cfg->handler_data);
    }
    return;
  }
  if (loop->wake_fd >= 0) {
    uint64_t one = 1;
    ssize_t n = write(loop->wake_fd, &one, sizeof one);
    (void)n; /* EAGAIN: the counter is already non-zero, the loop will wake */
  }
}

void pmu__loop_bury(pmu__loop_t *loop, pmu__req_t *req) {
  req->qnext = loop->dead;
  loop->dead = req;
}

static void free_dead(pmu__loop_t *loop) {
  while (loop->dead) {
    pmu__req_t *r = loop->dead;
    loop->dead = r->qnext;
    pmu__req_free(r);
  }
}

void pmu__loop_mark_dirty(pmu__loop_t *loop, pmu__conn_t *conn) {
  if (!pmu__list_is_linked(&conn->dirty_link))
    pmu__list_insert_head(&loop->dirty, &conn->dirty_link);
}

/* A listener of this loop's own (SO_REUSEPORT) takes a multishot accept. One
 * shared with other loops or processes (a Unix socket, a given listen_fd)
 * takes one accept at a time: the kernel wakes the first of the waiting
 * accepts, and a multishot one never leaves the head of the queue, so one
 * loop would take every connection; re-armed after each, a loop goes to the
 * back of the queue and the connections go round. */
static void arm_accept(pmu__loop_t *loop) {
  const pmu_server_t *s = loop->server;
  int shared = loop->listen_fd == s->shared_listen_fd && (s->nloops > 1 || s->given_listener);
  if (pmu__prep_accept(&loop->ring, loop->listen_fd, !shared, PMU__UD(loop, OP_ACCEPT)) < 0) {
    loop->sqe_short = 1; /* armed at the end of a later turn */
    return;
  }
  loop->accept_armed = 1;
  loop->accept_cancel_sent = 0;
}

static void arm_wake(pmu__loop_t *loop) {
  if (pmu__prep_poll_in(&loop->ring, loop->wake_fd, PMU__UD(loop, OP_WAKE)) < 0) {
    loop->sqe_short = 1;
    return;
  }
  loop->wake_armed = 1;
}

/* Cancel the armed accept (stopping); retried each turn until it is sent. */
static void cancel_accept(pmu__loop_t *loop) {
  if (!loop->accept_armed || loop->accept_cancel_sent)
    return;
  if (pmu__prep_cancel(&loop->ring, PMU__UD(loop, OP_ACCEPT), PMU__UD(loop, OP_CANCEL)) < 0) {
    loop->sqe_short = 1;
    return;
  }
  loop->accept_cancel_sent = 1;
}

/* Hand the collected batch to the handler: the one place user code runs. */
void pmu__loop_dispatch(pmu__loop_t *loop) {
  if (loop->cev_n)
    pmu__connh_dispatch(loop, 0); /* OPEN, READ ... come before the requests they precede */
  unsigned n = loop->batch_len;
  if (!n)
    return;
  loop->batch_len = 0;
  loop->batch_gen++; /* every connection's in_batch starts over */
  loop->outstanding += n;
  STAT_ADD(loop, batches, 1);
  unsigned bucket = 31u - (unsigned)__builtin_clz(n);
  if (bucket >= PMU_BATCH_BUCKETS)
    bucket = PMU_BATCH_BUCKETS - 1;
  STAT_ADD(loop, batch_hist[bucket], 1);
  const pmu_config_t *cfg = &loop->server->cfg;
  cfg->handler(cfg->handler_data, loop->batch, n);
  pmu__handler_returned(loop, PMU_SLOW_REQUESTS, loop->batch, n);
}

void pmu__slow_call(pmu__loop_t *loop, int kind, uint64_t now, uint64_t held_ms,
                    pmu_request_t *const *requests, size_t count) {
  const pmu_config_t *cfg = &loop->server->cfg;
  STAT_ADD(loop, slow_batches, 1);
  if (loop->slow_report_ms && now - loop->slow_report_ms < 10000) {
    loop->slow_unreported++;
    return;
  }
  loop->slow_report_ms = now ? now : 1;
  pmu_slow_t slow = {.thread = loop->index,
                     .kind = kind,
                     .held_ms = held_ms,
                     .unreported = loop->slow_unreported,
                     .threshold = cfg->slow_handler_ms,
                     .requests = kind == PMU_SLOW_REQUESTS ? requests : NULL,
                     .count = kind == PMU_SLOW_REQUESTS ? count : 0};
  loop->slow_unreported = 0;
  if (cfg->on_slow) {
    cfg->on_slow(cfg->handler_data, &slow);
  } else if (cfg->log) {
    static const char *const what[] = {"requests", "WebSocket events", "connection events"};
    char more[64] = "";
    if (slow.unreported)
      snprintf(more, sizeof more, " (%llu more since the last report)",
               (unsigned long long)slow.unreported);
    char msg[400];
    snprintf(msg, sizeof msg,
             "a handler call (%s) held ring thread %u for %llu ms (slow_handler_ms %u): every "
             "connection on this thread waited; run blocking work in another thread%s",
             what[kind], loop->index, (unsigned long long)held_ms, cfg->slow_handler_ms, more);
    cfg->log(cfg->handler_data, PMU_LOG_WARNING, msg);
  }
  loop->held_since_ms = pmu__coarse_ms(); /* the report's own time is nobody's call */
}

/* Stopping: once the accept is gone, close this loop's listener so that new
 * connections are refused at once. A listener shared by all loops (a Unix
 * socket) is shut down instead and closed when the threads are joined. A
 * given listener (config.listen_fd) is left as it is: its waiting
 * connections belong to whoever else holds it. */
static void close_listener(pmu__loop_t *loop) {
  pmu_server_t *s = loop->server;
  if (loop->listen_fd < 0 || s->given_listener)
    return;
  if (loop->listen_fd == s->shared_listen_fd) {
    shutdown(loop->listen_fd, SHUT_RDWR);
  } else {
    close(loop->listen_fd);
    loop->listen_fd = -1;
  }
}

static const char *accept_errno_name(int err) {
  switch (err) {
  case EMFILE: return "EMFILE";
  case ENFILE: return "ENFILE";
  case ENOMEM: return "ENOMEM";
  case ENOBUFS: return "ENOBUFS";
  default: return "?";
  }
}

/*
 * Accept failed for want of descriptors or memory. The kernel takes the
 * descriptor before it looks for a connection, so an accept armed again at
 * once fails again at once, and the loop would spin at full CPU. Accept
 * nothing for accept_backoff_ms instead (nginx waits 500 ms), or until a
 * connection of this loop closes and frees a descriptor; say so once a
 * second at most.
 */
static void accept_backoff(pmu__loop_t *loop, int err) {
  const pmu_config_t *cfg = &loop->server->cfg;
  STAT_ADD(loop, accept_errors, 1);
  if (cfg->accept_backoff_ms) {
    loop->accept_paused = 1;
    loop->accept_resume_ms = loop->now_ms + cfg->accept_backoff_ms;
    cancel_accept(loop); /* a multishot accept that is still armed */
  }
  if (cfg->log && (!loop->accept_log_ms || loop->now_ms - loop->accept_log_ms >= 1000)) {
    loop->accept_log_ms = loop->now_ms ? loop->now_ms : 1;
    char msg[200];
    snprintf(msg, sizeof msg, "accept failed: %s (%s); pausing accepts for %u ms", strerror(err),
             accept_errno_name(err), cfg->accept_backoff_ms);
    cfg->log(cfg->handler_data, PMU_LOG_WARNING, msg);
  }
}

static void on_accept(pmu__loop_t *loop, const struct io_uring_cqe *cqe) {
  pmu_server_t *s = loop->server;
  if (!pmu__cqe_more(cqe)) {
    loop->accept_armed = 0; /* re-armed at the end of the turn unless stopping */
    if (loop->stopping)
      close_listener(loop);
  }
  if (cqe->res == -EMFILE || cqe->res == -ENFILE || cqe->res == -ENOMEM || cqe->res == -ENOBUFS) {
    if (!loop->stopping)
      accept_backoff(loop, -cqe->res);
    return;
  }
  if (cqe->res < 0)
    return; /* ECANCELED at stop; ECONNABORTED and the like: next turn */
  int fd = cqe->res;
  /* Accepted while stopping (the accept was not cancelled yet): the client
   * has sent or is sending its request, so it is served like the others. */
  unsigned open = atomic_fetch_add(&s->open_conns, 1);
  int over = open >= s->cfg.max_connections;
  if (over)
    atomic_fetch_sub(&s->open_conns, 1);
  pmu__conn_t *conn = pmu__conn_new(loop, fd);
  if (!conn) {
    if (!over)
      atomic_fetch_sub(&s->open_conns, 1);
    close(fd);
    return;
  }
  conn->counted = !over;
  STAT_ADD(loop, connections_accepted, 1);
  if (over) {
    STAT_ADD(loop, connections_rejected, 1);
    if (s->cfg.raw || s->tls) {
      pmu__conn_close(conn); /* no HTTP to say 503 in (or not before a handshake) */
      return;
    }
    pmu__conn_arm_recv(conn);
    pmu__conn_send_error(conn, 503);
    pmu__loop_mark_dirty(loop, conn);
    return;
  }
  if (__builtin_expect(s->tls != NULL, 0)) {
    /* HTTPS: OPEN comes when the handshake is done (core/tls.c), or now when
     * the handler gives each connection its certificate (ssl_cert_per_conn). */
    if (pmu__tls_accept(conn) < 0 || (s->cfg.ssl_cert_per_conn && pmu__connh_open(conn) < 0))
      pmu__conn_close(conn);
    return;
  }
  if (s->cfg.conn_handler && pmu__connh_open(conn) < 0) {
    pmu__conn_close(conn); /* no handle, no events: as if never accepted */
    return;
  }
  pmu__conn_arm_recv(conn);
  pmu__conn_timer_update(conn);
}

void pmu__loop_schedule_resume(pmu__loop_t *loop, pmu__conn_t *conn) {
  if (!pmu__list_is_linked(&conn->rearm_link))
    pmu__list_insert_head(&loop->rearm, &conn->rearm_link);
}

static void on_recv(pmu__conn_t *conn, const struct io_uring_cqe *cqe) {
  pmu__loop_t *loop = conn->loop;
  int res = cqe->res;
  if (!pmu__cqe_more(cqe)) {
    conn->recv_armed = 0;
    conn->ops--;
  }
  if (res > 0) {
    unsigned bid = pmu__cqe_buffer_id(cqe);
    STAT_ADD(loop, bytes_in, res);
    const char *data = pmu__bufring_addr(&loop->bufs, bid);
    if (__builtin_expect(conn->tls != NULL, 0)) {
      if (!conn->closing)
        pmu__tls_on_recv(conn, data, (size_t)res); /* ciphertext */
    } else if (!conn->closing) {
      pmu__conn_on_recv(conn, data, (size_t)res);
    }
    /* The parser copied what it keeps: the buffer goes back at once. */
    pmu__bufring_recycle(&loop->bufs, bid);
  } else if (res == 0) {
    if (!conn->closing && !conn->peer_eof) /* a TLS close_notify may have said it already */
      pmu__conn_on_eof(conn);
  } else if (res == -ENOBUFS) {
    STAT_ADD(loop, enobufs, 1); /* pool ran dry: not the connection's fault */
  } else if (res != -ECANCELED) {
    pmu__conn_fail(conn, -res); /* ECONNRESET and other hard errors */
  }
  if (conn->closing)
    pmu__conn_try_release(conn);
  else if (!conn->recv_armed)
    pmu__loop_schedule_resume(loop, conn);
}

static void on_send_cqe(pmu__conn_t *conn, const struct io_uring_cqe *cqe) {
  if (pmu__cqe_notif(cqe)) {
    /* SEND_ZC: the buffers are free only now. */
    conn->ops--;
    conn->zc_wait_notif = 0;
    pmu__conn_on_send(conn, conn->zc_res);
    return;
  }
  if (pmu__cqe_more(cqe)) {
    conn->zc_res = cqe->res;
    conn->zc_wait_notif = 1;
    return;
  }
  conn->ops--;
  pmu__conn_on_send(conn, cqe->res);
}

static void begin_stop(pmu__loop_t *loop);

/* Apply answers and stream pieces taken off the cross-thread queues, in the
 * order they were queued (an answer and a pmu_conn_send from one thread keep
 * their order); `count` the answers in stats.deferred or not. */
static void apply_arrivals(pmu__loop_t *loop, pmu__req_t *req, pmu__seg_t *seg, int count) {
  while (req || seg) {
    if (req && (!seg || req->qseq < seg->qseq)) {
      pmu__req_t *next = req->qnext;
      if (count)
        STAT_ADD(loop, deferred, 1);
      pmu__answer_arrived(req);
      req = next;
    } else {
      pmu__seg_t *next = seg->next;
      pmu__seg_arrived(seg);
      seg = next;
    }
  }
}

static void drain_answers(pmu__loop_t *loop) {
  pthread_mutex_lock(&loop->qlock);
  pmu__req_t *req = loop->qhead;
  pmu__seg_t *seg = loop->sqhead;
  loop->qhead = loop->qtail = NULL;
  loop->sqhead = loop->sqtail = NULL;
  pthread_mutex_unlock(&loop->qlock);
  apply_arrivals(loop, req, seg, 1);
}

/* What a wake-up asks for: the answers and pieces handed over. */
static void woken(pmu__loop_t *loop) {
  drain_answers(loop);
  /* Handlers may have consumed streamed bodies that paused reading. */
  pmu__list_t *l, *next;
  PMU__LIST_FOREACH_SAFE(&loop->body_paused, l, next)
  pmu__conn_maybe_resume(PMU__LIST_ENTRY(l, pmu__conn_t, body_link));
  if (!loop->stopping && atomic_load(&loop->server->stop_requested))
    begin_stop(loop);
}

static void on_wake(pmu__loop_t *loop, const struct io_uring_cqe *cqe) {
  if (!pmu__cqe_more(cqe))
    loop->wake_armed = 0;
  uint64_t v;
  ssize_t n = read(loop->wake_fd, &v, sizeof v);
  (void)n;
  woken(loop);
}

static void handle_cqe(pmu__loop_t *loop, const struct io_uring_cqe *cqe) {
  void *ptr = PMU__UD_PTR(cqe->user_data);
  switch (PMU__UD_OP(cqe->user_data)) {
  case OP_ACCEPT: on_accept(loop, cqe); break;
  case OP_RECV: on_recv(ptr, cqe); break;
  case OP_SEND: on_send_cqe(ptr, cqe); break;
  case OP_WAKE: on_wake(loop, cqe); break;
  case OP_SPLICE_IN: pmu__file_on_splice(ptr, 1, cqe->res); break;
  case OP_SPLICE_OUT: pmu__file_on_splice(ptr, 0, cqe->res); break;
  case OP_CANCEL:
    if (ptr != loop) {
      pmu__conn_t *conn = ptr;
      conn->ops--;
      conn->cancel_sent = 0;
      if (conn->closing)
        pmu__conn_try_release(conn);
      else if (!conn->recv_armed)
        pmu__loop_schedule_resume(loop, conn); /* resume may have waited for this */
    }
    break;
  default: break;
  }
}

static void begin_stop(pmu__loop_t *loop) {
  loop->stopping = 1;
  loop->stop_deadline = loop->now_ms + loop->server->cfg.shutdown_timeout_ms;
  if (loop->accept_armed)
    cancel_accept(loop);
  else
    close_listener(loop);
  /* Idle connections close now; busy ones once their answers are out;
   * WebSockets get a close 1001 (after what is queued). */
  pmu__list_t *l, *n;
  PMU__LIST_FOREACH_SAFE(&loop->all, l, n) {
    pmu__conn_t *c = PMU__LIST_ENTRY(l, pmu__conn_t, all_link);
    if (c->ws)
      pmu__ws_going_away(c);
    else if (c->evflags & CONNF_RAW)
      pmu__connh_going_away(c); /* raw: closed once what is queued is out */
    else
      pmu__conn_timer_update(c);
  }
}

static void expire_timers(pmu__loop_t *loop) {
  uint64_t now = loop->now_ms;
  pmu__conn_check_rates(loop);
  for (int kind = 1; kind < TIMER_KINDS; kind++) {
    pmu__list_t *first;
    if (kind == TIMER_WS_IDLE) {
      pmu__ws_expire_idle(loop); /* a list of WebSockets, not of connections */
      continue;
    }
    while ((first = pmu__list_first(&loop->timers[kind]))) {
      pmu__conn_t *c = PMU__LIST_ENTRY(first, pmu__conn_t, timer_link);
      if (c->deadline > now)
        break;
      pmu__conn_timer_unlink(c);
      if (kind >= TIMER_WS_PING) {
        pmu__ws_timer_fired(c, (unsigned)kind);
        continue;
      }
      STAT_ADD(loop, timeouts, 1);
      if (kind != TIMER_LINGER && kind != TIMER_STOP_GRACE && !c->close_err)
        c->close_err = ETIMEDOUT; /* the CLOSE event's err */
      if ((kind == TIMER_HEADER && c->pstate != PS_IDLE) || kind == TIMER_BODY) {
        pmu__conn_send_error(c, 408);
        pmu__loop_mark_dirty(loop, c);
      } else if (kind == TIMER_IDLE || kind == TIMER_STOP_GRACE) {
        pmu__conn_close_gracefully(c); /* TLS: close_notify first */
      } else {
        if (kind == TIMER_TLS_HS)
          STAT_ADD(loop, tls_handshake_timeouts, 1);
        pmu__conn_close(c);
      }
    }
  }
  if (loop->stopping && now >= loop->stop_deadline) {
    pmu__list_t *l, *n;
    PMU__LIST_FOREACH_SAFE(&loop->all, l, n) {
      pmu__conn_t *c = PMU__LIST_ENTRY(l, pmu__conn_t, all_link);
      c->cut_at_stop = 1;
      pmu__conn_close(c);
    }
  }
}

/* Milliseconds until the next timer, or -1 when none is set. */
static int64_t next_wait(const pmu__loop_t *loop) {
  uint64_t soonest = pmu__ws_next_idle(loop);
  for (int kind = 1; kind < TIMER_KINDS; kind++) {
    if (kind == TIMER_WS_IDLE)
      continue;
    const pmu__list_t *first = pmu__list_first(&loop->timers[kind]);
    if (first) {
      const pmu__conn_t *c = PMU__LIST_ENTRY(first, pmu__conn_t, timer_link);
      if (c->deadline < soonest)
        soonest = c->deadline;
    }
  }
  if (loop->stopping && loop->stop_deadline < soonest)
    soonest = loop->stop_deadline;
  if (loop->rate_check_ms < soonest)
    soonest = loop->rate_check_ms;
  if (loop->accept_paused && !loop->stopping && loop->accept_resume_ms < soonest)
    soonest = loop->accept_resume_ms;
  if (loop->sqe_short)
    return 1; /* something waits for an SQE: come back soon */
  if (soonest == UINT64_MAX)
    return -1;
  return soonest > loop->now_ms ? (int64_t)(soonest - loop->now_ms) : 0;
}

static void flush_dirty(pmu__loop_t *loop) {
  pmu__list_t taken, *l;
  pmu__list_move(&loop->dirty, &taken);
  while ((l = pmu__list_first(&taken))) {
    pmu__list_unlink(l);
    pmu__conn_flush(PMU__LIST_ENTRY(l, pmu__conn_t, dirty_link));
  }
}

/* The work after a pass over the completions, in an order that lets no
 * list hold a connection that was released. */
static void end_of_turn(pmu__loop_t *loop) {
  expire_timers(loop);
  pmu__bufring_publish(&loop->bufs);

  /* Resuming is a turn of its own for the per-turn cap on pipelined
   * requests; a connection capped again waits for the next one. */
  loop->turn_gen++;
  /* Each pending-work list is taken whole: what its work queues goes to the
   * next pass. */
  pmu__list_t taken, *l;
  pmu__list_move(&loop->rearm, &taken);
  while ((l = pmu__list_first(&taken))) {
    pmu__list_unlink(l);
    pmu__conn_t *c = PMU__LIST_ENTRY(l, pmu__conn_t, rearm_link);
    if (!c->closing && !c->recv_armed)
      pmu__conn_maybe_resume(c);
  }

  /* Resuming parsed the stash: run the handler on what it completed before
   * flushing, or those requests would wait for the next completion. */
  pmu__loop_dispatch(loop);
  pmu__ws_dispatch(loop);
  flush_dirty(loop);

  /* TLS handshakes come after the established connections' answers went
   * out: a flood of them cannot hold those back. Their output, and requests
   * that came right behind a Finished, go in this turn too. */
  if (!pmu__list_is_empty(&loop->tls_ready)) {
    pmu__tls_run_handshakes(loop);
    pmu__loop_dispatch(loop);
    flush_dirty(loop);
  }

  pmu__list_move(&loop->grave, &taken);
  if (!pmu__list_is_empty(&taken))
    loop->accept_paused = 0; /* descriptors were freed: accept again now */
  while ((l = pmu__list_first(&taken))) {
    pmu__list_unlink(l);
    pmu__conn_release(PMU__LIST_ENTRY(l, pmu__conn_t, grave_link));
  }
  /* The GONE of the WebSockets just released (their handles outlive them),
   * then the CLOSE of every connection released. */
  pmu__ws_dispatch(loop);
  if (loop->cev_n || loop->cev_closed)
    pmu__connh_dispatch(loop, 1);

  free_dead(loop);
  if (loop->accept_paused && loop->now_ms >= loop->accept_resume_ms)
    loop->accept_paused = 0;
  if (!loop->accept_armed && !loop->stopping && !loop->accept_paused)
    arm_accept(loop);
  else if (loop->stopping)
    cancel_accept(loop);
  if (!loop->wake_armed)
    arm_wake(loop);
  uint32_t overflow = pmu__ring_overflows(&loop->ring);
  __atomic_store_n(&loop->stats.cq_overflows, overflow, __ATOMIC_RELAXED);
  __atomic_store_n(&loop->stats.connections_open, loop->nconns, __ATOMIC_RELAXED);
}

/*
 * The ring's wait failed for a reason other than a timer (ETIME), a signal
 * (EINTR), or a kernel short of room or memory for the moment (EAGAIN, EBUSY:
 * reaping the completions frees it). Count it, say so once a second at
 * most, and pause a little when there is nothing to reap, so that an error
 * that repeats cannot spin the thread.
 */
static void wait_failed(pmu__loop_t *loop, int err) {
  const pmu_config_t *cfg = &loop->server->cfg;
  STAT_ADD(loop, wait_errors, 1);
  uint64_t now = pmu__now_ms();
  if (cfg->log && (!loop->wait_log_ms || now - loop->wait_log_ms >= 1000)) {
    loop->wait_log_ms = now ? now : 1;
    char msg[160];
    snprintf(msg, sizeof msg, "io_uring wait failed: %s (errno %d); retrying", strerror(err), err);
    cfg->log(cfg->handler_data, PMU_LOG_ERROR, msg);
  }
  if (!pmu__ring_cq_ready(&loop->ring)) {
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 10 * 1000000L};
    nanosleep(&pause, NULL);
  }
}

/* Whether the last turn left no work for the next one: it may then wait. */
static int loop_idle(const pmu__loop_t *loop) {
  /* Connections capped last turn resume at the end of this one: no
   * waiting for a completion then. */
  /* Work a handler made at the end of the last turn (connections to flush or
   * release, events) is done now, not after the next completion. */
  return pmu__list_is_empty(&loop->rearm) && pmu__list_is_empty(&loop->dirty) &&
         pmu__list_is_empty(&loop->grave) && pmu__list_is_empty(&loop->tls_ready) && !loop->cev_n &&
         !loop->cev_closed;
}

/* How long an idle ring that would wait wait_ms (< 0: until a completion)
 * lingers instead, in µs, while the handler is busy (config.busy): -1 when
 * it does not (waits for the first completion). */
static int64_t linger_us(const pmu__loop_t *loop, int64_t wait_ms) {
  const pmu_config_t *cfg = &loop->server->cfg;
  if (wait_ms == 0 || !cfg->busy_linger_us || cfg->busy == NULL || !cfg->busy(cfg->handler_data))
    return -1;
  int64_t us = cfg->busy_linger_us;
  if (wait_ms > 0 && wait_ms < us / 1000)
    us = wait_ms * 1000; /* a timer comes first */
  return us;
}

/* One turn: submit, wait up to wait_ms (< 0: for a completion; with
 * linger >= 0, for busy_linger_batch completions or linger µs), handle the
 * completions, then the turn's end. 1 while the loop goes on, 0 once it has
 * stopped and closed every connection. */
static int turn(pmu__loop_t *loop, int64_t wait_ms, int64_t linger) {
  int rc;
  if (linger >= 0) {
    rc = pmu__submit_and_wait_n(&loop->ring, loop->server->cfg.busy_linger_batch, linger);
    STAT_ADD(loop, lingers, 1);
  } else {
    rc = pmu__submit_and_wait(&loop->ring, wait_ms);
  }
  /* ETIME is a timer; EINTR a signal; both mean "look again". */
  if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
    wait_failed(loop, -rc);
  loop->sqe_short = 0;
  loop->turn_gen++;
  STAT_ADD(loop, waits, 1);
  loop->now_ms = pmu__now_ms();
  loop->held_since_ms = loop->now_ms;
  pmu__date_refresh(loop, time(NULL));

  unsigned head, seen = 0;
  struct io_uring_cqe *cqe;
  pmu__ring_for_each_cqe(&loop->ring, head, cqe) {
    seen++;
    handle_cqe(loop, cqe);
  }
  pmu__ring_cq_advance(&loop->ring, seen);
  STAT_ADD(loop, cqes, seen);
  pmu__loop_dispatch(loop);
  pmu__ws_dispatch(loop); /* the WebSocket events of this pass, after the requests */

  if (!loop->stopping && atomic_load_explicit(&loop->server->stop_requested, memory_order_relaxed))
    begin_stop(loop);
  end_of_turn(loop);
  return !(loop->stopping && loop->nconns == 0 && !loop->accept_armed);
}

static void run(pmu__loop_t *loop) {
  for (;;) {
    int64_t wait_ms = loop_idle(loop) ? next_wait(loop) : 0;
    if (!turn(loop, wait_ms, linger_us(loop, wait_ms)))
      break;
  }
}

static void report_started(pmu__loop_t *loop, int rc) {
  pmu_server_t *s = loop->server;
  pthread_mutex_lock(&s->lock);
  loop->start_rc = rc;
  s->loops_started++;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

static void report_exited(pmu__loop_t *loop) {
  pmu_server_t *s = loop->server;
  pthread_mutex_lock(&s->lock);
  s->loops_running--;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

/* Answers that arrive after this are freed by whoever gives them. */
static void close_answer_queue(pmu__loop_t *loop) {
  drain_answers(loop);
  pthread_mutex_lock(&loop->qlock);
  pmu__req_t *late = loop->qhead;
  pmu__seg_t *late_seg = loop->sqhead;
  loop->qhead = loop->qtail = NULL;
  loop->sqhead = loop->sqtail = NULL;
  loop->exited = 1;
  /* Requests still with the handler keep the server alive. The owner's
   * reference is held until the threads are joined, so the count cannot
   * reach zero while this thread runs. */
  long held = loop->outstanding;
  atomic_fetch_add(&loop->server->refs, held);
  pthread_mutex_unlock(&loop->qlock);
  apply_arrivals(loop, late, late_seg, 0);
  pmu__ws_loop_exit(loop); /* events no handler will see: drop them */
  pmu__connh_loop_exit(loop);
  free_dead(loop);
  /* Those answered just now were counted above. */
  atomic_fetch_sub(&loop->server->refs, held - loop->outstanding);
}

static void free_pools(pmu__loop_t *loop) {
  while (loop->free_reqs) {
    pmu__req_t *r = loop->free_reqs;
    loop->free_reqs = r->next;
    free(r->data);
    free(r->hoff);
    free(r->headers);
    free(r->out);
    free(r);
  }
  pmu__list_t *l;
  while ((l = pmu__list_first(&loop->free_conns))) {
    pmu__list_unlink(l);
    pmu__conn_t *c = PMU__LIST_ENTRY(l, pmu__conn_t, all_link);
    free(c->stash);
    free(c);
  }
  while (loop->free_sendbufs) {
    pmu__sendbuf_t *sb = loop->free_sendbufs;
    loop->free_sendbufs = sb->next;
    free(sb);
  }
  pmu__file_loop_exit(loop);
  pmu__tls_loop_exit(loop);
  free(loop->batch);
  free(loop->free_slots);
}

/* The loop's set-up, on the thread that will run it (SINGLE_ISSUER binds a
 * ring to its creator): 0, or -errno, reported to pmu_server_start either way.
 * A driven loop (config.driven) runs on the embedding program's thread: its
 * signals stay as they are, and its ring is not set up with DEFER_TASKRUN,
 * under which completions do not make the ring's descriptor readable. */
static int loop_begin(pmu__loop_t *loop) {
  pmu_server_t *s = loop->server;
  const pmu_config_t *cfg = &s->cfg;
  pmu__current_loop = loop;

  if (!cfg->driven) {
    /* Signals belong to the embedding program's threads, not to rings. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
  }

  pmu__list_init(&loop->dirty);
  pmu__list_init(&loop->rearm);
  pmu__list_init(&loop->grave);
  pmu__list_init(&loop->body_paused);
  pmu__list_init(&loop->all);
  pmu__list_init(&loop->free_conns);
  pmu__list_init(&loop->tls_waiting);
  pmu__list_init(&loop->tls_ready);
  for (int kind = 0; kind < TIMER_KINDS; kind++)
    pmu__list_init(&loop->timers[kind]);
  loop->now_ms = pmu__now_ms();
  loop->rate_check_ms = UINT64_MAX;
  loop->timeout_ms[TIMER_HEADER] = cfg->header_timeout_ms;
  loop->timeout_ms[TIMER_BODY] = cfg->body_timeout_ms;
  loop->timeout_ms[TIMER_IDLE] = cfg->keepalive_timeout_ms;
  loop->timeout_ms[TIMER_SEND] = cfg->send_timeout_ms;
  loop->timeout_ms[TIMER_LINGER] = 2000;
  loop->timeout_ms[TIMER_RAW_IDLE] = cfg->raw_idle_timeout_ms;
  loop->timeout_ms[TIMER_TLS_HS] = cfg->ssl_handshake_timeout_ms;
  loop->timeout_ms[TIMER_WS_PING] = cfg->ws_ping_interval_ms;
  loop->timeout_ms[TIMER_WS_PONG] = cfg->ws_ping_timeout_ms;
  loop->timeout_ms[TIMER_WS_CLOSE] = cfg->ws_close_timeout_ms;
  loop->timeout_ms[TIMER_WS_IDLE] = cfg->ws_idle_timeout_ms;
  /* Stopping, a connection between requests (just accepted, or kept alive)
   * may have its next request on the way: it is served with Connection:
   * close, unless the connection stays silent this long. */
  loop->timeout_ms[TIMER_STOP_GRACE] =
      cfg->header_timeout_ms && cfg->header_timeout_ms < 1000 ? cfg->header_timeout_ms : 1000;
  pmu__date_refresh(loop, time(NULL));

  pmu_config_t ring_cfg = *cfg;
  if (cfg->driven)
    ring_cfg.defer_taskrun = 0;
  int rc = pmu__ring_setup(&loop->ring, &ring_cfg, &loop->info);
  if (rc == 0) {
    loop->ring_ready = 1;
    rc = pmu__bufring_setup(&loop->ring, &loop->bufs, cfg->buf_count, cfg->buf_size);
  }
  if (rc == 0) {
    loop->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    loop->batch = malloc(sizeof *loop->batch * cfg->batch_max);
    if (loop->wake_fd < 0 || !loop->batch)
      rc = -ENOMEM;
  }
  if (rc == 0 && cfg->registered_files) {
    unsigned slots = cfg->max_connections + 64;
    loop->free_slots = malloc(sizeof(int) * slots);
    if (!loop->free_slots)
      rc = -ENOMEM;
    else
      for (unsigned i = 0; i < slots; i++)
        loop->free_slots[loop->nfree_slots++] = (int)(slots - 1 - i);
  }
  if (rc == 0 && cfg->sched_batch && !cfg->driven) {
    /* Moving one's own thread within the fair class needs no privilege; a
     * driven loop's thread is the embedding program's and keeps its policy. */
    struct sched_param none = {0};
    loop->info.sched_batch = pthread_setschedparam(pthread_self(), SCHED_BATCH, &none) == 0;
  }
  report_started(loop, rc);
  if (rc == 0) {
    if (cfg->on_thread_start)
      cfg->on_thread_start(cfg->handler_data, loop->index);
    arm_accept(loop);
    arm_wake(loop);
  }
  return rc;
}

/* The loop's end, on its thread; `ran`: loop_begin succeeded. */
static void loop_end(pmu__loop_t *loop, int ran) {
  const pmu_config_t *cfg = &loop->server->cfg;
  if (ran && cfg->on_thread_stop)
    cfg->on_thread_stop(cfg->handler_data, loop->index);
  close_answer_queue(loop);
  pmu__static_loop_exit(loop);
  if (loop->ring_ready) {
    pmu__bufring_free(&loop->ring, &loop->bufs);
    pmu__ring_exit(&loop->ring);
    loop->ring_ready = 0;
  }
  /* wake_fd stays open until the server is freed: pmu_server_stop() may
   * still be writing to it from another thread. */
  free_pools(loop);
  pmu__current_loop = NULL;
  report_exited(loop);
}

void *pmu__loop_main(void *arg) {
  pmu__loop_t *loop = arg;
  /* Named for top -H, perf and /proc/PID/task/TID/comm (15 characters at most). */
  char name[16];
  snprintf(name, sizeof name, "pmu-ring-%u", loop->index);
  pthread_setname_np(pthread_self(), name);
  int rc = loop_begin(loop);
  if (rc == 0)
    run(loop);
  loop_end(loop, rc == 0);
  return NULL;
}

/* ---- driven loops (config.driven): the embedding program's thread runs them ---- */

int pmu__loop_drive_begin(pmu__loop_t *loop) {
  int rc = loop_begin(loop);
  if (rc < 0)
    loop_end(loop, 0);
  else
    loop->driver = pthread_self();
  pmu__current_loop = NULL; /* set only while a step runs */
  return rc;
}

int pmu__loop_drive_step(pmu__loop_t *loop, int *next_ms) {
  pmu__loop_t *outer = pmu__current_loop;
  pmu__current_loop = loop;
  if (loop->wake_self_pending) { /* config.on_self_wake: what was handed over */
    loop->wake_self_pending = 0;
    woken(loop);
  }
  int going = turn(loop, 0, -1);
  if (going) {
    /* What the turn's end queued (the answers' sends, re-armed receives) goes
     * now: the next wait is the caller's, not the ring's. */
    if (io_uring_sq_ready(&loop->ring) > 0) {
      int rc = io_uring_submit(&loop->ring);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
        wait_failed(loop, -rc);
    }
    int64_t wait = loop_idle(loop) ? next_wait(loop) : 0;
    *next_ms = wait > INT_MAX ? INT_MAX : (int)wait;
  } else {
    loop->drive_done = 1;
    loop_end(loop, 1);
  }
  pmu__current_loop = outer;
  return going;
}
