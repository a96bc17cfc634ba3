/* ops_proc: the background processes of the local deployment and their
 * PID files.
 *
 * A service is started with fork + exec (never a daemonising wrapper such
 * as pg_ctl), in its own session so it outlives statusctl and ignores the
 * terminal's signals, as the unprivileged user when statusctl runs as root,
 * with stdout/stderr appended to <region>/log/<name>.log; its PID goes to
 * <region>/run/<name>.pid.  A PID file is trusted only while the process it
 * names exists, is not a zombie (nothing may reap a daemon whose parent
 * exited) and runs the expected program (/proc/PID/comm), so a stale file
 * never makes statusctl signal an unrelated process.
 *
 * Nothing here allocates; strings live in caller buffers or static tables.
 */
#include "ops.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sp_err.h"

static const struct {
  const char *name; /* ops_proc_name: PID and log file names */
  const char *comm; /* /proc/PID/comm of the program (kernel keeps 15 chars) */
  int stop_sig;
} g_procs[OPS_NPROCS] = {
    [OPS_POSTGRES] = {"postgres", "postgres", SIGINT}, /* SIGINT = fast shutdown */
    [OPS_REDIS] = {"redis", "redis-server", SIGTERM},
    [OPS_API] = {"statusd-api", "statusd-api", SIGTERM},
    [OPS_REPLICAD] = {"statusd-replicad", "statusd-replica", SIGTERM},
};

const char *ops_proc_name(ops_proc_kind k) {
  return k < OPS_NPROCS ? g_procs[k].name : "?";
}

void ops_pg_bindir(char *out, size_t len) {
  snprintf(out, len, "%s", "/usr/lib/postgresql/15/bin");
  FILE *p = popen("pg_config --bindir 2>/dev/null", "r");
  if (p == NULL)
    return;
  char line[PATH_MAX];
  if (fgets(line, sizeof line, p) != NULL) {
    line[strcspn(line, "\r\n")] = '\0';
    char probe[PATH_MAX + 16];
    snprintf(probe, sizeof probe, "%s/postgres", line);
    if (line[0] != '\0' && access(probe, X_OK) == 0)
      snprintf(out, len, "%s", line);
  }
  pclose(p);
}

/* `name` found in $PATH, into out; 0 or SP_ERR_NOENT. */
static int which(const char *name, char *out, size_t len) {
  const char *path = getenv("PATH");
  if (path == NULL || *path == '\0')
    path = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
  while (*path) {
    size_t n = strcspn(path, ":");
    snprintf(out, len, "%.*s/%s", (int)n, path, name);
    if (n > 0 && access(out, X_OK) == 0)
      return 0;
    path += n + (path[n] == ':');
  }
  snprintf(out, len, "%s", name);
  return SP_ERR_NOENT;
}

int ops_proc_program(const ops_ctx *c, ops_proc_kind k, char *out, size_t len) {
  char dir[PATH_MAX];
  switch (k) {
  case OPS_POSTGRES:
    ops_pg_bindir(dir, sizeof dir);
    snprintf(out, len, "%s/postgres", dir);
    break;
  case OPS_REDIS:
    return which("redis-server", out, len);
  case OPS_API:
  case OPS_REPLICAD:
    snprintf(out, len, "%s/%s", c->bin_dir, g_procs[k].name);
    break;
  default:
    return SP_ERR_INVAL;
  }
  return access(out, X_OK) == 0 ? 0 : SP_ERR_NOENT;
}

void ops_proc_pidfile(const sp_topo_region *r, ops_proc_kind k, char *out, size_t len) {
  snprintf(out, len, "%s/run/%s.pid", r->state_dir, ops_proc_name(k));
}

void ops_proc_logfile(const sp_topo_region *r, ops_proc_kind k, char *out, size_t len) {
  snprintf(out, len, "%s/%s.log", r->log_dir, ops_proc_name(k));
}

