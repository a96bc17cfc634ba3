/* Tests for sp_redis against a real redis-server from the fixture: commands
 * with binary data and error replies, publish/subscribe (binary payloads,
 * several channels, patterns, unsubscribe), the server going away and coming
 * back (fail-fast commands, state callback, automatic resubscription), a
 * server that is down at start, servers that never answer or speak garbage,
 * close with pending commands, and allocation failures.  Every test ends with
 * the loop closing clean. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_fixture.h"
#include "sp_log.h"
#include "sp_redis.h"

#define WAIT_MS 10000 /* upper bound for anything that must happen */

typedef struct tctx {
  uv_loop_t loop;
  uv_timer_t tick; /* wakes the loop while a test waits for a condition */
  sp_redis *r;
  int ups, downs, last_reason;
  int closed;
} tctx;

typedef struct reply_rec {
  int calls;
  int status;
  int type; /* -1: no reply */
  long long integer;
  size_t len;
  char str[256];
  size_t elements;
  long long elem1_int; /* element[1]->integer of an array reply */
  /* optional action run inside the callback */
  sp_redis *close_r;
  tctx *close_t;
  int nested_rc; /* what a call made from inside the callback returned */
} reply_rec;

typedef struct msg_rec {
  int count;
  char channel[64];
  char data[64];
  size_t len;
} msg_rec;

static sp_fixture_redis *fx(void **state) { return *state; }

static void on_tick(uv_timer_t *t) { (void)t; }

static void on_state(sp_redis *r, int connected, int reason, void *arg) {
  tctx *t = arg;
  assert_ptr_equal(r, t->r);
  if (connected) {
    assert_int_equal(reason, 0);
    assert_true(sp_redis_is_connected(r));
    t->ups++;
  } else {
    assert_true(reason < 0);
    assert_false(sp_redis_is_connected(r));
    t->downs++;
    t->last_reason = reason;
  }
}

static void on_closed(void *arg) {
  tctx *t = arg;
  t->closed++;
  t->r = NULL;
}

static void ctx_init(tctx *t) {
  memset(t, 0, sizeof *t);
  assert_int_equal(uv_loop_init(&t->loop), 0);
  assert_int_equal(uv_timer_init(&t->loop, &t->tick), 0);
}

/* Runs the loop until *counter >= target; fails the test after WAIT_MS. */
static void wait_for(tctx *t, const int *counter, int target) {
  uv_update_time(&t->loop);
  uint64_t deadline = uv_now(&t->loop) + WAIT_MS;
  uv_timer_start(&t->tick, on_tick, 5, 5);
  while (*counter < target && uv_now(&t->loop) < deadline)
    uv_run(&t->loop, UV_RUN_ONCE);
  uv_timer_stop(&t->tick);
  if (*counter < target)
    fail_msg("timed out waiting: %d < %d", *counter, target);
}

/* Runs the loop for about `ms` (lets retries and stray messages happen). */
static void run_for(tctx *t, uint64_t ms) {
  uv_update_time(&t->loop);
  uint64_t end = uv_now(&t->loop) + ms;
  uv_timer_start(&t->tick, on_tick, 5, 5);
  while (uv_now(&t->loop) < end)
    uv_run(&t->loop, UV_RUN_ONCE);
  uv_timer_stop(&t->tick);
}

static sp_redis_opts opts_for(tctx *t, const char *host, int port) {
  sp_redis_opts o;
  memset(&o, 0, sizeof o);
  o.host = host;
  o.port = port;
  o.connect_timeout_ms = 2000;
  o.backoff_min_ms = 10;
  o.backoff_max_ms = 100;
  o.on_state = on_state;
  o.state_arg = t;
  return o;
}

static void client_start(tctx *t, int port) {
  sp_redis_opts o = opts_for(t, "127.0.0.1", port);
  assert_int_equal(sp_redis_new(&t->loop, &o, &t->r), 0);
  assert_non_null(t->r);
}

/* Closes the client (if any) and asserts the loop ends with nothing open. */
static void ctx_finish(tctx *t) {
  if (t->r) {
    assert_int_equal(sp_redis_close(t->r, on_closed, t), 0);
    wait_for(t, &t->closed, 1);
  }
  assert_int_equal(t->closed <= 1, 1);
  uv_close((uv_handle_t *)&t->tick, NULL);
  assert_int_equal(uv_run(&t->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&t->loop), 0);
}

