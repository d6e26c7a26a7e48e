/*
 * test_rpc_fuzz.c - the JSON-RPC engine under a seeded mutation fuzzer.
 *
 * The corpus is every method's example request from the method table (the
 * same ones docs/API.md shows, so a new method joins the corpus by itself)
 * plus binary frames with buffer tensors. Each round takes one entry and
 * mutates it: bytes flipped, cut, repeated or spliced with another entry;
 * tokens of JSON and bad UTF-8 dropped in; or, on a parsed copy (jansson),
 * a value swapped for another of an awkward type or size, a member removed
 * or added. Binary frames get their length prefix, buffer offsets,
 * lengths, shapes and payload bent as well.
 *
 * What must hold for every message, checked with jansson (a JSON parser
 * independent of the engine's):
 *   - the reply is a JSON-RPC 2.0 reply (or a batch of them, or a binary
 *     frame of the documented layout whose JSON is one): jsonrpc "2.0", an
 *     id, exactly one of result / error, an error code from the documented
 *     table and a message that says something;
 *   - a parse error (-32700) has a null id, and a request that parses as an
 *     object with a string or integer id is answered with that id;
 *   - no reply at all only for what parses as a notification (or a batch of
 *     them);
 *   - and the engine keeps working and loses nothing: every so many rounds,
 *     and at the end, a normalisation is checked against double precision
 *     and the memories of a collection that no fuzzed message names are
 *     read back and searched, and must be exactly as stored.
 * The suite runs under AddressSanitizer and UBSan in `make test-asan`,
 * where an overflow or leak on any path the fuzzer reaches fails it.
 *
 * MNEMO_FUZZ_SEED and MNEMO_FUZZ_ROUNDS change the seed (default 1) and
 * the number of rounds (default 4000); a failure prints both and the
 * message, so it can be replayed.
 */
#define _GNU_SOURCE /* memmem */
#include "rpc_fixture.h"

#include <pthread.h>

/* --- random numbers --------------------------------------------------------
 */

/* the fuzzer's own stream, separate from frand(); one per thread */
static __thread uint64_t rs;

static uint64_t rnd(void) {
  rs ^= rs >> 12;
  rs ^= rs << 25;
  rs ^= rs >> 27;
  return rs * 0x2545f4914f6cdd1dull;
}

static size_t below(size_t n) {
  return n ? (size_t)(rnd() % n) : 0;
}

/* --- byte buffers ----------------------------------------------------------
 */

typedef struct bytes {
  unsigned char *p;
  size_t len;
  int binary;
} bytes;

static void b_set(bytes *b, const void *p, size_t n, int binary) {
  b->p = malloc(n ? n : 1);
  assert_non_null(b->p);
  memcpy(b->p, p, n);
  b->len = n;
  b->binary = binary;
}

/* Replace [at, at + cut) with n bytes of p. */
static void b_splice(bytes *b, size_t at, size_t cut, const void *p, size_t n) {
  if (at > b->len)
    at = b->len;
  if (cut > b->len - at)
    cut = b->len - at;
  size_t nl = b->len - cut + n;
  unsigned char *q = malloc(nl ? nl : 1);
  assert_non_null(q);
  memcpy(q, b->p, at);
  memcpy(q + at, p, n);
  memcpy(q + at + n, b->p + at + cut, b->len - at - cut);
  free(b->p);
  b->p = q;
  b->len = nl;
}

/* --- the corpus --------------------------------------------------------------
 */

typedef struct corpus {
  bytes *e;
  size_t n, cap;
} corpus;

static void corpus_add(corpus *c, const void *p, size_t n, int binary) {
  if (c->n == c->cap) {
    c->cap = c->cap ? 2 * c->cap : 64;
    c->e = realloc(c->e, c->cap * sizeof *c->e);
    assert_non_null(c->e);
  }
  b_set(&c->e[c->n++], p, n, binary);
}

/* A binary frame: N (little-endian), the JSON, the payload. */
static void frame(bytes *out, const char *json, size_t jn, const void *pl,
                  size_t pn) {
  size_t n = 4 + jn + pn;
  unsigned char *q = malloc(n);
  assert_non_null(q);
  q[0] = (unsigned char)(jn & 0xff);
  q[1] = (unsigned char)((jn >> 8) & 0xff);
  q[2] = (unsigned char)((jn >> 16) & 0xff);
  q[3] = (unsigned char)((jn >> 24) & 0xff);
  memcpy(q + 4, json, jn);
  if (pn)
    memcpy(q + 4 + jn, pl, pn);
  out->p = q;
  out->len = n;
  out->binary = 1;
}

static void add_frame(corpus *c, const char *json, const void *pl, size_t pn) {
  bytes b;
  frame(&b, json, strlen(json), pl, pn);
  corpus_add(c, b.p, b.len, 1);
  free(b.p);
}

