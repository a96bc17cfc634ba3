/* sp_http_conn: the HTTP/1.1 protocol engine of one connection, without
 * I/O.  Bytes go in through sp_http_conn_feed; complete requests queue up
 * and are handed to their handlers one at a time, in order; answers are
 * built whole into the connection's `out` buffer; sp_http.c moves bytes
 * between the socket and these buffers (or the sp_http_conn_mem_* functions
 * do, for tests and the fuzzer).
 *
 * Parsing: http_parser runs over the input and its callbacks copy the
 * target and headers into the request's `head` buffer (each piece followed
 * by a NUL, offsets recorded) and the body into `body`, so input buffers can
 * be reused at once.  The parser is paused at every headers-complete and
 * message-complete, so each execute call covers bytes of one phase: in the
 * head phase the engine feeds at most one byte more than the head limit
 * allows and counts the raw bytes consumed, which makes the 16 KiB limit
 * exact whatever the reads look like.
 *
 * Requests come from a per-server free list and go back to it when
 * answered (their buffers keep their memory, so steady-state requests do
 * not allocate).  A request whose client went away is detached and freed
 * by its late answer instead.
 */
#include "sp_http_internal.h"

#include "sp_alloc.h"
#include "sp_err.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

enum { CB_NONE, CB_URL, CB_FIELD, CB_VALUE };
enum { FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE };
enum { CONN_HDR_NONE, CONN_HDR_CLOSE, CONN_HDR_KEEP_ALIVE };

#define NO_VALUE UINT32_MAX
#define KEEP_BODY_BYTES (64 * 1024) /* larger body buffers are freed */
#define MAX_FREE_REQS 256

static const sp_http_header json_ct[] = {
    {"Content-Type", "application/json"}};

static void req_free(sp_http_req *r) {
  sp_buf_release(&r->head);
  sp_buf_release(&r->body);
  sp_pool_release(&r->pool);
  sp_free(r);
}

static sp_http_req *req_get(sp_http_server *srv) {
  sp_http_req *r = srv->free_reqs;
  if (r) {
    srv->free_reqs = r->next;
    srv->nfree--;
  } else {
    r = sp_malloc(sizeof *r);
    if (r == NULL)
      return NULL;
    /* head and body caps: see sp_http.h; head holds the copied pieces plus
     * their NULs, never more than the raw bytes the limit allows */
    sp_buf_init(&r->head, srv->cfg.max_header_bytes + 16);
    sp_buf_init(&r->body, srv->cfg.max_body_bytes);
    sp_pool_init(&r->pool, r->pool_inline, sizeof r->pool_inline,
                 4 * srv->cfg.max_header_bytes + 65536);
  }
  r->conn = NULL;
  r->next = NULL;
  r->state = REQ_PARSING;
  r->route = NULL;
  r->method = 0;
  r->http_minor = 1;
  r->last_cb = CB_NONE;
  r->keep_alive = 1;
  r->chunked_out = 0;
  r->no_body = 0;
  r->status = 0;
  r->start_ns = 0;
  r->url_off = r->url_len = 0;
  r->target = r->path = r->query = (sp_iov){"", 0};
  r->nhdrs = 0;
  r->nparams = 0;
  r->abort_cb = NULL;
  r->abort_arg = NULL;
  return r;
}

static void req_put(sp_http_server *srv, sp_http_req *r) {
  if (srv->nfree >= MAX_FREE_REQS) {
    req_free(r);
    return;
  }
  sp_buf_reset(&r->head);
  if (r->body.len > KEEP_BODY_BYTES)
    sp_buf_release(&r->body);
  else
    sp_buf_reset(&r->body);
  sp_pool_reset(&r->pool);
  r->next = srv->free_reqs;
  srv->free_reqs = r;
  srv->nfree++;
}

void sp_http_req_pool_drain(sp_http_server *srv) {
  while (srv->free_reqs) {
    sp_http_req *r = srv->free_reqs;
    srv->free_reqs = r->next;
    req_free(r);
  }
  srv->nfree = 0;
}

static size_t req_bytes(const sp_http_req *r) { return r->head.len + r->body.len; }

static void call_hook(sp_http_server *srv, const char *method,
                      const char *route, int status, uint64_t start_ns) {
  if (srv->cfg.on_done == NULL)
    return;
  uint64_t now = uv_hrtime();
  srv->cfg.on_done(srv->cfg.on_done_arg, method, route, status,
                   start_ns && now > start_ns ? now - start_ns : 0);
}

static void hook_req(sp_http_server *srv, const sp_http_req *r, int status) {
  call_hook(srv, http_method_str((enum http_method)r->method),
            r->route ? r->route->pattern : NULL, status, r->start_ns);
}

/* ---- engine state -------------------------------------------------------- */

