/*
 * backend.c - the backend registry and factory, plugin loading, and the
 * public op wrappers that check arguments before calling a backend.
 *
 * DESIGN: wrappers validate once (shapes, dtypes, devices, k, finiteness
 * of host float32 input), so each backend implements only the arithmetic.
 * Plugins are found by name (libmnemo-cuda.so) in: the configured
 * directory, the executable's directory and its ../lib, then each entry of
 * $MNEMO_BACKEND_PATH (a colon-separated list of directories or files).
 * Any failure to load is logged and, under AUTO, the CPU backend is used.
 */
#include "common/internal.h"
#include "compute/backend_impl.h"

#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MOD "backend"
#define MN__PLUGIN_NAME "libmnemo-cuda.so"

/* ---------------------------------------------------------------------------
 * Names
 * ------------------------------------------------------------------------- */
static const char *const quant_names[] = {"none", "int8", "int8_affine", "int4",
                                          "fp16", "bf16", "binary"};

const char *mn_quant_name(mn_quant_kind q) {
  return (unsigned)q <= MN_QUANT_BINARY ? quant_names[q] : "unknown";
}

mn_status mn_quant_parse(const char *s, mn_quant_kind *out) {
  static const struct {
    const char *name;
    mn_quant_kind q;
  } aliases[] = {
      {"float16", MN_QUANT_FP16},      {"bfloat16", MN_QUANT_BF16},
      {"uint8", MN_QUANT_INT8_AFFINE}, {"affine", MN_QUANT_INT8_AFFINE},
      {"sq8", MN_QUANT_INT8_AFFINE},   {"bit", MN_QUANT_BINARY},
      {"bits", MN_QUANT_BINARY}};
  if (s) {
    for (int i = 0; i <= MN_QUANT_BINARY; i++)
      if (strcmp(s, quant_names[i]) == 0) {
        *out = (mn_quant_kind)i;
        return MN_OK;
      }
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
      if (strcmp(s, aliases[i].name) == 0) {
        *out = aliases[i].q;
        return MN_OK;
      }
  }
  return mn__set_error(MN_ERR_INVALID,
                       "quantization '%s' is not one of int8, int8_affine, "
                       "int4, fp16, bf16, binary, none",
                       s ? s : "(null)");
}

mn_dtype mn_quant_dtype(mn_quant_kind q) {
  switch (q) {
  case MN_QUANT_INT8:
    return MN_DTYPE_I8;
  case MN_QUANT_INT8_AFFINE:
    return MN_DTYPE_U8;
  case MN_QUANT_INT4:
    return MN_DTYPE_I4;
  case MN_QUANT_FP16:
    return MN_DTYPE_F16;
  case MN_QUANT_BF16:
    return MN_DTYPE_BF16;
  case MN_QUANT_BINARY:
    return MN_DTYPE_BIN;
  default:
    return MN_DTYPE_F32;
  }
}

static const char *const metric_names[] = {"ip", "cosine", "l2"};

const char *mn_metric_name(mn_metric m) {
  return (unsigned)m <= MN_METRIC_L2 ? metric_names[m] : "unknown";
}

mn_status mn_metric_parse(const char *s, mn_metric *out) {
  if (s) {
    for (int i = 0; i <= MN_METRIC_L2; i++)
      if (strcmp(s, metric_names[i]) == 0) {
        *out = (mn_metric)i;
        return MN_OK;
      }
    if (strcmp(s, "dot") == 0 || strcmp(s, "inner_product") == 0) {
      *out = MN_METRIC_IP;
      return MN_OK;
    }
    if (strcmp(s, "euclidean") == 0) {
      *out = MN_METRIC_L2;
      return MN_OK;
    }
  }
  return mn__set_error(MN_ERR_INVALID,
                       "metric '%s' is not one of cosine, ip, l2",
                       s ? s : "(null)");
}

mn_status mn_backend_pref_parse(const char *s, mn_backend_pref *out) {
  if (s && strcmp(s, "auto") == 0)
    *out = MN_BACKEND_AUTO;
  else if (s && strcmp(s, "cpu") == 0)
    *out = MN_BACKEND_CPU;
  else if (s && (strcmp(s, "cuda") == 0 || strcmp(s, "gpu") == 0))
    *out = MN_BACKEND_CUDA;
  else
    return mn__set_error(MN_ERR_INVALID,
                         "device '%s' is not one of auto, cpu, cuda",
                         s ? s : "(null)");
  return MN_OK;
}

