"""The Vagrant lab booted for real, as a user runs it where no box can be downloaded: `make vagrant-up` with
vagrant/settings-local.yml (libvirt; the box made here from Debian's packages; QEMU's emulation where KVM
can't run guests), `make vagrant-deploy` with the repo's group data (a real cluster's: VIPs, the ingress
mesh), the swarm formed and the demo answering through the mesh, a re-run that changes nothing, and
`make vagrant-down` leaving no domain or network behind."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import Run

SETTINGS = str(ROOT / "vagrant" / "settings-local.yml")
ADDRESSES = {"manager1": "192.168.70.11", "worker1": "192.168.70.12"}  # .(10 + k) of its subnet


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
    for node, address in ADDRESSES.items():  # the ingress mesh answers on every node
        deadline = time.monotonic() + 240
        while True:
            try:
                assert get(address, 8080).startswith("hello from "), node
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(5)

    started = time.monotonic()
    again = Run(make("vagrant-deploy"))
    print(f"[figures] vagrant-deploy again: {time.monotonic() - started:.0f} s")
    assert again.returncode == 0 and again.changed == [], again
