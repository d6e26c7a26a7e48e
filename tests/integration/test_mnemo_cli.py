"""The `mnemo` command-line client against a real mnemod.

Every call goes through the binary (build/bin/mnemo, or $MNEMO_CLI) over a
real socket; results are checked against numpy and against the same calls
made with python3-websockets. Failures are checked for their exit status
(1 the server's error, 2 bad command line, nothing sent, 3 no answer) and
for a message that says what went wrong.
"""
import base64
import hashlib
import json
import os
import socket
import subprocess
import threading

import numpy as np
import pytest

from helpers import MNEMOD, normalize_ref, rpc, result_of

CLI = os.environ.get("MNEMO_CLI") or os.path.join(os.path.dirname(MNEMOD),
                                                  "mnemo")


def mnemo(server, *args, stdin=None, env=None, url=None, timeout=60):
    """Run the client: (exit status, stdout, stderr)."""
    e = dict(os.environ)
    e.pop("MNEMO_URL", None)
    e.pop("MNEMO_TOKEN", None)
    e.update(env or {})
    cmd = [CLI, "--url", url or server.url] + list(args)
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                       env=e, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def ok(server, *args, **kw):
    rc, out, err = mnemo(server, *args, **kw)
    assert rc == 0, f"mnemo {args} exited {rc}: {err}"
    assert err == ""
    return json.loads(out)


def requests_total(server):
    return result_of(rpc(server, "getMetrics"))["requests"]["total"]


def test_health_matches_a_websocket_client(server):
    mine = ok(server, "health")
    ref = result_of(rpc(server, "health"))
    for key in ("status", "state", "backend", "device", "version"):
        assert mine[key] == ref[key], key
    assert mine["store"]["collections"] == ref["store"]["collections"]


def test_process_embeddings_against_numpy(server):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 33)).astype(np.float32)
    out = ok(server, "processEmbeddings",
             "embeddings:=" + json.dumps(x.tolist()),
             'options:={"normalize": true}')
    got = np.array(out["processed"], dtype=np.float64)
    np.testing.assert_allclose(got, normalize_ref(x), rtol=0, atol=2e-7)
    assert out["metadata"]["count"] == 7


def test_numbers_are_printed_as_the_server_wrote_them(server):
    rc, out, err = mnemo(server, "processEmbeddings",
                         "embeddings:=[[3, 4, 0]]",
                         'options:={"normalize": true}')
    assert rc == 0, err
    # float32 0.6 read into a double and printed again would be
    # 0.60000002384185791; the client keeps the server's text.
    assert "[0.6, 0.8, 0]" in out
    rc, compact, err = mnemo(server, "--compact", "processEmbeddings",
                             "embeddings:=[[3, 4, 0]]",
                             'options:={"normalize": true}')
    assert rc == 0, err
    assert compact.count("\n") == 1 and '"processed":[[0.6,0.8,0]]' in compact
    a, b = json.loads(out), json.loads(compact)
    a["metadata"].pop("processing_time")
    b["metadata"].pop("processing_time")
    assert a == b


def test_store_and_search_from_a_file_stdin_and_pairs(server, tmp_path):
    rng = np.random.default_rng(9)
    n, d = 200, 16
    x = rng.standard_normal((n, d)).astype(np.float32)
    req = tmp_path / "create.json"
    req.write_text(json.dumps({"name": "cli_notes", "dim": d,
                               "metric": "cosine"}))
    info = ok(server, "createCollection", "@" + str(req))
    assert (info["name"], info["dim"], info["count"]) == ("cli_notes", d, 0)
    memories = [{"id": f"m{i}", "embedding": x[i].tolist(),
                 "content": f"note {i}"} for i in range(n)]
    added = ok(server, "addMemories", "-", stdin=json.dumps(
        {"collection": "cli_notes", "memories": memories}))
    assert added["ids"] == [f"m{i}" for i in range(n)]
    q = rng.standard_normal(d).astype(np.float32)
    hits = ok(server, "searchMemories", "collection=cli_notes",
              "query:=" + json.dumps([q.tolist()]), "k:=5")
    xd, qd = x.astype(np.float64), q.astype(np.float64)
    sims = xd @ qd / np.linalg.norm(xd, axis=1) / np.linalg.norm(qd)
    order = np.argsort(-sims)[:5]
    got = hits["results"][0]
    assert [h["id"] for h in got] == [f"m{i}" for i in order]
    np.testing.assert_allclose([h["similarity"] for h in got], sims[order],
                               rtol=0, atol=1e-5)
    assert got[0]["content"] == f"note {order[0]}"
    # What the client stored, a WebSocket client reads back.
    back = result_of(rpc(server, "getMemories", {
        "collection": "cli_notes", "ids": ["m3"], "include": ["embedding"]}))
    np.testing.assert_array_equal(
        np.array(back["memories"][0]["embedding"], dtype=np.float32), x[3])


