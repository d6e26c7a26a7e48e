/*
 * internal.h - helpers shared by the library's own sources (not public).
 */
#ifndef MNEMO_INTERNAL_H
#define MNEMO_INTERNAL_H

#include "mnemo/common.h"

/**
 * Record a detail message for the calling thread and return `s`, so that
 * `return mn__set_error(MN_ERR_INVALID, "row %lld ...", r);` reads naturally.
 */
mn_status mn__set_error(mn_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/** Log through the application's callback (formatting skipped when the level
 *  is filtered out). */
void mn__log(mn_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define MN__LOGD(mod, ...) mn__log(MN_LOG_DEBUG, mod, __VA_ARGS__)
#define MN__LOGI(mod, ...) mn__log(MN_LOG_INFO, mod, __VA_ARGS__)
#define MN__LOGW(mod, ...) mn__log(MN_LOG_WARN, mod, __VA_ARGS__)
#define MN__LOGE(mod, ...) mn__log(MN_LOG_ERROR, mod, __VA_ARGS__)

#define MN__MIN(a, b) ((a) < (b) ? (a) : (b))
#define MN__MAX(a, b) ((a) > (b) ? (a) : (b))

/* Return early on error: MN__TRY(expr) */
#define MN__TRY(expr)                                                          \
  do {                                                                         \
    mn_status mn__s = (expr);                                                  \
    if (mn__s != MN_OK)                                                        \
      return mn__s;                                                            \
  } while (0)

/* mn_malloc with `front` bytes (rounded up to 64, at least 64) in front of
 * the block, freed with mn_free like any other. Large result tensors get
 * MN__TENSOR_FRONT: a binary reply then writes its header there instead of
 * copying the tensor behind the header (rpc.c, finish). */
#define MN__TENSOR_FRONT 4096
void *mn__malloc_front(size_t bytes, size_t front);
/* The room in front of an mn_malloc block (bytes before the pointer). */
size_t mn__alloc_front(const void *p);
/* Take an mn_malloc block out of mn_free's hands: it is no longer counted,
 * and the pointer returned (the start of the block, *front bytes before p)
 * is freed with free(). */
void *mn__alloc_detach(void *p, size_t *front);

#endif /* MNEMO_INTERNAL_H */
