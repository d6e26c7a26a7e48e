#!/usr/bin/python3
"""The Python peer for bench/load: processEmbeddings (normalize) over
WebSocket JSON-RPC, written the way a user of the seed's stack would
write it: asyncio + websockets + numpy, one process, no tricks.

It speaks the same wire protocol as mnemod for this one method:
  - embeddings as nested JSON number arrays,
  - {"dtype":"float32","shape":[r,c],"data":"<base64>"},
  - binary frames: little-endian u32 N, N bytes of JSON, then the raw
    payload, the tensor given as {"dtype","shape","buffer":{"offset",
    "length"}}; the reply is a binary frame of the same layout.
The reply uses the request's encoding.

Run: /usr/bin/python3 bench/peers/py_server.py --port 3101
"""
import argparse
import asyncio
import base64
import json
import struct
import time

import numpy as np
import websockets


def normalize(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


def error(rid, code, message):
    return json.dumps({"jsonrpc": "2.0", "id": rid,
                       "error": {"code": code, "message": message}})


def metadata(out, t0):
    return {"processing_time": (time.perf_counter() - t0) * 1e3,
            "dimensions": int(out.shape[1]), "device": "cpu (numpy)",
            "count": int(out.shape[0]), "dtype": "float32"}


def handle_text(text):
    t0 = time.perf_counter()
    req = json.loads(text)
    rid = req.get("id")
    if req.get("method") != "processEmbeddings":
        return error(rid, -32601, "only processEmbeddings is served here")
    emb = req["params"]["embeddings"]
    if isinstance(emb, dict):
        x = np.frombuffer(base64.b64decode(emb["data"]), dtype=np.float32)
        x = x.reshape(emb["shape"])
        out = normalize(x)
        processed = {"dtype": "float32", "shape": list(out.shape),
                     "data": base64.b64encode(out.tobytes()).decode("ascii")}
    else:
        out = normalize(np.asarray(emb, dtype=np.float32))
        processed = out.tolist()
    return json.dumps({"jsonrpc": "2.0", "id": rid,
                       "result": {"processed": processed,
                                  "metadata": metadata(out, t0)}})


def handle_binary(data):
    t0 = time.perf_counter()
    (n,) = struct.unpack_from("<I", data, 0)
    req = json.loads(data[4:4 + n])
    payload = memoryview(data)[4 + n:]
    rid = req.get("id")
    emb = req["params"]["embeddings"]
    off, length = emb["buffer"]["offset"], emb["buffer"]["length"]
    x = np.frombuffer(payload[off:off + length], dtype=np.float32)
    out = normalize(x.reshape(emb["shape"]))
    raw = out.tobytes()
    header = json.dumps({"jsonrpc": "2.0", "id": rid, "result": {
        "processed": {"dtype": "float32", "shape": list(out.shape),
                      "buffer": {"offset": 0, "length": len(raw)}},
        "metadata": metadata(out, t0)}}).encode()
    return struct.pack("<I", len(header)) + header + raw


async def serve(ws, path=None):
    try:
        async for msg in ws:
            try:
                reply = (handle_binary(msg) if isinstance(msg, bytes)
                         else handle_text(msg))
            except Exception as e:  # a bad request must not kill the peer
                reply = error(None, -32603, str(e))
            await ws.send(reply)
    except websockets.ConnectionClosed:
        pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3101)
    a = ap.parse_args()
    async with websockets.serve(serve, a.host, a.port, subprotocols=["mcp"],
                                max_size=None, compression=None) as srv:
        port = srv.sockets[0].getsockname()[1]  # a.port may be 0
        print(f"py_server listening on ws://{a.host}:{port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
