/*
 * codec.c - tensors in and out of JSON-RPC messages.
 *
 * Four encodings are read:
 *  - JSON numbers: [1.5, 2, ...] (one vector) or [[...], [...]] (rows);
 *  - the object JSON.stringify makes of a Float32Array, {"0":1.5,"1":2}
 *    (one vector), or an array of such objects (rows);
 *  - {"dtype", "shape", "data": "<base64 of little-endian values>"};
 *  - in a binary frame, {"dtype", "shape", "buffer": {"offset", "length"}}
 *    naming bytes of the frame's payload.
 * Input dtypes are float32, float16, bfloat16 and float64; everything is
 * turned into one dense float32 host tensor and checked to be finite.
 *
 * Results are written in JSON numbers (quantized codes as integers, int4
 * unpacked, binary as 0/1), base64 or binary buffers (packed bytes, the
 * dtype named). Rows of packed dtypes start on a byte: an int4 row is
 * ceil(cols / 2) bytes, low nibble first; a binary row ceil(cols / 8)
 * bytes, least significant bit first.
 *
 * DESIGN: the hot paths write straight into the reply buffer: one reserve
 * per row, then digits or base64 characters, no intermediate strings.
 */
#include "rpc/rpc_internal.h"

#include <float.h>
#include <pthread.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the tensor codec assumes a little-endian host"
#endif

/* ------------------------------------------------------------------------
 * Base64
 * ---------------------------------------------------------------------- */
static const char b64_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Value of each byte in base64, 255 = not in the alphabet. '-' and '_'
 * (base64url) are accepted as well. */
static const uint8_t b64_val[256] = {
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 62,  255,
    62,  255, 63,  52,  53,  54,  55,  56,  57,  58,  59,  60,  61,  255, 255,
    255, 255, 255, 255, 255, 0,   1,   2,   3,   4,   5,   6,   7,   8,   9,
    10,  11,  12,  13,  14,  15,  16,  17,  18,  19,  20,  21,  22,  23,  24,
    25,  255, 255, 255, 255, 63,  255, 26,  27,  28,  29,  30,  31,  32,  33,
    34,  35,  36,  37,  38,  39,  40,  41,  42,  43,  44,  45,  46,  47,  48,
    49,  50,  51,  255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255,
};

size_t mn__b64_encode_scalar(const uint8_t *in, size_t n, char *out) {
  char *o = out;
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    o[0] = b64_chars[v >> 18];
    o[1] = b64_chars[(v >> 12) & 63];
    o[2] = b64_chars[(v >> 6) & 63];
    o[3] = b64_chars[v & 63];
    o += 4;
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    o[0] = b64_chars[v >> 18];
    o[1] = b64_chars[(v >> 12) & 63];
    o[2] = '=';
    o[3] = '=';
    o += 4;
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    o[0] = b64_chars[v >> 18];
    o[1] = b64_chars[(v >> 12) & 63];
    o[2] = b64_chars[(v >> 6) & 63];
    o[3] = '=';
    o += 4;
  }
  return (size_t)(o - out);
}

size_t mn__b64_decoded_len(const char *in, size_t n) {
  while (n > 0 && in[n - 1] == '=')
    n--;
  return n / 4 * 3 + (n % 4 == 3 ? 2 : n % 4 == 2 ? 1 : 0);
}

int mn__b64_unpad(const char *in, size_t *n, size_t *bad) {
  size_t pad = 0;
  while (*n > 0 && in[*n - 1] == '=' && pad < 2) {
    (*n)--;
    pad++;
  }
  if (*n % 4 == 1) {
    *bad = *n;
    return -1;
  }
  return 0;
}

int64_t mn__b64_decode_scalar(const char *in, size_t n, uint8_t *out,
                              size_t *bad) {
  if (mn__b64_unpad(in, &n, bad))
    return -1;
  return mn__b64_decode_body(in, n, out, bad);
}

