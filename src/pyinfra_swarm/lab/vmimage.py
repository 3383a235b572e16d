"""The VM lab's disk image: a Debian system made with debootstrap on this host (at native speed, since work
inside an emulated guest is slow), written into a raw ext4 image with `mkfs.ext4 -d` (no loop device), with
its kernel and initrd beside it. Built once per release and recipe, cached, and shared by every VM lab's nodes
through copy-on-write overlays.

The image carries Debian's docker.io already installed (as cloud images with Docker do): installing it inside
a VM under software emulation takes minutes per node, and the container lab proves the deploy's install.
Each VM takes its address, hostname and the lab's SSH key from its kernel command line at boot
(`pyinfra-swarm-lab-node`), makes its own SSH host keys and prints them on its serial console, where `lab up`
reads them for known_hosts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyinfra_swarm.lab.images import debian_mirror
from pyinfra_swarm.lab.spec import LabError

Progress = Callable[[str], None]

PACKAGES = (
    "linux-image-amd64,systemd-sysv,openssh-server,initramfs-tools,iproute2,kmod,udev,dbus,"
    "ca-certificates,curl,procps,sudo"
)
ENGINE_PACKAGES = ("docker.io",)
IMAGE_SIZE = "8G"  # sparse: the file takes what the tree takes, and grows in each node's overlay
HOST_KEY_MARK = "pyinfra-swarm-hostkey:"

BOOT_SCRIPT = f"""#!/bin/sh
# Sets this VM up from its kernel command line. In the VM lab (`pyinfra-swarm lab up --vm`):
# psl.addr=ADDR/PREFIX psl.gw=GATEWAY psl.dns=SERVER psl.host=NAME psl.key=BASE64-OF-AUTHORIZED-KEY.
# As a Vagrant box (`pyinfra-swarm vagrant box`): psl.dns=SERVER psl.vagrant=BASE64-OF-VAGRANT'S-KEY, and
# Vagrant does the rest as with any box (eth0 by DHCP through systemd-networkd, which Vagrant then configures).
set -eu
for word in $(cat /proc/cmdline); do
    case "$word" in
        psl.addr=*) addr="${{word#psl.addr=}}" ;;
        psl.gw=*) gw="${{word#psl.gw=}}" ;;
        psl.dns=*) dns="${{word#psl.dns=}}" ;;
        psl.host=*) host="${{word#psl.host=}}" ;;
        psl.key=*) key="${{word#psl.key=}}" ;;
        psl.vagrant=*) vagrant_key="${{word#psl.vagrant=}}" ;;
    esac
done
ssh-keygen -A >/dev/null
if [ -n "${{vagrant_key:-}}" ]; then
    [ -s /etc/hosts ] || printf '127.0.0.1 localhost\n' > /etc/hosts
    echo "nameserver $dns" > /etc/resolv.conf
    mkdir -p /run/systemd/network
    printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' > /run/systemd/network/10-management.network
    if ! id vagrant >/dev/null 2>&1; then  # first boot: Vagrant replaces this well-known key with its own
        useradd --create-home --shell /bin/bash vagrant
        echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/vagrant
        chmod 440 /etc/sudoers.d/vagrant
        install -d -m 700 -o vagrant -g vagrant /home/vagrant/.ssh
        echo "$vagrant_key" | base64 -d > /home/vagrant/.ssh/authorized_keys
        chown vagrant:vagrant /home/vagrant/.ssh/authorized_keys
        chmod 600 /home/vagrant/.ssh/authorized_keys
    fi
    systemctl --no-block start systemd-networkd.service
    exit 0
fi
hostname "$host"
echo "$host" > /etc/hostname
printf '127.0.0.1 localhost\\n127.0.1.1 %s\\n' "$host" > /etc/hosts
echo "nameserver $dns" > /etc/resolv.conf
ip link set lo up
ip link set eth0 up
ip addr replace "$addr" dev eth0
ip route replace default via "$gw"
mkdir -p -m 700 /root/.ssh
echo "$key" | base64 -d > /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
for pub in /etc/ssh/ssh_host_*_key.pub; do
    echo "{HOST_KEY_MARK} $(cut -d' ' -f1-2 "$pub")" > /dev/ttyS0
done
"""

BOOT_UNIT = """[Unit]
Description=pyinfra-swarm lab: address, hostname and SSH keys from the kernel command line
DefaultDependencies=no
After=local-fs.target
Before=network-pre.target ssh.service docker.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/pyinfra-swarm-lab-node

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class VmImage:
    disk: Path
    kernel: Path
    initrd: Path


