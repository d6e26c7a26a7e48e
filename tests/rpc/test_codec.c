/*
 * test_codec.c - numbers, base64 and tensors in and out of messages.
 *
 * References are independent of the code under test: strtod / strtof and
 * printf for numbers, RFC 4648 vectors for base64, GCC's _Float16 and a
 * bit-exact bfloat16 rounding for half precision, double-precision
 * normalisation and distance checks for the ops, jansson for reading
 * replies.
 */
#include "rpc_fixture.h"

#include <float.h>

/* --- numbers ------------------------------------------------------------ */

static uint32_t rbits(void) {
  fx_rng ^= fx_rng << 13;
  fx_rng ^= fx_rng >> 7;
  fx_rng ^= fx_rng << 17;
  return (uint32_t)(fx_rng >> 17);
}

/* Fewest significant digits printf needs for f to read back exactly. */
static int printf_shortest(float f) {
  char b[64];
  for (int d = 1; d <= 9; d++) {
    snprintf(b, sizeof b, "%.*e", d - 1, (double)f);
    if (strtof(b, NULL) == f)
      return d;
  }
  return 9;
}

static int sig_digits(const char *s, size_t n) {
  int d = 0, started = 0;
  for (size_t i = 0; i < n && s[i] != 'e'; i++) {
    if (s[i] >= '1' && s[i] <= '9')
      started = 1;
    if (started && s[i] >= '0' && s[i] <= '9')
      d++;
  }
  /* Trailing zeros of an integer written out in full are not
   * significant. */
  for (size_t i = n;
       i-- > 0 && s[i] == '0' && !memchr(s, '.', n) && !memchr(s, 'e', n);)
    d--;
  return d;
}

static void check_f32(float f) {
  char o[32];
  size_t n = mn__fmt_f32(o, f);
  assert_true(n > 0 && n <= 24);
  o[n] = '\0';
  float back = strtof(o, NULL);
  if (memcmp(&back, &f, 4) != 0)
    fail_msg("%.9g printed as %s reads back as %.9g", (double)f, o,
             (double)back);
  int mine = sig_digits(o, n), ref = printf_shortest(f);
  if (f != 0 && mine > ref) {
    /* Allowed only where the shorter decimal lies exactly halfway between
     * f and a neighbour (it reads back as f by ties-to-even; the formatter
     * keeps to the open interval). */
    char s[64];
    snprintf(s, sizeof s, "%.*e", ref - 1, (double)f);
    double d = fabs(strtod(s, NULL));
    float af = fabsf(f);
    double up = ((double)af + (double)nextafterf(af, INFINITY)) / 2;
    double dn = ((double)af + (double)nextafterf(af, 0.0f)) / 2;
    if (d != up && d != dn)
      fail_msg("%.9g printed as %s (%d digits); %d digits suffice", (double)f,
               o, mine, ref);
  }
  /* A JSON number: jansson reads it. */
  json_error_t e;
  json_t *j = json_loads(o, JSON_DECODE_ANY, &e);
  if (!j || !json_is_number(j))
    fail_msg("%s is not a JSON number", o);
  json_decref(j);
}

static void test_fmt_f32(void **state) {
  const float fixed[] = {
      0.0f,     1.0f,     -1.0f,    0.1f,       0.5f,     1e-7f,
      1e-6f,    1.5e-6f,  1e20f,    1e21f,      9.99e20f, 123456789.0f,
      3.0e-45f, 1.4e-45f, FLT_MIN,  FLT_MAX,    -FLT_MAX, 16777216.0f,
      0.3f,     2.0f / 3, 1.0f / 3, 8388608.5f, 1e10f,    33554432.0f};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
    check_f32(fixed[i]);
  /* Powers of two: the interval below is half the one above. */
  for (int e = -149; e <= 127; e++)
    check_f32(ldexpf(1.0f, e));
  for (int e = -38; e <= 38; e++)
    check_f32((float)pow(10, e));
  /* Random bit patterns across the whole range, and typical embedding
   * values. */
  for (int i = 0; i < 100000; i++) {
    uint32_t b = rbits();
    float f;
    memcpy(&f, &b, 4);
    if (isfinite(f))
      check_f32(f);
    check_f32(frand());
  }
  char o[32];
  assert_int_equal(mn__fmt_f32(o, NAN), 4);
  assert_memory_equal(o, "null", 4);
  size_t n = mn__fmt_f32(o, -0.0f);
  o[n] = '\0';
  assert_true(signbit(strtod(o, NULL)));
  n = mn__fmt_f32(o, 0.1f);
  o[n] = '\0';
  assert_string_equal(o, "0.1");
  n = mn__fmt_f32(o, 1e-7f);
  o[n] = '\0';
  assert_string_equal(o, "1e-7");
  n = mn__fmt_f32(o, 1e21f);
  o[n] = '\0';
  assert_string_equal(o, "1e+21");
  n = mn__fmt_f32(o, 1500.0f);
  o[n] = '\0';
  assert_string_equal(o, "1500");
}

