/* sp_redis: the Redis client (see sp_redis.h for the contract).
 *
 * Structure: one sp_redis owns two links (command, subscription).  A link is
 * a small state machine  IDLE -> RESOLVING -> CONNECTING -> PINGING
 * [-> SUBSCRIBING] -> READY  around at most one hiredis async context, with
 * one uv_timer that is the connect deadline while connecting and the retry
 * delay while IDLE.  Any failure goes through link_lost(), which forgets the
 * context, schedules the next attempt and reports the state change.
 *
 * Ownership: the sp_redis owns its host copy, its subscription list (one
 * heap node per channel/pattern), one small request per pending command
 * (freed when hiredis runs its callback, which it does exactly once: with
 * the reply, or with NULL when the context is freed), and its timers.
 * hiredis owns each context and frees it itself after a connect failure or a
 * disconnect; we learn about that through on_connect(error) / on_disconnect
 * and never touch the context afterwards.  The adapter's redisLibuvEvents
 * (allocated by redisLibuvAttach with malloc) is freed with free() in our
 * poll close callback.
 *
 * Subscriptions: every (P)SUBSCRIBE is sent with the same hiredis callback
 * and on_sub_reply dispatches through our own list, so that list alone
 * decides what is delivered (an unsubscribe takes effect at once, even for
 * messages already in flight) and it is what gets resent on reconnect.
 *
 * Two problems of the hiredis 0.14.1 libuv adapter are handled by replacing
 * its event hooks after redisLibuvAttach:
 *  - libuv reports POLLERR (a refused connect, a reset connection) as status
 *    UV_EBADF with the poll already stopped, and the adapter ignores a
 *    non-zero status, so hiredis would never learn the socket died and the
 *    link would hang; our poll callback lets hiredis read the error instead.
 *  - the adapter's cleanup closes the poll handle with its own callback, so
 *    sp_redis_close could not know when the loop is free of it; ours counts
 *    it, and `done` runs only once every handle is closed.
 * redisLibuvAttach also leaves its cleanup hook installed with a NULL
 * ev.data when it fails, which would crash redisAsyncFree; we clear the hooks
 * in that case.
 */
#include "sp_redis.h"

#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_log.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define SP_REDIS_CONTAINER_OF(ptr, type, field)                                \
  ((type *)(void *)((char *)(ptr) - offsetof(type, field)))

#define SP_REDIS_DEFAULT_CONNECT_MS 2000u
#define SP_REDIS_DEFAULT_BACKOFF_MIN_MS 100u
#define SP_REDIS_DEFAULT_BACKOFF_MAX_MS 5000u
#define SP_REDIS_MAX_OPT_MS 3600000u

typedef enum link_state {
  LINK_IDLE,        /* no context; the timer may hold the next attempt */
  LINK_RESOLVING,   /* uv_getaddrinfo in flight */
  LINK_CONNECTING,  /* context exists, TCP connect in progress */
  LINK_PINGING,       /* TCP up, PING sent */
  LINK_SUBSCRIBING, /* sub link: waiting for (P)SUBSCRIBE confirmations */
  LINK_READY,
} link_state;

typedef struct sp_redis_link {
  sp_redis *r;
  const char *name;      /* "cmd" / "sub", for logs */
  int is_sub;
  link_state state;
  redisAsyncContext *ac; /* NULL when no context exists */
  int tcp_up;            /* hiredis marked ac connected: freeing it will call
                            on_disconnect */
  int dying;             /* hiredis is freeing ac: never call into it again */
  int drop_reason;       /* why we freed ac ourselves (0: hiredis did) */
  uv_timer_t timer;      /* connect deadline, then retry delay */
  uv_getaddrinfo_t gai;
  int gai_active;        /* gai callback still to come */
  int gai_timed_out;     /* deadline passed while resolving */
  unsigned failures;     /* consecutive failed attempts, for the backoff */
  unsigned confirms;     /* sub: subscriptions awaiting confirmation */
} sp_redis_link;

/* One remembered subscription.  on_message NULL: the caller unsubscribed and
 * the node only waits for the confirmation counted in `confirm`. */
typedef struct sp_redis_sub {
  struct sp_redis_sub *next;
  int pattern;
  sp_redis_message_cb on_message;
  void *arg;
  int sent;    /* (P)SUBSCRIBE sent on the current context */
  int confirm; /* counted in the sub link's confirms */
  char name[];
} sp_redis_sub;