/* ---------------------------------------------------------------------------
 * Factory and plugin loading
 * ------------------------------------------------------------------------- */
void mn_backend_opts_init(mn_backend_opts *o) {
  memset(o, 0, sizeof *o);
  o->pref = MN_BACKEND_AUTO;
}

mn_status mn_backend_open_cpu(const mn_backend_opts *opts, mn_backend **out) {
  if (!out)
    return mn__set_error(MN_ERR_INVALID, "out is NULL");
  return mn__cpu_backend_create(opts, out);
}

static void host_log(mn_log_level level, const char *module, const char *fmt,
                     ...) {
  if (level < mn_log_get_level())
    return;
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  mn__log(level, module, "%s", buf);
}

static mn_status host_set_error(mn_status s, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return mn__set_error(s, "%s", buf);
}

static const mn_backend_host plugin_host = {
    .api_version = MN_BACKEND_API_VERSION,
    .log = host_log,
    .set_error = host_set_error,
    .account_add = mn_account_add,
    .cpu_topk = mn__cpu_topk,
};

mn_status mn_backend_open_plugin(const char *path, const mn_backend_opts *opts,
                                 mn_backend **out) {
  if (!path || !out)
    return mn__set_error(MN_ERR_INVALID, "plugin path or out is NULL");
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h)
    return mn__set_error(MN_ERR_NOT_FOUND, "cannot load plugin %s: %s", path,
                         dlerror());
  mn_plugin_score_fn score = (mn_plugin_score_fn)dlsym(h, "mn_plugin_score");
  mn_plugin_init_fn init = (mn_plugin_init_fn)dlsym(h, "mn_plugin_init");
  if (!score || !init) {
    dlclose(h);
    return mn__set_error(MN_ERR_VERSION,
                         "%s does not export mn_plugin_score and "
                         "mn_plugin_init",
                         path);
  }
  int sc = score();
  if (sc <= 0) {
    dlclose(h);
    return mn__set_error(MN_ERR_UNSUPPORTED,
                         "plugin %s is not usable on this machine (score %d)",
                         path, sc);
  }
  mn_backend *b = NULL;
  mn_backend_opts defaults;
  if (!opts) {
    mn_backend_opts_init(&defaults);
    opts = &defaults;
  }
  mn_status s = init(opts, &plugin_host, &b);
  if (s != MN_OK || !b) {
    dlclose(h);
    if (s == MN_OK)
      s = MN_ERR_INTERNAL;
    return mn__set_error(s, "plugin %s failed to start: %s", path,
                         mn_errmsg()[0] ? mn_errmsg() : mn_strerror(s));
  }
  if (!b->iface || b->iface->api_version != MN_BACKEND_API_VERSION) {
    int got = b->iface ? b->iface->api_version : -1;
    if (b->iface && b->iface->destroy)
      b->iface->destroy(b);
    dlclose(h);
    return mn__set_error(MN_ERR_VERSION,
                         "plugin %s has backend API version %d, this build "
                         "needs %d",
                         path, got, MN_BACKEND_API_VERSION);
  }
  b->dl_handle = h;
  *out = b;
  return MN_OK;
}

/* Try one candidate path; returns MN_OK with *out set on success. */
static mn_status try_plugin(const char *path, const mn_backend_opts *opts,
                            mn_backend **out, int *found_any) {
  if (access(path, R_OK) != 0)
    return MN_ERR_NOT_FOUND;
  *found_any = 1;
  mn_status s = mn_backend_open_plugin(path, opts, out);
  /* No usable GPU (the plugin's score is 0) is the normal case on a CPU
   * machine, not something to warn about; a plugin that fails to load or
   * start is. */
  if (s == MN_ERR_UNSUPPORTED)
    MN__LOGI(MOD, "CUDA plugin %s not used: %s", path, mn_errmsg());
  else if (s != MN_OK)
    MN__LOGW(MOD, "CUDA plugin %s not used: %s", path, mn_errmsg());
  return s;
}

