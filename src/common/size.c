/* size.c - PLACEHOLDER until size strings land. */
#include "common/internal.h"
#include <stdio.h>
mn_status mn_size_parse(const char *s, uint64_t *out) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "size: not yet");
}
const char *mn_size_format(uint64_t bytes, char *buf, size_t len) {
  snprintf(buf, len, "%llu B", (unsigned long long)bytes);
  return buf;
}
