"""Limits and hostile clients: oversized messages (1009) while another
client keeps working, malformed traffic over a raw socket (bad handshake,
invalid UTF-8 -> 1007, garbage, unmasked and truncated frames), the
connection limit, allowed origins, auth tokens, the idle timeout and a
reader that never reads. After each, a second client is still served."""
import asyncio
import base64
import json
import os
import select
import socket
import struct
import time

import numpy as np
import pytest
import websockets

from helpers import (call, close_code, connect, frame, handshake,
                     read_frame, result_of)


def still_serving(srv):
    async def go():
        async with connect(srv.url) as ws:
            return result_of(await call(ws, "processEmbeddings", {
                "embeddings": [[3.0, 4.0]], "options": {"normalize": True}}))

    res = asyncio.run(go())
    assert np.allclose(res["processed"], [[0.6, 0.8]])


# ---------------------------------------------------------------------------
# Message size
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(start_server):
    return start_server({"server": {"max_message_size": "64KB",
                                    "rate_limit": 0}})


def test_oversized_message_is_closed_with_1009_while_others_work(small):
    async def steady(ws, stop):
        n = 0
        while not stop.is_set():
            res = result_of(await call(ws, "processEmbeddings", {
                "embeddings": [[0.0, 2.0]],
                "options": {"normalize": True}}, rid=n))
            assert np.allclose(res["processed"], [[0.0, 1.0]])
            n += 1
        return n

    async def go():
        async with connect(small.url) as good, connect(small.url) as bad:
            stop = asyncio.Event()
            worker = asyncio.create_task(steady(good, stop))
            await asyncio.sleep(0.05)
            big = json.dumps({"jsonrpc": "2.0", "id": 1,
                              "method": "processEmbeddings",
                              "params": {"embeddings": [[1.0] * 20000]}})
            assert len(big) > 64000
            await bad.send(big)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(bad.recv(), 10)
            await asyncio.sleep(0.05)
            stop.set()
            return info.value, await worker

    closed, served = asyncio.run(go())
    assert closed.code == 1009
    assert "max_message_size" in closed.reason
    assert served > 0


def test_oversized_fragmented_message_is_closed_early(small):
    s, head = handshake(small.port)
    assert head.startswith("HTTP/1.1 101")
    # A message in 20 KB fragments, heading for 400 KB: the server must
    # close with 1009 once the total passes 64 KB, without waiting for the
    # rest. Each fragment goes out only when the server has said nothing,
    # so that the close frame is not lost to a reset.
    s.sendall(frame(1, b"[" + b"1," * 10000, fin=False))
    sent = 20001
    while sent < 400_000:
        r, _, _ = select.select([s], [], [], 0.05)
        if r:
            break
        s.sendall(frame(0, b"1," * 10000, fin=False))
        sent += 20000
    assert sent < 200_000, "the server kept reading past the limit"
    assert close_code(s) == 1009
    s.close()
    still_serving(small)


def test_oversized_message_then_a_ping_still_closes_with_1009(small):
    # The close frame lws sends later came from the buffer it also stashes
    # ping payloads in: a ping right behind a message refused as too big
    # (or the rest of that message, misread as frames) went out as the
    # close frame's code and reason.
    for parts in ([frame(2, b"1" * 70000)],
                  [frame(1, b"1" * 40000, fin=False),
                   frame(0, b"1" * 40000, fin=False)]):
        s, head = handshake(small.port)
        assert head.startswith("HTTP/1.1 101")
        s.sendall(b"".join(parts) + frame(9, b"PING-" + b"p" * 60))
        s.settimeout(10)
        while True:
            op, payload = read_frame(s)
            if op == 8:
                break
            assert op == 10 and payload == b"PING-" + b"p" * 60
        s.close()
        assert struct.unpack("!H", payload[:2])[0] == 1009, payload
        assert b"max_message_size" in payload, payload
    still_serving(small)


# ---------------------------------------------------------------------------
# Malformed traffic
# ---------------------------------------------------------------------------
def test_bad_handshake_is_refused(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    s.close()
    assert not data.startswith(b"HTTP/1.1 101")
    still_serving(server)


def test_invalid_utf8_text_frame_is_closed_with_1007(server):
    s, head = handshake(server.port)
    assert head.startswith("HTTP/1.1 101")
    s.sendall(frame(1, b'{"jsonrpc": "2.0", "id": 1, "method": "\xff\xfe"}'))
    assert close_code(s) == 1007
    s.close()
    still_serving(server)


def raw_handshake(port, line="GET / HTTP/1.1", drop=(), **headers):
    """Send an opening handshake with these changes; (status, head, body)
    of the answer (status None when the server just closed)."""
    h = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket",
         "Connection": "Upgrade",
         "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
         "Sec-WebSocket-Version": "13"}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    for k in drop:
        del h[k]
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall((line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
               + "\r\n").encode())
    data = b""
    try:  # an error is followed by the end of the connection
        while not (data.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in data):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head.startswith(b"HTTP/") else None
    return status, head.decode(errors="replace"), body.decode(errors="replace")


