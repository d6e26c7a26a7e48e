"""A seeded, randomized wire-level robustness test of the real server.

The rule it checks: every malformed handshake, frame, JSON text, tensor,
option or oversized message gets the right answer - an HTTP error status,
a WebSocket close with the RFC 6455 code for the violation (1002 protocol,
1007 bad data, 1009 too big), or a JSON-RPC error with a code from the
table in docs/API.md and a message that says what was wrong - and the
server keeps serving everyone else: a watcher connection, open all along,
gets right answers (checked with numpy) between the rounds, /health says
200, and the memories stored before the fuzzing read back identical.

Each round opens a fresh connection. The seed is 1 unless
MNEMO_FUZZ_SEED gives one (or "random"); MNEMO_FUZZ_ROUNDS sets the number of rounds
(split between the kinds of fault). A failure names the seed, the kind,
the round and the bytes sent, so that
    MNEMO_FUZZ_SEED=<seed> pytest tests/integration/test_fuzz_wire.py
replays it.
"""
import base64
import hashlib
import json
import os
import random
import re
import socket
import struct
import time

import numpy as np
import pytest

from helpers import (DEVICE, ROOT, frame, handshake, mask_bytes,
                     normalize_ref, read_frame_bits)

# A fixed seed by default, so that the suite is the same on every run (CI
# must not pass or fail by chance); MNEMO_FUZZ_SEED=random draws one.
_seed = os.environ.get("MNEMO_FUZZ_SEED") or "1"
SEED = (int.from_bytes(os.urandom(4), "little") if _seed == "random"
        else int(_seed))
# The wire does not depend on the backend: fewer rounds where the suite
# runs again on the CUDA plugin (or its slow host emulator).
ROUNDS = int(os.environ.get("MNEMO_FUZZ_ROUNDS") or
             (4000 if DEVICE == "cpu" else 1000))
# Replies must come within this; a loaded 2-core machine, or an ASan
# build, answers a malformed request in milliseconds, so this is a hang.
TIMEOUT = float(os.environ.get("MNEMO_FUZZ_TIMEOUT") or 8.0)
# After this many rounds the server is checked: alive, /health 200, the
# watcher answered right.
BATCH = 25
# The server under test refuses messages above this size (1009).
MAX_MESSAGE = 64 * 1024  # server.max_message_size "64KiB"

# Codes of docs/API.md's error table. -32603 (internal error) is left out
# on purpose: a malformed request is the client's fault and says so.
DOCUMENTED_CODES = {-32700, -32600, -32601, -32602, -32000, -32001,
                    -32002, -32003, -32004}
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Close codes an endpoint may send (RFC 6455 7.4.1; 3000-4999 besides).
SENDABLE_CLOSE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011}

# The collection stored before the fuzzing: its name appears nowhere in
# the corpus, and no mutation of the corpus can spell it.
KEEP = "wirefuzz-keep-Q7v"
KEEP_DIM = 8


def share(fraction):
    return max(4, int(ROUNDS * fraction))


# ---------------------------------------------------------------------------
# The corpus: every request example in docs/API.md.
# ---------------------------------------------------------------------------
def corpus():
    text = open(os.path.join(ROOT, "docs", "API.md")).read()
    reqs = [json.loads(m) for m in re.findall(
        r"Request:\n\n```json\n(.*?)\n```", text, re.S)]
    assert len(reqs) >= 25, "docs/API.md request examples not found"
    assert not any(KEEP in json.dumps(r) for r in reqs)
    return reqs


CORPUS = corpus()


# ---------------------------------------------------------------------------
# Failures that say how to replay them.
# ---------------------------------------------------------------------------
class Round:
    """One round: what was sent, for the failure message."""

    def __init__(self, kind, index, what):
        self.kind, self.index, self.what = kind, index, what
        self.sent = bytearray()
        self.upgraded = False  # sent holds what followed a valid handshake

    def fail(self, why):
        sent = bytes(self.sent)
        shown = sent[:512].hex(" ")
        more = f" ... ({len(sent)} bytes in all)" if len(sent) > 512 else ""
        after = " after a valid handshake" if self.upgraded else ""
        pytest.fail(
            f"{why}\n  seed {SEED}, kind {self.kind}, round {self.index}: "
            f"{self.what}\n  (MNEMO_FUZZ_SEED={SEED} "
            f"MNEMO_FUZZ_ROUNDS={ROUNDS} replays it)\n"
            f"  sent{after} (hex): {shown}{more}\n"
            f"  sent{after} (text): {sent[:300]!r}", pytrace=False)

    def check(self, cond, why):
        if not cond:
            self.fail(why)


