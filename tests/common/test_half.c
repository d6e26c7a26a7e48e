/*
 * test_half.c - float16 / bfloat16 conversion against references built in
 * this file from the formats' definitions (bit fields and ldexp for the
 * values, a sorted table and double-precision distances for rounding), over
 * every 16-bit pattern, every midpoint between neighbours, and millions of
 * random floats; and the bulk kernels against the scalar ones at every CPU
 * level, at odd lengths and alignments.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/half_internal.h"
#include "common/internal.h"

static uint32_t fbits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float bitsf(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* xorshift64*: reproducible random bits. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd64(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1dull;
}

/* ---------------------------------------------------------------------------
 * References
 * ------------------------------------------------------------------------- */
/* Value of a float16 from its fields (NaN handled by the caller). */
static double f16_value(uint16_t h) {
  int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 31)
    v = INFINITY;
  else if (e == 0)
    v = ldexp((double)m, -24);
  else
    v = ldexp((double)(1024 + m), e - 25);
  return s ? -v : v;
}

static double bf16_value(uint16_t h) {
  int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
  double v;
  if (e == 255)
    v = INFINITY;
  else if (e == 0)
    v = ldexp((double)m, -133);
  else
    v = ldexp((double)(128 + m), e - 134);
  return s ? -v : v;
}

/* The non-negative finite values of a format in code order (which is value
 * order), and the magnitude from which rounding gives Inf. */
typedef struct fmt_table {
  double *v;
  int n;
  double overflow; /* max + half an ulp of max: ties there go to Inf */
  uint16_t inf;
} fmt_table;

static fmt_table f16_tab, bf16_tab;

static void build_tables(void) {
  f16_tab.n = 0x7c00;
  f16_tab.v = malloc(sizeof(double) * (size_t)f16_tab.n);
  for (int i = 0; i < f16_tab.n; i++)
    f16_tab.v[i] = f16_value((uint16_t)i);
  f16_tab.overflow = 65504.0 + 16.0;
  f16_tab.inf = 0x7c00;
  bf16_tab.n = 0x7f80;
  bf16_tab.v = malloc(sizeof(double) * (size_t)bf16_tab.n);
  for (int i = 0; i < bf16_tab.n; i++)
    bf16_tab.v[i] = bf16_value((uint16_t)i);
  bf16_tab.overflow = bf16_tab.v[0x7f7f] + ldexp(1.0, 119);
  bf16_tab.inf = 0x7f80;
}

/* Round a finite float to the nearest code of the format, ties to the even
 * code, by comparing distances in double precision (exact here). */
static uint16_t ref_round(const fmt_table *t, float f) {
  double a = fabs((double)f);
  uint16_t sign = signbit(f) ? 0x8000 : 0;
  if (a >= t->overflow)
    return sign | t->inf;
  int lo = 0, hi = t->n - 1;
  while (lo < hi) { /* largest index with v <= a */
    int mid = (lo + hi + 1) / 2;
    if (t->v[mid] <= a)
      lo = mid;
    else
      hi = mid - 1;
  }
  if (t->v[lo] == a || lo == t->n - 1)
    return sign | (uint16_t)lo;
  double dlo = a - t->v[lo], dhi = t->v[lo + 1] - a;
  if (dlo < dhi || (dlo == dhi && (lo & 1) == 0))
    return sign | (uint16_t)lo;
  return sign | (uint16_t)(lo + 1);
}

/* ---------------------------------------------------------------------------
 * float16
 * ------------------------------------------------------------------------- */
static void test_f16_to_f32_exhaustive(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = mn_f16_to_f32((uint16_t)h);
    int e = (h >> 10) & 31, m = h & 1023;
    if (e == 31 && m) {
      /* NaN: sign and payload kept, quiet bit set. */
      uint32_t want = ((h & 0x8000u) << 16) | 0x7fc00000u | ((uint32_t)m << 13);
      if (fbits(f) != want)
        fail_msg("f16 %04x -> %08x, want NaN %08x", h, fbits(f), want);
      continue;
    }
    double want = f16_value((uint16_t)h);
    if ((double)f != want || !signbit(f) != !signbit(want))
      fail_msg("f16 %04x -> %.10g, want %.10g", h, (double)f, want);
  }
}

