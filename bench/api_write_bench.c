/* bench/api_write_bench: incident updates per second through statusd-api's
 * management API, for bench/api.sh.
 *
 *   api_write_bench PORT KEY [CONNECTIONS [MAX_UPDATES [SECONDS]]]
 *
 * Creates a page on 127.0.0.1:PORT with the organisation key KEY, one open
 * incident per connection, then drives CONNECTIONS keep-alive connections
 * (default 16), each sending PATCH /v1/pages/{p}/incidents/{i} with a new
 * body back to back, until MAX_UPDATES updates (default 20000) or SECONDS
 * (default 5) have passed.  Every 10th update of an incident resolves it and
 * the connection opens a fresh incident (a POST, neither timed nor counted),
 * so incidents keep a realistic size while the run goes on.  Each PATCH adds
 * one incident update (reference §2.6).
 *
 * Prints one line:
 *   updates=N seconds=S rate=R p50_ms=X p99_ms=Y errors=E creates=C
 * Latency is from the first byte sent to the last byte of the answer.
 * Non-200 answers and broken connections count as errors (a broken
 * connection is reopened).  Exit status 0, 1 when setup failed.
 *
 * Plain sockets and poll(2); responses parsed with http_parser.  Memory:
 * every buffer is fixed-size inside `conn` or the latency array.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <jansson.h>
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

#define MAX_CONNS 256
#define ROTATE 10 /* updates per incident before it is resolved */

static int g_port;
static const char *g_key;
static char g_page[64];

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int connect_api(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)g_port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int format_request(char *out, size_t cap, const char *method, const char *path,
                          const char *body, int keep_alive) {
  int n = snprintf(out, cap,
                   "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: OAuth %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n%s",
                   method, path, g_key, strlen(body), keep_alive ? "" : "Connection: close\r\n",
                   body);
  return n > 0 && (size_t)n < cap ? n : -1;
}

/* Setup call: one request, Connection: close, read to EOF.  Returns the
 * status (0 on failure) and the "id" of the JSON answer in id. */
static int setup_call(const char *method, const char *path, const char *body, char *id,
                      size_t idlen) {
  char req[4096], resp[65536];
  int n = format_request(req, sizeof req, method, path, body, 0);
  int fd = connect_api();
  if (n < 0 || fd < 0) {
    if (fd >= 0)
      close(fd);
    return 0;
  }
  size_t len = 0;
  if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
    close(fd);
    return 0;
  }
  for (;;) {
    ssize_t r = recv(fd, resp + len, sizeof resp - 1 - len, 0);
    if (r <= 0)
      break;
    len += (size_t)r;
    if (len == sizeof resp - 1)
      break;
  }
  close(fd);
  resp[len] = '\0';
  char *b = strstr(resp, "\r\n\r\n");
  if (strncmp(resp, "HTTP/1.1 ", 9) != 0 || b == NULL)
    return 0;
  int status = atoi(resp + 9);
  json_t *j = json_loads(b + 4, 0, NULL);
  const char *v = json_string_value(json_object_get(j, "id"));
  if (v && id)
    snprintf(id, idlen, "%s", v);
  if (v == NULL && id)
    id[0] = '\0';
  if (status >= 300)
    fprintf(stderr, "api_write_bench: %s %s -> %d %s\n", method, path, status, b + 4);
  json_decref(j);
  return status;
}

/* ---- the run ------------------------------------------------------------------- */

typedef struct conn {
  int fd;
  http_parser parser;
  char out[2048];
  size_t out_len, out_off;
  char body[16384]; /* answer body, for the id of a created incident */
  size_t body_len;
  int status, complete, is_patch;
  char inc[64];
  int on_inc; /* updates sent to the current incident */
  double t0;
} conn;

static conn g_conns[MAX_CONNS];
static double *g_lat;
static long g_lat_n, g_lat_cap;
static long g_updates, g_errors, g_creates, g_seq;

