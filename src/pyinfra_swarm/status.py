"""`pyinfra-swarm status INVENTORY`: the swarm's health, read only, through the first manager of the inventory
that answers, in one command: nodes, quorum, services, what differs between the inventory and the swarm, what
expires, and who holds the cluster lock; and, from every host of the inventory at once (one command each), what
its engine still has to do (facts.EngineState). A table for people, `--json` for machines (schema below), an
exit status for scripts.

JSON schema `pyinfra-swarm.status/3` (/2 lacked `api`, `containerd` and `firewall_backend`; /1 also `lock`,
`maintenance`, `pending` and `taken_out`)::

    {"schema": "pyinfra-swarm.status/3", "through": str, "healthy": bool, "problems": [str], "warnings": [str],
     "nodes": [{"hostname": str, "inventory_host": str|null, "role": "manager"|"worker", "leader": bool,
                "reachability": str|null, "availability": str, "state": str, "engine": str, "addr": str,
                "labels": {str: str},
                "maintenance": str|null,     # drained for a turn by this run: "USER@HOST (pid N) since TIME"
                "pending": [str]|null,       # why its engine must restart; null: its host did not answer
                "api": str|null, "containerd": str|null,  # as its host reports them (null: not reported)
                "firewall_backend": str|null}],  # the engine's own (Docker 28 on): iptables, nftables
     "quorum": {"managers": int, "reachable": int, "needed": int, "tolerates": int},
     "services": [{"name": str, "stack": str|null, "mode": "replicated"|"global", "running": int, "desired": int,
                   "image": str, "ports": [str], "last_error": str|null}],
     "drift": {"not_in_swarm": [str], "not_in_inventory": [str], "down": [str], "taken_out": [str]},
     "expiry": {"node_certificate_days": int|null, "registry_certificate_days": int|null},
     "lock": {"who": str, "what": str, "since": str, "silent": int}|null}

A node left drained by a run that never ended its turn, an engine restart pending, and a lock with no heartbeat
for longer than lock.EXPIRY are problems; a lock held by a live run, and a drain or pause that data doesn't ask
for (by hand), are warnings. Hosts with `swarm_state: absent` are not drift (`taken_out` lists those still in
the swarm). Exit status: 0 healthy (warnings allowed), 1 problems (each named), 2 no manager answered or bad
usage.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from cryptography import x509
from pyinfra.api import Config, Host, State, StringCommand

from pyinfra_swarm import lock as cluster_lock
from pyinfra_swarm.engines import SPI_ENGINES, changed_spi, engine_release
from pyinfra_swarm.facts import EngineState, EngineVersions, node_entry, parse_replicas
from pyinfra_swarm.lock import EXPIRY, INSPECT, holder_of
from pyinfra_swarm.operations.callbacks import first_answer
from pyinfra_swarm.operations.swarm import AVAILABILITY_LABEL, DRAINED_LABEL, connector_args
from pyinfra_swarm.pki import pki_dir
from pyinfra_swarm.settings import MANAGERS, is_ip, setting, swarm_hosts

SCHEMA = "pyinfra-swarm.status/3"
T = TypeVar("T")
HEALTHY, PROBLEMS, UNREACHABLE = 0, 1, 2
CERT_WARNING_DAYS = 30
SECTIONS = ("nodes", "services", "replicas", "tasks", "cert", "lock")
COMMAND = (
    "docker node inspect $(docker node ls -q) || exit 3; echo '##services##'; "
    "ids=$(docker service ls -q); [ -z \"$ids\" ] || docker service inspect $ids; echo '##replicas##'; "
    "docker service ls --format '{{.Name}} {{.Replicas}}'; echo '##tasks##'; "
    '[ -z "$ids" ] || docker service ps $ids --no-trunc --format '
    "'{{.ID}}\t{{.Name}}\t{{.Node}}\t{{.DesiredState}}\t{{.CurrentState}}\t{{.Error}}'; echo '##cert##'; "
    "cat /var/lib/docker/swarm/certificates/swarm-node.crt 2>/dev/null; echo '##lock##'; "
    f"{INSPECT}; true"
)


def load(inventory_path: str) -> State:
    """The inventory as pyinfra's CLI loads it (its group data and SSH settings included), not connected."""
    from pyinfra.context import ctx_config, ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    state, config = State(), Config()
    ctx_state.set(state)
    ctx_config.set(config)
    inventory = make_inventory(inventory_path, cwd=os.getcwd())
    ctx_inventory.set(inventory)
    state.init(inventory, config)
    return state


