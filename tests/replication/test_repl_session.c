/* Tests for replication/ (repl.h): the wire messages and the delta-sync
 * session engine, without sockets.
 *
 * Regions are simulated in memory: a change log (a crdt_delta holding every
 * row, indexed per origin), an applied vector, a crdt_doc for the state and
 * a count of how many times each (origin, seq) was applied.  Their sessions
 * are wired back to back through byte queues that drop, duplicate and
 * reorder messages (batches, acks and snapshot chunks alike) while simulated
 * time advances; every message crosses the link as encoded bytes and is
 * decoded on the other side.  Seeds are printed on failure; REPL_SIM_SEEDS
 * sets how many seeded schedules the lossy tests run (default 300).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crdt.h"
#include "repl.h"
#include "replication.pb-c.h"
#include "sp_alloc.h"
#include "sp_buf.h"

#define NREG 3
#define MAXSEQ 4096
#define QMAX 64
#define BASE_WALL 1790000000000ull

/* ---- PRNG (splitmix64) ---------------------------------------------------- */
static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static uint32_t below(uint64_t *s, uint32_t n) {
  return (uint32_t)(rng_next(s) % n);
}
static int chance(uint64_t *s, unsigned pct) {
  return below(s, 100) < pct;
}

/* ---- simulated regions ---------------------------------------------------- */
typedef struct region {
  crdt_region id;
  crdt_clock clock;
  crdt_delta *store;          /* every log row */
  size_t *rows[NREG];         /* per origin: indexes into store, seq ascending */
  size_t nrows[NREG];
  uint64_t floor[NREG];       /* the source refuses to serve at or below (SP_ERR_RANGE) */
  crdt_vclock applied;
  crdt_doc *doc;
  unsigned char applies[NREG][MAXSEQ + 1]; /* delta applications per (origin, seq) */
  int64_t skew_ms;            /* this region's wall clock = sim time + skew */
  repl_session *sess[NREG];   /* to each peer */
  /* source iteration */
  uint64_t src_mask;
  unsigned src_o;
  size_t src_pos[NREG];
} region;

typedef struct pkt {
  uint8_t *data;
  size_t len;
} pkt;

typedef struct link {
  pkt q[QMAX];
  size_t n;
} link;

typedef struct sim {
  region r[NREG];
  size_t nreg;
  link links[NREG][NREG]; /* [from][to] */
  int cut[NREG][NREG];
  uint64_t now;
  uint64_t rng;
  unsigned drop_pct, dup_pct;
  int reorder;
  unsigned reconnect_pct; /* per step: a connection drops and is redialled */
  repl_config cfg; /* template for every session */
  size_t chunk_changes;
  /* observations */
  size_t max_in_flight;
  size_t max_batch_changes;
  size_t max_multi_batch_bytes;
  size_t batches_delivered, acks_delivered, chunks_delivered;
  unsigned long long seed;
} sim;

static uint64_t wall(const sim *w, const region *r) {
  return (uint64_t)((int64_t)w->now + r->skew_ms);
}

static void log_append(region *r, const crdt_change *c) {
  assert_int_equal(crdt_delta_add(r->store, c), 0);
  size_t o = c->origin;
  r->rows[o] = realloc(r->rows[o], (r->nrows[o] + 1) * sizeof *r->rows[o]);
  assert_non_null(r->rows[o]);
  r->rows[o][r->nrows[o]++] = crdt_delta_count(r->store) - 1;
}

static const crdt_change *row(const region *r, unsigned o, size_t i) {
  return crdt_delta_get(r->store, r->rows[o][i]);
}

/* Physically drops the rows of origin o with seq <= upto (trimmed log). */
static void log_trim(region *r, unsigned o, uint64_t upto) {
  size_t k = 0;
  for (size_t i = 0; i < r->nrows[o]; i++)
    if (row(r, o, i)->seq > upto)
      r->rows[o][k++] = r->rows[o][i];
  r->nrows[o] = k;
}

static int src_rewind(void *arg, const crdt_vclock *after, uint64_t origins) {
  region *r = arg;
  r->src_mask = origins;
  r->src_o = 0;
  for (unsigned o = 0; o < NREG; o++) {
    if ((origins >> o & 1u) && after->seq[o] < r->floor[o])
      return SP_ERR_RANGE;
    size_t i = 0;
    while (i < r->nrows[o] && row(r, o, i)->seq <= after->seq[o])
      i++;
    r->src_pos[o] = i;
  }
  return 0;
}

static int src_next(void *arg, crdt_change *out) {
  region *r = arg;
  for (; r->src_o < NREG; r->src_o++) {
    unsigned o = r->src_o;
    if (!(r->src_mask >> o & 1u) || r->src_pos[o] >= r->nrows[o])
      continue;
    *out = *row(r, o, r->src_pos[o]++);
    return 1;
  }
  return 0;
}

static void notify_all(sim *w, region *r) {
  for (size_t p = 0; p < w->nreg; p++)
    if (r->sess[p])
      repl_session_notify(r->sess[p], &r->applied);
}

/* A local write: create the region's entity k on first touch, else set a
 * field, with values of varied length so byte bounds bite. */
static void region_write(sim *w, region *r) {
  char id[32], field[16], value[400];
  uint64_t seq = r->applied.seq[r->id] + 1;
  unsigned k = (unsigned)(seq % 7);
  crdt_change c;
  memset(&c, 0, sizeof c);
  snprintf(id, sizeof id, "r%u-e%u", (unsigned)r->id, k);
  c.page = "page1";
  c.type = "component";
  c.id = id;
  c.cl = 1;
  c.stamp.hlc = crdt_clock_now(&r->clock, wall(w, r));
  c.stamp.region = r->id;
  c.origin = r->id;
  c.seq = seq;
  if (seq <= 7) {
    c.kind = CRDT_EXIST;
  } else {
    size_t len = 1 + below(&w->rng, 300);
    memset(value, 'a' + (int)(seq % 26), len);
    snprintf(field, sizeof field, "f%u", (unsigned)(seq % 5));
    c.kind = CRDT_FIELD;
    c.field = field;
    c.value = (const uint8_t *)value;
    c.value_len = len;
  }
  assert_true(crdt_doc_merge(r->doc, &c) >= 0);
  log_append(r, &c);
  r->applied.seq[r->id] = seq;
  assert_true(seq <= MAXSEQ);
  notify_all(w, r);
}

static void region_init(sim *w, region *r, crdt_region id) {
  memset(r, 0, sizeof *r);
  r->id = id;
  crdt_clock_init(&r->clock, CRDT_DEFAULT_MAX_SKEW_MS, 0);
  assert_int_equal(crdt_delta_new(NULL, &r->store), 0);
  assert_int_equal(crdt_doc_new(NULL, &r->doc), 0);
  crdt_vclock_init(&r->applied);
  (void)w;
}

static void region_free(region *r) {
  for (unsigned o = 0; o < NREG; o++) {
    free(r->rows[o]);
    repl_session_free(r->sess[o]);
  }
  crdt_delta_free(r->store);
  crdt_doc_free(r->doc);
}

static const char *const names[NREG] = {"us-east", "eu-west", "ap-south"};

static void new_session(sim *w, region *r, crdt_region peer) {
  repl_config cfg = w->cfg;
  cfg.cluster_id = "test-cluster";
  cfg.region_name = names[r->id];
  cfg.region_id = r->id;
  cfg.peer_name = names[peer];
  cfg.peer_id = peer;
  assert_int_equal(repl_session_new(&cfg, &r->sess[peer]), 0);
}

/* Handshake between regions a (dialer) and b over a perfect channel. */
static void connect_pair(sim *w, unsigned a, unsigned b) {
  region *ra = &w->r[a], *rb = &w->r[b];
  sp_buf buf;
  repl_msg m;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  assert_int_equal(repl_session_hello(ra->sess[b], &ra->applied, &buf), 0);
  assert_int_equal(repl_msg_decode((const uint8_t *)buf.base, buf.len, &m), 0);
  assert_int_equal(repl_session_on_handshake(rb->sess[a], &m, &rb->applied, &buf), 0);
  repl_msg_release(&m);
  assert_int_equal(repl_msg_decode((const uint8_t *)buf.base, buf.len, &m), 0);
  assert_int_equal(repl_session_on_handshake_reply(ra->sess[b], &m), 0);
  repl_msg_release(&m);
  assert_int_equal(repl_session_state(ra->sess[b]), REPL_STATE_ESTABLISHED);
  assert_int_equal(repl_session_state(rb->sess[a]), REPL_STATE_ESTABLISHED);
  repl_session_notify(ra->sess[b], &ra->applied);
  repl_session_notify(rb->sess[a], &rb->applied);
  sp_buf_release(&buf);
}

static void sim_init(sim *w, size_t nreg, unsigned long long seed) {
  memset(w, 0, sizeof *w);
  w->nreg = nreg;
  w->seed = seed;
  w->rng = seed;
  w->now = BASE_WALL;
  w->cfg.max_changes = 8;
  w->cfg.max_bytes = 1500;
  w->cfg.window = 2;
  w->cfg.resend_ms = 200;
  w->cfg.sync_interval_ms = 50;
  w->chunk_changes = 5;
  for (size_t i = 0; i < nreg; i++)
    region_init(w, &w->r[i], (crdt_region)i);
}

/* Sessions between every pair (after sim_init and any cfg changes). */
static void sim_mesh(sim *w) {
  for (unsigned i = 0; i < w->nreg; i++)
    for (unsigned j = 0; j < w->nreg; j++)
      if (i != j)
        new_session(w, &w->r[i], (crdt_region)j);
  for (unsigned i = 0; i < w->nreg; i++)
    for (unsigned j = i + 1; j < w->nreg; j++)
      connect_pair(w, i, j);
}

static void sim_free(sim *w) {
  for (size_t i = 0; i < w->nreg; i++)
    region_free(&w->r[i]);
  for (size_t i = 0; i < NREG; i++)
    for (size_t j = 0; j < NREG; j++)
      for (size_t k = 0; k < w->links[i][j].n; k++)
        free(w->links[i][j].q[k].data);
}

