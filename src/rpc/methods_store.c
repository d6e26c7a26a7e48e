/*
 * methods_store.c - the memory store's JSON-RPC methods: collections
 * (createCollection, listCollections, getCollection, dropCollection),
 * memories (addMemories, storeMemory, getMemories, updateMemory,
 * deleteMemories, searchMemories) and the seed's working chunks
 * (allocateMemory, processChunk, readChunk, freeMemory, listChunks). Their
 * descriptors (schemas, examples) are in methods_store.inc, which the
 * method table in methods.c includes.
 *
 * Every handler turns its params into one mn_store call and the result
 * into JSON; the store checks what it owns (names, widths, ids, budgets)
 * and its messages go to the client as they are. Store statuses map to
 * JSON-RPC codes here: unknown or duplicate names are the client's to fix
 * (-32602), budgets are -32000 with data.requested / data.available.
 *
 * DESIGN: the engine owns one store, opened with the engine from the
 * configuration (storage.*, processing.cache_size, gpu.memory_limit) on
 * the engine's backend, with the engine's named PCA models as the source
 * of collection models. Handlers run on several worker threads at once;
 * the store is thread-safe, and nothing here keeps state between calls.
 */
#include "rpc/rpc_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * The engine's store.
 * ---------------------------------------------------------------------- */

/* A copy of a named model for a new collection (the store owns it). */
static mn_status resolve_pca(void *user, const char *name, mn_pca_model **out) {
  mn_rpc *r = user;
  const mn_pca_model *m = mn__pca_store_get(r->pca, name, NULL);
  if (!m)
    return mn__set_error(MN_ERR_NOT_FOUND,
                         "PCA model \"%s\" does not exist: fit it first with "
                         "fitPCA, or see listPCAModels",
                         name);
  mn_pca_model *cp = NULL;
  mn_status s = mn_pca_alloc(m->input_dim, m->n_components, &cp);
  if (s == MN_OK) {
    size_t d = (size_t)m->input_dim, k = (size_t)m->n_components;
    memcpy(cp->mean, m->mean, d * sizeof(float));
    memcpy(cp->components, m->components, d * k * sizeof(float));
    memcpy(cp->explained_variance, m->explained_variance, k * sizeof(float));
    memcpy(cp->explained_variance_ratio, m->explained_variance_ratio,
           k * sizeof(float));
    cp->n_samples = m->n_samples;
    cp->total_variance = m->total_variance;
    *out = cp;
  }
  mn__pca_store_put(r->pca, m);
  return s;
}

mn_status mn__rpc_store_open(mn_rpc *r) {
  mn_store_opts o;
  mn_store_opts_init(&o);
  MN__TRY(mn_store_opts_from_config(&o, r->config));
  o.backend = r->backend;
  o.pca_resolve = resolve_pca;
  o.pca_user = r;
  return mn_store_open(&o, &r->store);
}

void mn__rpc_store_close(mn_rpc *r) {
  mn_store_close(r->store);
  r->store = NULL;
}

/* ------------------------------------------------------------------------
 * Helpers.
 * ---------------------------------------------------------------------- */

/* The one mapping of store statuses. */
static int sfail(mn__call *c, mn_status s) {
  if (s == MN_ERR_NOT_FOUND || s == MN_ERR_EXISTS)
    return mn__fail(c, MN_RPC_INVALID_PARAMS, "%s", mn_errmsg());
  if (s == MN_ERR_RESOURCE) {
    uint64_t req = 0, avail = 0;
    mn_store_last_resource(&req, &avail);
    char data[128];
    snprintf(data, sizeof data, "{\"requested\":%llu,\"available\":%llu}",
             (unsigned long long)req, (unsigned long long)avail);
    return mn__fail_data(c, MN_RPC_RESOURCE_ERROR, data, "%s", mn_errmsg());
  }
  return mn__fail_status(c, s, NULL);
}

static const mn__jv *opt(const mn__jv *o, const char *k) {
  return o && o->type == MN__J_OBJ ? mn__jobj_get(o, k) : NULL;
}

/* A string value as a NUL-terminated copy in the request's arena. */
static const char *cstr(mn__call *c, const mn__jv *v) {
  if (!v || v->type != MN__J_STR)
    return NULL;
  return mn__arena_strndup(c->a, v->u.str, v->n);
}

