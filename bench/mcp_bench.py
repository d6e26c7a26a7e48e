#!/usr/bin/python3
"""MCP over HTTP: mnemod's /mcp against the official TypeScript SDK's
Streamable HTTP server (bench/peers/mcp_sdk_server.mjs), in the same run.

Work: tools/call processEmbeddings {normalize} on 32 x 768 JSON numbers,
each of --conns keep-alive connections its own MCP session with one request
in flight (bench/mcp_load.mjs, closed loop). The servers run on core 0 and
the generator on core 1 (taskset; --no-pin to turn that off). mnemod runs
with one worker, like bench/load_bench.py. The two servers are measured in
turn, --rounds times, and each round's ratio is mnemod / SDK from that
round. For reference, mnemod's WebSocket path on the same work
(processEmbeddings as JSON text frames, bench/load) is measured in each
round too.

Writes the table to stdout and bench/out/mcp_http.md, raw lines to
bench/out/mcp_http.jsonl.
    /usr/bin/python3 bench/mcp_bench.py --duration 5 --rounds 3
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from load_bench import start  # noqa: E402


def pin(cpu, args):
    return ["taskset", "-c", str(cpu)] if not args.no_pin else []


def mcp_load(port, args, label):
    cmd = pin(1, args) + [
        "node", os.path.join(HERE, "mcp_load.mjs"),
        "--url", f"http://127.0.0.1:{port}/mcp", "--conns", str(args.conns),
        "--duration", str(args.duration), "--warmup", str(args.warmup),
        "--label", label]
    r = subprocess.run(cmd, capture_output=True, text=True,
                       timeout=args.duration + args.warmup + 120)
    if r.returncode != 0:
        sys.exit(f"mcp_load against {label} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ws_load(load, port, args):
    cmd = pin(1, args) + [
        load, "--port", str(port), "--encoding", "json",
        "--conns", str(args.conns), "--depth", "1",
        "--duration", str(args.duration), "--warmup", str(args.warmup),
        "--label", "mnemod websocket"]
    r = subprocess.run(cmd, capture_output=True, text=True,
                       timeout=args.duration + args.warmup + 120)
    if r.returncode != 0:
        sys.exit(f"bench/load failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args()
    mnemod = os.path.join(args.build, "bin", "mnemod")
    load = os.path.join(args.build, "bench", "load")
    for p in (mnemod, load):
        if not os.path.exists(p):
            sys.exit(f"{p} is missing: build first (make)")
    if not shutil.which("node"):
        sys.exit("node is missing: make deps-test installs it")

    tmp = tempfile.mkdtemp(prefix="mnemo-mcpbench-")
    env = dict(os.environ, MNEMO_SERVER_RATE_LIMIT="0")
    srv, port = start([mnemod, "--port", "0", "--data-dir",
                       os.path.join(tmp, "data"), "--device", "cpu"],
                      r"listening on ws://[^:\s]+:(\d+)",
                      None if args.no_pin else 0,
                      env=dict(env, MNEMO_PROCESSING_WORKERS="1"))
    peer, peer_port = start(
        ["node", os.path.join(HERE, "peers", "mcp_sdk_server.mjs")],
        r"listening on http://[^:\s]+:(\d+)/mcp",
        None if args.no_pin else 0)
    rows, raw = [], []
    try:
        for rnd in range(args.rounds):
            m = mcp_load(port, args, "mnemod /mcp")
            s = mcp_load(peer_port, args, "SDK server")
            w = ws_load(load, port, args)
            for r in (m, s, w):
                r["round"] = rnd + 1
                raw.append(r)
            rows.append((rnd + 1, m, s, w))
            print(f"round {rnd + 1}: mnemod /mcp {m['rps']:.0f} req/s, "
                  f"SDK {s['rps']:.0f} req/s, ratio {m['rps'] / s['rps']:.1f}x;"
                  f" mnemod WebSocket {w['rps']:.0f} req/s", flush=True)
    finally:
        for p in (srv, peer):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    with open("/proc/loadavg") as f:
        load_avg = " ".join(f.read().split()[:3])
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"MCP over HTTP, {time.strftime('%Y-%m-%d %H:%M')}, {cpu}, "
        f"{os.cpu_count()} CPUs, load average {load_avg} at the end.",
        "",
        f"tools/call processEmbeddings normalize, 32 x 768 JSON numbers, "
        f"{args.conns} sessions, one request in flight each, "
        f"{args.duration:g} s per measurement. Servers on core 0 "
        f"(mnemod with 1 worker), generator on core 1.",
        "",
        "| round | mnemod /mcp req/s | SDK server req/s | mnemod / SDK "
        "| mnemod /mcp p50 / p99 ms | SDK p50 / p99 ms "
        "| mnemod WebSocket JSON req/s |",
        "|---|---:|---:|---:|---|---|---:|"]
    for rnd, m, s, w in rows:
        lines.append(
            f"| {rnd} | {m['rps']:.0f} | {s['rps']:.0f} | "
            f"{m['rps'] / s['rps']:.1f}x | {m['p50_ms']:.1f} / "
            f"{m['p99_ms']:.1f} | {s['p50_ms']:.1f} / {s['p99_ms']:.1f} | "
            f"{w['rps']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = os.path.join(HERE, "out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "mcp_http.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "mcp_http.jsonl"), "w") as f:
        for r in raw:
            f.write(json.dumps(r) + "\n")
    if any(r.get("errors") for r in raw):
        sys.exit("some requests failed: " + json.dumps(
            [r for r in raw if r.get("errors")])[:2000])


if __name__ == "__main__":
    main()
