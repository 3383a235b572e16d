"""Plan deploys against pyinfra's @fake connector: hosts answer fact commands with canned output, and the
planned operations' commands are read back without touching any machine."""

from __future__ import annotations

import json
import os
import time
from typing import Any

os.environ["PYINFRA_FAKE_DELAY"] = os.environ["PYINFRA_FAKE_DELAY_JITTER"] = "0"

import pyinfra
from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import FileUploadCommand, FunctionCommand
from pyinfra.api.connect import connect_all
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_host, ctx_state

from pyinfra_swarm.facts import Bundle
from pyinfra_swarm.lock import release_all
from pyinfra_swarm.plan.observe import HOST_FACTS, firewall_facts

KERNEL_FULL = ["CONFIG_VXLAN=m", "CONFIG_IP_VS=m", "CONFIG_INET_ESP=m", "CONFIG_CRYPTO_GCM=y", "CONFIG_XFRM_USER=m",
               "CONFIG_OVERLAY_FS=m", "CONFIG_BRIDGE_NETFILTER=m"]  # fmt: skip
DEBIAN = ["/etc/os-release", "ID=debian", "VERSION_ID=12", "VERSION_CODENAME=bookworm", "---"]
UBUNTU = ["/etc/os-release", "ID=ubuntu", "VERSION_ID=24.04", "VERSION_CODENAME=noble", "UBUNTU_CODENAME=noble", "---"]
# EngineState of an engine that started after its daemon.json last changed, and runs its own binary.
ENGINE_RUNNING = ["pid=100", "exe=/usr/sbin/dockerd", "started=1800000000.00", "config_time=1700000000"]
ROCKY = ["/etc/os-release", "ID=rocky", "VERSION_ID=9.4", "---"]


def host(
    name: str,
    address: str,
    *,
    hostname: str | None = None,
    addresses: list[str] | None = None,
    os_release: list[str] = DEBIAN,
    manager: str = "apt",
    packages: dict[str, str] | None = None,
    docker_running: bool = False,
    daemon_config: str | None = None,
    swarm: str | None = None,
    nodes: str | None = None,
    kernel: list[str] = KERNEL_FULL,
    firewall: dict[str, str] | None = None,
    mtu: int = 1500,
    sshd_ports: tuple[int, ...] = (22,),
    apt_files: dict[str, str] | None = None,
    engine: list[str] | None = None,
    extra: dict[Any, Any] | None = None,
    networks: list[dict[str, Any]] | None = None,
    **data: Any,
) -> tuple[str, dict[str, Any]]:
    """An inventory entry for a fake host. `swarm` is the `docker info` Swarm JSON (None: Docker missing);
    `apt_files` maps a path to its sha256 (those not given are missing); `networks`: a manager's overlay
    networks as Docker's API lists them; `engine` is EngineState's output (by
    default: a running engine that runs its daemon.json); the other keywords shape what the host's gathered
    facts (hostfacts.Bundle) say."""
    installed = [f"{pkg} {version}" for pkg, version in {"curl": "7.88", **(packages or {})}.items()]
    release = dict(line.split("=", 1) for line in os_release if "=" in line)
    codename = release.get("UBUNTU_CODENAME") or release.get("VERSION_CODENAME", "")
    about = [f"release={release.get('ID', '')} {release.get('VERSION_ID', '')}", f"codename={codename}", "arch=amd64"]
    sections = {
        "hostname": [hostname or name],
        "addresses": addresses or [f"2: eth0    inet {address}/24 brd 10.1.0.255 scope global eth0"],
        "swarm": [swarm] if swarm is not None else [Bundle.MISSING],
        "kernel": ["apparmor=", *kernel],
        "daemon_config": [daemon_config] if daemon_config is not None else [],
        "packages": [f"manager={manager}", *about, *installed],
        "apt_source": [f"{digest} {path}" for path, digest in (apt_files or {}).items()],
        "services": [
            "Id=docker.service",
            f"ActiveState={'active' if docker_running else 'inactive'}",
            f"UnitFileState={'enabled' if docker_running else 'disabled'}",
        ],
        "firewall_service": [],
        "firewall": [
            f"{key}={value}"
            for key, value in {"iptables": "/usr/sbin/iptables", "ipset": "/usr/sbin/ipset", **(firewall or {})}.items()
        ],
        "firewall_files": [],
        "mtus": [f"2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu {mtu} qdisc noqueue state UP"],
        "clock": [f"{time.time():.3f}"],
        "sshd_ports": [f"port {port}" for port in sshd_ports],
        "engine": engine if engine is not None else ENGINE_RUNNING if docker_running else ["pid=0"],
    }
    bundle: list[str] = []
    # What the firewall front-ends say comes in the same command, where data may use them.
    sections["ufw"] = (extra or {}).get("ufw status verbose", [Bundle.MISSING])
    sections["firewalld_zone"] = (extra or {}).get("firewalld files", [])
    for fact_name in [*HOST_FACTS, *firewall_facts(data.get("swarm_firewall", "auto"))]:
        bundle += [*sections[fact_name], Bundle.SEPARATOR]
    # A manager's node list comes last in the same command (a worker has no such section to read).
    if nodes is None and swarm is not None and json.loads(swarm).get("ControlAvailable"):
        nodes = json.dumps([_self_node(json.loads(swarm)["NodeID"], hostname or name)])
    if nodes is not None:
        bundle += [nodes, Bundle.SEPARATOR, json.dumps(networks or []), Bundle.SEPARATOR]
    responses: dict[Any, Any] = {
        "echo apparmor=": bundle[:-1],  # the Bundle of registered facts (planned ones answer nothing)
        "config create --label pyinfra-swarm.lock.run": ["locked"],  # the cluster lock is free
        "-release": os_release,
        "dpkg --print-architecture": ["amd64"],
        "dpkg -l": [f"ii  {pkg}  {version}  amd64  package" for pkg, version in (packages or {}).items()],
        "rpm --queryformat": [f"{pkg} {version}" for pkg, version in (packages or {}).items()],
    }
    if nodes is not None:
        responses["docker node inspect"] = [nodes]
    responses.update(extra or {})
    return f"@fake/{name}", {"swarm_advertise_addr": address, "fake_delay": 0, "fake_responses": responses, **data}


