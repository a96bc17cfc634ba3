/* sp_err: the project-wide error codes.
 *
 * Every function in the project that can fail returns 0 or one of these
 * negative codes.  Where a POSIX errno exists the code equals -errno, so a
 * libuv error (also -errno) passes through unchanged.  The list is one X-macro
 * so the enum and sp_strerror()/sp_err_name() never drift apart.
 * Nothing here allocates; the returned strings are static.
 */
#ifndef SP_ERR_H
#define SP_ERR_H

#include <errno.h>

/* X(name, value, message) */
#define SP_ERR_MAP(X)                                                          \
  X(NOMEM, -ENOMEM, "out of memory")                                           \
  X(INVAL, -EINVAL, "invalid argument")                                        \
  X(NOENT, -ENOENT, "no such file or entry")                                   \
  X(EXIST, -EEXIST, "already exists")                                          \
  X(AGAIN, -EAGAIN, "resource temporarily unavailable")                        \
  X(IO, -EIO, "input/output error")                                            \
  X(TIMEDOUT, -ETIMEDOUT, "timed out")                                         \
  X(CANCELED, -ECANCELED, "operation canceled")                                \
  X(CONNREFUSED, -ECONNREFUSED, "connection refused")                          \
  X(CONNRESET, -ECONNRESET, "connection reset by peer")                        \
  X(NOTCONN, -ENOTCONN, "not connected")                                       \
  X(BUSY, -EBUSY, "resource busy")                                             \
  X(RANGE, -ERANGE, "value out of range")                                      \
  X(TOOBIG, -E2BIG, "size limit exceeded")                                     \
  X(PROTO, -EPROTO, "protocol error")                                          \
  X(ACCES, -EACCES, "permission denied")                                       \
  X(PARSE, -1001, "malformed input")                                           \
  X(DB, -1002, "database error")                                               \
  X(DB_DOWN, -1003, "database unavailable")                                    \
  X(REDIS, -1004, "redis error")                                               \
  X(CONFIG, -1005, "invalid configuration")                                    \
  X(CLOSED, -1006, "handle is closing or closed")                              \
  X(CONFLICT, -1007, "conflicting write")                                      \
  X(INTERNAL, -1008, "internal error")                                        \
  X(SKEW, -1009, "clock stamp too far ahead of local time")

typedef enum sp_err {
  SP_OK = 0,
#define SP__ERR_ENUM(name, value, msg) SP_ERR_##name = (value),
  SP_ERR_MAP(SP__ERR_ENUM)
#undef SP__ERR_ENUM
} sp_err;

/* A message for code `err` (0, any sp_err, or any other -errno).  Never NULL;
 * the string is static. */
const char *sp_strerror(int err);

/* The symbolic name ("SP_ERR_NOMEM"), or "SP_ERR_UNKNOWN".  Static string. */
const char *sp_err_name(int err);

#endif
