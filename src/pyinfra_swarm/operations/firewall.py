"""The swarm firewall on a node: what one node lets in (`Policy`), rendered for each backend, and the operations
that apply it: `rules` (a chain or table of our own, from a rules file applied by a unit of ours, also at
boot), `ufw` and `firewalld`. Each reads what the host has and changes only what differs.

Published ports (host mode and the ingress mesh) don't pass INPUT: Docker DNATs them and they are forwarded.
The iptables and nftables rules filter them too, through a chain of ours jumped to from Docker's DOCKER-USER
(a forward hook in our table for nftables): with policy `deny`, only peers and the ports of the allow list get
through. ufw and firewalld don't see published ports (Docker's rules come first)."""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import operation

from pyinfra_swarm.facts import (
    STATE_DIR,
    FileHashes,
    FirewalldZone,
    FirewallTools,
    ServiceStates,
    UfwState,
    read,
    sha256_text,
)
from pyinfra_swarm.operations.private import write_command

UNIT = "pyinfra-swarm-firewall.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
IPTABLES_RULES = f"{STATE_DIR}/firewall.sh"
NFT_RULES = f"{STATE_DIR}/firewall.nft"
FILES = [IPTABLES_RULES, NFT_RULES, UNIT_FILE]  # what `rules` compares (read in one FileHashes fact)
FIREWALLD_ZONE = "pyinfra-swarm"
# backend -> (rules file, what applies it, whether it is loaded now: the FirewallTools key)
BACKENDS = {
    "iptables": (IPTABLES_RULES, f"/bin/sh {IPTABLES_RULES}", "chain"),
    "nftables": (NFT_RULES, f"/usr/sbin/nft -f {NFT_RULES}", "table"),
}


CHAIN = "PYINFRA-SWARM"


FORWARD_CHAIN = "PYINFRA-SWARM-FWD"  # published ports, jumped to from Docker's DOCKER-USER


DOCKER_BRIDGES = ("docker0", "docker_gwbridge", "br-+")  # containers' own traffic is not inbound


NFT_TABLE = "pyinfra_swarm"
PEER_SETS = {4: ("pyinfra-swarm-peers4", "inet"), 6: ("pyinfra-swarm-peers6", "inet6")}  # ipset name, family
# firewalld's own ipsets of the peers, our zone's sources (named apart from the iptables backend's kernel sets)
FIREWALLD_IPSETS = {4: ("pyinfra-swarm-zone-peers4", "inet"), 6: ("pyinfra-swarm-zone-peers6", "inet6")}
FIREWALLD_NAMES = tuple(name for name, _ in FIREWALLD_IPSETS.values())


UFW_COMMENT = "pyinfra-swarm"


@dataclass(frozen=True)
class Policy:
    """What one node lets in: `allow` from anyone, `swarm_ports` (and ESP) from `peers` only."""

    peers: tuple[str, ...]
    swarm_ports: tuple[str, ...]  # "2377/tcp", ...
    allow: tuple[str, ...]
    esp: bool
    deny_other: bool  # refuse everything else inbound (policy deny), or only the swarm ports from others

    def of_family(self, family: int) -> list[str]:
        """The peers of one IP family (4 or 6), in order."""
        return [peer for peer in self.peers if (6 if ":" in peer else 4) == family]


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
    """The rules of our INPUT chain: as many whatever the number of peers (they are matched as one set)."""
    icmp = "icmp" if family == 4 else "ipv6-icmp"
    peers = f"-m set --match-set {PEER_SETS[family][0]} src"
    rules = ["-i lo -j ACCEPT", "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", f"-p {icmp} -j ACCEPT"]
    for port in policy.allow:
        number, proto = _split(port)
        rules.append(f"-p {proto} --dport {number} -j ACCEPT")
    for port in policy.swarm_ports:
        number, proto = _split(port)
        rules.append(f"{peers} -p {proto} --dport {number} -j ACCEPT")
    if policy.esp:
        rules.append(f"{peers} -p esp -j ACCEPT")
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
    rules.append(f"-m set --match-set {PEER_SETS[family][0]} src -j RETURN")
    for port in policy.allow:
        number, proto = _split(port)
        rules.append(f"-p {proto} -m conntrack --ctorigdstport {number} -j RETURN")
    return [*rules, "-p tcp -j REJECT --reject-with tcp-reset", "-j REJECT"]


