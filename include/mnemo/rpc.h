/*
 * mnemo/rpc.h - the JSON-RPC 2.0 / MCP engine: envelope, batches, the
 * method table, the tensor codec and the methods themselves.
 *
 * DESIGN: the server's I/O thread never parses or computes. It hands each
 * complete message (text frame, or binary frame carrying JSON plus raw
 * tensor bytes) to a worker, which calls mn_rpc_handle(); the reply comes
 * back as bytes to write. mn_rpc_handle is thread-safe; per-connection
 * state (MCP initialize, negotiated version) lives in an mn_rpc_session.
 *
 * Binary frames: a little-endian u32 N, then N bytes of UTF-8 JSON, then
 * the raw payload. A tensor {"dtype","shape","buffer":{"offset","length"}}
 * refers to bytes of that payload (offset from its start). A reply to a
 * binary request is a binary frame of the same layout.
 */
#ifndef MNEMO_RPC_H
#define MNEMO_RPC_H

#include "mnemo/common.h"
#include "mnemo/compute.h"
#include "mnemo/config.h"
#include "mnemo/metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

/* JSON-RPC error codes (the spec's and the seed's). */
#define MN_RPC_PARSE_ERROR -32700
#define MN_RPC_INVALID_REQUEST -32600
#define MN_RPC_METHOD_NOT_FOUND -32601
#define MN_RPC_INVALID_PARAMS -32602
#define MN_RPC_INTERNAL_ERROR -32603
#define MN_RPC_RESOURCE_ERROR -32000
#define MN_RPC_PROCESSING_ERROR -32001
#define MN_RPC_TIMEOUT_ERROR -32002
#define MN_RPC_RATE_LIMITED -32003
#define MN_RPC_OVERLOADED -32004

typedef struct mn_rpc mn_rpc;
typedef struct mn_rpc_session mn_rpc_session;

typedef struct mn_rpc_opts {
  const mn_config *config; /* borrowed for the engine's lifetime */
  mn_backend *backend;     /* borrowed */
  mn_metrics *metrics;     /* borrowed; may be NULL */
} mn_rpc_opts;

/**
 * Create the engine: loads persisted PCA models from
 * <data_dir>/pca/. When `backend` is not the CPU backend, the engine opens
 * a CPU backend of its own beside it: jobs that fail with
 * MN_ERR_DEVICE_OOM run again there (counted as cpu_fallbacks; a
 * searchMemories that runs out of device memory is finished by the store
 * on its own CPU backend and counted the same way). With
 * processing.batch_window_us > 0 small compatible processEmbeddings jobs
 * are batched (docs/design.md). MN_ERR_IO when the data directory is
 * unusable.
 */
MN_API mn_status mn_rpc_create(const mn_rpc_opts *opts, mn_rpc **out);
MN_API void mn_rpc_destroy(mn_rpc *r);

/**
 * Per-connection state; `peer` is a label for logs ("127.0.0.1:5555").
 * A session may be used by several threads at once (the server runs one
 * connection's requests on several workers).
 */
MN_API mn_rpc_session *mn_rpc_session_new(mn_rpc *r, const char *peer);
MN_API void mn_rpc_session_free(mn_rpc_session *s);

/**
 * Ask for `bytes` (at most 4096) of writable room in front of every reply
 * mn_rpc_handle builds for this session, so that a transport can put its
 * frame header there and send the reply without copying it (libwebsockets
 * wants LWS_PRE bytes). Call it before the session's first request.
 */
MN_API void mn_rpc_session_set_headroom(mn_rpc_session *s, size_t bytes);

typedef struct mn_rpc_reply {
  void *data; /* bytes to send; NULL when nothing is sent */
  size_t len;
  int binary; /* send as a binary frame (else text) */
  /* Writable bytes in front of data, in the same allocation: the
   * session's headroom for replies of mn_rpc_handle, 0 otherwise. Release
   * the reply with mn_rpc_reply_free, or free((char *)data - headroom). */
  size_t headroom;
} mn_rpc_reply;

/**
 * Handle one complete message: a request, a notification or a batch.
 * `deadline_ns` (mn_time_ns() clock, 0 = none) bounds the work: a request
 * not finished by then answers -32002. Never fails: every problem becomes
 * a JSON-RPC error in the reply.
 */
MN_API void mn_rpc_handle(mn_rpc *r, mn_rpc_session *s, const void *msg,
                          size_t len, int binary, uint64_t deadline_ns,
                          mn_rpc_reply *out);

/**
 * MCP Streamable HTTP (the server's POST /mcp): one message, handled as
 * mn_rpc_handle does for a text frame, with the transport's rules on top.
 * Tensors in binary buffers and `encoding: "binary"` are refused with
 * -32602 (HTTP carries JSON text only).
 */
typedef struct mn_rpc_http {
  /* In: the POST carried no Mcp-Session-Id, so only a lone initialize
   * request is accepted (anything else: status 400 and an error saying
   * the header is missing). */
  int need_initialize;
  /* Out: 200, `out` holds the reply (application/json); 202, accepted
   * and nothing to send (notifications and responses only); 400, the
   * body is refused and `out` holds a JSON-RPC error saying why (not
   * JSON, not a request, a batch where the session's protocol version
   * has none, or no session). */
  int status;
  /* Out: the message was an initialize request that succeeded; the
   * transport starts the session. */
  int initialized;
} mn_rpc_http;

MN_API void mn_rpc_handle_http(mn_rpc *r, mn_rpc_session *s, const void *msg,
                               size_t len, uint64_t deadline_ns,
                               mn_rpc_http *http, mn_rpc_reply *out);

/** The MCP version the session negotiated ("" before initialize; a
 *  static string). */
MN_API const char *mn_rpc_session_protocol(const mn_rpc_session *s);

/** The MCP protocol versions the engine negotiates, newest first, as
 *  "2025-11-25, 2025-06-18, ..." (a static string). */
MN_API const char *mn_rpc_mcp_versions(void);
/** 1 when `v` (n bytes) is one of them. */
MN_API int mn_rpc_mcp_version_known(const char *v, size_t n);

/**
 * An error reply built outside the engine (rate limit, overload, the
 * server's timeout watchdog). `id_json` is the raw JSON of the id, or NULL
 * for null; `data_json` a JSON object text or NULL.
 */
MN_API void mn_rpc_error_reply(int code, const char *message,
                               const char *data_json, const char *id_json,
                               mn_rpc_reply *out);

/**
 * The "id" member of a message as raw JSON text (malloc'd), without a full
 * parse of large params; NULL when absent, not an object or a batch.
 */
MN_API char *mn_rpc_peek_id(const void *msg, size_t len, int binary);

MN_API void mn_rpc_reply_free(mn_rpc_reply *r);

/** The health document (/health and `health`), malloc'd JSON text. */
MN_API char *mn_rpc_health_json(mn_rpc *r);

/** Markdown for docs/API.md, generated from the method table (malloc'd). */
MN_API char *mn_rpc_api_markdown(mn_rpc *r);

#ifdef __cplusplus
}
#endif
#endif /* MNEMO_RPC_H */
