/* crdt_delta: a list of field-level changes that owns its strings, and its
 * binary encoding.
 *
 * Strings and values live in an arena of chunks (a chunk is never moved, so
 * the pointers in the change array stay valid while changes are added).
 * Encoding, version 1:
 *   "CDL" version(1) varint(count)
 *   per change: kind(1) str(page) str(type) str(id)
 *     FIELD: str(field) null(1) [varint(len) bytes]
 *     varint(cl)
 *     hlc(8, little endian) varint(region) varint(origin) varint(seq)
 *   str = varint(len 1..CRDT_MAX_NAME) bytes
 * The decoder checks every length against the bytes that remain before it
 * reads, and leaves the delta as it was when anything is wrong. */
#include "internal.h"

#define DELTA_MAGIC "CDL"
#define DELTA_VERSION 1
#define CHUNK_SIZE 65536

typedef struct chunk {
  struct chunk *prev;
  size_t used, cap;
  uint8_t data[];
} chunk;

struct crdt_delta {
  const crdt_allocator *a;
  crdt_change *changes;
  size_t count, cap;
  chunk *top; /* newest chunk */
};

int crdt_delta_new(const crdt_allocator *a, crdt_delta **out) {
  a = crdt__alloc_or_default(a);
  crdt_delta *d = crdt__malloc(a, sizeof *d);
  if (d == NULL)
    return SP_ERR_NOMEM;
  memset(d, 0, sizeof *d);
  d->a = a;
  *out = d;
  return 0;
}

/* Frees chunks newer than `keep` and rewinds `keep` to `used`. */
static void arena_rewind(crdt_delta *d, chunk *keep, size_t used) {
  while (d->top && d->top != keep) {
    chunk *p = d->top->prev;
    crdt__free(d->a, d->top);
    d->top = p;
  }
  if (d->top)
    d->top->used = used;
}

void crdt_delta_clear(crdt_delta *d) {
  arena_rewind(d, NULL, 0);
  d->count = 0;
}

void crdt_delta_free(crdt_delta *d) {
  if (d == NULL)
    return;
  crdt_delta_clear(d);
  crdt__free(d->a, d->changes);
  crdt__free(d->a, d);
}

size_t crdt_delta_count(const crdt_delta *d) { return d->count; }

const crdt_change *crdt_delta_get(const crdt_delta *d, size_t i) {
  return i < d->count ? &d->changes[i] : NULL;
}

static void *arena_alloc(crdt_delta *d, size_t n) {
  if (d->top == NULL || d->top->cap - d->top->used < n) {
    size_t cap = n > CHUNK_SIZE ? n : CHUNK_SIZE;
    chunk *c = crdt__malloc(d->a, sizeof *c + cap);
    if (c == NULL)
      return NULL;
    c->prev = d->top;
    c->used = 0;
    c->cap = cap;
    d->top = c;
  }
  void *p = d->top->data + d->top->used;
  d->top->used += n;
  return p;
}

static int reserve_change(crdt_delta *d) {
  if (d->count < d->cap)
    return 0;
  size_t ncap = d->cap ? d->cap * 2 : 16;
  crdt_change *p = crdt__realloc(d->a, d->changes, ncap * sizeof *p);
  if (p == NULL)
    return SP_ERR_NOMEM;
  d->changes = p;
  d->cap = ncap;
  return 0;
}

/* Copies c's strings and value into one arena block; c is already valid. */
static int add_valid(crdt_delta *d, const crdt_change *c, size_t lp, size_t lt, size_t li,
                     size_t lf) {
  if (reserve_change(d))
    return SP_ERR_NOMEM;
  size_t vlen = c->kind == CRDT_FIELD && !c->value_null ? c->value_len : 0;
  size_t need = lp + lt + li + lf + 4 + vlen;
  char *p = arena_alloc(d, need);
  if (p == NULL)
    return SP_ERR_NOMEM;
  crdt_change *n = &d->changes[d->count];
  *n = *c;
  memcpy(p, c->page, lp + 1);
  n->page = p;
  p += lp + 1;
  memcpy(p, c->type, lt + 1);
  n->type = p;
  p += lt + 1;
  memcpy(p, c->id, li + 1);
  n->id = p;
  p += li + 1;
  if (c->kind == CRDT_FIELD) {
    memcpy(p, c->field, lf + 1);
    n->field = p;
    p += lf + 1;
    if (c->value_null) {
      n->value = NULL;
      n->value_len = 0;
    } else {
      if (vlen)
        memcpy(p, c->value, vlen);
      n->value = (const uint8_t *)p;
    }
  } else {
    n->field = NULL;
    n->value = NULL;
    n->value_len = 0;
    n->value_null = 0;
  }
  d->count++;
  return 0;
}

