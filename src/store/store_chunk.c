/*
 * store_chunk.c - chunks of stored vectors and their placement in the
 * tiers: L1 device memory (GPU backends only), L2 host memory, L3 disk
 * (LMDB only). Also the encoding of vectors into a collection's storage
 * dtype and back.
 *
 * DESIGN: every chunk is in exactly one tier and in that tier's LRU list
 * (most recently used first); s->tier_mu guards tier, buffers, pins, the
 * lists and the usage counters. A chunk is pinned while someone reads or
 * writes its buffer, and eviction skips pinned chunks, so a buffer is
 * never freed under a reader. Memory chunks may fill L2 only up to
 * MN_PRESSURE_RECOVERY_FRAC of its budget (so vectors alone never put
 * the store into recovery; working chunks may use the rest) and L1 up to
 * its budget. To make room, the least recently used unpinned chunks move
 * down (L1 -> L2 when there is room there, else L3; L2 -> L3). A search
 * brings a chunk up only at the expense of other collections' chunks that
 * it has not touched: evicting chunks of the collection being scanned
 * would only move the scan's own misses around (the classic LRU-on-a-scan
 * thrash), so a collection larger than a tier keeps a stable resident
 * part and reads the rest from below.
 *
 * Device out of memory lowers L1's ceiling (s->l1_cap) rather than
 * turning L1 off: the chunks are the only device memory the store can
 * give back, and what it gives back is what the device's work (a search's
 * queries and scores, the backend's workspace, other requests) lacked,
 * while a device that was short once keeps most of its chunks. A chunk
 * allocation that fails caps L1 at what it holds then (it grows no
 * further; a newer chunk may still take an older one's place). A search
 * that fails for lack of device memory (store_search.c finishes it on the
 * CPU) caps L1 at three quarters of what it holds and moves the least
 * recently used chunks down to fit (pinned ones when released), so a
 * device that stays short converges to the L1 size it can afford, and
 * the chunks moved down are read from L2 directly by the searches that
 * still fall back. The ceiling is lifted ST_L1_RETRY_S seconds after it
 * was last lowered (device memory that another process held may be free
 * again); if the device is still short, the next chunk allocation or
 * search finds out and lowers it again, at the cost of one fallback.
 */
#include "store/store_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Encoding.
 * ---------------------------------------------------------------------- */
void mn__st_decode_row(const st_coll *c, const void *codes, float scale,
                       float *out) {
  int64_t w = c->width;
  switch (c->dtype) {
  case MN_DTYPE_F32:
    memcpy(out, codes, sizeof(float) * (size_t)w);
    break;
  case MN_DTYPE_F16:
    if ((uintptr_t)codes % _Alignof(uint16_t) == 0) {
      mn_f16_to_f32_n(codes, out, (size_t)w);
    } else {
      /* Values read straight from LMDB pages need not be aligned. */
      uint16_t tmp[256];
      for (int64_t i = 0; i < w; i += 256) {
        int64_t m = w - i < 256 ? w - i : 256;
        memcpy(tmp, (const char *)codes + 2 * i, sizeof(uint16_t) * (size_t)m);
        mn_f16_to_f32_n(tmp, out + i, (size_t)m);
      }
    }
    break;
  case MN_DTYPE_I8:
    for (int64_t i = 0; i < w; i++)
      out[i] = (float)((const int8_t *)codes)[i] * scale;
    break;
  case MN_DTYPE_BIN:
    for (int64_t i = 0; i < w; i++)
      out[i] = (((const uint8_t *)codes)[i >> 3] >> (i & 7)) & 1 ? 1.0f : -1.0f;
    break;
  default:
    memset(out, 0, sizeof(float) * (size_t)w);
    break;
  }
}

