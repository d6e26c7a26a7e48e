/*
 * pipeline.c - processEmbeddings as backend calls: normalize, then PCA (a
 * given model, or one fitted on the whole input), then quantization or a
 * change of precision, `batch_size` rows per backend call.
 *
 * DESIGN: a run makes up to three passes over the rows.
 *   1. fit    (only when a PCA model must be fitted): the whole input is
 *             normalised (if asked) into one buffer on the backend and the
 *             model is fitted on it once; pass 2 reads that buffer.
 *   2. float  normalise and transform each batch. The float result goes
 *             straight to where it is needed next: the output (float32
 *             output on a host backend), a whole-input buffer (when pass 3
 *             must train on it) or a batch scratch buffer that is encoded
 *             at once.
 *   3. encode (only when int8_affine parameters must be trained on the
 *             whole processed input): train, then quantise each batch.
 * On a host backend (the CPU) the ops read the caller's rows where they are
 * and write the result's rows in place: nothing is copied that an op does
 * not have to write anyway. On a device backend each batch is uploaded into
 * one scratch buffer reused by every batch, and codes and scales are
 * downloaded into the result. Backend buffers are taken to be
 * byte-addressable (a row view is a pointer offset), as CUDA device
 * pointers are. Per-row scales are written by quantize into memory on the
 * backend's device; affine parameters are host memory (compute.h).
 * Every temporary belongs to one context struct and is freed in one place;
 * the run keeps no state outside it, so concurrent runs are safe.
 */
#include "common/internal.h"
#include "mnemo/compute.h"

#include <stdio.h>
#include <string.h>

#define MOD "pipeline"

void mn_pipeline_opts_init(mn_pipeline_opts *o) {
  if (!o)
    return;
  memset(o, 0, sizeof *o);
  o->normalize = 0;
  o->reduce_dims = 0;
  o->pca = NULL;
  o->quant = MN_QUANT_NONE;
  o->affine = NULL;
  o->precision = MN_DTYPE_F32;
  o->batch_size = 0;
}

void mn_pipeline_result_free(mn_pipeline_result *res) {
  if (!res)
    return;
  mn_free(res->out.data);
  res->out.data = NULL;
  mn_free(res->scales);
  res->scales = NULL;
  mn_free(res->affine.vmin);
  mn_free(res->affine.scale);
  res->affine.vmin = NULL;
  res->affine.scale = NULL;
  res->affine.dim = 0;
  mn_pca_free(res->fitted);
  res->fitted = NULL;
}

typedef struct pipe {
  mn_backend *b;
  int host; /* the backend computes on host memory */
  const mn_tensor *in;
  mn_pipeline_result *res;
  int64_t rows, cols, out_cols;
  int64_t batch;    /* rows per backend call */
  int64_t nbatches; /* for error messages */
  int normalize;    /* still to be done in pass 2 */
  const mn_pca_model *pca;
  int whiten;
  mn_quant_kind enc; /* final encoding; NONE = float32 output */
  const mn_affine_params *affine;
  int64_t zero_rows;
  /* temporaries on the backend, freed by pipe_free */
  void *whole_norm;     /* pass 1: rows x cols float32 */
  void *whole_float;    /* pass 2 -> 3: rows x out_cols float32 */
  void *x_scratch;      /* batch x cols float32 */
  void *f_scratch;      /* batch x out_cols float32 */
  void *codes_scratch;  /* device backends: batch rows of codes */
  void *scales_scratch; /* device backends: batch scales */
} pipe;

static void pipe_free(pipe *p) {
  void **bufs[] = {&p->whole_norm, &p->whole_float,   &p->x_scratch,
                   &p->f_scratch,  &p->codes_scratch, &p->scales_scratch};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
    mn_backend_free(p->b, *bufs[i]);
    *bufs[i] = NULL;
  }
}

