/*
 * size.c - size strings such as "20GB", "512MiB" or "1.5 GB", as written in
 * the configuration and on the command line, and their human-readable form
 * for logs.
 *
 * The number is parsed by hand rather than with strtod so that the result is
 * exact (8.2 GB is 8200000000 bytes, not 8199999999) and so that forms
 * strtod would take but a person would not mean ("1e400", "0x10", "inf",
 * "-5") are refused with a message that says what to write instead.
 */
#include "common/internal.h"
#include "common/quote.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define SIZE_HINT                                                              \
  "write a number with an optional unit, e.g. \"20GB\", \"512MiB\" or "        \
  "\"1.5 GB\" (B, KB, MB, GB, TB, PB, EB are powers of 1000; KiB, MiB, GiB, "  \
  "TiB, PiB, EiB of 1024; no unit means bytes)"

/* At most this many fraction digits count: with the largest unit (EiB,
 * 2^60 < 10^19) the digits beyond are worth less than a byte, so they only
 * need to be digits. */
#define SIZE_MAX_FRAC_DIGITS 19

typedef struct size_unit {
  const char *name;
  uint64_t mult;
} size_unit;

static const size_unit size_units[] = {
    {"B", 1},
    {"KB", 1000ull},
    {"MB", 1000ull * 1000},
    {"GB", 1000ull * 1000 * 1000},
    {"TB", 1000ull * 1000 * 1000 * 1000},
    {"KiB", 1024ull},
    {"MiB", 1024ull * 1024},
    {"GiB", 1024ull * 1024 * 1024},
    {"TiB", 1024ull * 1024 * 1024 * 1024},
    {"PB", 1000ull * 1000 * 1000 * 1000 * 1000},
    {"PiB", 1024ull * 1024 * 1024 * 1024 * 1024},
    {"EB", 1000ull * 1000 * 1000 * 1000 * 1000 * 1000},
    {"EiB", 1024ull * 1024 * 1024 * 1024 * 1024 * 1024},
};

