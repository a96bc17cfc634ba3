/* repl_msg: the wire messages, between protobuf bytes (the Envelope of
 * proto/replication.proto, via the protobuf-c code generated at build time)
 * and the plain structs of repl.h holding crdt/ types.
 *
 * Decoding unpacks with a protobuf-c allocator over sp_malloc (so allocation
 * failures are reported as SP_ERR_NOMEM, not as malformed input), checks
 * every field against the limits crdt/ enforces, copies the changes into a
 * crdt_delta the repl_msg owns, and frees the protobuf-c tree before
 * returning.  Encoding builds a protobuf-c tree that borrows the caller's
 * strings and values (scratch arrays from sp_malloc, freed before returning)
 * and packs it straight into the caller's sp_buf.
 */
#include <string.h>

#include "internal.h"
#include "replication.pb-c.h"
#include "sp_alloc.h"

/* ---- allocators ------------------------------------------------------------- */

static void *crdt_a_malloc(size_t n, void *ctx) {
  (void)ctx;
  return sp_malloc(n);
}
static void *crdt_a_realloc(void *p, size_t n, void *ctx) {
  (void)ctx;
  return sp_realloc(p, n);
}
static void crdt_a_free(void *p, void *ctx) {
  (void)ctx;
  sp_free(p);
}
static const crdt_allocator crdt_alloc = {crdt_a_malloc, crdt_a_realloc, crdt_a_free, NULL};

const crdt_allocator *repl_crdt_allocator(void) {
  return &crdt_alloc;
}

/* protobuf-c returns NULL from unpack both for bad bytes and for a failed
 * allocation; the flag tells them apart. */
typedef struct pb_alloc {
  ProtobufCAllocator a;
  int failed;
} pb_alloc;

static void *pb_a_alloc(void *data, size_t n) {
  void *p = sp_malloc(n ? n : 1);
  if (p == NULL)
    ((pb_alloc *)data)->failed = 1;
  return p;
}
static void pb_a_free(void *data, void *p) {
  (void)data;
  sp_free(p);
}
static void pb_alloc_init(pb_alloc *pa) {
  pa->a.alloc = pb_a_alloc;
  pa->a.free = pb_a_free;
  pa->a.allocator_data = pa;
  pa->failed = 0;
}

const char *repl_status_name(repl_status st) {
  switch (st) {
  case REPL_OK: return "OK";
  case REPL_GAP: return "GAP";
  case REPL_SKEW_REJECT: return "SKEW_REJECT";
  case REPL_RESYNC_REQUIRED: return "RESYNC_REQUIRED";
  case REPL_MALFORMED: return "MALFORMED";
  case REPL_VERSION: return "VERSION";
  }
  return "?";
}

/* ---- decoding ------------------------------------------------------------- */

static int vec_from_pb(crdt_vclock *v, Repl__VectorEntry *const *e, size_t n) {
  uint64_t seen = 0;
  crdt_vclock_init(v);
  if (n > CRDT_MAX_REGIONS)
    return SP_ERR_PARSE;
  for (size_t i = 0; i < n; i++) {
    uint32_t r = e[i]->region_id;
    if (r >= CRDT_MAX_REGIONS || (seen >> r & 1u))
      return SP_ERR_PARSE;
    seen |= (uint64_t)1 << r;
    v->seq[r] = e[i]->seq;
  }
  return 0;
}

/* An identifier from a string field: 1..REPL_MAX_ID bytes. */
static int id_from_pb(char *dst, const char *src) {
  size_t n = strlen(src);
  if (n == 0 || n > REPL_MAX_ID)
    return SP_ERR_PARSE;
  memcpy(dst, src, n + 1);
  return 0;
}

/* Reasons are for logs: cut, never refused. */
static void reason_from_pb(char *dst, const char *src) {
  size_t n = strnlen(src, REPL_MAX_REASON);
  memcpy(dst, src, n);
  dst[n] = '\0';
}

static int region_from_pb(crdt_region *dst, uint32_t r) {
  if (r >= CRDT_MAX_REGIONS)
    return SP_ERR_PARSE;
  *dst = (crdt_region)r;
  return 0;
}

