/*
 * test_api_doc.c - docs/API.md is what the method table says. The file is
 * generated (cmake --build build --target api_docs); this test fails when
 * the committed copy is out of date, and checks that every method is
 * documented with a request and a reply.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/doc_file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mnemo/rpc.h"
#include "rpc/rpc_internal.h"

#ifndef MNEMO_SOURCE_DIR
#error "MNEMO_SOURCE_DIR must be defined (tests/common/tests.cmake)"
#endif

static void test_committed_copy_is_current(void **state) {
  char *want = mn_rpc_api_markdown(NULL);
  assert_non_null(want);
  const char *path = MNEMO_SOURCE_DIR "/docs/API.md";
  char *have = doc_slurp(path);
  if (!have)
    fail_msg("%s is missing: generate it with `cmake --build build --target "
             "api_docs` and commit it",
             path);
  int line = doc_first_difference(want, have);
  if (line) {
    fail_msg("docs/API.md differs from the method table from line %d on: "
             "regenerate it with `cmake --build build --target api_docs` "
             "and commit it",
             line);
  }
  free(want);
  free(have);
}

static void test_every_method_documented(void **state) {
  char *md = mn_rpc_api_markdown(NULL);
  assert_non_null(md);
  for (size_t i = 0; i < mn__n_methods; i++) {
    char h[128];
    snprintf(h, sizeof h, "\n### %s\n", mn__methods[i].name);
    const char *at = strstr(md, h);
    if (!at)
      fail_msg("docs lack a section for %s", mn__methods[i].name);
    const char *next = strstr(at + 1, "\n### ");
    const char *req = strstr(at, "Request:\n\n```json\n{");
    assert_non_null(req);
    if (next)
      assert_true(req < next);
    if (mn__methods[i].example_reply) {
      const char *rep = strstr(at, "Reply:\n\n```json\n{");
      assert_non_null(rep);
      if (next)
        assert_true(rep < next);
    }
  }
  /* The intro covers the transport, frames, tensors and every code. */
  const char *needles[] = {"## Binary frames",
                           "## Tensors",
                           "-32700",
                           "-32600",
                           "-32601",
                           "-32602",
                           "-32603",
                           "-32000",
                           "-32001",
                           "-32002",
                           "-32003",
                           "-32004",
                           "| `options.quantization` |"};
  for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++)
    if (!strstr(md, needles[i]))
      fail_msg("docs lack '%s'", needles[i]);
  free(md);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_committed_copy_is_current),
      cmocka_unit_test(test_every_method_documented),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