static mn_status find_plugin(const mn_backend_opts *opts, mn_backend **out,
                             char *why, size_t whylen) {
  char path[PATH_MAX + 64];
  int found_any = 0;
  mn_status last = MN_ERR_NOT_FOUND;
  why[0] = '\0';
  if (opts->plugin_dir && opts->plugin_dir[0]) {
    snprintf(path, sizeof path, "%s/%s", opts->plugin_dir, MN__PLUGIN_NAME);
    if ((last = try_plugin(path, opts, out, &found_any)) == MN_OK)
      return MN_OK;
    if (found_any)
      snprintf(why, whylen, "%s", mn_errmsg());
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) {
      *slash = '\0';
      const char *subs[] = {"", "/../lib"};
      for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s%s/%s", exe, subs[i], MN__PLUGIN_NAME);
        if ((last = try_plugin(path, opts, out, &found_any)) == MN_OK)
          return MN_OK;
        if (found_any && !why[0])
          snprintf(why, whylen, "%s", mn_errmsg());
      }
    }
  }
  const char *env = getenv("MNEMO_BACKEND_PATH");
  if (env && *env) {
    char *copy = strdup(env);
    char *save = NULL;
    for (char *tok = copy ? strtok_r(copy, ":", &save) : NULL; tok;
         tok = strtok_r(NULL, ":", &save)) {
      size_t tl = strlen(tok);
      if (tl > 3 && strcmp(tok + tl - 3, ".so") == 0)
        snprintf(path, sizeof path, "%s", tok);
      else
        snprintf(path, sizeof path, "%s/%s", tok, MN__PLUGIN_NAME);
      if ((last = try_plugin(path, opts, out, &found_any)) == MN_OK) {
        free(copy);
        return MN_OK;
      }
      if (found_any && !why[0])
        snprintf(why, whylen, "%s", mn_errmsg());
    }
    free(copy);
  }
  if (!found_any)
    snprintf(why, whylen,
             "%s not found (searched the plugin directory, the "
             "executable's directory and MNEMO_BACKEND_PATH)",
             MN__PLUGIN_NAME);
  return last == MN_OK ? MN_ERR_NOT_FOUND : last;
}

mn_status mn_backend_open(const mn_backend_opts *opts, mn_backend **out) {
  mn_backend_opts defaults;
  if (!out)
    return mn__set_error(MN_ERR_INVALID, "out is NULL");
  if (!opts) {
    mn_backend_opts_init(&defaults);
    opts = &defaults;
  }
  if (opts->pref == MN_BACKEND_CPU)
    return mn__cpu_backend_create(opts, out);
  char why[1024];
  mn_status s = find_plugin(opts, out, why, sizeof why);
  if (s == MN_OK) {
    MN__LOGI(MOD, "using backend %s", (*out)->device);
    return MN_OK;
  }
  if (opts->pref == MN_BACKEND_CUDA)
    return mn__set_error(MN_ERR_UNSUPPORTED,
                         "CUDA backend requested but "
                         "not usable: %s",
                         why);
  MN__LOGI(MOD, "no usable GPU backend (%s); using the CPU", why);
  return mn__cpu_backend_create(opts, out);
}

void mn_backend_close(mn_backend *b) {
  if (!b)
    return;
  void *h = b->dl_handle;
  b->iface->destroy(b);
  if (h)
    dlclose(h);
}

const char *mn_backend_name(const mn_backend *b) {
  return b ? b->iface->name : "none";
}

const char *mn_backend_device(const mn_backend *b) {
  return b ? b->device : "none";
}

mn_device_kind mn_backend_device_kind(const mn_backend *b) {
  return b ? b->device_kind : MN_DEVICE_HOST;
}

/* ---------------------------------------------------------------------------
 * Buffers
 * ------------------------------------------------------------------------- */
mn_status mn_backend_alloc(mn_backend *b, size_t bytes, void **out) {
  if (!b || !out)
    return mn__set_error(MN_ERR_INVALID, "backend or out is NULL");
  return b->iface->alloc(b, bytes, out);
}

