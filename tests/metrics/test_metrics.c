/* test_metrics.c - the metrics registry: percentiles against a sorted-array
 * reference, the Prometheus exposition parsed back line by line and checked
 * against counts kept here, the JSON form, and totals under concurrent
 * updates from several threads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/internal.h"
#include "mnemo/metrics.h"

/* ------------------------------------------------------------------------
 * Reference: exact percentiles from sorted samples (linear interpolation
 * between closest ranks, numpy's default).
 * ---------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double ref_percentile(const double *sorted, size_t n, double pct) {
  double pos = pct / 100.0 * (double)(n - 1);
  size_t i = (size_t)floor(pos);
  if (i + 1 >= n)
    return sorted[n - 1];
  double f = pos - (double)i;
  return sorted[i] + (sorted[i + 1] - sorted[i]) * f;
}

/* xorshift64*: a reproducible generator independent of rand(). */
static uint64_t rng_state = 88172645463325252ull;
static double urand(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (double)((rng_state * 2685821657736338717ull) >> 11) /
         9007199254740992.0;
}
static double nrand(void) {
  double u = urand(), v = urand();
  if (u < 1e-300)
    u = 1e-300;
  return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

typedef double (*dist_fn)(void);
static double d_lognormal(void) {
  return exp(0.5 + 1.2 * nrand());
}
static double d_loguniform(void) {
  return 0.02 * pow(2.5e6, urand());
}
static double d_bimodal(void) {
  return urand() < 0.7 ? 0.3 + 0.05 * urand() : 40 + 20 * urand();
}
static double d_exponential(void) {
  return -3.0 * log(1 - urand());
}
static double d_tiny_and_huge(void) {
  /* Below the first bucket and beyond the last one too. */
  double u = urand();
  return u < 0.2   ? 0.001 + 0.008 * urand()
         : u < 0.9 ? 1 + urand()
                   : 70000 + 30000 * urand();
}

static void check_percentiles(mn_metrics *m, const char *method, double *v,
                              size_t n) {
  qsort(v, n, sizeof *v, cmp_double);
  const double pcts[] = {1, 10, 25, 50, 75, 90, 95, 99, 99.9};
  double worst = 0;
  for (size_t i = 0; i < sizeof pcts / sizeof pcts[0]; i++) {
    double got = mn_metrics_percentile(m, method, pcts[i]);
    double want = ref_percentile(v, n, pcts[i]);
    /* Below 0.01 ms and past the last bucket (~62 s) the histogram only
     * knows the observed min and max: the estimate stays in that range. */
    if (want < 0.01) {
      assert_true(got >= v[0] && got <= 0.01);
      continue;
    }
    if (want > 62000) {
      assert_true(got >= 62000 && got <= v[n - 1]);
      continue;
    }
    double rel = fabs(got - want) / want;
    if (!(rel <= 0.05))
      fail_msg("%s p%g: got %.6g, want %.6g (%.2f %% off)",
               method ? method : "(all)", pcts[i], got, want, 100 * rel);
    worst = fmax(worst, rel);
  }
  print_message("%-14s n=%zu: worst percentile error %.2f %%\n",
                method ? method : "(all)", n, 100 * worst);
  /* The ends are exact: the histogram keeps min and max. */
  assert_true(mn_metrics_percentile(m, method, 0) == v[0]);
  assert_true(mn_metrics_percentile(m, method, 100) == v[n - 1]);
}

static void test_percentiles(void **state) {
  (void)state;
  const struct {
    const char *name;
    dist_fn fn;
  } dists[] = {{"lognormal", d_lognormal},
               {"loguniform", d_loguniform},
               {"bimodal", d_bimodal},
               {"exponential", d_exponential},
               {"tiny_and_huge", d_tiny_and_huge}};
  const size_t n = 20000, nd = sizeof dists / sizeof dists[0];
  double *all = malloc(n * nd * sizeof *all);
  assert_non_null(all);
  mn_metrics *m;
  assert_int_equal(mn_metrics_create(&m), MN_OK);
  for (size_t d = 0; d < nd; d++) {
    double *v = all + d * n;
    for (size_t i = 0; i < n; i++) {
      v[i] = dists[d].fn();
      mn_metrics_request(m, dists[d].name, 0, v[i]);
    }
  }
  for (size_t d = 0; d < nd; d++)
    check_percentiles(m, dists[d].name, all + d * n, n);
  /* NULL: every method together. */
  check_percentiles(m, NULL, all, n * nd);

  /* One sample: every percentile is that sample. */
  mn_metrics_request(m, "single", 0, 7.25);
  for (double p = 0; p <= 100; p += 12.5)
    assert_true(mn_metrics_percentile(m, "single", p) == 7.25);

  assert_true(isnan(mn_metrics_percentile(m, "never_called", 50)));
  assert_true(isnan(mn_metrics_percentile(m, "single", -1)));
  assert_true(isnan(mn_metrics_percentile(m, "single", 100.5)));
  assert_true(isnan(mn_metrics_percentile(m, "single", NAN)));
  assert_true(isnan(mn_metrics_percentile(NULL, "single", 50)));
  mn_metrics_destroy(m);
  free(all);
}

/* ------------------------------------------------------------------------
 * A Prometheus text-format parser, strict about what the format allows.
 * ---------------------------------------------------------------------- */

#define MAX_SERIES 4096
#define MAX_LABELS 4

typedef struct series {
  char name[128];
  int n_labels;
  char lname[MAX_LABELS][32];
  char lvalue[MAX_LABELS][256];
  double value;
} series;

typedef struct expo {
  series s[MAX_SERIES];
  int n;
  char types[256][128]; /* family names with a TYPE line, in order */
  char type_of[256][16];
  int n_types;
} expo;

static int name_ok(const char *s) {
  if (!(isalpha((unsigned char)*s) || *s == '_' || *s == ':'))
    return 0;
  for (; *s; s++)
    if (!(isalnum((unsigned char)*s) || *s == '_' || *s == ':'))
      return 0;
  return 1;
}

static double parse_value(const char *t) {
  if (strcmp(t, "+Inf") == 0)
    return INFINITY;
  if (strcmp(t, "-Inf") == 0)
    return -INFINITY;
  if (strcmp(t, "NaN") == 0)
    return NAN;
  char *end;
  double v = strtod(t, &end);
  if (end == t || *end != '\0' || isnan(v) || isinf(v))
    fail_msg("bad sample value \"%s\"", t);
  return v;
}

/* The family a sample belongs to: histograms own _bucket/_sum/_count. */
static const char *family_of(const expo *e, const char *name, char *buf) {
  strcpy(buf, name);
  for (int i = 0; i < e->n_types; i++)
    if (strcmp(e->types[i], name) == 0)
      return buf;
  static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
  for (int k = 0; k < 3; k++) {
    size_t ln = strlen(name), ls = strlen(suffixes[k]);
    if (ln > ls && strcmp(name + ln - ls, suffixes[k]) == 0) {
      buf[ln - ls] = '\0';
      for (int i = 0; i < e->n_types; i++)
        if (strcmp(e->types[i], buf) == 0 &&
            strcmp(e->type_of[i], "histogram") == 0)
          return buf;
    }
  }
  fail_msg("sample %s has no TYPE line before it", name);
  return NULL;
}

static void parse_exposition(const char *text, expo *e) {
  memset(e, 0, sizeof *e);
  char current[128] = ""; /* family whose samples are being read */
  assert_true(text[0] != '\0');
  assert_true(text[strlen(text) - 1] == '\n');
  const char *p = text;
  while (*p) {
    const char *nl = strchr(p, '\n');
    assert_non_null(nl);
    char line[2048];
    size_t len = (size_t)(nl - p);
    assert_true(len < sizeof line);
    memcpy(line, p, len);
    line[len] = '\0';
    p = nl + 1;
    assert_true(len > 0); /* no blank lines */

    if (line[0] == '#') {
      char kw[8], name[128], rest[1024];
      int got = sscanf(line, "# %7s %127s %1023[^\n]", kw, name, rest);
      assert_int_equal(got, 3);
      assert_true(name_ok(name));
      if (strcmp(kw, "TYPE") == 0) {
        assert_true(strcmp(rest, "counter") == 0 ||
                    strcmp(rest, "gauge") == 0 ||
                    strcmp(rest, "histogram") == 0);
        for (int i = 0; i < e->n_types; i++)
          if (strcmp(e->types[i], name) == 0)
            fail_msg("TYPE %s given twice", name);
        strcpy(e->types[e->n_types], name);
        strcpy(e->type_of[e->n_types], rest);
        e->n_types++;
        strcpy(current, name);
      } else if (strcmp(kw, "HELP") != 0) {
        fail_msg("comment line \"%s\"", line);
      }
      continue;
    }

    assert_true(e->n < MAX_SERIES);
    series *s = &e->s[e->n++];
    char *q = line;
    size_t nl_ = strcspn(q, "{ ");
    assert_true(nl_ > 0 && nl_ < sizeof s->name);
    memcpy(s->name, q, nl_);
    s->name[nl_] = '\0';
    if (!name_ok(s->name))
      fail_msg("bad metric name \"%s\"", s->name);
    if (strncmp(s->name, "mnemo_", 6) != 0)
      fail_msg("metric %s lacks the mnemo_ prefix", s->name);
    q += nl_;
    if (*q == '{') {
      q++;
      while (*q != '}') {
        assert_true(s->n_labels < MAX_LABELS);
        size_t ln = strcspn(q, "=");
        assert_true(ln > 0 && ln < 32);
        memcpy(s->lname[s->n_labels], q, ln);
        s->lname[s->n_labels][ln] = '\0';
        assert_true(name_ok(s->lname[s->n_labels]));
        q += ln;
        assert_true(q[0] == '=' && q[1] == '"');
        q += 2;
        size_t o = 0;
        char *v = s->lvalue[s->n_labels];
        while (*q != '"') {
          assert_true(*q != '\0');
          if (*q == '\\') {
            q++;
            if (*q == 'n')
              v[o++] = '\n';
            else if (*q == '\\' || *q == '"')
              v[o++] = *q;
            else
              fail_msg("bad escape \\%c in \"%s\"", *q, line);
            q++;
          } else {
            v[o++] = *q++;
          }
          assert_true(o < 255);
        }
        v[o] = '\0';
        q++; /* closing quote */
        s->n_labels++;
        if (*q == ',')
          q++;
        else
          assert_true(*q == '}');
      }
      q++;
    }
    assert_true(*q == ' ');
    q++;
    assert_null(strchr(q, ' ')); /* no timestamps, no stray fields */
    s->value = parse_value(q);

    /* Samples of one family come together, after its TYPE line. */
    char fam[128];
    family_of(e, s->name, fam);
    if (strcmp(fam, current) != 0)
      fail_msg("sample %s is not under its family's TYPE line", s->name);
  }
  /* No series twice. */
  for (int i = 0; i < e->n; i++)
    for (int j = i + 1; j < e->n; j++) {
      if (strcmp(e->s[i].name, e->s[j].name) ||
          e->s[i].n_labels != e->s[j].n_labels)
        continue;
      int same = 1;
      for (int k = 0; k < e->s[i].n_labels; k++)
        same &= strcmp(e->s[i].lvalue[k], e->s[j].lvalue[k]) == 0;
      if (same)
        fail_msg("series %s given twice", e->s[i].name);
    }
}

static const char *label(const series *s, const char *name) {
  for (int i = 0; i < s->n_labels; i++)
    if (strcmp(s->lname[i], name) == 0)
      return s->lvalue[i];
  return NULL;
}

/* The value of one series; fails when it is missing. Labels: pairs of
 * name, value; NULL-terminated. */
static double find(const expo *e, const char *name, ...) {
  const char *ln[MAX_LABELS], *lv[MAX_LABELS];
  int n = 0;
  va_list ap;
  va_start(ap, name);
  for (const char *k; (k = va_arg(ap, const char *)) != NULL && n < MAX_LABELS;
       n++) {
    ln[n] = k;
    lv[n] = va_arg(ap, const char *);
  }
  va_end(ap);
  for (int i = 0; i < e->n; i++) {
    const series *s = &e->s[i];
    if (strcmp(s->name, name) || s->n_labels != n)
      continue;
    int ok = 1;
    for (int k = 0; k < n && ok; k++) {
      const char *v = label(s, ln[k]);
      ok = v && strcmp(v, lv[k]) == 0;
    }
    if (ok)
      return s->value;
  }
  fail_msg("series %s not found", name);
  return NAN;
}

static int count_series(const expo *e, const char *name) {
  int c = 0;
  for (int i = 0; i < e->n; i++)
    c += strcmp(e->s[i].name, name) == 0;
  return c;
}

typedef struct recorded {
  const char *method;
  int code;
  double ms;
} recorded;

static void test_prometheus(void **state) {
  (void)state;
  mn_metrics *m;
  assert_int_equal(mn_metrics_create(&m), MN_OK);
  const char *weird = "we\"ird\\name\nwith newline";
  const char *methods[] = {"processEmbeddings", "tools/call", weird};
  enum { N = 3000 };
  static recorded rec[N];
  for (int i = 0; i < N; i++) {
    rec[i].method = methods[i % 3];
    rec[i].code = i % 11 == 0 ? -32602 : i % 17 == 0 ? -32000 : 0;
    rec[i].ms = d_loguniform();
    /* Some exactly on `le` boundaries: le is inclusive. */
    if (i % 101 == 0)
      rec[i].ms = (double[]){1.0, 10.0, 1000.0, 5000.0}[i % 4];
    mn_metrics_request(m, rec[i].method, rec[i].code, rec[i].ms);
  }
  for (int i = 0; i < 5; i++)
    mn_metrics_connection(m, +1);
  mn_metrics_connection(m, -1);
  mn_metrics_connection_refused(m);
  mn_metrics_connection_refused(m);
  mn_metrics_bytes(m, 1000, 2500);
  mn_metrics_bytes(m, 24, 0);
  mn_metrics_count(m, "rate_limited", 4);
  mn_metrics_count(m, "rate_limited", 3);
  mn_metrics_count(m, "rate_limited", -10); /* counters never go down */
  mn_metrics_count(m, "gpu.fallbacks", 2);  /* '.' is not allowed: '_' */
  mn_metrics_gauge(m, "jobs_in_flight", 3);
  mn_metrics_gauge(m, "jobs_in_flight", 2.5);
  mn_metrics_gauge(m, "temperature", NAN);
  mn_metrics_gauge(m, "neg", -1e300 * 1e300);
  /* Names that would clash with built-in series are refused. */
  mn_metrics_count(m, "connections", 1);
  mn_metrics_gauge(m, "connections", 1);
  mn_metrics_gauge(m, "requests_total", 1);
  mn_metrics_gauge(m, "rate_limited_total", 1);
  mn_metrics_gauge(m, "memory_budget_bytes", 1);
  mn_account_add(MN_TIER_DISK, 123456789);
  /* Budgets: what alerts divide the tier bytes by (deploy/alerts.yml). */
  mn_metrics_set_budget(m, MN_TIER_HOST, 4000000000u);
  mn_metrics_set_budget(m, MN_TIER_DISK, 1ull << 40);
  mn_metrics_set_budget(m, MN_TIER_DISK, 3ull << 40); /* the last one holds */
  mn_metrics_set_budget(m, MN_TIER_COUNT, 5);         /* ignored */
  mn_metrics_set_budget(NULL, MN_TIER_HOST, 5);       /* ignored */

  char *text = mn_metrics_prometheus(m);
  assert_non_null(text);
  static expo e;
  parse_exposition(text, &e);

  for (int k = 0; k < 3; k++) {
    const char *me = methods[k];
    uint64_t count = 0, e602 = 0, e000 = 0;
    double sum = 0;
    for (int i = 0; i < N; i++) {
      if (rec[i].method != me)
        continue;
      count++;
      sum += rec[i].ms / 1000;
      e602 += rec[i].code == -32602;
      e000 += rec[i].code == -32000;
    }
    assert_true(find(&e, "mnemo_requests_total", "method", me, NULL) ==
                (double)count);
    assert_true(find(&e, "mnemo_request_errors_total", "method", me, "code",
                     "-32602", NULL) == (double)e602);
    assert_true(find(&e, "mnemo_request_errors_total", "method", me, "code",
                     "-32000", NULL) == (double)e000);
    assert_true(find(&e, "mnemo_request_duration_seconds_count", "method", me,
                     NULL) == (double)count);
    double got_sum =
        find(&e, "mnemo_request_duration_seconds_sum", "method", me, NULL);
    assert_true(fabs(got_sum - sum) <= 1e-9 * sum);

    /* Buckets: cumulative, increasing le, each equal to the count of
     * recorded latencies <= le, ending with +Inf == _count. */
    double prev_le = -1, prev_count = -1;
    int n_buckets = 0;
    for (int i = 0; i < e.n; i++) {
      const series *s = &e.s[i];
      if (strcmp(s->name, "mnemo_request_duration_seconds_bucket") ||
          strcmp(label(s, "method"), me))
        continue;
      const char *les = label(s, "le");
      assert_non_null(les);
      double le = parse_value(les);
      assert_true(le > prev_le);
      assert_true(s->value >= prev_count);
      uint64_t want = 0;
      for (int r = 0; r < N; r++)
        want += rec[r].method == me && rec[r].ms <= le * 1000;
      if (s->value != (double)want)
        fail_msg("%s le=%s: %g, want %llu", me, les, s->value,
                 (unsigned long long)want);
      prev_le = le;
      prev_count = s->value;
      n_buckets++;
    }
    assert_true(isinf(prev_le));
    assert_true(prev_count == (double)count);
    assert_true(n_buckets >= 10 && n_buckets <= 30); /* a reduced set */
  }
  assert_true(find(&e, "mnemo_connections", NULL) == 4);
  assert_true(find(&e, "mnemo_connections_total", NULL) == 5);
  assert_true(find(&e, "mnemo_connections_refused_total", NULL) == 2);
  assert_true(find(&e, "mnemo_bytes_received_total", NULL) == 1024);
  assert_true(find(&e, "mnemo_bytes_sent_total", NULL) == 2500);
  assert_true(find(&e, "mnemo_rate_limited_total", NULL) == 7);
  assert_true(find(&e, "mnemo_gpu_fallbacks_total", NULL) == 2);
  assert_true(find(&e, "mnemo_jobs_in_flight", NULL) == 2.5);
  assert_true(isnan(find(&e, "mnemo_temperature", NULL)));
  assert_true(isinf(find(&e, "mnemo_neg", NULL)));
  assert_true(find(&e, "mnemo_memory_bytes", "tier", "disk", NULL) ==
              (double)mn_account_get(MN_TIER_DISK));
  assert_true(find(&e, "mnemo_memory_bytes", "tier", "disk", NULL) >=
              123456789);
  assert_true(find(&e, "mnemo_memory_bytes", "tier", "host", NULL) ==
              (double)mn_account_get(MN_TIER_HOST));
  find(&e, "mnemo_memory_bytes", "tier", "device", NULL);
  assert_true(find(&e, "mnemo_memory_budget_bytes", "tier", "host", NULL) ==
              4e9);
  assert_true(find(&e, "mnemo_memory_budget_bytes", "tier", "disk", NULL) ==
              (double)(3ull << 40));
  assert_true(find(&e, "mnemo_memory_budget_bytes", "tier", "device", NULL) ==
              0);
  assert_int_equal(count_series(&e, "mnemo_memory_budget_bytes"), 3);
  assert_int_equal(count_series(&e, "mnemo_connections_total"), 1);
  assert_int_equal(count_series(&e, "mnemo_connections"), 1);
  assert_int_equal(count_series(&e, "mnemo_requests_total"), 3);
  assert_int_equal(count_series(&e, "mnemo_rate_limited_total"), 1);
  /* Every family has HELP as well as TYPE. */
  for (int i = 0; i < e.n_types; i++) {
    char help[160];
    snprintf(help, sizeof help, "# HELP %s ", e.types[i]);
    assert_non_null(strstr(text, help));
  }
  free(text);
  mn_account_add(MN_TIER_DISK, -123456789);
  mn_metrics_destroy(m);

  /* An empty registry is still a valid exposition. */
  assert_int_equal(mn_metrics_create(&m), MN_OK);
  text = mn_metrics_prometheus(m);
  parse_exposition(text, &e);
  assert_true(find(&e, "mnemo_connections", NULL) == 0);
  assert_true(find(&e, "mnemo_memory_budget_bytes", "tier", "host", NULL) == 0);
  free(text);
  mn_metrics_destroy(m);
}

static void test_json(void **state) {
  (void)state;
  mn_metrics *m;
  assert_int_equal(mn_metrics_create(&m), MN_OK);
  enum { N = 5000 };
  static double lat[N];
  int errs = 0;
  for (int i = 0; i < N; i++) {
    lat[i] = d_lognormal();
    int code = i % 13 == 0 ? -32602 : 0;
    errs += code != 0;
    mn_metrics_request(m, "processEmbeddings", code, lat[i]);
  }
  mn_metrics_request(m, "ping", 0, 0.05);
  mn_metrics_request(m, "ping", -32601, 0.07);
  mn_metrics_request(m, NULL, -32700, 0.2); /* no method: "unknown" */
  mn_metrics_connection(m, 1);
  mn_metrics_connection_refused(m);
  mn_metrics_bytes(m, 10, 20);
  mn_metrics_count(m, "cpu_fallbacks", 2);
  mn_metrics_gauge(m, "jobs_in_flight", 1.5);
  mn_metrics_gauge(m, "broken", NAN);

  char *text = mn_metrics_json(m);
  assert_non_null(text);
  json_error_t err;
  json_t *root = json_loads(text, 0, &err);
  if (!root)
    fail_msg("invalid JSON (%s): %s", err.text, text);
  json_t *req = json_object_get(root, "requests");
  assert_int_equal(json_integer_value(json_object_get(req, "total")), N + 3);
  assert_int_equal(json_integer_value(json_object_get(req, "errors")),
                   errs + 2);
  json_t *by = json_object_get(req, "by_method");
  assert_int_equal(json_object_size(by), 3);
  json_t *pe = json_object_get(by, "processEmbeddings");
  assert_int_equal(json_integer_value(json_object_get(pe, "count")), N);
  json_t *pe_err = json_object_get(pe, "errors");
  assert_int_equal(json_object_size(pe_err), 1);
  assert_int_equal(json_integer_value(json_object_get(pe_err, "-32602")), errs);
  json_t *l = json_object_get(pe, "latency_ms");
  qsort(lat, N, sizeof *lat, cmp_double);
  const struct {
    const char *key;
    double pct;
  } ps[] = {{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p999", 99.9}};
  for (int i = 0; i < 4; i++) {
    double got = json_number_value(json_object_get(l, ps[i].key));
    double want = ref_percentile(lat, N, ps[i].pct);
    if (!(fabs(got - want) <= 0.05 * want))
      fail_msg("%s: %g vs %g", ps[i].key, got, want);
  }
  double sum = 0;
  for (int i = 0; i < N; i++)
    sum += lat[i];
  assert_true(fabs(json_number_value(json_object_get(l, "mean")) - sum / N) <=
              1e-6 * sum / N);
  assert_true(fabs(json_number_value(json_object_get(l, "max")) - lat[N - 1]) <=
              1e-6 * lat[N - 1]);
  json_t *ping = json_object_get(by, "ping");
  assert_int_equal(json_integer_value(json_object_get(ping, "count")), 2);
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(ping, "errors"), "-32601")),
                   1);
  json_t *unk = json_object_get(by, "unknown");
  assert_non_null(unk);
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(unk, "errors"), "-32700")),
                   1);
  json_t *conn = json_object_get(root, "connections");
  assert_int_equal(json_integer_value(json_object_get(conn, "active")), 1);
  assert_int_equal(json_integer_value(json_object_get(conn, "total")), 1);
  assert_int_equal(json_integer_value(json_object_get(conn, "refused")), 1);
  json_t *bytes = json_object_get(root, "bytes");
  assert_int_equal(json_integer_value(json_object_get(bytes, "in")), 10);
  assert_int_equal(json_integer_value(json_object_get(bytes, "out")), 20);
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(root, "counters"), "cpu_fallbacks")),
                   2);
  json_t *g = json_object_get(root, "gauges");
  assert_true(json_number_value(json_object_get(g, "jobs_in_flight")) == 1.5);
  assert_true(json_is_null(json_object_get(g, "broken")));
  assert_true(json_is_object(json_object_get(root, "memory")));
  json_decref(root);
  free(text);
  mn_metrics_destroy(m);
}