int64_t mn__b64_decode_body(const char *in, size_t n, uint8_t *out,
                            size_t *bad) {
  const unsigned char *p = (const unsigned char *)in;
  uint8_t *o = out;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    uint32_t a = b64_val[p[i]], b = b64_val[p[i + 1]], c = b64_val[p[i + 2]],
             d = b64_val[p[i + 3]];
    if ((a | b | c | d) > 63) {
      for (size_t k = i; k < i + 4; k++)
        if (b64_val[p[k]] > 63) {
          *bad = k;
          return -1;
        }
    }
    uint32_t v = a << 18 | b << 12 | c << 6 | d;
    o[0] = (uint8_t)(v >> 16);
    o[1] = (uint8_t)(v >> 8);
    o[2] = (uint8_t)v;
    o += 3;
  }
  size_t rest = n - i;
  if (rest) {
    uint32_t v = 0;
    for (size_t k = 0; k < rest; k++) {
      uint32_t x = b64_val[p[i + k]];
      if (x > 63) {
        *bad = i + k;
        return -1;
      }
      v |= x << (18 - 6 * k);
    }
    *o++ = (uint8_t)(v >> 16);
    if (rest == 3)
      *o++ = (uint8_t)(v >> 8);
  }
  return (int64_t)(o - out);
}

/* The AVX2 code where the CPU has it (b64_avx2.c), chosen once. */
static size_t (*b64_enc)(const uint8_t *, size_t, char *);
static int64_t (*b64_dec)(const char *, size_t, uint8_t *, size_t *);
static pthread_once_t b64_once = PTHREAD_ONCE_INIT;

static void b64_pick(void) {
  b64_enc = mn__b64_encode_scalar;
  b64_dec = mn__b64_decode_scalar;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) {
    b64_enc = mn__b64_encode_avx2;
    b64_dec = mn__b64_decode_avx2;
  }
#endif
}

size_t mn__b64_encode(const uint8_t *in, size_t n, char *out) {
  pthread_once(&b64_once, b64_pick);
  return b64_enc(in, n, out);
}

int64_t mn__b64_decode(const char *in, size_t n, uint8_t *out, size_t *bad) {
  pthread_once(&b64_once, b64_pick);
  return b64_dec(in, n, out, bad);
}

int mn__b64_have_avx2(void) {
  pthread_once(&b64_once, b64_pick);
  return b64_enc != mn__b64_encode_scalar;
}

/* ------------------------------------------------------------------------
 * Decoding
 * ---------------------------------------------------------------------- */
#define MN__MAX_ELEMS ((int64_t)1 << 34)

static const char *const accepted_forms =
    "an array of numbers (one vector), an array of such arrays (one row "
    "each), the object JSON.stringify makes of a Float32Array "
    "({\"0\": 0.5, \"1\": ...}), {\"dtype\", \"shape\", \"data\": "
    "\"<base64>\"}, or in a binary frame {\"dtype\", \"shape\", \"buffer\": "
    "{\"offset\", \"length\"}}";

/* Convert one row of doubles, refusing values outside float32's range. */
static int row_from_doubles(mn__call *c, const double *src, float *dst,
                            int64_t n, const char *path, int64_t row,
                            int one_d) {
  /* Inf (a number beyond the float32 range) by its exponent bits: an OR
   * the compiler vectorises, where a float sum would be one long chain. */
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; i++) {
    float f = (float)src[i];
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    dst[i] = f;
    bad |= (u & 0x7f800000u) == 0x7f800000u;
  }
  if (!bad)
    return 0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(dst[i])) {
      char num[40];
      size_t k = mn__fmt_f64(num, src[i]);
      num[k] = '\0';
      if (one_d)
        return mn__fail(c, MN_RPC_INVALID_PARAMS,
                        "%s[%lld] is %s, outside the float32 range (about "
                        "+-3.4e38): row 0, column %lld is not a finite "
                        "float32",
                        path, (long long)i, num, (long long)i);
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s[%lld][%lld] is %s, outside the float32 range "
                      "(about +-3.4e38): row %lld, column %lld is not a "
                      "finite float32",
                      path, (long long)row, (long long)i, num, (long long)row,
                      (long long)i);
    }
  }
  return 0;
}

/* Where in an array that is not all numbers the first non-number is. */
static int not_numbers(mn__call *c, const mn__jv *arr, const char *path,
                       int64_t row, int one_d) {
  char b[96];
  for (uint32_t i = 0; i < arr->n; i++) {
    const mn__jv *it = &arr->u.items[i];
    if (it->type != MN__J_NUM) {
      if (one_d)
        return mn__fail(c, MN_RPC_INVALID_PARAMS,
                        "%s[%u] is %s; every element of a vector must be a "
                        "number",
                        path, i, mn__jv_brief(it, b, sizeof b));
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s[%lld][%u] is %s; every element of row %lld must be "
                      "a number",
                      path, (long long)row, i, mn__jv_brief(it, b, sizeof b),
                      (long long)row);
    }
  }
  return mn__fail(c, MN_RPC_INTERNAL_ERROR, "%s: unexpected array", path);
}

