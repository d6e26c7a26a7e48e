/*
 * test_json_strings.c - string escapes through the JSON reader and
 * writer, character by character: every escape RFC 8259 defines is read
 * as the character jansson reads it as, every other one is refused with
 * a message naming it, and every ASCII character is written the way the
 * RFC's short forms (or \u00XX for the other control characters) write
 * it, which jansson reads back to the same character.
 */
#include "rpc_fixture.h"

/* The reader on one JSON text: the string value, or NULL with the
 * message in msg. */
static char *read_str(const char *t, size_t n, char *msg, size_t msg_len) {
  mn__arena a = {0};
  mn__jerr e;
  mn__jv *v = mn__json_parse(&a, t, n, 8, &e);
  char *s = NULL;
  if (v) {
    assert_int_equal(v->type, MN__J_STR);
    s = malloc(v->n + 1);
    assert_non_null(s);
    memcpy(s, v->u.str, v->n);
    s[v->n] = '\0';
  } else {
    snprintf(msg, msg_len, "%s", e.msg);
  }
  mn__arena_release(&a);
  return s;
}

/* "\" followed by every byte but 'u' (\uXXXX is covered below). */
static void test_read_escapes(void **state) {
  (void)state;
  for (int c = 0; c < 256; c++) {
    if (c == 'u')
      continue;
    char t[5] = {'"', '\\', (char)c, '"', 0};
    char msg[256] = "";
    char *got = read_str(t, 4, msg, sizeof msg);
    json_error_t je;
    json_t *ref = json_loadb(t, 4, JSON_DECODE_ANY, &je);
    if (ref) {
      if (!got)
        fail_msg("\\%c refused (%s), jansson reads it", c, msg);
      assert_string_equal(got, json_string_value(ref));
      assert_int_equal(strlen(got), 1);
    } else {
      if (got)
        fail_msg("escape byte 0x%02x read, jansson refuses it", c);
      assert_non_null(strstr(msg, "invalid escape"));
    }
    free(got);
    json_decref(ref);
  }
  /* The eight, spelt out: that jansson agrees is not enough. */
  const char *valid = "\"\\/bfnrt";
  for (int c = 0; c < 256; c++) {
    if (c == 'u')
      continue;
    char t[5] = {'"', '\\', (char)c, '"', 0};
    char msg[256];
    char *got = read_str(t, 4, msg, sizeof msg);
    assert_int_equal(got != NULL, c && strchr(valid, c) != NULL);
    free(got);
  }
}

/* Escapes among plain text, and \u forms. */
static void test_read_mixed(void **state) {
  (void)state;
  const char *t = "\"a\\tb\\\\c\\\"d\\/e\\n\\u00e9\\ud83d\\ude00\\u0001\"";
  char msg[256];
  char *got = read_str(t, strlen(t), msg, sizeof msg);
  assert_non_null(got);
  json_t *ref = jparse(t);
  assert_string_equal(got, json_string_value(ref));
  json_decref(ref);
  free(got);
  /* An escape cut off by the end of the message. */
  assert_null(read_str("\"ab\\", 4, msg, sizeof msg));
}

/* Every ASCII character written alone: the text the RFC gives, and
 * jansson reads back the character. */
static void test_write_ascii(void **state) {
  (void)state;
  for (int c = 1; c < 128; c++) {
    char s[1] = {(char)c};
    mn__jw w;
    mn__jw_init(&w, 64);
    mn__jw_strn(&w, s, 1);
    char want[16];
    switch (c) {
    case '"':
      strcpy(want, "\"\\\"\"");
      break;
    case '\\':
      strcpy(want, "\"\\\\\"");
      break;
    case '\b':
      strcpy(want, "\"\\b\"");
      break;
    case '\f':
      strcpy(want, "\"\\f\"");
      break;
    case '\n':
      strcpy(want, "\"\\n\"");
      break;
    case '\r':
      strcpy(want, "\"\\r\"");
      break;
    case '\t':
      strcpy(want, "\"\\t\"");
      break;
    default:
      if (c < 0x20)
        snprintf(want, sizeof want, "\"\\u%04x\"", c);
      else
        snprintf(want, sizeof want, "\"%c\"", c);
    }
    assert_false(w.oom);
    assert_int_equal(w.len, strlen(want));
    assert_memory_equal(w.buf, want, w.len);
    json_error_t je;
    json_t *ref = json_loadb(w.buf, w.len, JSON_DECODE_ANY, &je);
    assert_non_null(ref);
    assert_int_equal(json_string_length(ref), 1);
    assert_int_equal((unsigned char)json_string_value(ref)[0], c);
    json_decref(ref);
    mn__jw_free(&w);
  }
}

/* A longer string with every kind of character goes through the writer
 * and back through the reader unchanged. */
static void test_round_trip(void **state) {
  (void)state;
  char s[400];
  size_t n = 0;
  for (int c = 1; c < 128; c++) {
    s[n++] = 'x';
    s[n++] = (char)c;
  }
  memcpy(s + n, "\xc3\xa9\xf0\x9f\x98\x80", 6);
  n += 6;
  mn__jw w;
  mn__jw_init(&w, 64);
  mn__jw_strn(&w, s, n);
  assert_false(w.oom);
  char msg[256];
  char *got = read_str(w.buf, w.len, msg, sizeof msg);
  assert_non_null(got);
  assert_int_equal(strlen(got), n);
  assert_memory_equal(got, s, n);
  free(got);
  mn__jw_free(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_read_escapes),
      cmocka_unit_test(test_read_mixed),
      cmocka_unit_test(test_write_ascii),
      cmocka_unit_test(test_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
