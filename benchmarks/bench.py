"""Print the lab and swarm-deploy figures: lab up (cold image build optional, warm, no-op), node memory, and
for each cluster shape a cold deploy (with the package-install share) and a no-op re-run, with SSH commands
per host. Uses labs named bench-*, removed afterwards.

    python benchmarks/bench.py [--shapes 1+3,1+11] [--rebuild-image]
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STATE = Path(tempfile.mkdtemp(prefix="pyinfra-swarm-bench-"))


def env(lab: str) -> dict[str, str]:
    return {**os.environ, "PYINFRA_SWARM_LAB": lab, "PYINFRA_SWARM_LAB_DIR": str(STATE),
            "PYINFRA_SWARM_PKI_DIR": str(STATE / lab / "pki")}  # fmt: skip


def cluster_only() -> Path:
    """Group data that turns the workloads (registry, images, stacks) off: just the swarm."""
    folder = STATE / "cluster-only"
    folder.mkdir(exist_ok=True)
    (folder / "all.py").write_text(
        "registry_mode = None\ndocker_image_archives = []\ndocker_images = []\nswarm_stacks = []\n"
    )
    return folder


def lab(lab_name: str, *args: str) -> float:
    started = time.monotonic()
    subprocess.run([str(BIN / "pyinfra-swarm"), "lab", *args, "--name", lab_name], env=env(lab_name), cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    return time.monotonic() - started


def deploy(
    lab_name: str, group_data: Path | None = None, verbose: bool = True
) -> tuple[float, list[tuple[float, str]]]:
    """Wall time and the timestamped output lines of one run of deploy.py (`-vv` prints every command, for
    counting them; timed no-op runs go without it, as a user runs them)."""
    started = time.monotonic()
    extra = ["--group-data", str(group_data)] if group_data else []
    extra += ["-vv"] if verbose else []
    proc = subprocess.Popen(
        [str(BIN / "pyinfra"), "-y", *extra, "inventory/lab.py", "deploy.py"], env=env(lab_name), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [(time.monotonic() - started, re.sub(r"\x1b\[[0-9;]*m", "", line.rstrip())) for line in proc.stdout]
    if proc.wait() != 0:
        print("\n".join(text for _, text in lines[-30:]))
        raise SystemExit(f"deploy on {lab_name} failed")
    return time.monotonic() - started, lines


def status(lab_name: str) -> float:
    """Wall time of `pyinfra-swarm status` on a lab (exit 0 or 1: both are a full report)."""
    started = time.monotonic()
    result = subprocess.run([str(BIN / "pyinfra-swarm"), "status", "inventory/lab.py"], env=env(lab_name), cwd=ROOT,
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode not in (0, 1):
        raise SystemExit(f"status on {lab_name} failed: {result.stderr}")
    return time.monotonic() - started


def commands_per_host(lines: list[tuple[float, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, text in lines:
        match = re.match(r"^\[([\w.-]+)\]\s+>>> ", text)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def phase(lines: list[tuple[float, str]], name: str) -> float:
    """Seconds between the start of the operation called `name` and the start of the next one."""
    starts = [
        (t, text) for t, text in lines if text.startswith("--> Starting operation:") or text.startswith("--> Results")
    ]
    for (t, text), (t_next, _) in itertools.pairwise(starts):
        if name in text:
            return t_next - t
    return 0.0


def per_host(counts: dict[str, int]) -> str:
    managers = [v for k, v in counts.items() if k.startswith("manager")]
    workers = [v for k, v in counts.items() if k.startswith("worker")]
    return f"manager {max(managers or [0])}, workers {min(workers or [0])}-{max(workers or [0])}"


def bench_lab(api: docker.APIClient, rebuild: bool) -> None:
    print("== lab: 1 manager + 3 workers")
    if rebuild:
        for image in api.images(name="pyinfra-swarm-node"):
            api.remove_image(image["Id"], force=True)
        print(f"  lab up, node image build included: {lab('bench-lab', 'up', '--workers', '3'):6.1f} s")
        lab("bench-lab", "down")
    print(f"  warm lab up (image built, no nodes): {lab('bench-lab', 'up', '--workers', '3'):6.1f} s")
    print(f"  lab up on a running lab (no-op):      {lab('bench-lab', 'up', '--workers', '3'):6.1f} s")
    time.sleep(10)  # let the nodes settle to idle
    for container in api.containers(filters={"label": "pyinfra-swarm.lab=bench-lab"}):
        stats = api.stats(container["Id"], stream=False)
        usage = stats["memory_stats"]["usage"] - stats["memory_stats"].get("stats", {}).get("cache", 0)
        print(f"  idle memory of {container['Names'][0].lstrip('/')}: {usage / 2**20:5.1f} MiB")
    lab("bench-lab", "down")


def bench_demo() -> None:
    name = "bench-demo"
    print("== the demo on 1 manager + 3 workers")
    lab(name, "up", "--managers", "1", "--workers", "3")
    try:
        wall, _ = deploy(name, cluster_only())
        print(f"  the swarm alone (cold):                      {wall:6.1f} s")
        wall, lines = deploy(name)
        print(f"  formed cluster -> demo stack converged:      {wall:6.1f} s (registry image build, demo image "
              f"build and push, stacks)")  # fmt: skip
        steps = {"registry image built": "Build pyinfra-swarm/registry", "registry stack": "Deploy stack registry",
                 "demo image built and pushed": "/demo-app:", "demo stack": "Deploy stack demo"}  # fmt: skip
        for label, step in steps.items():
            print(f"    {label:<40} {phase(lines, step):5.1f} s")
        walls = [deploy(name, verbose=False)[0] for _ in range(3)]
        print(f"  no-op re-run of the full deploy: {statistics.median(walls):5.2f} s median of 3 "
              f"({', '.join(f'{w:.2f}' for w in walls)})")  # fmt: skip
    finally:
        lab(name, "down")


def bench_shape(managers: int, workers: int) -> None:
    name = f"bench-{managers}m{workers}w"
    print(f"== swarm deploy: {managers} manager(s) + {workers} workers (no workloads)")
    lab(name, "up", "--managers", str(managers), "--workers", str(workers))
    try:
        wall, lines = deploy(name, cluster_only())
        install = phase(lines, "Install Docker (")
        print(f"  cold deploy:   {wall:6.1f} s, of which installing packages {install:5.1f} s "
              f"({100 * install / wall:.0f} %), the rest {wall - install:5.1f} s")  # fmt: skip
        print(f"    SSH commands per host: {per_host(commands_per_host(lines))}")
        walls = [deploy(name, cluster_only(), verbose=False)[0] for _ in range(3)]
        print(
            f"  no-op re-run:  {statistics.median(walls):6.2f} s median of 3 ({', '.join(f'{w:.2f}' for w in walls)})"
        )
        print(f"    SSH commands per host: {per_host(commands_per_host(deploy(name, cluster_only())[1]))}")
        walls = [status(name) for _ in range(3)]
        print(f"  pyinfra-swarm status: {statistics.median(walls):5.2f} s median of 3 "
              f"({', '.join(f'{w:.2f}' for w in walls)}; one command on one manager)")  # fmt: skip
    finally:
        lab(name, "down")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1+3,1+11", help="cluster shapes, MANAGERS+WORKERS (default: %(default)s)")
    parser.add_argument("--rebuild-image", action="store_true", help="also time a lab up that builds the node image")
    parser.add_argument("--skip-lab", action="store_true", help="no lab figures")
    parser.add_argument("--skip-demo", action="store_true", help="no demo figures")
    args = parser.parse_args()
    api = docker.APIClient(version="auto")
    print(f"machine: {os.cpu_count()} cores; pyinfra-swarm benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    if not args.skip_lab:
        bench_lab(api, args.rebuild_image)
    if not args.skip_demo:
        bench_demo()
    for shape in filter(None, args.shapes.split(",")):
        managers, workers = (int(n) for n in shape.split("+"))
        bench_shape(managers, workers)


if __name__ == "__main__":
    main()