void mn_backend_free(mn_backend *b, void *p) {
  if (b && p)
    b->iface->free(b, p);
}

mn_status mn_backend_upload(mn_backend *b, void *dst, const void *src,
                            size_t bytes) {
  if (!b || (bytes && (!dst || !src)))
    return mn__set_error(MN_ERR_INVALID, "upload: NULL argument");
  return b->iface->upload(b, dst, src, bytes);
}

mn_status mn_backend_download(mn_backend *b, void *dst, const void *src,
                              size_t bytes) {
  if (!b || (bytes && (!dst || !src)))
    return mn__set_error(MN_ERR_INVALID, "download: NULL argument");
  return b->iface->download(b, dst, src, bytes);
}

mn_status mn_backend_memory_info(mn_backend *b, uint64_t *free_bytes,
                                 uint64_t *total_bytes) {
  if (!b || !free_bytes || !total_bytes)
    return mn__set_error(MN_ERR_INVALID, "memory_info: NULL argument");
  return b->iface->memory_info(b, free_bytes, total_bytes);
}

mn_status mn_backend_synchronize(mn_backend *b) {
  if (!b)
    return mn__set_error(MN_ERR_INVALID, "backend is NULL");
  return b->iface->synchronize ? b->iface->synchronize(b) : MN_OK;
}

/* ---------------------------------------------------------------------------
 * Argument checks shared by the op wrappers
 * ------------------------------------------------------------------------- */
static mn_status check_tensor(const mn_backend *b, const mn_tensor *t,
                              const char *what, int want_dtype) {
  if (!t || (!t->data && t->rows > 0))
    return mn__set_error(MN_ERR_INVALID, "%s tensor is missing", what);
  if (t->rows < 0 || t->cols < 1)
    return mn__set_error(MN_ERR_INVALID,
                         "%s has shape [%lld, %lld]: needs at least one "
                         "column",
                         what, (long long)t->rows, (long long)t->cols);
  if (want_dtype >= 0 && t->dtype != (mn_dtype)want_dtype)
    return mn__set_error(MN_ERR_INVALID, "%s has dtype %s, expected %s", what,
                         mn_dtype_name(t->dtype),
                         mn_dtype_name((mn_dtype)want_dtype));
  if ((unsigned)t->dtype >= MN_DTYPE_COUNT)
    return mn__set_error(MN_ERR_INVALID, "%s has an unknown dtype", what);
  if (t->rows > 1 && t->stride < (int64_t)mn_dtype_row_bytes(t->dtype, t->cols))
    return mn__set_error(MN_ERR_INVALID,
                         "%s row stride %lld is smaller than "
                         "a row (%zu bytes)",
                         what, (long long)t->stride,
                         mn_dtype_row_bytes(t->dtype, t->cols));
  if (t->device != b->device_kind)
    return mn__set_error(MN_ERR_INVALID,
                         "%s lives on the %s, backend %s "
                         "computes on the %s",
                         what, t->device == MN_DEVICE_GPU ? "GPU" : "host",
                         b->iface->name,
                         b->device_kind == MN_DEVICE_GPU ? "GPU" : "host");
  return MN_OK;
}

/* Host float32 input must be finite; device input was checked on upload. */
static mn_status check_input(const mn_backend *b, const mn_tensor *x,
                             const char *what) {
  MN__TRY(check_tensor(b, x, what, MN_DTYPE_F32));
  if (x->device == MN_DEVICE_HOST)
    return mn_tensor_check_finite(x);
  return MN_OK;
}

/* As check_input, for ops whose kernels may check finiteness themselves. */
static mn_status check_input_fused(const mn_backend *b, const mn_tensor *x,
                                   const char *what) {
  if (b->iface->caps & MN_BACKEND_CAP_CHECKS_FINITE)
    return check_tensor(b, x, what, MN_DTYPE_F32);
  return check_input(b, x, what);
}

static mn_status check_same_shape(const mn_tensor *x, const mn_tensor *y,
                                  const char *xn, const char *yn) {
  if (x->rows != y->rows || x->cols != y->cols)
    return mn__set_error(MN_ERR_INVALID,
                         "%s is [%lld, %lld] but %s is [%lld, %lld]", yn,
                         (long long)y->rows, (long long)y->cols, xn,
                         (long long)x->rows, (long long)x->cols);
  return MN_OK;
}

