"""Registry operations: log the Docker client in, again whenever the credentials change."""

from __future__ import annotations

import hashlib

from pyinfra import host
from pyinfra.api import StringCommand, operation

from pyinfra_swarm.facts import RegistryLogins, read


def login_digest(registry: str, user: str, password: str) -> str:
    """What the host records of the credentials it logged in with: a change means a new login."""
    return hashlib.sha256(f"{registry}\0{user}\0{password}".encode()).hexdigest()


@operation()
def login(registry: str, user: str, password: str):
    """`docker login` to `registry`, unless this host logged in with these very credentials already (it
    keeps a digest of the last login next to Docker's config.json). The password goes through stdin:
    pyinfra's `docker.login` puts it in the shell command, which sudo logs.

    + registry: HOST:PORT of the registry
    + user: the user name
    + password: the password

    **Example:**

    .. code:: python

        registry.login(name="Log in to the registry", registry="10.0.0.10:5000", user="ci", password=password)
    """
    digest = login_digest(registry, user, password)
    if read(RegistryLogins).get(registry) == digest:
        host.noop(f"logged in to {registry} as {user}")
        return
    yield StringCommand("docker", "login", "--username", user, "--password-stdin", registry, _stdin=password)
    marker = RegistryLogins.MARKER
    yield StringCommand(
        f'mkdir -p "$HOME/.docker" && {{ grep -v "^{registry} " "{marker}" 2>/dev/null; echo "{registry} {digest}"; }} '
        f'> "{marker}.new" && mv "{marker}.new" "{marker}"'
    )
