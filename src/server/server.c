/*
 * server.c - the libwebsockets side of mnemod: one context, one vhost,
 * two protocols sharing one callback ("mcp", and a default one that takes
 * WebSocket clients sending no subprotocol and the plain HTTP routes),
 * message reassembly, limits, reply writing and the graceful shutdown.
 *
 * DESIGN: everything here runs on the I/O thread inside lws_service(),
 * except mn_server_stop(). A complete message is handed, buffer and all,
 * to the worker pool (workers.c) without being looked at, together with
 * the others read in the same round of the loop (flush_jobs); replies come
 * back through the ready list (conn.c), which wakes the loop with
 * lws_cancel_service() and arrives here as LWS_CALLBACK_EVENT_WAIT_CANCELLED.
 * The loop then asks for a writeable callback on each connection with
 * replies waiting, and each writeable callback writes one frame.
 *
 * Shutdown is a small state machine driven by the wake-ups and a 100 ms
 * timer: SERVING -> DRAINING (new sessions refused, /ready says 503,
 * messages that still arrive are answered "shutting down", running jobs
 * finish) -> CLOSING (every connection closed with 1001 once its replies
 * are written) -> DONE (the loop returns).
 */
#define _GNU_SOURCE
#include "server/server_internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define TICK_US (100 * LWS_US_PER_MS)
#define CLOSE_WAIT_NS 3000000000ull
#define DRAIN_REJECT_GRACE_NS 2000000000ull
/* Not in lws's enum: the answer to a WebSocket version it does not
 * speak (RFC 6455 4.4). */
#define HTTP_UPGRADE_REQUIRED 426u

/* Per-wsi storage, for both HTTP transactions and WebSocket sessions. */
typedef struct pss {
  mn__conn *conn; /* WebSocket: the connection state */
  void *mcp;      /* HTTP /mcp: the request being answered (http_mcp.c) */
} pss;

/* The dashboard served at / and /index.html: src/server/dashboard.html,
 * embedded at build time by src/server/dashboard.cmake, which also writes
 * the Content-Security-Policy that allows its inline script and style by
 * their hashes (and connections to this origin only). */
extern const unsigned char mn__dashboard_html[];
extern const size_t mn__dashboard_html_len;
extern const char mn__dashboard_csp[];

static mn_server *server_of(struct lws *wsi) {
  return lws_context_user(lws_get_context(wsi));
}

/* ------------------------------------------------------------------------
 * lws's own log lines, routed to mnemo's log callback.
 * ---------------------------------------------------------------------- */
static void lws_log_emit(int level, const char *line) {
  char buf[512];
  size_t n = strlen(line);
  if (n >= sizeof buf)
    n = sizeof buf - 1;
  memcpy(buf, line, n);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    n--;
  buf[n] = 0;
  mn_log_level l = (level & LLL_ERR)    ? MN_LOG_ERROR
                   : (level & LLL_WARN) ? MN_LOG_WARN
                                        : MN_LOG_DEBUG;
  mn__log(l, "lws", "%s", buf);
}

/* ------------------------------------------------------------------------
 * HTTP routes.
 * ---------------------------------------------------------------------- */
/* Headers and body in one write, then the transaction is complete (lws
 * keeps and sends whatever the socket did not take at once). The body
 * used to follow in a later writeable callback; on the GPU machine a
 * /ready answered while draining then arrived as headers alone, the
 * connection closed before its 34-byte body. extra: NULL, or "name:",
 * "value" pairs ending with NULL (lws wants the names in lower case with
 * their colon). */
static int http_respond_with(struct lws *wsi, unsigned status,
                             const char *ctype, const char *body, size_t len,
                             const char *const *extra) {
  /* HEAD: the headers a GET would get, Content-Length included, and no
   * body (RFC 9110 9.3.2); load balancers probe /health this way. */
  int head = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0;
  size_t cap = LWS_PRE + 512 + len + 1;
  for (int i = 0; extra && extra[i]; i += 2)
    cap += strlen(extra[i]) + strlen(extra[i + 1]) + 4;
  unsigned char *buf = malloc(cap);
  if (!buf)
    return -1;
  unsigned char *start = buf + LWS_PRE, *p = start;
  unsigned char *end = buf + cap - 1;
  int bad = lws_add_http_common_headers(wsi, status, ctype, len, &p, end) ||
            lws_add_http_header_by_name(
                wsi, (const unsigned char *)"cache-control:",
                (const unsigned char *)"no-store", 8, &p, end);
  for (int i = 0; !bad && extra && extra[i]; i += 2)
    bad = lws_add_http_header_by_name(wsi, (const unsigned char *)extra[i],
                                      (const unsigned char *)extra[i + 1],
                                      (int)strlen(extra[i + 1]), &p, end);
  if (bad || lws_finalize_http_header(wsi, &p, end) ||
      (size_t)(end - p) < len) {
    free(buf);
    return -1;
  }
  if (!head) {
    memcpy(p, body, len);
    p += len;
  }
  int n = lws_write(wsi, start, (size_t)(p - start), LWS_WRITE_HTTP_HEADERS);
  free(buf);
  if (n < 0)
    return -1;
  return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int http_respond(struct lws *wsi, unsigned status, const char *ctype,
                        const char *body, size_t len) {
  return http_respond_with(wsi, status, ctype, body, len, NULL);
}

static int http_route(mn_server *s, struct lws *wsi, const char *uri) {
  if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0 &&
      lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) <= 0) {
    /* Answered at once, headers and body in one write: a request with a
     * body would otherwise hold back the writeable callback. */
    if (lws_return_http_status(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED,
                               "only GET and HEAD are served here"))
      return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
  }
  if (!strcmp(uri, "/health")) {
    char *doc = mn_rpc_health_json(s->rpc);
    if (!doc)
      return -1;
    int rc =
        http_respond(wsi, HTTP_STATUS_OK, "application/json", doc, strlen(doc));
    free(doc);
    return rc;
  }
  if (!strcmp(uri, "/ready")) {
    /* Not ready from the moment a stop is asked for, also while
     * server.drain_delay keeps serving. */
    int ready = s->state == MN__SRV_SERVING && !s->leaving;
    const char *doc = ready ? "{\"ready\":true,\"state\":\"serving\"}"
                            : "{\"ready\":false,\"state\":\"draining\"}";
    return http_respond(
        wsi, ready ? HTTP_STATUS_OK : HTTP_STATUS_SERVICE_UNAVAILABLE,
        "application/json", doc, strlen(doc));
  }
  if (!strcmp(uri, "/metrics")) {
    char *doc = s->metrics ? mn_metrics_prometheus(s->metrics) : NULL;
    const char *text = doc ? doc : "";
    int rc = http_respond(wsi, HTTP_STATUS_OK,
                          "text/plain; version=0.0.4; charset=utf-8", text,
                          strlen(text));
    free(doc);
    return rc;
  }
  if (!strcmp(uri, "/") || !strcmp(uri, "/index.html")) {
    /* The page may carry ?token=: no Referer leaves it. */
    const char *const headers[] = {"content-security-policy:",
                                   mn__dashboard_csp,
                                   "x-content-type-options:",
                                   "nosniff",
                                   "referrer-policy:",
                                   "no-referrer",
                                   NULL};
    return http_respond_with(wsi, HTTP_STATUS_OK, "text/html; charset=utf-8",
                             (const char *)mn__dashboard_html,
                             mn__dashboard_html_len, headers);
  }
  char msg[300];
  int n = snprintf(msg, sizeof msg,
                   "no such page: %.200s (try /, /health, /ready, /metrics, "
                   "or POST /mcp for MCP over HTTP)\n",
                   uri);
  return http_respond(wsi, HTTP_STATUS_NOT_FOUND, "text/plain; charset=utf-8",
                      msg, (size_t)n);
}

