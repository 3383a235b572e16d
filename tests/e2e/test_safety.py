"""Day-2 safety on a 3 manager + 2 worker lab: the deploy never takes the cluster down, and never reports
success over a cluster that isn't what data asks for.
- a task that stops slowly: the first node's drain fails, it gets its availability back, the rollout stops
  there; once the task is fixed, the next run finishes the rollout from what the nodes say is pending;
- Ctrl-C while a node is drained: a --limit run of another host gives it back, a full run finishes;
- a controller killed (SIGKILL) in a node's turn: its lock is reported, refused naming its holder, broken on
  request, and the run after that finishes its work;
- two runs started together: one waits for the other's lock; never two nodes drained at once;
- a second controller's PKI directory refused before any change, taken over on request;
- a backup through a sudo user: nothing staged where other users could read it.
A watcher polls the node list all along: `most` is the largest number of nodes it saw drained at once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import BIN, ROOT, cli
from tests.e2e.conftest import Lab, Run, module_lab
from tests.e2e.test_day2 import BUSYBOX
from tests.e2e.test_faults import container, wait_for
from tests.e2e.test_swarm import SWARM_ONLY, engine_restarts, nodes

NODES = ["manager1", "manager2", "manager3", "worker1", "worker2"]
STAGED = "/etc/pyinfra-swarm/daemon.json.next"


@pytest.fixture(scope="module")
def lab(lab_dir: Path, docker_api: docker.APIClient) -> Iterator[Lab]:
    yield from module_lab(lab_dir, docker_api, "e2e-safety", "--managers", "3", "--workers", "2")


@pytest.fixture(scope="module")
def data(lab: Lab, tmp_path_factory: pytest.TempPathFactory):
    """Group data: the swarm and a secret from a file (the PKI directory names its versions); `size` is the
    json-file log size in daemon.json (a change of it needs a restart), `workers` the workers' own."""
    secret = tmp_path_factory.mktemp("safety") / "token"
    secret.write_text("a-token-for-the-safety-tests")

    def make(size: str = "10m", workers: str | None = None, **settings: object) -> dict:
        def daemon(max_size: str) -> dict:
            return {"docker_daemon_config": {"log-driver": "json-file", "log-opts": {"max-size": max_size}}}

        base = {**SWARM_ONLY, "swarm_secrets": {"token": {"file": str(secret)}}, **daemon(size), **settings}
        return {"all": base, **({"swarm_workers": daemon(workers)} if workers else {})}

    cold = lab.deploy(group_data=make())
    assert cold.returncode == 0, cold
    return make


class DrainWatch:
    """Polls the swarm's node list through whichever manager answers, from a thread: which nodes were ever
    drained, and the most drained at once."""

    def __init__(self, lab: Lab, docker_api: docker.APIClient) -> None:
        self.lab, self.api = lab, docker_api
        self.drained: set[str] = set()
        self.most = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        command = ["docker", "node", "ls", "--format", "{{.Hostname}} {{.Availability}}"]
        while not self._done.is_set():
            for manager in ("manager1", "manager2", "manager3"):
                run = self.api.exec_create(container(self.lab, manager), command)
                output = self.api.exec_start(run).decode()
                if self.api.exec_inspect(run["Id"])["ExitCode"] == 0:
                    now = {line.split()[0].split("-", 2)[-1] for line in output.splitlines() if line.endswith("Drain")}
                    self.drained |= now
                    self.most = max(self.most, len(now))
                    break
            time.sleep(0.3)

    def __enter__(self) -> DrainWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def availability(lab: Lab) -> dict[str, tuple[str, bool]]:
    """node -> (availability, whether a turn's mark is on it)."""
    return {name: (n["availability"], "pyinfra-swarm.drained" in n["labels"]) for name, n in nodes(lab).items()}


def all_active(lab: Lab) -> bool:
    return availability(lab) == dict.fromkeys(NODES, ("active", False))


def staged(lab: Lab) -> set[str]:
    return {node for node in NODES if lab.ssh(node, f"test -f {STAGED}").returncode == 0}


def status(lab: Lab) -> tuple[int, dict]:
    result = cli("status", "inventory/lab.py", "--json", env=lab.env)
    return result.returncode, json.loads(result.stdout)


def start(lab: Lab, group_data: dict, *args: str, env: dict | None = None) -> subprocess.Popen:
    """A deploy in the background (its group data written as Lab.deploy writes it)."""
    folder = lab.state_dir / f"group_data_{time.monotonic_ns()}"
    folder.mkdir(parents=True)
    for group, values in group_data.items():
        (folder / f"{group}.py").write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))
    command = [str(BIN / "pyinfra"), "-y", *args, "--group-data", str(folder), "inventory/lab.py", "deploy.py"]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **lab.env, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def until(process: subprocess.Popen, pattern: str) -> tuple[str, re.Match]:
    """Read the process's output until a line matches `pattern`: (what was read, the match)."""
    assert process.stdout is not None
    read = ""
    for line in process.stdout:
        read += line
        found = re.search(pattern, line)
        if found:
            return read, found
    raise AssertionError(f"the run ended before {pattern!r}: {read[-3000:]}")