static void link_push(link *l, const sp_buf *b) {
  if (l->n == QMAX)
    return; /* congested: dropped */
  pkt *p = &l->q[l->n++];
  p->data = malloc(b->len ? b->len : 1);
  assert_non_null(p->data);
  memcpy(p->data, b->base, b->len);
  p->len = b->len;
}

static void link_send(sim *w, unsigned from, unsigned to, const sp_buf *b) {
  if (w->cut[from][to] || chance(&w->rng, w->drop_pct))
    return;
  link_push(&w->links[from][to], b);
  if (chance(&w->rng, w->dup_pct))
    link_push(&w->links[from][to], b);
}

/* ---- receiving ------------------------------------------------------------- */

static void apply_batch(sim *w, region *r, const repl_apply *ap) {
  for (size_t i = 0; i < ap->count; i++) {
    const crdt_change *c = ap->changes[i];
    /* per-origin order and exactly once */
    assert_int_equal(c->seq, r->applied.seq[c->origin] + 1);
    assert_true(c->seq <= MAXSEQ);
    assert_int_equal(r->applies[c->origin][c->seq], 0);
    r->applies[c->origin][c->seq]++;
    assert_true(crdt_doc_merge(r->doc, c) >= 0);
    crdt_clock_observe(&r->clock, c->stamp.hlc, wall(w, r));
    log_append(r, c);
    r->applied.seq[c->origin] = c->seq;
  }
  assert_int_equal(crdt_vclock_compare(&r->applied, &ap->applied), CRDT_EQUAL);
}

static void apply_chunk(sim *w, region *r, const repl_apply *ap) {
  for (size_t i = 0; i < ap->count; i++) {
    assert_true(crdt_doc_merge(r->doc, ap->changes[i]) >= 0);
    crdt_clock_observe(&r->clock, ap->changes[i]->stamp.hlc, wall(w, r));
  }
  crdt_vclock_merge(&r->applied, &ap->applied);
}

static void deliver(sim *w, unsigned from, unsigned to, const pkt *p) {
  region *r = &w->r[to];
  repl_session *s = r->sess[from];
  repl_msg m;
  repl_apply ap;
  sp_buf out;
  assert_int_equal(repl_msg_decode(p->data, p->len, &m), 0);
  sp_buf_init(&out, REPL_MAX_MESSAGE);
  switch (m.type) {
  case REPL_MSG_BATCH: {
    size_t n = crdt_delta_count(m.u.batch.changes);
    assert_true(n >= 1);
    assert_true(n <= w->cfg.max_changes);
    if (n > w->max_batch_changes)
      w->max_batch_changes = n;
    if (n > 1) {
      assert_true(p->len <= w->cfg.max_bytes);
      if (p->len > w->max_multi_batch_bytes)
        w->max_multi_batch_bytes = p->len;
    }
    w->batches_delivered++;
    assert_int_equal(repl_session_on_batch(s, &m, &r->applied, wall(w, r), &ap), 0);
    apply_batch(w, r, &ap);
    assert_int_equal(repl_session_ack(s, &ap, &r->applied, wall(w, r), &out), 0);
    repl_apply_release(&ap);
    notify_all(w, r);
    link_send(w, to, from, &out);
    break;
  }
  case REPL_MSG_SNAPSHOT_CHUNK:
    w->chunks_delivered++;
    assert_int_equal(repl_session_on_snapshot_chunk(s, &m, &r->applied, wall(w, r), &ap), 0);
    apply_chunk(w, r, &ap);
    assert_int_equal(repl_session_ack(s, &ap, &r->applied, wall(w, r), &out), 0);
    repl_apply_release(&ap);
    notify_all(w, r);
    link_send(w, to, from, &out);
    break;
  case REPL_MSG_ACK:
    w->acks_delivered++;
    assert_int_equal(repl_session_on_ack(s, &m, wall(w, r)), 0);
    break;
  case REPL_MSG_SNAPSHOT_REQUEST:
    assert_int_equal(repl_session_on_snapshot_request(s, &m), 0);
    break;
  default:
    fail_msg("unexpected message type %d", (int)m.type);
  }
  repl_msg_release(&m);
  sp_buf_release(&out);
}

/* Delivers up to `max` packets of one link (reordered when enabled). */
static void link_deliver(sim *w, unsigned from, unsigned to, size_t max) {
  link *l = &w->links[from][to];
  for (size_t k = 0; k < max && l->n > 0; k++) {
    size_t i = w->reorder ? below(&w->rng, (uint32_t)(l->n < 4 ? l->n : 4)) : 0;
    pkt p = l->q[i];
    memmove(&l->q[i], &l->q[i + 1], (l->n - i - 1) * sizeof *l->q);
    l->n--;
    deliver(w, from, to, &p);
    free(p.data);
  }
}

/* ---- sending ----------------------------------------------------------------- */

/* The entity key (page, type, id) of a change as cursor bytes. */
static size_t entity_key(const crdt_change *c, uint8_t *out) {
  size_t a = strlen(c->page), b = strlen(c->type), d = strlen(c->id);
  memcpy(out, c->page, a + 1);
  memcpy(out + a + 1, c->type, b + 1);
  memcpy(out + a + b + 2, c->id, d);
  return a + b + d + 2;
}

static int key_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
  /* NUL-separated components compare component-wise like the export order */
  size_t n = alen < blen ? alen : blen;
  int c = memcmp(a, b, n);
  if (c)
    return c;
  return alen < blen ? -1 : alen > blen;
}

/* The next snapshot chunk of r's state for peer p: whole entities after the
 * cursor, at least chunk_changes changes unless the state ends. */
static int make_chunk(sim *w, region *r, unsigned p, sp_buf *out) {
  const uint8_t *cur;
  size_t clen;
  uint8_t key[3 * CRDT_MAX_NAME + 3], next[REPL_MAX_CURSOR];
  size_t nlen = 0;
  crdt_delta *all, *chunk;
  int rc = repl_session_snapshot_cursor(r->sess[p], &cur, &clen);
  if (rc)
    return rc;
  uint8_t cursor[REPL_MAX_CURSOR];
  memcpy(cursor, cur, clen);
  assert_int_equal(crdt_delta_new(NULL, &all), 0);
  assert_int_equal(crdt_delta_new(NULL, &chunk), 0);
  assert_int_equal(crdt_doc_export(r->doc, all), 0);
  if (clen) {
    memcpy(next, cursor, clen);
    nlen = clen;
  }
  size_t i, n = crdt_delta_count(all);
  for (i = 0; i < n; i++) {
    const crdt_change *c = crdt_delta_get(all, i);
    size_t klen = entity_key(c, key);
    if (clen && key_cmp(key, klen, cursor, clen) <= 0)
      continue;
    if (crdt_delta_count(chunk) >= w->chunk_changes && key_cmp(key, klen, next, nlen) != 0)
      break;
    assert_int_equal(crdt_delta_add(chunk, c), 0);
    memcpy(next, key, klen);
    nlen = klen;
  }
  rc = repl_session_snapshot_chunk(r->sess[p], chunk, next, nlen, i == n, &r->applied,
                                   wall(w, r), out);
  crdt_delta_free(all);
  crdt_delta_free(chunk);
  return rc;
}

static void pump(sim *w, unsigned from) {
  region *r = &w->r[from];
  repl_source src = {src_rewind, src_next, r};
  sp_buf out;
  sp_buf_init(&out, REPL_MAX_MESSAGE);
  for (unsigned p = 0; p < w->nreg; p++) {
    repl_session *s = r->sess[p];
    if (s == NULL)
      continue;
    for (int k = 0; k < 8; k++) {
      repl_want want = repl_session_want_send(s, wall(w, r));
      int rc;
      if (want == REPL_WANT_NONE)
        break;
      if (want == REPL_WANT_SNAPSHOT)
        rc = make_chunk(w, r, p, &out);
      else
        rc = repl_session_send(s, &src, wall(w, r), &out);
      if (rc == SP_ERR_AGAIN)
        continue; /* e.g. the source needs a snapshot: want_send says so next */
      assert_int_equal(rc, 0);
      size_t fl = repl_session_in_flight(s);
      assert_true(fl <= w->cfg.window);
      if (fl > w->max_in_flight)
        w->max_in_flight = fl;
      link_send(w, from, p, &out);
    }
  }
  sp_buf_release(&out);
}

static int links_empty(const sim *w) {
  for (size_t i = 0; i < w->nreg; i++)
    for (size_t j = 0; j < w->nreg; j++)
      if (w->links[i][j].n)
        return 0;
  return 1;
}

/* Every region has applied every region's writes. */
static int converged(const sim *w) {
  for (size_t i = 0; i < w->nreg; i++)
    for (size_t o = 0; o < w->nreg; o++)
      if (w->r[i].applied.seq[o] != w->r[o].applied.seq[o])
        return 0;
  return 1;
}

/* Converged, nothing on the wire, nothing unacknowledged (except towards
 * a peer behind a cut link, which can never answer). */
static int settled(const sim *w) {
  if (!converged(w) || !links_empty(w))
    return 0;
  for (size_t i = 0; i < w->nreg; i++)
    for (size_t p = 0; p < w->nreg; p++)
      if (w->r[i].sess[p] && !w->cut[i][p] && !w->cut[p][i] &&
          repl_session_in_flight(w->r[i].sess[p]))
        return 0;
  return 1;
}

/* The connection between i and j drops (what was on the wire is lost) and
 * is dialled again: both sessions reset and handshake. */
static void reconnect(sim *w, unsigned i, unsigned j) {
  for (int d = 0; d < 2; d++) {
    link *l = d ? &w->links[i][j] : &w->links[j][i];
    for (size_t k = 0; k < l->n; k++)
      free(l->q[k].data);
    l->n = 0;
  }
  repl_session_reset(w->r[i].sess[j]);
  repl_session_reset(w->r[j].sess[i]);
  connect_pair(w, i, j);
}

/* One step of simulated time: sends, then some deliveries on every link. */
static void step(sim *w) {
  if (w->reconnect_pct && chance(&w->rng, w->reconnect_pct)) {
    unsigned i = below(&w->rng, (uint32_t)w->nreg), j = below(&w->rng, (uint32_t)w->nreg);
    if (i != j)
      reconnect(w, i < j ? i : j, i < j ? j : i);
  }
  for (unsigned i = 0; i < w->nreg; i++)
    pump(w, i);
  for (unsigned i = 0; i < w->nreg; i++)
    for (unsigned j = 0; j < w->nreg; j++)
      if (i != j)
        link_deliver(w, i, j, 1 + below(&w->rng, 3));
  w->now += 10;
}