static void on_reply(int status, const redisReply *rep, void *arg) {
  reply_rec *rec = arg;
  rec->calls++;
  rec->status = status;
  rec->type = rep ? rep->type : -1;
  if (rep && (rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS ||
              rep->type == REDIS_REPLY_ERROR)) {
    rec->len = rep->len;
    assert_true(rep->len < sizeof rec->str);
    memcpy(rec->str, rep->str, rep->len);
    rec->str[rep->len] = '\0';
  }
  if (rep && rep->type == REDIS_REPLY_INTEGER)
    rec->integer = rep->integer;
  if (rep && rep->type == REDIS_REPLY_ARRAY) {
    rec->elements = rep->elements;
    if (rep->elements >= 2 && rep->element[1]->type == REDIS_REPLY_INTEGER)
      rec->elem1_int = rep->element[1]->integer;
  }
  if (rec->close_t) {
    /* closing from inside a reply callback */
    assert_int_equal(sp_redis_close(rec->close_r, on_closed, rec->close_t), 0);
    rec->nested_rc = sp_redis_close(rec->close_r, on_closed, rec->close_t);
  } else if (rec->close_r && status == SP_ERR_CANCELED) {
    /* a call made while the client is closing */
    const char *argv[] = {"PING"};
    rec->nested_rc = sp_redis_command(rec->close_r, 1, argv, NULL, NULL, NULL);
  }
}

/* Sends a command of NUL-terminated words and waits for its callback. */
static void run_cmd(tctx *t, reply_rec *rec, int argc, const char **argv,
                    const size_t *lens) {
  memset(rec, 0, sizeof *rec);
  assert_int_equal(sp_redis_command(t->r, argc, argv, lens, on_reply, rec), 0);
  wait_for(t, &rec->calls, 1);
  assert_int_equal(rec->calls, 1);
}

static void on_msg(const char *channel, const char *data, size_t len, void *arg) {
  msg_rec *m = arg;
  m->count++;
  snprintf(m->channel, sizeof m->channel, "%s", channel);
  assert_true(len < sizeof m->data);
  memcpy(m->data, data, len);
  m->len = len;
}

static void publish(tctx *t, const char *channel, const void *data, size_t len,
                    long long want_receivers) {
  reply_rec rec;
  memset(&rec, 0, sizeof rec);
  assert_int_equal(sp_redis_publish(t->r, channel, data, len, on_reply, &rec), 0);
  wait_for(t, &rec.calls, 1);
  assert_int_equal(rec.status, 0);
  assert_int_equal(rec.type, REDIS_REPLY_INTEGER);
  if (want_receivers >= 0)
    assert_int_equal(rec.integer, want_receivers);
}

/* Polls PUBSUB NUMSUB until the server counts `want` subscribers. */
static void wait_numsub(tctx *t, const char *channel, long long want) {
  for (int i = 0; i < 1000; i++) {
    reply_rec rec;
    const char *argv[] = {"PUBSUB", "NUMSUB", channel};
    run_cmd(t, &rec, 3, argv, NULL);
    assert_int_equal(rec.status, 0);
    assert_int_equal(rec.elements, 2);
    if (rec.elem1_int == want)
      return;
    run_for(t, 10);
  }
  fail_msg("channel %s never reached %lld subscribers", channel, want);
}

/* ---- tests -------------------------------------------------------------- */

static void test_new_rejects_bad_options(void **state) {
  (void)state;
  tctx t;
  ctx_init(&t);
  sp_redis *r = (sp_redis *)&t; /* must be reset to NULL on error */
  sp_redis_opts o = opts_for(&t, "127.0.0.1", 6379);
  assert_int_equal(sp_redis_new(NULL, &o, &r), SP_ERR_INVAL);
  assert_null(r);
  assert_int_equal(sp_redis_new(&t.loop, NULL, &r), SP_ERR_INVAL);
  assert_int_equal(sp_redis_new(&t.loop, &o, NULL), SP_ERR_INVAL);
  o.host = NULL;
  assert_int_equal(sp_redis_new(&t.loop, &o, &r), SP_ERR_INVAL);
  o.host = "";
  assert_int_equal(sp_redis_new(&t.loop, &o, &r), SP_ERR_INVAL);
  o.host = "127.0.0.1";
  o.port = 0;
  assert_int_equal(sp_redis_new(&t.loop, &o, &r), SP_ERR_INVAL);
  o.port = 65536;
  assert_int_equal(sp_redis_new(&t.loop, &o, &r), SP_ERR_INVAL);
  o.port = 6379;
  o.backoff_min_ms = 500;
  o.backoff_max_ms = 100;
  assert_int_equal(sp_redis_new(&t.loop, &o, &r), SP_ERR_INVAL);
  o.backoff_min_ms = 10;
  o.connect_timeout_ms = 4000000;
  assert_int_equal(sp_redis_new(&t.loop, &o, &r), SP_ERR_INVAL);
  assert_null(r);
  /* NULL handles are rejected, not dereferenced */
  assert_int_equal(sp_redis_close(NULL, NULL, NULL), SP_ERR_INVAL);
  const char *argv[] = {"PING"};
  assert_int_equal(sp_redis_command(NULL, 1, argv, NULL, NULL, NULL), SP_ERR_INVAL);
  assert_int_equal(sp_redis_subscribe(NULL, "c", on_msg, NULL), SP_ERR_INVAL);
  assert_int_equal(sp_redis_unsubscribe(NULL, "c"), SP_ERR_INVAL);
  assert_false(sp_redis_is_connected(NULL));
  ctx_finish(&t);
}

