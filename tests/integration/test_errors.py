"""Every JSON-RPC error code with its message: -32700, -32600, -32601,
-32602 (naming the parameter), -32000 (resource, with requested and
available), -32002 (timeout, a tiny processing.timeout) and -32003 (rate
limit, a small server.rate_limit)."""
import asyncio
import json

import numpy as np

from helpers import (b64_tensor, call, connect, error_of, result_of)


async def raw(ws, text):
    await ws.send(text)
    return json.loads(await asyncio.wait_for(ws.recv(), 30))


def test_parse_error_has_a_null_id(server):
    async def go():
        async with connect(server.url) as ws:
            a = await raw(ws, '{"jsonrpc": "2.0", "method": "health", "id": 1')
            b = await raw(ws, "not json at all")
            return a, b

    for reply in asyncio.run(go()):
        err = error_of(reply, -32700)
        assert reply["id"] is None
        assert "JSON" in err["message"] or "json" in err["message"]


def test_invalid_request(server):
    cases = [
        ('{"jsonrpc": "1.0", "method": "health", "id": 1}', "2.0", 1),
        ('{"method": "health", "id": 2}', "jsonrpc", 2),
        ('{"jsonrpc": "2.0", "id": 3}', "method", 3),
        ('{"jsonrpc": "2.0", "method": 5, "id": 4}', "method", 4),
        ('{"jsonrpc": "2.0", "method": "health", "id": {"a": 1}}', "id",
         None),
        ('{"jsonrpc": "2.0", "method": "health", "params": "x", "id": 6}',
         "params", 6),
        ('"just a string"', "object", None),
    ]

    async def go():
        async with connect(server.url) as ws:
            return [await raw(ws, text) for text, _, _ in cases]

    for (text, word, rid), reply in zip(cases, asyncio.run(go())):
        err = error_of(reply, -32600)
        assert word in err["message"], (text, err)
        assert reply["id"] == rid


def test_method_not_found_names_it_and_lists_the_methods(server):
    async def go():
        async with connect(server.url) as ws:
            return await call(ws, "processEmbedings", {}, rid="x")

    reply = asyncio.run(go())
    err = error_of(reply, -32601)
    assert reply["id"] == "x"
    assert "processEmbedings" in err["message"]
    assert "processEmbeddings" in err["message"]


def test_invalid_params_name_the_parameter(server):
    async def go():
        async with connect(server.url) as ws:
            out = []
            out.append(await call(ws, "processEmbeddings", {}, 1))
            out.append(await call(ws, "processEmbeddings",
                                  {"embeddings": "nope"}, 2))
            out.append(await call(ws, "processEmbeddings", {
                "embeddings": [[1.0, 2.0]],
                "options": {"normalize": "yes"}}, 3))
            out.append(await call(ws, "processEmbeddings",
                                  [[1.0, 2.0]], 4))
            out.append(await call(ws, "fitPCA", {
                "name": "a", "embeddings": [[1.0, 2.0], [3.0, 4.0]]}, 5))
            return out

    r = asyncio.run(go())
    assert "params.embeddings" in error_of(r[0], -32602)["message"]
    assert "params.embeddings" in error_of(r[1], -32602)["message"]
    assert "normalize" in error_of(r[2], -32602)["message"]
    assert "by name" in error_of(r[3], -32602)["message"]
    assert "n_components" in error_of(r[4], -32602)["message"]


def test_resource_error_has_requested_and_available(start_server):
    srv = start_server({"processing": {"cache_size": "64KB"},
                        "server": {"rate_limit": 0}})
    x = np.random.default_rng(1).standard_normal((256, 256)).astype(
        np.float32)

    async def go():
        async with connect(srv.url) as ws:
            big = await call(ws, "processEmbeddings", {
                "embeddings": b64_tensor(x), "options": {"normalize": True}})
            small = await call(ws, "processEmbeddings", {
                "embeddings": [[3.0, 4.0]], "options": {"normalize": True}},
                rid=2)
            return big, small

    big, small = asyncio.run(go())
    err = error_of(big, -32000)
    assert err["data"]["requested"] > err["data"]["available"] >= 0
    assert "cache_size" in err["message"]
    # A request that fits still goes through.
    assert np.allclose(result_of(small)["processed"], [[0.6, 0.8]])


def test_timeout_error(start_server):
    srv = start_server({"processing": {"timeout": 1},
                        "server": {"rate_limit": 0}})
    x = np.random.default_rng(2).standard_normal((4000, 256)).astype(
        np.float32)

    async def go():
        async with connect(srv.url) as ws:
            return await call(ws, "fitPCA", {
                "name": "slow", "embeddings": b64_tensor(x),
                "n_components": 64})

    err = error_of(asyncio.run(go()), -32002)
    assert "processing.timeout" in err["message"]


def test_rate_limit(start_server):
    srv = start_server({"server": {"rate_limit": 20}})

    async def go():
        async with connect(srv.url) as ws:
            for i in range(25):
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": i,
                                          "method": "health"}))
            replies = [json.loads(await ws.recv()) for _ in range(25)]
            # A batch counts each of its requests.
            await ws.send(json.dumps([{"jsonrpc": "2.0", "id": 100 + i,
                                       "method": "health"}
                                      for i in range(3)]))
            batch = json.loads(await ws.recv())
            return replies, batch

    replies, batch = asyncio.run(go())
    ok = [r for r in replies if "result" in r]
    limited = [r for r in replies if "error" in r]
    assert len(ok) == 20 and len(limited) == 5
    for r in limited:
        err = error_of(r, -32003)
        assert "server.rate_limit" in err["message"]
        assert err["data"]["retry_after_ms"] > 0
    assert isinstance(batch, dict)
    err = error_of(batch, -32003)
    assert err["data"]["requests"] == 3
    # Another connection has its own budget.
    assert result_of(asyncio.run(_health(srv)))["status"] == "ok"


async def _health(srv):
    async with connect(srv.url) as ws:
        return await call(ws, "health")