static int cursor_from_pb(uint8_t *dst, size_t *len, ProtobufCBinaryData b) {
  if (b.len > REPL_MAX_CURSOR)
    return SP_ERR_PARSE;
  if (b.len)
    memcpy(dst, b.data, b.len);
  *len = b.len;
  return 0;
}

/* A name from a bytes field into buf (CRDT_MAX_NAME + 1): present, within the
 * limit and without NUL (crdt/ checks the other control bytes). */
static int name_from_pb(char *buf, ProtobufCBinaryData b) {
  if (b.len == 0 || b.len > CRDT_MAX_NAME || memchr(b.data, '\0', b.len) != NULL)
    return SP_ERR_PARSE;
  memcpy(buf, b.data, b.len);
  buf[b.len] = '\0';
  return 0;
}

static int change_from_pb(crdt_delta *d, const Repl__Change *p) {
  char page[CRDT_MAX_NAME + 1], type[CRDT_MAX_NAME + 1], id[CRDT_MAX_NAME + 1];
  char field[CRDT_MAX_NAME + 1];
  crdt_change c;
  int rc;
  memset(&c, 0, sizeof c);
  if ((rc = name_from_pb(page, p->page_id)) || (rc = name_from_pb(type, p->type)) ||
      (rc = name_from_pb(id, p->id)))
    return rc;
  c.page = page;
  c.type = type;
  c.id = id;
  if (p->kind == REPL__CHANGE_KIND__CHANGE_KIND_FIELD) {
    c.kind = CRDT_FIELD;
    if ((rc = name_from_pb(field, p->field)))
      return rc;
    c.field = field;
    if (p->value.len > CRDT_MAX_VALUE)
      return SP_ERR_TOOBIG;
    if (p->value_null && p->value.len)
      return SP_ERR_PARSE;
    c.value_null = p->value_null ? 1 : 0;
    c.value = p->value.len ? p->value.data : (const uint8_t *)"";
    c.value_len = p->value.len;
    if (c.value_null)
      c.value = NULL;
  } else if (p->kind == REPL__CHANGE_KIND__CHANGE_KIND_EXIST) {
    c.kind = CRDT_EXIST;
    if (p->field.len || p->value.len || p->value_null)
      return SP_ERR_PARSE;
  } else {
    return SP_ERR_PARSE;
  }
  if (p->cl == 0 || p->seq == 0)
    return SP_ERR_PARSE;
  c.cl = p->cl;
  c.stamp.hlc = p->hlc;
  if ((rc = region_from_pb(&c.stamp.region, p->region)) ||
      (rc = region_from_pb(&c.origin, p->origin)))
    return rc;
  c.seq = p->seq;
  rc = crdt_delta_add(d, &c);
  return rc == SP_ERR_INVAL ? SP_ERR_PARSE : rc;
}

static int changes_from_pb(crdt_delta **out, Repl__Change *const *ch, size_t n) {
  crdt_delta *d;
  int rc;
  if (n > CRDT_MAX_DELTA_CHANGES)
    return SP_ERR_PARSE;
  if ((rc = crdt_delta_new(repl_crdt_allocator(), &d)))
    return rc;
  for (size_t i = 0; i < n; i++) {
    if ((rc = change_from_pb(d, ch[i]))) {
      crdt_delta_free(d);
      return rc;
    }
  }
  *out = d;
  return 0;
}

