/*
 * workers.c - the job queue, the worker pool that runs mn_rpc_handle(),
 * and the watchdog that answers jobs stuck past their deadline.
 *
 * DESIGN: one FIFO under pool->lock feeds N workers. A worker publishes
 * the job it runs in its slot (under the same lock) so that the watchdog
 * can see it. The watchdog wakes every 100 ms; a job (queued or running)
 * more than MN__WATCHDOG_GRACE_NS past its deadline gets a -32002 reply
 * built from its id (mn_rpc_peek_id) and is marked answered; the worker
 * then drops the late result. The job's memory stays owned by the worker
 * (or the queue): the watchdog only reads it under the lock, and takes a
 * connection reference before it lets go of the lock.
 *
 * The per-connection rate limit is checked here, on the worker, because
 * counting the members of a batch needs a look at the message, which the
 * I/O thread never takes.
 */
#define _GNU_SOURCE
#include "server/server_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct slot {
  mn__job *job;
} slot;

struct mn__pool {
  mn_server *srv;
  pthread_mutex_t lock;
  pthread_cond_t cond;    /* work available or stop */
  pthread_cond_t wd_cond; /* watchdog sleep */
  mn__job *head, *tail;
  int64_t depth;
  int64_t inflight; /* queued + running */
  int stop;
  int nworkers;
  pthread_t *threads;
  int *joined;
  slot *slots;
  pthread_t watchdog;
  int watchdog_started;
  int leaked; /* a thread could not be joined */
};

typedef struct worker_arg {
  mn__pool *pool;
  int index;
} worker_arg;

void mn__job_free(mn__job *j) {
  if (!j)
    return;
  mn__conn_unref(j->conn);
  free(j->alloc ? j->alloc : j->msg);
  free(j);
}

/* First byte of the JSON text: '[' marks a batch. */
static int message_is_batch(const unsigned char *msg, size_t len, int binary) {
  const unsigned char *p = msg, *end = msg + len;
  if (binary) {
    if (len < 4)
      return 0;
    uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    p += 4;
    if (n < (size_t)(end - p))
      end = p + n;
  }
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
    p++;
  return p < end && *p == '[';
}

int64_t mn__count_requests(const unsigned char *msg, size_t len, int binary) {
  if (!message_is_batch(msg, len, binary))
    return 1;
  const unsigned char *p = msg, *end = msg + len;
  if (binary) {
    uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    p += 4;
    if (n < (size_t)(end - p))
      end = p + n;
  }
  int depth = 0, in_str = 0, saw = 0;
  int64_t commas = 0;
  for (; p < end; p++) {
    unsigned char ch = *p;
    if (in_str) {
      if (ch == '\\')
        p++;
      else if (ch == '"')
        in_str = 0;
      continue;
    }
    switch (ch) {
    case '"':
      in_str = 1;
      saw |= depth == 1;
      break;
    case '[':
    case '{':
      saw |= depth == 1;
      depth++;
      break;
    case ']':
    case '}':
      if (--depth <= 0)
        return saw ? commas + 1 : 1;
      break;
    case ',':
      commas += depth == 1;
      break;
    case ' ':
    case '\t':
    case '\r':
    case '\n':
      break;
    default:
      saw |= depth == 1;
    }
  }
  return saw ? commas + 1 : 1;
}

/* An error reply for a job answered outside the engine. Notifications get
 * none; a batch gets one error with a null id. */
static void error_for_job(const mn__job *j, int code, const char *message,
                          const char *data_json, mn_rpc_reply *out) {
  memset(out, 0, sizeof *out);
  char *id = mn_rpc_peek_id(j->msg, j->len, j->binary);
  if (!id && !message_is_batch(j->msg, j->len, j->binary))
    return; /* a notification: the spec says no reply, ever */
  mn_rpc_error_reply(code, message, data_json, id, out);
  free(id);
}

static void answer_shutting_down(const mn__job *j, mn_rpc_reply *out) {
  error_for_job(j, MN_RPC_OVERLOADED,
                "server is shutting down; this request was not processed, "
                "send it again to another instance or after the restart",
                NULL, out);
}

/* What run_job found for an HTTP /mcp request. */
typedef struct http_outcome {
  int status, initialized;
} http_outcome;

