/*
 * cpu_search.c - similarity, fused similarity + top-k search, and top-k over
 * a score matrix, for every storage dtype of mn_vecblock.
 *
 * The work is split in three layers:
 *  - query preparation (here): queries are copied once per call into the
 *    layout the dot kernels want (padded, scaled for uint8 affine rows,
 *    nibble order for int4, sign bits for binary), with their norms;
 *  - dot kernels (cpu_search_avx512.c, cpu_search_avx2.c, and the portable
 *    one below), chosen by mn__cpu_level() at each call: raw dot products
 *    of a block of stored rows with a tile of queries, plus row norms when
 *    the metric needs them and the caller gave none;
 *  - metrics and top-k (here): scales, norms and the metric turn raw dots
 *    into scores; search keeps a bounded heap of k per query.
 *
 * Search never builds the N x Q score matrix: each thread walks its rows
 * in blocks that stay in L2 (about 192 KiB of stored rows), computes the
 * block's scores for a tile of queries into a small buffer and feeds them
 * to the heaps, whose root (the worst kept) is the threshold a score must
 * beat. Inside one thread rows arrive in increasing order, so an equal score
 * never displaces a kept one: ties go to the lower id. The threads' heaps
 * are merged at the end with the full (score, id) order. L2 is searched on
 * negated distances so one "larger is better" heap serves every metric.
 *
 * DESIGN: threads (OpenMP, the backend's count) split the stored rows when
 * there are few queries, so each row is read from memory once for all of
 * them; they take chunks of rows from a shared counter, so a thread that
 * loses its core does not hold up the others. With many queries (>= 128)
 * the work is compute-bound and threads split the queries instead, each
 * scanning every row, which needs no merge and less heap memory. Nothing is
 * shared between calls; each call owns its buffers.
 */
#include "backends/cpu/cpu_search_kern.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Bytes of stored rows per block and of queries per tile: both stay in L2
 * while the kernel sweeps them. */
#define MN__BLOCK_BYTES (192 * 1024)
#define MN__TILE_BYTES (96 * 1024)
/* Queries at which threads split queries rather than rows. */
#define MN__SPLIT_QUERIES 128
/* Fewest rows worth a thread of their own. */
#define MN__ROWS_PER_THREAD 2048

/* ---------------------------------------------------------------------------
 * Portable decoding and the scalar kernel
 * ------------------------------------------------------------------------- */
static float f16_bits_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
  if (exp == 0) {
    /* zero or subnormal: man * 2^-24, exact in float */
    float f = (float)man * 0x1p-24f;
    return sign ? -f : f;
  }
  if (exp == 31)
    u = sign | 0x7f800000u | (man << 13);
  else
    u = sign | ((exp + 112u) << 23) | (man << 13);
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static float bf16_bits_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Decode one row's codes (not scales or affine) into floats. */
static void decode_codes(mn_dtype dt, const uint8_t *row, int64_t cols,
                         float *dst) {
  switch (dt) {
  case MN_DTYPE_F32:
    memcpy(dst, row, (size_t)cols * sizeof(float));
    break;
  case MN_DTYPE_F16:
  case MN_DTYPE_BF16:
    for (int64_t e = 0; e < cols; e++) {
      uint16_t h;
      memcpy(&h, row + 2 * e, 2);
      dst[e] = dt == MN_DTYPE_F16 ? f16_bits_to_f32(h) : bf16_bits_to_f32(h);
    }
    break;
  case MN_DTYPE_I8:
    for (int64_t e = 0; e < cols; e++)
      dst[e] = (float)(int8_t)row[e];
    break;
  case MN_DTYPE_U8:
    for (int64_t e = 0; e < cols; e++)
      dst[e] = (float)row[e];
    break;
  case MN_DTYPE_I4:
    for (int64_t e = 0; e < cols; e++) {
      int nib = (e & 1) ? row[e >> 1] >> 4 : row[e >> 1] & 0x0F;
      dst[e] = (float)((nib ^ 8) - 8);
    }
    break;
  default:
    break;
  }
}

static int popcount8(unsigned v) {
  int n = 0;
  for (; v; v &= v - 1)
    n++;
  return n;
}

/* The portable kernel: each row is decoded a chunk at a time into a stack
 * buffer and dotted with up to 64 queries at once, accumulating in double. */
#define MN__SCALAR_CHUNK 512
#define MN__SCALAR_QG 64

