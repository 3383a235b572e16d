"""Checks before anything changes: the inventory and every host's data (bad input stops the whole run),
hostnames and advertise addresses (see cluster.py), whether each joining host reaches the manager it will join
through (a warning: ICMP may be blocked), and what the kernel supports, reported with what it means."""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy
from pyinfra.api.exceptions import DeployError

from pyinfra_swarm.cluster import cluster, current_host
from pyinfra_swarm.settings import setting

MEANINGS = {
    "VXLAN": "no VXLAN: overlay networks can't carry traffic between nodes",
    "IP_VS": "no IPVS: the routing mesh and VIP load balancing won't work; use endpoint_mode: dnsrr and "
    "host-mode published ports",
    "INET_ESP": "no ESP: encrypted overlay networks (--opt encrypted) silently drop traffic",
    "CRYPTO_GCM": "no GCM: encrypted overlay networks (--opt encrypted) silently drop traffic",
    "BRIDGE_NETFILTER": "no bridge netfilter: Docker can't filter container traffic",
}
ENCRYPTION = ("INET_ESP", "CRYPTO_GCM")


class Pingable(FactBase[bool | None]):
    """Whether this host reaches an address by ICMP echo within 2 seconds; None without a ping command."""

    def command(self, address: str) -> str:
        return (
            f"command -v ping >/dev/null || {{ echo unknown; exit 0; }}; "
            f"ping -c 1 -W 2 {shlex.quote(address)} >/dev/null 2>&1 && echo yes || echo no"
        )

    def process(self, output: list[str]) -> bool | None:
        return {"yes": True, "no": False}.get(output[-1] if output else "")


def kernel_report(features_by_host: dict[str, dict[str, bool | None]]) -> list[str]:
    """One line per missing feature, naming the hosts that lack it and what that means."""
    lines = []
    for feature, meaning in MEANINGS.items():
        lacking = sorted(name for name, features in features_by_host.items() if features.get(feature) is False)
        if lacking:
            lines.append(f"{meaning} (kernel of {', '.join(lacking)})")
    unknown = sorted(name for name, features in features_by_host.items() if features.get("VXLAN") is None)
    if unknown:
        lines.append(f"kernel config unreadable on {', '.join(unknown)}: swarm support not checked")
    return lines


@deploy("Preflight checks")
def preflight() -> None:
    """Validate the whole inventory (once), then check this host; raise before any change on bad input."""
    view = cluster(host.state)
    this = current_host()
    features = view.kernel[this]
    if setting(host, "swarm_encrypted_overlays") and any(features.get(f) is False for f in ENCRYPTION):
        raise DeployError(
            f"host {host.name}: swarm_encrypted_overlays is on but this kernel lacks ESP/GCM, so encrypted "
            "overlays would drop all traffic: turn it off or use a kernel with CONFIG_INET_ESP and CONFIG_CRYPTO_GCM"
        )
    if this is view.reachable[0]:
        report = kernel_report({h.name: view.kernel[h] for h in view.reachable})
        for line in report:
            logger.warning(f"preflight: {line}")
    acting = view.acting_manager
    if view.plan.get(this) in ("join", "rejoin") and acting is not None:
        # Only a hint: ICMP may be blocked where the swarm ports are open. The swarm port itself is checked
        # right before the join (this run's firewall step may open it).
        address = view.addresses[acting]
        if host.get_fact(Pingable, address=address) is False:
            logger.warning(
                f"{host.print_prefix}manager {acting.name} ({address}) doesn't answer ping: if the join fails, check "
                "the network between the nodes, and that swarm_advertise_addr is the address they reach each other on"
            )
