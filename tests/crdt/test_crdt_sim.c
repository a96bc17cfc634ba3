/* Deterministic simulation of crdt/ replicas (FoundationDB-style): seeded,
 * reproducible schedules of 3 to 5 replicas writing, deleting, re-creating
 * and editing shared entities while a simulated network delivers their
 * transactions late, out of order, twice or not at all (then re-sent); wall
 * clocks are skewed and stepped back, and in some schedules one rogue region
 * runs far in the future.  Receivers refuse the rogue's stamps while they are
 * beyond the skew bound, and their own clocks must never be dragged forward.
 * After full delivery every replica must have the same digest and exactly
 * the state of a reference computed independently from all writes by the
 * total order.  Tombstones are collected mid-run at causal stability.
 *
 * The failing seed is printed; rerun one with CRDT_SIM_SEED=<seed>
 * CRDT_SIM_SCHEDULES=1.  CRDT_SIM_SCHEDULES sets the count (default 10000).
 *
 * A second test checks commutativity, associativity and idempotence of the
 * state join on random pairs and triples of states. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crdt.h"

/* ---- deterministic PRNG ------------------------------------------------- */
typedef struct rng {
  uint64_t s;
} rng;
static uint64_t next_u64(rng *r) {
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static uint32_t below(rng *r, uint32_t n) { return (uint32_t)(next_u64(r) % n); }
static int chance(rng *r, uint32_t percent) { return below(r, 100) < percent; }

/* ---- the simulated world -------------------------------------------------- */
#define MAX_REPLICAS 5
#define MAX_MSGS 512
#define MAX_KNOWN 64
#define SKEW_MS 500
#define BASE_WALL 1790000000000ull

typedef struct msg {
  int origin;
  uint64_t first_seq, last_seq;
  crdt_delta *d;
} msg;

typedef struct replica {
  crdt_doc *doc;
  crdt_clock clk;
  crdt_idgen ids;
  int64_t offset; /* wall = T + offset */
  int rogue;
  uint64_t seq;   /* own sequence numbers issued */
  /* applied[o][s] = 1 when seq s of origin o has been applied (dedup) */
  uint8_t applied[MAX_REPLICAS][MAX_MSGS * 8];
  crdt_vclock vv; /* highest contiguous seq applied per origin */
} replica;

typedef struct pending {
  int target, msg;
} pending;

typedef struct world {
  rng r;
  int n;
  uint64_t T;
  replica rep[MAX_REPLICAS];
  msg msgs[MAX_MSGS];
  int nmsgs;
  pending pend[MAX_MSGS * MAX_REPLICAS * 2];
  int npend;
  int64_t max_normal_offset;
  int gc_runs, gc_collected, skew_rejects;
} world;

static uint64_t wall(const world *w, int i) {
  return (uint64_t)((int64_t)w->T + w->rep[i].offset);
}

static void update_vv(replica *rp, int origin) {
  uint64_t s = rp->vv.seq[origin];
  while (s + 1 < MAX_MSGS * 8 && rp->applied[origin][s + 1])
    s++;
  rp->vv.seq[origin] = s;
}

/* Delivers message m to replica t: 1 applied, 0 duplicate skipped, -1 refused
 * for skew (left for a later re-send). */
static int deliver(world *w, int t, int m) {
  replica *rp = &w->rep[t];
  msg *mg = &w->msgs[m];
  if (rp->applied[mg->origin][mg->first_seq])
    return 0; /* already applied: the receiver's dedup by origin seq */
  uint64_t now = wall(w, t);
  size_t n = crdt_delta_count(mg->d);
  for (size_t i = 0; i < n; i++)
    if (crdt_clock_check(&rp->clk, crdt_delta_get(mg->d, i)->stamp.hlc, now) == SP_ERR_SKEW) {
      w->skew_rejects++;
      return -1;
    }
  for (size_t i = 0; i < n; i++)
    assert_int_equal(crdt_clock_observe(&rp->clk, crdt_delta_get(mg->d, i)->stamp.hlc, now), 0);
  assert_int_equal(crdt_doc_merge_delta(rp->doc, mg->d, NULL, NULL), 0);
  for (uint64_t s = mg->first_seq; s <= mg->last_seq; s++)
    rp->applied[mg->origin][s] = 1;
  update_vv(rp, mg->origin);
  return 1;
}

/* ---- the workload ----------------------------------------------------------- */
static const char *pages[] = {"pa", "pb"};
static const char *fields[] = {"name", "status", "body", "position"};

typedef struct target {
  char page[8], type[24], id[CRDT_ID_LEN + 1];
} target;

/* Entities replica i knows (alive or tombstone): collected from its export. */
typedef struct known_ctx {
  target t[MAX_KNOWN];
  uint32_t cl[MAX_KNOWN];
  int n;
} known_ctx;

static void known_of(replica *rp, known_ctx *k) {
  crdt_delta *ex;
  assert_int_equal(crdt_delta_new(NULL, &ex), 0);
  assert_int_equal(crdt_doc_export(rp->doc, ex), 0);
  k->n = 0;
  for (size_t i = 0; i < crdt_delta_count(ex) && k->n < MAX_KNOWN; i++) {
    const crdt_change *c = crdt_delta_get(ex, i);
    if (c->kind != CRDT_EXIST)
      continue;
    snprintf(k->t[k->n].page, sizeof k->t[0].page, "%s", c->page);
    snprintf(k->t[k->n].type, sizeof k->t[0].type, "%s", c->type);
    snprintf(k->t[k->n].id, sizeof k->t[0].id, "%s", c->id);
    k->cl[k->n] = c->cl;
    k->n++;
  }
  crdt_delta_free(ex);
}

static void add_field(crdt_delta *d, const target *t, const char *f, uint32_t cl, crdt_stamp st,
                      int origin, uint64_t *seq, rng *r) {
  char val[32];
  snprintf(val, sizeof val, "v%u", below(r, 1000));
  crdt_change c;
  memset(&c, 0, sizeof c);
  c.kind = CRDT_FIELD;
  c.page = t->page;
  c.type = t->type;
  c.id = t->id;
  c.field = f;
  c.value_null = chance(r, 10);
  c.value = c.value_null ? NULL : (const uint8_t *)val;
  c.value_len = c.value_null ? 0 : strlen(val);
  c.cl = cl;
  c.stamp = st;
  c.origin = (crdt_region)origin;
  c.seq = ++*seq;
  assert_int_equal(crdt_delta_add(d, &c), 0);
}

static void add_exist(crdt_delta *d, const target *t, uint32_t cl, crdt_stamp st, int origin,
                      uint64_t *seq) {
  crdt_change c;
  memset(&c, 0, sizeof c);
  c.kind = CRDT_EXIST;
  c.page = t->page;
  c.type = t->type;
  c.id = t->id;
  c.cl = cl;
  c.stamp = st;
  c.origin = (crdt_region)origin;
  c.seq = ++*seq;
  assert_int_equal(crdt_delta_add(d, &c), 0);
}

/* One transaction at replica i, as a user of the API would make it: create a
 * new entity (fresh id), or on an entity it knows: edit fields of a live one,
 * delete it, or re-create a deleted one.  Returns the message index or -1. */
static int write_tx(world *w, int i) {
  if (w->nmsgs >= MAX_MSGS)
    return -1;
  replica *rp = &w->rep[i];
  rng *r = &w->r;
  crdt_delta *d;
  assert_int_equal(crdt_delta_new(NULL, &d), 0);
  crdt_stamp st = {crdt_clock_now(&rp->clk, wall(w, i)), (crdt_region)i};
  uint64_t first = rp->seq + 1;
  known_ctx k;
  known_of(rp, &k);
  if (k.n == 0 || chance(r, 15)) {
    target t;
    snprintf(t.page, sizeof t.page, "%s", pages[below(r, 2)]);
    int upd = chance(r, 30);
    snprintf(t.type, sizeof t.type, "%s", upd ? "incident_update" : (chance(r, 50) ? "component" : "incident"));
    crdt_idgen_next(&rp->ids, wall(w, i), t.id);
    add_exist(d, &t, 1, st, i, &rp->seq);
    for (int f = 0, nf = 1 + (int)below(r, 3); f < nf; f++)
      add_field(d, &t, fields[below(r, 4)], 1, st, i, &rp->seq, r);
  } else {
    int e = (int)below(r, (uint32_t)k.n);
    const target *t = &k.t[e];
    uint32_t cl = k.cl[e];
    int grow_only = strcmp(t->type, "incident_update") == 0;
    if (cl & 1u) {
      if (!grow_only && chance(r, 25)) {
        add_exist(d, t, cl + 1, st, i, &rp->seq); /* delete */
      } else {
        for (int f = 0, nf = 1 + (int)below(r, 3); f < nf; f++)
          add_field(d, t, fields[below(r, 4)], cl, st, i, &rp->seq, r);
      }
    } else if (chance(r, 60)) {
      add_exist(d, t, cl + 1, st, i, &rp->seq); /* re-create with new fields */
      add_field(d, t, fields[below(r, 4)], cl + 1, st, i, &rp->seq, r);
    }
  }
  if (crdt_delta_count(d) == 0) {
    crdt_delta_free(d);
    return -1;
  }
  /* Apply locally.  A create, delete or re-create always changes the local
   * state; a field write may lose locally to a field of a newer life of the
   * entity that arrived before the re-create itself did (it is stale). */
  for (size_t c = 0; c < crdt_delta_count(d); c++) {
    const crdt_change *ch = crdt_delta_get(d, c);
    int rc = crdt_doc_merge(rp->doc, ch);
    assert_true(rc >= 0);
    if (ch->kind == CRDT_EXIST)
      assert_int_equal(rc, 1);
  }
  for (uint64_t s = first; s <= rp->seq; s++)
    rp->applied[i][s] = 1;
  update_vv(rp, i);
  int m = w->nmsgs++;
  w->msgs[m] = (msg){i, first, rp->seq, d};
  for (int t = 0; t < w->n; t++)
    if (t != i)
      w->pend[w->npend++] = (pending){t, m};
  return m;
}

/* ---- the reference: winners by the total order, computed independently ---- */
typedef struct reg {
  const crdt_change *c;
} reg;

static int key_cmp(const crdt_change *a, const crdt_change *b) {
  int x;
  if ((x = strcmp(a->page, b->page)) || (x = strcmp(a->type, b->type)) || (x = strcmp(a->id, b->id)))
    return x;
  if (a->kind != b->kind)
    return a->kind == CRDT_EXIST ? -1 : 1;
  return a->kind == CRDT_FIELD ? strcmp(a->field, b->field) : 0;
}

/* total order of writes to one register */
static int win_cmp(const crdt_change *a, const crdt_change *b) {
  if (a->cl != b->cl)
    return a->cl < b->cl ? -1 : 1;
  /* the stamp order, written out here rather than taken from crdt/ */
  if (a->stamp.hlc != b->stamp.hlc)
    return a->stamp.hlc < b->stamp.hlc ? -1 : 1;
  if (a->stamp.region != b->stamp.region)
    return a->stamp.region < b->stamp.region ? -1 : 1;
  int x;
  if (a->kind == CRDT_FIELD) {
    if (a->value_null != b->value_null)
      return a->value_null ? -1 : 1;
    size_t n = a->value_len < b->value_len ? a->value_len : b->value_len;
    x = n ? memcmp(a->value, b->value, n) : 0;
    if (x)
      return x;
    if (a->value_len != b->value_len)
      return a->value_len < b->value_len ? -1 : 1;
  }
  if (a->origin != b->origin)
    return a->origin < b->origin ? -1 : 1;
  return (a->seq > b->seq) - (a->seq < b->seq);
}

static int reg_sort(const void *pa, const void *pb) {
  const crdt_change *a = ((const reg *)pa)->c, *b = ((const reg *)pb)->c;
  int x = key_cmp(a, b);
  return x ? x : -win_cmp(a, b); /* winner first */
}

/* Reference state as registers: the winner of each register, minus fields of
 * lives the entity has left, minus (when collected) pure tombstones. */
static int reference(world *w, reg *out, int drop_tombstones) {
  int n = 0;
  static reg all[MAX_MSGS * 8];
  for (int m = 0; m < w->nmsgs; m++)
    for (size_t i = 0; i < crdt_delta_count(w->msgs[m].d); i++)
      all[n++].c = crdt_delta_get(w->msgs[m].d, i);
  qsort(all, (size_t)n, sizeof *all, reg_sort);
  int k = 0;
  uint32_t ent_cl = 0;
  int ent_start = 0;
  for (int i = 0; i < n; i++) {
    if (i > 0 && key_cmp(all[i - 1].c, all[i].c) == 0)
      continue; /* not the winner */
    const crdt_change *c = all[i].c;
    int new_entity = k == 0 || strcmp(out[ent_start].c->page, c->page) ||
                     strcmp(out[ent_start].c->type, c->type) || strcmp(out[ent_start].c->id, c->id);
    if (new_entity) {
      /* finish the previous entity: drop it when it is a pure tombstone */
      if (drop_tombstones && k > ent_start && k - ent_start == 1 &&
          out[ent_start].c->kind == CRDT_EXIST && !(out[ent_start].c->cl & 1u))
        k = ent_start;
      ent_start = k;
      ent_cl = c->kind == CRDT_EXIST ? c->cl : 0;
    }
    if (c->kind == CRDT_FIELD && c->cl < ent_cl)
      continue; /* a field of a life the entity has left */
    out[k++].c = c;
  }
  if (drop_tombstones && k > ent_start && k - ent_start == 1 &&
      out[ent_start].c->kind == CRDT_EXIST && !(out[ent_start].c->cl & 1u))
    k = ent_start;
  return k;
}

static void assert_state_equals_reference(world *w, int rep, int drop_tombstones, uint64_t seed) {
  static reg ref[MAX_MSGS * 8];
  int nref = reference(w, ref, drop_tombstones);
  crdt_delta *ex;
  assert_int_equal(crdt_delta_new(NULL, &ex), 0);
  assert_int_equal(crdt_doc_export(w->rep[rep].doc, ex), 0);
  if ((size_t)nref != crdt_delta_count(ex))
    fail_msg("seed %llu: replica %d has %zu registers, reference %d", (unsigned long long)seed,
             rep, crdt_delta_count(ex), nref);
  for (int i = 0; i < nref; i++) {
    const crdt_change *a = ref[i].c, *b = crdt_delta_get(ex, (size_t)i);
    if (key_cmp(a, b) != 0 || win_cmp(a, b) != 0 || a->origin != b->origin || a->seq != b->seq)
      fail_msg("seed %llu: replica %d register %d differs from reference (%s/%s/%s)",
               (unsigned long long)seed, rep, i, a->page, a->type, a->id);
  }
  crdt_delta_free(ex);
}

static void gc_all(world *w) {
  crdt_vclock acks[MAX_REPLICAS];
  for (int i = 0; i < w->n; i++)
    acks[i] = w->rep[i].vv;
  for (int i = 0; i < w->n; i++) {
    int rc = crdt_doc_gc(w->rep[i].doc, acks, (size_t)w->n, NULL, NULL);
    assert_true(rc >= 0);
    w->gc_collected += rc;
  }
  w->gc_runs++;
}

static void shuffle(rng *r, int *v, int n) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)below(r, (uint32_t)i + 1), t = v[i];
    v[i] = v[j];
    v[j] = t;
  }
}