static void scalar_dots(const mn__cpu_dotctx *c, int64_t r0, int64_t nr,
                        int64_t q0, int64_t nq, float *out, int64_t ldo,
                        float *nrm2) {
  if (c->dtype == MN_DTYPE_BIN) {
    const int64_t rb = c->row_bytes;
    const unsigned last = (c->cols & 7) ? (1u << (c->cols & 7)) - 1u : 0xFFu;
    for (int64_t r = 0; r < nr; r++) {
      const uint8_t *row = c->base + (r0 + r) * c->stride;
      for (int64_t j = 0; j < nq; j++) {
        const uint8_t *qb = c->qbits + (q0 + j) * c->qbstride;
        int64_t h = 0;
        for (int64_t i = 0; i < rb; i++) {
          unsigned v = (unsigned)(row[i] ^ qb[i]);
          if (i == rb - 1)
            v &= last;
          h += popcount8(v);
        }
        out[j * ldo + r] = (float)h;
      }
    }
    return;
  }
  const int64_t esz = c->dtype == MN_DTYPE_F32 ? 4
                      : c->dtype == MN_DTYPE_F16 || c->dtype == MN_DTYPE_BF16
                          ? 2
                          : 1;
  float x[MN__SCALAR_CHUNK];
  double acc[MN__SCALAR_QG];
  for (int64_t r = 0; r < nr; r++) {
    const uint8_t *row = c->base + (r0 + r) * c->stride;
    double n2 = 0;
    for (int64_t g = 0; g < nq; g += MN__SCALAR_QG) {
      const int64_t gq = MN__MIN(MN__SCALAR_QG, nq - g);
      memset(acc, 0, sizeof acc);
      for (int64_t e0 = 0; e0 < c->cols; e0 += MN__SCALAR_CHUNK) {
        const int64_t w = MN__MIN(MN__SCALAR_CHUNK, c->cols - e0);
        /* int4 chunks start on an even element, so on a byte */
        if (c->dtype == MN_DTYPE_I4)
          decode_codes(c->dtype, row + e0 / 2, w, x);
        else
          decode_codes(c->dtype, row + e0 * esz, w, x);
        if (nrm2 && g == 0) {
          for (int64_t e = 0; e < w; e++) {
            double v = x[e];
            if (c->dtype == MN_DTYPE_U8)
              v = (double)c->aff_min[e0 + e] + v * (double)c->aff_scale[e0 + e];
            n2 += v * v;
          }
        }
        for (int64_t j = 0; j < gq; j++) {
          const float *qv = c->q + (q0 + g + j) * c->qstride + e0;
          /* four independent sums: not bound by add latency */
          double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          int64_t e = 0;
          for (; e + 4 <= w; e += 4) {
            s0 += (double)qv[e] * x[e];
            s1 += (double)qv[e + 1] * x[e + 1];
            s2 += (double)qv[e + 2] * x[e + 2];
            s3 += (double)qv[e + 3] * x[e + 3];
          }
          for (; e < w; e++)
            s0 += (double)qv[e] * x[e];
          acc[j] += (s0 + s1) + (s2 + s3);
        }
      }
      for (int64_t j = 0; j < gq; j++)
        out[(g + j) * ldo + r] = (float)acc[j];
    }
    if (nrm2)
      nrm2[r] = (float)n2;
  }
}

/* ---------------------------------------------------------------------------
 * Query preparation
 * ------------------------------------------------------------------------- */
typedef struct prep {
  mn__cpu_dotctx ctx;
  mn__cpu_dots_fn dots;
  mn_metric metric;
  int64_t nq;
  int need_norm;  /* the kernel must compute row norms */
  float *qbuf;    /* prepared queries */
  uint8_t *qbits; /* BIN */
  float *affbuf;  /* U8: scale then min, qstride each */
  float *qn;      /* |q| */
  float *qn2;     /* |q|^2 */
  float *qoff;    /* U8: q . vmin */
} prep;

static void prep_free(prep *p) {
  mn_free(p->qbuf);
  mn_free(p->qbits);
  mn_free(p->affbuf);
  mn_free(p->qn);
  mn_free(p->qn2);
  mn_free(p->qoff);
}

static int64_t round_up(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}

