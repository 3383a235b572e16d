"""The controller's cost at scale, without hundreds of machines: facts recorded once from a real lab (a manager
and a worker of a converged swarm, what the plan's one command per host prints there) are replayed by pyinfra's
fake connector for N hosts with names, addresses, node IDs, a node list and firewall rules of their own. Each
size runs in a process of its own: the plan and a no-op run of the full deploy (it must change nothing), timed.

    python benchmarks/scale.py [--sizes 16,100,250,500] [--rerecord]

Prints, per size: controller wall time and CPU seconds (plan, then execution), per-host cost, peak memory,
commands per host, lines of output; and what the one command costs on a real node (CPU, measured there).
Writes the figures to benchmarks/results/scale.json. Recording brings up a lab `bench-scale` (1+1, ~2 min),
once: the recording is kept in benchmarks/results/scale-recording.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "results"
RECORDING = RESULTS / "scale-recording.json"
MANAGERS = 3  # managers of every replayed cluster (one of them lists the nodes and acts)
# The swarm alone, as on the recorded lab (the repo's group data, workloads off, our own iptables chain).
DATA: dict[str, Any] = {
    "swarm_firewall": "iptables",
    "registry_mode": None,
    "docker_image_archives": [],
    "docker_images": [],
    "swarm_stacks": [],
}


def _group_data_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="pyinfra-swarm-scale-"))
    (folder / "all.py").write_text("".join(f"{key} = {value!r}\n" for key, value in DATA.items()))
    return folder


def record() -> dict[str, Any]:
    """Bring up a 1+1 lab, deploy the swarm, and keep what the plan's command prints on each node (and what it
    costs the node's CPU: `times` after running it, median of 5)."""
    lab_dir = Path(tempfile.mkdtemp(prefix="pyinfra-swarm-scale-lab-"))
    env = {**os.environ, "PYINFRA_SWARM_LAB": "bench-scale", "PYINFRA_SWARM_LAB_DIR": str(lab_dir),
           "PYINFRA_SWARM_PKI_DIR": str(lab_dir / "pki")}  # fmt: skip
    cli = [str(BIN / "pyinfra-swarm"), "lab"]
    print("recording: lab bench-scale (1 manager + 1 worker) ...", flush=True)
    subprocess.run([*cli, "up", "--name", "bench-scale", "--managers", "1", "--workers", "1"], env=env, cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    try:
        deploy = [str(BIN / "pyinfra"), "-y", "--group-data", str(_group_data_folder()), "inventory/lab.py",
                  "deploy.py"]  # fmt: skip
        subprocess.run(deploy, env=env, cwd=ROOT, check=True, capture_output=True)
        script = ROOT / "benchmarks" / "scale.py"
        out = subprocess.run([sys.executable, str(script), "--capture"], env=env, cwd=ROOT, check=True,
                             capture_output=True, text=True)  # fmt: skip
        return json.loads(out.stdout)
    finally:
        subprocess.run([*cli, "down", "--name", "bench-scale"], env=env, cwd=ROOT, capture_output=True)


def capture() -> None:
    """(In the lab's environment.) Print, as JSON, each node's output of the plan's command and its CPU cost."""
    from pyinfra.api import StringCommand

    from pyinfra_swarm.facts import Bundle
    from pyinfra_swarm.plan.observe import HOST_FACTS, MANAGER_FACTS, firewall_facts
    from pyinfra_swarm.settings import is_manager
    from pyinfra_swarm.status import load

    state = load("inventory/lab.py")
    recorded: dict[str, Any] = {}
    for host in state.inventory:
        host.connect(show_errors=False)
        role = "manager" if is_manager(host) else "worker"
        spec = {**HOST_FACTS, **firewall_facts(DATA["swarm_firewall"]), **(MANAGER_FACTS if role == "manager" else {})}
        command = Bundle().command(spec)
        status, output = host.run_shell_command(StringCommand(command), print_output=False)
        assert status, output.stderr
        cpu = []
        for _ in range(5):  # `times`' second line: the CPU its children (the fact commands) used, user and system
            _, timed = host.run_shell_command(StringCommand(f"{{ {command}; }} >/dev/null 2>&1; times"),
                                              print_output=False)  # fmt: skip
            user, system = (float(v.split("m")[0]) * 60 + float(v.split("m")[1].rstrip("s"))
                            for v in timed.stdout_lines[-1].split())  # fmt: skip
            cpu.append(user + system)
        bundle = Bundle()
        bundle.facts = spec
        processed = bundle.process(output.stdout_lines)
        recorded[role] = {
            "lines": output.stdout_lines,
            "hostname": processed["hostname"],
            "address": host.data.swarm_advertise_addr,
            "node_id": processed["swarm"]["NodeID"],
            "node_cpu": statistics.median(cpu),
        }
        if role == "manager":
            recorded["nodes"] = processed["nodes"]
        else:
            recorded["firewall"] = _firewall_apply(host)
    print(json.dumps(recorded))


def _firewall_apply(host: Any) -> dict[str, Any]:
    """On a lab node: the CPU that applying the firewall's script takes with 100 and 500 peers, and how many
    rules our chain has then (the node's own script is applied again afterwards)."""
    from pyinfra.api import StringCommand

    from pyinfra_swarm.operations import firewall

    figures: dict[str, Any] = {}
    for peers in (100, 500):
        addresses = [f"10.200.{i // 250}.{i % 250 + 1}" for i in range(peers)]
        script = firewall.iptables_script(firewall.node_policy(False, addresses, ["22/tcp"], 4789, False, True))
        command = (f"cat > /tmp/pyinfra-swarm-scale.sh <<'SCRIPT'\n{script}SCRIPT\n"
                   "{ sh /tmp/pyinfra-swarm-scale.sh; } >/dev/null 2>&1; times; iptables -w -S PYINFRA-SWARM | wc -l; "
                   f"rm -f /tmp/pyinfra-swarm-scale.sh; sh {firewall.IPTABLES_RULES} >/dev/null 2>&1")  # fmt: skip
        status, output = host.run_shell_command(StringCommand(command), print_output=False)
        assert status, output.stderr
        user, system = (float(v.split("m")[0]) * 60 + float(v.split("m")[1].rstrip("s"))
                        for v in output.stdout_lines[-2].split())  # fmt: skip
        figures[str(peers)] = {"apply_cpu_s": user + system, "rules": int(output.stdout_lines[-1])}
    return figures


def repo_data(group: str) -> dict[str, Any]:
    """The repository's group data for a host of `group` (all.py, then the group's file), with DATA over it:
    what the recorded lab's hosts had."""
    data: dict[str, Any] = {}
    for name in ("all", group):
        namespace: dict[str, Any] = {}
        exec(compile((ROOT / "group_data" / f"{name}.py").read_text(), name, "exec"), namespace)
        data.update({k: v for k, v in namespace.items() if not k.startswith("_") and not callable(v)
                     and not isinstance(v, type(os))})  # fmt: skip
    return {**data, **DATA}


def _sections(lines: list[str], separator: str) -> list[list[str]]:
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.strip() == separator:
            sections.append([])
        else:
            sections[-1].append(line)
    return sections


def replay(size: int, recorded: dict[str, Any], limit: str | None = None) -> dict[str, Any]:
    """(In a process of its own.) Plan and run the full deploy on `size` replayed hosts (as `--limit LIMIT`
    when given); the figures."""
    os.environ["PYINFRA_FAKE_DELAY"] = os.environ["PYINFRA_FAKE_DELAY_JITTER"] = "0"
    import pyinfra
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.operations import run_ops
    from pyinfra.api.state import StateStage
    from pyinfra.connectors.fake import FakeConnector
    from pyinfra.context import ctx_host, ctx_state

    from pyinfra_swarm.deploys.cluster import swarm_cluster
    from pyinfra_swarm.facts import Bundle, sha256_text
    from pyinfra_swarm.operations import firewall
    from pyinfra_swarm.plan.observe import HOST_FACTS, MANAGER_FACTS, firewall_facts
    from pyinfra_swarm.settings import DEFAULTS

    names = [f"manager{i + 1}" for i in range(MANAGERS)] + [f"worker{i + 1}" for i in range(size - MANAGERS)]
    addresses = {name: f"10.64.{i // 250}.{i % 250 + 1}" for i, name in enumerate(names)}
    ids = {name: f"{name}{'x' * (25 - len(name))}" for name in names}  # node IDs are 25 characters
    template = {name: recorded["manager" if name.startswith("manager") else "worker"] for name in names}
    own_entry = {n["role"]: n for n in recorded["nodes"]}
    node_list = []
    for name in names:
        role = "manager" if name.startswith("manager") else "worker"
        node_list.append({
            "ID": ids[name],
            "Description": {"Hostname": name, "Engine": {"EngineVersion": own_entry[role]["engine"]}},
            "Status": {"State": "ready", "Addr": addresses[name]},
            "Spec": {"Role": role, "Availability": "active", "Labels": own_entry[role]["labels"]},
            "ManagerStatus": {"Leader": name == "manager1", "Reachability": "reachable"} if role == "manager" else None,
        })  # fmt: skip
    peers = sorted(addresses.values(), key=lambda a: tuple(int(p) for p in a.split(".")))
    group_data = {role: {**DEFAULTS, **repo_data(f"swarm_{role}s")} for role in ("manager", "worker")}

    def bundle_lines(name: str) -> list[str]:
        role = "manager" if name.startswith("manager") else "worker"
        recording = template[name]
        text = "\n".join(recording["lines"])
        text = text.replace(recording["node_id"], ids[name]).replace(recording["address"], addresses[name])
        spec = {**HOST_FACTS, **firewall_facts(DATA["swarm_firewall"]), **(MANAGER_FACTS if role == "manager" else {})}
        sections = dict(zip(spec, _sections(text.split("\n"), Bundle.SEPARATOR), strict=False))
        sections["hostname"] = [name]
        sections["clock"] = [f"{time.time():.3f}"]
        ssh = tuple(int(line.split()[1]) for line in sections["sshd_ports"] if line.startswith("port "))
        data = group_data[role]
        policy = firewall.node_policy(role == "manager", peers, data["swarm_firewall_allow"], 4789,
                                      bool(data["swarm_encrypted_overlays"]),
                                      data["swarm_firewall_policy"] == "deny", ssh_ports=ssh or (22,))  # fmt: skip
        rules = sha256_text(firewall.iptables_script(policy))
        sections["firewall_files"] = [f"{rules} {firewall.IPTABLES_RULES}" if line.endswith(firewall.IPTABLES_RULES)
                                      else line for line in sections["firewall_files"]]  # fmt: skip
        if role == "manager":
            sections["nodes"] = [json.dumps(node_list)]
        lines: list[str] = []
        for fact_name in spec:
            lines += [*sections[fact_name], Bundle.SEPARATOR]
        return lines[:-1]

    def entry(name: str) -> tuple[str, dict[str, Any]]:
        responses = {"echo apparmor=": bundle_lines(name), "config create --label pyinfra-swarm.lock.run": ["locked"]}
        role = "manager" if name.startswith("manager") else "worker"
        if role == "manager":  # the node list read on its own (a run whose limit holds no manager)
            responses["docker node inspect $ids"] = [json.dumps(node_list)]
        return f"@fake/{name}", {**repo_data(f"swarm_{role}s"), "swarm_advertise_addr": addresses[name],
                                 "fake_delay": 0, "fake_responses": responses}  # fmt: skip

    managers = [entry(n) for n in names[:MANAGERS]]
    workers = [entry(n) for n in names[MANAGERS:]]
    commands: Counter = Counter()
    run_command = FakeConnector.run_shell_command

    def counting(self, command, *args, **kwargs):
        commands[self.host.name] += 1
        return run_command(self, command, *args, **kwargs)

    FakeConnector.run_shell_command = counting  # type: ignore[method-assign]
    lines = Counter()

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines[record.levelname] += 1

    logging.getLogger("pyinfra").addHandler(Lines())
    logging.getLogger("pyinfra").setLevel(logging.INFO)

    inventory = Inventory((managers + workers, {}), swarm_managers=([n for n, _ in managers], {}),
                          swarm_workers=([n for n, _ in workers], {}))  # fmt: skip
    state = State(inventory, Config())
    if limit is not None:
        state.limit_hosts = [inventory.get_host(f"@fake/{limit}")]
    wall, cpu = time.monotonic(), time.process_time()
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    pyinfra.is_cli = True
    with ctx_state.use(state):
        for deploy_host in state.inventory.get_active_hosts():
            with ctx_host.use(deploy_host):
                swarm_cluster()
    plan_wall, plan_cpu = time.monotonic() - wall, time.process_time() - cpu
    before = dict(commands)
    changes = 0
    for planned_host in inventory:
        for op_hash in state.get_op_order():
            if op_hash in state.ops[planned_host]:
                with ctx_state.use(state), ctx_host.use(planned_host):
                    generator = state.get_op_data_for_host(planned_host, op_hash).command_generator()
                    changes += bool(list(generator))
    state.set_stage(StateStage.Execute)
    wall, cpu = time.monotonic(), time.process_time()
    run_ops(state)
    run_wall, run_cpu = time.monotonic() - wall, time.process_time() - cpu
    failed = sorted(h.name for h in state.failed_hosts)
    per_host = [commands[h.name] for h in inventory]
    return {
        "hosts": size,
        "plan_wall": plan_wall, "plan_cpu": plan_cpu, "run_wall": run_wall, "run_cpu": run_cpu,
        "controller_s": plan_wall + run_wall, "controller_cpu_s": plan_cpu + run_cpu,
        "per_host_ms": 1000 * (plan_wall + run_wall) / size,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "commands_per_host": {"max": max(per_host), "median": statistics.median(per_host),
                              "while_planning_max": max(before.values())},
        "operations_with_changes": changes,
        "output_lines": sum(lines.values()),
        "failed": failed,
        "hosts_read": sum(1 for h in inventory if commands[h.name]),
    }  # fmt: skip


def _replay_apart(size: int, limit: str | None = None) -> dict[str, Any]:
    """`replay` in a process of its own (a clean pyinfra state, its own peak memory); its figures."""
    args = ["--replay", str(size), *(["--limit", limit] if limit else [])]
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        what = f" with --limit {limit}" if limit else ""
        raise SystemExit(f"replay of {size} hosts{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,100,250,500", help="hosts per replayed cluster (default: %(default)s)")
    parser.add_argument("--rerecord", action="store_true", help="record again from a lab")
    parser.add_argument("--capture", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--replay", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--limit", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.capture:
        capture()
        return
    if args.replay:
        print(json.dumps(replay(args.replay, json.loads(RECORDING.read_text()), args.limit)))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.rerecord or not RECORDING.is_file():
        RECORDING.write_text(json.dumps(record(), indent=1))
    recorded = json.loads(RECORDING.read_text())
    print(f"machine: {os.cpu_count()} cores; pyinfra-swarm at scale (recorded facts replayed), "
          f"{time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    print(f"  the plan's one command on a real node: {1000 * recorded['manager']['node_cpu']:.0f} ms CPU on the "
          f"manager, {1000 * recorded['worker']['node_cpu']:.0f} ms on a worker (measured there)")  # fmt: skip
    for peers, figure in recorded.get("firewall", {}).items():
        print(
            f"  the firewall's script applied on a node with {peers} peers: "
            f"{1000 * figure['apply_cpu_s']:.0f} ms CPU, {figure['rules']} rules in our chain (the peers: one set)"
        )
    print(f"  {'hosts':>6} {'wall s':>7} {'(plan':>6} {'run)':>6} {'CPU s':>6} {'ms/host':>8} {'peak MB':>8} "
          f"{'cmds/host':>9} {'changes':>8} {'lines':>6}")  # fmt: skip
    figures = []
    for size in (int(s) for s in args.sizes.split(",")):
        result = _replay_apart(size)
        figures.append(result)
        print(f"  {size:>6} {result['controller_s']:>7.2f} {result['plan_wall']:>6.2f} {result['run_wall']:>6.2f} "
              f"{result['controller_cpu_s']:>6.2f} {result['per_host_ms']:>8.1f} {result['peak_mb']:>8.0f} "
              f"{result['commands_per_host']['max']:>9} {result['operations_with_changes']:>8} "
              f"{result['output_lines']:>6}" + (f"  FAILED: {', '.join(result['failed'])}" if result["failed"] else ""),
              flush=True)  # fmt: skip
    first, last = figures[0], figures[-1]
    print(
        f"  per-host cost, {last['hosts']} vs {first['hosts']} hosts: {last['per_host_ms'] / first['per_host_ms']:.2f}x"
    )
    limited = _replay_apart(last["hosts"], "worker1")
    print(f"  --limit worker1 of {last['hosts']} hosts: {limited['controller_s']:.2f} s wall, "
          f"{limited['controller_cpu_s']:.2f} s CPU, {limited['hosts_read']} hosts read (the managers and the "
          f"limit), {limited['operations_with_changes']} changes")  # fmt: skip
    node_cpu = {role: recorded[role]["node_cpu"] for role in ("manager", "worker")}
    (RESULTS / "scale.json").write_text(json.dumps({"node_cpu_s": node_cpu, "firewall": recorded.get("firewall"),
                                                    "sizes": figures, "limited": limited}, indent=1))  # fmt: skip
    if any(f["operations_with_changes"] or f["failed"] for f in figures):
        raise SystemExit("a replayed no-op planned changes or failed: the replay isn't a converged cluster")


if __name__ == "__main__":
    main()
