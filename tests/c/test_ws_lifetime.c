/*
 * test_ws_lifetime: the two references of a pmu_ws_t. pmu_ws_release from
 * another thread before GONE (close 1001, then no more events), racing the
 * loop closing the connection, after pmu_server_destroy(); an accept whose
 * client already left (GONE 1006 is its first event). Run under ASan, a
 * use after free or a leak fails it.
 */
#include "wslib.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum mode { EARLY_RELEASE, LATE_ACCEPT, KEEP, RACE };
static atomic_int mode;
static pmu_ws_t *_Atomic kept;     /* KEEP: the handle, released by the test */
static pmu_ws_t *_Atomic released; /* released early: must get no event after */
static atomic_int events_after;    /* events for it after its release */
static atomic_int first_type = -1; /* LATE_ACCEPT: the first event's type */
static atomic_int first_code;      /* ... and its code */
static atomic_ulong gones, accepts;

static void *release_now(void *arg) {
  atomic_store(&released, (pmu_ws_t *)arg);
  pmu_ws_release(arg);
  return NULL;
}

static void *accept_late(void *arg) {
  t_sleep_ms(200); /* the client is gone by now */
  pmu_ws_t *ws = pmu_ws_accept(arg, NULL);
  T_ASSERT_MSG(ws != NULL, "a handle even when the client left");
  atomic_fetch_add(&accepts, 1);
  return NULL;
}

static void on_requests(void *data, pmu_request_t *const *requests, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    pthread_t th;
    if (atomic_load(&mode) == LATE_ACCEPT) {
      if (pthread_create(&th, NULL, accept_late, r) != 0)
        abort();
      pthread_detach(th);
      continue;
    }
    pmu_ws_t *ws = pmu_ws_accept(r, NULL);
    T_ASSERT(ws != NULL);
    atomic_fetch_add(&accepts, 1);
    if (atomic_load(&mode) == EARLY_RELEASE || atomic_load(&mode) == RACE) {
      if (pthread_create(&th, NULL, release_now, ws) != 0)
        abort();
      pthread_detach(th);
    } else if (atomic_load(&mode) == KEEP) {
      atomic_store(&kept, ws);
    }
  }
}

static void on_events(void *data, const pmu_ws_event_t *events, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    const pmu_ws_event_t *e = &events[i];
    if (e->ws == atomic_load(&released))
      atomic_fetch_add(&events_after, 1);
    if (atomic_load(&mode) == LATE_ACCEPT && atomic_load(&first_type) < 0) {
      atomic_store(&first_code, e->code);
      atomic_store(&first_type, e->type);
    }
    if (e->type == PMU_WS_EV_GONE) {
      atomic_fetch_add(&gones, 1);
      if (atomic_load(&mode) == LATE_ACCEPT)
        pmu_ws_release(e->ws);
    }
  }
}

static t_server_t *start(void) {
  pmu_config_t cfg;
  t_config_init(&cfg);
  cfg.handler = on_requests;
  cfg.ws_handler = on_events;
  cfg.ws_ping_interval_ms = 0;
  cfg.ws_close_timeout_ms = 500;
  return t_server_start(&cfg);
}

int main(void) {
  t_init("test_ws_lifetime");

  t_case("pmu_ws_release before GONE, from another thread: close 1001, then no events");
  atomic_store(&mode, EARLY_RELEASE);
  t_server_t *s = start();
  t_conn_t *c = t_ws_connect(s, "/");
  T_ASSERT_INT_EQ(t_ws_read_close(c, T_IO_TIMEOUT_MS, NULL), 1001);
  t_ws_send(c, 0x81, "ignored", 7); /* after the handle's release: no event */
  t_ws_send(c, 0x88, "\x03\xe9", 2);
  T_ASSERT(t_wait_closed(c, 3000));
  T_WAIT_UNTIL(t_stats(s, -1).ws_open == 0, T_EVENT_MS);
  T_ASSERT_INT_EQ(t_stats(s, -1).ws_open, 0);
  T_ASSERT_INT_EQ(atomic_load(&events_after), 0);
  T_ASSERT_INT_EQ(atomic_load(&gones), 0); /* not even GONE */
  t_conn_close(c);
  t_server_destroy(s);
  atomic_store(&released, NULL);

  t_case("the client left before the accept: a handle, whose first event is GONE 1006");
  atomic_store(&mode, LATE_ACCEPT);
  s = start();
  char req[512];
  size_t n = t_ws_request(req, sizeof req, "/", NULL);
  c = t_connect(s);
  t_send(c, req, n);
  t_sleep_ms(50);
  t_conn_abort(c);
  T_WAIT_UNTIL(atomic_load(&gones) == 1, T_EVENT_MS);
  T_ASSERT_INT_EQ(atomic_load(&accepts), 2);
  T_ASSERT_INT_EQ(atomic_load(&first_type), PMU_WS_EV_GONE);
  T_ASSERT_INT_EQ(atomic_load(&first_code), 1006);
  t_server_destroy(s);

  t_case("a handle released after pmu_server_destroy");
  atomic_store(&mode, KEEP);
  atomic_store(&gones, 0);
  s = start();
  c = t_ws_connect(s, "/");
  T_WAIT_UNTIL(atomic_load(&kept) != NULL, T_EVENT_MS);
  pmu_ws_t *ws = atomic_load(&kept);
  T_ASSERT(pmu_ws_send(ws, PMU_WS_TEXT, "hi", 2, NULL, NULL) == 0);
  t_ws_expect(c, PMU_WS_TEXT, "hi", 2);
  t_server_destroy(s); /* stop: close 1001, unanswered: cut at the deadline */
  T_ASSERT_INT_EQ(atomic_load(&gones), 1);
  T_ASSERT(pmu_ws_closing(ws));
  T_ASSERT_INT_EQ(pmu_ws_send(ws, PMU_WS_TEXT, "late", 4, NULL, NULL), -EPIPE);
  pmu_ws_release(ws); /* frees the handle and what is left of the server */
  t_conn_close(c);

  t_case("releases racing the loop's close (client resets at once), 200 times");
  atomic_store(&mode, RACE);
  s = start();
  for (int i = 0; i < 200; i++) {
    t_conn_t *rc = t_ws_connect(s, "/");
    t_conn_abort(rc);
  }
  T_WAIT_UNTIL(t_stats(s, -1).ws_open == 0, T_EVENT_MS);
  T_ASSERT_INT_EQ(t_stats(s, -1).ws_open, 0);
  T_ASSERT_INT_EQ(t_stats(s, -1).ws_accepted, 200);
  t_server_destroy(s);
  return t_done();
}
