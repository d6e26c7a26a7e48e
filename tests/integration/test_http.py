"""HTTP on the WebSocket port: /health, /ready, /metrics, /, and 404."""
import asyncio
import json
import re

from helpers import DEVICE, call, connect, result_of


def test_health_is_the_engine_health_document(server):
    status, headers, body = server.http("/health")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["status"] == "ok"
    assert doc["state"] in ("normal", "high_load", "recovery")
    assert doc["backend"] == DEVICE
    assert doc["uptime_s"] >= 0
    # The same document as the health method, up to the uptime.
    async def go():
        async with connect(server.url) as ws:
            return result_of(await call(ws, "health"))

    via_rpc = asyncio.run(go())
    assert via_rpc["backend"] == doc["backend"]
    assert via_rpc["status"] == doc["status"]
    assert via_rpc["uptime_s"] >= doc["uptime_s"]


def test_ready_while_serving(server):
    status, headers, body = server.http("/ready")
    assert status == 200
    assert json.loads(body)["ready"] is True


def parse_prometheus(text):
    """{(name, labels-string): value} for every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$",
                     line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def test_metrics_is_prometheus_text_and_counts_requests(server):
    before = parse_prometheus(server.http("/metrics")[2].decode())

    async def go():
        async with connect(server.url) as ws:
            for i in range(5):
                result_of(await call(ws, "health", rid=i))
            reply = await call(ws, "noSuchMethod", rid=99)
            assert reply["error"]["code"] == -32601

    asyncio.run(go())
    status, headers, body = server.http("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    after = parse_prometheus(text)
    key = ("mnemo_requests_total", '{method="health"}')
    assert after[key] - before.get(key, 0) == 5
    errs = [v for (n, l), v in after.items()
            if n == "mnemo_request_errors_total" and 'code="-32601"' in l]
    assert errs and sum(errs) >= 1
    assert any(n == "mnemo_request_duration_seconds_bucket"
               and 'method="health"' in l for (n, l) in after)
    assert after[("mnemo_connections_total", "")] >= 1
    assert after[("mnemo_bytes_received_total", "")] > 0
    assert after[("mnemo_bytes_sent_total", "")] > 0
    # Every sample belongs to a family announced with # TYPE.
    types = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    for (name, _), _v in after.items():
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or base in types, name


def test_index_page_is_the_dashboard_with_its_csp(server):
    """/ and /index.html serve the dashboard (src/server/dashboard.html):
    one self-contained page that talks JSON-RPC over a WebSocket to its own
    origin, with a Content-Security-Policy that allows its one inline
    script and style by their SHA-256 and nothing else. (What the page
    shows is tested in a browser: tests/node/dashboard.test.mjs.)"""
    import base64
    import hashlib
    status, headers, body = server.http("/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    html = body.decode()
    assert "<title>mnemo dashboard</title>" in html
    assert 'href="/health"' in html and 'href="/metrics"' in html
    assert "new WebSocket(wsUrl, 'mcp')" in html
    assert "getMetrics" in html and "listCollections" in html
    # Self-contained: nothing loaded from elsewhere, no markup from data.
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "innerHTML" not in html
    assert server.http("/index.html")[2] == body

    csp = dict(d.strip().split(" ", 1)
               for d in headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["connect-src"] == "'self'"
    assert "unsafe" not in headers["Content-Security-Policy"]

    def sha(tag):
        m = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        assert len(m) == 1, f"one inline <{tag}> expected"
        d = hashlib.sha256(m[0].encode()).digest()
        return f"'sha256-{base64.b64encode(d).decode()}'"

    assert csp["script-src"] == sha("script")
    assert csp["style-src"] == sha("style")


def test_unknown_path_is_404_and_says_what_exists(server):
    status, _, body = server.http("/nope")
    assert status == 404
    assert body.startswith(b"no such page: /nope (try /, /health, /ready, "
                           b"/metrics, or POST /mcp"), body


def test_only_get_and_head_are_served(server):
    status, _, body = server.http("/health", method="POST")
    assert status == 405
    assert b"only GET and HEAD" in body


def test_head_gets_the_get_headers_without_a_body(server):
    """HEAD (load balancers' probes): the status, type and length a GET
    gets, no body, and the connection stays usable (HTTP keep-alive)."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for path, want in (("/ready", 200), ("/metrics", 200), ("/nope", 404),
                           ("/health", 200), ("/", 200)):
            c.request("GET", path)
            g = c.getresponse()
            gbody = g.read()
            c.request("HEAD", path)
            h = c.getresponse()
            assert h.read() == b""
            assert h.status == g.status == want
            assert h.getheader("Content-Type") == g.getheader("Content-Type")
            if path in ("/ready", "/nope", "/"):  # the same document both times
                assert int(h.getheader("Content-Length")) == len(gbody)
            else:  # counters and uptime move between the two
                assert int(h.getheader("Content-Length")) > 0
    finally:
        c.close()
