/*
 * fuzz_raw: arbitrary bytes, split at arbitrary points, sent to a raw-mode
 * server (config.raw) whose connection handler echoes every DATA event: half
 * of the echoes copied, half lent (released once sent), and a piece whose
 * first byte is odd pauses the connection's reading and resumes it at once
 * (the bytes that arrive meanwhile wait in the stash, then come as DATA). The
 * check: exactly the bytes sent come back, in order, then the end of the
 * connection (the client half-closes; the engine closes once the echo is
 * out). Small receive buffers, so that inputs span several.
 */
#include "fuzz_common.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void lent_free(void *ctx) { free(ctx); }

static void on_events(void *data, const pmu_conn_event_t *events, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    const pmu_conn_event_t *e = &events[i];
    if (e->type == PMU_CONN_EV_DATA) {
      int rc;
      if (e->len & 1) {
        char *copy = malloc(e->len);
        if (!copy)
          abort();
        memcpy(copy, e->data, e->len);
        rc = pmu_conn_send(e->conn, copy, e->len, lent_free, copy);
      } else {
        rc = pmu_conn_send(e->conn, e->data, e->len, NULL, NULL);
      }
      if (rc < 0) {
        fprintf(stderr, "fuzz_raw: pmu_conn_send failed: %d\n", rc);
        abort();
      }
      if (e->len && (e->data[0] & 1)) {
        pmu_conn_pause_reading(e->conn, 1);
        pmu_conn_pause_reading(e->conn, 0);
      }
    } else if (e->type == PMU_CONN_EV_CLOSE) {
      pmu_conn_release(e->conn);
    }
  }
}

static void raw_server_start(void) {
  static pmu_server_t *server;
  if (server)
    return;
  pmu_config_t cfg;
  pmu_config_init(&cfg);
  cfg.port = 0;
  cfg.buf_count = 64;
  cfg.buf_size = 512;
  cfg.batch_max = 4;
  cfg.raw = 1;
  cfg.conn_handler = on_events;
  cfg.raw_idle_timeout_ms = 3000;
  int rc = pmu_server_start(&cfg, &server);
  if (rc < 0) {
    fprintf(stderr, "fuzz_raw: server start failed: %s\n",
            server ? pmu_server_error(server) : strerror(-rc));
    abort();
  }
  fuzz_set_port(pmu_server_port(server));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  raw_server_start();
  fuzz_plan_t plan;
  fuzz_plan(data, size, &plan);
  size_t out_len = 0;
  char *out = fuzz_exchange(NULL, 0, &plan, &out_len);
  if (!out || out_len != plan.len || (plan.len && memcmp(out, plan.payload, plan.len) != 0)) {
    fprintf(stderr, "fuzz_raw: sent %zu bytes, %s %zu bytes%s\n", plan.len,
            out ? "got back" : "no end after", out_len,
            out && out_len == plan.len ? ", different" : "");
    abort();
  }
  free(out);
  return 0;
}
