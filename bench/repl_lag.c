/* bench/repl_lag: the replication figures of issue 5, for bench/repl.sh,
 * against a running three-region deployment (statusctl up).
 *
 *   repl_lag lag PORT KEY PAGE RATE SECONDS ADDR0 ADDR1 ADDR2
 *     PAGE "new" makes a page for the run first (KEY must be an org key).
 *     Creates NCOMP components on PAGE (component c in region c % 3) and
 *     waits until every region shows them all publicly.  Then writes at
 *     RATE writes/s for SECONDS, open loop: write i is due at start + i/RATE,
 *     goes to region i % 3 and sets component i % NCOMP's description to
 *     "w<i>" with a PATCH on the management API.  NCOMP is a multiple of 3,
 *     so a component is only ever written from one region and its
 *     description only grows: a region shows write i once the component's
 *     number there is >= i.  Each region's public
 *     GET /pages/{page}/api/v2/components.json is polled on its own
 *     keep-alive connection every POLL_MS.  A sample is the time from the
 *     write's 2xx answer (its commit) to the first poll answer of another
 *     region that shows it (0 when that poll came first): two samples per
 *     write.  After the last write, polling goes on until every sample is
 *     in or DRAIN_S pass; samples never seen count as missing.
 *     Prints: writes=N samples=S p50_ms=X p99_ms=Y max_ms=Z missing=M
 *             errors=E late=L rate=R polls=P poll_ms=I write_p50_ms=A
 *             write_p99_ms=B (the writes' own latency, sent to answered)
 *     (poll_ms: the mean time between polls of one region; a poll waits
 *     for the previous answer, so a loaded API stretches it past POLL_MS
 *     and it bounds the samples' resolution)
 *     (writes: those answered 2xx; late: writes sent more than 10 ms after
 *     they were due, because every connection of their region was still
 *     busy, or a write to the same component was still in flight (writes
 *     of other components go meanwhile); rate:
 *     writes over the time to the last answer, the rate the regions
 *     actually took.  Writes still unsent 1 s after the last was due are
 *     dropped, so an overloaded run still ends.)
 *
 *   repl_lag burst ADDR PORT KEY PAGE MAX_WRITES SECONDS
 *     PATCHes NCOMP components of PAGE (created first) in region ADDR back
 *     to back on BURST_CONNS connections, three fields each, until
 *     MAX_WRITES writes or SECONDS pass.  Prints: writes=N seconds=S rate=R
 *     errors=E
 *
 *   repl_lag catchup SRC_ADDR DST_ADDR PORT SECONDS [DST_CONNINFO]
 *     Reads SRC's GET /_internal/digest "vector" (per origin the highest
 *     contiguous change merged into the API) until it holds still for a
 *     second (at most 15 s), then DST's; takes the origin where DST lags SRC
 *     most, prints "ready" (the caller may now restart DST's replication
 *     daemon), then polls DST's vector every CATCHUP_POLL_MS until
 *     it reaches SRC's value or SECONDS pass.  The rate is counted from the
 *     first poll that shows DST moving, so a daemon's start-up time is not
 *     in it.  With DST_CONNINFO (libpq), DST's sp_vclock[origin] in its
 *     database is timed the same way in the same loop: what the
 *     replication daemon applied, before DST's API merges it.
 *     Prints: origin=O changes=N seconds=S rate=R done=0|1 behind=B
 *             [db_changes=N db_seconds=S db_rate=R]
 *
 * Exit status 0, 1 when setup failed or nothing could be measured, 2 for
 * bad arguments.  Plain sockets and poll(2), responses parsed with
 * http_parser, bodies with jansson; every buffer is bounded (BODY_MAX per
 * connection) and owned by its connection; arrays are freed before exit.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NREG 3
#define NCOMP 60          /* components written; a multiple of NREG */
#define WCONNS 16         /* write connections per region (lag mode) */
#define BURST_CONNS 16    /* write connections in burst mode */
#define POLL_MS 10.0      /* public API poll interval per region */
#define DRAIN_S 5.0       /* how long unseen writes are waited for */
#define CATCHUP_POLL_MS 5 /* digest poll interval */
#define BODY_MAX (1u << 20)
#define MAX_WRITES 200000
#define SCAN_MAX 512 /* due writes looked at per loop (at most NCOMP can go) */

