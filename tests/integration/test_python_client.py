"""The Python client (clients/python/mnemo_client), imported by path,
against a real mnemod: every method through both faces (AsyncClient and
the blocking Client), results checked against numpy references computed
here in float64; numpy inputs (binary frames) against list inputs (JSON);
binary replies as views of the received frame; the typed errors with their
fields; the client's own timeout; a server killed or stopped with requests
in flight; the auth token; 100 requests at once on one connection."""
import asyncio
import concurrent.futures
import functools
import inspect
import json
import os
import signal
import struct
import sys
import threading
import time

import numpy as np
import pytest

from helpers import (ROOT, align_signs, bf16_ref, normalize_ref, pca_ref,
                     rel_err)

sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
import mnemo_client as mc  # noqa: E402
from mnemo_client import wire  # noqa: E402

RNG = np.random.default_rng(31337)
FACES = ["async", "sync"]


def drive(url, face, body, **kw):
    """Run `async def body(c)` with a client of the given face. The sync
    Client's methods block (the test's own event loop waits with them);
    `await R(...)` takes either face's return value."""

    async def main():
        if face == "async":
            async with mc.connect(url, **kw) as c:
                return await body(c)
        with mc.Client(url, **kw) as c:
            return await body(c)

    return asyncio.run(main())


async def R(x):
    return await x if inspect.isawaitable(x) else x


def launch(face, c, pool, method, *args, **kw):
    """Start a call without waiting for it: a task (async) or a thread
    (sync); either way an awaitable."""
    if face == "async":
        return asyncio.ensure_future(getattr(c, method)(*args, **kw))
    return asyncio.get_running_loop().run_in_executor(
        pool, functools.partial(getattr(c, method), *args, **kw))


def assert_frame_view(a):
    """`a` is a read-only numpy view into a received binary frame (a bytes
    object), 8-byte aligned in it: no copy was made."""
    assert isinstance(a, np.ndarray)
    assert not a.flags.owndata and not a.flags.writeable
    root = a
    while isinstance(root, np.ndarray):
        root = root.base
    assert isinstance(root, bytes), type(root)
    start = np.frombuffer(root, dtype=np.uint8).ctypes.data
    off = a.ctypes.data - start
    assert 0 < off and off + a.nbytes <= len(root)
    assert off % 8 == 0 and a.flags.aligned
    (n,) = struct.unpack_from("<I", root, 0)
    assert off >= 4 + n  # in the payload, past the JSON


def as32(v):
    return np.asarray(v, dtype=np.float32)


