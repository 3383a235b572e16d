"""The local Vagrant box: its own Vagrantfile, and when it is made again."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from pyinfra_swarm.lab import vagrantbox
from pyinfra_swarm.lab.vmimage import VmImage

KEY = "ssh-rsa AAAAB3Nza vagrant insecure public key\n"


def image(folder: Path) -> VmImage:
    return VmImage(folder / "disk.raw", folder / "vmlinuz", folder / "initrd.img")


def test_the_box_boots_the_images_kernel_as_a_vagrant_box(tmp_path: Path):
    text = vagrantbox.box_vagrantfile(image(tmp_path), KEY)
    assert f"lv.kernel = '{tmp_path}/vmlinuz'" in text and f"lv.initrd = '{tmp_path}/initrd.img'" in text
    cmd_line = text.split("lv.cmd_line = '")[1].split("'")[0].split()
    assert "net.ifnames=0" in cmd_line and "root=LABEL=root" in cmd_line
    given = next(word for word in cmd_line if word.startswith("psl.vagrant="))
    assert base64.b64decode(given.removeprefix("psl.vagrant=")).decode() == KEY  # a line of its own


class Made(Exception):
    """Raised by the fake qemu-img: the box is being made."""


@pytest.mark.parametrize(("added_from", "made"), [("images/today", False), ("images/older", True), (None, True)])
def test_the_box_is_made_again_when_the_image_changed(monkeypatch, tmp_path: Path, added_from, made):
    today = image(tmp_path / "images" / "today")
    monkeypatch.setattr(vagrantbox, "ensure_vm_image", lambda distro, progress: today)
    monkeypatch.setattr(vagrantbox, "cache_root", lambda: tmp_path)

    def qemu_img(command: list[str]) -> str:
        raise Made(command[0])

    monkeypatch.setattr(vagrantbox, "run_checked", qemu_img)
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vagrant.d"))
    if added_from:
        added = tmp_path / "vagrant.d/boxes/pyinfra-swarm-VAGRANTSLASH-debian12/0/libvirt"
        added.mkdir(parents=True)
        (added / "Vagrantfile").write_text(vagrantbox.box_vagrantfile(image(tmp_path / added_from), KEY))
    if made:
        with pytest.raises(Made):
            vagrantbox.ensure_box("debian12-local", print)
    else:
        assert vagrantbox.ensure_box("debian12-local", print) == today
