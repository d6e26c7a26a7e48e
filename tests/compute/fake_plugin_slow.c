/*
 * fake_plugin_slow.c - a "GPU" backend plugin whose every op hangs for
 * FAKE_SLOW_MS and then fails with MN_ERR_DEVICE_OOM: a device that stops
 * answering, for the integration test of a worker stuck past the watchdog
 * (test_concurrency.py). Small jobs never reach it (gpu.min_elements keeps
 * them on the CPU backend beside the device).
 */
#include "fake_plugin.h"

#include <time.h>

#define FAKE_SLOW_MS 10000

static mn_status hang(const char *op) {
  struct timespec ts = {FAKE_SLOW_MS / 1000, (FAKE_SLOW_MS % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0)
    ;
  return host->set_error(MN_ERR_DEVICE_OOM,
                         "fake slow gpu: %s gave up after %d ms", op,
                         FAKE_SLOW_MS);
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
    FAKE_IFACE_COMMON("fakeslow", fake_destroy_plain, fake_memory_info,
                      fake_normalize),
};

EXPORT mn_status mn_plugin_init(const mn_backend_opts *opts,
                                const mn_backend_host *h, mn_backend **out) {
  (void)opts;
  return fake_new(h, &fake_iface, MN_DEVICE_GPU,
                  "fakeslow:0 hanging test device", out);
}
