/*
 * test_ws: the WebSocket handshake, messages both ways, fragments, pings,
 * the closing handshake both ways, accept from another thread, counters.
 */
#include "wslib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_accept_key(void) {
  t_case("Sec-WebSocket-Accept of RFC 6455 1.3's key");
  char out[29];
  pmu_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out);
  T_ASSERT_STR_EQ(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  pmu_ws_accept_key("x3JJHMbDL1EzLkh9GBhXDw==", 24, out); /* RFC 6455 4.1's example pair */
  T_ASSERT_STR_EQ(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
}

static void test_handshake(const t_server_t *s) {
  t_case("101 with the engine's headers, subprotocol and extra headers");
  char req[1024];
  size_t n = t_ws_request(req, sizeof req, "/ws/proto", "Sec-WebSocket-Protocol: chat\r\n");
  t_conn_t *c = t_connect(s);
  t_send(c, req, n);
  t_response_t r;
  t_expect_head_response(c, &r);
  T_ASSERT_INT_EQ(r.status, 101);
  T_ASSERT_STR_EQ(t_header(&r, "Upgrade"), "websocket");
  T_ASSERT_STR_EQ(t_header(&r, "Connection"), "Upgrade");
  T_ASSERT_STR_EQ(t_header(&r, "Sec-WebSocket-Accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  T_ASSERT_STR_EQ(t_header(&r, "Sec-WebSocket-Protocol"), "chat");
  T_ASSERT_STR_EQ(t_header(&r, "X-Extra"), "1");
  T_ASSERT(t_header(&r, "Content-Length") == NULL);
  T_ASSERT(t_header(&r, "Sec-WebSocket-Extensions") == NULL); /* none offered */
  t_response_free(&r);
  t_conn_close(c);
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) == 1, T_EVENT_MS); /* its GONE, before others look */

  t_case("101s of every size up to 1 KiB (the buffer is sized exactly: ASan checks)");
  for (unsigned len = 1; len <= 1024; len++) {
    char path[64];
    snprintf(path, sizeof path, "/ws/proto?len=%u", len);
    t_conn_t *pc = t_ws_connect(s, path);
    t_conn_close(pc);
  }
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) == 1025, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.gones), 1025);

  t_case("426 and close for another version");
  n = (size_t)snprintf(
      req, sizeof req,
      "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      "Sec-WebSocket-Version: 8\r\n\r\n");
  c = t_connect(s);
  t_send(c, req, n);
  t_expect_response(c, &r);
  T_ASSERT_INT_EQ(r.status, 426);
  T_ASSERT_STR_EQ(t_header(&r, "Sec-WebSocket-Version"), "13");
  t_response_free(&r);
  t_expect_closed(c, 2000);
  t_conn_close(c);

  t_case("a refused handshake: 403, then closed; frames after it never parsed");
  n = t_ws_request(req, sizeof req, "/refuse", NULL);
  n += t_ws_build(req + n, 0x81, "hi", 2, 1);
  c = t_connect(s);
  t_send(c, req, n);
  t_expect_response(c, &r);
  T_ASSERT_INT_EQ(r.status, 403);
  T_ASSERT_STR_EQ(r.body, "no\n");
  t_response_free(&r);
  t_expect_closed(c, 2000);
  t_conn_close(c);

  t_case("a malformed handshake reaches the handler as an ordinary request");
  static const char *bad[] = {
      "Sec-WebSocket-Key: short==\r\nSec-WebSocket-Version: 13\r\n",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", /* no version: 426 below */
  };
  n = (size_t)snprintf(req, sizeof req,
                       "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: "
                       "Upgrade\r\n%s\r\n",
                       bad[0]);
  c = t_connect(s);
  t_send(c, req, n);
  t_expect_response(c, &r);
  T_ASSERT_INT_EQ(r.status, 200); /* the describing body: not a WebSocket */
  t_response_free(&r);
  t_conn_close(c);
  n = (size_t)snprintf(req, sizeof req,
                       "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: "
                       "Upgrade\r\n%s\r\n",
                       bad[1]);
  c = t_connect(s);
  t_send(c, req, n);
  t_expect_response(c, &r);
  T_ASSERT_INT_EQ(r.status, 426);
  t_response_free(&r);
  t_conn_close(c);

  t_case("POST or HTTP/1.0 with Upgrade: websocket is no handshake");
  n = (size_t)snprintf(req, sizeof req,
                       "GET /ws HTTP/1.0\r\nHost: t\r\nUpgrade: websocket\r\nConnection: "
                       "Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n");
  c = t_connect(s);
  t_send(c, req, n);
  t_expect_response(c, &r);
  T_ASSERT_INT_EQ(r.status, 200);
  t_response_free(&r);
  t_conn_close(c);
}

