/*
 * server.c: the public lifecycle (config, start, stop, wait, destroy), the
 * listening sockets, and the counters.
 */
#include "internal.h"
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* The defaults of PMU_CONFIG_KNOBS, then the default log. */
void pmu_config_init(pmu_config_t *c) {
  memset(c, 0, sizeof *c);
#define SET_DEFAULT(type, name, def, unit, min, max, doc) c->name = (PMU_KNOB_CTYPE_##type)(def);
  PMU_CONFIG_KNOBS(SET_DEFAULT)
#undef SET_DEFAULT
  c->log = pmu_log_stderr;
}

void pmu_log_stderr(void *handler_data, int level, const char *msg) {
  (void)handler_data;
  (void)level;
  fprintf(stderr, "pymongoose_uring: %s\n", msg);
}

void pmu__set_error(pmu_server_t *server, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(server->error, sizeof server->error, fmt, ap);
  va_end(ap);
}

const char *pmu_server_error(const pmu_server_t *server) {
  return server && server->error[0] ? server->error : "no error";
}

uint16_t pmu_server_port(const pmu_server_t *server) { return server->port; }

unsigned pmu_server_threads(const pmu_server_t *server) { return server->nloops; }

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static int is_pow2(unsigned v) { return v && !(v & (v - 1)); }

/* Whether a knob's value is within [min, max], by the knob's type. */
static int in_range_STR(const char *v, long long min, unsigned long long max) {
  (void)v, (void)min, (void)max;
  return 1;
}
static int in_range_INT(int v, long long min, unsigned long long max) {
  return v >= min && (v < 0 || (unsigned long long)v <= max);
}
static int in_range_BOOL(int v, long long min, unsigned long long max) {
  (void)v, (void)min, (void)max;
  return 1; /* any nonzero value is on */
}
static int in_range_unsigned(unsigned long long v, long long min, unsigned long long max) {
  return (min <= 0 || v >= (unsigned long long)min) && v <= max;
}
#define in_range_PORT in_range_unsigned
#define in_range_UINT in_range_unsigned
#define in_range_SIZE in_range_unsigned

/* Check and complete a copied config. Returns 0 or -EINVAL with the error set. */
/* RFC 9110 token characters, the letters of a header name. */
static int is_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
    return 1;
  return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/*
 * Check config.extra_headers and keep it as the serializers put it on the
 * wire: each line "Name: value\r\n", the value without the blanks around it.
 * Lines are separated by CRLF (a bare LF is taken too); empty lines are
 * skipped, so a trailing CRLF is harmless. Returns 0, -EINVAL (a line without
 * a colon, a name that is not a token, a value with CR or NUL: the error names
 * the line) or -ENOMEM.
 */
static int extra_headers_resolve(pmu_server_t *s) {
  const char *text = s->cfg.extra_headers;
  s->cfg.extra_headers = NULL; /* the caller's string is not kept */
  if (!text || !text[0])
    return 0;
  size_t n = strlen(text);
  char *out = malloc(n + 3 * (n / 2 + 1) + 1); /* each line gains at most ": \r\n" */
  if (!out) {
    pmu__set_error(s, "out of memory");
    return -ENOMEM;
  }
  size_t len = 0;
  const char *line = text;
  while (*line) {
    const char *end = strchr(line, '\n');
    const char *next = end ? end + 1 : line + strlen(line);
    if (!end)
      end = next;
    if (end > line && end[-1] == '\r')
      end--;
    if (end == line) {
      line = next;
      continue;
    }
    const char *colon = memchr(line, ':', (size_t)(end - line));
    int ok = colon && colon > line;
    for (const char *q = line; ok && q < colon; q++)
      ok = is_tchar((unsigned char)*q);
    for (const char *q = colon ? colon + 1 : end; ok && q < end; q++)
      ok = *q != '\r';
    if (!ok) {
      free(out);
      pmu__set_error(s,
                     "extra_headers: \"%.*s\" is not a header line \"Name: value\" (the name "
                     "a token, the value without CR, LF or NUL)",
                     (int)(end - line > 200 ? 200 : end - line), line);
      return -EINVAL;
    }
    const char *v = colon + 1, *v_end = end;
    while (v < v_end && (*v == ' ' || *v == '\t'))
      v++;
    while (v_end > v && (v_end[-1] == ' ' || v_end[-1] == '\t'))
      v_end--;
    size_t name_len = (size_t)(colon - line);
    if (name_len == 6 && strncasecmp(line, "server", 6) == 0)
      s->extra_server = 1;
    if (name_len == 4 && strncasecmp(line, "date", 4) == 0)
      s->extra_date = 1;
    memcpy(out + len, line, name_len);
    len += name_len;
    memcpy(out + len, ": ", 2);
    len += 2;
    memcpy(out + len, v, (size_t)(v_end - v));
    len += (size_t)(v_end - v);
    memcpy(out + len, "\r\n", 2);
    len += 2;
    line = next;
  }
  s->extra_headers = out;
  s->extra_headers_len = len;
  s->cfg.extra_headers = out;
  return 0;
}

