"""Firewall operations: our rules file and the unit that applies it at boot."""

from __future__ import annotations

from io import StringIO

from pyinfra.api import operation
from pyinfra.operations import files

UNIT = "pyinfra-swarm-firewall.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"


def unit_text(start: str) -> str:
    """The oneshot unit that applies our rules at boot, before Docker starts."""
    return "\n".join([
        "[Unit]",
        "Description=pyinfra-swarm: inbound firewall rules of this swarm node",
        "Wants=network-pre.target",
        "Before=network-pre.target docker.service",
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        f"ExecStart={start}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]) + "\n"  # fmt: skip


@operation()
def rules(text: str, path: str, start: str, write_rules: bool, write_unit: bool, restart: bool):
    """Our rules file and the unit that applies it at boot, applied now: one operation, so that a peer's
    firewall is open by the time pyinfra runs a join planned on another host.

    + text: the rules file's text (an iptables-restore script or an nft script)
    + path: where it goes
    + start: the command that applies it (the unit's ExecStart)
    + write_rules, write_unit: whether the rules file or the unit differ from what the host has
    + restart: whether the unit runs already (restart) or not (start)
    """
    if write_rules:
        yield from files.put._inner(src=StringIO(text), dest=path, mode="0755")
    if write_unit:
        yield from files.put._inner(src=StringIO(unit_text(start)), dest=UNIT_FILE, mode="0644")
        yield "systemctl daemon-reload"
    yield f"systemctl {'restart' if restart else 'start'} {UNIT}"
    yield f"systemctl enable {UNIT}"
