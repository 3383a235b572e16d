"""Install Docker: the command sequences for each source, distribution and version pin."""

from __future__ import annotations

import pytest

from pyinfra_swarm.deploys.install import install_docker, package_specs, plan_packages
from tests.unit.fakes import ROCKY, UBUNTU, commands, host, plan

DOCKER_CE = "docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin"


def _install(**kwargs) -> list[str]:
    return commands(plan([install_docker], [host("m1", "10.1.0.1", **kwargs)])["m1"])


def _swap(cmds: list[str]) -> str:
    return next(c for c in cmds if "apt-get install" in c and "--no-install-recommends" in c)


def test_distro_source_installs_docker_io_without_docker_repo():
    cmds = _install(docker_source="distro")
    assert cmds.index("DEBIAN_FRONTEND=noninteractive apt-get update -q") < cmds.index(_swap(cmds))
    assert _swap(cmds).endswith(" docker.io")
    assert not any("download.docker.com" in c for c in cmds)
    assert cmds[-2:] == ["systemctl start docker.service", "systemctl enable docker.service"]


def test_docker_ce_repository_is_proven_before_it_is_added_and_before_any_package_changes():
    cmds = _install(
        docker_source="docker-ce", packages={"docker.io": "20.10.24", "containerd": "1.6.20", "runc": "1.1"}
    )
    repository = next(c for c in cmds if "https://download.docker.com/linux/debian/gpg" in c)
    check, _, add = repository.partition("install -d -m 0755 /etc/apt/keyrings")
    assert "apt-get -o Dir::Etc::SourceList=" in check and "madison docker-ce" in check
    assert "/etc/apt/sources.list.d/docker.sources" in add and "/etc/apt/keyrings/docker.asc" in add
    assert "URIs: https://download.docker.com/linux/debian" in add and "Suites: bookworm" in add
    assert "Signed-By: /etc/apt/keyrings/docker.asc" in add
    assert repository.startswith("set -e\n")
    # then one transaction: Docker's packages in, the conflicting ones out (never a removal on its own)
    assert cmds.index(repository) < cmds.index(_swap(cmds))
    assert _swap(cmds).endswith(f"{DOCKER_CE} docker.io- containerd- runc-")
    assert not any(" remove " in c for c in cmds)


def test_docker_ce_source_in_place_is_not_checked_again():
    from pyinfra_swarm.facts import sha256_text
    from pyinfra_swarm.operations.packages import deb822_source

    source = deb822_source("https://download.docker.com/linux/debian", "bookworm", "stable", "amd64",
                           "/etc/apt/keyrings/docker.asc")  # fmt: skip
    files = {"/etc/apt/sources.list.d/docker.sources": sha256_text(source), "/etc/apt/keyrings/docker.asc": "a" * 64}
    installed = {name: "5:27.3.1-1~debian.12~bookworm" for name in DOCKER_CE.split()} | {"ca-certificates": "1"}
    assert _install(docker_source="docker-ce", packages=installed, apt_files=files, docker_running=True) == []
    # a new mirror URL: the source is checked and replaced, the packages stay
    cmds = _install(docker_source="docker-ce", packages=installed, apt_files=files, docker_running=True,
                    docker_ce_repo_url="http://mirror.example/docker/")  # fmt: skip
    assert len(cmds) == 1 and "URIs: http://mirror.example/docker/debian\n" in cmds[0]


def test_other_sources_for_the_same_url_are_moved_aside():
    cmds = _install(docker_source="docker-ce")
    repository = next(c for c in cmds if "madison docker-ce" in c)
    assert "grep -qF https://download.docker.com/linux/debian" in repository
    assert 'mv "$f" "$f.pyinfra-swarm-disabled"' in repository


def test_docker_ce_on_ubuntu_uses_the_ubuntu_repository():
    cmds = _install(docker_source="docker-ce", os_release=UBUNTU)
    assert any("https://download.docker.com/linux/ubuntu/gpg" in c and "Suites: noble" in c for c in cmds)


def test_switching_to_distro_removes_docker_ce_in_the_same_transaction():
    installed = {"docker-ce": "5:27.3.1-1~debian.12~bookworm", "docker-ce-cli": "5:27.3.1", "containerd.io": "1.7"}
    cmds = _install(docker_source="distro", packages=installed)
    assert _swap(cmds).endswith(" docker.io docker-ce- docker-ce-cli- containerd.io-")


