"""Firewall: the swarm ports open to peers only, for each backend."""

from __future__ import annotations

from pyinfra_swarm.deploys.firewall import configure_firewall, resolve_backend
from pyinfra_swarm.operations import firewall
from pyinfra_swarm.operations.firewall import (
    firewalld_commands,
    iptables_script,
    nftables_rules,
    node_policy,
    ufw_commands,
    ufw_rules,
)
from tests.unit.fakes import commands, firewalld_files, host, plan

PEERS = ["10.1.0.1", "10.1.0.2"]


def _policy(manager=True, esp=False, deny=True):
    return node_policy(manager, PEERS, ["22/tcp", "8000:8100/tcp"], 4789, esp, deny)


def test_manager_policy_opens_2377_and_workers_do_not():
    assert _policy().swarm_ports == ("2377/tcp", "7946/tcp", "7946/udp", "4789/udp")
    assert _policy(manager=False).swarm_ports == ("7946/tcp", "7946/udp", "4789/udp")
    assert node_policy(False, PEERS, [], 4790, False, True, ssh_ports=(22, 2222)).allow == ("22/tcp", "2222/tcp")


def test_iptables_script_accepts_peers_only_and_rejects_the_rest():
    script = iptables_script(_policy(esp=True))
    peers = "-m set --match-set pyinfra-swarm-peers4 src"
    assert f"-A PYINFRA-SWARM {peers} -p udp --dport 4789 -j ACCEPT" in script
    assert f"-A PYINFRA-SWARM {peers} -p esp -j ACCEPT" in script
    swarm_accepts = [line for line in script.splitlines() if "--dport 4789" in line or "--dport 7946" in line]
    assert swarm_accepts and all(
        "--match-set pyinfra-swarm-peers" in line for line in swarm_accepts if "ACCEPT" in line
    )
    # The peers are a set, filled aside and swapped in at once; IPv6 gets its own (empty here).
    fill = script[script.index("ipset -exist restore <<'PEERS'") : script.index("PEERS\n  ipset swap")]
    assert fill.splitlines()[1:] == ["add pyinfra-swarm-peers4-next 10.1.0.1", "add pyinfra-swarm-peers4-next 10.1.0.2"]
    assert "ipset swap pyinfra-swarm-peers4-next pyinfra-swarm-peers4" in script
    assert "ipset -exist create pyinfra-swarm-peers6 hash:ip family inet6" in script
    assert script.index("ipset swap pyinfra-swarm-peers4-next") < script.index("iptables-restore -w")
    assert "-A PYINFRA-SWARM -p tcp --dport 8000:8100 -j ACCEPT" in script
    assert script.rstrip().endswith("fi")
    assert "-A PYINFRA-SWARM -j REJECT" in script
    assert "iptables -w -C INPUT -j PYINFRA-SWARM 2>/dev/null || iptables -w -I INPUT 1 -j PYINFRA-SWARM" in script


def test_the_rules_do_not_grow_with_the_peers():
    def rules(peers: int) -> list[str]:
        policy = node_policy(True, [f"10.2.{i // 250}.{i % 250 + 1}" for i in range(peers)], ["22/tcp"], 4789,
                             True, True)  # fmt: skip
        return [line for line in iptables_script(policy).splitlines() if line.startswith("-A ")]

    assert rules(500) == rules(3)


def test_iptables_rules_are_applied_in_one_transaction_per_family():
    script = iptables_script(_policy())
    for binary in ("iptables", "ip6tables"):
        start = script.index(f"{binary}-restore -w --noflush <<'RULES'")
        block = script[start : script.index("RULES\n", start + 40)]
        assert block.splitlines()[1:4] == ["*filter", ":PYINFRA-SWARM - [0:0]", ":PYINFRA-SWARM-FWD - [0:0]"]
        assert block.rstrip().endswith("COMMIT")
    assert "-F PYINFRA-SWARM" not in script  # no flush outside the transaction: a bad rule keeps the old ones


def test_published_ports_pass_docker_user_only_from_peers_and_to_allowed_ports():
    script = iptables_script(_policy())
    forward = [line for line in script.splitlines() if line.startswith("-A PYINFRA-SWARM-FWD")]
    assert forward[:2] == ["-A PYINFRA-SWARM-FWD -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
                           "-A PYINFRA-SWARM-FWD -m conntrack ! --ctstate DNAT -j RETURN"]  # fmt: skip
    assert "-A PYINFRA-SWARM-FWD -i docker_gwbridge -j RETURN" in forward
    assert "-A PYINFRA-SWARM-FWD -m set --match-set pyinfra-swarm-peers4 src -j RETURN" in forward
    assert "-A PYINFRA-SWARM-FWD -p tcp -m conntrack --ctorigdstport 8000:8100 -j RETURN" in forward
    assert forward[-1] == "-A PYINFRA-SWARM-FWD -j REJECT"
    assert "iptables -w -C DOCKER-USER -j PYINFRA-SWARM-FWD 2>/dev/null || " in script
    # Policy allow: published ports are left alone (the chain is empty).
    assert not [line for line in iptables_script(_policy(deny=False)).splitlines() if "-A PYINFRA-SWARM-FWD" in line]
    rules = nftables_rules(_policy())
    assert "type filter hook forward priority filter - 1; policy accept;" in rules
    assert "ct status dnat ip saddr @peers4 accept" in rules
    assert "ct status dnat meta l4proto tcp ct original proto-dst { 22, 8000-8100 } accept" in rules
    assert rules.index("ct status dnat meta l4proto tcp reject") > rules.index("ct original proto-dst")


