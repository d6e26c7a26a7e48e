/*
 * load.c - a WebSocket JSON-RPC load generator for mnemod (and for any
 * server speaking the same protocol, such as the Python peer in
 * bench/peers/).
 *
 * It opens N connections with a minimal WebSocket client of its own
 * (RFC 6455: handshake, masked client frames, fragmented and control
 * frames from the server), sends processEmbeddings requests in one of the
 * tensor encodings and measures latency:
 *
 *  - closed loop (default): each connection keeps --depth requests
 *    outstanding and sends the next as soon as a reply arrives; latency is
 *    reply time minus send time.
 *  - open loop (--rate R): requests are due at a fixed total rate, spread
 *    over the connections round-robin, whether or not earlier ones were
 *    answered; latency is measured from the intended send time, so a
 *    server that falls behind is charged for the queueing (no coordinated
 *    omission).
 *
 * Output: one JSON line with requests/s, errors and p50 / p90 / p99 /
 * p99.9 / max latency in milliseconds. Samples taken during --warmup are
 * left out.
 *
 * DESIGN: one thread, one epoll set, non-blocking sockets. The request is
 * built once per encoding and masked once per connection with that
 * connection's random key; per request only a fixed-width string id
 * ("id":"CCCCSSSSSS": connection and sequence) is patched in, and the
 * frame is sent straight from that buffer when nothing else is queued.
 * The generator's cost per request is then the kernel's copy, so that it
 * can drive a server on another core. The server still unmasks every byte.
 * Replies are matched by id, so out-of-order replies are handled.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define ID_LEN 10 /* "CCCCSSSSSS" */
#define SEQ_MOD 1000000
#define MAX_OUT 4096 /* outstanding requests per connection */

typedef enum { ENC_JSON, ENC_BASE64, ENC_BINARY, ENC_F32OBJ } encoding;

typedef struct opts {
  const char *host;
  int port;
  int conns;
  double duration, warmup;
  double rate; /* 0 = closed loop */
  int depth;
  encoding enc;
  int rows, width;
  const char *method;
  const char *options_json;
  const char *subprotocol;
  const char *label;
} opts;

typedef struct buf {
  unsigned char *p;
  size_t len, cap, head;
} buf;

typedef struct conn {
  int fd;
  int index;
  /* The request frame, masked once with this connection's key; only the
   * id bytes change from one request to the next. It is sent straight
   * from here when nothing else is queued (tpl_off = bytes sent, -1 when
   * idle), otherwise copied into `out`. */
  unsigned char *tpl;
  size_t tpl_len, tpl_id_off;
  unsigned char key[4];
  long tpl_off;
  buf out; /* bytes to send after the template frame */
  /* Requests due but not yet written (their seq numbers): the socket is
   * busy with an earlier frame. Only one frame per connection exists in
   * memory at a time; a request's latency still counts from when it was
   * due. */
  uint32_t backlog[MAX_OUT];
  int bl_head, bl_len;
  buf in;  /* bytes received, not yet parsed */
  buf msg; /* a fragmented message being reassembled */
  int msg_active;
  uint32_t seq;
  int outstanding;
  uint64_t sent_ns[MAX_OUT]; /* by seq % MAX_OUT; latency origin */
  unsigned char used[MAX_OUT];
  int want_write;
} conn;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "load: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static void buf_reserve(buf *b, size_t extra) {
  if (b->head && b->head == b->len)
    b->head = b->len = 0;
  if (b->len + extra <= b->cap)
    return;
  /* Move the unread part to the front only when that makes the room; a
   * large partial frame is not moved on every read. */
  if (b->head && b->len - b->head + extra <= b->cap) {
    memmove(b->p, b->p + b->head, b->len - b->head);
    b->len -= b->head;
    b->head = 0;
    return;
  }
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + extra)
    cap *= 2;
  unsigned char *np = realloc(b->p, cap);
  if (!np)
    die("out of memory");
  b->p = np;
  b->cap = cap;
}

