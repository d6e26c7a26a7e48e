/*
 * test_cpu_elementwise.c - the CPU backend's normalize, affine training,
 * quantize and dequantize, through the public wrappers, at every CPU level
 * (scalar, AVX2, AVX-512 where the machine has them), with and without
 * streaming stores, on many shapes and row strides, against references
 * computed here in double precision.
 *
 * Tolerances:
 *  - normalize: each element within 1e-6 * sqrt(cols) (relative) of
 *    x / ||x|| computed in double; zero rows stay zero and are counted.
 *  - symmetric int8 / int4: the scale is max|x| / 127 (or 7) to float
 *    rounding; each code equals rint(x / scale) (ties to even, in double)
 *    except where x / scale lies within 1e-6 (relative) of a tie, where
 *    either neighbour is accepted; |x - deq(q(x))| <= scale / 2 (+ 1e-6
 *    relative, + 1e-37 absolute for rows so tiny their scale underflows).
 *  - int8_affine: vmin / vmax exact, scale (vmax - vmin) / 255 to float
 *    rounding, codes as above, round trip within scale / 2 (+ 1e-6 relative).
 *  - fp16 / bf16: the codes equal the exhaustively tested scalar conversion
 *    and decode to within half an ulp of x.
 *  - binary: exact.
 * Every output is poisoned before each run (floats with NaN, codes with
 * two different byte patterns) so that an unwritten element fails, and the
 * bytes between a row's end and its stride must stay untouched.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backends/cpu/cpu_elem.h"
#include "mnemo/compute.h"

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t rnd64(void) {
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 0x2545f4914f6cdd1dull;
}
static double rnd_unit(void) { /* [0, 1) */
  return (double)(rnd64() >> 11) * 0x1p-53;
}

/* ---------------------------------------------------------------------------
 * Buffers
 * ------------------------------------------------------------------------- */
typedef struct tbuf {
  unsigned char *mem;
  mn_tensor t;
  size_t row_bytes, bytes;
} tbuf;

/* A tensor whose rows are `pad` bytes longer than packed and whose data
 * starts `offset` bytes past a 64-byte boundary. */
static tbuf tb_new(mn_dtype dt, int64_t rows, int64_t cols, int64_t pad,
                   int64_t offset) {
  tbuf b;
  b.row_bytes = mn_dtype_row_bytes(dt, cols);
  int64_t stride = (int64_t)b.row_bytes + pad;
  b.bytes = (size_t)(rows * stride + offset + 64);
  b.mem = aligned_alloc(64, (b.bytes + 63) / 64 * 64);
  assert_non_null(b.mem);
  b.t = mn_tensor_host(b.mem + offset, dt, rows, cols);
  b.t.stride = stride;
  return b;
}

static void tb_free(tbuf *b) {
  free(b->mem);
}

static void tb_poison(tbuf *b, unsigned char byte) {
  memset(b->mem, byte, b->bytes);
}

/* The bytes between each row's end and the next row still hold `byte`. */
static void tb_check_gaps(const tbuf *b, unsigned char byte, const char *op) {
  for (int64_t r = 0; r < b->t.rows; r++) {
    const unsigned char *row = mn_tensor_row(&b->t, r);
    for (int64_t k = (int64_t)b->row_bytes; k < b->t.stride; k++)
      if (row[k] != byte)
        fail_msg("%s: row %lld wrote past its end (byte %lld)", op,
                 (long long)r, (long long)k);
  }
}

static float *frow(const tbuf *b, int64_t r) {
  return (float *)mn_tensor_row(&b->t, r);
}

/* Rows of mixed magnitudes: uniform in (-s, s), s = 10^U(-3, 3); every
 * 7th row zero, every 11th row tiny (1e-30 scale, to exercise the wide
 * normalisation path), every 13th row huge (1e25). Gap bytes hold NaN. */
static tbuf make_input(int64_t rows, int64_t cols, int64_t pad,
                       int64_t offset) {
  tbuf b = tb_new(MN_DTYPE_F32, rows, cols, pad, offset);
  tb_poison(&b, 0xff); /* NaN in every gap */
  for (int64_t r = 0; r < rows; r++) {
    float *x = frow(&b, r);
    double s = pow(10.0, -3.0 + 6.0 * rnd_unit());
    if (r % 7 == 3)
      s = 0.0;
    else if (r % 11 == 5)
      s = 1e-30;
    else if (r % 13 == 6)
      s = 1e25;
    for (int64_t c = 0; c < cols; c++)
      x[c] = (float)((2.0 * rnd_unit() - 1.0) * s);
  }
  return b;
}

/* ---------------------------------------------------------------------------
 * Levels
 * ------------------------------------------------------------------------- */
static mn_backend *be1, *be2; /* 1 thread, 2 threads */

static int levels[3], nlevels;

static int setup(void **state) {
  (void)state;
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.threads = 1;
  assert_int_equal(mn_backend_open_cpu(&o, &be1), MN_OK);
  o.threads = 2;
  assert_int_equal(mn_backend_open_cpu(&o, &be2), MN_OK);
  int best = mn__cpu_level_cap(MN_CPU_AVX512);
  for (int l = MN_CPU_SCALAR; l <= MN_CPU_AVX512; l++) {
    if (mn__cpu_level_cap((mn_cpu_level)l) == (mn_cpu_level)l)
      levels[nlevels++] = l;
    else
      print_message("level %s not available on this CPU: not tested\n",
                    mn__cpu_level_name((mn_cpu_level)l));
  }
  mn__cpu_level_cap((mn_cpu_level)best);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  mn_backend_close(be1);
  mn_backend_close(be2);
  return 0;
}

typedef struct shape {
  int64_t rows, cols, in_pad, out_pad, offset;
} shape;