/* Writes `writes` changes per region spread over time, then runs until every
 * region has everything (bounded). */
static void run(sim *w, unsigned writes) {
  unsigned done[NREG] = {0};
  for (int t = 0; t < 60000; t++) {
    int writing = 0;
    for (unsigned i = 0; i < w->nreg; i++) {
      if (done[i] < writes) {
        writing = 1;
        unsigned burst = chance(&w->rng, 30) ? below(&w->rng, 12) : 0;
        for (unsigned k = 0; k < burst && done[i] < writes; k++, done[i]++)
          region_write(w, &w->r[i]);
      }
    }
    step(w);
    if (!writing && settled(w))
      return;
  }
  fail_msg("seed %llu: no convergence", w->seed);
}

static void assert_same_state(sim *w) {
  uint8_t d0[CRDT_DIGEST_LEN], d[CRDT_DIGEST_LEN];
  assert_int_equal(crdt_doc_digest(w->r[0].doc, d0), 0);
  for (size_t i = 1; i < w->nreg; i++) {
    assert_int_equal(crdt_doc_digest(w->r[i].doc, d), 0);
    assert_memory_equal(d0, d, CRDT_DIGEST_LEN);
    assert_int_equal(crdt_vclock_compare(&w->r[0].applied, &w->r[i].applied), CRDT_EQUAL);
  }
}

/* Every remote change arrived through deltas exactly once. */
static void assert_exactly_once(sim *w) {
  for (size_t i = 0; i < w->nreg; i++)
    for (size_t o = 0; o < w->nreg; o++) {
      if (o == i)
        continue;
      for (uint64_t q = 1; q <= w->r[o].applied.seq[o]; q++)
        if (w->r[i].applies[o][q] != 1)
          fail_msg("seed %llu: region %zu applied %zu/%" PRIu64 " %d times", w->seed, i, o, q,
                   w->r[i].applies[o][q]);
    }
}

static unsigned long long n_seeds(void) {
  const char *e = getenv("REPL_SIM_SEEDS");
  return e ? strtoull(e, NULL, 10) : 300;
}

/* ---- lossy link ----------------------------------------------------------- */

static void test_lossy_link_exactly_once_in_order(void **state) {
  (void)state;
  size_t max_fl = 0, max_n = 0, max_bytes = 0;
  uint64_t gaps = 0, resent = 0;
  for (unsigned long long seed = 1; seed <= n_seeds(); seed++) {
    sim *w = calloc(1, sizeof *w);
    assert_non_null(w);
    sim_init(w, 2, seed);
    w->drop_pct = 20;
    w->dup_pct = 10;
    w->reorder = 1;
    w->reconnect_pct = seed % 2; /* every other schedule also drops connections */
    sim_mesh(w);
    run(w, 150);
    assert_same_state(w);
    assert_exactly_once(w);
    for (unsigned i = 0; i < 2; i++) {
      repl_stats st;
      repl_session_stats(w->r[i].sess[1 - i], &st);
      gaps += st.gaps_received;
      resent += st.batches_resent;
      /* the acked vector the caller would persist is the peer's progress */
      assert_int_equal(repl_session_acked(w->r[i].sess[1 - i])->seq[i], 150);
    }
    if (w->max_in_flight > max_fl)
      max_fl = w->max_in_flight;
    if (w->max_batch_changes > max_n)
      max_n = w->max_batch_changes;
    if (w->max_multi_batch_bytes > max_bytes)
      max_bytes = w->max_multi_batch_bytes;
    sim_free(w);
    free(w);
  }
  /* the window, both bounds, go-back-N and timeouts were all exercised */
  assert_int_equal(max_fl, 2);
  assert_int_equal(max_n, 8);
  assert_true(max_bytes > 1000 && max_bytes <= 1500);
  assert_true(gaps > 0);
  assert_true(resent > 0);
}

/* ---- relay -------------------------------------------------------------------- */

static void test_relay_third_region(void **state) {
  (void)state;
  for (unsigned long long seed = 1; seed <= n_seeds() / 3 + 1; seed++) {
    sim *w = calloc(1, sizeof *w);
    assert_non_null(w);
    sim_init(w, 3, seed);
    w->drop_pct = 10;
    w->dup_pct = 5;
    w->reorder = 1;
    sim_mesh(w);
    /* eu-west and ap-south cannot reach each other; us-east relays */
    w->cut[1][2] = w->cut[2][1] = 1;
    assert_int_equal(repl_session_set_relay(w->r[0].sess[1], 2, 1), 0);
    assert_int_equal(repl_session_set_relay(w->r[0].sess[2], 1, 1), 0);
    run(w, 60);
    assert_same_state(w);
    assert_exactly_once(w);
    sim_free(w);
    free(w);
  }
}

static void test_no_relay_means_no_third_region_changes(void **state) {
  (void)state;
  sim *w = calloc(1, sizeof *w);
  assert_non_null(w);
  sim_init(w, 3, 7);
  sim_mesh(w);
  w->cut[1][2] = w->cut[2][1] = 1;
  for (int i = 0; i < 20; i++)
    region_write(w, &w->r[2]);
  for (int t = 0; t < 300; t++)
    step(w);
  assert_int_equal(w->r[0].applied.seq[2], 20);
  assert_int_equal(w->r[1].applied.seq[2], 0); /* nothing relayed */
  /* turning relay on repairs it */
  assert_int_equal(repl_session_set_relay(w->r[0].sess[1], 2, 1), 0);
  for (int t = 0; t < 300; t++)
    step(w);
  assert_int_equal(w->r[1].applied.seq[2], 20);
  sim_free(w);
  free(w);
}

static void test_relay_over_two_paths_applies_once(void **state) {
  (void)state;
  for (unsigned long long seed = 1; seed <= n_seeds() / 3 + 1; seed++) {
    sim *w = calloc(1, sizeof *w);
    assert_non_null(w);
    sim_init(w, 3, seed + 1000);
    w->drop_pct = 15;
    w->dup_pct = 10;
    w->reorder = 1;
    w->reconnect_pct = seed % 2;
    sim_mesh(w);
    for (unsigned i = 0; i < 3; i++)
      for (unsigned p = 0; p < 3; p++)
        for (unsigned o = 0; o < 3; o++)
          if (p != i)
            assert_int_equal(repl_session_set_relay(w->r[i].sess[p], (crdt_region)o, 1), 0);
    run(w, 60);
    assert_same_state(w);
    assert_exactly_once(w);
    sim_free(w);
    free(w);
  }
}

/* ---- gaps ---------------------------------------------------------------- */

static int decode_buf(const sp_buf *b, repl_msg *m) {
  return repl_msg_decode((const uint8_t *)b->base, b->len, m);
}

static void test_gap_rewinds_to_receiver_vector(void **state) {
  (void)state;
  sim *w = calloc(1, sizeof *w);
  assert_non_null(w);
  sim_init(w, 2, 3);
  w->cfg.max_changes = 3;
  sim_mesh(w);
  region *a = &w->r[0], *b = &w->r[1];
  for (int i = 0; i < 10; i++)
    region_write(w, a);
  repl_source src = {src_rewind, src_next, a};
  sp_buf b1, b2, ack;
  sp_buf_init(&b1, REPL_MAX_MESSAGE);
  sp_buf_init(&b2, REPL_MAX_MESSAGE);
  sp_buf_init(&ack, REPL_MAX_MESSAGE);
  repl_session *sa = a->sess[1], *sb = b->sess[0];
  assert_int_equal(repl_session_want_send(sa, wall(w, a)), REPL_WANT_BATCH);
  assert_int_equal(repl_session_send(sa, &src, wall(w, a), &b1), 0);
  /* a second batch waits for the coalescing tick, then fills the window */
  assert_int_equal(repl_session_want_send(sa, wall(w, a)), REPL_WANT_NONE);
  w->now += 50;
  assert_int_equal(repl_session_want_send(sa, wall(w, a)), REPL_WANT_BATCH);
  assert_int_equal(repl_session_send(sa, &src, wall(w, a), &b2), 0);
  assert_int_equal(repl_session_in_flight(sa), 2);
  w->now += 50;
  assert_int_equal(repl_session_want_send(sa, wall(w, a)), REPL_WANT_NONE); /* window full */
  assert_int_equal(repl_session_send(sa, &src, wall(w, a), &ack), SP_ERR_AGAIN);

  /* batch 1 is lost; batch 2 (seqs 4..6) arrives */
  repl_msg m;
  repl_apply ap;
  assert_int_equal(decode_buf(&b2, &m), 0);
  assert_int_equal(crdt_delta_get(m.u.batch.changes, 0)->seq, 4);
  assert_int_equal(repl_session_on_batch(sb, &m, &b->applied, wall(w, b), &ap), 0);
  assert_int_equal(ap.status, REPL_GAP);
  assert_int_equal(ap.count, 0);
  assert_non_null(strstr(ap.reason, "needs seq 1"));
  assert_int_equal(ap.applied.seq[0], 0);
  assert_int_equal(repl_session_ack(sb, &ap, &b->applied, wall(w, b), &ack), 0);
  repl_apply_release(&ap);
  repl_msg_release(&m);

  assert_int_equal(decode_buf(&ack, &m), 0);
  assert_int_equal(m.u.ack.status, REPL_GAP);
  assert_int_equal(repl_session_on_ack(sa, &m, wall(w, a)), 0);
  repl_msg_release(&m);
  repl_stats st;
  repl_session_stats(sa, &st);
  assert_int_equal(st.gaps_received, 1);
  assert_int_equal(repl_session_in_flight(sa), 0);
  /* go-back-N: the next batch starts again at seq 1 */
  assert_int_equal(repl_session_want_send(sa, wall(w, a)), REPL_WANT_BATCH);
  assert_int_equal(repl_session_send(sa, &src, wall(w, a), &b1), 0);
  assert_int_equal(decode_buf(&b1, &m), 0);
  assert_int_equal(crdt_delta_get(m.u.batch.changes, 0)->seq, 1);
  assert_int_equal(crdt_delta_count(m.u.batch.changes), 3);
  repl_msg_release(&m);
  link_push(&w->links[0][1], &b1);
  for (int t = 0; t < 200 && !converged(w); t++)
    step(w);
  assert_true(converged(w));
  assert_exactly_once(w);
  sp_buf_release(&b1);
  sp_buf_release(&b2);
  sp_buf_release(&ack);
  sim_free(w);
  free(w);
}

