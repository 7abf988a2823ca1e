"""ONNX export of a cunet UNet: the eval-mode forward pass as an ONNX graph, written with
the `onnx` package's graph API (no framework), for ONNX Runtime, TensorRT, OpenVINO...

    to_onnx(model, path, opset=17)           a cunet.nn.UNet -> path (returns the ModelProto)
    export_file(model_path, onnx_path)       a checkpoint (cunet.load reads it) -> path

    input   image   (N, C, *S) float32, S = (H, W) or (D, H, W); N and S dynamic, each
                    spatial size a multiple of 2**depth (metadata cunet.spatial_multiple)
    output  logits  (N, K, *S) float32 (no sigmoid/softmax, as model.forward)

Layer by layer (PyTorch semantics on both sides, so the weights go in unchanged):
    Conv            Conv, pads = padding, strides = stride; weight (co, ci, *k)
    ConvTranspose   ConvTranspose, weight (ci, co, *k) (ONNX's layout is PyTorch's)
    MaxPool(k)      MaxPool, kernel = strides = k, no padding
    Upsample        Resize by scales (1, 1, 2, ...): "nearest" = asymmetric + floor (input
                    voxel floor(o / 2): np.repeat, cunet.reference.upsample_forward),
                    "linear" = half_pixel (align_corners=False; the clamp at the border is
                    the same; pytorch_half_pixel differs only for outputs of size 1)
    Concat          Concat on axis 1, [upsampled, skip] as the decoder reads them
    ReLU/LeakyReLU  Relu / LeakyRelu
    Dropout         nothing (the identity at inference)
    BatchNorm       folded into the conv before it (every BN of a cunet UNet follows a
                    conv): w' = w * g, b' = (b - running_mean) * g + beta with
                    g = gamma / sqrt(running_var + eps), computed in float64, then float32.
                    Why fold rather than emit BatchNormalization: the file is for inference
                    only, and a folded graph is the one every runtime runs without needing
                    its own Conv+BN fusion pass (ONNX Runtime does fuse, others may not), with
                    one rounding instead of float32 fusion at load time; the running
                    statistics stay in the checkpoint, which remains the file to train from.

Opset: 17 by default (ONNX Runtime >= 1.12 and TensorRT >= 8.6 read it; nothing here
needs a newer one); 13 up to the installed onnx's newest are accepted (Resize's roi input
is optional from 13). The IR version is the oldest that carries the opset (8 for 17), so
runtimes older than the onnx package that wrote the file still load it.

Metadata (metadata_props, each value a JSON string): cunet.config (the UNet's config),
cunet.<key> for each key of the checkpoint's extra dict (normalization, classes, patch,
axis, task, ...), cunet.spatial_multiple (2**depth) and cunet.version. The graph is the
network only: intensity normalisation, sliding windows, TTA and argmax/sigmoid are the
caller's (cunet.data, cunet.infer), with the metadata saying how.

Not exported: anything that is not a cunet.nn.UNet, or a UNet whose layers were swapped
for kinds not listed above (ValueError naming the layer); models over protobuf's 2 GiB
(no external-data files). precision="tf32"/"bf16" (GPU GEMM operand rounding) exports the
float32 master weights; the config in the metadata still says which precision it trained in.
"""
import json

import numpy as np

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:
    raise ImportError("cunet export needs the onnx package: pip install 'cunet[export]'") from None

from cunet import __version__, _check
from cunet._files import atomic_write
from cunet.nn.layers import BatchNorm, Conv, ConvTranspose, Dropout, LeakyReLU, MaxPool, ReLU, Sequential, Upsample
from cunet.nn.model import _host
from cunet.nn.unet import UNet

MIN_OPSET = 13
DEFAULT_OPSET = 17
_MAX_BYTES = 2 ** 31 - 2 ** 24   # protobuf's 2 GiB message limit, less room for the graph itself


