/*
 * cpu_elem.h - row kernels of the CPU backend's elementwise ops, one table
 * per instruction-set level (cpu_elementwise.c: portable C and the drivers;
 * cpu_elem_avx2.c; cpu_elem_avx512.c).
 *
 * DESIGN: a kernel handles one row of `n` elements; the driver in
 * cpu_elementwise.c splits rows over threads and picks the table from
 * mn__cpu_level() at each call. `nt` asks for non-temporal (streaming)
 * stores of the row's output, used when the whole output is too large to
 * stay in cache; a kernel may still use ordinary stores for an unaligned
 * head or tail. The driver issues the store fence after streaming. Every
 * level implements the same arithmetic (see each op below), so results
 * agree to the last bit, except the float32 sum of squares of normalize,
 * whose order of addition differs between levels.
 */
#ifndef MNEMO_CPU_ELEM_H
#define MNEMO_CPU_ELEM_H

#include "backends/cpu/cpu_internal.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* A float32 sum of squares inside [LO, HI] has lost nothing to underflow or
 * overflow; outside it (zero rows, NaN and Inf included) the row is redone
 * in double. */
#define MN__NORM_LO 0x1p-100f
#define MN__NORM_HI 0x1p+100f

/*
 * Non-finite input. The backend sets MN_BACKEND_CAP_CHECKS_FINITE, so the
 * kernels that read float32 input find NaN and Inf themselves, in the pass
 * they make anyway, and return MN__ELEM_BAD for such a row; the driver then
 * names the first bad element. The tests they use cost next to nothing:
 * normalize's float32 sum of squares is NaN or Inf (the double fallback
 * then tells a finite overflow from a bad element); the symmetric kinds
 * take the row maximum of |x| on the bit patterns, as unsigned integers
 * (ordered as the floats, NaN above Inf), where a float max would drop a
 * NaN; the other kinds keep the same integer maximum beside their work.
 * |x| bits of at least MN__ELEM_INF_BITS are Inf or NaN.
 */
#define MN__ELEM_BAD (-1)
#define MN__ELEM_INF_BITS 0x7f800000u

typedef struct mn__elem_kernels {
  /* y = x / ||x||. Returns 1 for a zero row (y all zeros), MN__ELEM_BAD
   * with y untouched (so an in-place caller can still find the element),
   * else 0. x may be y. */
  int (*normalize)(const float *x, float *y, int64_t n, int nt);
  /* *scale = max|x| / 127; c = rint(x / scale) in [-127, 127]; scale 0
   * gives zero codes. Returns 0, or MN__ELEM_BAD with c and *scale
   * untouched. */
  int (*quant_i8)(const float *x, int8_t *c, int64_t n, int nt, float *scale);
  /* As quant_i8 with 7 and [-7, 7], two codes a byte, low nibble first. */
  int (*quant_i4)(const float *x, uint8_t *c, int64_t n, float *scale);
  /* c = clamp(rint((x - vmin) / scale), 0, 255), 0 where scale is 0. The
   * kernels below return 0, or MN__ELEM_BAD with the row's output
   * unspecified. */
  int (*quant_u8)(const float *x, uint8_t *c, const float *vmin,
                  const float *scale, int64_t n, int nt);
  /* bit j%8 of byte j/8 set when x[j] > 0; pad bits 0. */
  int (*quant_bin)(const float *x, uint8_t *c, int64_t n);
  /* The bits of mn_f32_to_f16 / mn_f32_to_bf16 (half.c), element by
   * element. */
  int (*quant_f16)(const float *x, uint16_t *c, int64_t n, int nt);
  int (*quant_bf16)(const float *x, uint16_t *c, int64_t n, int nt);
  void (*deq_i8)(const int8_t *c, float *y, float scale, int64_t n, int nt);
  void (*deq_i4)(const uint8_t *c, float *y, float scale, int64_t n, int nt);
  /* y = fmaf(c, scale, vmin): one rounding, and no overflow of c * scale
   * when vmin + 255 * scale is finite. */
  void (*deq_u8)(const uint8_t *c, float *y, const float *vmin,
                 const float *scale, int64_t n, int nt);
  void (*deq_bin)(const uint8_t *c, float *y, int64_t n, int nt);
  /* vmin = min(vmin, x), vmax = max(vmax, x) elementwise. Returns 0, or
   * MN__ELEM_BAD with vmin / vmax unspecified. */
  int (*minmax)(const float *x, float *vmin, float *vmax, int64_t n);
} mn__elem_kernels;

extern const mn__elem_kernels mn__elem_scalar;
extern const mn__elem_kernels mn__elem_avx2;
extern const mn__elem_kernels mn__elem_avx512;

/* Outputs of at least this many bytes are written with streaming stores
 * (default 16 MiB). Tests set 0 to run the streaming paths on small
 * shapes. Returns the previous value. (cpu_elementwise.c) */
int64_t mn__cpu_elem_stream_threshold(int64_t bytes);

/* Normalise one row with a double-precision sum of squares, immune to
 * overflow and underflow. Returns 1 for a zero row, MN__ELEM_BAD (y
 * untouched) when the row holds NaN or Inf. (cpu_elementwise.c) */
int mn__elem_normalize_wide(const float *x, float *y, int64_t n);

/* |f| as its bit pattern, and back. */
static inline uint32_t mn__elem_abs_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u & 0x7fffffffu;
}

static inline float mn__elem_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* One symmetric code: rint(v / scale) clamped to [-lim, lim]. The SIMD
 * kernels compute exactly this, lane by lane. */
static inline int mn__elem_sym_code(float v, float scale, float lim) {
  float q = rintf(v / scale);
  q = q > lim ? lim : q;
  q = q < -lim ? -lim : q;
  return (int)q;
}

/* One affine code (see quant_u8). */
static inline uint8_t mn__elem_aff_code(float v, float vmin, float scale) {
  if (scale == 0.0f)
    return 0;
  float q = rintf((v - vmin) / scale);
  if (!(q > 0.0f))
    return 0;
  return q > 255.0f ? 255 : (uint8_t)q;
}

#endif /* MNEMO_CPU_ELEM_H */
