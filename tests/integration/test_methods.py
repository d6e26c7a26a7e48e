"""Every method over a real connection, each result checked against a numpy
reference computed here: processEmbeddings with every option, fitPCA /
listPCAModels / deletePCAModel (with persistence across a restart),
getMetrics, health and cleanup."""
import asyncio

import numpy as np
import pytest

from helpers import (DEVICE, align_signs, bf16_ref, call, connect, decode_tensor,
                     error_of, normalize_ref, pca_ref, rel_err, result_of)

RNG = np.random.default_rng(20260126)


def process(server, x, **options):
    async def go():
        async with connect(server.url) as ws:
            params = {"embeddings": np.asarray(x).tolist()}
            if options:
                params["options"] = options
            return await call(ws, "processEmbeddings", params)

    return asyncio.run(go())


def process_ok(server, x, **options):
    res = result_of(process(server, x, **options))
    md = res["metadata"]
    assert md["count"] == len(x)
    assert isinstance(md["processing_time"], (int, float))
    assert md["processing_time"] >= 0
    assert isinstance(md["device"], str) and md["device"]
    return res


# ---------------------------------------------------------------------------
# processEmbeddings
# ---------------------------------------------------------------------------
def test_normalize_matches_numpy(server):
    x = RNG.standard_normal((17, 96)).astype(np.float32)
    x[5] = 0  # a zero row stays zero and is reported
    res = process_ok(server, x, normalize=True)
    y = decode_tensor(res["processed"])
    assert y.shape == x.shape
    assert rel_err(y, normalize_ref(x)) < 1e-6
    assert np.all(y[5] == 0)
    md = res["metadata"]
    assert md["dimensions"] == 96 and md["dtype"] == "float32"
    assert md["zero_rows"] == 1


def test_no_options_returns_the_input(server):
    x = RNG.standard_normal((3, 10)).astype(np.float32)
    res = process_ok(server, x)
    assert np.array_equal(decode_tensor(res["processed"]), x)


def test_reduce_dimensions_fits_pca_on_the_batch(server):
    x = RNG.standard_normal((64, 48)).astype(np.float32)
    x[:, :4] *= 10  # a clear leading subspace
    res = process_ok(server, x, normalize=True, reduce_dimensions=6)
    y = decode_tensor(res["processed"])
    assert y.shape == (64, 6)
    xn = normalize_ref(x)
    mean, comps, _, ratio = pca_ref(xn, 6)
    ref = (xn - mean) @ comps.T
    assert rel_err(align_signs(y, ref), ref) < 2e-3
    md = res["metadata"]
    assert md["dimensions"] == 6
    assert np.allclose(md["explained_variance_ratio"], ratio, rtol=1e-3)


def test_seed_options_dimension_reduction_and_quantization_true(server):
    # The seed's own example: {dimension_reduction: true, quantization: true}
    x = RNG.standard_normal((40, 32)).astype(np.float32)
    res = process_ok(server, x, dimension_reduction=True, quantization=True)
    codes = decode_tensor(res["processed"])
    k = codes.shape[1]
    assert 1 <= k <= 32
    assert res["metadata"]["dtype"] == "int8"
    scales = np.asarray(res["scales"], dtype=np.float64)
    assert scales.shape == (40,)
    mean, comps, _, _ = pca_ref(x, k)
    ref = (x - mean) @ comps.T
    deq = align_signs(codes * scales[:, None], ref)
    assert np.abs(deq - ref).max() <= scales.max() * 0.5 + 1e-3 * np.abs(
        ref).max()


def test_dimension_reduction_as_a_number(server):
    x = RNG.standard_normal((30, 20)).astype(np.float32)
    res = process_ok(server, x, dimension_reduction=5)
    assert decode_tensor(res["processed"]).shape == (30, 5)


def test_int8_quantization(server):
    x = RNG.standard_normal((9, 33)).astype(np.float32)
    res = process_ok(server, x, quantization="int8")
    codes = decode_tensor(res["processed"])
    scales = np.asarray(res["scales"])
    assert codes.dtype.kind in "if" and codes.shape == x.shape
    assert np.all(np.abs(codes) <= 127)
    ref_scale = np.abs(x).max(axis=1) / 127
    assert np.allclose(scales, ref_scale, rtol=1e-6)
    assert np.abs(codes - x / ref_scale[:, None]).max() <= 0.5 + 1e-4
    assert res["metadata"]["dtype"] == "int8"
    assert res["metadata"]["quantization"] == "int8"


def test_int4_quantization_and_bits(server):
    x = RNG.standard_normal((6, 21)).astype(np.float32)
    for opts in ({"quantization": "int4"}, {"quantization_bits": 4}):
        res = process_ok(server, x, **opts)
        codes = decode_tensor(res["processed"])
        scales = np.asarray(res["scales"])
        assert codes.shape == x.shape
        assert np.all(np.abs(codes) <= 7)
        assert np.allclose(scales, np.abs(x).max(axis=1) / 7, rtol=1e-6)
        assert np.abs(codes * scales[:, None] - x).max() <= \
            0.5 * scales.max() * (1 + 1e-5)
        assert res["metadata"]["dtype"] == "int4"


