"""Activations: kernels/act.cuh."""

from cunet import _check
from cunet._ops.core import empty, f32, loop, ncs, register, run

register("act", "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
         "sigmoid_forward", "sigmoid_backward", "softmax_forward", "softmax_backward", "bias_add")


def _unary(name, x):
    _check.array("x", x)
    f32("x", x)
    y = empty(x, x.shape)
    run(name, loop(x.size), x.size, x, y)
    return y


def _grad(name, dy, other_name, other, *extra):
    _check.array("dy", dy)
    f32("dy", dy)
    _check.same_shape(other_name, other, "dy", dy)
    f32(other_name, other)
    _check.same_device(other_name, other, "dy", dy)
    dx = empty(dy, dy.shape)
    run(name, loop(dy.size), dy.size, dy, other, dx, *extra)
    return dx


def relu_forward(x):
    return _unary("relu_forward", x)


def relu_backward(dy, y):
    return _grad("relu_backward", dy, "y", y)


def leaky_relu_forward(x, slope=0.01):
    _check.array("x", x)
    f32("x", x)
    slope = _check.number("slope", slope, 0.0)
    y = empty(x, x.shape)
    run("leaky_relu_forward", loop(x.size), x.size, x, y, slope)
    return y


def leaky_relu_backward(dy, x, slope=0.01):
    slope = _check.number("slope", slope, 0.0)
    return _grad("leaky_relu_backward", dy, "x", x, slope)


def sigmoid_forward(x):
    return _unary("sigmoid_forward", x)


def sigmoid_backward(dy, y):
    return _grad("sigmoid_backward", dy, "y", y)


def softmax_forward(x):
    _check.array("x", x, ndim=(2, 3, 4, 5))
    f32("x", x)
    n, c, s = ncs(x)
    y = empty(x, x.shape)
    run("softmax_forward", loop(n * s), n, c, s, x, y)
    return y


def softmax_backward(dy, y):
    _check.array("dy", dy, ndim=(2, 3, 4, 5))
    f32("dy", dy)
    _check.same_shape("y", y, "dy", dy)
    f32("y", y)
    n, c, s = ncs(dy)
    dx = empty(dy, dy.shape)
    run("softmax_backward", loop(n * s), n, c, s, dy, y, dx)
    return dx