static void test_fmt_f64(void **state) {
  for (int i = 0; i < 20000; i++) {
    uint64_t b = (uint64_t)rbits() << 32 | rbits();
    double d;
    memcpy(&d, &b, 8);
    if (!isfinite(d))
      continue;
    char o[40];
    size_t n = mn__fmt_f64(o, d);
    o[n] = '\0';
    double back = strtod(o, NULL);
    if (back != d)
      fail_msg("%.17g printed as %s", d, o);
  }
  char o[40];
  size_t n = mn__fmt_f64(o, 42.0);
  o[n] = '\0';
  assert_string_equal(o, "42");
  n = mn__fmt_f64(o, 0.25);
  o[n] = '\0';
  assert_string_equal(o, "0.25");
}

/* Parse one number through the reader. */
static double read_num(const char *t) {
  mn__arena a = {0};
  mn__jerr e;
  mn__jv *v = mn__json_parse(&a, t, strlen(t), 8, &e);
  if (!v || v->type != MN__J_NUM)
    fail_msg("%s did not parse as a number: %s", t, e.msg);
  double d = v->u.num;
  mn__arena_release(&a);
  return d;
}

/* Parse numbers inside an array (the packed path with deferred
 * divisions) and compare each with strtod. */
static void check_array(char **nums, int n) {
  sbuf b = {0};
  sb_add(&b, "[");
  for (int i = 0; i < n; i++)
    sb_add(&b, "%s%s", i ? "," : "", nums[i]);
  sb_add(&b, "]");
  mn__arena a = {0};
  mn__jerr e;
  mn__jv *v = mn__json_parse(&a, b.p, b.len, 8, &e);
  assert_non_null(v);
  assert_true(v->flags & MN__JF_PACKED);
  assert_int_equal(v->n, n);
  for (int i = 0; i < n; i++) {
    double want = strtod(nums[i], NULL);
    if (memcmp(&v->u.nums[i], &want, 8) != 0)
      fail_msg("%s read as %.17g, strtod says %.17g", nums[i], v->u.nums[i],
               want);
  }
  mn__arena_release(&a);
  free(b.p);
}

static void test_parse_numbers(void **state) {
  const char *fixed[] = {"0",
                         "-0",
                         "1",
                         "-1",
                         "0.5",
                         "1e3",
                         "1E+3",
                         "1e-3",
                         "-12.5e3",
                         "123456789012345678",
                         "9007199254740993",
                         "18446744073709551616",
                         "123456789012345678901234567890",
                         "0.1000000000000000055511151231257827",
                         "1e22",
                         "1e23",
                         "1e-22",
                         "1e-23",
                         "4.9406564584124654e-324",
                         "1.7976931348623157e308",
                         "2.2250738585072014e-308",
                         "1e400",
                         "0.00000000000000000000001234",
                         "12345678.12345678",
                         "0.12345678",
                         "99999999999999999999e-20",
                         "3.141592653589793238462643383279"};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
    double want = strtod(fixed[i], NULL);
    double got = read_num(fixed[i]);
    if (memcmp(&got, &want, 8) != 0)
      fail_msg("%s read as %.17g, strtod says %.17g", fixed[i], got, want);
  }
  check_array((char **)fixed, sizeof fixed / sizeof fixed[0]);
  /* Random values in the forms clients write. */
  enum { N = 3000 };
  char *nums[N];
  for (int i = 0; i < N; i++) {
    nums[i] = malloc(40);
    float f = frand();
    double d = (double)f * pow(10, (int)(rbits() % 40) - 20);
    switch (i % 5) {
    case 0:
      snprintf(nums[i], 40, "%.9g", (double)f);
      break;
    case 1:
      snprintf(nums[i], 40, "%.17g", d);
      break;
    case 2:
      snprintf(nums[i], 40, "%g", d);
      break;
    case 3:
      snprintf(nums[i], 40, "%d", (int)(rbits() % 100000) - 50000);
      break;
    default:
      snprintf(nums[i], 40, "%.12e", d);
    }
    double want = strtod(nums[i], NULL), got = read_num(nums[i]);
    if (memcmp(&got, &want, 8) != 0)
      fail_msg("%s read as %.17g, strtod says %.17g", nums[i], got, want);
  }
  check_array(nums, N);
  for (int i = 0; i < N; i++)
    free(nums[i]);
  /* Not numbers. */
  const char *bad[] = {"-",    "1.",   ".5",  "1e",       "+1", "01",
                       "1.e3", "0x10", "NaN", "Infinity", "--1"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    mn__arena a = {0};
    mn__jerr e;
    if (mn__json_parse(&a, bad[i], strlen(bad[i]), 8, &e))
      fail_msg("%s parsed as a number", bad[i]);
    mn__arena_release(&a);
  }
}