mn_status mn__st_encode_rows(mn_store *s, const st_coll *c, const float *x,
                             int64_t n, void *codes, float *scales,
                             float *norms) {
  int64_t w = c->width;
  mn_tensor xt = mn_tensor_host((void *)x, MN_DTYPE_F32, n, w);
  mn_tensor ct = mn_tensor_host(codes, c->dtype, n, w);
  switch (c->dtype) {
  case MN_DTYPE_F32:
    if (codes != (const void *)x)
      memcpy(codes, x, sizeof(float) * (size_t)(n * w));
    break;
  case MN_DTYPE_F16:
    mn_f32_to_f16_n(x, codes, (size_t)(n * w));
    break;
  case MN_DTYPE_I8:
    MN__TRY(mn_backend_quantize(s->cpu, &xt, MN_QUANT_INT8, NULL, &ct, scales));
    break;
  case MN_DTYPE_BIN:
    MN__TRY(mn_backend_quantize(s->cpu, &xt, MN_QUANT_BINARY, NULL, &ct, NULL));
    break;
  default:
    return mn__set_error(MN_ERR_INVALID, "storage dtype %s is not supported",
                         mn_dtype_name(c->dtype));
  }
  if (c->dtype != MN_DTYPE_I8 && scales)
    for (int64_t i = 0; i < n; i++)
      scales[i] = 0.0f;
  if (!norms) /* the caller knows them */
    return MN_OK;
  /* The norm of each row as stored (decoded), which is what cosine and L2
   * need of the stored side. */
  if (c->dtype == MN_DTYPE_F32) {
    for (int64_t i = 0; i < n; i++)
      norms[i] = sqrtf(mn__st_dot(x + i * w, x + i * w, w));
    return MN_OK;
  }
  float *tmp = malloc(sizeof(float) * (size_t)w);
  if (!tmp)
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  for (int64_t i = 0; i < n; i++) {
    mn__st_decode_row(c, (const char *)codes + i * c->row_bytes,
                      scales ? scales[i] : 0.0f, tmp);
    norms[i] = sqrtf(mn__st_dot(tmp, tmp, w));
  }
  free(tmp);
  return MN_OK;
}

/* ------------------------------------------------------------------------
 * Chunk objects.
 * ---------------------------------------------------------------------- */
/* A chunk's row arrays and the chunk itself (its host and device images
 * already dropped, or never made). */
static void chunk_dealloc(st_chunk *ch) {
  mn_free(ch->seq);
  mn_free(ch->ts);
  mn_free(ch->sig);
  mn_free(ch->norm);
  mn_free(ch->chat);
  mn_free(ch->live_bits);
  mn_free(ch->scale);
  free(ch);
}

st_chunk *mn__st_chunk_new(st_coll *c) {
  mn_store *s = c->store;
  int64_t idx = c->n_chunks; /* publisher thread: no one else appends */
  if ((idx >> ST_SEG_BITS) >= ST_SEG_MAX)
    return NULL;
  if (!c->segs[idx >> ST_SEG_BITS]) {
    c->segs[idx >> ST_SEG_BITS] =
        calloc((size_t)1 << ST_SEG_BITS, sizeof(st_chunk *));
    if (!c->segs[idx >> ST_SEG_BITS])
      return NULL;
  }
  st_chunk *ch = calloc(1, sizeof *ch);
  if (!ch)
    return NULL;
  int32_t cap = (int32_t)s->opts.chunk_rows;
  ch->coll = c;
  ch->cap = cap;
  ch->seq = mn_malloc(sizeof(uint64_t) * (size_t)cap);
  ch->ts = mn_malloc(sizeof(double) * (size_t)cap);
  ch->sig = mn_malloc(sizeof(float) * (size_t)cap);
  ch->norm = mn_malloc(sizeof(float) * (size_t)cap);
  ch->chat = mn_malloc(sizeof(uint32_t) * (size_t)cap);
  ch->live_bits = mn_calloc((size_t)(cap + 63) / 64, sizeof(uint64_t));
  if (c->dtype == MN_DTYPE_I8)
    ch->scale = mn_malloc(sizeof(float) * (size_t)cap);
  if (!ch->seq || !ch->ts || !ch->sig || !ch->norm || !ch->chat ||
      !ch->live_bits || (c->dtype == MN_DTYPE_I8 && !ch->scale)) {
    chunk_dealloc(ch);
    return NULL;
  }
  ch->tier = -1; /* not placed yet */
  ch->index = idx;
  return ch;
}

/* Make a placed chunk visible to readers: into the directory, then the
 * count (release), so a reader that sees the count sees the chunk. */
void mn__st_chunk_link(st_coll *c, st_chunk *ch) {
  int64_t idx = ch->index;
  c->segs[idx >> ST_SEG_BITS][idx & ((1 << ST_SEG_BITS) - 1)] = ch;
  __atomic_store_n(&c->n_chunks, idx + 1, __ATOMIC_RELEASE);
}

static uint64_t host_bytes(const st_chunk *ch) {
  return (uint64_t)ch->cap * (uint64_t)ch->coll->row_bytes;
}

/* Device buffer: codes, then (int8) scales, then norms; 256-byte aligned
 * sections. */
