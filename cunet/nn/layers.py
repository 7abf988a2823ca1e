"""Layers: forward keeps what backward needs; backward adds into the parameter
gradients and returns dL/dx. No autograd: each layer's backward is written out.

A layer declares its parameters (`specs`); the model that owns it allocates one flat
parameter buffer and one flat gradient buffer and hands the layer views into them
(`bind`), so zeroing gradients is one fill and an optimizer step one kernel.

Precision picks the kernels: float32 arrays (NumPy or CuPy) run cunet.ops, float64
NumPy arrays run cunet.reference (the oracle: used to check whole models).
"""
import numpy as np

from cunet import _check, ops, reference


def F(a):
    """The op implementation for array a: the kernels, or the float64 oracle."""
    return reference if a.dtype == np.float64 else ops


class Spec:
    """One parameter or buffer of a layer.

    decay: a weight that L1/L2 penalties apply to (conv kernels), not a bias or BN affine.
    buffer: state that is saved but not trained (BN running statistics)."""

    def __init__(self, name, shape, init, decay=False, buffer=False, fan=(1, 1)):
        self.name, self.shape, self.init, self.decay, self.buffer, self.fan = name, tuple(shape), init, decay, buffer, fan


def initial_value(spec, rng):
    """float64 initial value of a spec: He/Glorot from its fans, or a constant."""
    fan_in, fan_out = spec.fan
    if spec.init == "zeros":
        return np.zeros(spec.shape)
    if spec.init == "ones":
        return np.ones(spec.shape)
    if spec.init == "he_normal":
        return rng.standard_normal(spec.shape) * np.sqrt(2.0 / fan_in)
    if spec.init == "he_uniform":
        return rng.uniform(-1, 1, spec.shape) * np.sqrt(6.0 / fan_in)
    if spec.init == "glorot_normal":
        return rng.standard_normal(spec.shape) * np.sqrt(2.0 / (fan_in + fan_out))
    if spec.init == "glorot_uniform":
        return rng.uniform(-1, 1, spec.shape) * np.sqrt(6.0 / (fan_in + fan_out))
    raise ValueError(f"init: expected one of {', '.join(INITS)}, got {spec.init!r}")


INITS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform")


class Layer:
    training = True

    def specs(self):
        return []

    def bind(self, params, grads):
        """params/grads: name -> array view (grads has no entry for buffers)."""
        self.p, self.g = params, grads

    def backward_into(self, dy, out):
        """out += dL/dx (in place; out returned): the input's gradient joined to one another
        path already brought (a UNet skip). Layers that can write it in place override this."""
        out += self.backward(dy)
        return out


class Conv(Layer):
    """k^d convolution, PyTorch layout: weight (co, ci, *k), bias (co,).

    precision: the GEMM operands of the CuPy kernels ("fp32", "tf32", "bf16"; see
    cunet.ops.conv_forward); weights, gradients and outputs stay float32 whatever it is.
    forward(x, relu=True) is conv + ReLU in one conv_forward call (the fused epilogue);
    backward then applies the ReLU's backward first. forward(x, x2=skip) convolves the
    channel concatenation [x, skip] without building it (the kernels read both in place);
    backward then returns (dx, dskip)."""
    precision = "fp32"

    def __init__(self, ci, co, k=3, stride=1, padding=1, dims=2, bias=True, init="he_normal"):
        self.ci, self.co, self.k, self.stride, self.padding, self.dims = ci, co, k, stride, padding, dims
        self.bias, self.init = bias, init

    def specs(self):
        taps = self.k ** self.dims
        out = [Spec("weight", (self.co, self.ci) + (self.k,) * self.dims, self.init, decay=True,
                    fan=(self.ci * taps, self.co * taps))]
        return out + ([Spec("bias", (self.co,), "zeros")] if self.bias else [])

    def forward(self, x, relu=False, x2=None):
        self.x, self.x2 = x, x2
        y = F(x).conv_forward(x, self.p["weight"], self.p.get("bias"), self.stride, self.padding, relu=relu,
                              precision=self.precision, x2=x2)
        self.y = y if relu else None   # the ReLU's backward needs its output
        return y

    def backward(self, dy, input_grad=True, relu_input=False, relu_done=False):
        """-> dL/dx ((dx, dx2) with x2); input_grad=False: None, the data gradient skipped.
        relu_input: x is the previous layer's fused ReLU output; dx comes back through that
        ReLU (whose layer is then called with relu_done: dy is already its input's gradient)."""
        if self.y is not None and not relu_done:
            dy = F(dy).relu_backward(dy, self.y)
        *dxs, dw, db = F(dy).conv_backward(dy, self.x, self.p["weight"], self.stride, self.padding,
                                           precision=self.precision, x2=self.x2, input_grad=input_grad,
                                           relu_input=relu_input)
        self.g["weight"] += dw
        if self.bias:
            self.g["bias"] += db
        self.x = self.x2 = self.y = None
        if not input_grad:
            return None
        return dxs[0] if len(dxs) == 1 else tuple(dxs)


