#!/usr/bin/python3
"""run_bench.py - run bench_ops (libmnemo) and peers.py (numpy, scikit-learn,
FAISS) one after the other in the same run, join their results by key and
print one table of times and ratios; the same table goes to
bench/out/latest.md and the raw lines to bench/out/latest.jsonl.

    /usr/bin/python3 bench/run_bench.py --build build [--quick]

Ratios are peer time / mnemo time (above 1: mnemo is faster). GB/s counts
the bytes an op must read and write; "% memcpy" (for ops moving 64 MiB or
more, beyond the caches) compares that with the measured memcpy bandwidth
of the same run (the better of one thread and all threads).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BIG_BYTES = 64 << 20  # % of memcpy is shown for ops moving at least this
ROOT = os.path.dirname(HERE)


def run_lines(cmd):
    """Run cmd, echo progress to stderr, return its JSON lines."""
    print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out = []
    for line in p.stdout:
        line = line.strip()
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        out.append(rec)
        if "key" in rec:
            print(f"  {rec['impl']:8s} {rec['key']:45s} "
                  f"{rec['ms_p50']:10.3f} ms", file=sys.stderr, flush=True)
        elif "error" in rec:
            print("  error: " + rec["error"], file=sys.stderr, flush=True)
    rc = p.wait()
    if rc != 0:
        raise SystemExit(f"{cmd[0]} exited with status {rc}")
    return out


def machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1048576:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{model}, {os.cpu_count()} CPUs{mem}"


def fmt_ms(v):
    if v is None:
        return ""
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def fmt_ratio(peer, ours):
    if peer is None or ours is None or ours <= 0:
        return ""
    return f"{peer / ours:.2f}x"


def rate(r):
    """The GB/s cell: bandwidth, or GFLOP/s for compute-bound ops."""
    if r["gbps"] is not None:
        return f"{r['gbps']:.1f}"
    if r["gflops"] is not None:
        return f"{r['gflops']:.0f} GFLOP/s"
    return ""


def build_table(mnemo, peers):
    """Rows: (op, shape, mnemo, numpy, faiss, sklearn, gbps, pct)."""
    by_key = {}
    order = []
    for r in mnemo:
        if "key" in r:
            by_key.setdefault(r["key"], {})["mnemo"] = r
            order.append(r["key"])
    for r in peers:
        if "key" in r:
            if r["key"] not in by_key:
                order.append(r["key"])
            by_key.setdefault(r["key"], {})[r["impl"]] = r
    copy_bw = max((r.get("gbps", 0) for r in mnemo
                   if r.get("op") in ("memcpy", "memcpy_1thread")), default=0)
    rows = []
    for key in order:
        e = by_key[key]
        m = e.get("mnemo")
        ref = m or next(iter(e.values()))
        ms = m["ms_p50"] if m else None
        gbps = m.get("gbps") if m else None
        pct = None
        # Only where the traffic cannot stay in the caches does a share of
        # the memory bandwidth mean anything.
        if gbps and copy_bw and m.get("bytes", 0) >= BIG_BYTES and \
                not ref["op"].startswith(("memcpy", "pca_")):
            pct = 100 * gbps / copy_bw
        rows.append(dict(
            op=ref["op"], shape=ref["shape"], mnemo=ms,
            numpy=e.get("numpy", {}).get("ms_p50"),
            faiss=e.get("faiss", {}).get("ms_p50"),
            sklearn=e.get("sklearn", {}).get("ms_p50"),
            gbps=gbps, pct=pct, gflops=m.get("gflops") if m else None,
            extra=m))
    return rows, copy_bw


def targets(rows, mnemo):
    """The issue's targets, each (text, met or None when not measured)."""
    get = {(r["op"], r["shape"]): r for r in rows}
    out = []

    def ratio(r, peer):
        if not r or r["mnemo"] is None or r[peer] is None:
            return None
        return r[peer] / r["mnemo"]

    for op in ("normalize", "quantize_int8"):
        r = get.get((op, "65536x768"))
        rn, rf = ratio(r, "numpy"), ratio(r, "faiss")
        pct = r["pct"] if r else None
        if rn is None or rf is None or pct is None:
            out.append((f"{op} 65536x768: >= 4x numpy, >= 1.5x FAISS, "
                        ">= 70% memcpy", None, "not measured"))
            continue
        out.append((f"{op} 65536x768: >= 4x numpy, >= 1.5x FAISS, "
                    ">= 70% memcpy", rn >= 4 and rf >= 1.5 and pct >= 70,
                    f"{rn:.2f}x numpy, {rf:.2f}x FAISS, {pct:.0f}% memcpy"))
    r = get.get(("pca_fit", "100000x768->256"))
    rf = ratio(r, "faiss")
    err = r["extra"].get("ev_max_rel_err") if r and r["extra"] else None
    if rf is None or err is None:
        out.append(("PCA fit 100000x768->256: >= 2.5x FAISS, variance "
                    "within 1e-4", None, "not measured"))
    else:
        out.append(("PCA fit 100000x768->256: >= 2.5x FAISS, variance "
                    "within 1e-4", rf >= 2.5 and err <= 1e-4,
                    f"{rf:.2f}x FAISS, max relative variance error "
                    f"{err:.2g}"))
    r = get.get(("search_float32", "N=1000000 Q=1 k=10"))
    rf = ratio(r, "faiss")
    out.append(("float32 search N=1M Q=1 k=10: >= 3x FAISS IndexFlatIP",
                None if rf is None else rf >= 3,
                "not measured" if rf is None else f"{rf:.2f}x FAISS"))
    r8 = get.get(("search_int8", "N=1000000 Q=1 k=10"))
    if r and r8 and r["mnemo"] and r8["mnemo"]:
        s = r["mnemo"] / r8["mnemo"]
        out.append(("int8 search N=1M Q=1: >= 2x faster than our float32",
                    s >= 2, f"{s:.2f}x"))
    else:
        out.append(("int8 search N=1M Q=1: >= 2x faster than our float32",
                    None, "not measured"))
    return out


