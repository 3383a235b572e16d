"""The guard against moby#51798 (engines that compute encrypted overlays' IPsec SPIs differently): a run that
would put both kinds in one swarm with an encrypted overlay network stops before any change, unless allowed."""

from __future__ import annotations

import json
import logging

import pytest
from pyinfra.api.exceptions import PyinfraError

from pyinfra_swarm.deploys.swarm import join_swarm
from pyinfra_swarm.engines import changed_spi, engine_release
from tests.unit.fakes import host, plan
from tests.unit.test_removal import _address, _listing
from tests.unit.test_swarm import swarm

SECURE = [{"Name": "secure", "Driver": "overlay", "Options": {"encrypted": ""}}]
PLAIN = [{"Name": "backend", "Driver": "overlay", "Options": {}}]


def _cluster(engines: dict[str, str], networks=SECURE, new: dict[str, str] | None = None, **data):
    """m1 and w1, w2 in a swarm whose nodes run `engines` ({hostname: version}); `new`: hosts to join with
    docker.io of that version installed."""
    listing = json.loads(_listing(1, 2))
    for entry in listing:
        entry["Description"]["Engine"] = {"EngineVersion": engines[entry["Description"]["Hostname"]]}
    nodes = json.dumps(listing)
    packages = {"docker.io": "28.5.2+dfsg4-5"}
    managers = [host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=nodes, networks=networks, docker_running=True,
                     packages=packages, **data)]  # fmt: skip
    workers = [host(f"w{i}", _address(f"w{i}"), swarm=swarm(f"W{i}", False), docker_running=True, packages=packages,
                    **data) for i in (1, 2)]  # fmt: skip
    workers += [host(name, _address(name), docker_running=True, packages={"docker.io": version}, **data)
                for name, version in (new or {}).items()]  # fmt: skip
    return managers, workers


ALL_28 = {"m1": "28.5.2", "w1": "28.5.2", "w2": "28.5.2"}


@pytest.mark.parametrize(
    ("version", "refused"),
    [("5:29.1.3-1~debian.12~bookworm", True), ("5:29.2.1-1~debian.12~bookworm", False), ("29.0.0", True),
     ("28.2.2", True), ("28.5.2+dfsg4-5", False)],
)  # fmt: skip
def test_a_rolling_upgrade_across_the_spi_change_with_an_encrypted_network_is_refused(version, refused):
    managers, workers = _cluster(ALL_28, docker_version=version)
    if not refused:
        plan([join_swarm], managers, workers)
        return
    target = ".".join(map(str, engine_release(version)))
    expected = rf"would have m1, w1, w2 on {target} beside m1, w1, w2 on 28.5.2 in one swarm .* encrypted overlay "
    with pytest.raises(PyinfraError, match=expected + r"networks exist \(secure\); .*moby#51798"):
        plan([join_swarm], managers, workers)


def test_without_an_encrypted_network_any_mix_goes_and_the_datas_own_encrypted_network_counts():
    managers, workers = _cluster(ALL_28, networks=PLAIN, docker_version="29.1.3")
    plan([join_swarm], managers, workers)
    managers, workers = _cluster(ALL_28, networks=PLAIN, docker_version="29.1.3", swarm_encrypted_overlays=True,
                                 swarm_networks={"vault": {"encrypted": True}})  # fmt: skip
    with pytest.raises(PyinfraError, match=r"encrypted overlay networks exist \(vault\)"):
        plan([join_swarm], managers, workers)


def test_a_join_that_brings_the_other_kind_is_refused_and_the_setting_allows_it_with_a_warning(caplog):
    managers, workers = _cluster(ALL_28, new={"w3": "29.1.3+dfsg1-1"})
    with pytest.raises(PyinfraError, match=r"would have w3 on 29\.1\.3 beside m1, w1, w2 on 28\.5\.2 in one swarm"):
        plan([join_swarm], managers, workers)
    managers, workers = _cluster(ALL_28, new={"w3": "29.1.3+dfsg1-1"}, swarm_allow_encrypted_mix=True)
    with caplog.at_level(logging.WARNING):
        planned = plan([join_swarm], managers, workers)
    assert planned["w3"] and "swarm_allow_encrypted_mix: this run would have w3 on 29.1.3" in caplog.text


def test_a_swarm_already_mixed_is_not_stopped_by_a_run_that_changes_no_engine():
    managers, workers = _cluster({"m1": "29.1.3", "w1": "28.5.2", "w2": "28.5.2"})
    plan([join_swarm], managers, workers)


@pytest.mark.parametrize(
    ("version", "release", "changed"),
    [("29.1.3", (29, 1, 3), True), ("5:29.2.0-1~ubuntu.24.04~noble", (29, 2, 0), True), ("29.2.1", (29, 2, 1), False),
     ("28.5.2+dfsg4-5", (28, 5, 2), False), ("28.2.2", (28, 2, 2), True), ("25.0.14", (25, 0, 14), True),
     ("25.0.15", (25, 0, 15), False), ("26.1.5+dfsg1-9+b9", (26, 1, 5), False)],
)  # fmt: skip
def test_engine_releases_and_their_side(version, release, changed):
    assert engine_release(version) == release and changed_spi(release) is changed
    assert engine_release("latest") is None
