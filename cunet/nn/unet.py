"""The UNet: encoder levels of two 3x3 convs, downsampling, a bottom block, decoder
levels that upsample, concatenate [upsampled, skip] and apply two 3x3 convs, and a 1x1
conv head giving `out_channels` logits (sigmoid/softmax live in the losses).

    base=16, depth=4: 16-32-64-128 channels down, a 256-channel bottom, back up to 16.
    block:  conv3x3 -> [BN] -> ReLU -> [dropout] -> conv3x3 -> [BN] -> ReLU
            (without BN each conv+ReLU is one fused conv_forward(relu=True) call, and the
            decoder's first conv reads [up, skip] in place, no concatenated copy: `fuse`)
    down:   "maxpool" 2x2, or "strided": conv3x3 stride 2 (same channels) -> [BN] -> ReLU
    up:     "transpose": convT 2x2 stride 2 halving the channels, or "nearest"/"linear":
            x2 upsampling then conv3x3 halving the channels (no activation on either)

Parameter names (state_dict order = order of first use in forward, weight before bias,
PyTorch layouts): enc{i}.conv1.weight, enc{i}.conv1.bias, [enc{i}.bn1.weight, .bias,
.running_mean, .running_var], enc{i}.conv2..., [down{i}.conv...], bottom..., up{i}.weight
(transpose) or up{i}.conv.weight, dec{i}.conv1..., head.weight, head.bias.

precision="fp32" | "tf32" | "bf16": the conv kernels' GEMM operands on CuPy arrays, with
float32 master weights (cunet.nn.model); in `config` (checkpoints keep it) when not "fp32".
"""
import math

import numpy as np

from cunet import _check
from cunet.nn.layers import (INITS, BatchNorm, Concat, Conv, ConvTranspose, Dropout, MaxPool, ReLU, Sequential,
                             Upsample)
from cunet.nn.model import Model
from cunet.reference import PRECISIONS


def _block(ci, co, dims, norm, dropout, seed, init):
    layers = [("conv1", Conv(ci, co, 3, 1, 1, dims, init=init))]
    layers += [("bn1", BatchNorm(co))] if norm else []
    layers += [("relu1", ReLU())]
    layers += [("drop", Dropout(dropout, seed))] if dropout > 0 else []
    layers += [("conv2", Conv(co, co, 3, 1, 1, dims, init=init))]
    layers += [("bn2", BatchNorm(co))] if norm else []
    layers += [("relu2", ReLU())]
    return Sequential(*layers)


MAX_PARAMETERS = 2 ** 31   # parameters and buffers of one UNet (8 GiB of float32)
MAX_DEPTH = 16


def state_shapes(config):
    """name -> shape of every tensor a UNet of this config holds (state_dict order),
    computed without allocating: what a model file is checked against before loading.
    config: UNet's keyword arguments; errors as UNet's own."""
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict of UNet arguments, got {type(config).__name__}")
    args = dict(dims=2, in_channels=1, out_channels=1, base=16, depth=4, up="transpose", down="maxpool", norm=None,
                dropout=0.0, seed=0, init="he_normal", precision="fp32")
    unknown = sorted(map(str, set(config) - set(args)))
    if unknown:
        raise TypeError(f"config: unexpected key(s) {unknown}; a UNet takes {', '.join(args)}")
    args.update(config)
    UNet._check_config(**args)
    args.pop("precision")
    named = UNet.__new__(UNet)._define(**args)
    return {f"{prefix}.{spec.name}": spec.shape for prefix, layer in named for spec in layer.specs()}