class _Graph:
    """Nodes and float32 initializers being collected; names follow the state_dict."""

    def __init__(self, state, dims):
        self.state, self.dims = state, dims   # state_dict name -> float32 host array
        self.nodes, self.inits = [], []

    def init(self, name, value):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def node(self, op, inputs, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, layer, name, x, bn=None, bn_name=None):
        """Conv (+ a BatchNorm folded in); weight (co, ci, *k), bias (co,)."""
        w = self.state[f"{name}.weight"].astype(np.float64)
        b = self.state[f"{name}.bias"].astype(np.float64) if layer.bias else None
        if bn is not None:
            s = {k: self.state[f"{bn_name}.{k}"].astype(np.float64) for k in ("weight", "bias", "running_mean",
                                                                                "running_var")}
            g = s["weight"] / np.sqrt(s["running_var"] + bn.eps)   # (co,)
            w = w * g.reshape((-1,) + (1,) * (w.ndim - 1))
            b = (0.0 if b is None else b) - s["running_mean"]
            b = b * g + s["bias"]
        inputs = [x, self.init(f"{name}.weight", w)] + ([self.init(f"{name}.bias", b)] if b is not None else [])
        d = layer.dims
        return self.node("Conv", inputs, name, kernel_shape=[layer.k] * d, strides=[layer.stride] * d,
                         pads=[layer.padding] * (2 * d))

    def layer(self, layer, name, x):
        """One layer that is not a Conv+BN pair -> output name."""
        if isinstance(layer, Conv):
            return self.conv(layer, name, x)
        if isinstance(layer, ConvTranspose):
            inputs = [x, self.init(f"{name}.weight", self.state[f"{name}.weight"]),
                      self.init(f"{name}.bias", self.state[f"{name}.bias"])]
            d = layer.dims
            return self.node("ConvTranspose", inputs, name, kernel_shape=[layer.k] * d, strides=[layer.stride] * d)
        if isinstance(layer, MaxPool):
            d = self.dims
            return self.node("MaxPool", [x], name, kernel_shape=[layer.k] * d, strides=[layer.k] * d)
        if isinstance(layer, Upsample):
            scale = _check.tuple_arg(f"{name}.scale", layer.scale, self.dims, minimum=1)
            scales = self.init(f"{name}.scales", [1.0, 1.0] + [float(s) for s in scale])
            if layer.mode == "nearest":
                attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            elif layer.mode == "linear":
                attrs = dict(mode="linear", coordinate_transformation_mode="half_pixel")
            else:
                raise ValueError(f"model: layer {name!r} upsamples with mode {layer.mode!r}; cunet.export writes "
                                 f"'nearest' and 'linear'")
            return self.node("Resize", [x, "", scales], name, **attrs)
        if type(layer) is ReLU:
            return self.node("Relu", [x], name)
        if isinstance(layer, LeakyReLU):
            return self.node("LeakyRelu", [x], name, alpha=float(layer.slope))
        if isinstance(layer, Dropout):
            return x
        raise ValueError(f"model: layer {name!r} is a {type(layer).__name__}, which cunet.export cannot write "
                         f"(it writes Conv, BatchNorm after a Conv, ConvTranspose, MaxPool, Upsample, ReLU, "
                         f"LeakyReLU, Dropout)")

    def run(self, block, name, x):
        """A Sequential (Conv followed by BatchNorm: one folded Conv) or a single layer;
        name: its prefix in the state_dict (enc0, down0, up0, ...; see cunet.nn.unet)."""
        if not isinstance(block, Sequential):
            return self.layer(block, name, x)
        subs = [(f"{name}.{sub_name}", sub) for sub_name, sub in block.layers]
        i = 0
        while i < len(subs):
            sub_name, sub = subs[i]
            nxt = subs[i + 1] if i + 1 < len(subs) else (None, None)
            if isinstance(sub, BatchNorm):
                raise ValueError(f"model: layer {sub_name!r} is a BatchNorm that does not follow a Conv; cunet.export "
                                 f"folds batch norm into the conv before it")
            if isinstance(sub, Conv) and isinstance(nxt[1], BatchNorm):
                x = self.conv(sub, sub_name, x, nxt[1], nxt[0])
                i += 2
            else:
                x = self.layer(sub, sub_name, x)
                i += 1
        return x


