/* crdt/internal.h: helpers shared by the crdt/ files (allocation through the
 * injected allocator, varints, string hashing).  Not part of the public API. */
#ifndef CRDT_INTERNAL_H
#define CRDT_INTERNAL_H

#include "crdt.h"

#include <string.h>

/* The allocator in use: the caller's, or the default (malloc/realloc/free). */
const crdt_allocator *crdt__alloc_or_default(const crdt_allocator *a);

static inline void *crdt__malloc(const crdt_allocator *a, size_t n) {
  return a->malloc(n ? n : 1, a->ctx);
}
static inline void *crdt__realloc(const crdt_allocator *a, void *p, size_t n) {
  return a->realloc(p, n ? n : 1, a->ctx);
}
static inline void crdt__free(const crdt_allocator *a, void *p) {
  if (p)
    a->free(p, a->ctx);
}

/* LEB128 varints.  put returns bytes written (cap must allow 10); get returns
 * bytes read, or 0 when truncated, overflowing 64 bits or not minimal (so
 * each value has one encoding and encodings are canonical). */
size_t crdt__varint_put(uint8_t *out, uint64_t v);
size_t crdt__varint_get(const uint8_t *in, size_t len, uint64_t *v);
size_t crdt__varint_len(uint64_t v);

/* A fast, non-cryptographic hash over bytes, continuing from h (start with
 * CRDT__HASH_INIT); reads 8 bytes at a time.  Only for the in-memory tables:
 * digests use SHA-256. */
#define CRDT__HASH_INIT 0x243f6a8885a308d3ull
static inline uint64_t crdt__hash(uint64_t h, const void *p, size_t n) {
  const unsigned char *s = p;
  size_t len = n;
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, s, 8);
    h = (h ^ w) * 0x9e3779b97f4a7c15ull;
    h ^= h >> 32;
    s += 8;
    n -= 8;
  }
  uint64_t w = 0;
  memcpy(&w, s, n);
  h = (h ^ w ^ ((uint64_t)len << 56)) * 0x9e3779b97f4a7c15ull;
  return h ^ (h >> 29);
}

/* Validates a name: non-NULL, 1..CRDT_MAX_NAME bytes, no control bytes.
 * 0, SP_ERR_INVAL or SP_ERR_TOOBIG. */
int crdt__check_name(const char *s, size_t *len_out);
/* Validates a change's shape (names, kind, regions, value size) and gives
 * the lengths of page, type, id and field (0 for CRDT_EXIST) in lens. */
int crdt__check_change(const crdt_change *c, size_t lens[4]);

#endif
