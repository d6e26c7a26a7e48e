/*
 * server_internal.h - what server.c (the libwebsockets loop), conn.c
 * (connection state shared with the workers) and workers.c (job queue,
 * worker pool, watchdog) share. Not public.
 *
 * DESIGN: three kinds of thread touch a connection.
 *  - The I/O thread owns the lws side: the wsi pointer, reassembly, the
 *    all-connections list, flow control, writing. Nothing else reads
 *    those fields.
 *  - Workers and the watchdog push replies onto the connection's outgoing
 *    queue and update its in-flight count, under conn->lock, then put the
 *    connection on the server's ready list and wake the loop.
 *  - A connection is reference counted: the open wsi holds one reference,
 *    each job one, the ready list one. Whoever drops the last frees it, so
 *    a connection closed while its jobs run is freed by the last worker and
 *    the replies meant for it are dropped.
 */
#ifndef MNEMO_SERVER_INTERNAL_H
#define MNEMO_SERVER_INTERNAL_H

#include "common/internal.h"
#include "mnemo/server.h"

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>

/* Limits that keep one connection from holding unbounded memory: when a
 * connection has this many jobs in flight, or this many reply bytes
 * waiting to be written, the loop stops reading from it until it drains
 * below half of each. */
#define MN__CONN_MAX_INFLIGHT 64
#define MN__CONN_MAX_OUT_BYTES (64u << 20)
/* The most lws reads from a socket at a time (its rx_buffer_size and
 * per-thread buffer). A 32 x 768 float32 request (98 KB) then arrives in
 * one read and one callback instead of two. lws also sets each
 * connection's SO_SNDBUF to this (the kernel doubles it), so a reply of
 * that size leaves in one send. */
#define MN__RX_CHUNK (256u * 1024u)
/* Replies are written in frames of at most this size so that one large
 * reply does not hold the loop while other connections wait. */
#define MN__TX_FRAGMENT (1u << 20)
/* The engine builds its replies behind LWS_PRE bytes of headroom, which
 * the loop writes in place. Replies built elsewhere (errors answered by
 * the workers or the watchdog) up to this size are copied by the worker
 * behind headroom; larger ones are sent from their own buffer, the first
 * fragment through a scratch buffer. */
#define MN__TX_HEADROOM_MAX (4u << 20)
/* Messages read in one round of the event loop go to the workers
 * together when the round ends, not one wake-up each, unless this many
 * jobs or bytes gather first (a bound on how long the first one waits). */
#define MN__SUBMIT_MAX_JOBS 16
#define MN__SUBMIT_MAX_BYTES (1u << 20)
/* A job still running this long past its deadline is answered by the
 * watchdog with -32002. */
#define MN__WATCHDOG_GRACE_NS 1000000000ull

typedef struct mn__conn mn__conn;

/* One reply waiting to be written. */
typedef struct mn__outmsg {
  struct mn__outmsg *next;
  unsigned char *alloc;   /* what to free */
  unsigned char *payload; /* first payload byte */
  size_t len;
  size_t off; /* bytes already written */
  int binary;
  int headroom;           /* LWS_PRE writable bytes before payload */
  int close_code;         /* nonzero: not a reply; close with this code */
  char close_reason[124]; /* a close frame holds 123 bytes of it */
  int http_status;        /* HTTP /mcp: the status to answer (0 = 200) */
  int http_initialized;   /* HTTP /mcp: an initialize that succeeded */
} mn__outmsg;

struct mn__conn {
  atomic_int refs;
  atomic_int closed; /* set when the wsi went away */
  atomic_int failed; /* a worker found it broken: drop what follows */
  mn_server *srv;
  mn_rpc_session *session; /* owned, or borrowed from parent */
  uint64_t id;
  char peer[80];
  /* HTTP /mcp (http_mcp.c). A session is a connection without a wsi that
   * owns the engine session and the rate-limit bucket; each POST is a
   * connection of its own (http = 1, its wsi the HTTP transaction's)
   * whose parent is its session, with a reference held. Set at creation,
   * read-only after. */
  int http;
  int http_need_init; /* the POST had no session: initialize only */
  mn__conn *parent;