class Peer:
    """A raw TCP connection that records what it sends and reads with a
    deadline."""

    def __init__(self, port, rnd):
        self.rnd = rnd
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        # Fragments and pings go out as written, not held back by Nagle
        # for the server's delayed ACK (40 ms a round).
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.held = None

    def send(self, data):
        self.rnd.sent += data
        if self.held is not None:
            self.held += data
            return True
        return self._write(data)

    def _write(self, data):
        try:
            self.s.sendall(data)
            return True
        except OSError:  # the server already closed: fine, it may
            return False

    def hold(self):
        """Keep what is sent until flush(): a fault and what follows it go
        out in one write, so that the server has read it all when it
        closes (a close with unread bytes in the socket is a reset, which
        can destroy the close frame on its way)."""
        self.held = bytearray()

    def flush(self):
        data, self.held = self.held, None
        if data:
            self._write(bytes(data))

    def half_close(self):
        self.flush()
        try:
            self.s.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.s.close()

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.s.settimeout(left)
        try:
            chunk = self.s.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise EOFError
        self.buf += chunk

    def read_http(self, deadline):
        """The response head and body until the server closes (or
        Content-Length is reached): (status or None, head, body)."""
        try:
            while b"\r\n\r\n" not in self.buf:
                self._fill(deadline)
        except EOFError:
            if not self.buf:
                return None, "", b""
            raise AssertionError(f"the connection closed in the middle of "
                                 f"an HTTP response: {self.buf[:200]!r}")
        head, _, body = self.buf.partition(b"\r\n\r\n")
        head = head.decode("latin-1")
        m = re.match(r"HTTP/1\.[01] (\d{3}) ", head)
        if not m:
            raise AssertionError(f"not an HTTP response: {head[:200]!r}")
        status = int(m.group(1))
        if status == 101:
            self.buf = body
            return status, head, b""
        n = re.search(r"(?im)^content-length:\s*(\d+)", head)
        try:
            while not n or len(body) < int(n.group(1)):
                self._fill(deadline)
                body = self.buf.partition(b"\r\n\r\n")[2]
        except EOFError:
            pass
        return status, head, body

    def read_frame(self, deadline):
        """(fin, rsv, opcode, masked, payload), EOFError at the end."""
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                n, at = b1 & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, at = struct.unpack_from("!H", self.buf, 2)[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, at = struct.unpack_from("!Q", self.buf, 2)[0], 10
                elif n >= 126:
                    n = None
                masked = bool(b1 & 0x80)
                if n is not None:
                    at += 4 if masked else 0
                    if len(self.buf) >= at + n:
                        payload = self.buf[at:at + n]
                        if masked:
                            payload = mask_bytes(payload,
                                                 self.buf[at - 4:at])
                        self.buf = self.buf[at + n:]
                        return (bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F,
                                masked, payload)
            self._fill(deadline)


def key_pair(rng):
    key = base64.b64encode(rng.randbytes(16))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    return key.decode(), accept


def upgrade(port, rnd, rng, deadline):
    """A valid handshake on a fresh connection: the Peer, upgraded."""
    p = Peer(port, rnd)
    key, accept = key_pair(rng)
    p.send((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: mcp\r\n\r\n").encode())
    status, head, _ = p.read_http(deadline)
    rnd.check(status == 101, f"a valid handshake got {head[:200]!r}")
    rnd.check(f"Sec-WebSocket-Accept: {accept}" in head,
              f"wrong Sec-WebSocket-Accept in {head!r}")
    rnd.sent = bytearray()
    rnd.upgraded = True
    return p


# ---------------------------------------------------------------------------
# What the server may send on an upgraded connection.
# ---------------------------------------------------------------------------
class Outcome:
    """Frames the server sent, reassembled: messages (text str or binary
    bytes), pongs, the close frame (code, reason) and how it ended."""

    def __init__(self):
        self.messages = []
        self.pongs = []
        self.close = None  # (code or None, reason bytes)
        self.end = None  # "close", "eof", "timeout", "done"

    def __repr__(self):
        msgs = [m[:160] if isinstance(m, str) else m[:80]
                for m in self.messages]
        return (f"messages={msgs} pongs={len(self.pongs)} "
                f"close={self.close} end={self.end}")


def collect(p, rnd, deadline, done=lambda o: False):
    """Read frames until a close frame, the end of the connection, the
    deadline, or done(outcome). Every server frame is checked for RFC 6455
    form on the way."""
    p.flush()
    o = Outcome()
    partial, partial_op = None, None
    while not done(o):
        try:
            fin, rsv, op, masked, payload = p.read_frame(deadline)
        except EOFError:
            o.end = "eof"
            return o
        except TimeoutError:
            o.end = "timeout"
            return o
        rnd.check(not masked, "the server sent a masked frame")
        rnd.check(rsv == 0, f"the server set reserved bits {rsv}")
        rnd.check(op in (0, 1, 2, 8, 9, 10), f"server opcode {op}")
        if op >= 8:
            rnd.check(fin and len(payload) <= 125,
                      f"malformed server control frame op {op}")
        if op == 8:
            rnd.check(len(payload) != 1, "a server close frame with a "
                      "1-byte body")
            code = struct.unpack("!H", payload[:2])[0] if payload else None
            rnd.check(code is None or code in SENDABLE_CLOSE or
                      3000 <= code <= 4999, f"the server sent close code "
                      f"{code}, which RFC 6455 7.4 does not allow: "
                      f"{payload!r}")
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                rnd.fail(f"the server's close reason is not UTF-8: "
                         f"{payload!r}")
            o.close = (code, payload[2:])
            o.end = "close"
            return o
        if op == 10:
            o.pongs.append(payload)
            continue
        if op == 9:
            continue
        if op in (1, 2):
            rnd.check(partial is None, "the server interleaved messages")
            partial, partial_op = bytearray(payload), op
        else:
            rnd.check(partial is not None, "server continuation frame "
                      "without a start")
            partial += payload
        if fin:
            if partial_op == 1:
                try:
                    o.messages.append(bytes(partial).decode("utf-8"))
                except UnicodeDecodeError:
                    rnd.fail("the server sent a text message that is not "
                             "UTF-8")
            else:
                o.messages.append(bytes(partial))
            partial = None
    o.end = "done"
    return o


def envelope_of(rnd, msg):
    """A reply message (text or binary) -> its JSON-RPC value (an object,
    or a list for a batch), checked for form."""
    if isinstance(msg, bytes):
        rnd.check(len(msg) >= 4, f"binary reply of {len(msg)} bytes")
        (n,) = struct.unpack_from("<I", msg, 0)
        rnd.check(4 + n <= len(msg), f"binary reply says N={n} but is "
                  f"{len(msg)} bytes")
        rnd.check((4 + n) % 8 == 0, f"binary reply payload at byte {4 + n},"
                  " not a multiple of 8")
        text = msg[4:4 + n].decode("utf-8")
    else:
        text = msg
    try:
        v = json.loads(text)
    except ValueError:
        rnd.fail(f"a reply that is not JSON: {text[:300]!r}")
    for r in (v if isinstance(v, list) else [v]):
        check_reply(rnd, r)
    return v


def check_reply(rnd, r):
    rnd.check(isinstance(r, dict) and r.get("jsonrpc") == "2.0" and
              "id" in r and (set(r) == {"jsonrpc", "id", "result"} or
                             set(r) == {"jsonrpc", "id", "error"}),
              f"not a JSON-RPC reply: {str(r)[:300]}")
    rnd.check(r["id"] is None or isinstance(r["id"], (str, int, float)),
              f"reply id {r['id']!r}")
    if "error" in r:
        e = r["error"]
        rnd.check(isinstance(e, dict) and set(e) <= {"code", "message",
                                                     "data"},
                  f"malformed error object {e}")
        rnd.check(e.get("code") in DOCUMENTED_CODES,
                  f"error code {e.get('code')} is not in docs/API.md's "
                  f"table (or is -32603, internal): {e}")
        rnd.check(isinstance(e.get("message"), str) and
                  len(e["message"]) > 10,
                  f"an error message that says nothing: {e}")


def replies_of(rnd, o):
    """Every JSON-RPC reply object in the outcome, batches flattened."""
    out = []
    for m in o.messages:
        v = envelope_of(rnd, m)
        out += v if isinstance(v, list) else [v]
    return out


# ---------------------------------------------------------------------------
# The server, the kept memories and the watcher.
# ---------------------------------------------------------------------------
class Watcher:
    """A connection open from before the fuzzing to the end, asking known
    questions between the rounds."""

    def __init__(self, srv):
        self.srv = srv
        self.s, head = handshake(srv.port)
        assert head.startswith("HTTP/1.1 101"), head
        self.n = 0

    def call(self, method, params=None):
        reply = self.request(method, params)
        assert "result" in reply, reply
        return reply["result"]

    def request(self, method, params=None):
        """The reply, result or error."""
        self.n += 1
        req = {"jsonrpc": "2.0", "id": f"w{self.n}", "method": method}
        if params is not None:
            req["params"] = params
        self.s.sendall(frame(1, json.dumps(req).encode()))
        self.s.settimeout(30)
        buf = b""
        while True:
            fin, _, op, _, payload = read_frame_bits(self.s)
            assert op in (0, 1), f"watcher got opcode {op}: {payload[:100]}"
            buf += payload
            if not fin:
                continue
            reply = json.loads(buf)
            buf = b""
            if reply.get("id") == req["id"]:
                return reply

    def check(self, kept):
        res = self.call("processEmbeddings", {
            "embeddings": [[3.0, 4.0]], "options": {"normalize": True}})
        assert np.allclose(res["processed"], [[0.6, 0.8]], atol=1e-7), res
        q = kept.rng.standard_normal(KEEP_DIM)
        res = self.call("searchMemories", {
            "collection": KEEP, "query": q.tolist(), "k": len(kept.ids),
            "significance_weight": 0, "time_decay": 0})
        got = res["results"][0]
        emb = kept.embeddings.astype(np.float64)
        sims = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q))
        assert sorted(g["id"] for g in got) == sorted(kept.ids), got
        for g in got:
            assert abs(g["similarity"] - sims[kept.ids.index(g["id"])]) \
                < 1e-5, (g, sims)
        order = [g["similarity"] for g in got]
        assert order == sorted(order, reverse=True), got


class Kept:
    """The memories stored before the fuzzing, as first read back."""

    def __init__(self, watcher):
        self.rng = np.random.default_rng(SEED)
        n = 6
        self.embeddings = self.rng.standard_normal(
            (n, KEEP_DIM)).astype(np.float32)
        self.ids = [f"keep{i}" for i in range(n)]
        watcher.call("createCollection", {"name": KEEP, "dim": KEEP_DIM})
        watcher.call("addMemories", {"collection": KEEP, "memories": [
            {"id": self.ids[i], "embedding": self.embeddings[i].tolist(),
             "content": f"kept memory {i}: caf\u00e9 \u2603",
             "metadata": {"i": i, "tag": "keep"}, "chatId": "keep-chat",
             "significance": 0.5 + i / 20} for i in range(n)]})
        self.first = self.read(watcher)
        for i, m in enumerate(self.first["memories"]):
            assert m["content"] == f"kept memory {i}: caf\u00e9 \u2603"
            assert np.array_equal(np.asarray(m["embedding"], np.float32),
                                  self.embeddings[i])

    def read(self, watcher):
        return watcher.call("getMemories", {
            "collection": KEEP, "ids": self.ids,
            "include": ["content", "metadata", "embedding"]})


class Fuzz:
    def __init__(self, srv):
        self.srv = srv
        self.port = srv.port
        self.watcher = Watcher(srv)
        self.kept = Kept(self.watcher)
        self.rounds = 0

    def corpus_state(self):
        """What the corpus's requests refer to (the collection "notes" and
        its memories, the PCA model "demo", the chunk "chat-42-scratch"),
        made again before each batch of rounds, so that mutated requests
        reach the store and the chunk code and not only "does not
        exist"."""
        for method in ("createCollection", "addMemories", "fitPCA",
                       "allocateMemory", "processChunk"):
            req = next(r for r in CORPUS if r["method"] == method)
            self.watcher.request(method, req["params"])

    def alive(self, where):
        """The server is up, /health says 200 and the watcher is served."""
        assert self.srv.proc.poll() is None, (
            f"mnemod exited ({self.srv.proc.returncode}) {where}; seed "
            f"{SEED}\n" + "".join(self.srv.log[-40:]))
        status = self.srv.http("/health")[0]
        assert status == 200, f"/health said {status} {where}; seed {SEED}"
        self.watcher.check(self.kept)
        now = self.kept.read(self.watcher)
        assert now == self.kept.first, (
            f"the kept memories changed {where}; seed {SEED}: {now}")
        reports = self.srv.sanitizer_reports()
        assert not reports, f"sanitizer report {where}; seed {SEED}:\n" + \
            "".join(reports[:20])

    def run(self, kind, n, one_round):
        rng = random.Random(f"{SEED}:{kind}")
        for i in range(n):
            rnd = Round(kind, i, "?")
            one_round(self, rng, rnd)
            self.rounds += 1
            if (i + 1) % BATCH == 0 or i == n - 1:
                self.alive(f"after round {i} of {kind}")
                self.corpus_state()


@pytest.fixture(scope="module")
def fz(start_server):
    srv = start_server({"server": {"rate_limit": 0,
                                   "max_message_size": "64KiB"}})
    f = Fuzz(srv)
    f.corpus_state()
    return f


# ---------------------------------------------------------------------------
# Handshakes
# ---------------------------------------------------------------------------
def handshake_round(fz, rng, rnd):
    port = fz.port
    key, accept = key_pair(rng)
    headers = [("Host", f"127.0.0.1:{port}"), ("Upgrade", "websocket"),
               ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
               ("Sec-WebSocket-Version", "13")]
    if rng.random() < 0.3:
        headers.append(("Sec-WebSocket-Protocol",
                        rng.choice(["mcp", "x, mcp", "mnemo"])))
    line = "GET / HTTP/1.1"
    # expect: "101", a set of acceptable statuses, or "closed" (any HTTP
    # error or the connection simply closed)
    kind = rng.choice(["valid", "valid_case", "no_key", "bad_key",
                       "no_version", "bad_version", "no_connection",
                       "bad_connection", "bad_upgrade", "method", "no_host",
                       "subprotocol", "truncated", "garbage", "huge_header",
                       "many_headers", "bad_line"])
    expect, half_close, raw = {400}, False, None
    if kind == "valid":
        expect = "101"
    elif kind == "valid_case":
        headers = [(k.lower() if rng.random() < 0.5 else k.upper(),
                    v.upper() if k in ("Upgrade", "Connection") else v)
                   for k, v in headers]
        headers[2] = (headers[2][0], "keep-alive, Upgrade")
        expect = "101"
    elif kind == "no_key":
        headers = [h for h in headers if h[0] != "Sec-WebSocket-Key"]
    elif kind == "bad_key":
        bad = rng.choice([
            "", "abc", "!!!!!!!!!!!!!!!!!!!!!!==", "x" * 200,
            base64.b64encode(rng.randbytes(rng.choice([1, 8, 15, 17, 32])))
            .decode(),
            key[:-2] + "A=", key.rstrip("=")])  # none is 16 bytes
        headers[3] = ("Sec-WebSocket-Key", bad)
    elif kind == "no_version":
        headers = [h for h in headers if h[0] != "Sec-WebSocket-Version"]
    elif kind == "bad_version":
        headers[4] = ("Sec-WebSocket-Version",
                      rng.choice(["8", "12", "14", "0", "abc", "13.0", "",
                                  "99999999999"]))
        expect = {426, 400}
    elif kind == "no_connection":
        headers = [h for h in headers if h[0] != "Connection"]
    elif kind == "bad_connection":
        headers[2] = ("Connection", rng.choice(["keep-alive", "close",
                                                "upgraded", "x"]))
    elif kind == "bad_upgrade":
        headers[1] = ("Upgrade", rng.choice(["h2c", "websockets", "foo",
                                             "web socket"]))
        expect = "closed"
    elif kind == "method":
        line = rng.choice(["POST", "PUT", "DELETE", "HEAD"]) + \
            " / HTTP/1.1"
        expect = {400, 405}
    elif kind == "no_host":
        headers = [h for h in headers if h[0] != "Host"]
    elif kind == "subprotocol":
        headers = [h for h in headers if h[0] != "Sec-WebSocket-Protocol"]
        headers.append(("Sec-WebSocket-Protocol",
                        rng.choice(["graphql-ws", "chat, superchat"])))
    elif kind == "truncated":
        whole = (line + "\r\n" + "".join(f"{k}: {v}\r\n"
                                        for k, v in headers) + "\r\n")
        raw = whole[:rng.randrange(1, len(whole) - 2)].encode()
        half_close, expect = True, "closed"
    elif kind == "garbage":
        half_close, expect = rng.random() < 0.5, "closed"
        raw = rng.randbytes(rng.randrange(1, 3000))
        if not half_close:  # not the start of a method (then more may come)
            raw = bytes([rng.randrange(128, 256)]) + raw
        if rng.random() < 0.5:
            raw += b"\r\n\r\n"
    elif kind == "huge_header":
        headers.append(("X-Huge", "a" * rng.randrange(9000, 40000)))
        expect = "closed"
    elif kind == "many_headers":
        headers += [(f"X-H{i}", "v" * 40) for i in range(400)]
        expect = "closed"
    elif kind == "bad_line":
        # (lws 4.1 accepts any protocol name and version on the request
        # line, "GET / FTP/1.1", "GET /" and "HTTP/1.0" included, and extra
        # spaces, and does not tell the callback what it got.)
        line = rng.choice(["GET", "GET  HTTP/1.1", "\x01GET / HTTP/1.1"])
        expect = "closed"
    if raw is None:
        raw = (line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
               + "\r\n").encode()
    rnd.what = f"handshake {kind}"
    p = Peer(port, rnd)
    deadline = time.monotonic() + TIMEOUT
    try:
        p.send(raw)
        if half_close:
            p.half_close()
        try:
            status, head, body = p.read_http(deadline)
        except TimeoutError:
            rnd.fail("no answer to the handshake: the server hangs")
        except AssertionError as e:
            rnd.fail(str(e))
        if expect == "101":
            rnd.check(status == 101, f"a valid handshake got {head!r}")
            rnd.check(accept in head, f"wrong accept key in {head!r}")
            return
        rnd.check(status != 101, f"a bad handshake was accepted: {head!r}")
        if expect == "closed":
            rnd.check(status is None or 400 <= status < 600,
                      f"got {head[:200]!r}")
        else:
            rnd.check(status in expect,
                      f"expected HTTP {sorted(expect)}, got "
                      f"{head[:200]!r} {body[:200]!r}")
            rnd.check(len(body.strip()) > 10,
                      f"an HTTP {status} that does not say why: {body!r}")
            if status == 426:
                rnd.check(re.search(r"(?im)^sec-websocket-version:\s*13",
                                    head), f"426 without the version: "
                          f"{head!r}")
        # After an error, and the end of the client's side, the server
        # closes.
        if status is not None:
            p.half_close()
            try:
                while True:
                    p._fill(deadline)
            except EOFError:
                pass
            except TimeoutError:
                rnd.fail(f"after HTTP {status} and the client's FIN the "
                         f"connection stays open")
    finally:
        p.close()


def test_handshake_faults(fz):
    fz.run("handshake", share(0.2), handshake_round)


# ---------------------------------------------------------------------------
# Frames after a valid handshake
# ---------------------------------------------------------------------------
PING = json.dumps({"jsonrpc": "2.0", "id": "probe", "method": "ping"})


def expect_ping_reply(rnd, o, what):
    reps = [r for r in replies_of(rnd, o) if r.get("id") == "probe"]
    rnd.check(reps and reps[0].get("result") == {},
              f"{what}: no right reply to the probe ping: {o}")


def invalid_utf8(rng):
    return rng.choice([b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf",
                       b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
                       b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xfe",
                       b"\xff", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98",
                       b"\xc3\x28", b"\xe2\x28\xa1"])


def send_message(p, rng, op, data):
    """Send one message: in one frame, or (a third of the time) in 2 to 6
    fragments cut anywhere (a UTF-8 sequence or the 4-byte length of a
    binary frame included), with pings between some of them."""
    key = rng.randbytes(4)
    if len(data) < 2 or rng.random() < 0.67:
        p.send(frame(op, data, key=key))
        return
    cuts = sorted(rng.sample(range(1, len(data)),
                             min(len(data) - 1, rng.randrange(1, 6))))
    parts = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    for i, part in enumerate(parts):
        p.send(frame(op if i == 0 else 0, part, fin=i == len(parts) - 1,
                     key=key))
        if rng.random() < 0.3:
            p.send(frame(9, rng.randbytes(rng.randrange(0, 20)), key=key))


def frame_round(fz, rng, rnd):
    deadline = time.monotonic() + TIMEOUT
    kind = rng.choice([
        "rsv", "opcode", "big_control", "fragmented_control", "unmasked",
        "len_top_bit", "short_then_eof", "lone_continuation",
        "interleaved", "utf8", "utf8_fragmented", "close_code",
        "close_one_byte", "close_reason_utf8", "close_empty",
        "ping_storm", "fragmented_ok", "nonminimal_length"])
    rnd.what = f"frame {kind}"
    p = upgrade(fz.port, rnd, rng, deadline)
    p.hold()
    key = rng.randbytes(4)
    msg = PING.encode()

    def close_with(codes, o, what=kind):
        rnd.check(o.close is not None and o.close[0] in codes,
                  f"{what}: expected a close with {sorted(codes)}, got {o}")

    try:
        if kind == "rsv":
            p.send(frame(rng.choice([1, 2]), msg, rsv=rng.randrange(1, 8),
                         key=key))
            close_with({1002}, collect(p, rnd, deadline))
        elif kind == "opcode":
            op = rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
            p.send(frame(op, msg, key=key))
            close_with({1002}, collect(p, rnd, deadline))
        elif kind == "big_control":
            op = rng.choice([8, 9, 10])
            body = rng.randbytes(rng.randrange(126, 400))
            if op == 8:
                body = struct.pack("!H", 1000) + b"x" * len(body)
            p.send(frame(op, body, key=key))
            o = collect(p, rnd, deadline)
            # RFC 6455 5.5: control frames carry at most 125 bytes; the
            # connection must fail. lws drops it without a close frame,
            # which 7.1.7 allows (a close frame SHOULD be sent).
            rnd.check(o.end == "eof" or (o.close and o.close[0] == 1002),
                      f"a {len(body)}-byte control frame: {o}")
            rnd.check(not o.messages and not o.pongs, f"answered: {o}")
        elif kind == "fragmented_control":
            op = rng.choice([8, 9, 10])
            body = struct.pack("!H", 1000) if op == 8 else b"hi"
            p.send(frame(op, body, fin=False, key=key))
            close_with({1002}, collect(p, rnd, deadline))
        elif kind == "unmasked":
            p.send(frame(1, msg, mask=False))
            o = collect(p, rnd, deadline,
                        done=lambda o: o.messages or o.close)
            # RFC 6455 5.1 wants a close (1002); libwebsockets 4.1 reads
            # the frame. Either way, a well-formed answer.
            if o.close:
                close_with({1002}, o)
            else:
                expect_ping_reply(rnd, o, kind)
        elif kind == "len_top_bit":
            p.send(struct.pack("!BBQ", 0x81, 0xFF,
                               (1 << 63) | rng.randrange(1 << 20))
                   + key + b"xyz")
            o = collect(p, rnd, deadline)
            rnd.check(o.end == "eof" or (o.close and o.close[0] in
                                         (1002, 1009)),
                      f"a 64-bit length with the top bit set: {o}")
        elif kind == "short_then_eof":
            n = rng.randrange(10, 60000)
            f = frame(rng.choice([1, 2]), rng.randbytes(n), key=key)
            p.send(f[:rng.randrange(2, len(f) - 1)])
            p.half_close()
            o = collect(p, rnd, deadline)
            rnd.check(o.end in ("eof", "close") and not o.messages,
                      f"a frame cut short, then the end: {o}")
        elif kind == "lone_continuation":
            p.send(frame(0, msg, fin=rng.random() < 0.5, key=key))
            close_with({1002}, collect(p, rnd, deadline))
        elif kind == "interleaved":
            cut = rng.randrange(1, len(msg))
            p.send(frame(rng.choice([1, 2]), msg[:cut], fin=False, key=key))
            p.send(frame(rng.choice([1, 2]), msg[cut:],
                         fin=rng.random() < 0.5, key=key))
            close_with({1002}, collect(p, rnd, deadline))
        elif kind == "utf8":
            bad = invalid_utf8(rng)
            at = rng.randrange(len(msg))
            p.send(frame(1, msg[:at] + bad + msg[at:], key=key))
            close_with({1007}, collect(p, rnd, deadline))
        elif kind == "utf8_fragmented":
            bad = invalid_utf8(rng)
            text = msg[:20] + bad + msg[20:]
            cuts = sorted(rng.sample(range(1, len(text)), 3))
            parts = [text[a:b] for a, b in zip([0] + cuts,
                                                cuts + [len(text)])]
            for i, part in enumerate(parts):
                p.send(frame(1 if i == 0 else 0, part,
                             fin=i == len(parts) - 1, key=key))
            close_with({1007}, collect(p, rnd, deadline))
        elif kind == "close_code":
            code = rng.choice([0, 1, 999, 1000, 1001, 1002, 1003, 1004,
                               1005, 1006, 1007, 1008, 1009, 1010, 1011,
                               1015, 1016, 1100, 2000, 2999, 3000, 3999,
                               4000, 4999])
            reason = rng.choice([b"", b"bye", "\u00e9t\u00e9".encode()])
            p.send(frame(8, struct.pack("!H", code) + reason, key=key))
            o = collect(p, rnd, deadline)
            valid = code in (1000, 1001, 1002, 1003, 1007, 1008, 1009,
                             1010, 1011) or 3000 <= code <= 4999
            # RFC 6455 7.4: a code outside these fails the connection.
            close_with({code} if valid else {1002}, o,
                       f"close frame with code {code}")
        elif kind == "close_one_byte":
            p.send(frame(8, bytes([rng.randrange(256)]), key=key))
            # RFC 6455 5.5.1: a close body starts with a 2-byte code.
            close_with({1002}, collect(p, rnd, deadline))
        elif kind == "close_reason_utf8":
            reason = b"bye " + invalid_utf8(rng)
            p.send(frame(8, struct.pack("!H", 1000) + reason, key=key))
            # RFC 6455 5.5.1 / 8.1: the reason is UTF-8.
            close_with({1007}, collect(p, rnd, deadline))
        elif kind == "close_empty":
            p.send(frame(8, b"", key=key))
            o = collect(p, rnd, deadline)
            rnd.check(o.close is not None and o.close[0] in (None, 1000),
                      f"an empty close: {o}")
        elif kind == "ping_storm":
            sent = set()
            for _ in range(rng.randrange(20, 300)):
                body = rng.randbytes(rng.randrange(0, 126))
                if rng.random() < 0.7:
                    sent.add(body)
                    p.send(frame(9, body, key=key))
                else:
                    p.send(frame(10, body, key=key))
            p.send(frame(1, msg, key=key))
            o = collect(p, rnd, deadline,
                        done=lambda o: o.messages or o.close)
            expect_ping_reply(rnd, o, kind)
            rnd.check(all(x in sent for x in o.pongs),
                      "a pong that echoes no ping")
        elif kind == "fragmented_ok":
            # Valid: a message in pieces, with pings between them.
            cuts = sorted(rng.sample(range(1, len(msg)),
                                     rng.randrange(1, 6)))
            parts = [msg[a:b] for a, b in zip([0] + cuts, cuts + [len(msg)])]
            for i, part in enumerate(parts):
                p.send(frame(1 if i == 0 else 0, part,
                             fin=i == len(parts) - 1, key=key))
                if rng.random() < 0.5:
                    p.send(frame(9, b"mid", key=key))
            o = collect(p, rnd, deadline,
                        done=lambda o: o.messages or o.close)
            expect_ping_reply(rnd, o, kind)
        elif kind == "nonminimal_length":
            # RFC 6455 5.2 asks senders for the minimal length encoding but
            # does not make the longer one an error.
            masked = mask_bytes(msg, key)
            if rng.random() < 0.5:
                hdr = struct.pack("!BBH", 0x81, 0xFE, len(msg))
            else:
                hdr = struct.pack("!BBQ", 0x81, 0xFF, len(msg))
            p.send(hdr + key + masked)
            o = collect(p, rnd, deadline,
                        done=lambda o: o.messages or o.close)
            if o.close:
                close_with({1002}, o)
            else:
                expect_ping_reply(rnd, o, kind)
    finally:
        p.close()


def test_frame_faults(fz):
    fz.run("frame", share(0.25), frame_round)


# ---------------------------------------------------------------------------
# Messages: mutated JSON-RPC text
# ---------------------------------------------------------------------------
HOSTILE = [None, True, False, 0, -1, 1.5, 1e308, -1e308, 2 ** 53 + 1,
           2 ** 64, "", "x", "\u0000", "\ud7ff\u00e9", "A" * 300, [], {},
           [[]], [1, "a"], {"dtype": "float32"}, [[1.0, 2.0], [3.0]],
           {"dtype": "int8", "shape": [1, 2], "data": "AAA="},
           {"dtype": "float32", "shape": [2, 1], "data": "AAAA"},
           {"0": 1.0, "2": 3.0}, {"dtype": "float32", "shape": [-1, 2],
                                  "data": ""},
           {"dtype": "float16", "shape": [1, 1], "buffer":
            {"offset": 0, "length": 2}}, "notes", "chat-42-scratch"]
TOKENS = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"null", b"1e999",
          b"-0", b"\\u0000", b'"\\ud800"', b"\\", b"NaN", b"Infinity",
          b"00", b"0x10", b"\t", b"\x00", b"\x7f", b"\xc3\xa9", b"/*",
          b"true", b"[" * 70, b"{\"a\":" * 70, b"1" * 400]


