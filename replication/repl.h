/* repl: the replication protocol engine, without I/O.
 *
 * Two halves.  repl_msg_* convert between wire bytes (proto/replication.proto,
 * one Envelope per body) and plain C structs holding crdt/ types.  A
 * repl_session is the state of the delta-sync protocol with one peer, in both
 * directions: what we send it (windowed batches of change-log rows, resends,
 * go-back-N on gaps, snapshots) and what we receive from it (validation, skew
 * refusal, which changes to apply, the ack).  The session never reads a
 * clock, a socket or the database: the caller passes wall time in
 * milliseconds, feeds decoded messages in and takes encoded messages out, and
 * applies changes to PostgreSQL itself.  The protocol is written down in
 * replication/DESIGN.md.
 *
 * Ownership: a repl_session owns its memory (sp_malloc); strings in
 * repl_config are copied.  A decoded repl_msg owns its change list until
 * repl_msg_release.  A repl_apply borrows the changes of the repl_msg it was
 * computed from: release the apply before the message.  Output goes into a
 * caller-owned sp_buf, which is reset first; its max bounds the message.
 * Functions return 0 or a negative sp_err code (lib/sp_err.h); on an error
 * the session is unchanged unless stated.
 */
#ifndef REPL_H
#define REPL_H

#include <stddef.h>
#include <stdint.h>

#include "crdt.h"
#include "sp_buf.h"
#include "sp_err.h"

#define REPL_PROTOCOL_VERSION 1 /* the highest version this code speaks */
#define REPL_PROTOCOL_MIN 1     /* the lowest it accepts */

#define REPL_MAX_MESSAGE (8u << 20) /* bodies above this are refused: SP_ERR_TOOBIG */
#define REPL_MAX_ID 64              /* cluster id and region name, bytes */
#define REPL_MAX_REASON 255         /* longer reasons are cut short on decode */
#define REPL_MAX_CURSOR 1024        /* snapshot cursors, bytes */
#define REPL_MAX_WINDOW 16

#define REPL_DEFAULT_MAX_CHANGES 5000
#define REPL_DEFAULT_MAX_BYTES (1u << 20)
#define REPL_DEFAULT_WINDOW 2
#define REPL_DEFAULT_RESEND_MS 1000
#define REPL_DEFAULT_SYNC_INTERVAL_MS 100

/* ---- messages ------------------------------------------------------------- */

typedef enum repl_msg_type {
  REPL_MSG_HANDSHAKE = 1,
  REPL_MSG_HANDSHAKE_REPLY = 2,
  REPL_MSG_BATCH = 3,
  REPL_MSG_ACK = 4,
  REPL_MSG_SNAPSHOT_REQUEST = 5,
  REPL_MSG_SNAPSHOT_CHUNK = 6
} repl_msg_type;

/* Ack statuses (the wire enum AckStatus, mapped by repl_msg; never cast). */
typedef enum repl_status {
  REPL_OK = 1,              /* everything applied or already there */
  REPL_GAP = 2,             /* applied up to a gap: resend from the vector */
  REPL_SKEW_REJECT = 3,     /* a stamp too far ahead: nothing applied */
  REPL_RESYNC_REQUIRED = 4, /* send a full snapshot */
  REPL_MALFORMED = 5,       /* broke the protocol: nothing applied */
  REPL_VERSION = 6          /* wrong protocol version: nothing applied */
} repl_status;

const char *repl_status_name(repl_status st); /* static string, "?" if unknown */

typedef struct repl_handshake {
  char cluster_id[REPL_MAX_ID + 1];
  char region_name[REPL_MAX_ID + 1];
  crdt_region region_id;
  uint32_t protocol_version;     /* highest spoken */
  uint32_t min_protocol_version; /* lowest accepted */
  crdt_vclock vector;            /* sender's applied vector */
} repl_handshake;

typedef struct repl_handshake_reply {
  int accepted;
  char reason[REPL_MAX_REASON + 1];
  uint32_t protocol_version; /* negotiated (0 when refused) */
  crdt_region region_id;     /* replier's region */
  crdt_vclock vector;        /* replier's applied vector */
} repl_handshake_reply;