/* ------------------------------------------------------------------------
 * Concurrency
 * ---------------------------------------------------------------------- */

enum { THREADS = 8, PER_THREAD = 20000 };
static const char *const conc_methods[] = {"processEmbeddings", "fitPCA",
                                           "searchMemories", "ping"};

typedef struct worker {
  mn_metrics *m;
  int id;
} worker;

static double conc_latency(int t, int i) {
  return 0.05 + (double)((t * 7919 + i * 104729) % 100000) / 1000.0;
}

static void *work(void *arg) {
  worker *w = arg;
  for (int i = 0; i < PER_THREAD; i++) {
    mn_metrics_request(w->m, conc_methods[i % 4], i % 7 == 0 ? -32001 : 0,
                       conc_latency(w->id, i));
    if (i % 10 == 0) {
      mn_metrics_connection(w->m, +1);
      mn_metrics_bytes(w->m, 3, 5);
      mn_metrics_count(w->m, "rate_limited", 1);
      mn_metrics_gauge(w->m, "jobs_in_flight", (double)w->id);
      mn_metrics_connection(w->m, -1);
    }
  }
  return NULL;
}

static _Atomic int stop_scraping;
static void *scrape(void *arg) {
  mn_metrics *m = arg;
  int n = 0;
  while (!stop_scraping || n < 3) {
    char *p = mn_metrics_prometheus(m);
    char *j = mn_metrics_json(m);
    assert_non_null(p);
    assert_non_null(j);
    free(p);
    free(j);
    (void)mn_metrics_percentile(m, "fitPCA", 99);
    n++;
  }
  return NULL;
}

