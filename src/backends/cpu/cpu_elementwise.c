/*
 * cpu_elementwise.c - the CPU backend's row-wise ops: L2 normalisation,
 * per-dimension affine training, and quantisation to / from int8, uint8
 * (affine), int4, float16, bfloat16 and sign bits. This file holds the
 * drivers and the portable C kernels; cpu_elem_avx2.c and cpu_elem_avx512.c
 * hold the SIMD kernels (contract in cpu_elem.h).
 *
 * DESIGN: these ops are bound by memory bandwidth, so each row is read from
 * memory once: a row (3 KiB at 768 floats) stays in L1 while its norm or
 * maximum is computed, then it is scaled and written. Outputs larger than
 * MN__NT_BYTES are written with streaming stores, which skip the
 * read-for-ownership a normal store costs and keep the input's lines in
 * cache. Rows are split into one contiguous block per thread (OpenMP,
 * static schedule, at most mn__cpu_threads(b) threads, fewer for small
 * inputs where waking threads costs more than the work). The kernel table
 * is chosen from mn__cpu_level() at each call, so a test that lowers the
 * level with mn__cpu_level_cap exercises every path. Shapes and dtypes were
 * checked by the public wrappers; finiteness is checked here, by the
 * kernels in their single pass (MN_BACKEND_CAP_CHECKS_FINITE, cpu_elem.h):
 * on NaN or Inf an op fails with the row and column of the first one,
 * after rows before it may already have been written.
 */
#include "backends/cpu/cpu_elem.h"
#include "common/half_internal.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Outputs at least this large are streamed past the cache. */
#define MN__NT_BYTES ((int64_t)16 << 20)
/* Elements per thread below which another thread is not worth waking. */
#define MN__ELEMS_PER_THREAD ((int64_t)1 << 15)

/* ---------------------------------------------------------------------------
 * Portable C kernels
 * ------------------------------------------------------------------------- */
int mn__elem_normalize_wide(const float *x, float *y, int64_t n) {
  /* Squares of floats never overflow or underflow a double, so the sum is
   * NaN or Inf exactly when the row holds NaN or Inf. */
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += (double)x[i] * x[i];
    s1 += (double)x[i + 1] * x[i + 1];
    s2 += (double)x[i + 2] * x[i + 2];
    s3 += (double)x[i + 3] * x[i + 3];
  }
  for (; i < n; i++)
    s0 += (double)x[i] * x[i];
  double s = (s0 + s1) + (s2 + s3);
  if (!isfinite(s))
    return MN__ELEM_BAD;
  if (s == 0.0) {
    for (i = 0; i < n; i++)
      y[i] = 0.0f;
    return 1;
  }
  double inv = 1.0 / sqrt(s);
  for (i = 0; i < n; i++)
    y[i] = (float)(x[i] * inv);
  return 0;
}

static int normalize_c(const float *x, float *y, int64_t n, int nt) {
  (void)nt;
  return mn__elem_normalize_wide(x, y, n);
}

/* m = max(m, |v| as bits): at least MN__ELEM_INF_BITS once a NaN or Inf
 * went by. */
#define MAX_ABS_BITS(m, v)                                                     \
  do {                                                                         \
    uint32_t a_ = mn__elem_abs_bits(v);                                        \
    (m) = a_ > (m) ? a_ : (m);                                                 \
  } while (0)

/* The largest |x| as a bit pattern. */
static uint32_t absmax_c(const float *x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; i++)
    MAX_ABS_BITS(m, x[i]);
  return m;
}

static int quant_i8_c(const float *x, int8_t *c, int64_t n, int nt,
                      float *scale_out) {
  (void)nt;
  uint32_t m = absmax_c(x, n);
  if (m >= MN__ELEM_INF_BITS)
    return MN__ELEM_BAD;
  float scale = mn__elem_bits_f32(m) / 127.0f;
  *scale_out = scale;
  if (scale == 0.0f) {
    memset(c, 0, (size_t)n);
    return 0;
  }
  for (int64_t i = 0; i < n; i++)
    c[i] = (int8_t)mn__elem_sym_code(x[i], scale, 127.0f);
  return 0;
}

