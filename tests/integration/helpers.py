"""Helpers for the mnemod integration tests.

Every test talks to a real mnemod over a real socket. A `Server` starts the
binary named by $MNEMOD (CTest sets it; otherwise build/bin/mnemod) with a
JSON config file, --port 0 and a temporary data directory, and reads the
port from its "listening on ws://HOST:PORT" log line. Modules that need
special limits start their own server; the rest share `server`.
"""
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
MNEMOD = os.environ.get("MNEMOD") or os.path.join(ROOT, "build", "bin",
                                                  "mnemod")
# The backend every test server runs on: "cpu" here; the device script
# (bench/gpu/run.sh) and tests/integration/run_cuda.sh run the suite again
# with MNEMO_TEST_DEVICE=cuda on a machine with a GPU.
DEVICE = os.environ.get("MNEMO_TEST_DEVICE", "cpu")
LISTEN_RE = re.compile(r"listening on ws://([^:\s]+):(\d+)")


class Server:
    """One mnemod process. `config` is the JSON config (nested dicts)."""

    def __init__(self, config=None, args=(), data_dir=None, env=None):
        self.tmp = tempfile.mkdtemp(prefix="mnemo-it-")
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        self.config = config or {}
        self.args = list(args)
        self.env = env
        self.proc = None
        self.port = None
        self.log = []
        self._drain = None

    def start(self, timeout=30):
        cfg = os.path.join(self.tmp, "config.json")
        with open(cfg, "w") as f:
            json.dump(self.config, f)
        cmd = [MNEMOD, "--config", cfg, "--port", "0", "--data-dir",
               self.data_dir, "--device", DEVICE] + self.args
        env = dict(os.environ)
        env.update(self.env or {})
        self.port = None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True,
                                     env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = LISTEN_RE.search(line)
            if m:
                self.port = int(m.group(2))
                break
        if self.port is None:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("mnemod did not start:\n" + "".join(self.log))
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()
        return self

    def _read_log(self):
        for line in self.proc.stderr:
            self.log.append(line)

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}"

    def http(self, path, method="GET"):
        """(status, headers, body bytes) of an HTTP request."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def send_signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if self._drain:
            self._drain.join(5)
        return rc

    def restart(self):
        rc = self.stop()
        assert rc == 0, "".join(self.log)
        return self.start()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def sanitizer_reports(self):
        """Lines of AddressSanitizer / UBSan / LeakSanitizer reports."""
        keys = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                "runtime error:", "SUMMARY: ")
        return [line for line in self.log if any(k in line for k in keys)]

    def log_json(self):
        out = []
        for line in self.log:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


@contextlib.contextmanager
def servers():
    """A factory make(config, args, **kw) -> started Server; every server
    it started is stopped when the block ends. Under `make test-asan` the
    servers run instrumented, and any sanitizer report fails the block.
    The start_server fixtures of tests/integration and tests/deploy."""
    started = []

    def make(config=None, args=(), **kw):
        s = Server(config, args, **kw).start()
        started.append(s)
        return s

    problems = []
    try:
        yield make
    finally:
        for s in started:
            s.cleanup()
            problems += s.sanitizer_reports()
    assert not problems, "sanitizer reports from mnemod:\n" + "".join(
        problems[:40])


# ---------------------------------------------------------------------------
# Client helpers
# ---------------------------------------------------------------------------
def connect(url, **kw):
    kw.setdefault("subprotocols", ["mcp"])
    kw.setdefault("max_size", None)
    kw.setdefault("open_timeout", 10)
    return websockets.connect(url, **kw)


async def call(ws, method, params=None, rid=1):
    """Send one request and return the reply object with the same id."""
    req = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        req["params"] = params
    await ws.send(json.dumps(req))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if reply.get("id") == rid:
            return reply


def rpc(server, method, params=None):
    """One call on a fresh connection (synchronous)."""

    async def go():
        async with connect(server.url) as ws:
            return await call(ws, method, params)

    return asyncio.run(go())


# ---------------------------------------------------------------------------
# A raw WebSocket client, to send what well-behaved libraries will not.
# ---------------------------------------------------------------------------
def handshake(port, extra="", path="/"):
    """Connect and upgrade by hand: (socket, response head as text)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"{extra}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return s, head.split(b"\r\n\r\n")[0].decode(errors="replace")


def frame(opcode, payload, fin=True, mask=True, rsv=0, key=None):
    """One client frame. rsv: the three reserved bits (0..7); key: the
    4-byte masking key (random when not given)."""
    b0 = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return hdr + payload
    key = os.urandom(4) if key is None else key
    return hdr + key + mask_bytes(payload, key)


