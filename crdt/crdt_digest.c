/* crdt_digest: SHA-256 digests of the merged state, as a three-level tree
 * (entity -> page -> whole document) so two regions can compare one hash,
 * then the pages, then the entities of the pages that differ.
 *
 * The canonical form hashed for an entity is unambiguous (every string and
 * value is length-prefixed, integers fixed-width little endian) and covers
 * every register with its stamp, so equal digests mean equal states.  The
 * GC barrier is local bookkeeping and is not part of the state. */
#include "doc.h"

#include <openssl/evp.h>
#include <stdlib.h>

static int entity_cmp(const void *a, const void *b) {
  const entity *x = *(entity *const *)a, *y = *(entity *const *)b;
  int c = strcmp(x->type, y->type);
  return c ? c : strcmp(x->id, y->id);
}

void crdt__page_sort(page *p) {
  if (p->sorted)
    return;
  qsort(p->ents, p->n, sizeof *p->ents, entity_cmp);
  for (size_t i = 0; i < p->n; i++)
    p->ents[i]->page_index = i;
  p->sorted = 1;
}

static int page_cmp(const void *a, const void *b) {
  return strcmp((*(page *const *)a)->name, (*(page *const *)b)->name);
}

int crdt__doc_sorted_pages(const crdt_doc *doc, page ***out, size_t *n) {
  page **v = crdt__malloc(doc->a, (doc->pcount ? doc->pcount : 1) * sizeof *v);
  if (v == NULL)
    return SP_ERR_NOMEM;
  size_t k = 0;
  for (size_t i = 0; i < doc->pcap; i++)
    if (doc->ptab[i])
      v[k++] = doc->ptab[i];
  qsort(v, k, sizeof *v, page_cmp);
  *out = v;
  *n = k;
  return 0;
}

static void put_u64(EVP_MD_CTX *x, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  EVP_DigestUpdate(x, b, 8);
}

static void put_bytes(EVP_MD_CTX *x, const void *p, size_t n) {
  put_u64(x, n);
  if (n)
    EVP_DigestUpdate(x, p, n);
}

static void put_str(EVP_MD_CTX *x, const char *s) { put_bytes(x, s, strlen(s)); }

static void put_stamp(EVP_MD_CTX *x, crdt_stamp s, crdt_region origin, uint64_t seq) {
  put_u64(x, s.hlc);
  put_u64(x, ((uint64_t)s.region << 16) | origin);
  put_u64(x, seq);
}

static int entity_digest(EVP_MD_CTX *x, entity *e) {
  if (e->digest_ok)
    return 0;
  if (!EVP_DigestInit_ex(x, EVP_sha256(), NULL))
    return SP_ERR_NOMEM;
  put_str(x, e->type);
  put_str(x, e->id);
  put_u64(x, e->cl);
  put_stamp(x, e->cl_stamp, e->cl_origin, e->cl_seq);
  put_u64(x, e->nfields);
  for (uint32_t i = 0; i < e->nfields; i++) {
    const field *f = &e->fields[i];
    put_str(x, f->name);
    put_u64(x, ((uint64_t)f->cl << 1) | f->is_null);
    put_bytes(x, f->value, f->len);
    put_stamp(x, f->stamp, f->origin, f->seq);
  }
  if (!EVP_DigestFinal_ex(x, e->digest, NULL))
    return SP_ERR_NOMEM;
  e->digest_ok = 1;
  return 0;
}

static int page_digest(EVP_MD_CTX *x, page *p) {
  if (p->digest_ok)
    return 0;
  crdt__page_sort(p);
  for (size_t i = 0; i < p->n; i++) {
    int rc = entity_digest(x, p->ents[i]);
    if (rc)
      return rc;
  }
  if (!EVP_DigestInit_ex(x, EVP_sha256(), NULL))
    return SP_ERR_NOMEM;
  put_str(x, p->name);
  put_u64(x, p->n);
  for (size_t i = 0; i < p->n; i++) {
    put_str(x, p->ents[i]->type);
    put_str(x, p->ents[i]->id);
    EVP_DigestUpdate(x, p->ents[i]->digest, CRDT_DIGEST_LEN);
  }
  if (!EVP_DigestFinal_ex(x, p->digest, NULL))
    return SP_ERR_NOMEM;
  p->digest_ok = 1;
  return 0;
}

