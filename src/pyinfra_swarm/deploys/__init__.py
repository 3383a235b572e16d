"""The steps of pyinfra-swarm, in the order deploy.py runs them: each is declared with `@step` (step.py), takes
the run's plan (`pyinfra_swarm.plan.plan_cluster()`), reads its settings (`pyinfra_swarm.settings.setting`)
and composes operations."""
