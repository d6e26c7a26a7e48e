/*
 * test_reply.c - how replies are built, with and without the headroom a
 * transport asks for (mn_rpc_session_set_headroom), and the copies the
 * engine leaves out on the way:
 *  - a reply with headroom has that many writable bytes in front of it,
 *    and is otherwise what a session without headroom gets (text, binary
 *    frames, a text request answered in binary, batches, errors);
 *  - a float32 tensor in a binary frame is read where it lies when it is
 *    aligned, copied when not; the request is never written to;
 *  - the first binary tensor of a reply becomes its payload without a
 *    copy, and a batch whose second reply adds another still gets both;
 *  - processEmbeddings leaves the NaN / Inf check of typed tensors to the
 *    pipeline, with the same error as before.
 * Values are checked against a double-precision normalisation computed
 * here. Run under ASan, every reply's block is freed through
 * mn_rpc_reply_free and every headroom byte is written.
 */
#include "rpc_fixture.h"

enum { HEAD = 16, R = 5, C = 12 };

/* A binary frame: u32 length, JSON, `skew` spaces, then the payload. */
static uint8_t *frame(const char *json, size_t skew, const void *payload,
                      size_t plen, size_t *len) {
  size_t n = strlen(json) + skew;
  uint8_t *b = malloc(4 + n + plen + 1);
  assert_non_null(b);
  b[0] = (uint8_t)n;
  b[1] = (uint8_t)(n >> 8);
  b[2] = b[3] = 0;
  memcpy(b + 4, json, strlen(json));
  memset(b + 4 + strlen(json), ' ', skew);
  memcpy(b + 4 + n, payload, plen);
  *len = 4 + n + plen;
  return b;
}

/* Call, check the headroom, and return the reply's JSON text (parsed)
 * and, for binary replies, a copy of the payload. */
static json_t *call(fx *f, mn_rpc_session *s, const void *msg, size_t len,
                    int binary, size_t head, int *binary_out, uint8_t **payload,
                    size_t *plen) {
  mn_rpc_reply rep;
  mn_rpc_handle(f->r, s, msg, len, binary, 0, &rep);
  assert_non_null(rep.data);
  assert_int_equal(rep.headroom, head);
  /* The headroom is ours to write (a transport puts its header there). */
  memset((char *)rep.data - rep.headroom, 0xA5, rep.headroom);
  const char *json = rep.data;
  size_t jlen = rep.len;
  *binary_out = rep.binary;
  if (payload)
    *payload = NULL;
  if (rep.binary) {
    const uint8_t *d = rep.data;
    uint32_t n = d[0] | d[1] << 8 | d[2] << 16 | (uint32_t)d[3] << 24;
    assert_true(4 + (size_t)n <= rep.len);
    assert_int_equal((4 + n) % 8, 0); /* the payload starts 8-aligned */
    json = (const char *)d + 4;
    jlen = n;
    if (payload) {
      *plen = rep.len - 4 - n;
      *payload = malloc(*plen + 1);
      memcpy(*payload, d + 4 + n, *plen);
    }
  }
  json_error_t e;
  json_t *j = json_loadb(json, jlen, 0, &e);
  if (!j)
    fail_msg("reply is not JSON: %s", e.text);
  mn_rpc_reply_free(&rep);
  assert_null(rep.data);
  return j;
}

/* Drop what differs from call to call (timings). */
static void scrub(json_t *j) {
  if (json_is_array(j)) {
    for (size_t i = 0; i < json_array_size(j); i++)
      scrub(json_array_get(j, i));
    return;
  }
  json_t *meta = json_object_get(json_object_get(j, "result"), "metadata");
  json_object_del(meta, "processing_time");
}

/* Rows of a binary payload (float32 at `off`) against the reference. */
static void check_rows(const float *x, const uint8_t *payload, size_t plen,
                       json_int_t off, json_int_t len) {
  assert_int_equal(len, (json_int_t)(R * C * sizeof(float)));
  assert_true(off >= 0 && (size_t)(off + len) <= plen);
  float y[R * C];
  memcpy(y, payload + off, sizeof y);
  double ref[R * C];
  ref_normalize(x, ref, R, C);
  for (int i = 0; i < R * C; i++)
    if (fabs(y[i] - ref[i]) > 1e-6)
      fail_msg("element %d is %.9g, reference %.9g", i, (double)y[i], ref[i]);
}