def test_malformed_handshakes_get_an_error_that_says_why(server):
    # RFC 6455 4.2.1-4.2.2: a handshake that is not right is answered with
    # an HTTP error (lws 4.1 accepted a wrong version, key or method, and
    # dropped the connection without a word for a missing key, Host or
    # Connection: Upgrade).
    port = server.port
    cases = [
        ({"drop": ["Sec-WebSocket-Key"]}, 400, "Sec-WebSocket-Key"),
        ({"Sec_WebSocket_Key": "abc"}, 400, "Sec-WebSocket-Key"),
        ({"Sec_WebSocket_Key": base64.b64encode(b"x" * 15).decode()}, 400,
         "16 random bytes"),
        ({"drop": ["Sec-WebSocket-Version"]}, 400, "Sec-WebSocket-Version"),
        ({"Sec_WebSocket_Version": "8"}, 426, "version 13"),
        ({"drop": ["Connection"]}, 400, "Connection: Upgrade"),
        ({"Connection": "keep-alive"}, 400, "Connection: Upgrade"),
        ({"drop": ["Host"]}, 400, "Host"),
        ({"line": "POST / HTTP/1.1"}, 400, "GET"),
        ({"line": "GET  HTTP/1.1"}, 400, "path"),
    ]
    for kw, status, words in cases:
        got, head, body = raw_handshake(port, **kw)
        assert got == status, (kw, head, body)
        assert words in body, (kw, body)
        if status == 426:
            assert "Sec-WebSocket-Version: 13" in head, head
    # What RFC 6455 allows still upgrades: any case, more tokens, an
    # absolute URI.
    for kw in ({"Connection": "keep-alive, Upgrade"},
               {"Upgrade": "WebSocket", "Connection": "upgrade"},
               {"line": f"GET http://127.0.0.1:{port}/ HTTP/1.1"},
               {"line": "GET /?x=1 HTTP/1.1"}):
        got, head, body = raw_handshake(port, **kw)
        assert got == 101, (kw, head)
    still_serving(server)


