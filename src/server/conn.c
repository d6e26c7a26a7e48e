/*
 * conn.c - a WebSocket connection's state shared between the I/O thread
 * and the workers: reference count, outgoing reply queue, in-flight job
 * count, rate-limit bucket, and the ready list that wakes the loop.
 *
 * DESIGN: see server_internal.h. Workers never touch the wsi; they append
 * replies under conn->lock and put the connection on the server's ready
 * list. The first connection to join an empty ready list wakes the loop
 * with lws_cancel_service(); the loop takes the whole list at once, so a
 * burst of completions costs one wake-up. lws_cancel_service() is called
 * under ready_lock so that it never races the context's destruction
 * (ctx_alive is cleared under the same lock first).
 */
#include "server/server_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mn__conn *mn__conn_new(mn_server *s, struct lws *wsi, const char *peer) {
  mn__conn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  atomic_init(&c->refs, 1);
  atomic_init(&c->closed, 0);
  atomic_init(&c->failed, 0);
  c->srv = s;
  c->wsi = wsi;
  c->id = ++s->next_conn_id;
  snprintf(c->peer, sizeof c->peer, "%s#%llu", peer, (unsigned long long)c->id);
  pthread_mutex_init(&c->lock, NULL);
  c->tokens = (double)s->cfg->rate_limit;
  c->tokens_ns = mn_time_ns();
  c->last_activity_ns = c->tokens_ns;
  c->session = mn_rpc_session_new(s->rpc, c->peer);
  if (!c->session) {
    pthread_mutex_destroy(&c->lock);
    free(c);
    return NULL;
  }
  /* The engine builds replies behind room for the frame header, so that
   * the loop writes them where they are. */
  mn_rpc_session_set_headroom(c->session, LWS_PRE);
  return c;
}

mn__conn *mn__conn_new_request(mn__conn *parent, struct lws *wsi,
                               int need_init) {
  mn__conn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  mn_server *s = parent->srv;
  atomic_init(&c->refs, 1);
  atomic_init(&c->closed, 0);
  atomic_init(&c->failed, 0);
  c->srv = s;
  c->wsi = wsi;
  c->id = ++s->next_conn_id;
  c->http = 1;
  c->http_need_init = need_init;
  mn__conn_ref(parent);
  c->parent = parent;
  c->session = parent->session;
  snprintf(c->peer, sizeof c->peer, "%s", parent->peer);
  pthread_mutex_init(&c->lock, NULL);
  c->last_activity_ns = mn_time_ns();
  return c;
}

