/*
 * test_rpc_store.c - the memory store's JSON-RPC methods through
 * mn_rpc_handle on a real CPU backend and a real store on disk: the
 * collection and memory life cycle, search and ranking against a
 * double-precision reference computed here, every tensor encoding for
 * embeddings, errors (codes and messages) that leave the store unchanged,
 * the working-chunk API with its -32000 data, TTL cleanup, a restart, and
 * the store in health and getMetrics.
 */
#include "rpc_fixture.h"

static const char *S(sbuf *b) {
  return b->p;
}

static void sb_reset(sbuf *b) {
  b->len = 0;
  if (b->p)
    b->p[0] = '\0';
}

/* Count of a collection through getCollection. */
static int64_t coll_count(fx *f, const char *name) {
  char msg[256];
  snprintf(msg, sizeof msg,
           "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"getCollection\","
           "\"params\":{\"name\":\"%s\"}}",
           name);
  json_t *rep, *res = fx_ok(f, msg, &rep);
  int64_t n = json_integer_value(json_object_get(res, "count"));
  json_decref(rep);
  return n;
}

static void test_collections(void **state) {
  fx *f = fx_new();
  json_t *rep, *res;
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"createCollection\","
              "\"params\":{\"name\":\"a\",\"dim\":8,\"metric\":\"l2\","
              "\"dtype\":\"int8\",\"normalize\":true}}",
              &rep);
  assert_string_equal(json_string_value(json_object_get(res, "metric")), "l2");
  assert_string_equal(json_string_value(json_object_get(res, "dtype")), "int8");
  assert_int_equal(json_integer_value(json_object_get(res, "row_bytes")), 8);
  assert_true(json_is_true(json_object_get(res, "normalize")));
  assert_true(json_is_null(json_object_get(res, "pca_model")));
  json_decref(rep);
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"createCollection\","
         "\"params\":{\"name\":\"a\",\"dim\":8}}",
         MN_RPC_INVALID_PARAMS, "already exists");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"createCollection\","
         "\"params\":{\"name\":\"b c\",\"dim\":8}}",
         MN_RPC_INVALID_PARAMS, "character");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"createCollection\","
         "\"params\":{\"name\":\"b\",\"dim\":0}}",
         MN_RPC_INVALID_PARAMS, "dim");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"createCollection\","
         "\"params\":{\"name\":\"b\",\"dim\":8,\"dtype\":\"int4\"}}",
         MN_RPC_INVALID_PARAMS, "dtype");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"createCollection\","
         "\"params\":{\"name\":\"b\",\"dim\":8,\"pca_model\":\"nope\"}}",
         MN_RPC_INVALID_PARAMS, "fitPCA");
  /* A collection on a fitted PCA model: width is the model's. */
  sbuf b = {0};
  float *x = rand_matrix(20, 8);
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"fitPCA\",\"params\":"
             "{\"name\":\"p3\",\"n_components\":3,\"embeddings\":");
  sb_matrix(&b, x, 20, 8);
  sb_add(&b, "}}");
  res = fx_ok(f, S(&b), &rep);
  json_decref(rep);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"createCollection\","
              "\"params\":{\"name\":\"pc\",\"dim\":8,\"pca_model\":\"p3\"}}",
              &rep);
  assert_int_equal(json_integer_value(json_object_get(res, "width")), 3);
  assert_string_equal(json_string_value(json_object_get(res, "pca_model")),
                      "p3");
  json_decref(rep);
  res = fx_ok(
      f, "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"listCollections\"}", &rep);
  assert_int_equal(json_integer_value(json_object_get(res, "count")), 2);
  json_t *cs = json_object_get(res, "collections");
  assert_string_equal(
      json_string_value(json_object_get(json_array_get(cs, 0), "name")), "a");
  assert_string_equal(
      json_string_value(json_object_get(json_array_get(cs, 1), "name")), "pc");
  json_decref(rep);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"dropCollection\","
              "\"params\":{\"name\":\"a\"}}",
              &rep);
  assert_true(json_is_true(json_object_get(res, "dropped")));
  json_decref(rep);
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":\"getCollection\","
         "\"params\":{\"name\":\"a\"}}",
         MN_RPC_INVALID_PARAMS, "does not exist");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":12,\"method\":\"dropCollection\","
         "\"params\":{\"name\":\"a\"}}",
         MN_RPC_INVALID_PARAMS, "does not exist");
  free(x);
  free(b.p);
  fx_free(f);
}