/* {"0": x0, "1": x1, ...} into dst[n]; keys in order is the fast path. */
static int f32obj_row(mn__call *c, const mn__jv *o, float *dst,
                      const char *path, int64_t row, int one_d) {
  char where[300];
  if (one_d)
    snprintf(where, sizeof where, "%s", path);
  else
    snprintf(where, sizeof where, "%s[%lld]", path, (long long)row);
  uint32_t n = o->n;
  uint8_t *seen = NULL;
  for (uint32_t i = 0; i < n; i++) {
    const mn__jmember *m = &o->u.mem[i];
    uint64_t idx = 0;
    int ok = m->klen > 0 && m->klen <= 10 && (m->klen == 1 || m->key[0] != '0');
    for (uint32_t k = 0; ok && k < m->klen; k++) {
      unsigned d = (unsigned)(m->key[k] - '0');
      if (d > 9)
        ok = 0;
      else
        idx = idx * 10 + d;
    }
    if (!ok || idx >= n) {
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s has the key \"%.40s\": a Float32Array object must "
                      "have the keys \"0\" to \"%u\" and nothing else",
                      where, m->key, n - 1);
    }
    if (idx != i) {
      if (!seen) {
        seen = mn__arena_alloc(c->a, n);
        if (!seen)
          return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
        memset(seen, 0, n);
        for (uint32_t k = 0; k < i; k++)
          seen[k] = 1;
      }
    }
    if (seen) {
      if (seen[idx])
        return mn__fail(c, MN_RPC_INVALID_PARAMS, "%s has the key \"%s\" twice",
                        where, m->key);
      seen[idx] = 1;
    }
    if (m->val.type != MN__J_NUM) {
      char b[96];
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s[\"%s\"] is %s; every element must be a number", where,
                      m->key, mn__jv_brief(&m->val, b, sizeof b));
    }
    float f = (float)m->val.u.num;
    if (!isfinite(f)) {
      char b[96];
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s[\"%s\"] is %s, outside the float32 range (about "
                      "+-3.4e38): row %lld, column %llu is not a finite "
                      "float32",
                      where, m->key, mn__jv_brief(&m->val, b, sizeof b),
                      (long long)row, (unsigned long long)idx);
    }
    dst[idx] = f;
  }
  return 0;
}

static int is_f32obj(const mn__jv *v) {
  return v->type == MN__J_OBJ && v->n > 0 && v->u.mem[0].klen > 0 &&
         (unsigned)(v->u.mem[0].key[0] - '0') <= 9;
}

/* out as one vector of n floats, their room in the request's arena (for
 * the caller to fill); NULL when out of memory. */
static float *one_vector(mn__call *c, mn__tin *out, uint32_t n) {
  out->rows = 1;
  out->cols = n;
  out->one_d = 1;
  out->data = mn__arena_alloc(c->a, (size_t)n * sizeof(float));
  return out->data;
}

