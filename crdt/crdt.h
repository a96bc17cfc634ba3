/* crdt: the convergence core — hybrid logical clocks, vector clocks, LWW
 * registers and entity maps, deltas, tombstone GC, digests and ids.
 *
 * Pure C: no I/O, no event loop, no clock reads (callers pass wall time in
 * milliseconds), no globals, no logging.  Memory comes from an injectable
 * allocator (crdt_allocator; NULL means malloc/realloc/free), so tests can
 * fail each allocation in turn.  Functions return 0 or a negative sp_err
 * code (lib/sp_err.h).
 *
 * The merge rules are written down in crdt/DESIGN.md.  In short: every
 * field is a last-writer-wins register stamped (hlc, region); all fields of
 * one transaction share one stamp; an entity's existence is a causal length
 * (odd = alive), and every field write carries the causal length it was
 * written under, so a delayed update never resurrects a deleted entity, a
 * delete drops the fields of the life it ends, and an explicit re-create
 * after a delete wins; merge is commutative, associative and idempotent.
 *
 * Ownership: crdt_doc and crdt_delta own all their memory.  Pointers they
 * return (strings, values, changes) are borrowed and stay valid until the
 * next call that modifies the same object, or its _free.
 */
#ifndef CRDT_H
#define CRDT_H

#include <stddef.h>
#include <stdint.h>

#include "sp_err.h"

/* ---- allocator ---------------------------------------------------------- */
typedef struct crdt_allocator {
  void *(*malloc)(size_t size, void *ctx);
  void *(*realloc)(void *ptr, size_t size, void *ctx);
  void (*free)(void *ptr, void *ctx);
  void *ctx;
} crdt_allocator;

/* ---- limits (a change outside them is rejected with SP_ERR_TOOBIG) ------ */
#define CRDT_MAX_REGIONS 64            /* region ids are 0..63 */
#define CRDT_MAX_NAME 64               /* page, type, id and field names */
#define CRDT_MAX_VALUE (1u << 20)      /* one field value */
#define CRDT_MAX_DELTA_CHANGES 1000000 /* changes in one encoded delta */

/* ---- hybrid logical clock ----------------------------------------------- */
/* 64 bits: 48 bits of Unix milliseconds, 16 bits of logical counter. */
typedef uint64_t crdt_hlc;
#define CRDT_HLC_MS(h) ((uint64_t)(h) >> 16)
#define CRDT_HLC_LOGICAL(h) ((uint64_t)(h)&0xffffu)
#define CRDT_HLC_MAKE(ms, logical) (((uint64_t)(ms) << 16) | ((uint64_t)(logical)&0xffffu))

/* One region's clock.  A small value type the caller embeds; fields are
 * read-only outside crdt_clock_*. */
typedef struct crdt_clock {
  crdt_hlc last;        /* highest stamp issued or observed */
  uint64_t max_skew_ms; /* remote stamps further ahead of wall time are refused */
} crdt_clock;

#define CRDT_DEFAULT_MAX_SKEW_MS 500

/* Starts the clock at `start` (e.g. a persisted high-water mark, or 0). */
void crdt_clock_init(crdt_clock *c, uint64_t max_skew_ms, crdt_hlc start);
/* A new stamp for a local event or a send: greater than every stamp issued or
 * observed before, and >= wall time.  Monotonic when wall time steps back.
 * When the logical counter is exhausted the stamp moves to the next
 * millisecond. */
crdt_hlc crdt_clock_now(crdt_clock *c, uint64_t wall_ms);
/* Checks a remote stamp against wall time: 0, or SP_ERR_SKEW when its
 * physical part is more than max_skew_ms ahead of `wall_ms`.  Changes
 * nothing. */
int crdt_clock_check(const crdt_clock *c, crdt_hlc remote, uint64_t wall_ms);
/* Receive: merges a remote stamp so later local stamps sort after it.
 * Returns 0, or SP_ERR_SKEW (the clock is left untouched: one fast region
 * must not drag every region's clock forward). */
int crdt_clock_observe(crdt_clock *c, crdt_hlc remote, uint64_t wall_ms);

/* ---- stamps: the total order every replica agrees on -------------------- */
typedef uint16_t crdt_region;
typedef struct crdt_stamp {
  crdt_hlc hlc;
  crdt_region region;
} crdt_stamp;
/* <0, 0, >0 as a sorts before, equal to, after b: by hlc, then region. */
int crdt_stamp_cmp(crdt_stamp a, crdt_stamp b);

/* ---- vector clock over region ids --------------------------------------- */
/* Dense: seq[r] is the highest sequence number of region r covered. */
typedef struct crdt_vclock {
  uint64_t seq[CRDT_MAX_REGIONS];
} crdt_vclock;

