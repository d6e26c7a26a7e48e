/*
 * rpc.c - the JSON-RPC 2.0 engine: binary frame layout, the envelope,
 * batches and notifications, dispatch through the method table, the one
 * error path (mn_status -> JSON-RPC error), deadlines and metrics.
 *
 * A message is parsed once (json.c); a batch is handled member by member
 * into one reply array. A reply holds exactly "jsonrpc", "id" and one of
 * "result" / "error". The result of a method is streamed into the reply
 * buffer; when the method fails, or the deadline passes, the buffer is
 * rewound to the start of that reply and an error is written instead.
 *
 * DESIGN: mn_rpc_handle is called from several worker threads at once.
 * The engine itself is read-only after mn_rpc_create except for the
 * active-request counter (atomic) and the PCA store (its own lock);
 * per-connection state lives in mn_rpc_session, which the server uses from
 * several workers at once (rpc_internal.h says how it is kept consistent).
 * All memory of one message comes from one arena,
 * released before mn_rpc_handle returns; the reply bytes are malloc'd and
 * handed to the caller.
 */
#include "rpc/rpc_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MOD "rpc"
#define MN__HARD_MAX_DEPTH 2048

/* ------------------------------------------------------------------------
 * Errors
 * ---------------------------------------------------------------------- */
static int vfail(mn__call *c, int code, const char *data, const char *fmt,
                 va_list ap) {
  c->err_code = code;
  vsnprintf(c->err_msg, sizeof c->err_msg, fmt, ap);
  snprintf(c->err_data, sizeof c->err_data, "%s", data ? data : "");
  return code;
}

int mn__fail(mn__call *c, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(c, code, NULL, fmt, ap);
  va_end(ap);
  return code;
}

int mn__fail_data(mn__call *c, int code, const char *data_json, const char *fmt,
                  ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(c, code, data_json, fmt, ap);
  va_end(ap);
  return code;
}

int mn__status_code(mn_status s) {
  switch (s) {
  case MN_OK:
    return 0;
  case MN_ERR_INVALID:
  case MN_ERR_RANGE:
    return MN_RPC_INVALID_PARAMS;
  case MN_ERR_NOMEM:
  case MN_ERR_DEVICE_OOM:
  case MN_ERR_RESOURCE:
    return MN_RPC_RESOURCE_ERROR;
  case MN_ERR_TIMEOUT:
    return MN_RPC_TIMEOUT_ERROR;
  case MN_ERR_NUMERIC:
  case MN_ERR_DEVICE:
    return MN_RPC_PROCESSING_ERROR;
  default:
    return MN_RPC_INTERNAL_ERROR;
  }
}

int mn__fail_status(mn__call *c, mn_status s, const char *prefix) {
  int code = mn__status_code(s);
  const char *detail = mn_errmsg();
  if (!detail[0])
    detail = mn_strerror(s);
  char data[200] = "";
  if (code == MN_RPC_RESOURCE_ERROR) {
    /* What was asked for and what is left: the backend's free memory for
     * the device, the host budget (processing.cache_size) otherwise. */
    int64_t avail = 0;
    if (s == MN_ERR_DEVICE_OOM) {
      uint64_t fr = 0, tot = 0;
      if (mn_backend_memory_info(c->r->backend, &fr, &tot) == MN_OK)
        avail = (int64_t)fr;
    } else {
      avail = (int64_t)c->r->config->cache_size - mn_account_get(MN_TIER_HOST);
      if (avail < 0)
        avail = 0;
    }
    snprintf(data, sizeof data, "{\"requested\":%lld,\"available\":%lld}",
             (long long)c->requested_bytes, (long long)avail);
  }
  if (code == MN_RPC_TIMEOUT_ERROR)
    snprintf(data, sizeof data, "{\"timeout_ms\":%lld}",
             (long long)c->r->config->timeout_ms);
  return mn__fail_data(c, code, data[0] ? data : NULL, "%s%s",
                       prefix ? prefix : "", detail);
}

