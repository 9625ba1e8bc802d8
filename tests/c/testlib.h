/*
 * testlib.h: support for the C tests of the engine.
 *
 * Every test program starts a server in its own process (127.0.0.1 port 0 by
 * default, or ::1, or a Unix socket), talks to it over real sockets with the
 * raw client helpers below, and checks what comes back. Nothing here knows
 * how the engine works inside: it uses include/pmu/pmu.h only.
 *
 * The default handler answers every request with 200 and a text body that
 * describes the request, one "key=value" line each (see t_describe_get):
 *
 *   method=GET
 *   target=/a?b=1
 *   path=/a
 *   query=b=1
 *   version=1.1
 *   keep_alive=1
 *   head=0
 *   host=x                (pmu_request_header(request, "HOST"), or "(none)")
 *   header_count=2
 *   header=Host: x
 *   header=User-Agent: y
 *   body_len=5
 *   body=hello            (raw bytes, always the last line)
 *
 * Special paths:
 *   /defer?ms=N    answered by the deferrer thread (pmu_respond from a foreign
 *                  thread) N ms after the handler saw it, with the describing body;
 *                  with &big=N instead with a /big body of N bytes
 *   /big?n=N       N bytes 'a'..'z' repeating; bodies of 64 KiB and more are
 *                  handed over with body_release (counted by t_big_releases())
 *   /status?code=N that status; body "status N" (none for 1xx, 204, 304)
 *   /echo          the request body, unchanged
 *   /close         the describing body, with "Connection: close" from the handler
 *   /framing       the describing body, with handler headers Content-Length: 999,
 *                  Transfer-Encoding: chunked and Connection: keep-alive that the
 *                  engine must drop, and X-Kept: yes that it must keep
 *   /server        handler gives its own "Server: t-server" and "Date: t-date"
 * Every response carries X-Conn (conn_id), X-Thread (worker index) and
 * X-Seq (order in which the handler saw the request on this server).
 *
 * Failures print file:line and the current case, then _exit(1) (without
 * running leak checks: a failed test is failed already). Exit codes: 0 pass,
 * 1 fail, 77 skip (only when the kernel refuses io_uring: pmu_probe()).
 */
#ifndef PMU_TESTLIB_H
#define PMU_TESTLIB_H

#include <pmu/pmu.h>

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define T_EXIT_PASS 0
#define T_EXIT_FAIL 1
#define T_EXIT_SKIP 77

/* Timeouts used when a test has no reason to pick its own. */
#define T_IO_TIMEOUT_MS 5000

/* ---- running a test program ------------------------------------------- */

/* Start a test program: probe io_uring (exit 77 with the probe's message if the
 * kernel refuses it), ignore SIGPIPE, and remember the program's name. */
void t_init(const char *program);

/* Name the case now running; printed on failure and as "ok - name" when the
 * next case starts or t_done() is called. */
void t_case(const char *name);

/* Finish: wait for deferred answers still pending, print the summary, return
 * the exit code: 0, or 1 if t_case_failed was called. */
int t_done(void);

/* Record that the current case failed without stopping the program (for
 * table-driven tests whose rows are independent); t_done then returns 1. */
