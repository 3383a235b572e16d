"""Install Docker: the command sequences for each source, distribution and version pin."""

from __future__ import annotations

import pytest

from pyinfra_swarm.deploys.install import install_docker, package_specs, plan_packages
from tests.unit.fakes import ROCKY, UBUNTU, commands, host, plan

DOCKER_CE = "docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin"


def _install(**kwargs) -> list[str]:
    return commands(plan([install_docker], [host("m1", "10.1.0.1", **kwargs)])["m1"])


def test_distro_source_installs_docker_io_without_docker_repo():
    cmds = _install(docker_source="distro")
    assert "apt-get update" in cmds
    assert any(c.endswith("install --no-install-recommends docker.io") for c in cmds)
    assert not any("download.docker.com" in c for c in cmds)
    assert cmds[-2:] == ["systemctl start docker.service", "systemctl enable docker.service"]


def test_docker_ce_on_debian_adds_signed_deb822_repository_first():
    cmds = _install(docker_source="docker-ce")
    key = next(i for i, c in enumerate(cmds) if "https://download.docker.com/linux/debian/gpg" in c)
    source = next(i for i, c in enumerate(cmds) if "/etc/apt/sources.list.d/docker.sources" in c)
    install = next(i for i, c in enumerate(cmds) if c.endswith(f"install --no-install-recommends {DOCKER_CE}"))
    assert key < source < install
    assert "mv /tmp/" in cmds[key + 1] and cmds[key + 1].endswith("/etc/apt/keyrings/docker.asc")


def test_docker_ce_on_ubuntu_uses_the_ubuntu_repository():
    cmds = _install(docker_source="docker-ce", os_release=UBUNTU)
    assert any("https://download.docker.com/linux/ubuntu/gpg" in c for c in cmds)


def test_switching_to_docker_ce_removes_the_distro_packages():
    cmds = _install(
        docker_source="docker-ce", packages={"docker.io": "20.10.24", "containerd": "1.6.20", "runc": "1.1"}
    )
    removal = next(c for c in cmds if " remove " in c)
    assert removal.endswith("remove docker.io containerd runc")
    assert cmds.index(removal) < next(i for i, c in enumerate(cmds) if "install --no-install-recommends" in c)


def test_switching_to_distro_removes_docker_ce():
    installed = {"docker-ce": "5:27.3.1-1~debian.12~bookworm", "docker-ce-cli": "5:27.3.1", "containerd.io": "1.7"}
    cmds = _install(docker_source="distro", packages=installed)
    assert any(c.endswith("remove docker-ce docker-ce-cli containerd.io") for c in cmds)


def test_version_pin_on_apt():
    cmds = _install(docker_source="docker-ce", docker_version="5:27.3.1-1~debian.12~bookworm")
    install = next(c for c in cmds if "install --no-install-recommends" in c)
    assert "'docker-ce=5:27.3.1-1~debian.12~bookworm' 'docker-ce-cli=5:27.3.1-1~debian.12~bookworm'" in install
    assert "--allow-downgrades" in install


def test_installed_and_running_docker_plans_nothing():
    cmds = _install(
        docker_source="distro",
        packages={"docker.io": "20.10.24+dfsg1-1+deb12u1"},
        docker_running=True,
    )
    assert cmds == []


def test_rocky_gets_docker_ce_from_the_centos_dnf_repository():
    cmds = _install(docker_source="docker-ce", manager="dnf", os_release=ROCKY, packages={"podman": "4.9", "runc": "1"})
    assert cmds[0].startswith("dnf remove -y") and "podman" in cmds[0] and "runc" in cmds[0]
    assert any("https://download.docker.com/linux/centos/docker-ce.repo" in c for c in cmds)
    assert any(c.startswith("dnf install -y") and "docker-ce" in c for c in cmds)


def test_rhel_version_pin_uses_dash_and_allowerasing():
    assert package_specs(["docker-ce", "containerd.io"], "27.3.1", "dnf") == ["docker-ce-27.3.1", "containerd.io"]
    cmds = _install(docker_source="docker-ce", manager="dnf", os_release=ROCKY, docker_version="27.3.1")
    assert any("--allowerasing" in c and "docker-ce-27.3.1" in c for c in cmds)


def test_distro_source_on_rhel_is_refused():
    with pytest.raises(Exception, match="docker_source 'distro' needs Debian or Ubuntu"):
        _install(docker_source="distro", manager="dnf", os_release=ROCKY)


def test_plan_packages_detects_an_outdated_pin():
    _, _, install = plan_packages("apt", "distro", {"docker.io": "20.10.24+dfsg1"}, "20.10.24*", False)
    assert not install
    _, _, install = plan_packages("apt", "distro", {"docker.io": "20.10.5"}, "20.10.24*", False)
    assert install
    _, wanted, _ = plan_packages("apt", "distro", {}, None, True)
    assert wanted == ["docker.io", "apparmor"]


def test_debian_13_gets_the_docker_cli_package_too():
    from pyinfra_swarm.deploys.install import distro_packages

    assert distro_packages("debian 13") == ["docker.io", "docker-cli"]
    assert distro_packages("debian 12") == distro_packages("ubuntu 24.04") == ["docker.io"]
    _, wanted, install = plan_packages("apt", "distro", {"docker.io": "26.1.5"}, None, False, "debian 13")
    assert wanted == ["docker.io", "docker-cli"] and install  # a node upgraded from 12 lacks the CLI
