/* repl_session: the delta-sync state machine for one peer, both directions,
 * without I/O (replication/DESIGN.md has the protocol).
 *
 * Sending keeps three vectors: `acked` (what the peer has durably applied,
 * from its acks, handshake and batches), `sent` (how far rows have been put
 * into batches; >= acked) and `local` (our own applied vector, the heads of
 * the change log, from repl_session_notify).  Rows between sent and local
 * are pending.  At most `window` batches are in flight; each keeps its
 * encoded bytes so a timeout re-sends exactly what was sent, and the cursor
 * after it so a cumulative ack can retire it.  A GAP or SKEW_REJECT ack for a
 * batch in flight rewinds `sent` to `acked` (go-back-N).  A source that can
 * no longer serve the peer, or a RESYNC_REQUIRED ack, switches to snapshot
 * mode: chunks from the caller, one in flight, until the last is acked.
 *
 * Receiving keeps no per-batch state: duplicates and gaps are judged against
 * the region's applied vector, which the caller owns and persists.  Only a
 * snapshot being received is tracked (run id, next chunk, the minimum vector
 * so far), and only once the caller confirms the commit (repl_session_ack).
 *
 * Memory: the session, its in-flight buffers and its scratch delta come from
 * sp_malloc and are freed by repl_session_free.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "sp_alloc.h"

typedef struct inflight {
  uint64_t batch_id;
  uint64_t sent_at;
  sp_buf bytes;    /* the encoded message, re-sent as is */
  crdt_vclock hi;  /* batches: the send cursor after this batch */
  int snapshot;    /* a snapshot chunk */
  int last;        /* the snapshot's last chunk */
  uint8_t next_cursor[REPL_MAX_CURSOR];
  size_t next_len;
} inflight;

struct repl_session {
  char cluster_id[REPL_MAX_ID + 1];
  char region_name[REPL_MAX_ID + 1];
  char peer_name[REPL_MAX_ID + 1];
  crdt_region region_id, peer_id;
  uint32_t max_changes, window;
  size_t max_bytes;
  uint64_t resend_ms, sync_ms;
  crdt_clock clock; /* only its skew bound is used (crdt_clock_check) */

  repl_state state;
  uint32_t version;
  char reason[REPL_MAX_REASON + 1];
  repl_stats stats;

  /* sending */
  crdt_vclock acked, sent, local;
  uint64_t relay;     /* bit per origin relayed to the peer */
  int drained;        /* the source had no row past `sent`: wait for notify */
  uint64_t next_batch_id;
  uint64_t last_send_ms;
  uint64_t retry_at;  /* no new batch before (after a SKEW_REJECT) */
  inflight fl[REPL_MAX_WINDOW]; /* oldest first */
  size_t n_fl;
  crdt_delta *scratch; /* the batch being built */

  /* sending a snapshot */
  int snap;
  uint64_t snap_id;
  uint32_t snap_seq;
  uint8_t snap_cursor[REPL_MAX_CURSOR];
  size_t snap_cursor_len;

  /* receiving */
  int want_resync;
  struct {
    uint64_t id; /* 0: none */
    uint32_t next_seq;
    int done;
    crdt_vclock min;
    uint8_t cursor[REPL_MAX_CURSOR];
    size_t cursor_len;
  } rsnap;
};

static void set_reason(repl_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_reason(repl_session *s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->reason, sizeof s->reason, fmt, ap);
  va_end(ap);
}

static void fail(repl_session *s) {
  s->state = REPL_STATE_FAILED;
  s->n_fl = 0;
}

static void vec_max(crdt_vclock *dst, const crdt_vclock *src) {
  crdt_vclock_merge(dst, src);
}

static int vec_le(const crdt_vclock *a, const crdt_vclock *b) {
  for (unsigned r = 0; r < CRDT_MAX_REGIONS; r++)
    if (a->seq[r] > b->seq[r])
      return 0;
  return 1;
}

static uint64_t origins_mask(const repl_session *s) {
  return s->relay | (uint64_t)1 << s->region_id;
}

/* ---- lifecycle -------------------------------------------------------------- */

static int copy_id(char *dst, const char *src) {
  if (src == NULL || src[0] == '\0' || strlen(src) > REPL_MAX_ID)
    return SP_ERR_INVAL;
  strcpy(dst, src);
  return 0;
}