static mn_status prep_init(prep *p, const mn_tensor *q, const mn_vecblock *db,
                           mn_metric metric) {
  memset(p, 0, sizeof *p);
  const mn_dtype dt = db->codes.dtype;
  const int64_t cols = q->cols, nq = q->rows;
  mn_cpu_level lvl = mn__cpu_level();
  int64_t group = 0; /* int4 reordering group (2 * lanes) */
  if (lvl == MN_CPU_AVX512) {
    p->dots = mn__cpu_dots_avx512;
    group = 32;
  } else if (lvl == MN_CPU_AVX2) {
    p->dots = mn__cpu_dots_avx2;
    group = 16;
  } else {
    p->dots = scalar_dots;
  }
  mn__cpu_dotctx *c = &p->ctx;
  c->dtype = dt;
  c->base = db->codes.data;
  c->stride = db->codes.stride;
  c->cols = cols;
  c->row_bytes = (int64_t)mn_dtype_row_bytes(dt, cols);
  c->qstride = round_up(cols, 64);
  /* Rows whose start lies ~24 KiB ahead are prefetched into L2 as the
   * kernels go: short rows (a 768-wide int8 row is 12 cache lines) give the
   * hardware prefetcher too little to lock on to, and a prefetch into L2
   * does not hold one of L1's few miss buffers. */
  c->prefetch = c->stride *
                MN__MAX(8, (24 * 1024 + c->stride - 1) / MN__MAX(c->stride, 1));
  p->metric = metric;
  p->nq = nq;
  p->need_norm = metric != MN_METRIC_IP && !db->norms && dt != MN_DTYPE_BIN;
  p->qn = mn_malloc((size_t)nq * sizeof(float));
  p->qn2 = mn_malloc((size_t)nq * sizeof(float));
  if (!p->qn || !p->qn2)
    goto nomem;
  for (int64_t i = 0; i < nq; i++) {
    const float *src = mn_tensor_row(q, i);
    double s = 0;
    for (int64_t e = 0; e < cols; e++)
      s += (double)src[e] * src[e];
    p->qn2[i] = (float)s;
    p->qn[i] = (float)sqrt(s);
  }
  if (dt == MN_DTYPE_BIN) {
    c->qbstride = round_up(c->row_bytes, 64);
    p->qbits = mn_calloc((size_t)(nq * c->qbstride), 1);
    if (!p->qbits)
      goto nomem;
    for (int64_t i = 0; i < nq; i++) {
      const float *src = mn_tensor_row(q, i);
      uint8_t *dst = p->qbits + i * c->qbstride;
      for (int64_t e = 0; e < cols; e++)
        if (src[e] > 0.0f)
          dst[e >> 3] |= (uint8_t)(1u << (e & 7));
    }
    c->qbits = p->qbits;
    return MN_OK;
  }
  p->qbuf = mn_calloc((size_t)(nq * c->qstride), sizeof(float));
  if (!p->qbuf)
    goto nomem;
  const float *ascale = NULL;
  if (dt == MN_DTYPE_U8) {
    p->affbuf = mn_calloc((size_t)(2 * c->qstride), sizeof(float));
    p->qoff = mn_malloc((size_t)nq * sizeof(float));
    if (!p->affbuf || !p->qoff)
      goto nomem;
    memcpy(p->affbuf, db->affine->scale, (size_t)cols * sizeof(float));
    memcpy(p->affbuf + c->qstride, db->affine->vmin,
           (size_t)cols * sizeof(float));
    c->aff_scale = p->affbuf;
    c->aff_min = p->affbuf + c->qstride;
    ascale = db->affine->scale;
  }
  const int reorder = dt == MN_DTYPE_I4 && group > 0;
  for (int64_t i = 0; i < nq; i++) {
    const float *src = mn_tensor_row(q, i);
    float *dst = p->qbuf + i * c->qstride;
    for (int64_t e = 0; e < cols; e++) {
      float v = ascale ? src[e] * ascale[e] : src[e];
      int64_t pos = e;
      if (reorder) {
        int64_t g = e / group, w = e % group;
        pos = g * group + ((w & 1) ? group / 2 : 0) + w / 2;
      }
      dst[pos] = v;
    }
    if (p->qoff) {
      double s = 0;
      for (int64_t e = 0; e < cols; e++)
        s += (double)src[e] * db->affine->vmin[e];
      p->qoff[i] = (float)s;
    }
  }
  c->q = p->qbuf;
  return MN_OK;
nomem:
  prep_free(p);
  return mn__set_error(MN_ERR_NOMEM, "out of memory preparing %lld queries",
                       (long long)nq);
}

