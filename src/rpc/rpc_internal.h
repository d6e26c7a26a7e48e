/*
 * rpc_internal.h - what the JSON-RPC engine's sources share: the request
 * arena, the JSON reader (a small DOM) and writer, the per-call context,
 * the method table, the params schema checker, the tensor codec and the
 * named PCA model store.
 *
 * DESIGN: JSON is read and written by our own code rather than jansson.
 * A 32x768 request of JSON numbers takes jansson about 8 ms to parse (one
 * heap node and one strtod per number); the server's target needs the
 * whole request in well under 1 ms. The reader keeps arrays of numbers
 * packed as doubles, points strings without escapes into the message
 * itself, and allocates everything else from one arena per request that
 * is released in one step when the reply is built. The writer streams the
 * reply into one growing buffer; tensors are written straight into it.
 */
#ifndef MNEMO_RPC_INTERNAL_H
#define MNEMO_RPC_INTERNAL_H

#include "common/internal.h"
#include "compute/batcher.h"
#include "mnemo/rpc.h"
#include "mnemo/store.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------
 * Arena: bump allocation in blocks; blocks go back to a small process-wide
 * pool when the arena is released (mn__arena_pool_drain empties it).
 * ---------------------------------------------------------------------- */
typedef struct mn__arena_blk mn__arena_blk;
typedef struct mn__arena {
  mn__arena_blk *head;
} mn__arena;

/** 16-byte aligned memory (64 for blocks of 4 KiB or more); NULL when out
 *  of memory. Released with the arena. */
void *mn__arena_alloc(mn__arena *a, size_t n);
char *mn__arena_strndup(mn__arena *a, const char *s, size_t n);
void mn__arena_release(mn__arena *a);
/** Free the pooled blocks; returns the bytes given back. */
size_t mn__arena_pool_drain(void);
/** Bytes currently held in the pool. */
size_t mn__arena_pool_bytes(void);

/* ------------------------------------------------------------------------
 * JSON values (read side).
 * ---------------------------------------------------------------------- */
typedef enum mn__jtype {
  MN__J_NULL = 0,
  MN__J_BOOL,
  MN__J_NUM,
  MN__J_STR,
  MN__J_ARR,
  MN__J_OBJ
} mn__jtype;

#define MN__JF_INT 1u    /* number written without fraction or exponent */
#define MN__JF_PACKED 2u /* array whose items are all numbers: u.nums */

typedef struct mn__jv mn__jv;
typedef struct mn__jmember mn__jmember;

struct mn__jv {
  uint8_t type;
  uint8_t flags;
  uint32_t n;      /* string bytes, array items, object members */
  const char *src; /* the value's text in the message (NULL: synthesised) */
  size_t src_len;
  union {
    double num;
    int b;
    const char *str; /* not NUL-terminated in general: use n */
    mn__jv *items;
    double *nums; /* MN__JF_PACKED arrays */
    mn__jmember *mem;
  } u;
};

struct mn__jmember {
  const char *key; /* NUL-terminated */
  uint32_t klen;
  mn__jv val;
};

typedef struct mn__jerr {
  size_t offset;      /* byte offset of the problem */
  int line, col;      /* 1-based */
  int depth_exceeded; /* nesting deeper than the limit */
  char msg[192];
} mn__jerr;

/**
 * Parse `len` bytes of JSON text. Strings must be valid UTF-8 (invalid
 * bytes are a parse error); nesting deeper than max_depth stops the parse
 * with err->depth_exceeded set. Returns NULL on error (err filled in).
 */
mn__jv *mn__json_parse(mn__arena *a, const char *text, size_t len,
                       int max_depth, mn__jerr *err);