int mn__check_deadline(mn__call *c) {
  if (c->deadline_ns && mn_time_ns() > c->deadline_ns) {
    char data[64];
    snprintf(data, sizeof data, "{\"timeout_ms\":%lld}",
             (long long)c->r->config->timeout_ms);
    return mn__fail_data(c, MN_RPC_TIMEOUT_ERROR, data,
                         "timed out after %lld ms (processing.timeout); "
                         "send smaller batches or raise processing.timeout",
                         (long long)c->r->config->timeout_ms);
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * Compute with a CPU fallback
 * ---------------------------------------------------------------------- */
void mn__rpc_note_fallback(mn_rpc *r, const char *what, const char *why) {
  MN__LOGW(MOD,
           "%s ran out of device memory on %s (%s); running it on the CPU "
           "instead",
           what, mn_backend_device(r->backend), why ? why : mn_errmsg());
  if (r->metrics)
    mn_metrics_count(r->metrics, "cpu_fallbacks", 1);
}

static void note_fallback(mn_rpc *r, const char *what) {
  mn__rpc_note_fallback(r, what, NULL);
}

mn_status mn__rpc_pipeline(void *rpc, const mn_tensor *in,
                           const mn_pipeline_opts *o, mn_pipeline_result *res,
                           unsigned *flags) {
  mn_rpc *r = rpc;
  /* Small elementwise jobs stay on the host: for 32 x 768 the device's
   * upload, launch and download took 0.06 ms on an H200, the CPU's
   * normalisation a few microseconds. A PCA is worth the trip. The reply's
   * metadata.device says where the job ran. */
  if (r->cpu && o->reduce_dims == 0 && !o->pca &&
      in->rows * in->cols < r->config->gpu_min_elements)
    return mn_pipeline_run(r->cpu, in, o, res);
  mn_status s = mn_pipeline_run(r->backend, in, o, res);
  if (s == MN_ERR_DEVICE_OOM && r->cpu) {
    char what[96];
    snprintf(what, sizeof what, "a processEmbeddings job of %lld x %lld",
             (long long)in->rows, (long long)in->cols);
    note_fallback(r, what);
    mn_errmsg_clear();
    s = mn_pipeline_run(r->cpu, in, o, res);
    if (flags)
      *flags |= MN__RUN_CPU_FALLBACK;
  }
  return s;
}

mn_status mn__rpc_pca_fit(mn_rpc *r, const mn_tensor *x, int64_t k,
                          mn_pca_model **out, unsigned *flags) {
  mn_status s = mn_backend_pca_fit(r->backend, x, k, out);
  if (s == MN_ERR_DEVICE_OOM && r->cpu) {
    char what[96];
    snprintf(what, sizeof what, "a PCA fit of %lld x %lld", (long long)x->rows,
             (long long)x->cols);
    note_fallback(r, what);
    mn_errmsg_clear();
    s = mn_backend_pca_fit(r->cpu, x, k, out);
    if (flags)
      *flags |= MN__RUN_CPU_FALLBACK;
  }
  return s;
}

/* ------------------------------------------------------------------------
 * Engine lifetime
 * ---------------------------------------------------------------------- */
static mn_status mkdir_p(const char *path) {
  char buf[1100];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof buf)
    return mn__set_error(MN_ERR_IO,
                         "data directory '%s' is not usable: "
                         "empty or too long (storage.data_dir)",
                         path);
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] == '/' || buf[i] == '\0') {
      char save = buf[i];
      buf[i] = '\0';
      if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return mn__set_error(MN_ERR_IO,
                             "cannot create data directory %s: %s "
                             "(storage.data_dir)",
                             buf, strerror(errno));
      buf[i] = save;
    }
  }
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
    return mn__set_error(MN_ERR_IO,
                         "data directory %s is not a directory "
                         "(storage.data_dir)",
                         path);
  return MN_OK;
}

mn_status mn__table_load(mn__arena *a, mn__table *t) {
  size_t n = mn__n_methods;
  t->in = calloc(n, sizeof *t->in);
  t->out = calloc(n, sizeof *t->out);
  t->req = calloc(n, sizeof *t->req);
  t->rep = calloc(n, sizeof *t->rep);
  if (!t->in || !t->out || !t->req || !t->rep)
    return mn__set_error(MN_ERR_NOMEM, "out of memory loading the table");
  static const char *const what[4] = {"input schema", "output schema",
                                      "example request", "example reply"};
  for (size_t i = 0; i < n; i++) {
    const mn__method *m = &mn__methods[i];
    const char *texts[4] = {m->input_schema, m->output_schema,
                            m->example_request, m->example_reply};
    const mn__jv **dst[4] = {&t->in[i], &t->out[i], &t->req[i], &t->rep[i]};
    for (int k = 0; k < 4; k++) {
      *dst[k] = NULL;
      if (!texts[k])
        continue;
      char *txt = mn__json_join_literals(a, texts[k]);
      mn__jerr e;
      const mn__jv *v =
          txt ? mn__json_parse(a, txt, strlen(txt), 64, &e) : NULL;
      if (!v || v->type != MN__J_OBJ)
        return mn__set_error(
            MN_ERR_INTERNAL, "the %s of %s is broken at byte %zu: %s", what[k],
            m->name, txt ? e.offset : 0, txt ? e.msg : "out of memory");
      *dst[k] = v;
    }
  }
  return MN_OK;
}

void mn__table_free(mn__table *t) {
  free(t->in);
  free(t->out);
  free(t->req);
  free(t->rep);
  memset(t, 0, sizeof *t);
}