/* ------------------------------------------------------------------------
 * Memories and search against a reference.
 * ---------------------------------------------------------------------- */
#define N 300
#define D 16
#define T0 1.8e9

typedef struct ref {
  float v[N][D];
  double ts[N];
  double sig[N];
  int chat[N];
  int deleted[N];
} ref;

static void add_all(fx *f, ref *r) {
  sbuf b = {0};
  for (int base = 0; base < N; base += 100) {
    sb_reset(&b);
    sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"addMemories\","
               "\"params\":{\"collection\":\"mem\",\"memories\":[");
    for (int i = base; i < base + 100; i++) {
      for (int d = 0; d < D; d++)
        r->v[i][d] = frand();
      r->ts[i] = T0 - (double)(i * 997 % 5000);
      r->sig[i] = (double)(i * 37 % 100) / 100.0;
      r->chat[i] = i % 3;
      sb_add(&b, "%s{\"id\":\"r%d\",\"embedding\":", i > base ? "," : "", i);
      sb_matrix(&b, r->v[i], 1, D);
      /* sb_matrix writes [[...]]: one row, which is one vector */
      sb_add(&b,
             ",\"content\":\"row %d\",\"metadata\":{\"k\":%d,\"s\":\"%s\"}"
             ",\"timestamp\":%.3f,\"significance\":%.2f,\"chatId\":"
             "\"c%d\"}",
             i, i % 5, i % 2 ? "odd" : "even", r->ts[i], r->sig[i], r->chat[i]);
    }
    sb_add(&b, "]}}");
    json_t *rep, *res = fx_ok(f, S(&b), &rep);
    assert_int_equal(json_integer_value(json_object_get(res, "count")), 100);
    char want[16];
    snprintf(want, sizeof want, "r%d", base);
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(res, "ids"), 0)),
        want);
    json_decref(rep);
  }
  free(b.p);
}

typedef struct rh {
  double score;
  int i;
} rh;

static int cmp_rh(const void *a, const void *b) {
  const rh *x = a, *y = b;
  if (x->score != y->score)
    return x->score < y->score ? 1 : -1;
  return x->i - y->i;
}

static double ref_cos(const float *a, const float *b) {
  double ab = 0, aa = 0, bb = 0;
  for (int d = 0; d < D; d++) {
    ab += (double)a[d] * b[d];
    aa += (double)a[d] * a[d];
    bb += (double)b[d] * b[d];
  }
  return ab / sqrt(aa * bb);
}

