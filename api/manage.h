/* api/manage.h: what the management API files (api_manage*.c) and the
 * maintenance auto-transition (api_maint.c) share.
 *
 * A management request goes through mg_begin (bulkhead, key, rate limit,
 * page scope, page existence, body parsing), then, for a write, waits for
 * its turn on a lane (writes to the same entity run one after another in
 * this process, each computed from the state the previous one left, so two
 * PATCHes of one incident cannot both read the old status), validates its
 * body against the current state, describes the change as intents and hands
 * them to api_write as ONE transaction.  The answer is rendered from the
 * cache after the commit (api_write merges before calling back).
 *
 * Memory: an mg_ctx is sp_calloc'd by mg_begin and freed when the request
 * is answered (mg_reply / mg_error / mg_fail and the write completion); it
 * owns the parsed body, `keep`, and a pool for views (model.h) that is
 * released at the answer.  After a function here answers, the ctx is gone:
 * the caller returns at once.
 *
 * Durable writes (X-Durable: true, api_durable.c): mg_begin checks the
 * header and refuses what cannot be confirmed before anything is written;
 * the 2xx answer of such a request is handed to api_durable_hold instead of
 * being sent, after the lane and the ctx are released as usual.
 */
#ifndef API_MANAGE_H
#define API_MANAGE_H

#include <stdarg.h>

#include "auth.h"
#include "internal.h"
#include "model.h"
#include "routes.h"

/* ---- lanes ------------------------------------------------------------------------- */

typedef struct api_lane api_lane;
typedef struct api_lane_job api_lane_job;
typedef void (*api_lane_fn)(api_lane_job *j);

/* Embedded in whatever waits for its turn (an mg_ctx, a maintenance
 * transition). */
struct api_lane_job {
  api_lane_job *next; /* private */
  api_lane *lane;     /* private */
  api_lane_fn run;    /* private */
};

#define API_LANE_KEY_MAX 160

/* Runs `run(j)` now when no job of `key` is running, else after the jobs
 * queued before it.  The job calls api_lane_leave(j) exactly once when it is
 * finished (the next job then runs, from inside that call).  0, or
 * SP_ERR_NOMEM / SP_ERR_INVAL (key too long) and nothing runs. */
int api_lane_enter(api_lane_job *j, const char *key, api_lane_fn run);
void api_lane_leave(api_lane_job *j);
/* Jobs running or queued (tests, metrics). */
size_t api_lane_pending(void);

/* ---- shared write helpers (also used by api_maint.c) -------------------------------- */

/* A new entity id (12 base-36 characters) into out. */
void api_new_id(api_server *s, char out[CRDT_ID_LEN + 1]);

/* An outbox row {"event","page","kind","payload"}; takes payload.  NULL on
 * out of memory. */
json_t *api_outbox_row(const char *event, const char *page, const char *kind, json_t *payload);

/* Sets component `comp` of `page` to `new_status` (when it differs) with
 * updated_at `now`, appending the intents to ops, the record
 * {code, name ("<Group> - <Component>" inside a group), old_status,
 * new_status} to `affected` (when not NULL), and, when the status changes and
 * `outbox` is not NULL, a component_update outbox row (reference §4).  The
 * component must be alive (checked by the caller).  0 or SP_ERR_NOMEM. */
int api_component_set_status(api_server *s, const char *page, const char *comp,
                             const char *new_status, const char *now, json_t *ops,
                             json_t *affected, json_t *outbox);

/* The payload of an incident/maintenance outbox row: {"incident": {id, name,
 * status, kind, page_id}, "incident_update": {id, status, body},
 * "component_ids": [...]} (the notifier renders the rest from the store).
 * component_ids is copied.  New reference or NULL. */
json_t *api_incident_event(const char *page, const char *inc_id, const char *upd_id,
                           const char *name, const char *status, const char *kind,
                           const char *body, json_t *component_ids);

/* A field of an entity as a pool copy, or NULL (absent, NULL, no memory). */
const char *api_doc_str(api_server *s, sp_pool *pool, const char *page, const char *type,
                        const char *id, const char *field);

/* ---- request context ------------------------------------------------------------------- */

enum {
  MG_PAGE = 1, /* the route has {page_id}: check scope and that the page exists */
  MG_ORG = 2,  /* organisation keys only (403 for page keys) */
  MG_BODY = 4  /* parse the body (JSON or form) */
};

typedef struct mg_ctx mg_ctx;
typedef void (*mg_fn)(mg_ctx *c);

struct mg_ctx {
  api_lane_job job;
  api_server *s;
  sp_http_req *req;
  sp_pool pool; /* views for this request */
  api_auth_key key;
  api_rate rate;
  int rated;    /* rate holds this request's X-RateLimit values */
  char page[65];  /* {page_id}, decoded, ".json" stripped */
  char id[65];    /* the resource's {…_id} */
  char id2[65];   /* incident_update id */
  json_t *body;   /* the request body as an object (or NULL) */
  int form;       /* the body was form-encoded: leaves are strings */
  mg_fn run;      /* the lane step */
  mg_fn done;     /* after a successful write */
  json_t *keep;   /* a value the done step uses (owned) */
  int ok_status;  /* status of the success answer */
  char new_id[65];
  char secret[80];
  char lane_key[API_LANE_KEY_MAX];
  int in_lane;
  int err_status; /* recorded by mg_bad */
  char err_msg[320];
  char err_field[96];
  int durable;          /* X-Durable: true on a write (api_durable.c) */
  uint64_t durable_seq; /* highest sequence number this request wrote */
};

