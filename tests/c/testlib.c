/*
 * testlib.c: the test server's handler, the deferrer thread, and the raw
 * client used by every C test. See testlib.h for the contracts.
 */
#include "testlib.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- running a test program ------------------------------------------- */

static const char *program_name = "test";
static const char *current_case = NULL; /* points to case_name or is NULL */
static char case_name[256];
static int64_t current_case_start;
static unsigned cases_passed;
static unsigned cases_failed;
static bool current_case_failed;

bool t_str_eq(const char *a, const char *b) {
  if (!a || !b)
    return a == b;
  return strcmp(a, b) == 0;
}

const char *t_memmem(const char *hay, size_t hay_len, const char *needle) {
  return memmem(hay, hay_len, needle, strlen(needle));
}

int64_t t_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void t_sleep_ms(unsigned ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

void t_init(const char *program) {
  program_name = program;
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);

  pmu_probe_t probe;
  memset(&probe, 0, sizeof probe);
  int rc = pmu_probe(&probe);
  if (rc < 0 || !probe.available) {
    printf("SKIP %s: io_uring refused by the kernel (%d): %.*s\n", program, rc,
           (int)sizeof probe.message, probe.message);
    exit(T_EXIT_SKIP);
  }
}

static void finish_case(void) {
  if (current_case && !current_case_failed) {
    printf("ok - %s (%" PRId64 " ms)\n", current_case, t_now_ms() - current_case_start);
    cases_passed++;
  }
  current_case = NULL;
  current_case_failed = false;
}

void t_case_failed(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fflush(stdout);
  fprintf(stderr, "FAIL %s [%s]: ", program_name, current_case ? current_case : "-");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  fflush(stderr);
  va_end(ap);
  printf("not ok - %s\n", current_case ? current_case : "-");
  if (!current_case_failed)
    cases_failed++;
  current_case_failed = true;
}

void t_case(const char *name) {
  finish_case();
  snprintf(case_name, sizeof case_name, "%s", name); /* names may be built on the stack */
  current_case = case_name;
  current_case_start = t_now_ms();
  printf("# %s: %s\n", program_name, name);
}

int t_done(void) {
  finish_case();
  t_defer_drain();
  if (cases_failed) {
    printf("FAIL %s: %u case(s) failed, %u passed\n", program_name, cases_failed, cases_passed);
    return T_EXIT_FAIL;
  }
  printf("PASS %s: %u case(s)\n", program_name, cases_passed);
  return T_EXIT_PASS;
}

void t_skip(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("SKIP %s: ", program_name);
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  fflush(stdout);
  _exit(T_EXIT_SKIP);
}

void t_fail_at(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fflush(stdout);
  fprintf(stderr, "FAIL %s [%s] at %s:%d: ", program_name, current_case ? current_case : "-", file,
          line);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  printf("not ok - %s\n", current_case ? current_case : "-");
  fflush(stdout);
  fflush(stderr);
  /* _exit: the server threads may be mid-flight; leak checks would only add
   * noise to a failure that is already reported. */
  _exit(T_EXIT_FAIL);
}

void t_write_file(const char *path, const void *data, size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  T_ASSERT_MSG(fd >= 0, "cannot create %s: %s", path, strerror(errno));
  for (size_t done = 0; done < len;) {
    ssize_t n = write(fd, (const char *)data + done, len - done);
    T_ASSERT_MSG(n > 0, "writing %s: %s", path, n < 0 ? strerror(errno) : "wrote nothing");
    done += (size_t)n;
  }
  close(fd);
}

int t_count_fds(void) {
  DIR *dir = opendir("/proc/self/fd");
  if (!dir)
    return -1;
  int n = 0;
  struct dirent *entry;
  while ((entry = readdir(dir)) != NULL)
    if (entry->d_name[0] != '.')
      n++;
  closedir(dir);
  return n - 1; /* the directory stream's own fd */
}

size_t t_read_until_closed(int fd, char *buf, size_t cap) {
  size_t got = 0;
  int64_t until = t_now_ms() + T_EVENT_MS;
  while (t_now_ms() < until) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 200) != 1)
      continue;
    ssize_t n = recv(fd, buf + got, cap - got, 0);
    if (n <= 0)
      return got;
    got += (size_t)n;
  }
  T_FAIL("the server did not close");
}

bool t_raise_nofile(unsigned long want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
    return false;
  if (rl.rlim_cur >= want)
    return true;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want)
    return false;
  rl.rlim_cur = want;
  return setrlimit(RLIMIT_NOFILE, &rl) == 0;
}

/* ---- small growable string used to build bodies ------------------------ */

typedef struct strbuf {
  char *data;
  size_t len, cap;
} strbuf_t;

static void sb_reserve(strbuf_t *sb, size_t extra) {
  if (sb->len + extra + 1 <= sb->cap)
    return;
  size_t cap = sb->cap ? sb->cap : 256;
  while (cap < sb->len + extra + 1)
    cap *= 2;
  char *data = realloc(sb->data, cap);
  if (!data)
    abort();
  sb->data = data;
  sb->cap = cap;
}

static void sb_add(strbuf_t *sb, const void *bytes, size_t n) {
  sb_reserve(sb, n);
  if (n)
    memcpy(sb->data + sb->len, bytes, n);
  sb->len += n;
  sb->data[sb->len] = '\0';
}

static void sb_printf(strbuf_t *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf_t *sb, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  sb_reserve(sb, (size_t)n);
  va_start(ap, fmt);
  vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  sb->len += (size_t)n;
}

/* ---- the deferrer: answers requests from a thread the engine does not own */

typedef struct deferred {
  struct deferred *next;
  pmu_request_t *request;
  int64_t due_ms;
} deferred_t;

static struct {
  pthread_mutex_t lock;
  pthread_cond_t wake; /* the list or stop changed */
  pthread_cond_t idle; /* pending dropped */
  bool started, stop;
  pthread_t thread;
  deferred_t *head; /* sorted by due_ms, FIFO among equals */
  unsigned pending; /* queued plus being answered */
} deferrer = {.lock = PTHREAD_MUTEX_INITIALIZER,
              .wake = PTHREAD_COND_INITIALIZER,
              .idle = PTHREAD_COND_INITIALIZER};

static atomic_ulong big_releases;
static atomic_ulong big_releases_on_deferrer;
static atomic_ulong respond_einval;

unsigned long t_big_releases(void) { return atomic_load(&big_releases); }
unsigned long t_big_releases_on_deferrer(void) { return atomic_load(&big_releases_on_deferrer); }
unsigned long t_respond_einval(void) { return atomic_load(&respond_einval); }

