"""OS patching, one node at a time: `patched` upgrades a node's packages (the engine's left as they are: engine
versions change only through the deploy's own rolling upgrade) in its turn, drained through a manager (see
operations/maintenance.py), reboots it when it asks for one or when told to, and waits until it is back: the
firewall in force before Docker started, the node Ready (a manager Reachable with a leader elected, unlocked
under autolock), its availability given back and the services at their replicas. Each node's outcome is kept
for the run's summary (`summary`), printed after the turns or at the first that fails."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field

import gevent
from pyinfra import host, logger, state
from pyinfra.api import Host, State, StringCommand, operation
from pyinfra.api.command import FunctionCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.connectors.util import clear_askpass_cache, remove_any_sudo_askpass_file

from pyinfra_swarm.facts import REBOOT_REASONS, dnf_excludes, engine_pins
from pyinfra_swarm.operations.callbacks import PerRun, expected_failures
from pyinfra_swarm.operations.maintenance import Turn, take_turn
from pyinfra_swarm.operations.swarm import connector_args

REBOOT_CHOICES = ("if-required", "always", "never")
BOOT_MARKER = "cat /proc/sys/kernel/random/boot_id; cut -d' ' -f22 /proc/1/stat"  # a VM's boot, a container's start
REBOOT = "( sleep 1 && systemctl reboot ) </dev/null >/dev/null 2>&1 &"  # detached: the SSH channel closes first
POLL = 3.0


def upgrade_command(package_manager: str, engine_packages: list[str]) -> str:
    """The OS upgrade, the engine packages left at the versions they have: apt's `upgrade --with-new-pkgs`
    (new dependencies such as a new kernel's package installed, nothing removed; configuration files the
    admin changed kept) or dnf's `upgrade`."""
    if package_manager == "dnf":
        return f"dnf -y -q upgrade {dnf_excludes(engine_packages)}"
    return (
        f"export DEBIAN_FRONTEND=noninteractive; {engine_pins(engine_packages)}; "
        'apt-get -q -y -o Dir::Etc::Preferences="$pins" -o Dpkg::Options::=--force-confdef '
        '-o Dpkg::Options::=--force-confold upgrade --with-new-pkgs; status=$?; rm -f "$pins"; exit $status'
    )


def firewall_check(unit: str, before_docker: bool) -> str:
    """Prints `ok` when `unit` (the firewall) is active and, with `before_docker` (after a reboot), became so
    before Docker's engine started."""
    order = '&& [ "$(echo "$fw" | sed -n "s/^ActiveEnterTimestampMonotonic=//p")" -le "${docker:-0}" ] '
    return (
        f"fw=$(systemctl show -p ActiveState -p ActiveEnterTimestampMonotonic {shlex.quote(unit)}); "
        "docker=$(systemctl show -p ExecMainStartTimestampMonotonic --value docker.service); "
        f'echo "$fw" | grep -qx ActiveState=active {order if before_docker else ""}&& echo ok; true'
    )


@dataclass
class Outcome:
    """What a node's turn did, for the summary."""

    upgraded: int = 0
    rebooted: str = ""  # why, when it rebooted
    out: float = 0.0  # seconds drained
    failed: str = ""


