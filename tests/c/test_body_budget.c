/*
 * test_body_budget: request bodies held in memory are bounded by
 * body_buffer_budget across the whole server; beyond it they go to an
 * unlinked file in body_spool_dir and still reach the handler whole.
 *
 * - Clients announcing large bodies and sending a few bytes make the server
 *   allocate nothing for what they have not sent (heap measured with
 *   mallinfo2, the server being in this process).
 * - Clients holding partial bodies fill the budget; the rest spool (the
 *   gauge stays within the budget, the heap too), an honest upload completes
 *   meanwhile with its body intact, and the holders' bodies, once finished,
 *   are echoed intact too. The spool directory stays empty (unlinked files).
 */
#include "testlib.h"

#include <dirent.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define HOLDERS 48
#define BODY (64 * 1024)
#define BUDGET (256 * 1024)

static size_t heap_bytes(void) {
  struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

static void wait_bytes_in(const t_server_t *server, uint64_t want) {
  T_WAIT_UNTIL(t_stats(server, -1).bytes_in >= want, T_EVENT_MS);
  T_ASSERT_MSG(t_stats(server, -1).bytes_in >= want, "server received %llu of %llu bytes",
               (unsigned long long)t_stats(server, -1).bytes_in, (unsigned long long)want);
}

static int dir_entries(const char *path) {
  DIR *d = opendir(path);
  T_ASSERT(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
      n++;
  closedir(d);
  return n;
}

static char *pattern(size_t n, unsigned seed) {
  char *p = malloc(n);
  for (size_t i = 0; i < n; i++)
    p[i] = (char)('a' + (i * 7 + seed) % 26);
  return p;
}

int main(void) {
  t_init("body_budget");
  t_raise_nofile(1024);
  char dir[] = "/tmp/pmu-spool-XXXXXX";
  T_ASSERT(mkdtemp(dir));

  pmu_config_t config;
  t_config_init(&config);
  config.max_body_bytes = 1 << 20;
  config.body_buffer_budget = BUDGET;
  config.body_spool_dir = dir;
  t_server_t *server = t_server_start(&config);
  char head[256];

  t_case("an announced Content-Length reserves nothing the client has not sent");
  {
    t_conn_t *conns[HOLDERS];
    uint64_t in0 = t_stats(server, -1).bytes_in;
    size_t heap0 = heap_bytes(), sent = 0;
    for (int i = 0; i < HOLDERS; i++) {
      conns[i] = t_connect(server);
      int n = snprintf(head, sizeof head,
                       "POST /echo HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n0123456789",
                       1 << 20);
      t_send(conns[i], head, (size_t)n);
      sent += (size_t)n;
    }
    wait_bytes_in(server, in0 + sent);
    size_t grown = heap_bytes() - heap0;
    if (T_HEAP_MEASURED)
      T_ASSERT_MSG(grown < 4u << 20, "heap grew %zu bytes for %d bodies of 10 bytes", grown,
                   HOLDERS);
    T_ASSERT_INT_EQ(t_stats(server, -1).bodies_spooled, 0);
    for (int i = 0; i < HOLDERS; i++)
      t_conn_close(conns[i]);
  }

  t_case("held partial bodies stay within the budget; the rest spool; all complete");
  {
    t_conn_t *conns[HOLDERS];
    char *bodies[HOLDERS];
    T_WAIT_UNTIL(t_stats(server, -1).connections_open == 0, T_EVENT_MS);
    for (int i = 0; i < HOLDERS; i++)
      bodies[i] = pattern(BODY, (unsigned)i);
    uint64_t in0 = t_stats(server, -1).bytes_in;
    size_t heap0 = heap_bytes(), sent = 0;
    for (int i = 0; i < HOLDERS; i++) {
      conns[i] = t_connect(server);
      int n = snprintf(head, sizeof head,
                       "POST /echo HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n", BODY);
      t_send(conns[i], head, (size_t)n);
      t_send(conns[i], bodies[i], BODY - 1);
      sent += (size_t)n + BODY - 1;
    }
    wait_bytes_in(server, in0 + sent);
    pmu_stats_t st = t_stats(server, -1);
    T_ASSERT_MSG(st.body_buffer_bytes <= BUDGET, "%llu bytes buffered, budget %d",
                 (unsigned long long)st.body_buffer_bytes, BUDGET);
    T_ASSERT_MSG(st.bodies_spooled >= HOLDERS - BUDGET / BODY,
                 "%llu bodies spooled of %d (budget for %d)", (unsigned long long)st.bodies_spooled,
                 HOLDERS, BUDGET / BODY);
    size_t grown = heap_bytes() - heap0;
    if (T_HEAP_MEASURED)
      T_ASSERT_MSG(grown < 3 * BUDGET + (1u << 20), "heap grew %zu bytes, budget %d", grown,
                   BUDGET);
    T_ASSERT_INT_EQ(dir_entries(dir), 0);

    /* An honest upload, larger than the whole budget, completes meanwhile. */
    size_t big = 3 * BUDGET;
    char *upload = pattern(big, 99);
    t_conn_t *honest = t_connect(server);
    int n = snprintf(head, sizeof head,
                     "POST /echo HTTP/1.1\r\nHost: b\r\nContent-Length: %zu\r\n\r\n", big);
    t_send(honest, head, (size_t)n);
    t_send(honest, upload, big);
    t_response_t r;
    t_expect_response(honest, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_INT_EQ(r.body_len, big);
    T_ASSERT(memcmp(r.body, upload, big) == 0);
    t_response_free(&r);
    t_conn_close(honest);
    free(upload);

    /* The holders finish: each body comes back whole, from memory or file. */
    for (int i = 0; i < HOLDERS; i++)
      t_send(conns[i], bodies[i] + BODY - 1, 1);
    for (int i = 0; i < HOLDERS; i++) {
      t_expect_response(conns[i], &r);
      T_ASSERT_INT_EQ(r.status, 200);
      T_ASSERT_INT_EQ(r.body_len, BODY);
      T_ASSERT_MSG(memcmp(r.body, bodies[i], BODY) == 0, "body %d differs", i);
      t_response_free(&r);
      t_conn_close(conns[i]);
      free(bodies[i]);
    }
    T_WAIT_UNTIL(t_stats(server, -1).body_buffer_bytes == 0, T_EVENT_MS);
    T_ASSERT_INT_EQ(t_stats(server, -1).body_buffer_bytes, 0);
  }

  t_case("chunked bodies spool too");
  {
    /* Fill the budget with one held body, then send a chunked one. */
    t_conn_t *holder = t_connect(server);
    int n = snprintf(head, sizeof head,
                     "POST /echo HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n", BUDGET + 10);
    t_send(holder, head, (size_t)n);
    char *fill = pattern(BUDGET, 3);
    t_send(holder, fill, BUDGET);
    uint64_t spooled0 = t_stats(server, -1).bodies_spooled;
    t_conn_t *conn = t_connect(server);
    t_send_str(conn, "POST /echo HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    t_response_t r;
    t_expect_response(conn, &r);
    T_ASSERT_INT_EQ(r.status, 200);
    T_ASSERT_STR_EQ(r.body, "hello world");
    t_response_free(&r);
    T_ASSERT_MSG(t_stats(server, -1).bodies_spooled > spooled0, "the chunked body did not spool");
    t_conn_close(conn);
    t_conn_close(holder);
    free(fill);
  }

  t_server_destroy(server);
  T_ASSERT_INT_EQ(dir_entries(dir), 0);
  rmdir(dir);
  return t_done();
}