int crdt_delta_add(crdt_delta *d, const crdt_change *c) {
  size_t l[4];
  int rc = crdt__check_change(c, l);
  if (rc)
    return rc;
  return add_valid(d, c, l[0], l[1], l[2], l[3]);
}

/* ---- encoding ------------------------------------------------------------- */

static size_t str_size(const char *s) {
  size_t n = strlen(s);
  return crdt__varint_len(n) + n;
}

static uint8_t *put_str(uint8_t *p, const char *s) {
  size_t n = strlen(s);
  p += crdt__varint_put(p, n);
  memcpy(p, s, n);
  return p + n;
}

int crdt_delta_encode(const crdt_delta *d, uint8_t **out, size_t *out_len) {
  size_t size = 4 + crdt__varint_len(d->count);
  for (size_t i = 0; i < d->count; i++) {
    const crdt_change *c = &d->changes[i];
    size += 1 + str_size(c->page) + str_size(c->type) + str_size(c->id) + 8 +
            crdt__varint_len(c->stamp.region) + crdt__varint_len(c->origin) +
            crdt__varint_len(c->seq);
    if (c->kind == CRDT_FIELD)
      size += str_size(c->field) + 1 +
              (c->value_null ? 0 : crdt__varint_len(c->value_len) + c->value_len);
    size += crdt__varint_len(c->cl);
  }
  uint8_t *buf = crdt__malloc(d->a, size);
  if (buf == NULL)
    return SP_ERR_NOMEM;
  uint8_t *p = buf;
  memcpy(p, DELTA_MAGIC, 3);
  p[3] = DELTA_VERSION;
  p += 4;
  p += crdt__varint_put(p, d->count);
  for (size_t i = 0; i < d->count; i++) {
    const crdt_change *c = &d->changes[i];
    *p++ = (uint8_t)c->kind;
    p = put_str(p, c->page);
    p = put_str(p, c->type);
    p = put_str(p, c->id);
    if (c->kind == CRDT_FIELD) {
      p = put_str(p, c->field);
      *p++ = (uint8_t)(c->value_null ? 1 : 0);
      if (!c->value_null) {
        p += crdt__varint_put(p, c->value_len);
        if (c->value_len)
          memcpy(p, c->value, c->value_len);
        p += c->value_len;
      }
    }
    p += crdt__varint_put(p, c->cl);
    for (int b = 0; b < 8; b++)
      *p++ = (uint8_t)(c->stamp.hlc >> (8 * b));
    p += crdt__varint_put(p, c->stamp.region);
    p += crdt__varint_put(p, c->origin);
    p += crdt__varint_put(p, c->seq);
  }
  *out = buf;
  *out_len = (size_t)(p - buf);
  return 0;
}

/* ---- decoding ------------------------------------------------------------- */

typedef struct reader {
  const uint8_t *p;
  size_t left;
} reader;

static int rd_varint(reader *r, uint64_t *v) {
  size_t n = crdt__varint_get(r->p, r->left, v);
  if (n == 0)
    return SP_ERR_PARSE;
  r->p += n;
  r->left -= n;
  return 0;
}

/* A name: copied NUL-terminated into buf (CRDT_MAX_NAME + 1 bytes). */
static int rd_name(reader *r, char *buf, size_t *len) {
  uint64_t n;
  if (rd_varint(r, &n))
    return SP_ERR_PARSE;
  if (n == 0 || n > CRDT_MAX_NAME || n > r->left)
    return SP_ERR_PARSE;
  memcpy(buf, r->p, n);
  buf[n] = '\0';
  if (memchr(buf, '\0', n))
    return SP_ERR_PARSE;
  r->p += n;
  r->left -= n;
  *len = n;
  return 0;
}