static json_t *buffer_of(json_t *reply) {
  return json_object_get(
      json_object_get(json_object_get(reply, "result"), "processed"), "buffer");
}

/* The same message through a session with headroom and one without. */
static void both(fx *f, mn_rpc_session *with, const void *msg, size_t len,
                 int binary, const float *x, int want_binary) {
  int b1, b2;
  uint8_t *p1, *p2;
  size_t l1 = 0, l2 = 0;
  json_t *j1 = call(f, with, msg, len, binary, HEAD, &b1, &p1, &l1);
  json_t *j2 = call(f, f->s, msg, len, binary, 0, &b2, &p2, &l2);
  assert_int_equal(b1, want_binary);
  assert_int_equal(b2, want_binary);
  scrub(j1);
  scrub(j2);
  if (!json_equal(j1, j2)) {
    char *a = json_dumps(j1, 0), *b = json_dumps(j2, 0);
    fail_msg("with headroom %s\nwithout %s", a, b);
  }
  if (want_binary) {
    assert_int_equal(l1, l2);
    assert_memory_equal(p1, p2, l1);
    if (x && json_is_object(j1)) {
      json_t *buf = buffer_of(j1);
      check_rows(x, p1, l1, json_integer_value(json_object_get(buf, "offset")),
                 json_integer_value(json_object_get(buf, "length")));
    }
  }
  free(p1);
  free(p2);
  json_decref(j1);
  json_decref(j2);
}

