/*
 * methods.c - the method table and the handlers of the direct methods
 * (processEmbeddings, fitPCA, listPCAModels, deletePCAModel, getMetrics,
 * health, cleanup). The MCP protocol methods share the table; their
 * handlers are in mcp.c.
 *
 * The table is the single source of dispatch, of MCP tools/list and of
 * docs/API.md: one descriptor per method with its handler, a description,
 * JSON Schemas for params and result, and an example request and reply.
 * Schemas and examples are written as JSON tokens inside J(...), which the
 * preprocessor turns into a string, so they read as JSON here.
 *
 * DESIGN: handlers run on worker threads, several at once; they share
 * only the engine (read-only) and the PCA store (locked). A handler never
 * keeps a pointer into the request after it returns.
 */
#define _GNU_SOURCE
#include "rpc/rpc_internal.h"

#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef MNEMO_VERSION_STRING
#define MNEMO_VERSION_STRING "0.0.0"
#endif

/* J(...) expands the schema macros below, then turns the tokens into a
 * string. true and false must reach it as words, not stdbool's 1 and 0. */
#undef true
#undef false
#define J(...) J_(__VA_ARGS__)
#define J_(...) #__VA_ARGS__

/* ------------------------------------------------------------------------
 * Schemas shared by several methods
 * ---------------------------------------------------------------------- */
#define TENSOR_IN                                                              \
  {                                                                            \
    "description" : "The vectors. Any of: an array of numbers (one vector); "  \
                    "an array of such arrays (one row each); the object "      \
                    "JSON.stringify makes of a Float32Array "                  \
                    "({\"0\": 0.5, \"1\": -1.25, ...}) or an array of them; "  \
                    "{\"dtype\", \"shape\", \"data\"} with the little-endian " \
                    "values in base64; or, in a binary frame, {\"dtype\", "    \
                    "\"shape\", \"buffer\": {\"offset\", \"length\"}} "        \
                    "naming bytes of the payload. dtype is float32, float16, " \
                    "bfloat16 or float64. Values must be finite.",             \
                    "anyOf"                                                    \
        : [                                                                    \
          {"type" : "array", "items" : {"type" : "number"}, "minItems" : 1}, { \
            "type" : "array",                                                  \
            "items" : {"type" : [ "array", "object" ]},                        \
            "minItems" : 1                                                     \
          },                                                                   \
          {                                                                    \
            "type" : "object",                                                 \
            "properties" : {                                                   \
              "dtype" :                                                        \
                  {"enum" : [ "float32", "float16", "bfloat16", "float64" ]},  \
              "shape" : {                                                      \
                "type" : "array",                                              \
                "items" : {"type" : "integer", "minimum" : 1},                 \
                "minItems" : 1,                                                \
                "maxItems" : 2                                                 \
              },                                                               \
              "data" : {"type" : "string"},                                    \
              "buffer" : {                                                     \
                "type" : "object",                                             \
                "properties" : {                                               \
                  "offset" : {"type" : "integer", "minimum" : 0},              \
                  "length" : {"type" : "integer", "minimum" : 0}               \
                },                                                             \
                "required" : [ "offset", "length" ]                            \
              }                                                                \
            },                                                                 \
            "required" : [ "dtype", "shape" ]                                  \
          },                                                                   \
          {"type" : "object", "additionalProperties" : {"type" : "number"}}    \
        ]                                                                      \
  }

#define TENSOR_OUT                                                             \
  {                                                                            \
    "description" : "The result in the request's encoding (or "                \
                    "options.encoding): nested arrays of numbers, or "         \
                    "{dtype, shape, data} (base64), or {dtype, shape, "        \
                    "buffer} (binary frame).",                                 \
                    "anyOf"                                                    \
        : [                                                                    \
          {"type" : "array"}, {                                                \
            "type" : "object",                                                 \
            "properties" : {                                                   \
              "dtype" : {"type" : "string"},                                   \
              "shape" : {"type" : "array", "items" : {"type" : "integer"}},    \
              "data" : {"type" : "string"},                                    \
              "buffer" : {"type" : "object"}                                   \
            },                                                                 \
            "required" : [ "dtype", "shape" ]                                  \
          }                                                                    \
        ]                                                                      \
  }

#define NAME_SCHEMA(desc)                                                      \
  {                                                                            \
    "type" : "string",                                                         \
             "minLength" : 1,                                                  \
             "maxLength" : 64,                                                 \
             "pattern" : "^[A-Za-z0-9_.-]{1,64}$",                             \
                         "description" : desc                                  \
  }

#define NO_PARAMS                                                              \
  { "type" : "object", "properties" : {}, "additionalProperties" : false }

/* ------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------- */
static const mn__jv *opt(const mn__jv *o, const char *k) {
  return o ? mn__jobj_get(o, k) : NULL;
}

static int get_bool(const mn__jv *v, int dflt) {
  return v && v->type == MN__J_BOOL ? v->u.b : dflt;
}

static void write_floats(mn__jw *w, const float *v, int64_t n) {
  mn__jw_arr(w);
  for (int64_t i = 0; i < n; i++)
    mn__jw_float(w, v[i]);
  mn__jw_arr_end(w);
}

static int name_param(mn__call *c, const mn__jv *p, const char *key,
                      char *out) {
  const mn__jv *v = mn__jobj_get(p, key);
  char b[96];
  if (!v || v->type != MN__J_STR || !mn__pca_name_ok(v->u.str, v->n))
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s.%s must be 1 to 64 characters of letters, digits, "
                    "'_', '.' and '-' (not \".\" or \"..\"); got %s",
                    c->root, key, mn__jv_brief(v, b, sizeof b));
  memcpy(out, v->u.str, v->n);
  out[v->n] = '\0';
  return 0;
}

/* The host budget left under processing.cache_size (bytes). */
static int64_t host_available(const mn_rpc *r) {
  if (!r->config->cache_size)
    return INT64_MAX;
  int64_t a = (int64_t)r->config->cache_size - mn_account_get(MN_TIER_HOST);
  return a < 0 ? 0 : a;
}

static int check_budget(mn__call *c, int64_t need, const char *what) {
  c->requested_bytes = need;
  int64_t avail = host_available(c->r);
  if (need <= avail)
    return 0;
  char data[128];
  snprintf(data, sizeof data, "{\"requested\":%lld,\"available\":%lld}",
           (long long)need, (long long)avail);
  char a[32], b[32];
  return mn__fail_data(
      c, MN_RPC_RESOURCE_ERROR, data,
      "%s needs about %s of host memory but only %s is available under "
      "processing.cache_size: send fewer rows per request, call cleanup, or "
      "raise processing.cache_size",
      what, mn_size_format((uint64_t)need, a, sizeof a),
      mn_size_format((uint64_t)avail, b, sizeof b));
}

/* ------------------------------------------------------------------------
 * processEmbeddings
 * ---------------------------------------------------------------------- */
typedef struct pe_plan {
  int normalize;
  int64_t k;                 /* components, 0 = no PCA */
  const mn_pca_model *model; /* borrowed from the store, or NULL */
  mn_pca_model view;         /* the model cut to k components */
  char model_name[65];
  int whiten;
  mn_quant_kind quant;
  mn_dtype precision;
  int64_t batch_size;
  mn__enc enc;
} pe_plan;

