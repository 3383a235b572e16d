"""The swarm's credentials, on the manager acting for the cluster: autolock as data says (the unlock key kept in
a file on the controller) and the rotations data requests (join tokens, root CA, unlock key, registry
certificate), each once."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import Host

from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.operations import credentials
from pyinfra_swarm.plan import ClusterPlan
from pyinfra_swarm.settings import setting, unlock_key_file


@step("Swarm credentials", runs_on="acting manager")
def configure_credentials(plan: ClusterPlan, this: Host) -> None:
    """Autolock on or off when data says (on: the key written to the key file), then each requested rotation
    not yet done."""
    key_file = unlock_key_file(this)
    if setting(this, "swarm_autolock") is not None:
        credentials.autolock(name="Autolock", enabled=setting(this, "swarm_autolock"), key_file=key_file)
    for what, request in host.loop(sorted(setting(this, "swarm_rotate").items())):
        credentials.rotate(name=f"Rotate {what} (request {request})", what=what, request=str(request),
                           key_file=key_file)  # fmt: skip