# ---------------------------------------------------------------------------
# processEmbeddings
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("face", FACES)
def test_process_embeddings_against_numpy(server, face):
    x = RNG.standard_normal((9, 33)).astype(np.float32)
    x[4] = 0

    async def body(c):
        out = {}
        out["arr"] = await R(c.process_embeddings(x, normalize=True))
        out["list"] = await R(c.process_embeddings(x.tolist(),
                                                   normalize=True))
        out["f64"] = await R(c.process_embeddings(x.astype(np.float64),
                                                  options={"normalize": True}))
        out["rows"] = await R(c.process_embeddings(list(x), normalize=True))
        out["list_bin"] = await R(c.process_embeddings(
            x.tolist(), normalize=True, encoding="binary"))
        out["vec"] = await R(c.process_embeddings(x[0], normalize=True,
                                                  chat_id="c1"))
        for q in ("int8", "int4", "binary", "fp16", "bf16", "int8_affine"):
            out[q] = (await R(c.process_embeddings(x, quantization=q)),
                      await R(c.process_embeddings(x.tolist(),
                                                   quantization=q)))
        return out

    out = drive(server.url, face, body)
    y = out["arr"]["processed"]
    assert y.dtype == np.float32 and y.shape == x.shape
    assert_frame_view(y)
    assert rel_err(y, normalize_ref(x)) < 1e-6
    assert np.all(y[4] == 0) and out["arr"]["metadata"]["zero_rows"] == 1
    # JSON in, JSON out: the same float32 values exactly
    assert isinstance(out["list"]["processed"], list)
    assert np.array_equal(as32(out["list"]["processed"]), y)
    for k in ("f64", "rows", "list_bin"):
        assert np.array_equal(out[k]["processed"], y), k
    assert_frame_view(out["list_bin"]["processed"])
    v = out["vec"]
    assert v["processed"].shape == (33,) and v["metadata"]["chatId"] == "c1"
    assert np.array_equal(v["processed"], y[0])

    # int8: one scale per row, max |x| / 127; codes within half a step
    res, jres = out["int8"]
    codes, scales = res["processed"], np.asarray(res["scales"])
    assert codes.dtype == np.int8 and codes.shape == x.shape
    assert_frame_view(codes)
    ref_scale = np.abs(x.astype(np.float64)).max(axis=1) / 127
    nz = ref_scale > 0
    assert np.allclose(scales[nz], ref_scale[nz], rtol=1e-6)
    assert np.abs(codes[nz] - x[nz] / ref_scale[nz, None]).max() <= 0.5 + 1e-4
    # int4: codes -7..7, scale max / 7
    res4 = out["int4"][0]
    c4, s4 = res4["processed"], np.asarray(res4["scales"])
    assert c4.dtype == np.int8 and c4.shape == x.shape
    assert np.all(np.abs(c4) <= 7)
    assert np.abs(c4 * s4[:, None] - x).max() <= 0.5 * s4.max() * (1 + 1e-5)
    # binary: 1 where > 0
    assert np.array_equal(out["binary"][0]["processed"], (x > 0).astype(
        np.uint8))
    assert np.array_equal(out["bf16"][0]["processed"], bf16_ref(x))
    assert np.array_equal(out["fp16"][0]["processed"], x.astype(np.float16))
    assert_frame_view(out["fp16"][0]["processed"])
    ra = out["int8_affine"][0]
    assert ra["processed"].dtype == np.uint8
    assert np.allclose(ra["affine"]["vmin"], x.min(axis=0), atol=1e-6)
    # every quantization: the binary reply holds the JSON reply's values
    for q in ("int8", "int4", "binary", "fp16", "bf16", "int8_affine"):
        b, j = out[q]
        assert np.array_equal(as32(j["processed"]),
                              b["processed"].astype(np.float32)), q
        assert b["metadata"]["dtype"] == j["metadata"]["dtype"]
        for key in ("scales", "affine"):
            assert b.get(key) == j.get(key), (q, key)


def test_unpack_false_gives_views_of_the_packed_codes(server):
    x = RNG.standard_normal((5, 21)).astype(np.float32)

    async def body(c):
        return [await c.process_embeddings(x, quantization=q)
                for q in ("binary", "int4", "bf16")] + [
            await c.process_embeddings(x.tolist(), quantization="int4")]

    binary, int4, bf16, int4_json = drive(server.url, "async", body,
                                          unpack=False)
    b = binary["processed"]
    assert b.dtype == np.uint8 and b.shape == (5, 3)
    assert_frame_view(b)
    assert np.array_equal(b, np.packbits(x > 0, axis=1, bitorder="little"))
    p = int4["processed"]
    assert p.dtype == np.uint8 and p.shape == (5, 11)
    codes = np.asarray(int4_json["processed"], dtype=np.int16)
    codes = np.concatenate([codes, np.zeros((5, 1), np.int16)], axis=1) & 0xF
    assert np.array_equal(p, (codes[:, 0::2] | codes[:, 1::2] << 4).astype(
        np.uint8))
    h = bf16["processed"]
    assert h.dtype == np.uint16 and h.shape == x.shape
    assert np.array_equal(h, (bf16_ref(x).view(np.uint32) >> 16).astype(
        np.uint16))


@pytest.mark.parametrize("face", FACES)
def test_fit_pca_and_use_the_model(server, face):
    x = RNG.standard_normal((200, 24)).astype(np.float32)
    x[:, :3] *= [8, 5, 3]
    name = f"pyc-pca-{face}"

    async def body(c):
        fit = await R(c.fit_pca(name, x, n_components=4))
        models = await R(c.list_pca_models())
        reduced = await R(c.process_embeddings(x, pca_model=name))
        reduced_json = await R(c.process_embeddings(x[:10].tolist(),
                                                    pca_model=name))
        deleted = await R(c.delete_pca_model(name))
        again = await R(c.delete_pca_model(name))
        return fit, models, reduced, reduced_json, deleted, again

    fit, models, reduced, reduced_json, deleted, again = drive(
        server.url, face, body)
    mean, comps, _, ratio = pca_ref(x, 4)
    assert fit["name"] == name and fit["n_components"] == 4
    assert fit["input_dim"] == 24 and fit["n_samples"] == 200
    assert np.allclose(fit["explained_variance_ratio"], ratio, rtol=1e-3)
    assert name in [m["name"] for m in models["models"]]
    ref = (x.astype(np.float64) - mean) @ comps.T
    y = reduced["processed"]
    assert y.shape == (200, 4)
    assert rel_err(align_signs(y, ref), ref) < 2e-3
    assert np.allclose(as32(reduced_json["processed"]), y[:10], atol=1e-5)
    assert deleted == {"name": name, "deleted": True}
    assert again["deleted"] is False


