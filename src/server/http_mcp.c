/*
 * http_mcp.c - MCP's Streamable HTTP transport at /mcp: POST one JSON-RPC
 * message (or, in protocol 2025-03-26, a batch) and get the reply as
 * application/json; DELETE ends a session; GET (the optional
 * server-to-client event stream) is answered 405.
 *
 * DESIGN: everything here runs on the I/O thread, like the rest of the
 * lws side. The checks that need only the headers are made when the
 * request arrives (LWS_CALLBACK_HTTP): Origin (403), token (401), method
 * (405), MCP-Protocol-Version (400), Mcp-Session-Id (404 when unknown),
 * Content-Type (415), Accept (406), Content-Length (411, 413), the
 * shutdown (503) and the limits. The body is gathered as it comes
 * (HTTP_BODY) and, when complete, handed to the worker pool as a job, the
 * same way a WebSocket message is, never looked at here. The worker runs
 * mn_rpc_handle_http(), which applies the rules that need the message
 * (initialize without a session, batches, responses; 400 with a JSON-RPC
 * error otherwise) and returns the HTTP status with the reply; the reply
 * comes back through the connection's queue and the ready list, and the
 * loop writes it in HTTP_WRITEABLE.
 *
 * A session is an mn__conn without a wsi: it owns the engine session
 * (negotiated version, client name) and the rate-limit bucket. Each POST
 * gets an mn__conn of its own (http = 1, wsi = the transaction) whose
 * parent is the session, so the workers, the watchdog and the ready list
 * treat it like a WebSocket connection with one message. The session
 * table (below) is the I/O thread's alone. A session starts on a POST
 * without Mcp-Session-Id; its id is given out (and the session listed as
 * live) only when the worker says the initialize succeeded. Sessions end
 * on DELETE, after server.mcp_session_timeout seconds without a request,
 * or with the server.
 */
#define _GNU_SOURCE
#include "server/server_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

/* 128 random bits, written as 32 hex digits. */
#define SESSION_ID_BYTES 16
#define SESSION_ID_CHARS (2 * SESSION_ID_BYTES)
/* The body is read into a buffer that starts at most this big and grows
 * by doubling up to the Content-Length, so a client that announces a
 * large body and sends little holds little. */
#define BODY_FIRST_CAP (64u * 1024u)
/* Replies up to this size go out with their headers in one write. */
#define ONE_WRITE_MAX (16u * 1024u)

typedef struct mcp_sess {
  struct mcp_sess *next;
  mn__conn *conn; /* the engine session and the rate bucket */
  char id[SESSION_ID_CHARS + 1];
  int live;   /* initialize succeeded and the id was given out */
  int listed; /* in the table */
  int refs;   /* the table's, and one per request */
  int active; /* requests in flight */
  uint64_t last_used_ns;
} mcp_sess;

struct mn__mcp {
  mcp_sess *sessions;
  int64_t n_sessions; /* listed: live, or starting (initialize running) */
  int64_t open;       /* POSTs taken (body coming, or being answered) */
  int64_t pending;    /* of those, handed to the workers: the drain waits */
  uint64_t last_scan_ns;
};

/* One POST being answered (or a DELETE: never stored). */
typedef struct mcp_req {
  mn__conn *c;     /* the request as a connection (jobs hold references) */
  mcp_sess *sess;  /* holds a reference */
  int new_session; /* this POST started sess (no Mcp-Session-Id) */
  int submitted;
  int hdr_sent;
  int flushing;  /* all written; waiting for lws to send what it holds */
  int pipelined; /* the client sent more behind this request */
  size_t expect; /* Content-Length */
} mcp_req;

static mn__mcp *mcp_of(mn_server *s) {
  if (!s->mcp)
    s->mcp = calloc(1, sizeof *s->mcp);
  return s->mcp;
}

int64_t mn__mcp_pending(const mn_server *s) {
  return s->mcp ? s->mcp->pending : 0;
}

