/* crdt_doc: the merged state — entities as maps of LWW registers plus a
 * causal-length existence register — and the merge, read, export and
 * tombstone-collection operations on it.  Digests are in crdt_digest.c.
 *
 * Layout: every entity is in one open-addressing hash table keyed by
 * (page, type, id), and in its page's array (for per-page digests and
 * export).  Fields are kept sorted by name in a small array per entity.
 * Digests are cached and invalidated on every change (entity -> page ->
 * root).  All memory comes from the document's allocator; on an allocation
 * failure the document is left exactly as it was. */
#include "doc.h"

#include <stdlib.h>

/* ---- hash table of entities and of pages ---------------------------------- */

static uint64_t key_hash(const char *pg, size_t lp, const char *type, size_t lt, const char *id,
                         size_t li) {
  uint64_t h = crdt__hash(CRDT__HASH_INIT, pg, lp);
  h = crdt__hash(h, type, lt);
  return crdt__hash(h, id, li);
}

static uint64_t page_hash(const char *name, size_t len) {
  return crdt__hash(CRDT__HASH_INIT, name, len);
}

/* Grows a table of item pointers to `ncap` slots (power of two) and
 * reinserts.  hash_of gives an item's stored hash. */
static int table_grow(const crdt_allocator *a, void ***tab, size_t *cap, size_t ncap,
                      uint64_t (*hash_of)(const void *)) {
  void **nt = crdt__malloc(a, ncap * sizeof *nt);
  if (nt == NULL)
    return SP_ERR_NOMEM;
  memset(nt, 0, ncap * sizeof *nt);
  for (size_t i = 0; i < *cap; i++) {
    void *it = (*tab)[i];
    if (!it)
      continue;
    size_t j = hash_of(it) & (ncap - 1);
    while (nt[j])
      j = (j + 1) & (ncap - 1);
    nt[j] = it;
  }
  crdt__free(a, *tab);
  *tab = nt;
  *cap = ncap;
  return 0;
}

/* Removes `item` from a linear-probing table with backward-shift deletion,
 * so lookups never need tombstone slots. */
static void table_remove(void **tab, size_t cap, void *item, uint64_t (*hash_of)(const void *)) {
  size_t mask = cap - 1, i = hash_of(item) & mask;
  while (tab[i] != item)
    i = (i + 1) & mask;
  size_t j = i;
  for (;;) {
    tab[i] = NULL;
    for (;;) {
      j = (j + 1) & mask;
      if (tab[j] == NULL)
        return;
      size_t home = hash_of(tab[j]) & mask;
      /* tab[j] may move to i when its home is not in (i, j] cyclically */
      if (i <= j ? (home <= i || home > j) : (home <= i && home > j))
        break;
    }
    tab[i] = tab[j];
    i = j;
  }
}

static uint64_t entity_hash_of(const void *p) { return ((const entity *)p)->hash; }
static uint64_t page_hash_of(const void *p) { return ((const page *)p)->hash; }

/* Lookup with the key's lengths known (the merge path has them). */
static entity *find_len(const crdt_doc *doc, const char *pg, size_t lp, const char *type,
                        size_t lt, const char *id, size_t li) {
  if (doc->ecap == 0)
    return NULL;
  uint64_t h = key_hash(pg, lp, type, lt, id, li);
  size_t mask = doc->ecap - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    entity *e = doc->etab[i];
    if (e == NULL)
      return NULL;
    if (e->hash == h && strcmp(e->id, id) == 0 && strcmp(e->type, type) == 0 &&
        strcmp(e->pg->name, pg) == 0)
      return e;
  }
}

entity *crdt__doc_find(const crdt_doc *doc, const char *pg, const char *type, const char *id) {
  return find_len(doc, pg, strlen(pg), type, strlen(type), id, strlen(id));
}

static page *find_page_len(const crdt_doc *doc, const char *name, size_t len) {
  if (doc->pcap == 0)
    return NULL;
  uint64_t h = page_hash(name, len);
  size_t mask = doc->pcap - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    page *p = doc->ptab[i];
    if (p == NULL)
      return NULL;
    if (p->hash == h && strcmp(p->name, name) == 0)
      return p;
  }
}

page *crdt__doc_find_page(const crdt_doc *doc, const char *name) {
  return find_page_len(doc, name, strlen(name));
}