static int decode_json(mn__call *c, const mn__jv *v, const char *path,
                       mn__tin *out) {
  char b[96];
  if (v->n == 0)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s is an empty array: send at least one vector", path);
  if (v->flags & MN__JF_PACKED) {
    if (!one_vector(c, out, v->n))
      return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
    return row_from_doubles(c, v->u.nums, out->data, v->n, path, 0, 1);
  }
  const mn__jv *first = &v->u.items[0];
  if (first->type == MN__J_NUM)
    return not_numbers(c, v, path, 0, 1);
  int64_t rows = v->n, cols = first->n;
  int arrays = first->type == MN__J_ARR;
  if (!arrays && !is_f32obj(first))
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s[0] is %s; embeddings must be %s", path,
                    mn__jv_brief(first, b, sizeof b), accepted_forms);
  if (arrays && cols == 0)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s[0] is an empty array: every row needs at least one "
                    "number",
                    path);
  /* Every row's shape first, so that a ragged input is refused before
   * anything the size of row 0 times the row count is allocated. */
  for (int64_t r = 0; r < rows; r++) {
    const mn__jv *row = &v->u.items[r];
    if (arrays && row->type != MN__J_ARR)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s[%lld] is %s but row 0 is an array: every row "
                      "must be an array of %lld numbers",
                      path, (long long)r, mn__jv_brief(row, b, sizeof b),
                      (long long)cols);
    if (!arrays && row->type != MN__J_OBJ)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s[%lld] is %s but row 0 is a Float32Array object: "
                      "every row must be one",
                      path, (long long)r, mn__jv_brief(row, b, sizeof b));
    if ((int64_t)row->n != cols)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s[%lld] has %u %s but row 0 has %lld: every "
                      "row must have the same length",
                      path, (long long)r, row->n,
                      arrays ? "numbers" : "elements", (long long)cols);
    if (arrays && !(row->flags & MN__JF_PACKED))
      return not_numbers(c, row, path, r, 0);
  }
  if (rows * cols > MN__MAX_ELEMS)
    return mn__fail(c, MN_RPC_INVALID_PARAMS, "%s is too large", path);
  float *d = mn__arena_alloc(c->a, (size_t)(rows * cols) * sizeof(float));
  if (!d)
    return mn__fail(c, MN_RPC_RESOURCE_ERROR,
                    "out of memory for %lld x %lld embeddings", (long long)rows,
                    (long long)cols);
  for (int64_t r = 0; r < rows; r++) {
    const mn__jv *row = &v->u.items[r];
    int rc = arrays ? row_from_doubles(c, row->u.nums, d + r * cols, cols, path,
                                       r, 0)
                    : f32obj_row(c, row, d + r * cols, path, r, 0);
    if (rc)
      return rc;
  }
  out->rows = rows;
  out->cols = cols;
  out->data = d;
  out->one_d = 0;
  return 0;
}

typedef enum in_dtype { IN_F32, IN_F16, IN_BF16, IN_F64 } in_dtype;