def test_allow_policy_only_rejects_swarm_ports_from_others():
    script = iptables_script(_policy(deny=False))
    assert "-p udp --dport 4789 -j REJECT" in script
    assert "-A PYINFRA-SWARM -j RETURN" in script
    assert "-A PYINFRA-SWARM -j REJECT" not in script


def test_nftables_table_is_replaced_atomically():
    rules = nftables_rules(_policy(esp=True))
    assert rules.splitlines()[1:3] == ["table inet pyinfra_swarm", "delete table inet pyinfra_swarm"]
    assert "  set peers4 { type ipv4_addr; elements = { 10.1.0.1, 10.1.0.2 }; }" in rules
    assert "ip saddr @peers4 udp dport { 7946, 4789 } accept" in rules
    assert "ip saddr @peers4 tcp dport { 2377, 7946 } accept" in rules
    assert "ip saddr @peers4 meta l4proto esp accept" in rules
    assert "tcp dport { 22, 8000-8100 } accept" in rules


def test_ufw_commands_add_missing_rules_and_remove_stale_ones():
    fresh = ufw_commands(["22/tcp", "8000:8100/tcp"], True, {"active": False, "incoming": None, "rules": []})
    assert fresh == ["ufw allow 22/tcp comment 'pyinfra-swarm'", "ufw allow 8000:8100/tcp comment 'pyinfra-swarm'",
                     "ufw default deny incoming", "ufw --force enable"]  # fmt: skip
    # A per-peer rule of an earlier release goes; the user's own rules stay.
    stale = "allow from 10.9.9.9 to any port 7946 proto tcp comment 'pyinfra-swarm'"
    current = {"active": True, "incoming": "deny", "rules": [*ufw_rules(["22/tcp"]), stale, "allow 80/tcp"]}
    assert ufw_commands(["22/tcp"], True, current) == [f"ufw delete {stale}"]
    assert ufw_commands(["22/tcp"], False, current)[-1] == "ufw default allow incoming"


def test_firewalld_zone_holds_peers_and_swarm_ports():
    fresh = firewalld_commands(_policy(manager=False, esp=True), None)
    zone = "firewall-cmd --permanent --zone=pyinfra-swarm"
    assert fresh == [
        "firewall-cmd --permanent --new-zone=pyinfra-swarm",
        "firewall-cmd --permanent --new-ipset=pyinfra-swarm-zone-peers4 --type=hash:ip --option=family=inet",
        "firewall-cmd --permanent --ipset=pyinfra-swarm-zone-peers4 --add-entry=10.1.0.1 --add-entry=10.1.0.2",
        "firewall-cmd --permanent --new-ipset=pyinfra-swarm-zone-peers6 --type=hash:ip --option=family=inet6",
        f"{zone} --add-source=ipset:pyinfra-swarm-zone-peers4 --add-source=ipset:pyinfra-swarm-zone-peers6",
        # Peers land in our zone only: SSH and the allow list must be open there too.
        f"{zone} --add-port=7946/tcp --add-port=7946/udp --add-port=4789/udp --add-port=22/tcp"
        " --add-port=8000-8100/tcp",
        f"{zone} --add-protocol=esp",
        "firewall-cmd --permanent --add-port=22/tcp --add-port=8000-8100/tcp",  # everyone, in the default zone
        f"{zone} --set-description='pyinfra-swarm allow: 22/tcp 8000-8100/tcp'",
    ]


def test_firewalld_calls_dont_grow_with_the_peers():
    many = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(500)] + ["fd00::1"]
    fresh = firewalld_commands(node_policy(False, many, ["22/tcp"], 4789, False, True), None)
    assert len(fresh) == len(firewalld_commands(_policy(manager=False), None)) + 1  # the IPv6 entry's call
    assert fresh[2].count("--add-entry=") == 500 and "--add-entry=fd00::1" in fresh[4]


