"""The cluster's image registry: a swarm service pinned by a node label (data on a named volume), or a host
service from Debian's docker-registry package. TLS with a certificate from the controller's small CA (the CA
goes to every node's /etc/docker/certs.d/HOST:PORT/), htpasswd auth (a user with a generated password when
data names none; `registry_anonymous: True` is the explicit opt-out); `registry_tls: False` is the explicit
opt-out of TLS, written into daemon.json's insecure-registries by the daemon deploy."""

from __future__ import annotations

import hashlib
import secrets
import weakref
from io import StringIO
from pathlib import Path

import bcrypt
import yaml
from pyinfra import host
from pyinfra.api import Host, State, StringCommand, deploy, operation
from pyinfra.api.command import FunctionCommand
from pyinfra.api.exceptions import DeployError, OperationError
from pyinfra.operations import apt, files, server, systemd

from pyinfra_swarm.artifacts import ImageContexts, plan_build
from pyinfra_swarm.cluster import Cluster, cluster, current_host
from pyinfra_swarm.facts import FileHashes, RegistryLogins, sha256_text
from pyinfra_swarm.hostfacts import Spec, planned_fact, register_planned
from pyinfra_swarm.objects import SwarmObjects, ensure_objects, versioned
from pyinfra_swarm.pki import pki_dir, server_certificate
from pyinfra_swarm.settings import setting
from pyinfra_swarm.stacks import SwarmStacks, ship_stack, stack_path
from pyinfra_swarm.swarm import connector_args

NODE_LABEL = "pyinfra-swarm.registry"
STACK = "registry"
HOST_CONFIG_DIR = "/etc/docker/registry"
GENERATED_USER = "pyinfra-swarm"


def _cluster_setting(view: Cluster, key: str):
    """Registry settings are cluster-wide: read from the first manager's data."""
    return setting(view.managers[0], key)


def registry_host(view: Cluster) -> Host | None:
    if _cluster_setting(view, "registry_mode") is None:
        return None
    name = _cluster_setting(view, "registry_node")
    if name is None:
        return view.managers[0]
    for candidate in view.hosts:
        if candidate.name == name:
            return candidate
    raise DeployError(f"registry_node {name!r} is not a host of the inventory")


def address(view: Cluster) -> str:
    """HOST:PORT of the registry (its node's advertise address), "" without a registry."""
    target = registry_host(view)
    if target is None:
        return ""
    return f"{view.addresses[target]}:{_cluster_setting(view, 'registry_port')}"


def insecure_registries(view: Cluster) -> list[str]:
    """What daemon.json must list in insecure-registries: the registry, when TLS is switched off."""
    registry = address(view)
    return [registry] if registry and not _cluster_setting(view, "registry_tls") else []


def credentials(view: Cluster) -> dict[str, str]:
    """The registry's users: `registry_users`, or one user whose password is made once on the controller
    (PKI directory, mode 0600) unless `registry_anonymous` switches auth off."""
    users = _cluster_setting(view, "registry_users") or {}
    if users or _cluster_setting(view, "registry_anonymous"):
        return dict(users)
    path = pki_dir() / "registry-password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24) + "\n")
    return {GENERATED_USER: path.read_text().strip()}


def login_digest(registry: str, user: str, password: str) -> str:
    """What the node records of the credentials it logged in with: a change means a new login."""
    return hashlib.sha256(f"{registry}\0{user}\0{password}".encode()).hexdigest()


def htpasswd(users: dict[str, str], directory: Path) -> str:
    """An htpasswd file (bcrypt) for the users; kept on the controller and reused while every password
    still matches, so a re-run doesn't make a new secret."""
    path = directory / "htpasswd"
    existing = {}
    if path.exists():
        existing = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    if set(existing) == set(users) and all(bcrypt.checkpw(users[u].encode(), existing[u].encode()) for u in users):
        return path.read_text()
    text = "".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt()).decode()}\n" for u, p in sorted(users.items()))
    directory.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(text)
    return text


