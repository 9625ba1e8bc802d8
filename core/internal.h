/*
 * internal.h: the engine's private types. Nothing outside core/ includes this.
 *
 * Ownership in one paragraph: a loop (one per worker thread) owns its ring,
 * its buffer pool, its connections and every request parsed on them. A
 * request handed to the handler stays alive until pmu_respond(); if its
 * connection dies first the request is "orphaned" (req->conn == NULL) and
 * freed when answered. Only the loop's own thread touches a connection;
 * other threads reach a loop only through its locked answer queue.
 */
#ifndef PMU_INTERNAL_H
#define PMU_INTERNAL_H

#include <pmu/pmu.h>

#include <liburing.h>
#include <llhttp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <sys/uio.h>
#include <time.h>

#include "faults.h"
#include "list.h"
#include "uring.h"

#define PMU__IOV_MAX 64
/* Most pipelined requests of one connection parsed in one turn of its loop. */
#define PIPELINE_TURN 32

/* Relaxed counters: written by one thread, read by any. */
#define STAT_ADD(loop, field, n)                                                            \
  __atomic_store_n(&(loop)->stats.field,                                                    \
                   __atomic_load_n(&(loop)->stats.field, __ATOMIC_RELAXED) + (uint64_t)(n), \
                   __ATOMIC_RELAXED)

typedef struct pmu__loop pmu__loop_t;

/* The msghdr and iovecs of one send in flight, lent by the loop's pool so
 * that an idle connection does not carry a kilobyte of them. */
typedef struct pmu__sendbuf {
  struct pmu__sendbuf *next;
  struct msghdr msg;
  struct iovec iov[PMU__IOV_MAX];
} pmu__sendbuf_t;

/* A peer or local address, compactly: IPv4, IPv6, or just the family. */
typedef union pmu__sockaddr {
  struct sockaddr sa;
  struct sockaddr_in in4;
  struct sockaddr_in6 in6;
} pmu__sockaddr_t;
typedef struct pmu__conn pmu__conn_t;
typedef struct pmu__req pmu__req_t;
typedef struct pmu_ws pmu__ws_t;
typedef struct pmu_conn pmu__connh_t;         /* a connection's handle for config.conn_handler */
typedef struct pmu__tls_conn pmu__tls_conn_t; /* a TLS connection's state (core/tls.c) */
struct pmu__tls_snap;

/* Offsets of one header inside req->data while it is still growing. */
typedef struct pmu__hoff {
  uint32_t name_off, name_len, value_off, value_len;
} pmu__hoff_t;

/* One piece of a streamed answer, hanging off its request. */
typedef struct pmu__seg pmu__seg_t;
struct pmu__seg {
  pmu__seg_t *next; /* the request's piece list, or the loop's stream queue */
  pmu__req_t *req;  /* a piece of a streamed answer; NULL for a WebSocket's */
  pmu__ws_t *ws;    /* a WebSocket frame or command (core/ws.c); NULL otherwise */
  pmu__connh_t *ch; /* pmu_conn_send bytes or a pmu_conn_* command (core/conn_events.c) */
  uint64_t qseq;    /* place in the loop's cross-thread queues (arrival order) */
  uint8_t kind;     /* enum pmu__seg_kind */
  uint8_t flags;    /* WebSocket: enum pmu__ws_seg_flag */
  uint8_t pre_len;  /* chunk-size line before the data */
  uint8_t post_len; /* 2: CRLF after the data (chunked) */
  char pre[21];
  const char *data;
  size_t len;     /* data bytes */
  size_t body;    /* bytes counted in req->unsent */
  size_t sent;    /* of pre + data + post */
  size_t raw_len; /* WebSocket: the message's size before compressing (0: not compressed) */
  void (*release)(void *);
  void *ctx;
  int fd;             /* SEG_FILE: the file (owned: release(ctx), or closed when release is NULL) */
  uint64_t foff;      /* SEG_FILE: where its range starts in the file; len is the range's length */
  char inline_data[]; /* copied data, when not released by the producer */
};

/* g->flags of a SEG_FILE piece (loop side). */
enum pmu__file_seg_flag {
  FSEG_PATH_SET = 1, /* the way it leaves was chosen (at its first flush) */
  FSEG_SPLICE = 2,   /* it leaves by splice; otherwise read into memory and sent */
};

enum pmu__seg_kind {
  SEG_RAW,
  SEG_END,
  SEG_FILE, /* a range of an open file (pmu_respond_write_file): pre, the file's bytes, post */
  /* WebSocket (g->ws set): a frame to send (pre: its header), or a command
   * from another thread that the loop applies in order with the frames. */
  SEG_WS_FRAME,
  SEG_WS_PAUSE,
  SEG_WS_RESUME,
  SEG_WS_RELEASE,
  SEG_WS_LIMIT,
  /* pmu_conn_t commands (g->ch set); pmu_conn_send's bytes are SEG_RAW pieces with g->ch. */
  SEG_CONN_PAUSE,
  SEG_CONN_RESUME,
  SEG_CONN_CLOSE,
  SEG_CONN_RELEASE,
  SEG_CONN_TLS, /* pmu_conn_tls_use (g->ctx: the certificate handle) or _decline (NULL) */
};

enum pmu__stream_mode { STREAM_NONE, STREAM_CHUNKED, STREAM_LENGTH, STREAM_CLOSE, STREAM_NOBODY };

