"""Open the swarm ports to the cluster's own addresses only: 2377/tcp on managers, 7946/tcp+udp and the
data path port (4789/udp) on every node, ESP when encrypted overlays are on. Backends: a chain / table of our
own for iptables or nftables, applied atomically and restored at boot; ufw (our chain for the swarm ports, ufw
for the rest); firewalld (a zone of ours). What each lets in, and how published ports are filtered:
operations/firewall.py."""

from __future__ import annotations

from dataclasses import replace

from pyinfra import host
from pyinfra.api import Host
from pyinfra.operations import apt, dnf

from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.operations import firewall
from pyinfra_swarm.plan import ClusterPlan
from pyinfra_swarm.settings import is_manager, setting


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
    policy = firewall.node_policy(
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
    if backend == "nftables" and not tools["nft"]:
        _install(plan, "nftables")
    if backend in ("iptables", "ufw") and not tools["ipset"]:  # the peers are one set the rules match
        _install(plan, "ipset")
    if backend == "ufw" and tools["ufw"] is None:
        _install(plan, "ufw")
    if backend == "nftables":
        firewall.rules(name="Firewall rules (nftables), applied now and at boot", backend=backend,
                       text=firewall.nftables_rules(policy))  # fmt: skip
    elif backend in ("iptables", "ufw"):
        # With ufw, our chain holds only the swarm ports (peers in, others refused) and ufw the rest.
        swarm_only = replace(policy, allow=(), deny_other=False) if backend == "ufw" else policy
        firewall.rules(name="Firewall rules (iptables), applied now and at boot", backend="iptables",
                       text=firewall.iptables_script(swarm_only))  # fmt: skip
    if backend == "ufw":
        firewall.ufw(name="ufw: ports open to anyone, default policy", allow=list(policy.allow),
                     deny_other=policy.deny_other)  # fmt: skip
    elif backend == "firewalld":
        firewall.firewalld(name="Open the swarm ports to peers (firewalld)", peers=list(policy.peers),
                           swarm_ports=list(policy.swarm_ports), allow=list(policy.allow), esp=policy.esp,
                           deny_other=policy.deny_other)  # fmt: skip


def _install(plan: ClusterPlan, package: str) -> None:
    """A package the firewall needs, with the host's package manager (apt or dnf)."""
    if plan.fact("packages")["manager"] == "dnf":
        dnf.packages(name=f"Install {package}", packages=[package])
    else:
        apt.packages(name=f"Install {package}", packages=[package], update=True)