mn_status mn_rpc_create(const mn_rpc_opts *opts, mn_rpc **out) {
  if (!opts || !opts->config || !opts->backend || !out)
    return mn__set_error(MN_ERR_INVALID,
                         "mn_rpc_create needs a config and a backend");
  *out = NULL;
  mn_rpc *r = calloc(1, sizeof *r);
  if (!r)
    return mn__set_error(MN_ERR_NOMEM, "out of memory creating the engine");
  r->config = opts->config;
  r->backend = opts->backend;
  r->metrics = opts->metrics;
  r->started_ns = mn_time_ns();
  int64_t d = opts->config->max_json_depth;
  r->max_depth = d <= 0                   ? 64
                 : d > MN__HARD_MAX_DEPTH ? MN__HARD_MAX_DEPTH
                                          : (int)d;
  mn_status s = mkdir_p(opts->config->data_dir);
  /* A device backend gets a CPU backend beside it for the jobs that do
   * not fit in device memory. */
  if (s == MN_OK && strcmp(mn_backend_name(opts->backend), "cpu") != 0) {
    mn_backend_opts bo;
    mn_backend_opts_init(&bo);
    bo.pref = MN_BACKEND_CPU;
    s = mn_backend_open_cpu(&bo, &r->cpu);
  }
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  int max_jobs = opts->config->workers > 0 ? (int)opts->config->workers
                 : ncpu > 0                ? (int)ncpu
                                           : 1;
  /* One worker never has a second job to merge with: no batcher, rather
   * than a group of one set up and taken down for every request. */
  if (s == MN_OK && opts->config->batch_window_us > 0 && max_jobs > 1) {
    mn__batcher_opts bo = {.window_us = opts->config->batch_window_us,
                           .max_rows = opts->config->batch_max_rows,
                           .max_jobs = max_jobs,
                           .run = mn__rpc_pipeline,
                           .ctx = r};
    s = mn__batcher_create(&bo, &r->batcher);
  }
  /* The counters these add to exist from the start (at 0), so a scrape
   * sees them before the first event. */
  if (s == MN_OK && r->metrics && r->cpu)
    mn_metrics_count(r->metrics, "cpu_fallbacks", 0);
  /* The budgets the tiers' bytes are measured against (alerts divide). */
  if (s == MN_OK && r->metrics) {
    const mn_config *cf = opts->config;
    mn_metrics_set_budget(r->metrics, MN_TIER_DEVICE, cf->gpu_memory_limit);
    mn_metrics_set_budget(r->metrics, MN_TIER_HOST, cf->cache_size);
    mn_metrics_set_budget(r->metrics, MN_TIER_DISK, cf->disk_limit);
  }
  if (s == MN_OK && r->metrics && r->batcher) {
    static const char *const names[] = {"batches", "batched_jobs",
                                        "batched_rows", "batch_lone_waits"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
      mn_metrics_count(r->metrics, names[i], 0);
  }
  if (s == MN_OK)
    s = mn__table_load(&r->table_arena, &r->table);
  if (s == MN_OK)
    s = mn__pca_store_open(opts->config->data_dir, &r->pca);
  if (s == MN_OK)
    s = mn__rpc_store_open(r);
  if (s != MN_OK) {
    mn_rpc_destroy(r);
    return s;
  }
  *out = r;
  return MN_OK;
}

void mn_rpc_destroy(mn_rpc *r) {
  if (!r)
    return;
  mn__rpc_store_close(r);
  mn__pca_store_close(r->pca);
  mn__table_free(&r->table);
  mn__arena_release(&r->table_arena);
  mn__batcher_destroy(r->batcher);
  mn_backend_close(r->cpu);
  free(r);
}

mn_rpc_session *mn_rpc_session_new(mn_rpc *r, const char *peer) {
  mn_rpc_session *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  s->r = r;
  snprintf(s->peer, sizeof s->peer, "%s", peer ? peer : "");
  if (pthread_mutex_init(&s->lock, NULL) != 0) {
    free(s);
    return NULL;
  }
  return s;
}

void mn_rpc_session_set_headroom(mn_rpc_session *s, size_t bytes) {
  if (s)
    s->headroom = bytes > 4096 ? 4096 : bytes;
}

void mn_rpc_session_free(mn_rpc_session *s) {
  if (!s)
    return;
  pthread_mutex_destroy(&s->lock);
  free(s);
}

void mn_rpc_reply_free(mn_rpc_reply *r) {
  if (!r)
    return;
  if (r->data)
    free((char *)r->data - r->headroom);
  r->data = NULL;
  r->len = 0;
  r->binary = 0;
  r->headroom = 0;
}

/* ------------------------------------------------------------------------
 * Replies
 * ---------------------------------------------------------------------- */
static void reply_begin(mn__jw *w, const mn__jv *id) {
  mn__jw_obj(w);
  mn__jw_kstr(w, "jsonrpc", "2.0");
  mn__jw_key(w, "id");
  if (id)
    mn__jw_raw(w, id->src, id->src_len);
  else
    mn__jw_null(w);
}

static void write_error(mn__jw *w, const mn__jv *id, int code, const char *msg,
                        const char *data) {
  reply_begin(w, id);
  mn__jw_key(w, "error");
  mn__jw_obj(w);
  mn__jw_kint(w, "code", code);
  mn__jw_kstr(w, "message", msg);
  if (data && data[0]) {
    mn__jw_key(w, "data");
    mn__jw_raw(w, data, strlen(data));
  }
  mn__jw_obj_end(w);
  mn__jw_obj_end(w);
}

/* MCP Streamable HTTP: what the transport asked and what it is told. */
typedef struct http_ctx {
  int need_initialize; /* no session yet: a lone initialize only */
  int status;          /* 200, 202 or 400 */
  int initialized;     /* a lone initialize request succeeded */
} http_ctx;

/* Everything one message shares among its requests. */
typedef struct msg_ctx {
  mn_rpc *r;
  mn_rpc_session *s;
  mn__arena *a;
  const uint8_t *payload;
  size_t payload_len;
  int binary_in;
  mn__bytes payload_out;
  uint64_t deadline_ns;
  uint64_t t0;
  size_t head;        /* the session's headroom: bytes in front of the reply */
  int replies;        /* replies written so far */
  http_ctx *http;     /* NULL: the WebSocket */
  int envelope_error; /* a request was not a valid request object */
  int init_ok;        /* an initialize request (not in a batch) succeeded */
} msg_ctx;

static void record(msg_ctx *m, const char *method, int code, uint64_t t0) {
  if (m->r->metrics)
    mn_metrics_request(m->r->metrics, method, code,
                       (double)(mn_time_ns() - t0) * 1e-6);
}

static const mn__jv empty_obj = {.type = MN__J_OBJ, .src = "{}", .src_len = 2};

int mn__invoke(mn__call *c, const mn__method *m, const mn__jv *params,
               mn__jw *w) {
  if (!params || params->type == MN__J_NULL)
    params = &empty_obj;
  if (params->type == MN__J_ARR)
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s is an array, but %s takes its parameters by name: "
                    "send %s as an object such as {\"embeddings\": [[...]]}",
                    c->root, m->name, c->root);
  if (params->type != MN__J_OBJ) {
    char b[80];
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "%s must be an object of named parameters; got %s", c->root,
                    mn__jv_brief(params, b, sizeof b));
  }
  ptrdiff_t idx = mn__method_index(m);
  int rc = mn__schema_check(c, c->r->table.in[idx], params, c->root,
                            m->tensor_param);
  if (rc)
    return rc;
  return m->handler(c, params, w);
}

