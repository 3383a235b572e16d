"""Defects a lab run does not show on its own, as planned commands: --limit, unreachable or locked managers,
secrets off the command line, engine restarts one node at a time, held pins, registry credentials and
placement, convergence and old object versions."""

from __future__ import annotations

import json
import logging

import pytest
from pyinfra.api.exceptions import DeployError, PyinfraError

from pyinfra_swarm.deploys.daemon import render
from pyinfra_swarm.deploys.engine import roll_engines
from pyinfra_swarm.deploys.install import apt_swap_command, hold_commands, install_docker
from pyinfra_swarm.deploys.registry import configure_registry, credentials, host_config
from pyinfra_swarm.deploys.stacks import stale_versions
from pyinfra_swarm.deploys.swarm import configure_nodes, join_swarm
from pyinfra_swarm.facts import Bundle, LocalSwarm
from pyinfra_swarm.operations.registry import login_digest
from pyinfra_swarm.operations.swarm import converged, join_body, join_result, stack_progress
from pyinfra_swarm.plan.checks import warn_clock_skew, warn_small_mtu
from pyinfra_swarm.plan.managers import choose_init_host, choose_primary
from pyinfra_swarm.settings import DEFAULTS, validate_host_data
from tests.unit.fakes import commands, host, plan
from tests.unit.test_swarm import node, nodes, swarm

LISTING = nodes(node("M1", "m1", "manager"), node("W1", "w1"))


def _member(name: str, address: str, node_id: str, manager: bool, **data):
    return host(name, address, swarm=swarm(node_id, manager), nodes=LISTING if manager else None, **data)


# --limit and managers the run can't see


def test_limit_to_a_new_manager_joins_the_swarm_of_the_managers_outside_the_limit():
    planned = plan([join_swarm, configure_nodes], [_member("m1", "10.1.0.1", "M1", True), host("m2", "10.1.0.2")],
                   [_member("w1", "10.1.0.3", "W1", False)], limit=["m2"])  # fmt: skip
    assert commands(planned["m2"]) == ["_join('manager', '10.1.0.2', {'@fake/m1': '10.1.0.1'}, None)"]
    assert planned["m1"] is None and planned["w1"] is None  # read, never changed


def test_limit_never_inits_on_a_host_outside_it():
    with pytest.raises(PyinfraError, match="would be initialised on @fake/m1, which is outside --limit"):
        plan([join_swarm], [host("m1", "10.1.0.1")], [host("w1", "10.1.0.2")], limit=["w1"])


def test_node_commands_leave_hosts_outside_the_limit_alone():
    listing = nodes(node("M1", "m1", "manager"), node("W1", "w1"))
    planned = plan([configure_nodes], [host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=listing)],
                   [host("w1", "10.1.0.2", swarm=swarm("W1", False), swarm_labels={"zone": "a"})],
                   limit=["m1"])  # fmt: skip
    assert commands(planned["m1"]) == []


class _Host:
    """Just enough of a pyinfra Host for the plan's pure functions."""

    def __init__(self, name: str, manager: bool, data: dict) -> None:
        self.name, self.data = name, _Data(data)
        self.groups = ["swarm_managers" if manager else "swarm_workers"]


class _Data(dict):
    """Host data: `get` and `dict` as pyinfra's HostData has them."""

    def dict(self) -> dict:
        return dict(self)


def _fake(name: str, manager: bool = True, **data):
    return _Host(name, manager, data)


def test_no_init_while_a_manager_that_may_hold_the_swarm_is_unreachable():
    m1, m2, m3 = _fake("m1"), _fake("m2"), _fake("m3")
    info = {m1: LocalSwarm(), m2: LocalSwarm("inactive")}
    with pytest.raises(DeployError, match=r"these managers could be: m3 \(unreachable\).*swarm_bootstrap: true"):
        choose_init_host([m1, m2, m3], [m1, m2], [m1, m2, m3], info)
    bootstrap = _fake("m1", swarm_bootstrap=True)
    assert (
        choose_init_host(
            [bootstrap, m2, m3], [bootstrap, m2], [bootstrap, m2, m3], {bootstrap: LocalSwarm(), m2: LocalSwarm()}
        )
        is bootstrap
    )


def test_no_init_while_a_manager_has_docker_stopped_with_swarm_state_on_disk():
    m1, m2 = _fake("m1"), _fake("m2")
    info = {m1: LocalSwarm(), m2: LocalSwarm("unknown", on_disk=True)}
    with pytest.raises(DeployError, match=r"m2 \(Docker stopped, swarm state on disk"):
        choose_init_host([m1, m2], [m1, m2], [m1, m2], info)
    assert choose_init_host([m1, m2], [m1, m2], [m1, m2], {m1: LocalSwarm(), m2: LocalSwarm("unknown")}) is m1


