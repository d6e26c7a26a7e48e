/*
 * pca_store.c - named PCA models, kept in <data_dir>/pca/<name>.pca (the
 * model, written by mn_pca_save) with a small <name>.json beside it
 * ({"whiten": bool, "created": unix seconds}). Every model is loaded when
 * the engine starts, so models survive a restart.
 *
 * DESIGN: a mutex guards the list; a model handed out by
 * mn__pca_store_get is reference-counted, so a request that is using a
 * model keeps it alive while another request replaces or deletes it (the
 * old one moves to a graveyard and is freed by its last user). File writes
 * are serialised by a second mutex, so two fits of one name never write
 * the same temporary file at once.
 */
#include "rpc/rpc_internal.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MOD "pca"

typedef struct entry {
  struct entry *next;
  char name[65];
  mn_pca_model *m;
  int whiten;
  double created;
  int refs;
} entry;

struct mn__pca_store {
  pthread_mutex_t lock;
  pthread_mutex_t write_lock;
  char dir[1100];
  entry *live;
  entry *graveyard; /* replaced or deleted, still in use */
};

bool mn__pca_name_ok(const char *name, size_t n) {
  if (n < 1 || n > 64)
    return false;
  if ((n == 1 && name[0] == '.') ||
      (n == 2 && name[0] == '.' && name[1] == '.'))
    return false;
  for (size_t i = 0; i < n; i++) {
    char ch = name[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
      return false;
  }
  return true;
}

static void entry_free(entry *e) {
  if (!e)
    return;
  mn_pca_free(e->m);
  free(e);
}

static void path_of(const mn__pca_store *ps, const char *name, const char *ext,
                    char *out, size_t n) {
  snprintf(out, n, "%s/%s%s", ps->dir, name, ext);
}

static void read_sidecar(const mn__pca_store *ps, const char *name, int *whiten,
                         double *created) {
  char p[1200];
  path_of(ps, name, ".json", p, sizeof p);
  *whiten = 0;
  struct stat st;
  char pp[1200];
  path_of(ps, name, ".pca", pp, sizeof pp);
  *created = stat(pp, &st) == 0 ? (double)st.st_mtime : 0;
  FILE *f = fopen(p, "rb");
  if (!f)
    return;
  char buf[512];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  mn__arena a = {0};
  mn__jerr e;
  mn__jv *v = mn__json_parse(&a, buf, n, 8, &e);
  if (v && v->type == MN__J_OBJ) {
    const mn__jv *w = mn__jobj_get(v, "whiten");
    const mn__jv *c = mn__jobj_get(v, "created");
    if (w && w->type == MN__J_BOOL)
      *whiten = w->u.b;
    if (c && c->type == MN__J_NUM)
      *created = c->u.num;
  } else {
    MN__LOGW(MOD, "ignoring unreadable %s: %s", p, e.msg);
  }
  mn__arena_release(&a);
}

mn_status mn__pca_store_open(const char *data_dir, mn__pca_store **out) {
  *out = NULL;
  mn__pca_store *ps = calloc(1, sizeof *ps);
  if (!ps)
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  pthread_mutex_init(&ps->lock, NULL);
  pthread_mutex_init(&ps->write_lock, NULL);
  int n = snprintf(ps->dir, sizeof ps->dir, "%s/pca", data_dir);
  if (n < 0 || (size_t)n >= sizeof ps->dir) {
    mn__pca_store_close(ps);
    return mn__set_error(MN_ERR_IO, "data directory path is too long");
  }
  if (mkdir(ps->dir, 0755) != 0 && errno != EEXIST) {
    mn_status s = mn__set_error(MN_ERR_IO, "cannot create %s: %s", ps->dir,
                                strerror(errno));
    mn__pca_store_close(ps);
    return s;
  }
  DIR *d = opendir(ps->dir);
  if (!d) {
    mn_status s = mn__set_error(MN_ERR_IO, "cannot read %s: %s", ps->dir,
                                strerror(errno));
    mn__pca_store_close(ps);
    return s;
  }
  struct dirent *de;
  int loaded = 0;
  while ((de = readdir(d)) != NULL) {
    size_t len = strlen(de->d_name);
    if (len <= 4 || strcmp(de->d_name + len - 4, ".pca") != 0)
      continue;
    char name[80];
    if (len - 4 >= sizeof name)
      continue;
    memcpy(name, de->d_name, len - 4);
    name[len - 4] = '\0';
    if (!mn__pca_name_ok(name, len - 4)) {
      MN__LOGW(MOD, "ignoring %s/%s: not a valid model name", ps->dir,
               de->d_name);
      continue;
    }
    char p[1200];
    path_of(ps, name, ".pca", p, sizeof p);
    mn_pca_model *m = NULL;
    if (mn_pca_load(p, &m) != MN_OK) {
      MN__LOGW(MOD, "ignoring PCA model %s: %s", p, mn_errmsg());
      continue;
    }
    entry *e = calloc(1, sizeof *e);
    if (!e) {
      mn_pca_free(m);
      continue;
    }
    memcpy(e->name, name, len - 4 + 1); /* valid names are <= 64 bytes */
    e->m = m;
    read_sidecar(ps, name, &e->whiten, &e->created);
    e->next = ps->live;
    ps->live = e;
    loaded++;
  }
  closedir(d);
  if (loaded)
    MN__LOGI(MOD, "loaded %d PCA model%s from %s", loaded,
             loaded == 1 ? "" : "s", ps->dir);
  *out = ps;
  return MN_OK;
}

void mn__pca_store_close(mn__pca_store *ps) {
  if (!ps)
    return;
  for (entry *e = ps->live, *n; e; e = n) {
    n = e->next;
    entry_free(e);
  }
  for (entry *e = ps->graveyard, *n; e; e = n) {
    n = e->next;
    entry_free(e);
  }
  pthread_mutex_destroy(&ps->lock);
  pthread_mutex_destroy(&ps->write_lock);
  free(ps);
}

static entry **find_live(mn__pca_store *ps, const char *name) {
  for (entry **pp = &ps->live; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->name, name) == 0)
      return pp;
  return NULL;
}

