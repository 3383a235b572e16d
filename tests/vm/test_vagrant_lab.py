"""The Vagrant lab booted for real, as a user runs it where no box can be downloaded: `make vagrant-up` with
vagrant/settings-local.yml (libvirt; the box made here from Debian's packages; QEMU's emulation where KVM
can't run guests), `make vagrant-deploy` with the repo's group data (a real cluster's: VIPs, the ingress
mesh), the swarm formed and the demo answering through the mesh, a re-run that changes nothing, and
`make vagrant-down` leaving no domain or network behind. Then the swarm walkthrough's steps (a service with 3
replicas published on a port, scaled to 5, removed) as stack data and deploys, each checked."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, ROOT
from tests.e2e.conftest import Run

SETTINGS = str(ROOT / "vagrant" / "settings-local.yml")
ADDRESSES = {"manager1": "192.168.70.11", "worker1": "192.168.70.12"}  # .(10 + k) of its subnet
# `docker service create --replicas 3 --publish 8088:8080 demo-app`, as a stack.
WALKTHROUGH = """version: "3.8"
services:
  web:
    image: "{{ registry }}/demo-app:1"
    hostname: "{{ '{{.Node.Hostname}}' }}"
    environment:
      GREETING: walkthrough
    ports:
      - target: 8080
        published: 8088
    deploy:
      replicas: {{ replicas }}
"""


ENV = {**os.environ, "PYINFRA_SWARM_VAGRANT_SETTINGS": SETTINGS}


def make(target: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", target], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def virsh(*args: str) -> list[str]:
    result = subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True)
    return sorted(line.strip() for line in result.stdout.splitlines() if line.strip())


def on_manager(command: str) -> str:
    result = subprocess.run(["vagrant", "ssh", "manager1", "-c", command], cwd=ROOT / "vagrant", env=ENV,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def get(address: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{address}:{port}/", timeout=10) as response:
        return response.read().decode().strip()


def answers_everywhere(port: int, greeting: str, timeout: float = 240) -> None:
    """Every node's `port` answers `greeting from NODE` (the ingress mesh, whichever node runs a replica)."""
    for node, address in ADDRESSES.items():
        deadline = time.monotonic() + timeout
        while True:
            try:
                assert get(address, port).startswith(f"{greeting} from "), node
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(5)


@pytest.fixture(scope="module")
def vagrant_lab() -> Iterator[dict[str, list[str]]]:
    up = make("vagrant-up")  # installs what's missing, starts libvirtd: virsh answers only after this
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    yield {"up": [up.stdout + up.stderr]}
    down = make("vagrant-down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [name for name in virsh("list", "--all", "--name") if name.startswith("vagrant_")]
    assert virsh("net-list", "--name") == [], "vagrant-libvirt's networks outlived the lab"


def test_the_vagrant_lab_round(vagrant_lab: dict[str, list[str]]):
    assert "the Vagrant lab is up" in vagrant_lab["up"][0]
    started = time.monotonic()
    cold = Run(make("vagrant-deploy"))
    print(f"\n[figures] vagrant-deploy on 1+1 VMs, cold: {time.monotonic() - started:.0f} s")
    assert cold.returncode == 0, cold
    assert "kernel of every host has: VXLAN, IPVS, ESP, GCM, bridge netfilter" in cold.output, cold

    listing = on_manager("sudo docker node ls --format '{{.Hostname}} {{.Status}} {{.ManagerStatus}}'")
    assert sorted(line.strip() for line in listing.splitlines()) == ["manager1 Ready Leader", "worker1 Ready"]
    # Both on the private network, not on libvirt's management network that SSH goes through.
    assert on_manager("sudo docker info --format '{{.Swarm.NodeAddr}}'").strip() == ADDRESSES["manager1"]
    assert on_manager("sudo docker node inspect --format '{{.Status.Addr}}' worker1").strip() == ADDRESSES["worker1"]
    modes = on_manager("sudo docker service inspect --format '{{.Endpoint.Spec.Mode}} {{len .Endpoint.Ports}}' "
                       "demo_web")  # fmt: skip
    assert modes.strip() == "vip 1", modes  # the repo's group data: a real cluster's, not the container lab's
    answers_everywhere(8080, "hello")

    started = time.monotonic()
    again = Run(make("vagrant-deploy"))
    print(f"[figures] vagrant-deploy again: {time.monotonic() - started:.0f} s")
    assert again.returncode == 0 and again.changed == [], again


def test_the_walkthrough_as_deploys(vagrant_lab: dict[str, list[str]], tmp_path: Path):
    stacks = tmp_path / "stacks"
    shutil.copytree(ROOT / "templates" / "stacks", stacks)
    (stacks / "walkthrough.yml.j2").write_text(WALKTHROUGH)
    demo = {"name": "demo", "template": "demo.yml.j2", "timeout": 180,
            "vars": {"demo_version": "1", "greeting": "hello", "web_replicas": 3, "web_port": 8080}}  # fmt: skip

    def deploy(walkthrough: dict) -> Run:
        folder = tmp_path / "group_data"
        folder.mkdir(exist_ok=True)
        data = {"swarm_stacks_dir": str(stacks), "swarm_stacks": [demo, {"name": "walkthrough",
                "template": "walkthrough.yml.j2", "timeout": 300, **walkthrough}],
                "swarm_firewall_allow": ["22/tcp", "8080/tcp", "8088/tcp"]}  # fmt: skip
        (folder / "all.py").write_text("".join(f"{key} = {value!r}\n" for key, value in data.items()))
        command = [str(BIN / "pyinfra"), "-y", "--group-data", str(folder), "inventory/vagrant.py", "deploy.py"]
        return Run(subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1200))

    def replicas() -> str:
        return on_manager("sudo docker service ls --filter name=walkthrough_ --format '{{.Name}} {{.Replicas}}'")

    create = deploy({"vars": {"replicas": 3}})
    assert create.returncode == 0 and "Stacks | Deploy stack walkthrough" in create.changed, create
    assert replicas().split() == ["walkthrough_web", "3/3"]
    answers_everywhere(8088, "walkthrough")

    scale = deploy({"vars": {"replicas": 5}})
    assert scale.returncode == 0 and "Stacks | Deploy stack walkthrough" in scale.changed, scale
    assert replicas().split() == ["walkthrough_web", "5/5"]
    answers_everywhere(8088, "walkthrough")

    remove = deploy({"vars": {"replicas": 5}, "state": "absent"})
    assert remove.returncode == 0 and "Stacks | Remove stack walkthrough" in remove.changed, remove
    assert replicas().strip() == ""
    for address in ADDRESSES.values():  # the mesh lets go of the port once the service is gone
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                get(address, 8088)
            except OSError:
                break
            time.sleep(3)
        with pytest.raises(OSError):
            get(address, 8088)
