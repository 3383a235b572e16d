"""Stacks: render every stack listed in data on the controller, check it, upload it to a manager and deploy
it only when its rendered content (or an image it uses) changed; then wait, with progress, until every
service has its replicas running, and fail with the tasks' errors if they don't in time."""

from __future__ import annotations

import json
import shlex
import time
from io import StringIO
from pathlib import Path
from typing import Any

import gevent
from pyinfra import host, logger
from pyinfra.api import FactBase, Host, State, StringCommand, deploy, operation
from pyinfra.api.command import FunctionCommand
from pyinfra.api.exceptions import DeployError, OperationError
from pyinfra.operations import files, server

from pyinfra_swarm.artifacts import images_built_this_run
from pyinfra_swarm.cluster import cluster, current_host
from pyinfra_swarm.facts import FileHashes, sha256_text
from pyinfra_swarm.hostfacts import Spec, planned_fact, register_planned
from pyinfra_swarm.settings import DEFAULTS
from pyinfra_swarm.stackfiles import StackError, check, render, stack_images
from pyinfra_swarm.swarm import connector_args

STACKS_DIR = "/etc/pyinfra-swarm/stacks"
POLL = 2.0
SETTINGS = ["swarm_stacks", "swarm_stacks_dir", "stack_vars"]


class SwarmStacks(FactBase[list[str]]):
    """Names of the stacks deployed in the swarm (on a manager)."""

    def requires_command(self) -> str:
        return "docker"

    def command(self) -> str:
        return "docker stack ls --format '{{.Name}}' 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]

    @staticmethod
    def default() -> list[str]:
        return []


def stack_context(data: Any, stack: dict[str, Any], view_registry: str) -> dict[str, Any]:
    """What a stack template sees: the registry address, secret and config names (versioned), the
    `stack_vars` of the data and the stack's own `vars`."""
    from pyinfra_swarm.objects import versioned_names

    return {
        "registry": view_registry,
        "secrets": versioned_names(data, "swarm_secrets"),
        "configs": versioned_names(data, "swarm_configs"),
        **(data.get("stack_vars") or {}),
        **(stack.get("vars") or {}),
    }


def render_stacks(data: Any, registry_address: str) -> list[tuple[dict[str, Any], str, list[str]]]:
    """(stack, rendered text, images) of every stack in data; any problem is a DeployError naming the file."""
    directory = Path(data.get("swarm_stacks_dir") or DEFAULTS["swarm_stacks_dir"])
    rendered: list[tuple[dict[str, Any], str, list[str]]] = []
    for stack in data.get("swarm_stacks") or []:
        template = directory / stack["template"]
        try:
            if stack.get("state", "present") == "absent":
                rendered.append((stack, "", []))
                continue
            text = render(template, stack_context(data, stack, registry_address))
            rendered.append((stack, text, stack_images(check(text, f"{template} (rendered)"))))
        except StackError as exc:
            raise DeployError(f"stack {stack['name']}: {exc}") from None
    return rendered


@operation(is_idempotent=False)
def stack_deploy(stack: str, path: str, timeout: int = 180):
    """`docker stack deploy --with-registry-auth --prune`, then wait until every service has converged."""
    yield StringCommand("docker", "stack", "deploy", "--with-registry-auth", "--prune", "-c", path, stack)
    yield FunctionCommand(wait_converged, (stack, timeout), {})


def replica_counts(output: list[str]) -> dict[str, tuple[int, int]]:
    """`docker stack services --format '{{.Name}} {{.Replicas}}'` -> {service: (running, desired)}."""
    counts = {}
    for line in output:
        name, _, replicas = line.strip().partition(" ")
        running, _, desired = replicas.split(" ")[0].partition("/")
        if name and running.isdigit() and desired.isdigit():
            counts[name] = (int(running), int(desired))
    return counts


