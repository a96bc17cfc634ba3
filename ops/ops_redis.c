/* ops_redis: the Redis server of each region of the local deployment.
 *
 * Redis carries only transient traffic here (the change events statusd-api
 * processes exchange, later SSE fan-out); everything durable is in
 * PostgreSQL, so the server runs without persistence.  It listens on the
 * region's Redis address and port only, with its working directory in the
 * region's redis dir, logging to stdout (statusctl appends that to the
 * region's log).
 *
 * The argv lives in the caller's ops_redis_argv; nothing is allocated.
 */
#include "ops.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

void ops_redis_argv_init(const ops_ctx *c, const sp_topo_region *r, ops_redis_argv *store) {
  ops_proc_program(c, OPS_REDIS, store->prog, sizeof store->prog);
  snprintf(store->port, sizeof store->port, "%u", (unsigned)r->redis.port);
  char **a = store->argv;
  int n = 0;
  a[n++] = store->prog;
  a[n++] = "--bind";
  a[n++] = (char *)r->redis.host;
  a[n++] = "--port";
  a[n++] = store->port;
  a[n++] = "--dir";
  a[n++] = (char *)r->redis_dir;
  a[n++] = "--daemonize";
  a[n++] = "no";
  a[n++] = "--save";
  a[n++] = "";
  a[n++] = "--appendonly";
  a[n++] = "no";
  a[n++] = "--logfile";
  a[n++] = "";
  a[n] = NULL;
}

int ops_redis_ping(const sp_topo_region *r) {
  struct timeval tv = {1, 0};
  redisContext *rc = redisConnectWithTimeout(r->redis.host, r->redis.port, tv);
  if (rc == NULL)
    return 0;
  int ok = 0;
  if (rc->err == 0) {
    redisSetTimeout(rc, tv);
    redisReply *reply = redisCommand(rc, "PING");
    ok = reply && reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "PONG") == 0;
    if (reply)
      freeReplyObject(reply);
  }
  redisFree(rc);
  return ok;
}
