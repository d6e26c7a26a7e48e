"""MCP Streamable HTTP at /mcp against a real mnemod: sessions, every bad
input the transport refuses (and how), and that neither the refusals nor
the accepted requests disturb a WebSocket client or the stored memories.

Requests go through http.client so that every header is the test's own.
The main server of the module has a token, an Origin list and a 64 KiB
message limit; the tests at the end start servers of their own for the
defaults, the session limits, the rate limit and the shutdown.
"""
import asyncio
import base64
import http.client
import json
import re
import signal
import socket
import threading
import time

import numpy as np
import pytest

from helpers import b64_tensor, call, connect, normalize_ref

TOKEN = "s3cret"
GOOD_ORIGIN = "http://good.example"
LIMIT = 65536
ACCEPT = "application/json, text/event-stream"


# ---------------------------------------------------------------------------
# A small client: one HTTP connection per request, headers under control.
# ---------------------------------------------------------------------------
def request(port, method, path="/mcp", body=None, headers=None, timeout=30):
    """(status, headers with lower-case names, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


class Mcp:
    """An MCP session over HTTP (after initialize())."""

    def __init__(self, port, token=None, version="2025-06-18"):
        self.port = port
        self.token = token
        self.version = version
        self.sid = None
        self.next_id = 1

    def headers(self, extra=None, session=True):
        h = {"Content-Type": "application/json", "Accept": ACCEPT}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if session and self.sid:
            h["Mcp-Session-Id"] = self.sid
            h["MCP-Protocol-Version"] = self.version
        for k, v in (extra or {}).items():
            if v is None:
                h.pop(k, None)
            else:
                h[k] = v
        return h

    def post(self, body, extra=None, session=True, path="/mcp"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return request(self.port, "POST", path, data,
                       self.headers(extra, session))

    def initialize(self):
        st, h, body = self.post({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": self.version, "capabilities": {},
                       "clientInfo": {"name": "pytest", "version": "1"}}},
            session=False)
        assert st == 200, body
        reply = json.loads(body)
        assert reply["result"]["protocolVersion"] == self.version
        self.sid = h["mcp-session-id"]
        st, _, body = self.post({"jsonrpc": "2.0",
                                 "method": "notifications/initialized"})
        assert st == 202 and body == b""
        return self

    def call(self, method, params=None):
        """One request: (status, reply object or None)."""
        self.next_id += 1
        req = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            req["params"] = params
        st, _, body = self.post(req)
        return st, (json.loads(body) if body else None)

    def result(self, method, params=None):
        st, reply = self.call(method, params)
        assert st == 200 and "result" in reply, reply
        return reply["result"]

    def tool(self, name, args):
        r = self.result("tools/call", {"name": name, "arguments": args})
        assert r["isError"] is False, r
        return r["structuredContent"]


def refused(status, headers, body, want_status, want_code, *words, rid=None):
    """A refusal: the status, a JSON-RPC error with the id (null unless
    the request had a usable one) and the code, and a message holding
    every word."""
    assert status == want_status, (status, body)
    assert headers["content-type"] == "application/json"
    reply = json.loads(body)
    assert set(reply) == {"jsonrpc", "id", "error"}, reply
    assert reply["jsonrpc"] == "2.0" and reply["id"] == rid
    err = reply["error"]
    assert err["code"] == want_code, err
    for w in words:
        assert w.lower() in err["message"].lower(), (w, err["message"])
    return err


# ---------------------------------------------------------------------------
# The module's server, its stored memories, and a WebSocket client that
# keeps working (and checking its answers) while the tests run.
# ---------------------------------------------------------------------------
DIM = 8
MEMS = np.random.default_rng(3).standard_normal((20, DIM)).astype(np.float32)


class WsWatcher(threading.Thread):
    """processEmbeddings over a WebSocket in a loop, each reply checked
    against numpy, until stopped."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.ok = 0
        self.problems = []

    def run(self):
        async def go():
            rng = np.random.default_rng(9)
            async with connect(self.url, extra_headers={
                    "Authorization": f"Bearer {TOKEN}"}) as ws:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    x = rng.standard_normal((4, 16)).astype(np.float32)
                    r = await call(ws, "processEmbeddings", {
                        "embeddings": x.tolist(),
                        "options": {"normalize": True}}, rid=i)
                    got = np.asarray(r["result"]["processed"])
                    if np.abs(got - normalize_ref(x)).max() > 1e-6:
                        self.problems.append(r)
                    else:
                        self.ok += 1
                    await asyncio.sleep(0.005)
        try:
            asyncio.run(go())
        except Exception as e:  # noqa: BLE001 - reported by the last test
            self.problems.append(repr(e))


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server({"server": {
        "rate_limit": 0, "max_message_size": LIMIT,
        "auth_tokens": [TOKEN], "allowed_origins": [GOOD_ORIGIN]}})