/* An ack whose vector covers an earlier batch retires it too: a lost ack
 * costs no resend. */
static void test_cumulative_ack_retires_earlier_batches(void **state) {
  (void)state;
  sim *w = calloc(1, sizeof *w);
  assert_non_null(w);
  sim_init(w, 2, 4);
  w->cfg.max_changes = 2;
  sim_mesh(w);
  region *a = &w->r[0];
  for (int i = 0; i < 4; i++)
    region_write(w, a);
  pump(w, 0);
  w->now += 50;
  pump(w, 0);
  assert_int_equal(repl_session_in_flight(a->sess[1]), 2);
  assert_int_equal(w->links[0][1].n, 2);
  link_deliver(w, 0, 1, 2);
  assert_int_equal(w->links[1][0].n, 2);
  /* the first ack is lost, the second arrives */
  free(w->links[1][0].q[0].data);
  w->links[1][0].q[0] = w->links[1][0].q[1];
  w->links[1][0].n = 1;
  link_deliver(w, 1, 0, 1);
  assert_int_equal(repl_session_in_flight(a->sess[1]), 0);
  assert_int_equal(repl_session_acked(a->sess[1])->seq[0], 4);
  w->now += 1000;
  assert_int_equal(repl_session_want_send(a->sess[1], wall(w, a)), REPL_WANT_NONE);
  sim_free(w);
  free(w);
}

/* A batch built by hand: origin 0 seqs 1, 2, 4 (a gap), origin 2 seq 1, and
 * a duplicate; the receiver has applied origin 0 up to 1. */
static void make_change(crdt_change *c, unsigned origin, uint64_t seq, uint64_t hlc) {
  memset(c, 0, sizeof *c);
  c->kind = CRDT_EXIST;
  c->page = "p";
  c->type = "component";
  c->id = "x";
  c->cl = 1;
  c->stamp.hlc = hlc;
  c->stamp.region = (crdt_region)origin;
  c->origin = (crdt_region)origin;
  c->seq = seq;
}

static void encode_batch(repl_msg *m, crdt_delta *d, unsigned sender, sp_buf *out) {
  memset(m, 0, sizeof *m);
  m->type = REPL_MSG_BATCH;
  m->version = REPL_PROTOCOL_VERSION;
  m->u.batch.batch_id = 1;
  m->u.batch.sender_region = (crdt_region)sender;
  m->u.batch.changes = d;
  assert_int_equal(repl_msg_encode(m, out), 0);
}

static void test_receiver_skips_duplicates_and_stops_at_gap(void **state) {
  (void)state;
  sim *w = calloc(1, sizeof *w);
  assert_non_null(w);
  sim_init(w, 2, 1);
  sim_mesh(w);
  region *b = &w->r[1];
  b->applied.seq[0] = 1;
  crdt_delta *d;
  crdt_change c;
  uint64_t hlc = CRDT_HLC_MAKE(BASE_WALL, 0);
  assert_int_equal(crdt_delta_new(NULL, &d), 0);
  uint64_t seqs[][2] = {{0, 1}, {0, 2}, {2, 1}, {0, 4}, {0, 3}, {2, 2}};
  for (size_t i = 0; i < 6; i++) {
    make_change(&c, (unsigned)seqs[i][0], seqs[i][1], hlc);
    assert_int_equal(crdt_delta_add(d, &c), 0);
  }
  repl_msg m, in;
  repl_apply ap;
  sp_buf buf;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  encode_batch(&m, d, 0, &buf);
  assert_int_equal(decode_buf(&buf, &in), 0);
  assert_int_equal(repl_session_on_batch(b->sess[0], &in, &b->applied, wall(w, b), &ap), 0);
  assert_int_equal(ap.status, REPL_GAP);
  /* 0/1 duplicate, 0/2 applied, 2/1 applied, 0/4 gap, 0/3 not after the gap,
   * 2/2 applied (another origin is not held back) */
  assert_int_equal(ap.count, 3);
  assert_int_equal(ap.changes[0]->origin, 0);
  assert_int_equal(ap.changes[0]->seq, 2);
  assert_int_equal(ap.changes[1]->origin, 2);
  assert_int_equal(ap.changes[2]->seq, 2);
  assert_int_equal(ap.applied.seq[0], 2);
  assert_int_equal(ap.applied.seq[2], 2);
  repl_stats st;
  repl_session_stats(b->sess[0], &st);
  assert_int_equal(st.duplicates, 1);
  assert_int_equal(st.gaps, 1);
  repl_apply_release(&ap);
  repl_msg_release(&in);

  /* a batch claiming another sender is refused whole as MALFORMED */
  encode_batch(&m, d, 1, &buf);
  assert_int_equal(decode_buf(&buf, &in), 0);
  assert_int_equal(repl_session_on_batch(b->sess[0], &in, &b->applied, wall(w, b), &ap), 0);
  assert_int_equal(ap.status, REPL_MALFORMED);
  assert_int_equal(ap.count, 0);
  assert_non_null(strstr(ap.reason, "region 1"));
  repl_apply_release(&ap);
  repl_msg_release(&in);

  /* ... and a MALFORMED ack fails the sender's session instead of looping */
  repl_session *sa = w->r[0].sess[1];
  repl_source src = {src_rewind, src_next, &w->r[0]};
  region_write(w, &w->r[0]);
  assert_int_equal(repl_session_send(sa, &src, wall(w, &w->r[0]), &buf), 0);
  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_ACK;
  m.version = 1;
  m.u.ack.batch_id = 1;
  m.u.ack.status = REPL_MALFORMED;
  strcpy(m.u.ack.reason, "bad change");
  assert_int_equal(repl_msg_encode(&m, &buf), 0);
  assert_int_equal(decode_buf(&buf, &in), 0);
  assert_int_equal(repl_session_on_ack(sa, &in, wall(w, &w->r[0])), SP_ERR_PROTO);
  assert_int_equal(repl_session_state(sa), REPL_STATE_FAILED);
  assert_non_null(strstr(repl_session_reason(sa), "bad change"));
  assert_int_equal(repl_session_want_send(sa, wall(w, &w->r[0])), REPL_WANT_NONE);
  repl_msg_release(&in);
  /* an ack for a batch never sent is a protocol error too */
  repl_session *sb = b->sess[0];
  m.u.ack.batch_id = 99;
  m.u.ack.status = REPL_OK;
  assert_int_equal(repl_msg_encode(&m, &buf), 0);
  assert_int_equal(decode_buf(&buf, &in), 0);
  assert_int_equal(repl_session_on_ack(sb, &in, wall(w, b)), SP_ERR_PROTO);
  repl_msg_release(&in);

  sp_buf_release(&buf);
  crdt_delta_free(d);
  sim_free(w);
  free(w);
}

/* ---- skew ------------------------------------------------------------------ */

static void test_skew_rejects_whole_batch_until_time_catches_up(void **state) {
  (void)state;
  sim *w = calloc(1, sizeof *w);
  assert_non_null(w);
  sim_init(w, 2, 5);
  w->cfg.max_changes = 20;
  w->cfg.max_bytes = 64 * 1024;
  sim_mesh(w);
  region *a = &w->r[0], *b = &w->r[1];
  for (int i = 0; i < 4; i++)
    region_write(w, a);
  /* one write stamped by a clock 10 s ahead */
  a->skew_ms = 10000;
  region_write(w, a);
  a->skew_ms = 0;
  crdt_vclock before = b->applied;

  repl_source src = {src_rewind, src_next, a};
  sp_buf buf, ack;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  sp_buf_init(&ack, REPL_MAX_MESSAGE);
  repl_msg m;
  repl_apply ap;
  assert_int_equal(repl_session_send(a->sess[1], &src, wall(w, a), &buf), 0);
  assert_int_equal(decode_buf(&buf, &m), 0);
  assert_int_equal(crdt_delta_count(m.u.batch.changes), 5);
  assert_int_equal(repl_session_on_batch(b->sess[0], &m, &b->applied, wall(w, b), &ap), 0);
  assert_int_equal(ap.status, REPL_SKEW_REJECT);
  assert_int_equal(ap.count, 0);
  assert_non_null(strstr(ap.reason, "ahead of local time"));
  assert_non_null(strstr(ap.reason, "0/5"));
  assert_int_equal(crdt_vclock_compare(&ap.applied, &before), CRDT_EQUAL);
  repl_stats st;
  repl_session_stats(b->sess[0], &st);
  assert_int_equal(st.skew_rejects, 1);
  assert_int_equal(repl_session_ack(b->sess[0], &ap, &b->applied, wall(w, b), &ack), 0);
  repl_apply_release(&ap);
  repl_msg_release(&m);
  assert_int_equal(crdt_vclock_compare(&b->applied, &before), CRDT_EQUAL);

  /* the sender backs off instead of hammering the peer */
  assert_int_equal(decode_buf(&ack, &m), 0);
  assert_int_equal(m.u.ack.status, REPL_SKEW_REJECT);
  assert_int_equal(repl_session_on_ack(a->sess[1], &m, wall(w, a)), 0);
  repl_msg_release(&m);
  repl_session_stats(a->sess[1], &st);
  assert_int_equal(st.skew_rejected_by_peer, 1);
  assert_int_equal(repl_session_want_send(a->sess[1], wall(w, a)), REPL_WANT_NONE);
  assert_true(repl_session_next_wakeup(a->sess[1], wall(w, a)) > wall(w, a));

  /* while wall time is behind, retries keep being refused; once it has
   * caught up, the same rows are accepted */
  for (int t = 0; t < 200; t++)
    step(w);
  assert_int_equal(b->applied.seq[0], 0);
  repl_session_stats(b->sess[0], &st);
  assert_true(st.skew_rejects > 1);
  w->now += 10000;
  for (int t = 0; t < 100 && !converged(w); t++)
    step(w);
  assert_int_equal(b->applied.seq[0], 5);
  assert_exactly_once(w);
  /* the receiver's clock was never dragged ahead of its wall time by more
   * than the bound */
  assert_true(CRDT_HLC_MS(b->clock.last) <= wall(w, b) + CRDT_DEFAULT_MAX_SKEW_MS);
  sp_buf_release(&buf);
  sp_buf_release(&ack);
  sim_free(w);
  free(w);
}