/* Handle one request object of a message (alone or in a batch). */
static void handle_request(msg_ctx *mc, const mn__jv *req, mn__jw *w,
                           int in_batch) {
  uint64_t t0 = in_batch ? mn_time_ns() : mc->t0;
  char b[96];
  char msg[512];
  if (req->type != MN__J_OBJ) {
    if (req->type == MN__J_ARR)
      snprintf(msg, sizeof msg,
               "a batch must not contain arrays: each "
               "member must be a request object");
    else
      snprintf(msg, sizeof msg, "a request must be a JSON object; got %s",
               mn__jv_brief(req, b, sizeof b));
    write_error(w, NULL, MN_RPC_INVALID_REQUEST, msg, NULL);
    mc->replies++;
    mc->envelope_error = 1;
    record(mc, "unknown", MN_RPC_INVALID_REQUEST, t0);
    return;
  }
  const mn__jv *id = mn__jobj_get(req, "id");
  const mn__jv *ver = mn__jobj_get(req, "jsonrpc");
  const mn__jv *meth = mn__jobj_get(req, "method");
  const mn__jv *params = mn__jobj_get(req, "params");
  const mn__jv *reply_id = id;
  int bad = 0;
  if (id && id->type != MN__J_STR && id->type != MN__J_NUM &&
      id->type != MN__J_NULL) {
    snprintf(msg, sizeof msg,
             "\"id\" must be a string, a number or null; got %s",
             mn__jv_brief(id, b, sizeof b));
    reply_id = NULL;
    bad = 1;
  } else if (!ver) {
    snprintf(msg, sizeof msg,
             "the request has no \"jsonrpc\" member: add \"jsonrpc\": "
             "\"2.0\"");
    bad = 1;
  } else if (!mn__jstr_eq(ver, "2.0")) {
    snprintf(msg, sizeof msg,
             "\"jsonrpc\" must be exactly \"2.0\"; got %s: this server "
             "speaks JSON-RPC 2.0 only",
             mn__jv_brief(ver, b, sizeof b));
    bad = 1;
  } else if (!meth) {
    snprintf(msg, sizeof msg,
             "the request has no \"method\" member: name the method to "
             "call, e.g. \"method\": \"processEmbeddings\"");
    bad = 1;
  } else if (meth->type != MN__J_STR) {
    snprintf(msg, sizeof msg, "\"method\" must be a string; got %s",
             mn__jv_brief(meth, b, sizeof b));
    bad = 1;
  } else if (params && params->type != MN__J_OBJ && params->type != MN__J_ARR &&
             params->type != MN__J_NULL) {
    snprintf(msg, sizeof msg,
             "\"params\" must be an object (parameters by name) when "
             "present; got %s",
             mn__jv_brief(params, b, sizeof b));
    bad = 1;
  }
  if (bad) {
    write_error(w, reply_id, MN_RPC_INVALID_REQUEST, msg, NULL);
    mc->replies++;
    mc->envelope_error = 1;
    record(mc, "unknown", MN_RPC_INVALID_REQUEST, t0);
    return;
  }
  int notification = id == NULL;
  const mn__method *m = mn__method_find(meth->u.str, meth->n);
  mn__jw_mark mark = mn__jw_get_mark(w);
  size_t pmark = mc->payload_out.len;
  if (!m) {
    if (!notification) {
      char names[400] = "";
      size_t k = 0;
      for (size_t i = 0; i < mn__n_methods && k < sizeof names - 40; i++)
        k += (size_t)snprintf(names + k, sizeof names - k, "%s%s",
                              i ? ", " : "", mn__methods[i].name);
      char mb[80];
      snprintf(msg, sizeof msg,
               "method %s does not exist; available methods: %s",
               mn__jv_brief(meth, mb, sizeof mb), names);
      write_error(w, id, MN_RPC_METHOD_NOT_FOUND, msg, NULL);
      mc->replies++;
    }
    record(mc, "unknown", MN_RPC_METHOD_NOT_FOUND, t0);
    return;
  }
  mn__call c;
  memset(&c, 0, sizeof c);
  c.r = mc->r;
  c.s = mc->s;
  c.a = mc->a;
  c.payload = mc->payload;
  c.payload_len = mc->payload_len;
  c.binary_in = mc->binary_in;
  c.text_only = mc->http != NULL;
  c.payload_out = &mc->payload_out;
  c.deadline_ns = mc->deadline_ns;
  c.root = "params";
  __atomic_add_fetch(&mc->r->active, 1, __ATOMIC_RELAXED);
  reply_begin(w, id);
  mn__jw_key(w, "result");
  mn_errmsg_clear();
  int rc = mn__check_deadline(&c);
  if (!rc)
    rc = mn__invoke(&c, m, params, w);
  if (!rc)
    rc = mn__check_deadline(&c);
  if (!rc && w->oom)
    rc = mn__fail(&c, MN_RPC_RESOURCE_ERROR,
                  "out of memory while writing the reply");
  __atomic_sub_fetch(&mc->r->active, 1, __ATOMIC_RELAXED);
  if (rc) {
    mn__jw_rewind(w, mark);
    mc->payload_out.len = pmark;
    if (!notification)
      write_error(w, id, rc, c.err_msg, c.err_data);
    if (rc != MN_RPC_INVALID_PARAMS)
      MN__LOGD(MOD, "%s failed (%d): %s", m->name, rc, c.err_msg);
  } else {
    mn__jw_obj_end(w);
    if (notification) {
      mn__jw_rewind(w, mark);
      mc->payload_out.len = pmark;
    }
  }
  if (!notification)
    mc->replies++;
  if (!rc && !notification && !in_batch && !strcmp(m->name, "initialize"))
    mc->init_ok = 1;
  record(mc, m->name, rc, t0);
}

