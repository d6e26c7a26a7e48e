/*
 * store_work.c - the seed's working-memory chunks: allocateMemory,
 * processChunk, readChunk, freeMemory, listChunks, and their TTL.
 *
 * DESIGN: working chunks live in one list (oldest first) under
 * s->work_mu; their bytes count against the L2 budget through
 * mn__st_host_reserve (which may move memory chunks to disk to make room,
 * and refuses with MN_ERR_RESOURCE what cannot fit). They are scratch
 * memory: not persisted, freed after chunk_ttl_s without use, by an
 * explicit cleanup, or by free.
 */
#include "store/store_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ST_WORK_MAX_SIZE (1ull << 40)

static void work_info(const st_work *w, mn_chunk_info *info) {
  if (!info)
    return;
  memset(info, 0, sizeof *info);
  snprintf(info->id, sizeof info->id, "%s", w->id);
  snprintf(info->chat_id, sizeof info->chat_id, "%s", w->chat);
  info->size = w->size;
  info->used = w->used;
  info->rows = w->rows;
  info->width = w->width;
  info->created = w->created;
  info->last_accessed = w->last_accessed;
}

static st_work *find(mn_store *s, const char *id) {
  for (st_work *w = s->work; w; w = w->next)
    if (strcmp(w->id, id) == 0)
      return w;
  return NULL;
}

static void work_destroy(mn_store *s, st_work *w) {
  mn__st_host_release(s, w->size);
  mn_free(w->data);
  free(w);
}

