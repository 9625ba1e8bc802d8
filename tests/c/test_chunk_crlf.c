/*
 * test_chunk_crlf: the two bytes after a chunk's data must be CRLF. llhttp
 * built without LLHTTP_STRICT_MODE skips any two bytes there, so that
 * "5\r\nhelloXX0\r\n\r\n" was a complete body and whatever stood in place of
 * the CRLF (the start of a smuggled request, a chunk size) went unchecked.
 * Found by tests/fuzz/fuzz_chunked. Each case gets 400 and a close; the
 * well-formed body beside them still echoes.
 */
#include "testlib.h"

#include <stdio.h>

#define HEAD "POST /echo HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n"

int main(void) {
  t_init("chunk_crlf");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);

  static const char *const bad[] = {
      HEAD "5\r\nhelloXX0\r\n\r\n",
      HEAD "5\r\nhello\n\n0\r\n\r\n",
      HEAD "5\r\nhello\n\r0\r\n\r\n",
      HEAD "5\r\nhello0\r\n0\r\n\r\n",
      HEAD "3\r\nabc\r\r\n0\r\n\r\n",
      HEAD "5\r\nhello  0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: c\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char name[64];
    snprintf(name, sizeof name, "chunk data ended by other bytes than CRLF (%zu)", i);
    t_case(name);
    t_expect_error_close(server, bad[i], strlen(bad[i]), 400);
  }

  t_case("a chunk ended by CRLF is echoed");
  {
    static const char ok[] = HEAD "5\r\nhello\r\n0\r\n\r\n";
    t_conn_t *conn = t_connect(server);
    t_send(conn, ok, sizeof ok - 1);
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_INT_EQ(r.body_len, 5);
    T_ASSERT(memcmp(r.body, "hello", 5) == 0);
    t_response_free(&r);
    t_conn_close(conn);
  }

  t_server_destroy(server);
  return t_done();
}
