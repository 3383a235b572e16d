"""Firewall: the swarm ports open to peers only, for each backend."""

from __future__ import annotations

from pyinfra_swarm.firewall import (
    configure_firewall,
    firewalld_commands,
    iptables_script,
    nftables_rules,
    node_policy,
    resolve_backend,
    ufw_commands,
    ufw_rules,
)
from tests.unit.fakes import commands, host, plan

PEERS = ["10.1.0.1", "10.1.0.2"]


def _policy(manager=True, esp=False, deny=True):
    return node_policy(manager, PEERS, ["22/tcp", "8000:8100/tcp"], 4789, esp, deny)


def test_manager_policy_opens_2377_and_workers_do_not():
    assert _policy().swarm_ports == ("2377/tcp", "7946/tcp", "7946/udp", "4789/udp")
    assert _policy(manager=False).swarm_ports == ("7946/tcp", "7946/udp", "4789/udp")
    assert node_policy(False, PEERS, [], 4790, False, True, ssh_port=2222).allow == ("2222/tcp",)


def test_iptables_script_accepts_peers_only_and_rejects_the_rest():
    script = iptables_script(_policy(esp=True))
    assert "iptables -w -A PYINFRA-SWARM -s 10.1.0.2 -p udp --dport 4789 -j ACCEPT" in script
    assert "iptables -w -A PYINFRA-SWARM -s 10.1.0.1 -p esp -j ACCEPT" in script
    swarm_accepts = [line for line in script.splitlines() if "--dport 4789" in line or "--dport 7946" in line]
    assert swarm_accepts and all(" -s 10.1.0." in line for line in swarm_accepts if "ACCEPT" in line)
    assert "iptables -w -A PYINFRA-SWARM -p tcp --dport 8000:8100 -j ACCEPT" in script
    assert script.rstrip().endswith("fi")
    assert "iptables -w -A PYINFRA-SWARM -j REJECT" in script
    assert "iptables -w -C INPUT -j PYINFRA-SWARM 2>/dev/null || iptables -w -I INPUT 1 -j PYINFRA-SWARM" in script
    assert "DOCKER" not in script and "FORWARD" not in script  # Docker's chains are left alone


def test_allow_policy_only_rejects_swarm_ports_from_others():
    script = iptables_script(_policy(deny=False))
    assert "-p udp --dport 4789 -j REJECT" in script
    assert "-A PYINFRA-SWARM -j RETURN" in script
    assert "-A PYINFRA-SWARM -j REJECT" not in script


def test_nftables_table_is_replaced_atomically():
    rules = nftables_rules(_policy(esp=True))
    assert rules.splitlines()[1:3] == ["table inet pyinfra_swarm", "delete table inet pyinfra_swarm"]
    assert "ip saddr { 10.1.0.1, 10.1.0.2 } udp dport { 7946, 4789 } accept" in rules
    assert "ip saddr { 10.1.0.1, 10.1.0.2 } tcp dport { 2377, 7946 } accept" in rules
    assert "ip saddr { 10.1.0.1, 10.1.0.2 } meta l4proto esp accept" in rules
    assert "tcp dport { 22, 8000-8100 } accept" in rules


def test_ufw_commands_add_missing_rules_and_remove_stale_ones():
    policy = _policy(manager=False)
    fresh = ufw_commands(policy, {"active": False, "incoming": None, "rules": []})
    assert fresh[0] == "ufw allow 22/tcp comment 'pyinfra-swarm'"
    assert "ufw allow from 10.1.0.2 to any port 4789 proto udp comment 'pyinfra-swarm'" in fresh
    assert fresh[-2:] == ["ufw default deny incoming", "ufw --force enable"]
    stale = "allow from 10.9.9.9 to any port 7946 proto tcp comment 'pyinfra-swarm'"
    current = {"active": True, "incoming": "deny", "rules": [*ufw_rules(policy), stale, "allow 80/tcp"]}
    assert ufw_commands(policy, current) == [f"ufw delete {stale}"]


def test_firewalld_zone_holds_peers_and_swarm_ports():
    fresh = firewalld_commands(_policy(manager=False, esp=True), None)
    assert fresh[0] == "firewall-cmd --permanent --new-zone=pyinfra-swarm"
    assert "firewall-cmd --permanent --zone=pyinfra-swarm --add-source=10.1.0.2" in fresh
    assert "firewall-cmd --permanent --zone=pyinfra-swarm --add-port=4789/udp" in fresh
    assert "firewall-cmd --permanent --zone=pyinfra-swarm --add-protocol=esp" in fresh
    zone = {"sources": ["10.1.0.1", "10.1.0.2", "10.1.0.9"], "ports": ["7946/tcp", "7946/udp", "4789/udp"],
            "protocols": []}  # fmt: skip
    assert firewalld_commands(_policy(manager=False), zone) == [
        "firewall-cmd --permanent --zone=pyinfra-swarm --remove-source=10.1.0.9"
    ]


def test_backend_detection():
    assert resolve_backend("auto", {"ufw": "active", "firewalld": False}) == "ufw"
    assert resolve_backend("auto", {"ufw": "inactive", "firewalld": True}) == "firewalld"
    assert resolve_backend("auto", {"ufw": None, "firewalld": False}) == "iptables"
    assert resolve_backend(False, {}) == "none"
    assert resolve_backend("nftables", {"ufw": "active"}) == "nftables"


def test_deploy_writes_rules_with_every_peer_and_a_boot_unit():
    managers = [host("m1", "10.1.0.1")]
    workers = [host("w1", "10.1.0.2"), host("w2", "10.1.0.3")]
    planned = plan([configure_firewall], managers, workers)
    cmds = commands(planned["w1"])
    assert any("/etc/pyinfra-swarm/firewall.sh" in c for c in cmds)
    assert any("/etc/systemd/system/pyinfra-swarm-firewall.service" in c for c in cmds)
    assert cmds[-3:] == ["systemctl daemon-reload", "systemctl start pyinfra-swarm-firewall.service",
                         "systemctl enable pyinfra-swarm-firewall.service"]  # fmt: skip


def test_deploy_with_ufw_active_uses_ufw():
    ufw = {"ufw status verbose": ["Status: active", "Default: deny (incoming), allow (outgoing), disabled (routed)"]}
    manager = host("m1", "10.1.0.1", firewall={"ufw": "active"}, extra=ufw)
    planned = plan([configure_firewall], [manager], [host("w1", "10.1.0.2")])
    cmds = commands(planned["m1"])
    assert "ufw allow from 10.1.0.2 to any port 2377 proto tcp comment 'pyinfra-swarm'" in " ".join(cmds)


def test_firewall_none_plans_nothing():
    assert commands(plan([configure_firewall], [host("m1", "10.1.0.1", swarm_firewall="none")])["m1"]) == []