def test_tools_list_and_raw_reply(server):
    tools = ok(server, "tools/list")["tools"]
    assert {"processEmbeddings", "searchMemories", "health"} <= {
        t["name"] for t in tools}
    rc, out, err = mnemo(server, "--raw", "ping")
    assert rc == 0, err
    reply = json.loads(out)
    assert reply["jsonrpc"] == "2.0" and reply["id"] == 1 and "result" in reply


def test_server_errors_exit_1_with_code_and_message(server):
    rc, out, err = mnemo(server, "noSuchMethod")
    assert (rc, out) == (1, "")
    assert "error -32601" in err and '"noSuchMethod" does not exist' in err
    rc, out, err = mnemo(server, "searchMemories", "collection=nowhere",
                         "query:=[[1, 0]]", "k:=3")
    assert rc == 1 and "error -32602" in err and "nowhere" in err
    # --raw prints the whole error reply on stdout, still exit 1
    rc, out, err = mnemo(server, "--raw", "noSuchMethod")
    assert rc == 1 and json.loads(out)["error"]["code"] == -32601


@pytest.mark.parametrize("args, words", [
    (["processEmbeddings", "embeddings:=[[1, 2"], "not valid JSON"),
    (["processEmbeddings", "{\"embeddings\": [[1]"], "not valid JSON"),
    (["processEmbeddings", "embeddings"], "key=text / key:=json"),
    (["health", "=x"], "key=text / key:=json"),
    (["health", "a=1", "a=2"], "given twice"),
    (["health", "@/nonexistent/params.json"], "cannot open params file"),
    (["health", "42"], "key=text / key:=json"),
    (["--timeout", "0", "health"], "--timeout"),
    (["--url", "http://127.0.0.1:1/", "health"], "only ws://"),
    ([], "usage: mnemo"),
])
def test_bad_command_lines_send_nothing(server, args, words):
    before = requests_total(server)
    rc, out, err = mnemo(server, *args)
    assert rc == 2, (rc, err)
    assert words in err and out == ""
    # getMetrics counts itself, so one more and no other
    assert requests_total(server) == before + 1


def test_bare_json_value_from_stdin_is_refused(server):
    rc, out, err = mnemo(server, "health", "-", stdin="3")
    assert rc == 2 and "must be a JSON object of named params, not a bare" in err
    rc, out, err = mnemo(server, "health", "-", stdin="[1, 2]")
    assert rc == 2 and "not an array" in err


def test_no_server_exits_3(server):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    rc, out, err = mnemo(server, "health", url=f"ws://127.0.0.1:{port}")
    assert rc == 3 and "cannot connect" in err and str(port) in err


def test_silent_server_times_out(server):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)  # accepts, never answers the handshake
    try:
        port = s.getsockname()[1]
        rc, out, err = mnemo(server, "--timeout", "0.5", "health",
                             url=f"ws://127.0.0.1:{port}")
        assert rc == 3 and "no answer" in err and "0.5 s" in err
    finally:
        s.close()


