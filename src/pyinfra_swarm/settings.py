"""Every setting the deploys read from host and group data, declared once (SCHEMA): default, type, allowed
values, scope and meaning. Defaults, the deploys' `data_defaults`, the checks that reject bad input before
anything on any host changes, and the README's settings tables all come from it (`python -m
pyinfra_swarm.settings` prints the tables). Errors name the host and the key."""

from __future__ import annotations

import difflib
import ipaddress
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra.api import Host, State
from pyinfra.api.exceptions import DeployError

from pyinfra_swarm.pki import pki_dir

MANAGERS = "swarm_managers"
WORKERS = "swarm_workers"
PREFIXES = ("swarm_", "docker_", "registry_")  # data keys with these prefixes must be settings
PORT_RE = re.compile(r"^(\d{1,5})(?::(\d{1,5}))?/(tcp|udp)$")
INTERFACE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.@-]{0,14}$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Check = Callable[[Any], "str | None"]  # a value's problem, or None


@dataclass(frozen=True)
class Setting:
    """One key of host or group data."""

    key: str
    default: Any
    types: tuple[type, ...]  # what the value may be (None is always allowed where the default is None)
    meaning: str  # one line for the README
    table: str  # README table: "swarm" or "workloads"
    scope: str = "host"  # "host": may differ per host; "cluster": must be the same on every host
    choices: tuple[Any, ...] = ()
    check: Check | None = None
    shown_default: str | None = None  # how the README shows the default, when repr() doesn't read well
    secret: bool = False  # its values may hold secrets: errors name the key, never a value


