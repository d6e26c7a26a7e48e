/*
 * test_rpc.c - the JSON-RPC 2.0 engine through mn_rpc_handle on a real CPU
 * backend: the spec's section 7 examples adapted to real methods, ids,
 * batches, notifications, every error code with its message, limits
 * (nesting, UTF-8, binary frames), deadlines, metrics, PCA models that
 * survive a restart, the methods' documented examples, and peek_id.
 */
#include "rpc_fixture.h"

#include <pthread.h>
#include <sys/stat.h>

/* --- JSON-RPC 2.0 spec, section 7, with real methods -------------------- */

static void test_call_named_params(void **state) {
  fx *f = fx_new();
  json_t *rep;
  json_t *res = fx_ok(f,
                      "{\"jsonrpc\":\"2.0\",\"method\":\"processEmbeddings\","
                      "\"params\":{\"embeddings\":[[3,4],[0,0]],\"options\":"
                      "{\"normalize\":true}},\"id\":1}",
                      &rep);
  assert_int_equal(json_integer_value(json_object_get(rep, "id")), 1);
  double y[4] = {0};
  assert_int_equal(read_matrix(json_object_get(res, "processed"), y, 2), 2);
  assert_true(fabs(y[0] - 0.6) < 1e-7 && fabs(y[1] - 0.8) < 1e-7);
  assert_true(y[2] == 0 && y[3] == 0);
  json_t *md = json_object_get(res, "metadata");
  assert_int_equal(json_integer_value(json_object_get(md, "zero_rows")), 1);
  assert_int_equal(json_integer_value(json_object_get(md, "count")), 2);
  assert_int_equal(json_integer_value(json_object_get(md, "dimensions")), 2);
  assert_string_equal(json_string_value(json_object_get(md, "dtype")),
                      "float32");
  json_decref(rep);
  fx_free(f);
}

static void test_notification_no_reply(void **state) {
  fx *f = fx_new();
  assert_null(fx_call(f, "{\"jsonrpc\":\"2.0\",\"method\":\"health\"}"));
  /* Even a failing notification gets nothing back. */
  assert_null(fx_call(f, "{\"jsonrpc\":\"2.0\",\"method\":\"nope\"}"));
  assert_null(fx_call(f, "{\"jsonrpc\":\"2.0\",\"method\":"
                         "\"processEmbeddings\",\"params\":{}}"));
  fx_free(f);
}

static void test_method_not_found(void **state) {
  fx *f = fx_new();
  fx_err(f, "{\"jsonrpc\":\"2.0\",\"method\":\"foobar\",\"id\":\"1\"}",
         MN_RPC_METHOD_NOT_FOUND, "\"foobar\" does not exist");
  json_t *rep = fx_rpc(f, "{\"jsonrpc\":\"2.0\",\"method\":\"foobar\","
                          "\"id\":\"1\"}");
  assert_string_equal(json_string_value(json_object_get(rep, "id")), "1");
  const char *m = json_string_value(
      json_object_get(json_object_get(rep, "error"), "message"));
  assert_non_null(strstr(m, "processEmbeddings"));
  json_decref(rep);
  fx_free(f);
}

static void test_invalid_json(void **state) {
  fx *f = fx_new();
  json_t *rep = fx_rpc(f, "{\"jsonrpc\":\"2.0\",\"method\":\"foobar, "
                          "\"params\":\"bar\", \"baz]");
  json_t *e = json_object_get(rep, "error");
  assert_int_equal(json_integer_value(json_object_get(e, "code")),
                   MN_RPC_PARSE_ERROR);
  assert_true(json_is_null(json_object_get(rep, "id")));
  assert_non_null(strstr(json_string_value(json_object_get(e, "message")),
                         "line 1, column"));
  json_decref(rep);
  /* Invalid JSON inside a batch is still one parse error. */
  rep = fx_rpc(f, "[{\"jsonrpc\":\"2.0\",\"method\":\"health\",\"id\":\"1\"},"
                  "{\"jsonrpc\":\"2.0\",\"method\"]");
  assert_true(json_is_object(rep));
  assert_int_equal(json_integer_value(
                       json_object_get(json_object_get(rep, "error"), "code")),
                   MN_RPC_PARSE_ERROR);
  json_decref(rep);
  fx_err(f, "", MN_RPC_PARSE_ERROR, "expected a value");
  fx_err(f, "{\"a\":1} {\"b\":2}", MN_RPC_PARSE_ERROR, "one value");
  fx_err(f, "{\"a\":01}", MN_RPC_PARSE_ERROR, "leading zeros");
  fx_err(f, "{\"a\":\"\\x\"}", MN_RPC_PARSE_ERROR, "escape");
  fx_err(f, "{\"a\":\"\\ud800\"}", MN_RPC_PARSE_ERROR, "surrogate");
  fx_free(f);
}

static void test_invalid_request_objects(void **state) {
  fx *f = fx_new();
  json_t *rep = fx_rpc(f, "{\"jsonrpc\":\"2.0\",\"method\":1,"
                          "\"params\":\"bar\"}");
  json_t *e = json_object_get(rep, "error");
  assert_int_equal(json_integer_value(json_object_get(e, "code")),
                   MN_RPC_INVALID_REQUEST);
  assert_true(json_is_null(json_object_get(rep, "id")));
  json_decref(rep);
  fx_err(f, "{\"jsonrpc\":\"1.0\",\"method\":\"health\",\"id\":1}",
         MN_RPC_INVALID_REQUEST, "must be exactly \"2.0\"; got \"1.0\"");
  fx_err(f, "{\"method\":\"health\",\"id\":1}", MN_RPC_INVALID_REQUEST,
         "no \"jsonrpc\" member");
  fx_err(f, "{\"jsonrpc\":\"2.0\",\"id\":1}", MN_RPC_INVALID_REQUEST,
         "no \"method\"");
  fx_err(f, "{\"jsonrpc\":\"2.0\",\"method\":\"health\",\"id\":{}}",
         MN_RPC_INVALID_REQUEST, "\"id\" must be a string, a number or null");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"method\":\"health\",\"id\":1,"
         "\"params\":7}",
         MN_RPC_INVALID_REQUEST, "\"params\" must be an object");
  fx_err(f, "42", MN_RPC_INVALID_REQUEST, "must be a JSON object");
  /* The id of an invalid request is echoed when it is valid itself. */
  rep = fx_rpc(f, "{\"jsonrpc\":\"1.0\",\"method\":\"health\",\"id\":7}");
  assert_int_equal(json_integer_value(json_object_get(rep, "id")), 7);
  json_decref(rep);
  fx_free(f);
}

