/*
 * mnemo - a command-line client for mnemod: one JSON-RPC call over the
 * WebSocket, the result printed as JSON.
 *
 *   mnemo health
 *   mnemo createCollection name=notes dim:=3
 *   mnemo searchMemories collection=notes query:='[[1,0,0]]' k:=1
 *   mnemo processEmbeddings @request.json
 *
 * Params are either one JSON object (given inline, as @FILE, or as "-" for
 * standard input) or HTTPie-style pairs: key=text takes the text as a
 * string, key:=json parses the value as JSON.
 *
 * Exit status: 0 the call succeeded, 1 the server answered with a JSON-RPC
 * error (printed on stderr with its code and message), 2 the command line or
 * the params were wrong (nothing was sent), 3 no answer: the server could
 * not be reached, refused the connection, closed it or timed out.
 *
 * DESIGN: one libwebsockets client context and one connection, serviced on
 * the main thread until the reply with our id arrives or the deadline
 * passes. The reply is checked with jansson, but the result is printed from
 * the server's own text (re-indented, numbers untouched), so a float32
 * comes out as the server wrote it ("0.6", not 0.60000002384185791).
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <libwebsockets.h>

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXIT_RPC_ERROR 1
#define EXIT_USAGE 2
#define EXIT_NO_ANSWER 3
#define DEFAULT_URL "ws://127.0.0.1:3001"

/* ------------------------------------------------------------------------
 * Growable byte buffer.
 * ---------------------------------------------------------------------- */
typedef struct buf {
  char *p;
  size_t n, cap;
} buf;

static int buf_add(buf *b, const void *data, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
      return -1;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, data, n);
  b->n += n;
  b->p[b->n] = 0;
  return 0;
}

