/*
 * cpu_search_tmpl.h - the dot-product kernel body, written once and
 * compiled per instruction set: cpu_search_avx2.c and cpu_search_avx512.c
 * define the vector macros below and include this file (see
 * cpu_search_kern.h for what the kernel computes).
 *
 * The kernel is register-blocked like a GEMM micro-kernel: MN_T_NR stored
 * rows against up to MN_T_NQ queries, one accumulator vector per pair, so
 * each decoded vector of a row feeds MN_T_NQ multiply-adds. A group of
 * queries stays in L1 while it sweeps the caller's block of rows (sized to
 * stay in L2); the first sweep brings the rows in from memory, with
 * software prefetch into L2 some 24 KiB ahead. Every combination of
 * (dtype, rows, queries, norm) is specialised at compile time through
 * always_inline and constant arguments, so the accumulators live in
 * registers.
 *
 * Required macros:
 *   MN_T_V, MN_T_VL, MN_T_ZERO(), MN_T_LOADQ(p), MN_T_FMA(a, b, c) (a*b+c),
 *   MN_T_HSUM(v), MN_T_DEC_F32(p), MN_T_DEC_F16(p), MN_T_DEC_BF16(p),
 *   MN_T_DEC_I8(p), MN_T_DEC_U8(p), MN_T_DEC_I4(p, hi) (see below),
 *   MN_T_NR, MN_T_NQ, MN_T_NQNORM,
 *   MN_T_BV, MN_T_BBYTES, MN_T_BZERO(), MN_T_BLOAD(p), MN_T_BSTEP(acc, a,
 *   b) (acc + popcount(a ^ b)), MN_T_BHSUM(acc); optionally
 *   MN_T_HSUM4(a, b, c, d, dst) (four sums into dst[0..3]);
 *   MN_T_BTAIL_KEEP(len, bits) and MN_T_BLOAD_TAIL(p, len, keep) (a binary
 *   tail of len bytes read without touching the bytes after it, ANDed with
 *   keep, which clears the bits past `bits` in byte len-1 when bits != 0).
 * The entry point is the static t_dots(), with the mn__cpu_dots_fn
 * signature.
 *
 * MN_T_DEC_I4(p, hi): p points at VL bytes holding 2*VL nibbles; returns the
 * VL low nibbles (hi = 0) or the VL high nibbles (hi = 1), sign-extended.
 */
#include <string.h>

#define MN_T_INLINE static inline __attribute__((always_inline))

/* Elements one sub-chunk (one vector) covers is VL; bytes it spans: */
MN_T_INLINE int64_t t_sub_bytes(int dt) {
  switch (dt) {
  case MN_DTYPE_F32:
    return MN_T_VL * 4;
  case MN_DTYPE_F16:
  case MN_DTYPE_BF16:
    return MN_T_VL * 2;
  case MN_DTYPE_I4:
    return MN_T_VL / 2;
  default:
    return MN_T_VL;
  }
}

/* Decode sub-chunk s of a row (for I4, s indexes halves of VL-byte
 * groups: even s the low nibbles, odd s the high ones). */
MN_T_INLINE MN_T_V t_dec(int dt, const uint8_t *p, int64_t s) {
  switch (dt) {
  case MN_DTYPE_F32:
    return MN_T_DEC_F32(p + s * (MN_T_VL * 4));
  case MN_DTYPE_F16:
    return MN_T_DEC_F16(p + s * (MN_T_VL * 2));
  case MN_DTYPE_BF16:
    return MN_T_DEC_BF16(p + s * (MN_T_VL * 2));
  case MN_DTYPE_I8:
    return MN_T_DEC_I8(p + s * MN_T_VL);
  case MN_DTYPE_U8:
    return MN_T_DEC_U8(p + s * MN_T_VL);
  default:
    return MN_T_DEC_I4(p + (s >> 1) * MN_T_VL, (int)(s & 1));
  }
}

/* One sub-chunk for NR rows x NQ queries (a macro so that the accumulator
 * arrays are plainly local to the kernel and kept in registers). */