/* How a streamed answer went wrong for want of memory. */
enum pmu__stream_broken {
  BROKEN_NONE,
  BROKEN_CLOSE,  /* a piece was lost, or the head is a 503: the end closes, without a
                    last chunk, so that the client sees the answer incomplete */
  BROKEN_NO_END, /* nothing was delivered, not even an end piece: the end answers 503
                    and closes through the answer queue, which needs no memory */
};

enum pmu__req_kind {
  REQ_USER,   /* a parsed request, answered by the handler */
  REQ_ENGINE, /* a message of the engine's own: 100 Continue, 400, 408, ... */
  REQ_RAW,    /* a place in the output queue for pmu_conn_send's bytes (its pieces), or
                 the mark of a close after send (close_after, no pieces): answered and
                 streaming from the start, never the handler's (core/conn_events.c) */
};

struct pmu__req {
  pmu_request_t pub; /* first: pmu_request_t * converts to pmu__req_t * */
  pmu__loop_t *loop;
  pmu__conn_t *conn; /* NULL once the connection is gone (orphan) */
  pmu__req_t *next;  /* connection FIFO, or the loop's free list */
  pmu__req_t *qnext; /* the loop's cross-thread answer queue */
  uint8_t kind;
  uint8_t answered;     /* out holds the response */
  uint8_t status_class; /* status / 100 of the answer serialized, counted on arrival */
  uint8_t close_after;  /* close the connection once this response is sent */
  uint8_t with_handler; /* handed to the handler and not answered yet */
  pmu__ws_t *ws;        /* the answer is a 101 accepting this WebSocket (core/ws.c) */

  /* What the request keeps: url, header names and values, body. */
  char *data;
  size_t data_len, data_cap;
  pmu__hoff_t *hoff;
  size_t hcount, hcap;
  pmu_header_t *headers; /* built from hoff at message complete */
  size_t headers_cap;
  uint32_t url_off, url_len;

  /* The response on the wire: out, then an external body if any. */
  char *out;
  size_t out_len, out_cap;
  const void *ext_body;
  size_t ext_len;
  void (*ext_release)(void *);
  void *ext_ctx;
  size_t sent; /* bytes of out + ext already written */

  /* A streamed answer. Producer side (any thread): stream_state, mode,
   * remaining. Loop side: streaming, segs. Shared: unsent, want_drain, gone. */
  uint8_t stream_state;      /* 0 none, 1 started, 2 ended */
  uint8_t stream_mode;       /* enum pmu__stream_mode */
  uint8_t stream_broken;     /* enum pmu__stream_broken: an allocation failed */
  pmu__seg_t *end_seg;       /* the end piece, allocated at start so that
                                pmu_respond_end() never fails for want of memory */
  uint8_t streaming;         /* loop side: this request's output is its segs */
  uint8_t aborted;           /* producer side, read by the loop after the end
                                arrives: the answer failed half-way (counted, and
                                the connection closes without completing it) */
  uint8_t overflowed;        /* producer side: more than the Content-Length was
                                written (cut off; the connection closes) */
  uint64_t stream_remaining; /* STREAM_LENGTH: bytes still allowed */
  pmu__seg_t *seg_head, *seg_tail;
  atomic_size_t unsent;
  atomic_int want_drain;
  atomic_int gone;     /* the connection is gone (2: cut by the stop): writes are dropped */
  atomic_int peer_eof; /* the client half-closed (FIN) before this was answered */

  /* A streamed request body (pub.body_streaming). */
  atomic_size_t body_delivered; /* written by the loop */
  atomic_size_t body_consumed;  /* written by the handler's threads */
  atomic_int body_wait;         /* the loop paused reading for this backlog */
  uint8_t body_dropped;         /* answered early: deliver no more */
  uint8_t detached;             /* sent and out of the queue, but still
                                   conn->cur (its body is being discarded) */

  /* The body against config.body_buffer_budget. */
  size_t body_charged; /* bytes of it counted in server->body_bytes */
  uint8_t spooled;     /* the body is in a temporary file, not in data */
  int spool_fd;        /* that file while the body arrives (then closed) */
  size_t spool_len;    /* bytes written to it */
  void *spool_map;     /* the finished body mapped read-only (pub.body) */

  /* Last, out of the way of the fields every request touches. */
  pmu__connh_t *h;                /* its connection's handle (a reference), with conn_handler */
  uint64_t qseq;                  /* place in the loop's cross-thread queues (arrival order) */
  struct pmu__tls_snap *tls_snap; /* its TLS connection's handshake (a reference); NULL: plain */
};

enum pmu__timer_kind {
  TIMER_NONE = 0,
  TIMER_HEADER,
  TIMER_BODY,
  TIMER_IDLE,
  TIMER_SEND,
  TIMER_LINGER,
  TIMER_STOP_GRACE, /* stopping, between requests: a short wait for one on its way */
  TIMER_RAW_IDLE,   /* a raw connection: nothing received or sent (raw_idle_timeout_ms) */
  TIMER_TLS_HS,     /* a TLS handshake not finished (ssl_handshake_timeout_ms) */
  TIMER_WS_PING,    /* a WebSocket silent for ws_ping_interval_ms: ping it */
  TIMER_WS_PONG,    /* no frame since our ping for ws_ping_timeout_ms: drop it */
  TIMER_WS_CLOSE,   /* a close frame sent, ws_close_timeout_ms for the peer's */
  TIMER_WS_IDLE,    /* (loop->ws_idle, through the pmu_ws_t) no message either way */
  TIMER_KINDS
};

