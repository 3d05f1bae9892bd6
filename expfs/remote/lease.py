"""Leases on a remote, so that one worker of a cluster runs a stage at a time.

Before a stage runs after a run-cache miss, the worker takes the lease of
its run key on the default remote. Another worker that reaches the same run
key finds the lease live, waits, and restores the entry that the holder
pushes. A lease whose holder died expires after its time limit, and the
next worker takes it over.

A lease is a folder of generations, `leases/<ab>/<name>/<generation>`. Its
`name` is the run key's entry name, so the remote's salt applies. Each
generation is a small JSON record: owner id, host, pid, stage, start time,
expiry and state (held or released). The newest generation is the lease's
state. Every change creates the next generation with the backend's
create-only write, so of two workers that take, renew or take over a lease
at once exactly one wins:

- acquire: when the newest generation is absent, released or expired,
  create the next one;
- renew (the holder's heartbeat, every third of the time limit): create the
  next one with a later expiry; failing means that another worker took the
  lease over;
- release: create the next one marked released.

After each create the writer lists the folder again and holds the lease
only if its generation is still the newest. Older generations are then
deleted, but never the newest, so numbers only grow and a late writer
cannot reuse one. The released generation stays on the remote.

A lease only saves work: the run-cache entry stays create-only, so two
workers that both run a stage (after a lost lease, say) still publish one
entry. Leases are skipped on read-only remotes and on backends that cannot
refuse a second create-only write.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Generic, TypeVar

from expfs.remote.backend import RemoteError, RemoteFileExists
from expfs.remote.entries import entry_name
from expfs.remote.transfer import Remote

log = logging.getLogger(__name__)

T = TypeVar("T")

LEASES_DIR = "leases"
LEASE_FORMAT = 1
HELD = "held"
RELEASED = "released"
# How long a lease stays live without a renewal. A holder that died blocks
# the stage for at most this long.
DEFAULT_TTL_S = 60.0
# How many create races in a row an acquire may lose before it gives up.
MAX_RACES = 5
# Polling of a waiting worker: first delay, growth factor and maximum delay.
FIRST_POLL_S = 0.5
POLL_GROWTH = 1.5
MAX_POLL_S = 5.0
# How often a waiting worker logs that it is still waiting.
WAIT_LOG_EVERY_S = 60.0
_FAILURES = (RemoteError, OSError)


class LeaseWaitCancelled(Exception):
    """The run was cancelled while waiting for another worker's lease."""


@dataclass(frozen=True)
class LeaseRecord:
    """One generation of a lease, as stored on the remote."""

    generation: int
    run_key: str
    stage: str
    owner: str
    host: str
    pid: int
    started: float
    expires: float
    state: str

    def live(self, now: float) -> bool:
        # NOTE: `expires` is the holder's clock and `now` the reader's, so
        # the hosts' clocks must agree to well within the time limit.
        return self.state == HELD and self.expires > now

    def holder(self) -> str:
        return f"{self.host} (pid {self.pid})"

    def encode(self) -> bytes:
        document = {
            "format": LEASE_FORMAT,
            "run_key": self.run_key,
            "stage": self.stage,
            "owner": self.owner,
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "expires": self.expires,
            "state": self.state,
        }
        return json.dumps(document, sort_keys=True).encode()


