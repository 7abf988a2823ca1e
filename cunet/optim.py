"""cunet.optim: optimizers over a model's flat parameter buffer, gradient clipping, and
learning-rate schedules. Formulas and defaults are torch.optim's, so runs can be compared.

    SGD(model, lr, momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0, l2=0.0)
    Adam(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l1=0.0, l2=0.0)
    AdamW(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, l1=0.0, l2=0.0)

    weight_decay  PyTorch's: every parameter; added to the gradient (SGD, Adam) or applied
                  to the parameter before the step (AdamW, decoupled)
    l1, l2        the penalty l1·Σ|w| + (l2/2)·Σw² on the conv kernels only, params[:n_decay]
                  (biases and BN affine terms are left alone); both nonzero: elastic net

A step is the fused update kernel (cunet.ops, or cunet.reference for a float64 model) over
the whole flat buffer, or over the two slices [:n_decay] and [n_decay:] when the penalties
make their arguments differ. State (velocity; m, v) is (P,) like params, allocated at the
first step on the params' device and moved with them if the model moves.

step() = advance() + apply(). advance (host) counts the step and writes the values that
change from step to step, lr and Adam's bias corrections, into `scalars`, a small float32
array on the params' device ([lr] for SGD, [lr, 1 - beta1^t, sqrt(1 - beta2^t)] for Adam,
computed in double as before); apply launches the update kernels, which read them from
there (cunet.ops.*_update_scalars, same bits as passing them by value). A captured CUDA
graph replays apply with frozen kernel arguments, so the schedule and the step count
still reach it (cunet.train.TrainStep). lr == 0 leaves params and state untouched.

Schedules set opt.lr from the base lr (opt.lr when built) and their own step counter t, the
number of sched.step() calls, each made after an optimizer step:
    StepLR(opt, step_size, gamma=0.1)           base·gamma^(t // step_size)
    CosineLR(opt, total_steps, min_lr=0, warmup=0)
                                                base·(t+1)/(warmup+1) for t < warmup, then
                                                min_lr + (base-min_lr)·(1+cos(pi·s))/2 with
                                                s = (t-warmup)/(total_steps-warmup), capped at 1
    PolyLR(opt, total_steps, power=0.9)         base·(1 - min(t, T)/T)^power (nnU-Net)
"""
import inspect
import math

import numpy as np

from cunet import _check, ops
from cunet.nn.layers import F
from cunet.nn.model import _host, upload

__all__ = ["SGD", "Adam", "AdamW", "from_config", "clip_grad_norm", "StepLR", "CosineLR", "PolyLR",
           "schedule_from_config"]


# ---- optimizers

