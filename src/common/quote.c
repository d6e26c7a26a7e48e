/*
 * quote.c - user text made safe to show inside an error message: quoted,
 * clipped, one line, valid UTF-8.
 */
#include "common/quote.h"

#include <string.h>

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  size_t len;
  unsigned min;
  unsigned cp;
  if (s[0] < 0x80)
    return 1;
  if ((s[0] & 0xe0) == 0xc0) {
    len = 2;
    min = 0x80;
    cp = s[0] & 0x1f;
  } else if ((s[0] & 0xf0) == 0xe0) {
    len = 3;
    min = 0x800;
    cp = s[0] & 0x0f;
  } else if ((s[0] & 0xf8) == 0xf0) {
    len = 4;
    min = 0x10000;
    cp = s[0] & 0x07;
  } else {
    return 0;
  }
  if (len > n)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = cp << 6 | (s[i] & 0x3f);
  }
  /* Overlong forms, surrogates and code points past U+10FFFF. */
  if (cp < min || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
    return 0;
  return len;
}

const char *mn__quote(const char *s, size_t n, char *buf, size_t len) {
  const unsigned char *u = (const unsigned char *)s;
  size_t o = 0, i = 0;
  buf[o++] = '"';
  /* Keep room for "...", the closing quote and the NUL. */
  while (i < n) {
    size_t cl = utf8_len(u + i, n - i);
    size_t w = cl ? cl : 1;
    if (o + w + 5 > len)
      break;
    if (cl == 1 && (u[i] < 0x20 || u[i] == '"' || u[i] == '\\' || u[i] == 0x7f))
      buf[o++] = '?';
    else if (cl == 0)
      buf[o++] = '?';
    else {
      memcpy(buf + o, s + i, cl);
      o += cl;
    }
    i += w;
  }
  if (i < n) {
    memcpy(buf + o, "...", 3);
    o += 3;
  }
  buf[o++] = '"';
  buf[o] = '\0';
  return buf;
}
