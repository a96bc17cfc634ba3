/* sp_buf: growable NUL-terminated buffer with a hard size cap. */
#include "sp_buf.h"

#include "sp_alloc.h"
#include "sp_err.h"

#include <stdio.h>

static char empty[1];

int sp_iov_case_eq(sp_iov v, const char *s) {
  size_t n = strlen(s);
  if (v.len != n)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char a = (unsigned char)v.base[i], c = (unsigned char)s[i];
    if (a >= 'A' && a <= 'Z')
      a += 32;
    if (c >= 'A' && c <= 'Z')
      c += 32;
    if (a != c)
      return 0;
  }
  return 1;
}

void sp_buf_init(sp_buf *b, size_t max) {
  b->base = empty;
  b->len = 0;
  b->cap = 0;
  b->max = max;
}

void sp_buf_release(sp_buf *b) {
  if (b->cap)
    sp_free(b->base);
  sp_buf_init(b, b->max);
}

void sp_buf_reset(sp_buf *b) {
  b->len = 0;
  if (b->cap)
    b->base[0] = '\0';
}

int sp_buf_grow(sp_buf *b, size_t extra) {
  if (extra > b->max || b->len > b->max - extra)
    return SP_ERR_TOOBIG;
  size_t need = b->len + extra + 1;
  if (need <= b->cap)
    return 0;
  size_t ncap = b->cap ? b->cap : 64;
  while (ncap < need)
    ncap = ncap < SP_BUF_UNLIMITED ? ncap * 2 : need;
  char *p = sp_realloc(b->cap ? b->base : NULL, ncap);
  if (p == NULL)
    return SP_ERR_NOMEM;
  if (!b->cap)
    p[0] = '\0';
  b->base = p;
  b->cap = ncap;
  return 0;
}

int sp_buf_add(sp_buf *b, const void *data, size_t n) {
  int rc = sp_buf_grow(b, n);
  if (rc)
    return rc;
  memcpy(b->base + b->len, data, n);
  b->len += n;
  b->base[b->len] = '\0';
  return 0;
}

int sp_buf_adds(sp_buf *b, const char *s) { return sp_buf_add(b, s, strlen(s)); }

int sp_buf_vaddf(sp_buf *b, const char *fmt, va_list ap) {
  va_list cp;
  va_copy(cp, ap);
  char small[256];
  int n = vsnprintf(small, sizeof small, fmt, cp);
  va_end(cp);
  if (n < 0)
    return SP_ERR_INVAL;
  if ((size_t)n < sizeof small)
    return sp_buf_add(b, small, (size_t)n);
  int rc = sp_buf_grow(b, (size_t)n);
  if (rc)
    return rc;
  vsnprintf(b->base + b->len, (size_t)n + 1, fmt, ap);
  b->len += (size_t)n;
  return 0;
}

int sp_buf_addf(sp_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = sp_buf_vaddf(b, fmt, ap);
  va_end(ap);
  return rc;
}

int sp_buf_add_json_str(sp_buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t start = b->len;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[6];
    const char *out = NULL;
    size_t olen = 0;
    switch (c) {
    case '"': out = "\\\""; olen = 2; break;
    case '\\': out = "\\\\"; olen = 2; break;
    case '\n': out = "\\n"; olen = 2; break;
    case '\r': out = "\\r"; olen = 2; break;
    case '\t': out = "\\t"; olen = 2; break;
    default:
      if (c < 0x20 || c == 0x7f) {
        esc[0] = '\\'; esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
        esc[4] = hex[c >> 4]; esc[5] = hex[c & 15];
        out = esc;
        olen = 6;
      }
    }
    int rc;
    if (out)
      rc = sp_buf_add(b, out, olen);
    else
      rc = sp_buf_add(b, &s[i], 1);
    if (rc) {
      b->len = start; /* leave the buffer as it was */
      if (b->cap)
        b->base[start] = '\0';
      return rc;
    }
  }
  return 0;
}

void sp_buf_consume(sp_buf *b, size_t n) {
  if (n >= b->len) {
    sp_buf_reset(b);
    return;
  }
  memmove(b->base, b->base + n, b->len - n);
  b->len -= n;
  b->base[b->len] = '\0';
}

char *sp_buf_detach(sp_buf *b, size_t *len_out) {
  char *p;
  if (b->cap) {
    p = b->base;
  } else {
    p = sp_malloc(1);
    if (p == NULL)
      return NULL;
    p[0] = '\0';
  }
  if (len_out)
    *len_out = b->len;
  sp_buf_init(b, b->max);
  return p;
}
