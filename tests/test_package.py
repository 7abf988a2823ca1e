"""`import cunet` stays cheap (nothing but the package itself loads) and every subpackage is
reachable from it afterwards (cunet.optim, cunet.nn, ... imported on first access), each
checked in a fresh interpreter so no earlier test's imports hide a missing one."""
import subprocess
import sys

import pytest

import cunet


def _run(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_import_cunet_loads_nothing_else():
    loaded = _run("import sys, cunet; print(' '.join(sorted(m for m in sys.modules "
                  "if m.startswith('cunet') or m.split('.')[0] in ('numpy', 'scipy', 'cupy', 'matplotlib'))))")
    assert loaded.split() == ["cunet"]


@pytest.mark.parametrize("name", ["optim", "losses", "metrics", "train", "data", "infer", "ops", "nn", "evaluate"])
def test_subpackage_reachable_after_import_cunet(name):
    out = _run(f"import sys, cunet\nassert 'cunet.{name}' not in sys.modules\nm = cunet.{name}\n"
               f"assert m is sys.modules['cunet.{name}'] and cunet.{name} is m\nprint(m.__name__)")
    assert out.strip() == f"cunet.{name}"


def test_unknown_attribute_still_raises():
    with pytest.raises(AttributeError, match="no attribute 'optimm'"):
        cunet.optimm
    assert {"optim", "nn", "UNet"} <= set(dir(cunet))
