/*
 * quote.h - quoting user text for error messages (internal).
 */
#ifndef MNEMO_QUOTE_H
#define MNEMO_QUOTE_H

#include <stddef.h>

/**
 * Write `s` (n bytes) into buf as a double-quoted, single-line string for a
 * detail message: control characters, quotes, backslashes and bytes that
 * are not valid UTF-8 become '?', and text that does not fit ends in "..."
 * without splitting a character. Messages end up inside JSON-RPC replies,
 * which must be valid UTF-8. `len` must be at least 8.
 * @return buf.
 */
const char *mn__quote(const char *s, size_t n, char *buf, size_t len);

#endif /* MNEMO_QUOTE_H */
