"""One GEMM split over minicnn's threads (``kernels.cpu.matmul``, ``matmul_nt``) against float64
NumPy products, and a Conv2D on the im2col path through it against the float64 im2col oracles."""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.kernels import blas, cpu
from minicnn.layers import Conv2D

from .conv_oracles import assert_matches, conv_data, im2col_conv, im2col_grads

needs_blas = pytest.mark.skipif(blas.gemm_function(np.float32) is None,
                                reason="NumPy's BLAS cannot be called from a Numba kernel here (kernels/blas.py)")


def _on_lanes(monkeypatch, count, kernel):
    """``count`` threads as minicnn sees them, every product big enough for the lanes, and a spy
    on ``cpu.<kernel>`` recording the lane count of each call: ``(count, calls)``."""
    monkeypatch.setattr(cpu, "MATMUL_ON_LANES_MIN_FLOP", 0)
    monkeypatch.setattr(cpu, "get_num_threads", lambda: count)
    calls = []
    real = getattr(cpu, kernel)

    def spy(*args):
        calls.append(args[1])
        return real(*args)
    monkeypatch.setattr(cpu, kernel, spy)
    return count, calls


@pytest.fixture(params=[1, 2, 3], ids=["1-lane", "2-lanes", "3-lanes"])
def lanes(request, monkeypatch):
    """Single products on 1 (that is, NumPy's matmul), 2 or 3 lanes."""
    return _on_lanes(monkeypatch, request.param, "_matmul_by_lanes")


# (m, k, n): wide, tall (split by rows), not multiples of 16, fewer columns than lanes x 16
SHAPES = [(16, 150, 1600), (200, 40, 24), (37, 53, 101), (5, 70, 9)]


@needs_blas
@pytest.mark.parametrize("m, k, n", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_matches_numpy_in_float64(lanes, m, k, n, dtype):
    count, calls = lanes
    rng = np.random.default_rng(m + n)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cpu.matmul(a, b), expected, **tol)
    # b seen transposed, a with a wider row stride, out a column slice of a larger array
    b_rows = np.ascontiguousarray(b.T)
    a_wide = np.zeros((m, k + 3), dtype)
    a_wide[:, :k] = a
    big = np.full((m, n + 7), 5.0, dtype)
    cpu.matmul(a_wide[:, :k], b_rows.T, out=big[:, 2:2 + n])
    np.testing.assert_allclose(big[:, 2:2 + n], expected, **tol)
    np.testing.assert_array_equal(big[:, :2], 5.0)   # nothing written outside out
    np.testing.assert_array_equal(big[:, 2 + n:], 5.0)
    np.testing.assert_allclose(cpu.matmul_nt(a, b_rows), expected, **tol)
    assert calls == ([count] * 3 if count > 1 else [])  # all three on the lanes; one thread: NumPy


@needs_blas
def test_small_products_and_the_switch_stay_in_numpy(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu, "_matmul_by_lanes", lambda *args: calls.append(args))
    monkeypatch.setattr(cpu, "get_num_threads", lambda: 2)
    a, b = np.ones((8, 8), np.float32), np.ones((8, 8), np.float32)
    np.testing.assert_array_equal(cpu.matmul(a, b), np.full((8, 8), 8.0))  # 1 kFLOP: below the threshold
    monkeypatch.setattr(cpu, "MATMUL_ON_LANES_MIN_FLOP", 0)
    monkeypatch.setattr(cpu, "MATMUL_ON_LANES", False)
    np.testing.assert_array_equal(cpu.matmul(a, b), np.full((8, 8), 8.0))
    monkeypatch.setattr(cpu, "MATMUL_ON_LANES", True)
    out = np.empty((8, 8), np.float64)  # a dtype the lanes do not write: NumPy's matmul
    np.testing.assert_array_equal(cpu.matmul(a, b, out=out), np.full((8, 8), 8.0))
    assert calls == []


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_on_the_im2col_path_through_the_lanes(lanes, dtype):
    # 20x20 outputs (wider than batch_inner's 16), 72 taps (no direct path), few channels
    # (no Winograd): Conv2D's im2col + GEMM path, all three GEMMs on the lanes.
    count, calls = lanes
    x, weight, bias = conv_data((3, 8, 20, 20), 6, (3, 3), dtype, seed=1)
    layer = Conv2D(6, 3, padding=1, in_channels=8, dtype=dtype)
    layer.params["weight"][...] = weight
    layer.params["bias"][...] = bias
    y = layer.forward(x, training=True)
    assert_matches(y, im2col_conv(x, weight, (1, 1, 1, 1)) + bias.reshape(1, -1, 1, 1), dtype)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    expected_dx, expected_dw, expected_db = im2col_grads(dy, x, weight, (1, 1, 1, 1))
    assert_matches(dx, expected_dx, dtype)
    assert_matches(layer.grads["weight"], expected_dw, dtype)
    assert_matches(layer.grads["bias"], expected_db, dtype)
    assert calls == ([count] * 3 if count > 1 else [])


@pytest.fixture(params=[2, 3], ids=["2-lanes", "3-lanes"])
def product_lanes(request, monkeypatch):
    """Stacks of products on 2 or 3 lanes (none goes side by side on Python threads)."""
    monkeypatch.setattr(cpu, "SIDE_BY_SIDE_MIN_FLOP", float("inf"))
    return _on_lanes(monkeypatch, request.param, "_products_by_lanes")


@needs_blas
@pytest.mark.parametrize("n", [1, 5, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stacked_products_match_einsum_in_float64(product_lanes, n, dtype):
    # A 1x1 convolution's products: out[i] = W @ x[i] and sum_i dy[i] @ x[i].T
    count, calls = product_lanes
    rng = np.random.default_rng(n)
    w, x = rng.standard_normal((12, 7)).astype(dtype), rng.standard_normal((n, 7, 30)).astype(dtype)
    dy = rng.standard_normal((n, 12, 30)).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    out = np.empty((n, 12, 30), dtype)
    cpu.matmul_each(w, x, out)
    np.testing.assert_allclose(out, np.einsum("mk,nkp->nmp", w.astype(np.float64), x.astype(np.float64)), **tol)
    cpu.matmul_each(np.ascontiguousarray(w.T).T, x, out)  # a transposed view, as the input gradient passes
    np.testing.assert_allclose(out, np.einsum("mk,nkp->nmp", w.astype(np.float64), x.astype(np.float64)), **tol)
    total = cpu.sum_matmul_nt(dy, x)
    np.testing.assert_allclose(total, np.einsum("nmp,nkp->mk", dy.astype(np.float64), x.astype(np.float64)), **tol)
    assert calls == [count] * 3


@needs_blas
def test_operands_that_do_not_fit_raise_instead_of_writing_past_out(lanes):
    a, b = np.ones((16, 150), np.float32), np.ones((150, 1600), np.float32)
    with pytest.raises(ValueError, match="mismatch"):
        cpu.matmul(a, b, out=np.empty((16, 100), np.float32))
    with pytest.raises(ValueError, match="mismatch"):
        cpu.matmul(a, np.ones((140, 1600), np.float32))
    with pytest.raises(ValueError):
        cpu.matmul_each(a, np.ones((3, 150, 40), np.float32), np.empty((3, 16, 50), np.float32))