def iptables_script(policy: Policy) -> str:
    """A shell script that replaces the peers' set (ipset: filled aside, then swapped in at once) and our chains
    for IPv4 and IPv6, in one iptables-restore transaction each (a bad rule leaves the previous rules in force),
    and hooks them into INPUT and DOCKER-USER; run at boot and on change. The rules don't grow with the
    peers: a peer more or less is a change of the set."""
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
        name, ipset_family = PEER_SETS[family]
        lines += [
            f"if command -v {binary}-restore >/dev/null; then",
            f"  ipset -exist create {name} hash:ip family {ipset_family}",
            f"  ipset -exist create {name}-next hash:ip family {ipset_family}",
            f"  ipset flush {name}-next",
            "  ipset -exist restore <<'PEERS'",
            *(f"add {name}-next {peer}" for peer in policy.of_family(family)),
            "PEERS",
            f"  ipset swap {name}-next {name}",
            f"  ipset destroy {name}-next",
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


def _nft_peer_set(policy: Policy, family: int, kind: str) -> list[str]:
    """A named set of the peers of one family, in our table."""
    peers = policy.of_family(family)
    elements = f" elements = {{ {', '.join(peers)} }};" if peers else ""
    return [f"  set peers{family} {{ type {kind};{elements} }}"]


def nftables_rules(policy: Policy) -> str:
    """An nft script that replaces our table atomically, the peers as a named set of each family that the rules
    match (they don't grow with the cluster); run at boot and on change."""

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
        peer_set = f"@peers{family}"
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
            forward.append(f"    ct status dnat {name} saddr @peers{family} accept")
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
                *_nft_peer_set(policy, 4, "ipv4_addr"),
                *_nft_peer_set(policy, 6, "ipv6_addr"),
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


def ufw_rules(allow: list[str]) -> list[str]:
    """The ufw rules we own, in `ufw show added` form (without the leading `ufw `): the ports open to anyone."""
    return [f"allow {port} comment '{UFW_COMMENT}'" for port in allow]


def ufw_commands(allow: list[str], deny_other: bool, current: dict) -> list[str]:
    """ufw commands that turn `current` (the UfwState fact) into the allow list and default policy asked
    for; empty when nothing differs. Rules of ours not asked for (the per-peer rules of earlier releases
    among them) are deleted."""
    desired = ufw_rules(allow)
    commands = [f"ufw delete {rule}" for rule in current["rules"] if UFW_COMMENT in rule and rule not in desired]
    commands += [f"ufw {rule}" for rule in desired if rule not in current["rules"]]
    incoming = "deny" if deny_other else "allow"
    if current["incoming"] != incoming:
        commands.append(f"ufw default {incoming} incoming")
    if not current["active"]:
        commands.append("ufw --force enable")
    return commands


def _firewalld_port(port: str) -> str:
    return port.replace(":", "-")  # firewalld writes ranges as 8000-8100/tcp


def _firewalld_batch(cmd: str, option: str, remove: list[str], add: list[str]) -> list[str]:
    """At most two firewall-cmd calls, whatever the number of values (firewall-cmd takes an option many times,
    but not adds and removes in one call)."""
    calls = [[f"--remove-{option}={value}" for value in remove], [f"--add-{option}={value}" for value in add]]
    return [f"{cmd} {' '.join(options)}" for options in calls if options]


def _diff(current: list[str], wanted: list[str]) -> tuple[list[str], list[str]]:
    """What to remove from `current` and what to add to it to make `wanted`, in order."""
    return [v for v in current if v not in wanted], [v for v in wanted if v not in current]


def firewalld_commands(policy: Policy, zone: dict | None) -> list[str]:
    """firewall-cmd commands (empty when nothing differs) for a zone of ours whose sources are two ipsets of
    the peers (one per family): traffic from a peer lands in it and nowhere else, so it holds the swarm ports,
    the allow list and SSH (policy deny: the rest is refused; allow: its target is ACCEPT). A peer more or less
    is an ipset entry; each kind of change is one call, whatever the number of peers. The allow list also goes
    to the default zone, for everyone; the ports put there are recorded in our zone's description, so that
    ports dropped from the data are removed again."""
    cmd = f"firewall-cmd --permanent --zone={FIREWALLD_ZONE}"
    zone = zone or {"exists": False, "ipsets": {}}
    current = {"sources": [], "ports": [], "protocols": [], "target": "default", "description": "",
               "default-ports": [], **zone}  # fmt: skip
    commands = [] if current["exists"] else [f"firewall-cmd --permanent --new-zone={FIREWALLD_ZONE}"]
    for family, (name, ipset_family) in FIREWALLD_IPSETS.items():
        if name not in current["ipsets"]:
            new = f"--new-ipset={name} --type=hash:ip --option=family={ipset_family}"
            commands.append(f"firewall-cmd --permanent {new}")
        entries = _diff(current["ipsets"].get(name, []), policy.of_family(family))
        commands += _firewalld_batch(f"firewall-cmd --permanent --ipset={name}", "entry", *entries)
    allow = [_firewalld_port(port) for port in policy.allow]
    wanted = {
        "source": (current["sources"], [f"ipset:{name}" for name in FIREWALLD_NAMES]),
        "port": (current["ports"], list(dict.fromkeys([*policy.swarm_ports, *allow]))),
        "protocol": (current["protocols"], ["esp"] if policy.esp else []),
    }
    for option, (values, want) in wanted.items():
        commands += _firewalld_batch(cmd, option, *_diff(values, want))
    target = "default" if policy.deny_other else "ACCEPT"
    if current["target"] != target:
        commands.append(f"{cmd} --set-target={target}")
    recorded = current["description"].removeprefix("pyinfra-swarm allow:").split()
    default_ports = current["default-ports"]
    stale = [port for port in recorded if port not in allow and port in default_ports]
    missing = [port for port in allow if port not in default_ports]
    default_zone = f" --zone={current['default-zone']}" if current.get("default-zone") else ""
    commands += _firewalld_batch(f"firewall-cmd --permanent{default_zone}", "port", stale, missing)
    if recorded != allow:
        commands.append(f"{cmd} --set-description='pyinfra-swarm allow: {' '.join(allow)}'")
    return commands


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


@operation()
def rules(backend: str, text: str):
    """Our rules file and the unit that applies it at boot, applied now when either differs from what the host
    has, the rules aren't loaded or the unit isn't enabled: one operation, so that a peer's firewall is open by
    the time pyinfra runs a join planned on another host. Files are written whole and moved into place.

    + backend: ``iptables`` (an iptables-restore script of our own chains) or ``nftables`` (our own table)
    + text: the rules file's text

    **Example:**

    .. code:: python

        firewall.rules(name="Swarm firewall", backend="nftables", text=rules_text)
    """
    path, start, loaded_key = BACKENDS[backend]
    hashes = read(FileHashes, paths=FILES)
    service = read(ServiceStates, services=[UNIT]).get(UNIT, {"active": False, "enabled": False})
    write_rules = hashes.get(path) != sha256_text(text)
    write_unit = hashes.get(UNIT_FILE) != sha256_text(unit_text(start))
    if not (write_rules or write_unit) and read(FirewallTools)[loaded_key] and service["enabled"]:
        host.noop(f"firewall rules ({backend}) already in place")
        return
    if write_rules:
        yield write_command(path, text, mode="0755")
    if write_unit:
        yield write_command(UNIT_FILE, unit_text(start), mode="0644")
        yield "systemctl daemon-reload"
    yield f"systemctl {'restart' if service['active'] else 'start'} {UNIT}"
    yield f"systemctl enable {UNIT}"


@operation()
def ufw(allow: list[str], deny_other: bool):
    """ufw with the ports open to anyone and the default incoming policy, enabled; rules of ours no longer
    asked for are deleted. The swarm ports go in our own chain (``rules``), matched against the peers' set
    ahead of ufw's chains (ufw appends to INPUT and leaves other chains alone), so ufw's rules don't grow
    with the cluster.

    + allow: ports open to anyone (with sshd's own)
    + deny_other: refuse everything else inbound (policy deny), or let it in

    **Example:**

    .. code:: python

        firewall.ufw(name="ufw: ports open to anyone", allow=["22/tcp"], deny_other=True)
    """
    commands = ufw_commands(allow, deny_other, read(UfwState))
    if not commands:
        host.noop("ufw rules already in place")
        return
    yield from commands


@operation()
def firewalld(peers: list[str], swarm_ports: list[str], allow: list[str], esp: bool, deny_other: bool):
    """A firewalld zone of ours with the swarm's peers as sources (see `firewalld_commands`), reloaded only
    when it changed (a reload drops the rules older engines add at run time).

    + peers: the cluster's addresses
    + swarm_ports: the swarm ports of this node (``2377/tcp`` on managers, ``7946/tcp``, ...)
    + allow: ports open to anyone (with sshd's own)
    + esp: let ESP in from peers (encrypted overlays)
    + deny_other: refuse everything else inbound (policy deny), or only the swarm ports from others

    **Example:**

    .. code:: python

        firewall.firewalld(name="Swarm ports (firewalld)", peers=["10.0.0.11"], swarm_ports=["7946/tcp"],
                           allow=["22/tcp"], esp=False, deny_other=True)
    """
    policy = Policy(tuple(peers), tuple(swarm_ports), tuple(allow), esp, deny_other)
    commands = firewalld_commands(policy, read(FirewalldZone, zone=FIREWALLD_ZONE, ipsets=FIREWALLD_NAMES))
    if not commands:
        host.noop("firewalld zone already in place")
        return
    yield from [*commands, "firewall-cmd --reload"]
