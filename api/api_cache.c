/* api_cache: the in-memory copy of the region's state that every read is
 * served from.
 *
 * The state is a crdt_doc (owned here, reachable as s->doc) plus `merged`,
 * the vector of changes known to be in it: for each origin the highest
 * contiguous sequence number merged, and a bounded set of sequence numbers
 * merged beyond it (changes can arrive out of order: this process's own
 * writes, other processes' deltas on Redis, the catch-up poll).  A change
 * at or below the contiguous point is not merged again: merging is
 * idempotent, but not once its entity's tombstone was collected (a
 * duplicate of the create would bring it back); see the tombstone
 * paragraph below.
 *
 * Fresh data arrives three ways: api_write merges a write's changes right
 * after its commit; every process publishes the changes it wrote on the
 * region's Redis channel and merges what the others publish; and a poll of
 * sp_vclock every CATCHUP_MS fetches from sp_change_log whatever the
 * vector lacks (a Redis outage, the replication daemon's applies).  When the
 * rows it lacks were already trimmed from the log (the replication daemon
 * trims below every peer's ack, sp_log_floor), it reloads the state instead:
 * the vector is read first, so entities and fields read after it (in one
 * statement) hold at least that much.  The reload builds a new document
 * and swaps it in, because merging the rows into the old one would keep
 * entities whose tombstones PostgreSQL collected meanwhile (alive, if the
 * delete was among the rows we lacked); what the old document holds beyond
 * the vector (this process's latest writes) is carried over.  When the
 * poll fails for longer than STALE_MS the cache reports itself stale.
 *
 * Tombstones are collected as statusd-replicad collects them in PostgreSQL
 * (crdt/DESIGN.md; lib/sql/0008_tombstone_gc.sql): when a poll finds the
 * document caught up with sp_vclock and the topology has peers, at most
 * every GC_MS it reads sp_peer_ack and runs crdt_doc_gc with region r's
 * acknowledged vector = sp_peer_ack of peer r, and ours = that sp_vclock
 * (the document holds everything up to it).  The types kept from
 * collection come from sp_gc_keep, read at load.
 *
 * Pages touched by a merge are re-rendered RENDER_DELAY_MS later, once
 * for every change that arrived meanwhile (under a burst of writes the
 * page is rendered a few dozen times a second, not once per write).  A read
 * of a page with pending changes written in THIS region renders it first
 * (api_cache_render_pending), so whoever wrote through this region reads
 * their write at once, whichever of the region's processes answers.
 * Changes from other regions wait for the timer: they are already up to
 * the replication delay old, and rendering on every read would render the
 * page once per replicated change whenever it is read often (a page under
 * an incident: many readers, a stream of updates from every region).
 */
#include "internal.h"
#include "render.h"
#include "routes.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_alloc.h"
#include "sp_log.h"

#define CATCHUP_MS 500
#define STALE_MS 3000
#define CATCHUP_BATCH 5000
#define MAX_AHEAD 4096 /* merged-beyond-contiguous seqs remembered per origin */
#define RENDER_DELAY_MS 20
#define GC_MS 1000 /* tombstone collection at most this often */

struct dirty_page {
  char *page;
  int local; /* a pending change was written in this region */
};

typedef struct ahead_set {
  uint64_t *v; /* sorted */
  size_t n, cap;
} ahead_set;

struct api_cache {
  api_server *s;
  crdt_vclock merged;
  ahead_set ahead[CRDT_MAX_REGIONS];
  /* pages to re-render when the timer fires */
  struct dirty_page *dirty;
  size_t ndirty, capdirty;
  uv_timer_t render_timer;
  int render_scheduled;
  uv_timer_t poll;
  int polling;        /* a catch-up query is in flight */
  crdt_vclock reload_to; /* the vector a state reload brings us to */
  /* tombstone collection: sp_vclock of the poll that found us caught up,
   * the types never collected (sp_gc_keep), tallies */
  crdt_vclock gc_vector;
  char **keep;
  size_t nkeep;
  uint64_t last_gc_ms, collected;
  uint64_t last_ok_ms;
  int closing;
  int started; /* the idle and timer handles are initialised */
  int subscribed;
};

static uint64_t mono_ms(const api_server *s) { return uv_now(s->loop); }