static void die(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("mnemo: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(code);
}

/* ------------------------------------------------------------------------
 * Params from the command line.
 * ---------------------------------------------------------------------- */
static char *read_stream(FILE *f, const char *name) {
  buf b = {0};
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    if (buf_add(&b, chunk, n))
      die(EXIT_USAGE, "out of memory reading %s", name);
  if (ferror(f))
    die(EXIT_USAGE, "cannot read %s: %s", name, strerror(errno));
  if (!b.p && buf_add(&b, "", 0))
    die(EXIT_USAGE, "out of memory reading %s", name);
  return b.p;
}

static json_t *parse_object(const char *text, const char *where) {
  json_error_t err;
  json_t *v = json_loads(text, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
  if (!v)
    die(EXIT_USAGE,
        "params from %s are not valid JSON: %s (line %d, column %d)", where,
        err.text, err.line, err.column);
  if (!json_is_object(v))
    die(EXIT_USAGE,
        "params from %s must be a JSON object of named params, not %s", where,
        json_is_array(v) ? "an array" : "a bare value");
  return v;
}

/* One object argument, or key=text / key:=json pairs. Returns new. */
static json_t *params_from_args(int argc, char **argv) {
  if (argc == 0)
    return json_object();
  const char *a = argv[0];
  if (argc == 1 &&
      (a[0] == '{' || a[0] == '[' || a[0] == '@' || !strcmp(a, "-"))) {
    if (a[0] == '{' || a[0] == '[')
      return parse_object(a, "the command line");
    char *text;
    if (!strcmp(a, "-")) {
      text = read_stream(stdin, "standard input");
    } else {
      FILE *f = fopen(a + 1, "rb");
      if (!f)
        die(EXIT_USAGE, "cannot open params file %s: %s", a + 1,
            strerror(errno));
      text = read_stream(f, a + 1);
      fclose(f);
    }
    json_t *v = parse_object(text, !strcmp(a, "-") ? "standard input" : a + 1);
    free(text);
    return v;
  }
  json_t *obj = json_object();
  for (int i = 0; i < argc; i++) {
    char *eq = strchr(argv[i], '=');
    if (!eq || eq == argv[i] || (eq == argv[i] + 1 && argv[i][0] == ':'))
      die(EXIT_USAGE,
          "params must be one JSON object, @FILE, - or key=text / key:=json "
          "pairs; \"%s\" is none of these",
          argv[i]);
    int is_json = eq[-1] == ':';
    size_t klen = (size_t)(eq - argv[i]) - (size_t)is_json;
    char *key = strndup(argv[i], klen);
    json_t *v;
    if (is_json) {
      json_error_t err;
      v = json_loads(eq + 1, JSON_DECODE_ANY, &err);
      if (!v)
        die(EXIT_USAGE, "the value of %s is not valid JSON: %s (column %d)",
            key, err.text, err.column);
    } else {
      v = json_string(eq + 1);
      if (!v)
        die(EXIT_USAGE, "the value of %s is not valid UTF-8", key);
    }
    if (json_object_get(obj, key))
      die(EXIT_USAGE, "param %s is given twice", key);
    json_object_set_new(obj, key, v);
    free(key);
  }
  return obj;
}

/* ------------------------------------------------------------------------
 * Printing JSON from the server's own text.
 * ---------------------------------------------------------------------- */
/* End of the JSON string starting at s[i] == '"' (index after the quote). */
static size_t skip_string(const char *s, size_t i, size_t n) {
  for (i++; i < n; i++) {
    if (s[i] == '\\')
      i++;
    else if (s[i] == '"')
      return i + 1;
  }
  return n;
}

/* End of the JSON value starting at s[i] (index after it). */
static size_t skip_value(const char *s, size_t i, size_t n) {
  if (s[i] == '"')
    return skip_string(s, i, n);
  if (s[i] == '{' || s[i] == '[') {
    int depth = 0;
    for (; i < n; i++) {
      if (s[i] == '"') {
        i = skip_string(s, i, n) - 1;
      } else if (s[i] == '{' || s[i] == '[') {
        depth++;
      } else if (s[i] == '}' || s[i] == ']') {
        if (--depth == 0)
          return i + 1;
      }
    }
    return n;
  }
  while (i < n && !strchr(",}] \t\r\n", s[i]))
    i++;
  return i;
}

/* Whether the array at s[i] == '[' holds no arrays or objects. */
static int flat_array(const char *s, size_t i, size_t end) {
  for (i++; i < end; i++) {
    if (s[i] == '"')
      i = skip_string(s, i, end) - 1;
    else if (s[i] == '[' || s[i] == '{')
      return 0;
    else if (s[i] == ']')
      return 1;
  }
  return 1;
}

static void indent(FILE *out, int level) {
  fputc('\n', out);
  for (int i = 0; i < level; i++)
    fputs("  ", out);
}

/* Print s[i, end) (compact JSON from the server) indented by two spaces,
 * arrays of plain values on one line. */
static void print_pretty(FILE *out, const char *s, size_t i, size_t end) {
  int level = 0;
  while (i < end) {
    char c = s[i];
    if (c == '"') {
      size_t e = skip_string(s, i, end);
      fwrite(s + i, 1, e - i, out);
      i = e;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
      i++;
      continue;
    }
    if ((c == '[' && flat_array(s, i, end))) {
      size_t e = skip_value(s, i, end);
      for (size_t j = i; j < e; j++) {
        if (s[j] == '"') {
          size_t se = skip_string(s, j, e);
          fwrite(s + j, 1, se - j, out);
          j = se - 1;
        } else if (s[j] == ',') {
          fputs(", ", out);
        } else if (!strchr(" \t\r\n", s[j])) {
          fputc(s[j], out);
        }
      }
      i = e;
      continue;
    }
    if (c == '{' || c == '[') {
      size_t j = i + 1;
      while (j < end && strchr(" \t\r\n", s[j]))
        j++;
      if (j < end && (s[j] == '}' || s[j] == ']')) { /* empty */
        fputc(c, out);
        fputc(s[j], out);
        i = j + 1;
        continue;
      }
      fputc(c, out);
      indent(out, ++level);
    } else if (c == '}' || c == ']') {
      indent(out, --level);
      fputc(c, out);
    } else if (c == ',') {
      fputc(',', out);
      indent(out, level);
    } else if (c == ':') {
      fputs(": ", out);
    } else {
      fputc(c, out);
    }
    i++;
  }
  fputc('\n', out);
}

/* The span of the top-level member `key` of the object text s. */
static int member_span(const char *s, size_t n, const char *key, size_t *b,
                       size_t *e) {
  size_t i = 0, klen = strlen(key);
  while (i < n && s[i] != '{')
    i++;
  for (i++; i < n;) {
    while (i < n && strchr(" \t\r\n,", s[i]))
      i++;
    if (i >= n || s[i] != '"')
      return 0;
    size_t ke = skip_string(s, i, n);
    int match = ke - i == klen + 2 && !memcmp(s + i + 1, key, klen);
    i = ke;
    while (i < n && strchr(" \t\r\n:", s[i]))
      i++;
    size_t ve = skip_value(s, i, n);
    if (match) {
      *b = i;
      *e = ve;
      return 1;
    }
    i = ve;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * The connection.
 * ---------------------------------------------------------------------- */
typedef struct client {
  const char *url, *token;
  char *request; /* LWS_PRE bytes of room, then the message */
  size_t request_len;
  buf reply; /* the current message */
  int done;  /* 1 reply read, -1 failed */
  int sent;
  int exit_code;
  char failure[512];
} client;

static void fail(client *c, int code, const char *fmt, ...) {
  if (c->done)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->failure, sizeof c->failure, fmt, ap);
  va_end(ap);
  c->exit_code = code;
  c->done = -1;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason,
                    void *user, void *in, size_t len) {
  (void)user;
  client *c = lws_context_user(lws_get_context(wsi));
  switch (reason) {
  case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
    if (c->token && c->token[0]) {
      unsigned char **p = in, *end = *p + len;
      char v[600];
      int n = snprintf(v, sizeof v, "Bearer %s", c->token);
      if (n < 0 || (size_t)n >= sizeof v ||
          lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_AUTHORIZATION,
                                       (unsigned char *)v, n, p, end))
        return -1;
    }
    break;
  case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
    int status = (int)lws_http_client_http_response(wsi);
    if (status == 401)
      fail(c, EXIT_NO_ANSWER,
           "%s refused the connection: 401 Unauthorized (give the server's "
           "token with --token or MNEMO_TOKEN)",
           c->url);
    else if (status > 0 && status != 101)
      fail(c, EXIT_NO_ANSWER, "%s refused the connection: HTTP %d", c->url,
           status);
    else
      fail(c, EXIT_NO_ANSWER, "cannot connect to %s: %s", c->url,
           in && len ? (const char *)in : "connection failed");
    break;
  }
  case LWS_CALLBACK_CLIENT_ESTABLISHED:
    lws_callback_on_writable(wsi);
    break;
  case LWS_CALLBACK_CLIENT_WRITEABLE:
    if (!c->sent) {
      c->sent = 1;
      if (lws_write(wsi, (unsigned char *)c->request + LWS_PRE, c->request_len,
                    LWS_WRITE_TEXT) < (int)c->request_len) {
        fail(c, EXIT_NO_ANSWER, "could not send the request to %s", c->url);
        return -1;
      }
    }
    break;
  case LWS_CALLBACK_CLIENT_RECEIVE:
    if (buf_add(&c->reply, in, len)) {
      fail(c, EXIT_NO_ANSWER, "out of memory reading the reply");
      return -1;
    }
    if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
      json_error_t err;
      json_t *r = lws_frame_is_binary(wsi)
                      ? NULL
                      : json_loadb(c->reply.p, c->reply.n, 0, &err);
      json_t *id = r ? json_object_get(r, "id") : NULL;
      if (r && json_is_integer(id) && json_integer_value(id) == 1) {
        c->done = 1;
        json_decref(r);
        lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, NULL, 0);
        return -1;
      }
      json_decref(r); /* something else (a notification): keep waiting */
      c->reply.n = 0;
    }
    break;
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    if (len >= 2) {
      const unsigned char *b = in;
      fail(c, EXIT_NO_ANSWER,
           "%s closed the connection before answering (close code %d%s%.*s)",
           c->url, (b[0] << 8) | b[1], len > 2 ? ": " : "", (int)(len - 2),
           (const char *)in + 2);
    }
    break;
  case LWS_CALLBACK_CLIENT_CLOSED:
    fail(c, EXIT_NO_ANSWER, "%s closed the connection before answering",
         c->url);
    break;
  default:
    break;
  }
  return 0;
}

