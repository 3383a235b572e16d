"""The cluster lock and the PKI directory's record, planned against fake managers: a held lock waits, then stops
naming its holder; a killed run's is broken once; another controller's PKI directory is refused before any
change, or taken over on request; a node trusting another registry CA is refused too."""

from __future__ import annotations

import json
import logging

import pytest
from pyinfra.api.exceptions import PyinfraError

from pyinfra_swarm import pki
from pyinfra_swarm.deploys.preflight import preflight
from pyinfra_swarm.lock import holder_of
from tests.unit.fakes import host, plan
from tests.unit.test_swarm import node, nodes, swarm

HOLDER = {"pyinfra-swarm.lock.run": "r1", "pyinfra-swarm.lock.who": "ci@runner (pid 7)",
          "pyinfra-swarm.lock.since": "2026-12-05T00:00:00Z",
          "pyinfra-swarm.lock.what": "pyinfra inv.py deploy.py"}  # fmt: skip
TAKE = "config create --label pyinfra-swarm.lock.run"


def _manager(lock: list[str], **data) -> tuple[str, dict]:
    return host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=nodes(node("M1", "m1", "manager")),
                extra={TAKE: lock}, **data)  # fmt: skip


def _held(silent: int) -> list[str]:
    return ["error Error response from daemon: config pyinfra-swarm.lock already exists",
            f"holder {json.dumps(HOLDER)} 1000", f"now {1000 + silent}"]  # fmt: skip


def test_the_holder_is_read_from_the_locks_labels():
    holder = holder_of(_held(42))
    assert holder is not None and (holder.who, holder.what, holder.silent) == ("ci@runner (pid 7)",
                                                                            "pyinfra inv.py deploy.py", 42)  # fmt: skip
    assert holder_of(["now 5"]) is None


def test_a_held_lock_stops_the_run_naming_its_holder_before_any_change():
    with pytest.raises(PyinfraError, match=r"another run holds the cluster lock: ci@runner \(pid 7\), running "
                                           r"`pyinfra inv.py deploy.py` since 2026-12-05T00:00:00Z"):  # fmt: skip
        plan([preflight], [_manager(_held(30), swarm_lock_wait=0)])


def test_a_killed_runs_lock_is_broken_once(caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(PyinfraError, match="could not be broken"):
        plan([preflight], [_manager(_held(700), swarm_lock_wait=0)])  # the fake still answers "held"
    assert "has had no heartbeat for 700 s (a run that was killed): broken" in caplog.text


SECRETS = {"swarm_secrets": {"db": {"value": "x"}}}  # puts the PKI directory's key into the swarm


def test_another_controllers_pki_directory_is_refused_then_taken_over(caplog):
    recorded = ["locked", "pki pyinfra-swarm.pki.0123456789abcdef"]
    refused = (
        r"is not the one this swarm was deployed with: the swarm was deployed with PKI directory "
        r"0123456789abcdef, this one is new \(no key yet\)"
    )
    with pytest.raises(PyinfraError, match=refused):
        plan([preflight], [_manager(recorded, **SECRETS)])
    assert pki.identity() is None  # refused before anything was made here
    with caplog.at_level(logging.WARNING):
        plan([preflight], [_manager(recorded, swarm_pki_takeover=True, **SECRETS)])
    assert "swarm_pki_takeover: this controller's PKI directory" in caplog.text and pki.identity()
    plan([preflight], [_manager(["locked", f"pki pyinfra-swarm.pki.{pki.identity()}"], **SECRETS)])  # its own
    plan([preflight], [_manager(recorded)])  # a swarm-only deploy puts nothing of it in the swarm: not checked


def test_nodes_trusting_another_registry_ca_are_refused():
    registry = {"registry_mode": "service", "registry_users": {"ci": "pw"}}
    manager = _manager(["locked"], **registry)
    manager[1]["fake_responses"]["/etc/docker/certs.d/"] = ["f" * 64 + " /etc/docker/certs.d/10.1.0.1:5000/ca.crt"]
    with pytest.raises(PyinfraError, match=r"@fake/m1 trusts another registry CA than this directory's \(it has none "
                                           r"yet\)"):  # fmt: skip
        plan([preflight], [manager])