def test_int8_affine_quantization(server):
    x = RNG.uniform(-3, 5, (50, 12)).astype(np.float32)
    res = process_ok(server, x, quantization="int8_affine")
    codes = decode_tensor(res["processed"])
    vmin = np.asarray(res["affine"]["vmin"])
    scale = np.asarray(res["affine"]["scale"])
    assert np.all((codes >= 0) & (codes <= 255))
    assert np.allclose(vmin, x.min(axis=0), rtol=1e-6, atol=1e-6)
    assert np.allclose(scale, (x.max(axis=0) - x.min(axis=0)) / 255,
                       rtol=1e-5)
    assert np.abs(vmin + codes * scale - x).max() <= 0.5 * scale.max() * (
        1 + 1e-4) + 1e-6


def test_fp16_and_float16_precision(server):
    x = (RNG.standard_normal((5, 40)) * 3).astype(np.float32)
    ref = x.astype(np.float16).astype(np.float32)
    for opts in ({"quantization": "fp16"}, {"quantization_bits": 16},
                 {"precision": "float16"}):
        res = process_ok(server, x, **opts)
        y = decode_tensor(res["processed"])
        assert np.array_equal(y, ref), opts
        assert res["metadata"]["dtype"] == "float16"


def test_bf16_and_bfloat16_precision(server):
    x = (RNG.standard_normal((5, 40)) * 3).astype(np.float32)
    ref = bf16_ref(x)
    for opts in ({"quantization": "bf16"}, {"precision": "bfloat16"}):
        res = process_ok(server, x, **opts)
        assert np.array_equal(decode_tensor(res["processed"]), ref), opts
        assert res["metadata"]["dtype"] == "bfloat16"


def test_binary_quantization_and_one_bit(server):
    x = RNG.standard_normal((4, 19)).astype(np.float32)
    for opts in ({"quantization": "binary"}, {"quantization_bits": 1}):
        res = process_ok(server, x, **opts)
        bits = decode_tensor(res["processed"])
        assert np.array_equal(bits, (x > 0).astype(np.float32)), opts
        assert res["metadata"]["dtype"] == "binary"


def test_batch_size_splits_without_changing_results(server):
    x = RNG.standard_normal((23, 16)).astype(np.float32)
    res = process_ok(server, x, normalize=True, quantization="int8",
                     batch_size=4)
    codes = decode_tensor(res["processed"])
    scales = np.asarray(res["scales"])
    xn = normalize_ref(x)
    assert np.abs(codes * scales[:, None] - xn).max() <= \
        0.5 * scales.max() * (1 + 1e-4)
    whole = process_ok(server, x, normalize=True, quantization="int8")
    assert np.array_equal(codes, decode_tensor(whole["processed"]))


def test_chat_id_is_echoed(server):
    async def go():
        async with connect(server.url) as ws:
            return await call(ws, "processEmbeddings", {
                "embeddings": [[3.0, 4.0]], "options": {"normalize": True},
                "chatId": "chat-42"})

    res = result_of(asyncio.run(go()))
    assert res["metadata"]["chatId"] == "chat-42"
    assert np.allclose(decode_tensor(res["processed"]), [[0.6, 0.8]])


def test_conflicting_options_are_refused_with_reasons(server):
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    err = error_of(process(server, x, quantization="int8",
                           quantization_bits=4), -32602)
    assert "quantization_bits" in err["message"]
    err = error_of(process(server, x, reduce_dimensions=9), -32602)
    assert "reduce_dimensions" in err["message"]
    err = error_of(process(server, x, pca_model="missing-model"), -32602)
    assert "missing-model" in err["message"]


