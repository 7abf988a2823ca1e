"""cunet.reference checked on its own: backward passes against finite differences in
float64 (along one random direction, as Chainer's check_backward), forward passes
against small cases computed by hand or by an independent loop."""
import numpy as np
import pytest

from cunet import reference as R

rng = np.random.default_rng(0)


def directional_fd(fun, arrays, which, direction, h=1e-6):
    """(fun(a + h u) - fun(a - h u)) / 2h for arrays[which] = a, u = direction."""
    plus = list(arrays)
    minus = list(arrays)
    plus[which] = arrays[which] + h * direction
    minus[which] = arrays[which] - h * direction
    return (fun(*plus) - fun(*minus)) / (2 * h)


def check_grads(forward, backward, arrays, rtol=1e-6):
    """forward(*arrays) -> y; backward(r, *arrays) -> grads of sum(y*r) wrt each array."""
    y = forward(*arrays)
    r = rng.standard_normal(y.shape)
    grads = backward(r, *arrays)
    for i, (a, g) in enumerate(zip(arrays, grads)):
        if g is None:
            continue
        assert g.shape == a.shape
        u = rng.standard_normal(a.shape)
        fd = directional_fd(lambda *xs: np.sum(forward(*xs) * r), arrays, i, u)
        assert np.isclose(np.sum(g * u), fd, rtol=rtol, atol=1e-8), (i, np.sum(g * u), fd)


