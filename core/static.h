/*
 * static.h: the pure parts of static file serving (core/static_path.c,
 * core/mime.c), apart from the engine so that the fuzzers and tests can call
 * them directly. Nothing here does I/O except pmu__mime_system_load.
 */
#ifndef PMU_STATIC_H
#define PMU_STATIC_H

#include <stddef.h>
#include <stdint.h>

/* ---- static_path.c ---- */

/* pmu__static_clean_path flags */
#define PMU__PATH_DECODE 1 /* percent-decode (once); else '%' is an ordinary byte */

/*
 * Turn a URL path (below a mount, or whole) into a relative file path:
 * percent-decoded once when PMU__PATH_DECODE, empty segments and a leading
 * "/" dropped, segments joined by "/". Refused (-EINVAL) when the path holds a
 * segment of dots only ("." "..", "...."), a backslash (raw or %5c), an
 * encoded "/" (%2f), NUL or another control byte (raw or encoded), a '%' not
 * followed by two hex digits, or bytes that are not well-formed UTF-8
 * (overlong forms like %c0%ae, surrogates). What it writes to out (at most
 * len bytes, NUL-terminated: cap >= len + 1) therefore never starts with "/",
 * never has a ".." segment, NUL or backslash. *dir is set when the path ended
 * with "/" (a directory asked for as such; "" counts as one). *dotfile is set
 * when a segment begins with '.'. Returns the length written.
 */
long pmu__static_clean_path(const char *in, size_t len, int flags, char *out, size_t cap, int *dir,
                            int *dotfile);

typedef struct pmu__range {
  uint64_t first, last; /* inclusive, last < size */
} pmu__range_t;

#define PMU__RANGE_IGNORE 0         /* no usable Range: answer 200, the whole file */
#define PMU__RANGE_UNSATISFIABLE -1 /* 416 with Content-Range: bytes * / size */

/*
 * Parse a Range header value (RFC 9110 14.1.1) against a file of `size`
 * bytes. Returns the number of ranges written to out (>= 1; out holds
 * max_ranges entries, or fewer when the value has fewer commas: it writes at
 * most one more than its commas), sorted and with overlapping or adjacent ones merged,
 * so that their total never exceeds the file; PMU__RANGE_IGNORE when the value
 * is not "bytes=" with a well-formed list, when it lists more than max_ranges
 * ranges (or max_ranges is 0); PMU__RANGE_UNSATISFIABLE when the list is
 * well-formed but no range overlaps the file.
 */
int pmu__static_parse_range(const char *value, size_t len, uint64_t size, unsigned max_ranges,
                            pmu__range_t *out);

/* An HTTP date (IMF-fixdate, RFC 850 or asctime) to seconds since the epoch;
 * -1 when it is none. */
int64_t pmu__http_date_parse(const char *s, size_t len);

/* ---- mime.c ---- */

/* The Content-Type of a file name by its extension: overrides first ("ext=type,..."
 * of a mount, may be NULL), then the built-in table, then /etc/mime.types (read
 * once per process), else application/octet-stream. Text types get
 * "; charset=utf-8" (written into buf when needed, of size cap). */
const char *pmu__mime_type(const char *name, size_t name_len, const char *overrides, char *buf,
                           size_t cap);

#endif /* PMU_STATIC_H */