typedef struct sp_redis_req {
  sp_redis *r;
  sp_redis_reply_cb cb;
  void *arg;
} sp_redis_req;

struct sp_redis {
  uv_loop_t *loop;
  char *host;
  int host_is_ip;
  int port;
  unsigned connect_timeout_ms;
  unsigned backoff_min_ms;
  unsigned backoff_max_ms;
  sp_redis_state_cb on_state;
  void *state_arg;
  sp_redis_link cmd;
  sp_redis_link sub;
  sp_redis_sub *subs;
  int reported;          /* last state given to on_state: -1 none, 0, 1 */
  int closing;
  unsigned pending_close; /* handles and requests that must end before free */
  void (*done)(void *arg);
  void *done_arg;
  uint64_t rng;          /* xorshift state for the backoff jitter */
};

static void link_lost(sp_redis_link *l, int reason, const char *detail);
static void on_link_timer(uv_timer_t *t);

/* ---- small helpers ------------------------------------------------------ */

static uint64_t rng_next(sp_redis *r) {
  uint64_t x = r->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  r->rng = x;
  return x;
}

/* Exponential backoff with "equal jitter": half the delay is fixed so retries
 * never hammer, the other half is random so clients that lost the server
 * together do not come back in lockstep. */
static uint64_t backoff_ms(sp_redis_link *l) {
  sp_redis *r = l->r;
  unsigned shift = l->failures < 20 ? l->failures : 20;
  uint64_t d = (uint64_t)r->backoff_min_ms << shift;
  if (d > r->backoff_max_ms)
    d = r->backoff_max_ms;
  uint64_t half = d / 2;
  return half + rng_next(r) % (d - half + 1);
}

static int is_ip_literal(const char *host) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* A reason code for a context hiredis is about to free.  errno is only
 * meaningful when the caller saved it right after hiredis set ac->err. */
static int reason_of(const redisAsyncContext *ac, int saved_errno) {
  switch (ac->c.err) { /* ac->err is copied only after on_connect */
  case 0:
    return SP_ERR_NOTCONN;
  case REDIS_ERR_IO:
    return saved_errno > 0 ? -saved_errno : SP_ERR_IO;
  case REDIS_ERR_EOF:
    return SP_ERR_CONNRESET;
  case REDIS_ERR_PROTOCOL:
    return SP_ERR_PROTO;
  case REDIS_ERR_OOM:
    return SP_ERR_NOMEM;
  default:
    return SP_ERR_REDIS; /* e.g. "max number of clients reached" */
  }
}

static void report_state(sp_redis *r, int reason) {
  if (r->closing)
    return;
  int up = r->cmd.state == LINK_READY && r->sub.state == LINK_READY;
  if (up && r->reported != 1) {
    r->reported = 1;
    sp_log_info("redis connected", "{s:s, s:i}", "host", r->host, "port", r->port);
    if (r->on_state)
      r->on_state(r, 1, 0, r->state_arg);
  } else if (!up && reason != 0 && r->reported != 0) {
    r->reported = 0;
    if (r->on_state)
      r->on_state(r, 0, reason, r->state_arg);
  }
}

/* ---- teardown ----------------------------------------------------------- */

static void finish_close(sp_redis *r) {
  void (*done)(void *) = r->done;
  void *arg = r->done_arg;
  sp_redis_sub *s = r->subs;
  while (s) {
    sp_redis_sub *next = s->next;
    sp_free(s);
    s = next;
  }
  sp_free(r->host);
  sp_free(r);
  if (done)
    done(arg);
}

static void close_step_done(sp_redis *r) {
  if (--r->pending_close == 0 && r->closing)
    finish_close(r);
}

static void on_timer_closed(uv_handle_t *h) {
  sp_redis_link *l = SP_REDIS_CONTAINER_OF(h, sp_redis_link, timer);
  close_step_done(l->r);
}

/* Closes the link's timer once nothing else of the link is outstanding. */
static void link_maybe_close_timer(sp_redis_link *l) {
  if (!l->r->closing || l->ac != NULL || l->gai_active)
    return;
  if (!uv_is_closing((uv_handle_t *)&l->timer))
    uv_close((uv_handle_t *)&l->timer, on_timer_closed);
}