static void build_corpus(corpus *c) {
  mn__arena a = {0};
  for (size_t i = 0; i < mn__n_methods; i++) {
    const char *ex = mn__methods[i].example_request;
    if (!ex)
      continue;
    char *t = mn__json_join_literals(&a, ex);
    assert_non_null(t);
    corpus_add(c, t, strlen(t), 0);
  }
  mn__arena_release(&a);
  assert_true(c->n >= 20); /* every method has an example */

  /* Text requests with the other tensor forms and encodings. */
  static const char *const more[] = {
      "{\"jsonrpc\":\"2.0\",\"id\":\"s\",\"method\":\"processEmbeddings\","
      "\"params\":{\"embeddings\":{\"dtype\":\"float32\",\"shape\":[2,2],"
      "\"data\":\"zczMPQAAAL+amZk+zcxMPg==\"},\"options\":{\"normalize\":"
      "true,\"quantization\":\"int4\",\"encoding\":\"binary\"}}}",
      "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"processEmbeddings\","
      "\"params\":{\"embeddings\":[{\"0\":0.5,\"1\":-0.25,\"2\":1}],"
      "\"options\":{\"precision\":\"bfloat16\",\"encoding\":\"base64\"}}}",
      "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"health\"},{\"jsonrpc\":"
      "\"2.0\",\"method\":\"ping\"},{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":"
      "\"processEmbeddings\",\"params\":{\"embeddings\":[1,2,3],\"options\":{"
      "\"quantization_bits\":1}}}]",
      "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{"
      "\"name\":\"processEmbeddings\",\"arguments\":{\"embeddings\":[[1,0],"
      "[0,2]],\"options\":{\"dimension_reduction\":1}}}}",
      "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"searchMemories\",\"params\":"
      "{\"collection\":\"notes\",\"query\":{\"dtype\":\"float16\",\"shape\":"
      "[3],\"data\":\"ADwAAAAA\"},\"k\":2}}",
  };
  for (size_t i = 0; i < sizeof more / sizeof *more; i++)
    corpus_add(c, more[i], strlen(more[i]), 0);

  /* Binary frames: float32 and float16 buffers, one at an odd offset. */
  float x[3 * 4];
  for (int i = 0; i < 12; i++)
    x[i] = (float)(i % 5) - 1.5f;
  add_frame(
      c,
      "{\"jsonrpc\":\"2.0\",\"id\":\"b1\",\"method\":\"processEmbeddings\","
      "\"params\":{\"embeddings\":{\"dtype\":\"float32\",\"shape\":[3,4],"
      "\"buffer\":{\"offset\":0,\"length\":48}},\"options\":{"
      "\"normalize\":true,\"quantization\":\"int8\"}}}",
      x, sizeof x);
  unsigned char pl[1 + 24];
  pl[0] = 0xee;
  _Float16 h[12];
  for (int i = 0; i < 12; i++)
    h[i] = (_Float16)x[i];
  memcpy(pl + 1, h, sizeof h);
  add_frame(
      c,
      "{\"jsonrpc\":\"2.0\",\"id\":\"b2\",\"method\":\"processEmbeddings\","
      "\"params\":{\"embeddings\":{\"dtype\":\"float16\",\"shape\":[3,4],"
      "\"buffer\":{\"offset\":1,\"length\":24}},\"options\":{"
      "\"precision\":\"float16\"}}}",
      pl, sizeof pl);
  add_frame(c,
            "{\"jsonrpc\":\"2.0\",\"id\":\"b3\",\"method\":\"addMemories\","
            "\"params\":{\"collection\":\"notes\",\"memories\":[{\"id\":\"z\","
            "\"embedding\":{\"dtype\":\"float32\",\"shape\":[3],\"buffer\":{"
            "\"offset\":0,\"length\":12}},\"content\":\"from a frame\"}]}}",
            x, 12);
  add_frame(c,
            "{\"jsonrpc\":\"2.0\",\"id\":\"b4\",\"method\":\"searchMemories\","
            "\"params\":{\"collection\":\"notes\",\"query\":{\"dtype\":"
            "\"float32\",\"shape\":[1,3],\"buffer\":{\"offset\":4,\"length\":"
            "12}},\"k\":3,\"options\":{\"encoding\":\"binary\"}}}",
            x, 16);
}

/* --- mutations ---------------------------------------------------------------
 */

static const char *const tokens[] = {
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "\\",
    "null",
    "true",
    "false",
    "-",
    "0",
    "-0",
    "1e309",
    "-1e309",
    "1e-400",
    "NaN",
    "Infinity",
    "0x10",
    "18446744073709551616",
    "-9223372036854775809",
    "9007199254740993",
    "3.4028236e38",
    "1.",
    ".5",
    "01",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\u0000\"",
    "\"\\x\"",
    "\xff",
    "\xc0\x80",
    "\xed\xa0\x80",
    "\xf4\x90\x80\x80",
    "\xe2\x82",
    "\t",
    "\r\n",
    " ",
    "/*",
    "{}",
    "[]",
    "[[]]",
    "{\"\":{}}",
    "\"dtype\"",
    "\"shape\"",
    "\"buffer\"",
    "\"data\"",
    "\"offset\"",
    "\"length\"",
    "\"float16\"",
    "\"bfloat16\"",
    "\"int4\"",
    "\"binary\"",
    "\"embeddings\"",
    "\"params\"",
    "\"id\"",
    "\"method\"",
    "\"jsonrpc\"",
};

