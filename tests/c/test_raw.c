/*
 * test_raw: raw byte streams (config.raw): every connection's bytes go to
 * conn_handler as DATA, pmu_conn_send writes. Echo with a dribbling client; a
 * client that reads late (1, then DRAIN) and one that never reads
 * (conn_send_limit closes it, ENOBUFS); pausing and resuming (what came
 * meanwhile arrives whole, in order); raw_idle_timeout_ms (ETIMEDOUT); the
 * client's half close (what was queued still arrives); a reset (ECONNRESET);
 * close after send and close now; sends from another thread with lent buffers
 * (each released once); a graceful stop with raw connections open; threads=2;
 * the start refused without conn_handler; the counters; no descriptor left.
 */
#include "connlib.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static atomic_ulong lent_released;
static char big[256 * 1024];

static void config(pmu_config_t *c) {
  t_config_init(c);
  c->raw = 1;
  c->handler = NULL; /* no HTTP: no request handler needed */
  c->conn_handler = t_conn_events;
}

/* A raw server whose pmu_conn_send high water and limit are these. */
static t_server_t *start_with(size_t high_water, size_t limit) {
  pmu_config_t cfg;
  config(&cfg);
  cfg.conn_send_high_water = high_water;
  cfg.conn_send_limit = limit;
  t_cn_new_server();
  return t_server_start(&cfg);
}

static void case_echo(t_server_t *s) {
  t_case("echo to a client that dribbles a byte at a time; DATA in order, counted");
  atomic_store(&t_cn.echo, 1);
  pmu_stats_t before = t_stats(s, -1);
  t_conn_t *c = t_connect(s);
  uint64_t id = t_cn_id_of(c);
  char msg[300];
  for (size_t i = 0; i < sizeof msg; i++)
    msg[i] = (char)('a' + i % 26);
  t_send_pieces(c, msg, sizeof msg, 1, 1);
  t_cn_read_exactly(c, sizeof msg);
  T_ASSERT(memcmp(c->buf, msg, sizeof msg) == 0);
  T_ASSERT(t_cn_count(id, PMU_CONN_EV_DATA) > 1);
  T_ASSERT(t_cn_find(id, PMU_CONN_EV_OPEN, 0) < t_cn_find(id, PMU_CONN_EV_DATA, 0));
  t_conn_close(c);
  T_ASSERT_INT_EQ(t_cn_close_err(id), 0);
  pmu_stats_t after = t_stats(s, -1);
  T_ASSERT_INT_EQ(after.raw_bytes_in - before.raw_bytes_in, sizeof msg);
  T_ASSERT_INT_EQ(after.raw_bytes_out - before.raw_bytes_out, sizeof msg);
  T_ASSERT_INT_EQ(after.raw_sends - before.raw_sends, t_cn_count(id, PMU_CONN_EV_DATA));
  T_ASSERT(after.conn_events - before.conn_events >= 2 + t_cn_count(id, PMU_CONN_EV_DATA));
  T_ASSERT_INT_EQ(after.requests - before.requests, 0);
  atomic_store(&t_cn.echo, 0);
}

static atomic_int flood_rc;
static atomic_ulong flood_sends;

/* Send chunks of big on OPEN until the high water (or the limit). */
static void flood_on_open(const pmu_conn_event_t *e) {
  if (e->type != PMU_CONN_EV_OPEN)
    return;
  for (int i = 0; i < 1000; i++) {
    int rc = pmu_conn_send(e->conn, big, sizeof big, NULL, NULL);
    atomic_store(&flood_rc, rc);
    if (rc != 0)
      return;
    atomic_fetch_add(&flood_sends, 1);
  }
}

/* A client whose connection was flooded at its OPEN (flood_on_open), reading nothing yet. */
static t_conn_t *connect_flooded(t_server_t *s, uint64_t *id) {
  atomic_store(&flood_sends, 0);
  t_cn.hook = flood_on_open;
  t_conn_t *c = t_connect(s);
  t_cn_small_rcvbuf(c);
  *id = t_cn_id_of(c);
  t_cn.hook = NULL;
  return c;
}