static uint64_t dev_codes_bytes(const st_chunk *ch) {
  return (host_bytes(ch) + 255) & ~(uint64_t)255;
}
static uint64_t dev_scale_off(const st_chunk *ch) {
  return dev_codes_bytes(ch);
}
uint64_t mn__st_dev_scale_off(const st_chunk *ch) {
  return dev_scale_off(ch);
}
static uint64_t dev_norm_off(const st_chunk *ch) {
  return dev_codes_bytes(ch) +
         (ch->scale ? ((uint64_t)ch->cap * 4 + 255) & ~(uint64_t)255 : 0);
}
uint64_t mn__st_dev_norm_off(const st_chunk *ch) {
  return dev_norm_off(ch);
}
static uint64_t dev_bytes(const st_chunk *ch) {
  return dev_norm_off(ch) + (uint64_t)ch->cap * 4;
}

static void lru_unlink(mn_store *s, st_chunk *ch) {
  if (ch->tier < 0)
    return;
  if (ch->lru_prev)
    ch->lru_prev->lru_next = ch->lru_next;
  else
    s->lru_head[ch->tier] = ch->lru_next;
  if (ch->lru_next)
    ch->lru_next->lru_prev = ch->lru_prev;
  else
    s->lru_tail[ch->tier] = ch->lru_prev;
  ch->lru_prev = ch->lru_next = NULL;
  s->tier_chunks[ch->tier]--;
}

static void lru_push(mn_store *s, st_chunk *ch, int tier) {
  ch->tier = tier;
  ch->lru_prev = NULL;
  ch->lru_next = s->lru_head[tier];
  if (s->lru_head[tier])
    s->lru_head[tier]->lru_prev = ch;
  else
    s->lru_tail[tier] = ch;
  s->lru_head[tier] = ch;
  s->tier_chunks[tier]++;
}

/* As lru_push, but behind everything else in the tier (the first to go). */
static void lru_push_tail(mn_store *s, st_chunk *ch, int tier) {
  st_chunk *last = s->lru_tail[tier];
  if (!last) {
    lru_push(s, ch, tier);
    return;
  }
  ch->tier = tier;
  ch->lru_next = NULL;
  ch->lru_prev = last;
  last->lru_next = ch;
  s->lru_tail[tier] = ch;
  s->tier_chunks[tier]++;
}

static void lru_touch(mn_store *s, st_chunk *ch, uint64_t tick) {
  if (tick > ch->last_used)
    ch->last_used = tick;
  if (s->lru_head[ch->tier] == ch)
    return;
  int t = ch->tier;
  lru_unlink(s, ch);
  lru_push(s, ch, t);
}

#define ST_L1_RETRY_S 60.0

/* tier_mu held: lift L1's ceiling once it has stood ST_L1_RETRY_S. */
static void l1_cap_expire(mn_store *s) {
  if (s->l1_cap == UINT64_MAX || mn__st_now(s) - s->l1_cap_at < ST_L1_RETRY_S)
    return;
  MN__LOGI(ST_MOD,
           "lifting the L1 ceiling of %llu bytes that device out of memory "
           "set %.0f s ago: chunks may move to the device again",
           (unsigned long long)s->l1_cap, mn__st_now(s) - s->l1_cap_at);
  s->l1_cap = UINT64_MAX;
}

/* The limit memory chunks may fill a tier to (UINT64_MAX: none). */
static uint64_t chunk_limit(const mn_store *s, int tier) {
  if (tier == MN_TIER_HOST)
    return s->budget[MN_TIER_HOST] ? (uint64_t)(MN_PRESSURE_RECOVERY_FRAC *
                                                (double)s->budget[MN_TIER_HOST])
                                   : UINT64_MAX;
  uint64_t b = s->budget[tier] ? s->budget[tier] : UINT64_MAX;
  if (tier == MN_TIER_DEVICE && s->l1_cap < b)
    b = s->l1_cap;
  return b;
}

static uint64_t chunk_tier_bytes(const st_chunk *ch, int tier) {
  return tier == MN_TIER_DEVICE ? dev_bytes(ch) : host_bytes(ch);
}

/* Protection for a search: the chunks it has touched (last_used at least
 * its tick) and every chunk of the collection it scans (a scan would only
 * move its own misses around). */
typedef struct st_protect {
  uint64_t tick;
  const st_coll *coll;
} st_protect;