/* --- base64 --------------------------------------------------------------- */

static void test_base64(void **state) {
  const char *plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
  const char *coded[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                         "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
  for (int i = 0; i < 7; i++) {
    char o[32];
    size_t n = mn__b64_encode((const uint8_t *)plain[i], strlen(plain[i]), o);
    assert_int_equal(n, strlen(coded[i]));
    assert_memory_equal(o, coded[i], n);
    uint8_t d[32];
    size_t bad;
    assert_int_equal(mn__b64_decoded_len(coded[i], strlen(coded[i])),
                     strlen(plain[i]));
    assert_int_equal(mn__b64_decode(coded[i], strlen(coded[i]), d, &bad),
                     (int64_t)strlen(plain[i]));
    assert_memory_equal(d, plain[i], strlen(plain[i]));
  }
  /* Unpadded input is accepted too. */
  uint8_t d[64];
  size_t bad = 0;
  assert_int_equal(mn__b64_decode("Zm9vYg", 6, d, &bad), 4);
  assert_memory_equal(d, "foob", 4);
  assert_int_equal(mn__b64_decode("Zm9v*mFy", 8, d, &bad), -1);
  assert_int_equal(bad, 4);
  assert_int_equal(mn__b64_decode("Zm9vY", 5, d, &bad), -1);
  /* Every length and byte value round trips. */
  for (size_t len = 0; len < 200; len++) {
    uint8_t in[200], back[200];
    char enc[300];
    for (size_t i = 0; i < len; i++)
      in[i] = (uint8_t)rbits();
    size_t n = mn__b64_encode(in, len, enc);
    assert_int_equal(n, (len + 2) / 3 * 4);
    assert_int_equal(mn__b64_decode(enc, n, back, &bad), (int64_t)len);
    assert_memory_equal(in, back, len);
  }
}

/* --- tensors through processEmbeddings --------------------------------- */

static char *b64_of(const void *p, size_t n) {
  char *o = malloc((n + 2) / 3 * 4 + 1);
  size_t k = mn__b64_encode(p, n, o);
  o[k] = '\0';
  return o;
}

static uint8_t *b64_bytes(const char *s, size_t *n) {
  uint8_t *o = malloc(strlen(s) + 4);
  size_t bad;
  int64_t k = mn__b64_decode(s, strlen(s), o, &bad);
  assert_true(k >= 0);
  *n = (size_t)k;
  return o;
}

static uint16_t ref_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1); /* round to nearest, ties to even */
  return (uint16_t)(u >> 16);
}

