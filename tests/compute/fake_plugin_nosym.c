/*
 * fake_plugin_nosym.c - a shared object that is not a mnemo plugin: it
 * exports a score but no mn_plugin_init.
 */
#define EXPORT __attribute__((visibility("default")))

EXPORT int mn_plugin_score(void) {
  return 1;
}