static void respond_describe(pmu_request_t *request, const pmu_header_t *extra, size_t extra_count);
static void respond_big(pmu_request_t *request, size_t n);

/* Set on the deferrer thread: body_release must never run there. */
static _Thread_local bool on_deferrer;

static void *deferrer_main(void *arg) {
  (void)arg;
  on_deferrer = true;
  pthread_mutex_lock(&deferrer.lock);
  for (;;) {
    if (!deferrer.head) {
      if (deferrer.stop)
        break;
      pthread_cond_wait(&deferrer.wake, &deferrer.lock);
      continue;
    }
    int64_t wait = deferrer.head->due_ms - t_now_ms();
    if (wait > 0) {
      /* The condition variable runs on CLOCK_REALTIME: a short relative wait
       * is good enough; the loop re-checks the monotonic clock. */
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      if (wait > 50)
        wait = 50;
      ts.tv_nsec += (long)wait * 1000000L;
      ts.tv_sec += ts.tv_nsec / 1000000000L;
      ts.tv_nsec %= 1000000000L;
      pthread_cond_timedwait(&deferrer.wake, &deferrer.lock, &ts);
      continue;
    }
    deferred_t *item = deferrer.head;
    deferrer.head = item->next;
    pthread_mutex_unlock(&deferrer.lock);
    size_t big = t_query_ulong(item->request, "big", 0);
    if (big)
      respond_big(item->request, big);
    else
      respond_describe(item->request, NULL, 0);
    free(item);
    pthread_mutex_lock(&deferrer.lock);
    deferrer.pending--;
    pthread_cond_broadcast(&deferrer.idle);
  }
  pthread_mutex_unlock(&deferrer.lock);
  return NULL;
}

void t_defer(pmu_request_t *request, unsigned ms) {
  deferred_t *item = calloc(1, sizeof *item);
  if (!item)
    abort();
  item->request = request;
  item->due_ms = t_now_ms() + ms;
  pthread_mutex_lock(&deferrer.lock);
  if (!deferrer.started) {
    deferrer.stop = false;
    if (pthread_create(&deferrer.thread, NULL, deferrer_main, NULL) != 0)
      abort();
    deferrer.started = true;
  }
  deferred_t **at = &deferrer.head;
  while (*at && (*at)->due_ms <= item->due_ms)
    at = &(*at)->next;
  item->next = *at;
  *at = item;
  deferrer.pending++;
  pthread_cond_signal(&deferrer.wake);
  pthread_mutex_unlock(&deferrer.lock);
}

void t_defer_drain(void) {
  pthread_mutex_lock(&deferrer.lock);
  while (deferrer.pending > 0)
    pthread_cond_wait(&deferrer.idle, &deferrer.lock);
  bool started = deferrer.started;
  deferrer.stop = true;
  deferrer.started = false;
  pthread_cond_broadcast(&deferrer.wake);
  pthread_mutex_unlock(&deferrer.lock);
  if (started)
    pthread_join(deferrer.thread, NULL);
}

/* ---- the test handler --------------------------------------------------- */

unsigned long t_query_ulong(const pmu_request_t *request, const char *name,
                            unsigned long fallback) {
  size_t name_len = strlen(name);
  const char *q = request->query, *end = request->query + request->query_len;
  while (q < end) {
    const char *amp = memchr(q, '&', (size_t)(end - q));
    const char *stop = amp ? amp : end;
    if ((size_t)(stop - q) > name_len && memcmp(q, name, name_len) == 0 && q[name_len] == '=') {
      unsigned long v = 0;
      for (const char *p = q + name_len + 1; p < stop && isdigit((unsigned char)*p); p++)
        v = v * 10 + (unsigned long)(*p - '0');
      return v;
    }
    q = amp ? amp + 1 : end;
  }
  return fallback;
}

bool t_path_is(const pmu_request_t *request, const char *path) {
  size_t n = strlen(path);
  return request->path_len == n && memcmp(request->path, path, n) == 0;
}

/* The describing body of testlib.h. */
static void describe(const pmu_request_t *request, strbuf_t *sb) {
  sb_printf(sb, "method=%.*s\n", (int)request->method_len, request->method);
  sb_printf(sb, "target=%.*s\n", (int)request->target_len, request->target);
  sb_printf(sb, "path=%.*s\n", (int)request->path_len, request->path);
  sb_printf(sb, "query=%.*s\n", (int)request->query_len, request->query);
  sb_printf(sb, "version=%u.%u\n", request->http_major, request->http_minor);
  sb_printf(sb, "keep_alive=%u\n", request->keep_alive);
  sb_printf(sb, "head=%u\n", request->is_head);
  /* Looked up in capitals: pmu_request_header is case-insensitive. */
  const pmu_header_t *host = pmu_request_header(request, "HOST");
  if (host)
    sb_printf(sb, "host=%.*s\n", (int)host->value_len, host->value);
  else
    sb_printf(sb, "host=(none)\n");
  sb_printf(sb, "header_count=%zu\n", request->header_count);
  for (size_t i = 0; i < request->header_count; i++)
    sb_printf(sb, "header=%.*s: %.*s\n", (int)request->headers[i].name_len,
              request->headers[i].name, (int)request->headers[i].value_len,
              request->headers[i].value);
  sb_printf(sb, "body_len=%zu\nbody=", request->body_len);
  if (request->body_len)
    sb_add(sb, request->body, request->body_len);
}

/*
 * The headers every test response carries. `storage` holds their values and
 * must outlive the pmu_respond call (the engine copies headers there).
 */
typedef struct common_headers {
  char conn[24], thread[8], seq[24];
  pmu_header_t list[8];
  size_t count;
} common_headers_t;

static void common_headers_init(common_headers_t *ch, const pmu_request_t *request) {
  snprintf(ch->conn, sizeof ch->conn, "%" PRIu64, request->conn_id);
  snprintf(ch->thread, sizeof ch->thread, "%u", (unsigned)request->thread);
  snprintf(ch->seq, sizeof ch->seq, "%lu", (unsigned long)(uintptr_t)request->user);
  ch->list[0] = (pmu_header_t){"X-Conn", 6, ch->conn, strlen(ch->conn)};
  ch->list[1] = (pmu_header_t){"X-Thread", 8, ch->thread, strlen(ch->thread)};
  ch->list[2] = (pmu_header_t){"X-Seq", 5, ch->seq, strlen(ch->seq)};
  ch->list[3] = (pmu_header_t){"Content-Type", 12, "text/plain", 10};
  ch->count = 4;
}

