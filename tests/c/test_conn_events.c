/*
 * test_conn_events: connection events on HTTP connections (config.conn_handler).
 * The order (OPEN before the first request, CLOSE last, a WebSocket's GONE before
 * its CLOSE), pmu_request_conn and the handle's fields, pmu_respond_raw with
 * keep-alive and pipelining, pmu_conn_send between answers (on the ring thread
 * and from another thread, in the order given), close after send and close now
 * (unanswered requests released through on_disconnect), CLOSE err on a reset,
 * DRAIN for a client that reads late, conn_send_limit, release before CLOSE,
 * conn_io_events (READ and SENT count every byte), pausing an HTTP connection,
 * threads=2, and no descriptor left. Run under ASan: a leak or a use after free
 * fails it.
 */
#include "connlib.h"
#include "wslib.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define RAW_OK "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nraw"
#define SENT_OK "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsent"
#define X1_OK "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nx1"

static atomic_ulong bad_request_conn; /* pmu_request_conn disagreed with conn_id */
static atomic_ulong disconnects;      /* on_disconnect calls */
static atomic_ulong flood_sends;      /* /flood: sends that returned 0 */
static atomic_int flood_last;         /* /flood: the last send's result */

/* /xorder: another thread sends raw bytes, then answers the request, while the
 * ring thread waits for it: both reach the loop through its queue together. */
static void *xorder(void *arg) {
  pmu_request_t *r = arg;
  pmu_conn_t *h = pmu_request_conn(r);
  T_ASSERT_INT_EQ(pmu_conn_send(h, X1_OK, strlen(X1_OK), NULL, NULL), 0);
  T_ASSERT_INT_EQ(pmu_respond_simple(r, 200, NULL, 0, "x2", 2), 0);
  return NULL;
}

static char big[256 * 1024];

/* Send up to max chunks of big, until a send says stop: 1 (the high water; unless
 * past_high) or < 0 (the limit). */
static void flood(pmu_conn_t *h, unsigned max, int past_high) {
  for (unsigned i = 0; i < max; i++) {
    int rc = pmu_conn_send(h, big, sizeof big, NULL, NULL);
    atomic_store(&flood_last, rc);
    if (rc < 0 || (rc == 1 && !past_high))
      return;
    atomic_fetch_add(&flood_sends, 1);
  }
}

static void on_requests(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    pmu_conn_t *h = pmu_request_conn(r);
    if (!h || pmu_conn_id(h) != r->conn_id || pmu_conn_thread(h) != r->thread)
      atomic_fetch_add(&bad_request_conn, 1);
    t_cn_log(r->conn_id, T_CN_REQUEST);
    if (r->ws_upgrade) {
      t_ws_handler(data, &requests[i], 1);
    } else if (t_path_is(r, "/raw")) {
      T_ASSERT_INT_EQ(pmu_respond_raw(r, RAW_OK, strlen(RAW_OK), NULL, NULL), 0);
    } else if (t_path_is(r, "/send")) {
      T_ASSERT_INT_EQ(pmu_conn_send(h, SENT_OK, strlen(SENT_OK), NULL, NULL), 0);
      T_ASSERT_INT_EQ(pmu_respond_raw(r, "", 0, NULL, NULL), 0); /* answered with nothing */
    } else if (t_path_is(r, "/xorder")) {
      pthread_t th;
      T_ASSERT(pthread_create(&th, NULL, xorder, r) == 0);
      pthread_join(th, NULL);
    } else if (t_path_is(r, "/closeafter")) {
      T_ASSERT_INT_EQ(pmu_conn_send(h, SENT_OK, strlen(SENT_OK), NULL, NULL), 0);
      flood(h, 4, 1); /* 1 MiB of raw bytes after the answer */
      T_ASSERT_INT_EQ(pmu_conn_close(h, PMU_CLOSE_AFTER_SEND), 0);
      T_ASSERT_INT_EQ(pmu_conn_close(h, PMU_CLOSE_NOW), -EPIPE); /* once */
      T_ASSERT_INT_EQ(pmu_conn_send(h, "x", 1, NULL, NULL), -EPIPE);
      T_ASSERT(pmu_conn_closing(h));
      T_ASSERT_INT_EQ(pmu_respond_raw(r, "", 0, NULL, NULL), 0);
    } else if (t_path_is(r, "/closenow")) {
      flood(h, 64, 1); /* 16 MiB that the client cannot have read */
      T_ASSERT_INT_EQ(pmu_conn_close(h, PMU_CLOSE_NOW), 0);
      T_ASSERT_INT_EQ(pmu_respond_raw(r, "", 0, NULL, NULL), 0);
    } else if (t_path_is(r, "/flood")) {
      flood(h, 1000, 0); /* until the high water or the limit */
      T_ASSERT_INT_EQ(pmu_respond_raw(r, "", 0, NULL, NULL), 0);
    } else if (t_path_is(r, "/hold")) {
      /* never answered here: on_disconnect answers it when the connection goes */
    } else {
      t_handle_request(data, r);
    }
  }
}

