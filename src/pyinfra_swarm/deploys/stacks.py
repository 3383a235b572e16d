"""Stacks: render every stack listed in data on the controller, check it, upload it to the acting manager and
deploy it only when its rendered content (or an image it uses) changed; then wait, with progress, until
every service runs its replicas of its present spec, and fail with the tasks' errors if they don't in time.
Afterwards, old versions of secrets and configs that no stack uses any more are removed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import Host
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import server

from pyinfra_swarm.deploys.artifacts import built_this_run
from pyinfra_swarm.deploys.objects import versioned_names
from pyinfra_swarm.deploys.registry import service_secret_names
from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.layout import stack_path
from pyinfra_swarm.operations import swarm
from pyinfra_swarm.plan import ClusterPlan
from pyinfra_swarm.settings import setting
from pyinfra_swarm.stackfiles import StackError, check, render, stack_images


def stack_context(target: Host, stack: dict[str, Any], registry: str) -> dict[str, Any]:
    """What a stack template sees: the registry address, secret and config names (versioned), the
    `stack_vars` of the data and the stack's own `vars`."""
    return {
        "registry": registry,
        "secrets": versioned_names(target, "swarm_secrets"),
        "configs": versioned_names(target, "swarm_configs"),
        **setting(target, "stack_vars"),
        **(stack.get("vars") or {}),
    }


@dataclass
class Rendered:
    """A stack of data, rendered and checked (nothing for one with `state: absent`)."""

    stack: dict[str, Any]
    text: str = ""
    images: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)


def render_stacks(target: Host, registry: str) -> list[Rendered]:
    """Every stack in data, rendered and checked; any problem is a DeployError naming the file."""
    directory = Path(setting(target, "swarm_stacks_dir"))
    rendered: list[Rendered] = []
    for stack in setting(target, "swarm_stacks"):
        template = directory / stack["template"]
        try:
            if stack.get("state", "present") == "absent":
                rendered.append(Rendered(stack))
                continue
            text = render(template, stack_context(target, stack, registry))
            parsed = check(text, f"{template} (rendered)")
            rendered.append(Rendered(stack, text, stack_images(parsed), sorted(parsed["services"])))
        except StackError as exc:
            raise DeployError(f"stack {stack['name']}: {exc}") from None
    return rendered


@step("Stacks", runs_on="acting manager")
def deploy_stacks(plan: ClusterPlan, this: Host) -> None:
    """On the manager acting for the cluster: deploy changed stacks, remove absent ones."""
    rendered = render_stacks(this, plan.registry_address)
    rebuilt = built_this_run(plan)
    for entry in host.loop(rendered):
        stack, name = entry.stack, entry.stack["name"]
        if stack.get("state", "present") == "absent":
            swarm.stack(name=f"Remove stack {name}", stack_name=name, path=stack_path(name), present=False)
            continue
        swarm.stack(name=f"Deploy stack {name}", stack_name=name, path=stack_path(name), text=entry.text,
                    timeout=int(stack.get("timeout", 180)), force=bool(set(entry.images) & rebuilt),
                    services=entry.services, on_failure=stack.get("on_failure", "rollback"))  # fmt: skip


def stale_versions(existing: list[str], current: dict[str, str]) -> list[str]:
    """Versions (`NAME_<10 hex>`) of the named objects other than the current one ({name: versioned name})."""
    stale = []
    for name, version in current.items():
        pattern = re.compile(rf"{re.escape(name)}_[0-9a-f]{{10}}")
        stale += [other for other in existing if pattern.fullmatch(other) and other != version]
    return sorted(stale)


@step("Remove old versions of secrets and configs", runs_on="acting manager")
def prune_objects(plan: ClusterPlan, this: Host) -> None:
    """On the manager acting for the cluster, after the stacks moved to the current versions: remove the older
    versions of the data's (and the registry's) secrets and configs. A version some service still uses is
    kept (Docker refuses to remove it), and tried again next run."""
    registry = service_secret_names(plan)
    current = {
        "secret": {**versioned_names(this, "swarm_secrets"), **registry},
        "config": versioned_names(this, "swarm_configs"),
    }
    existing = plan.fact("swarm_objects")
    if existing is None or not (current["secret"] or current["config"]):
        return
    commands = [
        f"docker {kind} rm {name} >/dev/null 2>&1 || echo '{kind} {name} is still in use: kept'"
        for kind in ("secret", "config")
        for name in stale_versions(existing[kind], current[kind])
    ]
    if commands:
        server.shell(name="Remove old versions of secrets and configs", commands=commands)