static int parse_in_dtype(const mn__jv *v, in_dtype *dt, int *esize) {
  static const struct {
    const char *name;
    in_dtype dt;
    int size;
  } names[] = {
      {"float32", IN_F32, 4},   {"f32", IN_F32, 4},   {"fp32", IN_F32, 4},
      {"float16", IN_F16, 2},   {"f16", IN_F16, 2},   {"fp16", IN_F16, 2},
      {"bfloat16", IN_BF16, 2}, {"bf16", IN_BF16, 2}, {"float64", IN_F64, 8},
      {"f64", IN_F64, 8},       {"fp64", IN_F64, 8}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (mn__jstr_eq(v, names[i].name)) {
      *dt = names[i].dt;
      *esize = names[i].size;
      return 0;
    }
  return -1;
}

static int decode_typed(mn__call *c, const mn__jv *v, const char *path,
                        mn__tin *out, int check) {
  char b[96];
  const mn__jv *dtv = NULL, *shape = NULL, *data = NULL, *buffer = NULL;
  for (uint32_t i = 0; i < v->n; i++) {
    const mn__jmember *m = &v->u.mem[i];
    if (strcmp(m->key, "dtype") == 0)
      dtv = &m->val;
    else if (strcmp(m->key, "shape") == 0)
      shape = &m->val;
    else if (strcmp(m->key, "data") == 0)
      data = &m->val;
    else if (strcmp(m->key, "buffer") == 0)
      buffer = &m->val;
    else
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s has an unknown member \"%.40s\"; a typed tensor "
                      "has dtype, shape, and data (base64) or buffer "
                      "(binary frames)",
                      path, m->key);
  }
  if (!dtv)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s.dtype is missing: name the element type (float32, "
                    "float16, bfloat16 or float64)",
                    path);
  in_dtype dt;
  int esize;
  if (parse_in_dtype(dtv, &dt, &esize))
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s.dtype must be one of \"float32\", \"float16\", "
                    "\"bfloat16\", \"float64\"; got %s",
                    path, mn__jv_brief(dtv, b, sizeof b));
  if (!shape)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s.shape is missing: give [rows, columns] or [length]",
                    path);
  if (shape->type != MN__J_ARR || shape->n < 1 || shape->n > 2 ||
      !(shape->flags & MN__JF_PACKED))
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s.shape must be [rows, columns] or [length] with "
                    "positive integers; got %s",
                    path, mn__jv_brief(shape, b, sizeof b));
  int64_t dims[2];
  for (uint32_t i = 0; i < shape->n; i++) {
    double d = shape->u.nums[i];
    if (!(d >= 1 && d <= 1e12 && d == floor(d)))
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.shape[%u] must be a positive integer; got %g", path,
                      i, d);
    dims[i] = (int64_t)d;
  }
  int64_t rows = shape->n == 2 ? dims[0] : 1;
  int64_t cols = shape->n == 2 ? dims[1] : dims[0];
  if (rows > MN__MAX_ELEMS / cols)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s.shape [%lld, %lld] is too large", path, (long long)rows,
                    (long long)cols);
  size_t need = (size_t)(rows * cols) * (size_t)esize;
  const uint8_t *src = NULL;
  uint8_t *decoded = NULL;
  if (data && buffer)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s has both data and buffer; send one of them", path);
  if (data) {
    if (data->type != MN__J_STR)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.data must be a base64 string; got %s", path,
                      mn__jv_brief(data, b, sizeof b));
    size_t have = mn__b64_decoded_len(data->u.str, data->n);
    if (have != need)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.data decodes to %zu bytes, but dtype %.*s with "
                      "shape [%lld, %lld] needs %zu bytes (%lld x %lld x %d)",
                      path, have, (int)dtv->n, dtv->u.str, (long long)rows,
                      (long long)cols, need, (long long)rows, (long long)cols,
                      esize);
    decoded = mn__arena_alloc(c->a, need + 3);
    if (!decoded)
      return mn__fail(c, MN_RPC_RESOURCE_ERROR,
                      "out of memory for %zu bytes of embeddings", need);
    size_t bad = 0;
    if (mn__b64_decode(data->u.str, data->n, decoded, &bad) < 0) {
      unsigned char ch = bad < data->n ? (unsigned char)data->u.str[bad] : 0;
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.data is not valid base64: character %zu (%s%c%s) "
                      "is not in the base64 alphabet",
                      path, bad, ch >= 0x20 && ch < 0x7f ? "'" : "byte ",
                      ch >= 0x20 && ch < 0x7f ? ch : '?',
                      ch >= 0x20 && ch < 0x7f ? "'" : "");
    }
    src = decoded;
    out->enc = MN__ENC_BASE64;
  } else if (buffer) {
    if (c->text_only)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.buffer refers to the payload of a binary WebSocket "
                      "frame, which HTTP (/mcp) does not carry: send the "
                      "values as nested arrays or as base64 \"data\"",
                      path);
    if (!c->binary_in)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.buffer refers to the payload of a binary frame, "
                      "but this message came as a text frame: send a binary "
                      "frame, or use \"data\" with base64",
                      path);
    const mn__jv *off = mn__jobj_get(buffer, "offset");
    const mn__jv *len = mn__jobj_get(buffer, "length");
    if (buffer->type != MN__J_OBJ || !off || !len || off->type != MN__J_NUM ||
        len->type != MN__J_NUM || off->u.num < 0 || len->u.num < 0 ||
        off->u.num != floor(off->u.num) || len->u.num != floor(len->u.num))
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.buffer must be {\"offset\": <bytes from the start "
                      "of the payload>, \"length\": <bytes>} with "
                      "non-negative integers; got %s",
                      path, mn__jv_brief(buffer, b, sizeof b));
    double o = off->u.num, l = len->u.num;
    if (o + l > (double)c->payload_len)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.buffer {offset %.0f, length %.0f} reaches past the "
                      "end of the binary payload, which is %zu bytes",
                      path, o, l, c->payload_len);
    if ((size_t)l != need)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.buffer.length is %.0f bytes, but dtype %.*s with "
                      "shape [%lld, %lld] needs %zu bytes",
                      path, l, (int)dtv->n, dtv->u.str, (long long)rows,
                      (long long)cols, need);
    src = c->payload + (size_t)o;
    out->enc = MN__ENC_BINARY;
  } else {
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s has neither data (base64) nor buffer (binary "
                    "frame): say where the values are",
                    path);
  }
  size_t n = (size_t)(rows * cols);
  float *d;
  if (dt == IN_F32 && (decoded || (uintptr_t)src % sizeof(float) == 0)) {
    /* float32 is used where it lies: the decoded base64 (arena memory),
     * or the request's own payload, which outlives the call and which
     * nothing writes to (every consumer of the input takes it const). */
    d = (float *)(void *)(decoded ? decoded : (uint8_t *)(uintptr_t)src);
  } else {
    d = mn__arena_alloc(c->a, n * sizeof(float));
    if (!d)
      return mn__fail(c, MN_RPC_RESOURCE_ERROR,
                      "out of memory for %lld x %lld embeddings",
                      (long long)rows, (long long)cols);
  }
  switch (dt) {
  case IN_F32:
    if ((const uint8_t *)d != src)
      memcpy(d, src, n * 4);
    break;
  case IN_F16:
  case IN_BF16: {
    const uint16_t *h = (const uint16_t *)src;
    uint16_t *tmp = NULL;
    if ((uintptr_t)src % 2) {
      tmp = mn__arena_alloc(c->a, n * 2);
      if (!tmp)
        return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
      memcpy(tmp, src, n * 2);
      h = tmp;
    }
    if (dt == IN_F16)
      mn_f16_to_f32_n(h, d, n);
    else
      mn_bf16_to_f32_n(h, d, n);
    break;
  }
  case IN_F64:
    for (size_t i = 0; i < n; i++) {
      double x;
      memcpy(&x, src + 8 * i, 8);
      d[i] = (float)x;
      if (isfinite(x) && !isfinite(d[i]))
        return mn__fail(c, MN_RPC_INVALID_PARAMS,
                        "%s: row %lld, column %lld is %g, outside the "
                        "float32 range (about +-3.4e38)",
                        path, (long long)(i / (size_t)cols),
                        (long long)(i % (size_t)cols), x);
    }
    break;
  }
  out->data = d;
  out->rows = rows;
  out->cols = cols;
  out->one_d = shape->n == 1;
  if (!check) {
    out->unchecked = 1;
    return 0;
  }
  return mn__tensor_check(c, out, path);
}

