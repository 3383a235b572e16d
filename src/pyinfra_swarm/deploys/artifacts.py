"""Images for clusters that can't (or shouldn't) pull: archives uploaded from the controller and `docker
load`ed where missing, and images built on a manager from a context directory in the repo and pushed to the
cluster's registry. A build is skipped when the image already carries the hash of its context."""

from __future__ import annotations

import hashlib
import io
import shlex
import tarfile
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server

from pyinfra_swarm.facts import CONTEXT_LABEL
from pyinfra_swarm.plan import ClusterPlan, archives_for, current_host, image_references, plan_cluster
from pyinfra_swarm.settings import defaults, setting


def built_this_run(plan: ClusterPlan) -> set[str]:
    """Images this run builds (stacks that use them are deployed again)."""
    return plan.run.setdefault("built_images", set())


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


def build(plan: ClusterPlan, reference: str, context: Path, current: str | None, push: bool) -> None:
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
    built_this_run(plan).add(reference)


@deploy("Image archives", data_defaults=defaults("docker_image_archives"))
def load_image_archives(plan: ClusterPlan | None = None) -> None:
    """Upload image archives from the controller and `docker load` them on the hosts of their group where
    the image is missing (clusters without registry access; the lab gets its base image this way)."""
    plan = plan or plan_cluster()
    entries = archives_for(current_host(), setting(current_host(), "docker_image_archives"))
    if not entries or not plan.takes_part(current_host()):
        return
    for entry in entries:
        if not Path(entry["archive"]).is_file():
            raise DeployError(f"docker_image_archives: {entry['archive']} (for {entry['image']}) doesn't exist")
    present = plan.fact("archive_images")
    for entry in host.loop(entries):
        if present.get(entry["image"]) is not None:
            continue
        remote = f"/var/tmp/pyinfra-swarm-{hashlib.sha256(entry['image'].encode()).hexdigest()[:12]}.tar"
        files.put(name=f"Upload image archive {entry['image']}", src=entry["archive"], dest=remote, mode="0600")
        server.shell(name=f"Load image {entry['image']}", commands=[f"docker load -q -i {remote}", f"rm -f {remote}"])


@deploy("Images", data_defaults=defaults("docker_images"))
def build_images(plan: ClusterPlan | None = None) -> None:
    """On the manager acting for the cluster: build each image of `docker_images` from its context and push
    it to the cluster's registry as REGISTRY/NAME:TAG."""
    plan = plan or plan_cluster()
    this = current_host()
    entries = setting(this, "docker_images")
    if this is not plan.acting_manager or not entries:
        return
    registry = plan.registry_address
    current = plan.fact("built_images")
    for reference, entry in host.loop(list(image_references(registry, entries).items())):
        build(plan, reference, Path(entry["context"]), current.get(reference), push=bool(registry))
