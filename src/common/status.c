/*
 * status.c - status codes, their names and texts, and the per-thread
 * detail message.
 *
 * DESIGN: the detail message is thread-local, like errno: every worker
 * thread sees the message of its own last failure. It is set with
 * mn__set_error() at the place that knows what went wrong and read with
 * mn_errmsg() by whoever reports the error.
 */
#include "common/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *mn_strerror(mn_status s) {
  switch (s) {
#define MN__STATUS_TEXT(name, code, text)                                      \
  case MN_##name:                                                              \
    return text;
    MN_STATUS_MAP(MN__STATUS_TEXT)
#undef MN__STATUS_TEXT
  }
  return "unknown status";
}

const char *mn_status_name(mn_status s) {
  switch (s) {
#define MN__STATUS_NAME(name, code, text)                                      \
  case MN_##name:                                                              \
    return "MN_" #name;
    MN_STATUS_MAP(MN__STATUS_NAME)
#undef MN__STATUS_NAME
  }
  return "MN_UNKNOWN";
}

static _Thread_local char tls_errmsg[1024];

const char *mn_errmsg(void) {
  return tls_errmsg;
}

void mn_errmsg_clear(void) {
  tls_errmsg[0] = '\0';
}

mn_status mn__set_error(mn_status s, const char *fmt, ...) {
  /* Format aside first: callers often wrap the previous message, passing
   * mn_errmsg() itself as an argument. */
  char buf[sizeof tls_errmsg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  memcpy(tls_errmsg, buf, sizeof buf);
  return s;
}
