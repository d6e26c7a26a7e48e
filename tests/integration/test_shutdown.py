"""Graceful shutdown: SIGTERM with requests in flight answers every one of
them, refuses new sessions and says 503 on /ready while draining, closes
the connections with 1001 and exits 0."""
import asyncio
import json
import re
import signal
import time

import numpy as np
import websockets

from helpers import (binary_frame, connect, normalize_ref, pca_ref,
                     split_binary)

# The drain must still be running when the test looks at it, however fast
# the backend: drain_run times one fit first and queues enough of them for
# about QUEUE_S seconds of work (on a GPU a fit is a few milliseconds; the
# first GPU runs drained a fixed queue before /ready was read).
QUEUE_S = 1.5
ROWS = 1000


def bytes_received(srv):
    text = srv.http("/metrics")[2].decode()
    m = re.search(r"^mnemo_bytes_received_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def drain_run(start_server, n, drain_ms):
    """Queue n fitPCA jobs on a one-worker server, send SIGTERM once they
    have all arrived, and collect what comes back."""
    srv = start_server({"server": {"rate_limit": 0,
                                   "drain_timeout": drain_ms},
                        "processing": {"workers": 1}})
    x = np.random.default_rng(5).standard_normal((ROWS, 512)).astype(
        np.float32)

    def frame(i):
        return binary_frame({
            "jsonrpc": "2.0", "id": i, "method": "fitPCA",
            "params": {"name": f"m{i}", "n_components": 64, "embeddings": {
                "dtype": "float32", "shape": list(x.shape),
                "buffer": {"offset": 0, "length": x.nbytes}}}}, x.tobytes())

    async def one_fit():
        async with connect(srv.url) as ws:
            t0 = time.time()
            await ws.send(frame(10 ** 6))
            await asyncio.wait_for(ws.recv(), 60)
            return time.time() - t0

    asyncio.run(one_fit())  # warm-up
    per_fit = min(asyncio.run(one_fit()) for _ in range(2))
    n = max(n, min(400, int(QUEUE_S / max(per_fit, 1e-4)) + 1))
    frames = [frame(i) for i in range(n)]
    total = sum(len(f) for f in frames)

    async def go():
        async with connect(srv.url) as ws:
            base = bytes_received(srv)
            for f in frames:
                await ws.send(f)
            # Every request is in the server before the signal.
            t0 = time.time()
            while bytes_received(srv) - base < total:
                assert time.time() - t0 < 20, "requests never arrived"
                await asyncio.sleep(0.01)
            srv.send_signal(signal.SIGTERM)
            # With a short drain deadline the server may be gone by now
            # (a GPU finishes the running fit within it): then there is no
            # /ready to read and no handshake to refuse; only the test with
            # the long deadline asserts on them. /ready is read until it
            # stops saying 200 (a loaded machine may take a while to
            # deliver the signal), for at most 5 s.
            t1 = time.time()
            while True:
                await asyncio.sleep(0.02)
                try:
                    ready = srv.http("/ready")
                except OSError as e:
                    ready = ("gone", str(e))
                    break
                if ready[0] != 200 or time.time() - t1 > 5:
                    break
            refused = None
            try:
                async with connect(srv.url, open_timeout=5):
                    pass
            except websockets.InvalidStatusCode as e:
                refused = e.status_code
            except (websockets.InvalidMessage, OSError) as e:
                refused = "gone: %s" % e
            replies = {}
            try:
                while True:
                    frame = await asyncio.wait_for(ws.recv(), 30)
                    # Errors carry no tensor: they come as text frames.
                    head = (json.loads(frame) if isinstance(frame, str)
                            else split_binary(frame)[0])
                    replies[head["id"]] = head
            except websockets.ConnectionClosed as e:
                closed = e
            return ready, refused, replies, closed

    ready, refused, replies, closed = asyncio.run(go())
    rc = srv.proc.wait(30)
    return srv, x, rc, ready, refused, replies, closed, n


def test_sigterm_drains_requests_in_flight(start_server):
    # One worker, so that the jobs queue up and the drain takes a while;
    # a drain deadline long enough for all of them even under ASan.
    srv, x, rc, ready, refused, replies, closed, n = drain_run(
        start_server, 6, 120000)
    _, _, _, ratio = pca_ref(x, 64)
    assert rc == 0, "".join(srv.log)
    assert sorted(replies) == list(range(n))
    for r in replies.values():
        assert set(r) == {"jsonrpc", "id", "result"}, r
        assert np.allclose(r["result"]["explained_variance_ratio"], ratio,
                           rtol=1e-4)
    assert closed.code == 1001
    assert ready[0] == 503
    assert b"draining" in ready[2]
    assert refused == 503
    assert any("stopped cleanly" in line for line in srv.log)


def test_drain_deadline_answers_queued_requests(start_server):
    # A drain deadline far shorter than the queue: the requests that never
    # started are answered -32004 (send again), none is left unanswered.
    srv, x, rc, ready, refused, replies, closed, n = drain_run(
        start_server, 12, 50)
    _, _, _, ratio = pca_ref(x, 64)
    # Every request that had not started is answered -32004 at once, even
    # while the one worker is still busy; only the job running when the
    # grace after the deadline ran out may go unanswered (a slow backend,
    # such as the CUDA emulator on a loaded machine), and then the server
    # says so.
    missing = sorted(set(range(n)) - set(replies))
    assert len(missing) <= 1, (missing, "".join(srv.log))
    if missing:
        assert any("still in flight; closing anyway" in line
                   for line in srv.log), "".join(srv.log)
    done = [r for r in replies.values() if "result" in r]
    refused_jobs = [r for r in replies.values() if "error" in r]
    assert refused_jobs, "expected queued requests to be refused"
    for r in done:
        assert np.allclose(r["result"]["explained_variance_ratio"], ratio,
                           rtol=1e-4)
    for r in refused_jobs:
        assert set(r) == {"jsonrpc", "id", "error"}, r
        assert r["error"]["code"] == -32004
        assert "shutting down" in r["error"]["message"]
    assert closed.code == 1001
    assert any("answering" in line and "-32004" in line for line in srv.log)


def test_sigint_on_an_idle_server_exits_0(start_server):
    srv = start_server({})
    srv.send_signal(signal.SIGINT)
    assert srv.proc.wait(10) == 0


def test_drain_deadline_answers_the_queue_while_the_worker_is_stuck(
        start_server):
    """The only worker hangs on a device that stopped answering (a fake
    plugin whose ops sleep 10 s) and SIGTERM comes with requests queued
    behind it. At the drain deadline the queued ones are answered -32004 at
    once, not left waiting for the worker (which used to mean: never, the
    server closing after its grace with them unanswered)."""
    import os
    build = os.path.dirname(os.path.dirname(os.environ.get(
        "MNEMOD", "build/bin/mnemod")))
    plugin = os.path.join(build, "tests", "fake_plugins",
                          "libfake_plugin_slow.so")
    assert os.path.exists(plugin), f"{plugin} is not built"
    srv = start_server({"server": {"rate_limit": 0, "drain_timeout": 300},
                        "processing": {"workers": 1, "timeout": 60000}},
                       args=("--device", "cuda"),
                       env={"MNEMO_BACKEND_PATH": plugin})
    big = np.ones((400, 768), np.float32)  # over gpu.min_elements: device

    async def go():
        async with connect(srv.url) as a, connect(srv.url) as b:
            header = {"jsonrpc": "2.0", "id": "stuck",
                      "method": "processEmbeddings",
                      "params": {"embeddings": {
                          "dtype": "float32", "shape": list(big.shape),
                          "buffer": {"offset": 0, "length": big.nbytes}},
                          "options": {"normalize": True}}}
            async def arrived(n):
                t0 = time.monotonic()
                while bytes_received(srv) - base < n:
                    assert time.monotonic() - t0 < 10, "never arrived"
                    await asyncio.sleep(0.01)

            base = bytes_received(srv)
            await a.send(binary_frame(header, big.tobytes()))
            await arrived(big.nbytes)
            await asyncio.sleep(0.3)  # the worker has taken the big one
            small = [json.dumps({
                "jsonrpc": "2.0", "id": i, "method": "processEmbeddings",
                "params": {"embeddings": [[3.0, 4.0]],
                           "options": {"normalize": True}}})
                for i in range(3)]
            for m in small:
                await b.send(m)
            await arrived(big.nbytes + sum(len(m) for m in small))
            t0 = time.monotonic()
            srv.send_signal(signal.SIGTERM)
            replies = []
            try:
                while len(replies) < 3:
                    replies.append(json.loads(
                        await asyncio.wait_for(b.recv(), 9)))
            except websockets.ConnectionClosed:
                pass
            waited = time.monotonic() - t0
            try:
                stuck = await asyncio.wait_for(a.recv(), 9)
            except websockets.ConnectionClosed as e:
                stuck = e
            return replies, waited, stuck

    replies, waited, stuck = asyncio.run(go())
    assert sorted(r.get("id") for r in replies) == [0, 1, 2], (
        replies, "".join(srv.log))
    for r in replies:
        assert r["error"]["code"] == -32004, r
        assert "shutting down" in r["error"]["message"]
    # The deadline is 0.3 s; well before the stuck device's 10 s.
    assert waited < 5, waited
    # The stuck request is abandoned: its connection closes with 1001.
    assert isinstance(stuck, websockets.ConnectionClosed), stuck
    assert stuck.rcvd is not None and stuck.rcvd.code == 1001
    srv.proc.wait(20)
    assert any("still in flight; closing anyway" in line for line in srv.log)


def test_drain_delay_keeps_serving_with_ready_503(start_server):
    """server.drain_delay: from SIGTERM on, /ready says 503 so that a load
    balancer takes the server out, but everything is still served, new
    connections included, for the delay; then the usual drain, 1001 and
    exit 0."""
    delay_ms = 1500
    srv = start_server({"server": {"rate_limit": 0,
                                   "drain_delay": delay_ms}})
    x = np.random.default_rng(2).standard_normal((16, 24)).astype(
        np.float32)

    async def normalize(ws, rid):
        await ws.send(json.dumps({
            "jsonrpc": "2.0", "id": rid, "method": "processEmbeddings",
            "params": {"embeddings": x.tolist(),
                       "options": {"normalize": True}}}))
        r = json.loads(await asyncio.wait_for(ws.recv(), 10))
        got = np.array(r["result"]["processed"], dtype=np.float64)
        np.testing.assert_allclose(got, normalize_ref(x), atol=2e-7)

    async def go():
        async with connect(srv.url) as old:
            await normalize(old, 1)
            assert srv.http("/ready")[0] == 200
            t0 = time.monotonic()
            srv.send_signal(signal.SIGTERM)
            while srv.http("/ready")[0] != 503:
                assert time.monotonic() - t0 < 1.0, "/ready stayed 200"
                await asyncio.sleep(0.01)
            status, _, body = srv.http("/ready")
            assert status == 503 and json.loads(body)["ready"] is False
            # still serving: the old session and a new one
            await normalize(old, 2)
            async with connect(srv.url) as new:
                await normalize(new, 3)
            served_until = time.monotonic() - t0
            try:
                await asyncio.wait_for(old.recv(), 20)
                closed = None
            except websockets.ConnectionClosed as e:
                closed = e
            return served_until, time.monotonic() - t0, closed

    served_until, closed_at, closed = asyncio.run(go())
    assert served_until < delay_ms / 1000, served_until
    assert closed is not None and closed.rcvd.code == 1001
    assert closed_at >= delay_ms / 1000 - 0.05, closed_at
    assert srv.proc.wait(20) == 0, "".join(srv.log)
    assert any("server.drain_delay" in line for line in srv.log)


def test_second_signal_skips_the_drain_delay(start_server):
    srv = start_server({"server": {"drain_delay": 600000}})
    t0 = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    while srv.http("/ready")[0] != 503:
        assert time.monotonic() - t0 < 2
        time.sleep(0.01)
    srv.send_signal(signal.SIGTERM)
    assert srv.proc.wait(10) == 0, "".join(srv.log)
    assert time.monotonic() - t0 < 10
