"""The Vagrant lab's inventory: VMs from `vagrant status` and `vagrant ssh-config`, put in the swarm groups
by name, each advertising its private-network address (never the NAT one, 10.0.2.15 on every VM)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

BOXES = ("debian12", "ubuntu2404", "debian12-local")
# The boxes made on this machine (`pyinfra-swarm vagrant box`, libvirt only): key -> (box name, Debian release).
LOCAL_BOXES = {"debian12-local": ("pyinfra-swarm/debian12", "bookworm")}
PROVIDERS = ("virtualbox", "libvirt")
VIRTUALBOX_RANGE = ipaddress.IPv4Network("192.168.56.0/21")
KNOWN = ("managers", "workers", "box", "provider", "cpus", "memory", "subnet")
HostList = list[tuple[str, dict[str, Any]]]


class SettingsError(ValueError):
    """A settings.yml problem, naming the file and key."""


def load_settings(path: Path) -> dict[str, Any]:
    """settings.yml, checked like the Vagrantfile checks it (the same keys, the same messages)."""
    try:
        settings = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: {exc}") from None
    if not isinstance(settings, dict):
        raise SettingsError(f"{path}: (file): must be a mapping of settings")
    for key in settings:
        if key not in KNOWN:
            raise SettingsError(f"{path}: {key}: unknown setting (known: {', '.join(KNOWN)})")
    for key, minimum in (("managers", 1), ("workers", 0), ("cpus", 1), ("memory", 512)):
        value = settings.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise SettingsError(f"{path}: {key}: must be a whole number >= {minimum}, not {value!r}")
    if settings.get("box", "debian12") not in BOXES:
        raise SettingsError(f"{path}: box: unknown box {settings.get('box')!r} (known: {', '.join(BOXES)})")
    try:
        subnet = ipaddress.IPv4Network(str(settings.get("subnet", "192.168.56.0/24")))
    except ValueError as exc:
        raise SettingsError(f"{path}: subnet: {exc}") from None
    if subnet.prefixlen != 24:
        raise SettingsError(f"{path}: subnet: {subnet} must be a /24")
    provider = settings.get("provider", "virtualbox")
    if provider not in PROVIDERS:
        raise SettingsError(f"{path}: provider: unknown provider {provider!r} (known: {', '.join(PROVIDERS)})")
    if settings.get("box") in LOCAL_BOXES and provider != "libvirt":
        raise SettingsError(f"{path}: box: {settings['box']} is a libvirt box, not one for {provider}")
    if provider == "virtualbox" and not subnet.subnet_of(VIRTUALBOX_RANGE):
        raise SettingsError(f"{path}: subnet: {subnet} is outside 192.168.56.0/21, the only range VirtualBox allows")
    if not subnet.is_private:
        raise SettingsError(f"{path}: subnet: {subnet} is not a private (RFC 1918) range")
    return settings


def machine_addresses(settings: dict[str, Any]) -> dict[str, str]:
    """VM name -> private address: VM k (managers first, then workers, from 1) gets .(10 + k)."""
    names = [f"manager{i}" for i in range(1, settings["managers"] + 1)]
    names += [f"worker{i}" for i in range(1, settings["workers"] + 1)]
    base = ipaddress.IPv4Network(str(settings.get("subnet", "192.168.56.0/24"))).network_address
    return {name: str(base + 10 + index) for index, name in enumerate(names, start=1)}


def parse_status(output: str) -> dict[str, str]:
    """`vagrant status --machine-readable` -> {VM name: state}."""
    states = {}
    for line in output.splitlines():
        fields = line.split(",")
        if len(fields) >= 4 and fields[2] == "state" and fields[1]:
            states[fields[1]] = fields[3]
    return states


def parse_ssh_config(output: str) -> dict[str, dict[str, str]]:
    """`vagrant ssh-config` -> {VM name: {option: value}}."""
    hosts: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in output.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "Host":
            current = hosts.setdefault(value.strip(), {})
        elif key and current is not None:
            current[key] = value.strip().strip('"')
    return hosts


VAGRANT_ADDR_POOL = "10.128.0.0/16"


def vagrant_groups(settings: dict[str, Any], status: str, ssh_config: str) -> tuple[dict[str, HostList], list[str]]:
    """(groups for pyinfra, notes about VMs left out): running VMs of the settings, in their swarm group."""
    addresses = machine_addresses(settings)
    states = parse_status(status)
    ssh = parse_ssh_config(ssh_config)
    groups: dict[str, HostList] = {"swarm_managers": [], "swarm_workers": []}
    notes = []
    for name, address in addresses.items():
        if states.get(name) != "running" or name not in ssh:
            notes.append(f"{name} is {states.get(name, 'not created')}: left out (make vagrant-up)")
            continue
        config = ssh[name]
        data = {
            "ssh_hostname": config["HostName"],
            "ssh_port": int(config.get("Port", 22)),
            "ssh_user": config.get("User", "vagrant"),
            "ssh_key": config["IdentityFile"],
            # Vagrant VMs get new host keys when recreated, and are reached through a forwarded local port.
            "ssh_known_hosts_file": "/dev/null",
            "ssh_strict_host_key_checking": "no",
            "_sudo": True,
            "swarm_advertise_addr": address,
            # Swarm's default pool, 10.0.0.0/8, overlaps the 10.0.2.0/24 NAT network every VirtualBox VM has.
            "swarm_default_addr_pool": [VAGRANT_ADDR_POOL],
        }
        groups["swarm_managers" if name.startswith("manager") else "swarm_workers"].append((name, data))
    return groups, notes


def read_vagrant(vagrant_dir: Path) -> tuple[str, str]:
    """The outputs of `vagrant status --machine-readable` and `vagrant ssh-config` in vagrant_dir."""
    status = subprocess.run(["vagrant", "status", "--machine-readable"], cwd=vagrant_dir, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    running = [name for name, state in parse_status(status).items() if state == "running"]
    if not running:
        return status, ""
    ssh_config = subprocess.run(["vagrant", "ssh-config", *running], cwd=vagrant_dir, capture_output=True,
                                text=True, check=True).stdout  # fmt: skip
    return status, ssh_config


def inventory(vagrant_dir: Path, settings_file: Path) -> dict[str, HostList]:
    """The groups of the Vagrant lab in vagrant_dir; notes about left-out VMs go to stderr."""
    settings = load_settings(settings_file)
    groups, notes = vagrant_groups(settings, *read_vagrant(vagrant_dir))
    for note in notes:
        print(f"pyinfra-swarm: vagrant: {note}", file=sys.stderr)
    return groups


if __name__ == "__main__":  # `python -m pyinfra_swarm.vagrant SETTINGS`: its provider and box (for the Makefile)
    try:
        checked = load_settings(Path(sys.argv[1]))
    except SettingsError as exc:
        sys.exit(f"pyinfra-swarm: {exc}")
    print(checked.get("provider", "virtualbox"), checked.get("box", "debian12"))