def test_firewalld_changes_only_what_differs_and_removes_dropped_ports():
    policy = _policy(manager=False)
    zone = {"exists": True, "sources": ["ipset:pyinfra-swarm-zone-peers4", "ipset:pyinfra-swarm-zone-peers6"],
            "ports": ["7946/tcp", "7946/udp", "4789/udp", "22/tcp", "8000-8100/tcp"], "protocols": [],
            "target": "default", "default-ports": ["22/tcp", "8000-8100/tcp"],
            "description": "pyinfra-swarm allow: 22/tcp 8000-8100/tcp",
            "ipsets": {"pyinfra-swarm-zone-peers4": ["10.1.0.1", "10.1.0.2"],
                       "pyinfra-swarm-zone-peers6": []}}  # fmt: skip
    assert firewalld_commands(policy, zone) == []  # nothing differs: no reload
    dropped = node_policy(False, [*PEERS, "10.1.0.3"], ["22/tcp"], 4789, False, True)
    sets = {**zone["ipsets"], "pyinfra-swarm-zone-peers4": ["10.1.0.9", "10.1.0.1", "10.1.0.2"]}
    # A zone of an earlier release, the peers one source each: they go, the ipsets come.
    old = {**zone, "ipsets": sets, "sources": ["10.1.0.1", *zone["sources"]]}
    assert firewalld_commands(dropped, old) == [
        "firewall-cmd --permanent --ipset=pyinfra-swarm-zone-peers4 --remove-entry=10.1.0.9",
        "firewall-cmd --permanent --ipset=pyinfra-swarm-zone-peers4 --add-entry=10.1.0.3",
        "firewall-cmd --permanent --zone=pyinfra-swarm --remove-source=10.1.0.1",
        "firewall-cmd --permanent --zone=pyinfra-swarm --remove-port=8000-8100/tcp",
        "firewall-cmd --permanent --remove-port=8000-8100/tcp",
        "firewall-cmd --permanent --zone=pyinfra-swarm --set-description='pyinfra-swarm allow: 22/tcp'",
    ]
    allow_policy = node_policy(False, PEERS, ["22/tcp", "8000:8100/tcp"], 4789, False, False)
    assert firewalld_commands(allow_policy, zone) == [
        "firewall-cmd --permanent --zone=pyinfra-swarm --set-target=ACCEPT"
    ]


def test_deploy_with_firewalld_reloads_only_on_change():
    zone = ('<description>pyinfra-swarm allow: 22/tcp</description><source ipset="pyinfra-swarm-zone-peers4"/>'
            '<source ipset="pyinfra-swarm-zone-peers6"/><port protocol="tcp" port="2377"/>'
            '<port protocol="tcp" port="7946"/><port protocol="udp" port="7946"/><port protocol="udp" port="4789"/>'
            '<port protocol="tcp" port="22"/>')  # fmt: skip
    listing = firewalld_files(zone, ["22/tcp"], {"pyinfra-swarm-zone-peers4": ["10.1.0.1", "10.1.0.2"],
                                                 "pyinfra-swarm-zone-peers6": []})  # fmt: skip
    manager = host("m1", "10.1.0.1", firewall={"firewalld": "active"}, extra={"firewalld files": listing})
    assert commands(plan([configure_firewall], [manager], [host("w1", "10.1.0.2", swarm_firewall="none")])["m1"]) == []
    moved = host(
        "m1", "10.1.0.1", firewall={"firewalld": "active"}, extra={"firewalld files": listing}, sshd_ports=(2222,)
    )
    cmds = commands(plan([configure_firewall], [moved], [host("w1", "10.1.0.2", swarm_firewall="none")])["m1"])
    assert "firewall-cmd --permanent --zone=pyinfra-swarm --add-port=2222/tcp" in cmds
    assert cmds[-1] == "firewall-cmd --reload"


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


def test_deploy_with_ufw_active_uses_ufw_and_our_chain_for_the_swarm_ports(monkeypatch):
    rendered = []
    monkeypatch.setattr(firewall, "iptables_script", lambda policy: rendered.append(iptables_script(policy)) or "")
    ufw = {"ufw status verbose": ["Status: active", "Default: deny (incoming), allow (outgoing), disabled (routed)"]}
    manager = host("m1", "10.1.0.1", firewall={"ufw": "active"}, extra=ufw)
    many = [host(f"w{i}", f"10.1.0.{i + 2}") for i in range(50)]
    cmds = commands(plan([configure_firewall], [manager], many)["m1"])
    ufw_calls = [c for c in cmds if c.startswith("ufw ")]
    assert ufw_calls == ["ufw allow 22/tcp comment 'pyinfra-swarm'"]  # whatever the number of peers
    assert any("/etc/pyinfra-swarm/firewall.sh" in c for c in cmds)
    script = next(text for text in rendered if "--dport 2377" in text)  # the manager's
    assert "add pyinfra-swarm-peers4-next 10.1.0.51" in script
    # Our chain: the swarm ports from peers, refused to others; the rest is left to ufw.
    assert "-A PYINFRA-SWARM -m set --match-set pyinfra-swarm-peers4 src -p tcp --dport 2377 -j ACCEPT" in script
    assert "-A PYINFRA-SWARM -p tcp --dport 2377 -j REJECT --reject-with tcp-reset" in script
    assert "--dport 22 -j ACCEPT" not in script and "-A PYINFRA-SWARM -j RETURN" in script


def test_firewall_none_plans_nothing():
    assert commands(plan([configure_firewall], [host("m1", "10.1.0.1", swarm_firewall="none")])["m1"]) == []
