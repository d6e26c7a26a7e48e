"""64 concurrent clients, each with its own data, checking its own results;
pipelined requests on one connection answered by id; overload pushed back
(processing.queue_limit), and a stuck worker that does not stop reading."""
import asyncio
import json
import os
import time
import urllib.request

import numpy as np
import pytest

from helpers import (binary_frame, call, connect, decode_tensor, error_of,
                     normalize_ref, rel_err, result_of, split_binary)


async def client(url, seed, rounds):
    rng = np.random.default_rng(seed)
    async with connect(url) as ws:
        for r in range(rounds):
            rows = int(rng.integers(1, 40))
            width = int(rng.integers(2, 300))
            x = rng.standard_normal((rows, width)).astype(np.float32)
            if (seed + r) % 2:
                header = {"jsonrpc": "2.0", "id": f"{seed}-{r}",
                          "method": "processEmbeddings",
                          "params": {"embeddings": {
                              "dtype": "float32", "shape": [rows, width],
                              "buffer": {"offset": 0, "length": x.nbytes}},
                              "options": {"normalize": True}}}
                await ws.send(binary_frame(header, x.tobytes()))
                head, payload = split_binary(await ws.recv())
                assert head["id"] == f"{seed}-{r}"
                y = decode_tensor(head["result"]["processed"], payload)
            else:
                reply = await call(ws, "processEmbeddings", {
                    "embeddings": x.tolist(),
                    "options": {"normalize": True}}, rid=f"{seed}-{r}")
                y = decode_tensor(result_of(reply)["processed"])
            assert y.shape == (rows, width)
            assert rel_err(y, normalize_ref(x)) < 1e-6
    return seed


def test_64_concurrent_clients_get_their_own_results(server):
    async def go():
        return await asyncio.gather(*[client(server.url, s, 5)
                                      for s in range(64)])

    assert sorted(asyncio.run(go())) == list(range(64))


def test_pipelined_requests_on_one_connection(server):
    rng = np.random.default_rng(99)
    xs = [rng.standard_normal((int(rng.integers(1, 30)), 16)).astype(
        np.float32) for _ in range(40)]

    async def go():
        async with connect(server.url) as ws:
            for i, x in enumerate(xs):
                await ws.send(json.dumps({
                    "jsonrpc": "2.0", "id": i, "method": "processEmbeddings",
                    "params": {"embeddings": x.tolist(),
                               "options": {"normalize": True}}}))
            out = {}
            for _ in xs:
                reply = json.loads(await ws.recv())
                out[reply["id"]] = result_of(reply)
            return out

    out = asyncio.run(go())
    assert sorted(out) == list(range(40))
    for i, x in enumerate(xs):
        assert rel_err(decode_tensor(out[i]["processed"]),
                       normalize_ref(x)) < 1e-6


