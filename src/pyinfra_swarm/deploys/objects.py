"""Swarm objects from data, created from the acting manager: overlay networks, and secrets and configs under
versioned names (NAME_<keyed hash of the content>), so a changed value is a new object that stacks roll over
to."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import Host
from pyinfra.api.exceptions import DeployError

from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.operations import swarm
from pyinfra_swarm.pki import keyed_digest
from pyinfra_swarm.plan import ClusterPlan
from pyinfra_swarm.settings import setting


def contents(target: Host, key: str) -> dict[str, str]:
    """{name: content} of the secrets or configs in a host's data; a missing file is a DeployError naming it."""
    values = {}
    for name, source in setting(target, key).items():
        if "value" in source:
            values[name] = str(source["value"])
            continue
        path = Path(source["file"])
        if not path.is_file():
            raise DeployError(f"{key}[{name!r}]: file {path} doesn't exist")
        values[name] = path.read_text()
    return values


def versioned(name: str, content: str) -> str:
    """A name for a secret or config with this content: NAME_<10 hex digits of an HMAC of it, keyed with the
    PKI directory's object key>. Objects can't change, so a new content is a new object, and stacks that use
    it roll over to it; the key keeps `docker secret ls` from telling anything about a value (a weak password
    can't be checked against a bare hash of it)."""
    return f"{name}_{keyed_digest(content)}"


def versioned_names(target: Host, key: str) -> dict[str, str]:
    """{name: versioned name} of the secrets or configs in a host's data."""
    return {name: versioned(name, content) for name, content in contents(target, key).items()}


@step("Swarm networks, secrets and configs", runs_on="acting manager")
def configure_objects(plan: ClusterPlan, this: Host) -> None:
    """On the manager acting for the cluster: create missing overlay networks and secret/config versions."""
    for name, options in host.loop(sorted(setting(this, "swarm_networks").items())):
        options = options or {}
        swarm.network(name=f"Network {name}", network_name=name, attachable=bool(options.get("attachable")),
                      subnet=options.get("subnet"), mtu=options.get("mtu"),
                      encrypted=bool(options.get("encrypted")))  # fmt: skip
    for name, content in host.loop(sorted(contents(this, "swarm_secrets").items())):
        swarm.secret(name=f"Secret {name}", secret_name=versioned(name, content), value=content)
    for name, content in host.loop(sorted(contents(this, "swarm_configs").items())):
        swarm.config(name=f"Config {name}", config_name=versioned(name, content), value=content)