static int plan_reduction(mn__call *c, const mn__jv *o, const mn__tin *in,
                          pe_plan *pl) {
  const char *R = c->root;
  const mn__jv *dr = opt(o, "dimension_reduction");
  const mn__jv *rd = opt(o, "reduce_dimensions");
  const mn__jv *pm = opt(o, "pca_model");
  const mn__jv *wh = opt(o, "whiten");
  int want = 0, implicit = 0;
  int64_t k = 0;
  if (dr && dr->type == MN__J_BOOL) {
    if (!dr->u.b && (rd || pm))
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.options.dimension_reduction is false but %s.options."
                      "%s is given: drop one of them",
                      R, R, rd ? "reduce_dimensions" : "pca_model");
    want = dr->u.b;
  } else if (dr) {
    k = (int64_t)dr->u.num;
    want = 1;
  }
  if (rd) {
    int64_t v = (int64_t)rd->u.num;
    if (k && k != v)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.options.dimension_reduction is %lld but %s.options."
                      "reduce_dimensions is %lld: give the size once",
                      R, (long long)k, R, (long long)v);
    k = v;
    want = 1;
  }
  if (pm)
    want = 1;
  if (!want) {
    if (wh && wh->u.b)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.options.whiten only applies with dimension "
                      "reduction: add reduce_dimensions or pca_model",
                      R);
    return 0;
  }
  /* Without a named model, the model named "default" is used when it fits
   * (same width, enough components): single vectors can then be reduced,
   * and every batch is projected the same way. */
  if (!pm) {
    const mn_pca_model *m = mn__pca_store_get(c->r->pca, "default", NULL);
    if (m && m->input_dim == in->cols && k <= m->n_components)
      implicit = 1;
    if (m)
      mn__pca_store_put(c->r->pca, m);
  }
  if (pm || implicit) {
    char name[65];
    if (pm) {
      if (!mn__pca_name_ok(pm->u.str, pm->n))
        return mn__fail(c, MN_RPC_INVALID_PARAMS,
                        "%s.options.pca_model must be 1 to 64 characters of "
                        "letters, digits, '_', '.' and '-'",
                        R);
      memcpy(name, pm->u.str, pm->n);
      name[pm->n] = '\0';
    } else {
      strcpy(name, "default");
    }
    int mw = 0;
    const mn_pca_model *m = mn__pca_store_get(c->r->pca, name, &mw);
    if (!m)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.options.pca_model \"%s\" does not exist: fit it "
                      "first with fitPCA, or see listPCAModels",
                      R, name);
    pl->model = m;
    snprintf(pl->model_name, sizeof pl->model_name, "%s", name);
    if (m->input_dim != in->cols)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.options.pca_model \"%s\" was fitted on %lld-wide "
                      "vectors, but these embeddings are %lld wide",
                      R, name, (long long)m->input_dim, (long long)in->cols);
    if (k > m->n_components)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.options.reduce_dimensions is %lld but the PCA model "
                      "\"%s\" has only %lld components: ask for at most %lld "
                      "or fit a larger model",
                      R, (long long)k, name, (long long)m->n_components,
                      (long long)m->n_components);
    if (!k)
      k = m->n_components;
    /* Components are sorted by variance, so the first k rows of the model
     * are the k-component model. */
    pl->view = *m;
    pl->view.n_components = k;
    pl->whiten = wh ? wh->u.b : mw;
    pl->k = k;
    return 0;
  }
  /* Fitted on this batch. */
  if (!k)
    k = MN__MIN(MN__MIN((int64_t)256, in->cols), in->rows);
  /* (No fitting model named "default" exists here.) */
  if (k > in->cols)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s.options.reduce_dimensions is %lld but the embeddings "
                    "are only %lld wide: a reduction must be narrower than "
                    "its input",
                    R, (long long)k, (long long)in->cols);
  if (in->rows < 2)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "dimension reduction without a PCA model fits one on the "
                    "batch, which needs at least 2 rows; this request has "
                    "%lld. Fit a model once with fitPCA and pass %s.options."
                    "pca_model, or name it \"default\" to have it used "
                    "whenever no model is named",
                    (long long)in->rows, R);
  if (k > in->rows)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s.options.reduce_dimensions is %lld but a PCA fitted on "
                    "this batch of %lld rows can have at most %lld "
                    "components: send more rows, or fit a model with fitPCA "
                    "and pass %s.options.pca_model",
                    R, (long long)k, (long long)in->rows, (long long)in->rows,
                    R);
  pl->k = k;
  pl->whiten = get_bool(wh, 0);
  return 0;
}

static int plan_quant(mn__call *c, const mn__jv *o, pe_plan *pl) {
  const char *R = c->root;
  const mn__jv *q = opt(o, "quantization");
  const mn__jv *bits = opt(o, "quantization_bits");
  const mn__jv *prec = opt(o, "precision");
  mn_quant_kind kind = MN_QUANT_NONE;
  int asked = 0;
  if (q && q->type == MN__J_BOOL) {
    if (!q->u.b && bits)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.options.quantization is false but %s.options."
                      "quantization_bits is given: drop one of them",
                      R, R);
    kind = q->u.b ? MN_QUANT_INT8 : MN_QUANT_NONE;
    asked = q->u.b;
  } else if (q) {
    char name[16];
    snprintf(name, sizeof name, "%.*s", (int)MN__MIN(q->n, 15u), q->u.str);
    if (mn_quant_parse(name, &kind) != MN_OK)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.options.quantization \"%s\" is not known", R, name);
    asked = 1;
  }
  if (bits) {
    int b = (int)bits->u.num;
    mn_quant_kind from_bits = b == 8   ? MN_QUANT_INT8
                              : b == 4 ? MN_QUANT_INT4
                              : b == 1 ? MN_QUANT_BINARY
                                       : MN_QUANT_FP16;
    if (q && q->type == MN__J_STR) {
      int kb = kind == MN_QUANT_INT8 || kind == MN_QUANT_INT8_AFFINE ? 8
               : kind == MN_QUANT_INT4                               ? 4
               : kind == MN_QUANT_BINARY                             ? 1
                                                                     : 16;
      if (kb != b)
        return mn__fail(c, MN_RPC_INVALID_PARAMS,
                        "%s.options.quantization_bits is %d but %s.options."
                        "quantization \"%s\" uses %d bits: give one of them",
                        R, b, R, mn_quant_name(kind), kb);
    } else {
      kind = from_bits;
    }
    asked = 1;
  }
  pl->quant = kind;
  pl->precision = MN_DTYPE_F32;
  if (prec) {
    mn_dtype dt = mn__jstr_eq(prec, "float16")    ? MN_DTYPE_F16
                  : mn__jstr_eq(prec, "bfloat16") ? MN_DTYPE_BF16
                                                  : MN_DTYPE_F32;
    if (asked && kind != MN_QUANT_NONE && dt != MN_DTYPE_F32)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.options.precision \"%s\" sets the output type of "
                      "unquantized results, but %s.options.quantization is "
                      "\"%s\": use one of them",
                      R, mn_dtype_name(dt), R, mn_quant_name(kind));
    pl->precision = dt;
  }
  return 0;
}

/* The batcher's outcome in the metrics registry: a merged run is counted
 * once, by its leader. */
static void count_batch(mn_rpc *r, const mn__batch_info *bi, mn_status s) {
  if (!r->metrics || s != MN_OK)
    return;
  if (bi->leader && bi->jobs > 1) {
    mn_metrics_count(r->metrics, "batches", 1);
    mn_metrics_count(r->metrics, "batched_jobs", bi->jobs);
    mn_metrics_count(r->metrics, "batched_rows", bi->rows);
  }
  if (bi->waited && bi->jobs == 1)
    mn_metrics_count(r->metrics, "batch_lone_waits", 1);
}

