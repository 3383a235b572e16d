"""On real kernels: the lab's nodes as QEMU virtual machines (`lab up --vm`; software emulation on this
project's CI machines, whose nested KVM hangs), each with its own Debian kernel. What the container lab can't
show, because its nodes share a kernel without IPVS or ESP: the demo with a real cluster's defaults (VIP
endpoint, port published through the ingress routing mesh), reached through every node, and the firewall on
the ingress path."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import Lab
from tests.e2e.test_swarm import can_connect, nodes

PRIVATE = """version: "3.8"
services:
  app:
    image: "{{ registry }}/demo-app:1"
    hostname: "{{ '{{.Node.Hostname}}' }}"
    environment:
      GREETING: private
    ports:
      - target: 8080
        published: 9090
    deploy:
      replicas: 1
      placement:
        constraints: ["node.role == worker"]
"""


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo's stack templates and the tests' own."""
    folder = tmp_path_factory.mktemp("vm") / "stacks"
    shutil.copytree(ROOT / "templates" / "stacks", folder)
    (folder / "private.yml.j2").write_text(PRIVATE)
    (folder / "secure.yml.j2").write_text(SECURE)
    return folder


def real_cluster_data(templates: Path) -> dict:
    """The repo's demo with the repo's group data, which gives a VM lab a real cluster's networking (the
    DNS-round-robin and host-mode overrides are the container lab's group's only); one web replica, so that two
    of the three nodes run none; and a service published on a port non-peers may not reach."""
    demo_vars = {"demo_version": "1", "greeting": "hello", "web_replicas": 1, "web_port": 8080}
    return {"all": {
        "swarm_stacks_dir": str(templates),
        "swarm_stacks": [
            {"name": "demo", "template": "demo.yml.j2", "timeout": 300, "vars": demo_vars},
            {"name": "private", "template": "private.yml.j2", "timeout": 300},
        ],
        "swarm_firewall_allow": ["22/tcp", "8080/tcp"],
    }}  # fmt: skip