# ---------------------------------------------------------------------------
# Collections and memories
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("face", FACES)
def test_memories_and_search_against_brute_force(server, face):
    dim = 16
    emb = RNG.standard_normal((61, dim)).astype(np.float32)
    queries = RNG.standard_normal((5, dim)).astype(np.float32)
    coll = f"pyc-notes-{face}"
    ids = [f"n{i}" for i in range(60)]

    async def body(c):
        out = {"created": await R(c.create_collection(coll, dim,
                                                      metric="cosine"))}
        # numpy embeddings inside the memory dicts: one binary frame
        await R(c.add_memories(coll, [
            {"id": ids[i], "embedding": emb[i], "content": f"memory {i}",
             "chatId": "even" if i % 2 == 0 else "odd",
             "metadata": {"i": i}} for i in range(30)]))
        # the vectors as one tensor beside the memories
        await R(c.add_memories(coll, [
            {"id": ids[i], "content": f"memory {i}",
             "chatId": "even" if i % 2 == 0 else "odd"}
            for i in range(30, 50)], embeddings=emb[30:50]))
        # JSON lists
        added = await R(c.add_memories(coll, [
            {"id": ids[i], "embedding": emb[i].tolist(),
             "content": f"memory {i}",
             "chatId": "even" if i % 2 == 0 else "odd"}
            for i in range(50, 60)]))
        out["added"] = added
        out["stored"] = await R(c.store_memory(coll, emb[60], "the last one",
                                               chat_id="even",
                                               metadata={"last": True}))
        out["list"] = await R(c.list_collections())
        out["coll"] = await R(c.get_collection(coll))
        out["hits"] = await R(c.search_memories(coll, queries, k=7,
                                                significance_weight=0))
        out["hits_json"] = await R(c.search_memories(
            coll, queries.tolist(), k=7, significance_weight=0))
        out["even"] = await R(c.search_memories(
            coll, queries[0], k=5, filter={"chatId": "even"}))
        out["got"] = await R(c.get_memories(
            coll, [ids[3], "nope"], include=["content", "metadata",
                                             "embedding"]))
        out["updated"] = await R(c.update_memory(
            coll, ids[3], content="changed", metadata={"k": 1},
            significance=0.9))
        out["got2"] = await R(c.get_memories(coll, [ids[3]]))
        out["deleted"] = await R(c.delete_memories(coll, [ids[3], "nope"]))
        out["dropped"] = await R(c.drop_collection(coll))
        return out

    out = drive(server.url, face, body)
    assert out["created"]["dim"] == dim
    assert out["created"]["metric"] == "cosine"
    assert out["created"]["count"] == 0
    assert out["added"] == {"ids": ids[50:], "count": 10}
    stored = out["stored"]
    assert isinstance(stored, str) and stored.startswith("m_")
    assert coll in [c["name"] for c in out["list"]["collections"]]
    assert out["coll"]["count"] == 61
    all_ids = ids + [stored]
    # brute force cosine in float64
    e = normalize_ref(emb)
    sims = normalize_ref(queries) @ e.T
    hits = out["hits"]["results"]
    assert len(hits) == 5
    for qi, row in enumerate(hits):
        order = np.argsort(-sims[qi], kind="stable")[:7]
        assert [h["id"] for h in row] == [all_ids[j] for j in order]
        assert np.allclose([h["similarity"] for h in row], sims[qi, order],
                           atol=1e-5)
    assert out["hits_json"]["results"] == hits
    even = out["even"]["results"][0]
    assert len(even) == 5 and all(h["chatId"] == "even" for h in even)
    even_idx = [j for j in range(61) if j % 2 == 0]
    best = sorted(even_idx, key=lambda j: -sims[0, j])[:5]
    assert [h["id"] for h in even] == [all_ids[j] for j in best]
    got = out["got"]
    assert got["missing"] == ["nope"] and got["count"] == 1
    m = got["memories"][0]
    assert m["id"] == ids[3] and m["content"] == "memory 3"
    assert m["metadata"] == {"i": 3} and m["chatId"] == "odd"
    assert np.array_equal(as32(m["embedding"]), emb[3])
    up = out["updated"]
    assert up["content"] == "changed" and up["metadata"] == {"k": 1}
    assert abs(up["significance"] - 0.9) < 1e-6
    assert out["got2"]["memories"][0]["content"] == "changed"
    assert out["deleted"] == {"deleted": 1, "missing": ["nope"]}
    assert out["dropped"]["dropped"] is True
    assert out["dropped"]["count"] == 60