static const struct lws_protocols protocols[] = {
    {"mcp", callback, 0, 65536, 0, NULL, 0}, {NULL, NULL, 0, 0, 0, NULL, 0}};

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static void run(client *c, double timeout) {
  const char *prot, *addr, *path;
  int port;
  char *url = strdup(c->url);
  if (!url)
    die(EXIT_USAGE, "out of memory");
  if (lws_parse_uri(url, &prot, &addr, &port, &path) || !addr[0])
    die(EXIT_USAGE, "%s is not a WebSocket URL (ws://host:port)", c->url);
  if (strcmp(prot, "ws"))
    die(EXIT_USAGE,
        "%s: only ws:// URLs are supported (for wss://, put the TLS "
        "terminator's plain side here)",
        c->url);
  if (!strchr(c->url + 5, ':'))
    port = 3001; /* mnemod's port, not HTTP's 80 */
  char fullpath[1024];
  snprintf(fullpath, sizeof fullpath, "/%s", path);

  lws_set_log_level(0, NULL);
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.protocols = protocols;
  info.user = c;
  info.gid = -1;
  info.uid = -1;
  struct lws_context *ctx = lws_create_context(&info);
  if (!ctx)
    die(EXIT_NO_ANSWER, "could not start the WebSocket client");

  struct lws_client_connect_info ci;
  memset(&ci, 0, sizeof ci);
  ci.context = ctx;
  ci.address = addr;
  ci.port = port;
  ci.path = fullpath;
  ci.host = addr;
  ci.protocol = "mcp";
  if (!lws_client_connect_via_info(&ci) && !c->done)
    fail(c, EXIT_NO_ANSWER, "cannot connect to %s", c->url);
  double deadline = now_s() + timeout;
  while (!c->done) {
    if (now_s() > deadline) {
      fail(c, EXIT_NO_ANSWER, "no answer from %s within %g s", c->url, timeout);
      break;
    }
    if (lws_service(ctx, 0) < 0)
      break;
  }
  lws_context_destroy(ctx);
  free(url);
  if (!c->done)
    fail(c, EXIT_NO_ANSWER, "%s closed the connection before answering",
         c->url);
}

