#!/usr/bin/python3
"""FAISS peer for bench_store: exact inner-product search (IndexFlatIP) and
scalar-quantized search (IndexScalarQuantizer QT_8bit, inner product) over
N random vectors of the given width, Q = 1, k = 10; median of `reps`
queries after two warm-ups. Prints one "name value" line per figure.
Run with Debian's /usr/bin/python3 (python3-numpy, python3-faiss)."""
import argparse
import statistics
import time

import faiss
import numpy as np


def median_ms(index, queries):
    times = []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        index.search(q[None, :], 10)
        dt = (time.perf_counter() - t0) * 1e3
        if i >= 2:
            times.append(dt)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    rng = np.random.default_rng(1)
    xb = np.empty((a.n, a.dim), dtype=np.float32)
    step = 100000
    for i in range(0, a.n, step):
        xb[i:i + step] = rng.uniform(-1, 1, (min(step, a.n - i), a.dim))
    queries = rng.uniform(-1, 1, (a.reps + 2, a.dim)).astype(np.float32)
    flat = faiss.IndexFlatIP(a.dim)
    flat.add(xb)
    print("faiss_flat_ip_ms %.3f" % median_ms(flat, queries), flush=True)
    del flat
    sq = faiss.IndexScalarQuantizer(a.dim, faiss.ScalarQuantizer.QT_8bit,
                                    faiss.METRIC_INNER_PRODUCT)
    sq.train(xb[:100000])
    sq.add(xb)
    del xb
    print("faiss_sq8_ms %.3f" % median_ms(sq, queries), flush=True)
    print("faiss_threads %d" % faiss.omp_get_max_threads(), flush=True)


if __name__ == "__main__":
    main()
