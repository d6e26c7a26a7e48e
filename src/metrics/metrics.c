/*
 * metrics.c - the metrics registry: per-method request counts, errors by
 * JSON-RPC code and latency histograms; connections and bytes; named
 * counters and gauges. Exported as Prometheus text for /metrics and as JSON
 * for getMetrics.
 *
 * Latency histograms have 16 log-spaced buckets per octave (each 4.4 %
 * wide) from 0.01 ms to just past 60 s, plus one below and one above, so a
 * percentile read from them, interpolated inside its bucket, is within
 * about 4.4 % of the exact one for any distribution. Each method also keeps
 * exact counts for the few `le` boundaries the Prometheus exposition shows,
 * so those buckets are exact rather than re-binned.
 *
 * DESIGN: one mutex guards the method table and the named counters and
 * gauges; connection and byte counters are atomics. mn_metrics_request,
 * which runs on every request, hashes the name and computes both bucket
 * indices before it takes the lock, then only finds the entry and adds.
 * The exporters copy what they need under the lock and format after
 * releasing it, so a slow /metrics scrape never holds up requests. Method
 * names are bounded (MAX_METHODS, longer names clipped) so that a client
 * inventing method names cannot grow the registry without limit; past the
 * bound, requests are counted under "unknown".
 */
#include "common/internal.h"
#include "mnemo/metrics.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LAT_MIN_MS 0.01
#define PER_OCTAVE 16
/* ceil(16 * log2(60000 / 0.01)): the last fine bucket ends at ~62 s. */
#define N_FINE 361
/* Bucket 0 holds latencies below 0.01 ms, N_FINE + 1 those past the last. */
#define N_BUCKETS (N_FINE + 2)

#define MAX_METHODS 256
#define METHOD_NAME_MAX 128
#define HASH_SLOTS 512 /* power of two, at least twice MAX_METHODS */
#define MAX_NAMED 512  /* named counters plus gauges */
#define NAMED_MAX 96   /* bytes of a counter or gauge name */

/* The `le` boundaries shown in the exposition, in ms and as printed (s). */
static const double coarse_ms[] = {0.1,  0.25, 0.5,  1,     2.5,   5,
                                   10,   25,   50,   100,   250,   500,
                                   1000, 2500, 5000, 10000, 30000, 60000};
static const char *const coarse_le[] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
    "0.01",   "0.025",   "0.05",   "0.1",   "0.25",   "0.5",
    "1",      "2.5",     "5",      "10",    "30",     "60"};
#define N_COARSE (sizeof coarse_ms / sizeof coarse_ms[0])

typedef struct code_count {
  int code;
  uint64_t count;
} code_count;

typedef struct method_stats {
  char name[METHOD_NAME_MAX];
  uint64_t count, errors;
  double sum_ms, min_ms, max_ms;
  uint64_t fine[N_BUCKETS];
  uint64_t coarse[N_COARSE + 1]; /* last: above every boundary */
  code_count *codes;             /* sorted by code */
  int n_codes, cap_codes;
} method_stats;

typedef enum named_kind { NK_COUNTER, NK_GAUGE } named_kind;

typedef struct named {
  char name[NAMED_MAX];
  named_kind kind;
  int refused; /* its exported name clashes: kept only to stay quiet */
  double gauge;
  int64_t counter;
} named;

struct mn_metrics {
  pthread_mutex_t lock;
  method_stats *methods[MAX_METHODS];
  int n_methods;
  int16_t slots[HASH_SLOTS]; /* index into methods, -1 empty */
  named *named;
  int n_named, cap_named;
  _Atomic int64_t conn_active;
  _Atomic uint64_t conn_total, conn_refused, bytes_in, bytes_out;
  _Atomic uint64_t budget[MN_TIER_COUNT]; /* bytes, 0 = no limit */
  uint64_t created_ns;
};

/* ------------------------------------------------------------------------
 * Buckets
 * ---------------------------------------------------------------------- */

static int fine_index(double ms) {
  if (!(ms >= LAT_MIN_MS)) /* also NaN */
    return 0;
  double i = floor(PER_OCTAVE * log2(ms / LAT_MIN_MS));
  if (i >= N_FINE)
    return N_FINE + 1;
  return 1 + (int)i;
}

