"""Fact output parsing."""

from __future__ import annotations

import json

from pyinfra_swarm.facts import (
    Clock,
    DockerDaemonConfig,
    DockerPackages,
    FileHashes,
    FirewalldZone,
    HostAddresses,
    InterfaceMtus,
    KernelFeatures,
    ServiceStates,
    SshdPorts,
    UfwState,
)


def test_kernel_features_from_config_and_apparmor():
    features = KernelFeatures().process(
        ["apparmor=Y", "CONFIG_VXLAN=m", "# CONFIG_IP_VS is not set", "CONFIG_INET_ESP=y", "CONFIG_CRYPTO_GCM=m"]
    )
    assert features["VXLAN"] is True and features["IP_VS"] is False and features["INET_ESP"] is True
    assert features["XFRM_USER"] is False  # absent from a readable config: not set
    assert features["APPARMOR"] is True
    unknown = KernelFeatures().process(["apparmor="])
    assert unknown["VXLAN"] is None and unknown["APPARMOR"] is False


def test_host_addresses():
    output = [
        "1: lo    inet 127.0.0.1/8 scope host lo",
        "2: eth0    inet 192.168.56.10/24 brd 192.168.56.255 scope global eth0",
        "2: eth0    inet6 fe80::1/64 scope link",
        "5: eth1@if6    inet 10.0.2.15/24 scope global eth1",
    ]
    assert HostAddresses().process(output) == {
        "lo": ["127.0.0.1"], "eth0": ["192.168.56.10", "fe80::1"], "eth1": ["10.0.2.15"]
    }  # fmt: skip


def test_daemon_config_missing_valid_and_invalid():
    assert DockerDaemonConfig().process([]) is None
    assert DockerDaemonConfig().process(['{"mtu": 1400}']) == {"mtu": 1400}
    assert DockerDaemonConfig().process(["{oops"]) == {"__invalid__": "{oops"}


def test_file_hashes_and_service_states():
    digest = "a" * 64
    assert FileHashes().process([f"{digest} /etc/a", " /etc/b"]) == {"/etc/a": digest, "/etc/b": None}
    output = ["Id=docker.service", "ActiveState=active", "UnitFileState=enabled", "", "Id=x.service",
              "UnitFileState=", "ActiveState=inactive"]  # fmt: skip
    assert ServiceStates().process(output) == {
        "docker.service": {"active": True, "enabled": True}, "x.service": {"active": False, "enabled": False}
    }  # fmt: skip


def test_docker_packages_with_held_ones():
    output = ["release=debian 13", "codename=trixie", "manager=apt", "arch=arm64",
              "docker.io 20.10.24+dfsg1-1+deb12u1 held", "curl 7.88 "]  # fmt: skip
    assert DockerPackages().process(output) == {
        "manager": "apt", "packages": {"docker.io": "20.10.24+dfsg1-1+deb12u1", "curl": "7.88"}, "held": ["docker.io"],
        "release": "debian 13", "codename": "trixie", "arch": "arm64",
    }  # fmt: skip


def test_sshd_ports_interface_mtus_and_clock():
    assert SshdPorts().process(["port 2222", "port 22", "connection 10.0.2.2 5000 10.0.2.15 22"]) == [22, 2222]
    assert SshdPorts().process(["connection 10.0.2.2 5000 10.0.2.15 2200"]) == [2200]
    assert SshdPorts().process(["connection "]) == []
    links = ["1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue", "3: eth0@if7: <BROADCAST,UP> mtu 1450 qdisc noqueue"]
    assert InterfaceMtus().process(links) == {"lo": 65536, "eth0": 1450}
    assert Clock().process(["1764380000.25"]) == 1764380000.25 and Clock().process([]) is None


def test_ufw_state_and_firewalld_zone():
    state = UfwState().process([
        "Status: active", "Default: deny (incoming), allow (outgoing), disabled (routed)",
        "ufw allow 22/tcp comment 'pyinfra-swarm'",
    ])  # fmt: skip
    assert state == {"active": True, "incoming": "deny", "rules": ["allow 22/tcp comment 'pyinfra-swarm'"]}
    ours = ('<?xml version="1.0" encoding="utf-8"?>', '<zone target="ACCEPT">',
            "  <description>pyinfra-swarm allow: 22/tcp</description>", '  <source ipset="p4"/>',
            '  <port protocol="tcp" port="7946"/>', '  <port protocol="tcp" port="8000-8100"/>',
            '  <protocol value="esp"/>', '  <rule><source address="10.9.9.9"/><port protocol="tcp" port="1"/>'
            "<accept/></rule>", "</zone>")  # fmt: skip
    output = ["#zone", *ours, "", "#default-zone public", "<zone><service name='ssh'/>",
              '<port protocol="tcp" port="22"/></zone>', "#ipset p4", '<ipset type="hash:ip">',
              "<entry>10.1.0.1</entry><entry>10.1.0.2</entry></ipset>"]  # fmt: skip
    zone = FirewalldZone().process(output)
    assert zone == {"exists": True, "sources": ["ipset:p4"], "ports": ["7946/tcp", "8000-8100/tcp"],
                    "protocols": ["esp"], "target": "ACCEPT", "description": "pyinfra-swarm allow: 22/tcp",
                    "default-zone": "public", "default-ports": ["22/tcp"],
                    "ipsets": {"p4": ["10.1.0.1", "10.1.0.2"]}}  # fmt: skip
    fresh = FirewalldZone().process(["#default-zone public", "<zone/>", "#ipset p6", '<ipset type="hash:ip"/>'])
    assert fresh == {"exists": False, "sources": [], "ports": [], "protocols": [], "target": "default",
                     "description": "", "default-zone": "public", "default-ports": [],
                     "ipsets": {"p6": []}}  # fmt: skip
    assert FirewalldZone().process([]) is None
    assert "/etc/firewalld/ipsets/$s.xml" in FirewalldZone().command("z", ipsets=("p4", "p6"))


def test_image_contexts_tell_missing_from_unlabelled_images():
    from pyinfra_swarm.facts import ImageContexts

    fact = ImageContexts()
    assert '[ -n "$out" ]' in fact.command(images=["debian:bookworm"])  # docker 20.10 prints "" if missing
    assert "#unpushed" not in fact.command(images=["debian:bookworm"])
    assert "#unpushed" in fact.command(images=["10.1.0.1:5000/app:1"], pushed=True)
    lines = ["debian:bookworm #missing", "app:1 abc123", "base:1 <no value>", "r:5000/app:2 #unpushed"]
    assert fact.process(lines) == {
        "debian:bookworm": None, "app:1": "abc123", "base:1": "", "r:5000/app:2": ""
    }  # fmt: skip


def test_swarm_state_from_the_api_or_the_cli():
    from pyinfra_swarm.facts import DockerSwarm

    swarm = {"LocalNodeState": "active", "NodeID": "n1", "ControlAvailable": True}
    assert DockerSwarm().process([json.dumps({"ID": "engine", "Swarm": swarm, "Plugins": {}})]) == swarm
    assert DockerSwarm().process([json.dumps(swarm)]) == swarm  # the CLI's --format output
