"""Packaging and platforms on a lab of their own (1 manager + 1 worker, Debian 12):
- the wheel, installed into a clean venv, deploys from a folder laid out like a user's own repository;
- the Docker CE path with real apt: a signed mirror laid out like download.docker.com (tests/e2e/
  docker_ce_mirror.py) installs, pins and switches sources both ways, and a wrong key or an unreachable
  mirror stops the run before any package changes.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import BIN, ROOT, run
from tests.e2e import docker_ce_mirror
from tests.e2e.conftest import Lab, module_lab
from tests.e2e.test_swarm import SWARM_ONLY, nodes

VERSIONS = ["20.10.24", "20.10.25"]  # the mirror's docker-ce versions (Debian 12's engine, repackaged)
PINNED = "5:{}-1~debian.12~bookworm"
USER_DEPLOY = '''"""My swarm: pyinfra inventory.py deploy.py"""
from pyinfra_swarm.deploys.cluster import swarm_cluster
swarm_cluster()
'''


@pytest.fixture(scope="module")
def pkg_lab(lab_dir: Path, docker_api: docker.APIClient) -> Iterator[Lab]:
    """One lab for the module: the wheel's deploy forms its swarm, the Docker CE test switches its engine."""
    yield from module_lab(lab_dir, docker_api, "e2e-pkg", "--managers", "1", "--workers", "1")


def user_inventory(lab: Lab) -> str:
    """An inventory as a user writes one: hosts, SSH settings and advertise addresses, nothing of the lab's code."""
    groups: dict[str, list] = {"swarm_managers": [], "swarm_workers": []}
    for node in lab.nodes:
        data = {"ssh_user": "root", "ssh_key": str(lab.state_dir / "id_ed25519"), "swarm_advertise_addr":
                node["address"], "ssh_known_hosts_file": str(lab.state_dir / "known_hosts")}  # fmt: skip
        group = "swarm_managers" if node["node"].startswith("manager") else "swarm_workers"
        groups[group].append((node["address"], data))
    return "".join(f"{group} = {hosts!r}\n" for group, hosts in groups.items())


