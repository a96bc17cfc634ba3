/* crdt/doc.h: the document's internal structures, shared by crdt_doc.c
 * (merge, reads, GC) and crdt_digest.c (digests, sorted walks). */
#ifndef CRDT_DOC_H
#define CRDT_DOC_H

#include "internal.h"

typedef struct field {
  char *name;
  uint8_t *value; /* NULL when is_null or empty */
  size_t len, cap;
  uint8_t is_null;
  uint32_t cl; /* the entity life the value was written in */
  crdt_stamp stamp;
  crdt_region origin;
  uint64_t seq;
} field;

struct page;

typedef struct entity {
  uint64_t hash; /* of (page, type, id) */
  struct page *pg;
  size_t page_index; /* position in pg->ents */
  char *type, *id;   /* stored after the struct */
  uint32_t cl;       /* causal length; 0 = no existence register yet */
  crdt_stamp cl_stamp;
  crdt_region cl_origin;
  uint64_t cl_seq;
  field *fields; /* sorted by name */
  uint32_t nfields, capfields;
  uint64_t *barrier; /* GC barrier, nbarrier entries, once the delete is everywhere */
  uint32_t nbarrier;
  int digest_ok;
  uint8_t digest[CRDT_DIGEST_LEN];
} entity;

typedef struct page {
  uint64_t hash;
  char *name; /* stored after the struct */
  entity **ents;
  size_t n, cap;
  int sorted; /* ents sorted by (type, id) since the last insertion */
  int digest_ok;
  uint8_t digest[CRDT_DIGEST_LEN];
} page;

/* Secondary index (crdt_index.c): the live entities of one page whose
 * indexed field has one value. */
#define CRDT__MAX_INDEXES 8
typedef struct posting {
  uint64_t hash;
  const struct page *pg;
  uint32_t def; /* which declared index */
  uint8_t *value;
  size_t vlen;
  entity **ents;
  size_t n, cap;
} posting;

struct crdt_doc {
  const crdt_allocator *a;
  char *ix_type[CRDT__MAX_INDEXES], *ix_field[CRDT__MAX_INDEXES];
  size_t nix;
  posting **ixtab; /* open addressing; postings are never removed */
  size_t ixcap, ixcount;
  entity **etab; /* open addressing, power-of-two capacity */
  size_t ecap, ecount;
  page **ptab;
  size_t pcap, pcount;
  char **grow_only;
  size_t ngrow;
  char **gc_keep; /* types whose tombstones are never collected */
  size_t nkeep;
  int root_ok;
  uint8_t root[CRDT_DIGEST_LEN];
};

entity *crdt__doc_find(const crdt_doc *doc, const char *pg, const char *type, const char *id);
page *crdt__doc_find_page(const crdt_doc *doc, const char *name);
/* The pages sorted by name, in an array the caller frees with doc->a. */
int crdt__doc_sorted_pages(const crdt_doc *doc, page ***out, size_t *n);
/* Sorts a page's entities by (type, id) (keeps page_index right). */
void crdt__page_sort(page *p);
void crdt__entity_exist_change(const entity *e, crdt_change *c);

/* Index maintenance (crdt_index.c).  def_of: the index of (type, field) or
 * -1.  reserve makes room for e under value (the only step that allocates:
 * call it before changing anything); add and del never allocate.  NULL
 * values are not indexed. */
int crdt__index_def_of(const crdt_doc *doc, const char *type, const char *field);
int crdt__index_reserve(crdt_doc *doc, const entity *e, int def, const uint8_t *v, size_t len);
void crdt__index_add(crdt_doc *doc, entity *e, int def, const uint8_t *v, size_t len);
void crdt__index_del(crdt_doc *doc, entity *e, int def, const uint8_t *v, size_t len);
void crdt__index_free(crdt_doc *doc);
void crdt__field_change(const entity *e, const field *f, crdt_change *c);

#endif