static int config_resolve(pmu_server_t *s) {
  pmu_config_t *c = &s->cfg;
  if (c->raw && !c->conn_handler) {
    pmu__set_error(s, "config.raw needs config.conn_handler (the bytes go to it)");
    return -EINVAL;
  }
  if (!c->handler && !c->raw) {
    pmu__set_error(s, "config.handler is required (unless config.raw)");
    return -EINVAL;
  }
  /* The ranges of PMU_CONFIG_KNOBS (a STR knob is not checked). */
#define CHECK_RANGE(type, name, def, unit, min, max, doc)                              \
  if (!in_range_##type(c->name, min, max)) {                                           \
    pmu__set_error(s, "%s must be %lld..%llu%s%s (got %llu)", #name, (long long)(min), \
                   (unsigned long long)(max), unit[0] ? " " : "", unit,                \
                   (unsigned long long)c->name);                                       \
    return -EINVAL;                                                                    \
  }
  PMU_CONFIG_KNOBS(CHECK_RANGE)
#undef CHECK_RANGE
  if (!is_pow2(c->buf_count)) {
    pmu__set_error(s, "buf_count must be a power of two up to 32768 (got %u)", c->buf_count);
    return -EINVAL;
  }
  if (c->cq_entries == 0)
    c->cq_entries = c->ring_entries * 8;
  if (c->batch_max == 0)
    c->batch_max = 1;
  if (c->max_pipelined == 0)
    c->max_pipelined = 1;
  if (c->max_connections == 0)
    c->max_connections = 1u << 20;
  if (c->backlog <= 0)
    c->backlog = 4096;
  if (c->max_header_bytes == 0)
    c->max_header_bytes = UINT32_MAX;
  if (c->max_headers == 0)
    c->max_headers = UINT32_MAX;
  if (c->max_url_bytes == 0)
    c->max_url_bytes = UINT32_MAX;
  if (c->max_body_bytes == 0)
    c->max_body_bytes = SIZE_MAX / 4;
  if (c->output_high_water == 0)
    c->output_high_water = SIZE_MAX / 4;
  return extra_headers_resolve(s);
}

/* Resolve host:port into *ss. Returns 0 or -errno with the error set. */
/* Listening on 0.0.0.0 or ::: each connection's local address is asked for. */
static int is_wildcard(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET)
    return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
  if (ss->ss_family == AF_INET6)
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
  return 0;
}

static uint16_t port_of(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET6)
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
  if (ss->ss_family == AF_INET)
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
  return 0;
}

static int resolve(pmu_server_t *s, struct sockaddr_storage *ss, socklen_t *len) {
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  char port[8];
  snprintf(port, sizeof port, "%u", s->cfg.port);
  const char *host = s->host && s->host[0] ? s->host : NULL;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0) {
    pmu__set_error(s, "cannot resolve host '%s': %s", host ? host : "", gai_strerror(rc));
    return -EINVAL;
  }
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  s->wildcard = is_wildcard(ss);
  return 0;
}