static int quant_i4_c(const float *x, uint8_t *c, int64_t n, float *scale_out) {
  uint32_t m = absmax_c(x, n);
  if (m >= MN__ELEM_INF_BITS)
    return MN__ELEM_BAD;
  float scale = mn__elem_bits_f32(m) / 7.0f;
  int64_t nb = (n + 1) / 2;
  *scale_out = scale;
  if (scale == 0.0f) {
    memset(c, 0, (size_t)nb);
    return 0;
  }
  for (int64_t j = 0; j < nb; j++) {
    int lo = mn__elem_sym_code(x[2 * j], scale, 7.0f);
    int hi = 2 * j + 1 < n ? mn__elem_sym_code(x[2 * j + 1], scale, 7.0f) : 0;
    c[j] = (uint8_t)((lo & 0xf) | ((hi & 0xf) << 4));
  }
  return 0;
}

static int quant_u8_c(const float *x, uint8_t *c, const float *vmin,
                      const float *scale, int64_t n, int nt) {
  (void)nt;
  uint32_t m = 0;
  for (int64_t i = 0; i < n; i++) {
    c[i] = mn__elem_aff_code(x[i], vmin[i], scale[i]);
    MAX_ABS_BITS(m, x[i]);
  }
  return m >= MN__ELEM_INF_BITS ? MN__ELEM_BAD : 0;
}

static int quant_bin_c(const float *x, uint8_t *c, int64_t n) {
  int64_t nb = (n + 7) / 8;
  uint32_t m = 0;
  for (int64_t j = 0; j < nb; j++) {
    unsigned byte = 0;
    for (int k = 0; k < 8 && 8 * j + k < n; k++) {
      byte |= (unsigned)(x[8 * j + k] > 0.0f) << k;
      MAX_ABS_BITS(m, x[8 * j + k]);
    }
    c[j] = (uint8_t)byte;
  }
  return m >= MN__ELEM_INF_BITS ? MN__ELEM_BAD : 0;
}

static int quant_f16_c(const float *x, uint16_t *c, int64_t n, int nt) {
  (void)nt;
  uint32_t m = 0;
  for (int64_t i = 0; i < n; i++) {
    c[i] = mn_f32_to_f16(x[i]);
    MAX_ABS_BITS(m, x[i]);
  }
  return m >= MN__ELEM_INF_BITS ? MN__ELEM_BAD : 0;
}

static int quant_bf16_c(const float *x, uint16_t *c, int64_t n, int nt) {
  (void)nt;
  uint32_t m = 0;
  for (int64_t i = 0; i < n; i++) {
    c[i] = mn_f32_to_bf16(x[i]);
    MAX_ABS_BITS(m, x[i]);
  }
  return m >= MN__ELEM_INF_BITS ? MN__ELEM_BAD : 0;
}

static void deq_i8_c(const int8_t *c, float *y, float scale, int64_t n,
                     int nt) {
  (void)nt;
  for (int64_t i = 0; i < n; i++)
    y[i] = (float)c[i] * scale;
}

static void deq_i4_c(const uint8_t *c, float *y, float scale, int64_t n,
                     int nt) {
  (void)nt;
  for (int64_t i = 0; i < n; i++) {
    int nib = (c[i / 2] >> (4 * (i & 1))) & 0xf;
    y[i] = (float)(nib >= 8 ? nib - 16 : nib) * scale;
  }
}

static void deq_u8_c(const uint8_t *c, float *y, const float *vmin,
                     const float *scale, int64_t n, int nt) {
  (void)nt;
  for (int64_t i = 0; i < n; i++)
    y[i] = fmaf((float)c[i], scale[i], vmin[i]); /* as the SIMD kernels */
}

static void deq_bin_c(const uint8_t *c, float *y, int64_t n, int nt) {
  (void)nt;
  for (int64_t i = 0; i < n; i++)
    y[i] = (c[i / 8] >> (i & 7)) & 1 ? 1.0f : -1.0f;
}

static int minmax_c(const float *x, float *vmin, float *vmax, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; i++) {
    vmin[i] = x[i] < vmin[i] ? x[i] : vmin[i];
    vmax[i] = x[i] > vmax[i] ? x[i] : vmax[i];
    MAX_ABS_BITS(m, x[i]);
  }
  return m >= MN__ELEM_INF_BITS ? MN__ELEM_BAD : 0;
}

