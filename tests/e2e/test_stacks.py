"""The demo on the lab: the cluster's own registry (TLS, auth), an image built on a manager and pushed,
templated stacks deployed only when they change, convergence waited for, failures reported; then, on the
same lab, backup and restore. The lab has no IPVS: the demo stack uses DNS round robin and host-mode ports
there (its group data says so)."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import Lab, module_lab
from tests.e2e.test_faults import container, wait_for
from tests.e2e.test_swarm import can_connect, nodes

SECRET_VALUE = "a-secret-value-for-the-test"
DEMO_VARS = {"demo_version": "1", "greeting": "hello", "web_replicas": 3, "web_port": 8080}


def stacks(templates: Path, *extra: dict, demo_vars: dict | None = None) -> dict:
    """Group data that lists the demo stack (with `demo_vars`) and `extra` stacks, from `templates`."""
    demo = {"name": "demo", "template": "demo.yml.j2", "timeout": 180, "vars": demo_vars or DEMO_VARS}
    return {"all": {"swarm_stacks_dir": str(templates), "swarm_stacks": [demo, *extra]}}


def services(lab: Lab) -> dict[str, set[str]]:
    """Service name -> the IDs of its running tasks (a service that was rolled has new ones)."""
    raw = lab.sh("manager1", "docker service ls -q | xargs -n1 docker service ps -q --filter desired-state=running "
                             "--format '{{.ID}} {{.Name}}'")  # fmt: skip
    running: dict[str, set[str]] = {}
    for line in raw.splitlines():
        task_id, name = line.split()
        running.setdefault(name.rsplit(".", 1)[0], set()).add(task_id)
    return running


def wait_running(lab: Lab, service: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replicas = lab.sh("manager1", f"docker service ls --filter name={service} --format '{{{{.Replicas}}}}'").split()
        if replicas and replicas[0].split("/")[0] == replicas[0].split("/")[1] != "0":
            return
        time.sleep(2)
    raise AssertionError(f"{service} did not come back")


@pytest.fixture(scope="module")
def demo_lab(lab_dir: Path, docker_api: docker.APIClient) -> Iterator[Lab]:
    """1 manager + 3 workers: the demo's test, then the backup's on what it left."""
    yield from module_lab(lab_dir, docker_api, "e2e-demo", "--managers", "1", "--workers", "3")


def test_demo_stack_on_the_cluster_registry(demo_lab: Lab, tmp_path, docker_api):
    lab = demo_lab
    templates = tmp_path / "stacks"
    shutil.copytree(ROOT / "templates" / "stacks", templates)

    cold = lab.deploy("-v", group_data=stacks(templates))
    assert cold.returncode == 0, cold
    assert "stack demo: every service converged" in cold.output

    registry = f"{lab.address('manager1')}:5000"
    tasks = lab.sh("manager1", "docker stack ps demo --filter desired-state=running --format '{{.Name}} {{.Node}} "
                               "{{.CurrentState}} {{.Image}}'").splitlines()  # fmt: skip
    web = [t.split() for t in tasks if t.startswith("demo_web.")]
    assert len(web) == 3 and {t[1] for t in web} == {"e2e-demo-worker1", "e2e-demo-worker2", "e2e-demo-worker3"}
    assert all(t[2] == "Running" and t[-1] == f"{registry}/demo-app:1" for t in web), tasks

    # The registry speaks TLS with the cluster's CA and wants a login.
    ca = f"/etc/docker/certs.d/{registry}/ca.crt"
    probe = lab.ssh("worker2", f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {ca} https://{registry}/v2/")
    assert probe.stdout == "401", probe.stdout + probe.stderr
    assert lab.ssh("worker2", f"curl -s https://{registry}/v2/").returncode != 0  # untrusted without the CA

    # The client reaches replicas on at least two nodes by the service's name.
    time.sleep(4)
    answers = lab.sh("manager1", "docker service logs --raw demo_client --tail 20")
    answered = {line.rsplit(" from ", 1)[1] for line in answers.splitlines() if " from " in line}
    assert len(answered) >= 2, answers

    # A request from the lab host to a host-mode published port answers.
    with urllib.request.urlopen(f"http://{lab.address('worker1')}:8080/", timeout=5) as response:
        assert response.read().decode().startswith("hello from e2e-demo-worker1")

    # No change: nothing deployed again.
    before = services(lab)
    again = lab.deploy("-vv", group_data=stacks(templates))
    assert again.returncode == 0, again
    assert again.changed == [] and "docker stack deploy" not in again.output, again
    assert services(lab) == before

    # A template variable bumped: just that service is updated.
    bumped = lab.deploy(group_data=stacks(templates, demo_vars={**DEMO_VARS, "greeting": "hi"}))
    assert bumped.returncode == 0, bumped
    after = services(lab)
    assert after["demo_web"] != before["demo_web"]
    assert after["demo_client"] == before["demo_client"] and after["registry_registry"] == before["registry_registry"]
    with urllib.request.urlopen(f"http://{lab.address('worker2')}:8080/", timeout=5) as response:
        assert response.read().decode().startswith("hi from")

    # A failed update (an image that doesn't exist): the services this deploy changed are rolled back to their
    # previous spec and named, with no traceback; the same data again deploys again and fails again (never
    # "no change" over a stack that isn't what data asks for); the stack runs the previous version throughout.
    missing = stacks(templates, demo_vars={**DEMO_VARS, "greeting": "hi", "demo_version": "9"})
    missing["all"]["swarm_stacks"][0]["timeout"] = 60
    for _ in range(2):
        failed = lab.deploy(group_data=missing)
        assert failed.returncode != 0 and "Traceback" not in failed.output, failed
        assert "stack demo: update demo_client paused" in failed.output or "demo_web paused" in failed.output, failed
        assert "rolled back to the spec before this deploy: demo_client, demo_web (on_failure: rollback)" in (
            failed.output), failed  # fmt: skip
        assert "Stacks | Deploy stack demo" not in failed.changed
        assert_running(lab, "demo_web", f"{registry}/demo-app:1", 3)
    # on_failure: pause leaves Docker's pause, says so, and the run after it fails again, still.
    missing["all"]["swarm_stacks"][0]["on_failure"] = "pause"
    paused = lab.deploy(group_data=missing)
    assert paused.returncode != 0 and "left as Docker paused it (on_failure: pause)" in paused.output, paused
    assert lab.deploy(group_data=missing).returncode != 0
    back = lab.deploy(group_data=stacks(templates, demo_vars={**DEMO_VARS, "greeting": "hi"}))
    assert back.returncode == 0 and "stack demo: every service converged" in back.output, back
    assert_running(lab, "demo_web", f"{registry}/demo-app:1", 3)

    # The registry's port is for the cluster's peers: worker2 got its 401 above, this machine (not a peer) is
    # refused, though the port is published through Docker's DNAT (not INPUT).
    assert not can_connect(lab.address("manager1"), 5000)

    # A new registry password: the registry gets the new htpasswd, the acting manager logs in again, and an
    # image built afterwards is pushed with it (a stale login fails the push with 401) and deployed; the old
    # htpasswd version is removed once nothing uses it.
    first_password = (lab.state_dir / "pki" / "registry-password").read_text().strip()
    (lab.state_dir / "pki" / "registry-password").write_text("a-new-password-for-this-test\n")
    version2 = stacks(templates, demo_vars={**DEMO_VARS, "greeting": "hi", "demo_version": "2"})
    version2["all"]["docker_images"] = [{"name": "demo-app", "context": "images/demo-app", "tag": "2"}]
    # A secret from a file (pyinfra's --debug prints every group data value it loads, so values stay out of it).
    (tmp_path / "demo_token").write_text(SECRET_VALUE)
    version2["all"]["swarm_secrets"] = {"demo_token": {"file": str(tmp_path / "demo_token")}}
    started_at = time.time()
    renewed = lab.deploy("-vv", "--debug", group_data=version2)  # the most pyinfra ever prints
    assert renewed.returncode == 0, renewed
    assert "Image registry | Log in to " + registry in renewed.changed, renewed
    assert lab.sh("manager1", "docker secret ls --format '{{.Name}}'").count("registry_htpasswd_") == 1
    running = lab.sh("manager1", "docker service ps demo_web --filter desired-state=running --format '{{.Image}}'")
    assert running.split() == [f"{registry}/demo-app:2"] * 3, running

    # An image pushed before the registry's container restarts is still pullable after it (named volume).
    lab.sh("manager1", "docker kill $(docker ps -q --filter label=com.docker.swarm.service.name=registry_registry)")
    wait_running(lab, "registry_registry")
    time.sleep(2)
    pull = lab.ssh("manager1", f"docker pull -q {registry}/demo-app:2")
    assert pull.returncode == 0, pull.stdout + pull.stderr

    # A stack whose service can't start fails the deploy within its timeout, with the task's error; the other
    # stacks are left alone.
    (templates / "broken.yml.j2").write_text(
        'version: "3.8"\nservices:\n  app:\n    image: "{{ registry }}/no-such-image:1"\n'
    )
    before = services(lab)
    started = time.monotonic()
    broken_data = stacks(templates, {"name": "broken", "template": "broken.yml.j2", "timeout": 30},
                         demo_vars={**DEMO_VARS, "greeting": "hi", "demo_version": "2"})  # fmt: skip
    broken_data["all"]["docker_images"] = version2["all"]["docker_images"]
    broken = lab.deploy(group_data=broken_data)
    assert broken.returncode != 0
    assert time.monotonic() - started < 150
    assert "stack broken did not converge within 30 s; failing tasks: broken_app.1" in broken.output, broken
    assert "No such image" in broken.output or "manifest unknown" in broken.output or "not found" in broken.output
    assert {k: v for k, v in services(lab).items() if not k.startswith("broken_")} == before
    assert nodes(lab)["worker1"]["state"] == "ready"

    # The registry killed during an image push (and kept down until the push has failed): the run fails
    # there; the next one builds the image (from cache) and pushes it again, the stack rolls to it, and
    # images pushed before are still in the registry.
    context = tmp_path / "demo-app-3"
    shutil.copytree(ROOT / "images" / "demo-app", context)
    with (context / "Dockerfile").open("a") as dockerfile:
        dockerfile.write("COPY padding /padding\n")  # 20 MB of layer: a push that lasts
    (context / "padding").write_bytes(os.urandom(20_000_000))
    version3 = stacks(templates, demo_vars={**DEMO_VARS, "greeting": "hi", "demo_version": "3"})
    version3["all"]["docker_images"] = [{"name": "demo-app", "context": str(context), "tag": "3"}]
    version3["all"]["swarm_secrets"] = version2["all"]["swarm_secrets"]
    killed = kill_registry_while(lambda: lab.deploy(group_data=version3), lab, docker_api)
    assert killed.returncode != 0, killed
    assert "Images | Build " + registry + "/demo-app:3 and push it" not in killed.changed, killed
    wait_running(lab, "registry_registry")
    pushed = lab.deploy(group_data=version3)
    assert pushed.returncode == 0, pushed
    assert "Images | Build " + registry + "/demo-app:3 and push it" in pushed.changed, pushed
    running = lab.sh("manager1", "docker service ps demo_web --filter desired-state=running --format '{{.Image}}'")
    assert running.split() == [f"{registry}/demo-app:3"] * 3, running
    assert lab.ssh("manager1", f"docker pull -q {registry}/demo-app:2").returncode == 0  # kept in the volume

    # The registry's certificate renewed on request (same CA): the registry rolls to it and pulls still work;
    # the same request again changes nothing.
    cert_file = lab.state_dir / "pki" / f"registry-{lab.address('manager1')}.crt"
    old_cert = cert_file.read_text()
    names = "{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}} {{end}}"
    tls_secret = f"docker service inspect registry_registry --format '{names}'"
    old_secrets = lab.sh("manager1", tls_secret).split()
    version3["all"]["swarm_rotate"] = {"registry_cert": "2026-11"}
    renewed = lab.deploy(group_data=version3)
    assert renewed.returncode == 0, renewed
    assert "Swarm credentials | Rotate registry_cert (request 2026-11)" in renewed.changed, renewed
    assert cert_file.read_text() != old_cert
    assert set(lab.sh("manager1", tls_secret).split()) != set(old_secrets)
    wait_running(lab, "registry_registry")
    assert lab.ssh("manager1", f"docker pull -q {registry}/demo-app:3").returncode == 0  # the new certificate trusted
    assert lab.deploy(group_data=version3).changed == []

    assert_no_secret_printed(lab, first_password, SECRET_VALUE)
    assert_no_secret_in_repo(started_at, lab, first_password, SECRET_VALUE)
    assert_tight_modes(lab, registry)


def test_backup_then_restore_on_a_rebuilt_manager(demo_lab: Lab, tmp_path, docker_api):
    """On the demo's lab, with a secret added: `backup.py` archives the manager's swarm state to this machine;
    the manager's machine is then destroyed and rebuilt from scratch; `restore.py` brings the swarm back there;
    the deploy afterwards converges with the services and the secret of the backup, the workers the same nodes
    as before."""
    lab = demo_lab
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
    [archive] = (lab.state_dir / "backups").glob("swarm-*-e2e-demo-manager1-*.tar.gz")
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


def assert_running(lab: Lab, service: str, image: str, replicas: int) -> None:
    running = lab.sh("manager1", f"docker service ps {service} --filter desired-state=running --format "
                                 "'{{.Image}} {{.CurrentState}}'").splitlines()  # fmt: skip
    assert [line.split()[:2] for line in running] == [[image, "Running"]] * replicas, running


def kill_registry_while(deploy, lab: Lab, docker_api: docker.APIClient):
    """Run `deploy`; from the moment an image build starts on manager1 until the deploy ends, kill the
    registry's container there whenever swarm starts it again."""
    manager = next(n["container"] for n in lab.nodes if n["node"] == "manager1")
    kill = "docker ps -q --filter label=com.docker.swarm.service.name=registry_registry | xargs -r docker kill"
    done = threading.Event()

    def killer() -> None:
        def sh(command: str) -> bytes:
            return docker_api.exec_start(docker_api.exec_create(manager, ["sh", "-c", command]))

        while not done.is_set() and not sh("pgrep -f 'docker (build|push)' || true").strip():
            time.sleep(0.2)
        while not done.is_set():
            sh(kill)
            time.sleep(0.3)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        return deploy()
    finally:
        done.set()
        thread.join()