def test_garbage_bytes_get_an_http_error(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(os.urandom(2000))
    try:
        data = s.recv(4096)
    except OSError:
        data = b""
    s.close()
    assert data == b"" or data.startswith(b"HTTP/1.")
    assert not data.startswith(b"HTTP/1.1 101")
    still_serving(server)


def test_malformed_close_frames_fail_the_connection(server):
    # RFC 6455 5.5.1: a close body is a 2-byte code and a UTF-8 reason.
    # lws 4.1 echoed a 1-byte body and a reason that is not UTF-8 back as
    # they came. Codes 7.4 does not allow get 1002; allowed ones are echoed.
    for body, code in ((b"\x03", 1002), (struct.pack("!H", 1000) + b"ok\xff",
                                         1007),
                       (struct.pack("!H", 1005), 1002),
                       (struct.pack("!H", 4000) + b"bye", 4000)):
        s, head = handshake(server.port)
        assert head.startswith("HTTP/1.1 101")
        s.sendall(frame(8, body))
        s.settimeout(10)
        op, payload = read_frame(s)
        s.close()
        assert op == 8 and struct.unpack("!H", payload[:2])[0] == code, \
            (body, payload)
        payload[2:].decode("utf-8")
    still_serving(server)


def test_unmasked_client_frame_does_not_disturb_others(server):
    # RFC 6455 wants a close (1002); libwebsockets 4.1 is lenient and reads
    # the frame. Either way the connection gets a well-formed answer and
    # the server goes on serving everyone else.
    s, head = handshake(server.port)
    assert head.startswith("HTTP/1.1 101")
    s.sendall(frame(1, b'{"jsonrpc":"2.0","method":"health","id":1}',
                    mask=False))
    s.settimeout(10)
    op, payload = read_frame(s)
    s.close()
    if op == 8:
        assert struct.unpack("!H", payload[:2])[0] == 1002
    else:
        assert op == 1
        reply = json.loads(payload)
        assert reply["id"] == 1 and reply["result"]["status"] == "ok"
    still_serving(server)


def test_truncated_frame_then_disconnect(server):
    s, head = handshake(server.port)
    assert head.startswith("HTTP/1.1 101")
    whole = frame(1, json.dumps({"jsonrpc": "2.0", "id": 1,
                                 "method": "health"}).encode() * 50)
    s.sendall(whole[: len(whole) // 2])
    s.close()
    # And a frame that claims 2^40 bytes.
    s, head = handshake(server.port)
    s.sendall(struct.pack("!BBQ", 0x82, 0xFF, 1 << 40) + os.urandom(4) +
              b"xx")
    try:
        code = close_code(s)
    except (ConnectionError, OSError):
        code = None
    s.close()
    assert code in (1009, None)
    still_serving(server)


def test_binary_frame_with_a_bad_header_gets_an_error(server):
    async def go():
        async with connect(server.url) as ws:
            await ws.send(b"\x03\x00")  # shorter than its length prefix
            r1 = await ws.recv()
            await ws.send(struct.pack("<I", 1000) + b"{}")  # N too large
            r2 = await ws.recv()
            return r1, r2

    for r in asyncio.run(go()):
        text = r if isinstance(r, str) else r[4:].decode(errors="replace")
        assert '"error"' in text
    still_serving(server)


# ---------------------------------------------------------------------------
# Connection limit, origins, tokens, idle timeout
# ---------------------------------------------------------------------------
def test_connection_limit_refuses_cleanly_and_counts(start_server):
    srv = start_server({"server": {"max_connections": 4, "rate_limit": 0}})

    async def go():
        conns = [await connect(srv.url) for _ in range(4)]
        with pytest.raises(websockets.InvalidStatusCode) as info:
            await connect(srv.url)
        assert info.value.status_code == 503
        for ws in conns:  # the four still work
            result_of(await call(ws, "health"))
        await conns[0].close()
        await asyncio.sleep(0.2)
        ws = await connect(srv.url)  # room again
        result_of(await call(ws, "health"))
        for c in conns[1:] + [ws]:
            await c.close()

    asyncio.run(go())
    text = srv.http("/metrics")[2].decode()
    refused = [float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("mnemo_connections_refused_total")]
    assert refused and refused[0] >= 1
    # The refusal is in the log, with the key to change.
    assert any("server.max_connections" in line for line in srv.log)


def test_subprotocols(server):
    async def go():
        async with connect(server.url, subprotocols=["mcp"]) as ws:
            assert ws.subprotocol == "mcp"
        async with connect(server.url, subprotocols=["other", "mcp"]) as ws:
            assert ws.subprotocol == "mcp"
        async with connect(server.url, subprotocols=None) as ws:
            assert ws.subprotocol is None
            result_of(await call(ws, "health"))
        with pytest.raises(websockets.InvalidStatusCode) as info:
            await connect(server.url, subprotocols=["graphql-ws"])
        assert info.value.status_code == 400

    asyncio.run(go())


@pytest.fixture(scope="module")
def guarded(start_server):
    return start_server({"server": {
        "allowed_origins": ["https://app.example"],
        "auth_tokens": ["s3cret-token"], "rate_limit": 0}})


def test_allowed_origins(guarded):
    auth = {"Authorization": "Bearer s3cret-token"}

    async def go():
        with pytest.raises(websockets.InvalidStatusCode) as info:
            await connect(guarded.url, origin="https://evil.example",
                          extra_headers=auth)
        assert info.value.status_code == 403
        async with connect(guarded.url, origin="https://app.example",
                           extra_headers=auth) as ws:
            result_of(await call(ws, "health"))
        # Not a browser: no Origin header at all is allowed.
        async with connect(guarded.url, extra_headers=auth) as ws:
            result_of(await call(ws, "health"))

    asyncio.run(go())


def test_auth_tokens(guarded):
    async def go():
        for headers, url in (({}, guarded.url),
                             ({"Authorization": "Bearer wrong"},
                              guarded.url),
                             ({}, guarded.url + "/?token=wrong")):
            with pytest.raises(websockets.InvalidStatusCode) as info:
                await connect(url, extra_headers=headers)
            assert info.value.status_code == 401
        async with connect(guarded.url, extra_headers={
                "Authorization": "Bearer s3cret-token"}) as ws:
            result_of(await call(ws, "health"))
        async with connect(guarded.url + "/?token=s3cret-token") as ws:
            result_of(await call(ws, "health"))

    asyncio.run(go())
    # Health checks stay open to load balancers.
    assert guarded.http("/health")[0] == 200


def test_idle_connections_are_closed(start_server):
    srv = start_server({"server": {"idle_timeout": 1, "rate_limit": 0}})

    async def go():
        async with connect(srv.url) as idle, connect(srv.url) as busy:
            t0 = time.time()
            while time.time() - t0 < 2.6:
                result_of(await call(busy, "health"))
                await asyncio.sleep(0.2)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(idle.recv(), 5)
            result_of(await call(busy, "health"))
            return info.value

    closed = asyncio.run(go())
    assert closed.code == 1000
    assert "idle" in closed.reason


def test_a_reader_that_never_reads_does_not_stall_others(server):
    s, head = handshake(server.port)
    assert head.startswith("HTTP/1.1 101")
    s.setblocking(False)
    msg = frame(1, json.dumps({
        "jsonrpc": "2.0", "id": 1, "method": "processEmbeddings",
        "params": {"embeddings": [[1.0] * 512] * 64}}).encode())
    t0 = time.time()
    pushed = off = 0
    while time.time() - t0 < 1.5:
        try:
            n = s.send(msg[off:])
            pushed += n
            off = (off + n) % len(msg)
        except BlockingIOError:
            time.sleep(0.01)
    assert pushed > len(msg)
    t1 = time.time()
    still_serving(server)
    assert time.time() - t1 < 5
    s.close()
    still_serving(server)
