"""Training-time augmentation of host (NumPy) batches, 2D and 3D.

    Augment(...)(x, y, rng) -> (x, y)
        x (B, C, *S) float32; y (B, *S) int labels or (B, Cy, *S) float targets

Per sample, in this order:
  flips         each spatial axis with probability 1/2                       (exact)
  rot90         k * 90 degrees in one plane (2D: the image; 3D: one of `axes`) (exact)
  resampling    rotation (each plane of `axes`, +-rotate degrees), isotropic scaling and
                an elastic field, each with probability p_spatial, composed into ONE
                backward mapping and sampled once (numba, parallel over output voxels):
                linear for x and float targets, nearest for labels, 0 outside
  intensity     (x only) per channel: scale, shift, gamma on min-max normalised values
                (range restored after), Gaussian noise; shift and noise are in units of
                the channel's standard deviation
The randomness comes from the rng passed in (np.random.Generator), so the same rng state
gives the same output; without one, the Augment's own generator (from `seed`) is used.
"""
import threading

import numpy as np
from numba import njit, prange

from cunet import _check

_LOCK = threading.Lock()   # numba's workqueue threading layer must not be entered from two threads at once


# ---- kernels: out[c, o] = src[c, A @ (o - centre) + centre + disp[:, o]]

@njit(parallel=True, cache=True, nogil=True)
def _warp3d(src, mat, disp, nearest, out):
    """src, out (C, D, H, W) float32; mat (3, 3) float64; disp (3, D, H, W) float32 or (0, 0, 0, 0).
    A 2D sample is D = 1 with mat[0] = (1, 0, 0) and disp[0] = 0: the z terms are exact zeros
    and weight 1, so the 2D result is the bilinear one bit for bit."""
    C, D, H, W = src.shape
    cz, cy, cx = (D - 1) / 2.0, (H - 1) / 2.0, (W - 1) / 2.0
    has_disp = disp.shape[0] > 0
    for i in prange(D * H * W):
        oz, r = i // (H * W), i % (H * W)
        oy, ox = r // W, r % W
        qz, qy, qx = oz - cz, oy - cy, ox - cx
        pz = mat[0, 0] * qz + mat[0, 1] * qy + mat[0, 2] * qx + cz
        py = mat[1, 0] * qz + mat[1, 1] * qy + mat[1, 2] * qx + cy
        px = mat[2, 0] * qz + mat[2, 1] * qy + mat[2, 2] * qx + cx
        if has_disp:
            pz += disp[0, oz, oy, ox]
            py += disp[1, oz, oy, ox]
            px += disp[2, oz, oy, ox]
        if nearest:
            z0, y0, x0 = int(np.floor(pz + 0.5)), int(np.floor(py + 0.5)), int(np.floor(px + 0.5))
            inside = 0 <= z0 < D and 0 <= y0 < H and 0 <= x0 < W
            for c in range(C):
                out[c, oz, oy, ox] = src[c, z0, y0, x0] if inside else 0.0
            continue
        z0, y0, x0 = int(np.floor(pz)), int(np.floor(py)), int(np.floor(px))
        fz, fy, fx = pz - z0, py - y0, px - x0
        for c in range(C):
            acc = 0.0
            for dz in range(2):
                zz = z0 + dz
                if zz < 0 or zz >= D:
                    continue
                wz = fz if dz else 1.0 - fz
                for dy in range(2):
                    yy = y0 + dy
                    if yy < 0 or yy >= H:
                        continue
                    wy = wz * (fy if dy else 1.0 - fy)
                    for dx in range(2):
                        xx = x0 + dx
                        if xx < 0 or xx >= W:
                            continue
                        acc += wy * (fx if dx else 1.0 - fx) * src[c, zz, yy, xx]
            out[c, oz, oy, ox] = acc