static void common_headers_add(common_headers_t *ch, const pmu_header_t *extra,
                               size_t extra_count) {
  for (size_t i = 0; i < extra_count && ch->count < 8; i++)
    ch->list[ch->count++] = extra[i];
}

static void respond_describe(pmu_request_t *request, const pmu_header_t *extra,
                             size_t extra_count) {
  strbuf_t sb = {0};
  describe(request, &sb);
  common_headers_t ch;
  common_headers_init(&ch, request);
  common_headers_add(&ch, extra, extra_count);
  pmu_respond_simple(request, 200, ch.list, ch.count, sb.data, sb.len);
  free(sb.data);
}

static void big_release(void *ctx) {
  free(ctx);
  if (on_deferrer)
    atomic_fetch_add(&big_releases_on_deferrer, 1);
  atomic_fetch_add(&big_releases, 1);
}

static void respond_big(pmu_request_t *request, size_t n) {
  if (n > (size_t)256 << 20)
    n = (size_t)256 << 20;
  char *body = malloc(n ? n : 1);
  if (!body)
    abort();
  for (size_t i = 0; i < n; i++)
    body[i] = (char)('a' + i % 26);
  common_headers_t ch;
  common_headers_init(&ch, request);
  if (n >= 65536) {
    pmu_response_t response = {.status = 200,
                               .headers = ch.list,
                               .header_count = ch.count,
                               .body = body,
                               .body_len = n,
                               .body_release = big_release,
                               .body_ctx = body};
    pmu_respond(request, &response);
  } else {
    pmu_respond_simple(request, 200, ch.list, ch.count, body, n);
    free(body);
  }
}

static void respond_status(pmu_request_t *request) {
  int code = (int)t_query_ulong(request, "code", 200);
  char body[32];
  int len = snprintf(body, sizeof body, "status %d", code);
  if ((code >= 100 && code < 200) || code == 204 || code == 304)
    len = 0;
  common_headers_t ch;
  common_headers_init(&ch, request);
  if (pmu_respond_simple(request, code, ch.list, ch.count, body, (size_t)len) == -EINVAL)
    atomic_fetch_add(&respond_einval, 1);
}

void t_handle_request(t_server_t *server, pmu_request_t *request) {
  request->user = (void *)(uintptr_t)atomic_fetch_add(&server->seen, 1);
  atomic_fetch_or(&server->threads_seen, 1UL << (request->thread & 31));

  if (t_path_is(request, "/defer")) {
    t_defer(request, (unsigned)t_query_ulong(request, "ms", 0));
  } else if (t_path_is(request, "/big")) {
    respond_big(request, t_query_ulong(request, "n", 0));
  } else if (t_path_is(request, "/status")) {
    respond_status(request);
  } else if (t_path_is(request, "/echo")) {
    common_headers_t ch;
    common_headers_init(&ch, request);
    pmu_respond_simple(request, 200, ch.list, ch.count, request->body, request->body_len);
  } else if (t_path_is(request, "/close")) {
    static const pmu_header_t close_header = {"Connection", 10, "close", 5};
    respond_describe(request, &close_header, 1);
  } else if (t_path_is(request, "/framing")) {
    static const pmu_header_t framing[] = {
        {"Content-Length", 14, "999", 3},
        {"Transfer-Encoding", 17, "chunked", 7},
        {"Connection", 10, "keep-alive", 10},
        {"X-Kept", 6, "yes", 3},
    };
    respond_describe(request, framing, 4);
  } else if (t_path_is(request, "/server")) {
    static const pmu_header_t own[] = {
        {"Server", 6, "t-server", 8},
        {"Date", 4, "t-date", 6},
    };
    respond_describe(request, own, 2);
  } else {
    respond_describe(request, NULL, 0);
  }
}

void t_handler(void *handler_data, pmu_request_t *const *requests, size_t count) {
  t_server_t *server = handler_data;
  atomic_fetch_add(&server->batches, 1);
  unsigned long largest = atomic_load(&server->largest_batch);
  while (count > largest &&
         !atomic_compare_exchange_weak(&server->largest_batch, &largest, count)) {
  }
  for (size_t i = 0; i < count; i++)
    t_handle_request(server, requests[i]);
}

/* ---- the server under test --------------------------------------------- */

void t_config_init(pmu_config_t *config) {
  pmu_config_init(config);
  config->host = "127.0.0.1";
  config->port = 0;
  config->shutdown_timeout_ms = 3000;
  config->handler = t_handler;
  config->handler_data = NULL;
}

const t_ring_mode_t t_ring_modes[T_RING_MODES] = {
    {"DEFER_TASKRUN", 1, 0, 0},
    {"COOP_TASKRUN", 0, 0, 0},
    {"SQPOLL", 1, 1, 0},
    {"registered files", 1, 0, 1},
    {"SQPOLL and registered files", 1, 1, 1},
};

void t_config_ring_mode(pmu_config_t *config, const t_ring_mode_t *mode) {
  t_config_init(config);
  config->defer_taskrun = mode->defer_taskrun;
  if (mode->sqpoll) {
    config->sqpoll = 1;
    config->sqpoll_idle_ms = 50;
  }
  config->registered_files = mode->registered_files;
}

t_watch_t t_watch;

static void watch_thread_start(void *data, unsigned index) {
  (void)data;
  (void)index;
  if (pthread_getcpuclockid(pthread_self(), &t_watch.ring_clock) == 0)
    atomic_store(&t_watch.have_clock, 1);
}

static void watch_log(void *data, int level, const char *msg) {
  (void)data;
  snprintf(t_watch.last_log, sizeof t_watch.last_log, "%s", msg);
  atomic_store(&t_watch.last_level, level);
  atomic_fetch_add(&t_watch.log_lines, 1);
}

void t_watch_config(pmu_config_t *config) {
  config->on_thread_start = watch_thread_start;
  config->log = watch_log;
}

