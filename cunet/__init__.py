"""cunet: a UNet library whose hot operations are hand-written CUDA kernels."""
__version__ = "0.1.0"


def __getattr__(name):
    # lazy, so `import cunet` stays cheap (no NumPy kernels, CuPy or matplotlib until used)
    if name == "UNet":
        from cunet.nn.unet import UNet
        return UNet
    if name == "load":
        from cunet.train import load
        return load
    raise AttributeError(f"module 'cunet' has no attribute {name!r}")