static void test_new_allocation_failures(void **state) {
  tctx t;
  ctx_init(&t);
  sp_redis_opts o = opts_for(&t, "127.0.0.1", fx(state)->port);
  sp_redis *r = NULL;
  for (long k = 0; k < 2; k++) {
    sp_alloc_fail_after(k);
    int rc = sp_redis_new(&t.loop, &o, &r);
    sp_alloc_fail_after(-1);
    assert_int_equal(rc, SP_ERR_NOMEM);
    assert_null(r);
  }
  /* the same call succeeds once memory is there, and the client works */
  assert_int_equal(sp_redis_new(&t.loop, &o, &t.r), 0);
  wait_for(&t, &t.ups, 1);
  /* per-call allocations fail cleanly too */
  sp_alloc_fail_after(0);
  const char *argv[] = {"PING"};
  int rc_cmd = sp_redis_command(t.r, 1, argv, NULL, NULL, NULL);
  int rc_sub = sp_redis_subscribe(t.r, "nomem", on_msg, NULL);
  sp_alloc_fail_after(-1);
  assert_int_equal(rc_cmd, SP_ERR_NOMEM);
  assert_int_equal(rc_sub, SP_ERR_NOMEM);
  assert_int_equal(sp_redis_unsubscribe(t.r, "nomem"), SP_ERR_NOENT);
  reply_rec rec;
  run_cmd(&t, &rec, 1, argv, NULL);
  assert_int_equal(rec.status, 0);
  assert_string_equal(rec.str, "PONG");
  ctx_finish(&t);
}

static void test_set_get_binary(void **state) {
  tctx t;
  ctx_init(&t);
  client_start(&t, fx(state)->port);
  wait_for(&t, &t.ups, 1);
  assert_true(sp_redis_is_connected(t.r));
  assert_int_equal(t.downs, 0);

  static const char key[] = "bin\0key";
  static const char val[] = "a\0b\xff\r\nc";
  reply_rec rec;
  {
    const char *argv[] = {"SET", key, val};
    size_t lens[] = {3, sizeof key - 1, sizeof val - 1};
    run_cmd(&t, &rec, 3, argv, lens);
    assert_int_equal(rec.status, 0);
    assert_int_equal(rec.type, REDIS_REPLY_STATUS);
    assert_string_equal(rec.str, "OK");
  }
  {
    const char *argv[] = {"GET", key};
    size_t lens[] = {3, sizeof key - 1};
    run_cmd(&t, &rec, 2, argv, lens);
    assert_int_equal(rec.status, 0);
    assert_int_equal(rec.type, REDIS_REPLY_STRING);
    assert_int_equal(rec.len, sizeof val - 1);
    assert_memory_equal(rec.str, val, sizeof val - 1);
  }
  {
    /* the key is binary-safe: "bin" alone is another, missing key */
    const char *argv[] = {"GET", "bin"};
    run_cmd(&t, &rec, 2, argv, NULL);
    assert_int_equal(rec.status, 0);
    assert_int_equal(rec.type, REDIS_REPLY_NIL);
  }
  {
    const char *argv[] = {"DEL", key};
    size_t lens[] = {3, sizeof key - 1};
    run_cmd(&t, &rec, 2, argv, lens);
    assert_int_equal(rec.type, REDIS_REPLY_INTEGER);
    assert_int_equal(rec.integer, 1);
  }
  /* many commands in flight at once complete in order, each exactly once */
  reply_rec many[50];
  memset(many, 0, sizeof many);
  int done_count = 0;
  for (int i = 0; i < 50; i++) {
    const char *argv[] = {"INCR", "counter"};
    assert_int_equal(sp_redis_command(t.r, 2, argv, NULL, on_reply, &many[i]), 0);
  }
  for (int i = 0; i < 50; i++) {
    wait_for(&t, &many[i].calls, 1);
    assert_int_equal(many[i].calls, 1);
    assert_int_equal(many[i].integer, i + 1);
    done_count++;
  }
  assert_int_equal(done_count, 50);
  ctx_finish(&t);
}