/* ---- libuv adapter hooks (see the file comment for why they replace the
 * adapter's own) ------------------------------------------------------------ */

static void ev_poll_cb(uv_poll_t *h, int status, int events) {
  redisLibuvEvents *p = h->data;
  redisAsyncContext *ac = p->context;
  if (ac == NULL)
    return;
  if (status < 0) {
    /* libuv stopped the poll on POLLERR: let hiredis find the socket error
     * (getsockopt while connecting, read() once connected), which frees the
     * context; if it finds none, resume watching. */
    if (!(ac->c.flags & REDIS_CONNECTED))
      redisAsyncHandleWrite(ac);
    else
      redisAsyncHandleRead(ac);
    if (p->context != NULL && p->events)
      uv_poll_start(&p->handle, p->events, ev_poll_cb);
    return;
  }
  if (events & UV_READABLE)
    redisAsyncHandleRead(ac);
  if (p->context != NULL && (events & UV_WRITABLE))
    redisAsyncHandleWrite(ac);
}

static void ev_update(redisLibuvEvents *p) {
  if (p->events)
    uv_poll_start(&p->handle, p->events, ev_poll_cb);
  else
    uv_poll_stop(&p->handle);
}

static void ev_add_read(void *d) {
  redisLibuvEvents *p = d;
  p->events |= UV_READABLE;
  ev_update(p);
}

static void ev_del_read(void *d) {
  redisLibuvEvents *p = d;
  p->events &= ~UV_READABLE;
  ev_update(p);
}

static void ev_add_write(void *d) {
  redisLibuvEvents *p = d;
  p->events |= UV_WRITABLE;
  ev_update(p);
}

static void ev_del_write(void *d) {
  redisLibuvEvents *p = d;
  p->events &= ~UV_WRITABLE;
  ev_update(p);
}

static void ev_poll_closed(uv_handle_t *h) {
  redisLibuvEvents *p = SP_REDIS_CONTAINER_OF(h, redisLibuvEvents, handle);
  sp_redis *r = h->data;
  free(p); /* allocated by redisLibuvAttach with malloc */
  close_step_done(r);
}

/* hiredis calls this while freeing the context, before on_disconnect. */
static void ev_cleanup(void *d) {
  redisLibuvEvents *p = d;
  sp_redis_link *l = p->context->data;
  p->context = NULL;
  /* No poll callback can run once uv_close is called, so handle.data is
   * free to carry the owner to the close callback. */
  p->handle.data = l->r;
  uv_close((uv_handle_t *)&p->handle, ev_poll_closed);
}

/* ---- subscriptions ------------------------------------------------------ */

static sp_redis_sub *sub_find(sp_redis *r, int pattern, const char *name) {
  for (sp_redis_sub *s = r->subs; s; s = s->next)
    if (s->pattern == pattern && strcmp(s->name, name) == 0)
      return s;
  return NULL;
}

static int sub_link_usable(const sp_redis *r) {
  const sp_redis_link *l = &r->sub;
  return l->ac != NULL && !l->dying &&
         (l->state == LINK_SUBSCRIBING || l->state == LINK_READY);
}

static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Sends (P)SUBSCRIBE or (P)UNSUBSCRIBE for a node on the sub link.  Every
 * name gets the same hiredis callback; on_sub_reply dispatches through our
 * own list, so the list alone decides what is delivered. */
static int sub_send(sp_redis *r, sp_redis_sub *s, int subscribe) {
  static const char *const verbs[2][2] = {{"UNSUBSCRIBE", "SUBSCRIBE"},
                                          {"PUNSUBSCRIBE", "PSUBSCRIBE"}};
  const char *argv[2] = {verbs[s->pattern ? 1 : 0][subscribe ? 1 : 0], s->name};
  int rc = redisAsyncCommandArgv(r->sub.ac, on_sub_reply, &r->sub, 2, argv, NULL);
  return rc == REDIS_OK ? 0 : SP_ERR_NOTCONN;
}

/* Frees a node the caller gave up once no confirmation is counted on it. */
static void sub_maybe_free(sp_redis *r, sp_redis_sub *s) {
  if (s->on_message != NULL || s->confirm)
    return;
  for (sp_redis_sub **pp = &r->subs; *pp; pp = &(*pp)->next) {
    if (*pp == s) {
      *pp = s->next;
      sp_free(s);
      return;
    }
  }
}

