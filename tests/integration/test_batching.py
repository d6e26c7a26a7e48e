"""Dynamic batching of processEmbeddings: many concurrent clients send
different small jobs (normalize; normalize + int8; normalize + a stored
PCA model), and every reply must match a numpy reference computed for that
request alone (its own rows, scales, count, dimensions, zero_rows). With a
batching window the metrics must show merged runs; with
processing.batch_window_us 0 nothing may merge."""
import asyncio
import re
import signal

import numpy as np
import pytest

from helpers import (binary_frame, call, connect, decode_tensor,
                     normalize_ref, pca_ref, rel_err, result_of, rpc,
                     split_binary)

WIDTH = 64
K = 12
CLIENTS = 48
ROUNDS = 6
KINDS = ("normalize", "int8", "pca")


def fit_data():
    """Rows with well separated variances, so that the fitted components
    are sharp and the numpy reference agrees with the server's."""
    rng = np.random.default_rng(7)
    scale = 0.8 ** np.arange(WIDTH)
    return (rng.standard_normal((2000, WIDTH)) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def pca_model():
    mean, comps, _, _ = pca_ref(fit_data(), K)
    return mean, comps


def fit(server):
    x = fit_data()
    reply = rpc(server, "fitPCA", {"name": "bm", "n_components": K,
                                   "embeddings": x.tolist()})
    assert result_of(reply)["n_components"] == K


def options(kind):
    if kind == "normalize":
        return {"normalize": True}
    if kind == "int8":
        return {"normalize": True, "quantization": "int8"}
    return {"normalize": True, "pca_model": "bm"}


def check(kind, x, res, payload, model):
    meta = res["metadata"]
    rows = x.shape[0]
    y = normalize_ref(x)
    zero = int((np.abs(x).max(axis=1) == 0).sum())
    assert meta["count"] == rows, meta
    assert meta["zero_rows"] == zero, meta
    got = decode_tensor(res["processed"], payload)
    if kind == "normalize":
        assert meta["dimensions"] == WIDTH and meta["dtype"] == "float32"
        assert got.shape == (rows, WIDTH)
        assert rel_err(got, y) < 1e-6
        assert "scales" not in res
    elif kind == "int8":
        assert meta["dimensions"] == WIDTH and meta["dtype"] == "int8"
        scales = np.asarray(res["scales"], dtype=np.float64)
        assert scales.shape == (rows,)
        want_s = np.abs(y).max(axis=1) / 127
        assert np.all(np.abs(scales - want_s) <= 1e-6 * want_s + 1e-30)
        safe = np.where(want_s > 0, want_s, 1)[:, None]
        want = np.where(want_s[:, None] > 0, np.rint(y / safe), 0)
        assert got.shape == (rows, WIDTH)
        assert np.abs(got.astype(np.int64) - want).max() <= 1
    else:
        mean, comps = model
        want = (y - mean) @ comps.T
        assert meta["dimensions"] == K and meta["pca_model"] == "bm"
        assert got.shape == (rows, K)
        assert rel_err(got, want) < 2e-4


def make_jobs(seed, rounds):
    """One client's jobs: (id, kind, rows) of its own data."""
    rng = np.random.default_rng(1000 + seed)
    jobs = []
    for r in range(rounds):
        kind = KINDS[(seed + r) % 3]
        rows = int(rng.integers(1, 25))
        x = rng.standard_normal((rows, WIDTH)).astype(np.float32)
        if kind != "pca" and rows > 2 and (seed + r) % 4 == 0:
            x[1] = 0  # a zero row, this request's own
        jobs.append((f"{seed}-{r}", kind, x))
    return jobs


def frame(rid, kind, x):
    header = {"jsonrpc": "2.0", "id": rid, "method": "processEmbeddings",
              "params": {"embeddings": {
                  "dtype": "float32", "shape": list(x.shape),
                  "buffer": {"offset": 0, "length": x.nbytes}},
                  "options": options(kind)}}
    return binary_frame(header, x.tobytes())


def run_clients(server, model, clients=CLIENTS, rounds=ROUNDS):
    """Every client sends all its jobs while the server is stopped
    (SIGSTOP), so that they arrive together when it goes on (SIGCONT):
    a burst from many clients at once, whatever the speed of this Python
    process. Then each client checks each of its replies against its own
    reference. Returns how many replies say they were batched."""

    async def receive(ws, jobs):
        sent = {rid: (kind, x) for rid, kind, x in jobs}
        batched = 0
        for _ in jobs:
            head, payload = split_binary(await asyncio.wait_for(ws.recv(),
                                                                60))
            kind, x = sent.pop(head["id"])
            res = result_of(head)
            check(kind, x, res, payload, model)
            batched += res["metadata"].get("batched_with", 0) > 0
        assert not sent
        return batched

    async def go():
        conns = [await connect(server.url) for _ in range(clients)]
        jobs = [make_jobs(s, rounds) for s in range(clients)]
        server.send_signal(signal.SIGSTOP)
        try:
            for r in range(rounds):  # round-robin over the clients
                for ws, js in zip(conns, jobs):
                    await ws.send(frame(*js[r]))
        finally:
            server.send_signal(signal.SIGCONT)
        try:
            return sum(await asyncio.gather(*[
                receive(ws, js) for ws, js in zip(conns, jobs)]))
        finally:
            for ws in conns:
                await ws.close()

    return asyncio.run(go())


def counters(server):
    return result_of(rpc(server, "getMetrics"))["counters"]


def server_model(server, model):
    """numpy's model with each component's sign as the server has it (a
    component is defined up to its sign), learnt from one request that
    runs alone: rows mean + component i project to +-1 on component i."""
    mean, comps = model
    x = (mean + comps).astype(np.float32)
    reply = rpc(server, "processEmbeddings", {
        "embeddings": x.tolist(), "options": {"pca_model": "bm"}})
    got = decode_tensor(result_of(reply)["processed"])
    signs = np.sign(np.diag(got))
    assert np.all(np.abs(np.abs(np.diag(got)) - 1) < 1e-3), got
    return mean, comps * signs[:, None]


def test_concurrent_jobs_merge_and_each_gets_its_own_result(start_server,
                                                            pca_model):
    server = start_server({"server": {"rate_limit": 0},
                           "processing": {"batch_window_us": 20000,
                                          "workers": 8}})
    fit(server)
    model = server_model(server, pca_model)
    before = counters(server)
    assert before["batches"] == 0 and before["batched_jobs"] == 0
    batched_replies = run_clients(server, model)
    c = counters(server)
    assert c["batches"] > 0, c
    assert c["batched_jobs"] >= 2 * c["batches"], c
    assert c["batched_rows"] >= c["batched_jobs"], c
    assert batched_replies == c["batched_jobs"], (batched_replies, c)
    status, _, body = server.http("/metrics")
    assert status == 200
    m = re.search(rb"^mnemo_batches_total (\d+)$", body, re.M)
    assert m and int(m.group(1)) == c["batches"]
    assert re.search(rb"^mnemo_batched_jobs_total \d+$", body, re.M)
    assert re.search(rb"^mnemo_batched_rows_total \d+$", body, re.M)


def test_window_zero_merges_nothing(start_server, pca_model):
    server = start_server({"server": {"rate_limit": 0},
                           "processing": {"batch_window_us": 0,
                                          "workers": 8}})
    fit(server)
    model = server_model(server, pca_model)
    batched_replies = run_clients(server, model, clients=24, rounds=4)
    assert batched_replies == 0
    c = counters(server)
    # Batching off: its counters are not even registered.
    assert c.get("batches", 0) == 0 and c.get("batched_jobs", 0) == 0, c


def test_lone_client_never_batches(start_server, pca_model):
    """One client, one request at a time: nothing to merge with, and no
    window waited for."""
    server = start_server({"server": {"rate_limit": 0},
                           "processing": {"batch_window_us": 100000}})
    rng = np.random.default_rng(5)

    async def go():
        async with connect(server.url) as ws:
            for i in range(20):
                x = rng.standard_normal((32, WIDTH)).astype(np.float32)
                res = result_of(await call(ws, "processEmbeddings", {
                    "embeddings": x.tolist(),
                    "options": {"normalize": True}}, rid=i))
                assert "batched_with" not in res["metadata"]
                assert rel_err(decode_tensor(res["processed"]),
                               normalize_ref(x)) < 1e-6

    asyncio.run(go())
    c = counters(server)
    assert c["batches"] == 0 and c["batch_lone_waits"] == 0, c