/* A dense view on the backend's device. */
static mn_tensor dense(const pipe *p, void *data, mn_dtype dt, int64_t rows,
                       int64_t cols) {
  mn_tensor t = mn_tensor_host(data, dt, rows, cols);
  t.device = p->host ? MN_DEVICE_HOST : MN_DEVICE_GPU;
  return t;
}

/* Rows [r0, r0 + n) of t, same stride and device. */
static mn_tensor rows_of(const mn_tensor *t, int64_t r0, int64_t n) {
  mn_tensor v = *t;
  v.data = (char *)t->data + r0 * t->stride;
  v.rows = n;
  return v;
}

/* Allocate a backend buffer once; later calls keep the first one. */
static mn_status need_buf(pipe *p, void **buf, size_t bytes) {
  if (*buf)
    return MN_OK;
  mn_status s = mn_backend_alloc(p->b, bytes ? bytes : 1, buf);
  if (s != MN_OK)
    *buf = NULL;
  return s;
}

/* Say which rows a failing batch op was working on: the op itself counts
 * rows from the start of its batch. */
static mn_status in_rows(const pipe *p, mn_status s, int64_t r0, int64_t n) {
  if (s == MN_OK || p->nbatches <= 1)
    return s;
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", mn_errmsg());
  return mn__set_error(s, "in the batch of rows %lld-%lld: %s", (long long)r0,
                       (long long)(r0 + n - 1), msg);
}

/* Copy host rows [r0, r0 + n) of `src` into the dense device tensor dst. */
static mn_status upload_rows(pipe *p, const mn_tensor *src, int64_t r0,
                             int64_t n, const mn_tensor *dst) {
  size_t rb = mn_dtype_row_bytes(src->dtype, src->cols);
  const char *from = (const char *)src->data + r0 * src->stride;
  if (n <= 0)
    return MN_OK;
  if (src->stride == (int64_t)rb || n == 1)
    return mn_backend_upload(p->b, dst->data, from, rb * (size_t)n);
  for (int64_t r = 0; r < n; r++)
    MN__TRY(mn_backend_upload(p->b, (char *)dst->data + r * dst->stride,
                              from + r * src->stride, rb));
  return MN_OK;
}

/* Put the float rows `f` (on the backend) for output rows [r0, r0 + n) into
 * the result: quantise them, or (float32 output) download them. */
static mn_status encode_batch(pipe *p, const mn_tensor *f, int64_t r0,
                              int64_t n) {
  mn_pipeline_result *res = p->res;
  mn_tensor outv = rows_of(&res->out, r0, n);
  size_t rb = mn_dtype_row_bytes(res->out.dtype, res->out.cols);
  float *scales = res->scales ? res->scales + r0 : NULL;
  if (p->enc == MN_QUANT_NONE) {
    /* On a host backend pass 2 wrote these rows in place already. */
    if (p->host)
      return MN_OK;
    return mn_backend_download(p->b, outv.data, f->data, rb * (size_t)n);
  }
  if (p->host)
    return in_rows(
        p, mn_backend_quantize(p->b, f, p->enc, p->affine, &outv, scales), r0,
        n);
  MN__TRY(need_buf(p, &p->codes_scratch, rb * (size_t)p->batch));
  if (scales)
    MN__TRY(need_buf(p, &p->scales_scratch, sizeof(float) * (size_t)p->batch));
  mn_tensor codes =
      dense(p, p->codes_scratch, res->out.dtype, n, res->out.cols);
  MN__TRY(
      in_rows(p,
              mn_backend_quantize(p->b, f, p->enc, p->affine, &codes,
                                  scales ? (float *)p->scales_scratch : NULL),
              r0, n));
  MN__TRY(mn_backend_download(p->b, outv.data, codes.data, rb * (size_t)n));
  if (scales)
    MN__TRY(mn_backend_download(p->b, scales, p->scales_scratch,
                                sizeof(float) * (size_t)n));
  return MN_OK;
}

/*
 * Pass 1: normalise the whole input (when asked) into one backend buffer
 * and fit the PCA model on it. *src becomes that buffer (or the input
 * itself on a host backend without normalisation).
 */
