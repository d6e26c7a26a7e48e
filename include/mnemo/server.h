/*
 * mnemo/server.h - mnemod's network front: WebSocket JSON-RPC (subprotocol
 * "mcp", or none), HTTP (/health, /ready, /metrics, /) and MCP's
 * Streamable HTTP transport (POST / DELETE /mcp) on one port, built on
 * libwebsockets.
 *
 * DESIGN: one I/O thread runs the libwebsockets loop inside
 * mn_server_run(). It reassembles messages, applies the connection limits
 * and writes replies; it never parses JSON or computes. Each complete
 * message becomes a job on a queue served by a pool of worker threads
 * that call mn_rpc_handle() (mn_rpc_handle_http() for the body of a
 * POST /mcp); their replies go back through a completion
 * list that wakes the loop with lws_cancel_service(). A watchdog thread
 * answers -32002 for a job still running one second past its deadline.
 */
#ifndef MNEMO_SERVER_H
#define MNEMO_SERVER_H

#include "mnemo/common.h"
#include "mnemo/config.h"
#include "mnemo/metrics.h"
#include "mnemo/rpc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mn_server mn_server;

typedef struct mn_server_opts {
  /* Borrowed for the server's lifetime. Read: server.host, server.port
   * (0 = any free port), server.max_connections, server.max_message_size,
   * server.rate_limit, server.idle_timeout, server.auth_tokens,
   * server.allowed_origins, server.mcp_max_sessions,
   * server.mcp_session_timeout, processing.workers, processing.timeout. */
  const mn_config *config;
  mn_rpc *rpc;         /* borrowed */
  mn_metrics *metrics; /* borrowed; may be NULL */
  int64_t drain_ms;    /* graceful shutdown deadline, 0 = 10000 */
} mn_server_opts;

/**
 * Create the server: binds the listening socket and starts the workers,
 * but serves nothing until mn_server_run().
 * @param[in]  opts  options; the config and rpc are borrowed.
 * @param[out] out   the new server.
 * @return MN_OK; MN_ERR_IO when the address cannot be bound (the detail
 *         message names host and port); MN_ERR_NOMEM; MN_ERR_INVALID for
 *         options that make no sense.
 */
MN_API mn_status mn_server_create(const mn_server_opts *opts, mn_server **out);

/** The TCP port actually listened on (useful when server.port is 0). */
MN_API int mn_server_port(const mn_server *s);

/**
 * Serve until mn_server_stop(), then drain: refuse new WebSocket
 * sessions and new POSTs to /mcp (503), finish the jobs in flight (within
 * drain_ms), send their replies and close every connection with 1001.
 * Call from one thread.
 * @return MN_OK after a clean drain; MN_ERR_TIMEOUT when jobs were still
 *         running at the drain deadline (their replies are lost).
 */
MN_API mn_status mn_server_run(mn_server *s);

/**
 * Ask a running server to stop. Thread-safe; may be called from any thread
 * (not from a signal handler: use a thread that waits for the signal).
 * A second call while draining skips what is left of the drain.
 */
MN_API void mn_server_stop(mn_server *s);

/** Free the server. Call after mn_server_run() returned, or instead of
 *  it. NULL is accepted. */
MN_API void mn_server_destroy(mn_server *s);

#ifdef __cplusplus
}
#endif
#endif /* MNEMO_SERVER_H */