typedef enum crdt_order {
  CRDT_EQUAL = 0,
  CRDT_BEFORE = 1,    /* a < b: b has seen everything a has, and more */
  CRDT_AFTER = 2,     /* a > b */
  CRDT_CONCURRENT = 3 /* neither covers the other */
} crdt_order;

void crdt_vclock_init(crdt_vclock *v);
/* Pointwise max into dst. */
void crdt_vclock_merge(crdt_vclock *dst, const crdt_vclock *src);
/* Pointwise min into dst (the causally stable point of several vectors). */
void crdt_vclock_min(crdt_vclock *dst, const crdt_vclock *src);
crdt_order crdt_vclock_compare(const crdt_vclock *a, const crdt_vclock *b);
/* Adds one to region r's entry and returns the new value; 0 for a bad r. */
uint64_t crdt_vclock_increment(crdt_vclock *v, crdt_region r);
/* 1 when the event (r, seq) is covered by v. */
int crdt_vclock_covers(const crdt_vclock *v, crdt_region r, uint64_t seq);
/* Compact encoding: version byte, count of non-zero entries, then
 * (region, seq) as varints.  crdt_vclock_encoded_size() is an upper bound
 * for the buffer.  encode returns the bytes written, or SP_ERR_TOOBIG when
 * `cap` is too small. */
size_t crdt_vclock_encoded_size(const crdt_vclock *v);
int crdt_vclock_encode(const crdt_vclock *v, uint8_t *out, size_t cap);
/* Decodes exactly `len` bytes.  0, SP_ERR_PARSE (truncated, trailing bytes,
 * region out of range, duplicate or unsorted regions, count too large) or
 * SP_ERR_PROTO (unknown version).  *v untouched on failure. */
int crdt_vclock_decode(crdt_vclock *v, const uint8_t *in, size_t len);

/* ---- changes and deltas -------------------------------------------------- */
typedef enum crdt_change_kind {
  CRDT_FIELD = 1, /* set one field of an entity (an LWW register write) */
  CRDT_EXIST = 2  /* set the entity's causal length (odd = alive) */
} crdt_change_kind;

/* One field-level change.  Strings are NUL-terminated, at most CRDT_MAX_NAME
 * bytes; all borrowed. */
typedef struct crdt_change {
  crdt_change_kind kind;
  const char *page;  /* the page the entity belongs to (its own id for a page) */
  const char *type;  /* entity type: "component", "incident", ... */
  const char *id;    /* entity id */
  const char *field; /* CRDT_FIELD: field name; NULL for CRDT_EXIST */
  const uint8_t *value; /* CRDT_FIELD: value bytes (NULL with len 0 = SQL NULL) */
  size_t value_len;
  int value_null;    /* 1 = the field is NULL */
  uint32_t cl;       /* CRDT_EXIST: the new causal length (odd = alive).
                        CRDT_FIELD: the entity's causal length when the field
                        was written (its "life"); a write from an older life
                        than the entity's current one is ignored. >= 1. */
  crdt_stamp stamp;  /* the writing transaction's stamp */
  crdt_region origin; /* region that made the change */
  uint64_t seq;       /* origin's sequence number of the change */
} crdt_change;

/* A delta: an ordered list of changes that owns copies of its strings. */
typedef struct crdt_delta crdt_delta;

int crdt_delta_new(const crdt_allocator *a, crdt_delta **out);
void crdt_delta_free(crdt_delta *d);
void crdt_delta_clear(crdt_delta *d);
/* Copies `c` into the delta.  0, SP_ERR_INVAL (missing name, kind unknown,
 * region out of range), SP_ERR_TOOBIG (name or value over the limits) or
 * SP_ERR_NOMEM (delta unchanged). */
int crdt_delta_add(crdt_delta *d, const crdt_change *c);
size_t crdt_delta_count(const crdt_delta *d);
/* The i-th change (borrowed), or NULL when i is out of range. */
const crdt_change *crdt_delta_get(const crdt_delta *d, size_t i);
/* Binary encoding (version 1).  The caller frees *out with the same
 * allocator (crdt_free_bytes).  0 or SP_ERR_NOMEM. */
int crdt_delta_encode(const crdt_delta *d, uint8_t **out, size_t *out_len);
void crdt_free_bytes(const crdt_allocator *a, void *p);
/* Appends the changes encoded in in[0..len) to d.  0, SP_ERR_PARSE
 * (truncated, oversized counts or lengths, bad field), SP_ERR_PROTO (wrong
 * magic/version), SP_ERR_TOOBIG, SP_ERR_NOMEM.  On failure d is left as it
 * was before the call. */
