"""cunet.nn: layers with hand-written backward passes, and the UNet."""
from cunet.nn.layers import (BatchNorm, Concat, Conv, ConvTranspose, Dropout, F, LeakyReLU, MaxPool, ReLU,  # noqa
                             Sequential, Upsample)
from cunet.nn.model import Model  # noqa: F401
from cunet.nn.unet import UNet  # noqa: F401
