/* sp_buf / sp_iov: the two byte types.
 *
 * sp_iov is a non-owning view {base, len}, passed by value; whoever made it
 * says how long the bytes live.
 *
 * sp_buf owns a growable byte buffer.  Invariants (as git's strbuf): `base` is
 * never NULL after sp_buf_init (it points at a static "" until the first
 * growth), base[len] == '\0' always, and len + 1 <= cap.  Every buffer has a
 * hard `max` (bytes of content) set at init; growing past it fails with
 * SP_ERR_TOOBIG and leaves the buffer unchanged.  Buffers filled from the
 * network must use a finite max.  Embedded: sp_buf_init / sp_buf_release
 * (frees, re-inits) / sp_buf_reset (keeps memory, empties content).
 */
#ifndef SP_BUF_H
#define SP_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <string.h>

typedef struct sp_iov {
  const char *base;
  size_t len;
} sp_iov;

#define SP_IOV_LIT(s) ((sp_iov){(s), sizeof(s) - 1})
static inline sp_iov sp_iov_str(const char *s) {
  return (sp_iov){s, s ? strlen(s) : 0};
}
/* 1 when the view equals the NUL-terminated string `s` (case-sensitive). */
static inline int sp_iov_eq(sp_iov v, const char *s) {
  size_t n = strlen(s);
  return v.len == n && memcmp(v.base, s, n) == 0;
}
/* 1 when equal ignoring ASCII case. */
int sp_iov_case_eq(sp_iov v, const char *s);

typedef struct sp_buf {
  char *base; /* read-only for callers; NUL-terminated */
  size_t len; /* read-only */
  size_t cap; /* private */
  size_t max; /* private: content limit */
} sp_buf;

#define SP_BUF_UNLIMITED ((size_t)-1 / 2)

void sp_buf_init(sp_buf *b, size_t max);
void sp_buf_release(sp_buf *b);
void sp_buf_reset(sp_buf *b);

/* Make room for `extra` more bytes.  0, SP_ERR_TOOBIG or SP_ERR_NOMEM. */
int sp_buf_grow(sp_buf *b, size_t extra);
/* Append bytes.  0, SP_ERR_TOOBIG or SP_ERR_NOMEM; unchanged on failure. */
int sp_buf_add(sp_buf *b, const void *data, size_t n);
int sp_buf_adds(sp_buf *b, const char *s);
int sp_buf_addf(sp_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int sp_buf_vaddf(sp_buf *b, const char *fmt, va_list ap);
/* Append `s` as the inside of a JSON string (quotes not added), escaping
 * control characters, quote and backslash.  0, TOOBIG or NOMEM. */
int sp_buf_add_json_str(sp_buf *b, const char *s, size_t n);
/* Drop the first n bytes (consumed input). */
void sp_buf_consume(sp_buf *b, size_t n);
/* Take the heap memory: returns a NUL-terminated string the caller frees
 * with sp_free (NULL on NOMEM), and leaves `b` empty and initialised. */
char *sp_buf_detach(sp_buf *b, size_t *len_out);

#endif