class ConvTranspose(Layer):
    """Transposed convolution, PyTorch layout: weight (ci, co, *k), bias (co,); precision
    as for Conv."""
    precision = "fp32"

    def __init__(self, ci, co, k=2, stride=2, dims=2, init="he_normal"):
        self.ci, self.co, self.k, self.stride, self.dims, self.init = ci, co, k, stride, dims, init

    def specs(self):
        taps = self.k ** self.dims
        # each output voxel receives ci * taps / stride^d inputs
        fan_in = max(1, self.ci * taps // self.stride ** self.dims)
        return [Spec("weight", (self.ci, self.co) + (self.k,) * self.dims, self.init, decay=True,
                     fan=(fan_in, self.co * taps)),
                Spec("bias", (self.co,), "zeros")]

    def forward(self, x):
        self.x = x
        return F(x).conv_transpose_forward(x, self.p["weight"], self.p["bias"], self.stride,
                                           precision=self.precision)

    def backward(self, dy):
        dx, dw, db = F(dy).conv_transpose_backward(dy, self.x, self.p["weight"], self.stride,
                                                   precision=self.precision)
        self.g["weight"] += dw
        self.g["bias"] += db
        self.x = None
        return dx


class MaxPool(Layer):
    def __init__(self, k=2):
        self.k = k

    def forward(self, x):
        y, self.argmax = F(x).maxpool_forward(x, self.k)
        self.shape = x.shape
        return y

    def backward(self, dy):
        return self.backward_into(dy, None)

    def backward_into(self, dy, out):
        """out (None: a new array) gets the pooled gradient added by the kernel itself."""
        with _check.value_checks(False):   # argmax is forward's own: its range check (a pass over it) skipped
            dx = F(dy).maxpool_backward(dy, self.argmax, self.shape, out=out)
        self.argmax = None
        return dx


class Upsample(Layer):
    def __init__(self, scale=2, mode="nearest"):
        self.scale, self.mode = scale, mode

    def forward(self, x):
        self.shape = x.shape
        return F(x).upsample_forward(x, self.scale, self.mode)

    def backward(self, dy):
        return F(dy).upsample_backward(dy, self.shape, self.scale, self.mode)


class Concat(Layer):
    """[a, b, ...] -> channel concatenation; backward returns one gradient per input."""

    def forward(self, *xs):
        self.channels = [x.shape[1] for x in xs]
        return F(xs[0]).concat_forward(list(xs))

    def backward(self, dy):
        return F(dy).concat_backward(dy, self.channels)


class ReLU(Layer):
    def forward(self, x):
        self.y = F(x).relu_forward(x)
        return self.y

    def backward(self, dy):
        dx = F(dy).relu_backward(dy, self.y)
        self.y = None
        return dx


class LeakyReLU(Layer):
    def __init__(self, slope=0.01):
        self.slope = slope

    def forward(self, x):
        self.x = x
        return F(x).leaky_relu_forward(x, self.slope)

    def backward(self, dy):
        dx = F(dy).leaky_relu_backward(dy, self.x, self.slope)
        self.x = None
        return dx


class BatchNorm(Layer):
    """Batch norm over channels: affine weight/bias, running statistics as buffers."""

    def __init__(self, c, momentum=0.1, eps=1e-5):
        self.c, self.momentum, self.eps = c, momentum, eps

    def specs(self):
        return [Spec("weight", (self.c,), "ones"), Spec("bias", (self.c,), "zeros"),
                Spec("running_mean", (self.c,), "zeros", buffer=True),
                Spec("running_var", (self.c,), "ones", buffer=True)]

    def forward(self, x):
        p = self.p
        y, self.mean, self.invstd = F(x).batchnorm_forward(x, p["weight"], p["bias"], p["running_mean"],
                                                            p["running_var"], self.training, self.momentum, self.eps)
        self.x = x
        return y

    def backward(self, dy):
        dx, dg, db = F(dy).batchnorm_backward(dy, self.x, self.p["weight"], self.mean, self.invstd, self.training)
        self.g["weight"] += dg
        self.g["bias"] += db
        self.x = None
        return dx


class Dropout(Layer):
    """Inverted dropout; the mask comes from (seed, step): `reseed` picks the step, so a
    training run is reproducible and a fixed step gives a fixed mask.

    seed_buf: None, or a (2,) int64 array [seed_lo, seed_hi] on the model's device that
    the owning model keeps equal to seed_halves(self.seed); the kernels then read the seed
    from it (a captured CUDA graph replays its launches with frozen arguments, but rereads
    memory). The float64 reference path takes the int seed."""
    seed_buf = None

    def __init__(self, p, seed):
        self.prob, self.base, self.seed = p, seed, seed

    def reseed(self, step):
        self.seed = (self.base * 0x9E3779B1 + step) % 2 ** 63

    def _mask(self, a, which):
        f = F(a)
        if self.seed_buf is not None and f is ops:
            return getattr(f, f"dropout_{which}_seeded")(a, self.prob, self.seed_buf)
        return getattr(f, f"dropout_{which}")(a, self.prob, self.seed)

    def forward(self, x):
        if not self.training or self.prob == 0:
            return x
        return self._mask(x, "forward")

    def backward(self, dy):
        if not self.training or self.prob == 0:
            return dy
        return self._mask(dy, "backward")


class Sequential(Layer):
    """Named layers applied in order; backward in reverse. With fuse (the default) a Conv
    directly followed by a ReLU runs as one conv_forward(..., relu=True) and the ReLU
    layer is skipped (it holds no parameters, so names and state are unchanged)."""
    fuse = True

    def __init__(self, *named):
        self.layers = list(named)

    def _steps(self):
        """[(layer, fused)]: fused marks a Conv that applies the next layer's ReLU itself."""
        out, i, layers = [], 0, [layer for _, layer in self.layers]
        while i < len(layers):
            fused = self.fuse and isinstance(layers[i], Conv) and i + 1 < len(layers) and type(layers[i + 1]) is ReLU
            out.append((layers[i], fused))
            i += 2 if fused else 1
        return out

    def forward(self, x, x2=None):
        """x2: channels concatenated after x's, read in place by the first layer (a Conv);
        backward then returns (dx, dx2)."""
        self._plan = self._steps()   # backward follows the same grouping even if fuse changes
        if x2 is not None and not isinstance(self._plan[0][0], Conv):
            raise TypeError(f"x2: only a block that starts with a Conv reads a second input, this one starts "
                            f"with {type(self._plan[0][0]).__name__}")
        for i, (layer, fused) in enumerate(self._plan):
            kw = dict(relu=True) if fused else {}
            x = layer.forward(x, x2=x2, **kw) if i == 0 and x2 is not None else layer.forward(x, **kw)
        return x

    @property
    def relu_out(self):
        """The block's output is a fused Conv+ReLU's (after forward): a Conv reading it may
        return the gradient through that ReLU, and backward(relu_done=True) then skips it."""
        return bool(self._plan) and self._plan[-1][1]

    def backward(self, dy, input_grad=True, relu_done=False):
        """input_grad=False: a first Conv skips its data gradient (the return value is then
        None; other first layers still compute theirs). A Conv reading a fused Conv+ReLU's
        output returns the gradient through that ReLU (conv_backward(relu_input=True)), and
        the fused Conv skips its relu_backward; relu_done: dy is already through the last one."""
        done = relu_done   # dy is already the gradient of the next layer's ReLU input
        for i in reversed(range(len(self._plan))):
            layer = self._plan[i][0]
            kw = {"relu_done": True} if done else {}
            done = isinstance(layer, Conv) and i > 0 and self._plan[i - 1][1]
            if done:
                kw["relu_input"] = True
            if i == 0 and not input_grad and isinstance(layer, Conv):
                kw["input_grad"] = False
            dy = layer.backward(dy, **kw)
        return dy