const mn__elem_kernels mn__elem_scalar = {
    .normalize = normalize_c,
    .quant_i8 = quant_i8_c,
    .quant_i4 = quant_i4_c,
    .quant_u8 = quant_u8_c,
    .quant_bin = quant_bin_c,
    .quant_f16 = quant_f16_c,
    .quant_bf16 = quant_bf16_c,
    .deq_i8 = deq_i8_c,
    .deq_i4 = deq_i4_c,
    .deq_u8 = deq_u8_c,
    .deq_bin = deq_bin_c,
    .minmax = minmax_c,
};

/* ---------------------------------------------------------------------------
 * Drivers
 * ------------------------------------------------------------------------- */
static const mn__elem_kernels *kernels(mn_cpu_level *lvl) {
  *lvl = mn__cpu_level();
  switch (*lvl) {
  case MN_CPU_AVX512:
    return &mn__elem_avx512;
  case MN_CPU_AVX2:
    return &mn__elem_avx2;
  default:
    return &mn__elem_scalar;
  }
}

static int team_size(mn_backend *b, int64_t rows, int64_t cols) {
  int64_t t = mn__cpu_threads(b);
  int64_t by_work = rows * cols / MN__ELEMS_PER_THREAD + 1;
  if (t > by_work)
    t = by_work;
  if (t > rows)
    t = rows;
  return t < 1 ? 1 : (int)t;
}

static int64_t nt_bytes = MN__NT_BYTES;

int64_t mn__cpu_elem_stream_threshold(int64_t bytes) {
  return __atomic_exchange_n(&nt_bytes, bytes, __ATOMIC_RELAXED);
}

/* Stream when the output would push everything else out of the caches. */
static int stream_output(const mn_tensor *out) {
  return (int64_t)mn_tensor_bytes(out) >=
         __atomic_load_n(&nt_bytes, __ATOMIC_RELAXED);
}

#define ROW(t, r, type) ((type *)mn_tensor_row((t), (r)))

/* Row r was found to hold NaN or Inf: name its first such element, in the
 * words of mn_tensor_check_finite (the wrappers leave the check to us). */
static mn_status non_finite(const mn_tensor *x, int64_t r) {
  const float *row = ROW(x, r, const float);
  for (int64_t c = 0; c < x->cols; c++)
    if (!isfinite(row[c]))
      return mn__set_error(MN_ERR_INVALID,
                           "row %lld, column %lld is %s: embeddings must be "
                           "finite numbers",
                           (long long)r, (long long)c,
                           isnan(row[c]) ? "NaN" : "infinite");
  return mn__set_error(MN_ERR_INTERNAL,
                       "row %lld was flagged as holding NaN or Inf but holds "
                       "none",
                       (long long)r);
}

/*
 * Each thread owns one block of consecutive rows and stops at its first bad
 * row, which its kernel left unwritten; the lowest of the threads' first
 * bad rows (reduction min) is then the first in the tensor, and is scanned
 * once more to find the column.
 *
 * A team of one runs the block itself, outside OpenMP: a request-sized
 * tensor (32 x 768) is one thread's work, and even a one-thread parallel
 * region ends in a futex call in libgomp, about as long as the
 * normalisation itself.
 */
static int64_t normalize_block(const mn__elem_kernels *k, const mn_tensor *x,
                               mn_tensor *y, int64_t r0, int64_t r1, int nt,
                               int64_t *zeros) {
  const int64_t n = x->cols;
  for (int64_t r = r0; r < r1; r++) {
    int z = k->normalize(ROW(x, r, const float), ROW(y, r, float), n, nt);
    if (z == MN__ELEM_BAD)
      return r;
    *zeros += z;
  }
  return INT64_MAX;
}

/* Rows [t * rows / T, (t + 1) * rows / T): thread t's block of T. */
#define BLOCK_LO(rows, t, T) ((rows) * (t) / (T))
#define BLOCK_HI(rows, t, T) ((rows) * ((t) + 1) / (T))