#define MN_T_STEP(ptrs, s, qoff, pf)                                           \
  do {                                                                         \
    MN_T_V v_[MN_T_NR];                                                        \
    if (pf) {                                                                  \
      const int64_t b_ = (s)*t_sub_bytes(DT);                                  \
      if ((b_ & 63) < t_sub_bytes(DT))                                         \
        _Pragma("GCC unroll 8") for (int r_ = 0; r_ < NR; r_++) _mm_prefetch(  \
            (const char *)ptrs[r_] + (pf) + (b_ & ~63), _MM_HINT_T1);          \
    }                                                                          \
    _Pragma("GCC unroll 8") for (int r_ = 0; r_ < NR; r_++) v_[r_] =           \
        t_dec(DT, ptrs[r_], (s));                                              \
    if (NORM) {                                                                \
      if (DT == MN_DTYPE_U8) {                                                 \
        MN_T_V sc_ = MN_T_LOADQ(c->aff_scale + (qoff));                        \
        MN_T_V mn_ = MN_T_LOADQ(c->aff_min + (qoff));                          \
        _Pragma("GCC unroll 8") for (int r_ = 0; r_ < NR; r_++) {              \
          MN_T_V x_ = MN_T_FMA(v_[r_], sc_, mn_);                              \
          nacc[r_] = MN_T_FMA(x_, x_, nacc[r_]);                               \
        }                                                                      \
      } else {                                                                 \
        _Pragma("GCC unroll 8") for (int r_ = 0; r_ < NR; r_++) nacc[r_] =     \
            MN_T_FMA(v_[r_], v_[r_], nacc[r_]);                                \
      }                                                                        \
    }                                                                          \
    _Pragma("GCC unroll 8") for (int j_ = 0; j_ < NQ; j_++) {                  \
      MN_T_V qv_ = MN_T_LOADQ(qp[j_] + (qoff));                                \
      _Pragma("GCC unroll 8") for (int r_ = 0; r_ < NR; r_++) acc[r_][j_] =    \
          MN_T_FMA(v_[r_], qv_, acc[r_][j_]);                                  \
    }                                                                          \
  } while (0)

MN_T_INLINE void t_kern(const mn__cpu_dotctx *c, const uint8_t *const *rp,
                        const int NR, const float *const *qp, const int NQ,
                        const int NORM, const int DT, float *out, int64_t ldo,
                        float *nrm2) {
  MN_T_V acc[MN_T_NR][MN_T_NQ];
  MN_T_V nacc[MN_T_NR];
  _Pragma("GCC unroll 8") for (int r = 0; r < NR; r++) {
    nacc[r] = MN_T_ZERO();
    _Pragma("GCC unroll 8") for (int j = 0; j < NQ; j++) acc[r][j] =
        MN_T_ZERO();
  }
  /* Whole sub-chunks, then the tail from a zero-padded copy. */
  const int64_t per = DT == MN_DTYPE_I4 ? 2 * MN_T_VL : MN_T_VL;
  const int64_t ngroups = c->cols / per;
  const int64_t nsub = DT == MN_DTYPE_I4 ? 2 * ngroups : ngroups;
  const int64_t pf = c->prefetch;
  for (int64_t s = 0; s < nsub; s++)
    MN_T_STEP(rp, s, s * MN_T_VL, pf);
  if (ngroups * per < c->cols) {
    const int64_t off = nsub * t_sub_bytes(DT);
    const int64_t len = c->row_bytes - off;
    uint8_t tb[MN_T_NR][64] __attribute__((aligned(64)));
    const uint8_t *tp[MN_T_NR];
    _Pragma("GCC unroll 8") for (int r = 0; r < NR; r++) {
      memset(tb[r], 0, 64);
      memcpy(tb[r], rp[r] + off, (size_t)len);
      /* an odd-width int4 row's last high nibble is padding */
      if (DT == MN_DTYPE_I4 && (c->cols & 1))
        tb[r][len - 1] &= 0x0F;
      tp[r] = tb[r];
    }
    MN_T_STEP(tp, 0, nsub * MN_T_VL, 0);
    if (DT == MN_DTYPE_I4)
      MN_T_STEP(tp, 1, (nsub + 1) * MN_T_VL, 0);
  }
#ifdef MN_T_HSUM4
  if (NR == 4) {
    /* four rows' sums for one query land next to each other in out */
    _Pragma("GCC unroll 8") for (int j = 0; j < NQ; j++)
        MN_T_HSUM4(acc[0][j], acc[1][j], acc[2][j], acc[3][j], out + j * ldo);
    if (NORM)
      MN_T_HSUM4(nacc[0], nacc[1], nacc[2], nacc[3], nrm2);
    return;
  }
#endif
  _Pragma("GCC unroll 8") for (int r = 0; r < NR; r++) {
    _Pragma("GCC unroll 8") for (int j = 0; j < NQ; j++) out[j * ldo + r] =
        MN_T_HSUM(acc[r][j]);
    if (NORM)
      nrm2[r] = MN_T_HSUM(nacc[r]);
  }
}