/* ---- merged vector ---------------------------------------------------------- */

static void note_merged(api_cache *c, crdt_region o, uint64_t seq) {
  if (seq <= c->merged.seq[o])
    return;
  ahead_set *a = &c->ahead[o];
  if (seq == c->merged.seq[o] + 1) {
    c->merged.seq[o] = seq;
    /* absorb what was merged ahead and is now contiguous */
    size_t k = 0;
    while (k < a->n && a->v[k] <= c->merged.seq[o] + 1) {
      if (a->v[k] == c->merged.seq[o] + 1)
        c->merged.seq[o]++;
      k++;
    }
    if (k) {
      memmove(a->v, a->v + k, (a->n - k) * sizeof *a->v);
      a->n -= k;
    }
    return;
  }
  /* ahead of the contiguous point: remember it (bounded; the catch-up poll
   * re-reads anything forgotten) */
  size_t lo = 0, hi = a->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (a->v[mid] < seq)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < a->n && a->v[lo] == seq)
    return;
  if (a->n == a->cap) {
    if (a->cap >= MAX_AHEAD)
      return;
    size_t ncap = a->cap ? a->cap * 2 : 64;
    uint64_t *nv = sp_realloc(a->v, ncap * sizeof *nv);
    if (nv == NULL)
      return;
    a->v = nv;
    a->cap = ncap;
  }
  memmove(a->v + lo + 1, a->v + lo, (a->n - lo) * sizeof *a->v);
  a->v[lo] = seq;
  a->n++;
}

/* ---- re-rendering ------------------------------------------------------------- */

static void render_dirty(api_cache *c) {
  c->render_scheduled = 0;
  size_t n = c->ndirty;
  c->ndirty = 0;
  for (size_t i = 0; i < n; i++) {
    api_render_page(c->s, c->dirty[i].page);
    sp_free(c->dirty[i].page);
  }
}

static void on_render_timer(uv_timer_t *h) { render_dirty(h->data); }

void api_cache_render_pending(api_server *s, const char *page) {
  api_cache *c = s->cache;
  if (c == NULL || c->ndirty == 0)
    return;
  if (page == NULL) {
    uv_timer_stop(&c->render_timer);
    render_dirty(c);
    return;
  }
  for (size_t i = 0; i < c->ndirty; i++) {
    if (strcmp(c->dirty[i].page, page) == 0) {
      if (!c->dirty[i].local)
        return; /* only other regions' changes: the timer renders them */
      char *p = c->dirty[i].page;
      c->dirty[i] = c->dirty[--c->ndirty];
      api_render_page(s, p);
      sp_free(p);
      return;
    }
  }
}

/* local: the change was written in this region (see the top) */
static void mark_dirty(api_cache *c, const char *page, int local) {
  for (size_t i = 0; i < c->ndirty; i++)
    if (strcmp(c->dirty[i].page, page) == 0) {
      c->dirty[i].local |= local;
      return;
    }
  if (c->ndirty == c->capdirty) {
    size_t ncap = c->capdirty ? c->capdirty * 2 : 16;
    struct dirty_page *nd = sp_realloc(c->dirty, ncap * sizeof *nd);
    if (nd == NULL)
      return; /* the next change to this page renders it */
    c->dirty = nd;
    c->capdirty = ncap;
  }
  char *p = sp_strdup(page);
  if (p == NULL)
    return;
  c->dirty[c->ndirty].page = p;
  c->dirty[c->ndirty++].local = local;
  if (!c->render_scheduled && !c->closing && c->started) {
    c->render_scheduled = 1;
    uv_timer_start(&c->render_timer, on_render_timer, RENDER_DELAY_MS, 0);
  }
}

typedef struct merge_ctx {
  api_cache *c;
} merge_ctx;

static void on_changed(const crdt_change *ch, void *arg) {
  merge_ctx *m = arg;
  mark_dirty(m->c, ch->page, ch->origin == m->c->s->region_id);
}