static const shape shapes[] = {
    {1, 1, 0, 0, 0},     {1, 767, 0, 0, 0},   {3, 768, 0, 0, 0},
    {4097, 33, 0, 0, 0}, {64, 1024, 0, 0, 0}, {5, 100, 12, 3, 4},
    {9, 768, 4, 1, 4},   {2, 17, 68, 5, 8},   {31, 15, 0, 0, 0},
    {8, 2, 0, 0, 0},     {13, 63, 4, 7, 12},  {6, 65, 0, 0, 0},
    {17, 129, 8, 2, 0},  {3, 9, 0, 0, 0},     {40, 200, 0, 0, 0},
};
#define NSHAPES (sizeof shapes / sizeof shapes[0])

/* Run the statement `stmt` at every level, with the streaming threshold at
 * 0 (stream everything, two threads) and at its default (one thread); it
 * sees `level`, `stream` and the backend `be`. */
#define FOR_EACH_MODE(stmt)                                                    \
  do {                                                                         \
    int best_ = mn__cpu_level_cap(MN_CPU_AVX512);                              \
    for (int li_ = 0; li_ < nlevels; li_++) {                                  \
      mn__cpu_level_cap((mn_cpu_level)levels[li_]);                            \
      assert_int_equal(mn__cpu_level(), levels[li_]);                          \
      for (int st_ = 0; st_ < 2; st_++) {                                      \
        int64_t old_ = mn__cpu_elem_stream_threshold(st_ ? 0 : (16 << 20));    \
        int level = levels[li_], stream = st_;                                 \
        mn_backend *be = st_ ? be2 : be1;                                      \
        (void)level;                                                           \
        (void)stream;                                                          \
        stmt;                                                                  \
        mn__cpu_elem_stream_threshold(old_);                                   \
      }                                                                        \
    }                                                                          \
    mn__cpu_level_cap((mn_cpu_level)best_);                                    \
  } while (0)

/* ---------------------------------------------------------------------------
 * normalize
 * ------------------------------------------------------------------------- */
static void check_normalize(const tbuf *x, const tbuf *y, int64_t zeros,
                            const char *what) {
  int64_t want_zeros = 0;
  const int64_t cols = x->t.cols;
  const double tol = 1e-6 * sqrt((double)cols);
  for (int64_t r = 0; r < x->t.rows; r++) {
    const float *xr = frow(x, r), *yr = frow(y, r);
    double s = 0;
    for (int64_t c = 0; c < cols; c++)
      s += (double)xr[c] * xr[c];
    if (s == 0) {
      want_zeros++;
      for (int64_t c = 0; c < cols; c++)
        if (yr[c] != 0.0f)
          fail_msg("%s: zero row %lld has y[%lld] = %g", what, (long long)r,
                   (long long)c, (double)yr[c]);
      continue;
    }
    double norm = sqrt(s), ys = 0;
    for (int64_t c = 0; c < cols; c++) {
      double ref = xr[c] / norm;
      ys += (double)yr[c] * yr[c];
      if (!(fabs(yr[c] - ref) <= tol * fabs(ref)))
        fail_msg("%s: row %lld col %lld: %.9g, want %.9g", what, (long long)r,
                 (long long)c, (double)yr[c], ref);
    }
    if (!(fabs(sqrt(ys) - 1.0) <= tol))
      fail_msg("%s: row %lld has norm %.9g after normalising", what,
               (long long)r, sqrt(ys));
  }
  if (zeros != want_zeros)
    fail_msg("%s: %lld zero rows counted, want %lld", what, (long long)zeros,
             (long long)want_zeros);
}

#define NORMALIZE_BODY(level, stream, be)                                      \
  do {                                                                         \
    char what[128];                                                            \
    snprintf(what, sizeof what, "normalize %lldx%lld level %d stream %d",      \
             (long long)sh->rows, (long long)sh->cols, level, stream);         \
    tbuf y =                                                                   \
        tb_new(MN_DTYPE_F32, sh->rows, sh->cols, sh->out_pad * 4, sh->offset); \
    tb_poison(&y, 0xff);                                                       \
    int64_t zeros = -1;                                                        \
    assert_int_equal(mn_backend_normalize(be, &x.t, &y.t, &zeros), MN_OK);     \
    check_normalize(&x, &y, zeros, what);                                      \
    tb_check_gaps(&y, 0xff, what);                                             \
    tb_free(&y);                                                               \
    /* In place: y is x. */                                                    \
    tbuf xc =                                                                  \
        tb_new(MN_DTYPE_F32, sh->rows, sh->cols, sh->in_pad * 4, sh->offset);  \
    memcpy(xc.mem, x.mem, x.bytes);                                            \
    assert_int_equal(mn_backend_normalize(be, &xc.t, &xc.t, &zeros), MN_OK);   \
    check_normalize(&x, &xc, zeros, what);                                     \
    tb_free(&xc);                                                              \
  } while (0)

static void test_normalize(void **state) {
  (void)state;
  for (size_t si = 0; si < NSHAPES; si++) {
    const shape *sh = &shapes[si];
    tbuf x = make_input(sh->rows, sh->cols, sh->in_pad * 4, sh->offset);
    FOR_EACH_MODE(NORMALIZE_BODY(level, stream, be));
    tb_free(&x);
  }
}

/* Rows past the float32 range of a sum of squares, subnormal rows, a zero
 * row (with -0), and a plain one. The reference scales by max|x| first. */
