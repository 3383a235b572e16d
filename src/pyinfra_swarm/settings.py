"""Every setting the deploys read from host and group data, with its default, and the checks that reject bad
input before anything on any host changes. Errors name the host and the key."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pyinfra.api import Host, State
from pyinfra.api.exceptions import DeployError

MANAGERS = "swarm_managers"
WORKERS = "swarm_workers"

DEFAULTS: dict[str, Any] = {
    # Install: `docker-ce` (Docker's apt/dnf repository) or `distro` (docker.io from Debian/Ubuntu).
    "docker_source": "docker-ce",
    "docker_version": None,  # a package version to pin, e.g. "5:27.3.1-1~debian.12~bookworm" or "20.10.24*"
    "docker_ce_repo_url": "https://download.docker.com/linux",
    "docker_ce_channel": "stable",
    "docker_users": [],  # existing users added to the docker group
    # /etc/docker/daemon.json, passed through as is (after type checks of the keys listed in DAEMON_KEY_TYPES).
    "docker_daemon_config": {"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}},
    # Firewall: auto | ufw | firewalld | iptables | nftables | none.
    "swarm_firewall": "auto",
    "swarm_firewall_policy": "deny",  # deny: refuse all inbound but the allow list and swarm peers
    "swarm_firewall_allow": ["22/tcp"],  # open to everyone (the SSH port pyinfra uses is always added)
    "swarm_encrypted_overlays": False,  # opens ESP (IP protocol 50) between peers
    # Swarm membership.
    "swarm_advertise_addr": None,  # this node's IP (or interface name) that other nodes reach it on
    "swarm_default_addr_pool": [],  # CIDRs for overlay subnets, e.g. ["10.20.0.0/16"]
    "swarm_default_addr_pool_mask_length": None,  # e.g. 24
    "swarm_data_path_port": 4789,  # VXLAN port
    "swarm_availability": "active",  # active | pause | drain
    "swarm_labels": {},  # node labels, e.g. {"zone": "a"}
    "swarm_force_rejoin": False,  # leave a different swarm and join this one
    "swarm_bootstrap": False,  # init a new swarm even though some managers of the inventory weren't reached
    "swarm_data_path_addr": None,  # IP or interface for overlay (VXLAN) traffic; default: the advertise address
    # Registry: "service" (a swarm service pinned to registry_node), "host" (Debian's docker-registry package
    # on registry_node) or None (no registry).
    "registry_mode": None,
    "registry_node": None,  # inventory name of the host it runs on (default: the first manager)
    "registry_port": 5000,
    "registry_image": "registry:2",  # service mode
    "registry_build": None,  # service mode: a context directory to build the registry image from, on its node
    "registry_tls": True,  # False: plain HTTP, written into every node's insecure-registries
    "registry_users": {},  # htpasswd users {user: password}; empty: one user with a password made on the controller
    "registry_anonymous": False,  # True: no auth at all (anyone who reaches the port may push)
    # Images: archives uploaded and `docker load`ed where they are missing, and images built on a manager
    # from a context directory and pushed to the registry.
    "docker_image_archives": [],  # [{"image": "debian:bookworm", "archive": "path.tar", "group": "all"}]
    "docker_images": [],  # [{"name": "app", "context": "images/app", "tag": "1"}]
    # Swarm objects and stacks (created from a manager).
    "swarm_networks": {},  # {name: {"attachable": True, "subnet": "10.30.0.0/24", "mtu": 1450, "encrypted": False}}
    "swarm_secrets": {},  # {name: {"file": "path"} or {"value": "..."}}
    "swarm_configs": {},  # same as secrets
    "swarm_stacks": [],  # [{"name": "demo", "template": "demo.yml.j2", "state": "present", "vars": {}, "timeout": 180}]
    "swarm_stacks_dir": "templates/stacks",
    "stack_vars": {},  # variables for every stack template
}

SOURCES = ("docker-ce", "distro")
FIREWALLS = ("auto", "ufw", "firewalld", "iptables", "nftables", "none")
AVAILABILITIES = ("active", "pause", "drain")
PORT_RE = re.compile(r"^(\d{1,5})(?::(\d{1,5}))?/(tcp|udp)$")
INTERFACE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.@-]{0,14}$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# daemon.json keys whose value type is checked; other keys pass through unchecked.
DAEMON_KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    "insecure-registries": list,
    "registry-mirrors": list,
    "log-driver": str,
    "log-level": str,
    "log-opts": dict,
    "default-address-pools": list,
    "mtu": int,
    "metrics-addr": str,
    "live-restore": bool,
    "debug": bool,
    "experimental": bool,
    "max-concurrent-downloads": int,
    "max-concurrent-uploads": int,
    "storage-driver": str,
    "data-root": str,
    "labels": list,
    "dns": list,
    "features": dict,
    "iptables": bool,
    "ip-forward": bool,
    "userland-proxy": bool,
    "shutdown-timeout": int,
}


def setting(host: Host, key: str) -> Any:
    """A host's value for `key`, or its default: usable for any host, not only the one being deployed."""
    value = host.data.get(key)
    return DEFAULTS[key] if value is None else value