/* One schedule.  Returns normally or fails the cmocka test with the seed. */
static void run_schedule(uint64_t seed, world *w) {
  memset(w, 0, sizeof *w);
  w->r.s = seed;
  w->n = 3 + (int)below(&w->r, 3);
  w->T = BASE_WALL;
  int rogue = chance(&w->r, 40) ? (int)below(&w->r, (uint32_t)w->n) : -1;
  int mid_gc = chance(&w->r, 50);
  for (int i = 0; i < w->n; i++) {
    replica *rp = &w->rep[i];
    assert_int_equal(crdt_doc_new(NULL, &rp->doc), 0);
    assert_int_equal(crdt_doc_grow_only(rp->doc, "incident_update"), 0);
    crdt_clock_init(&rp->clk, SKEW_MS, 0);
    assert_int_equal(crdt_idgen_init(&rp->ids, (crdt_region)i), 0);
    rp->offset = (int64_t)below(&w->r, 601) - 300; /* skewed clocks */
    if (i == rogue) {
      rp->rogue = 1;
      rp->offset = 10000 + (int64_t)below(&w->r, 50000); /* 10-60 s ahead */
    }
    crdt_vclock_init(&rp->vv);
  }
  w->max_normal_offset = 300;

  int steps = 20 + (int)below(&w->r, 60);
  for (int step = 0; step < steps; step++) {
    w->T += below(&w->r, 40);
    /* a wall clock steps back now and then (NTP correction) */
    if (chance(&w->r, 5)) {
      int i = (int)below(&w->r, (uint32_t)w->n);
      if (!w->rep[i].rogue)
        w->rep[i].offset -= below(&w->r, 3000);
    }
    if (chance(&w->r, 60))
      write_tx(w, (int)below(&w->r, (uint32_t)w->n));
    /* deliver a few pending messages in random order: some dropped (re-sent
     * at the end), some duplicated, rogue ones refused while too far ahead */
    for (int k = 0, nk = (int)below(&w->r, 4); k < nk && w->npend > 0; k++) {
      int p = (int)below(&w->r, (uint32_t)w->npend);
      pending pd = w->pend[p];
      int drop = chance(&w->r, 10), dup = chance(&w->r, 10);
      if (!drop && deliver(w, pd.target, pd.msg) < 0)
        dup = 1; /* refused: keep it to re-send */
      if (!dup)
        w->pend[p] = w->pend[--w->npend];
    }
    if (mid_gc && chance(&w->r, 10))
      gc_all(w);
    /* no normal replica's clock is dragged ahead by the rogue */
    for (int i = 0; i < w->n; i++)
      if (!w->rep[i].rogue &&
          CRDT_HLC_MS(w->rep[i].clk.last) > w->T + (uint64_t)w->max_normal_offset + SKEW_MS + 1)
        fail_msg("seed %llu: replica %d clock dragged to %llu ms past T", (unsigned long long)seed,
                 i, (unsigned long long)(CRDT_HLC_MS(w->rep[i].clk.last) - w->T));
  }

  /* Full delivery: time moves past the rogue's stamps; every replica gets
   * every message it lacks in a random order, some twice. */
  w->T += 120000;
  for (int i = 0; i < w->n; i++)
    if (!w->rep[i].rogue && w->rep[i].offset < -3000)
      w->rep[i].offset = -3000;
  int order[MAX_MSGS];
  for (int t = 0; t < w->n; t++) {
    int n = 0;
    for (int m = 0; m < w->nmsgs; m++)
      order[n++] = m;
    shuffle(&w->r, order, n);
    for (int k = 0; k < n; k++) {
      assert_true(deliver(w, t, order[k]) >= 0);
      if (chance(&w->r, 10))
        assert_int_equal(deliver(w, t, order[k]), 0);
    }
  }
  uint8_t d0[CRDT_DIGEST_LEN], di[CRDT_DIGEST_LEN];
  if (!mid_gc) {
    assert_int_equal(crdt_doc_digest(w->rep[0].doc, d0), 0);
    for (int i = 1; i < w->n; i++) {
      assert_int_equal(crdt_doc_digest(w->rep[i].doc, di), 0);
      if (memcmp(d0, di, sizeof d0) != 0)
        fail_msg("seed %llu: replicas 0 and %d differ after full delivery", (unsigned long long)seed, i);
    }
    for (int i = 0; i < w->n; i++)
      assert_state_equals_reference(w, i, 0, seed);
  }
  /* Collect every stable tombstone everywhere: still one state, the
   * reference without tombstones. */
  gc_all(w);
  gc_all(w);
  assert_int_equal(crdt_doc_digest(w->rep[0].doc, d0), 0);
  for (int i = 1; i < w->n; i++) {
    assert_int_equal(crdt_doc_digest(w->rep[i].doc, di), 0);
    if (memcmp(d0, di, sizeof d0) != 0)
      fail_msg("seed %llu: replicas 0 and %d differ after GC", (unsigned long long)seed, i);
  }
  for (int i = 0; i < w->n; i++)
    assert_state_equals_reference(w, i, 1, seed);

  for (int i = 0; i < w->n; i++)
    crdt_doc_free(w->rep[i].doc);
  for (int m = 0; m < w->nmsgs; m++)
    crdt_delta_free(w->msgs[m].d);
}