/* ---- handshake and versions ------------------------------------------------ */

static void handshake_msg(repl_msg *m, uint32_t max, uint32_t min) {
  memset(m, 0, sizeof *m);
  m->type = REPL_MSG_HANDSHAKE;
  m->version = max;
  strcpy(m->u.hs.cluster_id, "test-cluster");
  strcpy(m->u.hs.region_name, "eu-west");
  m->u.hs.region_id = 1;
  m->u.hs.protocol_version = max;
  m->u.hs.min_protocol_version = min;
  m->u.hs.vector.seq[1] = 42;
}

/* Region 0's acceptor session for peer 1 receives `hs` (via bytes). */
static int accept_hs(const repl_msg *hs, repl_msg *reply, repl_session **out) {
  repl_config cfg = {.cluster_id = "test-cluster", .region_name = "us-east", .region_id = 0,
                     .peer_name = "eu-west", .peer_id = 1};
  sp_buf buf;
  repl_msg in;
  crdt_vclock applied;
  crdt_vclock_init(&applied);
  applied.seq[0] = 7;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  assert_int_equal(repl_session_new(&cfg, out), 0);
  assert_int_equal(repl_msg_encode(hs, &buf), 0);
  assert_int_equal(decode_buf(&buf, &in), 0);
  int rc = repl_session_on_handshake(*out, &in, &applied, &buf);
  repl_msg_release(&in);
  assert_int_equal(decode_buf(&buf, reply), 0);
  assert_int_equal(reply->type, REPL_MSG_HANDSHAKE_REPLY);
  sp_buf_release(&buf);
  return rc;
}

static void test_version_negotiation(void **state) {
  (void)state;
  repl_msg hs, reply;
  repl_session *s;

  /* a newer peer (speaks 1..3) is accepted at our version */
  handshake_msg(&hs, 3, 1);
  assert_int_equal(accept_hs(&hs, &reply, &s), 0);
  assert_true(reply.u.reply.accepted);
  assert_int_equal(reply.u.reply.protocol_version, REPL_PROTOCOL_VERSION);
  assert_int_equal(reply.u.reply.vector.seq[0], 7);
  assert_int_equal(repl_session_state(s), REPL_STATE_ESTABLISHED);
  assert_int_equal(repl_session_version(s), 1);
  assert_int_equal(repl_session_acked(s)->seq[1], 42); /* its vector */
  repl_session_free(s);

  /* a peer whose minimum is above our maximum is refused with a reason */
  handshake_msg(&hs, 3, 2);
  assert_int_equal(accept_hs(&hs, &reply, &s), SP_ERR_PROTO);
  assert_false(reply.u.reply.accepted);
  assert_int_equal(reply.u.reply.protocol_version, 0);
  assert_non_null(strstr(reply.u.reply.reason, "no common protocol version"));
  assert_non_null(strstr(reply.u.reply.reason, "2..3"));
  assert_int_equal(repl_session_state(s), REPL_STATE_FAILED);
  assert_non_null(strstr(repl_session_reason(s), "protocol"));
  repl_session_free(s);

  /* nonsense ranges and version 0 are refused too */
  handshake_msg(&hs, 0, 0);
  assert_int_equal(accept_hs(&hs, &reply, &s), SP_ERR_PROTO);
  repl_session_free(s);

  /* the dialer's side: a reply choosing a version we do not speak */
  repl_config cfg = {.cluster_id = "test-cluster", .region_name = "eu-west", .region_id = 1,
                     .peer_name = "us-east", .peer_id = 0};
  crdt_vclock v;
  crdt_vclock_init(&v);
  sp_buf buf;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  for (int accepted = 0; accepted <= 1; accepted++) {
    assert_int_equal(repl_session_new(&cfg, &s), 0);
    assert_int_equal(repl_session_on_handshake_reply(s, &reply), SP_ERR_BUSY); /* no hello */
    assert_int_equal(repl_session_hello(s, &v, &buf), 0);
    assert_int_equal(repl_session_hello(s, &v, &buf), SP_ERR_BUSY);
    memset(&reply, 0, sizeof reply);
    reply.type = REPL_MSG_HANDSHAKE_REPLY;
    reply.version = 2;
    reply.u.reply.accepted = accepted;
    reply.u.reply.protocol_version = accepted ? 2 : 0;
    strcpy(reply.u.reply.reason, "go away");
    assert_int_equal(repl_msg_encode(&reply, &buf), 0);
    repl_msg in;
    assert_int_equal(decode_buf(&buf, &in), 0); /* handshake replies decode at any version */
    assert_int_equal(repl_session_on_handshake_reply(s, &in), SP_ERR_PROTO);
    assert_int_equal(repl_session_state(s), REPL_STATE_FAILED);
    assert_non_null(strstr(repl_session_reason(s), accepted ? "version 2" : "go away"));
    repl_session_free(s);
  }

  /* after the handshake, messages in another version are refused by the
   * decoder (above ours) */
  crdt_delta *d;
  assert_int_equal(crdt_delta_new(NULL, &d), 0);
  repl_msg m;
  encode_batch(&m, d, 1, &buf);
  m.version = 2;
  assert_int_equal(repl_msg_encode(&m, &buf), 0);
  assert_int_equal(decode_buf(&buf, &m), SP_ERR_PROTO);
  crdt_delta_free(d);
  sp_buf_release(&buf);
}

static void test_handshake_identity_checks(void **state) {
  (void)state;
  repl_msg hs, reply;
  repl_session *s;
  handshake_msg(&hs, 1, 1);
  strcpy(hs.u.hs.cluster_id, "other-cluster");
  assert_int_equal(accept_hs(&hs, &reply, &s), SP_ERR_PROTO);
  assert_non_null(strstr(reply.u.reply.reason, "other-cluster"));
  repl_session_free(s);

  handshake_msg(&hs, 1, 1);
  hs.u.hs.region_id = 2;
  assert_int_equal(accept_hs(&hs, &reply, &s), SP_ERR_PROTO);
  assert_non_null(strstr(reply.u.reply.reason, "not the expected peer"));
  /* nothing flows on a refused session */
  assert_int_equal(repl_session_want_send(s, BASE_WALL), REPL_WANT_NONE);
  repl_session_free(s);

  handshake_msg(&hs, 1, 1);
  strcpy(hs.u.hs.region_name, "ap-south");
  assert_int_equal(accept_hs(&hs, &reply, &s), SP_ERR_PROTO);
  repl_session_free(s);

  /* batches before the handshake are not accepted */
  repl_config cfg = {.cluster_id = "c", .region_name = "a", .region_id = 0,
                     .peer_name = "b", .peer_id = 1};
  assert_int_equal(repl_session_new(&cfg, &s), 0);
  crdt_delta *d;
  assert_int_equal(crdt_delta_new(NULL, &d), 0);
  sp_buf buf;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  repl_msg m, in;
  repl_apply ap;
  crdt_vclock v;
  crdt_vclock_init(&v);
  encode_batch(&m, d, 1, &buf);
  assert_int_equal(decode_buf(&buf, &in), 0);
  assert_int_equal(repl_session_on_batch(s, &in, &v, BASE_WALL, &ap), SP_ERR_AGAIN);
  assert_int_equal(repl_session_on_ack(s, &in, BASE_WALL), SP_ERR_INVAL);
  repl_apply_release(&ap);
  repl_msg_release(&in);
  crdt_delta_free(d);
  sp_buf_release(&buf);
  repl_session_free(s);

  /* bad configurations */
  cfg.peer_id = 0;
  assert_int_equal(repl_session_new(&cfg, &s), SP_ERR_INVAL);
  cfg.peer_id = 64;
  assert_int_equal(repl_session_new(&cfg, &s), SP_ERR_INVAL);
  cfg.peer_id = 1;
  cfg.cluster_id = "";
  assert_int_equal(repl_session_new(&cfg, &s), SP_ERR_INVAL);
  cfg.cluster_id = "c";
  cfg.window = REPL_MAX_WINDOW + 1;
  assert_int_equal(repl_session_new(&cfg, &s), SP_ERR_INVAL);
}

/* ---- wire: round trips, unknown fields, malformed input --------------------- */

