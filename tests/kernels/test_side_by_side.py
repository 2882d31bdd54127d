"""Independent GEMMs side by side (``cpu.matmuls_side_by_side`` and the 1x1-convolution
products built on it) against plain NumPy products in float64."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import threadpoolctl

from minicnn import threads
from minicnn.kernels import cpu, reference


@pytest.fixture(params=[True, False], ids=["side-by-side", "one-by-one"])
def side_by_side(request, monkeypatch):
    monkeypatch.setattr(cpu, "GEMMS_SIDE_BY_SIDE", request.param)
    monkeypatch.setattr(cpu, "SIDE_BY_SIDE_MIN_FLOP", 0)  # these products are small
    return request.param


def _blas_threads():
    """Thread counts of NumPy's BLAS (the one behind its matmul; in NumPy's wheels it lives in
    ``numpy.libs``), or of every BLAS when none is NumPy's own. (A first Numba compilation of
    some kernels loads SciPy's OpenBLAS as well, after ``one_blas_thread`` listed the libraries;
    nothing minicnn runs side by side calls it.)"""
    blas = [info for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    return [info["num_threads"] for info in ([i for i in blas if "numpy" in i["filepath"]] or blas)]


def test_every_product_runs_once_and_blas_threads_come_back(side_by_side):
    before, seen, names = _blas_threads(), [], set()

    def product(k):
        seen.append(k)
        names.add(threading.current_thread().name)
        assert _blas_threads() == ([1] * len(before) if side_by_side and threads.get_num_threads() > 1 else before)

    cpu.matmuls_side_by_side(40, product)
    assert sorted(seen) == list(range(40))
    assert _blas_threads() == before
    if not side_by_side:
        assert names == {threading.current_thread().name}


@pytest.mark.parametrize("failing", [0, 7, 19])
def test_an_error_in_a_product_propagates_and_nothing_runs_on(side_by_side, failing):
    before, done = _blas_threads(), []

    def product(k):
        time.sleep(0.002)
        if k == failing:
            raise ValueError(f"product {k} failed")
        done.append(k)

    with pytest.raises(ValueError, match=f"product {failing} failed"):
        cpu.matmuls_side_by_side(20, product)
    assert _blas_threads() == before
    finished = len(done)
    time.sleep(0.05)
    assert len(done) == finished  # no product still running after the call returned


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_each_equals_the_products(side_by_side, dtype):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((12, 9)).astype(dtype), rng.standard_normal((7, 9, 33)).astype(dtype)
    out = np.full((7, 12, 33), np.nan, dtype)
    cpu.matmul_each(a, b, out)
    expected = np.einsum("mk,nkp->nmp", a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    np.testing.assert_array_equal(reference.matmul_each(a, b, np.empty_like(out)), out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("group_bytes", [1, 2**23], ids=["one-per-group", "one-group"])
def test_sum_matmul_nt_equals_the_sum_and_repeats_bit_for_bit(side_by_side, monkeypatch, dtype, group_bytes):
    monkeypatch.setattr(cpu, "_SUM_GROUP_BYTES", group_bytes)
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((11, 6, 50)).astype(dtype), rng.standard_normal((11, 5, 50)).astype(dtype)
    total = cpu.sum_matmul_nt(a, b)
    expected = np.einsum("nmk,npk->mp", a.astype(np.float64), b.astype(np.float64))
    assert total.shape == (6, 5) and total.dtype == dtype
    np.testing.assert_allclose(total, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-4)
    for _ in range(5):  # the scheduling varies; the sum must not
        np.testing.assert_array_equal(cpu.sum_matmul_nt(a, b), total)


def test_small_products_run_one_after_another(monkeypatch):
    monkeypatch.setattr(cpu, "GEMMS_SIDE_BY_SIDE", True)
    names = set()
    cpu.matmuls_side_by_side(20, lambda k: names.add(threading.current_thread().name),
                             flop_each=cpu.SIDE_BY_SIDE_MIN_FLOP / 2)
    assert names == {threading.current_thread().name}


def test_a_1x1_layers_gradients_repeat_bit_for_bit_side_by_side(monkeypatch):
    """``minicnn.seed`` promises bit-identical training: the threads' scheduling must not leak
    into a 1x1 convolution's weight gradient (a sum over samples)."""
    from minicnn.layers import Conv2D

    monkeypatch.setattr(cpu, "GEMMS_SIDE_BY_SIDE", True)
    monkeypatch.setattr(cpu, "SIDE_BY_SIDE_MIN_FLOP", 0)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((24, 16, 9, 9)).astype(np.float32)
    dy = rng.standard_normal((24, 32, 9, 9)).astype(np.float32)
    layer = Conv2D(32, 1, in_channels=16)
    runs = []
    for _ in range(6):
        y = layer.forward(x, training=True)
        dx = layer.backward(dy)
        runs.append((y.copy(), dx.copy(), {k: g.copy() for k, g in layer.grads.items()}))
    for y, dx, grads in runs[1:]:
        np.testing.assert_array_equal(y, runs[0][0])
        np.testing.assert_array_equal(dx, runs[0][1])
        for key in grads:
            np.testing.assert_array_equal(grads[key], runs[0][2][key])
    expected = np.einsum("nohw,nchw->oc", dy.astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(runs[0][2]["weight"].reshape(32, 16), expected, rtol=1e-4, atol=1e-3)
