/*
 * test_head: a HEAD response carries the Content-Length the GET would have
 * had, but no body bytes, and the connection stays usable after it.
 */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

int main(void) {
  t_init("head");
  pmu_config_t config;
  t_config_init(&config);
  t_server_t *server = t_server_start(&config);
  t_conn_t *conn = t_connect(server);

  static const size_t sizes[] = {0, 1, 1234, 70000};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    char name[64], request[256];
    snprintf(name, sizeof name, "HEAD of a %zu-byte body, then GET on the same connection",
             sizes[s]);
    t_case(name);

    snprintf(request, sizeof request, "GET /big?n=%zu HTTP/1.1\r\nHost: h\r\n\r\n", sizes[s]);
    t_send_str(conn, request);
    t_response_t get;
    t_expect_response(conn, &get);
    T_ASSERT_INT_EQ(get.status, 200);
    T_ASSERT_INT_EQ(get.body_len, sizes[s]);

    snprintf(request, sizeof request, "HEAD /big?n=%zu HTTP/1.1\r\nHost: h\r\n\r\n", sizes[s]);
    t_send_str(conn, request);
    t_response_t head;
    t_expect_head_response(conn, &head);
    T_ASSERT_INT_EQ(head.status, 200);
    T_ASSERT_MSG(head.has_content_length, "HEAD response without Content-Length");
    T_ASSERT_INT_EQ(head.content_length, sizes[s]);
    T_ASSERT_STR_EQ(t_header(&head, "Content-Type"), t_header(&get, "Content-Type"));
    /* No body bytes may follow: nothing arrives until the next request. */
    int rc = t_recv_some(conn, 100);
    T_ASSERT_MSG(rc == -ETIMEDOUT, "bytes after a HEAD response: \"%.*s\"",
                 (int)(conn->len > 100 ? 100 : conn->len), conn->buf ? conn->buf : "");

    /* and the connection still works: a GET parses cleanly right after */
    t_send_str(conn, "GET /after-head HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t after;
    t_expect_response(conn, &after);
    T_ASSERT_INT_EQ(after.status, 200);
    T_ASSERT_FIELD(&after, "path", "/after-head");
    T_ASSERT_STR_EQ(t_header(&after, "X-Conn"), t_header(&get, "X-Conn"));
    t_response_free(&after);
    t_response_free(&get);
    t_response_free(&head);
  }

  t_case("the handler sees HEAD with is_head set");
  {
    t_send_str(conn, "HEAD /describe HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t head;
    t_expect_head_response(conn, &head);
    T_ASSERT_INT_EQ(head.status, 200);
    T_ASSERT_MSG(head.content_length > 0, "describing body has length 0");
    t_response_free(&head);
    /* The describing body is not sent; ask for the same with GET to read it:
     * the GET's body must have exactly that length with method=GET, which
     * shows framing lined up. */
    t_send_str(conn, "GET /describe HTTP/1.1\r\nHost: h\r\n\r\n");
    t_response_t get;
    t_expect_response(conn, &get);
    T_ASSERT_FIELD(&get, "head", "0");
    t_response_free(&get);
  }

  t_case("pipelined HEAD and GET requests line up");
  {
    const char *requests = "HEAD /big?n=5000 HTTP/1.1\r\nHost: h\r\n\r\n"
                           "GET /big?n=7 HTTP/1.1\r\nHost: h\r\n\r\n"
                           "HEAD /big?n=100000 HTTP/1.1\r\nHost: h\r\n\r\n"
                           "GET /last HTTP/1.1\r\nHost: h\r\n\r\n";
    t_send_str(conn, requests);
    t_response_t r;
    t_expect_head_response(conn, &r);
    T_ASSERT_INT_EQ(r.content_length, 5000);
    t_response_free(&r);
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.body_len, 7);
    T_ASSERT_STR_EQ(r.body, "abcdefg");
    t_response_free(&r);
    t_expect_head_response(conn, &r);
    T_ASSERT_INT_EQ(r.content_length, 100000);
    t_response_free(&r);
    t_expect_response(conn, &r);
    T_ASSERT_FIELD(&r, "path", "/last");
    t_response_free(&r);
  }

  T_ASSERT_MSG(!t_wait_closed(conn, 50), "connection closed");
  t_conn_close(conn);
  t_server_destroy(server);
  return t_done();
}