typedef struct repl_batch {
  uint64_t batch_id;
  crdt_region sender_region;
  crdt_delta *changes; /* owned by the message; never NULL once decoded */
  crdt_vclock sender_vector;
  uint64_t sender_wall_ms;
} repl_batch;

typedef struct repl_ack {
  uint64_t batch_id;
  repl_status status;
  crdt_vclock applied;
  uint64_t wall_ms;
  char reason[REPL_MAX_REASON + 1];
} repl_ack;

typedef struct repl_snapshot_request {
  uint64_t snapshot_id; /* 0: start a new snapshot */
  uint32_t chunk_seq;
  uint8_t cursor[REPL_MAX_CURSOR];
  size_t cursor_len;
} repl_snapshot_request;

typedef struct repl_snapshot_chunk {
  uint64_t batch_id;
  crdt_region sender_region;
  uint64_t snapshot_id;
  uint32_t chunk_seq;
  uint8_t cursor[REPL_MAX_CURSOR];
  size_t cursor_len;
  uint8_t next_cursor[REPL_MAX_CURSOR];
  size_t next_cursor_len;
  crdt_delta *changes; /* owned by the message */
  int last;
  crdt_vclock vector;
} repl_snapshot_chunk;

/* One decoded message.  `version` is the Envelope's protocol_version. */
typedef struct repl_msg {
  repl_msg_type type;
  uint32_t version;
  union {
    repl_handshake hs;
    repl_handshake_reply reply;
    repl_batch batch;
    repl_ack ack;
    repl_snapshot_request req;
    repl_snapshot_chunk chunk;
  } u;
} repl_msg;

/* Decodes one Envelope from in[0..len).  Fields this code does not know are
 * skipped (a newer peer's additions).  On success fills *m (release it with
 * repl_msg_release).  Returns 0, or:
 *   SP_ERR_TOOBIG  len > REPL_MAX_MESSAGE, or a value over CRDT_MAX_VALUE;
 *   SP_ERR_PARSE   not protobuf, no message, or a field out of its bounds
 *                  (names, region ids >= 64, duplicate vector entries,
 *                  unknown kinds or statuses, cl 0, seq 0, a NULL value
 *                  with bytes, an id or cursor over its limit);
 *   SP_ERR_PROTO   protocol_version outside REPL_PROTOCOL_MIN..VERSION (not
 *                  checked for the handshake messages, which negotiate it),
 *                  or a message type this version does not know;
 *   SP_ERR_NOMEM.
 * On failure *m needs no release.  Reasons over REPL_MAX_REASON are cut. */
int repl_msg_decode(const uint8_t *in, size_t len, repl_msg *m);

/* Frees what a decoded message owns; safe on a zeroed repl_msg. */
void repl_msg_release(repl_msg *m);

/* Encodes *m (as a decoded message would hold it, version included) into
 * out, which is reset first.  Vectors are written as their non-zero
 * entries.  0, SP_ERR_INVAL (a field the decoder would refuse: region id out
 * of range, a cursor too long, NULL changes for a batch), SP_ERR_TOOBIG
 * (over REPL_MAX_MESSAGE or out's max) or SP_ERR_NOMEM. */
int repl_msg_encode(const repl_msg *m, sp_buf *out);

/* ---- session --------------------------------------------------------------- */

typedef struct repl_session repl_session;

typedef struct repl_config {
  const char *cluster_id;  /* copied; 1..REPL_MAX_ID bytes */
  const char *region_name; /* ours, copied */
  crdt_region region_id;   /* ours, 0..63 */
  const char *peer_name;   /* the peer this session talks to, copied */
  crdt_region peer_id;     /* 0..63, != region_id */
  uint32_t max_changes;    /* per batch; 0 = REPL_DEFAULT_MAX_CHANGES */
  size_t max_bytes;        /* per encoded batch; 0 = REPL_DEFAULT_MAX_BYTES */
  uint32_t window;         /* unacknowledged batches; 0 = REPL_DEFAULT_WINDOW */
  uint64_t resend_ms;      /* re-send an unacked batch after; 0 = default */
  uint64_t sync_interval_ms; /* coalescing tick; 0 = default */
  uint64_t max_skew_ms;    /* remote stamps further ahead are refused;
                              0 = CRDT_DEFAULT_MAX_SKEW_MS */
} repl_config;

