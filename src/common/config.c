/* config.c - PLACEHOLDER until the configuration lands. */
#include "common/internal.h"
#include "mnemo/config.h"
#include <string.h>
void mn_config_defaults(mn_config *c) {
  memset(c, 0, sizeof *c);
  c->gpu_enabled = 1;
  strcpy(c->gpu_precision, "float32");
  strcpy(c->gpu_device, "auto");
  c->batch_size = 32;
  c->cache_size = 4000000000ull;
  c->timeout_ms = 30000;
  c->batch_window_us = 200;
  c->batch_max_rows = 4096;
  strcpy(c->host, "127.0.0.1");
  c->port = 3001;
  c->max_connections = 1000;
  c->max_message_size = 100000000ull;
  c->rate_limit = 1000;
  c->max_json_depth = 64;
  c->idle_timeout_s = 300;
  strcpy(c->log_level, "info");
  strcpy(c->data_dir, "./data");
  strcpy(c->sync, "durable");
  c->chunk_ttl_s = 3600;
}
mn_status mn_config_load_file(mn_config *c, const char *path) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "config: not yet");
}
mn_status mn_config_load_string(mn_config *c, const char *json) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "config: not yet");
}
mn_status mn_config_apply_env(mn_config *c) { return MN_OK; }
mn_status mn_config_set(mn_config *c, const char *key, const char *value) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "config: not yet");
}
mn_status mn_config_validate(const mn_config *c) { return MN_OK; }
