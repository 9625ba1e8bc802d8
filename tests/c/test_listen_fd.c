/*
 * test_listen_fd: config.listen_fd serves on a listening socket the caller
 * made (as a supervisor or systemd hands one over): TCP and Unix; every
 * thread accepts on it; the port is reported; the caller's socket outlives
 * the server untouched, so connections that arrive between two servers wait
 * in its queue and the next server answers them; two servers can share it;
 * a socket that is not listening is refused with a reason.
 */
#include "testlib.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int tcp_listening(uint16_t *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  T_ASSERT(fd >= 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  T_ASSERT(bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0);
  T_ASSERT(listen(fd, 128) == 0);
  socklen_t len = sizeof sin;
  T_ASSERT(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
  *port = ntohs(sin.sin_port);
  return fd;
}

static int is_listening(int fd) {
  int on = 0;
  socklen_t n = sizeof on;
  return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &n) == 0 && on;
}

/* One GET on conn, expecting 200 and the path echoed. */
static void round_trip(t_conn_t *conn, const char *path) {
  char req[128];
  snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
  t_send_str(conn, req);
  t_response_t r;
  t_expect_response(conn, &r);
  T_ASSERT_INT_EQ(r.status, 200);
  T_ASSERT_FIELD(&r, "path", path);
  t_response_free(&r);
}

int main(void) {
  t_init("listen_fd");
  pmu_config_t config;

  t_case("TCP: every thread serves the given socket; its port is reported");
  uint16_t port = 0;
  int lfd = tcp_listening(&port);
  int fds_before = t_count_fds();
  {
    t_config_init(&config);
    config.listen_fd = lfd;
    config.port = 1; /* listen_fd wins over host/port */
    config.threads = 2;
    t_server_t *s = t_server_start(&config);
    T_ASSERT_INT_EQ(pmu_server_port(s->pmu), port);
    t_conn_t *conns[16];
    for (int i = 0; i < 16; i++)
      conns[i] = t_connect(s);
    for (int round = 0; round < 3; round++)
      for (int i = 0; i < 16; i++)
        round_trip(conns[i], "/given");
    for (int i = 0; i < 16; i++)
      t_conn_close(conns[i]);
    pmu_stats_t st = t_stats(s, -1);
    T_ASSERT_INT_EQ(st.requests, 48);
    /* Both threads accept from the one socket, in turn: of 40 connections
     * made one after another, each takes at least 10. */
    t_expect_accepts_alternate(s, 40, 10);
    t_server_destroy(s);
  }

  t_case("the caller's socket outlives the server, still listening; no fd leaks");
  T_ASSERT(is_listening(lfd));
  T_ASSERT_INT_EQ(t_count_fds(), fds_before);

  t_case("a connection made between two servers waits and the next one answers it");
  {
    t_server_t fake = {.family = AF_INET, .port = port};
    snprintf(fake.host, sizeof fake.host, "127.0.0.1");
    t_conn_t *waiting = t_connect(&fake); /* completes in the kernel's queue */
    t_send_str(waiting, "GET /waited HTTP/1.1\r\nHost: x\r\n\r\n");
    t_config_init(&config);
    config.listen_fd = lfd;
    t_server_t *s = t_server_start(&config);
    t_response_t r;
    t_expect_response(waiting, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "path", "/waited");
    t_response_free(&r);
    round_trip(waiting, "/again");
    t_conn_close(waiting);

    /* Stopped with no connection open: a new client still connects (the
     * socket was not shut down) and the next server answers it. */
    t_server_destroy(s);
    t_conn_t *late = t_connect(&fake);
    t_send_str(late, "GET /late HTTP/1.1\r\nHost: x\r\n\r\n");
    s = t_server_start(&config);
    t_expect_response(late, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_FIELD(&r, "path", "/late");
    t_response_free(&r);
    t_conn_close(late);
    t_server_destroy(s);
  }

  t_case("two servers share one socket, as worker processes do; all answered");
  {
    t_config_init(&config);
    config.listen_fd = lfd;
    t_server_t *a = t_server_start(&config);
    t_server_t *b = t_server_start(&config);
    for (int i = 0; i < 40; i++) {
      t_conn_t *conn = t_connect(a);
      round_trip(conn, "/shared");
      t_conn_close(conn);
    }
    pmu_stats_t sa = t_stats(a, -1), sb = t_stats(b, -1);
    T_ASSERT_INT_EQ(sa.requests + sb.requests, 40);
    /* One stops; the other goes on serving the same socket. */
    t_server_destroy(a);
    for (int i = 0; i < 10; i++) {
      t_conn_t *conn = t_connect(b);
      round_trip(conn, "/after");
      t_conn_close(conn);
    }
    T_ASSERT_INT_EQ(t_stats(b, -1).requests - sb.requests, 10);
    t_server_destroy(b);
  }
  close(lfd);

  t_case("Unix socket: served, and the path is not removed afterwards");
  {
    char path[108];
    snprintf(path, sizeof path, "/tmp/pmu-test-listen-fd-%d.sock", (int)getpid());
    unlink(path);
    int ufd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof un.sun_path, "%s", path);
    T_ASSERT(bind(ufd, (struct sockaddr *)&un, sizeof un) == 0);
    T_ASSERT(listen(ufd, 64) == 0);
    t_config_init(&config);
    config.listen_fd = ufd;
    config.unix_path = path; /* where the test client connects; the socket is ufd */
    t_server_t *s = t_server_start(&config);
    T_ASSERT_INT_EQ(pmu_server_port(s->pmu), 0);
    t_conn_t *conn = t_connect(s);
    round_trip(conn, "/unix");
    t_conn_close(conn);
    t_server_destroy(s);
    struct stat st;
    T_ASSERT_MSG(stat(path, &st) == 0 && S_ISSOCK(st.st_mode), "%s was removed", path);
    T_ASSERT(is_listening(ufd));
    close(ufd);
    unlink(path);
  }

  t_case("a socket that is not listening, or no socket, is refused with the reason");
  {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    t_config_init(&config);
    config.listen_fd = fd;
    t_server_t *s = NULL;
    int rc = t_server_try_start(&config, &s);
    T_ASSERT_INT_EQ(rc, -EINVAL);
    T_ASSERT(s != NULL && s->pmu != NULL);
    const char *why = pmu_server_error(s->pmu);
    T_ASSERT_CONTAINS(why, strlen(why), "not a listening");
    t_server_destroy(s);
    close(fd);

    config.listen_fd = fd; /* closed now */
    s = NULL;
    rc = t_server_try_start(&config, &s);
    T_ASSERT_INT_EQ(rc, -EBADF);
    why = pmu_server_error(s->pmu);
    T_ASSERT_CONTAINS(why, strlen(why), "listen_fd");
    t_server_destroy(s);
  }
  T_ASSERT_INT_EQ(t_count_fds(), fds_before - 1); /* lfd closed */
  return t_done();
}
