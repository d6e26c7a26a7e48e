/*
 * cpu_search_kern.h - the contract between cpu_search.c (query preparation,
 * metrics, top-k, threads) and the per-instruction-set dot kernels in
 * cpu_search_avx2.c and cpu_search_avx512.c.
 *
 * A kernel computes raw dot products between prepared queries and stored
 * rows in their storage encoding, and optionally each row's squared norm:
 *
 *   out[j * ldo + r] = sum_e q'[q0 + j][e] * code(row r0 + r)[e]
 *   nrm2[r]          = sum_e decoded(row r0 + r)[e]^2       (if nrm2)
 *
 * where code() is the stored value as a float (F32, F16, BF16 as stored; I8,
 * I4 and U8 the integer code) and decoded() applies the U8 affine map
 * (vmin + code * scale); I8 / I4 scales are applied by the caller. For BIN,
 * out[] holds the Hamming distance between the query's sign bits and the
 * row's bits.
 *
 * Prepared queries (mn__cpu_dotctx.q) are float rows of `qstride` floats,
 * zero beyond `cols`: for U8 multiplied by the affine scale; for I4 the
 * elements of each group of 2*VL are reordered so that the VL even-indexed
 * elements come first, then the VL odd ones (VL = 16 for AVX-512, 8 for
 * AVX2, no reordering for the scalar kernel), matching how a vector of
 * packed nibbles unpacks. BIN queries are sign bits, LSB first, zero beyond
 * `cols`, `qbstride` bytes apart.
 *
 * Kernels only read whole rows (tails are copied into a zeroed buffer), so
 * any row length and stride is safe.
 */
#ifndef MNEMO_CPU_SEARCH_KERN_H
#define MNEMO_CPU_SEARCH_KERN_H

#include "backends/cpu/cpu_internal.h"

typedef struct mn__cpu_dotctx {
  mn_dtype dtype;
  const uint8_t *base; /* row 0 */
  int64_t stride;      /* bytes between rows */
  int64_t cols;
  int64_t row_bytes;
  int64_t prefetch;       /* bytes ahead (whole rows) to prefetch into L2 */
  const float *q;         /* prepared float queries */
  int64_t qstride;        /* floats between prepared queries (multiple of 64) */
  const float *aff_scale; /* U8: qstride entries, zero-padded */
  const float *aff_min;   /* U8: qstride entries, zero-padded */
  const uint8_t *qbits;   /* BIN: query sign bits */
  int64_t qbstride;       /* BIN: bytes between queries (multiple of 64) */
} mn__cpu_dotctx;

typedef void (*mn__cpu_dots_fn)(const mn__cpu_dotctx *c, int64_t r0, int64_t nr,
                                int64_t q0, int64_t nq, float *out, int64_t ldo,
                                float *nrm2);

void mn__cpu_dots_avx2(const mn__cpu_dotctx *c, int64_t r0, int64_t nr,
                       int64_t q0, int64_t nq, float *out, int64_t ldo,
                       float *nrm2);
void mn__cpu_dots_avx512(const mn__cpu_dotctx *c, int64_t r0, int64_t nr,
                         int64_t q0, int64_t nq, float *out, int64_t ldo,
                         float *nrm2);

#endif /* MNEMO_CPU_SEARCH_KERN_H */