static void test_concurrency(void **state) {
  (void)state;
  mn_metrics *m;
  assert_int_equal(mn_metrics_create(&m), MN_OK);
  pthread_t th[THREADS], scraper;
  worker w[THREADS];
  stop_scraping = 0;
  assert_int_equal(pthread_create(&scraper, NULL, scrape, m), 0);
  uint64_t t0 = mn_time_ns();
  for (int t = 0; t < THREADS; t++) {
    w[t].m = m;
    w[t].id = t;
    assert_int_equal(pthread_create(&th[t], NULL, work, &w[t]), 0);
  }
  for (int t = 0; t < THREADS; t++)
    pthread_join(th[t], NULL);
  uint64_t t1 = mn_time_ns();
  stop_scraping = 1;
  pthread_join(scraper, NULL);
  print_message("%d threads x %d requests: %.0f ns per request (2 cores, "
                "with other updates and a scraper running)\n",
                THREADS, PER_THREAD,
                (double)(t1 - t0) / (THREADS * PER_THREAD));

  /* Expected totals, computed from the same loops. */
  uint64_t count[4] = {0}, errors[4] = {0};
  double sum[4] = {0};
  for (int t = 0; t < THREADS; t++)
    for (int i = 0; i < PER_THREAD; i++) {
      count[i % 4]++;
      errors[i % 4] += i % 7 == 0;
      sum[i % 4] += conc_latency(t, i) / 1000;
    }
  char *text = mn_metrics_prometheus(m);
  static expo e;
  parse_exposition(text, &e);
  for (int k = 0; k < 4; k++) {
    const char *me = conc_methods[k];
    assert_true(find(&e, "mnemo_requests_total", "method", me, NULL) ==
                (double)count[k]);
    assert_true(find(&e, "mnemo_request_errors_total", "method", me, "code",
                     "-32001", NULL) == (double)errors[k]);
    assert_true(find(&e, "mnemo_request_duration_seconds_count", "method", me,
                     NULL) == (double)count[k]);
    assert_true(find(&e, "mnemo_request_duration_seconds_bucket", "method", me,
                     "le", "+Inf", NULL) == (double)count[k]);
    double s =
        find(&e, "mnemo_request_duration_seconds_sum", "method", me, NULL);
    assert_true(fabs(s - sum[k]) <= 1e-9 * sum[k]);
  }
  const double events = THREADS * (PER_THREAD / 10);
  assert_true(find(&e, "mnemo_connections", NULL) == 0);
  assert_true(find(&e, "mnemo_connections_total", NULL) == events);
  assert_true(find(&e, "mnemo_bytes_received_total", NULL) == 3 * events);
  assert_true(find(&e, "mnemo_bytes_sent_total", NULL) == 5 * events);
  assert_true(find(&e, "mnemo_rate_limited_total", NULL) == events);
  double g = find(&e, "mnemo_jobs_in_flight", NULL);
  assert_true(g >= 0 && g < THREADS && g == floor(g));
  free(text);
  mn_metrics_destroy(m);
}