static int64_t block_rows(const prep *p) {
  int64_t rb = p->ctx.row_bytes > 0 ? p->ctx.row_bytes : 1;
  int64_t rows = MN__BLOCK_BYTES / rb;
  rows = rows / 4 * 4;
  return MN__MIN(MN__MAX(rows, 16), 1024);
}

static int64_t tile_queries(const prep *p, int64_t rb_rows) {
  int64_t qbytes = p->ctx.dtype == MN_DTYPE_BIN
                       ? p->ctx.qbstride
                       : p->ctx.qstride * (int64_t)sizeof(float);
  int64_t t = MN__TILE_BYTES / MN__MAX(qbytes, 1);
  t = MN__MIN(t, (256 * 1024 / 4) / rb_rows); /* score buffer <= 256 KiB */
  return MN__MAX(t, 1);
}

/* ---------------------------------------------------------------------------
 * Raw dots -> scores. `buf` holds nq x nr raw values (ld ldb) for rows
 * [r0, r0+nr) and queries [q0, q0+nq). With as_key, L2 distances are
 * negated and NaN (only from overflowing input) becomes -inf so that the
 * heaps see one "larger is better" order.
 * ------------------------------------------------------------------------- */
static void finish_block(const prep *p, const mn_vecblock *db, int64_t r0,
                         int64_t nr, int64_t q0, int64_t nq, float *buf,
                         int64_t ldb, const float *nrm2, float *rowtmp,
                         int as_key) {
  const mn_dtype dt = db->codes.dtype;
  const mn_metric metric = p->metric;
  if (dt == MN_DTYPE_BIN) {
    const float cols = (float)p->ctx.cols;
    for (int64_t j = 0; j < nq; j++) {
      float *o = buf + j * ldb;
      for (int64_t r = 0; r < nr; r++) {
        float h = o[r];
        float v = metric == MN_METRIC_IP       ? cols - 2.0f * h
                  : metric == MN_METRIC_COSINE ? (cols - 2.0f * h) / cols
                                               : 4.0f * h;
        o[r] = (as_key && metric == MN_METRIC_L2) ? -v : v;
      }
    }
    return;
  }
  const int scaled = dt == MN_DTYPE_I8 || dt == MN_DTYPE_I4;
  float *mult = rowtmp;       /* per-row factor on the raw dot */
  float *dnorm = rowtmp + nr; /* |d| (cosine: 1/|d|) or |d|^2 (L2) */
  for (int64_t r = 0; r < nr; r++) {
    float s = scaled ? db->scales[r0 + r] : 1.0f;
    mult[r] = s;
    if (metric == MN_METRIC_IP)
      continue;
    float n2;
    if (db->norms)
      n2 = db->norms[r0 + r] * db->norms[r0 + r];
    else
      n2 = nrm2[r] * (scaled ? s * s : 1.0f);
    if (metric == MN_METRIC_COSINE) {
      float n = db->norms ? fabsf(db->norms[r0 + r]) : sqrtf(n2);
      dnorm[r] = n > 0 ? 1.0f / n : 0.0f;
    } else {
      dnorm[r] = n2;
    }
  }
  for (int64_t j = 0; j < nq; j++) {
    float *o = buf + j * ldb;
    const float off = p->qoff ? p->qoff[q0 + j] : 0.0f;
    switch (metric) {
    case MN_METRIC_IP:
      for (int64_t r = 0; r < nr; r++)
        o[r] = o[r] * mult[r] + off;
      break;
    case MN_METRIC_COSINE: {
      const float iq = p->qn[q0 + j] > 0 ? 1.0f / p->qn[q0 + j] : 0.0f;
      for (int64_t r = 0; r < nr; r++)
        o[r] = (o[r] * mult[r] + off) * iq * dnorm[r];
      break;
    }
    default: {
      const float q2 = p->qn2[q0 + j];
      for (int64_t r = 0; r < nr; r++) {
        float d = q2 + dnorm[r] - 2.0f * (o[r] * mult[r] + off);
        d = d > 0.0f ? d : 0.0f;
        o[r] = as_key ? -d : d;
      }
      break;
    }
    }
    if (as_key)
      for (int64_t r = 0; r < nr; r++)
        if (o[r] != o[r])
          o[r] = -INFINITY;
  }
}

/* ---------------------------------------------------------------------------
 * Similarity
 * ------------------------------------------------------------------------- */