void sp_http_conn_engine_init(sp_http_conn *c, sp_http_server *srv) {
  c->srv = srv;
  http_parser_init(&c->parser, HTTP_REQUEST);
  /* while parsing is paused `in` holds at most what one read brought;
   * memory-mode callers feed arbitrary amounts, bounded by the pipeline */
  size_t in_max = srv->loop ? 2 * srv->rbuf_size
                            : srv->cfg.max_pipeline_bytes +
                                  srv->cfg.max_header_bytes +
                                  srv->cfg.max_body_bytes + 65536;
  sp_buf_init(&c->in, in_max);
  sp_buf_init(&c->out, srv->cfg.max_output_bytes);
  sp_buf_init(&c->wbuf, srv->cfg.max_output_bytes);
}

void sp_http_conn_engine_release(sp_http_conn *c) {
  sp_buf_release(&c->in);
  sp_buf_release(&c->out);
  sp_buf_release(&c->wbuf);
}

size_t sp_http_conn_queued_output(const sp_http_conn *c) {
  if (!c->writing)
    return c->out.len;
  /* libuv knows how much of the in-flight write is still unsent */
  return c->out.len + uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
}

static int pipeline_full(const sp_http_conn *c) {
  const sp_http_config *cfg = &c->srv->cfg;
  return c->nqueued >= cfg->max_pipeline ||
         c->queued_bytes > cfg->max_pipeline_bytes;
}

static void queue_pop(sp_http_conn *c, sp_http_req *r) {
  /* only the head is ever answered */
  c->qhead = r->next;
  if (c->qhead == NULL)
    c->qtail = NULL;
  c->nqueued--;
  r->next = NULL;
}

void sp_http_conn_drop_queued(sp_http_conn *c) {
  if (c->parsing) {
    req_put(c->srv, c->parsing);
    c->parsing = NULL;
  }
  c->in_body = 0;
  c->stop_parsing = 1;
  c->feed_paused = 0;
  sp_buf_reset(&c->in);
  c->in_off = 0;
  sp_http_req *keep =
      c->qhead && c->qhead->state != REQ_QUEUED ? c->qhead : NULL;
  sp_http_req *r = keep ? keep->next : c->qhead;
  while (r) {
    sp_http_req *next = r->next;
    req_put(c->srv, r);
    r = next;
  }
  c->qhead = c->qtail = keep;
  if (keep)
    keep->next = NULL;
  c->nqueued = keep ? 1 : 0;
  c->queued_bytes = 0;
}

void sp_http_conn_drop_requests(sp_http_conn *c) {
  sp_http_conn_drop_queued(c);
  sp_http_req *r = c->qhead;
  c->qhead = c->qtail = NULL;
  c->nqueued = 0;
  if (r == NULL)
    return;
  /* the handler still owns it: detach, and let the answer free it */
  r->conn = NULL;
  hook_req(c->srv, r, 499);
  if (r->abort_cb)
    r->abort_cb(r, r->abort_arg); /* may answer, which frees r */
}

/* ---- parser callbacks ------------------------------------------------------ */

#define CONN_OF(p) SP_CONTAINER_OF(p, sp_http_conn, parser)

static int cb_fail(sp_http_conn *c, int status, const char *msg) {
  c->cb_status = status;
  c->cb_msg = msg;
  return -1;
}

static int head_add(sp_http_conn *c, sp_http_req *r, const char *at,
                    size_t len, int toobig_status, const char *toobig_msg) {
  int rc = sp_buf_add(&r->head, at, len);
  if (rc == SP_ERR_TOOBIG)
    return cb_fail(c, toobig_status, toobig_msg);
  if (rc)
    return cb_fail(c, 503, "out of memory");
  return 0;
}

/* NUL-terminates the target, name or value the last callback added. */
static int end_piece(sp_http_conn *c, sp_http_req *r) {
  if (r->last_cb == CB_NONE)
    return 0;
  r->last_cb = CB_NONE;
  return head_add(c, r, "", 1, 431, "request header fields too large");
}

static int on_begin(http_parser *p) {
  sp_http_conn *c = CONN_OF(p);
  sp_http_req *r = req_get(c->srv);
  if (r == NULL)
    return cb_fail(c, 503, "out of memory");
  r->conn = c;
  c->parsing = r;
  c->head_start_ms = sp_http_now_ms(c->srv);
  if (c->srv->cfg.on_done)
    r->start_ns = uv_hrtime();
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  sp_http_conn *c = CONN_OF(p);
  sp_http_req *r = c->parsing;
  if (r->last_cb != CB_URL) {
    r->url_off = (uint32_t)r->head.len;
    r->last_cb = CB_URL;
  }
  if (head_add(c, r, at, len, 414, "request target too long"))
    return -1;
  r->url_len += (uint32_t)len;
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  sp_http_conn *c = CONN_OF(p);
  sp_http_req *r = c->parsing;
  if (c->in_body) /* trailers of a chunked body: not kept */
    return 0;
  if (r->last_cb != CB_FIELD) {
    if (end_piece(c, r))
      return -1;
    if (r->nhdrs == SP_HTTP_MAX_HEADERS)
      return cb_fail(c, 431, "too many header fields");
    sp_http_hdr *h = &r->hdrs[r->nhdrs++];
    h->name_off = (uint32_t)r->head.len;
    h->name_len = 0;
    h->val_off = NO_VALUE;
    h->val_len = 0;
    r->last_cb = CB_FIELD;
  }
  if (head_add(c, r, at, len, 431, "request header fields too large"))
    return -1;
  r->hdrs[r->nhdrs - 1].name_len += (uint32_t)len;
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  sp_http_conn *c = CONN_OF(p);
  sp_http_req *r = c->parsing;
  if (c->in_body || r->nhdrs == 0)
    return 0;
  sp_http_hdr *h = &r->hdrs[r->nhdrs - 1];
  if (r->last_cb != CB_VALUE) {
    if (end_piece(c, r)) /* terminates the name */
      return -1;
    h->val_off = (uint32_t)r->head.len;
    r->last_cb = CB_VALUE;
  }
  if (head_add(c, r, at, len, 431, "request header fields too large"))
    return -1;
  h->val_len += (uint32_t)len;
  return 0;
}