@pytest.fixture(scope="module")
def watch(srv):
    # Memories stored before anything else, read back at the end.
    s = Mcp(srv.port, TOKEN).initialize()
    s.tool("createCollection", {"name": "kept", "dim": DIM})
    s.tool("addMemories", {"collection": "kept", "memories": [
        {"id": f"k{i}", "embedding": v.tolist(), "content": f"kept {i}",
         "metadata": {"i": i}} for i, v in enumerate(MEMS)]})
    w = WsWatcher(srv.url)
    w.start()
    yield w
    w.stop.set()
    w.join(30)


@pytest.fixture
def mcp(srv, watch):
    return Mcp(srv.port, TOKEN).initialize()


def add_attempt(i):
    """A request that would change the stored memories if it ran."""
    return {"jsonrpc": "2.0", "id": 500 + i, "method": "tools/call",
            "params": {"name": "addMemories", "arguments": {
                "collection": "kept", "memories": [
                    {"id": f"k{i % 20}", "embedding": [9.0] * DIM,
                     "content": "overwritten"}]}}}


# ---------------------------------------------------------------------------
# Sessions and calls that work.
# ---------------------------------------------------------------------------
def test_initialize_gives_a_random_session_id(srv, watch):
    ids = {Mcp(srv.port, TOKEN).initialize().sid for _ in range(3)}
    assert len(ids) == 3
    for sid in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", sid), sid


def test_tools_call_and_direct_methods_reach_the_engine(mcp):
    x = np.random.default_rng(1).standard_normal((6, 32)).astype(np.float32)
    out = mcp.tool("processEmbeddings", {"embeddings": x.tolist(),
                                         "options": {"normalize": True}})
    assert np.abs(np.asarray(out["processed"]) - normalize_ref(x)).max() \
        < 1e-6
    # The same method called directly, with a base64 tensor in and out.
    r = mcp.result("processEmbeddings", {
        "embeddings": b64_tensor(x),
        "options": {"normalize": True, "encoding": "base64"}})
    got = np.frombuffer(base64.b64decode(r["processed"]["data"]),
                        dtype=np.float32).reshape(x.shape)
    assert np.abs(got - normalize_ref(x)).max() < 1e-6
    # A Float32Array as JSON.stringify writes it.
    v = x[0]
    r = mcp.result("processEmbeddings", {
        "embeddings": {str(i): float(f) for i, f in enumerate(v)},
        "options": {"normalize": True}})
    assert np.abs(np.asarray(r["processed"]) - normalize_ref(v[None])[0]) \
        .max() < 1e-6


def test_sessions_in_parallel(srv, watch):
    errors = []

    def one(seed):
        try:
            s = Mcp(srv.port, TOKEN).initialize()
            rng = np.random.default_rng(seed)
            for _ in range(10):
                x = rng.standard_normal((3, 8)).astype(np.float32)
                out = s.tool("processEmbeddings", {
                    "embeddings": x.tolist(), "options": {"normalize": True}})
                assert np.abs(np.asarray(out["processed"])
                              - normalize_ref(x)).max() < 1e-6
            assert request(srv.port, "DELETE", headers={
                "Authorization": f"Bearer {TOKEN}",
                "Mcp-Session-Id": s.sid})[0] == 204
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors


# ---------------------------------------------------------------------------
# One test per refusal.
# ---------------------------------------------------------------------------
def test_bad_json_is_400_with_parse_error(mcp):
    st, h, body = mcp.post(b'{"jsonrpc": "2.0", "id": 1, "method": ')
    refused(st, h, body, 400, -32700, "invalid JSON")
    st, h, body = mcp.post(b'\xff\xfe not even UTF-8')
    refused(st, h, body, 400, -32700)


def test_not_a_request_is_400(mcp):
    st, h, body = mcp.post({"jsonrpc": "2.0", "id": 3})
    refused(st, h, body, 400, -32600, "method", rid=3)
    st, h, body = mcp.post([])
    assert st == 400