/* searchMemories with the given extra params against the reference. */
static void check_search(fx *f, const ref *r, const float *q, int k, double w,
                         double rate, int chat, int meta_k) {
  sbuf b = {0};
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"searchMemories\","
             "\"params\":{\"collection\":\"mem\",\"query\":");
  sb_matrix(&b, q, 1, D);
  sb_add(&b,
         ",\"k\":%d,\"significance_weight\":%g,\"time_decay\":%g,"
         "\"now\":%.3f,\"include\":[\"content\",\"metadata\"]",
         k, w, rate, T0);
  if (chat >= 0 || meta_k >= 0) {
    sb_add(&b, ",\"filter\":{");
    if (chat >= 0)
      sb_add(&b, "\"chatId\":\"c%d\"%s", chat, meta_k >= 0 ? "," : "");
    if (meta_k >= 0)
      sb_add(&b, "\"metadata\":{\"k\":%d}", meta_k);
    sb_add(&b, "}");
  }
  sb_add(&b, "}}");
  json_t *rep, *res = fx_ok(f, S(&b), &rep);
  json_t *lists = json_object_get(res, "results");
  assert_int_equal(json_array_size(lists), 1);
  json_t *hits = json_array_get(lists, 0);
  rh all[N];
  int ne = 0;
  for (int i = 0; i < N; i++) {
    if (r->deleted[i] || (chat >= 0 && r->chat[i] != chat) ||
        (meta_k >= 0 && i % 5 != meta_k))
      continue;
    double sim = ref_cos(q, r->v[i]);
    double decay = exp(-rate * fmax(0, T0 - r->ts[i]));
    all[ne++] = (rh){sim * pow(r->sig[i], w) * decay, i};
  }
  qsort(all, (size_t)ne, sizeof *all, cmp_rh);
  int want = ne < k ? ne : k;
  assert_int_equal(json_array_size(hits), want);
  for (int j = 0; j < want; j++) {
    json_t *h = json_array_get(hits, j);
    const char *id = json_string_value(json_object_get(h, "id"));
    int i = atoi(id + 1);
    double sim = ref_cos(q, r->v[i]);
    double decay = exp(-rate * fmax(0, T0 - r->ts[i]));
    double sc = sim * pow(r->sig[i], w) * decay;
    double tol = 1e-5 * (1 + fabs(sc));
    assert_true(fabs(json_number_value(json_object_get(h, "score")) - sc) <=
                tol);
    assert_true(fabs(json_number_value(json_object_get(h, "similarity")) -
                     sim) <= 1e-5);
    assert_true(fabs(json_number_value(json_object_get(h, "decay")) - decay) <=
                1e-9);
    assert_true(sc >= all[j].score - tol); /* nothing better missed */
    char content[32];
    snprintf(content, sizeof content, "row %d", i);
    assert_string_equal(json_string_value(json_object_get(h, "content")),
                        content);
    json_t *md = json_object_get(h, "metadata");
    assert_int_equal(json_integer_value(json_object_get(md, "k")), i % 5);
    char chatn[8];
    snprintf(chatn, sizeof chatn, "c%d", r->chat[i]);
    assert_string_equal(json_string_value(json_object_get(h, "chatId")), chatn);
  }
  json_decref(rep);
  free(b.p);
}