/* Splits the target into path and query (head is frozen by now). */
static int parse_target(sp_http_req *r, int is_connect) {
  const char *u = r->head.base + r->url_off;
  size_t n = r->url_len;
  r->target = (sp_iov){u, n};
  if (n == 0)
    return -1;
  if (u[0] == '/') {
    const char *end = u + n;
    const char *hash = memchr(u, '#', n);
    if (hash)
      end = hash;
    const char *q = memchr(u, '?', (size_t)(end - u));
    r->path = (sp_iov){u, (size_t)((q ? q : end) - u)};
    if (q)
      r->query = (sp_iov){q + 1, (size_t)(end - q - 1)};
    return 0;
  }
  if (n == 1 && u[0] == '*') {
    r->path = (sp_iov){u, 1};
    return 0;
  }
  struct http_parser_url pu;
  http_parser_url_init(&pu);
  if (http_parser_parse_url(u, n, is_connect, &pu))
    return -1;
  if (pu.field_set & (1 << UF_PATH))
    r->path = (sp_iov){u + pu.field_data[UF_PATH].off,
                       pu.field_data[UF_PATH].len};
  if (pu.field_set & (1 << UF_QUERY))
    r->query = (sp_iov){u + pu.field_data[UF_QUERY].off,
                        pu.field_data[UF_QUERY].len};
  return 0;
}