/* Where a sender reads change-log rows from (caller-owned, e.g. rows the
 * daemon has loaded from sp_change_log).
 *   rewind: position before the first row with seq > after->seq[origin],
 *     for the origins whose bit is set in `origins`; rows are then yielded
 *     ordered by (origin, seq).  Return 0, SP_ERR_RANGE when some wanted
 *     origin's rows after `after` are no longer retained (the peer needs a
 *     snapshot), or another negative code (passed through).
 *   next: 1 and *out (borrowed until the next call), 0 at the end of the
 *     rows available now, or a negative code (passed through).
 * Rows of other origins or at or below `after` are skipped; a row whose seq
 * jumps past the next expected one (a hole) means the log no longer holds
 * what the peer needs, and also switches the session to snapshot mode. */
typedef struct repl_source {
  int (*rewind)(void *arg, const crdt_vclock *after, uint64_t origins);
  int (*next)(void *arg, crdt_change *out);
  void *arg;
} repl_source;

typedef enum repl_state {
  REPL_STATE_NEW = 0,      /* no handshake yet */
  REPL_STATE_HELLO_SENT,   /* dialer: waiting for the HandshakeReply */
  REPL_STATE_ESTABLISHED,  /* version negotiated, batches flow */
  REPL_STATE_FAILED        /* refused or broken: close and reconnect */
} repl_state;

/* What the session wants to send now (repl_session_want_send). */
typedef enum repl_want {
  REPL_WANT_NONE = 0,
  REPL_WANT_BATCH,    /* call repl_session_send: a new batch */
  REPL_WANT_RESEND,   /* call repl_session_send: a batch timed out */
  REPL_WANT_SNAPSHOT  /* read the next chunk (repl_session_snapshot_cursor)
                         and call repl_session_snapshot_chunk */
} repl_want;

/* Counters for metrics; monotonic over the session's life (kept by reset). */
typedef struct repl_stats {
  /* sending */
  uint64_t batches_sent, batches_resent, changes_sent, bytes_sent;
  uint64_t acks_received, gaps_received, skew_rejected_by_peer;
  uint64_t snapshots_started, snapshot_chunks_sent;
  int64_t peer_clock_offset_ms; /* peer wall - our wall, from the last ack */
  /* receiving */
  uint64_t batches_received, changes_to_apply, duplicates, gaps;
  uint64_t skew_rejects; /* the alert metric */
  uint64_t malformed, snapshot_chunks_received;
} repl_stats;

/* 0, SP_ERR_INVAL (a field out of range) or SP_ERR_NOMEM. */
int repl_session_new(const repl_config *cfg, repl_session **out);
void repl_session_free(repl_session *s); /* NULL is a no-op */
/* Back to REPL_STATE_NEW for a new connection: drops batches in flight and
 * snapshot-sending state; keeps stats, the acked vector, relay settings and
 * a receiving snapshot's progress (resumable with a SnapshotRequest). */
void repl_session_reset(repl_session *s);

repl_state repl_session_state(const repl_session *s);
/* The negotiated protocol version (0 before the handshake). */
uint32_t repl_session_version(const repl_session *s);
/* Why the session failed or was refused ("" otherwise); static until the
 * next call on s. */
const char *repl_session_reason(const repl_session *s);
void repl_session_stats(const repl_session *s, repl_stats *out);

/* -- handshake -- */
/* Dialer: encodes our Handshake with `applied` (our applied vector) into out;
 * state -> HELLO_SENT.  0, SP_ERR_BUSY (not NEW), SP_ERR_NOMEM. */
