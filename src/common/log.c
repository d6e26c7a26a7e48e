/*
 * log.c - the logging callback. The library never writes to stdout or
 * stderr itself; the application decides where messages go.
 */
#include "common/internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static mn_log_fn log_fn;
static void *log_user;
static volatile int log_level = MN_LOG_INFO;

void mn_log_set(mn_log_fn fn, void *user) {
  pthread_mutex_lock(&log_lock);
  log_fn = fn;
  log_user = user;
  pthread_mutex_unlock(&log_lock);
}

void mn_log_set_level(mn_log_level level) { log_level = level; }

mn_log_level mn_log_get_level(void) { return (mn_log_level)log_level; }

static const char *const level_names[] = {"debug", "info", "warn", "error",
                                          "none"};

const char *mn_log_level_name(mn_log_level level) {
  if ((unsigned)level > MN_LOG_NONE)
    return "unknown";
  return level_names[level];
}

mn_status mn_log_level_parse(const char *s, mn_log_level *out) {
  if (s) {
    for (int i = 0; i <= MN_LOG_NONE; i++) {
      if (strcmp(s, level_names[i]) == 0) {
        *out = (mn_log_level)i;
        return MN_OK;
      }
    }
    if (strcmp(s, "warning") == 0) {
      *out = MN_LOG_WARN;
      return MN_OK;
    }
  }
  return mn__set_error(MN_ERR_INVALID,
                       "log level '%s' is not one of debug, info, warn, "
                       "error, none",
                       s ? s : "(null)");
}

void mn__log(mn_log_level level, const char *module, const char *fmt, ...) {
  if (level < (mn_log_level)log_level || level >= MN_LOG_NONE)
    return;
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&log_lock);
  mn_log_fn fn = log_fn;
  void *user = log_user;
  pthread_mutex_unlock(&log_lock);
  if (fn)
    fn(level, module, buf, user);
}
