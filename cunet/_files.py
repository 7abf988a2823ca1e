"""Writing a file so that a crash never leaves half of it under its name: every file cunet
writes (checkpoints, history, images and label maps, ONNX models, evaluation reports)
goes through atomic_write."""
import contextlib
import os
import tempfile
from pathlib import Path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write, suffix=".tmp"):
    """write(tmp) a temporary file next to `path` (.NAME.*SUFFIX: writers that pick their
    format by the extension get it at the end), flush it to disk, then rename it over
    `path` and flush the folder. The file gets the umask's mode, as any other tool's would
    (mkstemp's is 0600). A failed write removes the temporary; a kill leaves at most it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)   # (writers may recreate the file: its mode is set after)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):   # the rename itself, durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
