"""daemon.json: written only on change; reload for live-reloadable keys, restart otherwise."""

from __future__ import annotations

import json

import pytest

from pyinfra_swarm.deploys.daemon import RELOAD_COMMANDS, apply_action, configure_daemon, render
from pyinfra_swarm.deploys.engine import APPLY_STAGED, PUT_BACK, roll_engines
from pyinfra_swarm.facts import sha256_text
from tests.unit.fakes import ENGINE_RUNNING, commands, host, plan

ACTIVE = json.dumps({"LocalNodeState": "active", "NodeID": "n1", "ControlAvailable": True, "Cluster": {"ID": "c"}})
DEFAULT = {"log-driver": "json-file", "log-opts": {"max-file": "3", "max-size": "10m"}}


def _plan(current: dict | None, desired: dict, swarm: str | None = ACTIVE) -> list[str]:
    extra = {"--property SubState": ["Id=docker.service", "SubState=running", ""]}
    config = render(current) if current is not None else None
    entry = host("m1", "10.1.0.1", swarm=swarm, daemon_config=config, extra=extra, docker_daemon_config=desired)
    return commands(plan([configure_daemon], [entry])["m1"])


def test_unchanged_config_plans_nothing():
    assert _plan(DEFAULT, DEFAULT) == []


def test_first_write_before_docker_is_installed_needs_no_restart():
    cmds = _plan(None, DEFAULT, swarm=None)
    assert "upload /etc/docker/daemon.json" in cmds
    assert not any("systemctl" in c for c in cmds)


def _steps(current: dict, desired: dict, swarm: str | None = ACTIVE):
    entry = host("m1", "10.1.0.1", swarm=swarm, daemon_config=render(current), docker_daemon_config=desired,
                 extra={"--property SubState": ["Id=docker.service", "SubState=running", ""]})  # fmt: skip
    return plan([configure_daemon], [entry])["m1"]


def test_reloadable_change_reloads_and_other_change_restarts():
    reload = _plan(DEFAULT, {**DEFAULT, "insecure-registries": ["10.1.0.1:5000"]})
    assert reload[-2:] == RELOAD_COMMANDS
    inactive = json.dumps({"LocalNodeState": "inactive"})
    restart = _plan(DEFAULT, {**DEFAULT, "mtu": 1400}, swarm=inactive)
    assert restart[-1] == "systemctl restart docker.service"


def _turns(engine: list[str] | None = None, desired: dict | None = None, **kwargs) -> list:
    entry = host("m1", "10.1.0.1", swarm=ACTIVE, daemon_config=render(DEFAULT), docker_running=True, engine=engine,
                 docker_daemon_config=desired or DEFAULT, packages={"docker.io": "20.10.24"}, docker_source="distro",
                 **kwargs)  # fmt: skip
    return plan([configure_daemon, roll_engines], [entry])["m1"]


def test_a_swarm_node_stages_the_change_and_applies_it_in_its_drained_turn():
    steps = _turns(desired={**DEFAULT, "mtu": 1400})
    assert "upload /etc/pyinfra-swarm/daemon.json.next" in commands(steps)
    assert not any(c.split()[-1] == "/etc/docker/daemon.json" for c in commands(steps))
    turn = steps[-1]
    assert turn.serial and "(managers, one at a time)" in turn[0]
    [call] = turn[1]
    assert call.startswith("turn('n1', ['@fake/m1'], [" + repr(APPLY_STAGED) + ", 'systemctl restart docker.service', ")
    assert repr([PUT_BACK, "systemctl restart docker.service"]) in call and "'a new daemon.json')" in call


@pytest.mark.parametrize(
    ("engine", "why"),
    [
        ([*ENGINE_RUNNING[:1], "exe=/usr/sbin/dockerd (deleted)", *ENGINE_RUNNING[2:]],
         "the engine was upgraded but the old one still runs"),
        ([*ENGINE_RUNNING[:2], "started=1700000000.50", "config_time=1800000000", "config=abc"],
         "daemon.json changed after the engine started"),
    ],
)  # fmt: skip
def test_a_restart_left_pending_on_the_node_is_its_turn(engine, why):
    [turn] = _turns(engine)
    assert turn.serial and turn[1][0].startswith("turn('n1', ['@fake/m1'], ['systemctl restart docker.service'], [], ")
    assert turn[1][0].endswith(f"{why!r})")


def test_a_reload_is_recorded_so_a_newer_daemon_json_is_not_a_pending_restart():
    engine = [*ENGINE_RUNNING[:2], "started=1700000000.50", "config_time=1800000000", "config=abc",
              "reloaded=100 abc"]  # fmt: skip
    assert _turns(engine) == []


def test_staged_already_is_not_staged_again_and_data_reverted_drops_it():
    desired = {**DEFAULT, "mtu": 1400}
    staged = [*ENGINE_RUNNING, f"staged={sha256_text(render(desired))}"]
    steps = _turns(staged, desired)
    assert [step[0] for step in steps] == ["Engine maintenance, one node at a time | Restart Docker in the node's turn "
                                           "(managers, one at a time)"]  # fmt: skip
    reverted = _turns([*ENGINE_RUNNING, "staged=0123"], DEFAULT)
    assert commands(reverted) == ["rm -f /etc/pyinfra-swarm/daemon.json.next"]


@pytest.mark.parametrize(
    ("current", "desired", "action"),
    [
        (None, {}, None),
        (None, {"mtu": 1400}, "restart"),
        ({}, {}, None),
        ({"debug": False}, {"debug": True}, "reload"),
        ({"debug": True, "mtu": 1500}, {"debug": True}, "restart"),
        ({"__invalid__": "{oops"}, {}, "restart"),
    ],
)
def test_apply_action(current, desired, action):
    assert apply_action(current, desired) == action


def test_render_is_stable():
    assert render({"b": 1, "a": {"d": 2, "c": 3}}) == render({"a": {"c": 3, "d": 2}, "b": 1})