static int on_headers_complete(http_parser *p) {
  sp_http_conn *c = CONN_OF(p);
  sp_http_req *r = c->parsing;
  const sp_http_config *cfg = &c->srv->cfg;
  if (end_piece(c, r))
    return -1;
  if (p->http_major != 1)
    return cb_fail(c, 505, "HTTP version not supported");
  r->method = (uint8_t)p->method;
  r->http_minor = (uint8_t)p->http_minor;
  r->keep_alive = http_should_keep_alive(p) ? 1 : 0;
  if (parse_target(r, p->method == HTTP_CONNECT))
    return cb_fail(c, 400, "malformed request target");
  int has_body = (p->flags & F_CHUNKED) ||
                 (p->content_length != UINT64_MAX && p->content_length > 0);
  if (!(p->flags & F_CHUNKED) && p->content_length != UINT64_MAX &&
      p->content_length > cfg->max_body_bytes)
    return cb_fail(c, 413, "request body too large");
  const char *expect = sp_http_req_header(r, "expect");
  if (expect && has_body && strcasecmp(expect, "100-continue") == 0 &&
      c->qhead == NULL && !c->error_status) {
    /* best effort: without it the client just waits a little longer */
    (void)sp_buf_adds(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
  }
  c->in_body = 1;
  http_parser_pause(p, 1);
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  sp_http_conn *c = CONN_OF(p);
  int rc = sp_buf_add(&c->parsing->body, at, len);
  if (rc == SP_ERR_TOOBIG)
    return cb_fail(c, 413, "request body too large");
  if (rc)
    return cb_fail(c, 503, "out of memory");
  return 0;
}

static int on_message_complete(http_parser *p) {
  sp_http_conn *c = CONN_OF(p);
  sp_http_req *r = c->parsing;
  c->parsing = NULL;
  c->in_body = 0;
  c->msg_done = 1;
  r->state = REQ_QUEUED;
  /* an Upgrade we do not speak: answer this one, then stop */
  if (p->upgrade || c->srv->shutting_down)
    r->keep_alive = 0;
  if (!r->keep_alive)
    c->stop_parsing = 1;
  if (c->qtail)
    c->qtail->next = r;
  else
    c->qhead = r;
  c->qtail = r;
  c->nqueued++;
  c->queued_bytes += req_bytes(r);
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- feeding ------------------------------------------------------------- */

static void parse_error(sp_http_conn *c, enum http_errno e) {
  int status = 400;
  const char *msg = http_errno_description(e);
  if (e == HPE_HEADER_OVERFLOW) {
    status = 431;
    msg = "request header fields too large";
  } else if (e >= HPE_CB_message_begin && e <= HPE_CB_chunk_complete) {
    status = c->cb_status ? c->cb_status : 500;
    msg = c->cb_msg ? c->cb_msg : "internal error";
  }
  sp_http_conn_fail(c, status, msg);
}

static void head_too_big(sp_http_conn *c) {
  const sp_http_req *r = c->parsing;
  if (r == NULL)
    sp_http_conn_fail(c, 400, "malformed request");
  else if (r->nhdrs == 0)
    sp_http_conn_fail(c, 414, "request target too long");
  else
    sp_http_conn_fail(c, 431, "request header fields too large");
}

size_t sp_http_conn_feed(sp_http_conn *c, const char *data, size_t len) {
  const size_t max_head = c->srv->cfg.max_header_bytes;
  size_t off = 0;
  int stalls = 0;
  while (off < len) {
    if (c->stop_parsing || c->closed)
      return len;
    if (!c->in_body && c->parsing == NULL && pipeline_full(c)) {
      c->feed_paused = 1;
      return off;
    }
    int head_phase = !c->in_body;
    size_t n = len - off;
    if (head_phase && n > max_head - c->head_raw + 1)
      n = max_head - c->head_raw + 1;
    c->msg_done = 0;
    c->cb_status = 0;
    c->cb_msg = NULL;
    http_parser_pause(&c->parser, 0);
    size_t got = http_parser_execute(&c->parser, &parser_settings, data + off,
                                     n);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    off += got;
    if (head_phase)
      /* a pause at headers-complete leaves the final LF for the next call */
      c->head_raw += got + (c->in_body ? 1 : 0);
    if (e != HPE_OK && e != HPE_PAUSED) {
      parse_error(c, e);
      return len;
    }
    if (c->msg_done) {
      c->head_raw = 0;
      sp_http_conn_run(c);
    } else if (head_phase && c->head_raw > max_head) {
      head_too_big(c);
      return len;
    }
    /* a pause at headers-complete may consume nothing once; never twice */
    if (got == 0 && ++stalls > 2) {
      sp_http_conn_fail(c, 500, "internal error");
      return len;
    } else if (got) {
      stalls = 0;
    }
  }
  return off;
}

/* ---- responses --------------------------------------------------------- */

static size_t put_u64(char *dst, uint64_t v) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (size_t i = 0; i < n; i++)
    dst[i] = tmp[n - 1 - i];
  return n;
}

static const char *reason_phrase(int status) {
  const char *s = http_status_str((enum http_status)status);
  return s[0] == '<' ? "Unknown" : s;
}

static int is_token_char(unsigned char ch) {
  return ch > 32 && ch < 127 && !strchr("()<>@,;:\\\"/[]?={}", ch);
}

static int check_headers(const sp_http_header *h, size_t n) {
  static const char *const reserved[] = {"content-length", "transfer-encoding",
                                         "connection", "date"};
  for (size_t i = 0; i < n; i++) {
    if (h[i].name == NULL || h[i].value == NULL || h[i].name[0] == '\0')
      return SP_ERR_INVAL;
    for (const char *s = h[i].name; *s; s++)
      if (!is_token_char((unsigned char)*s))
        return SP_ERR_INVAL;
    if (strpbrk(h[i].value, "\r\n"))
      return SP_ERR_INVAL;
    for (size_t k = 0; k < sizeof reserved / sizeof reserved[0]; k++)
      if (strcasecmp(h[i].name, reserved[k]) == 0)
        return SP_ERR_INVAL;
  }
  return 0;
}

static int status_has_body(int status) {
  return !(status < 200 || status == 204 || status == 304);
}

/* Appends a whole response (head and, unless `body` is NULL, the body) to
 * c->out in one reservation, so either all of it is queued or nothing. */
static int build_response(sp_http_conn *c, int status, const sp_http_header *h,
                          size_t nh, int framing, uint64_t clen, int conn_hdr,
                          const void *body, size_t blen) {
  if (status < 100 || status > 999)
    return SP_ERR_INVAL;
  const char *reason = reason_phrase(status);
  size_t rlen = strlen(reason);
  sp_iov date = sp_http_date_line(c->srv);
  size_t total = 9 + 4 + rlen + 2 + date.len + 2;
  size_t hl[32];
  for (size_t i = 0; i < nh; i++) {
    size_t nl = strlen(h[i].name), vl = strlen(h[i].value);
    if (i < 32)
      hl[i] = nl;
    total += nl + 2 + vl + 2;
  }
  int with_length = framing == FRAME_LENGTH && status_has_body(status);
  if (with_length)
    total += 16 + 20 + 2;
  if (framing == FRAME_CHUNKED)
    total += 28;
  if (conn_hdr != CONN_HDR_NONE)
    total += 24;
  total += blen;
  if (sp_http_conn_queued_output(c) + total > c->srv->cfg.max_output_bytes)
    return SP_ERR_TOOBIG;
  int rc = sp_buf_grow(&c->out, total);
  if (rc)
    return rc;

  /* capacity is reserved: the appends below cannot fail */
  char line[64];
  memcpy(line, "HTTP/1.1 ", 9);
  size_t n = 9 + put_u64(line + 9, (uint64_t)status);
  line[n++] = ' ';
  sp_buf_add(&c->out, line, n);
  sp_buf_add(&c->out, reason, rlen);
  sp_buf_add(&c->out, "\r\n", 2);
  sp_buf_add(&c->out, date.base, date.len);
  for (size_t i = 0; i < nh; i++) {
    sp_buf_add(&c->out, h[i].name, i < 32 ? hl[i] : strlen(h[i].name));
    sp_buf_add(&c->out, ": ", 2);
    sp_buf_adds(&c->out, h[i].value);
    sp_buf_add(&c->out, "\r\n", 2);
  }
  if (with_length) {
    memcpy(line, "Content-Length: ", 16);
    n = 16 + put_u64(line + 16, clen);
    line[n++] = '\r';
    line[n++] = '\n';
    sp_buf_add(&c->out, line, n);
  }
  if (framing == FRAME_CHUNKED)
    sp_buf_add(&c->out, "Transfer-Encoding: chunked\r\n", 28);
  if (conn_hdr == CONN_HDR_CLOSE)
    sp_buf_add(&c->out, "Connection: close\r\n", 19);
  else if (conn_hdr == CONN_HDR_KEEP_ALIVE)
    sp_buf_add(&c->out, "Connection: keep-alive\r\n", 24);
  sp_buf_add(&c->out, "\r\n", 2);
  if (body && blen)
    sp_buf_add(&c->out, body, blen);
  return 0;
}

/* Whether this response ends the connection; if so nothing after it is
 * answered, so "Connection: close" is always on the last response. */
static int decide_close(sp_http_conn *c, sp_http_req *r) {
  if (r->keep_alive && !c->srv->shutting_down && !c->eof)
    return 0;
  r->keep_alive = 0;
  sp_http_conn_drop_queued(c);
  return 1;
}

static int conn_header(const sp_http_req *r, int close) {
  if (close)
    return CONN_HDR_CLOSE;
  return r->http_minor == 0 ? CONN_HDR_KEEP_ALIVE : CONN_HDR_NONE;
}

/* The answered head request leaves the queue; the next one may start. */
static void req_finish(sp_http_conn *c, sp_http_req *r) {
  hook_req(c->srv, r, r->status);
  queue_pop(c, r);
  req_put(c->srv, r);
  sp_http_conn_run(c);
}

static int error_json(sp_buf *b, const char *msg, const char *field) {
  int rc = sp_buf_adds(b, "{\"message\": \"");
  if (!rc)
    rc = sp_buf_add_json_str(b, msg, strlen(msg));
  if (!rc && field) {
    rc = sp_buf_adds(b, "\", \"field\": \"");
    if (!rc)
      rc = sp_buf_add_json_str(b, field, strlen(field));
  }
  if (!rc)
    rc = sp_buf_adds(b, "\"}");
  return rc;
}

/* After a failed answer: try a 500, else close the connection. */
static void answer_failed(sp_http_conn *c, sp_http_req *r) {
  static const char body[] = "{\"message\": \"internal error\"}";
  r->keep_alive = 0;
  int close = decide_close(c, r);
  r->status = 500;
  int rc = build_response(c, 500, json_ct, 1, FRAME_LENGTH, sizeof body - 1,
                          conn_header(r, close),
                          r->method == HTTP_HEAD ? NULL : body,
                          sizeof body - 1);
  req_finish(c, r);
  if (rc)
    sp_http_conn_close(c);
}

static int respond(sp_http_req *r, int status, const sp_http_header *h,
                   size_t nh, const sp_http_header *h2, size_t nh2,
                   const void *body, size_t len) {
  sp_http_conn *c = r->conn;
  if (c == NULL) {
    req_free(r);
    return SP_ERR_CLOSED;
  }
  if (r->state != REQ_ACTIVE)
    return SP_ERR_INVAL;
  int rc = check_headers(h, nh);
  if (rc == 0 && h2)
    rc = check_headers(h2, nh2);
  if (rc == 0) {
    int close = decide_close(c, r);
    int send_body = r->method != HTTP_HEAD && status_has_body(status);
    /* two header arrays are joined on the stack: only internal callers
     * (405 with Allow) pass h2, with few headers */
    sp_http_header all[8];
    const sp_http_header *hp = h;
    size_t n = nh;
    if (h2) {
      if (nh + nh2 > sizeof all / sizeof all[0]) {
        rc = SP_ERR_INVAL;
        goto failed;
      }
      memcpy(all, h, nh * sizeof *h);
      memcpy(all + nh, h2, nh2 * sizeof *h2);
      hp = all;
      n = nh + nh2;
    }
    rc = build_response(c, status, hp, n, FRAME_LENGTH, len,
                        conn_header(r, close), send_body ? body : NULL,
                        send_body ? len : 0);
  }
failed:
  if (rc) {
    answer_failed(c, r);
    return rc;
  }
  r->status = status;
  req_finish(c, r);
  return 0;
}

int sp_http_respond(sp_http_req *req, int status, const sp_http_header *hdrs,
                    size_t nhdrs, const void *body, size_t len) {
  return respond(req, status, hdrs, nhdrs, NULL, 0, body, len);
}

int sp_http_respond_json(sp_http_req *req, int status, const char *json,
                         size_t len) {
  return respond(req, status, json_ct, 1, NULL, 0, json, len);
}

static int respond_error2(sp_http_req *req, int status, const char *message,
                          const char *field, const sp_http_header *extra,
                          size_t nextra) {
  if (req->conn == NULL) {
    req_free(req);
    return SP_ERR_CLOSED;
  }
  sp_buf b;
  sp_buf_init(&b, 65536);
  int rc = error_json(&b, message ? message : "error", field);
  if (rc) {
    sp_buf_release(&b);
    if (req->state == REQ_ACTIVE)
      answer_failed(req->conn, req);
    return rc;
  }
  rc = respond(req, status, json_ct, 1, extra, nextra, b.base, b.len);
  sp_buf_release(&b);
  return rc;
}

int sp_http_respond_error(sp_http_req *req, int status, const char *message,
                          const char *field) {
  return respond_error2(req, status, message, field, NULL, 0);
}

/* The owed protocol error: the last response on the connection. */
static void write_error(sp_http_conn *c) {
  sp_buf b;
  sp_buf_init(&b, 4096);
  int rc = error_json(&b, c->error_msg, NULL);
  if (rc == 0)
    rc = build_response(c, c->error_status, json_ct, 1, FRAME_LENGTH, b.len,
                        CONN_HDR_CLOSE, b.base, b.len);
  sp_buf_release(&b);
  call_hook(c->srv, c->error_method, NULL, c->error_status,
            c->error_start_ns);
  c->close_after_write = 1;
  if (rc)
    sp_http_conn_close(c);
}

void sp_http_conn_fail(sp_http_conn *c, int status, const char *msg) {
  if (c->error_status || c->closed)
    return;
  c->error_status = status;
  c->error_msg = msg;
  c->error_method = NULL;
  c->error_start_ns = 0;
  if (c->parsing) {
    if (c->parsing->last_cb != CB_NONE || c->parsing->nhdrs)
      c->error_method = http_method_str((enum http_method)c->parser.method);
    c->error_start_ns = c->parsing->start_ns;
  }
  /* requests already complete are still answered, before the error */
  if (c->parsing) {
    req_put(c->srv, c->parsing);
    c->parsing = NULL;
  }
  c->in_body = 0;
  c->stop_parsing = 1;
  c->feed_paused = 0;
  sp_buf_reset(&c->in);
  c->in_off = 0;
  sp_http_conn_run(c);
}

/* ---- streaming ------------------------------------------------------------ */

int sp_http_stream_begin(sp_http_req *req, int status,
                         const sp_http_header *hdrs, size_t nhdrs) {
  sp_http_conn *c = req->conn;
  if (c == NULL) {
    req_free(req);
    return SP_ERR_CLOSED;
  }
  if (req->state != REQ_ACTIVE)
    return SP_ERR_INVAL;
  int rc = check_headers(hdrs, nhdrs);
  if (rc == 0 && !status_has_body(status))
    rc = SP_ERR_INVAL;
  if (rc) {
    answer_failed(c, req);
    return rc;
  }
  /* HTTP/1.0 has no chunked encoding: the body ends when we close */
  int chunked = req->http_minor >= 1;
  if (!chunked)
    req->keep_alive = 0;
  int close = decide_close(c, req);
  rc = build_response(c, status, hdrs, nhdrs,
                      chunked ? FRAME_CHUNKED : FRAME_CLOSE, 0,
                      conn_header(req, close), NULL, 0);
  if (rc) {
    answer_failed(c, req);
    return rc;
  }
  req->status = status;
  req->state = REQ_STREAMING;
  req->chunked_out = chunked;
  req->no_body = req->method == HTTP_HEAD;
  sp_http_conn_io_update(c);
  return 0;
}

int sp_http_stream_write(sp_http_req *req, const void *data, size_t len) {
  sp_http_conn *c = req->conn;
  if (req->state != REQ_STREAMING)
    return SP_ERR_INVAL;
  if (c == NULL)
    return SP_ERR_CLOSED;
  if (len == 0 || req->no_body)
    return 0;
  char hex[32];
  size_t hn = 0;
  if (req->chunked_out)
    hn = (size_t)snprintf(hex, sizeof hex, "%zx\r\n", len);
  size_t total = hn + len + (req->chunked_out ? 2 : 0);
  if (sp_http_conn_queued_output(c) + total > c->srv->cfg.max_output_bytes)
    return SP_ERR_TOOBIG;
  int rc = sp_buf_grow(&c->out, total);
  if (rc)
    return rc;
  sp_buf_add(&c->out, hex, hn);
  sp_buf_add(&c->out, data, len);
  if (req->chunked_out)
    sp_buf_add(&c->out, "\r\n", 2);
  sp_http_conn_io_update(c);
  return 0;
}

size_t sp_http_stream_queued(const sp_http_req *req) {
  return req->conn ? sp_http_conn_queued_output(req->conn) : 0;
}

int sp_http_stream_end(sp_http_req *req) {
  if (req->state != REQ_STREAMING)
    return SP_ERR_INVAL;
  sp_http_conn *c = req->conn;
  if (c == NULL) {
    req_free(req);
    return SP_ERR_CLOSED;
  }
  int rc = 0;
  if (req->chunked_out && !req->no_body)
    rc = sp_buf_add(&c->out, "0\r\n\r\n", 5);
  if (rc) /* the client cannot see a clean end: make it see a close */
    req->keep_alive = 0;
  if (!req->keep_alive)
    sp_http_conn_drop_queued(c);
  req_finish(c, req);
  if (rc)
    sp_http_conn_close(c);
  return rc;
}

int sp_http_stream_abort(sp_http_req *req) {
  sp_http_conn *c = req->conn;
  if (c) {
    req->abort_cb = NULL; /* the caller knows */
    sp_http_conn_close(c); /* detaches req */
  }
  req_free(req);
  return c ? 0 : SP_ERR_CLOSED;
}

/* ---- dispatch ------------------------------------------------------------- */

static int pct_value(int ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

/* Decodes %XX (and '+' as space when `plus`) from s[0..n) into dst, which
 * has room for n + 1 bytes; NUL-terminates.  SP_ERR_PARSE for a bad escape
 * or %00 (the result is a C string). */
static int pct_decode(const char *s, size_t n, char *dst, int plus) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch == '%') {
      if (i + 2 >= n)
        return SP_ERR_PARSE;
      int hi = pct_value((unsigned char)s[i + 1]);
      int lo = pct_value((unsigned char)s[i + 2]);
      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
        return SP_ERR_PARSE;
      dst[o++] = (char)(hi * 16 + lo);
      i += 2;
    } else if (ch == '+' && plus) {
      dst[o++] = ' ';
    } else {
      dst[o++] = ch;
    }
  }
  dst[o] = '\0';
  return 0;
}