static void test_roundtrip_every_message(void **state) {
  (void)state;
  sp_buf buf;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  repl_msg m, in;
  crdt_delta *d;
  crdt_change c;
  assert_int_equal(crdt_delta_new(NULL, &d), 0);
  make_change(&c, 2, 9, CRDT_HLC_MAKE(BASE_WALL, 3));
  assert_int_equal(crdt_delta_add(d, &c), 0);
  c.kind = CRDT_FIELD;
  c.field = "name";
  c.value = (const uint8_t *)"API\0x";
  c.value_len = 5;
  c.seq = 10;
  assert_int_equal(crdt_delta_add(d, &c), 0);
  c.value_null = 1;
  c.value = NULL;
  c.value_len = 0;
  c.seq = 11;
  assert_int_equal(crdt_delta_add(d, &c), 0);
  c.value_null = 0;
  c.value = (const uint8_t *)"";
  c.seq = 12;
  assert_int_equal(crdt_delta_add(d, &c), 0);

  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_BATCH;
  m.version = 1;
  m.u.batch.batch_id = 77;
  m.u.batch.sender_region = 2;
  m.u.batch.changes = d;
  m.u.batch.sender_vector.seq[2] = 12;
  m.u.batch.sender_vector.seq[63] = 5;
  m.u.batch.sender_wall_ms = BASE_WALL;
  assert_int_equal(repl_msg_encode(&m, &buf), 0);
  assert_int_equal(decode_buf(&buf, &in), 0);
  assert_int_equal(in.type, REPL_MSG_BATCH);
  assert_int_equal(in.u.batch.batch_id, 77);
  assert_int_equal(in.u.batch.sender_region, 2);
  assert_int_equal(in.u.batch.sender_wall_ms, BASE_WALL);
  assert_int_equal(crdt_vclock_compare(&in.u.batch.sender_vector, &m.u.batch.sender_vector),
                   CRDT_EQUAL);
  assert_int_equal(crdt_delta_count(in.u.batch.changes), 4);
  for (size_t i = 0; i < 4; i++) {
    const crdt_change *x = crdt_delta_get(d, i), *y = crdt_delta_get(in.u.batch.changes, i);
    assert_int_equal(x->kind, y->kind);
    assert_string_equal(x->page, y->page);
    assert_string_equal(x->type, y->type);
    assert_string_equal(x->id, y->id);
    if (x->kind == CRDT_FIELD) {
      assert_string_equal(x->field, y->field);
      assert_int_equal(x->value_null, y->value_null);
      assert_int_equal(x->value_len, y->value_len);
      if (x->value_len)
        assert_memory_equal(x->value, y->value, x->value_len);
    } else {
      assert_null(y->field);
    }
    assert_int_equal(x->cl, y->cl);
    assert_int_equal(x->stamp.hlc, y->stamp.hlc);
    assert_int_equal(x->stamp.region, y->stamp.region);
    assert_int_equal(x->origin, y->origin);
    assert_int_equal(x->seq, y->seq);
  }
  repl_msg_release(&in);

  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_ACK;
  m.version = 1;
  m.u.ack.batch_id = 5;
  m.u.ack.status = REPL_SKEW_REJECT;
  m.u.ack.applied.seq[1] = 3;
  m.u.ack.wall_ms = 123;
  strcpy(m.u.ack.reason, "too far ahead");
  assert_int_equal(repl_msg_encode(&m, &buf), 0);
  assert_int_equal(decode_buf(&buf, &in), 0);
  assert_memory_equal(&in.u.ack, &m.u.ack, sizeof m.u.ack);
  repl_msg_release(&in);

  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_SNAPSHOT_REQUEST;
  m.version = 1;
  m.u.req.snapshot_id = 9;
  m.u.req.chunk_seq = 4;
  memcpy(m.u.req.cursor, "p\0c\0x", 5);
  m.u.req.cursor_len = 5;
  assert_int_equal(repl_msg_encode(&m, &buf), 0);
  assert_int_equal(decode_buf(&buf, &in), 0);
  assert_memory_equal(&in.u.req, &m.u.req, sizeof m.u.req);

  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_SNAPSHOT_CHUNK;
  m.version = 1;
  m.u.chunk.batch_id = 8;
  m.u.chunk.sender_region = 2;
  m.u.chunk.snapshot_id = 6;
  m.u.chunk.chunk_seq = 1;
  m.u.chunk.cursor_len = 3;
  memcpy(m.u.chunk.cursor, "abc", 3);
  m.u.chunk.next_cursor_len = 2;
  memcpy(m.u.chunk.next_cursor, "de", 2);
  m.u.chunk.changes = d;
  m.u.chunk.last = 1;
  m.u.chunk.vector.seq[0] = 4;
  assert_int_equal(repl_msg_encode(&m, &buf), 0);
  assert_int_equal(decode_buf(&buf, &in), 0);
  assert_int_equal(in.u.chunk.batch_id, 8);
  assert_int_equal(in.u.chunk.snapshot_id, 6);
  assert_int_equal(in.u.chunk.chunk_seq, 1);
  assert_int_equal(in.u.chunk.last, 1);
  assert_int_equal(in.u.chunk.next_cursor_len, 2);
  assert_memory_equal(in.u.chunk.cursor, "abc", 3);
  assert_int_equal(in.u.chunk.vector.seq[0], 4);
  assert_int_equal(crdt_delta_count(in.u.chunk.changes), 4);
  repl_msg_release(&in);

  repl_msg hs;
  handshake_msg(&hs, 1, 1);
  assert_int_equal(repl_msg_encode(&hs, &buf), 0);
  assert_int_equal(decode_buf(&buf, &in), 0);
  assert_memory_equal(&in.u.hs, &hs.u.hs, sizeof hs.u.hs);

  /* a message larger than the caller's buffer allows */
  sp_buf small;
  sp_buf_init(&small, 16);
  m.type = REPL_MSG_SNAPSHOT_CHUNK;
  assert_int_equal(repl_msg_encode(&m, &small), SP_ERR_TOOBIG);
  assert_int_equal(small.len, 0);
  sp_buf_release(&small);
  /* fields the decoder would refuse are refused when encoding */
  m.u.chunk.sender_region = 64;
  assert_int_equal(repl_msg_encode(&m, &buf), SP_ERR_INVAL);
  crdt_delta_free(d);
  sp_buf_release(&buf);
}

/* Packs a batch built with the generated API (to reach bytes our encoder
 * never writes). */
static void pack_env(Repl__Envelope *env, sp_buf *out) {
  size_t n = repl__envelope__get_packed_size(env);
  uint8_t *p = malloc(n ? n : 1);
  assert_non_null(p);
  repl__envelope__pack(env, p);
  sp_buf_reset(out);
  assert_int_equal(sp_buf_add(out, p, n), 0);
  free(p);
}

typedef struct pb_batch {
  Repl__Envelope env;
  Repl__DeltaBatch batch;
  Repl__Change ch;
  Repl__Change *chp[1];
  Repl__VectorEntry ve[2];
  Repl__VectorEntry *vep[2];
} pb_batch;

static void pb_batch_init(pb_batch *p) {
  repl__envelope__init(&p->env);
  repl__delta_batch__init(&p->batch);
  repl__change__init(&p->ch);
  p->env.protocol_version = 1;
  p->env.body_case = REPL__ENVELOPE__BODY_BATCH;
  p->env.batch = &p->batch;
  p->batch.batch_id = 1;
  p->batch.sender_region = 1;
  p->batch.n_changes = 1;
  p->chp[0] = &p->ch;
  p->batch.changes = p->chp;
  p->ch.kind = REPL__CHANGE_KIND__CHANGE_KIND_FIELD;
  p->ch.page_id = (ProtobufCBinaryData){1, (uint8_t *)"p"};
  p->ch.type = (ProtobufCBinaryData){1, (uint8_t *)"t"};
  p->ch.id = (ProtobufCBinaryData){1, (uint8_t *)"i"};
  p->ch.field = (ProtobufCBinaryData){1, (uint8_t *)"f"};
  p->ch.value = (ProtobufCBinaryData){2, (uint8_t *)"vv"};
  p->ch.cl = 1;
  p->ch.hlc = 1;
  p->ch.region = 1;
  p->ch.origin = 1;
  p->ch.seq = 1;
  for (int i = 0; i < 2; i++) {
    repl__vector_entry__init(&p->ve[i]);
    p->vep[i] = &p->ve[i];
  }
}

static int decode_pb(pb_batch *p) {
  sp_buf buf;
  repl_msg m;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  pack_env(&p->env, &buf);
  int rc = decode_buf(&buf, &m);
  if (rc == 0)
    repl_msg_release(&m);
  sp_buf_release(&buf);
  return rc;
}

static void test_unknown_fields_are_ignored(void **state) {
  (void)state;
  pb_batch p;
  pb_batch_init(&p);
  assert_int_equal(decode_pb(&p), 0);
  /* a field a newer peer added inside a Change, and one in the Envelope */
  /* protobuf-c keeps an unknown field's bytes after the tag, length
   * prefix included */
  ProtobufCMessageUnknownField uf = {.tag = 50,
                                     .wire_type = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED,
                                     .len = 4,
                                     .data = (uint8_t *)"\003new"};
  p.ch.base.n_unknown_fields = 1;
  p.ch.base.unknown_fields = &uf;
  assert_int_equal(decode_pb(&p), 0);
  p.env.base.n_unknown_fields = 1;
  p.env.base.unknown_fields = &uf;
  assert_int_equal(decode_pb(&p), 0);
  /* an Envelope carrying only a message type we do not know */
  p.env.body_case = REPL__ENVELOPE__BODY__NOT_SET;
  assert_int_equal(decode_pb(&p), SP_ERR_PROTO);
  p.env.base.n_unknown_fields = 0;
  assert_int_equal(decode_pb(&p), SP_ERR_PARSE); /* empty */
}