/* ---- lifecycle ---------------------------------------------------------- */

int crdt_doc_new(const crdt_allocator *a, crdt_doc **out) {
  a = crdt__alloc_or_default(a);
  crdt_doc *d = crdt__malloc(a, sizeof *d);
  if (d == NULL)
    return SP_ERR_NOMEM;
  memset(d, 0, sizeof *d);
  d->a = a;
  *out = d;
  return 0;
}

static void entity_destroy(const crdt_allocator *a, entity *e) {
  for (uint32_t i = 0; i < e->nfields; i++) {
    crdt__free(a, e->fields[i].name);
    crdt__free(a, e->fields[i].value);
  }
  crdt__free(a, e->fields);
  crdt__free(a, e->barrier);
  crdt__free(a, e);
}

static void page_destroy(const crdt_allocator *a, page *p) {
  crdt__free(a, p->ents);
  crdt__free(a, p);
}

void crdt_doc_free(crdt_doc *doc) {
  if (doc == NULL)
    return;
  const crdt_allocator *a = doc->a;
  for (size_t i = 0; i < doc->ecap; i++)
    if (doc->etab[i])
      entity_destroy(a, doc->etab[i]);
  for (size_t i = 0; i < doc->pcap; i++)
    if (doc->ptab[i])
      page_destroy(a, doc->ptab[i]);
  crdt__index_free(doc);
  for (size_t i = 0; i < doc->ngrow; i++)
    crdt__free(a, doc->grow_only[i]);
  crdt__free(a, doc->grow_only);
  for (size_t i = 0; i < doc->nkeep; i++)
    crdt__free(a, doc->gc_keep[i]);
  crdt__free(a, doc->gc_keep);
  crdt__free(a, doc->etab);
  crdt__free(a, doc->ptab);
  crdt__free(a, doc);
}

/* A small set of type names (declarations are few and made at start-up). */
static int type_set_has(char *const *set, size_t n, const char *type) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(set[i], type) == 0)
      return 1;
  return 0;
}

static int type_set_add(const crdt_allocator *a, char ***set, size_t *n, const char *type) {
  size_t len;
  int rc = crdt__check_name(type, &len);
  if (rc)
    return rc;
  if (type_set_has(*set, *n, type))
    return 0;
  char **g = crdt__realloc(a, *set, (*n + 1) * sizeof *g);
  if (g == NULL)
    return SP_ERR_NOMEM;
  *set = g;
  char *s = crdt__malloc(a, len + 1);
  if (s == NULL)
    return SP_ERR_NOMEM;
  memcpy(s, type, len + 1);
  g[(*n)++] = s;
  return 0;
}

int crdt_doc_grow_only(crdt_doc *doc, const char *type) {
  return type_set_add(doc->a, &doc->grow_only, &doc->ngrow, type);
}

int crdt_doc_gc_keep(crdt_doc *doc, const char *type) {
  return type_set_add(doc->a, &doc->gc_keep, &doc->nkeep, type);
}

static int is_grow_only(const crdt_doc *doc, const char *type) {
  return type_set_has(doc->grow_only, doc->ngrow, type);
}

/* ---- creating and removing entities -------------------------------------- */

static void invalidate(crdt_doc *doc, entity *e) {
  e->digest_ok = 0;
  e->pg->digest_ok = 0;
  doc->root_ok = 0;
}

/* Unlinks e from its page and the table and frees it; frees the page when it
 * becomes empty (a replica that collected every entity of a page and one
 * that never saw the page must have equal states). */
/* Drops field f of e from its index, if it is indexed. */
static void unindex_field(crdt_doc *doc, entity *e, const field *f) {
  int def = doc->nix ? crdt__index_def_of(doc, e->type, f->name) : -1;
  if (def >= 0 && !f->is_null)
    crdt__index_del(doc, e, def, f->value, f->len);
}

static void entity_remove(crdt_doc *doc, entity *e) {
  page *p = e->pg;
  for (uint32_t i = 0; i < e->nfields; i++)
    unindex_field(doc, e, &e->fields[i]);
  size_t last = p->n - 1;
  if (e->page_index != last) {
    p->ents[e->page_index] = p->ents[last];
    p->ents[e->page_index]->page_index = e->page_index;
  }
  p->n--;
  p->sorted = 0;
  p->digest_ok = 0;
  doc->root_ok = 0;
  table_remove((void **)doc->etab, doc->ecap, e, entity_hash_of);
  doc->ecount--;
  entity_destroy(doc->a, e);
  if (p->n == 0) {
    table_remove((void **)doc->ptab, doc->pcap, p, page_hash_of);
    doc->pcount--;
    page_destroy(doc->a, p);
  }
}