/* A JSON value's text (objects: metadata) in the arena. */
static const char *jtext(mn__call *c, const mn__jv *v) {
  if (!v)
    return NULL;
  if (v->src)
    return mn__arena_strndup(c->a, v->src, v->src_len);
  mn__jw w;
  mn__jw_init(&w, 256);
  mn__jw_value(&w, v);
  const char *t = w.oom ? NULL : mn__arena_strndup(c->a, w.buf, w.len);
  mn__jw_free(&w);
  return t;
}

static const char *metric_name(mn_metric m) {
  return mn_metric_name(m);
}

static int parse_include(mn__call *c, const mn__jv *v, unsigned *out) {
  *out = MN_INCLUDE_DEFAULT;
  if (!v)
    return 0;
  *out = 0;
  for (uint32_t i = 0; i < v->n; i++) {
    mn__jv tmp;
    const mn__jv *e = mn__jarr_at(v, i, &tmp);
    if (mn__jstr_eq(e, "content"))
      *out |= MN_INCLUDE_CONTENT;
    else if (mn__jstr_eq(e, "metadata"))
      *out |= MN_INCLUDE_METADATA;
    else if (mn__jstr_eq(e, "embedding"))
      *out |= MN_INCLUDE_EMBEDDING;
    else {
      char b[80];
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.include[%u] is %s: use \"content\", \"metadata\" "
                      "or \"embedding\"",
                      c->root, i, mn__jv_brief(e, b, sizeof b));
    }
  }
  return 0;
}

static void write_floats(mn__jw *w, const float *v, int64_t n) {
  mn__jw_arr(w);
  for (int64_t i = 0; i < n; i++)
    mn__jw_float(w, v[i]);
  mn__jw_arr_end(w);
}

static void write_info(mn__jw *w, const mn_collection_info *i) {
  static const char *const tiers[3] = {"l1", "l2", "l3"};
  mn__jw_obj(w);
  mn__jw_kstr(w, "name", i->name);
  mn__jw_kint(w, "dim", i->dim);
  mn__jw_kint(w, "width", i->width);
  mn__jw_kstr(w, "metric", metric_name(i->metric));
  mn__jw_kstr(w, "dtype", mn_dtype_name(i->dtype));
  mn__jw_kbool(w, "normalize", i->normalize);
  mn__jw_key(w, "pca_model");
  if (i->pca_model[0])
    mn__jw_str(w, i->pca_model);
  else
    mn__jw_null(w);
  mn__jw_kdouble(w, "created", floor(i->created * 1000) / 1000);
  mn__jw_kint(w, "count", i->count);
  mn__jw_kint(w, "chunks", i->chunks);
  mn__jw_kint(w, "row_bytes", i->row_bytes);
  mn__jw_key(w, "tiers");
  mn__jw_obj(w);
  for (int t = 0; t < 3; t++) {
    mn__jw_key(w, tiers[t]);
    mn__jw_obj(w);
    mn__jw_kint(w, "chunks", i->chunks_tier[t]);
    mn__jw_kint(w, "bytes", (int64_t)i->bytes[t]);
    mn__jw_obj_end(w);
  }
  mn__jw_obj_end(w);
  mn__jw_obj_end(w);
}

static void write_memory(mn__jw *w, const mn_memory *m) {
  mn__jw_obj(w);
  mn__jw_kstr(w, "id", m->id);
  if (m->content)
    mn__jw_kstr(w, "content", m->content);
  if (m->metadata) {
    mn__jw_key(w, "metadata");
    mn__jw_raw(w, m->metadata, strlen(m->metadata));
  }
  mn__jw_kstr(w, "chatId", m->chat_id);
  mn__jw_kdouble(w, "timestamp", m->timestamp);
  mn__jw_kdouble(w, "significance", m->significance);
  if (m->embedding) {
    mn__jw_key(w, "embedding");
    write_floats(w, m->embedding, m->width);
  }
  mn__jw_obj_end(w);
}

static int coll_param(mn__call *c, const mn__jv *p, const char *key,
                      const char **out) {
  const mn__jv *v = mn__jobj_get(p, key);
  *out = cstr(c, v);
  if (!*out)
    return mn__fail(c, MN_RPC_INVALID_PARAMS, "%s.%s must be a string", c->root,
                    key);
  return 0;
}

/* The collection that params.<key> names, and its description. */
static int coll_lookup(mn__call *c, const mn__jv *p, const char *key,
                       const char **name, mn_collection_info *info) {
  int rc = coll_param(c, p, key, name);
  if (rc)
    return rc;
  mn_status s = mn_store_collection_get(c->r->store, *name, info);
  return s != MN_OK ? sfail(c, s) : 0;
}