def secrets_of(lab: Lab, *others: str) -> list[str]:
    """What must never be printed or copied: the registry's password, its TLS key and the CA's key (a line of
    each), and the values given."""
    pki = lab.state_dir / "pki"
    keys = [next(pki.glob(pattern)).read_text().splitlines()[1] for pattern in ("registry-*.key", "ca.key")]
    return [(pki / "registry-password").read_text().strip(), *keys, *others]


def assert_no_secret_printed(lab: Lab, *others: str) -> None:
    for output in lab.outputs:
        for secret in secrets_of(lab, *others):
            assert secret not in output


def assert_no_secret_in_repo(since: float, lab: Lab, *others: str) -> None:
    """No file in the repository that changed during the deploys holds a secret."""
    skip = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"}
    for path in ROOT.rglob("*"):
        if skip & set(path.relative_to(ROOT).parts) or not path.is_file() or path.stat().st_mtime < since:
            continue
        text = path.read_bytes().decode(errors="replace")
        assert not [s for s in secrets_of(lab, *others) if s in text], f"{path} holds a secret"


def assert_tight_modes(lab: Lab, registry: str) -> None:
    """The controller's PKI is its owner's only; nodes hold the CA certificate (public), never the registry's
    TLS key outside the swarm secret's mount in the registry's own container."""
    pki = lab.state_dir / "pki"
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    for name in ["ca.key", "registry-password", *(p.name for p in pki.glob("registry-*.key"))]:
        assert stat.S_IMODE((pki / name).stat().st_mode) == 0o600, name
    key_line = secrets_of(lab)[1]
    for node in ("manager1", "worker1"):
        assert lab.sh(node, f"stat -c %a /etc/docker/certs.d/{registry}/ca.crt /etc/docker/daemon.json").split() == [
            "644", "644"]  # fmt: skip
        found = lab.ssh(node, f"grep -rlsF -- '{key_line}' /etc /root /home /tmp /opt /var/lib/docker/volumes")
        assert found.stdout == "", f"{node}: the registry's TLS key is on disk: {found.stdout}"
    assert lab.sh("manager1", "stat -c %a /root/.docker/config.json").strip() == "600"