static int h_process(mn__call *c, const mn__jv *p, mn__jw *w) {
  char path[80];
  snprintf(path, sizeof path, "%s.embeddings", c->root);
  mn__tin in;
  /* mn_pipeline_run looks for NaN / Inf in its input; the codec's own
   * pass would read the tensor once more for nothing. */
  int rc =
      mn__tensor_decode_unchecked(c, mn__jobj_get(p, "embeddings"), path, &in);
  if (rc)
    return rc;
  const mn__jv *o = mn__jobj_get(p, "options");
  pe_plan pl;
  memset(&pl, 0, sizeof pl);
  pl.normalize = get_bool(opt(o, "normalize"), 0);
  const mn__jv *bs = opt(o, "batch_size");
  pl.batch_size = bs ? (int64_t)bs->u.num : c->r->config->batch_size;
  const mn__jv *enc = opt(o, "encoding");
  pl.enc = !enc                         ? in.enc
           : mn__jstr_eq(enc, "base64") ? MN__ENC_BASE64
           : mn__jstr_eq(enc, "binary") ? MN__ENC_BINARY
                                        : MN__ENC_JSON;
  if (pl.enc == MN__ENC_BINARY && c->text_only)
    return mn__enc_refuse_binary(c); /* before the work, not after */
  rc = plan_quant(c, o, &pl);
  if (!rc)
    rc = plan_reduction(c, o, &in, &pl);
  int64_t wide = MN__MAX(in.cols, pl.k);
  if (!rc) {
    char what[96];
    snprintf(what, sizeof what, "processing %lld x %lld embeddings",
             (long long)in.rows, (long long)in.cols);
    rc = check_budget(c, in.rows * wide * 4 * 3, what);
  }
  if (!rc)
    rc = mn__check_deadline(c);
  mn_pipeline_result res;
  memset(&res, 0, sizeof res);
  mn__batch_info bi;
  memset(&bi, 0, sizeof bi);
  if (!rc) {
    mn_pipeline_opts po;
    mn_pipeline_opts_init(&po);
    po.normalize = pl.normalize;
    po.reduce_dims = pl.k;
    po.pca = pl.model ? &pl.view : NULL;
    po.whiten = pl.whiten;
    po.quant = pl.quant;
    po.affine = NULL;
    po.precision = pl.precision;
    po.batch_size = pl.batch_size;
    mn_tensor t = mn_tensor_host(in.data, MN_DTYPE_F32, in.rows, in.cols);
    mn_status s;
    if (c->r->batcher) {
      s = mn__batcher_run(c->r->batcher, &t, &po, c->s, &res, &bi);
      count_batch(c->r, &bi, s);
    } else {
      s = mn__rpc_pipeline(c->r, &t, &po, &res, &bi.flags);
    }
    if (s == MN_ERR_INVALID && in.unchecked)
      rc = mn__tensor_check(c, &in, path); /* NaN / Inf: say where */
    if (s != MN_OK && !rc)
      rc = mn__fail_status(c, s, NULL);
  }
  if (!rc)
    rc = mn__check_deadline(c);
  /* Only a PCA projection can turn finite input into something that is
   * not (whitening by a zero variance, sums past the float32 range):
   * normalisation maps finite rows to unit or zero rows, and without
   * either stage the output is the input, which was checked on the way
   * in. So the output is checked only after a reduction. */
  if (!rc && pl.k && res.out.dtype == MN_DTYPE_F32 &&
      mn_tensor_check_finite(&res.out) != MN_OK)
    rc = mn__fail(c, MN_RPC_PROCESSING_ERROR,
                  "the result is not finite (%s); whitening a component "
                  "whose variance is zero does this: turn whiten off or use "
                  "fewer components",
                  mn_errmsg());
  if (!rc) {
    mn__jw_obj(w);
    mn__jw_key(w, "processed");
    rc = mn__tensor_encode_take(c, w, &res.out, pl.enc, in.one_d);
  }
  if (!rc) {
    if (res.scales) {
      mn__jw_key(w, "scales");
      write_floats(w, res.scales, res.out.rows);
    }
    if (res.quant == MN_QUANT_INT8_AFFINE && res.affine.vmin) {
      mn__jw_key(w, "affine");
      mn__jw_obj(w);
      mn__jw_key(w, "vmin");
      write_floats(w, res.affine.vmin, res.affine.dim);
      mn__jw_key(w, "scale");
      write_floats(w, res.affine.scale, res.affine.dim);
      mn__jw_obj_end(w);
    }
    mn__jw_key(w, "metadata");
    mn__jw_obj(w);
    mn__jw_kdouble(w, "processing_time", res.processing_ms);
    mn__jw_kint(w, "dimensions", res.out.cols);
    mn__jw_kstr(w, "device",
                res.device[0] ? res.device : mn_backend_device(c->r->backend));
    mn__jw_kint(w, "count", res.out.rows);
    mn__jw_kstr(w, "dtype", mn_dtype_name(res.out.dtype));
    mn__jw_kint(w, "zero_rows", res.zero_rows);
    mn__jw_kstr(w, "quantization", mn_quant_name(res.quant));
    mn__jw_kbool(w, "normalized", pl.normalize);
    if (bi.flags & MN__RUN_CPU_FALLBACK)
      mn__jw_kbool(w, "cpu_fallback", 1);
    if (bi.jobs > 1)
      mn__jw_kint(w, "batched_with", bi.jobs - 1);
    if (pl.k) {
      const mn_pca_model *m = pl.model ? &pl.view : res.fitted;
      if (pl.model)
        mn__jw_kstr(w, "pca_model", pl.model_name);
      else
        mn__jw_kstr(w, "pca_model", "(fitted on this batch)");
      mn__jw_kbool(w, "whiten", pl.whiten);
      if (m && m->explained_variance_ratio) {
        mn__jw_key(w, "explained_variance_ratio");
        write_floats(w, m->explained_variance_ratio, m->n_components);
        mn__jw_kdouble(w, "total_explained_variance", mn_pca_total_ratio(m));
      }
    }
    const mn__jv *chat = mn__jobj_get(p, "chatId");
    if (chat) {
      mn__jw_key(w, "chatId");
      mn__jw_strn(w, chat->u.str, chat->n);
    }
    mn__jw_obj_end(w);
    mn__jw_obj_end(w);
  }
  mn_pipeline_result_free(&res);
  if (pl.model)
    mn__pca_store_put(c->r->pca, pl.model);
  return rc;
}

/* ------------------------------------------------------------------------
 * PCA models
 * ---------------------------------------------------------------------- */
