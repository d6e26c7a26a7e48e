/* test_config.c - the JSON configuration: every key and type from JSON, the
 * environment and mn_config_set; precedence; the seed's own file; and an
 * error message naming the key for every kind of mistake. The expected
 * values are written out here from config.h, not taken from the library. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/internal.h"
#include "mnemo/config.h"

/* Every key config.h documents, in its order. */
static const char *const all_keys[] = {
    "gpu.enabled",
    "gpu.memory_limit",
    "gpu.precision",
    "gpu.device",
    "gpu.plugin_dir",
    "processing.batch_size",
    "processing.cache_size",
    "processing.timeout",
    "processing.workers",
    "processing.batch_window_us",
    "processing.batch_max_rows",
    "server.host",
    "server.port",
    "server.max_connections",
    "server.max_message_size",
    "server.rate_limit",
    "server.max_json_depth",
    "server.idle_timeout",
    "server.drain_timeout",
    "server.mcp_max_sessions",
    "server.mcp_session_timeout",
    "server.auth_tokens",
    "server.allowed_origins",
    "server.tls_cert",
    "server.tls_key",
    "server.log_level",
    "storage.data_dir",
    "storage.disk_limit",
    "storage.sync",
    "storage.chunk_ttl",
};
#define N_ALL (sizeof all_keys / sizeof all_keys[0])

static void env_of(const char *key, char *buf, size_t len) {
  size_t o = (size_t)snprintf(buf, len, "MNEMO_");
  for (; *key && o + 1 < len; key++)
    buf[o++] =
        *key == '.'
            ? '_'
            : (char)(*key >= 'a' && *key <= 'z' ? *key - 'a' + 'A' : *key);
  buf[o] = '\0';
}

static void clear_env(void) {
  for (size_t i = 0; i < N_ALL; i++) {
    char e[80];
    env_of(all_keys[i], e, sizeof e);
    unsetenv(e);
  }
}

static int setup(void **state) {
  (void)state;
  clear_env();
  return 0;
}

#define assert_contains(hay, needle)                                           \
  do {                                                                         \
    const char *h_ = (hay), *n_ = (needle);                                    \
    if (!strstr(h_, n_))                                                       \
      fail_msg("message \"%s\" lacks \"%s\"", h_, n_);                         \
  } while (0)

/* Load JSON that must fail with `st`; return the detail message. */
static const char *load_fails(const char *json, mn_status st) {
  mn_config c;
  mn_config_defaults(&c);
  mn_status s = mn_config_load_string(&c, json);
  if (s != st)
    fail_msg("%s: got %s (%s), want %s", json, mn_status_name(s), mn_errmsg(),
             mn_status_name(st));
  return mn_errmsg();
}

static void load_ok(mn_config *c, const char *json) {
  mn_status s = mn_config_load_string(c, json);
  if (s != MN_OK)
    fail_msg("%s: %s (%s)", json, mn_status_name(s), mn_errmsg());
}

static void set_ok(mn_config *c, const char *key, const char *value) {
  mn_status s = mn_config_set(c, key, value);
  if (s != MN_OK)
    fail_msg("%s=%s: %s (%s)", key, value, mn_status_name(s), mn_errmsg());
}

static const char *set_fails(const char *key, const char *value) {
  mn_config c;
  mn_config_defaults(&c);
  mn_status s = mn_config_set(&c, key, value);
  if (s != MN_ERR_INVALID)
    fail_msg("%s=%s: got %s, want MN_ERR_INVALID", key, value,
             mn_status_name(s));
  return mn_errmsg();
}

/* ---------------------------------------------------------------------- */

static void test_defaults(void **state) {
  (void)state;
  mn_config c;
  memset(&c, 0xa5, sizeof c);
  mn_config_defaults(&c);
  assert_int_equal(c.gpu_enabled, 1);
  assert_int_equal(c.gpu_memory_limit, 0);
  assert_string_equal(c.gpu_precision, "float32");
  assert_string_equal(c.gpu_device, "auto");
  assert_string_equal(c.plugin_dir, "");
  assert_int_equal(c.batch_size, 32);
  assert_int_equal(c.cache_size, 4000000000ull);
  assert_int_equal(c.timeout_ms, 30000);
  assert_int_equal(c.workers, 0);
  assert_int_equal(c.batch_window_us, 200);
  assert_int_equal(c.batch_max_rows, 4096);
  assert_string_equal(c.host, "127.0.0.1");
  assert_int_equal(c.port, 3001);
  assert_int_equal(c.max_connections, 1000);
  assert_int_equal(c.max_message_size, 100000000ull);
  assert_int_equal(c.rate_limit, 1000);
  assert_int_equal(c.max_json_depth, 64);
  assert_int_equal(c.idle_timeout_s, 300);
  assert_int_equal(c.drain_timeout_ms, 10000);
  assert_int_equal(c.mcp_max_sessions, 1000);
  assert_int_equal(c.mcp_session_timeout_s, 1800);
  assert_int_equal(c.n_auth_tokens, 0);
  assert_int_equal(c.n_allowed_origins, 0);
  assert_string_equal(c.tls_cert, "");
  assert_string_equal(c.tls_key, "");
  assert_string_equal(c.log_level, "info");
  assert_string_equal(c.data_dir, "./data");
  assert_int_equal(c.disk_limit, 0);
  assert_string_equal(c.sync, "durable");
  assert_int_equal(c.chunk_ttl_s, 3600);
  assert_int_equal(mn_config_validate(&c), MN_OK);
  /* No file at all is a valid configuration. */
  assert_int_equal(mn_config_load_string(&c, "{}"), MN_OK);
  mn_config d;
  mn_config_defaults(&d);
  assert_memory_equal(&c, &d, sizeof c);
}