static void buf_append(buf *b, const void *data, size_t n) {
  buf_reserve(b, n);
  memcpy(b->p + b->len, data, n);
  b->len += n;
}

/* ------------------------------------------------------------------------
 * Request bodies.
 * ---------------------------------------------------------------------- */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static const char b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64_append(buf *b, const unsigned char *src, size_t n) {
  buf_reserve(b, (n + 2) / 3 * 4);
  char *o = (char *)b->p + b->len;
  size_t i = 0, k = 0;
  for (; i + 2 < n; i += 3) {
    uint32_t v =
        (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
    o[k++] = b64chars[v >> 18];
    o[k++] = b64chars[(v >> 12) & 63];
    o[k++] = b64chars[(v >> 6) & 63];
    o[k++] = b64chars[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)src[i] << 16;
    if (i + 1 < n)
      v |= (uint32_t)src[i + 1] << 8;
    o[k++] = b64chars[v >> 18];
    o[k++] = b64chars[(v >> 12) & 63];
    o[k++] = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
    o[k++] = '=';
  }
  b->len += k;
}

static void appendf(buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void appendf(buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char tmp[512];
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp)
    die("format overflow");
  buf_append(b, tmp, (size_t)n);
}

typedef struct templ {
  buf body;      /* the message as sent (binary: u32 + JSON + payload) */
  size_t id_off; /* where the 10 id digits go */
  int binary;
} templ;

static void build_template(const opts *o, templ *t) {
  size_t n = (size_t)o->rows * (size_t)o->width;
  float *x = malloc(n * sizeof *x);
  if (!x)
    die("out of memory");
  for (size_t i = 0; i < n; i++)
    x[i] = (float)((double)(rng() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  buf js = {0};
  appendf(&js, "{\"jsonrpc\":\"2.0\",\"id\":\"");
  size_t id_off = js.len;
  appendf(&js, "0000000000\",\"method\":\"%s\",\"params\":{\"embeddings\":",
          o->method);
  switch (o->enc) {
  case ENC_JSON:
    buf_append(&js, "[", 1);
    for (int r = 0; r < o->rows; r++) {
      buf_append(&js, r ? ",[" : "[", r ? 2 : 1);
      for (int c = 0; c < o->width; c++)
        appendf(&js, c ? ",%.9g" : "%.9g", (double)x[(size_t)r * o->width + c]);
      buf_append(&js, "]", 1);
    }
    buf_append(&js, "]", 1);
    break;
  case ENC_F32OBJ:
    /* JSON.stringify(new Float32Array(...)) of one flattened row. */
    buf_append(&js, "{", 1);
    for (size_t i = 0; i < n; i++)
      appendf(&js, i ? ",\"%zu\":%.9g" : "\"%zu\":%.9g", i, (double)x[i]);
    buf_append(&js, "}", 1);
    break;
  case ENC_BASE64:
    appendf(&js, "{\"dtype\":\"float32\",\"shape\":[%d,%d],\"data\":\"",
            o->rows, o->width);
    b64_append(&js, (const unsigned char *)x, n * sizeof *x);
    buf_append(&js, "\"}", 2);
    break;
  case ENC_BINARY:
    appendf(&js,
            "{\"dtype\":\"float32\",\"shape\":[%d,%d],"
            "\"buffer\":{\"offset\":0,\"length\":%zu}}",
            o->rows, o->width, n * sizeof *x);
    break;
  }
  appendf(&js, ",\"options\":%s}}", o->options_json);
  memset(t, 0, sizeof *t);
  if (o->enc == ENC_BINARY) {
    uint32_t jl = (uint32_t)js.len;
    unsigned char le[4] = {(unsigned char)jl, (unsigned char)(jl >> 8),
                           (unsigned char)(jl >> 16),
                           (unsigned char)(jl >> 24)};
    buf_append(&t->body, le, 4);
    buf_append(&t->body, js.p, js.len);
    buf_append(&t->body, x, n * sizeof *x);
    t->id_off = 4 + id_off;
    t->binary = 1;
  } else {
    buf_append(&t->body, js.p, js.len);
    t->id_off = id_off;
  }
  free(js.p);
  free(x);
}

/* ------------------------------------------------------------------------
 * WebSocket client.
 * ---------------------------------------------------------------------- */
static int connect_ws(const opts *o) {
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", o->port);
  struct addrinfo hints = {0}, *ai;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(o->host, portstr, &hints, &ai) != 0)
    die("cannot resolve %s", o->host);
  int fd = socket(ai->ai_family, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)
    die("cannot connect to %s:%d: %s", o->host, o->port, strerror(errno));
  freeaddrinfo(ai);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  unsigned char keyraw[16];
  for (int i = 0; i < 16; i++)
    keyraw[i] = (unsigned char)rng();
  buf key = {0};
  b64_append(&key, keyraw, 16);
  buf_append(&key, "", 1);
  char req[1024];
  int n = snprintf(req, sizeof req,
                   "GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                   o->host, o->port, (char *)key.p,
                   o->subprotocol ? "Sec-WebSocket-Protocol: " : "",
                   o->subprotocol ? o->subprotocol : "",
                   o->subprotocol ? "\r\n" : "");
  free(key.p);
  if (write(fd, req, (size_t)n) != n)
    die("handshake write failed");
  char resp[4096];
  size_t got = 0;
  while (got < sizeof resp - 1) {
    ssize_t r = read(fd, resp + got, 1); /* stop exactly at the blank line */
    if (r <= 0)
      die("handshake: connection closed");
    got += (size_t)r;
    resp[got] = 0;
    if (got >= 4 && !memcmp(resp + got - 4, "\r\n\r\n", 4))
      break;
  }
  if (strncmp(resp, "HTTP/1.1 101", 12))
    die("handshake refused: %.80s", resp);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

/* Build the connection's masked request frame. Each connection has its
 * own random masking key; the server unmasks every frame as usual. */
static void build_conn_frame(conn *c, const templ *t) {
  size_t n = t->body.len;
  unsigned char hdr[14];
  size_t h = 0;
  hdr[h++] = 0x80 | (t->binary ? 2 : 1);
  if (n < 126) {
    hdr[h++] = 0x80 | (unsigned char)n;
  } else if (n < 65536) {
    hdr[h++] = 0x80 | 126;
    hdr[h++] = (unsigned char)(n >> 8);
    hdr[h++] = (unsigned char)n;
  } else {
    hdr[h++] = 0x80 | 127;
    for (int i = 7; i >= 0; i--)
      hdr[h++] = (unsigned char)((uint64_t)n >> (8 * i));
  }
  uint32_t k32 = (uint32_t)rng();
  memcpy(c->key, &k32, 4);
  memcpy(hdr + h, c->key, 4);
  h += 4;
  c->tpl_len = h + n;
  c->tpl = malloc(c->tpl_len);
  if (!c->tpl)
    die("out of memory");
  memcpy(c->tpl, hdr, h);
  unsigned char *dst = c->tpl + h;
  for (size_t i = 0; i < n; i++)
    dst[i] = t->body.p[i] ^ c->key[i & 3];
  c->tpl_id_off = h + t->id_off;
  c->tpl_off = -1;
}

/* Patch the (masked) id of a request into the connection's frame and
 * start sending it. Only called when nothing else is being sent. */
static void start_request(conn *c, const templ *t, uint32_t seq) {
  char id[ID_LEN];
  uint64_t idv = (uint64_t)(c->index % 10000) * SEQ_MOD + seq % SEQ_MOD;
  for (int i = ID_LEN - 1; i >= 0; i--, idv /= 10)
    id[i] = (char)('0' + idv % 10);
  size_t body_off = c->tpl_id_off - (c->tpl_len - t->body.len);
  for (int i = 0; i < ID_LEN; i++)
    c->tpl[c->tpl_id_off + (size_t)i] =
        (unsigned char)id[i] ^ c->key[(body_off + (size_t)i) & 3];
  c->tpl_off = 0;
}

static int conn_busy(const conn *c) {
  return c->tpl_off >= 0 || c->out.head < c->out.len;
}

static void queue_request(conn *c, const templ *t, uint32_t seq) {
  if (!conn_busy(c) && c->bl_len == 0) {
    start_request(c, t, seq);
    return;
  }
  c->backlog[(c->bl_head + c->bl_len) % MAX_OUT] = seq;
  c->bl_len++;
}

static void queue_control(conn *c, int opcode, const unsigned char *payload,
                          size_t n) {
  unsigned char f[2 + 4 + 125];
  if (n > 125)
    n = 125;
  f[0] = 0x80 | (unsigned char)opcode;
  f[1] = 0x80 | (unsigned char)n;
  memset(f + 2, 0, 4); /* zero mask: control frames carry no secrets */
  memcpy(f + 6, payload, n);
  buf_append(&c->out, f, 6 + n);
}

/* ------------------------------------------------------------------------
 * Run state.
 * ---------------------------------------------------------------------- */
typedef struct run {
  const opts *o;
  templ t;
  conn *conns;
  int epfd;
  uint64_t t0, t_measure, t_end;
  double *lat;
  size_t nlat, caplat;
  uint64_t done, errors, sent, bytes_out, bytes_in, dropped, unanswered;
  uint64_t open_issued;
  int rr;
  int closing;
  char first_error[300];
} run;

/* Throughput counts replies that arrive inside the window; latency counts
 * requests that were due (or sent) inside it, however late they come back,
 * so that a server falling behind is charged for it. */
static void record(run *R, uint64_t origin, uint64_t now, int is_error) {
  if (now >= R->t_measure && now <= R->t_end)
    R->done++;
  if (origin < R->t_measure || origin >= R->t_end)
    return;
  if (R->nlat == R->caplat) {
    R->caplat = R->caplat ? R->caplat * 2 : 65536;
    R->lat = realloc(R->lat, R->caplat * sizeof *R->lat);
    if (!R->lat)
      die("out of memory");
  }
  R->lat[R->nlat++] = (double)(now - origin) / 1e6;
  R->errors += (uint64_t)is_error;
}

static void send_one(run *R, conn *c, uint64_t origin) {
  uint32_t seq = c->seq++ % SEQ_MOD;
  if (c->used[seq % MAX_OUT]) {
    R->dropped++; /* too many outstanding on this connection */
    return;
  }
  c->used[seq % MAX_OUT] = 1;
  c->sent_ns[seq % MAX_OUT] = origin;
  c->outstanding++;
  queue_request(c, &R->t, seq);
  R->sent++;
}

static void want_write(run *R, conn *c, int on) {
  if (c->want_write == on)
    return;
  c->want_write = on;
  struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0),
                           .data.ptr = c};
  epoll_ctl(R->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static int send_some(run *R, conn *c, const unsigned char *p, size_t n,
                     size_t *done) {
  while (*done < n) {
    ssize_t w = send(c->fd, p + *done, n - *done, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 1;
      if (errno == EINTR)
        continue;
      return -1;
    }
    *done += (size_t)w;
    R->bytes_out += (size_t)w;
  }
  return 0;
}

static int flush_out(run *R, conn *c) {
again:
  if (c->tpl_off >= 0) {
    size_t done = (size_t)c->tpl_off;
    int rc = send_some(R, c, c->tpl, c->tpl_len, &done);
    c->tpl_off = (long)done;
    if (rc < 0)
      return -1;
    if (rc > 0) {
      want_write(R, c, 1);
      return 0;
    }
    c->tpl_off = -1;
  }
  if (c->out.head < c->out.len) {
    size_t done = c->out.head;
    int rc = send_some(R, c, c->out.p, c->out.len, &done);
    c->out.head = done;
    if (rc < 0)
      return -1;
    if (rc > 0) {
      want_write(R, c, 1);
      return 0;
    }
  }
  c->out.head = c->out.len = 0;
  if (c->bl_len && !R->closing) {
    uint32_t seq = c->backlog[c->bl_head];
    c->bl_head = (c->bl_head + 1) % MAX_OUT;
    c->bl_len--;
    start_request(c, &R->t, seq);
    goto again;
  }
  want_write(R, c, 0);
  return 0;
}

/* Find the "id":"CCCCSSSSSS" of a reply (spaces allowed around ':'). */
static int reply_seq(const unsigned char *p, size_t n, uint32_t *seq) {
  const unsigned char *end = p + n, *q = p;
  for (;;) {
    size_t left = (size_t)(end - q);
    const unsigned char *k = memmem(q, left, "\"id\"", 4);
    if (!k)
      return -1;
    q = k + 4;
    while (q < end && (*q == ' ' || *q == ':'))
      q++;
    if (q < end && *q == '"' && end - q > ID_LEN)
      break;
  }
  q++;
  uint32_t v = 0;
  for (int i = 0; i < ID_LEN; i++) {
    if (q[i] < '0' || q[i] > '9')
      return -1;
    if (i >= 4)
      v = v * 10 + (uint32_t)(q[i] - '0');
  }
  *seq = v;
  return 0;
}

static void on_message(run *R, conn *c, const unsigned char *p, size_t n,
                       int binary) {
  uint64_t now = now_ns();
  const unsigned char *js = p;
  size_t jn = n;
  if (binary && n >= 4) {
    uint32_t l = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    js = p + 4;
    jn = l <= n - 4 ? l : n - 4;
  }
  size_t head = jn < 1024 ? jn : 1024;
  int is_error = memmem(js, head, "\"error\"", 7) != NULL;
  if (is_error && !R->first_error[0])
    snprintf(R->first_error, sizeof R->first_error, "%.*s",
             (int)(jn < 280 ? jn : 280), (const char *)js);
  uint32_t seq;
  if (reply_seq(js, jn, &seq) != 0 || !c->used[seq % MAX_OUT]) {
    R->errors++;
    if (!R->first_error[0])
      snprintf(R->first_error, sizeof R->first_error,
               "reply without a known id: %.*s", (int)(jn < 200 ? jn : 200),
               (const char *)js);
    return;
  }
  c->used[seq % MAX_OUT] = 0;
  c->outstanding--;
  record(R, c->sent_ns[seq % MAX_OUT], now, is_error);
  if (R->o->rate <= 0 && !R->closing && now < R->t_end)
    send_one(R, c, now_ns());
}

/* Parse whole frames out of c->in. */
static int parse_frames(run *R, conn *c) {
  for (;;) {
    unsigned char *p = c->in.p + c->in.head;
    size_t avail = c->in.len - c->in.head;
    if (avail < 2)
      return 0;
    int fin = p[0] & 0x80, op = p[0] & 0x0f;
    int masked = p[1] & 0x80;
    uint64_t len = p[1] & 0x7f;
    size_t h = 2;
    if (len == 126) {
      if (avail < 4)
        return 0;
      len = (uint64_t)p[2] << 8 | p[3];
      h = 4;
    } else if (len == 127) {
      if (avail < 10)
        return 0;
      len = 0;
      for (int i = 0; i < 8; i++)
        len = len << 8 | p[2 + i];
      h = 10;
    }
    if (masked)
      h += 4; /* servers must not mask; tolerate it */
    if (avail < h + len)
      return 0;
    unsigned char *pl = p + h;
    if (masked)
      for (uint64_t i = 0; i < len; i++)
        pl[i] ^= p[h - 4 + (i & 3)];
    c->in.head += h + (size_t)len;
    if (op == 0x8) { /* close */
      if (!R->closing) {
        fprintf(stderr, "load: connection %d closed by the server (%u)\n",
                c->index, len >= 2 ? (unsigned)(pl[0] << 8 | pl[1]) : 0);
      }
      return -1;
    } else if (op == 0x9) {
      queue_control(c, 0xA, pl, (size_t)len);
    } else if (op == 0xA) {
      /* pong: nothing */
    } else if (op == 0x1 || op == 0x2 || op == 0x0) {
      if (op != 0 && fin && !c->msg_active) {
        on_message(R, c, pl, (size_t)len, op == 0x2);
      } else {
        if (op != 0) {
          c->msg_active = op;
          c->msg.len = c->msg.head = 0;
        }
        buf_append(&c->msg, pl, (size_t)len);
        if (fin) {
          int bin = c->msg_active == 0x2;
          c->msg_active = 0;
          on_message(R, c, c->msg.p, c->msg.len, bin);
          c->msg.len = 0;
        }
      }
    }
  }
}

static int read_conn(run *R, conn *c) {
  for (;;) {
    buf_reserve(&c->in, 64 * 1024);
    ssize_t r = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0)
      return -1;
    c->in.len += (size_t)r;
    R->bytes_in += (size_t)r;
    if (parse_frames(R, c) < 0)
      return -1;
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p) {
  if (!n)
    return NAN;
  double rank = p / 100.0 * (double)(n - 1);
  size_t lo = (size_t)rank;
  size_t hi = lo + 1 < n ? lo + 1 : lo;
  double f = rank - (double)lo;
  return v[lo] * (1 - f) + v[hi] * f;
}

/* A number for JSON: null when there is none (NaN). */
static void jnum(char *out, double v) {
  if (isfinite(v))
    snprintf(out, 32, "%.3f", v);
  else
    snprintf(out, 32, "null");
}

static const char *enc_name(encoding e) {
  return e == ENC_JSON     ? "json"
         : e == ENC_BASE64 ? "base64"
         : e == ENC_BINARY ? "binary"
                           : "f32obj";
}

static void usage(void) {
  printf("usage: load [options]\n"
         "  --host H          server host (127.0.0.1)\n"
         "  --port N          server port (3001)\n"
         "  --conns N         connections (64)\n"
         "  --duration S      measured seconds (10)\n"
         "  --warmup S        seconds before measuring (1)\n"
         "  --rate R          open loop at R requests/s in total; 0 = closed "
         "loop (0)\n"
         "  --depth D         closed loop: requests outstanding per "
         "connection (1)\n"
         "  --encoding E      json | base64 | binary | f32obj (binary)\n"
         "  --rows R --width W  embeddings shape (32 x 768)\n"
         "  --method M        JSON-RPC method (processEmbeddings)\n"
         "  --options JSON    params.options ({\"normalize\":true})\n"
         "  --subprotocol P   WebSocket subprotocol, '' for none (mcp)\n"
         "  --label L         a name copied into the JSON output\n");
}

int main(int argc, char **argv) {
  opts o = {.host = "127.0.0.1",
            .port = 3001,
            .conns = 64,
            .duration = 10,
            .warmup = 1,
            .rate = 0,
            .depth = 1,
            .enc = ENC_BINARY,
            .rows = 32,
            .width = 768,
            .method = "processEmbeddings",
            .options_json = "{\"normalize\":true}",
            .subprotocol = "mcp",
            .label = ""};
  static const struct option lo[] = {
      {"host", 1, 0, 'h'},        {"port", 1, 0, 'p'},
      {"conns", 1, 0, 'c'},       {"duration", 1, 0, 'd'},
      {"warmup", 1, 0, 'w'},      {"rate", 1, 0, 'r'},
      {"depth", 1, 0, 'D'},       {"encoding", 1, 0, 'e'},
      {"rows", 1, 0, 'R'},        {"width", 1, 0, 'W'},
      {"method", 1, 0, 'm'},      {"options", 1, 0, 'o'},
      {"subprotocol", 1, 0, 's'}, {"label", 1, 0, 'l'},
      {"help", 0, 0, '?'},        {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    switch (ch) {
    case 'h':
      o.host = optarg;
      break;
    case 'p':
      o.port = atoi(optarg);
      break;
    case 'c':
      o.conns = atoi(optarg);
      break;
    case 'd':
      o.duration = atof(optarg);
      break;
    case 'w':
      o.warmup = atof(optarg);
      break;
    case 'r':
      o.rate = atof(optarg);
      break;
    case 'D':
      o.depth = atoi(optarg);
      break;
    case 'R':
      o.rows = atoi(optarg);
      break;
    case 'W':
      o.width = atoi(optarg);
      break;
    case 'm':
      o.method = optarg;
      break;
    case 'o':
      o.options_json = optarg;
      break;
    case 's':
      o.subprotocol = *optarg ? optarg : NULL;
      break;
    case 'l':
      o.label = optarg;
      break;
    case 'e':
      if (!strcmp(optarg, "json"))
        o.enc = ENC_JSON;
      else if (!strcmp(optarg, "base64"))
        o.enc = ENC_BASE64;
      else if (!strcmp(optarg, "binary"))
        o.enc = ENC_BINARY;
      else if (!strcmp(optarg, "f32obj"))
        o.enc = ENC_F32OBJ;
      else
        die("--encoding: '%s' is not json, base64, binary or f32obj", optarg);
      break;
    default:
      usage();
      return ch == '?' ? 0 : 2;
    }
  }
  if (o.conns < 1 || o.conns > 9999 || o.depth < 1 || o.depth > MAX_OUT / 2 ||
      o.rows < 1 || o.width < 1 || o.duration <= 0)
    die("bad options (conns 1..9999, depth 1..%d, rows, width, duration > "
        "0)",
        MAX_OUT / 2);

  run R = {0};
  R.o = &o;
  rng_state ^= (uint64_t)now_ns();
  build_template(&o, &R.t);
  R.epfd = epoll_create1(0);
  R.conns = calloc((size_t)o.conns, sizeof *R.conns);
  if (!R.conns)
    die("out of memory");
  for (int i = 0; i < o.conns; i++) {
    conn *c = &R.conns[i];
    c->index = i;
    c->fd = connect_ws(&o);
    build_conn_frame(c, &R.t);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(R.epfd, EPOLL_CTL_ADD, c->fd, &ev);
  }
  R.t0 = now_ns();
  R.t_measure = R.t0 + (uint64_t)(o.warmup * 1e9);
  R.t_end = R.t_measure + (uint64_t)(o.duration * 1e9);
  if (o.rate <= 0) {
    for (int i = 0; i < o.conns; i++) {
      for (int d = 0; d < o.depth; d++)
        send_one(&R, &R.conns[i], now_ns());
      if (flush_out(&R, &R.conns[i]) < 0)
        die("send failed");
    }
  }
  struct epoll_event evs[256];
  uint64_t grace_end = 0;
  for (;;) {
    uint64_t now = now_ns();
    if (now >= R.t_end && !R.closing) {
      R.closing = 1;
      grace_end = now + 2000000000ull; /* collect late replies */
    }
    if (R.closing) {
      int pending = 0;
      for (int i = 0; i < o.conns; i++)
        pending += R.conns[i].outstanding;
      if (!pending || now >= grace_end)
        break;
    }
    int timeout_ms = 1;
    if (o.rate > 0 && !R.closing) {
      /* Issue every request that is due by now. */
      uint64_t due = (uint64_t)((double)(now - R.t0) / 1e9 * o.rate);
      while (R.open_issued < due) {
        uint64_t intended =
            R.t0 + (uint64_t)((double)R.open_issued / o.rate * 1e9);
        conn *c = &R.conns[R.rr];
        R.rr = (R.rr + 1) % o.conns;
        send_one(&R, c, intended);
        R.open_issued++;
        if (flush_out(&R, c) < 0)
          die("send failed");
      }
      timeout_ms = 0;
    }
    int n = epoll_wait(R.epfd, evs, 256, timeout_ms);
    for (int k = 0; k < n; k++) {
      conn *c = evs[k].data.ptr;
      if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (read_conn(&R, c) < 0) {
          if (!R.closing)
            die("connection %d lost (%s)", c->index,
                R.first_error[0] ? R.first_error : "closed");
          epoll_ctl(R.epfd, EPOLL_CTL_DEL, c->fd, NULL);
          c->outstanding = 0;
          continue;
        }
      }
      if ((conn_busy(c) || c->bl_len) && flush_out(&R, c) < 0)
        die("send failed on connection %d", c->index);
    }
    if (o.rate > 0 && n == 0 && !R.closing) {
      /* Busy-poll in the open loop only while requests are due soon; a
       * short sleep otherwise keeps the generator from eating its core. */
      struct timespec ts = {0, 20000};
      nanosleep(&ts, NULL);
    }
  }
  for (int i = 0; i < o.conns; i++) {
    conn *c = &R.conns[i];
    for (int k = 0; k < MAX_OUT; k++)
      if (c->used[k] && c->sent_ns[k] >= R.t_measure && c->sent_ns[k] < R.t_end)
        R.unanswered++;
  }
  qsort(R.lat, R.nlat, sizeof *R.lat, cmp_double);
  double secs = o.duration;
  char p50[32], p90[32], p99[32], p999[32], pmax[32];
  jnum(p50, pct(R.lat, R.nlat, 50));
  jnum(p90, pct(R.lat, R.nlat, 90));
  jnum(p99, pct(R.lat, R.nlat, 99));
  jnum(p999, pct(R.lat, R.nlat, 99.9));
  jnum(pmax, R.nlat ? R.lat[R.nlat - 1] : NAN);
  printf("{\"label\":\"%s\",\"mode\":\"%s\",\"encoding\":\"%s\","
         "\"conns\":%d,\"depth\":%d,\"rate\":%.0f,\"rows\":%d,\"width\":%d,"
         "\"duration_s\":%.1f,\"requests\":%llu,\"errors\":%llu,"
         "\"dropped\":%llu,\"unanswered\":%llu,\"rps\":%.1f,"
         "\"p50_ms\":%s,\"p90_ms\":%s,\"p99_ms\":%s,\"p999_ms\":%s,"
         "\"max_ms\":%s,\"request_bytes\":%zu,\"mb_out\":%.1f,"
         "\"mb_in\":%.1f}\n",
         o.label, o.rate > 0 ? "open" : "closed", enc_name(o.enc), o.conns,
         o.depth, o.rate, o.rows, o.width, secs, (unsigned long long)R.done,
         (unsigned long long)R.errors, (unsigned long long)R.dropped,
         (unsigned long long)R.unanswered, (double)R.done / secs, p50, p90, p99,
         p999, pmax, R.t.body.len, (double)R.bytes_out / 1e6,
         (double)R.bytes_in / 1e6);
  if (R.errors && R.first_error[0])
    fprintf(stderr, "load: first error: %s\n", R.first_error);
  /* Close politely (1000), so that servers do not log dropped peers. */
  for (int i = 0; i < o.conns; i++) {
    conn *c = &R.conns[i];
    unsigned char code[2] = {0x03, 0xe8};
    c->out.head = c->out.len = 0;
    c->tpl_off = -1;
    c->bl_len = 0;
    queue_control(c, 0x8, code, 2);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK);
    ssize_t w = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
    (void)w;
    shutdown(c->fd, SHUT_WR);
  }
  for (int i = 0; i < o.conns; i++) {
    /* Wait briefly for the server's close frame, then drop the socket. */
    struct timeval tv = {0, 200000};
    setsockopt(R.conns[i].fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char sink[65536];
    while (recv(R.conns[i].fd, sink, sizeof sink, 0) > 0) {
    }
    close(R.conns[i].fd);
  }
  return R.errors || R.unanswered ? 3 : 0;
}
