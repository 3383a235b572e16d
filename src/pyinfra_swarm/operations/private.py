"""Files that hold secrets (stack files, registry keys and passwords, backups), written on a host without
pyinfra's file upload: with a sudo user, pyinfra stages an upload in /tmp, readable by others for a moment and
left there when the copy fails. Here the content goes through the command's stdin (base64: exact bytes) into
a file that only its owner can read from the start (umask 077), then moved into place.

.. code:: python

    from pyinfra_swarm.operations import private

    private.file(name="Registry key", path="/etc/docker/registry/registry.key", content=key, mode="0640",
                 group="docker-registry")
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
import shlex

from pyinfra import host
from pyinfra.api import StringCommand, operation

from pyinfra_swarm.facts import FileHashes, read


def write_command(path: str, content: str | bytes, mode: str = "0600", group: str | None = None) -> StringCommand:
    """A command that writes `content` to `path` (its directory made, 0755, if missing), private from the
    first byte: written as a temporary file with umask 077, given `mode` (and `group`), and moved into place."""
    data = content.encode() if isinstance(content, str) else content
    target, temporary = shlex.quote(path), shlex.quote(f"{path}.pyinfra-swarm-new")
    group_step = f" && chgrp {shlex.quote(group)} {temporary}" if group else ""
    return StringCommand(
        f"(umask 022 && mkdir -p {shlex.quote(posixpath.dirname(path))}) && "
        f"(umask 077 && base64 -d > {temporary}) && chmod {mode} {temporary}{group_step} && mv {temporary} {target}",
        _stdin=base64.b64encode(data).decode(),
    )


@operation()
def file(path: str, content: str | bytes, mode: str = "0600", group: str | None = None):
    """A file that holds a secret, written when its content differs (see the module docstring).

    + path: where the file goes
    + content: what it holds (text or bytes)
    + mode: its mode once in place (only its owner, root, reads it while it is written)
    + group: its group (e.g. the service's that reads it)

    **Example:**

    .. code:: python

        private.file(name="htpasswd", path="/etc/docker/registry/htpasswd", content=text, mode="0640",
                     group="docker-registry")
    """
    data = content.encode() if isinstance(content, str) else content
    if read(FileHashes, paths=[path]).get(path) == hashlib.sha256(data).hexdigest():
        host.noop(f"{path} holds what it should")
        return
    yield write_command(path, data, mode, group)
