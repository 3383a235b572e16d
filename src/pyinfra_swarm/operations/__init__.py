"""pyinfra operations of pyinfra-swarm: `swarm` (membership, nodes, networks, secrets, configs, stacks),
`registry` (login), `firewall` (our rules and their unit), `maintenance` (a node drained for engine work)."""
