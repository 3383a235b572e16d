"""The plan's checks: bad input and unsafe changes refused before anything on the cluster is touched, and
warnings for what works but could hurt (clock skew, small MTU, an even number of managers)."""

from __future__ import annotations

import ipaddress
from typing import Any

from pyinfra import logger
from pyinfra.api import Host
from pyinfra.api.exceptions import DeployError

from pyinfra_swarm import pki
from pyinfra_swarm.engines import SPI_ENGINES, Release, changed_spi, engine_release, shown
from pyinfra_swarm.layout import ca_path
from pyinfra_swarm.lock import PKI_RECORD, record_pki
from pyinfra_swarm.plan.model import ClusterPlan
from pyinfra_swarm.settings import setting

CLOCK_SKEW = 10.0  # seconds between a host's clock and the controller's worth a warning


def uses_pki(first: Host) -> bool:
    """Whether data puts anything of the controller's PKI directory into the swarm: the registry's CA,
    certificate and password, versioned secret and config names, the unlock key."""
    keys = ("registry_mode", "swarm_secrets", "swarm_configs", "swarm_autolock")
    return any(setting(first, key) for key in keys)


def check_pki(plan: ClusterPlan) -> None:
    """Stop, before any change, a controller whose PKI directory is not the one the swarm was deployed with
    (it would replace the registry's CA and password, and rename every secret and config version): the
    swarm's record of it, and the registry CA the nodes trust, must match this directory's, unless
    `swarm_pki_takeover`. A swarm without a record gets this directory's."""
    first = plan.hosts[0]
    if not uses_pki(first):
        return
    takeover = setting(first, "swarm_pki_takeover")
    problems = []
    if plan.lock is not None:
        ours = pki.identity()
        recorded = [r.removeprefix(PKI_RECORD) for r in plan.lock.pki_records]
        if recorded and ours not in recorded:
            problems.append(f"the swarm was deployed with PKI directory {recorded[0]}, this one is "
                            f"{ours or 'new (no key yet)'}")  # fmt: skip
    if plan.registry is not None and plan.registry.tls:
        ca = pki.ca_digest()
        trusting = sorted(h.name for h in plan.reachable if other_ca(plan, h, ca))
        if trusting:
            problems.append(f"{', '.join(trusting)} trust{'s' if len(trusting) == 1 else ''} another registry CA than "
                            f"this directory's{'' if ca else ' (it has none yet)'}")  # fmt: skip
    if problems and not takeover:
        raise DeployError(
            f"this controller's PKI directory ({pki.pki_dir()}) is not the one this swarm was deployed with: "
            + "; ".join(problems) + ". Going on would replace the registry's CA, certificate and password and "
            "rename every secret and config version. Copy the PKI directory of the controller that deployed it here "
            "(or point PYINFRA_SWARM_PKI_DIR at a copy), or set swarm_pki_takeover: true to make this one the swarm's"
        )  # fmt: skip
    if problems:
        logger.warning(f"swarm_pki_takeover: this controller's PKI directory ({pki.pki_dir()}) becomes the swarm's: "
                       + "; ".join(problems))  # fmt: skip
    if plan.lock is not None and (problems or not plan.lock.pki_records):
        pki.object_key()
        identity = pki.identity()
        assert identity is not None
        record_pki(plan.lock, identity)


def other_ca(plan: ClusterPlan, target: Host, ca: str | None) -> bool:
    """Whether a host trusts a registry CA (its ca.crt for the registry) that is not `ca`."""
    assert plan.registry is not None
    held = (plan.fact("registry_ca", target) or {}).get(ca_path(plan.registry.address))
    return held is not None and held != ca


def check_users(plan: ClusterPlan) -> None:
    """`docker_users` names existing accounts: the deploy adds them to the docker group, it creates none (a
    misspelt name would be a new account with root's power over Docker)."""
    problems = []
    for host in plan.reachable:
        users = setting(host, "docker_users")
        missing = sorted(set(users) - set(plan.fact("users", host) or []))
        if missing and plan.takes_part(host):
            problems.append(f"host {host.name}: docker_users {', '.join(missing)}: no such user on it")
    if problems:
        raise DeployError("; ".join(problems) + ": the deploy adds existing users to the docker group and creates none")


