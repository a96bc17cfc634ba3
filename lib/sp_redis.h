/* sp_redis: an asynchronous Redis client on the libuv loop.
 *
 * One sp_redis holds two hiredis async connections to one server, both driven
 * by hiredis's libuv adapter: a command link (GET, SET, PUBLISH, ...) and a
 * subscription link (a subscribed Redis connection cannot run other commands).
 * Nothing blocks the loop: host names are resolved with uv_getaddrinfo, the
 * connect is non-blocking, and a link counts as up only once the server has
 * answered PING within the connect timeout.
 *
 * Either link reconnects by itself with exponential backoff plus jitter when
 * the server refuses, goes away or stops answering during the handshake.
 * While the command link is down, commands fail at once with SP_ERR_NOTCONN
 * (nothing is queued).  Subscriptions are remembered by the client and sent
 * again on every new subscription link, so callers subscribe once.  Messages
 * published while the subscription link was down are lost (Redis pub/sub is
 * fire-and-forget): the state callback's "connected" event is the point from
 * which delivery is complete again, so a consumer that keeps derived state
 * resynchronises there.
 *
 * Limits: no AUTH, TLS or database selection (SELECT is refused, since a
 * reconnect would silently undo it); a blocking command (BLPOP, ...) holds up
 * every later command of the client, as on any single Redis connection.
 *
 * Memory: sp_redis_new copies the options (the host string included); the
 * client is freed by sp_redis_close once every handle it owns is closed.
 * Replies and message payloads are borrowed for the duration of the callback
 * that receives them.  Not thread-safe: use one client from its loop's thread.
 */
#ifndef SP_REDIS_H
#define SP_REDIS_H

#include <stddef.h>

#include <hiredis/hiredis.h>
#include <uv.h>

typedef struct sp_redis sp_redis;

/* State changes of the client as a whole.  connected == 1 once both links
 * are up and every remembered subscription is confirmed by the server;
 * connected == 0 (reason: a negative sp_err code such as SP_ERR_CONNREFUSED,
 * SP_ERR_CONNRESET, SP_ERR_TIMEDOUT, SP_ERR_IO) when the client was up and a
 * link went down, or when the very first connection attempt failed.  Reported
 * once per transition; the client keeps retrying on its own.  Never called
 * after sp_redis_close. */
typedef void (*sp_redis_state_cb)(sp_redis *r, int connected, int reason,
                                  void *arg);

/* A command finished.  status: 0 (reply is the server's answer, which may be
 * a nil, integer, status, string or array reply), SP_ERR_REDIS (reply is an
 * error reply, reply->str holds the server's message), SP_ERR_NOTCONN (the
 * connection was lost before the reply arrived: the command may or may not
 * have run; reply is NULL) or SP_ERR_CANCELED (sp_redis_close was called;
 * reply is NULL).  Called exactly once per accepted command.  `reply` is
 * borrowed: it is freed when the callback returns. */
typedef void (*sp_redis_reply_cb)(int status, const redisReply *reply,
                                  void *arg);

/* A message arrived on a subscribed channel (for a pattern subscription,
 * `channel` is the channel it was published to).  channel is NUL-terminated;
 * data holds len bytes (binary-safe, followed by a NUL that is not part of
 * the payload).  Both are borrowed for the duration of the call. */
typedef void (*sp_redis_message_cb)(const char *channel, const char *data,
                                    size_t len, void *arg);

typedef struct sp_redis_opts {
  const char *host;            /* IP literal or DNS name (copied; a name is
                                  resolved on every attempt, and consecutive
                                  failures rotate through its addresses) */
  int port;                    /* 1-65535 */
  unsigned connect_timeout_ms; /* resolve + connect + PING answer; 0 = 2000 */
  unsigned backoff_min_ms;     /* first retry delay; 0 = 100 */
  unsigned backoff_max_ms;     /* retry delay cap; 0 = 5000 */
  sp_redis_state_cb on_state;  /* optional */
  void *state_arg;
} sp_redis_opts;