mn_status mn__cpu_similarity(mn_backend *b, const mn_tensor *q,
                             const mn_vecblock *db, mn_metric metric,
                             mn_tensor *out) {
  const int64_t nq = q->rows, n = db->codes.rows;
  if (nq == 0 || n == 0)
    return MN_OK;
  prep p;
  MN__TRY(prep_init(&p, q, db, metric));
  const int64_t rbk = block_rows(&p), qt = tile_queries(&p, rbk);
  const int64_t nblocks = (n + rbk - 1) / rbk;
  /* a second thread only pays for itself past ~1 MiB of row-query work */
  const int64_t work = n * MN__MAX(p.ctx.row_bytes, 1) * nq;
  const int nt =
      work < (1 << 20) ? 1 : (int)MN__MIN((int64_t)mn__cpu_threads(b), nblocks);
  int failed = 0;
#pragma omp parallel num_threads(nt)
  {
    float *buf = mn_malloc((size_t)(qt * rbk) * sizeof(float));
    float *nrm2 = mn_malloc((size_t)rbk * sizeof(float));
    float *rowtmp = mn_malloc((size_t)(2 * rbk) * sizeof(float));
    int ok = buf && nrm2 && rowtmp;
    if (!ok) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 4)
    for (int64_t blk = 0; blk < nblocks; blk++) {
      if (!ok)
        continue;
      const int64_t r0 = blk * rbk, nr = MN__MIN(rbk, n - r0);
      for (int64_t q0 = 0; q0 < nq; q0 += qt) {
        const int64_t m = MN__MIN(qt, nq - q0);
        p.dots(&p.ctx, r0, nr, q0, m, buf, rbk,
               (p.need_norm && q0 == 0) ? nrm2 : NULL);
        finish_block(&p, db, r0, nr, q0, m, buf, rbk, nrm2, rowtmp, 0);
        for (int64_t j = 0; j < m; j++)
          memcpy((float *)mn_tensor_row(out, q0 + j) + r0, buf + j * rbk,
                 (size_t)nr * sizeof(float));
      }
    }
    mn_free(buf);
    mn_free(nrm2);
    mn_free(rowtmp);
  }
  prep_free(&p);
  if (failed)
    return mn__set_error(MN_ERR_NOMEM, "out of memory for similarity "
                                       "workspace");
  return MN_OK;
}

/* ---------------------------------------------------------------------------
 * Bounded heaps. The root is the worst candidate kept; "better" is the
 * result order: higher score first, then lower id; NaN ranks below every
 * number (only mn_topk can meet one).
 * ------------------------------------------------------------------------- */
typedef struct cand {
  float s;
  int64_t id;
} cand;

static inline int better(float sa, int64_t ia, float sb, int64_t ib) {
  if (sa > sb)
    return 1;
  if (sa < sb)
    return 0;
  if (sa == sb)
    return ia < ib;
  int an = sa != sa, bn = sb != sb;
  if (an != bn)
    return bn;
  return ia < ib;
}

static inline void heap_sift_down(cand *h, int64_t n, int64_t i) {
  cand x = h[i];
  for (;;) {
    int64_t l = 2 * i + 1;
    if (l >= n)
      break;
    int64_t w = l;
    if (l + 1 < n && better(h[l].s, h[l].id, h[l + 1].s, h[l + 1].id))
      w = l + 1;
    if (!better(x.s, x.id, h[w].s, h[w].id))
      break;
    h[i] = h[w];
    i = w;
  }
  h[i] = x;
}

static inline void heap_push(cand *h, int64_t n, float s, int64_t id) {
  int64_t i = n;
  while (i > 0) {
    int64_t par = (i - 1) / 2;
    if (!better(h[par].s, h[par].id, s, id))
      break;
    h[i] = h[par];
    i = par;
  }
  h[i].s = s;
  h[i].id = id;
}

/* Offer keys[0..nr) with ids id0.. in increasing order: an equal key never
 * replaces a kept one, which is the lower-id rule. */