/* ------------------------------------------------------------------------
 * Sessions.
 * ---------------------------------------------------------------------- */
static void sess_unref(mcp_sess *ss) {
  if (--ss->refs > 0)
    return;
  mn__conn_unref(ss->conn);
  free(ss);
}

static void sess_unlist(mn__mcp *m, mcp_sess *ss) {
  if (!ss->listed)
    return;
  for (mcp_sess **pp = &m->sessions; *pp; pp = &(*pp)->next)
    if (*pp == ss) {
      *pp = ss->next;
      break;
    }
  ss->next = NULL;
  ss->listed = 0;
  ss->live = 0;
  m->n_sessions--;
  sess_unref(ss);
}

/* Compare without leaking where the first difference is. */
static int id_equal(const char *a, const char *b, size_t n) {
  unsigned char d = 0;
  for (size_t i = 0; i < n; i++)
    d |= (unsigned char)(a[i] ^ b[i]);
  return d == 0;
}

static mcp_sess *sess_find(mn__mcp *m, const char *id) {
  if (strlen(id) != SESSION_ID_CHARS)
    return NULL;
  mcp_sess *found = NULL;
  for (mcp_sess *ss = m->sessions; ss; ss = ss->next)
    if (ss->live && id_equal(ss->id, id, SESSION_ID_CHARS))
      found = ss;
  return found;
}

static mcp_sess *sess_new(mn_server *s, mn__mcp *m, struct lws *wsi) {
  unsigned char raw[SESSION_ID_BYTES];
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
    MN__LOGE("server", "mcp: no random bytes for a session id");
    return NULL;
  }
  mcp_sess *ss = calloc(1, sizeof *ss);
  if (!ss)
    return NULL;
  char peer[64] = "?", label[80];
  lws_get_peer_simple(wsi, peer, sizeof peer);
  snprintf(label, sizeof label, "%s (mcp http)", peer);
  ss->conn = mn__conn_new(s, NULL, label);
  if (!ss->conn) {
    free(ss);
    return NULL;
  }
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < sizeof raw; i++) {
    ss->id[2 * i] = hex[raw[i] >> 4];
    ss->id[2 * i + 1] = hex[raw[i] & 15];
  }
  ss->id[SESSION_ID_CHARS] = '\0';
  ss->refs = 1; /* the table's */
  ss->listed = 1;
  ss->last_used_ns = mn_time_ns();
  ss->next = m->sessions;
  m->sessions = ss;
  m->n_sessions++;
  return ss;
}

void mn__mcp_tick(mn_server *s, uint64_t now) {
  mn__mcp *m = s->mcp;
  if (!m || now - m->last_scan_ns < 1000000000ull)
    return;
  m->last_scan_ns = now;
  uint64_t idle_ns = (uint64_t)s->cfg->mcp_session_timeout_s * 1000000000ull;
  for (mcp_sess *ss = m->sessions, *next; ss; ss = next) {
    next = ss->next;
    if (ss->live && !ss->active && now - ss->last_used_ns > idle_ns) {
      MN__LOGI("server",
               "%s: MCP session ended after %lld s idle "
               "(server.mcp_session_timeout)",
               ss->conn->peer, (long long)s->cfg->mcp_session_timeout_s);
      sess_unlist(m, ss);
    }
  }
  if (s->metrics)
    mn_metrics_gauge(s->metrics, "mcp_sessions", (double)m->n_sessions);
}

void mn__mcp_free(mn_server *s) {
  mn__mcp *m = s->mcp;
  if (!m)
    return;
  while (m->sessions)
    sess_unlist(m, m->sessions);
  free(m);
  s->mcp = NULL;
}

/* ------------------------------------------------------------------------
 * Answers made on the spot: a JSON-RPC error body (or none), with the
 * headers a status needs, in one write, and the transaction ends. lws
 * reads and drops a body the request still carries before it reads the
 * next request on the connection.
 * ---------------------------------------------------------------------- */