static void test_error_reply_and_bad_commands(void **state) {
  tctx t;
  ctx_init(&t);
  client_start(&t, fx(state)->port);
  wait_for(&t, &t.ups, 1);
  reply_rec rec;
  {
    const char *argv[] = {"NOSUCHCOMMAND", "x"};
    run_cmd(&t, &rec, 2, argv, NULL);
    assert_int_equal(rec.status, SP_ERR_REDIS);
    assert_int_equal(rec.type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(rec.str, "unknown command"));
  }
  {
    const char *set[] = {"SET", "notanumber", "abc"};
    run_cmd(&t, &rec, 3, set, NULL);
    const char *argv[] = {"INCR", "notanumber"};
    run_cmd(&t, &rec, 2, argv, NULL);
    assert_int_equal(rec.status, SP_ERR_REDIS);
    assert_non_null(strstr(rec.str, "not an integer"));
  }
  /* bad calls are refused up front and never reach the callback */
  memset(&rec, 0, sizeof rec);
  assert_int_equal(sp_redis_command(t.r, 0, NULL, NULL, on_reply, &rec), SP_ERR_INVAL);
  const char *with_null[] = {"GET", NULL};
  assert_int_equal(sp_redis_command(t.r, 2, with_null, NULL, on_reply, &rec),
                   SP_ERR_INVAL);
  const char *sub[] = {"subscribe", "x"};
  assert_int_equal(sp_redis_command(t.r, 2, sub, NULL, on_reply, &rec), SP_ERR_INVAL);
  const char *mon[] = {"MONITOR"};
  assert_int_equal(sp_redis_command(t.r, 1, mon, NULL, on_reply, &rec), SP_ERR_INVAL);
  assert_int_equal(sp_redis_publish(t.r, NULL, "x", 1, NULL, NULL), SP_ERR_INVAL);
  assert_int_equal(sp_redis_publish(t.r, "c", NULL, 3, NULL, NULL), SP_ERR_INVAL);
  assert_int_equal(sp_redis_subscribe(t.r, NULL, on_msg, NULL), SP_ERR_INVAL);
  assert_int_equal(sp_redis_subscribe(t.r, "c", NULL, NULL), SP_ERR_INVAL);
  assert_int_equal(sp_redis_unsubscribe(t.r, "never"), SP_ERR_NOENT);
  assert_int_equal(sp_redis_punsubscribe(t.r, "never*"), SP_ERR_NOENT);
  /* the connection is still good after all that */
  const char *ping[] = {"PING"};
  run_cmd(&t, &rec, 1, ping, NULL);
  assert_int_equal(rec.status, 0);
  assert_int_equal(rec.calls, 1);
  /* an empty publish (len 0, data NULL) is valid */
  publish(&t, "nobody-listens", NULL, 0, 0);
  ctx_finish(&t);
}