int64_t t_watch_cpu_ms(void) {
  T_WAIT_UNTIL(atomic_load(&t_watch.have_clock), T_EVENT_MS);
  T_ASSERT_MSG(atomic_load(&t_watch.have_clock), "on_thread_start never ran");
  struct timespec ts;
  T_ASSERT(clock_gettime(t_watch.ring_clock, &ts) == 0);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void t_expect_wait_times_out(t_server_t *server, int timeout_ms) {
  int64_t t0 = t_now_ms();
  T_ASSERT_INT_EQ(pmu_server_wait(server->pmu, timeout_ms), -ETIMEDOUT);
  int64_t took = t_now_ms() - t0;
  T_ASSERT_MSG(took >= timeout_ms - 10 && took < 2000, "wait(%d) took %lld ms", timeout_ms,
               (long long)took);
  t_get_ok(server, "/still-running");
}

int t_server_try_start(const pmu_config_t *config, t_server_t **out) {
  t_server_t *server = calloc(1, sizeof *server);
  if (!server)
    abort();
  server->config = *config;
  if (config->unix_path) {
    snprintf(server->unix_path, sizeof server->unix_path, "%s", config->unix_path);
    server->config.unix_path = server->unix_path;
    server->family = AF_UNIX;
  } else {
    snprintf(server->host, sizeof server->host, "%s", config->host ? config->host : "");
    server->config.host = server->host;
    server->family = strchr(server->host, ':') ? AF_INET6 : AF_INET;
  }
  if (!server->config.handler_data)
    server->config.handler_data = server;
  int rc = pmu_server_start(&server->config, &server->pmu);
  if (rc == 0)
    server->port = pmu_server_port(server->pmu);
  if (rc < 0 && !server->pmu) {
    free(server);
    server = NULL;
  }
  *out = server;
  return rc;
}

t_server_t *t_server_start_at(const char *file, int line, const pmu_config_t *config) {
  t_server_t *server = NULL;
  int rc = t_server_try_start(config, &server);
  if (rc < 0)
    t_fail_at(file, line, "pmu_server_start: %d (%s): %s", rc, strerror(-rc),
              server && server->pmu ? pmu_server_error(server->pmu) : "(no server)");
  if (server->family != AF_UNIX && server->port == 0)
    t_fail_at(file, line, "pmu_server_port returned 0 for a TCP server");
  return server;
}

void t_server_destroy(t_server_t *server) {
  if (!server)
    return;
  pmu_server_destroy(server->pmu);
  server->pmu = NULL;
  /* Requests the deferrer holds stay valid after destroy (pmu.h); answering
   * them releases them. Wait so nothing outlives the test. */
  t_defer_drain();
  free(server);
}

pmu_stats_t t_stats(const t_server_t *server, int thread) {
  pmu_stats_t stats;
  memset(&stats, 0xa5, sizeof stats);
  int rc = pmu_server_stats(server->pmu, thread, &stats);
  if (rc < 0)
    T_FAIL("pmu_server_stats(%d): %d", thread, rc);
  return stats;
}

/* ---- raw client -------------------------------------------------------- */

/* Fill *addr with the server's address; returns its length. */
static socklen_t server_address(const t_server_t *server, struct sockaddr_storage *addr) {
  memset(addr, 0, sizeof *addr);
  if (server->family == AF_UNIX) {
    struct sockaddr_un *un = (struct sockaddr_un *)addr;
    un->sun_family = AF_UNIX;
    snprintf(un->sun_path, sizeof un->sun_path, "%s", server->unix_path);
    return (socklen_t)sizeof *un;
  }
  if (server->family == AF_INET6) {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)addr;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(server->port);
    const char *host = strcmp(server->host, "::") == 0 ? "::1" : server->host;
    inet_pton(AF_INET6, host, &in6->sin6_addr);
    return (socklen_t)sizeof *in6;
  }
  struct sockaddr_in *in = (struct sockaddr_in *)addr;
  in->sin_family = AF_INET;
  in->sin_port = htons(server->port);
  const char *host = strcmp(server->host, "0.0.0.0") == 0 ? "127.0.0.1" : server->host;
  inet_pton(AF_INET, host, &in->sin_addr);
  return (socklen_t)sizeof *in;
}

/* Start a non-blocking connect. Returns the fd (connected or in progress) or
 * -errno. */
static int connect_start(const t_server_t *server) {
  struct sockaddr_storage addr;
  socklen_t addr_len = server_address(server, &addr);
  int fd = socket(server->family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return -errno;
  if (server->family != AF_UNIX) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  if (connect(fd, (struct sockaddr *)&addr, addr_len) < 0 && errno != EINPROGRESS &&
      errno != EAGAIN) {
    int err = -errno;
    close(fd);
    return err;
  }
  return fd;
}

int t_connect_fd(const t_server_t *server) {
  int fd = connect_start(server);
  if (fd < 0)
    return fd;
  struct pollfd pfd = {.fd = fd, .events = POLLOUT};
  int rc = poll(&pfd, 1, T_IO_TIMEOUT_MS);
  int err = 0;
  socklen_t err_len = sizeof err;
  if (rc <= 0)
    err = ETIMEDOUT;
  else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) < 0)
    err = errno;
  if (err) {
    close(fd);
    return -err;
  }
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

t_conn_t *t_conn_wrap(int fd) {
  t_conn_t *conn = calloc(1, sizeof *conn);
  if (!conn)
    abort();
  conn->fd = fd;
  return conn;
}

t_conn_t *t_connect_at(const char *file, int line, const t_server_t *server) {
  int fd = t_connect_fd(server);
  if (fd < 0)
    t_fail_at(file, line, "connect: %s", strerror(-fd));
  return t_conn_wrap(fd);
}

void t_conn_close(t_conn_t *conn) {
  if (!conn)
    return;
  if (conn->fd >= 0)
    close(conn->fd);
  free(conn->buf);
  free(conn);
}

