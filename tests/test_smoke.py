"""The package imports and its pieces are where the contract says."""
import numpy as np

import minicnn
from minicnn.gradcheck import check_layer


def test_kernels_install_as_a_subpackage():
    import minicnn.kernels as kernels

    assert kernels.__name__ == "minicnn.kernels"
    assert callable(kernels.im2col) and callable(kernels.reference.im2col)


def test_gradcheck_flags_a_wrong_backward():
    from minicnn.layers import ReLU

    class WrongReLU(ReLU):
        def backward(self, dy):
            return dy  # forgets the mask

    assert check_layer(ReLU(), (2, 3, 4, 4)).ok
    report = check_layer(WrongReLU(), (2, 3, 4, 4))
    assert not report.ok and report.max_rel_error["input"] > 0.1


def test_gradcheck_tolerates_rounding_noise_on_a_zero_gradient_but_not_a_small_error():
    from minicnn.gradcheck import relative_error

    # A gradient that is exactly zero (a conv bias before batch norm): numeric noise ~1e-10.
    assert relative_error([1e-17, -3e-18], [4.4e-10, 2.2e-10], noise=2.2e-8) == 0.0
    assert relative_error([1e-17, -3e-18], [4.4e-10, 2.2e-10]) > 0.5  # without the allowance
    # A real mistake of 1e-6 on that zero gradient is still caught.
    assert relative_error([1e-6, 0.0], [4.4e-10, 2.2e-10], noise=2.2e-8) > 0.9


def test_backend_numpy_is_always_available():
    assert "numpy" in minicnn.backend.available()
    assert minicnn.backend.get_array_module(np.zeros(1)) is np


def test_images_without_a_channel_axis_get_a_hint():
    import pytest
    from minicnn.layers import Conv2D

    with pytest.raises(ValueError, match=r"Conv2D expected a 4-D input .*got shape \(8, 28, 28\).*x\[:, None\]"):
        Conv2D(4, 3)(np.zeros((8, 28, 28), np.float32))