class Optimizer:
    name = None

    def __init__(self, model, **hyper):
        for attr in ("params", "grads", "n_decay"):
            if not hasattr(model, attr):
                raise TypeError(f"model: expected a cunet model (with params, grads, n_decay), "
                                f"got {type(model).__name__}")
        self.model, self.step_count, self.state, self.scalars = model, 0, {}, None
        self._configure(**hyper)
        self._lr0 = self.lr

    @property
    def config(self):
        """JSON-able constructor arguments (lr as constructed): enough to rebuild."""
        names = list(inspect.signature(self._configure).parameters)
        cfg = {"name": self.name, **{k: getattr(self, k) for k in names}, "lr": self._lr0}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}

    def _configure(self, lr, weight_decay=0.0, l1=0.0, l2=0.0):
        self.lr = lr
        self.weight_decay = _check.number("weight_decay", weight_decay, lo=0)
        self.l1 = _check.number("l1", l1, lo=0)
        self.l2 = _check.number("l2", l2, lo=0)

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):   # 0 is allowed (a schedule's end); a step at lr 0 changes nothing
        self._lr = _check.number("lr", value, lo=0)

    def _state_names(self):
        return ()

    def _scalar_values(self):
        """The step-dependent kernel inputs of this step (step_count already counted)."""
        return [self.lr]

    def _ensure_state(self):
        """Allocate the state lazily; follow the params if the model moved device/precision."""
        p = self.model.params
        xp = self.model.xp
        n = len(self._scalar_values())
        if self.scalars is None or _check.xp_of(self.scalars) is not xp:
            self.scalars = xp.zeros(n, np.float32)
        for name in self._state_names():
            s = self.state.get(name)
            if s is None:
                self.state[name] = xp.zeros_like(p)
            elif _check.xp_of(s) is not xp or s.dtype != p.dtype:
                self.state[name] = xp.asarray(_host(s) if xp is np else s, dtype=p.dtype)

    def step(self):
        """One update of model.params from model.grads."""
        self.advance()
        self.apply()

    def advance(self):
        """The host half of a step: count it and write lr (and bias corrections) to
        `scalars` (an asynchronous host->device copy on CuPy: no sync)."""
        self._ensure_state()
        self.step_count += 1
        upload(self.scalars, np.asarray(self._scalar_values(), np.float32))

    def apply(self):
        """The device half: the update kernels, reading lr etc. from `scalars` (the float64
        reference path takes them by value and skips lr == 0 here)."""
        if self.model.params.dtype == np.float64 and self.lr == 0:
            return
        n, k = self.model.params.size, self.model.n_decay
        if not (self.l1 or self.l2) or k == n:
            parts = [(slice(0, n), self.l1, self.l2)]
        else:   # the conv kernels take the penalty, the rest only weight_decay
            parts = [(slice(0, k), self.l1, self.l2), (slice(k, n), 0.0, 0.0)]
        for sl, l1, l2 in parts:
            if sl.stop > sl.start:
                self._update(sl, l1, l2)

    def zero_grad(self):
        self.model.zero_grad()

    def penalty(self):
        """l1·Σ|w| + (l2/2)·Σw² over params[:n_decay] at the current params, as a float."""
        if not (self.l1 or self.l2):
            return 0.0
        w = self.model.params[:self.model.n_decay]
        return float(F(w).penalty(w, l1=self.l1, l2=self.l2))

    def state_dict(self):
        """{"hyper": JSON-able hyper-parameters with the current lr and step_count,
            "state": name -> copy of the (P,) state array, on the params' device}."""
        hyper = {**self.config, "lr": self.lr, "step_count": self.step_count}
        return {"hyper": hyper, "state": {k: v.copy() for k, v in self.state.items()}}

    def load_state_dict(self, d):
        """Restore hyper-parameters, lr, step_count and state (NumPy or CuPy arrays) written by
        state_dict; state arrays are copied to the params' device and precision."""
        if not isinstance(d, dict) or not {"hyper", "state"} <= set(d):
            raise ValueError(f"state_dict: expected a dict with 'hyper' and 'state', got {_keys(d)}")
        hyper, state = dict(d["hyper"]), d["state"]
        if hyper.get("name") != self.name:
            raise ValueError(f"state_dict: expected the state of a {self.name} optimizer, got {hyper.get('name')!r}")
        step_count = _check.integer("step_count", hyper.pop("step_count", None), lo=0)
        lr = hyper.pop("lr", None)
        names = set(inspect.signature(self._configure).parameters) - {"lr"}
        self._configure(lr=lr, **{k: hyper.get(k, getattr(self, k)) for k in names})
        p, xp = self.model.params, self.model.xp
        loaded = {}
        for name, a in state.items():
            if name not in self._state_names():
                raise ValueError(f"state_dict['state']: unexpected {name!r} for {self!r} "
                                 f"(expected {list(self._state_names())})")
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"state[{name!r}]: expected shape {tuple(p.shape)} (that of model.params), "
                                 f"got {tuple(a.shape)}")
            loaded[name] = xp.array(_host(a) if xp is np else a, dtype=p.dtype)
        self.state, self.step_count = loaded, step_count
        return self

    def __repr__(self):
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.config.items() if k != 'name')})"


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0) with l1/l2 penalties on the conv kernels."""
    name = "SGD"

    def __init__(self, model, lr, momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0, l2=0.0):
        super().__init__(model, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, l1=l1, l2=l2)

    def _configure(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0, l2=0.0):
        super()._configure(lr, weight_decay, l1, l2)
        self.momentum = _check.number("momentum", momentum, lo=0, hi=1, hi_open=True)
        self.nesterov = _check.choice("nesterov", nesterov, (False, True))
        if nesterov and not self.momentum:
            raise ValueError("nesterov: expected momentum > 0 with nesterov=True, got momentum=0.0")

    def _state_names(self):
        return ("velocity",) if self.momentum else ()

    def _update(self, sl, l1, l2):
        p, g = self.model.params[sl], self.model.grads[sl]
        # without momentum the kernel never touches velocity: the gradient stands in for it
        vel = self.state["velocity"][sl] if self.momentum else g
        args = (self.momentum, self.nesterov, self.weight_decay + l2, l1)
        if F(p) is ops:
            ops.sgd_update_scalars(p, g, vel, self.scalars, *args)
        else:
            F(p).sgd_update(p, g, vel, self.lr, *args)


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad off); weight_decay and l2 are added to the gradient."""
    name = "Adam"
    decoupled = False

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l1=0.0, l2=0.0):
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, l1=l1, l2=l2)

    def _configure(self, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l1=0.0, l2=0.0):
        super()._configure(lr, weight_decay, l1, l2)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(_check.number(f"betas[{i}]", b, lo=0, hi=1, hi_open=True) for i, b in enumerate(betas))
        self.eps = _check.number("eps", eps, lo=0, lo_open=True)

    def _state_names(self):
        return ("m", "v")

    def _scalar_values(self):
        return ops.adam_scalars(max(self.step_count, 1), self.lr, *self.betas)

    def _update(self, sl, l1, l2):
        p, g = self.model.params[sl], self.model.grads[sl]
        wd = self.weight_decay
        if self.decoupled:
            g = g + l2 * p if l2 else g   # coupled L2 on top of the decoupled decay (a temporary)
        else:
            wd += l2
        m, v = self.state["m"][sl], self.state["v"][sl]
        if F(p) is ops:
            ops.adam_update_scalars(p, g, m, v, self.scalars, *self.betas, eps=self.eps, weight_decay=wd, l1=l1,
                                    decoupled=self.decoupled)
        else:
            F(p).adam_update(p, g, m, v, self.step_count, self.lr, *self.betas, eps=self.eps, weight_decay=wd, l1=l1,
                             decoupled=self.decoupled)