def service_stack(image: str, port: int, tls: dict[str, str], auth: str | None) -> str:
    """The registry as a stack: one replica on the labelled node, a host-mode port, data on a volume."""
    environment = {
        "REGISTRY_HTTP_ADDR": "0.0.0.0:5000",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/var/lib/registry",
    }
    secrets: dict[str, dict] = {}
    if tls:
        environment["REGISTRY_HTTP_TLS_CERTIFICATE"] = "/run/secrets/registry.crt"
        environment["REGISTRY_HTTP_TLS_KEY"] = "/run/secrets/registry.key"
        secrets["registry_crt"] = {"external": True, "name": tls["crt"]}
        secrets["registry_key"] = {"external": True, "name": tls["key"]}
    if auth:
        environment.update(REGISTRY_AUTH="htpasswd", REGISTRY_AUTH_HTPASSWD_REALM="pyinfra-swarm",
                           REGISTRY_AUTH_HTPASSWD_PATH="/run/secrets/registry.htpasswd")  # fmt: skip
        secrets["registry_htpasswd"] = {"external": True, "name": auth}
    targets = {"registry_crt": "registry.crt", "registry_key": "registry.key", "registry_htpasswd": "registry.htpasswd"}
    service = {
        "image": image,
        "environment": environment,
        "volumes": ["data:/var/lib/registry"],
        "ports": [{"target": 5000, "published": port, "protocol": "tcp", "mode": "host"}],
        "secrets": [{"source": name, "target": targets[name], "mode": 0o400} for name in secrets],
        "deploy": {"replicas": 1, "placement": {"constraints": [f"node.labels.{NODE_LABEL} == true"]}},
    }
    stack = {"version": "3.8", "services": {"registry": service}, "volumes": {"data": {}}, "secrets": secrets}
    return yaml.safe_dump(stack, sort_keys=True)


def host_config(tls: bool, auth: bool, port: int = 5000) -> str:
    """/etc/docker/registry/config.yml of Debian's docker-registry (host mode)."""
    http: dict = {"addr": f":{port}"}
    if tls:
        http["tls"] = {"certificate": f"{HOST_CONFIG_DIR}/registry.crt", "key": f"{HOST_CONFIG_DIR}/registry.key"}
    config: dict = {
        "version": 0.1,
        "storage": {"filesystem": {"rootdirectory": "/var/lib/docker-registry"}},
        "http": http,
    }
    if auth:
        config["auth"] = {"htpasswd": {"realm": "pyinfra-swarm", "path": f"{HOST_CONFIG_DIR}/htpasswd"}}
    return yaml.safe_dump(config, sort_keys=True)


@operation(is_idempotent=False)
def login(registry: str, user: str, password: str):
    """`docker login --password-stdin`: the password goes through stdin, never on a command line (pyinfra's
    `docker.login` puts it in the shell command, which sudo logs). Records a digest of the credentials, so
    that a changed password logs in again."""
    yield FunctionCommand(_login, (registry, user, password), {})
    marker = RegistryLogins.MARKER
    line = f"{registry} {login_digest(registry, user, password)}"
    yield StringCommand(
        f'mkdir -p "$HOME/.docker" && {{ grep -v "^{registry} " "{marker}" 2>/dev/null; echo "{line}"; }} '
        f'> "{marker}.new" && mv "{marker}.new" "{marker}"'
    )


def _login(state: State, host: Host, registry: str, user: str, password: str) -> None:
    status, output = host.run_shell_command(
        StringCommand("docker", "login", "--username", user, "--password-stdin", registry), _stdin=password,
        print_output=False, **connector_args(state, host),
    )  # fmt: skip
    if not status:
        raise OperationError(f"docker login to {registry} failed: {output.stderr.strip()}")


def ca_path(registry: str) -> str:
    return f"/etc/docker/certs.d/{registry}/ca.crt"


@register_planned
def _planned_facts(view: Cluster, target: Host) -> Spec:
    """What configure_registry reads from each host (gathered with the other deploys' facts)."""
    registry_node = registry_host(view)
    if registry_node is None:
        return {}
    spec: Spec = {}
    if _cluster_setting(view, "registry_tls"):
        spec["registry_ca"] = (FileHashes, {"paths": [ca_path(address(view))]})
    if target is registry_node and _cluster_setting(view, "registry_build"):
        spec["registry_image"] = (ImageContexts, {"images": [_cluster_setting(view, "registry_image")]})
    if target is view.acting_manager:
        spec["registry_stack"] = (FileHashes, {"paths": [stack_path(STACK)]})
        spec["swarm_stacks"] = (SwarmStacks, {})
        spec["swarm_objects"] = (SwarmObjects, {})
        spec["registry_logins"] = (RegistryLogins, {})
    return spec


_MATERIAL: weakref.WeakKeyDictionary[State, tuple[str, str, str, str]] = weakref.WeakKeyDictionary()


def _material(view: Cluster, target: Host, tls_on: bool, users: dict[str, str]) -> tuple[str, str, str, str]:
    """(CA, certificate, key, htpasswd) texts, made once per run (bcrypt is slow on purpose)."""
    state = target.state
    if state not in _MATERIAL:
        ca, cert, key = server_certificate(pki_dir(), view.addresses[target]) if tls_on else ("", "", "")
        _MATERIAL[state] = (ca, cert, key, htpasswd(users, pki_dir()) if users else "")
    return _MATERIAL[state]