/* ------------------------------------------------------------------------
 * Upgrade checks: shutdown, connection limit, Origin, auth token.
 * ---------------------------------------------------------------------- */
static int refuse(mn_server *s, struct lws *wsi, unsigned status,
                  const char *why) {
  char peer[64] = "";
  lws_get_peer_simple(wsi, peer, sizeof peer);
  MN__LOGW("server", "refused a WebSocket from %s: %s", peer, why);
  if (s->metrics)
    mn_metrics_connection_refused(s->metrics);
  /* Written by hand: at this point lws would answer "HTTP/1.0", which
   * some WebSocket clients (Python websockets) reject as malformed
   * instead of reporting the status. */
  const char *text = status == HTTP_STATUS_UNAUTHORIZED  ? "Unauthorized"
                     : status == HTTP_STATUS_FORBIDDEN   ? "Forbidden"
                     : status == HTTP_STATUS_BAD_REQUEST ? "Bad Request"
                     : status == HTTP_UPGRADE_REQUIRED   ? "Upgrade Required"
                                                       : "Service Unavailable";
  unsigned char buf[LWS_PRE + 1024];
  char *p = (char *)buf + LWS_PRE;
  int n = snprintf(
      p, sizeof buf - LWS_PRE,
      "HTTP/1.1 %u %s\r\n"
      "Server: mnemod\r\n"
      "Content-Type: text/plain; charset=utf-8\r\n"
      "Content-Length: %zu\r\n"
      "%s"
      "Connection: close\r\n"
      "\r\n"
      "%s\n",
      status, text, strlen(why) + 1,
      status == HTTP_STATUS_UNAUTHORIZED ? "WWW-Authenticate: Bearer\r\n"
      : status == HTTP_UPGRADE_REQUIRED  ? "Sec-WebSocket-Version: 13\r\n"
                                         : "",
      why);
  if (n < 0 || (size_t)n >= sizeof buf - LWS_PRE)
    return -1;
  if (lws_write(wsi, (unsigned char *)p, (size_t)n, LWS_WRITE_HTTP) < 0)
    return -1;
  return 1; /* answered; lws ends the transaction */
}

/* Compare without leaking where the first difference is. */
static int token_equal(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  unsigned char d = (unsigned char)(la != lb);
  for (size_t i = 0; i < la; i++)
    d |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
  return d == 0 && lb > 0;
}

static int token_allowed(const mn_config *cfg, const char *tok) {
  int ok = 0;
  for (int i = 0; i < cfg->n_auth_tokens; i++)
    ok |= token_equal(tok, cfg->auth_tokens[i]);
  return ok;
}

static int check_auth(const mn_config *cfg, struct lws *wsi) {
  char buf[512];
  int n = lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_AUTHORIZATION);
  if (n > 7 && !strncasecmp(buf, "Bearer ", 7)) {
    const char *t = buf + 7;
    while (*t == ' ')
      t++;
    if (token_allowed(cfg, t))
      return 1;
  }
  for (int i = 0; i < 32; i++) {
    n = lws_hdr_copy_fragment(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_URI_ARGS, i);
    if (n <= 0)
      break;
    if (!strncmp(buf, "token=", 6) && token_allowed(cfg, buf + 6))
      return 1;
  }
  return 0;
}

int mn__check_auth(const mn_config *cfg, struct lws *wsi) {
  return check_auth(cfg, wsi);
}

static int check_origin(const mn_config *cfg, struct lws *wsi) {
  char origin[300];
  int n = lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN);
  /* Browsers always send Origin; a client that sends none is not a web
   * page, which is what the list protects against. */
  if (n <= 0)
    return 1;
  for (int i = 0; i < cfg->n_allowed_origins; i++) {
    const char *a = cfg->allowed_origins[i];
    if (!strcmp(a, "*") || !strcasecmp(a, origin))
      return 1;
  }
  return 0;
}

int mn__check_origin(const mn_config *cfg, struct lws *wsi) {
  return check_origin(cfg, wsi);
}

/* The client asked for subprotocols and none of them is ours: lws would
 * drop the connection without a word, so say why instead. */
static int wants_other_subprotocol(struct lws *wsi) {
  char list[256];
  int n = lws_hdr_copy(wsi, list, sizeof list, WSI_TOKEN_PROTOCOL);
  if (n <= 0)
    return 0;
  for (char *save = NULL, *t = strtok_r(list, ", \t", &save); t;
       t = strtok_r(NULL, ", \t", &save))
    if (!strcmp(t, "mcp") || !strcmp(t, "mnemo"))
      return 0;
  return 1;
}