# ---------------------------------------------------------------------------
# Working chunks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("face", FACES)
def test_chunk_api_and_resource_error(server, face):
    x = RNG.standard_normal((10, 16)).astype(np.float32)
    more = RNG.standard_normal((60, 16)).astype(np.float32)
    chat, chunk = f"pyc-chat-{face}", f"pyc-chunk-{face}"

    async def body(c):
        out = {"alloc": await R(c.allocate_memory(4096, chat_id=chat,
                                                  chunk_id=chunk))}
        out["wrote"] = await R(c.process_chunk(chunk, x, normalize=True))
        out["read"] = await R(c.read_chunk(chunk))
        out["read_json"] = await R(c.read_chunk(chunk, encoding="json"))
        out["listed"] = await R(c.list_chunks(chat))
        with pytest.raises(mc.ResourceError) as info:
            await R(c.process_chunk(chunk, more))
        out["err"] = info.value
        out["freed"] = await R(c.free_memory(chunk))
        out["freed2"] = await R(c.free_memory(chunk))
        return out

    out = drive(server.url, face, body)
    assert out["alloc"]["chunkId"] == chunk and out["alloc"]["size"] == 4096
    w = out["wrote"]
    assert (w["rows"], w["width"], w["used"], w["written"]) == (10, 16, 640,
                                                                10)
    rows = out["read"]["embeddings"]
    assert_frame_view(rows)
    assert rows.dtype == np.float32 and rows.shape == (10, 16)
    assert rel_err(rows, normalize_ref(x)) < 1e-6
    assert np.array_equal(as32(out["read_json"]["embeddings"]), rows)
    assert out["listed"]["count"] == 1
    assert out["listed"]["chunks"][0]["id"] == chunk
    err = out["err"]
    assert err.code == -32000 and isinstance(err, mc.MnemoError)
    assert err.requested == 60 * 16 * 4 and err.available == 4096 - 640
    assert err.data == {"requested": err.requested,
                        "available": err.available}
    assert len(err.message) > 10
    assert out["freed"] == {"chunkId": chunk, "freed": True}
    assert out["freed2"]["freed"] is False


# ---------------------------------------------------------------------------
# Server information, MCP, generic call
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("face", FACES)
def test_health_metrics_cleanup_mcp_and_call(server, face):
    async def body(c):
        return (await R(c.health()), await R(c.get_metrics()),
                await R(c.cleanup()), await R(c.ping()),
                await R(c.list_tools()),
                await R(c.call_tool("processEmbeddings", {
                    "embeddings": [[3, 4]], "options": {"normalize": True}})),
                await R(c.call("processEmbeddings", {
                    "embeddings": np.array([[0.0, 2.0]], np.float32),
                    "options": {"normalize": True}})))

    health, metrics, cleanup, ping, tools, tool, called = drive(
        server.url, face, body)
    assert health["status"] == "ok" and health["state"] in (
        "normal", "high_load", "recovery")
    assert metrics["memory"]["cache_size"] > 0
    assert metrics["hpc"]["backend"] == health["backend"]
    assert metrics["counters"]  # the requests above were counted
    assert cleanup["freed_bytes"] >= 0 and "rss_after" in cleanup
    assert ping == {}
    assert {"processEmbeddings", "searchMemories"} <= {t["name"]
                                                       for t in tools}
    assert tool["isError"] is False
    assert tool["structuredContent"]["processed"] == [[0.6, 0.8]]
    assert np.array_equal(called["processed"], [[0.0, 1.0]])


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("face", FACES)
def test_typed_errors_leave_the_connection_usable(server, face):
    async def body(c):
        errs = []
        for call in (lambda: c.create_collection("bad name!", 3),
                     lambda: c.process_embeddings(np.ones((2, 3)),
                                                  quantization="int7"),
                     lambda: c.call("noSuchMethod", {"x": 1})):
            with pytest.raises(mc.MnemoError) as info:
                await R(call())
            errs.append(info.value)
        # what JSON cannot carry is refused before anything is sent
        with pytest.raises(ValueError, match="processEmbeddings"):
            await R(c.process_embeddings([[1.0, float("nan")]]))
        errs.append(await R(c.health()))
        return errs

    bad_name, bad_q, unknown, health = drive(server.url, face, body)
    assert type(bad_name) is mc.InvalidParams and bad_name.code == -32602
    assert "name" in bad_name.message
    assert type(bad_q) is mc.InvalidParams
    assert "quantization" in bad_q.message and "int7" in bad_q.message
    assert type(unknown) is mc.MethodNotFound and unknown.code == -32601
    assert "noSuchMethod" in unknown.message
    assert "[-32601]" in str(unknown)
    assert health["status"] == "ok"