def on_first_manager(state: State, ask: Callable[[Host], T]) -> tuple[Host, T]:
    """(the manager, what `ask` got from it) of the first of the inventory's managers that answers; `ask` raises
    LookupError when a manager doesn't. LookupError naming every manager's problem when none does."""
    managers = list(state.inventory.get_group(MANAGERS, []))
    try:
        return first_answer(managers, lambda manager: (manager, ask(manager)), connect=True)
    except LookupError as exc:
        raise LookupError(f"no manager of the inventory answered: {exc}") from None


def read_swarm(state: State) -> tuple[Host, list[str]]:
    """(the manager that answered, its output), trying the inventory's managers in order."""

    def ask(manager: Host) -> list[str]:
        status, output = manager.run_shell_command(
            StringCommand(COMMAND), print_output=False, **connector_args(state, manager)
        )
        if not status:
            raise LookupError(output.stderr.strip().splitlines()[-1] if output.stderr.strip() else "no answer")
        return output.stdout_lines

    return on_first_manager(state, ask)


VERSIONS = "#pyinfra-swarm-versions"


def read_engines(state: State) -> dict[str, dict[str, Any] | None]:
    """Every swarm host's EngineState with its EngineVersions under "versions" (None where it doesn't answer),
    one command each, all at once."""
    fact, versions = EngineState(), EngineVersions()
    command = f"{fact.command()}; echo '{VERSIONS}'; {versions.command()}"

    def engine(host: Host) -> dict[str, Any] | None:
        if not host.connected:
            host.connect(show_errors=False)
        if not host.connected:
            return None
        status, output = host.run_shell_command(StringCommand(command), print_output=False,
                                                **connector_args(state, host))  # fmt: skip
        if not status:
            return None
        lines = output.stdout_lines
        cut = lines.index(VERSIONS) if VERSIONS in lines else len(lines)
        return {**fact.process(lines[:cut]), "versions": versions.process(lines[cut + 1 :])}

    hosts = [h for h in swarm_hosts(state) if setting(h, "swarm_state") != "absent"]
    greenlets = {host.name: gevent.spawn(engine, host) for host in hosts}
    gevent.joinall(list(greenlets.values()))
    return {name: greenlet.value for name, greenlet in greenlets.items()}


def _sections(lines: list[str]) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {name: [] for name in SECTIONS}
    current = "nodes"
    for line in lines:
        marker = line.strip()
        if marker.startswith("##") and marker.strip("#") in SECTIONS:
            current = marker.strip("#")
        else:
            sections[current].append(line)
    return sections


def _days_left(pem: str, now: datetime.datetime) -> int | None:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    return (cert.not_valid_after_utc - now).days


def _registry_days(now: datetime.datetime) -> int | None:
    certificates = sorted(pki_dir().glob("registry-*.crt"))
    days = [d for d in (_days_left(c.read_text(), now) for c in certificates) if d is not None]
    return min(days) if days else None


