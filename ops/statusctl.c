/* statusctl: the operator CLI of the local multi-region deployment.
 *
 *   statusctl [--topology FILE] up
 *   statusctl [--topology FILE] down [--purge [--force]]
 *   statusctl [--topology FILE] endpoints [--json]
 *   statusctl [--topology FILE] status [--json]
 *   statusctl [--topology FILE] verify [--json]
 *
 * The topology defaults to $SP_TOPOLOGY, else config/topology.local.json of
 * the repository statusctl was built in.  The services it starts are the
 * statusd-* programs beside it (build/).  Exit status: 0 success, 1 failure
 * (something down, not converged, did not come up), 2 usage or topology
 * error.  Subcommands dispatch through the const table g_cmds; what each
 * does is in its ops_<name>.c.
 */
#include "ops.h"

#include <curl/curl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct ops_cmd {
  const char *name;
  int (*run)(ops_ctx *c);
  unsigned flags; /* OPS_F_* it accepts */
  const char *args, *help;
} ops_cmd;

static const ops_cmd g_cmds[] = {
    {"up", ops_up, 0, "",
     "start the local deployment (first run: PostgreSQL clusters, certificates, admin key, "
     "demo page)"},
    {"down", ops_down, OPS_F_PURGE | OPS_F_FORCE, " [--purge [--force]]",
     "stop everything up started (data kept); --purge also removes the state directory"},
    {"endpoints", ops_endpoints, OPS_F_JSON, " [--json]",
     "the URLs of every region, the admin key and the demo page id"},
    {"status", ops_status, OPS_F_JSON, " [--json]",
     "processes, readiness and replication lag of every region"},
    {"verify", ops_verify, OPS_F_JSON, " [--json]",
     "compare the regions' state digests: exit 0 and \"converged\" when equal"},
};

static const struct {
  const char *name;
  unsigned flag;
} g_flags[] = {{"--json", OPS_F_JSON}, {"--purge", OPS_F_PURGE}, {"--force", OPS_F_FORCE}};

static void usage(FILE *f) {
  fprintf(f, "usage: statusctl [--topology FILE] COMMAND [FLAGS]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++) {
    char left[64];
    snprintf(left, sizeof left, "%s%s", g_cmds[i].name, g_cmds[i].args);
    fprintf(f, "  %-28s %s\n", left, g_cmds[i].help);
  }
  fprintf(f, "\nThe topology defaults to $SP_TOPOLOGY, else config/topology.local.json.\n");
}

/* The repository statusctl was built in: the first of its directory's
 * ancestors (up to 3 levels: build/, build/asan/) holding
 * config/topology.local.json.  0 or -1. */
static int find_repo(const char *bin_dir, char *out, size_t len) {
  char cand[PATH_MAX], probe[PATH_MAX + 32];
  snprintf(cand, sizeof cand, "%s", bin_dir);
  for (int up = 1; up <= 3; up++) {
    char *slash = strrchr(cand, '/');
    if (slash == NULL || slash == cand)
      return -1;
    *slash = '\0';
    snprintf(probe, sizeof probe, "%s/config/topology.local.json", cand);
    if (access(probe, R_OK) == 0) {
      snprintf(out, len, "%s", cand);
      return 0;
    }
  }
  return -1;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  const char *topo_path = getenv("SP_TOPOLOGY");
  const ops_cmd *cmd = NULL;
  unsigned flags = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--topology") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "statusctl: --topology needs a FILE\n");
        usage(stderr);
        return OPS_EXIT_USAGE;
      }
      topo_path = argv[++i];
      continue;
    }
    if (strncmp(a, "--topology=", 11) == 0) {
      topo_path = a + 11;
      continue;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "help") == 0) {
      usage(stdout);
      return OPS_EXIT_OK;
    }
    if (a[0] == '-') {
      unsigned f = 0;
      for (size_t k = 0; k < sizeof g_flags / sizeof g_flags[0]; k++)
        if (strcmp(a, g_flags[k].name) == 0)
          f = g_flags[k].flag;
      if (f == 0) {
        fprintf(stderr, "statusctl: unknown flag '%s'\n", a);
        usage(stderr);
        return OPS_EXIT_USAGE;
      }
      flags |= f;
      continue;
    }
    if (cmd != NULL) {
      fprintf(stderr, "statusctl: unexpected argument '%s'\n", a);
      usage(stderr);
      return OPS_EXIT_USAGE;
    }
    for (size_t k = 0; k < sizeof g_cmds / sizeof g_cmds[0]; k++)
      if (strcmp(a, g_cmds[k].name) == 0)
        cmd = &g_cmds[k];
    if (cmd == NULL) {
      fprintf(stderr, "statusctl: unknown command '%s'\n", a);
      usage(stderr);
      return OPS_EXIT_USAGE;
    }
  }
  if (cmd == NULL) {
    fprintf(stderr, "statusctl: no command given\n");
    usage(stderr);
    return OPS_EXIT_USAGE;
  }
  for (size_t k = 0; k < sizeof g_flags / sizeof g_flags[0]; k++) {
    if ((flags & g_flags[k].flag) && !(cmd->flags & g_flags[k].flag)) {
      fprintf(stderr, "statusctl: '%s' takes no flag '%s'\n", cmd->name, g_flags[k].name);
      usage(stderr);
      return OPS_EXIT_USAGE;
    }
  }
  if ((flags & OPS_F_FORCE) && !(flags & OPS_F_PURGE)) {
    fprintf(stderr, "statusctl: --force only goes with --purge\n");
    return OPS_EXIT_USAGE;
  }

  ops_ctx c;
  memset(&c, 0, sizeof c);
  c.flags = flags;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    fprintf(stderr, "statusctl: cannot find my own executable (/proc/self/exe)\n");
    return OPS_EXIT_FAIL;
  }
  exe[n] = '\0';
  snprintf(c.bin_dir, sizeof c.bin_dir, "%s", dirname(exe));
  char repo[PATH_MAX], default_topo[PATH_MAX + 32];
  if (find_repo(c.bin_dir, repo, sizeof repo) == 0) {
    if (snprintf(c.repo_var, sizeof c.repo_var, "%s/var", repo) >= (int)sizeof c.repo_var)
      c.repo_var[0] = '\0';
    snprintf(default_topo, sizeof default_topo, "%s/config/topology.local.json", repo);
  } else {
    snprintf(default_topo, sizeof default_topo, "config/topology.local.json");
  }
  if (topo_path == NULL || *topo_path == '\0')
    topo_path = default_topo;

  char err[1024];
  sp_topo *topo;
  if (sp_topo_load(topo_path, &topo, err, sizeof err)) {
    fprintf(stderr, "statusctl: %s\n", err);
    return OPS_EXIT_USAGE;
  }
  c.topo = topo;
  /* only `up` starts anything as the service user */
  if (ops_user_resolve(&c.user, err, sizeof err) && cmd->run == ops_up) {
    fprintf(stderr, "statusctl: %s\n", err);
    sp_topo_free(topo);
    return OPS_EXIT_FAIL;
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "statusctl: libcurl failed to initialise\n");
    sp_topo_free(topo);
    return OPS_EXIT_FAIL;
  }
  int rc = cmd->run(&c);
  curl_global_cleanup();
  sp_topo_free(topo);
  return rc;
}