static int from_envelope(const Repl__Envelope *env, repl_msg *m) {
  int rc;
  m->version = env->protocol_version;
  /* A body this version does not know arrives as an unknown field. */
  if (env->body_case == REPL__ENVELOPE__BODY__NOT_SET)
    return env->base.n_unknown_fields ? SP_ERR_PROTO : SP_ERR_PARSE;
  switch (env->body_case) {
  case REPL__ENVELOPE__BODY_HANDSHAKE: {
    const Repl__Handshake *h = env->handshake;
    repl_handshake *o = &m->u.hs;
    m->type = REPL_MSG_HANDSHAKE;
    if ((rc = id_from_pb(o->cluster_id, h->cluster_id)) ||
        (rc = id_from_pb(o->region_name, h->region_name)) ||
        (rc = region_from_pb(&o->region_id, h->region_id)))
      return rc;
    o->protocol_version = h->protocol_version;
    o->min_protocol_version = h->min_protocol_version;
    return vec_from_pb(&o->vector, h->vector, h->n_vector);
  }
  case REPL__ENVELOPE__BODY_HANDSHAKE_REPLY: {
    const Repl__HandshakeReply *h = env->handshake_reply;
    repl_handshake_reply *o = &m->u.reply;
    m->type = REPL_MSG_HANDSHAKE_REPLY;
    o->accepted = h->accepted ? 1 : 0;
    reason_from_pb(o->reason, h->reason);
    o->protocol_version = h->protocol_version;
    if ((rc = region_from_pb(&o->region_id, h->region_id)))
      return rc;
    return vec_from_pb(&o->vector, h->vector, h->n_vector);
  }
  default:
    break;
  }
  /* Everything after the handshake is written in the negotiated version. */
  if (env->protocol_version < REPL_PROTOCOL_MIN || env->protocol_version > REPL_PROTOCOL_VERSION)
    return SP_ERR_PROTO;
  switch (env->body_case) {
  case REPL__ENVELOPE__BODY_BATCH: {
    const Repl__DeltaBatch *b = env->batch;
    repl_batch *o = &m->u.batch;
    m->type = REPL_MSG_BATCH;
    if (b->batch_id == 0)
      return SP_ERR_PARSE;
    o->batch_id = b->batch_id;
    o->sender_wall_ms = b->sender_wall_ms;
    if ((rc = region_from_pb(&o->sender_region, b->sender_region)) ||
        (rc = vec_from_pb(&o->sender_vector, b->sender_vector, b->n_sender_vector)))
      return rc;
    return changes_from_pb(&o->changes, b->changes, b->n_changes);
  }
  case REPL__ENVELOPE__BODY_ACK: {
    const Repl__Ack *a = env->ack;
    repl_ack *o = &m->u.ack;
    m->type = REPL_MSG_ACK;
    switch (a->status) {
    case REPL__ACK_STATUS__ACK_OK: o->status = REPL_OK; break;
    case REPL__ACK_STATUS__ACK_GAP: o->status = REPL_GAP; break;
    case REPL__ACK_STATUS__ACK_SKEW_REJECT: o->status = REPL_SKEW_REJECT; break;
    case REPL__ACK_STATUS__ACK_RESYNC_REQUIRED: o->status = REPL_RESYNC_REQUIRED; break;
    case REPL__ACK_STATUS__ACK_MALFORMED: o->status = REPL_MALFORMED; break;
    case REPL__ACK_STATUS__ACK_VERSION: o->status = REPL_VERSION; break;
    default: return SP_ERR_PARSE;
    }
    o->batch_id = a->batch_id;
    o->wall_ms = a->wall_ms;
    reason_from_pb(o->reason, a->reason);
    return vec_from_pb(&o->applied, a->applied_vector, a->n_applied_vector);
  }
  case REPL__ENVELOPE__BODY_SNAPSHOT_REQUEST: {
    const Repl__SnapshotRequest *r = env->snapshot_request;
    repl_snapshot_request *o = &m->u.req;
    m->type = REPL_MSG_SNAPSHOT_REQUEST;
    o->snapshot_id = r->snapshot_id;
    o->chunk_seq = r->chunk_seq;
    return cursor_from_pb(o->cursor, &o->cursor_len, r->cursor);
  }
  case REPL__ENVELOPE__BODY_SNAPSHOT_CHUNK: {
    const Repl__SnapshotChunk *c = env->snapshot_chunk;
    repl_snapshot_chunk *o = &m->u.chunk;
    m->type = REPL_MSG_SNAPSHOT_CHUNK;
    if (c->batch_id == 0 || c->snapshot_id == 0)
      return SP_ERR_PARSE;
    o->batch_id = c->batch_id;
    o->snapshot_id = c->snapshot_id;
    o->chunk_seq = c->chunk_seq;
    o->last = c->last ? 1 : 0;
    if ((rc = region_from_pb(&o->sender_region, c->sender_region)) ||
        (rc = cursor_from_pb(o->cursor, &o->cursor_len, c->cursor)) ||
        (rc = cursor_from_pb(o->next_cursor, &o->next_cursor_len, c->next_cursor)) ||
        (rc = vec_from_pb(&o->vector, c->vector, c->n_vector)))
      return rc;
    return changes_from_pb(&o->changes, c->changes, c->n_changes);
  }
  default:
    return SP_ERR_PARSE;
  }
}

