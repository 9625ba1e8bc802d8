/*
 * test_stream: streamed answers (pmu_respond_start/write/end). Chunked for
 * HTTP/1.1, as-is with a Content-Length, close-delimited for HTTP/1.0, no
 * body for HEAD; pieces from another thread keep request order; a producer
 * that waits for on_drain never has much more than output_high_water
 * queued; a producer learns of a client that went away (on_disconnect and
 * -EPIPE) and can still end its stream safely. An aborted stream
 * (pmu_respond_abort) is sent as far as it got and the connection closed,
 * never completed; a body longer or shorter than its Content-Length closes.
 */
#include "testlib.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HIGH_WATER (64 * 1024)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int drained, disconnected;
static size_t max_unsent;
static int write_errors;
static int abort_early_rc = 1;
static int gone_when_live = -1;     /* pmu_request_gone() as a forever stream starts */
static int gone_on_disconnect = -1; /* ... in on_disconnect */
static int gone_after_epipe = -1;   /* ... once a write answered -EPIPE */

static void on_drain(void *data, pmu_request_t *request) {
  (void)data;
  (void)request;
  pthread_mutex_lock(&lock);
  drained++;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
}

static void on_disconnect(void *data, pmu_request_t *request) {
  (void)data;
  int gone = pmu_request_gone(request);
  pthread_mutex_lock(&lock);
  gone_on_disconnect = gone;
  disconnected++;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
}

static const pmu_header_t text = {"Content-Type", 12, "text/plain", 10};

/* Piece i of a stream: "<i>:" then filler, `size` bytes in all. */
static void piece(char *buf, size_t size, size_t i) {
  memset(buf, 'a' + (int)(i % 26), size);
  char tag[24];
  int n = snprintf(tag, sizeof tag, "%zu:", i);
  memcpy(buf, tag, (size_t)n < size ? (size_t)n : size);
}

/* Produce a whole stream: n pieces of size bytes, optionally waiting for
 * drain, optionally until the client goes away. */
static void produce(pmu_request_t *r) {
  size_t n = t_query_ulong(r, "n", 3), size = t_query_ulong(r, "size", 10);
  int wait = (int)t_query_ulong(r, "wait", 0), forever = (int)t_query_ulong(r, "forever", 0);
  size_t length = t_query_ulong(r, "len", 0);
  char lenbuf[24];
  pmu_header_t headers[2] = {text, {"Content-Length", 14, lenbuf, 0}};
  headers[1].value_len = (size_t)snprintf(lenbuf, sizeof lenbuf, "%zu", length);
  if (forever) {
    /* Read before the head goes out: once the client has it, it may leave. */
    int gone = pmu_request_gone(r);
    pthread_mutex_lock(&lock);
    gone_when_live = gone;
    pthread_mutex_unlock(&lock);
  }
  pmu_respond_start(r, 200, headers, length ? 2 : 1);
  char *buf = malloc(size);
  for (size_t i = 0; forever || i < n; i++) {
    piece(buf, size, i);
    int rc = pmu_respond_write(r, buf, size, NULL, NULL);
    size_t unsent = pmu_request_unsent(r);
    pthread_mutex_lock(&lock);
    if (unsent > max_unsent)
      max_unsent = unsent;
    if (rc == -EPIPE) {
      write_errors++;
      gone_after_epipe = pmu_request_gone(r);
    }
    pthread_mutex_unlock(&lock);
    if (rc == -EPIPE)
      break;
    if (wait && unsent > HIGH_WATER) {
      int before;
      pthread_mutex_lock(&lock);
      before = drained + disconnected;
      pthread_mutex_unlock(&lock);
      if (pmu_request_wait_drain(r) == 1) {
        pthread_mutex_lock(&lock);
        while (drained + disconnected == before)
          pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);
      }
    }
    if (forever)
      t_sleep_ms(1);
  }
  free(buf);
  t_sleep_ms((unsigned)t_query_ulong(r, "enddelay", 0));
  if (t_query_ulong(r, "abort", 0))
    pmu_respond_abort(r); /* the producer failed half-way */
  else
    pmu_respond_end(r);
}

static atomic_int producers; /* producer threads not finished yet */

static void *producer_thread(void *arg) {
  pmu_request_t *r = arg;
  t_sleep_ms((unsigned)t_query_ulong(r, "delay", 0));
  produce(r);
  atomic_fetch_sub(&producers, 1);
  return NULL;
}