static int evictable(const st_chunk *ch, const st_protect *pr) {
  return ch->pins == 0 && ch->last_used < pr->tick && ch->coll != pr->coll;
}

static void demote(mn_store *s, st_chunk *ch, const st_protect *pr);
static const st_protect no_protect = {UINT64_MAX, NULL};

/* Move LRU chunks out of `tier` until `bytes` more fit under `limit`.
 * Returns 1 when they fit. Nothing moves unless enough can. */
static int make_room(mn_store *s, int tier, uint64_t bytes, uint64_t limit,
                     const st_protect *pr) {
  if (limit == UINT64_MAX)
    return 1;
  if (bytes > limit)
    return 0;
  if (s->used[tier] + bytes <= limit)
    return 1;
  uint64_t need = s->used[tier] + bytes - limit, can = 0;
  for (st_chunk *v = s->lru_tail[tier]; v && can < need; v = v->lru_prev)
    if (evictable(v, pr))
      can += chunk_tier_bytes(v, tier);
  if (can < need)
    return 0;
  while (s->used[tier] + bytes > limit) {
    st_chunk *v = s->lru_tail[tier];
    while (v && !evictable(v, pr))
      v = v->lru_prev;
    if (!v)
      return 0;
    demote(s, v, pr);
  }
  return 1;
}

static void set_host(mn_store *s, st_chunk *ch, void *buf) {
  ch->host = buf;
  s->used[MN_TIER_HOST] += host_bytes(ch);
}

static void drop_host(mn_store *s, st_chunk *ch) {
  if (ch->host) {
    mn_free(ch->host);
    ch->host = NULL;
    s->used[MN_TIER_HOST] -= host_bytes(ch);
  }
}

static void drop_dev(mn_store *s, st_chunk *ch) {
  if (ch->dev) {
    mn_backend_free(s->backend, ch->dev);
    ch->dev = NULL;
    s->used[MN_TIER_DEVICE] -= dev_bytes(ch);
    mn_account_add(MN_TIER_DEVICE, -(int64_t)dev_bytes(ch));
  }
}

/* Upload rows [from, to) (codes, scales, norms) of a host image. */
static mn_status upload_rows(mn_store *s, st_chunk *ch, const void *codes,
                             int32_t from, int32_t to) {
  if (to <= from)
    return MN_OK;
  uint64_t rb = (uint64_t)ch->coll->row_bytes;
  char *d = ch->dev;
  MN__TRY(mn_backend_upload(s->backend, d + from * rb,
                            (const char *)codes + from * rb,
                            (size_t)(to - from) * rb));
  if (ch->scale)
    MN__TRY(mn_backend_upload(s->backend, d + dev_scale_off(ch) + 4 * from,
                              ch->scale + from, 4 * (size_t)(to - from)));
  return mn_backend_upload(s->backend, d + dev_norm_off(ch) + 4 * from,
                           ch->norm + from, 4 * (size_t)(to - from));
}

/* Try to put a chunk on the device from a host image; 1 on success. */
static int to_device(mn_store *s, st_chunk *ch, const void *codes,
                     const st_protect *pr) {
  if (!s->l1_enabled)
    return 0;
  uint64_t b = dev_bytes(ch);
  l1_cap_expire(s);
  if (!make_room(s, MN_TIER_DEVICE, b, chunk_limit(s, MN_TIER_DEVICE), pr))
    return 0;
  void *d = NULL;
  mn_status as = mn_backend_alloc(s->backend, (size_t)b, &d);
  if (as == MN_ERR_DEVICE_OOM && s->used[MN_TIER_DEVICE] < s->l1_cap) {
    /* The device is full at what L1 holds now: L1 grows no further. */
    s->l1_cap = s->used[MN_TIER_DEVICE];
    s->l1_cap_at = mn__st_now(s);
    MN__LOGW(ST_MOD,
             "device out of memory for a chunk of %llu bytes (%s); it stays "
             "in host memory, and L1 chunks are limited to the %llu bytes "
             "they hold now",
             (unsigned long long)b, mn_errmsg(), (unsigned long long)s->l1_cap);
    return 0;
  }
  if (as != MN_OK) {
    MN__LOGW(ST_MOD,
             "device allocation of %llu bytes failed (%s); chunk "
             "stays in host memory",
             (unsigned long long)b, mn_errmsg());
    return 0;
  }
  ch->dev = d;
  s->used[MN_TIER_DEVICE] += b;
  mn_account_add(MN_TIER_DEVICE, (int64_t)b);
  if (codes && upload_rows(s, ch, codes, 0, ch->n) != MN_OK) {
    MN__LOGW(ST_MOD, "upload to the device failed (%s)", mn_errmsg());
    drop_dev(s, ch);
    return 0;
  }
  return 1;
}