static int on_headers_complete(http_parser *p) {
  conn *c = p->data;
  c->status = (int)p->status_code;
  c->body_len = 0;
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  conn *c = p->data;
  if (c->body_len + n < sizeof c->body) {
    memcpy(c->body + c->body_len, at, n);
    c->body_len += n;
  }
  return 0;
}

static int on_message_complete(http_parser *p) {
  conn *c = p->data;
  c->complete = 1;
  return 0;
}

static http_parser_settings g_settings = {.on_headers_complete = on_headers_complete,
                                          .on_body = on_body,
                                          .on_message_complete = on_message_complete};

/* Prepares the connection's next request: a PATCH, or a POST when its
 * incident is done. */
static void next_request(conn *c) {
  char path[256], body[256];
  if (c->inc[0] == '\0') {
    snprintf(path, sizeof path, "/v1/pages/%s/incidents", g_page);
    snprintf(body, sizeof body,
             "{\"incident\":{\"name\":\"Bench incident %ld\",\"status\":\"investigating\","
             "\"body\":\"opened\"}}",
             ++g_seq);
    c->is_patch = 0;
    c->out_len = (size_t)format_request(c->out, sizeof c->out, "POST", path, body, 1);
  } else {
    snprintf(path, sizeof path, "/v1/pages/%s/incidents/%s", g_page, c->inc);
    if (c->on_inc + 1 >= ROTATE)
      snprintf(body, sizeof body, "{\"incident\":{\"status\":\"resolved\",\"body\":\"resolved\"}}");
    else
      snprintf(body, sizeof body, "{\"incident\":{\"body\":\"update %ld of the bench\"}}",
               ++g_seq);
    c->is_patch = 1;
    c->out_len = (size_t)format_request(c->out, sizeof c->out, "PATCH", path, body, 1);
  }
  c->out_off = 0;
  c->complete = 0;
  c->t0 = now_s();
}

static int open_conn(conn *c) {
  c->fd = connect_api();
  if (c->fd < 0)
    return -1;
  http_parser_init(&c->parser, HTTP_RESPONSE);
  c->parser.data = c;
  return 0;
}