/* Whether a comma-separated header value holds this token (any case). */
static int header_has_token(const char *list, const char *token) {
  size_t n = strlen(token);
  for (const char *p = list; *p;) {
    while (*p == ' ' || *p == '\t' || *p == ',')
      p++;
    const char *e = p;
    while (*e && *e != ',')
      e++;
    const char *t = e;
    while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
      t--;
    if ((size_t)(t - p) == n && !strncasecmp(p, token, n))
      return 1;
    p = e;
  }
  return 0;
}

/* Sec-WebSocket-Key: base64 of 16 bytes, which is 22 characters of the
 * base64 alphabet and "==". */
static int valid_ws_key(const char *k) {
  size_t n = strlen(k);
  if (n != 24 || k[22] != '=' || k[23] != '=')
    return 0;
  for (size_t i = 0; i < 22; i++)
    if (!isalnum((unsigned char)k[i]) && k[i] != '+' && k[i] != '/')
      return 0;
  return 1;
}

/* RFC 6455 4.2.1: what a client's opening handshake must hold. lws 4.1
 * accepts any method, any key and any version, and drops the connection
 * without a word when Host, Connection: Upgrade or the key is missing;
 * 4.2.2 asks for an HTTP error instead (426 with the versions served for
 * a version it does not speak). Returns the status, with *why set. */
static unsigned bad_handshake(struct lws *wsi, const char **why) {
  char buf[256];
  if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0) {
    *why = "a WebSocket handshake must be a GET request (RFC 6455 4.1)";
    return HTTP_STATUS_BAD_REQUEST;
  }
  /* RFC 6455 4.1: a path, or an absolute http(s) URI (whose "//" lws
   * has made "/" by now). */
  int ulen = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI);
  char *uri = malloc((size_t)ulen + 1);
  int path_ok = uri &&
                lws_hdr_copy(wsi, uri, ulen + 1, WSI_TOKEN_GET_URI) > 0 &&
                (uri[0] == '/' || !strncasecmp(uri, "http:", 5) ||
                 !strncasecmp(uri, "https:", 6));
  free(uri);
  if (!path_ok) {
    *why = "the WebSocket handshake's request line has no path: send "
           "'GET / HTTP/1.1'";
    return HTTP_STATUS_BAD_REQUEST;
  }
  if (lws_hdr_total_length(wsi, WSI_TOKEN_HOST) <= 0) {
    *why = "the WebSocket handshake has no Host header";
    return HTTP_STATUS_BAD_REQUEST;
  }
  if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_CONNECTION) <= 0 ||
      !header_has_token(buf, "upgrade")) {
    *why = "the WebSocket handshake needs 'Connection: Upgrade'";
    return HTTP_STATUS_BAD_REQUEST;
  }
  if (lws_hdr_total_length(wsi, WSI_TOKEN_VERSION) <= 0) {
    *why = "the WebSocket handshake has no Sec-WebSocket-Version header; "
           "send 'Sec-WebSocket-Version: 13'";
    return HTTP_STATUS_BAD_REQUEST;
  }
  if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_VERSION) <= 0 ||
      strcmp(buf, "13")) {
    *why = "unsupported Sec-WebSocket-Version: this server speaks version "
           "13 (RFC 6455)";
    return HTTP_UPGRADE_REQUIRED;
  }
  if (lws_hdr_total_length(wsi, WSI_TOKEN_KEY) <= 0) {
    *why = "the WebSocket handshake has no Sec-WebSocket-Key header";
    return HTTP_STATUS_BAD_REQUEST;
  }
  if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_KEY) <= 0 ||
      !valid_ws_key(buf)) {
    *why = "Sec-WebSocket-Key must be 16 random bytes in base64 "
           "(24 characters)";
    return HTTP_STATUS_BAD_REQUEST;
  }
  return 0;
}

static int confirm_upgrade(mn_server *s, struct lws *wsi, const char *up) {
  if (!up || strcasecmp(up, "websocket"))
    return 0;
  const mn_config *cfg = s->cfg;
  char why[200];
  const char *bad = NULL;
  unsigned status = bad_handshake(wsi, &bad);
  if (status)
    return refuse(s, wsi, status, bad);
  if (s->state != MN__SRV_SERVING)
    return refuse(s, wsi, HTTP_STATUS_SERVICE_UNAVAILABLE,
                  "server is shutting down");
  if (cfg->max_connections > 0 && s->n_conns >= cfg->max_connections) {
    snprintf(why, sizeof why,
             "too many connections: the limit is %lld "
             "(server.max_connections)",
             (long long)cfg->max_connections);
    return refuse(s, wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, why);
  }
  if (wants_other_subprotocol(wsi))
    return refuse(s, wsi, HTTP_STATUS_BAD_REQUEST,
                  "unsupported WebSocket subprotocol: use 'mcp' or none");
  if (cfg->n_allowed_origins > 0 && !check_origin(cfg, wsi))
    return refuse(s, wsi, HTTP_STATUS_FORBIDDEN,
                  "this Origin is not in server.allowed_origins");
  if (cfg->n_auth_tokens > 0 && !check_auth(cfg, wsi))
    return refuse(s, wsi, HTTP_STATUS_UNAUTHORIZED,
                  "missing or wrong token: send 'Authorization: Bearer "
                  "TOKEN' or ?token=TOKEN");
  return 0;
}

/* ------------------------------------------------------------------------
 * WebSocket connections.
 * ---------------------------------------------------------------------- */
static void conn_link(mn_server *s, mn__conn *c) {
  c->prev = NULL;
  c->next = s->conns;
  if (s->conns)
    s->conns->prev = c;
  s->conns = c;
  s->n_conns++;
}

static void conn_unlink(mn_server *s, mn__conn *c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  c->prev = c->next = NULL;
  s->n_conns--;
}

/* Stop reading from a connection that has too much in flight or too much
 * waiting to be written, or while the whole server is at its queue limit;
 * resume below half of both, and below three quarters of the limit. */