/* Move one chunk down a tier. tier_mu held, chunk unpinned. */
static void demote(mn_store *s, st_chunk *ch, const st_protect *pr) {
  int from = ch->tier;
  lru_unlink(s, ch);
  if (from == MN_TIER_DEVICE) {
    uint64_t hb = host_bytes(ch);
    void *buf = NULL;
    if (make_room(s, MN_TIER_HOST, hb, chunk_limit(s, MN_TIER_HOST), pr))
      buf = mn_malloc((size_t)hb);
    if (buf && ch->n > 0 &&
        mn_backend_download(s->backend, buf, ch->dev,
                            (size_t)ch->n * (size_t)ch->coll->row_bytes) !=
            MN_OK) {
      mn_free(buf);
      buf = NULL;
    }
    drop_dev(s, ch);
    if (buf) {
      set_host(s, ch, buf);
      lru_push(s, ch, MN_TIER_HOST);
    } else {
      lru_push(s, ch, MN_TIER_DISK);
    }
  } else if (from == MN_TIER_HOST) {
    drop_host(s, ch);
    lru_push(s, ch, MN_TIER_DISK);
  } else {
    lru_push(s, ch, from);
    return;
  }
  s->demotions++;
}

void mn__st_chunk_place(mn_store *s, st_chunk *ch, void *buf) {
  pthread_mutex_lock(&s->tier_mu);
  uint64_t tick = atomic_fetch_add(&s->tick, 1) + 1;
  ch->last_used = tick;
  /* A new chunk is the most recently used: older ones make room. */
  st_protect pr = {tick, NULL};
  if (to_device(s, ch, buf, &pr)) {
    mn_free(buf);
    lru_push(s, ch, MN_TIER_DEVICE);
  } else if (make_room(s, MN_TIER_HOST, host_bytes(ch),
                       chunk_limit(s, MN_TIER_HOST), &pr) &&
             (buf || (buf = mn_malloc((size_t)host_bytes(ch))) != NULL)) {
    set_host(s, ch, buf);
    lru_push(s, ch, MN_TIER_HOST);
  } else {
    mn_free(buf);
    lru_push(s, ch, MN_TIER_DISK);
  }
  pthread_mutex_unlock(&s->tier_mu);
}

/* A chunk rebuilt at open: on disk until the loader or a search brings it
 * up. Oldest in LRU order, so that anything used wins over it. */
void mn__st_chunk_place_disk(mn_store *s, st_chunk *ch) {
  pthread_mutex_lock(&s->tier_mu);
  ch->last_used = 0;
  lru_push(s, ch, MN_TIER_DISK);
  pthread_mutex_unlock(&s->tier_mu);
}

/* Bring a chunk on disk into free room (nothing is evicted for it).
 * Returns 1 when it is (now) in memory, 0 when there is no room, -1 on
 * error. */
int mn__st_chunk_warm(mn_store *s, st_chunk *ch) {
  uint64_t hb = host_bytes(ch);
  pthread_mutex_lock(&s->tier_mu);
  int fits_dev = s->l1_enabled && s->used[MN_TIER_DEVICE] + dev_bytes(ch) <=
                                      chunk_limit(s, MN_TIER_DEVICE);
  int fits_host = s->used[MN_TIER_HOST] + hb <= chunk_limit(s, MN_TIER_HOST);
  int tier = ch->tier;
  pthread_mutex_unlock(&s->tier_mu);
  if (tier != MN_TIER_DISK)
    return 1;
  if (!fits_dev && !fits_host)
    return 0;
  void *buf = mn_malloc((size_t)hb);
  if (!buf)
    return -1;
  int32_t n = st_chunk_n(ch);
  if (mn__st_chunk_load_rows(s, ch, n, buf) != MN_OK) {
    mn_free(buf);
    return -1;
  }
  int ok = 0;
  pthread_mutex_lock(&s->tier_mu);
  if (ch->tier != MN_TIER_DISK) {
    ok = 1;
  } else if (ch->n != n) {
    ok = 1; /* appended meanwhile; a search will bring it up */
  } else {
    st_protect pr = {0, NULL}; /* nothing may be evicted */
    int t = MN_TIER_DISK;
    lru_unlink(s, ch);
    if (to_device(s, ch, buf, &pr)) {
      t = MN_TIER_DEVICE;
      ok = 1;
    } else if (s->used[MN_TIER_HOST] + hb <= chunk_limit(s, MN_TIER_HOST)) {
      set_host(s, ch, buf);
      buf = NULL;
      t = MN_TIER_HOST;
      ok = 1;
    }
    /* Behind everything used for real. */
    lru_push_tail(s, ch, t);
  }
  pthread_mutex_unlock(&s->tier_mu);
  mn_free(buf);
  return ok;
}