/* A client inventing method names cannot grow the registry without bound;
 * nothing is lost, the excess is counted as "unknown". */
static void test_method_limit(void **state) {
  (void)state;
  mn_metrics *m;
  assert_int_equal(mn_metrics_create(&m), MN_OK);
  for (int i = 0; i < 1000; i++) {
    char name[32];
    snprintf(name, sizeof name, "made_up_%d", i);
    mn_metrics_request(m, name, -32601, 1.0);
  }
  /* A very long name is clipped, never split inside a UTF-8 character. */
  char longname[400];
  for (int i = 0; i < 199; i++)
    memcpy(longname + 2 * i, "\xc3\xa9", 2); /* é */
  longname[398] = '\0';
  mn_metrics_request(m, longname, 0, 1.0);

  char *text = mn_metrics_json(m);
  json_t *root = json_loads(text, 0, NULL);
  assert_non_null(root);
  json_t *req = json_object_get(root, "requests");
  assert_int_equal(json_integer_value(json_object_get(req, "total")), 1001);
  json_t *by = json_object_get(req, "by_method");
  assert_true(json_object_size(by) <= 256);
  json_int_t total = 0;
  const char *key;
  json_t *v;
  json_object_foreach(by, key, v) {
    total += json_integer_value(json_object_get(v, "count"));
  }
  assert_int_equal(total, 1001);
  assert_true(json_integer_value(json_object_get(json_object_get(by, "unknown"),
                                                 "count")) >= 1000 - 255);
  json_decref(root);
  free(text);
  mn_metrics_destroy(m);
}

