"""server_load.py - issue 4's request-path targets on the device machine:
processEmbeddings normalize 32x768 over loopback with binary frames, mnemod
on the CUDA backend against mnemod on the CPU backend, same machine, same
run, driven by bench/load (the C load generator).

For each backend (and, on CUDA, with dynamic batching on and off):
  - one connection, one request outstanding: p50 / p99 latency;
  - 256 connections, one request outstanding each: requests/s.

Standard library only (the device's python3 is PyTorch's, without our
Debian packages). One JSON object per line on stdout and in --out.

    python3 server_load.py --mnemod build/bin/mnemod --load build/bench/load
                           [--out FILE] [--duration S] [--conns N]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

LISTEN = re.compile(r"listening on ws://[^:\s]+:(\d+)")


def start(mnemod, device, cfg, tmp):
    path = os.path.join(tmp, "config-%s.json" % device)
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.Popen(
        [mnemod, "--config", path, "--port", "0", "--data-dir",
         os.path.join(tmp, "data-" + device), "--device", device,
         "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0, port, lines = time.time(), None, []
    while time.time() - t0 < 60:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = LISTEN.search(line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        p.kill()
        return None, None, "".join(lines[-20:])
    threading.Thread(target=lambda: [None for _ in p.stdout],
                     daemon=True).start()
    return p, port, "".join(lines)


def load(binary, port, conns, duration, warmup, procs=1):
    """`procs` generator processes share `conns` connections (one
    generator thread tops out near 11k requests/s of 98 KB each); their
    requests/s add up, the latency percentiles are the worst process's."""
    per = max(1, conns // procs)
    cmd = [binary, "--port", str(port), "--encoding", "binary",
           "--conns", str(per), "--depth", "1", "--rows", "32",
           "--width", "768", "--duration", str(duration), "--warmup",
           str(warmup), "--options", '{"normalize":true}']
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
          for _ in range(procs)]
    res = {"rps": 0.0, "errors": 0}
    for p in ps:
        out, err = p.communicate(timeout=duration + warmup + 60)
        lines = out.strip().splitlines()
        r = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
        res["rps"] += r.get("rps") or 0.0
        res["errors"] += r.get("errors") or 0
        for k in ("p50_ms", "p99_ms"):
            if r.get(k) is not None:
                res[k] = max(res.get(k, 0.0), r[k])
        if p.returncode != 0:
            res["failed"] = err.strip()[-300:]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnemod", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--out")
    ap.add_argument("--duration", type=float, default=3)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--conns", type=int, default=256)
    ap.add_argument("--devices", default="cuda,cpu")
    ap.add_argument("--procs", type=int, default=4,
                    help="load generator processes for the --conns run")
    args = ap.parse_args()
    out = open(args.out, "w") if args.out else None
    tmp = tempfile.mkdtemp(prefix="mnemo-gpu-load-")

    def emit(row):
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    base = {"server": {"rate_limit": 0, "log_level": "warn",
                       "max_connections": 4096}}
    runs = []
    for dev in args.devices.split(","):
        runs.append((dev, "batching on (default window)", {}))
        if dev == "cuda":
            # every job on the GPU (no small-job routing to the CPU)
            runs.append((dev, "all on gpu, batching on",
                         {"gpu": {"min_elements": 0}}))
            runs.append((dev, "all on gpu, batching off",
                         {"gpu": {"min_elements": 0},
                          "processing": {"batch_window_us": 0}}))
    try:
        for dev, label, extra in runs:
            cfg = json.loads(json.dumps(base))
            for k, v in extra.items():
                cfg.setdefault(k, {}).update(v)
            p, port, log = start(args.mnemod, dev, cfg, tmp)
            if p is None:
                emit({"op": "server %s" % dev, "label": label,
                      "failed": "mnemod did not start: " + log})
                continue
            try:
                one = load(args.load, port, 1, args.duration, args.warmup)
                many = load(args.load, port, args.conns, args.duration,
                            args.warmup, args.procs)
            finally:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
            emit({"op": "server normalize 32x768 binary", "device": dev,
                  "label": label, "p50_ms_1conn": one.get("p50_ms"),
                  "p99_ms_1conn": one.get("p99_ms"),
                  "rps_1conn": one.get("rps"),
                  "rps_%dconn" % args.conns: many.get("rps"),
                  "p50_ms_%dconn" % args.conns: many.get("p50_ms"),
                  "errors": (one.get("errors", 0) or 0) +
                            (many.get("errors", 0) or 0),
                  "failed": one.get("failed") or many.get("failed")})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