def mask_bytes(payload, key):
    """payload XOR the repeated 4-byte key (RFC 6455 5.3), at numpy speed."""
    if not payload:
        return b""
    k = np.frombuffer((key * (len(payload) // 4 + 1))[:len(payload)],
                      dtype=np.uint8)
    return (np.frombuffer(payload, dtype=np.uint8) ^ k).tobytes()


def read_frame_bits(s):
    """One server frame: (fin, rsv, opcode, masked, payload)."""
    def exactly(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    b0, b1 = exactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", exactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exactly(8))[0]
    key = exactly(4) if b1 & 0x80 else None
    payload = exactly(n)
    if key:
        payload = mask_bytes(payload, key)
    return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, key is not None, payload


def read_frame(s):
    """One server frame: (opcode, payload)."""
    _, _, op, _, payload = read_frame_bits(s)
    return op, payload


def close_code(s):
    """Read frames until a close frame; return its status code."""
    s.settimeout(10)
    while True:
        op, payload = read_frame(s)
        if op == 8:
            return struct.unpack("!H", payload[:2])[0] if payload else None


def result_of(reply):
    assert set(reply) == {"jsonrpc", "id", "result"}, reply
    assert reply["jsonrpc"] == "2.0"
    return reply["result"]


def error_of(reply, code):
    assert set(reply) == {"jsonrpc", "id", "error"}, reply
    err = reply["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and len(err["message"]) > 10, err
    return err


def binary_frame(header, payload=b""):
    js = json.dumps(header).encode()
    return struct.pack("<I", len(js)) + js + payload


def split_binary(frame):
    """A binary reply: its JSON header and its payload. The server pads the
    JSON so that the payload starts at a multiple of 8 bytes (docs/API.md);
    every reply the tests read is checked for it."""
    (n,) = struct.unpack_from("<I", frame, 0)
    assert (4 + n) % 8 == 0, f"payload at byte {4 + n}, not a multiple of 8"
    return json.loads(frame[4:4 + n]), frame[4 + n:]


def b64_tensor(x, dtype="float32"):
    arr = np.ascontiguousarray(x, dtype={"float32": np.float32,
                                         "float16": np.float16,
                                         "float64": np.float64}[dtype])
    return {"dtype": dtype, "shape": list(arr.shape),
            "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_tensor(obj, payload=None):
    """A result tensor in any encoding -> numpy array: float32 for JSON
    numbers (the server writes the shortest text that reads back as the
    same float32, so this is exact; integer codes are exact too), the
    element type for base64 and binary buffers."""
    if isinstance(obj, list):
        return np.asarray(obj, dtype=np.float32)
    dtype = obj["dtype"]
    shape = obj["shape"]
    if "data" in obj:
        raw = base64.b64decode(obj["data"])
    else:
        off, ln = obj["buffer"]["offset"], obj["buffer"]["length"]
        raw = payload[off:off + ln]
    np_types = {"float32": np.float32, "float16": np.float16,
                "int8": np.int8, "uint8": np.uint8}
    if dtype in np_types:
        return np.frombuffer(raw, dtype=np_types[dtype]).reshape(shape)
    if dtype == "bfloat16":
        u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(shape)
    if dtype == "int4":
        rows, cols = shape
        b = np.frombuffer(raw, dtype=np.uint8).reshape(rows, -1)
        nib = np.empty((rows, b.shape[1] * 2), dtype=np.int16)
        nib[:, 0::2] = b & 0x0F
        nib[:, 1::2] = b >> 4
        nib[nib >= 8] -= 16
        return nib[:, :cols]
    if dtype == "binary":
        rows, cols = shape
        b = np.frombuffer(raw, dtype=np.uint8).reshape(rows, -1)
        bits = np.unpackbits(b, axis=1, bitorder="little")
        return bits[:, :cols]
    raise AssertionError(f"unknown dtype {dtype}")


def normalize_ref(x):
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1
    return x / n


def bf16_ref(x):
    """float32 -> bfloat16 (round to nearest, ties to even) -> float32."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return (u.astype(np.uint32) << 16).view(np.float32)


def pca_ref(x, k):
    """(mean, components k x d, explained variance, ratio) in float64."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    w, v = w[order], v[:, order]
    return mean, v[:, :k].T, w[:k], w[:k] / w.sum()


def align_signs(y, ref):
    """Flip the columns of y whose sign disagrees with ref (a PCA component
    is defined up to its sign)."""
    y = np.array(y, dtype=np.float64)
    for j in range(y.shape[1]):
        if np.dot(y[:, j], ref[:, j]) < 0:
            y[:, j] = -y[:, j]
    return y


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