static void test_messages(const t_server_t *s) {
  t_case("echo: text, binary, empty, 125/126/65535/65536-byte payloads");
  t_conn_t *c = t_ws_connect(s, "/ws");
  t_ws_send(c, 0x81, "hello", 5);
  t_ws_expect(c, PMU_WS_TEXT, "hello", 5);
  t_ws_send(c, 0x82, "\x00\xff\x01", 3);
  t_ws_expect(c, PMU_WS_BINARY, "\x00\xff\x01", 3);
  t_ws_send(c, 0x81, "", 0);
  t_ws_expect(c, PMU_WS_TEXT, "", 0);
  static const size_t sizes[] = {125, 126, 65535, 65536, 300000};
  char *big = malloc(300000);
  for (size_t i = 0; i < 300000; i++)
    big[i] = (char)('a' + i % 26);
  for (size_t i = 0; i < T_COUNT(sizes); i++) {
    t_ws_send(c, 0x82, big, sizes[i]);
    t_ws_expect(c, PMU_WS_BINARY, big, sizes[i]);
  }

  t_case("fragments with a ping between them: pong first, then the whole message");
  t_ws_send(c, 0x01, "frag", 4);
  t_ws_send(c, 0x89, "p!", 2);
  t_ws_send(c, 0x00, "men", 3);
  t_ws_send(c, 0x80, "ted", 3);
  t_ws_expect(c, PMU_WS_PONG, "p!", 2);
  t_ws_expect(c, PMU_WS_TEXT, "fragmented", 10);
  T_WAIT_UNTIL(atomic_load(&t_ws.pings) >= 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.pings), 1);

  t_case("a message split at every byte across receives");
  char frame[64];
  size_t fn = t_ws_build(frame, 0x81, "split at every byte", 19, 1);
  for (size_t i = 0; i < fn; i++) {
    t_send(c, frame + i, 1);
    t_sleep_ms(1);
  }
  t_ws_expect(c, PMU_WS_TEXT, "split at every byte", 19);

  t_case("many messages in one write arrive in order, batched");
  char *burst = malloc(100 * 32);
  size_t bn = 0;
  for (int i = 0; i < 100; i++) {
    char msg[16];
    int m = snprintf(msg, sizeof msg, "m%03d", i);
    bn += t_ws_build(burst + bn, 0x81, msg, (size_t)m, 1);
  }
  t_send(c, burst, bn);
  for (int i = 0; i < 100; i++) {
    char msg[16];
    int m = snprintf(msg, sizeof msg, "m%03d", i);
    t_ws_expect(c, PMU_WS_TEXT, msg, (size_t)m);
  }
  T_ASSERT_MSG(atomic_load(&t_ws.max_batch) > 1, "every event had a handler call of its own");
  free(burst);
  free(big);

  t_case("client close: echoed, then the server closes the TCP connection");
  unsigned long gones = atomic_load(&t_ws.gones);
  t_ws_send(c, 0x88,
            "\x03\xe8"
            "bye",
            5);
  t_ws_frame_t f;
  T_ASSERT_INT_EQ(t_ws_read(c, &f, T_IO_TIMEOUT_MS), 0);
  T_ASSERT_INT_EQ(f.opcode, PMU_WS_CLOSE);
  T_ASSERT_INT_EQ(f.len, 2); /* the code echoed, without the reason */
  T_ASSERT(memcmp(f.data, "\x03\xe8", 2) == 0);
  t_ws_frame_free(&f);
  T_ASSERT(t_wait_closed(c, 2000));
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) > gones, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_close_code), 1000);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_gone_code), 1000);
  t_conn_close(c);

  t_case("handshake and first frame in one write");
  char req[1024];
  size_t n = t_ws_request(req, sizeof req, "/ws", NULL);
  n += t_ws_build(req + n, 0x81, "early", 5, 1);
  c = t_connect(s);
  t_send(c, req, n);
  t_response_t r;
  T_ASSERT_INT_EQ(t_read_response(c, &r, T_IO_TIMEOUT_MS, true), 0);
  T_ASSERT_INT_EQ(r.status, 101);
  t_response_free(&r);
  t_ws_expect(c, PMU_WS_TEXT, "early", 5);

  t_case("a message and a close in one write: the echo goes before our close (RFC 6455 5.5.1)");
  gones = atomic_load(&t_ws.gones);
  t_conn_t *c2 = t_ws_connect(s, "/ws");
  char two[64];
  size_t tn = t_ws_build(two, 0x81, "last words", 10, 1);
  tn += t_ws_build(two + tn, 0x88, "\x03\xe8", 2, 1);
  t_send(c2, two, tn);
  t_ws_expect(c2, PMU_WS_TEXT, "last words", 10);
  T_ASSERT_INT_EQ(t_ws_read(c2, &f, T_IO_TIMEOUT_MS), 0);
  T_ASSERT_INT_EQ(f.opcode, PMU_WS_CLOSE);
  T_ASSERT(f.len == 2 && memcmp(f.data, "\x03\xe8", 2) == 0);
  t_ws_frame_free(&f);
  T_ASSERT(t_wait_closed(c2, 2000));
  /* its GONE before the next case counts them: the client sees the close before the server's
     GONE can run, and a late 1000 here once passed for the next case's 1005 */
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) > gones, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_gone_code), 1000);
  t_conn_close(c2);

  t_case("a close without a code is answered without one; GONE says 1005");
  gones = atomic_load(&t_ws.gones);
  t_ws_send(c, 0x88, "", 0);
  T_ASSERT_INT_EQ(t_ws_read(c, &f, T_IO_TIMEOUT_MS), 0);
  T_ASSERT_INT_EQ(f.opcode, PMU_WS_CLOSE);
  T_ASSERT_INT_EQ(f.len, 0);
  t_ws_frame_free(&f);
  T_ASSERT(t_wait_closed(c, 2000));
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) > gones, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_gone_code), 1005);
  t_conn_close(c);
}

