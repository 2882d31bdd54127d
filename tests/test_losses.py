"""Losses: finite differences, PyTorch parity (value and gradient), extremes, bad input.

The oracles are independent of minicnn: central differences of the loss value
(``minicnn.gradcheck``), and ``torch.nn.functional`` evaluated on the same
arrays and differentiated by autograd.
"""
import numpy as np
import pytest

from minicnn import backend
from minicnn.gradcheck import check_loss, relative_error
from minicnn.losses import MAE, MSE, BinaryCrossEntropy, CrossEntropy, Loss, get_loss
from tests.helpers import DTYPES, assert_close, require_torch


def torch_value_and_grad(fn, pred, target, **kwargs):
    """``fn(pred, target)`` and d/dpred by torch autograd, as NumPy."""
    torch = require_torch()
    tp = torch.from_numpy(pred.copy()).requires_grad_(True)
    tt = torch.from_numpy(np.asarray(target).copy())
    value = fn(tp, tt, **kwargs)
    value.backward()
    return value.item(), tp.grad.numpy()


def minicnn_value_and_grad(loss, pred, target):
    value = loss.forward(pred, target)
    assert isinstance(value, float), f"forward must return a Python float, got {type(value)}"
    grad = loss.backward()
    assert grad.shape == pred.shape and grad.dtype == pred.dtype
    return value, grad


def cross_entropy_target(kind, n, num_classes, rng):
    labels = rng.integers(0, num_classes, n)
    if kind == "index":
        return labels
    if kind == "onehot":
        return np.eye(num_classes)[labels]
    probs = rng.random((n, num_classes)) + 0.1
    return probs / probs.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------- CrossEntropy
CE_CASES = [  # (N, C, label_smoothing, target kind)
    (8, 10, 0.0, "index"),
    (5, 3, 0.1, "index"),
    (6, 4, 0.0, "onehot"),
    (4, 4, 0.3, "onehot"),
    (7, 5, 0.2, "prob"),
    (1, 2, 0.0, "index"),
    (3, 6, 1.0, "index"),
]


@pytest.mark.parametrize("n, num_classes, smoothing, kind", CE_CASES)
def test_cross_entropy_gradcheck(n, num_classes, smoothing, kind):
    target = cross_entropy_target(kind, n, num_classes, np.random.default_rng(1))
    report = check_loss(CrossEntropy(label_smoothing=smoothing), (n, num_classes), target)
    assert report.ok, report


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, num_classes, smoothing, kind", CE_CASES)
def test_cross_entropy_matches_torch(n, num_classes, smoothing, kind, dtype):
    torch = require_torch()
    rng = np.random.default_rng(2)
    pred = (3 * rng.standard_normal((n, num_classes))).astype(dtype)
    target = cross_entropy_target(kind, n, num_classes, rng)
    if kind != "index":
        target = target.astype(dtype)
    value, grad = minicnn_value_and_grad(CrossEntropy(label_smoothing=smoothing), pred, target)
    t_value, t_grad = torch_value_and_grad(torch.nn.functional.cross_entropy, pred, target,
                                           label_smoothing=smoothing)
    assert_close(value, t_value, dtype, "loss value")
    assert_close(grad, t_grad, dtype, "dL/dpred")


def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n():
    # A hand computation on a 2x3 batch, independent of torch.
    pred = np.array([[0.0, 0.0, 0.0], [np.log(2.0), 0.0, np.log(1.0)]])
    target = np.array([2, 0])
    loss = CrossEntropy()
    value = loss.forward(pred, target)
    assert value == pytest.approx((np.log(3) + np.log(2)) / 2, rel=1e-12)
    expected = np.array([[1 / 3, 1 / 3, -2 / 3], [0.5 - 1, 0.25, 0.25]]) / 2
    np.testing.assert_allclose(loss.backward(), expected, rtol=1e-12)