def get(address: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{address}:{port}/", timeout=10) as response:
        return response.read().decode().strip()


def wait_for(what: str, check, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(3)


def host_changes() -> dict[str, object]:
    """What `lab down` must leave as it found it: links, iptables rules, QEMU processes."""
    listing = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout.splitlines()
    links = [line.split(":")[1].strip() for line in listing]
    rules = [
        line
        for table in ("filter", "nat")
        for line in subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout.split("\n")
        if " psb" in line
    ]
    return {
        "links": sorted(link for link in links if link.startswith(("psb", "pst"))),
        "rules": rules,
        "qemu": subprocess.run(["pgrep", "-f", "pyinfra-swarm-e2e-vm"], capture_output=True, text=True).stdout,
    }


@pytest.fixture(scope="module")
def vm_lab(lab_dir: Path):
    lab = Lab("e2e-vm", lab_dir)
    lab.down()
    before = host_changes()
    started = time.monotonic()
    lab.up("--vm", "--managers", "1", "--workers", "2")
    print(f"\n[figures] 3 VMs booted (lab up --vm) in {time.monotonic() - started:.0f} s")
    yield lab
    result = lab.down()
    assert result.returncode == 0, result.stderr
    assert host_changes() == before  # no tap, bridge, rule or QEMU process of the lab left
    assert not lab.state_dir.exists()


def test_the_demo_with_a_real_clusters_networking(vm_lab: Lab, templates: Path):
    lab = vm_lab
    assert "Linux" in lab.sh("worker1", "uname -s")
    assert lab.sh("worker1", "uname -r").strip() != subprocess.run(["uname", "-r"], capture_output=True,
                                                                   text=True).stdout.strip()  # fmt: skip
    data = real_cluster_data(templates)

    started = time.monotonic()
    cold = lab.deploy(group_data=data)
    print(f"\n[figures] cold deploy of 1+2 VMs with the demo: {time.monotonic() - started:.0f} s")
    assert cold.returncode == 0, cold
    assert "kernel of every host has: VXLAN, IPVS, ESP, GCM, bridge netfilter" in cold.output, cold
    assert "no IPVS" not in cold.output and "no ESP" not in cold.output
    assert {n["state"] for n in nodes(lab).values()} == {"ready"}

    # The web service has a virtual IP, and its one replica runs on one worker.
    vips = json.loads(lab.sh("manager1", "docker service inspect demo_web --format '{{json .Endpoint.VirtualIPs}}'"))
    assert vips and all(vip["Addr"] for vip in vips), vips
    [replica_node] = lab.sh("manager1", "docker service ps demo_web --filter desired-state=running "
                                        "--format '{{.Node}}'").split()  # fmt: skip
    # The routing mesh: every node's published port answers, also the two that run no replica.
    for node in lab.nodes:
        answer = wait_for(f"{node['node']}:8080 answers", lambda n=node: get(n["address"], 8080))
        assert answer == f"hello from {replica_node}", (node["node"], answer)
    # Services reach each other by name through the VIP: the client (on the manager) gets the web's answers.
    logs = wait_for("the client's answers", lambda: "hello from" in (
        out := lab.sh("manager1", "docker service logs --raw --tail 5 demo_client")) and out)  # fmt: skip
    assert f"hello from {replica_node}" in logs

    # The firewall on the ingress path: this machine (no peer) is refused on 9090 (not in swarm_firewall_allow)
    # at every node, while a peer gets the service through the mesh from a node that doesn't run it.
    private_node = lab.sh("manager1", "docker service ps private_app --filter desired-state=running "
                                      "--format '{{.Node}}'").strip()  # fmt: skip
    for node in lab.nodes:
        assert not can_connect(node["address"], 9090), node["node"]
    other = next(n for n in lab.nodes if n["node"] != "manager1" and not private_node.endswith(n["node"]))
    url = f"http://{other['address']}:9090/"
    answer = wait_for("a peer reaches 9090", lambda: lab.sh("manager1", f"curl -fsS --max-time 5 {url}"))
    assert answer.strip() == f"private from {private_node}"

    started = time.monotonic()
    again = lab.deploy(group_data=data)
    print(f"\n[figures] no-op re-run on 1+2 VMs: {time.monotonic() - started:.0f} s")
    assert again.returncode == 0 and again.changed == [], again


SECURE = """version: "3.8"
services:
  app:
    image: "{{ registry }}/demo-app:1"
    hostname: "{{ '{{.Node.Hostname}}' }}"
    environment:
      GREETING: whispered
    networks: [secure]
    deploy:
      placement:
        constraints: ["node.role == worker"]
  probe:
    image: "{{ registry }}/demo-app:1"
    command: ["/bin/sh", "/app/client.sh"]
    environment:
      TARGET: "http://app:8080/"
    networks: [secure]
    deploy:
      placement:
        constraints: ["node.role == manager"]
networks:
  secure:
    external: true
"""


def capture(interface: str, seconds: float) -> list[bytes]:
    """The IPv4 packets through `interface` of this host for `seconds` (a raw socket: no tcpdump needed)."""
    # Every protocol (ETH_P_ALL): a tap that is a bridge port hands its frames to the bridge before
    # protocol-specific sockets would see them.
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003)) as sock:
        sock.bind((interface, 0))
        sock.settimeout(0.5)
        packets, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                frame = sock.recv(65535)
                if frame[12:14] == b"\x08\x00":  # IPv4
                    packets.append(frame[14:])
    return packets


def protocol(packet: bytes) -> str:
    if packet[9] == 50:
        return "esp"
    header = (packet[0] & 0x0F) * 4
    if packet[9] == 17 and int.from_bytes(packet[header + 2 : header + 4], "big") == 4789:
        return "vxlan"
    return "other"


def encrypted_data(templates: Path) -> dict:
    """The same, with ESP open between peers and an encrypted overlay that a stack of its own uses."""
    data = real_cluster_data(templates)
    data["all"]["swarm_encrypted_overlays"] = True
    data["all"]["swarm_networks"] = {"secure": {"encrypted": True}}
    data["all"]["swarm_stacks"].append({"name": "secure", "template": "secure.yml.j2", "timeout": 300})
    return data