static int respond(struct lws *wsi, unsigned status, int code, const char *msg,
                   const char *data_json, const char *hname,
                   const char *hvalue) {
  mn_rpc_reply r = {0};
  if (msg)
    mn_rpc_error_reply(code, msg, data_json, NULL, &r);
  size_t len = r.data ? r.len : 0;
  size_t cap = LWS_PRE + 1024 + len;
  unsigned char *buf = malloc(cap);
  if (!buf) {
    mn_rpc_reply_free(&r);
    return -1;
  }
  unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + cap;
  /* 204 has no Content-Length (RFC 9110 8.6); lws's helper would add one,
   * or "connection: close" without it. */
  int bad =
      (status == HTTP_STATUS_NO_CONTENT
           ? lws_add_http_header_status(wsi, status, &p, end)
           : lws_add_http_common_headers(
                 wsi, status, len ? "application/json" : NULL, len, &p, end)) ||
      lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                  (const unsigned char *)"no-store", 8, &p,
                                  end);
  if (!bad && hname)
    bad = lws_add_http_header_by_name(wsi, (const unsigned char *)hname,
                                      (const unsigned char *)hvalue,
                                      (int)strlen(hvalue), &p, end);
  if (!bad)
    bad = lws_finalize_http_header(wsi, &p, end) || (size_t)(end - p) < len;
  if (!bad && len) {
    memcpy(p, r.data, len);
    p += len;
  }
  mn_rpc_reply_free(&r);
  if (bad ||
      lws_write(wsi, start, (size_t)(p - start), LWS_WRITE_HTTP_HEADERS) < 0) {
    free(buf);
    return -1;
  }
  free(buf);
  return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int refuse(mn_server *s, struct lws *wsi, unsigned status, int code,
                  const char *msg, const char *data_json, const char *hname,
                  const char *hvalue) {
  char peer[64] = "?";
  lws_get_peer_simple(wsi, peer, sizeof peer);
  MN__LOGI("server", "%s: /mcp answered %u: %s", peer, status, msg);
  if (s->metrics)
    mn_metrics_count(s->metrics, "mcp_http_refused", 1);
  return respond(wsi, status, code, msg, data_json, hname, hvalue);
}

/* ------------------------------------------------------------------------
 * Header checks.
 * ---------------------------------------------------------------------- */
/* With server.allowed_origins set, the list decides (as for WebSockets).
 * Without it, a browser page may still reach a server on this machine by
 * DNS rebinding, which the MCP spec asks HTTP servers to stop: then only
 * loopback origins, and clients that send no Origin, are let in. */
static int origin_ok(const mn_config *cfg, struct lws *wsi) {
  if (cfg->n_allowed_origins > 0)
    return mn__check_origin(cfg, wsi);
  char o[300];
  if (lws_hdr_copy(wsi, o, sizeof o, WSI_TOKEN_ORIGIN) <= 0)
    return 1;
  const char *h = strstr(o, "://");
  if (!h)
    return 0; /* "null" and the like */
  h += 3;
  size_t n = strcspn(h, "/");
  if (h[0] == '[') {
    const char *e = strchr(h, ']');
    return e && (size_t)(e - h) == 4 && !strncmp(h, "[::1]", 5);
  }
  size_t hn = strcspn(h, ":/");
  if (hn > n)
    hn = n;
  if (hn == 9 && !strncasecmp(h, "localhost", 9))
    return 1;
  if (hn >= 7 && !strncmp(h, "127.", 4)) {
    for (size_t i = 4; i < hn; i++)
      if (!(h[i] == '.' || (h[i] >= '0' && h[i] <= '9')))
        return 0;
    return 1;
  }
  return 0;
}

/* A custom header's value into buf; -1 when absent, -2 when too long. */
static int custom_header(struct lws *wsi, const char *name, char *buf,
                         size_t len) {
  int n = lws_hdr_custom_length(wsi, name, (int)strlen(name));
  if (n < 0)
    return -1;
  if ((size_t)n >= len)
    return -2;
  n = lws_hdr_custom_copy(wsi, buf, (int)len, name, (int)strlen(name));
  return n < 0 ? -1 : n;
}