def finish(process: subprocess.Popen, read: str = "") -> Run:
    out, _ = process.communicate(timeout=900)
    return Run(subprocess.CompletedProcess(process.args, process.returncode, read + out, ""))


def test_a_task_that_stops_slowly_stops_the_rollout_at_the_first_node(lab: Lab, data, docker_api) -> None:
    for node in NODES:
        lab.sh(node, BUSYBOX)
    lab.sh("manager1", "docker service create -d --name slow --mode global --stop-grace-period 150s e2e-busybox "
                       "/bin/busybox sh -c 'trap \"\" TERM; while true; do sleep 1; done' >/dev/null")  # fmt: skip
    wait_for("the slow task on every node", lambda: lab.sh("manager1", "docker service ls --filter name=slow "
                                                           "--format '{{.Replicas}}'").strip() == "5/5")  # fmt: skip
    before = engine_restarts(lab, NODES)

    with DrainWatch(lab, docker_api) as watch:
        stopped = lab.deploy(group_data=data("6m", swarm_drain_timeout=30))
    assert stopped.returncode != 0 and "Traceback" not in stopped.output, stopped
    assert "still 1 task(s) running after 30 s; swarm_drain_timeout): its availability is active again and nothing " \
           "else was done here" in stopped.output, stopped  # fmt: skip
    # Managers take their turns first (pyinfra runs a serial operation's hosts in no set order among them).
    assert len(watch.drained) == 1 and watch.drained < {"manager1", "manager2", "manager3"}, watch.drained
    assert watch.most == 1
    assert all_active(lab), availability(lab)
    assert engine_restarts(lab, NODES) == before  # no engine restarted, the first one included
    assert staged(lab) == set(NODES)  # the new daemon.json waits on every node for its turn
    code, report = status(lab)
    assert code == 1 and sum("its engine must restart (a new daemon.json waits for its turn)" in p
                             for p in report["problems"]) == 5, report["problems"]  # fmt: skip

    # The task fixed: the next run finishes the rollout, one node at a time, from what each node says.
    lab.sh("manager1", "docker service rm slow >/dev/null")
    for node in NODES:  # its tasks would take their 150 s to stop
        lab.sh(node, "docker ps -q --filter name=slow | xargs -r docker kill >/dev/null")
    with DrainWatch(lab, docker_api) as watch:
        finished = lab.deploy(group_data=data("6m"))
    assert finished.returncode == 0, finished
    assert watch.drained == set(NODES) and watch.most == 1, (watch.drained, watch.most)
    after = engine_restarts(lab, NODES)
    assert all(after[n][0] > before[n][1] for n in NODES) and staged(lab) == set() and all_active(lab)
    assert status(lab)[0] == 0
    assert lab.deploy(group_data=data("6m")).changed == []


@pytest.fixture
def lingering(lab: Lab) -> Iterator[None]:
    """A task on each worker that takes 40 s to stop: a worker's turn lasts while it is drained."""
    ignore_term = "/bin/busybox sh -c 'trap \"\" TERM; while true; do sleep 1; done'"
    lab.sh("manager1", "docker service create -d --name lingering --mode global --constraint node.role==worker "
                       f"--stop-grace-period 40s e2e-busybox {ignore_term} >/dev/null")  # fmt: skip
    replicas = "docker service ls --filter name=lingering --format '{{.Replicas}}'"
    wait_for("a lingering task on each worker", lambda: lab.sh("manager1", replicas).strip() == "2/2")
    yield
    lab.sh("manager1", "docker service rm lingering >/dev/null")
    for node in ("worker1", "worker2"):
        lab.sh(node, "docker ps -q --filter name=lingering | xargs -r docker kill >/dev/null")


def test_an_interrupted_rollout_is_given_back_by_a_limited_run_then_finished(lab: Lab, data, lingering) -> None:
    change = data("6m", workers="7m")  # the workers' engines only
    run = start(lab, change)
    read, found = until(run, r"\[(worker\d)\]\s+waiting for its tasks to stop")
    drained = found.group(1)
    run.send_signal(signal.SIGINT)  # Ctrl-C in the node's turn, while it is drained
    interrupted = finish(run, read)
    assert "Traceback" not in interrupted.output, interrupted
    assert availability(lab)[drained] == ("drain", True)
    code, report = status(lab)
    assert code == 1 and any(p.startswith(f"node e2e-safety-{drained} was left drained by a run that did not end its "
                                          "turn") for p in report["problems"]), report  # fmt: skip
    assert report["lock"] is None  # the interrupted run let go of its lock

    other = next(w for w in ("worker1", "worker2") if w != drained)
    limited = lab.deploy("--limit", other, group_data=change)
    assert limited.returncode == 0, limited
    assert (f"Nodes left drained by an unfinished run | Give e2e-safety-{drained} its availability back (left drained "
            "by an unfinished run)") in limited.changed, limited  # fmt: skip
    assert availability(lab)[drained] == ("active", False)

    finished = lab.deploy(group_data=change)
    assert finished.returncode == 0, finished
    assert all_active(lab) and staged(lab) == set() and status(lab)[0] == 0
    assert lab.deploy(group_data=change).changed == []