/* Unlink an entry from the live list; free it unless it is in use. Called
 * with the lock held. */
static void retire(mn__pca_store *ps, entry **pp) {
  entry *e = *pp;
  *pp = e->next;
  if (e->refs == 0) {
    entry_free(e);
  } else {
    e->next = ps->graveyard;
    ps->graveyard = e;
  }
}

const mn_pca_model *mn__pca_store_get(mn__pca_store *ps, const char *name,
                                      int *whiten) {
  pthread_mutex_lock(&ps->lock);
  entry **pp = find_live(ps, name);
  const mn_pca_model *m = NULL;
  if (pp) {
    (*pp)->refs++;
    m = (*pp)->m;
    if (whiten)
      *whiten = (*pp)->whiten;
  }
  pthread_mutex_unlock(&ps->lock);
  return m;
}

void mn__pca_store_put(mn__pca_store *ps, const mn_pca_model *m) {
  if (!m)
    return;
  pthread_mutex_lock(&ps->lock);
  for (entry *e = ps->live; e; e = e->next)
    if (e->m == m) {
      e->refs--;
      pthread_mutex_unlock(&ps->lock);
      return;
    }
  for (entry **pp = &ps->graveyard; *pp; pp = &(*pp)->next)
    if ((*pp)->m == m) {
      entry *e = *pp;
      if (--e->refs == 0) {
        *pp = e->next;
        entry_free(e);
      }
      break;
    }
  pthread_mutex_unlock(&ps->lock);
}

mn_status mn__pca_store_add(mn__pca_store *ps, const char *name,
                            mn_pca_model *m, int whiten, int *replaced) {
  *replaced = 0;
  entry *e = calloc(1, sizeof *e);
  if (!e) {
    mn_pca_free(m);
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  }
  snprintf(e->name, sizeof e->name, "%s", name);
  e->m = m;
  e->whiten = whiten;
  e->created = mn_time_unix();
  char p[1200], j[1200];
  path_of(ps, name, ".pca", p, sizeof p);
  path_of(ps, name, ".json", j, sizeof j);
  pthread_mutex_lock(&ps->write_lock);
  mn_status s = mn_pca_save(m, p);
  if (s == MN_OK) {
    char tmp[1210];
    snprintf(tmp, sizeof tmp, "%s.tmp", j);
    FILE *f = fopen(tmp, "wb");
    int ok = f != NULL;
    if (f) {
      ok = fprintf(f, "{\"whiten\":%s,\"created\":%.3f}\n",
                   whiten ? "true" : "false", e->created) > 0;
      ok = (fflush(f) == 0) && ok && fsync(fileno(f)) == 0;
      ok = (fclose(f) == 0) && ok;
    }
    if (!ok || rename(tmp, j) != 0) {
      s = mn__set_error(MN_ERR_IO, "cannot write %s: %s", j, strerror(errno));
      unlink(tmp);
      unlink(p);
    }
  }
  if (s != MN_OK) {
    pthread_mutex_unlock(&ps->write_lock);
    entry_free(e);
    return s;
  }
  pthread_mutex_lock(&ps->lock);
  entry **pp = find_live(ps, name);
  if (pp) {
    retire(ps, pp);
    *replaced = 1;
  }
  e->next = ps->live;
  ps->live = e;
  pthread_mutex_unlock(&ps->lock);
  pthread_mutex_unlock(&ps->write_lock);
  return MN_OK;
}

mn_status mn__pca_store_delete(mn__pca_store *ps, const char *name,
                               int *deleted) {
  *deleted = 0;
  char p[1200], j[1200];
  path_of(ps, name, ".pca", p, sizeof p);
  path_of(ps, name, ".json", j, sizeof j);
  pthread_mutex_lock(&ps->write_lock);
  pthread_mutex_lock(&ps->lock);
  entry **pp = find_live(ps, name);
  mn_status s = MN_OK;
  if (pp) {
    if (unlink(p) != 0 && errno != ENOENT) {
      s = mn__set_error(MN_ERR_IO, "cannot delete %s: %s", p, strerror(errno));
    } else {
      unlink(j);
      retire(ps, pp);
      *deleted = 1;
    }
  }
  pthread_mutex_unlock(&ps->lock);
  pthread_mutex_unlock(&ps->write_lock);
  return s;
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const mn__pca_entry_info *)a)->name,
                ((const mn__pca_entry_info *)b)->name);
}

size_t mn__pca_store_list(mn__pca_store *ps, mn__pca_entry_info **out) {
  *out = NULL;
  pthread_mutex_lock(&ps->lock);
  size_t n = 0;
  for (entry *e = ps->live; e; e = e->next)
    n++;
  mn__pca_entry_info *v = n ? calloc(n, sizeof *v) : NULL;
  size_t i = 0;
  for (entry *e = ps->live; v && e; e = e->next, i++) {
    snprintf(v[i].name, sizeof v[i].name, "%s", e->name);
    v[i].input_dim = e->m->input_dim;
    v[i].n_components = e->m->n_components;
    v[i].n_samples = e->m->n_samples;
    v[i].whiten = e->whiten;
    v[i].total_ratio = mn_pca_total_ratio(e->m);
    v[i].created = e->created;
  }
  pthread_mutex_unlock(&ps->lock);
  if (!v)
    return 0;
  qsort(v, n, sizeof *v, by_name);
  *out = v;
  return n;
}