def mutate_value(rng, v, depth=0):
    """A copy of v with one value somewhere replaced by a hostile one, or a
    key removed or added."""
    if isinstance(v, dict) and v and rng.random() < 0.8:
        v = dict(v)
        k = rng.choice(sorted(v))
        r = rng.random()
        if r < 0.15:
            del v[k]
        elif r < 0.25:
            v[rng.choice(["extra", "options", "id", "k", "shape",
                          "dtype"])] = rng.choice(HOSTILE)
        elif r < 0.6 and isinstance(v[k], (dict, list)) and v[k]:
            v[k] = mutate_value(rng, v[k], depth + 1)
        else:
            v[k] = rng.choice(HOSTILE)
        return v
    if isinstance(v, list) and v and rng.random() < 0.8:
        v = list(v)
        i = rng.randrange(len(v))
        if isinstance(v[i], (dict, list)) and v[i] and rng.random() < 0.6:
            v[i] = mutate_value(rng, v[i], depth + 1)
        else:
            v[i] = rng.choice(HOSTILE)
        return v
    return rng.choice(HOSTILE)


def mutate_text(rng, data):
    """Byte-level mutations of a serialized request."""
    data = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        r = rng.random()
        n = len(data)
        if r < 0.25 and n:
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8) if rng.random() < 0.7 \
                else rng.randrange(1, 256)
        elif r < 0.4 and n:
            data = data[:rng.randrange(n)]
        elif r < 0.6:
            i = rng.randrange(n + 1)
            data[i:i] = rng.choice(TOKENS) if rng.random() < 0.7 else \
                rng.randbytes(rng.randrange(1, 4))
        elif r < 0.75 and n > 2:
            i = rng.randrange(n - 1)
            del data[i:i + rng.randrange(1, min(20, n - i) + 1)]
        elif r < 0.9:
            other = json.dumps(rng.choice(CORPUS)).encode()
            data = data[:rng.randrange(n + 1)] + \
                other[rng.randrange(len(other)):]
        elif n > 4:
            i, j = sorted(rng.sample(range(n), 2))
            data[i:i] = data[i:j]
    return bytes(data)