/* Lower edge of fine bucket b (1..N_FINE + 1) in ms. */
static double fine_lower(int b) {
  return LAT_MIN_MS * exp2((double)(b - 1) / PER_OCTAVE);
}

static int coarse_index(double ms) {
  size_t lo = 0, hi = N_COARSE;
  while (lo < hi) { /* first boundary with ms <= boundary */
    size_t mid = (lo + hi) / 2;
    if (ms <= coarse_ms[mid])
      hi = mid;
    else
      lo = mid + 1;
  }
  return (int)lo;
}

/* Estimated value of the k-th smallest sample (0-based): the samples of a
 * bucket are taken as spread evenly in log space across it, each at the
 * centre of its share, with the bucket narrowed to the observed min and
 * max. */
static double hist_sample(const uint64_t *fine, uint64_t k, double min_ms,
                          double max_ms) {
  uint64_t cum = 0;
  for (int b = 0; b < N_BUCKETS; b++) {
    uint64_t c = fine[b];
    if (!c || cum + c <= k) {
      cum += c;
      continue;
    }
    double lo = b == 0 ? min_ms : fine_lower(b);
    double hi = b == N_BUCKETS - 1 ? max_ms
                : b == 0           ? LAT_MIN_MS
                                   : fine_lower(b + 1);
    lo = MN__MAX(lo, min_ms);
    hi = MN__MIN(hi, max_ms);
    if (hi <= lo)
      return lo;
    double f = ((double)(k - cum) + 0.5) / (double)c;
    return lo > 0 ? lo * pow(hi / lo, f) : lo + (hi - lo) * f;
  }
  return max_ms;
}

/* Percentile with the usual definition on sorted samples (linear between
 * the two closest ranks, position pct/100 * (n - 1)), each sample value
 * estimated from its bucket. Within one bucket width (4.4 %) of the exact
 * figure, and exact at 0 and 100. */
static double hist_percentile(const uint64_t *fine, uint64_t count,
                              double min_ms, double max_ms, double pct) {
  if (count == 0 || !(pct >= 0 && pct <= 100))
    return NAN;
  if (pct == 0)
    return min_ms;
  if (pct == 100)
    return max_ms;
  double pos = pct / 100.0 * (double)(count - 1);
  uint64_t k = (uint64_t)pos;
  double f = pos - (double)k;
  double v = hist_sample(fine, k, min_ms, max_ms);
  if (f > 0 && k + 1 < count)
    v += f * (hist_sample(fine, k + 1, min_ms, max_ms) - v);
  return MN__MIN(MN__MAX(v, min_ms), max_ms);
}

/* ------------------------------------------------------------------------
 * Registry
 * ---------------------------------------------------------------------- */

mn_status mn_metrics_create(mn_metrics **out) {
  if (!out)
    return mn__set_error(MN_ERR_INVALID, "mn_metrics_create: out is NULL");
  *out = NULL;
  mn_metrics *m = calloc(1, sizeof *m);
  if (!m)
    return mn__set_error(MN_ERR_NOMEM,
                         "out of memory creating the metrics registry");
  if (pthread_mutex_init(&m->lock, NULL) != 0) {
    free(m);
    return mn__set_error(MN_ERR_INTERNAL,
                         "cannot initialise the metrics registry's mutex");
  }
  for (int i = 0; i < HASH_SLOTS; i++)
    m->slots[i] = -1;
  m->created_ns = mn_time_ns();
  *out = m;
  return MN_OK;
}

void mn_metrics_destroy(mn_metrics *m) {
  if (!m)
    return;
  for (int i = 0; i < m->n_methods; i++) {
    free(m->methods[i]->codes);
    free(m->methods[i]);
  }
  free(m->named);
  pthread_mutex_destroy(&m->lock);
  free(m);
}

/* FNV-1a of the name as stored: clipped to METHOD_NAME_MAX - 1 bytes, and
 * never in the middle of a UTF-8 character (the name becomes a JSON key). */
static uint32_t hash_name(const char *s, size_t *len) {
  size_t n = strnlen(s, METHOD_NAME_MAX);
  if (n == METHOD_NAME_MAX) {
    n = METHOD_NAME_MAX - 1;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
      n--;
  }
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)s[i]) * 16777619u;
  *len = n;
  return h;
}

