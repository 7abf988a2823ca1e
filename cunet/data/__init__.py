"""cunet.data: image/label I/O (NIfTI, PNG, TIFF), normalisation and layout transforms,
patch sampling with foreground oversampling, and augmentation."""
from cunet.data.augment import Augment, warp  # noqa: F401
from cunet.data.io import check_pair, load_image, load_label, save_image, save_label  # noqa: F401
from cunet.data.patches import PatchSampler  # noqa: F401
from cunet.data.transforms import (channels_first, check_normalization, crop, default_normalization,  # noqa: F401
                                   from_slices, normalize, pad_to_multiple, to_slices)
from cunet.data import datasets  # noqa: F401,E402  bundled real data: tissue(), nuclei(), denoise()