/* The state letter of /proc/PID/stat ('R', 'S', 'Z', ...) or 0. */
static char proc_state(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  /* "pid (comm) S ...": comm may hold spaces and parentheses, so the
   * state follows the LAST ')' */
  char *p = strrchr(buf, ')');
  return p && p[1] == ' ' ? p[2] : 0;
}

int ops_pid_alive(pid_t pid) {
  if (pid <= 0)
    return 0;
  /* reap it if it is our own child that ended */
  int st;
  if (waitpid(pid, &st, WNOHANG) == pid)
    return 0;
  if (kill(pid, 0) != 0 && errno == ESRCH)
    return 0;
  char s = proc_state(pid);
  return s != 0 && s != 'Z' && s != 'X';
}

static int comm_is(pid_t pid, const char *want) {
  char path[64], comm[64];
  snprintf(path, sizeof path, "/proc/%ld/comm", (long)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  int ok = fgets(comm, sizeof comm, f) != NULL;
  fclose(f);
  if (!ok)
    return 0;
  comm[strcspn(comm, "\n")] = '\0';
  return strcmp(comm, want) == 0;
}

pid_t ops_proc_pid(const sp_topo_region *r, ops_proc_kind k) {
  char path[PATH_MAX + 64], buf[32];
  ops_proc_pidfile(r, k, path, sizeof path);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  int ok = fgets(buf, sizeof buf, f) != NULL;
  fclose(f);
  if (!ok)
    return 0;
  char *end;
  long v = strtol(buf, &end, 10);
  if (end == buf || v <= 1 || v > 4194304 || (*end != '\n' && *end != '\0'))
    return 0;
  pid_t pid = (pid_t)v;
  if (!ops_pid_alive(pid) || !comm_is(pid, g_procs[k].comm))
    return 0;
  return pid;
}

/* fork + exec with everything prepared before the fork: the child only
 * makes async-signal-safe calls.  Returns the pid or -errno. */
static pid_t spawn(const ops_user *u, int drop, int new_session, const char *cwd, int outfd,
                   int errfd, char *const argv[]) {
  int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (nul < 0)
    return -errno;
  char oops[PATH_MAX + 64];
  int oops_len = snprintf(oops, sizeof oops, "statusctl: cannot run %s\n", argv[0]);
  if (oops_len < 0 || oops_len >= (int)sizeof oops)
    oops_len = (int)strlen(oops);
  pid_t pid = fork();
  if (pid < 0) {
    int e = -errno;
    close(nul);
    return e;
  }
  if (pid > 0) {
    close(nul);
    return pid;
  }
  /* child */
  if (new_session)
    setsid();
  if (dup2(nul, 0) < 0 || dup2(outfd, 1) < 0 || dup2(errfd, 2) < 0)
    _exit(126);
  if (drop && u->drop &&
      (setgroups(0, NULL) != 0 || setgid(u->gid) != 0 || setuid(u->uid) != 0)) {
    (void)!write(2, oops, (size_t)oops_len);
    _exit(126);
  }
  if (cwd && chdir(cwd) != 0) {
    (void)!write(2, oops, (size_t)oops_len);
    _exit(126);
  }
  /* libpq and libcurl sockets of statusctl must not leak into a daemon */
  close_range(3, ~0u, 0);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);
  execv(argv[0], argv);
  (void)!write(2, oops, (size_t)oops_len);
  _exit(127);
}

int ops_proc_start(const ops_ctx *c, const sp_topo_region *r, ops_proc_kind k, const char *cwd,
                   char *const argv[], pid_t *pid) {
  char logpath[PATH_MAX + 64], pidpath[PATH_MAX + 64];
  ops_proc_logfile(r, k, logpath, sizeof logpath);
  ops_proc_pidfile(r, k, pidpath, sizeof pidpath);
  int logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (logfd < 0)
    return -errno;
  /* Only PostgreSQL (which refuses root) and Redis drop to the unprivileged
   * user; statusd-api and statusd-replicad run as the caller, who can always
   * reach the binaries and lib/sql wherever the checkout lives. */
  int drop = k == OPS_POSTGRES || k == OPS_REDIS;
  pid_t p = spawn(&c->user, drop, 1, cwd, logfd, logfd, argv);
  close(logfd);
  if (p < 0)
    return p;
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%ld\n", (long)p);
  int rc = ops_write_file(pidpath, buf, (size_t)n, 0644);
  if (rc) {
    /* an untracked daemon could never be stopped by `down`: end it now */
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
    return rc;
  }
  *pid = p;
  return 0;
}