/* The sub context is gone: the server forgot every subscription. */
static void sub_forget_server_state(sp_redis *r) {
  sp_redis_sub **pp = &r->subs;
  while (*pp) {
    sp_redis_sub *s = *pp;
    s->sent = 0;
    s->confirm = 0;
    if (s->on_message == NULL) {
      *pp = s->next;
      sp_free(s);
    } else {
      pp = &s->next;
    }
  }
  r->sub.confirms = 0;
}

/* ---- link state machine ------------------------------------------------- */

static void link_ready(sp_redis_link *l) {
  l->state = LINK_READY;
  l->failures = 0;
  uv_timer_stop(&l->timer);
  report_state(l->r, 0);
}

/* Frees the link's context on our initiative.  A context hiredis considers
 * connected reports through on_disconnect (at once, or when hiredis returns
 * from the callback we are in); one that never connected is gone at once. */
static void link_drop(sp_redis_link *l, int reason, const char *detail) {
  redisAsyncContext *ac = l->ac;
  l->dying = 1;
  l->drop_reason = reason;
  if (l->tcp_up) {
    redisAsyncFree(ac);
  } else {
    l->ac = NULL;
    redisAsyncFree(ac);
    link_lost(l, reason, detail);
  }
}

/* Every failure ends here, once the context is gone (or was never made):
 * schedule the next attempt, then tell the caller (last, because the state
 * callback may close the client). */
static void link_lost(sp_redis_link *l, int reason, const char *detail) {
  sp_redis *r = l->r;
  int was_ready = l->state == LINK_READY;
  l->ac = NULL;
  l->tcp_up = 0;
  l->dying = 0;
  l->drop_reason = 0;
  l->state = LINK_IDLE;
  if (l->is_sub)
    sub_forget_server_state(r);
  if (r->closing) {
    link_maybe_close_timer(l);
    return;
  }
  uint64_t delay = backoff_ms(l);
  if (l->failures < 64)
    l->failures++;
  if (was_ready)
    sp_log_warn("redis link down", "{s:s, s:s, s:i, s:s, s:s}", "link", l->name,
                "host", r->host, "port", r->port, "error", sp_err_name(reason),
                "detail", detail ? detail : "");
  else
    sp_log_debug("redis connect failed", "{s:s, s:s, s:i, s:s, s:s, s:i}", "link",
                 l->name, "host", r->host, "port", r->port, "error",
                 sp_err_name(reason), "detail", detail ? detail : "", "retry_ms",
                 (int)delay);
  uv_timer_start(&l->timer, on_link_timer, delay, 0);
  report_state(r, reason);
}

static void on_pong(redisAsyncContext *ac, void *reply, void *privdata) {
  (void)ac;
  sp_redis_link *l = privdata;
  sp_redis *r = l->r;
  redisReply *rep = reply;
  if (rep == NULL) { /* the context is being freed */
    l->dying = 1;
    return;
  }
  if (l->dying || r->closing)
    return;
  if (rep->type != REDIS_REPLY_STATUS || strcasecmp(rep->str, "PONG") != 0) {
    /* e.g. -LOADING, -NOAUTH, or not a Redis server at all */
    const char *detail = rep->type == REDIS_REPLY_ERROR ? rep->str : "bad PING reply";
    sp_log_debug("redis handshake failed", "{s:s, s:s}", "link", l->name,
                 "detail", detail);
    link_drop(l, rep->type == REDIS_REPLY_ERROR ? SP_ERR_REDIS : SP_ERR_PROTO,
              detail);
    return;
  }
  if (!l->is_sub) {
    link_ready(l);
    return;
  }
  /* Resubscribe everything remembered; the link is ready when the server
   * has confirmed it all. */
  l->state = LINK_SUBSCRIBING;
  l->confirms = 0;
  for (sp_redis_sub *s = r->subs; s; s = s->next) {
    if (s->on_message && !s->sent && sub_send(r, s, 1) == 0) {
      s->sent = 1;
      s->confirm = 1;
      l->confirms++;
    }
  }
  if (l->confirms == 0)
    link_ready(l);
}