def test_a_locked_manager_is_unlocked_from_the_key_file_and_never_made_to_leave(tmp_path):
    key_file = tmp_path / "swarm-unlock-key"
    key_file.write_text("SWMKEY-1-test\n")
    listing = nodes(node("M1", "m1", "manager"), node("M2", "m2", "manager"))
    locked = json.dumps({"LocalNodeState": "locked", "NodeID": "M2", "ControlAvailable": False})
    managers = [
        host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=listing, swarm_unlock_key_file=str(key_file)),
        host("m2", "10.1.0.2", swarm=locked, swarm_force_rejoin=True, swarm_unlock_key_file=str(key_file)),
    ]
    planned = plan([join_swarm, configure_nodes], managers)
    assert commands(planned["m2"]) == [f"unlock_now({str(key_file)!r})"]  # its key, through Docker's API, on stdin
    assert not any("leave" in c or "node rm" in c for c in commands(planned["m1"]))

    # Every manager locked (a one-manager swarm restarted): this run unlocks, nothing else happens.
    alone = plan([join_swarm, configure_nodes], [host("m2", "10.1.0.2", swarm=locked,
                                                      swarm_unlock_key_file=str(key_file))],
                 [host("w1", "10.1.0.3", swarm_unlock_key_file=str(key_file))])  # fmt: skip
    assert commands(alone["m2"]) == [f"unlock_now({str(key_file)!r})"] and commands(alone["w1"]) == []


def test_a_pending_node_is_stopped_unless_force_rejoin():
    listing = nodes(node("M1", "m1", "manager"), node("M2", "m2", "manager"))
    stuck = json.dumps({"LocalNodeState": "pending", "NodeID": "M2", "ControlAvailable": False})
    managers = [host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=listing), host("m2", "10.1.0.2", swarm=stuck)]
    planned = plan([join_swarm, configure_nodes], managers)
    assert planned["m2"] is None  # stopped with the reason, nothing planned
    assert not any("leave" in c for c in commands(planned["m1"]))
    forced = host("m2", "10.1.0.2", swarm=stuck, swarm_force_rejoin=True)
    replanned = plan([join_swarm], [managers[0], forced])
    assert commands(replanned["m2"])[0] == "docker swarm leave --force"  # a pending join holds no raft state


def test_init_settings_that_differ_from_the_running_swarm_stop_the_run():
    info = json.loads(swarm("M1", True))
    info["Cluster"].update(DataPathPort=4789, DefaultAddrPool=["10.0.0.0/8"], SubnetSize=24)
    manager = host("m1", "10.1.0.1", swarm=json.dumps(info), nodes=LISTING, swarm_data_path_port=4790)
    with pytest.raises(PyinfraError, match="swarm_data_path_port is 4790, the swarm uses 4789"):
        plan([join_swarm], [manager])


# Join tokens: Docker's API on stdin, never argv


def test_join_request_carries_the_token_in_its_body():
    body = json.loads(join_body("SWMTKN-1-secret", "10.1.0.3", "10.1.0.1", "eth1"))
    assert body == {"ListenAddr": "10.1.0.3:2377", "AdvertiseAddr": "10.1.0.3", "DataPathAddr": "eth1",
                    "RemoteAddrs": ["10.1.0.1:2377"], "JoinToken": "SWMTKN-1-secret"}  # fmt: skip
    assert join_result(["", "200"]) == (True, "")
    assert join_result(['{"message":"This node is already part of a swarm."}', "503"]) == (
        False, "This node is already part of a swarm."
    )  # fmt: skip
    assert join_result([]) == (False, "HTTP status unknown")


def test_init_with_a_data_path_address():
    planned = plan([join_swarm], [host("m1", "10.1.0.1", swarm_data_path_addr="eth1")])
    assert "--data-path-addr eth1" in commands(planned["m1"])[0]


# Engine changes on swarm nodes: one node at a time, drained; pins held


def test_an_engine_upgrade_on_a_swarm_node_is_one_drained_transaction():
    installed = {"docker.io": "20.10.5"}
    config = render(DEFAULTS["docker_daemon_config"])
    member = _member("m1", "10.1.0.1", "M1", True, docker_source="distro", docker_version="20.10.24*",
                     packages=installed, docker_running=True, daemon_config=config)  # fmt: skip
    steps = plan([install_docker, roll_engines], [member])["m1"]
    upgrade = next(step for step in steps if "one at a time" in step[0])
    assert upgrade.serial and "(managers, one at a time)" in upgrade[0]
    assert len(steps) == 1  # the holds come after the install, in the turn
    [call] = upgrade[1]
    work = [
        "DEBIAN_FRONTEND=noninteractive dpkg --configure -a",  # after a power cut mid-install
        "DEBIAN_FRONTEND=noninteractive apt-get update -q",
        apt_swap_command([], ["docker.io"], "20.10.24*"),
        "apt-mark hold docker.io",
        "systemctl restart docker.service",  # Debian's docker.io leaves the old engine running
    ]
    assert call.startswith(f"turn('M1', ['@fake/m1'], {work!r}, [], 'active', None, 180, ")
    assert call.endswith("'an engine package change')")


