/*
 * gen_doc.c - writes a document generated from one of mnemo's tables:
 *   gen_doc api [FILE]      docs/API.md, from the method table
 *   gen_doc config [FILE]   docs/config.md, from the configuration keys
 * (standard output without FILE). Run through `cmake --build build
 * --target api_docs` or `--target config_docs`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mnemo/config.h"
#include "mnemo/rpc.h"

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "";
  char *md = strcmp(what, "api") == 0      ? mn_rpc_api_markdown(NULL)
             : strcmp(what, "config") == 0 ? mn_config_keys_markdown()
                                           : NULL;
  if (!md) {
    if (strcmp(what, "api") != 0 && strcmp(what, "config") != 0)
      fprintf(stderr, "usage: gen_doc api|config [FILE]\n");
    else
      fprintf(stderr, "gen_doc: could not build the %s document: %s\n", what,
              mn_errmsg());
    return 1;
  }
  const char *path = argc > 2 ? argv[2] : NULL;
  FILE *f = path ? fopen(path, "wb") : stdout;
  if (!f) {
    perror(path);
    free(md);
    return 1;
  }
  size_t n = strlen(md);
  int ok = fwrite(md, 1, n, f) == n;
  if (f != stdout)
    ok = fclose(f) == 0 && ok;
  free(md);
  if (!ok) {
    fprintf(stderr, "gen_doc: write failed\n");
    return 1;
  }
  if (path)
    fprintf(stderr, "wrote %s (%zu bytes)\n", path, n);
  return 0;
}
