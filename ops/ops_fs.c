/* ops_fs: the file-system and clock helpers statusctl needs: directories
 * with an owner, atomic file writes (state, PID files, configs), log tails
 * for "did not come up" reports, and the purge of a state directory.
 *
 * Nothing here allocates memory that outlives a call.
 */
#include "ops.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <stdio.h>
#include <sys/file.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sp_err.h"

long long ops_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ops_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

int ops_mkdir(const char *path, mode_t mode, const ops_user *owner, char *err, size_t errlen) {
  char buf[PATH_MAX];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
    snprintf(err, errlen, "%s: path too long", path);
    return SP_ERR_TOOBIG;
  }
  /* parents: plain 0755, owned by whoever runs statusctl */
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
      int e = -errno;
      snprintf(err, errlen, "mkdir %s: %s", buf, strerror(errno));
      return e;
    }
    *p = '/';
  }
  if (mkdir(buf, mode) != 0 && errno != EEXIST) {
    int e = -errno;
    snprintf(err, errlen, "mkdir %s: %s", buf, strerror(errno));
    return e;
  }
  struct stat sb;
  if (stat(buf, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
    snprintf(err, errlen, "%s exists and is not a directory", buf);
    return SP_ERR_EXIST;
  }
  /* An existing directory gets the mode and owner too: a data directory
   * PostgreSQL will refuse unless it is 0700 and the server's. */
  if (chmod(buf, mode) != 0) {
    int e = -errno;
    snprintf(err, errlen, "chmod %s: %s", buf, strerror(errno));
    return e;
  }
  if (owner && owner->drop && (sb.st_uid != owner->uid || sb.st_gid != owner->gid) &&
      chown(buf, owner->uid, owner->gid) != 0) {
    int e = -errno;
    snprintf(err, errlen, "chown %s to %s: %s", buf, owner->name, strerror(errno));
    return e;
  }
  return 0;
}

int ops_write_file(const char *path, const void *data, size_t len, mode_t mode) {
  char tmp[PATH_MAX + 16];
  snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0)
    return -errno;
  const char *p = data;
  size_t left = len;
  while (left > 0) {
    ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      int e = n < 0 ? -errno : SP_ERR_IO;
      close(fd);
      unlink(tmp);
      return e;
    }
    p += n;
    left -= (size_t)n;
  }
  /* the mode asked for, whatever the umask made of it */
  if (fchmod(fd, mode) != 0 || fsync(fd) != 0) {
    int e = -errno;
    close(fd);
    unlink(tmp);
    return e;
  }
  close(fd);
  if (rename(tmp, path) != 0) {
    int e = -errno;
    unlink(tmp);
    return e;
  }
  return 0;
}

void ops_log_tail(FILE *out, const char *path, int lines) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    fprintf(out, "  (no log: %s: %s)\n", path, strerror(errno));
    return;
  }
  char buf[8192];
  long start = 0;
  if (fseek(f, 0, SEEK_END) == 0) {
    long size = ftell(f);
    start = size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0;
    fseek(f, start, SEEK_SET);
  }
  size_t got = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[got] = '\0';
  /* walk back `lines` line starts from the end */
  size_t end = got;
  while (end > 0 && buf[end - 1] == '\n')
    end--;
  size_t from = end;
  int seen = 0;
  while (from > 0 && seen < lines) {
    from--;
    if (buf[from] == '\n' && ++seen == lines) {
      from++;
      break;
    }
  }
  if (from == 0 && start > 0) /* the first line is cut: skip it */
    from = strcspn(buf, "\n") + (buf[strcspn(buf, "\n")] ? 1 : 0);
  fprintf(out, "  last lines of %s:\n", path);
  for (char *line = buf + from; line < buf + end;) {
    char *nl = memchr(line, '\n', (size_t)(buf + end - line));
    size_t n = nl ? (size_t)(nl - line) : (size_t)(buf + end - line);
    fprintf(out, "  | %.*s\n", (int)n, line);
    line += n + 1;
  }
}

/* Removes `name` in directory `dfd` and, for a directory, all below it,
 * without following symlinks.  Carries on past failures; returns the
 * first. */
static int remove_at(int dfd, const char *name, int depth) {
  struct stat sb;
  if (fstatat(dfd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0)
    return errno == ENOENT ? 0 : -errno;
  if (!S_ISDIR(sb.st_mode))
    return unlinkat(dfd, name, 0) == 0 || errno == ENOENT ? 0 : -errno;
  if (depth > 64)
    return SP_ERR_TOOBIG;
  int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  DIR *d = fdopendir(fd);
  if (d == NULL) {
    int e = -errno;
    close(fd);
    return e;
  }
  int first = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    int rc = remove_at(dirfd(d), e->d_name, depth + 1);
    if (rc && first == 0)
      first = rc;
  }
  closedir(d);
  if (unlinkat(dfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT && first == 0)
    first = -errno;
  return first;
}

int ops_remove_tree(const char *path) {
  return remove_at(AT_FDCWD, path, 0);
}

int ops_lock(const sp_topo *t, char *err, size_t errlen) {
  char path[PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/statusctl.lock", t->state_dir);
  /* O_CLOEXEC: a daemon started later must not inherit (and keep) it */
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    int e = -errno;
    if (e != SP_ERR_NOENT)
      snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return e;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno == EWOULDBLOCK ? SP_ERR_BUSY : -errno;
    snprintf(err, errlen, "%s: %s", path,
             e == SP_ERR_BUSY ? "another statusctl is starting or stopping this deployment"
                              : strerror(errno));
    close(fd);
    return e;
  }
  return 0; /* fd stays open: the lock lives as long as this process */
}

int ops_path_within(const char *path, const char *dir) {
  size_t n = strlen(dir);
  while (n > 1 && dir[n - 1] == '/')
    n--;
  if (n == 0 || strncmp(path, dir, n) != 0)
    return 0;
  return path[n] == '\0' || path[n] == '/' || (n == 1 && dir[0] == '/');
}