def naive_conv(x, w, b, stride, padding, dilation):
    """Independent loop over every output voxel (3D; 2D arrays are lifted)."""
    two_d = x.ndim == 4
    if two_d:
        x, w = x[:, :, None], w[:, :, None]
        stride, padding, dilation = (1,) + stride, (0,) + padding, (1,) + dilation
    n, ci, *sz = x.shape
    co, _, *k = w.shape
    out = [(s + 2 * p - d * (kk - 1) - 1) // st + 1 for s, p, d, kk, st in zip(sz, padding, dilation, k, stride)]
    y = np.zeros((n, co, *out))
    for o in np.ndindex(*out):
        for t in np.ndindex(*k):
            pos = [oo * st - p + tt * d for oo, st, p, tt, d in zip(o, stride, padding, t, dilation)]
            if all(0 <= q < s for q, s in zip(pos, sz)):
                y[(slice(None), slice(None)) + o] += x[(slice(None), slice(None)) + tuple(pos)] @ w[(slice(None), slice(None)) + t].T
    if b is not None:
        y += b.reshape((1, -1) + (1,) * 3)
    return y[:, :, 0] if two_d else y


CONV_CASES = [
    # (spatial, ci, co, k, stride, padding, dilation, batch)
    ((7, 5), 3, 5, 3, 1, 1, 1, 1),
    ((9, 6), 2, 3, 3, 2, 1, 1, 3),
    ((8, 7), 5, 2, 2, 2, 0, 1, 1),
    ((6, 9), 3, 4, 3, 1, 2, 2, 1),
    ((5, 5), 1, 3, 1, 1, 0, 1, 3),
    ((5, 6, 7), 2, 3, 3, 1, 1, 1, 1),
    ((7, 5, 6), 3, 2, 3, 2, 1, 1, 3),
    ((4, 6, 5), 2, 2, 2, 2, 0, 1, 1),
    ((5, 5, 5), 2, 3, (1, 3, 2), (1, 2, 1), (0, 1, 0), 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_forward_matches_loop_and_backward_matches_fd(case):
    sz, ci, co, k, s, p, d, n = case
    nd = len(sz)
    kk = (k,) * nd if isinstance(k, int) else k
    x = rng.standard_normal((n, ci) + sz)
    w = rng.standard_normal((co, ci) + kk)
    b = rng.standard_normal(co)
    tup = lambda v: (v,) * nd if isinstance(v, int) else v
    y = R.conv_forward(x, w, b, s, p, d)
    np.testing.assert_allclose(y, naive_conv(x, w, b, tup(s), tup(p), tup(d)), rtol=1e-12, atol=1e-12)
    check_grads(lambda x, w, b: R.conv_forward(x, w, b, s, p, d),
                lambda r, x, w, b: R.conv_backward(r, x, w, s, p, d), [x, w, b])


def test_conv_1x1_is_a_channel_matmul():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    w = np.array([[1, 0, 0], [1, 1, 1]], np.float32).reshape(2, 3, 1, 1)
    y = R.conv_forward(x, w, np.array([0.5, -1], np.float32))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[:, 0], x[:, 0] + 0.5)
    np.testing.assert_array_equal(y[:, 1], x.sum(axis=1) - 1)


def test_conv_3x3_box_filter_with_padding():
    x = np.ones((1, 1, 3, 3))
    y = R.conv_forward(x, np.ones((1, 1, 3, 3)), padding=1)
    np.testing.assert_array_equal(y[0, 0], [[4, 6, 4], [6, 9, 6], [4, 6, 4]])


CONVT_CASES = [
    # (spatial, ci, co, k, stride, padding, output_padding, batch)
    ((4, 5), 3, 2, 2, 2, 0, 0, 1),
    ((5, 3), 2, 3, 3, 2, 1, 1, 3),
    ((3, 4), 4, 3, 3, 1, 1, 0, 1),
    ((3, 3), 2, 2, 3, 3, 0, 2, 1),
    ((3, 4, 5), 2, 3, 2, 2, 0, 0, 1),
    ((3, 3, 2), 3, 2, 3, 2, 1, 1, 3),
]


@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose_is_adjoint_of_conv_and_backward_matches_fd(case):
    sz, ci, co, k, s, p, op, n = case
    x = rng.standard_normal((n, ci) + sz)
    w = rng.standard_normal((ci, co) + (k,) * len(sz))
    b = rng.standard_normal(co)
    y = R.conv_transpose_forward(x, w, b, s, p, op)
    # <convT(x), z> == <x, conv(z)> with the same weight read as (Co_conv=Ci, Ci_conv=Co)
    z = rng.standard_normal(y.shape)
    lhs = np.sum((y - b.reshape((1, -1) + (1,) * len(sz))) * z)
    rhs = np.sum(x * R.conv_forward(z, w, None, s, p))
    assert np.isclose(lhs, rhs, rtol=1e-10)
    check_grads(lambda x, w, b: R.conv_transpose_forward(x, w, b, s, p, op),
                lambda r, x, w, b: R.conv_transpose_backward(r, x, w, s, p, op), [x, w, b])


def test_conv_transpose_2x2_stride_2_tiles_the_kernel():
    x = np.array([[[[1.0, 2.0]]]])
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y = R.conv_transpose_forward(x, w, stride=2)
    np.testing.assert_array_equal(y[0, 0], [[1, 2, 2, 4], [3, 4, 6, 8]])


def tie_free(shape):
    """Distinct values at least 1e-3 apart, so an FD step never changes an argmax."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 1e-2 + rng.uniform(0, 1e-3)).astype(np.float64)


@pytest.mark.parametrize("sz,k,s,p,n", [((7, 6), 2, 2, 0, 1), ((7, 9), 3, 2, 1, 3), ((5, 5), 3, 1, 1, 1),
                                          ((6, 5, 7), 2, 2, 0, 1), ((5, 7, 4), 3, 2, 1, 3), ((4, 4, 4), 2, 1, 0, 1)])
def test_maxpool_backward_matches_fd(sz, k, s, p, n):
    x = tie_free((n, 3) + sz)
    y, arg = R.maxpool_forward(x, k, s, p)
    check_grads(lambda x: R.maxpool_forward(x, k, s, p)[0],
                lambda r, x: (R.maxpool_backward(r, arg, x.shape),), [x])


def test_maxpool_known_case_and_first_max_wins():
    x = np.array([[[[1, 5, 2, 2], [3, 4, 2, 2], [0, 0, 9, 1], [7, 0, 1, 1]]]], np.float32)
    y, arg = R.maxpool_forward(x)
    np.testing.assert_array_equal(y[0, 0], [[5, 2], [7, 9]])
    np.testing.assert_array_equal(arg[0, 0], [[1, 2], [12, 10]])   # ties in the top-right: first wins
    dx = R.maxpool_backward(np.ones_like(y), arg, x.shape)
    assert dx.sum() == 4 and dx[0, 0, 0, 1] == 1 and dx[0, 0, 0, 2] == 1


def test_maxpool_padding_is_minus_infinity():
    x = -np.ones((1, 1, 3, 3))
    y, arg = R.maxpool_forward(x, 3, 1, 1)
    np.testing.assert_array_equal(y, -1)
    assert arg[0, 0, 0, 0] == 0


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("shape,scale", [((1, 2, 3, 5), 2), ((3, 1, 4, 3), 3), ((2, 3, 3, 4), (2, 3)),
                                         ((1, 2, 3, 2, 5), 2), ((2, 1, 2, 3, 3), (3, 2, 1))])
def test_upsample_backward_matches_fd(shape, scale, mode):
    x = rng.standard_normal(shape)
    check_grads(lambda x: R.upsample_forward(x, scale, mode),
                lambda r, x: (R.upsample_backward(r, x.shape, scale, mode),), [x])


def test_upsample_known_values():
    x = np.array([[[[1.0, 3.0]]]])
    np.testing.assert_array_equal(R.upsample_forward(x, (1, 2), "nearest")[0, 0, 0], [1, 1, 3, 3])
    np.testing.assert_allclose(R.upsample_forward(x, (1, 2), "linear")[0, 0, 0], [1, 1.5, 2.5, 3])
    np.testing.assert_allclose(R.upsample_forward(x, (1, 4), "linear")[0, 0, 0],
                               [1, 1, 1.25, 1.75, 2.25, 2.75, 3, 3])
    # a constant image stays constant; a bilinear ramp in the interior stays a ramp
    c = R.upsample_forward(np.full((1, 1, 3, 3, 3), 2.0), 2, "linear")
    np.testing.assert_allclose(c, 2.0)


def test_concat_and_split():
    a, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 1, 4, 5))
    y = R.concat_forward([a, b])
    assert y.shape == (2, 4, 4, 5)
    da, db = R.concat_backward(y, (3, 1))
    np.testing.assert_array_equal(da, a)
    np.testing.assert_array_equal(db, b)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 4, 3, 2, 5)])
def test_activation_backwards_match_fd(shape):
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5   # keep away from the kink of ReLU
    check_grads(R.relu_forward, lambda r, x: (R.relu_backward(r, R.relu_forward(x)),), [x])
    check_grads(lambda x: R.leaky_relu_forward(x, 0.1),
                lambda r, x: (R.leaky_relu_backward(r, x, 0.1),), [x])
    check_grads(R.sigmoid_forward, lambda r, x: (R.sigmoid_backward(r, R.sigmoid_forward(x)),), [x])
    check_grads(R.softmax_forward, lambda r, x: (R.softmax_backward(r, R.softmax_forward(x)),), [x])


def test_activation_known_values():
    x = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_array_equal(R.relu_forward(x), [[0, 0, 3]])
    np.testing.assert_allclose(R.leaky_relu_forward(x, 0.1), [[-0.2, 0, 3]])
    np.testing.assert_allclose(R.sigmoid_forward(np.array([0.0, 1000.0, -1000.0])), [0.5, 1, 0])
    s = R.softmax_forward(np.array([[0.0, np.log(3.0)]]).reshape(1, 2, 1, 1))
    np.testing.assert_allclose(s.ravel(), [0.25, 0.75])


@pytest.mark.parametrize("shape", [(3, 4, 5, 3), (2, 3, 3, 2, 5), (1, 2, 7, 5)])
def test_batchnorm_train_backward_matches_fd(shape):
    x = rng.standard_normal(shape) * 2 + 1
    g, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])

    def fwd(x, g, b):
        return R.batchnorm_forward(x, g, b, training=True)[0]

    def bwd(r, x, g, b):
        _, mean, invstd = R.batchnorm_forward(x, g, b, training=True)
        return R.batchnorm_backward(r, x, g, mean, invstd, training=True)

    check_grads(fwd, bwd, [x, g, b])


def test_batchnorm_eval_backward_matches_fd_and_running_stats():
    x = rng.standard_normal((4, 3, 5, 6)) * 3 + 2
    g, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = np.zeros(3), np.ones(3)
    y, mean, invstd = R.batchnorm_forward(x, g, b, rm, rv, training=True, momentum=0.1)
    m = 4 * 5 * 6
    np.testing.assert_allclose(rm, 0.1 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(rv, 0.9 + 0.1 * x.var(axis=(0, 2, 3)) * m / (m - 1))
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), b, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), np.abs(g) * np.sqrt(x.var(axis=(0, 2, 3)) /
                                                                           (x.var(axis=(0, 2, 3)) + 1e-5)))

    def fwd(x, g, b):
        return R.batchnorm_forward(x, g, b, rm.copy(), rv.copy(), training=False)[0]

    def bwd(r, x, g, b):
        _, mean, invstd = R.batchnorm_forward(x, g, b, rm.copy(), rv.copy(), training=False)
        return R.batchnorm_backward(r, x, g, mean, invstd, training=False)

    check_grads(fwd, bwd, [x, g, b])


def test_philox_known_answers():
    # Random123's published known-answer vectors for philox4x32-10
    w = R._philox4x32_10([0, 0, 0, 0], [0, 0])
    assert [int(v) for v in w] == [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    w = R._philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0])
    assert [int(v) for v in w] == [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]


def test_dropout_mask_is_seeded_scaled_and_backward_is_its_transpose():
    x = rng.standard_normal((4, 8, 16, 16))
    y1, y2, y3 = R.dropout_forward(x, 0.25, 7), R.dropout_forward(x, 0.25, 7), R.dropout_forward(x, 0.25, 8)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, y3)
    kept = y1 != 0
    assert abs(kept.mean() - 0.75) < 5 * np.sqrt(0.75 * 0.25 / x.size)   # 5 sigma of a binomial
    np.testing.assert_allclose(y1[kept], x[kept] / 0.75)
    check_grads(lambda x: R.dropout_forward(x, 0.25, 7), lambda r, x: (R.dropout_backward(r, 0.25, 7),), [x])
    np.testing.assert_array_equal(R.dropout_forward(x, 0.0, 3), x)


def test_float32_in_float32_out():
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    assert R.conv_forward(x, w, padding=1).dtype == np.float32
    assert all(g.dtype == np.float32 for g in R.conv_backward(np.ones((1, 3, 5, 5), np.float32), x, w, padding=1))
    assert R.upsample_forward(x, 2, "linear").dtype == np.float32
    assert R.maxpool_forward(x)[0].dtype == np.float32
    assert R.batchnorm_forward(x, np.ones(2, np.float32), np.zeros(2, np.float32))[0].dtype == np.float32


# ---- bad input


def test_bad_input_errors_name_the_argument():
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="x: expected 4 or 5 dimensions"):
        R.conv_forward(np.zeros((2, 5, 5), np.float32), w)
    with pytest.raises(ValueError, match="w: expected 2 input channels"):
        R.conv_forward(x, np.zeros((3, 4, 3, 3), np.float32))
    with pytest.raises(TypeError, match="x: expected float32 or float64, got int64"):
        R.conv_forward(np.zeros((1, 2, 5, 5), np.int64), w)
    with pytest.raises(TypeError, match="w: expected dtype float32"):
        R.conv_forward(x, w.astype(np.float64))
    with pytest.raises(ValueError, match="w: kernel extent 7"):
        R.conv_forward(x, np.zeros((3, 2, 7, 7), np.float32))
    with pytest.raises(ValueError, match=r"b: expected shape \(3,\)"):
        R.conv_forward(x, w, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="stride: expected values >= 1"):
        R.conv_forward(x, w, stride=0)
    with pytest.raises(ValueError, match="padding: expected an int or a tuple of 2 ints"):
        R.conv_forward(x, w, padding=(1, 1, 1))
    with pytest.raises(ValueError, match=r"dy: expected shape \(1, 3, 3, 3\)"):
        R.conv_backward(np.zeros((1, 3, 5, 5), np.float32), x, w)
    with pytest.raises(ValueError, match="w: expected 2 input channels first"):
        R.conv_transpose_forward(x, np.zeros((3, 2, 2, 2), np.float32), stride=2)
    with pytest.raises(ValueError, match="output_padding: expected values smaller than stride"):
        R.conv_transpose_forward(x, np.zeros((2, 2, 2, 2), np.float32), stride=2, output_padding=2)
    with pytest.raises(ValueError, match="kernel: .* larger than the padded input"):
        R.maxpool_forward(x, 7)
    with pytest.raises(ValueError, match="padding: expected at most half the kernel"):
        R.maxpool_forward(x, 2, padding=2)
    with pytest.raises(ValueError, match="mode: expected one of 'nearest', 'linear'"):
        R.upsample_forward(x, 2, "cubic")
    with pytest.raises(ValueError, match="scale: expected values >= 1"):
        R.upsample_forward(x, 0)
    with pytest.raises(ValueError, match=r"xs\[1\]: expected shape"):
        R.concat_forward([x, np.zeros((1, 2, 4, 5), np.float32)])
    with pytest.raises(ValueError, match="channels: expected sizes summing to 2"):
        R.concat_backward(x, (1, 2))
    with pytest.raises(ValueError, match=r"gamma: expected shape \(2,\)"):
        R.batchnorm_forward(x, np.ones(3, np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="running_mean: eval mode"):
        R.batchnorm_forward(x, np.ones(2, np.float32), np.zeros(2, np.float32), training=False)
    with pytest.raises(ValueError, match=r"p: expected a value in \[0.0, 1.0\)"):
        R.dropout_forward(x, 1.0, 0)
    with pytest.raises(TypeError, match="seed: expected an int"):
        R.dropout_forward(x, 0.5, 1.5)
    with pytest.raises(ValueError, match="argmax: values must lie in"):
        R.maxpool_backward(np.zeros((1, 2, 2, 2), np.float32), np.full((1, 2, 2, 2), 99), x.shape)
    with pytest.raises(TypeError, match="x: expected a numpy or cupy array, got list"):
        R.relu_forward([1.0, 2.0])
