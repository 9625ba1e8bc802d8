/*
 * test_slow: slow handler calls (config.slow_handler_ms). A handler that
 * blocks its ring thread 150 ms is counted in slow_batches and reported: a
 * WARNING line through config.log naming the ring thread and the time, or a
 * call of config.on_slow with the batch (whose requests can still be read);
 * a second slow call within 10 s is counted but not reported, and the next
 * report says how many were not; quick calls count nothing; 0 turns it off;
 * a slow connection handler (config.conn_handler) is counted too.
 */
#include "connlib.h"
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* /sleep?ms=N: block the ring N ms, then the test handler's answer. */
static void handler(void *data, pmu_request_t *const *reqs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (t_path_is(reqs[i], "/sleep"))
      t_sleep_ms((unsigned)t_query_ulong(reqs[i], "ms", 0));
    t_handle_request(data, reqs[i]);
  }
}

static struct {
  atomic_int calls;
  pmu_slow_t last;
  char words[128]; /* "METHOD PATH" of the batch's first request */
} seen;

static void on_slow(void *data, const pmu_slow_t *slow) {
  seen.last = *slow;
  if (slow->count)
    snprintf(seen.words, sizeof seen.words, "%.*s %.*s", (int)slow->requests[0]->method_len,
             slow->requests[0]->method, (int)slow->requests[0]->path_len, slow->requests[0]->path);
  atomic_fetch_add(&seen.calls, 1);
}

static void sleep_at_open(const pmu_conn_event_t *event) {
  if (event->type == PMU_CONN_EV_OPEN)
    t_sleep_ms(80);
}

static uint64_t slow_batches(const t_server_t *server) { return t_stats(server, -1).slow_batches; }

static void get(const t_server_t *server, const char *target) { t_get_ok(server, target); }

int main(void) {
  t_init("slow");
  pmu_config_t config;
  t_config_init(&config);
  t_watch_config(&config);
  config.handler = handler;
  T_ASSERT_INT_EQ(config.slow_handler_ms, 100); /* the default */

  t_case("a quick handler: nothing counted, nothing logged");
  t_server_t *server = t_server_start(&config);
  for (int i = 0; i < 20; i++)
    get(server, "/quick");
  T_ASSERT_INT_EQ(slow_batches(server), 0);
  T_ASSERT_INT_EQ(atomic_load(&t_watch.log_lines), 0);

  t_case("a handler blocking 150 ms: slow_batches 1 and a WARNING line");
  get(server, "/sleep?ms=150");
  T_ASSERT_INT_EQ(slow_batches(server), 1);
  T_WAIT_UNTIL(atomic_load(&t_watch.log_lines) == 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&t_watch.log_lines), 1);
  T_ASSERT_INT_EQ(atomic_load(&t_watch.last_level), PMU_LOG_WARNING);
  T_ASSERT_CONTAINS(t_watch.last_log, strlen(t_watch.last_log), "held ring thread 0 for 1");
  T_ASSERT_CONTAINS(t_watch.last_log, strlen(t_watch.last_log), "every connection");
  unsigned ms = 0;
  T_ASSERT(sscanf(strstr(t_watch.last_log, " for ") + 5, "%u", &ms) == 1);
  T_ASSERT_MSG(ms >= 140 && ms < 1000, "held %u ms", ms);

  t_case("a second slow call within 10 s: counted, not logged");
  get(server, "/sleep?ms=150");
  get(server, "/quick");
  T_ASSERT_INT_EQ(slow_batches(server), 2);
  T_ASSERT_INT_EQ(atomic_load(&t_watch.log_lines), 1);
  t_server_destroy(server);

  t_case("on_slow gets the batch, its requests readable, and the unreported count");
  t_config_init(&config);
  config.handler = handler;
  config.on_slow = on_slow;
  config.slow_handler_ms = 50;
  server = t_server_start(&config);
  get(server, "/sleep?ms=80");
  T_ASSERT_INT_EQ(atomic_load(&seen.calls), 1);
  T_ASSERT_INT_EQ(seen.last.kind, PMU_SLOW_REQUESTS);
  T_ASSERT_INT_EQ(seen.last.count, 1);
  T_ASSERT_INT_EQ(seen.last.unreported, 0);
  T_ASSERT_INT_EQ(seen.last.threshold, 50);
  T_ASSERT_INT_EQ(seen.last.thread, 0);
  T_ASSERT_MSG(seen.last.held_ms >= 70, "held %llu ms", (unsigned long long)seen.last.held_ms);
  T_ASSERT_STR_EQ(seen.words, "GET /sleep");
  get(server, "/sleep?ms=80");
  get(server, "/quick");
  T_ASSERT_INT_EQ(slow_batches(server), 2);
  T_ASSERT_INT_EQ(atomic_load(&seen.calls), 1);
  t_server_destroy(server);

  t_case("slow_handler_ms = 0: off");
  t_config_init(&config);
  t_watch_config(&config);
  config.handler = handler;
  config.slow_handler_ms = 0;
  int lines = atomic_load(&t_watch.log_lines);
  server = t_server_start(&config);
  get(server, "/sleep?ms=150");
  T_ASSERT_INT_EQ(slow_batches(server), 0);
  T_ASSERT_INT_EQ(atomic_load(&t_watch.log_lines), lines);
  t_server_destroy(server);

  t_case("a slow connection handler is counted too");
  t_cn_reset();
  t_cn.hook = NULL;
  t_config_init(&config);
  config.handler = handler;
  config.conn_handler = t_conn_events;
  config.on_slow = on_slow;
  config.slow_handler_ms = 50;
  atomic_store(&seen.calls, 0);
  server = t_server_start(&config);
  get(server, "/quick"); /* OPEN and CLOSE: quick */
  T_ASSERT_INT_EQ(slow_batches(server), 0);
  t_cn.hook = sleep_at_open;
  get(server, "/quick");
  T_WAIT_UNTIL(atomic_load(&seen.calls) == 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(slow_batches(server), 1);
  T_ASSERT_INT_EQ(seen.last.kind, PMU_SLOW_CONN_EVENTS);
  T_ASSERT(seen.last.requests == NULL && seen.last.count == 0);
  t_server_destroy(server);
  t_cn.hook = NULL;

  return t_done();
}