static void test_malformed_input_is_refused(void **state) {
  (void)state;
  pb_batch p;
  repl_msg m;

#define EXPECT(rc, mutate)                                                                     \
  do {                                                                                         \
    pb_batch_init(&p);                                                                         \
    mutate;                                                                                    \
    assert_int_equal(decode_pb(&p), rc);                                                       \
  } while (0)
  EXPECT(0, (void)0);
  EXPECT(SP_ERR_PROTO, p.env.protocol_version = 0);
  EXPECT(SP_ERR_PROTO, p.env.protocol_version = 2);
  EXPECT(SP_ERR_PARSE, p.batch.batch_id = 0);
  EXPECT(SP_ERR_PARSE, p.batch.sender_region = 64);
  EXPECT(SP_ERR_PARSE, p.ch.kind = REPL__CHANGE_KIND__CHANGE_KIND_UNSPECIFIED);
  EXPECT(SP_ERR_PARSE, p.ch.kind = (Repl__ChangeKind)7);
  EXPECT(SP_ERR_PARSE, p.ch.page_id.len = 0);
  EXPECT(SP_ERR_PARSE, p.ch.id = ((ProtobufCBinaryData){3, (uint8_t *)"a\0b"}));
  EXPECT(SP_ERR_PARSE, p.ch.type = ((ProtobufCBinaryData){2, (uint8_t *)"a\n"}));
  EXPECT(SP_ERR_PARSE, p.ch.field.len = 0);
  EXPECT(SP_ERR_PARSE, p.ch.value_null = 1);
  EXPECT(SP_ERR_PARSE, p.ch.cl = 0);
  EXPECT(SP_ERR_PARSE, p.ch.seq = 0);
  EXPECT(SP_ERR_PARSE, p.ch.origin = 64);
  EXPECT(SP_ERR_PARSE, p.ch.region = 1000);
  EXPECT(SP_ERR_PARSE, (p.ch.kind = REPL__CHANGE_KIND__CHANGE_KIND_EXIST));
  EXPECT(0, (p.ch.kind = REPL__CHANGE_KIND__CHANGE_KIND_EXIST, p.ch.field.len = 0,
             p.ch.value.len = 0));
  char longname[CRDT_MAX_NAME + 1];
  memset(longname, 'n', sizeof longname);
  EXPECT(SP_ERR_PARSE, p.ch.page_id = ((ProtobufCBinaryData){sizeof longname, (uint8_t *)longname}));
  EXPECT(0, p.ch.page_id = ((ProtobufCBinaryData){CRDT_MAX_NAME, (uint8_t *)longname}));
  /* vectors: region out of range, a region twice */
  EXPECT(SP_ERR_PARSE, (p.ve[0].region_id = 64, p.batch.n_sender_vector = 1,
                        p.batch.sender_vector = p.vep));
  EXPECT(SP_ERR_PARSE, (p.ve[0].region_id = 3, p.ve[1].region_id = 3,
                        p.batch.n_sender_vector = 2, p.batch.sender_vector = p.vep));
  EXPECT(0, (p.ve[0].region_id = 3, p.ve[1].region_id = 4, p.batch.n_sender_vector = 2,
             p.batch.sender_vector = p.vep));
  /* a value over crdt's limit */
  uint8_t *big = calloc(1, CRDT_MAX_VALUE + 1);
  assert_non_null(big);
  EXPECT(SP_ERR_TOOBIG, p.ch.value = ((ProtobufCBinaryData){CRDT_MAX_VALUE + 1, big}));
  free(big);
  /* an ack without a status, a chunk without a snapshot id */
  Repl__Ack ack = REPL__ACK__INIT;
  EXPECT(SP_ERR_PARSE, (p.env.body_case = REPL__ENVELOPE__BODY_ACK, p.env.ack = &ack));
  ack.status = REPL__ACK_STATUS__ACK_OK;
  EXPECT(0, (p.env.body_case = REPL__ENVELOPE__BODY_ACK, p.env.ack = &ack));
  Repl__SnapshotChunk ch = REPL__SNAPSHOT_CHUNK__INIT;
  ch.batch_id = 1;
  EXPECT(SP_ERR_PARSE, (p.env.body_case = REPL__ENVELOPE__BODY_SNAPSHOT_CHUNK,
                        p.env.snapshot_chunk = &ch));
  uint8_t cur[REPL_MAX_CURSOR + 1] = {0};
  Repl__SnapshotRequest rq = REPL__SNAPSHOT_REQUEST__INIT;
  rq.cursor = (ProtobufCBinaryData){sizeof cur, cur};
  EXPECT(SP_ERR_PARSE, (p.env.body_case = REPL__ENVELOPE__BODY_SNAPSHOT_REQUEST,
                        p.env.snapshot_request = &rq));
  Repl__Handshake hs = REPL__HANDSHAKE__INIT;
  EXPECT(SP_ERR_PARSE, (p.env.body_case = REPL__ENVELOPE__BODY_HANDSHAKE, p.env.handshake = &hs));
#undef EXPECT

  /* bytes that are not protobuf, or cut short */
  static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
  assert_int_equal(repl_msg_decode(junk, sizeof junk, &m), SP_ERR_PARSE);
  assert_int_equal(repl_msg_decode((const uint8_t *)"", 0, &m), SP_ERR_PARSE);
  sp_buf buf;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  pb_batch_init(&p);
  pack_env(&p.env, &buf);
  for (size_t cut = 0; cut < buf.len; cut++)
    assert_int_equal(repl_msg_decode((const uint8_t *)buf.base, cut, &m), SP_ERR_PARSE);
  /* random corruption: decoded or refused, never a crash (ASan checks) */
  uint64_t rng = 42;
  uint8_t tmp[512];
  assert_true(buf.len <= sizeof tmp);
  for (int i = 0; i < 20000; i++) {
    memcpy(tmp, buf.base, buf.len);
    for (int k = 0; k < 3; k++)
      tmp[below(&rng, (uint32_t)buf.len)] = (uint8_t)rng_next(&rng);
    int rc = repl_msg_decode(tmp, buf.len, &m);
    assert_true(rc == 0 || rc == SP_ERR_PARSE || rc == SP_ERR_PROTO || rc == SP_ERR_TOOBIG);
    if (rc == 0)
      repl_msg_release(&m);
  }
  sp_buf_release(&buf);

  /* oversized bodies are refused before parsing */
  uint8_t *huge = calloc(1, (size_t)REPL_MAX_MESSAGE + 1);
  assert_non_null(huge);
  assert_int_equal(repl_msg_decode(huge, (size_t)REPL_MAX_MESSAGE + 1, &m), SP_ERR_TOOBIG);
  free(huge);
}

/* ---- allocation failures ---------------------------------------------------- */

static void test_decode_allocation_failure_sweep(void **state) {
  (void)state;
  sp_buf buf;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  crdt_delta *d;
  crdt_change c;
  assert_int_equal(crdt_delta_new(NULL, &d), 0);
  for (uint64_t q = 1; q <= 40; q++) {
    make_change(&c, 1, q, q);
    assert_int_equal(crdt_delta_add(d, &c), 0);
  }
  repl_msg m, in;
  encode_batch(&m, d, 1, &buf);
  int ok = 0;
  long k;
  for (k = 0; k < 100000 && !ok; k++) {
    sp_alloc_fail_after(k);
    int rc = decode_buf(&buf, &in);
    sp_alloc_fail_after(-1);
    if (rc == 0) {
      assert_int_equal(crdt_delta_count(in.u.batch.changes), 40);
      repl_msg_release(&in);
      ok = 1;
    } else {
      assert_int_equal(rc, SP_ERR_NOMEM);
    }
  }
  assert_true(ok);
  assert_true(k > 3); /* several allocations were failed in turn */

  /* encoding and the session's send/receive/ack paths too */
  for (k = 0;; k++) {
    sp_alloc_fail_after(k);
    int rc = repl_msg_encode(&m, &buf);
    sp_alloc_fail_after(-1);
    if (rc == 0)
      break;
    assert_int_equal(rc, SP_ERR_NOMEM);
  }
  assert_true(k > 0);
  crdt_delta_free(d);
  sp_buf_release(&buf);

  sim *w = calloc(1, sizeof *w);
  assert_non_null(w);
  sim_init(w, 2, 9);
  sim_mesh(w);
  for (int i = 0; i < 12; i++)
    region_write(w, &w->r[0]);
  repl_source src = {src_rewind, src_next, &w->r[0]};
  sp_buf out;
  sp_buf_init(&out, REPL_MAX_MESSAGE);
  for (k = 0;; k++) {
    sp_alloc_fail_after(k);
    int rc = repl_session_send(w->r[0].sess[1], &src, wall(w, &w->r[0]), &out);
    sp_alloc_fail_after(-1);
    if (rc == 0)
      break;
    assert_int_equal(rc, SP_ERR_NOMEM);
    assert_int_equal(repl_session_in_flight(w->r[0].sess[1]), 0); /* nothing half-sent */
  }
  assert_true(k > 0);
  assert_int_equal(decode_buf(&out, &in), 0);
  assert_int_equal(crdt_delta_get(in.u.batch.changes, 0)->seq, 1);
  region *b = &w->r[1];
  repl_apply ap;
  for (k = 0;; k++) {
    sp_alloc_fail_after(k);
    int rc = repl_session_on_batch(b->sess[0], &in, &b->applied, wall(w, b), &ap);
    if (rc == 0) {
      rc = repl_session_ack(b->sess[0], &ap, NULL, wall(w, b), &out);
      if (rc)
        repl_apply_release(&ap);
    }
    sp_alloc_fail_after(-1);
    if (rc == 0)
      break;
    assert_int_equal(rc, SP_ERR_NOMEM);
  }
  assert_true(ap.count > 1);
  assert_int_equal(ap.count, crdt_delta_count(in.u.batch.changes));
  repl_apply_release(&ap);
  repl_msg_release(&in);
  sp_buf_release(&out);
  sim_free(w);
  free(w);
}

/* ---- coalescing and re-sending ------------------------------------------------ */

static void test_want_send_coalesces_and_resends_same_bytes(void **state) {
  (void)state;
  sim *w = calloc(1, sizeof *w);
  assert_non_null(w);
  sim_init(w, 2, 11);
  w->cfg.resend_ms = 300;
  w->cfg.sync_interval_ms = 100;
  sim_mesh(w);
  region *a = &w->r[0];
  repl_session *s = a->sess[1];
  repl_source src = {src_rewind, src_next, a};
  sp_buf first, again;
  sp_buf_init(&first, REPL_MAX_MESSAGE);
  sp_buf_init(&again, REPL_MAX_MESSAGE);
  uint64_t t0 = wall(w, a);

  assert_int_equal(repl_session_want_send(s, t0), REPL_WANT_NONE); /* nothing pending */
  assert_int_equal(repl_session_next_wakeup(s, t0), UINT64_MAX);
  region_write(w, a);
  /* idle peer: at once */
  assert_int_equal(repl_session_want_send(s, t0), REPL_WANT_BATCH);
  assert_int_equal(repl_session_next_wakeup(s, t0), t0);
  assert_int_equal(repl_session_send(s, &src, t0, &first), 0);
  /* busy peer: the next write waits for the tick */
  region_write(w, a);
  assert_int_equal(repl_session_want_send(s, t0 + 10), REPL_WANT_NONE);
  assert_int_equal(repl_session_next_wakeup(s, t0 + 10), t0 + 100);
  assert_int_equal(repl_session_want_send(s, t0 + 100), REPL_WANT_BATCH);
  assert_int_equal(repl_session_send(s, &src, t0 + 100, &again), 0);
  /* window full: only the resend timer is left */
  region_write(w, a);
  assert_int_equal(repl_session_want_send(s, t0 + 250), REPL_WANT_NONE);
  assert_int_equal(repl_session_next_wakeup(s, t0 + 250), t0 + 300);
  assert_int_equal(repl_session_want_send(s, t0 + 300), REPL_WANT_RESEND);
  assert_int_equal(repl_session_send(s, &src, t0 + 300, &again), 0);
  assert_int_equal(again.len, first.len);
  assert_memory_equal(again.base, first.base, first.len);
  repl_stats st;
  repl_session_stats(s, &st);
  assert_int_equal(st.batches_sent, 2);
  assert_int_equal(st.batches_resent, 1);
  assert_int_equal(st.changes_sent, 2);
  /* a source with nothing new (rows not loaded yet) does not spin */
  region *b = &w->r[1];
  crdt_vclock ahead = b->applied;
  ahead.seq[1] = 5;
  repl_session_notify(b->sess[0], &ahead);
  repl_source bsrc = {src_rewind, src_next, b};
  assert_int_equal(repl_session_want_send(b->sess[0], t0), REPL_WANT_BATCH);
  assert_int_equal(repl_session_send(b->sess[0], &bsrc, t0, &again), SP_ERR_AGAIN);
  assert_int_equal(repl_session_want_send(b->sess[0], t0), REPL_WANT_NONE);
  sp_buf_release(&first);
  sp_buf_release(&again);
  sim_free(w);
  free(w);
}

