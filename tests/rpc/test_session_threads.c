/*
 * test_session_threads.c - one mn_rpc_session used by several threads at
 * once, as mnemod's workers use a connection's session: initialize (with
 * different versions and client details), notifications/initialized,
 * tools/call and processEmbeddings (text and binary frames) interleaved,
 * while a reader thread keeps looking at the session's state.
 *
 * Every reply is checked against its own request (the version it asked
 * for, normalised rows against a double-precision reference), and the
 * reader checks that the state it sees is always whole: a version from
 * the table or "", and a client name and version written by the same
 * initialize. Run under ThreadSanitizer (-DMNEMO_SANITIZE=thread) this is
 * the check that the session has no data race.
 *
 * The threads never call cmocka's asserts (they longjmp to the main
 * thread's test); they count failures and keep the first message.
 */
#include "rpc_fixture.h"

#include <pthread.h>
#include <stdatomic.h>

#define N_WORKERS 4
#define ITERS 120

static const char *const versions[] = {"2025-11-25", "2025-06-18", "2025-03-26",
                                       "2024-11-05"};

typedef struct shared {
  fx *f;
  atomic_int failures;
  atomic_int done;
  atomic_long reads;
  atomic_int normalized; /* processEmbeddings replies checked */
  pthread_mutex_t msg_lock;
  char first[512];
} shared;

typedef struct worker {
  shared *sh;
  int index;
} worker;

static void failf(shared *sh, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void failf(shared *sh, const char *fmt, ...) {
  if (atomic_fetch_add(&sh->failures, 1) == 0) {
    pthread_mutex_lock(&sh->msg_lock);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sh->first, sizeof sh->first, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&sh->msg_lock);
  }
}

/* Call with a text or binary message; the reply as a NUL-terminated JSON
 * text (for binary replies, the JSON part) and its payload. */
static char *call(shared *sh, const void *msg, size_t len, int binary,
                  mn_rpc_reply *rep) {
  mn_rpc_handle(sh->f->r, sh->f->s, msg, len, binary, 0, rep);
  if (!rep->data)
    return NULL;
  const char *json = rep->data;
  size_t jlen = rep->len;
  if (rep->binary) {
    const uint8_t *b = rep->data;
    uint32_t n = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                 (uint32_t)b[3] << 24;
    json += 4;
    jlen = n;
  }
  char *t = malloc(jlen + 1);
  if (!t)
    return NULL;
  memcpy(t, json, jlen);
  t[jlen] = '\0';
  return t;
}

/* Compare rows x cols doubles with the normalised reference of x. */
static int rows_match(const float *x, const double *got, int64_t rows,
                      int64_t cols) {
  double ref[64];
  ref_normalize(x, ref, rows, cols);
  for (int64_t i = 0; i < rows * cols; i++)
    if (fabs(got[i] - ref[i]) > 1e-6)
      return 0;
  return 1;
}

/* JSON rows (an array of arrays of numbers) into doubles; -1 on shape. */
static int json_rows(json_t *a, double *out, int64_t rows, int64_t cols) {
  if (!json_is_array(a) || (int64_t)json_array_size(a) != rows)
    return -1;
  for (int64_t r = 0; r < rows; r++) {
    json_t *row = json_array_get(a, (size_t)r);
    if (!json_is_array(row) || (int64_t)json_array_size(row) != cols)
      return -1;
    for (int64_t c = 0; c < cols; c++) {
      json_t *v = json_array_get(row, (size_t)c);
      if (!json_is_number(v))
        return -1;
      out[r * cols + c] = json_number_value(v);
    }
  }
  return 0;
}