int api_cache_merge(api_server *s, const crdt_delta *d) {
  api_cache *c = s->cache;
  merge_ctx m = {c};
  size_t n = crdt_delta_count(d);
  int rc = 0;
  for (size_t i = 0; i < n; i++) {
    const crdt_change *ch = crdt_delta_get(d, i);
    if (ch->seq <= c->merged.seq[ch->origin])
      continue; /* merged already (see the top) */
    int r = crdt_doc_merge(s->doc, ch);
    if (r < 0 && r != SP_ERR_INVAL) {
      rc = r; /* out of memory: the catch-up poll retries these */
      break;
    }
    if (r < 0)
      sp_log_warn("refused a malformed change", "{s:s,s:s,s:s,s:i}", "page", ch->page, "type",
                  ch->type, "id", ch->id, "error", r);
    if (r == 1)
      on_changed(ch, &m);
    note_merged(c, ch->origin, ch->seq);
  }
  return rc;
}

/* ---- loading ------------------------------------------------------------------ */

static int parse_row_change(PGresult *res, int row, int kind, crdt_change *ch, char *buf[4]) {
  /* columns: page_id type id field value cl hlc region origin seq */
  memset(ch, 0, sizeof *ch);
  ch->kind = kind;
  ch->page = buf[0] = PQgetvalue(res, row, 0);
  ch->type = buf[1] = PQgetvalue(res, row, 1);
  ch->id = buf[2] = PQgetvalue(res, row, 2);
  if (kind == CRDT_FIELD) {
    ch->field = PQgetvalue(res, row, 3);
    ch->value_null = PQgetisnull(res, row, 4);
    ch->value = ch->value_null ? NULL : (const uint8_t *)PQgetvalue(res, row, 4);
    ch->value_len = ch->value_null ? 0 : (size_t)PQgetlength(res, row, 4);
  }
  ch->cl = (uint32_t)strtoul(PQgetvalue(res, row, 5), NULL, 10);
  ch->stamp.hlc = strtoull(PQgetvalue(res, row, 6), NULL, 10);
  ch->stamp.region = (crdt_region)atoi(PQgetvalue(res, row, 7));
  ch->origin = (crdt_region)atoi(PQgetvalue(res, row, 8));
  ch->seq = strtoull(PQgetvalue(res, row, 9), NULL, 10);
  return 0;
}

static int load_rows(api_server *s, PGconn *db, const char *sql, int kind, char *err,
                     size_t errlen) {
  PGresult *res = PQexec(db, sql);
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    snprintf(err, errlen, "loading the store: %s", PQerrorMessage(db));
    PQclear(res);
    return SP_ERR_DB;
  }
  int rc = 0;
  for (int i = 0, n = PQntuples(res); i < n && rc == 0; i++) {
    crdt_change ch;
    char *buf[4];
    parse_row_change(res, i, kind, &ch, buf);
    int r = crdt_doc_merge(s->doc, &ch);
    if (r == SP_ERR_NOMEM) {
      snprintf(err, errlen, "loading the store: out of memory");
      rc = r;
    }
  }
  PQclear(res);
  return rc;
}

int api_cache_doc_new(crdt_doc **out) {
  crdt_doc *d;
  int rc = crdt_doc_new(NULL, &d);
  if (rc)
    return rc;
  /* incident updates are a grow-only set, read per incident by index */
  if ((rc = crdt_doc_grow_only(d, API_T_UPDATE)) ||
      (rc = crdt_doc_index(d, API_T_UPDATE, "incident_id"))) {
    crdt_doc_free(d);
    return rc;
  }
  *out = d;
  return 0;
}

/* Declares the kept types (sp_gc_keep, as read at load) on d. */
static int declare_keep(const api_cache *c, crdt_doc *d) {
  int rc = 0;
  for (size_t i = 0; i < c->nkeep && rc == 0; i++)
    rc = crdt_doc_gc_keep(d, c->keep[i]);
  return rc;
}

/* Reads sp_gc_keep into c->keep and declares it on s->doc: the types whose
 * tombstones PostgreSQL never collects, so neither may we. */