int repl_session_new(const repl_config *cfg, repl_session **out) {
  repl_session *s;
  int rc;
  if (cfg->region_id >= CRDT_MAX_REGIONS || cfg->peer_id >= CRDT_MAX_REGIONS ||
      cfg->region_id == cfg->peer_id || cfg->window > REPL_MAX_WINDOW ||
      cfg->max_changes > CRDT_MAX_DELTA_CHANGES ||
      cfg->max_bytes > REPL_MAX_MESSAGE - (64u << 10) ||
      (cfg->max_bytes && cfg->max_bytes < 1024))
    return SP_ERR_INVAL;
  s = sp_calloc(1, sizeof *s);
  if (s == NULL)
    return SP_ERR_NOMEM;
  if ((rc = copy_id(s->cluster_id, cfg->cluster_id)) ||
      (rc = copy_id(s->region_name, cfg->region_name)) ||
      (rc = copy_id(s->peer_name, cfg->peer_name)))
    goto fail_session;
  if ((rc = crdt_delta_new(repl_crdt_allocator(), &s->scratch)))
    goto fail_session;
  s->region_id = cfg->region_id;
  s->peer_id = cfg->peer_id;
  s->max_changes = cfg->max_changes ? cfg->max_changes : REPL_DEFAULT_MAX_CHANGES;
  s->max_bytes = cfg->max_bytes ? cfg->max_bytes : REPL_DEFAULT_MAX_BYTES;
  s->window = cfg->window ? cfg->window : REPL_DEFAULT_WINDOW;
  s->resend_ms = cfg->resend_ms ? cfg->resend_ms : REPL_DEFAULT_RESEND_MS;
  s->sync_ms = cfg->sync_interval_ms ? cfg->sync_interval_ms : REPL_DEFAULT_SYNC_INTERVAL_MS;
  crdt_clock_init(&s->clock, cfg->max_skew_ms ? cfg->max_skew_ms : CRDT_DEFAULT_MAX_SKEW_MS, 0);
  crdt_vclock_init(&s->acked);
  crdt_vclock_init(&s->sent);
  crdt_vclock_init(&s->local);
  crdt_vclock_init(&s->rsnap.min);
  s->next_batch_id = 1;
  for (size_t i = 0; i < REPL_MAX_WINDOW; i++)
    sp_buf_init(&s->fl[i].bytes, REPL_MAX_MESSAGE);
  *out = s;
  return 0;

fail_session:
  sp_free(s);
  return rc;
}

void repl_session_free(repl_session *s) {
  if (s == NULL)
    return;
  for (size_t i = 0; i < REPL_MAX_WINDOW; i++)
    sp_buf_release(&s->fl[i].bytes);
  crdt_delta_free(s->scratch);
  sp_free(s);
}

void repl_session_reset(repl_session *s) {
  s->state = REPL_STATE_NEW;
  s->version = 0;
  s->reason[0] = '\0';
  s->n_fl = 0;
  s->snap = 0;
  s->retry_at = 0;
  s->drained = 0;
  s->sent = s->acked;
}

repl_state repl_session_state(const repl_session *s) {
  return s->state;
}
uint32_t repl_session_version(const repl_session *s) {
  return s->state == REPL_STATE_ESTABLISHED ? s->version : 0;
}
const char *repl_session_reason(const repl_session *s) {
  return s->reason;
}
void repl_session_stats(const repl_session *s, repl_stats *out) {
  *out = s->stats;
}
const crdt_vclock *repl_session_acked(const repl_session *s) {
  return &s->acked;
}
size_t repl_session_in_flight(const repl_session *s) {
  return s->n_fl;
}
int repl_session_in_snapshot(const repl_session *s) {
  return s->snap;
}

/* ---- handshake -------------------------------------------------------------- */

int repl_session_hello(repl_session *s, const crdt_vclock *applied, sp_buf *out) {
  repl_msg m;
  int rc;
  if (s->state != REPL_STATE_NEW)
    return SP_ERR_BUSY;
  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_HANDSHAKE;
  m.version = REPL_PROTOCOL_VERSION;
  strcpy(m.u.hs.cluster_id, s->cluster_id);
  strcpy(m.u.hs.region_name, s->region_name);
  m.u.hs.region_id = s->region_id;
  m.u.hs.protocol_version = REPL_PROTOCOL_VERSION;
  m.u.hs.min_protocol_version = REPL_PROTOCOL_MIN;
  m.u.hs.vector = *applied;
  if ((rc = repl_msg_encode(&m, out)))
    return rc;
  vec_max(&s->local, applied);
  s->state = REPL_STATE_HELLO_SENT;
  return 0;
}

/* The peer's applied vector replaces what we thought it had: after a restore
 * from backup it may have gone back, and we must send from there. */
