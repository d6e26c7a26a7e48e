/*
 * config.c - the JSON configuration (the seed's gpu.* and processing.* keys
 * plus server.* and storage.*), MNEMO_* environment overrides and single
 * key=value settings from the command line.
 *
 * Every key is one row of key_table below: its dotted name, where it lives
 * in mn_config, its type and its allowed range. Loading JSON, reading the
 * environment, mn_config_set and mn_config_validate all walk that one table,
 * so a key added there is known everywhere, with the same checks and the
 * same error messages.
 *
 * DESIGN: the functions are not thread-safe with respect to one mn_config
 * (the caller owns it; configuration happens at start-up). Each applying
 * function works on a private copy and writes it back only when everything
 * applied, so a failed load leaves the caller's configuration untouched.
 */
#include "common/internal.h"
#include "common/quote.h"
#include "mnemo/config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern char **environ;

/* A configuration file larger than this is certainly a mistake. */
#define CONFIG_MAX_FILE_BYTES (16u << 20)
/* Longest dotted name we look at when suggesting a near miss. */
#define KEY_NAME_MAX 64

typedef enum key_type {
  KT_BOOL, /* int, 0 or 1 */
  KT_INT,  /* int or int64_t, in [lo, hi] */
  KT_SIZE, /* uint64_t bytes, at least lo */
  KT_STR,  /* char[cap] */
  KT_ENUM, /* char[cap], one of choices */
  KT_LIST  /* char[max_items][cap] plus an int count */
} key_type;

typedef struct key_desc {
  const char *name;
  key_type type;
  size_t off;  /* offset of the field in mn_config */
  size_t size; /* sizeof the field (int vs int64_t; string buffer bytes) */
  int64_t lo, hi;
  const char *const *choices; /* KT_ENUM, NULL-terminated */
  size_t count_off;           /* KT_LIST: offset of the int count */
  int max_items;              /* KT_LIST */
  size_t cap;                 /* KT_LIST: bytes per item */
  int nonempty;               /* KT_STR: "" is refused */
  const char *note;           /* appended to range messages */
  const char *help;           /* what the key does, for the reference */
} key_desc;

static const char *const precisions[] = {"float32", "float16", "bfloat16",
                                         NULL};
static const char *const devices[] = {"auto", "cpu", "cuda", NULL};
static const char *const syncs[] = {"durable", "none", NULL};
static const char *const log_levels[] = {"debug", "info", "warn",
                                         "error", "none", NULL};

/* Row makers: .off and .size always come from the same field, so a key can
 * never be read or written with the wrong width. The last argument says
 * what the key does; `mnemod --help-config` and docs/config.md print it. */
#define OFFS(f)                                                                \
  .off = offsetof(mn_config, f), .size = sizeof(((mn_config *)0)->f)
#define BOOL_KEY(n, f, h)                                                      \
  { .name = n, .type = KT_BOOL, OFFS(f), .help = h }
#define INT_KEY(n, f, l, u, why, h)                                            \
  {                                                                            \
    .name = n, .type = KT_INT, OFFS(f), .lo = l, .hi = u, .note = why,         \
    .help = h                                                                  \
  }
#define SIZE_KEY(n, f, l, why, h)                                              \
  { .name = n, .type = KT_SIZE, OFFS(f), .lo = l, .note = why, .help = h }
#define STR_KEY(n, f, ne, h)                                                   \
  { .name = n, .type = KT_STR, OFFS(f), .nonempty = ne, .help = h }
#define ENUM_KEY(n, f, ch, h)                                                  \
  { .name = n, .type = KT_ENUM, OFFS(f), .choices = ch, .help = h }
#define LIST_KEY(n, f, count, max, h)                                          \
  {                                                                            \
    .name = n, .type = KT_LIST, OFFS(f),                                       \
    .count_off = offsetof(mn_config, count), .max_items = max,                 \
    .cap = sizeof(((mn_config *)0)->f[0]), .help = h                           \
  }
#define I32MAX INT32_MAX

/* The order is the order of config.h; 0-means-something notes repeat what
 * config.h promises. */