/* The media type of a header value: "application/json; charset=utf-8"
 * gives "application/json" (lower case). */
static void media_type(const char *v, char *out, size_t len) {
  while (*v == ' ' || *v == '\t')
    v++;
  size_t i = 0;
  for (; v[i] && v[i] != ';' && v[i] != ',' && i + 1 < len; i++)
    out[i] = (char)((v[i] >= 'A' && v[i] <= 'Z') ? v[i] + 32 : v[i]);
  while (i && (out[i - 1] == ' ' || out[i - 1] == '\t'))
    i--;
  out[i] = '\0';
}

/* Whether an Accept header lets a JSON reply through. */
static int accepts_json(const char *accept) {
  for (const char *p = accept; *p;) {
    char t[64];
    media_type(p, t, sizeof t);
    if (!strcmp(t, "application/json") || !strcmp(t, "application/*") ||
        !strcmp(t, "*/*"))
      return 1;
    p = strchr(p, ',');
    if (!p)
      break;
    p++;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * Requests.
 * ---------------------------------------------------------------------- */
static void req_release(mn_server *s, mcp_req *rq) {
  mn__mcp *m = s->mcp;
  if (rq->c) {
    mn__conn *c = rq->c;
    c->wsi = NULL;
    atomic_store(&c->closed, 1); /* replies still to come are dropped */
    mn__conn_unref(c);
  }
  if (rq->sess) {
    rq->sess->active--;
    rq->sess->last_used_ns = mn_time_ns();
    /* A session whose initialize never got its answer out is not one. */
    if (rq->new_session && !rq->sess->live)
      sess_unlist(m, rq->sess);
    sess_unref(rq->sess);
  }
  m->open--;
  if (rq->submitted)
    m->pending--;
  free(rq);
}

static int on_delete(mn_server *s, mn__mcp *m, struct lws *wsi, const char *sid,
                     int have_sid) {
  if (!have_sid)
    return refuse(s, wsi, HTTP_STATUS_BAD_REQUEST, MN_RPC_INVALID_REQUEST,
                  "DELETE /mcp needs the Mcp-Session-Id header of the "
                  "session to end",
                  NULL, NULL, NULL);
  mcp_sess *ss = sess_find(m, sid);
  if (!ss)
    return refuse(s, wsi, HTTP_STATUS_NOT_FOUND, MN_RPC_INVALID_REQUEST,
                  "no such MCP session (unknown, expired or already "
                  "ended): nothing to end",
                  NULL, NULL, NULL);
  MN__LOGI("server", "%s: MCP session ended by the client (DELETE)",
           ss->conn->peer);
  sess_unlist(m, ss);
  return respond(wsi, HTTP_STATUS_NO_CONTENT, 0, NULL, NULL, NULL, NULL);
}

int mn__mcp_http(mn_server *s, struct lws *wsi, void **slot) {
  const mn_config *cfg = s->cfg;
  mn__mcp *m = mcp_of(s);
  if (!m)
    return -1;
  if (*slot) /* cannot happen: a transaction ends before the next starts */
    mn__mcp_closed(s, slot);
  char buf[512];
  if (!origin_ok(cfg, wsi)) {
    if (lws_hdr_copy(wsi, buf, 200, WSI_TOKEN_ORIGIN) <= 0)
      snprintf(buf, sizeof buf, "(too long)");
    char msg[400];
    snprintf(msg, sizeof msg, "Origin %.200s may not use /mcp: %s", buf,
             cfg->n_allowed_origins
                 ? "it is not in server.allowed_origins"
                 : "with server.allowed_origins empty only loopback origins "
                   "(http://localhost, 127.0.0.1, [::1]) are let in; list "
                   "the page's origin there");
    return refuse(s, wsi, HTTP_STATUS_FORBIDDEN, MN_RPC_INVALID_REQUEST, msg,
                  NULL, NULL, NULL);
  }
  if (cfg->n_auth_tokens > 0 && !mn__check_auth(cfg, wsi))
    return refuse(s, wsi, HTTP_STATUS_UNAUTHORIZED, MN_RPC_INVALID_REQUEST,
                  "missing or wrong token: send 'Authorization: Bearer "
                  "TOKEN' or ?token=TOKEN (server.auth_tokens)",
                  NULL, "www-authenticate:", "Bearer realm=\"mnemo\"");
  int post = lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0;
  int del = lws_hdr_total_length(wsi, WSI_TOKEN_DELETE_URI) > 0;
  if (!post && !del) {
    int get = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0;
    return refuse(
        s, wsi, HTTP_STATUS_METHOD_NOT_ALLOWED, MN_RPC_INVALID_REQUEST,
        get ? "GET /mcp would open a server-to-client event stream, which "
              "this server does not offer: send requests with POST, each "
              "reply comes back in the answer to its POST"
            : "/mcp takes POST (a JSON-RPC message) and DELETE (end the "
              "session)",
        NULL, "allow:", "POST, DELETE");
  }
  int vn = custom_header(wsi, "mcp-protocol-version:", buf, 64);
  if (vn == -2 || (vn >= 0 && !mn_rpc_mcp_version_known(buf, (size_t)vn))) {
    char msg[300];
    snprintf(msg, sizeof msg,
             "unsupported MCP-Protocol-Version %.40s: this server speaks %s",
             vn >= 0 ? buf : "(too long)", mn_rpc_mcp_versions());
    return refuse(s, wsi, HTTP_STATUS_BAD_REQUEST, MN_RPC_INVALID_REQUEST, msg,
                  NULL, NULL, NULL);
  }
  char sid[SESSION_ID_CHARS + 2] = "";
  int sn = custom_header(wsi, "mcp-session-id:", sid, sizeof sid);
  int have_sid = sn != -1; /* a value too long is no session of ours */
  if (sn == -2)
    sid[0] = '\0';
  if (del)
    return on_delete(s, m, wsi, sid, have_sid);

  /* POST */
  if (s->state != MN__SRV_SERVING)
    return refuse(s, wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, MN_RPC_OVERLOADED,
                  "server is shutting down; send the request again to "
                  "another instance or after the restart",
                  NULL, NULL, NULL);
  mcp_sess *ss = NULL;
  if (have_sid) {
    ss = sess_find(m, sid);
    if (!ss)
      return refuse(s, wsi, HTTP_STATUS_NOT_FOUND, MN_RPC_INVALID_REQUEST,
                    "no such MCP session (unknown, expired or ended): "
                    "start a new one with initialize, sent without the "
                    "Mcp-Session-Id header",
                    NULL, NULL, NULL);
  }
  char ctype[64] = "";
  if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_CONTENT_TYPE) > 0)
    media_type(buf, ctype, sizeof ctype);
  if (strcmp(ctype, "application/json")) {
    char msg[200];
    snprintf(msg, sizeof msg,
             "the body must be JSON: send 'Content-Type: application/json' "
             "(got %.60s)",
             ctype[0] ? ctype : "none");
    return refuse(s, wsi, HTTP_STATUS_UNSUPPORTED_MEDIA_TYPE,
                  MN_RPC_INVALID_REQUEST, msg, NULL, NULL, NULL);
  }
  if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_ACCEPT) > 0 &&
      !accepts_json(buf))
    return refuse(s, wsi, HTTP_STATUS_NOT_ACCEPTABLE, MN_RPC_INVALID_REQUEST,
                  "replies are application/json: send 'Accept: "
                  "application/json, text/event-stream'",
                  NULL, NULL, NULL);
  char *end = NULL;
  unsigned long long clen = 0;
  if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0)
    clen = strtoull(buf, &end, 10);
  if (!end || end == buf || *end)
    return refuse(s, wsi, HTTP_STATUS_LENGTH_REQUIRED, MN_RPC_INVALID_REQUEST,
                  "send the body with a Content-Length header (chunked "
                  "bodies are not read)",
                  NULL, NULL, NULL);
  if (clen == 0)
    return refuse(s, wsi, HTTP_STATUS_BAD_REQUEST, MN_RPC_PARSE_ERROR,
                  "the body is empty: POST one JSON-RPC message", NULL, NULL,
                  NULL);
  uint64_t limit = cfg->max_message_size;
  if (limit && clen > limit) {
    char msg[200], data[96];
    snprintf(msg, sizeof msg,
             "request body of %llu bytes is larger than the limit of %llu "
             "bytes (server.max_message_size)",
             clen, (unsigned long long)limit);
    snprintf(data, sizeof data, "{\"limit\":%llu,\"size\":%llu}",
             (unsigned long long)limit, clen);
    if (s->metrics)
      mn_metrics_count(s->metrics, "oversized_messages", 1);
    return refuse(s, wsi, HTTP_STATUS_REQ_ENTITY_TOO_LARGE,
                  MN_RPC_INVALID_REQUEST, msg, data, NULL, NULL);
  }
  if (cfg->max_connections > 0 && m->open >= cfg->max_connections) {
    char msg[200];
    snprintf(msg, sizeof msg,
             "too many /mcp requests in flight: the limit is %lld "
             "(server.max_connections); retry shortly",
             (long long)cfg->max_connections);
    return refuse(s, wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, MN_RPC_OVERLOADED,
                  msg, NULL, "retry-after:", "1");
  }
  int new_session = 0;
  if (!ss) {
    if (m->n_sessions >= cfg->mcp_max_sessions) {
      char msg[240];
      snprintf(msg, sizeof msg,
               "too many MCP sessions: the limit is %lld "
               "(server.mcp_max_sessions); end unused ones with DELETE /mcp "
               "or wait for idle ones to expire",
               (long long)cfg->mcp_max_sessions);
      return refuse(s, wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, MN_RPC_OVERLOADED,
                    msg, NULL, "retry-after:", "5");
    }
    ss = sess_new(s, m, wsi);
    if (!ss)
      return refuse(s, wsi, HTTP_STATUS_INTERNAL_SERVER_ERROR,
                    MN_RPC_INTERNAL_ERROR,
                    "cannot start a session: out of memory or no random "
                    "bytes",
                    NULL, NULL, NULL);
    new_session = 1;
  }
  mcp_req *rq = calloc(1, sizeof *rq);
  if (rq)
    rq->c = mn__conn_new_request(ss->conn, wsi, new_session);
  size_t cap = clen + 1 < BODY_FIRST_CAP ? clen + 1 : BODY_FIRST_CAP;
  if (rq && rq->c)
    rq->c->rx = malloc(cap);
  if (!rq || !rq->c || !rq->c->rx) {
    if (rq && rq->c)
      mn__conn_unref(rq->c);
    free(rq);
    if (new_session)
      sess_unlist(m, ss);
    return refuse(s, wsi, HTTP_STATUS_INTERNAL_SERVER_ERROR,
                  MN_RPC_RESOURCE_ERROR, "out of memory for the request", NULL,
                  NULL, NULL);
  }
  rq->c->rx_cap = cap;
  rq->expect = clen;
  rq->sess = ss;
  rq->new_session = new_session;
  ss->refs++;
  ss->active++;
  ss->last_used_ns = mn_time_ns();
  m->open++;
  *slot = rq;
  return 0; /* lws reads the body next */
}