mn_status mn__cpu_normalize(mn_backend *b, const mn_tensor *x, mn_tensor *y,
                            int64_t *zero_rows) {
  mn_cpu_level lvl;
  const mn__elem_kernels *k = kernels(&lvl);
  const int64_t rows = x->rows;
  const int nt = stream_output(y);
  const int team = team_size(b, rows, x->cols);
  int64_t zeros = 0, bad = INT64_MAX;
  if (team <= 1) {
    bad = normalize_block(k, x, y, 0, rows, nt, &zeros);
  } else {
#pragma omp parallel num_threads(team) reduction(+ : zeros) reduction(min : bad)
    {
      int t = omp_get_thread_num(), T = omp_get_num_threads();
      bad = normalize_block(k, x, y, BLOCK_LO(rows, t, T), BLOCK_HI(rows, t, T),
                            nt, &zeros);
      if (nt)
        _mm_sfence();
    }
  }
  if (nt)
    _mm_sfence();
  if (bad != INT64_MAX)
    return non_finite(x, bad);
  if (zero_rows)
    *zero_rows = zeros;
  return MN_OK;
}

/* Thread t's min / max over its block, in part[2 n t ...]. */
static int64_t minmax_block(const mn__elem_kernels *k, const mn_tensor *x,
                            float *part, int t, int T) {
  const int64_t rows = x->rows, n = x->cols;
  float *lo = part + 2 * (size_t)n * (size_t)t, *hi = lo + n;
  for (int64_t d = 0; d < n; d++) {
    lo[d] = INFINITY;
    hi[d] = -INFINITY;
  }
  for (int64_t r = BLOCK_LO(rows, t, T); r < BLOCK_HI(rows, t, T); r++)
    if (k->minmax(ROW(x, r, const float), lo, hi, n) == MN__ELEM_BAD)
      return r;
  return INT64_MAX;
}

mn_status mn__cpu_affine_train(mn_backend *b, const mn_tensor *x,
                               mn_affine_params *out) {
  mn_cpu_level lvl;
  const mn__elem_kernels *k = kernels(&lvl);
  const int64_t rows = x->rows, n = x->cols;
  const int team = team_size(b, rows, n);
  /* One min / max pair per thread, merged at the end. */
  float *part = mn_malloc(sizeof(float) * 2 * (size_t)n * (size_t)team);
  if (!part)
    return mn__set_error(MN_ERR_NOMEM,
                         "out of memory training int8_affine on %lld "
                         "dimensions",
                         (long long)n);
  int used = 1;
  int64_t bad = INT64_MAX;
  if (team <= 1) {
    bad = minmax_block(k, x, part, 0, 1);
  } else {
#pragma omp parallel num_threads(team) reduction(min : bad)
    {
      int t = omp_get_thread_num(), T = omp_get_num_threads();
      if (t == 0)
        used = T;
      bad = minmax_block(k, x, part, t, T);
    }
  }
  if (bad != INT64_MAX) {
    mn_free(part);
    return non_finite(x, bad);
  }
  for (int64_t d = 0; d < n; d++) {
    float lo = part[d], hi = part[n + d];
    for (int t = 1; t < used; t++) {
      const float *p = part + 2 * (size_t)n * (size_t)t;
      lo = p[d] < lo ? p[d] : lo;
      hi = p[n + d] > hi ? p[n + d] : hi;
    }
    out->vmin[d] = lo;
    /* In double: hi - lo may exceed FLT_MAX; the quotient is rounded once. */
    out->scale[d] = (float)(((double)hi - (double)lo) / 255.0);
  }
  mn_free(part);
  return MN_OK;
}

typedef struct quant_job {
  const mn__elem_kernels *k;
  mn_cpu_level lvl;
  mn_quant_kind kind;
  const mn_affine_params *affine;
  int nt;
} quant_job;

static int64_t quantize_block(const quant_job *j, const mn_tensor *x,
                              mn_tensor *codes, float *scales, int64_t r0,
                              int64_t r1) {
  const mn__elem_kernels *k = j->k;
  const int64_t n = x->cols;
  const int nt = j->nt;
  for (int64_t r = r0; r < r1; r++) {
    const float *xr = ROW(x, r, const float);
    void *cr = mn_tensor_row(codes, r);
    int st = 0;
    switch (j->kind) {
    case MN_QUANT_INT8:
      st = k->quant_i8(xr, cr, n, nt, &scales[r]);
      break;
    case MN_QUANT_INT4:
      st = k->quant_i4(xr, cr, n, &scales[r]);
      break;
    case MN_QUANT_INT8_AFFINE:
      st = k->quant_u8(xr, cr, j->affine->vmin, j->affine->scale, n, nt);
      break;
    case MN_QUANT_BINARY:
      st = k->quant_bin(xr, cr, n);
      break;
    case MN_QUANT_FP16:
      st = k->quant_f16(xr, cr, n, nt);
      break;
    case MN_QUANT_BF16:
      st = k->quant_bf16(xr, cr, n, nt);
      break;
    default:
      break;
    }
    if (st == MN__ELEM_BAD)
      return r;
  }
  return INT64_MAX;
}

