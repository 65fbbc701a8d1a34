/*
 * h2mem.h — the allocator handed to every nghttp2 session. Blocks of a page or more (nghttp2's
 * 16 KiB outbound frame buffer, its stream map) come from mmap, so the pages nghttp2 never
 * writes are never resident: an idle connection's frame buffer costs one page, not four.
 * Smaller blocks come from malloc. Measured with bench/idle_conns.py (10000 idle connections).
 * Thread: any (stateless; the loop thread in practice).
 */
#ifndef SS_GRPC_H2MEM_H
#define SS_GRPC_H2MEM_H

#include <nghttp2/nghttp2.h>

/* A static allocator description (never freed). */
nghttp2_mem *ss_h2mem(void);

#endif