static void test_empty_and_invalid_batches(void **state) {
  fx *f = fx_new();
  json_t *rep = fx_rpc(f, "[]");
  assert_true(json_is_object(rep));
  check_envelope(rep);
  assert_int_equal(json_integer_value(
                       json_object_get(json_object_get(rep, "error"), "code")),
                   MN_RPC_INVALID_REQUEST);
  assert_true(json_is_null(json_object_get(rep, "id")));
  json_decref(rep);
  rep = fx_rpc(f, "[1]");
  assert_true(json_is_array(rep));
  assert_int_equal(json_array_size(rep), 1);
  check_envelope(json_array_get(rep, 0));
  json_decref(rep);
  rep = fx_rpc(f, "[1,2,3]");
  assert_int_equal(json_array_size(rep), 3);
  for (size_t i = 0; i < 3; i++) {
    json_t *x = json_array_get(rep, i);
    check_envelope(x);
    assert_true(json_is_null(json_object_get(x, "id")));
    assert_int_equal(json_integer_value(
                         json_object_get(json_object_get(x, "error"), "code")),
                     MN_RPC_INVALID_REQUEST);
  }
  json_decref(rep);
  fx_free(f);
}

static void test_mixed_batch(void **state) {
  fx *f = fx_new();
  json_t *rep = fx_rpc(
      f, "[{\"jsonrpc\":\"2.0\",\"method\":\"health\",\"id\":\"1\"},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"ping\"},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"processEmbeddings\",\"params\":"
         "{\"embeddings\":[[1,2,2]],\"options\":{\"normalize\":true}},"
         "\"id\":\"2\"},"
         "{\"foo\":\"boo\"},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"foo.get\",\"params\":{\"name\":"
         "\"myself\"},\"id\":\"5\"},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"getMetrics\",\"id\":\"9\"}]");
  assert_true(json_is_array(rep));
  assert_int_equal(json_array_size(rep), 5);
  const char *ids[] = {"1", "2", NULL, "5", "9"};
  const int codes[] = {0, 0, MN_RPC_INVALID_REQUEST, MN_RPC_METHOD_NOT_FOUND,
                       0};
  for (size_t i = 0; i < 5; i++) {
    json_t *x = json_array_get(rep, i);
    check_envelope(x);
    json_t *id = json_object_get(x, "id");
    if (ids[i])
      assert_string_equal(json_string_value(id), ids[i]);
    else
      assert_true(json_is_null(id));
    json_t *e = json_object_get(x, "error");
    if (codes[i])
      assert_int_equal(json_integer_value(json_object_get(e, "code")),
                       codes[i]);
    else
      assert_null(e);
  }
  double y[3] = {0};
  read_matrix(json_object_get(json_object_get(json_array_get(rep, 1), "result"),
                              "processed"),
              y, 3);
  assert_true(fabs(y[0] - 1.0 / 3) < 1e-7 && fabs(y[2] - 2.0 / 3) < 1e-7);
  json_decref(rep);
  fx_free(f);
}

static void test_all_notification_batch(void **state) {
  fx *f = fx_new();
  mn_rpc_reply rep;
  const char *m = "[{\"jsonrpc\":\"2.0\",\"method\":\"ping\"},"
                  "{\"jsonrpc\":\"2.0\",\"method\":\"health\"}]";
  mn_rpc_handle(f->r, f->s, m, strlen(m), 0, 0, &rep);
  assert_null(rep.data);
  assert_int_equal(rep.len, 0);
  fx_free(f);
}

static void test_ids(void **state) {
  fx *f = fx_new();
  json_t *rep = fx_rpc(f, "{\"jsonrpc\":\"2.0\",\"method\":\"ping\","
                          "\"id\":0}");
  assert_true(json_is_integer(json_object_get(rep, "id")));
  assert_int_equal(json_integer_value(json_object_get(rep, "id")), 0);
  assert_true(json_is_object(json_object_get(rep, "result")));
  json_decref(rep);
  /* id null is a request, not a notification. */
  rep = fx_rpc(f, "{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":null}");
  assert_true(json_is_null(json_object_get(rep, "id")));
  assert_non_null(json_object_get(rep, "result"));
  json_decref(rep);
  /* Strings come back byte for byte, escapes included. */
  char *t = fx_call(f, "{\"jsonrpc\":\"2.0\",\"method\":\"ping\","
                       "\"id\":\"a\\u00e9\\\"b\"}");
  assert_non_null(strstr(t, "\"id\":\"a\\u00e9\\\"b\""));
  free(t);
  t = fx_call(f, "{\"jsonrpc\":\"2.0\",\"method\":\"ping\","
                 "\"id\":-12.5e3}");
  assert_non_null(strstr(t, "\"id\":-12.5e3"));
  free(t);
  fx_free(f);
}

static void test_positional_params(void **state) {
  fx *f = fx_new();
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"method\":\"processEmbeddings\","
         "\"params\":[[[1,2]]],\"id\":1}",
         MN_RPC_INVALID_PARAMS, "params is an array");
  /* Omitted params are fine for a method without required ones, and
   * reported by name for one with. */
  json_t *rep;
  fx_ok(f, "{\"jsonrpc\":\"2.0\",\"method\":\"health\",\"id\":1}", &rep);
  json_decref(rep);
  fx_ok(f,
        "{\"jsonrpc\":\"2.0\",\"method\":\"health\",\"id\":1,\"params\":null}",
        &rep);
  json_decref(rep);
  fx_err(f, "{\"jsonrpc\":\"2.0\",\"method\":\"processEmbeddings\",\"id\":1}",
         MN_RPC_INVALID_PARAMS, "params.embeddings is required");
  fx_free(f);
}