def test_cross_entropy_whole_float_labels_equal_integer_labels():
    pred = np.random.default_rng(0).standard_normal((4, 3))
    as_int = CrossEntropy().forward(pred, np.array([0, 2, 1, 2]))
    as_float = CrossEntropy().forward(pred, np.array([0.0, 2.0, 1.0, 2.0]))
    assert as_int == as_float


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_extreme_logits_are_finite_and_match_torch(dtype):
    torch = require_torch()
    pred = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 1000.0], [-1000.0, -1000.0, 1000.0]],
                    dtype=dtype)
    target = np.array([1, 2, 2])
    for smoothing in (0.0, 0.1):
        value, grad = minicnn_value_and_grad(CrossEntropy(label_smoothing=smoothing), pred, target)
        t_value, t_grad = torch_value_and_grad(torch.nn.functional.cross_entropy, pred, target,
                                               label_smoothing=smoothing)
        assert np.isfinite(value) and np.isfinite(grad).all()
        assert_close(value, t_value, dtype, "loss value at ±1000")
        assert_close(grad, t_grad, dtype, "dL/dpred at ±1000")


@pytest.mark.parametrize("labels, match", [
    ([0, 5, 1], r"label 5 outside \[0, 5\)"),
    ([0, -1, 1], r"label -1 outside \[0, 5\)"),
    ([0, 1.5, 1], r"integer class labels, got 1\.5"),
    ([0, 1], r"expected 3 class labels.*\(2,\)"),
])
def test_cross_entropy_rejects_bad_labels(labels, match):
    pred = np.zeros((3, 5))
    with pytest.raises(ValueError, match=match):
        CrossEntropy().forward(pred, np.array(labels))


def test_cross_entropy_rejects_bad_shapes_and_settings():
    with pytest.raises(ValueError, match=r"CrossEntropy expected target of the same shape as pred "
                                         r"\(3, 5\), got \(3, 4\)"):
        CrossEntropy().forward(np.zeros((3, 5)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"logits of shape \(N, C\), got shape \(3,\)"):
        CrossEntropy().forward(np.zeros(3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"target shape \(3, 5, 1\)"):
        CrossEntropy().forward(np.zeros((3, 5)), np.zeros((3, 5, 1)))
    with pytest.raises(ValueError, match=r"label_smoothing in \[0, 1\], got 1.5"):
        CrossEntropy(label_smoothing=1.5)
    with pytest.raises(TypeError, match="integer class labels, got dtype bool"):
        CrossEntropy().forward(np.zeros((2, 2)), np.array([True, False]))


# ---------------------------------------------------------------------- BinaryCrossEntropy
BCE_SHAPES = [(8, 1), (4, 3), (2, 3, 2, 2)]


@pytest.mark.parametrize("shape", BCE_SHAPES)
def test_bce_from_logits_gradcheck(shape):
    target = np.random.default_rng(3).random(shape)
    report = check_loss(BinaryCrossEntropy(from_logits=True), shape, target)
    assert report.ok, report


@pytest.mark.parametrize("shape", BCE_SHAPES)
def test_bce_from_probabilities_gradcheck(shape):
    # check_loss draws pred from N(0, 1), outside [0, 1]; so central differences by hand here.
    rng = np.random.default_rng(4)
    pred = rng.uniform(0.05, 0.95, shape)
    target = rng.random(shape)
    loss = BinaryCrossEntropy(from_logits=False)
    loss.forward(pred, target)
    analytic = loss.backward().reshape(-1)
    numeric = np.empty(pred.size)
    step = 1e-6
    for i in range(pred.size):
        plus, minus = pred.copy(), pred.copy()
        plus.flat[i] += step
        minus.flat[i] -= step
        numeric[i] = (loss.forward(plus, target) - loss.forward(minus, target)) / (2 * step)
    assert relative_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BCE_SHAPES)
def test_bce_from_logits_matches_torch(shape, dtype):
    torch = require_torch()
    rng = np.random.default_rng(5)
    pred = (3 * rng.standard_normal(shape)).astype(dtype)
    target = rng.random(shape).astype(dtype)
    value, grad = minicnn_value_and_grad(BinaryCrossEntropy(), pred, target)
    t_value, t_grad = torch_value_and_grad(torch.nn.functional.binary_cross_entropy_with_logits,
                                           pred, target)
    assert_close(value, t_value, dtype, "loss value")
    assert_close(grad, t_grad, dtype, "dL/dpred")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BCE_SHAPES)
