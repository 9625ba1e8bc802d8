/*
 * ws_codec.h: the byte-level work of WebSocket (RFC 6455) and permessage-deflate
 * (RFC 7692) that the frame parser and the sender call: unmasking, incremental UTF-8
 * validation, the extension negotiation and the zlib contexts. Pure functions: no I/O, no
 * loop, no locks. Everything here runs on the thread that owns the state it is given (a
 * connection's state on its loop's thread; a per-thread shared state on that thread).
 *
 * Memory per connection with permessage-deflate (zlib 1.2.13, 64-bit; measured by
 * tests/c/test_ws_codec.c through the counting allocator below, pmu__ws_pmd_heap_bytes()):
 *   - nothing until the first compressed message each way (streams are made lazily);
 *   - our compressor, context takeover, windowBits 12, memLevel 5: 2^(w+2) window and prev
 *     + 2^(m+8) hash heads + 2^(m+8) pending buffer + ~5.9 KiB state, about 38 KiB;
 *   - our decompressor, context takeover: a 2^w window (allocated on first output) + ~7 KiB
 *     state: 11 KiB at the client window 12 we ask for when the client lets us
 *     (client_max_window_bits in its offer), 39 KiB when it does not (window 15);
 *   - a direction without context takeover (server_no_context_takeover /
 *     client_no_context_takeover negotiated) uses the thread's shared stream, reset per
 *     message: 0 bytes per connection.
 * uvicorn's defaults (windowBits 15, memLevel 8 both ways) cost about 316 KiB.
 */
#ifndef PMU_WS_CODEC_H
#define PMU_WS_CODEC_H

#include <pmu/pmu.h>

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* ---- Masking (RFC 6455 5.3) ---------------------------------------------------------- */

/* dst[i] = src[i] ^ key[(phase + i) % 4] for i < len. phase is the payload offset, modulo
 * 4, at which this piece starts (a frame's payload may arrive in several pieces). dst may
 * equal src (unmasking in place); no other overlap is allowed. Works 64 bytes per step
 * (vector types), then 32, 8, 1: ~25 GB/s here against ~2 for a byte loop. */
void pmu__ws_unmask(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4],
                    size_t phase);

/* ---- UTF-8 validation (RFC 3629; Unicode table 3-7) ---------------------------------- */

/* The state of an incremental validation: where inside a character the bytes seen so far
 * stopped. Zero-initialised is the same as pmu__utf8_init(). */
typedef struct {
  uint32_t state;
} pmu__utf8_t;

void pmu__utf8_init(pmu__utf8_t *u);

/* Feeds the next len bytes of a text message (pieces of any size, split anywhere, even
 * inside a character). Returns 0 when the bytes so far are a valid UTF-8 prefix, -1 as
 * soon as a byte makes the text impossible: an unexpected continuation byte, a lead byte
 * C0, C1 or F5..FF, an overlong form (E0 80..9F, F0 80..8F), a surrogate (ED A0..BF), a
 * code point over U+10FFFF (F4 90..BF), or a lead byte where a continuation was due. Once
 * -1, it stays -1 (until pmu__utf8_init). ASCII runs go 16 bytes at a time. */
int pmu__utf8_feed(pmu__utf8_t *u, const uint8_t *data, size_t len);

/* 1 when the bytes fed so far end at a character boundary (the message may end here),
 * 0 inside a character or after an error. */
int pmu__utf8_done(const pmu__utf8_t *u);

/* Whole-buffer form: 1 if data is valid UTF-8 and complete, 0 if not. */
int pmu__utf8_valid(const uint8_t *data, size_t len);

/* ---- permessage-deflate (RFC 7692) ----------------------------------------------------- */

/* What the engine's knobs say (ws_deflate, ws_deflate_window_bits, ws_deflate_mem_level,
 * ws_deflate_no_context_takeover), passed in so that this module does not depend on
 * pmu_config_t. ws_deflate_min_size is the sender's decision and is not needed here. */
typedef struct pmu__ws_pmd_config {
  uint8_t enabled;             /* 0: never negotiate */
  uint8_t window_bits;         /* 9..15: our compressor's window; the client window we ask */
  uint8_t mem_level;           /* 1..9: zlib memLevel of our compressor */
  uint8_t no_context_takeover; /* ask both sides to reset their context per message */
  uint8_t level;               /* zlib compression level 1..9; 0: PMU__WS_PMD_LEVEL */
} pmu__ws_pmd_config_t;