def test_wrong_content_type_is_415(mcp):
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        st, h, body = mcp.post(add_attempt(1), {"Content-Type": ctype})
        refused(st, h, body, 415, -32600, "Content-Type: application/json")
    # Parameters after the media type are fine.
    st, _, _ = mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"},
                        {"Content-Type": "application/json; charset=utf-8"})
    assert st == 200


def test_accept_without_json_is_406(mcp):
    st, h, body = mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"},
                           {"Accept": "text/event-stream"})
    refused(st, h, body, 406, -32600, "application/json")


def test_missing_session_is_400(srv, watch):
    s = Mcp(srv.port, TOKEN)  # never initialized
    st, h, body = s.post(add_attempt(2))
    refused(st, h, body, 400, -32600, "Mcp-Session-Id", "initialize")
    st, h, body = s.post({"jsonrpc": "2.0",
                          "method": "notifications/initialized"})
    refused(st, h, body, 400, -32600, "Mcp-Session-Id")


def test_unknown_session_is_404(mcp):
    for sid in ("0" * 32, mcp.sid[:-1] + ("0" if mcp.sid[-1] != "0" else "1"),
                "x", "y" * 200):
        st, h, body = mcp.post(add_attempt(3), {"Mcp-Session-Id": sid})
        refused(st, h, body, 404, -32600, "no such MCP session",
                "initialize")


def test_unsupported_protocol_version_is_400(mcp):
    st, h, body = mcp.post(add_attempt(4),
                           {"MCP-Protocol-Version": "2023-01-01"})
    err = refused(st, h, body, 400, -32600, "2023-01-01")
    for v in ("2025-11-25", "2025-06-18", "2025-03-26"):
        assert v in err["message"]
    # Every version the server speaks is taken in the header.
    for v in ("2025-11-25", "2025-03-26"):
        st, _, _ = mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"},
                            {"MCP-Protocol-Version": v})
        assert st == 200


def test_oversized_body_is_413_naming_the_limit(mcp, srv):
    req = add_attempt(5)
    req["params"]["arguments"]["memories"][0]["content"] = "x" * LIMIT
    st, h, body = mcp.post(req)
    err = refused(st, h, body, 413, -32600, str(LIMIT),
                  "server.max_message_size")
    assert err["data"]["limit"] == LIMIT
    assert err["data"]["size"] > LIMIT
    # A body of exactly the limit is read (and found wanting as JSON).
    st, h, body = mcp.post(b" " * (LIMIT - 1) + b"{")
    refused(st, h, body, 400, -32700)


def test_get_is_405_with_allow(srv, watch):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    st, h, body = request(srv.port, "GET", headers=dict(
        auth, Accept="text/event-stream"))
    refused(st, h, body, 405, -32600, "event stream", "POST")
    assert {m.strip() for m in h["allow"].split(",")} == {"POST", "DELETE"}
    for method in ("PUT", "PATCH", "HEAD"):
        st, h, _ = request(srv.port, method, headers=auth)
        assert st == 405 and "POST" in h["allow"], (method, st)


def test_foreign_origin_is_403(mcp):
    st, h, body = mcp.post(add_attempt(6), {"Origin": "http://evil.example"})
    refused(st, h, body, 403, -32600, "http://evil.example",
            "server.allowed_origins")
    st, _, body = mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"},
                           {"Origin": GOOD_ORIGIN})
    assert st == 200, body


def test_token_required_401_and_accepted(srv, watch):
    s = Mcp(srv.port)  # no token
    for extra in ({}, {"Authorization": "Bearer wrong"},
                  {"Authorization": f"Basic {TOKEN}"}):
        st, h, body = s.post(add_attempt(7), extra, session=False)
        refused(st, h, body, 401, -32600, "token")
        assert h["www-authenticate"].startswith("Bearer")
    # A DELETE is checked the same way.
    st, h, _ = request(srv.port, "DELETE", headers={"Mcp-Session-Id": "0"})
    assert st == 401 and "www-authenticate" in h
    # The token in the header, or in the query string.
    assert Mcp(srv.port, TOKEN).initialize().sid
    s = Mcp(srv.port)
    st, h, body = s.post({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                          "params": {"protocolVersion": "2025-06-18"}},
                         path=f"/mcp?token={TOKEN}")
    assert st == 200 and "mcp-session-id" in h, body