/* One TCP listener on the resolved address (port filled in once known). */
static int tcp_listener(pmu_server_t *s) {
  int fd = socket(s->bound.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
    int err = -errno;
    close(fd);
    return err;
  }
  if (bind(fd, (struct sockaddr *)&s->bound, s->bound_len) < 0 || listen(fd, s->cfg.backlog) < 0) {
    int err = -errno;
    close(fd);
    return err;
  }
  return fd;
}

static int unix_listener(pmu_server_t *s) {
  struct sockaddr_un un;
  memset(&un, 0, sizeof un);
  un.sun_family = AF_UNIX;
  if (strlen(s->unix_path) >= sizeof un.sun_path) {
    pmu__set_error(s, "unix socket path too long (max %zu bytes): %s", sizeof un.sun_path - 1,
                   s->unix_path);
    return -ENAMETOOLONG;
  }
  strcpy(un.sun_path, s->unix_path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  /* A stale socket file from an earlier run would make bind fail. */
  struct stat st;
  if (stat(s->unix_path, &st) == 0 && S_ISSOCK(st.st_mode))
    unlink(s->unix_path);
  if (bind(fd, (struct sockaddr *)&un, sizeof un) < 0 || listen(fd, s->cfg.backlog) < 0) {
    int err = -errno;
    close(fd);
    pmu__set_error(s, "cannot listen on unix socket %s: %s", s->unix_path, strerror(-err));
    return err;
  }
  memcpy(&s->bound, &un, sizeof un);
  s->bound_len = sizeof un;
  return fd;
}

/* One listener for every loop (a Unix socket, or a given listen_fd). */
static void share_listener(pmu_server_t *s, int fd) {
  s->shared_listen_fd = fd;
  for (unsigned i = 0; i < s->nloops; i++)
    s->loops[i].listen_fd = fd;
}

/* -errno of a failed call on config.listen_fd, with the error set. */
static int listen_fd_error(pmu_server_t *s, int fd) {
  int err = -errno;
  pmu__set_error(s, "listen_fd %d: %s", fd, strerror(-err));
  return err;
}

/* A listening socket the caller gave (config.listen_fd), shared by every
 * loop. The engine works on its own duplicate, which it closes at the end;
 * it never shuts the socket down, so other processes holding it (a
 * supervisor, the next worker) keep its queue of waiting connections. */
static int given_listener(pmu_server_t *s) {
  int fd = s->cfg.listen_fd, listening = 0, type = 0;
  socklen_t n = sizeof listening;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &n) < 0)
    return listen_fd_error(s, fd);
  n = sizeof type;
  if (!listening || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &n) < 0 || type != SOCK_STREAM) {
    pmu__set_error(s, "listen_fd %d is not a listening stream socket (call listen() on it)", fd);
    return -EINVAL;
  }
  s->bound_len = sizeof s->bound;
  if (getsockname(fd, (struct sockaddr *)&s->bound, &s->bound_len) < 0)
    return listen_fd_error(s, fd);
  if (s->bound.ss_family != AF_INET && s->bound.ss_family != AF_INET6 &&
      s->bound.ss_family != AF_UNIX) {
    pmu__set_error(s, "listen_fd %d is neither a TCP nor a Unix socket", fd);
    return -EINVAL;
  }
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0)
    return listen_fd_error(s, fd);
  if (s->bound.ss_family != AF_UNIX) {
    int one = 1; /* accepted sockets inherit it */
    setsockopt(dup, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  s->wildcard = is_wildcard(&s->bound);
  s->port = port_of(&s->bound);
  s->given_listener = 1;
  share_listener(s, dup);
  return 0;
}

/* Open every loop's listener. Returns 0 or -errno with the error set. */
static int open_listeners(pmu_server_t *s) {
  if (s->cfg.listen_fd >= 0)
    return given_listener(s);
  if (s->unix_path) {
    int fd = unix_listener(s);
    if (fd < 0)
      return fd;
    share_listener(s, fd);
    return 0;
  }
  int rc = resolve(s, &s->bound, &s->bound_len);
  if (rc < 0)
    return rc;
  for (unsigned i = 0; i < s->nloops; i++) {
    int fd = tcp_listener(s);
    if (fd < 0) {
      pmu__set_error(s, "cannot listen on %s:%u: %s", s->host, s->cfg.port, strerror(-fd));
      return fd;
    }
    s->loops[i].listen_fd = fd;
    if (i == 0) {
      /* With port 0 the kernel picked one; the other loops share it. */
      getsockname(fd, (struct sockaddr *)&s->bound, &s->bound_len);
      s->port = port_of(&s->bound);
    }
  }
  return 0;
}

/* Explain a ring that could not be created, naming the cause and the fix. */
static void explain_ring_error(pmu_server_t *s, int err) {
  switch (err) {
  case -EPERM:
    pmu__set_error(s, "io_uring is refused (EPERM): either kernel.io_uring_disabled is set "
                      "(fix: sysctl -w kernel.io_uring_disabled=0, or add this user to "
                      "kernel.io_uring_group) or a seccomp profile blocks io_uring_setup "
                      "(Docker's default does: run with --security-opt seccomp=unconfined or a "
                      "profile that allows io_uring_setup, io_uring_enter, io_uring_register)");
    break;
  case -ENOSYS:
    pmu__set_error(s, "io_uring is not available in this kernel (ENOSYS): it needs Linux 6.0 "
                      "or newer built with CONFIG_IO_URING=y");
    break;
  case -ENOMEM:
    pmu__set_error(s, "io_uring could not allocate its rings (ENOMEM): lower ring_entries or "
                      "buf_count, or raise RLIMIT_MEMLOCK (ulimit -l) on kernels before 5.12");
    break;
  case -EINVAL:
    pmu__set_error(s, "the kernel refused this io_uring setup (EINVAL): multishot receive and "
                      "provided-buffer rings need Linux 6.0 or newer; check pmu_probe()");
    break;
  default: pmu__set_error(s, "io_uring setup failed: %s", strerror(-err));
  }
}

static void server_free(pmu_server_t *s) {
  for (unsigned i = 0; i < s->nloops; i++) {
    if (s->loops[i].wake_fd >= 0)
      close(s->loops[i].wake_fd);
    pthread_mutex_destroy(&s->loops[i].qlock);
  }
  free(s->loops);
  free(s->host);
  free(s->unix_path);
  free(s->server_header);
  free(s->extra_headers);
  free(s->spool_dir);
  pmu__statics_free(s);
  pmu__tls_server_free(s);
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->cond);
  free(s);
}