static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  (void)ac;
  sp_redis_link *l = privdata;
  sp_redis *r = l->r;
  redisReply *rep = reply;
  if (rep == NULL) {
    l->dying = 1;
    return;
  }
  if (l->dying || r->closing || rep->type != REDIS_REPLY_ARRAY ||
      rep->elements < 3)
    return;
  redisReply **e = rep->element;
  if (e[0]->type != REDIS_REPLY_STRING || e[1]->type != REDIS_REPLY_STRING)
    return;
  const char *kind = e[0]->str;
  int pattern = kind[0] == 'p' || kind[0] == 'P';
  if (strcasecmp(kind, "message") == 0 ||
      (strcasecmp(kind, "pmessage") == 0 && rep->elements >= 4)) {
    redisReply *chan = pattern ? e[2] : e[1];
    redisReply *data = pattern ? e[3] : e[2];
    if (chan->type != REDIS_REPLY_STRING || data->type != REDIS_REPLY_STRING)
      return;
    sp_redis_sub *s = sub_find(r, pattern, e[1]->str);
    if (s && s->on_message)
      s->on_message(chan->str, data->str, data->len, s->arg);
    return; /* s may be gone now */
  }
  if (strcasecmp(kind + pattern, "subscribe") == 0) {
    sp_redis_sub *s = sub_find(r, pattern, e[1]->str);
    if (s && s->confirm) {
      s->confirm = 0;
      l->confirms--;
      sub_maybe_free(r, s);
    }
    if (l->state == LINK_SUBSCRIBING && l->confirms == 0)
      link_ready(l);
  }
  /* (p)unsubscribe answers need nothing: the node is already gone or
   * subscribed again, and hiredis 0.14.1 keeps a callback registered for a
   * name that was unsubscribed and subscribed again in one round trip. */
}

static void on_connect(const redisAsyncContext *cac, int status) {
  int saved_errno = errno;
  sp_redis_link *l = cac->data;
  if (status != REDIS_OK) {
    /* hiredis frees the context when we return */
    link_lost(l, reason_of(cac, saved_errno), cac->c.errstr);
    return;
  }
  l->tcp_up = 1;
  l->state = LINK_PINGING;
  /* An idle link to a host that vanished (no FIN, no RST) is otherwise
   * never noticed; the kernel's keepalive probes turn it into a read error. */
  (void)redisEnableKeepAlive(&l->ac->c);
  /* A failure to queue PING (only on hiredis OOM) is caught by the deadline;
   * freeing the context here would pull it from under hiredis. */
  (void)redisAsyncCommand(l->ac, on_pong, l, "PING");
}

static void on_disconnect(const redisAsyncContext *cac, int status) {
  (void)status;
  sp_redis_link *l = cac->data;
  int reason = l->drop_reason ? l->drop_reason : reason_of(cac, 0);
  link_lost(l, reason, cac->c.err ? cac->c.errstr : NULL);
}

static void link_connect_ip(sp_redis_link *l, const char *ip) {
  sp_redis *r = l->r;
  redisAsyncContext *ac = redisAsyncConnect(ip, r->port);
  int saved_errno = errno;
  if (ac == NULL) {
    link_lost(l, SP_ERR_NOMEM, "redisAsyncConnect failed");
    return;
  }
  if (ac->err) {
    char detail[128];
    snprintf(detail, sizeof detail, "%s", ac->errstr);
    int reason = reason_of(ac, saved_errno);
    redisAsyncFree(ac);
    link_lost(l, reason, detail);
    return;
  }
  ac->data = l;
  if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
    memset(&ac->ev, 0, sizeof ac->ev); /* see the file comment */
    redisAsyncFree(ac);
    link_lost(l, SP_ERR_NOMEM, "redisLibuvAttach failed");
    return;
  }
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  r->pending_close++; /* the adapter's poll handle */
  l->ac = ac;
  l->tcp_up = 0;
  l->dying = 0;
  l->drop_reason = 0;
  l->state = LINK_CONNECTING;
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  redisAsyncSetConnectCallback(ac, on_connect); /* arms the write watch */
}