mn_status mn__cpu_quantize(mn_backend *b, const mn_tensor *x,
                           mn_quant_kind kind, const mn_affine_params *affine,
                           mn_tensor *codes, float *scales) {
  quant_job j;
  j.k = kernels(&j.lvl);
  j.kind = kind;
  j.affine = affine;
  j.nt = stream_output(codes);
  const int64_t rows = x->rows;
  const int team = team_size(b, rows, x->cols);
  int64_t bad = INT64_MAX;
  if ((unsigned)kind > MN_QUANT_BINARY || kind == MN_QUANT_NONE)
    return mn__set_error(MN_ERR_INVALID, "quantization kind %d is not valid",
                         (int)kind);
  if (team <= 1) {
    bad = quantize_block(&j, x, codes, scales, 0, rows);
  } else {
#pragma omp parallel num_threads(team) reduction(min : bad)
    {
      int t = omp_get_thread_num(), T = omp_get_num_threads();
      bad = quantize_block(&j, x, codes, scales, BLOCK_LO(rows, t, T),
                           BLOCK_HI(rows, t, T));
      if (j.nt)
        _mm_sfence();
    }
  }
  if (j.nt)
    _mm_sfence();
  if (bad != INT64_MAX)
    return non_finite(x, bad);
  return MN_OK;
}

static void dequantize_block(const quant_job *j, const mn_tensor *codes,
                             const float *scales, mn_tensor *y, int64_t r0,
                             int64_t r1) {
  const mn__elem_kernels *k = j->k;
  const int64_t n = codes->cols;
  const int nt = j->nt;
  for (int64_t r = r0; r < r1; r++) {
    const void *cr = mn_tensor_row(codes, r);
    float *yr = ROW(y, r, float);
    switch (j->kind) {
    case MN_QUANT_INT8:
      k->deq_i8(cr, yr, scales[r], n, nt);
      break;
    case MN_QUANT_INT4:
      k->deq_i4(cr, yr, scales[r], n, nt);
      break;
    case MN_QUANT_INT8_AFFINE:
      k->deq_u8(cr, yr, j->affine->vmin, j->affine->scale, n, nt);
      break;
    case MN_QUANT_BINARY:
      k->deq_bin(cr, yr, n, nt);
      break;
    case MN_QUANT_FP16:
      mn__f16_to_f32_lvl((int)j->lvl, cr, yr, (size_t)n);
      break;
    case MN_QUANT_BF16:
      mn__bf16_to_f32_lvl((int)j->lvl, cr, yr, (size_t)n);
      break;
    default:
      break;
    }
  }
}

mn_status mn__cpu_dequantize(mn_backend *b, const mn_tensor *codes,
                             mn_quant_kind kind, const float *scales,
                             const mn_affine_params *affine, mn_tensor *y) {
  quant_job j;
  j.k = kernels(&j.lvl);
  j.kind = kind;
  j.affine = affine;
  j.nt = stream_output(y);
  const int64_t rows = codes->rows;
  const int team = team_size(b, rows, codes->cols);
  if ((unsigned)kind > MN_QUANT_BINARY || kind == MN_QUANT_NONE)
    return mn__set_error(MN_ERR_INVALID, "quantization kind %d is not valid",
                         (int)kind);
  if (team <= 1) {
    dequantize_block(&j, codes, scales, y, 0, rows);
  } else {
#pragma omp parallel num_threads(team)
    {
      int t = omp_get_thread_num(), T = omp_get_num_threads();
      dequantize_block(&j, codes, scales, y, BLOCK_LO(rows, t, T),
                       BLOCK_HI(rows, t, T));
      if (j.nt)
        _mm_sfence();
    }
  }
  if (j.nt)
    _mm_sfence();
  return MN_OK;
}