void pmu__server_unref(pmu_server_t *s) {
  if (atomic_fetch_sub(&s->refs, 1) == 1)
    server_free(s);
}

static void close_listeners(pmu_server_t *s) {
  for (unsigned i = 0; i < s->nloops; i++) {
    if (s->loops[i].listen_fd >= 0 && s->loops[i].listen_fd != s->shared_listen_fd)
      close(s->loops[i].listen_fd);
    s->loops[i].listen_fd = -1;
  }
  if (s->shared_listen_fd >= 0) {
    close(s->shared_listen_fd);
    if (s->unix_path && !s->given_listener)
      unlink(s->unix_path);
    s->shared_listen_fd = -1;
  }
}

int pmu_server_start(const pmu_config_t *config, pmu_server_t **out) {
  *out = NULL;
  pmu_server_t *s = calloc(1, sizeof *s);
  if (!s)
    return -ENOMEM;
  *out = s;
  s->cfg = *config;
  s->host = dup_or_null(config->host);
  s->unix_path = config->unix_path && config->unix_path[0] ? strdup(config->unix_path) : NULL;
  s->server_header = dup_or_null(config->server_header);
  s->server_header_len = s->server_header ? strlen(s->server_header) : 0;
  s->cfg.host = s->host;
  s->cfg.unix_path = s->unix_path;
  s->cfg.server_header = s->server_header;
  const char *dir = config->body_spool_dir;
  if (!dir || !dir[0])
    dir = getenv("TMPDIR");
  s->spool_dir = strdup(dir && dir[0] ? dir : "/tmp");
  s->cfg.body_spool_dir = s->spool_dir;
  s->shared_listen_fd = -1;
  atomic_init(&s->refs, 1);
  atomic_init(&s->open_conns, 0);
  atomic_init(&s->stop_requested, 0);
  atomic_init(&s->next_conn_id, 1);
  pthread_mutex_init(&s->lock, NULL);
  /* Timed waits on cond (pmu_server_wait) count on the monotonic clock, so
   * that setting the wall clock cannot stretch or cut them. */
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&s->cond, &attr);
  pthread_condattr_destroy(&attr);
  s->joined = 1; /* nothing to join until threads exist */

  int rc = config_resolve(s);
  if (rc < 0)
    return rc;
  rc = pmu__statics_start(s);
  if (rc < 0)
    return rc;
  if (s->cfg.ssl_certfile || s->cfg.ssl_cert_per_conn) {
    rc = pmu__tls_server_init(s);
    if (rc < 0)
      return rc;
  }
  if (s->cfg.driven && s->cfg.threads != 1) {
    pmu__set_error(s,
                   "a driven server runs one ring, on the caller's thread: threads must be 1 "
                   "(it is %u)",
                   s->cfg.threads);
    return -EINVAL;
  }
  s->nloops = s->cfg.threads;
  s->loops = calloc(s->nloops, sizeof *s->loops);
  if (!s->loops) {
    s->nloops = 0;
    pmu__set_error(s, "out of memory");
    return -ENOMEM;
  }
  for (unsigned i = 0; i < s->nloops; i++) {
    pmu__loop_t *loop = &s->loops[i];
    loop->server = s;
    loop->index = i;
    loop->listen_fd = -1;
    loop->wake_fd = -1;
    pthread_mutex_init(&loop->qlock, NULL);
  }
  rc = open_listeners(s);
  if (rc < 0) {
    close_listeners(s);
    return rc;
  }

  /* Threads create their own rings (SINGLE_ISSUER binds a ring to its
   * creator) and report back; start() returns once all have. */
  s->joined = 0;
  unsigned created = 0;
  /* Counted running before they exist: a thread that fails at once counts
   * itself out (report_exited) before this thread could count it in. */
  s->loops_running = s->nloops;
  if (s->cfg.driven) {
    /* The one loop is set up here, on the caller's thread, which runs it
     * (pmu_server_step); a failure is reported as a thread's would be. */
    pmu__loop_drive_begin(&s->loops[0]);
    created = 1;
  }
  for (unsigned i = created; i < s->nloops; i++) {
    rc = -pthread_create(&s->loops[i].thread, NULL, pmu__loop_main, &s->loops[i]);
    if (rc < 0) {
      pmu__set_error(s, "cannot create worker thread: %s", strerror(-rc));
      break;
    }
    created++;
  }
  pthread_mutex_lock(&s->lock);
  s->loops_running -= s->nloops - created; /* those never created */
  while (s->loops_started < created)
    pthread_cond_wait(&s->cond, &s->lock);
  pthread_mutex_unlock(&s->lock);

  int first_err = rc < 0 ? rc : 0;
  for (unsigned i = 0; i < created && !first_err; i++) {
    if (s->loops[i].start_rc < 0) {
      first_err = s->loops[i].start_rc;
      explain_ring_error(s, first_err);
    }
  }
  if (first_err) {
    pmu_server_stop(s);
    for (unsigned i = 0; i < created && !s->cfg.driven; i++)
      pthread_join(s->loops[i].thread, NULL);
    s->joined = 1;
    close_listeners(s);
    return first_err;
  }
  return 0;
}

