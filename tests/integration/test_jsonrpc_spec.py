"""The JSON-RPC 2.0 specification's section 7 examples, adapted to mnemo's
methods (health stands in for the spec's "subtract" / "sum", getMetrics for
"get_data"; methods take their parameters by name). Replies to a batch may
come in any order, so they are matched by id."""
import asyncio
import json

import numpy as np
import pytest

from helpers import connect, error_of, result_of

PROBE = {"jsonrpc": "2.0", "id": "probe", "method": "health"}


async def exchange(ws, text, expect_reply=True):
    """Send text; return the parsed reply, or None when the server sends
    nothing (checked with a probe request whose reply must come first)."""
    await ws.send(text)
    if expect_reply:
        return json.loads(await asyncio.wait_for(ws.recv(), 30))
    await ws.send(json.dumps(PROBE))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert reply.get("id") == "probe", f"unexpected reply {reply}"
    return None


def run(server, text, expect_reply=True):
    async def go():
        async with connect(server.url) as ws:
            return await exchange(ws, text, expect_reply)

    return asyncio.run(go())


def test_call_with_named_params(server):
    r = run(server, '{"jsonrpc": "2.0", "method": "processEmbeddings", '
                    '"params": {"embeddings": [[3, 4]], "options": '
                    '{"normalize": true}}, "id": 3}')
    assert r["id"] == 3
    assert np.allclose(result_of(r)["processed"], [[0.6, 0.8]], rtol=1e-7)


def test_call_with_positional_params_is_invalid_params(server):
    # mnemo's methods take parameters by name only.
    r = run(server, '{"jsonrpc": "2.0", "method": "processEmbeddings", '
                    '"params": [42, 23], "id": 1}')
    assert r["id"] == 1
    error_of(r, -32602)


@pytest.mark.parametrize("rid", [0, 1, -7, 2.5, "abc", "", None])
def test_ids_of_every_kind_come_back_unchanged(server, rid):
    r = run(server, json.dumps({"jsonrpc": "2.0", "method": "health",
                                "id": rid}))
    assert r["id"] == rid and type(r["id"]) is type(rid)
    result_of(r)


def test_notification_gets_no_reply(server):
    assert run(server, '{"jsonrpc": "2.0", "method": "health"}',
               expect_reply=False) is None
    # Not even when it fails.
    assert run(server, '{"jsonrpc": "2.0", "method": "nope"}',
               expect_reply=False) is None
    assert run(server, '{"jsonrpc": "2.0", "method": "processEmbeddings", '
                       '"params": {}}', expect_reply=False) is None


def test_non_existent_method(server):
    r = run(server, '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
    assert r["id"] == "1"
    error_of(r, -32601)


def test_invalid_json(server):
    r = run(server, '{"jsonrpc": "2.0", "method": "foobar, "params": '
                    '"bar", "baz]')
    assert r["id"] is None
    error_of(r, -32700)


def test_invalid_request_object(server):
    r = run(server, '{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    assert r["id"] is None
    error_of(r, -32600)


def test_batch_invalid_json(server):
    r = run(server, '[{"jsonrpc": "2.0", "method": "health", "id": "1"},'
                    '{"jsonrpc": "2.0", "method"]')
    assert isinstance(r, dict) and r["id"] is None
    error_of(r, -32700)


def test_empty_array(server):
    r = run(server, "[]")
    assert isinstance(r, dict) and r["id"] is None
    error_of(r, -32600)


def test_invalid_batch_of_one(server):
    r = run(server, "[1]")
    assert isinstance(r, list) and len(r) == 1
    assert r[0]["id"] is None
    error_of(r[0], -32600)


def test_invalid_batch(server):
    r = run(server, "[1,2,3]")
    assert isinstance(r, list) and len(r) == 3
    for x in r:
        assert x["id"] is None
        error_of(x, -32600)


def test_mixed_batch(server):
    r = run(server, json.dumps([
        {"jsonrpc": "2.0", "method": "processEmbeddings",
         "params": {"embeddings": [[1, 0, 0]],
                    "options": {"normalize": True}}, "id": "1"},
        {"jsonrpc": "2.0", "method": "health"},
        {"jsonrpc": "2.0", "method": "processEmbeddings",
         "params": {"embeddings": [[0, 5]], "options": {"normalize": True}},
         "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"},
         "id": "5"},
        {"jsonrpc": "2.0", "method": "getMetrics", "id": "9"},
    ]))
    assert isinstance(r, list) and len(r) == 5
    by_id = {}
    for x in r:
        assert x["jsonrpc"] == "2.0"
        by_id.setdefault(x["id"], []).append(x)
    assert np.allclose(result_of(by_id["1"][0])["processed"], [[1, 0, 0]])
    assert np.allclose(result_of(by_id["2"][0])["processed"], [[0, 1]])
    error_of(by_id[None][0], -32600)
    error_of(by_id["5"][0], -32601)
    assert "memory" in result_of(by_id["9"][0])


def test_batch_of_notifications_gets_nothing(server):
    assert run(server, json.dumps([
        {"jsonrpc": "2.0", "method": "health"},
        {"jsonrpc": "2.0", "method": "getMetrics"},
    ]), expect_reply=False) is None


def test_reply_has_exactly_the_spec_members(server):
    ok = run(server, '{"jsonrpc": "2.0", "method": "health", "id": 1}')
    assert set(ok) == {"jsonrpc", "id", "result"}
    bad = run(server, '{"jsonrpc": "2.0", "method": "nope", "id": 2}')
    assert set(bad) == {"jsonrpc", "id", "error"}
    assert set(bad["error"]) <= {"code", "message", "data"}


def test_deep_nesting_is_refused(server):
    deep = "[" * 200 + "]" * 200
    r = run(server, '{"jsonrpc": "2.0", "method": "health", "id": 1, '
                    '"params": {"x": ' + deep + '}}')
    assert r["id"] in (1, None)
    assert r["error"]["code"] in (-32700, -32600, -32602)
    assert "depth" in r["error"]["message"] or \
        "nest" in r["error"]["message"]