static float bf16_val(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static json_t *pe(fx *f, const char *emb, const char *opts, json_t **rep) {
  sbuf b = {0};
  sb_add(&b,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"processEmbeddings\","
         "\"params\":{\"embeddings\":%s%s%s}}",
         emb, opts ? ",\"options\":" : "", opts ? opts : "");
  json_t *res = fx_ok(f, b.p, rep);
  free(b.p);
  return res;
}

static void test_identity_json(void **state) {
  fx *f = fx_new();
  enum { R = 5, C = 19 };
  float *x = rand_matrix(R, C);
  x[3] = 1e-30f;
  x[4] = -3.0e38f;
  sbuf b = {0};
  sb_matrix(&b, x, R, C);
  json_t *rep;
  json_t *res = pe(f, b.p, NULL, &rep);
  double y[R * C];
  assert_int_equal(read_matrix(json_object_get(res, "processed"), y, C), R);
  for (int i = 0; i < R * C; i++)
    if ((float)y[i] != x[i])
      fail_msg("element %d: sent %.9g, got back %.9g", i, (double)x[i], y[i]);
  json_decref(rep);
  free(b.p);
  /* One vector in, one vector out; the Float32Array object form too. */
  res = pe(f, "[0.25,-1.5,3]", NULL, &rep);
  json_t *p = json_object_get(res, "processed");
  assert_int_equal(json_array_size(p), 3);
  assert_true(json_number_value(json_array_get(p, 1)) == -1.5);
  json_decref(rep);
  res = pe(f, "{\"0\":0.25,\"2\":3,\"1\":-1.5}", NULL, &rep);
  p = json_object_get(res, "processed");
  assert_int_equal(json_array_size(p), 3);
  assert_true(json_number_value(json_array_get(p, 1)) == -1.5);
  assert_true(json_number_value(json_array_get(p, 2)) == 3);
  json_decref(rep);
  res = pe(f, "[{\"0\":1,\"1\":2},{\"0\":3,\"1\":4}]", NULL, &rep);
  double y2[4];
  assert_int_equal(read_matrix(json_object_get(res, "processed"), y2, 2), 2);
  assert_true(y2[0] == 1 && y2[1] == 2 && y2[2] == 3 && y2[3] == 4);
  json_decref(rep);
  free(x);
  fx_free(f);
}

static void test_identity_typed(void **state) {
  fx *f = fx_new();
  enum { R = 3, C = 10 };
  float *x = rand_matrix(R, C);
  /* float32 base64: the same bytes come back. */
  char *enc = b64_of(x, sizeof(float) * R * C);
  sbuf b = {0};
  sb_add(&b, "{\"dtype\":\"float32\",\"shape\":[%d,%d],\"data\":\"%s\"}", R, C,
         enc);
  json_t *rep;
  json_t *res = pe(f, b.p, NULL, &rep);
  json_t *p = json_object_get(res, "processed");
  assert_string_equal(json_string_value(json_object_get(p, "dtype")),
                      "float32");
  assert_int_equal(
      json_integer_value(json_array_get(json_object_get(p, "shape"), 0)), R);
  assert_string_equal(json_string_value(json_object_get(p, "data")), enc);
  json_decref(rep);
  free(b.p);
  free(enc);
  /* float16 in: exact half values as float32 out. */
  _Float16 h[R * C];
  for (int i = 0; i < R * C; i++)
    h[i] = (_Float16)x[i];
  enc = b64_of(h, sizeof h);
  memset(&b, 0, sizeof b);
  sb_add(&b, "{\"dtype\":\"float16\",\"shape\":[%d,%d],\"data\":\"%s\"}", R, C,
         enc);
  res = pe(f, b.p, "{\"encoding\":\"json\"}", &rep);
  double y[R * C];
  read_matrix(json_object_get(res, "processed"), y, C);
  for (int i = 0; i < R * C; i++)
    assert_true((float)y[i] == (float)h[i]);
  json_decref(rep);
  free(b.p);
  free(enc);
  /* bfloat16 in. */
  uint16_t bf[R * C];
  for (int i = 0; i < R * C; i++)
    bf[i] = ref_bf16(x[i]);
  enc = b64_of(bf, sizeof bf);
  memset(&b, 0, sizeof b);
  sb_add(&b, "{\"dtype\":\"bfloat16\",\"shape\":[%d,%d],\"data\":\"%s\"}", R, C,
         enc);
  res = pe(f, b.p, "{\"encoding\":\"json\"}", &rep);
  read_matrix(json_object_get(res, "processed"), y, C);
  for (int i = 0; i < R * C; i++)
    assert_true((float)y[i] == bf16_val(bf[i]));
  json_decref(rep);
  free(b.p);
  free(enc);
  /* float64 in, one vector (shape [n]): the nearest floats, one vector
   * back. */
  double d[C];
  for (int i = 0; i < C; i++)
    d[i] = (double)x[i] + 1e-12;
  enc = b64_of(d, sizeof d);
  memset(&b, 0, sizeof b);
  sb_add(&b, "{\"dtype\":\"float64\",\"shape\":[%d],\"data\":\"%s\"}", C, enc);
  res = pe(f, b.p, NULL, &rep);
  p = json_object_get(res, "processed");
  assert_int_equal(json_array_size(json_object_get(p, "shape")), 1);
  size_t n;
  uint8_t *raw = b64_bytes(json_string_value(json_object_get(p, "data")), &n);
  assert_int_equal(n, C * 4);
  for (int i = 0; i < C; i++) {
    float v;
    memcpy(&v, raw + 4 * i, 4);
    assert_true(v == (float)d[i]);
  }
  free(raw);
  json_decref(rep);
  free(b.p);
  free(enc);
  free(x);
  fx_free(f);
}

/* Binary frames: float32 and float16 buffers in, buffers out. */
static json_t *bin_call(fx *f, const char *json, const void *pl, size_t pn,
                        uint8_t **payload, size_t *plen) {
  size_t n = strlen(json), len = 4 + n + pn;
  uint8_t *m = malloc(len);
  m[0] = (uint8_t)n;
  m[1] = (uint8_t)(n >> 8);
  m[2] = (uint8_t)(n >> 16);
  m[3] = (uint8_t)(n >> 24);
  memcpy(m + 4, json, n);
  memcpy(m + 4 + n, pl, pn);
  mn_rpc_reply rep;
  mn_rpc_handle(f->r, f->s, m, len, 1, 0, &rep);
  free(m);
  assert_int_equal(rep.binary, 1);
  const uint8_t *d = rep.data;
  uint32_t jn = d[0] | d[1] << 8 | d[2] << 16 | (uint32_t)d[3] << 24;
  assert_int_equal((4 + jn) % 8, 0);
  json_error_t e;
  json_t *j = json_loadb((const char *)d + 4, jn, 0, &e);
  assert_non_null(j);
  if (json_is_array(j))
    for (size_t i = 0; i < json_array_size(j); i++)
      check_envelope(json_array_get(j, i));
  else
    check_envelope(j);
  *plen = rep.len - 4 - jn;
  *payload = malloc(*plen + 1);
  memcpy(*payload, d + 4 + jn, *plen);
  mn_rpc_reply_free(&rep);
  return j;
}

static void test_binary_frames(void **state) {
  fx *f = fx_new();
  enum { R = 4, C = 33 };
  float *x = rand_matrix(R, C);
  uint8_t pad[3] = {9, 9, 9};
  uint8_t *pl = malloc(3 + sizeof(float) * R * C);
  memcpy(pl, pad, 3); /* an unaligned offset on purpose */
  memcpy(pl + 3, x, sizeof(float) * R * C);
  char js[400];
  snprintf(js, sizeof js,
           "{\"jsonrpc\":\"2.0\",\"id\":\"b\",\"method\":\"processEmbeddings\","
           "\"params\":{\"embeddings\":{\"dtype\":\"float32\",\"shape\":[%d,"
           "%d],\"buffer\":{\"offset\":3,\"length\":%d}},\"options\":{"
           "\"normalize\":true}}}",
           R, C, (int)(sizeof(float) * R * C));
  uint8_t *out;
  size_t on;
  json_t *j = bin_call(f, js, pl, 3 + sizeof(float) * R * C, &out, &on);
  json_t *p = json_object_get(json_object_get(j, "result"), "processed");
  json_t *buf = json_object_get(p, "buffer");
  assert_non_null(buf);
  size_t off = (size_t)json_integer_value(json_object_get(buf, "offset"));
  size_t len = (size_t)json_integer_value(json_object_get(buf, "length"));
  assert_int_equal(off % 8, 0);
  assert_int_equal(len, sizeof(float) * R * C);
  assert_true(off + len <= on);
  double ref[R * C];
  ref_normalize(x, ref, R, C);
  for (int i = 0; i < R * C; i++) {
    float v;
    memcpy(&v, out + off + 4 * i, 4);
    assert_true(fabs(v - ref[i]) <= 2e-7 * fabs(ref[i]) + 1e-7);
  }
  json_decref(j);
  free(out);
  /* float16 buffer in, binary int4 codes out, next to a JSON error-free
   * batch member. */
  _Float16 h[R * C];
  for (int i = 0; i < R * C; i++)
    h[i] = (_Float16)x[i];
  snprintf(js, sizeof js,
           "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"processEmbeddings\","
           "\"params\":{\"embeddings\":{\"dtype\":\"float16\",\"shape\":[%d,"
           "%d],\"buffer\":{\"offset\":0,\"length\":%d}},\"options\":{"
           "\"quantization\":\"int4\"}}},{\"jsonrpc\":\"2.0\",\"id\":2,"
           "\"method\":\"ping\"}]",
           R, C, (int)sizeof h);
  j = bin_call(f, js, h, sizeof h, &out, &on);
  assert_true(json_is_array(j));
  p = json_object_get(json_object_get(json_array_get(j, 0), "result"),
                      "processed");
  assert_string_equal(json_string_value(json_object_get(p, "dtype")), "int4");
  len = (size_t)json_integer_value(
      json_object_get(json_object_get(p, "buffer"), "length"));
  assert_int_equal(len, R * ((C + 1) / 2));
  json_t *scales = json_object_get(
      json_object_get(json_array_get(j, 0), "result"), "scales");
  for (int r = 0; r < R; r++) {
    double s = json_number_value(json_array_get(scales, (size_t)r));
    for (int c = 0; c < C; c++) {
      uint8_t byte = out[r * ((C + 1) / 2) + c / 2];
      int code = (byte >> (4 * (c & 1))) & 15;
      code = code >= 8 ? code - 16 : code;
      double xv = (double)(float)h[r * C + c];
      assert_true(fabs(code * s - xv) <= s * 0.5 + 1e-6);
    }
  }
  json_decref(j);
  free(out);
  free(pl);
  free(x);
  fx_free(f);
}

/* Quantized outputs in JSON against the packed bytes in base64, and both
 * against the double reference of the normalised input. */
static void test_quantized_outputs(void **state) {
  fx *f = fx_new();
  enum { R = 6, C = 21 };
  float *x = rand_matrix(R, C);
  double ref[R * C];
  ref_normalize(x, ref, R, C);
  sbuf b = {0};
  sb_matrix(&b, x, R, C);
  const char *kinds[] = {"int8", "int4", "binary",
                         "fp16", "bf16", "int8_affine"};
  const char *dtypes[] = {"int8",    "int4",     "binary",
                          "float16", "bfloat16", "uint8"};
  for (int k = 0; k < 6; k++) {
    char o1[120], o2[160];
    snprintf(o1, sizeof o1, "{\"normalize\":true,\"quantization\":\"%s\"}",
             kinds[k]);
    snprintf(o2, sizeof o2,
             "{\"normalize\":true,\"quantization\":\"%s\",\"encoding\":"
             "\"base64\"}",
             kinds[k]);
    json_t *rj, *rb;
    json_t *resj = pe(f, b.p, o1, &rj);
    json_t *resb = pe(f, b.p, o2, &rb);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(resj, "metadata"), "dtype")),
                        dtypes[k]);
    json_t *pb = json_object_get(resb, "processed");
    assert_string_equal(json_string_value(json_object_get(pb, "dtype")),
                        dtypes[k]);
    size_t n;
    uint8_t *raw =
        b64_bytes(json_string_value(json_object_get(pb, "data")), &n);
    size_t rb_ = strcmp(dtypes[k], "int4") == 0     ? (C + 1) / 2
                 : strcmp(dtypes[k], "binary") == 0 ? (C + 7) / 8
                 : strstr(dtypes[k], "16")          ? 2 * C
                                                    : C;
    assert_int_equal(n, R * rb_);
    json_t *pj = json_object_get(resj, "processed");
    json_t *sc = json_object_get(resj, "scales");
    json_t *af = json_object_get(resj, "affine");
    for (int r = 0; r < R; r++) {
      json_t *row = json_array_get(pj, (size_t)r);
      for (int c = 0; c < C; c++) {
        json_t *v = json_array_get(row, (size_t)c);
        double want = ref[r * C + c];
        const uint8_t *rr = raw + r * rb_;
        if (k == 0 || k == 1 || k == 5) {
          assert_true(json_is_integer(v));
          long code = (long)json_integer_value(v);
          long packed = k == 0 ? (int8_t)rr[c]
                        : k == 5
                            ? rr[c]
                            : (((rr[c / 2] >> (4 * (c & 1))) & 15) ^ 8) - 8;
          assert_int_equal(code, packed);
          double deq, step;
          if (k == 5) {
            double vmin = json_number_value(
                json_array_get(json_object_get(af, "vmin"), (size_t)c));
            step = json_number_value(
                json_array_get(json_object_get(af, "scale"), (size_t)c));
            deq = vmin + code * step;
            assert_true(code >= 0 && code <= 255);
          } else {
            step = json_number_value(json_array_get(sc, (size_t)r));
            deq = code * step;
            assert_true(k == 0 ? labs(code) <= 127 : code >= -8 && code <= 7);
          }
          assert_true(fabs(deq - want) <= step * 0.5 + 1e-6);
        } else if (k == 2) {
          long bit = (long)json_integer_value(v);
          assert_int_equal(bit, want > 0 ? 1 : 0);
          assert_int_equal((rr[c / 8] >> (c & 7)) & 1, bit);
        } else {
          double got = json_number_value(v);
          uint16_t hv;
          memcpy(&hv, rr + 2 * c, 2);
          float nf = (float)want;
          if (k == 3) {
            _Float16 w16 = (_Float16)nf;
            uint16_t wb;
            memcpy(&wb, &w16, 2);
            assert_int_equal(hv, wb);
            assert_true((float)got == (float)w16);
          } else {
            assert_int_equal(hv, ref_bf16(nf));
            assert_true((float)got == bf16_val(ref_bf16(nf)));
          }
        }
      }
    }
    free(raw);
    json_decref(rj);
    json_decref(rb);
  }
  /* quantization: true is int8; quantization_bits 1 is binary. */
  json_t *rep;
  json_t *res = pe(f, b.p, "{\"quantization\":true}", &rep);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(res, "metadata"), "dtype")),
                      "int8");
  json_decref(rep);
  res = pe(f, b.p, "{\"quantization_bits\":1}", &rep);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(res, "metadata"), "dtype")),
                      "binary");
  json_decref(rep);
  res =
      pe(f, b.p, "{\"precision\":\"bfloat16\",\"encoding\":\"base64\"}", &rep);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(res, "processed"), "dtype")),
                      "bfloat16");
  json_decref(rep);
  free(b.p);
  free(x);
  fx_free(f);
}

