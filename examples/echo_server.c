/*
 * echo_server: a TCP echo server on the engine's raw mode (config.raw): no
 * HTTP, every connection's bytes reach the connection handler as DATA events
 * and go back with pmu_conn_send. A client that does not read its echo is held
 * back: when a send reports the high water, the connection stops being read
 * until DRAIN. Stops gracefully on SIGINT or SIGTERM.
 *
 *   echo_server [PORT [THREADS]]        e.g. echo_server 7000, then nc 127.0.0.1 7000
 */
#include <pmu/pmu.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static void on_events(void *data, const pmu_conn_event_t *events, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    const pmu_conn_event_t *e = &events[i];
    switch (e->type) {
    case PMU_CONN_EV_DATA: /* e->data is valid during this call: the send copies it */
      if (pmu_conn_send(e->conn, e->data, e->len, NULL, NULL) == 1)
        pmu_conn_pause_reading(e->conn, 1); /* the client reads slower than it writes */
      break;
    case PMU_CONN_EV_DRAIN: pmu_conn_pause_reading(e->conn, 0); break;
    case PMU_CONN_EV_CLOSE: pmu_conn_release(e->conn); break;
    default: break;
    }
  }
}

int main(int argc, char **argv) {
  pmu_config_t config;
  pmu_config_init(&config);
  config.port = (uint16_t)(argc > 1 ? atoi(argv[1]) : 7000);
  config.threads = argc > 2 ? (unsigned)atoi(argv[2]) : 1;
  config.raw = 1;
  config.conn_handler = on_events;
  config.raw_idle_timeout_ms = 60000;

  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, NULL); /* the ring threads inherit the mask */

  pmu_server_t *server;
  int rc = pmu_server_start(&config, &server);
  if (rc < 0) {
    fprintf(stderr, "echo_server: %s\n", server ? pmu_server_error(server) : "out of memory");
    if (server)
      pmu_server_destroy(server);
    return 1;
  }
  fprintf(stderr, "echo_server: listening on 127.0.0.1:%u\n", pmu_server_port(server));
  int sig;
  sigwait(&stop, &sig);
  pmu_server_destroy(server); /* stops: open connections get their echo, then close */
  return 0;
}