static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    if (r->path_len == 11 && memcmp(r->path, "/abortearly", 11) == 0) {
      /* Out of order: before start (nothing to abort) and after end. */
      int before_start = pmu_respond_abort(r);
      pmu_respond_start(r, 200, &text, 1);
      pmu_respond_write(r, "ok", 2, NULL, NULL);
      pmu_respond_end(r);
      abort_early_rc = before_start;
    } else if (r->path_len >= 7 && memcmp(r->path, "/stream", 7) == 0) {
      if (t_query_ulong(r, "thread", 0)) {
        pthread_t t;
        atomic_fetch_add(&producers, 1);
        pthread_create(&t, NULL, producer_thread, r);
        pthread_detach(t);
      } else {
        produce(r);
      }
    } else {
      t_handle_request(data, r);
    }
  }
}

/* The body of n pieces of size bytes, as produce() makes them. */
static char *expected_body(size_t n, size_t size) {
  char *body = malloc(n * size + 1);
  for (size_t i = 0; i < n; i++)
    piece(body + i * size, size, i);
  body[n * size] = 0;
  return body;
}

static void expect_stream(t_response_t *resp, size_t n, size_t size) {
  T_ASSERT_INT_EQ(resp->status, 200);
  T_ASSERT_INT_EQ(resp->body_len, n * size);
  char *want = expected_body(n, size);
  T_ASSERT_MSG(memcmp(resp->body, want, n * size) == 0, "streamed body differs");
  free(want);
}