static int load_keep(api_cache *c, PGconn *db, char *err, size_t errlen) {
  PGresult *res = PQexec(db, "SELECT type FROM sp_gc_keep");
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    snprintf(err, errlen, "loading the store: %s", PQerrorMessage(db));
    PQclear(res);
    return SP_ERR_DB;
  }
  int rc = 0, n = PQntuples(res);
  char **keep = sp_calloc(n ? (size_t)n : 1, sizeof *keep);
  if (keep == NULL)
    rc = SP_ERR_NOMEM;
  for (int i = 0; i < n && rc == 0; i++)
    if ((keep[i] = sp_strdup(PQgetvalue(res, i, 0))) == NULL)
      rc = SP_ERR_NOMEM;
  PQclear(res);
  if (rc == 0) {
    for (size_t i = 0; i < c->nkeep; i++)
      sp_free(c->keep[i]);
    sp_free(c->keep);
    c->keep = keep;
    c->nkeep = (size_t)n;
    rc = declare_keep(c, c->s->doc);
  } else if (keep) {
    for (int i = 0; i < n; i++)
      sp_free(keep[i]);
    sp_free(keep);
  }
  if (rc)
    snprintf(err, errlen, "loading the store: %s", sp_strerror(rc));
  return rc;
}

static int cache_new(api_server *s) {
  api_cache *c = sp_calloc(1, sizeof *c);
  if (c == NULL)
    return SP_ERR_NOMEM;
  c->s = s;
  s->cache = c;
  return 0;
}

int api_cache_load(api_server *s, const char *conninfo, char *err, size_t errlen) {
  if (s->cache == NULL && cache_new(s))
    return SP_ERR_NOMEM;
  PGconn *db = PQconnectdb(conninfo);
  if (PQstatus(db) != CONNECTION_OK) {
    snprintf(err, errlen, "connecting to PostgreSQL: %s", PQerrorMessage(db));
    PQfinish(db);
    return SP_ERR_DB_DOWN;
  }
  int rc = 0;
  /* one snapshot: the vector and the rows agree */
  PGresult *res = PQexec(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
  if (PQresultStatus(res) != PGRES_COMMAND_OK)
    rc = SP_ERR_DB;
  PQclear(res);
  if (rc == 0) {
    res = PQexec(db, "SELECT origin, seq FROM sp_vclock");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
      snprintf(err, errlen, "loading the store: %s", PQerrorMessage(db));
      rc = SP_ERR_DB;
    } else {
      for (int i = 0; i < PQntuples(res); i++) {
        int o = atoi(PQgetvalue(res, i, 0));
        if (o >= 0 && o < CRDT_MAX_REGIONS)
          s->cache->merged.seq[o] = strtoull(PQgetvalue(res, i, 1), NULL, 10);
      }
    }
    PQclear(res);
  }
  if (rc == 0)
    rc = load_keep(s->cache, db, err, errlen);
  if (rc == 0)
    rc = load_rows(s, db,
                   "SELECT page_id, type, id, NULL, NULL, cl, hlc, region, origin, seq "
                   "FROM sp_entity",
                   CRDT_EXIST, err, errlen);
  if (rc == 0)
    rc = load_rows(s, db,
                   "SELECT page_id, type, id, field, value, cl, hlc, region, origin, seq "
                   "FROM sp_field",
                   CRDT_FIELD, err, errlen);
  PQclear(PQexec(db, "COMMIT"));
  PQfinish(db);
  return rc;
}

/* ---- change events on Redis ------------------------------------------------ */

static void on_change_event(const char *channel, const char *data, size_t len, void *arg) {
  api_server *s = arg;
  (void)channel;
  crdt_delta *d;
  if (crdt_delta_new(NULL, &d))
    return;
  int rc = crdt_delta_decode(d, (const uint8_t *)data, len);
  if (rc == 0)
    api_cache_merge(s, d);
  else
    sp_log_warn("ignored a malformed change event", "{s:i,s:i}", "bytes", (int)len, "error", rc);
  crdt_delta_free(d);
}

/* ---- catch-up poll ------------------------------------------------------------ */

static void poll_start(uv_timer_t *t);