static void test_memories_and_search(void **state) {
  fx *f = fx_new();
  json_t *rep, *res;
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"createCollection\","
              "\"params\":{\"name\":\"mem\",\"dim\":16}}",
              &rep);
  json_decref(rep);
  static ref r;
  memset(&r, 0, sizeof r);
  add_all(f, &r);
  assert_int_equal(coll_count(f, "mem"), N);
  float q[D];
  for (int d = 0; d < D; d++)
    q[d] = frand();
  check_search(f, &r, q, 10, 0, 0, -1, -1); /* fast path */
  check_search(f, &r, q, 25, 0.7, 2e-4, -1, -1);
  check_search(f, &r, q, 10, 1.0, 0, 1, -1); /* chat filter */
  check_search(f, &r, q, 10, 0, 1e-4, 2, 3); /* chat + metadata */
  /* Delete, then the same searches see the rest. */
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"deleteMemories\","
              "\"params\":{\"collection\":\"mem\",\"ids\":[\"r5\",\"r6\","
              "\"zz\"]}}",
              &rep);
  assert_int_equal(json_integer_value(json_object_get(res, "deleted")), 2);
  assert_string_equal(
      json_string_value(json_array_get(json_object_get(res, "missing"), 0)),
      "zz");
  json_decref(rep);
  r.deleted[5] = r.deleted[6] = 1;
  check_search(f, &r, q, 40, 0.5, 1e-4, -1, -1);
  /* getMemories with the embedding; updateMemory. */
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"getMemories\","
              "\"params\":{\"collection\":\"mem\",\"ids\":[\"r7\",\"r5\"],"
              "\"include\":[\"embedding\"]}}",
              &rep);
  json_t *m0 = json_array_get(json_object_get(res, "memories"), 0);
  assert_string_equal(json_string_value(json_object_get(m0, "id")), "r7");
  assert_null(json_object_get(m0, "content"));
  double e[D];
  assert_int_equal(read_matrix(json_object_get(m0, "embedding"), e, D), 1);
  for (int d = 0; d < D; d++) /* the shortest text that reads back */
    assert_true((float)e[d] == r.v[7][d]);
  assert_string_equal(
      json_string_value(json_array_get(json_object_get(res, "missing"), 0)),
      "r5");
  json_decref(rep);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"updateMemory\","
              "\"params\":{\"collection\":\"mem\",\"id\":\"r7\","
              "\"content\":\"new\",\"metadata\":{\"k\":99},"
              "\"significance\":0.5}}",
              &rep);
  assert_string_equal(json_string_value(json_object_get(res, "content")),
                      "new");
  assert_int_equal(json_integer_value(
                       json_object_get(json_object_get(res, "metadata"), "k")),
                   99);
  assert_true(json_number_value(json_object_get(res, "significance")) == 0.5);
  json_decref(rep);
  r.sig[7] = 0.5;
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"updateMemory\","
         "\"params\":{\"collection\":\"mem\",\"id\":\"r5\",\"content\":\"x\"}}",
         MN_RPC_INVALID_PARAMS, "r5");
  /* Several queries in one call: one list each. */
  float q2[2 * D];
  for (int d = 0; d < 2 * D; d++)
    q2[d] = frand();
  sbuf b = {0};
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"searchMemories\","
             "\"params\":{\"collection\":\"mem\",\"k\":3,\"query\":");
  sb_matrix(&b, q2, 2, D);
  sb_add(&b, "}}");
  res = fx_ok(f, S(&b), &rep);
  assert_int_equal(json_array_size(json_object_get(res, "results")), 2);
  json_decref(rep);
  /* fitPCA on the collection equals fitPCA on the same vectors sent. */
  sb_reset(&b);
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"fitPCA\","
             "\"params\":{\"name\":\"sent\",\"n_components\":4,"
             "\"embeddings\":[");
  int first = 1;
  for (int i = 0; i < N; i++) {
    if (r.deleted[i])
      continue;
    sb_add(&b, first ? "[" : ",[");
    first = 0;
    for (int d = 0; d < D; d++)
      sb_add(&b, d ? ",%.9g" : "%.9g", (double)r.v[i][d]);
    sb_add(&b, "]");
  }
  sb_add(&b, "]}}");
  json_t *rs, *sent = fx_ok(f, S(&b), &rs);
  json_t *rc2, *fromc = fx_ok(f,
                              "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":"
                              "\"fitPCA\",\"params\":{\"name\":\"coll\","
                              "\"n_components\":4,\"collection\":\"mem\"}}",
                              &rc2);
  assert_int_equal(json_integer_value(json_object_get(fromc, "n_samples")),
                   N - 2);
  for (int j = 0; j < 4; j++) {
    double a = json_number_value(
        json_array_get(json_object_get(sent, "explained_variance_ratio"), j));
    double bb = json_number_value(
        json_array_get(json_object_get(fromc, "explained_variance_ratio"), j));
    assert_true(fabs(a - bb) < 1e-5);
  }
  json_decref(rs);
  json_decref(rc2);
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"fitPCA\","
         "\"params\":{\"name\":\"x\",\"n_components\":2,"
         "\"collection\":\"nope\"}}",
         MN_RPC_INVALID_PARAMS, "does not exist");
  /* A restart keeps every memory and field. */
  fx_close_engine(f);
  fx_open_engine(f);
  assert_int_equal(coll_count(f, "mem"), N - 2);
  check_search(f, &r, q, 20, 0.5, 1e-4, 0, -1);
  free(b.p);
  fx_free(f);
}

/* Embeddings in every encoding: per memory (JSON, Float32Array object,
 * base64) and as one batch tensor. */
