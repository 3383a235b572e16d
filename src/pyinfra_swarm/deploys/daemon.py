"""/etc/docker/daemon.json from data: validated, and written only when it changes. Where Docker isn't running
yet it starts with the file. A running engine is reloaded when only live-reloadable options changed; a change
that needs a restart is, on a node of the swarm, staged beside it (/etc/pyinfra-swarm/daemon.json.next) for
the node's drained turn (deploys/engine.py), so that no unplanned restart applies it undrained and the next
run sees what is still pending; elsewhere Docker restarts at once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import StringIO
from typing import Any

from pyinfra.api import Host
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server, systemd

from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.facts import DAEMON_JSON, RELOADED_DAEMON_JSON, STAGED_DAEMON_JSON, STATE_DIR, sha256_text
from pyinfra_swarm.plan import ClusterPlan
from pyinfra_swarm.settings import setting, validate_daemon_config

# Options dockerd applies on SIGHUP (Docker's "configuration reload behavior" list).
RELOADABLE = {
    "debug", "labels", "live-restore", "max-concurrent-downloads", "max-concurrent-uploads",
    "max-download-attempts", "default-runtime", "runtimes", "authorization-plugins", "insecure-registries",
    "registry-mirrors", "shutdown-timeout", "features",
}  # fmt: skip
# What happens to a changed daemon.json.
WRITE = "write"  # written; Docker isn't running, it starts with it
RELOAD = "reload"  # written, and the running engine reloaded
STAGE = "stage"  # staged for the node's turn
RESTART = "restart"  # written, and Docker restarted at once (not in the swarm)
# Reload Docker and record which engine (PID) read which daemon.json (digest): a reloaded file is then known
# to run, although it is newer than the engine.
RELOAD_COMMANDS = [
    "systemctl reload docker.service",
    f"echo \"$(systemctl show -p MainPID --value docker.service) $(sha256sum < {DAEMON_JSON} | cut -d' ' -f1)\" "
    f"> {RELOADED_DAEMON_JSON}",
]


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


@dataclass
class DaemonChange:
    text: str  # daemon.json as data asks
    action: str | None  # WRITE, RELOAD, STAGE, RESTART; None: daemon.json is as data asks
    unstage: bool  # a staged daemon.json that data no longer asks for is removed


def desired_config(plan: ClusterPlan, target: Host) -> dict[str, Any]:
    """daemon.json as data asks (with the registry in insecure-registries when `registry_tls: False`)."""
    desired = dict(setting(target, "docker_daemon_config"))
    if plan.registry is not None and not plan.registry.tls:  # registry_tls: False opts out of TLS explicitly
        desired["insecure-registries"] = sorted({*desired.get("insecure-registries", []), plan.registry.address})
    problems = validate_daemon_config(desired)
    if problems:
        raise DeployError(f"host {target.name}: " + "; ".join(problems))
    return desired


def daemon_change(plan: ClusterPlan, target: Host) -> DaemonChange:
    """What the daemon step does on a host (the engine step reads it too: a staged file is applied in the
    node's turn)."""
    desired = desired_config(plan, target)
    text = render(desired)
    engine = plan.fact("engine", target)
    staged = bool(engine["staged"])
    current = plan.fact("daemon_config", target)
    action = apply_action(current, desired)
    if current is None and action is None:
        action = "reload"  # no daemon.json at all, and data asks for an empty one: write it
    if action is None:
        return DaemonChange(text, None, staged)
    if plan.swarm_of(target).state in (None, "unknown"):
        return DaemonChange(text, WRITE, staged)  # Docker isn't installed or running: it starts with this file
    member = plan.is_member(target)
    if action == "reload" and not (member and engine["config_newer"]):
        return DaemonChange(text, RELOAD, staged)
    if member:  # a restart pending already (daemon.json newer than the engine) waits for the turn too
        return DaemonChange(text, STAGE, False)
    return DaemonChange(text, RESTART, staged)


@step("Configure the Docker daemon")
def configure_daemon(plan: ClusterPlan, this: Host) -> None:
    """Write daemon.json (before Docker is installed, so it starts with it), or stage it for the node's
    turn, and apply changes that don't need a restart."""
    change = daemon_change(plan, this)
    if change.unstage:
        server.shell(name="Drop the staged daemon.json (data no longer asks for it)",
                     commands=[f"rm -f {STAGED_DAEMON_JSON}"])  # fmt: skip
    if change.action is None:
        return
    if change.action == STAGE:
        if plan.fact("engine")["staged"] == sha256_text(change.text):
            return  # staged already, by a run that did not reach the node's turn
        files.directory(name=f"Directory {STATE_DIR}", path=STATE_DIR, mode="0755")
        files.put(name=f"Stage {DAEMON_JSON} for the node's turn", src=StringIO(change.text), dest=STAGED_DAEMON_JSON,
                  mode="0644")  # fmt: skip
        return
    files.directory(name="Directory /etc/docker", path="/etc/docker", mode="0755")
    written = files.put(name=f"Write {DAEMON_JSON}", src=StringIO(change.text), dest=DAEMON_JSON, mode="0644")
    if change.action == RELOAD:
        files.directory(name=f"Directory {STATE_DIR}", path=STATE_DIR, mode="0755")
        server.shell(name="Reload Docker for the new daemon.json", commands=RELOAD_COMMANDS, _if=written.did_change)
    elif change.action == RESTART:
        systemd.service(name="Restart Docker for the new daemon.json", service="docker", restarted=True,
                        _if=written.did_change)  # fmt: skip