def _self_node(node_id: str, hostname: str) -> dict[str, Any]:
    """A manager's own entry in its node list (a manager always lists itself)."""
    return {"ID": node_id, "Description": {"Hostname": hostname}, "Status": {"State": "ready"},
            "Spec": {"Role": "manager", "Availability": "active", "Labels": {}},
            "ManagerStatus": {"Leader": True, "Reachability": "reachable"}}  # fmt: skip


def describe(command: Any) -> str:
    """A planned command as tests compare it: a shell command as it would run (secrets masked), an upload as
    `upload DEST`, a callback as `function(args...)`."""
    if isinstance(command, FunctionCommand):
        return f"{command.function.__name__}({', '.join(repr(arg) for arg in command.args)})"
    if isinstance(command, FileUploadCommand):
        return f"upload {command.dest}"
    return str(command)


class Step(tuple):
    """(operation name, [command, ...]) of a planned operation; `serial`: it runs on one host at a time."""

    serial: bool


def plan(
    deploys: list, managers: list, workers: list | None = None, limit: list[str] | None = None, parallel: int = 0
) -> dict[str, Any]:
    """{host: [(operation name, [command, ...]), ...]} that the deploys plan for each host; None for a host
    the deploys stopped (failed), or outside `limit`. Each call is a run of its own (its own State)."""
    workers = workers or []
    inventory = Inventory(
        (managers + workers, {}),
        swarm_managers=([name for name, _ in managers], {}),
        swarm_workers=([name for name, _ in workers], {}),
    )
    state = State(inventory, Config(PARALLEL=parallel))
    if limit is not None:  # as `pyinfra --limit`
        state.limit_hosts = [inventory.get_host(f"@fake/{name}") for name in limit]
    connect_all(state)
    # As the CLI does for each file: operation order starts with the deploy's number, so steps from different
    # modules never share an order (their line numbers alone could collide).
    state.set_stage(StateStage.Prepare)
    pyinfra.is_cli = True
    try:
        with ctx_state.use(state):
            for number, deploy in enumerate(deploys):
                state.current_op_file_number = number
                for deploy_host in state.inventory.get_active_hosts():
                    with ctx_host.use(deploy_host):
                        deploy()
    finally:
        pyinfra.is_cli = False
        release_all()  # a real run releases the cluster lock after its last operation
    planned: dict[str, Any] = {}
    for inventory_host in inventory:
        if inventory_host in state.failed_hosts or not state.is_host_in_limit(inventory_host):
            planned[inventory_host.name.removeprefix("@fake/")] = None
            continue
        steps = []
        for op_hash in state.get_op_order():
            if op_hash not in state.ops[inventory_host]:
                continue
            op = state.get_op_data_for_host(inventory_host, op_hash)
            name = ", ".join(sorted(state.get_op_meta(op_hash).names))
            with ctx_state.use(state), ctx_host.use(inventory_host):
                step = Step((name, [describe(command) for command in op.command_generator()]))
            step.serial = bool(state.get_op_meta(op_hash).global_arguments.get("_serial"))
            if step[1]:  # operations that run nothing (no change, the join barrier) are left out
                steps.append(step)
        planned[inventory_host.name.removeprefix("@fake/")] = steps
    return planned


def commands(steps: list[tuple[str, list[str]]]) -> list[str]:
    return [command for _, step in steps for command in step]


def firewalld_files(zone: str | None, default_ports: list[str], ipsets: dict[str, list[str]]) -> list[str]:
    """What the FirewalldZone fact's command prints: our zone's file (`zone`: its XML body, None: no zone),
    the default zone's, and the ipsets' files."""
    lines = ["#zone", f"<zone>{zone}</zone>"] if zone is not None else []
    ports = "".join(f'<port protocol="{p.split("/")[1]}" port="{p.split("/")[0]}"/>' for p in default_ports)
    lines += [
        "#default-zone public",
        '<?xml version="1.0" encoding="utf-8"?>',
        f"<zone><service name='ssh'/>{ports}</zone>",
    ]
    for name, entries in ipsets.items():
        lines += [f"#ipset {name}", f'<ipset type="hash:ip">{"".join(f"<entry>{e}</entry>" for e in entries)}</ipset>']
    return lines