static void test_encodings(void **state) {
  fx *f = fx_new();
  json_t *rep, *res;
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"createCollection\","
              "\"params\":{\"name\":\"e\",\"dim\":2,\"metric\":\"ip\"}}",
              &rep);
  json_decref(rep);
  /* [1.5, -2] as base64 little-endian float32: 0000c03f 000000c0 */
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"addMemories\","
              "\"params\":{\"collection\":\"e\",\"memories\":["
              "{\"id\":\"j\",\"embedding\":[1,2]},"
              "{\"id\":\"o\",\"embedding\":{\"0\":3,\"1\":4}},"
              "{\"id\":\"b\",\"embedding\":{\"dtype\":\"float32\","
              "\"shape\":[2],\"data\":\"AADAPwAAAMA=\"}}]}}",
              &rep);
  assert_int_equal(json_integer_value(json_object_get(res, "count")), 3);
  json_decref(rep);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"addMemories\","
              "\"params\":{\"collection\":\"e\",\"embeddings\":[[5,6],[7,8]],"
              "\"memories\":[{\"id\":\"t1\"},{\"content\":\"auto id\"}]}}",
              &rep);
  json_t *ids = json_object_get(res, "ids");
  assert_string_equal(json_string_value(json_array_get(ids, 0)), "t1");
  assert_int_equal(strncmp(json_string_value(json_array_get(ids, 1)), "m_", 2),
                   0);
  json_decref(rep);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"storeMemory\","
              "\"params\":{\"collection\":\"e\",\"id\":\"s\","
              "\"embedding\":[0.5,0.25],\"content\":\"one\"}}",
              &rep);
  assert_string_equal(json_string_value(json_object_get(res, "id")), "s");
  json_decref(rep);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"getMemories\","
              "\"params\":{\"collection\":\"e\",\"ids\":[\"j\",\"o\",\"b\","
              "\"t1\",\"s\"],\"include\":[\"embedding\"]}}",
              &rep);
  json_t *ms = json_object_get(res, "memories");
  const double want[5][2] = {{1, 2}, {3, 4}, {1.5, -2}, {5, 6}, {0.5, 0.25}};
  for (int i = 0; i < 5; i++) {
    double e[2];
    read_matrix(json_object_get(json_array_get(ms, (size_t)i), "embedding"), e,
                2);
    assert_true(e[0] == want[i][0] && e[1] == want[i][1]);
  }
  json_decref(rep);
  fx_free(f);
}

/* Bad input: a clear error, and the collection unchanged. */
static void test_errors(void **state) {
  fx *f = fx_new();
  json_t *rep;
  fx_ok(f,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"createCollection\","
        "\"params\":{\"name\":\"c\",\"dim\":3}}",
        &rep);
  json_decref(rep);
  fx_ok(f,
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"addMemories\","
        "\"params\":{\"collection\":\"c\",\"memories\":["
        "{\"id\":\"x\",\"embedding\":[1,2,3]}]}}",
        &rep);
  json_decref(rep);
  const char *A = "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"addMemories\","
                  "\"params\":{\"collection\":";
  char msg[512];
  snprintf(msg, sizeof msg,
           "%s\"c\",\"memories\":[{\"embedding\":[1,2,3]},"
           "{\"embedding\":[1,2]}]}}",
           A);
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "memories[1].embedding has 2 values");
  snprintf(msg, sizeof msg,
           "%s\"nope\",\"memories\":[{\"embedding\":[1,2,3]}]}}", A);
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "'nope' does not exist");
  snprintf(msg, sizeof msg,
           "%s\"c\",\"memories\":[{\"id\":\"y\",\"embedding\":[1,2,3]},"
           "{\"id\":\"y\",\"embedding\":[1,2,3]}]}}",
           A);
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "'y' appears twice");
  snprintf(msg, sizeof msg,
           "%s\"c\",\"memories\":[{\"id\":\"x\",\"embedding\":[1,2,3]}]}}", A);
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "'x'");
  snprintf(msg, sizeof msg,
           "%s\"c\",\"memories\":[{\"embedding\":[1,2,3],"
           "\"significance\":2}]}}",
           A);
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "significance");
  snprintf(msg, sizeof msg,
           "%s\"c\",\"embeddings\":{\"dtype\":\"float32\",\"shape\":[1,3],"
           "\"data\":\"AADAfwAAAAAAAAAA\"}}}",
           A); /* NaN, 0, 0 */
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "NaN");
  const char *Q = "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"searchMemories\","
                  "\"params\":{\"collection\":\"c\",";
  snprintf(msg, sizeof msg, "%s\"query\":[1,2,3],\"k\":0}}", Q);
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "k");
  snprintf(msg, sizeof msg, "%s\"query\":[1,2,3],\"k\":1000000000}}", Q);
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "k");
  snprintf(msg, sizeof msg, "%s\"query\":[1,2]}}", Q);
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "wide");
  snprintf(msg, sizeof msg,
           "%s\"query\":[1,2,3],\"filter\":{\"metadata\":{\"a\":[1]}}}}", Q);
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "only strings, numbers");
  snprintf(msg, sizeof msg,
           "%s\"query\":[1,2,3],\"filter\":{\"since\":5,\"until\":1}}}", Q);
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "since");
  fx_err(f,
         "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"deleteMemories\","
         "\"params\":{\"collection\":\"c\",\"ids\":[\"x\",\"x\"]}}",
         MN_RPC_INVALID_PARAMS, "twice");
  assert_int_equal(coll_count(f, "c"), 1);
  fx_free(f);
}

