"""cunet.nn: the UNet's hand-written backward against finite differences (float64, on
the reference path), the host kernels against the reference path, PyTorch weight
compatibility, and input checks."""
import numpy as np
import pytest

from conftest import to_numpy
from cunet.nn import UNet

rng = np.random.default_rng(5)

CONFIGS = [
    dict(dims=2, up="transpose", down="maxpool"),
    dict(dims=2, up="nearest", down="strided", norm="batch"),
    dict(dims=2, up="linear", down="maxpool", dropout=0.3),
    dict(dims=2, up="transpose", down="strided", norm="batch", dropout=0.2),
    dict(dims=3, up="transpose", down="maxpool", norm="batch"),
    dict(dims=3, up="linear", down="strided", dropout=0.25),
]


def tiny(cfg, out_channels=2):
    return UNet(in_channels=2, out_channels=out_channels, base=2, depth=2, seed=3, **cfg)


def inputs(cfg, n=2, size=8):
    return rng.standard_normal((n, 2) + (size,) * cfg["dims"])


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_unet_backward_matches_finite_differences(cfg):
    model = tiny(cfg).to("reference")
    # nonzero biases: with zero biases a dead receptive field puts a pre-activation exactly
    # on ReLU's kink, where finite differences are meaningless
    model.params += 0.1 * rng.standard_normal(model.params.shape)
    model.reseed(11)   # a fixed dropout mask for every forward below
    x = inputs(cfg)   # 8^d: batch norm at the bottom still sees 2 * 2^d values per channel
    r = rng.standard_normal(model.forward(x).shape)

    def loss(xx):
        return float(np.sum(model.forward(xx) * r))

    model.zero_grad()
    model.forward(x)
    dx = model.backward(r)
    grads = model.grads.copy()
    h = 1e-6
    u = rng.standard_normal(x.shape)
    fd = (loss(x + h * u) - loss(x - h * u)) / (2 * h)
    assert np.isclose(np.sum(dx * u), fd, rtol=1e-6, atol=1e-9)
    for _ in range(2):   # two random directions in parameter space
        v = rng.standard_normal(model.params.shape)
        p0 = model.params.copy()
        model.params[...] = p0 + h * v
        lp = loss(x)
        model.params[...] = p0 - h * v
        lm = loss(x)
        model.params[...] = p0
        # a conv bias feeding batch norm has gradient exactly 0; its FD is rounding noise ~1e-6
        assert np.isclose(np.sum(grads * v), (lp - lm) / (2 * h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_host_kernels_match_reference_path(cfg):
    """The same model, weights and dropout masks: float32 kernels vs the float64 oracle."""
    a, b = tiny(cfg), tiny(cfg).to("reference")
    a.reseed(4)
    b.reseed(4)
    x = inputs(cfg, n=3)
    ya, yb = a.forward(x.astype(np.float32)), b.forward(x)
    np.testing.assert_allclose(ya, yb, rtol=1e-4, atol=1e-4)
    r = rng.standard_normal(ya.shape)
    dxa, dxb = a.backward(r.astype(np.float32)), b.backward(r)
    np.testing.assert_allclose(dxa, dxb, rtol=1e-3, atol=1e-4)
    scale = np.abs(b.grads).max()
    np.testing.assert_allclose(a.grads, b.grads, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(a.buffers, b.buffers, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", "reference"])
@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=lambda c: "-".join(str(v) for v in c.values()))
def test_backward_without_input_grad(cfg, device):
    """backward(input_grad=False) (what training calls): None for dL/dx, the same parameter
    gradients bit for bit (the first conv's data gradient is skipped, nothing else)."""
    x = inputs(cfg, n=2)
    grads = []
    for input_grad in (True, False):
        m = tiny(cfg).to(device)
        m.reseed(3)
        y = m.forward(x.astype(m.params.dtype))
        dx = m.backward(np.cos(y), input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append(m.grads.copy())
    np.testing.assert_array_equal(grads[0], grads[1])


def test_channels_state_dict_order_and_sizes():
    m = UNet(dims=2, in_channels=1, out_channels=3, base=16, depth=4, norm="batch")
    sd = m.state_dict()
    names = list(sd)
    assert names[:6] == ["enc0.conv1.weight", "enc0.conv1.bias", "enc0.bn1.weight", "enc0.bn1.bias",
                         "enc0.bn1.running_mean", "enc0.bn1.running_var"]
    assert names[-2:] == ["head.weight", "head.bias"]
    assert sd["enc0.conv1.weight"].shape == (16, 1, 3, 3)
    assert sd["enc3.conv2.weight"].shape == (128, 128, 3, 3)
    assert sd["bottom.conv1.weight"].shape == (256, 128, 3, 3)
    assert sd["up0.weight"].shape == (256, 128, 2, 2)           # transposed conv (Ci, Co, k, k)
    assert sd["dec0.conv1.weight"].shape == (128, 256, 3, 3)    # [upsampled, skip] concatenated
    assert sd["head.weight"].shape == (3, 16, 1, 1)
    trainable = sum(v.size for k, v in sd.items() if "running" not in k)
    assert trainable == m.num_parameters()
    m.load_state_dict({k: v * 2 for k, v in sd.items()})
    np.testing.assert_array_equal(m.state_dict()["head.weight"], 2 * sd["head.weight"])


def test_init_is_seeded_and_he_scaled():
    a, b, c = (UNet(base=8, depth=2, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    w = UNet(base=32, depth=1, seed=0).state_dict()["enc0.conv2.weight"]
    assert abs(w.std() - np.sqrt(2 / (32 * 9))) < 0.05 * np.sqrt(2 / (32 * 9))
    g = UNet(base=32, depth=1, seed=0, init="glorot_uniform").state_dict()["enc0.conv2.weight"]
    assert abs(np.abs(g).max() - np.sqrt(6 / (2 * 32 * 9))) < 0.01


def torch_unet(cfg, in_ch, out_ch, base, depth):
    """The same UNet written with torch.nn, modules in forward order."""
    import torch   # a test dependency (the test extra), used only for cross-checks
    nn = torch.nn
    dims = cfg["dims"]
    Conv, ConvT = (nn.Conv2d, nn.ConvTranspose2d) if dims == 2 else (nn.Conv3d, nn.ConvTranspose3d)
    BN, Pool = (nn.BatchNorm2d, nn.MaxPool2d) if dims == 2 else (nn.BatchNorm3d, nn.MaxPool3d)
    bn = cfg.get("norm") == "batch"

    def block(ci, co):
        layers = [Conv(ci, co, 3, padding=1)] + ([BN(co)] if bn else []) + [nn.ReLU()]
        layers += [Conv(co, co, 3, padding=1)] + ([BN(co)] if bn else []) + [nn.ReLU()]
        return nn.Sequential(*layers)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.ups, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            ci, c = in_ch, base
            for _ in range(depth):
                self.enc.append(block(ci, c))
                ci, c = c, 2 * c
            self.bottom = block(ci, c)
            for _ in range(depth):
                if cfg["up"] == "transpose":
                    self.ups.append(ConvT(c, c // 2, 2, stride=2))
                else:
                    mode = "nearest" if cfg["up"] == "nearest" else ("bilinear" if dims == 2 else "trilinear")
                    up = nn.Upsample(scale_factor=2, mode=mode, **({} if mode == "nearest" else
                                                                    {"align_corners": False}))
                    self.ups.append(nn.Sequential(up, Conv(c, c // 2, 3, padding=1)))
                c //= 2
                self.dec.append(block(2 * c, c))
            self.head = Conv(base, out_ch, 1)
            self.pool = Pool(2)

        def forward(self, x):
            skips = []
            for e in self.enc:
                x = e(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottom(x)
            for up, d, s in zip(self.ups, self.dec, reversed(skips)):
                x = d(torch.cat([up(x), s], 1))
            return self.head(x)

    def ordered_state(net):
        """PyTorch's state_dict, reordered to forward order (ModuleLists list all encoders first)."""
        sd = {k: v for k, v in net.state_dict().items() if "num_batches" not in k}
        order = []
        for i in range(depth):
            order += [k for k in sd if k.startswith(f"enc.{i}.")]
        order += [k for k in sd if k.startswith("bottom.")]
        for i in range(depth):
            order += [k for k in sd if k.startswith(f"ups.{i}.")] + [k for k in sd if k.startswith(f"dec.{i}.")]
        order += [k for k in sd if k.startswith("head.")]
        return [(k, sd[k]) for k in order]

    return torch, Net(), ordered_state


@pytest.mark.parametrize("cfg", [dict(dims=2, up="transpose", norm="batch"), dict(dims=2, up="linear"),
                                 dict(dims=3, up="nearest", norm="batch")], ids=str)
def test_pytorch_unet_of_the_same_shape_maps_one_to_one(cfg):
    """Load our state_dict into the equivalent torch.nn UNet by position: same logits."""
    ours = UNet(in_channels=1, out_channels=3, base=4, depth=2, seed=1, **cfg)
    torch, net, ordered_state = torch_unet(cfg, 1, 3, 4, 2)
    theirs = ordered_state(net)
    sd = ours.state_dict()
    assert [tuple(v.shape) for v in sd.values()] == [tuple(v.shape) for _, v in theirs]
    # make the running statistics non-trivial so eval mode exercises them
    sd = {k: (v + 0.5 if "running" in k else v) for k, v in sd.items()}
    ours.load_state_dict(sd)
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for (k, _), v in zip(theirs, sd.values())},
                        strict=False)
    x = rng.standard_normal((2, 1) + (8,) * cfg["dims"]).astype(np.float32)
    net.eval()
    ours.eval()
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours.forward(x), want, rtol=1e-4, atol=1e-5)


def test_forward_input_errors_are_clear():
    m = UNet(dims=2, in_channels=1, out_channels=1, base=2, depth=3)
    with pytest.raises(ValueError, match=r"x: expected 1 channels, got 3"):
        m.forward(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"x: expected 4 dimensions .* got shape \(1, 16, 16\)"):
        m.forward(np.zeros((1, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"multiples of 2\*\*depth = 8; got \(20, 16\) \(20 is not: try 16 or 24"):
        m.forward(np.zeros((1, 1, 20, 16), np.float32))
    with pytest.raises(TypeError, match="x: expected float32 for a model on 'cpu', got float64"):
        m.forward(np.zeros((1, 1, 16, 16)))
    with pytest.raises(ValueError, match="up: expected one of 'transpose', 'nearest', 'linear', got 'bicubic'"):
        UNet(up="bicubic")
    with pytest.raises(ValueError, match="dims: expected one of 2, 3, got 4"):
        UNet(dims=4)
    with pytest.raises(ValueError, match=r"dropout: expected a value in \[0.0, 1.0\)"):
        UNet(dropout=1.0)
    with pytest.raises(ValueError, match=r"state\['head.weight'\]: expected shape \(1, 2, 1, 1\)"):
        sd = m.state_dict()
        sd["head.weight"] = np.zeros((1, 3, 1, 1), np.float32)
        m.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"state: missing \['head.bias'\]"):
        sd = m.state_dict()
        del sd["head.bias"]
        m.load_state_dict(sd)


@pytest.mark.gpu
def test_unet_on_cupy_matches_host():
    import cupy
    m = UNet(dims=2, in_channels=1, out_channels=2, base=4, depth=2, norm="batch", dropout=0.2)
    m.reseed(1)
    x = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    y = m.forward(x)
    dx = m.backward(np.ones_like(y))
    g = m.grads.copy()
    m.to("cuda")
    m.zero_grad()
    m.load_state_dict(UNet(dims=2, in_channels=1, out_channels=2, base=4, depth=2, norm="batch").state_dict())
    yc = m.forward(cupy.asarray(x))
    assert isinstance(yc, cupy.ndarray)
    np.testing.assert_allclose(to_numpy(yc), y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(m.backward(cupy.ones_like(yc))), dx, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(to_numpy(m.grads), g, rtol=1e-3, atol=1e-3 * float(np.abs(g).max()))


# ---- fused conv+ReLU and operand precision

@pytest.mark.parametrize("device", ["cpu", "reference"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_fused_conv_relu_matches_unfused(cfg, device):
    """fuse=True runs each conv+ReLU pair (no BN between) as one conv_forward(relu=True):
    the same logits, input gradient, parameter gradients and BN statistics, bit for bit."""
    runs = []
    x = inputs(cfg, n=2)
    for fuse in (True, False):
        m = tiny(cfg).to(device)
        m.params += 0.05   # positive and negative pre-activations both present
        m.fuse = fuse
        m.reseed(7)
        xx = x.astype(m.params.dtype)
        y = m.forward(xx)
        dx = m.backward(np.cos(y))
        runs.append((y, dx, m.grads.copy(), m.buffers.copy()))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    m = tiny(cfg)
    groups = [fused for _, fused in m.enc[0]._steps()]
    bn, drop = cfg.get("norm") == "batch", cfg.get("dropout", 0) > 0
    assert groups == ([False] * (6 + drop) if bn else [True] + [False] * drop + [True])
    assert sorted(m.state_dict()) == sorted(tiny(cfg).state_dict())   # names unchanged by fusion


def _enc0(x, m, precision):
    """enc0 (conv3x3+ReLU twice) of a model without BN through the reference ops."""
    from cunet import reference as R
    sd = m.state_dict()
    for conv in ("conv1", "conv2"):
        x = R.conv_forward(x, sd[f"enc0.{conv}.weight"], sd[f"enc0.{conv}.bias"], 1, 1, relu=True, precision=precision)
    return x


def test_precision_reaches_the_conv_ops():
    """On the reference device (which rounds operands like the tensor cores) a "bf16" model
    computes with bf16 operands: its first block and its transposed conv equal the reference
    ops called with precision="bf16", and its logits and gradients differ from fp32 ones by a
    bf16-sized amount. The host build computes fp32 whatever the precision (documented)."""
    from cunet import reference as R
    cfg = dict(dims=2, up="transpose", down="maxpool")
    m = tiny(cfg).to("reference")
    m.precision = "bf16"
    assert m.config["precision"] == "bf16" and {layer.precision for _, layer in m.leaves
                                                if hasattr(layer, "precision")} == {"bf16"}
    x = inputs(cfg)
    h = m.enc[0].forward(x)
    np.testing.assert_array_equal(h, _enc0(x, m, "bf16"))
    assert not np.array_equal(h, _enc0(x, m, "fp32"))
    u = rng.standard_normal((2, 8, 2, 2))
    sd = m.state_dict()
    np.testing.assert_array_equal(m.up[0].forward(u), R.conv_transpose_forward(u, sd["up0.weight"], sd["up0.bias"], 2,
                                                                               precision="bf16"))
    results = {}
    for p in ("bf16", "fp32"):
        m.set_precision(p)
        y = m.forward(x)
        m.zero_grad()
        m.backward(np.ones_like(y))
        results[p] = (y, m.grads.copy())
    for a, b in zip(results["bf16"], results["fp32"]):
        assert not np.array_equal(a, b)
        np.testing.assert_allclose(a, b, rtol=0, atol=0.05 * np.abs(b).max())
    host = [tiny(cfg, out_channels=2) for _ in range(2)]
    host[0].precision = "bf16"
    xf = x.astype(np.float32)
    np.testing.assert_array_equal(host[0].forward(xf), host[1].forward(xf))


def test_precision_config_and_errors():
    m = UNet(base=2, depth=1, precision="tf32")
    assert m.precision == "tf32" and m.config["precision"] == "tf32"
    assert UNet(**m.config).precision == "tf32"
    m.set_precision("fp32")   # the default is left out of the config (readers that predate the key)
    assert m.precision == "fp32" and "precision" not in m.config
    with pytest.raises(ValueError, match="precision: expected one of 'fp32', 'tf32', 'bf16', got 'fp16'"):
        UNet(base=2, depth=1, precision="fp16")
    with pytest.raises(ValueError, match="precision: expected one of 'fp32', 'tf32', 'bf16', got 'half'"):
        m.precision = "half"
    assert m.precision == "fp32"
    with pytest.raises(TypeError, match="fuse: expected True or False, got 1"):
        m.fuse = 1