/* --- parameter errors name their path ------------------------------------ */

static void test_param_messages(void **state) {
  fx *f = fx_new();
  const char *pre = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                    "\"processEmbeddings\",\"params\":{\"embeddings\":"
                    "[[1,2,3]],\"options\":";
  struct {
    const char *opts;
    const char *needle;
  } cases[] = {
      {"{\"quantization\":12}",
       "params.options.quantization must be one of true, false, \"int8\", "
       "\"int8_affine\", \"int4\", \"fp16\", \"bf16\", \"binary\"; got 12"},
      {"{\"normalize\":\"yes\"}",
       "params.options.normalize must be a boolean; got \"yes\""},
      {"{\"normalise\":true}",
       "params.options.normalise is not a known parameter; expected one of: "
       "normalize"},
      {"{\"batch_size\":0}",
       "params.options.batch_size must be an integer from 1 to 1048576; got "
       "0"},
      {"{\"dimension_reduction\":\"x\"}",
       "params.options.dimension_reduction must be a boolean, or an integer "
       "from 1 to 65536; got \"x\""},
      {"{\"quantization_bits\":3}",
       "params.options.quantization_bits must be one of 1, 4, 8, 16; got 3"},
      {"{\"quantization\":\"int8\",\"quantization_bits\":4}",
       "quantization_bits is 4 but params.options.quantization \"int8\""},
      {"{\"quantization\":false,\"quantization_bits\":4}",
       "quantization is false"},
      {"{\"precision\":\"float16\",\"quantization\":\"int4\"}",
       "precision \"float16\""},
      {"{\"reduce_dimensions\":4}", "only 3 wide"},
      {"{\"reduce_dimensions\":2}", "needs at least 2 rows"},
      {"{\"pca_model\":\"nope\"}",
       "params.options.pca_model \"nope\" does not exist"},
      {"{\"pca_model\":\"../x\"}", "params.options.pca_model"},
      {"{\"whiten\":true}", "whiten only applies"},
      {"{\"dimension_reduction\":false,\"reduce_dimensions\":2}",
       "drop one of them"},
      {"{\"encoding\":\"hex\"}",
       "params.options.encoding must be one of \"json\", \"base64\", "
       "\"binary\"; got \"hex\""},
      {"7", "params.options must be an object; got 7"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char msg[600];
    snprintf(msg, sizeof msg, "%s%s}}", pre, cases[i].opts);
    fx_err(f, msg, MN_RPC_INVALID_PARAMS, cases[i].needle);
  }
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"processEmbeddings\","
         "\"params\":{\"embeddings\":[[1]],\"extra\":1}}",
         MN_RPC_INVALID_PARAMS, "params.extra is not a known parameter");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"processEmbeddings\","
         "\"params\":{\"embeddings\":[[1]],\"chatId\":5}}",
         MN_RPC_INVALID_PARAMS, "params.chatId must be a string; got 5");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"fitPCA\",\"params\":"
         "{\"name\":\"a/b\",\"n_components\":1,\"embeddings\":[[1,2],[3,"
         "4]]}}",
         MN_RPC_INVALID_PARAMS, "params.name must be 1 to 64 characters");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"fitPCA\",\"params\":"
         "{\"name\":\"x\",\"n_components\":1,\"collection\":\"c\"}}",
         MN_RPC_INVALID_PARAMS, "collection 'c' does not exist");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"fitPCA\",\"params\":"
         "{\"name\":\"x\",\"n_components\":3,\"embeddings\":[[1,2],[3,"
         "4]]}}",
         MN_RPC_INVALID_PARAMS,
         "params.n_components is 3 but the embeddings "
         "are 2 wide");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"deletePCAModel\","
         "\"params\":{}}",
         MN_RPC_INVALID_PARAMS, "params.name is required");
  /* _meta (MCP) is accepted on any method. */
  json_t *rep;
  fx_ok(f,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"health\",\"params\":"
        "{\"_meta\":{\"progressToken\":1}}}",
        &rep);
  json_decref(rep);
  fx_free(f);
}

/* --- limits ------------------------------------------------------------- */

static void test_depth_limit(void **state) {
  fx *f = fx_new();
  /* Depth 64 in all: the request object, params, _meta and 61 arrays. */
  sbuf b = {0};
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"health\","
             "\"params\":{\"_meta\":{\"x\":");
  for (int i = 0; i < 61; i++)
    sb_add(&b, "[");
  for (int i = 0; i < 61; i++)
    sb_add(&b, "]");
  sb_add(&b, "}}}");
  json_t *rep;
  fx_ok(f, b.p, &rep);
  json_decref(rep);
  free(b.p);
  memset(&b, 0, sizeof b);
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"health\","
             "\"params\":{\"_meta\":{\"x\":");
  for (int i = 0; i < 62; i++)
    sb_add(&b, "[");
  for (int i = 0; i < 62; i++)
    sb_add(&b, "]");
  sb_add(&b, "}}}");
  fx_err(f, b.p, MN_RPC_INVALID_REQUEST, "server.max_json_depth");
  free(b.p);
  /* Far deeper than any stack would like: refused, not crashed. */
  size_t n = 200000;
  char *deep = malloc(n + 1);
  memset(deep, '[', n);
  deep[n] = '\0';
  fx_err(f, deep, MN_RPC_INVALID_REQUEST, "more than 64 levels");
  free(deep);
  fx_free(f);
}