static const char *const strings[] = {
    "",
    "x",
    "2.0",
    "1.0",
    "processEmbeddings",
    "fitPCA",
    "searchMemories",
    "addMemories",
    "getMemories",
    "deleteMemories",
    "dropCollection",
    "allocateMemory",
    "processChunk",
    "readChunk",
    "freeMemory",
    "tools/call",
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int8",
    "int8_affine",
    "uint8",
    "int4",
    "binary",
    "fp16",
    "bf16",
    "json",
    "base64",
    "notes",
    "demo",
    "default",
    "cosine",
    "dot",
    "euclidean",
    "l2",
    "AAAA",
    "AA==",
    "=",
    "not base64!",
    "\xc3\xa9t\xc3\xa9",
    "a\nb",
    "../../etc/passwd",
    "a/b",
    ".",
    "..",
    "CON",
    "lmdb",
    "data.mdb",
};

static const char *const numbers[] = {
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "8",
    "16",
    "255",
    "256",
    "1024",
    "1025",
    "4096",
    "65535",
    "65536",
    "1048576",
    "2147483647",
    "2147483648",
    "4294967296",
    "-2147483649",
    "9223372036854775807",
    "-9223372036854775808",
    "0.5",
    "-0.0",
    "1e308",
    "-1e308",
    "5e-324",
    "3.4028235e38",
    "1.5",
    "100000000",
};

/* A JSON value of an awkward kind (new reference). */
static json_t *awkward(json_t *root) {
  switch (below(12)) {
  case 0:
    return json_null();
  case 1:
    return json_boolean(below(2));
  case 2:
  case 3: {
    json_error_t e;
    json_t *v = json_loads(
        numbers[below(sizeof numbers / sizeof *numbers)],
        JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &e);
    if (!v) /* -0.0 and friends: jansson keeps them as reals */
      v = json_real(0.0);
    if (below(2) && json_is_real(v)) {
      double d = json_real_value(v);
      if (d == (double)(long long)d && d >= -9.2e18 && d <= 9.2e18) {
        json_decref(v);
        v = json_integer((json_int_t)d);
      }
    }
    return v;
  }
  case 4:
    if (below(6) == 0) { /* a name with a NUL inside: must not alias "notes" */
      static const struct {
        const char *s;
        size_t n;
      } nul[] = {{"notes\0x", 7}, {"m1\0", 3}, {"demo\0z", 6}, {"\0", 1}};
      size_t w = below(4);
      return json_stringn(nul[w].s, nul[w].n);
    }
    return json_string(strings[below(sizeof strings / sizeof *strings)]);
  case 5: {
    size_t n = below(3) == 0 ? 70000 : below(300) + 1;
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, 'a' + (int)below(26), n);
    s[n] = '\0';
    json_t *v = json_string(s);
    free(s);
    return v;
  }
  case 6:
    return json_array();
  case 7:
    return json_object();
  case 8: { /* a ragged or mixed matrix */
    json_t *a = json_array();
    size_t rows = below(4) + 1;
    for (size_t r = 0; r < rows; r++) {
      json_t *row = json_array();
      size_t cols = below(5);
      for (size_t k = 0; k < cols; k++)
        json_array_append_new(row, below(8) ? json_real((double)below(9) - 4)
                                            : json_string("1"));
      json_array_append_new(a, row);
    }
    return a;
  }
  case 9: { /* a tensor object, often inconsistent */
    json_t *t = json_object();
    static const char *const dt[] = {"float32", "float16", "bfloat16",
                                     "float64", "int8",    "complex"};
    json_object_set_new(t, "dtype", json_string(dt[below(6)]));
    json_t *sh = json_array();
    size_t nd = below(4);
    for (size_t i = 0; i < nd; i++)
      json_array_append_new(
          sh, json_integer((json_int_t)below(6) - (below(9) == 0 ? 3 : 0)));
    json_object_set_new(t, "shape", sh);
    if (below(2)) {
      static const char *const b64[] = {
          "", "AAAA", "AACAPwAAAEA=", "AACAPwAAAEAAAEBAAACAQA==", "!!"};
      json_object_set_new(t, "data", json_string(b64[below(5)]));
    } else {
      json_t *bf = json_object();
      json_object_set_new(bf, "offset",
                          json_integer((json_int_t)below(20) - 2));
      json_object_set_new(bf, "length", json_integer((json_int_t)below(64)));
      json_object_set_new(t, "buffer", bf);
    }
    return t;
  }
  case 10: { /* deep nesting */
    json_t *v = json_integer(1);
    size_t depth = below(2) ? 70 : below(10) + 1;
    for (size_t i = 0; i < depth; i++) {
      json_t *a = json_array();
      json_array_append_new(a, v);
      v = a;
    }
    return v;
  }
  default: /* a value taken from elsewhere in the same message */
    return root ? json_deep_copy(root) : json_null();
  }
}

/* Every value in the tree, in document order. */
typedef struct node_list {
  json_t **v;
  json_t **parent;
  const char **key; /* member name when the parent is an object */
  size_t *idx;      /* position when the parent is an array */
  size_t n, cap;
} node_list;

static void nodes_add(node_list *l, json_t *v, json_t *parent, const char *key,
                      size_t idx) {
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 64;
    l->v = realloc(l->v, l->cap * sizeof *l->v);
    l->parent = realloc(l->parent, l->cap * sizeof *l->parent);
    l->key = realloc(l->key, l->cap * sizeof *l->key);
    l->idx = realloc(l->idx, l->cap * sizeof *l->idx);
    assert_true(l->v && l->parent && l->key && l->idx);
  }
  l->v[l->n] = v;
  l->parent[l->n] = parent;
  l->key[l->n] = key;
  l->idx[l->n] = idx;
  l->n++;
  if (json_is_object(v)) {
    const char *k;
    json_t *c;
    json_object_foreach(v, k, c) nodes_add(l, c, v, k, 0);
  } else if (json_is_array(v)) {
    for (size_t i = 0; i < json_array_size(v); i++)
      nodes_add(l, json_array_get(v, i), v, NULL, i);
  }
}