int mn__tensor_check(mn__call *c, const mn__tin *in, const char *path) {
  mn_tensor t = mn_tensor_host(in->data, MN_DTYPE_F32, in->rows, in->cols);
  if (mn_tensor_check_finite(&t) != MN_OK)
    return mn__fail(c, MN_RPC_INVALID_PARAMS, "%s: %s", path, mn_errmsg());
  return 0;
}

static int decode(mn__call *c, const mn__jv *v, const char *path, mn__tin *out,
                  int check) {
  memset(out, 0, sizeof *out);
  char b[96];
  if (!v)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s is required but missing; it must be %s", path,
                    accepted_forms);
  out->enc = MN__ENC_JSON;
  if (v->type == MN__J_ARR)
    return decode_json(c, v, path, out);
  if (v->type == MN__J_OBJ) {
    if (mn__jobj_get(v, "dtype") || mn__jobj_get(v, "shape") ||
        mn__jobj_get(v, "data") || mn__jobj_get(v, "buffer"))
      return decode_typed(c, v, path, out, check);
    if (is_f32obj(v)) {
      if (!one_vector(c, out, v->n))
        return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
      return f32obj_row(c, v, out->data, path, 0, 1);
    }
    if (v->n == 0)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s is an empty object: send at least one vector", path);
  }
  return mn__fail(c, MN_RPC_INVALID_PARAMS, "%s must be %s; got %s", path,
                  accepted_forms, mn__jv_brief(v, b, sizeof b));
}

int mn__tensor_decode(mn__call *c, const mn__jv *v, const char *path,
                      mn__tin *out) {
  return decode(c, v, path, out, 1);
}

int mn__tensor_decode_unchecked(mn__call *c, const mn__jv *v, const char *path,
                                mn__tin *out) {
  return decode(c, v, path, out, 0);
}

/* ------------------------------------------------------------------------
 * Encoding
 * ---------------------------------------------------------------------- */
static const char *dtype_wire_name(mn_dtype dt) {
  return mn_dtype_name(dt);
}

/* One row as a JSON array written straight into the buffer. */
/* One row of floats: the list formatter, float32 as it lies, half
 * types widened a block at a time. */