/* ---- snapshots ------------------------------------------------------------------ */

/* Rows a snapshot brought never were in the receiver's log: the receiver's
 * vector rises (notify) with nothing to read, its session to a third
 * region finds no row and waits; when the log floor rises over those rows
 * (repl_session_floor_rose) the session asks the source again and turns to
 * a snapshot instead of waiting for a write that may never come. */
static void test_floor_rise_turns_a_waiting_peer_to_snapshot(void **state) {
  (void)state;
  sim *w = calloc(1, sizeof *w);
  assert_non_null(w);
  sim_init(w, 3, 12);
  sim_mesh(w);
  region *b = &w->r[1];
  repl_session *s = b->sess[2];
  assert_int_equal(repl_session_set_relay(s, 0, 1), 0); /* region 0's rows, to region 2 */
  crdt_vclock adopted = b->applied;
  adopted.seq[0] = 7; /* region 0's rows up to 7 came by snapshot */
  repl_session_notify(s, &adopted);
  repl_source src = {src_rewind, src_next, b};
  sp_buf out;
  sp_buf_init(&out, REPL_MAX_MESSAGE);
  uint64_t t0 = wall(w, b);
  assert_int_equal(repl_session_want_send(s, t0), REPL_WANT_BATCH);
  assert_int_equal(repl_session_send(s, &src, t0, &out), SP_ERR_AGAIN); /* no row */
  assert_int_equal(repl_session_want_send(s, t0 + 1000), REPL_WANT_NONE); /* waits */
  b->floor[0] = 7; /* the snapshot raised the floor */
  assert_int_equal(repl_session_want_send(s, t0 + 1000), REPL_WANT_NONE);
  repl_session_floor_rose(s);
  assert_int_equal(repl_session_want_send(s, t0 + 1000), REPL_WANT_BATCH);
  assert_int_equal(repl_session_send(s, &src, t0 + 1000, &out), SP_ERR_AGAIN);
  assert_true(repl_session_in_snapshot(s));
  assert_int_equal(repl_session_want_send(s, t0 + 1000), REPL_WANT_SNAPSHOT);
  sp_buf_release(&out);
  sim_free(w);
  free(w);
}

/* Region 0 wrote 40 changes, then trimmed its log (physically: the source
 * shows a hole; or by a floor: the source answers SP_ERR_RANGE).  Region 1
 * starts empty, gets a snapshot over the lossy link, adopts the vector, and
 * later writes arrive as deltas. */
static void snapshot_case(int by_floor, unsigned long long seed) {
  sim *w = calloc(1, sizeof *w);
  assert_non_null(w);
  sim_init(w, 2, seed);
  w->drop_pct = 20;
  w->dup_pct = 10;
  w->reorder = 1;
  w->reconnect_pct = seed % 2;
  for (int i = 0; i < 40; i++)
    region_write(w, &w->r[0]);
  if (by_floor)
    w->r[0].floor[0] = 30;
  else
    log_trim(&w->r[0], 0, 30);
  sim_mesh(w);
  for (int t = 0; t < 20000 && !settled(w); t++)
    step(w);
  assert_true(converged(w));
  assert_same_state(w);
  repl_stats st;
  repl_session_stats(w->r[0].sess[1], &st);
  assert_true(st.snapshots_started >= 1);
  assert_true(st.snapshot_chunks_sent >= 3);
  assert_false(repl_session_in_snapshot(w->r[0].sess[1]));
  for (uint64_t q = 1; q <= 40; q++)
    assert_int_equal(w->r[1].applies[0][q], 0); /* state came by snapshot */
  /* then deltas resume from the adopted vector */
  for (int i = 0; i < 10; i++)
    region_write(w, &w->r[0]);
  for (int i = 0; i < 5; i++)
    region_write(w, &w->r[1]);
  for (int t = 0; t < 20000 && !settled(w); t++)
    step(w);
  assert_true(converged(w));
  assert_same_state(w);
  for (uint64_t q = 41; q <= 50; q++)
    assert_int_equal(w->r[1].applies[0][q], 1);
  sim_free(w);
  free(w);
}

static void test_snapshot_when_log_is_trimmed(void **state) {
  (void)state;
  for (unsigned long long seed = 1; seed <= n_seeds() / 4 + 1; seed++) {
    snapshot_case(0, seed);
    snapshot_case(1, seed);
  }
}

static void test_resync_required_and_snapshot_resume(void **state) {
  (void)state;
  sim *w = calloc(1, sizeof *w);
  assert_non_null(w);
  sim_init(w, 2, 21);
  sim_mesh(w);
  for (int i = 0; i < 20; i++)
    region_write(w, &w->r[0]);
  for (int t = 0; t < 200 && !converged(w); t++)
    step(w);
  assert_true(converged(w));

  /* region 1 lost its data (restored from an old backup) and asks for a
   * resync: its next ack says RESYNC_REQUIRED */
  region *b = &w->r[1];
  crdt_doc_free(b->doc);
  assert_int_equal(crdt_doc_new(NULL, &b->doc), 0);
  crdt_vclock_init(&b->applied);
  memset(b->applies, 0, sizeof b->applies);
  repl_session_require_resync(b->sess[0]);
  region_write(w, &w->r[0]);
  for (int t = 0; t < 2000 && !settled(w); t++)
    step(w);
  assert_true(converged(w));
  assert_same_state(w);
  repl_stats st;
  repl_session_stats(w->r[0].sess[1], &st);
  assert_int_equal(st.snapshots_started, 1);

  /* a snapshot interrupted by a reconnect resumes where its committed
   * chunks end */
  crdt_doc_free(b->doc);
  assert_int_equal(crdt_doc_new(NULL, &b->doc), 0);
  crdt_vclock_init(&b->applied);
  memset(b->applies, 0, sizeof b->applies);
  sp_buf out;
  sp_buf_init(&out, REPL_MAX_MESSAGE);
  repl_session_stats(b->sess[0], &st);
  uint64_t phase1_chunks = st.snapshot_chunks_received;
  assert_int_equal(repl_session_request_snapshot(b->sess[0], &out), 0);
  link_push(&w->links[1][0], &out);
  link_deliver(w, 1, 0, 1);
  assert_true(repl_session_in_snapshot(w->r[0].sess[1]));
  /* two chunks go through */
  for (int i = 0; i < 2; i++) {
    pump(w, 0);
    link_deliver(w, 0, 1, 1);
    link_deliver(w, 1, 0, 1);
  }
  repl_session_stats(b->sess[0], &st);
  uint64_t chunks_before = st.snapshot_chunks_received;
  assert_int_equal(chunks_before - phase1_chunks, 2);
  /* the connection drops; both sides reconnect */
  repl_session_reset(w->r[0].sess[1]);
  repl_session_reset(b->sess[0]);
  assert_false(repl_session_in_snapshot(w->r[0].sess[1]));
  connect_pair(w, 0, 1);
  assert_int_equal(repl_session_request_snapshot(b->sess[0], &out), 0);
  repl_msg m;
  assert_int_equal(decode_buf(&out, &m), 0);
  assert_int_equal(m.type, REPL_MSG_SNAPSHOT_REQUEST);
  assert_true(m.u.req.snapshot_id != 0);
  assert_int_equal(m.u.req.chunk_seq, 2);
  assert_true(m.u.req.cursor_len > 0);
  link_push(&w->links[1][0], &out);
  link_deliver(w, 1, 0, 1);
  assert_true(repl_session_in_snapshot(w->r[0].sess[1]));
  for (int t = 0; t < 2000 && !settled(w); t++)
    step(w);
  assert_true(converged(w));
  assert_same_state(w);
  /* the run went on: no chunk was refused as out of sequence, which would
   * have started a fourth snapshot */
  repl_session_stats(w->r[0].sess[1], &st);
  assert_int_equal(st.snapshots_started, 3);
  repl_session_stats(b->sess[0], &st);
  assert_true(st.snapshot_chunks_received > chunks_before);
  sp_buf_release(&out);
  sim_free(w);
  free(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip_every_message),
      cmocka_unit_test(test_unknown_fields_are_ignored),
      cmocka_unit_test(test_malformed_input_is_refused),
      cmocka_unit_test(test_decode_allocation_failure_sweep),
      cmocka_unit_test(test_version_negotiation),
      cmocka_unit_test(test_handshake_identity_checks),
      cmocka_unit_test(test_want_send_coalesces_and_resends_same_bytes),
      cmocka_unit_test(test_receiver_skips_duplicates_and_stops_at_gap),
      cmocka_unit_test(test_gap_rewinds_to_receiver_vector),
      cmocka_unit_test(test_cumulative_ack_retires_earlier_batches),
      cmocka_unit_test(test_skew_rejects_whole_batch_until_time_catches_up),
      cmocka_unit_test(test_lossy_link_exactly_once_in_order),
      cmocka_unit_test(test_relay_third_region),
      cmocka_unit_test(test_no_relay_means_no_third_region_changes),
      cmocka_unit_test(test_relay_over_two_paths_applies_once),
      cmocka_unit_test(test_snapshot_when_log_is_trimmed),
      cmocka_unit_test(test_floor_rise_turns_a_waiting_peer_to_snapshot),
      cmocka_unit_test(test_resync_required_and_snapshot_resume),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