static const char *g_key;
static char g_page[64];
static int g_port;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- one keep-alive HTTP/1.1 connection ------------------------------------ */

typedef struct conn {
  int fd;
  const char *addr;
  int region;
  http_parser parser;
  char out[1024];
  size_t out_len, out_off;
  char *body; /* owned; BODY_MAX + 1 bytes */
  size_t body_len;
  int status, complete, busy, overflow;
  long wid; /* the write in flight, -1 for none */
  double t0;
} conn;

static int on_headers_complete(http_parser *p) {
  conn *c = p->data;
  c->status = (int)p->status_code;
  c->body_len = 0;
  c->overflow = 0;
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  conn *c = p->data;
  if (c->body_len + n > BODY_MAX) {
    c->overflow = 1;
    return 0;
  }
  memcpy(c->body + c->body_len, at, n);
  c->body_len += n;
  return 0;
}

static int on_message_complete(http_parser *p) {
  conn *c = p->data;
  c->body[c->body_len] = '\0';
  c->complete = 1;
  http_parser_pause(p, 1); /* one answer at a time */
  return 0;
}

static http_parser_settings g_settings = {.on_headers_complete = on_headers_complete,
                                          .on_body = on_body,
                                          .on_message_complete = on_message_complete};

static int conn_open(conn *c) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (c->fd < 0)
    return -1;
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)g_port);
  int bad_addr = inet_pton(AF_INET, c->addr, &a.sin_addr) != 1;
  if (bad_addr || (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS)) {
    int e = bad_addr ? EINVAL : errno;
    close(c->fd);
    errno = e;
    c->fd = -1;
    return -1;
  }
  http_parser_init(&c->parser, HTTP_RESPONSE);
  c->parser.data = c;
  return 0;
}

static int conn_init(conn *c, const char *addr, int region) {
  memset(c, 0, sizeof *c);
  c->addr = addr;
  c->region = region;
  c->wid = -1;
  c->body = malloc(BODY_MAX + 1);
  if (c->body == NULL || conn_open(c) != 0) {
    fprintf(stderr, "repl_lag: cannot connect to %s:%d: %s\n", addr, g_port,
            c->body ? strerror(errno) : "out of memory");
    return -1;
  }
  return 0;
}

static void conn_release(conn *c) {
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  free(c->body);
  c->body = NULL;
}

