"""OS patching (`patch.py`) as planned commands: who takes a turn, in which order, what it is told; the
quorum rule of every drained turn; the fact that says what a node would upgrade; the summary."""

from __future__ import annotations

import json
import logging
import os
import subprocess

import pytest

from pyinfra_swarm.deploys.patch import patch_nodes
from pyinfra_swarm.facts import PendingPatches
from pyinfra_swarm.operations.maintenance import quorum_problem
from pyinfra_swarm.operations.patching import Outcome, firewall_check, summary_lines, upgrade_command
from pyinfra_swarm.operations.swarm import DRAINED_LABEL, RESTORE_LABEL
from tests.unit.fakes import host, plan
from tests.unit.test_removal import _address, _cluster, _listing
from tests.unit.test_swarm import swarm

PENDING = "Dir::Etc::Preferences"  # a piece of PendingPatches' command: the fake hosts answer it
TURN = "Patch the OS, one node at a time | Patch the OS and reboot if needed"


def _patch(pending: dict[str, list[str]], limit: list[str] | None = None, **data):
    managers, workers = _cluster(1, 2, **{name: {"extra": {PENDING: ["manager=apt", *lines]}, **data}
                                          for name, lines in pending.items()})  # fmt: skip
    return plan([patch_nodes], managers, workers, limit=limit)


def _turn(steps) -> str:
    [turn] = [step for step in steps if step[0].startswith(TURN)]
    assert turn.serial
    [call] = turn[1]
    return call


def test_nodes_with_upgrades_or_asking_for_a_reboot_take_turns_the_others_are_left_alone(caplog):
    with caplog.at_level(logging.WARNING):
        planned = _patch({"m1": ["upgrade openssl 3.5.1-1 3.5.4-1", "upgrade linux-image-amd64 - 6.12.9-1"],
                          "w1": ["reboot /var/run/reboot-required"], "w2": []})  # fmt: skip
    manager = _turn(planned["m1"])
    assert planned["m1"][0][0] == f"{TURN} (managers, one at a time)"
    assert "why='upgrade 2 package(s) (openssl, linux-image-amd64), then reboot if the upgrade asks for one'" in manager
    assert repr(upgrade_command("apt", [])).split("pins=")[0] in manager  # the engine packages pinned
    worker = _turn(planned["w1"])
    assert planned["w1"][0][0] == f"{TURN} (workers, one at a time)"
    assert "why='reboot (/var/run/reboot-required)'), 0, 'if-required', None," in worker  # no upgrade to run
    assert planned["w2"] == []  # nothing to do: no turn, no summary (a second run changes nothing)
    assert [step[0] for step in planned["m1"]][-1] == "Patch the OS, one node at a time | Summary of the patching"
    # The fakes have no firewall unit in place: said, and not checked.
    assert "its firewall's unit pyinfra-swarm-firewall.service is not in place" in caplog.text


@pytest.mark.parametrize(
    ("reboot", "turns"),
    [("always", {"m1", "w1", "w2"}), ("never", {"m1"}), ("if-required", {"m1", "w1"})],
)
def test_patch_reboot_decides_who_reboots(reboot, turns):
    planned = _patch({"m1": ["upgrade openssl 1 2"], "w1": ["reboot needs-restarting -r"], "w2": []},
                     patch_reboot=reboot)  # fmt: skip
    assert {name for name, steps in planned.items() if steps} == turns
    if reboot == "always":
        assert "'always'" in _turn(planned["w2"])


def test_limit_patches_only_the_hosts_in_it():
    planned = _patch({"m1": ["upgrade openssl 1 2"], "w1": ["upgrade openssl 1 2"], "w2": ["upgrade openssl 1 2"]},
                     limit=["w2"])  # fmt: skip
    assert planned["m1"] is None and planned["w1"] is None and _turn(planned["w2"])


def test_the_upgrade_leaves_the_engine_packages_at_their_versions():
    apt = upgrade_command("apt", ["docker.io", "containerd"])
    assert "dpkg-query -W" in apt and "docker.io containerd" in apt and "Pin-Priority: 1001" in apt
    assert 'apt-get -q -y -o Dir::Etc::Preferences="$pins"' in apt and "upgrade --with-new-pkgs" in apt
    assert "--force-confold" in apt and 'rm -f "$pins"' in apt  # the admin's config kept; nothing of ours left
    assert upgrade_command("dnf", ["docker-ce"]) == "dnf -y -q upgrade --exclude=docker-ce"