def report(state: State, through: Host, lines: list[str], now: datetime.datetime | None = None,
           engines: dict[str, dict[str, Any] | None] | None = None) -> dict[str, Any]:  # fmt: skip
    """The status report (see the module docstring) from the manager's output and the hosts' engine states."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    engines = engines or {}
    sections = _sections(lines)
    raw_nodes = json.loads("\n".join(sections["nodes"]) or "[]")
    hosts = swarm_hosts(state)
    by_address = {h.data.get("swarm_advertise_addr"): h.name for h in hosts}
    absent = {h.name for h in hosts if setting(h, "swarm_state") == "absent"}
    nodes = []
    for entry in map(node_entry, raw_nodes):
        addr = entry["addr"] or ""
        nodes.append({
            "hostname": entry["hostname"],
            "inventory_host": by_address.get(addr),
            "role": entry["role"],
            "leader": entry["leader"],
            "reachability": entry["reachability"],
            "availability": entry["availability"],
            "state": entry["state"],
            "engine": entry["engine"],
            "addr": addr,
            "labels": entry["labels"],
            "maintenance": entry["labels"].get(DRAINED_LABEL),
            "pending": (engines.get(by_address.get(addr) or "") or {}).get("pending"),
            **_versions(engines.get(by_address.get(addr) or "")),
        })  # fmt: skip
    managers = [n for n in nodes if n["role"] == "manager"]
    reachable = sum(1 for n in managers if n["reachability"] == "reachable")
    needed = len(managers) // 2 + 1
    quorum = {
        "managers": len(managers),
        "reachable": reachable,
        "needed": needed,
        "tolerates": max(reachable - needed, -1),
    }
    services = _services(sections, {n["hostname"] for n in nodes if n["state"] != "ready"})
    inventory_addresses = {a: n for a, n in by_address.items() if isinstance(a, str) and is_ip(a)}
    swarm_addresses = {n["addr"] for n in nodes}
    drift = {
        "not_in_swarm": sorted(name for addr, name in inventory_addresses.items()
                               if addr not in swarm_addresses and name not in absent),
        "not_in_inventory": sorted(n["hostname"] for n in nodes if n["inventory_host"] is None),
        "down": sorted(n["hostname"] for n in nodes if n["state"] != "ready"),
        "taken_out": sorted(n["inventory_host"] for n in nodes if n["inventory_host"] in absent),
    }  # fmt: skip
    expiry = {"node_certificate_days": _days_left("\n".join(sections["cert"]), now) if sections["cert"] else None,
              "registry_certificate_days": _registry_days(now)}  # fmt: skip
    holder = holder_of(sections["lock"])
    lock = {"who": holder.who, "what": holder.what, "since": holder.since, "silent": holder.silent} if holder else None
    wanted = {h.name: setting(h, "swarm_availability") for h in hosts}
    problems, warnings = _judge(nodes, quorum, services, drift, expiry)
    problems, warnings = _judge_day2(nodes, lock, wanted, problems, warnings)
    warnings += _mixed_generations(nodes)
    return {"schema": SCHEMA, "through": through.name, "healthy": not problems, "problems": problems,
            "warnings": warnings, "nodes": nodes, "quorum": quorum, "services": services, "drift": drift,
            "expiry": expiry, "lock": lock}  # fmt: skip


def _versions(engine: dict[str, Any] | None) -> dict[str, Any]:
    """A node's engine API, containerd and firewall backend, as its host reported them (None: not reported)."""
    versions = (engine or {}).get("versions") or {}
    return {key: versions.get(name) for key, name in (("api", "api"), ("containerd", "containerd"),
                                                       ("firewall_backend", "firewall_backend"))}  # fmt: skip


def _mixed_generations(nodes: list[dict[str, Any]]) -> list[str]:
    """A warning when the nodes run engines of different major versions (an upgrade under way, or hosts set up
    apart), naming those whose encrypted overlay traffic can't reach each other (moby#51798)."""
    majors: dict[str, list[str]] = {}
    for node in nodes:
        major = str(node["engine"] or "?").split(".")[0]
        majors.setdefault(major, []).append(node["hostname"])
    releases = {n["hostname"]: r for n in nodes if (r := engine_release(n["engine"])) is not None}
    changed = sorted(name for name, release in releases.items() if changed_spi(release))
    warnings = []
    if len(majors) > 1:
        listing = "; ".join(f"{major}.x: {', '.join(sorted(names))}" for major, names in sorted(majors.items()))
        warnings.append(f"engines of different generations ({listing}): finish the upgrade (docker_version)")
    if changed and len(changed) < len(releases):
        warnings.append(f"no encrypted overlay traffic passes between {', '.join(changed)} and the other nodes: their "
                        f"engines ({SPI_ENGINES}) compute IPsec SPIs unlike the others' (moby#51798)")  # fmt: skip
    return warnings


def _judge_day2(nodes: list, lock: dict | None, wanted: dict[str, str], problems: list[str],
                warnings: list[str]) -> tuple[list[str], list[str]]:  # fmt: skip
    """What runs of the deploy left behind or are doing: nodes left drained, engine restarts pending, the lock."""
    problems, warnings = list(problems), list(warnings)
    for node in nodes:
        name = node["hostname"]
        if node["maintenance"]:
            problems.append(f"node {name} was left drained by a run that did not end its turn ({node['maintenance']}): "
                            "the next deploy gives it back")  # fmt: skip
        elif node["availability"] not in ("active", wanted.get(node["inventory_host"] or "")) and (
            node["labels"].get(AVAILABILITY_LABEL) != node["availability"]
        ):
            warnings.append(f"node {name} is {node['availability']}, not by the deploy (by hand?): the deploy "
                                "leaves it so")  # fmt: skip
        if node["pending"]:
            problems.append(f"node {name}: its engine must restart ({'; '.join(node['pending'])}): the next deploy "
                            "does it, in the node's turn")  # fmt: skip
    if lock is not None and lock["silent"] > EXPIRY:
        problems.append(f"the cluster lock of {lock['who']} (`{lock['what']}` since {lock['since']}) has had no "
                        f"heartbeat for {lock['silent']} s: a run that was killed; the next run breaks it")  # fmt: skip
    elif lock is not None:
        warnings.append(f"a run holds the cluster lock: {lock['who']}, `{lock['what']}` since {lock['since']}")
    return problems, warnings


