/*
 * fake_plugin_slow.c - a "GPU" backend plugin whose every op hangs for
 * FAKE_SLOW_MS and then fails with MN_ERR_DEVICE_OOM: a device that stops
 * answering, for the integration test of a worker stuck past the watchdog
 * (test_concurrency.py). Small jobs never reach it (gpu.min_elements keeps
 * them on the CPU backend beside the device).
 */
#include "compute/backend_impl.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))
#define FAKE_SLOW_MS 10000

static const mn_backend_host *host;

static mn_status hang(const char *op) {
  struct timespec ts = {FAKE_SLOW_MS / 1000, (FAKE_SLOW_MS % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0)
    ;
  return host->set_error(MN_ERR_DEVICE_OOM,
                         "fake slow gpu: %s gave up after %d ms", op,
                         FAKE_SLOW_MS);
}

static void fake_destroy(mn_backend *b) {
  free(b);
}

static mn_status fake_alloc(mn_backend *b, size_t n, void **out) {
  (void)b;
  *out = malloc(n ? n : 1);
  return *out ? MN_OK
              : host->set_error(MN_ERR_DEVICE_OOM, "fake slow gpu: no memory");
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
  *tot = 1u << 30;
  *fr = 1u << 30;
  return MN_OK;
}

static mn_status fake_normalize(mn_backend *b, const mn_tensor *x, mn_tensor *y,
                                int64_t *zero_rows) {
  (void)b, (void)x, (void)y, (void)zero_rows;
  return hang("normalize");
}

static const mn_backend_iface fake_iface = {
    .api_version = MN_BACKEND_API_VERSION,
    .name = "fakeslow",
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
    return h->set_error(MN_ERR_NOMEM, "fake slow gpu: no memory");
  b->iface = &fake_iface;
  b->device_kind = MN_DEVICE_GPU;
  strcpy(b->device, "fakeslow:0 hanging test device");
  *out = b;
  return MN_OK;
}
