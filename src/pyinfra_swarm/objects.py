"""Swarm objects from data, created from a manager: overlay networks, and secrets and configs under versioned
names (NAME_<hash of the content>), so a changed value is a new object that stacks roll over to."""

from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, Host, State, StringCommand, deploy, operation
from pyinfra.api.command import FunctionCommand
from pyinfra.api.exceptions import DeployError, OperationError
from pyinfra.operations import server

from pyinfra_swarm.cluster import cluster, current_host
from pyinfra_swarm.hostfacts import Spec, planned_fact, register_planned
from pyinfra_swarm.settings import DEFAULTS
from pyinfra_swarm.swarm import connector_args

SETTINGS = ["swarm_networks", "swarm_secrets", "swarm_configs"]


class SwarmObjects(FactBase[dict[str, list[str]]]):
    """Names of the swarm's overlay networks, secrets and configs (on a manager)."""

    def requires_command(self) -> str:
        return "docker"

    def command(self) -> str:
        return (
            "docker network ls --filter driver=overlay --format 'network {{.Name}}'; "
            "docker secret ls --format 'secret {{.Name}}'; docker config ls --format 'config {{.Name}}'; true"
        )

    def process(self, output: list[str]) -> dict[str, list[str]]:
        objects: dict[str, list[str]] = {"network": [], "secret": [], "config": []}
        for line in output:
            kind, _, name = line.strip().partition(" ")
            if kind in objects and name:
                objects[kind].append(name)
        return objects

    @staticmethod
    def default() -> dict[str, list[str]]:
        return {"network": [], "secret": [], "config": []}


def versioned(name: str, content: str) -> str:
    return f"{name}_{hashlib.sha256(content.encode()).hexdigest()[:10]}"


def contents(data: Any, key: str) -> dict[str, str]:
    """{name: content} of the secrets or configs in data; a missing file is a DeployError naming it."""
    values = {}
    for name, source in (data.get(key) or {}).items():
        if "value" in source:
            values[name] = str(source["value"])
            continue
        path = Path(source["file"])
        if not path.is_file():
            raise DeployError(f"{key}[{name!r}]: file {path} doesn't exist")
        values[name] = path.read_text()
    return values


def versioned_names(data: Any, key: str) -> dict[str, str]:
    return {name: versioned(name, content) for name, content in contents(data, key).items()}


@operation(is_idempotent=False)
def create(kind: str, object_name: str, content: str):
    """Create a swarm secret or config; its content goes through stdin and never prints."""
    yield FunctionCommand(_create, (kind, object_name, content), {})


def _create(state: State, host: Host, kind: str, name: str, content: str) -> None:
    status, output = host.run_shell_command(
        StringCommand("docker", kind, "create", name, "-"), _stdin=content, print_output=False,
        **connector_args(state, host),
    )  # fmt: skip
    if not status:
        raise OperationError(f"creating {kind} {name} failed: {output.stderr.strip()}")


def network_command(name: str, options: dict[str, Any]) -> str:
    args = ["docker", "network", "create", "--driver", "overlay"]
    if options.get("attachable"):
        args.append("--attachable")
    if options.get("subnet"):
        args += ["--subnet", str(options["subnet"])]
    if options.get("mtu"):
        args += ["--opt", f"com.docker.network.driver.mtu={options['mtu']}"]
    if options.get("encrypted"):
        args += ["--opt", "encrypted"]
    return shlex.join([*args, name])


def ensure_objects(kind: str, wanted: dict[str, str], existing: list[str]) -> None:
    """Plan the creation of the missing `kind` objects ({versioned name: content})."""
    for name, content in host.loop(sorted(wanted.items())):
        if name not in existing:
            create(name=f"Create {kind} {name}", kind=kind, object_name=name, content=content)


@register_planned
def _planned_facts(view: Any, target: Host) -> Spec:
    return {"swarm_objects": (SwarmObjects, {})} if target is view.acting_manager else {}


@deploy("Swarm networks, secrets and configs", data_defaults={key: DEFAULTS[key] for key in SETTINGS})
def configure_objects() -> None:
    """On the manager acting for the cluster: create missing overlay networks and secret/config versions."""
    view = cluster(host.state)
    if current_host() is not view.acting_manager:
        return
    secrets = {versioned(n, c): c for n, c in contents(host.data, "swarm_secrets").items()}
    configs = {versioned(n, c): c for n, c in contents(host.data, "swarm_configs").items()}
    networks = host.data.swarm_networks or {}
    if not (secrets or configs or networks):
        return
    existing = planned_fact(view, "swarm_objects")
    missing_networks = [
        network_command(n, o or {}) for n, o in sorted(networks.items()) if n not in existing["network"]
    ]
    if missing_networks:
        server.shell(name="Create overlay networks", commands=missing_networks)
    ensure_objects("secret", secrets, existing["secret"])
    ensure_objects("config", configs, existing["config"])


def stale_versions(existing: list[str], current: dict[str, str]) -> list[str]:
    """Versions (`NAME_<10 hex>`) of the named objects other than the current one ({name: versioned name})."""
    stale = []
    for name, version in current.items():
        pattern = re.compile(rf"{re.escape(name)}_[0-9a-f]{{10}}")
        stale += [other for other in existing if pattern.fullmatch(other) and other != version]
    return sorted(stale)


@deploy("Remove old versions of secrets and configs")
def prune_objects() -> None:
    """On the manager acting for the cluster, after the stacks moved to the current versions: remove the older
    versions of the data's (and the registry's) secrets and configs. A version some service still uses is
    kept (Docker refuses to remove it), and tried again next run."""
    from pyinfra_swarm.registry import secret_versions

    view = cluster(host.state)
    if current_host() is not view.acting_manager:
        return
    current = {
        "secret": {**versioned_names(host.data, "swarm_secrets"), **secret_versions(view)},
        "config": versioned_names(host.data, "swarm_configs"),
    }
    if not (current["secret"] or current["config"]):
        return
    existing = planned_fact(view, "swarm_objects")
    commands = [
        f"docker {kind} rm {name} >/dev/null 2>&1 || echo '{kind} {name} is still in use: kept'"
        for kind in ("secret", "config")
        for name in stale_versions(existing[kind], current[kind])
    ]
    if commands:
        server.shell(name="Remove old versions of secrets and configs", commands=commands)