static void on_log_rows(int status, const PGresult *res, void *arg) {
  api_cache *c = arg;
  c->polling = 0;
  if (c->closing)
    return;
  if (status != 0) {
    uv_timer_start(&c->poll, poll_start, CATCHUP_MS, 0);
    return;
  }
  crdt_delta *d;
  int more = 0;
  if (crdt_delta_new(NULL, &d) == 0) {
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
      crdt_change ch;
      char *buf[4];
      /* columns: kind page type id field value cl hlc region origin seq */
      int kind = atoi(PQgetvalue(res, i, 0));
      memset(&ch, 0, sizeof ch);
      ch.kind = kind == 2 ? CRDT_EXIST : CRDT_FIELD;
      ch.page = buf[0] = PQgetvalue(res, i, 1);
      ch.type = buf[1] = PQgetvalue(res, i, 2);
      ch.id = buf[2] = PQgetvalue(res, i, 3);
      if (ch.kind == CRDT_FIELD) {
        ch.field = PQgetvalue(res, i, 4);
        ch.value_null = PQgetisnull(res, i, 5);
        ch.value = ch.value_null ? NULL : (const uint8_t *)PQgetvalue(res, i, 5);
        ch.value_len = ch.value_null ? 0 : (size_t)PQgetlength(res, i, 5);
      }
      ch.cl = (uint32_t)strtoul(PQgetvalue(res, i, 6), NULL, 10);
      ch.stamp.hlc = strtoull(PQgetvalue(res, i, 7), NULL, 10);
      ch.stamp.region = (crdt_region)atoi(PQgetvalue(res, i, 8));
      ch.origin = (crdt_region)atoi(PQgetvalue(res, i, 9));
      ch.seq = strtoull(PQgetvalue(res, i, 10), NULL, 10);
      crdt_delta_add(d, &ch);
    }
    api_cache_merge(c->s, d);
    more = n >= CATCHUP_BATCH;
    crdt_delta_free(d);
  }
  c->last_ok_ms = mono_ms(c->s);
  uv_timer_start(&c->poll, poll_start, more ? 0 : CATCHUP_MS, 0);
}

static void on_page_dirty(const char *page, void *arg) { mark_dirty(arg, page, 0); }

/* Merges into `fresh` what the current document holds beyond reload_to:
 * changes committed after the vector was read that this process already
 * has (its own writes, Redis events), so a reload never hides a write from
 * the one who made it.  Losing changes are not exported; the poll fetches
 * everything beyond reload_to again anyway. */
static int carry_over(api_cache *c, crdt_doc *fresh) {
  crdt_delta *d;
  int rc = crdt_delta_new(NULL, &d);
  if (rc)
    return rc;
  rc = crdt_doc_export(c->s->doc, d);
  for (size_t i = 0, n = crdt_delta_count(d); rc == 0 && i < n; i++) {
    const crdt_change *ch = crdt_delta_get(d, i);
    if (ch->seq > c->reload_to.seq[ch->origin] && crdt_doc_merge(fresh, ch) == SP_ERR_NOMEM)
      rc = SP_ERR_NOMEM;
  }
  crdt_delta_free(d);
  return rc;
}

/* The state (sp_entity and sp_field rows in one statement, so they agree;
 * column 10 is the kind) read after reload_to: a new document from it
 * replaces the current one (see the top), and every page of either is
 * rendered again. */
static void on_reload_state(int status, const PGresult *res, void *arg) {
  api_cache *c = arg;
  c->polling = 0;
  if (c->closing)
    return;
  crdt_doc *fresh = NULL;
  int rc = status;
  if (rc == 0 && (rc = api_cache_doc_new(&fresh)) == 0)
    rc = declare_keep(c, fresh);
  for (int i = 0, n = rc ? 0 : PQntuples(res); i < n && rc == 0; i++) {
    crdt_change ch;
    char *buf[4];
    int kind = atoi(PQgetvalue(res, i, 10)) == 2 ? CRDT_EXIST : CRDT_FIELD;
    parse_row_change((PGresult *)res, i, kind, &ch, buf);
    if (crdt_doc_merge(fresh, &ch) == SP_ERR_NOMEM)
      rc = SP_ERR_NOMEM;
  }
  if (rc == 0)
    rc = carry_over(c, fresh);
  if (rc) {
    crdt_doc_free(fresh);
    if (status == 0)
      sp_log_warn("cannot reload the cache; retrying", "{s:s}", "error", sp_strerror(rc));
    uv_timer_start(&c->poll, poll_start, CATCHUP_MS, 0);
    return;
  }
  crdt_doc_pages(c->s->doc, on_page_dirty, c); /* pages that may be gone */
  crdt_doc_free(c->s->doc);
  c->s->doc = fresh;
  crdt_doc_pages(fresh, on_page_dirty, c);
  c->merged = c->reload_to;
  for (int o = 0; o < CRDT_MAX_REGIONS; o++)
    c->ahead[o].n = 0;
  c->last_ok_ms = mono_ms(c->s);
  sp_log_info("cache reloaded from the state (the change log was trimmed)", "{s:i}", "entities",
              (int)crdt_doc_entity_count(fresh));
  uv_timer_start(&c->poll, poll_start, 0, 0);
}

