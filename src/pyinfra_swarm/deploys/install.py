"""Install Docker: Docker CE from Docker's apt or dnf repository, or the distribution's docker.io."""

from __future__ import annotations

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import Host
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, dnf, files, server, systemd

from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.layout import APT_CONFLICTS, DNF_CONFLICTS, DOCKER_APT_KEY, DOCKER_APT_SOURCE, DOCKER_CE_PACKAGES
from pyinfra_swarm.operations import packages
from pyinfra_swarm.plan import ClusterPlan, current_host
from pyinfra_swarm.settings import setting

DEBIAN_FAMILY = {"debian": "debian", "raspbian": "raspbian", "ubuntu": "ubuntu"}
# Docker's dnf repositories by distribution; Rocky and Alma use the CentOS one.
RHEL_FAMILY = {"centos": "centos", "rocky": "centos", "almalinux": "centos", "rhel": "rhel", "fedora": "fedora"}
DISTRO_PACKAGES = ["docker.io"]
# What each source conflicts with on apt.
CONFLICTS = {"docker-ce": APT_CONFLICTS, "distro": DOCKER_CE_PACKAGES}
# The packages a version pin applies to, held (apt-mark hold) while pinned so that `apt upgrade` leaves them.
PINNED = {"docker-ce", "docker-ce-cli", "docker.io", "docker-cli"}


def package_specs(packages: list[str], version: str | None, manager: str) -> list[str]:
    """Package names with the version pin applied to the engine and CLI packages."""
    if not version:
        return packages
    separator = "=" if manager == "apt" else "-"
    return [f"{name}{separator}{version}" if name in PINNED else name for name in packages]


def _major(version: str) -> int | None:
    head = version.split(":")[-1].split(".")[0]
    return int(head) if head.isdigit() else None


def distro_packages(release: str, version: str | None = None) -> list[str]:
    """The distribution's Docker packages: from Debian 13 on, the CLI is a package of its own (`docker-cli`,
    only recommended by docker.io), but for an older docker.io pinned from Debian 12 (20.10, CLI included).
    Debian testing and unstable (forky, sid) give no version number: they are the newest."""
    name, _, number = release.partition(" ")
    newest = not number.strip()
    split = name == "debian" and (newest or (_major(number) or 0) >= 13) and (_major(version or "") or 26) >= 26
    return [*DISTRO_PACKAGES, "docker-cli"] if split else list(DISTRO_PACKAGES)


def plan_packages(manager: str | None, source: str, installed: dict[str, str], version: str | None,
                  apparmor: bool, release: str = "") -> tuple[list[str], list[str], bool]:  # fmt: skip
    """(conflicting packages to remove, packages wanted, whether an install is needed)."""
    if manager == "dnf":
        conflicts, wanted = DNF_CONFLICTS, list(DOCKER_CE_PACKAGES)
    else:
        conflicts = CONFLICTS[source]
        wanted = list(DOCKER_CE_PACKAGES) if source == "docker-ce" else distro_packages(release, version)
        if apparmor:
            wanted.append("apparmor")  # containers fail to start without apparmor_parser where AppArmor is on
    remove = [name for name in conflicts if name in installed]
    engine = "docker-ce" if source == "docker-ce" else "docker.io"
    outdated = bool(version) and not str(installed.get(engine, "")).startswith(str(version).rstrip("*"))
    return remove, wanted, outdated or any(name not in installed for name in wanted)


def hold_commands(wanted: list[str], installed: dict[str, str], held: list[str], version: str | None,
                  installing: bool = False) -> list[str]:  # fmt: skip
    """apt-mark commands that hold the pinned packages while `docker_version` is set, and release them when
    it is not. An install of a new version drops apt's hold, so a pin is held again after every install."""
    pinned = sorted(name for name in wanted if name in PINNED)
    if version:
        to_hold = [name for name in pinned if installing or name not in held or name not in installed]
        return [f"apt-mark hold {' '.join(to_hold)}"] if to_hold else []
    to_release = [name for name in pinned if name in held]
    return [f"apt-mark unhold {' '.join(to_release)}"] if to_release else []


def apt_swap_command(remove: list[str], wanted: list[str], version: str | None) -> str:
    """One apt transaction that installs the wanted packages and removes the conflicting ones (`pkg-`), so
    a node is never left without an engine between the two."""
    specs = [*package_specs(wanted, version, "apt"), *(f"{name}-" for name in remove)]
    return (
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades "
        "--allow-change-held-packages -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
        + " ".join(shlex.quote(spec) for spec in specs)
    )


def apt_work(plan: ClusterPlan, target: Host) -> tuple[list[str], list[str]]:
    """(the apt transaction that installs the wanted engine packages, the apt-mark commands that hold or release
    the pin) of an apt host; the transaction is [] when nothing is to install or remove."""
    facts = plan.fact("packages", target)
    source = setting(target, "docker_source")
    installed = facts["packages"]
    version = setting(target, "docker_version")
    apparmor = bool(plan.fact("kernel", target).get("APPARMOR"))
    remove, wanted, install = plan_packages("apt", source, installed, version, apparmor, facts.get("release", ""))
    transaction = []
    if install or remove:
        transaction = [
            "DEBIAN_FRONTEND=noninteractive dpkg --configure -a",  # finish what an interrupted run (a power cut) left
            "DEBIAN_FRONTEND=noninteractive apt-get update -q",
            apt_swap_command(remove, wanted, version),
        ]
    holds = hold_commands(wanted, installed, facts.get("held", []), version, installing=bool(transaction))
    return transaction, holds