@deploy("Image registry")
def configure_registry() -> None:
    """Trust the registry's CA on every node; run the registry on its node; log the acting manager in."""
    view = cluster(host.state)
    target = registry_host(view)
    if target is None:
        return
    this = current_host()
    registry = address(view)
    tls_on = bool(_cluster_setting(view, "registry_tls"))
    users = credentials(view)
    ca, cert, key, auth = _material(view, target, tls_on, users)
    ca_file = ca_path(registry)
    if tls_on and planned_fact(view, "registry_ca").get(ca_file) != sha256_text(ca):
        files.put(name=f"Trust the registry's CA ({registry})", src=StringIO(ca), dest=ca_file, mode="0644")
    mode = _cluster_setting(view, "registry_mode")
    if this is target and mode == "host":
        _host_service(tls_on, cert, key, auth, _cluster_setting(view, "registry_port"))
    if this is target and mode == "service" and _cluster_setting(view, "registry_build"):
        image = _cluster_setting(view, "registry_image")
        current = planned_fact(view, "registry_image").get(image)
        plan_build(image, Path(_cluster_setting(view, "registry_build")), current, push=False)
    if this is not view.acting_manager:
        return
    if mode == "service":
        _service(view, target, tls_on, cert, key, auth)
    if users:
        user = sorted(users)[0]
        logins = planned_fact(view, "registry_logins")
        if logins.get(registry) != login_digest(registry, user, users[user]):
            login(name=f"Log in to {registry}", registry=registry, user=user, password=users[user])


def _service_secrets(tls_on: bool, cert: str, key: str, auth: str) -> dict[str, str]:
    """{versioned name: content} of the registry service's secrets."""
    secrets = {}
    if tls_on:
        secrets[versioned("registry_crt", cert)] = cert
        secrets[versioned("registry_key", key)] = key
    if auth:
        secrets[versioned("registry_htpasswd", auth)] = auth
    return secrets


def secret_versions(view: Cluster) -> dict[str, str]:
    """{name: current versioned name} of the registry service's secrets (none without a service)."""
    target = registry_host(view)
    if target is None or _cluster_setting(view, "registry_mode") != "service":
        return {}
    tls_on = bool(_cluster_setting(view, "registry_tls"))
    _, cert, key, auth = _material(view, target, tls_on, credentials(view))
    return {name.rsplit("_", 1)[0]: name for name in _service_secrets(tls_on, cert, key, auth)}


def _service(view: Cluster, target: Host, tls_on: bool, cert: str, key: str, auth: str) -> None:
    secrets = _service_secrets(tls_on, cert, key, auth)
    names = sorted(secrets)
    tls = {"crt": next(n for n in names if n.startswith("registry_crt")),
           "key": next(n for n in names if n.startswith("registry_key"))} if tls_on else {}  # fmt: skip
    text = service_stack(
        _cluster_setting(view, "registry_image"), _cluster_setting(view, "registry_port"), tls,
        next((n for n in names if n.startswith("registry_htpasswd")), None),
    )  # fmt: skip
    ensure_objects("secret", secrets, planned_fact(view, "swarm_objects")["secret"])
    entry = view.node_of(target)
    commands = [f"docker node update --label-rm {NODE_LABEL} {n['id']}" for n in view.nodes
                if NODE_LABEL in n["labels"] and (entry is None or n["id"] != entry["id"])]  # fmt: skip
    if entry is None or entry["labels"].get(NODE_LABEL) != "true":
        node = entry["id"] if entry else view.hostnames[target]
        commands.append(f"docker node update --label-add {NODE_LABEL}=true {node}")
    if commands:  # registry_node moved: the old node loses the label, so the replica moves with it
        server.shell(name="Label the registry's node", commands=commands)
    current = planned_fact(view, "registry_stack").get(stack_path(STACK))
    ship_stack(STACK, text, current, STACK in planned_fact(view, "swarm_stacks"), timeout=120)


def _host_service(tls_on: bool, cert: str, key: str, auth: str, port: int) -> None:
    apt.packages(name="Install docker-registry", packages=["docker-registry"], update=True, cache_time=3600)
    changed = []
    wanted = {"config.yml": host_config(tls_on, bool(auth), port)}
    if tls_on:
        wanted.update({"registry.crt": cert, "registry.key": key})
    if auth:
        wanted["htpasswd"] = auth
    for name, text in host.loop(sorted(wanted.items())):
        changed.append(files.put(name=f"Registry {name}", src=StringIO(text), dest=f"{HOST_CONFIG_DIR}/{name}",
                                 mode="0640", group="docker-registry"))  # fmt: skip
    systemd.service(name="docker-registry is running and enabled", service="docker-registry", running=True,
                    enabled=True)  # fmt: skip
    systemd.service(name="Restart docker-registry for its new files", service="docker-registry", restarted=True,
                    _if=lambda: any(op.did_change() for op in changed))  # fmt: skip