static void test_utf8(void **state) {
  fx *f = fx_new();
  const char bad[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"health\","
                     "\"params\":{\"_meta\":\"\xc3\x28\"}}";
  fx_err(f, bad, MN_RPC_PARSE_ERROR, "UTF-8");
  const char overlong[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                          "\"ping\",\"x\":\"\xc0\xaf\"}";
  fx_err(f, overlong, MN_RPC_PARSE_ERROR, "UTF-8");
  const char surrogate[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                           "\"ping\",\"x\":\"\xed\xa0\x80\"}";
  fx_err(f, surrogate, MN_RPC_PARSE_ERROR, "UTF-8");
  const char ok[] = "{\"jsonrpc\":\"2.0\",\"id\":\"\xe2\x82\xac\xf0\x9f\x98"
                    "\x80\",\"method\":\"ping\"}";
  json_t *rep;
  fx_ok(f, ok, &rep);
  assert_string_equal(json_string_value(json_object_get(rep, "id")),
                      "\xe2\x82\xac\xf0\x9f\x98\x80");
  json_decref(rep);
  /* A NUL byte outside a string is a syntax error, not the end. */
  const char nul[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\0x";
  char *t = fx_call_n(f, nul, sizeof nul - 1, 0);
  assert_non_null(strstr(t, "-32700"));
  free(t);
  fx_free(f);
}

/* Build a binary frame: header, JSON, payload. */
static uint8_t *frame(const char *json, const void *payload, size_t plen,
                      size_t *len) {
  size_t n = strlen(json);
  uint8_t *b = malloc(4 + n + plen);
  b[0] = (uint8_t)n;
  b[1] = (uint8_t)(n >> 8);
  b[2] = (uint8_t)(n >> 16);
  b[3] = (uint8_t)(n >> 24);
  memcpy(b + 4, json, n);
  if (plen)
    memcpy(b + 4 + n, payload, plen);
  *len = 4 + n + plen;
  return b;
}

/* Reply to a binary frame: returns the JSON (parsed) and the payload. */
static json_t *binary_call(fx *f, const uint8_t *msg, size_t len,
                           uint8_t **payload, size_t *plen) {
  mn_rpc_reply rep;
  mn_rpc_handle(f->r, f->s, msg, len, 1, 0, &rep);
  assert_non_null(rep.data);
  assert_int_equal(rep.binary, 1);
  const uint8_t *d = rep.data;
  assert_true(rep.len >= 4);
  uint32_t n = d[0] | d[1] << 8 | d[2] << 16 | (uint32_t)d[3] << 24;
  assert_true(4 + (size_t)n <= rep.len);
  assert_int_equal((4 + n) % 8, 0);
  json_error_t e;
  json_t *j = json_loadb((const char *)d + 4, n, 0, &e);
  if (!j)
    fail_msg("binary reply JSON: %s", e.text);
  check_envelope(j);
  if (payload) {
    *plen = rep.len - 4 - n;
    *payload = malloc(*plen + 1);
    memcpy(*payload, d + 4 + n, *plen);
  }
  mn_rpc_reply_free(&rep);
  return j;
}

static void expect_binary_error(fx *f, const uint8_t *msg, size_t len, int code,
                                const char *needle) {
  json_t *j = binary_call(f, msg, len, NULL, NULL);
  json_t *e = json_object_get(j, "error");
  assert_non_null(e);
  const char *m = json_string_value(json_object_get(e, "message"));
  if ((int)json_integer_value(json_object_get(e, "code")) != code ||
      !strstr(m, needle))
    fail_msg("expected %d '%s'; got %s", code, needle, m);
  json_decref(j);
}

static void test_binary_malformed(void **state) {
  fx *f = fx_new();
  uint8_t tiny[3] = {1, 0, 0};
  expect_binary_error(f, tiny, 3, MN_RPC_PARSE_ERROR, "4-byte");
  uint8_t past[8] = {200, 0, 0, 0, '{', '}', ' ', ' '};
  expect_binary_error(f, past, 8, MN_RPC_PARSE_ERROR,
                      "says its JSON part is 200 bytes");
  float v[4] = {1, 2, 3, 4};
  size_t len;
  uint8_t *m = frame("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                     "\"processEmbeddings\",\"params\":{\"embeddings\":{"
                     "\"dtype\":\"float32\",\"shape\":[1,4],\"buffer\":{"
                     "\"offset\":4,\"length\":16}}}}",
                     v, sizeof v, &len);
  expect_binary_error(f, m, len, MN_RPC_INVALID_PARAMS,
                      "reaches past the end of the binary payload");
  free(m);
  m = frame("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"processEmbeddings\","
            "\"params\":{\"embeddings\":{\"dtype\":\"float32\",\"shape\":[1,"
            "3],\"buffer\":{\"offset\":0,\"length\":16}}}}",
            v, sizeof v, &len);
  expect_binary_error(f, m, len, MN_RPC_INVALID_PARAMS,
                      "buffer.length is 16 bytes, but dtype float32 with "
                      "shape [1, 3] needs 12");
  free(m);
  m = frame("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"processEmbeddings\","
            "\"params\":{\"embeddings\":{\"dtype\":\"float32\",\"shape\":[1,"
            "4],\"buffer\":{\"offset\":-4,\"length\":16}}}}",
            v, sizeof v, &len);
  expect_binary_error(f, m, len, MN_RPC_INVALID_PARAMS, "non-negative");
  free(m);
  m = frame("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":", NULL, 0, &len);
  expect_binary_error(f, m, len, MN_RPC_PARSE_ERROR, "invalid JSON");
  free(m);
  /* A buffer reference in a text frame. */
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"processEmbeddings\","
         "\"params\":{\"embeddings\":{\"dtype\":\"float32\",\"shape\":[1,"
         "4],\"buffer\":{\"offset\":0,\"length\":16}}}}",
         MN_RPC_INVALID_PARAMS, "came as a text frame");
  fx_free(f);
}

/* --- error codes ------------------------------------------------------- */

static void tiny_cache(mn_config *c) {
  c->cache_size = 4096;
}

static void test_resource_error(void **state) {
  fx *f = fx_new_with(tiny_cache);
  json_t *rep;
  sbuf b = {0};
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"processEmbeddings\","
             "\"params\":{\"embeddings\":");
  float *x = rand_matrix(64, 64);
  sb_matrix(&b, x, 64, 64);
  sb_add(&b, "}}");
  rep = fx_rpc(f, b.p);
  json_t *e = json_object_get(rep, "error");
  assert_int_equal(json_integer_value(json_object_get(e, "code")),
                   MN_RPC_RESOURCE_ERROR);
  json_t *d = json_object_get(e, "data");
  assert_true(json_integer_value(json_object_get(d, "requested")) >=
              64 * 64 * 4);
  assert_true(json_integer_value(json_object_get(d, "available")) <= 4096);
  assert_non_null(strstr(json_string_value(json_object_get(e, "message")),
                         "processing.cache_size"));
  json_decref(rep);
  free(b.p);
  free(x);
  fx_free(f);
}

static void test_timeout(void **state) {
  fx *f = fx_new();
  const char *m = "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":"
                  "\"processEmbeddings\",\"params\":{\"embeddings\":[[1,2]]}}";
  char *t = fx_call_n(f, m, strlen(m), 1); /* a deadline long past */
  json_t *rep = jparse(t);
  free(t);
  check_envelope(rep);
  json_t *e = json_object_get(rep, "error");
  assert_int_equal(json_integer_value(json_object_get(e, "code")),
                   MN_RPC_TIMEOUT_ERROR);
  assert_non_null(strstr(json_string_value(json_object_get(e, "message")),
                         "timed out after 30000 ms (processing.timeout)"));
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(e, "data"), "timeout_ms")),
                   30000);
  assert_int_equal(json_integer_value(json_object_get(rep, "id")), 3);
  json_decref(rep);
  /* A deadline in the future is no obstacle. */
  t = fx_call_n(f, m, strlen(m), mn_time_ns() + 10000000000ull);
  assert_non_null(strstr(t, "\"result\""));
  free(t);
  fx_free(f);
}

