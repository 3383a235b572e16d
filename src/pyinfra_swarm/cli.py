"""The `pyinfra-swarm` command: the swarm's status, its cluster lock, the local lab of VM-like nodes, and the
Vagrant lab's boot where no box can be downloaded."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pyinfra_swarm.lab import LabError, LabSpec, state
from pyinfra_swarm.lab.spec import DEFAULT_NAME, DISTROS
from pyinfra_swarm.vagrant import LOCAL_BOXES


def _progress(message: str) -> None:
    print(f"[lab] {message}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyinfra-swarm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="the swarm's health, read only (exit 0 healthy, 1 problems, 2 none "
                                 "of the managers answered)")  # fmt: skip
    status.add_argument("inventory", help="a pyinfra inventory, e.g. inventory/lab.py")
    status.add_argument("--json", action="store_true", help="print the report as JSON (schema: pyinfra-swarm.status/3)")
    status.add_argument("--watch", action="store_true", help="refresh every 2 s until interrupted")
    lock = commands.add_parser("lock", help="who holds the cluster lock (exit 0 free, 1 held, 2 none of the managers "
                               "answered), or break it")  # fmt: skip
    lock.add_argument("inventory", help="a pyinfra inventory, e.g. inventory/lab.py")
    lock.add_argument("--break", dest="breaking", action="store_true",
                      help="remove the lock whoever holds it (a killed run's: make sure it is gone first)")  # fmt: skip
    lab_parser = commands.add_parser("lab", help="the local lab: VM-like nodes as containers on one Docker host")
    actions = lab_parser.add_subparsers(dest="action", required=True)

    def with_name(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--name",
            default=os.environ.get("PYINFRA_SWARM_LAB", DEFAULT_NAME),
            help="lab name (default: $PYINFRA_SWARM_LAB or %(default)s)",
        )
        return sub

    up = with_name(actions.add_parser("up", help="create or repair the lab (idempotent)"))
    up.add_argument("--managers", type=int, default=1, help="manager nodes (default: %(default)s)")
    up.add_argument("--workers", type=int, default=3, help="worker nodes (default: %(default)s)")
    up.add_argument("--subnet", help="IPv4 subnet of the lab network (default: a free /24 in 192.168.56.0/21)")
    up.add_argument("--distro", choices=DISTROS, default="bookworm", help="the nodes' Debian release: bookworm (12, "
                    "docker.io 20.10), trixie (13, docker.io 26.1) or forky (14, testing: docker.io 28.5; container "
                    "nodes only) (default: %(default)s)")  # fmt: skip
    up.add_argument("--worker-distro", choices=DISTROS, help="the workers' release, for a mixed cluster "
                    "(default: --distro)")  # fmt: skip
    up.add_argument(
        "--privileged",
        choices=["auto", "always", "never"],
        default="auto",
        help="run nodes with --privileged (auto: where the engine allows it)",
    )
    up.add_argument("--vm", action="store_true", help="real virtual machines under QEMU instead of containers "
                    "(their own kernels: IPVS, ESP, reboots; needs root, qemu-system-x86 and qemu-utils)")  # fmt: skip
    up.add_argument("--vm-memory", type=int, default=1536, help="memory per VM in MiB (default: %(default)s)")
    up.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto",
                    help="VM acceleration (auto: KVM where guests run under it, else emulation)")  # fmt: skip
    down = with_name(actions.add_parser("down", help="remove the lab's containers or VMs, volumes and network"))
    down.add_argument("--all", action="store_true", help="remove every pyinfra-swarm lab on this engine")
    with_name(actions.add_parser("status", help="list the lab's nodes"))
    summary = with_name(actions.add_parser("summary", help="where to look at the demo running on the lab"))
    summary.add_argument("--port", type=int, default=8080, help="the demo's published port (default: %(default)s)")
    ssh = with_name(actions.add_parser("ssh", help="open an SSH session (or run a command) on a node"))
    ssh.add_argument("--user", default="root", help="SSH user: root or debian (default: %(default)s)")
    ssh.add_argument("node", help="node name, e.g. manager1")
    ssh.add_argument("command", nargs=argparse.REMAINDER, help="command to run instead of a shell")
    vagrant = commands.add_parser("vagrant", help="the Vagrant lab: its local box, and `vagrant up` with it")
    vagrant_actions = vagrant.add_subparsers(dest="action", required=True)
    settings = os.environ.get("PYINFRA_SWARM_VAGRANT_SETTINGS", "vagrant/settings.yml")
    vagrant_up = vagrant_actions.add_parser("up", help="boot the Vagrant lab of a settings file (a local box made "
                                            "first, libvirtd started where nothing starts it)")  # fmt: skip
    vagrant_down = vagrant_actions.add_parser("down", help="destroy the Vagrant lab's VMs (`vagrant destroy`)")
    for sub in (vagrant_up, vagrant_down):
        sub.add_argument("--settings", default=settings, help="settings file (default: "
                         "$PYINFRA_SWARM_VAGRANT_SETTINGS or %(default)s)")  # fmt: skip
        sub.add_argument("--dir", default="vagrant", help="the Vagrantfile's folder (default: %(default)s)")
    box = vagrant_actions.add_parser("box", help="make a local libvirt box from the VM lab's image (offline)")
    box.add_argument("--box", choices=sorted(LOCAL_BOXES), default="debian12-local", help="(default: %(default)s)")
    box.add_argument("--rebuild", action="store_true", help="make it again even if Vagrant has it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("status", "lock"):
        from gevent import monkey

        monkey.patch_all()  # before pyinfra connects anywhere, as pyinfra's own command does
    if args.command == "status":
        from pyinfra_swarm import status

        return status.main(args.inventory, args.json, args.watch)
    if args.command == "lock":
        from pyinfra_swarm import status

        return status.lock_main(args.inventory, args.breaking)
    try:
        from docker.errors import APIError
    except ImportError:
        print("pyinfra-swarm: error: the lab needs Docker's SDK: pip install 'pyinfra-swarm[lab]'", file=sys.stderr)
        return 2
    try:
        if args.command == "vagrant":
            return {"up": _vagrant_up, "down": _vagrant_down, "box": _vagrant_box}[args.action](args)
        actions = {"up": _up, "down": _down, "status": _status, "ssh": _ssh, "summary": _summary}
        return actions[args.action](args)
    except LabError as exc:
        print(f"pyinfra-swarm: error: {exc}", file=sys.stderr)
        return 2
    except APIError as exc:
        print(f"pyinfra-swarm: error: the Docker engine refused: {exc.explanation or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _up(args: argparse.Namespace) -> int:
    from pyinfra_swarm.lab import lab

    spec = LabSpec(name=args.name, managers=args.managers, workers=args.workers, subnet=args.subnet,
                   distro=args.distro, worker_distro=args.worker_distro)  # fmt: skip
    started = time.monotonic()
    if args.vm:
        from pyinfra_swarm.lab import vm

        vm.up(spec, _progress, memory=args.vm_memory, accel=args.accel)
        _export_base_image()
    else:
        lab.up(spec, _progress, privileged=args.privileged)
    _progress(f"lab '{spec.name}' is up ({time.monotonic() - started:.1f} s)")
    return _status(args)


def _export_base_image() -> None:
    """The archive of debian:bookworm that the demo's group data uploads to managers, from this host's engine."""
    from pyinfra_swarm.lab import lab
    from pyinfra_swarm.lab.images import export_base_image
    from pyinfra_swarm.lab.spec import state_root

    try:
        export_base_image(lab.connect(), state_root() / "images", _progress)
    except LabError as exc:
        _progress(f"warning: the demo's base image archive can't be made here ({exc})")


def _vagrant(args: argparse.Namespace) -> tuple[dict, str, dict[str, str]]:
    """The settings, the provider and the environment for `vagrant` (libvirtd answering, where it's used)."""
    from pyinfra_swarm.lab import vagrantbox
    from pyinfra_swarm.vagrant import SettingsError, load_settings

    path = Path(args.settings).resolve()
    try:
        settings = load_settings(path)
    except SettingsError as exc:
        raise LabError(str(exc)) from None
    provider = os.environ.get("VAGRANT_DEFAULT_PROVIDER", settings.get("provider", "virtualbox"))
    if provider == "libvirt":
        vagrantbox.ensure_libvirtd(_progress)
    return settings, provider, {**os.environ, "PYINFRA_SWARM_VAGRANT_SETTINGS": str(path)}


def _vagrant_up(args: argparse.Namespace) -> int:
    from pyinfra_swarm.lab import vagrantbox

    settings, provider, env = _vagrant(args)
    if settings.get("box") in LOCAL_BOXES:
        image = vagrantbox.ensure_box(settings["box"], _progress)
        env["PYINFRA_SWARM_LIBVIRT_DRIVER"] = vagrantbox.libvirt_driver(image, _progress)
        _export_base_image()  # offline: the demo's base image comes from this host, as on the local lab
    started = time.monotonic()
    returncode = subprocess.run(["vagrant", "up", "--provider", provider], cwd=args.dir, env=env).returncode
    if returncode == 0:
        _progress(f"the Vagrant lab is up ({time.monotonic() - started:.1f} s)")
    return returncode


def _vagrant_down(args: argparse.Namespace) -> int:
    _, _, env = _vagrant(args)
    return subprocess.run(["vagrant", "destroy", "--force"], cwd=args.dir, env=env).returncode


def _vagrant_box(args: argparse.Namespace) -> int:
    from pyinfra_swarm.lab import vagrantbox

    vagrantbox.ensure_box(args.box, _progress, rebuild=args.rebuild)
    _progress(f"Vagrant has the box {LOCAL_BOXES[args.box][0]} (settings.yml: box: {args.box}, provider: libvirt)")
    return 0


def _down(args: argparse.Namespace) -> int:
    from pyinfra_swarm.lab import lab

    removed = lab.down(None if args.all else LabSpec(name=args.name, workers=0).name, _progress)
    _progress(f"removed {removed} lab resources" if removed else "nothing to remove")
    return 0


def _status(args: argparse.Namespace) -> int:
    from pyinfra_swarm.lab import lab

    LabSpec(name=args.name, workers=0)  # validates the name
    rows = lab.status(args.name)
    if not rows:
        print(f"lab {args.name} has no nodes (run `pyinfra-swarm lab up --name {args.name}`)")
        return 0
    columns = ["node", "address", "group", "state", "systemd"]
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
    return 0


def _summary(args: argparse.Namespace) -> int:
    lab_state = state.load(LabSpec(name=args.name, workers=0).state_dir)
    workers = [node for node in lab_state.nodes if node.role == "worker"]
    manager = next(node.node for node in lab_state.nodes if node.role == "manager")
    ssh = f"{_this_command()} lab ssh --name {args.name} {manager}"
    print(f"The demo runs on lab '{args.name}'. Where to look:")
    for worker in workers[:3]:
        print(
            f"  curl http://{worker.address}:{args.port}/          # the web service on {worker.node} (host-mode port)"
        )
    print(f"  {ssh} docker service logs demo_client --tail 5   # the client reaching replicas across nodes")
    print(f"  {ssh} docker stack ps demo                        # where each task runs")
    print(f"  {ssh} docker node ls                              # the swarm")
    return 0


def _this_command() -> str:
    """How to type this command in a new shell: its name when it is on PATH, else its path (the venv's)."""
    if shutil.which("pyinfra-swarm"):
        return "pyinfra-swarm"
    return os.path.relpath(sys.argv[0]) if not os.path.relpath(sys.argv[0]).startswith("..") else sys.argv[0]


def _ssh(args: argparse.Namespace) -> int:
    spec = LabSpec(name=args.name, workers=0)
    lab_state = state.load(spec.state_dir)
    nodes = {node.node: node for node in lab_state.nodes}
    if args.node not in nodes:
        raise LabError(f"lab {args.name} has no node {args.node!r} (nodes: {', '.join(nodes)})")
    command = state.ssh_command(spec.state_dir, args.user, nodes[args.node].address)
    os.execvp(command[0], command + args.command)


if __name__ == "__main__":
    sys.exit(main())
