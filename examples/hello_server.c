/*
 * hello_server: the C baseline every benchmark compares against.
 *
 * Answers every request with {"message":"Hello, World!"} as application/json,
 * using nothing but the public header include/pmu/pmu.h. For the benchmark's
 * other workloads it also serves GET /16k and GET /1m (that many bytes of
 * 'x', application/octet-stream, sent without a copy) and POST /echo (the
 * body back). Any request that is a WebSocket handshake is accepted, on any
 * path, and every message is echoed back (text as text): the endpoint the
 * Autobahn|Testsuite and the WebSocket benchmarks drive; except on
 * /ws/broadcast, where every message goes to every connection of
 * /ws/broadcast, the sender included (framed once: pmu_ws_msg_new). On exit it prints
 * the engine's counters as one line, "PMU_STATS {json}", on stderr.
 *
 *   hello_server [--config] [--file PATH] [PORT [THREADS]]
 *
 * With --file, GET /file answers with that file, whole (pmu_respond_file on a dup of
 * a descriptor opened at start: the engine splices it or reads and sends it, by
 * file_splice_min); benchmarks/file_splice.sh measures the two ways with it.
 *
 * Every engine knob of PMU_CONFIG_KNOBS can be set from the environment for
 * tuning experiments, e.g. PMU_RING_ENTRIES=4096 PMU_SQPOLL=1
 * PMU_REGISTERED_FILES=1 (the field names of pmu_config_t, upper-cased,
 * prefixed PMU_); PORT and THREADS win over PMU_PORT and PMU_THREADS.
 * --config prints the knobs as "PMU_CONFIG {json}" on stdout and exits.
 *
 * Stops gracefully on SIGINT or SIGTERM.
 */
#include <pmu/pmu.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char body[] = "{\"message\":\"Hello, World!\"}";
static const pmu_header_t json_headers[] = {
    {"Content-Type", 12, "application/json", 16},
};

static const pmu_header_t octet_headers[] = {
    {"Content-Type", 12, "application/octet-stream", 24},
};
static char *x_bytes;    /* 1 MiB of 'x', shared by /16k and /1m */
static int file_fd = -1; /* --file */
static uint64_t file_size;

static int path_is(const pmu_request_t *r, const char *path) {
  size_t n = strlen(path);
  return r->path_len == n && memcmp(r->path, path, n) == 0;
}

static void no_release(void *ctx) { (void)ctx; }

static void answer(pmu_request_t *r) {
  if (path_is(r, "/16k") || path_is(r, "/1m")) {
    /* Static bytes: handed to the engine without a copy. */
    pmu_response_t resp = {.status = 200,
                           .headers = octet_headers,
                           .header_count = 1,
                           .body = x_bytes,
                           .body_len = path_is(r, "/1m") ? 1 << 20 : 16 << 10,
                           .body_release = no_release};
    pmu_respond(r, &resp);
  } else if (file_fd >= 0 && path_is(r, "/file")) {
    int fd = dup(file_fd); /* the engine owns (and closes) the piece's descriptor */
    if (fd < 0)
      pmu_respond_simple(r, 503, NULL, 0, "", 0);
    else
      pmu_respond_file(r, 200, octet_headers, 1, fd, 0, file_size, NULL, NULL);
  } else if (path_is(r, "/echo")) {
    pmu_respond_simple(r, 200, octet_headers, 1, r->body, r->body_len);
  } else {
    pmu_respond_simple(r, 200, json_headers, 1, body, sizeof body - 1);
  }
}

/* The connections of /ws/broadcast, shared by the ring threads. Each one's
 * user pointer (set once, at join, on its own thread) is its slot, whose index
 * changes under the lock: leaving is a swap with the last. */
struct member {
  pmu_ws_t *ws;
  size_t index;
};
static pthread_mutex_t members_lock = PTHREAD_MUTEX_INITIALIZER;
static struct member **members;
static size_t member_count, member_cap;

/* Accept a broadcast handshake into the set; 0, or -1 when out of memory
 * (the request then still to be answered). */
