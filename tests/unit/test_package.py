"""The package as installed from a wheel: its own frames count in pyinfra's operation order."""

from __future__ import annotations

import os
from pathlib import Path

import pyinfra.api.util

import pyinfra_swarm


def test_operation_order_counts_this_package_even_beside_pyinfra_in_site_packages():
    pyinfra_dir = pyinfra.api.util.PYINFRA_INSTALL_DIR
    site_packages = Path(pyinfra_dir).parent
    assert pyinfra_swarm.__version__
    assert not str(site_packages / "pyinfra_swarm" / "deploys" / "swarm.py").startswith(pyinfra_dir)
    assert str(site_packages / "pyinfra" / "api" / "operation.py").startswith(pyinfra_dir)
    assert pyinfra_dir.endswith(os.sep)