mn_status mn__st_chunk_append(mn_store *s, st_chunk *ch, int32_t at,
                              const void *codes, int32_t n) {
  mn_status st = MN_OK;
  uint64_t rb = (uint64_t)ch->coll->row_bytes;
  pthread_mutex_lock(&s->tier_mu);
  if (ch->tier == MN_TIER_HOST) {
    memcpy((char *)ch->host + at * rb, codes, (size_t)n * rb);
  } else if (ch->tier == MN_TIER_DEVICE) {
    /* upload_rows reads rows relative to the image start */
    st = upload_rows(s, ch, (const char *)codes - at * rb, at, at + n);
    if (st != MN_OK) {
      /* The device copy is now incomplete: drop it; LMDB has the rows. */
      lru_unlink(s, ch);
      drop_dev(s, ch);
      lru_push(s, ch, MN_TIER_DISK);
    }
  }
  /* The rows are complete wherever the chunk lives: publish them. `n`
   * changes only under tier_mu, so a loader can tell whether the rows it
   * read from disk are still all there are. */
  __atomic_store_n(&ch->n, at + n, __ATOMIC_RELEASE);
  __atomic_add_fetch(&ch->live, n, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&s->tier_mu);
  return st;
}

int mn__st_chunk_find(const st_coll *c, uint64_t seq, int32_t *row) {
  int64_t lo = 0, hi = c->n_chunks - 1, k = -1;
  while (lo <= hi) {
    int64_t mid = (lo + hi) / 2;
    const st_chunk *ch = st_chunk_at(c, mid);
    if (ch->n == 0 || seq < ch->seq[0]) {
      hi = mid - 1;
    } else {
      k = mid;
      lo = mid + 1;
    }
  }
  if (k < 0)
    return -1;
  const st_chunk *ch = st_chunk_at(c, k);
  int32_t a = 0, b = ch->n - 1;
  while (a <= b) {
    int32_t m = (a + b) / 2;
    if (ch->seq[m] == seq) {
      *row = m;
      return (int)k;
    }
    if (ch->seq[m] < seq)
      a = m + 1;
    else
      b = m - 1;
  }
  return -1;
}

static uint32_t get_be32_(const void *p) {
  const uint8_t *b = p;
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 |
         b[3];
}

mn_status mn__st_chunk_load_rows(mn_store *s, st_chunk *ch, int32_t n,
                                 void *dst) {
  st_coll *c = ch->coll;
  size_t rb = (size_t)c->row_bytes;
  memset(dst, 0, (size_t)n * rb);
  if (n == 0)
    return MN_OK;
  MDB_txn *txn;
  MN__TRY(mn__st_read_begin(s, &txn));
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi[ST_DBI_VEC], &cur);
  mn_status st = MN_OK;
  if (rc) {
    mn__st_read_end(s, txn);
    return mn__st_lmdb(rc, "open cursor");
  }
  /* The runs holding the chunk's seqs, in key order: the one that may
   * hold seq[0], then the following ones while they start at or before
   * seq[n - 1]. Rows whose vector is missing stay zero. */
  st_run r;
  int32_t j = 0;
  st = mn__st_run_seek(cur, c->cid, ch->seq[0], c->row_bytes, &r);
  MDB_val k, v;
  if (st == MN_ERR_NOT_FOUND) { /* none before seq[0]: from the next one */
    uint8_t kb[12];
    mn__st_key_seq(kb, c->cid, ch->seq[0]);
    k.mv_size = 12;
    k.mv_data = kb;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    st = MN_OK;
    if (rc == 0 && (k.mv_size != 12 || get_be32_(k.mv_data) != c->cid))
      rc = MDB_NOTFOUND;
    if (rc == 0 && mn__st_run_parse(&k, &v, c->row_bytes, &r) != 0)
      st = mn__set_error(MN_ERR_VERSION,
                         "a vector run of '%s' has an "
                         "unknown format or size",
                         c->name);
  } else {
    rc = 0;
  }
  while (st == MN_OK && rc == 0 && j < n) {
    while (j < n && ch->seq[j] < r.first)
      j++;
    for (; j < n && ch->seq[j] - r.first < r.span; j++) {
      int64_t i = mn__st_run_index(&r, ch->seq[j]);
      if (i >= 0)
        memcpy((char *)dst + (size_t)j * rb, r.codes + (size_t)i * rb, rb);
    }
    if (j == n)
      break;
    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    if (rc)
      break;
    if (k.mv_size != 12 || get_be32_(k.mv_data) != c->cid) {
      rc = MDB_NOTFOUND;
      break;
    }
    if (mn__st_run_parse(&k, &v, c->row_bytes, &r) != 0)
      st = mn__set_error(MN_ERR_VERSION,
                         "a vector run of '%s' has an "
                         "unknown format or size",
                         c->name);
  }
  if (st == MN_OK && rc && rc != MDB_NOTFOUND)
    st = mn__st_lmdb(rc, "read a chunk");
  mdb_cursor_close(cur);
  mn__st_read_end(s, txn);
  return st;
}

