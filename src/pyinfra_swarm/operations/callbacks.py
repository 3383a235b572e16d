"""Callbacks (pyinfra's FunctionCommand) that fail the way an operation's command does: an expected failure
(OperationError) is printed as one line on its host, with no traceback, and fails the operation there."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from pyinfra import logger
from pyinfra.api import Host, State
from pyinfra.api.exceptions import OperationError


def expected_failures(function: Callable[..., None]) -> Callable[..., bool]:
    """A callback whose OperationError is an expected failure: the host's error is printed as one line (no
    traceback) and the operation fails on that host."""

    @functools.wraps(function)
    def callback(state: State, host: Host, *args: Any, **kwargs: Any) -> bool:
        try:
            function(state, host, *args, **kwargs)
        except OperationError as error:
            host.log_styled(str(error), fg="red", log_func=logger.error)
            return False
        return True

    return callback