static void finished(conn *c) {
  if (c->is_patch) {
    if (c->status == 200) {
      g_updates++;
      if (g_lat_n < g_lat_cap)
        g_lat[g_lat_n++] = (now_s() - c->t0) * 1000.0;
      if (++c->on_inc >= ROTATE) {
        c->inc[0] = '\0';
        c->on_inc = 0;
      }
    } else {
      g_errors++;
    }
  } else {
    g_creates++;
    c->body[c->body_len < sizeof c->body ? c->body_len : sizeof c->body - 1] = '\0';
    json_t *j = c->status == 201 ? json_loads(c->body, 0, NULL) : NULL;
    const char *id = json_string_value(json_object_get(j, "id"));
    if (id)
      snprintf(c->inc, sizeof c->inc, "%s", id);
    else
      g_errors++;
    json_decref(j);
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s PORT KEY [CONNECTIONS [MAX_UPDATES [SECONDS]]]\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  g_port = atoi(argv[1]);
  g_key = argv[2];
  int nconns = argc > 3 ? atoi(argv[3]) : 16;
  long max_updates = argc > 4 ? atol(argv[4]) : 20000;
  double seconds = argc > 5 ? atof(argv[5]) : 5;
  if (g_port <= 0 || nconns < 1 || nconns > MAX_CONNS || max_updates < 1 || seconds <= 0 ||
      seconds > 600) {
    fprintf(stderr, "api_write_bench: bad arguments\n");
    return 2;
  }

  /* a page of its own, so the read bench's page is untouched */
  char dom[64];
  snprintf(dom, sizeof dom, "write-%d.bench.test", (int)getpid());
  char body[512];
  snprintf(body, sizeof body,
           "{\"page\":{\"name\":\"Write bench\",\"domain\":\"%s\",\"url\":\"https://%s\"}}", dom,
           dom);
  if (setup_call("POST", "/v1/pages", body, g_page, sizeof g_page) != 201 || !g_page[0]) {
    fprintf(stderr, "api_write_bench: cannot create the page\n");
    return 1;
  }
  g_lat_cap = max_updates;
  g_lat = malloc((size_t)g_lat_cap * sizeof *g_lat);
  if (g_lat == NULL)
    return 1;
  for (int i = 0; i < nconns; i++) {
    char path[128];
    snprintf(path, sizeof path, "/v1/pages/%s/incidents", g_page);
    snprintf(body, sizeof body,
             "{\"incident\":{\"name\":\"Bench %d\",\"status\":\"investigating\","
             "\"body\":\"opened\"}}",
             i);
    if (setup_call("POST", path, body, g_conns[i].inc, sizeof g_conns[i].inc) != 201) {
      fprintf(stderr, "api_write_bench: cannot create an incident\n");
      return 1;
    }
    if (open_conn(&g_conns[i])) {
      fprintf(stderr, "api_write_bench: cannot connect: %s\n", strerror(errno));
      return 1;
    }
  }

  struct pollfd pfd[MAX_CONNS];
  double start = now_s(), stop_at = start + seconds;
  long sent = 0;
  int active = 0;
  for (int i = 0; i < nconns; i++) {
    next_request(&g_conns[i]);
    sent += g_conns[i].is_patch;
    active++;
  }
  /* drain: after the limits, no new requests; wait for answers (5 s max) */
  double hard_stop = stop_at + 5;
  while (active > 0 && now_s() < hard_stop) {
    for (int i = 0; i < nconns; i++) {
      conn *c = &g_conns[i];
      pfd[i].fd = c->fd >= 0 && c->out_len ? c->fd : -1;
      pfd[i].events = c->out_off < c->out_len ? POLLOUT : POLLIN;
      pfd[i].revents = 0;
    }
    int r = poll(pfd, (nfds_t)nconns, 100);
    if (r < 0 && errno != EINTR)
      break;
    for (int i = 0; i < nconns && r > 0; i++) {
      conn *c = &g_conns[i];
      if (!pfd[i].revents)
        continue;
      int broken = 0;
      if (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w > 0)
          c->out_off += (size_t)w;
        else if (!(w < 0 && (errno == EAGAIN || errno == EINTR)))
          broken = 1;
      } else {
        char buf[16384];
        ssize_t got = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (got > 0) {
          size_t used = http_parser_execute(&c->parser, &g_settings, buf, (size_t)got);
          if (used != (size_t)got)
            broken = 1;
        } else if (!(got < 0 && (errno == EAGAIN || errno == EINTR))) {
          broken = 1;
        }
      }
      if (broken) {
        g_errors++;
        close(c->fd);
        c->fd = -1;
        if (now_s() < stop_at && open_conn(c) == 0) {
          next_request(c);
        } else {
          c->out_len = 0;
          active--;
        }
        continue;
      }
      if (c->complete) {
        finished(c);
        if (now_s() < stop_at && sent < max_updates) {
          next_request(c);
          sent += c->is_patch;
        } else {
          c->out_len = 0;
          active--;
        }
      }
    }
  }
  double elapsed = now_s() - start;
  for (int i = 0; i < nconns; i++)
    if (g_conns[i].fd >= 0)
      close(g_conns[i].fd);
  qsort(g_lat, (size_t)g_lat_n, sizeof *g_lat, cmp_double);
  double p50 = g_lat_n ? g_lat[(size_t)((double)(g_lat_n - 1) * 0.50)] : 0;
  double p99 = g_lat_n ? g_lat[(size_t)((double)(g_lat_n - 1) * 0.99)] : 0;
  printf("updates=%ld seconds=%.3f rate=%.0f p50_ms=%.3f p99_ms=%.3f errors=%ld creates=%ld\n",
         g_updates, elapsed, elapsed > 0 ? (double)g_updates / elapsed : 0, p50, p99, g_errors,
         g_creates);
  free(g_lat);
  return 0;
}
