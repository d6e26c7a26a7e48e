/*
 * half_internal.h - the bulk half-precision kernels of half.c at an explicit
 * instruction-set level, for the CPU backend (which dispatches on its own
 * level) and for the tests (which cap the level to test every path).
 *
 * Levels use the same numbers as the CPU backend's mn_cpu_level: 0 portable
 * C, 1 AVX2 + F16C, 2 AVX-512 (F, BW, VL). A level above what the CPU
 * supports is lowered to the best supported one, so passing the backend's
 * level is always safe. Every level gives bit-identical results, NaN
 * payloads included.
 */
#ifndef MNEMO_HALF_INTERNAL_H
#define MNEMO_HALF_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

enum { MN__HALF_SCALAR = 0, MN__HALF_AVX2 = 1, MN__HALF_AVX512 = 2 };

/** The level the public mn_*_n functions use: the best the CPU supports,
 *  capped by $MNEMO_CPU_LEVEL (scalar|avx2|avx512) and mn__half_level_cap. */
int mn__half_level(void);
/** Tests: cap the level from now on (never above the CPU's). Returns the
 *  level in force afterwards. */
int mn__half_level_cap(int cap);

void mn__f32_to_f16_lvl(int level, const float *src, uint16_t *dst, size_t n);
void mn__f16_to_f32_lvl(int level, const uint16_t *src, float *dst, size_t n);
void mn__f32_to_bf16_lvl(int level, const float *src, uint16_t *dst, size_t n);
void mn__bf16_to_f32_lvl(int level, const uint16_t *src, float *dst, size_t n);

#endif /* MNEMO_HALF_INTERNAL_H */