int crdt_delta_decode(crdt_delta *d, const uint8_t *in, size_t len);

/* ---- documents: the merged state ---------------------------------------- */
typedef struct crdt_doc crdt_doc;

/* Called for every change that altered the document, with the change as it
 * was merged (borrowed for the call).  The caller persists and publishes
 * exactly these. */
typedef void (*crdt_changed_cb)(const crdt_change *c, void *arg);

int crdt_doc_new(const crdt_allocator *a, crdt_doc **out);
void crdt_doc_free(crdt_doc *doc);
/* Declares `type` a grow-only set (incident updates): its entries are
 * created once (causal length 1) and never deleted; a change that would
 * delete or re-create one is refused with SP_ERR_INVAL.  Declare the same
 * types on every replica before merging.  0, SP_ERR_INVAL, SP_ERR_NOMEM. */
int crdt_doc_grow_only(crdt_doc *doc, const char *type);
/* Merges one change.  Returns 1 when it altered the document (the new value
 * won), 0 when it lost or was already there, or a negative code: SP_ERR_INVAL
 * (malformed change, or a delete of a grow-only entry), SP_ERR_TOOBIG,
 * SP_ERR_NOMEM (document unchanged).  Callers must not write fields of an
 * entity they know is deleted (the API answers 404); a re-create is a
 * CRDT_EXIST change with the next odd causal length. */
int crdt_doc_merge(crdt_doc *doc, const crdt_change *c);
/* Merges every change of a delta in order, calling `cb` (may be NULL) for each
 * one that altered the document.  Stops at the first error and returns it
 * (changes before it stay merged, which is safe: merge is idempotent, so the
 * whole delta can be merged again). */
int crdt_doc_merge_delta(crdt_doc *doc, const crdt_delta *d, crdt_changed_cb cb,
                         void *arg);

/* Reads.  crdt_doc_alive: 1 alive, 0 deleted or never created.
 * crdt_doc_field: 0 and the register's value/stamp (borrowed), or
 * SP_ERR_NOENT.  *value is NULL for a NULL field. */
int crdt_doc_alive(const crdt_doc *doc, const char *page, const char *type,
                   const char *id);
int crdt_doc_cl(const crdt_doc *doc, const char *page, const char *type,
                const char *id, uint32_t *cl);
int crdt_doc_field(const crdt_doc *doc, const char *page, const char *type,
                   const char *id, const char *field, const uint8_t **value,
                   size_t *len, crdt_stamp *stamp);
size_t crdt_doc_entity_count(const crdt_doc *doc);

/* One lookup for reading many fields of an entity (a rendered component
 * reads a dozen): crdt_doc_entity returns a borrowed handle, NULL when the
 * entity is unknown, valid until the next merge or GC on doc;
 * crdt_entity_field reads one of its fields as crdt_doc_field does. */
typedef struct entity crdt_entity;
const crdt_entity *crdt_doc_entity(const crdt_doc *doc, const char *page, const char *type,
                                   const char *id);
int crdt_entity_field(const crdt_entity *e, const char *field, const uint8_t **value,
                      size_t *len, crdt_stamp *stamp);

typedef void (*crdt_page_cb)(const char *page, void *arg);
typedef void (*crdt_entity_cb)(const char *type, const char *id, uint32_t cl, void *arg);

/* Secondary indexes, for reads by a field's value (e.g. the updates of one
 * incident among thousands).  crdt_doc_index declares (type, field) indexed;
 * declare on an empty document (SP_ERR_BUSY otherwise), at most 8.
 * crdt_doc_index_find calls cb for every entity of `page` whose field equals
 * value[0..len) (in no particular order; NULL fields are not indexed).
 * 0, SP_ERR_INVAL (not declared), SP_ERR_NOMEM. */
int crdt_doc_index(crdt_doc *doc, const char *type, const char *field);
int crdt_doc_index_find(crdt_doc *doc, const char *page, const char *type, const char *field,
                        const uint8_t *value, size_t len, crdt_entity_cb cb, void *arg);

/* Iteration, for building typed views.  crdt_doc_pages calls cb for every
 * page name in sorted order; crdt_doc_page_entities calls cb for every
 * entity of `page` whose type is `type` (NULL = all types), sorted by
 * (type, id), with its causal length (odd = alive).  Strings are borrowed
 * for the call.  The callbacks must not modify the document.  0,
 * SP_ERR_NOENT (unknown page) or SP_ERR_NOMEM. */
