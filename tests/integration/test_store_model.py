"""A seeded model-based test of the memory store through the real server.

The promise it checks: a user never loses a memory they stored, and what
the server says is exactly what it holds. A Python model of the store
(collections and their memories: embedding, content, metadata, chatId,
timestamp, significance; and each chat's significance state, as
include/mnemo/store.h defines it) follows a seeded random sequence of
operations that go to a real mnemod at the same time: createCollection
(dims 1..64, three metrics, four dtypes, normalize or not),
addMemories / storeMemory (ids given or assigned, metadata, chats,
significance given or computed, timestamps; duplicate ids and bad rows
that must fail the whole call and change nothing), updateMemory,
deleteMemories (existing and missing ids), getMemories, searchMemories
(k, filters, min_similarity, significance_weight, time_decay with an
explicit now, reinforce; against a float64 brute force over the model),
dropCollection (and the same name created again: old memories must not
come back), listCollections / getCollection, cleanup, and every few dozen
steps a graceful restart (SIGTERM) or a crash (SIGKILL) of mnemod followed
by a comparison of every collection and every memory with the model. Some
crashes cut an addMemories or a deleteMemories in flight: afterwards the
batch must be there entirely or not at all (the model then takes it or
drops it). The server runs with a small host cache, and one collection
spans three chunks, so that searches and reads cross chunks in host memory
and chunks read back from disk.

Every reply is checked against the model as it comes. Values the model
cannot know beforehand (server-assigned ids and timestamps, the exact
float rounding of normalised or quantized embeddings, computed
significances) are checked against their definition when the memory is
first read back (right after each add) and then held exactly: from then
on, and across every restart, the server must give back the same bits.

The seed is 1 unless MNEMO_FUZZ_SEED gives one ("random" draws one);
MNEMO_MODEL_STEPS sets the number of steps. A failure names the seed,
the step, the last operations and the difference, so that
    MNEMO_FUZZ_SEED=<seed> pytest tests/integration/test_store_model.py
replays it.
"""
import asyncio
import base64
import collections
import json
import math
import os
import random
import re
import signal
import time

import numpy as np

from helpers import DEVICE, Server, connect

_seed = os.environ.get("MNEMO_FUZZ_SEED") or "1"
SEED = (int.from_bytes(os.urandom(4), "little") if _seed == "random"
        else int(_seed))
# About 20 s on a loaded 2-core machine; fewer where the suite runs again
# on the CUDA plugin or its slow host emulator.
STEPS = int(os.environ.get("MNEMO_MODEL_STEPS") or
            (1500 if DEVICE == "cpu" else 300))

# The server's config: a small host cache, so that the big collection's
# chunks are split between L2 (host memory) and L3 (read back from LMDB).
CONFIG = {"server": {"rate_limit": 0},
          "processing": {"cache_size": "512KB"}}

CHUNK_ROWS = 4096          # the store's chunk size (rows)
T0 = 1.75e9                # explicit timestamps lie around this
DAY = 86400.0
METRICS = ("cosine", "ip", "l2")
DTYPES = ("float32", "float16", "int8", "binary")
CHATS = ("c0", "c1", "c2", "c3", "")
TAGS = ("food", "places", "tea \"green\"", "caf\u00e9", "\u65e5\u672c",
        "back\\slash", "line\nbreak", "\U0001F600")
CONTENTS = ("", "The user prefers green tea", "line one\nline two\ttab",
            "quote \" and backslash \\ and slash /", "caf\u00e9 \u00fcber",
            "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
            "emoji \U0001F600\U0001F680", "control \u0001\u001f chars")
ID_RE = re.compile(r"^m_[0-9a-f]{20}$")
MAX_COLLECTIONS = 6
BETA = 0.1                 # MN_SIG_REINFORCE_BETA
ALPHA = np.float32(0.1)    # MN_SIG_MOMENTUM_ALPHA
RECENT = 16                # MN_SIG_RECENT


class Mismatch(AssertionError):
    pass


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------
class Mem:
    __slots__ = ("id", "raw", "x", "stored", "content", "_meta", "canon",
                 "chat", "ts", "sig")

    def __init__(self, mid, raw, x, content, metadata, chat, ts, sig):
        self.id = mid
        self.raw = raw          # float32 embedding as the server got it
        self.x = x              # processed (normalized) float32
        self.stored = None      # decoded stored vector (held once read)
        self.content = content
        self.metadata = metadata
        self.chat = chat
        self.ts = ts            # float, or None until read back
        self.sig = sig          # float32 value as float, or None

    @property
    def metadata(self):
        return self._meta

    @metadata.setter
    def metadata(self, md):
        self._meta = md
        self.canon = canon(md)


class Chat:
    """A chat's significance state (store.h): count, mean raw norm,
    momentum, the last 16 processed vectors (rebuilt after a restart from
    the chat's last stored vectors)."""

    def __init__(self, width):
        self.n = 0
        self.mean_norm = 0.0
        self.momentum = np.zeros(width, np.float32)
        self.recent = collections.deque(maxlen=RECENT)
        self.loaded = True