static void nodes_free(node_list *l) {
  free(l->v);
  free(l->parent);
  free(l->key);
  free(l->idx);
}

/* A structural change to a parsed message; returns the new root. */
static json_t *mutate_tree(json_t *root) {
  node_list l = {0};
  nodes_add(&l, root, NULL, NULL, 0);
  size_t i = below(l.n);
  json_t *v = l.v[i], *p = l.parent[i];
  size_t op = below(10);
  if (!p) { /* the root itself */
    if (op < 3) {
      json_t *n = awkward(NULL);
      json_decref(root);
      root = n;
    } else if (op < 6) { /* make it a batch of itself */
      json_t *a = json_array();
      size_t copies = below(3) + 1;
      for (size_t k = 0; k < copies; k++)
        json_array_append_new(a, json_deep_copy(root));
      json_decref(root);
      root = a;
    } else if (json_is_object(root)) {
      json_object_set_new(root, below(2) ? "extra" : "id", awkward(NULL));
    }
  } else if (op < 6) { /* replace the value */
    json_t *n = awkward(below(4) == 0 ? root : NULL);
    if (json_is_object(p))
      json_object_set_new(p, l.key[i], n);
    else
      json_array_set_new(p, l.idx[i], n);
  } else if (op < 8) { /* remove it */
    if (json_is_object(p))
      json_object_del(p, l.key[i]);
    else
      json_array_remove(p, l.idx[i]);
  } else if (json_is_object(v)) { /* add a member */
    static const char *const keys[] = {"options", "k",     "dtype",
                                       "shape",   "extra", "metric",
                                       "filter",  "id",    ""};
    json_object_set_new(v, keys[below(9)], awkward(NULL));
  } else if (json_is_array(v)) { /* grow or repeat */
    json_array_append_new(v, below(2) && json_array_size(v)
                                 ? json_deep_copy(json_array_get(v, 0))
                                 : awkward(NULL));
  }
  nodes_free(&l);
  return root;
}

/* The bytes of a binary frame's JSON part, when its prefix is sound. */
static int frame_json(const bytes *b, size_t *jn) {
  if (b->len < 4)
    return 0;
  size_t n = (size_t)b->p[0] | (size_t)b->p[1] << 8 | (size_t)b->p[2] << 16 |
             (size_t)b->p[3] << 24;
  if (n > b->len - 4)
    return 0;
  *jn = n;
  return 1;
}