int crdt_doc_pages(crdt_doc *doc, crdt_page_cb cb, void *arg);
int crdt_doc_page_entities(crdt_doc *doc, const char *page, const char *type,
                           crdt_entity_cb cb, void *arg);

/* Every register of the document as changes (one CRDT_EXIST per entity with
 * a causal length, one CRDT_FIELD per field), in a stable order: the state
 * as a delta, for snapshots and for comparing states in tests.  0 or
 * SP_ERR_NOMEM. */
int crdt_doc_export(const crdt_doc *doc, crdt_delta *out);

/* ---- tombstone garbage collection ---------------------------------------- */
/* A tombstone is an entity whose causal length is even (deleted).  It may be
 * forgotten only at causal stability: when every region has acknowledged the
 * delete AND every write that any region made before it saw the delete.  The
 * second half is tracked with a barrier: the first time the acknowledged
 * vectors of all regions cover the delete, the tombstone records each
 * region's own sequence number (acks[r].seq[r]); it is collected once every
 * region has acknowledged every region's writes up to that barrier.  Region
 * ids of the participants must be 0..n-1.  See crdt/DESIGN.md.
 *
 * crdt_doc_gc(doc, acks, n, cb, arg): acks[i] is region i's acknowledged
 * vector (what it has durably applied, including its own writes), n the
 * number of regions (1..CRDT_MAX_REGIONS).  Collects every tombstone that is
 * stable, calling cb (may be NULL) with its CRDT_EXIST change before it is
 * dropped.  Returns the number collected (>= 0) or SP_ERR_INVAL. */
int crdt_doc_gc(crdt_doc *doc, const crdt_vclock *acks, size_t n, crdt_changed_cb cb,
                void *arg);
/* Declares that tombstones of `type` are never collected: for types whose
 * ids are chosen rather than generated (a page id a user picks, a claim
 * keyed by a domain name), so the same id can be created again.  A create
 * (causal length 1) made after one replica collected the tombstone would
 * lose to the tombstone on a replica that has not collected it yet.
 * Declare the same types on every replica.  0, SP_ERR_INVAL, SP_ERR_NOMEM. */
int crdt_doc_gc_keep(crdt_doc *doc, const char *type);

/* ---- digests --------------------------------------------------------------- */
#define CRDT_DIGEST_LEN 32
/* SHA-256 over the canonical form of the whole merged state (every entity,
 * live or tombstone, with its stamps).  Equal on two replicas iff their
 * states are equal.  Computed from cached per-page digests. 0 or NOMEM. */
int crdt_doc_digest(crdt_doc *doc, uint8_t out[CRDT_DIGEST_LEN]);
/* The digest of one page's entities; SP_ERR_NOENT when the page is unknown. */
int crdt_doc_page_digest(crdt_doc *doc, const char *page, uint8_t out[CRDT_DIGEST_LEN]);
/* Calls cb for every page, in sorted order, with its digest: the first level
 * of the tree, so two regions can find the pages where they differ. */
typedef void (*crdt_page_digest_cb)(const char *page, const uint8_t digest[CRDT_DIGEST_LEN],
                                    void *arg);
int crdt_doc_page_digests(crdt_doc *doc, crdt_page_digest_cb cb, void *arg);
/* Calls cb for every entity of a page, sorted by (type, id), with its digest:
 * the second level. */
typedef void (*crdt_entity_digest_cb)(const char *type, const char *id,
                                      const uint8_t digest[CRDT_DIGEST_LEN], void *arg);
int crdt_doc_entity_digests(crdt_doc *doc, const char *page, crdt_entity_digest_cb cb,
                            void *arg);

/* ---- ids ----------------------------------------------------------------- */
/* Globally unique, sortable ids without coordination: 41 bits of
 * milliseconds since 2020-01-01, a 15-bit counter, a 6-bit region, written as
 * 12 lowercase base-36 characters (Statuspage's id shape).  Later ids from
 * one generator sort after earlier ones, even when wall time steps back. */
#define CRDT_ID_LEN 12
typedef struct crdt_idgen {
  uint64_t last_ms;
  uint32_t counter;
  crdt_region region;
} crdt_idgen;

/* 0 or SP_ERR_INVAL (region >= CRDT_MAX_REGIONS). */
int crdt_idgen_init(crdt_idgen *g, crdt_region region);
/* Writes CRDT_ID_LEN characters and a NUL into out. */
void crdt_idgen_next(crdt_idgen *g, uint64_t wall_ms, char out[CRDT_ID_LEN + 1]);
/* Parses an id back into its parts: 0 or SP_ERR_PARSE. */
int crdt_id_parse(const char *id, uint64_t *ms, uint32_t *counter, crdt_region *region);

#endif