static void heap_scan_sorted_ids(cand *h, int64_t *cntp, int64_t k,
                                 const float *keys, int64_t nr, int64_t id0) {
  int64_t cnt = *cntp, r = 0;
  for (; r < nr && cnt < k; r++)
    heap_push(h, cnt++, keys[r], id0 + r);
  if (r < nr) {
    float thr = h[0].s;
    /* Most keys lose: test 16 at a time (a loop the compiler vectorises)
     * and look closer only where one beats the threshold. */
    for (; r < nr && (r & 15); r++)
      if (keys[r] > thr) {
        h[0].s = keys[r];
        h[0].id = id0 + r;
        heap_sift_down(h, k, 0);
        thr = h[0].s;
      }
    for (; r + 16 <= nr; r += 16) {
      int any = 0;
      for (int i = 0; i < 16; i++)
        any |= keys[r + i] > thr;
      if (!any)
        continue;
      for (int64_t i = r; i < r + 16; i++)
        if (keys[i] > thr) {
          h[0].s = keys[i];
          h[0].id = id0 + i;
          heap_sift_down(h, k, 0);
          thr = h[0].s;
        }
    }
    for (; r < nr; r++)
      if (keys[r] > thr) {
        h[0].s = keys[r];
        h[0].id = id0 + r;
        heap_sift_down(h, k, 0);
        thr = h[0].s;
      }
  }
  *cntp = cnt;
}

static int cand_cmp(const void *a, const void *b) {
  const cand *x = a, *y = b;
  if (better(x->s, x->id, y->s, y->id))
    return -1;
  if (better(y->s, y->id, x->s, x->id))
    return 1;
  return 0;
}

/* Sort n candidates best first into the output row, padding to k. */
static void emit(cand *c, int64_t n, int64_t k, int negate, float *scores,
                 int64_t *ids) {
  if (n > 1)
    qsort(c, (size_t)n, sizeof *c, cand_cmp);
  int64_t m = MN__MIN(n, k);
  for (int64_t i = 0; i < m; i++) {
    scores[i] = negate ? -c[i].s : c[i].s;
    ids[i] = c[i].id;
  }
  for (int64_t i = m; i < k; i++) {
    scores[i] = negate ? INFINITY : -INFINITY;
    ids[i] = -1;
  }
}

/* ---------------------------------------------------------------------------
 * Search
 * ------------------------------------------------------------------------- */