int repl_msg_decode(const uint8_t *in, size_t len, repl_msg *m) {
  pb_alloc pa;
  memset(m, 0, sizeof *m);
  if (len > REPL_MAX_MESSAGE)
    return SP_ERR_TOOBIG;
  pb_alloc_init(&pa);
  Repl__Envelope *env = repl__envelope__unpack(&pa.a, len, in);
  if (env == NULL)
    return pa.failed ? SP_ERR_NOMEM : SP_ERR_PARSE;
  int rc = from_envelope(env, m);
  repl__envelope__free_unpacked(env, &pa.a);
  if (rc) {
    repl_msg_release(m);
    memset(m, 0, sizeof *m);
  }
  return rc;
}

void repl_msg_release(repl_msg *m) {
  if (m->type == REPL_MSG_BATCH) {
    crdt_delta_free(m->u.batch.changes);
    m->u.batch.changes = NULL;
  } else if (m->type == REPL_MSG_SNAPSHOT_CHUNK) {
    crdt_delta_free(m->u.chunk.changes);
    m->u.chunk.changes = NULL;
  }
}

/* ---- encoding ------------------------------------------------------------- */

/* The protobuf-c tree for one message; it borrows everything from the
 * repl_msg except the arrays below. */
typedef struct pb_tree {
  Repl__Envelope env;
  union {
    Repl__Handshake hs;
    Repl__HandshakeReply reply;
    Repl__DeltaBatch batch;
    Repl__Ack ack;
    Repl__SnapshotRequest req;
    Repl__SnapshotChunk chunk;
  } u;
  Repl__VectorEntry ve[CRDT_MAX_REGIONS];
  Repl__VectorEntry *vp[CRDT_MAX_REGIONS];
  Repl__Change *changes; /* sp_malloc */
  Repl__Change **cp;     /* sp_malloc */
} pb_tree;

static size_t vec_to_pb(pb_tree *t, const crdt_vclock *v, Repl__VectorEntry ***out) {
  size_t n = 0;
  for (unsigned r = 0; r < CRDT_MAX_REGIONS; r++) {
    if (v->seq[r] == 0)
      continue;
    repl__vector_entry__init(&t->ve[n]);
    t->ve[n].region_id = r;
    t->ve[n].seq = v->seq[r];
    t->vp[n] = &t->ve[n];
    n++;
  }
  *out = n ? t->vp : NULL;
  return n;
}

static ProtobufCBinaryData bin(const void *p, size_t n) {
  ProtobufCBinaryData b = {n, n ? (uint8_t *)(uintptr_t)p : NULL};
  return b;
}

static void change_to_pb(Repl__Change *p, const crdt_change *c) {
  repl__change__init(p);
  p->kind = c->kind == CRDT_FIELD ? REPL__CHANGE_KIND__CHANGE_KIND_FIELD
                                  : REPL__CHANGE_KIND__CHANGE_KIND_EXIST;
  p->page_id = bin(c->page, strlen(c->page));
  p->type = bin(c->type, strlen(c->type));
  p->id = bin(c->id, strlen(c->id));
  if (c->kind == CRDT_FIELD) {
    p->field = bin(c->field, strlen(c->field));
    p->value_null = c->value_null ? 1 : 0;
    if (!c->value_null)
      p->value = bin(c->value, c->value_len);
  }
  p->cl = c->cl;
  p->hlc = c->stamp.hlc;
  p->region = c->stamp.region;
  p->origin = c->origin;
  p->seq = c->seq;
}

size_t repl_msg_change_size(const crdt_change *c) {
  Repl__Change p;
  change_to_pb(&p, c);
  size_t n = repl__change__get_packed_size(&p);
  size_t lenlen = 1;
  for (size_t v = n; v >= 0x80; v >>= 7)
    lenlen++;
  return 1 + lenlen + n;
}