static void run_job(mn__pool *p, mn__job *j, mn_rpc_reply *reply,
                    http_outcome *ho) {
  mn_server *s = p->srv;
  memset(reply, 0, sizeof *reply);
  if (atomic_load(&j->conn->failed))
    return; /* the connection is being closed; nothing more is answered */
  /* RFC 6455: a text message that is not UTF-8 fails the connection.
   * Over HTTP the JSON reader's own check answers -32700 instead. */
  if (!j->conn->http && !j->binary && !mn__utf8_valid(j->msg, j->len)) {
    MN__LOGW("server",
             "%s: closing with 1007: a text message is not "
             "valid UTF-8",
             j->conn->peer);
    if (s->metrics)
      mn_metrics_count(s->metrics, "invalid_utf8", 1);
    mn__conn_fail(j->conn, LWS_CLOSE_STATUS_INVALID_PAYLOAD,
                  "text message is not valid UTF-8");
    return;
  }
  if (j->reject) {
    answer_shutting_down(j, reply);
    return;
  }
  int64_t per_min = s->cfg->rate_limit;
  if (per_min > 0) {
    int64_t n = mn__count_requests(j->msg, j->len, j->binary);
    /* An HTTP request counts against its session's bucket. */
    mn__conn *bucket = j->conn->parent ? j->conn->parent : j->conn;
    int64_t wait_ms = mn__conn_rate_take(bucket, n, per_min);
    if (wait_ms > 0) {
      char msg[256], data[128];
      if (n > per_min)
        snprintf(msg, sizeof msg,
                 "rate limit exceeded: this batch holds %lld requests but "
                 "server.rate_limit allows %lld per minute per connection; "
                 "send smaller batches",
                 (long long)n, (long long)per_min);
      else
        snprintf(msg, sizeof msg,
                 "rate limit exceeded: at most %lld requests per minute per "
                 "connection (server.rate_limit); retry in %lld ms",
                 (long long)per_min, (long long)wait_ms);
      snprintf(data, sizeof data,
               "{\"retry_after_ms\":%lld,\"limit_per_minute\":%lld,"
               "\"requests\":%lld}",
               (long long)wait_ms, (long long)per_min, (long long)n);
      if (s->metrics)
        mn_metrics_count(s->metrics, "rate_limited", n);
      error_for_job(j, MN_RPC_RATE_LIMITED, msg, data, reply);
      return;
    }
  }
  if (j->conn->http) {
    mn_rpc_http h = {.need_initialize = j->conn->http_need_init};
    mn_rpc_handle_http(s->rpc, j->conn->session, j->msg, j->len, j->deadline_ns,
                       &h, reply);
    ho->status = h.status;
    ho->initialized = h.initialized;
    return;
  }
  mn_rpc_handle(s->rpc, j->conn->session, j->msg, j->len, j->binary,
                j->deadline_ns, reply);
}

static void *worker_main(void *arg) {
  worker_arg *wa = arg;
  mn__pool *p = wa->pool;
  int index = wa->index;
  free(wa);
  int finished = 0; /* the last job, answered but not yet uncounted */
  for (;;) {
    pthread_mutex_lock(&p->lock);
    if (finished) {
      /* Uncounted only now that its reply is queued on the connection:
       * the drain must not find the pool idle with a reply still in the
       * worker's hands. */
      p->inflight--;
      finished = 0;
      if (p->inflight == 0 && atomic_load(&p->srv->stop_requested))
        mn__server_wake(p->srv); /* the drain may be over */
    }
    while (!p->stop && !p->head)
      pthread_cond_wait(&p->cond, &p->lock);
    if (p->stop) {
      pthread_mutex_unlock(&p->lock);
      break;
    }
    mn__job *j = p->head;
    p->head = j->next;
    if (!p->head)
      p->tail = NULL;
    p->depth--;
    j->next = NULL;
    int skip = j->answered; /* the watchdog answered it while queued */
    if (!skip)
      p->slots[index].job = j;
    pthread_mutex_unlock(&p->lock);

    mn_rpc_reply reply = {0};
    http_outcome ho = {0, 0};
    if (!skip)
      run_job(p, j, &reply, &ho);

    pthread_mutex_lock(&p->lock);
    p->slots[index].job = NULL;
    int late = j->answered && !skip;
    pthread_mutex_unlock(&p->lock);

    /* A job the watchdog answered left the backlog then; any other leaves
     * it now, before the loop is woken. */
    if (!skip && !late)
      atomic_fetch_sub(&p->srv->backlog, 1);
    if (late) {
      MN__LOGW("server",
               "%s: a request finished after the watchdog "
               "answered it with a timeout; its result is dropped",
               j->conn->peer);
      mn_rpc_reply_free(&reply);
      mn__conn_complete(j->conn, NULL, 1);
    } else {
      mn__conn_complete_http(j->conn, &reply, 1, ho.status, ho.initialized);
    }
    mn__job_free(j);
    finished = 1;
  }
  return NULL;
}