def test_bce_from_probabilities_matches_torch(shape, dtype):
    torch = require_torch()
    rng = np.random.default_rng(6)
    pred = rng.uniform(0.01, 0.99, shape).astype(dtype)
    target = (rng.random(shape) > 0.5).astype(dtype)
    value, grad = minicnn_value_and_grad(BinaryCrossEntropy(from_logits=False), pred, target)
    t_value, t_grad = torch_value_and_grad(torch.nn.functional.binary_cross_entropy, pred, target)
    assert_close(value, t_value, dtype, "loss value")
    assert_close(grad, t_grad, dtype, "dL/dpred")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_extremes_are_finite_and_match_torch(dtype):
    torch = require_torch()
    logits = np.array([[1000.0, -1000.0, 1000.0, -1000.0, 0.0]], dtype=dtype)
    target = np.array([[1.0, 1.0, 0.0, 0.0, 0.5]], dtype=dtype)
    value, grad = minicnn_value_and_grad(BinaryCrossEntropy(), logits, target)
    t_value, t_grad = torch_value_and_grad(torch.nn.functional.binary_cross_entropy_with_logits,
                                           logits, target)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert value == pytest.approx((1000 + 1000 + np.log(2)) / 5, rel=1e-6)
    assert_close(value, t_value, dtype, "logits ±1000")
    assert_close(grad, t_grad, dtype, "dL/dlogits at ±1000")

    # Probabilities exactly 0 and 1: torch clamps each log at -100.
    probs = np.array([[0.0, 1.0, 0.0, 1.0, 0.5]], dtype=dtype)
    target = np.array([[1.0, 0.0, 0.0, 1.0, 0.3]], dtype=dtype)
    value, grad = minicnn_value_and_grad(BinaryCrossEntropy(from_logits=False), probs, target)
    t_value, t_grad = torch_value_and_grad(torch.nn.functional.binary_cross_entropy, probs, target)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert value == pytest.approx((100 + 100 + np.log(2)) / 5, rel=1e-6)
    assert_close(value, t_value, dtype, "p in {0, 1}")
    assert_close(grad, t_grad, dtype, "dL/dp at p in {0, 1}")