void t_conn_abort(t_conn_t *conn) {
  if (!conn)
    return;
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(conn->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  t_conn_close(conn);
}

int t_send_try(t_conn_t *conn, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n = send(conn->fd, p, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

void t_send_at(const char *file, int line, t_conn_t *conn, const void *data, size_t len) {
  int rc = t_send_try(conn, data, len);
  if (rc < 0)
    t_fail_at(file, line, "send of %zu bytes: %s", len, strerror(-rc));
}

void t_send_pieces_at(const char *file, int line, t_conn_t *conn, const void *data, size_t len,
                      size_t piece, unsigned delay_ms) {
  const char *p = data;
  if (piece == 0)
    piece = 1;
  while (len > 0) {
    size_t n = len < piece ? len : piece;
    t_send_at(file, line, conn, p, n);
    p += n;
    len -= n;
    if (len > 0 && delay_ms)
      t_sleep_ms(delay_ms);
  }
}

int t_recv_some(t_conn_t *conn, int timeout_ms) {
  if (conn->eof)
    return 0;
  if (conn->error)
    return conn->error;
  if (conn->cap - conn->len < 65536) {
    size_t cap = conn->cap ? conn->cap * 2 : 131072;
    while (cap - conn->len < 65536)
      cap *= 2;
    char *buf = realloc(conn->buf, cap);
    if (!buf)
      abort();
    conn->buf = buf;
    conn->cap = cap;
  }
  struct pollfd pfd = {.fd = conn->fd, .events = POLLIN};
  int rc;
  do
    rc = poll(&pfd, 1, timeout_ms < 0 ? 0 : timeout_ms);
  while (rc < 0 && errno == EINTR);
  if (rc == 0)
    return -ETIMEDOUT;
  ssize_t n;
  do
    n = recv(conn->fd, conn->buf + conn->len, conn->cap - conn->len - 1, MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN)
      return -ETIMEDOUT;
    conn->error = -errno;
    return conn->error;
  }
  if (n == 0) {
    conn->eof = true;
    return 0;
  }
  conn->len += (size_t)n;
  conn->buf[conn->len] = '\0';
  return (int)n;
}

/* ---- response parsing --------------------------------------------------- */

void t_response_free(t_response_t *response) {
  if (!response)
    return;
  for (size_t i = 0; i < response->header_count; i++) {
    free(response->headers[i].name);
    free(response->headers[i].value);
  }
  free(response->headers);
  free(response->body);
  memset(response, 0, sizeof *response);
}

static char *dup_range(const char *p, size_t n) {
  char *s = malloc(n + 1);
  if (!s)
    abort();
  memcpy(s, p, n);
  s[n] = '\0';
  return s;
}

const char *t_header(const t_response_t *response, const char *name) {
  for (size_t i = 0; i < response->header_count; i++)
    if (strcasecmp(response->headers[i].name, name) == 0)
      return response->headers[i].value;
  return NULL;
}

size_t t_header_count_named(const t_response_t *response, const char *name) {
  size_t n = 0;
  for (size_t i = 0; i < response->header_count; i++)
    if (strcasecmp(response->headers[i].name, name) == 0)
      n++;
  return n;
}

/* Does a comma-separated header value list `token` (case-insensitive) as
 * its last element? */
static bool last_token_is(const char *value, const char *token) {
  const char *last = strrchr(value, ',');
  last = last ? last + 1 : value;
  while (*last == ' ' || *last == '\t')
    last++;
  size_t n = strlen(token);
  if (strncasecmp(last, token, n) != 0)
    return false;
  for (const char *p = last + n; *p; p++)
    if (*p != ' ' && *p != '\t')
      return false;
  return true;
}

/* Find "\r\n" in [p, end); NULL if absent. */
static const char *find_crlf(const char *p, const char *end) {
  while (p + 1 < end) {
    const char *cr = memchr(p, '\r', (size_t)(end - p - 1));
    if (!cr)
      return NULL;
    if (cr[1] == '\n')
      return cr;
    p = cr + 1;
  }
  return NULL;
}

/*
 * De-chunk the body that starts at p. Returns the bytes the chunked body
 * took (trailers included), 0 if incomplete, -EPROTO if malformed; the data
 * is appended to *body.
 */
static long parse_chunked(const char *p, const char *end, strbuf_t *body) {
  const char *start = p;
  for (;;) {
    const char *eol = find_crlf(p, end);
    if (!eol)
      return (end - p) > 1024 ? -EPROTO : 0;
    size_t size = 0;
    const char *q = p;
    if (q == eol || !isxdigit((unsigned char)*q))
      return -EPROTO;
    for (; q < eol && isxdigit((unsigned char)*q); q++) {
      if (size > ((size_t)1 << 40))
        return -EPROTO;
      size =
          size * 16 +
          (size_t)(isdigit((unsigned char)*q) ? *q - '0' : (tolower((unsigned char)*q) - 'a' + 10));
    }
    if (q < eol && *q != ';' && *q != ' ' && *q != '\t')
      return -EPROTO;
    p = eol + 2;
    if (size == 0) {
      /* trailers, then an empty line */
      for (;;) {
        eol = find_crlf(p, end);
        if (!eol)
          return 0;
        bool empty = eol == p;
        p = eol + 2;
        if (empty)
          return p - start;
      }
    }
    if ((size_t)(end - p) < size + 2)
      return 0;
    if (p[size] != '\r' || p[size + 1] != '\n')
      return -EPROTO;
    sb_add(body, p, size);
    p += size + 2;
  }
}

long t_parse_response(const char *buf, size_t len, bool head, bool eof, t_response_t *out) {
  memset(out, 0, sizeof *out);
  const char *end = buf + len;
  const char *head_end = memmem(buf, len, "\r\n\r\n", 4);
  if (!head_end)
    return len > 65536 ? -EPROTO : 0;

  /* Status line: HTTP/1.x SSS reason */
  const char *eol = find_crlf(buf, head_end + 2);
  if (eol - buf < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)buf[7]) ||
      buf[8] != ' ' || !isdigit((unsigned char)buf[9]) || !isdigit((unsigned char)buf[10]) ||
      !isdigit((unsigned char)buf[11]) || (eol - buf > 12 && buf[12] != ' '))
    return -EPROTO;
  out->minor = buf[7] - '0';
  out->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
  if (eol - buf > 13)
    snprintf(out->reason, sizeof out->reason, "%.*s", (int)(eol - buf - 13), buf + 13);

  /* Header lines */
  size_t cap = 16;
  out->headers = calloc(cap, sizeof *out->headers);
  if (!out->headers)
    abort();
  const char *p = eol + 2;
  while (p < head_end + 2) {
    eol = find_crlf(p, head_end + 4);
    if (eol == p)
      break;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (!colon || colon == p) {
      t_response_free(out);
      return -EPROTO;
    }
    const char *v = colon + 1, *ve = eol;
    while (v < ve && (*v == ' ' || *v == '\t'))
      v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
      ve--;
    if (out->header_count == cap) {
      cap *= 2;
      t_header_copy_t *h = realloc(out->headers, cap * sizeof *h);
      if (!h)
        abort();
      out->headers = h;
    }
    out->headers[out->header_count].name = dup_range(p, (size_t)(colon - p));
    out->headers[out->header_count].value = dup_range(v, (size_t)(ve - v));
    out->header_count++;
    p = eol + 2;
  }
  const char *body_start = head_end + 4;

  /* Framing, as a client must read it (RFC 9112 section 6.3). */
  const char *te = t_header(out, "Transfer-Encoding");
  const char *cl = t_header(out, "Content-Length");
  if (t_header_count_named(out, "Content-Length") > 1 || (te && cl)) {
    t_response_free(out);
    return -EPROTO;
  }
  if (cl) {
    char *cl_end;
    errno = 0;
    unsigned long long v = strtoull(cl, &cl_end, 10);
    if (errno || *cl_end || !isdigit((unsigned char)*cl)) {
      t_response_free(out);
      return -EPROTO;
    }
    out->has_content_length = true;
    out->content_length = (size_t)v;
  }
  bool no_body = head || out->status / 100 == 1 || out->status == 204 || out->status == 304;
  strbuf_t body = {0};
  size_t consumed;
  if (no_body) {
    consumed = (size_t)(body_start - buf);
  } else if (te) {
    if (!last_token_is(te, "chunked")) {
      /* A response body framed by the close. */
      if (!eof) {
        t_response_free(out);
        return 0;
      }
      sb_add(&body, body_start, (size_t)(end - body_start));
      consumed = len;
    } else {
      out->chunked = true;
      long n = parse_chunked(body_start, end, &body);
      if (n <= 0) {
        free(body.data);
        t_response_free(out);
        return n;
      }
      consumed = (size_t)(body_start - buf) + (size_t)n;
    }
  } else if (cl) {
    if ((size_t)(end - body_start) < out->content_length) {
      t_response_free(out);
      return 0;
    }
    sb_add(&body, body_start, out->content_length);
    consumed = (size_t)(body_start - buf) + out->content_length;
  } else {
    if (!eof) {
      t_response_free(out);
      return 0;
    }
    sb_add(&body, body_start, (size_t)(end - body_start));
    consumed = len;
  }
  if (!body.data)
    sb_add(&body, "", 0);
  out->body = body.data;
  out->body_len = body.len;
  out->wire_len = consumed;
  return (long)consumed;
}