static uint64_t env_u64(const char *name, uint64_t dflt) {
  const char *v = getenv(name);
  return v && *v ? strtoull(v, NULL, 10) : dflt;
}

static void test_simulated_schedules_converge(void **s) {
  (void)s;
  uint64_t first = env_u64("CRDT_SIM_SEED", 1), count = env_u64("CRDT_SIM_SCHEDULES", 10000);
  world *w = calloc(1, sizeof *w);
  assert_non_null(w);
  long msgs = 0, rejects = 0, collected = 0;
  for (uint64_t k = 0; k < count; k++) {
    uint64_t seed = first + k;
    run_schedule(seed, w);
    msgs += w->nmsgs;
    rejects += w->skew_rejects;
    collected += w->gc_collected;
  }
  printf("simulated %llu schedules (seeds %llu..%llu): %ld transactions, %ld skew refusals, "
         "%ld tombstones collected\n",
         (unsigned long long)count, (unsigned long long)first,
         (unsigned long long)(first + count - 1), msgs, rejects, collected);
  /* the schedules exercised what they claim to */
  if (count >= 100) {
    assert_true(rejects > 0);
    assert_true(collected > 0);
  }
  free(w);
}

/* ---- algebraic laws of the state join -------------------------------------- */
static crdt_doc *random_state(rng *r) {
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  static const char *ids[] = {"e1", "e2", "e3"};
  for (int k = 0, n = (int)below(r, 12); k < n; k++) {
    crdt_change c;
    memset(&c, 0, sizeof c);
    c.page = pages[below(r, 2)];
    c.type = "component";
    c.id = ids[below(r, 3)];
    c.stamp.hlc = CRDT_HLC_MAKE(100 + below(r, 5), below(r, 2)); /* many ties */
    c.stamp.region = (crdt_region)below(r, 3);
    c.origin = c.stamp.region;
    c.seq = 1 + below(r, 50);
    c.cl = 1 + below(r, 4);
    char val[8];
    if (chance(r, 40)) {
      c.kind = CRDT_EXIST;
    } else {
      c.kind = CRDT_FIELD;
      c.field = fields[below(r, 3)];
      snprintf(val, sizeof val, "%u", below(r, 3));
      c.value = (const uint8_t *)val;
      c.value_len = strlen(val);
      c.value_null = chance(r, 15);
    }
    assert_true(crdt_doc_merge(d, &c) >= 0);
  }
  return d;
}