/* A job past its deadline plus the grace period, not yet answered. */
static int overdue(const mn__job *j, uint64_t now) {
  return j && !j->answered && j->deadline_ns &&
         now > j->deadline_ns + MN__WATCHDOG_GRACE_NS;
}

typedef struct overdue_reply {
  mn__conn *conn;
  mn_rpc_reply reply;
} overdue_reply;

static void *watchdog_main(void *arg) {
  mn__pool *p = arg;
  mn_server *s = p->srv;
  overdue_reply *found = NULL;
  size_t cap = 0;
  pthread_mutex_lock(&p->lock);
  while (!p->stop) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&p->wd_cond, &p->lock, &ts);
    if (p->stop)
      break;
    uint64_t now = mn_time_ns();
    size_t n = 0;
    /* Running jobs first, then queued ones (all workers may be stuck). */
    for (int pass = 0; pass < 2; pass++) {
      mn__job *j = NULL;
      int i = 0;
      mn__job *q = p->head;
      for (;;) {
        if (pass == 0) {
          if (i >= p->nworkers)
            break;
          j = p->slots[i++].job;
        } else {
          if (!q)
            break;
          j = q;
          q = q->next;
        }
        if (!overdue(j, now))
          continue;
        if (n == cap) {
          size_t ncap = cap ? cap * 2 : 8;
          overdue_reply *nf = realloc(found, ncap * sizeof *nf);
          if (!nf)
            break;
          found = nf;
          cap = ncap;
        }
        j->answered = 1;
        char msg[256];
        snprintf(msg, sizeof msg,
                 "request timed out: not finished %lld ms after it arrived "
                 "(processing.timeout = %lld ms); its result will be "
                 "discarded",
                 (long long)((now - j->enq_ns) / 1000000),
                 (long long)s->cfg->timeout_ms);
        /* The same data as the engine's own -32002 (docs/API.md). */
        char data[64];
        snprintf(data, sizeof data, "{\"timeout_ms\":%lld}",
                 (long long)s->cfg->timeout_ms);
        error_for_job(j, MN_RPC_TIMEOUT_ERROR, msg, data, &found[n].reply);
        mn__conn_ref(j->conn);
        found[n].conn = j->conn;
        n++;
      }
    }
    pthread_mutex_unlock(&p->lock);
    for (size_t k = 0; k < n; k++) {
      MN__LOGW("server",
               "%s: a request ran past its deadline; answered "
               "-32002 by the watchdog",
               found[k].conn->peer);
      if (s->metrics)
        mn_metrics_count(s->metrics, "watchdog_timeouts", 1);
      /* Answered: it no longer holds back reading (processing.queue_limit),
       * even if its worker never comes back; new requests are read and
       * get their own answers. */
      atomic_fetch_sub(&s->backlog, 1);
      mn__conn_complete(found[k].conn, &found[k].reply, 0);
      mn__conn_unref(found[k].conn);
    }
    pthread_mutex_lock(&p->lock);
  }
  pthread_mutex_unlock(&p->lock);
  free(found);
  return NULL;
}

mn_status mn__pool_start(mn_server *s, int nworkers, mn__pool **out) {
  mn__pool *p = calloc(1, sizeof *p);
  if (!p)
    return mn__set_error(MN_ERR_NOMEM, "server: no memory for the pool");
  p->srv = s;
  p->nworkers = nworkers;
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->cond, NULL);
  pthread_cond_init(&p->wd_cond, NULL);
  p->threads = calloc((size_t)nworkers, sizeof *p->threads);
  p->joined = calloc((size_t)nworkers, sizeof *p->joined);
  p->slots = calloc((size_t)nworkers, sizeof *p->slots);
  if (!p->threads || !p->joined || !p->slots) {
    mn__pool_free(p);
    return mn__set_error(MN_ERR_NOMEM, "server: no memory for %d workers",
                         nworkers);
  }
  for (int i = 0; i < nworkers; i++) {
    worker_arg *wa = malloc(sizeof *wa);
    int rc = ENOMEM;
    if (wa) {
      wa->pool = p;
      wa->index = i;
      rc = pthread_create(&p->threads[i], NULL, worker_main, wa);
    }
    if (rc != 0) {
      free(wa);
      p->nworkers = i;
      mn__pool_stop(p, 0);
      mn__pool_free(p);
      return mn__set_error(MN_ERR_NOMEM, "server: cannot start worker %d: %s",
                           i, strerror(rc));
    }
  }
  if (pthread_create(&p->watchdog, NULL, watchdog_main, p) == 0)
    p->watchdog_started = 1;
  else
    MN__LOGW("server", "cannot start the watchdog thread; stuck requests "
                       "will not be timed out");
  *out = p;
  return MN_OK;
}

