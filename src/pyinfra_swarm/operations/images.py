"""Images built on a host from a build context made on the controller: the context (a tar archive) goes to
`docker build -` on stdin, so nothing of it is written on the host (a context's files may hold secrets), and
the image carries the context's sha256 as a label, so an image built from the same context isn't built again.

.. code:: python

    from pyinfra_swarm.operations import images

    images.built(name="Build app", reference="10.0.0.10:5000/app:1", context=archive, push=True)
"""

from __future__ import annotations

import base64
import hashlib
import shlex

from pyinfra import host
from pyinfra.api import StringCommand, operation

from pyinfra_swarm.facts import CONTEXT_LABEL, ImageContexts, read


@operation()
def built(reference: str, context: bytes, push: bool = False):
    """An image built on this host from `context` and tagged `reference`, then pushed to its registry; nothing
    when the image there was built from this very context (and, with `push`, its registry has it).

    + reference: the image's name and tag (REGISTRY/NAME:TAG to push)
    + context: the build context, a tar archive with a Dockerfile (see deploys/artifacts.context_archive)
    + push: push the image to the registry its reference names

    **Example:**

    .. code:: python

        images.built(name="Build app", reference="10.0.0.10:5000/app:1", context=archive, push=True)
    """
    digest = hashlib.sha256(context).hexdigest()
    if read(ImageContexts, images=[reference], pushed=push).get(reference) == digest:
        host.noop(f"image {reference} is built from this context" + (" and pushed" if push else ""))
        return
    yield StringCommand(
        f"base64 -d | docker build -q --label {CONTEXT_LABEL}={digest} -t {shlex.quote(reference)} -",
        _stdin=base64.b64encode(context).decode(),
    )
    if push:
        yield shlex.join(["docker", "push", "-q", reference])