static void test_f16_roundtrip_exhaustive(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 65536; h++) {
    uint16_t back = mn_f32_to_f16(mn_f16_to_f32((uint16_t)h));
    uint16_t want = (uint16_t)h;
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
      want |= 0x200; /* a signalling NaN comes back quiet */
    if (back != want)
      fail_msg("f16 %04x round-trips to %04x, want %04x", h, back, want);
  }
}

/* Midpoints between neighbouring halves (exact in float: 12 bits), and the
 * floats just either side of them. */
static void test_f16_midpoints(void **state) {
  (void)state;
  int checked = 0;
  for (int i = 0; i < 0x7bff; i++) {
    float lo = mn_f16_to_f32((uint16_t)i),
          hi = mn_f16_to_f32((uint16_t)(i + 1));
    float mid = (float)(((double)lo + (double)hi) / 2);
    assert_true((double)mid == ((double)lo + (double)hi) / 2);
    float probes[3] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY)};
    for (int k = 0; k < 3; k++) {
      for (int s = 0; s < 2; s++) {
        float f = s ? -probes[k] : probes[k];
        uint16_t got = mn_f32_to_f16(f), want = ref_round(&f16_tab, f);
        if (got != want)
          fail_msg("f32 %a -> f16 %04x, want %04x", (double)f, got, want);
        checked++;
      }
    }
    /* The tie itself goes to the even code, whichever side that is. */
    assert_int_equal(mn_f32_to_f16(mid), (i & 1) ? i + 1 : i);
  }
  /* Around the largest half: 65519.996 stays 65504, 65520 is Inf. */
  assert_int_equal(mn_f32_to_f16(65519.99609375f), 0x7bff);
  assert_int_equal(mn_f32_to_f16(65520.0f), 0x7c00);
  assert_int_equal(mn_f32_to_f16(-1e30f), 0xfc00);
  assert_int_equal(mn_f32_to_f16(-INFINITY), 0xfc00);
  /* Least subnormal 2^-24; half of it ties to zero; just above goes up. */
  assert_int_equal(mn_f32_to_f16(0x1p-25f), 0x0000);
  assert_int_equal(mn_f32_to_f16(nextafterf(0x1p-25f, 1.0f)), 0x0001);
  assert_int_equal(mn_f32_to_f16(-0x1p-26f), 0x8000);
  assert_int_equal(mn_f32_to_f16(0x1.8p-24f), 0x0002); /* 1.5: to even 2 */
  assert_int_equal(mn_f32_to_f16(0x1p-149f), 0x0000);
  /* The largest subnormal rounding into the least normal. */
  assert_int_equal(mn_f32_to_f16(nextafterf(0x1p-14f, 0.0f)), 0x0400);
  /* NaN with a payload: quiet, top payload bits kept, sign kept. */
  assert_int_equal(mn_f32_to_f16(bitsf(0x7f800001u)), 0x7e00);
  assert_int_equal(mn_f32_to_f16(bitsf(0xff812345u)), 0xfe09);
  assert_true(checked > 180000);
}

static void test_f16_random(void **state) {
  (void)state;
  for (int i = 0; i < 3000000; i++) {
    uint64_t r = rnd64();
    uint32_t u;
    if (i & 1) {
      u = (uint32_t)r; /* any bits: every exponent */
    } else {
      /* exponents where halves live: 2^-26 .. 2^16 */
      uint32_t e = 101u + (uint32_t)((r >> 32) % 43u);
      u = ((uint32_t)r & 0x807fffffu) | (e << 23);
    }
    float f = bitsf(u);
    if (isnan(f))
      continue;
    uint16_t got = mn_f32_to_f16(f), want = ref_round(&f16_tab, f);
    if (got != want)
      fail_msg("f32 %08x (%a) -> f16 %04x, want %04x", u, (double)f, got, want);
  }
}