def warp(x, matrix, displacement=None, order=1):
    """Resample one sample x (C, *S) at A @ (o - centre) + centre + displacement[:, o] for each
    output voxel o (centre = (S - 1) / 2): order 1 linear, 0 nearest; 0 outside the input.

    matrix (d, d) maps output offsets to input offsets (the inverse of the visible motion);
    displacement (d, *S) in voxels, or None. Integer x is resampled nearest and returned as
    its dtype."""
    _check.array("x", x, ndim=(3, 4), dtype=None)
    if not isinstance(x, np.ndarray):
        raise TypeError("x: expected a numpy array (augmentation runs on the host, before the batch "
                        f"moves to the GPU), got {type(x).__name__}")
    d = x.ndim - 1
    matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    if matrix.shape != (d, d):
        raise ValueError(f"matrix: expected shape ({d}, {d}) for a {d}D sample, got {matrix.shape}")
    _check.choice("order", order, (0, 1))
    if displacement is None:
        disp = np.zeros((0,) * (d + 1), np.float32)
    else:
        disp = np.ascontiguousarray(displacement, dtype=np.float32)
        if disp.shape != (d,) + x.shape[1:]:
            raise ValueError(f"displacement: expected shape {(d,) + x.shape[1:]}, got {disp.shape}")
    integer = x.dtype.kind in "iub"
    if integer and x.size and (x.min() < -2 ** 24 or x.max() > 2 ** 24):
        raise ValueError("x: integer values beyond +-2**24 do not survive the float32 resampler")
    src = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(src)
    if d == 2:   # the 3D kernel with D = 1 (see _warp3d)
        m3 = np.eye(3)
        m3[1:, 1:] = matrix
        matrix = m3
        if disp.size:
            disp = np.concatenate([np.zeros((1,) + disp.shape[1:], np.float32), disp])[:, None]
        else:
            disp = np.zeros((0,) * 4, np.float32)
        src, out3 = src[:, None], out[:, None]
    else:
        out3 = out
    with _LOCK:
        _warp3d(src, matrix, disp, bool(order == 0 or integer), out3)
    return out.astype(x.dtype) if integer else out


# ---- the augmentation

def _pair(name, v, lo, lo_open=True):
    try:
        a, b = v
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a pair (lo, hi), got {v!r}") from None
    a = _check.number(f"{name}[0]", a, lo, lo_open=lo_open)
    b = _check.number(f"{name}[1]", b, lo, lo_open=lo_open)
    if a > b:
        raise ValueError(f"{name}: expected lo <= hi, got {v!r}")
    return a, b


def _rotation(d, plane, degrees):
    """(d, d) rotation by `degrees` in the plane of spatial axes `plane`."""
    r = np.eye(d)
    a, b = plane
    t = np.deg2rad(degrees)
    r[a, a], r[a, b], r[b, a], r[b, b] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return r


