"""Each operation described as data, as pyinfra's own operation tests are: tests/operations/<module>.<op>/
<case>.json holds the arguments, the facts the operation reads (by fact class), the commands it yields and
the no-op message when it yields none (or the `exception` it raises); `stdin` lists what each command
sends on stdin (secrets go there, never into the command). An argument `{"__bytes__": TEXT}` is TEXT's bytes."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from pyinfra.context import ctx_host

from tests.unit.fakes import describe

CASES = sorted((Path(__file__).resolve().parent.parent / "operations").glob("*/*.json"))


class _Host:
    """Just what an operation touches of the host being deployed: its name and `noop`."""

    name = "@fake/test"
    print_prefix = "[test] "

    def __init__(self) -> None:
        self.noops: list[str] = []

    def noop(self, description: str) -> None:
        self.noops.append(description)


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_operation(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case: dict[str, Any] = json.loads(path.read_text())
    module_name, op_name = path.parent.name.split(".")
    module = importlib.import_module(f"pyinfra_swarm.operations.{module_name}")
    facts = case["facts"]
    monkeypatch.setattr(module, "read", lambda cls, target=None, **kwargs: facts[cls.__name__], raising=False)
    fake = _Host()
    case["kwargs"] = {k: v["__bytes__"].encode() if isinstance(v, dict) and "__bytes__" in v else v
                      for k, v in case["kwargs"].items()}  # fmt: skip
    if "exception" in case:
        with ctx_host.use(fake), pytest.raises(Exception) as raised:
            list(getattr(module, op_name)._inner(*case.get("args", []), **case["kwargs"]))
        assert (type(raised.value).__name__, str(raised.value)) == tuple(case["exception"].values())
        return
    with ctx_host.use(fake):
        commands = list(getattr(module, op_name)._inner(*case.get("args", []), **case["kwargs"]))
    assert [describe(command) for command in commands] == case["commands"]
    if "stdin" in case:
        assert [getattr(c, "connector_arguments", {}).get("_stdin") for c in commands] == case["stdin"]
        for command, secret in zip(commands, case["stdin"], strict=True):
            assert secret is None or secret not in describe(command)
    assert fake.noops == ([case["noop_description"]] if "noop_description" in case else [])


def test_every_operation_has_cases() -> None:
    import pyinfra_swarm.operations.backup
    import pyinfra_swarm.operations.credentials
    import pyinfra_swarm.operations.firewall
    import pyinfra_swarm.operations.images
    import pyinfra_swarm.operations.maintenance
    import pyinfra_swarm.operations.packages
    import pyinfra_swarm.operations.patching
    import pyinfra_swarm.operations.private
    import pyinfra_swarm.operations.registry
    import pyinfra_swarm.operations.swarm

    described = {p.parent.name for p in CASES}
    for module in (pyinfra_swarm.operations.swarm, pyinfra_swarm.operations.registry,
                   pyinfra_swarm.operations.firewall, pyinfra_swarm.operations.maintenance,
                   pyinfra_swarm.operations.packages, pyinfra_swarm.operations.credentials,
                   pyinfra_swarm.operations.backup, pyinfra_swarm.operations.private,
                   pyinfra_swarm.operations.images, pyinfra_swarm.operations.patching):  # fmt: skip
        short = module.__name__.rsplit(".", 1)[1]
        for name, value in vars(module).items():
            if hasattr(value, "_inner") and getattr(value, "__module__", "") == module.__name__ and name != "barrier":
                assert f"{short}.{name}" in described, f"{short}.{name} has no case under tests/operations"