/* params.<key> decoded as a tensor, messages naming "<root>.<key>". */
static int tensor_param(mn__call *c, const mn__jv *p, const char *key,
                        mn__tin *out) {
  char path[80];
  snprintf(path, sizeof path, "%s.%s", c->root, key);
  return mn__tensor_decode(c, mn__jobj_get(p, key), path, out);
}

/* An array of id strings (schema-checked) as C strings. */
static int id_list(mn__call *c, const mn__jv *v, const char ***out,
                   int64_t *n) {
  *n = v ? v->n : 0;
  *out = mn__arena_alloc(c->a, sizeof(char *) * (size_t)(*n ? *n : 1));
  if (!*out)
    return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
  for (int64_t i = 0; i < *n; i++) {
    mn__jv tmp;
    (*out)[i] = cstr(c, mn__jarr_at(v, (uint32_t)i, &tmp));
    if (!(*out)[i])
      return mn__fail(c, MN_RPC_INVALID_PARAMS, "%s.ids[%lld] must be a string",
                      c->root, (long long)i);
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * Collections.
 * ---------------------------------------------------------------------- */
int mn__h_create_collection(mn__call *c, const mn__jv *p, mn__jw *w) {
  mn_collection_opts o;
  memset(&o, 0, sizeof o);
  int rc = coll_param(c, p, "name", &o.name);
  if (rc)
    return rc;
  o.dim = (int64_t)mn__jobj_get(p, "dim")->u.num;
  o.metric = MN_METRIC_COSINE;
  o.dtype = MN_DTYPE_F32;
  const char *metric = cstr(c, mn__jobj_get(p, "metric"));
  const char *dtype = cstr(c, mn__jobj_get(p, "dtype"));
  if (metric && mn_metric_parse(metric, &o.metric) != MN_OK)
    return mn__fail_status(c, MN_ERR_INVALID, "metric: ");
  if (dtype && mn_dtype_parse(dtype, &o.dtype) != MN_OK)
    return mn__fail_status(c, MN_ERR_INVALID, "dtype: ");
  o.pca_model = cstr(c, mn__jobj_get(p, "pca_model"));
  const mn__jv *nz = mn__jobj_get(p, "normalize");
  o.normalize = nz && nz->type == MN__J_BOOL ? nz->u.b : 0;
  mn_collection_info info;
  mn_status s = mn_store_collection_create(c->r->store, &o, &info);
  if (s != MN_OK)
    return sfail(c, s);
  write_info(w, &info);
  return 0;
}

int mn__h_list_collections(mn__call *c, const mn__jv *p, mn__jw *w) {
  mn_collection_info *v = NULL;
  int64_t n = 0;
  mn_status s = mn_store_collection_list(c->r->store, &v, &n);
  if (s != MN_OK)
    return sfail(c, s);
  mn__jw_obj(w);
  mn__jw_key(w, "collections");
  mn__jw_arr(w);
  for (int64_t i = 0; i < n; i++)
    write_info(w, &v[i]);
  mn__jw_arr_end(w);
  mn__jw_kint(w, "count", n);
  mn__jw_obj_end(w);
  free(v);
  return 0;
}

int mn__h_get_collection(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *name;
  mn_collection_info info;
  int rc = coll_lookup(c, p, "name", &name, &info);
  if (rc)
    return rc;
  write_info(w, &info);
  return 0;
}

int mn__h_drop_collection(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *name;
  mn_collection_info info;
  int rc = coll_lookup(c, p, "name", &name, &info);
  if (rc)
    return rc;
  mn_status s = mn_store_collection_drop(c->r->store, name);
  if (s != MN_OK)
    return sfail(c, s);
  mn__jw_obj(w);
  mn__jw_kstr(w, "name", name);
  mn__jw_kbool(w, "dropped", true);
  mn__jw_kint(w, "count", info.count);
  mn__jw_obj_end(w);
  return 0;
}

/* ------------------------------------------------------------------------
 * Memories.
 * ---------------------------------------------------------------------- */

/* One memory object (everything but its embedding) into m. */
static int memory_fields(mn__call *c, const mn__jv *o, const char *path,
                         mn_memory_in *m) {
  mn_memory_in_init(m);
  m->id = cstr(c, opt(o, "id"));
  m->content = cstr(c, opt(o, "content"));
  m->chat_id = cstr(c, opt(o, "chatId"));
  const mn__jv *md = opt(o, "metadata");
  if (md) {
    m->metadata = jtext(c, md);
    if (!m->metadata)
      return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
  }
  const mn__jv *ts = opt(o, "timestamp");
  if (ts) {
    m->has_timestamp = 1;
    m->timestamp = ts->u.num;
  }
  const mn__jv *sg = opt(o, "significance");
  if (sg) {
    m->has_significance = 1;
    m->significance = sg->u.num;
  }
  (void)path;
  return 0;
}

/* Decode one memory's own embedding: exactly one vector of `dim`. */
static int memory_embedding(mn__call *c, const mn__jv *v, const char *path,
                            int64_t dim, const char *coll, mn_memory_in *m) {
  if (!v)
    return mn__fail(c, MN_RPC_INVALID_PARAMS, "%s is missing", path);
  mn__tin t;
  int rc = mn__tensor_decode(c, v, path, &t);
  if (rc)
    return rc;
  if (t.rows != 1)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s holds %lld vectors: give one vector per memory", path,
                    (long long)t.rows);
  if (t.cols != dim)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s has %lld values but collection '%s' takes %lld", path,
                    (long long)t.cols, coll, (long long)dim);
  m->embedding = t.data;
  return 0;
}