static int join(pmu_request_t *r) {
  struct member *m = malloc(sizeof *m);
  if (!m)
    return -1;
  pthread_mutex_lock(&members_lock);
  if (member_count == member_cap) {
    size_t cap = member_cap ? 2 * member_cap : 64;
    struct member **grown = realloc(members, cap * sizeof *grown);
    if (!grown) {
      pthread_mutex_unlock(&members_lock);
      free(m);
      return -1;
    }
    members = grown;
    member_cap = cap;
  }
  m->ws = pmu_ws_accept(r, NULL);
  if (m->ws) {
    m->index = member_count;
    members[member_count++] = m;
    pmu_ws_set_user(m->ws, m);
  }
  pthread_mutex_unlock(&members_lock);
  if (!m->ws)
    free(m); /* the engine answered the request */
  return 0;
}

static void leave(struct member *m) {
  pthread_mutex_lock(&members_lock);
  members[m->index] = members[--member_count];
  members[m->index]->index = m->index;
  pthread_mutex_unlock(&members_lock);
  free(m);
}

/* One message to every member: framed once, a reference queued on each. */
static void broadcast(const pmu_ws_event_t *e) {
  pmu_ws_msg_t *msg = pmu_ws_msg_new(e->opcode, e->data, e->len);
  if (!msg)
    return;
  pthread_mutex_lock(&members_lock);
  for (size_t i = 0; i < member_count; i++)
    pmu_ws_send_msg(members[i]->ws, msg); /* a closing member refuses it: fine */
  pthread_mutex_unlock(&members_lock);
  pmu_ws_msg_release(msg);
}

static void hello(void *data, pmu_request_t *const *requests, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    pmu_request_t *r = requests[i];
    if (!r->ws_upgrade)
      answer(r);
    else if (!path_is(r, "/ws/broadcast"))
      pmu_ws_accept(r, NULL); /* NULL: answered 500/503 by the engine */
    else if (join(r) < 0)
      pmu_respond_simple(r, 503, NULL, 0, NULL, 0);
  }
}

/* The WebSocket echo: each message goes back as it came (on /ws/broadcast, to
 * every member). */
static void ws_echo(void *data, const pmu_ws_event_t *events, size_t count) {
  (void)data;
  for (size_t i = 0; i < count; i++) {
    const pmu_ws_event_t *e = &events[i];
    struct member *member = pmu_ws_user(e->ws);
    if (e->type == PMU_WS_EV_MESSAGE && member) {
      broadcast(e);
    } else if (e->type == PMU_WS_EV_MESSAGE) {
      pmu_ws_send(e->ws, e->opcode, e->data, e->len, NULL, NULL);
    } else if (e->type == PMU_WS_EV_GONE) {
      if (member)
        leave(member);
      pmu_ws_release(e->ws);
    }
  }
}

/* One array counter as JSON, after *sep: status_classes as
 * {"1xx": n, ..., "5xx": n} and "6xx".."9xx" when some were sent (as the
 * Python binding's stats()), any other as a list. */
static void print_array(const char *name, const uint64_t *v, size_t n, const char **sep) {
  int classes = strcmp(name, "status_classes") == 0;
  fprintf(stderr, "%s\"%s\":%c", *sep, name, classes ? '{' : '[');
  const char *comma = "";
  for (size_t i = classes ? 1 : 0; i < n; i++) {
    if (classes && i > 5 && v[i] == 0)
      continue;
    if (classes)
      fprintf(stderr, "%s\"%zuxx\":%llu", comma, i, (unsigned long long)v[i]);
    else
      fprintf(stderr, "%s%llu", comma, (unsigned long long)v[i]);
    comma = ",";
  }
  fprintf(stderr, "%c", classes ? '}' : ']');
  *sep = ",";
}

