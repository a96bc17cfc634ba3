/* crdt_id: coordination-free, sortable entity ids.
 *
 * 62 bits = 41 bits of milliseconds since 2020-01-01 | 15-bit counter |
 * 6-bit region, printed as 12 fixed-width lowercase base-36 digits, so string
 * order is numeric order and ids from one generator ascend.  The region bits
 * make ids from different regions distinct even in the same millisecond. */
#include "internal.h"

#define ID_EPOCH_MS 1577836800000ull /* 2020-01-01T00:00:00Z */
#define ID_MS_BITS 41
#define ID_COUNTER_BITS 15
#define ID_REGION_BITS 6

static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";

int crdt_idgen_init(crdt_idgen *g, crdt_region region) {
  if (region >= (1u << ID_REGION_BITS))
    return SP_ERR_INVAL;
  g->last_ms = 0;
  g->counter = 0;
  g->region = region;
  return 0;
}

void crdt_idgen_next(crdt_idgen *g, uint64_t wall_ms, char out[CRDT_ID_LEN + 1]) {
  uint64_t ms = wall_ms > ID_EPOCH_MS ? wall_ms - ID_EPOCH_MS : 0;
  if (ms > g->last_ms) {
    g->last_ms = ms;
    g->counter = 0;
  } else if (++g->counter >= (1u << ID_COUNTER_BITS)) {
    /* counter exhausted (or the wall clock stepped back): borrow a ms */
    g->last_ms++;
    g->counter = 0;
  }
  uint64_t v = ((g->last_ms & ((1ull << ID_MS_BITS) - 1)) << (ID_COUNTER_BITS + ID_REGION_BITS)) |
               ((uint64_t)g->counter << ID_REGION_BITS) | g->region;
  for (int i = CRDT_ID_LEN - 1; i >= 0; i--) {
    out[i] = digits[v % 36];
    v /= 36;
  }
  out[CRDT_ID_LEN] = '\0';
}

int crdt_id_parse(const char *id, uint64_t *ms, uint32_t *counter, crdt_region *region) {
  uint64_t v = 0;
  for (int i = 0; i < CRDT_ID_LEN; i++) {
    char c = id[i];
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'z')
      d = c - 'a' + 10;
    else
      return SP_ERR_PARSE;
    v = v * 36 + (uint64_t)d;
  }
  if (id[CRDT_ID_LEN] != '\0' || v >> 62)
    return SP_ERR_PARSE;
  if (ms)
    *ms = (v >> (ID_COUNTER_BITS + ID_REGION_BITS)) + ID_EPOCH_MS;
  if (counter)
    *counter = (uint32_t)((v >> ID_REGION_BITS) & ((1u << ID_COUNTER_BITS) - 1));
  if (region)
    *region = (crdt_region)(v & ((1u << ID_REGION_BITS) - 1));
  return 0;
}