static void test_normalize_extremes(void **state) {
  (void)state;
  float v[4 * 5] = {3e38f,  -3e38f, 1e38f,   0,     0,      /* overflows */
                    1e-40f, 0,      -2e-40f, 0,     1e-45f, /* subnormal */
                    0,      0,      0,       -0.0f, 0,      /* zero */
                    3,      4,      0,       0,     0};     /* 3-4-5 */
  float y[20];
  FOR_EACH_MODE(({
    mn_tensor xt = mn_tensor_host(v, MN_DTYPE_F32, 4, 5);
    mn_tensor yt = mn_tensor_host(y, MN_DTYPE_F32, 4, 5);
    memset(y, 0xff, sizeof y);
    int64_t zeros = -1;
    assert_int_equal(mn_backend_normalize(be, &xt, &yt, &zeros), MN_OK);
    assert_int_equal(zeros, 1);
    for (int r = 0; r < 4; r++) {
      double amax = 0, s = 0;
      for (int c = 0; c < 5; c++)
        amax = fmax(amax, fabs((double)v[r * 5 + c]));
      for (int c = 0; c < 5; c++) {
        double u = amax > 0 ? v[r * 5 + c] / amax : 0;
        s += u * u;
      }
      for (int c = 0; c < 5; c++) {
        double ref = amax > 0 ? v[r * 5 + c] / amax / sqrt(s) : 0;
        if (!(fabs(y[r * 5 + c] - ref) <= 1e-6 * fabs(ref)))
          fail_msg("level %d row %d col %d: %g want %g", level, r, c,
                   (double)y[r * 5 + c], ref);
      }
    }
  }));
}

/* ---------------------------------------------------------------------------
 * Symmetric int8 / int4
 * ------------------------------------------------------------------------- */
/* Is code `got` acceptable for the value v = x / scale (clamped to lim)? */
static int code_ok(int got, double v, int lim) {
  double want = rint(v);
  want = want > lim ? lim : want < -lim ? -lim : want;
  if (got == (int)want)
    return 1;
  double frac = v - floor(v);
  if (fabs(frac - 0.5) <= 1e-6 * fmax(1.0, fabs(v))) {
    double other = floor(v) + (want == floor(v) ? 1 : 0);
    other = other > lim ? lim : other < -lim ? -lim : other;
    return got == (int)other;
  }
  return 0;
}

static int i4_code(const unsigned char *row, int64_t c) {
  int nib = (row[c / 2] >> (4 * (c & 1))) & 0xf;
  return nib >= 8 ? nib - 16 : nib;
}

static void check_sym(const tbuf *x, const tbuf *q, const float *scales,
                      int lim, const char *what) {
  for (int64_t r = 0; r < x->t.rows; r++) {
    const float *xr = frow(x, r);
    const unsigned char *qr = mn_tensor_row(&q->t, r);
    double amax = 0;
    for (int64_t c = 0; c < x->t.cols; c++)
      amax = fmax(amax, fabs((double)xr[c]));
    double sref = amax / lim;
    float s = scales[r];
    if (!(fabs(s - sref) <= 6e-8 * sref) && !(s == 0 && sref < 0x1p-149))
      fail_msg("%s: row %lld scale %.9g, want %.9g", what, (long long)r,
               (double)s, sref);
    for (int64_t c = 0; c < x->t.cols; c++) {
      int got = lim == 127 ? (int)(int8_t)qr[c] : i4_code(qr, c);
      double v = s == 0 ? 0.0 : (double)xr[c] / s;
      if (!code_ok(got, v, lim))
        fail_msg("%s: row %lld col %lld: code %d for x/scale = %.9g", what,
                 (long long)r, (long long)c, got, v);
    }
    if (lim == 7 && (x->t.cols & 1) && (qr[x->t.cols / 2] >> 4) != 0)
      fail_msg("%s: row %lld pad nibble is %d", what, (long long)r,
               qr[x->t.cols / 2] >> 4);
  }
}

/* y must be code * scale exactly, and within scale/2 of x. */
static void check_sym_roundtrip(const tbuf *x, const tbuf *q,
                                const float *scales, const tbuf *y, int lim,
                                const char *what) {
  for (int64_t r = 0; r < x->t.rows; r++) {
    const float *xr = frow(x, r), *yr = frow(y, r);
    const unsigned char *qr = mn_tensor_row(&q->t, r);
    double s = scales[r];
    for (int64_t c = 0; c < x->t.cols; c++) {
      int code = lim == 127 ? (int)(int8_t)qr[c] : i4_code(qr, c);
      if (yr[c] != (float)(code * s))
        fail_msg("%s: dequant row %lld col %lld = %.9g, want %d * %.9g", what,
                 (long long)r, (long long)c, (double)yr[c], code, s);
      double err = fabs((double)xr[c] - yr[c]);
      if (!(err <= s / 2 + 1e-6 * fabs((double)xr[c]) + 1e-37))
        fail_msg("%s: round trip row %lld col %lld: |%.9g - %.9g| > %.3g", what,
                 (long long)r, (long long)c, (double)xr[c], (double)yr[c],
                 s / 2);
    }
  }
}

static void run_sym(mn_quant_kind kind, mn_dtype dt, int lim) {
  for (size_t si = 0; si < NSHAPES; si++) {
    const shape *sh = &shapes[si];
    tbuf x = make_input(sh->rows, sh->cols, sh->in_pad * 4, sh->offset);
    float *scales = malloc(sizeof(float) * (size_t)sh->rows);
#define SYM_BODY(level, stream, be)                                            \
  do {                                                                         \
    char what[128];                                                            \
    snprintf(what, sizeof what, "%s %lldx%lld level %d stream %d",             \
             mn_quant_name(kind), (long long)sh->rows, (long long)sh->cols,    \
             level, stream);                                                   \
    tbuf q = tb_new(dt, sh->rows, sh->cols, sh->out_pad, sh->offset);          \
    unsigned char poisons[2] = {0xa5, 0x5a};                                   \
    for (int p = 0; p < 2; p++) {                                              \
      tb_poison(&q, poisons[p]);                                               \
      for (int64_t r = 0; r < sh->rows; r++)                                   \
        scales[r] = NAN;                                                       \
      assert_int_equal(                                                        \
          mn_backend_quantize(be, &x.t, kind, NULL, &q.t, scales), MN_OK);     \
      check_sym(&x, &q, scales, lim, what);                                    \
      tb_check_gaps(&q, poisons[p], what);                                     \
    }                                                                          \
    tbuf y =                                                                   \
        tb_new(MN_DTYPE_F32, sh->rows, sh->cols, sh->out_pad * 4, sh->offset); \
    tb_poison(&y, 0xff);                                                       \
    assert_int_equal(                                                          \
        mn_backend_dequantize(be, &q.t, kind, scales, NULL, &y.t), MN_OK);     \
    check_sym_roundtrip(&x, &q, scales, &y, lim, what);                        \
    tb_check_gaps(&y, 0xff, what);                                             \
    tb_free(&y);                                                               \
    tb_free(&q);                                                               \
  } while (0)
    FOR_EACH_MODE(SYM_BODY(level, stream, be));
#undef SYM_BODY
    free(scales);
    tb_free(&x);
  }
}

