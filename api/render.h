/* api/render.h: the pre-rendered documents of every page (api_render.c).
 *
 * For each page the cache keeps one rendered body per public document
 * (Statuspage v2 JSON shapes and the HTML page) with its weak ETag.  The
 * cache calls api_render_page after changes touch a page; readers take a
 * reference with api_render_get and never wait for rendering or for
 * PostgreSQL. */
#ifndef API_RENDER_H
#define API_RENDER_H

#include "internal.h"

typedef enum api_doc_kind {
  API_DOC_SUMMARY = 0,     /* /api/v2/summary.json */
  API_DOC_STATUS,          /* /api/v2/status.json */
  API_DOC_COMPONENTS,      /* /api/v2/components.json */
  API_DOC_INCIDENTS,       /* /api/v2/incidents.json (50 newest) */
  API_DOC_UNRESOLVED,      /* /api/v2/incidents/unresolved.json */
  API_DOC_MAINTENANCES,    /* /api/v2/scheduled-maintenances.json (50 newest) */
  API_DOC_MAINT_UPCOMING,  /* /api/v2/scheduled-maintenances/upcoming.json */
  API_DOC_MAINT_ACTIVE,    /* /api/v2/scheduled-maintenances/active.json */
  API_DOC_HTML,            /* the HTML status page */
  API_DOC_COUNT
} api_doc_kind;

/* Re-renders every document of `page` from s->doc (or drops them when the
 * page no longer exists).  Keeps the old documents on allocation failure. */
void api_render_page(api_server *s, const char *page);
/* Renders every page (start-up).  0 or SP_ERR_NOMEM. */
int api_render_all(api_server *s);
/* A new reference to a page's document (api_doc_unref when done), or NULL
 * for an unknown page. */
api_doc *api_render_get(api_server *s, const char *page, api_doc_kind kind);
/* The page id whose custom domain is `host` (port stripped by the caller),
 * or NULL.  Borrowed until the next render. */
const char *api_render_page_for_domain(api_server *s, const char *host);
void api_render_free(api_server *s);

#endif
