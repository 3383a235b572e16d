"""pyinfra-swarm: turn plain Linux machines into a secure Docker Swarm cluster with pyinfra."""

import os

import pyinfra.api.util

__version__ = "0.1.0"

# pyinfra orders operations by the line numbers of the calls that led to them, leaving out frames whose file
# path starts with its own install directory (".../site-packages/pyinfra"). Installed from a wheel, this
# package lives in ".../site-packages/pyinfra_swarm", which starts with the same text: every call inside it
# would be left out, and operations of different steps (a manager's init, a worker's join) would share one
# order. A trailing separator makes the check match pyinfra's own directory only.
if not pyinfra.api.util.PYINFRA_INSTALL_DIR.endswith(os.sep):
    pyinfra.api.util.PYINFRA_INSTALL_DIR += os.sep