/* Finds or creates the entity for c.  *created tells the caller to undo with
 * entity_remove if what it does next fails. */
static int entity_get(crdt_doc *doc, const crdt_change *c, const size_t *lens, entity **out,
                      int *created) {
  *created = 0;
  entity *e = find_len(doc, c->page, lens[0], c->type, lens[1], c->id, lens[2]);
  if (e) {
    *out = e;
    return 0;
  }
  const crdt_allocator *a = doc->a;
  /* Make room first so that nothing below can fail after linking. */
  if ((doc->ecount + 1) * 4 > doc->ecap * 3 &&
      table_grow(a, (void ***)&doc->etab, &doc->ecap, doc->ecap ? doc->ecap * 2 : 64,
                 entity_hash_of))
    return SP_ERR_NOMEM;
  page *p = find_page_len(doc, c->page, lens[0]);
  int new_page = p == NULL;
  if (new_page && (doc->pcount + 1) * 4 > doc->pcap * 3 &&
      table_grow(a, (void ***)&doc->ptab, &doc->pcap, doc->pcap ? doc->pcap * 2 : 16,
                 page_hash_of))
    return SP_ERR_NOMEM;

  size_t lp = lens[0], lt = lens[1], li = lens[2];
  e = crdt__malloc(a, sizeof *e + lt + li + 2);
  if (e == NULL)
    return SP_ERR_NOMEM;
  memset(e, 0, sizeof *e);
  e->type = (char *)(e + 1);
  memcpy(e->type, c->type, lt + 1);
  e->id = e->type + lt + 1;
  memcpy(e->id, c->id, li + 1);
  e->hash = key_hash(c->page, lp, c->type, lt, c->id, li);

  if (new_page) {
    p = crdt__malloc(a, sizeof *p + lp + 1);
    if (p == NULL)
      goto fail_entity;
    memset(p, 0, sizeof *p);
    p->name = (char *)(p + 1);
    memcpy(p->name, c->page, lp + 1);
    p->hash = page_hash(c->page, lp);
  }
  if (p->n == p->cap) {
    size_t ncap = p->cap ? p->cap * 2 : 8;
    entity **ne = crdt__realloc(a, p->ents, ncap * sizeof *ne);
    if (ne == NULL)
      goto fail_page;
    p->ents = ne;
    p->cap = ncap;
  }
  if (new_page) {
    size_t j = p->hash & (doc->pcap - 1);
    while (doc->ptab[j])
      j = (j + 1) & (doc->pcap - 1);
    doc->ptab[j] = p;
    doc->pcount++;
  }
  e->pg = p;
  e->page_index = p->n;
  p->ents[p->n++] = e;
  p->sorted = 0;
  size_t j = e->hash & (doc->ecap - 1);
  while (doc->etab[j])
    j = (j + 1) & (doc->ecap - 1);
  doc->etab[j] = e;
  doc->ecount++;
  invalidate(doc, e);
  *out = e;
  *created = 1;
  return 0;

fail_page:
  if (new_page)
    page_destroy(a, p);
fail_entity:
  crdt__free(a, e);
  return SP_ERR_NOMEM;
}

/* ---- merging ---------------------------------------------------------------- */

/* Orders two values for equal stamps.  Equal stamps mean the same write, so
 * values differ only through a bug elsewhere; ordering them anyway keeps the
 * merge a total order and replicas convergent even then. */
static int value_cmp(int anull, const uint8_t *av, size_t alen, int bnull, const uint8_t *bv,
                     size_t blen) {
  if (anull || bnull)
    return anull == bnull ? 0 : (anull ? -1 : 1);
  size_t n = alen < blen ? alen : blen;
  int c = n ? memcmp(av, bv, n) : 0;
  if (c)
    return c;
  return alen == blen ? 0 : (alen < blen ? -1 : 1);
}

/* Last tie-break, on the change's (origin, seq): reached only when two
 * different changes carry one stamp, which a correct writer never does; it
 * keeps the order total so replicas agree even then. */