#define MN__NEED_OP(b, op)                                                     \
  do {                                                                         \
    if (!(b)->iface->op)                                                       \
      return mn__set_error(MN_ERR_UNSUPPORTED, "backend %s has no " #op,       \
                           (b)->iface->name);                                  \
  } while (0)

/* ---------------------------------------------------------------------------
 * Op wrappers
 * ------------------------------------------------------------------------- */
mn_status mn_backend_normalize(mn_backend *b, const mn_tensor *x, mn_tensor *y,
                               int64_t *zero_rows) {
  if (!b)
    return mn__set_error(MN_ERR_INVALID, "backend is NULL");
  MN__TRY(check_input_fused(b, x, "input"));
  MN__TRY(check_tensor(b, y, "output", MN_DTYPE_F32));
  MN__TRY(check_same_shape(x, y, "input", "output"));
  MN__NEED_OP(b, normalize);
  int64_t z = 0;
  mn_status s = b->iface->normalize(b, x, y, &z);
  if (zero_rows)
    *zero_rows = z;
  return s;
}

/* Host input on a device backend: checked on the host, uploaded densely
 * into device memory for the fit, freed after. (fitPCA and the store hand
 * in host rows; the pipeline uploads its own.) */
static mn_status pca_fit_staged(mn_backend *b, const mn_tensor *x, int64_t k,
                                mn_pca_model **out) {
  mn_tensor h = *x;
  h.device = b->device_kind; /* here only dtype, shape and stride count */
  MN__TRY(check_tensor(b, &h, "PCA input", MN_DTYPE_F32));
  MN__TRY(mn_tensor_check_finite(x));
  size_t rb = mn_dtype_row_bytes(MN_DTYPE_F32, x->cols);
  size_t n = rb * (size_t)x->rows;
  void *d = NULL;
  MN__TRY(mn_backend_alloc(b, n, &d));
  mn_status s = MN_OK;
  if (x->rows <= 1 || x->stride == (int64_t)rb) {
    s = mn_backend_upload(b, d, x->data, n);
  } else {
    for (int64_t r = 0; r < x->rows && s == MN_OK; r++)
      s = mn_backend_upload(
          b, (char *)d + (size_t)r * rb,
          (const char *)x->data + (size_t)r * (size_t)x->stride, rb);
  }
  if (s == MN_OK) {
    mn_tensor t = *x;
    t.data = d;
    t.stride = (int64_t)rb;
    t.device = b->device_kind;
    s = mn_backend_pca_fit(b, &t, k, out);
  }
  mn_backend_free(b, d);
  return s;
}

mn_status mn_backend_pca_fit(mn_backend *b, const mn_tensor *x, int64_t k,
                             mn_pca_model **out) {
  if (!b || !out)
    return mn__set_error(MN_ERR_INVALID, "backend or out is NULL");
  *out = NULL;
  if (x && x->device == MN_DEVICE_HOST && b->device_kind != MN_DEVICE_HOST &&
      x->data && x->rows > 0)
    return pca_fit_staged(b, x, k, out);
  MN__TRY(check_input(b, x, "PCA input"));
  if (k < 1)
    return mn__set_error(MN_ERR_INVALID,
                         "PCA needs at least 1 component, got %lld",
                         (long long)k);
  if (k > x->cols)
    return mn__set_error(MN_ERR_INVALID,
                         "PCA with %lld components is impossible on %lld-wide "
                         "vectors: n_components must be at most the width",
                         (long long)k, (long long)x->cols);
  if (x->rows < 2)
    return mn__set_error(MN_ERR_INVALID,
                         "PCA needs at least 2 rows to estimate a covariance, "
                         "got %lld",
                         (long long)x->rows);
  if (k > x->rows)
    return mn__set_error(MN_ERR_INVALID,
                         "PCA with %lld components needs at least %lld rows, "
                         "got %lld",
                         (long long)k, (long long)k, (long long)x->rows);
  MN__NEED_OP(b, pca_fit);
  mn_pca_model *m = NULL;
  MN__TRY(mn_pca_alloc(x->cols, k, &m));
  mn_status s = b->iface->pca_fit(b, x, k, m);
  if (s != MN_OK) {
    mn_pca_free(m);
    return s;
  }
  m->n_samples = x->rows;
  *out = m;
  return MN_OK;
}