/* Turn the writer into the reply: text, or a binary frame (u32 length,
 * JSON padded with spaces so the payload starts 8-byte aligned, payload).
 * The first mc->head bytes of the writer are the session's headroom; the
 * reply starts after them. */
static void finish(mn__jw *w, msg_ctx *mc, int reserved_header,
                   mn_rpc_reply *out) {
  int binary = mc->binary_in || mc->payload_out.len > 0;
  size_t head = mc->head;
  if (w->oom) {
    mn__jw_free(w);
    memset(out, 0, sizeof *out);
    const char *t = "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":"
                    "-32000,\"message\":\"out of memory while building the "
                    "reply\"}}";
    out->data = strdup(t);
    out->len = out->data ? strlen(t) : 0;
    return;
  }
  if (!binary) {
    out->data = w->buf + head;
    out->len = w->len - head;
    out->binary = 0;
    out->headroom = head;
    w->buf = NULL;
    return;
  }
  size_t pay = mc->payload_out.len;
  if (reserved_header && mc->payload_out.adopted && pay) {
    /* The payload is one result tensor with room in front of it (see
     * MN__TENSOR_FRONT): the length and the JSON go there, and the tensor
     * is not copied. */
    size_t json = w->len - head - 4;
    size_t pad = (8 - ((4 + json) & 7)) & 7;
    size_t lead = 4 + json + pad;
    if (mn__alloc_front(mc->payload_out.p) >= head + lead) {
      size_t front;
      unsigned char *base = mn__alloc_detach(mc->payload_out.p, &front);
      unsigned char *h = mc->payload_out.p - lead;
      uint32_t n = (uint32_t)(lead - 4);
      h[0] = (unsigned char)(n & 0xff);
      h[1] = (unsigned char)((n >> 8) & 0xff);
      h[2] = (unsigned char)((n >> 16) & 0xff);
      h[3] = (unsigned char)(n >> 24);
      memcpy(h + 4, w->buf + head + 4, json);
      memset(h + 4 + json, ' ', pad);
      out->data = h;
      out->len = lead + pay;
      out->binary = 1;
      out->headroom = (size_t)(h - base);
      memset(&mc->payload_out, 0, sizeof mc->payload_out);
      mn__jw_free(w);
      return;
    }
  }
  if (!reserved_header) {
    /* A text request whose reply carries binary tensors. */
    mn__jw nw;
    mn__jw_init(&nw, w->len + 16 + pay);
    char *z = mn__jw_reserve(&nw, head);
    if (z) {
      memset(z, 0, head);
      nw.len = head;
    }
    mn__jw_bytes(&nw, "\0\0\0\0", 4);
    mn__jw_bytes(&nw, w->buf + head, w->len - head);
    mn__jw_free(w);
    *w = nw;
  }
  mn__jw_reserve_exact(w, 8 + pay);
  while (!w->oom && ((w->len - head) & 7) != 0)
    mn__jw_bytes(w, " ", 1);
  uint32_t n = (uint32_t)(w->len - head - 4);
  mn__jw_bytes(w, mc->payload_out.p, pay);
  if (w->oom) {
    finish(w, &(msg_ctx){.binary_in = 0}, 0, out);
    return;
  }
  unsigned char *h = (unsigned char *)w->buf + head;
  h[0] = (unsigned char)(n & 0xff);
  h[1] = (unsigned char)((n >> 8) & 0xff);
  h[2] = (unsigned char)((n >> 16) & 0xff);
  h[3] = (unsigned char)(n >> 24);
  out->data = h;
  out->len = w->len - head;
  out->binary = 1;
  out->headroom = head;
  w->buf = NULL;
}

