/* metrics.c - PLACEHOLDER until the metrics registry lands. */
#include "common/internal.h"
#include "mnemo/metrics.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
struct mn_metrics { int unused; };
mn_status mn_metrics_create(mn_metrics **out) {
  *out = calloc(1, sizeof **out);
  return *out ? MN_OK : MN_ERR_NOMEM;
}
void mn_metrics_destroy(mn_metrics *m) { free(m); }
void mn_metrics_request(mn_metrics *m, const char *method, int error_code,
                        double latency_ms) {}
void mn_metrics_connection(mn_metrics *m, int delta) {}
void mn_metrics_connection_refused(mn_metrics *m) {}
void mn_metrics_bytes(mn_metrics *m, uint64_t in, uint64_t out) {}
void mn_metrics_count(mn_metrics *m, const char *name, int64_t delta) {}
void mn_metrics_gauge(mn_metrics *m, const char *name, double value) {}
double mn_metrics_percentile(mn_metrics *m, const char *method, double pct) {
  return NAN;
}
char *mn_metrics_prometheus(mn_metrics *m) { return strdup(""); }
char *mn_metrics_json(mn_metrics *m) { return strdup("{}"); }