def _services(sections: dict[str, list[str]], down: set[str]) -> list[dict[str, Any]]:
    """The services; running = tasks meant to run and running, on nodes that are up."""
    replicas = parse_replicas(sections["replicas"])
    errors: dict[str, str] = {}
    running_tasks: dict[str, int] = {}
    for line in sections["tasks"]:
        fields = line.split("\t")
        if len(fields) != 6:
            continue
        service = fields[1].lstrip("\\_ ").rsplit(".", 1)[0]
        if fields[5].strip():
            errors.setdefault(service, fields[5].strip())  # newest first
        if fields[3] == "Running" and fields[4].startswith("Running") and fields[2] not in down:
            running_tasks[service] = running_tasks.get(service, 0) + 1
    services = []
    for service in json.loads("\n".join(sections["services"]) or "[]"):
        spec = service["Spec"]
        # `docker service ls` still counts a task of a node that went down; its tasks don't.
        _, desired = replicas.get(spec["Name"], (0, 0))
        running = running_tasks.get(spec["Name"], 0)
        ports = [f"{p.get('PublishedPort')}:{p.get('TargetPort')}/{p.get('Protocol')} ({p.get('PublishMode')})"
                 for p in (service.get("Endpoint", {}).get("Ports") or [])]  # fmt: skip
        services.append({
            "name": spec["Name"],
            "stack": (spec.get("Labels") or {}).get("com.docker.stack.namespace"),
            "mode": "global" if "Global" in spec.get("Mode", {}) else "replicated",
            "running": running,
            "desired": desired,
            "image": spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0],
            "ports": ports,
            "last_error": errors.get(spec["Name"]) if running < desired else None,
        })  # fmt: skip
    return sorted(services, key=lambda s: s["name"])


def _judge(nodes: list, quorum: dict, services: list, drift: dict, expiry: dict) -> tuple[list[str], list[str]]:
    problems, warnings = [], []
    for node in nodes:
        if node["state"] != "ready":
            problems.append(f"node {node['hostname']} is {node['state']}")
        if node["role"] == "manager" and node["reachability"] != "reachable":
            problems.append(f"manager {node['hostname']} is {node['reachability'] or 'unknown'}")
    if quorum["reachable"] < quorum["needed"]:
        problems.append(f"quorum lost: {quorum['reachable']} of {quorum['managers']} managers reachable, "
                        f"{quorum['needed']} needed")  # fmt: skip
    elif quorum["tolerates"] == 0 and quorum["managers"] > 1:
        problems.append(f"quorum at risk: {quorum['reachable']} of {quorum['managers']} managers reachable, one more "
                        "manager loss loses the swarm's quorum")  # fmt: skip
    elif quorum["managers"] == 1:
        warnings.append("a single manager: losing it loses the swarm's control plane (use 3 managers)")
    for service in services:
        if service["running"] < service["desired"]:
            error = f": {service['last_error']}" if service["last_error"] else ""
            problems.append(f"service {service['name']} runs {service['running']}/{service['desired']}{error}")
    if drift["not_in_swarm"]:
        problems.append(f"in the inventory but not in the swarm: {', '.join(drift['not_in_swarm'])}")
    if drift["not_in_inventory"]:
        problems.append(f"in the swarm but not in the inventory: {', '.join(drift['not_in_inventory'])}")
    if drift["taken_out"]:
        warnings.append(f"still in the swarm, though data takes them out (swarm_state: absent): "
                        f"{', '.join(drift['taken_out'])}: the next deploy does")  # fmt: skip
    for name, days in expiry.items():
        if days is not None and days < CERT_WARNING_DAYS:
            warnings.append(f"{name.replace('_days', '').replace('_', ' ')} expires in {days} days")
    return problems, warnings


