/*
 * pca_model.c - PCA model memory and its file format.
 *
 * File layout (little-endian): "MNPCA\0\0\0", u32 version (1), u32 flags
 * (0), i64 input_dim, i64 n_components, i64 n_samples, f64 total_variance,
 * then float32 arrays mean[input_dim], components[k * input_dim],
 * explained_variance[k], explained_variance_ratio[k]. A save writes a
 * temporary file, fsyncs it and renames it over the target, so a crash
 * never leaves half a model.
 */
#include "common/internal.h"
#include "mnemo/compute.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MN__PCA_MAGIC "MNPCA\0\0\0"
#define MN__PCA_VERSION 1u
#define MN__PCA_MAX_DIM (1 << 20)

mn_status mn_pca_alloc(int64_t input_dim, int64_t k, mn_pca_model **out) {
  if (input_dim < 1 || k < 1 || k > input_dim || input_dim > MN__PCA_MAX_DIM)
    return mn__set_error(MN_ERR_INVALID,
                         "PCA model shape %lld -> %lld is not valid",
                         (long long)input_dim, (long long)k);
  mn_pca_model *m = calloc(1, sizeof *m);
  if (!m)
    return mn__set_error(MN_ERR_NOMEM, "out of memory for a PCA model");
  m->input_dim = input_dim;
  m->n_components = k;
  m->mean = mn_calloc((size_t)input_dim, sizeof(float));
  m->components = mn_calloc((size_t)(k * input_dim), sizeof(float));
  m->explained_variance = mn_calloc((size_t)k, sizeof(float));
  m->explained_variance_ratio = mn_calloc((size_t)k, sizeof(float));
  if (!m->mean || !m->components || !m->explained_variance ||
      !m->explained_variance_ratio) {
    mn_pca_free(m);
    return mn__set_error(MN_ERR_NOMEM, "out of memory for a PCA model");
  }
  *out = m;
  return MN_OK;
}

void mn_pca_free(mn_pca_model *m) {
  if (!m)
    return;
  mn_free(m->mean);
  mn_free(m->components);
  mn_free(m->explained_variance);
  mn_free(m->explained_variance_ratio);
  free(m);
}

double mn_pca_total_ratio(const mn_pca_model *m) {
  double t = 0;
  for (int64_t i = 0; m && i < m->n_components; i++)
    t += m->explained_variance_ratio[i];
  return t;
}

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

mn_status mn_pca_save(const mn_pca_model *m, const char *path) {
  if (!m || !path)
    return mn__set_error(MN_ERR_INVALID, "pca_save: NULL argument");
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 8);
  if (!tmp)
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".tmp", 5);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    mn_status s = mn__set_error(MN_ERR_IO, "cannot write %s: %s", tmp,
                                strerror(errno));
    free(tmp);
    return s;
  }
  uint32_t ver = MN__PCA_VERSION, flags = 0;
  int64_t dims[3] = {m->input_dim, m->n_components, m->n_samples};
  int64_t d = m->input_dim, k = m->n_components;
  int bad = write_all(fd, MN__PCA_MAGIC, 8) || write_all(fd, &ver, 4) ||
            write_all(fd, &flags, 4) || write_all(fd, dims, sizeof dims) ||
            write_all(fd, &m->total_variance, 8) ||
            write_all(fd, m->mean, (size_t)d * 4) ||
            write_all(fd, m->components, (size_t)(k * d) * 4) ||
            write_all(fd, m->explained_variance, (size_t)k * 4) ||
            write_all(fd, m->explained_variance_ratio, (size_t)k * 4) ||
            fsync(fd) != 0;
  int err = errno;
  close(fd);
  if (bad || rename(tmp, path) != 0) {
    if (!bad)
      err = errno;
    unlink(tmp);
    free(tmp);
    return mn__set_error(MN_ERR_IO, "cannot write PCA model %s: %s", path,
                         strerror(err));
  }
  free(tmp);
  return MN_OK;
}

mn_status mn_pca_load(const char *path, mn_pca_model **out) {
  if (!path || !out)
    return mn__set_error(MN_ERR_INVALID, "pca_load: NULL argument");
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f)
    return mn__set_error(errno == ENOENT ? MN_ERR_NOT_FOUND : MN_ERR_IO,
                         "cannot open PCA model %s: %s", path,
                         strerror(errno));
  char magic[8];
  uint32_t ver = 0, flags = 0;
  int64_t dims[3];
  double total = 0;
  mn_status s = MN_OK;
  if (fread(magic, 1, 8, f) != 8 || memcmp(magic, MN__PCA_MAGIC, 8) != 0) {
    s = mn__set_error(MN_ERR_PARSE, "%s is not a mnemo PCA model", path);
  } else if (fread(&ver, 4, 1, f) != 1 || fread(&flags, 4, 1, f) != 1) {
    s = mn__set_error(MN_ERR_PARSE, "%s is truncated", path);
  } else if (ver != MN__PCA_VERSION) {
    s = mn__set_error(MN_ERR_VERSION,
                      "%s has model format version %u, this build reads %u",
                      path, ver, MN__PCA_VERSION);
  } else if (fread(dims, sizeof dims, 1, f) != 1 ||
             fread(&total, 8, 1, f) != 1) {
    s = mn__set_error(MN_ERR_PARSE, "%s is truncated", path);
  }
  mn_pca_model *m = NULL;
  if (s == MN_OK && mn_pca_alloc(dims[0], dims[1], &m) != MN_OK)
    s = mn__set_error(MN_ERR_PARSE, "%s has an invalid shape %lld -> %lld",
                      path, (long long)dims[0], (long long)dims[1]);
  if (s == MN_OK) {
    int64_t d = dims[0], k = dims[1];
    m->n_samples = dims[2];
    m->total_variance = total;
    if (fread(m->mean, 4, (size_t)d, f) != (size_t)d ||
        fread(m->components, 4, (size_t)(k * d), f) != (size_t)(k * d) ||
        fread(m->explained_variance, 4, (size_t)k, f) != (size_t)k ||
        fread(m->explained_variance_ratio, 4, (size_t)k, f) != (size_t)k)
      s = mn__set_error(MN_ERR_PARSE, "%s is truncated", path);
  }
  fclose(f);
  if (s != MN_OK) {
    mn_pca_free(m);
    return s;
  }
  *out = m;
  return MN_OK;
}