/* Queues a request; body may be NULL (no body, no auth needed). */
static int conn_send(conn *c, const char *method, const char *path, const char *body) {
  int n = snprintf(c->out, sizeof c->out,
                   "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: OAuth %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                   method, path, c->addr, g_key, body ? strlen(body) : 0, body ? body : "");
  if (n < 0 || (size_t)n >= sizeof c->out)
    return -1;
  c->out_len = (size_t)n;
  c->out_off = 0;
  c->complete = 0;
  c->busy = 1;
  c->t0 = now_s();
  return 0;
}

/* Moves bytes after poll(); 0 or -1 when the connection broke. */
static int conn_io(conn *c, short revents) {
  if (revents & (POLLERR | POLLHUP | POLLNVAL))
    if (!(revents & POLLIN))
      return -1;
  if (c->out_off < c->out_len) {
    ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (w > 0)
      c->out_off += (size_t)w;
    else if (!(w < 0 && (errno == EAGAIN || errno == EINTR)))
      return -1;
    return 0;
  }
  char buf[65536];
  ssize_t got = recv(c->fd, buf, sizeof buf, 0);
  if (got == 0)
    return -1;
  if (got < 0)
    return errno == EAGAIN || errno == EINTR ? 0 : -1;
  size_t used = http_parser_execute(&c->parser, &g_settings, buf, (size_t)got);
  if (HTTP_PARSER_ERRNO(&c->parser) == HPE_PAUSED) {
    http_parser_pause(&c->parser, 0);
    if (used != (size_t)got) /* bytes after the answer we asked for: broken */
      return -1;
  } else if (used != (size_t)got) {
    return -1;
  }
  if (c->overflow)
    return -1;
  return 0;
}

static short conn_events(const conn *c) { return c->out_off < c->out_len ? POLLOUT : POLLIN; }

/* One blocking request (setup and digest reads); the status, 0 when it
 * failed.  The body is left in c->body. */
static int conn_call(conn *c, const char *method, const char *path, const char *body) {
  if (c->fd < 0 && conn_open(c) != 0)
    return 0;
  if (conn_send(c, method, path, body) != 0)
    return 0;
  double end = now_s() + 10;
  while (!c->complete && now_s() < end) {
    struct pollfd p = {c->fd, conn_events(c), 0};
    if (poll(&p, 1, 100) < 0 && errno != EINTR)
      break;
    if (p.revents && conn_io(c, p.revents) != 0)
      break;
  }
  c->busy = 0;
  if (!c->complete) {
    close(c->fd);
    c->fd = -1;
    return 0;
  }
  return c->status;
}

/* ---- components ------------------------------------------------------------- */

static char g_comp[NCOMP][64];

static int comp_index(const char *id) {
  for (int i = 0; i < NCOMP; i++)
    if (strcmp(g_comp[i], id) == 0)
      return i;
  return -1;
}

/* Creates the NCOMP components, component i in region i % NREG (conns[r]). */
static int create_components(conn *const *conns, int nconns, const char *tag) {
  char path[256], body[256];
  snprintf(path, sizeof path, "/v1/pages/%s/components", g_page);
  for (int i = 0; i < NCOMP; i++) {
    conn *c = conns[i % nconns];
    snprintf(body, sizeof body,
             "{\"component\":{\"name\":\"%s %d\",\"status\":\"operational\","
             "\"description\":\"w-1\"}}",
             tag, i);
    int st = conn_call(c, "POST", path, body);
    json_t *j = st == 201 || st == 200 ? json_loads(c->body, 0, NULL) : NULL;
    const char *id = json_string_value(json_object_get(j, "id"));
    if (id == NULL) {
      fprintf(stderr, "repl_lag: cannot create a component in %s: %d %.200s\n", c->addr, st,
              c->body);
      json_decref(j);
      return -1;
    }
    snprintf(g_comp[i], sizeof g_comp[i], "%s", id);
    json_decref(j);
  }
  return 0;
}

/* PAGE "new": a page of its own for this run, made in region 0 and waited
 * for in every region, so each run polls a document of NCOMP components
 * (on the demo page every run would add NCOMP more to what is polled and
 * rendered). */
static int new_page(conn *const *conns, double rate) {
  char body[128], path[256];
  snprintf(body, sizeof body, "{\"page\":{\"name\":\"replication lag %.0f/s\"}}", rate);
  int st = conn_call(conns[0], "POST", "/v1/pages", body);
  json_t *j = st == 201 || st == 200 ? json_loads(conns[0]->body, 0, NULL) : NULL;
  const char *id = json_string_value(json_object_get(j, "id"));
  if (id == NULL || strlen(id) >= sizeof g_page) {
    fprintf(stderr, "repl_lag: cannot create a page: %d %.200s\n", st, conns[0]->body);
    json_decref(j);
    return -1;
  }
  snprintf(g_page, sizeof g_page, "%s", id);
  json_decref(j);
  snprintf(path, sizeof path, "/pages/%s/api/v2/components.json", g_page);
  double end = now_s() + 20;
  for (int r = 0; r < NREG; r++) {
    while (conn_call(conns[r], "GET", path, NULL) != 200) {
      if (now_s() >= end) {
        fprintf(stderr, "repl_lag: page %s not in %s after 20 s\n", g_page, conns[r]->addr);
        return -1;
      }
      usleep(20000);
    }
  }
  return 0;
}

/* Reads a components.json body: for each of ours, the number in its
 * description into seq[] (raised only).  The number of ours found, -1 when
 * the body is not a component list. */
static int read_components(const char *body, long *seq) {
  json_t *j = json_loads(body, 0, NULL);
  json_t *list = json_object_get(j, "components");
  if (!json_is_array(list)) {
    json_decref(j);
    return -1;
  }
  int found = 0;
  size_t i;
  json_t *c;
  json_array_foreach(list, i, c) {
    const char *id = json_string_value(json_object_get(c, "id"));
    const char *d = json_string_value(json_object_get(c, "description"));
    int k = id ? comp_index(id) : -1;
    if (k < 0)
      continue;
    found++;
    if (d && d[0] == 'w') {
      long v = strtol(d + 1, NULL, 10);
      if (v > seq[k])
        seq[k] = v;
    }
  }
  json_decref(j);
  return found;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* ---- lag --------------------------------------------------------------------- */

typedef struct write_rec {
  double sent;
  double commit; /* 0 until the 2xx answer */
  double seen[NREG];
  int failed;
} write_rec;

static int run_lag(double rate, double seconds, const char *const *addrs) {
  long nwrites = (long)(rate * seconds);
  if (nwrites < 1 || nwrites > MAX_WRITES)
    return 2;
  static conn wc[NREG][WCONNS], pc[NREG];
  write_rec *w = calloc((size_t)nwrites, sizeof *w);
  double *lat = malloc((size_t)nwrites * NREG * sizeof *lat);
  double *wlat = malloc((size_t)nwrites * sizeof *wlat);
  int rc = 1;
  if (w == NULL || lat == NULL || wlat == NULL)
    goto out_free;
  for (int r = 0; r < NREG; r++) {
    if (conn_init(&pc[r], addrs[r], r) != 0)
      goto out_conns;
    for (int k = 0; k < WCONNS; k++)
      if (conn_init(&wc[r][k], addrs[r], r) != 0)
        goto out_conns;
  }
  conn *setup[NREG] = {&wc[0][0], &wc[1][0], &wc[2][0]};
  if (strcmp(g_page, "new") == 0 && new_page(setup, rate) != 0)
    goto out_conns;
  if (create_components(setup, NREG, "lag") != 0)
    goto out_conns;

  long seq[NREG][NCOMP];
  for (int r = 0; r < NREG; r++)
    for (int k = 0; k < NCOMP; k++)
      seq[r][k] = -2;
  char ppath[256];
  snprintf(ppath, sizeof ppath, "/pages/%s/api/v2/components.json", g_page);
  /* every region shows every component before the clock starts */
  double end = now_s() + 20;
  for (int r = 0; r < NREG; r++) {
    int found = 0;
    while (now_s() < end) {
      if (conn_call(&pc[r], "GET", ppath, NULL) == 200 &&
          (found = read_components(pc[r].body, seq[r])) == NCOMP)
        break;
      usleep(20000);
    }
    if (found != NCOMP) {
      fprintf(stderr, "repl_lag: %s shows %d of %d new components after 20 s\n", addrs[r], found,
              NCOMP);
      goto out_conns;
    }
  }

  /* first: the oldest write not sent yet; next: one past the newest sent */
  long first = 0, next = 0, errors = 0, late = 0, polls = 0, lo[NREG] = {0, 0, 0};
  char busy_comp[NCOMP] = {0};
  double start = now_s(), last_poll[NREG] = {0, 0, 0};
  double write_end = start + seconds + 1, drain_end = 0;
  struct pollfd pfd[NREG * (WCONNS + 1)];
  conn *pcs[NREG * (WCONNS + 1)];
  for (;;) {
    double t = now_s();
    /* due writes go to an idle connection of their region, oldest first;
     * a write whose component still has one in flight waits (two could
     * commit in either order, and the description would no longer only
     * grow) without holding up the writes of other components behind it */
    for (long k = first; k < nwrites && k < first + SCAN_MAX && t < write_end &&
                         start + (double)k / rate <= t;
         k++) {
      if (w[k].sent > 0 || busy_comp[k % NCOMP])
        continue;
      int r = (int)(k % NREG);
      conn *c = NULL;
      for (int q = 0; q < WCONNS && c == NULL; q++)
        if (!wc[r][q].busy && wc[r][q].fd >= 0)
          c = &wc[r][q];
      if (c == NULL)
        continue;
      char path[256], body[128];
      snprintf(path, sizeof path, "/v1/pages/%s/components/%s", g_page, g_comp[k % NCOMP]);
      snprintf(body, sizeof body, "{\"component\":{\"description\":\"w%ld\"}}", k);
      if (t - (start + (double)k / rate) > 0.010)
        late++;
      if (conn_send(c, "PATCH", path, body) != 0)
        break;
      busy_comp[k % NCOMP] = 1;
      w[k].sent = t;
      c->wid = k;
      if (k >= next)
        next = k + 1;
    }
    while (first < nwrites && w[first].sent > 0)
      first++;
    int busy_writes = 0;
    for (int r = 0; r < NREG; r++)
      for (int k = 0; k < WCONNS; k++)
        busy_writes += wc[r][k].busy;
    if ((first >= nwrites || t >= write_end) && busy_writes == 0 && drain_end == 0)
      drain_end = t + DRAIN_S;
    /* done when every committed write is seen everywhere else */
    if (drain_end > 0) {
      int all = 1;
      for (int r = 0; r < NREG && all; r++)
        for (long i = lo[r]; i < next && all; i++)
          if (w[i].commit > 0 && (int)(i % NREG) != r && w[i].seen[r] == 0)
            all = 0;
      if (all || t >= drain_end)
        break;
    }
    for (int r = 0; r < NREG; r++)
      if (!pc[r].busy && pc[r].fd >= 0 && t - last_poll[r] >= POLL_MS / 1000.0) {
        last_poll[r] = t;
        conn_send(&pc[r], "GET", ppath, NULL);
      }
    int n = 0;
    for (int r = 0; r < NREG; r++) {
      for (int k = 0; k < WCONNS; k++)
        if (wc[r][k].busy && wc[r][k].fd >= 0) {
          pcs[n] = &wc[r][k];
          pfd[n++] = (struct pollfd){wc[r][k].fd, conn_events(&wc[r][k]), 0};
        }
      if (pc[r].busy && pc[r].fd >= 0) {
        pcs[n] = &pc[r];
        pfd[n++] = (struct pollfd){pc[r].fd, conn_events(&pc[r]), 0};
      }
    }
    if (poll(pfd, (nfds_t)n, 1) < 0 && errno != EINTR)
      goto out_conns;
    for (int i = 0; i < n; i++) {
      conn *c = pcs[i];
      if (!pfd[i].revents)
        continue;
      if (conn_io(c, pfd[i].revents) != 0) {
        errors++;
        if (c->wid >= 0) {
          w[c->wid].failed = 1;
          busy_comp[c->wid % NCOMP] = 0;
        }
        close(c->fd);
        c->busy = 0;
        c->wid = -1;
        if (conn_open(c) != 0)
          c->fd = -1;
        continue;
      }
      if (!c->complete)
        continue;
      c->busy = 0;
      double at = now_s();
      if (c->wid >= 0) {
        busy_comp[c->wid % NCOMP] = 0;
        if (c->status >= 200 && c->status < 300) {
          w[c->wid].commit = at;
        } else {
          w[c->wid].failed = 1;
          if (errors++ < 3)
            fprintf(stderr, "repl_lag: PATCH answered %d %.200s\n", c->status, c->body);
        }
        c->wid = -1;
        continue;
      }
      /* a poll answer of region r */
      int r = c->region;
      polls++;
      if (c->status != 200 || read_components(c->body, seq[r]) < 0) {
        errors++;
        continue;
      }
      while (lo[r] < next && ((int)(lo[r] % NREG) == r || w[lo[r]].seen[r] > 0 || w[lo[r]].failed))
        lo[r]++;
      for (long k = lo[r]; k < next; k++)
        if ((int)(k % NREG) != r && w[k].seen[r] == 0 && seq[r][k % NCOMP] >= k)
          w[k].seen[r] = at;
    }
  }
  long nlat = 0, missing = 0, committed = 0;
  double last_commit = start;
  for (long i = 0; i < next; i++) {
    if (w[i].commit == 0)
      continue;
    wlat[committed] = (w[i].commit - w[i].sent) * 1000.0;
    committed++;
    if (w[i].commit > last_commit)
      last_commit = w[i].commit;
    for (int r = 0; r < NREG; r++) {
      if ((int)(i % NREG) == r)
        continue;
      if (w[i].seen[r] == 0)
        missing++;
      else
        lat[nlat++] = w[i].seen[r] > w[i].commit ? (w[i].seen[r] - w[i].commit) * 1000.0 : 0;
    }
  }
  qsort(lat, (size_t)nlat, sizeof *lat, cmp_double);
  double p50 = nlat ? lat[(size_t)((double)(nlat - 1) * 0.50)] : 0;
  double p99 = nlat ? lat[(size_t)((double)(nlat - 1) * 0.99)] : 0;
  double mx = nlat ? lat[nlat - 1] : 0;
  qsort(wlat, (size_t)committed, sizeof *wlat, cmp_double);
  double w50 = committed ? wlat[(size_t)((double)(committed - 1) * 0.50)] : 0;
  double w99 = committed ? wlat[(size_t)((double)(committed - 1) * 0.99)] : 0;
  double run = now_s() - start;
  printf("writes=%ld samples=%ld p50_ms=%.1f p99_ms=%.1f max_ms=%.1f missing=%ld errors=%ld "
         "late=%ld rate=%.0f polls=%ld poll_ms=%.1f write_p50_ms=%.1f write_p99_ms=%.1f\n",
         committed, nlat, p50, p99, mx, missing, errors, late,
         last_commit > start ? (double)committed / (last_commit - start) : 0, polls,
         polls ? run * 1000.0 * NREG / (double)polls : 0, w50, w99);
  rc = nlat > 0 ? 0 : 1;
out_conns:
  for (int r = 0; r < NREG; r++) {
    conn_release(&pc[r]);
    for (int k = 0; k < WCONNS; k++)
      conn_release(&wc[r][k]);
  }
out_free:
  free(w);
  free(lat);
  free(wlat);
  return rc;
}

/* ---- burst ------------------------------------------------------------------- */

static int run_burst(const char *addr, long max_writes, double seconds) {
  static conn bc[BURST_CONNS];
  int rc = 1;
  for (int k = 0; k < BURST_CONNS; k++)
    if (conn_init(&bc[k], addr, 0) != 0)
      goto out;
  conn *first = &bc[0];
  if (create_components(&first, 1, "burst") != 0)
    goto out;
  long sent = 0, done = 0, errors = 0;
  double start = now_s(), stop = start + seconds, hard = stop + 5;
  struct pollfd pfd[BURST_CONNS];
  for (;;) {
    double t = now_s();
    int busy = 0;
    for (int k = 0; k < BURST_CONNS; k++) {
      conn *c = &bc[k];
      if (!c->busy && c->fd >= 0 && sent < max_writes && t < stop) {
        char path[256], body[256];
        snprintf(path, sizeof path, "/v1/pages/%s/components/%s", g_page, g_comp[sent % NCOMP]);
        snprintf(body, sizeof body,
                 "{\"component\":{\"name\":\"burst %ld\",\"description\":\"b%ld\","
                 "\"status\":\"%s\"}}",
                 sent, sent, sent % 2 ? "degraded_performance" : "operational");
        if (conn_send(c, "PATCH", path, body) == 0)
          sent++;
      }
      busy += c->busy;
    }
    if (busy == 0 || t >= hard)
      break;
    for (int k = 0; k < BURST_CONNS; k++)
      pfd[k] = (struct pollfd){bc[k].busy ? bc[k].fd : -1, conn_events(&bc[k]), 0};
    if (poll(pfd, BURST_CONNS, 100) < 0 && errno != EINTR)
      break;
    for (int k = 0; k < BURST_CONNS; k++) {
      conn *c = &bc[k];
      if (!pfd[k].revents)
        continue;
      if (conn_io(c, pfd[k].revents) != 0) {
        errors++;
        close(c->fd);
        c->busy = 0;
        if (conn_open(c) != 0)
          c->fd = -1;
        continue;
      }
      if (!c->complete)
        continue;
      c->busy = 0;
      if (c->status >= 200 && c->status < 300)
        done++;
      else if (errors++ < 3)
        fprintf(stderr, "repl_lag: PATCH answered %d %.200s\n", c->status, c->body);
    }
  }
  double el = now_s() - start;
  printf("writes=%ld seconds=%.3f rate=%.0f errors=%ld\n", done, el, el > 0 ? (double)done / el : 0,
         errors);
  rc = done > 0 ? 0 : 1;
out:
  for (int k = 0; k < BURST_CONNS; k++)
    conn_release(&bc[k]);
  return rc;
}

/* ---- catch-up ---------------------------------------------------------------- */

/* The "vector" of addr's digest into v (by origin index); 0 or -1. */
static int read_vector(conn *c, long long *v) {
  if (conn_call(c, "GET", "/_internal/digest", NULL) != 200)
    return -1;
  json_t *j = json_loads(c->body, 0, NULL);
  json_t *vec = json_object_get(j, "vector");
  if (!json_is_object(vec)) {
    json_decref(j);
    return -1;
  }
  memset(v, 0, 64 * sizeof *v);
  const char *k;
  json_t *x;
  json_object_foreach(vec, k, x) {
    long i = strtol(k, NULL, 10);
    if (i >= 0 && i < 64)
      v[i] = (long long)json_integer_value(x);
  }
  json_decref(j);
  return 0;
}

/* sp_vclock[origin] in the database behind conninfo's connection; -1 when
 * it cannot be read. */
static long long db_seq(PGconn *pg, int origin) {
  char q[96];
  snprintf(q, sizeof q, "SELECT coalesce(max(seq), 0) FROM sp_vclock WHERE origin = %d", origin);
  PGresult *r = PQexec(pg, q);
  long long v = -1;
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
    v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  return v;
}

static int run_catchup(const char *src, const char *dst, double seconds, const char *conninfo) {
  static conn sc, dc;
  long long vs[64], vd[64];
  int rc = 1;
  PGconn *pg = NULL;
  if (conninfo) {
    pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
      fprintf(stderr, "repl_lag: %s", PQerrorMessage(pg));
      goto out;
    }
  }
  if (conn_init(&sc, src, 0) != 0 || conn_init(&dc, dst, 1) != 0)
    goto out;
  /* SRC's API merges writes made straight in its database by a poll every
   * half second: its vector is final once it holds still for a second */
  long long prev[64];
  int stable = 0;
  double settle = now_s() + 15;
  if (read_vector(&sc, prev) != 0)
    goto out_read;
  while (!stable && now_s() < settle) {
    usleep(1000000);
    if (read_vector(&sc, vs) != 0)
      goto out_read;
    stable = memcmp(prev, vs, sizeof vs) == 0;
    memcpy(prev, vs, sizeof vs);
  }
  if (read_vector(&dc, vd) != 0)
    goto out_read;
  int o = 0;
  for (int i = 1; i < 64; i++)
    if (vs[i] - vd[i] > vs[o] - vd[o])
      o = i;
  long long target = vs[o], first = -1;
  double t_first = 0, t_done = 0, end = now_s() + seconds;
  if (target <= vd[o]) {
    fprintf(stderr, "repl_lag: %s is not behind %s\n", dst, src);
    goto out;
  }
  long long db_base = pg ? db_seq(pg, o) : -1, db_cur = db_base, db_first = -1;
  double db_t_first = 0, db_t_done = 0;
  printf("ready\n");
  fflush(stdout);
  long long base = vd[o], cur = vd[o];
  while (now_s() < end) {
    if (pg && db_t_done == 0) { /* the database: what the daemon applied */
      long long v = db_seq(pg, o);
      double t = now_s();
      if (v >= 0 && db_first < 0 && v > db_base) {
        db_first = db_cur;
        db_t_first = t - CATCHUP_POLL_MS / 1000.0;
      }
      if (v >= 0)
        db_cur = v;
      if (db_cur >= target)
        db_t_done = t;
    }
    if (read_vector(&dc, vd) == 0) {
      double t = now_s();
      if (first < 0 && vd[o] > base) {
        first = cur; /* the value at the previous poll: the move started after it */
        t_first = t - CATCHUP_POLL_MS / 1000.0;
      }
      cur = vd[o];
      if (cur >= target) {
        t_done = t;
        break;
      }
    }
    usleep(CATCHUP_POLL_MS * 1000);
  }
  double secs = t_done > 0 ? t_done - t_first : now_s() - t_first;
  long long n = (t_done > 0 ? target : cur) - (first < 0 ? base : first);
  printf("origin=%d changes=%lld seconds=%.3f rate=%.0f done=%d behind=%lld", o, n, secs,
         first >= 0 && secs > 0 ? (double)n / secs : 0, t_done > 0, target - base);
  if (pg) {
    double ds = db_t_done > 0 ? db_t_done - db_t_first : 0;
    long long dn = db_first >= 0 ? target - db_first : 0;
    printf(" db_changes=%lld db_seconds=%.3f db_rate=%.0f", dn, ds,
           db_t_done > 0 && ds > 0 ? (double)dn / ds : 0);
  }
  printf("\n");
  rc = first >= 0 ? 0 : 1;
  goto out;
out_read:
  fprintf(stderr, "repl_lag: cannot read the digests of %s and %s\n", src, dst);
out:
  PQfinish(pg);
  conn_release(&sc);
  conn_release(&dc);
  return rc;
}

static int usage(void) {
  fprintf(stderr, "usage: repl_lag lag PORT KEY PAGE RATE SECONDS ADDR0 ADDR1 ADDR2\n"
                  "       repl_lag burst ADDR PORT KEY PAGE MAX_WRITES SECONDS\n"
                  "       repl_lag catchup SRC_ADDR DST_ADDR PORT SECONDS [DST_CONNINFO]\n");
  return 2;
}

static int set_port(const char *s) {
  char *e;
  long p = strtol(s, &e, 10);
  if (*e || p <= 0 || p > 65535)
    return -1;
  g_port = (int)p;
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2)
    return usage();
  if (strcmp(argv[1], "lag") == 0 && argc == 10) {
    double rate = atof(argv[5]), secs = atof(argv[6]);
    if (set_port(argv[2]) || rate <= 0 || rate > 100000 || secs <= 0 || secs > 600 ||
        strlen(argv[4]) >= sizeof g_page)
      return usage();
    g_key = argv[3];
    snprintf(g_page, sizeof g_page, "%s", argv[4]);
    return run_lag(rate, secs, (const char *const *)argv + 7);
  }
  if (strcmp(argv[1], "burst") == 0 && argc == 8) {
    long n = atol(argv[6]);
    double secs = atof(argv[7]);
    if (set_port(argv[3]) || n < 1 || n > 10000000 || secs <= 0 || secs > 600 ||
        strlen(argv[5]) >= sizeof g_page)
      return usage();
    g_key = argv[4];
    snprintf(g_page, sizeof g_page, "%s", argv[5]);
    return run_burst(argv[2], n, secs);
  }
  if (strcmp(argv[1], "catchup") == 0 && (argc == 6 || argc == 7)) {
    double secs = atof(argv[5]);
    if (set_port(argv[4]) || secs <= 0 || secs > 600)
      return usage();
    g_key = "";
    return run_catchup(argv[2], argv[3], secs, argc == 7 ? argv[6] : NULL);
  }
  return usage();
}