class Coll:
    def __init__(self, name, dim, metric, dtype, normalize, created):
        self.name, self.dim, self.metric = name, dim, metric
        self.dtype, self.normalize, self.created = dtype, normalize, created
        self.mems = {}          # id -> Mem, in insertion order
        self.chats = {}
        self._cache = None

    def changed(self):
        self._cache = None

    def arrays(self):
        """ids, stored vectors (float64), in insertion order."""
        if self._cache is None:
            ids = list(self.mems)
            xs = (np.stack([self.mems[i].stored for i in ids])
                  .astype(np.float64) if ids
                  else np.zeros((0, self.dim)))
            self._cache = (ids, xs)
        return self._cache

    def row_bytes(self):
        return {"float32": 4 * self.dim, "float16": 2 * self.dim,
                "int8": self.dim, "binary": (self.dim + 7) // 8}[self.dtype]


def process(coll, raw):
    """The collection's processing of embeddings (normalize): rows of
    float32 -> float32."""
    x = np.asarray(raw, np.float64)
    if coll.normalize:
        n = np.linalg.norm(x, axis=-1, keepdims=True)
        n[n == 0] = 1
        x = x / n
    return x.astype(np.float32)


def encode_ref(coll, x):
    """The stored (decoded) form of processed rows x, and the tolerance
    of each element (the server may round an element the other way)."""
    x = np.asarray(x, np.float32)
    if coll.dtype == "float32":
        tol = np.full(x.shape, 2e-7 if coll.normalize else 0.0)
        return x, tol
    if coll.dtype == "float16":
        y = x.astype(np.float16).astype(np.float32)
        return y, np.abs(y) * 2.0 ** -10 * 1.01 + 6.1e-8
    if coll.dtype == "binary":
        return np.where(x > 0, 1.0, -1.0).astype(np.float32), \
            np.zeros(x.shape)
    # int8: one symmetric scale per row, x = code * scale
    amax = np.abs(x).max(axis=-1, keepdims=True)
    scale = (amax / np.float32(127)).astype(np.float32)
    safe = np.where(scale == 0, np.float32(1), scale)
    codes = np.clip(np.rint(x / safe), -127, 127)
    y = (codes * scale).astype(np.float32)
    return y, np.broadcast_to(scale * 1.01 + 1e-7, x.shape)


def json_eq(a, b):
    """Equality of JSON scalars as the metadata filter defines it."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


def meta_match(md, flt):
    return all(k in md and json_eq(md[k], v) for k, v in flt.items())


def canon(x):
    """JSON text that tells true from 1 and an integer from a real (2 from
    2.0), key order aside."""
    return json.dumps(x, sort_keys=True)


def f32(v):
    return float(np.float32(v))


# ---------------------------------------------------------------------------
# A connection with synchronous calls
# ---------------------------------------------------------------------------
class Client:
    def __init__(self, url, rnd):
        self.loop = asyncio.new_event_loop()

        async def open_ws():
            return await connect(url)

        self.ws = self.loop.run_until_complete(open_ws())
        self.rid = 0
        self.rnd = rnd

    def call(self, method, params=None):
        self.rid += 1
        rid = self.rid
        req = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            req["params"] = params
        # ASCII escapes or raw UTF-8, as a client may send either
        text = json.dumps(req, ensure_ascii=self.rnd.random() < 0.5)

        async def go():
            await self.ws.send(text)
            while True:
                rep = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
                if rep.get("id") == rid:
                    return rep

        return self.loop.run_until_complete(go())

    def send(self, method, params):
        """A request whose reply is not waited for."""
        self.rid += 1
        req = {"jsonrpc": "2.0", "id": self.rid, "method": method,
               "params": params}
        self.loop.run_until_complete(self.ws.send(json.dumps(req)))

    def close(self):
        if self.loop.is_closed():
            return
        try:
            self.loop.run_until_complete(
                asyncio.wait_for(self.ws.close(), 5))
        except Exception:  # the server is gone (SIGKILL)
            pass
        self.loop.close()


# ---------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------
class Run:
    def __init__(self, server, seed, steps):
        self.server = server
        self.seed = seed
        self.steps = steps
        self.r = random.Random(seed)
        self.np = np.random.default_rng(seed)
        self.colls = {}
        self.ghosts = {}    # name -> ids deleted or dropped: not there
        self.history = collections.deque(maxlen=10)
        self.step = 0
        self.next_id = 0
        self.next_name = 0
        self.client = None
        self.counts = collections.Counter()
        self.dtype_of = None

    # -- reporting ---------------------------------------------------------
    def fail(self, msg):
        ops = "\n".join(f"  step {s}: {d}" for s, d in self.history)
        raise Mismatch(
            f"store model mismatch (MNEMO_FUZZ_SEED={self.seed}, step "
            f"{self.step} of {self.steps}):\n{msg}\nlast operations:\n{ops}")

    def expect(self, cond, msg):
        if not cond:
            self.fail(msg() if callable(msg) else msg)

    def note(self, desc):
        self.history.append((self.step, desc))
        self.counts[desc.split(" ", 1)[0]] += 1

    def call(self, method, params=None):
        return self.client.call(method, params)

    def ok(self, method, params=None):
        rep = self.call(method, params)
        self.expect("result" in rep and set(rep) == {"jsonrpc", "id",
                                                      "result"},
                    lambda: f"{method} failed: {brief(rep)}\nparams: "
                            f"{brief(params)}")
        return rep["result"]

    def refused(self, method, params, what):
        """A call that must fail with -32602 and a message."""
        rep = self.call(method, params)
        err = rep.get("error")
        self.expect(err is not None and set(rep) == {"jsonrpc", "id",
                                                      "error"},
                    lambda: f"{method} ({what}) was not refused: "
                            f"{brief(rep)}")
        self.expect(err["code"] == -32602 and isinstance(err["message"], str)
                    and len(err["message"]) > 10,
                    lambda: f"{method} ({what}): expected -32602 with a "
                            f"message, got {err}")
        return err

    # -- server lifecycle --------------------------------------------------
    def connect(self):
        self.client = Client(self.server.url, self.r)

    def restart(self, crash):
        if crash:   # first: what is in flight is cut, not finished
            self.server.proc.send_signal(signal.SIGKILL)
            self.server.proc.wait()
            self.server.stop()
            self.client.close()
        else:
            self.client.close()
            rc = self.server.stop(signal.SIGTERM)
            self.expect(rc == 0, lambda: f"mnemod exited with {rc} on "
                        f"SIGTERM:\n" + "".join(self.server.log[-20:]))
        self.server.start()
        self.connect()
        # A chat's recent list is rebuilt from its stored rows.
        for c in self.colls.values():
            for ch in c.chats.values():
                ch.loaded = False

    # -- generators --------------------------------------------------------
    def new_id(self):
        self.next_id += 1
        r = self.r.random()
        if r < 0.05:
            return f"\u00fcber-{self.next_id}-\U0001F600"
        if r < 0.08:
            return f"with space \"q\" {self.next_id}"
        if r < 0.10:
            return (f"long{self.next_id}-" + "x" * 128)[:128]
        return f"m{self.next_id}"

    def gen_vec(self, c):
        r = self.r.random()
        live = list(c.mems.values())
        if r < 0.03:
            return np.zeros(c.dim, np.float32)
        if r < 0.13 and live:      # the same vector again: exact ties
            return self.r.choice(live).raw.copy()
        if r < 0.16 and live:
            return (-self.r.choice(live).raw).astype(np.float32)
        if r < 0.20 and live:      # same direction, another length
            return (self.r.choice(live).raw * np.float32(
                self.r.choice([0.5, 2.0, 3.0]))).astype(np.float32)
        scale = self.r.choice([1.0, 1.0, 0.01, 10.0])
        return (self.np.standard_normal(c.dim) * scale).astype(np.float32)

    def gen_meta(self):
        r = self.r
        if r.random() < 0.15:
            return None
        md = {}
        if r.random() < 0.7:
            k = r.randrange(5)
            md["k"] = float(k) if r.random() < 0.2 else k
        if r.random() < 0.5:
            md["tag"] = r.choice(TAGS)
        if r.random() < 0.3:
            md["flag"] = r.random() < 0.5
        if r.random() < 0.15:
            md["none"] = None
        if r.random() < 0.25:
            md["f"] = r.choice([0.1, 1.5, -2.25, 1e-300, 123456.789,
                                -0.0, 2 ** 53 + 1, -2 ** 63, 2 ** 63 - 1])
        if r.random() < 0.1:
            md["nested"] = {"a": [1, "x", None, {"b": True}],
                            "\u00e9": "\u00fc", "e": {}}
        if r.random() < 0.05:
            md["emoji\U0001F600"] = "\U0001F600 \" \\ \n"
        return md

    def gen_content(self):
        r = self.r.random()
        if r < 0.1:
            return None
        if r < 0.15:
            return "long " + "abc\u00e9 " * self.r.randrange(100, 700)
        return self.r.choice(CONTENTS) + f" #{self.r.randrange(1000)}"

    def gen_ts(self):
        r = self.r.random()
        if r < 0.3:
            return None
        if r < 0.32:
            return 0.0
        if r < 0.5:     # whole seconds: since / until hit them exactly
            return float(int(T0 - self.r.uniform(0, 30) * DAY))
        return T0 + self.r.uniform(-30, 1) * DAY

    def enc_vec(self, v):
        """One vector in a random request encoding; returns (value, the
        float32 vector the server decodes from it)."""
        r = self.r.random()
        if r < 0.45:
            return [float(e) for e in v], v
        if r < 0.65:
            return b64(v, "float32"), v
        if r < 0.75:
            h = v.astype(np.float16)
            return b64(h, "float16"), h.astype(np.float32)
        if r < 0.85:
            d = v.astype(np.float64) * (1 + 1e-9)
            return b64(d, "float64"), d.astype(np.float32)
        return {str(i): float(e) for i, e in enumerate(v)}, v

    def enc_rows(self, m):
        r = self.r.random()
        if r < 0.3:
            return [[float(e) for e in row] for row in m], m
        if r < 0.7:
            return b64(m, "float32"), m
        if r < 0.85:
            h = m.astype(np.float16)
            return b64(h, "float16"), h.astype(np.float32)
        d = m.astype(np.float64) * (1 + 1e-9)
        return b64(d, "float64"), d.astype(np.float32)

    # -- significance (store.h) --------------------------------------------
    def chat_state(self, c, chat):
        ch = c.chats.get(chat)
        if ch is None:
            ch = c.chats[chat] = Chat(c.dim)
        if not ch.loaded:
            ch.recent.clear()
            rows = [m for m in c.mems.values() if m.chat == chat]
            for m in rows[-RECENT:]:
                v = m.stored.astype(np.float32)
                ch.recent.append((v, float(np.float32(np.sqrt(
                    np.dot(v.astype(np.float64), v))))))
            ch.loaded = True
        return ch

    def significance(self, c, chat, x, raw_norm, given):
        ch = self.chat_state(c, chat)
        x64 = x.astype(np.float64)
        nx = math.sqrt(float(np.dot(x64, x64)))
        sig = None
        if given is None:
            surprise, magnitude, diversity = 1.0, 0.5, 1.0
            if ch.n > 0:
                m64 = ch.momentum.astype(np.float64)
                nm = math.sqrt(float(np.dot(m64, m64)))
                cs = float(np.dot(x64, m64)) / (nx * nm) if nx > 0 and \
                    nm > 0 else 0.0
                surprise = clip01(1.0 - cs)
                if ch.mean_norm > 0:
                    magnitude = clip01(raw_norm / (2.0 * ch.mean_norm))
            if ch.recent:
                best = -1.0
                for v, vn in ch.recent:
                    cs = (float(np.dot(x64, v.astype(np.float64))) /
                          (nx * vn)) if nx > 0 and vn > 0 else 0.0
                    best = max(best, cs)
                diversity = clip01(1.0 - best)
            sig = clip01(0.4 * surprise + 0.3 * magnitude + 0.3 * diversity)
        if ch.n == 0:
            ch.momentum = x.copy()
        else:
            ch.momentum = ((np.float32(1) - ALPHA) * ch.momentum +
                           ALPHA * x).astype(np.float32)
        ch.mean_norm = (ch.mean_norm * ch.n + raw_norm) / (ch.n + 1)
        ch.n += 1
        ch.recent.append((x.copy(), float(np.float32(nx))))
        return sig

    # -- comparisons -------------------------------------------------------
    def check_memory(self, got, m, inc, where, first=None):
        """A memory object from the server against the model. `first`:
        (expected stored, tolerance, ts window, computed significance)
        when the memory is read back for the first time."""
        keys = {"id", "chatId", "timestamp", "significance"} | set(inc)
        self.expect(set(got) == keys,
                    lambda: f"{where}: memory {m.id!r} has fields "
                            f"{sorted(got)}, expected {sorted(keys)}")
        self.expect(got["id"] == m.id, lambda: f"{where}: id {got['id']!r} "
                    f"!= {m.id!r}")
        self.expect(got["chatId"] == m.chat,
                    lambda: f"{where}: {m.id!r} chatId {got['chatId']!r}, "
                            f"stored {m.chat!r}")
        if "content" in inc:
            self.expect(got["content"] == m.content,
                        lambda: f"{where}: {m.id!r} content "
                                f"{got['content']!r:.200}, stored "
                                f"{m.content!r:.200}")
        if "metadata" in inc:
            self.expect(canon(got["metadata"]) == m.canon,
                        lambda: f"{where}: {m.id!r} metadata "
                                f"{got['metadata']!r}, stored "
                                f"{m.metadata!r}")
        if first is not None:
            want, tol, window, sig = first
            ts = got["timestamp"]
            if m.ts is None:
                self.expect(window[0] - 1 <= ts <= window[1] + 1,
                            lambda: f"{where}: {m.id!r} default timestamp "
                                    f"{ts} is not the time of the add "
                                    f"({window})")
                m.ts = ts
            s = got["significance"]
            if m.sig is None:
                self.counts["~computed significances"] += 1
                self.expect(abs(s - sig) <= 2e-5 and s == f32(s),
                            lambda: f"{where}: {m.id!r} computed "
                                    f"significance {s}, the formula gives "
                                    f"{sig}")
                m.sig = s
            e = np.asarray(got["embedding"], np.float32)
            self.expect(e.shape == want.shape and
                        bool(np.all(np.abs(e.astype(np.float64) - want)
                                    <= tol)),
                        lambda: f"{where}: {m.id!r} stored embedding "
                                f"{e.tolist()} differs from "
                                f"{want.tolist()} (tolerance "
                                f"{np.max(tol):.3g}, dtype {self.dtype_of})")
            m.stored = e
        self.expect(got["timestamp"] == m.ts,
                    lambda: f"{where}: {m.id!r} timestamp "
                            f"{got['timestamp']!r}, stored {m.ts!r}")
        self.expect(got["significance"] == m.sig,
                    lambda: f"{where}: {m.id!r} significance "
                            f"{got['significance']!r}, stored {m.sig!r}")
        if "embedding" in inc and first is None:
            e = np.asarray(got["embedding"], np.float32)
            self.expect(np.array_equal(e, m.stored),
                        lambda: f"{where}: {m.id!r} embedding "
                                f"{e.tolist()}, stored "
                                f"{m.stored.tolist()}")

    def check_info(self, info, c, where):
        want = {"name": c.name, "dim": c.dim, "width": c.dim,
                "metric": c.metric, "dtype": c.dtype,
                "normalize": c.normalize, "pca_model": None,
                "count": len(c.mems), "row_bytes": c.row_bytes()}
        for k, v in want.items():
            self.expect(k in info and info[k] == v and
                        type(info[k]) is type(v),
                        lambda: f"{where}: collection {c.name!r} {k} is "
                                f"{info.get(k)!r}, expected {v!r}")
        if c.created is not None:
            self.expect(info["created"] == c.created,
                        lambda: f"{where}: {c.name!r} created "
                                f"{info['created']} != {c.created}")
        tiers = info["tiers"]
        self.expect(sum(tiers[t]["chunks"] for t in ("l1", "l2", "l3")) ==
                    info["chunks"], lambda: f"{where}: tiers {tiers} do not "
                    f"add up to {info['chunks']} chunks")
        self.expect(info["chunks"] * CHUNK_ROWS >= len(c.mems),
                    lambda: f"{where}: {info['chunks']} chunks for "
                            f"{len(c.mems)} memories")

    def full_compare(self, where):
        """Every collection and every memory against the model."""
        res = self.ok("listCollections")
        names = [i["name"] for i in res["collections"]]
        self.expect(names == sorted(self.colls) and res["count"] ==
                    len(names), lambda: f"{where}: collections {names}, "
                    f"model {sorted(self.colls)}")
        for info in res["collections"]:
            self.check_info(info, self.colls[info["name"]], where)
            for t, v in info["tiers"].items():
                self.counts[f"~chunks in {t} at compares"] += v["chunks"]
        inc = ["content", "metadata", "embedding"]
        for c in self.colls.values():
            ids = list(c.mems)
            for b in range(0, max(len(ids), 1), 2000):
                part = ids[b:b + 2000]
                if not part:
                    break
                got = self.ok("getMemories", {"collection": c.name,
                                              "ids": part, "include": inc})
                self.expect(got["missing"] == [] and got["count"] ==
                            len(part) and len(got["memories"]) == len(part),
                            lambda: f"{where}: {c.name!r} lost memories: "
                                    f"missing {got['missing'][:20]}, count "
                                    f"{got['count']} of {len(part)}")
                for g, i in zip(got["memories"], part):
                    self.check_memory(g, c.mems[i], inc, where)
            ghosts = [g for g in self.ghosts.get(c.name, ())
                      if g not in c.mems]
            if ghosts:
                ghosts = self.r.sample(ghosts, min(len(ghosts), 200))
                got = self.ok("getMemories", {"collection": c.name,
                                              "ids": ghosts})
                self.expect(got["memories"] == [] and got["missing"] ==
                            ghosts, lambda: f"{where}: deleted or dropped "
                            f"memories came back in {c.name!r}: "
                            f"{[m['id'] for m in got['memories']][:20]}")
        self.counts["full-compare"] += 1

    # -- operations ----------------------------------------------------------
    def pick(self):
        return self.colls[self.r.choice(sorted(self.colls))] \
            if self.colls else None

    def op_create(self, name=None, dim=None, dtype=None):
        r = self.r
        if name is None:
            if self.colls and r.random() < 0.1:      # exists already
                c = self.pick()
                self.note(f"createCollection {c.name!r} (exists)")
                self.refused("createCollection", {"name": c.name, "dim":
                                                  c.dim}, "name taken")
                return
            dropped = sorted(set(self.ghosts) - set(self.colls))
            if dropped and r.random() < 0.5:         # a dropped name again
                name = r.choice(dropped)
            else:
                self.next_name += 1
                name = f"coll-{self.next_name}"
        if dim is None:
            dim = r.choice([1, 2, 3, 7, 8, 16, 33, 64, r.randrange(1, 65)])
        metric = r.choice(METRICS)
        dtype = dtype or r.choice(DTYPES)
        normalize = r.random() < 0.4
        params = {"name": name, "dim": dim}
        if metric != "cosine" or r.random() < 0.5:
            params["metric"] = metric
        if dtype != "float32" or r.random() < 0.5:
            params["dtype"] = dtype
        if normalize or r.random() < 0.5:
            params["normalize"] = normalize
        self.note(f"createCollection {params}")
        c = Coll(name, dim, metric, dtype, normalize, None)
        info = self.ok("createCollection", params)
        c.created = info["created"]
        self.check_info(info, c, "createCollection")
        self.colls[name] = c
        ghosts = sorted(self.ghosts.get(name, ()))
        if ghosts:      # the name was dropped: nothing of it comes back
            ghosts = r.sample(ghosts, min(len(ghosts), 50))
            got = self.ok("getMemories", {"collection": name, "ids": ghosts})
            self.expect(got["memories"] == [], lambda: f"collection {name!r} "
                        f"created again holds the dropped memories "
                        f"{[m['id'] for m in got['memories']][:10]}")

    def op_drop(self):
        c = self.pick()
        # The big collection stays for the first three quarters of the run.
        while c is not None and c.name == "big" and (
                self.step < self.steps * 3 // 4 or self.r.random() < 0.5):
            c = self.pick()
        if c is None or self.r.random() < 0.1:
            name = "never-was"
            self.note(f"dropCollection {name!r} (missing)")
            self.refused("dropCollection", {"name": name}, "no such name")
            return
        self.note(f"dropCollection {c.name!r} ({len(c.mems)} memories)")
        res = self.ok("dropCollection", {"name": c.name})
        self.expect(res == {"name": c.name, "dropped": True,
                            "count": len(c.mems)},
                    lambda: f"dropCollection replied {res}, model has "
                            f"{len(c.mems)} memories")
        del self.colls[c.name]
        self.ghosts.setdefault(c.name, set()).update(c.mems)
        self.refused("getCollection", {"name": c.name}, "dropped")

    def make_rows(self, c, n):
        """n memory descriptions: (obj without embedding, raw vec, Mem)."""
        r = self.r
        rows = []
        for _ in range(n):
            raw = self.gen_vec(c)
            obj = {}
            mid = None
            if r.random() < 0.7:
                mid = self.new_id()
                obj["id"] = mid
            content = self.gen_content()
            if content is not None:
                obj["content"] = content
            md = self.gen_meta()
            if md is not None:
                obj["metadata"] = md
            chat = r.choice(CHATS)
            if chat or r.random() < 0.3:
                obj["chatId"] = chat
            ts = self.gen_ts()
            if ts is not None:
                obj["timestamp"] = ts
            sig = None
            if r.random() < 0.5:
                sig = r.choice([0.0, 1.0, 0.5, round(r.random(), 3),
                                r.random()])
                obj["significance"] = sig
            m = Mem(mid, None, None, content or "", md if md is not None
                    else {}, chat, ts, None if sig is None else f32(sig))
            rows.append([obj, raw, m])
        return rows

    def op_add(self, c=None, n=None, force_tensor=False):
        r = self.r
        c = c or self.pick()
        if c is None:
            return self.op_create()
        n = n or r.choice([1, 1, 2, 3, 5, 10, 30, r.randrange(1, 31)])
        rows = self.make_rows(c, n)
        params = {"collection": c.name}
        bare = False
        if force_tensor or r.random() < 0.35:
            mat = np.stack([row[1] for row in rows])
            params["embeddings"], dec = self.enc_rows(mat)
            for i, row in enumerate(rows):
                row[1] = dec[i]
            if not force_tensor and r.random() < 0.1:
                bare = True         # no memories: every field defaults
                for row in rows:
                    row[0] = {}
                    row[2] = Mem(None, None, None, "", {}, "", None, None)
            else:
                params["memories"] = [row[0] for row in rows]
        else:
            mems = []
            for row in rows:
                obj = dict(row[0])
                obj["embedding"], row[1] = self.enc_vec(row[1])
                mems.append(obj)
            params["memories"] = mems
        self.note(f"addMemories {c.name!r} n={n}"
                  f"{' (embeddings only)' if bare else ''}")
        self.apply_add(c, rows, "addMemories", params)

    def apply_add(self, c, rows, method, params):
        t_lo = time.time()
        res = self.ok(method, params)
        t_hi = time.time()
        got_ids = [res["id"]] if method == "storeMemory" else res["ids"]
        if method == "addMemories":
            self.expect(res["count"] == len(rows),
                        lambda: f"addMemories count {res['count']} for "
                                f"{len(rows)} rows")
        self.expect(len(got_ids) == len(rows) and len(set(got_ids)) ==
                    len(rows), lambda: f"{method} ids {got_ids}")
        first = self.model_add(c, rows, got_ids, method)
        self.read_back(c, rows, got_ids, first, (t_lo, t_hi), method)

    def model_add(self, c, rows, got_ids, method):
        """The rows into the model (ids as the server gave them), with the
        significance state; returns what their first read must show."""
        raws = np.stack([row[1] for row in rows]).astype(np.float32)
        xs = process(c, raws)
        want, tol = encode_ref(c, xs)
        sigs = []
        for i, row in enumerate(rows):
            m = row[2]
            if m.id is None:
                self.expect(ID_RE.match(got_ids[i]) is not None and
                            got_ids[i] not in c.mems,
                            lambda: f"{method}: assigned id {got_ids[i]!r}")
                m.id = got_ids[i]
            else:
                self.expect(got_ids[i] == m.id,
                            lambda: f"{method}: id {got_ids[i]!r} for "
                                    f"{m.id!r}")
            m.raw = raws[i]
            m.x = xs[i]
            raw_norm = float(np.linalg.norm(raws[i].astype(np.float64)))
            sigs.append(self.significance(c, m.chat, xs[i], raw_norm, m.sig))
        for row in rows:
            c.mems[row[2].id] = row[2]
        c.changed()
        self.ghosts.get(c.name, set()).difference_update(got_ids)
        return want, tol, sigs

    def read_back(self, c, rows, got_ids, first, window, method):
        """Read new memories back right away: checked against their
        definition, then held exactly."""
        want, tol, sigs = first
        inc = ["content", "metadata", "embedding"]
        got = self.ok("getMemories", {"collection": c.name, "ids": got_ids,
                                      "include": inc})
        self.expect(got["missing"] == [] and len(got["memories"]) ==
                    len(rows), lambda: f"{method}: acknowledged memories "
                    f"are missing: {got['missing']}")
        self.dtype_of = c.dtype
        for i, g in enumerate(got["memories"]):
            self.check_memory(g, rows[i][2], inc, f"{method} read back",
                              first=(want[i], tol[i], window, sigs[i]))
        c.changed()

    def crash_during_delete(self):
        """SIGKILL while a deleteMemories is in flight: after the restart
        the ids are all there, untouched, or all gone."""
        r = self.r
        c = self.pick()
        if not c.mems:
            return self.crash_during_add()
        live = list(c.mems)
        ids = r.sample(live, min(len(live), r.choice([2, 5, 30, 200])))
        self.note(f"deleteMemories {c.name!r} {len(ids)} ids, SIGKILL in "
                  f"flight")
        self.client.send("deleteMemories", {"collection": c.name,
                                            "ids": ids})
        time.sleep(r.choice([0, 0.001, 0.003, 0.01, 0.03]))
        self.restart(True)
        got = self.ok("getMemories", {"collection": c.name, "ids": ids,
                                      "include": []})
        n = len(got["memories"])
        self.expect(n in (0, len(ids)), lambda: f"a delete cut by SIGKILL "
                    f"is partly done: {n} of {len(ids)} memories left")
        if n == 0:
            self.counts["~in-flight deletes kept"] += 1
            for i in ids:
                del c.mems[i]
            self.ghosts.setdefault(c.name, set()).update(ids)
            c.changed()
        else:
            self.counts["~in-flight deletes lost"] += 1

    def crash_during_add(self):
        """SIGKILL while an addMemories is in flight: after the restart the
        batch is there entirely (then the model takes it) or not at all."""
        r = self.r
        c = self.pick()
        rows = self.make_rows(c, r.randrange(1, 31))
        for row in rows:
            if row[2].id is None:
                row[2].id = row[0]["id"] = self.new_id()
        ids = [row[2].id for row in rows]
        mems = []
        for row in rows:
            obj = dict(row[0])
            obj["embedding"], row[1] = self.enc_vec(row[1])
            mems.append(obj)
        saved = {k: (ch.n, ch.mean_norm, ch.momentum.copy())
                 for k, ch in c.chats.items()}
        ghosts = set(self.ghosts.get(c.name, ()))
        self.note(f"addMemories {c.name!r} n={len(rows)}, SIGKILL in flight")
        # The batch as the server applies it, if it does: on the chat
        # state from before the crash.
        first = self.model_add(c, rows, ids, "addMemories")
        t_lo = time.time()
        self.client.send("addMemories", {"collection": c.name,
                                         "memories": mems})
        time.sleep(r.choice([0, 0.001, 0.003, 0.01, 0.03]))
        self.restart(True)
        got = self.ok("getMemories", {"collection": c.name, "ids": ids,
                                      "include": []})
        n = len(got["memories"])
        self.expect(n in (0, len(rows)), lambda: f"a batch cut by SIGKILL "
                    f"is partly stored: {n} of {len(rows)} rows")
        if n:
            self.counts["~in-flight batches kept"] += 1
            self.read_back(c, rows, ids, first, (t_lo, time.time()),
                           "addMemories cut by SIGKILL")
        else:
            self.counts["~in-flight batches lost"] += 1
            for i in ids:
                del c.mems[i]
            c.changed()
            self.ghosts[c.name] = ghosts | set(ids)
            for k in list(c.chats):
                if k in saved:
                    ch = c.chats[k]
                    ch.n, ch.mean_norm, ch.momentum = saved[k]
                else:
                    del c.chats[k]
            for ch in c.chats.values():
                ch.loaded = False

    def op_store(self):
        c = self.pick()
        if c is None:
            return self.op_create()
        row = self.make_rows(c, 1)[0]
        params = dict(row[0])
        params["collection"] = c.name
        params["embedding"], row[1] = self.enc_vec(row[1])
        if self.r.random() < 0.1:
            del params["embedding"]
            self.note(f"storeMemory {c.name!r} (no embedding)")
            self.refused("storeMemory", params, "no embedding")
            self.check_unchanged(c, [row[2].id] if row[2].id else [])
            return
        self.note(f"storeMemory {c.name!r} id={row[2].id!r}")
        self.apply_add(c, [row], "storeMemory", params)

    def check_unchanged(self, c, new_ids):
        info = self.ok("getCollection", {"name": c.name})
        self.check_info(info, c, "after a refused write")
        fresh = [i for i in dict.fromkeys(new_ids) if i and i not in c.mems
                 and len(i.encode()) <= 128 and
                 not any(ord(ch) < 0x20 or ch == "\x7f" for ch in i)]
        if fresh:
            got = self.ok("getMemories", {"collection": c.name,
                                          "ids": fresh})
            self.expect(got["memories"] == [],
                        lambda: f"a refused write stored "
                                f"{[m['id'] for m in got['memories']]}")

    def op_bad_add(self):
        r = self.r
        c = self.pick()
        if c is None:
            return self.op_create()
        n = r.randrange(2, 8)
        rows = self.make_rows(c, n)
        for row in rows:
            if "id" not in row[0]:
                row[0]["id"] = self.new_id()
        mems = []
        for row in rows:
            obj = dict(row[0])
            obj["embedding"], _ = self.enc_vec(row[1])
            mems.append(obj)
        params = {"collection": c.name, "memories": mems}
        j = r.randrange(n)
        kinds = ["dup in batch", "bad width", "significance", "metadata",
                 "timestamp", "long id", "long chatId", "no embedding",
                 "NUL", "rows mismatch", "both forms", "NaN", "content",
                 "control char"]
        if c.mems:
            kinds.append("id exists")
        kind = r.choice(kinds)
        bad = mems[j]
        if kind == "dup in batch":
            bad["id"] = mems[(j + 1) % n]["id"]
        elif kind == "id exists":
            bad["id"] = r.choice(list(c.mems))
        elif kind == "bad width":
            bad["embedding"] = [0.5] * (c.dim + r.choice([1, -1] if c.dim > 1
                                                         else [1]))
        elif kind == "significance":
            bad["significance"] = r.choice([1.5, -0.1, "high"])
        elif kind == "metadata":
            bad["metadata"] = r.choice([[1, 2], "text", 3])
        elif kind == "timestamp":
            bad["timestamp"] = r.choice(["yesterday", [1], {"t": 1}])
        elif kind == "long id":
            bad["id"] = "i" * 129
        elif kind == "control char":
            bad["id"] = r.choice(["tab\there", "bell\x07", "del\x7f"])
        elif kind == "long chatId":
            bad["chatId"] = "c" * 129
        elif kind == "no embedding":
            del bad["embedding"]
        elif kind == "NUL":
            bad[r.choice(["content", "chatId", "id"])] = "nul\u0000here"
        elif kind == "content":
            bad["content"] = r.choice([5, ["a"], {"t": 1}])
        elif kind in ("rows mismatch", "both forms", "NaN"):
            mat = np.stack([row[1] for row in rows])
            for m in mems:
                del m["embedding"]
            if kind == "rows mismatch":
                mat = mat[:-1]
            elif kind == "both forms":
                mems[j]["embedding"] = [0.0] * c.dim
            else:
                mat = mat.copy()
                mat[j, r.randrange(c.dim)] = r.choice([np.nan, np.inf])
            params["embeddings"] = b64(mat, "float32")
        self.note(f"addMemories {c.name!r} n={n} (bad: {kind} at {j})")
        self.refused("addMemories", params, kind)
        self.check_unchanged(c, [m.get("id") for m in mems
                                 if isinstance(m.get("id"), str)])

    def op_update(self):
        r = self.r
        c = self.pick()
        if c is None or not c.mems or r.random() < 0.08:
            if c is None:
                return self.op_create()
            self.note(f"updateMemory {c.name!r} (missing id)")
            self.refused("updateMemory", {"collection": c.name,
                                          "id": "ghost-id", "content": "x"},
                         "missing id")
            return
        m = c.mems[r.choice(list(c.mems))]
        params = {"collection": c.name, "id": m.id}
        what = r.sample(["content", "metadata", "significance"],
                        r.randrange(1, 4))
        if r.random() < 0.05:
            what = []
        if "content" in what:
            params["content"] = self.gen_content() or ""
        if "metadata" in what:
            params["metadata"] = self.gen_meta() or {}
        if "significance" in what:
            params["significance"] = r.choice([0.0, 1.0, r.random()])
        if r.random() < 0.05 and what:
            params["significance"] = 1.25
            self.note(f"updateMemory {c.name!r} {m.id!r} (bad significance)")
            self.refused("updateMemory", params, "significance > 1")
            return
        inc = self.gen_include()
        if inc is not None:
            params["include"] = inc
        self.note(f"updateMemory {c.name!r} {m.id!r} {what}")
        if not what:
            self.refused("updateMemory", params, "nothing to change")
            return
        res = self.ok("updateMemory", params)
        if "content" in what:
            m.content = params["content"]
        if "metadata" in what:
            m.metadata = params["metadata"]
        if "significance" in what:
            m.sig = f32(params["significance"])
        self.check_memory(res, m, inc if inc is not None else
                          ["content", "metadata"], "updateMemory reply")

    def gen_include(self):
        r = self.r.random()
        if r < 0.4:
            return None
        if r < 0.5:
            return []
        return self.r.sample(["content", "metadata", "embedding"],
                             self.r.randrange(1, 4))

    def op_delete(self):
        r = self.r
        c = self.pick()
        if c is None:
            return self.op_create()
        live = list(c.mems)
        if r.random() < 0.03:
            self.note(f"deleteMemories {c.name!r} (no ids)")
            self.refused("deleteMemories", {"collection": c.name, "ids": []},
                         "no ids")
            return
        n = r.choice([1, 1, 2, 5, 20])
        if r.random() < 0.04:   # most of it: runs and chunks mostly dead
            n = int(len(live) * r.uniform(0.3, 0.8))
        ids = r.sample(live, min(len(live), n))
        ghosts = sorted(self.ghosts.get(c.name, ()))
        extra = r.sample(ghosts, min(len(ghosts), r.randrange(0, 3)))
        extra += [f"never-{r.randrange(10 ** 6)}"
                  for _ in range(r.randrange(0, 3))]
        ids = list(dict.fromkeys(ids + extra))
        r.shuffle(ids)
        if not ids:
            ids = ["never-x"]
        if r.random() < 0.05 and len(ids) >= 1:
            twice = ids + [ids[0]]
            self.note(f"deleteMemories {c.name!r} (an id twice)")
            self.refused("deleteMemories", {"collection": c.name,
                                            "ids": twice}, "id twice")
            self.check_unchanged(c, [])
            return
        self.note(f"deleteMemories {c.name!r} {len(ids)} ids")
        if len(ids) > 500:
            res = None
            for b in range(0, len(ids), 2000):
                part = ids[b:b + 2000]
                res = self.ok("deleteMemories", {"collection": c.name,
                                                 "ids": part})
                present = [i for i in part if i in c.mems]
                self.expect(res["deleted"] == len(present) and
                            res["missing"] == [i for i in part
                                               if i not in c.mems],
                            lambda: f"deleteMemories replied {brief(res)}")
                for i in present:
                    del c.mems[i]
                self.ghosts.setdefault(c.name, set()).update(present)
            c.changed()
            return
        res = self.ok("deleteMemories", {"collection": c.name, "ids": ids})
        present = [i for i in ids if i in c.mems]
        missing = [i for i in ids if i not in c.mems]
        self.expect(res == {"deleted": len(present), "missing": missing},
                    lambda: f"deleteMemories replied {res}, expected "
                            f"deleted {len(present)}, missing {missing}")
        for i in present:
            del c.mems[i]
        self.ghosts.setdefault(c.name, set()).update(present)
        c.changed()

    def op_get(self):
        r = self.r
        c = self.pick()
        if c is None:
            return self.op_create()
        live = list(c.mems)
        ids = r.sample(live, min(len(live), r.choice([1, 3, 10, 50])))
        ghosts = sorted(self.ghosts.get(c.name, ()))
        ids += r.sample(ghosts, min(len(ghosts), r.randrange(0, 3)))
        ids += ["nope"] * (r.random() < 0.2)
        if ids and r.random() < 0.1:    # asked twice: returned twice
            ids += r.sample(ids, min(len(ids), 2))
        r.shuffle(ids)
        inc = self.gen_include()
        params = {"collection": c.name, "ids": ids}
        if inc is not None:
            params["include"] = inc
        self.note(f"getMemories {c.name!r} {len(ids)} ids include={inc}")
        res = self.ok("getMemories", params)
        inc = inc if inc is not None else ["content", "metadata"]
        want = [i for i in ids if i in c.mems]
        missing = [i for i in ids if i not in c.mems]
        got = [m["id"] for m in res["memories"]]
        self.expect(got == want and res["missing"] == missing and
                    res["count"] == len(want),
                    lambda: f"getMemories gave {got}, missing "
                            f"{res['missing']}; expected {want}, missing "
                            f"{missing}")
        for g in res["memories"]:
            self.check_memory(g, c.mems[g["id"]], inc, "getMemories")

    def op_info(self):
        if self.r.random() < 0.5 or not self.colls:
            self.note("listCollections")
            res = self.ok("listCollections")
            names = [i["name"] for i in res["collections"]]
            self.expect(names == sorted(self.colls),
                        lambda: f"listCollections: {names}, model "
                                f"{sorted(self.colls)}")
            for info in res["collections"]:
                self.check_info(info, self.colls[info["name"]],
                                "listCollections")
        else:
            c = self.pick()
            self.note(f"getCollection {c.name!r}")
            self.check_info(self.ok("getCollection", {"name": c.name}), c,
                            "getCollection")

    def op_cleanup(self):
        self.note("cleanup")
        res = self.ok("cleanup")
        self.expect(isinstance(res.get("freed_bytes"), int),
                    lambda: f"cleanup replied {res}")
        c = self.pick()
        if c is not None and c.mems:
            ids = self.r.sample(list(c.mems), min(len(c.mems), 100))
            inc = ["content", "metadata", "embedding"]
            got = self.ok("getMemories", {"collection": c.name, "ids": ids,
                                          "include": inc})
            self.expect(got["missing"] == [], lambda: f"after cleanup "
                        f"{got['missing']} are missing")
            for g, i in zip(got["memories"], ids):
                self.check_memory(g, c.mems[i], inc, "after cleanup")

    def op_bad_other(self):
        r = self.r
        c = self.pick()
        if c is None:
            return self.op_create()
        kind = r.choice(["wrong dim", "no collection", "bad k", "filter",
                         "bad create"])
        self.note(f"bad request: {kind}")
        q = [0.5] * c.dim
        if kind == "wrong dim":
            self.refused("searchMemories", {"collection": c.name,
                                            "query": q + [1.0]}, kind)
        elif kind == "no collection":
            method = r.choice(["searchMemories", "addMemories",
                               "getMemories"])
            params = {"collection": "no-such-coll", "query": q,
                      "memories": [{"embedding": q}], "ids": ["a"]}
            params = {k: v for k, v in params.items()
                      if k == "collection" or
                      (k, method) in (("query", "searchMemories"),
                                      ("memories", "addMemories"),
                                      ("ids", "getMemories"))}
            self.refused(method, params, kind)
        elif kind == "bad k":
            self.refused("searchMemories", {"collection": c.name,
                                            "query": q,
                                            "k": r.choice([0, 4097, -1])},
                         kind)
        elif kind == "filter":
            self.refused("searchMemories", {
                "collection": c.name, "query": q,
                "filter": r.choice([{"metadata": {"k": [1]}},
                                    {"since": 10.0, "until": 5.0},
                                    {"metadata": {"k": {"a": 1}}}])}, kind)
        else:
            self.refused("createCollection", r.choice([
                {"name": "bad", "dim": 0},
                {"name": "bad", "dim": 4, "metric": "cos"},
                {"name": "bad", "dim": 4, "dtype": "int4"},
                {"name": "bad name!", "dim": 4}]), kind)
            self.expect("bad" not in [i["name"] for i in self.ok(
                "listCollections")["collections"]], "a refused "
                "createCollection created 'bad'")
        self.check_unchanged(c, [])

    # -- search --------------------------------------------------------------
    def op_search(self, c=None):
        r = self.r
        c = c or self.pick()
        if c is None:
            return self.op_create()
        nq = r.choice([1, 1, 1, 2, 3])
        qs = []
        live = list(c.mems.values())
        for _ in range(nq):
            x = r.random()
            if x < 0.3 and live:
                qs.append(r.choice(live).raw.copy())
            elif x < 0.33:
                qs.append(np.zeros(c.dim, np.float32))
            else:
                qs.append((self.np.standard_normal(c.dim) *
                           r.choice([1.0, 0.1, 5.0])).astype(np.float32))
        qm = np.stack(qs)
        if nq == 1 and r.random() < 0.5:
            qv, dec = self.enc_vec(qm[0])
            qm = dec[None, :]
        else:
            qv, qm = self.enc_rows(qm)
        n = len(c.mems)
        k = r.choice([1, 2, 5, 10, 10, 50, max(1, n), n + 5, 4096])
        k = max(1, min(k, 4096))
        params = {"collection": c.name, "query": qv}
        if k != 10 or r.random() < 0.5:
            params["k"] = k
        flt = {}
        if r.random() < 0.25:
            flt["chatId"] = r.choice(CHATS + ("c-none",))
        if r.random() < 0.2:
            flt["since"] = self.pick_time(c)
        if r.random() < 0.2:
            flt["until"] = self.pick_time(c)
            if "since" in flt and flt["since"] > flt["until"]:
                flt["since"], flt["until"] = flt["until"], flt["since"]
        if r.random() < 0.2:
            flt["metadata"] = self.gen_filter()
        if flt or r.random() < 0.05:
            params["filter"] = flt
        w = 0.0
        if r.random() < 0.35:
            w = r.choice([0.5, 1.0, 2.0, 0.0])
            params["significance_weight"] = w
        rate = 0.0
        now = None
        if r.random() < 0.35:
            rate = r.choice([1e-7, 1e-6, 1e-5, 0.0])
            params["time_decay"] = rate
            # now = 0 is a time like any other (the epoch), not "the clock"
            now = T0 + r.uniform(-1, 2) * DAY if r.random() < 0.93 else 0.0
            params["now"] = now
        elif r.random() < 0.1:
            params["now"] = T0
        reinforce = r.random() < 0.15
        if reinforce or r.random() < 0.05:
            params["reinforce"] = reinforce
        inc = self.gen_include()
        if inc is not None:
            params["include"] = inc
        ref = [self.reference(c, qm[i], flt, w, rate, now) for i in range(nq)]
        if r.random() < 0.2 and ref[0]["sims"].size:
            s = np.sort(ref[0]["sims"])
            params["min_similarity"] = float(s[r.randrange(len(s))]) + \
                r.choice([0.0, 1e-3, -1e-3])
            for x in ref:
                x["min"] = params["min_similarity"]
        self.note(f"searchMemories {c.name!r} nq={nq} k={k} filter={flt} "
                  f"w={w} decay={rate} min="
                  f"{params.get('min_similarity')} reinforce={reinforce}")
        res = self.ok("searchMemories", params)
        self.expect(len(res["results"]) == nq and res["metadata"]["queries"]
                    == nq and res["metadata"]["k"] == k,
                    lambda: f"searchMemories: {len(res['results'])} result "
                            f"lists, metadata {res['metadata']}")
        inc = inc if inc is not None else ["content", "metadata"]
        for qi in range(nq):
            self.check_hits(c, res["results"][qi], ref[qi], k, inc, qi)
        if reinforce:
            seen = set()
            for hits in res["results"]:
                for h in hits:
                    if h["id"] in seen:
                        continue
                    seen.add(h["id"])
                    m = c.mems[h["id"]]
                    m.sig = min(f32(m.sig + BETA * (1.0 - m.sig)), 1.0)
            if seen:
                ids = sorted(seen)
                got = self.ok("getMemories", {"collection": c.name,
                                              "ids": ids, "include": []})
                for g, i in zip(got["memories"], ids):
                    self.check_memory(g, c.mems[i], [],
                                      "significance after reinforce")

    def pick_time(self, c):
        ts = [m.ts for m in c.mems.values()]
        if ts and self.r.random() < 0.6:
            return self.r.choice(ts)
        return T0 + self.r.uniform(-31, 2) * DAY

    def gen_filter(self):
        r = self.r
        choices = [("k", lambda: r.randrange(5)),
                   ("k", lambda: float(r.randrange(5))),
                   ("tag", lambda: r.choice(TAGS)),
                   ("flag", lambda: r.random() < 0.5),
                   ("flag", lambda: 1),
                   ("none", lambda: None),
                   ("f", lambda: r.choice([0.1, 1.5, -2.25, 0])),
                   ("absent", lambda: "x")]
        flt = {}
        for key, val in r.sample(choices, r.randrange(1, 3)):
            flt[key] = val()
        return flt

    def reference(self, c, qraw, flt, w, rate, now):
        """Similarity, score and tolerance of every memory for one query,
        in float64 over the model; eligible: passes the filter."""
        ids, X = c.arrays()
        q = process(c, qraw[None, :])[0].astype(np.float64)
        if c.dtype == "binary":
            q = np.where(q > 0, 1.0, -1.0)
        dots = X @ q
        xn2 = np.einsum("ij,ij->i", X, X)
        qn2 = float(q @ q)
        xn, qn = np.sqrt(xn2), math.sqrt(qn2)
        binary = c.dtype == "binary"
        if c.metric == "ip":
            sims = dots
            tol = 1e-5 * xn * qn + 1e-6
        elif c.metric == "cosine":
            den = xn * qn
            sims = np.divide(dots, den, out=np.zeros_like(dots),
                             where=den > 0)
            tol = np.full(len(ids), 1e-5)
        else:
            d = np.maximum(xn2 + qn2 - 2 * dots, 0)
            sims = 1.0 / (1.0 + d)
            tol = 1e-5 * (xn2 + qn2) + 1e-6
        if binary:
            tol = np.full(len(ids), 1e-6)
        mems = [c.mems[i] for i in ids]
        sig = np.array([m.sig for m in mems], np.float64)
        ts = np.array([m.ts for m in mems], np.float64)
        sigf = sig ** w if w > 0 else np.ones(len(ids))
        decay = np.exp(-rate * np.maximum(0.0, now - ts)) if rate > 0 \
            else np.ones(len(ids))
        ok = np.ones(len(ids), bool)
        if "chatId" in flt:
            ok &= np.array([m.chat == flt["chatId"] for m in mems], bool)
        if "since" in flt:
            ok &= ts >= flt["since"]
        if "until" in flt:
            ok &= ts <= flt["until"]
        if "metadata" in flt:
            ok &= np.array([meta_match(m.metadata, flt["metadata"])
                            for m in mems], bool)
        exact = None
        if binary and w == 0 and rate == 0:
            # Hamming counts: the server's scores can be computed exactly
            cols = np.float32(c.dim)
            h = (c.dim - np.rint(dots)) / 2
            if c.metric == "ip":
                exact = (cols - np.float32(2) * h.astype(np.float32)) \
                    .astype(np.float64)
            elif c.metric == "cosine":
                exact = ((cols - np.float32(2) * h.astype(np.float32)) /
                         cols).astype(np.float32).astype(np.float64)
            else:
                exact = 1.0 / (1.0 + 4.0 * h)
        return {"ids": ids, "sims": sims[ok], "all_sims": sims,
                "tol": tol, "scores": sims * sigf * decay,
                "factor": sigf * decay,
                "decay": decay, "ok": ok, "exact": exact, "min": None,
                "index": {i: j for j, i in enumerate(ids)}}

    def check_hits(self, c, hits, ref, k, inc, qi):
        where = f"searchMemories query {qi}"
        ids, sims, scores, tol = (ref["ids"], ref["all_sims"], ref["scores"],
                                  ref["tol"])
        ok = ref["ok"].copy()
        idx = ref["index"]
        mn = ref["min"]
        if mn is not None:
            sure = ok & (sims >= mn + tol)
            maybe = ok & (np.abs(sims - mn) < tol)
        else:
            sure, maybe = ok, np.zeros_like(ok)
        got = [h["id"] for h in hits]
        self.expect(len(set(got)) == len(got),
                    lambda: f"{where}: an id twice in {got}")
        # score = similarity x a factor in [0, 1] (significance^w x decay)
        stol = tol * ref["factor"] + 1e-12
        keys = {"id", "score", "similarity", "significance", "decay",
                "timestamp", "chatId"} | set(inc)
        for j, h in enumerate(hits):
            self.expect(h["id"] in idx, lambda: f"{where}: hit {h['id']!r} "
                        f"is not in the collection (deleted or never "
                        f"stored)")
            i = idx[h["id"]]
            m = c.mems[h["id"]]
            self.expect(ok[i] and (sure[i] or maybe[i]),
                        lambda: f"{where}: hit {h['id']!r} does not pass "
                                f"the filter / min_similarity (similarity "
                                f"{sims[i]}, min {mn})")
            self.expect(set(h) == keys, lambda: f"{where}: hit fields "
                        f"{sorted(h)}, expected {sorted(keys)}")
            self.expect(abs(h["similarity"] - sims[i]) <= tol[i] and
                        abs(h["score"] - scores[i]) <= stol[i] and
                        abs(h["decay"] - ref["decay"][i]) <=
                        1e-12 + 1e-9 * ref["decay"][i],
                        lambda: f"{where}: hit {h['id']!r} similarity "
                                f"{h['similarity']} score {h['score']} "
                                f"decay {h['decay']}; reference "
                                f"{sims[i]} / {scores[i]} / "
                                f"{ref['decay'][i]} (tolerance {tol[i]:.3g})")
            self.expect(h["significance"] == m.sig and h["timestamp"] ==
                        m.ts and h["chatId"] == m.chat,
                        lambda: f"{where}: hit {h['id']!r} significance "
                                f"{h['significance']} timestamp "
                                f"{h['timestamp']} chat {h['chatId']!r}; "
                                f"stored {m.sig} {m.ts} {m.chat!r}")
            if "content" in inc:
                self.expect(h["content"] == m.content, lambda: f"{where}: "
                            f"hit {h['id']!r} content differs")
            if "metadata" in inc:
                self.expect(canon(h["metadata"]) == m.canon,
                            lambda: f"{where}: hit {h['id']!r} metadata "
                                    f"{h['metadata']} != {m.metadata}")
            if "embedding" in inc:
                self.expect(np.array_equal(np.asarray(h["embedding"],
                                                      np.float32), m.stored),
                            lambda: f"{where}: hit {h['id']!r} embedding "
                                    f"differs from the stored one")
            if j:
                p = hits[j - 1]
                self.counts["~equal-score pairs"] += p["score"] == h["score"]
                self.expect(p["score"] > h["score"] or
                            (p["score"] == h["score"] and
                             idx[p["id"]] < i),
                            lambda: f"{where}: hits {j - 1} and {j} out of "
                                    f"order: {p['id']!r} {p['score']} "
                                    f"before {h['id']!r} {h['score']} "
                                    f"(equal scores: older first)")
        n_sure, n_maybe = int(sure.sum()), int(maybe.sum())
        self.expect(min(k, n_sure) <= len(hits) <= min(k, n_sure + n_maybe),
                    lambda: f"{where}: {len(hits)} hits; k {k}, "
                            f"{n_sure} memories pass the filter "
                            f"(+{n_maybe} at the min_similarity edge)")
        self.counts["~hits"] += len(hits)
        if ref["exact"] is not None and mn is None:
            self.counts["~exact binary rankings"] += 1
            ex = ref["exact"]
            cand = np.nonzero(ok)[0]
            order = sorted(cand, key=lambda i: (-ex[i], i))[:k]
            want = [ids[i] for i in order]
            self.expect(got == want, lambda: f"{where}: binary hits {got}, "
                        f"exactly expected {want} (scores "
                        f"{[float(ex[i]) for i in order]})")
            for h, i in zip(hits, order):
                self.expect(h["score"] == ex[i], lambda: f"{where}: binary "
                            f"score {h['score']} != {ex[i]}")
            return
        gotset = set(got)
        if len(hits) < k:
            missed = [ids[i] for i in np.nonzero(sure)[0]
                      if ids[i] not in gotset]
            self.expect(not missed, lambda: f"{where}: {len(hits)} hits "
                        f"< k {k}, but {missed[:10]} pass the filter")
        if hits:
            # Nothing left out scores clearly higher than the last hit.
            worst = hits[-1]
            above = np.nonzero(sure & (scores - stol > worst["score"]))[0]
            better = [ids[i] for i in above if ids[i] not in gotset]
            self.expect(not better, lambda: f"{where}: {better[:10]} "
                        f"score higher than the last hit {worst['id']!r} "
                        f"({worst['score']}) but were not returned: "
                        f"{[float(scores[idx[b]]) for b in better[:10]]}")

    # -- the run -----------------------------------------------------------
    def big_collection(self):
        """A collection of more than two chunks (some of them not in host
        memory under CONFIG's small cache), filled in large adds."""
        dim = self.r.choice([4, 8, 12])
        dtype = self.r.choice(DTYPES)
        self.op_create(name="big", dim=dim, dtype=dtype)
        c = self.colls["big"]
        while len(c.mems) < 2 * CHUNK_ROWS + 300:
            self.op_add(c, 1500, force_tensor=True)

    def run(self):
        self.connect()
        self.step = 0
        self.big_collection()
        for _ in range(3):
            self.op_create()
        ops = [(self.op_add, 16), (self.op_store, 7), (self.op_bad_add, 4),
               (self.op_update, 8), (self.op_delete, 7), (self.op_get, 9),
               (self.op_search, 26), (self.op_create, 2.5),
               (self.op_drop, 1.2), (self.op_info, 4), (self.op_cleanup, 1),
               (self.op_bad_other, 2)]
        fns = [f for f, _ in ops]
        weights = [w for _, w in ops]
        next_restart = self.r.randrange(40, 120)
        restarts = crashes = 0
        for self.step in range(1, self.steps + 1):
            f = self.r.choices(fns, weights)[0]
            if f == self.op_create and len(self.colls) >= MAX_COLLECTIONS:
                f = self.op_drop
            if f == self.op_drop and len(self.colls) <= 2:
                f = self.op_create
            f()
            if self.step == next_restart:
                crash = self.r.random() < 0.5
                if crash and self.colls and self.r.random() < 0.5:
                    if self.r.random() < 0.6:
                        self.crash_during_add()
                    else:
                        self.crash_during_delete()
                    restarts += 1
                    crashes += 1
                    self.full_compare("after a crash during a write")
                    next_restart += self.r.randrange(40, 120)
                    continue
                self.note("SIGKILL, start" if crash else "SIGTERM, start")
                self.restart(crash)
                crashes += crash
                if "big" in self.colls and self.r.random() < 0.5:
                    self.op_search(self.colls["big"])
                restarts += 1
                self.full_compare("after a crash" if crash
                                  else "after a restart")
                next_restart += self.r.randrange(40, 120)
        self.full_compare("at the end")
        return restarts, crashes


def clip01(v):
    return 0.0 if v < 0 else (1.0 if v > 1 else v)


def b64(x, dtype):
    arr = np.ascontiguousarray(x, dtype={"float32": np.float32,
                                         "float16": np.float16,
                                         "float64": np.float64}[dtype])
    return {"dtype": dtype, "shape": list(arr.shape),
            "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def brief(x, n=600):
    s = json.dumps(x, default=str)
    return s if len(s) <= n else s[:n] + f"... ({len(s)} chars)"


def test_store_matches_its_model(tmp_path):
    server = Server(CONFIG, data_dir=str(tmp_path / "data")).start()
    run = Run(server, SEED, STEPS)
    try:
        restarts, crashes = run.run()
    finally:
        if run.client:
            run.client.close()
        server.cleanup()
    problems = server.sanitizer_reports()
    assert not problems, "sanitizer reports from mnemod:\n" + "".join(
        problems[:40])
    total = sum(len(c.mems) for c in run.colls.values())
    print(f"store model: seed {SEED}, {STEPS} steps, {restarts} restarts "
          f"({crashes} crashes), {len(run.colls)} collections, {total} "
          f"memories; {dict(sorted(run.counts.items()))}")
