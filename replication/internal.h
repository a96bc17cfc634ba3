/* replication/internal.h: helpers shared by the repl_*.c files (the
 * allocators that route protobuf-c and crdt/ through sp_malloc, and sizes
 * the batch builder needs).  Not part of the public API; only repl_msg.c
 * includes the generated protobuf-c header. */
#ifndef REPL_INTERNAL_H
#define REPL_INTERNAL_H

#include "repl.h"

/* crdt/ allocator over sp_malloc/sp_realloc/sp_free, so allocation-failure
 * sweeps (sp_alloc_fail_after) reach the deltas the engine builds. */
const crdt_allocator *repl_crdt_allocator(void);

/* Bytes one change adds to an encoded batch (its tag, length and body). */
size_t repl_msg_change_size(const crdt_change *c);

/* The encoded size of *m (exact).  0 or SP_ERR_INVAL / SP_ERR_NOMEM as
 * repl_msg_encode. */
int repl_msg_packed_size(const repl_msg *m, size_t *size);

#endif