mn_status mn__st_chunk_acquire(mn_store *s, st_chunk *ch, uint64_t op_tick,
                               int32_t n, int promote, void **scratch,
                               const void **codes_host, const void **dev) {
  st_protect pr = {op_tick, ch->coll};
  *scratch = NULL;
  *codes_host = NULL;
  *dev = NULL;
  pthread_mutex_lock(&s->tier_mu);
  lru_touch(s, ch, op_tick);
  if (promote && ch->tier == MN_TIER_HOST && s->l1_enabled && ch->pins == 0) {
    /* Come back up to the device on use when there is room. */
    void *host = ch->host;
    int t = ch->tier;
    lru_unlink(s, ch);
    if (to_device(s, ch, host, &pr)) {
      drop_host(s, ch);
      lru_push(s, ch, MN_TIER_DEVICE);
      s->promotions++;
    } else {
      lru_push(s, ch, t);
    }
  }
  if (ch->tier == MN_TIER_DEVICE || ch->tier == MN_TIER_HOST) {
    ch->pins++;
    *dev = ch->dev;
    *codes_host = ch->host;
    pthread_mutex_unlock(&s->tier_mu);
    return MN_OK;
  }
  pthread_mutex_unlock(&s->tier_mu);

  /* On disk only: read the rows back from LMDB. */
  uint64_t hb = host_bytes(ch);
  void *buf = mn_malloc((size_t)hb);
  if (!buf)
    return mn__set_error(MN_ERR_NOMEM, "out of memory reading a chunk");
  mn_status st = mn__st_chunk_load_rows(s, ch, n, buf);
  if (st != MN_OK) {
    mn_free(buf);
    return st;
  }
  pthread_mutex_lock(&s->tier_mu);
  if (ch->n != n) {
    /* Rows were appended meanwhile: what was read serves this search
     * (its n rows are complete) but cannot become the chunk's image. */
    *scratch = buf;
    *codes_host = buf;
  } else if (ch->tier != MN_TIER_DISK) {
    /* Another search brought it up meanwhile. */
    mn_free(buf);
    ch->pins++;
    *dev = ch->dev;
    *codes_host = ch->host;
  } else if (make_room(s, MN_TIER_HOST, hb, chunk_limit(s, MN_TIER_HOST),
                       &pr)) {
    lru_unlink(s, ch);
    set_host(s, ch, buf);
    lru_push(s, ch, MN_TIER_HOST);
    s->promotions++;
    ch->pins++;
    *codes_host = buf;
  } else {
    *scratch = buf; /* used for this search only */
    *codes_host = buf;
  }
  pthread_mutex_unlock(&s->tier_mu);
  return MN_OK;
}

void mn__st_chunk_release(mn_store *s, st_chunk *ch, void *scratch) {
  if (scratch) {
    mn_free(scratch);
    return;
  }
  pthread_mutex_lock(&s->tier_mu);
  ch->pins--;
  /* Over the L1 ceiling that device out of memory set while it was read
   * (mn__st_l1_oom): down it goes now. */
  if (ch->pins == 0 && ch->tier == MN_TIER_DEVICE &&
      s->used[MN_TIER_DEVICE] > chunk_limit(s, MN_TIER_DEVICE))
    demote(s, ch, &no_protect);
  pthread_mutex_unlock(&s->tier_mu);
}