/* The JSON under "Configuration Options" in the seed's SYSTEM_OVERVIEW.md,
 * byte for byte. */
static const char seed_json[] = "{\n"
                                "    \"gpu\": {\n"
                                "        \"enabled\": true,\n"
                                "        \"memory_limit\": \"20GB\",\n"
                                "        \"precision\": \"float32\"\n"
                                "    },\n"
                                "    \"processing\": {\n"
                                "        \"batch_size\": 32,\n"
                                "        \"cache_size\": \"4GB\",\n"
                                "        \"timeout\": 30000\n"
                                "    }\n"
                                "}\n";

static void check_seed(const mn_config *c) {
  mn_config d;
  mn_config_defaults(&d);
  assert_int_equal(c->gpu_enabled, 1);
  assert_int_equal(c->gpu_memory_limit, 20000000000ull);
  assert_string_equal(c->gpu_precision, "float32");
  assert_int_equal(c->batch_size, 32);
  assert_int_equal(c->cache_size, 4000000000ull);
  assert_int_equal(c->timeout_ms, 30000);
  /* Everything else keeps its default. */
  d.gpu_memory_limit = 20000000000ull;
  assert_memory_equal(c, &d, sizeof d);
  assert_int_equal(mn_config_validate(c), MN_OK);
}

static void test_seed_config(void **state) {
  (void)state;
  mn_config c;
  mn_config_defaults(&c);
  load_ok(&c, seed_json);
  check_seed(&c);

  char path[] = "/tmp/mnemo_test_config_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, seed_json, strlen(seed_json)),
                   (ssize_t)strlen(seed_json));
  close(fd);
  mn_config_defaults(&c);
  assert_int_equal(mn_config_load_file(&c, path), MN_OK);
  check_seed(&c);
  unlink(path);
}

static const char every_key_json[] =
    "{\"gpu\": {\"enabled\": false, \"memory_limit\": \"512MiB\","
    " \"precision\": \"bfloat16\", \"device\": \"cpu\","
    " \"plugin_dir\": \"/opt/mnemo/lib\"},"
    " \"processing\": {\"batch_size\": 7, \"cache_size\": 123456789,"
    " \"timeout\": 1500, \"workers\": 3, \"batch_window_us\": 0,"
    " \"batch_max_rows\": 99},"
    " \"server\": {\"host\": \"0.0.0.0\", \"port\": 0, \"max_connections\": 5,"
    " \"max_message_size\": \"1.5 MB\", \"rate_limit\": 0,"
    " \"max_json_depth\": 9, \"idle_timeout\": 12,"
    " \"mcp_max_sessions\": 7, \"mcp_session_timeout\": 90,"
    " \"auth_tokens\": [\"t1\", \"t2\"], \"allowed_origins\": "
    "[\"http://a.example\"], \"tls_cert\": \"c.pem\", \"tls_key\": \"k.pem\","
    " \"log_level\": \"debug\"},"
    " \"storage\": {\"data_dir\": \"/var/lib/mnemo\", \"disk_limit\": \"2 "
    "TiB\","
    " \"sync\": \"none\", \"chunk_ttl\": 60}}";

static void check_every_key(const mn_config *c) {
  assert_int_equal(c->gpu_enabled, 0);
  assert_int_equal(c->gpu_memory_limit, 512ull << 20);
  assert_string_equal(c->gpu_precision, "bfloat16");
  assert_string_equal(c->gpu_device, "cpu");
  assert_string_equal(c->plugin_dir, "/opt/mnemo/lib");
  assert_int_equal(c->batch_size, 7);
  assert_int_equal(c->cache_size, 123456789);
  assert_int_equal(c->timeout_ms, 1500);
  assert_int_equal(c->workers, 3);
  assert_int_equal(c->batch_window_us, 0);
  assert_int_equal(c->batch_max_rows, 99);
  assert_string_equal(c->host, "0.0.0.0");
  assert_int_equal(c->port, 0);
  assert_int_equal(c->max_connections, 5);
  assert_int_equal(c->max_message_size, 1500000);
  assert_int_equal(c->rate_limit, 0);
  assert_int_equal(c->max_json_depth, 9);
  assert_int_equal(c->idle_timeout_s, 12);
  assert_int_equal(c->mcp_max_sessions, 7);
  assert_int_equal(c->mcp_session_timeout_s, 90);
  assert_int_equal(c->n_auth_tokens, 2);
  assert_string_equal(c->auth_tokens[0], "t1");
  assert_string_equal(c->auth_tokens[1], "t2");
  assert_int_equal(c->n_allowed_origins, 1);
  assert_string_equal(c->allowed_origins[0], "http://a.example");
  assert_string_equal(c->tls_cert, "c.pem");
  assert_string_equal(c->tls_key, "k.pem");
  assert_string_equal(c->log_level, "debug");
  assert_string_equal(c->data_dir, "/var/lib/mnemo");
  assert_int_equal(c->disk_limit, 2ull << 40);
  assert_string_equal(c->sync, "none");
  assert_int_equal(c->chunk_ttl_s, 60);
  assert_int_equal(mn_config_validate(c), MN_OK);
}