/* A text request may ask for a binary reply. */
static void test_text_to_binary(void **state) {
  fx *f = fx_new();
  const char *m = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                  "\"processEmbeddings\",\"params\":{\"embeddings\":[[3,4]],"
                  "\"options\":{\"normalize\":true,\"encoding\":\"binary\"}}}";
  mn_rpc_reply rep;
  mn_rpc_handle(f->r, f->s, m, strlen(m), 0, 0, &rep);
  assert_int_equal(rep.binary, 1);
  const uint8_t *d = rep.data;
  uint32_t jn = d[0] | d[1] << 8 | d[2] << 16 | (uint32_t)d[3] << 24;
  json_error_t e;
  json_t *j = json_loadb((const char *)d + 4, jn, 0, &e);
  assert_non_null(j);
  json_t *buf = json_object_get(
      json_object_get(json_object_get(j, "result"), "processed"), "buffer");
  size_t off = (size_t)json_integer_value(json_object_get(buf, "offset"));
  float v[2];
  memcpy(v, d + 4 + jn + off, 8);
  assert_true(fabsf(v[0] - 0.6f) < 1e-7f && fabsf(v[1] - 0.8f) < 1e-7f);
  json_decref(j);
  mn_rpc_reply_free(&rep);
  fx_free(f);
}

