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


def test_backend_numpy_is_always_available():
    assert "numpy" in minicnn.backend.available()
    assert minicnn.backend.get_array_module(np.zeros(1)) is np


def test_images_without_a_channel_axis_get_a_hint():
    import pytest
    from minicnn.layers import Conv2D

    with pytest.raises(ValueError, match=r"Conv2D expected a 4-D input .*got shape \(8, 28, 28\).*x\[:, None\]"):
        Conv2D(4, 3)(np.zeros((8, 28, 28), np.float32))