void mn__conn_ref(mn__conn *c) {
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void mn__conn_unref(mn__conn *c) {
  if (!c)
    return;
  if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
    return;
  mn__outmsg *m = c->out_head;
  while (m) {
    mn__outmsg *next = m->next;
    free(m->alloc);
    free(m);
    m = next;
  }
  if (c->parent)
    mn__conn_unref(c->parent); /* the session was the parent's */
  else
    mn_rpc_session_free(c->session);
  free(c->rx);
  pthread_mutex_destroy(&c->lock);
  free(c);
}

void mn__server_wake(mn_server *s) {
  pthread_mutex_lock(&s->ready_lock);
  if (!s->wake_pending && s->ctx_alive) {
    s->wake_pending = 1;
    lws_cancel_service(s->ctx);
  }
  pthread_mutex_unlock(&s->ready_lock);
}

void mn__conn_mark_ready(mn__conn *c) {
  mn_server *s = c->srv;
  pthread_mutex_lock(&s->ready_lock);
  if (!c->on_ready) {
    c->on_ready = 1;
    mn__conn_ref(c);
    c->ready_next = s->ready_head;
    s->ready_head = c;
  }
  if (!s->wake_pending && s->ctx_alive) {
    s->wake_pending = 1;
    lws_cancel_service(s->ctx);
  }
  pthread_mutex_unlock(&s->ready_lock);
}

/* Wrap an engine reply for writing. The engine's replies come with
 * LWS_PRE bytes of headroom (mn_rpc_session_set_headroom) and are taken
 * as they are. Others (errors built outside the engine) are copied behind
 * headroom here, on the worker, when small or medium, so that the loop
 * writes them in place; large ones keep their buffer. */
static mn__outmsg *outmsg_from_reply(mn_rpc_reply *r) {
  mn__outmsg *m = calloc(1, sizeof *m);
  if (!m)
    return NULL;
  m->len = r->len;
  m->binary = r->binary;
  if (r->headroom >= LWS_PRE) {
    m->alloc = (unsigned char *)r->data - r->headroom;
    m->payload = r->data;
    m->headroom = 1;
  } else if (r->len <= MN__TX_HEADROOM_MAX) {
    m->alloc = malloc(LWS_PRE + r->len + 1);
    if (!m->alloc) {
      free(m);
      return NULL;
    }
    m->payload = m->alloc + LWS_PRE;
    memcpy(m->payload, r->data, r->len);
    m->headroom = 1;
    mn_rpc_reply_free(r);
  } else {
    m->alloc = (unsigned char *)r->data - r->headroom;
    m->payload = r->data;
    m->headroom = 0;
  }
  r->data = NULL;
  r->len = 0;
  r->headroom = 0;
  return m;
}

void mn__conn_complete(mn__conn *c, mn_rpc_reply *reply, int job_done) {
  mn__conn_complete_http(c, reply, job_done, 0, 0);
}

void mn__conn_complete_http(mn__conn *c, mn_rpc_reply *reply, int job_done,
                            int status, int initialized) {
  mn__outmsg *m = NULL;
  if (reply && reply->data && !atomic_load(&c->closed)) {
    m = outmsg_from_reply(reply);
    if (!m)
      MN__LOGE("server", "%s: out of memory queueing a %zu-byte reply", c->peer,
               reply->len);
  } else if (c->http && job_done && !atomic_load(&c->closed)) {
    /* Nothing to send (notifications, or a rate-limited notification):
     * the POST is still answered, with 202. */
    m = calloc(1, sizeof *m);
    if (m && !status)
      status = 202;
  }
  if (m) {
    m->http_status = status;
    m->http_initialized = initialized;
  }
  if (reply)
    mn_rpc_reply_free(reply);
  pthread_mutex_lock(&c->lock);
  if (m) {
    if (c->out_tail)
      c->out_tail->next = m;
    else
      c->out_head = m;
    c->out_tail = m;
    c->out_count++;
    c->out_bytes += m->len;
  }
  if (job_done)
    c->inflight--;
  pthread_mutex_unlock(&c->lock);
  if (m || job_done)
    mn__conn_mark_ready(c);
}

void mn__conn_fail(mn__conn *c, int code, const char *reason) {
  if (atomic_exchange(&c->failed, 1))
    return;
  mn__outmsg *m = calloc(1, sizeof *m);
  if (m) {
    m->close_code = code;
    snprintf(m->close_reason, sizeof m->close_reason, "%s", reason);
  }
  pthread_mutex_lock(&c->lock);
  if (m) {
    if (c->out_tail)
      c->out_tail->next = m;
    else
      c->out_head = m;
    c->out_tail = m;
    c->out_count++;
  }
  pthread_mutex_unlock(&c->lock);
  mn__conn_mark_ready(c);
}

int64_t mn__conn_rate_take(mn__conn *c, int64_t n, int64_t per_minute) {
  if (per_minute <= 0)
    return 0;
  double cap = (double)per_minute;
  double per_ns = cap / 60e9;
  int64_t wait_ms = 0;
  pthread_mutex_lock(&c->lock);
  /* The clock is read under the lock: a worker that read it earlier but
   * took the lock later would see time run backwards, and the unsigned
   * difference would refill the bucket (seen with 16 workers). */
  uint64_t now = mn_time_ns();
  if (now > c->tokens_ns)
    c->tokens += (double)(now - c->tokens_ns) * per_ns;
  if (c->tokens > cap)
    c->tokens = cap;
  c->tokens_ns = now;
  if (c->tokens >= (double)n) {
    c->tokens -= (double)n;
  } else {
    /* A batch larger than the whole bucket can never pass; say how long
     * until a full bucket, the most the client can hope for. */
    double need = (double)n > cap ? cap - c->tokens : (double)n - c->tokens;
    wait_ms = (int64_t)(need / per_ns / 1e6) + 1;
  }
  pthread_mutex_unlock(&c->lock);
  return wait_ms;
}

mn__outmsg *mn__conn_out_peek(mn__conn *c) {
  pthread_mutex_lock(&c->lock);
  mn__outmsg *m = c->out_head;
  pthread_mutex_unlock(&c->lock);
  return m;
}

void mn__conn_out_pop_done(mn__conn *c) {
  pthread_mutex_lock(&c->lock);
  mn__outmsg *m = c->out_head;
  if (m) {
    c->out_head = m->next;
    if (!c->out_head)
      c->out_tail = NULL;
    c->out_count--;
    c->out_bytes -= m->len;
  }
  pthread_mutex_unlock(&c->lock);
  if (m) {
    free(m->alloc);
    free(m);
  }
}

void mn__conn_out_state(mn__conn *c, size_t *count, size_t *bytes,
                        int *inflight) {
  pthread_mutex_lock(&c->lock);
  if (count)
    *count = c->out_count;
  if (bytes)
    *bytes = c->out_bytes;
  if (inflight)
    *inflight = c->inflight;
  pthread_mutex_unlock(&c->lock);
}
