"""Argument checks shared by `cunet.reference` and `cunet.ops`.

Every check raises `TypeError` (wrong kind of object or dtype) or `ValueError`
(wrong shape or value) with a message that names the argument, says what was
expected and what came. The array module (NumPy or CuPy) is taken from the array,
so the same checks serve both devices.
"""
import contextlib
import inspect
import numbers

import numpy as np

FLOATS = (np.float32, np.float64)

# Checks that read array values (finite, label range, [0, 1] targets) cost a device->host
# sync per call on a GPU. The training loop turns them off around a CuPy step, having
# checked the batch on the host (cunet.train); shapes, dtypes and arguments stay checked.
_values = [True]


def values_checked():
    """True unless inside `value_checks(False)`."""
    return _values[0]


@contextlib.contextmanager
def value_checks(on):
    """Within the block, checks that read array values run (True) or are skipped (False)."""
    old, _values[0] = _values[0], bool(on)
    try:
        yield
    finally:
        _values[0] = old


def xp_of(a):
    """The array module of `a`: numpy, or cupy for a cupy.ndarray."""
    if isinstance(a, np.ndarray):
        return np
    mod = type(a).__module__
    if mod.startswith("cupy"):
        import cupy
        return cupy
    raise TypeError(f"expected a numpy or cupy array, got {type(a).__name__}")


def array(name, a, ndim=None, dtype="float"):
    """Check that `a` is an array with ndim in `ndim` and a float (or given) dtype."""
    try:
        xp_of(a)
    except TypeError:
        raise TypeError(f"{name}: expected a numpy or cupy array, got {type(a).__name__}") from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{name}: expected {want} dimensions, got {a.ndim} (shape {tuple(a.shape)})")
    if dtype == "float":
        if a.dtype not in FLOATS:
            raise TypeError(f"{name}: expected float32 or float64, got {a.dtype}")
    elif dtype == "int":
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected an integer array, got {a.dtype}")
    elif dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name}: expected {np.dtype(dtype)}, got {a.dtype}")
    return a


def spatial(x):
    """Spatial rank of an N,C,(D),H,W array: 2 or 3."""
    return x.ndim - 2


def image(name, x):
    """An N,C,H,W or N,C,D,H,W float array."""
    return array(name, x, ndim=(4, 5))


def same_shape(name, a, ref_name, ref):
    if tuple(a.shape) != tuple(ref.shape):
        raise ValueError(f"{name}: expected shape {tuple(ref.shape)} (that of {ref_name}), got {tuple(a.shape)}")


def same_dtype(name, a, ref_name, ref):
    if a.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (that of {ref_name}), got {a.dtype}")


def same_device(name, a, ref_name, ref):
    if xp_of(a) is not xp_of(ref):
        raise TypeError(f"{name}: expected a {xp_of(ref).__name__} array like {ref_name}, "
                        f"got a {xp_of(a).__name__} array")


INDEX_LIMIT = 2 ** 31   # sizes, strides, paddings, dilations: below it (the kernels' products stay in int64)


def tuple_arg(name, v, n, minimum=None, maximum=INDEX_LIMIT - 1):
    """An int or a sequence of n ints -> tuple of n ints (each in [minimum, maximum])."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        out = (int(v),) * n
    else:
        try:
            out = tuple(v)
        except TypeError:
            raise TypeError(f"{name}: expected an int or a tuple of {n} ints, got {v!r}") from None
        if len(out) != n or not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in out):
            raise ValueError(f"{name}: expected an int or a tuple of {n} ints, got {v!r}")
        out = tuple(int(t) for t in out)
    if minimum is not None and any(t < minimum for t in out):
        raise ValueError(f"{name}: expected values >= {minimum}, got {v!r}")
    if maximum is not None and any(t > maximum for t in out):
        limit = "2**31 - 1" if maximum == INDEX_LIMIT - 1 else str(maximum)
        raise ValueError(f"{name}: expected values <= {limit}, got {v!r}")
    return out


def number(name, v, lo=None, hi=None, lo_open=False, hi_open=False):
    """A real number within [lo, hi] (open ends where asked)."""
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise TypeError(f"{name}: expected a number, got {v!r}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{name}: expected a value in {left}{lo if lo is not None else '-inf'}, "
                         f"{hi if hi is not None else 'inf'}{right}, got {v!r}")
    return v


def integer(name, v, lo=None):
    if not isinstance(v, numbers.Integral) or isinstance(v, bool):
        raise TypeError(f"{name}: expected an int, got {v!r}")
    if lo is not None and v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    return int(v)


def flag(name, v):
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected True or False, got {v!r}")
    return v


def choice(name, v, options):
    if v not in options:
        raise ValueError(f"{name}: expected one of {', '.join(repr(o) for o in options)}, got {v!r}")
    return v


def finite(name, a):
    """Reject NaN/inf where it would poison a reduction (losses, statistics)."""
    if not values_checked():
        return
    xp = xp_of(a)
    if not bool(xp.isfinite(a).all()):
        bad = int((~xp.isfinite(a)).sum())
        raise ValueError(f"{name}: contains {bad} NaN or infinite value(s)")


def labels(name, lab, num_classes, shape=None):
    """Integer label map with values in [0, num_classes); lists offending values."""
    array(name, lab, dtype="int")
    if shape is not None and tuple(lab.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(lab.shape)}")
    if not values_checked():
        return lab
    xp = xp_of(lab)
    bad = (lab < 0) | (lab >= num_classes)
    if bool(bad.any()):
        vals = sorted(int(v) for v in xp.unique(lab[bad])[:10].tolist())
        raise ValueError(f"{name}: values must lie in [0, {num_classes}), found {vals}")
    return lab


def config_lookup(name, cfg, registry, ignore=()):
    """cfg, a dict {"name": key of registry, **constructor arguments} -> (class, kwargs);
    keys in `ignore` are allowed and dropped (a state_dict's bookkeeping). Errors name the
    unknown class, unexpected and missing keys."""
    if not isinstance(cfg, dict):
        raise TypeError(f"{name}: expected a dict with a 'name', got {type(cfg).__name__}")
    cls = registry.get(cfg.get("name"))
    if cls is None:
        raise ValueError(f"{name}['name']: expected one of {', '.join(map(repr, registry))}, got {cfg.get('name')!r}")
    params = inspect.signature(cls.__init__).parameters
    want = set(params) - {"self", "model", "opt"}   # model / opt: what the caller passes itself
    extra = sorted(set(cfg) - want - {"name", *ignore})
    if extra:
        raise ValueError(f"{name}: unexpected keys {extra} for {cfg['name']} (expected {sorted(want)})")
    missing = sorted(k for k in want if params[k].default is inspect.Parameter.empty and k not in cfg)
    if missing:
        raise ValueError(f"{name}: missing keys {missing} for {cfg['name']}")
    return cls, {k: v for k, v in cfg.items() if k in want}