mn_status mn__cpu_search(mn_backend *b, const mn_tensor *q,
                         const mn_vecblock *db, mn_metric metric, int64_t k,
                         int64_t id_base, float *scores, int64_t *ids) {
  const int64_t nq = q->rows, n = db->codes.rows;
  const int negate = metric == MN_METRIC_L2;
  if (nq == 0)
    return MN_OK;
  if (n == 0) {
    for (int64_t i = 0; i < nq; i++)
      emit(NULL, 0, k, negate, scores + i * k, ids + i * k);
    return MN_OK;
  }
  prep p;
  MN__TRY(prep_init(&p, q, db, metric));
  const int64_t rbk = block_rows(&p), qt = tile_queries(&p, rbk);
  const int threads = mn__cpu_threads(b);
  const int split_q = nq >= MN__SPLIT_QUERIES;
  int nt;
  if (split_q)
    nt = (int)MN__MIN((int64_t)threads, nq);
  else
    nt = (int)MN__MAX(1, MN__MIN((int64_t)threads, n / MN__ROWS_PER_THREAD));
  const int64_t nsets = split_q ? 1 : nt;
  cand *heaps = mn_malloc((size_t)(nsets * nq * k) * sizeof(cand));
  int64_t *counts = mn_calloc((size_t)(nsets * nq), sizeof(int64_t));
  if (!heaps || !counts) {
    mn_free(heaps);
    mn_free(counts);
    prep_free(&p);
    return mn__set_error(MN_ERR_NOMEM,
                         "out of memory for top-%lld of %lld "
                         "queries",
                         (long long)k, (long long)nq);
  }
  int failed = 0;
  int64_t next_row = 0;
  /* up to 16 blocks (about 3 MiB of rows) per chunk, and at least eight
   * chunks per thread where the rows allow */
  const int64_t chunk =
      rbk * MN__MAX(1, MN__MIN(16, n / ((int64_t)8 * nt * rbk)));
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int nth = omp_get_num_threads();
    int64_t qa = 0, qz = nq, set = 0;
    if (split_q) {
      qa = nq * t / nth;
      qz = nq * (t + 1) / nth;
    } else {
      set = t;
    }
    float *buf = mn_malloc((size_t)(qt * rbk) * sizeof(float));
    float *nrm2 = mn_malloc((size_t)rbk * sizeof(float));
    float *rowtmp = mn_malloc((size_t)(2 * rbk) * sizeof(float));
    if (!buf || !nrm2 || !rowtmp) {
#pragma omp atomic write
      failed = 1;
    } else {
      /* Splitting rows, threads take chunks from a shared counter rather
       * than fixed halves, so a thread that loses its core (a loaded
       * machine, other requests) does not hold up the call. Each thread's
       * chunks still come in increasing row order, which the heaps' tie
       * rule relies on. */
      for (;;) {
        int64_t ra = 0, rz = n;
        if (!split_q) {
          ra = __atomic_fetch_add(&next_row, chunk, __ATOMIC_RELAXED);
          if (ra >= n)
            break;
          rz = MN__MIN(n, ra + chunk);
        }
        for (int64_t r0 = ra; r0 < rz; r0 += rbk) {
          const int64_t nr = MN__MIN(rbk, rz - r0);
          for (int64_t q0 = qa; q0 < qz; q0 += qt) {
            const int64_t m = MN__MIN(qt, qz - q0);
            p.dots(&p.ctx, r0, nr, q0, m, buf, rbk,
                   (p.need_norm && q0 == qa) ? nrm2 : NULL);
            finish_block(&p, db, r0, nr, q0, m, buf, rbk, nrm2, rowtmp, 1);
            for (int64_t j = 0; j < m; j++) {
              const int64_t h = set * nq + q0 + j;
              heap_scan_sorted_ids(heaps + h * k, counts + h, k, buf + j * rbk,
                                   nr, id_base + r0);
            }
          }
        }
        if (split_q)
          break;
      }
    }
    mn_free(buf);
    mn_free(nrm2);
    mn_free(rowtmp);
  }
  mn_status st = MN_OK;
  if (failed) {
    st = mn__set_error(MN_ERR_NOMEM, "out of memory for search workspace");
  } else if (nsets == 1) {
    for (int64_t i = 0; i < nq; i++)
      emit(heaps + i * k, counts[i], k, negate, scores + i * k, ids + i * k);
  } else {
    cand *all = mn_malloc((size_t)(nsets * k) * sizeof(cand));
    if (!all) {
      st = mn__set_error(MN_ERR_NOMEM, "out of memory merging search results");
    } else {
      for (int64_t i = 0; i < nq; i++) {
        int64_t m = 0;
        for (int64_t s = 0; s < nsets; s++) {
          const int64_t h = s * nq + i;
          memcpy(all + m, heaps + h * k, (size_t)counts[h] * sizeof(cand));
          m += counts[h];
        }
        emit(all, m, k, negate, scores + i * k, ids + i * k);
      }
      mn_free(all);
    }
  }
  mn_free(heaps);
  mn_free(counts);
  prep_free(&p);
  return st;
}

/* ---------------------------------------------------------------------------
 * Top-k over the rows of a score matrix
 * ------------------------------------------------------------------------- */
static int topk_row(const float *row, int64_t cols, int64_t k, int largest,
                    float *out_scores, int64_t *out_ids) {
  int64_t cap = MN__MIN(k, cols);
  cand *h = malloc((size_t)MN__MAX(cap, 1) * sizeof(cand));
  if (!h)
    return -1;
  int64_t cnt = 0;
  for (int64_t c = 0; c < cols; c++) {
    float key = largest ? row[c] : -row[c];
    if (cnt < cap) {
      heap_push(h, cnt++, key, c);
    } else if (key > h[0].s ||
               (!(key < h[0].s) && better(key, c, h[0].s, h[0].id))) {
      h[0].s = key;
      h[0].id = c;
      heap_sift_down(h, cap, 0);
    }
  }
  emit(h, cnt, k, !largest, out_scores, out_ids);
  free(h);
  return 0;
}

mn_status mn__cpu_topk(const mn_tensor *scores, int64_t k, int largest,
                       float *out_scores, int64_t *out_ids) {
  const int64_t rows = scores->rows, cols = MN__MAX(scores->cols, 0);
  int failed = 0;
#pragma omp parallel for schedule(static) if (rows > 1 && rows * cols >= 65536)
  for (int64_t r = 0; r < rows; r++) {
    if (topk_row((const float *)mn_tensor_row(scores, r), cols, k, largest,
                 out_scores + r * k, out_ids + r * k) != 0) {
#pragma omp atomic write
      failed = 1;
    }
  }
  if (failed)
    return mn__set_error(MN_ERR_NOMEM, "out of memory for top-%lld",
                         (long long)k);
  return MN_OK;
}