def test_nan_in_an_array_is_refused_naming_row_and_column(server):
    async def body(c):
        with pytest.raises(mc.InvalidParams) as info:
            await c.process_embeddings(np.array([[1.0, 2.0], [3.0, np.nan]]))
        return info.value

    err = drive(server.url, "async", body)
    assert "row 1, column 1" in err.message and "embeddings" in err.message


def test_every_documented_code_has_its_class():
    classes = {-32700: mc.ParseError, -32600: mc.InvalidRequest,
               -32601: mc.MethodNotFound, -32602: mc.InvalidParams,
               -32603: mc.InternalError, -32000: mc.ResourceError,
               -32001: mc.ProcessingError, -32002: mc.RequestTimeout,
               -32003: mc.RateLimited, -32004: mc.Overloaded}
    for code, cls in classes.items():
        e = mc.error_from_reply({"code": code, "message": "m", "data": {
            "requested": 5, "available": 2, "timeout_ms": 7,
            "retry_after_ms": 9}})
        assert type(e) is cls and e.code == code and e.message == "m"
        assert isinstance(e, mc.MnemoError)
    e = mc.error_from_reply({"code": -32000, "message": "m",
                             "data": {"requested": 5, "available": 2}})
    assert (e.requested, e.available) == (5, 2)
    assert mc.error_from_reply({"code": -32002, "message": "m", "data": {
        "timeout_ms": 7}}).timeout_ms == 7
    assert mc.error_from_reply({"code": -32003, "message": "m", "data": {
        "retry_after_ms": 9}}).retry_after_ms == 9
    other = mc.error_from_reply({"code": -1, "message": "m"})
    assert type(other) is mc.MnemoError and other.data is None
    assert issubclass(mc.RequestTimeout, TimeoutError)
    assert issubclass(mc.ClientTimeout, mc.RequestTimeout)
    assert issubclass(mc.ConnectionLost, ConnectionError)
    assert issubclass(mc.ConnectFailed, ConnectionError)


@pytest.fixture(scope="module")
def limited(start_server):
    return start_server({"processing": {"timeout": 1},
                         "server": {"rate_limit": 20}})


@pytest.mark.parametrize("face", FACES)
def test_server_timeout_and_rate_limit(limited, face):
    x = RNG.standard_normal((4000, 256)).astype(np.float32)

    async def body(c):
        with pytest.raises(mc.RequestTimeout) as info:
            await R(c.fit_pca("slow", x, n_components=64))
        outcomes = []
        for _ in range(24):
            try:
                outcomes.append(await R(c.health()))
            except (mc.RateLimited, mc.RequestTimeout) as e:
                # on a loaded machine even health may take over 1 ms
                outcomes.append(e)
        return info.value, outcomes

    timeout, outcomes = drive(limited.url, face, body)
    assert type(timeout) is mc.RequestTimeout and timeout.code == -32002
    assert timeout.timeout_ms == 1 and "processing.timeout" in timeout.message
    limited_ = [o for o in outcomes if isinstance(o, mc.RateLimited)]
    # 20 per minute, the fit included
    assert len(limited_) == 5 and len(outcomes) - len(limited_) == 19
    for e in limited_:
        assert e.code == -32003 and e.retry_after_ms > 0