int main(void) {
  t_init("stream");
  pmu_config_t config;
  t_config_init(&config);
  config.handler = handler;
  config.on_drain = on_drain;
  config.on_disconnect = on_disconnect;
  config.output_high_water = HIGH_WATER;
  t_server_t *server = t_server_start(&config);

  t_case("HTTP/1.1 stream on the worker thread is chunked, then the connection is reused");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /stream?n=5&size=7 HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t resp;
    t_expect_response(conn, &resp);
    T_ASSERT(resp.chunked);
    T_ASSERT(!resp.has_content_length);
    expect_stream(&resp, 5, 7);
    t_response_free(&resp);
    t_send_str(conn, "GET /after HTTP/1.1\r\nHost: h\r\n\r\n");
    t_expect_response(conn, &resp);
    T_ASSERT_FIELD(&resp, "path", "/after");
    t_response_free(&resp);
    t_conn_close(conn);
  }

  t_case("a stream with Content-Length is sent as it is");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /stream?n=4&size=10&len=40 HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t resp;
    t_expect_response(conn, &resp);
    T_ASSERT(!resp.chunked);
    T_ASSERT_INT_EQ(resp.content_length, 40);
    expect_stream(&resp, 4, 10);
    t_response_free(&resp);
    t_conn_close(conn);
  }

  t_case("a body shorter than its Content-Length closes the connection");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /stream?n=1&size=10&len=25 HTTP/1.1\r\nHost: h\r\n\r\n");
    T_ASSERT_MSG(t_wait_closed(conn, 2000), "connection not closed");
    T_ASSERT_MSG(t_memmem(conn->buf, conn->len, "Content-Length: 25") != NULL, "head not sent");
    t_conn_close(conn);
  }

  t_case("HTTP/1.0 stream is delimited by the close");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /stream?n=3&size=5 HTTP/1.0\r\n\r\n");
    T_ASSERT_MSG(t_wait_closed(conn, 2000), "connection not closed");
    t_response_t resp;
    T_ASSERT(t_parse_response(conn->buf, conn->len, false, true, &resp) > 0);
    T_ASSERT(!resp.chunked);
    T_ASSERT_STR_EQ(t_header(&resp, "Connection"), "close");
    expect_stream(&resp, 3, 5);
    t_response_free(&resp);
    t_conn_close(conn);
  }

  t_case("HEAD of a stream sends no body");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "HEAD /stream?n=3&size=5 HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t resp;
    t_expect_head_response(conn, &resp);
    T_ASSERT_INT_EQ(resp.status, 200);
    T_ASSERT_MSG(t_recv_some(conn, 100) == -ETIMEDOUT, "bytes after HEAD");
    t_response_free(&resp);
    t_conn_close(conn);
  }

  t_case("pipelined: a slow stream from another thread keeps its place in line");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /first HTTP/1.1\r\nHost: h\r\n\r\n"
                     "GET /stream?thread=1&delay=100&n=20&size=100 HTTP/1.1\r\nHost: h\r\n\r\n"
                     "GET /last HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t a, b, c;
    t_expect_response(conn, &a);
    T_ASSERT_FIELD(&a, "path", "/first");
    t_expect_response(conn, &b);
    T_ASSERT(b.chunked);
    expect_stream(&b, 20, 100);
    t_expect_response(conn, &c);
    T_ASSERT_FIELD(&c, "path", "/last");
    t_response_free(&a);
    t_response_free(&b);
    t_response_free(&c);
    t_conn_close(conn);
  }

  t_case("8 MiB streamed by a producer that waits for drain: bounded queue, all bytes");
  {
    max_unsent = 0;
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /stream?thread=1&wait=1&n=512&size=16384 HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t resp;
    t_expect_response(conn, &resp);
    expect_stream(&resp, 512, 16384);
    t_response_free(&resp);
    pthread_mutex_lock(&lock);
    size_t seen = max_unsent;
    int d = drained;
    pthread_mutex_unlock(&lock);
    T_ASSERT_MSG(seen <= HIGH_WATER + 16384, "unsent reached %zu", seen);
    T_ASSERT_MSG(d > 0, "on_drain never called");
    t_conn_close(conn);
  }

  t_case("the end of a stream whose bytes are all out arrives after the client's FIN: closed");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /stream?thread=1&n=1&size=3&len=3&enddelay=200 HTTP/1.1\r\n"
                     "Host: h\r\n\r\n");
    t_response_t resp;
    t_expect_response(conn, &resp);
    T_ASSERT_INT_EQ(resp.body_len, 3);
    t_response_free(&resp);
    t_conn_close(conn); /* FIN while the engine still owes the (empty) end */
    T_WAIT_UNTIL(t_stats(server, -1).connections_open == 0, T_EVENT_MS);
    pmu_stats_t st = t_stats(server, -1);
    T_ASSERT_MSG(st.connections_open == 0, "connection left open (CLOSE-WAIT)");
  }

  t_case("an aborted chunked stream: the pieces, no last chunk, then the close");
  {
    pmu_stats_t before = t_stats(server, -1);
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /stream?n=3&size=10&abort=1 HTTP/1.1\r\nHost: h\r\n\r\n");
    T_ASSERT_MSG(t_wait_closed(conn, 3000), "connection not closed");
    T_ASSERT_MSG(conn->eof && conn->error == 0, "not an orderly close (error %d)", conn->error);
    t_response_t resp;
    T_ASSERT_MSG(t_parse_response(conn->buf, conn->len, false, true, &resp) <= 0,
                 "the client could parse a complete answer");
    const char *body = t_memmem(conn->buf, conn->len, "\r\n\r\n");
    T_ASSERT(body != NULL);
    T_ASSERT_MSG(t_memmem(conn->buf, conn->len, "Transfer-Encoding: chunked") != NULL,
                 "not chunked");
    char *want = expected_body(3, 10);
    char framed[128];
    int n = snprintf(framed, sizeof framed, "\r\n\r\na\r\n%.10s\r\na\r\n%.10s\r\na\r\n%.10s\r\n",
                     want, want + 10, want + 20);
    free(want);
    T_ASSERT_MSG(conn->len == (size_t)(body - conn->buf) + (size_t)n &&
                     memcmp(body, framed, (size_t)n) == 0,
                 "the bytes after the head are not exactly the three chunks");
    T_ASSERT_MSG(conn->len < 5 || memcmp(conn->buf + conn->len - 5, "0\r\n\r\n", 5) != 0,
                 "ends with the last chunk");
    t_conn_close(conn);
    pmu_stats_t after = t_stats(server, -1);
    T_ASSERT_INT_EQ(after.responses_aborted - before.responses_aborted, 1);
    t_get_ok(server, "/after-abort"); /* the server goes on */
  }

  t_case("an aborted stream with a Content-Length closes after the bytes sent, unpadded");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /stream?n=2&size=10&len=40&abort=1 HTTP/1.1\r\nHost: h\r\n\r\n");
    T_ASSERT_MSG(t_wait_closed(conn, 3000), "connection not closed");
    T_ASSERT_MSG(conn->eof && conn->error == 0, "not an orderly close (error %d)", conn->error);
    const char *body = t_memmem(conn->buf, conn->len, "\r\n\r\n");
    T_ASSERT(body != NULL);
    T_ASSERT_MSG(t_memmem(conn->buf, conn->len, "Content-Length: 40") != NULL, "no length");
    T_ASSERT_INT_EQ(conn->len - (size_t)(body + 4 - conn->buf), 20);
    t_conn_close(conn);
  }

  t_case("aborted from another thread with requests pipelined behind: they are dropped");
  {
    pmu_stats_t before = t_stats(server, -1);
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /first HTTP/1.1\r\nHost: h\r\n\r\n"
                     "GET /stream?thread=1&delay=50&n=4&size=100&abort=1 HTTP/1.1\r\n"
                     "Host: h\r\n\r\n"
                     "GET /behind HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t a;
    t_expect_response(conn, &a);
    T_ASSERT_FIELD(&a, "path", "/first");
    t_response_free(&a);
    T_ASSERT_MSG(t_wait_closed(conn, 3000), "connection not closed");
    T_ASSERT_MSG(conn->error == 0, "reset instead of an orderly close (%d)", conn->error);
    T_ASSERT_MSG(t_memmem(conn->buf, conn->len, "/behind") == NULL,
                 "a request behind the aborted answer was answered");
    T_ASSERT_MSG(conn->len < 5 || memcmp(conn->buf + conn->len - 5, "0\r\n\r\n", 5) != 0,
                 "ends with the last chunk");
    t_conn_close(conn);
    pmu_stats_t after = t_stats(server, -1);
    T_ASSERT_INT_EQ(after.responses_aborted - before.responses_aborted, 1);
  }

  t_case("a body shorter than its Content-Length counts as aborted");
  {
    pmu_stats_t before = t_stats(server, -1);
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /stream?n=1&size=10&len=25 HTTP/1.1\r\nHost: h\r\n\r\n");
    T_ASSERT_MSG(t_wait_closed(conn, 2000), "connection not closed");
    t_conn_close(conn);
    pmu_stats_t after = t_stats(server, -1);
    T_ASSERT_INT_EQ(after.responses_aborted - before.responses_aborted, 1);
  }

  t_case("a body longer than its Content-Length is cut off there, then the connection closes");
  {
    pmu_stats_t before = t_stats(server, -1);
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /stream?n=2&size=10&len=15 HTTP/1.1\r\nHost: h\r\n\r\n"
                     "GET /behind HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t resp;
    t_expect_response(conn, &resp);
    T_ASSERT_INT_EQ(resp.body_len, 15);
    t_response_free(&resp);
    T_ASSERT_MSG(t_wait_closed(conn, 2000), "connection not closed");
    T_ASSERT_MSG(t_memmem(conn->buf, conn->len, "/behind") == NULL,
                 "answered on after a cut-off body");
    t_conn_close(conn);
    pmu_stats_t after = t_stats(server, -1);
    T_ASSERT_INT_EQ(after.responses_aborted - before.responses_aborted, 0);
  }

  t_case("pmu_respond_abort before start is refused (-EINVAL), the answer goes on");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /abortearly HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t resp;
    t_expect_response(conn, &resp);
    T_ASSERT_INT_EQ(resp.body_len, 2);
    t_response_free(&resp);
    T_ASSERT_INT_EQ(abort_early_rc, -EINVAL);
    t_conn_close(conn);
  }

  t_case("the client goes away mid-stream: on_disconnect, -EPIPE, pmu_request_gone, safe end");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /stream?thread=1&forever=1&size=1000 HTTP/1.1\r\nHost: h\r\n\r\n");
    T_ASSERT(t_recv_some(conn, 2000) > 0);
    pthread_mutex_lock(&lock);
    int before = disconnected, errors_before = write_errors;
    pthread_mutex_unlock(&lock);
    t_conn_abort(conn);
    int ok = 0;
    T_WAIT_UNTIL((pthread_mutex_lock(&lock),
                  ok = disconnected > before && write_errors > errors_before,
                  pthread_mutex_unlock(&lock), ok),
                 T_EVENT_MS);
    T_ASSERT_MSG(ok, "no disconnect seen (on_disconnect %d, EPIPE %d)", disconnected - before,
                 write_errors - errors_before);
    pthread_mutex_lock(&lock);
    int live = gone_when_live, in_disconnect = gone_on_disconnect, after = gone_after_epipe;
    pthread_mutex_unlock(&lock);
    T_ASSERT_INT_EQ(live, 0);          /* connected: not gone */
    T_ASSERT_INT_EQ(in_disconnect, 1); /* marked before on_disconnect runs */
    T_ASSERT_INT_EQ(after, 1);
    /* the producer ends its stream */
    T_WAIT_UNTIL(atomic_load(&producers) == 0, T_EVENT_MS);
    T_ASSERT_INT_EQ(atomic_load(&producers), 0);
  }

  t_server_destroy(server);
  return t_done();
}
