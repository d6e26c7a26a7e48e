/*
 * test_config_doc.c - docs/config.md and `mnemod --help-config` are what
 * the configuration key table says. The file is generated (cmake --build
 * build --target config_docs); this test fails when the committed copy is
 * out of date, checks that every key include/mnemo/config.h documents has
 * a full row, and loads the committed example file with the library's own
 * loader: as written it must load and give the defaults; with any one key
 * misspelled it must be refused, naming the key.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/doc_file.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mnemo/config.h"

#ifndef MNEMO_SOURCE_DIR
#error "MNEMO_SOURCE_DIR must be defined (tests/common/tests.cmake)"
#endif

#define DOC_PATH MNEMO_SOURCE_DIR "/docs/config.md"
#define HEADER_PATH MNEMO_SOURCE_DIR "/include/mnemo/config.h"
#define MAX_KEYS 64

static char *doc(void) {
  char *d = doc_slurp(DOC_PATH);
  if (!d)
    fail_msg("%s is missing: generate it with `cmake --build build --target "
             "config_docs` and commit it",
             DOC_PATH);
  return d;
}

/* The dotted key names config.h mentions ("gpu.memory_limit"), each once,
 * read from the header text rather than taken from the library. */
static int header_keys(char keys[][48]) {
  char *h = doc_slurp(HEADER_PATH);
  assert_non_null(h);
  static const char *const sects[] = {"gpu.", "processing.", "server.",
                                      "storage."};
  int n = 0;
  for (const char *p = h; *p; p++) {
    if (p > h && (isalnum((unsigned char)p[-1]) || p[-1] == '_'))
      continue;
    for (int s = 0; s < 4; s++) {
      size_t sl = strlen(sects[s]);
      if (strncmp(p, sects[s], sl) != 0)
        continue;
      size_t l = sl;
      while (islower((unsigned char)p[l]) || isdigit((unsigned char)p[l]) ||
             p[l] == '_')
        l++;
      if (l == sl)
        break; /* "server.*" */
      char k[48];
      assert_true(l < sizeof k);
      memcpy(k, p, l);
      k[l] = '\0';
      int seen = 0;
      for (int i = 0; i < n; i++)
        seen |= strcmp(keys[i], k) == 0;
      if (!seen) {
        assert_true(n < MAX_KEYS);
        strcpy(keys[n++], k);
      }
      break;
    }
  }
  free(h);
  return n;
}

static void env_of(const char *key, char *buf, size_t len) {
  size_t o = (size_t)snprintf(buf, len, "MNEMO_");
  for (; *key && o + 1 < len; key++)
    buf[o++] = *key == '.' ? '_' : (char)toupper((unsigned char)*key);
  buf[o] = '\0';
}

/* The cells of the table row for `key` in md, split at '|' (trimmed, in
 * static buffers); returns the number of cells, 0 when there is no row. */
static int row_cells(const char *md, const char *key, char cells[8][1024]) {
  char start[80];
  snprintf(start, sizeof start, "\n| `%s` |", key);
  const char *p = strstr(md, start);
  if (!p)
    return 0;
  p += 2; /* past "\n|" */
  const char *end = strchr(p, '\n');
  int n = 0;
  while (p < end && n < 8) {
    const char *bar = p;
    while (bar < end && !(*bar == '|' && bar[-1] != '\\'))
      bar++;
    if (bar >= end)
      break;
    const char *a = p, *b = bar;
    while (a < b && *a == ' ')
      a++;
    while (b > a && b[-1] == ' ')
      b--;
    size_t l = (size_t)(b - a);
    assert_true(l < 1024);
    memcpy(cells[n], a, l);
    cells[n][l] = '\0';
    n++;
    p = bar + 1;
  }
  return n;
}

/* The text between "```json\n" and "\n```" under "## Example file". */
static char *example_json(const char *md) {
  const char *h = strstr(md, "\n## Example file\n");
  assert_non_null(h);
  const char *a = strstr(h, "```json\n");
  assert_non_null(a);
  a += 8;
  const char *b = strstr(a, "\n```");
  assert_non_null(b);
  char *j = malloc((size_t)(b - a) + 2);
  assert_non_null(j);
  memcpy(j, a, (size_t)(b - a));
  j[b - a] = '\n';
  j[b - a + 1] = '\0';
  return j;
}