/* The compression level when the config says 0. Level 1 is chosen for CPU: on 2 KiB JSON
 * messages (window 12, memLevel 5, context takeover) it compresses ~1.4x faster than zlib's
 * default 6 for a ratio of 4.8 instead of 5.6 (tests/c/bench_ws_codec). */
#define PMU__WS_PMD_LEVEL 1

/* The parameters agreed with one client. Window bits are the values of the response's
 * parameters (8..15), 0 where the response does not carry that parameter. */
typedef struct pmu__ws_pmd_params {
  uint8_t server_no_context_takeover; /* we reset our compressor after every message */
  uint8_t client_no_context_takeover; /* the client resets its: we need not keep a window */
  uint8_t server_max_window_bits;     /* our compressor's window as announced (8..15) */
  uint8_t client_max_window_bits;     /* the client's window as we limited it; 0: 15 */
} pmu__ws_pmd_params_t;

/* The longest response pmu__ws_pmd_format() writes, with its NUL. */
#define PMU__WS_PMD_RESPONSE_MAX 160

/* Reads every Sec-WebSocket-Extensions header among headers[0..count) (names compared
 * without case; several headers read as one comma-separated list, in order) and picks the
 * first permessage-deflate offer this server accepts (RFC 7692 5 and 7.1):
 *   - parameters: server_no_context_takeover, client_no_context_takeover (no value),
 *     server_max_window_bits=N (8..15), client_max_window_bits[=N] (8..15); values may be
 *     quoted ("10"); no leading zero;
 *   - an unknown parameter, a duplicate, a missing or bad value, or a syntax error makes
 *     that offer unacceptable (the next one is tried);
 *   - server_max_window_bits=N is granted as min(N, cfg->window_bits); absent, we announce
 *     cfg->window_bits. zlib cannot deflate with a window of 8 bits: we deflate with 9,
 *     whose longest distance is 2^9 - 262 = 250 bytes, within the 256-byte window of a
 *     peer that asked for 8;
 *   - client_max_window_bits offered: we answer min(N or 15, cfg->window_bits);
 *     not offered: the response must not carry it and the client may use 15;
 *   - server_no_context_takeover offered, or cfg->no_context_takeover: we reset per
 *     message; client_no_context_takeover offered or cfg->no_context_takeover: we answer it
 *     (RFC 7692 7.1.1.2 lets the server ask for it), so we keep no inflate window.
 * Returns 1 and fills *out when an offer was accepted, 0 when none was (or none was made,
 * or cfg->enabled is 0): then the 101 carries no Sec-WebSocket-Extensions. */
int pmu__ws_pmd_negotiate(const pmu__ws_pmd_config_t *cfg, const pmu_header_t *headers,
                          size_t count, pmu__ws_pmd_params_t *out);

/* The Sec-WebSocket-Extensions value of the 101 for params, e.g.
 * "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12".
 * Writes at most cap bytes with a NUL (PMU__WS_PMD_RESPONSE_MAX is always enough); returns
 * the length without the NUL. */
size_t pmu__ws_pmd_format(const pmu__ws_pmd_params_t *params, char *buf, size_t cap);

struct z_stream_s; /* zlib's z_stream; zlib.h is needed only in ws_codec.c */

/* The streams of one loop (thread) shared by its connections for every direction without
 * context takeover: deflaters by window bits (made on first use) and one inflater (window
 * 15, enough for any peer window). They are reset before each message, so a message must be
 * compressed or inflated in one call (which the interface below guarantees). */
typedef struct pmu__ws_pmd_shared {
  struct z_stream_s *deflate[7]; /* windowBits 9..15 */
  struct z_stream_s *inflate;
  uint8_t mem_level; /* of the deflaters */
  uint8_t level;
  size_t heap_bytes; /* what zlib and these streams hold on the heap */
} pmu__ws_pmd_shared_t;

/* One connection's compression state, embedded in the engine's connection. Nothing is
 * allocated until a message needs a stream of its own. */
