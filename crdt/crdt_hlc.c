/* crdt_hlc: the hybrid logical clock, stamps and their total order.
 *
 * A stamp is 48 bits of wall milliseconds and a 16-bit logical counter.  The
 * clock never goes backwards (a wall clock that steps back just makes the
 * logical part count up) and never adopts a remote stamp more than
 * max_skew_ms ahead of local wall time: such a stamp is refused so that one
 * region with a runaway clock cannot drag every other region forward. */
#include "internal.h"

#include <stdlib.h>

static void *default_malloc(size_t n, void *ctx) {
  (void)ctx;
  return malloc(n);
}
static void *default_realloc(void *p, size_t n, void *ctx) {
  (void)ctx;
  return realloc(p, n);
}
static void default_free(void *p, void *ctx) {
  (void)ctx;
  free(p);
}
static const crdt_allocator default_allocator = {default_malloc, default_realloc,
                                                 default_free, NULL};

const crdt_allocator *crdt__alloc_or_default(const crdt_allocator *a) {
  return a ? a : &default_allocator;
}

void crdt_free_bytes(const crdt_allocator *a, void *p) {
  crdt__free(crdt__alloc_or_default(a), p);
}

#define HLC_MS_MAX ((1ull << 48) - 1)

void crdt_clock_init(crdt_clock *c, uint64_t max_skew_ms, crdt_hlc start) {
  c->last = start;
  c->max_skew_ms = max_skew_ms;
}

/* The smallest stamp strictly greater than `after` and not below wall time. */
static crdt_hlc next_after(crdt_hlc after, uint64_t wall_ms) {
  if (wall_ms > HLC_MS_MAX)
    wall_ms = HLC_MS_MAX;
  if (wall_ms > CRDT_HLC_MS(after))
    return CRDT_HLC_MAKE(wall_ms, 0);
  if (CRDT_HLC_LOGICAL(after) < 0xffffu)
    return after + 1;
  /* Counter exhausted within one millisecond: borrow the next one. */
  return CRDT_HLC_MAKE(CRDT_HLC_MS(after) + 1, 0);
}

crdt_hlc crdt_clock_now(crdt_clock *c, uint64_t wall_ms) {
  c->last = next_after(c->last, wall_ms);
  return c->last;
}

int crdt_clock_check(const crdt_clock *c, crdt_hlc remote, uint64_t wall_ms) {
  if (CRDT_HLC_MS(remote) > wall_ms && CRDT_HLC_MS(remote) - wall_ms > c->max_skew_ms)
    return SP_ERR_SKEW;
  return 0;
}

int crdt_clock_observe(crdt_clock *c, crdt_hlc remote, uint64_t wall_ms) {
  int rc = crdt_clock_check(c, remote, wall_ms);
  if (rc)
    return rc;
  if (remote > c->last)
    c->last = remote;
  return 0;
}

int crdt_stamp_cmp(crdt_stamp a, crdt_stamp b) {
  if (a.hlc != b.hlc)
    return a.hlc < b.hlc ? -1 : 1;
  if (a.region != b.region)
    return a.region < b.region ? -1 : 1;
  return 0;
}

size_t crdt__varint_put(uint8_t *out, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    out[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  out[n++] = (uint8_t)v;
  return n;
}

size_t crdt__varint_len(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

size_t crdt__varint_get(const uint8_t *in, size_t len, uint64_t *v) {
  uint64_t r = 0;
  for (size_t i = 0; i < len && i < 10; i++) {
    uint64_t b = in[i] & 0x7f;
    if (i == 9 && b > 1)
      return 0; /* would overflow 64 bits */
    r |= b << (7 * i);
    if (!(in[i] & 0x80)) {
      if (i > 0 && in[i] == 0)
        return 0; /* non-minimal: every value has exactly one encoding */
      *v = r;
      return i + 1;
    }
  }
  return 0;
}

int crdt__check_name(const char *s, size_t *len_out) {
  if (s == NULL)
    return SP_ERR_INVAL;
  size_t n = 0;
  for (; s[n]; n++) {
    if (n >= CRDT_MAX_NAME)
      return SP_ERR_TOOBIG;
    if ((unsigned char)s[n] < 0x20)
      return SP_ERR_INVAL;
  }
  if (n == 0)
    return SP_ERR_INVAL;
  if (len_out)
    *len_out = n;
  return 0;
}

int crdt__check_change(const crdt_change *c, size_t lens[4]) {
  int rc;
  if ((rc = crdt__check_name(c->page, &lens[0])) || (rc = crdt__check_name(c->type, &lens[1])) ||
      (rc = crdt__check_name(c->id, &lens[2])))
    return rc;
  lens[3] = 0;
  if (c->stamp.region >= CRDT_MAX_REGIONS || c->origin >= CRDT_MAX_REGIONS)
    return SP_ERR_INVAL;
  if (c->kind == CRDT_FIELD) {
    if ((rc = crdt__check_name(c->field, &lens[3])))
      return rc;
    if (c->value_len > CRDT_MAX_VALUE)
      return SP_ERR_TOOBIG;
    if (!c->value_null && c->value_len > 0 && c->value == NULL)
      return SP_ERR_INVAL;
    return c->cl == 0 ? SP_ERR_INVAL : 0;
  }
  if (c->kind == CRDT_EXIST)
    return c->cl == 0 ? SP_ERR_INVAL : 0;
  return SP_ERR_INVAL;
}
