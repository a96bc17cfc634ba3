/* api_form: Rails-style application/x-www-form-urlencoded bodies -> JSON
 * (rules in form.h).
 *
 * Each pair is decoded into one scratch buffer (sp_malloc'd, freed before
 * returning); the key is then split into its segments in place and the
 * value stored as a JSON string in the tree the caller receives.  Nothing
 * here keeps state between calls.
 */
#include "form.h"

#include <stdio.h>
#include <string.h>

#include "sp_alloc.h"
#include "sp_err.h"

static int hexval(unsigned char ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

/* Decodes in[0..n) into out ('+' and %XX); out has room for n+1 bytes.
 * Returns the decoded length, or -1 for a stray '%' or %00. */
static long decode(const char *in, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)in[i];
    if (ch == '+') {
      out[o++] = ' ';
    } else if (ch == '%') {
      if (i + 2 >= n)
        return -1;
      int h = hexval((unsigned char)in[i + 1]), l = hexval((unsigned char)in[i + 2]);
      if (h < 0 || l < 0 || (h == 0 && l == 0))
        return -1;
      out[o++] = (char)(h * 16 + l);
      i += 2;
    } else {
      out[o++] = (char)ch;
    }
  }
  out[o] = '\0';
  return (long)o;
}

/* 1 when s[0..n) is well-formed UTF-8 (no overlongs, no surrogates). */
static int utf8_ok(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    size_t k;
    unsigned cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      k = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      k = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      k = 3;
      cp = c & 0x07;
    } else {
      return 0;
    }
    if (i + k >= n)
      return 0;
    for (size_t j = 1; j <= k; j++) {
      if ((s[i + j] & 0xC0) != 0x80)
        return 0;
      cp = (cp << 6) | (s[i + j] & 0x3F);
    }
    if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += k + 1;
  }
  return 1;
}

typedef struct form_err {
  char *err, *field;
  size_t errlen, fieldlen;
} form_err;

static int fail(form_err *e, int rc, const char *key, const char *fmt, const char *detail) {
  if (e->err && e->errlen) {
    char msg[160];
    snprintf(msg, sizeof msg, fmt, detail);
    snprintf(e->err, e->errlen, "malformed form key '%.*s': %s", 60, key ? key : "", msg);
  }
  if (e->field && e->fieldlen)
    snprintf(e->field, e->fieldlen, "%s", key ? key : "");
  return rc;
}

/* Stores one decoded pair.  `key` is modified (split into segments). */
static int store(json_t *root, char *key, const char *value, size_t vlen, form_err *e) {
  char shown[128];
  snprintf(shown, sizeof shown, "%s", key);
  char *segs[API_FORM_MAX_DEPTH];
  int nseg = 0, append = 0;
  char *p = strchr(key, '[');
  if (p == key)
    return fail(e, SP_ERR_PARSE, shown, "%s", "the name before '[' is empty");
  if (key[0] == '\0')
    return fail(e, SP_ERR_PARSE, shown, "%s", "empty key");
  segs[nseg++] = key;
  while (p) {
    *p++ = '\0';
    char *close = strchr(p, ']');
    if (close == NULL)
      return fail(e, SP_ERR_PARSE, shown, "%s", "unclosed '['");
    *close = '\0';
    if (append)
      return fail(e, SP_ERR_PARSE, shown, "%s", "'[]' must be the last segment");
    if (*p == '\0')
      append = 1;
    else if (strchr(p, '['))
      return fail(e, SP_ERR_PARSE, shown, "%s", "'[' inside brackets");
    else if (nseg == API_FORM_MAX_DEPTH)
      return fail(e, SP_ERR_TOOBIG, shown, "more than %s nested segments", "8");
    else
      segs[nseg++] = p;
    p = close + 1;
    if (*p == '\0')
      break;
    if (*p != '[')
      return fail(e, SP_ERR_PARSE, shown, "%s", "text after ']'");
  }
  json_t *cur = root;
  for (int i = 0; i < nseg - 1; i++) {
    json_t *child = json_object_get(cur, segs[i]);
    if (child == NULL) {
      child = json_object();
      if (child == NULL || json_object_set_new(cur, segs[i], child))
        return SP_ERR_NOMEM;
    } else if (!json_is_object(child)) {
      return fail(e, SP_ERR_PARSE, shown, "%s", "used both as a value and as an object");
    }
    cur = child;
  }
  const char *name = segs[nseg - 1];
  json_t *old = json_object_get(cur, name);
  if (append) {
    if (old == NULL) {
      old = json_array();
      if (old == NULL || json_object_set_new(cur, name, old))
        return SP_ERR_NOMEM;
    } else if (!json_is_array(old)) {
      return fail(e, SP_ERR_PARSE, shown, "%s", "used both as a value and as a list");
    }
    if (vlen == 0)
      return 0;
    if (json_array_size(old) >= API_FORM_MAX_PAIRS)
      return fail(e, SP_ERR_TOOBIG, shown, "%s", "too many list items");
    json_t *v = json_stringn(value, vlen);
    if (v == NULL || json_array_append_new(old, v))
      return SP_ERR_NOMEM;
    return 0;
  }
  if (old && (json_is_object(old) || json_is_array(old)))
    return fail(e, SP_ERR_PARSE, shown, "%s", "used both as a value and as an object or list");
  json_t *v = json_stringn(value, vlen);
  if (v == NULL || json_object_set_new(cur, name, v))
    return SP_ERR_NOMEM;
  return 0;
}

