/*
 * mnemo/metrics.h - the metrics registry: request counts, errors by code,
 * latency histograms per method, connections, bytes, free-form counters
 * and gauges. Exported as Prometheus text (/metrics) and as JSON
 * (getMetrics). All functions are thread-safe.
 */
#ifndef MNEMO_METRICS_H
#define MNEMO_METRICS_H

#include "mnemo/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mn_metrics mn_metrics;

MN_API mn_status mn_metrics_create(mn_metrics **out);
MN_API void mn_metrics_destroy(mn_metrics *m);

/** One finished request: method name ("processEmbeddings", "tools/call",
 *  or "unknown"), JSON-RPC error code (0 for success) and latency. */
MN_API void mn_metrics_request(mn_metrics *m, const char *method,
                               int error_code, double latency_ms);
/** Connections opened (+1) or closed (-1); refused ones counted apart. */
MN_API void mn_metrics_connection(mn_metrics *m, int delta);
MN_API void mn_metrics_connection_refused(mn_metrics *m);
MN_API void mn_metrics_bytes(mn_metrics *m, uint64_t in, uint64_t out);
/** The budget of a memory tier in bytes, 0 for no limit (gpu.memory_limit,
 *  processing.cache_size, storage.disk_limit): exported as
 *  mnemo_memory_budget_bytes{tier} beside mnemo_memory_bytes{tier}. An
 *  out-of-range tier is ignored. */
MN_API void mn_metrics_set_budget(mn_metrics *m, mn_tier tier, uint64_t bytes);
/** A named monotonic counter, e.g. "rate_limited", "cpu_fallbacks". */
MN_API void mn_metrics_count(mn_metrics *m, const char *name, int64_t delta);
/** A named gauge, e.g. "jobs_in_flight". */
MN_API void mn_metrics_gauge(mn_metrics *m, const char *name, double value);

/** Latency percentile (0..100) of a method in ms, from its histogram;
 *  NAN when the method has no samples. */
MN_API double mn_metrics_percentile(mn_metrics *m, const char *method,
                                    double pct);

/** Prometheus text exposition (malloc'd, caller frees with free()). */
MN_API char *mn_metrics_prometheus(mn_metrics *m);
/** JSON object text with every counter, per-method counts and latency
 *  percentiles (malloc'd, caller frees with free()). */
MN_API char *mn_metrics_json(mn_metrics *m);

#ifdef __cplusplus
}
#endif
#endif /* MNEMO_METRICS_H */