/** Member of an object by key (the last one when a key repeats). */
const mn__jv *mn__jobj_get(const mn__jv *o, const char *key);
/** Array item i (packed numbers are synthesised into *tmp). */
const mn__jv *mn__jarr_at(const mn__jv *a, uint32_t i, mn__jv *tmp);
/** True when the string value equals the C string. */
bool mn__jstr_eq(const mn__jv *v, const char *s);
/** "a string", "a number", "an object", ... for messages. */
const char *mn__jtype_phrase(const mn__jv *v);
/** A short JSON rendering of v for messages ("12", "\"abc\"", "an array of
 *  3 items"), at most ~60 bytes, into buf. */
const char *mn__jv_brief(const mn__jv *v, char *buf, size_t len);

/* ------------------------------------------------------------------------
 * JSON writer: a growing buffer with comma bookkeeping.
 * ---------------------------------------------------------------------- */
#define MN__JW_MAX_DEPTH 96

typedef struct mn__jw {
  char *buf;
  size_t len, cap;
  int oom;
  int depth;
  uint8_t first[MN__JW_MAX_DEPTH]; /* no value written yet at this level */
  uint8_t in_obj[MN__JW_MAX_DEPTH];
  int after_key;
} mn__jw;

typedef struct mn__jw_mark {
  size_t len;
  int depth;
  uint8_t first;
  int after_key;
} mn__jw_mark;

void mn__jw_init(mn__jw *w, size_t initial);
void mn__jw_free(mn__jw *w);
/** Make room for n more bytes; returns the write position or NULL. */
char *mn__jw_reserve(mn__jw *w, size_t n);
/* Make room for exactly n more bytes at once. Unlike mn__jw_reserve's
 * realloc, which copies the whole old block, only the bytes written so far
 * move: for a writer sized by a guess and mostly empty when the real need
 * is known. */
