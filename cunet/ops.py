"""cunet.ops: the kernels, with the names and signatures of cunet.reference.

NumPy float32 arrays run on the CPU through cunet._native (the host build of
kernels/); CuPy arrays run on the GPU through the same kernel source compiled by
NVRTC. The array decides the device; results come back on the same device. Arguments
are checked once, with the same errors as cunet.reference; the kernels take float32
(C-contiguous) only.
"""
from cunet._ops.act import *  # noqa: F401,F403
from cunet._ops.conv import *  # noqa: F401,F403
from cunet._ops.core import set_emulate_blocks, set_host_variants  # noqa: F401
from cunet._ops.pool import *  # noqa: F401,F403,E402
from cunet._ops.upsample import *  # noqa: F401,F403,E402
from cunet._ops.concat import *  # noqa: F401,F403,E402
from cunet._ops.loss import *  # noqa: F401,F403,E402
from cunet._ops.metrics import *  # noqa: F401,F403,E402
from cunet._ops.norm import *  # noqa: F401,F403,E402
from cunet._ops.dropout import *  # noqa: F401,F403,E402
from cunet._ops.optim import *  # noqa: F401,F403,E402
