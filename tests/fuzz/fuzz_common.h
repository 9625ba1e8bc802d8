/*
 * fuzz_common.h: what the libFuzzer harnesses share: one real engine server
 * on 127.0.0.1 (started once), a raw TCP client that sends an input split at
 * chosen points, and a strict checker of the bytes that come back.
 *
 * Input format of every harness: byte 0 is the control byte (bits 0-2: number
 * of split points, bit 3: pause 300 us between pieces, so that they arrive in
 * separate receives); the next (byte0 & 7) bytes place the split points
 * (each a fraction b/256 of the payload); the rest is the payload.
 */
#ifndef PMU_FUZZ_COMMON_H
#define PMU_FUZZ_COMMON_H

#include <pmu/pmu.h>

#include <stddef.h>
#include <stdint.h>

/*
 * llhttp (8.1, strict mode too) takes an empty field name (": x") in the
 * head and in trailers, which RFC 9110 5.1 does not allow (field-name is a
 * token); the engine refuses it in both (core/http.c). Set to 1 to tolerate
 * it again, e.g. to fuzz an older engine.
 */
#ifndef FUZZ_KNOWN_EMPTY_FIELD_NAME
#define FUZZ_KNOWN_EMPTY_FIELD_NAME 0
#endif

/*
 * The engine refuses obs-fold in the head and in trailers (core/http.c
 * trailer_value). Set to 1 to tolerate it in trailers, e.g. to fuzz an older
 * engine.
 */
#ifndef FUZZ_KNOWN_TRAILER_OBS_FOLD
#define FUZZ_KNOWN_TRAILER_OBS_FOLD 0
#endif

/* Limits of the server under test: small, so that fuzz inputs reach them. */
#define FUZZ_MAX_BODY 4096
#define FUZZ_STREAM_THRESHOLD 64

/* WebSocket limits of the server under test (fuzz_ws): small, so that inputs reach them. */
#define FUZZ_WS_MAX_MESSAGE 8192
#define FUZZ_WS_MAX_FRAME 4096

/* Let the handler accept WebSocket handshakes to /ws (fuzz_ws calls it; in the other
 * harnesses a handshake stays an ordinary request, so their HTTP checks hold). Every
 * message is then echoed as it came; pings are answered by the engine. */
void fuzz_ws_enable(void);

/* Start the server (once; aborts on failure). */
void fuzz_server_start(void);

/* Send the exchanges to this port from now on (a harness's own server: fuzz_raw). */
void fuzz_set_port(uint16_t port);

/* The split and pause choices decoded from an input. */
typedef struct fuzz_plan {
  const uint8_t *payload;
  size_t len;
  size_t cuts[8]; /* ascending offsets into payload */
  unsigned ncuts;
  int pause;
} fuzz_plan_t;

void fuzz_plan(const uint8_t *data, size_t size, fuzz_plan_t *plan);

/* Connect, send prefix (may be NULL) then the payload in its pieces,
 * half-close, read until EOF. Returns a malloc'd buffer of what came back
 * (*out_len bytes); aborts with a message if no EOF comes within the
 * deadline (a wedged connection). */
char *fuzz_exchange(const char *prefix, size_t prefix_len, const fuzz_plan_t *plan,
                    size_t *out_len);

/* As fuzz_exchange, for a protocol whose payload depends on the answer to the prefix (the
 * WebSocket handshake and what it negotiated): after sending the prefix it waits for the
 * response head (through "\r\n\r\n", within the deadline) and calls on_head with it, which
 * returns the plan to send (valid until fuzz_exchange_after_head returns); NULL, or no head:
 * nothing more is sent. Then, before half-closing, it reads until done(ctx, what came so far)
 * returns 1, for a second at most (a protocol whose answers an EOF may cut short: the
 * WebSocket echoes). The rest as fuzz_exchange: half-close, read until EOF. */
typedef const fuzz_plan_t *(*fuzz_on_head_fn)(void *ctx, const char *head, size_t head_len);
typedef int (*fuzz_done_fn)(void *ctx, const char *out, size_t len);
char *fuzz_exchange_after_head(const char *prefix, size_t prefix_len, fuzz_on_head_fn on_head,
                               fuzz_done_fn done, void *ctx, size_t *out_len);

/* One parsed response. */
typedef struct fuzz_response {
  int status;
  int close;        /* Connection: close */
  int head;         /* answered a HEAD request (X-M: HEAD) */
  const char *body; /* into the decoded copy (chunked) or the input */
  size_t body_len;
  char *decoded; /* owned: the de-chunked body */
} fuzz_response_t;

#define FUZZ_MAX_RESPONSES 64

typedef struct fuzz_responses {
  fuzz_response_t r[FUZZ_MAX_RESPONSES];
  size_t count;   /* final (non-1xx) responses */
  size_t interim; /* 100 Continue */
} fuzz_responses_t;

/* Parse every response in buf strictly; on a framing error, print why with
 * a dump of the input and the output and abort(). */
void fuzz_parse_responses(const char *buf, size_t len, fuzz_responses_t *out, const uint8_t *input,
                          size_t input_len);
void fuzz_responses_free(fuzz_responses_t *rs);

/* Upper bound on the requests a strict reading of bytes could contain:
 * every request head ends with an empty line. */
size_t fuzz_count_head_ends(const uint8_t *p, size_t len);

/* Print a failed check with the input and output, then abort(). */
_Noreturn void fuzz_fail(const char *why, const uint8_t *input, size_t input_len,
                         const char *output, size_t output_len);

/* fuzz_exchange (prefix may be NULL), then the checks every harness makes:
 * the server closed once the client half-closed, every response is well
 * framed (fuzz_parse_responses), and there are no more final responses than
 * the prefix and the payload hold request heads, +1 for an error answer;
 * any of these failing is fuzz_fail for input. Returns what came back
 * (malloc'd, *out_len bytes), parsed into *rs (free with
 * fuzz_responses_free). */
char *fuzz_exchange_checked(const char *prefix, size_t prefix_len, const fuzz_plan_t *plan,
                            const uint8_t *input, size_t input_len, fuzz_responses_t *rs,
                            size_t *out_len);

/* libFuzzer's once-per-process hook, the same in every harness: starts the
 * server (fuzz_server_start). */
int LLVMFuzzerInitialize(int *argc, char ***argv);

#endif