def check_overlay_subnets(first: Host, addresses: dict[Host, dict[str, list[str]]]) -> None:
    """Refuse overlay address pools and network subnets that hold an address of a host's own interfaces:
    the overlay would hide that network from the containers (and from the node's own routing)."""
    subnets = {f"swarm_default_addr_pool {pool}": pool for pool in setting(first, "swarm_default_addr_pool")}
    for name, options in setting(first, "swarm_networks").items():
        if options.get("subnet"):
            subnets[f"swarm_networks[{name!r}] subnet {options['subnet']}"] = options["subnet"]
    problems = []
    for label, subnet in subnets.items():
        network = ipaddress.ip_network(subnet, strict=False)
        for host, interfaces in addresses.items():
            clash = [f"{ip} ({name})" for name, ips in interfaces.items() for ip in ips
                     if name != "lo" and ipaddress.ip_address(ip) in network]  # fmt: skip
            if clash:
                problems.append(f"{label} overlaps the networks of host {host.name}: {', '.join(clash)}")
    if problems:
        raise DeployError("; ".join(problems) + ": pick overlay subnets clear of the hosts' own networks")


def check_removals(plan: ClusterPlan) -> None:
    """Refuse, before any change, a removal that would remove the last manager or break quorum; warn when
    the managers left tolerate no loss."""
    if not plan.removed or plan.primary is None or plan.recovering:
        return
    managers = [n for n in plan.nodes if n["role"] == "manager"]
    leaving = {n["id"] for h in plan.removed for n in [plan.node_of(h) or plan.entry_by_address(h)] if n}
    staying = [n for n in managers if n["id"] not in leaving]
    names = ", ".join(h.name for h in plan.removed)
    if not staying:
        raise DeployError(f"removing {names} would remove the swarm's last manager: add a manager first (or tear "
                          "the swarm down with teardown.py)")  # fmt: skip
    reachable = [n for n in staying if n["reachability"] == "reachable"]
    needed = len(staying) // 2 + 1
    if len(reachable) < needed:
        raise DeployError(
            f"removing {names} would leave {len(reachable)} reachable of {len(staying)} managers, {needed} needed "
            "for quorum: bring the unreachable managers back first"
        )
    if len(staying) < len(managers) and len(staying) - needed == 0:
        logger.warning(
            f"after removing {names}, {len(staying)} manager(s) remain: the swarm then tolerates no manager loss "
            "(use 3 managers)"
        )


def check_init_settings(primary: Host, swarm_cluster: dict[str, Any]) -> None:
    """Settings that only take effect at `swarm init` must match the running swarm: a difference is an error
    before any change (the firewall would otherwise open a port the swarm doesn't use)."""
    problems = []
    port = swarm_cluster.get("DataPathPort")
    if port and setting(primary, "swarm_data_path_port") != port:
        problems.append(f"swarm_data_path_port is {setting(primary, 'swarm_data_path_port')}, the swarm uses {port}")
    pools = setting(primary, "swarm_default_addr_pool")
    if pools and swarm_cluster.get("DefaultAddrPool") and sorted(pools) != sorted(swarm_cluster["DefaultAddrPool"]):
        problems.append(f"swarm_default_addr_pool is {pools}, the swarm uses {swarm_cluster['DefaultAddrPool']}")
    mask = setting(primary, "swarm_default_addr_pool_mask_length")
    if mask and swarm_cluster.get("SubnetSize") and mask != swarm_cluster["SubnetSize"]:
        problems.append(f"swarm_default_addr_pool_mask_length is {mask}, the swarm uses {swarm_cluster['SubnetSize']}")
    if problems:
        raise DeployError(
            "settings that only apply at `swarm init` differ from the running swarm: "
            + "; ".join(problems)
            + ". Set them to what the swarm uses (changing them means a new swarm)"
        )


def warn_clock_skew(clocks: dict[Host, float | None], controller_time: float) -> None:
    """Swarm's TLS certificates and raft need clocks that agree: name the hosts whose clock is off."""
    for host, clock in clocks.items():
        if clock is not None and abs(clock - controller_time) > CLOCK_SKEW:
            logger.warning(
                f"{host.name}: its clock is {clock - controller_time:+.0f} s off this machine's: swarm node "
                "certificates may be refused; run NTP (systemd-timesyncd, chrony) on every node"
            )