static mn_status check_pca_model(const mn_pca_model *m, int64_t cols) {
  if (!m || !m->mean || !m->components)
    return mn__set_error(MN_ERR_INVALID, "PCA model is missing");
  if (m->input_dim != cols)
    return mn__set_error(MN_ERR_INVALID,
                         "PCA model expects %lld-wide vectors, got %lld",
                         (long long)m->input_dim, (long long)cols);
  return MN_OK;
}

mn_status mn_backend_pca_transform(mn_backend *b, const mn_tensor *x,
                                   const mn_pca_model *m, int whiten,
                                   mn_tensor *y) {
  if (!b)
    return mn__set_error(MN_ERR_INVALID, "backend is NULL");
  MN__TRY(check_input(b, x, "input"));
  MN__TRY(check_pca_model(m, x->cols));
  MN__TRY(check_tensor(b, y, "output", MN_DTYPE_F32));
  if (y->rows != x->rows || y->cols != m->n_components)
    return mn__set_error(MN_ERR_INVALID,
                         "PCA output must be [%lld, %lld], got [%lld, %lld]",
                         (long long)x->rows, (long long)m->n_components,
                         (long long)y->rows, (long long)y->cols);
  MN__NEED_OP(b, pca_transform);
  return b->iface->pca_transform(b, x, m, whiten, y);
}

mn_status mn_backend_affine_train(mn_backend *b, const mn_tensor *x,
                                  mn_affine_params *out) {
  if (!b || !out || !out->vmin || !out->scale)
    return mn__set_error(MN_ERR_INVALID, "affine_train: NULL argument");
  MN__TRY(check_input_fused(b, x, "input"));
  if (x->rows < 1)
    return mn__set_error(MN_ERR_INVALID,
                         "training int8_affine needs at least one row");
  if (out->dim != x->cols)
    return mn__set_error(MN_ERR_INVALID,
                         "affine parameters hold %lld dimensions, input has "
                         "%lld",
                         (long long)out->dim, (long long)x->cols);
  MN__NEED_OP(b, affine_train);
  return b->iface->affine_train(b, x, out);
}

static mn_status check_quant_args(mn_quant_kind kind,
                                  const mn_affine_params *affine,
                                  const float *scales, int64_t cols) {
  if ((unsigned)kind > MN_QUANT_BINARY || kind == MN_QUANT_NONE)
    return mn__set_error(MN_ERR_INVALID, "quantization kind %d is not valid",
                         (int)kind);
  if ((kind == MN_QUANT_INT8 || kind == MN_QUANT_INT4) && !scales)
    return mn__set_error(MN_ERR_INVALID, "%s needs a scales array",
                         mn_quant_name(kind));
  if (kind == MN_QUANT_INT8_AFFINE) {
    if (!affine || !affine->vmin || !affine->scale)
      return mn__set_error(MN_ERR_INVALID,
                           "int8_affine needs trained parameters");
    if (affine->dim != cols)
      return mn__set_error(MN_ERR_INVALID,
                           "int8_affine parameters hold %lld dimensions, "
                           "vectors have %lld",
                           (long long)affine->dim, (long long)cols);
  }
  return MN_OK;
}

mn_status mn_backend_quantize(mn_backend *b, const mn_tensor *x,
                              mn_quant_kind kind,
                              const mn_affine_params *affine, mn_tensor *codes,
                              float *scales) {
  if (!b)
    return mn__set_error(MN_ERR_INVALID, "backend is NULL");
  MN__TRY(check_input_fused(b, x, "input"));
  MN__TRY(check_quant_args(kind, affine, scales, x->cols));
  MN__TRY(check_tensor(b, codes, "codes", (int)mn_quant_dtype(kind)));
  MN__TRY(check_same_shape(x, codes, "input", "codes"));
  MN__NEED_OP(b, quantize);
  return b->iface->quantize(b, x, kind, affine, codes, scales);
}