static void test_edges(void **state) {
  (void)state;
  assert_int_equal(mn_metrics_create(NULL), MN_ERR_INVALID);
  /* NULL registries are ignored, not crashed on. */
  mn_metrics_request(NULL, "x", 0, 1);
  mn_metrics_connection(NULL, 1);
  mn_metrics_connection_refused(NULL);
  mn_metrics_bytes(NULL, 1, 1);
  mn_metrics_count(NULL, "x", 1);
  mn_metrics_gauge(NULL, "x", 1);
  assert_null(mn_metrics_prometheus(NULL));
  assert_null(mn_metrics_json(NULL));
  mn_metrics_destroy(NULL);

  mn_metrics *m;
  assert_int_equal(mn_metrics_create(&m), MN_OK);
  mn_metrics_request(m, "clock", 0, -5); /* a clock step: counted as 0 */
  mn_metrics_request(m, "clock", 0, NAN);
  assert_true(mn_metrics_percentile(m, "clock", 50) == 0);
  mn_metrics_request(m, "slow", 0, 1e7); /* past the last bucket */
  assert_true(mn_metrics_percentile(m, "slow", 99) == 1e7);
  mn_metrics_destroy(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_percentiles),  cmocka_unit_test(test_prometheus),
      cmocka_unit_test(test_json),         cmocka_unit_test(test_concurrency),
      cmocka_unit_test(test_method_limit), cmocka_unit_test(test_edges),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
