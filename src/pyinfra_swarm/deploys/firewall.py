"""Open the swarm ports to the cluster's own addresses only: 2377/tcp on managers, 7946/tcp+udp and the
data path port (4789/udp) on every node, ESP when encrypted overlays are on. Backends: ufw, firewalld, or a
chain / table of our own for iptables or nftables, applied atomically and restored at boot.

Published ports (host mode and the ingress mesh) don't pass INPUT: Docker DNATs them and they are forwarded.
The iptables and nftables backends filter them too, through a chain of ours jumped to from Docker's
DOCKER-USER (a forward hook in our table for nftables): with policy `deny`, only peers and the ports of
`swarm_firewall_allow` get through. ufw and firewalld don't see published ports (Docker's rules come first)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import Host
from pyinfra.operations import server

from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.operations import firewall
from pyinfra_swarm.operations.firewall import FIREWALLD_ZONE
from pyinfra_swarm.plan import ClusterPlan
from pyinfra_swarm.settings import is_manager, setting

CHAIN = "PYINFRA-SWARM"
FORWARD_CHAIN = "PYINFRA-SWARM-FWD"  # published ports, jumped to from Docker's DOCKER-USER
DOCKER_BRIDGES = ("docker0", "docker_gwbridge", "br-+")  # containers' own traffic is not inbound
NFT_TABLE = "pyinfra_swarm"
UFW_COMMENT = "pyinfra-swarm"


@dataclass(frozen=True)
class Policy:
    """What one node lets in: `allow` from anyone, `swarm_ports` (and ESP) from `peers` only."""

    peers: tuple[str, ...]
    swarm_ports: tuple[str, ...]  # "2377/tcp", ...
    allow: tuple[str, ...]
    esp: bool
    deny_other: bool  # refuse everything else inbound (policy deny), or only the swarm ports from others


def node_policy(manager: bool, peers: list[str], allow: list[str], data_path_port: int, esp: bool,
                deny_other: bool, ssh_ports: tuple[int, ...] = (22,),
                peer_ports: tuple[str, ...] = ()) -> Policy:  # fmt: skip
    ports = (["2377/tcp"] if manager else []) + ["7946/tcp", "7946/udp", f"{data_path_port}/udp", *peer_ports]
    allowed = list(dict.fromkeys([*allow, *(f"{port}/tcp" for port in ssh_ports)]))
    return Policy(tuple(peers), tuple(ports), tuple(allowed), esp, deny_other)


def _split(port: str) -> tuple[str, str]:
    number, proto = port.split("/")
    return number, proto


def _input_rules(policy: Policy, family: int) -> list[str]:
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
        return [*rules, "-p tcp -j REJECT --reject-with tcp-reset", "-j REJECT"]
    for port in policy.swarm_ports:
        number, proto = _split(port)
        reject = "REJECT --reject-with tcp-reset" if proto == "tcp" else "REJECT"
        rules.append(f"-p {proto} --dport {number} -j {reject}")
    return [*rules, "-j RETURN"]


def _forward_rules(policy: Policy, family: int) -> list[str]:
    """Published ports: connections Docker DNATed, from outside its own bridges, get through from peers and
    to the allowed ports only (policy deny); policy allow leaves them alone."""
    if not policy.deny_other:
        return []
    rules = ["-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN", "-m conntrack ! --ctstate DNAT -j RETURN"]
    rules += [f"-i {bridge} -j RETURN" for bridge in DOCKER_BRIDGES]
    rules += [f"-s {peer} -j RETURN" for peer in policy.peers if ipaddress.ip_address(peer).version == family]
    for port in policy.allow:
        number, proto = _split(port)
        rules.append(f"-p {proto} -m conntrack --ctorigdstport {number} -j RETURN")
    return [*rules, "-p tcp -j REJECT --reject-with tcp-reset", "-j REJECT"]


def iptables_script(policy: Policy) -> str:
    """A shell script that replaces our chains for IPv4 and IPv6 in one iptables-restore transaction each (a
    bad rule leaves the previous rules in force) and hooks them into INPUT and DOCKER-USER; run at boot and
    on change."""
    lines = [
        "#!/bin/sh",
        "# Managed by pyinfra-swarm: inbound rules of this swarm node. Docker's chains are not touched, but for a",
        f"# jump from DOCKER-USER to {FORWARD_CHAIN} (published ports).",
        "set -e",
    ]
    for binary, family in (("iptables", 4), ("ip6tables", 6)):
        ipt = f"{binary} -w"
        ruleset = ["*filter", f":{CHAIN} - [0:0]", f":{FORWARD_CHAIN} - [0:0]"]
        ruleset += [f"-A {CHAIN} {rule}" for rule in _input_rules(policy, family)]
        ruleset += [f"-A {FORWARD_CHAIN} {rule}" for rule in _forward_rules(policy, family)]
        lines += [
            f"if command -v {binary}-restore >/dev/null; then",
            f"  {binary}-restore -w --noflush <<'RULES'",
            *ruleset,
            "COMMIT",
            "RULES",
            f"  {ipt} -C INPUT -j {CHAIN} 2>/dev/null || {ipt} -I INPUT 1 -j {CHAIN}",
            f"  {ipt} -N DOCKER-USER 2>/dev/null || true",
            f"  {ipt} -C DOCKER-USER -j {FORWARD_CHAIN} 2>/dev/null || {ipt} -I DOCKER-USER 1 -j {FORWARD_CHAIN}",
            "fi",
        ]
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
    forward = ["    type filter hook forward priority filter - 1; policy accept;"]
    if policy.deny_other:  # published ports: see the module docstring
        forward += ["    ct state established,related accept"]
        forward += [f'    ct status dnat iifname "{bridge.replace("+", "*")}" accept' for bridge in DOCKER_BRIDGES]
        for family, name in ((4, "ip"), (6, "ip6")):
            peers = [p for p in policy.peers if ipaddress.ip_address(p).version == family]
            if peers:
                forward.append(f"    ct status dnat {name} saddr {{ {', '.join(peers)} }} accept")
        for proto in ("tcp", "udp"):
            if ports(proto, policy.allow):
                forward.append(
                    f"    ct status dnat meta l4proto {proto} ct original proto-dst {{ {ports(proto, policy.allow)} }} "
                    "accept"
                )
        forward += ["    ct status dnat meta l4proto tcp reject with tcp reset", "    ct status dnat reject"]
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
                "  chain forward {",
                *forward,
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


def _firewalld_port(port: str) -> str:
    return port.replace(":", "-")  # firewalld writes ranges as 8000-8100/tcp


def firewalld_commands(policy: Policy, zone: dict | None) -> list[str]:
    """firewall-cmd commands (empty when nothing differs) for a zone of ours with the peers as sources:
    traffic from a peer lands in it and nowhere else, so it holds the swarm ports, the allow list and SSH
    (policy deny: the rest is refused; allow: its target is ACCEPT). The allow list also goes to the default
    zone, for everyone; the ports put there are recorded in our zone's description, so that ports dropped
    from the data are removed again."""
    cmd = f"firewall-cmd --permanent --zone={FIREWALLD_ZONE}"
    commands = [] if zone is not None else [f"firewall-cmd --permanent --new-zone={FIREWALLD_ZONE}"]
    zone = zone or {"sources": [], "ports": [], "protocols": [], "target": "default", "description": "",
                    "default-ports": []}  # fmt: skip
    allow = [_firewalld_port(port) for port in policy.allow]
    wanted = {
        "sources": ("source", list(policy.peers)),
        "ports": ("port", list(dict.fromkeys([*policy.swarm_ports, *allow]))),
        "protocols": ("protocol", ["esp"] if policy.esp else []),
    }
    for key, (option, values) in wanted.items():
        commands += [f"{cmd} --remove-{option}={v}" for v in zone[key] if v not in values]
        commands += [f"{cmd} --add-{option}={v}" for v in values if v not in zone[key]]
    target = "default" if policy.deny_other else "ACCEPT"
    if zone["target"] != target:
        commands.append(f"{cmd} --set-target={target}")
    recorded = zone["description"].removeprefix("pyinfra-swarm allow:").split()
    default_ports = zone["default-ports"]
    stale = [port for port in recorded if port not in allow and port in default_ports]
    commands += [f"firewall-cmd --permanent --remove-port={port}" for port in stale]
    commands += [f"firewall-cmd --permanent --add-port={port}" for port in allow if port not in default_ports]
    if recorded != allow:
        commands.append(f"{cmd} --set-description='pyinfra-swarm allow: {' '.join(allow)}'")
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


@step("Configure the swarm firewall")
def configure_firewall(plan: ClusterPlan, this: Host) -> None:
    """Let swarm traffic in from cluster peers only (see module docstring); `swarm_firewall: none` skips."""
    tools = plan.fact("firewall")
    backend = resolve_backend(setting(this, "swarm_firewall"), tools)
    if backend == "none":
        return
    if len(plan.addresses) < len(plan.hosts):
        host.noop("firewall left as it is: an unreachable host's advertise address (an interface name) is unknown")
        return
    registry = plan.registry
    policy = node_policy(
        manager=is_manager(this),
        peers=plan.peers(),
        allow=setting(this, "swarm_firewall_allow"),
        data_path_port=plan.data_path_port,
        esp=setting(this, "swarm_encrypted_overlays"),
        deny_other=setting(this, "swarm_firewall_policy") == "deny",
        ssh_ports=tuple(plan.fact("sshd_ports")) or (int(this.data.get("ssh_port") or 22),),
        # A host-mode registry listens on the host itself: its port is opened to the peers.
        peer_ports=(f"{registry.port}/tcp",) if registry and registry.host is this and registry.mode == "host" else (),
    )
    if backend in ("iptables", "nftables"):
        _own_rules(backend, policy, tools)
    elif backend == "ufw":
        if tools["ufw"] is None:
            server.packages(name="Install ufw", packages=["ufw"])
            commands = ufw_commands(policy, {"active": False, "incoming": None, "rules": []})
        else:
            commands = ufw_commands(policy, plan.fact("ufw"))
        if commands:
            server.shell(name="Open the swarm ports to peers (ufw)", commands=commands)
    elif backend == "firewalld":
        commands = firewalld_commands(policy, plan.fact("firewalld_zone"))
        if commands:  # reload only on a change: a reload drops the rules older engines add at run time
            server.shell(
                name="Open the swarm ports to peers (firewalld)", commands=[*commands, "firewall-cmd --reload"]
            )
        else:
            host.noop("firewalld zone already in place")


def _own_rules(backend: str, policy: Policy, tools: dict) -> None:
    """Our chain (iptables) or table (nftables), from a rules file applied by a unit of our own."""
    if backend == "nftables" and not tools["nft"]:
        server.packages(name="Install nftables", packages=["nftables"])
    text = iptables_script(policy) if backend == "iptables" else nftables_rules(policy)
    firewall.rules(name=f"Firewall rules ({backend}), applied now and at boot", backend=backend, text=text)