static int changes_to_pb(pb_tree *t, const crdt_delta *d, Repl__Change ***out, size_t *n_out) {
  size_t n = d ? crdt_delta_count(d) : 0;
  *out = NULL;
  *n_out = n;
  if (n == 0)
    return 0;
  t->changes = sp_malloc(n * sizeof *t->changes);
  t->cp = sp_malloc(n * sizeof *t->cp);
  if (t->changes == NULL || t->cp == NULL)
    return SP_ERR_NOMEM;
  for (size_t i = 0; i < n; i++) {
    change_to_pb(&t->changes[i], crdt_delta_get(d, i));
    t->cp[i] = &t->changes[i];
  }
  *out = t->cp;
  return 0;
}

static void tree_release(pb_tree *t) {
  sp_free(t->changes);
  sp_free(t->cp);
}

static int to_envelope(const repl_msg *m, pb_tree *t) {
  memset(t, 0, sizeof *t);
  repl__envelope__init(&t->env);
  t->env.protocol_version = m->version;
  switch (m->type) {
  case REPL_MSG_HANDSHAKE: {
    const repl_handshake *h = &m->u.hs;
    Repl__Handshake *p = &t->u.hs;
    if (h->region_id >= CRDT_MAX_REGIONS)
      return SP_ERR_INVAL;
    repl__handshake__init(p);
    p->cluster_id = (char *)(uintptr_t)h->cluster_id;
    p->region_name = (char *)(uintptr_t)h->region_name;
    p->region_id = h->region_id;
    p->protocol_version = h->protocol_version;
    p->min_protocol_version = h->min_protocol_version;
    p->n_vector = vec_to_pb(t, &h->vector, &p->vector);
    t->env.body_case = REPL__ENVELOPE__BODY_HANDSHAKE;
    t->env.handshake = p;
    return 0;
  }
  case REPL_MSG_HANDSHAKE_REPLY: {
    const repl_handshake_reply *h = &m->u.reply;
    Repl__HandshakeReply *p = &t->u.reply;
    if (h->region_id >= CRDT_MAX_REGIONS)
      return SP_ERR_INVAL;
    repl__handshake_reply__init(p);
    p->accepted = h->accepted ? 1 : 0;
    p->reason = (char *)(uintptr_t)h->reason;
    p->protocol_version = h->protocol_version;
    p->region_id = h->region_id;
    p->n_vector = vec_to_pb(t, &h->vector, &p->vector);
    t->env.body_case = REPL__ENVELOPE__BODY_HANDSHAKE_REPLY;
    t->env.handshake_reply = p;
    return 0;
  }
  case REPL_MSG_BATCH: {
    const repl_batch *b = &m->u.batch;
    Repl__DeltaBatch *p = &t->u.batch;
    if (b->sender_region >= CRDT_MAX_REGIONS || b->changes == NULL)
      return SP_ERR_INVAL;
    repl__delta_batch__init(p);
    p->batch_id = b->batch_id;
    p->sender_region = b->sender_region;
    p->sender_wall_ms = b->sender_wall_ms;
    p->n_sender_vector = vec_to_pb(t, &b->sender_vector, &p->sender_vector);
    t->env.body_case = REPL__ENVELOPE__BODY_BATCH;
    t->env.batch = p;
    return changes_to_pb(t, b->changes, &p->changes, &p->n_changes);
  }
  case REPL_MSG_ACK: {
    const repl_ack *a = &m->u.ack;
    Repl__Ack *p = &t->u.ack;
    repl__ack__init(p);
    switch (a->status) {
    case REPL_OK: p->status = REPL__ACK_STATUS__ACK_OK; break;
    case REPL_GAP: p->status = REPL__ACK_STATUS__ACK_GAP; break;
    case REPL_SKEW_REJECT: p->status = REPL__ACK_STATUS__ACK_SKEW_REJECT; break;
    case REPL_RESYNC_REQUIRED: p->status = REPL__ACK_STATUS__ACK_RESYNC_REQUIRED; break;
    case REPL_MALFORMED: p->status = REPL__ACK_STATUS__ACK_MALFORMED; break;
    case REPL_VERSION: p->status = REPL__ACK_STATUS__ACK_VERSION; break;
    default: return SP_ERR_INVAL;
    }
    p->batch_id = a->batch_id;
    p->wall_ms = a->wall_ms;
    p->reason = (char *)(uintptr_t)a->reason;
    p->n_applied_vector = vec_to_pb(t, &a->applied, &p->applied_vector);
    t->env.body_case = REPL__ENVELOPE__BODY_ACK;
    t->env.ack = p;
    return 0;
  }
  case REPL_MSG_SNAPSHOT_REQUEST: {
    const repl_snapshot_request *r = &m->u.req;
    Repl__SnapshotRequest *p = &t->u.req;
    if (r->cursor_len > REPL_MAX_CURSOR)
      return SP_ERR_INVAL;
    repl__snapshot_request__init(p);
    p->snapshot_id = r->snapshot_id;
    p->chunk_seq = r->chunk_seq;
    p->cursor = bin(r->cursor, r->cursor_len);
    t->env.body_case = REPL__ENVELOPE__BODY_SNAPSHOT_REQUEST;
    t->env.snapshot_request = p;
    return 0;
  }
  case REPL_MSG_SNAPSHOT_CHUNK: {
    const repl_snapshot_chunk *c = &m->u.chunk;
    Repl__SnapshotChunk *p = &t->u.chunk;
    if (c->sender_region >= CRDT_MAX_REGIONS || c->changes == NULL ||
        c->cursor_len > REPL_MAX_CURSOR || c->next_cursor_len > REPL_MAX_CURSOR)
      return SP_ERR_INVAL;
    repl__snapshot_chunk__init(p);
    p->batch_id = c->batch_id;
    p->sender_region = c->sender_region;
    p->snapshot_id = c->snapshot_id;
    p->chunk_seq = c->chunk_seq;
    p->cursor = bin(c->cursor, c->cursor_len);
    p->next_cursor = bin(c->next_cursor, c->next_cursor_len);
    p->last = c->last ? 1 : 0;
    p->n_vector = vec_to_pb(t, &c->vector, &p->vector);
    t->env.body_case = REPL__ENVELOPE__BODY_SNAPSHOT_CHUNK;
    t->env.snapshot_chunk = p;
    return changes_to_pb(t, c->changes, &p->changes, &p->n_changes);
  }
  }
  return SP_ERR_INVAL;
}

