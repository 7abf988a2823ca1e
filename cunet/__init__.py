"""cunet: a UNet library whose hot operations are hand-written CUDA kernels."""
__version__ = "0.1.0"

# subpackages reachable after a bare `import cunet` (cunet.optim, cunet.nn, ...), each imported
# on first access: `import cunet` itself loads nothing (no NumPy, kernels, CuPy or matplotlib)
SUBMODULES = ("cli", "data", "demo", "distributed", "evaluate", "export", "infer", "losses", "metrics", "nn",
              "ops", "optim", "reference", "train")


def __getattr__(name):
    if name == "UNet":
        from cunet.nn.unet import UNet
        return UNet
    if name == "load":
        from cunet.train import load
        return load
    if name in SUBMODULES:
        import importlib
        return importlib.import_module(f"cunet.{name}")   # also binds it on the package: asked once
    raise AttributeError(f"module 'cunet' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES) | {"UNet", "load"})