def decode_lease(data: bytes, generation: int) -> LeaseRecord:
    """Parse a lease generation; raise `ValueError` naming what is wrong."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != LEASE_FORMAT:
        raise ValueError(f"not a lease of format {LEASE_FORMAT}")
    try:
        return LeaseRecord(
            generation=generation,
            run_key=str(doc["run_key"]),
            stage=str(doc["stage"]),
            owner=str(doc["owner"]),
            host=str(doc["host"]),
            pid=int(doc["pid"]),
            started=float(doc["started"]),
            expires=float(doc["expires"]),
            state=str(doc["state"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed lease ({exc!r})") from None


def lease_folder(run_key: str, salt: str = "") -> str:
    name = entry_name(run_key, salt)
    return f"{LEASES_DIR}/{name[:2]}/{name}"


def generation_name(generation: int) -> str:
    return f"{generation:012d}"


def supports_leases(remote: Remote) -> bool:
    """Return True when `remote` can hold leases: writable and create-only."""
    if remote.read_only:
        return False
    try:
        return remote.backend.enforces_create_only()
    except _FAILURES as exc:
        log.warning("remote %s cannot hold leases: %s", remote.label, exc)
        return False


class RemoteLease:
    """The lease of one run key on one remote, as seen by one owner."""

    def __init__(
        self,
        remote: Remote,
        run_key: str,
        stage: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        owner: str | None = None,
    ) -> None:
        self.remote = remote
        self.run_key = run_key
        self.stage = stage
        self.ttl_s = ttl_s
        self.owner = owner or uuid.uuid4().hex
        self.folder = lease_folder(run_key, remote.salt)
        self.generation = 0
        self.started = 0.0
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------

    def generations(self) -> list[int]:
        """Return the generation numbers in the lease's folder, oldest first."""
        backend = self.remote.backend
        # fsspec backends such as s3fs cache listings; other workers write here.
        backend.fs.invalidate_cache(backend.path(self.folder))
        names = self.remote.retry(
            "listing a lease", lambda: backend.list_names(self.folder)
        )
        return sorted(int(n) for n in names if n.isdigit())

    def newest(self) -> LeaseRecord | None:
        """Return the lease's newest generation, or None when it has none."""
        for generation in reversed(self.generations()):
            rel = f"{self.folder}/{generation_name(generation)}"
            try:
                data = self.remote.retry(
                    "reading a lease", partial(self.remote.backend.read_bytes, rel)
                )
            except FileNotFoundError:
                continue  # deleted by its successor since the listing
            try:
                return decode_lease(data, generation)
            except ValueError as exc:
                log.warning(
                    "invalid lease %s on remote %s, treated as expired: %s",
                    rel,
                    self.remote.label,
                    exc,
                )
                return self._unreadable(generation)
        return None

    def _unreadable(self, generation: int) -> LeaseRecord:
        """Stand in for an invalid generation: a lease that has expired."""
        return LeaseRecord(
            generation=generation,
            run_key=self.run_key,
            stage=self.stage,
            owner="",
            host="unknown host",
            pid=0,
            started=0.0,
            expires=0.0,
            state=HELD,
        )

    # -- writing ---------------------------------------------------------------

    def acquire(self) -> LeaseRecord | None:
        """Take the lease; return None when held, or the live lease of another owner."""
        for _ in range(MAX_RACES):
            newest = self.newest()
            now = time.time()
            if newest is not None and newest.live(now) and newest.owner != self.owner:
                return newest
            if newest is not None and newest.state == HELD and not newest.live(now):
                log.info(
                    "lease of stage %s (run key %s) held by %s expired %.0f s ago: "
                    "taking it over",
                    self.stage,
                    self.run_key[:12],
                    newest.holder(),
                    now - newest.expires,
                )
            self.started = now
            generation = newest.generation + 1 if newest is not None else 1
            if self._create(generation, HELD):
                log.info(
                    "took the lease of stage %s (run key %s) on remote %s",
                    self.stage,
                    self.run_key[:12],
                    self.remote.label,
                )
                return None
        raise RemoteError(
            f"the lease of stage {self.stage} (run key {self.run_key[:12]}) on "
            f"remote {self.remote.label} changed {MAX_RACES} times while it was taken"
        )

    def renew(self) -> bool:
        """Extend the lease; return False when another owner has taken it over."""
        with self._lock:
            if self.generation == 0:
                return False
            return self._create(self.generation + 1, HELD)

    def release(self) -> None:
        """Mark the lease released, so waiting workers stop waiting for it."""
        self.stop_heartbeat()
        with self._lock:
            if self.generation == 0:
                return
            try:
                self._create(self.generation + 1, RELEASED)
            except _FAILURES as exc:
                log.warning(
                    "release of the lease of stage %s (run key %s) on remote %s "
                    "failed; it expires in %.0f s: %s",
                    self.stage,
                    self.run_key[:12],
                    self.remote.label,
                    self.ttl_s,
                    exc,
                )
            self.generation = 0

    def _create(self, generation: int, state: str) -> bool:
        """Create `generation`; return True when it is then the newest one."""
        record = LeaseRecord(
            generation=generation,
            run_key=self.run_key,
            stage=self.stage,
            owner=self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=self.started,
            expires=time.time() + self.ttl_s,
            state=state,
        )
        rel = f"{self.folder}/{generation_name(generation)}"
        backend = self.remote.backend
        try:
            self.remote.retry(
                "writing a lease",
                lambda: backend.put_bytes(rel, record.encode(), create_only=True),
            )
        except RemoteFileExists:
            return False
        found = self.generations()
        if found and found[-1] > generation:
            # A late write below a newer generation: it never counted.
            backend.delete(rel)
            return False
        self.generation = generation
        for older in found[:-1]:
            try:
                backend.delete(f"{self.folder}/{generation_name(older)}")
            except _FAILURES as exc:
                log.debug("removing lease generation %d failed: %s", older, exc)
        return True

    # -- heartbeat -------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Renew the lease every third of its time limit, in a daemon thread."""
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"lease-{self.run_key[:12]}", daemon=True
        )
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                renewed = self.renew()
            except _FAILURES as exc:
                log.warning(
                    "renewal of the lease of stage %s (run key %s) on remote %s "
                    "failed, retrying: %s",
                    self.stage,
                    self.run_key[:12],
                    self.remote.label,
                    exc,
                )
                continue
            if not renewed:
                log.warning(
                    "lost the lease of stage %s (run key %s) on remote %s to another "
                    "worker; the stage goes on, and the run-cache keeps the first "
                    "entry pushed",
                    self.stage,
                    self.run_key[:12],
                    self.remote.label,
                )
                return


class Turn(Generic[T]):
    """The outcome of `take_turn`: a lease to run under, or a restored result.

    Used as a context manager around the stage's run: it renews the lease
    while the stage runs and releases it at the end, whether the run
    succeeded or failed. Without a lease it does nothing.
    """

    def __init__(self, lease: RemoteLease | None, restored: T | None = None) -> None:
        self.lease = lease
        self.restored = restored

    def __enter__(self) -> Turn[T]:
        if self.lease is not None:
            self.lease.start_heartbeat()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.lease is not None:
            self.lease.release()