static void test_publish_subscribe(void **state) {
  tctx t;
  ctx_init(&t);
  client_start(&t, fx(state)->port);
  msg_rec one, two, pat, gone, late;
  memset(&one, 0, sizeof one);
  memset(&two, 0, sizeof two);
  memset(&pat, 0, sizeof pat);
  memset(&gone, 0, sizeof gone);
  memset(&late, 0, sizeof late);
  /* subscribed before the connection exists: "connected" means confirmed */
  assert_int_equal(sp_redis_subscribe(t.r, "ch.one", on_msg, &one), 0);
  assert_int_equal(sp_redis_subscribe(t.r, "ch.two", on_msg, &two), 0);
  assert_int_equal(sp_redis_psubscribe(t.r, "pat.*", on_msg, &pat), 0);
  assert_int_equal(sp_redis_subscribe(t.r, "ch.gone", on_msg, &gone), 0);
  assert_int_equal(sp_redis_subscribe(t.r, "ch.one", on_msg, &two), SP_ERR_EXIST);
  assert_int_equal(sp_redis_unsubscribe(t.r, "ch.gone"), 0);
  wait_for(&t, &t.ups, 1);

  static const char payload[] = "x\0y\xfe";
  publish(&t, "ch.one", payload, sizeof payload - 1, 1);
  publish(&t, "ch.gone", "nope", 4, 0);
  publish(&t, "pat.a", "p", 1, 1);
  publish(&t, "ch.two", "two", 3, 1);
  wait_for(&t, &two.count, 1);
  /* one connection delivers in publish order: the earlier ones are in */
  assert_int_equal(one.count, 1);
  assert_string_equal(one.channel, "ch.one");
  assert_int_equal(one.len, sizeof payload - 1);
  assert_memory_equal(one.data, payload, sizeof payload - 1);
  assert_int_equal(two.count, 1);
  assert_memory_equal(two.data, "two", 3);
  assert_int_equal(pat.count, 1);
  assert_string_equal(pat.channel, "pat.a");
  assert_memory_equal(pat.data, "p", 1);
  assert_int_equal(gone.count, 0);

  /* subscribe while connected; then unsubscribe: nothing more arrives,
   * not even what was already on its way */
  assert_int_equal(sp_redis_subscribe(t.r, "ch.late", on_msg, &late), 0);
  wait_numsub(&t, "ch.late", 1);
  publish(&t, "ch.late", "1", 1, 1);
  wait_for(&t, &late.count, 1);
  /* published, then unsubscribed before the loop even sent the PUBLISH */
  assert_int_equal(sp_redis_publish(t.r, "ch.late", "2", 1, NULL, NULL), 0);
  assert_int_equal(sp_redis_unsubscribe(t.r, "ch.late"), 0);
  wait_numsub(&t, "ch.late", 0);
  publish(&t, "ch.late", "3", 1, 0);
  publish(&t, "ch.two", "fence", 5, 1);
  wait_for(&t, &two.count, 2);
  assert_int_equal(late.count, 1);
  assert_memory_equal(late.data, "1", 1);

  /* pattern unsubscribe */
  assert_int_equal(sp_redis_punsubscribe(t.r, "pat.*"), 0);
  assert_int_equal(sp_redis_punsubscribe(t.r, "pat.*"), SP_ERR_NOENT);
  publish(&t, "pat.b", "q", 1, -1);
  publish(&t, "ch.two", "fence2", 6, 1);
  wait_for(&t, &two.count, 3);
  assert_int_equal(pat.count, 1);
  assert_int_equal(t.downs, 0);
  ctx_finish(&t);
}

/* The same channel unsubscribed and subscribed again before the server
 * answers, and the last channel dropped while another is being added (the
 * subscription link leaves and re-enters subscribed mode in one round
 * trip): delivery follows the latest call. */
static void test_unsubscribe_resubscribe_races(void **state) {
  tctx t;
  ctx_init(&t);
  client_start(&t, fx(state)->port);
  msg_rec a1, a2, b;
  memset(&a1, 0, sizeof a1);
  memset(&a2, 0, sizeof a2);
  memset(&b, 0, sizeof b);
  assert_int_equal(sp_redis_subscribe(t.r, "race.a", on_msg, &a1), 0);
  wait_for(&t, &t.ups, 1);
  /* drop the only channel and add another in the same tick */
  assert_int_equal(sp_redis_unsubscribe(t.r, "race.a"), 0);
  assert_int_equal(sp_redis_subscribe(t.r, "race.b", on_msg, &b), 0);
  /* and take race.a back, with another callback, before the server answered */
  assert_int_equal(sp_redis_subscribe(t.r, "race.a", on_msg, &a2), 0);
  wait_numsub(&t, "race.b", 1);
  wait_numsub(&t, "race.a", 1);
  publish(&t, "race.a", "A", 1, 1);
  publish(&t, "race.b", "B", 1, 1);
  wait_for(&t, &b.count, 1);
  assert_int_equal(a2.count, 1);
  assert_memory_equal(a2.data, "A", 1);
  assert_int_equal(a1.count, 0);
  assert_int_equal(t.downs, 0);
  ctx_finish(&t);
}