/* "PMU_STATS {json}" on stderr: every counter of the engine's table. */
static void print_stats(const pmu_server_t *server) {
  pmu_stats_t s;
  pmu_server_stats(server, -1, &s);
  const char *sep = "";
  fprintf(stderr, "PMU_STATS {");
#define SCALAR(name, kind, doc)                                             \
  fprintf(stderr, "%s\"%s\":%llu", sep, #name, (unsigned long long)s.name); \
  sep = ",";
#define ARRAY(name, size, doc) print_array(#name, s.name, size, &sep);
  PMU_STATS_FIELDS(SCALAR, ARRAY)
#undef SCALAR
#undef ARRAY
  fprintf(stderr, "}\n");
}

/* Setting and printing a knob, by its type in the engine's table. */
static void set_STR(const char **field, const char *v) { *field = v; }
static void set_PORT(uint16_t *field, const char *v) { *field = (uint16_t)strtoul(v, NULL, 0); }
static void set_INT(int *field, const char *v) { *field = (int)strtol(v, NULL, 0); }
static void set_UINT(unsigned *field, const char *v) { *field = (unsigned)strtoul(v, NULL, 0); }
static void set_SIZE(size_t *field, const char *v) { *field = (size_t)strtoull(v, NULL, 0); }
#define set_BOOL set_INT
static void print_STR(const char *v) {
  if (v == NULL) {
    printf("null");
    return;
  }
  putchar('"');
  for (; *v; v++)
    printf(*v == '"' || *v == '\\' ? "\\%c" : (unsigned char)*v < 0x20 ? "\\u%04x" : "%c", *v);
  putchar('"');
}
static void print_PORT(uint16_t v) { printf("%u", v); }
static void print_INT(int v) { printf("%d", v); }
static void print_UINT(unsigned v) { printf("%u", v); }
static void print_SIZE(size_t v) { printf("%zu", v); }
#define print_BOOL print_INT

/* Every knob of the engine's table from its environment variable: the field
 * name upper-cased and prefixed PMU_ (PMU_RING_ENTRIES), when set and not
 * empty. Numbers are read as strtol reads them (0x.. works). */
static void knobs_from_env(pmu_config_t *c) {
  char name[64];
#define FROM_ENV(type, field, def, unit, min, max, doc) \
  {                                                     \
    snprintf(name, sizeof name, "PMU_%s", #field);      \
    for (char *p = name; *p; p++)                       \
      if (*p >= 'a' && *p <= 'z')                       \
        *p = (char)(*p - 'a' + 'A');                    \
    const char *v = getenv(name);                       \
    if (v && *v)                                        \
      set_##type(&c->field, v);                         \
  }
  PMU_CONFIG_KNOBS(FROM_ENV)
#undef FROM_ENV
}

/* "PMU_CONFIG {json}" on stdout: every knob as the server would start with. */
static void print_config(const pmu_config_t *c) {
  const char *sep = "";
  printf("PMU_CONFIG {");
#define PRINT(type, field, def, unit, min, max, doc) \
  printf("%s\"%s\":", sep, #field);                  \
  print_##type(c->field);                            \
  sep = ",";
  PMU_CONFIG_KNOBS(PRINT)
#undef PRINT
  printf("}\n");
}

int main(int argc, char **argv) {
  pmu_config_t config;
  pmu_config_init(&config);
  config.handler = hello;
  config.ws_handler = ws_echo;
  knobs_from_env(&config);
  int dump = argc > 1 && strcmp(argv[1], "--config") == 0;
  if (dump) {
    argc--;
    argv++;
  }
  if (argc > 2 && strcmp(argv[1], "--file") == 0) {
    file_fd = open(argv[2], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (file_fd < 0 || fstat(file_fd, &st) < 0 || !S_ISREG(st.st_mode)) {
      fprintf(stderr, "hello_server: --file %s: not a readable regular file\n", argv[2]);
      return 1;
    }
    file_size = (uint64_t)st.st_size;
    argc -= 2;
    argv += 2;
  }
  if (argc > 1)
    config.port = (uint16_t)atoi(argv[1]);
  if (argc > 2)
    config.threads = (unsigned)atoi(argv[2]);
  if (dump) {
    print_config(&config);
    return 0;
  }
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
  if (file_fd >= 0)
    close(file_fd);
  return 0;
}
