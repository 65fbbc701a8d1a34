/*
 * macros.h — small language helpers shared by every layer.
 *
 * ss_container_of(ptr, type, member): the struct that embeds *ptr as member (intrusive lists,
 * timer entries, pool jobs), instead of hand-written offset casts.
 */
#ifndef SS_CORE_MACROS_H
#define SS_CORE_MACROS_H

#include <stddef.h>

#define ss_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#endif