static void json_row_floats(mn__jw *w, const mn_tensor *t, int64_t r) {
  const uint8_t *row = mn_tensor_row(t, r);
  size_t n = (size_t)t->cols;
  mn__jw_value_begin(w);
  /* 24 bytes and a comma per number, and the list's 32 bytes of slack. */
  char *o = mn__jw_reserve(w, n * 25 + 34);
  if (!o)
    return;
  char *s = o;
  *o++ = '[';
  if (t->dtype == MN_DTYPE_F32 && (uintptr_t)row % sizeof(float) == 0) {
    o += mn__fmt_f32_list(o, (const float *)(const void *)row, n);
  } else {
    float buf[256];
    for (size_t i = 0; i < n; i += 256) {
      size_t k = MN__MIN(n - i, (size_t)256);
      for (size_t e = 0; e < k; e++) {
        uint16_t h;
        switch (t->dtype) {
        case MN_DTYPE_F32:
          memcpy(&buf[e], row + 4 * (i + e), 4);
          break;
        case MN_DTYPE_F16:
          memcpy(&h, row + 2 * (i + e), 2);
          buf[e] = mn_f16_to_f32(h);
          break;
        default:
          memcpy(&h, row + 2 * (i + e), 2);
          buf[e] = mn_bf16_to_f32(h);
        }
      }
      if (i)
        *o++ = ',';
      o += mn__fmt_f32_list(o, buf, k);
    }
  }
  *o++ = ']';
  w->len += (size_t)(o - s);
}

static void json_row(mn__jw *w, const mn_tensor *t, int64_t r) {
  if (t->dtype == MN_DTYPE_F32 || t->dtype == MN_DTYPE_F16 ||
      t->dtype == MN_DTYPE_BF16) {
    json_row_floats(w, t, r);
    return;
  }
  const uint8_t *row = mn_tensor_row(t, r);
  int64_t n = t->cols;
  mn__jw_value_begin(w);
  char *o = mn__jw_reserve(w, (size_t)n * 5 + 2);
  if (!o)
    return;
  char *s = o;
  *o++ = '[';
  for (int64_t i = 0; i < n; i++) {
    if (i)
      *o++ = ',';
    switch (t->dtype) {
    case MN_DTYPE_I8:
    case MN_DTYPE_U8:
    case MN_DTYPE_I4: {
      int v;
      if (t->dtype == MN_DTYPE_I8)
        v = (int8_t)row[i];
      else if (t->dtype == MN_DTYPE_U8)
        v = row[i];
      else {
        int nib = (row[i / 2] >> (4 * (i & 1))) & 15;
        v = nib >= 8 ? nib - 16 : nib;
      }
      if (v < 0) {
        *o++ = '-';
        v = -v;
      }
      if (v >= 100)
        *o++ = (char)('0' + v / 100);
      if (v >= 10)
        *o++ = (char)('0' + (v / 10) % 10);
      *o++ = (char)('0' + v % 10);
      break;
    }
    case MN_DTYPE_BIN:
      *o++ = (char)('0' + ((row[i / 8] >> (i & 7)) & 1));
      break;
    default:
      *o++ = '0';
    }
  }
  *o++ = ']';
  w->len += (size_t)(o - s);
}

static int pack_dense(mn__call *c, const mn_tensor *t, const uint8_t **bytes,
                      size_t *n) {
  size_t rb = mn_dtype_row_bytes(t->dtype, t->cols);
  *n = rb * (size_t)t->rows;
  if ((size_t)t->stride == rb || t->rows <= 1) {
    *bytes = t->data;
    return 0;
  }
  uint8_t *d = mn__arena_alloc(c->a, *n ? *n : 1);
  if (!d)
    return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
  for (int64_t r = 0; r < t->rows; r++)
    memcpy(d + (size_t)r * rb, mn_tensor_row(t, r), rb);
  *bytes = d;
  return 0;
}

void mn__bytes_free(mn__bytes *b) {
  if (b->adopted)
    mn_free(b->p);
  else
    free(b->p);
  memset(b, 0, sizeof *b);
}