void mn__jw_reserve_exact(mn__jw *w, size_t n);
void mn__jw_bytes(mn__jw *w, const void *p, size_t n);
/* Structure. */
void mn__jw_obj(mn__jw *w);
void mn__jw_obj_end(mn__jw *w);
void mn__jw_arr(mn__jw *w);
void mn__jw_arr_end(mn__jw *w);
void mn__jw_key(mn__jw *w, const char *k);
/* Values. */
void mn__jw_str(mn__jw *w, const char *s);
void mn__jw_strn(mn__jw *w, const char *s, size_t n);
void mn__jw_strf(mn__jw *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void mn__jw_int(mn__jw *w, int64_t v);
void mn__jw_uint(mn__jw *w, uint64_t v);
void mn__jw_double(mn__jw *w, double v);
void mn__jw_float(mn__jw *w, float v);
void mn__jw_bool(mn__jw *w, bool v);
void mn__jw_null(mn__jw *w);
/** A value given as JSON text (trusted to be valid). */
void mn__jw_raw(mn__jw *w, const char *json, size_t n);
/** Start a value whose bytes the caller appends with mn__jw_bytes. */
void mn__jw_value_begin(mn__jw *w);
/** Write a parsed value back (compact). */
void mn__jw_value(mn__jw *w, const mn__jv *v);
/** Write a parsed value indented by 2 spaces per level, starting at
 *  `indent`; arrays of numbers stay on one line. */
void mn__jw_pretty(mn__jw *w, const mn__jv *v, int indent);
/* Shorthand for "key": value. */
void mn__jw_kstr(mn__jw *w, const char *k, const char *v);
void mn__jw_kint(mn__jw *w, const char *k, int64_t v);
void mn__jw_kdouble(mn__jw *w, const char *k, double v);
void mn__jw_kbool(mn__jw *w, const char *k, bool v);
mn__jw_mark mn__jw_get_mark(const mn__jw *w);
void mn__jw_rewind(mn__jw *w, mn__jw_mark m);
/** Escape the bytes as a JSON string body (no quotes); invalid UTF-8
 *  becomes U+FFFD. */
void mn__jw_escape(mn__jw *w, const char *s, size_t n);

/** Shortest decimal that reads back as exactly f; returns its length
 *  (at most 24 bytes, not NUL-terminated). Non-finite: "null". */
size_t mn__fmt_f32(char *out, float f);
/** x[0], ..., x[n - 1] as mn__fmt_f32 writes them, separated by ','.
 *  Returns the length; up to 25 * n + 32 bytes at `out` may be written
 *  (the vector code copies in fixed-size pieces). */
size_t mn__fmt_f32_list(char *out, const float *x, size_t n);
/* The implementations mn__fmt_f32_list chooses between: one number at a
 * time, or 8 at a time with AVX-512 where the CPU has it (the same
 * text). */
size_t mn__fmt_f32_list_scalar(char *out, const float *x, size_t n);
size_t mn__fmt_f32_list_avx512(char *out, const float *x, size_t n);
/** 1 when mn__fmt_f32_list uses the AVX-512 code. */
int mn__fmt_have_avx512(void);
/* The numbers spanning start[i]..end[i] (no separator) for i < n, where
 * json.c's number_fast reads each exactly, into out[i] as the reader's
 * fast path makes them (divided by their power of ten already); stops at
 * the first span it does not take and returns how many it converted. At
 * least 16 readable bytes must follow each start. AVX-512 (see
 * json_avx512.c). */
size_t mn__json_nums_avx512(const char *const *start, const char *const *end,
                            size_t n, double *out);
/** Tests: turn the reader's AVX-512 number code on (1) or off (0) where
 *  the CPU has it, or leave it (-1); returns whether it was on. */
int mn__json_simd_numbers(int on);
/** Shortest decimal that reads back as exactly d (at most 32 bytes). */
size_t mn__fmt_f64(char *out, double d);

/* ------------------------------------------------------------------------
 * The engine and one call's context.
 * ---------------------------------------------------------------------- */
typedef struct mn__pca_store mn__pca_store;

/* The method table's JSON texts, parsed: per method its input and output
 * schemas, example request and example reply (NULL: no reply). */
typedef struct mn__table {
  const mn__jv **in, **out, **req, **rep;
} mn__table;

/** Parse every schema and example of mn__methods into the arena. */
mn_status mn__table_load(mn__arena *a, mn__table *t);
void mn__table_free(mn__table *t);
/** The text with adjacent string literals ("ab" "cd") joined: the table's
 *  JSON is written with C string concatenation in mind. */
char *mn__json_join_literals(mn__arena *a, const char *text);

struct mn_rpc {
  const mn_config *config;
  mn_backend *backend;
  mn_backend *cpu;      /* owned: where a job goes when `backend` (a device)
                           runs out of memory; NULL when `backend` is the CPU */
  mn__batcher *batcher; /* processEmbeddings jobs (NULL: batching off) */
  mn_metrics *metrics;
  mn__pca_store *pca;
  mn_store *store; /* the memory store (methods_store.c) */
  uint64_t started_ns;
  int max_depth;
  int active;            /* requests being handled now (atomic) */
  mn__arena table_arena; /* parsed schemas and examples of the table */
  mn__table table;
};

/*
 * One connection's MCP state. The server runs a connection's requests on
 * several workers at once, so initialize, notifications/initialized and
 * any reader may overlap. `r` and `peer` are fixed at creation. The flag
 * and the negotiated version are single ints read and written atomically
 * (the version as an index into a static table, so a reader never sees
 * half of one string and half of another); the client's name and version
 * belong together and change under `lock`. Methods that do not touch this
 * state (processEmbeddings and the rest) take no lock.
 */
struct mn_rpc_session {
  mn_rpc *r;
  char peer[64];
  size_t headroom; /* bytes in front of each reply; set before first use */
  int initialized; /* notifications/initialized seen (atomic) */
  int protocol;    /* atomic: 1 + index of the negotiated MCP version in
                      mcp.c's table; 0 before initialize */
  pthread_mutex_t lock;
  char client_name[64]; /* under lock */
  char client_version[32];
};

/** The negotiated MCP version ("" before initialize); a static string. */
const char *mn__session_protocol(const mn_rpc_session *s);
/** 1 once notifications/initialized was seen. */
int mn__session_initialized(const mn_rpc_session *s);
/** A consistent copy of the client's name and version ("" when unknown). */
void mn__session_client(mn_rpc_session *s, char *name, size_t name_len,
                        char *version, size_t version_len);

typedef enum mn__enc {
  MN__ENC_JSON = 0,
  MN__ENC_BASE64 = 1,
  MN__ENC_BINARY = 2
} mn__enc;

/* A growing byte buffer for a binary reply's payload: malloc'd, or a
 * tensor's mn_malloc'd buffer adopted as it is (mn__tensor_encode_take). */
typedef struct mn__bytes {
  uint8_t *p;
  size_t len, cap;
  int adopted; /* p is mn_malloc memory */
} mn__bytes;

void mn__bytes_free(mn__bytes *b);

typedef struct mn__call {
  mn_rpc *r;
  mn_rpc_session *s;
  mn__arena *a;
  const uint8_t *payload; /* binary request: the bytes after the JSON */
  size_t payload_len;
  int binary_in;
  int text_only;          /* the transport carries JSON text only (HTTP /mcp): a
                             tensor in a binary buffer, or a binary reply, is
                             refused */
  mn__bytes *payload_out; /* binary reply payload */
  uint64_t deadline_ns;
  const char *root; /* "params", or "arguments" inside tools/call */
  /* The error being reported, when a handler fails. */
  int err_code;
  char err_msg[1024];
  char err_data[256];      /* JSON object text or "" */
  int64_t requested_bytes; /* the handler's estimate, for -32000 data */
} mn__call;

/**
 * A method handler writes its result (one JSON value) into w and returns
 * 0, or records an error with mn__fail / mn__fail_status and returns its
 * code (what was written is discarded).
 */
typedef int (*mn__handler)(mn__call *c, const mn__jv *params, mn__jw *w);

#define MN__M_TOOL 1u     /* listed by tools/list and callable through it */
#define MN__M_PROTOCOL 2u /* MCP protocol method */

typedef struct mn__method {
  const char *name;
  mn__handler handler;
  unsigned flags;
  const char *title;
  const char *description;
  const char *input_schema;  /* JSON Schema text, type object */
  const char *output_schema; /* JSON Schema text, type object */
  const char *tensor_param;  /* checked by the codec, not the schema */
  const char *example_request;
  const char *example_reply;
} mn__method;

extern const mn__method mn__methods[];
extern const size_t mn__n_methods;
const mn__method *mn__method_find(const char *name, size_t n);
ptrdiff_t mn__method_index(const mn__method *m);

/** Record a JSON-RPC error for the call; returns code. */
int mn__fail(mn__call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/** As mn__fail, with data (a JSON object text). */
int mn__fail_data(mn__call *c, int code, const char *data_json, const char *fmt,
                  ...) __attribute__((format(printf, 4, 5)));
/**
 * The one mapping from mn_status to a JSON-RPC error: MN_ERR_INVALID and
 * MN_ERR_RANGE -32602; NOMEM, DEVICE_OOM, RESOURCE -32000 with requested /
 * available; TIMEOUT -32002; NUMERIC, DEVICE -32001; else -32603. The
 * message is `prefix` (may be NULL) followed by mn_errmsg().
 */
int mn__fail_status(mn__call *c, mn_status s, const char *prefix);
/** The JSON-RPC code mn__fail_status gives a status. */
int mn__status_code(mn_status s);
/** -32002 when the call's deadline has passed, else 0. */
int mn__check_deadline(mn__call *c);

/**
 * mn_pipeline_run on the engine's backend; when that is a device and
 * reports MN_ERR_DEVICE_OOM, the job runs again on the CPU backend, the
 * fallback is logged and counted (cpu_fallbacks) and MN__RUN_CPU_FALLBACK
 * is set in *flags (may be NULL). The batcher's run function.
 */
mn_status mn__rpc_pipeline(void *rpc, const mn_tensor *in,
                           const mn_pipeline_opts *o, mn_pipeline_result *res,
                           unsigned *flags);
/** mn_backend_pca_fit (host rows on any backend) with the same CPU
 *  retry. */
mn_status mn__rpc_pca_fit(mn_rpc *r, const mn_tensor *x, int64_t k,
                          mn_pca_model **out, unsigned *flags);
/** A job that ran out of device memory and was done on the CPU: logged (a
 *  warning naming `what`, the device and `why`, the device's message;
 *  NULL: mn_errmsg()) and counted (cpu_fallbacks). The store's searches
 *  fall back by themselves (mn_search_result_cpu_fallback); their handler
 *  reports it here. */
void mn__rpc_note_fallback(mn_rpc *r, const char *what, const char *why);

/** Validate `v` against a schema; on failure -32602 naming the path. */
int mn__schema_check(mn__call *c, const mn__jv *schema, const mn__jv *v,
                     const char *path, const char *skip_prop);

/* MCP protocol handlers (mcp.c) and the tool wrapper. */
int mn__mcp_initialize(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__mcp_initialized(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__mcp_ping(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__mcp_tools_list(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__mcp_tools_call(mn__call *c, const mn__jv *p, mn__jw *w);
/** Run a method's handler after checking params against its schema. */
int mn__invoke(mn__call *c, const mn__method *m, const mn__jv *params,
               mn__jw *w);

/* ------------------------------------------------------------------------
 * Tensor codec (codec.c).
 * ---------------------------------------------------------------------- */
typedef struct mn__tin {
  float *data; /* arena memory, rows * cols, dense */
  int64_t rows, cols;
  mn__enc enc;   /* how it came */
  int one_d;     /* sent as one vector (1-D array, Float32Array object,
                    shape [n]) */
  int unchecked; /* typed values not yet looked at for NaN / Inf */
} mn__tin;

/** Decode a tensor parameter into float32; -32602 naming `path` and the
 *  row on any problem (also NaN / Inf). The data may point into the
 *  request (a binary frame's payload): read it, never write it. */
int mn__tensor_decode(mn__call *c, const mn__jv *v, const char *path,
                      mn__tin *out);
/** As mn__tensor_decode, but typed tensors (base64, binary) are not looked
 *  at for NaN / Inf (out->unchecked is set): for a caller that hands them
 *  to code which checks anyway (mn_pipeline_run), so that the values are
 *  not read one extra time. JSON numbers are checked as they convert. */
int mn__tensor_decode_unchecked(mn__call *c, const mn__jv *v, const char *path,
                                mn__tin *out);
/** The NaN / Inf check mn__tensor_decode makes, with its message. */
int mn__tensor_check(mn__call *c, const mn__tin *in, const char *path);
/** Write tensor t (host) as a JSON value in the given encoding. */
int mn__tensor_encode(mn__call *c, mn__jw *w, const mn_tensor *t, mn__enc enc,
                      int one_d);
/** As mn__tensor_encode, for a tensor whose data is mn_malloc memory the
 *  caller gives up: the first binary buffer of a reply becomes the reply's
 *  payload without a copy, and t->data is set to NULL when that happens
 *  (the caller still frees whatever t->data is afterwards). */
int mn__tensor_encode_take(mn__call *c, mn__jw *w, mn_tensor *t, mn__enc enc,
                           int one_d);
/** -32602 for a binary reply asked for where the transport carries text
 *  only (c->text_only). */
int mn__enc_refuse_binary(mn__call *c);
/** Base64 (standard alphabet, padded): writes 4 * ceil(n / 3) bytes. */
size_t mn__b64_encode(const uint8_t *in, size_t n, char *out);
/** Returns the decoded length, or -1 (and *bad = offset) on bad input.
 *  Up to two '=' end the input; '-' and '_' (base64url) are accepted.
 *  Writes exactly the decoded length. */
int64_t mn__b64_decode(const char *in, size_t n, uint8_t *out, size_t *bad);
size_t mn__b64_decoded_len(const char *in, size_t n);
/* The implementations mn__b64_encode / _decode choose between (the AVX2
 * ones only where the CPU has AVX2; the same output, byte for byte). */
size_t mn__b64_encode_scalar(const uint8_t *in, size_t n, char *out);
int64_t mn__b64_decode_scalar(const char *in, size_t n, uint8_t *out,
                              size_t *bad);
size_t mn__b64_encode_avx2(const uint8_t *in, size_t n, char *out);
int64_t mn__b64_decode_avx2(const char *in, size_t n, uint8_t *out,
                            size_t *bad);
/** Take up to two '=' of padding off the end of in[0, *n); -1 (and
 *  *bad = the new *n) when the length left is one no base64 text has. */
int mn__b64_unpad(const char *in, size_t *n, size_t *bad);
/** Decode characters with the padding already taken off (n % 4 != 1). */
int64_t mn__b64_decode_body(const char *in, size_t n, uint8_t *out,
                            size_t *bad);
/** 1 when mn__b64_encode / _decode use the AVX2 code. */
int mn__b64_have_avx2(void);

/* ------------------------------------------------------------------------
 * Named PCA models (pca_store.c).
 * ---------------------------------------------------------------------- */
typedef struct mn__pca_entry_info {
  char name[65];
  int64_t input_dim, n_components, n_samples;
  int whiten;
  double total_ratio;
  double created; /* Unix seconds */
} mn__pca_entry_info;

mn_status mn__pca_store_open(const char *data_dir, mn__pca_store **out);
void mn__pca_store_close(mn__pca_store *ps);
/** Is `name` 1-64 characters of [A-Za-z0-9_.-], not "." or ".."? */
bool mn__pca_name_ok(const char *name, size_t n);
/** Borrow a model (NULL when absent); give it back with _put. */
const mn_pca_model *mn__pca_store_get(mn__pca_store *ps, const char *name,
                                      int *whiten);
void mn__pca_store_put(mn__pca_store *ps, const mn_pca_model *m);
/** Persist and publish (takes ownership of m, also on failure). */
mn_status mn__pca_store_add(mn__pca_store *ps, const char *name,
                            mn_pca_model *m, int whiten, int *replaced);
/** Remove the model and its file; *deleted says whether it existed. */
mn_status mn__pca_store_delete(mn__pca_store *ps, const char *name,
                               int *deleted);
/** A snapshot of the models, sorted by name (malloc'd array). */
size_t mn__pca_store_list(mn__pca_store *ps, mn__pca_entry_info **out);

/* ------------------------------------------------------------------------
 * Documentation (apidoc.c) and health (methods.c).
 * ---------------------------------------------------------------------- */
void mn__write_health(mn_rpc *r, mn__jw *w);
/** "normal", "high_load" or "recovery" from host memory against
 *  processing.cache_size. */
const char *mn__pressure_state(const mn_rpc *r, double *usage_ratio);

/* ------------------------------------------------------------------------
 * The memory store's methods (methods_store.c; table entries in
 * methods_store.inc).
 * ---------------------------------------------------------------------- */
mn_status mn__rpc_store_open(mn_rpc *r);
void mn__rpc_store_close(mn_rpc *r);
int mn__h_create_collection(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_list_collections(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_get_collection(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_drop_collection(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_add_memories(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_store_memory(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_get_memories(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_update_memory(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_delete_memories(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_search_memories(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_allocate_memory(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_process_chunk(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_read_chunk(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_free_memory(mn__call *c, const mn__jv *p, mn__jw *w);
int mn__h_list_chunks(mn__call *c, const mn__jv *p, mn__jw *w);
/** The store's state, tiers and counters as one JSON object. */
void mn__write_store_status(mn_rpc *r, mn__jw *w);
/** Memory chunks in every tier plus working chunks. */
int64_t mn__store_chunk_count(mn_rpc *r);

#endif /* MNEMO_RPC_INTERNAL_H */