static void case_drain(void) {
  t_case("a client that reads late: the send over the high water returns 1, DRAIN follows");
  t_server_t *s = start_with(16 << 20, 0); /* more than the kernel's buffers take */
  uint64_t id;
  t_conn_t *c = connect_flooded(s, &id);
  T_ASSERT_INT_EQ(atomic_load(&flood_rc), 1);
  T_ASSERT_INT_EQ(atomic_load(&flood_sends), 64); /* 16 MiB is not over 16 MiB */
  pmu_conn_t *h = t_cn_handle(id);
  t_sleep_ms(50);
  T_ASSERT_INT_EQ(t_cn_count(id, PMU_CONN_EV_DRAIN), 0);
  T_ASSERT(pmu_conn_unsent(h) > 0);
  t_cn_read_exactly(c, 65 * sizeof big);
  T_WAIT_UNTIL(t_cn_count(id, PMU_CONN_EV_DRAIN) == 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(t_cn_count(id, PMU_CONN_EV_DRAIN), 1);
  T_ASSERT_INT_EQ(pmu_conn_unsent(h), 0);
  for (size_t i = 0; i < 65 * sizeof big; i++)
    T_ASSERT(c->buf[i] == 'b');
  t_conn_close(c);
  T_ASSERT_INT_EQ(t_cn_close_err(id), 0);
  t_server_destroy(s);
}

static void case_limit(void) {
  t_case("a client that never reads: conn_send_limit refuses the send and closes, ENOBUFS");
  t_server_t *s = start_with(1 << 30, 2 << 20);
  uint64_t id;
  t_conn_t *c = connect_flooded(s, &id);
  T_ASSERT_INT_EQ(t_cn_close_err(id), ENOBUFS);
  T_ASSERT_INT_EQ(atomic_load(&flood_rc), -ENOBUFS);
  T_ASSERT_INT_EQ(atomic_load(&flood_sends), 8);
  T_ASSERT(t_wait_closed(c, 5000));
  T_ASSERT(c->len < 8 * sizeof big); /* dropped, not sent */
  t_conn_close(c);
  t_server_destroy(s);
}

static void case_pause(t_server_t *s) {
  t_case("paused: no DATA; resumed: what came meanwhile, whole and in order");
  t_cn.hook = t_cn_pause_at_open;
  t_conn_t *c = t_connect(s);
  uint64_t id = t_cn_id_of(c);
  t_cn.hook = NULL;
  pthread_mutex_lock(&t_cn.lock);
  t_cn.data_len = 0;
  pthread_mutex_unlock(&t_cn.lock);
  char msg[20000];
  for (size_t i = 0; i < sizeof msg; i++)
    msg[i] = (char)('A' + i % 23);
  t_send(c, msg, sizeof msg);
  t_sleep_ms(200);
  T_ASSERT_INT_EQ(t_cn_count(id, PMU_CONN_EV_DATA), 0);
  T_ASSERT_INT_EQ(pmu_conn_pause_reading(t_cn_handle(id), 0), 0);
  T_WAIT_UNTIL(atomic_load(&t_cn.data_bytes) >= sizeof msg && t_cn.data_len >= sizeof msg,
               T_EVENT_MS);
  pthread_mutex_lock(&t_cn.lock);
  T_ASSERT_INT_EQ(t_cn.data_len, sizeof msg);
  T_ASSERT(memcmp(t_cn.data, msg, sizeof msg) == 0);
  pthread_mutex_unlock(&t_cn.lock);
  t_conn_close(c);
  T_ASSERT_INT_EQ(t_cn_close_err(id), 0);
}

static void case_idle(void) {
  t_case("raw_idle_timeout_ms: a silent connection is closed, CLOSE err ETIMEDOUT");
  pmu_config_t cfg;
  config(&cfg);
  cfg.raw_idle_timeout_ms = 800;
  t_cn_new_server();
  t_server_t *s = t_server_start(&cfg);
  atomic_store(&t_cn.echo, 1);
  t_conn_t *c = t_connect(s);
  uint64_t id = t_cn_id_of(c);
  int64_t t0 = t_now_ms();
  for (int i = 0; i < 6; i++) { /* traffic keeps it open past the timeout */
    t_sleep_ms(200);
    t_send_str(c, "x");
  }
  int64_t last = t_now_ms();
  t_cn_read_exactly(c, 6);
  T_ASSERT(t_cn_find(id, PMU_CONN_EV_CLOSE, 0) < 0);
  T_ASSERT(last - t0 >= 1200); /* longer than the timeout, and still open */
  T_ASSERT(t_wait_closed(c, 5000));
  T_ASSERT_INT_EQ(t_cn_close_err(id), ETIMEDOUT);
  T_ASSERT(t_now_ms() - last >= 700); /* closed for the silence after the last byte */
  atomic_store(&t_cn.echo, 0);
  t_conn_close(c);
  T_ASSERT(t_stats(s, -1).timeouts >= 1);
  t_server_destroy(s);
}

static void case_half_close(t_server_t *s) {
  t_case("the client's half close: what was queued still arrives, then CLOSE err 0");
  t_cn.hook = flood_on_open; /* 1.25 MiB queued at OPEN */
  atomic_store(&flood_sends, 0);
  t_conn_t *c = t_connect(s);
  uint64_t id = t_cn_id_of(c);
  t_cn.hook = NULL;
  shutdown(c->fd, SHUT_WR);
  t_sleep_ms(50);
  t_cn_read_exactly(c, 5 * sizeof big);
  T_ASSERT(t_wait_closed(c, 5000));
  T_ASSERT_INT_EQ(c->len, 5 * sizeof big);
  T_ASSERT_INT_EQ(t_cn_close_err(id), 0);
  t_conn_close(c);

  t_case("bytes and the half close in one pass: the handler's echo still goes out");
  atomic_store(&t_cn.echo, 1);
  for (int i = 0; i < 20; i++) {
    c = t_connect(s);
    id = t_cn_id_of(c);
    t_send_str(c, "hello, then nothing");
    shutdown(c->fd, SHUT_WR);
    T_ASSERT(t_wait_closed(c, 5000));
    T_ASSERT_INT_EQ(c->len, 19);
    T_ASSERT(memcmp(c->buf, "hello, then nothing", 19) == 0);
    T_ASSERT_INT_EQ(t_cn_close_err(id), 0);
    t_conn_close(c);
  }
  atomic_store(&t_cn.echo, 0);

  t_case("a reset: CLOSE err ECONNRESET");
  c = t_connect(s);
  id = t_cn_id_of(c);
  t_conn_abort(c);
  T_ASSERT_INT_EQ(t_cn_close_err(id), ECONNRESET);
}

static void close_on_data(const pmu_conn_event_t *e) {
  if (e->type != PMU_CONN_EV_DATA)
    return;
  int now = e->len && e->data[0] == 'N';
  for (int i = 0; i < 40; i++) /* 10 MiB: more than the socket buffers take */
    T_ASSERT(pmu_conn_send(e->conn, big, sizeof big, NULL, NULL) >= 0);
  T_ASSERT_INT_EQ(pmu_conn_close(e->conn, now ? PMU_CLOSE_NOW : PMU_CLOSE_AFTER_SEND), 0);
  T_ASSERT_INT_EQ(pmu_conn_close(e->conn, PMU_CLOSE_NOW), -EPIPE);
  T_ASSERT_INT_EQ(pmu_conn_send(e->conn, "x", 1, NULL, NULL), -EPIPE);
}

static void case_close(void) {
  t_case("close after send: every queued byte arrives, then the end");
  t_server_t *s = start_with(1 << 30, (size_t)32 << 20);
  t_cn.hook = close_on_data;
  t_conn_t *c = t_connect(s);
  uint64_t id = t_cn_id_of(c);
  t_send_str(c, "A");
  t_cn_read_exactly(c, 40 * sizeof big);
  T_ASSERT(t_wait_closed(c, 5000));
  T_ASSERT_INT_EQ(c->len, 40 * sizeof big);
  t_conn_close(c); /* the server lingers until the client's end */
  T_ASSERT_INT_EQ(t_cn_close_err(id), 0);

  t_case("close now: the unsent bytes are dropped");
  c = t_connect(s);
  t_cn_small_rcvbuf(c);
  id = t_cn_id_of(c);
  t_send_str(c, "N");
  T_ASSERT_INT_EQ(t_cn_close_err(id), 0); /* closed before the client read a byte */
  t_wait_closed(c, 5000);
  T_ASSERT_MSG(c->len < 40 * sizeof big, "got all %zu bytes", c->len);
  t_conn_close(c);
  t_cn.hook = NULL;
  t_server_destroy(s);
}

static void lent_release(void *ctx) {
  free(ctx);
  atomic_fetch_add(&lent_released, 1);
}

typedef struct {
  pmu_conn_t *conn;
  int n;
} sender_t;

/* Another thread sends n numbered lines, every other one lent, then closes after send. */
static void *sender(void *arg) {
  sender_t *a = arg;
  for (int i = 0; i < a->n; i++) {
    char line[32];
    int len = snprintf(line, sizeof line, "%06d\n", i);
    if (i % 2) {
      char *copy = malloc((size_t)len);
      memcpy(copy, line, (size_t)len);
      T_ASSERT(pmu_conn_send(a->conn, copy, (size_t)len, lent_release, copy) >= 0);
    } else {
      T_ASSERT(pmu_conn_send(a->conn, line, (size_t)len, NULL, NULL) >= 0);
    }
  }
  T_ASSERT_INT_EQ(pmu_conn_close(a->conn, PMU_CLOSE_AFTER_SEND), 0);
  return NULL;
}

static void case_thread(t_server_t *s) {
  t_case("sends from another thread arrive in order; each lent buffer released once");
  atomic_store(&lent_released, 0);
  t_conn_t *c = t_connect(s);
  uint64_t id = t_cn_id_of(c);
  sender_t a = {t_cn_handle(id), 2000};
  pthread_t th;
  T_ASSERT(pthread_create(&th, NULL, sender, &a) == 0);
  t_cn_read_exactly(c, 2000 * 7);
  pthread_join(th, NULL);
  T_ASSERT(t_wait_closed(c, 5000));
  T_ASSERT_INT_EQ(c->len, 2000 * 7);
  for (int i = 0; i < 2000; i++) {
    char line[8];
    snprintf(line, sizeof line, "%06d\n", i);
    T_ASSERT_MSG(memcmp(c->buf + 7 * i, line, 7) == 0, "line %d out of order", i);
  }
  t_conn_close(c); /* the server lingers until the client's end */
  T_ASSERT_INT_EQ(t_cn_close_err(id), 0);
  T_WAIT_UNTIL(atomic_load(&lent_released) == 1000, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&lent_released), 1000);
}