/* Creates a client on `loop` and starts connecting both links (the first
 * attempt runs from the loop, so no callback fires before this returns).
 * On success *out owns the client until sp_redis_close.
 * Returns 0, SP_ERR_INVAL (NULL argument, empty host, port out of range,
 * backoff_min_ms > backoff_max_ms, a value above 1 hour) or SP_ERR_NOMEM;
 * on error *out is NULL and nothing was created. */
int sp_redis_new(uv_loop_t *loop, const sp_redis_opts *opts, sp_redis **out);

/* Starts tearing the client down.  No callback runs inside this call; from
 * the loop, every command not yet answered gets its callback once with
 * SP_ERR_CANCELED (even if its reply is already on the wire), subscriptions
 * and the state callback go quiet, and `done` (optional) is called once every
 * handle the client owns (its timers and the libuv adapter's poll handles) is
 * closed and all its memory is freed; the loop can then be closed.  Until
 * `done`, calls on `r` from those callbacks return SP_ERR_CLOSED; after it,
 * `r` is gone.  Safe to call from any sp_redis callback.
 * Returns 0, SP_ERR_INVAL (r NULL) or SP_ERR_CLOSED (already closing). */
int sp_redis_close(sp_redis *r, void (*done)(void *arg), void *arg);

/* Sends one command given as argc binary-safe arguments (argvlen NULL: every
 * argv[i] is a NUL-terminated string).  The arguments are copied before this
 * returns.  cb (optional) is called once as described above.
 * Returns 0 (accepted), SP_ERR_NOTCONN (command link down: cb is not called),
 * SP_ERR_INVAL (argc < 1, NULL argument, or a command that would change the
 * connection's protocol state: SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE,
 * PUNSUBSCRIBE, MONITOR, QUIT, RESET, HELLO, SELECT — use the dedicated
 * calls), SP_ERR_CLOSED (closing) or SP_ERR_NOMEM. */
int sp_redis_command(sp_redis *r, int argc, const char **argv,
                     const size_t *argvlen, sp_redis_reply_cb cb, void *arg);

/* PUBLISH channel data: the same contract as sp_redis_command; on status 0
 * reply->integer is the number of subscribers that received it.  channel is
 * NUL-terminated, data is `len` bytes (may contain NULs). */
int sp_redis_publish(sp_redis *r, const char *channel, const void *data,
                     size_t len, sp_redis_reply_cb cb, void *arg);

/* Subscribes to `channel` (NUL-terminated; copied), or with the p- variant
 * to a glob `pattern`.  The subscription is kept across reconnects until
 * sp_redis_(p)unsubscribe or sp_redis_close; it may be made before the client
 * is connected.  The server confirms asynchronously: messages published
 * before its confirmation are not delivered (the state callback's
 * "connected" event covers subscriptions made while disconnected).
 * Returns 0, SP_ERR_INVAL (NULL argument), SP_ERR_EXIST (already subscribed
 * to that channel/pattern), SP_ERR_CLOSED or SP_ERR_NOMEM. */
int sp_redis_subscribe(sp_redis *r, const char *channel,
                       sp_redis_message_cb on_message, void *arg);
int sp_redis_psubscribe(sp_redis *r, const char *pattern,
                        sp_redis_message_cb on_message, void *arg);

/* Ends a subscription: its callback is not called again from the moment this
 * returns (messages already in flight are dropped).  Safe to call from that
 * very callback.  Returns 0, SP_ERR_INVAL, SP_ERR_NOENT (not subscribed) or
 * SP_ERR_CLOSED. */
int sp_redis_unsubscribe(sp_redis *r, const char *channel);
int sp_redis_punsubscribe(sp_redis *r, const char *pattern);

/* 1 when both links are up and subscriptions confirmed (the last state
 * reported as connected), else 0.  Commands need only the command link. */
int sp_redis_is_connected(const sp_redis *r);

#endif
