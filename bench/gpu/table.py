"""table.py OURS.json PEER.json - the device script's last word: one short
table of the issue 4 targets, ours against PyTorch measured in the same
run. Missing rows print as '-'; nothing here is a claim without both."""
import json
import sys


def load(path):
    rows = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    r = json.loads(line)
                    rows.setdefault(r["op"], []).append(r)
    except OSError:
        pass
    return rows


ours, peer = load(sys.argv[1]), load(sys.argv[2])


def get(rows, prefix, pick=None):
    for op, rs in rows.items():
        if op.startswith(prefix):
            for r in rs:
                if pick is None or pick(r):
                    return r
    return None


def ms(r):
    return r["ms"] if r else None


def fmt(v, unit=""):
    return "-" if v is None else ("%.3f%s" % (v, unit))


dev = get(ours, "device") or get(peer, "device") or {}
copy_o, copy_p = get(ours, "d2d copy"), get(peer, "d2d copy")
print("device: %s" % dev.get("device", "?"))
print("%-48s %10s %10s %9s  %s" % ("target", "ours", "pytorch", "ratio", "goal"))


def line(name, o, p, ratio, goal):
    print("%-48s %10s %10s %9s  %s" % (name, o, p, "-" if ratio is None else "%.2f" % ratio, goal))


def bw_share(r, copy):
    if not r or not copy or "GB/s" not in r or "GB/s" not in copy:
        return None
    return r["GB/s"] / copy["GB/s"]


for op, goal in (("normalize", 0.85), ("quantize_int8", 0.80)):
    o, p = get(ours, op), get(peer, op)
    so, sp = bw_share(o, copy_o), bw_share(p, copy_p)
    line(op + " (share of d2d copy bandwidth)", fmt(so and so * 100, "%"), fmt(sp and sp * 100, "%"),
         None, ">= %d%% (ours)" % (goal * 100))
o = get(ours, "search fp16", lambda r: "Q=256" in r["op"] and "peer" in r.get("query", ""))
p = get(peer, "search fp16", lambda r: "Q=256" in r["op"])
line("search fp16 N=10M Q=256 k=10 (ms)", fmt(ms(o)), fmt(ms(p)), ms(p) / ms(o) if o and p else None,
     ">= 3x faster")
chunks = [(r["op"].split("chunk=")[1], r["ms"]) for op, rs in ours.items() if "chunk=" in op for r in rs]
if chunks:
    print("  (GEMM chunk rows tried: %s; default 262144)" % ", ".join("%s: %.3f ms" % c for c in chunks))
for out in ("fp32", "fp16"):
    g = get(ours, "gemm alone 262144x256x768 fp16 in, %s" % out)
    if g:
        print("  (cuBLAS alone, one 262144-row chunk, %s scores: %.3f ms, %.0f TFLOP/s; x39 = %.1f ms)"
              % (out, g["ms"], g.get("TFLOP/s", 0), 39 * g["ms"]))
ot = get(ours, "search fp16", lambda r: "tiles=f32" in r["op"])
line("  same, float32 score tiles (before, ms)", fmt(ms(ot)), fmt(ms(p)), ms(p) / ms(ot) if ot and p else None,
     "(information: A/B of float16 tiles)")
o32 = get(ours, "search fp16", lambda r: "Q=256" in r["op"] and "split" in r.get("query", ""))
line("  same, float32 query (exact, ms)", fmt(ms(o32)), fmt(ms(p)), ms(p) / ms(o32) if o32 and p else None,
     "(information)")
o1, o8 = get(ours, "search fp16", lambda r: "Q=1 " in r["op"]), get(ours, "search int8")
line("search int8 Q=1 vs fp16 Q=1 (ours, ms)", fmt(ms(o8)), fmt(ms(o1)), ms(o1) / ms(o8) if o1 and o8 else None,
     ">= 1.8x faster")