static void update_flow(mn_server *s, mn__conn *c, int inflight,
                        size_t out_bytes) {
  if (!c->wsi || c->http)
    return; /* an HTTP /mcp request holds one message at most */
  int64_t backlog = atomic_load(&s->backlog);
  if (!c->rx_paused &&
      (inflight >= MN__CONN_MAX_INFLIGHT ||
       out_bytes >= MN__CONN_MAX_OUT_BYTES || backlog >= s->queue_limit)) {
    c->rx_paused = 1;
    s->n_paused++;
    if (s->metrics)
      mn_metrics_count(s->metrics, "read_pauses", 1);
    lws_rx_flow_control(c->wsi, 0);
  } else if (c->rx_paused && inflight < MN__CONN_MAX_INFLIGHT / 2 &&
             out_bytes < MN__CONN_MAX_OUT_BYTES / 2 &&
             backlog < s->queue_limit - s->queue_limit / 4) {
    c->rx_paused = 0;
    s->n_paused--;
    lws_rx_flow_control(c->wsi, 1 | LWS_RXFLOW_REASON_FLAG_PROCESS_NOW);
  }
}

/* The backlog fell: let paused connections read again (those still over
 * their own limits stay paused). */
static void resume_paused(mn_server *s) {
  if (!s->n_paused ||
      atomic_load(&s->backlog) >= s->queue_limit - s->queue_limit / 4)
    return;
  for (mn__conn *c = s->conns; c && s->n_paused; c = c->next) {
    if (!c->rx_paused)
      continue;
    size_t bytes;
    int inflight;
    mn__conn_out_state(c, NULL, &bytes, &inflight);
    update_flow(s, c, inflight, bytes);
  }
}

static void begin_close(mn__conn *c, int code, const char *reason) {
  if (c->closing || !c->wsi)
    return;
  c->closing = 1;
  c->close_code = code;
  c->close_reason = reason;
  lws_callback_on_writable(c->wsi);
}

static int on_established(mn_server *s, struct lws *wsi, pss *ps) {
  ps->conn = NULL;
  /* Normally refused at the upgrade already; this catches any path that
   * skipped it. */
  if (s->state != MN__SRV_SERVING ||
      (s->cfg->max_connections > 0 && s->n_conns >= s->cfg->max_connections)) {
    if (s->metrics)
      mn_metrics_connection_refused(s->metrics);
    return -1;
  }
  char peer[64] = "?";
  lws_get_peer_simple(wsi, peer, sizeof peer);
  mn__conn *c = mn__conn_new(s, wsi, peer);
  if (!c) {
    MN__LOGE("server", "cannot set up a connection from %s: out of memory",
             peer);
    return -1;
  }
  ps->conn = c;
  conn_link(s, c);
  if (s->metrics)
    mn_metrics_connection(s->metrics, +1);
  const struct lws_protocols *pr = lws_get_protocol(wsi);
  MN__LOGD("server", "%s: connected (subprotocol %s)", c->peer,
           pr && pr->id == 1 ? "mcp" : "none");
  return 0;
}

/* A message over server.max_message_size: what is buffered goes, what
 * still arrives of it is not kept (c->failed), and the close (1009) goes
 * out from the writeable callback like the others. Not from here: lws
 * 4.1 goes on parsing what it has read after a RECEIVE callback asks to
 * close, and sends the close frame later from the buffer it also stashes
 * ping payloads in; a ping behind the message, or the rest of the message
 * misread as frames, went out as the close frame's code and reason. */
static void close_too_big(mn_server *s, mn__conn *c, size_t size) {
  char why[120];
  snprintf(why, sizeof why,
           "message larger than %llu bytes (server.max_message_size)",
           (unsigned long long)s->cfg->max_message_size);
  MN__LOGW("server",
           "%s: closing with 1009: message of at least %zu bytes "
           "is over server.max_message_size",
           c->peer, size);
  if (s->metrics)
    mn_metrics_count(s->metrics, "oversized_messages", 1);
  free(c->rx);
  c->rx = NULL;
  c->rx_len = c->rx_cap = 0;
  c->rx_active = 0;
  mn__conn_fail(c, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, why);
}

/* Hand the jobs gathered so far to the pool: one lock and one wake-up
 * for the lot. On a core shared with the workers, a wake-up per message
 * let each worker preempt the loop after every read (about two context
 * switches per request). */
static void flush_jobs(mn_server *s) {
  if (!s->pend_head)
    return;
  mn__pool_submit_list(s->pool, s->pend_head, s->pend_tail, s->pend_n);
  s->pend_head = s->pend_tail = NULL;
  s->pend_n = 0;
  s->pend_bytes = 0;
}

/* The loop ended with jobs never handed over: drop them. */
static void drop_jobs(mn_server *s) {
  while (s->pend_head) {
    mn__job *j = s->pend_head;
    s->pend_head = j->next;
    pthread_mutex_lock(&j->conn->lock);
    j->conn->inflight--;
    pthread_mutex_unlock(&j->conn->lock);
    atomic_fetch_sub(&s->backlog, 1);
    mn__job_free(j);
  }
  s->pend_tail = NULL;
  s->pend_n = 0;
  s->pend_bytes = 0;
}