def cache_root() -> Path:
    """Where VM images are kept between labs and checkouts: $PYINFRA_SWARM_VM_CACHE, else
    /var/cache/pyinfra-swarm/vm as root, else ~/.cache/pyinfra-swarm/vm."""
    if os.environ.get("PYINFRA_SWARM_VM_CACHE"):
        return Path(os.environ["PYINFRA_SWARM_VM_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/pyinfra-swarm/vm")
    return Path.home() / ".cache" / "pyinfra-swarm" / "vm"


def image_dir(distro: str) -> Path:
    """The image's folder: the release and a hash of its recipe (this module), so a changed recipe means a
    new image."""
    recipe = distro.encode() + Path(__file__).read_bytes()
    return cache_root() / f"debian-{distro}-{hashlib.sha256(recipe).hexdigest()[:12]}"


def ensure_vm_image(distro: str, progress: Progress) -> VmImage:
    folder = image_dir(distro)
    image = VmImage(folder / "disk.raw", folder / "vmlinuz", folder / "initrd.img")
    if all(path.exists() for path in (image.disk, image.kernel, image.initrd)):
        return image
    for tool in ("debootstrap", "mkfs.ext4"):
        if not shutil.which(tool):
            raise LabError(f"{tool} is missing: apt-get install debootstrap e2fsprogs")
    if os.geteuid() != 0:
        raise LabError("building the VM image needs root (debootstrap and chroot): run `lab up --vm` as root once")
    _check_space(folder.parent, 4 << 30)
    folder.parent.mkdir(parents=True, exist_ok=True)
    progress(f"building the VM image for Debian {distro} in {folder} (first run only, about 4 minutes)")
    with tempfile.TemporaryDirectory(prefix="pyinfra-swarm-vm-", dir=folder.parent) as tmp:
        tree = Path(tmp) / "tree"
        _debootstrap(distro, tree, progress)
        _install_engine(tree, progress)
        _configure(tree)
        building = Path(tmp) / "out"
        building.mkdir()
        kernel = max(tree.glob("boot/vmlinuz-*"))
        shutil.copy(kernel, building / "vmlinuz")
        shutil.copy(tree / "boot" / f"initrd.img-{kernel.name.removeprefix('vmlinuz-')}", building / "initrd.img")
        progress("writing the root filesystem image (mkfs.ext4 -d)")
        run_checked(["mkfs.ext4", "-q", "-L", "root", "-d", str(tree), str(building / "disk.raw"), IMAGE_SIZE])
        (building / "disk.raw").chmod(0o444)  # the nodes' overlays are what changes; the base never does
        building.rename(folder)
    return image


def _check_space(where: Path, needed: int) -> None:
    existing = where if where.exists() else next(p for p in where.parents if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise LabError(f"{existing} has {free >> 20} MiB free; the VM image needs about {needed >> 20} MiB")


def _debootstrap(distro: str, tree: Path, progress: Progress) -> None:
    mirror = debian_mirror()
    progress(f"  debootstrap {distro} from {mirror}")
    command = ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", distro, str(tree), mirror]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        raise LabError(f"debootstrap of {distro} from {mirror} failed (exit {result.returncode}):\n{tail}")


def _install_engine(tree: Path, progress: Progress) -> None:
    """docker.io installed in the tree, its services not started here (policy-rc.d), enabled for boot."""
    progress(f"  installing {' '.join(ENGINE_PACKAGES)} in the image")
    policy = tree / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    shutil.copy("/etc/resolv.conf", tree / "etc/resolv.conf")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        for command in (["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *ENGINE_PACKAGES],
                        ["apt-get", "clean"]):  # fmt: skip
            result = subprocess.run(["chroot", str(tree), *command], capture_output=True, text=True, env=env)
            if result.returncode != 0:
                tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
                raise LabError(f"`{' '.join(command)}` in the VM image failed:\n{tail}")
    finally:
        policy.unlink()


def _configure(tree: Path) -> None:
    (tree / "etc/fstab").write_text("LABEL=root / ext4 defaults,errors=remount-ro 0 1\n")
    script = tree / "usr/local/sbin/pyinfra-swarm-lab-node"
    script.write_text(BOOT_SCRIPT)
    script.chmod(0o755)
    (tree / "etc/systemd/system/pyinfra-swarm-lab-node.service").write_text(BOOT_UNIT)
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "pyinfra-swarm-lab-node.service").symlink_to("/etc/systemd/system/pyinfra-swarm-lab-node.service")
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):  # no apt run of its own under the deploy
        (tree / "etc/systemd/system" / timer).symlink_to("/dev/null")
    for key in tree.glob("etc/ssh/ssh_host_*"):  # each VM makes its own at first boot
        key.unlink()
    (tree / "etc/machine-id").write_text("")  # likewise its machine ID (systemd writes one at first boot)...
    dbus_id = tree / "var/lib/dbus/machine-id"  # ...which it would copy from here: dbus's install made one
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    (tree / "etc/resolv.conf").unlink()


def run_checked(command: list[str]) -> str:
    """A host command's output, or a LabError naming the command and what it printed on stderr."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return result.stdout
