/*
 * test_driven: a driven server (config.driven): no ring thread; the thread
 * that started it runs the ring with pmu_server_step whenever
 * pmu_server_fd is readable or the time the step asked for has come, as an
 * asyncio loop hosts it. Handlers run on that thread; answers given on it
 * between steps, or from another thread, wake the descriptor; timers fire
 * with nothing else happening; a stop ends the steps and pmu_server_wait
 * returns elsewhere.
 */
#include "testlib.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static pthread_t driver;
static atomic_int handled_elsewhere; /* handler calls not on the driving thread */
static atomic_int handled;
static pmu_request_t *kept;         /* /keep: answered by the driver between steps */
static pmu_request_t *kept_foreign; /* /foreign: answered by the client thread */

static void answer(pmu_request_t *r, const char *body) {
  pmu_header_t h = {"Content-Type", 12, "text/plain", 10};
  T_ASSERT_INT_EQ(pmu_respond_simple(r, 200, &h, 1, body, strlen(body)), 0);
}

static void handler(void *data, pmu_request_t *const *requests, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    atomic_fetch_add(&handled, 1);
    if (!pthread_equal(pthread_self(), driver))
      atomic_fetch_add(&handled_elsewhere, 1);
    if (t_path_is(r, "/keep"))
      kept = r;
    else if (t_path_is(r, "/foreign"))
      __atomic_store_n(&kept_foreign, r, __ATOMIC_RELEASE);
    else
      answer(r, "inline");
  }
}

/* Step whenever the descriptor is readable or the asked time has come, until
 * `done()` holds or timeout_ms passes; with `between`, called after each step
 * (the event loop's own callbacks). Returns the last step's result. */
static int drive_capped(pmu_server_t *s, bool (*done)(void), void (*between)(void), int timeout_ms,
                        int cap_ms) {
  int64_t end = t_now_ms() + timeout_ms;
  int going = 1, next = 0;
  while (going && !done()) {
    int64_t left = end - t_now_ms();
    if (left <= 0)
      break;
    /* done() may come true with nothing for the server to do: look every
     * cap_ms (< 0: only when the server asks, or at the end). */
    int wait = next < 0 || next > left ? (int)left : next;
    if (cap_ms >= 0 && wait > cap_ms)
      wait = cap_ms;
    struct pollfd p = {.fd = pmu_server_fd(s), .events = POLLIN};
    if (p.fd >= 0)
      poll(&p, 1, wait);
    going = pmu_server_step(s, &next);
    T_ASSERT(going >= 0);
    if (between)
      between();
  }
  return going;
}

static int drive(pmu_server_t *s, bool (*done)(void), void (*between)(void), int timeout_ms) {
  return drive_capped(s, done, between, timeout_ms, 20);
}

/* ---- the client thread: one exchange at a time ---- */

typedef struct {
  uint16_t port;
  const char *request;
  char reply[4096];
  size_t reply_len;
  bool eof; /* the server closed the connection (within 5 s) */
  int64_t eof_at_ms;
  bool finished;
} exchange_t;

/* Send the request, read until the server closes (every exchange here ends
 * with Connection: close or the keep-alive timeout) or 5 s pass. */
static void *client_main(void *arg) {
  exchange_t *x = arg;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(x->port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      write(fd, x->request, strlen(x->request)) == (ssize_t)strlen(x->request)) {
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (x->reply_len < sizeof x->reply - 1) {
      ssize_t n = read(fd, x->reply + x->reply_len, sizeof x->reply - 1 - x->reply_len);
      if (n == 0) {
        x->eof = true;
        x->eof_at_ms = t_now_ms();
      }
      if (n <= 0)
        break;
      x->reply_len += (size_t)n;
      x->reply[x->reply_len] = 0;
    }
  }
  close(fd);
  __atomic_store_n(&x->finished, true, __ATOMIC_RELEASE);
  return NULL;
}

static exchange_t *current;
static bool exchange_done(void) { return __atomic_load_n(&current->finished, __ATOMIC_ACQUIRE); }

