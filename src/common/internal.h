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

#endif /* MNEMO_INTERNAL_H */
