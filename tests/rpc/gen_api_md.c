/*
 * gen_api_md.c - writes docs/API.md from the method table:
 *   gen_api_md [FILE]   (standard output without FILE)
 * Run through `cmake --build build --target api_docs`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mnemo/rpc.h"

int main(int argc, char **argv) {
  char *md = mn_rpc_api_markdown(NULL);
  if (!md) {
    fprintf(stderr, "gen_api_md: could not build the document: %s\n",
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
    fprintf(stderr, "gen_api_md: write failed\n");
    return 1;
  }
  if (argc > 1)
    fprintf(stderr, "wrote %s (%zu bytes)\n", argv[1], n);
  return 0;
}