/* ------------------------------------------------------------------------
 * main
 * ---------------------------------------------------------------------- */
static void usage(FILE *f) {
  fputs(
      "usage: mnemo [options] METHOD [PARAMS]\n"
      "Calls one JSON-RPC method of a running mnemod and prints its result.\n"
      "\n"
      "  METHOD   health, processEmbeddings, searchMemories, tools/list, ...\n"
      "           (docs/API.md lists them all)\n"
      "  PARAMS   one JSON object: inline, @FILE, or - for standard input;\n"
      "           or key=text / key:=json pairs, e.g.\n"
      "           mnemo createCollection name=notes dim:=3\n"
      "\n"
      "options:\n"
      "  -u, --url URL       server to call (default " DEFAULT_URL
      ", or MNEMO_URL)\n"
      "  -t, --token TOKEN   bearer token for a server with auth tokens\n"
      "                      (or MNEMO_TOKEN)\n"
      "  -T, --timeout SEC   give up after SEC seconds (default 60)\n"
      "  -c, --compact       print the result on one line\n"
      "  -r, --raw           print the whole JSON-RPC reply, errors included\n"
      "  -h, --help          this text\n"
      "\n"
      "exit status: 0 success, 1 the server answered with an error, 2 bad\n"
      "command line or params (nothing sent), 3 no answer from the server\n",
      f);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"url", required_argument, NULL, 'u'},
      {"token", required_argument, NULL, 't'},
      {"timeout", required_argument, NULL, 'T'},
      {"compact", no_argument, NULL, 'c'},
      {"raw", no_argument, NULL, 'r'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  client c;
  memset(&c, 0, sizeof c);
  c.url = getenv("MNEMO_URL") && getenv("MNEMO_URL")[0] ? getenv("MNEMO_URL")
                                                        : DEFAULT_URL;
  c.token = getenv("MNEMO_TOKEN");
  double timeout = 60;
  int compact = 0, raw = 0, o;
  /* Options may come after METHOD too; "-" (params from standard input)
   * is not an option, and "--" ends them. */
  while ((o = getopt_long(argc, argv, "u:t:T:crh", opts, NULL)) != -1) {
    switch (o) {
    case 'u':
      c.url = optarg;
      break;
    case 't':
      c.token = optarg;
      break;
    case 'T': {
      char *e;
      timeout = strtod(optarg, &e);
      if (*e || !(timeout > 0) || timeout > 86400)
        die(EXIT_USAGE, "--timeout takes seconds in (0, 86400], not %s",
            optarg);
      break;
    }
    case 'c':
      compact = 1;
      break;
    case 'r':
      raw = 1;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return EXIT_USAGE;
    }
  }
  if (optind >= argc) {
    usage(stderr);
    return EXIT_USAGE;
  }
  const char *method = argv[optind];
  json_t *params = params_from_args(argc - optind - 1, argv + optind + 1);
  json_t *req = json_pack("{s:s, s:i, s:s, s:o}", "jsonrpc", "2.0", "id", 1,
                          "method", method, "params", params);
  char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
  if (!text)
    die(EXIT_USAGE, "could not build the request (method name not UTF-8?)");
  json_decref(req);
  c.request_len = strlen(text);
  c.request = malloc(LWS_PRE + c.request_len);
  if (!c.request)
    die(EXIT_USAGE, "out of memory");
  memcpy(c.request + LWS_PRE, text, c.request_len);
  free(text);

  run(&c, timeout);
  free(c.request);
  if (c.done < 0) {
    fprintf(stderr, "mnemo: %s\n", c.failure);
    free(c.reply.p);
    return c.exit_code;
  }
  const char *s = c.reply.p;
  size_t n = c.reply.n, b, e;
  int code = 0;
  if (member_span(s, n, "error", &b, &e)) {
    json_t *r = json_loadb(s, n, 0, NULL);
    json_t *err = json_object_get(r, "error");
    code = EXIT_RPC_ERROR;
    if (!raw) {
      fprintf(stderr, "mnemo: error %lld: %s\n",
              (long long)json_integer_value(json_object_get(err, "code")),
              json_string_value(json_object_get(err, "message"))
                  ? json_string_value(json_object_get(err, "message"))
                  : "(no message)");
      json_t *data = json_object_get(err, "data");
      if (data) {
        char *d = json_dumps(data, JSON_COMPACT);
        if (d)
          fprintf(stderr, "mnemo: error data: %s\n", d);
        free(d);
      }
    }
    json_decref(r);
  }
  if (raw) {
    b = 0;
    e = n;
  } else if (code || !member_span(s, n, "result", &b, &e)) {
    free(c.reply.p);
    return code ? code : EXIT_NO_ANSWER;
  }
  if (compact) {
    fwrite(s + b, 1, e - b, stdout);
    fputc('\n', stdout);
  } else {
    print_pretty(stdout, s, b, e);
  }
  free(c.reply.p);
  return code;
}