enum pmu__parse_state { PS_IDLE, PS_HEADERS, PS_BODY };

enum pmu__conn_evflag {
  CONNF_RAW = 1, /* config.raw: no HTTP, received bytes are DATA events */
  CONNF_IO = 2,  /* config.conn_io_events: READ and SENT events */
};

struct pmu__conn {
  pmu__loop_t *loop;
  int fd;
  int fixed; /* index in the ring's file table, or -1 */
  uint64_t id;
  llhttp_t parser;

  pmu__req_t *cur;         /* being parsed */
  pmu__req_t *head, *tail; /* FIFO of responses owed, in request order */
  unsigned pending;        /* FIFO length */
  size_t out_queued;       /* answered bytes not yet sent, plus PMU__SEG_COST per queued
                              piece of a streamed answer */

  uint16_t ops; /* SQEs in flight that name this connection */
  uint8_t recv_armed;
  uint8_t send_inflight;
  uint8_t zc_wait_notif;
  uint8_t closing;
  uint8_t peer_eof;
  uint8_t no_more; /* parse nothing more: after Connection: close or an error */
  uint8_t paused;  /* backpressure: parser paused, recv cancelled */
  uint8_t cancel_sent;
  uint8_t pstate;            /* enum pmu__parse_state */
  uint8_t served;            /* at least one request began */
  uint8_t last_cb;           /* parser glue: 0 none, 1 header name, 2 header value */
  uint32_t trailer_name_len; /* the trailer field name being read */
  uint8_t lf_after_name;     /* an LF came between the field name and its value */
  uint64_t name_end;         /* absolute offset just past the last field-name span */
  uint8_t llhttp_paused;     /* llhttp returned HPE_PAUSED; resume before feeding */
  uint8_t lingering;         /* sent a closing error: discard input until EOF or timeout */
  uint8_t linger_on_close;   /* close through lingering (input may be unread) */
  uint8_t counted;           /* holds a place in server->open_conns */
  uint8_t cut_at_stop;       /* closed by the stop deadline (pmu_request_gone 2) */
  uint16_t error_status;     /* status to answer a parse error with */
  uint8_t upgrade_wait;      /* a WebSocket handshake awaits its answer: parse nothing */
  pmu__ws_t *ws;             /* accepted: the connection speaks WebSocket (core/ws.c) */

  /* Parser glue: absolute stream offsets, to detect obs-fold. */
  uint64_t fed;        /* bytes fed to llhttp before the current chunk */
  const char *chunk;   /* start of the chunk being fed */
  uint64_t value_end;  /* absolute offset just past the last value span */
  uint64_t data_end;   /* body_bytes at the end of the body or chunk being read */
  uint8_t cr_pending;  /* the last byte fed was a CR of the framing: LF must follow */
  uint8_t close_asked; /* a Connection header of this request has "close" */
  size_t header_bytes;
  size_t body_bytes;

  /* Minimum receive rate: the phase watched (TIMER_HEADER or TIMER_BODY, else
   * 0), when it began and the bytes counted then. */
  uint8_t rate_kind;
  uint64_t rate_t0;
  uint64_t rate_base;
  uint64_t rx; /* bytes received on this connection */

  /* Pipelining: requests of this connection in the batch being gathered
   * (valid while batch_gen matches the loop's) and in this turn (turn_gen),
   * and the size of its last answer, to bound what its next requests make. */
  unsigned in_batch, in_turn;
  uint64_t batch_gen, turn_gen;
  size_t answer_est;

  /* Input held back while paused. */
  char *stash;
  size_t stash_len, stash_off, stash_cap;

  /* Timer lists: one per kind, each sorted by deadline because every entry
   * of a kind has the same duration and is appended at the tail. */
  uint8_t timer_kind;
  uint64_t deadline;
  pmu__list_t timer_link; /* loop->timers[timer_kind] */

  /* The loop's lists this connection may be on; linked means "on it". */
  pmu__list_t dirty_link; /* loop->dirty: needs a flush */
  pmu__list_t rearm_link; /* loop->rearm: resume reading at the end of the turn */
  pmu__list_t grave_link; /* loop->grave: closed, no SQE in flight, to release */
  pmu__list_t all_link;   /* loop->all, or loop->free_conns once released */
  pmu__list_t body_link;  /* loop->body_paused: reads paused for a body backlog */
  size_t body_off;        /* where the body starts in cur->data */

  /* Sending a file piece (core/file.c): the read path's buffer, holding the file bytes
   * [fbuf_pos, fbuf_pos + fbuf_len) of the piece fbuf_seg's range; the splice path's pipe
   * (fill bytes in it, from where the piece's sent bytes end), and the results of the
   * splices in flight. */
  char *fbuf;
  size_t fbuf_cap, fbuf_len;
  pmu__seg_t *fbuf_seg;
  uint64_t fbuf_pos;
  struct pmu__pipe *pipe;
  size_t pipe_fill;
  size_t splice_len; /* asked of the splices in flight */
  uint8_t splicing;  /* splice SQEs in flight: 1 (out only) or 2 (in, linked to out) */
  uint8_t splice_in; /* the pair began with a splice into the pipe */
  uint8_t out_dead;  /* a file failed mid-send: nothing more goes out */
  uint8_t nonblock;  /* the socket was made O_NONBLOCK (for splicing into it) */
  uint8_t reading;   /* a read of file bytes not in the page cache is in flight */
  int splice_in_res, splice_out_res;