def progress_command(stack: str) -> str:
    """One command that prints where a stack stands: `replicas NAME R/D` per service, `service ID NAME
    UPDATE-STATE TEMPLATE-JSON` per service and `task SERVICE-ID STATE SPEC-JSON` per task meant to run."""
    name = shlex.quote(stack)
    return (
        f"docker stack services {name} --format 'replicas {{{{.Name}}}} {{{{.Replicas}}}}'; "
        f'ids=$(docker stack services -q {name}); [ -z "$ids" ] || docker service inspect $ids --format '
        "'service {{.ID}} {{.Spec.Name}} {{if .UpdateStatus}}{{.UpdateStatus.State}}{{else}}none{{end}} "
        "{{json .Spec.TaskTemplate}}'; "
        f"tasks=$(docker stack ps -q --filter desired-state=running {name} 2>/dev/null); "
        '[ -z "$tasks" ] || docker inspect $tasks --format '
        "'task {{.ServiceID}} {{.Status.State}} {{json .Spec}}'; true"
    )


def stack_progress(output: list[str]) -> dict[str, dict[str, Any]]:
    """{service: {"running", "desired", "update", "current", "stale"}} from `progress_command`'s output.
    `current`: tasks running the service's present spec; `stale`: tasks meant to run an older spec (after
    `docker stack deploy` the old tasks keep running until the update starts, with no update status yet)."""
    services: dict[str, dict[str, Any]] = {}
    templates: dict[str, tuple[str, Any]] = {}
    tasks: list[tuple[str, str, Any]] = []
    for line in output:
        kind, _, rest = line.strip().partition(" ")
        if kind == "replicas":
            service, _, replicas = rest.partition(" ")
            for name, (running, desired) in replica_counts([f"{service} {replicas}"]).items():
                services[name] = {"running": running, "desired": desired, "update": "none", "current": 0, "stale": 0}
        elif kind == "service":
            service_id, name, update, template = rest.split(" ", 3)
            templates[service_id] = (name, json.loads(template))
            services.setdefault(name, {"running": 0, "desired": 0, "update": "none", "current": 0, "stale": 0})
            services[name]["update"] = update
        elif kind == "task":
            service_id, task_state, spec = rest.split(" ", 2)
            tasks.append((service_id, task_state, json.loads(spec)))
    for service_id, task_state, spec in tasks:
        if service_id not in templates:
            continue
        name, template = templates[service_id]
        if _what_restarts(spec) != _what_restarts(template):
            services[name]["stale"] += 1
        elif task_state == "running":
            services[name]["current"] += 1
    return services


# Task spec fields whose change makes swarm replace a task. Compared one by one: the API shows a service's
# spec with defaults filled in that its tasks' specs leave out, and swarm keeps a task whose node still meets
# changed placement constraints.
RESTART_KEYS = ("Image", "Command", "Args", "Env", "Labels", "Mounts", "Secrets", "Configs", "User", "Dir")


def _what_restarts(spec: dict[str, Any]) -> dict[str, Any]:
    container = spec.get("ContainerSpec") or {}
    return {**{key: container.get(key) for key in RESTART_KEYS}, "ForceUpdate": spec.get("ForceUpdate") or 0}


def converged(services: dict[str, dict[str, Any]]) -> bool:
    """Every service runs its desired replicas, all of its present spec, and no update is under way."""
    return bool(services) and all(
        s["update"] in ("none", "completed") and not s["stale"] and s["current"] == s["desired"]
        for s in services.values()
    )