static void allow_list(uint64_t mask, char *buf, size_t size) {
  size_t n = 0;
  buf[0] = '\0';
  for (int m = 0; m < 64; m++) {
    if (!(mask & ((uint64_t)1 << m)))
      continue;
    const char *s = http_method_str((enum http_method)m);
    int w = snprintf(buf + n, size - n, "%s%s", n ? ", " : "", s);
    if (w < 0 || (size_t)w >= size - n)
      break;
    n += (size_t)w;
  }
}

static void dispatch(sp_http_conn *c, sp_http_req *r) {
  sp_http_server *srv = c->srv;
  r->state = REQ_ACTIVE;
  c->queued_bytes -= req_bytes(r);
  sp_http_route_match m;
  uint64_t allow;
  if (sp_http_route_find(srv->routes, r->method, r->path, &m, &allow)) {
    if (allow) {
      char list[256];
      allow_list(allow, list, sizeof list);
      sp_http_header h[] = {{"Allow", list}};
      respond_error2(r, 405, "method not allowed", NULL, h, 1);
    } else {
      respond_error2(r, 404, "not found", NULL, NULL, 0);
    }
    return;
  }
  r->route = m.route;
  for (unsigned i = 0; i < m.nparams; i++) {
    sp_iov v = m.params[i].value;
    char *d = sp_pool_alloc(&r->pool, v.len + 1);
    if (d == NULL) {
      sp_http_respond_error(r, 503, "out of memory", NULL);
      return;
    }
    if (pct_decode(v.base, v.len, d, 0)) {
      sp_http_respond_error(r, 400, "malformed percent-encoding in path",
                            NULL);
      return;
    }
    r->params[i].name = m.params[i].name;
    r->params[i].value = d;
  }
  r->nparams = m.nparams;
  m.route->handler(r, srv->app);
}