/* ------------------------------------------------------------------------
 * Working chunks.
 * ---------------------------------------------------------------------- */
static void small_cache(mn_config *c) {
  c->cache_size = 1 << 20;
  c->chunk_ttl_s = 1;
}

static int64_t chunk_count(fx *f) {
  json_t *rep, *res = fx_ok(f,
                            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                            "\"listChunks\"}",
                            &rep);
  int64_t n = json_integer_value(json_object_get(res, "count"));
  json_decref(rep);
  return n;
}

/* A NUL inside a string (valid JSON: "\u0000") once cut names short: "a\u0000z"
 * deleted memory "a", dropCollection "c\u0000z" dropped "c", and content was
 * stored up to the NUL. Every string parameter now refuses it, naming the
 * parameter, and nothing changes. */
static void test_nul_in_strings(void **state) {
  fx *f = fx_new();
  json_t *rep;
  fx_ok(f,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"createCollection\","
        "\"params\":{\"name\":\"c\",\"dim\":2}}",
        &rep);
  json_decref(rep);
  fx_ok(f,
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"addMemories\","
        "\"params\":{\"collection\":\"c\",\"memories\":[{\"id\":\"a\","
        "\"embedding\":[1,0],\"content\":\"alpha\",\"chatId\":\"q\"}]}}",
        &rep);
  json_decref(rep);
  static const struct {
    const char *msg, *needle;
  } bad[] = {
      {"\"deleteMemories\",\"params\":{\"collection\":\"c\",\"ids\":"
       "[\"a\\u0000z\"]}",
       "params.ids[0] must not contain the NUL character (\\u0000); got "
       "\"a\\u0000z\""},
      {"\"dropCollection\",\"params\":{\"name\":\"c\\u0000z\"}",
       "params.name must not contain the NUL"},
      {"\"createCollection\",\"params\":{\"name\":\"d\\u0000\",\"dim\":2}",
       "params.name must not contain the NUL"},
      {"\"addMemories\",\"params\":{\"collection\":\"c\",\"memories\":[{"
       "\"id\":\"b\",\"embedding\":[0,1],\"content\":\"x\\u0000y\"}]}",
       "params.memories[0].content must not contain the NUL"},
      {"\"addMemories\",\"params\":{\"collection\":\"c\",\"memories\":[{"
       "\"id\":\"b\",\"embedding\":[0,1],\"metadata\":{\"k\":\"v\\u0000\"}}]}",
       "must not contain the NUL character (\\u0000) in its keys or values"},
      {"\"updateMemory\",\"params\":{\"collection\":\"c\",\"id\":\"a\\u0000\","
       "\"content\":\"changed\"}",
       "params.id must not contain the NUL"},
      {"\"searchMemories\",\"params\":{\"collection\":\"c\",\"query\":[1,0],"
       "\"filter\":{\"chatId\":\"q\\u0000\"}}",
       "must not contain the NUL"},
      {"\"processEmbeddings\",\"params\":{\"embeddings\":[[1,2]],"
       "\"chatId\":\"q\\u0000\"}",
       "params.chatId must not contain the NUL"},
      {"\"fitPCA\",\"params\":{\"name\":\"m\\u0000\",\"embeddings\":[[1,2],"
       "[3,4],[5,7]],\"n_components\":1}",
       "params.name must not contain the NUL"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char msg[512];
    snprintf(msg, sizeof msg, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":%s}",
             bad[i].msg);
    fx_err(f, msg, MN_RPC_INVALID_PARAMS, bad[i].needle);
  }
  /* nothing changed: one collection, memory a as it was */
  json_t *res = fx_ok(f,
                      "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":"
                      "\"listCollections\"}",
                      &rep);
  assert_int_equal(json_integer_value(json_object_get(res, "count")), 1);
  json_decref(rep);
  assert_int_equal(coll_count(f, "c"), 1);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"getMemories\","
              "\"params\":{\"collection\":\"c\",\"ids\":[\"a\"]}}",
              &rep);
  json_t *m = json_array_get(json_object_get(res, "memories"), 0);
  assert_string_equal(json_string_value(json_object_get(m, "content")),
                      "alpha");
  json_decref(rep);
  fx_free(f);
}