static void test_internal_error(void **state) {
  fx *f = fx_new();
  /* Make the model directory unusable: a file where it should be. */
  char p[400];
  snprintf(p, sizeof p, "%s/pca", f->dir);
  fx_rm_rf(p);
  FILE *fp = fopen(p, "w");
  assert_non_null(fp);
  fclose(fp);
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"fitPCA\",\"params\":"
         "{\"name\":\"m\",\"n_components\":1,\"embeddings\":[[1,2],[3,5],"
         "[0,1]]}}",
         MN_RPC_INTERNAL_ERROR, "the model could not be saved");
  fx_free(f);
}

static void test_status_mapping(void **state) {
  /* The one mapping, status by status. */
  struct {
    mn_status s;
    int code;
  } m[] = {{MN_ERR_INVALID, -32602},     {MN_ERR_RANGE, -32602},
           {MN_ERR_NOMEM, -32000},       {MN_ERR_DEVICE_OOM, -32000},
           {MN_ERR_RESOURCE, -32000},    {MN_ERR_TIMEOUT, -32002},
           {MN_ERR_NUMERIC, -32001},     {MN_ERR_DEVICE, -32001},
           {MN_ERR_IO, -32603},          {MN_ERR_INTERNAL, -32603},
           {MN_ERR_UNSUPPORTED, -32603}, {MN_ERR_NOT_FOUND, -32603}};
  for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
    assert_int_equal(mn__status_code(m[i].s), m[i].code);
  /* The message is the detail; -32000 carries requested / available. */
  fx *f = fx_new();
  mn__call c;
  memset(&c, 0, sizeof c);
  c.r = f->r;
  c.requested_bytes = 12345;
  mn__set_error(MN_ERR_NUMERIC, "eigensolver did not converge");
  assert_int_equal(mn__fail_status(&c, MN_ERR_NUMERIC, NULL),
                   MN_RPC_PROCESSING_ERROR);
  assert_string_equal(c.err_msg, "eigensolver did not converge");
  mn__set_error(MN_ERR_NOMEM, "out of host memory allocating 12345 bytes");
  assert_int_equal(mn__fail_status(&c, MN_ERR_NOMEM, NULL),
                   MN_RPC_RESOURCE_ERROR);
  assert_non_null(strstr(c.err_data, "\"requested\":12345"));
  assert_non_null(strstr(c.err_data, "\"available\":"));
  fx_free(f);
}

static void test_error_reply_helper(void **state) {
  mn_rpc_reply r;
  mn_rpc_error_reply(MN_RPC_RATE_LIMITED,
                     "rate limit of 1000 requests per minute exceeded",
                     "{\"retry_after_ms\":250}", "\"abc\"", &r);
  char *t = strndup(r.data, r.len);
  mn_rpc_reply_free(&r);
  json_t *j = jparse(t);
  free(t);
  check_envelope(j);
  assert_string_equal(json_string_value(json_object_get(j, "id")), "abc");
  json_t *e = json_object_get(j, "error");
  assert_int_equal(json_integer_value(json_object_get(e, "code")), -32003);
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(e, "data"), "retry_after_ms")),
                   250);
  json_decref(j);
  /* Broken id or data text is not passed through. */
  mn_rpc_error_reply(MN_RPC_OVERLOADED, "server overloaded: retry later",
                     "{bad", "[1]", &r);
  t = strndup(r.data, r.len);
  mn_rpc_reply_free(&r);
  j = jparse(t);
  free(t);
  check_envelope(j);
  assert_true(json_is_null(json_object_get(j, "id")));
  assert_null(json_object_get(json_object_get(j, "error"), "data"));
  assert_int_equal(
      json_integer_value(json_object_get(json_object_get(j, "error"), "code")),
      -32004);
  json_decref(j);
}

static void test_peek_id(void **state) {
  struct {
    const char *msg;
    const char *id;
  } c[] = {
      {"{\"jsonrpc\":\"2.0\",\"id\":17,\"method\":\"x\"}", "17"},
      {"{\"params\":{\"id\":5,\"e\":[[1,2],\"}\"]},\"id\":\"a\\\"b\"}",
       "\"a\\\"b\""},
      {" { \"id\" : null }", "null"},
      {"{\"id\":0}", "0"},
      {"{\"method\":\"x\"}", NULL},
      {"[{\"id\":1}]", NULL},
      {"{\"id\":{\"x\":1}}", NULL},
      {"{\"id\":tru}", NULL},
      {"{\"id\":\"unterminated}", NULL},
  };
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    char *id = mn_rpc_peek_id(c[i].msg, strlen(c[i].msg), 0);
    if (c[i].id) {
      if (!id || strcmp(id, c[i].id) != 0)
        fail_msg("peek %s: got %s", c[i].msg, id ? id : "NULL");
    } else if (id) {
      fail_msg("peek %s: expected NULL, got %s", c[i].msg, id);
    }
    free(id);
  }
  size_t len;
  uint8_t *m = frame("{\"id\":\"b1\",\"method\":\"x\"}", "zz", 2, &len);
  char *id = mn_rpc_peek_id(m, len, 1);
  assert_string_equal(id, "\"b1\"");
  free(id);
  free(m);
}

