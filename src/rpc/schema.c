/*
 * schema.c - checks params against the method table's JSON Schemas, so
 * that the schema a client reads (tools/list, docs/API.md) is the rule the
 * server applies.
 *
 * The subset understood: type (a name or a list), enum, anyOf,
 * properties, required, additionalProperties (false or a schema), items,
 * minimum, maximum, minItems, maxItems, minLength, maxLength. Other
 * keywords (description, pattern, default, ...) are annotations here; a
 * handler checks what they describe. The first violation becomes a -32602
 * error whose message names the parameter's path ("params.options.
 * quantization must be one of ...; got 12").
 */
#include "rpc/rpc_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct sctx {
  mn__call *c;
  char path[256];
  size_t plen;
  const char *skip; /* root property left to the handler (tensors) */
} sctx;

/* Append ".key" or "[i]" (fmt) to the path, cut at its size; returns the
 * length to go back to with path_pop. */
static size_t path_push(sctx *x, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static size_t path_push(sctx *x, const char *fmt, ...) {
  size_t old = x->plen;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(x->path + x->plen, sizeof x->path - x->plen, fmt, ap);
  va_end(ap);
  if (n > 0)
    x->plen = MN__MIN(x->plen + (size_t)n, sizeof x->path - 1);
  return old;
}

static void path_pop(sctx *x, size_t old) {
  x->plen = old;
  x->path[old] = '\0';
}

static int is_integer(const mn__jv *v) {
  return v->type == MN__J_NUM && v->u.num == floor(v->u.num) &&
         fabs(v->u.num) <= 9.007199254740992e15;
}

static int type_matches(const char *t, size_t tn, const mn__jv *v) {
#define IS(s) (tn == sizeof(s) - 1 && memcmp(t, s, tn) == 0)
  if (IS("object"))
    return v->type == MN__J_OBJ;
  if (IS("array"))
    return v->type == MN__J_ARR;
  if (IS("string"))
    return v->type == MN__J_STR;
  if (IS("number"))
    return v->type == MN__J_NUM;
  if (IS("integer"))
    return is_integer(v);
  if (IS("boolean"))
    return v->type == MN__J_BOOL;
  if (IS("null"))
    return v->type == MN__J_NULL;
#undef IS
  return 0;
}

static int json_equal(const mn__jv *a, const mn__jv *b) {
  if (a->type != b->type)
    return 0;
  switch (a->type) {
  case MN__J_NULL:
    return 1;
  case MN__J_BOOL:
    return !a->u.b == !b->u.b;
  case MN__J_NUM:
    return a->u.num == b->u.num;
  case MN__J_STR:
    return a->n == b->n && memcmp(a->u.str, b->u.str, a->n) == 0;
  default:
    return 0; /* enums of containers are not used */
  }
}

/* Append a phrase describing what the schema accepts. */
static void phrase(const mn__jv *s, char *o, size_t n) {
  size_t k = strlen(o);
  const mn__jv *en = mn__jobj_get(s, "enum");
  if (en && en->type == MN__J_ARR) {
    k += (size_t)snprintf(o + k, n > k ? n - k : 0, "one of ");
    mn__jv tmp;
    for (uint32_t i = 0; i < en->n && k < n; i++) {
      const mn__jv *e = mn__jarr_at(en, i, &tmp);
      char b[64];
      k += (size_t)snprintf(o + k, n > k ? n - k : 0, "%s%s", i ? ", " : "",
                            mn__jv_brief(e, b, sizeof b));
    }
    return;
  }
  const mn__jv *ty = mn__jobj_get(s, "type");
  const mn__jv *anyof = mn__jobj_get(s, "anyOf");
  if (!ty && anyof && anyof->type == MN__J_ARR) {
    for (uint32_t i = 0; i < anyof->n && k < n; i++) {
      if (i) {
        k += (size_t)snprintf(o + k, n > k ? n - k : 0, ", or ");
      }
      phrase(&anyof->u.items[i], o, n);
      k = strlen(o);
    }
    return;
  }
  if (!ty) {
    snprintf(o + k, n > k ? n - k : 0, "a JSON value");
    return;
  }
  uint32_t nt = ty->type == MN__J_ARR ? ty->n : 1;
  for (uint32_t i = 0; i < nt && k < n; i++) {
    const mn__jv *t = ty->type == MN__J_ARR ? &ty->u.items[i] : ty;
    if (t->type != MN__J_STR)
      continue;
    const char *name = t->u.str;
    size_t tn = t->n;
    const char *art = (tn == 6 && !memcmp(name, "object", 6)) ||
                              (tn == 5 && !memcmp(name, "array", 5)) ||
                              (tn == 7 && !memcmp(name, "integer", 7))
                          ? "an "
                          : "a ";
    if (tn == 4 && !memcmp(name, "null", 4))
      art = "";
    k += (size_t)snprintf(o + k, n > k ? n - k : 0, "%s%s%.*s", i ? " or " : "",
                          art, (int)tn, name);
  }
  const mn__jv *mn = mn__jobj_get(s, "minimum");
  const mn__jv *mx = mn__jobj_get(s, "maximum");
  char a[40], b[40];
  if (mn && mx && mn->type == MN__J_NUM && mx->type == MN__J_NUM)
    snprintf(o + k, n > k ? n - k : 0, " from %s to %s",
             mn__jv_brief(mn, a, sizeof a), mn__jv_brief(mx, b, sizeof b));
  else if (mn && mn->type == MN__J_NUM)
    snprintf(o + k, n > k ? n - k : 0, " of at least %s",
             mn__jv_brief(mn, a, sizeof a));
  else if (mx && mx->type == MN__J_NUM)
    snprintf(o + k, n > k ? n - k : 0, " of at most %s",
             mn__jv_brief(mx, a, sizeof a));
}

static int fail(sctx *x, int quiet, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(sctx *x, int quiet, const char *fmt, ...) {
  if (quiet)
    return MN_RPC_INVALID_PARAMS;
  char m[900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m, sizeof m, fmt, ap);
  va_end(ap);
  return mn__fail(x->c, MN_RPC_INVALID_PARAMS, "%s %s", x->path, m);
}

/* "<path> must be <what schema s allows>; got <v>". */
static int fail_want(sctx *x, int quiet, const mn__jv *s, const mn__jv *v) {
  if (quiet)
    return MN_RPC_INVALID_PARAMS;
  char want[600] = "", got[96];
  phrase(s, want, sizeof want);
  return fail(x, 0, "must be %s; got %s", want,
              mn__jv_brief(v, got, sizeof got));
}

static int check(sctx *x, const mn__jv *s, const mn__jv *v, int quiet,
                 int root);

static int check_any(sctx *x, const mn__jv *s, const mn__jv *any,
                     const mn__jv *v, int quiet) {
  for (uint32_t i = 0; i < any->n; i++)
    if (check(x, &any->u.items[i], v, 1, 0) == 0)
      return 0;
  if (quiet)
    return MN_RPC_INVALID_PARAMS;
  /* When exactly one branch takes this JSON type, its own message says
   * more than the summary. */
  int n_type = 0, which = -1;
  for (uint32_t i = 0; i < any->n; i++) {
    const mn__jv *ty = mn__jobj_get(&any->u.items[i], "type");
    if (ty && ty->type == MN__J_STR) {
      int ok = type_matches(ty->u.str, ty->n, v) ||
               (v->type == MN__J_NUM && mn__jstr_eq(ty, "integer"));
      if (ok) {
        n_type++;
        which = (int)i;
      }
    }
  }
  if (n_type == 1 && v->type != MN__J_NUM)
    return check(x, &any->u.items[which], v, 0, 0);
  return fail_want(x, 0, s, v);
}

static size_t utf8_chars(const char *s, size_t n) {
  size_t c = 0;
  for (size_t i = 0; i < n; i++)
    c += ((unsigned char)s[i] & 0xc0) != 0x80;
  return c;
}

static int check(sctx *x, const mn__jv *s, const mn__jv *v, int quiet,
                 int root) {
  char got[96];
  const mn__jv *any = mn__jobj_get(s, "anyOf");
  if (any && any->type == MN__J_ARR)
    return check_any(x, s, any, v, quiet);
  const mn__jv *en = mn__jobj_get(s, "enum");
  if (en && en->type == MN__J_ARR) {
    mn__jv tmp;
    for (uint32_t i = 0; i < en->n; i++)
      if (json_equal(mn__jarr_at(en, i, &tmp), v))
        return 0;
    return fail_want(x, quiet, s, v);
  }
  const mn__jv *ty = mn__jobj_get(s, "type");
  if (ty) {
    int ok = 0;
    if (ty->type == MN__J_STR)
      ok = type_matches(ty->u.str, ty->n, v);
    else if (ty->type == MN__J_ARR)
      for (uint32_t i = 0; i < ty->n && !ok; i++)
        ok = ty->u.items[i].type == MN__J_STR &&
             type_matches(ty->u.items[i].u.str, ty->u.items[i].n, v);
    if (!ok) {
      return fail_want(x, quiet, s, v);
    }
  }
  if (v->type == MN__J_NUM) {
    const mn__jv *mn = mn__jobj_get(s, "minimum");
    const mn__jv *mx = mn__jobj_get(s, "maximum");
    if ((mn && mn->type == MN__J_NUM && v->u.num < mn->u.num) ||
        (mx && mx->type == MN__J_NUM && v->u.num > mx->u.num)) {
      return fail_want(x, quiet, s, v);
    }
  }
  if (v->type == MN__J_STR) {
    /* Names, ids and texts become C strings further in (LMDB keys, file
     * names, stored records): a NUL inside would cut them short, so that
     * "a\u0000b" named memory "a". Refused for every string parameter. */
    if (memchr(v->u.str, '\0', v->n))
      return fail(x, quiet,
                  "must not contain the NUL character (\\u0000); got %s",
                  mn__jv_brief(v, got, sizeof got));
    const mn__jv *mn = mn__jobj_get(s, "minLength");
    const mn__jv *mx = mn__jobj_get(s, "maxLength");
    size_t nc = utf8_chars(v->u.str, v->n);
    if (mn && mn->type == MN__J_NUM && (double)nc < mn->u.num)
      return fail(x, quiet, "must be at least %.0f characters long; got %s",
                  mn->u.num, mn__jv_brief(v, got, sizeof got));
    if (mx && mx->type == MN__J_NUM && (double)nc > mx->u.num)
      return fail(x, quiet, "must be at most %.0f characters long; got %zu",
                  mx->u.num, nc);
  }
  if (v->type == MN__J_ARR) {
    const mn__jv *mn = mn__jobj_get(s, "minItems");
    const mn__jv *mx = mn__jobj_get(s, "maxItems");
    if (mn && mn->type == MN__J_NUM && (double)v->n < mn->u.num)
      return fail(x, quiet, "must have at least %.0f item%s; got %u", mn->u.num,
                  mn->u.num == 1 ? "" : "s", v->n);
    if (mx && mx->type == MN__J_NUM && (double)v->n > mx->u.num)
      return fail(x, quiet, "must have at most %.0f items; got %u", mx->u.num,
                  v->n);
    const mn__jv *items = mn__jobj_get(s, "items");
    if (items && items->type == MN__J_OBJ) {
      mn__jv tmp;
      for (uint32_t i = 0; i < v->n; i++) {
        size_t old = path_push(x, "[%u]", i);
        int rc = check(x, items, mn__jarr_at(v, i, &tmp), quiet, 0);
        path_pop(x, old);
        if (rc)
          return rc;
      }
    }
  }
  if (v->type == MN__J_OBJ) {
    const mn__jv *props = mn__jobj_get(s, "properties");
    const mn__jv *req = mn__jobj_get(s, "required");
    const mn__jv *addl = mn__jobj_get(s, "additionalProperties");
    if (req && req->type == MN__J_ARR) {
      for (uint32_t i = 0; i < req->n; i++) {
        const mn__jv *k = &req->u.items[i];
        char key[128];
        if (k->type != MN__J_STR || k->n >= sizeof key)
          continue;
        memcpy(key, k->u.str, k->n);
        key[k->n] = '\0';
        if (!mn__jobj_get(v, key)) {
          size_t old = path_push(x, ".%s", key);
          int rc = fail(x, quiet, "is required but missing");
          path_pop(x, old);
          return rc;
        }
      }
    }
    for (uint32_t i = 0; i < v->n; i++) {
      const mn__jmember *m = &v->u.mem[i];
      if (root && (strcmp(m->key, "_meta") == 0 ||
                   (x->skip && strcmp(m->key, x->skip) == 0)))
        continue;
      const mn__jv *ps = props ? mn__jobj_get(props, m->key) : NULL;
      size_t old = path_push(x, ".%s", m->key);
      int rc = 0;
      if (ps) {
        rc = check(x, ps, &m->val, quiet, 0);
      } else if (addl && addl->type == MN__J_BOOL && !addl->u.b) {
        char names[500] = "";
        size_t k = 0;
        for (uint32_t j = 0; props && j < props->n && k < sizeof names; j++)
          k += (size_t)snprintf(names + k, sizeof names - k, "%s%s",
                                j ? ", " : "", props->u.mem[j].key);
        rc = fail(x, quiet, "is not a known parameter; expected %s%s",
                  props && props->n ? "one of: " : "none", names);
      } else if (addl && addl->type == MN__J_OBJ) {
        rc = check(x, addl, &m->val, quiet, 0);
      }
      path_pop(x, old);
      if (rc)
        return rc;
    }
  }
  return 0;
}

int mn__schema_check(mn__call *c, const mn__jv *schema, const mn__jv *v,
                     const char *path, const char *skip_prop) {
  sctx x;
  x.c = c;
  x.skip = skip_prop;
  snprintf(x.path, sizeof x.path, "%s", path);
  x.plen = strlen(x.path);
  return check(&x, schema, v, 0, 1);
}