static void establish(repl_session *s, uint32_t version, const crdt_vclock *peer_vector) {
  s->version = version;
  s->acked = *peer_vector;
  s->sent = *peer_vector;
  s->n_fl = 0;
  s->drained = 0;
  s->reason[0] = '\0';
  s->state = REPL_STATE_ESTABLISHED;
}

int repl_session_on_handshake(repl_session *s, const repl_msg *m, const crdt_vclock *applied,
                              sp_buf *reply) {
  const repl_handshake *h = &m->u.hs;
  repl_msg r;
  uint32_t version = 0;
  int rc;
  if (m->type != REPL_MSG_HANDSHAKE)
    return SP_ERR_INVAL;
  if (s->state != REPL_STATE_NEW)
    return SP_ERR_BUSY;
  memset(&r, 0, sizeof r);
  r.type = REPL_MSG_HANDSHAKE_REPLY;
  r.u.reply.region_id = s->region_id;
  char *why = r.u.reply.reason;
  size_t whylen = sizeof r.u.reply.reason;
  uint32_t hi = h->protocol_version < REPL_PROTOCOL_VERSION ? h->protocol_version
                                                            : REPL_PROTOCOL_VERSION;
  uint32_t lo = h->min_protocol_version > REPL_PROTOCOL_MIN ? h->min_protocol_version
                                                            : REPL_PROTOCOL_MIN;
  if (strcmp(h->cluster_id, s->cluster_id) != 0)
    snprintf(why, whylen, "cluster '%s' is not ours ('%s')", h->cluster_id, s->cluster_id);
  else if (h->region_id != s->peer_id || strcmp(h->region_name, s->peer_name) != 0)
    snprintf(why, whylen, "region '%s' (id %u) is not the expected peer '%s' (id %u)",
             h->region_name, (unsigned)h->region_id, s->peer_name, (unsigned)s->peer_id);
  else if (h->min_protocol_version > h->protocol_version || hi < lo)
    snprintf(why, whylen,
             "no common protocol version: peer speaks %" PRIu32 "..%" PRIu32
             ", we speak %d..%d",
             h->min_protocol_version, h->protocol_version, REPL_PROTOCOL_MIN,
             REPL_PROTOCOL_VERSION);
  else
    version = hi;
  r.u.reply.accepted = version != 0;
  r.u.reply.protocol_version = version;
  r.version = version ? version : REPL_PROTOCOL_VERSION;
  if (version)
    r.u.reply.vector = *applied;
  if ((rc = repl_msg_encode(&r, reply)))
    return rc;
  if (!version) {
    set_reason(s, "%s", why);
    fail(s);
    return SP_ERR_PROTO;
  }
  vec_max(&s->local, applied);
  establish(s, version, &h->vector);
  return 0;
}

int repl_session_on_handshake_reply(repl_session *s, const repl_msg *m) {
  const repl_handshake_reply *h = &m->u.reply;
  if (m->type != REPL_MSG_HANDSHAKE_REPLY)
    return SP_ERR_INVAL;
  if (s->state != REPL_STATE_HELLO_SENT)
    return SP_ERR_BUSY;
  if (!h->accepted)
    set_reason(s, "refused by peer: %s", h->reason);
  else if (h->region_id != s->peer_id)
    set_reason(s, "reply from region id %u, expected %u", (unsigned)h->region_id,
               (unsigned)s->peer_id);
  else if (h->protocol_version < REPL_PROTOCOL_MIN || h->protocol_version > REPL_PROTOCOL_VERSION)
    set_reason(s, "peer chose protocol version %" PRIu32 ", we speak %d..%d",
               h->protocol_version, REPL_PROTOCOL_MIN, REPL_PROTOCOL_VERSION);
  else {
    establish(s, h->protocol_version, &h->vector);
    return 0;
  }
  fail(s);
  return SP_ERR_PROTO;
}

/* ---- sending ---------------------------------------------------------------- */

void repl_session_notify(repl_session *s, const crdt_vclock *applied) {
  if (!vec_le(applied, &s->local))
    s->drained = 0;
  vec_max(&s->local, applied);
}

void repl_session_floor_rose(repl_session *s) { s->drained = 0; }

int repl_session_set_relay(repl_session *s, crdt_region origin, int on) {
  if (origin >= CRDT_MAX_REGIONS)
    return SP_ERR_INVAL;
  uint64_t bit = (uint64_t)1 << origin;
  s->relay = on ? s->relay | bit : s->relay & ~bit;
  s->drained = 0;
  return 0;
}

static int pending(const repl_session *s) {
  if (s->drained)
    return 0;
  uint64_t mask = origins_mask(s);
  for (unsigned r = 0; r < CRDT_MAX_REGIONS; r++)
    if ((mask >> r & 1u) && s->local.seq[r] > s->sent.seq[r])
      return 1;
  return 0;
}