/* A full-width PCA is a rotation: distances between rows are kept. */
static void test_pca_output(void **state) {
  fx *f = fx_new();
  enum { R = 30, C = 6 };
  float *x = rand_matrix(R, C);
  sbuf b = {0};
  sb_add(&b,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"fitPCA\",\"params\":"
         "{\"name\":\"full\",\"n_components\":%d,\"embeddings\":",
         C);
  sb_matrix(&b, x, R, C);
  sb_add(&b, "}}");
  json_t *rep;
  json_t *res = fx_ok(f, b.p, &rep);
  assert_true(
      fabs(json_number_value(json_object_get(res, "total_explained_variance")) -
           1.0) < 1e-4);
  json_decref(rep);
  free(b.p);
  memset(&b, 0, sizeof b);
  sb_matrix(&b, x, R, C);
  res = pe(f, b.p, "{\"pca_model\":\"full\"}", &rep);
  double y[R * C];
  read_matrix(json_object_get(res, "processed"), y, C);
  for (int i = 0; i < R; i++)
    for (int j = i + 1; j < R; j++) {
      double dx = 0, dy = 0;
      for (int c = 0; c < C; c++) {
        double a = (double)x[i * C + c] - x[j * C + c];
        double q = y[i * C + c] - y[j * C + c];
        dx += a * a;
        dy += q * q;
      }
      assert_true(fabs(sqrt(dx) - sqrt(dy)) <= 1e-4 * sqrt(dx) + 1e-6);
    }
  /* The projection is centred. */
  for (int c = 0; c < C; c++) {
    double m = 0;
    for (int i = 0; i < R; i++)
      m += y[i * C + c];
    assert_true(fabs(m / R) < 1e-5);
  }
  json_t *md = json_object_get(res, "metadata");
  assert_int_equal(
      json_array_size(json_object_get(md, "explained_variance_ratio")), C);
  json_decref(rep);
  /* Fewer components: the first k of the model, same values. */
  res = pe(f, b.p, "{\"pca_model\":\"full\",\"reduce_dimensions\":2}", &rep);
  double y2[R * 2];
  read_matrix(json_object_get(res, "processed"), y2, 2);
  for (int i = 0; i < R; i++)
    for (int c = 0; c < 2; c++)
      assert_true(fabs(y2[i * 2 + c] - y[i * C + c]) <= 1e-5);
  json_decref(rep);
  /* Fitted on the batch: min(256, width, rows) = 6 components. */
  res = pe(f, b.p, "{\"dimension_reduction\":true}", &rep);
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(res, "metadata"), "dimensions")),
                   C);
  json_decref(rep);
  free(b.p);
  free(x);
  fx_free(f);
}

