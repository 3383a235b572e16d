"""The Vagrant inventory, from recorded `vagrant status` / `vagrant ssh-config` / `ip addr` outputs."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import SimpleNamespace

import pytest

from pyinfra_swarm.facts import HostAddresses
from pyinfra_swarm.plan.observe import resolve_address
from pyinfra_swarm.vagrant import SettingsError, load_settings, machine_addresses, vagrant_groups

DATA = Path(__file__).resolve().parent.parent / "data" / "vagrant"
SETTINGS = {"managers": 3, "workers": 2, "box": "debian12", "cpus": 2, "memory": 2048, "subnet": "192.168.56.0/24"}


def _groups(settings=SETTINGS):
    status = (DATA / "status-3m2w.txt").read_text()
    ssh_config = (DATA / "ssh-config-3m2w.txt").read_text()
    return vagrant_groups(settings, status, ssh_config)


def test_three_managers_running_and_a_stopped_worker_left_out():
    groups, notes = _groups()
    assert [name for name, _ in groups["swarm_managers"]] == ["manager1", "manager2", "manager3"]
    assert [name for name, _ in groups["swarm_workers"]] == ["worker1"]
    assert notes == ["worker2 is poweroff: left out (make vagrant-up)"]


def test_ssh_goes_through_the_forwarded_port_and_the_swarm_through_the_private_network():
    groups, _ = _groups()
    _, manager2 = groups["swarm_managers"][1]
    assert (manager2["ssh_hostname"], manager2["ssh_port"], manager2["ssh_user"]) == ("127.0.0.1", 2223, "vagrant")
    assert manager2["ssh_key"].endswith("/machines/manager2/virtualbox/private_key")
    assert manager2["_sudo"] is True
    assert manager2["swarm_advertise_addr"] == "192.168.56.12"
    _, worker1 = groups["swarm_workers"][0]
    assert worker1["ssh_key"] == "/home/user/pyinfra-swarm/vagrant/.vagrant/machines/worker1/virtualbox/private_key"
    assert worker1["swarm_advertise_addr"] == "192.168.56.14"
    assert all(data["swarm_advertise_addr"] != "10.0.2.15" for _, data in groups["swarm_managers"])
    # Overlay subnets stay clear of VirtualBox's NAT network (10.0.2.0/24 on every VM).
    pool = ipaddress.ip_network(worker1["swarm_default_addr_pool"][0])
    assert not pool.overlaps(ipaddress.ip_network("10.0.2.0/24"))


def test_address_plan_follows_the_subnet():
    assert machine_addresses({**SETTINGS, "subnet": "192.168.57.0/24", "managers": 1, "workers": 1}) == {
        "manager1": "192.168.57.11",
        "worker1": "192.168.57.12",
    }


@pytest.mark.parametrize(
    ("recorded", "address", "interface"),
    [
        ("ip-addr-debian12-eth1.txt", "192.168.56.11", "eth1"),
        ("ip-addr-ubuntu2404-enp0s8.txt", "192.168.56.14", "enp0s8"),
    ],
)
def test_advertise_address_is_on_the_private_interface_whatever_its_name(recorded, address, interface):
    """The swarm checks the advertise address is on the VM: eth1 on Debian boxes, enp0s8 on Ubuntu ones."""
    interfaces = HostAddresses().process((DATA / recorded).read_text().splitlines())
    assert address in interfaces[interface]
    assert "10.0.2.15" not in interfaces[interface]

    for value in (address, interface):
        vm = SimpleNamespace(name="vm", data={"swarm_advertise_addr": value})
        assert resolve_address(vm, interfaces) == address


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("managers: 0\nworkers: 1\ncpus: 1\nmemory: 1024\n", "managers: must be a whole number >= 1, not 0"),
        ("managers: 1\nworkers: -2\ncpus: 1\nmemory: 1024\n", "workers: must be a whole number >= 0, not -2"),
        ("managers: 1\nworkers: 1\ncpus: 1\nmemory: 1024\nbox: arch\n", "box: unknown box 'arch'"),
        ("managers: 1\nworkers: 1\ncpus: 1\nmemory: 1024\nsubnet: 10.1.0.0/24\n", "outside 192.168.56.0/21"),
        ("managers: 1\nworkers: 1\ncpus: 1\nmemory: 1024\ncolour: red\n", "colour: unknown setting"),
        (
            "managers: 1\nworkers: 1\ncpus: 1\nmemory: 1024\nbox: debian12-local\n",
            "debian12-local is a libvirt box, not one for virtualbox",
        ),
    ],
)
def test_bad_settings_name_the_key(tmp_path, content, message):
    path = tmp_path / "settings.yml"
    path.write_text(content)
    with pytest.raises(SettingsError, match=message):
        load_settings(path)


def test_the_shipped_settings_file_is_valid():
    settings = load_settings(Path(__file__).resolve().parents[2] / "vagrant" / "settings.yml")
    assert settings["managers"] >= 1