static void run_exchange(pmu_server_t *s, exchange_t *x, void (*between)(void)) {
  pthread_t t;
  current = x;
  x->port = pmu_server_port(s);
  T_ASSERT_INT_EQ(pthread_create(&t, NULL, client_main, x), 0);
  T_ASSERT_INT_EQ(drive(s, exchange_done, between, 10000), 1);
  pthread_join(t, NULL);
  T_ASSERT_MSG(x->finished, "the exchange did not finish");
}

static int count(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
    n++;
  return n;
}

static void answer_kept(void) {
  if (kept) {
    answer(kept, "kept");
    kept = NULL;
  }
}

static void *foreign_main(void *arg) {
  (void)arg;
  pmu_request_t *r;
  while (!(r = __atomic_load_n(&kept_foreign, __ATOMIC_ACQUIRE)))
    t_sleep_ms(1);
  t_sleep_ms(20);
  answer(r, "foreign");
  return NULL;
}

static pmu_server_t *stopping;
static void *stop_main(void *arg) {
  (void)arg;
  t_sleep_ms(50);
  pmu_server_stop(stopping);
  return NULL;
}

static int step_result = 99;
static void *step_elsewhere(void *arg) {
  int next;
  step_result = pmu_server_step(arg, &next);
  return NULL;
}

static bool never(void) { return false; }

/* config.on_self_wake: counted; a step is "scheduled" by the flag. */
static int self_wakes;
static bool step_wanted;
static void on_self_wake(void *data) {
  (void)data;
  T_ASSERT(pthread_equal(pthread_self(), driver));
  self_wakes++;
  step_wanted = true;
}

static pmu_server_t *waking;
static bool answered_kept_quietly;
/* Between steps: answer the kept request; the descriptor must stay quiet and
 * the callback come once; then one step sends it. */
static void answer_kept_quietly(void) {
  if (!kept)
    return;
  answer(kept, "kept");
  kept = NULL;
  T_ASSERT_INT_EQ(self_wakes, 1);
  T_ASSERT(step_wanted);
  struct pollfd p = {.fd = pmu_server_fd(waking), .events = POLLIN};
  T_ASSERT_MSG(poll(&p, 1, 0) == 0, "the descriptor was woken although on_self_wake is set");
  step_wanted = false;
  int next;
  T_ASSERT_INT_EQ(pmu_server_step(waking, &next), 1);
  answered_kept_quietly = true;
}

/* t_config_init, this test's handler, driven with `threads` rings. */
static void driven_config(pmu_config_t *c, unsigned threads) {
  t_config_init(c);
  c->handler = handler;
  c->driven = 1;
  c->threads = threads;
}