static void test_server_close(const t_server_t *s) {
  t_case("server close: the code and reason; closed once the client answers");
  unsigned long gones = atomic_load(&t_ws.gones);
  t_conn_t *c = t_ws_connect(s, "/ws/close?code=4001");
  t_ws_frame_t f;
  T_ASSERT_INT_EQ(t_ws_read(c, &f, T_IO_TIMEOUT_MS), 0);
  T_ASSERT_INT_EQ(f.opcode, PMU_WS_CLOSE);
  T_ASSERT_INT_EQ(f.len, 5);
  T_ASSERT(memcmp(f.data,
                  "\x0f\xa1"
                  "bye",
                  5) == 0);
  t_ws_frame_free(&f);
  t_ws_send(c, 0x88, "\x0f\xa1", 2);
  T_ASSERT(t_wait_closed(c, 2000));
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) > gones, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_gone_code), 4001);
  t_conn_close(c);

  t_case("pmu_ws_close refuses codes that may not be sent; sends after it are refused");
  T_ASSERT_INT_EQ(atomic_load(&t_ws.close_checks), 1);
}

static void test_defer(const t_server_t *s) {
  t_case("accepted from another thread");
  unsigned long gones = atomic_load(&t_ws.gones);
  t_conn_t *c = t_ws_connect(s, "/ws/defer");
  t_ws_send(c, 0x81, "later", 5);
  t_ws_expect(c, PMU_WS_TEXT, "later", 5);
  t_conn_close(c);
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) > gones, T_EVENT_MS); /* before the next case looks */
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_gone_code), 1006);
}

