/*
 * test_mcp.c - the MCP layer: version negotiation for every supported
 * version and an unknown one, notifications/initialized, ping, tools/list
 * (every direct method, schemas that are JSON objects a validator takes),
 * tools/call success, isError for failures inside a tool, -32602 for an
 * unknown tool.
 */
#include "rpc_fixture.h"

static void test_initialize_versions(void **state) {
  fx *f = fx_new();
  const char *versions[] = {"2025-11-25", "2025-06-18", "2025-03-26",
                            "2024-11-05"};
  for (int i = 0; i < 4; i++) {
    char m[300];
    snprintf(m, sizeof m,
             "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"initialize\","
             "\"params\":{\"protocolVersion\":\"%s\",\"capabilities\":{},"
             "\"clientInfo\":{\"name\":\"t\",\"version\":\"1\"}}}",
             i, versions[i]);
    json_t *rep;
    json_t *res = fx_ok(f, m, &rep);
    assert_string_equal(
        json_string_value(json_object_get(res, "protocolVersion")),
        versions[i]);
    assert_string_equal(mn__session_protocol(f->s), versions[i]);
    char cname[64], cver[32];
    mn__session_client(f->s, cname, sizeof cname, cver, sizeof cver);
    assert_string_equal(cname, "t");
    assert_string_equal(cver, "1");
    json_t *si = json_object_get(res, "serverInfo");
    assert_string_equal(json_string_value(json_object_get(si, "name")),
                        "mnemo");
    assert_non_null(json_string_value(json_object_get(si, "version")));
    json_t *tools =
        json_object_get(json_object_get(res, "capabilities"), "tools");
    assert_true(json_is_object(tools));
    assert_true(json_is_false(json_object_get(tools, "listChanged")));
    assert_true(
        strlen(json_string_value(json_object_get(res, "instructions"))) > 40);
    json_decref(rep);
  }
  /* An unknown version gets the newest. */
  json_t *rep;
  json_t *res = fx_ok(f,
                      "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":"
                      "\"initialize\",\"params\":{\"protocolVersion\":"
                      "\"1999-01-01\",\"capabilities\":{}}}",
                      &rep);
  assert_string_equal(
      json_string_value(json_object_get(res, "protocolVersion")), "2025-11-25");
  json_decref(rep);
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"initialize\","
         "\"params\":{\"capabilities\":{}}}",
         MN_RPC_INVALID_PARAMS, "params.protocolVersion is required");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"initialize\","
         "\"params\":{\"protocolVersion\":20250618}}",
         MN_RPC_INVALID_PARAMS, "params.protocolVersion must be a string");
  fx_free(f);
}

static void test_initialized_and_ping(void **state) {
  fx *f = fx_new();
  assert_int_equal(mn__session_initialized(f->s), 0);
  assert_null(fx_call(f, "{\"jsonrpc\":\"2.0\",\"method\":"
                         "\"notifications/initialized\"}"));
  assert_int_equal(mn__session_initialized(f->s), 1);
  json_t *rep;
  json_t *res =
      fx_ok(f, "{\"jsonrpc\":\"2.0\",\"id\":\"p\",\"method\":\"ping\"}", &rep);
  assert_true(json_is_object(res));
  assert_int_equal(json_object_size(res), 0);
  json_decref(rep);
  /* Other notifications (cancellation, progress) are ignored quietly. */
  assert_null(fx_call(f, "{\"jsonrpc\":\"2.0\",\"method\":"
                         "\"notifications/cancelled\",\"params\":"
                         "{\"requestId\":1}}"));
  fx_free(f);
}

static void test_tools_list(void **state) {
  fx *f = fx_new();
  json_t *rep;
  json_t *res = fx_ok(f,
                      "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                      "\"tools/list\",\"params\":{}}",
                      &rep);
  json_t *tools = json_object_get(res, "tools");
  const char *want[] = {
      "processEmbeddings", "fitPCA",           "listPCAModels",
      "deletePCAModel",    "getMetrics",       "health",
      "cleanup",           "createCollection", "listCollections",
      "getCollection",     "addMemories",      "storeMemory",
      "getMemories",       "updateMemory",     "searchMemories",
      "deleteMemories",    "dropCollection",   "allocateMemory",
      "processChunk",      "readChunk",        "listChunks",
      "freeMemory"};
  const int nwant = (int)(sizeof want / sizeof want[0]);
  assert_int_equal(json_array_size(tools), nwant);
  for (size_t i = 0; i < json_array_size(tools); i++) {
    json_t *t = json_array_get(tools, i);
    const char *name = json_string_value(json_object_get(t, "name"));
    assert_non_null(name);
    int known = 0;
    for (int k = 0; k < nwant; k++)
      known |= strcmp(name, want[k]) == 0;
    if (!known)
      fail_msg("unexpected tool %s", name);
    assert_true(strlen(json_string_value(json_object_get(t, "description"))) >
                20);
    const char *keys[] = {"inputSchema", "outputSchema"};
    for (int k = 0; k < 2; k++) {
      json_t *sch = json_object_get(t, keys[k]);
      if (!json_is_object(sch))
        fail_msg("%s.%s is not an object", name, keys[k]);
      assert_string_equal(json_string_value(json_object_get(sch, "type")),
                          "object");
      /* Re-read through jansson's own dump: valid JSON all the way. */
      char *d = json_dumps(sch, 0);
      json_t *again = json_loads(d, 0, NULL);
      assert_non_null(again);
      assert_true(json_equal(again, sch));
      json_decref(again);
      free(d);
    }
  }
  /* The schema and the engine agree: processEmbeddings' options list. */
  json_t *pe = json_array_get(tools, 0);
  json_t *opts = json_object_get(
      json_object_get(json_object_get(pe, "inputSchema"), "properties"),
      "options");
  const char *names[] = {"normalize",
                         "dimension_reduction",
                         "reduce_dimensions",
                         "pca_model",
                         "whiten",
                         "quantization",
                         "quantization_bits",
                         "precision",
                         "batch_size",
                         "encoding"};
  for (int i = 0; i < 10; i++)
    assert_non_null(
        json_object_get(json_object_get(opts, "properties"), names[i]));
  json_decref(rep);
  fx_free(f);
}