static void submit_message(mn_server *s, mn__conn *c) {
  mn__job *j = calloc(1, sizeof *j);
  if (!j) {
    MN__LOGE("server", "%s: out of memory queueing a message; dropped",
             c->peer);
    free(c->rx);
    goto reset;
  }
  uint64_t now = mn_time_ns();
  mn__conn_ref(c);
  j->conn = c;
  j->alloc = c->rx;
  j->msg = c->rx + c->rx_pad;
  j->len = c->rx_len;
  j->binary = c->rx_binary;
  j->enq_ns = now;
  j->deadline_ns = s->cfg->timeout_ms > 0
                       ? now + (uint64_t)s->cfg->timeout_ms * 1000000u
                       : 0;
  j->reject = s->state != MN__SRV_SERVING;
  if (s->metrics)
    mn_metrics_bytes(s->metrics, j->len, 0);
  pthread_mutex_lock(&c->lock);
  int inflight = ++c->inflight;
  size_t out_bytes = c->out_bytes;
  pthread_mutex_unlock(&c->lock);
  atomic_fetch_add(&s->backlog, 1);
  j->next = NULL;
  if (s->pend_tail)
    s->pend_tail->next = j;
  else
    s->pend_head = j;
  s->pend_tail = j;
  s->pend_n++;
  s->pend_bytes += j->len;
  if (s->pend_n >= MN__SUBMIT_MAX_JOBS || s->pend_bytes >= MN__SUBMIT_MAX_BYTES)
    flush_jobs(s);
  update_flow(s, c, inflight, out_bytes);
reset:
  c->rx = NULL;
  c->rx_len = c->rx_cap = c->rx_pad = 0;
  c->rx_active = 0;
}

/* Room in front of a binary message so that its payload (after the u32
 * length and the JSON) starts 8-byte aligned in memory: the engine then
 * reads float32 tensors where they lie instead of copying them out. Known
 * once the length has arrived, which is in the first fragment in
 * practice; otherwise the message goes without (and the engine copies). */
static size_t binary_pad(const unsigned char *in, size_t len) {
  if (len < 4)
    return 0;
  uint32_t n = (uint32_t)in[0] | (uint32_t)in[1] << 8 | (uint32_t)in[2] << 16 |
               (uint32_t)in[3] << 24;
  return (8 - (4 + (size_t)n % 8) % 8) % 8;
}

static int on_receive(mn_server *s, struct lws *wsi, mn__conn *c,
                      const void *in, size_t len) {
  uint64_t limit = s->cfg->max_message_size;
  if (atomic_load(&c->failed))
    return 0; /* closing: what still arrives is not read */
  c->last_activity_ns = mn_time_ns();
  if (!c->rx_active) {
    c->rx_active = 1;
    c->rx_binary = lws_frame_is_binary(wsi);
    c->rx_len = 0;
    /* rx is NULL here (handed to a job, or freed); malloc memory is
     * 16-byte aligned, and the pad moves the payload onto 8 bytes. */
    c->rx_cap = 0;
    c->rx_pad = c->rx_binary ? binary_pad(in, len) : 0;
  }
  size_t remaining = lws_remaining_packet_payload(wsi);
  size_t need = c->rx_len + len + remaining;
  if (limit && need > limit) {
    close_too_big(s, c, need);
    return 0;
  }
  if (need + 1 > c->rx_cap) {
    /* Exact for a message in one frame (the usual case); geometric for a
     * fragmented one, never beyond the limit. */
    size_t cap = c->rx_cap ? c->rx_cap * 2 : 0;
    if (cap < need + 1)
      cap = need + 1;
    if (limit && cap > limit + 1)
      cap = limit + 1;
    unsigned char *nb = realloc(c->rx, c->rx_pad + cap);
    if (!nb) {
      MN__LOGE("server", "%s: out of memory for a %zu-byte message", c->peer,
               need);
      lws_close_reason(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION,
                       (unsigned char *)"out of memory", 13);
      return -1;
    }
    c->rx = nb;
    c->rx_cap = cap;
  }
  if (len)
    memcpy(c->rx + c->rx_pad + c->rx_len, in, len);
  c->rx_len += len;
  if (lws_is_final_fragment(wsi))
    submit_message(s, c);
  return 0;
}

/* Frames go out while the socket takes them, up to MN__TX_FRAGMENT bytes
 * per writeable callback, so that other connections get their turn in
 * between; a reply larger than that goes out as several frames of one
 * message. Before each frame after the first, lws_send_pipe_choked()
 * says whether the socket has room and lws holds nothing back (a second
 * write while lws still buffers part of the first would be refused). One
 * frame per callback was not enough: a read brings in up to 256 KB, two or
 * three requests, and replies then piled up faster than they left. */
static int on_writeable(mn_server *s, struct lws *wsi, mn__conn *c) {
  size_t sent = 0;
  for (int frames = 0; sent < MN__TX_FRAGMENT; frames++) {
    mn__outmsg *m = mn__conn_out_peek(c);
    if (!m)
      break;
    if (m->close_code) {
      lws_close_reason(wsi, (enum lws_close_status)m->close_code,
                       (unsigned char *)m->close_reason,
                       strlen(m->close_reason));
      return -1;
    }
    if (frames > 0 && lws_send_pipe_choked(wsi))
      break;
    size_t n = m->len - m->off;
    if (n > MN__TX_FRAGMENT - sent && frames > 0)
      n = MN__TX_FRAGMENT - sent;
    if (n > MN__TX_FRAGMENT)
      n = MN__TX_FRAGMENT;
    unsigned char *p = m->payload + m->off;
    /* Writing in place needs LWS_PRE bytes in front for the frame header:
     * the headroom, or the bytes of the fragment already sent. */
    if (m->off == 0 && !m->headroom) {
      memcpy(s->scratch + LWS_PRE, p, n);
      p = s->scratch + LWS_PRE;
    }
    int flags =
        lws_write_ws_flags(m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT,
                           m->off == 0, m->off + n == m->len);
    if (lws_write(wsi, p, n, (enum lws_write_protocol)flags) < 0) {
      MN__LOGI("server", "%s: write failed; closing", c->peer);
      return -1;
    }
    m->off += n;
    sent += n;
    c->last_activity_ns = mn_time_ns();
    if (m->off == m->len) {
      if (s->metrics)
        mn_metrics_bytes(s->metrics, 0, m->len);
      mn__conn_out_pop_done(c);
    }
  }
  size_t count, bytes;
  int inflight;
  mn__conn_out_state(c, &count, &bytes, &inflight);
  if (count) {
    lws_callback_on_writable(wsi);
  } else if (c->closing) {
    const char *r = c->close_reason ? c->close_reason : "";
    lws_close_reason(wsi, (enum lws_close_status)c->close_code,
                     (unsigned char *)r, strlen(r));
    return -1;
  }
  update_flow(s, c, inflight, bytes);
  return 0;
}

