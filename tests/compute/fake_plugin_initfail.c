/*
 * fake_plugin_initfail.c - a plugin whose init fails the way the CUDA
 * plugin does on a machine whose driver is missing: it says why through
 * the host's set_error, and the loader must pass that reason on.
 */
#include "compute/backend_impl.h"

#define EXPORT __attribute__((visibility("default")))

EXPORT int mn_plugin_score(void) {
  return 1;
}

EXPORT mn_status mn_plugin_init(const mn_backend_opts *opts,
                                const mn_backend_host *h, mn_backend **out) {
  (void)opts;
  (void)out;
  return h->set_error(MN_ERR_DEVICE, "fake driver: no device answered");
}