def test_an_encrypted_overlay_carries_its_traffic_in_esp_only(vm_lab: Lab, templates: Path):
    lab = vm_lab
    data = encrypted_data(templates)
    run = lab.deploy(group_data=data)
    assert run.returncode == 0, run
    options = lab.sh("manager1", "docker network inspect secure --format '{{json .Options}}'")
    assert json.loads(options).get("encrypted") == "", options
    [app_node] = lab.sh("manager1", "docker service ps secure_app --filter desired-state=running "
                                    "--format '{{.Node}}'").split()  # fmt: skip
    # The probe on the manager asks the app on a worker by name, through the encrypted overlay.
    wait_for("the probe's answers", lambda: f"whispered from {app_node}" in lab.sh(
        "manager1", "docker service logs --raw --tail 3 secure_probe"))  # fmt: skip

    tap = json.loads((lab.state_dir / "vm.json").read_text())["nodes"]["manager1"]["tap"]
    packets = capture(tap, 8)
    kinds = [protocol(packet) for packet in packets]
    assert kinds.count("esp") >= 5, kinds  # about one request a second, each way
    assert not any(b"whispered" in packet for packet in packets)  # the answers are nowhere in clear
    assert lab.deploy(group_data=data).changed == []


def converged(lab: Lab) -> bool:
    replicas = lab.sh("manager1", "docker service ls --format '{{.Replicas}}'").split("\n")
    counts = [line.split()[0].split("/") for line in replicas if line.strip()]
    return bool(counts) and all(running == wanted != "0" for running, wanted in counts)


def booted(lab: Lab, node: str) -> str | None:
    result = lab.ssh(node, "cat /proc/sys/kernel/random/boot_id")
    return result.stdout.strip() if result.returncode == 0 else None


def test_real_reboots_of_a_worker_through_patch_py_and_of_the_manager(vm_lab: Lab, templates: Path):
    """worker2 rebooted by `patch.py` (`patch_reboot: always`, `--limit worker2`): drained, rebooted for real (a
    new boot ID), its firewall in force before Docker started, back in the swarm; then the manager rebooted by
    hand: the firewall in force before Docker there too, and the swarm back."""
    lab = vm_lab
    before = {node: booted(lab, node) for node in ("worker1", "worker2", "manager1")}
    data = encrypted_data(templates)
    data["all"]["patch_reboot"] = "always"
    started = time.monotonic()
    patched = lab.deploy("--limit", "worker2", group_data=data, file="patch.py")
    assert patched.returncode == 0, patched
    [summary] = [line.strip() for line in patched.output.splitlines() if line.strip().startswith("worker2: ")
                 and "out of service" in line]  # fmt: skip
    print(f"\n[figures] patch.py rebooted worker2 in {time.monotonic() - started:.0f} s: {summary}")
    assert "rebooted (patch_reboot: always)" in summary, summary
    assert booted(lab, "worker1") == before["worker1"]  # outside the limit
    lab.ssh("manager1", "systemctl reboot")
    started = time.monotonic()
    wait_for("manager1 to boot again", lambda: booted(lab, "manager1") not in (None, before["manager1"]), timeout=300)
    print(f"[figures] manager1 rebooted by hand and answered SSH in {time.monotonic() - started:.0f} s")
    for node in ("worker2", "manager1"):
        assert booted(lab, node) not in (None, before[node]), node
        # The firewall's rules were in force before Docker started (patch.py checked it too on worker2).
        firewall, docker = (
            int(lab.sh(node, f"systemctl show -P {prop} {unit}"))
            for prop, unit in (("ActiveEnterTimestampMonotonic", "pyinfra-swarm-firewall"),
                               ("ExecMainStartTimestampMonotonic", "docker"))
        )  # fmt: skip
        assert 0 < firewall < docker, (firewall, docker)
        assert "-j REJECT" in lab.sh(node, "iptables -S PYINFRA-SWARM")
    wait_for("every node Ready and active", lambda: {(n["state"], n["availability"]) for n in nodes(lab).values()}
             == {("ready", "active")}, timeout=300)  # fmt: skip
    for node in lab.nodes:
        wait_for(f"{node['node']}:8080 answers", lambda n=node: get(n["address"], 8080), timeout=300)
    wait_for("every service back at its replicas", lambda: converged(lab), timeout=300)
    run = lab.deploy(group_data=encrypted_data(templates))
    assert run.returncode == 0 and run.changed == [], run