  /* I/O thread only. */
  struct lws *wsi;
  mn__conn *prev, *next; /* all open connections */
  unsigned char *rx;     /* allocation of the message being reassembled */
  size_t rx_pad;         /* bytes in front of the message in rx */
  size_t rx_len, rx_cap; /* message bytes; room for them after rx_pad */
  int rx_active, rx_binary;
  int rx_paused;
  int closing; /* close once the queue is written */
  int close_code;
  const char *close_reason;
  uint64_t last_activity_ns;

  /* Under lock. */
  pthread_mutex_t lock;
  mn__outmsg *out_head, *out_tail;
  size_t out_count, out_bytes;
  int inflight;  /* jobs queued or running */
  double tokens; /* rate limit bucket */
  uint64_t tokens_ns;

  /* Under srv->ready_lock. */
  int on_ready;
  mn__conn *ready_next;
  mn__conn *io_next; /* I/O thread: the ready list being processed */
};

/* One complete message handed to the workers. */
typedef struct mn__job {
  struct mn__job *next;
  mn__conn *conn;       /* holds a reference */
  unsigned char *alloc; /* what to free: msg, or a few bytes before it */
  unsigned char *msg;
  size_t len;
  int binary;
  int reject; /* answer "shutting down" without running it */
  uint64_t enq_ns;
  uint64_t deadline_ns;
  int answered; /* the watchdog replied already (pool lock) */
} mn__job;

typedef struct mn__pool mn__pool;

typedef enum mn__srv_state {
  MN__SRV_SERVING = 0,
  MN__SRV_DRAINING = 1, /* no new sessions, finishing jobs */
  MN__SRV_CLOSING = 2,  /* closing connections with 1001 */
  MN__SRV_DONE = 3
} mn__srv_state;

struct mn_server {
  const mn_config *cfg;
  mn_rpc *rpc;
  mn_metrics *metrics;
  int64_t drain_ms;
  int port;

  struct lws_context *ctx;
  struct lws_vhost *vhost;
  lws_sorted_usec_list_t tick;

  /* I/O thread only. */
  mn__conn *conns; /* all open WebSocket connections */
  int64_t n_conns;
  uint64_t next_conn_id;
  mn__srv_state state;
  uint64_t drain_deadline_ns, close_deadline_ns, last_idle_scan_ns;
  unsigned char *scratch; /* LWS_PRE + MN__TX_FRAGMENT */
  uint64_t started_ns;

  atomic_int stop_requested; /* 1 = drain, 2 = skip the drain */

  /* Completion list: connections with news for the loop. */
  pthread_mutex_t ready_lock;
  mn__conn *ready_head;
  int wake_pending;
  int ctx_alive;

  struct mn__mcp *mcp; /* HTTP /mcp sessions and requests (http_mcp.c) */

  mn__pool *pool;
  /* I/O thread: jobs read in this round of lws_service(), handed to the
   * pool together when it returns (or at MN__SUBMIT_MAX_JOBS / _BYTES). */
  mn__job *pend_head, *pend_tail;
  int64_t pend_n;
  size_t pend_bytes;
  int drain_timed_out;
  int drain_rejected; /* queued jobs were told to answer -32004 */
  /* Stopping, but still serving until leave_deadline_ns with /ready at 503
   * (server.drain_delay): a load balancer takes the server out first. */
  int leaving;
  uint64_t leave_deadline_ns;

  /* Overload: jobs handed over and not yet answered, over all
   * connections (the loop adds; workers, or the watchdog when it answers a
   * job first, subtract). At queue_limit the
   * loop stops reading from connections (TCP pushes back on the clients)
   * until it falls to three quarters; a backlog of thousands of read
   * messages only made every one of them cold in the caches. */
  atomic_llong backlog;
  int64_t queue_limit;
  int64_t n_paused; /* I/O thread: connections with rx_paused set */
};

/* conn.c */
mn__conn *mn__conn_new(mn_server *s, struct lws *wsi, const char *peer);
/* An HTTP /mcp request of the session `parent` (see struct mn__conn). */
mn__conn *mn__conn_new_request(mn__conn *parent, struct lws *wsi,
                               int need_init);
void mn__conn_ref(mn__conn *c);
void mn__conn_unref(mn__conn *c);
/* A worker or the watchdog finished something for c: push the reply
 * (may be empty) and wake the loop. Takes ownership of reply->data. */
void mn__conn_complete(mn__conn *c, mn_rpc_reply *reply, int job_done);
/* The same, for a worker's reply to an HTTP /mcp request: the status and
 * the initialize flag travel with it, and a reply is queued even when
 * empty (202) so that the loop answers the POST. */