def take_turn(
    remote: Remote,
    run_key: str,
    stage: str,
    *,
    restore: Callable[[], T | None],
    cancelled: Callable[[], bool] | None = None,
    say: Callable[[str], None] | None = None,
    ttl_s: float = DEFAULT_TTL_S,
) -> Turn[T]:
    """Take the lease of `run_key`, or wait for its holder and restore its run.

    `restore` is called after each wait and once after taking the lease. It
    returns the restored result, or None while no entry is there. `say` gets one line for
    the user each time another holder is found. Raises `LeaseWaitCancelled`
    when `cancelled` returns True during a wait. A remote that fails gives
    a turn without a lease: the stage then runs as if there were no remote.
    """
    if not supports_leases(remote):
        return Turn(None)
    lease = RemoteLease(remote, run_key, stage, ttl_s=ttl_s)
    waiter = _Waiter(lease, say)
    while True:
        try:
            holder = lease.acquire()
        except _FAILURES as exc:
            log.warning(
                "the lease of stage %s (run key %s) on remote %s could not be "
                "taken, so the stage runs without one: %s",
                stage,
                run_key[:12],
                remote.label,
                exc,
            )
            return Turn(None)
        if holder is None:
            # The entry may have landed between the last lookup and the
            # acquire, pushed by a holder that has just released the lease.
            restored = restore()
            if restored is not None:
                lease.release()
                return Turn(None, restored)
            waiter.took_over()
            return Turn(lease)
        waiter.wait_for(holder, cancelled)
        restored = restore()
        if restored is not None:
            log.info(
                "stage %s (run key %s) restored after waiting %.1f s for %s",
                stage,
                run_key[:12],
                time.monotonic() - waiter.since,
                holder.holder(),
            )
            return Turn(None, restored)


class _Waiter:
    """The polling schedule and messages of a worker waiting for a lease."""

    def __init__(self, lease: RemoteLease, say: Callable[[str], None] | None) -> None:
        self.lease = lease
        self.say = say
        self.since = time.monotonic()
        self.delay_s = FIRST_POLL_S
        self.announced: LeaseRecord | None = None
        self.logged_at = 0.0

    def took_over(self) -> None:
        """Tell the user that the holder waited for left no result."""
        if self.announced is None or self.say is None:
            return
        self.say(
            f"stage '{self.lease.stage}': the lease of {self.announced.holder()} "
            "expired or was released without a result: running it here"
        )

    def wait_for(
        self, holder: LeaseRecord, cancelled: Callable[[], bool] | None
    ) -> None:
        self._announce(holder)
        # Wake up just after the lease would expire, if that comes first.
        until = min(time.time() + self.delay_s, holder.expires + 0.1)
        self.delay_s = min(self.delay_s * POLL_GROWTH, MAX_POLL_S)
        while time.time() < until:
            if cancelled is not None and cancelled():
                raise LeaseWaitCancelled(self.lease.stage)
            time.sleep(min(0.2, max(0.0, until - time.time())))

    def _announce(self, holder: LeaseRecord) -> None:
        stage, key = self.lease.stage, self.lease.run_key[:12]
        if self.announced is None or holder.owner != self.announced.owner:
            self.announced = holder
            self.logged_at = time.monotonic()
            running_s = max(0.0, time.time() - holder.started)
            line = (
                f"stage '{stage}': waiting for {holder.holder()}, which started it "
                f"{running_s:.0f} s ago (lease on remote {self.lease.remote.name})"
            )
            log.info("%s, run key %s", line, key)
            if self.say is not None:
                self.say(line)
        elif time.monotonic() - self.logged_at > WAIT_LOG_EVERY_S:
            self.logged_at = time.monotonic()
            log.info(
                "stage %s (run key %s): still waiting for %s after %.0f s",
                stage,
                key,
                holder.holder(),
                time.monotonic() - self.since,
            )


def ended_lease_files(remote: Remote, cutoff: float) -> list[str]:
    """Return the files of every lease that ended before `cutoff`, for gc.

    A lease ended when its newest generation is released or expired and
    was written before `cutoff` (seconds since the epoch). All of its
    generations go together. Removing the newest one lets generation
    numbers start again, which is safe only because no worker still acts
    on a listing that old.
    """
    folders: dict[str, list[tuple[int, str, float]]] = {}
    for rel, mtime in remote.backend.walk_files(LEASES_DIR):
        folder, _, name = rel.rpartition("/")
        if name.isdigit():
            folders.setdefault(folder, []).append((int(name), rel, mtime))
    ended: list[str] = []
    now = time.time()
    for files in folders.values():
        generation, rel, mtime = max(files)
        if mtime > cutoff:
            continue
        try:
            record = decode_lease(remote.backend.read_bytes(rel), generation)
        except FileNotFoundError:
            continue
        except ValueError:
            record = None
        if record is None or not record.live(now):
            ended += [f[1] for f in files]
    return ended
