/*
 * wslib.h: WebSocket support for the C tests: a raw client (handshake,
 * masked frames out, frames in) and a test server whose handler accepts
 * handshakes and whose ws_handler echoes and records what it saw.
 *
 * Paths the test handler knows (request->ws_upgrade set):
 *   /ws              accepted; every message echoed (text as text)
 *   /ws/quiet        accepted; nothing echoed (events still recorded)
 *   /ws/close?code=N accepted, then closed by the server with code N ("bye")
 *   /ws/defer        accepted from another thread, 20 ms later
 *   /ws/proto        accepted with subprotocol "chat" and header X-Extra: 1
 *                    (?len=N: a subprotocol of N 'p' instead)
 *   /ws/flood?n=N    accepted; N binary messages of 64 KiB sent at once (the
 *                    pmu_ws_send results are counted: t_ws.sent_ok, _over, _nobufs)
 *   /ws/thread?n=N   accepted; another thread sends N text messages "0".."N-1"
 *                    (every third one lent, with a release callback), then closes 1000
 *   /ws/pause        accepted with reading paused (pmu_ws_pause_reading), resumed
 *                    by another thread 300 ms later
 *   /refuse          answered 403 (the handshake refused)
 * Any other request goes to t_handle_request (testlib.h).
 */
#ifndef PMU_WSLIB_H
#define PMU_WSLIB_H

#include "testlib.h"

/* What the test server's ws_handler saw, over every connection. */
typedef struct t_ws_seen {
  atomic_ulong messages, pings, pongs, closes, drains, gones;
  atomic_int last_close_code; /* of PMU_WS_EV_CLOSE */
  atomic_int last_gone_code;  /* of PMU_WS_EV_GONE */
  atomic_ulong sent_ok, sent_over, sent_nobufs, sent_epipe;
  atomic_ulong accepted;      /* pmu_ws_accept returned a handle */
  atomic_ulong released;      /* handles released (after GONE) */
  atomic_ulong bytes_in;      /* message payload bytes seen */
  atomic_ulong max_batch;     /* most events in one ws_handler call */
  atomic_ulong lent_released; /* release callbacks of /ws/thread's lent messages */
  atomic_int close_checks;    /* /ws/close: 1 if pmu_ws_close and pmu_ws_send answered as
                                 pmu.h says around the close (bad codes, twice, send after) */
} t_ws_seen_t;

extern t_ws_seen_t t_ws;

/* t_config_init, then the WebSocket test handlers. */
void t_ws_config_init(pmu_config_t *config);

/* The test handlers, for tests that wrap them. */
void t_ws_handler(void *handler_data, pmu_request_t *const *requests, size_t count);
void t_ws_events(void *handler_data, const pmu_ws_event_t *events, size_t count);

/* Zero t_ws. */
void t_ws_reset(void);

/* A frame as read by the client. */
typedef struct t_ws_frame {
  int fin, rsv, opcode, masked;
  char *data; /* NUL-terminated copy; free with t_ws_frame_free */
  size_t len;
} t_ws_frame_t;

/* Bytes of one client frame (masked with a fixed key unless mask == 0) into
 * out (room for len + 14); returns its length. b0 is the first byte (FIN,
 * RSV, opcode). */
size_t t_ws_build(char *out, int b0, const void *data, size_t len, int mask);

/* A handshake request for path (Host, Upgrade, Connection, Key, Version 13;
 * extra: more header lines, each ending in CRLF, or NULL) into out. */
size_t t_ws_request(char *out, size_t cap, const char *path, const char *extra);

/* Connect, send the handshake for path, expect 101 (fails the test
 * otherwise). Bytes after the 101 stay in conn->buf. */
#define t_ws_connect(server, path) t_ws_connect_at(__FILE__, __LINE__, (server), (path))
t_conn_t *t_ws_connect_at(const char *file, int line, const t_server_t *server, const char *path);

/* Send one frame (masked). */
#define t_ws_send(conn, b0, data, len) t_ws_send_at(__FILE__, __LINE__, (conn), (b0), (data), (len))
void t_ws_send_at(const char *file, int line, t_conn_t *conn, int b0, const void *data, size_t len);

/* Read one frame: 0 with *out filled, -ETIMEDOUT, or -ECONNRESET when the
 * connection ended first. */
int t_ws_read(t_conn_t *conn, t_ws_frame_t *out, int timeout_ms);
void t_ws_frame_free(t_ws_frame_t *frame);

/* Read frames until a close frame; returns its code (1005 when it had none),
 * or -1 if the connection ended without one, -2 on timeout. Data frames
 * before it are skipped (counted in *skipped when not NULL). */
int t_ws_read_close(t_conn_t *conn, int timeout_ms, unsigned *skipped);

/* Expect one frame with this opcode and payload. */
#define t_ws_expect(conn, opcode, data, len) \
  t_ws_expect_at(__FILE__, __LINE__, (conn), (opcode), (data), (len))
void t_ws_expect_at(const char *file, int line, t_conn_t *conn, int opcode, const void *data,
                    size_t len);

#endif /* PMU_WSLIB_H */