/* Instantiate one (NR, DT) pair for a runtime query count and norm flag. */
#define MN_T_CASE(NRc, NQc, DT)                                                \
  case NQc * 2:                                                                \
    t_kern(c, rp, NRc, qp, NQc, 0, DT, out, ldo, nrm2);                        \
    break;                                                                     \
  case NQc * 2 + 1:                                                            \
    t_kern(c, rp, NRc, qp, NQc, 1, DT, out, ldo, nrm2);                        \
    break;

#if MN_T_NQ == 6
#define MN_T_CASES(NRc, DT)                                                    \
  MN_T_CASE(NRc, 1, DT)                                                        \
  MN_T_CASE(NRc, 2, DT)                                                        \
  MN_T_CASE(NRc, 3, DT)                                                        \
  MN_T_CASE(NRc, 4, DT)                                                        \
  MN_T_CASE(NRc, 5, DT) MN_T_CASE(NRc, 6, DT)
#elif MN_T_NQ == 4
#define MN_T_CASES(NRc, DT)                                                    \
  MN_T_CASE(NRc, 1, DT)                                                        \
  MN_T_CASE(NRc, 2, DT) MN_T_CASE(NRc, 3, DT) MN_T_CASE(NRc, 4, DT)
#else
#error "MN_T_NQ must be 4 or 6"
#endif

/* All rows and queries of one dtype: rows in groups of NR (then single
 * rows), queries in groups of NQ; the first group of a row group also
 * computes the norms when asked (with fewer queries, to keep registers). */
#define MN_T_DTYPE_FN(fname, DT)                                               \
  static __attribute__((noinline)) void fname##_full(                          \
      const mn__cpu_dotctx *c, const uint8_t *const *rp,                       \
      const float *const *qp, int nq, int norm, float *out, int64_t ldo,       \
      float *nrm2) {                                                           \
    switch (nq * 2 + norm) { MN_T_CASES(MN_T_NR, DT) default : break; }        \
  }                                                                            \
  static __attribute__((noinline)) void fname##_one(                           \
      const mn__cpu_dotctx *c, const uint8_t *const *rp,                       \
      const float *const *qp, int nq, int norm, float *out, int64_t ldo,       \
      float *nrm2) {                                                           \
    switch (nq * 2 + norm) { MN_T_CASES(1, DT) default : break; }              \
  }                                                                            \
  static void fname(const mn__cpu_dotctx *c, int64_t r0, int64_t nr,           \
                    int64_t q0, int64_t nq, float *out, int64_t ldo,           \
                    float *nrm2) {                                             \
    for (int64_t qi = 0; qi < nq;) {                                           \
      const int norm = nrm2 != NULL && qi == 0;                                \
      const int64_t cap = norm ? MN_T_NQNORM : MN_T_NQ;                        \
      const int Q = (int)(nq - qi < cap ? nq - qi : cap);                      \
      const float *qp[MN_T_NQ];                                                \
      for (int j = 0; j < Q; j++)                                              \
        qp[j] = c->q + (q0 + qi + j) * c->qstride;                             \
      for (int64_t rg = 0; rg < nr; rg += MN_T_NR) {                           \
        const int R = (int)(nr - rg < MN_T_NR ? nr - rg : MN_T_NR);            \
        const uint8_t *rp[MN_T_NR];                                            \
        for (int r = 0; r < R; r++)                                            \
          rp[r] = c->base + (r0 + rg + r) * c->stride;                         \
        float *o = out + qi * ldo + rg;                                        \
        float *n2 = norm ? nrm2 + rg : NULL;                                   \
        if (R == MN_T_NR) {                                                    \
          fname##_full(c, rp, qp, Q, norm, o, ldo, n2);                        \
        } else {                                                               \
          for (int r = 0; r < R; r++)                                          \
            fname##_one(c, rp + r, qp, Q, norm, o + r, ldo,                    \
                        n2 ? n2 + r : NULL);                                   \
        }                                                                      \
      }                                                                        \
      qi += Q;                                                                 \
    }                                                                          \
  }