static void test_thread_sends(const t_server_t *s) {
  t_case("messages sent from another thread arrive in order; lent ones are released");
  unsigned long released = atomic_load(&t_ws.lent_released);
  unsigned long gones = atomic_load(&t_ws.gones);
  t_conn_t *c = t_ws_connect(s, "/ws/thread?n=3000");
  for (int i = 0; i < 3000; i++) {
    char msg[24];
    int len = snprintf(msg, sizeof msg, "%d", i);
    t_ws_expect(c, PMU_WS_TEXT, msg, (size_t)len);
  }
  T_ASSERT_INT_EQ(t_ws_read_close(c, T_IO_TIMEOUT_MS, NULL), 1000);
  t_ws_send(c, 0x88, "\x03\xe8", 2);
  T_ASSERT(t_wait_closed(c, 2000));
  T_WAIT_UNTIL(atomic_load(&t_ws.lent_released) == released + 1000, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.lent_released), released + 1000);
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) > gones, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_gone_code), 1000);
  t_conn_close(c);
}

static void test_client_gone(const t_server_t *s) {
  t_case("the client resets: GONE 1006, the handle released");
  unsigned long gones = atomic_load(&t_ws.gones);
  t_conn_t *c = t_ws_connect(s, "/ws");
  t_ws_send(c, 0x81, "x", 1);
  t_ws_expect(c, PMU_WS_TEXT, "x", 1);
  t_conn_abort(c);
  T_WAIT_UNTIL(atomic_load(&t_ws.gones) > gones, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_ws.last_gone_code), 1006);
}

int main(void) {
  t_init("test_ws");
  test_accept_key();
  pmu_config_t cfg;
  t_ws_config_init(&cfg);
  t_server_t *s = t_server_start(&cfg);
  test_handshake(s);
  test_messages(s);
  test_server_close(s);
  test_defer(s);
  test_thread_sends(s);
  test_client_gone(s);

  t_case("counters");
  T_WAIT_UNTIL(t_stats(s, -1).ws_open == 0, T_EVENT_MS);
  pmu_stats_t st = t_stats(s, -1);
  T_ASSERT_INT_EQ(st.ws_open, 0);
  T_ASSERT_INT_EQ(st.ws_accepted, atomic_load(&t_ws.accepted));
  T_ASSERT_INT_EQ(st.ws_messages_in, atomic_load(&t_ws.messages));
  T_ASSERT_INT_EQ(st.ws_bytes_in, atomic_load(&t_ws.bytes_in));
  T_ASSERT(st.ws_frames_in > st.ws_messages_in);
  T_ASSERT_INT_EQ(st.ws_messages_out, st.ws_messages_in + 3000); /* echoes, and the thread's */
  T_ASSERT_INT_EQ(st.ws_closes[0], 3);        /* the client's 1000 twice, the sender thread's */
  T_ASSERT_INT_EQ(st.ws_closes[5], 3 + 1024); /* the reset, and those left without a close */
  T_ASSERT_INT_EQ(st.ws_closes[6], 1);        /* 4001 */
  T_ASSERT_INT_EQ(st.ws_closes[7], 1);        /* no code */
  T_ASSERT_INT_EQ(atomic_load(&t_ws.released), atomic_load(&t_ws.accepted));
  t_server_destroy(s);
  return t_done();
}