static void handle(mn_rpc *r, mn_rpc_session *s, const void *msg, size_t len,
                   int binary, uint64_t deadline_ns, http_ctx *http,
                   mn_rpc_reply *out);

void mn_rpc_handle(mn_rpc *r, mn_rpc_session *s, const void *msg, size_t len,
                   int binary, uint64_t deadline_ns, mn_rpc_reply *out) {
  /* The batcher waits for a partner only while some request in here may
   * still bring one (batcher.h). */
  mn__batcher_arrive(r->batcher);
  handle(r, s, msg, len, binary, deadline_ns, NULL, out);
  mn__batcher_depart(r->batcher);
}

void mn_rpc_handle_http(mn_rpc *r, mn_rpc_session *s, const void *msg,
                        size_t len, uint64_t deadline_ns, mn_rpc_http *http,
                        mn_rpc_reply *out) {
  http_ctx h = {.need_initialize = http->need_initialize, .status = 200};
  mn__batcher_arrive(r->batcher);
  handle(r, s, msg, len, 0, deadline_ns, &h, out);
  mn__batcher_depart(r->batcher);
  if (out->data && out->binary) {
    /* Cannot happen (the codec refuses binary tensors when text_only);
     * never send a binary frame's bytes as JSON. */
    mn_rpc_reply_free(out);
    mn_rpc_error_reply(MN_RPC_INTERNAL_ERROR,
                       "internal error: a binary reply was built for HTTP",
                       NULL, NULL, out);
  }
  http->status = h.status;
  http->initialized = h.initialized;
}

/* A JSON-RPC response (a client answering a server's request): an object
 * with "result" or "error" and no "method". */
static int is_response(const mn__jv *v) {
  return v && v->type == MN__J_OBJ && !mn__jobj_get(v, "method") &&
         (mn__jobj_get(v, "result") || mn__jobj_get(v, "error"));
}

/* MCP over HTTP, before anything runs: a POST without a session holds a
 * lone initialize request; a batch only where the session's protocol has
 * them (2025-03-26 and before); responses are accepted and dropped (this
 * server never asks the client anything). Returns 1 when *w holds the
 * error to send (status 400), 2 when there is nothing to run or send
 * (202), 0 to go on. */
static int http_screen(msg_ctx *mc, const mn__jv *root, mn__jw *w,
                       http_ctx *h) {
  char m[400];
  if (h->need_initialize) {
    const mn__jv *meth = mn__jobj_get(root, "method");
    if (root->type != MN__J_OBJ || !mn__jstr_eq(meth, "initialize") ||
        !mn__jobj_get(root, "id")) {
      if (root->type != MN__J_ARR && is_response(root))
        snprintf(m, sizeof m, "%s",
                 "a response without an Mcp-Session-Id header: this server "
                 "sends no requests outside a session; send initialize first");
      else
        snprintf(m, sizeof m, "%s",
                 "this POST has no Mcp-Session-Id header: start a session "
                 "with an initialize request (alone, without the header), "
                 "then send the Mcp-Session-Id its reply carries with every "
                 "later request");
      write_error(w, NULL, MN_RPC_INVALID_REQUEST, m, NULL);
      record(mc, "unknown", MN_RPC_INVALID_REQUEST, mc->t0);
      h->status = 400;
      return 1;
    }
    return 0;
  }
  if (root->type == MN__J_ARR) {
    const char *proto = mn__session_protocol(mc->s);
    if (strcmp(proto, "2025-03-26") && strcmp(proto, "2024-11-05")) {
      snprintf(m, sizeof m,
               "a batch (JSON array) is not accepted in MCP %s, which this "
               "session negotiated: since 2025-06-18 a POST carries one "
               "JSON-RPC message; send the requests one by one (or "
               "negotiate 2025-03-26)",
               proto[0] ? proto : "(none)");
      write_error(w, NULL, MN_RPC_INVALID_REQUEST, m, NULL);
      record(mc, "unknown", MN_RPC_INVALID_REQUEST, mc->t0);
      h->status = 400;
      return 1;
    }
    return 0;
  }
  if (is_response(root)) {
    h->status = 202;
    return 2;
  }
  return 0;
}

