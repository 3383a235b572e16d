"""`@step`: how every deploy of this package is declared. A step is pyinfra's `@deploy` with every setting's
default as its data defaults, called with the run's plan (made once, when not handed one) and the host being
deployed, and run only on the hosts it is for."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Literal

from pyinfra.api import Host, deploy

from pyinfra_swarm.plan import ClusterPlan, current_host, plan_cluster
from pyinfra_swarm.settings import defaults

RunsOn = Literal["every host", "taking part", "acting manager"]


def step(title: str, runs_on: RunsOn = "taking part", build: bool = True) -> Callable[..., Callable[..., None]]:
    """Declare a deploy step. `runs_on`: "taking part" (every host but those being taken out), "acting
    manager" (only the manager that makes this run's cluster-wide changes) or "every host" (the step
    decides). `build=False` plans no `swarm init` (teardown, backup, restore)."""

    def wrap(func: Callable[[ClusterPlan, Host], None]) -> Callable[..., None]:
        @deploy(title, data_defaults=defaults())
        @wraps(func)
        def run(plan: ClusterPlan | None = None) -> None:
            plan = plan or plan_cluster(build=build)
            this = current_host()
            if runs_on == "acting manager" and not plan.acts_for_cluster(this):
                return
            if runs_on == "taking part" and not plan.takes_part(this):
                return
            func(plan, this)

        return run  # type: ignore[return-value]  # pyinfra types a deploy as an operation

    return wrap
