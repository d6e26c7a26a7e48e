/*
 * json.c - the engine's JSON reader and writer, the request arena and the
 * shortest round-trip number formatting.
 *
 * The reader is a recursive-descent parser over a length-delimited buffer
 * (RFC 8259). It validates UTF-8 inside strings (outside strings any byte
 * above 0x7f is a syntax error anyway), rejects lone surrogate escapes and
 * stops at a configured nesting depth. Arrays whose items are all numbers
 * are kept packed as doubles: a 32x768 tensor becomes 32 arrays of 768
 * doubles with no per-number node. Strings without escapes point into the
 * message; the rest lives in the arena.
 *
 * Numbers: up to 19 significant digits are gathered into an integer; when
 * it is below 2^53 and the decimal exponent within +-22 the double is one
 * exact multiplication or division (Clinger's fast path, correctly
 * rounded). Anything else goes to strtod_l in the C locale.
 *
 * DESIGN: everything here is reentrant; the only shared state is the
 * arena block pool (a mutex-protected free list, capped in bytes).
 */
#define _GNU_SOURCE
#include "rpc/fmt_f32.h"
#include "rpc/rpc_internal.h"

#include <float.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* ========================================================================
 * Arena
 * ====================================================================== */
struct mn__arena_blk {
  mn__arena_blk *next;
  size_t cap, used;
  char *data;
};

#define MN__BLK_MIN (64u << 10)
#define MN__POOL_MAX_BYTES ((size_t)64 << 20)
#define MN__POOL_MAX_BLOCKS 64

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static mn__arena_blk *pool_head;
static size_t pool_bytes;
static int pool_blocks;

static mn__arena_blk *blk_get(size_t need) {
  pthread_mutex_lock(&pool_lock);
  mn__arena_blk **pp = &pool_head, *best = NULL, **bestp = NULL;
  for (; *pp; pp = &(*pp)->next) {
    if ((*pp)->cap >= need && (!best || (*pp)->cap < best->cap)) {
      best = *pp;
      bestp = pp;
    }
  }
  if (best) {
    *bestp = best->next;
    pool_bytes -= best->cap;
    pool_blocks--;
  }
  pthread_mutex_unlock(&pool_lock);
  if (best) {
    best->used = 0;
    best->next = NULL;
    return best;
  }
  size_t cap = need < MN__BLK_MIN ? MN__BLK_MIN : (need + 4095) & ~4095ul;
  mn__arena_blk *b = malloc(sizeof *b);
  if (!b)
    return NULL;
  b->data = aligned_alloc(64, cap);
  if (!b->data) {
    free(b);
    return NULL;
  }
  b->cap = cap;
  b->used = 0;
  b->next = NULL;
  return b;
}

static void blk_put(mn__arena_blk *b) {
  pthread_mutex_lock(&pool_lock);
  if (pool_blocks < MN__POOL_MAX_BLOCKS &&
      pool_bytes + b->cap <= MN__POOL_MAX_BYTES) {
    b->next = pool_head;
    pool_head = b;
    pool_bytes += b->cap;
    pool_blocks++;
    b = NULL;
  }
  pthread_mutex_unlock(&pool_lock);
  if (b) {
    free(b->data);
    free(b);
  }
}

size_t mn__arena_pool_drain(void) {
  pthread_mutex_lock(&pool_lock);
  mn__arena_blk *b = pool_head;
  size_t bytes = pool_bytes;
  pool_head = NULL;
  pool_bytes = 0;
  pool_blocks = 0;
  pthread_mutex_unlock(&pool_lock);
  while (b) {
    mn__arena_blk *n = b->next;
    free(b->data);
    free(b);
    b = n;
  }
  return bytes;
}

size_t mn__arena_pool_bytes(void) {
  pthread_mutex_lock(&pool_lock);
  size_t n = pool_bytes;
  pthread_mutex_unlock(&pool_lock);
  return n;
}

void *mn__arena_alloc(mn__arena *a, size_t n) {
  size_t align = n >= 4096 ? 64 : 16;
  mn__arena_blk *b = a->head;
  if (b) {
    size_t off = (b->used + align - 1) & ~(align - 1);
    if (off + n <= b->cap) {
      b->used = off + n;
      return b->data + off;
    }
  }
  /* A big request gets a block of its own placed behind the current one,
   * so that the small allocations keep filling the current block. */
  if (n > MN__BLK_MIN / 4 && b) {
    mn__arena_blk *nb = blk_get(n);
    if (!nb)
      return NULL;
    nb->used = n;
    nb->next = b->next;
    b->next = nb;
    return nb->data;
  }
  mn__arena_blk *nb = blk_get(n);
  if (!nb)
    return NULL;
  nb->next = a->head;
  a->head = nb;
  nb->used = n;
  return nb->data;
}

