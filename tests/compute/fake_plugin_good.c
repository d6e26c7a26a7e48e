/*
 * fake_plugin_good.c - a well-formed backend plugin for
 * test_backend_loader: right API version, score 1, host memory, and one
 * op (normalize) so the test can see it being used. It borrows the core's
 * services through mn_backend_host only: it logs when it starts and
 * accounts 4096 bytes of "device" memory while it is open, so the test can
 * tell that init and destroy both ran.
 */
#include "fake_plugin.h"

#define FAKE_RESERVED 4096

static void fake_destroy(mn_backend *b) {
  host->account_add(MN_TIER_DEVICE, -FAKE_RESERVED);
  free(b);
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
  return fake_normalize_rows(x, y, zero_rows);
}

static const mn_backend_iface fake_iface = {
    FAKE_IFACE_COMMON("fake", fake_destroy, fake_memory_info, fake_normalize),
};

EXPORT mn_status mn_plugin_init(const mn_backend_opts *opts,
                                const mn_backend_host *h, mn_backend **out) {
  (void)opts;
  mn_status s =
      fake_new(h, &fake_iface, MN_DEVICE_HOST, "fake:0 test plugin", out);
  if (s != MN_OK)
    return s;
  h->account_add(MN_TIER_DEVICE, FAKE_RESERVED);
  h->log(MN_LOG_INFO, "fake", "fake plugin ready (%d reserved)", FAKE_RESERVED);
  return MN_OK;
}