mn_status mn_backend_dequantize(mn_backend *b, const mn_tensor *codes,
                                mn_quant_kind kind, const float *scales,
                                const mn_affine_params *affine, mn_tensor *y) {
  if (!b)
    return mn__set_error(MN_ERR_INVALID, "backend is NULL");
  MN__TRY(check_quant_args(kind, affine, scales, codes ? codes->cols : 0));
  MN__TRY(check_tensor(b, codes, "codes", (int)mn_quant_dtype(kind)));
  MN__TRY(check_tensor(b, y, "output", MN_DTYPE_F32));
  MN__TRY(check_same_shape(codes, y, "codes", "output"));
  MN__NEED_OP(b, dequantize);
  return b->iface->dequantize(b, codes, kind, scales, affine, y);
}

static mn_status check_vecblock(const mn_backend *b, const mn_tensor *q,
                                const mn_vecblock *db, mn_metric metric) {
  if (!db)
    return mn__set_error(MN_ERR_INVALID, "stored vectors are missing");
  MN__TRY(check_tensor(b, &db->codes, "stored vectors", -1));
  if (db->codes.cols != q->cols)
    return mn__set_error(MN_ERR_INVALID,
                         "query is %lld wide but stored vectors are %lld wide",
                         (long long)q->cols, (long long)db->codes.cols);
  if ((unsigned)metric > MN_METRIC_L2)
    return mn__set_error(MN_ERR_INVALID, "metric %d is not valid", (int)metric);
  switch (db->codes.dtype) {
  case MN_DTYPE_I8:
  case MN_DTYPE_I4:
    if (!db->scales && db->codes.rows > 0)
      return mn__set_error(MN_ERR_INVALID, "%s rows need per-row scales",
                           mn_dtype_name(db->codes.dtype));
    break;
  case MN_DTYPE_U8:
    if (!db->affine || db->affine->dim != q->cols)
      return mn__set_error(MN_ERR_INVALID,
                           "uint8 rows need affine parameters of width %lld",
                           (long long)q->cols);
    break;
  default:
    break;
  }
  return MN_OK;
}

mn_status mn_backend_similarity(mn_backend *b, const mn_tensor *q,
                                const mn_vecblock *db, mn_metric metric,
                                mn_tensor *out) {
  if (!b)
    return mn__set_error(MN_ERR_INVALID, "backend is NULL");
  MN__TRY(check_input(b, q, "query"));
  MN__TRY(check_vecblock(b, q, db, metric));
  MN__TRY(check_tensor(b, out, "output", MN_DTYPE_F32));
  if (out->rows != q->rows || out->cols != db->codes.rows)
    return mn__set_error(MN_ERR_INVALID,
                         "similarity output must be [%lld, %lld]",
                         (long long)q->rows, (long long)db->codes.rows);
  MN__NEED_OP(b, similarity);
  return b->iface->similarity(b, q, db, metric, out);
}

#define MN__MAX_K 4096

mn_status mn_backend_search(mn_backend *b, const mn_tensor *q,
                            const mn_vecblock *db, mn_metric metric, int64_t k,
                            int64_t id_base, float *scores, int64_t *ids) {
  if (!b || !scores || !ids)
    return mn__set_error(MN_ERR_INVALID, "search: NULL argument");
  MN__TRY(check_input(b, q, "query"));
  MN__TRY(check_vecblock(b, q, db, metric));
  if (k < 1 || k > MN__MAX_K)
    return mn__set_error(MN_ERR_INVALID, "k must be between 1 and %d, got %lld",
                         MN__MAX_K, (long long)k);
  MN__NEED_OP(b, search);
  return b->iface->search(b, q, db, metric, k, id_base, scores, ids);
}

/* check_vecblock for block i of a batch: the message names the block. */
static mn_status check_block_of(const mn_backend *b, const mn_tensor *q,
                                const mn_vecblock *db, mn_metric metric,
                                int64_t i) {
  mn_status s = check_vecblock(b, q, db, metric);
  if (s != MN_OK)
    return mn__set_error(s, "block %lld: %s", (long long)i, mn_errmsg());
  return MN_OK;
}

