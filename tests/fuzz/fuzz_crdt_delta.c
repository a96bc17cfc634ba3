/* libFuzzer target: crdt_delta_decode and crdt_vclock_decode on arbitrary
 * bytes.  Whatever decodes must merge into a document without error other
 * than SP_ERR_INVAL (e.g. a delete of a grow-only entry) and re-encode to the
 * same bytes (the encodings are canonical). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crdt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  crdt_vclock v;
  if (crdt_vclock_decode(&v, data, size) == 0) {
    uint8_t buf[1024];
    int n = crdt_vclock_encode(&v, buf, sizeof buf);
    if (n <= 0 || (size_t)n != size || memcmp(buf, data, size) != 0)
      abort(); /* the encoding is canonical */
  }
  crdt_delta *d;
  if (crdt_delta_new(NULL, &d) != 0)
    return 0;
  if (crdt_delta_decode(d, data, size) == 0) {
    uint8_t *enc;
    size_t len;
    if (crdt_delta_encode(d, &enc, &len) != 0)
      abort();
    if (len != size || memcmp(enc, data, size) != 0)
      abort(); /* canonical: what decodes re-encodes to the same bytes */
    crdt_free_bytes(NULL, enc);
    crdt_doc *doc;
    if (crdt_doc_new(NULL, &doc) == 0) {
      crdt_doc_grow_only(doc, "incident_update");
      int rc = crdt_doc_merge_delta(doc, d, NULL, NULL);
      if (rc != 0 && rc != SP_ERR_INVAL && rc != SP_ERR_NOMEM)
        abort();
      uint8_t dg[CRDT_DIGEST_LEN];
      crdt_doc_digest(doc, dg);
      crdt_doc_free(doc);
    }
  }
  crdt_delta_free(d);
  return 0;
}