/* Rows a fit on a stored collection reads, at most (evenly spaced). */
#define MN__FIT_MAX_ROWS 200000
static int h_fit_pca(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *R = c->root;
  char name[65];
  int rc = name_param(c, p, "name", name);
  if (rc)
    return rc;
  const mn__jv *emb = mn__jobj_get(p, "embeddings");
  const mn__jv *coll = mn__jobj_get(p, "collection");
  if (coll && emb)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "give %s.embeddings or %s.collection, not both", R, R);
  if (!coll && !emb)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "give the vectors as %s.embeddings, or name a stored "
                    "%s.collection",
                    R, R);
  char path[80];
  snprintf(path, sizeof path, "%s.embeddings", R);
  mn__tin in;
  memset(&in, 0, sizeof in);
  if (coll) {
    /* The collection's stored vectors (at most MN__FIT_MAX_ROWS, evenly
     * spaced), copied into the request's arena. */
    char cname[65];
    snprintf(cname, sizeof cname, "%.*s", (int)MN__MIN(coll->n, 64u),
             coll->u.str);
    float *v = NULL;
    int64_t rows = 0, cols = 0;
    mn_status cs = mn_store_collection_vectors(
        c->r->store, cname, MN__FIT_MAX_ROWS, &v, &rows, &cols);
    if (cs != MN_OK)
      return mn__fail(c, MN_RPC_INVALID_PARAMS, "%s.collection: %s", R,
                      mn_errmsg());
    in.data = rows
                  ? mn__arena_alloc(c->a, sizeof(float) * (size_t)(rows * cols))
                  : NULL;
    if (rows && !in.data) {
      free(v);
      return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
    }
    if (rows)
      memcpy(in.data, v, sizeof(float) * (size_t)(rows * cols));
    free(v);
    in.rows = rows;
    in.cols = cols;
  } else {
    rc = mn__tensor_decode(c, emb, path, &in);
    if (rc)
      return rc;
  }
  int64_t k = (int64_t)mn__jobj_get(p, "n_components")->u.num;
  int whiten = get_bool(mn__jobj_get(p, "whiten"), 0);
  if (k > in.cols)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s.n_components is %lld but the embeddings are %lld "
                    "wide: ask for at most %lld components",
                    R, (long long)k, (long long)in.cols, (long long)in.cols);
  if (in.rows < 2 || k > in.rows)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s.n_components is %lld but %s.embeddings has %lld "
                    "row%s: a PCA needs at least 2 rows and at least as many "
                    "rows as components",
                    R, (long long)k, R, (long long)in.rows,
                    in.rows == 1 ? "" : "s");
  rc = check_budget(c, in.cols * in.cols * 8 + in.rows * in.cols * 4,
                    "fitting this PCA");
  if (rc)
    return rc;
  mn_tensor t = mn_tensor_host(in.data, MN_DTYPE_F32, in.rows, in.cols);
  mn_pca_model *m = NULL;
  unsigned flags = 0;
  mn_status s = mn__rpc_pca_fit(c->r, &t, k, &m, &flags);
  if (s != MN_OK)
    return mn__fail_status(c, s, NULL);
  rc = mn__check_deadline(c);
  if (rc) {
    mn_pca_free(m);
    return rc;
  }
  /* What the reply reports is read before the store owns the model. */
  int64_t n_samples = m->n_samples;
  double total = mn_pca_total_ratio(m);
  float *ratios = mn__arena_alloc(c->a, (size_t)k * sizeof(float));
  if (!ratios) {
    mn_pca_free(m);
    return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
  }
  memcpy(ratios, m->explained_variance_ratio, (size_t)k * sizeof(float));
  int replaced = 0;
  s = mn__pca_store_add(c->r->pca, name, m, whiten, &replaced);
  if (s != MN_OK)
    return mn__fail_status(c, s, "the model could not be saved: ");
  mn__jw_obj(w);
  mn__jw_kstr(w, "name", name);
  mn__jw_kint(w, "n_components", k);
  mn__jw_kint(w, "input_dim", in.cols);
  mn__jw_kint(w, "n_samples", n_samples);
  mn__jw_kbool(w, "whiten", whiten);
  mn__jw_key(w, "explained_variance_ratio");
  write_floats(w, ratios, k);
  mn__jw_kdouble(w, "total_explained_variance", total);
  mn__jw_kbool(w, "replaced", replaced);
  if (flags & MN__RUN_CPU_FALLBACK)
    mn__jw_kbool(w, "cpu_fallback", 1);
  mn__jw_obj_end(w);
  return 0;
}

static int h_list_pca(mn__call *c, const mn__jv *p, mn__jw *w) {
  mn__pca_entry_info *v = NULL;
  size_t n = mn__pca_store_list(c->r->pca, &v);
  mn__jw_obj(w);
  mn__jw_key(w, "models");
  mn__jw_arr(w);
  for (size_t i = 0; i < n; i++) {
    mn__jw_obj(w);
    mn__jw_kstr(w, "name", v[i].name);
    mn__jw_kint(w, "input_dim", v[i].input_dim);
    mn__jw_kint(w, "n_components", v[i].n_components);
    mn__jw_kint(w, "n_samples", v[i].n_samples);
    mn__jw_kbool(w, "whiten", v[i].whiten);
    mn__jw_kdouble(w, "total_explained_variance", v[i].total_ratio);
    mn__jw_kdouble(w, "created", floor(v[i].created * 1000) / 1000);
    mn__jw_obj_end(w);
  }
  mn__jw_arr_end(w);
  mn__jw_kint(w, "count", (int64_t)n);
  mn__jw_obj_end(w);
  free(v);
  return 0;
}

static int h_delete_pca(mn__call *c, const mn__jv *p, mn__jw *w) {
  char name[65];
  int rc = name_param(c, p, "name", name);
  if (rc)
    return rc;
  int deleted = 0;
  mn_status s = mn__pca_store_delete(c->r->pca, name, &deleted);
  if (s != MN_OK)
    return mn__fail_status(c, s, NULL);
  mn__jw_obj(w);
  mn__jw_kstr(w, "name", name);
  mn__jw_kbool(w, "deleted", deleted);
  mn__jw_obj_end(w);
  return 0;
}

/* ------------------------------------------------------------------------
 * health, getMetrics, cleanup
 * ---------------------------------------------------------------------- */
const char *mn__pressure_state(const mn_rpc *r, double *usage_ratio) {
  double used = (double)mn_account_get(MN_TIER_HOST);
  double cap = (double)r->config->cache_size;
  double ratio = cap > 0 ? used / cap : 0;
  if (usage_ratio)
    *usage_ratio = ratio;
  return ratio < 0.6 ? "normal" : ratio <= 0.8 ? "high_load" : "recovery";
}

void mn__write_health(mn_rpc *r, mn__jw *w) {
  double ratio;
  const char *state = mn__pressure_state(r, &ratio);
  mn__jw_obj(w);
  mn__jw_kstr(w, "status", "ok");
  mn__jw_kstr(w, "state", state);
  mn__jw_kstr(w, "backend", mn_backend_name(r->backend));
  mn__jw_kstr(w, "device", mn_backend_device(r->backend));
  mn__jw_kdouble(w, "uptime_s",
                 floor((double)(mn_time_ns() - r->started_ns) * 1e-6) / 1e3);
  mn__jw_kstr(w, "version", MNEMO_VERSION_STRING);
  mn__jw_key(w, "memory");
  mn__jw_obj(w);
  mn__jw_kint(w, "host_bytes", mn_account_get(MN_TIER_HOST));
  mn__jw_kint(w, "cache_size", (int64_t)r->config->cache_size);
  mn__jw_kdouble(w, "usage_ratio", floor(ratio * 1e6) / 1e6);
  mn__jw_obj_end(w);
  if (r->store) {
    mn__jw_key(w, "store");
    mn__write_store_status(r, w);
  }
  mn__jw_obj_end(w);
}

char *mn_rpc_health_json(mn_rpc *r) {
  mn__jw w;
  mn__jw_init(&w, 512);
  mn__write_health(r, &w);
  mn__jw_bytes(&w, "", 1);
  if (w.oom) {
    mn__jw_free(&w);
    return NULL;
  }
  return w.buf;
}

static int h_health(mn__call *c, const mn__jv *p, mn__jw *w) {
  mn__write_health(c->r, w);
  return 0;
}

static int64_t rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f)
    return 0;
  long size = 0, res = 0;
  int n = fscanf(f, "%ld %ld", &size, &res);
  fclose(f);
  return n == 2 ? (int64_t)res * sysconf(_SC_PAGESIZE) : 0;
}

