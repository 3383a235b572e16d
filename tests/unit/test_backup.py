"""Backup and restore planned: a follower backed up (never the leader when there is another manager), the
archive fetched and removed from the node; a restore refused beside a live swarm, a no-op once restored."""

from __future__ import annotations

import json

import pytest
from pyinfra.api.exceptions import PyinfraError

from pyinfra_swarm.deploys.backup import backup_swarm, restore_swarm
from tests.unit.fakes import commands, host, plan
from tests.unit.test_swarm import node, nodes, swarm


def _managers(tmp_path, **data):
    leader, follower = node("M1", "m1", "manager"), node("M2", "m2", "manager")
    follower["ManagerStatus"]["Leader"] = False
    listing = nodes(leader, follower, node("W1", "w1"))
    common = {"swarm_backup_dir": str(tmp_path / "backups"), **data}
    return [host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=listing, **common),
            host("m2", "10.1.0.2", swarm=swarm("M2", True), nodes=listing, **common)]  # fmt: skip


def test_the_backup_runs_on_a_follower_and_lands_on_the_controller(tmp_path):
    planned = plan(
        [backup_swarm],
        _managers(tmp_path),
        [host("w1", "10.1.0.3", swarm=swarm("W1", False), swarm_backup_dir=str(tmp_path / "backups"))],
    )
    assert commands(planned["m1"]) == [] and commands(planned["w1"]) == []
    steps = commands(planned["m2"])
    assert steps[0].startswith("systemctl stop docker.socket docker.service && (umask 077 && tar -czf ")
    assert steps[0].endswith("systemctl start docker.service; exit $status")  # Docker comes back whatever happens
    assert steps[-1].startswith("_fetch('/var/tmp/pyinfra-swarm-backup.tar.gz', ")  # 0600 here, removed there
    assert (tmp_path / "backups").stat().st_mode & 0o777 == 0o700


def test_a_restore_is_refused_beside_a_live_swarm_and_done_once(tmp_path):
    archive = tmp_path / "swarm.tar.gz"
    archive.write_bytes(b"backup")
    live = [host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=nodes(node("M1", "m1", "manager"))),
            host("m2", "10.1.0.2", swarm_restore_from=str(archive))]  # fmt: skip
    with pytest.raises(PyinfraError, match="@fake/m1 is a manager of the swarm: restoring a backup beside a live"):
        plan([restore_swarm], live)
    fresh = plan([restore_swarm], [host("m1", "10.1.0.1", swarm_restore_from=str(archive))])
    assert any(c.startswith("docker swarm init --force-new-cluster --advertise-addr 10.1.0.1") for c in
               commands(fresh["m1"]))  # fmt: skip
    restored = json.loads(swarm("M1", True))
    done = plan([restore_swarm], [host("m1", "10.1.0.1", swarm=json.dumps(restored), nodes=nodes(node("M1", "m1",
                "manager")), swarm_restore_from=str(archive))])  # fmt: skip
    assert commands(done["m1"]) == []
    with pytest.raises(PyinfraError, match=r"swarm_restore_from .* doesn't exist"):
        plan([restore_swarm], [host("m1", "10.1.0.1", swarm_restore_from=str(tmp_path / "nowhere"))])