static mn_status pass_fit(pipe *p, int64_t k, mn_tensor *src) {
  const mn_tensor *in = p->in;
  size_t bytes = (size_t)p->rows * (size_t)p->cols * sizeof(float);
  if (p->host && !p->normalize) {
    *src = *in;
  } else {
    MN__TRY(need_buf(p, &p->whole_norm, bytes));
    *src = dense(p, p->whole_norm, MN_DTYPE_F32, p->rows, p->cols);
    if (!p->host)
      MN__TRY(upload_rows(p, in, 0, p->rows, src));
    for (int64_t r0 = 0; p->normalize && r0 < p->rows; r0 += p->batch) {
      int64_t n = MN__MIN(p->batch, p->rows - r0);
      mn_tensor x = p->host ? rows_of(in, r0, n) : rows_of(src, r0, n);
      mn_tensor y = rows_of(src, r0, n);
      int64_t z = 0;
      MN__TRY(in_rows(p, mn_backend_normalize(p->b, &x, &y, &z), r0, n));
      p->zero_rows += z;
    }
  }
  p->normalize = 0;
  mn_status s = mn_backend_pca_fit(p->b, src, k, &p->res->fitted);
  if (s != MN_OK) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mn_errmsg());
    return mn__set_error(s, "fitting PCA on the batch: %s", msg);
  }
  p->pca = p->res->fitted;
  return MN_OK;
}

/*
 * Pass 2: normalise and transform batch by batch. `src` holds the rows:
 * the caller's host input, or (after pass 1) a buffer on the backend.
 * When `whole` is non-NULL the float rows are kept there for pass 3;
 * otherwise each batch is encoded into the result at once.
 */
static mn_status pass_float(pipe *p, const mn_tensor *src, int src_on_backend,
                            const mn_tensor *whole) {
  int stages = p->normalize || p->pca;
  for (int64_t r0 = 0; r0 < p->rows; r0 += p->batch) {
    int64_t n = MN__MIN(p->batch, p->rows - r0);
    /* fb: where this batch's float result must end up. */
    mn_tensor fb;
    if (whole) {
      fb = rows_of(whole, r0, n);
    } else if (p->enc == MN_QUANT_NONE && p->host) {
      fb = rows_of(&p->res->out, r0, n);
    } else if (p->host && !stages) {
      fb = rows_of(src, r0, n); /* encode straight from the input */
    } else {
      MN__TRY(need_buf(p, &p->f_scratch,
                       (size_t)p->batch * (size_t)p->out_cols * 4));
      fb = dense(p, p->f_scratch, MN_DTYPE_F32, n, p->out_cols);
    }
    /* x: this batch's rows on the backend. */
    mn_tensor x;
    if (p->host || src_on_backend) {
      x = rows_of(src, r0, n);
    } else if (p->pca) {
      MN__TRY(
          need_buf(p, &p->x_scratch, (size_t)p->batch * (size_t)p->cols * 4));
      x = dense(p, p->x_scratch, MN_DTYPE_F32, n, p->cols);
      MN__TRY(upload_rows(p, src, r0, n, &x));
    } else {
      x = fb; /* no transform: upload where the result goes */
      MN__TRY(upload_rows(p, src, r0, n, &x));
    }
    if (p->normalize) {
      mn_tensor y = x; /* device: in place on our own copy */
      if (p->host && p->pca) {
        MN__TRY(
            need_buf(p, &p->x_scratch, (size_t)p->batch * (size_t)p->cols * 4));
        y = dense(p, p->x_scratch, MN_DTYPE_F32, n, p->cols);
      } else if (p->host) {
        y = fb;
      }
      int64_t z = 0;
      MN__TRY(in_rows(p, mn_backend_normalize(p->b, &x, &y, &z), r0, n));
      p->zero_rows += z;
      x = y;
    }
    if (p->pca) {
      MN__TRY(
          in_rows(p, mn_backend_pca_transform(p->b, &x, p->pca, p->whiten, &fb),
                  r0, n));
      x = fb;
    }
    if (x.data != fb.data) {
      /* Only a host float32 output with nothing to compute gets here. */
      size_t rb = (size_t)p->cols * sizeof(float);
      for (int64_t r = 0; r < n; r++)
        memcpy(mn_tensor_row(&fb, r), mn_tensor_row(&x, r), rb);
    }
    if (!whole)
      MN__TRY(encode_batch(p, &fb, r0, n));
  }
  return MN_OK;
}

