/* api_lane: per-entity write serialisation for statusd-api's writers (the
 * management handlers and the maintenance auto-transition; declared in
 * manage.h).
 *
 * A lane is a FIFO of jobs sharing a key such as "<page>/incident/<id>":
 * the first job runs at once, the others when the one before them leaves.
 * Writers compute their intents from the cache when their turn comes, so a
 * write never starts from a state another write of the same entity is about
 * to replace (two concurrent PATCHes of one incident would otherwise both
 * read the old status and affected list).  Different keys never wait for
 * each other.
 *
 * Memory: jobs are embedded in their owners (never freed here); a lane is
 * sp_malloc'd when its first job enters and freed when its last leaves.
 * The list of active lanes is module state (at most one lane per job
 * running or queued, which the management bulkhead bounds).
 */
#include "manage.h"

#include <stdio.h>
#include <string.h>

#include "sp_alloc.h"

struct api_lane {
  api_lane *next;
  api_lane_job *head, *tail; /* head is running */
  char key[API_LANE_KEY_MAX];
};

/* Lanes with a running job (module state: one list per process). */
static struct {
  api_lane *lanes;
  size_t pending;
} g_lanes;

int api_lane_enter(api_lane_job *j, const char *key, api_lane_fn run) {
  if (strlen(key) >= API_LANE_KEY_MAX)
    return SP_ERR_INVAL;
  j->next = NULL;
  j->run = run;
  for (api_lane *l = g_lanes.lanes; l; l = l->next) {
    if (strcmp(l->key, key) == 0) {
      j->lane = l;
      l->tail->next = j;
      l->tail = j;
      g_lanes.pending++;
      return 0;
    }
  }
  api_lane *l = sp_calloc(1, sizeof *l);
  if (l == NULL)
    return SP_ERR_NOMEM;
  snprintf(l->key, sizeof l->key, "%s", key);
  l->head = l->tail = j;
  l->next = g_lanes.lanes;
  g_lanes.lanes = l;
  j->lane = l;
  g_lanes.pending++;
  run(j);
  return 0;
}

void api_lane_leave(api_lane_job *j) {
  api_lane *l = j->lane;
  if (l == NULL || l->head != j)
    return; /* not running: a misuse we refuse to act on */
  j->lane = NULL;
  g_lanes.pending--;
  l->head = j->next;
  if (l->head == NULL) {
    for (api_lane **pp = &g_lanes.lanes; *pp; pp = &(*pp)->next) {
      if (*pp == l) {
        *pp = l->next;
        break;
      }
    }
    sp_free(l);
    return;
  }
  api_lane_job *next = l->head;
  next->run(next);
}

size_t api_lane_pending(void) { return g_lanes.pending; }