/* Text forms of the same values, for the environment and mn_config_set. */
static const char *const every_key_text[][2] = {
    {"gpu.enabled", "no"},
    {"gpu.memory_limit", "512MiB"},
    {"gpu.precision", "BFloat16"},
    {"gpu.device", "cpu"},
    {"gpu.plugin_dir", "/opt/mnemo/lib"},
    {"processing.batch_size", "7"},
    {"processing.cache_size", "123456789"},
    {"processing.timeout", " 1500 "},
    {"processing.workers", "3"},
    {"processing.batch_window_us", "0"},
    {"processing.batch_max_rows", "99"},
    {"server.host", "0.0.0.0"},
    {"server.port", "0"},
    {"server.max_connections", "5"},
    {"server.max_message_size", "1.5 MB"},
    {"server.rate_limit", "0"},
    {"server.max_json_depth", "9"},
    {"server.idle_timeout", "12"},
    {"server.drain_timeout", "250"},
    {"server.mcp_max_sessions", "7"},
    {"server.mcp_session_timeout", "90"},
    {"server.auth_tokens", "t1, t2"},
    {"server.allowed_origins", "http://a.example"},
    {"server.tls_cert", "c.pem"},
    {"server.tls_key", "k.pem"},
    {"server.log_level", "DEBUG"},
    {"storage.data_dir", "/var/lib/mnemo"},
    {"storage.disk_limit", "2 TiB"},
    {"storage.sync", "none"},
    {"storage.chunk_ttl", "60"},
};

static void test_every_key_json(void **state) {
  (void)state;
  mn_config c;
  mn_config_defaults(&c);
  load_ok(&c, every_key_json);
  check_every_key(&c);
  /* The same keys written flat at the top level. */
  mn_config f;
  mn_config_defaults(&f);
  load_ok(&f, "{\"gpu.memory_limit\": \"512MiB\", \"server.port\": 0}");
  assert_int_equal(f.gpu_memory_limit, 512ull << 20);
  assert_int_equal(f.port, 0);
}

static void test_every_key_set(void **state) {
  (void)state;
  assert_int_equal(sizeof every_key_text / sizeof every_key_text[0], N_ALL);
  mn_config c;
  mn_config_defaults(&c);
  for (size_t i = 0; i < N_ALL; i++) {
    assert_string_equal(every_key_text[i][0], all_keys[i]);
    set_ok(&c, every_key_text[i][0], every_key_text[i][1]);
  }
  check_every_key(&c);
}

static void test_every_key_env(void **state) {
  (void)state;
  for (size_t i = 0; i < N_ALL; i++) {
    char e[80];
    env_of(every_key_text[i][0], e, sizeof e);
    setenv(e, every_key_text[i][1], 1);
  }
  /* Spelled out, so a naming slip in env_of would not hide one in the
   * library. */
  assert_string_equal(getenv("MNEMO_GPU_MEMORY_LIMIT"), "512MiB");
  assert_string_equal(getenv("MNEMO_SERVER_PORT"), "0");
  assert_string_equal(getenv("MNEMO_STORAGE_DATA_DIR"), "/var/lib/mnemo");
  assert_string_equal(getenv("MNEMO_PROCESSING_BATCH_WINDOW_US"), "0");
  mn_config c;
  mn_config_defaults(&c);
  assert_int_equal(mn_config_apply_env(&c), MN_OK);
  check_every_key(&c);
  clear_env();
  /* With nothing set, the environment changes nothing. */
  mn_config d, e;
  mn_config_defaults(&d);
  mn_config_defaults(&e);
  assert_int_equal(mn_config_apply_env(&d), MN_OK);
  assert_memory_equal(&d, &e, sizeof d);
}