MN_T_DTYPE_FN(t_dots_f32, MN_DTYPE_F32)
MN_T_DTYPE_FN(t_dots_f16, MN_DTYPE_F16)
MN_T_DTYPE_FN(t_dots_bf16, MN_DTYPE_BF16)
MN_T_DTYPE_FN(t_dots_i8, MN_DTYPE_I8)
MN_T_DTYPE_FN(t_dots_u8, MN_DTYPE_U8)
MN_T_DTYPE_FN(t_dots_i4, MN_DTYPE_I4)

/* ---------------------------------------------------------------------------
 * Binary rows: Hamming distance to the query's sign bits.
 * ------------------------------------------------------------------------- */
#define MN_T_BSTEP_ALL(ptrs, boff, pf)                                         \
  do {                                                                         \
    MN_T_BV v_[MN_T_NR];                                                       \
    if ((pf) && ((boff)&63) < MN_T_BBYTES)                                     \
      _Pragma("GCC unroll 8") for (int r_ = 0; r_ < NR; r_++) _mm_prefetch(    \
          (const char *)ptrs[r_] + (pf) + ((boff) & ~63), _MM_HINT_T1);        \
    _Pragma("GCC unroll 8") for (int r_ = 0; r_ < NR; r_++) v_[r_] =           \
        MN_T_BLOAD(ptrs[r_] + (boff));                                         \
    _Pragma("GCC unroll 8") for (int j_ = 0; j_ < NQ; j_++) {                  \
      MN_T_BV qv_ = MN_T_BLOAD(qb[j_] + (qoff));                               \
      _Pragma("GCC unroll 8") for (int r_ = 0; r_ < NR; r_++) acc[r_][j_] =    \
          MN_T_BSTEP(acc[r_][j_], v_[r_], qv_);                                \
    }                                                                          \
  } while (0)

MN_T_INLINE void t_bkern(const mn__cpu_dotctx *c, const uint8_t *const *rp,
                         const int NR, const uint8_t *const *qb, const int NQ,
                         float *out, int64_t ldo) {
  MN_T_BV acc[MN_T_NR][MN_T_NQ];
  _Pragma("GCC unroll 8") for (int r = 0; r < NR; r++)
      _Pragma("GCC unroll 8") for (int j = 0; j < NQ; j++) acc[r][j] =
          MN_T_BZERO();
  /* whole steps hold only complete bytes of valid bits */
  const int64_t nfull = (c->cols / 8) / MN_T_BBYTES;
  int64_t qoff = 0;
  for (int64_t s = 0; s < nfull; s++, qoff += MN_T_BBYTES)
    MN_T_BSTEP_ALL(rp, qoff, c->prefetch);
  const int64_t off = nfull * MN_T_BBYTES;
#ifdef MN_T_BLOAD_TAIL
  /* masked loads read only the row's own bytes; padding bits are cleared */
  if (off < c->row_bytes) {
    const int64_t len = c->row_bytes - off;
    const MN_T_BV keep = MN_T_BTAIL_KEEP(len, c->cols & 7);
    MN_T_BV v_[MN_T_NR];
    _Pragma("GCC unroll 8") for (int r = 0; r < NR; r++) v_[r] =
        MN_T_BLOAD_TAIL(rp[r] + off, len, keep);
    _Pragma("GCC unroll 8") for (int j = 0; j < NQ; j++) {
      MN_T_BV qv_ = MN_T_BLOAD(qb[j] + off);
      _Pragma("GCC unroll 8") for (int r = 0; r < NR; r++) acc[r][j] =
          MN_T_BSTEP(acc[r][j], v_[r], qv_);
    }
  }
#else
  if (off < c->row_bytes) {
    const int64_t len = c->row_bytes - off;
    uint8_t tb[MN_T_NR][MN_T_BBYTES] __attribute__((aligned(64)));
    const uint8_t *tp[MN_T_NR];
    _Pragma("GCC unroll 8") for (int r = 0; r < NR; r++) {
      memset(tb[r], 0, MN_T_BBYTES);
      memcpy(tb[r], rp[r] + off, (size_t)len);
      if (c->cols & 7)
        tb[r][len - 1] &= (uint8_t)((1u << (c->cols & 7)) - 1);
      tp[r] = tb[r];
    }
    MN_T_BSTEP_ALL(tp, 0, 0);
  }
#endif
  _Pragma("GCC unroll 8") for (int r = 0; r < NR; r++)
      _Pragma("GCC unroll 8") for (int j = 0; j < NQ; j++) out[j * ldo + r] =
          (float)MN_T_BHSUM(acc[r][j]);
}