def engine_transaction(plan: ClusterPlan, target: Host) -> list[str]:
    """What a node of the swarm installs in its turn (deploys/engine.py): the apt transaction, then its holds;
    [] when its packages are as data asks (or it isn't an apt host)."""
    if plan.fact("packages", target)["manager"] != "apt":
        return []
    transaction, holds = apt_work(plan, target)
    return [*transaction, *holds] if transaction else []


@step("Install Docker")
def install_docker(plan: ClusterPlan, this: Host) -> None:
    """Install Docker from data's `docker_source`, remove conflicting packages, start and enable it. On a
    node already in the swarm, an engine change (a new version, a source switch) waits for the node's turn
    (deploys/engine.py); Docker's repository is prepared here for it."""
    source = setting(this, "docker_source")
    facts = plan.fact("packages")
    manager = facts["manager"]
    if manager not in ("apt", "dnf"):
        raise DeployError(f"host {this.name}: neither apt nor dnf found: Debian, Ubuntu or the RHEL family needed")
    if manager == "dnf" and source != "docker-ce":
        raise DeployError(
            f"host {this.name}: docker_source {source!r} needs Debian or Ubuntu; RHEL-family hosts ship podman: "
            "use docker_source: docker-ce"
        )
    installed = facts["packages"]
    if manager == "apt":
        # curl: joins go to Docker's API; ca-certificates: Docker's repository is fetched over HTTPS.
        tools = [
            name for name in ["curl", *(["ca-certificates"] if source == "docker-ce" else [])] if name not in installed
        ]
        if tools:
            apt.packages(name=f"Tools the deploy uses ({', '.join(tools)})", packages=tools, update=True,
                         no_recommends=True)  # fmt: skip
        if source == "docker-ce":
            _docker_ce_apt_repository(plan, setting(this, "docker_version"))
        transaction, holds = apt_work(plan, this)
        in_turn = bool(transaction) and plan.is_member(this)  # then the node's turn installs, and holds after
        if transaction and not in_turn:
            server.shell(name=f"Install Docker ({source})", commands=transaction)
        stale = [path for path in (DOCKER_APT_SOURCE, DOCKER_APT_KEY) if plan.fact("apt_source").get(path)]
        if source == "distro" and stale:  # after the switch: a mirror that goes away can't break `apt-get update`
            server.shell(
                name="Remove Docker's apt repository (docker_source: distro)",
                commands=[shlex.join(["rm", "-f", *stale])],
            )
        if holds and not in_turn:
            server.shell(name="Hold the pinned Docker packages" if setting(this, "docker_version")
                         else "Release held Docker packages", commands=holds)  # fmt: skip
    else:
        remove, _, install = plan_packages(manager, source, installed, setting(this, "docker_version"), False)
        _install_dnf(plan, remove, install)
    service = plan.fact("services").get("docker.service", {})
    if not (service.get("active") and service.get("enabled")):
        systemd.service(name="Docker is running and enabled", service="docker", running=True, enabled=True)
    for user in host.loop(setting(this, "docker_users")):
        server.user(name=f"{user} is in the docker group", user=user, groups=["docker"], append=True)


def _docker_ce_apt_repository(plan: ClusterPlan, version: str | None) -> None:
    facts = plan.fact("packages")
    distro = facts.get("release", "").partition(" ")[0]
    if distro not in DEBIAN_FAMILY:
        raise DeployError(f"host {host.name}: Docker's apt repository has no packages for {distro!r}")
    packages.signed_apt_source(
        name="Docker's apt repository (checked before it is added)",
        filename="docker",
        url=f"{setting(current_host(), 'docker_ce_repo_url').rstrip('/')}/{DEBIAN_FAMILY[distro]}",
        suite=facts["codename"],
        component=setting(current_host(), "docker_ce_channel"),
        arch=facts["arch"],
        package="docker-ce",
        version=version,
        setting="docker_ce_repo_url and docker_ce_channel",
    )


def dnf_repository(url: str, distro: str, channel: str) -> str:
    """Docker's .repo file for `distro`'s repository at `url` (a mirror) and `channel`, as Docker writes it."""
    base = f"{url.rstrip('/')}/{RHEL_FAMILY[distro]}"
    return (
        f"[docker-ce-{channel}]\nname=Docker CE {channel.capitalize()} - $basearch\n"
        f"baseurl={base}/$releasever/$basearch/{channel}\nenabled=1\ngpgcheck=1\ngpgkey={base}/gpg\n"
    )


def _install_dnf(plan: ClusterPlan, remove: list[str], install: bool) -> None:
    if remove:
        dnf.packages(name="Remove packages that conflict with docker-ce", packages=remove, present=False)
    if not install:
        return
    distro = plan.fact("packages")["release"].partition(" ")[0].lower()
    if distro not in RHEL_FAMILY:
        raise DeployError(f"host {host.name}: Docker's dnf repository has no packages for {distro!r}")
    this = current_host()
    repository = dnf_repository(setting(this, "docker_ce_repo_url"), distro, setting(this, "docker_ce_channel"))
    files.put(
        name="Docker's dnf repository", src=StringIO(repository), dest="/etc/yum.repos.d/docker-ce.repo", mode="0644"
    )
    version = setting(this, "docker_version")
    dnf.packages(
        name="Install Docker (docker-ce)",
        packages=package_specs(DOCKER_CE_PACKAGES, version, "dnf"),
        extra_install_args="--allowerasing" if version else None,
    )