def markdown(rows, copy_bw, tg, info, quick):
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    try:
        load = "load average %.2f, %.2f, %.2f" % os.getloadavg()
    except OSError:
        load = "load average unknown"
    lines = [f"# mnemo CPU benchmark{' (quick sizes)' if quick else ''}", "",
             f"{when}, {machine()}, {load} at the end of the run.", ""]
    dev = next((r.get("device") for r in info if r.get("info") == "backend"),
               None)
    ver = next((r for r in info if r.get("info") == "versions"), {})
    if dev:
        lines.append(f"mnemo backend: {dev}. Peers: numpy "
                     f"{ver.get('numpy', '?')}, FAISS {ver.get('faiss', '?')} "
                     f"({ver.get('faiss_threads', '?')} threads). Median ms; "
                     "ratios are peer / mnemo. memcpy (best of one thread "
                     "and all threads): "
                     f"{copy_bw:.1f} GB/s read+write; a search only reads, "
                     "so it can pass 100 %. Timings from a loaded machine "
                     "(check `uptime`) are not worth recording.")
        lines.append("")
    lines.append("| op | shape | mnemo ms | numpy ms | FAISS ms | "
                 "numpy/mnemo | FAISS/mnemo | GB/s | % memcpy |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['shape']} | {fmt_ms(r['mnemo'])} | "
            f"{fmt_ms(r['numpy'])} | {fmt_ms(r['faiss'])} | "
            f"{fmt_ratio(r['numpy'], r['mnemo'])} | "
            f"{fmt_ratio(r['faiss'], r['mnemo'])} | "
            f"{rate(r)} | "
            f"{'' if r['pct'] is None else format(r['pct'], '.0f')} |")
    sk = [r for r in rows if r["sklearn"] is not None]
    for r in sk:
        lines.append("")
        lines.append(f"scikit-learn PCA(full) fit {r['shape']}: "
                     f"{fmt_ms(r['sklearn'])} ms "
                     f"({fmt_ratio(r['sklearn'], r['mnemo'])} mnemo).")
    fit = [r for r in rows if r["op"] == "pca_fit" and r["extra"]]
    for r in fit:
        lines.append("")
        lines.append(f"PCA fit {r['shape']}: largest relative error of the "
                     "explained variances against a double-precision fit "
                     f"{r['extra'].get('ev_max_rel_err')}; total explained "
                     f"ratio {r['extra'].get('total_ratio')}.")
    lines += ["", "## Targets (issue 2)", ""]
    for text, met, fig in tg:
        mark = "n/a" if met is None else ("met" if met else "NOT met")
        lines.append(f"- {text}: **{mark}** ({fig})")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="CMake build folder")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, to smoke-test the harness")
    ap.add_argument("--no-search", action="store_true")
    ap.add_argument("--no-fit", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    a = ap.parse_args()

    exe = os.path.join(a.build, "bench", "bench_ops")
    if not os.path.isabs(exe):
        exe = os.path.join(ROOT, exe)
    if not os.access(exe, os.X_OK):
        raise SystemExit(f"{exe} is missing: build first (make build)")
    flags = (["--quick"] if a.quick else []) + \
        (["--no-search"] if a.no_search else []) + \
        (["--no-fit"] if a.no_fit else [])
    mnemo = run_lines([exe] + flags)
    peers = run_lines(["/usr/bin/python3", os.path.join(HERE, "peers.py")] +
                      flags)
    rows, copy_bw = build_table(mnemo, peers)
    tg = targets(rows, mnemo)
    md = markdown(rows, copy_bw, tg, mnemo + peers, a.quick)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "latest.md"), "w") as f:
        f.write(md)
    with open(os.path.join(a.out, "latest.jsonl"), "w") as f:
        for r in mnemo + peers:
            f.write(json.dumps(r) + "\n")
    print(md)
    print(f"(written to {os.path.join(a.out, 'latest.md')})", file=sys.stderr)


if __name__ == "__main__":
    main()