/* Pass 3: train int8_affine on every processed row, then quantise. */
static mn_status pass_train(pipe *p, const mn_tensor *whole) {
  mn_pipeline_result *res = p->res;
  res->affine.dim = p->out_cols;
  res->affine.vmin = mn_malloc((size_t)p->out_cols * sizeof(float));
  res->affine.scale = mn_malloc((size_t)p->out_cols * sizeof(float));
  if (!res->affine.vmin || !res->affine.scale)
    return MN_ERR_NOMEM;
  MN__TRY(mn_backend_affine_train(p->b, whole, &res->affine));
  p->affine = &res->affine;
  for (int64_t r0 = 0; r0 < p->rows; r0 += p->batch) {
    int64_t n = MN__MIN(p->batch, p->rows - r0);
    mn_tensor f = rows_of(whole, r0, n);
    MN__TRY(encode_batch(p, &f, r0, n));
  }
  return MN_OK;
}

static mn_status check_args(mn_backend *b, const mn_tensor *in,
                            const mn_pipeline_opts *o) {
  if (!b)
    return mn__set_error(MN_ERR_INVALID, "backend is NULL");
  if (!in || (!in->data && in->rows > 0))
    return mn__set_error(MN_ERR_INVALID, "input embeddings are missing");
  if (in->dtype != MN_DTYPE_F32 || in->device != MN_DEVICE_HOST)
    return mn__set_error(MN_ERR_INVALID,
                         "input must be float32 in host memory, got %s on "
                         "the %s",
                         mn_dtype_name(in->dtype),
                         in->device == MN_DEVICE_HOST ? "host" : "GPU");
  if (in->rows < 0 || in->cols < 1)
    return mn__set_error(MN_ERR_INVALID,
                         "input has shape [%lld, %lld]: each embedding needs "
                         "at least one dimension",
                         (long long)in->rows, (long long)in->cols);
  if (in->rows > 1 && in->stride < (int64_t)(in->cols * sizeof(float)))
    return mn__set_error(MN_ERR_INVALID,
                         "input row stride %lld is smaller than a row (%lld "
                         "bytes)",
                         (long long)in->stride,
                         (long long)(in->cols * (int64_t)sizeof(float)));
  if ((unsigned)o->quant > MN_QUANT_BINARY)
    return mn__set_error(MN_ERR_INVALID, "quantization kind %d is not valid",
                         (int)o->quant);
  if (o->quant == MN_QUANT_NONE && o->precision != MN_DTYPE_F32 &&
      o->precision != MN_DTYPE_F16 && o->precision != MN_DTYPE_BF16)
    return mn__set_error(MN_ERR_INVALID,
                         "precision %s is not one of float32, float16, "
                         "bfloat16 (use quantization for integer codes)",
                         mn_dtype_name(o->precision));
  if (o->batch_size < 0)
    return mn__set_error(MN_ERR_INVALID,
                         "batch_size must be 0 (all rows at once) or "
                         "positive, got %lld",
                         (long long)o->batch_size);
  if (o->reduce_dims < 0)
    return mn__set_error(MN_ERR_INVALID,
                         "reduce_dims must be 0 (no PCA) or positive, got "
                         "%lld",
                         (long long)o->reduce_dims);
  if (o->reduce_dims > in->cols)
    return mn__set_error(MN_ERR_INVALID,
                         "reduce_dims %lld is larger than the embedding "
                         "width %lld: PCA can only reduce dimensions",
                         (long long)o->reduce_dims, (long long)in->cols);
  if (o->pca) {
    if (!o->pca->mean || !o->pca->components)
      return mn__set_error(MN_ERR_INVALID, "the PCA model is empty");
    if (o->pca->input_dim != in->cols)
      return mn__set_error(MN_ERR_INVALID,
                           "the PCA model expects %lld-wide embeddings, "
                           "these are %lld wide",
                           (long long)o->pca->input_dim, (long long)in->cols);
    if (o->reduce_dims > 0 && o->reduce_dims != o->pca->n_components)
      return mn__set_error(MN_ERR_INVALID,
                           "reduce_dims %lld does not match the PCA model, "
                           "which has %lld components: omit reduce_dims or "
                           "set it to %lld",
                           (long long)o->reduce_dims,
                           (long long)o->pca->n_components,
                           (long long)o->pca->n_components);
  }
  return MN_OK;
}