def max_depth(text):
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def no_dup_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate keys")
    return dict(pairs)


def has_surrogate(v):
    if isinstance(v, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in v)
    if isinstance(v, dict):
        return any(has_surrogate(k) or has_surrogate(x)
                   for k, x in v.items())
    if isinstance(v, list):
        return any(has_surrogate(x) for x in v)
    return False


def answered(m):
    """Whether one member of a message gets a reply: everything but a
    notification, which is a well-formed request without an id
    (docs/API.md "Transport"; an invalid request without an id is
    answered -32600 with a null id)."""
    if not isinstance(m, dict) or "id" in m:
        return True
    return not (m.get("jsonrpc") == "2.0" and
                isinstance(m.get("method"), str) and
                isinstance(m.get("params"), (dict, list, type(None))))


def reply_id_of(m):
    """The id a reply to this member must carry."""
    if isinstance(m, dict) and "id" in m and not isinstance(m["id"], bool) \
            and isinstance(m["id"], (str, int, float, type(None))):
        return m["id"]
    return None


def same_id(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
            not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return a == b and type(a) is type(b)


def message_round(fz, rng, rnd):
    deadline = time.monotonic() + TIMEOUT
    base = rng.choice(CORPUS)
    how = rng.random()
    if how < 0.35:
        data = json.dumps(mutate_value(rng, base)).encode()
        what = "value"
    elif how < 0.45:
        k = rng.randrange(0, 5)
        batch = [mutate_value(rng, rng.choice(CORPUS)) if rng.random() < 0.5
                 else rng.choice(CORPUS) for _ in range(k)]
        if rng.random() < 0.3:
            batch.append(rng.choice(HOSTILE))
        data = json.dumps(batch).encode()
        what = "batch"
    else:
        data = json.dumps(base, indent=rng.choice([None, 1])).encode()
        data = mutate_text(rng, data)
        what = "bytes"
    rnd.what = f"text message ({what} mutation of {base.get('method')})"
    p = upgrade(fz.port, rnd, rng, deadline)
    p.hold()
    try:
        too_big = len(data) > MAX_MESSAGE
        send_message(p, rng, 1, data)
        p.send(frame(1, PING.encode(), key=rng.randbytes(4)))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if too_big:
            o = collect(p, rnd, deadline)
            rnd.check(o.close and o.close[0] == 1009, f"too big: {o}")
            return
        if text is None:
            # RFC 6455 8.1: a text message that is not UTF-8 fails the
            # connection with 1007 (the probe may be answered first).
            o = collect(p, rnd, deadline)
            rnd.check(o.close and o.close[0] == 1007,
                      f"invalid UTF-8 text: expected close 1007, got {o}")
            return
        try:
            v = json.loads(text, object_pairs_hook=no_dup_keys,
                           parse_constant=lambda c: 1 / 0)
            parsed, dups = True, False
        except ZeroDivisionError:  # NaN, Infinity: not JSON
            parsed, dups = False, False
        except RecursionError:
            parsed, dups = None, False
        except ValueError as e:
            parsed, dups = False, "duplicate keys" in str(e)
            if dups:
                try:
                    v = json.loads(text, parse_constant=lambda c: 1 / 0)
                    parsed = True
                except (ValueError, ZeroDivisionError, RecursionError):
                    parsed, dups = False, False
        deep = max_depth(text) > 64
        # What must come back besides the probe's reply.
        if parsed is not True or deep:
            n_expected = 1
        elif isinstance(v, list):
            n_expected = 1 if not v or any(answered(m) for m in v) else 0
        else:
            n_expected = 1 if answered(v) else 0

        def probe_of(m):
            r = envelope_of(rnd, m)
            return isinstance(r, dict) and r.get("id") == "probe"

        def done(o):
            probe = [m for m in o.messages if probe_of(m)]
            return probe and len(o.messages) - len(probe) >= n_expected
        o = collect(p, rnd, deadline, done=done)
        rnd.check(o.end == "done", f"expected {n_expected} reply(ies) and "
                  f"the probe's, got {o}")
        mine = [envelope_of(rnd, m) for m in o.messages if not probe_of(m)]
        rnd.check(len(mine) == n_expected, f"expected {n_expected} "
                  f"reply(ies), got {o}")
        if not mine:
            return
        r = mine[0]
        if parsed is not True or deep:
            # Not JSON, or nested deeper than server.max_json_depth.
            codes = ({-32600} if parsed is True else {-32600, -32700}) \
                if deep else {-32700}
            rnd.check(isinstance(r, dict) and "error" in r and
                      r["error"]["code"] in codes and r["id"] is None,
                      f"expected an error {sorted(codes)} with a null id, "
                      f"got {r}")
            return
        if isinstance(v, list) and not v:
            rnd.check(isinstance(r, dict) and r.get("error", {}).get(
                "code") == -32600, f"an empty batch: expected -32600, "
                f"got {r}")
            return
        members = v if isinstance(v, list) else [v]
        got = r if isinstance(v, list) else [r]
        rnd.check(isinstance(r, list) == isinstance(v, list),
                  f"a {'batch' if isinstance(v, list) else 'request'} "
                  f"answered with {str(r)[:300]}")
        want = [reply_id_of(m) for m in members if answered(m)]
        rnd.check(len(got) == len(want),
                  f"{len(want)} replies due, got {len(got)}: {got}")
        for g in got:
            rnd.check(g.get("error", {}).get("code") != -32700 or
                      has_surrogate(v),
                      f"valid JSON answered with a parse error: {g}")
        if dups or has_surrogate(v):
            return
        # Replies in the order of the requests (docs/API.md), each with
        # its request's id (or null when that id was not valid).
        for g, w in zip(got, want):
            rnd.check(same_id(g["id"], w) or (g["id"] is None and
                                              "error" in g and
                                              g["error"]["code"] == -32600),
                      f"reply id {g['id']!r} for a request with id {w!r}: "
                      f"{got}")
    finally:
        p.close()


def test_message_faults_text(fz):
    fz.run("text", share(0.35), message_round)


# ---------------------------------------------------------------------------
# Messages: binary frames with tensors
# ---------------------------------------------------------------------------
DTYPES = {"float32": np.float32, "float16": np.float16,
          "float64": np.float64}


def bf16_bytes(x):
    u = np.asarray(x, np.float32).view(np.uint32) >> 16
    return u.astype(np.uint16).tobytes()


def binary_request(rng):
    """A valid binary processEmbeddings request: (frame body, the rows as
    float32 after the input dtype, options)."""
    rows, cols = rng.randrange(1, 5), rng.randrange(1, 9)
    x = np.asarray([[rng.uniform(-4, 4) for _ in range(cols)]
                    for _ in range(rows)])
    dtype = rng.choice(["float32", "float16", "bfloat16", "float64"])
    if dtype == "bfloat16":
        raw = bf16_bytes(x)
        ref = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16) \
            .view(np.float32).reshape(rows, cols)
    else:
        arr = x.astype(DTYPES[dtype])
        raw = arr.tobytes()
        ref = arr.astype(np.float32)
    lead = rng.randrange(0, 3) * 8
    payload = rng.randbytes(lead) + raw + rng.randbytes(rng.randrange(0, 9))
    req = {"jsonrpc": "2.0", "id": rng.randrange(1, 10 ** 6),
           "method": "processEmbeddings",
           "params": {"embeddings": {"dtype": dtype, "shape": [rows, cols],
                                     "buffer": {"offset": lead,
                                                "length": len(raw)}},
                      "options": {"normalize": rng.random() < 0.5}}}
    return req, payload, ref