static void case_stop(void) {
  t_case("a graceful stop with raw connections open: queued bytes out, then closed, at once");
  pmu_config_t cfg;
  config(&cfg);
  cfg.shutdown_timeout_ms = 10000;
  t_cn_new_server();
  t_server_t *s = t_server_start(&cfg);
  t_conn_t *c[3];
  uint64_t id[3];
  for (int i = 0; i < 3; i++) {
    c[i] = t_connect(s);
    id[i] = t_cn_id_of(c[i]);
    T_ASSERT_INT_EQ(pmu_conn_send(t_cn_handle(id[i]), "bye", 3, NULL, NULL), 0);
  }
  int64_t t0 = t_now_ms();
  pmu_server_stop(s->pmu);
  T_ASSERT_INT_EQ(pmu_server_wait(s->pmu, 5000), 0);
  T_ASSERT(t_now_ms() - t0 < 1000); /* not the 10 s deadline, nor a linger */
  for (int i = 0; i < 3; i++) {
    T_ASSERT(t_wait_closed(c[i], 3000));
    T_ASSERT_INT_EQ(c[i]->len, 3);
    T_ASSERT(memcmp(c[i]->buf, "bye", 3) == 0);
    T_ASSERT_INT_EQ(t_cn_close_err(id[i]), 0);
    t_conn_close(c[i]);
  }
  t_server_destroy(s);
}