def test_bce_rejects_bad_input():
    with pytest.raises(ValueError, match=r"targets in \[0, 1\], got values in \[-0.5, 1.0\]"):
        BinaryCrossEntropy().forward(np.zeros((2, 2)), np.array([[-0.5, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*from_logits=True"):
        BinaryCrossEntropy(from_logits=False).forward(np.array([[2.0, 0.5]]), np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"BinaryCrossEntropy expected target of the same shape as pred "
                                         r"\(4, 1\), got \(4,\)"):
        BinaryCrossEntropy().forward(np.zeros((4, 1)), np.zeros(4))
    with pytest.raises(TypeError, match="from_logits"):
        BinaryCrossEntropy(from_logits="yes")


# ---------------------------------------------------------------------- MSE / MAE
REGRESSION_SHAPES = [(8,), (4, 3), (2, 3, 4, 4)]
REGRESSION_LOSSES = [("mse", MSE, "mse_loss"), ("mae", MAE, "l1_loss")]


@pytest.mark.parametrize("shape", REGRESSION_SHAPES)
@pytest.mark.parametrize("name, cls, torch_name", REGRESSION_LOSSES)
def test_regression_losses_gradcheck(name, cls, torch_name, shape):
    # check_loss draws pred from N(0, 1); a target offset by ±0.5 keeps MAE off its kink.
    rng = np.random.default_rng(0)
    pred = rng.standard_normal(shape)  # the same draw check_loss makes with seed=0
    target = pred + np.where(rng.random(shape) > 0.5, 0.5, -0.5)
    report = check_loss(cls(), shape, target)
    assert report.ok, report


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", REGRESSION_SHAPES)
@pytest.mark.parametrize("name, cls, torch_name", REGRESSION_LOSSES)
def test_regression_losses_match_torch(name, cls, torch_name, shape, dtype):
    torch = require_torch()
    rng = np.random.default_rng(7)
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    target.flat[0] = pred.flat[0]  # one exact tie: MAE's gradient there is sign(0) = 0
    value, grad = minicnn_value_and_grad(cls(), pred, target)
    t_value, t_grad = torch_value_and_grad(getattr(torch.nn.functional, torch_name), pred, target)
    assert_close(value, t_value, dtype, f"{name} value")
    assert_close(grad, t_grad, dtype, f"{name} dL/dpred")
    if name == "mae":
        assert grad.flat[0] == 0


@pytest.mark.parametrize("cls", [MSE, MAE])
def test_regression_losses_reject_shape_mismatch(cls):
    # (N, 1) vs (N,) would silently broadcast to (N, N) in NumPy.
    with pytest.raises(ValueError, match=rf"{cls.__name__} expected target of the same shape as pred "
                                         r"\(4, 1\), got \(4,\)"):
        cls().forward(np.zeros((4, 1)), np.zeros(4))


# ---------------------------------------------------------------------- common behaviour
def test_get_loss_names_instances_and_unknown():
    assert type(get_loss("cross_entropy")) is CrossEntropy
    assert type(get_loss("bce")) is BinaryCrossEntropy
    assert type(get_loss("mse")) is MSE
    assert type(get_loss("MAE")) is MAE
    assert type(get_loss("categorical_crossentropy")) is CrossEntropy
    smoothed = CrossEntropy(label_smoothing=0.1)
    assert get_loss(smoothed) is smoothed
    with pytest.raises(ValueError, match="'cross_entropy', 'bce', 'mse', 'mae'"):
        get_loss("hinge")
    with pytest.raises(TypeError, match="loss name or a Loss"):
        get_loss(3)


@pytest.mark.parametrize("loss", [CrossEntropy(), BinaryCrossEntropy(), MSE(), MAE()], ids=repr)
def test_backward_before_forward_and_bad_pred_are_clear(loss):
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward"):
        type(loss)().backward()
    with pytest.raises(TypeError, match="floating-point predictions, got dtype int64"):
        loss.forward(np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2)))
    with pytest.raises(TypeError, match="numpy or cupy array, got list"):
        loss.forward([[0.0, 1.0]], np.zeros((1, 2)))
    with pytest.raises(ValueError, match="empty batch"):
        loss.forward(np.zeros((0, 2)), np.zeros((0, 2)))


def test_call_is_forward_and_accepts_list_targets():
    pred = np.array([[0.2, 0.8], [0.9, 0.1]])
    assert MSE()(pred, [[0.0, 1.0], [1.0, 0.0]]) == pytest.approx(np.mean([0.04, 0.04, 0.01, 0.01]))
    assert isinstance(CrossEntropy(), Loss)


@pytest.mark.gpu
def test_losses_on_cupy_equal_numpy():
    cupy = pytest.importorskip("cupy")
    if "cupy" not in backend.available():
        pytest.skip("no CUDA GPU")
    rng = np.random.default_rng(8)
    pred = rng.standard_normal((6, 4))
    cases = [(CrossEntropy(0.1), rng.integers(0, 4, 6)), (BinaryCrossEntropy(), rng.random((6, 4))),
             (MSE(), rng.random((6, 4))), (MAE(), rng.random((6, 4)))]
    for loss, target in cases:
        cpu_value, cpu_grad = loss.forward(pred, target), loss.backward()
        gpu_value = loss.forward(cupy.asarray(pred), target)  # NumPy target moves to the GPU
        gpu_grad = loss.backward()
        assert isinstance(gpu_grad, cupy.ndarray)
        assert_close(gpu_value, cpu_value, np.float64, repr(loss))
        assert_close(gpu_grad.get(), cpu_grad, np.float64, repr(loss))
