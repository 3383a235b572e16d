"""Open the swarm ports to the cluster's own addresses only: 2377/tcp on managers, 7946/tcp+udp and the
data path port (4789/udp) on every node, ESP when encrypted overlays are on. Backends: ufw, firewalld, or a
chain / table of our own for iptables or nftables, restored at boot. Docker's own chains are left alone."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from pyinfra_swarm.cluster import Cluster, cluster, current_host
from pyinfra_swarm.facts import FileHashes, FirewalldZone, FirewallTools, ServiceStates, UfwState, sha256_text
from pyinfra_swarm.hostfacts import host_fact, register
from pyinfra_swarm.settings import DEFAULTS, is_manager, setting

CHAIN = "PYINFRA-SWARM"
NFT_TABLE = "pyinfra_swarm"
FIREWALLD_ZONE = "pyinfra-swarm"
UFW_COMMENT = "pyinfra-swarm"
RULES_DIR = "/etc/pyinfra-swarm"
UNIT = "pyinfra-swarm-firewall.service"
IPTABLES_RULES = f"{RULES_DIR}/firewall.sh"
NFT_RULES = f"{RULES_DIR}/firewall.nft"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
SETTINGS = ["swarm_firewall", "swarm_firewall_policy", "swarm_firewall_allow", "swarm_encrypted_overlays",
            "swarm_data_path_port"]  # fmt: skip


register("firewall", FirewallTools)
register("firewall_files", FileHashes, paths=[IPTABLES_RULES, NFT_RULES, UNIT_FILE])
register("firewall_service", ServiceStates, services=[UNIT])


@dataclass(frozen=True)
class Policy:
    """What one node lets in: `allow` from anyone, `swarm_ports` (and ESP) from `peers` only."""

    peers: tuple[str, ...]
    swarm_ports: tuple[str, ...]  # "2377/tcp", ...
    allow: tuple[str, ...]
    esp: bool
    deny_other: bool  # refuse everything else inbound (policy deny), or only the swarm ports from others


def node_policy(manager: bool, peers: list[str], allow: list[str], data_path_port: int, esp: bool,
                deny_other: bool, ssh_port: int = 22, peer_ports: tuple[str, ...] = ()) -> Policy:  # fmt: skip
    ports = (["2377/tcp"] if manager else []) + ["7946/tcp", "7946/udp", f"{data_path_port}/udp", *peer_ports]
    allowed = list(dict.fromkeys([*allow, f"{ssh_port}/tcp"]))
    return Policy(tuple(peers), tuple(ports), tuple(allowed), esp, deny_other)


def _split(port: str) -> tuple[str, str]:
    number, proto = port.split("/")
    return number, proto


def iptables_script(policy: Policy) -> str:
    """A shell script that (re)builds our INPUT chain for IPv4 and IPv6; run at boot and on change."""
    lines = [
        "#!/bin/sh",
        "# Managed by pyinfra-swarm: inbound rules of this swarm node. Docker's chains are not touched.",
        "set -e",
    ]
    for binary, family in (("iptables", 4), ("ip6tables", 6)):
        ipt = f"{binary} -w"
        icmp = "icmp" if family == 4 else "ipv6-icmp"
        peers = [p for p in policy.peers if ipaddress.ip_address(p).version == family]
        rules = ["-i lo -j ACCEPT", "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", f"-p {icmp} -j ACCEPT"]
        for port in policy.allow:
            number, proto = _split(port)
            rules.append(f"-p {proto} --dport {number} -j ACCEPT")
        for peer in peers:
            for port in policy.swarm_ports:
                number, proto = _split(port)
                rules.append(f"-s {peer} -p {proto} --dport {number} -j ACCEPT")
            if policy.esp:
                rules.append(f"-s {peer} -p esp -j ACCEPT")
        if policy.deny_other:
            rules += ["-p tcp -j REJECT --reject-with tcp-reset", "-j REJECT"]
        else:
            for port in policy.swarm_ports:
                number, proto = _split(port)
                reject = "REJECT --reject-with tcp-reset" if proto == "tcp" else "REJECT"
                rules.append(f"-p {proto} --dport {number} -j {reject}")
            rules.append("-j RETURN")
        guard = f"if command -v {binary} >/dev/null; then"
        lines += [guard, f"  {ipt} -N {CHAIN} 2>/dev/null || true", f"  {ipt} -F {CHAIN}"]
        lines += [f"  {ipt} -A {CHAIN} {rule}" for rule in rules]
        lines += [f"  {ipt} -C INPUT -j {CHAIN} 2>/dev/null || {ipt} -I INPUT 1 -j {CHAIN}", "fi"]
    return "\n".join(lines) + "\n"


def nftables_rules(policy: Policy) -> str:
    """An nft script that replaces our table atomically; run at boot and on change."""

    def ports(proto: str, wanted: tuple[str, ...]) -> str:
        numbers = [_split(p)[0].replace(":", "-") for p in wanted if _split(p)[1] == proto]
        return ", ".join(numbers)

    body = [
        "    type filter hook input priority filter - 1; policy accept;",
        "    iif lo accept",
        "    ct state established,related accept",
        "    meta l4proto { icmp, ipv6-icmp } accept",
    ]
    for proto in ("tcp", "udp"):
        if ports(proto, policy.allow):
            body.append(f"    {proto} dport {{ {ports(proto, policy.allow)} }} accept")
    for family, name in ((4, "ip"), (6, "ip6")):
        peers = [p for p in policy.peers if ipaddress.ip_address(p).version == family]
        if not peers:
            continue
        peer_set = "{ " + ", ".join(peers) + " }"
        for proto in ("tcp", "udp"):
            if ports(proto, policy.swarm_ports):
                body.append(
                    f"    {name} saddr {peer_set} {proto} dport {{ {ports(proto, policy.swarm_ports)} }} accept"
                )
        if policy.esp:
            body.append(f"    {name} saddr {peer_set} meta l4proto esp accept")
    if policy.deny_other:
        body += ["    meta l4proto tcp reject with tcp reset", "    reject"]
    else:
        for proto in ("tcp", "udp"):
            if ports(proto, policy.swarm_ports):
                body.append(f"    {proto} dport {{ {ports(proto, policy.swarm_ports)} }} reject")
    return (
        "\n".join(
            [
                "# Managed by pyinfra-swarm: inbound rules of this swarm node, in a table of its own.",
                f"table inet {NFT_TABLE}",
                f"delete table inet {NFT_TABLE}",
                f"table inet {NFT_TABLE} {{",
                "  chain input {",
                *body,
                "  }",
                "}",
            ]
        )
        + "\n"
    )


def ufw_rules(policy: Policy) -> list[str]:
    """The ufw rules we own, in `ufw show added` form (without the leading `ufw `)."""
    comment = f"comment '{UFW_COMMENT}'"
    rules = [f"allow {port} {comment}" for port in policy.allow]
    for peer in policy.peers:
        for port in policy.swarm_ports:
            number, proto = _split(port)
            rules.append(f"allow from {peer} to any port {number} proto {proto} {comment}")
        if policy.esp:
            rules.append(f"allow from {peer} to any proto esp {comment}")
    if not policy.deny_other:
        rules += [f"deny {port} {comment}" for port in policy.swarm_ports]
    return rules


def ufw_commands(policy: Policy, current: dict) -> list[str]:
    """ufw commands that turn `current` (the UfwState fact) into `policy`; empty when nothing differs."""
    desired = ufw_rules(policy)
    commands = [f"ufw delete {rule}" for rule in current["rules"] if UFW_COMMENT in rule and rule not in desired]
    for rule in desired:
        if rule not in current["rules"]:
            # Allow rules go first, so a peer added later still comes before our deny rules.
            commands.append(f"ufw insert 1 {rule}" if rule.startswith("allow") and current["rules"] else f"ufw {rule}")
    incoming = "deny" if policy.deny_other else "allow"
    if current["incoming"] != incoming:
        commands.append(f"ufw default {incoming} incoming")
    if not current["active"]:
        commands.append("ufw --force enable")
    return commands


def firewalld_commands(policy: Policy, zone: dict | None) -> list[str]:
    """firewall-cmd commands for a zone holding the peers as sources and the swarm ports; the allow list
    goes to the default zone."""
    cmd = f"firewall-cmd --permanent --zone={FIREWALLD_ZONE}"
    commands = [] if zone is not None else [f"firewall-cmd --permanent --new-zone={FIREWALLD_ZONE}"]
    zone = zone or {"sources": [], "ports": [], "protocols": []}
    wanted = {
        "sources": ("source", list(policy.peers)),
        "ports": ("port", list(policy.swarm_ports)),
        "protocols": ("protocol", ["esp"] if policy.esp else []),
    }
    for key, (option, values) in wanted.items():
        commands += [f"{cmd} --remove-{option}={v}" for v in zone[key] if v not in values]
        commands += [f"{cmd} --add-{option}={v}" for v in values if v not in zone[key]]
    return commands


def resolve_backend(configured: str | bool, tools: dict) -> str:
    """The backend to use: as configured, or for `auto` the firewall already active on the host (ufw,
    firewalld), else our own iptables chain."""
    if configured is False:
        return "none"
    if configured != "auto":
        return str(configured)
    if tools.get("ufw") == "active":
        return "ufw"
    if tools.get("firewalld"):
        return "firewalld"
    return "iptables"


def unit_text(start: str) -> str:
    """The oneshot unit that applies our rules at boot, before Docker starts."""
    return "\n".join([
        "[Unit]",
        "Description=pyinfra-swarm: inbound firewall rules of this swarm node",
        "Wants=network-pre.target",
        "Before=network-pre.target docker.service",
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        f"ExecStart={start}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]) + "\n"  # fmt: skip


@deploy("Configure the swarm firewall", data_defaults={key: DEFAULTS[key] for key in SETTINGS})
def configure_firewall() -> None:
    """Let swarm traffic in from cluster peers only (see module docstring); `swarm_firewall: none` skips."""
    tools = host_fact("firewall")
    backend = resolve_backend(host.data.swarm_firewall, tools)
    if backend == "none":
        return
    view = cluster(host.state)
    if len(view.addresses) < len(view.hosts):
        host.noop("firewall left as it is: an unreachable host's advertise address (an interface name) is unknown")
        return
    policy = node_policy(
        manager=is_manager(host),
        peers=view.peers(),
        allow=host.data.swarm_firewall_allow,
        data_path_port=host.data.swarm_data_path_port,
        esp=host.data.swarm_encrypted_overlays,
        deny_other=host.data.swarm_firewall_policy == "deny",
        ssh_port=int(host.data.get("ssh_port") or 22),
        peer_ports=_registry_port(view),
    )
    if backend in ("iptables", "nftables"):
        _own_rules(backend, policy, tools)
    elif backend == "ufw":
        if tools["ufw"] is None:
            apt.packages(name="Install ufw", packages=["ufw"], update=True)
            commands = ufw_commands(policy, {"active": False, "incoming": None, "rules": []})
        else:
            commands = ufw_commands(policy, host.get_fact(UfwState))
        if commands:
            server.shell(name="Open the swarm ports to peers (ufw)", commands=commands)
    elif backend == "firewalld":
        commands = firewalld_commands(policy, host.get_fact(FirewalldZone, zone=FIREWALLD_ZONE))
        commands += [f"firewall-cmd --permanent --add-port={port}" for port in policy.allow]
        if commands:
            server.shell(
                name="Open the swarm ports to peers (firewalld)", commands=[*commands, "firewall-cmd --reload"]
            )


def _registry_port(view: Cluster) -> tuple[str, ...]:
    """A host-mode registry listens on the host itself: its port is opened to the peers."""
    from pyinfra_swarm.registry import registry_host

    target = registry_host(view)
    if target is current_host() and setting(target, "registry_mode") == "host":
        return (f"{setting(target, 'registry_port')}/tcp",)
    return ()


def _own_rules(backend: str, policy: Policy, tools: dict) -> None:
    """Our chain (iptables) or table (nftables), from a rules file applied by a unit of our own."""
    if backend == "iptables":
        rules, path = iptables_script(policy), IPTABLES_RULES
        start, loaded = f"/bin/sh {path}", tools["chain"]
    else:
        rules, path = nftables_rules(policy), NFT_RULES
        start, loaded = f"/usr/sbin/nft -f {path}", tools["table"]
        if not tools["nft"]:
            apt.packages(name="Install nftables", packages=["nftables"], update=True)
    unit, unit_path = unit_text(start), UNIT_FILE
    hashes = host_fact("firewall_files")
    service = host_fact("firewall_service").get(UNIT, {"active": False, "enabled": False})
    rules_same, unit_same = hashes.get(path) == sha256_text(rules), hashes.get(unit_path) == sha256_text(unit)
    if rules_same and unit_same and loaded and service["enabled"]:
        host.noop(f"firewall rules ({backend}) already in place")
        return
    if not rules_same:
        files.put(name=f"Firewall rules ({backend})", src=StringIO(rules), dest=path, mode="0755")
    if not unit_same:
        files.put(name=f"Unit {UNIT}", src=StringIO(unit), dest=unit_path, mode="0644")
    systemd.service(
        name="Apply the firewall rules, now and at boot",
        service=UNIT,
        running=True,
        enabled=True,
        restarted=service["active"],
        daemon_reload=not unit_same,
    )
