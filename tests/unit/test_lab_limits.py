"""The lab's check of the host's inotify limit before nodes start."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinfra_swarm.lab.limits import PER_NODE, RAISED, ensure_inotify, inotify_in_use
from pyinfra_swarm.lab.spec import LabError


def test_enough_room_changes_nothing(tmp_path: Path) -> None:
    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")
    said: list[str] = []
    ensure_inotify(4, said.append, limit, in_use=40)
    assert limit.read_text() == "128\n" and said == []


def test_too_little_room_raises_the_limit_and_says_so(tmp_path: Path) -> None:
    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")
    said: list[str] = []
    ensure_inotify(16, said.append, limit, in_use=40)
    assert int(limit.read_text()) == max(RAISED, (40 + PER_NODE * 16) * 2)
    assert said == [
        f"raised fs.inotify.max_user_instances from 128 to {RAISED}: 16 more nodes need about {PER_NODE * 16} "
        "inotify instances; 40 of 128 (fs.inotify.max_user_instances) are in use"
    ]


def test_a_limit_it_may_not_raise_is_an_error_with_the_command(tmp_path: Path, monkeypatch) -> None:
    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")

    def refuse(self: Path, text: str) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(LabError, match=f"sudo sysctl fs.inotify.max_user_instances={RAISED}"):
        ensure_inotify(16, print, limit, in_use=40)


def test_instances_in_use_are_counted_from_proc() -> None:
    assert inotify_in_use() >= 0