static void test_metrics_recorded(void **state) {
  fx *f = fx_new();
  json_t *rep;
  for (int i = 0; i < 3; i++) {
    fx_ok(f, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"health\"}", &rep);
    json_decref(rep);
  }
  fx_err(f, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"nope\"}",
         MN_RPC_METHOD_NOT_FOUND, "nope");
  assert_false(isnan(mn_metrics_percentile(f->m, "health", 50)));
  json_t *res = fx_ok(
      f, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"getMetrics\"}", &rep);
  json_t *mem = json_object_get(res, "memory");
  assert_true(json_is_integer(json_object_get(mem, "chunks")));
  assert_int_equal(json_integer_value(json_object_get(mem, "usage")),
                   mn_account_get(MN_TIER_HOST));
  json_t *hpc = json_object_get(res, "hpc");
  assert_true(json_integer_value(json_object_get(hpc, "active_processes")) >=
              1);
  assert_true(json_integer_value(json_object_get(hpc, "cpu_memory_total")) > 0);
  json_t *by = json_object_get(json_object_get(res, "requests"), "by_method");
  assert_int_equal(json_integer_value(
                       json_object_get(json_object_get(by, "health"), "count")),
                   3);
  assert_non_null(json_object_get(by, "unknown"));
  json_decref(rep);
  fx_free(f);
}

static void test_health(void **state) {
  fx *f = fx_new();
  char *h = mn_rpc_health_json(f->r);
  json_t *j = jparse(h);
  free(h);
  assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
  assert_string_equal(json_string_value(json_object_get(j, "backend")), "cpu");
  const char *st = json_string_value(json_object_get(j, "state"));
  double ratio = (double)mn_account_get(MN_TIER_HOST) / f->cfg.cache_size;
  assert_string_equal(st, ratio < 0.6 ? "normal" : "high_load");
  assert_true(json_real_value(json_object_get(j, "uptime_s")) >= 0 ||
              json_is_integer(json_object_get(j, "uptime_s")));
  json_decref(j);
  /* Pressure: a budget the test's own accounting fills. */
  f->cfg.cache_size = 1000;
  mn_account_add(MN_TIER_HOST, 700 - mn_account_get(MN_TIER_HOST));
  int64_t before = mn_account_get(MN_TIER_HOST);
  assert_string_equal(mn__pressure_state(f->r, NULL), "high_load");
  mn_account_add(MN_TIER_HOST, 200);
  assert_string_equal(mn__pressure_state(f->r, NULL), "recovery");
  mn_account_add(MN_TIER_HOST, -600);
  assert_string_equal(mn__pressure_state(f->r, NULL), "normal");
  mn_account_add(MN_TIER_HOST, before - mn_account_get(MN_TIER_HOST));
  fx_free(f);
}

static void test_cleanup(void **state) {
  fx *f = fx_new();
  /* A big request leaves scratch blocks in the pool. */
  sbuf b = {0};
  float *x = rand_matrix(128, 256);
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"processEmbeddings\","
             "\"params\":{\"embeddings\":");
  sb_matrix(&b, x, 128, 256);
  sb_add(&b, "}}");
  char *t = fx_call(f, b.p);
  free(t);
  free(b.p);
  free(x);
  size_t pooled = mn__arena_pool_bytes();
  assert_true(pooled > 0);
  json_t *rep;
  json_t *res = fx_ok(f,
                      "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                      "\"cleanup\"}",
                      &rep);
  /* The cleanup request itself took one block from the pool first. */
  json_int_t rel = json_integer_value(json_object_get(res, "scratch_released"));
  assert_true(rel > 0 && rel <= (json_int_t)pooled &&
              rel >= (json_int_t)pooled - (128 << 10));
  int64_t rb = json_integer_value(json_object_get(res, "rss_before"));
  int64_t ra = json_integer_value(json_object_get(res, "rss_after"));
  int64_t fr = json_integer_value(json_object_get(res, "freed_bytes"));
  assert_true(rb > 0 && ra > 0);
  assert_int_equal(fr, rb > ra ? rb - ra : 0);
  json_decref(rep);
  fx_free(f);
}

/* --- PCA models ---------------------------------------------------------- */