static void test_quant_int8(void **state) {
  (void)state;
  run_sym(MN_QUANT_INT8, MN_DTYPE_I8, 127);
}

static void test_quant_int4(void **state) {
  (void)state;
  run_sym(MN_QUANT_INT4, MN_DTYPE_I4, 7);
}

/* Exact ties: with max|x| = 127 (or 7) the scale is exactly 1, so x / scale
 * is exact and ties must go to the even code. */
static void test_quant_ties(void **state) {
  (void)state;
  float v8[40], v4[40];
  static const float ties[] = {2.5f, 3.5f, -2.5f, -0.5f, 0.5f, 1.5f, -1.5f};
  static const int want[] = {2, 4, -2, 0, 0, 2, -2};
  for (int i = 0; i < 40; i++) {
    v8[i] = i == 0 ? 127.0f : i == 1 ? 126.5f : ties[i % 7];
    v4[i] = i == 0 ? -7.0f : i == 1 ? 6.5f : ties[i % 7];
  }
  FOR_EACH_MODE(({
    int8_t c8[40];
    uint8_t c4[20];
    float s8 = 0, s4 = 0;
    mn_tensor x8 = mn_tensor_host(v8, MN_DTYPE_F32, 1, 40);
    mn_tensor x4 = mn_tensor_host(v4, MN_DTYPE_F32, 1, 40);
    mn_tensor q8 = mn_tensor_host(c8, MN_DTYPE_I8, 1, 40);
    mn_tensor q4 = mn_tensor_host(c4, MN_DTYPE_I4, 1, 40);
    assert_int_equal(
        mn_backend_quantize(be, &x8, MN_QUANT_INT8, NULL, &q8, &s8), MN_OK);
    assert_int_equal(
        mn_backend_quantize(be, &x4, MN_QUANT_INT4, NULL, &q4, &s4), MN_OK);
    assert_true(s8 == 1.0f && s4 == 1.0f);
    assert_int_equal(c8[0], 127);
    assert_int_equal(c8[1], 126);
    assert_int_equal(i4_code(c4, 0), -7);
    assert_int_equal(i4_code(c4, 1), 6);
    for (int i = 2; i < 40; i++) {
      if (c8[i] != want[i % 7] || i4_code(c4, i) != want[i % 7])
        fail_msg("level %d: tie %g gave %d / %d, want %d", level,
                 (double)ties[i % 7], c8[i], i4_code(c4, i), want[i % 7]);
    }
  }));
}

/* ---------------------------------------------------------------------------
 * int8_affine
 * ------------------------------------------------------------------------- */
static void check_affine(const tbuf *x, const mn_affine_params *ap,
                         const tbuf *q, const tbuf *y, int trained,
                         const char *what) {
  const int64_t cols = x->t.cols;
  if (trained) {
    for (int64_t d = 0; d < cols; d++) {
      double lo = INFINITY, hi = -INFINITY;
      for (int64_t r = 0; r < x->t.rows; r++) {
        lo = fmin(lo, frow(x, r)[d]);
        hi = fmax(hi, frow(x, r)[d]);
      }
      double sref = (hi - lo) / 255.0;
      if (ap->vmin[d] != lo || !(fabs(ap->scale[d] - sref) <= 6e-8 * sref))
        fail_msg("%s: dim %lld vmin %.9g scale %.9g, want %.9g %.9g", what,
                 (long long)d, (double)ap->vmin[d], (double)ap->scale[d], lo,
                 sref);
    }
  }
  for (int64_t r = 0; r < x->t.rows; r++) {
    const float *xr = frow(x, r), *yr = frow(y, r);
    const unsigned char *qr = mn_tensor_row(&q->t, r);
    for (int64_t d = 0; d < cols; d++) {
      double s = ap->scale[d], lo = ap->vmin[d];
      int got = qr[d];
      if (s == 0) {
        if (got != 0)
          fail_msg("%s: row %lld dim %lld: scale 0 but code %d", what,
                   (long long)r, (long long)d, got);
      } else {
        double v = ((double)xr[d] - lo) / s;
        double want = rint(v);
        want = want < 0 ? 0 : want > 255 ? 255 : want;
        if (got != (int)want &&
            !(fabs(v - floor(v) - 0.5) <= 1e-6 * fmax(1.0, fabs(v)) &&
              abs(got - (int)want) == 1 && got >= 0 && got <= 255))
          fail_msg("%s: row %lld dim %lld: code %d for (x - vmin)/scale = "
                   "%.9g",
                   what, (long long)r, (long long)d, got, v);
      }
      double deq = lo + got * s;
      if (!(fabs(yr[d] - deq) <= 1e-6 * (fabs(lo) + fabs(got * s)) + 1e-37))
        fail_msg("%s: dequant row %lld dim %lld = %.9g, want %.9g", what,
                 (long long)r, (long long)d, (double)yr[d], deq);
      if (trained) {
        double err = fabs((double)xr[d] - yr[d]);
        if (!(err <= s / 2 + 1e-6 * (fabs(lo) + fabs(xr[d])) + 1e-37))
          fail_msg("%s: round trip row %lld dim %lld: |%.9g - %.9g| > %.3g",
                   what, (long long)r, (long long)d, (double)xr[d],
                   (double)yr[d], s / 2);
      }
    }
  }
}

