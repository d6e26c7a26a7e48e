/*
 * mnemo/common.h - status codes, logging, accounted allocation, tensors,
 * half-precision conversion, size strings and time.
 *
 * Everything here is usable on its own; nothing in it depends on the
 * server, the store or a backend.
 */
#ifndef MNEMO_COMMON_H
#define MNEMO_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MN_BUILDING_LIBRARY)
#define MN_API __attribute__((visibility("default")))
#else
#define MN_API
#endif

/* ------------------------------------------------------------------------
 * Status codes.
 *
 * One list; mn_strerror() and mn_status_name() are generated from it.
 * MN_OK is zero and every error is negative.
 * ---------------------------------------------------------------------- */
#define MN_STATUS_MAP(X)                                                       \
  X(OK, 0, "success")                                                          \
  X(ERR_INVALID, -1, "invalid argument")                                       \
  X(ERR_NOMEM, -2, "out of host memory")                                       \
  X(ERR_RANGE, -3, "value out of range")                                       \
  X(ERR_NOT_FOUND, -4, "not found")                                            \
  X(ERR_EXISTS, -5, "already exists")                                          \
  X(ERR_IO, -6, "input/output error")                                          \
  X(ERR_PARSE, -7, "parse error")                                              \
  X(ERR_UNSUPPORTED, -8, "not supported by this backend or build")             \
  X(ERR_DEVICE, -9, "device error")                                            \
  X(ERR_DEVICE_OOM, -10, "out of device memory")                               \
  X(ERR_RESOURCE, -11, "resource limit reached")                               \
  X(ERR_TIMEOUT, -12, "timed out")                                             \
  X(ERR_BUSY, -13, "busy, try again")                                          \
  X(ERR_VERSION, -14, "version mismatch")                                      \
  X(ERR_NUMERIC, -15, "numerical failure")                                     \
  X(ERR_INTERNAL, -16, "internal error")

typedef enum mn_status {
#define MN__STATUS_ENUM(name, code, text) MN_##name = code,
  MN_STATUS_MAP(MN__STATUS_ENUM)
#undef MN__STATUS_ENUM
} mn_status;

/** Static text for a status code. Never NULL. */
MN_API const char *mn_strerror(mn_status s);
/** The code's name, e.g. "MN_ERR_INVALID". Never NULL. */
MN_API const char *mn_status_name(mn_status s);

/**
 * The detail message of the last error raised on the calling thread, such as
 * "row 3 contains NaN at column 17". Borrowed: valid until the next mnemo
 * call on this thread that fails. Empty string when there is none.
 */
MN_API const char *mn_errmsg(void);
/** Clear the calling thread's detail message. */
MN_API void mn_errmsg_clear(void);

/* ------------------------------------------------------------------------
 * Logging. The library never prints; it calls the application's callback.
 * ---------------------------------------------------------------------- */
typedef enum mn_log_level {
  MN_LOG_DEBUG = 0,
  MN_LOG_INFO = 1,
  MN_LOG_WARN = 2,
  MN_LOG_ERROR = 3,
  MN_LOG_NONE = 4
} mn_log_level;

typedef void (*mn_log_fn)(mn_log_level level, const char *module,
                          const char *msg, void *user);

/** Install the log callback (NULL: discard). Thread-safe. */
MN_API void mn_log_set(mn_log_fn fn, void *user);
/** Messages below this level are not formatted at all. */
MN_API void mn_log_set_level(mn_log_level level);
MN_API mn_log_level mn_log_get_level(void);
/** Parse "debug", "info", "warn", "error", "none". */
MN_API mn_status mn_log_level_parse(const char *s, mn_log_level *out);
MN_API const char *mn_log_level_name(mn_log_level level);

/* ------------------------------------------------------------------------
 * Accounted allocation. Every tier's bytes are counted so that metrics and
 * the pressure state machine read one set of numbers.
 * ---------------------------------------------------------------------- */
typedef enum mn_tier {
  MN_TIER_DEVICE = 0, /* L1: GPU memory */
  MN_TIER_HOST = 1,   /* L2: system memory */
  MN_TIER_DISK = 2,   /* L3: LMDB on disk */
  MN_TIER_COUNT = 3
} mn_tier;

/** Add (or, negative, remove) bytes accounted to a tier. Thread-safe. */
MN_API void mn_account_add(mn_tier tier, int64_t bytes);
/** Bytes currently accounted to a tier. */
MN_API int64_t mn_account_get(mn_tier tier);
/** Largest value the tier's count has reached. */
MN_API int64_t mn_account_peak(mn_tier tier);

/**
 * Host allocation counted under MN_TIER_HOST, 64-byte aligned. Returns NULL
 * on failure (and sets the detail message). Free with mn_free().
 */