def test_server_closing_before_the_reply_exits_3(server):
    """A peer that upgrades, reads the request and closes with 1011."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    port = lst.getsockname()[1]

    def peer():
        c, _ = lst.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += c.recv(4096)
        key = [ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n")
               if ln.lower().startswith(b"sec-websocket-key:")][0]
        acc = base64.b64encode(hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket"
                  b"\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acc +
                  b"\r\nSec-WebSocket-Protocol: mcp\r\n\r\n")
        c.recv(65536)  # the request
        body = (1011).to_bytes(2, "big") + b"boom"
        c.sendall(bytes([0x88, len(body)]) + body)
        c.recv(4096)
        c.close()

    t = threading.Thread(target=peer, daemon=True)
    t.start()
    try:
        rc, out, err = mnemo(server, "--timeout", "10", "health",
                             url=f"ws://127.0.0.1:{port}")
        assert rc == 3, err
        assert "closed the connection before answering" in err
        assert "1011" in err and "boom" in err
    finally:
        t.join(5)
        lst.close()


def test_oversized_request_is_refused_by_the_server(start_server):
    small = start_server({"server": {"rate_limit": 0,
                                     "max_message_size": "64KiB"}})
    x = np.ones((100, 768), dtype=np.float32)
    rc, out, err = mnemo(small, "processEmbeddings", "-",
                         stdin=json.dumps({"embeddings": x.tolist()}))
    assert rc == 3 and "1009" in err, err
    # and the server goes on serving
    assert ok(small, "health")["status"] == "ok"


def test_large_request_round_trips(server):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 768)).astype(np.float32)
    rc, out, err = mnemo(server, "--compact", "processEmbeddings", "-",
                         stdin=json.dumps({"embeddings": x.tolist(),
                                           "options": {"normalize": True}}))
    assert rc == 0, err
    got = np.array(json.loads(out)["processed"], dtype=np.float64)
    np.testing.assert_allclose(got, normalize_ref(x), rtol=0, atol=2e-7)


def test_auth_token(start_server):
    locked = start_server({"server": {"rate_limit": 0,
                                      "auth_tokens": ["s3cret"]}})
    rc, out, err = mnemo(locked, "health")
    assert rc == 3 and "401" in err and "--token" in err
    rc, out, err = mnemo(locked, "--token", "wrong", "health")
    assert rc == 3 and "401" in err
    assert ok(locked, "--token", "s3cret", "health")["status"] == "ok"
    assert ok(locked, "health", env={"MNEMO_TOKEN": "s3cret"})["status"] == "ok"


def test_url_from_the_environment_and_help(server):
    p = subprocess.run([CLI, "ping"], capture_output=True, text=True,
                       env=dict(os.environ, MNEMO_URL=server.url),
                       timeout=30)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {}
    p = subprocess.run([CLI, "--help"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0 and p.stdout.startswith("usage: mnemo")


def readme_blocks(lang):
    """The fenced `lang` blocks of the README's "A first example"."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    with open(os.path.join(root, "README.md")) as f:
        text = f.read()
    section = text.split("## A first example", 1)[1].split("\n## ", 1)[0]
    return [b.split("\n", 1)[1] for b in section.split("```")[1::2]
            if b.startswith(lang + "\n")]


def test_readme_first_example_with_the_client(start_server):
    """The README's commands, pasted as they are, against a fresh server."""
    fresh = start_server({"server": {"rate_limit": 0}})
    script = readme_blocks("sh")[0]
    assert script.count("build/bin/mnemo ") == 4
    script = script.replace("build/bin/mnemo ", CLI + " ")
    p = subprocess.run(["bash", "-e", "-c", script], capture_output=True,
                       text=True, timeout=60,
                       env=dict(os.environ, MNEMO_URL=fresh.url))
    assert p.returncode == 0, p.stderr
    assert '"processed": [\n    [0.6, 0.8, 0],' in p.stdout
    last = json.loads(p.stdout[p.stdout.rindex('{\n  "results"'):])
    assert last["results"][0][0]["content"] == "the sky is blue"


def test_readme_first_example_in_python(start_server):
    fresh = start_server({"server": {"rate_limit": 0}})
    block = readme_blocks("sh")[1]
    code = block.split("<<'PY'\n", 1)[1].rsplit("\nPY", 1)[0]
    assert "ws://127.0.0.1:3001" in code
    code = code.replace("ws://127.0.0.1:3001", fresh.url)
    p = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    first, last = p.stdout.strip().split("\n")[0], p.stdout.strip().split(
        "\n")[-1]
    assert "'processed': [[0.6, 0.8, 0], [0.57735026" in first
    assert last == "the sky is blue"


def test_readme_first_example_in_node(start_server):
    fresh = start_server({"server": {"rate_limit": 0}})
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    code = readme_blocks("js")[0]
    assert "ws://127.0.0.1:3001" in code
    code = code.replace("ws://127.0.0.1:3001", fresh.url)
    # `npm install ws`, as the README says: the test suite's own copy.
    env = dict(os.environ, NODE_PATH=os.path.join(root, "tests", "node",
                                                  "node_modules"))
    p = subprocess.run(["node", "-e", code], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert "processed: [ [ 0.6, 0.8, 0 ] ]" in p.stdout, p.stdout


def test_readme_mcp_http_curl_example(start_server):
    """The README's curl session on /mcp, pasted, against a fresh server."""
    fresh = start_server({"server": {"rate_limit": 0}})
    script = readme_blocks("sh")[2]
    assert script.count("http://127.0.0.1:3001/mcp") == 3
    script = script.replace("127.0.0.1:3001", f"127.0.0.1:{fresh.port}")
    p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    reply = json.loads(p.stdout)
    assert reply["id"] == 2 and not reply["result"].get("isError"), reply
    content = reply["result"]["structuredContent"]
    assert content["processed"] == [[0.6, 0.8]]
