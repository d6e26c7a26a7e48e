"""The PyTorch peer of bench_gpu (issue 4's targets): the same ops at the
same sizes on fresh random data, as ../shared/anchors/gpu_pytorch_baseline.py
does them. Each op is timed two ways: CUDA events (median, the anchors'
method) and the host clock around op + synchronize (median), which is what
bench_gpu measures for the plugin's synchronous calls; the table compares
wall with wall. One JSON object per line; --out FILE copies them there.

    python3 peer_torch.py [--out FILE] [--quick]
"""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

quick = "--quick" in sys.argv
out = open(sys.argv[sys.argv.index("--out") + 1], "w") if "--out" in sys.argv else None
dev = torch.device("cuda")
torch.backends.cuda.matmul.allow_tf32 = False


def emit(row):
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        out.write(line + "\n")
        out.flush()


def bench(name, fn, reps=20, warm=3, bytes_moved=None, flops=None, **extra):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ev, wall = [], []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        t = time.perf_counter()
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        wall.append((time.perf_counter() - t) * 1e3)
        ev.append(a.elapsed_time(b))
    ms = statistics.median(wall)
    row = {"op": name, "ms": round(ms, 5), "event_ms": round(statistics.median(ev), 5)}
    if bytes_moved:
        row["GB/s"] = round(bytes_moved / ms / 1e6, 1)
    if flops:
        row["TFLOP/s"] = round(flops / ms / 1e9, 2)
    row.update(extra)
    emit(row)


props = torch.cuda.get_device_properties(0)
emit({"op": "device", "ms": 0, "device": props.name, "sms": props.multi_processor_count,
      "torch": torch.__version__})
R = 5 if quick else 20

n = 1 << 28
a = torch.empty(n, device=dev).uniform_()
b = torch.empty(n, device=dev)
bench("d2d copy 1GiB", lambda: b.copy_(a), reps=R, bytes_moved=2 * 4 * n)
del a, b

D, K = 768, 256
rows = (1 << 18) if quick else (1 << 20)
tag = str(rows)
x = torch.randn(rows, D, device=dev)
bench(f"normalize {tag}x{D}", lambda: F.normalize(x, dim=1), reps=R, bytes_moved=2 * 4 * rows * D)


def q8():
    s = x.abs().amax(dim=1, keepdim=True) / 127.0
    return torch.clamp(torch.round(x / s), -127, 127).to(torch.int8), s


bench(f"quantize_int8 {tag}x{D}", q8, reps=R, bytes_moved=4 * rows * D + rows * D + 4 * rows)

fr = 20000 if quick else 100000
X = torch.randn(fr, D, device=dev) @ (torch.randn(D, D, device=dev) * 0.05)


def pca_fit():
    mu = X.mean(0)
    C = (X - mu).T @ (X - mu) / (X.shape[0] - 1)
    ev, V = torch.linalg.eigh(C)
    return V[:, -K:]


bench(f"pca_fit {fr}x{D}->{K}", pca_fit, reps=3 if quick else 7, warm=1, solver="float32 eigh")
del X
W = torch.randn(D, K, device=dev)
mu = torch.randn(D, device=dev)
bench(f"pca_transform {tag}x{D}->{K}", lambda: (x - mu) @ W, reps=R, flops=2 * rows * D * K,
      precision="float32")
del x
torch.cuda.empty_cache()

N = 1_000_000 if quick else 10_000_000
db = F.normalize(torch.randn(N, D, device=dev, dtype=torch.float16), dim=1)
for Q in (256, 1):
    q = F.normalize(torch.randn(Q, D, device=dev, dtype=torch.float16), dim=1)
    bench(f"search fp16 N={N} Q={Q} k=10", lambda: torch.topk(q @ db.T, 10, dim=1),
          reps=5 if quick else 10, bytes_moved=2 * N * D, query="float16")
del db
torch.cuda.empty_cache()

# The store's search peer (bench_store --gpu): flat float32 inner product
# over 1M rows, one query.
NS = 1_000_000
dbs = torch.randn(NS, D, device=dev)
qs = torch.randn(1, D, device=dev)
bench(f"search fp32 N={NS} Q=1 k=10", lambda: torch.topk(qs @ dbs.T, 10, dim=1),
      reps=R, bytes_moved=4 * NS * D, query="float32")
del dbs
torch.cuda.empty_cache()

import numpy as np  # noqa: E402

hx = np.random.randn(32, D).astype(np.float32)
bench("request path 32x768 upload+normalize+download",
      lambda: F.normalize(torch.from_numpy(hx).cuda(), dim=1).cpu().numpy(), reps=200, warm=20)