/* Starts a management request: answers it (and returns NULL) when it is
 * refused (503 bulkhead, 401, 429, 403, 404 page, 415/400 body).  The
 * route parameters "page_id", "id" (any other resource id) and
 * "update_id" are copied into page / id / id2. */
mg_ctx *mg_begin(sp_http_req *req, void *app, int flags);

/* Queues `run` on the lane "<page>/<what>" (see above); run answers. */
void mg_lane(mg_ctx *c, const char *page, const char *what, mg_fn run);

/* Answers with a JSON value (taken; NULL = 500 out of memory). */
void mg_reply(mg_ctx *c, int status, json_t *v);
/* Appends o (owned) to the list *arr; when o is NULL (out of memory) or the
 * append fails, drops the whole list (*arr = NULL, so mg_reply answers 500). */
void mg_append(json_t **arr, json_t *o);
/* Answers with no body (204). */
void mg_reply_empty(mg_ctx *c, int status);
/* Answers {"message": ..., "field": ...} (field may be NULL). */
void mg_error(mg_ctx *c, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Records an error for mg_fail and returns -1. */
int mg_bad(mg_ctx *c, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Answers the recorded error. */
void mg_fail(mg_ctx *c);

/* Runs the write (takes ops and outbox); on success calls done(c), which
 * answers; on failure answers 404/409/503/500 itself. */
void mg_write(mg_ctx *c, json_t *ops, json_t *outbox, mg_fn done);

/* "now" in the stored format (api_now_ms). */
const char *mg_now(mg_ctx *c, char buf[40]);

/* ---- body fields -------------------------------------------------------------------------
 * Each getter reads o[name] (o may be NULL: absent): returns 1 when present
 * (*out set; NULL for a null in an MG_NULL field), 0 when absent, or -1 with
 * the error recorded (mg_fail answers it).  Form bodies carry strings only,
 * so there "true"/"false"/"1"/"0" are booleans and "" is null for MG_NULL
 * fields. */
enum {
  MG_REQ = 1,     /* absent -> 422 "<name> is required" */
  MG_NULL = 2,    /* null allowed: returns 1 with *out = NULL */
  MG_NONEMPTY = 4 /* "" -> 422 */
};

/* body[name] as an object.  Absent: NULL without error unless required. */
json_t *mg_wrapper(mg_ctx *c, const char *name, int required, int *err);
int mg_get_str(mg_ctx *c, json_t *o, const char *name, size_t max, int flags, const char **out);
int mg_get_bool(mg_ctx *c, json_t *o, const char *name, int *out);
int mg_get_enum(mg_ctx *c, json_t *o, const char *name, api_enum kind, int flags,
                const char **out);
/* A timestamp, normalised into out (stored format) with its ms. */
int mg_get_time(mg_ctx *c, json_t *o, const char *name, int flags, char out[40],
                uint64_t *ms);
/* An array of id strings (borrowed from the body); a form's single string
 * counts as a one-element list. */
int mg_get_ids(mg_ctx *c, json_t *o, const char *name, json_t **out);
/* A query parameter as an integer in [min, max] (def when absent); values
 * above max are clamped to max when clamp, else 422. */
int mg_query_int(mg_ctx *c, const char *name, long def, long min, long max, int clamp,
                 long *out);
/* A query parameter string (NULL when absent); -1 (422 recorded) when its
 * encoding is bad. */
int mg_query_str(mg_ctx *c, const char *name, const char **out);

/* 1 when s is a client-chosen id we accept: [a-z0-9]{1,32}. */
int mg_id_ok(const char *s);
/* "true"/"false" */
static inline const char *mg_bool_str(int v) { return v ? "true" : "false"; }

/* Writes a compact JSON value's text as a field (e.g. a list of ids). */
void mg_op_set_json(json_t *ops, const char *page, const char *type, const char *id,
                    const char *field, json_t *v);

/* ---- handlers (one file per resource) -------------------------------------------------- */
#define MG_HANDLER(name) void name(sp_http_req *req, void *app)
/* api_manage.c */
MG_HANDLER(mg_pages_list);
MG_HANDLER(mg_pages_create);
MG_HANDLER(mg_page_get);
MG_HANDLER(mg_page_update);
MG_HANDLER(mg_keys_create);
MG_HANDLER(mg_key_revoke);
/* api_manage_components.c */
MG_HANDLER(mg_components_list);
MG_HANDLER(mg_components_create);
MG_HANDLER(mg_component_get);
MG_HANDLER(mg_component_update);
MG_HANDLER(mg_component_delete);
MG_HANDLER(mg_groups_list);
MG_HANDLER(mg_groups_create);
MG_HANDLER(mg_group_get);
MG_HANDLER(mg_group_update);
MG_HANDLER(mg_group_delete);
/* api_manage_incidents.c */
MG_HANDLER(mg_incidents_list);
MG_HANDLER(mg_incidents_unresolved);
MG_HANDLER(mg_incidents_upcoming);
MG_HANDLER(mg_incidents_scheduled);
MG_HANDLER(mg_incidents_active);
MG_HANDLER(mg_incidents_create);
MG_HANDLER(mg_incident_get);
MG_HANDLER(mg_incident_update);
MG_HANDLER(mg_incident_delete);
MG_HANDLER(mg_update_edit);
/* api_manage_subscribers.c */
MG_HANDLER(mg_subscribers_list);
MG_HANDLER(mg_subscribers_create);
MG_HANDLER(mg_subscriber_get);
MG_HANDLER(mg_subscriber_update);
MG_HANDLER(mg_subscriber_delete);
MG_HANDLER(mg_subscribers_unsubscribe);

#endif