BAD_STACKS = {
    "undefined.yml.j2": (
        'version: "3.8"\nservices:\n  app:\n    image: "{{ nope }}"\n',
        "undefined.yml.j2:4: 'nope' is undefined",
    ),
    "invalid.yml.j2": ('services:\n  app: [unclosed\n', "rendered YAML is invalid at line 3"),
    "empty.yml.j2": ('version: "3.8"\nnetworks: {}\n', "`services` must be a non-empty map of services"),
    "noimage.yml.j2": ('services:\n  app:\n    command: ["true"]\n', "service 'app' has no image"),
    "unknown.yml.j2": ('servics:\n  app:\n    image: x\n', "unknown top-level key(s) servics"),
}  # fmt: skip


def test_bad_stack_input_is_refused_before_anything_is_uploaded(make_lab, tmp_path):
    lab = make_lab("e2e-bad-stacks")
    lab.up("--managers", "1", "--workers", "1")
    templates = tmp_path / "stacks"
    templates.mkdir()
    for name, (text, _) in BAD_STACKS.items():
        (templates / name).write_text(text)
    bare = {"registry_mode": None, "docker_images": [], "docker_image_archives": [], "swarm_stacks_dir": str(templates)}
    for name, (_, message) in BAD_STACKS.items():
        run = lab.deploy(group_data={"all": {**bare, "swarm_stacks": [{"name": "bad", "template": name}]}})
        assert run.returncode != 0 and f"stack bad: {templates / name}" in run.output and message in run.output, run
    missing = lab.deploy(group_data={"all": {**bare, "swarm_stacks": [{"name": "bad", "template": "nowhere.yml.j2"}]}})
    assert missing.returncode != 0 and "nowhere.yml.j2: no such stack template" in missing.output, missing
    secret = lab.deploy(group_data={"all": {**bare, "swarm_secrets": {"db": {"file": str(tmp_path / "absent")}}}})
    assert secret.returncode != 0 and f"swarm_secrets['db']: file {tmp_path / 'absent'} doesn't exist" in secret.output
    # Nothing was changed on any node: Docker isn't even installed yet.
    for node in ["manager1", "worker1"]:
        assert lab.ssh(node, "command -v dockerd").returncode != 0