void sp_http_conn_run(sp_http_conn *c) {
  if (c->running) {
    c->rerun = 1;
    return;
  }
  c->running = 1;
  do {
    c->rerun = 0;
    if (c->closed)
      break;
    sp_http_req *r = c->qhead;
    if (r && r->state == REQ_QUEUED &&
        sp_http_conn_queued_output(c) <= c->srv->cfg.out_high_water) {
      dispatch(c, r);
      c->rerun = 1;
      continue;
    }
    if (r == NULL && !c->close_after_write) {
      if (c->error_status)
        write_error(c);
      else if (c->stop_parsing && c->parsing == NULL)
        c->close_after_write = 1;
    }
    if (c->feed_paused && !c->stop_parsing && !pipeline_full(c)) {
      c->feed_paused = 0;
      size_t got = sp_http_conn_feed(c, c->in.base + c->in_off,
                                     c->in.len - c->in_off);
      c->in_off += got;
      if (c->in_off >= c->in.len) {
        sp_buf_reset(&c->in);
        c->in_off = 0;
      }
      c->rerun = 1;
    }
  } while (c->rerun && !c->closed);
  c->running = 0;
  if (!c->closed)
    sp_http_conn_io_update(c);
}

/* ---- request accessors ------------------------------------------------------ */

const char *sp_http_req_method(const sp_http_req *req) {
  return http_method_str((enum http_method)req->method);
}