/* Find or add a method; caller holds the lock. NULL only when out of
 * memory. */
static method_stats *method_get(mn_metrics *m, const char *name, size_t len,
                                uint32_t h) {
  uint32_t slot = h & (HASH_SLOTS - 1);
  for (;;) {
    int idx = m->slots[slot];
    if (idx < 0)
      break;
    method_stats *s = m->methods[idx];
    if (strncmp(s->name, name, len) == 0 && s->name[len] == '\0')
      return s;
    slot = (slot + 1) & (HASH_SLOTS - 1);
  }
  /* New name. The last place is kept for "unknown", which absorbs every
   * name past the limit. */
  if (m->n_methods >= MAX_METHODS - 1 &&
      !(len == 7 && strncmp(name, "unknown", 7) == 0)) {
    size_t ul;
    uint32_t uh = hash_name("unknown", &ul);
    return method_get(m, "unknown", ul, uh);
  }
  method_stats *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  memcpy(s->name, name, len);
  s->name[len] = '\0';
  s->min_ms = INFINITY;
  m->methods[m->n_methods] = s;
  m->slots[slot] = (int16_t)m->n_methods;
  m->n_methods++;
  return s;
}

static void count_code(method_stats *s, int code) {
  int lo = 0, hi = s->n_codes;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (s->codes[mid].code < code)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < s->n_codes && s->codes[lo].code == code) {
    s->codes[lo].count++;
    return;
  }
  if (s->n_codes == s->cap_codes) {
    int cap = s->cap_codes ? 2 * s->cap_codes : 4;
    code_count *c = realloc(s->codes, (size_t)cap * sizeof *c);
    if (!c)
      return; /* the error still counts in s->errors */
    s->codes = c;
    s->cap_codes = cap;
  }
  memmove(&s->codes[lo + 1], &s->codes[lo],
          (size_t)(s->n_codes - lo) * sizeof *s->codes);
  s->codes[lo].code = code;
  s->codes[lo].count = 1;
  s->n_codes++;
}

void mn_metrics_request(mn_metrics *m, const char *method, int error_code,
                        double latency_ms) {
  if (!m)
    return;
  if (!method || !method[0])
    method = "unknown";
  if (!(latency_ms >= 0)) /* negative or NaN: a clock glitch, count as 0 */
    latency_ms = 0;
  size_t len;
  uint32_t h = hash_name(method, &len);
  int fb = fine_index(latency_ms);
  int cb = coarse_index(latency_ms);

  pthread_mutex_lock(&m->lock);
  method_stats *s = method_get(m, method, len, h);
  if (s) {
    s->count++;
    s->sum_ms += latency_ms;
    if (latency_ms < s->min_ms)
      s->min_ms = latency_ms;
    if (latency_ms > s->max_ms)
      s->max_ms = latency_ms;
    s->fine[fb]++;
    s->coarse[cb]++;
    if (error_code != 0) {
      s->errors++;
      count_code(s, error_code);
    }
  }
  pthread_mutex_unlock(&m->lock);
}

void mn_metrics_connection(mn_metrics *m, int delta) {
  if (!m)
    return;
  if (delta > 0)
    atomic_fetch_add_explicit(&m->conn_total, (uint64_t)delta,
                              memory_order_relaxed);
  atomic_fetch_add_explicit(&m->conn_active, delta, memory_order_relaxed);
}

void mn_metrics_connection_refused(mn_metrics *m) {
  if (m)
    atomic_fetch_add_explicit(&m->conn_refused, 1, memory_order_relaxed);
}

void mn_metrics_set_budget(mn_metrics *m, mn_tier tier, uint64_t bytes) {
  if (m && (int)tier >= 0 && tier < MN_TIER_COUNT)
    atomic_store_explicit(&m->budget[tier], bytes, memory_order_relaxed);
}

void mn_metrics_bytes(mn_metrics *m, uint64_t in, uint64_t out) {
  if (!m)
    return;
  if (in)
    atomic_fetch_add_explicit(&m->bytes_in, in, memory_order_relaxed);
  if (out)
    atomic_fetch_add_explicit(&m->bytes_out, out, memory_order_relaxed);
}

/* Family names the registry itself exposes; a named counter or gauge may
 * not take one of them. */
