/*
 * cpu_backend.c - the CPU backend: always present, the reference every
 * other backend is checked against. Buffers are plain host memory; the ops
 * live in cpu_elementwise.c, cpu_pca.c and cpu_search.c.
 */
#include "backends/cpu/cpu_internal.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const level_names[] = {"scalar", "avx2", "avx512"};

const char *mn__cpu_level_name(mn_cpu_level l) {
  return (unsigned)l <= MN_CPU_AVX512 ? level_names[l] : "unknown";
}

static int level_cached = -1;

mn_cpu_level mn__cpu_level(void) {
  int lvl = __atomic_load_n(&level_cached, __ATOMIC_RELAXED);
  if (lvl >= 0)
    return (mn_cpu_level)lvl;
  __builtin_cpu_init();
  lvl = MN_CPU_SCALAR;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2") &&
      __builtin_cpu_supports("popcnt"))
    lvl = MN_CPU_AVX2;
  if (lvl == MN_CPU_AVX2 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni") &&
      __builtin_cpu_supports("avx512vpopcntdq"))
    lvl = MN_CPU_AVX512;
  const char *cap = getenv("MNEMO_CPU_LEVEL");
  if (cap) {
    for (int i = 0; i <= MN_CPU_AVX512; i++)
      if (strcmp(cap, level_names[i]) == 0 && i < lvl)
        lvl = i;
  }
  __atomic_store_n(&level_cached, lvl, __ATOMIC_RELAXED);
  return (mn_cpu_level)lvl;
}

mn_cpu_level mn__cpu_level_cap(mn_cpu_level cap) {
  static int hw = -1;
  if (hw < 0) {
    hw = (int)mn__cpu_level();
  }
  int lvl = (int)cap < hw ? (int)cap : hw;
  if (lvl < 0)
    lvl = 0;
  __atomic_store_n(&level_cached, lvl, __ATOMIC_RELAXED);
  return (mn_cpu_level)lvl;
}

static void cpu_destroy(mn_backend *b) {
  free(b);
}

static mn_status cpu_alloc(mn_backend *b, size_t bytes, void **out) {
  (void)b;
  *out = mn_malloc(bytes ? bytes : 1);
  return *out ? MN_OK : MN_ERR_NOMEM;
}

static void cpu_free(mn_backend *b, void *p) {
  (void)b;
  mn_free(p);
}

static mn_status cpu_copy(mn_backend *b, void *dst, const void *src, size_t n) {
  (void)b;
  if (n)
    memmove(dst, src, n);
  return MN_OK;
}

static mn_status cpu_memory_info(mn_backend *b, uint64_t *free_b,
                                 uint64_t *total) {
  (void)b;
  long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES);
  long psize = sysconf(_SC_PAGESIZE);
  *total = (uint64_t)pages * (uint64_t)psize;
  *free_b = (uint64_t)avail * (uint64_t)psize;
  return MN_OK;
}

static const mn_backend_iface cpu_iface = {
    .api_version = MN_BACKEND_API_VERSION,
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .memory_info = cpu_memory_info,
    .synchronize = NULL,
    .normalize = mn__cpu_normalize,
    .pca_fit = mn__cpu_pca_fit,
    .pca_transform = mn__cpu_pca_transform,
    .affine_train = mn__cpu_affine_train,
    .quantize = mn__cpu_quantize,
    .dequantize = mn__cpu_dequantize,
    .similarity = mn__cpu_similarity,
    .search = mn__cpu_search,
    /* normalize, quantize and affine_train find NaN / Inf in their own
     * pass (cpu_elementwise.c), sparing the wrappers' extra read. */
    .caps = MN_BACKEND_CAP_CHECKS_FINITE,
};

mn_status mn__cpu_backend_create(const mn_backend_opts *opts,
                                 mn_backend **out) {
  mn_cpu_backend *cb = calloc(1, sizeof *cb);
  if (!cb)
    return mn__set_error(MN_ERR_NOMEM, "out of memory creating CPU backend");
  cb->base.iface = &cpu_iface;
  cb->base.device_kind = MN_DEVICE_HOST;
  int cores = omp_get_num_procs();
  cb->threads = (opts && opts->threads > 0) ? opts->threads : cores;
  if (cb->threads < 1)
    cb->threads = 1;
  cb->level = mn__cpu_level();
  snprintf(cb->base.device, sizeof cb->base.device, "cpu (%d threads, %s)",
           cb->threads, mn__cpu_level_name(cb->level));
  *out = &cb->base;
  return MN_OK;
}