char *mn__arena_strndup(mn__arena *a, const char *s, size_t n) {
  char *p = mn__arena_alloc(a, n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

void mn__arena_release(mn__arena *a) {
  mn__arena_blk *b = a->head;
  while (b) {
    mn__arena_blk *n = b->next;
    blk_put(b);
    b = n;
  }
  a->head = NULL;
}

/* ========================================================================
 * Reader
 * ====================================================================== */
typedef struct jstack {
  void *p;
  size_t len, cap, elem;
} jstack;

typedef struct jparser {
  const char *s, *p, *end;
  mn__arena *a;
  int depth, max_depth;
  mn__jerr *err;
  int failed;
  jstack items, mems, nums, divs; /* divs: pending 10^n per number */
} jparser;

static void *stack_push(jparser *P, jstack *st) {
  if (st->len == st->cap) {
    size_t nc = st->cap ? st->cap * 2 : 256;
    void *np = realloc(st->p, nc * st->elem);
    if (!np)
      return NULL;
    st->p = np;
    st->cap = nc;
  }
  return (char *)st->p + st->elem * st->len++;
}

/* The elements of a stack from `base` on, moved into the arena; the
 * stack is cut back to `base`. NULL when out of memory. */
static void *stack_take(jparser *P, jstack *st, size_t base) {
  size_t bytes = (st->len - base) * st->elem;
  void *p = mn__arena_alloc(P->a, bytes);
  if (!p)
    return NULL;
  memcpy(p, (char *)st->p + base * st->elem, bytes);
  st->len = base;
  return p;
}

static void set_err(jparser *P, const char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(jparser *P, const char *at, const char *fmt, ...) {
  if (P->failed)
    return;
  P->failed = 1;
  if (at > P->end)
    at = P->end;
  P->err->offset = (size_t)(at - P->s);
  int line = 1, col = 1;
  for (const char *q = P->s; q < at; q++) {
    if (*q == '\n') {
      line++;
      col = 1;
    } else {
      col++;
    }
  }
  P->err->line = line;
  P->err->col = col;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(P->err->msg, sizeof P->err->msg, fmt, ap);
  va_end(ap);
}

static void oom(jparser *P) {
  set_err(P, P->p, "out of memory while reading the message");
}

static inline void skip_ws(jparser *P) {
  const char *p = P->p;
  while (p < P->end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
    p++;
  P->p = p;
}

/* Describe the byte at p for "found ..." in messages. */
static const char *found(jparser *P, const char *p, char *buf, size_t n) {
  if (p >= P->end)
    return "the end of the message";
  unsigned char ch = (unsigned char)*p;
  if (ch >= 0x21 && ch < 0x7f)
    snprintf(buf, n, "'%c'", ch);
  else
    snprintf(buf, n, "byte 0x%02x", ch);
  return buf;
}

static const double pow10_exact[23] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static locale_t c_loc;
static pthread_once_t c_loc_once = PTHREAD_ONCE_INIT;

static void c_loc_init(void) {
  c_loc = newlocale(LC_ALL_MASK, "C", 0);
}

/* strtod that always reads '.' as the decimal point, whatever the
 * application's locale. */
static double strtod_c(const char *s) {
  pthread_once(&c_loc_once, c_loc_init);
  return c_loc ? strtod_l(s, NULL, c_loc) : strtod(s, NULL);
}

/* Eight digits, one per byte of lo (0..9, the first in the lowest byte),
 * into their value in lo: pairs, then fours, then the eight, with
 * multiplies (SWAR). A macro and not an inline function: with the
 * function GCC allocates number_run's registers worse (a move more per
 * eight digits). */
#define SWAR8_VALUE(lo)                                                        \
  do {                                                                         \
    lo = lo * 10 + (lo >> 8);                                                  \
    lo = (((lo & 0x000000ff000000ffull) * (100 + (1000000ull << 32))) +        \
          (((lo >> 16) & 0x000000ff000000ffull) * (1 + (10000ull << 32)))) >>  \
         32;                                                                   \
  } while (0)

/* Eight ASCII digits at p as a number (SWAR), or -1 when they are not all
 * digits. */
static inline int64_t parse8(const char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  uint64_t lo = v - 0x3030303030303030ull;
  uint64_t hi = v + 0x4646464646464646ull; /* > '9' sets the top bit */
  if ((lo | hi) & 0x8080808080808080ull)
    return -1;
  SWAR8_VALUE(lo);
  return (int64_t)lo;
}

/* The number of digits at p (0..8) and, through *val, their value:
 * eight bytes at once (SWAR). The first byte that is not a digit is found
 * exactly (the subtraction borrows only from bytes after it); the digits
 * are moved to the top of the word, '0's shifted in below, and the eight
 * are combined by SWAR8_VALUE. */
static inline int digits_swar(const char *p, uint64_t *val) {
  uint64_t v;
  memcpy(&v, p, 8);
  uint64_t bad = ((v - 0x3030303030303030ull) | (v + 0x4646464646464646ull)) &
                 0x8080808080808080ull;
  int len = bad ? __builtin_ctzll(bad) >> 3 : 8;
  if (len == 0) {
    *val = 0;
    return 0;
  }
  if (len < 8)
    v = v << (8 * (8 - len)) | 0x3030303030303030ull >> (8 * len);
  uint64_t lo = v - 0x3030303030303030ull;
  SWAR8_VALUE(lo);
  *val = lo;
  return len;
}

/* A run of 1 to 16 digits at p: its length (0 when it is empty or longer
 * than 16) and value. */
static inline int digits16(const char *p, uint64_t *val) {
  uint64_t a, b;
  int n = digits_swar(p, &a);
  if (n < 8) {
    *val = a;
    return n;
  }
  int n2 = digits_swar(p + 8, &b);
  if (n2 == 8)
    return 0;
  *val = a * mn__pow10_u64[n2] + b;
  return 8 + n2;
}

/* The usual shape of a number in an embedding, -?(0|[1-9]d*)(.d+)? with
 * no exponent and at most 19 digits, read without a loop per digit. At
 * least 48 bytes must follow p. Returns 0 (and reads nothing into *out)
 * for anything else, which the general code then reads. */
static inline int number_fast(const char *p, const char **next, int *neg,
                              uint64_t *m, int *nd, int *frac, int *is_int) {
  *neg = *p == '-';
  p += *neg;
  uint64_t ip = 0, fp = 0;
  int ni = 0, nf = 0;
  if (*p == '0') {
    p++; /* a leading zero counts as no digit (and must stand alone) */
    if ((unsigned)(*p - '0') <= 9)
      return 0;
  } else {
    ni = digits16(p, &ip);
    if (ni == 0)
      return 0;
    p += ni;
  }
  *is_int = *p != '.';
  if (*p == '.') {
    nf = digits16(p + 1, &fp);
    if (nf == 0)
      return 0;
    p += 1 + nf;
  }
  if (*p == 'e' || *p == 'E' || ni + nf > 19)
    return 0;
  *m = ip * mn__pow10_u64[nf] + fp;
  *nd = ni + nf;
  *frac = nf;
  *next = p;
  return 1;
}

/* Parse a JSON number at P->p. Returns 0 and advances on success. With
 * `defer` set, a value that needs a division by 10^n (n in 1..22) comes
 * back undivided with *defer = n: the caller divides a whole array in one
 * tight loop, where the divisions overlap instead of stalling the
 * parser. */
static int parse_number(jparser *P, double *out, int *is_int, int8_t *defer) {
  if (defer)
    *defer = 0;
  const char *p = P->p, *start = p, *end = P->end;
  int neg = 0;
  /* Up to 19 digits go into m (leading zeros of a fraction count: that
   * only sends more numbers to the slow path). */
  uint64_t m = 0;
  int nd = 0, dropped = 0, inexact = 0, exp10 = 0, frac = 0;
  const char *next;
  if (end - p >= 48 && number_fast(p, &next, &neg, &m, &nd, &frac, is_int)) {
    p = next;
    goto value;
  }
  if (p < end && *p == '-') {
    neg = 1;
    p++;
  }
  if (p >= end || (unsigned)(*p - '0') > 9) {
    char b[24];
    set_err(P, p, "expected a digit after '-', found %s", found(P, p, b, 24));
    return -1;
  }
  if (*p == '0') {
    p++;
    if (p < end && (unsigned)(*p - '0') <= 9) {
      set_err(P, p, "numbers must not have leading zeros");
      return -1;
    }
  } else {
    while (nd <= 11 && end - p >= 8) {
      int64_t v8 = parse8(p);
      if (v8 < 0)
        break;
      m = m * 100000000u + (uint64_t)v8;
      nd += 8;
      p += 8;
    }
    while (p < end && (unsigned)(*p - '0') <= 9) {
      if (nd < 19) {
        m = m * 10 + (uint64_t)(*p - '0');
        nd++;
      } else {
        dropped++;
      }
      p++;
    }
  }
  *is_int = 1;
  if (p < end && *p == '.') {
    p++;
    *is_int = 0;
    if (p >= end || (unsigned)(*p - '0') > 9) {
      char b[24];
      set_err(P, p, "expected a digit after '.', found %s", found(P, p, b, 24));
      return -1;
    }
    if (dropped)
      inexact = 1;
    while (nd <= 11 && end - p >= 8) {
      int64_t v8 = parse8(p);
      if (v8 < 0)
        break;
      m = m * 100000000u + (uint64_t)v8;
      nd += 8;
      frac += 8;
      p += 8;
    }
    while (p < end && (unsigned)(*p - '0') <= 9) {
      if (nd < 19) {
        m = m * 10 + (uint64_t)(*p - '0');
        nd++;
        frac++;
      } else if (*p != '0') {
        inexact = 1;
      }
      p++;
    }
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    *is_int = 0;
    int eneg = 0, e = 0;
    if (p < end && (*p == '+' || *p == '-')) {
      eneg = *p == '-';
      p++;
    }
    if (p >= end || (unsigned)(*p - '0') > 9) {
      char b[24];
      set_err(P, p, "expected a digit in the exponent, found %s",
              found(P, p, b, 24));
      return -1;
    }
    while (p < end && (unsigned)(*p - '0') <= 9) {
      if (e < 100000)
        e = e * 10 + (*p - '0');
      p++;
    }
    exp10 = eneg ? -e : e;
  }
value:;
  int dropped_fast = inexact ? -1 : dropped;
  P->p = p;
  int e = exp10 - frac + dropped;
  if (dropped_fast == 0 && m <= (1ull << 53)) {
    double d = (double)m;
    if (m == 0) {
      *out = neg ? -0.0 : 0.0;
      return 0;
    }
    if (e >= 0 && e <= 22) {
      d *= pow10_exact[e];
      *out = neg ? -d : d;
      return 0;
    }
    if (e < 0 && e >= -22) {
      if (defer)
        *defer = (int8_t)-e;
      else
        d /= pow10_exact[-e];
      *out = neg ? -d : d;
      return 0;
    }
  }
  /* Slow path: strtod in the C locale on a NUL-terminated copy. */
  size_t n = (size_t)(p - start);
  char small[64], *buf = n < sizeof small ? small : malloc(n + 1);
  if (!buf) {
    oom(P);
    return -1;
  }
  memcpy(buf, start, n);
  buf[n] = '\0';
  *out = strtod_c(buf);
  if (buf != small)
    free(buf);
  return 0;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c |= 0x20;
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

/* Length of a valid UTF-8 sequence at p (p[0] >= 0x80), or 0. */
static int utf8_seq(const unsigned char *p, const unsigned char *end) {
  unsigned c = p[0];
  if (c >= 0xc2 && c <= 0xdf) {
    if (end - p >= 2 && (p[1] & 0xc0) == 0x80)
      return 2;
    return 0;
  }
  if (c >= 0xe0 && c <= 0xef) {
    if (end - p < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
      return 0;
    if (c == 0xe0 && p[1] < 0xa0)
      return 0; /* overlong */
    if (c == 0xed && p[1] >= 0xa0)
      return 0; /* surrogate */
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (end - p < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 ||
        (p[3] & 0xc0) != 0x80)
      return 0;
    if (c == 0xf0 && p[1] < 0x90)
      return 0; /* overlong */
    if (c == 0xf4 && p[1] >= 0x90)
      return 0; /* above U+10FFFF */
    return 4;
  }
  return 0;
}

static size_t put_utf8(char *o, uint32_t cp) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (char)(0xc0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (char)(0xe0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  o[0] = (char)(0xf0 | (cp >> 18));
  o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
  o[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

/* The two-character escapes of JSON, both ways: unesc[e] is the character
 * that backslash-e stands for (0: none; \u is read apart), esc[c] the
 * letter after the backslash that writes c (0: c is written as \u00XX). */
static const char unesc[128] = {
    ['"'] = '"',  ['\\'] = '\\', ['/'] = '/',  ['b'] = '\b',
    ['f'] = '\f', ['n'] = '\n',  ['r'] = '\r', ['t'] = '\t'};
static const char esc[128] = {
    ['"'] = '"',  ['\\'] = '\\', ['\b'] = 'b', ['\f'] = 'f',
    ['\n'] = 'n', ['\r'] = 'r',  ['\t'] = 't'};

/* Index of the first byte that is '"', '\\', a control character or
 * non-ASCII, from p (or end). */
static const char *scan_plain(const char *p, const char *end) {
#if defined(__SSE2__)
  const __m128i q = _mm_set1_epi8('"'), bs = _mm_set1_epi8('\\');
  const __m128i sp = _mm_set1_epi8(0x20);
  while (end - p >= 16) {
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    /* Signed compare: bytes >= 0x80 are negative, so one test catches
     * control characters and non-ASCII together. */
    __m128i m =
        _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, bs)),
                     _mm_cmplt_epi8(v, sp));
    int mask = _mm_movemask_epi8(m);
    if (mask)
      return p + __builtin_ctz((unsigned)mask);
    p += 16;
  }
#endif
  while (p < end) {
    unsigned char ch = (unsigned char)*p;
    if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x80)
      return p;
    p++;
  }
  return p;
}

/* The error for a byte at p that begins no valid UTF-8 sequence. */
static void bad_utf8(jparser *P, const char *p) {
  set_err(P, p, "invalid UTF-8 byte 0x%02x in a string: text must be UTF-8",
          (unsigned char)*p);
}

/* Parse a string at P->p (on the opening quote). */
static int parse_string(jparser *P, const char **out, uint32_t *out_len,
                        int need_nul) {
  const char *start = ++P->p, *end = P->end;
  const char *p = start;
  /* Fast path: no escapes. */
  for (;;) {
    p = scan_plain(p, end);
    if (p >= end) {
      set_err(P, start - 1, "a string is not terminated (missing '\"')");
      return -1;
    }
    unsigned char ch = (unsigned char)*p;
    if (ch == '"') {
      size_t n = (size_t)(p - start);
      if (n > UINT32_MAX) {
        set_err(P, start, "a string is longer than 4 GiB");
        return -1;
      }
      P->p = p + 1;
      if (need_nul) {
        char *d = mn__arena_strndup(P->a, start, n);
        if (!d) {
          oom(P);
          return -1;
        }
        *out = d;
      } else {
        *out = start;
      }
      *out_len = (uint32_t)n;
      return 0;
    }
    if (ch >= 0x80) {
      int k = utf8_seq((const unsigned char *)p, (const unsigned char *)end);
      if (!k) {
        bad_utf8(P, p);
        return -1;
      }
      p += k;
      continue;
    }
    if (ch < 0x20) {
      set_err(P, p,
              "control character 0x%02x inside a string must be escaped "
              "(e.g. \\n, \\u%04x)",
              ch, ch);
      return -1;
    }
    break; /* backslash: slow path */
  }
  /* Slow path: copy with unescaping. The result is never longer than the
   * source. */
  const char *close = p;
  {
    /* Find the closing quote to size the copy. */
    const char *q = p;
    for (;;) {
      q = scan_plain(q, end);
      if (q >= end) {
        set_err(P, start - 1, "a string is not terminated (missing '\"')");
        return -1;
      }
      if (*q == '"')
        break;
      if (*q == '\\')
        q += 2;
      else
        q++;
    }
    close = q;
  }
  char *d = mn__arena_alloc(P->a, (size_t)(close - start) + 1);
  if (!d) {
    oom(P);
    return -1;
  }
  size_t n = (size_t)(p - start);
  memcpy(d, start, n);
  while (p < close) {
    unsigned char ch = (unsigned char)*p;
    if (ch == '\\') {
      p++;
      char e = p < end ? *p : 0;
      if ((unsigned char)e < 128 && unesc[(unsigned char)e]) {
        d[n++] = unesc[(unsigned char)e];
        p++;
        continue;
      }
      if (e != 'u') {
        set_err(P, p - 1, "invalid escape '\\%c' in a string",
                e >= 0x20 && e < 0x7f ? e : '?');
        return -1;
      }
      uint32_t cp = 0;
      for (int i = 1; i <= 4; i++) {
        int h = p + i < end ? hexval(p[i]) : -1;
        if (h < 0) {
          set_err(P, p - 1, "\\u must be followed by 4 hex digits");
          return -1;
        }
        cp = cp * 16 + (uint32_t)h;
      }
      p += 5;
      if (cp >= 0xd800 && cp <= 0xdbff) {
        uint32_t lo = 0;
        int ok = p + 6 <= end && p[0] == '\\' && p[1] == 'u';
        for (int i = 2; ok && i < 6; i++) {
          int h = hexval(p[i]);
          if (h < 0)
            ok = 0;
          else
            lo = lo * 16 + (uint32_t)h;
        }
        if (!ok || lo < 0xdc00 || lo > 0xdfff) {
          set_err(P, p - 6,
                  "\\u%04x is a high surrogate without its low half: "
                  "text must be valid Unicode",
                  cp);
          return -1;
        }
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        p += 6;
      } else if (cp >= 0xdc00 && cp <= 0xdfff) {
        set_err(P, p - 6,
                "\\u%04x is a lone low surrogate: text must be valid "
                "Unicode",
                cp);
        return -1;
      }
      n += put_utf8(d + n, cp);
      continue;
    }
    if (ch >= 0x80) {
      int k = utf8_seq((const unsigned char *)p, (const unsigned char *)end);
      if (!k) {
        bad_utf8(P, p);
        return -1;
      }
      memcpy(d + n, p, (size_t)k);
      n += (size_t)k;
      p += k;
      continue;
    }
    if (ch < 0x20) {
      set_err(P, p,
              "control character 0x%02x inside a string must be "
              "escaped",
              ch);
      return -1;
    }
    d[n++] = (char)ch;
    p++;
  }
  d[n] = '\0';
  P->p = close + 1;
  *out = d;
  *out_len = (uint32_t)n;
  return 0;
}

static int parse_value(jparser *P, mn__jv *v);

/* Apply the divisions parse_number deferred, for nums[from..]. */
static void finish_divs(jparser *P, size_t from) {
  double *d = (double *)P->nums.p;
  const int8_t *q = (const int8_t *)P->divs.p;
  for (size_t i = from; i < P->nums.len; i++)
    if (q[i])
      d[i] /= pow10_exact[q[i]];
  if (P->divs.len > from)
    memset((int8_t *)P->divs.p + from, 0, P->divs.len - from);
}

/* Make room for n more elements on a stack. */
static int stack_reserve(jstack *st, size_t n) {
  if (st->len + n <= st->cap)
    return 0;
  size_t nc = st->cap ? st->cap * 2 : 256;
  while (nc < st->len + n)
    nc *= 2;
  void *np = realloc(st->p, nc * st->elem);
  if (!np)
    return -1;
  st->p = np;
  st->cap = nc;
  return 0;
}

/* Bit i set when p[i] is ',' or ']', for 64 bytes (SSE2, part of the
 * x86-64 baseline). */
static inline uint64_t separators64(const char *p) {
#if defined(__SSE2__)
  const __m128i comma = _mm_set1_epi8(','), close = _mm_set1_epi8(']');
  uint64_t m = 0;
  for (int k = 0; k < 4; k++) {
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * k));
    __m128i hit =
        _mm_or_si128(_mm_cmpeq_epi8(v, comma), _mm_cmpeq_epi8(v, close));
    m |= (uint64_t)(uint16_t)_mm_movemask_epi8(hit) << (16 * k);
  }
  return m;
#else
  uint64_t m = 0;
  for (int i = 0; i < 64; i++)
    m |= (uint64_t)(p[i] == ',' || p[i] == ']') << i;
  return m;
#endif
}

/* The AVX-512 number code (json_avx512.c), where the CPU has every
 * extension it is compiled for (the _avx512.c flags in CMakeLists.txt);
 * chosen once. */
static int nums_simd = -1;

static int nums_simd_on(void) {
  int on = __atomic_load_n(&nums_simd, __ATOMIC_RELAXED);
  if (on < 0) {
    on = mn__fmt_have_avx512(); /* the same extensions */
    __atomic_store_n(&nums_simd, on, __ATOMIC_RELAXED);
  }
  return on;
}

int mn__json_simd_numbers(int on) {
  int was = nums_simd_on();
  if (on >= 0)
    __atomic_store_n(&nums_simd, on && mn__fmt_have_avx512(), __ATOMIC_RELAXED);
  return was;
}

/*
 * Numbers of an array written without spaces ("0.5,-1.25,3]"), many at a
 * time. Read one by one, each number's start waits on the end of the one
 * before, a chain of dependent loads and scans; here the separators of 64
 * bytes are found at once, so every number's span is known in advance and
 * the numbers of a block are read together: 8 at a time by the AVX-512
 * code where there is one, else one by one with number_fast, whose
 * instructions for several numbers overlap. A span is taken only when it
 * is exactly one number of number_fast's form whose value needs no
 * strtod; at the first that is not, the run stops and the general code
 * goes on from the separator before it. Appends to P->nums / P->divs as
 * parse_array does; returns how many, with P->p on the separator after
 * the last one (',' or ']'), or 0 with P->p unchanged.
 */
static size_t number_run(jparser *P) {
  enum { MAX_SPANS = 128 };
  const char *start = P->p, *end = P->end, *c = P->p;
  const int simd = nums_simd_on();
  size_t n = 0;
  for (;;) {
    /* The spans of up to MAX_SPANS numbers, found block by block; a span
     * may begin in the block before. At least 48 readable bytes follow
     * each start. */
    const char *s0[MAX_SPANS + 64], *s1[MAX_SPANS + 64];
    size_t ns = 0;
    int closed = 0, more = 1;
    while (ns < MAX_SPANS) {
      if (end - c < 64 + 48) {
        more = 0;
        break;
      }
      for (uint64_t sep = separators64(c); sep; sep &= sep - 1) {
        const char *at = c + __builtin_ctzll(sep);
        s0[ns] = start;
        s1[ns++] = at;
        start = at + 1;
        if (*at == ']') {
          closed = 1;
          break;
        }
      }
      if (closed)
        break;
      c += 64;
      /* No number of the fast form is this long: something else is
       * here. */
      if (c - start > 40) {
        more = 0;
        break;
      }
    }
    if (stack_reserve(&P->nums, ns) || stack_reserve(&P->divs, ns))
      break; /* the general code reports the lack of memory */
    double *nums = (double *)P->nums.p + P->nums.len;
    int8_t *divs = (int8_t *)P->divs.p + P->divs.len;
    size_t k = 0;
    while (k < ns) {
      if (simd) {
        size_t got = mn__json_nums_avx512(s0 + k, s1 + k, ns - k, nums + k);
        memset(divs + k, 0, got);
        k += got;
        if (k == ns)
          break;
      }
      const char *next;
      int neg, nd, frac, is_int;
      uint64_t m;
      if (!number_fast(s0[k], &next, &neg, &m, &nd, &frac, &is_int) ||
          next != s1[k] || m > (1ull << 53)) {
        /* Not ours: the general code reads it, from its separator. */
        P->nums.len += k;
        P->divs.len += k;
        n += k;
        if (n)
          P->p = s0[k] - 1;
        return n;
      }
      double d = (double)m;
      nums[k] = neg ? -d : d;
      divs[k] = (int8_t)(m ? frac : 0); /* 10^-frac, applied later */
      k++;
    }
    P->nums.len += k;
    P->divs.len += k;
    n += k;
    if (closed) {
      P->p = s1[ns - 1];
      return n;
    }
    if (!more)
      break;
  }
  if (n)
    P->p = start - 1;
  return n;
}

static int expect_lit(jparser *P, const char *lit, size_t n) {
  if ((size_t)(P->end - P->p) < n || memcmp(P->p, lit, n) != 0) {
    char b[24];
    set_err(P, P->p, "unexpected %s: expected a JSON value",
            found(P, P->p, b, 24));
    return -1;
  }
  P->p += n;
  return 0;
}

static int parse_array(jparser *P, mn__jv *v) {
  const char *open = P->p++;
  size_t base_items = P->items.len, base_nums = P->nums.len;
  int packed = 1;
  uint32_t count = 0;
  skip_ws(P);
  if (P->p < P->end && *P->p == ']') {
    P->p++;
    v->type = MN__J_ARR;
    v->flags = MN__JF_PACKED;
    v->n = 0;
    v->u.nums = NULL;
    return 0;
  }
  for (;;) {
    skip_ws(P);
    const char *vs = P->p;
    if (packed && vs < P->end && (*vs == '-' || (unsigned)(*vs - '0') <= 9)) {
      size_t run = number_run(P);
      if (run) {
        if (run >= UINT32_MAX - count) {
          set_err(P, vs, "an array has too many items");
          return -1;
        }
        count += (uint32_t)run;
        goto separator;
      }
      double d;
      int is_int;
      int8_t dv;
      if (parse_number(P, &d, &is_int, &dv))
        return -1;
      double *slot = stack_push(P, &P->nums);
      int8_t *ds = stack_push(P, &P->divs);
      if (!slot || !ds) {
        oom(P);
        return -1;
      }
      *slot = d;
      *ds = dv;
    } else {
      if (packed) {
        /* Unpack the numbers read so far into items. */
        packed = 0;
        finish_divs(P, base_nums);
        for (size_t i = base_nums; i < P->nums.len; i++) {
          mn__jv *it = stack_push(P, &P->items);
          if (!it) {
            oom(P);
            return -1;
          }
          memset(it, 0, sizeof *it);
          it->type = MN__J_NUM;
          it->u.num = ((double *)P->nums.p)[i];
          double t = it->u.num;
          it->flags = (t == floor(t) && fabs(t) < 9.007199254740992e15)
                          ? MN__JF_INT
                          : 0;
        }
        P->nums.len = base_nums;
        P->divs.len = base_nums;
      }
      mn__jv item;
      if (parse_value(P, &item))
        return -1;
      mn__jv *it = stack_push(P, &P->items);
      if (!it) {
        oom(P);
        return -1;
      }
      *it = item;
    }
    if (++count == UINT32_MAX) {
      set_err(P, vs, "an array has too many items");
      return -1;
    }
  separator:
    skip_ws(P);
    if (P->p < P->end && *P->p == ',') {
      P->p++;
      continue;
    }
    if (P->p < P->end && *P->p == ']') {
      P->p++;
      break;
    }
    char b[24];
    set_err(P, P->p,
            "expected ',' or ']' after an array item (the array opened at "
            "byte %zu), found %s",
            (size_t)(open - P->s), found(P, P->p, b, 24));
    return -1;
  }
  v->type = MN__J_ARR;
  v->n = count;
  void *taken;
  if (packed) {
    finish_divs(P, base_nums);
    v->flags = MN__JF_PACKED;
    taken = v->u.nums = stack_take(P, &P->nums, base_nums);
    P->divs.len = base_nums;
  } else {
    v->flags = 0;
    taken = v->u.items = stack_take(P, &P->items, base_items);
  }
  if (!taken) {
    oom(P);
    return -1;
  }
  return 0;
}

static int parse_object(jparser *P, mn__jv *v) {
  const char *open = P->p++;
  size_t base = P->mems.len;
  uint32_t count = 0;
  skip_ws(P);
  if (P->p < P->end && *P->p == '}') {
    P->p++;
    v->type = MN__J_OBJ;
    v->n = 0;
    v->u.mem = NULL;
    return 0;
  }
  for (;;) {
    skip_ws(P);
    if (P->p >= P->end || *P->p != '"') {
      char b[24];
      set_err(P, P->p,
              "expected a member name in double quotes (the object opened "
              "at byte %zu), found %s",
              (size_t)(open - P->s), found(P, P->p, b, 24));
      return -1;
    }
    mn__jmember m;
    if (parse_string(P, &m.key, &m.klen, 1))
      return -1;
    skip_ws(P);
    if (P->p >= P->end || *P->p != ':') {
      char b[24];
      set_err(P, P->p, "expected ':' after the member name \"%.40s\", found %s",
              m.key, found(P, P->p, b, 24));
      return -1;
    }
    P->p++;
    skip_ws(P);
    if (parse_value(P, &m.val))
      return -1;
    mn__jmember *slot = stack_push(P, &P->mems);
    if (!slot) {
      oom(P);
      return -1;
    }
    *slot = m;
    count++;
    skip_ws(P);
    if (P->p < P->end && *P->p == ',') {
      P->p++;
      continue;
    }
    if (P->p < P->end && *P->p == '}') {
      P->p++;
      break;
    }
    char b[24];
    set_err(P, P->p,
            "expected ',' or '}' after the member \"%.40s\" (the object "
            "opened at byte %zu), found %s",
            m.key, (size_t)(open - P->s), found(P, P->p, b, 24));
    return -1;
  }
  v->type = MN__J_OBJ;
  v->n = count;
  v->u.mem = stack_take(P, &P->mems, base);
  if (!v->u.mem) {
    oom(P);
    return -1;
  }
  return 0;
}

static int parse_value(jparser *P, mn__jv *v) {
  skip_ws(P);
  memset(v, 0, sizeof *v);
  const char *start = P->p;
  v->src = start;
  if (start >= P->end) {
    set_err(P, start, "unexpected end of the message: expected a value");
    return -1;
  }
  int rc = 0;
  switch (*start) {
  case '{':
  case '[':
    if (++P->depth > P->max_depth) {
      P->err->depth_exceeded = 1;
      set_err(P, start,
              "the message nests arrays and objects more than %d levels "
              "deep",
              P->max_depth);
      return -1;
    }
    rc = *start == '{' ? parse_object(P, v) : parse_array(P, v);
    P->depth--;
    break;
  case '"': {
    v->type = MN__J_STR;
    rc = parse_string(P, &v->u.str, &v->n, 0);
    break;
  }
  case 't':
    v->type = MN__J_BOOL;
    v->u.b = 1;
    rc = expect_lit(P, "true", 4);
    break;
  case 'f':
    v->type = MN__J_BOOL;
    v->u.b = 0;
    rc = expect_lit(P, "false", 5);
    break;
  case 'n':
    v->type = MN__J_NULL;
    rc = expect_lit(P, "null", 4);
    break;
  default:
    if (*start == '-' || (unsigned)(*start - '0') <= 9) {
      int is_int;
      v->type = MN__J_NUM;
      rc = parse_number(P, &v->u.num, &is_int, NULL);
      if (is_int)
        v->flags = MN__JF_INT;
    } else {
      char b[24];
      set_err(P, start, "unexpected %s: expected a JSON value",
              found(P, start, b, 24));
      rc = -1;
    }
  }
  v->src_len = (size_t)(P->p - start);
  return rc;
}

mn__jv *mn__json_parse(mn__arena *a, const char *text, size_t len,
                       int max_depth, mn__jerr *err) {
  memset(err, 0, sizeof *err);
  jparser P = {.s = text,
               .p = text,
               .end = text + len,
               .a = a,
               .max_depth = max_depth > 0 ? max_depth : 1,
               .err = err};
  P.items.elem = sizeof(mn__jv);
  P.mems.elem = sizeof(mn__jmember);
  P.nums.elem = sizeof(double);
  P.divs.elem = 1;
  mn__jv *root = mn__arena_alloc(a, sizeof *root);
  if (!root) {
    snprintf(err->msg, sizeof err->msg, "out of memory");
    return NULL;
  }
  /* A UTF-8 byte order mark is tolerated, as RFC 8259 allows. */
  if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
    P.p += 3;
  int rc = parse_value(&P, root);
  if (!rc) {
    skip_ws(&P);
    if (P.p < P.end) {
      char b[24];
      set_err(&P, P.p,
              "unexpected %s after the end of the JSON value: send one "
              "value per message",
              found(&P, P.p, b, 24));
      rc = -1;
    }
  }
  free(P.items.p);
  free(P.mems.p);
  free(P.nums.p);
  free(P.divs.p);
  return rc ? NULL : root;
}

char *mn__json_join_literals(mn__arena *a, const char *text) {
  size_t n = strlen(text);
  char *o = mn__arena_alloc(a, n + 1);
  if (!o)
    return NULL;
  size_t k = 0;
  int in_str = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = text[i];
    if (in_str) {
      if (ch == '\\' && i + 1 < n) {
        o[k++] = ch;
        o[k++] = text[++i];
        continue;
      }
      if (ch == '"') {
        size_t j = i + 1;
        while (j < n && (text[j] == ' ' || text[j] == '\n' || text[j] == '\t'))
          j++;
        if (j < n && text[j] == '"') {
          i = j; /* "ab" "cd" -> "abcd": stay inside the string */
          continue;
        }
        in_str = 0;
      }
      o[k++] = ch;
      continue;
    }
    if (ch == '"')
      in_str = 1;
    o[k++] = ch;
  }
  o[k] = '\0';
  return o;
}

const mn__jv *mn__jobj_get(const mn__jv *o, const char *key) {
  if (!o || o->type != MN__J_OBJ)
    return NULL;
  size_t kl = strlen(key);
  for (uint32_t i = o->n; i-- > 0;) {
    const mn__jmember *m = &o->u.mem[i];
    if (m->klen == kl && memcmp(m->key, key, kl) == 0)
      return &m->val;
  }
  return NULL;
}

const mn__jv *mn__jarr_at(const mn__jv *a, uint32_t i, mn__jv *tmp) {
  if (!a || a->type != MN__J_ARR || i >= a->n)
    return NULL;
  if (!(a->flags & MN__JF_PACKED))
    return &a->u.items[i];
  memset(tmp, 0, sizeof *tmp);
  tmp->type = MN__J_NUM;
  tmp->u.num = a->u.nums[i];
  double t = tmp->u.num;
  tmp->flags =
      (t == floor(t) && fabs(t) < 9.007199254740992e15) ? MN__JF_INT : 0;
  return tmp;
}

bool mn__jstr_eq(const mn__jv *v, const char *s) {
  if (!v || v->type != MN__J_STR)
    return false;
  size_t n = strlen(s);
  return v->n == n && memcmp(v->u.str, s, n) == 0;
}

const char *mn__jtype_phrase(const mn__jv *v) {
  if (!v)
    return "nothing";
  switch (v->type) {
  case MN__J_NULL:
    return "null";
  case MN__J_BOOL:
    return "a boolean";
  case MN__J_NUM:
    return "a number";
  case MN__J_STR:
    return "a string";
  case MN__J_ARR:
    return "an array";
  default:
    return "an object";
  }
}

const char *mn__jv_brief(const mn__jv *v, char *buf, size_t len) {
  if (!v) {
    snprintf(buf, len, "nothing");
    return buf;
  }
  switch (v->type) {
  case MN__J_NULL:
    snprintf(buf, len, "null");
    break;
  case MN__J_BOOL:
    snprintf(buf, len, "%s", v->u.b ? "true" : "false");
    break;
  case MN__J_NUM: {
    char t[40];
    size_t n = mn__fmt_f64(t, v->u.num);
    snprintf(buf, len, "%.*s", (int)n, t);
    break;
  }
  case MN__J_STR: {
    /* Cut at a character boundary so the message stays valid UTF-8. */
    size_t n = v->n, lim = len > 16 ? len - 16 : 1;
    if (lim > 48)
      lim = 48;
    int cut = 0;
    if (n > lim) {
      n = lim;
      while (n > 0 && ((unsigned char)v->u.str[n] & 0xc0) == 0x80)
        n--;
      cut = 1;
    }
    /* Control characters (a NUL above all, which would end the text)
     * are shown as their JSON escapes; whole characters only. */
    if (len < 8) {
      snprintf(buf, len, "%s", "\"\"");
      break;
    }
    size_t k = 0;
    buf[k++] = '"';
    for (size_t i = 0; i < n;) {
      unsigned char ch = (unsigned char)v->u.str[i];
      size_t cl = ch < 0xc0 ? 1 : ch < 0xe0 ? 2 : ch < 0xf0 ? 3 : 4;
      if (cl > n - i)
        cl = n - i;
      if (k + (ch < 0x20 ? 6 : cl) + 5 > len) {
        cut = 1;
        break;
      }
      if (ch < 0x20) {
        k += (size_t)snprintf(buf + k, len - k, "\\u%04x", ch);
      } else {
        memcpy(buf + k, v->u.str + i, cl);
        k += cl;
      }
      i += cl;
    }
    snprintf(buf + k, len - k, "%s\"", cut ? "..." : "");
    break;
  }
  case MN__J_ARR:
    snprintf(buf, len, "an array of %u item%s", v->n, v->n == 1 ? "" : "s");
    break;
  default:
    snprintf(buf, len, "an object with %u member%s", v->n,
             v->n == 1 ? "" : "s");
  }
  return buf;
}

/* ========================================================================
 * Number formatting
 * ====================================================================== */

/* 10^k as doubles for k in [-60, 60]: exact for 0..22, correctly rounded
 * elsewhere (the compiler rounds each literal as strtod would). */
const double mn__p10_tab[121] = {
    1e-60, 1e-59, 1e-58, 1e-57, 1e-56, 1e-55, 1e-54, 1e-53, 1e-52, 1e-51, 1e-50,
    1e-49, 1e-48, 1e-47, 1e-46, 1e-45, 1e-44, 1e-43, 1e-42, 1e-41, 1e-40, 1e-39,
    1e-38, 1e-37, 1e-36, 1e-35, 1e-34, 1e-33, 1e-32, 1e-31, 1e-30, 1e-29, 1e-28,
    1e-27, 1e-26, 1e-25, 1e-24, 1e-23, 1e-22, 1e-21, 1e-20, 1e-19, 1e-18, 1e-17,
    1e-16, 1e-15, 1e-14, 1e-13, 1e-12, 1e-11, 1e-10, 1e-9,  1e-8,  1e-7,  1e-6,
    1e-5,  1e-4,  1e-3,  1e-2,  1e-1,  1e0,   1e1,   1e2,   1e3,   1e4,   1e5,
    1e6,   1e7,   1e8,   1e9,   1e10,  1e11,  1e12,  1e13,  1e14,  1e15,  1e16,
    1e17,  1e18,  1e19,  1e20,  1e21,  1e22,  1e23,  1e24,  1e25,  1e26,  1e27,
    1e28,  1e29,  1e30,  1e31,  1e32,  1e33,  1e34,  1e35,  1e36,  1e37,  1e38,
    1e39,  1e40,  1e41,  1e42,  1e43,  1e44,  1e45,  1e46,  1e47,  1e48,  1e49,
    1e50,  1e51,  1e52,  1e53,  1e54,  1e55,  1e56,  1e57,  1e58,  1e59,  1e60};

static inline double p10(int k) {
  return mn__p10_tab[k + 60];
}

static const char digits2[] = "00010203040506070809"
                              "10111213141516171819"
                              "20212223242526272829"
                              "30313233343536373839"
                              "40414243444546474849"
                              "50515253545556575859"
                              "60616263646566676869"
                              "70717273747576777879"
                              "80818283848586878889"
                              "90919293949596979899";

/* Decimal digits of m (m > 0) into o; returns the count. The count is
 * found first, so the digits go straight to their places, two at a time. */
static int utoa_digits(uint64_t m, char *o) {
  int n = 1;
  while (n < 20 && m >= mn__pow10_u64[n])
    n++;
  char *e = o + n;
  while (m >= 100) {
    unsigned r = (unsigned)(m % 100);
    m /= 100;
    e -= 2;
    memcpy(e, digits2 + 2 * r, 2);
  }
  if (m >= 10) {
    e -= 2;
    memcpy(e, digits2 + 2 * m, 2);
  } else {
    *--e = (char)('0' + m);
  }
  return n;
}

/* Write m * 10^q (m > 0) much as JavaScript prints numbers: plain for
 * decimal exponents in [-6, 16), otherwise d.ddde+-x, so that a big
 * integral value never looks like an integer too large for int64
 * parsers. At most 22 bytes. */
static size_t fmt_decimal(char *o, int neg, uint64_t m, int q) {
  while (m % 10 == 0) {
    m /= 10;
    q++;
  }
  char d[24];
  int n = utoa_digits(m, d);
  int x = q + n - 1; /* scientific exponent */
  size_t k = 0;
  if (neg)
    o[k++] = '-';
  if (x >= -6 && x < 16) {
    if (q >= 0) {
      memcpy(o + k, d, (size_t)n);
      k += (size_t)n;
      for (int i = 0; i < q; i++)
        o[k++] = '0';
    } else if (x >= 0) {
      int ip = n + q; /* digits before the point */
      memcpy(o + k, d, (size_t)ip);
      k += (size_t)ip;
      o[k++] = '.';
      memcpy(o + k, d + ip, (size_t)(n - ip));
      k += (size_t)(n - ip);
    } else {
      o[k++] = '0';
      o[k++] = '.';
      for (int i = 0; i < -x - 1; i++)
        o[k++] = '0';
      memcpy(o + k, d, (size_t)n);
      k += (size_t)n;
    }
  } else {
    o[k++] = d[0];
    if (n > 1) {
      o[k++] = '.';
      memcpy(o + k, d + 1, (size_t)(n - 1));
      k += (size_t)(n - 1);
    }
    k = mn__fmt_exp(o, k, x);
  }
  return k;
}

/* The value of x as it is: a product passed through here is rounded on
 * its own, never fused with the addition that follows into one FMA (which
 * GCC's default -ffp-contract=fast does where FMA is enabled, as with
 * -march=native), so that every build rounds as fmt_avx512.c does. */
static inline double fp_fence(double x) {
  __asm__("" : "+x"(x));
  return x;
}

/*
 * Shortest round-trip decimal of a float32, in integers.
 *
 * Scale the value and the interval of reals that round to it (halfway to
 * each neighbour) by 10^k so the value has 9 digits before the point: 9
 * significant digits always identify a float32, and the interval is then at
 * least 6 units wide. The double arithmetic is exact to about 1e-7 units,
 * so the interval is shrunk by 1e-5 units and every integer left inside is
 * a decimal that reads back as the float. The most trailing zeros any of
 * them has gives the shortest form (if no multiple of 10^j fits, no
 * multiple of 10^(j+1) does); among those, the one nearest the value.
 * The interval is taken open, so a decimal lying exactly halfway to a
 * neighbour (which would read back by ties-to-even) is not used: then the
 * result is longer than the shortest (rare: large integers and exact
 * binary fractions).
 *
 * fmt_avx512.c computes the same decimal for 8 numbers at a time (the
 * list of a JSON row); the two must stay in step, and test_fmt_f32
 * compares them.
 */
size_t mn__fmt_f32(char *out, float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  uint32_t mag = bits & 0x7fffffffu;
  if (mag >= 0x7f800000u) {
    memcpy(out, "null", 4);
    return 4;
  }
  if (mag == 0) {
    if (bits >> 31) {
      memcpy(out, "-0.0", 4);
      return 4;
    }
    out[0] = '0';
    return 1;
  }
  int neg = (int)(bits >> 31);
  float a, up, dn;
  uint32_t ub = mag + 1, db = mag - 1;
  memcpy(&a, &mag, 4);
  memcpy(&up, &ub, 4);
  memcpy(&dn, &db, 4);
  double v = a;
  double hi = ub < 0x7f800000u ? ((double)a + (double)up) * 0.5
                               : v + (v - (double)dn) * 0.5;
  double lo = ((double)a + (double)dn) * 0.5;
  /* Decimal exponent: estimate from the binary one (78913 / 2^18 is
   * log10(2)), then correct. */
  int e2 = (int)(mag >> 23) - 127;
  if ((mag >> 23) == 0) /* subnormal */
    e2 = -127 - __builtin_clz(mag) + 9;
  int e10 = (e2 * 78913) >> 18;
  if (v >= p10(e10 + 1))
    e10++;
  else if (v < p10(e10))
    e10--;
  int k = 8 - e10;
  double sc = p10(k);
  double vs = v * sc;
  double los = fp_fence(lo * sc) + 1e-5, his = fp_fence(hi * sc) - 1e-5;
  /* Integers strictly inside; all below 2^32 (vs < 10^9). */
  uint32_t L = (uint32_t)los + 1;
  uint32_t H = (uint32_t)his;
  if ((double)H == his)
    H--;
  if (L > H) {
    /* Not expected; printf is exact. */
    char b[32];
    int n = snprintf(b, sizeof b, "%.9g", (double)f);
    memcpy(out, b, (size_t)n);
    return (size_t)n;
  }
  /* Constant divisors, so each step is a multiplication. */
  int j = 0;
#define MN__STEP(P)                                                            \
  if ((L + (P)-1) / (P) * (P) > H)                                             \
    goto found;                                                                \
  j++;
  MN__STEP(10u)
  MN__STEP(100u)
  MN__STEP(1000u)
  MN__STEP(10000u)
  MN__STEP(100000u)
  MN__STEP(1000000u)
  MN__STEP(10000000u)
  MN__STEP(100000000u)
  MN__STEP(1000000000u)
#undef MN__STEP
found:;
  uint64_t p = mn__pow10_u64[j];
  uint64_t r = (uint64_t)(fp_fence(vs * p10(-j)) + 0.5) * p;
  if (r < L)
    r = ((uint64_t)L + p - 1) / p * p;
  if (r > H)
    r = H / p * p;
  return fmt_decimal(out, neg, r / p, j - k);
}

size_t mn__fmt_f32_list_scalar(char *out, const float *x, size_t n) {
  char *o = out;
  for (size_t i = 0; i < n; i++) {
    if (i)
      *o++ = ',';
    o += mn__fmt_f32(o, x[i]);
  }
  return (size_t)(o - out);
}

/* The AVX-512 list where the CPU has every extension fmt_avx512.c is
 * compiled for (the _avx512.c flags in CMakeLists.txt), chosen once. */
static size_t (*fmt_list)(char *, const float *, size_t);
static pthread_once_t fmt_once = PTHREAD_ONCE_INIT;

static void fmt_pick(void) {
  fmt_list = mn__fmt_f32_list_scalar;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni") &&
      __builtin_cpu_supports("avx512vpopcntdq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2") &&
      __builtin_cpu_supports("popcnt"))
    fmt_list = mn__fmt_f32_list_avx512;
#endif
}

size_t mn__fmt_f32_list(char *out, const float *x, size_t n) {
  pthread_once(&fmt_once, fmt_pick);
  return fmt_list(out, x, n);
}

int mn__fmt_have_avx512(void) {
  pthread_once(&fmt_once, fmt_pick);
  return fmt_list != mn__fmt_f32_list_scalar;
}

size_t mn__fmt_f64(char *out, double d) {
  if (!isfinite(d)) {
    memcpy(out, "null", 4);
    return 4;
  }
  if (d == floor(d) && fabs(d) < 9.007199254740992e15) {
    char b[32];
    int n = snprintf(b, sizeof b, "%lld", (long long)d);
    if (d == 0 && signbit(d)) {
      memcpy(out, "-0.0", 4);
      return 4;
    }
    memcpy(out, b, (size_t)n);
    return (size_t)n;
  }
  char b[40];
  int n = 0;
  for (int prec = 15; prec <= 17; prec++) {
    n = snprintf(b, sizeof b, "%.*g", prec, d);
    if (strtod_c(b) == d)
      break;
  }
  /* printf follows the locale's decimal point; JSON needs '.'. */
  for (int i = 0; i < n; i++)
    if (b[i] == ',')
      b[i] = '.';
  memcpy(out, b, (size_t)n);
  return (size_t)n;
}

/* ========================================================================
 * Writer
 * ====================================================================== */
void mn__jw_init(mn__jw *w, size_t initial) {
  memset(w, 0, sizeof *w);
  w->first[0] = 1;
  if (initial) {
    w->buf = malloc(initial);
    if (w->buf)
      w->cap = initial;
    else
      w->oom = 1;
  }
}

void mn__jw_free(mn__jw *w) {
  free(w->buf);
  w->buf = NULL;
  w->len = w->cap = 0;
}

char *mn__jw_reserve(mn__jw *w, size_t n) {
  if (w->oom)
    return NULL;
  if (w->len + n > w->cap) {
    size_t nc = w->cap ? w->cap : 256;
    while (nc < w->len + n)
      nc *= 2;
    char *nb = realloc(w->buf, nc);
    if (!nb) {
      w->oom = 1;
      return NULL;
    }
    w->buf = nb;
    w->cap = nc;
  }
  return w->buf + w->len;
}

void mn__jw_reserve_exact(mn__jw *w, size_t n) {
  if (w->oom || w->len + n <= w->cap)
    return;
  char *nb = malloc(w->len + n);
  if (!nb) {
    w->oom = 1;
    return;
  }
  if (w->len)
    memcpy(nb, w->buf, w->len);
  free(w->buf);
  w->buf = nb;
  w->cap = w->len + n;
}

void mn__jw_bytes(mn__jw *w, const void *p, size_t n) {
  if (n == 0)
    return;
  char *d = mn__jw_reserve(w, n);
  if (d) {
    memcpy(d, p, n);
    w->len += n;
  }
}

static inline void put_c(mn__jw *w, char c) {
  char *d = mn__jw_reserve(w, 1);
  if (d) {
    *d = c;
    w->len++;
  }
}

/* Comma before a value in an array or before a key in an object. */
static inline void sep(mn__jw *w) {
  if (w->after_key) {
    w->after_key = 0;
    return;
  }
  if (!w->first[w->depth])
    put_c(w, ',');
  w->first[w->depth] = 0;
}

void mn__jw_value_begin(mn__jw *w) {
  sep(w);
}

static void open_level(mn__jw *w, char c, int obj) {
  sep(w);
  put_c(w, c);
  if (w->depth + 1 < MN__JW_MAX_DEPTH) {
    w->depth++;
    w->first[w->depth] = 1;
    w->in_obj[w->depth] = (uint8_t)obj;
  } else {
    w->oom = 1;
  }
}

void mn__jw_obj(mn__jw *w) {
  open_level(w, '{', 1);
}
void mn__jw_arr(mn__jw *w) {
  open_level(w, '[', 0);
}

void mn__jw_obj_end(mn__jw *w) {
  put_c(w, '}');
  if (w->depth > 0)
    w->depth--;
}

void mn__jw_arr_end(mn__jw *w) {
  put_c(w, ']');
  if (w->depth > 0)
    w->depth--;
}

static const char hexd[] = "0123456789abcdef";

void mn__jw_escape(mn__jw *w, const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s, *end = p + n;
  while (p < end) {
    const unsigned char *q =
        (const unsigned char *)scan_plain((const char *)p, (const char *)end);
    if (q > p)
      mn__jw_bytes(w, p, (size_t)(q - p));
    p = q;
    if (p >= end)
      break;
    unsigned ch = *p;
    if (ch >= 0x80) {
      int k = utf8_seq(p, end);
      if (k) {
        mn__jw_bytes(w, p, (size_t)k);
        p += k;
      } else {
        mn__jw_bytes(w, "\\ufffd", 6);
        p++;
      }
      continue;
    }
    char e[6] = {'\\', esc[ch]};
    size_t en = 2;
    if (!e[1]) {
      e[1] = 'u';
      e[2] = '0';
      e[3] = '0';
      e[4] = hexd[ch >> 4];
      e[5] = hexd[ch & 15];
      en = 6;
    }
    mn__jw_bytes(w, e, en);
    p++;
  }
}

void mn__jw_strn(mn__jw *w, const char *s, size_t n) {
  sep(w);
  put_c(w, '"');
  mn__jw_escape(w, s, n);
  put_c(w, '"');
}

void mn__jw_str(mn__jw *w, const char *s) {
  mn__jw_strn(w, s, strlen(s));
}

void mn__jw_strf(mn__jw *w, const char *fmt, ...) {
  char b[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b, sizeof b, fmt, ap);
  va_end(ap);
  if (n < 0)
    n = 0;
  if ((size_t)n >= sizeof b)
    n = sizeof b - 1;
  mn__jw_strn(w, b, (size_t)n);
}

void mn__jw_key(mn__jw *w, const char *k) {
  sep(w);
  put_c(w, '"');
  mn__jw_escape(w, k, strlen(k));
  put_c(w, '"');
  put_c(w, ':');
  w->after_key = 1;
}

void mn__jw_int(mn__jw *w, int64_t v) {
  sep(w);
  char b[24];
  if (v < 0) {
    put_c(w, '-');
    int n = utoa_digits((uint64_t)0 - (uint64_t)v, b);
    mn__jw_bytes(w, b, (size_t)n);
  } else if (v == 0) {
    put_c(w, '0');
  } else {
    int n = utoa_digits((uint64_t)v, b);
    mn__jw_bytes(w, b, (size_t)n);
  }
}

void mn__jw_uint(mn__jw *w, uint64_t v) {
  sep(w);
  char b[24];
  if (v == 0) {
    put_c(w, '0');
    return;
  }
  int n = utoa_digits(v, b);
  mn__jw_bytes(w, b, (size_t)n);
}

void mn__jw_double(mn__jw *w, double v) {
  sep(w);
  char b[40];
  size_t n = mn__fmt_f64(b, v);
  mn__jw_bytes(w, b, n);
}

void mn__jw_float(mn__jw *w, float v) {
  sep(w);
  char *d = mn__jw_reserve(w, 24);
  if (d)
    w->len += mn__fmt_f32(d, v);
}

void mn__jw_bool(mn__jw *w, bool v) {
  sep(w);
  if (v)
    mn__jw_bytes(w, "true", 4);
  else
    mn__jw_bytes(w, "false", 5);
}

void mn__jw_null(mn__jw *w) {
  sep(w);
  mn__jw_bytes(w, "null", 4);
}

void mn__jw_raw(mn__jw *w, const char *json, size_t n) {
  sep(w);
  mn__jw_bytes(w, json, n);
}

void mn__jw_value(mn__jw *w, const mn__jv *v) {
  switch (v->type) {
  case MN__J_NULL:
    mn__jw_null(w);
    break;
  case MN__J_BOOL:
    mn__jw_bool(w, v->u.b);
    break;
  case MN__J_NUM:
    if (v->src && v->src_len)
      mn__jw_raw(w, v->src, v->src_len);
    else
      mn__jw_double(w, v->u.num);
    break;
  case MN__J_STR:
    mn__jw_strn(w, v->u.str, v->n);
    break;
  case MN__J_ARR: {
    mn__jw_arr(w);
    mn__jv tmp;
    for (uint32_t i = 0; i < v->n; i++)
      mn__jw_value(w, mn__jarr_at(v, i, &tmp));
    mn__jw_arr_end(w);
    break;
  }
  default:
    mn__jw_obj(w);
    for (uint32_t i = 0; i < v->n; i++) {
      mn__jw_key(w, v->u.mem[i].key);
      mn__jw_value(w, &v->u.mem[i].val);
    }
    mn__jw_obj_end(w);
  }
}

static void indent_to(mn__jw *w, int n) {
  put_c(w, '\n');
  for (int i = 0; i < n; i++)
    put_c(w, ' ');
}

static int all_scalars(const mn__jv *v) {
  if (v->flags & MN__JF_PACKED)
    return 1;
  for (uint32_t i = 0; i < v->n; i++)
    if (v->u.items[i].type == MN__J_ARR || v->u.items[i].type == MN__J_OBJ)
      return 0;
  return 1;
}

/* Pretty printing writes raw bytes: the comma state is not used. */
void mn__jw_pretty(mn__jw *w, const mn__jv *v, int indent) {
  if (v->type == MN__J_ARR) {
    if (v->n == 0) {
      mn__jw_bytes(w, "[]", 2);
      return;
    }
    int inline_ = all_scalars(v);
    put_c(w, '[');
    mn__jv tmp;
    for (uint32_t i = 0; i < v->n; i++) {
      if (i)
        mn__jw_bytes(w, inline_ ? ", " : ",", inline_ ? 2 : 1);
      if (!inline_)
        indent_to(w, indent + 2);
      mn__jw_pretty(w, mn__jarr_at(v, i, &tmp), indent + 2);
    }
    if (!inline_)
      indent_to(w, indent);
    put_c(w, ']');
    return;
  }
  if (v->type == MN__J_OBJ) {
    if (v->n == 0) {
      mn__jw_bytes(w, "{}", 2);
      return;
    }
    put_c(w, '{');
    for (uint32_t i = 0; i < v->n; i++) {
      if (i)
        put_c(w, ',');
      indent_to(w, indent + 2);
      put_c(w, '"');
      mn__jw_escape(w, v->u.mem[i].key, v->u.mem[i].klen);
      mn__jw_bytes(w, "\": ", 3);
      mn__jw_pretty(w, &v->u.mem[i].val, indent + 2);
    }
    indent_to(w, indent);
    put_c(w, '}');
    return;
  }
  /* Scalars through the compact writer, then undo its comma state. */
  int d = w->depth, ak = w->after_key;
  uint8_t f = w->first[d];
  w->after_key = 1;
  mn__jw_value(w, v);
  w->depth = d;
  w->after_key = ak;
  w->first[d] = f;
}

void mn__jw_kstr(mn__jw *w, const char *k, const char *v) {
  mn__jw_key(w, k);
  mn__jw_str(w, v);
}

void mn__jw_kint(mn__jw *w, const char *k, int64_t v) {
  mn__jw_key(w, k);
  mn__jw_int(w, v);
}

void mn__jw_kdouble(mn__jw *w, const char *k, double v) {
  mn__jw_key(w, k);
  mn__jw_double(w, v);
}

void mn__jw_kbool(mn__jw *w, const char *k, bool v) {
  mn__jw_key(w, k);
  mn__jw_bool(w, v);
}

mn__jw_mark mn__jw_get_mark(const mn__jw *w) {
  mn__jw_mark m = {w->len, w->depth, w->first[w->depth], w->after_key};
  return m;
}

void mn__jw_rewind(mn__jw *w, mn__jw_mark m) {
  if (m.len <= w->len)
    w->len = m.len;
  w->depth = m.depth;
  w->first[m.depth] = m.first;
  w->after_key = m.after_key;
}
