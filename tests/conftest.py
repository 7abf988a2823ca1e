"""Shared test fixtures: the devices to run ops on, and the host block mode.

`gpu` tests run only where CuPy finds a CUDA device; everything else runs on the host
build of the kernels. `block_mode` runs a cooperative kernel both ways the host can:
one thread per block ("loops", the fast path) and the GPU block size through the fiber
block emulation ("emulated"), so the shared-memory/shuffle code is executed here too.
"""
import os

# Idle OpenMP threads sleep instead of spinning: tests launch thousands of tiny kernels,
# and spinning workers starve everything else on a shared 2-core machine (measured: one
# tiny UNet step 0.9 s instead of 2 ms under load). Must be set before libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _gpu_available():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


GPU = _gpu_available()


def _host_only_copy(item):
    """A cuda case that differs from another only by a host-build switch (block emulation,
    host variants): the CuPy path ignores both, so it would run the same kernels again."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("device") == "cuda" and (params.get("block_mode") == "emulated" or
                                                params.get("variant") == "portable")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device (CuPy found none)")
    dropped = [item for item in items if _host_only_copy(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not _host_only_copy(item)]
    for item in items:
        if "gpu" in item.keywords and not GPU:
            item.add_marker(skip)


@pytest.fixture(params=["host", "portable"])
def variant(request):
    """host: launchers with a CPU variant run it; portable: they run the GPU kernels' code."""
    from cunet import ops
    ops.set_host_variants(request.param == "host")
    yield request.param
    ops.set_host_variants(True)


@pytest.fixture(params=["loops", "emulated"])
def block_mode(request):
    from cunet import ops
    ops.set_emulate_blocks(request.param == "emulated")
    yield request.param
    ops.set_emulate_blocks(False)


def conv_case(rng, sz, n, ci, co, k):
    """x (n, ci, *sz), w (co, ci, *k) and b (co,), float32 normal draws; k an int or a tuple."""
    kk = (k,) * len(sz) if isinstance(k, int) else tuple(k)
    return (rng.standard_normal((n, ci) + sz).astype(np.float32),
            rng.standard_normal((co, ci) + kk).astype(np.float32), rng.standard_normal(co).astype(np.float32))


def to_device(a, device):
    """numpy array -> the array type of `device` ("cpu" or "cuda")."""
    if device == "cpu":
        return a
    import cupy
    return cupy.asarray(a)


def to_numpy(a):
    if isinstance(a, np.ndarray) or np.isscalar(a):
        return a
    import cupy
    return cupy.asnumpy(a)


# every ops-vs-reference test runs on the host; the cuda copy is marked gpu
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="session")
def crop(tmp_path_factory):
    """A 32 x 32 x 12 crop of real MRI (the MNI template shipped in nilearn: image + 4-class
    labels) as NIfTI files t1.nii.gz and seg.nii.gz, with a shifted affine so the tests see
    it carried through. -> (folder, image, labels, affine)."""
    import nibabel as nib
    from cunet.data import datasets
    d = datasets.tissue()
    cx, cy, cz = 98, 116, 100
    img = d["image"][0, cx - 16:cx + 16, cy - 16:cy + 16, cz - 6:cz + 6]
    lab = d["label"][cx - 16:cx + 16, cy - 16:cy + 16, cz - 6:cz + 6]
    affine = d["affine"].copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([cx - 16, cy - 16, cz - 6])
    root = tmp_path_factory.mktemp("crop")
    nib.save(nib.Nifti1Image(img.astype(np.float32), affine), root / "t1.nii.gz")
    nib.save(nib.Nifti1Image(lab.astype(np.uint8), affine), root / "seg.nii.gz")
    return root, img, lab, affine
