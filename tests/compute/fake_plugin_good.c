/*
 * fake_plugin_good.c - a well-formed backend plugin for
 * test_backend_loader: right API version, score 1, host memory, and one
 * op (normalize) so the test can see it being used. It borrows the core's
 * services through mn_backend_host only: it logs when it starts and
 * accounts 4096 bytes of "device" memory while it is open, so the test can
 * tell that init and destroy both ran.
 */
#include "compute/backend_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))
#define FAKE_RESERVED 4096

static const mn_backend_host *host;

static void fake_destroy(mn_backend *b) {
  host->account_add(MN_TIER_DEVICE, -FAKE_RESERVED);
  free(b);
}

static mn_status fake_alloc(mn_backend *b, size_t n, void **out) {
  (void)b;
  *out = malloc(n ? n : 1);
  if (!*out)
    return host->set_error(MN_ERR_NOMEM, "fake: no memory for %zu bytes", n);
  return MN_OK;
}

static void fake_free(mn_backend *b, void *p) {
  (void)b;
  free(p);
}

static mn_status fake_copy(mn_backend *b, void *dst, const void *src,
                           size_t n) {
  (void)b;
  memcpy(dst, src, n);
  return MN_OK;
}

static mn_status fake_memory_info(mn_backend *b, uint64_t *fr, uint64_t *tot) {
  (void)b;
  *tot = 1u << 20;
  *fr = *tot - FAKE_RESERVED;
  return MN_OK;
}

static mn_status fake_normalize(mn_backend *b, const mn_tensor *x, mn_tensor *y,
                                int64_t *zero_rows) {
  (void)b;
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

static const mn_backend_iface fake_iface = {
    .api_version = MN_BACKEND_API_VERSION,
    .name = "fake",
    .destroy = fake_destroy,
    .alloc = fake_alloc,
    .free = fake_free,
    .upload = fake_copy,
    .download = fake_copy,
    .memory_info = fake_memory_info,
    .normalize = fake_normalize,
};

EXPORT int mn_plugin_score(void) {
  return 1;
}

EXPORT mn_status mn_plugin_init(const mn_backend_opts *opts,
                                const mn_backend_host *h, mn_backend **out) {
  (void)opts;
  if (!h || h->api_version != MN_BACKEND_API_VERSION)
    return MN_ERR_VERSION;
  host = h;
  mn_backend *b = calloc(1, sizeof *b);
  if (!b)
    return h->set_error(MN_ERR_NOMEM, "fake: no memory");
  b->iface = &fake_iface;
  b->device_kind = MN_DEVICE_HOST;
  strcpy(b->device, "fake:0 test plugin");
  h->account_add(MN_TIER_DEVICE, FAKE_RESERVED);
  h->log(MN_LOG_INFO, "fake", "fake plugin ready (%d reserved)", FAKE_RESERVED);
  *out = b;
  return MN_OK;
}