static void test_quant_affine(void **state) {
  (void)state;
  for (size_t si = 0; si < NSHAPES; si++) {
    const shape *sh = &shapes[si];
    tbuf x = make_input(sh->rows, sh->cols, sh->in_pad * 4, sh->offset);
    /* A constant dimension (scale 0), when there is more than one. */
    if (sh->cols > 1)
      for (int64_t r = 0; r < sh->rows; r++)
        frow(&x, r)[1] = 0.25f;
    /* Data outside the trained range: clamps to 0 and 255. */
    tbuf x2 = make_input(sh->rows, sh->cols, sh->in_pad * 4, sh->offset);
    mn_affine_params ap = {sh->cols, malloc(4 * (size_t)sh->cols),
                           malloc(4 * (size_t)sh->cols)};
#define AFF_BODY(level, stream, be)                                            \
  do {                                                                         \
    char what[128];                                                            \
    snprintf(what, sizeof what, "int8_affine %lldx%lld level %d stream %d",    \
             (long long)sh->rows, (long long)sh->cols, level, stream);         \
    for (int64_t d = 0; d < sh->cols; d++)                                     \
      ap.vmin[d] = ap.scale[d] = NAN;                                          \
    assert_int_equal(mn_backend_affine_train(be, &x.t, &ap), MN_OK);           \
    for (int pass = 0; pass < 2; pass++) {                                     \
      const tbuf *in = pass ? &x2 : &x;                                        \
      tbuf q =                                                                 \
          tb_new(MN_DTYPE_U8, sh->rows, sh->cols, sh->out_pad, sh->offset);    \
      tbuf y = tb_new(MN_DTYPE_F32, sh->rows, sh->cols, sh->out_pad * 4,       \
                      sh->offset);                                             \
      unsigned char poisons[2] = {0xa5, 0x5a};                                 \
      for (int p = 0; p < 2; p++) {                                            \
        tb_poison(&q, poisons[p]);                                             \
        tb_poison(&y, 0xff);                                                   \
        assert_int_equal(mn_backend_quantize(be, &in->t, MN_QUANT_INT8_AFFINE, \
                                             &ap, &q.t, NULL),                 \
                         MN_OK);                                               \
        tb_check_gaps(&q, poisons[p], what);                                   \
        assert_int_equal(mn_backend_dequantize(be, &q.t, MN_QUANT_INT8_AFFINE, \
                                               NULL, &ap, &y.t),               \
                         MN_OK);                                               \
        check_affine(in, &ap, &q, &y, !pass, what);                            \
        tb_check_gaps(&y, 0xff, what);                                         \
      }                                                                        \
      tb_free(&q);                                                             \
      tb_free(&y);                                                             \
    }                                                                          \
  } while (0)
    FOR_EACH_MODE(AFF_BODY(level, stream, be));
#undef AFF_BODY
    free(ap.vmin);
    free(ap.scale);
    tb_free(&x);
    tb_free(&x2);
  }
}

/* A range wider than FLT_MAX: the scale must stay finite, codes in range. */
static void test_affine_wide_range(void **state) {
  (void)state;
  float v[2 * 3] = {-3e38f, 1.0f, 0.0f, 3e38f, 2.0f, 0.0f};
  float vmin[3], scale[3], y[6];
  uint8_t q[6];
  mn_affine_params ap = {3, vmin, scale};
  mn_tensor xt = mn_tensor_host(v, MN_DTYPE_F32, 2, 3);
  mn_tensor qt = mn_tensor_host(q, MN_DTYPE_U8, 2, 3);
  mn_tensor yt = mn_tensor_host(y, MN_DTYPE_F32, 2, 3);
  FOR_EACH_MODE(({
    assert_int_equal(mn_backend_affine_train(be, &xt, &ap), MN_OK);
    assert_true(isfinite(scale[0]));
    assert_true(fabs(scale[0] - 6e38 / 255) <= 1e-6 * 6e38 / 255);
    assert_true(scale[2] == 0.0f);
    assert_int_equal(
        mn_backend_quantize(be, &xt, MN_QUANT_INT8_AFFINE, &ap, &qt, NULL),
        MN_OK);
    assert_int_equal(q[0], 0);
    assert_int_equal(q[3], 255);
    assert_int_equal(q[1], 0);
    assert_int_equal(q[4], 255);
    assert_int_equal(q[2], 0);
    assert_int_equal(q[5], 0);
    assert_int_equal(
        mn_backend_dequantize(be, &qt, MN_QUANT_INT8_AFFINE, NULL, &ap, &yt),
        MN_OK);
    assert_true(y[0] == -3e38f && y[2] == 0.0f && y[5] == 0.0f);
    assert_true(fabs(y[3] - 3e38) <= 1e-6 * 3e38);
  }));
}

/* ---------------------------------------------------------------------------
 * fp16 / bf16 / binary
 * ------------------------------------------------------------------------- */
static double half_ulp_f16(double a) {
  if (a < 0x1p-14)
    return 0x1p-25;
  int e;
  frexp(a, &e); /* a in [2^(e-1), 2^e) */
  return ldexp(1.0, e - 1 - 10 - 1);
}

static double half_ulp_bf16(double a) {
  if (a < 0x1p-126)
    return 0x1p-134;
  int e;
  frexp(a, &e);
  return ldexp(1.0, e - 1 - 7 - 1);
}

