/*
 * apidoc.c - docs/API.md, generated from the method table: the transport,
 * binary frames, tensor encodings and error codes, then every method with
 * its description, a parameter table and a result table drawn from its
 * JSON Schemas, and an example request and reply that can be pasted.
 *
 * The committed docs/API.md must equal this output; a test compares them
 * (regenerate with `cmake --build build --target api_docs`).
 */
#include "rpc/rpc_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void md(mn__jw *w, const char *s) {
  mn__jw_bytes(w, s, strlen(s));
}

static void mdf(mn__jw *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void mdf(mn__jw *w, const char *fmt, ...) {
  char b[2048];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b, sizeof b, fmt, ap);
  va_end(ap);
  if (n > 0)
    mn__jw_bytes(w, b, (size_t)MN__MIN((size_t)n, sizeof b - 1));
}

/* Text for a table cell: '|' escaped, newlines flattened. */
static void cell(mn__jw *w, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '|')
      md(w, "\\|");
    else if (s[i] == '\n')
      md(w, " ");
    else
      mn__jw_bytes(w, s + i, 1);
  }
}

static void value_text(mn__jw *w, const mn__jv *v) {
  char b[96];
  md(w, "`");
  md(w, mn__jv_brief(v, b, sizeof b));
  md(w, "`");
}

/* The type column: what the schema accepts, in words. */
static void type_text(mn__jw *w, const mn__jv *s, int tensor) {
  if (tensor) {
    md(w, "tensor (see [Tensors](#tensors))");
    return;
  }
  const mn__jv *en = mn__jobj_get(s, "enum");
  if (en && en->type == MN__J_ARR) {
    md(w, "one of ");
    mn__jv tmp;
    for (uint32_t i = 0; i < en->n; i++) {
      if (i)
        md(w, ", ");
      value_text(w, mn__jarr_at(en, i, &tmp));
    }
    return;
  }
  const mn__jv *any = mn__jobj_get(s, "anyOf");
  if (any && any->type == MN__J_ARR) {
    for (uint32_t i = 0; i < any->n; i++) {
      if (i)
        md(w, " or ");
      type_text(w, &any->u.items[i], 0);
    }
    return;
  }
  const mn__jv *ty = mn__jobj_get(s, "type");
  if (ty && ty->type == MN__J_STR) {
    mn__jw_bytes(w, ty->u.str, ty->n);
    if (mn__jstr_eq(ty, "array")) {
      const mn__jv *it = mn__jobj_get(s, "items");
      const mn__jv *itt = mn__jobj_get(it, "type");
      if (itt && itt->type == MN__J_STR) {
        md(w, " of ");
        mn__jw_bytes(w, itt->u.str, itt->n);
      }
    }
  } else if (ty && ty->type == MN__J_ARR) {
    for (uint32_t i = 0; i < ty->n; i++) {
      if (i)
        md(w, " or ");
      mn__jw_bytes(w, ty->u.items[i].u.str, ty->u.items[i].n);
    }
  } else {
    md(w, "any");
  }
  const mn__jv *mn = mn__jobj_get(s, "minimum");
  const mn__jv *mx = mn__jobj_get(s, "maximum");
  char a[40], b[40];
  if (mn && mx)
    mdf(w, " (%s to %s)", mn__jv_brief(mn, a, sizeof a),
        mn__jv_brief(mx, b, sizeof b));
  else if (mn)
    mdf(w, " (at least %s)", mn__jv_brief(mn, a, sizeof a));
  const mn__jv *pat = mn__jobj_get(s, "pattern");
  if (pat && pat->type == MN__J_STR) {
    md(w, ", `");
    mn__jw_bytes(w, pat->u.str, pat->n);
    md(w, "`");
  }
}

static int is_required(const mn__jv *parent, const char *key) {
  const mn__jv *req = mn__jobj_get(parent, "required");
  if (!req || req->type != MN__J_ARR)
    return 0;
  for (uint32_t i = 0; i < req->n; i++)
    if (mn__jstr_eq(&req->u.items[i], key))
      return 1;
  return 0;
}