static void test_chunks(void **state) {
  fx *f = fx_new_with(small_cache);
  json_t *rep, *res;
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"allocateMemory\","
              "\"params\":{\"size\":64,\"chatId\":\"u1\"}}",
              &rep);
  char id[40];
  snprintf(id, sizeof id, "%s",
           json_string_value(json_object_get(res, "chunkId")));
  assert_int_equal(strncmp(id, "chunk_", 6), 0);
  assert_int_equal(json_integer_value(json_object_get(res, "size")), 64);
  json_decref(rep);
  char msg[512];
  snprintf(msg, sizeof msg,
           "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"processChunk\","
           "\"params\":{\"chunkId\":\"%s\",\"embeddings\":[[1,2,3,4],"
           "[5,6,7,8]]}}",
           id);
  res = fx_ok(f, msg, &rep);
  assert_int_equal(json_integer_value(json_object_get(res, "used")), 32);
  json_decref(rep);
  /* 3 more rows (48 bytes) do not fit in the 32 left: -32000 + data. */
  snprintf(msg, sizeof msg,
           "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"processChunk\","
           "\"params\":{\"chunkId\":\"%s\",\"embeddings\":[[1,2,3,4],"
           "[5,6,7,8],[9,9,9,9]]}}",
           id);
  rep = fx_rpc(f, msg);
  json_t *e = json_object_get(rep, "error");
  assert_int_equal(json_integer_value(json_object_get(e, "code")),
                   MN_RPC_RESOURCE_ERROR);
  json_t *d = json_object_get(e, "data");
  assert_int_equal(json_integer_value(json_object_get(d, "requested")), 48);
  assert_int_equal(json_integer_value(json_object_get(d, "available")), 32);
  json_decref(rep);
  snprintf(msg, sizeof msg,
           "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"readChunk\","
           "\"params\":{\"chunkId\":\"%s\",\"encoding\":\"base64\"}}",
           id);
  res = fx_ok(f, msg, &rep);
  json_t *t = json_object_get(res, "embeddings");
  assert_string_equal(json_string_value(json_object_get(t, "dtype")),
                      "float32");
  assert_int_equal(
      json_integer_value(json_array_get(json_object_get(t, "shape"), 0)), 2);
  assert_int_equal(json_integer_value(json_object_get(res, "rows")), 2);
  json_decref(rep);
  /* Bigger than processing.cache_size: refused with the figures. */
  rep = fx_rpc(f, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":"
                  "\"allocateMemory\",\"params\":{\"size\":2000000}}");
  e = json_object_get(rep, "error");
  assert_int_equal(json_integer_value(json_object_get(e, "code")),
                   MN_RPC_RESOURCE_ERROR);
  d = json_object_get(e, "data");
  assert_int_equal(json_integer_value(json_object_get(d, "requested")),
                   2000000);
  assert_true(json_integer_value(json_object_get(d, "available")) < 1 << 20);
  json_decref(rep);
  /* listChunks in the seed's shape; per chat. */
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"listChunks\","
              "\"params\":{\"chatId\":\"u1\"}}",
              &rep);
  json_t *c0 = json_array_get(json_object_get(res, "chunks"), 0);
  assert_string_equal(json_string_value(json_object_get(c0, "id")), id);
  json_t *md = json_object_get(c0, "metadata");
  assert_string_equal(json_string_value(json_object_get(md, "chatId")), "u1");
  assert_int_equal(json_integer_value(json_object_get(md, "rows")), 2);
  assert_true(json_is_number(json_object_get(c0, "lastAccessed")));
  json_decref(rep);
  /* A chunk in use survives cleanup. */
  res = fx_ok(f, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"cleanup\"}", &rep);
  assert_int_equal(json_integer_value(json_object_get(res, "chunks_freed")), 0);
  json_decref(rep);
  assert_int_equal(chunk_count(f), 1);
  /* Idle past the TTL (1 s) it goes: freed by the maintenance thread or by
   * this cleanup, whichever comes first. */
  usleep(1200000);
  res = fx_ok(f, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"cleanup\"}", &rep);
  assert_true(json_integer_value(json_object_get(res, "chunks_freed")) <= 1);
  json_decref(rep);
  assert_int_equal(chunk_count(f), 0);
  snprintf(msg, sizeof msg,
           "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"freeMemory\","
           "\"params\":{\"chunkId\":\"%s\"}}",
           id);
  res = fx_ok(f, msg, &rep);
  assert_true(json_is_false(json_object_get(res, "freed")));
  json_decref(rep);
  snprintf(msg, sizeof msg,
           "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"readChunk\","
           "\"params\":{\"chunkId\":\"%s\"}}",
           id);
  fx_err(f, msg, MN_RPC_INVALID_PARAMS, "does not exist");
  fx_free(f);
}