static int write_ids(mn__jw *w, const mn_memory_id *ids, int64_t n) {
  mn__jw_obj(w);
  mn__jw_key(w, "ids");
  mn__jw_arr(w);
  for (int64_t i = 0; i < n; i++)
    mn__jw_str(w, ids[i].s);
  mn__jw_arr_end(w);
  mn__jw_kint(w, "count", n);
  mn__jw_obj_end(w);
  return 0;
}

int mn__h_add_memories(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *R = c->root, *coll;
  mn_collection_info info;
  int rc = coll_lookup(c, p, "collection", &coll, &info);
  if (rc)
    return rc;
  const mn__jv *mems = mn__jobj_get(p, "memories");
  const mn__jv *embs = mn__jobj_get(p, "embeddings");
  mn__tin all;
  memset(&all, 0, sizeof all);
  if (embs) {
    char path[80];
    snprintf(path, sizeof path, "%s.embeddings", R);
    if ((rc = mn__tensor_decode(c, embs, path, &all)))
      return rc;
    if (all.cols != info.dim)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s has %lld columns but collection '%s' takes %lld",
                      path, (long long)all.cols, coll, (long long)info.dim);
    if (mems && (int64_t)mems->n != all.rows)
      return mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.embeddings has %lld rows but %s.memories has %u "
                      "items: give one row per memory",
                      R, (long long)all.rows, R, mems->n);
  } else if (!mems || mems->n == 0) {
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "give %s.memories (each with an embedding) or "
                    "%s.embeddings",
                    R, R);
  }
  int64_t n = embs ? all.rows : (int64_t)mems->n;
  mn_memory_in *m = mn__arena_alloc(c->a, sizeof *m * (size_t)n);
  mn_memory_id *ids = malloc(sizeof *ids * (size_t)n);
  if (!m || !ids) {
    free(ids);
    return mn__fail(c, MN_RPC_RESOURCE_ERROR,
                    "out of memory for %lld "
                    "memories",
                    (long long)n);
  }
  for (int64_t i = 0; i < n && !rc; i++) {
    mn__jv tmp;
    const mn__jv *o = mems ? mn__jarr_at(mems, (uint32_t)i, &tmp) : NULL;
    char path[96];
    snprintf(path, sizeof path, "%s.memories[%lld]", R, (long long)i);
    rc = memory_fields(c, o, path, &m[i]);
    if (rc)
      break;
    if (embs) {
      if (opt(o, "embedding")) {
        rc = mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.embedding is given but so is %s.embeddings: give "
                      "the vectors one way",
                      path, R);
        break;
      }
      m[i].embedding = all.data + i * all.cols;
    } else {
      char ep[112];
      snprintf(ep, sizeof ep, "%s.embedding", path);
      rc = memory_embedding(c, opt(o, "embedding"), ep, info.dim, coll, &m[i]);
    }
  }
  if (!rc)
    rc = mn__check_deadline(c);
  if (!rc) {
    mn_status s = mn_store_add(c->r->store, coll, m, n, ids);
    rc = s != MN_OK ? sfail(c, s) : write_ids(w, ids, n);
  }
  free(ids);
  return rc;
}