/* dst := dst ⊔ src, by shipping src's whole state as a delta */
static void join_into(crdt_doc *dst, crdt_doc *src) {
  crdt_delta *ex;
  assert_int_equal(crdt_delta_new(NULL, &ex), 0);
  assert_int_equal(crdt_doc_export(src, ex), 0);
  assert_int_equal(crdt_doc_merge_delta(dst, ex, NULL, NULL), 0);
  crdt_delta_free(ex);
}

static crdt_doc *copy_of(crdt_doc *src) {
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  join_into(d, src);
  return d;
}

static void digest(crdt_doc *d, uint8_t out[CRDT_DIGEST_LEN]) {
  assert_int_equal(crdt_doc_digest(d, out), 0);
}

static void test_join_laws(void **s) {
  (void)s;
  uint64_t base = env_u64("CRDT_SIM_SEED", 1);
  for (uint64_t k = 0; k < 3000; k++) {
    rng r = {base * 7919 + k};
    crdt_doc *a = random_state(&r), *b = random_state(&r), *c = random_state(&r);
    uint8_t x[32], y[32];
    /* commutative: a ⊔ b == b ⊔ a */
    crdt_doc *ab = copy_of(a), *ba = copy_of(b);
    join_into(ab, b);
    join_into(ba, a);
    digest(ab, x);
    digest(ba, y);
    if (memcmp(x, y, 32))
      fail_msg("join not commutative, seed %llu", (unsigned long long)(base * 7919 + k));
    /* associative: (a ⊔ b) ⊔ c == a ⊔ (b ⊔ c) */
    crdt_doc *bc = copy_of(b), *a_bc = copy_of(a);
    join_into(bc, c);
    join_into(ab, c);
    join_into(a_bc, bc);
    digest(ab, x);
    digest(a_bc, y);
    if (memcmp(x, y, 32))
      fail_msg("join not associative, seed %llu", (unsigned long long)(base * 7919 + k));
    /* idempotent: a ⊔ a == a, and re-merging b changes nothing */
    crdt_doc *aa = copy_of(a);
    digest(aa, x);
    join_into(aa, a);
    digest(aa, y);
    assert_memory_equal(x, y, 32);
    digest(a, y);
    assert_memory_equal(x, y, 32);
    crdt_doc_free(a);
    crdt_doc_free(b);
    crdt_doc_free(c);
    crdt_doc_free(ab);
    crdt_doc_free(ba);
    crdt_doc_free(bc);
    crdt_doc_free(a_bc);
    crdt_doc_free(aa);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_join_laws),
      cmocka_unit_test(test_simulated_schedules_converge),
  };
  return cmocka_run_group_tests_name("crdt_sim", tests, NULL, NULL);
}