static void test_health_and_metrics(void **state) {
  fx *f = fx_new();
  json_t *rep, *res;
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"createCollection\","
              "\"params\":{\"name\":\"h\",\"dim\":2}}",
              &rep);
  json_decref(rep);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"addMemories\","
              "\"params\":{\"collection\":\"h\",\"embeddings\":[[1,0],[0,1]]}}",
              &rep);
  json_decref(rep);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"allocateMemory\","
              "\"params\":{\"size\":100}}",
              &rep);
  json_decref(rep);
  res = fx_ok(f, "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"health\"}", &rep);
  json_t *st = json_object_get(res, "store");
  assert_string_equal(json_string_value(json_object_get(st, "state")),
                      "normal");
  assert_int_equal(json_integer_value(json_object_get(st, "memories")), 2);
  assert_int_equal(json_integer_value(json_object_get(st, "collections")), 1);
  json_decref(rep);
  res = fx_ok(f, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"getMetrics\"}",
              &rep);
  /* One memory chunk (in l2) and one working chunk. */
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(res, "memory"), "chunks")),
                   2);
  st = json_object_get(res, "store");
  assert_int_equal(
      json_integer_value(json_object_get(
          json_object_get(json_object_get(st, "tiers"), "l2"), "chunks")),
      1);
  assert_true(json_integer_value(json_object_get(st, "commits")) >= 2);
  json_decref(rep);
  fx_free(f);
}

/* searchMemories' now is the reference time the client gives, 0 (the
 * epoch) included: it used to stand for "the clock", so a decay relative
 * to the epoch silently used the current time instead. */
static void test_search_now_zero(void **state) {
  (void)state;
  fx *f = fx_new();
  json_t *rep, *res;
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"createCollection\","
              "\"params\":{\"name\":\"t\",\"dim\":2,\"metric\":\"ip\"}}",
              &rep);
  json_decref(rep);
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"addMemories\","
              "\"params\":{\"collection\":\"t\",\"memories\":["
              "{\"id\":\"a\",\"embedding\":[1,0],\"timestamp\":0,"
              "\"significance\":1},"
              "{\"id\":\"b\",\"embedding\":[1,0],\"timestamp\":100,"
              "\"significance\":1}]}}",
              &rep);
  json_decref(rep);
  /* now 0: neither memory is older than the reference time. */
  static const char *const nows[] = {"0", "0.0", "-0.0", "50"};
  for (int c = 0; c < 4; c++) {
    char msg[512];
    snprintf(msg, sizeof msg,
             "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"searchMemories\","
             "\"params\":{\"collection\":\"t\",\"query\":[1,0],\"k\":2,"
             "\"time_decay\":0.01,\"now\":%s}}",
             nows[c]);
    res = fx_ok(f, msg, &rep);
    json_t *hits = json_array_get(json_object_get(res, "results"), 0);
    assert_int_equal(json_array_size(hits), 2);
    for (size_t j = 0; j < 2; j++) {
      json_t *h = json_array_get(hits, j);
      const char *id = json_string_value(json_object_get(h, "id"));
      double want = c < 3 || strcmp(id, "b") == 0 ? 1.0 : exp(-0.01 * 50);
      double got = json_number_value(json_object_get(h, "decay"));
      if (fabs(got - want) > 1e-12)
        fail_msg("now %s: %s decays %.17g, expected %.17g", nows[c], id, got,
                 want);
    }
    json_decref(rep);
  }
  fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_collections),
      cmocka_unit_test(test_memories_and_search),
      cmocka_unit_test(test_encodings),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_nul_in_strings),
      cmocka_unit_test(test_chunks),
      cmocka_unit_test(test_health_and_metrics),
      cmocka_unit_test(test_search_now_zero),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
