"""One run at a time, cluster-wide: the cluster lock is a swarm config, `pyinfra-swarm.lock`, that a run creates
through a manager while it plans, before any change. The swarm creates configs by name in its raft store, so of
two runs only one can create it. Its labels say who holds it (user, controller, pid, since when, what it runs);
the holder updates them every minute (the heartbeat) and removes the config when the run ends, however it
ends (its last operation, or the controller's exit: a failure, Ctrl-C, a refused confirmation, `--dry`). A run
that finds the lock held waits with progress, up to `swarm_lock_wait` seconds, then stops naming the holder. A
lock whose holder was killed (no heartbeat for EXPIRY seconds, on the manager's clock) is broken with a warning;
`pyinfra-swarm lock INVENTORY --break` breaks one at once.

The same command reads the swarm's record of the PKI directory it was deployed with (`pyinfra-swarm.pki.ID`)."""

from __future__ import annotations

import atexit
import json
import shlex
import time
import uuid
import weakref
from dataclasses import dataclass

import gevent
from pyinfra import logger
from pyinfra.api import Host, State, StringCommand
from pyinfra.api.exceptions import DeployError
from pyinfra.api.state import BaseStateCallback

from pyinfra_swarm import controller
from pyinfra_swarm.facts import docker_api, docker_post
from pyinfra_swarm.operations.swarm import LOCK_CONFIG, connector_args

PKI_RECORD = "pyinfra-swarm.pki."  # + the PKI directory's identity (pki.identity)
LABEL = "pyinfra-swarm.lock."  # + run, who, since, what, beat
HEARTBEAT = 60  # seconds between the holder's heartbeats
EXPIRY = 600  # seconds without a heartbeat after which a lock is taken to be a killed run's
POLL = 5.0
BREAK_HINT = (
    f"`pyinfra-swarm lock INVENTORY --break` breaks it at once; it expires {EXPIRY // 60} min after its last heartbeat"
)


@dataclass
class Holder:
    """Who holds the lock, from its labels; `silent`: seconds since its last heartbeat (the manager's clock)."""

    run: str
    who: str
    since: str
    what: str
    silent: int

    def __str__(self) -> str:
        return f"{self.who}, running `{self.what}` since {self.since} (last heartbeat {self.silent} s ago)"


def holder_of(lines: list[str]) -> Holder | None:
    """The holder from `docker config inspect` output (`holder LABELS-JSON UPDATED-UNIX` and `now UNIX`)."""
    labels: dict[str, str] = {}
    updated = now = 0
    for line in lines:
        kind, _, rest = line.strip().partition(" ")
        if kind == "holder":
            text, _, stamp = rest.rpartition(" ")
            labels = json.loads(text or "{}") or {}
            updated = int(stamp) if stamp.isdigit() else 0
        elif kind == "now" and rest.isdigit():
            now = int(rest)
    if not labels:
        return None
    field = {key.removeprefix(LABEL): value for key, value in labels.items()}
    return Holder(field.get("run", "?"), field.get("who", "?"), field.get("since", "?"), field.get("what", "?"),
                  max(now - updated, 0))  # fmt: skip


INSPECT = (
    f"docker config inspect {LOCK_CONFIG} --format 'holder {{{{json .Spec.Labels}}}} {{{{.UpdatedAt.Unix}}}}' "
    "2>/dev/null; "
    'echo "now $(date +%s)"'
)


def _run(state: State, manager: Host, command: str, stdin: str | None = None) -> tuple[bool, list[str], str]:
    kwargs = {"_stdin": stdin} if stdin is not None else {}
    status, output = manager.run_shell_command(StringCommand(command), print_output=False,
                                               **connector_args(state, manager), **kwargs)  # fmt: skip
    return status, output.stdout_lines, output.stderr.strip()