int mn__mcp_body(mn_server *s, struct lws *wsi, void **slot, const void *in,
                 size_t len) {
  (void)s;
  (void)wsi;
  mcp_req *rq = *slot;
  mn__conn *c = rq->c;
  if (rq->submitted || c->rx_len + len > rq->expect)
    return -1; /* more than Content-Length said: lws would not */
  if (c->rx_len + len + 1 > c->rx_cap) {
    size_t cap = c->rx_cap * 2;
    if (cap < c->rx_len + len + 1)
      cap = c->rx_len + len + 1;
    if (cap > rq->expect + 1)
      cap = rq->expect + 1;
    unsigned char *nb = realloc(c->rx, cap);
    if (!nb) {
      MN__LOGE("server", "%s: out of memory for a %zu-byte /mcp body", c->peer,
               rq->expect);
      return -1;
    }
    c->rx = nb;
    c->rx_cap = cap;
  }
  memcpy(c->rx + c->rx_len, in, len);
  c->rx_len += len;
  return 0;
}

int mn__mcp_body_done(mn_server *s, struct lws *wsi, void **slot) {
  mcp_req *rq = *slot;
  mn__conn *c = rq->c;
  if (rq->submitted) {
    /* Called again: the client pipelined, lws holds its next request and
     * offers this completion on every turn instead of reading on (see
     * below). Answer from here, and end the connection after it: lws 4.1
     * does not go on to a pipelined request cleanly after a reply that
     * was not written from its own callback. */
    rq->pipelined = 1;
    return mn__conn_out_peek(c) ? mn__mcp_writeable(s, wsi, slot) : 0;
  }
  if (c->rx_len != rq->expect)
    return -1;
  if (s->state != MN__SRV_SERVING) {
    *slot = NULL;
    req_release(s, rq);
    return refuse(s, wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, MN_RPC_OVERLOADED,
                  "server is shutting down; send the request again to "
                  "another instance or after the restart",
                  NULL, NULL, NULL);
  }
  mn__job *j = calloc(1, sizeof *j);
  if (!j)
    return -1;
  uint64_t now = mn_time_ns();
  mn__conn_ref(c);
  j->conn = c;
  j->alloc = c->rx;
  j->msg = c->rx;
  j->len = c->rx_len;
  j->enq_ns = now;
  j->deadline_ns = s->cfg->timeout_ms > 0
                       ? now + (uint64_t)s->cfg->timeout_ms * 1000000u
                       : 0;
  c->rx = NULL;
  c->rx_len = c->rx_cap = 0;
  if (s->metrics)
    mn_metrics_bytes(s->metrics, j->len, 0);
  pthread_mutex_lock(&c->lock);
  c->inflight++;
  pthread_mutex_unlock(&c->lock);
  atomic_fetch_add(&s->backlog, 1);
  rq->submitted = 1;
  s->mcp->pending++;
  /* The answer comes when the worker (or the watchdog) is done, which
   * processing.timeout bounds; lws's own timeouts would cut it off. */
  lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0);
  /* Nothing more is read from this connection while the worker runs.
   * lws 4.1 stays in its body state until the transaction ends, and when
   * the client has pipelined (the next request already in lws's buffer)
   * it calls BODY_COMPLETION again on every turn of the loop instead of
   * reading: the I/O thread spun, and never got to the writeable
   * callback either. Reading resumes when the reply is there
   * (mn__mcp_wake); a BODY_COMPLETION that then comes first writes it. */
  lws_rx_flow_control(wsi, 0);
  c->rx_paused = 1;
  mn__pool_submit_list(s->pool, j, j, 1);
  return 0;
}

