"""The node images: `FROM debian:<release>` (bookworm, trixie or forky); that base is made with debootstrap
where it can't be pulled."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker
from docker.errors import APIError, BuildError, ImageNotFound

from pyinfra_swarm.lab.spec import LabError

BASE_IMAGE = "debian:bookworm"  # what the demo's images build FROM (exported for the nodes to load)
NODE_IMAGE_REPO = "pyinfra-swarm-node"
NODE_CONTEXT = Path(__file__).with_name("node")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

Progress = Callable[[str], None]


def node_image_tag(distro: str = "bookworm") -> str:
    """The node image's tag: the release and a hash of its build context, so a changed Dockerfile means a new
    image."""
    digest = hashlib.sha256(distro.encode())
    for path in sorted(NODE_CONTEXT.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{NODE_IMAGE_REPO}:{distro}-{digest.hexdigest()[:12]}"


def ensure_node_image(api: docker.APIClient, progress: Progress, distro: str = "bookworm") -> str:
    tag = node_image_tag(distro)
    if _has_image(api, tag):
        return tag
    ensure_base_image(api, progress, distro)
    progress(f"building the node image {tag} (first run only, about a minute)")
    try:
        for chunk in api.build(path=str(NODE_CONTEXT), tag=tag, rm=True, forcerm=True, decode=True,
                               buildargs={"RELEASE": distro}):  # fmt: skip
            if "error" in chunk:
                raise LabError(f"building the node image failed: {chunk['error'].strip()}")
            line = chunk.get("stream", "").strip()
            if line.startswith("Step ") or line.startswith("Setting up "):
                progress(f"  {line}")
    except (APIError, BuildError) as exc:
        raise LabError(f"building the node image failed: {exc}") from None
    return tag


def ensure_base_image(api: docker.APIClient, progress: Progress, distro: str = "bookworm") -> None:
    image = f"debian:{distro}"
    if _has_image(api, image):
        return
    progress(f"pulling {image}")
    try:
        api.pull(image)
        return
    except APIError:
        progress(f"{image} can't be pulled here: making it with debootstrap (about 40 s)")
    _debootstrap_base_image(api, progress, distro)


def _debootstrap_base_image(api: docker.APIClient, progress: Progress, distro: str) -> None:
    image = f"debian:{distro}"
    if not shutil.which("debootstrap"):
        raise LabError(
            f"{image} can't be pulled and debootstrap is missing: install it "
            f"(apt-get install debootstrap) or load a {image} image into the engine"
        )
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="pyinfra-swarm-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        command = ["debootstrap", "--variant=minbase", distro, str(rootfs), mirror, *debootstrap_script(distro)]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(("I: Retrieving Release", "I: Base system installed", "E:")):
                    progress(f"  {line.strip()}")
        if proc.returncode != 0:
            raise LabError(f"debootstrap of {distro} from {mirror} failed (exit {proc.returncode})")
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        progress(f"importing the root filesystem as {image}")
        repository, tag = image.split(":")
        api.import_image_from_file(str(tarball), repository=repository, tag=tag)


def debootstrap_script(distro: str) -> list[str]:
    """The script argument debootstrap needs for a release it has no script of its own for (Debian's testing,
    newer than this host's debootstrap: unstable's script serves)."""
    scripts = Path("/usr/share/debootstrap/scripts")
    if (scripts / distro).exists() or not (scripts / "sid").exists():
        return []
    return [str(scripts / "sid")]


def debian_mirror() -> str:
    """The Debian mirror this host's apt uses (deb822 or one-line sources), else deb.debian.org."""
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if not path.exists():
            continue
        text = path.read_text()
        match = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+[a-z]+\s", text, re.M
        )
        if match:
            return match.group(1)
    return DEFAULT_MIRROR


def _has_image(api: docker.APIClient, name: str) -> bool:
    try:
        api.inspect_image(name)
    except ImageNotFound:
        return False
    return True


def export_base_image(api: docker.APIClient, directory: Path, progress: Progress) -> Path:
    """debian:bookworm as an archive the deploy can upload to nodes that can't pull (docker load)."""
    path = directory / "debian-bookworm.tar"
    ensure_base_image(api, progress)
    if not path.exists():
        progress(f"saving {BASE_IMAGE} to {path} (nodes build images FROM it)")
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("wb") as archive:
            for chunk in api.get_image(BASE_IMAGE):
                archive.write(chunk)
        partial.rename(path)
    return path