int repl_msg_packed_size(const repl_msg *m, size_t *size) {
  pb_tree *t = sp_malloc(sizeof *t);
  if (t == NULL)
    return SP_ERR_NOMEM;
  int rc = to_envelope(m, t);
  if (rc == 0)
    *size = repl__envelope__get_packed_size(&t->env);
  tree_release(t);
  sp_free(t);
  return rc;
}

/* A ProtobufCBuffer that appends to an sp_buf already grown to fit. */
typedef struct buf_writer {
  ProtobufCBuffer base; /* first: protobuf-c hands back &base */
  sp_buf *out;
  int rc;
} buf_writer;

static void writer_append(ProtobufCBuffer *b, size_t len, const uint8_t *data) {
  buf_writer *w = (buf_writer *)b;
  if (w->rc == 0)
    w->rc = sp_buf_add(w->out, data, len);
}

int repl_msg_encode(const repl_msg *m, sp_buf *out) {
  pb_tree *t = sp_malloc(sizeof *t);
  int rc;
  if (t == NULL)
    return SP_ERR_NOMEM;
  sp_buf_reset(out);
  if ((rc = to_envelope(m, t)))
    goto done;
  size_t n = repl__envelope__get_packed_size(&t->env);
  if (n > REPL_MAX_MESSAGE) {
    rc = SP_ERR_TOOBIG;
    goto done;
  }
  if ((rc = sp_buf_grow(out, n)))
    goto done;
  buf_writer w = {{writer_append}, out, 0};
  repl__envelope__pack_to_buffer(&t->env, &w.base);
  rc = w.rc;
  if (rc)
    sp_buf_reset(out);
done:
  tree_release(t);
  sp_free(t);
  return rc;
}