int repl_session_hello(repl_session *s, const crdt_vclock *applied, sp_buf *out);
/* Acceptor: checks a received Handshake (cluster, the expected peer's name
 * and id, versions) and encodes the HandshakeReply into `reply` either way.
 * Returns 0 (accepted: ESTABLISHED, the peer's vector becomes its acked
 * vector), SP_ERR_PROTO (refused: FAILED, reason in the reply and in
 * repl_session_reason; send the reply, then close), SP_ERR_BUSY (not NEW),
 * SP_ERR_INVAL (m is not a Handshake), SP_ERR_NOMEM. */
int repl_session_on_handshake(repl_session *s, const repl_msg *m, const crdt_vclock *applied,
                              sp_buf *reply);
/* Dialer: takes the HandshakeReply.  0 (ESTABLISHED), SP_ERR_PROTO (refused,
 * or a version or region we cannot accept: FAILED with the reason),
 * SP_ERR_BUSY (no hello sent), SP_ERR_INVAL (not a reply). */
int repl_session_on_handshake_reply(repl_session *s, const repl_msg *m);

/* -- sending -- */
/* Tells the session our region's applied vector (the heads of the local
 * change log), after every local or remote commit.  Rows up to it must be
 * readable from the source by then.  Never fails. */
void repl_session_notify(repl_session *s, const crdt_vclock *applied);
/* Tells the session the source's log floor rose: a session that found no
 * row to send asks the source again, which now answers SP_ERR_RANGE if the
 * peer needs rows below the floor (rows a snapshot brought us, say, that
 * never were in our log), and the peer gets a snapshot.  Never fails. */
void repl_session_floor_rose(repl_session *s);
/* Relay: whether rows of `origin` other than our own are sent to this peer
 * (off by default; our own origin is always sent).  SP_ERR_INVAL for a bad
 * origin. */
int repl_session_set_relay(repl_session *s, crdt_region origin, int on);
/* What to send now: a timed-out batch, a new batch when rows are pending and
 * the window has room (at once when nothing is in flight, else at the sync
 * interval tick), a snapshot chunk in snapshot mode, or nothing. */
repl_want repl_session_want_send(const repl_session *s, uint64_t now_ms);
/* The earliest time at which want_send may change without any input (for
 * the caller's timer); UINT64_MAX when only input can change it. */
uint64_t repl_session_next_wakeup(const repl_session *s, uint64_t now_ms);
/* Sends what want_send asked for: re-sends the oldest timed-out batch (same
 * bytes), or builds the next batch from `src` (rows after what was sent,
 * bounded by max_changes and max_bytes) and encodes it into out.  0 (one
 * message in out), SP_ERR_AGAIN (nothing to send: no rows, window full, not
 * established, or the source needs a snapshot; see want_send), SP_ERR_INVAL
 * (the source gave a malformed change: the session stays where it was),
 * SP_ERR_NOMEM, or the source's error. */
int repl_session_send(repl_session *s, const repl_source *src, uint64_t now_ms, sp_buf *out);
/* Takes an Ack.  0 (applied to the sending state: window, acked vector,
 * rewind on GAP/SKEW_REJECT, snapshot mode on RESYNC_REQUIRED), SP_ERR_PROTO
 * (an ack for a batch never sent, or MALFORMED/VERSION from the peer: state
 * FAILED with the reason), SP_ERR_AGAIN (not established), SP_ERR_INVAL (not
 * an ack). */
int repl_session_on_ack(repl_session *s, const repl_msg *m, uint64_t now_ms);
/* The peer's acknowledged vector: persist it (log trimming, lag). */
const crdt_vclock *repl_session_acked(const repl_session *s);
/* Batches currently unacknowledged (never more than the window). */
size_t repl_session_in_flight(const repl_session *s);

/* -- snapshots, sending side -- */
/* The peer asked for a snapshot: enter snapshot mode, resuming at the
 * request's cursor and chunk number when it names a snapshot id, else
 * starting a new snapshot.  0, SP_ERR_AGAIN (not established), SP_ERR_INVAL
 * (not a SnapshotRequest). */
