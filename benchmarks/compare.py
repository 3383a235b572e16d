"""pyinfra-swarm side by side with Ansible (community.docker) on the same lab nodes: `make bench-compare`.

For each cluster size, each tool gets fresh lab nodes (the order alternates from one size to the next) and
does the same job: Debian's docker.io, the same daemon.json, a swarm (init on the first manager with an
explicit advertise address, every other host joined) and the same node labels. pyinfra-swarm runs deploy.py
with the workloads and the firewall off; Ansible runs benchmarks/ansible/swarm.yml. After every run the
cluster is checked from a manager (every node Ready in its role, its labels, daemon.json, docker.io), so
neither side can win by doing less. Printed: cold and no-op times, SSH commands per host on the no-op,
controller peak memory, the ratios, and for pyinfra-swarm the floor (`pyinfra INVENTORY exec -- true`).
JSON and a PNG chart go to benchmarks/results/ (git-ignored).

    python benchmarks/compare.py [--sizes 1+3,1+11] [--tools pyinfra-swarm,ansible] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path

from bench import BIN, ROOT, STATE, commands_per_host, env, lab

ANSIBLE = ROOT / "benchmarks/.venv-ansible/bin/ansible-playbook"
PLAYBOOK = ROOT / "benchmarks/ansible/swarm.yml"
RESULTS = ROOT / "benchmarks/results"
DAEMON = {"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}}
LABELS = {"swarm_managers": {"role": "manager"}, "swarm_workers": {"role": "worker", "tier": "web"}}
OURS, THEIRS = "pyinfra-swarm", "ansible"


class PeakMemory:
    """The peak of the summed resident memory of a process and all its descendants, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._done = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:  # the process ended meanwhile
                pass
        return pids

    def _sample(self) -> None:
        while not self._done.is_set():
            total = 0
            for pid in self._tree():
                with contextlib.suppress(OSError, IndexError):  # the process ended meanwhile
                    total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak / 2**20