int main(void) {
  t_init("driven");
  driver = pthread_self();

  t_case("a driven server runs one ring: threads=2 is refused with words");
  {
    pmu_config_t c;
    driven_config(&c, 2);
    pmu_server_t *s = NULL;
    T_ASSERT_INT_EQ(pmu_server_start(&c, &s), -EINVAL);
    T_ASSERT(s != NULL && strstr(pmu_server_error(s), "threads must be 1"));
    pmu_server_destroy(s);
  }

  pmu_config_t c;
  driven_config(&c, 1);
  c.keepalive_timeout_ms = 300;
  pmu_server_t *s = NULL;
  T_ASSERT_INT_EQ(pmu_server_start(&c, &s), 0);
  T_ASSERT(pmu_server_fd(s) >= 0);

  t_case("three pipelined requests answered by handlers on the driving thread");
  {
    exchange_t x = {.request = "GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
                               "GET /b HTTP/1.1\r\nHost: t\r\n\r\n"
                               "GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"};
    run_exchange(s, &x, NULL);
    T_ASSERT_INT_EQ(count(x.reply, "HTTP/1.1 200"), 3);
    T_ASSERT_INT_EQ(count(x.reply, "inline"), 3);
    T_ASSERT_INT_EQ(atomic_load(&handled), 3);
    T_ASSERT_INT_EQ(atomic_load(&handled_elsewhere), 0);
  }

  t_case("an answer given on the driving thread between steps goes out");
  {
    exchange_t x = {.request = "GET /keep HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"};
    run_exchange(s, &x, answer_kept);
    T_ASSERT_INT_EQ(count(x.reply, "HTTP/1.1 200"), 1);
    T_ASSERT(strstr(x.reply, "kept") != NULL);
  }

  t_case("an answer from another thread wakes the descriptor");
  {
    pthread_t f;
    T_ASSERT_INT_EQ(pthread_create(&f, NULL, foreign_main, NULL), 0);
    exchange_t x = {.request = "GET /foreign HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"};
    run_exchange(s, &x, NULL);
    pthread_join(f, NULL);
    T_ASSERT(strstr(x.reply, "foreign") != NULL);
  }

  t_case("the keep-alive timer closes an idle connection: the step asks for the time");
  {
    /* The driver waits only as long as the step asked: without a timer in
     * next_ms it would sleep the whole 1.5 s and the close would come late. */
    exchange_t x = {.request = "GET /idle HTTP/1.1\r\nHost: t\r\n\r\n", .port = pmu_server_port(s)};
    current = &x;
    pthread_t t;
    int64_t t0 = t_now_ms();
    T_ASSERT_INT_EQ(pthread_create(&t, NULL, client_main, &x), 0);
    T_ASSERT_INT_EQ(drive_capped(s, never, NULL, 1500, -1), 1);
    pthread_join(t, NULL);
    T_ASSERT_MSG(x.eof, "the idle connection was not closed");
    T_ASSERT(strstr(x.reply, "inline") != NULL);
    int64_t took = x.eof_at_ms - t0;
    T_ASSERT_MSG(took >= 250 && took < 1000, "closed after %lld ms (keepalive 300)",
                 (long long)took);
  }

  t_case("a step from another thread is refused");
  {
    pthread_t o;
    T_ASSERT_INT_EQ(pthread_create(&o, NULL, step_elsewhere, s), 0);
    pthread_join(o, NULL);
    T_ASSERT_INT_EQ(step_result, -EINVAL);
  }

  t_case("a stop from another thread ends the steps; wait returns; the ring is gone");
  {
    pthread_t st;
    stopping = s;
    T_ASSERT_INT_EQ(pthread_create(&st, NULL, stop_main, NULL), 0);
    T_ASSERT_INT_EQ(drive(s, never, NULL, 5000), 0);
    pthread_join(st, NULL);
    T_ASSERT_INT_EQ(pmu_server_wait(s, 1000), 0);
    int next;
    T_ASSERT_INT_EQ(pmu_server_step(s, &next), 0);
    T_ASSERT_INT_EQ(pmu_server_fd(s), -1);
    pmu_server_destroy(s);
  }

  t_case("with on_self_wake, an answer between steps calls it once and wakes nothing");
  {
    pmu_config_t c3;
    driven_config(&c3, 1);
    c3.on_self_wake = on_self_wake;
    T_ASSERT_INT_EQ(pmu_server_start(&c3, &waking), 0);
    exchange_t x = {.request = "GET /keep HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"};
    run_exchange(waking, &x, answer_kept_quietly);
    T_ASSERT(answered_kept_quietly);
    T_ASSERT(strstr(x.reply, "kept") != NULL);
    /* A stop from this thread between steps takes the same way. */
    self_wakes = 0;
    pmu_server_stop(waking);
    T_ASSERT_INT_EQ(self_wakes, 1);
    T_ASSERT_INT_EQ(drive(waking, never, NULL, 5000), 0);
    T_ASSERT_INT_EQ(pmu_server_wait(waking, 1000), 0);
    pmu_server_destroy(waking);
  }

  t_case("a server that is not driven has no descriptor and no step");
  {
    pmu_config_t c2;
    t_config_init(&c2);
    c2.handler = handler;
    pmu_server_t *s2 = NULL;
    T_ASSERT_INT_EQ(pmu_server_start(&c2, &s2), 0);
    int next;
    T_ASSERT_INT_EQ(pmu_server_fd(s2), -1);
    T_ASSERT_INT_EQ(pmu_server_step(s2, &next), -EINVAL);
    pmu_server_destroy(s2);
  }
  return t_done();
}