int mn__h_store_memory(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *coll;
  mn_collection_info info;
  int rc = coll_lookup(c, p, "collection", &coll, &info);
  if (rc)
    return rc;
  mn_memory_in m;
  char path[80];
  snprintf(path, sizeof path, "%s.embedding", c->root);
  rc = memory_fields(c, p, c->root, &m);
  if (!rc)
    rc = memory_embedding(c, mn__jobj_get(p, "embedding"), path, info.dim, coll,
                          &m);
  if (rc)
    return rc;
  mn_memory_id id;
  mn_status s = mn_store_add(c->r->store, coll, &m, 1, &id);
  if (s != MN_OK)
    return sfail(c, s);
  mn__jw_obj(w);
  mn__jw_kstr(w, "id", id.s);
  mn__jw_obj_end(w);
  return 0;
}

int mn__h_get_memories(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *coll;
  int rc = coll_param(c, p, "collection", &coll);
  const char **ids = NULL;
  int64_t n = 0;
  unsigned inc = 0;
  if (!rc)
    rc = id_list(c, mn__jobj_get(p, "ids"), &ids, &n);
  if (!rc)
    rc = parse_include(c, mn__jobj_get(p, "include"), &inc);
  if (rc)
    return rc;
  mn_memory_list *l = NULL;
  mn_status s = mn_store_get(c->r->store, coll, ids, n, inc, &l);
  if (s != MN_OK)
    return sfail(c, s);
  mn__jw_obj(w);
  mn__jw_key(w, "memories");
  mn__jw_arr(w);
  for (int64_t i = 0; i < mn_memory_list_count(l); i++)
    write_memory(w, mn_memory_list_at(l, i));
  mn__jw_arr_end(w);
  mn__jw_key(w, "missing");
  mn__jw_arr(w);
  for (int64_t i = 0; i < mn_memory_list_missing_count(l); i++)
    mn__jw_str(w, mn_memory_list_missing_at(l, i));
  mn__jw_arr_end(w);
  mn__jw_kint(w, "count", mn_memory_list_count(l));
  mn__jw_obj_end(w);
  mn_memory_list_free(l);
  return 0;
}

int mn__h_update_memory(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *coll, *id;
  int rc = coll_param(c, p, "collection", &coll);
  if (!rc)
    rc = coll_param(c, p, "id", &id);
  if (rc)
    return rc;
  mn_memory_update u;
  memset(&u, 0, sizeof u);
  u.content = cstr(c, mn__jobj_get(p, "content"));
  const mn__jv *md = mn__jobj_get(p, "metadata");
  if (md && !(u.metadata = jtext(c, md)))
    return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
  const mn__jv *sg = mn__jobj_get(p, "significance");
  if (sg) {
    u.has_significance = 1;
    u.significance = sg->u.num;
  }
  unsigned inc = 0;
  if ((rc = parse_include(c, mn__jobj_get(p, "include"), &inc)))
    return rc;
  mn_memory_list *l = NULL;
  mn_status s = mn_store_update(c->r->store, coll, id, &u, inc, &l);
  if (s != MN_OK)
    return sfail(c, s);
  if (mn_memory_list_count(l) == 1)
    write_memory(w, mn_memory_list_at(l, 0));
  else /* deleted between the update and the read back */
    rc = mn__fail(c, MN_RPC_INVALID_PARAMS, "memory '%s' was deleted", id);
  mn_memory_list_free(l);
  return rc;
}

int mn__h_delete_memories(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *coll;
  int rc = coll_param(c, p, "collection", &coll);
  const char **ids = NULL;
  int64_t n = 0;
  if (!rc)
    rc = id_list(c, mn__jobj_get(p, "ids"), &ids, &n);
  if (rc)
    return rc;
  uint8_t *found = mn__arena_alloc(c->a, (size_t)(n ? n : 1));
  int64_t deleted = 0;
  if (!found)
    return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
  mn_status s = mn_store_delete(c->r->store, coll, ids, n, &deleted, found);
  if (s != MN_OK)
    return sfail(c, s);
  mn__jw_obj(w);
  mn__jw_kint(w, "deleted", deleted);
  mn__jw_key(w, "missing");
  mn__jw_arr(w);
  for (int64_t i = 0; i < n; i++)
    if (!found[i])
      mn__jw_str(w, ids[i]);
  mn__jw_arr_end(w);
  mn__jw_obj_end(w);
  return 0;
}