static const key_desc key_table[] = {
    BOOL_KEY("gpu.enabled", gpu_enabled,
             "Use a GPU when one is found. false keeps gpu.device \"auto\" on "
             "the CPU (and gpu.device \"cuda\" is then refused)."),
    SIZE_KEY("gpu.memory_limit", gpu_memory_limit, 0, "0 means no limit",
             "Device memory mnemo may use: the CUDA plugin's memory pool and "
             "the store's GPU tier (L1)."),
    ENUM_KEY("gpu.precision", gpu_precision, precisions,
             "Arithmetic on the GPU. float32 keeps results float32-exact; "
             "float16 and bfloat16 (treated alike) let the CUDA plugin use "
             "faster reduced-precision products (TF32, float16) in PCA and "
             "search. No effect on the CPU backend."),
    ENUM_KEY("gpu.device", gpu_device, devices,
             "Backend: auto loads the CUDA plugin when a usable GPU is there "
             "and uses the CPU otherwise; cpu never loads it; cuda makes "
             "start-up fail without a GPU."),
    INT_KEY("gpu.min_elements", gpu_min_elements, 0, I32MAX,
            "values; 0 sends every job to the device",
            "A processEmbeddings job without PCA that has fewer values (rows "
            "x columns) runs on the CPU even with a GPU backend: for small "
            "jobs the PCIe round trip costs more than the work."),
    STR_KEY("gpu.plugin_dir", plugin_dir, 0,
            "Directory searched first for the CUDA plugin "
            "(libmnemo-cuda.so); then come mnemod's own directory, ../lib "
            "next to it and the directories in MNEMO_BACKEND_PATH."),
    INT_KEY("processing.batch_size", batch_size, 1, I32MAX, "rows",
            "Rows per backend call in processEmbeddings when the request "
            "does not set options.batch_size."),
    SIZE_KEY("processing.cache_size", cache_size, 0, NULL,
             "Host memory budget: request buffers, working-memory chunks and "
             "the store's host tier (L2). A request that would go over it "
             "fails with -32000. 0 means no limit."),
    INT_KEY("processing.timeout", timeout_ms, 1, I32MAX, "milliseconds",
            "Deadline of one request, counted from its arrival; a request "
            "still queued or running after it fails with a timeout error."),
    INT_KEY("processing.workers", workers, 0, 1024,
            "0 means one per core (4 per core, 32 to 64, on a GPU)",
            "Worker threads; each runs one request at a time, start to "
            "end."),
    INT_KEY("processing.batch_window_us", batch_window_us, 0, 1000000,
            "microseconds",
            "Dynamic batching: how long a processEmbeddings job waits for "
            "others to share one backend call. 0 turns batching off (so "
            "does a single worker)."),
    INT_KEY("processing.batch_max_rows", batch_max_rows, 1, I32MAX, "rows",
            "Dynamic batching: the most rows merged into one backend call."),
    INT_KEY("processing.queue_limit", queue_limit, 0, I32MAX,
            "requests; 0 means 4 per worker, at least 64",
            "Requests queued or running over all connections before mnemod "
            "stops reading new ones until the backlog drains (back "
            "pressure)."),
    STR_KEY("server.host", host, 1,
            "Address to listen on; 0.0.0.0 listens on every IPv4 "
            "interface."),
    INT_KEY("server.port", port, 0, 65535, "0 picks a free port",
            "TCP port for WebSocket (JSON-RPC / MCP) and HTTP (/health, "
            "/ready, /metrics)."),
    INT_KEY("server.max_connections", max_connections, 1, 1000000, NULL,
            "WebSocket connections open at once; the next handshake is "
            "refused with HTTP 503. Also the most HTTP /mcp requests "
            "in flight at once."),
    SIZE_KEY("server.max_message_size", max_message_size, 1024, NULL,
             "Largest incoming WebSocket message; a larger one closes the "
             "connection with code 1009. A larger POST /mcp body is "
             "refused with HTTP 413."),
    INT_KEY("server.rate_limit", rate_limit, 0, I32MAX,
            "requests per minute per client, 0 turns it off",
            "Requests per minute per connection (per session for /mcp); "
            "requests over it fail with -32003 and say when to retry."),
    INT_KEY("server.max_json_depth", max_json_depth, 1, 2048, NULL,
            "Deepest nesting of arrays and objects accepted in a request."),
    INT_KEY("server.idle_timeout", idle_timeout_s, 1, I32MAX, "seconds",
            "A connection with nothing in flight and no traffic for this "
            "long is closed."),
    INT_KEY("server.drain_timeout", drain_timeout_ms, 1, I32MAX, "ms",
            "On SIGINT / SIGTERM, how long requests in flight may take to "
            "finish before mnemod closes the connections and exits."),
    INT_KEY("server.drain_delay", drain_delay_ms, 0, I32MAX, "ms",
            "On SIGINT / SIGTERM, how long mnemod keeps serving as usual, "
            "new connections included, with /ready answering 503, before "
            "the drain starts: time for a load balancer's health check to "
            "take it out of rotation. A second signal skips it. 0: drain at "
            "once."),
    INT_KEY("server.mcp_max_sessions", mcp_max_sessions, 1, 1000000, NULL,
            "MCP sessions over HTTP (POST /mcp) open at once; an "
            "initialize beyond it is refused with HTTP 503."),
    INT_KEY("server.mcp_session_timeout", mcp_session_timeout_s, 1, I32MAX,
            "seconds",
            "An MCP session over HTTP (/mcp) with no request for this long "
            "ends; its id then gets HTTP 404."),
    LIST_KEY("server.auth_tokens", auth_tokens, n_auth_tokens,
             MN_CONFIG_MAX_TOKENS,
             "When not empty, a WebSocket client (and every /mcp request) "
             "must send one of these tokens (Authorization: Bearer TOKEN, "
             "or ?token=TOKEN) or is refused with HTTP 401. Empty: no "
             "authentication."),
    LIST_KEY("server.allowed_origins", allowed_origins, n_allowed_origins,
             MN_CONFIG_MAX_ORIGINS,
             "When not empty, a WebSocket handshake or /mcp request whose "
             "Origin header is not in the list (case-insensitive; \"*\" "
             "allows any) is refused with HTTP 403. Clients that send no "
             "Origin are let in. Empty: any Origin for WebSockets; for /mcp "
             "only loopback ones (http://localhost:*, 127.0.0.1, [::1]), "
             "against DNS rebinding."),
    STR_KEY("server.tls_cert", tls_cert, 0,
            "PEM certificate for wss://, set together with server.tls_key. "
            "mnemod does not serve TLS yet and refuses to start when it is "
            "set; terminate TLS in a proxy in front of it (HAProxy: "
            "deploy/haproxy.cfg, docs/operations.md)."),
    STR_KEY("server.tls_key", tls_key, 0,
            "PEM private key that goes with server.tls_cert (not served "
            "yet, as above)."),
    ENUM_KEY("server.log_level", log_level, log_levels,
             "Least severe level logged (JSON lines on stderr); none logs "
             "nothing."),
    STR_KEY("storage.data_dir", data_dir, 1,
            "Directory of the store (LMDB) and saved PCA models; created "
            "when missing."),
    SIZE_KEY("storage.disk_limit", disk_limit, 0, "0 means no limit",
             "Disk budget of the store (tier L3); a write that would go "
             "over it fails."),
    ENUM_KEY("storage.sync", sync, syncs,
             "durable: a write returns only after its commit is flushed to "
             "disk (fdatasync); none: no flush, faster, but a crash may "
             "lose the latest writes."),
    INT_KEY("storage.chunk_ttl", chunk_ttl_s, 1, I32MAX, "seconds",
            "Working-memory chunks (allocateMemory) unused for this long "
            "are freed."),
};
#define N_KEYS (sizeof key_table / sizeof key_table[0])

static const char *const sections[] = {"gpu", "processing", "server", "storage",
                                       NULL};
/* One key of each section, for examples in messages. */
static const char *const section_examples[] = {"enabled", "timeout", "port",
                                               "data_dir"};

void mn_config_defaults(mn_config *c) {
  memset(c, 0, sizeof *c);
  c->gpu_enabled = 1;
  strcpy(c->gpu_precision, "float32");
  strcpy(c->gpu_device, "auto");
  c->gpu_min_elements = 262144;
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
  c->drain_timeout_ms = 10000;
  c->drain_delay_ms = 0;
  c->idle_timeout_s = 300;
  c->mcp_max_sessions = 1000;
  c->mcp_session_timeout_s = 1800;
  strcpy(c->log_level, "info");
  strcpy(c->data_dir, "./data");
  strcpy(c->sync, "durable");
  c->chunk_ttl_s = 3600;
}

/* ------------------------------------------------------------------------
 * Messages
 * ---------------------------------------------------------------------- */

/* Where a value came from, for the start of an error message. */
typedef struct origin {
  const char *env; /* environment variable name, or NULL */
} origin;

static const char *quote_str(const char *s, char *buf, size_t len) {
  return mn__quote(s, strlen(s), buf, len);
}

/* "configuration key "x"" or "environment variable MNEMO_X (x)". */
static void key_ref(const key_desc *k, const origin *o, char *buf, size_t len) {
  if (o && o->env)
    snprintf(buf, len, "environment variable %s (%s)", o->env, k->name);
  else
    snprintf(buf, len, "configuration key \"%s\"", k->name);
}