static int timed_out(const repl_session *s, size_t i, uint64_t now) {
  return now >= s->fl[i].sent_at + s->resend_ms;
}

repl_want repl_session_want_send(const repl_session *s, uint64_t now_ms) {
  if (s->state != REPL_STATE_ESTABLISHED)
    return REPL_WANT_NONE;
  for (size_t i = 0; i < s->n_fl; i++)
    if (timed_out(s, i, now_ms))
      return REPL_WANT_RESEND;
  if (now_ms < s->retry_at)
    return REPL_WANT_NONE;
  if (s->snap)
    return s->n_fl == 0 ? REPL_WANT_SNAPSHOT : REPL_WANT_NONE;
  if (!pending(s) || s->n_fl >= s->window)
    return REPL_WANT_NONE;
  /* Nagle-like: at once when the peer is idle, else at the next tick. */
  if (s->n_fl == 0 || now_ms >= s->last_send_ms + s->sync_ms)
    return REPL_WANT_BATCH;
  return REPL_WANT_NONE;
}

static uint64_t umax(uint64_t a, uint64_t b) {
  return a > b ? a : b;
}

uint64_t repl_session_next_wakeup(const repl_session *s, uint64_t now_ms) {
  uint64_t t = UINT64_MAX;
  if (s->state != REPL_STATE_ESTABLISHED)
    return t;
  for (size_t i = 0; i < s->n_fl; i++)
    if (s->fl[i].sent_at + s->resend_ms < t)
      t = s->fl[i].sent_at + s->resend_ms;
  uint64_t next = UINT64_MAX;
  if (s->snap) {
    if (s->n_fl == 0)
      next = umax(now_ms, s->retry_at);
  } else if (pending(s) && s->n_fl < s->window) {
    next = umax(s->retry_at, s->n_fl == 0 ? now_ms : s->last_send_ms + s->sync_ms);
  }
  return next < t ? next : t;
}

static void drop_inflight(repl_session *s, size_t i) {
  inflight tmp = s->fl[i]; /* keep its buffer's memory for reuse */
  memmove(&s->fl[i], &s->fl[i + 1], (s->n_fl - i - 1) * sizeof s->fl[0]);
  s->fl[s->n_fl - 1] = tmp;
  s->n_fl--;
}

/* Batches whose every row the peer has applied need no ack of their own. */
static void drop_covered(repl_session *s) {
  for (size_t i = 0; i < s->n_fl;) {
    if (!s->fl[i].snapshot && vec_le(&s->fl[i].hi, &s->acked))
      drop_inflight(s, i);
    else
      i++;
  }
  vec_max(&s->sent, &s->acked);
}

static void rewind_to_acked(repl_session *s) {
  s->n_fl = 0;
  s->sent = s->acked;
  s->drained = 0;
}

static void enter_snapshot(repl_session *s) {
  if (s->snap)
    return;
  s->snap = 1;
  s->snap_id = s->next_batch_id++;
  s->snap_seq = 0;
  s->snap_cursor_len = 0;
  s->n_fl = 0;
  s->stats.snapshots_started++;
}

static int copy_out(sp_buf *out, const sp_buf *msg) {
  sp_buf_reset(out);
  return sp_buf_add(out, msg->base, msg->len);
}

static int resend(repl_session *s, uint64_t now, sp_buf *out) {
  for (size_t i = 0; i < s->n_fl; i++) {
    if (!timed_out(s, i, now))
      continue;
    int rc = copy_out(out, &s->fl[i].bytes);
    if (rc)
      return rc;
    s->fl[i].sent_at = now;
    s->stats.batches_resent++;
    s->stats.bytes_sent += out->len;
    return 0;
  }
  return SP_ERR_AGAIN;
}

/* Fills the scratch delta with rows after `sent`; *cur is the cursor after
 * them.  0, SP_ERR_RANGE (the source cannot serve the peer), SP_ERR_INVAL
 * (a malformed row), or the source's error. */