static int gai_reason(int status) {
  switch (status) {
  case UV_EAI_AGAIN:
    return SP_ERR_AGAIN;
  case UV_EAI_MEMORY:
    return SP_ERR_NOMEM;
  default:
    return SP_ERR_NOENT;
  }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  sp_redis_link *l = SP_REDIS_CONTAINER_OF(req, sp_redis_link, gai);
  sp_redis *r = l->r;
  l->gai_active = 0;
  r->pending_close--; /* never the last: the link's timer is still open */
  if (r->closing) {
    uv_freeaddrinfo(res);
    link_maybe_close_timer(l);
    return;
  }
  if (l->gai_timed_out) {
    uv_freeaddrinfo(res);
    link_lost(l, SP_ERR_TIMEDOUT, "name resolution timed out");
    return;
  }
  if (status < 0) {
    link_lost(l, gai_reason(status), uv_strerror(status));
    return;
  }
  /* Rotate through the addresses on consecutive failures, so one dead
   * address of a name does not keep the link down. */
  unsigned n = 0;
  for (struct addrinfo *a = res; a; a = a->ai_next)
    if (a->ai_family == AF_INET || a->ai_family == AF_INET6)
      n++;
  char ip[INET6_ADDRSTRLEN] = "";
  unsigned want = n ? l->failures % n : 0, i = 0;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    if (a->ai_family != AF_INET && a->ai_family != AF_INET6)
      continue;
    if (i++ != want)
      continue;
    if (a->ai_family == AF_INET)
      uv_ip4_name((const struct sockaddr_in *)a->ai_addr, ip, sizeof ip);
    else
      uv_ip6_name((const struct sockaddr_in6 *)a->ai_addr, ip, sizeof ip);
    break;
  }
  uv_freeaddrinfo(res);
  if (ip[0] == '\0') {
    link_lost(l, SP_ERR_NOENT, "no IPv4/IPv6 address for host");
    return;
  }
  link_connect_ip(l, ip);
}

/* One connection attempt; the timer becomes its deadline. */
static void link_start(sp_redis_link *l) {
  sp_redis *r = l->r;
  l->gai_timed_out = 0;
  uv_timer_start(&l->timer, on_link_timer, r->connect_timeout_ms, 0);
  if (r->host_is_ip) {
    link_connect_ip(l, r->host);
    return;
  }
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(r->loop, &l->gai, on_resolved, r->host, NULL, &hints);
  if (rc < 0) {
    link_lost(l, gai_reason(rc), uv_strerror(rc));
    return;
  }
  l->gai_active = 1;
  r->pending_close++;
  l->state = LINK_RESOLVING;
}

static void link_shutdown(sp_redis_link *l);

static void on_link_timer(uv_timer_t *t) {
  sp_redis_link *l = SP_REDIS_CONTAINER_OF(t, sp_redis_link, timer);
  if (l->r->closing) {
    link_shutdown(l);
    return;
  }
  switch (l->state) {
  case LINK_IDLE:
    link_start(l);
    break;
  case LINK_RESOLVING:
    /* getaddrinfo cannot be interrupted once running: the attempt fails
     * when it returns (or at once if it had not started). */
    l->gai_timed_out = 1;
    uv_cancel((uv_req_t *)&l->gai);
    break;
  case LINK_CONNECTING:
  case LINK_PINGING:
  case LINK_SUBSCRIBING:
    if (l->ac && !l->dying)
      link_drop(l, SP_ERR_TIMEDOUT, "connect timed out");
    break;
  case LINK_READY:
    break;
  }
}

static void link_init(sp_redis *r, sp_redis_link *l, const char *name, int is_sub) {
  memset(l, 0, sizeof *l);
  l->r = r;
  l->name = name;
  l->is_sub = is_sub;
  l->state = LINK_IDLE;
  /* uv_timer_init only fills in the handle: it cannot fail. */
  (void)uv_timer_init(r->loop, &l->timer);
}

static void link_shutdown(sp_redis_link *l) {
  uv_timer_stop(&l->timer);
  if (l->gai_active)
    uv_cancel((uv_req_t *)&l->gai);
  if (l->ac && !l->dying)
    link_drop(l, SP_ERR_CANCELED, NULL);
  link_maybe_close_timer(l);
}

/* ---- public API --------------------------------------------------------- */

