/* crdt_vclock: vector clocks over region ids (dense, CRDT_MAX_REGIONS wide)
 * and their compact binary encoding. */
#include "internal.h"

#define VCLOCK_VERSION 1

void crdt_vclock_init(crdt_vclock *v) { memset(v, 0, sizeof *v); }

void crdt_vclock_merge(crdt_vclock *dst, const crdt_vclock *src) {
  for (int i = 0; i < CRDT_MAX_REGIONS; i++)
    if (src->seq[i] > dst->seq[i])
      dst->seq[i] = src->seq[i];
}

void crdt_vclock_min(crdt_vclock *dst, const crdt_vclock *src) {
  for (int i = 0; i < CRDT_MAX_REGIONS; i++)
    if (src->seq[i] < dst->seq[i])
      dst->seq[i] = src->seq[i];
}

crdt_order crdt_vclock_compare(const crdt_vclock *a, const crdt_vclock *b) {
  int less = 0, greater = 0;
  for (int i = 0; i < CRDT_MAX_REGIONS; i++) {
    if (a->seq[i] < b->seq[i])
      less = 1;
    else if (a->seq[i] > b->seq[i])
      greater = 1;
  }
  if (less && greater)
    return CRDT_CONCURRENT;
  if (less)
    return CRDT_BEFORE;
  if (greater)
    return CRDT_AFTER;
  return CRDT_EQUAL;
}

uint64_t crdt_vclock_increment(crdt_vclock *v, crdt_region r) {
  if (r >= CRDT_MAX_REGIONS)
    return 0;
  return ++v->seq[r];
}

int crdt_vclock_covers(const crdt_vclock *v, crdt_region r, uint64_t seq) {
  return r < CRDT_MAX_REGIONS && v->seq[r] >= seq;
}

size_t crdt_vclock_encoded_size(const crdt_vclock *v) {
  size_t n = 2;
  for (int i = 0; i < CRDT_MAX_REGIONS; i++)
    if (v->seq[i])
      n += 1 + crdt__varint_len(v->seq[i]);
  return n;
}

int crdt_vclock_encode(const crdt_vclock *v, uint8_t *out, size_t cap) {
  size_t need = crdt_vclock_encoded_size(v);
  if (cap < need)
    return SP_ERR_TOOBIG;
  size_t n = 0, count = 0;
  for (int i = 0; i < CRDT_MAX_REGIONS; i++)
    count += v->seq[i] != 0;
  out[n++] = VCLOCK_VERSION;
  out[n++] = (uint8_t)count; /* <= 64 */
  for (int i = 0; i < CRDT_MAX_REGIONS; i++) {
    if (!v->seq[i])
      continue;
    out[n++] = (uint8_t)i;
    n += crdt__varint_put(out + n, v->seq[i]);
  }
  return (int)n;
}

int crdt_vclock_decode(crdt_vclock *v, const uint8_t *in, size_t len) {
  if (len < 2)
    return SP_ERR_PARSE;
  if (in[0] != VCLOCK_VERSION)
    return SP_ERR_PROTO;
  size_t count = in[1], pos = 2;
  if (count > CRDT_MAX_REGIONS)
    return SP_ERR_PARSE;
  crdt_vclock tmp;
  crdt_vclock_init(&tmp);
  int prev = -1;
  for (size_t k = 0; k < count; k++) {
    if (pos >= len)
      return SP_ERR_PARSE;
    int r = in[pos++];
    if (r >= CRDT_MAX_REGIONS || r <= prev)
      return SP_ERR_PARSE; /* out of range, duplicate or unsorted */
    uint64_t s;
    size_t used = crdt__varint_get(in + pos, len - pos, &s);
    if (used == 0 || s == 0)
      return SP_ERR_PARSE;
    pos += used;
    tmp.seq[r] = s;
    prev = r;
  }
  if (pos != len)
    return SP_ERR_PARSE;
  *v = tmp;
  return 0;
}
