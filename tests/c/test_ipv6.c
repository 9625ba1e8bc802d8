/*
 * test_ipv6: a server on ::1 answers over IPv6 and reports the peer and
 * local addresses as IPv6. Skips (77) where this host has no ::1.
 */
#include "testlib.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <unistd.h>

/* Can this host bind ::1? */
static bool have_ipv6_loopback(void) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return false;
  struct sockaddr_in6 addr = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  bool ok = bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
  close(fd);
  return ok;
}

/* Check a request's addresses as the handler saw them, recorded by this
 * handler into the response. */
static void ipv6_handler(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    char peer[INET6_ADDRSTRLEN] = "?", local[INET6_ADDRSTRLEN] = "?";
    unsigned local_port = 0;
    if (r->peer.ss_family == AF_INET6)
      inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&r->peer)->sin6_addr, peer, sizeof peer);
    if (r->local.ss_family == AF_INET6) {
      struct sockaddr_in6 *l = (struct sockaddr_in6 *)&r->local;
      inet_ntop(AF_INET6, &l->sin6_addr, local, sizeof local);
      local_port = ntohs(l->sin6_port);
    }
    char body[256];
    int n = snprintf(body, sizeof body,
                     "peer_family=%d\npeer=%s\nlocal_family=%d\nlocal=%s\nlocal_port=%u\n",
                     r->peer.ss_family, peer, r->local.ss_family, local, local_port);
    pmu_respond_simple(r, 200, NULL, 0, body, (size_t)n);
  }
  (void)data;
}

int main(void) {
  t_init("ipv6");
  if (!have_ipv6_loopback())
    t_skip("::1 is not available on this host");

  pmu_config_t config;
  t_config_init(&config);
  config.host = "::1";
  t_server_t *server = t_server_start(&config);
  T_ASSERT_INT_EQ(server->family, AF_INET6);

  t_case("a request over IPv6 on ::1 is answered");
  {
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET /six?v=6 HTTP/1.1\r\nHost: [::1]\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "path", "/six");
    T_ASSERT_FIELD(&r, "host", "[::1]");
    t_response_free(&r);
    t_send_str(conn, "GET /again HTTP/1.1\r\nHost: [::1]\r\n\r\n");
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    t_response_free(&r);
    t_conn_close(conn);
  }
  t_server_destroy(server);

  t_case("the handler sees IPv6 peer and local addresses");
  {
    t_config_init(&config);
    config.host = "::1";
    config.handler = ipv6_handler;
    server = t_server_start(&config);
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    char expected[256];
    snprintf(expected, sizeof expected,
             "peer_family=%d\npeer=::1\nlocal_family=%d\nlocal=::1\nlocal_port=%u\n", AF_INET6,
             AF_INET6, server->port);
    T_ASSERT_STR_EQ(r.body, expected);
    t_response_free(&r);
    t_conn_close(conn);
    t_server_destroy(server);
  }

  t_case("a server on :: (all addresses) answers on ::1");
  {
    t_config_init(&config);
    config.host = "::";
    server = t_server_start(&config);
    t_get_ok(server, "/any");
    t_server_destroy(server);
  }

  return t_done();
}