int sp_redis_new(uv_loop_t *loop, const sp_redis_opts *opts, sp_redis **out) {
  if (out)
    *out = NULL;
  if (!loop || !opts || !out || !opts->host || !opts->host[0] ||
      strlen(opts->host) > 255 || opts->port < 1 || opts->port > 65535)
    return SP_ERR_INVAL;
  unsigned conn = opts->connect_timeout_ms ? opts->connect_timeout_ms
                                           : SP_REDIS_DEFAULT_CONNECT_MS;
  unsigned bmin = opts->backoff_min_ms ? opts->backoff_min_ms
                                       : SP_REDIS_DEFAULT_BACKOFF_MIN_MS;
  unsigned bmax = opts->backoff_max_ms ? opts->backoff_max_ms
                                       : SP_REDIS_DEFAULT_BACKOFF_MAX_MS;
  if (!opts->backoff_min_ms && bmin > bmax)
    bmin = bmax;
  if (!opts->backoff_max_ms && bmax < bmin)
    bmax = bmin;
  if (bmin > bmax || conn > SP_REDIS_MAX_OPT_MS || bmax > SP_REDIS_MAX_OPT_MS)
    return SP_ERR_INVAL;

  sp_redis *r = sp_calloc(1, sizeof *r);
  if (r == NULL)
    return SP_ERR_NOMEM;
  r->host = sp_strdup(opts->host);
  if (r->host == NULL)
    goto fail_host;
  r->loop = loop;
  r->host_is_ip = is_ip_literal(r->host);
  r->port = opts->port;
  r->connect_timeout_ms = conn;
  r->backoff_min_ms = bmin;
  r->backoff_max_ms = bmax;
  r->on_state = opts->on_state;
  r->state_arg = opts->state_arg;
  r->reported = -1;
  r->rng = uv_hrtime() ^ ((uint64_t)(uintptr_t)r << 16) ^ 0x9e3779b97f4a7c15u;
  if (r->rng == 0)
    r->rng = 1;
  link_init(r, &r->cmd, "cmd", 0);
  link_init(r, &r->sub, "sub", 1);
  r->pending_close = 2; /* the two timers */
  /* First attempts from the loop, so no callback runs inside this call. */
  uv_timer_start(&r->cmd.timer, on_link_timer, 0, 0);
  uv_timer_start(&r->sub.timer, on_link_timer, 0, 0);
  *out = r;
  return 0;

fail_host:
  sp_free(r);
  return SP_ERR_NOMEM;
}

int sp_redis_close(sp_redis *r, void (*done)(void *arg), void *arg) {
  if (r == NULL)
    return SP_ERR_INVAL;
  if (r->closing)
    return SP_ERR_CLOSED;
  r->closing = 1;
  r->done = done;
  r->done_arg = arg;
  /* The contexts are freed from the loop, so no callback runs inside this
   * call; meanwhile every reply callback reports SP_ERR_CANCELED. */
  uv_timer_start(&r->cmd.timer, on_link_timer, 0, 0);
  uv_timer_start(&r->sub.timer, on_link_timer, 0, 0);
  return 0;
}

static void on_cmd_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  sp_redis_req *req = privdata;
  sp_redis *r = req->r;
  redisReply *rep = reply;
  int status;
  if (rep == NULL && r->cmd.ac == ac)
    r->cmd.dying = 1; /* the context is being freed */
  if (r->closing) {
    status = SP_ERR_CANCELED;
    rep = NULL;
  } else if (rep == NULL) {
    status = SP_ERR_NOTCONN;
  } else {
    status = rep->type == REDIS_REPLY_ERROR ? SP_ERR_REDIS : 0;
  }
  sp_redis_reply_cb cb = req->cb;
  void *arg = req->arg;
  sp_free(req);
  if (cb)
    cb(status, rep, arg);
}

/* Commands that would desynchronise hiredis's reply bookkeeping or the
 * connection state the client restores on reconnect. */
static int forbidden_command(const char *name, size_t len) {
  static const char *const names[] = {"SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE",
                                      "PUNSUBSCRIBE", "SSUBSCRIBE", "SUNSUBSCRIBE",
                                      "MONITOR", "QUIT", "RESET", "HELLO", "SELECT"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strlen(names[i]) == len && strncasecmp(names[i], name, len) == 0)
      return 1;
  return 0;
}

