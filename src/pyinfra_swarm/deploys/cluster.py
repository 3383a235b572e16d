"""The whole deploy in one call, what this repository's deploy.py runs: `swarm_cluster()`."""

from __future__ import annotations

from pyinfra_swarm.deploys.artifacts import build_images, load_image_archives
from pyinfra_swarm.deploys.credentials import configure_credentials
from pyinfra_swarm.deploys.daemon import configure_daemon
from pyinfra_swarm.deploys.engine import give_back_drained, roll_engines
from pyinfra_swarm.deploys.firewall import configure_firewall
from pyinfra_swarm.deploys.install import install_docker
from pyinfra_swarm.deploys.objects import configure_objects
from pyinfra_swarm.deploys.preflight import preflight
from pyinfra_swarm.deploys.registry import configure_registry
from pyinfra_swarm.deploys.stacks import deploy_stacks, prune_objects
from pyinfra_swarm.deploys.swarm import configure_nodes, join_swarm, remove_nodes
from pyinfra_swarm.plan import ClusterPlan, plan_cluster


def swarm_cluster(plan: ClusterPlan | None = None) -> None:
    """The cluster (checks, daemon, engine, firewall, membership, nodes, credentials), then what runs on it (image
    archives, registry, images, secrets and configs, stacks). `plan` defaults to `plan_cluster()`: the
    inventory and all data checked, every host read in one command; bad input stops the run before any
    change."""
    plan = plan or plan_cluster()
    # The cluster.
    preflight(plan=plan)
    give_back_drained(plan=plan)  # nodes an unfinished run left drained
    remove_nodes(plan=plan)  # hosts with swarm_state: absent, one at a time
    configure_daemon(plan=plan)
    install_docker(plan=plan)
    roll_engines(plan=plan)  # engines that must restart, one node at a time
    configure_firewall(plan=plan)
    join_swarm(plan=plan)
    configure_nodes(plan=plan)
    configure_credentials(plan=plan)  # autolock, rotations
    # What runs on it.
    load_image_archives(plan=plan)
    configure_registry(plan=plan)
    build_images(plan=plan)
    configure_objects(plan=plan)
    deploy_stacks(plan=plan)
    prune_objects(plan=plan)