static mn_status check_chunk_id(const char *id) {
  size_t n = strlen(id);
  if (n < 1 || n > MN_CHUNK_ID_MAX)
    return mn__set_error(MN_ERR_INVALID,
                         "chunk id must be 1 to %d characters, got %zu",
                         MN_CHUNK_ID_MAX, n);
  for (size_t i = 0; i < n; i++) {
    char ch = id[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
      return mn__set_error(MN_ERR_INVALID,
                           "chunk id '%.32s' has a character other than "
                           "letters, digits, '_', '.' and '-' at %zu",
                           id, i);
  }
  return MN_OK;
}

mn_status mn_store_chunk_alloc(mn_store *s, uint64_t size, const char *chat_id,
                               const char *chunk_id, mn_chunk_info *info) {
  if (!s)
    return mn__set_error(MN_ERR_INVALID, "store is NULL");
  mn__st_resource_clear();
  if (size < 1 || size > ST_WORK_MAX_SIZE)
    return mn__set_error(MN_ERR_INVALID,
                         "size must be between 1 byte and 1 TiB, got %llu",
                         (unsigned long long)size);
  if (!chat_id)
    chat_id = "";
  if (strlen(chat_id) > MN_CHAT_ID_MAX)
    return mn__set_error(MN_ERR_INVALID, "chatId is longer than %d bytes",
                         MN_CHAT_ID_MAX);
  if (chunk_id)
    MN__TRY(check_chunk_id(chunk_id));
  MN__TRY(mn__st_host_reserve(s, size));
  st_work *w = calloc(1, sizeof *w);
  float *data = w ? mn_malloc((size_t)size) : NULL;
  if (!w || !data) {
    free(w);
    mn__st_host_release(s, size);
    return mn__set_error(MN_ERR_NOMEM,
                         "out of host memory allocating a %llu byte chunk",
                         (unsigned long long)size);
  }
  w->data = data;
  w->size = size;
  snprintf(w->chat, sizeof w->chat, "%s", chat_id);
  w->created = w->last_accessed = mn__st_now(s);
  pthread_mutex_lock(&s->work_mu);
  if (chunk_id && find(s, chunk_id)) {
    pthread_mutex_unlock(&s->work_mu);
    mn_free(data);
    free(w);
    mn__st_host_release(s, size);
    return mn__set_error(MN_ERR_EXISTS, "chunk '%s' already exists", chunk_id);
  }
  if (chunk_id)
    snprintf(w->id, sizeof w->id, "%s", chunk_id);
  else
    do
      snprintf(w->id, sizeof w->id, "chunk_%016llx",
               (unsigned long long)++s->work_counter);
    while (find(s, w->id)); /* a client may have taken it */
  st_work **pp = &s->work;
  while (*pp)
    pp = &(*pp)->next;
  *pp = w;
  s->n_work++;
  s->work_bytes += size;
  work_info(w, info);
  pthread_mutex_unlock(&s->work_mu);
  /* The seed's recovery state: cleanup runs as soon as it is entered. */
  if (mn_store_pressure(s) == MN_PRESSURE_RECOVERY)
    mn_store_cleanup(s, 0, NULL);
  return MN_OK;
}

mn_status mn_store_chunk_write(mn_store *s, const char *chunk_id,
                               const float *data, int64_t rows, int64_t width,
                               mn_chunk_info *info) {
  if (!s || !chunk_id)
    return mn__set_error(MN_ERR_INVALID, "store or chunk id is NULL");
  mn__st_resource_clear();
  if (rows < 1 || width < 1 || !data)
    return mn__set_error(MN_ERR_INVALID,
                         "write needs at least one row of at least one "
                         "column, got [%lld, %lld]",
                         (long long)rows, (long long)width);
  mn_tensor t = mn_tensor_host((void *)data, MN_DTYPE_F32, rows, width);
  MN__TRY(mn_tensor_check_finite(&t));
  pthread_mutex_lock(&s->work_mu);
  st_work *w = find(s, chunk_id);
  mn_status st = MN_OK;
  if (!w) {
    st = mn__set_error(MN_ERR_NOT_FOUND, "chunk '%s' does not exist", chunk_id);
  } else if (w->width && w->width != width) {
    st = mn__set_error(MN_ERR_INVALID,
                       "chunk '%s' holds %lld-wide rows; these are %lld wide",
                       chunk_id, (long long)w->width, (long long)width);
  } else {
    uint64_t need = (uint64_t)rows * (uint64_t)width * sizeof(float);
    uint64_t avail = w->size - w->used;
    if (need > avail) {
      st = mn__st_resource(need, avail,
                           "chunk '%s' is too small: writing %lld rows of "
                           "%lld floats needs %llu bytes, %llu of its %llu "
                           "remain",
                           chunk_id, (long long)rows, (long long)width,
                           (unsigned long long)need, (unsigned long long)avail,
                           (unsigned long long)w->size);
    } else {
      memcpy((char *)w->data + w->used, data, (size_t)need);
      w->used += need;
      w->rows += rows;
      w->width = width;
      w->last_accessed = mn__st_now(s);
      work_info(w, info);
    }
  }
  pthread_mutex_unlock(&s->work_mu);
  return st;
}

mn_status mn_store_chunk_read(mn_store *s, const char *chunk_id, float **data,
                              mn_chunk_info *info) {
  if (!s || !chunk_id || !data)
    return mn__set_error(MN_ERR_INVALID, "NULL argument");
  *data = NULL;
  pthread_mutex_lock(&s->work_mu);
  st_work *w = find(s, chunk_id);
  mn_status st = MN_OK;
  if (!w) {
    st = mn__set_error(MN_ERR_NOT_FOUND, "chunk '%s' does not exist", chunk_id);
  } else {
    if (w->used) {
      *data = malloc((size_t)w->used);
      if (!*data)
        st = mn__set_error(MN_ERR_NOMEM, "out of memory copying a chunk");
      else
        memcpy(*data, w->data, (size_t)w->used);
    }
    w->last_accessed = mn__st_now(s);
    work_info(w, info);
  }
  pthread_mutex_unlock(&s->work_mu);
  return st;
}

mn_status mn_store_chunk_free(mn_store *s, const char *chunk_id) {
  if (!s || !chunk_id)
    return mn__set_error(MN_ERR_INVALID, "store or chunk id is NULL");
  pthread_mutex_lock(&s->work_mu);
  st_work **pp = &s->work;
  while (*pp && strcmp((*pp)->id, chunk_id) != 0)
    pp = &(*pp)->next;
  st_work *w = *pp;
  if (w) {
    *pp = w->next;
    s->n_work--;
    s->work_bytes -= w->size;
  }
  pthread_mutex_unlock(&s->work_mu);
  if (!w)
    return mn__set_error(MN_ERR_NOT_FOUND, "chunk '%s' does not exist",
                         chunk_id);
  work_destroy(s, w);
  return MN_OK;
}

mn_status mn_store_chunk_list(mn_store *s, const char *chat_id,
                              mn_chunk_info **out, int64_t *n) {
  if (!s || !out || !n)
    return mn__set_error(MN_ERR_INVALID, "NULL argument");
  *out = NULL;
  *n = 0;
  pthread_mutex_lock(&s->work_mu);
  int64_t cnt = 0;
  for (st_work *w = s->work; w; w = w->next)
    if (!chat_id || strcmp(w->chat, chat_id) == 0)
      cnt++;
  mn_chunk_info *arr = cnt ? calloc((size_t)cnt, sizeof *arr) : NULL;
  if (cnt && !arr) {
    pthread_mutex_unlock(&s->work_mu);
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  }
  int64_t i = 0;
  for (st_work *w = s->work; w; w = w->next)
    if (!chat_id || strcmp(w->chat, chat_id) == 0)
      work_info(w, &arr[i++]);
  pthread_mutex_unlock(&s->work_mu);
  *out = arr;
  *n = cnt;
  return MN_OK;
}

void mn__st_work_expire(mn_store *s, double now, int all,
                        mn_cleanup_report *rep) {
  double ttl = s->opts.chunk_ttl_s;
  st_work *dead = NULL;
  pthread_mutex_lock(&s->work_mu);
  st_work **pp = &s->work;
  while (*pp) {
    st_work *w = *pp;
    if (all || (ttl > 0 && now - w->last_accessed > ttl)) {
      *pp = w->next;
      s->n_work--;
      s->work_bytes -= w->size;
      w->next = dead;
      dead = w;
    } else {
      pp = &w->next;
    }
  }
  pthread_mutex_unlock(&s->work_mu);
  while (dead) {
    st_work *w = dead;
    dead = w->next;
    if (rep) {
      rep->chunks_freed++;
      rep->bytes_freed += w->size;
    }
    MN__LOGD(ST_MOD, "freed idle chunk %s (%llu bytes)", w->id,
             (unsigned long long)w->size);
    work_destroy(s, w);
  }
}

void mn__st_work_free_all(mn_store *s) {
  st_work *w = s->work;
  while (w) {
    st_work *nx = w->next;
    mn_free(w->data);
    free(w);
    w = nx;
  }
  s->work = NULL;
  s->n_work = 0;
  s->work_bytes = 0;
}