/* One row per property, nested objects flattened as a.b. */
static void prop_rows(mn__jw *w, const mn__jv *s, const char *prefix,
                      const char *tensor, int with_required) {
  const mn__jv *props = mn__jobj_get(s, "properties");
  if (!props || props->type != MN__J_OBJ)
    return;
  for (uint32_t i = 0; i < props->n; i++) {
    const mn__jmember *m = &props->u.mem[i];
    char name[200];
    snprintf(name, sizeof name, "%s%s", prefix, m->key);
    int is_tensor = tensor && !prefix[0] && strcmp(m->key, tensor) == 0;
    md(w, "| `");
    md(w, name);
    md(w, "` | ");
    type_text(w, &m->val, is_tensor);
    md(w, " | ");
    if (with_required)
      md(w, is_required(s, m->key) ? "yes | " : "no | ");
    const mn__jv *d = mn__jobj_get(&m->val, "description");
    if (d && d->type == MN__J_STR && !is_tensor)
      cell(w, d->u.str, d->n);
    else if (is_tensor)
      md(w, "The vectors; see [Tensors](#tensors).");
    const mn__jv *df = mn__jobj_get(&m->val, "default");
    if (df) {
      md(w, " Default ");
      value_text(w, df);
      md(w, ".");
    }
    md(w, " |\n");
    const mn__jv *ty = mn__jobj_get(&m->val, "type");
    if (mn__jstr_eq(ty, "object") && !is_tensor) {
      char sub[210];
      snprintf(sub, sizeof sub, "%s.", name);
      prop_rows(w, &m->val, sub, NULL, with_required);
    }
  }
}

static void pretty_block(mn__jw *w, const mn__jv *v) {
  md(w, "```json\n");
  mn__jw_pretty(w, v, 0);
  md(w, "\n```\n\n");
}

