/*
 * fake_plugin_zero.c - a plugin that is not usable on this machine (as the
 * CUDA plugin is without a GPU): its score is 0, so the loader must not
 * call its init (which would fail the test by returning a bogus status).
 */
#include "compute/backend_impl.h"

#define EXPORT __attribute__((visibility("default")))

EXPORT int mn_plugin_score(void) {
  return 0;
}

EXPORT mn_status mn_plugin_init(const mn_backend_opts *opts,
                                const mn_backend_host *h, mn_backend **out) {
  (void)opts;
  (void)out;
  return h->set_error(MN_ERR_INTERNAL, "zero-score plugin was initialised");
}