def test_a_killed_controllers_lock_is_named_refused_and_broken_on_request(lab: Lab, data, lingering) -> None:
    change = data("6m", workers="8m")
    run = start(lab, change)
    until(run, r"\[worker\d\]\s+waiting for its tasks to stop")
    run.kill()  # SIGKILL: no exit handler runs
    run.communicate()
    held = cli("lock", "inventory/lab.py", env=lab.env)
    assert held.returncode == 1 and "the cluster lock is held by root@" in held.stdout, held.stdout + held.stderr
    assert "running `pyinfra inventory/lab.py deploy.py`" in held.stdout
    assert status(lab)[1]["lock"]["what"] == "pyinfra inventory/lab.py deploy.py"

    refused = lab.deploy(group_data=data("6m", workers="8m", swarm_lock_wait=5))
    assert refused.returncode != 0 and "Traceback" not in refused.output, refused
    assert "another run holds the cluster lock: root@" in refused.output and "--break" in refused.output
    assert "Beginning operation run" not in refused.output

    broken = cli("lock", "inventory/lab.py", "--break", env=lab.env)
    assert broken.returncode == 0 and "is broken" in broken.stdout, broken.stdout + broken.stderr
    finished = lab.deploy(group_data=change)
    assert finished.returncode == 0, finished
    assert all_active(lab) and staged(lab) == set() and status(lab)[0] == 0
    assert cli("lock", "inventory/lab.py", env=lab.env).stdout.strip() == "the cluster lock is free"


def test_two_runs_at_once_take_turns(lab: Lab, data, docker_api) -> None:
    change = data("9m")
    with DrainWatch(lab, docker_api) as watch:
        runs = [start(lab, change), start(lab, change)]
        first, second = (finish(run) for run in runs)
    assert first.returncode == 0 and second.returncode == 0, (first, second)
    waited = [run for run in (first, second) if "waiting for the cluster lock, held by root@" in run.output]
    assert len(waited) == 1, (first, second)
    assert waited[0].changed == []  # it planned once the other one was done: nothing left to do
    assert watch.drained == set(NODES) and watch.most == 1, (watch.drained, watch.most)
    assert all_active(lab) and staged(lab) == set()


def test_a_second_pki_directory_is_refused_then_taken_over_on_request(lab: Lab, data, tmp_path) -> None:
    secrets_before = lab.sh("manager1", "docker secret ls --format '{{.Name}}'")
    other = {"PYINFRA_SWARM_PKI_DIR": str(tmp_path / "another-controller")}
    refused = lab.deploy(group_data=data("9m"), env=other)
    assert refused.returncode != 0 and "Traceback" not in refused.output, refused
    assert "is not the one this swarm was deployed with" in refused.output
    assert "Copy the PKI directory of the controller that deployed it here" in refused.output
    assert "Beginning operation run" not in refused.output
    assert lab.sh("manager1", "docker secret ls --format '{{.Name}}'") == secrets_before

    taken = lab.deploy(group_data=data("9m", swarm_pki_takeover=True), env=other)
    assert taken.returncode == 0 and "swarm_pki_takeover: this controller's PKI directory" in taken.output, taken
    assert lab.sh("manager1", "docker secret ls --format '{{.Name}}'") != secrets_before  # renamed with its key
    assert lab.deploy(group_data=data("9m")).returncode != 0  # now the first controller is the stranger
    back = lab.deploy(group_data=data("9m", swarm_pki_takeover=True))
    assert back.returncode == 0, back
    assert lab.deploy(group_data=data("9m")).changed == []


def test_a_backup_through_a_sudo_user_stages_nothing_others_can_read(lab: Lab, data, docker_api, tmp_path) -> None:
    find = ["sh", "-c", "find /tmp /var/tmp -maxdepth 1 -type f -name 'pyinfra*' -printf '%m %p\\n' 2>/dev/null"]
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for name in ("manager1", "manager2", "manager3"):
                run = docker_api.exec_create(container(lab, name), find)
                seen.update(f"{name} {line}" for line in docker_api.exec_start(run).decode().splitlines())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        backup = lab.deploy(group_data=data("9m", swarm_backup_dir=str(tmp_path / "backups")), file="backup.py",
                            env={"PYINFRA_SWARM_LAB_USER": "debian"})  # fmt: skip
    finally:
        done.set()
        watcher.join()
    assert backup.returncode == 0, backup
    [archive] = (tmp_path / "backups").glob("swarm-*.tar.gz")
    assert archive.stat().st_mode & 0o777 == 0o600 and archive.stat().st_size > 0
    assert all(line.split()[1] == "600" for line in seen), seen  # the node's archive only, root's only
    for name in ("manager1", "manager2", "manager3"):
        assert lab.sh(name, "ls /tmp /var/tmp | grep pyinfra || true").strip() == ""  # nothing left behind
    assert status(lab)[0] == 0
