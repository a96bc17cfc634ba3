/* libFuzzer target: repl_msg_decode on arbitrary bytes, then the session
 * engine on whatever decodes.  A decoded message must re-encode and decode
 * again to the same message (nothing is lost or invented between the wire
 * and the structs), and an established session must take it (handshake,
 * batch, snapshot chunk, ack, snapshot request) without crashing, leaking or
 * returning a code outside its contract. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crdt.h"
#include "repl.h"
#include "sp_alloc.h"
#include "sp_buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok) {
  if (!ok)
    abort();
}

static int delta_equal(const crdt_delta *a, const crdt_delta *b) {
  uint8_t *ea, *eb;
  size_t la, lb;
  int eq;
  if (crdt_delta_encode(a, &ea, &la) != 0)
    return 1; /* out of memory: nothing to compare (the deltas use sp_malloc) */
  if (crdt_delta_encode(b, &eb, &lb) != 0) {
    sp_free(ea);
    return 1;
  }
  eq = la == lb && memcmp(ea, eb, la) == 0;
  sp_free(ea);
  sp_free(eb);
  return eq;
}

static int msg_equal(const repl_msg *a, const repl_msg *b) {
  if (a->type != b->type || a->version != b->version)
    return 0;
  switch (a->type) {
  case REPL_MSG_HANDSHAKE:
    return memcmp(&a->u.hs, &b->u.hs, sizeof a->u.hs) == 0;
  case REPL_MSG_HANDSHAKE_REPLY:
    return a->u.reply.accepted == b->u.reply.accepted &&
           strcmp(a->u.reply.reason, b->u.reply.reason) == 0 &&
           a->u.reply.protocol_version == b->u.reply.protocol_version &&
           a->u.reply.region_id == b->u.reply.region_id &&
           crdt_vclock_compare(&a->u.reply.vector, &b->u.reply.vector) == CRDT_EQUAL;
  case REPL_MSG_BATCH:
    return a->u.batch.batch_id == b->u.batch.batch_id &&
           a->u.batch.sender_region == b->u.batch.sender_region &&
           a->u.batch.sender_wall_ms == b->u.batch.sender_wall_ms &&
           crdt_vclock_compare(&a->u.batch.sender_vector, &b->u.batch.sender_vector) ==
               CRDT_EQUAL &&
           delta_equal(a->u.batch.changes, b->u.batch.changes);
  case REPL_MSG_ACK:
    return a->u.ack.batch_id == b->u.ack.batch_id && a->u.ack.status == b->u.ack.status &&
           a->u.ack.wall_ms == b->u.ack.wall_ms &&
           strcmp(a->u.ack.reason, b->u.ack.reason) == 0 &&
           crdt_vclock_compare(&a->u.ack.applied, &b->u.ack.applied) == CRDT_EQUAL;
  case REPL_MSG_SNAPSHOT_REQUEST:
    return memcmp(&a->u.req, &b->u.req, sizeof a->u.req) == 0;
  case REPL_MSG_SNAPSHOT_CHUNK: {
    const repl_snapshot_chunk *x = &a->u.chunk, *y = &b->u.chunk;
    return x->batch_id == y->batch_id && x->sender_region == y->sender_region &&
           x->snapshot_id == y->snapshot_id && x->chunk_seq == y->chunk_seq &&
           x->last == y->last && x->cursor_len == y->cursor_len &&
           memcmp(x->cursor, y->cursor, x->cursor_len) == 0 &&
           x->next_cursor_len == y->next_cursor_len &&
           memcmp(x->next_cursor, y->next_cursor, x->next_cursor_len) == 0 &&
           crdt_vclock_compare(&x->vector, &y->vector) == CRDT_EQUAL &&
           delta_equal(x->changes, y->changes);
  }
  }
  return 0;
}