def wait_converged(state: State, host: Host, stack: str, timeout: int) -> None:
    """Poll until every service of the stack runs its desired replicas of its present spec and no rolling
    update is under way; fail with the tasks' errors after `timeout` seconds, or at once when an update
    paused or rolled back."""
    args = connector_args(state, host)
    command = StringCommand(progress_command(stack))
    deadline = time.monotonic() + timeout
    last_report = 0.0
    steady = False
    while True:
        status, output = host.run_shell_command(command, print_output=False, **args)
        services = stack_progress(output.stdout_lines) if status else {}
        stuck = {n: s["update"] for n, s in services.items()
                 if s["update"] in ("paused", "rollback_completed", "rollback_paused")}  # fmt: skip
        if stuck:
            _fail(host, args, stack, f"stack {stack}: update {', '.join(f'{n} {u}' for n, u in stuck.items())}")
        if converged(services):
            if steady:  # converged on two polls in a row, as `docker service update` verifies
                logger.info(f"{host.print_prefix}stack {stack}: every service converged")
                return
            steady = True
        else:
            steady = False
        now = time.monotonic()
        if now > deadline:
            _fail(host, args, stack, f"stack {stack} did not converge within {timeout} s")
        if now - last_report >= 5:
            progress = ", ".join(
                f"{n} {s['current']}/{s['desired']}" + (f" ({s['stale']} old)" if s["stale"] else "")
                + (" updating" if s["update"] not in ("none", "completed") else "")
                for n, s in sorted(services.items())
            )  # fmt: skip
            logger.info(f"{host.print_prefix}stack {stack}: waiting ({progress or 'no services yet'})")
            last_report = now
        gevent.sleep(POLL)


def _fail(host: Host, args: dict[str, Any], stack: str, reason: str) -> None:
    _, tasks = host.run_shell_command(
        StringCommand(f"docker stack ps {shlex.quote(stack)} --no-trunc --format "
                      "'{{.Name}} on {{.Node}}: {{.CurrentState}}: {{.Error}}'"),
        print_output=False, **args,
    )  # fmt: skip
    errors = [line for line in tasks.stdout_lines if not line.rstrip().endswith(":")][:5]
    raise OperationError(f"{reason}; failing tasks: " + ("; ".join(errors) or "none reported"))


def stack_path(name: str) -> str:
    return f"{STACKS_DIR}/{name}.yml"


@register_planned
def _planned_facts(view: Any, target: Host) -> Spec:
    """The acting manager's stack files and deployed stacks (gathered with the other deploys' facts)."""
    if target is not view.acting_manager:
        return {}
    names = [stack["name"] for stack in target.data.get("swarm_stacks") or []]
    return {"stack_files": (FileHashes, {"paths": [stack_path(n) for n in names]}), "swarm_stacks": (SwarmStacks, {})}


def ship_stack(name: str, text: str, current_hash: str | None, deployed: bool, timeout: int, force: bool = False):
    """Upload a rendered stack file to this manager and deploy it, unless that very file is deployed already
    (`force`: an image it uses was rebuilt this run)."""
    if current_hash == sha256_text(text) and deployed and not force:
        host.noop(f"stack {name} is up to date")
        return
    path = stack_path(name)
    files.put(name=f"Stack file {name}", src=StringIO(text), dest=path, mode="0600")
    stack_deploy(name=f"Deploy stack {name}", stack=name, path=path, timeout=timeout)


@deploy("Stacks", data_defaults={key: DEFAULTS[key] for key in SETTINGS})
def deploy_stacks() -> None:
    """On the manager acting for the cluster: deploy changed stacks, remove absent ones."""
    view = cluster(host.state)
    if current_host() is not view.acting_manager:
        return
    from pyinfra_swarm.registry import address

    rendered = render_stacks(host.data, address(view))
    if not rendered:
        return
    hashes = planned_fact(view, "stack_files")
    deployed = planned_fact(view, "swarm_stacks")
    rebuilt = images_built_this_run(host.state)
    for stack, text, images in host.loop(rendered):
        name = stack["name"]
        if stack.get("state", "present") == "absent":
            if name in deployed:
                server.shell(name=f"Remove stack {name}", commands=[f"docker stack rm {shlex.quote(name)}"])
            continue
        ship_stack(name, text, hashes.get(stack_path(name)), name in deployed, int(stack.get("timeout", 180)),
                   force=bool(set(images) & rebuilt))  # fmt: skip