/* One mutation, in place. */
static void mutate(bytes *b, const corpus *c) {
  size_t op = below(b->binary ? 13 : 11);
  size_t at = below(b->len + 1);
  switch (op) {
  case 0: /* flip bits */
  case 1:
    if (b->len) {
      size_t k = below(4) + 1;
      for (size_t i = 0; i < k; i++)
        b->p[below(b->len)] ^= (unsigned char)(1u << below(8));
    }
    break;
  case 2: /* cut a span */
    b_splice(b, at, below(below(2) ? 8 : b->len + 1) + 1, "", 0);
    break;
  case 3: { /* repeat a span */
    size_t n = below(32) + 1;
    if (at + n > b->len)
      n = b->len - at;
    unsigned char *s = malloc(n ? n : 1);
    assert_non_null(s);
    memcpy(s, b->p + at, n);
    b_splice(b, at, 0, s, n);
    free(s);
    break;
  }
  case 4:
  case 5: { /* drop in a token */
    const char *t = tokens[below(sizeof tokens / sizeof *tokens)];
    b_splice(b, at, below(3), t, strlen(t));
    break;
  }
  case 6: { /* splice with another entry */
    const bytes *o = &c->e[below(c->n)];
    size_t from = below(o->len + 1);
    bytes t;
    b_set(&t, b->p, at, b->binary);
    b_splice(&t, at, 0, o->p + from, o->len - from);
    free(b->p);
    *b = t;
    break;
  }
  case 7: /* truncate */
    b->len = below(b->len + 1);
    break;
  case 8:
  case 9:
  case 10: { /* structural, on the JSON part */
    size_t off = 0, jn = b->len;
    if (b->binary) {
      if (!frame_json(b, &jn))
        break;
      off = 4;
    }
    json_error_t e;
    json_t *root = json_loadb(
        (const char *)b->p + off, jn,
        JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &e);
    if (!root)
      break;
    size_t k = below(3) + 1;
    for (size_t i = 0; i < k; i++)
      root = mutate_tree(root);
    char *t = json_dumps(root, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(root);
    if (!t)
      break;
    if (b->binary) {
      bytes nb;
      frame(&nb, t, strlen(t), b->p + 4 + jn, b->len - 4 - jn);
      free(b->p);
      *b = nb;
    } else {
      free(b->p);
      b_set(b, t, strlen(t), 0);
    }
    free(t);
    break;
  }
  case 11: { /* a binary frame's length prefix */
    static const uint32_t odd[] = {0, 1, 3, 0x7fffffff, 0xffffffff, 0x80000000};
    uint32_t n = below(2) ? odd[below(6)] : (uint32_t)below(b->len + 8);
    if (b->len >= 4) {
      b->p[0] = (unsigned char)(n & 0xff);
      b->p[1] = (unsigned char)((n >> 8) & 0xff);
      b->p[2] = (unsigned char)((n >> 16) & 0xff);
      b->p[3] = (unsigned char)(n >> 24);
    }
    break;
  }
  default: { /* the payload: grow or shrink it */
    size_t jn;
    if (!frame_json(b, &jn))
      break;
    size_t pay = b->len - 4 - jn;
    if (below(2) && pay) {
      b->len -= below(pay) + 1;
    } else {
      unsigned char z[64];
      for (size_t i = 0; i < sizeof z; i++)
        z[i] = (unsigned char)rnd();
      b_splice(b, b->len, 0, z, below(sizeof z) + 1);
    }
    break;
  }
  }
}

/* --- the checks --------------------------------------------------------------
 */

static int documented_code(json_t *v) {
  if (!json_is_number(v) || json_number_value(v) != (int)json_number_value(v))
    return 0;
  switch ((int)json_number_value(v)) {
  case -32700:
  case -32600:
  case -32601:
  case -32602:
  case -32603:
  case -32000:
  case -32001:
  case -32002:
  case -32003:
  case -32004:
    return 1;
  default:
    return 0;
  }
}

/* Where a failed check prints what was sent. */
static uint64_t cur_seed;
static __thread size_t cur_round;
static __thread const bytes *cur_msg;
/* In a fuzzing thread a failed check cannot fail the test (cmocka jumps on
 * the test's own thread): it records the first failure here and jumps back
 * to the thread's loop. */
static __thread jmp_buf *bail;
static pthread_mutex_t fail_mu = PTHREAD_MUTEX_INITIALIZER;
static char first_failure[2400];
static int failed;

static void show_and_fail(const char *why, const void *rep, size_t rn) {
  char shown[1200];
  size_t k = 0, n = cur_msg ? cur_msg->len : 0;
  for (size_t i = 0; i < n && k + 8 < sizeof shown; i++) {
    unsigned char ch = cur_msg->p[i];
    if (ch >= 32 && ch < 127 && ch != '\\')
      shown[k++] = (char)ch;
    else
      k += (size_t)snprintf(shown + k, sizeof shown - k, "\\x%02x", ch);
  }
  shown[k] = '\0';
  char m[sizeof first_failure];
  snprintf(m, sizeof m,
           "seed %llu round %zu: %s\n  sent (%zu bytes, %s): %s\n  got: %.*s",
           (unsigned long long)cur_seed, cur_round, why, n,
           cur_msg && cur_msg->binary ? "binary" : "text", shown,
           (int)(rn > 600 ? 600 : rn), rep ? (const char *)rep : "(nothing)");
  if (bail) {
    pthread_mutex_lock(&fail_mu);
    if (!failed)
      snprintf(first_failure, sizeof first_failure, "%s", m);
    failed = 1;
    pthread_mutex_unlock(&fail_mu);
    longjmp(*bail, 1);
  }
  fail_msg("%s", m);
}

/* jansson refuses numbers beyond a double's range and a \u0000 in a member
 * name, both of which JSON allows (and the engine echoes in ids). A copy of
 * the text in which every number with more than 300 digits or an exponent
 * beyond +-300 is 0 and every \u0000 is \u0001, applied alike to a request
 * and its reply; caller frees. */
static char *tame_json(const char *t, size_t n, size_t *on) {
  char *o = malloc(n + 1);
  assert_non_null(o);
  size_t k = 0;
  int in_str = 0;
  for (size_t i = 0; i < n;) {
    char ch = t[i];
    if (in_str) {
      if (ch == '\\' && i + 5 < n && memcmp(t + i + 1, "u0000", 5) == 0) {
        memcpy(o + k, "\\u0001", 6);
        k += 6;
        i += 6;
        continue;
      }
      if (ch == '\\' && i + 1 < n) {
        o[k++] = t[i++];
      } else if (ch == '"') {
        in_str = 0;
      }
      o[k++] = t[i++];
      continue;
    }
    if (ch == '"') {
      in_str = 1;
      o[k++] = t[i++];
      continue;
    }
    int starts = (ch == '-' || (ch >= '0' && ch <= '9')) &&
                 (i == 0 || !strchr("0123456789.eE+-", t[i - 1]));
    if (!starts) {
      o[k++] = t[i++];
      continue;
    }
    size_t j = i + (ch == '-'), digits = 0, exp = 0;
    while (j < n && ((t[j] >= '0' && t[j] <= '9') || t[j] == '.')) {
      digits++;
      j++;
    }
    if (j < n && (t[j] == 'e' || t[j] == 'E')) {
      j++;
      if (j < n && (t[j] == '+' || t[j] == '-'))
        j++;
      while (j < n && t[j] >= '0' && t[j] <= '9') {
        if (exp < 100000)
          exp = exp * 10 + (size_t)(t[j] - '0');
        j++;
      }
    }
    if (digits > 300 || exp > 300) {
      o[k++] = '0';
    } else {
      memcpy(o + k, t + i, j - i);
      k += j - i;
    }
    i = j;
  }
  *on = k;
  return o;
}

/* One reply object. `want_id`: the id the request carried (borrowed;
 * NULL when it could not be known). */
static void check_one(json_t *r, json_t *want_id, const char *text, size_t tn) {
  if (!json_is_object(r))
    show_and_fail("a reply that is not an object", text, tn);
  json_t *ver = json_object_get(r, "jsonrpc");
  if (!json_is_string(ver) || strcmp(json_string_value(ver), "2.0") != 0)
    show_and_fail("a reply without jsonrpc \"2.0\"", text, tn);
  json_t *id = json_object_get(r, "id");
  if (!id)
    show_and_fail("a reply without an id", text, tn);
  json_t *res = json_object_get(r, "result");
  json_t *err = json_object_get(r, "error");
  if ((res != NULL) == (err != NULL) || json_object_size(r) != 3)
    show_and_fail("a reply without exactly one of result and error", text, tn);
  if (err) {
    json_t *code = json_object_get(err, "code");
    const char *m = json_string_value(json_object_get(err, "message"));
    json_t *d = json_object_get(err, "data");
    if (!documented_code(code))
      show_and_fail("an error code that is not in the documented table", text,
                    tn);
    if (!m || strlen(m) < 10)
      show_and_fail("an error message that says nothing", text, tn);
    if (d && !json_is_object(d))
      show_and_fail("error data that is not an object", text, tn);
    if (json_number_value(code) == -32700 && !json_is_null(id))
      show_and_fail("a parse error with an id", text, tn);
  }
  if (want_id && !json_is_null(id) && !json_equal(id, want_id))
    show_and_fail("a reply with another id than the request's", text, tn);
}

/* The id a parsed request carries, when it is one the engine must echo. */
static json_t *request_id(json_t *req) {
  if (!json_is_object(req))
    return NULL;
  json_t *id = json_object_get(req, "id");
  if (json_is_string(id) || json_is_number(id))
    return id;
  return NULL;
}

/* Is the message, as jansson reads it, only notifications? */
static int only_notifications(json_t *req) {
  if (json_is_object(req))
    return json_object_get(req, "id") == NULL;
  if (!json_is_array(req) || json_array_size(req) == 0)
    return 0;
  for (size_t i = 0; i < json_array_size(req); i++)
    if (!only_notifications(json_array_get(req, i)) ||
        json_is_array(json_array_get(req, i)))
      return 0;
  return 1;
}

static void check_reply(const bytes *msg, const mn_rpc_reply *rep) {
  /* The request as jansson reads it (NULL: not JSON to jansson). */
  const char *js = (const char *)msg->p;
  size_t jn = msg->len;
  if (msg->binary) {
    size_t n = 0;
    if (frame_json(msg, &n)) {
      js += 4;
      jn = n;
    } else {
      jn = 0;
      js = NULL;
    }
  }
  json_error_t e;
  /* numbers as doubles on both sides: ids beyond 64 bits are JSON too */
  json_t *req = NULL;
  if (js) {
    size_t tn;
    char *tame = tame_json(js, jn, &tn);
    req = json_loadb(tame, tn,
                     JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL,
                     &e);
    free(tame);
  }

  if (!rep->data) {
    if (!req || !only_notifications(req))
      show_and_fail("no reply to a message that is not only notifications",
                    NULL, 0);
    json_decref(req);
    return;
  }
  const char *text = rep->data;
  size_t tn = rep->len;
  if (rep->binary) {
    bytes rb = {.p = rep->data, .len = rep->len, .binary = 1};
    size_t n = 0;
    if (!frame_json(&rb, &n))
      show_and_fail("a binary reply with a bad length prefix", NULL, 0);
    if ((4 + n) % 8 != 0)
      show_and_fail("a binary reply whose payload is not 8-byte aligned", NULL,
                    0);
    text = (const char *)rep->data + 4;
    tn = n;
  }
  size_t qn;
  char *tame = tame_json(text, tn, &qn);
  json_t *r = json_loadb(
      tame, qn, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &e);
  free(tame);
  if (!r)
    show_and_fail("a reply that is not JSON", text, tn);
  if (json_is_array(r)) {
    if (!json_is_array(req) || json_array_size(r) == 0 ||
        json_array_size(r) > json_array_size(req))
      show_and_fail("a batch reply to something that is not a batch", text, tn);
    for (size_t i = 0; i < json_array_size(r); i++)
      check_one(json_array_get(r, i), NULL, text, tn);
  } else {
    check_one(r, request_id(req), text, tn);
  }
  json_decref(r);
  json_decref(req);
}

/* --- what must survive
 * -------------------------------------------------------- */

#define KEEP "fuzzkeep_7f3a"
enum { KEEP_N = 6, KEEP_D = 5 };
static float keep_x[KEEP_N][KEEP_D];

static void keep_store(fx *f) {
  json_t *rep;
  fx_ok(f,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"createCollection\","
        "\"params\":{\"name\":\"" KEEP "\",\"dim\":5}}",
        &rep);
  json_decref(rep);
  sbuf b = {0};
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"addMemories\","
             "\"params\":{\"collection\":\"" KEEP "\",\"memories\":[");
  for (int i = 0; i < KEEP_N; i++) {
    for (int d = 0; d < KEEP_D; d++)
      keep_x[i][d] = frand();
    sb_add(&b, "%s{\"id\":\"k%d\",\"content\":\"kept %d\",\"embedding\":",
           i ? "," : "", i, i);
    sb_matrix(&b, keep_x[i], 1, KEEP_D);
    sb_add(&b, "}");
  }
  sb_add(&b, "]}}");
  fx_ok(f, b.p, &rep);
  json_decref(rep);
  free(b.p);
}