/* ---------------------------------------------------------------------- */

static void test_committed_copy_is_current(void **state) {
  (void)state;
  char *want = mn_config_keys_markdown();
  assert_non_null(want);
  char *have = doc();
  int line = doc_first_difference(want, have);
  if (line) {
    fail_msg("docs/config.md differs from the key table from line %d on: "
             "regenerate it with `cmake --build build --target config_docs` "
             "and commit it",
             line);
  }
  free(want);
  free(have);
}

/* Every key config.h knows has a row with its type, default, allowed
 * values, environment variable and a description; no row names a key
 * config.h does not; the text reference lists the same. */
static void test_every_key_documented(void **state) {
  (void)state;
  char keys[MAX_KEYS][48];
  int nk = header_keys(keys);
  assert_true(nk >= 30);
  char *md = doc();
  char *text = mn_config_keys_text();
  assert_non_null(text);
  static char cells[8][1024];
  for (int i = 0; i < nk; i++) {
    int nc = row_cells(md, keys[i], cells);
    if (nc != 6)
      fail_msg("docs/config.md: %s has %d cells, want a row of 6", keys[i], nc);
    char want[128], env[80];
    snprintf(want, sizeof want, "`%.47s`", keys[i]);
    assert_string_equal(cells[0], want);
    assert_true(strlen(cells[1]) > 0);
    assert_true(strlen(cells[2]) > 2 && cells[2][0] == '`');
    assert_true(strlen(cells[3]) > 0);
    env_of(keys[i], env, sizeof env);
    snprintf(want, sizeof want, "`%s`", env);
    assert_string_equal(cells[4], want);
    if (strlen(cells[5]) < 20)
      fail_msg("docs/config.md: %s has no real description: '%s'", keys[i],
               cells[5]);

    char head[128];
    snprintf(head, sizeof head, "\n%.47s (%.40s, default ", keys[i], cells[1]);
    if (!strstr(text, head))
      fail_msg("--help-config lacks '%s'", head + 1);
    snprintf(want, sizeof want, "env:     %s\n", env);
    if (!strstr(text, want))
      fail_msg("--help-config lacks '%s'", want);
  }
  int rows = 0;
  for (const char *p = md; (p = strstr(p, "\n| `")) != NULL; p++)
    rows++;
  assert_int_equal(rows, nk);
  int entries = 0;
  for (const char *p = text; (p = strstr(p, "\n    env:     MNEMO_")) != NULL;
       p++)
    entries++;
  assert_int_equal(entries, nk);
  free(text);
  free(md);
}

/* The Default column, written into a file as it stands, gives the default;
 * an integer key takes both ends of its Allowed range and refuses one
 * past either. */
static void test_defaults_and_ranges_hold(void **state) {
  (void)state;
  char keys[MAX_KEYS][48];
  int nk = header_keys(keys);
  char *md = doc();
  static char cells[8][1024];
  mn_config d;
  mn_config_defaults(&d);
  for (int i = 0; i < nk; i++) {
    assert_int_equal(row_cells(md, keys[i], cells), 6);
    char json[1200 + 1024];
    size_t dl = strlen(cells[2]);
    snprintf(json, sizeof json, "{\"%.47s\": %.*s}", keys[i], (int)(dl - 2),
             cells[2] + 1);
    mn_config c;
    memset(&c, 0x5a, sizeof c);
    mn_config_defaults(&c);
    if (mn_config_load_string(&c, json) != MN_OK)
      fail_msg("%s: %s", json, mn_errmsg());
    if (memcmp(&c, &d, sizeof c) != 0)
      fail_msg("%s does not give the default of %s", json, keys[i]);

    if (strcmp(cells[1], "integer") == 0) {
      long long lo, hi;
      if (sscanf(cells[3], "%lld to %lld", &lo, &hi) != 2)
        fail_msg("%s: Allowed '%s' is not 'LO to HI'", keys[i], cells[3]);
      char v[32];
      const long long ok[] = {lo, hi}, bad[] = {lo - 1, hi + 1};
      for (int j = 0; j < 2; j++) {
        snprintf(v, sizeof v, "%lld", ok[j]);
        if (mn_config_set(&c, keys[i], v) != MN_OK)
          fail_msg("%s=%s refused: %s", keys[i], v, mn_errmsg());
        snprintf(v, sizeof v, "%lld", bad[j]);
        if (mn_config_set(&c, keys[i], v) != MN_ERR_INVALID)
          fail_msg("%s=%s accepted", keys[i], v);
      }
    }
  }
  free(md);
}