int mn__h_search_memories(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *coll;
  int rc = coll_param(c, p, "collection", &coll);
  if (rc)
    return rc;
  mn__tin q;
  if ((rc = tensor_param(c, p, "query", &q)))
    return rc;
  mn_search_params sp;
  mn_search_params_init(&sp);
  sp.queries = q.data;
  sp.n_queries = q.rows;
  sp.dim = q.cols;
  const mn__jv *k = mn__jobj_get(p, "k");
  if (k)
    sp.k = (int64_t)k->u.num;
  const mn__jv *f = mn__jobj_get(p, "filter");
  if (f) {
    sp.chat_id = cstr(c, opt(f, "chatId"));
    const mn__jv *since = opt(f, "since"), *until = opt(f, "until");
    if (since) {
      sp.has_since = 1;
      sp.since = since->u.num;
    }
    if (until) {
      sp.has_until = 1;
      sp.until = until->u.num;
    }
    const mn__jv *md = opt(f, "metadata");
    if (md && !(sp.metadata = jtext(c, md)))
      return mn__fail(c, MN_RPC_RESOURCE_ERROR, "out of memory");
  }
  const mn__jv *v;
  if ((v = mn__jobj_get(p, "min_similarity"))) {
    sp.has_min_similarity = 1;
    sp.min_similarity = v->u.num;
  }
  if ((v = mn__jobj_get(p, "time_decay")))
    sp.time_decay = v->u.num;
  if ((v = mn__jobj_get(p, "significance_weight")))
    sp.significance_weight = v->u.num;
  if ((v = mn__jobj_get(p, "now"))) {
    sp.has_now = 1;
    sp.now = v->u.num;
  }
  if ((v = mn__jobj_get(p, "reinforce")))
    sp.reinforce = v->u.b;
  if ((rc = parse_include(c, mn__jobj_get(p, "include"), &sp.include)))
    return rc;
  uint64_t t0 = mn_time_ns();
  mn_search_result *res = NULL;
  mn_status s = mn_store_search(c->r->store, coll, &sp, &res);
  if (s != MN_OK)
    return sfail(c, s);
  double ms = (double)(mn_time_ns() - t0) * 1e-6;
  /* Device out of memory: the store finished the search on the CPU, with
   * the same results; logged and counted as the engine's own retries. */
  const char *fb = mn_search_result_cpu_fallback(res);
  if (fb) {
    char what[200];
    snprintf(what, sizeof what, "a searchMemories of %lld quer%s in '%s'",
             (long long)sp.n_queries, sp.n_queries == 1 ? "y" : "ies", coll);
    mn__rpc_note_fallback(c->r, what, fb);
  }
  mn__jw_obj(w);
  mn__jw_key(w, "results");
  mn__jw_arr(w);
  int64_t width = mn_search_result_width(res);
  for (int64_t qi = 0; qi < mn_search_result_queries(res); qi++) {
    int64_t n = 0;
    const mn_search_hit *h = mn_search_result_hits(res, qi, &n);
    mn__jw_arr(w);
    for (int64_t j = 0; j < n; j++) {
      mn__jw_obj(w);
      mn__jw_kstr(w, "id", h[j].id);
      mn__jw_kdouble(w, "score", h[j].score);
      mn__jw_kdouble(w, "similarity", h[j].similarity);
      mn__jw_kdouble(w, "significance", h[j].significance);
      mn__jw_kdouble(w, "decay", h[j].decay);
      mn__jw_kdouble(w, "timestamp", h[j].timestamp);
      mn__jw_kstr(w, "chatId", h[j].chat_id);
      if (h[j].content)
        mn__jw_kstr(w, "content", h[j].content);
      if (h[j].metadata) {
        mn__jw_key(w, "metadata");
        mn__jw_raw(w, h[j].metadata, strlen(h[j].metadata));
      }
      if (h[j].embedding) {
        mn__jw_key(w, "embedding");
        write_floats(w, h[j].embedding, width);
      }
      mn__jw_obj_end(w);
    }
    mn__jw_arr_end(w);
  }
  mn__jw_arr_end(w);
  mn__jw_key(w, "metadata");
  mn__jw_obj(w);
  mn__jw_kdouble(w, "search_time", floor(ms * 1000) / 1000);
  mn__jw_kint(w, "queries", mn_search_result_queries(res));
  mn__jw_kint(w, "k", sp.k);
  if (fb)
    mn__jw_kbool(w, "cpu_fallback", 1);
  mn__jw_obj_end(w);
  mn__jw_obj_end(w);
  mn_search_result_free(res);
  return 0;
}

/* ------------------------------------------------------------------------
 * Working chunks (the seed's chunk API).
 * ---------------------------------------------------------------------- */