def test_the_wheel_deploys_from_a_users_own_repository(pkg_lab: Lab, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = run([str(BIN / "python"), "-m", "build", "--outdir", str(dist), str(ROOT)], timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    archives = sorted(dist.iterdir(), key=lambda p: p.suffix)
    assert [p.suffix for p in archives] == [".gz", ".whl"], archives
    checked = run([str(BIN / "twine"), "check", "--strict", *map(str, archives)])
    assert checked.returncode == 0 and checked.stdout.count("PASSED") == 2, checked.stdout + checked.stderr

    venv = tmp_path / "venv"
    assert run([str(BIN / "python"), "-m", "venv", str(venv)]).returncode == 0
    installed = run([str(venv / "bin/pip"), "install", "-q", str(archives[1])], timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    # The lab's extra (Docker's SDK) stays out of the core install; the CLI still answers.
    assert run([str(venv / "bin/python"), "-c", "import docker"]).returncode != 0
    assert run([str(venv / "bin/pyinfra-swarm"), "--help"]).returncode == 0

    repo = tmp_path / "my-swarm"
    (repo / "group_data").mkdir(parents=True)
    (repo / "inventory.py").write_text(user_inventory(pkg_lab))
    (repo / "group_data/all.py").write_text("".join(f"{k} = {v!r}\n" for k, v in
                                                    {**SWARM_ONLY, "docker_source": "distro"}.items()))  # fmt: skip
    (repo / "deploy.py").write_text(USER_DEPLOY)
    assert len(USER_DEPLOY.splitlines()) == 3

    def deploy() -> subprocess.CompletedProcess:
        env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
               "PYINFRA_SWARM_PKI_DIR": str(tmp_path / "pki")}  # fmt: skip
        return subprocess.run([str(venv / "bin/pyinfra"), "-y", "inventory.py", "deploy.py"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip

    first = deploy()
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    swarm = nodes(pkg_lab)
    assert {name: (n["role"], n["state"]) for name, n in swarm.items()} == {
        "manager1": ("manager", "ready"), "worker1": ("worker", "ready")}  # fmt: skip
    # Init and join are separate operations, in that order (a wheel once merged them: see __init__.py).
    output = first.stdout + first.stderr
    assert output.index("Initialise the swarm") < output.index("Join the swarm as a worker")
    again = deploy()
    assert again.returncode == 0
    results = (again.stdout + again.stderr).split("--> Results:")[-1]
    assert re.search(r"Grand total\s+\d+\s+-\s+-\s+\d+", results), results


@pytest.fixture(scope="module")
def mirror(pkg_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The signed mirror, served to the lab's nodes from the lab's gateway: {"good", "wrong", "down": URL}.
    `wrong` serves the same repository with another key at /debian/gpg; nothing listens at `down`."""
    root = tmp_path_factory.mktemp("mirror")
    pool = root / "good/debian/pool/stable"
    pool.mkdir(parents=True)
    docker_ce_mirror.build_packages(pool, VERSIONS)
    good, wrong = docker_ce_mirror.Signer("docker-mirror"), docker_ce_mirror.Signer("someone-else")
    try:
        docker_ce_mirror.write_index(root / "good", good)
        (root / "wrong/debian").mkdir(parents=True)
        shutil.copytree(root / "good/debian/dists", root / "wrong/debian/dists")
        (root / "wrong/debian/pool").symlink_to(root / "good/debian/pool")
        (root / "wrong/debian/gpg").write_text(wrong.public_key())
        # An older setup on worker1, from Docker's earlier docs: docker.list with another Signed-By.
        keyring = subprocess.run(["gpg", "--dearmor"], input=good.public_key().encode(), capture_output=True).stdout
        gateway = pkg_lab.sh("manager1", "ip -4 route show default").split()[2]
        with docker_ce_mirror.serve(root) as port:
            base = f"http://{gateway}:{port}"
            old = "/usr/share/keyrings/docker-archive-keyring.gpg"
            pkg_lab.sh("worker1", f"echo {base64.b64encode(keyring).decode()} | base64 -d > {old} && echo 'deb "
                                  f"[arch=amd64 signed-by={old}] {base}/good/debian bookworm stable' "
                                  "> /etc/apt/sources.list.d/docker.list")  # fmt: skip
            yield {"good": f"{base}/good", "wrong": f"{base}/wrong", "down": f"http://{gateway}:1"}
    finally:
        good.close()
        wrong.close()


def engine(lab: Lab, node: str) -> dict:
    """What a node's apt and Docker say: installed engine packages with versions, held ones, the engine's
    version, whether Docker runs, and the apt sources of Docker."""
    script = ("dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\\n' docker.io docker-ce docker-ce-cli "
              "containerd.io containerd runc 2>/dev/null | awk '$1 ~ /^[ih]i/ {print $2, $3}'; echo --; "
              "apt-mark showhold; echo --; systemctl is-active docker; docker version -f '{{.Server.Version}}'; "
              "echo --; ls /etc/apt/sources.list.d/")  # fmt: skip
    packages, held, service, sources = lab.sh(node, script).split("--\n")
    return {
        "packages": dict(line.split() for line in packages.splitlines()),
        "held": held.split(),
        "running": service.split()[0] == "active",
        "version": service.split()[1],
        "sources": sources.split(),
    }


def apt_update(lab: Lab, node: str) -> str:
    result = lab.ssh(node, "apt-get update -q 2>&1")
    assert result.returncode == 0 and "E:" not in result.stdout, result.stdout
    return result.stdout


def test_docker_ce_from_a_signed_mirror_installs_pins_and_switches_back(pkg_lab: Lab, mirror: dict) -> None:
    base = {**SWARM_ONLY, "docker_source": "distro"}
    assert pkg_lab.deploy(group_data={"all": base}).returncode == 0  # formed (a no-op after the wheel's test)
    ids = {name: n["id"] for name, n in nodes(pkg_lab).items()}
    apt_update(pkg_lab, "worker1")  # the older docker.list works on its own

    # A wrong key, then an unreachable mirror: a clear error, and nothing changed on any node.
    for url, says in [(mirror["wrong"], "failed (a wrong key, or not reachable)"),
                      (mirror["down"], "can't fetch the signing key")]:  # fmt: skip
        failed = pkg_lab.deploy(group_data={"all": {**base, "docker_source": "docker-ce", "docker_ce_repo_url": url}})
        assert failed.returncode != 0
        assert failed.output.count(says) >= 2 and "nothing was changed; check docker_ce_repo_url" in failed.output
        for node in ("manager1", "worker1"):
            state = engine(pkg_lab, node)
            assert "docker.io" in state["packages"] and state["running"], state
            assert "docker.sources" not in state["sources"]
            apt_update(pkg_lab, node)
    assert "NO_PUBKEY" in pkg_lab.outputs[-2] or "not signed" in pkg_lab.outputs[-2]

    # The mirror, pinned: docker-ce replaces docker.io in one transaction per node, drained, one at a time.
    ce = {**base, "docker_source": "docker-ce", "docker_ce_repo_url": mirror["good"]}
    switched = pkg_lab.deploy(group_data={"all": {**ce, "docker_version": PINNED.format(VERSIONS[0])}})
    assert switched.returncode == 0, switched
    assert ("Engine maintenance, one node at a time | Restart Docker in the node's turn (managers, one at a time)"
            in switched.changed)  # fmt: skip
    for node in ("manager1", "worker1"):
        state = engine(pkg_lab, node)
        assert state["packages"].get("docker-ce") == PINNED.format(VERSIONS[0]), state
        assert "docker.io" not in state["packages"] and "containerd" not in state["packages"]
        assert {"docker-ce", "docker-ce-cli"} <= set(state["held"]) and state["running"]
        assert "Conflicting" not in apt_update(pkg_lab, node)
    assert "docker.list.pyinfra-swarm-disabled" in engine(pkg_lab, "worker1")["sources"]
    swarm = nodes(pkg_lab)
    assert {name: (n["id"], n["state"]) for name, n in swarm.items()} == {n: (i, "ready") for n, i in ids.items()}

    # Again: nothing to do.
    same = pkg_lab.deploy(group_data={"all": {**ce, "docker_version": PINNED.format(VERSIONS[0])}})
    assert same.returncode == 0 and same.changed == [], same.changed

    # A new pin: the newer package, still held.
    bumped = pkg_lab.deploy(group_data={"all": {**ce, "docker_version": PINNED.format(VERSIONS[1])}})
    assert bumped.returncode == 0, bumped
    for node in ("manager1", "worker1"):
        state = engine(pkg_lab, node)
        assert state["packages"]["docker-ce"] == PINNED.format(VERSIONS[1]) and state["running"], state
        assert {"docker-ce", "docker-ce-cli"} <= set(state["held"])

    # Back to the distribution's docker.io, unpinned: Docker's packages go in the same transaction.
    back = pkg_lab.deploy(group_data={"all": base})
    assert back.returncode == 0, back
    for node in ("manager1", "worker1"):
        state = engine(pkg_lab, node)
        assert "docker.io" in state["packages"] and "docker-ce" not in state["packages"], state
        assert state["held"] == [] and state["running"]
        assert "docker.sources" not in state["sources"]  # what the switch to docker-ce added is gone
        apt_update(pkg_lab, node)
    swarm = nodes(pkg_lab)
    assert {name: (n["id"], n["state"]) for name, n in swarm.items()} == {n: (i, "ready") for n, i in ids.items()}
    assert json.dumps(pkg_lab.outputs).count("Conflicting values") == 0
