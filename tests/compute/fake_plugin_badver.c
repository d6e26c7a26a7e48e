/*
 * fake_plugin_badver.c - a plugin built against another backend API
 * version: it loads and starts, but its vtable says version 999. The
 * loader must refuse it and destroy what it made (the test checks that
 * the 4096 bytes it accounts at init are given back).
 */
#include "compute/backend_impl.h"

#include <stdlib.h>

#define EXPORT __attribute__((visibility("default")))

static const mn_backend_host *host;

static void badver_destroy(mn_backend *b) {
  host->account_add(MN_TIER_DEVICE, -4096);
  free(b);
}

static const mn_backend_iface badver_iface = {
    .api_version = 999,
    .name = "badver",
    .destroy = badver_destroy,
};

EXPORT int mn_plugin_score(void) {
  return 5;
}

EXPORT mn_status mn_plugin_init(const mn_backend_opts *opts,
                                const mn_backend_host *h, mn_backend **out) {
  (void)opts;
  host = h;
  mn_backend *b = calloc(1, sizeof *b);
  if (!b)
    return MN_ERR_NOMEM;
  b->iface = &badver_iface;
  h->account_add(MN_TIER_DEVICE, 4096);
  *out = b;
  return MN_OK;
}
