"""The VM lab: the lab's nodes as real virtual machines under QEMU, each with its own kernel (IPVS, ESP, real
reboots), on a bridge of their own on this host.

KVM is used where guests run under it; elsewhere (nested virtualization that hangs, no /dev/kvm) QEMU's
software emulation (TCG), which is slow but real. Every VM boots the cached image of `vmimage` through its own
copy-on-write overlay, on a tap device of the lab's bridge (`psb…`), whose first address is this host: the host
reaches the nodes directly, as with the container lab, and is not one of their peers. Outbound traffic is
masqueraded so that the nodes reach Debian's mirror. Every host change (bridge, taps, iptables rules, QEMU
processes) is recorded in the lab's state folder, and `lab down` removes exactly that.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pyinfra_swarm.lab import state
from pyinfra_swarm.lab.spec import AUTO_SUBNETS, VM_DISTROS, LabError, LabSpec, host_addresses
from pyinfra_swarm.lab.vmimage import HOST_KEY_MARK, VmImage, ensure_vm_image, run_checked

Progress = Callable[[str], None]
BOOT_TIMEOUT = 420.0  # a TCG guest on a busy 2-core host answers SSH after 1-2 minutes
MEMORY_MIB = 1536
SPARE_MIB = 1024  # left to this host when checking memory


def _ids(name: str) -> tuple[str, str]:
    """The lab's bridge name and tap prefix: short (Linux names are 15 characters at most) and its own."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"psb{digest}", f"pst{digest}"


def up(spec: LabSpec, progress: Progress, memory: int = MEMORY_MIB, accel: str = "auto") -> state.LabState:
    """Boot the lab's VMs (the ones not running already), in parallel, and wait until each answers SSH."""
    unsupported = sorted({n.distro for n in spec.nodes} - set(VM_DISTROS))
    if unsupported:
        raise LabError(f"the VM lab has images of {', '.join(VM_DISTROS)} only, not {', '.join(unsupported)}: "
                       "use the container lab (without --vm) for those")  # fmt: skip
    for tool in ("qemu-system-x86_64", "qemu-img", "ip", "iptables"):
        if not shutil.which(tool):
            raise LabError(f"{tool} is missing: apt-get install qemu-system-x86 qemu-utils iproute2 iptables")
    if os.geteuid() != 0:
        raise LabError("the VM lab makes a bridge and tap devices on this host: run it as root")
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    record = _load(spec.state_dir)
    bridge, tap_prefix = _ids(spec.name)
    if "bridge" not in record:
        _remove_leftovers(spec.name, bridge, progress)
    images = {distro: ensure_vm_image(distro, progress) for distro in sorted({n.distro for n in spec.nodes})}
    subnet = record.get("subnet") or spec.subnet or _free_subnet()
    gateway = str(next(ipaddress.ip_network(subnet).hosts()))
    record.update(subnet=subnet, bridge=bridge, nodes=record.get("nodes", {}), rules=record.get("rules", []))
    _save(spec.state_dir, record)
    record["rules"] = _ensure_bridge(bridge, subnet, gateway, progress)
    _save(spec.state_dir, record)
    state.key_pair(spec.state_dir)
    addresses = dict(zip([n.name for n in spec.nodes], host_addresses(subnet), strict=False))
    starting = [n for n in spec.nodes if not _running(record["nodes"].get(n.name))]
    if starting:
        accel = choose_accel(accel, images[spec.distro], progress)
    for gone in sorted(set(record["nodes"]) - {n.name for n in spec.nodes}):
        progress(f"removing {gone}: not in the requested shape")
        _stop_node(record["nodes"].pop(gone))
    _check_memory(len(starting), memory)
    for index, node in enumerate(spec.nodes):
        if node not in starting:
            continue
        tap = f"{tap_prefix}{index:02d}"
        progress(f"booting {node.name} ({addresses[node.name]}, {accel}, {memory} MiB)")
        record["nodes"][node.name] = _boot(spec, node.name, node.hostname, images[node.distro], tap, bridge,
                                           addresses[node.name], subnet, gateway, memory, accel)  # fmt: skip
        _save(spec.state_dir, record)
    host_keys = _wait_ready(spec, {n.name: addresses[n.name] for n in spec.nodes}, progress)
    state.save_known_hosts(spec.state_dir, {addresses[name]: keys for name, keys in host_keys.items()})
    lab_state = state.LabState(
        name=spec.name,
        subnet=subnet,
        network=bridge,
        ssh_key=str(state.key_path(spec.state_dir)),
        nodes=[state.NodeState(n.name, n.hostname, f"vm:{n.name}", n.role, addresses[n.name]) for n in spec.nodes],
    )
    state.save(spec.state_dir, lab_state)
    return lab_state


def down(state_dir: Path, progress: Progress) -> int:
    """Stop the lab's VMs and remove its taps, bridge and rules. Returns how many things were removed."""
    record = _load(state_dir)
    removed = 0
    for name, node in record.get("nodes", {}).items():
        progress(f"stopping VM {name}")
        _stop_node(node)
        removed += 1
    if record.get("bridge"):
        _remove_rules(record.get("rules", []), progress)
        if _link_exists(record["bridge"]):
            progress(f"removing bridge {record['bridge']}")
            _ip("link", "delete", record["bridge"])
            removed += 1
    return removed