static void write_chunk(mn__jw *w, const mn_chunk_info *i, int seed_shape) {
  mn__jw_obj(w);
  mn__jw_kstr(w, seed_shape ? "id" : "chunkId", i->id);
  mn__jw_kint(w, "size", (int64_t)i->size);
  mn__jw_kdouble(w, "created", floor(i->created * 1000) / 1000);
  mn__jw_kdouble(w, "lastAccessed", floor(i->last_accessed * 1000) / 1000);
  if (seed_shape) {
    mn__jw_key(w, "metadata");
    mn__jw_obj(w);
  }
  mn__jw_kstr(w, "chatId", i->chat_id);
  mn__jw_kint(w, "rows", i->rows);
  mn__jw_kint(w, "width", i->width);
  mn__jw_kint(w, "used", (int64_t)i->used);
  if (seed_shape)
    mn__jw_obj_end(w);
  mn__jw_obj_end(w);
}

int mn__h_allocate_memory(mn__call *c, const mn__jv *p, mn__jw *w) {
  uint64_t size = (uint64_t)mn__jobj_get(p, "size")->u.num;
  const char *chat = cstr(c, mn__jobj_get(p, "chatId"));
  const char *id = cstr(c, mn__jobj_get(p, "chunkId"));
  mn_chunk_info info;
  mn_status s = mn_store_chunk_alloc(c->r->store, size, chat, id, &info);
  if (s != MN_OK)
    return sfail(c, s);
  write_chunk(w, &info, 0);
  return 0;
}

int mn__h_process_chunk(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *R = c->root, *id;
  int rc = coll_param(c, p, "chunkId", &id);
  if (rc)
    return rc;
  mn__tin in;
  if ((rc = tensor_param(c, p, "embeddings", &in)))
    return rc;
  const mn__jv *o = mn__jobj_get(p, "options");
  unsigned flags = 0;
  const mn__jv *nz = opt(o, "normalize");
  const char *model = cstr(c, opt(o, "pca_model"));
  const float *rows = in.data;
  int64_t width = in.cols;
  mn_pipeline_result res;
  memset(&res, 0, sizeof res);
  const mn_pca_model *m = NULL;
  if ((nz && nz->u.b) || model) {
    /* The rows go through the pipeline first; the chunk keeps float32. */
    mn_pipeline_opts po;
    mn_pipeline_opts_init(&po);
    po.normalize = nz && nz->u.b;
    if (model) {
      m = mn__pca_store_get(c->r->pca, model, NULL);
      if (!m)
        return mn__fail(c, MN_RPC_INVALID_PARAMS,
                        "%s.options.pca_model \"%s\" does not exist: fit it "
                        "first with fitPCA",
                        R, model);
      if (m->input_dim != in.cols) {
        rc = mn__fail(c, MN_RPC_INVALID_PARAMS,
                      "%s.options.pca_model \"%s\" takes %lld-wide vectors, "
                      "these are %lld wide",
                      R, model, (long long)m->input_dim, (long long)in.cols);
        mn__pca_store_put(c->r->pca, m);
        return rc;
      }
      po.pca = m;
      po.reduce_dims = m->n_components;
    }
    po.precision = MN_DTYPE_F32;
    mn_tensor t = mn_tensor_host(in.data, MN_DTYPE_F32, in.rows, in.cols);
    mn_status s = mn__rpc_pipeline(c->r, &t, &po, &res, &flags);
    if (m)
      mn__pca_store_put(c->r->pca, m);
    if (s != MN_OK)
      return mn__fail_status(c, s, NULL);
    rows = res.out.data;
    width = res.out.cols;
  }
  mn_chunk_info info;
  mn_status s =
      mn_store_chunk_write(c->r->store, id, rows, in.rows, width, &info);
  mn_pipeline_result_free(&res);
  if (s != MN_OK)
    return sfail(c, s);
  mn__jw_obj(w);
  mn__jw_kstr(w, "chunkId", info.id);
  mn__jw_kint(w, "rows", info.rows);
  mn__jw_kint(w, "width", info.width);
  mn__jw_kint(w, "used", (int64_t)info.used);
  mn__jw_kint(w, "size", (int64_t)info.size);
  mn__jw_kint(w, "written", in.rows);
  if (flags & MN__RUN_CPU_FALLBACK)
    mn__jw_kbool(w, "cpu_fallback", 1);
  mn__jw_obj_end(w);
  return 0;
}