/* Status line and headers, and the body too when it is small. */
static int write_head(mn_server *s, struct lws *wsi, mcp_req *rq,
                      mn__outmsg *o) {
  unsigned status = o->http_status ? (unsigned)o->http_status : 200;
  mcp_sess *ss = rq->sess;
  const char *sid = NULL;
  if (rq->new_session && status == 200 && o->http_initialized && !ss->live &&
      ss->listed) {
    ss->live = 1;
    sid = ss->id;
    MN__LOGI("server", "%s: MCP session started (protocol %s)", ss->conn->peer,
             mn_rpc_session_protocol(ss->conn->session));
  }
  size_t body = o->len;
  int with_body = body <= ONE_WRITE_MAX;
  unsigned char hb[LWS_PRE + 1024 + ONE_WRITE_MAX];
  unsigned char *start = hb + LWS_PRE, *p = start, *end = hb + sizeof hb;
  /* Pipelined: no Content-Length, so lws answers "connection: close" and
   * closes once the reply is out; the body ends with the connection. */
  if (lws_add_http_common_headers(
          wsi, status, body ? "application/json" : NULL,
          rq->pipelined ? LWS_ILLEGAL_HTTP_CONTENT_LEN : body, &p, end) ||
      lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                  (const unsigned char *)"no-store", 8, &p,
                                  end) ||
      (sid && lws_add_http_header_by_name(
                  wsi, (const unsigned char *)"mcp-session-id:",
                  (const unsigned char *)sid, (int)strlen(sid), &p, end)) ||
      lws_finalize_http_header(wsi, &p, end))
    return -1;
  if (with_body && body) {
    memcpy(p, o->payload, body);
    p += body;
    o->off = body;
  }
  if (lws_write(wsi, start, (size_t)(p - start), LWS_WRITE_HTTP_HEADERS) < 0)
    return -1;
  rq->hdr_sent = 1;
  if (s->metrics && with_body)
    mn_metrics_bytes(s->metrics, 0, body);
  return 0;
}