static int h_metrics(mn__call *c, const mn__jv *p, mn__jw *w) {
  mn_rpc *r = c->r;
  int64_t host = mn_account_get(MN_TIER_HOST);
  uint64_t dev_free = 0, dev_total = 0;
  int gpu = mn_backend_device_kind(r->backend) == MN_DEVICE_GPU;
  if (gpu)
    mn_backend_memory_info(r->backend, &dev_free, &dev_total);
  long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES);
  long psz = sysconf(_SC_PAGESIZE);
  mn__jw_obj(w);
  mn__jw_key(w, "memory");
  mn__jw_obj(w);
  mn__jw_kint(w, "chunks", r->store ? mn__store_chunk_count(r) : 0);
  mn__jw_kint(w, "usage", host);
  mn__jw_kint(w, "available", r->config->cache_size ? host_available(r) : 0);
  mn__jw_kint(w, "cache_size", (int64_t)r->config->cache_size);
  mn__jw_kstr(w, "state", mn__pressure_state(r, NULL));
  mn__jw_obj_end(w);
  mn__jw_key(w, "hpc");
  mn__jw_obj(w);
  mn__jw_kint(w, "gpu_memory", mn_account_get(MN_TIER_DEVICE));
  mn__jw_kint(w, "gpu_memory_total", (int64_t)dev_total);
  mn__jw_kint(w, "gpu_memory_free", (int64_t)dev_free);
  mn__jw_kint(w, "cpu_memory", host);
  mn__jw_kint(w, "cpu_memory_total", (int64_t)pages * psz);
  mn__jw_kint(w, "cpu_memory_free", (int64_t)avail * psz);
  mn__jw_kint(w, "rss", rss_bytes());
  /* This request is one of them. */
  mn__jw_kint(w, "active_processes",
              __atomic_load_n(&r->active, __ATOMIC_RELAXED));
  mn__jw_kstr(w, "backend", mn_backend_name(r->backend));
  mn__jw_kstr(w, "device", mn_backend_device(r->backend));
  mn__jw_obj_end(w);
  mn__pca_entry_info *v = NULL;
  size_t n = mn__pca_store_list(r->pca, &v);
  free(v);
  mn__jw_kint(w, "pca_models", (int64_t)n);
  if (r->store) {
    mn__jw_key(w, "store");
    mn__write_store_status(r, w);
  }
  mn__jw_kdouble(w, "uptime_s",
                 floor((double)(mn_time_ns() - r->started_ns) * 1e-6) / 1e3);
  /* Everything the metrics registry has: request counts, errors, latency
   * percentiles per method. Its members join the result. */
  if (r->metrics) {
    char *mj = mn_metrics_json(r->metrics);
    mn__jerr e;
    const mn__jv *v2 = mj ? mn__json_parse(c->a, mj, strlen(mj), 64, &e) : NULL;
    if (v2 && v2->type == MN__J_OBJ) {
      for (uint32_t i = 0; i < v2->n; i++) {
        const char *k = v2->u.mem[i].key;
        /* The registry's per-tier figures would collide with the seed's
         * "memory"; they come as "tiers". Its uptime is ours. */
        if (strcmp(k, "uptime_s") == 0 || strcmp(k, "hpc") == 0 ||
            strcmp(k, "pca_models") == 0 || strcmp(k, "tiers") == 0 ||
            strcmp(k, "store") == 0)
          continue;
        mn__jw_key(w, strcmp(k, "memory") == 0 ? "tiers" : k);
        mn__jw_value(w, &v2->u.mem[i].val);
      }
    } else if (mj) {
      MN__LOGW("rpc", "metrics JSON is not an object: %s", e.msg);
    }
    free(mj);
  }
  mn__jw_obj_end(w);
  return 0;
}

static int h_cleanup(mn__call *c, const mn__jv *p, mn__jw *w) {
  /* Working chunks idle past storage.chunk_ttl go now, not at the next
   * maintenance pass; in recovery, memory chunks move to disk. */
  mn_cleanup_report rep;
  memset(&rep, 0, sizeof rep);
  if (c->r->store)
    mn_store_cleanup(c->r->store, 0, &rep);
  int64_t rss_before = rss_bytes();
  struct mallinfo2 before = mallinfo2();
  size_t scratch = mn__arena_pool_drain();
  int trimmed = malloc_trim(0);
  struct mallinfo2 after = mallinfo2();
  int64_t rss_after = rss_bytes();
  mn__jw_obj(w);
  mn__jw_kint(w, "freed_bytes",
              rss_before > rss_after ? rss_before - rss_after : 0);
  mn__jw_kint(w, "rss_before", rss_before);
  mn__jw_kint(w, "rss_after", rss_after);
  mn__jw_kint(w, "scratch_released", (int64_t)scratch);
  mn__jw_kint(w, "heap_free_before", (int64_t)before.fordblks);
  mn__jw_kint(w, "heap_free_after", (int64_t)after.fordblks);
  mn__jw_kbool(w, "trimmed", trimmed != 0);
  mn__jw_kint(w, "chunks_freed", rep.chunks_freed);
  mn__jw_kint(w, "chunk_bytes_freed", (int64_t)rep.bytes_freed);
  mn__jw_kint(w, "chunks_moved_to_disk", rep.chunks_demoted);
  mn__jw_kstr(w, "state", mn__pressure_state(c->r, NULL));
  mn__jw_obj_end(w);
  return 0;
}

/* ------------------------------------------------------------------------
 * The table
 * ---------------------------------------------------------------------- */
