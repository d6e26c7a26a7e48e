/*
 * gen_config_md.c - writes docs/config.md from the configuration key table:
 *   gen_config_md [FILE]   (standard output without FILE)
 * Run through `cmake --build build --target config_docs`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mnemo/config.h"

int main(int argc, char **argv) {
  char *md = mn_config_keys_markdown();
  if (!md) {
    fprintf(stderr, "gen_config_md: could not build the document: %s\n",
            mn_errmsg());
    return 1;
  }
  FILE *f = argc > 1 ? fopen(argv[1], "wb") : stdout;
  if (!f) {
    perror(argv[1]);
    free(md);
    return 1;
  }
  size_t n = strlen(md);
  int ok = fwrite(md, 1, n, f) == n;
  if (f != stdout)
    ok = fclose(f) == 0 && ok;
  free(md);
  if (!ok) {
    fprintf(stderr, "gen_config_md: write failed\n");
    return 1;
  }
  if (argc > 1)
    fprintf(stderr, "wrote %s (%zu bytes)\n", argv[1], n);
  return 0;
}