class UNet(Model):
    def __init__(self, dims=2, in_channels=1, out_channels=1, base=16, depth=4, up="transpose", down="maxpool",
                 norm=None, dropout=0.0, seed=0, init="he_normal", precision="fp32"):
        self._check_config(dims, in_channels, out_channels, base, depth, up, down, norm, dropout, seed, init,
                           precision)
        named = self._define(dims, in_channels, out_channels, base, depth, up, down, norm, dropout, seed, init)
        self._build(named, seed)
        self._blocks = [b for b in self.enc + self.down + [self.bottom] + self.dec if isinstance(b, Sequential)]
        self.fuse = True
        self.set_precision(precision)

    @staticmethod
    def _check_config(dims, in_channels, out_channels, base, depth, up, down, norm, dropout, seed, init, precision):
        _check.choice("dims", dims, (2, 3))
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("base", base),
                        ("depth", depth)):
            _check.integer(name, v, lo=1)
        if depth > MAX_DEPTH:   # inputs are multiples of 2**depth: 65536 voxels a side at the limit
            raise ValueError(f"depth: expected at most {MAX_DEPTH} (inputs are multiples of 2**depth voxels per "
                             f"axis), got {depth}")
        _check.choice("up", up, ("transpose", "nearest", "linear"))
        _check.choice("down", down, ("maxpool", "strided"))
        _check.choice("norm", norm, (None, "batch"))
        _check.number("dropout", dropout, 0.0, 1.0, hi_open=True)
        _check.integer("seed", seed, lo=0)
        _check.choice("init", init, INITS)
        _check.choice("precision", precision, PRECISIONS)

    def _define(self, dims, in_channels, out_channels, base, depth, up, down, norm, dropout, seed, init):
        """The layers, named in forward order (no arrays yet: _build allocates them). A
        network over MAX_PARAMETERS is refused here, naming base and depth."""
        self.config = dict(dims=dims, in_channels=in_channels, out_channels=out_channels, base=base, depth=depth,
                           up=up, down=down, norm=norm, dropout=dropout, seed=seed, init=init)
        self.dims, self.depth, self.in_channels = dims, depth, in_channels
        bn = norm == "batch"
        named = []

        def add(prefix, layer):
            if isinstance(layer, Sequential):
                for name, sub in layer.layers:
                    named.append((f"{prefix}.{name}", sub))
            else:
                named.append((prefix, layer))
            return layer

        self.enc, self.down, self.up, self.cat, self.dec = [], [], [], [], []
        ci, c = in_channels, base
        for i in range(depth):
            self.enc.append(add(f"enc{i}", _block(ci, c, dims, bn, dropout, seed * 7919 + i, init)))
            if down == "maxpool":
                self.down.append(MaxPool(2))
            else:
                layers = [("conv", Conv(c, c, 3, 2, 1, dims, init=init))] + ([("bn", BatchNorm(c))] if bn else [])
                self.down.append(add(f"down{i}", Sequential(*layers, ("relu", ReLU()))))
            ci, c = c, 2 * c
        self.bottom = add("bottom", _block(ci, c, dims, bn, dropout, seed * 7919 + depth, init))
        for i in range(depth):
            if up == "transpose":
                self.up.append(add(f"up{i}", ConvTranspose(c, c // 2, 2, 2, dims, init=init)))
            else:
                self.up.append(add(f"up{i}", Sequential(("upsample", Upsample(2, up)),
                                                        ("conv", Conv(c, c // 2, 3, 1, 1, dims, init=init)))))
            self.cat.append(Concat())
            c //= 2
            self.dec.append(add(f"dec{i}", _block(2 * c, c, dims, bn, dropout, seed * 7919 + depth + 1 + i, init)))
        self.head = add("head", Conv(base, out_channels, 1, 1, 0, dims, init="glorot_uniform"))
        total = sum(math.prod(spec.shape) for _, layer in named for spec in layer.specs())
        if total > MAX_PARAMETERS:
            raise ValueError(f"base, depth: base={base}, depth={depth} (in_channels={in_channels}, "
                             f"out_channels={out_channels}) make a UNet of {total:.3g} parameters and buffers; "
                             f"expected at most 2**31 ({MAX_PARAMETERS * 4 / 2**30:.0f} GiB of float32)")
        return named

    def _check_input(self, x):
        _check.array("x", x)
        if x.ndim != self.dims + 2:
            raise ValueError(f"x: expected {self.dims + 2} dimensions (N, C, {'D, ' if self.dims == 3 else ''}H, W) "
                             f"for a {self.dims}D UNet, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        k = 2 ** self.depth
        bad = [s for s in x.shape[2:] if s % k]
        if bad:
            s = bad[0]
            near = sorted({max(k, s // k * k), (s // k + 1) * k})
            raise ValueError(f"x: spatial sizes must be multiples of 2**depth = {k}; got {tuple(x.shape[2:])} "
                             f"({s} is not: try {' or '.join(map(str, near))}, or pad/crop the input)")
        want = np.float64 if self.device == "reference" else np.float32
        if x.dtype != want:
            raise TypeError(f"x: expected {np.dtype(want)} for a model on {self.device!r}, got {x.dtype}")
        _check.same_device("x", x, "the model's parameters", self.params)

    def forward(self, x):
        """x (N, in_channels, *S) -> logits (N, out_channels, *S)."""
        self._check_input(x)
        skips, h = [], x
        for enc, down in zip(self.enc, self.down):
            h = enc.forward(h)
            skips.append(h)
            h = down.forward(h)
        h = self.bottom.forward(h)
        for up, cat, dec, skip in zip(self.up, self.cat, self.dec, reversed(skips)):
            if self.fuse:   # the decoder's first conv reads [up, skip] in place
                h = dec.forward(up.forward(h), x2=skip)
            else:
                h = dec.forward(cat.forward(up.forward(h), skip))
        self._fused = self.fuse   # backward follows forward's plan
        return self.head.forward(h)

    def backward(self, dlogits, input_grad=True):
        """Adds dL/dparams into the gradient buffer; returns dL/dx. input_grad=False skips
        the gradient of the input image (training needs none; the first conv's data
        gradient is then not computed) and returns None."""
        # the head (a conv) reading the last decoder's fused ReLU output returns dh through it
        through = isinstance(self.head, Conv) and self.dec[-1].relu_out
        dh = self.head.backward(dlogits, relu_input=True) if through else self.head.backward(dlogits)
        dskips = []   # filled shallowest level first: dskips[i] is the gradient of enc[i]'s output
        for k, (up, cat, dec) in enumerate(reversed(list(zip(self.up, self.cat, self.dec)))):
            kw = {"relu_done": True} if through and k == 0 else {}   # the last decoder: its ReLU is done
            dup, dskip = dec.backward(dh, **kw) if self._fused else cat.backward(dec.backward(dh, **kw))
            dskips.append(dskip)
            dh = up.backward(dup)
        dh = self.bottom.backward(dh)
        for i in reversed(range(len(self.enc))):   # the skip's gradient joins the pooled path
            # the skip's gradient (this pass's own array: a data gradient) gets the down path's added in place
            dh = self.down[i].backward_into(dh, dskips[i])
            dh = self.enc[i].backward(dh, input_grad=input_grad) if i == 0 else self.enc[i].backward(dh)
        return dh if input_grad else None

    @property
    def fuse(self):
        """Conv+ReLU pairs run as one conv_forward(relu=True), and each decoder's first conv
        reads [upsampled, skip] in place instead of a concatenated copy (default True; same
        results up to float32 summation order)."""
        return self._fuse

    @fuse.setter
    def fuse(self, on):
        _check.flag("fuse", on)
        self._fuse = on
        for block in self._blocks:
            block.fuse = on
