/* crdt_index: secondary indexes of a document — for a declared (type,
 * field), the entities of each page grouped by the field's current value.
 *
 * Postings live in one open-addressing table keyed by (page, index, value).
 * They are kept exact by crdt_doc.c: every change of an indexed field's
 * value, every field dropped with an entity's old life, and every entity
 * removal updates them.  Only reserving room can allocate, and merge calls
 * it before it changes anything, so a failed allocation leaves the document
 * and its indexes as they were. */
#include "doc.h"

static uint64_t posting_hash(const page *pg, int def, const uint8_t *v, size_t len) {
  uint64_t h = crdt__hash(CRDT__HASH_INIT, &pg, sizeof pg);
  h = crdt__hash(h, &def, sizeof def);
  return crdt__hash(h, v, len);
}

int crdt_doc_index(crdt_doc *doc, const char *type, const char *fname) {
  size_t lt, lf;
  int rc;
  if ((rc = crdt__check_name(type, &lt)) || (rc = crdt__check_name(fname, &lf)))
    return rc;
  if (crdt__index_def_of(doc, type, fname) >= 0)
    return 0;
  if (doc->ecount > 0)
    return SP_ERR_BUSY;
  if (doc->nix == CRDT__MAX_INDEXES)
    return SP_ERR_INVAL;
  char *t = crdt__malloc(doc->a, lt + 1), *f = crdt__malloc(doc->a, lf + 1);
  if (t == NULL || f == NULL) {
    crdt__free(doc->a, t);
    crdt__free(doc->a, f);
    return SP_ERR_NOMEM;
  }
  memcpy(t, type, lt + 1);
  memcpy(f, fname, lf + 1);
  doc->ix_type[doc->nix] = t;
  doc->ix_field[doc->nix] = f;
  doc->nix++;
  return 0;
}

int crdt__index_def_of(const crdt_doc *doc, const char *type, const char *fname) {
  for (size_t i = 0; i < doc->nix; i++)
    if (strcmp(doc->ix_field[i], fname) == 0 && strcmp(doc->ix_type[i], type) == 0)
      return (int)i;
  return -1;
}

static posting *find(const crdt_doc *doc, const page *pg, int def, const uint8_t *v, size_t len,
                     uint64_t h) {
  if (doc->ixcap == 0)
    return NULL;
  size_t mask = doc->ixcap - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    posting *p = doc->ixtab[i];
    if (p == NULL)
      return NULL;
    if (p->hash == h && p->pg == pg && p->def == (uint32_t)def && p->vlen == len &&
        (len == 0 || memcmp(p->value, v, len) == 0))
      return p;
  }
}

int crdt__index_reserve(crdt_doc *doc, const entity *e, int def, const uint8_t *v, size_t len) {
  uint64_t h = posting_hash(e->pg, def, v, len);
  posting *p = find(doc, e->pg, def, v, len, h);
  if (p == NULL) {
    if ((doc->ixcount + 1) * 4 > doc->ixcap * 3) {
      size_t ncap = doc->ixcap ? doc->ixcap * 2 : 64;
      posting **nt = crdt__malloc(doc->a, ncap * sizeof *nt);
      if (nt == NULL)
        return SP_ERR_NOMEM;
      memset(nt, 0, ncap * sizeof *nt);
      for (size_t i = 0; i < doc->ixcap; i++) {
        posting *q = doc->ixtab[i];
        if (q == NULL)
          continue;
        size_t j = q->hash & (ncap - 1);
        while (nt[j])
          j = (j + 1) & (ncap - 1);
        nt[j] = q;
      }
      crdt__free(doc->a, doc->ixtab);
      doc->ixtab = nt;
      doc->ixcap = ncap;
    }
    p = crdt__malloc(doc->a, sizeof *p + (len ? len : 1));
    if (p == NULL)
      return SP_ERR_NOMEM;
    memset(p, 0, sizeof *p);
    p->hash = h;
    p->pg = e->pg;
    p->def = (uint32_t)def;
    p->value = (uint8_t *)(p + 1);
    p->vlen = len;
    if (len)
      memcpy(p->value, v, len);
    size_t j = h & (doc->ixcap - 1);
    while (doc->ixtab[j])
      j = (j + 1) & (doc->ixcap - 1);
    doc->ixtab[j] = p;
    doc->ixcount++;
  }
  if (p->n == p->cap) {
    size_t ncap = p->cap ? p->cap * 2 : 4;
    entity **ne = crdt__realloc(doc->a, p->ents, ncap * sizeof *ne);
    if (ne == NULL)
      return SP_ERR_NOMEM;
    p->ents = ne;
    p->cap = ncap;
  }
  return 0;
}

void crdt__index_add(crdt_doc *doc, entity *e, int def, const uint8_t *v, size_t len) {
  posting *p = find(doc, e->pg, def, v, len, posting_hash(e->pg, def, v, len));
  if (p && p->n < p->cap)
    p->ents[p->n++] = e;
}

void crdt__index_del(crdt_doc *doc, entity *e, int def, const uint8_t *v, size_t len) {
  posting *p = find(doc, e->pg, def, v, len, posting_hash(e->pg, def, v, len));
  if (p == NULL)
    return;
  for (size_t i = 0; i < p->n; i++)
    if (p->ents[i] == e) {
      p->ents[i] = p->ents[--p->n];
      return;
    }
}

void crdt__index_free(crdt_doc *doc) {
  for (size_t i = 0; i < doc->ixcap; i++)
    if (doc->ixtab[i]) {
      crdt__free(doc->a, doc->ixtab[i]->ents);
      crdt__free(doc->a, doc->ixtab[i]);
    }
  crdt__free(doc->a, doc->ixtab);
  for (size_t i = 0; i < doc->nix; i++) {
    crdt__free(doc->a, doc->ix_type[i]);
    crdt__free(doc->a, doc->ix_field[i]);
  }
}

int crdt_doc_index_find(crdt_doc *doc, const char *pgname, const char *type, const char *fname,
                        const uint8_t *value, size_t len, crdt_entity_cb cb, void *arg) {
  int def = crdt__index_def_of(doc, type, fname);
  if (def < 0)
    return SP_ERR_INVAL;
  const page *pg = crdt__doc_find_page(doc, pgname);
  if (pg == NULL)
    return 0;
  posting *p = find(doc, pg, def, value, len, posting_hash(pg, def, value, len));
  if (p == NULL)
    return 0;
  for (size_t i = 0; i < p->n; i++)
    cb(p->ents[i]->type, p->ents[i]->id, p->ents[i]->cl, arg);
  return 0;
}