static void test_headroom_everywhere(void **state) {
  fx *f = fx_new();
  mn_rpc_session *s = mn_rpc_session_new(f->r, "headroom");
  assert_non_null(s);
  mn_rpc_session_set_headroom(s, HEAD);
  float *x = rand_matrix(R, C);
  /* Text in, text out. */
  sbuf t = {0};
  sb_add(&t, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"processEmbeddings\","
             "\"params\":{\"embeddings\":");
  sb_matrix(&t, x, R, C);
  sb_add(&t, ",\"options\":{\"normalize\":true}}}");
  both(f, s, t.p, t.len, 0, x, 0);
  /* Text in, binary out: the frame header is added after the fact. */
  sbuf tb = {0};
  sb_add(&tb, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"processEmbeddings\","
              "\"params\":{\"embeddings\":");
  sb_matrix(&tb, x, R, C);
  sb_add(&tb, ",\"options\":{\"normalize\":true,\"encoding\":\"binary\"}}}");
  both(f, s, tb.p, tb.len, 0, x, 1);
  /* Binary in and out, the payload aligned and not. */
  char js[300];
  snprintf(js, sizeof js,
           "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"processEmbeddings\","
           "\"params\":{\"embeddings\":{\"dtype\":\"float32\",\"shape\":"
           "[%d,%d],\"buffer\":{\"offset\":0,\"length\":%d}},\"options\":"
           "{\"normalize\":true}}}",
           R, C, (int)(R * C * sizeof(float)));
  for (size_t skew = 0; skew < 8; skew++) {
    size_t len;
    uint8_t *msg = frame(js, skew, x, R * C * sizeof(float), &len);
    uint8_t *copy = malloc(len);
    memcpy(copy, msg, len);
    both(f, s, msg, len, 1, x, 1);
    /* The tensor was read in place (or copied), never written. */
    assert_memory_equal(msg, copy, len);
    free(copy);
    free(msg);
  }
  /* A batch of two, each with a binary result: the second is appended
   * after the first (which the reply adopted). */
  sbuf bt = {0};
  sb_add(&bt, "[");
  for (int k = 0; k < 2; k++)
    sb_add(&bt,
           "%s{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":"
           "\"processEmbeddings\",\"params\":{\"embeddings\":{\"dtype\":"
           "\"float32\",\"shape\":[%d,%d],\"buffer\":{\"offset\":0,"
           "\"length\":%d}},\"options\":{\"normalize\":true}}}",
           k ? "," : "", 10 + k, R, C, (int)(R * C * sizeof(float)));
  sb_add(&bt, "]");
  {
    size_t len;
    uint8_t *msg = frame(bt.p, 0, x, R * C * sizeof(float), &len);
    both(f, s, msg, len, 1, NULL, 1);
    int b;
    uint8_t *p;
    size_t pl;
    json_t *j = call(f, s, msg, len, 1, HEAD, &b, &p, &pl);
    assert_int_equal(json_array_size(j), 2);
    json_int_t off[2];
    for (size_t k = 0; k < 2; k++) {
      json_t *buf = buffer_of(json_array_get(j, k));
      off[k] = json_integer_value(json_object_get(buf, "offset"));
      check_rows(x, p, pl, off[k],
                 json_integer_value(json_object_get(buf, "length")));
    }
    assert_true(off[0] != off[1]);
    free(p);
    json_decref(j);
    free(msg);
  }
  /* Errors and other methods have the headroom too. */
  const char *texts[] = {
      "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"health\"}",
      "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"nope\"}", "{not json",
      "[{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"ping\"},{\"jsonrpc\":"
      "\"2.0\",\"id\":7,\"method\":\"ping\"}]"};
  for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
    int b;
    json_t *j = call(f, s, texts[k], strlen(texts[k]), 0, HEAD, &b, NULL, NULL);
    assert_int_equal(b, 0);
    json_decref(j);
  }
  /* A notification still gets nothing. */
  mn_rpc_reply rep;
  const char *note = "{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}";
  mn_rpc_handle(f->r, s, note, strlen(note), 0, 0, &rep);
  assert_null(rep.data);
  assert_int_equal(rep.headroom, 0);
  /* The headroom is capped. */
  mn_rpc_session_set_headroom(s, 1u << 20);
  mn_rpc_handle(f->r, s, texts[0], strlen(texts[0]), 0, 0, &rep);
  assert_int_equal(rep.headroom, 4096);
  mn_rpc_reply_free(&rep);
  free(t.p);
  free(tb.p);
  free(bt.p);
  free(x);
  mn_rpc_session_free(s);
  fx_free(f);
}

/* processEmbeddings leaves the NaN / Inf check of a typed tensor to the
 * pipeline (one pass over the values fewer); the error must read as the
 * codec's own, which fitPCA still makes, path and all. */
static void test_nonfinite_binary(void **state) {
  fx *f = fx_new();
  float x[3 * 4];
  for (int i = 0; i < 12; i++)
    x[i] = (float)(i + 1);
  x[1 * 4 + 2] = NAN;
  const char *methods[] = {"processEmbeddings", "fitPCA"};
  for (int k = 0; k < 2; k++) {
    char js[400];
    snprintf(js, sizeof js,
             "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"%s\",\"params\":"
             "{%s\"embeddings\":{\"dtype\":\"float32\",\"shape\":[3,4],"
             "\"buffer\":{\"offset\":0,\"length\":48}}%s}}",
             methods[k], k ? "\"name\":\"m\",\"n_components\":2," : "",
             k ? "" : ",\"options\":{\"normalize\":true}");
    size_t len;
    uint8_t *msg = frame(js, (8 - (4 + strlen(js)) % 8) % 8, x, sizeof x, &len);
    int b;
    json_t *j = call(f, f->s, msg, len, 1, 0, &b, NULL, NULL);
    json_t *e = json_object_get(j, "error");
    assert_int_equal(json_integer_value(json_object_get(e, "code")),
                     MN_RPC_INVALID_PARAMS);
    assert_string_equal(json_string_value(json_object_get(e, "message")),
                        "params.embeddings: row 1, column 2 is NaN: "
                        "embeddings must be finite numbers");
    json_decref(j);
    free(msg);
  }
  fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_headroom_everywhere),
      cmocka_unit_test(test_nonfinite_binary),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