/* The client sent a close frame. lws echoes it, answering the codes RFC
 * 6455 7.4 does not allow with 1002, but echoes a 1-byte body and a
 * reason that is not UTF-8 as they came; 5.5.1 says the body is a 2-byte
 * code and a UTF-8 reason, so those fail the connection (1002, 1007). */
static int on_peer_close(mn_server *s, struct lws *wsi, mn__conn *c,
                         const unsigned char *in, size_t len) {
  const char *why = NULL;
  int code = 0;
  if (len == 1) {
    code = LWS_CLOSE_STATUS_PROTOCOL_ERR;
    why = "a close frame's body must start with a 2-byte status code";
  } else if (len > 2 && !mn__utf8_valid(in + 2, len - 2)) {
    code = LWS_CLOSE_STATUS_INVALID_PAYLOAD;
    why = "the close frame's reason is not valid UTF-8";
    if (s->metrics)
      mn_metrics_count(s->metrics, "invalid_utf8", 1);
  }
  if (!code)
    return 0;
  MN__LOGI("server", "%s: closing with %d: %s", c ? c->peer : "?", code, why);
  lws_close_reason(wsi, (enum lws_close_status)code, (unsigned char *)why,
                   strlen(why));
  return -1;
}

static void on_closed(mn_server *s, pss *ps) {
  mn__conn *c = ps->conn;
  if (!c)
    return;
  ps->conn = NULL;
  conn_unlink(s, c);
  if (c->rx_paused)
    s->n_paused--;
  c->rx_paused = 0;
  c->wsi = NULL;
  atomic_store(&c->closed, 1);
  if (s->metrics)
    mn_metrics_connection(s->metrics, -1);
  MN__LOGD("server", "%s: closed", c->peer);
  mn__conn_unref(c);
}

/* ------------------------------------------------------------------------
 * Wake-ups and the shutdown state machine.
 * ---------------------------------------------------------------------- */
static int all_written(mn_server *s) {
  for (mn__conn *c = s->conns; c; c = c->next) {
    size_t count;
    mn__conn_out_state(c, &count, NULL, NULL);
    if (count)
      return 0;
  }
  return 1;
}

static void advance_state(mn_server *s) {
  flush_jobs(s); /* the pool's counts below must see every message */
  uint64_t now = mn_time_ns();
  int req = atomic_load(&s->stop_requested);
  if (s->state == MN__SRV_SERVING && req && !s->leaving &&
      s->cfg->drain_delay_ms > 0 && req < 2) {
    s->leaving = 1;
    s->leave_deadline_ns = now + (uint64_t)s->cfg->drain_delay_ms * 1000000u;
    MN__LOGI("server",
             "stopping: /ready says 503 now; still serving for %lld ms "
             "(server.drain_delay) before the drain",
             (long long)s->cfg->drain_delay_ms);
  }
  if (s->state == MN__SRV_SERVING && req &&
      (!s->leaving || now >= s->leave_deadline_ns || req >= 2)) {
    s->state = MN__SRV_DRAINING;
    s->drain_deadline_ns = now + (uint64_t)s->drain_ms * 1000000u;
    MN__LOGI("server",
             "stopping: refusing new sessions, finishing %lld "
             "request(s) in flight (up to %lld ms)",
             (long long)mn__pool_inflight(s->pool), (long long)s->drain_ms);
  }
  if (s->state == MN__SRV_DRAINING) {
    int idle = mn__pool_inflight(s->pool) == 0 && all_written(s) &&
               mn__mcp_pending(s) == 0;
    int late = now >= s->drain_deadline_ns;
    if (late && !idle && !s->drain_rejected) {
      /* Requests that have not started by the deadline are answered
       * -32004 at once rather than dropped: the client learns to resend
       * them. The jobs still running get a short grace to finish, and the
       * answers are written meanwhile. */
      s->drain_rejected = 1;
      int64_t n = mn__pool_reject_queued(s->pool);
      if (n > 0) {
        MN__LOGW("server",
                 "drain deadline passed: answering %lld queued request(s) "
                 "with -32004 instead of running them",
                 (long long)n);
        s->drain_deadline_ns = now + DRAIN_REJECT_GRACE_NS;
        late = 0;
      }
    }
    if (idle || late || req >= 2) {
      if (!idle) {
        s->drain_timed_out = 1;
        MN__LOGW("server",
                 "drain deadline passed with %lld request(s) "
                 "still in flight; closing anyway",
                 (long long)mn__pool_inflight(s->pool));
      }
      s->state = MN__SRV_CLOSING;
      s->close_deadline_ns = now + CLOSE_WAIT_NS;
      for (mn__conn *c = s->conns; c; c = c->next)
        begin_close(c, LWS_CLOSE_STATUS_GOINGAWAY, "server shutting down");
    }
  }
  if (s->state == MN__SRV_CLOSING &&
      (s->n_conns == 0 || now >= s->close_deadline_ns)) {
    s->state = MN__SRV_DONE;
    lws_cancel_service(s->ctx); /* leave lws_service() now */
  }
}

static void on_wake(mn_server *s) {
  mn__conn *list = NULL;
  pthread_mutex_lock(&s->ready_lock);
  for (mn__conn *c = s->ready_head; c; c = c->ready_next) {
    c->on_ready = 0;
    c->io_next = list;
    list = c;
  }
  s->ready_head = NULL;
  s->wake_pending = 0;
  pthread_mutex_unlock(&s->ready_lock);
  while (list) {
    mn__conn *c = list;
    list = c->io_next;
    if (c->wsi) {
      size_t count, bytes;
      int inflight;
      mn__conn_out_state(c, &count, &bytes, &inflight);
      if (count && c->http)
        mn__mcp_wake(c);
      else if (count)
        lws_callback_on_writable(c->wsi);
      update_flow(s, c, inflight, bytes);
    }
    mn__conn_unref(c);
  }
  resume_paused(s);
  advance_state(s);
}

