"""cunet.export: ONNX Runtime (CPU) on the exported graph gives the logits of cunet's eval
forward for every UNet option (2D/3D x up x down x norm, dropout in some), at two batch and
spatial sizes of one export; batch norm with running statistics far from (0, 1); the
metadata round-trips; `cunet export` on a checkpoint file; unsupported models and opsets
fail with a message naming them."""
import importlib
import itertools
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cunet
from cunet import cli, data, export
from cunet.nn.layers import Layer
from cunet.train import save_checkpoint

CASES = list(itertools.product((2, 3), ("transpose", "nearest", "linear"), ("maxpool", "strided"), (None, "batch")))
# two (N, C, *S) inputs per dims for the one export: other batch and other spatial sizes (multiples of 2**2)
SHAPES = {2: [(2, 2, 16, 20), (1, 2, 12, 8)], 3: [(2, 2, 8, 12, 16), (1, 2, 12, 4, 8)]}


def small_unet(dims, up="transpose", down="maxpool", norm=None, dropout=0.0, seed=0):
    """A base-4, depth-2 UNet (2 in, 3 out) with every parameter and BN statistic moved
    off its initial value: non-zero biases, gammas and betas, running_mean ~ N(0, 0.5),
    running_var in [1e-3, 3] (small variances make eps matter)."""
    model = cunet.UNet(dims=dims, in_channels=2, out_channels=3, base=4, depth=2, up=up, down=down, norm=norm,
                       dropout=dropout, seed=seed)
    rng = np.random.default_rng(seed + 1)
    state = {}
    for name, a in model.state_dict().items():
        if name.endswith("running_var"):
            a = rng.uniform(1e-3, 3.0, a.shape)
        elif name.endswith("running_mean"):
            a = rng.normal(0, 0.5, a.shape)
        elif name.endswith("bias"):
            a = rng.normal(0, 0.2, a.shape)
        elif a.ndim == 1:   # BN gamma
            a = rng.uniform(0.5, 1.5, a.shape)
        state[name] = a
    return model.load_state_dict(state)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("dims,up,down,norm", CASES)
def test_onnx_runtime_matches_eval_forward(tmp_path, dims, up, down, norm):
    model = small_unet(dims, up, down, norm, dropout=0.25 if down == "strided" else 0.0)
    model.train()   # the export is the eval forward whatever the mode; the mode is left as it was
    export.to_onnx(model, tmp_path / "m.onnx")
    assert model.training
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    sess = session(tmp_path / "m.onnx")
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    spatial = ["D", "H", "W"][-dims:]
    assert (inp.name, inp.shape, out.name, out.shape) == ("image", ["N", 2] + spatial, "logits", ["N", 3] + spatial)
    model.eval()
    rng = np.random.default_rng(7)
    for shape in SHAPES[dims]:   # one export, two batch sizes and two spatial sizes
        x = rng.standard_normal(shape).astype(np.float32)
        want = model.forward(x)
        (got,) = sess.run(["logits"], {"image": x})
        assert got.shape == want.shape
        assert rel_err(got, want) <= 1e-5, (shape, rel_err(got, want))


def test_batchnorm_folded_with_running_statistics_after_training(tmp_path):
    """Running statistics from real training-mode passes (not set by hand) end up in the
    graph, which holds no BatchNormalization node: each BN is folded into its conv."""
    model = small_unet(2, norm="batch")
    rng = np.random.default_rng(3)
    for _ in range(3):
        model.forward((rng.standard_normal((4, 2, 16, 16)) * 3 + 1).astype(np.float32))   # train mode: stats move
    proto = export.to_onnx(model, tmp_path / "m.onnx")
    assert {n.op_type for n in proto.graph.node} == {"Conv", "Relu", "MaxPool", "ConvTranspose", "Concat"}
    model.eval()
    x = rng.standard_normal((2, 2, 16, 16)).astype(np.float32)
    assert rel_err(session(tmp_path / "m.onnx").run(None, {"image": x})[0], model.forward(x)) <= 1e-5