/* The engine still answers, right, and the kept memories are intact. */
static void keep_check(fx *f) {
  json_t *rep;
  json_t *res = fx_ok(f,
                      "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":"
                      "\"processEmbeddings\",\"params\":{\"embeddings\":[[3,4,"
                      "12]],\"options\":{\"normalize\":true}}}",
                      &rep);
  double y[3];
  assert_int_equal(read_matrix(json_object_get(res, "processed"), y, 3), 1);
  assert_true(fabs(y[0] - 3.0 / 13) < 1e-7 && fabs(y[1] - 4.0 / 13) < 1e-7 &&
              fabs(y[2] - 12.0 / 13) < 1e-7);
  json_decref(rep);

  res = fx_ok(
      f,
      "{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"getMemories\","
      "\"params\":{\"collection\":\"" KEEP "\",\"ids\":[\"k0\",\"k1\","
      "\"k2\",\"k3\",\"k4\",\"k5\"],\"include\":[\"content\",\"embedding\"]}}",
      &rep);
  json_t *mems = json_object_get(res, "memories");
  if (json_array_size(mems) != KEEP_N)
    fail_msg("seed %llu round %zu: %zu kept memories read back, not %d",
             (unsigned long long)cur_seed, cur_round, json_array_size(mems),
             KEEP_N);
  for (int i = 0; i < KEEP_N; i++) {
    json_t *m = json_array_get(mems, (size_t)i);
    char want[32];
    snprintf(want, sizeof want, "kept %d", i);
    const char *content = json_string_value(json_object_get(m, "content"));
    if (!content || strcmp(content, want) != 0)
      fail_msg("seed %llu round %zu: memory k%d reads back as %s",
               (unsigned long long)cur_seed, cur_round, i,
               content ? content : "(no content)");
    double v[KEEP_D];
    assert_int_equal(read_matrix(json_object_get(m, "embedding"), v, KEEP_D),
                     1);
    for (int d = 0; d < KEEP_D; d++)
      if ((float)v[d] != keep_x[i][d])
        fail_msg("seed %llu round %zu: memory k%d's embedding changed",
                 (unsigned long long)cur_seed, cur_round, i);
  }
  json_decref(rep);

  /* Each kept vector finds itself first (dot product of unit-free rows is
   * not enough: use cosine). */
  for (int i = 0; i < KEEP_N; i++) {
    sbuf b = {0};
    sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":\"searchMemories\","
               "\"params\":{\"collection\":\"" KEEP "\",\"k\":1,\"query\":");
    sb_matrix(&b, keep_x[i], 1, KEEP_D);
    sb_add(&b, "}}");
    res = fx_ok(f, b.p, &rep);
    free(b.p);
    json_t *hit =
        json_array_get(json_array_get(json_object_get(res, "results"), 0), 0);
    char want[8];
    snprintf(want, sizeof want, "k%d", i);
    const char *id = json_string_value(json_object_get(hit, "id"));
    if (!id || strcmp(id, want) != 0)
      fail_msg("seed %llu round %zu: searching k%d's vector found %s",
               (unsigned long long)cur_seed, cur_round, i, id ? id : "nothing");
    json_decref(rep);
  }
}

