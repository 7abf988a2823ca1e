"""Random patches with foreground oversampling, as a batch source for the trainer.

    PatchSampler(images, labels, patch_size, batch_size, steps_per_epoch, ...)
        images  list of (C, *S) float arrays (2D or 3D; S may differ between images)
        labels  list of (*S) integer label maps, or (Cy, *S) float targets
        .batches(epoch) yields steps_per_epoch batches (x, y):
            x (B, C, *P) float32, y (B, *P) int64 or (B, Cy, *P) float32
        len(sampler) == steps_per_epoch

Batch `step` of `epoch` is drawn from np.random.default_rng((seed, epoch, step)) alone
(image, location, augmentation), so it is the same with or without prefetching and can be
rebuilt on its own: sampler.batch(epoch, step). Patches are views copied straight into the
batch: the dataset is never copied (only images smaller than the patch are padded, once).
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cunet import _check


class PatchSampler:
    def __init__(self, images, labels, patch_size, batch_size, steps_per_epoch, fg_fraction=0.33, augment=None,
                 seed=0, prefetch=True):
        """fg_fraction: the probability that a patch is centred on a foreground voxel (class > 0;
        the class drawn uniformly among those present in the drawn image, then the voxel
        uniformly among that class's voxels; the patch shifted to lie inside the image). Other
        patches, and those from images without foreground, lie uniformly at random.
        augment: None or a callable (x, y, rng) -> (x, y), such as cunet.data.Augment."""
        images, labels = list(images), list(labels)
        if not images:
            raise ValueError("images: expected at least one image, got none")
        if len(labels) != len(images):
            raise ValueError(f"labels: expected one per image ({len(images)}), got {len(labels)}")
        first = images[0]
        _check.array("images[0]", first, ndim=(3, 4))
        dims, channels = first.ndim - 1, first.shape[0]
        self.patch_size = _check.tuple_arg("patch_size", patch_size, dims, minimum=1)
        self.batch_size = _check.integer("batch_size", batch_size, lo=1)
        self.steps_per_epoch = _check.integer("steps_per_epoch", steps_per_epoch, lo=1)
        self.fg_fraction = _check.number("fg_fraction", fg_fraction, 0, 1)
        if augment is not None and not callable(augment):
            raise TypeError(f"augment: expected None or a callable (x, y, rng) -> (x, y), got {type(augment).__name__}")
        self.augment, self.prefetch = augment, bool(prefetch)
        self.seed = _check.integer("seed", seed, lo=0)
        self.targets = None   # True: float targets (Cy, *S); False: labels (*S)
        self.images, self.labels, self.foreground = [], [], []
        for i, (im, lab) in enumerate(zip(images, labels)):
            _check.array(f"images[{i}]", im, ndim=dims + 1)
            if not isinstance(im, np.ndarray) or not isinstance(lab, np.ndarray):
                raise TypeError(f"images[{i}], labels[{i}]: expected numpy arrays (patches are cut on the host)")
            if im.shape[0] != channels:
                raise ValueError(f"images[{i}]: expected {channels} channels like images[0], got shape {im.shape}")
            targets = lab.ndim == dims + 1
            if lab.ndim not in (dims, dims + 1) or tuple(lab.shape[targets:]) != tuple(im.shape[1:]):
                raise ValueError(f"labels[{i}]: expected shape {im.shape[1:]} (labels) or (C,) + {im.shape[1:]} "
                                 f"(float targets) to match images[{i}], got {lab.shape}")
            if self.targets is None:
                self.targets = targets
            if targets != self.targets:
                raise ValueError(f"labels[{i}]: expected every entry to be labels or every entry targets; "
                                 f"labels[0] has shape {labels[0].shape}, labels[{i}] {lab.shape}")
            if targets:
                _check.array(f"labels[{i}]", lab)
                if self.fg_fraction > 0:
                    raise ValueError(f"fg_fraction: float targets have no foreground classes; pass "
                                     f"fg_fraction=0, got {fg_fraction}")
            else:
                _check.array(f"labels[{i}]", lab, dtype="int")
                if lab.size and lab.min() < 0:
                    raise ValueError(f"labels[{i}]: expected class indices >= 0, found {int(lab.min())}")
            im, lab = self._pad(im, lab, targets)
            self.images.append(im)
            self.labels.append(lab)
            self.foreground.append({} if targets or self.fg_fraction == 0 else _foreground(lab))

    def _pad(self, im, lab, targets):
        """Pad an image smaller than the patch (zeros; label 0) up to the patch, centred."""
        pads = [((p - s) // 2, p - s - (p - s) // 2) if s < p else (0, 0)
                for s, p in zip(im.shape[1:], self.patch_size)]
        if not any(b or a for b, a in pads):
            return im, lab
        return np.pad(im, [(0, 0)] + pads), np.pad(lab, [(0, 0)] * targets + pads)

    def __len__(self):
        return self.steps_per_epoch

    def batch(self, epoch, step):
        """Batch `step` of `epoch`: x (B, C, *P) float32 and y (B, *P) int64 / (B, Cy, *P) float32."""
        rng = np.random.default_rng((self.seed, int(epoch), int(step)))
        B, P = self.batch_size, self.patch_size
        x = np.empty((B, self.images[0].shape[0], *P), np.float32)
        y = (np.empty((B, self.labels[0].shape[0], *P), np.float32) if self.targets
             else np.empty((B, *P), np.int64))
        for b in range(B):
            i = int(rng.integers(len(self.images)))
            image, label, fg = self.images[i], self.labels[i], self.foreground[i]
            shape = image.shape[1:]
            if rng.random() < self.fg_fraction and fg:
                voxels = fg[list(fg)[int(rng.integers(len(fg)))]]   # class uniformly among those present
                centre = np.unravel_index(int(voxels[rng.integers(len(voxels))]), shape)
                start = [min(max(c - p // 2, 0), s - p) for c, p, s in zip(centre, P, shape)]
            else:
                start = [int(rng.integers(s - p + 1)) for p, s in zip(P, shape)]
            window = tuple(slice(a, a + p) for a, p in zip(start, P))
            x[b] = image[(slice(None),) + window]
            y[b] = label[(slice(None),) * int(self.targets) + window]
        if self.augment is not None:
            x, y = self.augment(x, y, rng)
        return x, y

    def batches(self, epoch):
        """Yield the epoch's batches; with prefetch, batch step + 1 is cut (and augmented) in a
        background thread while the caller trains on batch step."""
        if not self.prefetch:
            for step in range(self.steps_per_epoch):
                yield self.batch(epoch, step)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.batch, epoch, 0)
            for step in range(self.steps_per_epoch):
                x, y = pending.result()
                if step + 1 < self.steps_per_epoch:
                    pending = pool.submit(self.batch, epoch, step + 1)
                yield x, y


def _foreground(label):
    """{class > 0 present: flat indices of its voxels (int32 when they fit)}."""
    flat = label.ravel()
    counts = np.bincount(flat)
    dtype = np.int32 if flat.size < 2 ** 31 else np.int64
    return {c: np.flatnonzero(flat == c).astype(dtype) for c in range(1, len(counts)) if counts[c]}
