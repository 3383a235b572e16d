"""Host limits that many systemd nodes on one kernel run into, checked before nodes start.

Every node's systemd, journald and dockerd take inotify instances, and the kernel counts them per user
across the whole host (`fs.inotify.max_user_instances`, 128 on Debian): past it, new nodes' systemd exits
at boot (exit 255, nothing in `docker logs`). Measured here: about 8 instances per booted node.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pyinfra_swarm.lab.spec import LabError

INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
PER_NODE = 12  # instances a node takes, with room (measured: 8 when booted, more while booting)
RAISED = 1024


def inotify_in_use(proc: Path = Path("/proc")) -> int:
    """inotify instances held by root's processes on this host (the containers' root is the host's)."""
    count = 0
    for fd_dir in proc.glob("[0-9]*/fd"):
        try:
            if fd_dir.parent.stat().st_uid != 0:
                continue
            count += sum(1 for fd in fd_dir.iterdir() if fd.readlink().name == "anon_inode:inotify")
        except OSError:  # the process ended, or isn't ours to read
            continue
    return count


def ensure_inotify(new_nodes: int, progress: Callable[[str], None], limit_file: Path = INSTANCES,
                   in_use: int | None = None) -> None:  # fmt: skip
    """Make room for `new_nodes` more nodes: raise the limit where we may (root), else say what to run."""
    if new_nodes <= 0 or not limit_file.exists():
        return
    limit = int(limit_file.read_text())
    used = inotify_in_use() if in_use is None else in_use
    needed = used + PER_NODE * new_nodes
    if needed <= limit:
        return
    wanted = max(RAISED, needed * 2)
    reason = (f"{new_nodes} more nodes need about {PER_NODE * new_nodes} inotify instances; {used} of "
              f"{limit} (fs.inotify.max_user_instances) are in use")  # fmt: skip
    try:
        limit_file.write_text(f"{wanted}\n")
    except OSError as exc:
        raise LabError(
            f"{reason}: nodes would die at boot (systemd exits 255). Raise the limit first: "
            f"sudo sysctl fs.inotify.max_user_instances={wanted} ({exc.strerror})"
        ) from exc
    progress(f"raised fs.inotify.max_user_instances from {limit} to {wanted}: {reason}")