/* --- the test
 * ------------------------------------------------------------------ */

static void small_limits(mn_config *c) {
  c->cache_size = (uint64_t)64 << 20;
  c->disk_limit = (uint64_t)512 << 20;
  c->max_json_depth = 64;
  c->gpu_min_elements = 0; /* a device backend takes every job */
}

/* The engine on the CPU backend, or on the backend plugin named by
 * MNEMO_FUZZ_PLUGIN (test_rpc_fuzz_emu: the CUDA plugin on the host
 * emulator), so that the device path's argument handling is fuzzed too. */
static fx *fuzz_fixture(void) {
  fx *f = fx_new_with(small_limits);
  const char *plugin = getenv("MNEMO_FUZZ_PLUGIN");
  if (plugin && *plugin) {
    fx_close_engine(f);
    mn_backend_close(f->b);
    mn_backend_opts o;
    mn_backend_opts_init(&o);
    if (mn_backend_open_plugin(plugin, &o, &f->b) != MN_OK)
      fail_msg("cannot open %s: %s", plugin, mn_errmsg());
    fx_open_engine(f);
    printf("# fuzz: backend %s\n", plugin);
  }
  return f;
}

static uint64_t env_u64(const char *name, uint64_t dflt) {
  const char *v = getenv(name);
  if (!v || !*v)
    return dflt;
  char *end;
  unsigned long long x = strtoull(v, &end, 10);
  return *end ? dflt : (uint64_t)x;
}

/* Seed and rounds from the environment, the engine with the kept
 * memories, and the corpus, each entry of which is first sent as it is
 * and must be answered soundly (so the collections, models and chunks the
 * examples name exist before the fuzzing). */