static int collect(repl_session *s, const repl_source *src, size_t header, crdt_vclock *cur) {
  uint64_t mask = origins_mask(s);
  size_t size = header, count = 0;
  int rc;
  crdt_delta_clear(s->scratch);
  *cur = s->sent;
  if ((rc = src->rewind(src->arg, &s->sent, mask)))
    return rc;
  for (;;) {
    crdt_change c;
    if ((rc = src->next(src->arg, &c)) < 0)
      return rc;
    if (rc == 0)
      return 0;
    if (c.origin >= CRDT_MAX_REGIONS)
      return SP_ERR_INVAL;
    if (!(mask >> c.origin & 1u) || c.seq <= cur->seq[c.origin])
      continue;
    if (c.seq != cur->seq[c.origin] + 1)
      return SP_ERR_RANGE; /* a hole: trimmed below what the peer needs */
    size_t csz = repl_msg_change_size(&c);
    if (count >= s->max_changes || (count > 0 && size + csz > s->max_bytes))
      return 0;
    if ((rc = crdt_delta_add(s->scratch, &c)))
      return rc == SP_ERR_NOMEM ? rc : SP_ERR_INVAL;
    cur->seq[c.origin] = c.seq;
    size += csz;
    count++;
  }
}

int repl_session_send(repl_session *s, const repl_source *src, uint64_t now_ms, sp_buf *out) {
  repl_msg m;
  size_t header;
  crdt_vclock cur;
  int rc;
  if (s->state != REPL_STATE_ESTABLISHED)
    return SP_ERR_AGAIN;
  if ((rc = resend(s, now_ms, out)) != SP_ERR_AGAIN)
    return rc;
  if (now_ms < s->retry_at || s->snap || s->n_fl >= s->window)
    return SP_ERR_AGAIN;

  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_BATCH;
  m.version = s->version;
  m.u.batch.batch_id = s->next_batch_id;
  m.u.batch.sender_region = s->region_id;
  m.u.batch.changes = s->scratch;
  m.u.batch.sender_vector = s->local;
  m.u.batch.sender_wall_ms = now_ms;
  crdt_delta_clear(s->scratch);
  if ((rc = repl_msg_packed_size(&m, &header)))
    return rc;
  /* The batch's length prefix grows from 1 to at most 4 bytes. */
  header += 3;

  rc = collect(s, src, header, &cur);
  if (rc == SP_ERR_RANGE) {
    crdt_delta_clear(s->scratch);
    enter_snapshot(s);
    return SP_ERR_AGAIN;
  }
  if (rc)
    goto out;
  size_t n = crdt_delta_count(s->scratch);
  if (n == 0) {
    s->drained = 1;
    rc = SP_ERR_AGAIN;
    goto out;
  }
  inflight *f = &s->fl[s->n_fl];
  if ((rc = repl_msg_encode(&m, &f->bytes)) || (rc = copy_out(out, &f->bytes)))
    goto out;
  f->batch_id = m.u.batch.batch_id;
  f->sent_at = now_ms;
  f->hi = cur;
  f->snapshot = 0;
  f->last = 0;
  s->n_fl++;
  s->next_batch_id++;
  s->sent = cur;
  s->last_send_ms = now_ms;
  s->stats.batches_sent++;
  s->stats.changes_sent += n;
  s->stats.bytes_sent += out->len;
out:
  crdt_delta_clear(s->scratch);
  return rc;
}

static int find_inflight(const repl_session *s, uint64_t batch_id) {
  for (size_t i = 0; i < s->n_fl; i++)
    if (s->fl[i].batch_id == batch_id)
      return (int)i;
  return -1;
}

static int on_chunk_ack(repl_session *s, size_t i, const repl_ack *a, uint64_t now) {
  inflight *f = &s->fl[i];
  switch (a->status) {
  case REPL_OK:
    memcpy(s->snap_cursor, f->next_cursor, f->next_len);
    s->snap_cursor_len = f->next_len;
    s->snap_seq++;
    if (f->last) {
      s->snap = 0;
      s->n_fl = 0;
      rewind_to_acked(s); /* acked now includes the snapshot's vector */
    } else {
      drop_inflight(s, i);
    }
    return 0;
  case REPL_RESYNC_REQUIRED: /* the peer lost track: start over */
    s->snap = 0;
    enter_snapshot(s);
    return 0;
  case REPL_SKEW_REJECT:
    s->stats.skew_rejected_by_peer++;
    f->sent_at = now; /* the timer re-sends it, by when time may have caught up */
    s->retry_at = now + s->resend_ms;
    return 0;
  default:
    set_reason(s, "peer answered snapshot chunk %" PRIu64 " with %s", a->batch_id,
               repl_status_name(a->status));
    fail(s);
    return SP_ERR_PROTO;
  }
}

