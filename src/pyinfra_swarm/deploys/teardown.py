"""Tear the swarm down (`teardown.py`): from the acting manager, remove the stacks, secrets, configs and
networks this project created; then every node leaves (workers first, managers last); remove the firewall
rules this project added; with `docker_purge`, uninstall Docker and delete its data. A second run changes
nothing; the deploy afterwards builds the cluster again from scratch."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import Host
from pyinfra.operations import server

from pyinfra_swarm.deploys.objects import versioned_names
from pyinfra_swarm.deploys.registry import STACK, service_secret_names
from pyinfra_swarm.deploys.stacks import stale_versions
from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.facts import FirewalldZone, UfwState, read
from pyinfra_swarm.layout import ENGINE_PACKAGES
from pyinfra_swarm.operations import maintenance, swarm
from pyinfra_swarm.operations.firewall import (
    CHAIN,
    FIREWALLD_NAMES,
    FIREWALLD_ZONE,
    FORWARD_CHAIN,
    IPTABLES_RULES,
    NFT_RULES,
    NFT_TABLE,
    PEER_SETS,
    UFW_COMMENT,
    UNIT,
    UNIT_FILE,
)
from pyinfra_swarm.plan import ClusterPlan, current_host
from pyinfra_swarm.settings import is_manager, setting

STACK_GONE_WAIT = 60  # seconds to wait for a removed stack's tasks to stop (its networks are busy until then)


def remove_iptables_commands() -> list[str]:
    """Unhook and delete our chains, IPv4 and IPv6, then the peers' sets."""
    commands = []
    for binary in ("iptables", "ip6tables"):
        ipt = f"{binary} -w"
        commands.append(
            f"if command -v {binary} >/dev/null; then "
            f"while {ipt} -D INPUT -j {CHAIN} 2>/dev/null; do :; done; "
            f"while {ipt} -D DOCKER-USER -j {FORWARD_CHAIN} 2>/dev/null; do :; done; "
            f"for c in {CHAIN} {FORWARD_CHAIN}; do {ipt} -F $c 2>/dev/null; {ipt} -X $c 2>/dev/null; done; fi; true"
        )
    sets = " ".join(name for name, _ in PEER_SETS.values())
    return [*commands, f"for s in {sets}; do ipset destroy $s 2>/dev/null; done; true"]


@step("Tear the swarm down", runs_on="every host", build=False)
def teardown(plan: ClusterPlan, this: Host) -> None:
    """What this project created, removed from every host of the inventory (see the module docstring)."""
    if this is plan.primary:
        _remove_workloads(plan)
    swarm.barrier(name="The workloads are gone")
    if not is_manager(this):
        swarm.leave(name="Leave the swarm (workers first)")
    swarm.barrier(name="The workers left")
    if is_manager(this):
        swarm.leave(name="Leave the swarm (managers last)")
    _remove_firewall(plan)
    installed = [p for p in plan.fact("packages")["packages"] if p in ENGINE_PACKAGES]
    if setting(this, "docker_purge") and installed:
        server.shell(
            name="Uninstall Docker and delete its data",
            commands=maintenance.purge_commands(installed, plan.fact("packages")["manager"] or "apt"),
        )


def _remove_workloads(plan: ClusterPlan) -> None:
    this = current_host()
    stacks = [stack["name"] for stack in setting(this, "swarm_stacks")]
    if plan.registry is not None and plan.registry.mode == "service":
        stacks.append(STACK)
    deployed = plan.fact("swarm_stacks") or []
    gone = [name for name in stacks if name in deployed]
    for name in host.loop(stacks):
        swarm.stack(name=f"Remove stack {name}", stack_name=name, path="", present=False)
    if gone:  # their networks and secrets are in use until their tasks stopped
        waits = [f"for i in $(seq {STACK_GONE_WAIT}); do docker stack ps {shlex.quote(n)} >/dev/null 2>&1 || break; "
                 "sleep 1; done" for n in gone]  # fmt: skip
        server.shell(name="Wait until the stacks' tasks stopped", commands=waits)
    objects = plan.fact("swarm_objects") or {"network": [], "secret": [], "config": []}
    names = {
        "secret": {**versioned_names(this, "swarm_secrets"), **service_secret_names(plan)},
        "config": versioned_names(this, "swarm_configs"),
    }
    commands = [
        f"docker {kind} rm {name}"
        for kind in ("secret", "config")
        for name in sorted({*stale_versions(objects[kind], names[kind]), *(set(names[kind].values()) &
                                                                              set(objects[kind]))})
    ]  # fmt: skip
    commands += [f"docker network rm {name}" for name in sorted(setting(this, "swarm_networks"))
                 if name in objects["network"]]  # fmt: skip
    if commands:
        server.shell(name="Remove the secrets, configs and networks of this project", commands=commands)


def _remove_firewall(plan: ClusterPlan) -> None:
    tools = plan.fact("firewall")
    files = plan.fact("firewall_files")
    service = plan.fact("firewall_service").get(UNIT, {})
    commands = []
    if service.get("active") or service.get("enabled") or files.get(UNIT_FILE):
        commands += [f"systemctl disable --now {UNIT}", f"rm -f {UNIT_FILE}", "systemctl daemon-reload"]
    if tools.get("chain") or files.get(IPTABLES_RULES):
        commands += remove_iptables_commands()
    if tools.get("table"):
        commands.append(f"nft delete table inet {NFT_TABLE}")
    if files.get(IPTABLES_RULES) or files.get(NFT_RULES):
        commands.append(f"rm -f {IPTABLES_RULES} {NFT_RULES}")
    if tools.get("ufw") == "active":
        ours = [rule for rule in read(UfwState)["rules"] if UFW_COMMENT in rule]
        commands += [f"ufw delete {rule}" for rule in ours]
    zone = read(FirewalldZone, zone=FIREWALLD_ZONE, ipsets=FIREWALLD_NAMES) if tools.get("firewalld") else None
    if zone and (zone["exists"] or zone["ipsets"]):  # the zone first: its sources are the ipsets
        commands += [f"firewall-cmd --permanent --delete-zone={FIREWALLD_ZONE}"] if zone["exists"] else []
        commands += [f"firewall-cmd --permanent --delete-ipset={name}" for name in zone["ipsets"]]
        commands.append("firewall-cmd --reload")
    if commands:
        server.shell(name="Remove this project's firewall rules", commands=commands)
    else:
        host.noop("no firewall rules of this project")