#define MN_T_BCASE(NRc, NQc)                                                   \
  case NQc:                                                                    \
    t_bkern(c, rp, NRc, qb, NQc, out, ldo);                                    \
    break;
#if MN_T_NQ == 6
#define MN_T_BCASES(NRc)                                                       \
  MN_T_BCASE(NRc, 1)                                                           \
  MN_T_BCASE(NRc, 2)                                                           \
  MN_T_BCASE(NRc, 3)                                                           \
  MN_T_BCASE(NRc, 4) MN_T_BCASE(NRc, 5) MN_T_BCASE(NRc, 6)
#else
#define MN_T_BCASES(NRc)                                                       \
  MN_T_BCASE(NRc, 1) MN_T_BCASE(NRc, 2) MN_T_BCASE(NRc, 3) MN_T_BCASE(NRc, 4)
#endif

static __attribute__((noinline)) void
t_bdots_full(const mn__cpu_dotctx *c, const uint8_t *const *rp,
             const uint8_t *const *qb, int nq, float *out, int64_t ldo) {
  switch (nq) {
    MN_T_BCASES(MN_T_NR)
  default:
    break;
  }
}

static __attribute__((noinline)) void
t_bdots_one(const mn__cpu_dotctx *c, const uint8_t *const *rp,
            const uint8_t *const *qb, int nq, float *out, int64_t ldo) {
  switch (nq) {
    MN_T_BCASES(1)
  default:
    break;
  }
}

static void t_dots_bin(const mn__cpu_dotctx *c, int64_t r0, int64_t nr,
                       int64_t q0, int64_t nq, float *out, int64_t ldo) {
  for (int64_t rg = 0; rg < nr; rg += MN_T_NR) {
    const int R = (int)(nr - rg < MN_T_NR ? nr - rg : MN_T_NR);
    const uint8_t *rp[MN_T_NR];
    for (int r = 0; r < R; r++)
      rp[r] = c->base + (r0 + rg + r) * c->stride;
    for (int64_t qi = 0; qi < nq;) {
      const int Q = (int)(nq - qi < MN_T_NQ ? nq - qi : MN_T_NQ);
      const uint8_t *qb[MN_T_NQ];
      for (int j = 0; j < Q; j++)
        qb[j] = c->qbits + (q0 + qi + j) * c->qbstride;
      float *o = out + qi * ldo + rg;
      if (R == MN_T_NR) {
        t_bdots_full(c, rp, qb, Q, o, ldo);
      } else {
        for (int r = 0; r < R; r++)
          t_bdots_one(c, rp + r, qb, Q, o + r, ldo);
      }
      qi += Q;
    }
  }
}

static void t_dots(const mn__cpu_dotctx *c, int64_t r0, int64_t nr, int64_t q0,
                   int64_t nq, float *out, int64_t ldo, float *nrm2) {
  switch (c->dtype) {
  case MN_DTYPE_F32:
    t_dots_f32(c, r0, nr, q0, nq, out, ldo, nrm2);
    break;
  case MN_DTYPE_F16:
    t_dots_f16(c, r0, nr, q0, nq, out, ldo, nrm2);
    break;
  case MN_DTYPE_BF16:
    t_dots_bf16(c, r0, nr, q0, nq, out, ldo, nrm2);
    break;
  case MN_DTYPE_I8:
    t_dots_i8(c, r0, nr, q0, nq, out, ldo, nrm2);
    break;
  case MN_DTYPE_U8:
    t_dots_u8(c, r0, nr, q0, nq, out, ldo, nrm2);
    break;
  case MN_DTYPE_I4:
    t_dots_i4(c, r0, nr, q0, nq, out, ldo, nrm2);
    break;
  case MN_DTYPE_BIN:
    t_dots_bin(c, r0, nr, q0, nq, out, ldo);
    break;
  default:
    break;
  }
}