def timed(command: list[str], environment: dict[str, str], cwd: Path = ROOT) -> tuple[float, float, str]:
    """(wall seconds, controller peak MiB, output) of a command that must succeed."""
    started = time.monotonic()
    proc = subprocess.Popen(command, env=environment, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    memory = PeakMemory(proc.pid)
    output, _ = proc.communicate()
    wall, peak = time.monotonic() - started, memory.stop()
    if proc.returncode != 0:
        print(output[-4000:])
        raise SystemExit(f"{' '.join(command[:3])} ... failed (exit {proc.returncode})")
    return wall, peak, re.sub(r"\x1b\[[0-9;]*m", "", output)


def nodes_of(name: str) -> list[dict]:
    return json.loads((STATE / name / "lab.json").read_text())["nodes"]


def ssh(name: str, node: str, command: str) -> str:
    result = subprocess.run([str(BIN / "pyinfra-swarm"), "lab", "ssh", "--name", name, node, command], env=env(name),
                            cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"{node}: {command}: {result.stderr}")
    return result.stdout


def check_cluster(name: str, managers: int, workers: int) -> None:
    """Fail unless the lab is the cluster both tools were asked for (pyinfra-swarm's own bookkeeping label,
    `pyinfra-swarm.managed-labels`, aside)."""
    script = "docker node inspect $(docker node ls -q) --format '{{json .}}'"
    seen = {}
    for line in ssh(name, "manager1", script).splitlines():
        node = json.loads(line)
        role = node["Spec"]["Role"]
        labels = {k: v for k, v in (node["Spec"].get("Labels") or {}).items() if not k.startswith("pyinfra-swarm.")}
        seen[node["Description"]["Hostname"]] = (role, node["Status"]["State"], labels)
    wanted = {f"{name}-manager{i}": ("manager", "ready", LABELS["swarm_managers"]) for i in range(1, managers + 1)}
    wanted |= {f"{name}-worker{i}": ("worker", "ready", LABELS["swarm_workers"]) for i in range(1, workers + 1)}
    if seen != wanted:
        raise SystemExit(f"{name}: the cluster is not as asked:\n  seen   {seen}\n  wanted {wanted}")
    for node in nodes_of(name):
        daemon = json.loads(ssh(name, node["node"], "cat /etc/docker/daemon.json"))
        if daemon != DAEMON or "docker.io" not in ssh(name, node["node"], "dpkg-query -W docker.io"):
            raise SystemExit(f"{name}: {node['node']}: daemon.json {daemon} or docker.io not as asked")


def our_group_data() -> Path:
    folder = STATE / "compare-group-data"
    folder.mkdir(exist_ok=True)
    settings = {"registry_mode": None, "docker_image_archives": [], "docker_images": [], "swarm_stacks": [],
                "docker_source": "distro", "swarm_firewall": "none", "docker_daemon_config": DAEMON}  # fmt: skip
    (folder / "all.py").write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
    for group, labels in LABELS.items():
        (folder / f"{group}.py").write_text(f"swarm_labels = {labels!r}\n")
    return folder


def ansible_files(name: str) -> tuple[Path, Path]:
    """The lab as an Ansible inventory (the same hosts, key and known_hosts as pyinfra's), and the vars."""
    state = STATE / name
    ssh_args = f"-o UserKnownHostsFile={state / 'known_hosts'} -o StrictHostKeyChecking=yes"
    groups: dict[str, dict] = {"swarm_managers": {"hosts": {}}, "swarm_workers": {"hosts": {}}}
    for node in nodes_of(name):
        group = "swarm_managers" if node["node"].startswith("manager") else "swarm_workers"
        groups[group]["hosts"][node["node"]] = {
            "ansible_host": node["address"],
            "swarm_advertise_addr": node["address"],
        }
    for group, labels in LABELS.items():
        groups[group]["vars"] = {"swarm_labels": labels}
    inventory = {"all": {"vars": {"ansible_user": "root", "ansible_ssh_private_key_file": str(state / "id_ed25519"),
                                  "ansible_ssh_common_args": ssh_args}, "children": groups}}  # fmt: skip
    (state / "ansible-inventory.yml").write_text(json.dumps(inventory, indent=1))  # JSON is YAML
    (state / "ansible-vars.json").write_text(json.dumps({"docker_daemon_config": DAEMON}))
    return state / "ansible-inventory.yml", state / "ansible-vars.json"


def ansible_env(name: str, forks: int) -> dict[str, str]:
    return {**env(name), "ANSIBLE_FORKS": str(forks), "ANSIBLE_PIPELINING": "True", "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3", "ANSIBLE_RETRY_FILES_ENABLED": "False"}  # fmt: skip


def run_tool(tool: str, name: str, verbose: bool = False) -> tuple[float, float, str]:
    if tool == OURS:
        extra = ["-vv"] if verbose else []
        command = [str(BIN / "pyinfra"), "-y", *extra, "--group-data", str(our_group_data()), "inventory/lab.py",
                   "deploy.py"]  # fmt: skip
        return timed(command, env(name))
    inventory, variables = ansible_files(name)
    command = [str(ANSIBLE), "-i", str(inventory), "-e", f"@{variables}", str(PLAYBOOK), *(["-vvv"] if verbose else [])]
    return timed(command, ansible_env(name, len(nodes_of(name))))


def changed_nothing(tool: str, output: str) -> bool:
    if tool == OURS:
        results = output.split("--> Results:")[-1]
        return bool(re.search(r"Grand total\s+\d+\s+-\s+-\s+\d+", results))
    return all(int(n) == 0 for n in re.findall(r"changed=(\d+)", output.split("PLAY RECAP")[-1]))


def ssh_commands(tool: str, name: str, output: str) -> int:
    """The most SSH commands any one host ran (pyinfra -vv prints each; ansible -vvv logs each ssh exec)."""
    if tool == OURS:
        return max(commands_per_host([(0.0, line) for line in output.splitlines()]).values())
    per_address: dict[str, int] = {}
    for address in re.findall(r"^<([\d.]+)> SSH: EXEC ssh", output, re.MULTILINE):
        per_address[address] = per_address.get(address, 0) + 1
    return max(per_address.values())


def measure(tool: str, managers: int, workers: int, runs: int) -> dict:
    name = f"cmp-{managers}m{workers}w"
    lab(name, "down")
    lab(name, "up", "--managers", str(managers), "--workers", str(workers))
    try:
        cold, cold_mib, _ = run_tool(tool, name)
        check_cluster(name, managers, workers)
        noops, noop_mib = [], 0.0
        for _ in range(runs):
            wall, mib, output = run_tool(tool, name)
            if not changed_nothing(tool, output):
                raise SystemExit(f"{tool}: a no-op run on {name} changed something:\n{output[-3000:]}")
            check_cluster(name, managers, workers)
            noops.append(wall)
            noop_mib = max(noop_mib, mib)
        commands = ssh_commands(tool, name, run_tool(tool, name, verbose=True)[2])
        row = {"size": f"{managers}+{workers}", "nodes": managers + workers, "tool": tool, "cold_s": round(cold, 2),
               "noop_s": round(statistics.median(noops), 2), "noop_runs": [round(w, 2) for w in noops],
               "ssh_commands_per_host": commands, "peak_mib": round(max(cold_mib, noop_mib), 1)}  # fmt: skip
        if tool == OURS:
            floor = [timed([str(BIN / "pyinfra"), "-y", "inventory/lab.py", "exec", "--", "true"], env(name))[0]
                     for _ in range(runs)]  # fmt: skip
            row["floor_s"] = round(statistics.median(floor), 2)
        print(f"  {tool:<14} cold {cold:6.1f} s   no-op {row['noop_s']:5.2f} s (runs {row['noop_runs']})   "
              f"{commands} SSH commands/host on the no-op   peak {row['peak_mib']:.0f} MiB"
              + (f"   floor (exec -- true) {row['floor_s']:.2f} s" if "floor_s" in row else ""))  # fmt: skip
        return row
    finally:
        lab(name, "down")


def table(rows: list[dict]) -> str:
    lines = ["| size | tool | cold s | no-op s | SSH commands/host (no-op) | controller peak MiB | floor s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row in rows:
        floor = row.get("floor_s", "")
        lines.append(f"| {row['size']} | {row['tool']} | {row['cold_s']:.1f} | {row['noop_s']:.2f} | "
                     f"{row['ssh_commands_per_host']} | {row['peak_mib']:.0f} | {floor} |")  # fmt: skip
    for size in dict.fromkeys(row["size"] for row in rows):
        pair = {row["tool"]: row for row in rows if row["size"] == size}
        if OURS in pair and THEIRS in pair:
            ours, theirs = pair[OURS], pair[THEIRS]
            lines.append(f"| {size} | ours/Ansible | {ours['cold_s'] / theirs['cold_s']:.2f}x | "
                         f"{ours['noop_s'] / theirs['noop_s']:.2f}x | "
                         f"{ours['ssh_commands_per_host'] / theirs['ssh_commands_per_host']:.2f}x | "
                         f"{ours['peak_mib'] / theirs['peak_mib']:.2f}x | |")  # fmt: skip
    return "\n".join(lines)


def chart(rows: list[dict], path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in ((axes[0], "cold_s", "cold: fresh nodes to a labelled swarm"),
                             (axes[1], "noop_s", "no-op re-run (median)")):  # fmt: skip
        for tool, style in ((OURS, "o-"), (THEIRS, "s--")):
            points = sorted((row["nodes"], row[key]) for row in rows if row["tool"] == tool)
            if points:
                axis.plot(*zip(*points, strict=True), style, label=tool)
        axis.set_title(title)
        axis.set_xlabel("nodes")
        axis.set_ylabel("seconds")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"pyinfra-swarm and Ansible (community.docker), same job, same nodes. {subtitle}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def tool_versions() -> dict[str, str]:
    """The versions of ansible, ansible-core and community.docker in the benchmark's Ansible venv."""
    venv = ANSIBLE.parent
    pip = subprocess.run([str(venv / "pip"), "list", "--format", "json"], capture_output=True, text=True).stdout
    packages = {p["name"]: p["version"] for p in json.loads(pip or "[]")}
    listed = subprocess.run([str(venv / "ansible-galaxy"), "collection", "list", "community.docker"],
                            capture_output=True, text=True).stdout  # fmt: skip
    docker = next((line.split()[1] for line in listed.splitlines() if line.startswith("community.docker ")), "?")
    return {"ansible": packages.get("ansible", "?"), "ansible-core": packages.get("ansible-core", "?"),
            "community.docker": docker}  # fmt: skip


def our_version() -> str:
    """pyinfra's version beside this checkout's commit."""
    pip = subprocess.run([str(BIN / "pip"), "show", "pyinfra"], capture_output=True, text=True).stdout
    pyinfra = next((line.split()[1] for line in pip.splitlines() if line.startswith("Version:")), "?")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    return f"{commit} (pyinfra {pyinfra})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1+3,1+11", help="MANAGERS+WORKERS, comma-separated (%(default)s)")
    parser.add_argument("--tools", default=f"{OURS},{THEIRS}", help="which tools (%(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="no-op runs per tool and size (%(default)s)")
    args = parser.parse_args()
    tools = args.tools.split(",")
    if THEIRS in tools and not ANSIBLE.exists():
        raise SystemExit(f"{ANSIBLE} is missing: `make bench-compare` installs Ansible into a venv of its own")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    machine = f"{platform.node()}: {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    versions = tool_versions() if THEIRS in tools else {}
    print(f"{stamp}, {machine}")
    print(f"Ansible: {', '.join(f'{k} {v}' for k, v in versions.items()) or 'not used'}; forks = the node count, "
          "pipelining on, SSH ControlPersist (Ansible's default), facts gathered once per run (the labels need "
          "hostnames)")  # fmt: skip
    print("pyinfra-swarm: deploy.py with registry, images, stacks and firewall off; both: docker.io, daemon.json, "
          "swarm, labels")  # fmt: skip
    rows = []
    for index, size in enumerate(args.sizes.split(",")):
        managers, workers = (int(n) for n in size.split("+"))
        print(f"== {managers} manager(s) + {workers} workers")
        for tool in tools if index % 2 == 0 else list(reversed(tools)):
            rows.append(measure(tool, managers, workers, args.runs))
    print()
    print(table(rows))
    RESULTS.mkdir(exist_ok=True)
    name = time.strftime("compare-%Y%m%d-%H%M%S")
    record = {"date": stamp, "machine": machine, "versions": {**versions, OURS: our_version()}, "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1))
    chart(rows, RESULTS / f"{name}.png", f"{stamp}, {machine}")
    print(f"\nwritten: {RESULTS / name}.json and .png")


if __name__ == "__main__":
    main()
