#!/usr/bin/python3
"""Before / after for the server: two or more mnemod builds, run in turn
against the same load, so that both see the same machine.

    /usr/bin/python3 bench/load_ab.py BUILD_A,BUILD_B [--reps 3]
        [--rate R] [--encoding binary] [--duration 4]

Each run starts a fresh mnemod of one build pinned to --server-cpu with
one worker (rate limit off), runs bench/load (from the first build) on
--client-cpu, and prints requests/s, p50 / p99 and the server's CPU time
and minor page faults per reply (from /proc/PID/stat, over the whole run
including warm-up). --rate 0 is a closed loop; otherwise an open loop at
that many requests/s, where latency counts from the intended send time.
The medians per build come last.
"""
import argparse
import json
import os
import socket
import subprocess
import tempfile
import time


def proc_stat(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(f[11]) + int(f[12])) / tck, int(f[7])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def one_run(build, load, args):
    d = tempfile.mkdtemp(prefix="mnemo-ab-")
    cfg = os.path.join(d, "config.json")
    with open(cfg, "w") as f:
        json.dump({"server": {"rate_limit": 0, "log_level": "warn"},
                   "processing": {"workers": args.workers}}, f)
    port = free_port()
    srv = subprocess.Popen(
        ["taskset", "-c", str(args.server_cpu),
         os.path.join(build, "bin", "mnemod"), "--config", cfg, "--port",
         str(port), "--data-dir", os.path.join(d, "data"), "--device", "cpu"],
        stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.8)
        cmd = ["taskset", "-c", str(args.client_cpu), load, "--port",
               str(port), "--duration", str(args.duration), "--warmup", "1",
               "--encoding", args.encoding]
        if args.rate > 0:
            cmd += ["--rate", str(args.rate)]
        c0, f0 = proc_stat(srv.pid)
        # Exit status 3: some requests were still unanswered at the end
        # (an overloaded open loop); the figures are printed all the same.
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode not in (0, 3) or not out.stdout.strip():
            raise RuntimeError(f"load failed ({out.returncode}): {out.stderr}")
        c1, f1 = proc_stat(srv.pid)
    finally:
        srv.terminate()
        srv.wait()
    j = json.loads(out.stdout.strip().splitlines()[-1])
    replies = max(j["mb_in"] * 1e6 / j["request_bytes"], 1)
    return {"rps": j["rps"], "p50": j["p50_ms"], "p99": j["p99_ms"],
            "cpu_us": (c1 - c0) / replies * 1e6, "faults": (f1 - f0) / replies}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("builds", help="build folders, comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--encoding", default="binary")
    ap.add_argument("--duration", type=float, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    args = ap.parse_args()
    builds = args.builds.split(",")
    load = os.path.join(builds[0], "bench", "load")
    res = {b: [] for b in builds}
    for _ in range(args.reps):
        for b in builds:
            r = one_run(b, load, args)
            res[b].append(r)
            print(f"{b:28s} {r['rps']:8.0f} req/s  p50 {r['p50']:9.2f} ms  "
                  f"p99 {r['p99']:9.2f} ms  {r['cpu_us']:6.1f} us CPU/reply  "
                  f"{r['faults']:5.1f} faults/reply", flush=True)
    mode = f"open loop at {args.rate:.0f}/s" if args.rate > 0 else "closed loop"
    print(f"\nmedians, {args.encoding}, {mode}, {args.reps} run(s) each:")
    for b in builds:
        rs = res[b]
        med = lambda key: sorted(r[key] for r in rs)[len(rs) // 2]
        print(f"{b:28s} {med('rps'):8.0f} req/s  p99 {med('p99'):9.2f} ms  "
              f"{med('cpu_us'):6.1f} us CPU/reply")


if __name__ == "__main__":
    main()