static void test_server_halt_and_resume(void **state) {
  sp_fixture_redis *srv = fx(state);
  tctx t;
  ctx_init(&t);
  client_start(&t, srv->port);
  msg_rec chaos, chaos2;
  memset(&chaos, 0, sizeof chaos);
  memset(&chaos2, 0, sizeof chaos2);
  assert_int_equal(sp_redis_subscribe(t.r, "chaos", on_msg, &chaos), 0);
  wait_for(&t, &t.ups, 1);
  publish(&t, "chaos", "before", 6, 1);
  wait_for(&t, &chaos.count, 1);

  assert_int_equal(sp_fixture_redis_halt(srv), 0);
  /* sent before the client noticed: fails with NOTCONN, exactly once */
  reply_rec inflight;
  memset(&inflight, 0, sizeof inflight);
  const char *ping[] = {"PING"};
  int rc = sp_redis_command(t.r, 1, ping, NULL, on_reply, &inflight);
  if (rc == 0) {
    wait_for(&t, &inflight.calls, 1);
    assert_int_equal(inflight.status, SP_ERR_NOTCONN);
    assert_int_equal(inflight.type, -1);
  } else {
    assert_int_equal(rc, SP_ERR_NOTCONN);
  }
  wait_for(&t, &t.downs, 1);
  assert_true(t.last_reason < 0);
  assert_false(sp_redis_is_connected(t.r));
  /* while down: fail fast, nothing queued */
  assert_int_equal(sp_redis_command(t.r, 1, ping, NULL, on_reply, &inflight),
                   SP_ERR_NOTCONN);
  assert_int_equal(sp_redis_publish(t.r, "chaos", "x", 1, NULL, NULL), SP_ERR_NOTCONN);
  /* a subscription made while down is sent on reconnect */
  assert_int_equal(sp_redis_subscribe(t.r, "chaos2", on_msg, &chaos2), 0);
  run_for(&t, 300); /* several refused reconnect attempts */
  assert_int_equal(t.downs, 1);
  assert_int_equal(t.ups, 1);
  assert_int_equal(inflight.calls, 1);

  assert_int_equal(sp_fixture_redis_resume(srv), 0);
  wait_for(&t, &t.ups, 2);
  assert_true(sp_redis_is_connected(t.r));
  /* no resubscribe call: the client restored "chaos" itself */
  publish(&t, "chaos", "after", 5, 1);
  publish(&t, "chaos2", "new", 3, 1);
  wait_for(&t, &chaos2.count, 1);
  assert_int_equal(chaos.count, 2);
  assert_memory_equal(chaos.data, "after", 5);
  reply_rec rec;
  run_cmd(&t, &rec, 1, ping, NULL);
  assert_int_equal(rec.status, 0);
  assert_int_equal(t.downs, 1);
  ctx_finish(&t);
}

static void test_start_with_server_down(void **state) {
  sp_fixture_redis *srv = fx(state);
  assert_int_equal(sp_fixture_redis_halt(srv), 0);
  tctx t;
  ctx_init(&t);
  client_start(&t, srv->port);
  msg_rec m;
  memset(&m, 0, sizeof m);
  assert_int_equal(sp_redis_subscribe(t.r, "early", on_msg, &m), 0);
  wait_for(&t, &t.downs, 1);
  assert_int_equal(t.last_reason, SP_ERR_CONNREFUSED);
  const char *ping[] = {"PING"};
  assert_int_equal(sp_redis_command(t.r, 1, ping, NULL, NULL, NULL), SP_ERR_NOTCONN);
  run_for(&t, 200);
  assert_int_equal(t.ups, 0);
  assert_int_equal(t.downs, 1); /* reported once, not per attempt */

  assert_int_equal(sp_fixture_redis_resume(srv), 0);
  wait_for(&t, &t.ups, 1);
  publish(&t, "early", "hi", 2, 1);
  wait_for(&t, &m.count, 1);
  assert_memory_equal(m.data, "hi", 2);
  ctx_finish(&t);
}

static void test_close_with_pending_commands(void **state) {
  tctx t;
  ctx_init(&t);
  client_start(&t, fx(state)->port);
  wait_for(&t, &t.ups, 1);
  msg_rec m;
  memset(&m, 0, sizeof m);
  assert_int_equal(sp_redis_subscribe(t.r, "closing", on_msg, &m), 0);
  /* BLPOP never returns, so it and everything behind it stays pending */
  reply_rec recs[4];
  memset(recs, 0, sizeof recs);
  const char *blpop[] = {"BLPOP", "never-pushed", "0"};
  const char *set[] = {"SET", "k", "v"};
  const char *get[] = {"GET", "k"};
  assert_int_equal(sp_redis_command(t.r, 3, blpop, NULL, on_reply, &recs[0]), 0);
  assert_int_equal(sp_redis_command(t.r, 3, set, NULL, on_reply, &recs[1]), 0);
  run_for(&t, 50); /* on the wire */
  assert_int_equal(sp_redis_command(t.r, 2, get, NULL, on_reply, &recs[2]), 0);
  recs[3].close_r = t.r; /* its callback tries a command while closing */
  assert_int_equal(sp_redis_publish(t.r, "closing", "z", 1, on_reply, &recs[3]), 0);
  assert_int_equal(sp_redis_close(t.r, on_closed, &t), 0);
  for (int i = 0; i < 4; i++) /* not from inside sp_redis_close */
    assert_int_equal(recs[i].calls, 0);
  wait_for(&t, &t.closed, 1);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(recs[i].calls, 1);
    assert_int_equal(recs[i].status, SP_ERR_CANCELED);
    assert_int_equal(recs[i].type, -1);
  }
  assert_int_equal(recs[3].nested_rc, SP_ERR_CLOSED);
  assert_int_equal(m.count, 0);
  ctx_finish(&t);
}