static const char *const reserved[] = {
    "mnemo_requests_total",
    "mnemo_request_errors_total",
    "mnemo_request_duration_seconds",
    "mnemo_request_duration_seconds_bucket",
    "mnemo_request_duration_seconds_sum",
    "mnemo_request_duration_seconds_count",
    "mnemo_connections",
    "mnemo_connections_total",
    "mnemo_connections_refused_total",
    "mnemo_bytes_received_total",
    "mnemo_bytes_sent_total",
    "mnemo_memory_bytes",
    "mnemo_memory_peak_bytes",
    "mnemo_memory_budget_bytes",
    "mnemo_uptime_seconds",
};

static void expo_name(const char *name, named_kind kind, char *buf,
                      size_t len) {
  snprintf(buf, len, "mnemo_%s%s", name, kind == NK_COUNTER ? "_total" : "");
}

/* Find or add a named counter or gauge; caller holds the lock. Names are
 * made Prometheus-safe ([a-zA-Z0-9_:], others become '_'). A name whose
 * exposed form would clash with another metric is refused once with a
 * warning and then ignored. NULL when refused or out of memory. */
static named *named_get(mn_metrics *m, const char *raw, named_kind kind) {
  char name[NAMED_MAX];
  size_t n = 0;
  for (; raw[n] && n < NAMED_MAX - 1; n++) {
    char ch = raw[n];
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
             (ch >= '0' && ch <= '9') || ch == '_' || ch == ':';
    name[n] = ok ? ch : '_';
  }
  name[n] = '\0';
  for (int i = 0; i < m->n_named; i++) {
    named *e = &m->named[i];
    if (e->kind == kind && strcmp(e->name, name) == 0)
      return e->refused ? NULL : e;
  }
  /* A new name: check its exposed form against everything else. */
  char mine[NAMED_MAX + 16], other[NAMED_MAX + 16];
  expo_name(name, kind, mine, sizeof mine);
  const char *clash = NULL;
  for (size_t i = 0; i < sizeof reserved / sizeof reserved[0] && !clash; i++)
    if (strcmp(mine, reserved[i]) == 0)
      clash = reserved[i];
  for (int i = 0; i < m->n_named && !clash; i++) {
    if (m->named[i].refused)
      continue;
    expo_name(m->named[i].name, m->named[i].kind, other, sizeof other);
    if (strcmp(mine, other) == 0 || strcmp(m->named[i].name, name) == 0)
      clash = m->named[i].name;
  }
  if (m->n_named >= MAX_NAMED)
    return NULL;
  if (m->n_named == m->cap_named) {
    int cap = m->cap_named ? 2 * m->cap_named : 16;
    named *a = realloc(m->named, (size_t)cap * sizeof *a);
    if (!a)
      return NULL;
    m->named = a;
    m->cap_named = cap;
  }
  named *e = &m->named[m->n_named++];
  memset(e, 0, sizeof *e);
  memcpy(e->name, name, n + 1);
  e->kind = kind;
  e->refused = clash != NULL;
  if (clash) {
    MN__LOGW("metrics",
             "%s \"%s\" is ignored: it would be exported as %s, which "
             "clashes with %s; pick another name",
             kind == NK_COUNTER ? "counter" : "gauge", raw, mine, clash);
    return NULL;
  }
  return e;
}

void mn_metrics_count(mn_metrics *m, const char *name, int64_t delta) {
  /* Counters only go up; a negative delta would break rate(). */
  if (!m || !name || !name[0] || delta < 0)
    return;
  pthread_mutex_lock(&m->lock);
  named *e = named_get(m, name, NK_COUNTER);
  if (e)
    e->counter += delta;
  pthread_mutex_unlock(&m->lock);
}

void mn_metrics_gauge(mn_metrics *m, const char *name, double value) {
  if (!m || !name || !name[0])
    return;
  pthread_mutex_lock(&m->lock);
  named *e = named_get(m, name, NK_GAUGE);
  if (e)
    e->gauge = value;
  pthread_mutex_unlock(&m->lock);
}

/* ------------------------------------------------------------------------
 * Snapshots: what the exporters read, copied under the lock.
 * ---------------------------------------------------------------------- */