class ClusterLock:
    """This run's hold on the cluster lock, through the swarm's managers (the first that answers)."""

    def __init__(self, state: State, managers: list[Host]) -> None:
        self.state = state
        self.managers = managers
        self.run = uuid.uuid4().hex[:16]
        self.held = False
        self.pki_records: list[str] = []
        self._heartbeat: gevent.Greenlet | None = None

    def take(self, wait: int) -> bool:
        """Take the lock, waiting up to `wait` seconds for another run's; whether it had to wait (the cluster
        may have changed meanwhile). DeployError naming the holder when it can't."""
        deadline = time.monotonic() + wait
        waited = False
        last_report = 0.0
        broken: set[str] = set()
        while True:
            holder, error = self._try()
            if self.held:
                self._heartbeat = gevent.spawn(self._beat)
                _LOCKS.add(self)
                self.state.add_callback_handler(_ReleaseAtTheEnd(self))
                return waited
            if holder is None:
                raise DeployError(f"the cluster lock can't be taken through {self.managers[0].name}: {error}")
            if holder.silent > EXPIRY and holder.run in broken:
                raise DeployError(f"the cluster lock of {holder} could not be broken: {BREAK_HINT}")
            if holder.silent > EXPIRY:
                broken.add(holder.run)
                logger.warning(f"the cluster lock of {holder} has had no heartbeat for {holder.silent} s (a run that "
                               "was killed): broken")  # fmt: skip
                self._remove(holder.run)
                continue
            if time.monotonic() > deadline:
                raise DeployError(
                    f"another run holds the cluster lock: {holder}. Wait for it to end and run again (swarm_lock_wait "
                    f"sets how long a run waits); if that run was killed, {BREAK_HINT}"
                )
            if time.monotonic() - last_report >= 15:
                logger.warning(f"waiting for the cluster lock, held by {holder}")
                last_report = time.monotonic()
            waited = True
            gevent.sleep(POLL)

    def _try(self) -> tuple[Holder | None, str]:
        """Create the lock; (None, "") when this run holds it now, else (its holder, or None, and the error)."""
        labels = {"run": self.run, "who": controller.who(), "since": controller.started(), "what": controller.what(),
                  "beat": "0"}  # fmt: skip
        create = shlex.join(
            ["docker", "config", "create", *(a for k, v in labels.items() for a in ("--label", f"{LABEL}{k}={v}")),
             LOCK_CONFIG, "-"]
        )  # fmt: skip
        command = (
            f'if error=$({create} 2>&1 >/dev/null); then echo locked; else echo "error $error" | head -1; {INSPECT}; '
            f"fi; docker config ls --filter name={PKI_RECORD} --format 'pki {{{{.Name}}}}'"
        )
        status, lines, stderr = _run(self.state, self.managers[0], command, f"held by {controller.who()}\n")
        self.pki_records = [line.split(" ", 1)[1] for line in lines if line.startswith("pki ")]
        if status and "locked" in lines:
            self.held = True
            return None, ""
        error = next((line[6:] for line in lines if line.startswith("error ")), stderr or "no answer")
        return (holder_of(lines) if "already exists" in error else None), error

    def _remove(self, run: str) -> bool:
        """Remove the lock if run `run` holds it; whether a manager answered."""
        command = (
            f'[ "$(docker config inspect {LOCK_CONFIG} --format \'{{{{index .Spec.Labels "{LABEL}run"}}}}\' '
            '2>/dev/null)" '
            f"= {shlex.quote(run)} ] && docker config rm {LOCK_CONFIG} >/dev/null; true"
        )
        for manager in self.managers:
            if not manager.connected:
                manager.connect(show_errors=False)
            if manager.connected and _run(self.state, manager, command)[0]:
                return True
        return False

    def _beat(self) -> None:
        """Every HEARTBEAT seconds: the lock's `beat` label counted up (which moves its UpdatedAt on)."""
        count = 0
        while self.held:
            gevent.sleep(HEARTBEAT)
            count += 1
            if self.held and not self._beat_once(count):
                logger.warning("the cluster lock's heartbeat failed: no manager answered, or the lock was broken")

    def _beat_once(self, count: int) -> bool:
        for manager in self.managers:
            if not manager.connected:
                continue
            status, lines, _ = _run(self.state, manager, docker_api(f"/configs/{LOCK_CONFIG}"))
            if not status:
                continue
            config = json.loads("".join(lines))
            spec = config["Spec"]
            if spec.get("Labels", {}).get(f"{LABEL}run") != self.run:
                return False
            spec["Labels"][f"{LABEL}beat"] = str(count)
            version = config["Version"]["Index"]
            update = docker_post(f"/configs/{config['ID']}/update?version={version}", with_status=False)
            return _run(self.state, manager, update, json.dumps(spec))[0]
        return False

    def release(self) -> None:
        """Remove the lock if this run holds it (once)."""
        if not self.held:
            return
        self.held = False
        if self._heartbeat is not None:
            self._heartbeat.kill(block=False)
        if not self._remove(self.run):
            logger.warning(f"the cluster lock could not be removed (no manager answered): {BREAK_HINT}")


class _ReleaseAtTheEnd(BaseStateCallback):
    """Releases the lock once the run's last operation ended on every host."""

    def __init__(self, lock: ClusterLock) -> None:
        self.lock = lock

    def operation_end(self, state: State, op_hash: str) -> None:  # type: ignore[override]
        order = state.get_op_order()
        if order and op_hash == order[-1]:
            self.lock.release()


_LOCKS: weakref.WeakSet[ClusterLock] = weakref.WeakSet()


@atexit.register
def release_all() -> None:
    """Whatever ended the run (an error, Ctrl-C, a refused confirmation, --dry): locks still held go."""
    for lock in list(_LOCKS):
        lock.release()


def take(state: State, managers: list[Host], wait: int) -> tuple[ClusterLock, bool]:
    """This run's cluster lock, taken through the first of `managers`, and whether it had to wait for another
    run's (the cluster may have changed meanwhile: plan again)."""
    lock = ClusterLock(state, managers)
    return lock, lock.take(wait)


def record_pki(lock: ClusterLock, identity: str) -> None:
    """Record in the swarm that this PKI directory (`identity`) is the one it is deployed with, replacing any
    other record (`swarm_pki_takeover`)."""
    others = " ".join(shlex.quote(r) for r in lock.pki_records if r != PKI_RECORD + identity)
    command = (f'for r in {others}; do docker config rm "$r" >/dev/null; done; ' if others else "") + (
        f"docker config create {PKI_RECORD}{identity} - >/dev/null"
    )
    status, _, stderr = _run(lock.state, lock.managers[0], command, f"pyinfra-swarm PKI directory {identity}\n")
    if not status:
        raise DeployError(f"recording the PKI directory in the swarm failed: {stderr}")
    lock.pki_records = [PKI_RECORD + identity]


def read(state: State, manager: Host) -> Holder | None:
    """Who holds the cluster lock now (None: nobody), read through a manager."""
    status, lines, stderr = _run(state, manager, INSPECT)
    if not status:
        raise LookupError(stderr or "no answer")
    return holder_of(lines)


def force_break(state: State, manager: Host) -> Holder | None:
    """Remove the cluster lock whoever holds it; the holder it had (None: there was none)."""
    holder = read(state, manager)
    if holder is not None:
        status, _, stderr = _run(state, manager, f"docker config rm {LOCK_CONFIG} >/dev/null")
        if not status:
            raise LookupError(stderr or "no answer")
    return holder