int repl_session_on_ack(repl_session *s, const repl_msg *m, uint64_t now_ms) {
  const repl_ack *a = &m->u.ack;
  if (m->type != REPL_MSG_ACK)
    return SP_ERR_INVAL;
  if (s->state != REPL_STATE_ESTABLISHED)
    return SP_ERR_AGAIN;
  s->stats.acks_received++;
  if (a->batch_id >= s->next_batch_id) {
    set_reason(s, "ack for batch %" PRIu64 " that was never sent", a->batch_id);
    fail(s);
    return SP_ERR_PROTO;
  }
  if (a->status == REPL_MALFORMED || a->status == REPL_VERSION) {
    /* Sending the same rows again would be refused again: a bug to log and
     * a reconnect, not a retry loop. */
    set_reason(s, "peer refused batch %" PRIu64 " (%s): %s", a->batch_id,
               repl_status_name(a->status), a->reason);
    fail(s);
    return SP_ERR_PROTO;
  }
  vec_max(&s->acked, &a->applied);
  int i = find_inflight(s, a->batch_id);
  if (i >= 0) {
    int64_t mid = (int64_t)((s->fl[i].sent_at + now_ms) / 2);
    s->stats.peer_clock_offset_ms = (int64_t)a->wall_ms - mid;
    if (s->fl[i].snapshot)
      return on_chunk_ack(s, (size_t)i, a, now_ms);
    switch (a->status) {
    case REPL_OK:
      drop_inflight(s, (size_t)i);
      break;
    case REPL_GAP:
      s->stats.gaps_received++;
      rewind_to_acked(s);
      break;
    case REPL_SKEW_REJECT:
      s->stats.skew_rejected_by_peer++;
      rewind_to_acked(s);
      s->retry_at = now_ms + s->resend_ms;
      break;
    case REPL_RESYNC_REQUIRED:
      enter_snapshot(s);
      break;
    default:
      break;
    }
  }
  /* An ack for a batch no longer in flight (answered before, or dropped by
   * a rewind) only teaches us the peer's vector. */
  if (!s->snap)
    drop_covered(s);
  return 0;
}

/* ---- snapshots, sending side ------------------------------------------------ */

int repl_session_on_snapshot_request(repl_session *s, const repl_msg *m) {
  const repl_snapshot_request *r = &m->u.req;
  if (m->type != REPL_MSG_SNAPSHOT_REQUEST)
    return SP_ERR_INVAL;
  if (s->state != REPL_STATE_ESTABLISHED)
    return SP_ERR_AGAIN;
  s->snap = 0;
  enter_snapshot(s);
  if (r->snapshot_id) { /* resume where the peer's committed chunks end */
    s->snap_id = r->snapshot_id;
    s->snap_seq = r->chunk_seq;
    memcpy(s->snap_cursor, r->cursor, r->cursor_len);
    s->snap_cursor_len = r->cursor_len;
  }
  return 0;
}

int repl_session_snapshot_cursor(const repl_session *s, const uint8_t **cursor, size_t *len) {
  if (s->state != REPL_STATE_ESTABLISHED || !s->snap || s->n_fl)
    return SP_ERR_AGAIN;
  *cursor = s->snap_cursor;
  *len = s->snap_cursor_len;
  return 0;
}

int repl_session_snapshot_chunk(repl_session *s, const crdt_delta *changes,
                                const uint8_t *next_cursor, size_t next_len, int last,
                                const crdt_vclock *vector, uint64_t now_ms, sp_buf *out) {
  repl_msg m;
  int rc;
  if (s->state != REPL_STATE_ESTABLISHED || !s->snap || s->n_fl)
    return SP_ERR_AGAIN;
  if (next_len > REPL_MAX_CURSOR || changes == NULL)
    return SP_ERR_INVAL;
  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_SNAPSHOT_CHUNK;
  m.version = s->version;
  repl_snapshot_chunk *c = &m.u.chunk;
  c->batch_id = s->next_batch_id;
  c->sender_region = s->region_id;
  c->snapshot_id = s->snap_id;
  c->chunk_seq = s->snap_seq;
  memcpy(c->cursor, s->snap_cursor, s->snap_cursor_len);
  c->cursor_len = s->snap_cursor_len;
  if (next_len)
    memcpy(c->next_cursor, next_cursor, next_len);
  c->next_cursor_len = next_len;
  c->changes = (crdt_delta *)(uintptr_t)changes;
  c->last = last ? 1 : 0;
  c->vector = *vector;
  inflight *f = &s->fl[0];
  if ((rc = repl_msg_encode(&m, &f->bytes)) || (rc = copy_out(out, &f->bytes)))
    return rc;
  f->batch_id = c->batch_id;
  f->sent_at = now_ms;
  f->snapshot = 1;
  f->last = c->last;
  memcpy(f->next_cursor, c->next_cursor, next_len);
  f->next_len = next_len;
  s->n_fl = 1;
  s->next_batch_id++;
  s->last_send_ms = now_ms;
  s->stats.snapshot_chunks_sent++;
  s->stats.bytes_sent += out->len;
  return 0;
}

