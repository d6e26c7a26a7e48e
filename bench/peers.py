#!/usr/bin/python3
"""peers.py - the work of bench/bench_ops.c done by numpy, scikit-learn and
FAISS, timed the same way (warm-up runs, then the median of repeats, as in
../shared/anchors/cpu_baseline.py). One JSON object per line; "key" matches
bench_ops's lines so that bench/run_bench.py can join them.

Run with Debian's interpreter: /usr/bin/python3 bench/peers.py [--quick]
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np

# Keep in step with `full` / `quick` in bench_ops.c.
SIZES = {
    "full": dict(batches=(32, 4096, 65536), fit_rows=100_000,
                 search_n=(100_000, 1_000_000), memcpy_mib=512,
                 reps_elem=20, warm_elem=3, reps_fit=3, warm_fit=1,
                 reps_search=5, warm_search=1),
    "quick": dict(batches=(32, 4096), fit_rows=5000, search_n=(20000,),
                  memcpy_mib=64, reps_elem=5, warm_elem=1, reps_fit=2,
                  warm_fit=1, reps_search=3, warm_search=1),
}
D, K, TOPK = 768, 256, 10


def emit(impl, op, shape, variant, ts, reps, extra=None):
    r = {"impl": impl, "key": f"{op} {shape}", "op": op, "shape": shape,
         "variant": variant, "ms_p50": round(statistics.median(ts), 4),
         "ms_min": round(min(ts), 4), "reps": reps}
    if extra:
        r.update(extra)
    print(json.dumps(r), flush=True)


def bench(impl, op, shape, variant, fn, reps, warm, extra=None):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    emit(impl, op, shape, variant, ts, reps, extra)


def elementwise(faiss, sz, rng):
    for B in sz["batches"]:
        x = rng.standard_normal((B, D), dtype=np.float32)
        shape = f"{B}x{D}"
        r, w = sz["reps_elem"], sz["warm_elem"]
        bench("numpy", "normalize", shape, "x / norm(x)",
              lambda: x / np.linalg.norm(x, axis=1, keepdims=True), r, w)

        def fnorm():
            y = x.copy()
            faiss.normalize_L2(y)
        bench("faiss", "normalize", shape, "normalize_L2 (incl copy)", fnorm,
              r, w)

        W = rng.standard_normal((D, K), dtype=np.float32)
        mu = x.mean(0)
        pshape = f"{B}x{D}->{K}"
        bench("numpy", "pca_transform", pshape, "(x - mu) @ W",
              lambda: (x - mu) @ W, r, w)
        pca = faiss.PCAMatrix(D, K)
        pca.train(rng.standard_normal((4096, D), dtype=np.float32))
        bench("faiss", "pca_transform", pshape, "PCAMatrix.apply",
              lambda: pca.apply_py(x), r, w)

        def q8():
            s = np.abs(x).max(1, keepdims=True) / 127.0
            return np.clip(np.rint(x / s), -127, 127).astype(np.int8), s
        bench("numpy", "quantize_int8", shape, "per-row symmetric", q8, r, w)
        sq8 = faiss.ScalarQuantizer(D, faiss.ScalarQuantizer.QT_8bit)
        sq8.train(x[:4096])
        bench("faiss", "quantize_int8", shape, "SQ8 encode",
              lambda: sq8.compute_codes(x), r, w)

        bench("numpy", "quantize_fp16", shape, "astype(float16)",
              lambda: x.astype(np.float16), r, w)
        sq16 = faiss.ScalarQuantizer(D, faiss.ScalarQuantizer.QT_fp16)
        sq16.train(x[:4096])
        bench("faiss", "quantize_fp16", shape, "SQfp16 encode",
              lambda: sq16.compute_codes(x), r, w)

        def q4():
            s = np.abs(x).max(1, keepdims=True) / 7.0
            q = np.clip(np.rint(x / s), -7, 7).astype(np.int8)
            return ((q[:, 0::2] & 15) | ((q[:, 1::2] & 15) << 4)).astype(
                np.uint8), s
        bench("numpy", "quantize_int4", shape, "per-row symmetric, packed",
              q4, r, w)
        sq4 = faiss.ScalarQuantizer(D, faiss.ScalarQuantizer.QT_4bit)
        sq4.train(x[:4096])
        bench("faiss", "quantize_int4", shape, "SQ4 encode",
              lambda: sq4.compute_codes(x), r, w)

        bench("numpy", "quantize_binary", shape, "packbits(x > 0)",
              lambda: np.packbits(x > 0, axis=1, bitorder="little"), r, w)


def pca_fit(faiss, sz, rng, with_sklearn):
    n = sz["fit_rows"]
    X = (rng.standard_normal((n, D), dtype=np.float32)
         @ (rng.standard_normal((D, D), dtype=np.float32) * 0.05)).astype(
             np.float32)
    shape = f"{n}x{D}->{K}"
    r, w = sz["reps_fit"], sz["warm_fit"]

    def npcov():
        m = X.mean(0)
        C = (X - m).T @ (X - m)
        return np.linalg.eigh(C)
    bench("numpy", "pca_fit", shape, "cov + eigh", npcov, r, w)

    def fpca():
        p = faiss.PCAMatrix(D, K)
        p.train(X)
    bench("faiss", "pca_fit", shape, "PCAMatrix train", fpca, r, w)
    if with_sklearn:
        from sklearn.decomposition import PCA
        bench("sklearn", "pca_fit", shape, "PCA(full) fit",
              lambda: PCA(K, svd_solver="full").fit(X), r, w)


def search(faiss, sz, rng):
    r, w = sz["reps_search"], sz["warm_search"]
    for N in sz["search_n"]:
        db = rng.standard_normal((N, D), dtype=np.float32)
        faiss.normalize_L2(db)
        qs = rng.standard_normal((32, D), dtype=np.float32)
        faiss.normalize_L2(qs)

        def shape(Q):
            return f"N={N} Q={Q} k={TOPK}"
        for Q in (1, 32):
            q = qs[:Q]

            def npsearch():
                s = q @ db.T
                part = np.argpartition(-s, TOPK, axis=1)[:, :TOPK]
                o = np.take_along_axis(s, part, 1).argsort(1)[:, ::-1]
                return np.take_along_axis(part, o, 1)
            bench("numpy", "search_float32", shape(Q),
                  "q @ db.T + argpartition", npsearch, r, w)

        idx = faiss.IndexFlatIP(D)
        idx.add(db)
        for Q in (1, 32):
            q = qs[:Q]
            bench("faiss", "search_float32", shape(Q), "IndexFlatIP",
                  lambda: idx.search(q, TOPK), r, w)
        idx = None  # free the copy before the next index

        for op, qt, name in (("search_float16", "QT_fp16", "SQfp16"),
                             ("search_int8", "QT_8bit", "SQ8")):
            sq = faiss.IndexScalarQuantizer(
                D, getattr(faiss.ScalarQuantizer, qt),
                faiss.METRIC_INNER_PRODUCT)
            sq.train(db[:20000])
            sq.add(db)
            for Q in (1, 32):
                q = qs[:Q]
                bench("faiss", op, shape(Q), f"IndexScalarQuantizer {name}",
                      lambda: sq.search(q, TOPK), r, w)
            sq = None

        bdb = np.packbits(db > 0, axis=1, bitorder="little")
        bidx = faiss.IndexBinaryFlat(D)
        bidx.add(bdb)
        for Q in (1, 32):
            bq = np.packbits(qs[:Q] > 0, axis=1, bitorder="little")
            bench("faiss", "search_binary", shape(Q), "IndexBinaryFlat",
                  lambda: bidx.search(bq, TOPK), r, w)
        bidx = bdb = db = None


def memcpy(sz):
    n = sz["memcpy_mib"] << 20
    src = np.ones(n, dtype=np.uint8)
    dst = np.zeros(n, dtype=np.uint8)
    bench("numpy", "memcpy", f"{sz['memcpy_mib']}MiB", "np.copyto",
          lambda: np.copyto(dst, src), 10, 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, to smoke-test the harness")
    ap.add_argument("--no-search", action="store_true")
    ap.add_argument("--no-fit", action="store_true")
    ap.add_argument("--no-sklearn", action="store_true",
                    help="skip scikit-learn's full PCA (slow)")
    a = ap.parse_args()
    sz = SIZES["quick" if a.quick else "full"]
    import faiss
    rng = np.random.default_rng(0)
    print(json.dumps({"impl": "peers", "info": "versions",
                      "numpy": np.__version__, "faiss": faiss.__version__,
                      "faiss_threads": faiss.omp_get_max_threads(),
                      "python": sys.version.split()[0]}), flush=True)
    memcpy(sz)
    elementwise(faiss, sz, rng)
    if not a.no_fit:
        pca_fit(faiss, sz, rng, not a.no_sklearn)
    if not a.no_search:
        search(faiss, sz, rng)


if __name__ == "__main__":
    main()
