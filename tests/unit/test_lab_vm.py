"""The VM lab's host-side pieces that need no QEMU: names, host keys from the console, the memory check, and
the image's cache key (booting VMs is tests/vm's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinfra_swarm.lab import state, vm, vmimage
from pyinfra_swarm.lab.spec import LabError


def test_bridge_and_tap_names_fit_linux_and_differ_between_labs():
    bridge, taps = vm._ids("a-lab-name-of-twenty-four")
    assert len(bridge) <= 15 and len(f"{taps}99") <= 15
    assert vm._ids("lab") != vm._ids("lab2")


def test_host_keys_are_read_from_the_console_and_nothing_else(tmp_path: Path):
    console = tmp_path / "console.log"
    console.write_text(
        "[    1.0] Linux version 6.1\n"
        f"{vmimage.HOST_KEY_MARK} ssh-ed25519 AAAAC3Nza\n"
        "login: ssh-rsa AAAAnot-a-key-line\n"
        f"{vmimage.HOST_KEY_MARK} ecdsa-sha2-nistp256 AAAAE2Vj\n"
    )
    assert vm._host_keys(console) == ["ssh-ed25519 AAAAC3Nza", "ecdsa-sha2-nistp256 AAAAE2Vj"]
    assert vm._host_keys(tmp_path / "missing.log") == []


def test_too_little_memory_is_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(LabError, match=r"3 VMs of 1000000 MiB need .* --vm-memory"):
        vm._check_memory(3, 1_000_000)
    vm._check_memory(0, 1_000_000)  # nothing to boot, nothing to check


def test_the_image_cache_key_follows_the_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("PYINFRA_SWARM_VM_CACHE", str(tmp_path))
    first = vmimage.image_dir("bookworm")
    assert first.parent == tmp_path and first.name.startswith("debian-bookworm-")
    assert vmimage.image_dir("trixie") != first
    changed = tmp_path / "vmimage.py"  # the recipe is the module: any change to it makes a new image
    changed.write_text(Path(vmimage.__file__).read_text().replace('"docker.io",', '"docker.io", "containerd",'))
    monkeypatch.setattr(vmimage, "__file__", str(changed))
    assert vmimage.image_dir("bookworm") != first


def test_a_lab_without_vms_is_not_taken_for_one(tmp_path: Path):
    assert not state.is_vm_lab(tmp_path)
    assert vm.down(tmp_path, print) == 0