def pack_binary(req, payload, n=None):
    js = json.dumps(req).encode()
    return struct.pack("<I", len(js) if n is None else n) + js + payload


def binary_round(fz, rng, rnd):
    deadline = time.monotonic() + TIMEOUT
    req, payload, ref = binary_request(rng)
    emb = req["params"]["embeddings"]
    kind = rng.choice(["valid", "n_field", "n_beyond", "truncate",
                       "offset", "length", "shape", "dtype", "buffer",
                       "flip", "short_frame", "json_utf8"])
    body = None
    ok = False
    if kind == "valid":
        ok = True
    elif kind == "n_field":
        body = pack_binary(req, payload, rng.choice(
            [0, 1, 2, 3, len(json.dumps(req)) - rng.randrange(1, 5)]))
    elif kind == "n_beyond":
        js = len(json.dumps(req))
        body = pack_binary(req, payload, rng.choice(
            [js + len(payload) + rng.randrange(1, 100), 0xFFFFFFFF,
             0x80000000, js + len(payload) + 1]))
    elif kind == "truncate":
        # Cut inside the tensor's bytes.
        body = pack_binary(req, payload)
        end = 4 + len(json.dumps(req)) + emb["buffer"]["offset"] + \
            emb["buffer"]["length"]
        body = body[:rng.randrange(4 + len(json.dumps(req)), end)]
    elif kind == "offset":
        emb["buffer"]["offset"] = rng.choice(
            [len(payload), len(payload) + 8, -8, 2 ** 63, 2 ** 64 + 8,
             emb["buffer"]["offset"] + 1, 1.5, "0", None])
        b = emb["buffer"]
        if isinstance(b["offset"], int) and 0 <= b["offset"] and \
                b["offset"] + b["length"] <= len(payload):
            ok = None  # still inside the payload (no alignment is asked)
    elif kind == "length":
        emb["buffer"]["length"] = rng.choice(
            [0, emb["buffer"]["length"] + 1, emb["buffer"]["length"] - 1,
             len(payload) + 1, -4, 2 ** 62, 2 ** 64, "8", None])
    elif kind == "shape":
        r, c = emb["shape"]
        emb["shape"] = rng.choice([[r + 1, c], [r, c + 1], [0, c], [r, 0],
                                   [-r, c], [r * c + 1], [r, c, 1], [],
                                   [2 ** 40, c], [r, 2 ** 31], [2 ** 32, 2],
                                   [r, 1.5], "2x2", None])
    elif kind == "dtype":
        emb["dtype"] = rng.choice(["int8", "uint8", "int4", "binary",
                                   "float8", "FLOAT32", "", "float", 32,
                                   None, "float32 ", "complex64"])
    elif kind == "buffer":
        emb["buffer"] = rng.choice([None, "0", [0, 8], {}, {"offset": 0},
                                    {"length": emb["buffer"]["length"]}])
    elif kind == "flip":
        body = bytearray(pack_binary(req, payload))
        for _ in range(rng.randrange(1, 4)):
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        body = bytes(body)
    elif kind == "short_frame":
        body = rng.randbytes(rng.randrange(0, 4))
    elif kind == "json_utf8":
        js = json.dumps(req).encode()
        at = rng.randrange(len(js))
        js = js[:at] + invalid_utf8(rng) + js[at:]
        body = struct.pack("<I", len(js)) + js + payload
    if body is None:
        body = pack_binary(req, payload)
    rnd.what = f"binary frame {kind}: {json.dumps(emb)[:200]}"
    p = upgrade(fz.port, rnd, rng, deadline)
    try:
        n_expected = 1
        if kind == "flip" and len(body) >= 4:
            # A flip may have made it a notification ("id" -> "jd"),
            # which gets no reply.
            (n,) = struct.unpack_from("<I", body, 0)
            try:
                v = json.loads(body[4:4 + n].decode("utf-8"),
                               parse_constant=lambda c: 1 / 0)
                n_expected = int(n <= len(body) - 4 and answered(v))
            except (ValueError, ZeroDivisionError, RecursionError):
                pass
        p.hold()
        send_message(p, rng, 2, body)
        p.send(frame(1, PING.encode(), key=rng.randbytes(4)))

        def probe_of(m):
            return isinstance(m, str) and envelope_of(rnd, m).get(
                "id") == "probe"

        def done(o):
            probe = [m for m in o.messages if probe_of(m)]
            return probe and len(o.messages) - len(probe) >= n_expected
        o = collect(p, rnd, deadline, done=done)
        rnd.check(o.end == "done", f"expected {n_expected} reply(ies) and "
                  f"the probe's, got {o}")
        mine = [m for m in o.messages if not probe_of(m)]
        rnd.check(len(mine) == n_expected, f"expected {n_expected} reply, "
                  f"got {o}")
        if not mine:
            return
        msg = mine[0]
        rnd.check(isinstance(msg, bytes), "a binary request answered with "
                  "a text frame")
        r = envelope_of(rnd, msg)
        rnd.check(isinstance(r, dict), f"a batch reply: {r}")
        if ok is None:
            return
        if ok:
            rnd.check("result" in r and r["id"] == req["id"],
                      f"a valid binary request failed: {r}")
            (n,) = struct.unpack_from("<I", msg, 0)
            t = r["result"]["processed"]
            rnd.check(t["buffer"]["offset"] % 8 == 0, f"unaligned {t}")
            got = np.frombuffer(msg[4 + n + t["buffer"]["offset"]:][
                :t["buffer"]["length"]], np.float32).reshape(t["shape"])
            want = ref.astype(np.float64)
            if req["params"]["options"]["normalize"]:
                want = normalize_ref(want)
            rnd.check(np.allclose(got, want, rtol=1e-5, atol=1e-6),
                      f"wrong result {got} for {want}")
            return
        if kind in ("n_field", "n_beyond", "short_frame", "json_utf8"):
            rnd.check("error" in r and r["error"]["code"] in
                      (-32700, -32600, -32602),
                      f"a malformed binary frame: expected an error, got {r}")
            if kind in ("n_beyond", "short_frame", "json_utf8"):
                rnd.check(r["error"]["code"] == -32700 and r["id"] is None,
                          f"expected -32700 with a null id: {r}")
        elif kind != "flip":
            rnd.check("error" in r and r["error"]["code"] == -32602 and
                      r["id"] == req["id"],
                      f"a bad tensor ({kind}): expected -32602 naming it, "
                      f"got {r}")
            rnd.check("embeddings" in r["error"]["message"],
                      f"the message does not name the tensor: {r}")
    finally:
        p.close()