static void test_precedence(void **state) {
  (void)state;
  char path[] = "/tmp/mnemo_test_config_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  const char *json = "{\"server\": {\"port\": 4000, \"host\": \"10.0.0.1\"},"
                     " \"gpu\": {\"memory_limit\": \"1GB\"}}";
  assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
  close(fd);

  setenv("MNEMO_SERVER_PORT", "5000", 1);
  setenv("MNEMO_GPU_MEMORY_LIMIT", "2GB", 1);

  /* defaults < file < environment < command line */
  mn_config c;
  mn_config_defaults(&c);
  assert_int_equal(mn_config_load_file(&c, path), MN_OK);
  assert_int_equal(c.port, 4000);
  assert_int_equal(mn_config_apply_env(&c), MN_OK);
  set_ok(&c, "server.port", "6000");
  assert_int_equal(c.port, 6000);                      /* flag */
  assert_int_equal(c.gpu_memory_limit, 2000000000ull); /* env */
  assert_string_equal(c.host, "10.0.0.1");             /* file */
  assert_string_equal(c.data_dir, "./data");           /* default */
  clear_env();
  unlink(path);
}

static void test_bool_forms(void **state) {
  (void)state;
  const char *truthy[] = {"true", "TRUE", "1", "yes", "Yes", " true "};
  const char *falsy[] = {"false", "False", "0", "no", "NO"};
  mn_config c;
  mn_config_defaults(&c);
  for (size_t i = 0; i < 5; i++) {
    c.gpu_enabled = 1;
    set_ok(&c, "gpu.enabled", falsy[i]);
    assert_int_equal(c.gpu_enabled, 0);
  }
  for (size_t i = 0; i < 6; i++) {
    c.gpu_enabled = 0;
    set_ok(&c, "gpu.enabled", truthy[i]);
    assert_int_equal(c.gpu_enabled, 1);
  }
  const char *bad[] = {"maybe", "2", "", "on", "tru"};
  for (size_t i = 0; i < 5; i++) {
    const char *m = set_fails("gpu.enabled", bad[i]);
    assert_contains(m, "\"gpu.enabled\"");
    assert_contains(m, "boolean");
  }
  load_ok(&c, "{\"gpu\": {\"enabled\": false}}");
  assert_int_equal(c.gpu_enabled, 0);
  /* JSON wants a JSON boolean, not a string or a number. */
  const char *m =
      load_fails("{\"gpu\": {\"enabled\": \"yes\"}}", MN_ERR_INVALID);
  assert_contains(m, "\"gpu.enabled\"");
  assert_contains(m, "must be a boolean (true or false)");
  assert_contains(m, "not the string \"yes\"");
  m = load_fails("{\"gpu\": {\"enabled\": 1}}", MN_ERR_INVALID);
  assert_contains(m, "not the number 1");
}

static void test_size_keys(void **state) {
  (void)state;
  mn_config c;
  mn_config_defaults(&c);
  load_ok(&c, "{\"processing\": {\"cache_size\": \"64KiB\"}}");
  assert_int_equal(c.cache_size, 65536);
  load_ok(&c, "{\"processing\": {\"cache_size\": 4096}}");
  assert_int_equal(c.cache_size, 4096);
  load_ok(&c, "{\"processing\": {\"cache_size\": 4e9}}"); /* whole real */
  assert_int_equal(c.cache_size, 4000000000ull);
  load_ok(&c, "{\"storage\": {\"disk_limit\": 0}}");
  assert_int_equal(c.disk_limit, 0);
  load_ok(&c, "{\"server\": {\"max_message_size\": \"1KiB\"}}");
  assert_int_equal(c.max_message_size, 1024);

  const char *m =
      load_fails("{\"gpu\": {\"memory_limit\": -5}}", MN_ERR_INVALID);
  assert_contains(m, "\"gpu.memory_limit\"");
  assert_contains(m, "must be a size such as \"20GB\"");
  assert_contains(m, "not the number -5");
  m = load_fails("{\"gpu\": {\"memory_limit\": 1.5}}", MN_ERR_INVALID);
  assert_contains(m, "not the number 1.5");
  m = load_fails("{\"gpu\": {\"memory_limit\": 1e30}}", MN_ERR_INVALID);
  assert_contains(m, "more than 2^64");
  m = load_fails("{\"gpu\": {\"memory_limit\": \"12XB\"}}", MN_ERR_INVALID);
  assert_contains(m, "\"gpu.memory_limit\"");
  assert_contains(m, "unknown unit \"XB\"");
  m = load_fails("{\"gpu\": {\"memory_limit\": \"20 G B\"}}", MN_ERR_INVALID);
  assert_contains(m, "\"gpu.memory_limit\"");
  m = load_fails("{\"server\": {\"max_message_size\": \"1000B\"}}",
                 MN_ERR_INVALID);
  assert_contains(m, "\"server.max_message_size\"");
  assert_contains(m, "at least 1024 bytes");
  assert_contains(m, "not 1000 bytes");
  m = set_fails("storage.disk_limit", "-5MB");
  assert_contains(m, "\"storage.disk_limit\"");
  assert_contains(m, "negative");
  m = set_fails("storage.disk_limit", "1e400");
  assert_contains(m, "exponent");
}

static void test_int_keys(void **state) {
  (void)state;
  mn_config c;
  mn_config_defaults(&c);
  load_ok(&c, "{\"processing\": {\"timeout\": 30000.0}}");
  assert_int_equal(c.timeout_ms, 30000);
  set_ok(&c, "server.port", "65535");
  assert_int_equal(c.port, 65535);
  set_ok(&c, "processing.workers", "1024");
  assert_int_equal(c.workers, 1024);

  const struct {
    const char *json;
    const char *says;
  } bad[] = {
      {"{\"server\": {\"port\": 1.5}}", "not the number 1.5"},
      {"{\"server\": {\"port\": \"3001\"}}", "not the string \"3001\""},
      {"{\"server\": {\"port\": true}}", "not true"},
      {"{\"server\": {\"port\": null}}", "not null"},
      {"{\"server\": {\"port\": 65536}}", "from 0 to 65535"},
      {"{\"server\": {\"port\": -1}}", "not -1"},
      {"{\"processing\": {\"batch_size\": 0}}", "from 1 to"},
      {"{\"processing\": {\"timeout\": 0}}", "milliseconds"},
      {"{\"processing\": {\"workers\": 1025}}", "from 0 to 1024"},
      {"{\"server\": {\"max_connections\": 0}}", "from 1 to 1000000"},
      {"{\"server\": {\"max_json_depth\": 0}}", "from 1 to 2048"},
      {"{\"server\": {\"rate_limit\": -1}}", "0 turns it off"},
      {"{\"processing\": {\"batch_window_us\": 1000001}}", "microseconds"},
      {"{\"storage\": {\"chunk_ttl\": 0}}", "seconds"},
      {"{\"server\": {\"idle_timeout\": 0}}", "seconds"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    const char *m = load_fails(bad[i].json, MN_ERR_INVALID);
    assert_contains(m, "must be an integer");
    assert_contains(m, bad[i].says);
  }
  const char *text_bad[] = {
      "abc", "", "12abc", "1.5", "0x10", "+5", "99999999999999999999999"};
  for (size_t i = 0; i < sizeof text_bad / sizeof text_bad[0]; i++) {
    const char *m = set_fails("server.port", text_bad[i]);
    assert_contains(m, "configuration key \"server.port\"");
    assert_contains(m, "must be an integer from 0 to 65535");
  }
  assert_contains(set_fails("server.port", "99999999999999999999999"),
                  "not \"99999999999999999999999\"");
}

static void test_strings(void **state) {
  (void)state;
  mn_config c;
  mn_config_defaults(&c);
  char big[1100];
  memset(big, 'd', sizeof big);
  big[1023] = '\0'; /* 1023 bytes: the most data_dir holds */
  set_ok(&c, "storage.data_dir", big);
  assert_int_equal(strlen(c.data_dir), 1023);
  big[1023] = 'd';
  big[1024] = '\0'; /* one more is an error, not a truncation */
  const char *m = set_fails("storage.data_dir", big);
  assert_contains(m, "\"storage.data_dir\"");
  assert_contains(m, "1024 bytes long");
  assert_contains(m, "limit is 1023 bytes");
  assert_true(strlen(m) < 400); /* the value is clipped in the message */

  char json[1200];
  memset(big, 'h', 256);
  big[256] = '\0';
  snprintf(json, sizeof json, "{\"server\": {\"host\": \"%s\"}}", big);
  m = load_fails(json, MN_ERR_INVALID);
  assert_contains(m, "\"server.host\"");
  assert_contains(m, "limit is 255 bytes");
  big[255] = '\0';
  snprintf(json, sizeof json, "{\"server\": {\"host\": \"%s\"}}", big);
  load_ok(&c, json);
  assert_int_equal(strlen(c.host), 255);

  m = load_fails("{\"server\": {\"host\": \"\"}}", MN_ERR_INVALID);
  assert_contains(m, "\"server.host\" is empty");
  m = set_fails("storage.data_dir", "");
  assert_contains(m, "\"storage.data_dir\" is empty");
  /* Optional strings may be empty. */
  set_ok(&c, "server.tls_cert", "");
  set_ok(&c, "gpu.plugin_dir", "");
  m = load_fails("{\"server\": {\"tls_key\": 5}}", MN_ERR_INVALID);
  assert_contains(m, "\"server.tls_key\" must be a string of at most 511 "
                     "bytes, not the number 5");
  /* A JSON \u0000 is refused (by the parser; it would cut the path). */
  load_fails("{\"storage\": {\"data_dir\": \"a\\u0000b\"}}", MN_ERR_PARSE);
  /* Non-ASCII text is kept as given. */
  set_ok(&c, "storage.data_dir", "/srv/m\xc3\xa9moire");
  assert_string_equal(c.data_dir, "/srv/m\xc3\xa9moire");
}

static void test_enums(void **state) {
  (void)state;
  const struct {
    const char *key;
    const char *values[6];
  } enums[] = {
      {"gpu.precision", {"float32", "float16", "bfloat16"}},
      {"gpu.device", {"auto", "cpu", "cuda"}},
      {"storage.sync", {"durable", "none"}},
      {"server.log_level", {"debug", "info", "warn", "error", "none"}},
  };
  for (size_t e = 0; e < 4; e++) {
    mn_config c;
    mn_config_defaults(&c);
    for (int v = 0; enums[e].values[v]; v++) {
      char json[160], upper[32];
      snprintf(json, sizeof json, "{\"%.*s\": {\"%s\": \"%s\"}}",
               (int)(strchr(enums[e].key, '.') - enums[e].key), enums[e].key,
               strchr(enums[e].key, '.') + 1, enums[e].values[v]);
      load_ok(&c, json);
      /* Stored canonically whatever the case given. */
      size_t n = strlen(enums[e].values[v]);
      for (size_t i = 0; i <= n; i++)
        upper[i] = (char)(i < n && enums[e].values[v][i] >= 'a'
                              ? enums[e].values[v][i] - 32
                              : enums[e].values[v][i]);
      set_ok(&c, enums[e].key, upper);
      const char *field = NULL;
      if (e == 0)
        field = c.gpu_precision;
      else if (e == 1)
        field = c.gpu_device;
      else if (e == 2)
        field = c.sync;
      else
        field = c.log_level;
      assert_string_equal(field, enums[e].values[v]);
    }
    const char *m = set_fails(enums[e].key, "bogus");
    assert_contains(m, enums[e].key);
    assert_contains(m, "not \"bogus\"");
    for (int v = 0; enums[e].values[v]; v++) {
      char q[32];
      snprintf(q, sizeof q, "\"%s\"", enums[e].values[v]);
      assert_contains(m, q);
    }
  }
  const char *m =
      load_fails("{\"gpu\": {\"precision\": \"float64\"}}", MN_ERR_INVALID);
  assert_contains(m, "\"gpu.precision\" must be one of \"float32\", "
                     "\"float16\", \"bfloat16\", not \"float64\"");
}

static void test_lists(void **state) {
  (void)state;
  mn_config c;
  mn_config_defaults(&c);
  /* 16 items fit, 17 do not. */
  char json[4096];
  size_t o =
      (size_t)snprintf(json, sizeof json, "{\"server\": {\"auth_tokens\": [");
  for (int i = 0; i < 17; i++)
    o += (size_t)snprintf(json + o, sizeof json - o, "%s\"tok%d\"",
                          i ? ", " : "", i);
  snprintf(json + o, sizeof json - o, "]}}");
  const char *m = load_fails(json, MN_ERR_INVALID);
  assert_contains(m, "\"server.auth_tokens\" has more than 16 items");
  char *cut = strstr(json, ", \"tok16\"");
  strcpy(cut, "]}}");
  load_ok(&c, json);
  assert_int_equal(c.n_auth_tokens, 16);
  for (int i = 0; i < 16; i++) {
    char want[16];
    snprintf(want, sizeof want, "tok%d", i);
    assert_string_equal(c.auth_tokens[i], want);
  }
  /* A later value replaces the list; [] empties it. */
  load_ok(&c, "{\"server\": {\"auth_tokens\": [\"only\"]}}");
  assert_int_equal(c.n_auth_tokens, 1);
  assert_string_equal(c.auth_tokens[0], "only");
  load_ok(&c, "{\"server\": {\"auth_tokens\": []}}");
  assert_int_equal(c.n_auth_tokens, 0);

  /* Item length: 127 bytes fit a token, 128 do not. */
  char tok[320];
  memset(tok, 't', 128);
  tok[128] = '\0';
  snprintf(json, sizeof json,
           "{\"server\": {\"auth_tokens\": [\"a\", \"%s\"]}}", tok);
  m = load_fails(json, MN_ERR_INVALID);
  assert_contains(m, "\"server.auth_tokens\" item 2 is 128 bytes long");
  tok[127] = '\0';
  snprintf(json, sizeof json, "{\"server\": {\"auth_tokens\": [\"%s\"]}}", tok);
  load_ok(&c, json);
  assert_int_equal(strlen(c.auth_tokens[0]), 127);

  m = load_fails("{\"server\": {\"allowed_origins\": [\"a\", 5]}}",
                 MN_ERR_INVALID);
  assert_contains(m, "\"server.allowed_origins\"");
  assert_contains(m, "item 2 is the number 5");
  m = load_fails("{\"server\": {\"allowed_origins\": \"http://a\"}}",
                 MN_ERR_INVALID);
  assert_contains(m, "must be an array");
  m = load_fails("{\"server\": {\"auth_tokens\": [\"\"]}}", MN_ERR_INVALID);
  assert_contains(m, "item 1 is empty");

  /* Text form: comma-separated, spaces trimmed, empty items skipped. */
  set_ok(&c, "server.allowed_origins", " http://a , https://b,,http://c, ");
  assert_int_equal(c.n_allowed_origins, 3);
  assert_string_equal(c.allowed_origins[0], "http://a");
  assert_string_equal(c.allowed_origins[1], "https://b");
  assert_string_equal(c.allowed_origins[2], "http://c");
  set_ok(&c, "server.allowed_origins", "");
  assert_int_equal(c.n_allowed_origins, 0);
  setenv("MNEMO_SERVER_AUTH_TOKENS", "x,y", 1);
  assert_int_equal(mn_config_apply_env(&c), MN_OK);
  assert_int_equal(c.n_auth_tokens, 2);
  assert_string_equal(c.auth_tokens[1], "y");
  clear_env();

  /* A bad item leaves the previous list as it was. */
  memset(tok, 'o', 300);
  tok[300] = '\0';
  char text[400];
  snprintf(text, sizeof text, "a,%s", tok);
  assert_int_equal(mn_config_set(&c, "server.auth_tokens", text),
                   MN_ERR_INVALID);
  assert_int_equal(c.n_auth_tokens, 2);
  assert_string_equal(c.auth_tokens[0], "x");
}

/* No key takes an object, and each key's refusal names it, says what it
 * wanted and what it got. */
static void test_wrong_type_names_every_key(void **state) {
  (void)state;
  for (size_t i = 0; i < N_ALL; i++) {
    const char *dot = strchr(all_keys[i], '.');
    char json[200];
    snprintf(json, sizeof json, "{\"%.*s\": {\"%s\": {\"x\": 1}}}",
             (int)(dot - all_keys[i]), all_keys[i], dot + 1);
    const char *m = load_fails(json, MN_ERR_INVALID);
    char quoted[80];
    snprintf(quoted, sizeof quoted, "configuration key \"%s\"", all_keys[i]);
    assert_contains(m, quoted);
    assert_contains(m, "must be");
    assert_contains(m, "not an object");

    /* A second wrong value: a number for strings, a string elsewhere. */
    int wants_text = strstr("gpu.precision gpu.device gpu.plugin_dir "
                            "server.host server.tls_cert server.tls_key "
                            "server.log_level storage.data_dir storage.sync "
                            "server.auth_tokens server.allowed_origins",
                            dot + 1) != NULL;
    int is_size = strstr("gpu.memory_limit processing.cache_size "
                         "server.max_message_size storage.disk_limit",
                         all_keys[i]) != NULL;
    snprintf(json, sizeof json, "{\"%.*s\": {\"%s\": %s}}",
             (int)(dot - all_keys[i]), all_keys[i], dot + 1,
             wants_text ? "42"
             : is_size  ? "\"lots\""
                        : "\"7\"");
    m = load_fails(json, MN_ERR_INVALID);
    assert_contains(m, quoted);

    /* And through the environment, naming the variable and the key. */
    char env[80];
    env_of(all_keys[i], env, sizeof env);
    setenv(env, "\x01not valid\x02", 1);
    mn_config c;
    mn_config_defaults(&c);
    mn_status s = mn_config_apply_env(&c);
    unsetenv(env);
    if (strstr(all_keys[i], "plugin_dir") || strstr(all_keys[i], "tls_") ||
        strstr(all_keys[i], "host") || strstr(all_keys[i], "data_dir") ||
        strstr(all_keys[i], "auth_tokens") ||
        strstr(all_keys[i], "allowed_origins"))
      continue; /* free text: any bytes are a valid string */
    if (s != MN_ERR_INVALID)
      fail_msg("%s: got %s", env, mn_status_name(s));
    char ref[160];
    snprintf(ref, sizeof ref, "environment variable %s (%s)", env, all_keys[i]);
    assert_contains(mn_errmsg(), ref);
    /* Control bytes never reach the message. */
    assert_null(strchr(mn_errmsg(), '\x01'));
  }
}

static void test_unknown_keys(void **state) {
  (void)state;
  const char *m =
      load_fails("{\"gpu\": {\"memory_limt\": \"20GB\"}}", MN_ERR_INVALID);
  assert_contains(m, "unknown configuration key \"gpu.memory_limt\"");
  assert_contains(m, "did you mean \"gpu.memory_limit\"?");
  m = load_fails("{\"processing\": {\"batchsize\": 1}}", MN_ERR_INVALID);
  assert_contains(m, "did you mean \"processing.batch_size\"?");
  m = load_fails("{\"server\": {\"max_conections\": 1}}", MN_ERR_INVALID);
  assert_contains(m, "did you mean \"server.max_connections\"?");
  /* Nothing close: the section's keys are listed. */
  m = load_fails("{\"gpu\": {\"zzzzzzzz\": 1}}", MN_ERR_INVALID);
  assert_contains(m, "\"gpu.zzzzzzzz\"");
  assert_contains(
      m, "enabled, memory_limit, precision, device, min_elements, plugin_dir");
  m = load_fails("{\"gpu\": {\"memory\": {\"limit\": 1}}}", MN_ERR_INVALID);
  assert_contains(m, "\"gpu.memory\"");
  m = load_fails("{\"gpus\": {\"enabled\": true}}", MN_ERR_INVALID);
  assert_contains(m, "unknown configuration section \"gpus\"");
  assert_contains(m, "did you mean \"gpu\"?");
  m = load_fails("{\"port\": 3001}", MN_ERR_INVALID);
  assert_contains(m, "\"port\"");
  assert_contains(m, "did you mean \"server.port\"");
  m = load_fails("{\"nonsense\": 1}", MN_ERR_INVALID);
  assert_contains(m, "\"nonsense\"");
  assert_contains(m, "gpu, processing, server and storage");
  m = load_fails("{\"gpu.memry_limit\": 1}", MN_ERR_INVALID);
  assert_contains(m, "did you mean \"gpu.memory_limit\"?");
  m = load_fails("{\"server\": 5}", MN_ERR_INVALID);
  assert_contains(m, "section \"server\" must be an object");
  assert_contains(m, "not the number 5");

  m = set_fails("gpu.memory_limt", "1GB");
  assert_contains(m, "did you mean \"gpu.memory_limit\"?");
  m = set_fails("GPU_MEMORY_LIMIT", "1GB");
  assert_contains(m, "did you mean \"gpu.memory_limit\"?");
  m = set_fails("storage.data-dir", "x");
  assert_contains(m, "did you mean \"storage.data_dir\"?");
  mn_config c;
  mn_config_defaults(&c);
  assert_int_equal(mn_config_set(&c, NULL, "x"), MN_ERR_INVALID);
  assert_int_equal(mn_config_set(&c, "server.port", NULL), MN_ERR_INVALID);
}

static void test_bad_json(void **state) {
  (void)state;
  const char *m =
      load_fails("{\n  \"gpu\": {\n    \"enabled\": tru\n  }\n}", MN_ERR_PARSE);
  assert_contains(m, "not valid JSON");
  assert_contains(m, "line 3");
  m = load_fails("{\"server\": {\"port\": 1, \"port\": 2}}", MN_ERR_PARSE);
  assert_contains(m, "duplicate");
  m = load_fails("{\"server\": {\"port\": 1,}}", MN_ERR_PARSE);
  load_fails("", MN_ERR_PARSE);
  load_fails("{\"server\": {\"port\": 99999999999999999999}}", MN_ERR_PARSE);
  m = load_fails("[1, 2]", MN_ERR_INVALID);
  assert_contains(m, "must be a JSON object");
  mn_config c;
  mn_config_defaults(&c);
  assert_int_equal(mn_config_load_string(&c, NULL), MN_ERR_INVALID);
}

static void test_files(void **state) {
  (void)state;
  mn_config c;
  mn_config_defaults(&c);
  assert_int_equal(mn_config_load_file(&c, "/nonexistent/mnemo.json"),
                   MN_ERR_IO);
  assert_contains(mn_errmsg(), "\"/nonexistent/mnemo.json\"");
  assert_contains(mn_errmsg(), "No such file");
  assert_int_equal(mn_config_load_file(&c, "/tmp"), MN_ERR_IO);
  assert_contains(mn_errmsg(), "\"/tmp\"");

  char path[] = "/tmp/mnemo_test_config_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  const char *json = "{\"server\": {\n\"port\": \"eighty\"}}";
  assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
  close(fd);
  assert_int_equal(mn_config_load_file(&c, path), MN_ERR_INVALID);
  assert_contains(mn_errmsg(), path);
  assert_contains(mn_errmsg(), "\"server.port\"");

  FILE *f = fopen(path, "w");
  fputs("{\"server\": {\n\"port\": eighty}}", f);
  fclose(f);
  assert_int_equal(mn_config_load_file(&c, path), MN_ERR_PARSE);
  assert_contains(mn_errmsg(), path);
  assert_contains(mn_errmsg(), "line 2");

  /* Larger than the first read: 200 KB of indentation before the object. */
  f = fopen(path, "w");
  for (int i = 0; i < 200000; i++)
    fputc(' ', f);
  fputs("{\"server\": {\"port\": 8080}}", f);
  fclose(f);
  assert_int_equal(mn_config_load_file(&c, path), MN_OK);
  assert_int_equal(c.port, 8080);
  unlink(path);
}

/* A failure part-way leaves the configuration exactly as it was. */
static void test_atomic(void **state) {
  (void)state;
  mn_config c, before;
  mn_config_defaults(&c);
  load_ok(&c, every_key_json);
  memcpy(&before, &c, sizeof c);
  assert_int_equal(mn_config_load_string(
                       &c, "{\"server\": {\"port\": 9, \"auth_tokens\": []},"
                           " \"storage\": {\"sync\": \"sometimes\"}}"),
                   MN_ERR_INVALID);
  assert_memory_equal(&c, &before, sizeof c);

  setenv("MNEMO_SERVER_PORT", "9", 1);
  setenv("MNEMO_STORAGE_SYNC", "sometimes", 1);
  assert_int_equal(mn_config_apply_env(&c), MN_ERR_INVALID);
  assert_contains(mn_errmsg(), "MNEMO_STORAGE_SYNC (storage.sync)");
  assert_memory_equal(&c, &before, sizeof c);
  clear_env();
}

static char logged[4096];
static void capture(mn_log_level level, const char *module, const char *msg,
                    void *user) {
  (void)user;
  if (level == MN_LOG_WARN && strcmp(module, "config") == 0)
    snprintf(logged + strlen(logged), sizeof logged - strlen(logged), "%s\n",
             msg);
}

static void test_env_typo_warns(void **state) {
  (void)state;
  logged[0] = '\0';
  mn_log_set(capture, NULL);
  setenv("MNEMO_GPU_MEMORY_LIMT", "1GB", 1);
  setenv("MNEMO_BACKEND_PATH", "/x", 1); /* not a config key: not ours */
  mn_config c, d;
  mn_config_defaults(&c);
  mn_config_defaults(&d);
  assert_int_equal(mn_config_apply_env(&c), MN_OK);
  mn_log_set(NULL, NULL);
  unsetenv("MNEMO_GPU_MEMORY_LIMT");
  unsetenv("MNEMO_BACKEND_PATH");
  assert_memory_equal(&c, &d, sizeof c);
  assert_contains(logged, "MNEMO_GPU_MEMORY_LIMT");
  assert_contains(logged, "\"gpu.memory_limit\"");
  assert_null(strstr(logged, "MNEMO_BACKEND_PATH"));
}

static void test_validate(void **state) {
  (void)state;
  mn_config c;
#define EXPECT_INVALID(stmt, fragment)                                         \
  do {                                                                         \
    mn_config_defaults(&c);                                                    \
    stmt;                                                                      \
    assert_int_equal(mn_config_validate(&c), MN_ERR_INVALID);                  \
    assert_contains(mn_errmsg(), fragment);                                    \
  } while (0)
  EXPECT_INVALID(c.port = 70000, "server.port is 70000");
  EXPECT_INVALID(c.port = -1, "server.port is -1");
  EXPECT_INVALID(c.batch_size = 0, "processing.batch_size is 0");
  EXPECT_INVALID(c.timeout_ms = 0, "processing.timeout is 0");
  EXPECT_INVALID(c.workers = -1, "processing.workers is -1");
  EXPECT_INVALID(c.max_connections = 0, "server.max_connections is 0");
  EXPECT_INVALID(c.max_message_size = 1000,
                 "server.max_message_size is 1000 bytes");
  EXPECT_INVALID(c.max_json_depth = 0, "server.max_json_depth is 0");
  EXPECT_INVALID(c.rate_limit = -5, "server.rate_limit is -5");
  EXPECT_INVALID(c.idle_timeout_s = 0, "server.idle_timeout is 0");
  EXPECT_INVALID(c.chunk_ttl_s = -1, "storage.chunk_ttl is -1");
  EXPECT_INVALID(c.batch_max_rows = 0, "processing.batch_max_rows is 0");
  EXPECT_INVALID(c.batch_window_us = -1, "processing.batch_window_us is -1");
  EXPECT_INVALID(c.gpu_enabled = 2, "gpu.enabled is 2");
  EXPECT_INVALID(strcpy(c.gpu_precision, "float64"),
                 "gpu.precision is \"float64\"");
  EXPECT_INVALID(strcpy(c.sync, "fast"), "storage.sync is \"fast\"");
  EXPECT_INVALID(strcpy(c.log_level, "loud"), "server.log_level is \"loud\"");
  EXPECT_INVALID(strcpy(c.gpu_device, "tpu"), "gpu.device is \"tpu\"");
  EXPECT_INVALID(c.host[0] = '\0', "server.host is empty");
  EXPECT_INVALID(c.data_dir[0] = '\0', "storage.data_dir is empty");
  EXPECT_INVALID(memset(c.tls_cert, 'x', sizeof c.tls_cert),
                 "server.tls_cert is not terminated");
  EXPECT_INVALID(c.n_auth_tokens = 17, "server.auth_tokens has 17 items");
  EXPECT_INVALID(c.n_allowed_origins = 1, "item 1 of server.allowed_origins");
  EXPECT_INVALID(strcpy(c.tls_cert, "c.pem"), "server.tls_key is empty");
  EXPECT_INVALID(strcpy(c.tls_key, "k.pem"), "server.tls_cert is empty");
  EXPECT_INVALID((c.gpu_enabled = 0, strcpy(c.gpu_device, "cuda")),
                 "gpu.device is \"cuda\" but gpu.enabled is false");

  /* The edges are fine: port 0 picks a free port. */
  mn_config_defaults(&c);
  c.port = 0;
  c.max_message_size = 1024;
  c.workers = 0;
  c.rate_limit = 0;
  c.gpu_enabled = 0;
  strcpy(c.gpu_device, "cpu");
  strcpy(c.tls_cert, "c.pem");
  strcpy(c.tls_key, "k.pem");
  assert_int_equal(mn_config_validate(&c), MN_OK);
  assert_int_equal(mn_config_validate(NULL), MN_ERR_INVALID);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_defaults, setup),
      cmocka_unit_test_setup(test_seed_config, setup),
      cmocka_unit_test_setup(test_every_key_json, setup),
      cmocka_unit_test_setup(test_every_key_set, setup),
      cmocka_unit_test_setup(test_every_key_env, setup),
      cmocka_unit_test_setup(test_precedence, setup),
      cmocka_unit_test_setup(test_bool_forms, setup),
      cmocka_unit_test_setup(test_size_keys, setup),
      cmocka_unit_test_setup(test_int_keys, setup),
      cmocka_unit_test_setup(test_strings, setup),
      cmocka_unit_test_setup(test_enums, setup),
      cmocka_unit_test_setup(test_lists, setup),
      cmocka_unit_test_setup(test_wrong_type_names_every_key, setup),
      cmocka_unit_test_setup(test_unknown_keys, setup),
      cmocka_unit_test_setup(test_bad_json, setup),
      cmocka_unit_test_setup(test_files, setup),
      cmocka_unit_test_setup(test_atomic, setup),
      cmocka_unit_test_setup(test_env_typo_warns, setup),
      cmocka_unit_test_setup(test_validate, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
