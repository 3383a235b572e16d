"""Bad input is refused before anything changes, with the host and key named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pyinfra.api.exceptions import PyinfraError

from pyinfra_swarm.deploys.preflight import kernel_present, kernel_report, preflight
from pyinfra_swarm.settings import SCHEMA, markdown_table, validate_daemon_config
from tests.unit.fakes import host, plan


def _check(managers, workers=()):
    plan([preflight], list(managers), list(workers))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"swarm_advertise_addr": None}, "host @fake/w1: swarm_advertise_addr is missing"),
        ({"swarm_advertise_addr": "10.1.0.300"}, "swarm_advertise_addr '10.1.0.300' is not a valid IP address"),
        ({"swarm_advertise_addr": "eth0; rm -rf /"}, "is neither an IP address nor an interface name"),
        ({"swarm_advertise_addr": "127.0.0.1"}, "can't be reached from other nodes"),
        ({"docker_source": "snap"}, "docker_source 'snap' is unknown"),
        ({"docker_daemon_config": {"mtu": "1500"}}, "docker_daemon_config['mtu'] must be a int, not str"),
        ({"docker_daemon_config": {"live-restore": True}}, "live-restore'] is true, which Docker does not support"),
        ({"docker_daemon_config": {"firewall-backend": "nftables"}}, "refuses to run with swarm mode"),
        ({"docker_daemon_config": ["debug"]}, "docker_daemon_config must be a mapping"),
        ({"swarm_labels": {"zone": ["a"]}}, "swarm_labels must map label names to plain values"),
        ({"swarm_availability": "off"}, "swarm_availability 'off' is unknown"),
        ({"swarm_firewall": "pf"}, "swarm_firewall 'pf' is unknown"),
        ({"swarm_firewall_allow": ["ssh"]}, "swarm_firewall_allow must be a list like"),
        ({"swarm_data_path_port": 80}, "swarm_data_path_port must be a port number from 1024 to 49151"),
        ({"swarm_default_addr_pool": ["10.0.0.1/8"]}, "swarm_default_addr_pool must be a list of CIDRs"),
        ({"swarm_data_path_port": 7946}, "7946 is one of the swarm's own ports"),
        ({"docker_daemon_config": {"hosts": ["tcp://0.0.0.0:2375"]}}, "would listen on TCP without TLS"),
        ({"docker_daemon_config": {"hosts": ["unix:///run/d.sock"]}}, "already passes -H fd://"),
        ({"swarm_networks": {"app": {"subnet": "10.1.0.0/40"}}}, "swarm_networks['app']['subnet'] '10.1.0.0/40'"),
        ({"swarm_networks": {"app": {"attachabel": True}}}, "unknown option 'attachabel'"),
        ({"swarm_networks": {"app": "overlay"}}, "swarm_networks['app'] must be a mapping"),
        ({"swarm_advertise_addr": "fd00::12"}, "swarm_advertise_addr fd00::12 is an IPv6 address: pyinfra-swarm "
                                               "supports IPv4 only"),
        ({"swarm_data_path_addr": "fd00::12"}, "swarm_data_path_addr fd00::12 is an IPv6 address"),
        ({"swarm_labels": {"pyinfra-swarm.registry": "true"}}, "swarm_labels pyinfra-swarm.registry: labels starting "
                                                               "with pyinfra-swarm. are the deploy's own"),
        ({"stack_vars": {"registry": "evil:5000"}}, "stack_vars registry would hide what the deploy gives every "
                                                    "template"),
        ({"swarm_stacks": [{"name": "app", "template": "a.j2", "vars": {"secrets": {}}}]},
         "swarm_stacks[0] (app): vars secrets would hide what the deploy gives every template"),
        ({"swarm_stacks": [{"name": "app", "template": "a.j2"}, {"name": "app", "template": "b.j2"}]},
         "swarm_stacks lists stack app twice"),
        ({"swarm_stacks": [{"name": "a", "template": "a.j2", "on_failure": "retry"}]},
         "swarm_stacks[0] (a): on_failure must be rollback or pause"),
        ({"registry_mode": "service", "swarm_stacks": [{"name": "registry", "template": "r.j2"}]},
         "swarm_stacks: a stack named registry would share the registry's stack"),
        ({"swarm_networks": {"secure": {"encrypted": True}}}, "swarm_networks secure: encrypted, but "
                                                              "swarm_encrypted_overlays is off"),
        ({"swarm_drain_timeout": 0}, "swarm_drain_timeout must be a number of seconds from 1 to 86400, not 0"),
    ],
)  # fmt: skip
def test_bad_host_data_names_host_and_key(data, message):
    worker = host("w1", "10.1.0.2")
    worker[1].update(data)
    with pytest.raises(PyinfraError, match="bad inventory or group data") as error:
        _check([host("m1", "10.1.0.1")], [worker])
    assert message in str(error.value)


def test_inventory_shape_errors():
    with pytest.raises(PyinfraError, match="no hosts in group swarm_managers"):
        _check([], [host("w1", "10.1.0.2")])
    with pytest.raises(PyinfraError, match="host @fake/m1 is in both swarm_managers and swarm_workers"):
        _check([host("m1", "10.1.0.1")], [host("m1", "10.1.0.1")])
    with pytest.raises(PyinfraError, match=re.escape("swarm_advertise_addr 10.1.0.1 is also the address of @fake/m1")):
        _check([host("m1", "10.1.0.1")], [host("w1", "10.1.0.1")])


def test_every_problem_is_listed_at_once():
    worker = host("w1", "10.1.0.2")
    worker[1].update(docker_source="snap", swarm_availability="off")
    with pytest.raises(PyinfraError) as error:
        _check([host("m1", "10.1.0.1")], [worker])
    assert "docker_source" in str(error.value) and "swarm_availability" in str(error.value)


def test_duplicate_hostnames_are_refused():
    twin = host("w1", "10.1.0.2", hostname="m1")
    with pytest.raises(PyinfraError, match="have the same hostname 'm1'"):
        _check([host("m1", "10.1.0.1")], [twin])


def test_encrypted_overlays_need_esp_in_the_kernel():
    no_esp = ["CONFIG_VXLAN=m", "# CONFIG_INET_ESP is not set", "CONFIG_CRYPTO_GCM=y"]
    with pytest.raises(PyinfraError, match="swarm_encrypted_overlays is on but this kernel lacks ESP"):
        _check([host("m1", "10.1.0.1", kernel=no_esp, swarm_encrypted_overlays=True)])


def test_kernel_report_says_what_a_missing_feature_means():
    lines = kernel_report({
        "m1": {"VXLAN": True, "IP_VS": False, "INET_ESP": False},
        "w1": {"VXLAN": True, "IP_VS": False, "INET_ESP": True},
        "w2": {"VXLAN": None},
    })  # fmt: skip
    assert "no IPVS: the routing mesh and VIP load balancing won't work; use endpoint_mode: dnsrr" in lines[0]
    assert lines[0].endswith("(kernel of m1, w1)")
    assert any("no ESP" in line and "(kernel of m1)" in line for line in lines)
    assert lines[-1] == "kernel config unreadable on w2: swarm support not checked"
    full = {"VXLAN": True, "IP_VS": True, "INET_ESP": True, "CRYPTO_GCM": True, "BRIDGE_NETFILTER": True}
    assert kernel_present({"m1": full, "w1": {**full, "IP_VS": False}}) == (
        "kernel of every host has: VXLAN, ESP, GCM, bridge netfilter"
    )


def test_daemon_config_pass_through_keys_are_not_checked():
    assert validate_daemon_config({"some-future-option": {"x": 1}, "default-address-pools": [{"base": "10.9.0.0/16",
                                   "size": 24}]}) == []  # fmt: skip
    assert validate_daemon_config({"default-address-pools": [{"base": "nope"}]})


def test_readme_settings_tables_are_the_schema():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for table in ("swarm", "workloads"):
        block = readme.split(f"<!-- settings:{table} -->\n", 1)[1].split(f"<!-- /settings:{table} -->", 1)[0]
        assert block == markdown_table(table), f"README's {table} table differs from settings.SCHEMA: regenerate it"


def test_unknown_keys_get_a_close_match_and_cluster_wide_keys_one_value():
    worker = host("w1", "10.1.0.2", swarm_lables={"zone": "a"}, registry_mode="host")
    with pytest.raises(PyinfraError) as error:
        _check([host("m1", "10.1.0.1", registry_mode="service")], [worker])
    assert "swarm_lables is not a setting of pyinfra-swarm: did you mean swarm_labels?" in str(error.value)
    assert "registry_mode is cluster-wide but differs between @fake/m1 ('service') and @fake/w1 ('host')" in str(
        error.value
    )


def test_every_setting_has_a_default_a_type_and_a_meaning():
    for item in SCHEMA:
        assert (
            item.meaning and item.types and item.scope in ("host", "cluster") and item.table in ("swarm", "workloads")
        )
        assert item.default is None or isinstance(item.default, item.types), item.key
        assert not item.choices or item.default is None or item.default in item.choices, item.key


def test_overlay_subnets_holding_a_hosts_address_are_refused():
    manager = host("m1", "10.1.0.1", swarm_default_addr_pool=["10.1.0.0/16"])
    with pytest.raises(PyinfraError, match=r"swarm_default_addr_pool 10.1.0.0/16 overlaps the networks of host "
                                           r"@fake/m1: 10.1.0.1 \(eth0\)"):  # fmt: skip
        _check([manager])


@pytest.mark.parametrize(
    ("key", "first", "other"),
    [
        ("registry_users", {"ci": "s3cret-one"}, {"ci": "s3cret-two"}),
        ("swarm_secrets", {"db": {"value": "s3cret-one"}}, {"db": {"value": "s3cret-two"}}),
        ("stack_vars", {"db_password": "s3cret-one"}, {"db_password": "s3cret-two"}),
        ("swarm_stacks", [{"name": "a", "template": "a.j2", "vars": {"pw": "s3cret-one"}}],
         [{"name": "a", "template": "a.j2", "vars": {"pw": "s3cret-two"}}]),
        ("registry_users", ["s3cret-one"], ["s3cret-one"]),  # a wrong type: its value is not shown either
    ],
)  # fmt: skip
def test_errors_about_keys_that_may_hold_secrets_never_show_a_value(key, first, other):
    with pytest.raises(PyinfraError) as error:
        _check([host("m1", "10.1.0.1", **{key: first})], [host("w1", "10.1.0.2", **{key: other})])
    assert key in str(error.value) and "s3cret" not in str(error.value)