/* ---- tombstone collection ------------------------------------------------------- */

/* sp_peer_ack rows (peer, origin, seq) read once the document had caught up
 * with gc_vector: collect what is stable (see the top). */
static void on_acks(int status, const PGresult *res, void *arg) {
  api_cache *c = arg;
  c->polling = 0;
  if (c->closing)
    return;
  api_server *s = c->s;
  size_t n = s->topo->nregions;
  crdt_vclock *acks = NULL;
  if (status == 0 && n > 0 && n <= CRDT_MAX_REGIONS && s->region_id >= 0 &&
      (size_t)s->region_id < n && (acks = sp_calloc(n, sizeof *acks)) != NULL) {
    acks[s->region_id] = c->gc_vector;
    for (int i = 0; i < PQntuples(res); i++) {
      long peer = atol(PQgetvalue(res, i, 0)), o = atol(PQgetvalue(res, i, 1));
      if (peer >= 0 && (size_t)peer < n && peer != s->region_id && o >= 0 &&
          o < CRDT_MAX_REGIONS)
        acks[peer].seq[o] = strtoull(PQgetvalue(res, i, 2), NULL, 10);
    }
    int r = crdt_doc_gc(s->doc, acks, n, NULL, NULL);
    if (r > 0) {
      c->collected += (uint64_t)r;
      api_metrics_tombstones_collected(s, (uint64_t)r);
      sp_log_debug("tombstones collected", "{s:i}", "count", r);
    } else if (r < 0) {
      sp_log_warn("cannot collect tombstones", "{s:s}", "error", sp_strerror(r));
    }
    sp_free(acks);
  }
  uv_timer_start(&c->poll, poll_start, CATCHUP_MS, 0);
}

/* Called with the document caught up with the sp_vclock just read (in
 * reload_to): 1 when a collection query went out. */
static int gc_start(api_cache *c) {
  api_server *s = c->s;
  uint64_t now = mono_ms(s);
  if (s->region == NULL || s->region->npeers == 0 || now - c->last_gc_ms < GC_MS)
    return 0;
  c->last_gc_ms = now;
  c->gc_vector = c->reload_to;
  if (sp_pg_query(s->pg_read, "SELECT peer, origin, seq FROM sp_peer_ack", 0, NULL, on_acks, c))
    return 0;
  c->polling = 1;
  return 1;
}

uint64_t api_cache_collected(const api_server *s) { return s->cache ? s->cache->collected : 0; }