static void test_tools_call(void **state) {
  fx *f = fx_new();
  json_t *rep;
  json_t *res = fx_ok(f,
                      "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                      "\"tools/call\",\"params\":{\"name\":"
                      "\"processEmbeddings\",\"arguments\":{\"embeddings\":"
                      "[[3,4],[1,0]],\"options\":{\"normalize\":true},"
                      "\"chatId\":\"c1\"}}}",
                      &rep);
  assert_true(json_is_false(json_object_get(res, "isError")));
  json_t *content = json_object_get(res, "content");
  assert_int_equal(json_array_size(content), 1);
  json_t *c0 = json_array_get(content, 0);
  assert_string_equal(json_string_value(json_object_get(c0, "type")), "text");
  json_t *from_text = jparse(json_string_value(json_object_get(c0, "text")));
  json_t *sc = json_object_get(res, "structuredContent");
  assert_true(json_equal(from_text, sc));
  double y[4] = {0};
  read_matrix(json_object_get(sc, "processed"), y, 2);
  assert_true(fabs(y[0] - 0.6) < 1e-7 && fabs(y[1] - 0.8) < 1e-7 && y[2] == 1 &&
              y[3] == 0);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(sc, "metadata"), "chatId")),
                      "c1");
  json_decref(from_text);
  json_decref(rep);
  /* A tool without arguments. */
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\","
              "\"params\":{\"name\":\"health\"}}",
              &rep);
  assert_true(json_is_false(json_object_get(res, "isError")));
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(res, "structuredContent"), "status")),
                      "ok");
  json_decref(rep);
  fx_free(f);
}

static void test_tools_call_errors(void **state) {
  fx *f = fx_new();
  json_t *rep;
  /* Failures inside the tool: isError with the message, paths named from
   * "arguments". */
  struct {
    const char *args;
    const char *needle;
  } c[] = {
      {"{\"embeddings\":[[1,2]],\"options\":{\"quantization\":12}}",
       "arguments.options.quantization must be one of"},
      {"{}", "arguments.embeddings is required"},
      {"{\"embeddings\":[[1,2],[3]]}",
       "arguments.embeddings[1] has 1 numbers but row 0 has 2"},
      {"{\"embeddings\":[[1,2]],\"options\":{\"pca_model\":\"none\"}}",
       "\"none\" does not exist"},
  };
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    char m[400];
    snprintf(m, sizeof m,
             "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\","
             "\"params\":{\"name\":\"processEmbeddings\",\"arguments\":%s}}",
             c[i].args);
    json_t *res = fx_ok(f, m, &rep);
    assert_true(json_is_true(json_object_get(res, "isError")));
    assert_null(json_object_get(res, "structuredContent"));
    const char *text = json_string_value(json_object_get(
        json_array_get(json_object_get(res, "content"), 0), "text"));
    if (!text || !strstr(text, c[i].needle))
      fail_msg("isError text '%s' lacks '%s'", text ? text : "(none)",
               c[i].needle);
    json_decref(rep);
  }
  /* Protocol errors: unknown tool, missing name, bad arguments type, and
   * a protocol method is not a tool. */
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\","
         "\"params\":{\"name\":\"nope\",\"arguments\":{}}}",
         MN_RPC_INVALID_PARAMS,
         "unknown tool \"nope\"; the tools are: "
         "processEmbeddings");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\","
         "\"params\":{\"name\":\"initialize\"}}",
         MN_RPC_INVALID_PARAMS, "unknown tool");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\","
         "\"params\":{\"arguments\":{}}}",
         MN_RPC_INVALID_PARAMS, "params.name is required");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\","
         "\"params\":{\"name\":\"health\",\"arguments\":[1]}}",
         MN_RPC_INVALID_PARAMS, "params.arguments must be an object");
  /* A timeout is the call's error, not the tool's. */
  const char *m = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\","
                  "\"params\":{\"name\":\"health\"}}";
  char *t = fx_call_n(f, m, strlen(m), 1);
  assert_non_null(strstr(t, "-32002"));
  free(t);
  fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_initialize_versions),
      cmocka_unit_test(test_initialized_and_ping),
      cmocka_unit_test(test_tools_list),
      cmocka_unit_test(test_tools_call),
      cmocka_unit_test(test_tools_call_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