void t_case_failed(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Exit 77 with a reason (a resource the test needs is missing on this host). */
_Noreturn void t_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

_Noreturn void t_fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define T_FAIL(...) t_fail_at(__FILE__, __LINE__, __VA_ARGS__)

#define T_ASSERT(cond)                                              \
  do {                                                              \
    if (!(cond))                                                    \
      t_fail_at(__FILE__, __LINE__, "assertion failed: %s", #cond); \
  } while (0)

#define T_ASSERT_MSG(cond, ...)                   \
  do {                                            \
    if (!(cond))                                  \
      t_fail_at(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)

#define T_ASSERT_INT_EQ(actual, expected)                                                          \
  do {                                                                                             \
    long long t_a_ = (long long)(actual), t_e_ = (long long)(expected);                            \
    if (t_a_ != t_e_)                                                                              \
      t_fail_at(__FILE__, __LINE__, "%s == %s: got %lld, expected %lld", #actual, #expected, t_a_, \
                t_e_);                                                                             \
  } while (0)

/* Strings compared with NULL allowed (NULL equals only NULL). */
#define T_ASSERT_STR_EQ(actual, expected)                                                        \
  do {                                                                                           \
    const char *t_a_ = (actual), *t_e_ = (expected);                                             \
    if (!t_str_eq(t_a_, t_e_))                                                                   \
      t_fail_at(__FILE__, __LINE__, "%s == %s: got \"%s\", expected \"%s\"", #actual, #expected, \
                t_a_ ? t_a_ : "(null)", t_e_ ? t_e_ : "(null)");                                 \
  } while (0)

/* haystack (length given) contains the NUL-terminated needle. */
#define T_ASSERT_CONTAINS(hay, hay_len, needle)                                     \
  do {                                                                              \
    const char *t_h_ = (hay), *t_n_ = (needle);                                     \
    size_t t_hl_ = (hay_len);                                                       \
    if (!t_h_ || !t_memmem(t_h_, t_hl_, t_n_))                                      \
      t_fail_at(__FILE__, __LINE__, "\"%s\" not found in %s: \"%.*s\"", t_n_, #hay, \
                (int)(t_hl_ > 400 ? 400 : t_hl_), t_h_ ? t_h_ : "");                \
  } while (0)

bool t_str_eq(const char *a, const char *b);
const char *t_memmem(const char *hay, size_t hay_len, const char *needle);

/* Milliseconds on the monotonic clock; sleeping. */
int64_t t_now_ms(void);
void t_sleep_ms(unsigned ms);

/* How long a test waits for something that must happen (a counter reaching a
 * value, a thread starting, connections closing): long, because the wait ends
 * as soon as it happens and a loaded machine only makes it later. */
#define T_EVENT_MS 15000

/* Poll `cond` every 2 ms until it is true or timeout_ms has passed; the caller
 * then asserts cond (which says what was missing). A wait on an event, where a
 * fixed sleep would guess how long the event takes. */
#define T_WAIT_UNTIL(cond, timeout_ms)            \
  do {                                            \
    int64_t t_until_ = t_now_ms() + (timeout_ms); \
    while (!(cond) && t_now_ms() < t_until_)      \
      t_sleep_ms(2);                              \
  } while (0)

/* Create or truncate the file `path` (mode 0644) and write the `len` bytes of
 * `data` to it; the test fails if any of that fails. */
void t_write_file(const char *path, const void *data, size_t len);

/* Open file descriptors of this process (entries of /proc/self/fd). */
int t_count_fds(void);

/* Raise RLIMIT_NOFILE to at least `want`; false if the hard limit forbids. */
bool t_raise_nofile(unsigned long want);

/* Every byte the peer of `fd` sends until it closes (at most `cap`, and at most
 * T_EVENT_MS: the test fails if it has not closed by then); the count. */
size_t t_read_until_closed(int fd, char *buf, size_t cap);

/* Whether heap measures (mallinfo2, RSS) mean anything in this build: not under
 * ASan, whose allocator and quarantine keep their own books. */
#if defined(__SANITIZE_ADDRESS__)
#define T_HEAP_MEASURED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define T_HEAP_MEASURED 0
#endif
#endif
#ifndef T_HEAP_MEASURED
#define T_HEAP_MEASURED 1
#endif

/* ---- the server under test --------------------------------------------- */

typedef struct t_server {
  pmu_server_t *pmu;
  pmu_config_t config; /* as started (host/unix_path point into the fields below) */
  uint16_t port;       /* bound TCP port; 0 for a Unix socket */
  int family;          /* AF_INET, AF_INET6 or AF_UNIX */
  char host[64];
  char unix_path[108];
  atomic_ulong seen;    /* requests the handler saw */
  atomic_ulong batches; /* handler calls */
  atomic_ulong largest_batch;
  atomic_ulong threads_seen; /* bit i: worker i ran the handler */
} t_server_t;

/* pmu_config_init() plus what the tests want by default: 127.0.0.1, port 0,
 * the test handler, shutdown_timeout_ms 3000. */
void t_config_init(pmu_config_t *config);

/* The ring modes the config can ask for, one table for the tests that run
 * the same traffic in each: DEFER_TASKRUN (the default), COOP_TASKRUN,
 * SQPOLL, registered files, and SQPOLL with registered files. */
typedef struct t_ring_mode {
  const char *name;
  int defer_taskrun;
  int sqpoll;
  int registered_files;
} t_ring_mode_t;

#define T_RING_MODES 5
extern const t_ring_mode_t t_ring_modes[T_RING_MODES];

/* t_config_init, then the mode's fields (SQPOLL with sqpoll_idle_ms 50). */
void t_config_ring_mode(pmu_config_t *config, const t_ring_mode_t *mode);

/* What a test sees of a one-ring server through its hooks: the ring
 * thread's CPU clock and the engine's log lines. One per test program. */
typedef struct t_watch {
  clockid_t ring_clock; /* valid once have_clock */
  atomic_int have_clock;
  atomic_int log_lines;  /* lines logged so far */
  atomic_int last_level; /* PMU_LOG_* of the last line */
  char last_log[256];    /* the last line (read it after log_lines moved) */
} t_watch_t;

extern t_watch_t t_watch;

/* Point config->on_thread_start and config->log at t_watch's recorders. */
void t_watch_config(pmu_config_t *config);

/* The ring thread's CPU time in ms; waits up to T_EVENT_MS for its
 * on_thread_start (which may run just after pmu_server_start returns). */
int64_t t_watch_cpu_ms(void);

/* pmu_server_wait(timeout_ms) on a running server returns -ETIMEDOUT after
 * about that long (not sooner, not 2 s later), and the server serves on. */
void t_expect_wait_times_out(t_server_t *server, int timeout_ms);

/* Start a server with `config`; a NULL config->handler_data becomes the
 * t_server_t (what t_handler and handlers wrapping it expect). Fails the test
 * on error. Free with t_server_destroy. */
#define t_server_start(config) t_server_start_at(__FILE__, __LINE__, (config))
t_server_t *t_server_start_at(const char *file, int line, const pmu_config_t *config);

/* Like t_server_start but returns pmu_server_start's result; *out is set when
 * pmu_server_start set its server (destroy it either way). */
int t_server_try_start(const pmu_config_t *config, t_server_t **out);

/* pmu_server_destroy, then wait until every deferred answer of this server's
 * requests has been given (the deferrer may still hold some). */
void t_server_destroy(t_server_t *server);

/* The default handler (handler_data must be a t_server_t). Exposed so tests
 * can wrap it. */
void t_handler(void *handler_data, pmu_request_t *const *requests, size_t count);

/* Answer one request the way t_handler would (special paths included). */
void t_handle_request(t_server_t *server, pmu_request_t *request);

/* The unsigned value of `name=` in the request's query (its leading digits), or
 * `fallback` when the query has no such parameter. */
unsigned long t_query_ulong(const pmu_request_t *request, const char *name, unsigned long fallback);

/* Whether the request's path is exactly `path`. */
bool t_path_is(const pmu_request_t *request, const char *path);

/* Queue `request` to be answered with the describing body from the deferrer
 * thread `ms` milliseconds from now. */
void t_defer(pmu_request_t *request, unsigned ms);

/* Block until the deferrer has answered everything queued so far. */
void t_defer_drain(void);

/* body_release calls seen for /big bodies; pmu_respond results that were
 * -EINVAL (for /status?code=N outside 100..999). */
unsigned long t_big_releases(void);
unsigned long t_respond_einval(void);

/* body_release calls that ran on the deferrer thread (pmu.h says they run on
 * the request's worker thread, so this must stay 0). */
unsigned long t_big_releases_on_deferrer(void);

/* Sum of every counter of pmu_server_stats over threads, fails on error. */
pmu_stats_t t_stats(const t_server_t *server, int thread);

/* ---- raw client -------------------------------------------------------- */

/* One client connection with a receive buffer of bytes not yet parsed. */
typedef struct t_conn {
  int fd;
  char *buf;
  size_t len, cap;
  bool eof;  /* orderly close seen */
  int error; /* -errno from recv (e.g. -ECONNRESET), 0 if none */
} t_conn_t;

/* Connect to the server (blocking). Returns the fd or -errno. */
int t_connect_fd(const t_server_t *server);

/* Connect and wrap; fails the test on error. TCP_NODELAY is set. */
#define t_connect(server) t_connect_at(__FILE__, __LINE__, (server))
t_conn_t *t_connect_at(const char *file, int line, const t_server_t *server);

/* Wrap an fd already connected (takes ownership). */
t_conn_t *t_conn_wrap(int fd);

/* Close and free (NULL allowed). t_conn_abort closes with RST (SO_LINGER 0). */
void t_conn_close(t_conn_t *conn);
void t_conn_abort(t_conn_t *conn);

/* Send all bytes; fails the test on error. */
#define t_send(conn, data, len) t_send_at(__FILE__, __LINE__, (conn), (data), (len))
#define t_send_str(conn, str) t_send_at(__FILE__, __LINE__, (conn), (str), strlen(str))
void t_send_at(const char *file, int line, t_conn_t *conn, const void *data, size_t len);

/* Send all bytes; returns 0 or -errno (EPIPE, ECONNRESET: the server closed). */
int t_send_try(t_conn_t *conn, const void *data, size_t len);

/* Send in pieces of `piece` bytes with `delay_ms` between them. */
#define t_send_pieces(conn, data, len, piece, delay_ms) \
  t_send_pieces_at(__FILE__, __LINE__, (conn), (data), (len), (piece), (delay_ms))
void t_send_pieces_at(const char *file, int line, t_conn_t *conn, const void *data, size_t len,
                      size_t piece, unsigned delay_ms);

/* Receive once into conn->buf, waiting at most timeout_ms. Returns bytes read
 * (> 0), 0 at EOF, -ETIMEDOUT, or -errno (also stored in conn->error). */
int t_recv_some(t_conn_t *conn, int timeout_ms);

/* A parsed response; every string is NUL-terminated and owned. */
typedef struct t_header_copy {
  char *name;
  char *value;
} t_header_copy_t;

typedef struct t_response {
  int status;
  int minor; /* HTTP/1.minor */
  char reason[64];
  t_header_copy_t *headers;
  size_t header_count;
  char *body; /* NUL-terminated for convenience; body_len bytes */
  size_t body_len;
  bool chunked; /* framed with Transfer-Encoding: chunked */
  bool has_content_length;
  size_t content_length;
  size_t wire_len; /* bytes of this response on the wire */
} t_response_t;

/*
 * Parse one response from buf[0..len). `head`: the request was HEAD (no body
 * follows whatever the headers say). `eof`: no more bytes will come (a body
 * framed by the close ends here). Returns the bytes consumed (> 0) with *out
 * filled, 0 when more bytes are needed, or -EPROTO on malformed input.
 * 1xx, 204 and 304 have no body.
 */
long t_parse_response(const char *buf, size_t len, bool head, bool eof, t_response_t *out);

/* Read one response from conn (1xx responses are returned as such), waiting
 * at most timeout_ms in total. Returns 0, -ETIMEDOUT, -ECONNRESET when the
 * connection ended (EOF or reset) before a complete response, or -EPROTO. */
int t_read_response(t_conn_t *conn, t_response_t *out, int timeout_ms, bool head);

/* Same, but fails the test unless a response came. */
#define t_expect_response(conn, out) \
  t_expect_response_at(__FILE__, __LINE__, (conn), (out), T_IO_TIMEOUT_MS, false)
#define t_expect_head_response(conn, out) \
  t_expect_response_at(__FILE__, __LINE__, (conn), (out), T_IO_TIMEOUT_MS, true)
void t_expect_response_at(const char *file, int line, t_conn_t *conn, t_response_t *out,
                          int timeout_ms, bool head);

void t_response_free(t_response_t *response);

/* Value of the first header named `name` (case-insensitive), or NULL. */
const char *t_header(const t_response_t *response, const char *name);
size_t t_header_count_named(const t_response_t *response, const char *name);

/* Value of `key=` in a describing body, copied into out (NUL-terminated);
 * "body" yields the rest of the body. Returns false if absent. */
bool t_describe_get(const t_response_t *response, const char *key, char *out, size_t out_size);

/* Assert describing-body field `key` equals `expected`. */
#define T_ASSERT_FIELD(response, key, expected) \
  t_assert_field_at(__FILE__, __LINE__, (response), (key), (expected))
void t_assert_field_at(const char *file, int line, const t_response_t *response, const char *key,
                       const char *expected);

/*
 * Wait until the peer ends the connection (EOF or reset): returns true if it
 * did within timeout_ms, false if it stayed open. Bytes that arrive meanwhile
 * are kept in conn->buf (a test may check there were none).
 */
bool t_wait_closed(t_conn_t *conn, int timeout_ms);

/* Fail unless the server closes conn within timeout_ms and sent nothing more. */
#define t_expect_closed(conn, timeout_ms) \
  t_expect_closed_at(__FILE__, __LINE__, (conn), (timeout_ms))
void t_expect_closed_at(const char *file, int line, t_conn_t *conn, int timeout_ms);

/* Send `request`, read one response, expect `status`, then expect the server
 * to close the connection (the common shape of every error case). */
#define t_expect_error_close(server, request, len, status) \
  t_expect_error_close_at(__FILE__, __LINE__, (server), (request), (len), (status))
void t_expect_error_close_at(const char *file, int line, const t_server_t *server,
                             const void *request, size_t len, int status);

/* Like t_expect_error_close but returns false with the reason in `why`
 * instead of failing. */
bool t_try_error_close(const t_server_t *server, const void *request, size_t len, int status,
                       char *why, size_t why_size);

/* One request/response round trip on a fresh connection, checking 200. */
#define t_get_ok(server, target) t_get_ok_at(__FILE__, __LINE__, (server), (target))
void t_get_ok_at(const char *file, int line, const t_server_t *server, const char *target);

/*
 * Make connections one after another (a GET each, 200 expected), `per_round`
 * a round, until a round in which each of the server's first two threads
 * accepted at least `least` of them. A thread kept off the CPU (a loaded
 * machine) cannot re-arm its accept in time and the other takes the
 * connections meanwhile, so a skewed round is tried again, up to 20 rounds or
 * 15 s; loops that do not take turns fail every round. Fails the test with
 * the last round's counts.
 */
#define t_expect_accepts_alternate(server, per_round, least) \
  t_expect_accepts_alternate_at(__FILE__, __LINE__, (server), (per_round), (least))
void t_expect_accepts_alternate_at(const char *file, int line, const t_server_t *server,
                                   unsigned per_round, unsigned least);

/* ---- table-driven exchanges --------------------------------------------- */

/* What happens to the connection after the response (t_exchange_t.after). */
enum {
  T_ANY = 0, /* not checked */
  T_KEEP,    /* no "Connection: close", and the next request on it is answered */
  T_CLOSE,   /* the server closes it within 2 s and sends nothing more */
};

/*
 * One request and what must come back: a row of a table-driven test, so a new
 * case is one line. Unset fields are not checked.
 *
 *   {"name", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", .status = 200, .after = T_KEEP,
 *    .has = {"X-Kept: yes", "Date"}, .lacks = {"Transfer-Encoding"}}
 */
typedef struct t_exchange {
  const char *name;     /* case name (t_case) when run by t_exchanges; may be NULL */
  const char *request;  /* bytes sent */
  size_t len;           /* 0: strlen(request) */
  int status;           /* expected status (0: not checked) */
  int status_alt;       /* a second acceptable status (0: none) */
  const char *has[6];   /* headers present: "Name" (any value) or "Name: value" (exact) */
  const char *lacks[6]; /* header names absent */
  const char *body;     /* exact body (NULL: not checked) */
  size_t body_len;      /* exact body length (0: not checked; use .body = "" for none) */
  int after;            /* T_ANY, T_KEEP or T_CLOSE */
  bool head;            /* the request is HEAD: the response has no body */
  size_t piece;         /* > 0: sent in pieces of this many bytes, 1 ms apart; a send
                           error (the server answered early and closed) ends sending */
} t_exchange_t;

/*
 * Send ex->request on conn, read one response (interim 1xx included) and check
 * it against ex; T_KEEP sends "GET /t-next" on conn and expects its 200.
 * Failures name file:line, ex->name and the request. If out is not NULL the
 * response is stored there for further checks (free it with t_response_free).
 */
#define t_exchange(conn, ex, out) t_exchange_at(__FILE__, __LINE__, (conn), (ex), (out))
void t_exchange_at(const char *file, int line, t_conn_t *conn, const t_exchange_t *ex,
                   t_response_t *out);

/* Run every row on a fresh connection of its own, naming each case. */
#define t_exchanges(server, rows, count) \
  t_exchanges_at(__FILE__, __LINE__, (server), (rows), (count))
void t_exchanges_at(const char *file, int line, const t_server_t *server, const t_exchange_t *rows,
                    size_t count);

#define T_COUNT(array) (sizeof(array) / sizeof((array)[0]))

/*
 * Many connections at once, driven with poll() from this thread: open
 * `nconns` connections, send request_for(i) on connection i, and read
 * `responses_each` responses from each (requests may be pipelined in one
 * buffer). on_response(i, nth, response, arg) checks each response (may be
 * NULL). Returns how many connections got all their responses before
 * timeout_ms passed; failing connections are reported on stderr.
 */
typedef const char *(*t_request_fn)(size_t index, size_t *len, void *arg);
typedef void (*t_response_fn)(size_t index, size_t nth, const t_response_t *response, void *arg);
size_t t_many(const t_server_t *server, size_t nconns, t_request_fn request_for,
              size_t responses_each, t_response_fn on_response, void *arg, int timeout_ms);

#endif /* PMU_TESTLIB_H */
