/*
 * fake_plugin.h - what the fake backend plugins (fake_plugin_*.c) share:
 * "device" memory that is plain host memory, a double-precision normalize,
 * the members of the interface they all fill alike, their score (1), and
 * the checks and set-up of mn_plugin_init. Each plugin is its own MODULE
 * and includes this once; it reaches the core only through the
 * mn_backend_host it is given.
 */
#ifndef MNEMO_TESTS_FAKE_PLUGIN_H
#define MNEMO_TESTS_FAKE_PLUGIN_H

#include "compute/backend_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

static const mn_backend_host *host;

static inline mn_status fake_alloc(mn_backend *b, size_t n, void **out) {
  *out = malloc(n ? n : 1);
  if (!*out)
    return host->set_error(MN_ERR_DEVICE_OOM, "%s: no memory for %zu bytes",
                           b->iface->name, n);
  return MN_OK;
}

static inline void fake_destroy_plain(mn_backend *b) {
  free(b);
}

static inline void fake_free(mn_backend *b, void *p) {
  (void)b;
  free(p);
}

static inline mn_status fake_copy(mn_backend *b, void *dst, const void *src,
                                  size_t n) {
  (void)b;
  memcpy(dst, src, n);
  return MN_OK;
}

/* Rows scaled to unit length in double precision; zero rows stay zero. */
static inline mn_status fake_normalize_rows(const mn_tensor *x, mn_tensor *y,
                                            int64_t *zero_rows) {
  int64_t zero = 0;
  for (int64_t r = 0; r < x->rows; r++) {
    const float *in = (const float *)((const char *)x->data + r * x->stride);
    float *out = (float *)((char *)y->data + r * y->stride);
    double s = 0;
    for (int64_t c = 0; c < x->cols; c++)
      s += (double)in[c] * in[c];
    double inv = s > 0 ? 1.0 / sqrt(s) : 0;
    zero += s == 0;
    for (int64_t c = 0; c < x->cols; c++)
      out[c] = (float)(in[c] * inv);
  }
  *zero_rows = zero;
  return MN_OK;
}

/* The members of a fake's mn_backend_iface besides its ops: the API
 * version, its name, its destroy, buffers in host memory, and its
 * memory_info and normalize (every fake has one). For a designated
 * initializer; the plugin adds its other ops after it. */
#define FAKE_IFACE_COMMON(name_, destroy_, memory_info_, normalize_)           \
  .api_version = MN_BACKEND_API_VERSION, .name = (name_),                      \
  .destroy = (destroy_), .alloc = fake_alloc, .free = fake_free,               \
  .upload = fake_copy, .download = fake_copy, .memory_info = (memory_info_),   \
  .normalize = (normalize_)

/* Every fake that includes this header is usable wherever it is loaded. */
EXPORT int mn_plugin_score(void) {
  return 1;
}

/* mn_plugin_init's common part: the host's API version, then a backend
 * with this interface, device kind and description. */
static inline mn_status fake_new(const mn_backend_host *h,
                                 const mn_backend_iface *iface,
                                 mn_device_kind kind, const char *device,
                                 mn_backend **out) {
  if (!h || h->api_version != MN_BACKEND_API_VERSION)
    return MN_ERR_VERSION;
  host = h;
  mn_backend *b = calloc(1, sizeof *b);
  if (!b)
    return h->set_error(MN_ERR_NOMEM, "%s: no memory", iface->name);
  b->iface = iface;
  b->device_kind = kind;
  snprintf(b->device, sizeof b->device, "%s", device);
  *out = b;
  return MN_OK;
}

#endif