def _unet_graph(model, state):
    """UNet.forward as nodes: encoder (skips kept), bottom, decoder ([up, skip] concat), head."""
    g = _Graph(state, model.dims)
    h, skips = "image", []
    for i, (enc, down) in enumerate(zip(model.enc, model.down)):
        h = g.run(enc, f"enc{i}", h)
        skips.append(h)
        h = g.run(down, f"down{i}", h)
    h = g.run(model.bottom, "bottom", h)
    for i, (up, dec, skip) in enumerate(zip(model.up, model.dec, reversed(skips))):
        h = g.node("Concat", [g.run(up, f"up{i}", h), skip], f"cat{i}", axis=1)
        h = g.run(dec, f"dec{i}", h)
    g.run(model.head, "head", h)
    g.nodes[-1].output[0] = "logits"   # the head's output is the graph's (every step's output is the last node's)
    return g


def _opset(opset):
    latest = onnx.defs.onnx_opset_version()
    _check.integer("opset", opset)
    if not MIN_OPSET <= opset <= latest:
        raise ValueError(f"opset: expected an int in [{MIN_OPSET}, {latest}] (the installed onnx {onnx.__version__} "
                         f"goes up to {latest}; Resize needs {MIN_OPSET}+), got {opset}")
    return opset


def _metadata(model):
    """key -> JSON string: the checkpoint's extra dict (cunet.load sets model.extra), then ours."""
    props = {f"cunet.{k}": v for k, v in (getattr(model, "extra", None) or {}).items()}
    props.update({"cunet.config": model.config, "cunet.spatial_multiple": 2 ** model.depth,
                  "cunet.version": __version__})
    out = {}
    for key, value in props.items():
        try:
            out[key] = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"model.extra[{key[6:]!r}]: expected a JSON-able value (finite numbers), got "
                            f"{value!r} ({e})") from None
    return out


def to_onnx(model, path, opset=DEFAULT_OPSET):
    """Write `model` (a cunet.nn.UNet, any device, any mode: the graph is its eval forward)
    to `path` as ONNX; returns the onnx.ModelProto. ValueError for what cannot be written."""
    if not isinstance(model, UNet):
        raise ValueError(f"model: expected a cunet.nn.UNet, got {type(model).__name__}")
    opset = _opset(opset)
    state = {k: np.asarray(_host(v), dtype=np.float32) for k, v in model.state_dict().items()}   # PyTorch layouts
    nbytes = sum(a.nbytes for a in state.values())
    if nbytes > _MAX_BYTES:
        raise ValueError(f"model: {nbytes / 2 ** 30:.2f} GiB of weights; cunet.export writes single-file ONNX "
                         f"models, which protobuf caps at 2 GiB")
    g = _unet_graph(model, state)
    spatial = ["D", "H", "W"][-model.dims:]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", model.in_channels] + spatial)
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", model.config["out_channels"]] + spatial)
    graph = helper.make_graph(g.nodes, "cunet_unet", [image], [logits], initializer=g.inits)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="cunet", producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets),
                              doc_string=f"cunet {model.dims}D UNet, eval-mode forward: image -> logits")
    helper.set_model_props(proto, _metadata(model))
    onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, lambda tmp: onnx.save_model(proto, tmp), suffix=".tmp.onnx")
    return proto


def export_file(model_path, onnx_path, opset=DEFAULT_OPSET):
    """A checkpoint written by cunet.train (what cunet.load reads) -> an ONNX file; returns
    the onnx.ModelProto. ValueError naming the file if it is not a cunet model."""
    from cunet.train import load
    return to_onnx(load(model_path), onnx_path, opset)