int crdt_delta_decode(crdt_delta *d, const uint8_t *in, size_t len) {
  if (len < 4 || memcmp(in, DELTA_MAGIC, 3) != 0)
    return len < 4 ? SP_ERR_PARSE : SP_ERR_PROTO;
  if (in[3] != DELTA_VERSION)
    return SP_ERR_PROTO;
  reader r = {in + 4, len - 4};
  uint64_t count;
  if (rd_varint(&r, &count))
    return SP_ERR_PARSE;
  /* Each change takes at least 16 bytes: a count beyond that is a lie. */
  if (count > CRDT_MAX_DELTA_CHANGES || count > r.left / 16)
    return SP_ERR_PARSE;

  size_t old_count = d->count;
  chunk *old_top = d->top;
  size_t old_used = d->top ? d->top->used : 0;
  int rc = 0;
  for (uint64_t i = 0; i < count; i++) {
    char page[CRDT_MAX_NAME + 1], type[CRDT_MAX_NAME + 1], id[CRDT_MAX_NAME + 1];
    char field[CRDT_MAX_NAME + 1];
    size_t lp, lt, li, lf = 0;
    crdt_change c;
    memset(&c, 0, sizeof c);
    if (r.left < 1) {
      rc = SP_ERR_PARSE;
      goto fail;
    }
    c.kind = (crdt_change_kind)*r.p++;
    r.left--;
    if (c.kind != CRDT_FIELD && c.kind != CRDT_EXIST) {
      rc = SP_ERR_PARSE;
      goto fail;
    }
    if ((rc = rd_name(&r, page, &lp)) || (rc = rd_name(&r, type, &lt)) ||
        (rc = rd_name(&r, id, &li)))
      goto fail;
    c.page = page;
    c.type = type;
    c.id = id;
    uint64_t v;
    if (c.kind == CRDT_FIELD) {
      if ((rc = rd_name(&r, field, &lf)))
        goto fail;
      c.field = field;
      if (r.left < 1 || *r.p > 1) {
        rc = SP_ERR_PARSE;
        goto fail;
      }
      c.value_null = *r.p++;
      r.left--;
      if (!c.value_null) {
        if ((rc = rd_varint(&r, &v)))
          goto fail;
        if (v > CRDT_MAX_VALUE || v > r.left) {
          rc = v > CRDT_MAX_VALUE ? SP_ERR_TOOBIG : SP_ERR_PARSE;
          goto fail;
        }
        c.value = r.p;
        c.value_len = (size_t)v;
        r.p += v;
        r.left -= v;
      }
    }
    if ((rc = rd_varint(&r, &v)))
      goto fail;
    if (v == 0 || v > UINT32_MAX) {
      rc = SP_ERR_PARSE;
      goto fail;
    }
    c.cl = (uint32_t)v;
    if (r.left < 8) {
      rc = SP_ERR_PARSE;
      goto fail;
    }
    for (int b = 0; b < 8; b++)
      c.stamp.hlc |= (uint64_t)r.p[b] << (8 * b);
    r.p += 8;
    r.left -= 8;
    uint64_t region, origin;
    if ((rc = rd_varint(&r, &region)) || (rc = rd_varint(&r, &origin)) ||
        (rc = rd_varint(&r, &c.seq)))
      goto fail;
    if (region >= CRDT_MAX_REGIONS || origin >= CRDT_MAX_REGIONS) {
      rc = SP_ERR_PARSE;
      goto fail;
    }
    c.stamp.region = (crdt_region)region;
    c.origin = (crdt_region)origin;
    size_t lens[4];
    if ((rc = crdt__check_change(&c, lens))) {
      rc = rc == SP_ERR_NOMEM ? rc : SP_ERR_PARSE;
      goto fail;
    }
    if ((rc = add_valid(d, &c, lp, lt, li, lf)))
      goto fail;
  }
  if (r.left != 0) {
    rc = SP_ERR_PARSE;
    goto fail;
  }
  return 0;

fail:
  d->count = old_count;
  arena_rewind(d, old_top, old_used);
  return rc;
}
