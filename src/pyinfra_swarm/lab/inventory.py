"""pyinfra inventory groups for a lab, read from the state file that `pyinfra-swarm lab up` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyinfra_swarm.lab import state

HostList = list[tuple[str, dict[str, Any]]]


def lab_groups(state_dir: Path, user: str = "root") -> dict[str, HostList]:
    """`swarm_managers` and `swarm_workers` for the lab in `state_dir`, as pyinfra (name, data) pairs, and
    `container_lab` with every node of a container lab (its group data does without IPVS, which the host's
    kernel lacks: DNS round robin and host-mode ports); a VM lab's nodes are a real cluster's.

    With a user other than root, operations run through sudo, as on servers that forbid root logins.
    """
    lab = state.load(state_dir)
    containers = not state.is_vm_lab(state_dir)
    groups: dict[str, HostList] = {"swarm_managers": [], "swarm_workers": [], "container_lab": []}
    for node in lab.nodes:
        data: dict[str, Any] = {
            "ssh_hostname": node.address,
            "ssh_user": user,
            "ssh_key": lab.ssh_key,
            # Written by `lab up` from the nodes' own host keys, so host keys are checked strictly.
            "ssh_known_hosts_file": str(state.known_hosts_path(state_dir)),
            "ssh_strict_host_key_checking": "yes",
            "swarm_advertise_addr": node.address,
            "lab_hostname": node.hostname,
        }
        if user != "root":
            data["_sudo"] = True
        groups[f"swarm_{node.role}s"].append((node.node, data))
        if containers:
            groups["container_lab"].append((node.node, {}))
    return groups