const mn__method mn__methods[] = {
    {
        .name = "processEmbeddings",
        .handler = h_process,
        .flags = MN__M_TOOL,
        .title = "Process embeddings",
        .description =
            "Normalize, reduce (PCA) and quantize a batch of embedding "
            "vectors, in that order, each step as the options ask. "
            "Dimension reduction uses a named model (options.pca_model, "
            "fitted once with fitPCA); without one, the model named "
            "\"default\" when it exists with the right width and enough "
            "components; otherwise a PCA fitted on this batch, with "
            "reduce_dimensions components or min(256, width, rows) (at "
            "least 2 rows needed; results of different batches are then "
            "not comparable, so fitting a model first is the better way). "
            "The result comes back in the request's tensor encoding unless "
            "options.encoding says otherwise.",
        .input_schema = J({
          "type" : "object",
          "properties" : {
            "embeddings" : TENSOR_IN,
            "options" : {
              "type" : "object",
              "description" : "What to do with the vectors. With no options "
                              "they come back unchanged (as float32).",
              "properties" : {
                "normalize" : {
                  "type" : "boolean",
                  "description" : "L2-normalize each row first; a zero row "
                                  "stays zero and is counted in "
                                  "metadata.zero_rows.",
                  "default" : false
                },
                "dimension_reduction" : {
                  "anyOf" : [
                    {"type" : "boolean"},
                    {"type" : "integer", "minimum" : 1, "maximum" : 65536}
                  ],
                  "description" : "true: reduce with PCA (size from "
                                  "reduce_dimensions, else the model's, "
                                  "else min(256, width, rows)); an "
                                  "integer: reduce to that many "
                                  "components."
                },
                "reduce_dimensions" : {
                  "type" : "integer",
                  "minimum" : 1,
                  "maximum" : 65536,
                  "description" : "Number of PCA components to keep."
                },
                "pca_model" : NAME_SCHEMA(
                    "Name of a model fitted with fitPCA; its first "
                    "reduce_dimensions components are used (all when no "
                    "size is given)."),
                "whiten" : {
                  "type" : "boolean",
                  "description" : "Divide each component by its standard "
                                  "deviation. Defaults to the model's "
                                  "setting (fitPCA whiten), else false."
                },
                "quantization" : {
                  "enum" : [
                    true, false, "int8", "int8_affine", "int4", "fp16", "bf16",
                    "binary"
                  ],
                  "description" : "true = int8. int8 and int4: symmetric "
                                  "codes with one scale per row (in "
                                  "scales); int8_affine: uint8 codes with "
                                  "per-dimension vmin and scale trained on "
                                  "the batch (in affine); fp16 / bf16: half "
                                  "precision values; binary: 1 where the "
                                  "value is > 0."
                },
                "quantization_bits" : {
                  "enum" : [ 1, 4, 8, 16 ],
                  "description" : "Another way to ask for quantization: 8 = "
                                  "int8, 4 = int4, 1 = binary, 16 = fp16."
                },
                "precision" : {
                  "enum" : [ "float32", "float16", "bfloat16" ],
                  "description" : "Output type when not quantizing.",
                  "default" : "float32"
                },
                "batch_size" : {
                  "type" : "integer",
                  "minimum" : 1,
                  "maximum" : 1048576,
                  "description" : "Rows per backend call (default "
                                  "processing.batch_size)."
                },
                "encoding" : {
                  "enum" : [ "json", "base64", "binary" ],
                  "description" : "Encoding of the result; default: the "
                                  "request's. binary makes the reply a "
                                  "binary frame."
                }
              },
              "additionalProperties" : false
            },
            "chatId" : {
              "type" : "string",
              "maxLength" : 256,
              "description" : "Echoed in metadata.chatId."
            }
          },
          "required" : ["embeddings"],
          "additionalProperties" : false
        }),
        .output_schema = J({
          "type" : "object",
          "properties" : {
            "processed" : TENSOR_OUT,
            "scales" : {
              "type" : "array",
              "items" : {"type" : "number"},
              "description" : "int8 / int4: one scale per row; value = code "
                              "* scale."
            },
            "affine" : {
              "type" : "object",
              "description" : "int8_affine: value = vmin[d] + code * "
                              "scale[d].",
              "properties" : {
                "vmin" : {"type" : "array", "items" : {"type" : "number"}},
                "scale" : {"type" : "array", "items" : {"type" : "number"}}
              },
              "required" : [ "vmin", "scale" ]
            },
            "metadata" : {
              "type" : "object",
              "properties" : {
                "processing_time" : {
                  "type" : "number",
                  "description" : "Compute time, ms (of the merged run when "
                                  "the request was batched)."
                },
                "dimensions" : {
                  "type" : "integer",
                  "description" : "Columns of the result."
                },
                "device" : {"type" : "string"},
                "count" : {"type" : "integer", "description" : "Rows."},
                "dtype" : {
                  "type" : "string",
                  "description" : "Element type of the result: float32, "
                                  "float16, bfloat16, int8, uint8, int4 or "
                                  "binary."
                },
                "zero_rows" : {"type" : "integer"},
                "quantization" : {"type" : "string"},
                "normalized" : {"type" : "boolean"},
                "pca_model" : {"type" : "string"},
                "whiten" : {"type" : "boolean"},
                "explained_variance_ratio" :
                    {"type" : "array", "items" : {"type" : "number"}},
                "total_explained_variance" : {"type" : "number"},
                "cpu_fallback" : {
                  "type" : "boolean",
                  "description" : "Present (true) when the GPU ran out of "
                                  "memory and the request was processed on "
                                  "the CPU instead."
                },
                "batched_with" : {
                  "type" : "integer",
                  "description" : "Present when dynamic batching ran this "
                                  "request in one backend call with this "
                                  "many other requests (same options and "
                                  "width); the result is still this "
                                  "request's alone."
                },
                "chatId" : {"type" : "string"}
              },
              "required" : [
                "processing_time", "dimensions", "device", "count", "dtype"
              ]
            }
          },
          "required" : [ "processed", "metadata" ]
        }),
        .tensor_param = "embeddings",
        .example_request = J({
          "jsonrpc" : "2.0",
          "id" : 1,
          "method" : "processEmbeddings",
          "params" : {
            "embeddings" : [ [ 0.6, 0.8, 0, 0 ], [ 0, 0, 3, 4 ] ],
            "options" : {"normalize" : true, "quantization" : "int8"},
            "chatId" : "chat-42"
          }
        }),
        .example_reply = J({
          "jsonrpc" : "2.0",
          "id" : 1,
          "result" : {
            "processed" : [ [ 95, 127, 0, 0 ], [ 0, 0, 95, 127 ] ],
            "scales" : [ 0.0062992126, 0.0062992126 ],
            "metadata" : {
              "processing_time" : 0.012,
              "dimensions" : 4,
              "device" : "cpu (2 threads, avx512)",
              "count" : 2,
              "dtype" : "int8",
              "zero_rows" : 0,
              "quantization" : "int8",
              "normalized" : true,
              "chatId" : "chat-42"
            }
          }
        }),
    },
    {
        .name = "fitPCA",
        .handler = h_fit_pca,
        .flags = MN__M_TOOL,
        .title = "Fit a PCA model",
        .description =
            "Fit a PCA model on a set of vectors and keep it under a name in "
            "the data directory (it survives restarts; fitting an existing "
            "name replaces it). processEmbeddings uses it through "
            "options.pca_model; the model named \"default\" is used "
            "whenever reduction is asked for without a model name. Needs at "
            "least 2 rows and at least n_components rows.",
        .input_schema = J({
          "type" : "object",
          "properties" : {
            "name" : NAME_SCHEMA("Model name: 1 to 64 of A-Z a-z 0-9 _ . -"),
            "embeddings" : TENSOR_IN,
            "collection" : {
              "type" : "string",
              "description" : "Fit on the vectors a collection holds "
                              "instead (as stored: after its normalize / "
                              "PCA; at most 200000 of them, evenly spaced)."
            },
            "n_components" : {
              "type" : "integer",
              "minimum" : 1,
              "maximum" : 65536,
              "description" : "Components to keep (at most the width and the "
                              "number of rows)."
            },
            "whiten" : {
              "type" : "boolean",
              "description" : "Default whitening when the model is used.",
              "default" : false
            }
          },
          "required" : [ "name", "n_components" ],
          "additionalProperties" : false
        }),
        .output_schema = J({
          "type" : "object",
          "properties" : {
            "name" : {"type" : "string"},
            "n_components" : {"type" : "integer"},
            "input_dim" : {"type" : "integer"},
            "n_samples" : {"type" : "integer"},
            "whiten" : {"type" : "boolean"},
            "explained_variance_ratio" :
                {"type" : "array", "items" : {"type" : "number"}},
            "total_explained_variance" : {"type" : "number"},
            "replaced" : {"type" : "boolean"},
            "cpu_fallback" : {
              "type" : "boolean",
              "description" : "Present (true) when the GPU ran out of "
                              "memory and the fit ran on the CPU instead."
            }
          },
          "required" : [
            "name", "n_components", "input_dim", "explained_variance_ratio",
            "total_explained_variance"
          ]
        }),
        .tensor_param = "embeddings",
        .example_request = J({
          "jsonrpc" : "2.0",
          "id" : 2,
          "method" : "fitPCA",
          "params" : {
            "name" : "demo",
            "embeddings" :
                [ [ 2, 0, 1 ], [ -2, 0, 1 ], [ 0, 1, -1 ], [ 0, -1, -1 ] ],
            "n_components" : 2
          }
        }),
        .example_reply = J({
          "jsonrpc" : "2.0",
          "id" : 2,
          "result" : {
            "name" : "demo",
            "n_components" : 2,
            "input_dim" : 3,
            "n_samples" : 4,
            "whiten" : false,
            "explained_variance_ratio" : [ 0.5714286, 0.2857143 ],
            "total_explained_variance" : 0.8571428954601288,
            "replaced" : false
          }
        }),
    },
    {
        .name = "listPCAModels",
        .handler = h_list_pca,
        .flags = MN__M_TOOL,
        .title = "List PCA models",
        .description = "The PCA models kept in the data directory, by name.",
        .input_schema = J(NO_PARAMS),
        .output_schema = J({
          "type" : "object",
          "properties" : {
            "models" : {
              "type" : "array",
              "items" : {
                "type" : "object",
                "properties" : {
                  "name" : {"type" : "string"},
                  "input_dim" : {"type" : "integer"},
                  "n_components" : {"type" : "integer"},
                  "n_samples" : {"type" : "integer"},
                  "whiten" : {"type" : "boolean"},
                  "total_explained_variance" : {"type" : "number"},
                  "created" :
                      {"type" : "number", "description" : "Unix seconds."}
                },
                "required" : [ "name", "input_dim", "n_components" ]
              }
            },
            "count" : {"type" : "integer"}
          },
          "required" : [ "models", "count" ]
        }),
        .example_request =
            J({"jsonrpc" : "2.0", "id" : 3, "method" : "listPCAModels"}),
        .example_reply = J({
          "jsonrpc" : "2.0",
          "id" : 3,
          "result" : {
            "models" : [ {
              "name" : "demo",
              "input_dim" : 3,
              "n_components" : 2,
              "n_samples" : 4,
              "whiten" : false,
              "total_explained_variance" : 0.8571428954601288,
              "created" : 1767225600.123
            } ],
            "count" : 1
          }
        }),
    },
    {
        .name = "deletePCAModel",
        .handler = h_delete_pca,
        .flags = MN__M_TOOL,
        .title = "Delete a PCA model",
        .description = "Delete a PCA model and its file. deleted is false "
                       "when no model had that name.",
        .input_schema = J({
          "type" : "object",
          "properties" : {"name" : NAME_SCHEMA("Model name.")},
          "required" : ["name"],
          "additionalProperties" : false
        }),
        .output_schema = J({
          "type" : "object",
          "properties" :
              {"name" : {"type" : "string"}, "deleted" : {"type" : "boolean"}},
          "required" : [ "name", "deleted" ]
        }),
        .example_request = J({
          "jsonrpc" : "2.0",
          "id" : 4,
          "method" : "deletePCAModel",
          "params" : {"name" : "demo"}
        }),
        .example_reply = J({
          "jsonrpc" : "2.0",
          "id" : 4,
          "result" : {"name" : "demo", "deleted" : true}
        }),
    },
    {
        .name = "getMetrics",
        .handler = h_metrics,
        .flags = MN__M_TOOL,
        .title = "Metrics",
        .description =
            "Memory and compute figures in the seed's shape (memory: chunks, "
            "usage and available bytes under processing.cache_size; hpc: "
            "GPU and host memory in bytes, requests being processed now), "
            "plus the metrics registry: requests and errors per method and "
            "latency percentiles in ms.",
        .input_schema = J(NO_PARAMS),
        .output_schema = J({
          "type" : "object",
          "properties" : {
            "memory" : {
              "type" : "object",
              "properties" : {
                "chunks" : {"type" : "integer"},
                "usage" : {"type" : "integer"},
                "available" : {"type" : "integer"},
                "cache_size" : {"type" : "integer"},
                "state" : {"type" : "string"}
              },
              "required" : [ "chunks", "usage", "available" ]
            },
            "hpc" : {
              "type" : "object",
              "properties" : {
                "gpu_memory" : {"type" : "integer"},
                "gpu_memory_total" : {"type" : "integer"},
                "gpu_memory_free" : {"type" : "integer"},
                "cpu_memory" : {"type" : "integer"},
                "cpu_memory_total" : {"type" : "integer"},
                "cpu_memory_free" : {"type" : "integer"},
                "rss" : {"type" : "integer"},
                "active_processes" : {"type" : "integer"},
                "backend" : {"type" : "string"},
                "device" : {"type" : "string"}
              },
              "required" : [ "gpu_memory", "cpu_memory", "active_processes" ]
            },
            "pca_models" : {"type" : "integer"},
            "uptime_s" : {"type" : "number"},
            "counters" : {
              "type" : "object",
              "additionalProperties" : {"type" : "integer"},
              "description" : "Event counts since start (also on /metrics "
                              "as mnemo_<name>_total). Dynamic batching: "
                              "batches (backend runs that merged two "
                              "processEmbeddings requests or more), "
                              "batched_jobs (requests answered from them), "
                              "batched_rows (their rows; rows per batch = "
                              "batched_rows / batches), batch_lone_waits "
                              "(batching windows that ended with no other "
                              "request to merge). cpu_fallbacks: jobs and "
                              "searches the GPU ran out of memory on, done "
                              "or finished on the CPU. "
                              "Server: rate_limited, watchdog_timeouts, "
                              "oversized_messages, invalid_utf8, "
                              "read_pauses (times a connection stopped "
                              "being read: too much in flight on it, or "
                              "processing.queue_limit requests in the "
                              "whole server)."
            },
            "gauges" : {
              "type" : "object",
              "additionalProperties" : {"type" : "number"},
              "description" : "Current values, e.g. jobs_in_flight, "
                              "job_queue_depth (also on /metrics as "
                              "mnemo_<name>)."
            }
          },
          "required" : [ "memory", "hpc" ]
        }),
        .example_request =
            J({"jsonrpc" : "2.0", "id" : 5, "method" : "getMetrics"}),
        .example_reply = J({
          "jsonrpc" : "2.0",
          "id" : 5,
          "result" : {
            "memory" : {
              "chunks" : 0,
              "usage" : 1048576,
              "available" : 3998951424,
              "cache_size" : 4000000000,
              "state" : "normal"
            },
            "hpc" : {
              "gpu_memory" : 0,
              "gpu_memory_total" : 0,
              "gpu_memory_free" : 0,
              "cpu_memory" : 1048576,
              "cpu_memory_total" : 8334229504,
              "cpu_memory_free" : 5016121344,
              "rss" : 14680064,
              "active_processes" : 1,
              "backend" : "cpu",
              "device" : "cpu (2 threads, avx512)"
            },
            "pca_models" : 0,
            "uptime_s" : 12.5
          }
        }),
    },
    {
        .name = "health",
        .handler = h_health,
        .flags = MN__M_TOOL,
        .title = "Health",
        .description =
            "Liveness and memory pressure: state is normal below 60 % of "
            "processing.cache_size in use, high_load from 60 % to 80 %, "
            "recovery above 80 %. The same document is served at /health.",
        .input_schema = J(NO_PARAMS),
        .output_schema = J({
          "type" : "object",
          "properties" : {
            "status" : {"type" : "string"},
            "state" : {"enum" : [ "normal", "high_load", "recovery" ]},
            "backend" : {"type" : "string"},
            "device" : {"type" : "string"},
            "uptime_s" : {"type" : "number"},
            "version" : {"type" : "string"},
            "memory" : {
              "type" : "object",
              "properties" : {
                "host_bytes" : {"type" : "integer"},
                "cache_size" : {"type" : "integer"},
                "usage_ratio" : {"type" : "number"}
              }
            }
          },
          "required" : [ "status", "state", "backend", "uptime_s" ]
        }),
        .example_request =
            J({"jsonrpc" : "2.0", "id" : 6, "method" : "health"}),
        .example_reply = J({
          "jsonrpc" : "2.0",
          "id" : 6,
          "result" : {
            "status" : "ok",
            "state" : "normal",
            "backend" : "cpu",
            "device" : "cpu (2 threads, avx512)",
            "uptime_s" : 12.5,
            "version" : "0.1.0",
            "memory" : {
              "host_bytes" : 1048576,
              "cache_size" : 4000000000,
              "usage_ratio" : 0.000262
            }
          }
        }),
    },
    {
        .name = "cleanup",
        .handler = h_cleanup,
        .flags = MN__M_TOOL,
        .title = "Release memory",
        .description =
            "Give back what can be given back: cached scratch buffers are "
            "dropped and the allocator returns free heap pages to the "
            "system. Reports the process's resident size before and after "
            "(freed_bytes is the difference, 0 when it did not shrink).",
        .input_schema = J(NO_PARAMS),
        .output_schema = J({
          "type" : "object",
          "properties" : {
            "freed_bytes" : {"type" : "integer"},
            "rss_before" : {"type" : "integer"},
            "rss_after" : {"type" : "integer"},
            "scratch_released" : {"type" : "integer"},
            "heap_free_before" : {"type" : "integer"},
            "heap_free_after" : {"type" : "integer"},
            "trimmed" : {"type" : "boolean"},
            "chunks_freed" : {"type" : "integer"},
            "state" : {"type" : "string"}
          },
          "required" : [ "freed_bytes", "rss_before", "rss_after" ]
        }),
        .example_request =
            J({"jsonrpc" : "2.0", "id" : 7, "method" : "cleanup"}),
        .example_reply = J({
          "jsonrpc" : "2.0",
          "id" : 7,
          "result" : {
            "freed_bytes" : 1310720,
            "rss_before" : 16777216,
            "rss_after" : 15466496,
            "scratch_released" : 1048576,
            "heap_free_before" : 2097152,
            "heap_free_after" : 131072,
            "trimmed" : true,
            "chunks_freed" : 0,
            "state" : "normal"
          }
        }),
    },
/* The memory store's methods (methods_store.c). */
#include "rpc/methods_store.inc"
    /* MCP protocol methods (mcp.c). */
    {
        .name = "initialize",
        .handler = mn__mcp_initialize,
        .flags = MN__M_PROTOCOL,
        .title = "MCP initialize",
        .description =
            "Start an MCP session. The server answers with the client's "
            "protocolVersion when it is one of 2025-11-25, 2025-06-18, "
            "2025-03-26 and 2024-11-05, else with 2025-11-25; its tools "
            "are the methods of this page.",
        .input_schema = J({
          "type" : "object",
          "properties" : {
            "protocolVersion" : {"type" : "string"},
            "capabilities" : {"type" : "object"},
            "clientInfo" : {
              "type" : "object",
              "properties" : {
                "name" : {"type" : "string"},
                "version" : {"type" : "string"}
              }
            }
          },
          "required" : ["protocolVersion"]
        }),
        .output_schema = J({
          "type" : "object",
          "properties" : {
            "protocolVersion" : {"type" : "string"},
            "capabilities" : {"type" : "object"},
            "serverInfo" : {
              "type" : "object",
              "properties" : {
                "name" : {"type" : "string"},
                "version" : {"type" : "string"}
              },
              "required" : [ "name", "version" ]
            },
            "instructions" : {"type" : "string"}
          },
          "required" : [ "protocolVersion", "capabilities", "serverInfo" ]
        }),
        .example_request = J({
          "jsonrpc" : "2.0",
          "id" : 10,
          "method" : "initialize",
          "params" : {
            "protocolVersion" : "2025-06-18",
            "capabilities" : {},
            "clientInfo" : {"name" : "example-client", "version" : "1.0.0"}
          }
        }),
        .example_reply = J({
          "jsonrpc" : "2.0",
          "id" : 10,
          "result" : {
            "protocolVersion" : "2025-06-18",
            "capabilities" : {"tools" : {"listChanged" : false}},
            "serverInfo" : {
              "name" : "mnemo",
              "title" : "mnemo memory server",
              "version" : "0.1.0"
            },
            "instructions" :
                "mnemo processes embedding vectors for AI memory. ..."
          }
        }),
    },
    {
        .name = "notifications/initialized",
        .handler = mn__mcp_initialized,
        .flags = MN__M_PROTOCOL,
        .title = "MCP initialized",
        .description = "The client's notice that initialization is done. A "
                       "notification: nothing is sent back.",
        .input_schema = J({"type" : "object"}),
        .output_schema = J({"type" : "object"}),
        .example_request =
            J({"jsonrpc" : "2.0", "method" : "notifications/initialized"}),
        .example_reply = NULL,
    },
    {
        .name = "ping",
        .handler = mn__mcp_ping,
        .flags = MN__M_PROTOCOL,
        .title = "MCP ping",
        .description = "Answers an empty object.",
        .input_schema = J({"type" : "object"}),
        .output_schema = J({"type" : "object"}),
        .example_request = J({"jsonrpc" : "2.0", "id" : 11, "method" : "ping"}),
        .example_reply = J({"jsonrpc" : "2.0", "id" : 11, "result" : {}}),
    },
    {
        .name = "tools/list",
        .handler = mn__mcp_tools_list,
        .flags = MN__M_PROTOCOL,
        .title = "MCP tools/list",
        .description =
            "Every method of this page that is a tool, with its "
            "description, inputSchema and outputSchema (JSON Schema). All "
            "tools come in one page (no nextCursor).",
        .input_schema = J({
          "type" : "object",
          "properties" : {"cursor" : {"type" : "string"}}
        }),
        .output_schema = J({
          "type" : "object",
          "properties" : {
            "tools" : {
              "type" : "array",
              "items" : {
                "type" : "object",
                "properties" : {
                  "name" : {"type" : "string"},
                  "title" : {"type" : "string"},
                  "description" : {"type" : "string"},
                  "inputSchema" : {"type" : "object"},
                  "outputSchema" : {"type" : "object"}
                },
                "required" : [ "name", "inputSchema" ]
              }
            }
          },
          "required" : ["tools"]
        }),
        .example_request =
            J({"jsonrpc" : "2.0", "id" : 12, "method" : "tools/list"}),
        .example_reply = J({
          "jsonrpc" : "2.0",
          "id" : 12,
          "result" : {
            "tools" : [ {
              "name" : "health",
              "title" : "Health",
              "description" : "Liveness and memory pressure ...",
              "inputSchema" : {
                "type" : "object",
                "properties" : {},
                "additionalProperties" : false
              },
              "outputSchema" : {"type" : "object", "properties" : {}}
            } ]
          }
        }),
    },
    {
        .name = "tools/call",
        .handler = mn__mcp_tools_call,
        .flags = MN__M_PROTOCOL,
        .title = "MCP tools/call",
        .description =
            "Call a method as an MCP tool: arguments are the method's "
            "params. The result carries the method's result twice, as "
            "structuredContent and as JSON text in content[0].text. A "
            "failure inside the tool (bad arguments included) is a result "
            "with isError: true and the message as text; an unknown tool is "
            "error -32602.",
        .input_schema = J({
          "type" : "object",
          "properties" :
              {"name" : {"type" : "string"}, "arguments" : {"type" : "object"}},
          "required" : ["name"]
        }),
        .output_schema = J({
          "type" : "object",
          "properties" : {
            "content" : {
              "type" : "array",
              "items" : {
                "type" : "object",
                "properties" : {
                  "type" : {"type" : "string"},
                  "text" : {"type" : "string"}
                },
                "required" : [ "type", "text" ]
              }
            },
            "structuredContent" : {"type" : "object"},
            "isError" : {"type" : "boolean"}
          },
          "required" : [ "content", "isError" ]
        }),
        .example_request = J({
          "jsonrpc" : "2.0",
          "id" : 13,
          "method" : "tools/call",
          "params" : {
            "name" : "processEmbeddings",
            "arguments" :
                {"embeddings" : [[ 3, 4 ]], "options" : {"normalize" : true}}
          }
        }),
        .example_reply = J({
          "jsonrpc" : "2.0",
          "id" : 13,
          "result" : {
            "content" : [ {
              "type" : "text",
              "text" : "{\"processed\":[[0.6,0.8]],\"metadata\":{...}}"
            } ],
            "structuredContent" : {
              "processed" : [[ 0.6, 0.8 ]],
              "metadata" : {
                "processing_time" : 0.004,
                "dimensions" : 2,
                "device" : "cpu (2 threads, avx512)",
                "count" : 1,
                "dtype" : "float32",
                "zero_rows" : 0,
                "quantization" : "none",
                "normalized" : true
              }
            },
            "isError" : false
          }
        }),
    },
};

const size_t mn__n_methods = sizeof mn__methods / sizeof mn__methods[0];

const mn__method *mn__method_find(const char *name, size_t n) {
  for (size_t i = 0; i < mn__n_methods; i++) {
    const char *m = mn__methods[i].name;
    if (strlen(m) == n && memcmp(m, name, n) == 0)
      return &mn__methods[i];
  }
  return NULL;
}

ptrdiff_t mn__method_index(const mn__method *m) {
  return m - mn__methods;
}
