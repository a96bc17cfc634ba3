/* ops_down: `statusctl down [--purge [--force]]`.
 *
 * Stops every process `up` started, found through the PID files: the
 * services first (statusd-replicad, statusd-api), then Redis, then
 * PostgreSQL (SIGINT: fast shutdown, data kept), each tier signalled in
 * every region at once and then waited for; SIGKILL after OPS_STOP_MS.
 *
 * --purge then removes the topology's state_dir, and nothing else: only
 * when it lies inside the repository's var/ (or with --force), is not "/"
 * nor holds statusctl itself, and contains nothing but what `up` makes
 * there (region directories, tls/, statusctl.json, statusctl.lock).  Those checks run
 * before anything is stopped, so a refused purge changes nothing.
 */
#include "ops.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "sp_err.h"

/* 1 when `name` (an entry of state_dir) is something `up` makes there. */
static int ours(const sp_topo *t, const char *name) {
  if (strcmp(name, "tls") == 0 || strcmp(name, "statusctl.json") == 0 ||
      strcmp(name, "statusctl.lock") == 0)
    return 1;
  /* a state file being replaced when `up` was interrupted */
  if (strncmp(name, "statusctl.json.tmp", 18) == 0)
    return 1;
  return sp_topo_region_find(t, name) != NULL;
}

/* 0 when --purge may remove the state dir, else a message and -1. */
static int purge_allowed(const ops_ctx *c) {
  const sp_topo *t = c->topo;
  const char *dir = t->state_dir;
  if (strcmp(dir, "/") == 0 || ops_path_within(c->bin_dir, dir)) {
    fprintf(stderr, "statusctl: refusing to remove %s: it holds statusctl itself\n", dir);
    return -1;
  }
  if (!(c->flags & OPS_F_FORCE) && !(c->repo_var[0] && ops_path_within(dir, c->repo_var))) {
    fprintf(stderr,
            "statusctl: refusing to remove %s: it is not inside the repository's var/ (%s); "
            "pass --force to remove it anyway\n",
            dir, c->repo_var[0] ? c->repo_var : "no repository found");
    return -1;
  }
  DIR *d = opendir(dir);
  if (d == NULL)
    return 0; /* nothing to remove */
  struct dirent *e;
  int rc = 0;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || ours(t, e->d_name))
      continue;
    fprintf(stderr,
            "statusctl: refusing to remove %s: it holds '%s', which statusctl did not make\n",
            dir, e->d_name);
    rc = -1;
    break;
  }
  closedir(d);
  return rc;
}

int ops_down(ops_ctx *c) {
  const sp_topo *t = c->topo;
  int purge = (c->flags & OPS_F_PURGE) != 0;
  if (purge && purge_allowed(c))
    return OPS_EXIT_USAGE;
  char err[512];
  int lk = ops_lock(t, err, sizeof err);
  if (lk && lk != SP_ERR_NOENT) {
    fprintf(stderr, "statusctl: %s\n", err);
    return OPS_EXIT_FAIL;
  }
  static const ops_proc_kind tiers[] = {OPS_REPLICAD, OPS_API, OPS_REDIS, OPS_POSTGRES};
  int failed = 0, stopped = 0;
  for (size_t k = 0; k < sizeof tiers / sizeof tiers[0]; k++) {
    pid_t pids[SP_TOPO_MAX_REGIONS];
    for (size_t i = 0; i < t->nregions; i++)
      pids[i] = ops_proc_signal(&t->regions[i], tiers[k]);
    for (size_t i = 0; i < t->nregions; i++) {
      const sp_topo_region *r = &t->regions[i];
      int rc = ops_proc_wait_stop(r, tiers[k], pids[i], OPS_STOP_MS);
      if (pids[i] == 0)
        continue;
      if (rc) {
        fprintf(stderr, "statusctl: %s: %s (pid %ld) survived SIGKILL\n", r->name,
                ops_proc_name(tiers[k]), (long)pids[i]);
        failed = 1;
      } else {
        printf("%s: %s stopped (pid %ld)\n", r->name, ops_proc_name(tiers[k]), (long)pids[i]);
        stopped++;
      }
    }
  }
  if (stopped == 0 && !failed)
    printf("nothing was running\n");
  if (failed)
    return OPS_EXIT_FAIL;
  if (purge) {
    struct stat sb;
    if (stat(t->state_dir, &sb) != 0 && errno == ENOENT) {
      printf("%s: already removed\n", t->state_dir);
      return OPS_EXIT_OK;
    }
    int rc = ops_remove_tree(t->state_dir);
    if (rc) {
      fprintf(stderr, "statusctl: removing %s: %s\n", t->state_dir, sp_strerror(rc));
      return OPS_EXIT_FAIL;
    }
    printf("removed %s\n", t->state_dir);
  }
  return OPS_EXIT_OK;
}