static void test_close_from_callback(void **state) {
  tctx t;
  ctx_init(&t);
  client_start(&t, fx(state)->port);
  wait_for(&t, &t.ups, 1);
  /* the first reply closes the client; the second is most likely in the
   * same read and still counts as cancelled; BLPOP and what follows it are
   * never answered */
  reply_rec recs[4];
  memset(recs, 0, sizeof recs);
  recs[0].close_r = t.r;
  recs[0].close_t = &t;
  const char *ping[] = {"PING"};
  const char *blpop[] = {"BLPOP", "never-pushed-2", "0"};
  assert_int_equal(sp_redis_command(t.r, 1, ping, NULL, on_reply, &recs[0]), 0);
  assert_int_equal(sp_redis_command(t.r, 1, ping, NULL, on_reply, &recs[1]), 0);
  assert_int_equal(sp_redis_command(t.r, 3, blpop, NULL, on_reply, &recs[2]), 0);
  assert_int_equal(sp_redis_command(t.r, 1, ping, NULL, on_reply, &recs[3]), 0);
  wait_for(&t, &t.closed, 1);
  assert_int_equal(recs[0].calls, 1);
  assert_int_equal(recs[0].status, 0);
  assert_int_equal(recs[0].nested_rc, SP_ERR_CLOSED);
  for (int i = 1; i < 4; i++) {
    assert_int_equal(recs[i].calls, 1);
    assert_int_equal(recs[i].status, SP_ERR_CANCELED);
    assert_int_equal(recs[i].type, -1);
  }
  ctx_finish(&t);
}

static void test_close_while_connecting(void **state) {
  /* closed in the same tick as created, and again while connecting */
  tctx t;
  ctx_init(&t);
  client_start(&t, fx(state)->port);
  ctx_finish(&t);
  assert_int_equal(t.closed, 1);
  ctx_init(&t);
  client_start(&t, fx(state)->port);
  uv_run(&t.loop, UV_RUN_NOWAIT); /* connect() issued */
  ctx_finish(&t);
  assert_int_equal(t.closed, 1);
  assert_int_equal(t.ups + t.downs, 0); /* nothing reported while closing */
}

/* ---- servers that are not Redis ------------------------------------------ */

typedef struct fake_srv {
  uv_tcp_t listener;
  uv_tcp_t conns[8];
  int accepted;
  const char *answer; /* sent for every read; NULL: stay silent */
  int port;
} fake_srv;

static void fake_alloc(uv_handle_t *h, size_t n, uv_buf_t *buf) {
  (void)h;
  static char scratch[4096];
  (void)n;
  *buf = uv_buf_init(scratch, sizeof scratch);
}

static void fake_written(uv_write_t *w, int status) {
  (void)status;
  free(w);
}

static void fake_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  fake_srv *f = s->data;
  if (n > 0 && f->answer) {
    uv_write_t *w = malloc(sizeof *w);
    assert_non_null(w);
    uv_buf_t b = uv_buf_init((char *)f->answer, (unsigned)strlen(f->answer));
    assert_int_equal(uv_write(w, s, &b, 1, fake_written), 0);
  } else if (n < 0) {
    uv_read_stop(s);
  }
}

static void fake_on_conn(uv_stream_t *l, int status) {
  fake_srv *f = l->data;
  assert_int_equal(status, 0);
  if (f->accepted >= 8)
    return; /* left in the backlog; bounded */
  uv_tcp_t *c = &f->conns[f->accepted];
  assert_int_equal(uv_tcp_init(l->loop, c), 0);
  assert_int_equal(uv_accept(l, (uv_stream_t *)c), 0);
  c->data = f;
  f->accepted++;
  assert_int_equal(uv_read_start((uv_stream_t *)c, fake_alloc, fake_read), 0);
}

static void fake_start(tctx *t, fake_srv *f, const char *answer) {
  memset(f, 0, sizeof *f);
  f->answer = answer;
  struct sockaddr_in a;
  assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
  assert_int_equal(uv_tcp_init(&t->loop, &f->listener), 0);
  f->listener.data = f;
  assert_int_equal(uv_tcp_bind(&f->listener, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&f->listener, 16, fake_on_conn), 0);
  struct sockaddr_in got;
  int len = sizeof got;
  assert_int_equal(uv_tcp_getsockname(&f->listener, (struct sockaddr *)&got, &len), 0);
  f->port = ntohs(got.sin_port);
}

static void fake_stop(fake_srv *f) {
  uv_close((uv_handle_t *)&f->listener, NULL);
  for (int i = 0; i < f->accepted; i++)
    uv_close((uv_handle_t *)&f->conns[i], NULL);
}