static float wrand(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return (float)((double)(*s >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static void do_initialize(shared *sh, int t, int i) {
  const char *want = versions[(i * 7 + t) % 4];
  char m[400];
  snprintf(m, sizeof m,
           "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"initialize\","
           "\"params\":{\"protocolVersion\":\"%s\",\"capabilities\":{},"
           "\"clientInfo\":{\"name\":\"client-%d-%d\",\"version\":"
           "\"%d.%d\"}}}",
           i, want, t, i, t, i);
  mn_rpc_reply rep;
  char *txt = call(sh, m, strlen(m), 0, &rep);
  json_t *j = txt ? json_loads(txt, 0, NULL) : NULL;
  const char *got = json_string_value(
      json_object_get(json_object_get(j, "result"), "protocolVersion"));
  if (!got || strcmp(got, want) != 0)
    failf(sh, "initialize asked for %s, reply %.200s", want,
          txt ? txt : "(none)");
  json_decref(j);
  free(txt);
  mn_rpc_reply_free(&rep);
}

static void do_initialized(shared *sh) {
  static const char m[] =
      "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}";
  mn_rpc_reply rep;
  char *txt = call(sh, m, sizeof m - 1, 0, &rep);
  if (txt)
    failf(sh, "a notification got a reply: %.200s", txt);
  if (!mn__session_initialized(sh->f->s))
    failf(sh, "notifications/initialized did not mark the session");
  free(txt);
  mn_rpc_reply_free(&rep);
}

/* processEmbeddings normalize: through tools/call (text), directly as
 * text, or directly in a binary frame. */
static void do_process(shared *sh, int t, int i, int how, uint64_t *rng) {
  enum { R = 3, C = 8 };
  float x[R * C];
  for (int k = 0; k < R * C; k++)
    x[k] = wrand(rng);
  sbuf b = {0};
  size_t len = 0;
  int binary = how == 2;
  if (binary) {
    char head[300];
    int n = snprintf(head, sizeof head,
                     "{\"jsonrpc\":\"2.0\",\"id\":\"b%d-%d\",\"method\":"
                     "\"processEmbeddings\",\"params\":{\"embeddings\":"
                     "{\"dtype\":\"float32\",\"shape\":[%d,%d],\"buffer\":"
                     "{\"offset\":0,\"length\":%d}},\"options\":"
                     "{\"normalize\":true}}}",
                     t, i, R, C, (int)sizeof x);
    /* Pad the JSON so that the payload starts 4-byte aligned. */
    while ((4 + n) % 4)
      head[n++] = ' ';
    len = 4 + (size_t)n + sizeof x;
    b.p = malloc(len);
    if (!b.p) {
      failf(sh, "out of memory");
      return;
    }
    b.p[0] = (char)(n & 0xff);
    b.p[1] = (char)(n >> 8);
    b.p[2] = b.p[3] = 0;
    memcpy(b.p + 4, head, (size_t)n);
    memcpy(b.p + 4 + n, x, sizeof x);
  } else {
    if (how == 0)
      sb_add(&b,
             "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"tools/call\","
             "\"params\":{\"name\":\"processEmbeddings\",\"arguments\":"
             "{\"embeddings\":",
             i);
    else
      sb_add(&b,
             "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":"
             "\"processEmbeddings\",\"params\":{\"embeddings\":",
             i);
    sb_matrix(&b, x, R, C);
    sb_add(&b, ",\"options\":{\"normalize\":true}}%s}", how == 0 ? "}" : "");
    len = b.len;
  }
  mn_rpc_reply rep;
  char *txt = call(sh, b.p, len, binary, &rep);
  json_t *j = txt ? json_loads(txt, 0, NULL) : NULL;
  json_t *res = json_object_get(j, "result");
  double got[R * C];
  int ok = 0;
  if (how == 0) {
    json_t *sc = json_object_get(res, "structuredContent");
    ok = json_is_false(json_object_get(res, "isError")) &&
         json_rows(json_object_get(sc, "processed"), got, R, C) == 0;
  } else if (how == 1) {
    ok = json_rows(json_object_get(res, "processed"), got, R, C) == 0;
  } else {
    json_t *buf = json_object_get(json_object_get(res, "processed"), "buffer");
    json_int_t off = json_integer_value(json_object_get(buf, "offset"));
    json_int_t blen = json_integer_value(json_object_get(buf, "length"));
    const uint8_t *frame = rep.data;
    size_t jl = rep.binary ? (size_t)(frame[0] | frame[1] << 8 |
                                      frame[2] << 16 | (size_t)frame[3] << 24)
                           : 0;
    size_t pay = 4 + jl;
    if (rep.binary && buf && blen == (json_int_t)sizeof x && off >= 0 &&
        pay + (size_t)off + sizeof x <= rep.len) {
      float y[R * C];
      memcpy(y, frame + pay + off, sizeof y);
      for (int k = 0; k < R * C; k++)
        got[k] = y[k];
      ok = 1;
    }
  }
  if (!ok || !rows_match(x, got, R, C))
    failf(sh, "processEmbeddings (%s) gave a wrong reply: %.300s",
          how == 0   ? "tools/call"
          : how == 1 ? "text"
                     : "binary",
          txt ? txt : "(none)");
  else
    atomic_fetch_add(&sh->normalized, 1);
  json_decref(j);
  free(txt);
  free(b.p);
  mn_rpc_reply_free(&rep);
}

static void *worker_main(void *arg) {
  worker *w = arg;
  shared *sh = w->sh;
  uint64_t rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(w->index + 1) * 7919u;
  for (int i = 0; i < ITERS && !atomic_load(&sh->failures); i++) {
    switch ((i + w->index) % 5) {
    case 0:
      do_initialize(sh, w->index, i);
      break;
    case 1:
      do_initialized(sh);
      break;
    default:
      do_process(sh, w->index, i, (i + w->index) % 5 - 2, &rng);
    }
  }
  return NULL;
}

/* Watches the session while the workers run. */
static void *reader_main(void *arg) {
  shared *sh = arg;
  while (!atomic_load(&sh->done)) {
    const char *v = mn__session_protocol(sh->f->s);
    int known = v[0] == '\0';
    for (int k = 0; k < 4; k++)
      known |= strcmp(v, versions[k]) == 0;
    if (!known)
      failf(sh, "the session's version is \"%s\"", v);
    char name[64], ver[32];
    mn__session_client(sh->f->s, name, sizeof name, ver, sizeof ver);
    int t, i, t2, i2;
    if (name[0] || ver[0]) {
      if (sscanf(name, "client-%d-%d", &t, &i) != 2 ||
          sscanf(ver, "%d.%d", &t2, &i2) != 2 || t != t2 || i != i2)
        failf(sh,
              "client name \"%s\" and version \"%s\" do not belong "
              "together",
              name, ver);
    }
    atomic_fetch_add(&sh->reads, 1);
  }
  return NULL;
}

static void test_one_session_many_threads(void **state) {
  shared sh;
  memset(&sh, 0, sizeof sh);
  pthread_mutex_init(&sh.msg_lock, NULL);
  sh.f = fx_new();
  assert_string_equal(mn__session_protocol(sh.f->s), "");
  assert_int_equal(mn__session_initialized(sh.f->s), 0);

  pthread_t th[N_WORKERS], rd;
  worker w[N_WORKERS];
  assert_int_equal(pthread_create(&rd, NULL, reader_main, &sh), 0);
  for (int t = 0; t < N_WORKERS; t++) {
    w[t].sh = &sh;
    w[t].index = t;
    assert_int_equal(pthread_create(&th[t], NULL, worker_main, &w[t]), 0);
  }
  for (int t = 0; t < N_WORKERS; t++)
    pthread_join(th[t], NULL);
  atomic_store(&sh.done, 1);
  pthread_join(rd, NULL);

  if (atomic_load(&sh.failures))
    fail_msg("%d failures; the first: %s", atomic_load(&sh.failures), sh.first);
  /* Every worker ran its processEmbeddings calls and they all checked. */
  assert_int_equal(atomic_load(&sh.normalized), N_WORKERS * ITERS * 3 / 5);
  assert_true(atomic_load(&sh.reads) > 0);

  /* After the storm the session holds one initialize's state, whole. */
  const char *v = mn__session_protocol(sh.f->s);
  int known = 0;
  for (int k = 0; k < 4; k++)
    known |= strcmp(v, versions[k]) == 0;
  assert_true(known);
  assert_int_equal(mn__session_initialized(sh.f->s), 1);
  char name[64], ver[32];
  mn__session_client(sh.f->s, name, sizeof name, ver, sizeof ver);
  int t1, i1, t2, i2;
  assert_int_equal(sscanf(name, "client-%d-%d", &t1, &i1), 2);
  assert_int_equal(sscanf(ver, "%d.%d", &t2, &i2), 2);
  assert_int_equal(t1, t2);
  assert_int_equal(i1, i2);
  /* The version stored is the one that initialize asked for. */
  assert_string_equal(v, versions[(i1 * 7 + t1) % 4]);
  pthread_mutex_destroy(&sh.msg_lock);
  fx_free(sh.f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_one_session_many_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