/* ---------------------------------------------------------------------------
 * bfloat16
 * ------------------------------------------------------------------------- */
static void test_bf16_exhaustive(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = mn_bf16_to_f32((uint16_t)h);
    int e = (h >> 7) & 255, m = h & 127;
    uint16_t back = mn_f32_to_bf16(f);
    if (e == 255 && m) {
      uint32_t want = (h << 16) | 0x400000u;
      if (fbits(f) != want)
        fail_msg("bf16 %04x -> %08x, want NaN %08x", h, fbits(f), want);
      if (back != (uint16_t)(h | 0x40))
        fail_msg("bf16 NaN %04x round-trips to %04x", h, back);
      continue;
    }
    double want = bf16_value((uint16_t)h);
    if ((double)f != want || !signbit(f) != !signbit(want))
      fail_msg("bf16 %04x -> %.10g, want %.10g", h, (double)f, want);
    if (back != h)
      fail_msg("bf16 %04x round-trips to %04x", h, back);
  }
}

static void test_bf16_midpoints_random(void **state) {
  (void)state;
  for (int i = 0; i < 0x7f7f; i++) {
    float lo = mn_bf16_to_f32((uint16_t)i),
          hi = mn_bf16_to_f32((uint16_t)(i + 1));
    float mid = (float)(((double)lo + (double)hi) / 2);
    assert_true((double)mid == ((double)lo + (double)hi) / 2);
    float probes[3] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY)};
    for (int k = 0; k < 3; k++)
      for (int s = 0; s < 2; s++) {
        float f = s ? -probes[k] : probes[k];
        uint16_t got = mn_f32_to_bf16(f), want = ref_round(&bf16_tab, f);
        if (got != want)
          fail_msg("f32 %a -> bf16 %04x, want %04x", (double)f, got, want);
      }
    assert_int_equal(mn_f32_to_bf16(mid), (i & 1) ? i + 1 : i);
  }
  /* Past the largest bfloat16 (the tie with 2^128 rounds to Inf). */
  assert_int_equal(mn_f32_to_bf16(bitsf(0x7f7f8000u)), 0x7f80);
  assert_int_equal(mn_f32_to_bf16(bitsf(0x7f7f7fffu)), 0x7f7f);
  assert_int_equal(mn_f32_to_bf16(bitsf(0xff7fffffu)), 0xff80);
  assert_int_equal(mn_f32_to_bf16(bitsf(0x7f800001u)), 0x7fc0);
  for (int i = 0; i < 3000000; i++) {
    uint32_t u = (uint32_t)rnd64();
    float f = bitsf(u);
    if (isnan(f))
      continue;
    uint16_t got = mn_f32_to_bf16(f), want = ref_round(&bf16_tab, f);
    if (got != want)
      fail_msg("f32 %08x -> bf16 %04x, want %04x", u, got, want);
  }
}

/* ---------------------------------------------------------------------------
 * Bulk == scalar, at every level
 * ------------------------------------------------------------------------- */
/* Inputs that exercise every path: all halves widened, their midpoints and
 * neighbours, NaNs with payloads, infinities, float subnormals, random. */
static size_t make_inputs(float **out) {
  size_t n = 65536 * 4 + 200000, k = 0;
  float *v = malloc(n * sizeof *v);
  for (uint32_t h = 0; h < 65536; h++) {
    float a = mn_f16_to_f32((uint16_t)h);
    v[k++] = a;
    v[k++] = mn_bf16_to_f32((uint16_t)h);
    v[k++] = nextafterf(a, INFINITY);
    uint32_t hb = (h & 0x7fff) < 0x7bff ? h + 1 : h;
    v[k++] = (float)(((double)a + (double)mn_f16_to_f32((uint16_t)hb)) / 2);
  }
  static const uint32_t specials[] = {0x7f800001u, 0xff812345u, 0x7fffffffu,
                                      0x7f800000u, 0xff800000u, 0x00000001u,
                                      0x807fffffu, 0x477ff000u, 0x477fefffu,
                                      0x33000000u, 0x33000001u, 0x7f7f8000u};
  for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++)
    v[k++] = bitsf(specials[i]);
  while (k < n)
    v[k++] = bitsf((uint32_t)rnd64());
  *out = v;
  return n;
}