typedef struct snapshot {
  method_stats *methods; /* codes arrays owned by the snapshot */
  int n_methods;
  named *named;
  int n_named;
  int64_t conn_active;
  uint64_t conn_total, conn_refused, bytes_in, bytes_out;
  uint64_t budget[MN_TIER_COUNT];
  double uptime_s;
} snapshot;

static void snapshot_free(snapshot *s) {
  for (int i = 0; i < s->n_methods; i++)
    free(s->methods[i].codes);
  free(s->methods);
  free(s->named);
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const method_stats *)a)->name,
                ((const method_stats *)b)->name);
}

static int named_by_name(const void *a, const void *b) {
  return strcmp(((const named *)a)->name, ((const named *)b)->name);
}

static mn_status snapshot_take(mn_metrics *m, snapshot *s) {
  memset(s, 0, sizeof *s);
  pthread_mutex_lock(&m->lock);
  s->methods = calloc((size_t)m->n_methods + 1, sizeof *s->methods);
  s->named = calloc((size_t)m->n_named + 1, sizeof *s->named);
  int ok = s->methods && s->named;
  for (int i = 0; ok && i < m->n_methods; i++) {
    method_stats *d = &s->methods[i];
    *d = *m->methods[i];
    d->codes = NULL;
    if (d->n_codes) {
      d->codes = malloc((size_t)d->n_codes * sizeof *d->codes);
      if (!d->codes) {
        d->n_codes = 0;
        ok = 0;
      } else {
        memcpy(d->codes, m->methods[i]->codes,
               (size_t)d->n_codes * sizeof *d->codes);
      }
    }
    s->n_methods = i + 1;
  }
  if (ok && m->n_named) {
    memcpy(s->named, m->named, (size_t)m->n_named * sizeof *s->named);
    s->n_named = m->n_named;
  }
  pthread_mutex_unlock(&m->lock);
  if (!ok) {
    snapshot_free(s);
    return mn__set_error(MN_ERR_NOMEM, "out of memory copying the metrics");
  }
  s->conn_active = atomic_load(&m->conn_active);
  s->conn_total = atomic_load(&m->conn_total);
  s->conn_refused = atomic_load(&m->conn_refused);
  s->bytes_in = atomic_load(&m->bytes_in);
  s->bytes_out = atomic_load(&m->bytes_out);
  for (int t = 0; t < MN_TIER_COUNT; t++)
    s->budget[t] = atomic_load(&m->budget[t]);
  s->uptime_s = (double)(mn_time_ns() - m->created_ns) / 1e9;
  /* Stable output order, whatever order the names arrived in. */
  qsort(s->methods, (size_t)s->n_methods, sizeof *s->methods, by_name);
  qsort(s->named, (size_t)s->n_named, sizeof *s->named, named_by_name);
  return MN_OK;
}

/* All methods merged into one (for the overall percentiles). */
static void merge_all(const snapshot *s, method_stats *all) {
  memset(all, 0, sizeof *all);
  all->min_ms = INFINITY;
  for (int i = 0; i < s->n_methods; i++) {
    const method_stats *x = &s->methods[i];
    all->count += x->count;
    all->errors += x->errors;
    all->sum_ms += x->sum_ms;
    all->min_ms = MN__MIN(all->min_ms, x->min_ms);
    all->max_ms = MN__MAX(all->max_ms, x->max_ms);
    for (int b = 0; b < N_BUCKETS; b++)
      all->fine[b] += x->fine[b];
  }
}

double mn_metrics_percentile(mn_metrics *m, const char *method, double pct) {
  if (!m)
    return NAN;
  double r = NAN;
  pthread_mutex_lock(&m->lock);
  if (method) {
    size_t len;
    uint32_t h = hash_name(method, &len);
    uint32_t slot = h & (HASH_SLOTS - 1);
    for (int idx; (idx = m->slots[slot]) >= 0;
         slot = (slot + 1) & (HASH_SLOTS - 1)) {
      const method_stats *s = m->methods[idx];
      if (strncmp(s->name, method, len) == 0 && s->name[len] == '\0') {
        r = hist_percentile(s->fine, s->count, s->min_ms, s->max_ms, pct);
        break;
      }
    }
    pthread_mutex_unlock(&m->lock);
    return r;
  }
  /* NULL: every method together. Merged under the lock: it is a read of a
   * few kilobytes per method and happens only when someone asks. */
  uint64_t *fine = calloc(N_BUCKETS, sizeof *fine);
  if (!fine) {
    pthread_mutex_unlock(&m->lock);
    return NAN;
  }
  uint64_t count = 0;
  double lo = INFINITY, hi = 0;
  for (int i = 0; i < m->n_methods; i++) {
    const method_stats *s = m->methods[i];
    count += s->count;
    lo = MN__MIN(lo, s->min_ms);
    hi = MN__MAX(hi, s->max_ms);
    for (int b = 0; b < N_BUCKETS; b++)
      fine[b] += s->fine[b];
  }
  pthread_mutex_unlock(&m->lock);
  r = hist_percentile(fine, count, lo, hi, pct);
  free(fine);
  return r;
}

