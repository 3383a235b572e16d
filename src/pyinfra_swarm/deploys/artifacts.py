"""Images for clusters that can't (or shouldn't) pull: archives uploaded from the controller and `docker
load`ed where missing, and images built on a manager from a context directory in the repo (what its
.dockerignore leaves in, sent to `docker build` on stdin: nothing of it is written on the manager) and pushed
to the cluster's registry. A build is skipped when the image already carries the hash of its context."""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import tarfile
from pathlib import Path

from pyinfra import host
from pyinfra.api import Host
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server

from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.operations import images
from pyinfra_swarm.plan import ClusterPlan, archives_for, image_references
from pyinfra_swarm.settings import setting


def built_this_run(plan: ClusterPlan) -> set[str]:
    """Images this run builds (stacks that use them are deployed again)."""
    return plan.run.built_images


def dockerignore(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """The context's .dockerignore as (exception, pattern) pairs, in order: Docker's syntax (`#` comments,
    `*`, `?`, `[...]`, `**` for any number of directories, `!` for exceptions; the last match wins)."""
    path = context / ".dockerignore"
    rules = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((exception, re.compile(_glob(pattern))))
    return rules


def _glob(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression over a path relative to the context."""
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            out += "(?:.*/)?" if pattern[i : i + 1] == "/" else ".*"
            i += pattern[i : i + 1] == "/"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]"
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(char)
        i += 1
    return out + "$"


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether .dockerignore leaves a file out: the last rule that matches it, or a directory it is in."""
    parents = [posixpath.join(*relative.split("/")[: n + 1]) for n in range(relative.count("/") + 1)]
    verdict = False
    for exception, pattern in rules:
        if any(pattern.match(path) for path in parents):
            verdict = not exception
    return verdict


def context_archive(context: Path) -> tuple[bytes, str]:
    """A deterministic tar of a build context (what its .dockerignore leaves in; the Dockerfile always, as
    Docker does) and its sha256: equal files, equal archive."""
    if not (context / "Dockerfile").is_file():
        raise DeployError(f"docker_images: {context} has no Dockerfile")
    rules = dockerignore(context)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(p for p in context.rglob("*") if p.is_file()):
            relative = path.relative_to(context).as_posix()
            if relative != "Dockerfile" and ignored(relative, rules):
                continue
            info = tarfile.TarInfo(relative)
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), path.stat().st_mode & 0o777, 0
            tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    return archive, hashlib.sha256(archive).hexdigest()


def build(plan: ClusterPlan, reference: str, context: Path, current: str | None, push: bool) -> None:
    """Build (and push) `reference` on this host from `context`, unless it is built from this very context
    already; stacks that use an image built in this run are deployed again."""
    archive, digest = context_archive(context)
    if current != digest:
        built_this_run(plan).add(reference)
    images.built(name=f"Build {reference}" + (" and push it" if push else ""), reference=reference, context=archive,
                 push=push)  # fmt: skip


@step("Image archives")
def load_image_archives(plan: ClusterPlan, this: Host) -> None:
    """Upload image archives from the controller and `docker load` them on the hosts of their group where
    the image is missing (clusters without registry access; the lab gets its base image this way)."""
    entries = archives_for(this, setting(this, "docker_image_archives"))
    if not entries:
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


@step("Images", runs_on="acting manager")
def build_images(plan: ClusterPlan, this: Host) -> None:
    """On the manager acting for the cluster: build each image of `docker_images` from its context and push
    it to the cluster's registry as REGISTRY/NAME:TAG."""
    entries = setting(this, "docker_images")
    if not entries:
        return
    registry = plan.registry_address
    for reference, entry in host.loop(list(image_references(registry, entries).items())):
        current = plan.fact(f"built_image:{reference}").get(reference)
        build(plan, reference, Path(entry["context"]), current, push=bool(registry))