static void test_pca_persistence(void **state) {
  fx *f = fx_new();
  /* Rows spread mostly along (1, 1, 0, 0). */
  sbuf b = {0};
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"fitPCA\",\"params\":"
             "{\"name\":\"m1.v-2\",\"n_components\":2,\"whiten\":true,"
             "\"embeddings\":[");
  for (int i = 0; i < 40; i++) {
    double t = (i - 20) / 4.0;
    sb_add(&b, "%s[%.6f,%.6f,%.6f,%.6f]", i ? "," : "", t + 0.1 * frand(),
           t + 0.1 * frand(), 0.3 * frand(), 0.05 * frand());
  }
  sb_add(&b, "]}}");
  json_t *rep;
  json_t *res = fx_ok(f, b.p, &rep);
  free(b.p);
  assert_string_equal(json_string_value(json_object_get(res, "name")),
                      "m1.v-2");
  assert_int_equal(json_integer_value(json_object_get(res, "input_dim")), 4);
  json_t *evr = json_object_get(res, "explained_variance_ratio");
  assert_int_equal(json_array_size(evr), 2);
  assert_true(json_number_value(json_array_get(evr, 0)) > 0.9);
  json_decref(rep);
  const char *use = "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":"
                    "\"processEmbeddings\",\"params\":{\"embeddings\":[[1,1,"
                    "0,0],[2,2,0.1,0]],\"options\":{\"pca_model\":\"m1.v-2\","
                    "\"reduce_dimensions\":1}}}";
  res = fx_ok(f, use, &rep);
  double first[2] = {0};
  read_matrix(json_object_get(res, "processed"), first, 1);
  json_t *md = json_object_get(res, "metadata");
  assert_string_equal(json_string_value(json_object_get(md, "pca_model")),
                      "m1.v-2");
  assert_true(json_is_true(json_object_get(md, "whiten")));
  json_decref(rep);
  /* Restart: the model is read back from the data directory. */
  fx_close_engine(f);
  fx_open_engine(f);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":"
              "\"listPCAModels\"}",
              &rep);
  assert_int_equal(json_integer_value(json_object_get(res, "count")), 1);
  json_t *m0 = json_array_get(json_object_get(res, "models"), 0);
  assert_string_equal(json_string_value(json_object_get(m0, "name")), "m1.v-2");
  assert_int_equal(json_integer_value(json_object_get(m0, "n_samples")), 40);
  assert_true(json_is_true(json_object_get(m0, "whiten")));
  json_decref(rep);
  res = fx_ok(f, use, &rep);
  double second[2] = {0};
  read_matrix(json_object_get(res, "processed"), second, 1);
  assert_true(first[0] == second[0] && first[1] == second[1]);
  json_decref(rep);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":"
              "\"deletePCAModel\",\"params\":{\"name\":\"m1.v-2\"}}",
              &rep);
  assert_true(json_is_true(json_object_get(res, "deleted")));
  json_decref(rep);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":"
              "\"deletePCAModel\",\"params\":{\"name\":\"m1.v-2\"}}",
              &rep);
  assert_true(json_is_false(json_object_get(res, "deleted")));
  json_decref(rep);
  fx_close_engine(f);
  fx_open_engine(f);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":"
              "\"listPCAModels\"}",
              &rep);
  assert_int_equal(json_integer_value(json_object_get(res, "count")), 0);
  json_decref(rep);
  fx_free(f);
}

/* The seed's client example: one Float32Array, dimension_reduction: true,
 * quantization: true. It uses the model named "default". */
static void test_seed_example(void **state) {
  fx *f = fx_new();
  sbuf one = {0};
  sb_add(&one, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
               "\"processEmbeddings\",\"params\":{\"embeddings\":{");
  float v[16];
  for (int i = 0; i < 16; i++) {
    v[i] = frand();
    sb_add(&one, "%s\"%d\":%.9g", i ? "," : "", i, (double)v[i]);
  }
  sb_add(&one, "},\"options\":{\"dimension_reduction\":true,"
               "\"quantization\":true}}}");
  fx_err(f, one.p, MN_RPC_INVALID_PARAMS, "name it \"default\"");
  sbuf b = {0};
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"fitPCA\",\"params\":"
             "{\"name\":\"default\",\"n_components\":8,\"embeddings\":");
  float *x = rand_matrix(64, 16);
  sb_matrix(&b, x, 64, 16);
  sb_add(&b, "}}");
  json_t *rep;
  fx_ok(f, b.p, &rep);
  json_decref(rep);
  json_t *res = fx_ok(f, one.p, &rep);
  json_t *p = json_object_get(res, "processed");
  assert_true(json_is_array(p));
  assert_int_equal(json_array_size(p), 8);
  assert_true(json_is_integer(json_array_get(p, 0)));
  json_t *md = json_object_get(res, "metadata");
  assert_string_equal(json_string_value(json_object_get(md, "dtype")), "int8");
  assert_string_equal(json_string_value(json_object_get(md, "pca_model")),
                      "default");
  assert_int_equal(json_array_size(json_object_get(res, "scales")), 1);
  json_decref(rep);
  /* Any reduction without a model name uses "default" when it fits ... */
  sbuf two = {0};
  sb_add(&two, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
               "\"processEmbeddings\",\"params\":{\"embeddings\":");
  sb_matrix(&two, x, 3, 16);
  sb_add(&two, ",\"options\":{\"reduce_dimensions\":4}}}");
  res = fx_ok(f, two.p, &rep);
  md = json_object_get(res, "metadata");
  assert_string_equal(json_string_value(json_object_get(md, "pca_model")),
                      "default");
  assert_int_equal(json_integer_value(json_object_get(md, "dimensions")), 4);
  json_decref(rep);
  free(two.p);
  /* ... and a batch fit when it has too few components. */
  memset(&two, 0, sizeof two);
  sb_add(&two, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
               "\"processEmbeddings\",\"params\":{\"embeddings\":");
  sb_matrix(&two, x, 12, 16);
  sb_add(&two, ",\"options\":{\"reduce_dimensions\":10}}}");
  res = fx_ok(f, two.p, &rep);
  md = json_object_get(res, "metadata");
  assert_string_equal(json_string_value(json_object_get(md, "pca_model")),
                      "(fitted on this batch)");
  assert_int_equal(json_integer_value(json_object_get(md, "dimensions")), 10);
  json_decref(rep);
  free(two.p);
  free(one.p);
  free(b.p);
  free(x);
  fx_free(f);
}

/* --- threads -------------------------------------------------------------- */

typedef struct worker {
  fx *f;
  int id;
  int ok, missing, bad;
} worker;

static void *use_model(void *arg) {
  worker *w = arg;
  mn_rpc_session *s = mn_rpc_session_new(w->f->r, "thread");
  const char *m = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                  "\"processEmbeddings\",\"params\":{\"embeddings\":[[1,2,3,4],"
                  "[0,1,0,1]],\"options\":{\"pca_model\":\"m\"}}}";
  for (int i = 0; i < 150; i++) {
    mn_rpc_reply rep;
    mn_rpc_handle(w->f->r, s, m, strlen(m), 0, 0, &rep);
    char *t = strndup(rep.data, rep.len);
    mn_rpc_reply_free(&rep);
    if (strstr(t, "\"dimensions\":2"))
      w->ok++;
    else if (strstr(t, "-32602") && strstr(t, "does not exist"))
      w->missing++;
    else
      w->bad++;
    free(t);
  }
  mn_rpc_session_free(s);
  return NULL;
}

