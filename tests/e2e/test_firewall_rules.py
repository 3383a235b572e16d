"""The firewall's rules as the kernel takes them: each backend's script loaded (twice: a re-run replaces it)
into a network namespace of its own on this machine, with iptables-restore, ipset and nft, and what they
hold then. The lab and VM tests show the traffic they let through; this shows every backend loads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pyinfra_swarm.operations import firewall

PEERS = [f"10.2.{i // 250}.{i % 250 + 1}" for i in range(300)]


def in_namespace(tmp_path: Path, script: str) -> str:
    """Run `script` (sh) in a new network namespace; its output."""
    path = tmp_path / "run.sh"
    path.write_text(script)
    result = subprocess.run(["unshare", "-n", "sh", "-e", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("deny", [True, False])
def test_the_iptables_script_loads_with_the_peers_as_one_set(tmp_path: Path, deny: bool) -> None:
    if not (shutil.which("ipset") and shutil.which("iptables-restore") and shutil.which("unshare")):
        pytest.fail("ipset, iptables-restore and unshare are needed (scripts/ensure-test-tools installs them)")
    rules = tmp_path / "firewall.sh"
    rules.write_text(firewall.iptables_script(firewall.node_policy(True, PEERS, ["22/tcp"], 4789, True, deny)))
    fewer = tmp_path / "fewer.sh"
    fewer.write_text(firewall.iptables_script(firewall.node_policy(True, PEERS[:2], ["22/tcp"], 4789, True, deny)))
    count = "iptables -w -S PYINFRA-SWARM | wc -l\nipset list pyinfra-swarm-peers4 | grep -c '^10\\.'\n"
    out = in_namespace(tmp_path, f"iptables -w -N DOCKER-USER\nsh -e {rules}\nsh -e {rules}\n{count}"
                                 f"sh -e {fewer}\n{count}ipset list -n\n"
                                 "iptables -w -S INPUT; iptables -w -S DOCKER-USER\n")  # fmt: skip
    lines = out.split()
    rules_300, members_300, rules_2, members_2 = (int(v) for v in lines[:4])
    assert (members_300, members_2) == (300, 2)
    assert rules_300 == rules_2 < 20  # the rules don't grow with the peers
    assert "pyinfra-swarm-peers4-next" not in out  # filled aside, swapped in, and gone
    assert "-A INPUT -j PYINFRA-SWARM" in out and "-A DOCKER-USER -j PYINFRA-SWARM-FWD" in out


@pytest.mark.parametrize("deny", [True, False])
def test_the_nftables_table_loads_with_the_peers_as_named_sets(tmp_path: Path, deny: bool) -> None:
    if not (shutil.which("nft") and shutil.which("unshare")):
        pytest.fail("nft and unshare are needed (scripts/ensure-test-tools installs them)")
    table = tmp_path / "firewall.nft"
    table.write_text(firewall.nftables_rules(firewall.node_policy(False, PEERS, ["22/tcp"], 4789, False, deny)))
    out = in_namespace(tmp_path, f"nft -f {table}\nnft -f {table}\nnft list table inet {firewall.NFT_TABLE}\n")
    assert out.count("10.2.") == 300  # each peer once, in the set
    assert "ip saddr @peers4" in out