static void on_disconnect(void *data, pmu_request_t *r) {
  (void)data;
  atomic_fetch_add(&disconnects, 1);
  pmu_respond_simple(r, 200, NULL, 0, "late", 4);
}

static void on_ws(void *data, const pmu_ws_event_t *events, size_t count) {
  for (size_t i = 0; i < count; i++)
    if (events[i].type == PMU_WS_EV_GONE)
      t_cn_log(pmu_ws_conn_id(events[i].ws), T_CN_WS_GONE);
  t_ws_events(data, events, count);
}

static void config(pmu_config_t *c) {
  t_config_init(c);
  c->handler = on_requests;
  c->ws_handler = on_ws;
  c->conn_handler = t_conn_events;
  c->on_disconnect = on_disconnect;
}

/* A server whose pmu_conn_send high water and limit are these. */
static t_server_t *start_with(size_t high_water, size_t limit) {
  pmu_config_t cfg;
  config(&cfg);
  cfg.conn_send_high_water = high_water;
  cfg.conn_send_limit = limit;
  t_cn_new_server();
  return t_server_start(&cfg);
}

static void expect_body(t_conn_t *c, const char *body) {
  t_response_t resp;
  t_expect_response(c, &resp);
  T_ASSERT_INT_EQ(resp.status, 200);
  T_ASSERT_INT_EQ(resp.body_len, strlen(body));
  T_ASSERT(memcmp(resp.body, body, resp.body_len) == 0);
  t_response_free(&resp);
}