# ---------------------------------------------------------------------------
# fitPCA, listPCAModels, deletePCAModel, persistence
# ---------------------------------------------------------------------------
def test_pca_models_fit_use_list_delete_and_survive_a_restart(
        start_server):
    srv = start_server({"server": {"rate_limit": 0}})
    train = RNG.standard_normal((200, 24)).astype(np.float32)
    train[:, :3] *= 5
    mean, comps, var, ratio = pca_ref(train, 8)

    async def fit_and_use():
        async with connect(srv.url) as ws:
            fit = result_of(await call(ws, "fitPCA", {
                "name": "m8", "embeddings": train.tolist(),
                "n_components": 8}))
            assert fit["name"] == "m8" and fit["n_components"] == 8
            assert fit["input_dim"] == 24
            assert np.allclose(fit["explained_variance_ratio"], ratio,
                               rtol=1e-4)
            assert abs(fit["total_explained_variance"] - ratio.sum()) < 1e-4
            fitw = result_of(await call(ws, "fitPCA", {
                "name": "default", "embeddings": train.tolist(),
                "n_components": 4, "whiten": True}, rid=2))
            assert fitw["whiten"] is True
            lst = result_of(await call(ws, "listPCAModels", rid=3))
            return lst

    lst = asyncio.run(fit_and_use())
    names = {m["name"]: m for m in lst["models"]}
    assert set(names) == {"m8", "default"} and lst["count"] == 2
    assert names["m8"]["n_components"] == 8
    assert names["m8"]["input_dim"] == 24

    probe = RNG.standard_normal((10, 24)).astype(np.float32)
    ref = (probe - mean) @ comps.T

    def use_models():
        a = process_ok(srv, probe, pca_model="m8")
        y = decode_tensor(a["processed"])
        assert a["metadata"]["pca_model"] == "m8"
        assert rel_err(align_signs(y, ref), ref) < 1e-4
        # A model cut to fewer components.
        b = decode_tensor(process_ok(srv, probe, pca_model="m8",
                                     reduce_dimensions=3)["processed"])
        assert np.allclose(b, y[:, :3], atol=1e-5)
        # dimension_reduction: true uses the model named "default", which
        # was fitted with whitening.
        c = process_ok(srv, probe, dimension_reduction=True)
        yc = decode_tensor(c["processed"])
        refw = ref[:, :4] / np.sqrt(var[:4])
        assert rel_err(align_signs(yc, refw), refw) < 1e-4
        return y

    before = use_models()
    srv.restart()
    lst2 = result_of(asyncio.run(_one(srv, "listPCAModels")))
    assert {m["name"] for m in lst2["models"]} == {"m8", "default"}
    after = use_models()
    assert np.array_equal(before, after)

    deleted = result_of(asyncio.run(_one(srv, "deletePCAModel",
                                         {"name": "m8"})))
    assert deleted == {"name": "m8", "deleted": True}
    again = result_of(asyncio.run(_one(srv, "deletePCAModel",
                                       {"name": "m8"})))
    assert again["deleted"] is False
    srv.restart()
    lst3 = result_of(asyncio.run(_one(srv, "listPCAModels")))
    assert [m["name"] for m in lst3["models"]] == ["default"]
    err = error_of(process(srv, probe, pca_model="m8"), -32602)
    assert "m8" in err["message"]


async def _one(srv, method, params=None):
    async with connect(srv.url) as ws:
        return await call(ws, method, params)


def test_fit_pca_errors_name_the_parameter(server):
    x = RNG.standard_normal((5, 6)).astype(np.float32)
    err = error_of(asyncio.run(_one(server, "fitPCA", {
        "name": "x", "embeddings": x.tolist(), "n_components": 7})), -32602)
    assert "n_components" in err["message"]
    err = error_of(asyncio.run(_one(server, "fitPCA", {
        "name": "../etc", "embeddings": x.tolist(), "n_components": 2})),
        -32602)
    assert "name" in err["message"]


# ---------------------------------------------------------------------------
# getMetrics, health, cleanup
# ---------------------------------------------------------------------------
def test_get_metrics_has_the_seed_shape_and_real_counts(server):
    async def go():
        async with connect(server.url) as ws:
            for i in range(4):
                result_of(await call(ws, "processEmbeddings", {
                    "embeddings": [[1.0, 2.0, 2.0]],
                    "options": {"normalize": True}}, rid=i))
            return result_of(await call(ws, "getMetrics", rid=10))

    m = asyncio.run(go())
    assert {"chunks", "usage", "available"} <= set(m["memory"])
    assert {"gpu_memory", "cpu_memory", "active_processes"} <= set(m["hpc"])
    assert m["hpc"]["active_processes"] >= 1
    assert m["hpc"]["cpu_memory"] >= 0
    pe = m["requests"]["by_method"]["processEmbeddings"]
    assert pe["count"] >= 4
    lat = pe["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] + 1e-9
    assert m["connections"]["active"] >= 1


def test_health_method(server):
    h = result_of(asyncio.run(_one(server, "health")))
    assert h["status"] == "ok"
    assert h["state"] == "normal"
    assert h["backend"] == DEVICE
    assert h["uptime_s"] > 0


def test_cleanup_reports_and_the_server_keeps_working(server):
    r = result_of(asyncio.run(_one(server, "cleanup")))
    for key in ("freed_bytes", "rss_before", "rss_after"):
        assert isinstance(r[key], int) and r[key] >= 0
    assert r["rss_before"] > 0
    res = process_ok(server, [[3.0, 4.0]], normalize=True)
    assert np.allclose(decode_tensor(res["processed"]), [[0.6, 0.8]])


@pytest.mark.parametrize("method", ["health", "getMetrics", "listPCAModels",
                                    "cleanup"])
def test_methods_without_params_accept_empty_params(server, method):
    result_of(asyncio.run(_one(server, method, {})))