def test_message_faults_binary(fz):
    fz.run("binary", share(0.15), binary_round)


# ---------------------------------------------------------------------------
# Oversized messages
# ---------------------------------------------------------------------------
def oversized_round(fz, rng, rnd):
    deadline = time.monotonic() + TIMEOUT
    kind = rng.choice(["one_frame", "announced", "fragments"])
    rnd.what = f"oversized {kind}"
    p = upgrade(fz.port, rnd, rng, deadline)
    op = rng.choice([1, 2])
    key = rng.randbytes(4)
    try:
        if kind == "one_frame":
            p.send(frame(op, b"1" * rng.randrange(MAX_MESSAGE + 1,
                                                  3 * MAX_MESSAGE), key=key))
        elif kind == "announced":
            # Only the header of a 2^30-byte frame: the server must not
            # wait for the rest to refuse it.
            p.send(struct.pack("!BBQ", 0x80 | op, 0xFF,
                               rng.randrange(MAX_MESSAGE + 1, 1 << 30)) +
                   key + b"12345678")
        else:
            step = rng.randrange(4000, 30000)
            sent = 0
            first = True
            while sent <= MAX_MESSAGE + step and p.send(
                    frame(op if first else 0, b"1" * step, fin=False,
                          key=key)):
                sent += step
                first = False
        o = collect(p, rnd, deadline)
        # The close may be lost to a reset when the server closes while
        # bytes it did not read are still coming in.
        rnd.check((o.close and o.close[0] == 1009 and
                   b"max_message_size" in o.close[1]) or
                  (kind != "announced" and o.end == "eof"),
                  f"expected a close with 1009 naming "
                  f"server.max_message_size, got {o}")
    finally:
        p.close()


def test_oversized_messages(fz):
    fz.run("oversized", share(0.05), oversized_round)


# ---------------------------------------------------------------------------
# The end: nothing stored was lost, the server still answers everything.
# ---------------------------------------------------------------------------
def test_kept_memories_and_server_intact(fz):
    fz.alive("at the end")
    now = fz.kept.read(fz.watcher)
    assert now["missing"] == [] and now["count"] == len(fz.kept.ids), now
    for a, b in zip(fz.kept.first["memories"], now["memories"]):
        assert a == b, f"a kept memory changed: {a} -> {b}; seed {SEED}"
    metrics = fz.watcher.call("getMetrics")
    assert metrics["uptime_s"] > 0 and "memory" in metrics
    text = fz.srv.http("/metrics")[2].decode()
    assert "mnemo_" in text
    assert not fz.srv.sanitizer_reports()