def warn_small_mtu(addresses: dict[Host, str], links: dict[Host, tuple[dict, dict]]) -> None:
    """Overlay traffic carries 50 bytes of VXLAN headers: on an underlay MTU below 1500 the overlays' default
    of 1500 drops large packets unless the networks set a smaller `mtu`."""
    for host, (interfaces, mtus) in links.items():
        name = next((i for i, addrs in interfaces.items() if addresses.get(host) in addrs), None)
        mtu = mtus.get(name) if name else None
        if mtu is not None and mtu < 1500:
            logger.warning(
                f"{host.name}: {name} has MTU {mtu}: overlay networks need mtu {mtu - 50} or less "
                "(swarm_networks: {NAME: {mtu: ...}}, and com.docker.network.driver.mtu in stacks)"
            )


def check_unique_hostnames(hostnames: dict[Host, str]) -> None:
    seen: dict[str, str] = {}
    for host, hostname in hostnames.items():
        if hostname in seen:
            raise DeployError(
                f"hosts {seen[hostname]} and {host.name} have the same hostname {hostname!r}: swarm nodes are "
                "named by hostname, give each a unique one"
            )
        seen[hostname] = host.name


def installed_engine(installed: dict[str, str]) -> str | None:
    """The version of the engine package installed, of those given as {package: version}."""
    return next((installed[p] for p in ("docker-ce", "docker.io", "moby-engine") if p in installed), None)


def engines_after(plan: ClusterPlan) -> tuple[dict[str, Release], dict[str, Release]]:
    """The engine releases of the swarm's nodes now, and once this run is done (by node hostname, or
    inventory name for a host to join): a pinned `docker_version` where the run installs it, else what runs
    or is installed. Releases that can't be known (an unpinned engine yet to install) are left out."""
    now = {n["hostname"]: r for n in plan.nodes if (r := engine_release(n["engine"])) is not None}
    after = dict(now)
    for target in plan.reachable:
        if target not in plan.in_limit or target in plan.removed:
            continue
        entry = plan.node_of(target) if plan.is_member(target) else None
        installed = plan.fact("packages", target)["packages"]
        version = setting(target, "docker_version") or (None if entry else installed_engine(installed))
        release = engine_release(version)
        if release is not None:
            after[entry["hostname"] if entry else plan.hostnames.get(target, target.name)] = release
    return now, after


def check_encrypted_overlay_engines(plan: ClusterPlan) -> None:
    """Stop, before any change, a run (a rolling upgrade, a join) that would put engines on both sides of
    moby#51798 in one swarm while it has encrypted overlay networks (the data's or the swarm's): traffic on
    them between the two sides would stop. `swarm_allow_encrypted_mix` accepts that, with a warning."""
    first = plan.hosts[0]
    data = {name for name, spec in setting(first, "swarm_networks").items() if spec.get("encrypted")}
    encrypted = sorted({n["name"] for n in plan.networks if n["encrypted"]} | data)
    if not encrypted:
        return
    now, after = engines_after(plan)
    moving = [
        name
        for name, release in after.items()
        if now.get(name) is None or changed_spi(release) != changed_spi(now[name])
    ]
    sides = {changed_spi(release) for release in [*now.values(), *after.values()]}
    if len(sides) < 2 or not moving:
        return

    side = changed_spi(after[moving[0]])
    meeting = {name: release for name, release in now.items() if changed_spi(release) != side}
    meeting |= {name: release for name, release in after.items() if changed_spi(release) != side}
    problem = (
        f"this run would have {_on({n: after[n] for n in moving if changed_spi(after[n]) == side})} beside "
        f"{_on(meeting)} in one swarm (for a rolling upgrade: until its last node), while encrypted overlay networks "
        f"exist ({', '.join(encrypted)}); encrypted traffic does not pass between the two (moby#51798: {SPI_ENGINES} "
        "compute IPsec SPIs unlike every other release)"
    )
    if setting(first, "swarm_allow_encrypted_mix"):
        logger.warning(f"swarm_allow_encrypted_mix: {problem}")
        return
    raise DeployError(
        f"{problem}. Pick engine versions on one side (29.2.1 and later are on the side of 28.x and older), or "
        "set swarm_allow_encrypted_mix: true to accept the cut for the length of the rolling upgrade"
    )


def _on(releases: dict[str, Release]) -> str:
    """Nodes and their engine releases, in words: "m1, w1 on 28.5.2 and w2 on 29.1.3"."""
    by_release: dict[Release, list[str]] = {}
    for name, release in sorted(releases.items()):
        by_release.setdefault(release, []).append(name)
    return " and ".join(f"{', '.join(names)} on {shown(r)}" for r, names in sorted(by_release.items()))
