"""Every fact pyinfra-swarm reads from a host: swarm membership, the node list, swarm objects and stacks,
daemon.json, packages, images, kernel features, addresses and firewalls. Each is one shell command; none
prints a secret. `Bundle` runs several in one command, and `read` returns a fact from what this run has
gathered already (see plan.py), reading it from the host only when it wasn't."""

from __future__ import annotations

import hashlib
import json
import shlex
import weakref
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from pyinfra.api import FactBase, Host, State
from pyinfra.context import ctx_host

Spec = dict[str, tuple[type[FactBase], dict[str, Any]]]  # name -> (fact class, its arguments)
STATE_DIR = "/etc/pyinfra-swarm"  # where pyinfra-swarm keeps its files on a node
_GATHERED: weakref.WeakKeyDictionary[State, dict[tuple[Host, str], Any]] = weakref.WeakKeyDictionary()


def fact_key(cls: type[FactBase], kwargs: dict[str, Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}:{json.dumps(kwargs, sort_keys=True, default=str)}"


def remember(state: State, host: Host, spec: Spec, values: dict[str, Any]) -> None:
    """Keep the facts gathered for `host` (a Bundle's result), for `read`."""
    gathered = _GATHERED.setdefault(state, {})
    for name, (cls, kwargs) in spec.items():
        gathered[(host, fact_key(cls, kwargs))] = values[name]


def recall(target: Host, cls: type[FactBase], kwargs: dict[str, Any]) -> Any:
    """A fact this run gathered already for `target`; KeyError when it wasn't."""
    return _GATHERED[target.state][(target, fact_key(cls, kwargs))]


def read(cls: type[FactBase], target: Host | None = None, **kwargs: Any) -> Any:
    """A fact of `target` (default: the host being deployed): the value this run gathered already, else read
    from the host now, as `host.get_fact` would (operations used on their own work as any pyinfra operation)."""
    target = target or ctx_host.get()
    key = (target, fact_key(cls, kwargs))
    gathered = _GATHERED.get(target.state, {})
    if key in gathered:
        return gathered[key]
    return target.get_fact(cls, **kwargs)


def docker_api(path: str) -> str:
    """Shell that GETs `path` from the local Docker engine's API with curl when curl is there (about half
    the time of the docker CLI, which matters with many nodes per CPU); it fails when the engine answers
    with an error, or curl is missing, so the caller falls back to the CLI."""
    return f"{{ command -v curl >/dev/null && curl -sf --unix-socket /var/run/docker.sock http://docker{path}; }}"


def docker_post(path: str, with_status: bool = True) -> str:
    """Shell that POSTs its stdin (JSON) to `path` of the local Docker engine's API and prints the answer, then
    the HTTP status on a line of its own (how a secret, a join token or an unlock key, reaches the engine
    without a command line); without `with_status`, an HTTP error fails the command instead."""
    report = "-w '\\n%{http_code}'" if with_status else "-f"
    return (
        "curl -sS --unix-socket /var/run/docker.sock -H 'Content-Type: application/json' --data-binary @- "
        f"{report} 'http://localhost{path}'"
    )


def parse_replicas(lines: list[str]) -> dict[str, tuple[int, int]]:
    """`NAME RUNNING/DESIRED ...` lines (`docker service ls --format '{{.Name}} {{.Replicas}}'`) -> {service:
    (running, desired)}; lines that say something else are skipped."""
    counts = {}
    for line in lines:
        name, _, replicas = line.strip().partition(" ")
        running, _, desired = replicas.split(" ")[0].partition("/")
        if name and running.isdigit() and desired.isdigit():
            counts[name] = (int(running), int(desired))
    return counts


def node_entry(node: dict[str, Any]) -> dict[str, Any]:
    """A node of Docker's API (`docker node inspect`) as this package keeps it."""
    manager = node.get("ManagerStatus") or {}
    return {
        "id": node["ID"],
        "hostname": node["Description"]["Hostname"],
        "role": node["Spec"]["Role"],
        "availability": node["Spec"]["Availability"],
        "labels": node["Spec"].get("Labels") or {},
        "state": node["Status"]["State"],
        "addr": node["Status"].get("Addr"),
        "reachability": manager.get("Reachability"),
        "leader": bool(manager.get("Leader")),
        "engine": (node["Description"].get("Engine") or {}).get("EngineVersion", ""),
    }


KERNEL_OPTIONS = ("VXLAN", "IP_VS", "INET_ESP", "CRYPTO_GCM", "XFRM_USER", "OVERLAY_FS", "BRIDGE_NETFILTER")


class DockerSwarm(FactBase[dict[str, Any] | None]):
    """`docker info`'s Swarm section (LocalNodeState, NodeID, ControlAvailable, Cluster, RemoteManagers);
    None when Docker isn't installed, {"LocalNodeState": "unknown", "StateOnDisk": bool} when its daemon
    doesn't answer (StateOnDisk: /var/lib/docker/swarm holds a swarm's state, so the node may be a member)."""

    def requires_command(self) -> str:
        return "docker"

    def command(self) -> str:
        return (
            f"{docker_api('/info')} || docker info --format '{{{{json .Swarm}}}}' 2>/dev/null || "
            "{ test -s /var/lib/docker/swarm/state.json "
            '&& echo \'{"LocalNodeState": "unknown", "StateOnDisk": true}\' '
            '|| echo \'{"LocalNodeState": "unknown", "StateOnDisk": false}\'; }'
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        info = json.loads("".join(output))
        return info.get("Swarm", info)  # Docker's API answers all of /info, the CLI just the Swarm part


JOINED = ("active", "pending", "locked")  # in a swarm, or on the way in


@dataclass(frozen=True)
class LocalSwarm:
    """A host's own membership, as the DockerSwarm fact tells it. `state` is docker's LocalNodeState: None
    (Docker not installed), "unknown" (the daemon doesn't answer), "inactive", "pending", "active", "locked"
    or "error"."""

    state: str | None = None
    node_id: str = ""
    control: bool = False  # ControlAvailable: a manager that reaches the raft
    cluster: dict[str, Any] = field(default_factory=dict)  # the swarm's ID and spec (managers only)
    on_disk: bool = False  # the daemon doesn't answer, and /var/lib/docker/swarm holds a swarm's state
    managers: tuple[str, ...] = ()  # the addresses of the managers it knows

    @classmethod
    def of(cls, info: dict[str, Any] | None) -> LocalSwarm:
        info = info or {}
        return cls(
            state=info.get("LocalNodeState"),
            node_id=info.get("NodeID") or "",
            control=bool(info.get("ControlAvailable")),
            cluster=info.get("Cluster") or {},
            on_disk=bool(info.get("StateOnDisk")),
            managers=tuple(m.get("Addr", "?") for m in info.get("RemoteManagers") or []),
        )

    @property
    def joined(self) -> bool:
        """In a swarm, or on the way in: what `docker swarm leave` would leave."""
        return self.state in JOINED

    @property
    def free(self) -> bool:
        """In no swarm that Docker reports: not installed, not answering, or inactive."""
        return self.state in (None, "unknown", "inactive")

    @property
    def active(self) -> bool:
        return self.state == "active"

    @property
    def locked(self) -> bool:
        return self.state == "locked"

    @property
    def cluster_id(self) -> str:
        return self.cluster.get("ID") or ""

    @property
    def autolocked(self) -> bool:
        """Whether its swarm has autolock on (only managers see the swarm's spec)."""
        return bool(((self.cluster.get("Spec") or {}).get("EncryptionConfig") or {}).get("AutoLockManagers"))


class SwarmNodes(FactBase[list[dict[str, Any]] | None]):
    """The swarm's nodes as a manager sees them: id, hostname, role, availability, state, addr, labels,
    reachability (managers) and leader. None while the manager can't list them (no leader elected yet)."""

    ERROR = "##pyinfra-swarm-no-node-list##"

    def requires_command(self) -> str:
        return "docker"

    def command(self) -> str:
        return (
            f"{docker_api('/nodes')} || {{ ids=$(docker node ls -q 2>/dev/null) && docker node inspect $ids; }} || "
            f"echo '{self.ERROR}'"
        )

    @staticmethod
    def default() -> list[dict[str, Any]]:
        return []

    def process(self, output: list[str]) -> list[dict[str, Any]] | None:
        if self.ERROR in output:
            return None
        return [node_entry(node) for node in json.loads("".join(output))]


class OverlayNetworks(FactBase[list[dict[str, Any]]]):
    """The swarm's overlay networks as a manager sees them (those of stacks too): [{"name", "encrypted"}]."""

    def requires_command(self) -> str:
        return "docker"

    def command(self) -> str:
        overlay = "%7B%22driver%22%3A%7B%22overlay%22%3Atrue%7D%7D"  # {"driver":{"overlay":true}}
        return (
            f"{docker_api('/networks?filters=' + overlay)} || "
            "{ ids=$(docker network ls --filter driver=overlay -q 2>/dev/null) && docker network inspect $ids; } || "
            "echo '[]'"
        )

    @staticmethod
    def default() -> list[dict[str, Any]]:
        return []

    def process(self, output: list[str]) -> list[dict[str, Any]]:
        try:
            networks = json.loads("".join(output) or "[]")
        except ValueError:
            return []
        return [
            {"name": n.get("Name", ""), "encrypted": (n.get("Options") or {}).get("encrypted", "false") != "false"}
            for n in networks if isinstance(n, dict)
        ]  # fmt: skip


class DockerDaemonConfig(FactBase[dict[str, Any] | None]):
    """/etc/docker/daemon.json parsed; None when missing, {"__invalid__": text} when it isn't JSON."""

    def command(self) -> str:
        return "cat /etc/docker/daemon.json 2>/dev/null || true"

    def process(self, output: list[str]) -> dict[str, Any] | None:
        text = "\n".join(output).strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return {"__invalid__": text}


# The engine's configuration on a node: daemon.json, a daemon.json staged for the node's next drained turn
# (a change that needs a restart waits there, so an unplanned restart never applies it undrained), the one it
# replaced (kept until the turn ends well) and the record of the last reload (`PID DIGEST`).
DAEMON_JSON = "/etc/docker/daemon.json"
STAGED_DAEMON_JSON = f"{STATE_DIR}/daemon.json.next"
PREVIOUS_DAEMON_JSON = f"{STATE_DIR}/daemon.json.previous"
RELOADED_DAEMON_JSON = f"{STATE_DIR}/daemon.json.reloaded"


def engine_pending(state: dict[str, Any]) -> list[str]:
    """Why a node's engine must restart to run what is on disk (an EngineState), in words; [] when it runs it."""
    pending = []
    if state["staged"]:
        pending.append("a new daemon.json waits for its turn")
    if state["replaced"]:
        pending.append("its engine was upgraded, the old one still runs")
    if state["config_newer"]:
        pending.append("daemon.json changed after the engine started")
    return pending


class EngineState(FactBase[dict[str, Any]]):
    """The running engine against what is on disk: dockerd's PID and start time (epoch seconds), whether its
    binary was replaced after it started (an upgrade not restarted yet: /proc/PID/exe is "(deleted)"),
    daemon.json's change time and digest, the digest of a daemon.json staged for the node's turn, and the
    last reload's record. `pending` lists why the engine must restart to run what is on disk (empty: it
    runs it); a staged daemon.json is one reason."""

    @staticmethod
    def default() -> Any:
        return {"pid": 0, "started": None, "replaced": False, "config_time": None, "config": "", "staged": "",
                "reloaded": "", "config_newer": False, "pending": []}  # fmt: skip

    def command(self) -> str:
        return (
            'pid=$(systemctl show -p MainPID --value docker.service 2>/dev/null); echo "pid=${pid:-0}"; '
            'if [ "${pid:-0}" -gt 0 ] 2>/dev/null && [ -r "/proc/$pid/stat" ]; then '
            'echo "exe=$(readlink "/proc/$pid/exe")"; '
            'awk -v boot="$(awk \'/^btime/ {print $2}\' /proc/stat)" -v hz="$(getconf CLK_TCK)" '
            '\'{printf "started=%.2f\\n", boot + $22 / hz}\' "/proc/$pid/stat"; fi; '
            f'echo "config_time=$(stat -c %Y {DAEMON_JSON} 2>/dev/null)"; '
            f"echo \"config=$(sha256sum < {DAEMON_JSON} 2>/dev/null | cut -d' ' -f1)\"; "
            f"echo \"staged=$(sha256sum < {STAGED_DAEMON_JSON} 2>/dev/null | cut -d' ' -f1)\"; "
            f'echo "reloaded=$(cat {RELOADED_DAEMON_JSON} 2>/dev/null)"'
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        values = dict(line.split("=", 1) for line in output if "=" in line)
        pid = int(values["pid"]) if values.get("pid", "").isdigit() else 0
        started = float(values["started"]) if values.get("started") else None
        config_time = int(values["config_time"]) if values.get("config_time", "").isdigit() else None
        config = values.get("config", "")
        reloaded = values.get("reloaded", "").strip()
        # daemon.json changed after the engine started, and no reload since then read it.
        newer = started is not None and config_time is not None and config_time > int(started)
        state = {
            "pid": pid,
            "started": started,
            "replaced": values.get("exe", "").endswith("(deleted)"),
            "config_time": config_time,
            "config": config,
            "staged": values.get("staged", ""),
            "reloaded": reloaded,
            "config_newer": newer and reloaded != f"{pid} {config}",
        }
        return {**state, "pending": engine_pending(state)}


class EngineVersions(FactBase[dict[str, Any]]):
    """The running engine's version, its API version, containerd's version and the engine's firewall backend
    (reported from Docker 28 on; None before, when those engines only had iptables), from Docker's API
    (the CLI where curl is missing); all None where no engine answers."""

    SEPARATOR = "#pyinfra-swarm-info"

    @staticmethod
    def default() -> Any:
        return {"version": None, "api": None, "containerd": None, "firewall_backend": None}

    def command(self) -> str:
        return (
            f"{{ {docker_api('/version')} || docker version --format '{{{{json .Server}}}}'; }} 2>/dev/null; "
            f"echo; echo '{self.SEPARATOR}'; "
            f"{{ {docker_api('/info')} || docker info --format '{{{{json .}}}}'; }} 2>/dev/null; true"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        text = "\n".join(output)
        version_text, _, info_text = text.partition(self.SEPARATOR)
        version, info = _json_object(version_text), _json_object(info_text)
        components = {c.get("Name"): c.get("Version") for c in version.get("Components") or [] if isinstance(c, dict)}
        backend = info.get("FirewallBackend")
        return {
            "version": version.get("Version"),
            "api": version.get("ApiVersion"),
            "containerd": components.get("containerd"),
            "firewall_backend": backend.get("Driver") if isinstance(backend, dict) else None,
        }


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text.strip() or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class KernelFeatures(FactBase[dict[str, bool | None]]):
    """Kernel options swarm relies on, from /proc/config.gz or /boot/config-*: True (built in or a module),
    False (not set), None (the kernel config can't be read). Also whether AppArmor is enabled."""

    @staticmethod
    def default() -> Any:
        return {**dict.fromkeys(KERNEL_OPTIONS), "APPARMOR": False}

    def command(self) -> str:
        return (
            "echo apparmor=$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null); "
            "(zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r) 2>/dev/null) "
            "| grep -E '^(# )?CONFIG_(" + "|".join(KERNEL_OPTIONS) + ")[= ]' || true"
        )

    def process(self, output: list[str]) -> dict[str, bool | None]:
        features: dict[str, bool | None] = dict.fromkeys(KERNEL_OPTIONS)
        apparmor = False
        seen_config = False
        for line in output:
            if line.startswith("apparmor="):
                apparmor = line.endswith("Y")
                continue
            seen_config = True
            name = line.lstrip("# ").split("=")[0].split(" ")[0].removeprefix("CONFIG_")
            if name in features:
                features[name] = line.endswith(("=y", "=m"))
        if seen_config:
            features = {name: bool(value) for name, value in features.items()}
        return {**features, "APPARMOR": apparmor}


class HostAddresses(FactBase[dict[str, list[str]]]):
    """Interface name -> its IPv4 and IPv6 addresses (`ip -o addr`)."""

    @staticmethod
    def default() -> Any:
        return {}

    def command(self) -> str:
        return "ip -o addr show"

    def process(self, output: list[str]) -> dict[str, list[str]]:
        addresses: dict[str, list[str]] = {}
        for line in output:
            fields = line.split()
            if len(fields) >= 4 and fields[2] in ("inet", "inet6"):
                interface = fields[1].split("@")[0]
                addresses.setdefault(interface, []).append(fields[3].split("/")[0])
        return addresses


class InterfaceMtus(FactBase[dict[str, int]]):
    """Interface name -> MTU (`ip -o link`)."""

    @staticmethod
    def default() -> Any:
        return {}

    def command(self) -> str:
        return "ip -o link show"

    def process(self, output: list[str]) -> dict[str, int]:
        mtus = {}
        for line in output:
            fields = line.split()
            if len(fields) > 4 and "mtu" in fields:
                mtus[fields[1].rstrip(":").split("@")[0]] = int(fields[fields.index("mtu") + 1])
        return mtus


class Clock(FactBase[float | None]):
    """The host's clock (seconds since the epoch), to compare with the controller's."""

    def command(self) -> str:
        return "date +%s.%N"

    def process(self, output: list[str]) -> float | None:
        try:
            return float(output[-1])
        except (IndexError, ValueError):
            return None


class SshdPorts(FactBase[list[int]]):
    """The ports sshd listens on, from its effective configuration (`sshd -T`), or the port of this very
    connection when that can't be read; [] when neither is known."""

    @staticmethod
    def default() -> Any:
        return []

    def command(self) -> str:
        return (
            '{ sshd -T 2>/dev/null || /usr/sbin/sshd -T 2>/dev/null; } | awk \'$1 == "port" {print "port", $2}\'; '
            'echo "connection ${SSH_CONNECTION:-}"'
        )

    def process(self, output: list[str]) -> list[int]:
        ports = [int(line.split()[1]) for line in output if line.startswith("port ") and line.split()[1].isdigit()]
        if not ports:
            fields = next((line.split() for line in output if line.startswith("connection ")), [])
            if len(fields) == 5 and fields[4].isdigit():
                ports = [int(fields[4])]
        return sorted(set(ports))


class FirewallTools(FactBase[dict[str, Any]]):
    """Which firewall front-ends are installed and active (ufw, firewalld, nft, iptables), and whether our own
    rules are loaded."""

    @staticmethod
    def default() -> Any:
        return {"ufw": None, "firewalld": False, "nft": False, "iptables": False, "ipset": False, "chain": False,
                "table": False}  # fmt: skip

    def command(self) -> str:
        return (
            "echo ufw=$(command -v ufw >/dev/null && (ufw status 2>/dev/null | head -1 | cut -d' ' -f2)); "
            "echo firewalld=$(systemctl is-active firewalld 2>/dev/null); "
            "echo nft=$(command -v nft); echo iptables=$(command -v iptables); echo ipset=$(command -v ipset); "
            "echo chain=$(iptables -w -C INPUT -j PYINFRA-SWARM 2>/dev/null && echo yes); "
            "echo table=$(nft list table inet pyinfra_swarm >/dev/null 2>&1 && echo yes)"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return {
            "ufw": values.get("ufw") or None,  # "active", "inactive" or None (not installed)
            "firewalld": values.get("firewalld") == "active",
            "nft": bool(values.get("nft")),
            "iptables": bool(values.get("iptables")),
            "ipset": bool(values.get("ipset")),
            # whether our own iptables chain is hooked into INPUT / our nftables table is loaded
            "chain": values.get("chain") == "yes",
            "table": values.get("table") == "yes",
        }


class UfwState(FactBase[dict[str, Any]]):
    """ufw's default inbound policy, whether it is active, and the rules it has (`ufw show added`)."""

    @staticmethod
    def default() -> Any:
        return {"active": False, "incoming": None, "rules": []}

    def requires_command(self) -> str:
        return "ufw"

    def command(self) -> str:
        return "ufw status verbose 2>/dev/null | grep -E '^(Status|Default):'; ufw show added 2>/dev/null"

    def process(self, output: list[str]) -> dict[str, Any]:
        state: dict[str, Any] = {"active": False, "incoming": None, "rules": []}
        for line in output:
            if line.startswith("Status:"):
                state["active"] = line.split(":", 1)[1].strip() == "active"
            elif line.startswith("Default:"):
                state["incoming"] = line.split(":", 1)[1].strip().split(" ")[0]
            elif line.startswith("ufw "):
                state["rules"].append(line[len("ufw ") :].strip())
        return state


class FirewalldZone(FactBase[dict[str, Any] | None]):
    """A firewalld zone's permanent sources, ports, protocols, target and description (`exists`: whether the
    zone does), the default zone's name and permanent ports, and the entries of the permanent ipsets asked for
    (an ipset missing from `ipsets` doesn't exist); None when firewalld isn't installed. Read from firewalld's
    permanent configuration files in one `cat` (each firewall-cmd call starts Python: six of them took about
    two seconds per run); values in `firewall-cmd --list-all`'s form ("ipset:NAME", "8000-8100/tcp")."""

    def requires_command(self, zone: str, ipsets: tuple[str, ...] = ()) -> str:
        return "firewall-cmd"

    def command(self, zone: str, ipsets: tuple[str, ...] = ()) -> str:
        names = " ".join(shlex.quote(name) for name in ipsets)
        return (
            f"z=/etc/firewalld/zones/{shlex.quote(zone)}.xml; "
            'if [ -r "$z" ]; then echo "#zone"; cat "$z"; echo; fi; '
            "d=$(sed -n 's/^DefaultZone=//p' /etc/firewalld/firewalld.conf 2>/dev/null); d=${d:-public}; "
            'echo "#default-zone $d"; '
            'cat "/etc/firewalld/zones/$d.xml" 2>/dev/null || cat "/usr/lib/firewalld/zones/$d.xml" 2>/dev/null; echo; '
            f"for s in {names}; do f=/etc/firewalld/ipsets/$s.xml; "
            'if [ -r "$f" ]; then echo "#ipset $s"; cat "$f"; echo; fi; done; exit 0'
        )

    def process(self, output: list[str]) -> dict[str, Any] | None:
        if not output:
            return None
        zone: dict[str, Any] = {"exists": False, "sources": [], "ports": [], "protocols": [], "target": "default",
                                "description": "", "default-zone": "", "default-ports": [], "ipsets": {}}  # fmt: skip
        documents: list[tuple[str, list[str]]] = []
        for line in output:
            if line.startswith("#zone") or line.startswith("#default-zone ") or line.startswith("#ipset "):
                documents.append((line, []))
            elif documents:
                documents[-1][1].append(line)
        for marker, lines in documents:
            root = _xml("\n".join(lines))
            if marker == "#zone":
                zone["exists"] = True
                if root is not None:
                    zone.update(_zone_settings(root))
            elif marker.startswith("#default-zone "):
                zone["default-zone"] = marker.split(" ", 1)[1].strip()
                zone["default-ports"] = _zone_settings(root)["ports"] if root is not None else []
            else:
                entries = [e.text.strip() for e in root.findall("entry") if e.text] if root is not None else []
                zone["ipsets"][marker.split(" ", 1)[1].strip()] = entries
        return zone


def _xml(text: str) -> ElementTree.Element | None:
    try:
        return ElementTree.fromstring(text.strip()) if text.strip() else None
    except ElementTree.ParseError:
        return None


def _zone_settings(root: ElementTree.Element) -> dict[str, Any]:
    """A firewalld zone file's settings, as `firewall-cmd --list-all` shows them."""
    sources = [f"ipset:{s.get('ipset')}" if s.get("ipset") else s.get("address") or s.get("mac") or ""
               for s in root.findall("source")]  # fmt: skip
    description = root.find("description")
    return {
        "sources": [s for s in sources if s],
        "ports": [f"{p.get('port')}/{p.get('protocol')}" for p in root.findall("port")],  # rich rules' are nested
        "protocols": [p.get("value") for p in root.findall("protocol") if p.get("value")],
        "target": root.get("target") or "default",
        "description": (description.text or "").strip() if description is not None else "",
    }


def sha256_text(text: str) -> str:
    """The digest FileHashes reports for a file that holds `text`."""
    return hashlib.sha256(text.encode()).hexdigest()


class FileHashes(FactBase[dict[str, str | None]]):
    """sha256 of each path (None where the file is missing): one command for several files."""

    @staticmethod
    def default() -> Any:
        return {}

    def command(self, paths: list[str]) -> str:
        quoted = " ".join(shlex.quote(path) for path in paths)
        return f'for f in {quoted}; do echo "$(sha256sum < "$f" 2>/dev/null | cut -d\' \' -f1) $f"; done'

    def process(self, output: list[str]) -> dict[str, str | None]:
        hashes: dict[str, str | None] = {}
        for line in output:
            digest, _, path = line.strip().partition(" ")
            if not path:  # the file is missing: the line is " PATH"
                digest, path = "", line.strip()
            hashes[path] = digest if len(digest) == 64 else None
        return hashes


class ServiceStates(FactBase[dict[str, dict[str, bool]]]):
    """systemd units' state: {unit: {"active": bool, "enabled": bool}}."""

    @staticmethod
    def default() -> Any:
        return {}

    def command(self, services: list[str]) -> str:
        quoted = " ".join(shlex.quote(service) for service in services)
        return f"systemctl show --property=Id,ActiveState,UnitFileState -- {quoted} 2>/dev/null; true"

    def process(self, output: list[str]) -> dict[str, dict[str, bool]]:
        states: dict[str, dict[str, bool]] = {}
        unit = ""
        for line in output:  # one block of KEY=VALUE lines per unit (in systemd's order of keys)
            key, _, value = line.strip().partition("=")
            if key == "Id":
                unit = value
                states.setdefault(unit, {"active": False, "enabled": False})
            elif key == "ActiveState" and unit:
                states[unit]["active"] = value == "active"
            elif key == "UnitFileState" and unit:
                states[unit]["enabled"] = value == "enabled"
        return states


class DockerPackages(FactBase[dict[str, Any]]):
    """The package manager (apt or dnf), which of the given packages are installed, with versions, which of
    them are held (apt-mark hold), the distribution's release ("debian 13") and codename (from os-release),
    and dpkg's architecture."""

    @staticmethod
    def default() -> Any:
        return {"manager": None, "packages": {}, "held": [], "release": "", "codename": "", "arch": ""}

    def command(self, packages: list[str]) -> str:
        names = " ".join(shlex.quote(name) for name in packages)
        return (
            '. /etc/os-release 2>/dev/null; echo "release=${ID:-} ${VERSION_ID:-}"; '
            'echo "codename=${UBUNTU_CODENAME:-${VERSION_CODENAME:-}}"; '
            'if command -v dpkg-query >/dev/null; then echo manager=apt; echo "arch=$(dpkg --print-architecture)"; '
            f"dpkg-query -W -f '${{db:Status-Abbrev}} ${{Package}} ${{Version}}\\n' {names} 2>/dev/null "
            '| awk \'$1 ~ /^[ih]i/ {print $2, $3, ($1 ~ /^h/ ? "held" : "")}\'; '
            "elif command -v rpm >/dev/null; then echo manager=dnf; "
            f"rpm -q --qf '%{{NAME}} %{{VERSION}}-%{{RELEASE}}\\n' {names} | grep -v 'not installed'; fi; true"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        result = self.default()
        for line in output:
            key, _, value = line.partition("=")
            if key in ("manager", "release", "codename", "arch") and "=" in line:
                result[key] = value.strip() or result[key]
            elif " " in line.strip():
                name, version, *flags = line.split()
                result["packages"][name] = version
                if "held" in flags:
                    result["held"].append(name)
        return result


def engine_pins(packages: list[str]) -> str:
    """Shell that writes to "$pins" an apt preferences file: the host's own preferences, then each installed
    engine package pinned at the version it has, so that an upgrade through it (`-o
    Dir::Etc::Preferences="$pins"`) leaves the engine as it is. Nothing of the host's changes."""
    names = " ".join(shlex.quote(name) for name in packages)
    return (
        "pins=$(mktemp); { cat /etc/apt/preferences 2>/dev/null; "
        f"dpkg-query -W -f '${{db:Status-Abbrev}} ${{Package}} ${{Version}}\\n' {names} 2>/dev/null | "
        "awk '$1 ~ /^[ih]i/ {printf \"\\nPackage: %s\\nPin: version %s\\nPin-Priority: 1001\\n\", $2, $3}'; "
        '} > "$pins"'
    )


def dnf_excludes(packages: list[str]) -> str:
    """dnf's options that leave the engine packages as they are."""
    return " ".join(f"--exclude={shlex.quote(name)}" for name in packages)


# Why the host asks for a reboot, one `reboot REASON` line each: Debian's and Ubuntu's flag file, RHEL's
# needs-restarting, or a kernel newer than the running one installed in /boot.
REBOOT_REASONS = (
    "[ -f /var/run/reboot-required ] && echo 'reboot /var/run/reboot-required'; "
    "if command -v needs-restarting >/dev/null; then needs-restarting -r >/dev/null 2>&1; "
    "[ $? -eq 1 ] && echo 'reboot needs-restarting -r'; fi; "
    "newest=$(ls -1 /boot 2>/dev/null | sed -n 's/^vmlinuz-//p' | sort -V | tail -1); "
    '[ -n "$newest" ] && [ -e "/boot/vmlinuz-$(uname -r)" ] && [ "$newest" != "$(uname -r)" ] && '
    'echo "reboot kernel $newest installed, $(uname -r) running"; true'
)


class PendingPatches(FactBase[dict[str, Any]]):
    """What an OS upgrade would do on the host, the engine packages left as they are: {"upgrades": [(package,
    installed version or None, new version)], "reboot": [why the host asks for a reboot], "error": what failed
    or None, "manager": "apt", "dnf" or None}. To be current it refreshes the package lists first (`apt-get
    update`, dnf's metadata), the one thing it changes."""

    @staticmethod
    def default() -> Any:
        return {"upgrades": [], "reboot": [], "error": None, "manager": None}

    def command(self, engine_packages: list[str]) -> str:
        apt = (
            "export DEBIAN_FRONTEND=noninteractive; echo manager=apt; "
            'if ! out=$(apt-get update -q 2>&1); then echo "error=apt-get update: $(echo "$out" | tail -2 | '
            "tr '\\n' ' ')\"; fi; "
            f"{engine_pins(engine_packages)}; "
            'apt-get -s -o Dir::Etc::Preferences="$pins" upgrade --with-new-pkgs 2>/dev/null | '
            'awk \'$1 == "Inst" {if ($3 ~ /^\\[/) {gsub(/[][]/, "", $3); print "upgrade", $2, $3, substr($4, 2)} '
            'else print "upgrade", $2, "-", substr($3, 2)}\'; rm -f "$pins"'
        )
        dnf = (
            "echo manager=dnf; "
            f"dnf -q check-update {dnf_excludes(engine_packages)} 2>/dev/null | "
            'awk \'NF == 3 && $1 ~ /\\./ {sub(/\\.[^.]*$/, "", $1); print "upgrade", $1, "-", $2}\''
        )
        return (
            f"if command -v apt-get >/dev/null; then {apt}; elif command -v dnf >/dev/null; then {dnf}; fi; "
            f"{REBOOT_REASONS}"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        result = self.default()
        for line in output:
            kind, _, rest = line.strip().partition(" ")
            if line.startswith("manager="):
                result["manager"] = line.split("=", 1)[1].strip() or None
            elif line.startswith("error="):
                result["error"] = line.split("=", 1)[1].strip()
            elif kind == "upgrade" and len(rest.split()) == 3:
                name, old, new = rest.split()
                result["upgrades"].append((name, None if old == "-" else old, new))
            elif kind == "reboot" and rest:
                result["reboot"].append(rest)
        return result


class Bundle(FactBase[dict[str, Any]]):
    """Several facts in one command, so one SSH round trip per host: {name: value}. `facts` maps each name
    to (fact class, its arguments); a fact whose required command is missing gets its default value."""

    SEPARATOR = "##pyinfra-swarm-fact##"
    MISSING = "##pyinfra-swarm-missing##"

    def command(self, facts: Spec) -> str:
        self.facts = facts  # process() reads the output back section by section
        parts = []
        for cls, kwargs in facts.values():
            fact = cls()
            command = str(fact.command(**kwargs))
            required = fact.requires_command(**kwargs)
            if required:
                command = f"if command -v {required} >/dev/null 2>&1; then {command}; else echo '{self.MISSING}'; fi"
            parts.append(f"{{ {command}; }}")
        return f"; echo '{self.SEPARATOR}'; ".join(parts)

    def process(self, output: list[str]) -> dict[str, Any]:
        facts = self.facts
        sections: list[list[str]] = [[]]
        for line in output:
            if line.strip() == self.SEPARATOR:
                sections.append([])
            else:
                sections[-1].append(line)
        values = {}
        for (name, (cls, _)), lines in zip(facts.items(), sections + [[]] * len(facts), strict=False):
            fact = cls()
            values[name] = fact.default() if not lines or lines == [self.MISSING] else fact.process(lines)
        return values


class RegistryLogins(FactBase[dict[str, str]]):
    """Registries the user running Docker commands is logged in to (~/.docker/config.json `auths`), each with
    the digest of the credentials this deploy last logged in with ("" when it didn't, or they're unknown)."""

    MARKER = "$HOME/.docker/pyinfra-swarm-logins"

    def command(self) -> str:
        # The credentials themselves (base64 in "auth") never leave the host.
        return (
            'sed -E \'s/"(auth|identitytoken)": *"[^"]*"/"\\1": ""/g\' '
            '"$HOME/.docker/config.json" 2>/dev/null; '
            f'echo; echo "##logins##"; cat "{self.MARKER}" 2>/dev/null; true'
        )

    def process(self, output: list[str]) -> dict[str, str]:
        text = "\n".join(output)
        config, _, marker = text.partition("##logins##")
        try:
            auths = json.loads(config).get("auths", {}) if config.strip() else {}
        except ValueError:
            auths = {}
        digests = dict(line.split(" ", 1) for line in marker.splitlines() if " " in line.strip())
        return {registry: digests.get(registry, "").strip() for registry in sorted(auths)}

    @staticmethod
    def default() -> dict[str, str]:
        return {}


class SwarmObjects(FactBase[dict[str, list[str]]]):
    """Names of the swarm's overlay networks, secrets and configs (on a manager)."""

    def requires_command(self) -> str:
        return "docker"

    def command(self) -> str:
        return (
            "docker network ls --filter driver=overlay --format 'network {{.Name}}'; "
            "docker secret ls --format 'secret {{.Name}}'; docker config ls --format 'config {{.Name}}'; true"
        )

    def process(self, output: list[str]) -> dict[str, list[str]]:
        objects: dict[str, list[str]] = {"network": [], "secret": [], "config": []}
        for line in output:
            kind, _, name = line.strip().partition(" ")
            if kind in objects and name:
                objects[kind].append(name)
        return objects

    @staticmethod
    def default() -> dict[str, list[str]]:
        return {"network": [], "secret": [], "config": []}


class SwarmStacks(FactBase[list[str]]):
    """Names of the stacks deployed in the swarm (on a manager)."""

    def requires_command(self) -> str:
        return "docker"

    def command(self) -> str:
        return "docker stack ls --format '{{.Name}}' 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]

    @staticmethod
    def default() -> list[str]:
        return []


class StackServices(FactBase[dict[str, dict[str, dict[str, Any]]]]):
    """Every stack's services as they run (on a manager): {stack: {service: {"running", "desired", "update"}}},
    `update` being the service's update state (none, updating, paused, completed, rollback_started,
    rollback_paused, rollback_completed)."""

    NAMESPACE = "com.docker.stack.namespace"

    def requires_command(self) -> str:
        return "docker"

    def command(self) -> str:
        label = self.NAMESPACE
        return (
            f"docker service ls --filter label={label} --format 'replicas {{{{.Name}}}} {{{{.Replicas}}}}'; "
            f'ids=$(docker service ls -q --filter label={label}); [ -z "$ids" ] || docker service inspect $ids '
            f'--format \'service {{{{index .Spec.Labels "{label}"}}}} {{{{.Spec.Name}}}} '
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{else}}none{{end}}'; true"
        )

    def process(self, output: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
        replicas = parse_replicas([line.strip()[len("replicas ") :] for line in output
                                   if line.strip().startswith("replicas ")])  # fmt: skip
        stacks: dict[str, dict[str, dict[str, Any]]] = {}
        for line in output:
            kind, _, rest = line.strip().partition(" ")
            if kind == "service" and len(rest.split(" ")) == 3:
                stack, name, update = rest.split(" ")
                running, desired = replicas.get(name, (0, 0))
                stacks.setdefault(stack, {})[name] = {"running": running, "desired": desired, "update": update}
        return stacks

    @staticmethod
    def default() -> dict[str, dict[str, dict[str, Any]]]:
        return {}


CONTEXT_LABEL = "pyinfra-swarm.context"  # image label: the sha256 of the build context it was built from


class ImageContexts(FactBase[dict[str, str | None]]):
    """For each image reference: the context hash label of the local image, "" without the label, None when
    the image is missing. With `pushed`, an image that has no digest in its registry (never pushed: a push
    that failed or was cut) also gives "", so the deploy builds it (from cache) and pushes it again."""

    def requires_command(self, images: list[str], pushed: bool = False) -> str:
        return "docker"

    def command(self, images: list[str], pushed: bool = False) -> str:
        quoted = " ".join(shlex.quote(image) for image in images)
        digests = "{{range .RepoDigests}} {{.}}{{end}}"
        fmt = shlex.quote(f'{{{{index .Config.Labels "{CONTEXT_LABEL}"}}}}|{digests}')
        # A pushed image's digests hold REPOSITORY@sha256:...; REPOSITORY is the reference without its tag.
        check = 'case "${out#*|} " in *" ${i%:*}@"*) ;; *) out="#unpushed|" ;; esac; ' if pushed else ""
        # docker 20.10 prints an empty line (and fails) for a missing image: both count as missing.
        return (
            f'for i in {quoted}; do if out=$(docker image inspect --format {fmt} "$i" 2>/dev/null) '
            f'&& [ -n "$out" ]; then {check}echo "$i ${{out%%|*}}"; else echo "$i #missing"; fi; done'
        )

    def process(self, output: list[str]) -> dict[str, str | None]:
        result: dict[str, str | None] = {}
        for line in output:
            image, _, label = line.strip().partition(" ")
            result[image] = None if label == "#missing" else ("" if label in ("<no value>", "#unpushed") else label)
        return result

    @staticmethod
    def default() -> dict[str, str | None]:
        return {}


class ExistingUsers(FactBase[list[str]]):
    """Which of the given user names have an account on the host (`getent passwd`)."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, users: list[str]) -> str:
        names = " ".join(shlex.quote(user) for user in users)
        return f'for u in {names}; do getent passwd "$u" >/dev/null && echo "$u"; done; true'

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


class Pingable(FactBase[bool | None]):
    """Whether this host reaches an address by ICMP echo within 2 seconds; None without a ping command."""

    def command(self, address: str) -> str:
        return (
            f"command -v ping >/dev/null || {{ echo unknown; exit 0; }}; "
            f"ping -c 1 -W 2 {shlex.quote(address)} >/dev/null 2>&1 && echo yes || echo no"
        )

    def process(self, output: list[str]) -> bool | None:
        return {"yes": True, "no": False}.get(output[-1] if output else "")
