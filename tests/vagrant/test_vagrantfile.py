"""`vagrant validate` of vagrant/Vagrantfile for several settings files (no VM boots: none can here).
Needs the `vagrant` command (CI installs Debian's package); without it these tests fail, they don't skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"
BASE = "managers: 1\nworkers: 2\nbox: debian12\ncpus: 2\nmemory: 2048\nsubnet: 192.168.56.0/24\n"


def validate(tmp_path: Path, settings: str | None, provider: str = "virtualbox") -> subprocess.CompletedProcess:
    """`vagrant validate` with a settings file (None: the shipped one) for a provider (the settings' key)."""
    assert shutil.which("vagrant"), "vagrant is missing: apt-get install --no-install-recommends vagrant"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    if settings is not None:
        path = tmp_path / "settings.yml"
        path.write_text(f"{settings}provider: {provider}\n")
        env["PYINFRA_SWARM_VAGRANT_SETTINGS"] = str(path)
    return subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT_DIR, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "provider", "machines"),
    [
        (None, "virtualbox", ["manager1", "worker1", "worker2"]),  # the shipped settings.yml
        (BASE.replace("managers: 1", "managers: 3").replace("debian12", "ubuntu2404"), "virtualbox",
         ["manager1", "manager2", "manager3", "worker1", "worker2"]),
        (BASE.replace("192.168.56.0/24", "10.42.0.0/24").replace("workers: 2", "workers: 0"), "libvirt",
         ["manager1"]),
    ],
)  # fmt: skip
def test_valid_settings(tmp_path, settings, provider, machines):
    result = validate(tmp_path, settings, provider)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully" in result.stdout
    assert [
        line.split(":")[0].removeprefix("==> ") for line in result.stdout.splitlines() if "Ignoring" in line
    ] == machines


@pytest.mark.parametrize(
    ("change", "provider", "message"),
    [
        (("managers: 1", "managers: 0"), "virtualbox", "managers: must be a whole number >= 1, not 0"),
        (("workers: 2", "workers: -1"), "virtualbox", "workers: must be a whole number >= 0, not -1"),
        (("box: debian12", "box: arch"), "virtualbox", 'box: unknown box "arch"'),
        (("192.168.56.0/24", "192.168.70.0/24"), "virtualbox", "outside 192.168.56.0/21"),
        (("192.168.56.0/24", "8.8.8.0/24"), "libvirt", "not a private (RFC 1918) range"),
        (("cpus: 2", "cpus: 2\ncolour: red"), "virtualbox", "colour: unknown setting"),
        (
            ("box: debian12", "box: debian12-local"),
            "virtualbox",
            "debian12-local is a libvirt box, not one for virtualbox",
        ),
    ],
)
def test_bad_settings_name_the_key(tmp_path, change, provider, message):
    result = validate(tmp_path, BASE.replace(*change), provider)
    assert result.returncode != 0
    assert "settings.yml: " in result.stderr and message in result.stderr, result.stderr
