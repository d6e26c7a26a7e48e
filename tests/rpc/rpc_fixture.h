/*
 * rpc_fixture.h - what the rpc tests share: an engine on a real CPU
 * backend with a temporary data directory, a call helper, and reply checks
 * through jansson (a JSON parser independent of the engine's own).
 */
#ifndef MNEMO_TEST_RPC_FIXTURE_H
#define MNEMO_TEST_RPC_FIXTURE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mnemo/rpc.h"
#include "rpc/rpc_internal.h"

typedef struct fx {
  char dir[256];
  mn_config cfg;
  mn_backend *b;
  mn_metrics *m;
  mn_rpc *r;
  mn_rpc_session *s;
} fx;

static inline void fx_rm_rf(const char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

static inline void fx_open_engine(fx *f) {
  mn_rpc_opts o = {.config = &f->cfg, .backend = f->b, .metrics = f->m};
  mn_status s = mn_rpc_create(&o, &f->r);
  if (s != MN_OK)
    fail_msg("mn_rpc_create: %s", mn_errmsg());
  f->s = mn_rpc_session_new(f->r, "test");
  assert_non_null(f->s);
}

static inline void fx_close_engine(fx *f) {
  mn_rpc_session_free(f->s);
  mn_rpc_destroy(f->r);
  f->s = NULL;
  f->r = NULL;
}

static inline fx *fx_new_with(void (*tweak)(mn_config *)) {
  fx *f = calloc(1, sizeof *f);
  assert_non_null(f);
  snprintf(f->dir, sizeof f->dir, "/tmp/mnemo-rpc-test-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  mn_config_defaults(&f->cfg);
  snprintf(f->cfg.data_dir, sizeof f->cfg.data_dir, "%s", f->dir);
  if (tweak)
    tweak(&f->cfg);
  mn_backend_opts bo;
  mn_backend_opts_init(&bo);
  bo.threads = 2;
  assert_int_equal(mn_backend_open_cpu(&bo, &f->b), MN_OK);
  assert_int_equal(mn_metrics_create(&f->m), MN_OK);
  fx_open_engine(f);
  return f;
}

static inline fx *fx_new(void) {
  return fx_new_with(NULL);
}

static inline void fx_free(fx *f) {
  if (!f)
    return;
  fx_close_engine(f);
  mn_metrics_destroy(f->m);
  mn_backend_close(f->b);
  fx_rm_rf(f->dir);
  free(f);
}

/* Send a text message; the reply text (NUL-terminated, caller frees) or
 * NULL when nothing was sent back. */
static inline char *fx_call_n(fx *f, const char *msg, size_t len,
                              uint64_t deadline) {
  mn_rpc_reply rep;
  mn_rpc_handle(f->r, f->s, msg, len, 0, deadline, &rep);
  if (!rep.data)
    return NULL;
  assert_int_equal(rep.binary, 0);
  char *t = malloc(rep.len + 1);
  assert_non_null(t);
  memcpy(t, rep.data, rep.len);
  t[rep.len] = '\0';
  mn_rpc_reply_free(&rep);
  return t;
}

static inline char *fx_call(fx *f, const char *msg) {
  return fx_call_n(f, msg, strlen(msg), 0);
}

static inline json_t *jparse(const char *text) {
  json_error_t e;
  json_t *j = json_loads(text, JSON_DECODE_ANY, &e);
  if (!j)
    fail_msg("reply is not JSON (%s): %.300s", e.text, text);
  return j;
}

/* A reply object holds exactly jsonrpc, id and one of result / error. */
static inline void check_envelope(json_t *rep) {
  assert_true(json_is_object(rep));
  assert_string_equal(json_string_value(json_object_get(rep, "jsonrpc")),
                      "2.0");
  assert_non_null(json_object_get(rep, "id"));
  int has_r = json_object_get(rep, "result") != NULL;
  int has_e = json_object_get(rep, "error") != NULL;
  assert_true(has_r != has_e);
  assert_int_equal(json_object_size(rep), 3);
  if (has_e) {
    json_t *e = json_object_get(rep, "error");
    assert_true(json_is_integer(json_object_get(e, "code")));
    const char *m = json_string_value(json_object_get(e, "message"));
    assert_non_null(m);
    assert_true(strlen(m) > 10);
    json_t *d = json_object_get(e, "data");
    assert_true(d == NULL || json_is_object(d));
  }
}

/* Call and expect one reply: the parsed reply (caller decrefs). */
static inline json_t *fx_rpc(fx *f, const char *msg) {
  char *t = fx_call(f, msg);
  if (!t)
    fail_msg("no reply to %.200s", msg);
  json_t *j = jparse(t);
  free(t);
  if (json_is_object(j))
    check_envelope(j);
  return j;
}

/* The result of a call that must succeed (borrowed from *rep). */
static inline json_t *fx_ok(fx *f, const char *msg, json_t **rep) {
  *rep = fx_rpc(f, msg);
  json_t *res = json_object_get(*rep, "result");
  if (!res) {
    char *d = json_dumps(*rep, 0);
    fail_msg("expected a result for %.200s; got %s", msg, d);
  }
  return res;
}

/* A call that must fail with `code` and a message containing `needle`. */
static inline void fx_err(fx *f, const char *msg, int code,
                          const char *needle) {
  json_t *rep = fx_rpc(f, msg);
  json_t *e = json_object_get(rep, "error");
  if (!e) {
    char *d = json_dumps(rep, 0);
    fail_msg("expected error %d for %.200s; got %s", code, msg, d);
  }
  int got = (int)json_integer_value(json_object_get(e, "code"));
  const char *m = json_string_value(json_object_get(e, "message"));
  if (got != code || (needle && !strstr(m, needle)))
    fail_msg("expected error %d containing '%s'; got %d: %s", code,
             needle ? needle : "", got, m);
  json_decref(rep);
}

/* A growing string for building requests. */
typedef struct sbuf {
  char *p;
  size_t len, cap;
} sbuf;

static inline void sb_add(sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static inline void sb_add(sbuf *b, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    va_start(ap, fmt);
    size_t room = b->cap - b->len;
    int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? room : 0, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    if (b->p && (size_t)n < room) {
      b->len += (size_t)n;
      return;
    }
    size_t nc = b->cap ? b->cap * 2 : 1024;
    while (nc < b->len + (size_t)n + 1)
      nc *= 2;
    b->p = realloc(b->p, nc);
    assert_non_null(b->p);
    b->cap = nc;
  }
}

/* Append rows x cols floats as nested JSON arrays (%.9g: exact float32). */
static inline void sb_matrix(sbuf *b, const float *x, int64_t rows,
                             int64_t cols) {
  sb_add(b, "[");
  for (int64_t r = 0; r < rows; r++) {
    sb_add(b, r ? ",[" : "[");
    for (int64_t c = 0; c < cols; c++)
      sb_add(b, c ? ",%.9g" : "%.9g", (double)x[r * cols + c]);
    sb_add(b, "]");
  }
  sb_add(b, "]");
}

/* Deterministic random floats in [-1, 1). */
static uint64_t fx_rng = 0x9e3779b97f4a7c15ull;
static inline float frand(void) {
  fx_rng ^= fx_rng << 13;
  fx_rng ^= fx_rng >> 7;
  fx_rng ^= fx_rng << 17;
  return (float)((double)(fx_rng >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static inline float *rand_matrix(int64_t rows, int64_t cols) {
  float *x = malloc((size_t)(rows * cols) * sizeof(float));
  assert_non_null(x);
  for (int64_t i = 0; i < rows * cols; i++)
    x[i] = frand();
  return x;
}

/* Read a 2-D (or 1-D) JSON number array into doubles; returns rows. */
static inline int64_t read_matrix(json_t *a, double *out, int64_t cols) {
  assert_true(json_is_array(a));
  if (json_array_size(a) && json_is_number(json_array_get(a, 0))) {
    assert_int_equal(json_array_size(a), cols);
    for (int64_t c = 0; c < cols; c++)
      out[c] = json_number_value(json_array_get(a, (size_t)c));
    return 1;
  }
  int64_t rows = (int64_t)json_array_size(a);
  for (int64_t r = 0; r < rows; r++) {
    json_t *row = json_array_get(a, (size_t)r);
    assert_int_equal(json_array_size(row), cols);
    for (int64_t c = 0; c < cols; c++) {
      json_t *v = json_array_get(row, (size_t)c);
      assert_true(json_is_number(v));
      out[r * cols + c] = json_number_value(v);
    }
  }
  return rows;
}

/* Double-precision reference of L2 normalisation. */
static inline void ref_normalize(const float *x, double *y, int64_t rows,
                                 int64_t cols) {
  for (int64_t r = 0; r < rows; r++) {
    double s = 0;
    for (int64_t c = 0; c < cols; c++)
      s += (double)x[r * cols + c] * x[r * cols + c];
    double n = sqrt(s);
    for (int64_t c = 0; c < cols; c++)
      y[r * cols + c] = n > 0 ? x[r * cols + c] / n : 0;
  }
}

#endif /* MNEMO_TEST_RPC_FIXTURE_H */