int repl_session_on_snapshot_request(repl_session *s, const repl_msg *m);
/* In snapshot mode: the cursor where the next chunk starts (borrowed, valid
 * until the next call on s; empty = from the beginning).  SP_ERR_AGAIN when
 * not in snapshot mode or a chunk is in flight. */
int repl_session_snapshot_cursor(const repl_session *s, const uint8_t **cursor, size_t *len);
/* Encodes the next chunk: `changes` (the merged state of the key range from
 * the cursor, e.g. from crdt_doc_export or sp_entity/sp_field), where the
 * following chunk starts, whether this is the last, and our applied vector
 * read no later than this chunk's rows.  0, SP_ERR_AGAIN (as above),
 * SP_ERR_INVAL (cursor too long), SP_ERR_TOOBIG, SP_ERR_NOMEM. */
int repl_session_snapshot_chunk(repl_session *s, const crdt_delta *changes,
                                const uint8_t *next_cursor, size_t next_len, int last,
                                const crdt_vclock *vector, uint64_t now_ms, sp_buf *out);
int repl_session_in_snapshot(const repl_session *s); /* 1 in snapshot mode */

/* -- receiving -- */
/* What to do with a received batch or snapshot chunk.  `changes` borrows
 * from the message. */
typedef struct repl_apply {
  uint64_t batch_id;
  repl_status status;
  const crdt_change **changes; /* apply these, in order, in one transaction */
  size_t count;
  crdt_vclock applied; /* our applied vector once they are committed */
  char reason[REPL_MAX_REASON + 1];
  /* private: snapshot progress to record when the caller confirms */
  int snapshot, last;
  uint64_t snapshot_id;
  uint32_t chunk_seq;
  crdt_vclock snap_min;
  const uint8_t *snap_next; /* borrowed from the message */
  size_t snap_next_len;
} repl_apply;
void repl_apply_release(repl_apply *r); /* safe on a zeroed or released one */

/* Validates a DeltaBatch against our applied vector and wall time and fills
 * *out: status OK (every change duplicate or next in sequence), GAP (applied
 * up to the first gap of some origin, nothing after it for that origin),
 * SKEW_REJECT (a stamp more than max_skew_ms ahead of wall_ms: nothing to
 * apply), MALFORMED (sent by another region than the peer), VERSION (written
 * in another version than negotiated) or RESYNC_REQUIRED (we asked for one).
 * Apply out->changes with out->applied persisted in the same transaction,
 * then call repl_session_ack.  Applies must be serialised per region (two
 * peers may relay the same change).  0, SP_ERR_AGAIN (not established),
 * SP_ERR_INVAL (not a batch), SP_ERR_NOMEM. */
int repl_session_on_batch(repl_session *s, const repl_msg *m, const crdt_vclock *applied,
                          uint64_t wall_ms, repl_apply *out);
/* The same for a SnapshotChunk: every change of an accepted chunk is to be
 * merged (state, not log rows: do not append them to the change log), and
 * on the last chunk out->applied adopts the snapshot's vector. */
int repl_session_on_snapshot_chunk(repl_session *s, const repl_msg *m, const crdt_vclock *applied,
                                   uint64_t wall_ms, repl_apply *out);
/* After the caller committed r (or at once when r->count == 0): records the
 * progress and encodes the Ack into out, with `applied_now` (our applied
 * vector after the commit; NULL = r->applied).  0, SP_ERR_NOMEM. */
int repl_session_ack(repl_session *s, const repl_apply *r, const crdt_vclock *applied_now,
                     uint64_t wall_ms, sp_buf *out);
/* Ask the peer for a full snapshot: the next batch ack says RESYNC_REQUIRED
 * (e.g. our database was restored from a backup). */
void repl_session_require_resync(repl_session *s);
/* Encodes a SnapshotRequest: resumes the snapshot being received, or asks
 * for a new one.  0, SP_ERR_AGAIN (not established), SP_ERR_NOMEM. */
int repl_session_request_snapshot(repl_session *s, sp_buf *out);

#endif