def is_manager(host: Host) -> bool:
    return MANAGERS in host.groups


def swarm_hosts(state: State) -> list[Host]:
    """Every inventory host in a swarm group, managers first, in inventory order."""
    managers = list(state.inventory.get_group(MANAGERS, []))
    return managers + [h for h in state.inventory.get_group(WORKERS, []) if h not in managers]


def validate_inventory(state: State) -> None:
    """Check the inventory and every host's data; raise one DeployError listing every problem."""
    errors: list[str] = []
    managers = list(state.inventory.get_group(MANAGERS, []))
    workers = list(state.inventory.get_group(WORKERS, []))
    if not managers:
        errors.append(f"inventory: no hosts in group {MANAGERS}: a swarm needs at least one manager")
    for host in managers:
        if host in workers:
            errors.append(f"inventory: host {host.name} is in both {MANAGERS} and {WORKERS}: pick one role")
    addresses: dict[str, str] = {}
    for host in managers + [h for h in workers if h not in managers]:
        errors += [f"host {host.name}: {problem}" for problem in validate_host_data(host)]
        address = host.data.get("swarm_advertise_addr")
        if isinstance(address, str) and _looks_like_ip(address):
            if address in addresses:
                errors.append(
                    f"host {host.name}: swarm_advertise_addr {address} is also the address of "
                    f"{addresses[address]}: every node needs its own"
                )
            addresses.setdefault(address, host.name)
    if errors:
        raise DeployError("bad inventory or group data:\n  " + "\n  ".join(errors))