static const char intro[] =
    "# mnemo API\n"
    "\n"
    "<!-- Generated from the method table (src/rpc/methods.c). Do not edit: "
    "run `cmake --build build --target api_docs`. -->\n"
    "\n"
    "mnemo speaks JSON-RPC 2.0 over WebSocket at `ws://127.0.0.1:3001` "
    "(host and port are configurable), with the subprotocol `mcp` or none, "
    "and MCP's Streamable HTTP transport at `http://127.0.0.1:3001/mcp` "
    "(see [MCP over HTTP](#mcp-over-http-mcp)). "
    "Every method below can be called directly and, except the MCP protocol "
    "methods, as an MCP tool of the same name through `tools/call`. "
    "From a shell, the `mnemo` client that the build puts next to mnemod "
    "calls any of them: `mnemo searchMemories collection=notes "
    "query:='[[1, 0, 0]]' k:=3` (`key=text` for a string, `key:=json` for "
    "any JSON value; `mnemo --help`).\n"
    "\n"
    "## Transport\n"
    "\n"
    "- A text frame carries one request, one notification (a request "
    "without `id`: it gets no reply) or a batch (an array of them; the "
    "reply is an array of the replies, in order; a batch of notifications "
    "only gets no reply at all). An empty batch is answered with one "
    "-32600 error.\n"
    "- `\"jsonrpc\": \"2.0\"` is required; `id` is a string, a number or "
    "null (0 is an id like any other); `params` is an object of named "
    "parameters and may be left out (or null) when a method needs none. "
    "Positional params (an array) are refused with -32602.\n"
    "- A reply holds exactly `jsonrpc`, `id` and one of `result` or "
    "`error` (`{\"code\", \"message\", \"data\"?}`).\n"
    "- Messages must be valid UTF-8 and nest at most "
    "`server.max_json_depth` (default 64) arrays and objects deep.\n"
    "- No string in `params` (names, ids, content, chatId, metadata keys "
    "and values) may contain the NUL character `\\u0000`: it is refused "
    "with -32602 naming the parameter.\n"
    "\n"
    "## Binary frames\n"
    "\n"
    "A binary WebSocket frame carries the same JSON plus raw tensor "
    "bytes:\n"
    "\n"
    "| bytes | content |\n"
    "|---|---|\n"
    "| 0..3 | N, the length of the JSON part, unsigned 32-bit little-endian "
    "|\n"
    "| 4..4+N-1 | the JSON request (UTF-8) |\n"
    "| 4+N.. | the payload: raw bytes that tensors refer to |\n"
    "\n"
    "A tensor `{\"dtype\", \"shape\", \"buffer\": {\"offset\", "
    "\"length\"}}` names `length` bytes at `offset` from the start of the "
    "payload; they must lie inside the payload and `length` must equal "
    "rows x columns x the dtype's size. The reply to a binary frame is a "
    "binary frame of the same layout (also when a text request asks for "
    "`options.encoding: \"binary\"`). In replies the JSON part is padded "
    "with spaces so that the payload starts at a multiple of 8 bytes from "
    "the start of the frame, and every buffer starts at a multiple of 8 "
    "within the payload, so typed arrays can view it in place.\n"
    "\n"
    "## MCP over HTTP (/mcp)\n"
    "\n"
    "MCP's Streamable HTTP transport (protocol revisions 2025-03-26 and "
    "later) reaches the same engine, with the same limits, token, Origin "
    "check and error messages as the WebSocket:\n"
    "\n"
    "- `POST /mcp` with `Content-Type: application/json` carries one "
    "JSON-RPC message (a batch only in a session that negotiated "
    "2025-03-26 or 2024-11-05). A request is answered `200` with its reply "
    "as `application/json` (no event stream); a POST of notifications or "
    "responses only is answered `202` with no body.\n"
    "- Sessions: send `initialize` without `Mcp-Session-Id`; its reply "
    "carries the header `Mcp-Session-Id` (32 hex digits, 128 random bits). "
    "Send it, and `MCP-Protocol-Version`, with every later request. "
    "`DELETE /mcp` with the header ends the session (`204`). A session "
    "ends after `server.mcp_session_timeout` seconds without a request "
    "(default 1800); at most `server.mcp_max_sessions` (default 1000) are "
    "open at once.\n"
    "- `GET /mcp` (a server-to-client event stream) is not offered: `405` "
    "with `Allow: POST, DELETE`.\n"
    "- Tensors come as JSON only (nested arrays, the Float32Array object, "
    "base64 `data`); a `buffer` reference or `encoding: \"binary\"` is "
    "refused with -32602 (binary frames are a WebSocket feature).\n"
    "- `server.rate_limit` counts per session.\n"
    "\n"
    "Every refusal has a JSON-RPC error body (`id` null unless the request "
    "had one) whose message says what was wrong:\n"
    "\n"
    "| status | when | code |\n"
    "|---|---|---|\n"
    "| 400 | not JSON / empty body | -32700 |\n"
    "| 400 | not a request object, no `Mcp-Session-Id` on anything but "
    "`initialize`, a batch in a 2025-06-18 session, an unsupported "
    "`MCP-Protocol-Version` | -32600 |\n"
    "| 401 | `server.auth_tokens` set and no valid `Authorization: Bearer` "
    "or `?token=` (with `WWW-Authenticate: Bearer`) | -32600 |\n"
    "| 403 | `Origin` not in `server.allowed_origins`; with the list empty, "
    "an `Origin` that is not loopback (`localhost`, `127.0.0.1`, `[::1]`), "
    "against DNS rebinding | -32600 |\n"
    "| 404 | `Mcp-Session-Id` unknown, expired or ended: initialize again "
    "| -32600 |\n"
    "| 405 | a method other than POST and DELETE | -32600 |\n"
    "| 406 | `Accept` without `application/json` | -32600 |\n"
    "| 411 | no `Content-Length` (chunked bodies are not read) | -32600 |\n"
    "| 413 | body over `server.max_message_size`; `data` has `limit` and "
    "`size` | -32600 |\n"
    "| 415 | `Content-Type` not `application/json` | -32600 |\n"
    "| 503 | shutting down, `server.mcp_max_sessions` reached, or "
    "`server.max_connections` requests in flight | -32004 |\n"
    "\n"
    "Errors of the request itself (unknown method, bad params, timeouts, "
    "the rate limit) come with status 200, as JSON-RPC errors, exactly as "
    "over the WebSocket.\n"
    "\n"
    "## Tensors\n"
    "\n"
    "A tensor parameter (such as `embeddings`) may be any of:\n"
    "\n"
    "| form | example |\n"
    "|---|---|\n"
    "| one vector | `[0.1, -0.5, 0.25]` |\n"
    "| rows | `[[0.1, -0.5], [0.3, 0.2]]` |\n"
    "| a Float32Array as `JSON.stringify` writes it (one vector), or an "
    "array of them | `{\"0\": 0.1, \"1\": -0.5}` |\n"
    "| typed base64 | `{\"dtype\": \"float32\", \"shape\": [2, 2], "
    "\"data\": \"zczMPQAAAL+amZk+zcxMPg==\"}` |\n"
    "| binary frame buffer | `{\"dtype\": \"float16\", \"shape\": [32, 768], "
    "\"buffer\": {\"offset\": 0, \"length\": 49152}}` |\n"
    "\n"
    "Input dtypes: `float32`, `float16`, `bfloat16`, `float64` (converted "
    "to float32). `shape` is `[rows, columns]` or `[length]` (one vector). "
    "Rows must all have the same length; NaN and infinite values (and "
    "numbers beyond float32's range) are refused with -32602 naming the "
    "row and column.\n"
    "\n"
    "Results come back in the request's encoding unless "
    "`options.encoding` (`\"json\"`, `\"base64\"`, `\"binary\"`) says "
    "otherwise; a one-vector request gets one vector back. In JSON, "
    "float results are the shortest decimals that read back as the same "
    "float32; quantized codes are integers: int8 and int4 codes (int4 "
    "unpacked, -8..7), uint8 codes (int8_affine), 0/1 per element for "
    "binary, and float16 / bfloat16 results as their values. In base64 and "
    "binary buffers the packed bytes come with their dtype: `float32`, "
    "`float16`, `bfloat16`, `int8`, `uint8`, `int4` (two codes per byte, "
    "low nibble first) or `binary` (eight per byte, least significant bit "
    "first); every row starts on a byte boundary.\n"
    "\n"
    "## Errors\n"
    "\n"
    "| code | meaning |\n"
    "|---|---|\n"
    "| -32700 | Parse error: not valid JSON or not UTF-8, or a malformed "
    "binary frame. `id` is null. |\n"
    "| -32600 | Invalid request: not a request object, `jsonrpc` missing or "
    "not \"2.0\", `method` not a string, a bad `id`, an empty batch, JSON "
    "nested too deep. |\n"
    "| -32601 | Method not found. |\n"
    "| -32602 | Invalid params; the message names the parameter, e.g. "
    "`params.options.quantization must be one of true, false, \"int8\", "
    "...; got 12`. |\n"
    "| -32603 | Internal error (for example the data directory cannot be "
    "written). |\n"
    "| -32000 | Resource: not enough memory; `data` is `{\"requested\", "
    "\"available\"}` in bytes. |\n"
    "| -32001 | Processing: the computation failed (device or numerical "
    "error). |\n"
    "| -32002 | Timeout: not done within `processing.timeout` ms; `data` is "
    "`{\"timeout_ms\"}`. |\n"
    "| -32003 | Rate limited: `server.rate_limit` requests per minute "
    "exceeded; `data.retry_after_ms` says when to retry. |\n"
    "| -32004 | Overloaded: the server's queue is full; retry later. |\n"
    "\n";