void mn__st_l1_oom(mn_store *s) {
  pthread_mutex_lock(&s->tier_mu);
  uint64_t held = s->used[MN_TIER_DEVICE];
  uint64_t cap = held - held / 4;
  if (cap < s->l1_cap)
    s->l1_cap = cap;
  s->l1_cap_at = mn__st_now(s);
  int64_t moved = 0;
  for (st_chunk *v = s->lru_tail[MN_TIER_DEVICE];
       v && s->used[MN_TIER_DEVICE] > s->l1_cap;) {
    st_chunk *prev = v->lru_prev; /* demote touches only L1's v and L2 */
    if (v->pins == 0) {
      demote(s, v, &no_protect);
      moved++;
    }
    v = prev;
  }
  cap = s->l1_cap;
  pthread_mutex_unlock(&s->tier_mu);
  MN__LOGW(ST_MOD,
           "out of device memory during a search: L1 chunks are limited to "
           "%llu bytes for %.0f s (they held %llu); %lld chunk(s) moved "
           "down now, those being read follow when released",
           (unsigned long long)cap, ST_L1_RETRY_S, (unsigned long long)held,
           (long long)moved);
}

/* Free a chunk that no one can reach any more (collection freed). */
void mn__st_chunk_free(mn_store *s, st_chunk *ch) {
  if (!ch)
    return;
  pthread_mutex_lock(&s->tier_mu);
  lru_unlink(s, ch);
  drop_host(s, ch);
  drop_dev(s, ch);
  pthread_mutex_unlock(&s->tier_mu);
  chunk_dealloc(ch);
}

/* ------------------------------------------------------------------------
 * Host budget for working chunks and pressure.
 * ---------------------------------------------------------------------- */
mn_status mn__st_host_reserve(mn_store *s, uint64_t bytes) {
  pthread_mutex_lock(&s->tier_mu);
  uint64_t budget = s->budget[MN_TIER_HOST];
  if (budget) {
    uint64_t evict = 0;
    for (st_chunk *v = s->lru_tail[MN_TIER_HOST]; v; v = v->lru_prev)
      if (v->pins == 0)
        evict += host_bytes(v);
    uint64_t floor = s->used[MN_TIER_HOST] - evict;
    uint64_t avail = floor < budget ? budget - floor : 0;
    if (bytes > avail) {
      pthread_mutex_unlock(&s->tier_mu);
      return mn__st_resource(bytes, avail,
                             "cannot allocate %llu bytes: %llu of the %llu "
                             "byte host budget (processing.cache_size) can "
                             "be made available",
                             (unsigned long long)bytes,
                             (unsigned long long)avail,
                             (unsigned long long)budget);
    }
    make_room(s, MN_TIER_HOST, bytes, budget, &no_protect);
  }
  s->used[MN_TIER_HOST] += bytes;
  pthread_mutex_unlock(&s->tier_mu);
  return MN_OK;
}

void mn__st_host_release(mn_store *s, uint64_t bytes) {
  pthread_mutex_lock(&s->tier_mu);
  s->used[MN_TIER_HOST] -= bytes;
  pthread_mutex_unlock(&s->tier_mu);
}

mn_pressure mn__st_pressure_locked(mn_store *s) {
  uint64_t b = s->budget[MN_TIER_HOST];
  if (!b)
    return MN_PRESSURE_NORMAL;
  double f = (double)s->used[MN_TIER_HOST] / (double)b;
  if (f > MN_PRESSURE_RECOVERY_FRAC)
    return MN_PRESSURE_RECOVERY;
  if (f >= MN_PRESSURE_HIGH_FRAC)
    return MN_PRESSURE_HIGH_LOAD;
  return MN_PRESSURE_NORMAL;
}

void mn__st_demote_to(mn_store *s, double frac, int64_t *n, uint64_t *bytes) {
  pthread_mutex_lock(&s->tier_mu);
  uint64_t b = s->budget[MN_TIER_HOST];
  uint64_t target = (uint64_t)(frac * (double)b);
  while (b && s->used[MN_TIER_HOST] >= target) {
    st_chunk *v = s->lru_tail[MN_TIER_HOST];
    while (v && v->pins)
      v = v->lru_prev;
    if (!v)
      break;
    uint64_t hb = host_bytes(v);
    demote(s, v, &no_protect);
    if (n)
      (*n)++;
    if (bytes)
      *bytes += hb;
  }
  pthread_mutex_unlock(&s->tier_mu);
}