  int zc_res;         /* result of a SEND_ZC awaiting its notification */
  pmu__sendbuf_t *sb; /* held only while a send is in flight */
  size_t send_len;

  /* Connection events (core/conn_events.c), out of the way of the hot fields. */
  pmu__connh_t *h;      /* its handle, with config.conn_handler */
  int close_err;        /* why it closes (the CLOSE event's err), 0: orderly */
  uint8_t evflags;      /* enum pmu__conn_evflag: what the receive path tells h */
  uint8_t user_paused;  /* pmu_conn_pause_reading: reading stays off until resumed */
  pmu__tls_conn_t *tls; /* HTTPS (core/tls.c); NULL on a plain connection */

  pmu__sockaddr_t peer, local; /* last: conn_new clears what comes before */
};

struct pmu__loop {
  pmu_server_t *server;
  unsigned index;
  pthread_t thread; /* its own; for a driven loop, unset (driver is the caller's) */
  pthread_t driver;
  int drive_done;        /* a driven loop that has ended (loop_end ran) */
  int wake_self_pending; /* config.on_self_wake called since the last step */
  struct io_uring ring;
  int ring_ready;
  int listen_fd;
  int accept_armed;
  int accept_cancel_sent;
  int accept_paused;         /* backing off after EMFILE and the like */
  uint64_t accept_resume_ms; /* ... until then (or a connection closes) */
  uint64_t accept_log_ms;    /* last "accept failed" line; 0: none yet */
  uint64_t wait_log_ms;      /* last "wait failed" line; 0: none yet */
  /* Slow handler calls (config.slow_handler_ms): the coarse time the ring was
   * last known free (the turn's start, the end of the last handler call), the
   * last report (0: none yet), slow calls since it not reported. */
  uint64_t held_since_ms;
  uint64_t slow_report_ms;
  uint64_t slow_unreported;
  int start_rc;
  int sqe_short; /* an SQE could not be had this turn: wait at most 1 ms */

  pmu__bufring_t bufs;

  pmu_request_t **batch;
  unsigned batch_len;
  uint64_t batch_gen;     /* dispatches so far */
  uint64_t turn_gen;      /* turns so far */
  uint64_t rate_check_ms; /* next look at receive rates; UINT64_MAX: none due */

  /* Lists of connections (core/list.h), through the pmu__conn_t links of
   * the same names. */
  pmu__list_t dirty;
  pmu__list_t rearm;
  pmu__list_t grave;
  pmu__list_t body_paused; /* waiting for handlers to consume streamed bodies */
  pmu__req_t *dead;        /* answered orphans, freed at the end of the turn */
  long outstanding;        /* requests with the handler, not answered yet */
  int *free_slots;         /* fixed-file slots not in use (registered_files) */
  unsigned nfree_slots;
  pmu__list_t all;
  unsigned nconns;
  pmu__list_t free_conns;
  unsigned nfree_conns;
  pmu__req_t *free_reqs;
  unsigned nfree_reqs;
  size_t pool_big_bytes; /* large buffers held by pooled requests */
  pmu__sendbuf_t *free_sendbufs;
  unsigned nfree_sendbufs;
  struct pmu__pipe *free_pipes; /* idle pipes for splicing (config.pipe_pool at most) */
  unsigned nfree_pipes;

  pmu__list_t timers[TIMER_KINDS]; /* through timer_link (TIMER_WS_IDLE: ws idle_link) */
  uint64_t timeout_ms[TIMER_KINDS];
  uint64_t now_ms;

  time_t date_sec;
  char date[40]; /* "Sat, 28 Nov 2026 17:14:05 GMT" */

  /* Cross-thread answers and wake-ups. */
  pthread_mutex_t qlock;
  pmu__req_t *qhead, *qtail;
  pmu__seg_t *sqhead, *sqtail; /* stream pieces from other threads */
  uint64_t qseq;               /* items queued so far: answers and pieces apply in the order
                                  they were queued, whichever queue they took */
  int exited;                  /* under qlock: the loop is gone; answers free directly */
  int wake_fd;
  int wake_armed;

  int stopping;
  uint64_t stop_deadline;

  /* WebSocket events of this pass (core/ws.c), delivered after the request
   * batch; message payloads that arrived whole in one receive are copied
   * (and unmasked) into the arena, the others own their buffer. */
  pmu_ws_event_t *ws_evs;
  struct pmu__ws_evx *ws_evx; /* where each event's data is */
  size_t ws_nevs, ws_evcap;
  pmu__ws_t *ws_gone; /* GONE to deliver, after the other events */
  pmu__ws_t *ws_fail; /* failed in this pass: their close goes after delivery */
  char *ws_arena;
  size_t ws_arena_len, ws_arena_cap;
  int ws_dispatching;
  void *ws_shared;            /* per-thread state of the WebSocket code (deflate) */
  struct pmu__fcache *fcache; /* the open-file cache of static answers (core/static.c) */