int t_read_response(t_conn_t *conn, t_response_t *out, int timeout_ms, bool head) {
  int64_t deadline = t_now_ms() + timeout_ms;
  for (;;) {
    bool ended = conn->eof || conn->error;
    long n = t_parse_response(conn->buf ? conn->buf : "", conn->len, head, ended, out);
    if (n > 0) {
      memmove(conn->buf, conn->buf + n, conn->len - (size_t)n);
      conn->len -= (size_t)n;
      if (conn->buf)
        conn->buf[conn->len] = '\0';
      return 0;
    }
    if (n < 0)
      return -EPROTO;
    if (ended)
      return -ECONNRESET;
    int64_t left = deadline - t_now_ms();
    if (left <= 0)
      return -ETIMEDOUT;
    int rc = t_recv_some(conn, (int)left);
    if (rc == -ETIMEDOUT && t_now_ms() >= deadline)
      return -ETIMEDOUT;
  }
}

void t_expect_response_at(const char *file, int line, t_conn_t *conn, t_response_t *out,
                          int timeout_ms, bool head) {
  int rc = t_read_response(conn, out, timeout_ms, head);
  if (rc == -ETIMEDOUT)
    t_fail_at(file, line, "no complete response within %d ms (%zu bytes buffered: \"%.*s\")",
              timeout_ms, conn->len, (int)(conn->len > 300 ? 300 : conn->len),
              conn->buf ? conn->buf : "");
  if (rc == -ECONNRESET)
    t_fail_at(file, line, "connection ended (%s) before a complete response (%zu bytes: \"%.*s\")",
              conn->error ? strerror(-conn->error) : "EOF", conn->len,
              (int)(conn->len > 300 ? 300 : conn->len), conn->buf ? conn->buf : "");
  if (rc < 0)
    t_fail_at(file, line, "malformed response: \"%.*s\"", (int)(conn->len > 300 ? 300 : conn->len),
              conn->buf ? conn->buf : "");
}

bool t_describe_get(const t_response_t *response, const char *key, char *out, size_t out_size) {
  size_t key_len = strlen(key);
  const char *p = response->body, *end = response->body + response->body_len;
  while (p && p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    bool is_body = (size_t)(end - p) >= 5 && memcmp(p, "body=", 5) == 0;
    const char *line_end = (nl && !is_body) ? nl : end;
    if ((size_t)(line_end - p) > key_len && memcmp(p, key, key_len) == 0 && p[key_len] == '=') {
      size_t n = (size_t)(line_end - p) - key_len - 1;
      if (n >= out_size)
        n = out_size - 1;
      memcpy(out, p + key_len + 1, n);
      out[n] = '\0';
      return true;
    }
    if ((size_t)(line_end - p) == key_len + 1 && memcmp(p, key, key_len) == 0) {
      out[0] = '\0';
      return true;
    }
    if (is_body)
      break;
    p = line_end + 1;
  }
  return false;
}

void t_assert_field_at(const char *file, int line, const t_response_t *response, const char *key,
                       const char *expected) {
  char value[4096];
  if (!t_describe_get(response, key, value, sizeof value))
    t_fail_at(file, line, "field %s missing from body \"%.*s\"", key,
              (int)(response->body_len > 400 ? 400 : response->body_len),
              response->body ? response->body : "");
  if (strcmp(value, expected) != 0)
    t_fail_at(file, line, "field %s: got \"%s\", expected \"%s\"", key, value, expected);
}

bool t_wait_closed(t_conn_t *conn, int timeout_ms) {
  int64_t deadline = t_now_ms() + timeout_ms;
  for (;;) {
    if (conn->eof || conn->error)
      return true;
    int64_t left = deadline - t_now_ms();
    if (left < 0)
      left = 0;
    int rc = t_recv_some(conn, (int)left);
    if (rc == 0 || (rc < 0 && rc != -ETIMEDOUT))
      return true;
    if (rc == -ETIMEDOUT && t_now_ms() >= deadline)
      return false;
  }
}

void t_expect_closed_at(const char *file, int line, t_conn_t *conn, int timeout_ms) {
  if (!t_wait_closed(conn, timeout_ms))
    t_fail_at(file, line, "server kept the connection open for %d ms (expected a close)",
              timeout_ms);
  if (conn->len)
    t_fail_at(file, line, "%zu unexpected bytes before the close: \"%.*s\"", conn->len,
              (int)(conn->len > 300 ? 300 : conn->len), conn->buf);
}

void t_expect_error_close_at(const char *file, int line, const t_server_t *server,
                             const void *request, size_t len, int status) {
  t_conn_t *conn = t_connect_at(file, line, server);
  /* The server may answer and close before it has read everything: a send
   * error here is fine, the response is what counts. */
  (void)t_send_try(conn, request, len);
  t_response_t response;
  t_expect_response_at(file, line, conn, &response, T_IO_TIMEOUT_MS, false);
  if (response.status != status)
    t_fail_at(file, line, "expected status %d, got %d %s (request \"%.*s\")", status,
              response.status, response.reason, (int)(len > 200 ? 200 : len),
              (const char *)request);
  t_response_free(&response);
  if (!t_wait_closed(conn, 2000))
    t_fail_at(file, line, "connection still open 2 s after the %d response", status);
  t_conn_close(conn);
}