static void case_order(t_server_t *s) {
  t_case("OPEN before the first request, CLOSE last, err 0 for an orderly end");
  t_conn_t *c = t_connect(s);
  uint16_t port = t_cn_client_port(c);
  t_send_str(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
  t_response_t resp;
  t_expect_response(c, &resp);
  t_response_free(&resp);
  t_expect_response(c, &resp);
  uint64_t id = strtoull(t_header(&resp, "X-Conn"), NULL, 10);
  t_response_free(&resp);
  pmu_conn_t *h = t_cn_handle(id);
  T_ASSERT(h != NULL);
  T_ASSERT_INT_EQ(t_cn_id_by_port(port), id); /* pmu_conn_peer is the client's address */
  T_ASSERT_INT_EQ(pmu_conn_local(h)->ss_family, AF_INET);
  T_ASSERT(pmu_conn_user(h) == NULL);
  pmu_conn_set_user(h, &id);
  T_ASSERT(pmu_conn_user(h) == &id);
  T_ASSERT_INT_EQ(pmu_conn_unsent(h), 0);
  T_ASSERT(!pmu_conn_closing(h));
  t_conn_close(c);
  t_cn_wait_close(id);
  long open = t_cn_find(id, PMU_CONN_EV_OPEN, 0);
  long req1 = t_cn_find(id, T_CN_REQUEST, 0);
  long req2 = t_cn_find(id, T_CN_REQUEST, req1 + 1);
  long close = t_cn_find(id, PMU_CONN_EV_CLOSE, 0);
  T_ASSERT(open >= 0 && open < req1 && req1 < req2 && req2 < close);
  T_ASSERT_INT_EQ(t_cn_count(id, PMU_CONN_EV_OPEN), 1);
  T_ASSERT_INT_EQ(t_cn_count(id, PMU_CONN_EV_CLOSE), 1);
  T_ASSERT_INT_EQ(t_cn_count(id, PMU_CONN_EV_READ), 0); /* conn_io_events is off */
  T_ASSERT_INT_EQ(t_cn.log[close].err, 0);
  T_ASSERT_INT_EQ(atomic_load(&bad_request_conn), 0);
}

static void case_ws(t_server_t *s) {
  t_case(
      "a WebSocket: pmu_conn_send refuses it, pmu_conn_pause_reading holds it, GONE before CLOSE");
  t_conn_t *c = t_ws_connect(s, "/ws");
  uint64_t id = t_cn_id_by_port(t_cn_client_port(c));
  T_ASSERT(id != 0);
  t_ws_send(c, 0x81, "hi", 2);
  t_ws_expect(c, PMU_WS_TEXT, "hi", 2);
  pmu_conn_t *h = t_cn_handle(id);
  T_ASSERT(h != NULL);
  T_ASSERT_INT_EQ(pmu_conn_send(h, "x", 1, NULL, NULL), -EINVAL);
  T_ASSERT_INT_EQ(pmu_conn_pause_reading(h, 1), 0); /* a WebSocket is held back too */
  t_sleep_ms(20);
  t_ws_send(c, 0x81, "held", 4);
  T_ASSERT_INT_EQ(t_recv_some(c, 300), -ETIMEDOUT);
  T_ASSERT_INT_EQ(pmu_conn_pause_reading(h, 0), 0);
  t_ws_expect(c, PMU_WS_TEXT, "held", 4);
  t_conn_close(c);
  t_cn_wait_close(id);
  long gone = t_cn_find(id, T_CN_WS_GONE, 0);
  long close = t_cn_find(id, PMU_CONN_EV_CLOSE, 0);
  T_ASSERT(gone >= 0 && gone < close);

  t_case("pmu_conn_close on a WebSocket: after send, a close frame 1000; now, none");
  c = t_ws_connect(s, "/ws");
  id = t_cn_id_by_port(t_cn_client_port(c));
  T_ASSERT_INT_EQ(pmu_conn_close(t_cn_handle(id), PMU_CLOSE_AFTER_SEND), 0);
  T_ASSERT_INT_EQ(t_ws_read_close(c, T_IO_TIMEOUT_MS, NULL), 1000);
  t_conn_close(c);
  t_cn_wait_close(id);
  c = t_ws_connect(s, "/ws");
  id = t_cn_id_by_port(t_cn_client_port(c));
  T_ASSERT_INT_EQ(pmu_conn_close(t_cn_handle(id), PMU_CLOSE_NOW), 0);
  T_ASSERT_INT_EQ(t_ws_read_close(c, T_IO_TIMEOUT_MS, NULL), -1); /* the end, no frame */
  t_cn_wait_close(id);
  T_ASSERT(t_cn_find(id, T_CN_WS_GONE, 0) < t_cn_find(id, PMU_CONN_EV_CLOSE, 0));
  t_conn_close(c);
}

static void case_respond_raw(t_server_t *s) {
  t_case("pmu_respond_raw: verbatim, kept alive, in pipelined order");
  t_conn_t *c = t_connect(s);
  t_send_str(c, "GET /raw HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /raw HTTP/1.1\r\nHost: x\r\n\r\nGET /send HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
  expect_body(c, "raw");
  t_response_t resp;
  t_expect_response(c, &resp);
  T_ASSERT_FIELD(&resp, "path", "/a");
  t_response_free(&resp);
  expect_body(c, "raw");
  expect_body(c, "sent"); /* pmu_conn_send's bytes, then an empty answer */
  t_expect_response(c, &resp);
  T_ASSERT_FIELD(&resp, "path", "/b");
  t_response_free(&resp);
  T_ASSERT_INT_EQ(c->len, 0);
  t_conn_close(c);

  t_case("pmu_respond_raw: an HTTP/1.0 request without keep-alive closes after it");
  c = t_connect(s);
  t_send_str(c, "GET /raw HTTP/1.0\r\n\r\n");
  expect_body(c, "raw");
  t_expect_closed(c, 3000);
  t_conn_close(c);
}

static void case_thread_order(t_server_t *s) {
  t_case("from another thread: pmu_conn_send then pmu_respond keep their order");
  t_conn_t *c = t_connect(s);
  t_send_str(c, "GET /xorder HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n");
  expect_body(c, "x1");
  expect_body(c, "x2");
  t_response_t resp;
  t_expect_response(c, &resp);
  T_ASSERT_FIELD(&resp, "path", "/a");
  t_response_free(&resp);
  t_conn_close(c);
}

static void case_close(t_server_t *s) {
  t_case("close after send: everything queued arrives, then the end; unanswered requests "
         "released");
  unsigned long before = atomic_load(&disconnects);
  t_conn_t *c = t_connect(s);
  uint16_t port = t_cn_client_port(c);
  t_send_str(c, "GET /closeafter HTTP/1.1\r\nHost: x\r\n\r\nGET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
  uint64_t id = t_cn_id_by_port(port);
  expect_body(c, "sent");
  t_cn_read_exactly(c, 4 * sizeof big);
  T_ASSERT(t_wait_closed(c, 5000));
  T_ASSERT_INT_EQ(c->len, 4 * sizeof big); /* nothing after: /hold was never answered */
  t_conn_close(c);
  t_cn_wait_close(id);
  T_ASSERT_INT_EQ(t_cn_close_err(id), 0);
  T_WAIT_UNTIL(atomic_load(&disconnects) == before + 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&disconnects), before + 1);

  t_case("close now: what is unsent is dropped");
  c = t_connect(s);
  t_cn_small_rcvbuf(c);
  port = t_cn_client_port(c);
  t_send_str(c, "GET /closenow HTTP/1.1\r\nHost: x\r\n\r\n");
  id = t_cn_id_by_port(port);
  t_cn_wait_close(id); /* closed before the client read anything */
  T_ASSERT_INT_EQ(t_cn_close_err(id), 0);
  t_wait_closed(c, 5000);
  T_ASSERT_MSG(c->len < 64 * sizeof big, "got all %zu bytes", c->len);
  t_conn_close(c);
}

static void case_reset(t_server_t *s) {
  t_case("CLOSE err ECONNRESET when the client resets");
  t_conn_t *c = t_connect(s);
  uint16_t port = t_cn_client_port(c);
  t_send_str(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
  t_response_t resp;
  t_expect_response(c, &resp);
  t_response_free(&resp);
  uint64_t id = t_cn_id_by_port(port);
  t_conn_abort(c);
  t_cn_wait_close(id);
  T_ASSERT_INT_EQ(t_cn_close_err(id), ECONNRESET);
}

static void case_drain(void) {
  t_case("a client that reads late: pmu_conn_send returns 1, DRAIN once it read");
  t_server_t *s = start_with(16 << 20, (size_t)32 << 20); /* more than the kernel takes */
  unsigned long drains = atomic_load(&t_cn.drains);
  atomic_store(&flood_sends, 0);
  t_conn_t *c = t_connect(s);
  t_cn_small_rcvbuf(c);
  uint16_t port = t_cn_client_port(c);
  t_send_str(c, "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n");
  uint64_t id = t_cn_id_by_port(port);
  T_WAIT_UNTIL(t_cn_find(id, T_CN_REQUEST, 0) >= 0, T_EVENT_MS);
  t_sleep_ms(100);
  T_ASSERT_INT_EQ(atomic_load(&flood_last), 1);
  T_ASSERT_INT_EQ(atomic_load(&t_cn.drains), drains); /* nothing read yet */
  size_t total = (atomic_load(&flood_sends) + 1) * sizeof big;
  t_cn_read_exactly(c, total);
  T_WAIT_UNTIL(atomic_load(&t_cn.drains) == drains + 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_cn.drains), drains + 1);
  long drain = t_cn_find(id, PMU_CONN_EV_DRAIN, 0);
  T_ASSERT(drain > t_cn_find(id, T_CN_REQUEST, 0));
  T_ASSERT_INT_EQ(atomic_load(&flood_sends), 64);
  t_conn_close(c);
  t_cn_wait_close(id);
  t_server_destroy(s);
}

static void case_limit(void) {
  t_case("conn_send_limit: the send over it fails with -ENOBUFS, CLOSE err ENOBUFS");
  t_server_t *s = start_with(1 << 30, 1 << 20);
  atomic_store(&flood_sends, 0);
  t_conn_t *c = t_connect(s);
  uint16_t port = t_cn_client_port(c);
  t_send_str(c, "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n");
  uint64_t id = t_cn_id_by_port(port);
  t_cn_wait_close(id);
  T_ASSERT_INT_EQ(atomic_load(&flood_last), -ENOBUFS);
  T_ASSERT_INT_EQ(atomic_load(&flood_sends), 4); /* exactly 1 MiB fitted */
  T_ASSERT_INT_EQ(t_cn_close_err(id), ENOBUFS);
  T_ASSERT(t_wait_closed(c, 5000));
  t_conn_close(c);
  t_server_destroy(s);
}

static void early_release(const pmu_conn_event_t *e) {
  if (e->type == PMU_CONN_EV_OPEN)
    pmu_conn_release(e->conn);
}

static void case_early_release(void) {
  t_case("pmu_conn_release before CLOSE: closed at once, no more events");
  pmu_config_t cfg;
  config(&cfg);
  t_cn_new_server();
  t_server_t *s = t_server_start(&cfg);
  t_cn.hook = early_release;
  unsigned long closes = atomic_load(&t_cn.closes), opens = atomic_load(&t_cn.opens);
  t_conn_t *c = t_connect(s);
  T_WAIT_UNTIL(atomic_load(&t_cn.opens) == opens + 1, T_EVENT_MS);
  T_ASSERT(t_wait_closed(c, 5000));
  t_conn_close(c);
  t_sleep_ms(100);
  T_ASSERT_INT_EQ(atomic_load(&t_cn.closes), closes); /* no CLOSE for a released handle */
  t_cn.hook = NULL;
  t_server_destroy(s);
  /* Its handles were released by the hook: the recorder forgets them. */
  T_ASSERT_INT_EQ(atomic_load(&t_cn.violations), 0);
  t_cn_reset();
}

static void case_release_after_destroy(void) {
  t_case("handles kept past CLOSE, released after pmu_server_destroy");
  pmu_config_t cfg;
  config(&cfg);
  t_cn_new_server();
  t_server_t *s = t_server_start(&cfg);
  atomic_store(&t_cn.keep, 1);
  unsigned long closes = atomic_load(&t_cn.closes);
  t_conn_t *c1 = t_connect(s), *c2 = t_connect(s);
  uint64_t id1 = t_cn_id_of(c1), id2 = t_cn_id_of(c2);
  pmu_conn_t *h2 = t_cn_handle(id2);
  t_conn_close(c1);
  t_cn_wait_close(id1);
  /* c2 is still open at the destroy: the stop closes it, CLOSE comes, the handle stays */
  t_server_destroy(s);
  T_ASSERT_INT_EQ(atomic_load(&t_cn.closes), closes + 2);
  T_ASSERT(pmu_conn_closing(h2));
  T_ASSERT_INT_EQ(pmu_conn_send(h2, "x", 1, NULL, NULL), -EPIPE);
  T_ASSERT_INT_EQ(pmu_conn_close(h2, PMU_CLOSE_NOW), -EPIPE);
  atomic_store(&t_cn.keep, 0);
  T_ASSERT_INT_EQ(t_cn_release_kept(), 2); /* ASan: the server and the handles freed once */
  t_conn_close(c2);
}

static void case_io_events(void) {
  t_case("conn_io_events: READ has every byte received, SENT every byte sent");
  pmu_config_t cfg;
  config(&cfg);
  cfg.conn_io_events = 1;
  t_cn_new_server();
  t_server_t *s = t_server_start(&cfg);
  unsigned long read0 = atomic_load(&t_cn.read_bytes), sent0 = atomic_load(&t_cn.sent_bytes);
  t_conn_t *c = t_connect(s);
  uint16_t port = t_cn_client_port(c);
  static const char reqs[] =
      "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /raw HTTP/1.1\r\nHost: x\r\n\r\n";
  t_send_pieces(c, reqs, sizeof reqs - 1, 7, 1);
  uint64_t id = t_cn_id_by_port(port);
  t_response_t resp;
  t_expect_response(c, &resp);
  size_t got = resp.wire_len;
  t_response_free(&resp);
  t_expect_response(c, &resp);
  got += resp.wire_len;
  t_response_free(&resp);
  t_conn_close(c);
  t_cn_wait_close(id);
  T_ASSERT_INT_EQ(atomic_load(&t_cn.read_bytes) - read0, sizeof reqs - 1);
  T_ASSERT_INT_EQ(atomic_load(&t_cn.sent_bytes) - sent0, got);
  long read1 = t_cn_find(id, PMU_CONN_EV_READ, 0);
  T_ASSERT(read1 > t_cn_find(id, PMU_CONN_EV_OPEN, 0) && read1 < t_cn_find(id, T_CN_REQUEST, 0));
  T_ASSERT(t_cn_find(id, PMU_CONN_EV_SENT, 0) > t_cn_find(id, T_CN_REQUEST, 0));
  t_server_destroy(s);
}

static void case_pause(t_server_t *s) {
  t_case("pmu_conn_pause_reading on an HTTP connection: nothing parsed until resumed");
  t_cn.hook = t_cn_pause_at_open;
  t_conn_t *c = t_connect(s);
  uint64_t id = t_cn_id_by_port(t_cn_client_port(c));
  t_cn.hook = NULL;
  t_send_str(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
  T_ASSERT_INT_EQ(t_recv_some(c, 300), -ETIMEDOUT);
  T_ASSERT_INT_EQ(t_cn_count(id, T_CN_REQUEST), 0);
  T_ASSERT_INT_EQ(pmu_conn_pause_reading(t_cn_handle(id), 0), 0);
  t_response_t resp;
  t_expect_response(c, &resp);
  T_ASSERT_FIELD(&resp, "path", "/a");
  t_response_free(&resp);
  t_conn_close(c);
  t_cn_wait_close(id);
}

static void case_threads(void) {
  t_case("threads=2: each handle tells its ring thread; every connection OPEN and CLOSE");
  pmu_config_t cfg;
  config(&cfg);
  cfg.threads = 2;
  t_cn_new_server();
  t_server_t *s = t_server_start(&cfg);
  unsigned long opens = atomic_load(&t_cn.opens), closes = atomic_load(&t_cn.closes);
  t_expect_accepts_alternate(s, 20, 3);
  T_WAIT_UNTIL(atomic_load(&t_cn.closes) - closes == atomic_load(&t_cn.opens) - opens, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_cn.closes) - closes, atomic_load(&t_cn.opens) - opens);
  T_ASSERT_INT_EQ(atomic_load(&bad_request_conn), 0); /* pmu_conn_thread == request->thread */
  t_server_destroy(s);
}

int main(void) {
  t_init("test_conn_events");
  memset(big, 'b', sizeof big);
  int fds = t_count_fds();
  t_cn_reset();
  t_server_t *s = start_with((size_t)1 << 20, (size_t)32 << 20); /* the defaults */
  case_order(s);
  case_ws(s);
  case_respond_raw(s);
  case_thread_order(s);
  case_close(s);
  case_reset(s);
  case_pause(s);
  t_server_destroy(s);
  case_drain();
  case_limit();
  case_early_release();
  case_release_after_destroy();
  case_io_events();
  case_threads();

  t_cn_expect_clean(fds);
  return t_done();
}