/* The example, pasted into a file, loads with the loader mnemod uses and
 * holds exactly the defaults. */
static void test_example_loads(void **state) {
  (void)state;
  char *md = doc();
  char *ex = example_json(md);
  char path[] = "/tmp/mnemo_test_config_doc_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, ex, strlen(ex)), (ssize_t)strlen(ex));
  close(fd);
  mn_config c, d;
  memset(&c, 0x5a, sizeof c);
  mn_config_defaults(&c);
  mn_config_defaults(&d);
  mn_status s = mn_config_load_file(&c, path);
  unlink(path);
  if (s != MN_OK)
    fail_msg("the example in docs/config.md does not load: %s", mn_errmsg());
  assert_int_equal(mn_config_validate(&c), MN_OK);
  assert_memory_equal(&c, &d, sizeof c);

  /* Every key config.h knows is in it. */
  char keys[MAX_KEYS][48];
  int nk = header_keys(keys);
  for (int i = 0; i < nk; i++) {
    char leaf[64];
    snprintf(leaf, sizeof leaf, "\"%s\":", strchr(keys[i], '.') + 1);
    if (!strstr(ex, leaf))
      fail_msg("the example lacks %s", keys[i]);
  }
  free(ex);
  free(md);
}

/* Misspell one key of the example at a time (drop its last letter): the
 * loader refuses the file and names the misspelled key and the right one. */
static void test_example_misspelled_key_refused(void **state) {
  (void)state;
  char *md = doc();
  char *ex = example_json(md);
  char keys[MAX_KEYS][48];
  int nk = header_keys(keys);
  for (int i = 0; i < nk; i++) {
    const char *dot = strchr(keys[i], '.');
    char sect[32], leaf[64];
    snprintf(sect, sizeof sect, "\"%.*s\": {", (int)(dot - keys[i]), keys[i]);
    snprintf(leaf, sizeof leaf, "\"%s\":", dot + 1);
    const char *in = strstr(ex, sect);
    assert_non_null(in);
    const char *at = strstr(in, leaf);
    assert_non_null(at);
    /* Copy without the leaf's last letter (just before its closing '"'). */
    size_t cut = (size_t)(at - ex) + strlen(leaf) - 3;
    char *bad = malloc(strlen(ex) + 1);
    assert_non_null(bad);
    memcpy(bad, ex, cut);
    strcpy(bad + cut, ex + cut + 1);

    mn_config c, before;
    mn_config_defaults(&c);
    assert_int_equal(mn_config_set(&c, "server.port", "4321"), MN_OK);
    memcpy(&before, &c, sizeof c);
    mn_status s = mn_config_load_string(&c, bad);
    if (s != MN_ERR_INVALID)
      fail_msg("%s misspelled: got %s, want MN_ERR_INVALID", keys[i],
               mn_status_name(s));
    char want[128];
    snprintf(want, sizeof want, "unknown configuration key \"%.*s\"",
             (int)strlen(keys[i]) - 1, keys[i]);
    if (!strstr(mn_errmsg(), want))
      fail_msg("message \"%s\" lacks '%s'", mn_errmsg(), want);
    snprintf(want, sizeof want, "did you mean \"%s\"?", keys[i]);
    if (!strstr(mn_errmsg(), want))
      fail_msg("message \"%s\" lacks '%s'", mn_errmsg(), want);
    /* A refused file changes nothing. */
    assert_memory_equal(&c, &before, sizeof c);
    free(bad);
  }
  free(ex);
  free(md);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_committed_copy_is_current),
      cmocka_unit_test(test_every_key_documented),
      cmocka_unit_test(test_defaults_and_ranges_hold),
      cmocka_unit_test(test_example_loads),
      cmocka_unit_test(test_example_misspelled_key_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