void pmu_server_stop(pmu_server_t *s) {
  if (!s || atomic_exchange(&s->stop_requested, 1))
    return;
  for (unsigned i = 0; i < s->nloops; i++)
    pmu__loop_wake(&s->loops[i]);
}

void pmu__deadline_after(int timeout_ms, struct timespec *out) {
  clock_gettime(CLOCK_MONOTONIC, out);
  out->tv_sec += timeout_ms / 1000;
  out->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (out->tv_nsec >= 1000000000L) {
    out->tv_sec++;
    out->tv_nsec -= 1000000000L;
  }
}

int pmu_server_wait(pmu_server_t *s, int timeout_ms) {
  pthread_mutex_lock(&s->lock);
  if (timeout_ms < 0) {
    while (s->loops_running > 0)
      pthread_cond_wait(&s->cond, &s->lock);
  } else {
    struct timespec ts;
    pmu__deadline_after(timeout_ms, &ts);
    while (s->loops_running > 0) {
      if (pthread_cond_timedwait(&s->cond, &s->lock, &ts) == ETIMEDOUT)
        break;
    }
  }
  int running = s->loops_running > 0;
  int join = !running && !s->joined;
  if (join)
    s->joined = 1;
  pthread_mutex_unlock(&s->lock);
  if (running)
    return -ETIMEDOUT;
  if (join) {
    for (unsigned i = 0; i < s->nloops && !s->cfg.driven; i++)
      pthread_join(s->loops[i].thread, NULL);
    close_listeners(s);
  }
  return 0;
}