bool t_try_error_close(const t_server_t *server, const void *request, size_t len, int status,
                       char *why, size_t why_size) {
  int fd = t_connect_fd(server);
  if (fd < 0) {
    snprintf(why, why_size, "connect: %s", strerror(-fd));
    return false;
  }
  t_conn_t *conn = t_conn_wrap(fd);
  (void)t_send_try(conn, request, len);
  t_response_t response;
  int rc = t_read_response(conn, &response, T_IO_TIMEOUT_MS, false);
  bool ok = false;
  if (rc == -ETIMEDOUT)
    snprintf(why, why_size, "no response within %d ms", T_IO_TIMEOUT_MS);
  else if (rc == -ECONNRESET)
    snprintf(why, why_size, "connection closed (%s) without a response",
             conn->error ? strerror(-conn->error) : "EOF");
  else if (rc < 0)
    snprintf(why, why_size, "malformed response \"%.*s\"", (int)(conn->len > 200 ? 200 : conn->len),
             conn->buf ? conn->buf : "");
  else if (response.status != status)
    snprintf(why, why_size, "expected %d, got %d %s", status, response.status, response.reason);
  else if (!t_wait_closed(conn, 2000))
    snprintf(why, why_size, "%d sent but the connection stayed open", status);
  else
    ok = true;
  if (rc == 0)
    t_response_free(&response);
  t_conn_close(conn);
  return ok;
}

void t_get_ok_at(const char *file, int line, const t_server_t *server, const char *target) {
  t_conn_t *conn = t_connect_at(file, line, server);
  char request[512];
  int n = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", target);
  t_send_at(file, line, conn, request, (size_t)n);
  t_response_t response;
  t_expect_response_at(file, line, conn, &response, T_IO_TIMEOUT_MS, false);
  if (response.status != 200)
    t_fail_at(file, line, "GET %s: status %d", target, response.status);
  t_response_free(&response);
  t_conn_close(conn);
}

void t_expect_accepts_alternate_at(const char *file, int line, const t_server_t *server,
                                   unsigned per_round, unsigned least) {
  unsigned long long got0 = 0, got1 = 0;
  int64_t deadline = t_now_ms() + T_EVENT_MS;
  for (int round = 0; round < 20 && t_now_ms() < deadline; round++) {
    unsigned long long before0 = t_stats(server, 0).connections_accepted;
    unsigned long long before1 = t_stats(server, 1).connections_accepted;
    for (unsigned i = 0; i < per_round; i++)
      t_get_ok_at(file, line, server, "/turns");
    got0 = t_stats(server, 0).connections_accepted - before0;
    got1 = t_stats(server, 1).connections_accepted - before1;
    if (got0 + got1 != per_round)
      t_fail_at(file, line, "accepted %llu + %llu of %u", got0, got1, per_round);
    if (got0 >= least && got1 >= least)
      return;
    printf("# round %d: accepted %llu and %llu of %u, again\n", round, got0, got1, per_round);
  }
  t_fail_at(file, line, "accepted %llu and %llu of %u", got0, got1, per_round);
}

/* ---- table-driven exchanges --------------------------------------------- */

/* The request for a failure message: its first line, at most 80 bytes. */
static int request_line_len(const t_exchange_t *ex, size_t len) {
  size_t n = 0;
  while (n < len && n < 80 && ex->request[n] != '\r' && ex->request[n] != '\n')
    n++;
  return (int)n;
}

void t_exchange_at(const char *file, int line, t_conn_t *conn, const t_exchange_t *ex,
                   t_response_t *out) {
  size_t len = ex->len ? ex->len : strlen(ex->request);
  int shown = request_line_len(ex, len);
  if (ex->piece) {
    for (size_t off = 0; off < len; off += ex->piece) {
      size_t n = len - off < ex->piece ? len - off : ex->piece;
      if (t_send_try(conn, ex->request + off, n) < 0)
        break;
      t_sleep_ms(1); /* paces the client: each piece its own segment */
    }
  } else if (ex->after == T_CLOSE) {
    /* The server may answer and close before it has read everything: a send
     * error is fine, the response is what counts. */
    (void)t_send_try(conn, ex->request, len);
  } else {
    t_send_at(file, line, conn, ex->request, len);
  }
  t_response_t r;
  t_expect_response_at(file, line, conn, &r, T_IO_TIMEOUT_MS, ex->head);
  if (ex->status && r.status != ex->status && !(ex->status_alt && r.status == ex->status_alt))
    t_fail_at(file, line, "\"%.*s\": status %d %s, expected %d", shown, ex->request, r.status,
              r.reason, ex->status);
  for (size_t i = 0; i < sizeof ex->has / sizeof ex->has[0] && ex->has[i]; i++) {
    char name[128];
    const char *colon = strchr(ex->has[i], ':');
    size_t n = colon ? (size_t)(colon - ex->has[i]) : strlen(ex->has[i]);
    snprintf(name, sizeof name, "%.*s", (int)n, ex->has[i]);
    const char *value = t_header(&r, name);
    if (!value)
      t_fail_at(file, line, "\"%.*s\": no %s header in the %d response", shown, ex->request, name,
                r.status);
    if (colon) {
      const char *want = colon + 1;
      while (*want == ' ')
        want++;
      if (strcmp(value, want) != 0)
        t_fail_at(file, line, "\"%.*s\": %s: \"%s\", expected \"%s\"", shown, ex->request, name,
                  value, want);
    }
  }
  for (size_t i = 0; i < sizeof ex->lacks / sizeof ex->lacks[0] && ex->lacks[i]; i++)
    if (t_header(&r, ex->lacks[i]))
      t_fail_at(file, line, "\"%.*s\": unexpected %s: %s in the %d response", shown, ex->request,
                ex->lacks[i], t_header(&r, ex->lacks[i]), r.status);
  if (ex->body && (r.body_len != strlen(ex->body) || memcmp(r.body, ex->body, r.body_len)))
    t_fail_at(file, line, "\"%.*s\": body \"%.*s\" (%zu bytes), expected \"%s\"", shown,
              ex->request, (int)(r.body_len > 200 ? 200 : r.body_len), r.body, r.body_len,
              ex->body);
  if (ex->body_len && r.body_len != ex->body_len)
    t_fail_at(file, line, "\"%.*s\": body of %zu bytes, expected %zu", shown, ex->request,
              r.body_len, ex->body_len);
  if (ex->after == T_CLOSE) {
    if (!t_wait_closed(conn, 2000))
      t_fail_at(file, line, "\"%.*s\": connection still open 2 s after the %d response", shown,
                ex->request, r.status);
    if (conn->len)
      t_fail_at(file, line, "\"%.*s\": %zu unexpected bytes after the %d response: \"%.*s\"", shown,
                ex->request, conn->len, r.status, (int)(conn->len > 200 ? 200 : conn->len),
                conn->buf);
  } else if (ex->after == T_KEEP) {
    const char *connection = t_header(&r, "Connection");
    if (connection && strcasecmp(connection, "close") == 0)
      t_fail_at(file, line, "\"%.*s\": Connection: close, expected keep-alive", shown, ex->request);
    static const char next[] = "GET /t-next HTTP/1.1\r\nHost: t\r\n\r\n";
    if (t_send_try(conn, next, sizeof next - 1) < 0)
      t_fail_at(file, line, "\"%.*s\": connection closed after the %d response", shown, ex->request,
                r.status);
    t_response_t n;
    int rc = t_read_response(conn, &n, T_IO_TIMEOUT_MS, false);
    if (rc < 0)
      t_fail_at(file, line, "\"%.*s\": the next request on the connection got no answer (%s)",
                shown, ex->request, strerror(-rc));
    char path[64];
    if (n.status != 200 ||
        (t_describe_get(&n, "path", path, sizeof path) && strcmp(path, "/t-next") != 0))
      t_fail_at(file, line, "\"%.*s\": the next request got %d (path %s)", shown, ex->request,
                n.status, t_describe_get(&n, "path", path, sizeof path) ? path : "?");
    t_response_free(&n);
  }
  if (out)
    *out = r;
  else
    t_response_free(&r);
}