pid_t ops_proc_signal(const sp_topo_region *r, ops_proc_kind k) {
  pid_t pid = ops_proc_pid(r, k);
  if (pid > 0)
    kill(pid, g_procs[k].stop_sig);
  return pid;
}

static int wait_gone(pid_t pid, unsigned ms) {
  long long end = ops_now_ms() + ms;
  while (ops_pid_alive(pid)) {
    if (ops_now_ms() >= end)
      return 0;
    ops_sleep_ms(20);
  }
  return 1;
}

int ops_proc_wait_stop(const sp_topo_region *r, ops_proc_kind k, pid_t pid, unsigned timeout_ms) {
  char pidpath[PATH_MAX + 64];
  ops_proc_pidfile(r, k, pidpath, sizeof pidpath);
  if (pid > 0 && !wait_gone(pid, timeout_ms)) {
    kill(pid, SIGKILL);
    if (!wait_gone(pid, 5000))
      return SP_ERR_TIMEDOUT;
  }
  unlink(pidpath);
  return 0;
}

int ops_run(const ops_ctx *c, int drop_user, const char *logfile, int keep_stdout,
            char *const argv[], unsigned timeout_ms) {
  int logfd = open(logfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (logfd < 0)
    return -errno;
  int outfd = keep_stdout ? logfd : open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (outfd < 0) {
    int e = -errno;
    close(logfd);
    return e;
  }
  pid_t pid = spawn(&c->user, drop_user, 0, NULL, outfd, logfd, argv);
  if (outfd != logfd)
    close(outfd);
  close(logfd);
  if (pid < 0)
    return pid;
  long long end = ops_now_ms() + timeout_ms;
  for (;;) {
    int st;
    pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid)
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (w < 0 && errno != EINTR)
      return -errno;
    if (ops_now_ms() >= end) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      return SP_ERR_TIMEDOUT;
    }
    ops_sleep_ms(20);
  }
}

int ops_port_free(const char *address, uint16_t port) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t len;
  struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, address, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    len = sizeof *a4;
  } else if (inet_pton(AF_INET6, address, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    len = sizeof *a6;
  } else {
    return SP_ERR_INVAL;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  /* as the servers do: a port whose old connections linger in TIME_WAIT is
   * free; only a listener makes the bind fail */
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rc = 0;
  if (bind(fd, (struct sockaddr *)&ss, len) != 0)
    rc = errno == EADDRINUSE ? SP_ERR_BUSY : -errno;
  close(fd);
  return rc;
}

int ops_user_resolve(ops_user *u, char *err, size_t errlen) {
  memset(u, 0, sizeof *u);
  struct passwd *pw;
  if (geteuid() == 0) {
    const char *name = getenv("SP_USER");
    if (name == NULL || *name == '\0')
      name = "statuspage";
    pw = getpwnam(name);
    if (pw == NULL) {
      snprintf(err, errlen,
               "user '%s' does not exist: PostgreSQL refuses to run as root, so the services "
               "run as '%s' (run 'make deps' to create it)",
               name, name);
      return SP_ERR_CONFIG;
    }
    u->drop = 1;
  } else {
    pw = getpwuid(geteuid());
    if (pw == NULL) {
      snprintf(err, errlen, "the current uid %ld has no passwd entry", (long)geteuid());
      return SP_ERR_CONFIG;
    }
  }
  snprintf(u->name, sizeof u->name, "%s", pw->pw_name);
  u->uid = pw->pw_uid;
  u->gid = pw->pw_gid;
  return 0;
}