p1 = get(peer, "search fp16", lambda r: "Q=1 " in r["op"])
line("search fp16 Q=1 (ms)", fmt(ms(o1)), fmt(ms(p1)), ms(p1) / ms(o1) if o1 and p1 else None, "(information)")
for solver in ("float64", "float32+rayleigh", "float64, syevd (all)",
               "float32+rayleigh, syevd (all)"):
    o = get(ours, "pca_fit", lambda r: r.get("solver") == solver)
    p = get(peer, "pca_fit")
    line("pca_fit 100000x768->256, %s (ms)" % solver, fmt(ms(o)), fmt(ms(p)), ms(p) / ms(o) if o and p else None,
         "no slower (ratio >= 1)")
for prec in ("float32", "tf32"):
    o = get(ours, "pca_transform", lambda r: r.get("precision") == prec)
    p = get(peer, "pca_transform")
    line("pca_transform 1Mx768->256, %s (ms)" % prec, fmt(ms(o)), fmt(ms(p)), ms(p) / ms(o) if o and p else None,
         "(information)")
o, p = get(ours, "request path"), get(peer, "request path")
line("request path 32x768 (ms wall)", fmt(ms(o)), fmt(ms(p)), ms(p) / ms(o) if o and p else None, "(information)")
c = get(ours, "checks")
print("bench correctness checks failed: %s" % (c.get("failed_checks") if c else "? (bench did not finish)"))

# mnemod over loopback (server_load.py): CUDA against CPU, same machine.
srv = load(sys.argv[3]) if len(sys.argv) > 3 else {}
runs = srv.get("server normalize 32x768 binary", [])


def run_of(dev, label_start):
    for r in runs:
        if r.get("device") == dev and r.get("label", "").startswith(label_start):
            return r
    return None


def rps_many(r):
    if not r:
        return None
    for k, v in r.items():
        if k.startswith("rps_") and k != "rps_1conn":
            return v
    return None


cb, cpu = run_of("cuda", "batching on"), run_of("cpu", "batching on")
ga, cn = run_of("cuda", "all on gpu, batching on"), run_of("cuda", "all on gpu, batching off")
line("mnemod 32x768, 1 conn p50, every job on the GPU (ms)", fmt(ga and ga.get("p50_ms_1conn")),
     fmt(cpu and cpu.get("p50_ms_1conn")), None, "(gpu.min_elements 0; cols: cuda, cpu)")
rga = rps_many(ga)
line("mnemod 256 conns req/s: all on GPU + batching vs cpu", fmt(rga, ""), fmt(rps_many(cpu), ""),
     rga / rps_many(cpu) if rga and rps_many(cpu) else None, "(information)")
line("mnemod normalize 32x768 binary, 1 conn p50 (ms)", fmt(cb and cb.get("p50_ms_1conn")),
     fmt(cpu and cpu.get("p50_ms_1conn")), None, "< 0.25 ms on cuda (cols: cuda, cpu)")
rb, rc_ = rps_many(cb), rps_many(cpu)
line("mnemod 256 conns req/s: cuda+batching vs cpu", fmt(rb, ""), fmt(rc_, ""),
     rb / rc_ if rb and rc_ else None, ">= 5x")
rn = rps_many(cn)
line("mnemod 256 conns req/s: all on GPU, batching off", fmt(rn, ""), fmt(rc_, ""),
     rn / rc_ if rn and rc_ else None, "(information)")
for r in runs:
    if r.get("failed"):
        print("  server run %s / %s failed: %s" % (r.get("device"), r.get("label"), r["failed"][:200]))

# The store's search with GPU-resident chunks (bench_store --gpu).
st = load(sys.argv[4]) if len(sys.argv) > 4 else {}
pf = get(peer, "search fp32 N=1000000")
for op, rs in st.items():
    r = rs[0]
    line(op.replace("store search ", "store ") + " gpu vs cpu (ms)", fmt(r.get("gpu_ms")),
         fmt(r.get("cpu_ms")), r["cpu_ms"] / r["gpu_ms"] if r.get("gpu_ms") else None,
         "top-10 equal %s/10" % r.get("same_top10"))
    if "f32" in op and pf:
        line("  same, against PyTorch flat fp32 (ms)", fmt(r.get("gpu_ms")), fmt(ms(pf)),
             ms(pf) / r["gpu_ms"] if r.get("gpu_ms") else None, "(information)")