static void test_quant_half(void **state) {
  (void)state;
  for (size_t si = 0; si < NSHAPES; si++) {
    const shape *sh = &shapes[si];
    tbuf x = make_input(sh->rows, sh->cols, sh->in_pad * 4, sh->offset);
    for (int64_t r = 0; r < sh->rows; r++) /* stay inside float16's range */
      for (int64_t c = 0; c < sh->cols; c++)
        if (fabsf(frow(&x, r)[c]) > 60000.0f)
          frow(&x, r)[c] = 1e-3f * (float)(c + 1);
#define HALF_BODY(level, stream, be)                                           \
  do {                                                                         \
    for (int k = 0; k < 2; k++) {                                              \
      mn_quant_kind kind = k ? MN_QUANT_BF16 : MN_QUANT_FP16;                  \
      char what[128];                                                          \
      snprintf(what, sizeof what, "%s %lldx%lld level %d stream %d",           \
               mn_quant_name(kind), (long long)sh->rows, (long long)sh->cols,  \
               level, stream);                                                 \
      tbuf q = tb_new(k ? MN_DTYPE_BF16 : MN_DTYPE_F16, sh->rows, sh->cols,    \
                      sh->out_pad * 2, sh->offset);                            \
      tbuf y = tb_new(MN_DTYPE_F32, sh->rows, sh->cols, sh->out_pad * 4,       \
                      sh->offset);                                             \
      tb_poison(&q, 0xff);                                                     \
      tb_poison(&y, 0xff);                                                     \
      assert_int_equal(mn_backend_quantize(be, &x.t, kind, NULL, &q.t, NULL),  \
                       MN_OK);                                                 \
      assert_int_equal(                                                        \
          mn_backend_dequantize(be, &q.t, kind, NULL, NULL, &y.t), MN_OK);     \
      tb_check_gaps(&q, 0xff, what);                                           \
      tb_check_gaps(&y, 0xff, what);                                           \
      for (int64_t r = 0; r < sh->rows; r++) {                                 \
        const float *xr = frow(&x, r), *yr = frow(&y, r);                      \
        const uint16_t *qr = mn_tensor_row(&q.t, r);                           \
        for (int64_t c = 0; c < sh->cols; c++) {                               \
          uint16_t want = k ? mn_f32_to_bf16(xr[c]) : mn_f32_to_f16(xr[c]);    \
          double a = fabs((double)xr[c]);                                      \
          double hu = k ? half_ulp_bf16(a) : half_ulp_f16(a);                  \
          if (qr[c] != want || !(fabs((double)yr[c] - xr[c]) <= hu))           \
            fail_msg("%s: row %lld col %lld: %.9g -> %04x -> %.9g", what,      \
                     (long long)r, (long long)c, (double)xr[c], qr[c],         \
                     (double)yr[c]);                                           \
        }                                                                      \
      }                                                                        \
      tb_free(&q);                                                             \
      tb_free(&y);                                                             \
    }                                                                          \
  } while (0)
    FOR_EACH_MODE(HALF_BODY(level, stream, be));
#undef HALF_BODY
    tb_free(&x);
  }
}

static void test_quant_binary(void **state) {
  (void)state;
  for (size_t si = 0; si < NSHAPES; si++) {
    const shape *sh = &shapes[si];
    tbuf x = make_input(sh->rows, sh->cols, sh->in_pad * 4, sh->offset);
    for (int64_t r = 0; r < sh->rows; r += 3) /* exact zeros and -0: bit 0 */
      for (int64_t c = 0; c < sh->cols; c += 4)
        frow(&x, r)[c] = (c & 4) ? -0.0f : 0.0f;
#define BIN_BODY(level, stream, be)                                            \
  do {                                                                         \
    char what[128];                                                            \
    snprintf(what, sizeof what, "binary %lldx%lld level %d stream %d",         \
             (long long)sh->rows, (long long)sh->cols, level, stream);         \
    tbuf q =                                                                   \
        tb_new(MN_DTYPE_BIN, sh->rows, sh->cols, sh->out_pad, sh->offset);     \
    tbuf y =                                                                   \
        tb_new(MN_DTYPE_F32, sh->rows, sh->cols, sh->out_pad * 4, sh->offset); \
    unsigned char poisons[2] = {0xa5, 0x5a};                                   \
    for (int p = 0; p < 2; p++) {                                              \
      tb_poison(&q, poisons[p]);                                               \
      tb_poison(&y, 0xff);                                                     \
      assert_int_equal(                                                        \
          mn_backend_quantize(be, &x.t, MN_QUANT_BINARY, NULL, &q.t, NULL),    \
          MN_OK);                                                              \
      assert_int_equal(                                                        \
          mn_backend_dequantize(be, &q.t, MN_QUANT_BINARY, NULL, NULL, &y.t),  \
          MN_OK);                                                              \
      tb_check_gaps(&q, poisons[p], what);                                     \
      tb_check_gaps(&y, 0xff, what);                                           \
      for (int64_t r = 0; r < sh->rows; r++) {                                 \
        const float *xr = frow(&x, r), *yr = frow(&y, r);                      \
        const unsigned char *qr = mn_tensor_row(&q.t, r);                      \
        for (int64_t c = 0; c < (int64_t)q.row_bytes * 8; c++) {               \
          int bit = (qr[c / 8] >> (c % 8)) & 1;                                \
          int want = c < sh->cols ? xr[c] > 0.0f : 0;                          \
          if (bit != want)                                                     \
            fail_msg("%s: row %lld bit %lld is %d", what, (long long)r,        \
                     (long long)c, bit);                                       \
          if (c < sh->cols && yr[c] != (want ? 1.0f : -1.0f))                  \
            fail_msg("%s: row %lld col %lld dequantised to %g", what,          \
                     (long long)r, (long long)c, (double)yr[c]);               \
        }                                                                      \
      }                                                                        \
    }                                                                          \
    tb_free(&q);                                                               \
    tb_free(&y);                                                               \
  } while (0)
    FOR_EACH_MODE(BIN_BODY(level, stream, be));
#undef BIN_BODY
    tb_free(&x);
  }
}

/* ---------------------------------------------------------------------------
 * Refused input: NaN and Inf, found by the kernels in their own pass (the
 * CPU backend sets MN_BACKEND_CAP_CHECKS_FINITE, so the wrappers do not
 * scan). Every op, at every level and mode, must fail with MN_ERR_INVALID
 * and the detail mn_tensor_check_finite would give: the first bad element
 * in row-major order, its row, column and kind.
 * ------------------------------------------------------------------------- */
typedef enum nf_op {
  NF_NORMALIZE,
  NF_NORMALIZE_IN_PLACE,
  NF_AFFINE_TRAIN,
  NF_INT8,
  NF_INT4,
  NF_INT8_AFFINE,
  NF_FP16,
  NF_BF16,
  NF_BINARY,
  NF_NOPS
} nf_op;