static void tick(lws_sorted_usec_list_t *sul) {
  mn_server *s = lws_container_of(sul, mn_server, tick);
  uint64_t now = mn_time_ns();
  advance_state(s);
  if (s->state == MN__SRV_SERVING && s->cfg->idle_timeout_s > 0 &&
      now - s->last_idle_scan_ns >= 1000000000ull) {
    s->last_idle_scan_ns = now;
    uint64_t idle_ns = (uint64_t)s->cfg->idle_timeout_s * 1000000000ull;
    for (mn__conn *c = s->conns; c; c = c->next) {
      size_t count;
      int inflight;
      mn__conn_out_state(c, &count, NULL, &inflight);
      if (!count && !inflight && now - c->last_activity_ns > idle_ns)
        begin_close(c, LWS_CLOSE_STATUS_NORMAL,
                    "idle timeout (server.idle_timeout)");
    }
  }
  mn__mcp_tick(s, now);
  if (s->metrics) {
    mn_metrics_gauge(s->metrics, "jobs_in_flight",
                     (double)mn__pool_inflight(s->pool));
    mn_metrics_gauge(s->metrics, "job_queue_depth",
                     (double)mn__pool_queue_depth(s->pool));
  }
  if (s->state != MN__SRV_DONE)
    lws_sul_schedule(s->ctx, 0, &s->tick, tick, TICK_US);
}

/* ------------------------------------------------------------------------
 * The callback shared by both protocols.
 * ---------------------------------------------------------------------- */