class Augment:
    def __init__(self, flip=True, rot90=True, rotate=15.0, scale=(0.85, 1.25), elastic=None, p_spatial=0.3,
                 intensity_scale=(0.9, 1.1), intensity_shift=0.1, gamma=(0.7, 1.5), noise=0.05, axes=None,
                 seed=0):
        """axes: for 3D, the planes (pairs of spatial axes) that rot90 and rotation act in:
        None for all three, or one pair such as (1, 2) to keep an anisotropic axis fixed.
        elastic: None or (alpha, sigma) in voxels: a random field, Gaussian-smoothed with sigma,
        scaled to peak displacements of about alpha."""
        self.flip, self.rot90 = bool(flip), bool(rot90)
        self.rotate = _check.number("rotate", rotate, 0, 180)
        self.scale = _pair("scale", scale, 0)
        if elastic is not None:
            if not isinstance(elastic, (tuple, list)) or len(elastic) != 2:
                raise TypeError(f"elastic: expected None or (alpha, sigma), got {elastic!r}")
            elastic = (_check.number("elastic[0] (alpha)", elastic[0], 0),
                       _check.number("elastic[1] (sigma)", elastic[1], 0, lo_open=True))
        self.elastic = elastic
        self.p_spatial = _check.number("p_spatial", p_spatial, 0, 1)
        self.intensity_scale = _pair("intensity_scale", intensity_scale, 0)
        self.intensity_shift = _check.number("intensity_shift", intensity_shift, 0)
        self.gamma = _pair("gamma", gamma, 0)
        self.noise = _check.number("noise", noise, 0)
        if axes is not None:
            a = _check.tuple_arg("axes", axes, 2, minimum=0)
            if a[0] == a[1] or max(a) > 2:
                raise ValueError(f"axes: expected two different spatial axes in 0..2, got {axes!r}")
            axes = tuple(sorted(a))
        self.axes = axes
        self.rng = np.random.default_rng(_check.integer("seed", seed, lo=0))

    def _planes(self, d):
        if d == 2:
            return [(0, 1)]
        return [self.axes] if self.axes is not None else [(0, 1), (0, 2), (1, 2)]

    def __call__(self, x, y, rng=None):
        """x (B, C, *S) float32, y (B, *S) labels or (B, Cy, *S) float targets -> new (x, y)."""
        _check.array("x", x, ndim=(4, 5))
        for name, a in (("x", x), ("y", y)):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{name}: expected a numpy array (augment on the host, before the batch moves "
                                f"to the GPU), got {type(a).__name__}")
        d, spatial = x.ndim - 2, x.shape[2:]
        if y.ndim not in (x.ndim - 1, x.ndim):
            raise ValueError(f"y: expected labels (B, *S) or targets (B, C, *S) to match x {tuple(x.shape)}, "
                             f"got shape {tuple(y.shape)}")
        labels = y.ndim == x.ndim - 1
        if (y.shape[0], *y.shape[1 + (not labels):]) != (x.shape[0], *spatial):
            raise ValueError(f"y: expected shape {(x.shape[0], *spatial)} (labels) or {(x.shape[0], 'C', *spatial)} "
                             f"(targets) to match x {tuple(x.shape)}, got {tuple(y.shape)}")
        if labels and y.dtype.kind not in "iu":
            raise TypeError(f"y: expected integer labels (B, *S), got {y.dtype}")
        rng = self.rng if rng is None else rng
        xs, ys = [], []
        for i in range(x.shape[0]):
            xi, yi = self._spatial(x[i], y[i][None] if labels else y[i], d, rng)
            xs.append(self._intensity(xi, rng))
            ys.append(yi[0] if labels else yi)
        return np.ascontiguousarray(np.stack(xs), dtype=x.dtype), np.ascontiguousarray(np.stack(ys), dtype=y.dtype)

    def _spatial(self, xi, yi, d, rng):
        """xi (C, *S), yi (1 or Cy, *S) -> the same, transformed alike."""
        if self.flip:
            axes = [a + 1 for a in range(d) if rng.random() < 0.5]
            if axes:
                xi, yi = np.flip(xi, tuple(axes)), np.flip(yi, tuple(axes))
        if self.rot90:
            planes = self._planes(d)
            a, b = planes[rng.integers(len(planes))]
            k = int(rng.integers(4))
            if xi.shape[a + 1] != xi.shape[b + 1]:
                k = 2 * (k % 2)   # a non-square plane keeps its shape only under 0 or 180 degrees
            if k:
                xi, yi = np.rot90(xi, k, (a + 1, b + 1)), np.rot90(yi, k, (a + 1, b + 1))
        mat, disp = np.eye(d), None
        if self.rotate > 0 and rng.random() < self.p_spatial:
            for plane in self._planes(d):
                mat = _rotation(d, plane, rng.uniform(-self.rotate, self.rotate)) @ mat
        if self.scale != (1.0, 1.0) and rng.random() < self.p_spatial:
            mat = mat / rng.uniform(*self.scale)   # s > 1 samples a smaller region: zoom in
        if self.elastic is not None and self.elastic[0] > 0 and rng.random() < self.p_spatial:
            from scipy.ndimage import gaussian_filter
            alpha, sigma = self.elastic
            disp = np.stack([gaussian_filter(rng.uniform(-1, 1, xi.shape[1:]), sigma, mode="constant")
                             for _ in range(d)])
            disp *= alpha / max(float(np.abs(disp).max()), 1e-12)
        if disp is not None or not np.array_equal(mat, np.eye(d)):
            xi = warp(xi, mat, disp, order=1)
            yi = warp(yi, mat, disp)   # integer labels: warp resamples them nearest
        return xi, yi

    def _intensity(self, xi, rng):
        """xi (C, *S) float -> float32 copy, per channel scale, shift, gamma, noise."""
        xi = np.array(xi, dtype=np.float32)
        for c in range(xi.shape[0]):
            ch = xi[c]
            if self.intensity_scale != (1.0, 1.0):
                ch *= np.float32(rng.uniform(*self.intensity_scale))
            if self.intensity_shift > 0:
                ch += np.float32(rng.uniform(-self.intensity_shift, self.intensity_shift) * ch.std())
            if self.gamma != (1.0, 1.0):
                g = np.exp(rng.uniform(np.log(self.gamma[0]), np.log(self.gamma[1])))
                lo, hi = float(ch.min()), float(ch.max())
                if hi > lo:
                    ch[...] = ((ch - lo) / (hi - lo)) ** g * (hi - lo) + lo
            if self.noise > 0:
                sd = rng.uniform(0, self.noise) * float(ch.std())
                ch += rng.normal(0, sd, ch.shape).astype(np.float32)
        return xi