void t_exchanges_at(const char *file, int line, const t_server_t *server, const t_exchange_t *rows,
                    size_t count) {
  for (size_t i = 0; i < count; i++) {
    if (rows[i].name)
      t_case(rows[i].name);
    t_conn_t *conn = t_connect_at(file, line, server);
    t_exchange_at(file, line, conn, &rows[i], NULL);
    t_conn_close(conn);
  }
}

/* ---- many connections at once ------------------------------------------ */

typedef struct many_conn {
  int fd;
  bool connected, done, failed;
  const char *out;
  size_t out_len, out_off;
  t_conn_t in; /* receive buffer only; fd unused */
  size_t got;
  const char *why;
} many_conn_t;

size_t t_many(const t_server_t *server, size_t nconns, t_request_fn request_for,
              size_t responses_each, t_response_fn on_response, void *arg, int timeout_ms) {
  many_conn_t *conns = calloc(nconns, sizeof *conns);
  struct pollfd *pfds = calloc(nconns, sizeof *pfds);
  size_t *index = calloc(nconns, sizeof *index);
  if (!conns || !pfds || !index)
    abort();
  int64_t deadline = t_now_ms() + timeout_ms;
  size_t finished = 0, ok = 0;

  for (size_t i = 0; i < nconns; i++) {
    many_conn_t *c = &conns[i];
    c->out = request_for(i, &c->out_len, arg);
    c->fd = connect_start(server);
    if (c->fd < 0) {
      c->failed = true;
      c->why = "connect";
      fprintf(stderr, "t_many: connection %zu: connect: %s\n", i, strerror(-c->fd));
      finished++;
    }
  }

  while (finished < nconns && t_now_ms() < deadline) {
    size_t n = 0;
    for (size_t i = 0; i < nconns; i++) {
      many_conn_t *c = &conns[i];
      if (c->done || c->failed)
        continue;
      pfds[n].fd = c->fd;
      pfds[n].events = (short)(POLLIN | (!c->connected || c->out_off < c->out_len ? POLLOUT : 0));
      pfds[n].revents = 0;
      index[n++] = i;
    }
    int64_t left = deadline - t_now_ms();
    int rc = poll(pfds, n, (int)(left > 0 ? (left < 100 ? left : 100) : 0));
    if (rc < 0 && errno != EINTR)
      break;
    for (size_t k = 0; rc > 0 && k < n; k++) {
      if (!pfds[k].revents)
        continue;
      many_conn_t *c = &conns[index[k]];
      if (!c->connected) {
        int err = 0;
        socklen_t err_len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &err_len);
        if (err) {
          c->failed = true;
          c->why = strerror(err);
          finished++;
          continue;
        }
        c->connected = true;
      }
      if ((pfds[k].revents & POLLOUT) && c->out_off < c->out_len) {
        ssize_t w =
            send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0)
          c->out_off += (size_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EINTR) {
          c->failed = true;
          c->why = "send";
          finished++;
          continue;
        }
      }
      if (pfds[k].revents & (POLLIN | POLLHUP | POLLERR)) {
        c->in.fd = c->fd;
        int r = t_recv_some(&c->in, 0);
        for (;;) {
          t_response_t response;
          bool ended = c->in.eof || c->in.error;
          long used =
              t_parse_response(c->in.buf ? c->in.buf : "", c->in.len, false, ended, &response);
          if (used <= 0) {
            if (used < 0) {
              c->failed = true;
              c->why = "malformed response";
            }
            break;
          }
          memmove(c->in.buf, c->in.buf + used, c->in.len - (size_t)used);
          c->in.len -= (size_t)used;
          if (response.status >= 200) {
            if (on_response)
              on_response(index[k], c->got, &response, arg);
            c->got++;
          }
          t_response_free(&response);
          if (c->got == responses_each) {
            c->done = true;
            break;
          }
        }
        if (c->done) {
          ok++;
          finished++;
        } else if (c->failed) {
          finished++;
        } else if (r == 0 || (r < 0 && r != -ETIMEDOUT)) {
          c->failed = true;
          c->why = "closed before all responses";
          finished++;
        }
      }
    }
  }

  size_t reported = 0;
  for (size_t i = 0; i < nconns; i++) {
    many_conn_t *c = &conns[i];
    if (!c->done && reported < 10) {
      fprintf(stderr, "t_many: connection %zu: %s (sent %zu/%zu, got %zu/%zu responses)\n", i,
              c->why ? c->why : "timed out", c->out_off, c->out_len, c->got, responses_each);
      reported++;
    }
    if (c->fd >= 0)
      close(c->fd);
    free(c->in.buf);
  }
  free(conns);
  free(pfds);
  free(index);
  return ok;
}