def validate_host_data(host: Host) -> list[str]:
    """Problems with one host's data, each naming its key."""
    problems: list[str] = []
    address = host.data.get("swarm_advertise_addr")
    if address is None or address == "":
        problems.append(
            "swarm_advertise_addr is missing: set it (group_data or host data) to the IP address, or the "
            "interface name, other nodes reach this host on"
        )
    elif not isinstance(address, str):
        problems.append(f"swarm_advertise_addr must be a string, not {type(address).__name__}")
    elif _looks_like_ip(address):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            problems.append(f"swarm_advertise_addr {address!r} is not a valid IP address")
        else:
            if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
                problems.append(f"swarm_advertise_addr {address} can't be reached from other nodes")
    elif not INTERFACE_RE.match(address):
        problems.append(f"swarm_advertise_addr {address!r} is neither an IP address nor an interface name")
    data_path = setting(host, "swarm_data_path_addr")
    if data_path is not None and not (
        isinstance(data_path, str) and (_is_ip(data_path) or INTERFACE_RE.match(data_path))
    ):
        problems.append(f"swarm_data_path_addr {data_path!r} is neither an IP address nor an interface name")

    source = setting(host, "docker_source")
    if source not in SOURCES:
        problems.append(f"docker_source {source!r} is unknown: use one of {', '.join(SOURCES)}")
    firewall = setting(host, "swarm_firewall")
    if firewall is False:
        firewall = "none"
    if firewall not in FIREWALLS:
        problems.append(f"swarm_firewall {firewall!r} is unknown: use one of {', '.join(map(str, FIREWALLS))}")
    if setting(host, "swarm_firewall_policy") not in ("deny", "allow"):
        problems.append("swarm_firewall_policy must be 'deny' or 'allow'")
    allow = setting(host, "swarm_firewall_allow")
    if not isinstance(allow, list) or not all(isinstance(p, str) and _valid_port(p) for p in allow):
        problems.append(
            f"swarm_firewall_allow must be a list like ['22/tcp', '8000:8100/tcp'] with ports from 1 to 65535, "
            f"not {allow!r}"
        )
    availability = setting(host, "swarm_availability")
    if availability not in AVAILABILITIES:
        problems.append(f"swarm_availability {availability!r} is unknown: use one of {', '.join(AVAILABILITIES)}")
    labels = setting(host, "swarm_labels")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and LABEL_KEY_RE.match(k) and isinstance(v, (str, int, float, bool))
        for k, v in labels.items()
    ):
        problems.append(f"swarm_labels must map label names to plain values, not {labels!r}")
    port = setting(host, "swarm_data_path_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1024 <= port <= 49151:
        problems.append(f"swarm_data_path_port must be a port number from 1024 to 49151, not {port!r}")
    pools = setting(host, "swarm_default_addr_pool")
    if not isinstance(pools, list) or not all(_is_cidr(pool) for pool in pools):
        problems.append(f"swarm_default_addr_pool must be a list of CIDRs like ['10.20.0.0/16'], not {pools!r}")
    mask = setting(host, "swarm_default_addr_pool_mask_length")
    if mask is not None and (not isinstance(mask, int) or isinstance(mask, bool) or not 8 <= mask <= 30):
        problems.append(f"swarm_default_addr_pool_mask_length must be a number from 8 to 30, not {mask!r}")
    if not isinstance(setting(host, "docker_users"), list):
        problems.append("docker_users must be a list of user names")
    problems += validate_daemon_config(setting(host, "docker_daemon_config"))
    problems += validate_workload_data(host)
    return problems


def validate_workload_data(host: Host) -> list[str]:
    """Problems with the registry, image, object and stack settings (the files they name are checked when
    they are read, still before anything changes)."""
    problems = []
    if setting(host, "registry_mode") not in (None, "service", "host"):
        problems.append(f"registry_mode {setting(host, 'registry_mode')!r} is unknown: use service, host or None")
    port = setting(host, "registry_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        problems.append(f"registry_port must be a port number, not {port!r}")
    users = setting(host, "registry_users")
    if not isinstance(users, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in users.items()):
        problems.append("registry_users must map user names to passwords (strings)")
    for index, entry in enumerate(setting(host, "docker_image_archives")):
        if not isinstance(entry, dict) or not entry.get("image") or not entry.get("archive"):
            problems.append(f"docker_image_archives[{index}] needs an image and an archive path")
    for index, entry in enumerate(setting(host, "docker_images")):
        if not isinstance(entry, dict) or not all(entry.get(k) for k in ("name", "context", "tag")):
            problems.append(f"docker_images[{index}] needs a name, a context directory and a tag")
    for key in ("swarm_secrets", "swarm_configs"):
        for name, source in (setting(host, key) or {}).items():
            if not isinstance(source, dict) or len({"file", "value"} & set(source)) != 1:
                problems.append(f"{key}[{name!r}] needs exactly one of file or value")
    for index, stack in enumerate(setting(host, "swarm_stacks")):
        if not isinstance(stack, dict) or not stack.get("name") or not stack.get("template"):
            problems.append(f"swarm_stacks[{index}] needs a name and a template")
        elif stack.get("state", "present") not in ("present", "absent"):
            problems.append(f"swarm_stacks[{index}] ({stack['name']}): state must be present or absent")
    return problems


def validate_daemon_config(config: Any) -> list[str]:
    if not isinstance(config, dict):
        return [f"docker_daemon_config must be a mapping of daemon.json options, not {type(config).__name__}"]
    problems = []
    for key, expected in DAEMON_KEY_TYPES.items():
        if key in config and not _has_type(config[key], expected):
            names = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
            problems.append(
                f"docker_daemon_config[{key!r}] must be a {names}, not {type(config[key]).__name__} ({config[key]!r})"
            )
    if config.get("live-restore") is True:
        problems.append(
            "docker_daemon_config['live-restore'] is true, which Docker does not support in swarm mode: remove it"
        )
    for pool in config.get("default-address-pools") or []:
        if not isinstance(pool, dict) or not _is_cidr(pool.get("base")) or not isinstance(pool.get("size"), int):
            problems.append(
                f"docker_daemon_config['default-address-pools'] entries need a CIDR 'base' and an int 'size', "
                f"not {pool!r}"
            )
    return problems


def _has_type(value: Any, expected: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) and expected is int:
        return False
    return isinstance(value, expected)


def _valid_port(spec: str) -> bool:
    """'80/tcp' or '8000:8100/udp' with every number from 1 to 65535 and a range in order."""
    match = PORT_RE.match(spec)
    if not match:
        return False
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    return 1 <= first <= last <= 65535


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _looks_like_ip(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+", value)) or ":" in value


def _is_cidr(value: Any) -> bool:
    try:
        ipaddress.ip_network(value, strict=True)
    except (TypeError, ValueError):
        return False
    return True