@pytest.mark.parametrize("face", FACES)
def test_client_timeout_keeps_the_connection(server, face):
    x = RNG.standard_normal((3000, 256)).astype(np.float32)

    async def body(c):
        t0 = time.monotonic()
        with pytest.raises(mc.ClientTimeout) as info:
            await R(c.fit_pca(f"late-{face}", x, n_components=32,
                              timeout=0.001))
        waited = time.monotonic() - t0
        # the connection goes on; the late reply is dropped when it comes
        small = await R(c.process_embeddings([[3, 4]], normalize=True))
        again = await R(c.fit_pca(f"late-{face}", x[:100], n_components=2,
                                  timeout=60))
        return info.value, waited, small, again, c.in_flight, c.closed

    err, waited, small, again, in_flight, closed = drive(server.url, face,
                                                         body)
    assert isinstance(err, mc.RequestTimeout) and isinstance(err,
                                                             TimeoutError)
    assert err.code is None and err.timeout == 0.001
    assert "fitPCA" in str(err)
    assert waited < 5
    assert np.allclose(small["processed"], [[0.6, 0.8]])
    assert again["n_samples"] == 100
    assert in_flight == 0 and not closed


# ---------------------------------------------------------------------------
# The connection going away
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("face", FACES)
def test_server_killed_mid_request_fails_what_is_in_flight(start_server,
                                                            face):
    srv = start_server({"server": {"rate_limit": 0},
                        "processing": {"workers": 1}})
    x = RNG.standard_normal((1000, 256)).astype(np.float32)
    n = 20

    async def body(c):
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            calls = [launch(face, c, pool, "fit_pca", f"k{i}", x,
                            n_components=16) for i in range(n)]
            done, _ = await asyncio.wait(calls,
                                         return_when=asyncio.FIRST_COMPLETED)
            srv.proc.kill()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        deadline = time.monotonic() + 10
        while not c.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        with pytest.raises(mc.ConnectionLost) as info:
            await R(c.health())
        return outcomes, info.value

    outcomes, after = drive(srv.url, face, body)
    lost = [o for o in outcomes if isinstance(o, mc.ConnectionLost)]
    done = [o for o in outcomes if isinstance(o, dict)]
    assert len(lost) + len(done) == n, outcomes
    assert done and lost  # one finished before the kill, the rest cut off
    for e in lost + [after]:
        assert e.close_code == 1006 and e.code is None
    assert all(d["n_components"] == 16 for d in done)


def test_server_stopping_drains_then_closes_with_1001(start_server):
    srv = start_server({"server": {"rate_limit": 0, "drain_timeout": 20000},
                        "processing": {"workers": 1}})
    x = RNG.standard_normal((1000, 256)).astype(np.float32)

    with mc.Client(srv.url) as c, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        calls = [pool.submit(c.fit_pca, f"d{i}", x, n_components=8)
                 for i in range(8)]
        calls[0].result(60)
        srv.send_signal(signal.SIGTERM)
        results = [f.result(60) for f in calls]
        deadline = time.monotonic() + 10
        while not c.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(mc.ConnectionLost) as info:
            c.health()
    assert [r["name"] for r in results] == [f"d{i}" for i in range(8)]
    assert info.value.close_code == 1001
    assert srv.proc.wait(30) == 0


@pytest.fixture(scope="module")
def guarded(start_server):
    return start_server({"server": {"auth_tokens": ["s3cret-token"],
                                    "rate_limit": 0}})


@pytest.mark.parametrize("face", FACES)
def test_auth_token(guarded, face):
    threads = threading.active_count()
    for token in (None, "wrong"):
        with pytest.raises(mc.ConnectFailed) as info:
            drive(guarded.url, face, R, token=token)
        assert info.value.status == 401 and "401" in str(info.value)
    assert threading.active_count() == threads  # no loop thread left over

    async def body(c):
        return await R(c.health())

    assert drive(guarded.url, face, body,
                 token="s3cret-token")["status"] == "ok"


def test_unreachable_server_raises_connect_failed(server):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    with pytest.raises(mc.ConnectFailed) as info:
        mc.Client(f"ws://127.0.0.1:{port}", connect_timeout=5)
    assert info.value.status is None


