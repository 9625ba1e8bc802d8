/*
 * test_linger: config.busy with busy_linger_us/busy_linger_batch. While busy()
 * says the handler's queue is behind, an idle ring waits for
 * busy_linger_batch completions or busy_linger_us, not for the first: a
 * request on an idle server is answered a linger later, and counted in
 * lingers; with busy() saying no, or the knob at 0 (the default), or a batch
 * of one completion, it is answered at once; a timer due before the linger
 * ends still fires on time.
 */
#include "testlib.h"

#include <stdatomic.h>

static atomic_int behind;
static atomic_int asked;

static int busy(void *data) {
  (void)data;
  atomic_fetch_add(&asked, 1);
  return atomic_load(&behind);
}

/* Milliseconds a GET takes on a new connection. */
static int64_t get_ms(const t_server_t *server) {
  int64_t t0 = t_now_ms();
  t_get_ok(server, "/");
  return t_now_ms() - t0;
}

static uint64_t lingers(const t_server_t *server) { return t_stats(server, -1).lingers; }

static t_server_t *start(unsigned linger_us, unsigned batch, int with_busy) {
  pmu_config_t config;
  t_config_init(&config);
  config.threads = 1;
  config.busy_linger_us = linger_us;
  config.busy_linger_batch = batch;
  config.busy = with_busy ? busy : NULL;
  return t_server_start(&config);
}

int main(void) {
  t_init("linger");
  pmu_config_t defaults;
  pmu_config_init(&defaults);
  T_ASSERT_INT_EQ(defaults.busy_linger_us, 0); /* off unless asked for */
  T_ASSERT_INT_EQ(defaults.busy_linger_batch, 16);

  t_case("the knob at 0: busy() is not even asked");
  atomic_store(&behind, 1);
  t_server_t *server = start(0, 64, 1);
  int64_t ms = get_ms(server);
  T_ASSERT_MSG(ms < 200, "answered in %lld ms", (long long)ms);
  T_ASSERT_INT_EQ(lingers(server), 0);
  T_ASSERT_INT_EQ(atomic_load(&asked), 0);
  t_server_destroy(server);

  t_case("busy: an idle ring lingers 400 ms before it takes the request in");
  server = start(400 * 1000, 64, 1);
  uint64_t before = lingers(server);
  ms = get_ms(server);
  T_ASSERT_MSG(ms >= 300, "answered in %lld ms: the ring did not linger", (long long)ms);
  T_ASSERT_MSG(lingers(server) > before, "lingers %llu", (unsigned long long)lingers(server));

  t_case("not busy: the same server answers at once");
  atomic_store(&behind, 0);
  t_sleep_ms(500); /* a linger begun while it was busy ends */
  get_ms(server);
  before = lingers(server);
  ms = get_ms(server);
  T_ASSERT_MSG(ms < 200, "answered in %lld ms", (long long)ms);
  T_ASSERT_INT_EQ(lingers(server), before);
  T_ASSERT(atomic_load(&asked) > 0);
  t_server_destroy(server);

  t_case("busy, a batch of one completion: the first one ends the wait");
  atomic_store(&behind, 1);
  server = start(900 * 1000, 1, 1);
  ms = get_ms(server);
  T_ASSERT_MSG(ms < 450, "answered in %lld ms", (long long)ms);
  T_ASSERT(lingers(server) > 0);
  t_server_destroy(server);

  t_case("busy, no busy() callback: the knob alone does nothing");
  server = start(400 * 1000, 64, 0);
  ms = get_ms(server);
  T_ASSERT_MSG(ms < 200, "answered in %lld ms", (long long)ms);
  T_ASSERT_INT_EQ(lingers(server), 0);
  t_server_destroy(server);

  t_case("busy: a keep-alive timer due before the linger ends fires on time");
  {
    /* A's keep-alive timer is armed while the ring is not busy; then it is, and
     * B's arrival ends the ring's plain wait: the linger that follows (1 s) is
     * cut short by A's timer. (A completion that arms a timer during a linger,
     * a send's, waits for the linger's end: at most busy_linger_us.) */
    atomic_store(&behind, 0);
    pmu_config_t config;
    t_config_init(&config);
    config.threads = 1;
    config.busy_linger_us = 1000 * 1000;
    config.busy_linger_batch = 64;
    config.busy = busy;
    config.keepalive_timeout_ms = 600;
    server = t_server_start(&config);
    t_conn_t *a = t_connect(server);
    t_send_str(a, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    t_response_t r;
    T_ASSERT(t_read_response(a, &r, T_IO_TIMEOUT_MS, false) == 0);
    t_response_free(&r);
    int64_t t0 = t_now_ms();
    t_sleep_ms(100); /* the send's completion arms A's timer */
    atomic_store(&behind, 1);
    t_conn_t *b = t_connect(server);
    t_send_str(b, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    T_ASSERT(t_wait_closed(a, T_IO_TIMEOUT_MS));
    ms = t_now_ms() - t0;
    T_ASSERT_MSG(ms >= 500 && ms < 950, "A closed after %lld ms (keep-alive 600 ms, linger 1 s)",
                 (long long)ms);
    T_ASSERT(t_read_response(b, &r, T_IO_TIMEOUT_MS, false) == 0);
    t_response_free(&r);
    t_conn_close(a);
    t_conn_close(b);
    t_server_destroy(server);
  }
  return t_done();
}