/* Region 0's session with region 1, established through a real handshake. */
static repl_session *established(sp_buf *buf) {
  repl_config ca = {.cluster_id = "fuzz", .region_name = "a", .region_id = 0,
                    .peer_name = "b", .peer_id = 1};
  repl_config cb = {.cluster_id = "fuzz", .region_name = "b", .region_id = 1,
                    .peer_name = "a", .peer_id = 0};
  repl_session *a = NULL, *b = NULL;
  crdt_vclock v;
  repl_msg m;
  crdt_vclock_init(&v);
  if (repl_session_new(&ca, &a) || repl_session_new(&cb, &b))
    goto fail;
  if (repl_session_hello(b, &v, buf) || repl_msg_decode((uint8_t *)buf->base, buf->len, &m))
    goto fail;
  int rc = repl_session_on_handshake(a, &m, &v, buf);
  repl_msg_release(&m);
  repl_session_free(b);
  if (rc)
    goto fail;
  return a;
fail:
  repl_session_free(a);
  repl_session_free(b);
  return NULL;
}

static void drive(const repl_msg *m) {
  sp_buf buf;
  repl_apply ap;
  crdt_vclock applied;
  const uint64_t wall = 1790000000000ull;
  int rc;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  crdt_vclock_init(&applied);
  applied.seq[1] = 3;
  repl_session *s = established(&buf);
  if (s == NULL)
    goto out;
  memset(&ap, 0, sizeof ap);
  switch (m->type) {
  case REPL_MSG_HANDSHAKE: {
    repl_config c = {.cluster_id = "fuzz", .region_name = "a", .region_id = 0,
                     .peer_name = "b", .peer_id = 1};
    repl_session *fresh;
    if (repl_session_new(&c, &fresh) == 0) {
      rc = repl_session_on_handshake(fresh, m, &applied, &buf);
      check(rc == 0 || rc == SP_ERR_PROTO || rc == SP_ERR_NOMEM);
      repl_session_free(fresh);
    }
    break;
  }
  case REPL_MSG_HANDSHAKE_REPLY:
    check(repl_session_on_handshake_reply(s, m) == SP_ERR_BUSY);
    break;
  case REPL_MSG_BATCH:
    rc = repl_session_on_batch(s, m, &applied, wall, &ap);
    check(rc == 0 || rc == SP_ERR_NOMEM);
    if (rc == 0) {
      /* what is to be applied follows the vector, origin by origin */
      crdt_vclock w = applied;
      for (size_t i = 0; i < ap.count; i++) {
        check(ap.changes[i]->seq == w.seq[ap.changes[i]->origin] + 1);
        w.seq[ap.changes[i]->origin]++;
      }
      check(crdt_vclock_compare(&w, &ap.applied) == CRDT_EQUAL);
      rc = repl_session_ack(s, &ap, NULL, wall, &buf);
      check(rc == 0 || rc == SP_ERR_NOMEM);
    }
    break;
  case REPL_MSG_SNAPSHOT_CHUNK:
    rc = repl_session_on_snapshot_chunk(s, m, &applied, wall, &ap);
    check(rc == 0 || rc == SP_ERR_NOMEM);
    if (rc == 0)
      repl_session_ack(s, &ap, NULL, wall, &buf);
    break;
  case REPL_MSG_ACK:
    rc = repl_session_on_ack(s, m, wall);
    check(rc == 0 || rc == SP_ERR_PROTO);
    break;
  case REPL_MSG_SNAPSHOT_REQUEST:
    check(repl_session_on_snapshot_request(s, m) == 0);
    check(repl_session_want_send(s, wall) == REPL_WANT_SNAPSHOT);
    break;
  }
  repl_apply_release(&ap);
out:
  repl_session_free(s);
  sp_buf_release(&buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  repl_msg m, again;
  sp_buf buf;
  int rc = repl_msg_decode(data, size, &m);
  check(rc == 0 || rc == SP_ERR_PARSE || rc == SP_ERR_PROTO || rc == SP_ERR_TOOBIG ||
        rc == SP_ERR_NOMEM);
  if (rc != 0)
    return 0;
  sp_buf_init(&buf, REPL_MAX_MESSAGE);
  rc = repl_msg_encode(&m, &buf);
  check(rc == 0 || rc == SP_ERR_NOMEM);
  if (rc == 0) {
    rc = repl_msg_decode((const uint8_t *)buf.base, buf.len, &again);
    check(rc == 0 || rc == SP_ERR_NOMEM);
    if (rc == 0) {
      check(msg_equal(&m, &again));
      repl_msg_release(&again);
    }
  }
  sp_buf_release(&buf);
  drive(&m);
  repl_msg_release(&m);
  return 0;
}
