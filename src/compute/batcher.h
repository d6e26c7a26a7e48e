/*
 * batcher.h - dynamic batching of small processEmbeddings jobs (internal).
 *
 * Worker threads each hand one pipeline job to mn__batcher_run. Jobs that
 * are row-wise (every output row depends on its own input row only) and
 * have the same op chain and width can run as one mn_pipeline_run on their
 * rows put end to end; each caller then gets back its own rows. batcher.c
 * says how the threads meet and when a job waits.
 */
#ifndef MNEMO_COMPUTE_BATCHER_H
#define MNEMO_COMPUTE_BATCHER_H

#include "mnemo/compute.h"

typedef struct mn__batcher mn__batcher;

/* Bits a run function reports in *flags; the batcher hands them to every
 * job of the run. */
#define MN__RUN_CPU_FALLBACK                                                   \
  0x1u /* the device ran out of memory and the job                             \
          ran on the CPU backend instead */

/**
 * What runs a job (merged or alone): mn_pipeline_run on some backend, plus
 * whatever the caller wants around it (a CPU retry, say). Called on the
 * thread of the job that leads the batch.
 */
typedef mn_status (*mn__batch_run_fn)(void *ctx, const mn_tensor *in,
                                      const mn_pipeline_opts *opts,
                                      mn_pipeline_result *res, unsigned *flags);

typedef struct mn__batcher_opts {
  int64_t window_us; /* longest wait for company; 0 turns batching off */
  int64_t max_rows;  /* rows of one merged run, at most; a job merges only
                        when it has at most max_rows / 4 rows */
  int max_jobs;      /* jobs of one merged run, at most (the worker count:
                        a group that holds every worker is full) */
  mn__batch_run_fn run;
  void *ctx;
} mn__batcher_opts;

/* How a job ran. */
typedef struct mn__batch_info {
  int jobs;       /* jobs in the run that produced its result (1: alone) */
  int64_t rows;   /* rows of that run */
  int leader;     /* this job's thread ran it (count a batch once) */
  int waited;     /* this job's thread waited out a window for company */
  unsigned flags; /* MN__RUN_* bits the run reported */
} mn__batch_info;

typedef struct mn__batcher_stats {
  uint64_t batches;    /* merged runs (two jobs or more) */
  uint64_t jobs;       /* jobs answered from merged runs */
  uint64_t rows;       /* rows of merged runs */
  uint64_t lone_waits; /* windows waited out with no company */
  uint64_t alone;      /* jobs run on their own */
} mn__batcher_stats;

/** @return MN_OK, MN_ERR_INVALID (no run function), MN_ERR_NOMEM. */
mn_status mn__batcher_create(const mn__batcher_opts *o, mn__batcher **out);
/** No job may be running. NULL is accepted. */
void mn__batcher_destroy(mn__batcher *bt);

/**
 * 1 when the job could be merged with others: float32 host rows, at most
 * max_rows / 4 of them, and a row-wise op chain (no PCA fitted on the
 * input, no int8_affine trained on it).
 */
int mn__batcher_eligible(const mn__batcher *bt, const mn_tensor *in,
                         const mn_pipeline_opts *o);

/**
 * Run one job as mn_pipeline_run would, alone or merged with compatible
 * jobs of other threads; `res` then holds exactly this job's rows (and
 * scales, zero_rows); processing_ms and device are those of the merged
 * run. The input must stay valid and unchanged until the call returns.
 * `source` identifies the client (its connection; NULL: unknown): jobs
 * from other sources arriving close together make waiting worth it, a
 * client's own earlier jobs do not.
 * When a merged run fails, every job of it runs again alone, so each
 * caller sees its own status and mn_errmsg(). `info` may be NULL.
 * @return what the run function returned for this job.
 */
mn_status mn__batcher_run(mn__batcher *bt, const mn_tensor *in,
                          const mn_pipeline_opts *o, const void *source,
                          mn_pipeline_result *res, mn__batch_info *info);

/**
 * The caller's requests, whatever their method: call mn__batcher_arrive
 * when one starts to be handled and mn__batcher_depart when it is done,
 * on the thread that handles it. A request in between that has not yet
 * reached mn__batcher_run may still bring a job to merge with, so a
 * waiting leader waits for it (at most the window); with nothing pending,
 * nobody waits. Both accept NULL and are cheap (an atomic and a
 * thread-local flag; depart takes the lock only while a leader waits).
 */
void mn__batcher_arrive(mn__batcher *bt);
void mn__batcher_depart(mn__batcher *bt);

/** Counters since creation. */
void mn__batcher_stats_get(mn__batcher *bt, mn__batcher_stats *out);

#endif /* MNEMO_COMPUTE_BATCHER_H */
