"""The Vagrant lab where no box can be downloaded: a libvirt box made on this machine from the VM lab's image,
libvirtd started where no init system starts it, and `vagrant up` under KVM where guests run under it, else
QEMU's software emulation. With internet, the Vagrantfile's public boxes need none of this."""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from pyinfra_swarm.lab.spec import LabError
from pyinfra_swarm.lab.vm import choose_accel
from pyinfra_swarm.lab.vmimage import Progress, VmImage, cache_root, ensure_vm_image, run_checked
from pyinfra_swarm.vagrant import LOCAL_BOXES

# The address of libvirt's DNS on vagrant-libvirt's management network (192.168.121.0/24 unless changed).
MANAGEMENT_DNS = "192.168.121.1"
# Where Vagrant keeps its well-known key, which boxes accept until Vagrant puts a key of its own in its place.
VAGRANT_KEYS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",  # Debian's vagrant package
    "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub",  # HashiCorp's
)
CONNECT = "qemu:///system"


def ensure_libvirtd(progress: Progress) -> None:
    """libvirtd answering at qemu:///system: started here (with virtlogd) as root where no systemd runs."""
    if _libvirtd_answers():
        return
    if os.geteuid() != 0 or Path("/run/systemd/system").is_dir():
        raise LabError(f"libvirtd doesn't answer at {CONNECT}: start it (sudo systemctl start libvirtd)")
    for daemon in ("virtlogd", "libvirtd"):
        if not shutil.which(daemon):
            raise LabError(f"{daemon} is missing: apt-get install libvirt-daemon-system")
        if subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode != 0:
            progress(f"starting {daemon}")
            run_checked([daemon, "--daemon"])
    deadline = time.monotonic() + 20
    while not _libvirtd_answers():
        if time.monotonic() > deadline:
            raise LabError(f"libvirtd started but doesn't answer at {CONNECT} within 20 s")
        time.sleep(0.5)


def _libvirtd_answers() -> bool:
    command = ["virsh", "-c", CONNECT, "version"]
    return shutil.which("virsh") is not None and subprocess.run(command, capture_output=True).returncode == 0


def ensure_box(box: str, progress: Progress, rebuild: bool = False) -> VmImage:
    """The local box `box` (a LOCAL_BOXES key) known to Vagrant and made from today's image of the VM lab,
    made now if it isn't (or if `rebuild`)."""
    name, distro = LOCAL_BOXES[box]
    image = ensure_vm_image(distro, progress)
    if not rebuild and str(image.kernel) in _added_box_vagrantfile(name):
        return image
    progress(f"making the Vagrant box {name} (libvirt) from {image.disk.parent}")
    with tempfile.TemporaryDirectory(prefix="pyinfra-swarm-box-", dir=cache_root()) as tmp:
        folder = Path(tmp)
        run_checked(["qemu-img", "convert", "-O", "qcow2", str(image.disk), str(folder / "box.img")])
        size_gib = -(-json.loads(run_checked(["qemu-img", "info", "--output=json", str(image.disk)]))["virtual-size"]
                     // (1 << 30))  # fmt: skip
        (folder / "metadata.json").write_text(json.dumps({"provider": "libvirt", "format": "qcow2",
                                                          "virtual_size": size_gib}))  # fmt: skip
        (folder / "Vagrantfile").write_text(box_vagrantfile(image, vagrant_public_key()))
        archive = folder / "box.box"
        with tarfile.open(archive, "w") as tar:
            for member in ("metadata.json", "Vagrantfile", "box.img"):
                tar.add(folder / member, arcname=member)
        run_checked(["vagrant", "box", "add", "--force", "--name", name, str(archive)])
    return image


def _added_box_vagrantfile(name: str) -> str:
    """The Vagrantfile of the box Vagrant has under `name` ("" if none): it names the image it was made from."""
    home = Path(os.environ.get("VAGRANT_HOME", "~/.vagrant.d")).expanduser()
    path = home / "boxes" / name.replace("/", "-VAGRANTSLASH-") / "0" / "libvirt" / "Vagrantfile"
    return path.read_text() if path.is_file() else ""


def box_vagrantfile(image: VmImage, key: str) -> str:
    """The box's own Vagrantfile: the image has no boot loader, so libvirt boots its kernel directly, with
    the command line that makes the image a Vagrant box (see vmimage.BOOT_SCRIPT)."""
    cmd_line = (f"root=LABEL=root rw console=ttyS0 net.ifnames=0 psl.dns={MANAGEMENT_DNS} "
                f"psl.vagrant={base64.b64encode(key.encode()).decode()}")  # fmt: skip
    return (
        "# Made by `pyinfra-swarm vagrant box` from the VM lab's image; its kernel stays in that image's folder.\n"
        'Vagrant.configure("2") do |config|\n'
        "  config.vm.provider :libvirt do |lv|\n"
        f"    lv.kernel = {str(image.kernel)!r}\n"
        f"    lv.initrd = {str(image.initrd)!r}\n"
        f"    lv.cmd_line = {cmd_line!r}\n"
        "  end\n"
        "end\n"
    )


def vagrant_public_key() -> str:
    for pattern in VAGRANT_KEYS:
        for path in sorted(glob.glob(pattern)):
            return Path(path).read_text().strip() + "\n"  # a line of its own: Vagrant appends its key after it
    raise LabError("Vagrant's public key (keys/vagrant.pub of its gem) wasn't found: is Vagrant installed?")


def libvirt_driver(image: VmImage, progress: Progress) -> str:
    """vagrant-libvirt's driver: kvm where a guest starts under KVM, else qemu (software emulation)."""
    return "kvm" if choose_accel("auto", image, progress) == "kvm" else "qemu"
