/*
 * test_peer_eof: a client that half-closes (FIN) while the handler holds its
 * request unanswered: config.on_peer_eof is called once for that request, on
 * its worker thread, pmu_request_peer_eof() says 1, the connection stays open
 * and the answer given afterwards still reaches the client. No call for a
 * request answered before the FIN, nor without a FIN.
 */
#include "testlib.h"

#include <stdatomic.h>
#include <stdio.h>
#include <sys/socket.h>

static _Atomic(pmu_request_t *) held; /* the request the handler kept */
static atomic_int peer_eofs;          /* on_peer_eof calls */
static _Atomic(pmu_request_t *) told; /* the request of the last call */

/* /hold is kept (answered by the test), the rest as t_handler does. */
static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    if (t_path_is(requests[i], "/hold"))
      atomic_store(&held, requests[i]);
    else
      t_handle_request(data, requests[i]);
  }
}

static void on_peer_eof(void *data, pmu_request_t *request) {
  (void)data;
  atomic_store(&told, request);
  atomic_fetch_add(&peer_eofs, 1);
}

static void answer_held(const char *body) {
  pmu_request_t *r = atomic_exchange(&held, NULL);
  T_ASSERT(r != NULL);
  pmu_response_t resp = {.status = 200, .body = body, .body_len = strlen(body)};
  T_ASSERT_INT_EQ(pmu_respond(r, &resp), 0);
}

int main(void) {
  t_init("peer_eof");
  pmu_config_t config;
  t_config_init(&config);
  config.handler = handler;
  config.on_peer_eof = on_peer_eof;
  t_server_t *server = t_server_start(&config);

  t_case("FIN while the request is held: on_peer_eof once, then the answer arrives");
  {
    t_conn_t *c = t_connect(server);
    t_send_str(c, "GET /hold HTTP/1.1\r\nHost: e\r\n\r\n");
    T_WAIT_UNTIL(atomic_load(&held) != NULL, T_EVENT_MS);
    pmu_request_t *r = atomic_load(&held);
    T_ASSERT(r != NULL);
    T_ASSERT_INT_EQ(pmu_request_peer_eof(r), 0);
    T_ASSERT_INT_EQ(atomic_load(&peer_eofs), 0);
    T_ASSERT_INT_EQ(shutdown(c->fd, SHUT_WR), 0);
    T_WAIT_UNTIL(atomic_load(&peer_eofs) == 1, T_EVENT_MS);
    T_ASSERT_INT_EQ(atomic_load(&peer_eofs), 1);
    T_ASSERT(atomic_load(&told) == r);
    T_ASSERT_INT_EQ(pmu_request_peer_eof(r), 1);
    T_ASSERT_INT_EQ(pmu_request_gone(r), 0); /* still open: the answer can go */
    answer_held("late answer");
    t_response_t resp;
    T_ASSERT_INT_EQ(t_read_response(c, &resp, T_EVENT_MS, false), 0);
    T_ASSERT_INT_EQ(resp.status, 200);
    T_ASSERT(resp.body_len == 11 && memcmp(resp.body, "late answer", 11) == 0);
    t_response_free(&resp);
    T_ASSERT_INT_EQ(atomic_load(&peer_eofs), 1);
    t_conn_close(c);
  }

  t_case("no call without a FIN, nor for a request answered before it");
  {
    atomic_store(&peer_eofs, 0);
    t_conn_t *c = t_connect(server);
    t_send_str(c, "GET /hold HTTP/1.1\r\nHost: e\r\n\r\n");
    T_WAIT_UNTIL(atomic_load(&held) != NULL, T_EVENT_MS);
    t_sleep_ms(50);
    T_ASSERT_INT_EQ(atomic_load(&peer_eofs), 0);
    T_ASSERT_INT_EQ(pmu_request_peer_eof(atomic_load(&held)), 0);
    answer_held("answered");
    t_response_t resp;
    T_ASSERT_INT_EQ(t_read_response(c, &resp, T_EVENT_MS, false), 0);
    T_ASSERT_INT_EQ(resp.status, 200);
    t_response_free(&resp);
    T_ASSERT_INT_EQ(shutdown(c->fd, SHUT_WR), 0);
    T_WAIT_UNTIL(t_stats(server, -1).connections_open == 0, T_EVENT_MS);
    T_ASSERT_INT_EQ(atomic_load(&peer_eofs), 0);
    t_conn_close(c);
  }

  t_server_destroy(server);
  return t_done();
}
