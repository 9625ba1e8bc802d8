/*
 * filelib.h: the files and the handler of the file-sending tests (test_file*.c).
 *
 * Files (made by f_files_create, in $TMPDIR or /tmp, removed by f_files_remove):
 *   0  main:   f_main_size() bytes, byte i = f_pat(i)
 *   1  sparse: f_sparse_size() = 2 GiB (ftruncate); zeros, but its last 100 bytes f_pat(i)
 *   2  short:  f_short_size() = 100000 bytes of f_pat(i)
 *   3  big:    64 MiB of f_pat(i), only after f_big_create()
 *   4  trunc:  f_trunc_create(size) bytes of f_pat(i), for a test to cut short
 *
 * The handler (f_server_start) answers:
 *   /f?o=O&n=N[&file=F][&st=S]  pmu_respond_file(S or 200, file F opened now, O, N)
 *   /mix?o=O&n=N&chunked=C      start (Content-Length: 10 + N unless C), "head-", the file
 *                               piece [O, O+N) of file 0, "-tail", end
 *   /pre?o=O&n=N                like /f, with a descriptor from f_preopen() (no open now)
 *   anything else               the test library's describing handler
 * Every piece's release closes its fd and counts (f_releases).
 */
#ifndef PMU_FILELIB_H
#define PMU_FILELIB_H

#include "testlib.h"

uint8_t f_pat(uint64_t i);
uint8_t f_byte(int file, uint64_t i);
uint64_t f_main_size(void);
uint64_t f_sparse_size(void);
uint64_t f_short_size(void);
const char *f_path(int file);
void f_files_create(void);
void f_files_remove(void);
void f_big_create(void);
void f_trunc_create(uint64_t size);

/* Releases so far; pieces opened and not released yet. */
unsigned long f_releases(void);
long f_releases_pending(void);

/* Open file 0 n times now, for /pre requests (a test that lowers RLIMIT_NOFILE). */
void f_preopen(int n);

/* t_server_start with the handler above (config->handler replaced). */
t_server_t *f_server_start(const pmu_config_t *config);

/* Read one response: 200, Content-Length len, body = file's bytes [off, off+len). */
#define f_expect_file_response(c, file, off, len) \
  f_expect_file_response_at(__FILE__, __LINE__, (c), (file), (off), (len))
void f_expect_file_response_at(const char *file_, int line, t_conn_t *c, int file, uint64_t off,
                               uint64_t len);

/* The /mix answer: "head-" file 0 [off, off+len) "-tail", chunked or with a length. */
#define f_expect_mix_response(c, off, len, chunked) \
  f_expect_mix_response_at(__FILE__, __LINE__, (c), (off), (len), (chunked))
void f_expect_mix_response_at(const char *file_, int line, t_conn_t *c, uint64_t off, uint64_t len,
                              int chunked);

/* A promise longer than the file: Content-Length len, the file's real bytes from off
 * (size - off of them), then the connection ends (no padding, no hang). */
#define f_expect_short_response(c, file, off, len, size) \
  f_expect_short_response_at(__FILE__, __LINE__, (c), (file), (off), (len), (size))
void f_expect_short_response_at(const char *file_, int line, t_conn_t *c, int file, uint64_t off,
                                uint64_t len, uint64_t size);

/* Low level: read the head of a response into *status / *length (-1: none) / *chunked,
 * leaving the body's first bytes in c->buf. false on EOF or timeout. */
bool f_read_head(t_conn_t *c, int *status, long long *length, bool *chunked, int timeout_ms);
/* Read and check `len` body bytes of `file` from off (as they come, without keeping them);
 * returns the bytes that matched before a mismatch, EOF or timeout. */
uint64_t f_read_body(t_conn_t *c, int file, uint64_t off, uint64_t len, int timeout_ms);

/* This process's resident memory in KiB (VmRSS). */
long f_rss_kib(void);

#endif /* PMU_FILELIB_H */