__attribute__((format(printf, 3, 4))) static mn_status
key_error(const key_desc *k, const origin *o, const char *fmt, ...) {
  char ref[160], what[900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  key_ref(k, o, ref, sizeof ref);
  return mn__set_error(MN_ERR_INVALID, "%s %s", ref, what);
}

/* What a key expects, as the words after "must be". */
static void expected(const key_desc *k, int text_form, char *buf, size_t len) {
  switch (k->type) {
  case KT_BOOL:
    snprintf(buf, len, "%s",
             text_form ? "a boolean (true, false, 1, 0, yes or no)"
                       : "a boolean (true or false)");
    break;
  case KT_INT:
    snprintf(buf, len, "an integer from %lld to %lld%s%s%s", (long long)k->lo,
             (long long)k->hi, k->note ? " (" : "", k->note ? k->note : "",
             k->note ? ")" : "");
    break;
  case KT_SIZE: {
    char least[48] = "";
    if (k->lo)
      snprintf(least, sizeof least, ", at least %lld bytes", (long long)k->lo);
    snprintf(buf, len,
             "a size such as \"20GB\" or \"512MiB\", or a whole number of "
             "bytes%s%s%s%s",
             least, k->note ? " (" : "", k->note ? k->note : "",
             k->note ? ")" : "");
    break;
  }
  case KT_STR:
    snprintf(buf, len, "a%s string of at most %zu bytes",
             k->nonempty ? " non-empty" : "", k->size - 1);
    break;
  case KT_ENUM: {
    size_t o = (size_t)snprintf(buf, len, "one of");
    for (int i = 0; k->choices[i] && o < len; i++)
      o += (size_t)snprintf(buf + o, len - o, "%s\"%s\"", i ? ", " : " ",
                            k->choices[i]);
    break;
  }
  case KT_LIST:
    if (text_form)
      snprintf(buf, len,
               "a comma-separated list of at most %d non-empty items of at "
               "most %zu bytes each",
               k->max_items, k->cap - 1);
    else
      snprintf(buf, len,
               "an array of at most %d non-empty strings of at most %zu "
               "bytes each",
               k->max_items, k->cap - 1);
    break;
  }
}

/* A JSON value as the words after "not": the string "x", the number 5... */
static void describe_json(const json_t *v, char *buf, size_t len) {
  char q[64];
  switch (json_typeof(v)) {
  case JSON_STRING:
    snprintf(
        buf, len, "the string %s",
        mn__quote(json_string_value(v), json_string_length(v), q, sizeof q));
    break;
  case JSON_INTEGER:
    snprintf(buf, len, "the number %lld", (long long)json_integer_value(v));
    break;
  case JSON_REAL:
    snprintf(buf, len, "the number %.15g", json_real_value(v));
    break;
  case JSON_TRUE:
    snprintf(buf, len, "true");
    break;
  case JSON_FALSE:
    snprintf(buf, len, "false");
    break;
  case JSON_NULL:
    snprintf(buf, len, "null");
    break;
  case JSON_ARRAY:
    snprintf(buf, len, "an array");
    break;
  case JSON_OBJECT:
    snprintf(buf, len, "an object");
    break;
  }
}

static mn_status type_error_json(const key_desc *k, const json_t *v) {
  char want[256], got[96];
  expected(k, 0, want, sizeof want);
  describe_json(v, got, sizeof got);
  return key_error(k, NULL, "must be %s, not %s", want, got);
}

static mn_status type_error_text(const key_desc *k, const origin *o,
                                 const char *text) {
  char want[256], q[64];
  expected(k, 1, want, sizeof want);
  return key_error(k, o, "must be %s, not %s", want,
                   quote_str(text, q, sizeof q));
}

/* ------------------------------------------------------------------------
 * Key lookup and near-miss suggestions
 * ---------------------------------------------------------------------- */

static const key_desc *find_key(const char *name) {
  for (size_t i = 0; i < N_KEYS; i++)
    if (strcmp(key_table[i].name, name) == 0)
      return &key_table[i];
  return NULL;
}

static int is_section(const char *name) {
  for (int i = 0; sections[i]; i++)
    if (strcmp(sections[i], name) == 0)
      return 1;
  return 0;
}

/* Case-insensitive edit distance, with '.', '_' and '-' treated as one
 * character class so that "GPU_MEMORY_LIMIT" is near "gpu.memory_limit". */
static int fold(char ch) {
  if (ch == '.' || ch == '-')
    return '_';
  return tolower((unsigned char)ch);
}

static int edit_distance(const char *a, const char *b) {
  size_t la = MN__MIN(strlen(a), (size_t)KEY_NAME_MAX);
  size_t lb = MN__MIN(strlen(b), (size_t)KEY_NAME_MAX);
  int row[KEY_NAME_MAX + 1];
  for (size_t j = 0; j <= lb; j++)
    row[j] = (int)j;
  for (size_t i = 1; i <= la; i++) {
    int diag = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= lb; j++) {
      int up = row[j];
      int best = diag + (fold(a[i - 1]) != fold(b[j - 1]));
      best = MN__MIN(best, up + 1);
      best = MN__MIN(best, row[j - 1] + 1);
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

static int close_enough(const char *given, int d) {
  int len = (int)MN__MIN(strlen(given), (size_t)KEY_NAME_MAX);
  return d <= MN__MAX(2, len / 3);
}

/* The known key (or section, when sections_too) nearest to `given`, or
 * NULL when nothing is near. A bare leaf name ("port") also matches the
 * key that ends in it ("server.port"). */
static const char *suggest(const char *given, int sections_too) {
  const char *best = NULL;
  int best_d = INT_MAX;
  for (size_t i = 0; i < N_KEYS; i++) {
    const char *name = key_table[i].name;
    int d = edit_distance(given, name);
    if (!strchr(given, '.')) {
      int dl = edit_distance(given, strchr(name, '.') + 1);
      d = MN__MIN(d, dl);
    }
    if (d < best_d) {
      best_d = d;
      best = name;
    }
  }
  if (sections_too) {
    for (int i = 0; sections[i]; i++) {
      int d = edit_distance(given, sections[i]);
      if (d < best_d) {
        best_d = d;
        best = sections[i];
      }
    }
  }
  return best && close_enough(given, best_d) ? best : NULL;
}

/* "unknown configuration key "gpu.memory_limt" (did you mean ...)". */
static mn_status unknown_key(const char *given, const origin *o) {
  char q[80];
  quote_str(given, q, sizeof q);
  char where[160] = "";
  if (o && o->env)
    snprintf(where, sizeof where, " (from environment variable %s)", o->env);

  const char *near = suggest(given, 0);
  if (near)
    return mn__set_error(MN_ERR_INVALID,
                         "unknown configuration key %s%s; did you mean "
                         "\"%s\"?",
                         q, where, near);

  /* No near miss: list the keys of the section when the section is right. */
  const char *dot = strchr(given, '.');
  if (dot) {
    char sect[32];
    size_t n = MN__MIN((size_t)(dot - given), sizeof sect - 1);
    memcpy(sect, given, n);
    sect[n] = '\0';
    if (is_section(sect)) {
      char list[512];
      size_t off = 0;
      for (size_t i = 0; i < N_KEYS && off < sizeof list; i++) {
        const char *name = key_table[i].name;
        if (strncmp(name, sect, n) == 0 && name[n] == '.')
          off += (size_t)snprintf(list + off, sizeof list - off, "%s%s",
                                  off ? ", " : "", name + n + 1);
      }
      return mn__set_error(MN_ERR_INVALID,
                           "unknown configuration key %s%s; the keys under "
                           "\"%s\" are: %s",
                           q, where, sect, list);
    }
  }
  return mn__set_error(MN_ERR_INVALID,
                       "unknown configuration key %s%s; keys are written "
                       "\"section.name\" with the sections gpu, processing, "
                       "server and storage, e.g. \"gpu.memory_limit\"",
                       q, where);
}

/* ------------------------------------------------------------------------
 * Storing checked values into the struct
 * ---------------------------------------------------------------------- */

static void *field(mn_config *c, const key_desc *k) {
  return (char *)c + k->off;
}

static const void *cfield(const mn_config *c, const key_desc *k) {
  return (const char *)c + k->off;
}

static int64_t get_int(const mn_config *c, const key_desc *k) {
  if (k->size == sizeof(int))
    return *(const int *)cfield(c, k);
  return *(const int64_t *)cfield(c, k);
}

static mn_status store_int(mn_config *c, const key_desc *k, const origin *o,
                           int64_t v) {
  if (v < k->lo || v > k->hi) {
    char want[256];
    expected(k, 0, want, sizeof want);
    return key_error(k, o, "must be %s, not %lld", want, (long long)v);
  }
  if (k->size == sizeof(int))
    *(int *)field(c, k) = (int)v;
  else
    *(int64_t *)field(c, k) = v;
  return MN_OK;
}

static mn_status store_size(mn_config *c, const key_desc *k, const origin *o,
                            uint64_t v) {
  if (v < (uint64_t)k->lo) {
    char want[256];
    expected(k, 0, want, sizeof want);
    return key_error(k, o, "must be %s, not %llu bytes", want,
                     (unsigned long long)v);
  }
  *(uint64_t *)field(c, k) = v;
  return MN_OK;
}

/* The length and emptiness checks before n bytes of s go into a cap-byte
 * buffer. `what` names a list member ("item 3 "), or is "". */
static mn_status check_string(const key_desc *k, const origin *o, const char *s,
                              size_t n, size_t cap, int nonempty,
                              const char *what) {
  if (n >= cap) {
    char q[64];
    return key_error(k, o,
                     "%sis %zu bytes long, and the limit is %zu bytes: %s",
                     what, n, cap - 1, mn__quote(s, n, q, sizeof q));
  }
  if (memchr(s, '\0', n))
    return key_error(k, o, "%scontains a NUL character", what);
  if (nonempty && n == 0)
    return key_error(k, o, "%sis empty; give a non-empty string", what);
  return MN_OK;
}

static mn_status store_string(mn_config *c, const key_desc *k, const origin *o,
                              const char *s, size_t n, int text_form) {
  if (k->type == KT_ENUM) {
    for (int i = 0; k->choices[i]; i++) {
      if (strlen(k->choices[i]) == n && strncasecmp(k->choices[i], s, n) == 0) {
        strcpy((char *)field(c, k), k->choices[i]);
        return MN_OK;
      }
    }
    char want[256], q[64];
    expected(k, text_form, want, sizeof want);
    return key_error(k, o, "must be %s, not %s", want,
                     mn__quote(s, n, q, sizeof q));
  }
  MN__TRY(check_string(k, o, s, n, k->size, k->nonempty, ""));
  char *dst = field(c, k);
  memcpy(dst, s, n);
  dst[n] = '\0';
  return MN_OK;
}

static mn_status list_append(mn_config *c, const key_desc *k, const origin *o,
                             const char *s, size_t n) {
  int *count = (int *)((char *)c + k->count_off);
  char what[48];
  snprintf(what, sizeof what, "item %d ", *count + 1);
  if (*count >= k->max_items)
    return key_error(k, o, "has more than %d items; at most %d are allowed",
                     k->max_items, k->max_items);
  MN__TRY(check_string(k, o, s, n, k->cap, 1, what));
  char *dst = (char *)field(c, k) + (size_t)*count * k->cap;
  memcpy(dst, s, n);
  dst[n] = '\0';
  (*count)++;
  return MN_OK;
}

static void list_clear(mn_config *c, const key_desc *k) {
  memset(field(c, k), 0, k->size);
  *(int *)((char *)c + k->count_off) = 0;
}

/* ------------------------------------------------------------------------
 * Values from JSON
 * ---------------------------------------------------------------------- */

/* An integral JSON number as int64 (reals such as 30000.0 or 4e9 count when
 * they are whole). Returns 0 when v is not a whole number in range. */
static int json_whole(const json_t *v, int64_t *out) {
  if (json_is_integer(v)) {
    *out = json_integer_value(v);
    return 1;
  }
  if (json_is_real(v)) {
    double d = json_real_value(v);
    if (isfinite(d) && d == floor(d) && d >= -9.2e18 && d <= 9.2e18) {
      *out = (int64_t)d;
      return 1;
    }
  }
  return 0;
}

static mn_status set_json(mn_config *c, const key_desc *k, const json_t *v) {
  switch (k->type) {
  case KT_BOOL:
    if (!json_is_boolean(v))
      return type_error_json(k, v);
    *(int *)field(c, k) = json_is_true(v);
    return MN_OK;
  case KT_INT: {
    int64_t i;
    if (!json_whole(v, &i))
      return type_error_json(k, v);
    return store_int(c, k, NULL, i);
  }
  case KT_SIZE: {
    if (json_is_string(v)) {
      uint64_t bytes;
      if (strlen(json_string_value(v)) != json_string_length(v))
        return type_error_json(k, v);
      mn_status s = mn_size_parse(json_string_value(v), &bytes);
      if (s != MN_OK) {
        char why[600];
        snprintf(why, sizeof why, "%s", mn_errmsg());
        return key_error(k, NULL, "is not a valid size: %s", why);
      }
      return store_size(c, k, NULL, bytes);
    }
    if (json_is_number(v) && json_number_value(v) >= 1.8446744073709552e19 &&
        json_number_value(v) == floor(json_number_value(v))) {
      char want[256];
      expected(k, 0, want, sizeof want);
      return key_error(k, NULL, "must be %s; %.15g is more than 2^64 bytes",
                       want, json_number_value(v));
    }
    if (json_is_real(v)) {
      double d = json_real_value(v);
      if (isfinite(d) && d >= 0 && d == floor(d))
        return store_size(c, k, NULL, (uint64_t)d);
      return type_error_json(k, v);
    }
    int64_t i;
    if (!json_whole(v, &i) || i < 0)
      return type_error_json(k, v);
    return store_size(c, k, NULL, (uint64_t)i);
  }
  case KT_STR:
  case KT_ENUM:
    if (!json_is_string(v))
      return type_error_json(k, v);
    return store_string(c, k, NULL, json_string_value(v), json_string_length(v),
                        0);
  case KT_LIST: {
    if (!json_is_array(v))
      return type_error_json(k, v);
    list_clear(c, k);
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item) {
      if (!json_is_string(item)) {
        char want[256], got[96];
        expected(k, 0, want, sizeof want);
        describe_json(item, got, sizeof got);
        return key_error(k, NULL, "must be %s; item %zu is %s", want, i + 1,
                         got);
      }
      MN__TRY(list_append(c, k, NULL, json_string_value(item),
                          json_string_length(item)));
    }
    return MN_OK;
  }
  }
  return mn__set_error(MN_ERR_INTERNAL, "config: key %s has no type", k->name);
}

static mn_status apply_json(mn_config *c, const json_t *root) {
  if (!json_is_object(root)) {
    char got[96];
    describe_json(root, got, sizeof got);
    return mn__set_error(MN_ERR_INVALID,
                         "the configuration must be a JSON object such as "
                         "{\"gpu\": {\"memory_limit\": \"20GB\"}}, not %s",
                         got);
  }
  const char *sect;
  json_t *sv;
  json_object_foreach((json_t *)root, sect, sv) {
    /* A dotted name at the top level ("gpu.memory_limit": ...) is the same
     * key written flat. */
    if (strchr(sect, '.')) {
      const key_desc *k = find_key(sect);
      if (!k)
        return unknown_key(sect, NULL);
      MN__TRY(set_json(c, k, sv));
      continue;
    }
    if (!is_section(sect)) {
      const key_desc *leaf = NULL;
      const char *near = suggest(sect, 1);
      if (near && !is_section(near))
        leaf = find_key(near);
      char q[80];
      quote_str(sect, q, sizeof q);
      if (leaf)
        return mn__set_error(MN_ERR_INVALID,
                             "unknown configuration section %s; did you mean "
                             "\"%s\" (written {\"%.*s\": {\"%s\": ...}})?",
                             q, leaf->name,
                             (int)(strchr(leaf->name, '.') - leaf->name),
                             leaf->name, strchr(leaf->name, '.') + 1);
      if (near)
        return mn__set_error(MN_ERR_INVALID,
                             "unknown configuration section %s; did you mean "
                             "\"%s\"?",
                             q, near);
      return mn__set_error(MN_ERR_INVALID,
                           "unknown configuration section %s; the sections "
                           "are gpu, processing, server and storage",
                           q);
    }
    if (!json_is_object(sv)) {
      char got[96];
      describe_json(sv, got, sizeof got);
      int si = 0;
      while (strcmp(sections[si], sect) != 0)
        si++;
      return mn__set_error(MN_ERR_INVALID,
                           "configuration section \"%s\" must be an object "
                           "of keys, e.g. {\"%s\": {\"%s\": ...}}, not %s",
                           sect, sect, section_examples[si], got);
    }
    const char *leaf;
    json_t *v;
    json_object_foreach(sv, leaf, v) {
      char name[160];
      snprintf(name, sizeof name, "%s.%s", sect, leaf);
      const key_desc *k = find_key(name);
      if (!k)
        return unknown_key(name, NULL);
      MN__TRY(set_json(c, k, v));
    }
  }
  return MN_OK;
}

/* ------------------------------------------------------------------------
 * Values from text (environment and command line)
 * ---------------------------------------------------------------------- */

/* Trim spaces at both ends: returns the start and sets *n. */
static const char *trim(const char *s, size_t len, size_t *n) {
  while (len && isspace((unsigned char)*s)) {
    s++;
    len--;
  }
  while (len && isspace((unsigned char)s[len - 1]))
    len--;
  *n = len;
  return s;
}

static mn_status set_text(mn_config *c, const key_desc *k, const origin *o,
                          const char *text) {
  size_t n;
  const char *t = trim(text, strlen(text), &n);
  switch (k->type) {
  case KT_BOOL: {
    static const char *const yes[] = {"true", "1", "yes"};
    static const char *const no[] = {"false", "0", "no"};
    for (int i = 0; i < 3; i++) {
      if (strlen(yes[i]) == n && strncasecmp(t, yes[i], n) == 0) {
        *(int *)field(c, k) = 1;
        return MN_OK;
      }
      if (strlen(no[i]) == n && strncasecmp(t, no[i], n) == 0) {
        *(int *)field(c, k) = 0;
        return MN_OK;
      }
    }
    return type_error_text(k, o, text);
  }
  case KT_INT: {
    char buf[32];
    if (n == 0 || n >= sizeof buf)
      return type_error_text(k, o, text);
    memcpy(buf, t, n);
    buf[n] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (*end != '\0' || !(isdigit((unsigned char)buf[0]) || buf[0] == '-'))
      return type_error_text(k, o, text);
    if (errno == ERANGE)
      return type_error_text(k, o, text);
    return store_int(c, k, o, v);
  }
  case KT_SIZE: {
    uint64_t bytes;
    if (mn_size_parse(text, &bytes) != MN_OK) {
      char why[600];
      snprintf(why, sizeof why, "%s", mn_errmsg());
      return key_error(k, o, "is not a valid size: %s", why);
    }
    return store_size(c, k, o, bytes);
  }
  case KT_STR:
    /* Paths may legitimately end in spaces; take strings as given. */
    return store_string(c, k, o, text, strlen(text), 1);
  case KT_ENUM:
    return store_string(c, k, o, t, n, 1);
  case KT_LIST: {
    list_clear(c, k);
    const char *p = text;
    for (;;) {
      const char *comma = strchr(p, ',');
      size_t len = comma ? (size_t)(comma - p) : strlen(p);
      size_t in;
      const char *item = trim(p, len, &in);
      /* Empty items are skipped, so "" gives an empty list and a trailing
       * comma is harmless. */
      if (in)
        MN__TRY(list_append(c, k, o, item, in));
      if (!comma)
        break;
      p = comma + 1;
    }
    return MN_OK;
  }
  }
  return mn__set_error(MN_ERR_INTERNAL, "config: key %s has no type", k->name);
}

static void env_name(const key_desc *k, char *buf, size_t len) {
  size_t o = (size_t)snprintf(buf, len, "MNEMO_");
  for (const char *p = k->name; *p && o + 1 < len; p++)
    buf[o++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
  buf[o] = '\0';
}

/* ------------------------------------------------------------------------
 * Public entry points
 * ---------------------------------------------------------------------- */

/* Run fn on a copy of c and keep the copy only if fn succeeded. */
static mn_status transact(mn_config *c, mn_status (*fn)(mn_config *, void *),
                          void *arg) {
  mn_config *tmp = malloc(sizeof *tmp);
  if (!tmp)
    return mn__set_error(MN_ERR_NOMEM,
                         "config: out of memory for a %zu-byte "
                         "copy of the configuration",
                         sizeof *tmp);
  memcpy(tmp, c, sizeof *tmp);
  mn_status s = fn(tmp, arg);
  if (s == MN_OK)
    memcpy(c, tmp, sizeof *c);
  free(tmp);
  return s;
}

typedef struct load_arg {
  const char *text;
  size_t len;
  const char *path; /* NULL for a string */
} load_arg;

static mn_status load_fn(mn_config *c, void *arg) {
  const load_arg *a = arg;
  json_error_t err;
  json_t *root = json_loadb(a->text, a->len, JSON_REJECT_DUPLICATES, &err);
  if (!root) {
    if (a->path)
      return mn__set_error(MN_ERR_PARSE,
                           "config file \"%s\" is not valid JSON: %s at line "
                           "%d, column %d",
                           a->path, err.text, err.line, err.column);
    return mn__set_error(MN_ERR_PARSE,
                         "configuration is not valid JSON: %s at line %d, "
                         "column %d",
                         err.text, err.line, err.column);
  }
  mn_status s = apply_json(c, root);
  json_decref(root);
  if (s != MN_OK && a->path) {
    char why[1024];
    snprintf(why, sizeof why, "%s", mn_errmsg());
    return mn__set_error(s, "config file \"%s\": %s", a->path, why);
  }
  return s;
}

mn_status mn_config_load_string(mn_config *c, const char *json) {
  if (!c || !json)
    return mn__set_error(MN_ERR_INVALID, "mn_config_load_string: %s is NULL",
                         !c ? "the configuration" : "the JSON text");
  load_arg a = {json, strlen(json), NULL};
  return transact(c, load_fn, &a);
}

mn_status mn_config_load_file(mn_config *c, const char *path) {
  if (!c || !path)
    return mn__set_error(MN_ERR_INVALID, "mn_config_load_file: %s is NULL",
                         !c ? "the configuration" : "the path");
  FILE *f = fopen(path, "rb");
  if (!f)
    return mn__set_error(MN_ERR_IO, "cannot open config file \"%s\": %s", path,
                         strerror(errno));
  /* Read in growing steps: config files are small, and a huge file (the
   * wrong path, a device) stops at the limit instead of filling memory. */
  size_t cap = 64 << 10, n = 0;
  char *buf = NULL;
  int read_err = 0;
  for (;;) {
    char *nb = realloc(buf, cap + 1);
    if (!nb) {
      free(buf);
      fclose(f);
      return mn__set_error(MN_ERR_NOMEM, "config: out of memory reading \"%s\"",
                           path);
    }
    buf = nb;
    n += fread(buf + n, 1, cap + 1 - n, f);
    if (ferror(f)) {
      read_err = errno;
      break;
    }
    if (n <= cap || cap >= CONFIG_MAX_FILE_BYTES)
      break; /* end of file, or over the limit */
    cap *= 2;
  }
  fclose(f);
  mn_status s;
  if (read_err)
    s = mn__set_error(MN_ERR_IO, "cannot read config file \"%s\": %s", path,
                      strerror(read_err));
  else if (n > CONFIG_MAX_FILE_BYTES)
    s = mn__set_error(MN_ERR_IO,
                      "config file \"%s\" is larger than %u MiB; is it the "
                      "right file?",
                      path, CONFIG_MAX_FILE_BYTES >> 20);
  else {
    load_arg a = {buf, n, path};
    s = transact(c, load_fn, &a);
  }
  free(buf);
  return s;
}

/* Config-looking MNEMO_ variables that match no key are most likely typos;
 * they are logged rather than refused because other MNEMO_* variables
 * (MNEMO_BACKEND_PATH and whatever tools set) share the prefix. */
static void warn_unknown_env(void) {
  static const char *const prefixes[] = {"MNEMO_GPU_", "MNEMO_PROCESSING_",
                                         "MNEMO_SERVER_", "MNEMO_STORAGE_"};
  for (char **e = environ; e && *e; e++) {
    const char *eq = strchr(*e, '=');
    if (!eq)
      continue;
    size_t n = (size_t)(eq - *e);
    int ours = 0;
    for (int i = 0; i < 4; i++)
      if (strncmp(*e, prefixes[i], strlen(prefixes[i])) == 0)
        ours = 1;
    if (!ours)
      continue;
    char name[KEY_NAME_MAX + 8];
    if (n >= sizeof name)
      n = sizeof name - 1;
    memcpy(name, *e, n);
    name[n] = '\0';
    const char *best = NULL;
    int best_d = INT_MAX, exact = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
      char en[KEY_NAME_MAX + 8];
      env_name(&key_table[i], en, sizeof en);
      if (strcmp(en, name) == 0) {
        exact = 1;
        break;
      }
      int d = edit_distance(name, en);
      if (d < best_d) {
        best_d = d;
        best = key_table[i].name;
      }
    }
    if (exact)
      continue;
    if (best && best_d <= 3)
      MN__LOGW("config",
               "environment variable %s matches no configuration key and is "
               "ignored; did you mean the one for \"%s\"?",
               name, best);
    else
      MN__LOGW("config",
               "environment variable %s matches no configuration key and is "
               "ignored",
               name);
  }
}

static mn_status env_fn(mn_config *c, void *arg) {
  (void)arg;
  for (size_t i = 0; i < N_KEYS; i++) {
    char en[KEY_NAME_MAX + 8];
    env_name(&key_table[i], en, sizeof en);
    const char *v = getenv(en);
    if (!v)
      continue;
    origin o = {en};
    MN__TRY(set_text(c, &key_table[i], &o, v));
  }
  return MN_OK;
}

mn_status mn_config_apply_env(mn_config *c) {
  if (!c)
    return mn__set_error(MN_ERR_INVALID,
                         "mn_config_apply_env: the configuration is NULL");
  warn_unknown_env();
  return transact(c, env_fn, NULL);
}

typedef struct set_arg {
  const key_desc *k;
  const char *value;
} set_arg;

static mn_status set_fn(mn_config *c, void *arg) {
  const set_arg *a = arg;
  return set_text(c, a->k, NULL, a->value);
}

mn_status mn_config_set(mn_config *c, const char *key, const char *value) {
  if (!c || !key || !value)
    return mn__set_error(MN_ERR_INVALID, "mn_config_set: %s is NULL",
                         !c     ? "the configuration"
                         : !key ? "the key"
                                : "the value");
  const key_desc *k = find_key(key);
  if (!k)
    return unknown_key(key, NULL);
  /* A list is cleared before its items are checked; the copy keeps the old
   * list when an item is bad. */
  set_arg a = {k, value};
  return transact(c, set_fn, &a);
}

static mn_status validate_string(const key_desc *k, const char *s, size_t cap,
                                 int nonempty, const char *what) {
  if (!memchr(s, '\0', cap))
    return mn__set_error(MN_ERR_INVALID,
                         "%s%s is not terminated within its %zu bytes", what,
                         k->name, cap);
  if (nonempty && !s[0])
    return mn__set_error(MN_ERR_INVALID,
                         "%s%s is empty; give a non-empty "
                         "string",
                         what, k->name);
  return MN_OK;
}

mn_status mn_config_validate(const mn_config *c) {
  if (!c)
    return mn__set_error(MN_ERR_INVALID,
                         "mn_config_validate: the configuration is NULL");
  char want[256];
  for (size_t i = 0; i < N_KEYS; i++) {
    const key_desc *k = &key_table[i];
    switch (k->type) {
    case KT_BOOL: {
      int v = *(const int *)cfield(c, k);
      if (v != 0 && v != 1)
        return mn__set_error(MN_ERR_INVALID, "%s is %d; it must be 0 or 1",
                             k->name, v);
      break;
    }
    case KT_INT: {
      int64_t v = get_int(c, k);
      if (v < k->lo || v > k->hi) {
        expected(k, 0, want, sizeof want);
        return mn__set_error(MN_ERR_INVALID, "%s is %lld; it must be %s",
                             k->name, (long long)v, want);
      }
      break;
    }
    case KT_SIZE: {
      uint64_t v = *(const uint64_t *)cfield(c, k);
      if (v < (uint64_t)k->lo) {
        expected(k, 0, want, sizeof want);
        return mn__set_error(MN_ERR_INVALID, "%s is %llu bytes; it must be %s",
                             k->name, (unsigned long long)v, want);
      }
      break;
    }
    case KT_STR:
      MN__TRY(validate_string(k, cfield(c, k), k->size, k->nonempty, ""));
      break;
    case KT_ENUM: {
      const char *s = cfield(c, k);
      MN__TRY(validate_string(k, s, k->size, 0, ""));
      int ok = 0;
      for (int j = 0; k->choices[j]; j++)
        ok |= strcmp(s, k->choices[j]) == 0;
      if (!ok) {
        char q[64];
        expected(k, 0, want, sizeof want);
        return mn__set_error(MN_ERR_INVALID, "%s is %s; it must be %s", k->name,
                             quote_str(s, q, sizeof q), want);
      }
      break;
    }
    case KT_LIST: {
      int n = *(const int *)((const char *)c + k->count_off);
      if (n < 0 || n > k->max_items)
        return mn__set_error(MN_ERR_INVALID,
                             "%s has %d items; it may have 0 to %d", k->name, n,
                             k->max_items);
      for (int j = 0; j < n; j++) {
        char what[32];
        snprintf(what, sizeof what, "item %d of ", j + 1);
        MN__TRY(validate_string(k,
                                (const char *)cfield(c, k) + (size_t)j * k->cap,
                                k->cap, 1, what));
      }
      break;
    }
    }
  }

  /* Keys that only make sense together. */
  if (!c->tls_cert[0] != !c->tls_key[0])
    return mn__set_error(MN_ERR_INVALID,
                         "server.tls_cert and server.tls_key go together: "
                         "%s is set but %s is empty; set both (TLS) or "
                         "neither (plain ws://)",
                         c->tls_cert[0] ? "server.tls_cert" : "server.tls_key",
                         c->tls_cert[0] ? "server.tls_key" : "server.tls_cert");
  if (!c->gpu_enabled && strcmp(c->gpu_device, "cuda") == 0)
    return mn__set_error(MN_ERR_INVALID,
                         "gpu.device is \"cuda\" but gpu.enabled is false; "
                         "set gpu.enabled to true, or gpu.device to \"cpu\" "
                         "or \"auto\"");
  return MN_OK;
}

/* ------------------------------------------------------------------------
 * The reference: `mnemod --help-config` and docs/config.md, both drawn
 * from key_table and the defaults above.
 * ---------------------------------------------------------------------- */

typedef struct sbuf {
  char *p;
  size_t n, cap;
  int oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
  if (b->oom)
    return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (b->n + n + 1 > cap)
      cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) {
  sb_add(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void
sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0)
    sb_add(b, tmp, MN__MIN((size_t)n, sizeof tmp - 1));
}

static char *sb_finish(sbuf *b, const char *what) {
  if (b->oom || !b->p) {
    free(b->p);
    mn__set_error(MN_ERR_NOMEM, "config: out of memory writing the %s", what);
    return NULL;
  }
  return b->p;
}

/* A size as the shortest exact text: 4000000000 is "4GB", 1024 "1KiB". */
static void size_text(uint64_t v, char *buf, size_t len) {
  static const struct {
    const char *unit;
    uint64_t mult;
  } units[] = {{"EiB", 1ull << 60}, {"EB", 1000000000000000000ull},
               {"PiB", 1ull << 50}, {"PB", 1000000000000000ull},
               {"TiB", 1ull << 40}, {"TB", 1000000000000ull},
               {"GiB", 1ull << 30}, {"GB", 1000000000ull},
               {"MiB", 1ull << 20}, {"MB", 1000000ull},
               {"KiB", 1024ull},    {"KB", 1000ull}};
  for (size_t i = 0; v && i < sizeof units / sizeof units[0]; i++) {
    if (v % units[i].mult == 0) {
      snprintf(buf, len, "%llu%s", (unsigned long long)(v / units[i].mult),
               units[i].unit);
      return;
    }
  }
  snprintf(buf, len, "%llu", (unsigned long long)v);
}

/* A key's value in c as JSON, the way a configuration file writes it. */
static json_t *value_json(const mn_config *c, const key_desc *k) {
  switch (k->type) {
  case KT_BOOL:
    return json_boolean(*(const int *)cfield(c, k));
  case KT_INT:
    return json_integer(get_int(c, k));
  case KT_SIZE: {
    uint64_t v = *(const uint64_t *)cfield(c, k);
    if (v == 0)
      return json_integer(0);
    char t[48];
    size_text(v, t, sizeof t);
    return json_string(t);
  }
  case KT_STR:
  case KT_ENUM:
    return json_string(cfield(c, k));
  case KT_LIST: {
    json_t *a = json_array();
    int n = *(const int *)((const char *)c + k->count_off);
    for (int j = 0; a && j < n; j++)
      json_array_append_new(
          a, json_string((const char *)cfield(c, k) + (size_t)j * k->cap));
    return a;
  }
  }
  return NULL;
}

/* The default of a key as compact JSON ("4GB" in quotes, true, []). */
static void default_text(const mn_config *d, const key_desc *k, char *buf,
                         size_t len) {
  json_t *v = value_json(d, k);
  char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
  snprintf(buf, len, "%s", s ? s : "?");
  free(s);
  json_decref(v);
}

static const char *type_name(const key_desc *k) {
  switch (k->type) {
  case KT_BOOL:
    return "bool";
  case KT_INT:
    return "integer";
  case KT_SIZE:
    return "size";
  case KT_STR:
    return "string";
  case KT_ENUM:
    return "enum";
  case KT_LIST:
    return "string list";
  }
  return "?";
}

/* What a key accepts, short: "1 to 65535 (...)", "float32, float16". In
 * Markdown (md) the choices are in backticks. */
static void allowed_text(const key_desc *k, int md, char *buf, size_t len) {
  const char *q = md ? "`" : "";
  char note[160] = "";
  if (k->note)
    snprintf(note, sizeof note, " (%s)", k->note);
  switch (k->type) {
  case KT_BOOL:
    snprintf(buf, len, "%strue%s or %sfalse%s", q, q, q, q);
    break;
  case KT_INT:
    snprintf(buf, len, "%lld to %lld%s", (long long)k->lo, (long long)k->hi,
             note);
    break;
  case KT_SIZE: {
    char least[48];
    size_text((uint64_t)k->lo, least, sizeof least);
    snprintf(buf, len, "%s%s%s", k->lo ? "at least " : "any size",
             k->lo ? least : "", note);
    break;
  }
  case KT_STR:
    snprintf(buf, len, "%sat most %zu bytes", k->nonempty ? "not empty, " : "",
             k->size - 1);
    break;
  case KT_ENUM: {
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; k->choices[i] && o < len; i++)
      o += (size_t)snprintf(buf + o, len - o, "%s%s%s%s", i ? ", " : "", q,
                            k->choices[i], q);
    break;
  }
  case KT_LIST:
    snprintf(buf, len, "at most %d items of at most %zu bytes", k->max_items,
             k->cap - 1);
    break;
  }
}

/* The words of s, from column `col` on (the caller wrote what comes
 * before), wrapped at `width` with `indent` spaces before each further
 * line. */
static void sb_wrap(sbuf *b, const char *s, int col, int indent, int width) {
  int first = 1;
  while (*s) {
    while (*s == ' ')
      s++;
    size_t w = strcspn(s, " ");
    if (!w)
      break;
    if (!first && col + 1 + (int)w > width) {
      sb_add(b, "\n", 1);
      for (int i = 0; i < indent; i++)
        sb_add(b, " ", 1);
      col = indent;
    } else if (!first) {
      sb_add(b, " ", 1);
      col++;
    }
    sb_add(b, s, w);
    col += (int)w;
    s += w;
    first = 0;
  }
  sb_add(b, "\n", 1);
}

char *mn_config_keys_text(void) {
  mn_config d;
  mn_config_defaults(&d);
  sbuf b = {0};
  sb_str(&b,
         "mnemod configuration keys (the same list is in docs/config.md).\n"
         "\n"
         "Set a key in the JSON file given with --config, as\n"
         "{\"section\": {\"key\": value}}, or with its environment variable,\n"
         "which takes text: booleans as true, false, 1, 0, yes or no, lists\n"
         "as comma-separated items. Precedence: defaults < file <\n"
         "environment < command-line flags. Sizes are a number of bytes or\n"
         "a string such as \"20GB\" (powers of 1000) or \"512MiB\" (powers\n"
         "of 1024). Defaults are shown as JSON.\n");
  for (size_t i = 0; i < N_KEYS; i++) {
    const key_desc *k = &key_table[i];
    char def[160], allowed[256], env[KEY_NAME_MAX + 8];
    default_text(&d, k, def, sizeof def);
    allowed_text(k, 0, allowed, sizeof allowed);
    env_name(k, env, sizeof env);
    sb_printf(&b, "\n%s (%s, default %s)\n", k->name, type_name(k), def);
    sb_printf(&b, "    env:     %s\n", env);
    sb_str(&b, "    allowed: ");
    sb_wrap(&b, allowed, 13, 13, 78);
    sb_str(&b, "    ");
    sb_wrap(&b, k->help, 4, 4, 78);
  }
  return sb_finish(&b, "configuration reference");
}

/* Text for a Markdown table cell: '|' escaped. */
static void sb_cell(sbuf *b, const char *s) {
  for (; *s; s++) {
    if (*s == '|')
      sb_str(b, "\\|");
    else
      sb_add(b, s, 1);
  }
}

char *mn_config_keys_markdown(void) {
  mn_config d;
  mn_config_defaults(&d);
  sbuf b = {0};
  sb_str(&b,
         "# Configuration\n"
         "\n"
         "<!-- Generated from the key table in src/common/config.c: edit "
         "the table, then\n"
         "     `cmake --build build --target config_docs`. test_config_doc "
         "fails when this\n"
         "     file is out of date. -->\n"
         "\n"
         "`mnemod --config FILE` reads a JSON file of the keys below, "
         "written\n"
         "`{\"section\": {\"key\": value}}` (or flat, `{\"section.key\": "
         "value}`).\n"
         "A key that is not in this list, a wrong type or a value out of "
         "range\n"
         "stops mnemod at start-up with a message naming the key.\n"
         "\n"
         "Precedence, lowest first: built-in defaults, the file, `MNEMO_*`\n"
         "environment variables, command-line flags (`mnemod --help`). A "
         "key's\n"
         "environment variable is `MNEMO_` plus its name upper-cased with "
         "`.`\n"
         "turned into `_`; it takes text: booleans as `true`, `false`, "
         "`1`,\n"
         "`0`, `yes` or `no`, lists as comma-separated items.\n"
         "\n"
         "Sizes are a number of bytes or a string such as `\"20GB\"` (GB, "
         "MB, KB,\n"
         "TB are powers of 1000) or `\"512MiB\"` (GiB, MiB, KiB, TiB: "
         "powers of\n"
         "1024). Defaults are written as in the file.\n"
         "\n"
         "`mnemod --help-config` prints the same reference.\n");
  for (int si = 0; sections[si]; si++) {
    sb_printf(&b,
              "\n## %s\n\n"
              "| Key | Type | Default | Allowed | Environment variable | "
              "What it does |\n"
              "|---|---|---|---|---|---|\n",
              sections[si]);
    size_t sl = strlen(sections[si]);
    for (size_t i = 0; i < N_KEYS; i++) {
      const key_desc *k = &key_table[i];
      if (strncmp(k->name, sections[si], sl) != 0 || k->name[sl] != '.')
        continue;
      char def[160], allowed[256], env[KEY_NAME_MAX + 8];
      default_text(&d, k, def, sizeof def);
      allowed_text(k, 1, allowed, sizeof allowed);
      env_name(k, env, sizeof env);
      sb_printf(&b, "| `%s` | %s | `", k->name, type_name(k));
      sb_cell(&b, def);
      sb_str(&b, "` | ");
      sb_cell(&b, allowed);
      sb_printf(&b, " | `%s` | ", env);
      sb_cell(&b, k->help);
      sb_str(&b, " |\n");
    }
  }

  /* Every key at its default, in the layout of the file. */
  json_t *root = json_object();
  for (int si = 0; root && sections[si]; si++) {
    json_t *sect = json_object();
    size_t sl = strlen(sections[si]);
    for (size_t i = 0; sect && i < N_KEYS; i++) {
      const key_desc *k = &key_table[i];
      if (strncmp(k->name, sections[si], sl) == 0 && k->name[sl] == '.')
        json_object_set_new(sect, k->name + sl + 1, value_json(&d, k));
    }
    json_object_set_new(root, sections[si], sect);
  }
  char *example =
      root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  json_decref(root);
  if (!example)
    b.oom = 1;
  sb_str(&b, "\n## Example file\n"
             "\n"
             "Every key at its default; paste it, keep the keys you change "
             "and\n"
             "delete the rest.\n"
             "\n"
             "```json\n");
  if (example)
    sb_str(&b, example);
  sb_str(&b, "\n```\n");
  free(example);
  return sb_finish(&b, "configuration reference");
}
