"""Every tensor encoding on the wire: nested JSON arrays, one JSON vector,
the object JSON.stringify makes of a Float32Array, typed base64 and binary
frames; the reply follows the request's encoding unless options.encoding
says otherwise."""
import asyncio
import json

import numpy as np
import pytest

from helpers import (b64_tensor, binary_frame, call, connect, decode_tensor,
                     error_of, normalize_ref, rel_err, result_of,
                     split_binary)

RNG = np.random.default_rng(7)


async def send_text(server, params, rid=1):
    async with connect(server.url) as ws:
        return await call(ws, "processEmbeddings", params, rid)


def run(coro):
    return asyncio.run(coro)


def test_nested_arrays_in_and_out(server):
    x = RNG.standard_normal((5, 12)).astype(np.float32)
    res = result_of(run(send_text(server, {
        "embeddings": x.tolist(), "options": {"normalize": True}})))
    assert isinstance(res["processed"], list)
    assert isinstance(res["processed"][0], list)
    assert rel_err(res["processed"], normalize_ref(x)) < 1e-6


def test_one_vector_stays_one_vector(server):
    v = RNG.standard_normal(10).astype(np.float32)
    res = result_of(run(send_text(server, {
        "embeddings": v.tolist(), "options": {"normalize": True}})))
    out = np.asarray(res["processed"])
    assert out.shape == (10,)
    assert rel_err(out, v / np.linalg.norm(v.astype(np.float64))) < 1e-6
    assert res["metadata"]["count"] == 1


def float32array_json(v):
    """What JSON.stringify(new Float32Array(v)) sends."""
    return {str(i): float(np.float32(a)) for i, a in enumerate(v)}


def test_float32array_object_form(server):
    v = RNG.standard_normal(16).astype(np.float32)
    res = result_of(run(send_text(server, {
        "embeddings": float32array_json(v), "options": {"normalize": True}})))
    out = decode_tensor(res["processed"]).reshape(-1)
    assert rel_err(out, v / np.linalg.norm(v.astype(np.float64))) < 1e-6


def test_array_of_float32array_objects(server):
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    res = result_of(run(send_text(server, {
        "embeddings": [float32array_json(r) for r in x],
        "options": {"normalize": True}})))
    assert rel_err(decode_tensor(res["processed"]), normalize_ref(x)) < 1e-6


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_base64_in_and_out(server, dtype):
    x = RNG.standard_normal((7, 24))
    sent = x.astype({"float32": np.float32, "float16": np.float16,
                     "float64": np.float64}[dtype])
    res = result_of(run(send_text(server, {
        "embeddings": b64_tensor(sent, dtype),
        "options": {"normalize": True}})))
    p = res["processed"]
    assert set(p) >= {"dtype", "shape", "data"}
    assert p["dtype"] == "float32" and p["shape"] == [7, 24]
    y = decode_tensor(p)
    ref = normalize_ref(sent.astype(np.float32))
    assert rel_err(y, ref) < 1e-6


def test_base64_shape_must_match_the_bytes(server):
    x = RNG.standard_normal((4, 4)).astype(np.float32)
    t = b64_tensor(x)
    t["shape"] = [4, 5]
    err = error_of(run(send_text(server, {"embeddings": t})), -32602)
    assert "embeddings" in err["message"]
    t = b64_tensor(x)
    t["data"] = "!!!not base64!!!"
    err = error_of(run(send_text(server, {"embeddings": t})), -32602)
    assert "embeddings" in err["message"]


def test_binary_frames_in_and_out(server):
    x = RNG.standard_normal((32, 64)).astype(np.float32)

    async def go():
        async with connect(server.url) as ws:
            header = {"jsonrpc": "2.0", "id": "bin-1",
                      "method": "processEmbeddings",
                      "params": {"embeddings": {
                          "dtype": "float32", "shape": [32, 64],
                          "buffer": {"offset": 0, "length": x.nbytes}},
                          "options": {"normalize": True}}}
            await ws.send(binary_frame(header, x.tobytes()))
            return await ws.recv()

    frame = run(go())
    assert isinstance(frame, bytes)
    head, payload = split_binary(frame)
    assert set(head) == {"jsonrpc", "id", "result"} and head["id"] == "bin-1"
    p = head["result"]["processed"]
    assert p["dtype"] == "float32" and p["shape"] == [32, 64]
    y = decode_tensor(p, payload)
    assert rel_err(y, normalize_ref(x)) < 1e-6


