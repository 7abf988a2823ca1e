"""cunet.ops activations (kernels/act.cuh) against cunet.reference."""
import numpy as np
import pytest

from conftest import DEVICES, to_device, to_numpy
from cunet import ops, reference as R

rng = np.random.default_rng(1)
SHAPES = [(1, 3, 5, 7), (3, 5, 4, 3, 5), (2, 17, 9, 11)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
def test_activations_match_reference(shape, device):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    X, DY = to_device(x, device), to_device(dy, device)
    # float32 elementwise: one rounding per op, exp within a few ulp
    tol = dict(rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(ops.relu_forward(X)), R.relu_forward(x))
    np.testing.assert_array_equal(to_numpy(ops.relu_backward(DY, ops.relu_forward(X))),
                                  R.relu_backward(dy, R.relu_forward(x)))
    np.testing.assert_allclose(to_numpy(ops.leaky_relu_forward(X, 0.2)), R.leaky_relu_forward(x, 0.2), **tol)
    np.testing.assert_allclose(to_numpy(ops.leaky_relu_backward(DY, X, 0.2)), R.leaky_relu_backward(dy, x, 0.2), **tol)
    np.testing.assert_allclose(to_numpy(ops.sigmoid_forward(X)), R.sigmoid_forward(x), **tol)
    y = R.sigmoid_forward(x)
    np.testing.assert_allclose(to_numpy(ops.sigmoid_backward(DY, to_device(y, device))), R.sigmoid_backward(dy, y), **tol)
    np.testing.assert_allclose(to_numpy(ops.softmax_forward(X)), R.softmax_forward(x), **tol)
    s = R.softmax_forward(x)
    np.testing.assert_allclose(to_numpy(ops.softmax_backward(DY, to_device(s, device))),
                               R.softmax_backward(dy, s), rtol=1e-5, atol=1e-6)


def test_ops_reject_float64_and_bad_shapes():
    with pytest.raises(TypeError, match="x: cunet.ops kernels take float32, got float64"):
        ops.relu_forward(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"y: expected shape \(1, 1, 2, 2\)"):
        ops.relu_backward(np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 3), np.float32))
    with pytest.raises(TypeError, match="x: expected a numpy or cupy array"):
        ops.sigmoid_forward([1.0])
