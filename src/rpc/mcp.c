/*
 * mcp.c - the Model Context Protocol layer: initialize (version
 * negotiation), notifications/initialized, ping, tools/list and
 * tools/call. Every direct method of the table is a tool of the same
 * name; tools/call runs the method's own handler with `arguments` as its
 * params and wraps the result as MCP content.
 *
 * DESIGN: the session (one per connection) records the negotiated version
 * and the client's name. The server runs one connection's requests on
 * several workers at once, so two initialize calls, or initialize and a
 * reader, may overlap: the version is published as one atomic int (an
 * index into mcp_versions, read without a lock), the flag of
 * notifications/initialized likewise. The client's name and version, and
 * the store of the version, happen together under the session's lock, so
 * when initialize calls race the last one wins whole; each reply carries
 * its own call's version.
 * Nothing here requires initialize first: plain JSON-RPC clients call the
 * methods directly.
 */
#include "rpc/rpc_internal.h"

#include <stdio.h>
#include <string.h>

#ifndef MNEMO_VERSION_STRING
#define MNEMO_VERSION_STRING "0.0.0"
#endif

/* Newest first: an unknown version gets the first. */
#define MCP_V0 "2025-11-25"
#define MCP_V1 "2025-06-18"
#define MCP_V2 "2025-03-26"
#define MCP_V3 "2024-11-05"
static const char *const mcp_versions[] = {MCP_V0, MCP_V1, MCP_V2, MCP_V3};
static const char version_list[] = MCP_V0 ", " MCP_V1 ", " MCP_V2 ", " MCP_V3;

static const char instructions[] =
    "mnemo processes embedding vectors for AI memory. processEmbeddings "
    "normalizes, reduces (PCA) and quantizes a batch of vectors (each row an "
    "array of numbers). fitPCA fits a reusable PCA model under a name; "
    "processEmbeddings uses it with options.pca_model, and the model named "
    "\"default\" whenever reduction is asked for without a model name. "
    "listPCAModels and "
    "deletePCAModel manage models. health and getMetrics report on the "
    "server; cleanup releases cached memory.";

#define N_VERSIONS (sizeof mcp_versions / sizeof mcp_versions[0])

const char *mn_rpc_mcp_versions(void) {
  return version_list;
}

const char *mn_rpc_session_protocol(const mn_rpc_session *s) {
  return mn__session_protocol(s);
}

int mn_rpc_mcp_version_known(const char *v, size_t n) {
  for (size_t i = 0; v && i < N_VERSIONS; i++)
    if (strlen(mcp_versions[i]) == n && !memcmp(mcp_versions[i], v, n))
      return 1;
  return 0;
}

const char *mn__session_protocol(const mn_rpc_session *s) {
  int v = s ? __atomic_load_n(&s->protocol, __ATOMIC_ACQUIRE) : 0;
  return v > 0 && (size_t)v <= N_VERSIONS ? mcp_versions[v - 1] : "";
}

int mn__session_initialized(const mn_rpc_session *s) {
  return s ? __atomic_load_n(&s->initialized, __ATOMIC_ACQUIRE) : 0;
}

void mn__session_client(mn_rpc_session *s, char *name, size_t name_len,
                        char *version, size_t version_len) {
  if (name_len)
    name[0] = '\0';
  if (version_len)
    version[0] = '\0';
  if (!s)
    return;
  pthread_mutex_lock(&s->lock);
  if (name_len)
    snprintf(name, name_len, "%s", s->client_name);
  if (version_len)
    snprintf(version, version_len, "%s", s->client_version);
  pthread_mutex_unlock(&s->lock);
}

int mn__mcp_initialize(mn__call *c, const mn__jv *p, mn__jw *w) {
  const mn__jv *pv = mn__jobj_get(p, "protocolVersion");
  size_t chosen = 0;
  for (size_t i = 0; i < N_VERSIONS; i++)
    if (mn__jstr_eq(pv, mcp_versions[i]))
      chosen = i;
  if (c->s) {
    /* The client's details are prepared here and stored together, so a
     * reader never pairs one client's name with another's version. */
    char name[sizeof c->s->client_name] = "";
    char version[sizeof c->s->client_version] = "";
    const mn__jv *ci = mn__jobj_get(p, "clientInfo");
    const mn__jv *cn = mn__jobj_get(ci, "name");
    const mn__jv *cv = mn__jobj_get(ci, "version");
    if (cn && cn->type == MN__J_STR)
      snprintf(name, sizeof name, "%.*s",
               (int)MN__MIN(cn->n, (uint32_t)sizeof name - 1), cn->u.str);
    if (cv && cv->type == MN__J_STR)
      snprintf(version, sizeof version, "%.*s",
               (int)MN__MIN(cv->n, (uint32_t)sizeof version - 1), cv->u.str);
    pthread_mutex_lock(&c->s->lock);
    memcpy(c->s->client_name, name, sizeof name);
    memcpy(c->s->client_version, version, sizeof version);
    __atomic_store_n(&c->s->protocol, (int)chosen + 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&c->s->lock);
    MN__LOGI("mcp", "%s: initialize from %s %s, protocol %s", c->s->peer,
             name[0] ? name : "(unnamed client)", version,
             mcp_versions[chosen]);
  }
  mn__jw_obj(w);
  mn__jw_kstr(w, "protocolVersion", mcp_versions[chosen]);
  mn__jw_key(w, "capabilities");
  mn__jw_obj(w);
  mn__jw_key(w, "tools");
  mn__jw_obj(w);
  mn__jw_kbool(w, "listChanged", false);
  mn__jw_obj_end(w);
  mn__jw_obj_end(w);
  mn__jw_key(w, "serverInfo");
  mn__jw_obj(w);
  mn__jw_kstr(w, "name", "mnemo");
  mn__jw_kstr(w, "title", "mnemo memory server");
  mn__jw_kstr(w, "version", MNEMO_VERSION_STRING);
  mn__jw_obj_end(w);
  mn__jw_kstr(w, "instructions", instructions);
  mn__jw_obj_end(w);
  return 0;
}