sp_iov sp_http_req_target(const sp_http_req *req) { return req->target; }
sp_iov sp_http_req_path(const sp_http_req *req) { return req->path; }
sp_iov sp_http_req_query(const sp_http_req *req) { return req->query; }

const char *sp_http_req_route(const sp_http_req *req) {
  return req->route ? req->route->pattern : NULL;
}

const char *sp_http_req_header(const sp_http_req *req, const char *name) {
  for (unsigned i = 0; i < req->nhdrs; i++) {
    const sp_http_hdr *h = &req->hdrs[i];
    if (strcasecmp(req->head.base + h->name_off, name) == 0)
      return h->val_off == NO_VALUE ? "" : req->head.base + h->val_off;
  }
  return NULL;
}

size_t sp_http_req_header_count(const sp_http_req *req) { return req->nhdrs; }

int sp_http_req_header_at(const sp_http_req *req, size_t i, const char **name,
                          const char **value) {
  if (i >= req->nhdrs)
    return SP_ERR_RANGE;
  const sp_http_hdr *h = &req->hdrs[i];
  *name = req->head.base + h->name_off;
  *value = h->val_off == NO_VALUE ? "" : req->head.base + h->val_off;
  return 0;
}

const char *sp_http_req_param(const sp_http_req *req, const char *name) {
  for (unsigned i = 0; i < req->nparams; i++)
    if (sp_iov_eq(req->params[i].name, name))
      return req->params[i].value;
  return NULL;
}

