"""Model: owns the flat parameter, gradient and buffer arrays of its layers.

    params   (P,)  float, trainable parameters; the first n_decay are conv kernels
                   (what L1/L2 penalties apply to), then biases and BN affine terms
    grads    (P,)  mirrors params; zero_grad is one fill
    buffers  (B,)  BN running statistics

    seeds    (R, 2) int64, [seed_lo, seed_hi] of each of the R dropout layers' current
                   seed, on the model's device: the kernels read it (see layers.Dropout)

Layers see views into these. `to("cpu" | "cuda" | "reference")` moves them: float32
NumPy (host kernels), float32 CuPy (GPU kernels), float64 NumPy (the NumPy oracle).

precision ("fp32", "tf32", "bf16"; `set_precision`) is what the conv and transposed-conv
kernels round their GEMM operands to on CuPy arrays. It is mixed precision with float32
master weights: parameters, gradients, optimizer state and activations stay float32 (the
host build and the float64 reference device: see cunet.ops.conv_forward).
"""
import numpy as np

from cunet import _check
from cunet.reference import PRECISIONS
from cunet._ops.dropout import seed_halves
from cunet.nn.layers import Conv, ConvTranspose, Dropout, initial_value

DEVICES = ("cpu", "cuda", "reference")


class Model:
    _precision = "fp32"

    def _build(self, named_layers, seed):
        """named_layers: (prefix, layer) in the order the forward pass first uses them."""
        self.leaves = named_layers
        entries = [(f"{prefix}.{s.name}", layer, s) for prefix, layer in named_layers for s in layer.specs()]
        self._order = [name for name, _, _ in entries]   # state_dict order: forward use, weight before bias
        trainable = [e for e in entries if not e[2].buffer]
        trainable = [e for e in trainable if e[2].decay] + [e for e in trainable if not e[2].decay]
        self.n_decay = sum(int(np.prod(s.shape)) for _, _, s in trainable if s.decay)
        self._slots = {}
        for group, items in (("params", trainable), ("buffers", [e for e in entries if e[2].buffer])):
            off = 0
            for name, _, s in items:
                n = int(np.prod(s.shape))
                self._slots[name] = (group, off, s.shape)
                off += n
            setattr(self, f"_{group}_size", off)
        # initial values: one child seed per layer, drawn on the host in float64
        params, buffers = np.zeros(self._params_size), np.zeros(self._buffers_size)
        rngs = np.random.SeedSequence(seed).spawn(len(named_layers))
        for (prefix, layer), ss in zip(named_layers, rngs):
            rng = np.random.default_rng(ss)
            for s in layer.specs():
                group, off, shape = self._slots[f"{prefix}.{s.name}"]
                (params if group == "params" else buffers)[off:off + int(np.prod(shape))] = \
                    initial_value(s, rng).ravel()
        self.device = "cpu"
        self._place(params.astype(np.float32), buffers.astype(np.float32))

    def _place(self, params, buffers):
        self.params, self.buffers = params, buffers
        self.grads = params * 0
        for prefix, layer in self.leaves:
            p, g = {}, {}
            for s in layer.specs():
                group, off, shape = self._slots[f"{prefix}.{s.name}"]
                flat = self.params if group == "params" else self.buffers
                p[s.name] = flat[off:off + int(np.prod(shape))].reshape(shape)
                if group == "params":
                    g[s.name] = self.grads[off:off + int(np.prod(shape))].reshape(shape)
            layer.bind(p, g)
        drops = self._dropouts()
        self.seeds = _check.xp_of(params).zeros((len(drops), 2), np.int64)
        for i, layer in enumerate(drops):
            layer.seed_buf = self.seeds[i]
        self.write_seeds()

    def _dropouts(self):
        return [layer for _, layer in self.leaves if isinstance(layer, Dropout)]

    def write_seeds(self):
        """Copy the dropout layers' seeds into `seeds` (one host->device copy on the current
        CuPy stream, asynchronous: no sync)."""
        if self.seeds.size:
            upload(self.seeds, np.array([seed_halves(layer.seed) for layer in self._dropouts()], np.int64))

    def reseed(self, step):
        """Dropout masks for training step `step` (the trainer calls this once per step)."""
        for layer in self._dropouts():
            layer.reseed(step)
        self.write_seeds()

    @property
    def precision(self):
        """GEMM operand precision of the conv kernels ("fp32", "tf32", "bf16")."""
        return self._precision

    @precision.setter
    def precision(self, value):
        self.set_precision(value)

    def set_precision(self, precision):
        """Set the conv/convT operand precision (kept in config, so checkpoints keep it)."""
        self._apply_precision(precision)
        if hasattr(self, "config"):
            self.config["precision"] = precision
            if precision == "fp32":   # the default is left out: readers that predate the key (C++ runner)
                del self.config["precision"]
        return self

    def _apply_precision(self, precision):
        """Set the layers' precision only (fit's override; config untouched)."""
        _check.choice("precision", precision, PRECISIONS)
        for _, layer in self.leaves:
            if isinstance(layer, (Conv, ConvTranspose)):
                layer.precision = precision
        self._precision = precision

    @property
    def xp(self):
        return _check.xp_of(self.params)

    def to(self, device):
        """Move parameters, gradients and buffers to "cpu", "cuda" or "reference"."""
        _check.choice("device", device, DEVICES)
        if device == "cuda":
            import cupy
            params, buffers = (cupy.asarray(a, dtype=np.float32) for a in (self.params, self.buffers))
        else:
            dtype = np.float64 if device == "reference" else np.float32
            params, buffers = (np.asarray(_host(a), dtype=dtype) for a in (self.params, self.buffers))
        self.device = device
        self._place(params, buffers)
        return self

    def zero_grad(self):
        self.grads.fill(0)

    def train(self, mode=True):
        for _, layer in self.leaves:
            layer.training = mode
        return self

    def eval(self):
        return self.train(False)

    @property
    def training(self):
        return self.leaves[0][1].training

    def _view(self, name):
        group, off, shape = self._slots[name]
        flat = self.params if group == "params" else self.buffers
        return flat[off:off + int(np.prod(shape))].reshape(shape)

    def state_dict(self):
        """name -> copy of the array (the model's device), in forward order, weight before bias."""
        return {name: self._view(name).copy() for name in self._order}

    def load_state_dict(self, state):
        """Copy arrays (NumPy, CuPy, or anything np.asarray takes) into the model; names and
        shapes must match exactly."""
        missing = [n for n in self._order if n not in state]
        unexpected = [n for n in state if n not in self._slots]
        if missing or unexpected:
            raise ValueError(f"state: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                             f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        for name in self._order:
            v = state[name]
            if tuple(v.shape) != self._slots[name][2]:
                raise ValueError(f"state[{name!r}]: expected shape {self._slots[name][2]}, got {tuple(v.shape)}")
        for name in self._order:
            view = self._view(name)
            view[...] = self.xp.asarray(_host(state[name]) if self.xp is np else state[name], dtype=view.dtype)
        return self

    def num_parameters(self):
        return int(self._params_size)


def _host(a):
    """A NumPy copy of a NumPy/CuPy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def upload(dst, host):
    """Copy host (NumPy) values into dst: an assignment for NumPy; for CuPy an asynchronous
    host->device copy on the current stream (ordered with the kernels around it, no sync;
    the stream is passed explicitly because CuPy versions differ on what set() does without)."""
    if isinstance(dst, np.ndarray):
        dst[...] = host
        return
    import cupy
    dst.set(np.ascontiguousarray(host, dtype=dst.dtype), stream=cupy.cuda.get_current_stream())