static void test_silent_server_times_out(void **state) {
  (void)state;
  tctx t;
  ctx_init(&t);
  fake_srv f;
  fake_start(&t, &f, NULL);
  sp_redis_opts o = opts_for(&t, "127.0.0.1", f.port);
  o.connect_timeout_ms = 100;
  assert_int_equal(sp_redis_new(&t.loop, &o, &t.r), 0);
  wait_for(&t, &t.downs, 1);
  assert_int_equal(t.last_reason, SP_ERR_TIMEDOUT);
  /* it keeps trying: 2 links, at least one retry each */
  wait_for(&t, &f.accepted, 4);
  assert_int_equal(t.ups, 0);
  assert_int_equal(t.downs, 1);
  const char *ping[] = {"PING"};
  assert_int_equal(sp_redis_command(t.r, 1, ping, NULL, NULL, NULL), SP_ERR_NOTCONN);
  fake_stop(&f);
  ctx_finish(&t);
}

static void test_garbage_server_is_a_protocol_error(void **state) {
  (void)state;
  tctx t;
  ctx_init(&t);
  fake_srv f;
  fake_start(&t, &f, "HTTP/1.1 400 Bad Request\r\n\r\n");
  client_start(&t, f.port);
  wait_for(&t, &t.downs, 1);
  assert_int_equal(t.last_reason, SP_ERR_PROTO);
  wait_for(&t, &f.accepted, 4);
  assert_int_equal(t.ups, 0);
  fake_stop(&f);
  ctx_finish(&t);
}

static void test_server_answering_errors_is_retried(void **state) {
  /* a server still loading its dataset answers PING with an error: not up */
  (void)state;
  tctx t;
  ctx_init(&t);
  fake_srv f;
  fake_start(&t, &f, "-LOADING Redis is loading the dataset in memory\r\n");
  client_start(&t, f.port);
  wait_for(&t, &t.downs, 1);
  assert_int_equal(t.last_reason, SP_ERR_REDIS);
  wait_for(&t, &f.accepted, 4);
  assert_int_equal(t.ups, 0);
  const char *ping[] = {"PING"};
  assert_int_equal(sp_redis_command(t.r, 1, ping, NULL, NULL, NULL), SP_ERR_NOTCONN);
  fake_stop(&f);
  ctx_finish(&t);
}

static void test_host_name_is_resolved(void **state) {
  /* "localhost" goes through uv_getaddrinfo (/etc/hosts, no DNS traffic) */
  tctx t;
  ctx_init(&t);
  sp_redis_opts o = opts_for(&t, "localhost", fx(state)->port);
  assert_int_equal(sp_redis_new(&t.loop, &o, &t.r), 0);
  wait_for(&t, &t.ups, 1);
  reply_rec rec;
  const char *ping[] = {"PING"};
  run_cmd(&t, &rec, 1, ping, NULL);
  assert_int_equal(rec.status, 0);
  ctx_finish(&t);
}

static int group_setup(void **state) {
  static sp_fixture_redis srv;
  if (sp_fixture_redis_start(&srv) != 0)
    return -1;
  *state = &srv;
  return 0;
}

static int group_teardown(void **state) {
  sp_fixture_redis_stop(*state);
  return 0;
}

int main(void) {
  /* SP_LOG_LEVEL=debug shows every connect attempt; SP_TEST_FILTER=name
   * runs matching tests only. */
  sp_log_init("test_sp_redis", NULL, NULL);
  if (getenv("SP_TEST_FILTER"))
    cmocka_set_test_filter(getenv("SP_TEST_FILTER"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_new_rejects_bad_options),
      cmocka_unit_test(test_new_allocation_failures),
      cmocka_unit_test(test_set_get_binary),
      cmocka_unit_test(test_error_reply_and_bad_commands),
      cmocka_unit_test(test_publish_subscribe),
      cmocka_unit_test(test_unsubscribe_resubscribe_races),
      cmocka_unit_test(test_server_halt_and_resume),
      cmocka_unit_test(test_start_with_server_down),
      cmocka_unit_test(test_close_with_pending_commands),
      cmocka_unit_test(test_close_from_callback),
      cmocka_unit_test(test_close_while_connecting),
      cmocka_unit_test(test_silent_server_times_out),
      cmocka_unit_test(test_garbage_server_is_a_protocol_error),
      cmocka_unit_test(test_server_answering_errors_is_retried),
      cmocka_unit_test(test_host_name_is_resolved),
  };
  return cmocka_run_group_tests_name("sp_redis", tests, group_setup, group_teardown);
}