def checkpoint(path, dims=2, extra=None):
    model = small_unet(dims, norm="batch", up="linear")
    extra = extra if extra is not None else dict(normalization=data.default_normalization(), classes=3, axis=2,
                                                 patch=[16, 16], task="segmentation")
    save_checkpoint(path, model, extra=extra)
    return extra


def test_metadata_round_trips(tmp_path):
    extra = checkpoint(tmp_path / "m.safetensors")
    export.export_file(tmp_path / "m.safetensors", tmp_path / "m.onnx")
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    model = cunet.load(tmp_path / "m.safetensors")
    assert props["cunet.config"] == model.config
    for key, value in extra.items():
        assert props[f"cunet.{key}"] == value, key
    assert props["cunet.spatial_multiple"] == 4 and props["cunet.version"] == cunet.__version__
    # what a deployment reads: ONNX Runtime's view of the same strings
    meta = session(tmp_path / "m.onnx").get_modelmeta().custom_metadata_map
    assert json.loads(meta["cunet.normalization"]) == extra["normalization"]


def test_cli_export_then_onnx_runtime(tmp_path, capsys):
    checkpoint(tmp_path / "m.safetensors", dims=3, extra={})
    assert cli.main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m.onnx"), "--opset", "18"]) == 0
    assert "m.onnx" in capsys.readouterr().out
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert proto.opset_import[0].version == 18
    model = cunet.load(tmp_path / "m.safetensors")
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 8, 12)).astype(np.float32)
    assert rel_err(session(tmp_path / "m.onnx").run(None, {"image": x})[0], model.forward(x)) <= 1e-5


def test_cli_bad_input_exits_2_with_a_one_line_reason(tmp_path, capsys):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("not a checkpoint")
    for args, words in ((["export", str(bad), str(tmp_path / "o.onnx")], ["notes.safetensors", "not a readable"]),
                        (["export", str(tmp_path / "missing.safetensors"), str(tmp_path / "o.onnx")],
                         ["missing.safetensors", "no such file"])):
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("cunet export: error:")
        assert all(w in err for w in words), err
    checkpoint(tmp_path / "m.safetensors")
    assert cli.main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "o.onnx"), "--opset", "11"]) == 2
    assert "opset: expected an int in [13, " in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


class Swish(Layer):
    def forward(self, x):
        return x / (1 + np.exp(-x))


def test_unsupported_models_fail_naming_what(tmp_path):
    with pytest.raises(ValueError, match="model: expected a cunet.nn.UNet, got dict"):
        export.to_onnx({"enc0.conv1.weight": np.zeros(3)}, tmp_path / "m.onnx")
    model = small_unet(2)
    model.enc[1].layers[1] = ("relu1", Swish())
    with pytest.raises(ValueError, match="layer 'enc1.relu1' is a Swish, which cunet.export cannot write"):
        export.to_onnx(model, tmp_path / "m.onnx")
    model = small_unet(3, up="linear")
    model.up[0].layers[0][1].mode = "cubic"
    with pytest.raises(ValueError, match="layer 'up0.upsample' upsamples with mode 'cubic'"):
        export.to_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"opset: expected an int in \[13, \d+\].*got 12"):
        export.to_onnx(small_unet(2), tmp_path / "m.onnx", opset=12)
    with pytest.raises(TypeError, match="opset: expected an int, got '17'"):
        export.to_onnx(small_unet(2), tmp_path / "m.onnx", opset="17")
    model = small_unet(2)
    model.extra = {"spacing": np.float32(0.5)}
    with pytest.raises(TypeError, match=r"model.extra\['spacing'\]: expected a JSON-able value"):
        export.to_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_without_onnx_the_import_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)   # import onnx now raises ImportError
    monkeypatch.delitem(sys.modules, "cunet.export")
    monkeypatch.delattr(cunet, "export")   # else `from cunet import export` finds the loaded module
    with pytest.raises(ImportError, match=r"cunet export needs the onnx package: pip install 'cunet\[export\]'"):
        importlib.import_module("cunet.export")
    with pytest.raises(SystemExit, match=r"cunet export: error: cunet export needs the onnx package"):
        cli.main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m.onnx")])