def _cidr(value: Any) -> bool:
    try:
        ipaddress.ip_network(value, strict=True)
    except (TypeError, ValueError):
        return False
    return True


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _looks_like_ip(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+", value)) or ":" in value


def _valid_port(spec: str) -> bool:
    """'80/tcp' or '8000:8100/udp' with every number from 1 to 65535 and a range in order."""
    match = PORT_RE.match(spec)
    if not match:
        return False
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    return 1 <= first <= last <= 65535


def _port_number(low: int, high: int, what: str = "a port number") -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not low <= value <= high:
            return f"must be {what} from {low} to {high}, not {value!r}"
        return None

    return check


def _advertise_addr(value: Any) -> str | None:
    if value == "":
        return "is empty: set it to the IP address, or the interface name, other nodes reach this host on"
    if _looks_like_ip(value):
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return f"{value!r} is not a valid IP address"
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
            return f"{value} can't be reached from other nodes"
        if ip.version == 6:
            return f"{value} is an IPv6 address: pyinfra-swarm supports IPv4 only (use the host's IPv4 address)"
        return None
    if not INTERFACE_RE.match(value):
        return f"{value!r} is neither an IP address nor an interface name"
    return None


def _data_path_addr(value: Any) -> str | None:
    if is_ip(value) and ipaddress.ip_address(value).version == 6:
        return f"{value} is an IPv6 address: pyinfra-swarm supports IPv4 only (use the host's IPv4 address)"
    if is_ip(value) or INTERFACE_RE.match(value):
        return None
    return f"{value!r} is neither an IP address nor an interface name"


def _firewall_allow(value: Any) -> str | None:
    if all(isinstance(port, str) and _valid_port(port) for port in value):
        return None
    return f"must be a list like ['22/tcp', '8000:8100/tcp'] with ports from 1 to 65535, not {value!r}"


OWN_PREFIX = "pyinfra-swarm."  # labels, configs and stacks of this name are the deploy's own


def _labels(value: Any) -> str | None:
    if not all(isinstance(k, str) and LABEL_KEY_RE.match(k) and isinstance(v, (str, int, float, bool)) for k, v in
               value.items()):  # fmt: skip
        return f"must map label names to plain values, not {value!r}"
    own = sorted(k for k in value if k.startswith(OWN_PREFIX))
    if own:
        return f"{', '.join(own)}: labels starting with {OWN_PREFIX} are the deploy's own (pick another name)"
    return None


def _pools(value: Any) -> str | None:
    if all(_cidr(pool) for pool in value):
        return None
    return f"must be a list of CIDRs like ['10.20.0.0/16'], not {value!r}"


def _data_path_port(value: Any) -> str | None:
    problem = _port_number(1024, 49151)(value)
    if problem is None and value in (2377, 7946):
        return f"{value} is one of the swarm's own ports (2377/tcp management, 7946 gossip): the default is 4789"
    return problem


NETWORK_OPTIONS = {"attachable": bool, "encrypted": bool, "subnet": str, "mtu": int}


def _networks(value: Any) -> str | None:
    for name, options in value.items():
        if not isinstance(options, dict):
            return f"[{name!r}] must be a mapping of options ({', '.join(NETWORK_OPTIONS)}), not {options!r}"
        for key, option in options.items():
            expected = NETWORK_OPTIONS.get(key)
            if expected is None:
                return f"[{name!r}]: unknown option {key!r} (known: {', '.join(NETWORK_OPTIONS)})"
            if not _has_type(option, expected) or (key == "subnet" and not _cidr(option)):
                return (
                    f"[{name!r}][{key!r}] {option!r} is not a valid {'CIDR' if key == 'subnet' else expected.__name__}"
                )
    return None


def _mask(value: Any) -> str | None:
    return None if not isinstance(value, bool) and 8 <= value <= 30 else f"must be a number from 8 to 30, not {value!r}"


def _users(value: Any) -> str | None:
    if all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return "must map user names to passwords (strings)"


def _list_of_str(value: Any) -> str | None:
    return None if all(isinstance(item, str) for item in value) else "must be a list of user names"


def _archives(value: Any) -> str | None:
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not entry.get("image") or not entry.get("archive"):
            return f"[{index}] needs an image and an archive path"
    return None


def _images(value: Any) -> str | None:
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not all(entry.get(k) for k in ("name", "context", "tag")):
            return f"[{index}] needs a name, a context directory and a tag"
    return None


def _sources(value: Any) -> str | None:
    for name, source in value.items():
        if not isinstance(source, dict) or len({"file", "value"} & set(source)) != 1:
            return f"[{name!r}] needs exactly one of file or value"
    return None


def _stacks(value: Any) -> str | None:
    for index, stack in enumerate(value):
        if not isinstance(stack, dict) or not stack.get("name") or not stack.get("template"):
            return f"[{index}] needs a name and a template"
        if stack.get("state", "present") not in ("present", "absent"):
            return f"[{index}] ({stack['name']}): state must be present or absent"
        if stack.get("on_failure", "rollback") not in ("rollback", "pause"):
            return f"[{index}] ({stack['name']}): on_failure must be rollback or pause"
        shadowing = _injected(stack.get("vars") or {})
        if shadowing:
            return f"[{index}] ({stack['name']}): vars {shadowing}"
    names = [str(stack["name"]) for stack in value]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        return f"lists stack {', '.join(twice)} twice"
    return None


INJECTED = ("registry", "secrets", "configs")  # what every stack template sees from the deploy


def _injected(variables: Any) -> str | None:
    """Variables that would hide what the deploy gives every template, named (None: there are none)."""
    if not isinstance(variables, dict):
        return "must be a mapping of template variables"
    hidden = sorted(k for k in variables if k in INJECTED)
    if hidden:
        return f"{', '.join(hidden)} would hide what the deploy gives every template ({', '.join(INJECTED)}): rename it"
    return None


def _stack_vars(value: Any) -> str | None:
    return _injected(value)


ROTATABLE = ("worker_token", "manager_token", "ca", "unlock_key", "registry_cert")


def _rotations(value: Any) -> str | None:
    unknown = [str(k) for k in value if k not in ROTATABLE]
    if unknown:
        return f"can't rotate {', '.join(unknown)} (use {', '.join(ROTATABLE)})"
    empty = [k for k, request in value.items() if not isinstance(request, str | int) or not str(request).strip()]
    if empty:
        return f"[{empty[0]!r}] needs a request name (a date, a ticket: a new name rotates again)"
    return None


def _daemon_config(value: Any) -> str | None:
    problems = validate_daemon_config(value)
    return "; ".join(p.removeprefix("docker_daemon_config") for p in problems) or None  # each starts with [


SCHEMA: tuple[Setting, ...] = (
    # The swarm
    Setting("swarm_advertise_addr", None, (str,), "IP or interface name other nodes reach this host on", "swarm",
            check=_advertise_addr, shown_default="(required)"),
    Setting("docker_source", "docker-ce", (str,), "`docker-ce` (Docker's apt/dnf repository) or `distro` "
            "(Debian/Ubuntu's `docker.io`; this repo's `group_data/all.py` picks it: the lab reaches only Debian's "
            "mirror)", "swarm", choices=("docker-ce", "distro")),
    Setting("docker_version", None, (str,), "version pin, e.g. `5:27.3.1-1~debian.12~bookworm` (apt) or `27.3.1` "
            "(dnf); a trailing `*` matches a prefix; held (`apt-mark hold`) while set", "swarm"),
    Setting("docker_ce_repo_url", "https://download.docker.com/linux", (str,), "where Docker CE comes from (a "
            "mirror)", "swarm"),
    Setting("docker_ce_channel", "stable", (str,), "Docker CE's channel", "swarm"),
    Setting("docker_users", [], (list,), "existing users added to the `docker` group", "swarm", check=_list_of_str),
    Setting("docker_daemon_config", {"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}},
            (dict,), "`daemon.json`, passed through; known keys are type-checked; `live-restore: true` and "
            "`firewall-backend: nftables` are refused (not supported with swarm)", "swarm", check=_daemon_config,
            shown_default="json-file logs, 10m x 3"),
    Setting("swarm_firewall", "auto", (str, bool), "`auto` (ufw or firewalld when active, else iptables), `ufw`, "
            "`firewalld`, `iptables`, `nftables`, `none`", "swarm",
            choices=("auto", "ufw", "firewalld", "iptables", "nftables", "none", False)),
    Setting("swarm_firewall_policy", "deny", (str,), "`deny`: refuse all other inbound traffic; `allow`: only keep "
            "non-peers off the swarm ports", "swarm", choices=("deny", "allow")),
    Setting("swarm_firewall_allow", ["22/tcp"], (list,), "ports open to everyone (`80/tcp`, `8000:8100/tcp`, each "
            "from 1 to 65535), on the host and for services' published ports; sshd's ports are always added",
            "swarm", check=_firewall_allow),
    Setting("swarm_encrypted_overlays", False, (bool,), "open ESP between peers (refused when the kernel lacks "
            "ESP/GCM)", "swarm", scope="cluster"),
    Setting("swarm_default_addr_pool", [], (list,), "overlay subnets for `swarm init`, e.g. `['10.20.0.0/16']`",
            "swarm", scope="cluster", check=_pools),
    Setting("swarm_default_addr_pool_mask_length", None, (int,), "size of each overlay subnet for `swarm init`, "
            "e.g. `24`", "swarm", scope="cluster", check=_mask),
    Setting("swarm_data_path_port", 4789, (int,), "VXLAN port for `swarm init`; on a running swarm it must match "
            "the swarm's (the firewall opens the port the swarm uses)", "swarm", scope="cluster",
            check=_data_path_port),
    Setting("swarm_data_path_addr", None, (str,), "IP or interface for overlay (VXLAN) traffic, at init and join; "
            "default: the advertise address", "swarm", check=_data_path_addr),
    Setting("swarm_availability", "active", (str,), "`active`, `pause` or `drain` (e.g. keep tasks off managers)",
            "swarm", choices=("active", "pause", "drain")),
    Setting("swarm_labels", {}, (dict,), "node labels, e.g. `{'zone': 'a'}`", "swarm", check=_labels),
    Setting("swarm_force_rejoin", False, (bool,), "a host in a *different* swarm (or stuck `pending`) leaves it "
            "and joins this one (otherwise it is stopped with an error); a `locked` manager is never made to leave",
            "swarm"),
    Setting("swarm_state", "present", (str,), "`absent` takes this host out of the swarm safely: drained, its tasks "
            "moved, demoted first if a manager, left, its node entry removed (refused when it would break quorum "
            "or remove the last manager)", "swarm", choices=("present", "absent")),
    Setting("docker_purge", False, (bool,), "with `swarm_state: absent` (or teardown): also uninstall Docker and "
            "delete its data (`/var/lib/docker`, `/etc/docker`)", "swarm"),
    Setting("swarm_drain_timeout", None, (int,), "seconds a node's tasks may take to stop when it is drained for "
            "its turn (engine restarts, upgrades, removal); past it the node gets its availability back and the "
            "turns stop", "swarm", check=_port_number(1, 86400, "a number of seconds"),
            shown_default="its tasks' longest `stop_grace_period` + 60 s, at least 120"),
    Setting("patch_reboot", "if-required", (str,), "`patch.py`: reboot a node when it asks for one "
            "(`/var/run/reboot-required`, `needs-restarting -r`, a newer kernel installed), `always` (every node, "
            "every run) or `never`", "swarm", choices=("if-required", "always", "never")),
    Setting("patch_pause", 0, (int,), "`patch.py`: seconds to wait between one node's turn and the next", "swarm",
            scope="cluster", check=_port_number(0, 86400, "a number of seconds")),
    Setting("patch_reboot_timeout", 600, (int,), "`patch.py`: seconds a rebooting node may take to answer SSH "
            "again; past it the run stops, naming it", "swarm", check=_port_number(10, 86400, "a number of seconds")),
    Setting("swarm_allow_encrypted_mix", False, (bool,), "let a run put engines on both sides of moby#51798 "
            "(29.0.0-29.2.0, 28.2.2, 25.0.13-14 against the others) in a swarm with encrypted overlay networks, "
            "whose traffic between the two sides stops meanwhile (refused otherwise)", "swarm", scope="cluster"),
    Setting("swarm_lock_wait", 600, (int,), "seconds a run waits for the cluster lock that another run holds "
            "(see *One run at a time*), then stops naming the holder", "swarm", scope="cluster",
            check=_port_number(0, 86400, "a number of seconds")),
    Setting("swarm_pki_takeover", False, (bool,), "this controller's PKI directory replaces the one the swarm was "
            "deployed with (a new registry CA, certificate and password, new object names): see *One run at a "
            "time*", "swarm", scope="cluster"),
    Setting("swarm_bootstrap", False, (bool,), "start a new swarm although some managers of the inventory weren't "
            "reached (see *Never two swarms*)", "swarm", scope="cluster"),
    Setting("swarm_force_new_cluster", False, (bool,), "on the manager that survived the loss of quorum: a run "
            "that finds no leader makes it a one-manager swarm (`docker swarm init --force-new-cluster`: services, "
            "secrets and workers kept) and the next run grows the managers back; does nothing while the swarm has a "
            "leader (see *Losing quorum*)", "swarm"),
    Setting("swarm_autolock", None, (bool,), "`True`: managers keep their raft keys locked at rest (a restarted "
            "manager needs the unlock key, which the deploy writes only to `swarm_unlock_key_file` and uses to "
            "unlock managers it finds locked); `False` turns it off; unset leaves it as it is", "swarm",
            scope="cluster"),
    Setting("swarm_unlock_key_file", None, (str,), "the unlock key's file on the controller (0600)", "swarm",
            scope="cluster", shown_default="PKI directory/swarm-unlock-key"),
    Setting("swarm_rotate", {}, (dict,), "`{what: request}` rotates `worker_token`, `manager_token`, `ca` (the "
            "swarm's root CA), `unlock_key` or `registry_cert` once per request name (a date, a ticket; recorded in "
            "the swarm)",
            "swarm", scope="cluster", check=_rotations),
    Setting("swarm_backup_dir", None, (str,), "where `backup.py` puts the archives of the swarm's state on the "
            "controller (the directory 0700)", "swarm", scope="cluster", shown_default="`backups` beside the PKI dir"),
    Setting("swarm_restore_from", None, (str,), "on a fresh manager: the backup archive `restore.py` restores there "
            "(see *Backup and restore*)", "swarm"),
    # What runs on the swarm
    Setting("registry_mode", None, (str,), "`service`, `host` or none (no registry)", "workloads", scope="cluster",
            choices=("service", "host")),
    Setting("registry_node", None, (str,), "the inventory host the registry runs on; its advertise address is "
            "the registry's address", "workloads", scope="cluster", shown_default="first manager"),
    Setting("registry_port", 5000, (int,), "published port (host mode: the port the registry listens on, opened "
            "to the peers by the firewall)", "workloads", scope="cluster", check=_port_number(1, 65535)),
    Setting("registry_image", "registry:2", (str,), "service mode: the registry's image", "workloads",
            scope="cluster"),
    Setting("registry_build", None, (str,), "service mode: a context directory to build the image from on the "
            "registry's node (the lab builds Debian's `docker-registry`)", "workloads", scope="cluster"),
    Setting("registry_tls", True, (bool,), "TLS with a certificate from the controller's CA; `False` writes the "
            "registry into every node's `insecure-registries`", "workloads", scope="cluster"),
    Setting("registry_users", {}, (dict,), "htpasswd users `{user: password}`; empty: the user `pyinfra-swarm` "
            "with a password generated in the PKI directory (keep passwords out of the repo)", "workloads",
            scope="cluster", check=_users, secret=True),
    Setting("registry_anonymous", False, (bool,), "`True`: no auth at all, anyone who reaches the port may push",
            "workloads", scope="cluster"),
    Setting("docker_image_archives", [], (list,), "`[{'image': ..., 'archive': PATH, 'group': 'all'}]`",
            "workloads", scope="cluster", check=_archives),
    Setting("docker_images", [], (list,), "`[{'name': ..., 'context': DIR, 'tag': ...}]`", "workloads",
            scope="cluster", check=_images),
    Setting("swarm_networks", {}, (dict,), "overlay networks `{name: {attachable, subnet, mtu, encrypted}}`",
            "workloads", scope="cluster", check=_networks),
    Setting("swarm_secrets", {}, (dict,), "`{name: {'file': PATH} or {'value': ...}}`", "workloads",
            scope="cluster", check=_sources, secret=True),
    Setting("swarm_configs", {}, (dict,), "same as secrets", "workloads", scope="cluster", check=_sources, secret=True),
    Setting("swarm_stacks", [], (list,), "`[{'name', 'template', 'state': 'present', 'vars': {}, 'timeout': 180, "
            "'on_failure': 'rollback'}]`; a failed update rolls back to the previous spec, or stays paused "
            "(`'pause'`)",
            "workloads", scope="cluster", check=_stacks, secret=True),
    Setting("swarm_stacks_dir", "templates/stacks", (str,), "where stack templates live", "workloads",
            scope="cluster"),
    Setting("stack_vars", {}, (dict,), "variables for every stack template", "workloads", scope="cluster",
            check=_stack_vars, secret=True),
)  # fmt: skip
SETTINGS = {s.key: s for s in SCHEMA}
DEFAULTS: dict[str, Any] = {s.key: s.default for s in SCHEMA}

# daemon.json keys whose value type is checked; other keys pass through unchecked.
DAEMON_KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    "insecure-registries": list, "registry-mirrors": list, "log-driver": str, "log-level": str, "log-opts": dict,
    "default-address-pools": list, "mtu": int, "metrics-addr": str, "live-restore": bool, "debug": bool,
    "experimental": bool, "max-concurrent-downloads": int, "max-concurrent-uploads": int, "storage-driver": str,
    "data-root": str, "labels": list, "dns": list, "features": dict, "iptables": bool, "ip-forward": bool,
    "userland-proxy": bool, "shutdown-timeout": int, "firewall-backend": str,
}  # fmt: skip


def defaults(*keys: str) -> dict[str, Any]:
    """`data_defaults` for a deploy: of `keys`, or of every setting."""
    return {key: DEFAULTS[key] for key in keys or DEFAULTS}


def unlock_key_file(host: Host) -> str:
    """The swarm's unlock key file on the controller: swarm_unlock_key_file, or swarm-unlock-key in the PKI
    directory."""
    return str(Path(setting(host, "swarm_unlock_key_file") or pki_dir() / "swarm-unlock-key").expanduser())


def backup_dir(host: Host) -> Path:
    """Where backups of the swarm's state go on the controller: swarm_backup_dir, or `backups` beside the
    PKI directory."""
    return Path(setting(host, "swarm_backup_dir") or pki_dir().parent / "backups").expanduser()


def setting(host: Host, key: str) -> Any:
    """A host's value for `key`, or its default: the one way to read a setting, for any host (not only the
    one being deployed)."""
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
    hosts = managers + [h for h in workers if h not in managers]
    addresses: dict[str, str] = {}
    for host in hosts:
        errors += [f"host {host.name}: {problem}" for problem in validate_host_data(host)]
        address = host.data.get("swarm_advertise_addr")
        if isinstance(address, str) and _looks_like_ip(address):
            if address in addresses:
                errors.append(
                    f"host {host.name}: swarm_advertise_addr {address} is also the address of "
                    f"{addresses[address]}: every node needs its own"
                )
            addresses.setdefault(address, host.name)
    errors += cluster_wide_differences(hosts)
    if errors:
        raise DeployError("bad inventory or group data:\n  " + "\n  ".join(errors))


def cluster_wide_differences(hosts: list[Host]) -> list[str]:
    """Cluster-wide settings must have one value: name the first host that differs from the first host."""
    problems = []
    for item in SCHEMA:
        if item.scope != "cluster" or not hosts:
            continue
        first = setting(hosts[0], item.key)
        other = next((h for h in hosts[1:] if setting(h, item.key) != first), None)
        if other is not None:
            values = ("", "") if item.secret else (f" ({first!r})", f" ({setting(other, item.key)!r})")
            problems.append(
                f"{item.key} is cluster-wide but differs between {hosts[0].name}{values[0]} and {other.name}"
                f"{values[1]}{' (values not shown: they may hold secrets)' if item.secret else ''}: set it once, in "
                "group_data/all.py"
            )
    return problems


def validate_host_data(host: Host) -> list[str]:
    """Problems with one host's data, each naming its key: unknown keys, types, allowed values, checks."""
    problems: list[str] = []
    data = host.data.dict()
    for key in sorted(data):
        if key.startswith(PREFIXES) and key not in SETTINGS:
            close = difflib.get_close_matches(key, list(SETTINGS), n=1)
            hint = f": did you mean {close[0]}?" if close else " (see the README's settings tables)"
            problems.append(f"{key} is not a setting of pyinfra-swarm{hint}")
    for item in SCHEMA:
        value = data.get(item.key)
        if item.key == "swarm_advertise_addr" and value is None:
            problems.append(
                "swarm_advertise_addr is missing: set it (group_data or host data) to the IP address, or the "
                "interface name, other nodes reach this host on"
            )
            continue
        if value is None:
            continue
        problem = _problem(item, value)
        if problem:
            problems.append(problem)
    return problems or _across_keys(data)


def _across_keys(data: dict[str, Any]) -> list[str]:
    """Problems between settings of one host's data (once each key is right on its own)."""
    problems = []
    encrypted = sorted(name for name, options in (data.get("swarm_networks") or {}).items()
                       if isinstance(options, dict) and options.get("encrypted"))  # fmt: skip
    if encrypted and not data.get("swarm_encrypted_overlays"):
        problems.append(
            f"swarm_networks {', '.join(encrypted)}: encrypted, but swarm_encrypted_overlays is off, so the firewall "
            "keeps ESP closed and the overlay would drop all traffic: set swarm_encrypted_overlays: true"
        )
    stacks = [s.get("name") for s in data.get("swarm_stacks") or [] if isinstance(s, dict)]
    if data.get("registry_mode") == "service" and "registry" in stacks:
        problems.append(
            "swarm_stacks: a stack named registry would share the registry's stack (each deploy's --prune would "
            "remove the other's services): rename it"
        )
    return problems


def _problem(item: Setting, value: Any) -> str | None:
    if item.choices and value not in item.choices:
        allowed = ", ".join(str(c) for c in item.choices if c is not False)
        return f"{item.key} {value!r} is unknown: use one of {allowed}"
    bool_where_number = isinstance(value, bool) and bool not in item.types
    if not isinstance(value, item.types) or bool_where_number:
        names = " or ".join(t.__name__ for t in item.types)
        if item.key == "docker_daemon_config":
            return f"docker_daemon_config must be a mapping of daemon.json options, not {type(value).__name__}"
        shown = "" if item.secret else f" ({value!r})"
        return f"{item.key} must be a {names}, not {type(value).__name__}{shown}"
    problem = item.check(value) if item.check else None
    if problem is None:
        return None
    return f"{item.key}{problem}" if problem.startswith("[") else f"{item.key} {problem}"


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
    if config.get("firewall-backend") == "nftables":
        problems.append(
            "docker_daemon_config['firewall-backend'] is nftables, which Docker (29 and later) refuses to run with "
            "swarm mode, and which has no DOCKER-USER chain for this project's published-port filter: remove it "
            "(the iptables backend is the default)"
        )
    if "hosts" in config:
        tcp = [h for h in config["hosts"] if str(h).startswith("tcp://")] if isinstance(config["hosts"], list) else []
        tls = config.get("tlsverify") is True and all(config.get(k) for k in ("tlscacert", "tlscert", "tlskey"))
        problems.append(
            "docker_daemon_config['hosts'] is refused: "
            + (f"{', '.join(tcp)} would listen on TCP without TLS (root on the network to anyone who connects); "
               if tcp and not tls else "")
            + "and Docker's systemd unit already passes -H fd://, so dockerd would refuse to start. Reach the "
            "engine over SSH instead (DOCKER_HOST=ssh://...)"
        )  # fmt: skip
    for pool in config.get("default-address-pools") or []:
        if not isinstance(pool, dict) or not _cidr(pool.get("base")) or not isinstance(pool.get("size"), int):
            problems.append(
                f"docker_daemon_config['default-address-pools'] entries need a CIDR 'base' and an int 'size', "
                f"not {pool!r}"
            )
    return problems


def _has_type(value: Any, expected: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) and expected is int:
        return False
    return isinstance(value, expected)


def markdown_table(table: str) -> str:
    """The README's settings table `table` ("swarm" or "workloads"), from SCHEMA."""
    rows = ["| key | default | scope | meaning |", "| --- | --- | --- | --- |"]
    for item in SCHEMA:
        if item.table == table:
            shown = item.shown_default or ("none" if item.default is None else f"`{item.default!r}`")
            rows.append(f"| `{item.key}` | {shown} | {item.scope} | {item.meaning} |")
    return "\n".join(rows) + "\n"


def update_readme(path: Path) -> None:
    """Rewrite the settings tables between `<!-- settings:NAME -->` markers of a README from SCHEMA."""
    text = path.read_text()
    for table in ("swarm", "workloads"):
        start, end = f"<!-- settings:{table} -->\n", f"<!-- /settings:{table} -->"
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = head + start + markdown_table(table) + end + tail
    path.write_text(text)


if __name__ == "__main__":  # `python -m pyinfra_swarm.settings [README.md]`: print the tables, or update them
    if sys.argv[1:]:
        update_readme(Path(sys.argv[1]))
    else:
        print(markdown_table("swarm"), markdown_table("workloads"), sep="\n")