static const char *const nf_names[NF_NOPS] = {
    "normalize", "normalize in place", "affine_train", "int8",
    "int4",      "int8_affine",        "fp16",         "bf16",
    "binary"};

static const mn_quant_kind nf_kinds[NF_NOPS] = {
    MN_QUANT_NONE, MN_QUANT_NONE, MN_QUANT_NONE,
    MN_QUANT_INT8, MN_QUANT_INT4, MN_QUANT_INT8_AFFINE,
    MN_QUANT_FP16, MN_QUANT_BF16, MN_QUANT_BINARY};

/* Outputs for every op, laid out with the shape's padding and offset,
 * allocated once per shape. */
typedef struct nf_bufs {
  const shape *sh;
  tbuf y, in_place, q[NF_NOPS];
  float *scales;
  mn_affine_params ap;
} nf_bufs;

static void nf_alloc(nf_bufs *o, const shape *sh) {
  o->sh = sh;
  o->y = tb_new(MN_DTYPE_F32, sh->rows, sh->cols, sh->out_pad * 4, sh->offset);
  o->in_place =
      tb_new(MN_DTYPE_F32, sh->rows, sh->cols, sh->in_pad * 4, sh->offset);
  for (int op = NF_INT8; op < NF_NOPS; op++) {
    mn_dtype dt = mn_quant_dtype(nf_kinds[op]);
    /* Pad by whole elements: halves stay 2-byte aligned. */
    int64_t esize = dt == MN_DTYPE_F16 || dt == MN_DTYPE_BF16 ? 2 : 1;
    o->q[op] = tb_new(dt, sh->rows, sh->cols, sh->out_pad * esize, sh->offset);
  }
  o->scales = malloc(sizeof(float) * (size_t)sh->rows);
  o->ap.dim = sh->cols;
  o->ap.vmin = malloc(4 * (size_t)sh->cols);
  o->ap.scale = malloc(4 * (size_t)sh->cols);
}

static void nf_free(nf_bufs *o) {
  tb_free(&o->y);
  tb_free(&o->in_place);
  for (int op = NF_INT8; op < NF_NOPS; op++)
    tb_free(&o->q[op]);
  free(o->scales);
  free(o->ap.vmin);
  free(o->ap.scale);
}

/* Run one op on x; int8_affine quantises with `trained`. */
static mn_status nf_run(mn_backend *be, nf_op op, const tbuf *x, nf_bufs *o,
                        const mn_affine_params *trained) {
  int64_t zeros = -1;
  switch (op) {
  case NF_NORMALIZE:
    return mn_backend_normalize(be, &x->t, &o->y.t, &zeros);
  case NF_NORMALIZE_IN_PLACE:
    memcpy(o->in_place.mem, x->mem, x->bytes);
    return mn_backend_normalize(be, &o->in_place.t, &o->in_place.t, &zeros);
  case NF_AFFINE_TRAIN:
    return mn_backend_affine_train(be, &x->t, &o->ap);
  default:
    return mn_backend_quantize(be, &x->t, nf_kinds[op], trained, &o->q[op].t,
                               o->scales);
  }
}

/* The detail expected for x: its first non-finite element, found here. */
static void nf_expected(const tbuf *x, char *want, size_t size) {
  for (int64_t r = 0; r < x->t.rows; r++)
    for (int64_t c = 0; c < x->t.cols; c++) {
      float v = frow(x, r)[c];
      if (isnan(v) || isinf(v)) {
        snprintf(want, size,
                 "row %lld, column %lld is %s: embeddings must be finite "
                 "numbers",
                 (long long)r, (long long)c, isnan(v) ? "NaN" : "infinite");
        return;
      }
    }
  fail_msg("test input holds no NaN or Inf");
}

/* Every op at every level, streaming or not, with one thread and with
 * two, refuses x with exactly `want`. */
static void nf_check_all(const tbuf *x, nf_bufs *o,
                         const mn_affine_params *trained, const char *want,
                         const char *where) {
  FOR_EACH_MODE(({
    (void)be;
    for (int t = 0; t < 2; t++) {
      mn_backend *bt = t ? be2 : be1;
      for (int op = 0; op < NF_NOPS; op++) {
        mn_errmsg_clear();
        mn_status st = nf_run(bt, (nf_op)op, x, o, trained);
        if (st != MN_ERR_INVALID || strcmp(mn_errmsg(), want) != 0)
          fail_msg("%s, %s, level %d stream %d threads %d: %s \"%s\", want "
                   "MN_ERR_INVALID \"%s\"",
                   nf_names[op], where, level, stream, t + 1,
                   mn_status_name(st), mn_errmsg(), want);
      }
    }
  }));
}

/* Shapes: just enough work for two threads (rows 0-16 and 17-33), rows
 * with a tail of 11 past the last 16 (and 32, and 64) elements, padded so
 * that row starts take every alignment and the streaming heads run; short
 * rows, and rows that are all tail. */
static const shape nf_shapes[] = {
    {34, 1003, 3, 5, 4},
    {6, 77, 3, 5, 12},
    {3, 5, 0, 0, 0},
};

