/*
 * alloc.c - accounted allocation. Each tier keeps a byte count and a peak;
 * host allocations made through mn_malloc are counted under MN_TIER_HOST.
 *
 * DESIGN: counters are C11 atomics, so any thread may allocate. mn_malloc
 * keeps the block size in a header in front of the returned pointer so
 * that mn_free can subtract it; the pointer handed out stays 64-byte
 * aligned for AVX-512 loads. The header is 64 bytes, or more when asked
 * for (mn__malloc_front): its last 16 bytes hold its own size and the
 * block's, so mn_free finds the start of any block.
 */
#include "common/internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MN__ALLOC_HEADER 64

static _Atomic int64_t tier_bytes[MN_TIER_COUNT];
static _Atomic int64_t tier_peak[MN_TIER_COUNT];

void mn_account_add(mn_tier tier, int64_t bytes) {
  if ((unsigned)tier >= MN_TIER_COUNT)
    return;
  int64_t now = atomic_fetch_add(&tier_bytes[tier], bytes) + bytes;
  int64_t peak = atomic_load(&tier_peak[tier]);
  while (now > peak &&
         !atomic_compare_exchange_weak(&tier_peak[tier], &peak, now))
    ;
}

int64_t mn_account_get(mn_tier tier) {
  if ((unsigned)tier >= MN_TIER_COUNT)
    return 0;
  return atomic_load(&tier_bytes[tier]);
}

int64_t mn_account_peak(mn_tier tier) {
  if ((unsigned)tier >= MN_TIER_COUNT)
    return 0;
  return atomic_load(&tier_peak[tier]);
}

void *mn__malloc_front(size_t bytes, size_t front) {
  front =
      front <= MN__ALLOC_HEADER ? MN__ALLOC_HEADER : (front + 63) & ~(size_t)63;
  if (front > SIZE_MAX / 4 || bytes > SIZE_MAX - 2 * front) {
    mn__set_error(MN_ERR_NOMEM, "allocation of %zu bytes is too large", bytes);
    return NULL;
  }
  size_t total = (bytes + front + 63) & ~(size_t)63;
  char *base = aligned_alloc(64, total);
  if (!base) {
    mn__set_error(MN_ERR_NOMEM, "out of host memory allocating %zu bytes",
                  bytes);
    return NULL;
  }
  char *p = base + front;
  memcpy(p - 16, &front, sizeof front);
  memcpy(p - 8, &total, sizeof total);
  mn_account_add(MN_TIER_HOST, (int64_t)total);
  return p;
}

void *mn_malloc(size_t bytes) {
  return mn__malloc_front(bytes, MN__ALLOC_HEADER);
}

size_t mn__alloc_front(const void *p) {
  size_t front;
  memcpy(&front, (const char *)p - 16, sizeof front);
  return front;
}

void *mn__alloc_detach(void *p, size_t *front) {
  size_t f, total;
  memcpy(&f, (char *)p - 16, sizeof f);
  memcpy(&total, (char *)p - 8, sizeof total);
  mn_account_add(MN_TIER_HOST, -(int64_t)total);
  if (front)
    *front = f;
  return (char *)p - f;
}

void *mn_calloc(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) {
    mn__set_error(MN_ERR_NOMEM, "allocation of %zu x %zu bytes overflows", n,
                  size);
    return NULL;
  }
  void *p = mn_malloc(n * size);
  if (p)
    memset(p, 0, n * size);
  return p;
}

void mn_free(void *p) {
  if (!p)
    return;
  free(mn__alloc_detach(p, NULL));
}