static void on_vclock(int status, const PGresult *res, void *arg) {
  api_cache *c = arg;
  c->polling = 0;
  if (c->closing)
    return;
  if (status != 0) {
    uv_timer_start(&c->poll, poll_start, CATCHUP_MS, 0);
    return;
  }
  /* Rows we lack already trimmed from the log?  Reload the state. */
  int trimmed = 0;
  crdt_vclock_init(&c->reload_to);
  for (int i = 0; i < PQntuples(res); i++) {
    int o = atoi(PQgetvalue(res, i, 0));
    if (o < 0 || o >= CRDT_MAX_REGIONS)
      continue;
    c->reload_to.seq[o] = strtoull(PQgetvalue(res, i, 1), NULL, 10);
    if (strtoull(PQgetvalue(res, i, 2), NULL, 10) > c->merged.seq[o])
      trimmed = 1;
  }
  if (trimmed) {
    if (sp_pg_query(c->s->pg_read,
                    "SELECT page_id, type, id, NULL, NULL, cl, hlc, region, origin, seq, 2 "
                    "FROM sp_entity UNION ALL "
                    "SELECT page_id, type, id, field, value, cl, hlc, region, origin, seq, 1 "
                    "FROM sp_field",
                    0, NULL, on_reload_state, c) == 0)
      c->polling = 1;
    else
      uv_timer_start(&c->poll, poll_start, CATCHUP_MS, 0);
    return;
  }
  /* Which origins are ahead of what we merged?  Fetch those ranges. */
  char sql[4096];
  size_t len = 0;
  int branches = 0;
  for (int i = 0; i < PQntuples(res); i++) {
    int o = atoi(PQgetvalue(res, i, 0));
    uint64_t seq = strtoull(PQgetvalue(res, i, 1), NULL, 10);
    if (o < 0 || o >= CRDT_MAX_REGIONS || seq <= c->merged.seq[o])
      continue;
    len += (size_t)snprintf(sql + len, sizeof sql - len,
                            "%s(SELECT kind, page_id, type, id, field, value, cl, hlc, region, "
                            "origin, seq FROM sp_change_log WHERE origin = %d AND seq > %llu "
                            "ORDER BY seq LIMIT %d)",
                            branches ? " UNION ALL " : "", o,
                            (unsigned long long)c->merged.seq[o], CATCHUP_BATCH);
    branches++;
    if (len > sizeof sql - 400)
      break;
  }
  if (branches == 0) {
    c->last_ok_ms = mono_ms(c->s);
    if (!gc_start(c))
      uv_timer_start(&c->poll, poll_start, CATCHUP_MS, 0);
    return;
  }
  if (sp_pg_query(c->s->pg_read, sql, 0, NULL, on_log_rows, c) == 0)
    c->polling = 1;
  else
    uv_timer_start(&c->poll, poll_start, CATCHUP_MS, 0);
}

static void poll_start(uv_timer_t *t) {
  api_cache *c = t->data;
  if (c->closing || c->polling)
    return;
  /* the floor is how far the replication daemon trimmed the log */
  if (sp_pg_query(c->s->pg_read,
                  "SELECT v.origin, v.seq, coalesce(f.seq, 0) FROM sp_vclock v "
                  "LEFT JOIN sp_log_floor f ON f.origin = v.origin",
                  0, NULL, on_vclock, c) == 0)
    c->polling = 1;
  else
    uv_timer_start(&c->poll, poll_start, CATCHUP_MS, 0);
}

int api_cache_start(api_server *s) {
  api_cache *c = s->cache;
  if (c == NULL && cache_new(s))
    return SP_ERR_NOMEM;
  c = s->cache;
  c->started = 1;
  uv_timer_init(s->loop, &c->render_timer);
  c->render_timer.data = c;
  uv_timer_init(s->loop, &c->poll);
  c->poll.data = c;
  uv_unref((uv_handle_t *)&c->poll);
  c->last_ok_ms = mono_ms(s);
  uv_timer_start(&c->poll, poll_start, CATCHUP_MS, 0);
  if (s->redis) {
    int rc = sp_redis_subscribe(s->redis, s->changes_channel, on_change_event, s);
    if (rc)
      return rc;
    c->subscribed = 1;
  }
  /* render every page once */
  return api_render_all(s);
}

void api_cache_stop(api_server *s) {
  api_cache *c = s->cache;
  if (c == NULL)
    return;
  c->closing = 1;
  if (c->subscribed && s->redis)
    sp_redis_unsubscribe(s->redis, s->changes_channel);
  if (c->started) {
    uv_close((uv_handle_t *)&c->render_timer, NULL);
    uv_close((uv_handle_t *)&c->poll, NULL);
    c->started = 0;
  }
}

void api_cache_free(api_server *s) {
  api_cache *c = s->cache;
  if (c == NULL)
    return;
  for (size_t i = 0; i < c->ndirty; i++)
    sp_free(c->dirty[i].page);
  sp_free(c->dirty);
  for (int i = 0; i < CRDT_MAX_REGIONS; i++)
    sp_free(c->ahead[i].v);
  for (size_t i = 0; i < c->nkeep; i++)
    sp_free(c->keep[i]);
  sp_free(c->keep);
  sp_free(c);
  s->cache = NULL;
}

int api_cache_is_stale(const api_server *s) {
  const api_cache *c = s->cache;
  if (c == NULL)
    return 1;
  return mono_ms(s) - c->last_ok_ms > STALE_MS || !sp_pg_pool_is_up(s->pg_read);
}

const crdt_vclock *api_cache_merged(const api_server *s) { return &s->cache->merged; }
