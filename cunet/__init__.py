"""cunet: a UNet library whose hot operations are hand-written CUDA kernels."""
__version__ = "0.1.0"