static void handle(mn_rpc *r, mn_rpc_session *s, const void *msg, size_t len,
                   int binary, uint64_t deadline_ns, http_ctx *http,
                   mn_rpc_reply *out) {
  memset(out, 0, sizeof *out);
  mn__arena arena = {0};
  msg_ctx mc = {.r = r,
                .s = s,
                .a = &arena,
                .binary_in = binary != 0,
                .deadline_ns = deadline_ns,
                .t0 = mn_time_ns(),
                .head = s ? s->headroom : 0,
                .http = http};
  mn__jw w;
  size_t guess = len + 512;
  mn__jw_init(&w, (guess > ((size_t)64 << 20) ? (size_t)64 << 20 : guess) +
                      mc.head);
  /* The headroom: written as zeros so that the whole block is defined. */
  char *z = mn__jw_reserve(&w, mc.head);
  if (z) {
    memset(z, 0, mc.head);
    w.len = mc.head;
  }
  const char *json = msg;
  size_t jlen = len;
  char m[400];
  if (binary) {
    mn__jw_bytes(&w, "\0\0\0\0", 4);
    const uint8_t *b = msg;
    if (len < 4) {
      snprintf(m, sizeof m,
               "a binary frame must start with a 4-byte little-endian "
               "length of its JSON part; this one has only %zu bytes",
               len);
      goto parse_error;
    }
    uint32_t n = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                 (uint32_t)b[3] << 24;
    if ((size_t)n > len - 4) {
      snprintf(m, sizeof m,
               "the binary frame's header says its JSON part is %u bytes, "
               "but only %zu bytes follow the header",
               n, len - 4);
      goto parse_error;
    }
    json = (const char *)b + 4;
    jlen = n;
    mc.payload = b + 4 + n;
    mc.payload_len = len - 4 - n;
  }
  mn__jerr e;
  mn__jv *root = mn__json_parse(&arena, json, jlen, r->max_depth, &e);
  if (!root) {
    if (e.depth_exceeded) {
      snprintf(m, sizeof m,
               "the message nests arrays and objects more than %d levels "
               "deep (at line %d, column %d); the limit is "
               "server.max_json_depth",
               r->max_depth, e.line, e.col);
      write_error(&w, NULL, MN_RPC_INVALID_REQUEST, m, NULL);
      record(&mc, "unknown", MN_RPC_INVALID_REQUEST, mc.t0);
      if (http)
        http->status = 400;
      goto done;
    }
    snprintf(m, sizeof m, "invalid JSON at line %d, column %d (byte %zu): %s",
             e.line, e.col, e.offset, e.msg);
    goto parse_error;
  }
  if (http) {
    int sc = http_screen(&mc, root, &w, http);
    if (sc == 1)
      goto done;
    if (sc == 2)
      goto nothing;
  }
  if (root->type == MN__J_ARR) {
    if (root->n == 0) {
      write_error(&w, NULL, MN_RPC_INVALID_REQUEST,
                  "an empty batch is not a valid request: send at least one "
                  "request object in the array",
                  NULL);
      record(&mc, "unknown", MN_RPC_INVALID_REQUEST, mc.t0);
      if (http)
        http->status = 400;
      goto done;
    }
    mn__jw_arr(&w);
    mn__jv tmp;
    for (uint32_t i = 0; i < root->n; i++) {
      const mn__jv *member = mn__jarr_at(root, i, &tmp);
      if (http && is_response(member))
        continue; /* accepted and dropped, as alone */
      handle_request(&mc, member, &w, 1);
    }
    mn__jw_arr_end(&w);
    if (mc.replies == 0)
      goto nothing; /* only notifications: nothing at all is sent */
  } else {
    handle_request(&mc, root, &w, 0);
    if (mc.replies == 0)
      goto nothing;
    if (http && mc.envelope_error)
      http->status = 400; /* not a request: the POST is refused */
    if (http && mc.init_ok)
      http->initialized = 1;
  }
  goto done;
nothing:
  if (http)
    http->status = 202;
  mn__jw_free(&w);
  mn__bytes_free(&mc.payload_out);
  mn__arena_release(&arena);
  return;
parse_error:
  write_error(&w, NULL, MN_RPC_PARSE_ERROR, m, NULL);
  record(&mc, "unknown", MN_RPC_PARSE_ERROR, mc.t0);
  if (http)
    http->status = 400;
done:
  finish(&w, &mc, binary, out);
  mn__jw_free(&w);
  mn__bytes_free(&mc.payload_out);
  mn__arena_release(&arena);
}

