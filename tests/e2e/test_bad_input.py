"""Bad input, one table: each case is a deploy on a lab (1 manager + 2 workers, nothing installed) with one
thing wrong in the inventory, group data, a template, a stack file or a file the data names. Every case must
stop the run with an error that names the host, key or file, before any operation runs (pyinfra never
reaches "Beginning operation run"), and no node may have been changed at the end."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Lab, module_lab
from tests.e2e.test_swarm import INVENTORY, SWARM_ONLY, docker_installed

SHOWN = "must-never-be-shown"  # a password in a case whose error must not print it
# name: (change to the lab inventory, text the error must contain); `{w1}` is worker1's address.
INVENTORIES = {
    "no manager": ("swarm_managers = []", "no hosts in group swarm_managers"),
    "host in both groups": ("swarm_managers = swarm_managers + [swarm_workers[0]]", "host worker1 is in both"),
    "advertise address missing": ("del _w2['swarm_advertise_addr']", "host worker2: swarm_advertise_addr is missing"),
    "advertise address malformed": ("_w2['swarm_advertise_addr'] = '192.168.1.300'", "'192.168.1.300' is not a valid"),
    "advertise address neither IP nor interface": (
        "_w2['swarm_advertise_addr'] = 'not an address!'",
        "host worker2: swarm_advertise_addr",
    ),
    "advertise address shared": (
        "_w2['swarm_advertise_addr'] = _w1['swarm_advertise_addr']",
        "host worker2: swarm_advertise_addr {w1} is also the address of worker1",
    ),
    "advertise address not on the host": ("_w2['swarm_advertise_addr'] = '10.9.9.9'", "worker2"),
    "interface not on the host": ("_w2['swarm_advertise_addr'] = 'eth9'", "worker2"),
    "two inventory hosts, one machine": ("_w2['ssh_hostname'] = _w1['ssh_hostname']", "worker2"),
    "labels as a string": ("_w1['swarm_labels'] = 'role=web'", "host worker1: swarm_labels"),
    "label value a list": ("_w1['swarm_labels'] = {'zone': ['a']}", "host worker1: swarm_labels"),
    "unknown availability": ("_w1['swarm_availability'] = 'sleep'", "host worker1: swarm_availability"),
    "unknown swarm_state": ("_w1['swarm_state'] = 'gone'", "host worker1: swarm_state"),
    "data path address malformed": ("_w1['swarm_data_path_addr'] = '1.2.3'", "host worker1: swarm_data_path_addr"),
    "misspelt host key": ("_w1['swarm_lables'] = {}", "did you mean swarm_labels"),
    "version pin not a string": ("_w1['docker_version'] = 27", "host worker1: docker_version"),
    "docker_users not a list": ("_w1['docker_users'] = 'alice'", "host worker1: docker_users"),
    "cluster key differing between hosts": ("_w1['swarm_data_path_port'] = 4790", "swarm_data_path_port"),
    "IPv6 advertise address": ("_w2['swarm_advertise_addr'] = 'fd00::12'", "host worker2: swarm_advertise_addr "
                                                                            "fd00::12 is an IPv6 address"),
    "a label of the deploy's own": ("_w1['swarm_labels'] = {'pyinfra-swarm.registry': 'true'}",
                                    "labels starting with pyinfra-swarm. are the deploy's own"),
    "docker_users that doesn't exist": ("_w1['docker_users'] = ['alcie']", "host worker1: docker_users alcie: no such "
                                                                          "user on it"),
    "a secret differing between hosts": ("_w1['registry_users'] = {'ci': 'pw-" + SHOWN + "'}",
                                         "registry_users is cluster-wide but differs between manager1 and worker1 "
                                         "(values not shown"),
}  # fmt: skip
# name: (group data for all hosts on top of SWARM_ONLY, text the error must contain)
GROUP_DATA = {
    "unknown docker_source": ({"docker_source": "snap"}, "docker_source 'snap' is unknown"),
    "daemon option type": ({"docker_daemon_config": {"mtu": "1500"}}, "docker_daemon_config['mtu'] must be a int"),
    "live-restore": ({"docker_daemon_config": {"live-restore": True}}, "'live-restore'] is true"),
    "Docker's nftables backend": ({"docker_daemon_config": {"firewall-backend": "nftables"}}, "refuses to run with"),
    "daemon on TCP without TLS": (
        {"docker_daemon_config": {"hosts": ["unix://", "tcp://0.0.0.0:2375"]}},
        "without TLS",
    ),
    "misspelt key": ({"swarm_firewal": "auto"}, "did you mean swarm_firewall"),
    "misspelt registry key": ({"registry_prot": 5000}, "did you mean registry_port"),
    "unknown firewall": ({"swarm_firewall": "pf"}, "swarm_firewall"),
    "unknown firewall policy": ({"swarm_firewall_policy": "open"}, "swarm_firewall_policy"),
    "port as text": ({"swarm_firewall_allow": ["http"]}, "swarm_firewall_allow"),
    "port out of range": ({"swarm_firewall_allow": ["99999/tcp"]}, "99999"),
    "ports as a string": ({"swarm_firewall_allow": "22/tcp"}, "swarm_firewall_allow"),
    "unknown protocol": ({"swarm_firewall_allow": ["22/icmp"]}, "22/icmp"),
    "address pool malformed": ({"swarm_default_addr_pool": ["10.20.0.0/33"]}, "swarm_default_addr_pool"),
    "address pool over the hosts' network": ({"swarm_default_addr_pool": ["192.168.56.0/21"]}, "overlaps"),
    "pool mask length out of range": (
        {"swarm_default_addr_pool_mask_length": 40},
        "swarm_default_addr_pool_mask_length",
    ),
    "data path port on the swarm's port": ({"swarm_data_path_port": 7946}, "swarm_data_path_port"),
    "data path port out of range": ({"swarm_data_path_port": 70000}, "swarm_data_path_port"),
    "encrypted overlays without ESP": ({"swarm_encrypted_overlays": True}, "ESP"),
    "registry port as text": ({"registry_mode": "service", "registry_port": "5000"}, "registry_port"),
    "unknown registry mode": ({"registry_mode": "k8s"}, "registry_mode"),
    "registry node not in the inventory": ({"registry_mode": "service", "registry_node": "manager9"}, "manager9"),
    "registry users not a map": ({"registry_mode": "service", "registry_users": ["ci"]}, "registry_users"),
    "stack without a template": ({"swarm_stacks": [{"name": "web"}]}, "swarm_stacks"),
    "stack template that doesn't exist": (
        {"swarm_stacks": [{"name": "web", "template": "nope.yml.j2"}]},
        "nope.yml.j2",
    ),
    "secret file that doesn't exist": (
        {"swarm_secrets": {"db": {"file": "/nonexistent/db.txt"}}},
        "/nonexistent/db.txt",
    ),
    "secret with neither file nor value": ({"swarm_secrets": {"db": {}}}, "swarm_secrets"),
    "network subnet malformed": ({"swarm_networks": {"backend": {"subnet": "10.1.0.0/40"}}}, "swarm_networks"),
    "image context that doesn't exist": (
        {"docker_images": [{"name": "app", "context": "/nonexistent", "tag": "1"}]},
        "/nonexistent",
    ),
    "image archive that doesn't exist": (
        {"docker_image_archives": [{"image": "x:1", "archive": "/nonexistent.tar"}]},
        "/nonexistent.tar",
    ),
    "stack vars not a map": ({"stack_vars": ["a"]}, "stack_vars"),
    "stack vars hiding the deploy's": ({"stack_vars": {"secrets": {}}}, "stack_vars secrets would hide what the "
                                                                       "deploy gives every template"),
    "a stack named registry": ({"registry_mode": "service", "swarm_stacks": [{"name": "registry", "template": "r.j2"}]},
                               "a stack named registry would share the registry's stack"),
    "encrypted overlay, ESP closed": ({"swarm_networks": {"secure": {"encrypted": True}}},
                                      "swarm_networks secure: encrypted, but swarm_encrypted_overlays is off"),
    "unknown on_failure": ({"swarm_stacks": [{"name": "web", "template": "w.j2", "on_failure": "retry"}]},
                           "on_failure must be rollback or pause"),
}  # fmt: skip
# name: (stack template text, text the error must contain); each is deployed as stack "bad" from a folder
# of its own (swarm_stacks_dir).
TEMPLATES = {
    "Jinja2 syntax error": ("services:\n  web:\n    image: {{ image \n", "bad.yml.j2"),
    "undefined variable": ("services:\n  web:\n    image: {{ imgae }}\n", "'imgae' is undefined"),
    "misspelt compose key": ("servics:\n  web:\n    image: app:1\n", "servics"),
    "service without an image": ("services:\n  web:\n    replicas: 2\n", "image"),
    "invalid YAML": ("services:\n  web:\n    image: [app\n", "bad.yml.j2"),
    "misspelt key in a service": ("services:\n  web:\n    image: app:1\n    deploi:\n      replicas: 2\n",
                                  "services.web.deploi: not a key of the Compose specification (did you mean "
                                  "deploy?)"),
}  # fmt: skip


@pytest.fixture(scope="module")
def bad_lab(lab_dir: Path, docker_api) -> Iterator[Lab]:
    yield from module_lab(lab_dir, docker_api, "e2e-bad-input", "--managers", "1", "--workers", "2")


def problem(run, name: str, message: str) -> str | None:
    """What is wrong with a run that should have refused bad input (None: nothing)."""
    if run.returncode == 0:
        return f"{name}: the run did not fail"
    if "Beginning operation run" in run.output:
        return f"{name}: operations ran:\n{run.output[-1500:]}"
    if message not in run.output:
        return f"{name}: {message!r} not in the error:\n{run.output[-1500:]}"
    return None


def test_bad_input_is_refused_before_anything_runs(bad_lab: Lab, tmp_path: Path) -> None:
    assert len(INVENTORIES) + len(GROUP_DATA) + len(TEMPLATES) == 63
    inventory = tmp_path / "bad_inventory.py"
    problems = []
    for name, (change, message) in INVENTORIES.items():
        inventory.write_text(textwrap.dedent(INVENTORY) + change + "\n")
        run = bad_lab.deploy(inventory=str(inventory), group_data={"all": SWARM_ONLY})
        problems.append(problem(run, name, message.format(w1=bad_lab.address("worker1"))))
    for name, (data, message) in GROUP_DATA.items():
        groups = {"all": {**SWARM_ONLY, **data}}
        if "stack_vars" in data:  # the container lab's own group sets stack_vars, over `all`
            groups["container_lab"] = {"stack_vars": data["stack_vars"]}
        run = bad_lab.deploy(group_data=groups)
        problems.append(problem(run, name, message))
    for name, (text, message) in TEMPLATES.items():
        stacks = tmp_path / name.replace(" ", "-")
        stacks.mkdir()
        (stacks / "bad.yml.j2").write_text(text)
        data = {
            **SWARM_ONLY,
            "swarm_stacks_dir": str(stacks),
            "swarm_stacks": [{"name": "bad", "template": "bad.yml.j2"}],
        }
        run = bad_lab.deploy(group_data={"all": data})
        problems.append(problem(run, name, message))
    failed = [p for p in problems if p] + [f"a value was shown: {o[-300:]}" for o in bad_lab.outputs if SHOWN in o]
    assert not failed, f"{len(failed)} cases not refused as they should be:\n" + "\n".join(failed)
    for node in ["manager1", "worker1", "worker2"]:
        assert not docker_installed(bad_lab, node), f"{node} was changed by a run with bad input"
