"""This run on this controller, as the cluster is told about it: who runs what, from where, since when. The
cluster lock records it, and so does the mark on a node that a maintenance turn drained."""

from __future__ import annotations

import datetime
import getpass
import os
import socket
import sys
from functools import cache


@cache
def started() -> str:
    """When this run started (UTC, to the second)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def who() -> str:
    """USER@CONTROLLER (pid N): whoever can read the cluster's state can find this run."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


def what() -> str:
    """What this run runs: the program and the files it was given (`pyinfra inventory/lab.py deploy.py`);
    other arguments are left out, as `--data KEY=VALUE` may hold a secret."""
    files = [arg for arg in sys.argv[1:] if arg.endswith(".py") and not arg.startswith("-")]
    return " ".join([os.path.basename(sys.argv[0]) if sys.argv else "python", *files])
