/*
 * alloc.c - accounted allocation. Each tier keeps a byte count and a peak;
 * host allocations made through mn_malloc are counted under MN_TIER_HOST.
 *
 * DESIGN: counters are C11 atomics, so any thread may allocate. mn_malloc
 * keeps the block size in a 64-byte header in front of the returned pointer
 * so that mn_free can subtract it; the pointer handed out stays 64-byte
 * aligned for AVX-512 loads.
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

void *mn_malloc(size_t bytes) {
  if (bytes > SIZE_MAX - 2 * MN__ALLOC_HEADER) {
    mn__set_error(MN_ERR_NOMEM, "allocation of %zu bytes is too large", bytes);
    return NULL;
  }
  size_t total = (bytes + MN__ALLOC_HEADER + 63) & ~(size_t)63;
  char *base = aligned_alloc(64, total);
  if (!base) {
    mn__set_error(MN_ERR_NOMEM, "out of host memory allocating %zu bytes",
                  bytes);
    return NULL;
  }
  memcpy(base, &total, sizeof total);
  mn_account_add(MN_TIER_HOST, (int64_t)total);
  return base + MN__ALLOC_HEADER;
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
  char *base = (char *)p - MN__ALLOC_HEADER;
  size_t total;
  memcpy(&total, base, sizeof total);
  mn_account_add(MN_TIER_HOST, -(int64_t)total);
  free(base);
}
