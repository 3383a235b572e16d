"""The cluster's image registry: a swarm service pinned by a node label (data on a named volume), or a host
service from Debian's docker-registry package. TLS with a certificate from the controller's small CA (the CA
goes to every node's /etc/docker/certs.d/HOST:PORT/), htpasswd auth (a user with a generated password when
data names none; `registry_anonymous: True` is the explicit opt-out); `registry_tls: False` is the explicit
opt-out of TLS, written into daemon.json's insecure-registries by the daemon deploy."""

from __future__ import annotations

import secrets
from io import StringIO
from pathlib import Path

import bcrypt
import yaml
from pyinfra import host
from pyinfra.api import Host
from pyinfra.operations import apt, files, server, systemd

from pyinfra_swarm.deploys.artifacts import build
from pyinfra_swarm.deploys.objects import versioned
from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.facts import sha256_text
from pyinfra_swarm.layout import ca_path, stack_path
from pyinfra_swarm.operations import private, registry, swarm
from pyinfra_swarm.operations.credentials import rotation_marker
from pyinfra_swarm.pki import pki_dir, server_certificate, write_private
from pyinfra_swarm.plan import ClusterPlan, Registry
from pyinfra_swarm.settings import setting

NODE_LABEL = "pyinfra-swarm.registry"
STACK = "registry"
HOST_CONFIG_DIR = "/etc/docker/registry"
GENERATED_USER = "pyinfra-swarm"


def credentials(first: Host) -> dict[str, str]:
    """The registry's users: `registry_users`, or one user whose password is made once on the controller
    (PKI directory, mode 0600) unless `registry_anonymous` switches auth off. Registry settings are
    cluster-wide: any host's data gives them."""
    users = setting(first, "registry_users")
    if users or setting(first, "registry_anonymous"):
        return dict(users)
    path = pki_dir() / "registry-password"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24) + "\n")
    return {GENERATED_USER: path.read_text().strip()}


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
    write_private(path, text)
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


def renew_requested(plan: ClusterPlan) -> bool:
    """Whether `swarm_rotate` asks for a new registry certificate that no earlier run made (the request is
    recorded in the swarm by `credentials.rotate`)."""
    acting = plan.acting_manager
    request = setting(acting, "swarm_rotate").get("registry_cert") if acting else None
    if not request:
        return False
    done = (plan.fact("swarm_objects", acting) or {}).get("config", [])
    return rotation_marker("registry_cert", str(request)) not in done


def material(plan: ClusterPlan, target: Registry) -> tuple[str, str, str, str]:
    """(CA, certificate, key, htpasswd) texts, made once per run (bcrypt is slow on purpose)."""
    if plan.run.registry_material is None:
        users = credentials(target.host)
        address = plan.addresses[target.host]
        ca, cert, key = server_certificate(pki_dir(), address, renew_requested(plan)) if target.tls else ("", "", "")
        plan.run.registry_material = (ca, cert, key, htpasswd(users, pki_dir()) if users else "")
    return plan.run.registry_material


@step("Image registry")
def configure_registry(plan: ClusterPlan, this: Host) -> None:
    """Trust the registry's CA on every node; run the registry on its node; log the acting manager in."""
    target = plan.registry
    if target is None:
        return
    ca, cert, key, auth = material(plan, target)
    ca_file = ca_path(target.address)
    if target.tls and plan.fact("registry_ca").get(ca_file) != sha256_text(ca):
        files.put(name=f"Trust the registry's CA ({target.address})", src=StringIO(ca), dest=ca_file, mode="0644")
    if this is target.host and target.mode == "host":
        _host_service(target, cert, key, auth)
    if this is target.host and target.mode == "service" and setting(this, "registry_build"):
        image = setting(this, "registry_image")
        current = plan.fact("registry_image").get(image)
        build(plan, image, Path(setting(this, "registry_build")), current, push=False)
    if this is not plan.acting_manager:
        return
    if target.mode == "service":
        _service(plan, target, cert, key, auth)
    users = credentials(this)
    if users:
        user = sorted(users)[0]
        registry.login(name=f"Log in to {target.address}", registry=target.address, user=user, password=users[user])


def service_secrets(plan: ClusterPlan) -> dict[str, str]:
    """{versioned name: content} of the registry service's secrets (none without a registry service)."""
    target = plan.registry
    if target is None or target.mode != "service":
        return {}
    _, cert, key, auth = material(plan, target)
    secrets = {}
    if target.tls:
        secrets[versioned("registry_crt", cert)] = cert
        secrets[versioned("registry_key", key)] = key
    if auth:
        secrets[versioned("registry_htpasswd", auth)] = auth
    return secrets


def service_secret_names(plan: ClusterPlan) -> dict[str, str]:
    """{name: versioned name} of the registry service's secrets, as `versioned_names` gives the data's."""
    return {name.rsplit("_", 1)[0]: name for name in service_secrets(plan)}


def _service(plan: ClusterPlan, target: Registry, cert: str, key: str, auth: str) -> None:
    secrets = service_secrets(plan)
    names = sorted(secrets)
    tls = {"crt": next(n for n in names if n.startswith("registry_crt")),
           "key": next(n for n in names if n.startswith("registry_key"))} if target.tls else {}  # fmt: skip
    text = service_stack(
        setting(target.host, "registry_image"), target.port, tls,
        next((n for n in names if n.startswith("registry_htpasswd")), None),
    )  # fmt: skip
    for name, content in host.loop(sorted(secrets.items())):
        swarm.secret(name=f"Create secret {name}", secret_name=name, value=content)
    entry = plan.node_of(target.host)
    commands = [f"docker node update --label-rm {NODE_LABEL} {n['id']}" for n in plan.nodes
                if NODE_LABEL in n["labels"] and (entry is None or n["id"] != entry["id"])]  # fmt: skip
    if entry is None or entry["labels"].get(NODE_LABEL) != "true":
        node = entry["id"] if entry else plan.hostnames[target.host]
        commands.append(f"docker node update --label-add {NODE_LABEL}=true {node}")
    if commands:  # registry_node moved: the old node loses the label, so the replica moves with it
        server.shell(name="Label the registry's node", commands=commands)
    swarm.stack(name=f"Deploy stack {STACK}", stack_name=STACK, path=stack_path(STACK), text=text, timeout=120,
                services=["registry"])  # fmt: skip


def _host_service(target: Registry, cert: str, key: str, auth: str) -> None:
    apt.packages(name="Install docker-registry", packages=["docker-registry"], update=True, cache_time=3600)
    changed = []
    wanted = {"config.yml": host_config(target.tls, bool(auth), target.port)}
    if target.tls:
        wanted.update({"registry.crt": cert, "registry.key": key})
    if auth:
        wanted["htpasswd"] = auth
    for name, text in host.loop(sorted(wanted.items())):  # the key and htpasswd never staged where others read
        changed.append(private.file(name=f"Registry {name}", path=f"{HOST_CONFIG_DIR}/{name}", content=text,
                                    mode="0640", group="docker-registry"))  # fmt: skip
    systemd.service(name="docker-registry is running and enabled", service="docker-registry", running=True,
                    enabled=True)  # fmt: skip
    systemd.service(name="Restart docker-registry for its new files", service="docker-registry", restarted=True,
                    _if=lambda: any(op.did_change() for op in changed))  # fmt: skip