@dataclass
class _Run:
    """What the patching turns of one run share: each node's outcome, the nodes left alone and why, how many
    turns started (the pause comes before each but the first) and whether the summary was printed."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    turns: int = 0
    reported: bool = False


_run_of = PerRun(_Run)


@operation(is_idempotent=False)
def patched(
    node_id: str,
    managers: list[str],
    upgrades: list[str],
    reboot_reasons: list[str],
    reboot: str = "if-required",
    engine_packages: list[str] | None = None,
    package_manager: str = "apt",
    firewall_unit: str | None = None,
    availability: str = "active",
    drain_timeout: int | None = None,
    ready_timeout: int = 180,
    reboot_timeout: int = 600,
    key_file: str | None = None,
    pause: int = 0,
    left_drained: bool = False,
):
    """Upgrade this host's packages in its node's turn, and reboot it when needed; nothing when it has no
    upgrade, needs no reboot and was not left drained.

    + node_id: this host's swarm node ID
    + managers: inventory names of the managers to run `docker node` commands on (the first that answers)
    + upgrades: the packages the upgrade will change (facts.PendingPatches), for progress and the summary
    + reboot_reasons: why the host asks for a reboot already (facts.PendingPatches)
    + reboot: ``if-required`` (when the host asks for one, also after the upgrade), ``always`` or ``never``
    + engine_packages: packages left at their versions (Docker's engine, containerd, runc)
    + package_manager: ``apt`` or ``dnf``
    + firewall_unit: the systemd unit of the node's firewall, which must be active before Docker starts
    + availability: the availability the node gets back
    + drain_timeout, ready_timeout, key_file: as for `maintenance.drained`
    + reboot_timeout: seconds to wait for the node to answer SSH again after a reboot
    + pause: seconds to wait before each node's turn after the first
    + left_drained: an unfinished turn left the node drained: it takes a turn (with whatever else it has to
      do), so that it gets its availability back only once it is healthy and its firewall in force

    Use `_serial=True`: one node at a time, and after a turn that fails the others don't start.

    **Example:**

    .. code:: python

        patching.patched(name="Patch the OS", node_id=node_id, managers=["manager1"], upgrades=["openssl"],
                         reboot_reasons=[], _serial=True)
    """
    if reboot not in REBOOT_CHOICES:
        raise OperationError(f"reboot must be one of {', '.join(REBOOT_CHOICES)}, not {reboot!r}")
    if not has_turn(upgrades, reboot, reboot_reasons, left_drained):
        _run_of(state).skipped[host.name] = "up to date, no reboot needed"
        host.noop("up to date, and no reboot needed")
        return
    why = _why(upgrades, reboot, reboot_reasons, left_drained)
    spec = Turn(node_id, managers, availability, drain_timeout, ready_timeout, key_file, why)
    command = upgrade_command(package_manager, engine_packages or []) if upgrades else None
    yield FunctionCommand(_turn, (spec, len(upgrades), reboot, command, firewall_unit, reboot_timeout, pause), {})


def has_turn(upgrades: list[str], reboot: str, reboot_reasons: list[str], left_drained: bool = False) -> bool:
    """Whether `patched` takes the node's turn: something to upgrade, a reboot to do, or a node left drained."""
    return (bool(upgrades) or reboot == "always" or (reboot == "if-required" and bool(reboot_reasons))
            or left_drained)  # fmt: skip


def _why(upgrades: list[str], reboot: str, reasons: list[str], left_drained: bool) -> str:
    """The turn's purpose in words: what it upgrades, whether it reboots, a node left drained checked."""
    shown = ", ".join(upgrades[:5]) + (f" and {len(upgrades) - 5} more" if len(upgrades) > 5 else "")
    parts = ["left drained by an unfinished run: checked before it gets its availability back"] if left_drained else []
    parts += [f"upgrade {len(upgrades)} package(s) ({shown})"] if upgrades else []
    if reboot == "always":
        parts.append("reboot (patch_reboot: always)")
    elif reboot == "if-required" and reasons:
        parts.append(f"reboot ({'; '.join(reasons)})")
    elif reboot == "if-required":
        parts.append("reboot if the upgrade asks for one")
    return ", then ".join(parts)


@expected_failures
def _turn(state: State, host: Host, spec: Turn, upgrades: int, reboot: str, command: str | None,
          firewall_unit: str | None, reboot_timeout: int, pause: int) -> None:  # fmt: skip
    """The node's turn (see `patched`), its outcome kept for the summary."""
    run = _run_of(state)
    if run.turns and pause:
        logger.info(f"{host.print_prefix}pausing {pause} s before this node's turn (patch_pause)")
        gevent.sleep(pause)
    run.turns += 1
    outcome = run.outcomes.setdefault(host.name, Outcome())
    started = time.monotonic()

    def work() -> str | None:
        args = connector_args(state, host)
        if command is not None:
            logger.info(f"{host.print_prefix}upgrading {upgrades} package(s), the engine left as it is")
            status, output = host.run_shell_command(StringCommand(command), print_output=state.print_output,
                                                    print_input=state.print_input, **args)  # fmt: skip
            if not status:
                lines = output.stderr.strip().splitlines() or output.stdout.strip().splitlines() or ["no output"]
                return f"the upgrade failed: {' / '.join(lines[-3:])}"
            outcome.upgraded = upgrades
        reasons = {"always": ["patch_reboot: always"], "never": []}.get(reboot)
        if reasons is None:  # if-required: asked for before the upgrade, or by it
            reasons = _reboot_reasons(host, args)
        if reasons:
            problem = _reboot(state, host, "; ".join(reasons), reboot_timeout)
            if problem:
                return problem
            outcome.rebooted = "; ".join(reasons)
        return _firewall_problem(host, args, firewall_unit, rebooted=bool(outcome.rebooted))

    try:
        take_turn(state, host, spec, work, rollback=[])
    except OperationError as error:
        outcome.failed = str(error)
        outcome.out = time.monotonic() - started
        _print_summary(state, host)  # the turns after this one don't start
        raise
    outcome.out = time.monotonic() - started


def _reboot_reasons(host: Host, args: dict) -> list[str]:
    status, output = host.run_shell_command(StringCommand(REBOOT_REASONS), print_output=False, **args)
    return [line[7:] for line in output.stdout_lines if line.startswith("reboot ")] if status else []


def _boot_marker(host: Host, args: dict) -> str | None:
    status, output = host.run_shell_command(StringCommand(BOOT_MARKER), print_output=False, **args)
    return " ".join(output.stdout_lines) if status else None


def _reboot(state: State, host: Host, why: str, timeout: int) -> str | None:
    """Reboot the host and wait until it answers SSH from a new boot; what went wrong, or None."""
    args = connector_args(state, host)
    before = _boot_marker(host, args)
    if before is None:
        return "not rebooted: its boot can't be told from the next one (reading its boot ID failed)"
    logger.info(f"{host.print_prefix}rebooting ({why})")
    remove_any_sudo_askpass_file(host)
    host.run_shell_command(StringCommand(REBOOT), print_output=False, **args)
    clear_askpass_cache(host)
    host.disconnect()
    started = time.monotonic()
    last_report = started
    while time.monotonic() - started < timeout:
        gevent.sleep(POLL)
        host.connect(show_errors=False)
        if host.connected:
            marker = _boot_marker(host, connector_args(state, host))
            if marker is not None and marker != before:
                logger.info(f"{host.print_prefix}back from its reboot after {time.monotonic() - started:.0f} s")
                return None
            if marker == before:
                host.disconnect()  # still the old boot: going down
        if time.monotonic() - last_report >= 15:
            logger.info(f"{host.print_prefix}waiting for it to come back from its reboot "
                        f"({time.monotonic() - started:.0f} s)")  # fmt: skip
            last_report = time.monotonic()
    return f"the node did not come back from its reboot within {timeout} s (patch_reboot_timeout)"


def _firewall_problem(host: Host, args: dict, unit: str | None, rebooted: bool) -> str | None:
    """Why the node's firewall is not known to be in force (after a reboot: since before Docker started), or
    None."""
    if unit is None:
        return None
    status, output = host.run_shell_command(StringCommand(firewall_check(unit, before_docker=rebooted)),
                                            print_output=False, **args)  # fmt: skip
    if status and "ok" in output.stdout_lines:
        return None
    when = "active before Docker started" if rebooted else "active"
    return (f"its firewall ({unit}) was not {when}: the node stays drained until it is; see "
            f"`systemctl status {unit}`")  # fmt: skip


@operation(is_idempotent=False)
def summary():
    """Print the run's patching summary (once, from the first host that gets here): what each node's turn did,
    whether it rebooted and how long it was out. Call it after `patched`, on the hosts that have a turn."""
    yield FunctionCommand(_print_summary, (), {})


def _print_summary(state: State, host: Host) -> None:
    run = _run_of(state)
    if not run.reported:
        run.reported = True
        for line in summary_lines(run.outcomes, run.skipped):
            logger.info(line)


def summary_lines(outcomes: dict[str, Outcome], skipped: dict[str, str]) -> list[str]:
    """The run's summary: one line per node, in the order they took their turns, then those left alone."""
    lines = ["--> OS patching, node by node:"]
    for name, outcome in outcomes.items():
        if outcome.failed:
            lines.append(f"    {name}: FAILED after {outcome.out:.0f} s: {outcome.failed}")
            continue
        done = [f"{outcome.upgraded} package(s) upgraded"] if outcome.upgraded else ["no package upgraded"]
        done.append(f"rebooted ({outcome.rebooted})" if outcome.rebooted else "not rebooted")
        lines.append(f"    {name}: {', '.join(done)}; out of service {outcome.out:.0f} s")
    lines += [f"    {name}: {why}" for name, why in skipped.items()]
    return lines
