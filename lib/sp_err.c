/* sp_err: messages and names for the codes in sp_err.h. */
#include "sp_err.h"

#include <string.h>

const char *sp_strerror(int err) {
  switch (err) {
  case 0:
    return "success";
#define SP__ERR_MSG(name, value, msg)                                          \
  case value:                                                                  \
    return msg;
    SP_ERR_MAP(SP__ERR_MSG)
#undef SP__ERR_MSG
  default:
    /* Any other -errno: strerror's table is static for known values. */
    if (err < 0 && err > -4096)
      return strerror(-err);
    return "unknown error";
  }
}

const char *sp_err_name(int err) {
  switch (err) {
  case 0:
    return "SP_OK";
#define SP__ERR_NAME(name, value, msg)                                         \
  case value:                                                                  \
    return "SP_ERR_" #name;
    SP_ERR_MAP(SP__ERR_NAME)
#undef SP__ERR_NAME
  default:
    return "SP_ERR_UNKNOWN";
  }
}