void mn__conn_complete_http(mn__conn *c, mn_rpc_reply *reply, int job_done,
                            int status, int initialized);
/* A worker found the connection broken (invalid UTF-8): queue a close
 * with `code` after the replies already waiting; later messages are
 * dropped. */
void mn__conn_fail(mn__conn *c, int code, const char *reason);
/* Put c on the ready list and wake the loop (any thread). */
void mn__conn_mark_ready(mn__conn *c);
/* Wake the loop with nothing on the ready list, so that it looks at the
 * shutdown state again (any thread). */
void mn__server_wake(mn_server *s);
/* Token bucket: take n tokens; 0 when allowed, else milliseconds until
 * they would be available. */
int64_t mn__conn_rate_take(mn__conn *c, int64_t n, int64_t per_minute);
/* Pop the head of the outgoing queue when it is fully written. */
mn__outmsg *mn__conn_out_peek(mn__conn *c);
void mn__conn_out_pop_done(mn__conn *c);
void mn__conn_out_state(mn__conn *c, size_t *count, size_t *bytes,
                        int *inflight);

/* workers.c */
mn_status mn__pool_start(mn_server *s, int nworkers, mn__pool **out);
/* Queue n jobs linked through ->next, first to last, in one step. */
void mn__pool_submit_list(mn__pool *p, mn__job *first, mn__job *last,
                          int64_t n);
/* Jobs queued or running. */
int64_t mn__pool_inflight(mn__pool *p);
/* Take every job still queued off the queue and answer it "shutting
 * down" (-32004) at once, without running it (the drain deadline passed).
 * Answered here, not by a worker: the workers may all be busy with jobs
 * that outlast the drain. Returns how many were answered. */
int64_t mn__pool_reject_queued(mn__pool *p);
int64_t mn__pool_queue_depth(mn__pool *p);
/* Stop the workers and the watchdog: waits up to wait_ms for running
 * jobs; returns MN_ERR_TIMEOUT (and leaves stuck threads detached) when
 * they did not finish. */
mn_status mn__pool_stop(mn__pool *p, int64_t wait_ms);
void mn__pool_free(mn__pool *p);
/* Requests in a message for rate limiting: the members of a batch, else 1.
 * A byte scan of the JSON text, no parse. */
int64_t mn__count_requests(const unsigned char *msg, size_t len, int binary);
void mn__job_free(mn__job *j);

/* http_mcp.c: MCP Streamable HTTP at /mcp, on the I/O thread. */
typedef struct mn__mcp mn__mcp;
/* An HTTP request for /mcp (LWS_CALLBACK_HTTP). *slot is the wsi's
 * per-transaction pointer; returns what the lws callback returns. */
int mn__mcp_http(mn_server *s, struct lws *wsi, void **slot);
/* LWS_CALLBACK_HTTP_BODY / _BODY_COMPLETION / HTTP_WRITEABLE /
 * CLOSED_HTTP for a wsi whose *slot is set. */
int mn__mcp_body(mn_server *s, struct lws *wsi, void **slot, const void *in,
                 size_t len);
int mn__mcp_body_done(mn_server *s, struct lws *wsi, void **slot);
int mn__mcp_writeable(mn_server *s, struct lws *wsi, void **slot);
/* The loop found a reply for the HTTP request c (on_wake). */
void mn__mcp_wake(mn__conn *c);
void mn__mcp_closed(mn_server *s, void **slot);
/* Requests handed to the workers and not yet answered (the drain waits
 * for them; a body still arriving does not hold it up). */
int64_t mn__mcp_pending(const mn_server *s);
/* Once a second from the tick: end sessions idle past their timeout. */
void mn__mcp_tick(mn_server *s, uint64_t now_ns);
/* The sessions go (after the loop and the pool have stopped). */
void mn__mcp_free(mn_server *s);
/* server.c's checks, shared with http_mcp.c. */
int mn__check_auth(const mn_config *cfg, struct lws *wsi);
int mn__check_origin(const mn_config *cfg, struct lws *wsi);

/* utf8.c: 1 when p[0..n) is well-formed UTF-8 (RFC 3629). */
int mn__utf8_valid(const unsigned char *p, size_t n);

#endif /* MNEMO_SERVER_INTERNAL_H */