int mn__mcp_writeable(mn_server *s, struct lws *wsi, void **slot) {
  mcp_req *rq = *slot;
  mn__conn *c = rq->c;
  if (!rq->flushing) {
    mn__outmsg *o = mn__conn_out_peek(c);
    if (!o)
      return 0; /* not yet */
    if (!rq->hdr_sent && write_head(s, wsi, rq, o))
      return -1;
    /* A large body in pieces of at most MN__TX_FRAGMENT per callback, so
     * that other connections get their turn. */
    size_t sent = 0;
    while (o->off < o->len && sent < MN__TX_FRAGMENT) {
      if (sent && lws_send_pipe_choked(wsi))
        break;
      size_t n = o->len - o->off;
      if (n > MN__TX_FRAGMENT - sent)
        n = MN__TX_FRAGMENT - sent;
      unsigned char *p = o->payload + o->off;
      /* lws wants LWS_PRE writable bytes in front: the headroom, or the
       * bytes already sent. */
      if (o->off == 0 && !o->headroom) {
        memcpy(s->scratch + LWS_PRE, p, n);
        p = s->scratch + LWS_PRE;
      }
      int last = o->off + n == o->len;
      if (lws_write(wsi, p, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) <
          0)
        return -1;
      o->off += n;
      sent += n;
    }
    if (s->metrics && sent)
      mn_metrics_bytes(s->metrics, 0, sent);
    if (o->off < o->len) {
      lws_callback_on_writable(wsi);
      return 0;
    }
    rq->flushing = 1;
  }
  /* Everything is with lws; the drain waits until it has left too. */
  if (lws_send_pipe_choked(wsi)) {
    lws_callback_on_writable(wsi);
    return 0;
  }
  *slot = NULL;
  if (c->rx_paused)
    lws_rx_flow_control(wsi, 1);
  req_release(s, rq);
  return lws_http_transaction_completed(wsi) ? -1 : 0;
}

void mn__mcp_wake(mn__conn *c) {
  /* An h1 connection whose reading is paused gets no writeable callback
   * from lws 4.1 either: let it read again first. */
  if (c->rx_paused) {
    c->rx_paused = 0;
    lws_rx_flow_control(c->wsi, 1 | LWS_RXFLOW_REASON_FLAG_PROCESS_NOW);
  }
  lws_callback_on_writable(c->wsi);
}

void mn__mcp_closed(mn_server *s, void **slot) {
  mcp_req *rq = *slot;
  *slot = NULL;
  if (rq)
    req_release(s, rq);
}