static int dot_cmp(crdt_region ao, uint64_t as, crdt_region bo, uint64_t bs) {
  if (ao != bo)
    return ao < bo ? -1 : 1;
  return as == bs ? 0 : (as < bs ? -1 : 1);
}

/* Binary search for a field by name: index, or -(insertion point) - 1. */
static long field_find(const entity *e, const char *name) {
  long lo = 0, hi = (long)e->nfields - 1;
  while (lo <= hi) {
    long mid = (lo + hi) / 2;
    int c = strcmp(e->fields[mid].name, name);
    if (c == 0)
      return mid;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return -lo - 1;
}

static int set_value(const crdt_allocator *a, field *f, const crdt_change *c) {
  if (!c->value_null && c->value_len > f->cap) {
    uint8_t *nv = crdt__realloc(a, f->value, c->value_len);
    if (nv == NULL)
      return SP_ERR_NOMEM;
    f->value = nv;
    f->cap = c->value_len;
  }
  f->is_null = c->value_null ? 1 : 0;
  f->cl = c->cl;
  f->len = c->value_null ? 0 : c->value_len;
  if (f->len)
    memcpy(f->value, c->value, f->len);
  f->stamp = c->stamp;
  f->origin = c->origin;
  f->seq = c->seq;
  return 0;
}

static int merge_field(crdt_doc *doc, const crdt_change *c, const size_t *lens) {
  entity *e;
  int created, rc = entity_get(doc, c, lens, &e, &created);
  if (rc)
    return rc;
  if (c->cl < e->cl)
    return 0; /* written in a life the entity has left: stale */
  long idx = field_find(e, c->field);
  if (idx >= 0) {
    field *f = &e->fields[idx];
    int cmp = c->cl != f->cl ? (c->cl > f->cl ? 1 : -1) : crdt_stamp_cmp(c->stamp, f->stamp);
    if (cmp == 0)
      cmp = value_cmp(c->value_null, c->value, c->value_len, f->is_null, f->value, f->len);
    if (cmp == 0)
      cmp = dot_cmp(c->origin, c->seq, f->origin, f->seq);
    if (cmp <= 0)
      return 0;
    int def = doc->nix ? crdt__index_def_of(doc, e->type, f->name) : -1;
    if (def >= 0 && !c->value_null &&
        (rc = crdt__index_reserve(doc, e, def, c->value, c->value_len)))
      return rc;
    if (def >= 0 && !f->is_null)
      crdt__index_del(doc, e, def, f->value, f->len);
    rc = set_value(doc->a, f, c); /* on failure f is unchanged */
    if (def >= 0 && !f->is_null)
      crdt__index_add(doc, e, def, f->value, f->len);
    if (rc)
      return rc;
    invalidate(doc, e);
    return 1;
  }
  /* A new register: allocate everything before touching the entity. */
  const crdt_allocator *a = doc->a;
  size_t pos = (size_t)(-idx - 1);
  int def = doc->nix ? crdt__index_def_of(doc, e->type, c->field) : -1;
  if (def >= 0 && !c->value_null && crdt__index_reserve(doc, e, def, c->value, c->value_len))
    goto fail;
  if (e->nfields == e->capfields) {
    uint32_t ncap = e->capfields ? e->capfields * 2 : 4;
    field *nf = crdt__realloc(a, e->fields, ncap * sizeof *nf);
    if (nf == NULL)
      goto fail;
    e->fields = nf;
    e->capfields = ncap;
  }
  size_t ln = lens[3];
  field f;
  memset(&f, 0, sizeof f);
  f.name = crdt__malloc(a, ln + 1);
  if (f.name == NULL)
    goto fail;
  memcpy(f.name, c->field, ln + 1);
  if (set_value(a, &f, c)) {
    crdt__free(a, f.name);
    goto fail;
  }
  memmove(&e->fields[pos + 1], &e->fields[pos], (e->nfields - pos) * sizeof *e->fields);
  e->fields[pos] = f;
  e->nfields++;
  if (def >= 0 && !f.is_null)
    crdt__index_add(doc, e, def, f.value, f.len);
  invalidate(doc, e);
  return 1;

fail:
  if (created)
    entity_remove(doc, e);
  return SP_ERR_NOMEM;
}

static int merge_exist(crdt_doc *doc, const crdt_change *c, const size_t *lens) {
  if (is_grow_only(doc, c->type) && c->cl != 1)
    return SP_ERR_INVAL; /* grow-only entries are never deleted or re-created */
  entity *e;
  int created, rc = entity_get(doc, c, lens, &e, &created);
  if (rc)
    return rc;
  int cmp;
  if (c->cl != e->cl)
    cmp = c->cl > e->cl ? 1 : -1;
  else if ((cmp = crdt_stamp_cmp(c->stamp, e->cl_stamp)) == 0)
    cmp = dot_cmp(c->origin, c->seq, e->cl_origin, e->cl_seq);
  if (cmp <= 0)
    return 0;
  e->cl = c->cl;
  e->cl_stamp = c->stamp;
  e->cl_origin = c->origin;
  e->cl_seq = c->seq;
  /* Fields written in an earlier life are gone with it (a delete empties
   * the entity; a re-create starts from the fields written for it). */
  uint32_t keep = 0;
  for (uint32_t i = 0; i < e->nfields; i++) {
    if (e->fields[i].cl < e->cl) {
      unindex_field(doc, e, &e->fields[i]);
      crdt__free(doc->a, e->fields[i].name);
      crdt__free(doc->a, e->fields[i].value);
    } else {
      e->fields[keep++] = e->fields[i];
    }
  }
  e->nfields = keep;
  /* a new existence register restarts the stability check */
  crdt__free(doc->a, e->barrier);
  e->barrier = NULL;
  e->nbarrier = 0;
  invalidate(doc, e);
  return 1;
}

int crdt_doc_merge(crdt_doc *doc, const crdt_change *c) {
  size_t lens[4];
  int rc = crdt__check_change(c, lens);
  if (rc)
    return rc;
  return c->kind == CRDT_FIELD ? merge_field(doc, c, lens) : merge_exist(doc, c, lens);
}

int crdt_doc_merge_delta(crdt_doc *doc, const crdt_delta *d, crdt_changed_cb cb, void *arg) {
  size_t n = crdt_delta_count(d);
  for (size_t i = 0; i < n; i++) {
    const crdt_change *c = crdt_delta_get(d, i);
    int rc = crdt_doc_merge(doc, c);
    if (rc < 0)
      return rc;
    if (rc == 1 && cb)
      cb(c, arg);
  }
  return 0;
}

/* ---- reads ------------------------------------------------------------------ */

int crdt_doc_alive(const crdt_doc *doc, const char *pg, const char *type, const char *id) {
  const entity *e = crdt__doc_find(doc, pg, type, id);
  return e && (e->cl & 1u);
}

int crdt_doc_cl(const crdt_doc *doc, const char *pg, const char *type, const char *id,
                uint32_t *cl) {
  const entity *e = crdt__doc_find(doc, pg, type, id);
  if (e == NULL)
    return SP_ERR_NOENT;
  *cl = e->cl;
  return 0;
}

const crdt_entity *crdt_doc_entity(const crdt_doc *doc, const char *pg, const char *type,
                                   const char *id) {
  return crdt__doc_find(doc, pg, type, id);
}

int crdt_doc_field(const crdt_doc *doc, const char *pg, const char *type, const char *id,
                   const char *name, const uint8_t **value, size_t *len, crdt_stamp *stamp) {
  return crdt_entity_field(crdt__doc_find(doc, pg, type, id), name, value, len, stamp);
}

int crdt_entity_field(const crdt_entity *e, const char *name, const uint8_t **value,
                      size_t *len, crdt_stamp *stamp) {
  if (e == NULL)
    return SP_ERR_NOENT;
  long idx = field_find(e, name);
  if (idx < 0)
    return SP_ERR_NOENT;
  const field *f = &e->fields[idx];
  if (value) /* an empty value has no storage but is not NULL */
    *value = f->is_null ? NULL : (f->value ? f->value : (const uint8_t *)"");
  if (len)
    *len = f->len;
  if (stamp)
    *stamp = f->stamp;
  return 0;
}

size_t crdt_doc_entity_count(const crdt_doc *doc) { return doc->ecount; }

/* ---- export ------------------------------------------------------------------ */

void crdt__entity_exist_change(const entity *e, crdt_change *c) {
  memset(c, 0, sizeof *c);
  c->kind = CRDT_EXIST;
  c->page = e->pg->name;
  c->type = e->type;
  c->id = e->id;
  c->cl = e->cl;
  c->stamp = e->cl_stamp;
  c->origin = e->cl_origin;
  c->seq = e->cl_seq;
}

void crdt__field_change(const entity *e, const field *f, crdt_change *c) {
  memset(c, 0, sizeof *c);
  c->kind = CRDT_FIELD;
  c->page = e->pg->name;
  c->type = e->type;
  c->id = e->id;
  c->field = f->name;
  c->value = f->is_null ? NULL : f->value;
  c->value_len = f->len;
  c->value_null = f->is_null;
  c->cl = f->cl;
  c->stamp = f->stamp;
  c->origin = f->origin;
  c->seq = f->seq;
}

int crdt_doc_export(const crdt_doc *doc, crdt_delta *out) {
  page **pages;
  size_t np;
  int rc = crdt__doc_sorted_pages(doc, &pages, &np);
  if (rc)
    return rc;
  for (size_t i = 0; i < np && rc == 0; i++) {
    page *p = pages[i];
    crdt__page_sort(p);
    for (size_t k = 0; k < p->n && rc == 0; k++) {
      const entity *e = p->ents[k];
      crdt_change c;
      if (e->cl) {
        crdt__entity_exist_change(e, &c);
        rc = crdt_delta_add(out, &c);
      }
      for (uint32_t f = 0; f < e->nfields && rc == 0; f++) {
        crdt__field_change(e, &e->fields[f], &c);
        rc = crdt_delta_add(out, &c);
      }
    }
  }
  crdt__free(doc->a, pages);
  return rc;
}

/* ---- tombstone collection -------------------------------------------------- */

int crdt_doc_gc(crdt_doc *doc, const crdt_vclock *acks, size_t n, crdt_changed_cb cb,
                void *arg) {
  if (n == 0 || n > CRDT_MAX_REGIONS)
    return SP_ERR_INVAL;
  crdt_vclock min = acks[0];
  for (size_t i = 1; i < n; i++)
    crdt_vclock_min(&min, &acks[i]);

  /* Pass 1: record barriers and gather the stable tombstones (removal would
   * reorder the table under the scan). */
  entity **stable = NULL;
  size_t nstable = 0, capstable = 0;
  int rc = 0;
  for (size_t i = 0; i < doc->ecap; i++) {
    entity *e = doc->etab[i];
    /* a pure tombstone: deleted, and no fields of a coming re-create */
    if (e == NULL || e->cl == 0 || (e->cl & 1u) || e->nfields ||
        type_set_has(doc->gc_keep, doc->nkeep, e->type))
      continue;
    if (e->barrier && e->nbarrier != n) {
      crdt__free(doc->a, e->barrier); /* membership changed: start over */
      e->barrier = NULL;
    }
    if (e->barrier == NULL) {
      if (!crdt_vclock_covers(&min, e->cl_origin, e->cl_seq))
        continue; /* some region has not acknowledged the delete */
      uint64_t *b = crdt__malloc(doc->a, n * sizeof *b);
      if (b == NULL) {
        rc = SP_ERR_NOMEM;
        break;
      }
      for (size_t r = 0; r < n; r++)
        b[r] = acks[r].seq[r];
      e->barrier = b;
      e->nbarrier = (uint32_t)n;
    }
    int ok = 1;
    for (size_t r = 0; r < n && ok; r++)
      ok = min.seq[r] >= e->barrier[r];
    if (!ok)
      continue;
    if (nstable == capstable) {
      size_t ncap = capstable ? capstable * 2 : 16;
      entity **ns = crdt__realloc(doc->a, stable, ncap * sizeof *ns);
      if (ns == NULL) {
        rc = SP_ERR_NOMEM;
        break;
      }
      stable = ns;
      capstable = ncap;
    }
    stable[nstable++] = e;
  }
  if (rc) {
    crdt__free(doc->a, stable); /* nothing removed: retried on the next call */
    return rc;
  }
  for (size_t i = 0; i < nstable; i++) {
    if (cb) {
      crdt_change c;
      crdt__entity_exist_change(stable[i], &c);
      cb(&c, arg);
    }
    entity_remove(doc, stable[i]);
  }
  crdt__free(doc->a, stable);
  return (int)nstable;
}