static void check_bulk_level(int level) {
  float *in;
  size_t n = make_inputs(&in);
  uint16_t *h_bulk = malloc((n + 64) * 2), *h_ref = malloc(n * 2);
  float *f_bulk = malloc((n + 64) * 4);
  uint16_t *all = malloc(65536 * 2);
  for (uint32_t h = 0; h < 65536; h++)
    all[h] = (uint16_t)h;

  /* Whole arrays. */
  mn_f32_to_f16_n(in, h_bulk, n);
  for (size_t i = 0; i < n; i++)
    if (h_bulk[i] != mn_f32_to_f16(in[i]))
      fail_msg("level %d: f32->f16 bulk[%zu] of %08x = %04x, scalar %04x",
               level, i, fbits(in[i]), h_bulk[i], mn_f32_to_f16(in[i]));
  mn_f32_to_bf16_n(in, h_bulk, n);
  for (size_t i = 0; i < n; i++)
    if (h_bulk[i] != mn_f32_to_bf16(in[i]))
      fail_msg("level %d: f32->bf16 bulk[%zu] of %08x = %04x, scalar %04x",
               level, i, fbits(in[i]), h_bulk[i], mn_f32_to_bf16(in[i]));
  mn_f16_to_f32_n(all, f_bulk, 65536);
  for (uint32_t h = 0; h < 65536; h++)
    if (fbits(f_bulk[h]) != fbits(mn_f16_to_f32((uint16_t)h)))
      fail_msg("level %d: f16->f32 bulk of %04x = %08x, scalar %08x", level, h,
               fbits(f_bulk[h]), fbits(mn_f16_to_f32((uint16_t)h)));
  mn_bf16_to_f32_n(all, f_bulk, 65536);
  for (uint32_t h = 0; h < 65536; h++)
    if (fbits(f_bulk[h]) != fbits(mn_bf16_to_f32((uint16_t)h)))
      fail_msg("level %d: bf16->f32 bulk of %04x = %08x, scalar %08x", level, h,
               fbits(f_bulk[h]), fbits(mn_bf16_to_f32((uint16_t)h)));

  /* Odd lengths at odd offsets; nothing past the end may be written. */
  static const size_t lens[] = {0, 1, 7, 15, 16, 17, 31, 33, 1023};
  for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
    for (size_t off = 0; off < 3; off++) {
      size_t len = lens[li];
      const float *src = in + 1000 * li + off;
      const uint16_t *hsrc = all + 0x7000 + 37 * li + off;
      for (int pass = 0; pass < 2; pass++) {
        memset(h_bulk, 0xA5, (len + 64) * 2);
        if (pass)
          mn_f32_to_bf16_n(src, h_bulk + off, len);
        else
          mn_f32_to_f16_n(src, h_bulk + off, len);
        for (size_t i = 0; i < len; i++) {
          uint16_t want = pass ? mn_f32_to_bf16(src[i]) : mn_f32_to_f16(src[i]);
          if (h_bulk[off + i] != want)
            fail_msg("level %d pass %d len %zu: [%zu] = %04x, want %04x", level,
                     pass, len, i, h_bulk[off + i], want);
        }
        for (size_t i = off + len; i < off + len + 32; i++)
          assert_int_equal(h_bulk[i], 0xA5A5);
        for (size_t i = 0; i < off; i++)
          assert_int_equal(h_bulk[i], 0xA5A5);

        memset(f_bulk, 0xA5, (len + 64) * 4);
        if (pass)
          mn_bf16_to_f32_n(hsrc, f_bulk + off, len);
        else
          mn_f16_to_f32_n(hsrc, f_bulk + off, len);
        for (size_t i = 0; i < len; i++) {
          float want = pass ? mn_bf16_to_f32(hsrc[i]) : mn_f16_to_f32(hsrc[i]);
          if (fbits(f_bulk[off + i]) != fbits(want))
            fail_msg("level %d pass %d len %zu: widened [%zu] = %08x, want "
                     "%08x",
                     level, pass, len, i, fbits(f_bulk[off + i]), fbits(want));
        }
        for (size_t i = off + len; i < off + len + 32; i++)
          assert_int_equal(fbits(f_bulk[i]), 0xA5A5A5A5u);
      }
    }
  }
  free(in);
  free(h_bulk);
  free(h_ref);
  free(f_bulk);
  free(all);
}

