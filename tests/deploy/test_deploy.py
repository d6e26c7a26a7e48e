"""deploy/ with the real programs: HAProxy (TLS termination, balancing,
/ready health checks during mnemod's drain), Prometheus's promtool (scrape
config, alert rules, mnemod's /metrics), the systemd unit, and the backup
of docs/operations.md (mdb_copy on a live store)."""
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import websockets

from conftest import DEPLOY, HAPROXY_CFG, HERE, ROOT, haproxy_env, tool
from helpers import (MNEMOD, binary_frame, call, connect, normalize_ref,
                     pca_ref, rpc, split_binary)


def https(proxy, ctx, path, headers=None):
    """(status, body) of an https request through HAProxy."""
    req = urllib.request.Request(f"https://localhost:{proxy.port}{path}",
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(srv, name):
    """One unlabelled sample from a mnemod's /metrics (read directly)."""
    text = srv.http("/metrics")[2].decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def wss(proxy, ctx, **kw):
    return connect(f"wss://localhost:{proxy.port}/", ssl=ctx, **kw)


# ---------------------------------------------------------------------------
# HAProxy
# ---------------------------------------------------------------------------
def test_haproxy_config_is_valid(cert, tmp_path):
    """haproxy -c on deploy/haproxy.cfg, with one backend and with four
    (the conditional blocks), as root would run it and as a user."""
    haproxy = tool("haproxy")
    for n in (1, 4):
        backends = [f"127.0.0.1:{3001 + i}" for i in range(n)]
        env = haproxy_env(cert[0], backends, str(tmp_path / "s.sock"),
                          "127.0.0.1:3443", "127.0.0.1:8405")
        r = subprocess.run([haproxy, "-c", "-f", HAPROXY_CFG], env=env,
                           capture_output=True, text=True)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert "Configuration file is valid" in out, out
        assert "WARNING" not in out and "ALERT" not in out, out


def test_wss_and_https_through_haproxy(start_server, start_proxy, cert):
    """wss:// with subprotocol mcp: processEmbeddings against numpy and a
    store / search round trip; https:// /health and /ready; /metrics is not
    published through the balancer."""
    a = start_server({"server": {"rate_limit": 0}})
    b = start_server({"server": {"rate_limit": 0}})
    proxy = start_proxy([a, b])
    ctx = cert[1]
    proxy.wait_status("m1", "UP")
    proxy.wait_status("m2", "UP")

    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 96)).astype(np.float32)
    mem = rng.standard_normal((30, 16)).astype(np.float32)
    q = rng.standard_normal((3, 16)).astype(np.float32)

    async def go():
        async with wss(proxy, ctx) as ws:
            assert ws.subprotocol == "mcp"
            tls = ws.transport.get_extra_info("ssl_object").version()
            assert tls in ("TLSv1.2", "TLSv1.3"), tls
            r = await call(ws, "processEmbeddings", {
                "embeddings": x.tolist(), "options": {"normalize": True}})
            got = np.array(r["result"]["processed"], dtype=np.float64)
            assert np.allclose(got, normalize_ref(x), rtol=1e-5, atol=1e-6)

            # One session stays on one instance: the round trip works
            # whichever it is.
            r = await call(ws, "createCollection",
                           {"name": "notes", "dim": 16, "metric": "cosine"})
            assert "result" in r, r
            r = await call(ws, "addMemories", {"collection": "notes",
                           "memories": [{"id": f"m{i}",
                                         "embedding": mem[i].tolist(),
                                         "content": f"note {i}"}
                                        for i in range(len(mem))]})
            assert r["result"]["count"] == len(mem), r
            r = await call(ws, "searchMemories", {
                "collection": "notes", "query": q.tolist(), "k": 5,
                "time_decay": 0})
            return r

    r = asyncio.run(go())
    mn = mem / np.linalg.norm(mem, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = qn.astype(np.float64) @ mn.T.astype(np.float64)
    for i, hits in enumerate(r["result"]["results"]):
        want = np.argsort(-sims[i])[:5]
        assert [h["id"] for h in hits] == [f"m{j}" for j in want]
        assert np.allclose([h["similarity"] for h in hits], sims[i][want],
                           atol=1e-5)
        assert hits[0]["content"] == f"note {want[0]}"

    status, body = https(proxy, ctx, "/health")
    assert status == 200 and json.loads(body)["status"] == "ok", body
    status, body = https(proxy, ctx, "/ready")
    assert status == 200 and json.loads(body)["ready"] is True, body
    # Scraped from each instance directly, never through the balancer,
    # whatever the spelling.
    for path in ("/metrics", "/%6detrics", "//metrics", "/metrics?x=1",
                 "/nowhere"):
        status, _ = https(proxy, ctx, path)
        assert status == 403, (path, status)
    assert "mnemo_requests_total" in a.http("/metrics")[2].decode()

    # HAProxy's own exporter, on its local port.
    with urllib.request.urlopen(
            f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=10) as f:
        text = f.read().decode()
    assert re.search(r'^haproxy_backend_active_servers\{proxy="mnemod"\} 2$',
                     text, re.M), text[:2000]
    # The log line has the path, never the query string (tokens).
    asyncio.run(_one_call(proxy, ctx, "/?token=SECRET-IN-QUERY"))
    time.sleep(0.2)
    log = proxy.log()
    assert "SECRET-IN-QUERY" not in log, log
    assert re.search(r"mnemo_tls~ mnemod/m[12] .* GET / HTTP/1.1", log), log


async def _one_call(proxy, ctx, path="/", **kw):
    async with connect(f"wss://localhost:{proxy.port}{path}", ssl=ctx,
                       **kw) as ws:
        r = await call(ws, "processEmbeddings", {
            "embeddings": [[3, 4, 0]], "options": {"normalize": True}})
        assert np.allclose(r["result"]["processed"], [[0.6, 0.8, 0]]), r
        return r


def test_authorization_header_reaches_mnemod(start_server, start_proxy,
                                             cert):
    srv = start_server({"server": {"rate_limit": 0,
                                   "auth_tokens": ["t0ken-A", "t0ken-B"]}})
    proxy = start_proxy([srv])
    ctx = cert[1]
    proxy.wait_status("m1", "UP")
    refused = metric(srv, "mnemo_connections_refused_total")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(websockets.InvalidStatusCode) as e:
            asyncio.run(_one_call(proxy, ctx, extra_headers=headers))
        assert e.value.status_code == 401
    # mnemod itself refused them (not HAProxy).
    assert metric(srv, "mnemo_connections_refused_total") == refused + 2
    for tok in ("t0ken-A", "t0ken-B"):
        asyncio.run(_one_call(proxy, ctx,
                              extra_headers={"Authorization": f"Bearer {tok}"}))
    asyncio.run(_one_call(proxy, ctx, "/?token=t0ken-B"))


QUEUE_S = 3.0


def test_drain_marks_the_instance_down_and_sessions_finish(
        start_server, start_proxy, cert):
    """SIGTERM to one of two mnemods while a session has work queued on
    it: /ready turns 503, HAProxy's check marks it DOWN while it is still
    draining, new sessions go to the other instance (also through an
    HAProxy whose checks have not noticed: mnemod's 503 is retried there),
    and the old session gets every answer before mnemod closes it with
    1001."""
    cfg = {"server": {"rate_limit": 0, "drain_timeout": 120000},
           "processing": {"workers": 1}}
    a, b = start_server(cfg), start_server(cfg)
    fast = start_proxy([a, b], check_inter="100ms")
    # Checks every hour: this one learns of the drain only from mnemod's
    # answers.
    slow = start_proxy([a, b], check_inter="1h")
    ctx = cert[1]
    for p in (fast, slow):
        p.wait_status("m1", "UP")
        p.wait_status("m2", "UP")

    # Wide enough that 60 fits take a few seconds (about 50 ms each here).
    rows = 300
    x = np.random.default_rng(5).standard_normal((rows, 640)).astype(
        np.float32)
    _, _, _, ratio = pca_ref(x, 32)

    def fit(i):
        return binary_frame({
            "jsonrpc": "2.0", "id": i, "method": "fitPCA",
            "params": {"name": f"m{i}", "n_components": 32, "embeddings": {
                "dtype": "float32", "shape": list(x.shape),
                "buffer": {"offset": 0, "length": x.nbytes}}}}, x.tobytes())

    async def go():
        async with wss(fast, ctx) as ws:
            # Which instance has the session.
            conns = {s: metric(s, "mnemo_connections") for s in (a, b)}
            victim = a if conns[a] == 1 else b
            other = b if victim is a else a
            name = "m1" if victim is a else "m2"
            assert conns[victim] == 1 and conns[other] == 0, conns

            # Enough fits queued behind one worker to keep it draining for
            # about QUEUE_S seconds; a fit timed after a warm-up one, the
            # faster of two (a busy machine only makes the drain longer).
            # At most 60: mnemod stops reading a connection with 64
            # requests in flight (MN__CONN_MAX_INFLIGHT).
            times = []
            for i in range(3):
                t0 = time.time()
                await ws.send(fit(10 ** 6 + i))
                msg = await asyncio.wait_for(ws.recv(), 60)
                times.append(time.time() - t0)
                head = (json.loads(msg) if isinstance(msg, str)
                        else split_binary(msg)[0])
                assert "result" in head, head
            n = max(4, min(60, int(QUEUE_S / max(min(times[1:]), 1e-3)) + 1))
            frames = [fit(i) for i in range(n)]
            base = metric(victim, "mnemo_bytes_received_total")
            for f in frames:
                await ws.send(f)
            total = sum(len(f) for f in frames)
            t0 = time.time()
            while metric(victim, "mnemo_bytes_received_total") - base < total:
                assert time.time() - t0 < 20, "requests never arrived"
                await asyncio.sleep(0.01)

            refused0 = metric(victim, "mnemo_connections_refused_total")
            other0 = metric(other, "mnemo_connections_total")
            victim.send_signal(signal.SIGTERM)

            # The check sees /ready say 503 and takes the instance out,
            # while it still drains.
            row = fast.wait_status(name, "DOWN", timeout=15)
            assert victim.proc.poll() is None, "drained before the check"
            assert row["check_status"] == "L7STS", row
            assert row["check_code"] == "503", row
            assert victim.http("/ready")[0] == 503

            # New sessions, through both proxies, all served by the other
            # instance. The slow proxy still counts the victim as UP, so
            # round robin sends it some: mnemod refuses them with 503 and
            # HAProxy resends them to the other one (retry-on 503).
            for p in (fast, slow, slow, slow, slow):
                await _one_call(p, ctx)
            assert slow.servers()[name]["status"].startswith("UP")
            assert metric(other, "mnemo_connections_total") == other0 + 5
            assert metric(victim, "mnemo_connections_refused_total") > \
                refused0, "no handshake reached the draining instance"
            assert victim.proc.poll() is None, "drain too short to test"

            replies = {}
            try:
                while True:
                    msg = await asyncio.wait_for(ws.recv(), 60)
                    head = (json.loads(msg) if isinstance(msg, str)
                            else split_binary(msg)[0])
                    replies[head["id"]] = head
            except websockets.ConnectionClosed as e:
                closed = e
            return victim, n, replies, closed

    victim, n, replies, closed = asyncio.run(go())
    assert victim.proc.wait(30) == 0, "".join(victim.log)
    assert sorted(replies) == list(range(n))
    for r in replies.values():
        assert "result" in r, r
        assert np.allclose(r["result"]["explained_variance_ratio"], ratio,
                           rtol=1e-3, atol=1e-5)
    assert closed.code == 1001, closed


def test_drain_delay_takes_an_idle_instance_out_before_it_refuses(
        start_server, start_proxy, cert):
    """With server.drain_delay (as deploy/mnemod.json sets it), an idle
    mnemod that gets SIGTERM keeps serving while /ready says 503: HAProxy
    takes it out, and no handshake is ever refused or retried."""
    a = start_server({"server": {"rate_limit": 0, "drain_delay": 2500}})
    b = start_server({"server": {"rate_limit": 0}})
    proxy = start_proxy([a, b], check_inter="100ms")
    ctx = cert[1]
    proxy.wait_status("m1", "UP")
    proxy.wait_status("m2", "UP")
    refused0 = metric(a, "mnemo_connections_refused_total")
    b0 = metric(b, "mnemo_connections_total")
    t0 = time.monotonic()
    a.send_signal(signal.SIGTERM)
    proxy.wait_status("m1", "DOWN", timeout=2)
    assert a.proc.poll() is None and time.monotonic() - t0 < 2.5
    # Still serving directly, while out of rotation.
    r = rpc(a, "processEmbeddings", {"embeddings": [[3, 4, 0]],
                                     "options": {"normalize": True}})
    assert np.allclose(r["result"]["processed"], [[0.6, 0.8, 0]]), r
    for _ in range(4):
        asyncio.run(_one_call(proxy, ctx))
    assert metric(b, "mnemo_connections_total") == b0 + 4
    assert metric(a, "mnemo_connections_refused_total") == refused0
    assert a.proc.wait(20) == 0, "".join(a.log)


def test_tls_in_mnemod_points_to_deploy(tmp_path):
    """mnemod refuses server.tls_cert and says where TLS is done."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"server": {"tls_cert": "c.pem",
                                          "tls_key": "k.pem"}}))
    r = subprocess.run([MNEMOD, "--config", str(cfg), "--port", "0",
                        "--data-dir", str(tmp_path / "data"), "--device",
                        "cpu"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "deploy/haproxy.cfg" in r.stderr, r.stderr
    assert os.path.exists(HAPROXY_CFG)
    assert os.path.exists(os.path.join(ROOT, "docs", "operations.md"))


# ---------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------
def promtool(*args, stdin=None):
    r = subprocess.run([tool("promtool"), *args], input=stdin,
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def test_prometheus_config_and_rules():
    rc, out = promtool("check", "config", os.path.join(DEPLOY,
                                                        "prometheus.yml"))
    assert rc == 0 and "alerts.yml" in out, out
    rc, out = promtool("check", "rules", os.path.join(DEPLOY, "alerts.yml"))
    assert rc == 0, out
    # Each rule fires on made-up series when it should, and only then.
    rc, out = promtool("test", "rules", os.path.join(HERE, "alerts_test.yml"))
    assert rc == 0 and "SUCCESS" in out, out


def test_metrics_pass_promtool_and_hold_the_alert_metrics(start_server):
    """promtool check metrics on the /metrics of a mnemod that has served
    requests (with errors, a store, a disk budget), and every mnemo_*
    metric that deploy/alerts.yml uses is there."""
    srv = start_server({"server": {"rate_limit": 0},
                        "storage": {"disk_limit": "64MB"},
                        "processing": {"cache_size": "1GB"}})
    # Before any event, every counter and gauge an alert uses is there at
    # 0: a counter that first appears at 1 is invisible to increase().
    fresh = srv.http("/metrics")[2].decode()
    for name in ("mnemo_watchdog_timeouts_total", "mnemo_rate_limited_total",
                 "mnemo_read_pauses_total", "mnemo_oversized_messages_total",
                 "mnemo_invalid_utf8_total", "mnemo_job_queue_depth",
                 "mnemo_jobs_in_flight"):
        assert re.search(rf"^{name} 0$", fresh, re.M), (name, fresh)

    async def go():
        async with connect(srv.url) as ws:
            await call(ws, "processEmbeddings", {
                "embeddings": [[1, 2, 3]], "options": {"normalize": True}})
            await call(ws, "createCollection", {"name": "c", "dim": 3})
            await call(ws, "addMemories", {"collection": "c", "memories": [
                {"id": "a", "embedding": [1, 0, 0], "content": "x"}]})
            await call(ws, "searchMemories", {"collection": "c",
                                              "query": [[1, 0, 0]]})
            await call(ws, "noSuchMethod", {})
            await call(ws, "processEmbeddings", {"embeddings": "nope"})
            await call(ws, "getMetrics")

    asyncio.run(go())
    status, headers, body = srv.http("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    rc, out = promtool("check", "metrics", stdin=text)
    assert rc == 0 and out.strip() == "", out

    assert re.search(r'^mnemo_request_errors_total\{method="processEmbeddings",'
                     r'code="-32602"\} 1$', text, re.M), text
    assert re.search(r'^mnemo_memory_budget_bytes\{tier="disk"\} 64000000$',
                     text, re.M), text
    assert re.search(r'^mnemo_memory_budget_bytes\{tier="host"\} 1000000000$',
                     text, re.M), text
    disk = re.search(r'^mnemo_memory_bytes\{tier="disk"\} (\d+)$', text, re.M)
    assert disk and int(disk.group(1)) > 0, text

    with open(os.path.join(DEPLOY, "alerts.yml")) as f:
        rules = f.read()
    used = set(re.findall(r"\b(mnemo_[a-z_]+)", rules))
    present = set(re.findall(r"^(mnemo_[a-z_]+)", text, re.M))
    # Histogram series are named after their family's buckets.
    missing = used - present
    # Registered by the engine only with a GPU backend (rpc.c).
    missing.discard("mnemo_cpu_fallbacks_total")
    assert not missing, f"alerts.yml uses metrics mnemod does not export: " \
        f"{sorted(missing)}"
    assert "mnemo_cpu_fallbacks_total" in used


# ---------------------------------------------------------------------------
# systemd unit, backups
# ---------------------------------------------------------------------------
def test_systemd_unit(tmp_path):
    unit = open(os.path.join(DEPLOY, "mnemod.service")).read()
    # The stop timeout leaves room for the drain (mnemod.service's
    # comment): drain_delay + drain_timeout + 2 s for running requests + 3 s
    # of closing.
    cfg = json.load(open(os.path.join(DEPLOY, "mnemod.json")))
    drain_s = (cfg["server"]["drain_delay"] +
               cfg["server"]["drain_timeout"]) / 1000
    # The delay outlasts HAProxy's detection: fall 2 checks, 1 s apart.
    assert cfg["server"]["drain_delay"] >= 2500
    stop = re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M)
    assert stop and int(stop.group(1)) >= drain_s + 6, unit
    assert re.search(r"^KillSignal=SIGTERM$", unit, re.M)
    assert "--config /etc/mnemo/mnemod.json" in unit
    assert cfg["storage"]["data_dir"] == "/var/lib/mnemo"
    assert re.search(r"^StateDirectory=mnemo$", unit, re.M)

    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed (package systemd); "
                    "the unit is checked on machines that have it")
    # verify wants ExecStart's program to exist: point it at this build.
    (tmp_path / "mnemod.service").write_text(
        unit.replace("/usr/local/bin/mnemod", os.path.abspath(MNEMOD)))
    r = subprocess.run([analyze, "verify", str(tmp_path / "mnemod.service")],
                       capture_output=True, text=True, timeout=60)
    # It exits 0 even on unknown keys: any output is a finding.
    assert r.returncode == 0 and (r.stdout + r.stderr).strip() == "", \
        r.stdout + r.stderr


def test_example_config_starts_mnemod(tmp_path):
    """deploy/mnemod.json is a valid configuration (data dir and port
    moved to a temporary place)."""
    from helpers import Server
    srv = Server(json.load(open(os.path.join(DEPLOY, "mnemod.json"))),
                 data_dir=str(tmp_path / "data")).start()
    try:
        assert srv.http("/ready")[0] == 200
    finally:
        assert srv.stop() == 0
        srv.cleanup()


def test_backup_with_mdb_copy_while_serving(start_server, tmp_path):
    """The backup of docs/operations.md, taken while mnemod serves and
    writes: mdb_copy of <data_dir>/store and a copy of <data_dir>/pca.
    A mnemod started on the copy finds everything acknowledged before it,
    and nothing written after."""
    mdb_copy = tool("mdb_copy")
    srv = start_server({"server": {"rate_limit": 0}})
    rng = np.random.default_rng(11)
    vecs = rng.standard_normal((50, 8)).astype(np.float32)
    fit_x = rng.standard_normal((64, 8)).astype(np.float32)

    async def before():
        async with connect(srv.url) as ws:
            assert "result" in await call(ws, "createCollection",
                                          {"name": "kb", "dim": 8})
            r = await call(ws, "addMemories", {"collection": "kb", "memories": [
                {"id": f"v{i}", "embedding": vecs[i].tolist(),
                 "content": f"text {i}"} for i in range(40)]})
            assert r["result"]["count"] == 40, r
            r = await call(ws, "fitPCA", {"name": "p4", "n_components": 4,
                                          "embeddings": fit_x.tolist()})
            assert "result" in r, r

    asyncio.run(before())
    backup = tmp_path / "backup"
    (backup / "store").mkdir(parents=True)
    r = subprocess.run([mdb_copy, os.path.join(srv.data_dir, "store"),
                        str(backup / "store")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    shutil.copytree(os.path.join(srv.data_dir, "pca"), backup / "pca")

    async def after():
        async with connect(srv.url) as ws:
            r = await call(ws, "addMemories", {"collection": "kb", "memories": [
                {"id": f"v{i}", "embedding": vecs[i].tolist()}
                for i in range(40, 50)]})
            assert r["result"]["count"] == 10, r

    asyncio.run(after())
    assert os.listdir(backup / "store") == ["data.mdb"]

    restored = start_server({"server": {"rate_limit": 0}},
                            data_dir=str(backup))

    async def check():
        async with connect(restored.url) as ws:
            r = await call(ws, "getCollection", {"name": "kb"})
            assert r["result"]["count"] == 40, r
            r = await call(ws, "searchMemories", {
                "collection": "kb", "query": [vecs[7].tolist()], "k": 1})
            hit = r["result"]["results"][0][0]
            assert hit["id"] == "v7" and hit["content"] == "text 7", hit
            r = await call(ws, "getMemories", {"collection": "kb",
                                               "ids": ["v45"]})
            return r, await call(ws, "listPCAModels")

    r, models = asyncio.run(check())
    assert r["result"]["missing"] == ["v45"], r
    assert [m["name"] for m in models["result"]["models"]] == ["p4"], models