mn_status mn_backend_search_many(mn_backend *b, const mn_tensor *q,
                                 mn_search_block *blocks, int64_t nblocks,
                                 mn_metric metric) {
  if (!b || (nblocks > 0 && !blocks))
    return mn__set_error(MN_ERR_INVALID, "search_many: NULL argument");
  if (nblocks < 0)
    return mn__set_error(MN_ERR_INVALID,
                         "search_many: %lld blocks is not a count",
                         (long long)nblocks);
  MN__TRY(check_input(b, q, "query"));
  for (int64_t i = 0; i < nblocks; i++) {
    const mn_search_block *bl = &blocks[i];
    MN__TRY(check_block_of(b, q, &bl->db, metric, i));
    if (bl->k < 1 || bl->k > MN__MAX_K)
      return mn__set_error(MN_ERR_INVALID,
                           "block %lld: k must be between 1 and %d, got %lld",
                           (long long)i, MN__MAX_K, (long long)bl->k);
    if (!bl->scores || !bl->ids)
      return mn__set_error(MN_ERR_INVALID,
                           "block %lld: scores or ids array is NULL",
                           (long long)i);
  }
  if (nblocks == 0 || q->rows == 0)
    return MN_OK;
  if (b->iface->search_many)
    return b->iface->search_many(b, q, blocks, nblocks, metric);
  MN__NEED_OP(b, search);
  for (int64_t i = 0; i < nblocks; i++) {
    mn_search_block *bl = &blocks[i];
    MN__TRY(
        b->iface->search(b, q, &bl->db, metric, bl->k, 0, bl->scores, bl->ids));
  }
  return MN_OK;
}

mn_status mn_backend_similarity_many(mn_backend *b, const mn_tensor *q,
                                     const mn_vecblock *dbs, int64_t nblocks,
                                     mn_metric metric, mn_tensor *out) {
  if (!b || (nblocks > 0 && !dbs))
    return mn__set_error(MN_ERR_INVALID, "similarity_many: NULL argument");
  if (nblocks < 0)
    return mn__set_error(MN_ERR_INVALID,
                         "similarity_many: %lld blocks is not a count",
                         (long long)nblocks);
  MN__TRY(check_input(b, q, "query"));
  int64_t total = 0;
  for (int64_t i = 0; i < nblocks; i++) {
    MN__TRY(check_block_of(b, q, &dbs[i], metric, i));
    total += dbs[i].codes.rows;
  }
  if (total == 0 || q->rows == 0)
    return MN_OK;
  MN__TRY(check_tensor(b, out, "output", MN_DTYPE_F32));
  if (out->rows != q->rows || out->cols != total)
    return mn__set_error(MN_ERR_INVALID,
                         "similarity output must be [%lld, %lld] (queries, "
                         "the blocks' rows together), got [%lld, %lld]",
                         (long long)q->rows, (long long)total,
                         (long long)out->rows, (long long)out->cols);
  if (b->iface->similarity_many)
    return b->iface->similarity_many(b, q, dbs, nblocks, metric, out);
  MN__NEED_OP(b, similarity);
  int64_t off = 0;
  for (int64_t i = 0; i < nblocks; i++) {
    const int64_t n = dbs[i].codes.rows;
    if (n == 0)
      continue;
    mn_tensor part = *out;
    part.data = (char *)out->data + (size_t)off * sizeof(float);
    part.cols = n;
    MN__TRY(b->iface->similarity(b, q, &dbs[i], metric, &part));
    off += n;
  }
  return MN_OK;
}

mn_status mn_topk(const mn_tensor *scores, int64_t k, int largest,
                  float *out_scores, int64_t *out_ids) {
  if (!scores || !scores->data || scores->dtype != MN_DTYPE_F32 ||
      scores->device != MN_DEVICE_HOST || !out_scores || !out_ids)
    return mn__set_error(MN_ERR_INVALID,
                         "top-k needs a float32 host score matrix");
  if (k < 1 || k > MN__MAX_K)
    return mn__set_error(MN_ERR_INVALID, "k must be between 1 and %d, got %lld",
                         MN__MAX_K, (long long)k);
  return mn__cpu_topk(scores, k, largest, out_scores, out_ids);
}
