"""Everything the deploys read from a host, gathered in ONE command per host, for every swarm host in
parallel, once per run. Each deploy module registers the facts it needs; `host_fact` reads them back."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import gevent
from gevent.lock import BoundedSemaphore
from pyinfra import host
from pyinfra.api import FactBase, Host, State

from pyinfra_swarm.facts import Bundle

Spec = dict[str, tuple[type[FactBase], dict[str, Any]]]
_REGISTRY: Spec = {}
_GATHERED: weakref.WeakKeyDictionary[State, dict[Host, dict[str, Any]]] = weakref.WeakKeyDictionary()


def register(name: str, fact: type[FactBase], **kwargs: Any) -> None:
    """Add a fact (with its arguments) to what is gathered from each host."""
    _REGISTRY[name] = (fact, kwargs)


def _bundles(specs: dict[Host, Spec]) -> dict[Host, dict[str, Any]]:
    """One Bundle command per host, all hosts at once; a Bundle that printed nothing gives the defaults."""
    greenlets = {target: gevent.spawn(target.get_fact, Bundle, facts=spec) for target, spec in specs.items() if spec}
    gevent.joinall(list(greenlets.values()), raise_error=True)
    return {target: greenlet.value or _defaults(specs[target]) for target, greenlet in greenlets.items()}


def gather(state: State, hosts: list[Host]) -> dict[Host, dict[str, Any]]:
    """Every registered fact of every host."""
    gathered = _bundles({target: dict(_REGISTRY) for target in hosts})
    _GATHERED.setdefault(state, {}).update(gathered)
    return gathered


_PLANNERS: list[Callable[[Any, Host], Spec]] = []
_PLANNED: weakref.WeakKeyDictionary[State, dict[Host, dict[str, Any]]] = weakref.WeakKeyDictionary()
_PLANNED_LOCK = BoundedSemaphore()


def register_planned(planner: Callable[[Any, Host], Spec]) -> Callable[[Any, Host], Spec]:
    """Decorator: `planner(view, host)` names facts whose arguments depend on the cluster view (paths with
    the registry's address, image names); all of them are gathered in one Bundle per host."""
    _PLANNERS.append(planner)
    return planner


def planned_fact(view: Any, name: str, target: Host | None = None) -> Any:
    """A fact named by a planner, for `target` (default: the host being deployed); the first call of a run
    gathers every planner's facts from every reachable host at once."""
    target = target or host._get_module()  # type: ignore[attr-defined]
    with _PLANNED_LOCK:
        if target.state not in _PLANNED:
            specs = {h: {k: v for planner in _PLANNERS for k, v in planner(view, h).items()} for h in view.reachable}
            _PLANNED[target.state] = _bundles(specs)
    return _PLANNED[target.state][target][name]


def _defaults(spec: Spec) -> dict[str, Any]:
    """Every fact's default value: what a Bundle that printed nothing at all says."""
    return {name: cls.default() for name, (cls, _) in spec.items()}


def host_fact(name: str, target: Host | None = None) -> Any:
    """A registered fact of `target` (default: the host being deployed), from the gathered bundle; a host
    not gathered yet (a deploy used on its own) gets its bundle gathered now."""
    target = target or host._get_module()  # type: ignore[attr-defined]
    gathered = _GATHERED.get(target.state, {}).get(target)
    if gathered is None:
        gathered = gather(target.state, [target])[target]
    return gathered[name]