@pytest.mark.parametrize(
    ("statuses", "node", "problem"),
    [
        ([("M1", "Leader"), ("M2", "Reachable"), ("M3", "Reachable")], "M2", ""),
        ([("M1", "Leader"), ("M2", "Reachable"), ("M3", "Unreachable")], "M2",
         "only 2 of 3 managers are reachable: taking this one out would leave 1, fewer than the 2 that keep quorum"),
        ([("M1", "Leader"), ("M2", "Reachable"), ("M3", "Unreachable")], "M3", ""),  # the one already out
        ([("M1", "Leader"), ("M2", "Reachable"), ("M3", "Reachable"), ("M4", "Reachable"), ("M5", "Unreachable")],
         "M2", ""),  # 3 of 5 left
        ([("M1", "Leader")], "M1", ""),  # one manager: the only way to restart it
        ([("M1", "Leader"), ("M2", "Reachable")], "W1", ""),  # a worker
    ],
)  # fmt: skip
def test_a_manager_takes_its_turn_only_while_the_others_keep_quorum(statuses, node, problem):
    assert quorum_problem(statuses, node).startswith(problem) and bool(problem) == bool(quorum_problem(statuses, node))


def test_pending_patches_reads_upgrades_new_packages_and_reboot_reasons():
    output = ["manager=apt", "error=apt-get update: E: mirror down", "upgrade openssl 3.5.1-1 3.5.4-1",
              "upgrade linux-image-6.12.9-amd64 - 6.12.9-1", "reboot /var/run/reboot-required",
              "reboot kernel 6.12.9-amd64 installed, 6.12.6-amd64 running"]  # fmt: skip
    assert PendingPatches().process(output) == {
        "manager": "apt",
        "error": "apt-get update: E: mirror down",
        "upgrades": [("openssl", "3.5.1-1", "3.5.4-1"), ("linux-image-6.12.9-amd64", None, "6.12.9-1")],
        "reboot": ["/var/run/reboot-required", "kernel 6.12.9-amd64 installed, 6.12.6-amd64 running"],
    }
    assert PendingPatches().process([]) == PendingPatches.default()


def test_the_summary_names_each_node_what_it_did_and_how_long_it_was_out():
    failed = "its firewall was not active before Docker started"
    outcomes = {"m2": Outcome(upgraded=3, rebooted="/var/run/reboot-required", out=41.2), "w1": Outcome(out=9),
                "w2": Outcome(upgraded=1, out=30, failed=failed)}  # fmt: skip
    assert summary_lines(outcomes, {"m1": "up to date, no reboot needed"}) == [
        "--> OS patching, node by node:",
        "    m2: 3 package(s) upgraded, rebooted (/var/run/reboot-required); out of service 41 s",
        "    w1: no package upgraded, not rebooted; out of service 9 s",
        "    w2: FAILED after 30 s: its firewall was not active before Docker started",
        "    m1: up to date, no reboot needed",
    ]


def test_a_node_left_drained_takes_a_turn_and_gets_its_availability_back_only_through_it():
    listing = json.loads(_listing(1, 2))
    listing[1]["Spec"].update(Availability="drain", Labels={DRAINED_LABEL: "ci since T", RESTORE_LABEL: "active"})
    nothing = {"extra": {PENDING: ["manager=apt"]}, "docker_running": True, "packages": {"docker.io": "20.10.24"}}
    managers = [host("m1", _address("m1"), swarm=swarm("M1", True), nodes=json.dumps(listing), **nothing)]
    workers = [host(name, _address(name), swarm=swarm(name.upper(), False), **nothing) for name in ("w1", "w2")]
    planned = plan([patch_nodes], managers, workers)
    turn = _turn(planned["w1"])
    assert "availability='active'" in turn and (
        "why='left drained by an unfinished run: checked before it gets its availability back, then reboot if the "
        "upgrade asks for one'" in turn
    )
    assert planned["m1"] == [] and planned["w2"] == []


@pytest.mark.parametrize(
    ("state", "since", "before_docker", "ok"),
    [("active", 100, True, True), ("active", 300, True, False), ("active", 300, False, True),
     ("failed", 0, True, False), ("failed", 0, False, False), ("inactive", 0, False, False)],
)  # fmt: skip
def test_the_firewall_check_wants_the_unit_active_and_after_a_reboot_before_docker(tmp_path, state, since,
                                                                                   before_docker, ok):  # fmt: skip
    """The check's shell, run here against a `systemctl` that answers as a node's would (Docker started at 200)."""
    fake = tmp_path / "systemctl"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *docker.service*) echo 200 ;; '
        f"*) printf 'ActiveState={state}\\nActiveEnterTimestampMonotonic={since}\\n' ;; esac\n"
    )
    fake.chmod(0o755)
    output = subprocess.run(["sh", "-c", firewall_check("pyinfra-swarm-firewall.service", before_docker)],
                            env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert (output.split() == ["ok"]) is ok