mn_status mn_size_parse(const char *s, uint64_t *out) {
  char shown[48], frag[16];
  if (!s)
    return mn__set_error(MN_ERR_PARSE, "size is missing; " SIZE_HINT);
  mn__quote(s, strlen(s), shown, sizeof shown);

  const char *p = s;
  while (isspace((unsigned char)*p))
    p++;
  if (*p == '\0')
    return mn__set_error(MN_ERR_PARSE, "size is empty; " SIZE_HINT);
  if (*p == '-')
    return mn__set_error(MN_ERR_PARSE,
                         "size %s is negative; a size must be zero or "
                         "more; " SIZE_HINT,
                         shown);
  if (!isdigit((unsigned char)*p))
    return mn__set_error(MN_ERR_PARSE,
                         "size %s does not start with a number; " SIZE_HINT,
                         shown);

  /* Whole part, saturating at just above 2^64 so that a long run of digits
   * reports a range error instead of wrapping. */
  const unsigned __int128 cap = (unsigned __int128)UINT64_MAX + 1;
  unsigned __int128 whole = 0;
  while (isdigit((unsigned char)*p)) {
    whole = whole * 10 + (unsigned)(*p - '0');
    if (whole > cap)
      whole = cap;
    p++;
  }

  /* Fraction as num / 10^digits, kept exact. */
  uint64_t frac_num = 0, frac_den = 1;
  int frac_nonzero = 0;
  if (*p == '.') {
    p++;
    if (!isdigit((unsigned char)*p))
      return mn__set_error(MN_ERR_PARSE,
                           "size %s has a decimal point without digits "
                           "after it; " SIZE_HINT,
                           shown);
    int nd = 0;
    while (isdigit((unsigned char)*p)) {
      if (*p != '0')
        frac_nonzero = 1;
      if (nd < SIZE_MAX_FRAC_DIGITS) {
        frac_num = frac_num * 10 + (unsigned)(*p - '0');
        frac_den *= 10;
        nd++;
      }
      p++;
    }
  }

  const char *num_end = p;
  while (*p == ' ' || *p == '\t')
    p++;
  const char *unit = p;
  while (isalpha((unsigned char)*p))
    p++;
  size_t unit_len = (size_t)(p - unit);
  const char *rest = p;
  while (isspace((unsigned char)*rest))
    rest++;

  uint64_t mult = 1;
  if (unit_len == 0) {
    if (*rest != '\0') {
      /* Whatever follows the number is neither a unit nor the end. */
      return mn__set_error(
          MN_ERR_PARSE,
          "size %s has %s after the number, which "
          "is not a unit; " SIZE_HINT,
          shown, mn__quote(num_end, strlen(num_end), frag, sizeof frag));
    }
  } else {
    const size_unit *found = NULL;
    for (size_t i = 0; i < sizeof size_units / sizeof size_units[0]; i++) {
      if (strlen(size_units[i].name) == unit_len &&
          strncasecmp(size_units[i].name, unit, unit_len) == 0) {
        found = &size_units[i];
        break;
      }
    }
    if (!found) {
      if ((unit[0] == 'e' || unit[0] == 'E') &&
          (isdigit((unsigned char)unit[1]) || unit[1] == '+' || unit[1] == '-'))
        return mn__set_error(MN_ERR_PARSE,
                             "size %s uses an exponent, which sizes do "
                             "not take; " SIZE_HINT,
                             shown);
      if (unit_len == 1 && strchr("kKmMgGtT", unit[0]))
        return mn__set_error(MN_ERR_PARSE,
                             "size %s: the unit \"%c\" is ambiguous; "
                             "write %cB (powers of 1000) or %ciB (powers of "
                             "1024), e.g. \"20GB\" or \"512MiB\"",
                             shown, unit[0], toupper((unsigned char)unit[0]),
                             toupper((unsigned char)unit[0]));
      return mn__set_error(MN_ERR_PARSE,
                           "size %s has the unknown unit %s; " SIZE_HINT, shown,
                           mn__quote(unit, unit_len, frag, sizeof frag));
    }
    if (*rest != '\0')
      return mn__set_error(MN_ERR_PARSE,
                           "size %s has %s after the unit; write the "
                           "number and one unit only, e.g. \"20GB\"",
                           shown,
                           mn__quote(rest, strlen(rest), frag, sizeof frag));
    mult = found->mult;
  }

  if (mult == 1 && frac_nonzero)
    return mn__set_error(MN_ERR_PARSE,
                         "size %s is a fraction of a byte; give whole "
                         "bytes or a unit, e.g. \"1.5KB\"",
                         shown);

  /* bytes = whole * mult + round(frac_num * mult / frac_den). Both products
   * fit in 128 bits: whole <= 2^64, mult <= 2^60, frac_num < 10^19. */
  unsigned __int128 bytes = whole * mult;
  unsigned __int128 fb = (unsigned __int128)frac_num * mult;
  bytes += (fb + frac_den / 2) / frac_den;
  if (bytes > UINT64_MAX)
    return mn__set_error(MN_ERR_RANGE,
                         "size %s is too large; the largest size is "
                         "%llu bytes (about 18.4 EB), e.g. \"16TiB\" is fine",
                         shown, (unsigned long long)UINT64_MAX);
  *out = (uint64_t)bytes;
  return MN_OK;
}

const char *mn_size_format(uint64_t bytes, char *buf, size_t len) {
  static const char *const names[] = {"B",   "KiB", "MiB", "GiB",
                                      "TiB", "PiB", "EiB"};
  if (!buf || len == 0)
    return "";
  if (bytes < 1024) {
    snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    return buf;
  }
  int u = 0;
  while (u < 6 && bytes >= (1ull << (10 * (u + 1))))
    u++;
  uint64_t unit = 1ull << (10 * u);
  if (bytes % unit == 0) {
    snprintf(buf, len, "%llu %s", (unsigned long long)(bytes / unit), names[u]);
    return buf;
  }
  double v = (double)bytes / (double)unit;
  /* 1048575 bytes would print as "1024.00 KiB"; say "1.00 MiB" instead. */
  if (v >= 1023.995 && u < 6) {
    u++;
    v = (double)bytes / (double)(1ull << (10 * u));
  }
  snprintf(buf, len, "%.2f %s", v, names[u]);
  return buf;
}