typedef struct pmu__ws_pmd {
  pmu__ws_pmd_params_t params;
  uint8_t deflate_bits; /* windowBits of our compressor (9..15) */
  uint8_t inflate_bits; /* windowBits of our decompressor (8..15) */
  uint8_t mem_level;
  uint8_t level;
  uint8_t broken;               /* a stream failed: every later call fails */
  struct z_stream_s *deflater;  /* own compressor (context takeover), lazily made */
  struct z_stream_s *inflater;  /* own decompressor (context takeover), lazily made */
  pmu__ws_pmd_shared_t *shared; /* the loop's, for the directions without takeover */
  size_t heap_bytes;            /* what the two own streams hold on the heap */
} pmu__ws_pmd_t;

/* Initialise a loop's shared state (allocates nothing) and release what it made. The
 * config's mem_level and level apply to its deflaters. */
void pmu__ws_pmd_shared_init(pmu__ws_pmd_shared_t *sh, const pmu__ws_pmd_config_t *cfg);
void pmu__ws_pmd_shared_free(pmu__ws_pmd_shared_t *sh);

/* Initialise a connection's state for the agreed params (allocates nothing). shared is
 * the connection's loop's shared state; it must outlive this state. */
void pmu__ws_pmd_init(pmu__ws_pmd_t *st, const pmu__ws_pmd_params_t *params,
                      const pmu__ws_pmd_config_t *cfg, pmu__ws_pmd_shared_t *shared);
/* Release what the state made; the state may be initialised again. */
void pmu__ws_pmd_free(pmu__ws_pmd_t *st);

/* Heap bytes this connection's state holds now (its own zlib streams; the shared ones are
 * the loop's: pmu__ws_pmd_shared_t.heap_bytes). */
size_t pmu__ws_pmd_heap_bytes(const pmu__ws_pmd_t *st);

/* An output size that pmu__ws_pmd_compress() always fits a message of len bytes into. */
size_t pmu__ws_pmd_compress_bound(size_t len);

/* Compress one whole message (RFC 7692 7.2.1): the deflate data with the final
 * 00 00 FF FF of the sync flush removed, into out[0..cap), its length in *out_len. With
 * context takeover the compressor keeps its window for the next message.
 * Returns 0: compressed (send with RSV1 set);
 *         1: it did not fit in cap (cap = len says "only if it gets smaller"; cap =
 *            pmu__ws_pmd_compress_bound(len) always fits): send it uncompressed. The
 *            compressor was reset, so the peer's window need not have seen this message;
 *   -ENOMEM: zlib could not allocate: send it uncompressed (nothing was kept);
 *   -EIO:    zlib failed otherwise (the state is then broken): close the connection 1011.
 */
int pmu__ws_pmd_compress(pmu__ws_pmd_t *st, const uint8_t *in, size_t len, uint8_t *out, size_t cap,
                         size_t *out_len);

/* A growable output buffer: data is malloc'ed (free() it), len bytes used of cap. */
typedef struct pmu__ws_buf {
  uint8_t *data;
  size_t len;
  size_t cap;
} pmu__ws_buf_t;

/* Inflate one whole compressed message (RFC 7692 7.2.2): the payloads of its frames,
 * unmasked, in pieces[0..count), to which the 00 00 FF FF tail is appended here. Appends
 * the message to out (growing it with realloc). With context takeover the decompressor
 * keeps its window for the next message. An empty payload is the empty message (as zlib
 * itself would have sent it is the single byte 00; some peers send nothing).
 * Returns 0, or
 *   -EMSGSIZE: the message would inflate to more than max_out bytes (0: no limit); inflation
 *              stops there, never further (a zip bomb costs max_out, not its full size):
 *              close 1009;
 *   -EBADMSG:  the data is not valid deflate data: close 1007 (invalid payload data). A
 *              final block (BFINAL) inside a message is valid: what follows starts a new
 *              deflate stream over the same window;
 *   -ENOMEM:   no memory: close 1011.
 * After an error the connection's state is broken (later calls fail alike); out->len may
 * have grown by a part of the message. */
int pmu__ws_pmd_inflate(pmu__ws_pmd_t *st, const struct iovec *pieces, size_t count, size_t max_out,
                        pmu__ws_buf_t *out);

#endif /* PMU_WS_CODEC_H */