static fx *fuzz_setup(corpus *c, size_t *rounds) {
  cur_seed = env_u64("MNEMO_FUZZ_SEED", 1);
  *rounds = (size_t)env_u64("MNEMO_FUZZ_ROUNDS", 4000);
  printf("# fuzz: seed %llu, %zu rounds (MNEMO_FUZZ_SEED, "
         "MNEMO_FUZZ_ROUNDS)\n",
         (unsigned long long)cur_seed, *rounds);
  fx *f = fuzz_fixture();
  keep_store(f);
  build_corpus(c);
  for (size_t i = 0; i < c->n; i++) {
    mn_rpc_reply rep;
    cur_msg = &c->e[i];
    mn_rpc_handle(f->r, f->s, c->e[i].p, c->e[i].len, c->e[i].binary, 0, &rep);
    check_reply(&c->e[i], &rep);
    mn_rpc_reply_free(&rep);
  }
  cur_msg = NULL;
  return f;
}

typedef struct fuzz_stats {
  size_t errors, results, silent;
} fuzz_stats;

/* One mutated message through the engine, and its reply checked. */
static void fuzz_round(mn_rpc *r, mn_rpc_session *s, const corpus *c,
                       fuzz_stats *st) {
  bytes m;
  const bytes *src = &c->e[below(c->n)];
  b_set(&m, src->p, src->len, src->binary);
  size_t k = below(4) == 0 ? below(6) + 2 : 1;
  for (size_t i = 0; i < k; i++)
    mutate(&m, c);
  cur_msg = &m;
  mn_rpc_reply rep;
  mn_rpc_handle(r, s, m.p, m.len, m.binary, 0, &rep);
  check_reply(&m, &rep);
  if (!rep.data)
    st->silent++;
  else if (memmem(rep.data, rep.len, "\"error\"", 7))
    st->errors++;
  else
    st->results++;
  mn_rpc_reply_free(&rep);
  free(m.p);
  cur_msg = NULL;
}

static void seed_stream(uint64_t seed, uint64_t thread) {
  rs = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull +
       thread * 0xbf58476d1ce4e5b9ull;
  if (!rs)
    rs = 1;
}

static void free_corpus(corpus *c) {
  for (size_t i = 0; i < c->n; i++)
    free(c->e[i].p);
  free(c->e);
}

static void test_fuzz_engine(void **state) {
  (void)state;
  size_t rounds;
  corpus c = {0};
  fx *f = fuzz_setup(&c, &rounds);
  seed_stream(cur_seed, 0);
  keep_check(f);

  fuzz_stats st = {0};
  for (cur_round = 0; cur_round < rounds; cur_round++) {
    fuzz_round(f->r, f->s, &c, &st);
    if (cur_round % 500 == 499)
      keep_check(f);
  }
  keep_check(f);
  printf("# fuzz: %zu rounds: %zu with errors, %zu with results only, %zu "
         "unanswered notifications\n",
         rounds, st.errors, st.results, st.silent);
  /* The mutations must reach past the parser: both kinds of outcome. */
  assert_true(st.errors > rounds / 4);
  assert_true(st.results > rounds / 50);

  /* Everything kept survives a restart of the engine too. */
  fx_close_engine(f);
  fx_open_engine(f);
  cur_round = rounds;
  keep_check(f);

  free_corpus(&c);
  fx_free(f);
}

/* The same on several threads at once, each with its own session, while
 * the test's thread keeps checking the kept memories: concurrent drops,
 * deletes, adds, cleanups and searches on the same collections. */
typedef struct worker {
  fx *f;
  const corpus *c;
  size_t index, rounds;
  fuzz_stats st;
  int finished;
} worker;

static void *fuzz_worker(void *arg) {
  worker *w = arg;
  mn_rpc_session *s = mn_rpc_session_new(w->f->r, "fuzz");
  seed_stream(cur_seed, w->index + 1);
  jmp_buf jb;
  if (setjmp(jb) == 0) {
    bail = &jb;
    for (cur_round = 0; cur_round < w->rounds && !failed; cur_round++)
      fuzz_round(w->f->r, s, w->c, &w->st);
  }
  bail = NULL;
  mn_rpc_session_free(s);
  __atomic_store_n(&w->finished, 1, __ATOMIC_RELEASE);
  return NULL;
}

static void test_fuzz_threads(void **state) {
  (void)state;
  enum { T = 3 };
  size_t rounds;
  corpus c = {0};
  fx *f = fuzz_setup(&c, &rounds);
  worker w[T];
  pthread_t th[T];
  for (size_t i = 0; i < T; i++) {
    w[i] = (worker){.f = f, .c = &c, .index = i, .rounds = rounds / T};
    assert_int_equal(pthread_create(&th[i], NULL, fuzz_worker, &w[i]), 0);
  }
  for (;;) {
    int all = 1;
    for (size_t i = 0; i < T; i++)
      all &= __atomic_load_n(&w[i].finished, __ATOMIC_ACQUIRE);
    if (all || failed)
      break;
    keep_check(f);
    usleep(2000);
  }
  for (size_t i = 0; i < T; i++)
    pthread_join(th[i], NULL);
  if (failed)
    fail_msg("a fuzzing thread: %s", first_failure);
  size_t errors = 0, results = 0;
  for (size_t i = 0; i < T; i++) {
    errors += w[i].st.errors;
    results += w[i].st.results;
  }
  printf("# fuzz on %d threads: %zu rounds: %zu with errors, %zu with "
         "results only\n",
         T, rounds / T * T, errors, results);
  assert_true(errors > rounds / 4);
  keep_check(f);
  fx_close_engine(f);
  fx_open_engine(f);
  keep_check(f);
  free_corpus(&c);
  fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fuzz_engine),
      cmocka_unit_test(test_fuzz_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
