"""Checks before anything changes: the inventory and every host's data (bad input stops the whole run),
hostnames and advertise addresses (see plan.py), whether each joining host reaches the manager it will join
through (a warning: ICMP may be blocked), and what the kernel supports, reported with what it means."""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import Host
from pyinfra.api.exceptions import DeployError

from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.plan import ClusterPlan
from pyinfra_swarm.settings import setting

MEANINGS = {
    "VXLAN": "no VXLAN: overlay networks can't carry traffic between nodes",
    "IP_VS": "no IPVS: the routing mesh and VIP load balancing won't work; use endpoint_mode: dnsrr and "
    "host-mode published ports",
    "INET_ESP": "no ESP: encrypted overlay networks (--opt encrypted) silently drop traffic",
    "CRYPTO_GCM": "no GCM: encrypted overlay networks (--opt encrypted) silently drop traffic",
    "BRIDGE_NETFILTER": "no bridge netfilter: Docker can't filter container traffic",
    "XFRM_USER": "no XFRM user interface: encrypted overlay networks (--opt encrypted) can't set up their keys",
    "OVERLAY_FS": "no overlayfs: Docker falls back to a slow storage driver (vfs)",
}
ENCRYPTION = ("INET_ESP", "CRYPTO_GCM", "XFRM_USER")
NAMES = {"VXLAN": "VXLAN", "IP_VS": "IPVS", "INET_ESP": "ESP", "CRYPTO_GCM": "GCM",
         "BRIDGE_NETFILTER": "bridge netfilter", "XFRM_USER": "XFRM", "OVERLAY_FS": "overlayfs"}  # fmt: skip


def kernel_present(features_by_host: dict[str, dict[str, bool | None]]) -> str:
    """The features every host's kernel has, in one line (what the swarm's networking can rely on)."""
    everywhere = [NAMES[f] for f in MEANINGS if all(features.get(f) for features in features_by_host.values())]
    return f"kernel of every host has: {', '.join(everywhere) or 'none of the swarm networking features'}"


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


@step("Preflight checks")
def preflight(plan: ClusterPlan, this: Host) -> None:
    """Check this host against the plan (which checked the whole inventory and all data); raise before any
    change on bad input."""
    features = plan.fact("kernel")
    if setting(this, "swarm_encrypted_overlays") and any(features.get(f) is False for f in ENCRYPTION):
        raise DeployError(
            f"host {this.name}: swarm_encrypted_overlays is on but this kernel lacks ESP/GCM, so encrypted "
            "overlays would drop all traffic: turn it off or use a kernel with CONFIG_INET_ESP and CONFIG_CRYPTO_GCM"
        )
    if this is plan.reachable[0]:
        features_by_host = {h.name: plan.fact("kernel", h) for h in plan.reachable}
        logger.info(f"preflight: {kernel_present(features_by_host)}")
        for line in kernel_report(features_by_host):
            logger.warning(f"preflight: {line}")
    acting = plan.acting_manager
    if plan.fact("ping_acting") is False and acting is not None:
        # Only a hint: ICMP may be blocked where the swarm ports are open. The swarm port itself is checked
        # right before the join (this run's firewall step may open it).
        logger.warning(
            f"{host.print_prefix}manager {acting.name} ({plan.addresses[acting]}) doesn't answer ping: if the join "
            "fails, check the network between the nodes, and that swarm_advertise_addr is the address they reach "
            "each other on"
        )