def status(state_dir: Path) -> list[dict[str, str]]:
    lab = state.load(state_dir)
    nodes = _load(state_dir).get("nodes", {})
    return [
        {
            "node": node.node,
            "address": node.address,
            "group": f"swarm_{node.role}s",
            "state": "running" if _running(nodes.get(node.node)) else "stopped",
            "systemd": "-",
        }
        for node in lab.nodes
    ]


def _load(state_dir: Path) -> dict:
    path = state_dir / state.VM_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _save(state_dir: Path, record: dict) -> None:
    (state_dir / state.VM_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _remove_leftovers(lab: str, bridge: str, progress: Progress) -> None:
    """What a VM lab of this name left when its state folder went (an interrupted run, a deleted checkout):
    its QEMU processes whose folder is gone, then its taps, bridge and the rules naming that bridge. A lab of
    this name that still has its folder elsewhere is another checkout's: refused."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"qemu-system" not in words[0]
            or b"-name" not in words
            or not re.fullmatch(
                rf"pyinfra-swarm-{re.escape(lab)}-(manager|worker)\d+", words[words.index(b"-name") + 1].decode()
            )
        ):
            continue
        pidfile = Path(words[words.index(b"-pidfile") + 1].decode())
        if pidfile.parent.exists():
            raise LabError(f"VM lab {lab} runs from {pidfile.parent.parent.parent} already: take it down there, or "
                           "use another --name")  # fmt: skip
        progress(f"stopping a leftover VM of lab {lab} (pid {cmdline.parent.name}; its state is gone)")
        with contextlib.suppress(OSError):
            os.kill(int(cmdline.parent.name), signal.SIGKILL)
    time.sleep(0.5)
    for link in sorted(Path("/sys/class/net").glob(f"{bridge.replace('psb', 'pst')}*")):
        _ip("link", "delete", link.name)
    for table in ("filter", "nat"):
        listing = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            if line.startswith("-A ") and f" {bridge} " in f"{line} ":
                progress(f"removing a leftover iptables rule: {line}")
                run_checked(["iptables", "-t", table, "-D", *shlex.split(line)[1:]])
    if _link_exists(bridge):
        progress(f"removing a leftover bridge {bridge}")
        _ip("link", "delete", bridge)


def _free_subnet() -> str:
    used = [ipaddress.ip_network(line.split()[0]) for line in _ip("-4", "route", "show").splitlines()
            if line and line.split()[0] != "default"]  # fmt: skip
    for candidate in reversed(AUTO_SUBNETS):  # from the top: container labs take theirs from the bottom
        network = ipaddress.ip_network(candidate)
        if not any(network.overlaps(other) for other in used):
            return candidate
    raise LabError(f"no free lab subnet among {AUTO_SUBNETS[0]}..{AUTO_SUBNETS[-1]}: pass --subnet")


def _ensure_bridge(bridge: str, subnet: str, gateway: str, progress: Progress) -> list[list[str]]:
    """The lab's bridge with this host's address on it, forwarding and NAT for it; returns the iptables rules
    (table, chain, then the rule) so that `down` removes exactly those."""
    prefix = ipaddress.ip_network(subnet).prefixlen
    if not _link_exists(bridge):
        progress(f"creating bridge {bridge} ({subnet}, this host {gateway})")
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{gateway}/{prefix}", "dev", bridge)
    _ip("link", "set", bridge, "up")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    rules = [
        ["filter", "FORWARD", "-i", bridge, "-j", "ACCEPT"],  # Docker's FORWARD policy on this host is DROP
        ["filter", "FORWARD", "-o", bridge, "-j", "ACCEPT"],
        ["nat", "POSTROUTING", "-s", subnet, "!", "-o", bridge, "-j", "MASQUERADE"],
    ]
    for table, chain, *rule in rules:
        if subprocess.run(["iptables", "-t", table, "-C", chain, *rule], capture_output=True).returncode != 0:
            run_checked(["iptables", "-t", table, "-I", chain, "1", *rule])
    return rules


def _remove_rules(rules: list[list[str]], progress: Progress) -> None:
    for table, chain, *rule in rules:
        while subprocess.run(["iptables", "-t", table, "-C", chain, *rule], capture_output=True).returncode == 0:
            progress(f"removing iptables rule: -t {table} {chain} {' '.join(rule)}")
            run_checked(["iptables", "-t", table, "-D", chain, *rule])


def choose_accel(wanted: str, image: VmImage, progress: Progress) -> str:
    """kvm where a guest kernel starts under it within a few seconds, else tcg."""
    if wanted != "auto":
        return wanted
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    with tempfile.TemporaryDirectory(prefix="pyinfra-swarm-kvm-") as tmp:
        console = Path(tmp) / "console"
        probe = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-display", "none", "-serial", f"file:{console}",
             "-no-reboot", "-kernel", str(image.kernel), "-append", "console=ttyS0 panic=-1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline, seen = time.monotonic() + 15, ""
        try:
            while time.monotonic() < deadline and probe.poll() is None and "Linux version" not in seen:
                time.sleep(0.5)
                seen = console.read_text(errors="replace") if console.exists() else ""
        finally:
            probe.kill()
            probe.wait()
    if "Linux version" in seen:
        return "kvm"
    progress("KVM is here but a guest doesn't start under it (nested virtualization): software emulation (TCG)")
    return "tcg"


def _check_memory(count: int, memory: int) -> None:
    if not count:
        return
    available = next(
        int(line.split()[1]) // 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable:")
    )
    needed = count * memory + SPARE_MIB
    if available < needed:
        raise LabError(
            f"{count} VMs of {memory} MiB need {needed} MiB with room for this host; {available} MiB are "
            "available: boot fewer nodes or pass a smaller --vm-memory"
        )


def _boot(spec: LabSpec, name: str, hostname: str, image: VmImage, tap: str, bridge: str, address: str,
          subnet: str, gateway: str, memory: int, accel: str) -> dict:  # fmt: skip
    folder = spec.state_dir / "vm" / name
    folder.mkdir(parents=True, exist_ok=True)
    disk = folder / "disk.qcow2"
    if not disk.exists():
        run_checked(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.disk), str(disk)])
    if not _link_exists(tap):
        _ip("tuntap", "add", "dev", tap, "mode", "tap")
    _ip("link", "set", tap, "master", bridge)
    _ip("link", "set", tap, "up")
    prefix = ipaddress.ip_network(subnet).prefixlen
    key = base64.b64encode(state.key_path(spec.state_dir).with_suffix(".pub").read_bytes().strip()).decode()
    kernel_args = (
        f"root=LABEL=root rw console=ttyS0 net.ifnames=0 psl.addr={address}/{prefix} psl.gw={gateway} "
        f"psl.dns={_nameserver(gateway)} psl.host={hostname} psl.key={key}"
    )
    mac = "52:54:00:" + ":".join(f"{int(part):02x}" for part in address.split(".")[1:])
    console = folder / "console.log"
    console.unlink(missing_ok=True)
    pidfile = folder / "qemu.pid"
    run_checked([
        "qemu-system-x86_64", "-name", f"pyinfra-swarm-{spec.name}-{name}", "-accel", accel,
        "-m", str(memory), "-smp", "1", "-display", "none", "-daemonize", "-pidfile", str(pidfile),
        "-serial", f"file:{console}", "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", kernel_args, "-drive", f"file={disk},if=virtio,format=qcow2",
        "-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=net0,mac={mac}",
    ])  # fmt: skip
    return {"pid": int(pidfile.read_text()), "tap": tap, "folder": str(folder)}


def _nameserver(gateway: str) -> str:
    """This host's resolver when the VMs can reach it through the host; else the host itself."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "nameserver" and not ipaddress.ip_address(parts[1]).is_loopback:
                return parts[1]
    return gateway


def _running(node: dict | None) -> bool:
    if not node:
        return False
    try:
        cmdline = Path(f"/proc/{node['pid']}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline and node["folder"].encode() in cmdline


def _stop_node(node: dict) -> None:
    if _running(node):
        os.kill(node["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _running(node) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _running(node):
            os.kill(node["pid"], signal.SIGKILL)
    if _link_exists(node["tap"]):
        _ip("link", "delete", node["tap"])
    shutil.rmtree(node["folder"], ignore_errors=True)


def _wait_ready(spec: LabSpec, addresses: dict[str, str], progress: Progress) -> dict[str, list[str]]:
    """Wait until every VM printed its host keys and its sshd answers; report each as it comes up."""
    started = time.monotonic()
    keys: dict[str, list[str]] = {}
    record = _load(spec.state_dir)
    while len(keys) < len(addresses):
        for name, address in addresses.items():
            if name in keys:
                continue
            node = record["nodes"][name]
            if not _running(node):
                console = Path(node["folder"]) / "console.log"
                tail = console.read_text(errors="replace").strip().splitlines()[-5:] if console.exists() else []
                raise LabError(f"the VM of {name} stopped while booting; its console's last lines: {tail}")
            found = _host_keys(Path(node["folder"]) / "console.log")
            if found and state.port_open(address, 22):
                keys[name] = found
                progress(f"{name} answers SSH ({time.monotonic() - started:.0f} s)")
        if len(keys) < len(addresses):
            if time.monotonic() - started > BOOT_TIMEOUT:
                late = ", ".join(sorted(set(addresses) - set(keys)))
                raise LabError(f"VMs not answering SSH after {BOOT_TIMEOUT:.0f} s: {late} (see vm/*/console.log "
                               f"in {spec.state_dir})")  # fmt: skip
            time.sleep(1)
    return keys


def _host_keys(console: Path) -> list[str]:
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return []
    return [line.split(HOST_KEY_MARK, 1)[1].strip() for line in text.splitlines() if HOST_KEY_MARK in line]


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _ip(*args: str) -> str:
    return run_checked(["ip", *args])