/* ---- receiving -------------------------------------------------------------- */

void repl_apply_release(repl_apply *r) {
  sp_free(r->changes);
  r->changes = NULL;
  r->count = 0;
}

static void apply_init(repl_apply *out, uint64_t batch_id, const crdt_vclock *applied) {
  memset(out, 0, sizeof *out);
  out->batch_id = batch_id;
  out->status = REPL_OK;
  out->applied = *applied;
}

/* Checks what every message from the peer must satisfy; 1 when refused
 * (status and reason set in out). */
static int refuse_common(repl_session *s, const repl_msg *m, crdt_region sender,
                         repl_apply *out) {
  if (m->version != s->version) {
    out->status = REPL_VERSION;
    snprintf(out->reason, sizeof out->reason,
             "message in protocol version %" PRIu32 ", the session speaks %" PRIu32,
             m->version, s->version);
    return 1;
  }
  if (sender != s->peer_id) {
    out->status = REPL_MALFORMED;
    snprintf(out->reason, sizeof out->reason,
             "sent as region %u on the session of region '%s' (%u)", (unsigned)sender,
             s->peer_name, (unsigned)s->peer_id);
    s->stats.malformed++;
    return 1;
  }
  return 0;
}

/* The whole message is refused when any stamp is too far ahead: applying
 * part of it would let a runaway clock in through the rest. */
static int refuse_skew(repl_session *s, const crdt_delta *d, uint64_t wall_ms, repl_apply *out) {
  size_t n = crdt_delta_count(d);
  for (size_t i = 0; i < n; i++) {
    const crdt_change *c = crdt_delta_get(d, i);
    if (crdt_clock_check(&s->clock, c->stamp.hlc, wall_ms) == 0)
      continue;
    out->status = REPL_SKEW_REJECT;
    snprintf(out->reason, sizeof out->reason,
             "change %u/%" PRIu64 " stamped %" PRIu64 " ms ahead of local time (bound %" PRIu64
             " ms)",
             (unsigned)c->origin, c->seq, CRDT_HLC_MS(c->stamp.hlc) - wall_ms,
             s->clock.max_skew_ms);
    s->stats.skew_rejects++;
    return 1;
  }
  return 0;
}

static int alloc_list(repl_apply *out, size_t n) {
  if (n == 0)
    return 0;
  out->changes = sp_malloc(n * sizeof *out->changes);
  return out->changes ? 0 : SP_ERR_NOMEM;
}

int repl_session_on_batch(repl_session *s, const repl_msg *m, const crdt_vclock *applied,
                          uint64_t wall_ms, repl_apply *out) {
  const repl_batch *b = &m->u.batch;
  if (m->type != REPL_MSG_BATCH)
    return SP_ERR_INVAL;
  apply_init(out, b->batch_id, applied);
  if (s->state != REPL_STATE_ESTABLISHED)
    return SP_ERR_AGAIN;
  if (refuse_common(s, m, b->sender_region, out))
    goto counted;
  /* The peer's applied vector is as good as an ack for our sending side. */
  vec_max(&s->acked, &b->sender_vector);
  if (!s->snap)
    drop_covered(s);
  if (s->want_resync) {
    out->status = REPL_RESYNC_REQUIRED;
    snprintf(out->reason, sizeof out->reason, "resync required: send a full snapshot");
    goto counted;
  }
  if (refuse_skew(s, b->changes, wall_ms, out))
    goto counted;

  size_t n = crdt_delta_count(b->changes);
  if (alloc_list(out, n))
    return SP_ERR_NOMEM;
  uint64_t gapped = 0;
  for (size_t i = 0; i < n; i++) {
    const crdt_change *c = crdt_delta_get(b->changes, i);
    uint64_t *have = &out->applied.seq[c->origin];
    if (gapped >> c->origin & 1u)
      continue;
    if (c->seq <= *have) {
      s->stats.duplicates++;
    } else if (c->seq == *have + 1) {
      out->changes[out->count++] = c;
      *have = c->seq;
    } else {
      /* Go-back-N: nothing after a gap is applied for that origin. */
      if (out->status == REPL_OK)
        snprintf(out->reason, sizeof out->reason,
                 "gap: origin %u needs seq %" PRIu64 ", got %" PRIu64, (unsigned)c->origin,
                 *have + 1, c->seq);
      out->status = REPL_GAP;
      gapped |= (uint64_t)1 << c->origin;
      s->stats.gaps++;
    }
  }
  s->stats.changes_to_apply += out->count;
counted:
  s->stats.batches_received++;
  return 0;
}

