"""cunet ops dropout (kernels/dropout.cuh) against cunet.reference: bit-identical masks."""
import numpy as np
import pytest

from conftest import DEVICES, to_device, to_numpy
from cunet import reference as R
from cunet._ops import dropout as ops

rng = np.random.default_rng(3)
SEEDS = [0, 1, 12345, 2**32 - 1, 2**32, 2**40 + 7, 2**63 + 5, 2**64 - 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (3, 5, 4, 3, 5), (1000003,)])
def test_dropout_is_bit_identical_to_reference(shape, p, device):
    # negative inputs: a dropped element is -0.0 in both (x * 0), so compare the bits
    x = rng.standard_normal(shape).astype(np.float32)
    for seed in SEEDS if np.prod(shape) < 10**5 else SEEDS[::3]:
        y = to_numpy(ops.dropout_forward(to_device(x, device), p, seed))
        np.testing.assert_array_equal(y.view(np.uint32), R.dropout_forward(x, p, seed).view(np.uint32))
        dx = to_numpy(ops.dropout_backward(to_device(x, device), p, seed))
        np.testing.assert_array_equal(dx.view(np.uint32), R.dropout_backward(x, p, seed).view(np.uint32))


def test_dropout_bad_input():
    x = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"p: expected a value in \[0.0, 1.0\)"):
        ops.dropout_forward(x, 1.0, 0)
    with pytest.raises(ValueError, match=r"p: expected a value in \[0.0, 1.0\)"):
        ops.dropout_backward(x, -0.1, 0)
    with pytest.raises(ValueError, match="seed: expected an int >= 0"):
        ops.dropout_forward(x, 0.5, -1)
    with pytest.raises(ValueError, match=r"seed: expected an int below 2\*\*64"):
        ops.dropout_forward(x, 0.5, 2**64)
    with pytest.raises(TypeError, match="seed: expected an int"):
        ops.dropout_forward(x, 0.5, 1.5)
    with pytest.raises(TypeError, match="dy: cunet.ops kernels take float32, got float64"):
        ops.dropout_backward(x.astype(np.float64), 0.5, 1)
    with pytest.raises(TypeError, match="x: expected a numpy or cupy array"):
        ops.dropout_forward([1.0], 0.5, 1)


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_dropout_reads_the_seed_from_memory(device):
    """The device-seed variants (for captured graphs) give the masks of the by-value ones,
    and follow the buffer when it is rewritten in place."""
    x = to_device(rng.standard_normal((2, 3, 17, 9)).astype(np.float32), device)
    buf = to_device(np.zeros(2, np.int64), device)
    for seed in SEEDS:
        buf[...] = to_device(np.array(ops.seed_halves(seed), np.int64), device)
        for which in ("forward", "backward"):
            want = getattr(ops, f"dropout_{which}")(x, 0.3, seed)
            got = getattr(ops, f"dropout_{which}_seeded")(x, 0.3, buf)
            np.testing.assert_array_equal(to_numpy(got).view(np.uint32), to_numpy(want).view(np.uint32))


def test_seeded_dropout_bad_input():
    x = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"seed: expected shape \(2,\)"):
        ops.dropout_forward_seeded(x, 0.5, np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="seed: expected int64, got int32"):
        ops.dropout_forward_seeded(x, 0.5, np.zeros(2, np.int32))
    with pytest.raises(ValueError, match=r"p: expected a value in \[0.0, 1.0\)"):
        ops.dropout_backward_seeded(x, 1.0, np.zeros(2, np.int64))