int mn__h_read_chunk(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *id;
  int rc = coll_param(c, p, "chunkId", &id);
  if (rc)
    return rc;
  const mn__jv *enc = mn__jobj_get(p, "encoding");
  mn__enc e = !enc                         ? MN__ENC_JSON
              : mn__jstr_eq(enc, "base64") ? MN__ENC_BASE64
              : mn__jstr_eq(enc, "binary") ? MN__ENC_BINARY
                                           : MN__ENC_JSON;
  float *data = NULL;
  mn_chunk_info info;
  mn_status s = mn_store_chunk_read(c->r->store, id, &data, &info);
  if (s != MN_OK)
    return sfail(c, s);
  mn__jw_obj(w);
  mn__jw_kstr(w, "chunkId", info.id);
  mn__jw_key(w, "embeddings");
  if (info.rows > 0) {
    mn_tensor t = mn_tensor_host(data, MN_DTYPE_F32, info.rows, info.width);
    rc = mn__tensor_encode(c, w, &t, e, 0);
  } else {
    mn__jw_arr(w);
    mn__jw_arr_end(w);
  }
  if (!rc) {
    mn__jw_kint(w, "rows", info.rows);
    mn__jw_kint(w, "width", info.width);
    mn__jw_kint(w, "used", (int64_t)info.used);
    mn__jw_kint(w, "size", (int64_t)info.size);
    mn__jw_obj_end(w);
  }
  free(data);
  return rc;
}

int mn__h_free_memory(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *id;
  int rc = coll_param(c, p, "chunkId", &id);
  if (rc)
    return rc;
  mn_status s = mn_store_chunk_free(c->r->store, id);
  if (s != MN_OK && s != MN_ERR_NOT_FOUND)
    return sfail(c, s);
  mn__jw_obj(w);
  mn__jw_kstr(w, "chunkId", id);
  mn__jw_kbool(w, "freed", s == MN_OK);
  mn__jw_obj_end(w);
  return 0;
}

int mn__h_list_chunks(mn__call *c, const mn__jv *p, mn__jw *w) {
  const char *chat = cstr(c, mn__jobj_get(p, "chatId"));
  mn_chunk_info *v = NULL;
  int64_t n = 0;
  mn_status s = mn_store_chunk_list(c->r->store, chat, &v, &n);
  if (s != MN_OK)
    return sfail(c, s);
  mn__jw_obj(w);
  mn__jw_key(w, "chunks");
  mn__jw_arr(w);
  for (int64_t i = 0; i < n; i++)
    write_chunk(w, &v[i], 1);
  mn__jw_arr_end(w);
  mn__jw_kint(w, "count", n);
  mn__jw_obj_end(w);
  free(v);
  return 0;
}

/* ------------------------------------------------------------------------
 * For health, getMetrics and cleanup (methods.c).
 * ---------------------------------------------------------------------- */
void mn__write_store_status(mn_rpc *r, mn__jw *w) {
  static const char *const tiers[3] = {"l1", "l2", "l3"};
  mn_store_stats st;
  mn_store_get_stats(r->store, &st);
  mn__jw_obj(w);
  mn__jw_kstr(w, "state", mn_pressure_name(st.pressure));
  mn__jw_kint(w, "collections", st.collections);
  mn__jw_kint(w, "memories", st.memories);
  mn__jw_kint(w, "working_chunks", st.working_chunks);
  mn__jw_kint(w, "working_bytes", (int64_t)st.working_bytes);
  mn__jw_key(w, "tiers");
  mn__jw_obj(w);
  for (int t = 0; t < 3; t++) {
    mn__jw_key(w, tiers[t]);
    mn__jw_obj(w);
    mn__jw_kint(w, "chunks", st.chunks[t]);
    mn__jw_kint(w, "used", (int64_t)st.used[t]);
    mn__jw_kint(w, "budget", (int64_t)st.budget[t]);
    mn__jw_obj_end(w);
  }
  mn__jw_obj_end(w);
  mn__jw_kbool(w, "l1_enabled", st.l1_enabled);
  mn__jw_kbool(w, "warming", st.warming);
  mn__jw_kint(w, "commits", (int64_t)st.commits);
  mn__jw_kint(w, "writes", (int64_t)st.writes);
  mn__jw_kint(w, "map_size", (int64_t)st.map_size);
  mn__jw_kint(w, "map_grows", st.map_grows);
  mn__jw_kint(w, "promotions", st.promotions);
  mn__jw_kint(w, "demotions", st.demotions);
  if (st.l1_cap != UINT64_MAX) /* device out of memory lowered it */
    mn__jw_kint(w, "l1_cap", (int64_t)st.l1_cap);
  mn__jw_obj_end(w);
}

int64_t mn__store_chunk_count(mn_rpc *r) {
  mn_store_stats st;
  mn_store_get_stats(r->store, &st);
  return st.chunks[0] + st.chunks[1] + st.chunks[2] + st.working_chunks;
}