/* ------------------------------------------------------------------------
 * Prometheus text exposition (format 0.0.4)
 * ---------------------------------------------------------------------- */

typedef struct sbuf {
  char *p;
  size_t len, cap;
  int failed;
} sbuf;

__attribute__((format(printf, 2, 3))) static void
sb_printf(sbuf *b, const char *fmt, ...) {
  if (b->failed)
    return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->failed = 1;
      return;
    }
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = MN__MAX(b->cap * 2, b->len + (size_t)n + 1);
    char *p = realloc(b->p, cap);
    if (!p) {
      b->failed = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
}

/* A label value with \, " and newline escaped as the format requires. */
static void sb_label(sbuf *b, const char *v) {
  char tmp[2 * METHOD_NAME_MAX + 1];
  size_t o = 0;
  for (; *v && o + 2 < sizeof tmp; v++) {
    if (*v == '\\' || *v == '"') {
      tmp[o++] = '\\';
      tmp[o++] = *v;
    } else if (*v == '\n') {
      tmp[o++] = '\\';
      tmp[o++] = 'n';
    } else {
      tmp[o++] = *v;
    }
  }
  tmp[o] = '\0';
  sb_printf(b, "%s", tmp);
}

static void sb_double(sbuf *b, double v) {
  if (isnan(v))
    sb_printf(b, "NaN");
  else if (isinf(v))
    sb_printf(b, v > 0 ? "+Inf" : "-Inf");
  else
    sb_printf(b, "%.17g", v);
}

