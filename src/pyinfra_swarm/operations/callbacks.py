"""Callbacks (pyinfra's FunctionCommand) that fail the way an operation's command does: an expected failure
(OperationError) is printed as one line on its host, with no traceback, and fails the operation there; what
callbacks of one run share (`PerRun`); the first manager that answers (`first_answer`)."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

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


T = TypeVar("T")


def first_answer(hosts: list[Host], ask: Callable[[Host], T], connect: bool = False) -> T:
    """What `ask` gets from the first of `hosts` (managers, in order) that answers; `ask` raises LookupError
    when a host doesn't. LookupError naming every host's problem when none does. A host not connected is
    connected to first with `connect` (one at a time, only as far as needed), else "unreachable"."""
    problems = []
    for target in hosts:
        if connect and not target.connected:
            target.connect(show_errors=False)
        if not target.connected:
            problems.append(f"{target.name}: unreachable")
            continue
        try:
            return ask(target)
        except LookupError as exc:
            problems.append(f"{target.name}: {exc}")
    raise LookupError("; ".join(problems or ["there are none"]))


class PerRun(Generic[T]):
    """What the callbacks of one run (pyinfra's State) share, made by `factory` on first use: `store(state)`."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._values: weakref.WeakKeyDictionary[State, T] = weakref.WeakKeyDictionary()

    def __call__(self, state: State) -> T:
        if state not in self._values:
            self._values[state] = self._factory()
        return self._values[state]