class AdamW(Adam):
    """torch.optim.AdamW: param *= 1 - lr·weight_decay, then the Adam step."""
    name = "AdamW"
    decoupled = True

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, l1=0.0, l2=0.0):
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, l1=l1, l2=l2)


OPTIMIZERS = {c.name: c for c in (SGD, Adam, AdamW)}


def from_config(model, cfg):
    """Rebuild an optimizer for `model` from its .config (or state_dict()["hyper"])."""
    cls, kwargs = _check.config_lookup("cfg", cfg, OPTIMIZERS, ignore=("step_count",))
    return cls(model, **kwargs)


def clip_grad_norm(model, max_norm):
    """Global L2 norm of model.grads; grads are scaled in place by max_norm / (norm + 1e-6)
    when that is below 1 (torch.nn.utils.clip_grad_norm_). NumPy: the norm is a float.
    CuPy: the norm is a 0-d float32 device array and the scale is applied on the device
    (float32 arithmetic), so clipping costs no device->host sync (and can be captured)."""
    max_norm = _check.number("max_norm", max_norm, lo=0, lo_open=True)
    g = model.grads
    sq = F(g).sum_squares(g)
    if isinstance(sq, float):
        norm = math.sqrt(sq)
        coef = max_norm / (norm + 1e-6)
        if coef < 1:
            g *= coef
        return norm
    xp = _check.xp_of(g)
    norm = xp.sqrt(sq)
    g *= xp.minimum(np.float32(max_norm) / (norm + np.float32(1e-6)), np.float32(1))
    return norm


# ---- learning-rate schedules

class Schedule:
    name = None

    def __init__(self, opt, **cfg):
        if not isinstance(opt, Optimizer):
            raise TypeError(f"opt: expected a cunet.optim optimizer, got {type(opt).__name__}")
        self.opt, self.base_lr, self.t = opt, opt.lr, 0
        self.config = {"name": self.name, **cfg}
        self._apply()

    def lr_at(self, t):
        raise NotImplementedError

    def _apply(self):
        self.opt.lr = self.lr_at(self.t)

    def step(self):
        self.t += 1
        self._apply()

    def state_dict(self):
        return {"t": self.t, "base_lr": self.base_lr}

    def load_state_dict(self, d):
        if not isinstance(d, dict) or not {"t", "base_lr"} <= set(d):
            raise ValueError(f"state_dict: expected a dict with 't' and 'base_lr', got {_keys(d)}")
        self.t = _check.integer("t", d["t"], lo=0)
        self.base_lr = _check.number("base_lr", d["base_lr"], lo=0)
        self._apply()
        return self

    def __repr__(self):
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.config.items() if k != 'name')})"


class StepLR(Schedule):
    name = "StepLR"

    def __init__(self, opt, step_size, gamma=0.1):
        self.step_size = _check.integer("step_size", step_size, lo=1)
        self.gamma = _check.number("gamma", gamma, lo=0, lo_open=True)
        super().__init__(opt, step_size=step_size, gamma=self.gamma)

    def lr_at(self, t):
        return self.base_lr * self.gamma ** (t // self.step_size)


class CosineLR(Schedule):
    name = "CosineLR"

    def __init__(self, opt, total_steps, min_lr=0.0, warmup=0):
        self.total_steps = _check.integer("total_steps", total_steps, lo=1)
        self.min_lr = _check.number("min_lr", min_lr, lo=0)
        self.warmup = _check.integer("warmup", warmup, lo=0)
        if self.warmup >= self.total_steps:
            raise ValueError(f"warmup: expected fewer steps than total_steps={total_steps}, got {warmup}")
        super().__init__(opt, total_steps=total_steps, min_lr=self.min_lr, warmup=warmup)

    def lr_at(self, t):
        if t < self.warmup:
            return self.base_lr * (t + 1) / (self.warmup + 1)
        s = min(1.0, (t - self.warmup) / (self.total_steps - self.warmup))
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * s)) / 2


class PolyLR(Schedule):
    name = "PolyLR"

    def __init__(self, opt, total_steps, power=0.9):
        self.total_steps = _check.integer("total_steps", total_steps, lo=1)
        self.power = _check.number("power", power, lo=0)
        super().__init__(opt, total_steps=total_steps, power=self.power)

    def lr_at(self, t):
        return self.base_lr * (1 - min(t, self.total_steps) / self.total_steps) ** self.power


SCHEDULES = {c.name: c for c in (StepLR, CosineLR, PolyLR)}


def schedule_from_config(opt, cfg):
    """Rebuild a schedule on `opt` from its .config (the base lr is opt.lr, or the one a
    later load_state_dict restores)."""
    cls, kwargs = _check.config_lookup("cfg", cfg, SCHEDULES, ignore=("step_count",))
    return cls(opt, **kwargs)


def _keys(d):
    return sorted(d) if isinstance(d, dict) else type(d).__name__