def test_notifications_and_responses_only_get_202(mcp):
    st, h, body = mcp.post({"jsonrpc": "2.0",
                            "method": "notifications/initialized"})
    assert (st, body) == (202, b"")
    st, _, body = mcp.post({"jsonrpc": "2.0", "method": "notifications/x"})
    assert (st, body) == (202, b"")
    # A client's answer to a server request (this server makes none).
    st, _, body = mcp.post({"jsonrpc": "2.0", "id": 7, "result": {}})
    assert (st, body) == (202, b"")
    st, _, body = mcp.post({"jsonrpc": "2.0", "id": 8,
                            "error": {"code": -1, "message": "no"}})
    assert (st, body) == (202, b"")


def test_batches_only_in_2025_03_26(srv, watch):
    old = Mcp(srv.port, TOKEN, version="2025-03-26").initialize()
    x = np.array([[3.0, 4.0]], dtype=np.float32)
    st, _, body = old.post([
        {"jsonrpc": "2.0", "id": "a", "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": "b", "method": "processEmbeddings",
         "params": {"embeddings": x.tolist(), "options": {"normalize": True}}},
        {"jsonrpc": "2.0", "id": 9, "result": {}},
        {"jsonrpc": "2.0", "id": "c", "method": "noSuchMethod"}])
    assert st == 200, body
    replies = json.loads(body)
    assert [r["id"] for r in replies] == ["a", "b", "c"]
    assert replies[0]["result"] == {}
    assert np.allclose(replies[1]["result"]["processed"], [[0.6, 0.8]])
    assert replies[2]["error"]["code"] == -32601
    st, _, body = old.post([{"jsonrpc": "2.0", "method": "notifications/x"}])
    assert (st, body) == (202, b"")
    # Newer sessions carry one message per POST.
    new = Mcp(srv.port, TOKEN, version="2025-06-18").initialize()
    st, h, body = new.post([add_attempt(8)])
    refused(st, h, body, 400, -32600, "batch", "2025-06-18")
    # initialize in a batch starts no session.
    st, h, body = Mcp(srv.port, TOKEN).post([
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-03-26"}}], session=False)
    refused(st, h, body, 400, -32600, "Mcp-Session-Id")
    assert "mcp-session-id" not in h


def test_binary_buffers_are_refused_with_32602(mcp):
    tensor = {"dtype": "float32", "shape": [1, 4],
              "buffer": {"offset": 0, "length": 16}}
    st, reply = mcp.call("processEmbeddings", {"embeddings": tensor})
    assert st == 200
    err = reply["error"]
    assert err["code"] == -32602
    assert "binary WebSocket frame" in err["message"]
    assert "base64" in err["message"]
    r = mcp.result("tools/call", {"name": "addMemories", "arguments": {
        "collection": "kept", "memories": [
            {"id": "k0", "embedding": tensor, "content": "overwritten"}]}})
    assert r["isError"] is True
    assert "binary WebSocket frame" in r["content"][0]["text"]
    st, reply = mcp.call("processEmbeddings", {
        "embeddings": [[1.0, 2.0]], "options": {"encoding": "binary"}})
    assert reply["error"]["code"] == -32602
    assert "\"json\" or \"base64\"" in reply["error"]["message"]


def test_delete_ends_the_session(mcp, srv):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    st, _, body = request(srv.port, "DELETE", headers=dict(
        auth, **{"Mcp-Session-Id": mcp.sid}))
    assert (st, body) == (204, b"")
    st, h, body = mcp.post(add_attempt(9))
    refused(st, h, body, 404, -32600, "no such MCP session")
    st, h, body = request(srv.port, "DELETE", headers=dict(
        auth, **{"Mcp-Session-Id": mcp.sid}))
    refused(st, h, body, 404, -32600, "no such MCP session")
    st, h, body = request(srv.port, "DELETE", headers=auth)
    refused(st, h, body, 400, -32600, "Mcp-Session-Id")


def test_empty_and_unsized_bodies(mcp, srv):
    st, h, body = mcp.post(b"")
    refused(st, h, body, 400, -32700, "empty")
    # A chunked body (no Content-Length) is not read.
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    payload = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    s.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\n"
              b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
              b"Mcp-Session-Id: " + mcp.sid.encode() + b"\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n"
              + b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n")
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 411"), head


def test_pipelined_requests_do_not_stall_the_server(mcp, srv):
    # lws 4.1 offered the body completion again and again while a worker
    # ran when the next request was already read: the loop spun. The
    # first reply comes, then the connection closes; the server goes on.
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    one = (b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
           b"\r\nAuthorization: Bearer " + TOKEN.encode() +
           b"\r\nMcp-Session-Id: " + mcp.sid.encode() +
           b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.sendall(one * 4)
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    assert got.startswith(b"HTTP/1.1 200"), got
    assert b'"id":1,"result":{}' in got
    t0 = time.time()
    assert mcp.result("ping") == {}
    assert srv.http("/health")[0] == 200
    assert time.time() - t0 < 5


# ---------------------------------------------------------------------------
# After all of that: the WebSocket client was served throughout, and the
# memories are as they were stored.
# ---------------------------------------------------------------------------
def test_zz_websocket_served_and_memories_unchanged(srv, watch):
    time.sleep(0.2)
    assert not watch.problems, watch.problems[:3]
    assert watch.ok >= 5, watch.ok
    assert watch.is_alive()
    s = Mcp(srv.port, TOKEN).initialize()
    info = s.tool("getCollection", {"name": "kept"})
    assert info["count"] == len(MEMS)
    got = s.tool("getMemories", {"collection": "kept",
                                 "ids": [f"k{i}" for i in range(len(MEMS))],
                                 "include": ["embedding", "content",
                                             "metadata"]})
    mems = {m["id"]: m for m in got["memories"]}
    for i, v in enumerate(MEMS):
        m = mems[f"k{i}"]
        assert m["content"] == f"kept {i}"
        assert m["metadata"] == {"i": i}
        assert np.array_equal(np.asarray(m["embedding"], dtype=np.float32), v)
    assert "mcp_sessions" in srv.http("/metrics")[2].decode()


# ---------------------------------------------------------------------------
# Servers of their own.
# ---------------------------------------------------------------------------
def test_default_origin_policy_is_loopback_only(start_server):
    srv = start_server({"server": {"rate_limit": 0}})
    ping = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18"}}
    for origin in (None, "http://localhost:5173", "http://127.0.0.1:8080",
                   "http://[::1]:3000", "https://LOCALHOST"):
        st, _, body = Mcp(srv.port).post(ping, {"Origin": origin},
                                         session=False)
        assert st == 200, (origin, body)
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.io",
                   "http://localhost.evil.io", "file://"):
        st, h, body = Mcp(srv.port).post(ping, {"Origin": origin},
                                         session=False)
        refused(st, h, body, 403, -32600, "loopback")


def test_a_large_reply_arrives_whole(start_server):
    srv = start_server({"server": {"rate_limit": 0}})
    mcp = Mcp(srv.port).initialize()
    # Several MB of JSON: written in pieces across writeable callbacks.
    x = np.random.default_rng(2).standard_normal((3000, 128)).astype(
        np.float32)
    out = mcp.result("processEmbeddings", {"embeddings": b64_tensor(x),
                                           "options": {"normalize": True,
                                                       "encoding": "json"}})
    got = np.asarray(out["processed"], dtype=np.float64)
    assert got.shape == x.shape
    assert np.abs(got - normalize_ref(x)).max() < 1e-6


def test_session_limit_and_idle_expiry(start_server):
    srv = start_server({"server": {"rate_limit": 0, "mcp_max_sessions": 2,
                                   "mcp_session_timeout": 1}})
    # A failed initialize starts no session and takes no place.
    for _ in range(3):
        st, h, body = Mcp(srv.port).post(
            {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": [1]}, session=False)
        assert st == 200 and "mcp-session-id" not in h
        assert json.loads(body)["error"]["code"] == -32602
    a = Mcp(srv.port).initialize()
    b = Mcp(srv.port).initialize()
    st, h, body = Mcp(srv.port).post(
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18"}}, session=False)
    refused(st, h, body, 503, -32004, "too many MCP sessions",
            "server.mcp_max_sessions")
    # In use, b stays; idle, a goes after a second (the scan runs once a
    # second).
    t0 = time.time()
    while time.time() - t0 < 2.5:
        assert b.result("ping") == {}
        time.sleep(0.25)
    st, h, body = a.post({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    refused(st, h, body, 404, -32600, "no such MCP session")
    assert Mcp(srv.port).initialize().sid


def test_rate_limit_is_per_session(start_server):
    srv = start_server({"server": {"rate_limit": 3}})
    a = Mcp(srv.port).initialize()  # initialize: 1
    assert a.result("ping") == {}  # 2
    st, _, _ = a.post({"jsonrpc": "2.0", "method": "notifications/x"})  # 3
    assert st == 202
    st, reply = a.call("ping")
    assert st == 200
    err = reply["error"]
    assert err["code"] == -32003
    assert "server.rate_limit" in err["message"]
    assert err["data"]["limit_per_minute"] == 3
    # A rate-limited notification is still answered (202, no body).
    st, _, body = a.post({"jsonrpc": "2.0", "method": "notifications/x"})
    assert (st, body) == (202, b"")
    # Another session has its own budget.
    b = Mcp(srv.port).initialize()
    assert b.result("ping") == {}


def test_client_gone_and_session_ended_mid_request(start_server):
    srv = start_server({"server": {"rate_limit": 0},
                        "processing": {"workers": 1}})
    s = Mcp(srv.port).initialize()
    x = np.random.default_rng(6).standard_normal((1500, 256)).astype(
        np.float32)
    body = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "fitPCA",
                       "params": {"name": "gone", "n_components": 16,
                                  "embeddings": b64_tensor(x)}}).encode()
    raw = (b"POST /mcp HTTP/1.1\r\nHost: x\r\n"
           b"Content-Type: application/json\r\n"
           b"Mcp-Session-Id: " + s.sid.encode() + b"\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body) + body)
    # Clients that go away with their requests queued or running.
    for _ in range(4):
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        c.sendall(raw)
        c.close()
    # A request in flight when its session is ended: still answered.
    out = {}
    t = threading.Thread(target=lambda: out.update(r=s.call(
        "fitPCA", {"name": "late", "n_components": 16,
                   "embeddings": b64_tensor(x)})))
    t.start()
    time.sleep(0.2)
    st, _, _ = request(srv.port, "DELETE", headers={"Mcp-Session-Id": s.sid})
    assert st == 204
    t.join(60)
    st, reply = out["r"]
    assert st == 200 and reply["result"]["n_components"] == 16, reply
    st, _, _ = s.post({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert st == 404
    # The server goes on.
    assert Mcp(srv.port).initialize().result("ping") == {}
    assert srv.http("/health")[0] == 200


def bytes_received(srv):
    text = srv.http("/metrics")[2].decode()
    m = re.search(r"^mnemo_bytes_received_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_drain_answers_in_flight_and_refuses_new(start_server):
    # One worker, and about QUEUE_S seconds of fits queued behind it when
    # the signal comes (timed first, as test_shutdown.py does).
    QUEUE_S = 2.5
    srv = start_server({"server": {"rate_limit": 0, "drain_timeout": 30000},
                        "processing": {"workers": 1}})
    s = Mcp(srv.port).initialize()
    x = np.random.default_rng(4).standard_normal((2000, 384)).astype(
        np.float32)
    fit = {"name": "slow", "n_components": 32, "embeddings": b64_tensor(x)}
    per_fit = 1e9
    for _ in range(2):
        t0 = time.time()
        s.tool("fitPCA", fit)
        per_fit = min(per_fit, time.time() - t0)
    n = max(2, min(64, int(QUEUE_S / max(per_fit, 1e-3)) + 1))
    reqs = [json.dumps({"jsonrpc": "2.0", "id": i, "method": "fitPCA",
                        "params": dict(fit, name=f"m{i}")}).encode()
            for i in range(n)]
    results = {}

    def post(i):
        st, _, body = s.post(reqs[i])
        results[i] = (st, json.loads(body))

    base = bytes_received(srv)
    ts = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    t0 = time.time()
    while bytes_received(srv) - base < sum(len(r) for r in reqs):
        assert time.time() - t0 < 30, "requests never arrived"
        time.sleep(0.01)
    srv.send_signal(signal.SIGTERM)
    t1 = time.time()
    while srv.http("/ready")[0] == 200:
        assert time.time() - t1 < 5
        time.sleep(0.02)
    st, h, body = s.post({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    refused(st, h, body, 503, -32004, "shutting down")
    for t in ts:
        t.join(120)
    assert sorted(results) == list(range(n))
    for i, (st, reply) in results.items():
        assert st == 200, reply
        assert reply["id"] == i
        assert reply["result"]["n_components"] == 32, reply
    assert srv.proc.wait(60) == 0
