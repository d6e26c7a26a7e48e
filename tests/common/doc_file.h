/*
 * doc_file.h - for the tests that keep a generated document (docs/API.md,
 * docs/config.md) in step with the table it is generated from.
 */
#ifndef MNEMO_TESTS_DOC_FILE_H
#define MNEMO_TESTS_DOC_FILE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file, NUL-terminated, or NULL. Free with free(). */
static inline char *doc_slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
    free(b);
    b = NULL;
  }
  if (b)
    b[n] = '\0';
  fclose(f);
  return b;
}

/* 0 when `have` is `want`; otherwise the first line (from 1) where they
 * differ. */
static inline int doc_first_difference(const char *want, const char *have) {
  if (strcmp(want, have) == 0)
    return 0;
  int line = 1;
  for (size_t i = 0; want[i] && want[i] == have[i]; i++)
    if (want[i] == '\n')
      line++;
  return line;
}

#endif
