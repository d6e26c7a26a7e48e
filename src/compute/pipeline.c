/* pipeline.c - PLACEHOLDER until the pipeline lands. */
#include "common/internal.h"
#include "mnemo/compute.h"
#include <string.h>
void mn_pipeline_opts_init(mn_pipeline_opts *o) { memset(o, 0, sizeof *o); }
mn_status mn_pipeline_run(mn_backend *b, const mn_tensor *in,
                          const mn_pipeline_opts *opts,
                          mn_pipeline_result *res) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "pipeline: not yet");
}
void mn_pipeline_result_free(mn_pipeline_result *res) {}