int sp_redis_command(sp_redis *r, int argc, const char **argv,
                     const size_t *argvlen, sp_redis_reply_cb cb, void *arg) {
  if (r == NULL || argc < 1 || argv == NULL)
    return SP_ERR_INVAL;
  for (int i = 0; i < argc; i++)
    if (argv[i] == NULL)
      return SP_ERR_INVAL;
  if (forbidden_command(argv[0], argvlen ? argvlen[0] : strlen(argv[0])))
    return SP_ERR_INVAL;
  if (r->closing)
    return SP_ERR_CLOSED;
  sp_redis_link *l = &r->cmd;
  if (l->state != LINK_READY || l->ac == NULL || l->dying)
    return SP_ERR_NOTCONN;
  sp_redis_req *req = sp_malloc(sizeof *req);
  if (req == NULL)
    return SP_ERR_NOMEM;
  req->r = r;
  req->cb = cb;
  req->arg = arg;
  if (redisAsyncCommandArgv(l->ac, on_cmd_reply, req, argc, argv, argvlen) !=
      REDIS_OK) {
    sp_free(req);
    return SP_ERR_NOTCONN;
  }
  return 0;
}

int sp_redis_publish(sp_redis *r, const char *channel, const void *data,
                     size_t len, sp_redis_reply_cb cb, void *arg) {
  if (r == NULL || channel == NULL || (data == NULL && len > 0))
    return SP_ERR_INVAL;
  const char *argv[3] = {"PUBLISH", channel, data ? (const char *)data : ""};
  size_t argvlen[3] = {7, strlen(channel), len};
  return sp_redis_command(r, 3, argv, argvlen, cb, arg);
}

static int subscribe_common(sp_redis *r, int pattern, const char *name,
                            sp_redis_message_cb on_message, void *arg) {
  if (r == NULL || name == NULL || on_message == NULL)
    return SP_ERR_INVAL;
  if (r->closing)
    return SP_ERR_CLOSED;
  sp_redis_sub *s = sub_find(r, pattern, name);
  if (s && s->on_message)
    return SP_ERR_EXIST;
  if (s == NULL) {
    size_t n = strlen(name);
    s = sp_malloc(sizeof *s + n + 1);
    if (s == NULL)
      return SP_ERR_NOMEM;
    memset(s, 0, sizeof *s);
    memcpy(s->name, name, n + 1);
    s->pattern = pattern;
    s->next = r->subs;
    r->subs = s;
  }
  s->on_message = on_message;
  s->arg = arg;
  /* Otherwise it goes out with the next link's handshake. */
  if (sub_link_usable(r) && !s->sent && sub_send(r, s, 1) == 0) {
    s->sent = 1;
    if (r->sub.state == LINK_SUBSCRIBING && !s->confirm) {
      s->confirm = 1;
      r->sub.confirms++;
    }
  }
  return 0;
}

static int unsubscribe_common(sp_redis *r, int pattern, const char *name) {
  if (r == NULL || name == NULL)
    return SP_ERR_INVAL;
  if (r->closing)
    return SP_ERR_CLOSED;
  sp_redis_sub *s = sub_find(r, pattern, name);
  if (s == NULL || s->on_message == NULL)
    return SP_ERR_NOENT;
  s->on_message = NULL;
  s->arg = NULL;
  /* Delivery stops now: on_sub_reply dispatches through our own list. */
  if (s->sent) {
    s->sent = 0;
    if (sub_link_usable(r))
      (void)sub_send(r, s, 0); /* else the link is dying and forgets it */
  }
  sub_maybe_free(r, s);
  return 0;
}

int sp_redis_subscribe(sp_redis *r, const char *channel,
                       sp_redis_message_cb on_message, void *arg) {
  return subscribe_common(r, 0, channel, on_message, arg);
}

int sp_redis_psubscribe(sp_redis *r, const char *pattern,
                        sp_redis_message_cb on_message, void *arg) {
  return subscribe_common(r, 1, pattern, on_message, arg);
}

int sp_redis_unsubscribe(sp_redis *r, const char *channel) {
  return unsubscribe_common(r, 0, channel);
}

int sp_redis_punsubscribe(sp_redis *r, const char *pattern) {
  return unsubscribe_common(r, 1, pattern);
}

int sp_redis_is_connected(const sp_redis *r) {
  return r != NULL && !r->closing && r->cmd.state == LINK_READY &&
         r->sub.state == LINK_READY;
}