# ---------------------------------------------------------------------------
# Many requests at once
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("face", FACES)
def test_100_concurrent_requests_on_one_connection(server, face):
    xs = [RNG.standard_normal((int(RNG.integers(1, 20)),
                               int(RNG.integers(2, 64)))).astype(np.float32)
          for _ in range(100)]

    async def body(c):
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            calls = [launch(face, c, pool, "process_embeddings",
                            x if i % 2 else x.tolist(), normalize=True)
                     for i, x in enumerate(xs)]
            return await asyncio.gather(*calls)

    results = drive(server.url, face, body)
    assert len(results) == 100
    for i, (x, r) in enumerate(zip(xs, results)):
        y = r["processed"]
        assert isinstance(y, np.ndarray if i % 2 else list)
        assert rel_err(as32(y), normalize_ref(x)) < 1e-6, i


def test_sync_client_from_plain_code(server):
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    c = mc.Client(server.url, timeout=30)
    assert not c.closed and "open" in repr(c)
    y = c.process_embeddings(x, normalize=True)["processed"]
    assert rel_err(y, normalize_ref(x)) < 1e-6
    c.timeout = 10
    assert c.health(timeout=5)["status"] == "ok"
    c.close()
    c.close()
    assert c.closed
    with pytest.raises(mc.ConnectionLost):
        c.health()
    assert not any(t.name == "mnemo-client" and t.is_alive()
                   for t in threading.enumerate())
    with mc.Client(server.url) as c2:
        assert c2.store_memory  # bound
        assert c2.ping() == {}
    assert c2.closed


# ---------------------------------------------------------------------------
# The wire format, without a server
# ---------------------------------------------------------------------------
def test_binary_request_layout():
    a = RNG.standard_normal((3, 5))                      # float64 -> float32
    b = RNG.standard_normal(7).astype(np.float16)        # 1-D float16
    frame = wire.encode_request({"jsonrpc": "2.0", "id": 1, "method": "m",
                                 "params": {"a": a, "x": [{"b": b}],
                                            "n": np.int64(3)}})
    assert isinstance(frame, (bytes, bytearray))
    (n,) = struct.unpack_from("<I", frame, 0)
    assert (4 + n) % 8 == 0
    head = json.loads(bytes(frame[4:4 + n]))
    payload = bytes(frame[4 + n:])
    ta, tb = head["params"]["a"], head["params"]["x"][0]["b"]
    assert head["params"]["n"] == 3
    assert ta["dtype"] == "float32" and ta["shape"] == [3, 5]
    assert tb["dtype"] == "float16" and tb["shape"] == [7]
    for t, ref in ((ta, a.astype(np.float32)), (tb, b)):
        off, ln = t["buffer"]["offset"], t["buffer"]["length"]
        assert off % 8 == 0 and ln == ref.nbytes
        assert payload[off:off + ln] == ref.tobytes()
    text = wire.encode_request({"jsonrpc": "2.0", "id": 2, "method": "m",
                                "params": {"a": [[1, 2]]}})
    assert isinstance(text, str) and json.loads(text)["params"]["a"] == [
        [1, 2]]


# ---------------------------------------------------------------------------
# The client's README, pasted as it is
# ---------------------------------------------------------------------------
def test_client_readme_examples_run(server):
    import subprocess
    with open(os.path.join(ROOT, "clients", "python", "README.md")) as f:
        text = f.read()
    section = text.split("## A first example", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]
    sh = [b.split("\n", 1)[1] for b in blocks if b.startswith("sh\n")]
    py = [b.split("\n", 1)[1] for b in blocks if b.startswith("python\n")]
    assert len(sh) == 1 and len(py) == 1
    assert "ws://127.0.0.1:3001" in sh[0] and "ws://127.0.0.1:3001" in py[0]
    p = subprocess.run(["bash", "-e", "-c",
                        sh[0].replace("ws://127.0.0.1:3001", server.url)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().split("\n")
    assert lines[0] == "[[0.6        0.8        0.        ]"
    assert lines[-1] == "the sky is blue"
    p = subprocess.run(["/usr/bin/python3", "-c",
                        py[0].replace("ws://127.0.0.1:3001", server.url)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=os.path.join(
                           ROOT, "clients", "python")))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("int8 [")