void pmu_server_destroy(pmu_server_t *s) {
  if (!s)
    return;
  pmu_server_stop(s);
  pmu_server_wait(s, -1);
  close_listeners(s);
  pmu__server_unref(s);
}

int pmu_server_fd(const pmu_server_t *s) {
  if (!s->cfg.driven || s->nloops != 1 || !s->loops[0].ring_ready)
    return -1;
  return s->loops[0].ring.ring_fd;
}

int pmu_server_step(pmu_server_t *s, int *next_ms) {
  *next_ms = -1;
  if (!s->cfg.driven || s->nloops != 1)
    return -EINVAL;
  pmu__loop_t *loop = &s->loops[0];
  if (loop->drive_done || loop->start_rc < 0)
    return 0;
  if (!pthread_equal(loop->driver, pthread_self()))
    return -EINVAL;
  return pmu__loop_drive_step(loop, next_ms);
}

/* pmu_server_stats() reads pmu_stats_t as an array of uint64_t: it must be
 * exactly the words PMU_STATS_FIELDS declares, without padding. */
_Static_assert(sizeof(pmu_stats_t) == PMU_STATS_WORDS * sizeof(uint64_t),
               "pmu_stats_t is not an array of the uint64_t PMU_STATS_FIELDS declares");

int pmu_server_stats(const pmu_server_t *s, int thread, pmu_stats_t *out) {
  memset(out, 0, sizeof *out);
  if (thread >= (int)s->nloops || thread < -1)
    return -EINVAL;
  unsigned from = thread < 0 ? 0 : (unsigned)thread;
  unsigned to = thread < 0 ? s->nloops : (unsigned)thread + 1;
  const size_t n = sizeof(pmu_stats_t) / sizeof(uint64_t);
  uint64_t *dst = (uint64_t *)out;
  for (unsigned i = from; i < to; i++) {
    const uint64_t *src = (const uint64_t *)&s->loops[i].stats;
    for (size_t k = 0; k < n; k++)
      dst[k] += __atomic_load_n(&src[k], __ATOMIC_RELAXED);
  }
  return 0;
}

int pmu_server_ring_info(const pmu_server_t *s, unsigned thread, pmu_ring_info_t *out) {
  if (thread >= s->nloops)
    return -EINVAL;
  *out = s->loops[thread].info;
  return 0;
}