/* 1 when the encoded key s[0..n) decodes to `name`. */
static int key_equals(const char *s, size_t n, const char *name) {
  size_t j = 0;
  for (size_t i = 0; i < n; i++, j++) {
    int ch = (unsigned char)s[i];
    if (ch == '%') {
      if (i + 2 >= n)
        return 0;
      int hi = pct_value((unsigned char)s[i + 1]);
      int lo = pct_value((unsigned char)s[i + 2]);
      if (hi < 0 || lo < 0)
        return 0;
      ch = hi * 16 + lo;
      i += 2;
    } else if (ch == '+') {
      ch = ' ';
    }
    if (name[j] == '\0' || (unsigned char)name[j] != ch)
      return 0;
  }
  return name[j] == '\0';
}

int sp_http_req_query_param(sp_http_req *req, const char *name,
                            const char **value) {
  const char *q = req->query.base, *end = q + req->query.len;
  while (q < end) {
    const char *amp = memchr(q, '&', (size_t)(end - q));
    if (amp == NULL)
      amp = end;
    const char *eq = memchr(q, '=', (size_t)(amp - q));
    const char *kend = eq ? eq : amp;
    if (key_equals(q, (size_t)(kend - q), name)) {
      const char *v = eq ? eq + 1 : amp;
      size_t vlen = (size_t)(amp - v);
      char *d = sp_pool_alloc(&req->pool, vlen + 1);
      if (d == NULL)
        return SP_ERR_NOMEM;
      if (pct_decode(v, vlen, d, 1))
        return SP_ERR_PARSE;
      *value = d;
      return 0;
    }
    q = amp + 1;
  }
  return SP_ERR_NOENT;
}

sp_iov sp_http_req_body(const sp_http_req *req) {
  return (sp_iov){req->body.base, req->body.len};
}

int sp_http_req_json(const sp_http_req *req, json_t **out, char *err,
                     size_t errsz) {
  *out = NULL;
  if (req->body.len == 0) {
    if (err && errsz)
      snprintf(err, errsz, "request body is empty");
    return SP_ERR_PARSE;
  }
  json_error_t je;
  json_t *j = json_loadb(req->body.base, req->body.len, 0, &je);
  if (j == NULL) {
    if (err && errsz)
      snprintf(err, errsz, "malformed JSON at line %d, column %d: %s",
               je.line, je.column, je.text);
    return SP_ERR_PARSE;
  }
  *out = j;
  return 0;
}

sp_pool *sp_http_req_pool(sp_http_req *req) { return &req->pool; }

void sp_http_req_on_abort(sp_http_req *req, sp_http_abort_cb cb, void *arg) {
  req->abort_cb = cb;
  req->abort_arg = arg;
}