static mn_status run(pipe *p, const mn_pipeline_opts *o) {
  mn_pipeline_result *res = p->res;
  const mn_tensor *in = p->in;
  int need_fit = o->reduce_dims > 0 && !o->pca;
  int need_train = o->quant == MN_QUANT_INT8_AFFINE && !o->affine;
  p->out_cols = o->pca ? o->pca->n_components
                       : (o->reduce_dims > 0 ? o->reduce_dims : in->cols);

  if (o->quant == MN_QUANT_INT8_AFFINE && o->affine) {
    const mn_affine_params *a = o->affine;
    if (!a->vmin || !a->scale || a->dim != p->out_cols)
      return mn__set_error(MN_ERR_INVALID,
                           "int8_affine parameters hold %lld dimensions, the "
                           "processed embeddings have %lld",
                           (long long)a->dim, (long long)p->out_cols);
    /* The result owns a copy, so it stays valid after the caller's go. */
    res->affine.dim = a->dim;
    res->affine.vmin = mn_malloc((size_t)a->dim * sizeof(float));
    res->affine.scale = mn_malloc((size_t)a->dim * sizeof(float));
    if (!res->affine.vmin || !res->affine.scale)
      return MN_ERR_NOMEM;
    memcpy(res->affine.vmin, a->vmin, (size_t)a->dim * sizeof(float));
    memcpy(res->affine.scale, a->scale, (size_t)a->dim * sizeof(float));
    p->affine = &res->affine;
  }
  if (p->rows == 0 && (need_fit || need_train))
    return mn__set_error(MN_ERR_INVALID, "there are no embeddings to %s on",
                         need_fit ? "fit PCA" : "train int8_affine");

  /* The output, owned by the result. */
  mn_dtype odt =
      o->quant != MN_QUANT_NONE ? mn_quant_dtype(o->quant) : o->precision;
  size_t orb = mn_dtype_row_bytes(odt, p->out_cols);
  /* Room in front of a large output: a binary reply puts its header there
   * rather than copying the tensor behind it. */
  size_t obytes = orb * (size_t)p->rows;
  void *odata =
      mn__malloc_front(obytes, obytes >= 16384 ? MN__TENSOR_FRONT : 0);
  if (!odata)
    return MN_ERR_NOMEM;
  res->out = mn_tensor_host(odata, odt, p->rows, p->out_cols);
  if (o->quant == MN_QUANT_INT8 || o->quant == MN_QUANT_INT4) {
    res->scales = mn_malloc((size_t)p->rows * sizeof(float));
    if (!res->scales)
      return MN_ERR_NOMEM;
  }

  mn_tensor src = *in;
  int src_on_backend = p->host;
  if (need_fit) {
    MN__TRY(pass_fit(p, o->reduce_dims, &src));
    src_on_backend = 1;
  }

  if (!need_train)
    return pass_float(p, &src, src_on_backend, NULL);

  /* int8_affine trained on the whole processed input. */
  mn_tensor whole;
  if (p->host && !p->normalize && !p->pca) {
    whole = src; /* nothing to compute before training */
  } else {
    MN__TRY(need_buf(p, &p->whole_float,
                     (size_t)p->rows * (size_t)p->out_cols * sizeof(float)));
    whole = dense(p, p->whole_float, MN_DTYPE_F32, p->rows, p->out_cols);
    MN__TRY(pass_float(p, &src, src_on_backend, &whole));
  }
  /* pass_float over the whole buffer frees nothing: scratch is reused. */
  return pass_train(p, &whole);
}