static int callback(struct lws *wsi, enum lws_callback_reasons reason,
                    void *user, void *in, size_t len) {
  mn_server *s = wsi ? server_of(wsi) : NULL;
  pss *ps = user;
  switch (reason) {
  case LWS_CALLBACK_HTTP:
    if (in && !strcmp((const char *)in, "/mcp"))
      return ps ? mn__mcp_http(s, wsi, &ps->mcp) : -1;
    return http_route(s, wsi, in ? (const char *)in : "/");
  case LWS_CALLBACK_HTTP_BODY:
    if (ps && ps->mcp)
      return mn__mcp_body(s, wsi, &ps->mcp, in, len);
    break;
  case LWS_CALLBACK_HTTP_BODY_COMPLETION:
    if (ps && ps->mcp)
      return mn__mcp_body_done(s, wsi, &ps->mcp);
    break;
  case LWS_CALLBACK_HTTP_WRITEABLE:
    if (ps && ps->mcp)
      return mn__mcp_writeable(s, wsi, &ps->mcp);
    break;
  case LWS_CALLBACK_CLOSED_HTTP:
    if (ps && ps->mcp)
      mn__mcp_closed(s, &ps->mcp);
    break;
  case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
    return confirm_upgrade(s, wsi, in);
  case LWS_CALLBACK_ESTABLISHED:
    return on_established(s, wsi, ps);
  case LWS_CALLBACK_RECEIVE:
    if (!ps || !ps->conn)
      return -1;
    return on_receive(s, wsi, ps->conn, in, len);
  case LWS_CALLBACK_SERVER_WRITEABLE:
    if (!ps || !ps->conn)
      return 0;
    return on_writeable(s, wsi, ps->conn);
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    return on_peer_close(s, wsi, ps ? ps->conn : NULL, in, len);
  case LWS_CALLBACK_CLOSED:
    if (ps)
      on_closed(s, ps);
    break;
  case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
    /* Broadcast to every protocol; the first one does the work and the
     * second finds the list empty. */
    if (s)
      on_wake(s);
    break;
  default:
    break;
  }
  return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* 0: the HTTP routes and WebSocket clients that ask for no subprotocol
 * (lws binds those to the vhost's first protocol). 1: "mcp". */
static const struct lws_protocols protocols[] = {
    {"mnemo", callback, sizeof(pss), MN__RX_CHUNK, 0, NULL, MN__TX_FRAGMENT},
    {"mcp", callback, sizeof(pss), MN__RX_CHUNK, 1, NULL, MN__TX_FRAGMENT},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

/* ------------------------------------------------------------------------
 * Public API.
 * ---------------------------------------------------------------------- */
mn_status mn_server_create(const mn_server_opts *opts, mn_server **out) {
  if (!opts || !opts->config || !opts->rpc || !out)
    return mn__set_error(MN_ERR_INVALID,
                         "mn_server_create needs a config and an rpc engine");
  const mn_config *cfg = opts->config;
  if (cfg->port < 0 || cfg->port > 65535)
    return mn__set_error(MN_ERR_INVALID, "server.port %d is not in 0..65535",
                         cfg->port);
  if (cfg->tls_cert[0] || cfg->tls_key[0])
    return mn__set_error(MN_ERR_UNSUPPORTED,
                         "server.tls_cert / server.tls_key: TLS is not "
                         "served by mnemod yet; terminate TLS in a proxy in "
                         "front of it (HAProxy: deploy/haproxy.cfg, "
                         "docs/operations.md)");
  mn_server *s = calloc(1, sizeof *s);
  if (!s)
    return mn__set_error(MN_ERR_NOMEM, "server: out of memory");
  s->cfg = cfg;
  s->rpc = opts->rpc;
  s->metrics = opts->metrics;
  s->drain_ms = opts->drain_ms > 0 ? opts->drain_ms : 10000;
  s->started_ns = mn_time_ns();
  pthread_mutex_init(&s->ready_lock, NULL);
  s->scratch = malloc(LWS_PRE + MN__TX_FRAGMENT);
  if (!s->scratch) {
    mn_server_destroy(s);
    return mn__set_error(MN_ERR_NOMEM, "server: out of memory");
  }

  int logs = LLL_ERR | LLL_WARN;
  if (mn_log_get_level() <= MN_LOG_DEBUG)
    logs |= LLL_NOTICE;
  lws_set_log_level(logs, lws_log_emit);

  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  /* Text messages are checked for UTF-8 by the workers (utf8.c), much
   * faster than lws's byte-by-byte check on the I/O thread. */
  info.options =
      LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_DISABLE_OS_CA_CERTS;
  info.user = s;
  info.pt_serv_buf_size = MN__RX_CHUNK;
  info.max_http_header_data = 8192;
  info.max_http_header_pool = 256;
  info.timeout_secs = 10;
  info.timeout_secs_ah_idle = 10;
  info.server_string = "mnemod";
  s->ctx = lws_create_context(&info);
  if (!s->ctx) {
    mn_server_destroy(s);
    return mn__set_error(MN_ERR_IO, "server: cannot create the "
                                    "libwebsockets context");
  }

  const char *host = cfg->host;
  uint64_t vopts = 0;
  struct in_addr a4;
  if (!host[0] || !strcmp(host, "::") || !strcmp(host, "*")) {
    host = NULL; /* every interface, IPv4 and IPv6 */
  } else if (!strcmp(host, "0.0.0.0")) {
    host = NULL;
    vopts |= LWS_SERVER_OPTION_DISABLE_IPV6;
  } else if (!strcmp(host, "localhost")) {
    host = "127.0.0.1";
    vopts |= LWS_SERVER_OPTION_DISABLE_IPV6;
  } else if (inet_pton(AF_INET, host, &a4) == 1) {
    vopts |= LWS_SERVER_OPTION_DISABLE_IPV6;
  }
  info.options = vopts;
  info.iface = host;
  info.port = cfg->port;
  info.protocols = protocols;
  info.vhost_name = "mnemod";
  s->vhost = lws_create_vhost(s->ctx, &info);
  if (!s->vhost) {
    mn_server_destroy(s);
    return mn__set_error(MN_ERR_IO,
                         "server: cannot listen on %s:%d (server.host / "
                         "server.port): address in use or not available",
                         cfg->host, cfg->port);
  }
  s->port = lws_get_vhost_listen_port(s->vhost);
  s->ctx_alive = 1;

  int nworkers = (int)cfg->workers;
  if (nworkers <= 0) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    nworkers = ncpu > 0 ? (int)ncpu : 1;
  }
  s->queue_limit = cfg->queue_limit > 0         ? cfg->queue_limit
                   : 4 * (int64_t)nworkers > 64 ? 4 * (int64_t)nworkers
                                                : 64;
  /* Every series the server adds to exists from the start: a counter
   * that first appears at 1 is invisible to Prometheus's increase() and
   * rate(), so an alert on its first event would never fire; and a gauge
   * the first scrape misses looks like a missing metric. */
  if (s->metrics) {
    static const char *const counters[] = {"read_pauses", "oversized_messages",
                                           "invalid_utf8", "rate_limited",
                                           "watchdog_timeouts"};
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++)
      mn_metrics_count(s->metrics, counters[i], 0);
    mn_metrics_gauge(s->metrics, "jobs_in_flight", 0);
    mn_metrics_gauge(s->metrics, "job_queue_depth", 0);
  }
  mn_status st = mn__pool_start(s, nworkers, &s->pool);
  if (st != MN_OK) {
    mn_server_destroy(s);
    return st;
  }
  MN__LOGI("server",
           "listening on ws://%s:%d (subprotocol mcp or none; "
           "HTTP /health /ready /metrics, MCP over HTTP at /mcp), "
           "%d worker(s), queue limit %lld",
           cfg->host[0] ? cfg->host : "*", s->port, nworkers,
           (long long)s->queue_limit);
  *out = s;
  return MN_OK;
}

int mn_server_port(const mn_server *s) {
  return s ? s->port : -1;
}

mn_status mn_server_run(mn_server *s) {
  if (!s || !s->ctx)
    return mn__set_error(MN_ERR_INVALID, "mn_server_run: no server");
  lws_sul_schedule(s->ctx, 0, &s->tick, tick, TICK_US);
  advance_state(s); /* a stop that came before the loop started */
  while (s->state != MN__SRV_DONE) {
    if (lws_service(s->ctx, 0) < 0)
      break;
    flush_jobs(s);
  }
  drop_jobs(s);
  lws_sul_cancel(&s->tick);
  /* No more wake-ups: the context is about to go. */
  pthread_mutex_lock(&s->ready_lock);
  s->ctx_alive = 0;
  pthread_mutex_unlock(&s->ready_lock);
  mn_status st = mn__pool_stop(s->pool, s->drain_timed_out ? 100 : 2000);
  lws_context_destroy(s->ctx);
  s->ctx = NULL;
  s->vhost = NULL;
  /* Whatever is left on the ready list holds references. */
  mn__conn *list = NULL;
  pthread_mutex_lock(&s->ready_lock);
  for (mn__conn *x = s->ready_head; x; x = x->ready_next) {
    x->on_ready = 0;
    x->io_next = list;
    list = x;
  }
  s->ready_head = NULL;
  pthread_mutex_unlock(&s->ready_lock);
  while (list) {
    mn__conn *next = list->io_next;
    mn__conn_unref(list);
    list = next;
  }
  if (s->drain_timed_out || st != MN_OK)
    return mn__set_error(MN_ERR_TIMEOUT,
                         "server stopped with requests still running");
  MN__LOGI("server", "stopped cleanly");
  return MN_OK;
}

void mn_server_stop(mn_server *s) {
  if (!s)
    return;
  int prev = atomic_load(&s->stop_requested);
  if (prev < 2)
    atomic_store(&s->stop_requested, prev + 1);
  pthread_mutex_lock(&s->ready_lock);
  if (s->ctx_alive)
    lws_cancel_service(s->ctx);
  pthread_mutex_unlock(&s->ready_lock);
}

void mn_server_destroy(mn_server *s) {
  if (!s)
    return;
  if (s->pool) {
    pthread_mutex_lock(&s->ready_lock);
    s->ctx_alive = 0;
    pthread_mutex_unlock(&s->ready_lock);
    if (mn__pool_stop(s->pool, 2000) != MN_OK) {
      /* Threads still inside a request reference the server: leave it. */
      MN__LOGW("server", "leaving the server's memory to threads that "
                         "never returned");
      return;
    }
    mn__pool_free(s->pool);
    s->pool = NULL;
  }
  if (s->ctx)
    lws_context_destroy(s->ctx);
  mn__mcp_free(s); /* after the context: its close callbacks use them */
  pthread_mutex_destroy(&s->ready_lock);
  free(s->scratch);
  free(s);
}