def test_version_pin_on_apt_is_checked_in_the_repository_first():
    version = "5:27.3.1-1~debian.12~bookworm"
    cmds = _install(docker_source="docker-ce", docker_version=version)
    assert f"-v want='{version}'" in next(c for c in cmds if "madison docker-ce" in c)
    assert f"'docker-ce={version}' 'docker-ce-cli={version}'" in _swap(cmds)
    assert "--allow-downgrades" in _swap(cmds)


def test_docker_ce_gets_apparmor_where_apparmor_is_enabled():
    _, wanted, _ = plan_packages("apt", "docker-ce", {}, None, True)
    assert wanted[-1] == "apparmor"


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
    assert "upload /etc/yum.repos.d/docker-ce.repo" in cmds
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
    assert distro_packages("debian ") == ["docker.io", "docker-cli"]  # forky (testing): no VERSION_ID
    assert distro_packages("debian 12") == distro_packages("ubuntu 24.04") == ["docker.io"]
    # Debian 12's docker.io pinned on Debian 13 (a rolling upgrade's starting point) has its CLI inside.
    assert distro_packages("debian 13", "20.10.24+dfsg1-1+deb12u1+b6") == ["docker.io"]
    assert distro_packages("debian 13", "26.1.5+dfsg1-9+deb13u1+b1") == ["docker.io", "docker-cli"]
    _, wanted, install = plan_packages("apt", "distro", {"docker.io": "26.1.5"}, None, False, "debian 13")
    assert wanted == ["docker.io", "docker-cli"] and install  # a node upgraded from 12 lacks the CLI


def test_rhel_repo_file_follows_the_mirror_and_channel():
    from pyinfra_swarm.deploys.install import dnf_repository

    repo = dnf_repository("http://mirror.example/docker/", "rocky", "test")
    assert repo.splitlines() == [
        "[docker-ce-test]", "name=Docker CE Test - $basearch",
        "baseurl=http://mirror.example/docker/centos/$releasever/$basearch/test", "enabled=1", "gpgcheck=1",
        "gpgkey=http://mirror.example/docker/centos/gpg",
    ]  # fmt: skip


def test_a_new_pinned_version_is_held_again_after_its_install():
    from pyinfra_swarm.deploys.install import hold_commands

    wanted, held = ["docker-ce", "docker-ce-cli", "containerd.io"], ["docker-ce", "docker-ce-cli"]
    installed = {"docker-ce": "5:27.3.1-1", "docker-ce-cli": "5:27.3.1-1", "containerd.io": "1.7"}
    assert hold_commands(wanted, installed, held, "5:27.3.1-1") == []
    assert hold_commands(wanted, installed, held, "5:27.4.0-1", installing=True) == [
        "apt-mark hold docker-ce docker-ce-cli"
    ]
    assert hold_commands(wanted, installed, held, None) == ["apt-mark unhold docker-ce docker-ce-cli"]


def test_docker_ce_needs_ca_certificates_before_its_https_repository():
    cmds = _install(docker_source="docker-ce")
    tools = next(i for i, c in enumerate(cmds) if c.endswith("install --no-install-recommends ca-certificates"))
    assert tools < next(i for i, c in enumerate(cmds) if "madison docker-ce" in c)
    assert not any("ca-certificates" in c for c in _install(docker_source="distro"))


def test_switching_to_distro_removes_the_docker_source_it_added():
    installed = {"docker-ce": "5:27.3.1-1~debian.12~bookworm", "docker-ce-cli": "5:27.3.1", "containerd.io": "1.7"}
    files = {"/etc/apt/sources.list.d/docker.sources": "a" * 64, "/etc/apt/keyrings/docker.asc": "b" * 64}
    cmds = _install(docker_source="distro", packages=installed, apt_files=files)
    assert cmds.index(_swap(cmds)) < cmds.index(
        "rm -f /etc/apt/sources.list.d/docker.sources /etc/apt/keyrings/docker.asc"
    )
    done = {"docker.io": "20.10.24"}
    assert _install(docker_source="distro", packages=done, docker_running=True) == []


def test_docker_users_must_exist_the_deploy_creates_no_account():
    from pyinfra.api.exceptions import PyinfraError

    with pytest.raises(PyinfraError, match="host @fake/m1: docker_users alcie: no such user on it"):
        plan([install_docker], [host("m1", "10.1.0.1", docker_source="distro", docker_users=["alcie"])])
    known = host("m1", "10.1.0.1", docker_source="distro", docker_users=["alice"],
                 extra={"getent passwd": ["alice"]})  # fmt: skip
    steps = plan([install_docker], [known])["m1"]
    assert any("alice is in the docker group" in name for name, _ in steps)