/* The wake-ups come after the unlock: a worker woken while the lock is
 * still held would only block on it again, and on a shared core that
 * costs two extra context switches per job. A worker that waits before
 * the append gets a signal; one that looks after it sees the jobs. */
void mn__pool_submit_list(mn__pool *p, mn__job *first, mn__job *last,
                          int64_t n) {
  last->next = NULL;
  pthread_mutex_lock(&p->lock);
  if (p->tail)
    p->tail->next = first;
  else
    p->head = first;
  p->tail = last;
  p->depth += n;
  p->inflight += n;
  int wake = n < p->nworkers ? (int)n : p->nworkers;
  pthread_mutex_unlock(&p->lock);
  while (wake-- > 0)
    pthread_cond_signal(&p->cond);
}

int64_t mn__pool_inflight(mn__pool *p) {
  pthread_mutex_lock(&p->lock);
  int64_t n = p->inflight;
  pthread_mutex_unlock(&p->lock);
  return n;
}

int64_t mn__pool_reject_queued(mn__pool *p) {
  pthread_mutex_lock(&p->lock);
  mn__job *q = p->head;
  int64_t taken = p->depth;
  p->head = p->tail = NULL;
  p->depth = 0;
  pthread_mutex_unlock(&p->lock);
  /* Off the queue, no worker or watchdog can see these jobs any more. */
  int64_t n = 0;
  while (q) {
    mn__job *next = q->next;
    mn_rpc_reply reply = {0};
    if (!q->answered) { /* else the watchdog answered it while queued */
      if (!atomic_load(&q->conn->failed)) {
        answer_shutting_down(q, &reply);
        n++;
      }
      atomic_fetch_sub(&p->srv->backlog, 1);
    }
    mn__conn_complete(q->conn, &reply, 1);
    mn__job_free(q);
    q = next;
  }
  pthread_mutex_lock(&p->lock);
  p->inflight -= taken;
  pthread_mutex_unlock(&p->lock);
  return n;
}

int64_t mn__pool_queue_depth(mn__pool *p) {
  pthread_mutex_lock(&p->lock);
  int64_t n = p->depth;
  pthread_mutex_unlock(&p->lock);
  return n;
}

mn_status mn__pool_stop(mn__pool *p, int64_t wait_ms) {
  if (!p)
    return MN_OK;
  if (p->leaked)
    return MN_ERR_TIMEOUT;
  pthread_mutex_lock(&p->lock);
  p->stop = 1;
  /* Jobs still queued will not run; their connections are going away. */
  mn__job *q = p->head;
  p->head = p->tail = NULL;
  p->inflight -= p->depth;
  p->depth = 0;
  pthread_cond_broadcast(&p->cond);
  pthread_cond_broadcast(&p->wd_cond);
  pthread_mutex_unlock(&p->lock);
  while (q) {
    mn__job *next = q->next;
    pthread_mutex_lock(&q->conn->lock);
    q->conn->inflight--;
    pthread_mutex_unlock(&q->conn->lock);
    mn__job_free(q);
    q = next;
  }
  if (p->watchdog_started) {
    pthread_join(p->watchdog, NULL);
    p->watchdog_started = 0;
  }
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += wait_ms / 1000;
  deadline.tv_nsec += (wait_ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  mn_status st = MN_OK;
  for (int i = 0; i < p->nworkers; i++) {
    if (p->joined[i])
      continue;
    int rc = pthread_timedjoin_np(p->threads[i], NULL, &deadline);
    if (rc == 0) {
      p->joined[i] = 1;
    } else {
      /* A request that never returns: leave its thread behind rather
       * than hang the shutdown. The pool cannot be freed after this. */
      pthread_detach(p->threads[i]);
      p->joined[i] = 1;
      p->leaked = 1;
      st = MN_ERR_TIMEOUT;
    }
  }
  if (st != MN_OK)
    MN__LOGW("server", "some requests were still running at shutdown; "
                       "their threads are abandoned");
  return st;
}

void mn__pool_free(mn__pool *p) {
  if (!p || p->leaked)
    return;
  pthread_mutex_destroy(&p->lock);
  pthread_cond_destroy(&p->cond);
  pthread_cond_destroy(&p->wd_cond);
  free(p->threads);
  free(p->joined);
  free(p->slots);
  free(p);
}