char *mn_rpc_api_markdown(mn_rpc *r) {
  mn__arena a = {0};
  mn__table own;
  const mn__table *t;
  memset(&own, 0, sizeof own);
  if (r) {
    t = &r->table;
  } else {
    if (mn__table_load(&a, &own) != MN_OK) {
      mn__table_free(&own);
      mn__arena_release(&a);
      return NULL;
    }
    t = &own;
  }
  mn__jw w;
  mn__jw_init(&w, 65536);
  md(&w, intro);
  for (int pass = 0; pass < 2; pass++) {
    md(&w, pass ? "## MCP\n\nThe Model Context Protocol methods. The tools "
                  "are the methods above.\n\n"
                : "## Methods\n\n");
    for (size_t i = 0; i < mn__n_methods; i++) {
      const mn__method *m = &mn__methods[i];
      if (((m->flags & MN__M_PROTOCOL) != 0) != pass)
        continue;
      char anchor[64];
      size_t k = 0;
      for (const char *p = m->name; *p && k < sizeof anchor - 1; p++)
        if (*p != '/')
          anchor[k++] = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
      anchor[k] = '\0';
      mdf(&w, "- [`%s`](#%s): %s\n", m->name, anchor, m->title);
    }
    md(&w, "\n");
    for (size_t i = 0; i < mn__n_methods; i++) {
      const mn__method *m = &mn__methods[i];
      if (((m->flags & MN__M_PROTOCOL) != 0) != pass)
        continue;
      mdf(&w, "### %s\n\n", m->name);
      md(&w, m->description);
      md(&w, "\n\n");
      const mn__jv *props = mn__jobj_get(t->in[i], "properties");
      if (props && props->n) {
        md(&w, "Parameters:\n\n| name | type | required | description "
               "|\n|---|---|---|---|\n");
        prop_rows(&w, t->in[i], "", m->tensor_param, 1);
        md(&w, "\n");
      } else {
        md(&w, "No parameters.\n\n");
      }
      const mn__jv *oprops = mn__jobj_get(t->out[i], "properties");
      if (oprops && oprops->n) {
        md(&w, "Result:\n\n| field | type | description |\n|---|---|---|\n");
        prop_rows(&w, t->out[i], "", NULL, 0);
        md(&w, "\n");
      }
      md(&w, "Request:\n\n");
      pretty_block(&w, t->req[i]);
      if (t->rep[i]) {
        md(&w, "Reply:\n\n");
        pretty_block(&w, t->rep[i]);
      } else {
        md(&w, "No reply (a notification).\n\n");
      }
    }
  }
  while (w.len > 1 && w.buf[w.len - 1] == '\n' && w.buf[w.len - 2] == '\n')
    w.len--;
  mn__jw_bytes(&w, "", 1);
  mn__table_free(&own);
  mn__arena_release(&a);
  if (w.oom) {
    mn__jw_free(&w);
    return NULL;
  }
  return w.buf;
}
