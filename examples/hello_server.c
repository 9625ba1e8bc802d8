/*
 * hello_server: the C baseline every benchmark compares against.
 *
 * Answers every request with {"message":"Hello, World!"} as application/json,
 * using nothing but the public header include/pmu/pmu.h. For the benchmark's
 * other workloads it also serves GET /16k and GET /1m (that many bytes of
 * 'x', application/octet-stream, sent without a copy) and POST /echo (the
 * body back). On exit it prints the engine's counters as one line,
 * "PMU_STATS {json}", on stderr.
 *
 *   hello_server PORT [THREADS]
 *
 * Every engine knob can be set from the environment for tuning experiments,
 * e.g. PMU_RING_ENTRIES=4096 PMU_SQPOLL=1 PMU_REGISTERED_FILES=1 (the field
 * names of pmu_config_t, upper-cased, prefixed PMU_).
 *
 * Stops gracefully on SIGINT or SIGTERM.
 */
#include <pmu/pmu.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char body[] = "{\"message\":\"Hello, World!\"}";
static const pmu_header_t json_headers[] = {
    {"Content-Type", 12, "application/json", 16},
};

static const pmu_header_t octet_headers[] = {
    {"Content-Type", 12, "application/octet-stream", 24},
};
static char *x_bytes; /* 1 MiB of 'x', shared by /16k and /1m */

static int path_is(const pmu_request_t *r, const char *path) {
  size_t n = strlen(path);
  return r->path_len == n && memcmp(r->path, path, n) == 0;
}

static void no_release(void *ctx) { (void)ctx; }

static void answer(pmu_request_t *r) {
  if (path_is(r, "/16k") || path_is(r, "/1m")) {
    /* Static bytes: handed to the engine without a copy. */
    pmu_response_t resp = {.status = 200, .headers = octet_headers, .header_count = 1,
                           .body = x_bytes, .body_len = path_is(r, "/1m") ? 1 << 20 : 16 << 10,
                           .body_release = no_release};
    pmu_respond(r, &resp);
  } else if (path_is(r, "/echo")) {
    pmu_respond_simple(r, 200, octet_headers, 1, r->body, r->body_len);
  } else {
    pmu_respond_simple(r, 200, json_headers, 1, body, sizeof body - 1);
  }
}

static void hello(void *data, pmu_request_t *const *requests, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++)
    answer(requests[i]);
}

static void print_stats(const pmu_server_t *server) {
  pmu_stats_t s;
  pmu_server_stats(server, -1, &s);
  fprintf(stderr,
          "PMU_STATS {\"connections_accepted\":%llu,\"requests\":%llu,\"responses\":%llu,"
          "\"bytes_in\":%llu,\"bytes_out\":%llu,\"parse_errors\":%llu,\"timeouts\":%llu,"
          "\"enobufs\":%llu,\"short_sends\":%llu,\"sends\":%llu,\"send_zc\":%llu,"
          "\"recv_paused\":%llu,\"cq_overflows\":%llu,\"waits\":%llu,\"cqes\":%llu,"
          "\"batches\":%llu,\"connections_rejected\":%llu,\"accept_errors\":%llu,"
          "\"wait_errors\":%llu,\"status_classes\":{\"1xx\":%llu,"
          "\"2xx\":%llu,\"3xx\":%llu,\"4xx\":%llu,\"5xx\":%llu},\"responses_aborted\":%llu,"
          "\"bodies_spooled\":%llu,\"body_buffer_bytes\":%llu}\n",
          (unsigned long long)s.connections_accepted, (unsigned long long)s.requests,
          (unsigned long long)s.responses, (unsigned long long)s.bytes_in,
          (unsigned long long)s.bytes_out, (unsigned long long)s.parse_errors,
          (unsigned long long)s.timeouts, (unsigned long long)s.enobufs,
          (unsigned long long)s.short_sends, (unsigned long long)s.sends,
          (unsigned long long)s.send_zc, (unsigned long long)s.recv_paused,
          (unsigned long long)s.cq_overflows, (unsigned long long)s.waits,
          (unsigned long long)s.cqes, (unsigned long long)s.batches,
          (unsigned long long)s.connections_rejected, (unsigned long long)s.accept_errors,
          (unsigned long long)s.wait_errors,
          (unsigned long long)s.status_classes[1],
          (unsigned long long)s.status_classes[2], (unsigned long long)s.status_classes[3],
          (unsigned long long)s.status_classes[4], (unsigned long long)s.status_classes[5],
          (unsigned long long)s.responses_aborted, (unsigned long long)s.bodies_spooled,
          (unsigned long long)s.body_buffer_bytes);
}

/* Numeric knobs of pmu_config_t that the environment may set. */
#define KNOBS(X)                                                                              \
  X(ring_entries) X(cq_entries) X(buf_count) X(buf_size) X(defer_taskrun) X(sqpoll)           \
  X(sqpoll_idle_ms) X(registered_files) X(send_zc_threshold) X(batch_max)                   \
  X(max_header_bytes) X(max_headers) X(max_url_bytes) X(max_body_bytes) X(max_connections)  \
  X(max_pipelined) X(output_high_water) X(header_timeout_ms) X(keepalive_timeout_ms)        \
  X(body_timeout_ms) X(send_timeout_ms) X(shutdown_timeout_ms) X(backlog) X(listen_fd)       \
  X(body_buffer_budget) X(min_recv_rate) X(min_rate_grace_ms) X(accept_backoff_ms)

static void knobs_from_env(pmu_config_t *c) {
  char name[64];
#define X(field)                                                                              \
  {                                                                                           \
    snprintf(name, sizeof name, "PMU_%s", #field);                                            \
    for (char *p = name; *p; p++)                                                             \
      if (*p >= 'a' && *p <= 'z')                                                             \
        *p = (char)(*p - 'a' + 'A');                                                          \
    const char *v = getenv(name);                                                             \
    if (v && *v)                                                                              \
      c->field = (__typeof__(c->field))strtoull(v, NULL, 0);                                  \
  }
  KNOBS(X)
#undef X
}

int main(int argc, char **argv) {
  pmu_config_t config;
  pmu_config_init(&config);
  config.host = getenv("PMU_HOST") ? getenv("PMU_HOST") : "127.0.0.1";
  config.port = argc > 1 ? (uint16_t)atoi(argv[1]) : 8000;
  config.threads = argc > 2 ? (unsigned)atoi(argv[2]) : 1;
  config.handler = hello;
  knobs_from_env(&config);
  config.body_spool_dir = getenv("PMU_BODY_SPOOL_DIR");
  x_bytes = malloc(1 << 20);
  if (!x_bytes)
    return 1;
  memset(x_bytes, 'x', 1 << 20);

  /* Block the stop signals in every thread; this one waits for them. */
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

  pmu_server_t *server = NULL;
  int rc = pmu_server_start(&config, &server);
  if (rc < 0) {
    fprintf(stderr, "hello_server: %s\n", server ? pmu_server_error(server) : strerror(-rc));
    pmu_server_destroy(server);
    return 1;
  }
  fprintf(stderr, "hello_server: listening on %s:%u with %u thread(s)\n", config.host,
          pmu_server_port(server), pmu_server_threads(server));

  int sig = 0;
  sigwait(&stop_signals, &sig);
  pmu_server_stop(server);
  pmu_server_wait(server, -1);
  print_stats(server);
  pmu_server_destroy(server);
  free(x_bytes);
  return 0;
}