int api_form_parse(const char *body, size_t len, json_t **out, char *err, size_t errlen,
                   char *field, size_t fieldlen) {
  form_err e = {err, field, errlen, fieldlen};
  if (err && errlen)
    err[0] = '\0';
  if (field && fieldlen)
    field[0] = '\0';
  json_t *root = json_object();
  if (root == NULL)
    return SP_ERR_NOMEM;
  char *buf = sp_malloc(len + 2);
  if (buf == NULL) {
    json_decref(root);
    return SP_ERR_NOMEM;
  }
  int rc = 0;
  size_t pairs = 0, i = 0;
  while (i < len && rc == 0) {
    const char *start = body + i;
    const char *amp = memchr(start, '&', len - i);
    size_t plen = amp ? (size_t)(amp - start) : len - i;
    i += plen + 1;
    if (plen == 0)
      continue;
    if (++pairs > API_FORM_MAX_PAIRS) {
      rc = fail(&e, SP_ERR_TOOBIG, "", "%s", "more than 10000 pairs");
      break;
    }
    const char *eq = memchr(start, '=', plen);
    size_t klen = eq ? (size_t)(eq - start) : plen;
    /* key and value decoded into one buffer: key, NUL, value, NUL */
    long kd = decode(start, klen, buf);
    if (kd < 0) {
      char raw[64];
      snprintf(raw, sizeof raw, "%.*s", (int)(klen < 60 ? klen : 60), start);
      rc = fail(&e, SP_ERR_PARSE, raw, "%s", "bad percent-encoding");
      break;
    }
    char *val = buf + kd + 1;
    long vd = eq ? decode(eq + 1, plen - klen - 1, val) : 0;
    if (!eq)
      val[0] = '\0';
    if (vd < 0) {
      rc = fail(&e, SP_ERR_PARSE, buf, "%s", "bad percent-encoding in the value");
      break;
    }
    if (!utf8_ok((const unsigned char *)buf, (size_t)kd) ||
        !utf8_ok((const unsigned char *)val, (size_t)vd)) {
      rc = fail(&e, SP_ERR_PARSE, utf8_ok((const unsigned char *)buf, (size_t)kd) ? buf : "",
                "%s", "not valid UTF-8");
      break;
    }
    rc = store(root, buf, val, (size_t)vd, &e);
  }
  sp_free(buf);
  if (rc) {
    if (rc == SP_ERR_NOMEM && err && errlen)
      snprintf(err, errlen, "out of memory");
    json_decref(root);
    return rc;
  }
  *out = root;
  return 0;
}