/* ------------------------------------------------------------------------
 * Replies built outside the engine
 * ---------------------------------------------------------------------- */
static int valid_json(const char *t, int want_obj) {
  if (!t)
    return 0;
  mn__arena a = {0};
  mn__jerr e;
  mn__jv *v = mn__json_parse(&a, t, strlen(t), 64, &e);
  int ok = v && (!want_obj || v->type == MN__J_OBJ) &&
           (want_obj || v->type == MN__J_STR || v->type == MN__J_NUM ||
            v->type == MN__J_NULL);
  mn__arena_release(&a);
  return ok;
}

void mn_rpc_error_reply(int code, const char *message, const char *data_json,
                        const char *id_json, mn_rpc_reply *out) {
  memset(out, 0, sizeof *out);
  mn__jw w;
  mn__jw_init(&w, 256);
  mn__jw_obj(&w);
  mn__jw_kstr(&w, "jsonrpc", "2.0");
  mn__jw_key(&w, "id");
  if (id_json && valid_json(id_json, 0))
    mn__jw_raw(&w, id_json, strlen(id_json));
  else
    mn__jw_null(&w);
  mn__jw_key(&w, "error");
  mn__jw_obj(&w);
  mn__jw_kint(&w, "code", code);
  mn__jw_kstr(&w, "message", message ? message : "error");
  if (data_json && valid_json(data_json, 1)) {
    mn__jw_key(&w, "data");
    mn__jw_raw(&w, data_json, strlen(data_json));
  }
  mn__jw_obj_end(&w);
  mn__jw_obj_end(&w);
  if (w.oom) {
    mn__jw_free(&w);
    return;
  }
  out->data = w.buf;
  out->len = w.len;
}

/* ------------------------------------------------------------------------
 * mn_rpc_peek_id: a scanner that skips values without building them.
 * ---------------------------------------------------------------------- */
static const char *skip_ws_p(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
    p++;
  return p;
}

static const char *skip_string(const char *p, const char *e) {
  p++; /* opening quote */
  while (p < e) {
    const char *q = memchr(p, '"', (size_t)(e - p));
    if (!q)
      return NULL;
    /* Count the backslashes in front of the quote. */
    size_t bs = 0;
    while (q - bs > p && q[-1 - (ptrdiff_t)bs] == '\\')
      bs++;
    if (bs % 2 == 0)
      return q + 1;
    p = q + 1;
  }
  return NULL;
}

static const char *skip_value(const char *p, const char *e) {
  if (p >= e)
    return NULL;
  if (*p == '"')
    return skip_string(p, e);
  if (*p == '{' || *p == '[') {
    int depth = 0;
    while (p < e) {
      char ch = *p;
      if (ch == '"') {
        p = skip_string(p, e);
        if (!p)
          return NULL;
        continue;
      }
      if (ch == '{' || ch == '[')
        depth++;
      else if (ch == '}' || ch == ']') {
        if (--depth == 0)
          return p + 1;
      }
      p++;
    }
    return NULL;
  }
  while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ' &&
         *p != '\n' && *p != '\r' && *p != '\t')
    p++;
  return p;
}

char *mn_rpc_peek_id(const void *msg, size_t len, int binary) {
  if (!msg)
    return NULL;
  const char *p = msg, *e = p + len;
  if (binary) {
    if (len < 4)
      return NULL;
    const uint8_t *b = msg;
    uint32_t n = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                 (uint32_t)b[3] << 24;
    if ((size_t)n > len - 4)
      return NULL;
    p += 4;
    e = p + n;
  }
  if (e - p >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0)
    p += 3;
  p = skip_ws_p(p, e);
  if (p >= e || *p != '{')
    return NULL;
  p++;
  const char *id = NULL, *id_end = NULL;
  for (;;) {
    p = skip_ws_p(p, e);
    if (p >= e || *p != '"')
      break;
    const char *ks = p;
    p = skip_string(p, e);
    if (!p)
      return NULL;
    int is_id = p - ks == 4 && memcmp(ks, "\"id\"", 4) == 0;
    p = skip_ws_p(p, e);
    if (p >= e || *p != ':')
      return NULL;
    p = skip_ws_p(p + 1, e);
    const char *vs = p;
    p = skip_value(p, e);
    if (!p)
      return NULL;
    if (is_id) {
      id = vs;
      id_end = p;
    }
    p = skip_ws_p(p, e);
    if (p < e && *p == ',') {
      p++;
      continue;
    }
    break;
  }
  if (!id || id_end <= id)
    return NULL;
  char c0 = *id;
  if (!(c0 == '"' || c0 == '-' || (c0 >= '0' && c0 <= '9') ||
        (id_end - id == 4 && memcmp(id, "null", 4) == 0)))
    return NULL;
  char *t = strndup(id, (size_t)(id_end - id));
  if (t && !valid_json(t, 0)) {
    free(t);
    return NULL;
  }
  return t;
}