static int bytes_append(mn__call *c, const uint8_t *p, size_t n,
                        size_t *offset) {
  mn__bytes *b = c->payload_out;
  size_t off = (b->len + 7) & ~(size_t)7;
  size_t need = off + n;
  if (need > b->cap) {
    size_t nc = b->cap ? b->cap : 4096;
    while (nc < need)
      nc *= 2;
    uint8_t *np;
    if (b->adopted) {
      /* An adopted tensor cannot be realloc'd (mn_malloc memory). */
      np = malloc(nc);
      if (np) {
        memcpy(np, b->p, b->len);
        mn_free(b->p);
        b->adopted = 0;
      }
    } else {
      np = realloc(b->p, nc);
    }
    if (!np)
      return mn__fail(c, MN_RPC_RESOURCE_ERROR,
                      "out of memory for a %zu-byte binary reply", need);
    b->p = np;
    b->cap = nc;
  }
  memset(b->p + b->len, 0, off - b->len);
  if (n)
    memcpy(b->p + off, p, n);
  b->len = need;
  *offset = off;
  return 0;
}

static int encode(mn__call *c, mn__jw *w, mn_tensor *t, mn__enc enc, int one_d,
                  int take) {
  if (enc == MN__ENC_BINARY && c->text_only)
    return mn__enc_refuse_binary(c);
  int vec = one_d && t->rows == 1;
  if (enc == MN__ENC_JSON) {
    /* Room for every row's worst case (what json_row reserves, and a
     * separator) at once: growing by doubling as the rows come would
     * copy the reply written so far, about once per reply. Not for huge
     * tensors, where the worst case is far beyond the text. */
    int fl = t->dtype == MN_DTYPE_F32 || t->dtype == MN_DTYPE_F16 ||
             t->dtype == MN_DTYPE_BF16;
    size_t per_row = (size_t)t->cols * (fl ? 25 : 5) + (fl ? 35 : 3);
    if (t->rows > 0 && per_row <= ((size_t)64 << 20) / (size_t)t->rows)
      mn__jw_reserve_exact(w, per_row * (size_t)t->rows + 2);
    if (vec) {
      json_row(w, t, 0);
    } else {
      mn__jw_arr(w);
      for (int64_t r = 0; r < t->rows; r++)
        json_row(w, t, r);
      mn__jw_arr_end(w);
    }
    return 0;
  }
  const uint8_t *bytes = NULL;
  size_t n = 0;
  int rc = pack_dense(c, t, &bytes, &n);
  if (rc)
    return rc;
  mn__jw_obj(w);
  mn__jw_kstr(w, "dtype", dtype_wire_name(t->dtype));
  mn__jw_key(w, "shape");
  mn__jw_arr(w);
  if (!vec)
    mn__jw_int(w, t->rows);
  mn__jw_int(w, t->cols);
  mn__jw_arr_end(w);
  if (enc == MN__ENC_BASE64) {
    mn__jw_key(w, "data");
    mn__jw_value_begin(w);
    char *o = mn__jw_reserve(w, (n + 2) / 3 * 4 + 2);
    if (o) {
      o[0] = '"';
      size_t k = mn__b64_encode(bytes, n, o + 1);
      o[k + 1] = '"';
      w->len += k + 2;
    }
  } else {
    size_t off = 0;
    mn__bytes *b = c->payload_out;
    if (take && bytes == t->data && b->len == 0 && !b->p && n > 0) {
      /* The first binary tensor of the reply: its buffer becomes the
       * payload as it is, where a copy would be made only to be copied
       * again into the reply. */
      b->p = t->data;
      b->len = b->cap = n;
      b->adopted = 1;
      t->data = NULL;
    } else {
      rc = bytes_append(c, bytes, n, &off);
      if (rc)
        return rc;
    }
    mn__jw_key(w, "buffer");
    mn__jw_obj(w);
    mn__jw_kint(w, "offset", (int64_t)off);
    mn__jw_kint(w, "length", (int64_t)n);
    mn__jw_obj_end(w);
  }
  mn__jw_obj_end(w);
  return 0;
}

int mn__enc_refuse_binary(mn__call *c) {
  return mn__fail(c, MN_RPC_INVALID_PARAMS,
                  "encoding \"binary\" puts tensors in a binary WebSocket "
                  "frame, which HTTP (/mcp) does not carry: ask for \"json\" "
                  "or \"base64\", or use the WebSocket");
}

int mn__tensor_encode(mn__call *c, mn__jw *w, const mn_tensor *t, mn__enc enc,
                      int one_d) {
  mn_tensor copy = *t;
  return encode(c, w, &copy, enc, one_d, 0);
}

int mn__tensor_encode_take(mn__call *c, mn__jw *w, mn_tensor *t, mn__enc enc,
                           int one_d) {
  return encode(c, w, t, enc, one_d, 1);
}
