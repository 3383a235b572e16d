"""Backup and restore on a 1 manager + 3 worker lab running the demo and a secret: `backup.py` archives the
manager's swarm state to this machine; the manager's machine is then destroyed and rebuilt from scratch;
`restore.py` brings the swarm back there; the deploy afterwards converges with the services and the secret
of the backup, the workers the same nodes as before."""

from __future__ import annotations

import shutil
import tarfile

from tests.conftest import ROOT
from tests.e2e.test_faults import container, wait_for
from tests.e2e.test_stacks import stacks, wait_running
from tests.e2e.test_swarm import nodes


def test_backup_then_restore_on_a_rebuilt_manager(make_lab, tmp_path, docker_api):
    lab = make_lab("e2e-backup")
    lab.up("--managers", "1", "--workers", "3")
    templates = tmp_path / "stacks"
    shutil.copytree(ROOT / "templates" / "stacks", templates)
    (tmp_path / "kept").write_text("a-secret-kept-by-the-backup")
    data = stacks(templates)
    data["all"]["swarm_secrets"] = {"kept": {"file": str(tmp_path / "kept")}}
    cold = lab.deploy(group_data=data)
    assert cold.returncode == 0, cold
    before = {name: node["id"] for name, node in nodes(lab).items()}
    secrets = lab.sh("manager1", "docker secret ls --format '{{.Name}}'").split()

    backed_up = lab.deploy(group_data=data, file="backup.py")
    assert backed_up.returncode == 0, backed_up
    assert "one manager: Docker stops on manager1 while its state is archived" in backed_up.output
    [archive] = (lab.state_dir / "backups").glob("swarm-*-e2e-backup-manager1-*.tar.gz")
    assert oct((lab.state_dir / "backups").stat().st_mode & 0o777) == "0o700"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert {"swarm/raft", "swarm/certificates/swarm-node.crt"} <= set(names), names
    assert lab.ssh("manager1", "ls /var/tmp/pyinfra-swarm-backup.tar.gz").returncode != 0  # not left on the node
    wait_running(lab, "demo_web")

    # The manager's machine is lost: its container and its Docker volume destroyed, a fresh one made.
    info = docker_api.inspect_container(container(lab, "manager1"))
    docker_api.remove_container(info["Id"], force=True)
    for mount in info["Mounts"]:
        if mount["Type"] == "volume":
            docker_api.remove_volume(mount["Name"], force=True)
    lab.up("--managers", "1", "--workers", "3")
    assert lab.ssh("manager1", "command -v dockerd").returncode != 0

    restoring = {**data, "swarm_managers": {"swarm_restore_from": str(archive)}}
    restored = lab.deploy(group_data=restoring, file="restore.py")
    assert restored.returncode == 0, restored
    assert "Restore the swarm | Restore the swarm state here (--force-new-cluster)" in restored.changed, restored
    again = lab.deploy(group_data=restoring, file="restore.py")
    assert again.returncode == 0 and again.changed == [], again  # restored already: nothing to do
    assert "waiting for the cluster lock" not in again.output, again  # the backup run's lock didn't come back

    converged = lab.deploy(group_data=data)
    assert converged.returncode == 0, converged
    wait_for("every node Ready", lambda: all(n["state"] == "ready" for n in nodes(lab).values()))
    assert {name: node["id"] for name, node in nodes(lab).items()} == before  # the same nodes, no stale entry
    assert lab.sh("manager1", "docker secret ls --format '{{.Name}}'").split() == secrets
    wait_running(lab, "demo_web")
    assert lab.deploy(group_data=data).changed == []