int mn__mcp_initialized(mn__call *c, const mn__jv *p, mn__jw *w) {
  if (c->s)
    __atomic_store_n(&c->s->initialized, 1, __ATOMIC_RELEASE);
  mn__jw_obj(w);
  mn__jw_obj_end(w);
  return 0;
}

int mn__mcp_ping(mn__call *c, const mn__jv *p, mn__jw *w) {
  mn__jw_obj(w);
  mn__jw_obj_end(w);
  return 0;
}

int mn__mcp_tools_list(mn__call *c, const mn__jv *p, mn__jw *w) {
  mn__jw_obj(w);
  mn__jw_key(w, "tools");
  mn__jw_arr(w);
  for (size_t i = 0; i < mn__n_methods; i++) {
    const mn__method *m = &mn__methods[i];
    if (!(m->flags & MN__M_TOOL))
      continue;
    mn__jw_obj(w);
    mn__jw_kstr(w, "name", m->name);
    mn__jw_kstr(w, "title", m->title);
    mn__jw_kstr(w, "description", m->description);
    mn__jw_key(w, "inputSchema");
    mn__jw_value(w, c->r->table.in[i]);
    mn__jw_key(w, "outputSchema");
    mn__jw_value(w, c->r->table.out[i]);
    mn__jw_obj_end(w);
  }
  mn__jw_arr_end(w);
  mn__jw_obj_end(w);
  return 0;
}

int mn__mcp_tools_call(mn__call *c, const mn__jv *p, mn__jw *w) {
  const mn__jv *name = mn__jobj_get(p, "name");
  const mn__jv *args = mn__jobj_get(p, "arguments");
  const mn__method *m = mn__method_find(name->u.str, name->n);
  if (!m || !(m->flags & MN__M_TOOL)) {
    char names[300] = "", b[96];
    size_t k = 0;
    for (size_t i = 0; i < mn__n_methods && k < sizeof names; i++)
      if (mn__methods[i].flags & MN__M_TOOL)
        k += (size_t)snprintf(names + k, sizeof names - k, "%s%s",
                              k ? ", " : "", mn__methods[i].name);
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "unknown tool %s; the tools are: %s",
                    mn__jv_brief(name, b, sizeof b), names);
  }
  if (args && args->type != MN__J_OBJ && args->type != MN__J_NULL) {
    char b[96];
    return mn__fail(c, MN_RPC_INVALID_PARAMS,
                    "params.arguments must be an object of the tool's "
                    "parameters; got %s",
                    mn__jv_brief(args, b, sizeof b));
  }
  mn__call sub = *c;
  sub.root = "arguments";
  sub.err_code = 0;
  sub.err_msg[0] = sub.err_data[0] = '\0';
  mn__jw tw;
  mn__jw_init(&tw, 1024);
  int rc = mn__invoke(&sub, m, args, &tw);
  if (!rc && tw.oom)
    rc = mn__fail(&sub, MN_RPC_RESOURCE_ERROR,
                  "out of memory while writing the result");
  if (rc == MN_RPC_TIMEOUT_ERROR) {
    /* The request as a whole ran out of time: that is the call's error,
     * not the tool's. */
    mn__jw_free(&tw);
    c->err_code = rc;
    memcpy(c->err_msg, sub.err_msg, sizeof c->err_msg);
    memcpy(c->err_data, sub.err_data, sizeof c->err_data);
    return rc;
  }
  mn__jw_obj(w);
  mn__jw_key(w, "content");
  mn__jw_arr(w);
  mn__jw_obj(w);
  mn__jw_kstr(w, "type", "text");
  mn__jw_key(w, "text");
  if (rc) {
    char text[1400];
    snprintf(text, sizeof text, "%s%s%s", sub.err_msg,
             sub.err_data[0] ? " " : "", sub.err_data);
    mn__jw_str(w, text);
  } else {
    mn__jw_strn(w, tw.buf, tw.len);
  }
  mn__jw_obj_end(w);
  mn__jw_arr_end(w);
  if (!rc) {
    mn__jw_key(w, "structuredContent");
    mn__jw_raw(w, tw.buf, tw.len);
  }
  mn__jw_kbool(w, "isError", rc != 0);
  mn__jw_obj_end(w);
  mn__jw_free(&tw);
  return 0;
}