def test_binary_frame_with_payload_offset_and_quantized_reply(server):
    x = RNG.standard_normal((6, 20)).astype(np.float32)
    pad = b"\x00" * 12

    async def go():
        async with connect(server.url) as ws:
            header = {"jsonrpc": "2.0", "id": 5,
                      "method": "processEmbeddings",
                      "params": {"embeddings": {
                          "dtype": "float32", "shape": [6, 20],
                          "buffer": {"offset": len(pad),
                                     "length": x.nbytes}},
                          "options": {"quantization": "int8"}}}
            await ws.send(binary_frame(header, pad + x.tobytes()))
            return await ws.recv()

    head, payload = split_binary(run(go()))
    res = head["result"]
    codes = decode_tensor(res["processed"], payload)
    assert codes.dtype == np.int8 and codes.shape == (6, 20)
    scales = np.asarray(res["scales"])
    assert np.abs(codes * scales[:, None] - x).max() <= \
        0.5 * scales.max() * (1 + 1e-5)


def test_binary_buffer_outside_the_payload_is_refused(server):
    async def go():
        async with connect(server.url) as ws:
            header = {"jsonrpc": "2.0", "id": 6,
                      "method": "processEmbeddings",
                      "params": {"embeddings": {
                          "dtype": "float32", "shape": [2, 4],
                          "buffer": {"offset": 0, "length": 32}}}}
            await ws.send(binary_frame(header, b"\x00" * 16))
            return await ws.recv()

    reply = run(go())
    head = split_binary(reply)[0] if isinstance(reply, bytes) else \
        json.loads(reply)
    err = error_of(head, -32602)
    assert "embeddings" in err["message"]


@pytest.mark.parametrize("encoding", ["json", "base64", "binary"])
def test_options_encoding_overrides_the_request(server, encoding):
    x = RNG.standard_normal((3, 5)).astype(np.float32)

    async def go():
        async with connect(server.url) as ws:
            await ws.send(json.dumps({
                "jsonrpc": "2.0", "id": 1, "method": "processEmbeddings",
                "params": {"embeddings": x.tolist(),
                           "options": {"normalize": True,
                                       "encoding": encoding}}}))
            return await ws.recv()

    reply = run(go())
    if encoding == "binary":
        assert isinstance(reply, bytes)
        head, payload = split_binary(reply)
        y = decode_tensor(head["result"]["processed"], payload)
    else:
        assert isinstance(reply, str)
        p = json.loads(reply)["result"]["processed"]
        assert isinstance(p, list) == (encoding == "json")
        y = decode_tensor(p)
    assert rel_err(y, normalize_ref(x)) < 1e-6


def test_nan_and_inf_are_refused_naming_the_row(server):
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    x[2, 3] = np.nan
    # JSON has no NaN: send it through base64, the usual way it arrives.
    err = error_of(run(send_text(server, {"embeddings": b64_tensor(x)})),
                   -32602)
    assert "row 2" in err["message"]
    y = RNG.standard_normal((3, 4)).astype(np.float32)
    y[1, 0] = np.inf
    err = error_of(run(send_text(server, {"embeddings": b64_tensor(y)})),
                   -32602)
    assert "row 1" in err["message"]


def test_ragged_rows_are_refused(server):
    err = error_of(run(send_text(server, {
        "embeddings": [[1.0, 2.0], [3.0]]})), -32602)
    assert "embeddings" in err["message"]


def test_large_replies_arrive_whole(server):
    # Replies over 4 MiB are sent from the engine's buffer in 1 MiB frames
    # of one message; over 1 MiB in several frames. Both must arrive whole.
    rng = np.random.default_rng(11)
    big = rng.standard_normal((6000, 256)).astype(np.float32)   # 6.1 MB
    mid = rng.standard_normal((1500, 256)).astype(np.float32)   # 1.5 MB

    async def go():
        async with connect(server.url) as ws:
            out = []
            for i, x in enumerate((big, mid)):
                header = {"jsonrpc": "2.0", "id": i,
                          "method": "processEmbeddings",
                          "params": {"embeddings": {
                              "dtype": "float32", "shape": list(x.shape),
                              "buffer": {"offset": 0, "length": x.nbytes}},
                              "options": {"normalize": True}}}
                await ws.send(binary_frame(header, x.tobytes()))
                out.append(await ws.recv())
            return out

    for x, frame in zip((big, mid), asyncio.run(go())):
        head, payload = split_binary(frame)
        y = decode_tensor(head["result"]["processed"], payload)
        assert rel_err(y, normalize_ref(x)) < 1e-6