def test_overload_is_pushed_back_and_every_request_is_answered(start_server):
    """More pipelined work than processing.queue_limit: the server stops
    reading (TCP pushes back) instead of buffering it all, answers every
    request with its own result, and another client is served meanwhile."""
    srv = start_server({"server": {"rate_limit": 0},
                        "processing": {"workers": 1, "queue_limit": 1}})
    rng = np.random.default_rng(7)
    conns, per_conn, width = 6, 60, 768
    xs = [[rng.standard_normal((32, width)).astype(np.float32)
           for _ in range(per_conn)] for _ in range(conns)]

    async def flood(k):
        async with connect(srv.url, max_size=None) as ws:
            for i, x in enumerate(xs[k]):
                header = {"jsonrpc": "2.0", "id": f"{k}-{i}",
                          "method": "processEmbeddings",
                          "params": {"embeddings": {
                              "dtype": "float32", "shape": list(x.shape),
                              "buffer": {"offset": 0, "length": x.nbytes}},
                              "options": {"normalize": True}}}
                await ws.send(binary_frame(header, x.tobytes()))
            got = {}
            for _ in xs[k]:
                head, payload = split_binary(await ws.recv())
                got[head["id"]] = decode_tensor(head["result"]["processed"],
                                                payload)
            return k, got

    async def bystander():
        # While the flood is queued: a small request still gets through.
        await asyncio.sleep(0.05)
        async with connect(srv.url) as ws:
            t0 = asyncio.get_running_loop().time()
            reply = await call(ws, "processEmbeddings", {
                "embeddings": [[3.0, 4.0]], "options": {"normalize": True}})
            assert np.allclose(result_of(reply)["processed"], [[0.6, 0.8]])
            return asyncio.get_running_loop().time() - t0

    async def go():
        return await asyncio.gather(*[flood(k) for k in range(conns)],
                                    bystander())

    *floods, waited = asyncio.run(go())
    assert waited < 10
    for k, got in floods:
        assert sorted(got) == sorted(f"{k}-{i}" for i in range(per_conn))
        for i, x in enumerate(xs[k]):
            assert rel_err(got[f"{k}-{i}"], normalize_ref(x)) < 1e-6
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{srv.port}/metrics", timeout=10).read().decode()
    pauses = [float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith("mnemo_read_pauses_total ")]
    # 360 requests against a limit of 1: reading must have stopped.
    assert pauses and pauses[0] > 0, metrics[:2000]


def test_a_stuck_worker_does_not_stop_reading(start_server):
    """The only worker hangs on a device that stopped answering (a fake
    plugin whose ops sleep 10 s). The watchdog answers that request -32002
    after processing.timeout + 1 s; from then on it no longer counts against
    processing.queue_limit, so another client's pipelined requests are still
    read and each answered (-32002, the worker being stuck) long before the
    device comes back."""
    build = os.path.dirname(os.path.dirname(os.environ["MNEMOD"]))
    plugin = os.path.join(build, "tests", "fake_plugins",
                          "libfake_plugin_slow.so")
    if not os.path.exists(plugin):
        pytest.skip(f"{plugin} is not built")
    srv = start_server({"server": {"rate_limit": 0, "drain_timeout": 500},
                        "processing": {"workers": 1, "queue_limit": 1,
                                       "timeout": 200}},
                       args=("--device", "cuda"),
                       env={"MNEMO_BACKEND_PATH": plugin})
    big = np.ones((400, 768), np.float32)  # over gpu.min_elements: device

    async def go():
        async with connect(srv.url, max_size=None) as a, \
                connect(srv.url) as b:
            header = {"jsonrpc": "2.0", "id": "stuck",
                      "method": "processEmbeddings",
                      "params": {"embeddings": {
                          "dtype": "float32", "shape": list(big.shape),
                          "buffer": {"offset": 0, "length": big.nbytes}},
                          "options": {"normalize": True}}}
            await a.send(binary_frame(header, big.tobytes()))
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            for i in range(3):
                await b.send(json.dumps({
                    "jsonrpc": "2.0", "id": i, "method": "processEmbeddings",
                    "params": {"embeddings": [[3.0, 4.0]],
                               "options": {"normalize": True}}}))
            replies = [json.loads(await asyncio.wait_for(b.recv(), 9))
                       for _ in range(3)]
            waited = time.monotonic() - t0
            stuck = json.loads(await asyncio.wait_for(a.recv(), 9))
            return replies, waited, stuck

    replies, waited, stuck = asyncio.run(go())
    assert error_of(stuck, -32002)["data"] == {"timeout_ms": 200}
    assert sorted(r["id"] for r in replies) == [0, 1, 2]
    for r in replies:
        assert "processing.timeout" in error_of(r, -32002)["message"]
        # the watchdog's answer has the data the API promises for -32002
        assert error_of(r, -32002)["data"] == {"timeout_ms": 200}
    # Each waits timeout + 1 s in turn (the worker never frees up): about
    # 3.6 s for three; without the fix the second is not even read before
    # the device's 10 s are over.
    assert waited < 8, waited