static void *churn_model(void *arg) {
  worker *w = arg;
  const char *fit =
      "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"fitPCA\","
      "\"params\":{\"name\":\"m\",\"n_components\":2,"
      "\"embeddings\":[[1,2,3,4],[2,1,0,1],[0,0,1,5],[3,1,2,2]]}}";
  const char *del = "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":"
                    "\"deletePCAModel\",\"params\":{\"name\":\"m\"}}";
  for (int i = 0; i < 40; i++) {
    const char *m = i % 3 == 2 ? del : fit;
    mn_rpc_reply rep;
    mn_rpc_handle(w->f->r, NULL, m, strlen(m), 0, 0, &rep);
    if (!strstr(rep.data, "\"result\""))
      w->bad++;
    else
      w->ok++;
    mn_rpc_reply_free(&rep);
  }
  return NULL;
}

/* Requests from several threads while another replaces and deletes the
 * model they use: every reply is a result or a clear -32602. */
static void test_threads(void **state) {
  fx *f = fx_new();
  worker w[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].f = f;
    w[i].id = i;
    assert_int_equal(
        pthread_create(&th[i], NULL, i == 3 ? churn_model : use_model, &w[i]),
        0);
  }
  for (int i = 0; i < 4; i++)
    pthread_join(th[i], NULL);
  for (int i = 0; i < 4; i++) {
    if (w[i].bad)
      fail_msg("thread %d: %d replies were neither a result nor the "
               "expected error",
               i, w[i].bad);
  }
  assert_int_equal(w[3].ok, 40);
  int ok = 0, missing = 0;
  for (int i = 0; i < 3; i++) {
    ok += w[i].ok;
    missing += w[i].missing;
  }
  assert_int_equal(ok + missing, 3 * 150);
  /* The churner's last step was a fit: the model is there and works. */
  json_t *rep;
  json_t *res = fx_ok(f,
                      "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                      "\"processEmbeddings\",\"params\":{\"embeddings\":"
                      "[[1,2,3,4]],\"options\":{\"pca_model\":\"m\"}}}",
                      &rep);
  assert_int_equal(
      json_array_size(json_array_get(json_object_get(res, "processed"), 0)), 2);
  json_decref(rep);
  fx_free(f);
}

/* --- the documented examples ------------------------------------------ */

/* Every key of `doc` appears in `got` with the same JSON type, recursively;
 * arrays are compared by their first items. */
static void same_shape(json_t *doc, json_t *got, const char *where) {
  int dt = json_typeof(doc), gt = json_typeof(got);
  int dnum = dt == JSON_INTEGER || dt == JSON_REAL;
  int gnum = gt == JSON_INTEGER || gt == JSON_REAL;
  int dbool = dt == JSON_TRUE || dt == JSON_FALSE;
  int gbool = gt == JSON_TRUE || gt == JSON_FALSE;
  if (!(dt == gt || (dnum && gnum) || (dbool && gbool)))
    fail_msg("%s: documented type %d, reply has %d", where, dt, gt);
  if (json_is_object(doc)) {
    const char *k;
    json_t *v;
    json_object_foreach(doc, k, v) {
      json_t *g = json_object_get(got, k);
      if (!g)
        fail_msg("%s.%s is documented but missing from the reply", where, k);
      char w[300];
      snprintf(w, sizeof w, "%s.%s", where, k);
      same_shape(v, g, w);
    }
  } else if (json_is_array(doc) && json_array_size(doc) &&
             json_array_size(got)) {
    char w[300];
    snprintf(w, sizeof w, "%s[0]", where);
    same_shape(json_array_get(doc, 0), json_array_get(got, 0), w);
  }
}

static void test_documented_examples(void **state) {
  fx *f = fx_new();
  for (size_t i = 0; i < mn__n_methods; i++) {
    const mn__method *m = &mn__methods[i];
    mn__arena a = {0};
    char *req = mn__json_join_literals(&a, m->example_request);
    char *t = fx_call(f, req);
    if (!m->example_reply) {
      if (t)
        fail_msg("%s: example is a notification but got %s", m->name, t);
      mn__arena_release(&a);
      continue;
    }
    if (!t)
      fail_msg("%s: no reply to the example", m->name);
    char *doc_text = mn__json_join_literals(&a, m->example_reply);
    json_t *doc = jparse(doc_text);
    json_t *got = jparse(t);
    check_envelope(got);
    if (!json_object_get(got, "result"))
      fail_msg("%s: example failed: %s", m->name, t);
    same_shape(doc, got, m->name);
    /* The result also satisfies the published output schema. */
    mn__jerr e;
    const mn__jv *res =
        mn__jobj_get(mn__json_parse(&a, t, strlen(t), 64, &e), "result");
    mn__call c;
    memset(&c, 0, sizeof c);
    c.r = f->r;
    if (mn__schema_check(&c, f->r->table.out[i], res, "result", NULL))
      fail_msg("%s: result does not match its outputSchema: %s", m->name,
               c.err_msg);
    json_decref(doc);
    json_decref(got);
    free(t);
    mn__arena_release(&a);
  }
  fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_call_named_params),
      cmocka_unit_test(test_notification_no_reply),
      cmocka_unit_test(test_method_not_found),
      cmocka_unit_test(test_invalid_json),
      cmocka_unit_test(test_invalid_request_objects),
      cmocka_unit_test(test_empty_and_invalid_batches),
      cmocka_unit_test(test_mixed_batch),
      cmocka_unit_test(test_all_notification_batch),
      cmocka_unit_test(test_ids),
      cmocka_unit_test(test_positional_params),
      cmocka_unit_test(test_param_messages),
      cmocka_unit_test(test_depth_limit),
      cmocka_unit_test(test_utf8),
      cmocka_unit_test(test_binary_malformed),
      cmocka_unit_test(test_resource_error),
      cmocka_unit_test(test_timeout),
      cmocka_unit_test(test_internal_error),
      cmocka_unit_test(test_status_mapping),
      cmocka_unit_test(test_error_reply_helper),
      cmocka_unit_test(test_peek_id),
      cmocka_unit_test(test_metrics_recorded),
      cmocka_unit_test(test_health),
      cmocka_unit_test(test_cleanup),
      cmocka_unit_test(test_pca_persistence),
      cmocka_unit_test(test_seed_example),
      cmocka_unit_test(test_threads),
      cmocka_unit_test(test_documented_examples),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