static void case_threads(void) {
  t_case("threads=2: connections on both rings, each echoed, each handle on its thread");
  pmu_config_t cfg;
  config(&cfg);
  cfg.threads = 2;
  t_cn_new_server();
  t_server_t *s = t_server_start(&cfg);
  atomic_store(&t_cn.echo, 1);
  unsigned seen = 0;
  for (int round = 0; round < 40 && seen != 3; round++) {
    t_conn_t *c = t_connect(s);
    uint64_t id = t_cn_id_of(c);
    t_send_str(c, "ping");
    t_cn_read_exactly(c, 4);
    T_ASSERT(memcmp(c->buf, "ping", 4) == 0);
    seen |= 1u << pmu_conn_thread(t_cn_handle(id));
    t_conn_close(c);
    t_cn_wait_close(id);
  }
  T_ASSERT_INT_EQ(seen, 3);
  atomic_store(&t_cn.echo, 0);
  t_server_destroy(s);
}

static void case_refused(void) {
  t_case("raw without conn_handler: the start fails with -EINVAL and says why");
  pmu_config_t cfg;
  config(&cfg);
  cfg.conn_handler = NULL;
  t_server_t *s = NULL;
  T_ASSERT_INT_EQ(t_server_try_start(&cfg, &s), -EINVAL);
  T_ASSERT(s && strstr(pmu_server_error(s->pmu), "conn_handler"));
  t_server_destroy(s);
}

int main(void) {
  t_init("test_raw");
  memset(big, 'b', sizeof big);
  int fds = t_count_fds();
  t_cn_reset();
  t_server_t *s = start_with((size_t)1 << 20, (size_t)32 << 20); /* the defaults */
  case_echo(s);
  case_pause(s);
  case_half_close(s);
  case_thread(s);
  t_server_destroy(s);
  case_drain();
  case_limit();
  case_idle();
  case_close();
  case_stop();
  case_threads();
  case_refused();

  t_cn_expect_clean(fds);
  return t_done();
}