/* --- tensor errors name the row --------------------------------------- */

static void test_tensor_errors(void **state) {
  fx *f = fx_new();
  const char *pre = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
                    "\"processEmbeddings\",\"params\":{\"embeddings\":";
  struct {
    const char *emb;
    const char *needle;
  } c[] = {
      {"[[1,2],[3]]", "params.embeddings[1] has 1 numbers but row 0 has 2"},
      {"[]", "params.embeddings is an empty array"},
      {"[[]]", "params.embeddings[0] is an empty array"},
      {"[[1,2],[3,\"x\"]]", "params.embeddings[1][1] is \"x\""},
      {"[[1,2],5]", "params.embeddings[1] is 5 but row 0 is an array"},
      {"[1,null]", "params.embeddings[1] is null"},
      {"[[1,2],[3,1e39]]",
       "params.embeddings[1][1] is 1e+39, outside the float32 range"},
      {"\"abc\"", "params.embeddings must be an array of numbers"},
      {"{}", "params.embeddings is an empty object"},
      {"{\"0\":1,\"x\":2}", "has the key \"x\""},
      {"{\"0\":1,\"0\":2}", "has the key \"0\" twice"},
      {"{\"0\":1,\"1\":\"a\"}", "params.embeddings[\"1\"] is \"a\""},
      {"{\"dtype\":\"int8\",\"shape\":[1,2],\"data\":\"AAA=\"}",
       "params.embeddings.dtype must be one of \"float32\""},
      {"{\"dtype\":\"float32\",\"shape\":[2,2],\"data\":\"AAAAAA==\"}",
       "params.embeddings.data decodes to 4 bytes, but dtype float32 with "
       "shape [2, 2] needs 16 bytes"},
      {"{\"dtype\":\"float32\",\"shape\":[1,1],\"data\":\"AA*AAA==\"}",
       "not valid base64: character 2"},
      {"{\"dtype\":\"float32\",\"shape\":[0,1],\"data\":\"\"}",
       "params.embeddings.shape[0] must be a positive integer"},
      {"{\"dtype\":\"float32\",\"shape\":[1,2,3],\"data\":\"\"}",
       "params.embeddings.shape must be [rows, columns] or [length]"},
      {"{\"dtype\":\"float32\",\"data\":\"\"}",
       "params.embeddings.shape is missing"},
      {"{\"dtype\":\"float32\",\"shape\":[1]}", "has neither data"},
      {"{\"dtype\":\"float32\",\"shape\":[1],\"data\":\"AAAAAA==\","
       "\"extra\":1}",
       "unknown member \"extra\""},
  };
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    char m[600];
    snprintf(m, sizeof m, "%s%s}}", pre, c[i].emb);
    fx_err(f, m, MN_RPC_INVALID_PARAMS, c[i].needle);
  }
  /* NaN and Inf can travel in base64: refused, naming row and column. */
  float v[3 * 4] = {0};
  v[2 * 4 + 1] = NAN;
  char *enc = b64_of(v, sizeof v);
  char m[600];
  snprintf(m, sizeof m,
           "%s{\"dtype\":\"float32\",\"shape\":[3,4],\"data\":\"%s\"}}}", pre,
           enc);
  fx_err(f, m, MN_RPC_INVALID_PARAMS, "row 2, column 1 is NaN");
  free(enc);
  v[2 * 4 + 1] = 0;
  v[1 * 4 + 3] = -INFINITY;
  enc = b64_of(v, sizeof v);
  snprintf(m, sizeof m,
           "%s{\"dtype\":\"float32\",\"shape\":[3,4],\"data\":\"%s\"}}}", pre,
           enc);
  fx_err(f, m, MN_RPC_INVALID_PARAMS, "row 1, column 3 is infinite");
  free(enc);
  uint16_t h[4] = {0x3c00, 0x7c00, 0, 0}; /* 1.0, +Inf */
  enc = b64_of(h, sizeof h);
  snprintf(m, sizeof m,
           "%s{\"dtype\":\"float16\",\"shape\":[2,2],\"data\":\"%s\"}}}", pre,
           enc);
  fx_err(f, m, MN_RPC_INVALID_PARAMS, "row 0, column 1 is infinite");
  free(enc);
  double big[2] = {1.0, 1e300};
  enc = b64_of(big, sizeof big);
  snprintf(m, sizeof m,
           "%s{\"dtype\":\"float64\",\"shape\":[1,2],\"data\":\"%s\"}}}", pre,
           enc);
  fx_err(f, m, MN_RPC_INVALID_PARAMS,
         "row 0, column 1 is 1e+300, outside the float32 range");
  free(enc);
  fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fmt_f32),
      cmocka_unit_test(test_fmt_f64),
      cmocka_unit_test(test_parse_numbers),
      cmocka_unit_test(test_base64),
      cmocka_unit_test(test_identity_json),
      cmocka_unit_test(test_identity_typed),
      cmocka_unit_test(test_binary_frames),
      cmocka_unit_test(test_quantized_outputs),
      cmocka_unit_test(test_text_to_binary),
      cmocka_unit_test(test_pca_output),
      cmocka_unit_test(test_tensor_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