def render(status: dict[str, Any], colour: bool) -> str:
    """The report as tables for people."""

    def paint(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if colour else text

    def table(rows: list[list[str]]) -> list[str]:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return ["  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]

    lines = [f"swarm status (through {status['through']}): "
             + (paint("healthy", "32") if status["healthy"] else paint("PROBLEMS", "31"))]  # fmt: skip
    node_rows = [["NODE", "HOST", "ROLE", "MANAGER", "AVAILABILITY", "STATE", "ENGINE", "API", "FIREWALL", "LABELS"]]
    for n in status["nodes"]:
        manager = "leader" if n["leader"] else (n["reachability"] or "")
        labels = ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items()) if not k.startswith("pyinfra-swarm."))
        node_rows.append([n["hostname"], n["inventory_host"] or "-", n["role"], manager, n["availability"], n["state"],
                          n["engine"], n["api"] or "-", n["firewall_backend"] or "-", labels or "-"])  # fmt: skip
    q = status["quorum"]
    lines += ["", "nodes", *table(node_rows), "",
              f"quorum: {q['reachable']}/{q['managers']} managers reachable, {q['needed']} needed, "
              f"survives {max(q['tolerates'], 0)} more manager loss(es)"]  # fmt: skip
    if status["services"]:
        rows = [["SERVICE", "STACK", "MODE", "REPLICAS", "IMAGE", "PORTS"]]
        rows += [[s["name"], s["stack"] or "-", s["mode"], f"{s['running']}/{s['desired']}", s["image"],
                  ", ".join(s["ports"]) or "-"] for s in status["services"]]  # fmt: skip
        lines += ["", "services", *table(rows)]
    expiry = status["expiry"]
    lines += ["", "expires: swarm node certificate in "
              + (f"{expiry['node_certificate_days']} days" if expiry["node_certificate_days"] is not None else "?")
              + ", registry certificate in "
              + (f"{expiry['registry_certificate_days']} days" if expiry["registry_certificate_days"] is not None
                 else "- (none on this machine)")]  # fmt: skip
    lock = status["lock"]
    lines.append("cluster lock: " + (f"held by {lock['who']}, `{lock['what']}` since {lock['since']} (last heartbeat "
                                     f"{lock['silent']} s ago)" if lock else "free"))  # fmt: skip
    lines += [paint(f"problem: {p}", "31") for p in status["problems"]]
    lines += [paint(f"warning: {w}", "33") for w in status["warnings"]]
    return "\n".join(lines)


def _load_or_say(inventory: str) -> State | None:
    try:
        return load(inventory)
    except Exception as exc:  # pyinfra's CLI errors wrap what the inventory file raised
        cause = getattr(exc, "e", None) or exc.__context__ or exc
        print(f"pyinfra-swarm: error: can't load inventory {inventory}: {cause}", file=sys.stderr)
        return None


def lock_main(inventory: str, breaking: bool) -> int:
    """`pyinfra-swarm lock INVENTORY [--break]`: who holds the cluster lock (exit 0 free, 1 held), or break it
    (exit 0); 2 when no manager answered."""
    state = _load_or_say(inventory)
    if state is None:
        return UNREACHABLE
    try:
        _, holder = on_first_manager(
            state, lambda m: (cluster_lock.force_break if breaking else cluster_lock.read)(state, m)
        )
    except LookupError as exc:
        print(f"pyinfra-swarm: error: {exc}", file=sys.stderr)
        return UNREACHABLE
    if breaking:
        print(f"the cluster lock of {holder} is broken" if holder else "the cluster lock was free")
        return HEALTHY
    print(f"the cluster lock is held by {holder}" if holder else "the cluster lock is free")
    return PROBLEMS if holder else HEALTHY


def main(inventory: str, as_json: bool, watch: bool, interval: float = 2.0) -> int:
    """Print the status once, or again every `interval` seconds until interrupted; the exit status."""
    state = _load_or_say(inventory)
    if state is None:
        return UNREACHABLE
    code = HEALTHY
    while True:
        engines = read_engines(state)  # every host connected at once, then the swarm read through a manager
        try:
            manager, lines = read_swarm(state)
        except LookupError as exc:
            print(f"pyinfra-swarm: error: {exc}", file=sys.stderr)
            code = UNREACHABLE
        else:
            status = report(state, manager, lines, engines=engines)
            code = HEALTHY if status["healthy"] else PROBLEMS
            if as_json:
                print(json.dumps(status, indent=2, sort_keys=True))
            else:
                if watch and sys.stdout.isatty():
                    print("\x1b[2J\x1b[H", end="")
                print(render(status, colour=sys.stdout.isatty()))
        if not watch:
            return code
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return code