int crdt_doc_digest(crdt_doc *doc, uint8_t out[CRDT_DIGEST_LEN]) {
  if (doc->root_ok) {
    memcpy(out, doc->root, CRDT_DIGEST_LEN);
    return 0;
  }
  page **pages;
  size_t np;
  int rc = crdt__doc_sorted_pages(doc, &pages, &np);
  if (rc)
    return rc;
  EVP_MD_CTX *x = EVP_MD_CTX_new();
  if (x == NULL) {
    crdt__free(doc->a, pages);
    return SP_ERR_NOMEM;
  }
  for (size_t i = 0; i < np && rc == 0; i++)
    rc = page_digest(x, pages[i]);
  if (rc == 0 && !EVP_DigestInit_ex(x, EVP_sha256(), NULL))
    rc = SP_ERR_NOMEM;
  if (rc == 0) {
    put_u64(x, np);
    for (size_t i = 0; i < np; i++) {
      put_str(x, pages[i]->name);
      EVP_DigestUpdate(x, pages[i]->digest, CRDT_DIGEST_LEN);
    }
    if (!EVP_DigestFinal_ex(x, doc->root, NULL))
      rc = SP_ERR_NOMEM;
  }
  EVP_MD_CTX_free(x);
  crdt__free(doc->a, pages);
  if (rc)
    return rc;
  doc->root_ok = 1;
  memcpy(out, doc->root, CRDT_DIGEST_LEN);
  return 0;
}

int crdt_doc_page_digest(crdt_doc *doc, const char *name, uint8_t out[CRDT_DIGEST_LEN]) {
  page *p = crdt__doc_find_page(doc, name);
  if (p == NULL)
    return SP_ERR_NOENT;
  EVP_MD_CTX *x = EVP_MD_CTX_new();
  if (x == NULL)
    return SP_ERR_NOMEM;
  int rc = page_digest(x, p);
  EVP_MD_CTX_free(x);
  if (rc == 0)
    memcpy(out, p->digest, CRDT_DIGEST_LEN);
  return rc;
}

int crdt_doc_page_digests(crdt_doc *doc, crdt_page_digest_cb cb, void *arg) {
  uint8_t root[CRDT_DIGEST_LEN];
  int rc = crdt_doc_digest(doc, root); /* brings every page digest up to date */
  if (rc)
    return rc;
  page **pages;
  size_t np;
  if ((rc = crdt__doc_sorted_pages(doc, &pages, &np)))
    return rc;
  for (size_t i = 0; i < np; i++)
    cb(pages[i]->name, pages[i]->digest, arg);
  crdt__free(doc->a, pages);
  return 0;
}

int crdt_doc_entity_digests(crdt_doc *doc, const char *name, crdt_entity_digest_cb cb,
                            void *arg) {
  uint8_t tmp[CRDT_DIGEST_LEN];
  int rc = crdt_doc_page_digest(doc, name, tmp);
  if (rc)
    return rc;
  page *p = crdt__doc_find_page(doc, name);
  for (size_t i = 0; i < p->n; i++)
    cb(p->ents[i]->type, p->ents[i]->id, p->ents[i]->digest, arg);
  return 0;
}

int crdt_doc_pages(crdt_doc *doc, crdt_page_cb cb, void *arg) {
  page **pages;
  size_t np;
  int rc = crdt__doc_sorted_pages(doc, &pages, &np);
  if (rc)
    return rc;
  for (size_t i = 0; i < np; i++)
    cb(pages[i]->name, arg);
  crdt__free(doc->a, pages);
  return 0;
}

int crdt_doc_page_entities(crdt_doc *doc, const char *name, const char *type, crdt_entity_cb cb,
                           void *arg) {
  page *p = crdt__doc_find_page(doc, name);
  if (p == NULL)
    return SP_ERR_NOENT;
  crdt__page_sort(p);
  for (size_t i = 0; i < p->n; i++) {
    const entity *e = p->ents[i];
    if (type == NULL || strcmp(e->type, type) == 0)
      cb(e->type, e->id, e->cl, arg);
  }
  return 0;
}
