"""daemon.json: written only on change; reload for live-reloadable keys, restart otherwise."""

from __future__ import annotations

import json

import pytest

from pyinfra_swarm.deploys.daemon import apply_action, configure_daemon, render
from tests.unit.fakes import commands, host, plan

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
    assert reload[-1] == "systemctl reload docker.service"
    inactive = json.dumps({"LocalNodeState": "inactive"})
    restart = _plan(DEFAULT, {**DEFAULT, "mtu": 1400}, swarm=inactive)
    assert restart[-1] == "systemctl restart docker.service"


def test_a_swarm_node_restarts_drained_and_one_at_a_time():
    steps = _steps(DEFAULT, {**DEFAULT, "mtu": 1400})
    restart = steps[-1]
    assert restart.serial and "(managers, one at a time)" in restart[0]
    drain, command, restore = restart[1]
    assert command == "systemctl restart docker"
    assert drain.startswith("_drain('n1',") and restore.startswith("_restore('n1',")


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
