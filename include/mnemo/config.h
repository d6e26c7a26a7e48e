/*
 * mnemo/config.h - the JSON configuration: the seed's keys (gpu.*,
 * processing.*) plus server.* and storage.*.
 *
 * Precedence, lowest first: built-in defaults, the JSON file, MNEMO_*
 * environment variables, command-line flags (applied by the caller with
 * mn_config_set). Every key has one dotted name ("gpu.memory_limit"); its
 * environment variable is MNEMO_ plus the name upper-cased with '.' turned
 * into '_' (MNEMO_GPU_MEMORY_LIMIT).
 */
#ifndef MNEMO_CONFIG_H
#define MNEMO_CONFIG_H

#include "mnemo/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MN_CONFIG_MAX_TOKENS 16
#define MN_CONFIG_MAX_ORIGINS 16

typedef struct mn_config {
  /* gpu.* */
  int gpu_enabled;           /* gpu.enabled (bool), default true */
  uint64_t gpu_memory_limit; /* gpu.memory_limit (size), 0 = no limit */
  char gpu_precision[16];    /* gpu.precision: "float32" | "float16" |
                                "bfloat16" */
  char gpu_device[16];       /* gpu.device: "auto" | "cpu" | "cuda" */
  int64_t gpu_min_elements;  /* gpu.min_elements, default 262144: a
                                processEmbeddings job without PCA and with
                                fewer values runs on the CPU (a PCIe round
                                trip costs more than the work); 0 sends
                                everything to the device */
  /* processing.* */
  int64_t batch_size;      /* processing.batch_size, default 32 */
  uint64_t cache_size;     /* processing.cache_size (size), default 4GB */
  int64_t timeout_ms;      /* processing.timeout, default 30000 */
  int64_t workers;         /* processing.workers, 0 = one per core
                              (mnemod on a GPU: 4 per core, 32 to 64) */
  int64_t batch_window_us; /* processing.batch_window_us, default 200 */
  int64_t batch_max_rows;  /* processing.batch_max_rows, default 4096 */
  int64_t queue_limit;     /* processing.queue_limit: requests queued or
                              running over all connections before mnemod
                              stops reading new ones; 0 = 4 per worker,
                              at least 64 */
  /* server.* */
  char host[256];            /* server.host, default "127.0.0.1" */
  int port;                  /* server.port, default 3001 */
  int64_t max_connections;   /* server.max_connections, default 1000 */
  uint64_t max_message_size; /* server.max_message_size (size), 100MB */
  int64_t rate_limit;        /* server.rate_limit: requests per minute per
                                client, default 1000, 0 = off */
  int64_t max_json_depth;    /* server.max_json_depth, default 64 */
  int64_t idle_timeout_s;    /* server.idle_timeout, default 300 */
  int64_t drain_timeout_ms;  /* server.drain_timeout: graceful shutdown
                                deadline in ms, default 10000 */
  int64_t drain_delay_ms;    /* server.drain_delay: on a stop, keep serving
                                with /ready at 503 this long first (ms),
                                default 0 */
  /* server.mcp_max_sessions: MCP sessions over HTTP (/mcp) open at once,
   * default 1000; server.mcp_session_timeout: seconds after which an idle
   * one ends, default 1800. */
  int64_t mcp_max_sessions;
  int64_t mcp_session_timeout_s;
  char auth_tokens[MN_CONFIG_MAX_TOKENS][128]; /* server.auth_tokens */
  int n_auth_tokens;
  char allowed_origins[MN_CONFIG_MAX_ORIGINS][256]; /* server.allowed_origins */
  int n_allowed_origins;
  char tls_cert[512]; /* server.tls_cert */
  char tls_key[512];  /* server.tls_key */
  char log_level[16]; /* server.log_level, default "info" */
  /* storage.* */
  char data_dir[1024];   /* storage.data_dir, default "./data" */
  uint64_t disk_limit;   /* storage.disk_limit (size), 0 = no limit */
  char sync[16];         /* storage.sync: "durable" | "none" */
  int64_t chunk_ttl_s;   /* storage.chunk_ttl, default 3600 */
  char plugin_dir[1024]; /* gpu.plugin_dir, default "" */
} mn_config;

/** Fill with the defaults above. */
MN_API void mn_config_defaults(mn_config *c);

/**
 * Apply a JSON file over c. Unknown keys, wrong types and bad values give
 * MN_ERR_INVALID (or MN_ERR_PARSE for bad JSON, MN_ERR_IO for an unreadable
 * file) with a detail message naming the key and why.
 */
MN_API mn_status mn_config_load_file(mn_config *c, const char *path);
/** As mn_config_load_file from a string. */
MN_API mn_status mn_config_load_string(mn_config *c, const char *json);
/** Apply MNEMO_* environment overrides. Same errors, naming the variable. */
MN_API mn_status mn_config_apply_env(mn_config *c);
/**
 * Set one key by dotted name from its text form ("gpu.memory_limit",
 * "20GB"). Same errors as above.
 */
MN_API mn_status mn_config_set(mn_config *c, const char *key,
                               const char *value);
/** Check cross-key consistency (port range, sizes, ...). */
MN_API mn_status mn_config_validate(const mn_config *c);

/**
 * The reference of every key (name, type, default, allowed values,
 * environment variable, what it does), drawn from the same table the
 * loader uses: as plain text for `mnemod --help-config`, and as the
 * Markdown of docs/config.md (tables plus an example file holding every
 * default). malloc'd, to be freed; NULL when out of memory.
 */
MN_API char *mn_config_keys_text(void);
/** As mn_config_keys_text, as docs/config.md. */
MN_API char *mn_config_keys_markdown(void);

#ifdef __cplusplus
}
#endif
#endif /* MNEMO_CONFIG_H */