int repl_session_on_snapshot_chunk(repl_session *s, const repl_msg *m, const crdt_vclock *applied,
                                   uint64_t wall_ms, repl_apply *out) {
  const repl_snapshot_chunk *c = &m->u.chunk;
  if (m->type != REPL_MSG_SNAPSHOT_CHUNK)
    return SP_ERR_INVAL;
  apply_init(out, c->batch_id, applied);
  if (s->state != REPL_STATE_ESTABLISHED)
    return SP_ERR_AGAIN;
  s->stats.snapshot_chunks_received++;
  if (refuse_common(s, m, c->sender_region, out) || refuse_skew(s, c->changes, wall_ms, out))
    return 0;
  /* A chunk continues the run only where the committed chunks end (same
   * run, next number, same cursor), so no key range is ever skipped, even
   * if a restarted sender reuses a snapshot id. */
  crdt_vclock min = c->vector;
  if (c->snapshot_id == s->rsnap.id && (s->rsnap.done || c->chunk_seq < s->rsnap.next_seq))
    return 0; /* committed before: ack again */
  if (c->snapshot_id == s->rsnap.id && c->chunk_seq == s->rsnap.next_seq &&
      c->cursor_len == s->rsnap.cursor_len &&
      memcmp(c->cursor, s->rsnap.cursor, c->cursor_len) == 0)
    crdt_vclock_min(&min, &s->rsnap.min);
  else if (c->chunk_seq != 0 || c->cursor_len != 0)
    goto restart;
  size_t n = crdt_delta_count(c->changes);
  if (alloc_list(out, n))
    return SP_ERR_NOMEM;
  for (size_t i = 0; i < n; i++)
    out->changes[out->count++] = crdt_delta_get(c->changes, i);
  out->snapshot = 1;
  out->last = c->last;
  out->snapshot_id = c->snapshot_id;
  out->chunk_seq = c->chunk_seq;
  out->snap_min = min;
  out->snap_next = c->next_cursor;
  out->snap_next_len = c->next_cursor_len;
  /* Every change the vector covers is in the state shipped by now, so the
   * vector can be adopted once the last chunk is in. */
  if (c->last)
    vec_max(&out->applied, &min);
  s->stats.changes_to_apply += out->count;
  return 0;

restart:
  out->status = REPL_RESYNC_REQUIRED;
  snprintf(out->reason, sizeof out->reason,
           "snapshot %" PRIu64 " chunk %" PRIu32 " does not follow what we have; start over",
           c->snapshot_id, c->chunk_seq);
  return 0;
}

int repl_session_ack(repl_session *s, const repl_apply *r, const crdt_vclock *applied_now,
                     uint64_t wall_ms, sp_buf *out) {
  repl_msg m;
  int rc;
  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_ACK;
  m.version = s->version ? s->version : REPL_PROTOCOL_VERSION;
  m.u.ack.batch_id = r->batch_id;
  m.u.ack.status = r->status;
  m.u.ack.applied = applied_now ? *applied_now : r->applied;
  m.u.ack.wall_ms = wall_ms;
  memcpy(m.u.ack.reason, r->reason, sizeof m.u.ack.reason);
  if ((rc = repl_msg_encode(&m, out)))
    return rc;
  if (r->snapshot && r->status == REPL_OK) {
    s->rsnap.id = r->snapshot_id;
    s->rsnap.next_seq = r->chunk_seq + 1;
    s->rsnap.min = r->snap_min;
    s->rsnap.done = r->last;
    memcpy(s->rsnap.cursor, r->snap_next, r->snap_next_len);
    s->rsnap.cursor_len = r->snap_next_len;
    s->want_resync = 0;
  }
  return 0;
}

void repl_session_require_resync(repl_session *s) {
  s->want_resync = 1;
}

int repl_session_request_snapshot(repl_session *s, sp_buf *out) {
  repl_msg m;
  if (s->state != REPL_STATE_ESTABLISHED)
    return SP_ERR_AGAIN;
  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_SNAPSHOT_REQUEST;
  m.version = s->version;
  if (s->rsnap.id && !s->rsnap.done) {
    m.u.req.snapshot_id = s->rsnap.id;
    m.u.req.chunk_seq = s->rsnap.next_seq;
    memcpy(m.u.req.cursor, s->rsnap.cursor, s->rsnap.cursor_len);
    m.u.req.cursor_len = s->rsnap.cursor_len;
  }
  return repl_msg_encode(&m, out);
}
