/*
 * test_workers.c - the pieces of the server that are plain functions: how
 * many requests a message holds (for the rate limit; a byte scan, no
 * parse) and the per-connection token bucket. The server as a whole is
 * tested over real sockets in tests/integration.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/server_internal.h"

static int64_t count_text(const char *s) {
  return mn__count_requests((const unsigned char *)s, strlen(s), 0);
}

static int64_t count_binary(const char *json, const char *payload,
                            uint32_t declared) {
  size_t jn = strlen(json), pn = strlen(payload);
  unsigned char *m = malloc(4 + jn + pn);
  assert_non_null(m);
  m[0] = (unsigned char)declared;
  m[1] = (unsigned char)(declared >> 8);
  m[2] = (unsigned char)(declared >> 16);
  m[3] = (unsigned char)(declared >> 24);
  memcpy(m + 4, json, jn);
  memcpy(m + 4 + jn, payload, pn);
  int64_t n = mn__count_requests(m, 4 + jn + pn, 1);
  free(m);
  return n;
}

static void test_single_requests_count_one(void **state) {
  (void)state;
  assert_int_equal(count_text("{\"jsonrpc\":\"2.0\",\"method\":\"x\"}"), 1);
  assert_int_equal(count_text("  \n {\"a\":[1,2,3]}"), 1);
  assert_int_equal(count_text("not json, at all"), 1);
  assert_int_equal(count_text(""), 1);
}

static void test_batches_count_their_members(void **state) {
  (void)state;
  assert_int_equal(count_text("[{\"a\":1}]"), 1);
  assert_int_equal(count_text("[{\"a\":1},{\"b\":[1,2,3]},3]"), 3);
  assert_int_equal(count_text(" [ {} , {} , {} , {} ] "), 4);
  assert_int_equal(count_text("[1,2,3]"), 3);
  /* An empty batch is still one request's worth of work (an error). */
  assert_int_equal(count_text("[]"), 1);
  assert_int_equal(count_text("[ \n ]"), 1);
  /* Commas and brackets inside strings and nested values do not count. */
  assert_int_equal(count_text("[{\"s\":\"a,b,[c\"},{\"t\":\"\\\"],\"}]"), 2);
  assert_int_equal(count_text("[{\"x\":[[1,2],[3,4]]},{\"y\":{\"a\":1,"
                              "\"b\":2}}]"),
                   2);
  /* Unterminated: what was seen. */
  assert_int_equal(count_text("[{},{"), 2);
}

static void test_binary_frames_count_only_the_json_part(void **state) {
  (void)state;
  const char *json = "[{\"id\":1},{\"id\":2}]";
  /* The payload after the JSON is raw bytes, commas included. */
  assert_int_equal(count_binary(json, ",,,,[[,]]", (uint32_t)strlen(json)), 2);
  assert_int_equal(count_binary("{\"id\":1}", "[,,,]", 8), 1);
  /* A declared length beyond the frame is clamped to it. */
  assert_int_equal(count_binary(json, "", 1000), 2);
  /* Too short for the length prefix. */
  assert_int_equal(mn__count_requests((const unsigned char *)"ab", 2, 1), 1);
}

static mn__conn *bucket_conn(double tokens) {
  mn__conn *c = calloc(1, sizeof *c);
  assert_non_null(c);
  pthread_mutex_init(&c->lock, NULL);
  c->tokens = tokens;
  c->tokens_ns = mn_time_ns();
  return c;
}

static void test_token_bucket(void **state) {
  (void)state;
  mn__conn *c = bucket_conn(10);
  /* 10 per minute, a full bucket: ten single requests pass at once. */
  for (int i = 0; i < 10; i++)
    assert_int_equal(mn__conn_rate_take(c, 1, 10), 0);
  /* The eleventh waits for one token: 60 s / 10 = 6 s. */
  int64_t wait = mn__conn_rate_take(c, 1, 10);
  assert_in_range(wait, 5900, 6001);
  /* Refill: pretend 3 s went by, half a token... */
  c->tokens_ns -= 3000000000ull;
  wait = mn__conn_rate_take(c, 1, 10);
  assert_in_range(wait, 2900, 3001);
  /* ...and 3 more seconds: one whole token. */
  c->tokens_ns -= 3000000000ull;
  assert_int_equal(mn__conn_rate_take(c, 1, 10), 0);
  /* Never more than a minute's worth, however long the silence. */
  c->tokens_ns -= 3600ull * 1000000000ull;
  assert_int_equal(mn__conn_rate_take(c, 10, 10), 0);
  assert_true(mn__conn_rate_take(c, 1, 10) > 0);
  /* 0 means no limit. */
  assert_int_equal(mn__conn_rate_take(c, 1000000, 0), 0);
  pthread_mutex_destroy(&c->lock);
  free(c);
}

static void test_batch_larger_than_the_bucket(void **state) {
  (void)state;
  mn__conn *c = bucket_conn(4);
  /* A batch of 20 never fits a bucket of 10; the wait is until full. */
  int64_t wait = mn__conn_rate_take(c, 20, 10);
  assert_in_range(wait, 35900, 36001); /* 6 tokens at 6 s each */
  assert_true(c->tokens >= 3.99 && c->tokens <= 4.01); /* nothing taken */
  pthread_mutex_destroy(&c->lock);
  free(c);
}

/* Regression (first GPU run, 16 workers): a worker that read the clock
 * before another worker refilled the bucket saw time run backwards, and
 * the unsigned difference refilled the bucket to the full minute. */
static void test_bucket_last_refill_in_the_future(void **state) {
  (void)state;
  mn__conn *c = bucket_conn(0);
  c->tokens_ns =
      mn_time_ns() + 1000000000ull; /* another worker's later clock */
  assert_true(mn__conn_rate_take(c, 1, 20) > 0);
  assert_true(c->tokens < 1.0);
  pthread_mutex_destroy(&c->lock);
  free(c);
}

typedef struct taker {
  mn__conn *c;
  int passed;
} taker;

static void *take_many(void *arg) {
  taker *t = arg;
  for (int i = 0; i < 200; i++)
    t->passed += mn__conn_rate_take(t->c, 1, 50) == 0;
  return NULL;
}

/* Eight workers taking from one connection's bucket of 50 per minute:
 * together they get the 50 and at most the odd token refilled meanwhile. */
static void test_bucket_shared_by_workers(void **state) {
  (void)state;
  mn__conn *c = bucket_conn(50);
  pthread_t th[8];
  taker t[8];
  for (int i = 0; i < 8; i++) {
    t[i].c = c;
    t[i].passed = 0;
    assert_int_equal(pthread_create(&th[i], NULL, take_many, &t[i]), 0);
  }
  int passed = 0;
  for (int i = 0; i < 8; i++) {
    pthread_join(th[i], NULL);
    passed += t[i].passed;
  }
  assert_in_range(passed, 50, 52);
  pthread_mutex_destroy(&c->lock);
  free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_single_requests_count_one),
      cmocka_unit_test(test_batches_count_their_members),
      cmocka_unit_test(test_binary_frames_count_only_the_json_part),
      cmocka_unit_test(test_token_bucket),
      cmocka_unit_test(test_batch_larger_than_the_bucket),
      cmocka_unit_test(test_bucket_last_refill_in_the_future),
      cmocka_unit_test(test_bucket_shared_by_workers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
