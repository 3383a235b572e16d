"""Images for clusters that can't (or shouldn't) pull: archives uploaded from the controller and `docker
load`ed where missing, and images built on a manager from a context directory in the repo and pushed to the
cluster's registry. A build is skipped when the image already carries the hash of its context."""

from __future__ import annotations

import hashlib
import io
import shlex
import tarfile
import weakref
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, Host, State, deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server

from pyinfra_swarm.cluster import cluster, current_host
from pyinfra_swarm.hostfacts import Spec, planned_fact, register_planned
from pyinfra_swarm.settings import DEFAULTS

CONTEXT_LABEL = "pyinfra-swarm.context"
_BUILT: weakref.WeakKeyDictionary[State, set[str]] = weakref.WeakKeyDictionary()


class ImageContexts(FactBase[dict[str, str | None]]):
    """For each image reference: the context hash label of the local image, "" without the label, None when
    the image is missing."""

    def requires_command(self, images: list[str]) -> str:
        return "docker"

    def command(self, images: list[str]) -> str:
        quoted = " ".join(shlex.quote(image) for image in images)
        fmt = shlex.quote(f'{{{{index .Config.Labels "{CONTEXT_LABEL}"}}}}')
        label = f'$(docker image inspect --format {fmt} "$i")'
        # docker 20.10 prints an empty line for a missing image even with --format: test for it first.
        return (
            f'for i in {quoted}; do if docker image inspect "$i" >/dev/null 2>&1; '
            f'then echo "$i {label}"; else echo "$i #missing"; fi; done'
        )

    def process(self, output: list[str]) -> dict[str, str | None]:
        result: dict[str, str | None] = {}
        for line in output:
            image, _, label = line.strip().partition(" ")
            result[image] = None if label == "#missing" else ("" if label == "<no value>" else label)
        return result

    @staticmethod
    def default() -> dict[str, str | None]:
        return {}


def images_built_this_run(state: State) -> set[str]:
    return _BUILT.get(state, set())


def context_archive(context: Path) -> tuple[bytes, str]:
    """A deterministic tar of a build context and its sha256 (equal files, equal archive)."""
    if not (context / "Dockerfile").is_file():
        raise DeployError(f"docker_images: {context} has no Dockerfile")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(p for p in context.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(str(path.relative_to(context)))
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), path.stat().st_mode & 0o777, 0
            tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    return archive, hashlib.sha256(archive).hexdigest()


def plan_build(reference: str, context: Path, current: str | None, push: bool) -> None:
    """Upload the context and build (and push) `reference` on this host, unless it is already built from
    this very context."""
    archive, digest = context_archive(context)
    if current == digest:
        host.noop(f"image {reference} is built from the current {context}")
        return
    workdir = f"/var/tmp/pyinfra-swarm-build-{digest[:12]}"
    files.put(name=f"Build context {context}", src=io.BytesIO(archive), dest=f"{workdir}.tar", mode="0600")
    commands = [
        f"mkdir -p {workdir} && tar -xf {workdir}.tar -C {workdir}",
        shlex.join(["docker", "build", "-q", "--label", f"{CONTEXT_LABEL}={digest}", "-t", reference, workdir]),
    ]
    if push:
        commands.append(shlex.join(["docker", "push", "-q", reference]))
    commands.append(f"rm -rf {workdir} {workdir}.tar")
    server.shell(name=f"Build {reference}" + (" and push it" if push else ""), commands=commands)
    _BUILT.setdefault(host.state, set()).add(reference)


def archives_for(target: Host, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("group", "all") == "all" or e.get("group") in target.groups]


def image_references(registry: str, entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """REGISTRY/NAME:TAG (NAME:TAG without a registry) -> its docker_images entry."""
    return {f"{registry + '/' if registry else ''}{e['name']}:{e['tag']}": e for e in entries}


@register_planned
def _planned_facts(view: Any, target: Host) -> Spec:
    """Which archived and built images each host has (gathered with the other deploys' facts)."""
    from pyinfra_swarm.registry import address

    spec: Spec = {}
    archives = archives_for(target, target.data.get("docker_image_archives") or [])
    if archives:
        spec["archive_images"] = (ImageContexts, {"images": [e["image"] for e in archives]})
    builds = target.data.get("docker_images") or []
    if target is view.acting_manager and builds:
        spec["built_images"] = (ImageContexts, {"images": list(image_references(address(view), builds))})
    return spec


@deploy("Image archives", data_defaults={"docker_image_archives": DEFAULTS["docker_image_archives"]})
def load_image_archives() -> None:
    """Upload image archives from the controller and `docker load` them on the hosts of their group where
    the image is missing (clusters without registry access; the lab gets its base image this way)."""
    entries = archives_for(current_host(), host.data.docker_image_archives)
    if not entries:
        return
    for entry in entries:
        if not Path(entry["archive"]).is_file():
            raise DeployError(f"docker_image_archives: {entry['archive']} (for {entry['image']}) doesn't exist")
    present = planned_fact(cluster(host.state), "archive_images")
    for entry in host.loop(entries):
        if present.get(entry["image"]) is not None:
            continue
        remote = f"/var/tmp/pyinfra-swarm-{hashlib.sha256(entry['image'].encode()).hexdigest()[:12]}.tar"
        files.put(name=f"Upload image archive {entry['image']}", src=entry["archive"], dest=remote, mode="0600")
        server.shell(name=f"Load image {entry['image']}", commands=[f"docker load -q -i {remote}", f"rm -f {remote}"])


@deploy("Images", data_defaults={"docker_images": DEFAULTS["docker_images"]})
def build_images() -> None:
    """On the manager acting for the cluster: build each image of `docker_images` from its context and push
    it to the cluster's registry as REGISTRY/NAME:TAG."""
    from pyinfra_swarm.registry import address

    view = cluster(host.state)
    if current_host() is not view.acting_manager or not host.data.docker_images:
        return
    registry = address(view)
    references = image_references(registry, host.data.docker_images)
    current = planned_fact(view, "built_images")
    for reference, entry in host.loop(list(references.items())):
        plan_build(reference, Path(entry["context"]), current.get(reference), push=bool(registry))