def test_a_new_node_installs_in_parallel_and_holds_its_pin():
    steps = plan([install_docker], [host("m1", "10.1.0.1", docker_source="distro", docker_version="20.10.24*")])["m1"]
    assert not any(step.serial for step in steps)
    assert "apt-mark hold docker.io" in commands(steps)


def test_holds_follow_the_pin():
    assert hold_commands(["docker.io", "apparmor"], {"docker.io": "1"}, [], "20.10*") == ["apt-mark hold docker.io"]
    assert hold_commands(["docker.io"], {"docker.io": "1"}, ["docker.io"], "20.10*") == []
    assert hold_commands(["docker.io"], {"docker.io": "1"}, ["docker.io"], None) == ["apt-mark unhold docker.io"]
    assert hold_commands(["docker-ce", "containerd.io"], {}, [], None) == []


def test_a_source_switch_is_one_apt_transaction():
    command = apt_swap_command(["docker.io", "runc"], ["docker-ce", "docker-ce-cli"], None)
    assert command.endswith("docker-ce docker-ce-cli docker.io- runc-")


# Registry: auth by default, logins that follow the credentials, placement, port


def test_registry_auth_is_on_by_default_with_a_generated_password(pki_dir):
    first = _fake("m1")
    users = credentials(first)
    assert list(users) == ["pyinfra-swarm"] and len(users["pyinfra-swarm"]) >= 24
    assert credentials(first) == users  # made once, kept on the controller
    assert (pki_dir / "registry-password").stat().st_mode & 0o777 == 0o600
    assert credentials(_fake("m1", registry_anonymous=True)) == {}
    assert credentials(_fake("m1", registry_users={"ci": "pw"})) == {"ci": "pw"}


def _registry_plan(logins: dict[str, str], labels_on: str = "M1"):
    """The registry deploy on m1 (the acting manager and the registry's node), with these logins on m1."""
    label = {"pyinfra-swarm.registry": "true"}
    listing = nodes(node("M1", "m1", "manager", labels=label if labels_on == "M1" else {}),
                    node("M2", "m2", "manager", labels=label if labels_on == "M2" else {}))  # fmt: skip
    data = {"registry_mode": "service", "registry_node": "@fake/m1", "registry_users": {"ci": "pw"}}
    config = json.dumps({"auths": {registry: {"auth": ""} for registry in logins}})
    marker = [f"{registry} {digest}" for registry, digest in logins.items()]
    # The planned facts' Bundle on m1: CA file, the registry's stack file, its services, stacks, objects, logins.
    planned = ["", Bundle.SEPARATOR, "", Bundle.SEPARATOR, Bundle.SEPARATOR, Bundle.SEPARATOR, Bundle.SEPARATOR,
               config, "##logins##", *marker]  # fmt: skip
    managers = [host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=listing, extra={"##logins##": planned},
                     **data),
                host("m2", "10.1.0.2", swarm=swarm("M2", True), **data)]  # fmt: skip
    return commands(plan([configure_registry], managers)["m1"])


def test_the_acting_manager_logs_in_again_when_the_credentials_change():
    digest = login_digest("10.1.0.1:5000", "ci", "pw")
    fresh = _registry_plan({})
    assert "docker login --username ci --password-stdin 10.1.0.1:5000" in fresh
    assert any("pyinfra-swarm-logins" in c and digest in c for c in fresh)
    assert not any("docker login" in c for c in _registry_plan({"10.1.0.1:5000": digest}))
    assert any("docker login" in c for c in _registry_plan({"10.1.0.1:5000": "0123"}))  # another password
    assert any("docker login" in c for c in _registry_plan({"10.1.0.1:5000": ""}))  # logged in by hand


def test_registry_logins_fact_reads_no_credentials():
    from pyinfra_swarm.facts import RegistryLogins

    fact = RegistryLogins()
    assert 'cat "$HOME/.docker/config.json"' not in fact.command()  # the auth values are blanked on the host
    output = ['{"auths": {"r:5000": {"auth": ""}, "other:443": {"auth": ""}}}', "", "##logins##", "r:5000 abc"]
    assert fact.process(output) == {"other:443": "", "r:5000": "abc"}


def test_a_moved_registry_takes_its_node_label_along():
    cmds = _registry_plan({}, labels_on="M2")
    labels = next(c for c in cmds if "pyinfra-swarm.registry" in c and "node update" in c)
    assert labels.startswith("docker node update --label-rm pyinfra-swarm.registry M2")


