"""Bring a lab up, take it down, and report on it. Every lab resource carries the lab's label, and only
resources with that label are ever changed or removed."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, NotFound

from pyinfra_swarm.lab import state, vm
from pyinfra_swarm.lab.images import ensure_node_image, export_base_image
from pyinfra_swarm.lab.limits import RAISED, ensure_inotify
from pyinfra_swarm.lab.spec import AUTO_SUBNETS, LABEL, LabError, LabSpec, Node, host_addresses, state_root

Progress = Callable[[str], None]
READY_TIMEOUT = 120.0
NODE_LABEL = "pyinfra-swarm.node"
ROLE_LABEL = "pyinfra-swarm.role"
ADDRESS_LABEL = "pyinfra-swarm.address"


def connect() -> docker.APIClient:
    """A client for the Docker engine of DOCKER_HOST (or the local socket), or a clear error."""
    try:
        api = docker.APIClient(version="auto", **_client_kwargs())
        api.ping()
    except DockerException as exc:
        raise LabError(
            "no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): start Docker, or run "
            f"`make engine` to install and start it on a Debian host ({exc.__class__.__name__})"
        ) from None
    return api


def _client_kwargs() -> dict[str, Any]:
    return docker.utils.kwargs_from_env()


def up(spec: LabSpec, progress: Progress, privileged: str = "auto") -> state.LabState:
    """Make the lab match `spec`: reuse running nodes, start stopped ones, recreate broken ones."""
    api = connect()
    images = {distro: ensure_node_image(api, progress, distro) for distro in sorted({n.distro for n in spec.nodes})}
    export_base_image(api, state_root() / "images", progress)
    subnet = _ensure_network(api, spec, progress)
    existing = {c["Labels"][NODE_LABEL]: c for c in _containers(api, spec.name)}
    for name in sorted(set(existing) - {node.name for node in spec.nodes}):
        progress(f"removing {name}: not in the requested shape")
        extra = existing.pop(name)
        _remove_node(api, extra["Id"], Node(name, extra["Labels"][ROLE_LABEL], spec.name).volume)
    state.key_pair(spec.state_dir)
    taken = {c["Labels"].get(ADDRESS_LABEL) for c in existing.values()}
    free = [a for a in host_addresses(subnet) if a not in taken]
    runtime: dict[str, Any] | None = None
    addresses = {}
    starting = [n for n in spec.nodes if existing.get(n.name, {}).get("State") != "running"]
    if _engine_is_local(api):
        ensure_inotify(len(starting), progress)
    for node in spec.nodes:
        current = existing.get(node.name)
        address = current["Labels"][ADDRESS_LABEL] if current else free.pop(0)
        image = images[node.distro]
        if current and _is_broken(current, image, spec.network):
            progress(f"recreating {node.name}: its container is broken or outdated")
            api.remove_container(current["Id"], force=True)
            current = None
        if current is None:
            runtime = runtime or _runtime_options(api, image, progress, privileged)
            progress(f"creating {node.name} ({address})")
            _create_node(api, spec, node, image, address, runtime)
        elif current["State"] == "paused":
            api.unpause(current["Id"])
        elif current["State"] != "running":
            progress(f"starting {node.name}")
            api.start(current["Id"])
        addresses[node.name] = address
    _install_key(api, spec)
    _wait_ready(api, spec, addresses, progress)
    state.save_known_hosts(spec.state_dir, {addresses[n.name]: _host_keys(api, n.container) for n in spec.nodes})
    lab_state = state.LabState(
        name=spec.name,
        subnet=subnet,
        network=spec.network,
        ssh_key=str(state.key_path(spec.state_dir)),
        nodes=[state.NodeState(n.name, n.hostname, n.container, n.role, addresses[n.name]) for n in spec.nodes],
    )
    state.save(spec.state_dir, lab_state)
    return lab_state


def down(name: str | None, progress: Progress) -> int:
    """Remove a lab's containers, volumes and network, or its VMs (every lab's with name None). Returns how
    many."""
    folders = [LabSpec(name=name, managers=1, workers=0).state_dir] if name else list(state_root().glob("*"))
    removed = sum(vm.down(folder, progress) for folder in folders if state.is_vm_lab(folder))
    if name and state.is_vm_lab(folders[0]):
        state.remove(folders[0])
        return removed
    api = connect()
    label = f"{LABEL}={name}" if name else LABEL
    for container in api.containers(all=True, filters={"label": label}):
        progress(f"removing container {container['Names'][0].lstrip('/')}")
        api.remove_container(container["Id"], force=True)
        removed += 1
    for volume in api.volumes(filters={"label": label}).get("Volumes") or []:
        api.remove_volume(volume["Name"], force=True)
        removed += 1
    for network in api.networks(filters={"label": label}):
        progress(f"removing network {network['Name']}")
        api.remove_network(network["Id"])
        removed += 1
    if name:
        state.remove(LabSpec(name=name, managers=1, workers=0).state_dir)
    else:
        state.remove_all()
    return removed


def status(name: str) -> list[dict[str, str]]:
    """One row per node of lab `name`: node, address, role group, container state, systemd state."""
    folder = LabSpec(name=name, managers=1, workers=0).state_dir
    if state.is_vm_lab(folder):
        return vm.status(folder)
    api = connect()
    rows = []
    for container in sorted(_containers(api, name), key=lambda c: c["Labels"][NODE_LABEL]):
        labels = container["Labels"]
        systemd = _systemd_state(api, container["Id"]) if container["State"] == "running" else "-"
        rows.append(
            {
                "node": labels[NODE_LABEL],
                "address": labels[ADDRESS_LABEL],
                "group": f"swarm_{labels[ROLE_LABEL]}s",
                "state": container["State"],
                "systemd": systemd,
            }
        )
    return rows


def _containers(api: docker.APIClient, lab: str) -> list[dict[str, Any]]:
    return api.containers(all=True, filters={"label": f"{LABEL}={lab}"})


def _ensure_network(api: docker.APIClient, spec: LabSpec, progress: Progress) -> str:
    for network in api.networks(names=[spec.network]):
        if network["Name"] != spec.network:
            continue
        if (network.get("Labels") or {}).get(LABEL) != spec.name:
            raise LabError(f"a Docker network named {spec.network} exists but was not made by this lab")
        subnet = network["IPAM"]["Config"][0]["Subnet"]
        if spec.subnet and spec.subnet != subnet:
            raise LabError(
                f"lab {spec.name} already uses subnet {subnet}; run `pyinfra-swarm lab down --name "
                f"{spec.name}` first to move it to {spec.subnet}"
            )
        return subnet
    problem = ""
    for _ in range(1 if spec.subnet else 5):  # another lab made at the same moment may take a free subnet first
        subnet = spec.subnet or _free_subnet(api)
        progress(f"creating network {spec.network} ({subnet})")
        try:
            api.create_network(
                spec.network,
                driver="bridge",
                ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)]),
                labels={LABEL: spec.name},
            )
            return subnet
        except APIError as exc:
            problem = f"creating network {spec.network} with subnet {subnet} failed: {exc.explanation}"
            if "overlaps" not in str(exc.explanation):
                break
            time.sleep(1)
    raise LabError(problem)


def _free_subnet(api: docker.APIClient) -> str:
    used = [
        ipaddress.ip_network(c["Subnet"]) for n in api.networks() for c in (n["IPAM"]["Config"] or []) if "Subnet" in c
    ]
    used += _host_routes()
    for candidate in AUTO_SUBNETS:
        network = ipaddress.ip_network(candidate)
        if not any(network.overlaps(other) for other in used if other.version == 4):
            return candidate
    raise LabError(f"no free lab subnet among {AUTO_SUBNETS[0]}..{AUTO_SUBNETS[-1]}: pass --subnet")


def _host_routes() -> list[ipaddress.IPv4Network]:
    """Networks this host routes to directly (a VirtualBox host-only net, a VPN), to keep clear of them."""
    routes = []
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        destination, mask = (socket.inet_ntoa(bytes.fromhex(f)[::-1]) for f in (fields[1], fields[7]))
        if destination != "0.0.0.0":
            routes.append(ipaddress.IPv4Network(f"{destination}/{mask}", strict=False))
    return routes


def _runtime_options(api: docker.APIClient, image: str, progress: Progress, privileged: str) -> dict[str, Any]:
    """--privileged where the engine grants it, else every capability it can grant (see LAB-FACTS)."""
    # A node that reboots (`systemctl reboot`: its systemd exits) is started again by Docker, as a machine would.
    common: dict[str, Any] = {
        "cgroupns": "private",
        "tmpfs": {"/run": "exec,mode=755", "/run/lock": ""},
        "restart_policy": {"Name": "unless-stopped"},
    }
    if privileged == "always" or (privileged == "auto" and _privileged_works(api, image)):
        return {**common, "privileged": True}
    progress("this engine can't run --privileged containers: using explicit capabilities instead")
    return {
        **common,
        "cap_add": ["ALL"],
        "cap_drop": ["SYS_RESOURCE"],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "device_cgroup_rules": ["a *:* rwm"],
    }


def _host_config(api: docker.APIClient, runtime: dict[str, Any], binds: dict[str, Any]) -> dict[str, Any]:
    host_config = api.create_host_config(binds=binds, **runtime)
    if not runtime.get("privileged"):
        # The API form of `--security-opt systempaths=unconfined`: /proc and /sys unmasked and writable.
        host_config.update(MaskedPaths=[], ReadonlyPaths=[])
    return host_config


def _privileged_works(api: docker.APIClient, image: str) -> bool:
    probe = api.create_container(
        image,
        entrypoint=["true"],
        labels={LABEL: "probe"},
        host_config=api.create_host_config(privileged=True),
    )
    try:
        api.start(probe["Id"])
        return api.wait(probe["Id"], timeout=30)["StatusCode"] == 0
    except APIError:
        return False
    finally:
        api.remove_container(probe["Id"], force=True)


def _create_node(
    api: docker.APIClient, spec: LabSpec, node: Node, image: str, address: str, runtime: dict[str, Any]
) -> None:
    labels = {LABEL: spec.name, NODE_LABEL: node.name, ROLE_LABEL: node.role, ADDRESS_LABEL: address}
    api.create_volume(node.volume, labels=labels)
    container = api.create_container(
        image,
        name=node.container,
        hostname=node.hostname,
        labels=labels,
        detach=True,
        stop_signal="SIGRTMIN+3",
        stop_timeout=30,
        host_config=_host_config(api, runtime, {node.volume: {"bind": "/var/lib/docker", "mode": "rw"}}),
        networking_config=api.create_networking_config(
            {spec.network: api.create_endpoint_config(ipv4_address=address)}
        ),
    )
    api.start(container["Id"])


def _is_broken(container: dict[str, Any], image: str, network: str) -> bool:
    if container["State"] in ("dead", "removing") or container["Image"] != image:
        return True
    networks = container.get("NetworkSettings", {}).get("Networks", {})
    return network not in networks


def _remove_node(api: docker.APIClient, container_id: str, volume: str) -> None:
    api.remove_container(container_id, force=True)
    with contextlib.suppress(NotFound):
        api.remove_volume(volume, force=True)


def _install_key(api: docker.APIClient, spec: LabSpec) -> None:
    archive = state.authorized_keys_tar(spec.state_dir)
    for node in spec.nodes:
        api.put_archive(node.container, "/etc/ssh", archive)


def _host_keys(api: docker.APIClient, container: str) -> list[str]:
    """The node's SSH host public keys, so that the lab's SSH clients can check them strictly."""
    exec_id = api.exec_create(container, ["sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"])
    return [" ".join(line.split()[:2]) for line in api.exec_start(exec_id).decode().splitlines() if line]


def _check_alive(api: docker.APIClient, container: str, name: str) -> None:
    """Stop waiting for a node whose container exited, with the likely cause."""
    info = api.inspect_container(container)["State"]
    if info["Running"]:
        return
    logs = api.logs(container, tail=5).decode(errors="replace").strip()
    hint = (
        "its systemd died at boot with nothing logged: most often the host's inotify instance limit "
        "(check `sysctl fs.inotify.max_user_instances`; raise it with "
        f"`sudo sysctl fs.inotify.max_user_instances={RAISED}`), or too little memory"
        if info["ExitCode"] == 255 and not logs
        else f"its last output: {logs or '(none)'}"
    )
    raise LabError(f"{name} exited (exit code {info['ExitCode']}) while booting: {hint}")


def _systemd_state(api: docker.APIClient, container: str) -> str:
    try:
        exec_id = api.exec_create(container, ["systemctl", "is-system-running"])
        return api.exec_start(exec_id).decode().strip() or "unknown"
    except APIError:
        return "unknown"


def _wait_ready(api: docker.APIClient, spec: LabSpec, addresses: dict[str, str], progress: Progress) -> None:
    """Wait until every node's systemd is up and its sshd accepts connections."""
    pending = {node.container: node for node in spec.nodes}
    deadline = time.monotonic() + READY_TIMEOUT
    while pending:
        for container, node in list(pending.items()):
            _check_alive(api, container, node.name)
            systemd = _systemd_state(api, container)
            if systemd in ("running", "degraded") and state.port_open(addresses[node.name], 22):
                if systemd == "degraded":
                    progress(
                        f"warning: {node.name} booted degraded (`pyinfra-swarm lab ssh {node.name} "
                        "systemctl --failed` shows why)"
                    )
                del pending[container]
        if not pending:
            break
        if time.monotonic() > deadline:
            names = ", ".join(node.name for node in pending.values())
            raise LabError(f"nodes not ready after {READY_TIMEOUT:.0f} s: {names} (see `docker logs`)")
        time.sleep(0.3)


def _engine_is_local(api: docker.APIClient) -> bool:
    """Whether the engine shares this host's kernel (its limits are then ours to check)."""
    return api.base_url.startswith(("http+docker://localhost", "http+docker://localunixsocket"))
