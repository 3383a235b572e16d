"""Install Docker: Docker CE from Docker's apt or dnf repository, or the distribution's docker.io."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.deb import DebArch
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, dnf, files, server, systemd

from pyinfra_swarm.facts import DockerPackages, KernelFeatures, ServiceStates
from pyinfra_swarm.hostfacts import host_fact, register
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


def package_specs(packages: list[str], version: str | None, manager: str) -> list[str]:
    """Package names with the version pin applied to the engine and CLI packages."""
    if not version:
        return packages
    separator = "=" if manager == "apt" else "-"
    pinned = {"docker-ce", "docker-ce-cli", "docker.io"}
    return [f"{name}{separator}{version}" if name in pinned else name for name in packages]


ALL_PACKAGES = sorted(
    set(DOCKER_CE_PACKAGES + DISTRO_PACKAGES + APT_CONFLICTS["docker-ce"] + DNF_CONFLICTS + ["apparmor"])
)


register("packages", DockerPackages, packages=ALL_PACKAGES)
register("kernel", KernelFeatures)
register("docker_service", ServiceStates, services=["docker.service"])


def plan_packages(manager: str | None, source: str, installed: dict[str, str], version: str | None,
                  apparmor: bool) -> tuple[list[str], list[str], bool]:  # fmt: skip
    """(conflicting packages to remove, packages wanted, whether an install is needed)."""
    if manager == "dnf":
        conflicts, wanted = DNF_CONFLICTS, list(DOCKER_CE_PACKAGES)
    else:
        conflicts = APT_CONFLICTS[source]
        wanted = list(DOCKER_CE_PACKAGES if source == "docker-ce" else DISTRO_PACKAGES)
        if source == "distro" and apparmor:
            wanted.append("apparmor")  # Docker needs apparmor_parser where AppArmor is enabled
    remove = [name for name in conflicts if name in installed]
    engine = "docker-ce" if source == "docker-ce" else "docker.io"
    outdated = bool(version) and not str(installed.get(engine, "")).startswith(str(version).rstrip("*"))
    return remove, wanted, outdated or any(name not in installed for name in wanted)


@deploy("Install Docker", data_defaults={key: DEFAULTS[key] for key in SETTINGS})
def install_docker() -> None:
    """Install Docker from data's `docker_source`, remove conflicting packages, start and enable it."""
    source = host.data.docker_source
    facts = host_fact("packages")
    manager = facts["manager"]
    if manager not in ("apt", "dnf"):
        raise DeployError(f"host {host.name}: neither apt nor dnf found: Debian, Ubuntu or the RHEL family needed")
    if manager == "dnf" and source != "docker-ce":
        raise DeployError(
            f"host {host.name}: docker_source {source!r} needs Debian or Ubuntu; RHEL-family hosts ship podman: "
            "use docker_source: docker-ce"
        )
    apparmor = bool(host_fact("kernel").get("APPARMOR"))
    remove, wanted, install = plan_packages(manager, source, facts["packages"], host.data.docker_version, apparmor)
    if manager == "apt":
        _install_apt(source, remove, wanted, install)
    else:
        _install_dnf(remove, install)
    service = host_fact("docker_service").get("docker.service", {})
    if not (service.get("active") and service.get("enabled")):
        systemd.service(name="Docker is running and enabled", service="docker", running=True, enabled=True)
    for user in host.loop(host.data.docker_users):
        server.user(name=f"{user} is in the docker group", user=user, groups=["docker"], append=True)


def _install_apt(source: str, remove: list[str], wanted: list[str], install: bool) -> None:
    if remove:
        apt.packages(name="Remove packages that conflict with " + source, packages=remove, present=False)
    if not install:
        return
    if source == "docker-ce":
        _docker_ce_apt_repository()
    version = host.data.docker_version
    apt.packages(
        name=f"Install Docker ({source})",
        packages=package_specs(wanted, version, "apt"),
        update=True,
        no_recommends=True,
        allow_downgrades=bool(version),
    )


def _docker_ce_apt_repository() -> None:
    meta = host.get_fact(LinuxDistribution)["release_meta"]
    distro = str(meta.get("ID", "")).lower()
    if distro not in DEBIAN_FAMILY:
        raise DeployError(f"host {host.name}: Docker's apt repository has no packages for {distro!r}")
    codename = meta.get("UBUNTU_CODENAME") or meta.get("VERSION_CODENAME")
    base = f"{host.data.docker_ce_repo_url}/{DEBIAN_FAMILY[distro]}"
    apt.packages(name="Tools to fetch Docker's signing key", packages=["ca-certificates", "curl"], update=True)
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


def _install_dnf(remove: list[str], install: bool) -> None:
    if remove:
        dnf.packages(name="Remove packages that conflict with docker-ce", packages=remove, present=False)
    if not install:
        return
    distro = str(host.get_fact(LinuxDistribution)["release_meta"].get("ID", "")).lower()
    if distro not in RHEL_FAMILY:
        raise DeployError(f"host {host.name}: Docker's dnf repository has no packages for {distro!r}")
    files.download(
        name="Docker's dnf repository",
        src=f"{host.data.docker_ce_repo_url}/{RHEL_FAMILY[distro]}/docker-ce.repo",
        dest="/etc/yum.repos.d/docker-ce.repo",
        mode="0644",
    )
    version = host.data.docker_version
    dnf.packages(
        name="Install Docker (docker-ce)",
        packages=package_specs(DOCKER_CE_PACKAGES, version, "dnf"),
        extra_install_args="--allowerasing" if version else None,
    )
