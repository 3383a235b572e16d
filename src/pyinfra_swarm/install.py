"""Install Docker: Docker CE from Docker's apt or dnf repository, or the distribution's docker.io."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.deb import DebArch, DebPackages
from pyinfra.facts.rpm import RpmPackages
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, dnf, files, server, systemd

from pyinfra_swarm.facts import KernelFeatures
from pyinfra_swarm.settings import DEFAULTS

DEBIAN_FAMILY = {"debian": "debian", "raspbian": "raspbian", "ubuntu": "ubuntu"}
# Docker's dnf repositories by distribution; Rocky and Alma use the CentOS one.
RHEL_FAMILY = {"centos": "centos", "rocky": "centos", "almalinux": "centos", "rhel": "rhel", "fedora": "fedora"}

DOCKER_CE_PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin"]
DISTRO_PACKAGES = ["docker.io"]
# What each source conflicts with (Docker's install guide lists these).
APT_CONFLICTS = {
    "docker-ce": [
        "docker.io",
        "docker-doc",
        "docker-compose",
        "docker-compose-v2",
        "podman-docker",
        "containerd",
        "runc",
    ],
    "distro": DOCKER_CE_PACKAGES,
}
DNF_CONFLICTS = [
    "docker", "docker-client", "docker-client-latest", "docker-common", "docker-latest", "docker-latest-logrotate",
    "docker-logrotate", "docker-engine", "podman", "runc", "moby-engine",
]  # fmt: skip

SETTINGS = ["docker_source", "docker_version", "docker_ce_repo_url", "docker_ce_channel", "docker_users"]


def distribution_id() -> str:
    """The host's distribution ID from os-release, lower case (debian, ubuntu, rocky, ...)."""
    meta = host.get_fact(LinuxDistribution)["release_meta"]
    return str(meta.get("ID", "")).lower()


def package_specs(packages: list[str], version: str | None, manager: str) -> list[str]:
    """Package names with the version pin applied to the engine and CLI packages."""
    if not version:
        return packages
    separator = "=" if manager == "apt" else "-"
    pinned = {"docker-ce", "docker-ce-cli", "docker.io"}
    return [f"{name}{separator}{version}" if name in pinned else name for name in packages]


@deploy("Install Docker", data_defaults={key: DEFAULTS[key] for key in SETTINGS})
def install_docker() -> None:
    """Install Docker from data's `docker_source`, remove conflicting packages, start and enable it."""
    distro = distribution_id()
    source = host.data.docker_source
    if distro in DEBIAN_FAMILY:
        _install_apt(distro, source)
    elif distro in RHEL_FAMILY:
        if source != "docker-ce":
            raise DeployError(
                f"host {host.name}: docker_source {source!r} isn't available on {distro} (it ships podman): "
                "use docker_source: docker-ce"
            )
        _install_dnf(distro)
    else:
        raise DeployError(f"host {host.name}: unsupported distribution {distro!r} (Debian, Ubuntu or RHEL family)")
    systemd.service(name="Docker is running and enabled", service="docker", running=True, enabled=True)
    for user in host.data.docker_users:
        server.user(name=f"{user} is in the docker group", user=user, groups=["docker"], append=True)


def _install_apt(distro: str, source: str) -> None:
    installed = host.get_fact(DebPackages)
    conflicting = [name for name in APT_CONFLICTS[source] if name in installed]
    if conflicting:
        apt.packages(name="Remove packages that conflict with " + source, packages=conflicting, present=False)
    wanted = list(DOCKER_CE_PACKAGES if source == "docker-ce" else DISTRO_PACKAGES)
    if source == "distro" and host.get_fact(KernelFeatures).get("APPARMOR"):
        wanted.append("apparmor")  # Docker needs apparmor_parser where AppArmor is enabled
    version = host.data.docker_version
    if source == "docker-ce":
        _docker_ce_apt_repository(distro)
    missing = [name for name in wanted if name not in installed]
    if missing or (version and not _version_matches(installed, version)):
        apt.packages(
            name=f"Install Docker ({source})",
            packages=package_specs(wanted, version, "apt"),
            update=True,
            no_recommends=True,
            allow_downgrades=bool(version),
        )


def _version_matches(installed: dict[str, set[str]], version: str) -> bool:
    engine = "docker-ce" if "docker-ce" in installed else "docker.io"
    prefix = version.rstrip("*")
    return any(v.startswith(prefix) for v in installed.get(engine, set()))


def _docker_ce_apt_repository(distro: str) -> None:
    meta = host.get_fact(LinuxDistribution)["release_meta"]
    codename = meta.get("UBUNTU_CODENAME") or meta.get("VERSION_CODENAME")
    base = f"{host.data.docker_ce_repo_url}/{DEBIAN_FAMILY[distro]}"
    files.directory(name="Directory for apt keyrings", path="/etc/apt/keyrings", mode="0755")
    files.download(name="Docker's apt signing key", src=f"{base}/gpg", dest="/etc/apt/keyrings/docker.asc", mode="0644")
    apt.sources_file(
        name="Docker's apt repository",
        filename="docker",
        types=["deb"],
        uris=[base],
        suites=[str(codename)],
        components=[host.data.docker_ce_channel],
        architectures=[host.get_fact(DebArch)],
        signed_by="/etc/apt/keyrings/docker.asc",
    )


def _install_dnf(distro: str) -> None:
    installed = host.get_fact(RpmPackages)
    conflicting = [name for name in DNF_CONFLICTS if name in installed]
    if conflicting:
        dnf.packages(name="Remove packages that conflict with docker-ce", packages=conflicting, present=False)
    files.download(
        name="Docker's dnf repository",
        src=f"{host.data.docker_ce_repo_url}/{RHEL_FAMILY[distro]}/docker-ce.repo",
        dest="/etc/yum.repos.d/docker-ce.repo",
        mode="0644",
    )
    version = host.data.docker_version
    if any(name not in installed for name in DOCKER_CE_PACKAGES) or (
        version and not _version_matches(installed, version)
    ):
        dnf.packages(
            name="Install Docker (docker-ce)",
            packages=package_specs(DOCKER_CE_PACKAGES, version, "dnf"),
            extra_install_args="--allowerasing" if version else None,
        )
