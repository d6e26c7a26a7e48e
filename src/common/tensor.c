/*
 * tensor.c - dtype names and sizes, tensor views, finiteness checks, time.
 */
#include "common/internal.h"

#include <math.h>
#include <string.h>
#include <time.h>

static const char *const dtype_names[MN_DTYPE_COUNT] = {
    "float32", "float16", "bfloat16", "int8", "uint8", "int4", "binary"};

const char *mn_dtype_name(mn_dtype dt) {
  if ((unsigned)dt >= MN_DTYPE_COUNT)
    return "unknown";
  return dtype_names[dt];
}

mn_status mn_dtype_parse(const char *s, mn_dtype *out) {
  static const struct {
    const char *name;
    mn_dtype dt;
  } aliases[] = {
      {"f32", MN_DTYPE_F32},   {"fp32", MN_DTYPE_F32}, {"float", MN_DTYPE_F32},
      {"f16", MN_DTYPE_F16},   {"fp16", MN_DTYPE_F16}, {"half", MN_DTYPE_F16},
      {"bf16", MN_DTYPE_BF16}, {"i8", MN_DTYPE_I8},    {"u8", MN_DTYPE_U8},
      {"i4", MN_DTYPE_I4},     {"bool", MN_DTYPE_BIN}, {"bit", MN_DTYPE_BIN}};
  if (s) {
    for (int i = 0; i < MN_DTYPE_COUNT; i++) {
      if (strcmp(s, dtype_names[i]) == 0) {
        *out = (mn_dtype)i;
        return MN_OK;
      }
    }
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
      if (strcmp(s, aliases[i].name) == 0) {
        *out = aliases[i].dt;
        return MN_OK;
      }
    }
  }
  return mn__set_error(MN_ERR_INVALID,
                       "dtype '%s' is not one of float32, float16, bfloat16, "
                       "int8, uint8, int4, binary",
                       s ? s : "(null)");
}

size_t mn_dtype_row_bytes(mn_dtype dt, int64_t cols) {
  if (cols < 0)
    return 0;
  switch (dt) {
  case MN_DTYPE_F32:
    return (size_t)cols * 4;
  case MN_DTYPE_F16:
  case MN_DTYPE_BF16:
    return (size_t)cols * 2;
  case MN_DTYPE_I8:
  case MN_DTYPE_U8:
    return (size_t)cols;
  case MN_DTYPE_I4:
    return (size_t)(cols + 1) / 2;
  case MN_DTYPE_BIN:
    return (size_t)(cols + 7) / 8;
  default:
    return 0;
  }
}

mn_tensor mn_tensor_host(void *data, mn_dtype dt, int64_t rows, int64_t cols) {
  mn_tensor t;
  t.data = data;
  t.dtype = dt;
  t.rows = rows;
  t.cols = cols;
  t.stride = (int64_t)mn_dtype_row_bytes(dt, cols);
  t.device = MN_DEVICE_HOST;
  return t;
}

size_t mn_tensor_bytes(const mn_tensor *t) {
  if (!t || t->rows <= 0)
    return 0;
  return (size_t)(t->rows - 1) * (size_t)t->stride +
         mn_dtype_row_bytes(t->dtype, t->cols);
}

mn_status mn_tensor_check_finite(const mn_tensor *t) {
  if (!t || t->dtype != MN_DTYPE_F32 || t->device != MN_DEVICE_HOST)
    return mn__set_error(MN_ERR_INVALID,
                         "finiteness check needs a float32 host tensor");
  for (int64_t r = 0; r < t->rows; r++) {
    const float *row = (const float *)mn_tensor_row(t, r);
    /* Fast pass on the bit patterns: adding 1 to the exponent field carries
     * into bit 31 exactly when it is all ones (NaN or Inf). Integer ORs
     * vectorise, where a float sum would be one serial chain of adds. */
    uint32_t acc = 0;
    for (int64_t c = 0; c < t->cols; c++) {
      uint32_t u;
      memcpy(&u, row + c, sizeof u);
      acc |= ((u & 0x7f800000u) + 0x00800000u) & 0x80000000u;
    }
    if (acc == 0)
      continue;
    for (int64_t c = 0; c < t->cols; c++) {
      if (!isfinite(row[c]))
        return mn__set_error(MN_ERR_INVALID,
                             "row %lld, column %lld is %s: embeddings must "
                             "be finite numbers",
                             (long long)r, (long long)c,
                             isnan(row[c]) ? "NaN" : "infinite");
    }
  }
  return MN_OK;
}

uint64_t mn_time_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double mn_time_unix(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