static void family(sbuf *b, const char *name, const char *type,
                   const char *help) {
  sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *mn_metrics_prometheus(mn_metrics *m) {
  if (!m)
    return NULL;
  snapshot s;
  if (snapshot_take(m, &s) != MN_OK)
    return NULL;
  sbuf b = {malloc(16384), 0, 16384, 0};
  if (!b.p) {
    snapshot_free(&s);
    return NULL;
  }
  b.p[0] = '\0';

  family(&b, "mnemo_requests_total", "counter",
         "JSON-RPC requests handled, by method.");
  for (int i = 0; i < s.n_methods; i++) {
    sb_printf(&b, "mnemo_requests_total{method=\"");
    sb_label(&b, s.methods[i].name);
    sb_printf(&b, "\"} %llu\n", (unsigned long long)s.methods[i].count);
  }

  family(&b, "mnemo_request_errors_total", "counter",
         "JSON-RPC requests answered with an error, by method and code.");
  for (int i = 0; i < s.n_methods; i++) {
    for (int j = 0; j < s.methods[i].n_codes; j++) {
      sb_printf(&b, "mnemo_request_errors_total{method=\"");
      sb_label(&b, s.methods[i].name);
      sb_printf(&b, "\",code=\"%d\"} %llu\n", s.methods[i].codes[j].code,
                (unsigned long long)s.methods[i].codes[j].count);
    }
  }

  family(&b, "mnemo_request_duration_seconds", "histogram",
         "Time from a request's arrival to its reply, by method.");
  for (int i = 0; i < s.n_methods; i++) {
    const method_stats *x = &s.methods[i];
    uint64_t cum = 0;
    for (size_t k = 0; k <= N_COARSE; k++) {
      cum += x->coarse[k];
      sb_printf(&b, "mnemo_request_duration_seconds_bucket{method=\"");
      sb_label(&b, x->name);
      sb_printf(&b, "\",le=\"%s\"} %llu\n",
                k < N_COARSE ? coarse_le[k] : "+Inf", (unsigned long long)cum);
    }
    sb_printf(&b, "mnemo_request_duration_seconds_sum{method=\"");
    sb_label(&b, x->name);
    sb_printf(&b, "\"} ");
    sb_double(&b, x->sum_ms / 1000.0);
    sb_printf(&b, "\nmnemo_request_duration_seconds_count{method=\"");
    sb_label(&b, x->name);
    sb_printf(&b, "\"} %llu\n", (unsigned long long)x->count);
  }

  family(&b, "mnemo_connections", "gauge", "WebSocket connections open now.");
  sb_printf(&b, "mnemo_connections %lld\n", (long long)s.conn_active);
  const struct {
    const char *name, *help;
    uint64_t v;
  } counters[] = {
      {"mnemo_connections_total", "WebSocket connections accepted.",
       s.conn_total},
      {"mnemo_connections_refused_total",
       "Connections refused (connection limit, origin, shutdown).",
       s.conn_refused},
      {"mnemo_bytes_received_total", "Message bytes received from clients.",
       s.bytes_in},
      {"mnemo_bytes_sent_total", "Message bytes sent to clients.", s.bytes_out},
  };
  for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
    family(&b, counters[i].name, "counter", counters[i].help);
    sb_printf(&b, "%s %llu\n", counters[i].name,
              (unsigned long long)counters[i].v);
  }

  static const char *const tiers[MN_TIER_COUNT] = {"device", "host", "disk"};
  static const struct {
    const char *name, *help;
    int64_t (*get)(mn_tier);
  } tier_gauges[] = {
      {"mnemo_memory_bytes", "Bytes accounted to each memory tier.",
       mn_account_get},
      {"mnemo_memory_peak_bytes",
       "Largest number of bytes each memory tier has held.", mn_account_peak},
  };
  for (size_t i = 0; i < 2; i++) {
    family(&b, tier_gauges[i].name, "gauge", tier_gauges[i].help);
    for (int t = 0; t < MN_TIER_COUNT; t++)
      sb_printf(&b, "%s{tier=\"%s\"} %lld\n", tier_gauges[i].name, tiers[t],
                (long long)tier_gauges[i].get((mn_tier)t));
  }
  /* Beside the bytes, so that an alert can divide one by the other: the
   * host ratio is the pressure state of /health (recovery above 0.8). */
  family(&b, "mnemo_memory_budget_bytes", "gauge",
         "Budget of each memory tier (gpu.memory_limit, "
         "processing.cache_size, storage.disk_limit); 0 means no limit.");
  for (int t = 0; t < MN_TIER_COUNT; t++)
    sb_printf(&b, "mnemo_memory_budget_bytes{tier=\"%s\"} %llu\n", tiers[t],
              (unsigned long long)s.budget[t]);
  family(&b, "mnemo_uptime_seconds", "gauge",
         "Seconds since the metrics registry was created.");
  sb_printf(&b, "mnemo_uptime_seconds ");
  sb_double(&b, s.uptime_s);
  sb_printf(&b, "\n");

  for (int i = 0; i < s.n_named; i++) {
    const named *e = &s.named[i];
    if (e->refused)
      continue;
    char name[NAMED_MAX + 16], help[NAMED_MAX + 64];
    expo_name(e->name, e->kind, name, sizeof name);
    snprintf(help, sizeof help, "mnemo %s \"%s\".",
             e->kind == NK_COUNTER ? "counter" : "gauge", e->name);
    family(&b, name, e->kind == NK_COUNTER ? "counter" : "gauge", help);
    if (e->kind == NK_COUNTER) {
      sb_printf(&b, "%s %lld\n", name, (long long)e->counter);
    } else {
      sb_printf(&b, "%s ", name);
      sb_double(&b, e->gauge);
      sb_printf(&b, "\n");
    }
  }
  snapshot_free(&s);
  if (b.failed) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

/* ------------------------------------------------------------------------
 * JSON (getMetrics)
 * ---------------------------------------------------------------------- */

/* JSON has no NaN or Inf; such a gauge is null. */
static json_t *jnum(double v) {
  return isfinite(v) ? json_real(v) : json_null();
}

static json_t *latency_json(const method_stats *x) {
  json_t *o = json_object();
  if (!o)
    return NULL;
  static const struct {
    const char *key;
    double pct;
  } ps[] = {{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p999", 99.9}};
  for (size_t i = 0; i < 4; i++)
    json_object_set_new(o, ps[i].key,
                        jnum(hist_percentile(x->fine, x->count, x->min_ms,
                                             x->max_ms, ps[i].pct)));
  json_object_set_new(o, "min", jnum(x->count ? x->min_ms : NAN));
  json_object_set_new(o, "max", jnum(x->count ? x->max_ms : NAN));
  json_object_set_new(o, "mean",
                      jnum(x->count ? x->sum_ms / (double)x->count : NAN));
  return o;
}

char *mn_metrics_json(mn_metrics *m) {
  if (!m)
    return NULL;
  snapshot s;
  if (snapshot_take(m, &s) != MN_OK)
    return NULL;
  method_stats *all = malloc(sizeof *all);
  json_t *root = json_object();
  char *out = NULL;
  if (!all || !root)
    goto done;
  merge_all(&s, all);

  json_t *req = json_object(), *by = json_object();
  json_object_set_new(root, "requests", req);
  json_object_set_new(req, "total", json_integer((json_int_t)all->count));
  json_object_set_new(req, "errors", json_integer((json_int_t)all->errors));
  json_object_set_new(req, "latency_ms", latency_json(all));
  json_object_set_new(req, "by_method", by);
  for (int i = 0; i < s.n_methods; i++) {
    const method_stats *x = &s.methods[i];
    json_t *mo = json_object(), *errs = json_object();
    json_object_set_new(mo, "count", json_integer((json_int_t)x->count));
    for (int j = 0; j < x->n_codes; j++) {
      char code[16];
      snprintf(code, sizeof code, "%d", x->codes[j].code);
      json_object_set_new(errs, code,
                          json_integer((json_int_t)x->codes[j].count));
    }
    json_object_set_new(mo, "errors", errs);
    json_object_set_new(mo, "latency_ms", latency_json(x));
    json_object_set_new(by, x->name, mo);
  }

  json_t *conn = json_object();
  json_object_set_new(root, "connections", conn);
  json_object_set_new(conn, "active", json_integer(s.conn_active));
  json_object_set_new(conn, "total", json_integer((json_int_t)s.conn_total));
  json_object_set_new(conn, "refused",
                      json_integer((json_int_t)s.conn_refused));
  json_t *bytes = json_object();
  json_object_set_new(root, "bytes", bytes);
  json_object_set_new(bytes, "in", json_integer((json_int_t)s.bytes_in));
  json_object_set_new(bytes, "out", json_integer((json_int_t)s.bytes_out));

  json_t *counters = json_object(), *gauges = json_object();
  json_object_set_new(root, "counters", counters);
  json_object_set_new(root, "gauges", gauges);
  for (int i = 0; i < s.n_named; i++) {
    const named *e = &s.named[i];
    if (e->refused)
      continue;
    if (e->kind == NK_COUNTER)
      json_object_set_new(counters, e->name, json_integer(e->counter));
    else
      json_object_set_new(gauges, e->name, jnum(e->gauge));
  }

  json_t *mem = json_object();
  json_object_set_new(root, "memory", mem);
  static const char *const tiers[MN_TIER_COUNT] = {"device", "host", "disk"};
  for (int t = 0; t < MN_TIER_COUNT; t++) {
    json_t *tier = json_object();
    json_object_set_new(tier, "bytes", json_integer(mn_account_get(t)));
    json_object_set_new(tier, "peak", json_integer(mn_account_peak(t)));
    json_object_set_new(mem, tiers[t], tier);
  }
  json_object_set_new(root, "uptime_s", json_real(s.uptime_s));

  /* Output through json_dumpb into our own malloc'd buffer, so the caller
   * frees it with free() whatever allocator jansson was given. Method
   * names may hold invalid UTF-8 (json_object_set_new refuses those keys,
   * which then simply do not appear). */
  size_t flags = JSON_COMPACT | JSON_REAL_PRECISION(10);
  size_t n = json_dumpb(root, NULL, 0, flags);
  if (n == 0)
    goto done;
  out = malloc(n + 1);
  if (out) {
    json_dumpb(root, out, n, flags);
    out[n] = '\0';
  }
done:
  json_decref(root);
  free(all);
  snapshot_free(&s);
  return out;
}