  /* Connection events of this pass (core/conn_events.c): OPEN, DATA, READ, SENT
   * and DRAIN in the order they happened, delivered before each request batch;
   * CLOSE through a list (it needs no memory), delivered at the end of the turn
   * after the WebSocket GONE events. DATA and READ point into the receive
   * buffers, which are not given back to the kernel before the delivery, or
   * into copies on cev_own. */
  pmu_conn_event_t *cevs;
  size_t cev_n, cev_cap;
  struct pmu__cev_own *cev_own;
  pmu__connh_t *cev_closed;
  int cev_dispatching;

  /* HTTPS (core/tls.c): connections waiting for a handshake slot, those with
   * handshake bytes to process this turn, the slots taken, the decrypt
   * and encrypt scratch (two records), and the spare ciphertext buffers of
   * a full send (a list through their first bytes) that connections done
   * sending gave back. */
  pmu__list_t tls_waiting, tls_ready;
  unsigned tls_hs_active;
  char *tls_buf;
  char *tls_spare;
  unsigned tls_nspare;

  pmu_stats_t stats;
  pmu_ring_info_t info;
};

struct pmu_server {
  pmu_config_t cfg;
  char *host, *unix_path, *server_header;
  size_t server_header_len;
  /* cfg.extra_headers checked and normalized at start: "Name: value\r\n" per
   * line (NULL, 0: none); extra_server / extra_date: a line names Server or
   * Date, which then replaces the engine's own. */
  char *extra_headers;
  size_t extra_headers_len;
  uint8_t extra_server, extra_date;
  char *spool_dir;          /* cfg.body_spool_dir resolved */
  atomic_size_t body_bytes; /* request body bytes in memory, against the budget */
  /* HTTPS (core/tls_ctx.c): the loaded configuration; NULL without cfg.ssl_certfile
   * or cfg.ssl_cert_per_conn */
  struct pmu__tls_server *tls;
  unsigned nloops;
  pmu__loop_t *loops;
  uint16_t port;
  int shared_listen_fd; /* the Unix socket or given listener every loop shares, or -1 */
  int given_listener;   /* shared_listen_fd is a duplicate of config.listen_fd */
  struct sockaddr_storage bound;
  socklen_t bound_len;
  int wildcard; /* listening on 0.0.0.0 / :: */

  atomic_uint open_conns;
  atomic_int stop_requested;
  atomic_long refs; /* 1 for the owner + one per request with the handler */
  atomic_ullong next_conn_id;

  pthread_mutex_t lock;
  pthread_cond_t cond;
  unsigned loops_started; /* reported ready or failed */
  unsigned loops_running;
  int joined;
  int destroy_requested;

  struct pmu__statics *statics; /* config.statics, copied with their roots open
                                   (core/static.c); NULL: none */

  char error[512];
};