static void test_non_finite_refused(void **state) {
  (void)state;
  /* The wrappers leave the check to the kernels tested here. */
  assert_true(be2->iface->caps & MN_BACKEND_CAP_CHECKS_FINITE);
  /* NaN, +Inf and -Inf everywhere; NaN with the sign bit set and the NaN
   * nearest Inf (bits 0x7f800001) at some places. */
  const float bad[5] = {NAN, INFINITY, -INFINITY, -NAN,
                        mn__elem_bits_f32(0x7f800001u)};
  for (size_t si = 0; si < sizeof nf_shapes / sizeof nf_shapes[0]; si++) {
    const shape *sh = &nf_shapes[si];
    const int64_t R = sh->rows, C = sh->cols;
    /* Row-major positions: first, last, a middle row, the first and last
     * rows of the second thread's block (rows R/2 .. R-1 with two
     * threads), the last of the first's, the tail past the vectors. */
    const int64_t pos[][2] = {{0, 0},
                              {R - 1, C - 1},
                              {R / 2 - 1 > 0 ? R / 2 - 1 : 0, C / 2},
                              {R / 2, 0},
                              {R - 1, 3 % C},
                              {R / 2 - 1, C - 1},
                              {R / 4, C - 2},
                              {(3 * R) / 4, C - 8 > 0 ? C - 8 : 0}};
    tbuf x = make_input(R, C, sh->in_pad * 4, sh->offset);
    nf_bufs o;
    nf_alloc(&o, sh);
    mn_affine_params trained = {C, malloc(4 * (size_t)C),
                                malloc(4 * (size_t)C)};
    assert_int_equal(mn_backend_affine_train(be1, &x.t, &trained), MN_OK);
    char want[160], ref[160], where[96];
    /* One bad element. */
    for (size_t pi = 0; pi < sizeof pos / sizeof pos[0]; pi++) {
      float *e = &frow(&x, pos[pi][0])[pos[pi][1]];
      const float keep = *e;
      for (int bi = 0; bi < (pi < 2 ? 5 : 3); bi++) {
        *e = bad[bi];
        nf_expected(&x, want, sizeof want);
        /* The same words as the wrappers' own scan. */
        assert_int_equal(mn_tensor_check_finite(&x.t), MN_ERR_INVALID);
        snprintf(ref, sizeof ref, "%s", mn_errmsg());
        assert_string_equal(ref, want);
        snprintf(where, sizeof where, "%lldx%lld bad %d at (%lld, %lld)",
                 (long long)R, (long long)C, bi, (long long)pos[pi][0],
                 (long long)pos[pi][1]);
        nf_check_all(&x, &o, &trained, want, where);
      }
      *e = keep;
    }
    /* Two bad elements: the first in row-major order is named, whichever
     * thread met it and whatever its kind. */
    const int64_t pairs[][4] = {
        {R / 4, C - 1, (3 * R) / 4, 0}, /* both threads: the first's */
        {R / 4, C - 1, R / 4, 2 % C},   /* one row: the lower column */
        {R / 2, C / 3, R - 1, 0},       /* second thread only */
        {R - 1, C - 1, R / 2 + 1 < R ? R / 2 + 1 : R - 1, C - 1},
    };
    for (size_t pi = 0; pi < sizeof pairs / sizeof pairs[0]; pi++) {
      float *e1 = &frow(&x, pairs[pi][0])[pairs[pi][1]];
      float *e2 = &frow(&x, pairs[pi][2])[pairs[pi][3]];
      const float k1 = *e1, k2 = *e2;
      for (int bi = 0; bi < 2; bi++) {
        *e1 = bad[(pi + bi) % 5];
        *e2 = bad[(pi + bi + 2) % 5];
        nf_expected(&x, want, sizeof want);
        snprintf(where, sizeof where,
                 "%lldx%lld bad at (%lld, %lld) and (%lld, %lld)", (long long)R,
                 (long long)C, (long long)pairs[pi][0], (long long)pairs[pi][1],
                 (long long)pairs[pi][2], (long long)pairs[pi][3]);
        nf_check_all(&x, &o, &trained, want, where);
        *e2 = k2;
        *e1 = k1;
      }
    }
    /* Clean again: everything passes. */
    FOR_EACH_MODE(({
      for (int op = 0; op < NF_NOPS; op++)
        assert_int_equal(nf_run(be, (nf_op)op, &x, &o, &trained), MN_OK);
    }));
    free(trained.vmin);
    free(trained.scale);
    nf_free(&o);
    tb_free(&x);
  }
}

/* Finite values at the edges of the range are not mistaken for NaN / Inf:
 * FLT_MAX (the largest bit pattern below Inf's), sums of squares and
 * float16 / bfloat16 conversions that overflow, subnormals, -0. */
static void test_finite_extremes_accepted(void **state) {
  (void)state;
  const shape sh = {5, 37, 0, 0, 0};
  tbuf x = tb_new(MN_DTYPE_F32, sh.rows, sh.cols, 0, 0);
  for (int64_t c = 0; c < sh.cols; c++) {
    frow(&x, 0)[c] = c & 1 ? -FLT_MAX : FLT_MAX;
    frow(&x, 1)[c] = c == 36 ? FLT_MAX : (float)c * 0.5f;
    frow(&x, 2)[c] = mn__elem_bits_f32(0x007fffffu - (uint32_t)c);
    frow(&x, 3)[c] = c & 1 ? -0.0f : 0.0f;
    frow(&x, 4)[c] = 65520.0f * (c & 2 ? -1.0f : 1.0f); /* fp16: Inf */
  }
  nf_bufs o;
  nf_alloc(&o, &sh);
  mn_affine_params trained = {sh.cols, malloc(4 * (size_t)sh.cols),
                              malloc(4 * (size_t)sh.cols)};
  FOR_EACH_MODE(({
    assert_int_equal(mn_backend_affine_train(be, &x.t, &trained), MN_OK);
    for (int op = 0; op < NF_NOPS; op++)
      if (nf_run(be, (nf_op)op, &x, &o, &trained) != MN_OK)
        fail_msg("%s level %d stream %d refused finite input: %s", nf_names[op],
                 level, stream, mn_errmsg());
  }));
  free(trained.vmin);
  free(trained.scale);
  nf_free(&o);
  tb_free(&x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_normalize),
      cmocka_unit_test(test_normalize_extremes),
      cmocka_unit_test(test_quant_int8),
      cmocka_unit_test(test_quant_int4),
      cmocka_unit_test(test_quant_ties),
      cmocka_unit_test(test_quant_affine),
      cmocka_unit_test(test_affine_wide_range),
      cmocka_unit_test(test_quant_half),
      cmocka_unit_test(test_quant_binary),
      cmocka_unit_test(test_non_finite_refused),
      cmocka_unit_test(test_finite_extremes_accepted),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
