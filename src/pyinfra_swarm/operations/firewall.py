"""Firewall operations: our rules file and the unit that applies it at boot."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from pyinfra_swarm.facts import STATE_DIR, FileHashes, FirewallTools, ServiceStates, read, sha256_text
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
