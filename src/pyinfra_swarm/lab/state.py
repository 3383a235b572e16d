"""A lab's state on the controller: its SSH key pair and the node list that the lab inventory reads."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from pyinfra_swarm.lab.spec import LabError, state_root

STATE_FILE = "lab.json"
VM_FILE = "vm.json"  # a VM lab's bridge, taps, rules and QEMU processes (lab/vm.py)


@dataclass
class NodeState:
    node: str
    hostname: str
    container: str
    role: str
    address: str


@dataclass
class LabState:
    name: str
    subnet: str
    network: str
    ssh_key: str
    nodes: list[NodeState]


def is_vm_lab(state_dir: Path) -> bool:
    return (state_dir / VM_FILE).exists()


def key_path(state_dir: Path) -> Path:
    return state_dir / "id_ed25519"


def key_pair(state_dir: Path) -> Path:
    """The lab's SSH key (made once per lab, never committed: .lab/ is ignored by git)."""
    key = key_path(state_dir)
    if not key.exists():
        if not shutil.which("ssh-keygen"):
            raise LabError("ssh-keygen is missing: install the OpenSSH client (apt-get install openssh-client)")
        state_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"pyinfra-swarm-{state_dir.name}",
                "-f",
                str(key),
            ],
            check=True,
        )
    return key


def known_hosts_path(state_dir: Path) -> Path:
    return state_dir / "known_hosts"


def save_known_hosts(state_dir: Path, keys: dict[str, list[str]]) -> None:
    """known_hosts for the lab's nodes, rewritten on each `lab up` (a recreated node has new host keys)."""
    lines = [f"{address} {key}" for address, host_keys in keys.items() for key in host_keys]
    known_hosts_path(state_dir).write_text("\n".join(lines) + "\n")


def ssh_command(state_dir: Path, user: str, address: str) -> list[str]:
    """The OpenSSH command line that reaches a lab node with the lab's key and known_hosts."""
    return [
        "ssh", "-i", str(key_path(state_dir)),
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts_path(state_dir)}",
        "-o", "BatchMode=yes",
        f"{user}@{address}",
    ]  # fmt: skip


def port_open(address: str, port: int) -> bool:
    """Whether a node's port takes a TCP connection now (sshd up, for `lab up` to wait on)."""
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def authorized_keys_tar(state_dir: Path) -> bytes:
    """A tar holding lab_authorized_keys, for `put_archive` into a node's /etc/ssh."""
    data = key_path(state_dir).with_suffix(".pub").read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("lab_authorized_keys")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def save(state_dir: Path, lab: LabState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(lab), indent=2) + "\n")


def load(state_dir: Path) -> LabState:
    path = state_dir / STATE_FILE
    if not path.exists():
        raise LabError(f"no lab state at {path}: run `pyinfra-swarm lab up --name {state_dir.name}` first")
    raw = json.loads(path.read_text())
    return LabState(**{**raw, "nodes": [NodeState(**node) for node in raw["nodes"]]})


def remove(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)


def remove_all() -> None:
    """Every lab's state; the exported image archives (state_root()/images) are kept."""
    for path in state_root().glob("*"):
        if path.is_dir() and path.name != "images":
            shutil.rmtree(path, ignore_errors=True)
