"""Lab names, shapes and subnets are checked before anything is created."""

from __future__ import annotations

import json

import pytest

from pyinfra_swarm.lab import LabError, LabSpec
from pyinfra_swarm.lab.images import debian_mirror, node_image_tag
from pyinfra_swarm.lab.inventory import lab_groups
from pyinfra_swarm.lab.spec import host_addresses


def test_default_shape_names_nodes_and_groups():
    spec = LabSpec()
    assert [(n.name, n.group) for n in spec.nodes] == [
        ("manager1", "swarm_managers"),
        ("worker1", "swarm_workers"),
        ("worker2", "swarm_workers"),
        ("worker3", "swarm_workers"),
    ]
    assert spec.nodes[0].container == "pyinfra-swarm-lab-manager1"
    assert spec.nodes[0].hostname == "lab-manager1"
    assert spec.nodes[0].volume == "pyinfra-swarm-lab-manager1-docker"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": -1}, "--workers must be 0 or more"),
        ({"managers": 0}, "--managers must be at least 1"),
        ({"name": "Bad_Name"}, "invalid lab name"),
        ({"name": "-lab"}, "invalid lab name"),
        ({"name": "a" * 25}, "invalid lab name"),
        ({"subnet": "192.168.56.0/28", "workers": 5}, "don't fit subnet 192.168.56.0/28"),
        ({"subnet": "10.1.2.3/24"}, "invalid subnet"),
        ({"subnet": "fd00::/64"}, "needs an IPv4 subnet"),
        ({"managers": 200, "workers": 46}, "don't fit subnet 192.168.56.0/24"),
    ],
)
def test_bad_shapes_are_refused(kwargs, message):
    with pytest.raises(LabError, match=message):
        LabSpec(**kwargs)


def test_addresses_start_at_dot_ten():
    assert host_addresses("192.168.56.0/28") == [f"192.168.56.{i}" for i in range(10, 15)]
    LabSpec(managers=200, workers=45)  # exactly fills a /24


def test_node_image_tag_follows_the_release_and_the_build_context():
    tag = node_image_tag()
    assert tag.startswith("pyinfra-swarm-node:bookworm-") and len(tag.split("-")[-1]) == 12
    assert node_image_tag() == tag and node_image_tag("trixie").startswith("pyinfra-swarm-node:trixie-")


def test_a_mixed_lab_has_managers_and_workers_on_their_releases():
    spec = LabSpec(name="mixed", managers=1, workers=2, distro="bookworm", worker_distro="trixie")
    assert [(n.name, n.distro) for n in spec.nodes] == [("manager1", "bookworm"), ("worker1", "trixie"),
                                                        ("worker2", "trixie")]  # fmt: skip
    with pytest.raises(LabError, match="unknown distro 'sid'"):
        LabSpec(name="x", distro="sid")


def test_debian_mirror_is_read_from_deb822_and_one_line_sources(tmp_path, monkeypatch):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("deb [arch=amd64] http://other.example/debian bookworm main\n")
    paths = iter([deb822, one_line])
    monkeypatch.setattr("pyinfra_swarm.lab.images.Path", lambda _: next(paths))
    assert debian_mirror() == "http://mirror.example/debian"


def test_inventory_groups_from_state(tmp_path):
    state_dir = tmp_path / "lab"
    state_dir.mkdir()
    (state_dir / "lab.json").write_text(
        json.dumps(
            {
                "name": "lab",
                "subnet": "192.168.56.0/24",
                "network": "pyinfra-swarm-lab",
                "ssh_key": "/keys/id_ed25519",
                "nodes": [
                    {
                        "node": "manager1",
                        "hostname": "lab-manager1",
                        "container": "c1",
                        "role": "manager",
                        "address": "192.168.56.10",
                    },
                    {
                        "node": "worker1",
                        "hostname": "lab-worker1",
                        "container": "c2",
                        "role": "worker",
                        "address": "192.168.56.11",
                    },
                ],
            }
        )
    )
    groups = lab_groups(state_dir)
    assert [name for name, _ in groups["swarm_managers"]] == ["manager1"]
    worker_name, worker = groups["swarm_workers"][0]
    assert worker_name == "worker1"
    assert worker["ssh_hostname"] == worker["swarm_advertise_addr"] == "192.168.56.11"
    assert worker["ssh_user"] == "root" and "_sudo" not in worker
    _, as_debian = lab_groups(state_dir, user="debian")["swarm_workers"][0]
    assert as_debian["ssh_user"] == "debian" and as_debian["_sudo"] is True
    assert [name for name, _ in groups["container_lab"]] == ["manager1", "worker1"]
    (state_dir / "vm.json").write_text("{}")
    assert lab_groups(state_dir)["container_lab"] == []  # a VM lab's nodes have a real cluster's group data


def test_missing_state_says_how_to_make_it(tmp_path):
    with pytest.raises(LabError, match="run `pyinfra-swarm lab up --name nolab`"):
        lab_groups(tmp_path / "nolab")
