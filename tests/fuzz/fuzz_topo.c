/* libFuzzer target for the topology parser: arbitrary bytes into
 * sp_topo_parse.  Besides the sanitizers' checks it enforces the API
 * contract: success returns a topology whose every string and peer pointer
 * is readable; failure returns NULL with a non-empty one-line message.
 * Seeds: tests/fuzz/corpus/topo/ (the shipped topology and table cases).
 */
#include "sp_err.h"
#include "sp_topo.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static size_t touch(const char *s) { return s ? strlen(s) : 0; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[512];
  sp_topo *t = (sp_topo *)&t;
  int rc = sp_topo_parse((const char *)data, size, "fuzz.json", "/fuzz", &t, err, sizeof err);
  if (rc != 0) {
    if (t != NULL || err[0] == '\0' || strchr(err, '\n') != NULL)
      abort();
    if (rc != SP_ERR_CONFIG && rc != SP_ERR_TOOBIG && rc != SP_ERR_NOMEM)
      abort();
    return 0;
  }
  if (t == NULL || t->nregions < 1 || t->nregions > SP_TOPO_MAX_REGIONS)
    abort();
  size_t sum = touch(t->cluster) + touch(t->state_dir) + touch(t->tls_ca_cert);
  for (size_t i = 0; i < t->nregions; i++) {
    const sp_topo_region *r = &t->regions[i];
    if (sp_topo_region_find(t, r->name) != r || r->npeers >= t->nregions)
      abort();
    sum += touch(r->address) + touch(r->postgres.host) + touch(r->redis.host) +
           touch(r->tls_cert) + touch(r->pg_dir) + touch(r->log_dir);
    for (size_t j = 0; j < r->npeers; j++)
      if (r->peers[j] == r || r->peers[j]->index >= t->nregions)
        abort();
  }
  if (sum == 0)
    abort();
  sp_topo_free(t);
  return 0;
}