static void test_bulk_every_level(void **state) {
  (void)state;
  int best = mn__half_level_cap(MN__HALF_AVX512);
  for (int level = MN__HALF_SCALAR; level <= MN__HALF_AVX512; level++) {
    int got = mn__half_level_cap(level);
    if (got != level) {
      /* This CPU lacks the level: say so, the lower ones still run. */
      print_message("half: level %d not supported here (best %d)\n", level,
                    best);
      continue;
    }
    assert_int_equal(mn__half_level(), level);
    check_bulk_level(level);
  }
  mn__half_level_cap(best);
}

/* The explicit-level entry points used by the CPU backend agree too. */
static void test_lvl_entry_points(void **state) {
  (void)state;
  float in[1025], out_f[1025];
  uint16_t a[1025], b[1025];
  for (int i = 0; i < 1025; i++)
    in[i] = bitsf((uint32_t)rnd64());
  for (int level = 0; level <= 2; level++) {
    mn__f32_to_f16_lvl(level, in, a, 1025);
    mn__f32_to_bf16_lvl(level, in, b, 1025);
    for (int i = 0; i < 1025; i++) {
      assert_int_equal(a[i], mn_f32_to_f16(in[i]));
      assert_int_equal(b[i], mn_f32_to_bf16(in[i]));
    }
    mn__f16_to_f32_lvl(level, a, out_f, 1025);
    for (int i = 0; i < 1025; i++)
      assert_int_equal(fbits(out_f[i]), fbits(mn_f16_to_f32(a[i])));
    mn__bf16_to_f32_lvl(level, b, out_f, 1025);
    for (int i = 0; i < 1025; i++)
      assert_int_equal(fbits(out_f[i]), fbits(mn_bf16_to_f32(b[i])));
  }
}

/* MNEMO_CPU_LEVEL caps the level read on first use. Runs first, before
 * anything has read the level. */
static void test_env_cap(void **state) {
  (void)state;
  setenv("MNEMO_CPU_LEVEL", "avx2", 1);
  int lvl = mn__half_level();
  unsetenv("MNEMO_CPU_LEVEL");
  int hw = mn__half_level_cap(MN__HALF_AVX512);
  assert_int_equal(lvl, hw < MN__HALF_AVX2 ? hw : MN__HALF_AVX2);
}

static int setup(void **state) {
  (void)state;
  build_tables();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  free(f16_tab.v);
  free(bf16_tab.v);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_env_cap),
      cmocka_unit_test(test_f16_to_f32_exhaustive),
      cmocka_unit_test(test_f16_roundtrip_exhaustive),
      cmocka_unit_test(test_f16_midpoints),
      cmocka_unit_test(test_f16_random),
      cmocka_unit_test(test_bf16_exhaustive),
      cmocka_unit_test(test_bf16_midpoints_random),
      cmocka_unit_test(test_bulk_every_level),
      cmocka_unit_test(test_lvl_entry_points),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