mn_status mn_pipeline_run(mn_backend *b, const mn_tensor *in,
                          const mn_pipeline_opts *opts,
                          mn_pipeline_result *res) {
  uint64_t t0 = mn_time_ns();
  mn_pipeline_opts defaults;
  if (!res)
    return mn__set_error(MN_ERR_INVALID, "result is NULL");
  memset(res, 0, sizeof *res);
  if (!opts) {
    mn_pipeline_opts_init(&defaults);
    opts = &defaults;
  }
  MN__TRY(check_args(b, in, opts));
  /* On a host backend the input's first reader is always a backend op
   * (normalize, the PCA, a quantizer), and every one of them refuses NaN
   * and Inf, the CPU's in the same pass that computes. A separate scan
   * first would read the whole input once more for nothing. Only a float32
   * pass-through, or a device backend (rows go to it by upload), needs the
   * scan here. */
  int op_checks =
      mn_backend_device_kind(b) == MN_DEVICE_HOST &&
      (opts->normalize || opts->pca || opts->reduce_dims > 0 ||
       opts->quant != MN_QUANT_NONE || opts->precision != MN_DTYPE_F32);
  if (!op_checks)
    MN__TRY(mn_tensor_check_finite(in));

  pipe p;
  memset(&p, 0, sizeof p);
  p.b = b;
  p.host = mn_backend_device_kind(b) == MN_DEVICE_HOST;
  p.in = in;
  p.res = res;
  p.rows = in->rows;
  p.cols = in->cols;
  p.batch =
      opts->batch_size > 0 ? MN__MIN(opts->batch_size, in->rows) : in->rows;
  if (p.batch < 1)
    p.batch = 1;
  p.nbatches = in->rows > 0 ? (in->rows + p.batch - 1) / p.batch : 0;
  p.normalize = opts->normalize != 0;
  p.pca = opts->pca;
  p.whiten = opts->whiten;
  if (opts->quant != MN_QUANT_NONE)
    p.enc = opts->quant;
  else if (opts->precision == MN_DTYPE_F16)
    p.enc = MN_QUANT_FP16;
  else if (opts->precision == MN_DTYPE_BF16)
    p.enc = MN_QUANT_BF16;
  else
    p.enc = MN_QUANT_NONE;

  mn_status s = run(&p, opts);
  pipe_free(&p);
  if (s == MN_ERR_INVALID && op_checks) {
    /* An op refused the input, and named a row of its batch; the scan
     * names it in the whole input, as it would have up front. */
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mn_errmsg());
    if (mn_tensor_check_finite(in) == MN_OK)
      mn__set_error(s, "%s", msg);
  }
  if (s != MN_OK) {
    mn_pipeline_result_free(res);
    memset(res, 0, sizeof *res);
    return s;
  }
  res->zero_rows = p.zero_rows;
  res->quant = opts->quant;
  snprintf(res->device, sizeof res->device, "%s", mn_backend_device(b));
  res->processing_ms = (double)(mn_time_ns() - t0) / 1e6;
  MN__LOGD(MOD, "%lld x %lld -> %lld x %lld %s in %.3f ms on %s",
           (long long)in->rows, (long long)in->cols, (long long)res->out.rows,
           (long long)res->out.cols, mn_dtype_name(res->out.dtype),
           res->processing_ms, res->device);
  return MN_OK;
}