MN_API void *mn_malloc(size_t bytes);
/** As mn_malloc, zero-filled. */
MN_API void *mn_calloc(size_t n, size_t size);
/** Free memory from mn_malloc / mn_calloc. NULL is accepted. */
MN_API void mn_free(void *p);

/* ------------------------------------------------------------------------
 * Tensors: a 2-D view (rows x cols) over memory owned by someone else.
 * ---------------------------------------------------------------------- */
typedef enum mn_dtype {
  MN_DTYPE_F32 = 0,
  MN_DTYPE_F16 = 1,
  MN_DTYPE_BF16 = 2,
  MN_DTYPE_I8 = 3,  /* signed 8-bit codes */
  MN_DTYPE_U8 = 4,  /* unsigned 8-bit codes */
  MN_DTYPE_I4 = 5,  /* signed 4-bit codes, two per byte, low nibble first */
  MN_DTYPE_BIN = 6, /* one bit per element, LSB first within a byte */
  MN_DTYPE_COUNT = 7
} mn_dtype;

typedef enum mn_device_kind {
  MN_DEVICE_HOST = 0,
  MN_DEVICE_GPU = 1
} mn_device_kind;

typedef struct mn_tensor {
  void *data;           /* borrowed */
  mn_dtype dtype;
  int64_t rows;
  int64_t cols;         /* logical elements per row */
  int64_t stride;       /* bytes from one row to the next */
  mn_device_kind device;
} mn_tensor;

/** "float32", "float16", "bfloat16", "int8", "uint8", "int4", "binary". */
MN_API const char *mn_dtype_name(mn_dtype dt);
/** Parse a dtype name (also accepts "f32", "fp16", "bf16", "fp32", "bool"). */
MN_API mn_status mn_dtype_parse(const char *s, mn_dtype *out);
/** Bytes for one packed row of `cols` elements (int4: ceil(cols/2), binary:
 *  ceil(cols/8)). */
MN_API size_t mn_dtype_row_bytes(mn_dtype dt, int64_t cols);
/** Build a dense host view: stride = mn_dtype_row_bytes(dtype, cols). */
MN_API mn_tensor mn_tensor_host(void *data, mn_dtype dt, int64_t rows,
                                int64_t cols);
/** Pointer to the start of row `r`. */
static inline void *mn_tensor_row(const mn_tensor *t, int64_t r) {
  return (char *)t->data + r * t->stride;
}
/** Bytes the tensor spans (rows * stride). */
MN_API size_t mn_tensor_bytes(const mn_tensor *t);
/**
 * Check a float32 host tensor for NaN and Inf. MN_ERR_INVALID with a detail
 * message naming the first bad row and column.
 */
MN_API mn_status mn_tensor_check_finite(const mn_tensor *t);

/* ------------------------------------------------------------------------
 * Half precision. Conversions round to nearest, ties to even; NaN stays NaN.
 * ---------------------------------------------------------------------- */
MN_API uint16_t mn_f32_to_f16(float f);
MN_API float mn_f16_to_f32(uint16_t h);
MN_API uint16_t mn_f32_to_bf16(float f);
MN_API float mn_bf16_to_f32(uint16_t h);
/** Bulk conversions (vectorised where the CPU allows). */
MN_API void mn_f32_to_f16_n(const float *src, uint16_t *dst, size_t n);
MN_API void mn_f16_to_f32_n(const uint16_t *src, float *dst, size_t n);
MN_API void mn_f32_to_bf16_n(const float *src, uint16_t *dst, size_t n);
MN_API void mn_bf16_to_f32_n(const uint16_t *src, float *dst, size_t n);

/* ------------------------------------------------------------------------
 * Size strings and time.
 * ---------------------------------------------------------------------- */
/**
 * Parse "20GB", "512MiB", "4gb", "1.5 GB", "1048576" into bytes. GB, MB, KB
 * are powers of 1000; GiB, MiB, KiB of 1024; a bare number is bytes.
 * @return MN_OK, MN_ERR_PARSE (bad text, detail says why) or MN_ERR_RANGE.
 */
MN_API mn_status mn_size_parse(const char *s, uint64_t *out);
/** Format bytes as e.g. "1.50 GiB" into buf (at least 32 bytes). */
MN_API const char *mn_size_format(uint64_t bytes, char *buf, size_t len);
/** Monotonic time in nanoseconds. */
MN_API uint64_t mn_time_ns(void);
/** Wall-clock Unix time in seconds. */
MN_API double mn_time_unix(void);

#ifdef __cplusplus
}
#endif
#endif /* MNEMO_COMMON_H */
