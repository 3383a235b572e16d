"""/etc/docker/daemon.json from data: validated, written only when it changes, and Docker reloaded when only
live-reloadable options changed, restarted otherwise (one node of the swarm at a time, drained), left alone
when nothing changed."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, systemd

from pyinfra_swarm.operations.maintenance import in_turn, window
from pyinfra_swarm.plan import ClusterPlan, current_host, plan_cluster
from pyinfra_swarm.settings import defaults, is_manager, setting, validate_daemon_config

DAEMON_JSON = "/etc/docker/daemon.json"
# Options dockerd applies on SIGHUP (Docker's "configuration reload behavior" list).
RELOADABLE = {
    "debug", "labels", "live-restore", "max-concurrent-downloads", "max-concurrent-uploads",
    "max-download-attempts", "default-runtime", "runtimes", "authorization-plugins", "insecure-registries",
    "registry-mirrors", "shutdown-timeout", "features",
}  # fmt: skip


def render(config: dict[str, Any]) -> str:
    """daemon.json text: sorted keys, so equal settings always give the same file."""
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def changed_keys(current: dict[str, Any] | None, desired: dict[str, Any]) -> set[str]:
    current = current or {}
    return {key for key in set(current) | set(desired) if current.get(key) != desired.get(key)}


def apply_action(current: dict[str, Any] | None, desired: dict[str, Any]) -> str | None:
    """What a running Docker needs after daemon.json changes: None, "reload" or "restart"."""
    if current is not None and "__invalid__" in current:
        return "restart"
    changed = changed_keys(current, desired)
    if not changed:
        return None
    return "reload" if changed <= RELOADABLE else "restart"


@deploy("Configure the Docker daemon", data_defaults=defaults("docker_daemon_config"))
def configure_daemon(plan: ClusterPlan | None = None) -> None:
    """Write daemon.json (before Docker is installed, so it starts with it) and apply changes."""
    plan = plan or plan_cluster()
    this = current_host()
    if not plan.takes_part(this):
        return
    desired = dict(setting(this, "docker_daemon_config"))
    if plan.registry is not None and not plan.registry.tls:  # registry_tls: False opts out of TLS explicitly
        desired["insecure-registries"] = sorted({*desired.get("insecure-registries", []), plan.registry.address})
    problems = validate_daemon_config(desired)
    if problems:
        raise DeployError(f"host {this.name}: " + "; ".join(problems))
    current = plan.fact("daemon_config")
    action = apply_action(current, desired)
    if action is None and current is not None:
        return
    files.directory(name="Directory /etc/docker", path="/etc/docker", mode="0755")
    written = files.put(name=f"Write {DAEMON_JSON}", src=StringIO(render(desired)), dest=DAEMON_JSON, mode="0644")
    swarm = plan.fact("swarm")
    if swarm is None or swarm.get("LocalNodeState") == "unknown" or action is None:
        return  # Docker isn't installed or running yet: it starts with this file
    member = window(plan, this)
    if action == "restart" and member is not None:
        # A node of the swarm: restarts go one node at a time, drained, never all engines at once.
        in_turn("Restart Docker for the new daemon.json", ["systemctl restart docker"], member, is_manager(this))
        return
    systemd.service(
        name=f"{action.capitalize()} Docker for the new daemon.json",
        service="docker",
        reloaded=action == "reload",
        restarted=action == "restart",
        _if=written.did_change,
    )
