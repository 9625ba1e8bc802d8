/*
 * connlib.h: connection events (config.conn_handler) for the C tests.
 *
 * t_conn_events records every event of every handle in one log, with the
 * requests and WebSocket GONE events that the tests' wrapping handlers add
 * (t_cn_log), so that a test can check their order; it checks the rules of a
 * handle's life as it goes (OPEN first, once; nothing after CLOSE; every
 * event names a handle it opened) and counts what breaks them; it echoes DATA
 * with pmu_conn_send when t_cn.echo is set, and releases each handle at its
 * CLOSE. A test's own hook (t_cn.hook) sees each event first.
 */
#ifndef PMU_CONNLIB_H
#define PMU_CONNLIB_H

#include "testlib.h"

#include <pthread.h>

#define T_CN_LOG 8192
#define T_CN_HANDLES 1024

/* Entries of the log besides the events (enum pmu_conn_event_type). */
enum { T_CN_REQUEST = 100, T_CN_WS_GONE = 101 };

typedef struct t_cn_entry {
  uint64_t conn_id;
  int type;
  int err;
  size_t len;
  unsigned thread; /* the ring thread it came from (pmu_conn_thread) */
} t_cn_entry_t;

typedef struct t_cn_state {
  pthread_mutex_t lock;
  t_cn_entry_t log[T_CN_LOG];
  size_t n;
  struct {
    uint64_t id;
    pmu_conn_t *conn;
    int closed;
    uint16_t port; /* the peer's, read at OPEN */
    int released;  /* pmu_conn_release was called */
  } handles[T_CN_HANDLES];
  size_t nhandles;
  atomic_ulong opens, closes, releases, violations, drains;
  atomic_ulong data_bytes, read_bytes, sent_bytes;
  atomic_int echo;                             /* DATA is sent back (pmu_conn_send, copied) */
  atomic_int keep;                             /* do not release at CLOSE (the test does) */
  atomic_int last_close_err;                   /* err of the last CLOSE */
  atomic_ulong echo_over;                      /* echo sends that returned 1 */
  void (*hook)(const pmu_conn_event_t *event); /* called first for each event */
  char data[1 << 16];                          /* the DATA bytes seen, in order (first 64 KiB) */
  size_t data_len;
} t_cn_state_t;

extern t_cn_state_t t_cn;

/* Zero t_cn (not its hook). */
void t_cn_reset(void);

/* Release the handles kept (t_cn.keep) past their CLOSE; returns how many. */
size_t t_cn_release_kept(void);

/* Forget the log and the handles (not the counters): a new server numbers its
 * connections from the start again. Every handle must be closed by then. */
void t_cn_new_server(void);

/* The conn_handler. */
void t_conn_events(void *handler_data, const pmu_conn_event_t *events, size_t count);

/* Add an entry to the log (a request seen by a handler, a WebSocket GONE). */
void t_cn_log(uint64_t conn_id, int type);

/* Index of the first entry of conn_id with this type at or after `from`, or -1. */
long t_cn_find(uint64_t conn_id, int type, long from);

/* Entries of conn_id with this type. */
size_t t_cn_count(uint64_t conn_id, int type);

/* The handle of connection conn_id while it is open (NULL when unknown or closed). */
pmu_conn_t *t_cn_handle(uint64_t conn_id);

/* The conn_id of the n-th OPEN in the log (0-based), or 0. */
uint64_t t_cn_nth_open(size_t n);

/* The local port of a client connection (to find its conn through pmu_conn_peer). */
uint16_t t_cn_client_port(const t_conn_t *conn);

/* The conn_id of the latest handle whose peer port is port (open or closed since),
 * waiting up to T_EVENT_MS for its OPEN; 0 if none came. */
uint64_t t_cn_id_by_port(uint16_t port);

/* The conn_id of a client connection (its OPEN found by the client's port); fails the
 * test when no OPEN came. */
#define t_cn_id_of(conn) t_cn_id_of_at(__FILE__, __LINE__, (conn))
uint64_t t_cn_id_of_at(const char *file, int line, const t_conn_t *conn);

/* Wait for conn_id's CLOSE (fails after T_EVENT_MS) and return its err. */
#define t_cn_close_err(id) t_cn_close_err_at(__FILE__, __LINE__, (id))
int t_cn_close_err_at(const char *file, int line, uint64_t conn_id);

/* Read until n bytes are in conn->buf; fails the test otherwise. */
#define t_cn_read_exactly(conn, n) t_cn_read_exactly_at(__FILE__, __LINE__, (conn), (n))
void t_cn_read_exactly_at(const char *file, int line, t_conn_t *conn, size_t n);

/* The last case of a test program: no rule of a handle's life was broken, every CLOSE was
 * followed by a release (and every OPEN by a CLOSE), and no descriptor is left of the
 * fds open at the start. */
void t_cn_expect_clean(int fds);

/* A hook (t_cn.hook) that pauses the reading of every connection at its OPEN. */
void t_cn_pause_at_open(const pmu_conn_event_t *event);

/* Shrink the client's receive buffer to 64 KiB: what the server sends and the client
 * does not read then stays in the server (loopback buffers grow to tens of MiB). */
void t_cn_small_rcvbuf(t_conn_t *conn);

/* Wait until conn_id has had its CLOSE; fails the test after T_EVENT_MS. */
#define t_cn_wait_close(id) t_cn_wait_close_at(__FILE__, __LINE__, (id))
void t_cn_wait_close_at(const char *file, int line, uint64_t conn_id);

#endif /* PMU_CONNLIB_H */