def test_host_mode_registry_listens_on_its_port():
    assert "addr: :5443" in host_config(True, True, 5443)


# Stacks converge on their present spec; old object versions go


def _progress(template: dict, tasks: list[tuple[str, dict]], update: str = "none", replicas: str = "1/1"):
    status = json.dumps({"State": update, "StartedAt": "2026-11-29T00:00:00Z"} if update != "none" else None)
    lines = [f"replicas demo_web {replicas}", f"service\tS1\tdemo_web\t{status}\t{json.dumps(template)}"]
    lines += [f"task S1 {state} {json.dumps(spec)}" for state, spec in tasks]
    return stack_progress(lines)


def test_old_tasks_still_running_before_the_update_starts_are_not_convergence():
    new = {"ContainerSpec": {"Image": "r/app:1", "Env": ["GREETING=hi"], "StopGracePeriod": 10}, "ForceUpdate": 0}
    old = {"ContainerSpec": {"Image": "r/app:1", "Env": ["GREETING=hello"]}}
    early = _progress(new, [("running", old)])
    assert early["demo_web"]["stale"] == 1 and not converged(early)
    done = _progress(new, [("running", {"ContainerSpec": {"Image": "r/app:1", "Env": ["GREETING=hi"]}})])
    assert done["demo_web"] == {"running": 1, "desired": 1, "update": "none", "started": None, "current": 1,
                                "stale": 0}  # fmt: skip
    assert converged(done)
    assert not converged(_progress(new, [("running", new["ContainerSpec"] and new)], update="updating"))
    assert not converged({})


def test_old_versions_of_secrets_are_found_by_name():
    existing = ["db_pw_0123456789", "db_pw_abcdefabcd", "db_pw_extra", "other_0123456789", "db_pw"]
    assert stale_versions(existing, {"db_pw": "db_pw_abcdefabcd"}) == ["db_pw_0123456789"]


# Input checks and warnings


def test_ports_outside_1_65535_and_bad_data_path_addresses_are_refused():
    problems = validate_host_data(_fake("m1", swarm_advertise_addr="10.1.0.1", swarm_firewall_allow=["99999/tcp"],
                                        swarm_data_path_addr="not an address"))  # fmt: skip
    assert any("ports from 1 to 65535" in p for p in problems)
    assert any("swarm_data_path_addr 'not an address'" in p for p in problems)
    assert validate_host_data(_fake("m1", swarm_advertise_addr="10.1.0.1", swarm_firewall_allow=["9000:8000/tcp"]))


def test_clock_skew_and_small_mtus_are_reported(caplog):
    m1, m2 = _fake("m1"), _fake("m2")
    with caplog.at_level(logging.WARNING):
        warn_clock_skew({m1: 1000.0, m2: 1030.0}, 1000.5)
        warn_small_mtu({m1: "10.1.0.1"}, {m1: ({"eth0": ["10.1.0.1"]}, {"eth0": 1450})})
    assert "m2: its clock is +30 s off" in caplog.text and "m1: its clock" not in caplog.text
    assert "m1: eth0 has MTU 1450: overlay networks need mtu 1400 or less" in caplog.text


def test_the_acting_manager_is_one_that_stays_and_this_run_may_change():
    m1, m2, m3 = _fake("m1"), _fake("m2"), _fake("m3")
    member = LocalSwarm("active", control=True, cluster={"ID": "c1"})
    swarms = {m1: member, m2: member, m3: LocalSwarm("active", control=True)}  # m3 reaches no leader yet
    assert choose_primary([m1, m2, m3], [m1, m2, m3], [], swarms) == (m1, [m1, m2, m3], False)
    assert choose_primary([m1, m2, m3], [m2, m3], [], swarms)[0] is m2  # m1 is outside --limit
    assert choose_primary([m1, m2, m3], [m1, m2, m3], [m1], swarms)[0] is m2  # m1 is being taken out
    assert choose_primary([m3, m1], [m3, m1], [], swarms)[0] is m1  # one that knows the swarm goes first


def test_managers_in_two_swarms_stop_the_plan_and_locked_ones_are_only_unlocked():
    m1, m2 = _fake("m1"), _fake("m2")
    other = {m1: LocalSwarm("active", control=True, cluster={"ID": "c1"}),
             m2: LocalSwarm("active", control=True, cluster={"ID": "c2"})}  # fmt: skip
    with pytest.raises(DeployError, match=r"different swarms: m1 \(c1\), m2 \(c2\)"):
        choose_primary([m1, m2], [m1, m2], [], other)
    locked = {m1: LocalSwarm("locked"), m2: LocalSwarm("locked")}
    assert choose_primary([m1, m2], [m1, m2], [], locked) == (None, [], True)