/* ---- server.c ---- */
void pmu__server_unref(pmu_server_t *server);
void pmu__set_error(pmu_server_t *server, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The absolute time timeout_ms (>= 0) from now on CLOCK_MONOTONIC, the clock
 * of server->cond's timed waits. */
void pmu__deadline_after(int timeout_ms, struct timespec *out);

/* ---- loop.c ---- */
void *pmu__loop_main(void *arg);
/* A driven loop (config.driven), on the caller's thread: its set-up (0 or
 * -errno, after which it is ended), and one turn without waiting of a loop
 * not ended yet (1 going on, 0 ended; *next_ms as pmu_server_step's, which
 * checks the rest and sets *next_ms to -1 first). */
int pmu__loop_drive_begin(pmu__loop_t *loop);
int pmu__loop_drive_step(pmu__loop_t *loop, int *next_ms);
void pmu__loop_wake(pmu__loop_t *loop);
void pmu__loop_dispatch(pmu__loop_t *loop);
/* Free req at the end of this turn (an answered orphan). */
void pmu__loop_bury(pmu__loop_t *loop, pmu__req_t *req);
/* Resume reading (or re-arm the receive) at the end of this turn. */
void pmu__loop_schedule_resume(pmu__loop_t *loop, pmu__conn_t *conn);
void pmu__loop_mark_dirty(pmu__loop_t *loop, pmu__conn_t *conn);
extern __thread pmu__loop_t *pmu__current_loop;

/* ---- conn.c ---- */
pmu__conn_t *pmu__conn_new(pmu__loop_t *loop, int fd);
void pmu__conn_close(pmu__conn_t *conn);
void pmu__conn_try_release(pmu__conn_t *conn);
void pmu__conn_release(pmu__conn_t *conn);
void pmu__conn_timer_update(pmu__conn_t *conn);
void pmu__conn_timer_touch(pmu__conn_t *conn);
/* Cut connections sending heads or bodies below config.min_recv_rate. */
void pmu__conn_check_rates(pmu__loop_t *loop);
void pmu__conn_timer_unlink(pmu__conn_t *conn);
void pmu__conn_timer_set(pmu__conn_t *conn, unsigned kind);
void pmu__conn_pause(pmu__conn_t *conn);
void pmu__conn_linger(pmu__conn_t *conn);
void pmu__conn_arm_recv(pmu__conn_t *conn);
void pmu__conn_flush(pmu__conn_t *conn);
void pmu__conn_on_send(pmu__conn_t *conn, int res);
void pmu__conn_on_recv(pmu__conn_t *conn, const char *data, size_t len);
void pmu__conn_on_eof(pmu__conn_t *conn);
void pmu__conn_maybe_resume(pmu__conn_t *conn);
void pmu__conn_body_list_remove(pmu__conn_t *conn);
void pmu__conn_enqueue(pmu__conn_t *conn, pmu__req_t *req);
void pmu__conn_answered(pmu__conn_t *conn, pmu__req_t *req);
/* Output the connection may make: what is queued, plus a guess (its last
 * answer's size) for each answer owed (but the one whose body is streaming). */
size_t pmu__conn_projected(const pmu__conn_t *conn);

/* ---- file.c ---- */
/* A pipe of the loop's pool (config.pipe_pool idle ones kept). */
typedef struct pmu__pipe {
  struct pmu__pipe *next;
  int rfd, wfd;
  size_t cap; /* F_GETPIPE_SZ */
} pmu__pipe_t;
/* The file piece g is at the head of c's output with its pre sent and n memory iovecs
 * gathered before it: add its bytes to the send (read path: returns the new n, and sets
 * *more when what follows it may join the send), or start its splice (returns -1: the
 * connection's output is busy with it), or fail it (returns -2: connection closing). */
int pmu__file_gather(pmu__conn_t *conn, pmu__seg_t *g, int n, size_t *total, int *more);
/* A splice completion (in: into the pipe, else out of it to the socket). */
void pmu__file_on_splice(pmu__conn_t *conn, int in, int res);
/* Bytes of the file piece g were sent (consume_sent): counters, and done with its
 * buffer when g is done. */
void pmu__file_sent(pmu__conn_t *conn, pmu__seg_t *g, size_t data_bytes, int done);
/* The connection is released: its buffer and pipe (closed if it holds bytes). */
void pmu__file_conn_released(pmu__conn_t *conn);
void pmu__file_loop_exit(pmu__loop_t *loop);

/* ---- http.c ---- */
extern const llhttp_settings_t pmu__llhttp_settings;
void pmu__http_init(pmu__conn_t *conn);
/* Feed bytes to the parser. Returns how many were consumed; fewer than len
 * only when the connection paused or will parse nothing more. */
size_t pmu__http_feed(pmu__conn_t *conn, const char *data, size_t len);
pmu__req_t *pmu__req_alloc(pmu__loop_t *loop);
void pmu__req_free(pmu__req_t *req);
/* Queue an engine-generated response (400, 408, 413, ...) that closes. */
void pmu__conn_send_error(pmu__conn_t *conn, int status);

/* ---- ws.c ---- */
/* The request is a WebSocket handshake (sets pub.ws_upgrade); or it asks for
 * a version other than 13: returns 426 then (the engine answers it). */
int pmu__ws_check_handshake(pmu__req_t *req);
/* The engine's 426 for a handshake of another version. */
void pmu__ws_answer_426(pmu__req_t *req);
/* A 101 reached its loop: the connection turns into a WebSocket. */
void pmu__ws_accept_arrived(pmu__req_t *req);
/* A request that still carries an accepted handle is freed unsent. */
void pmu__ws_accept_dropped(pmu__req_t *req);
void pmu__ws_seg_arrived(pmu__seg_t *seg);
/* A WebSocket piece that cannot reach its loop (the loop has exited). */
void pmu__ws_seg_dropped(pmu__seg_t *seg);
void pmu__ws_on_recv(pmu__conn_t *conn, const char *data, size_t len);
void pmu__ws_on_eof(pmu__conn_t *conn);
void pmu__ws_resume(pmu__conn_t *conn);
void pmu__ws_timer_update(pmu__conn_t *conn);
void pmu__ws_timer_fired(pmu__conn_t *conn, unsigned kind);
void pmu__ws_expire_idle(pmu__loop_t *loop);
uint64_t pmu__ws_next_idle(const pmu__loop_t *loop);
/* Stopping: close 1001 (after what is queued). */
void pmu__ws_going_away(pmu__conn_t *conn);
/* pmu_conn_close(AFTER_SEND) of a WebSocket: close 1000 (after what is queued). */
void pmu__ws_close_normal(pmu__conn_t *conn);
/* The connection is released: GONE. */
void pmu__ws_conn_released(pmu__conn_t *conn);
/* Gather the connection's frames into its send (after the answers). */
int pmu__ws_gather(pmu__conn_t *conn, int n, size_t *total);
/* Account `left` bytes sent of the frames; returns 1 if the connection is to
 * close now, with *left reduced. */
int pmu__ws_consume(pmu__conn_t *conn, size_t *left);
/* Deliver the events gathered in this pass to config.ws_handler. */
void pmu__ws_dispatch(pmu__loop_t *loop);
/* The loop exits: drop what is left. */
void pmu__ws_loop_exit(pmu__loop_t *loop);

/*
 * Hand the events arr[0, count) of a pass to a handler, at most batch_max a
 * call, leaving out those whose handle was released meanwhile (RELEASED(event)
 * is true: they get nothing more); CALL(events, n) makes one call. The
 * WebSocket and the connection events are delivered by it.
 */
#define PMU__DELIVER_BATCHES(loop, arr, count, RELEASED, CALL)                         \
  do {                                                                                 \
    unsigned max_ = (loop)->server->cfg.batch_max ? (loop)->server->cfg.batch_max : 1; \
    size_t i_ = 0;                                                                     \
    while (i_ < (count)) {                                                             \
      size_t n_ = 0, j_ = i_;                                                          \
      for (; j_ < (count) && n_ < max_; j_++)                                          \
        if (!RELEASED((arr)[j_]))                                                      \
          (arr)[i_ + n_++] = (arr)[j_];                                                \
      if (n_)                                                                          \
        CALL((arr) + i_, n_);                                                          \
      i_ = j_;                                                                         \
    }                                                                                  \
  } while (0)

/* ---- conn_events.c ---- */
/* A connection was accepted: make its handle and queue OPEN. 0 or -ENOMEM. */
int pmu__connh_open(pmu__conn_t *conn);
/* Queue an event of c's handle (data not copied: see loop->cevs); with copy, the
 * data is copied. Returns 0 or -ENOMEM. */
int pmu__connh_push(pmu__conn_t *conn, int type, const char *data, size_t len, int copy);
/* Raw mode: bytes received (DATA, with copy when they do not stay in a receive buffer). */
void pmu__connh_data(pmu__conn_t *conn, const char *data, size_t len, int copy);
/* Deliver the queued events (and, with closes, the CLOSE events) to conn_handler. */
void pmu__connh_dispatch(pmu__loop_t *loop, int closes);
/* The connection is released: CLOSE is queued; the handle lives on until released. */
void pmu__connh_conn_released(pmu__conn_t *conn);
/* Stopping: a raw connection closes once what is queued is out. */
void pmu__connh_going_away(pmu__conn_t *conn);
/* A piece or command of a handle reached its loop / cannot (the loop has exited). */
void pmu__connh_seg_arrived(pmu__seg_t *seg);
void pmu__connh_seg_dropped(pmu__seg_t *seg);
/* A piece of pmu_conn_send left the queue (sent or dropped): accounting, release, free. */
void pmu__connh_seg_done(pmu__seg_t *seg, int sent);
/* Take or drop a reference (a request's). */
void pmu__connh_ref(pmu__connh_t *h);
void pmu__connh_unref(pmu__connh_t *h);
void pmu__connh_loop_exit(pmu__loop_t *loop);
/* The connection is becoming a WebSocket (pmu_ws_accept, any thread). */
void pmu__connh_set_ws(pmu__connh_t *h);
/* Close c, saying why unless a reason is already known (err: positive errno). */
void pmu__conn_fail(pmu__conn_t *conn, int err);

/*
 * Account total bytes about to be queued on a sender (a WebSocket's or a
 * connection's) holding *unsent: 0, 1 (now over high: *want_drain set) or
 * -ENOBUFS (over limit, 0 meaning none: nothing counted).
 */
int pmu__unsent_reserve(atomic_size_t *unsent, atomic_int *want_drain, size_t total, size_t high,
                        size_t limit);

/* Bytes that are not parsed as HTTP (a WebSocket's, a raw connection's): resume
 * reading unless held (by the handler), handing what was kept meanwhile to take. */
void pmu__conn_resume_unparsed(pmu__conn_t *conn, int held,
                               void (*take)(pmu__conn_t *conn, const char *data, size_t len));

/* ---- tls.c (HTTPS; every function takes a connection with c->tls set) ---- */
/* A connection accepted on a TLS listener: its SSL, and a handshake slot (its
 * receive armed) or a place in the queue for one. 0 or -ENOMEM. */
int pmu__tls_accept(pmu__conn_t *conn);
/* Ciphertext received. */
void pmu__tls_on_recv(pmu__conn_t *conn, const char *data, size_t len);
/* The handshakes with bytes received this turn take their step (end of turn). */
void pmu__tls_run_handshakes(pmu__loop_t *loop);
/* Flush, TLS part: returns 1 when it sent ciphertext already made (or the
 * connection has no plaintext to send: handshake, or TLS over); 0: gather the
 * plaintext and pmu__tls_encrypt it. */
int pmu__tls_flush(pmu__conn_t *conn);
/* Encrypt the first TLS_FLUSH_MAX bytes of the gathered iovecs and send. 0 or -ENOMEM. */
int pmu__tls_encrypt(pmu__conn_t *conn, const struct iovec *iov, int n, size_t total);
/* Records waiting with no plaintext to join them (a ticket, an alert): sent, returns 1. */
int pmu__tls_send_pending(pmu__conn_t *conn);
/* A send completed with res >= 0 bytes: the plaintext bytes it finishes, or -1
 * (more ciphertext of it goes first, or the connection went on to close). */
int pmu__tls_sent(pmu__conn_t *conn, int res);
/* A graceful close: close_notify goes first; returns 1 when it does (the
 * close, or lingering close, follows once it is out), 0: close now. */
int pmu__tls_close_notify(pmu__conn_t *conn, int linger);
int pmu__tls_handshaking(const pmu__conn_t *conn);
/* The kernel encrypts this connection's sends (splice allowed). */
int pmu__tls_ktls_tx(const pmu__conn_t *conn);
/* Its handshake snapshot with a reference taken, or NULL. */
struct pmu__tls_snap *pmu__tls_conn_snap(const pmu__conn_t *conn);
void pmu__tls_conn_released(pmu__conn_t *conn);
void pmu__tls_loop_exit(pmu__loop_t *loop);
/* ssl_cert_per_conn: the handler's answer reached the loop, certs (a reference,
 * which this takes) or NULL to decline. */
void pmu__tls_answer(pmu__conn_t *conn, struct pmu_tls_certs *certs);
/* The handshake finished on a connection whose handle was opened at accept
 * (ssl_cert_per_conn): the handle takes the snapshot. */
void pmu__connh_tls_done(pmu__conn_t *conn);
/* Close: with a close_notify first on a TLS connection that can send one. */
void pmu__conn_close_gracefully(pmu__conn_t *conn);

/* ---- static.c ---- */
/* Copy config.statics and open their roots (pmu_server_start). Returns 0 or
 * -errno with the server's error set. */
int pmu__statics_start(pmu_server_t *server);
void pmu__statics_free(pmu_server_t *server);
/* A complete request on its loop: answered by a mount (returns 1) or left for
 * the handler (0: no mount matched, or a fallthrough mount found nothing). */
int pmu__static_dispatch(pmu__req_t *req);
/* The loop exits: close the fds of its open-file cache (those in use by an
 * answer close when it is done). */
void pmu__static_loop_exit(pmu__loop_t *loop);

/* ---- response.c ---- */
/* The headers of an answer may go on the wire: no CR, LF or NUL. */
int pmu__header_safe(const pmu_header_t *h);
/* Give an answered request to its loop (pmu_respond's last step). */
void pmu__hand_over(pmu__req_t *req);
/* Give a stream piece or WebSocket piece to its loop. */
void pmu__seg_deliver(pmu__seg_t *seg, pmu__loop_t *loop);
/* Serialize a complete answer into req->out (any thread); see pmu_respond. */
int pmu__serialize(pmu__req_t *req, const pmu_response_t *resp, int on_loop);
void pmu__date_refresh(pmu__loop_t *loop, time_t now);
void pmu__format_date(char out[40], time_t now);
/* The date formatted for the calling thread, refreshed once a second (a
 * thread-local buffer, valid until the thread's next call). */
const char *pmu__date_now(void);
/* Serialise an engine message into req->out; req->answered set. */
void pmu__engine_message(pmu__req_t *req, int status, int keep_open);
/* Apply an answer that reached the loop thread (from pmu_respond or the queue). */
void pmu__answer_arrived(pmu__req_t *req);
/* A piece of `kind` over len bytes of data, copied into it, or lent when
 * release is given (release(ctx) once it is sent or dropped); every other
 * field zero. NULL on ENOMEM. */
pmu__seg_t *pmu__seg_alloc(int kind, const void *data, size_t len, void (*release)(void *),
                           void *ctx);
/* Apply a stream piece that reached the loop thread. */
void pmu__seg_arrived(pmu__seg_t *seg);
/* Free a piece that has been sent or dropped, settling its accounting. */
void pmu__seg_done(pmu__seg_t *seg);
/* What a queued piece of a streamed answer costs beyond its bytes (the piece
 * and its allocation), counted in out_queued against output_high_water: a
 * client that asks for many tiny pieces (a Range of 100 one-byte ranges, 200
 * pieces) and never reads would otherwise hold several times the limit. */
#define PMU__SEG_COST (sizeof(pmu__seg_t) + 32)
/* Whether answers given now close their connection: the ring has begun its
 * stop, or pmu_server_stop() has been called and the ring will begin it at
 * the end of this turn (a request read in the same turn as the wake-up is
 * answered with Connection: close all the same). */
static inline int pmu__stop_seen(const pmu__loop_t *loop) {
  return loop->stopping ||
         atomic_load_explicit(&loop->server->stop_requested, memory_order_relaxed);
}
/* Total bytes a piece puts on the wire. */
static inline size_t pmu__seg_size(const pmu__seg_t *g) {
  return g->pre_len + g->len + g->post_len;
}
/* A piece is on the wire: free it and tell a waiting producer. */
void pmu__stream_sent(pmu__req_t *req, pmu__seg_t *seg);
/* The connection of a request the handler still holds is gone; at_stop: cut
 * by the stop deadline (pmu_request_gone says 2). */
void pmu__req_orphan(pmu__req_t *req, int at_stop);

/* Grow *buf (capacity *cap) to hold at least need bytes, doubling from
 * first_cap. Returns 0 or -ENOMEM (the buffer is then unchanged). */
int pmu__grow(char **buf, size_t *cap, size_t need, size_t first_cap);

/* Monotonic milliseconds. */
uint64_t pmu__now_ms(void);

/* Monotonic milliseconds to the kernel's tick (1-4 ms), for about 10 ns a
 * read where CLOCK_MONOTONIC costs 50 or more: timing every handler call. */
static inline uint64_t pmu__coarse_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A handler call held the ring held_ms: count it, report it (rate-limited). */
void pmu__slow_call(pmu__loop_t *loop, int kind, uint64_t now, uint64_t held_ms,
                    pmu_request_t *const *requests, size_t count);

/* Right after each handler call (requests, WebSocket or connection events):
 * one coarse clock read; a call that held the ring beyond slow_handler_ms
 * is counted and reported. */
static inline void pmu__handler_returned(pmu__loop_t *loop, int kind,
                                         pmu_request_t *const *requests, size_t count) {
  unsigned limit = loop->server->cfg.slow_handler_ms;
  if (!limit)
    return;
  uint64_t now = pmu__coarse_ms(), since = loop->held_since_ms;
  loop->held_since_ms = now;
  if (now > since + limit)
    pmu__slow_call(loop, kind, now, now - since, requests, count);
}

#endif /* PMU_INTERNAL_H */
