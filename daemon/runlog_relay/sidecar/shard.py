"""Scale-out: several replicas on one shared folder, each mirroring its share of the runs.

Membership is a Lease per replica (``<group>-<identity>``, labelled with the group) in
the replicas' namespace: each renews its own every third of ``shard.leaseSeconds`` and
lists the group's. A replica is live while its Lease keeps changing: a Lease whose
renewTime this replica has not seen change for ``leaseSeconds`` (measured on this
replica's own monotonic clock, so clock skew between nodes does not matter, as in
client-go's leader election) is gone. Runs are assigned by rendezvous hashing over the
live members: each run goes to the member with the highest hash of (member, run id), so a
change of membership moves only the runs of the member that came or went.

Hand-over without two writers: a replica drops runs it no longer owns at once, and takes
runs it gains only one renewal period later, by when the previous owner has seen the same
membership and stopped. Either change makes the detector forget what it knew and compare
its (new) share with the bucket (:class:`~runlog_relay.sidecar.types.Rescan` with
``relist``), so whatever the previous owner left unfinished is completed.

Failover bound (SIGKILL of a replica): ``leaseSeconds`` until its Lease counts as gone, at
most one renewal period until a survivor looks, one more before it takes the runs:
``leaseSeconds * 5/3`` plus the comparison and uploads. A replica that stops cleanly
(SIGTERM) deletes its Lease after its drain, so the others take over at their next look.

While the API server cannot be reached a replica keeps the last membership it saw (and
keeps mirroring its share); it never claims runs on a guess.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from runlog_relay.config.settings import SidecarShard
from runlog_relay.errors import ConfigError, RelayError

if TYPE_CHECKING:
    from runlog_relay.sidecar.leases import LeaseRecord

# The Lease client (and urllib3 under it, ~30 ms and a few MiB) is imported only by a
# replica that has a shard group: every per-pod sidecar imports this module and never
# needs it (issue 12 item 5, the per-pod cost).

__all__ = ["LeaseStore", "Shard", "owner_of", "placement", "shard_from_settings"]

log = logging.getLogger(__name__)

#: A Lease's name, ``<group>-<identity>``: a DNS subdomain (RFC 1123).
_LEASE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
#: A Lease unchanged for this many lease durations belongs to a replica that is long gone.
GARBAGE_AFTER = 4


def _score(member: str, run_id: str) -> int:
    digest = hashlib.blake2b(f"{member}\0{run_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(run_id: str, members: Iterable[str]) -> str | None:
    """The member that mirrors ``run_id``: the highest rendezvous score (ties by name)."""
    return max(members, key=lambda m: (_score(m, run_id), m), default=None)


class LeaseStore(Protocol):
    """What the shard needs from the Kubernetes API (:class:`LeaseApi`, or a fake)."""

    def renew(self, identity: str, duration: float) -> None: ...
    def release(self, identity: str) -> None: ...
    def members(self) -> list[LeaseRecord]: ...


class Shard:
    """This replica's view of the group, and the predicate the detector asks per run."""

    def __init__(
        self,
        identity: str,
        leases: LeaseStore,
        *,
        lease_seconds: float,
        on_change: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self._leases = leases
        self.lease_seconds = lease_seconds
        self.period = lease_seconds / 3
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[str, float]] = {}  # holder -> (renewTime, first seen)
        self._live: frozenset[str] = frozenset()  #: the latest view: drops apply at once
        self._adopted: frozenset[str] = frozenset()  #: the view whose gains apply
        self._pending: tuple[float, frozenset[str]] | None = None  # (adopt at, view)
        self._cache: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.joined = False  #: this replica's own Lease was written at least once

    # ------------------------------------------------------------------ the predicate
    def owns(self, run_id: str) -> bool:
        """Whether this replica mirrors ``run_id`` now: its owner in the latest view and
        in the adopted one (nothing before the first view)."""
        with self._lock:
            cached = self._cache.get(run_id)
            if cached is None:
                cached = (
                    owner_of(run_id, self._live) == self.identity
                    and owner_of(run_id, self._adopted) == self.identity
                )
                if len(self._cache) > 100_000:
                    self._cache.clear()
                self._cache[run_id] = cached
            return cached

    @property
    def members(self) -> frozenset[str]:
        with self._lock:
            return self._live

    # ------------------------------------------------------------------ one round
    def step(self) -> None:
        """Renew this replica's Lease, look at the group's, adopt what is due."""
        now = self._clock()
        try:
            self._leases.renew(self.identity, self.lease_seconds)
            self.joined = True
            records = self._leases.members()
        except RelayError as exc:
            log.warning("scale-out: %s; keeping the last membership seen", exc)
            self._adopt_due(now)
            return
        live = self._observe(records, now)
        self._collect_garbage(now)
        changed = ""
        with self._lock:
            if live != self._live:
                gained = self._would_gain(live)
                self._live = live
                self._cache.clear()
                changed = f"members now {sorted(live)}"
                if gained:
                    self._pending = (now + self.period, live)
                else:
                    self._adopted, self._pending = live, None
        if changed:
            log.info("scale-out: %s", changed, extra={"members": sorted(live)})
            self._on_change(changed)
        self._adopt_due(now)

    def _observe(self, records: list[LeaseRecord], now: float) -> frozenset[str]:
        live = {self.identity} if self.joined else set()
        present = set()
        for record in records:
            present.add(record.holder)
            renewed, since = self._seen.get(record.holder, ("", now))
            if record.renewed != renewed:
                since = now
            self._seen[record.holder] = (record.renewed, since)
            if now - since < self.lease_seconds:
                live.add(record.holder)
        for holder in set(self._seen) - present:
            del self._seen[holder]  # deleted: left cleanly
        return frozenset(live)

    def _collect_garbage(self, now: float) -> None:
        """Delete the Leases of replicas gone for a while (SIGKILLed pods never delete
        theirs), so the group's list stays as long as the group. Any member may do it;
        deleting twice is harmless."""
        for holder, (_, since) in list(self._seen.items()):
            if holder != self.identity and now - since > GARBAGE_AFTER * self.lease_seconds:
                try:
                    self._leases.release(holder)
                except RelayError:
                    continue
                del self._seen[holder]
                log.info("scale-out: deleted the Lease of %s, gone for a while", holder)

    def _would_gain(self, live: frozenset[str]) -> bool:
        """A new member set gives this replica runs it did not have when any member left
        (a run's owner among the others changes only when its owner is gone)."""
        return bool(self._adopted - live) or not self._adopted

    def _adopt_due(self, now: float) -> None:
        with self._lock:
            if self._pending is None or now < self._pending[0]:
                return
            _, view = self._pending
            self._pending = None
            if view != self._live:
                return  # superseded by a newer view, which has its own schedule
            self._adopted = view
            self._cache.clear()
        log.info("scale-out: taking this replica's share of %d member(s)", len(view))
        self._on_change("adopted")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self._clock()
            try:
                self.step()
            except Exception:
                log.exception("scale-out: a membership round failed; going on")
            self._stop.wait(max(0.0, self.period - (self._clock() - started)))

    @property
    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def leave(self) -> None:
        """Stop renewing and delete this replica's Lease (after its drain)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        try:
            self._leases.release(self.identity)
        except RelayError as exc:
            log.warning(
                "scale-out: could not delete this replica's Lease (%s); the others"
                " take its runs once it expires",
                exc,
            )


def placement(settings: SidecarShard) -> tuple[str, str]:
    """(identity, namespace) of this replica, or a ConfigError saying what is missing;
    checked at start-up, before anything runs."""
    identity = settings.identity or os.environ.get("POD_NAME") or socket.gethostname().lower()
    if not _LEASE_NAME.fullmatch(f"{settings.group}-{identity}"):
        raise ConfigError(
            f"shard identity {identity!r} cannot name a Lease ({settings.group}-{identity}):"
            " use lower-case letters, digits, '-' and '.', at most 200 characters"
        )
    from runlog_relay.sidecar.leases import in_cluster_namespace

    namespace = settings.namespace or os.environ.get("POD_NAMESPACE") or in_cluster_namespace()
    if not namespace:
        raise ConfigError("shard.group is set but no namespace is known: set shard.namespace")
    if not settings.api_url and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise ConfigError(
            "shard.group is set but this is not a Kubernetes pod (no KUBERNETES_SERVICE_HOST):"
            " set shard.apiUrl, or unset shard.group"
        )
    return identity, namespace


def shard_from_settings(settings: SidecarShard, on_change: Callable[[str], None]) -> Shard | None:
    """A :class:`Shard` when ``settings.group`` is set, else None (mirror every run)."""
    if not settings.group:
        return None
    from runlog_relay.sidecar.leases import LeaseApi

    identity, namespace = placement(settings)
    leases = LeaseApi(settings.api_url, namespace, settings.group)
    return Shard(identity, leases, lease_seconds=settings.lease_seconds, on_change=on_change)
