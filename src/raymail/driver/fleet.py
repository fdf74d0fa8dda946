"""The fleet of delivery servers: start, heartbeat, watch, judge, replace, stop.

The driver's view of each server (:class:`Server`) lives here, and so does every rule
about a server's health: a failing streak across domains retires it, a stall replaces it,
and while Ray restarts it (its node or process died) it gets no work for a moment and is
not charged for calls that fail meanwhile.

Liveness is judged on the driver's own monotonic clock: each server reports how many
seconds ago (on *its* monotonic clock) it last made progress, and the driver subtracts
that from the moment the reply arrived. No wall clocks are compared across machines, so
clock skew between nodes can neither stall nor wrongly reclaim a server.

One module of about 400 lines because it is one object's rules: every judgement about a
server's health (start, attach, heartbeat, judge, restart, replace) reads and changes the
same ``Server`` records, and split apart they would pass that state around.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from raymail.delivery.journal import JOURNAL_DIR, journal_files, journal_states
from raymail.delivery.server import DeliveryServerActor, ServerStats
from raymail.delivery.shared import CampaignHandle, campaign_lost
from raymail.driver.dispatch import Router, ServerView
from raymail.driver.settle import count
from raymail.errors import DeliveryError
from raymail.hostport import split_host_port
from raymail.routing.table import default_table_dir
from raymail.runtime import DELIVERY_RESOURCE, delivery_slots
from raymail.shaping.fleet import start_state_actor
from raymail.shaping.persist import load_limits
from raymail.spec import CampaignSpec
from raymail.status import ACCEPTED, FAILED

log = logging.getLogger(__name__)
ATTACH_TIMEOUT_S = 300.0  # a shared server started cold on a busy node

FAILURE_LIMIT = 3  # failed calls after which a server gets no more work
_REPLACEMENTS = 3  # delivery servers started to replace dead or stalled ones
_HEARTBEAT_S = 2.0
_RESTART_PAUSE_S = 2.0  # no work for a server Ray is restarting (its node or process died)


@dataclass(slots=True)
class Server:
    """One delivery server as the driver sees it (times on the driver's monotonic clock)."""

    index: int
    name: str
    handle: Any
    source_address: str | None
    inflight: int = 0
    failures: int = 0
    bad_streak: int = 0  # portions in a row in which nothing was accepted
    bad_domains: set[str] = field(default_factory=set)  # the domains of that streak
    last_progress: float = field(default_factory=time.monotonic)
    heartbeat: ray.ObjectRef[Any] | None = None
    heartbeat_sent: float = 0.0
    alive: bool = False  # answered a heartbeat: its actor has started
    unavailable_since: float | None = None  # Ray is restarting it (since this time)
    paused_until: float = 0.0  # no new work before this time (it is restarting)
    backoff: list[dict[str, Any]] = field(default_factory=list)  # its MX hosts in backoff

    @property
    def healthy(self) -> bool:
        return self.failures < FAILURE_LIMIT


def progress_seen(now: float, stats: ServerStats) -> float:
    """When (on the driver's clock ``now``, the moment the reply arrived) the server last
    made progress: ``now`` less the seconds the server itself counted since then."""
    return now - max(stats.since_progress_s, 0.0)


def server_capacity(spec: CampaignSpec) -> int:
    """Portions a server may hold at once. Push mode keeps a few queued on the actor
    beyond its connections, so none waits for the driver's next round; in pull mode the
    server asks for exactly its free connections."""
    if spec.dispatch == "pull":
        return spec.concurrency
    return spec.concurrency + max(2, spec.concurrency // 2)


class Fleet:
    """The delivery servers of one driver and the rules about their health."""

    def __init__(
        self,
        spec: CampaignSpec,
        run_dir: Path,
        router: Router,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.router = router
        self.clock = clock
        self.servers: list[Server] = []
        self.capacity = server_capacity(spec)
        self.epoch = 0  # resumes so far: part of server names, so journals never mix
        self._replacements = 0
        self._journals: dict[str, tuple[tuple[int, ...], pl.DataFrame]] = {}
        self._shaping: Any = None  # the run's shared per-MX state (raymail/shaping/fleet.py)

    # -- life cycle ------------------------------------------------------------------------

    def start(self, count: int) -> None:
        """Start ``count`` more delivery servers (placed on the delivery resource)."""
        spec = self.spec
        if spec.routing.table is None:  # the driver's $RAYMAIL_HOME, not each worker's
            table = str(default_table_dir())
            spec = spec.model_copy(
                update={"routing": spec.routing.model_copy(update={"table": table})}
            )
        use_resource = delivery_slots() > 0
        if not use_resource:
            log.warning(
                "no node offers the '%s' resource; delivery servers go wherever Ray puts "
                "them (see cluster.yaml)",
                DELIVERY_RESOURCE,
            )
        spec = self._shared_shaping(spec, count)
        nameservers = [split_host_port(ns) for ns in spec.nameservers] or None
        journal_dir = str((self.run_dir / JOURNAL_DIR).resolve())
        attaching: list[Any] = []
        for _ in range(count):
            i = len(self.servers)
            # Names differ per resume, so a server's journal is never confused with the
            # journal of the same-numbered server of an earlier driver.
            name = f"ds{i}" if self.epoch == 0 else f"r{self.epoch}-ds{i}"
            addresses = spec.source_addresses
            source = addresses[i % len(addresses)] if addresses else None
            options: dict[str, Any] = {
                "max_concurrency": spec.concurrency + 1,  # + pull mode's loop
                "max_restarts": 3,
                "num_cpus": 0,
            }
            if use_resource:
                options["resources"] = {DELIVERY_RESOURCE: 1}
            if spec.delivery_pool is not None:
                handle: Any = self._attach(
                    i, name, source, nameservers, journal_dir, options, attaching
                )
            else:
                handle = DeliveryServerActor.options(**options).remote(
                    name, spec, source, nameservers, journal_dir, self.epoch
                )
            self.servers.append(Server(i, name, handle, source))
        if attaching:
            # Waited for: a shared server's heartbeat runs in its control group and its
            # deliveries may arrive before an unwaited attach (seen: "not attached").
            ray.get(attaching, timeout=ATTACH_TIMEOUT_S)

    def _shared_shaping(self, spec: CampaignSpec, count: int) -> CampaignSpec:
        """The spec the servers get: naming the run's shaping state actor (started here on
        first use), so per-MX limits hold for all servers together. Servers of a shared
        delivery pool keep their own state (they serve other campaigns too)."""
        if not spec.shaping.enabled or spec.delivery_pool is not None:
            return spec
        name = f"raymail-shaping-{id(self):x}-{time.time_ns():x}"
        if self._shaping is None:
            assert spec.routing.table is not None
            self._shaping = (
                name,
                start_state_actor(
                    name,
                    spec.shaping,
                    spec.concurrency * max(count, spec.delivery_servers),
                    load_limits(Path(spec.routing.table).expanduser()),
                    ready_timeout_s=60.0,
                ),
            )
        shaping = spec.shaping.model_copy(update={"state_actor": self._shaping[0]})
        return spec.model_copy(update={"shaping": shaping})

    def _attach(
        self,
        index: int,
        name: str,
        source: str | None,
        nameservers: list[tuple[str, int]] | None,
        journal_dir: str,
        options: dict[str, Any],
        attaching: list[Any],
    ) -> CampaignHandle:
        """This campaign on the pool's ``index``-th shared server (started if absent)."""
        spec = self.spec
        assert spec.delivery_pool is not None
        del options["max_concurrency"]  # a shared server admits by its gate instead
        key = f"{spec.campaign}:{self.run_dir.resolve()}:{self.epoch}:{name}"
        args = (name, spec, source, nameservers, journal_dir, self.epoch)
        handle = CampaignHandle(spec.delivery_pool, index, spec.concurrency, options, key, args)
        attaching.append(handle.attach())
        return handle

    def reattach(self, server: Server, exc: BaseException) -> bool:
        """Attach again to a shared server that lost this campaign; True if it did.

        The server restarted (Ray re-ran it: it knows no campaign) or died for good (the
        reopen starts it anew, or finds the one another driver started). The same key and
        journal name come back, and the portions the lost server held are settled from its
        journals as for any dead server, so nobody is lost or sent twice. A private server,
        or a call that failed for another reason: False (charged as before).
        """
        handle = server.handle
        if not isinstance(handle, CampaignHandle) or not campaign_lost(exc):
            return False
        try:
            ray.get(handle.reopen(), timeout=ATTACH_TIMEOUT_S)
        except (RayActorError, RayTaskError, GetTimeoutError) as err:
            log.warning("cannot re-attach to shared delivery server %s: %s", server.name, err)
            return False
        log.warning(
            "shared delivery server %s lost this campaign (%s); re-attached",
            server.name,
            type(exc).__name__,
        )
        server.unavailable_since, server.paused_until = None, 0.0
        server.last_progress = self.clock()
        return True

    def stop(self) -> None:
        """Close connections politely where possible, then end every server."""
        handles = [s.handle for s in self.servers]
        if not handles:
            self._stop_shaping()
            return
        try:
            ray.wait([h.shutdown.remote() for h in handles], num_returns=len(handles), timeout=5)
        except Exception:  # a dead actor cannot shut down politely; it is killed below
            log.debug("delivery server shutdown failed", exc_info=True)
        for handle in handles:
            if not isinstance(handle, CampaignHandle):  # shared servers outlive the run
                ray.kill(handle)
        self.servers.clear()
        self._stop_shaping()

    def _stop_shaping(self) -> None:
        if self._shaping is not None:
            with contextlib.suppress(Exception):  # already gone: nothing to end
                ray.kill(self._shaping[1])
            self._shaping = None

    def handles(self) -> dict[str, Any]:
        """Actor name -> handle of the healthy servers (the router probes through them)."""
        return {s.name: s.handle for s in self.servers if s.healthy}

    def healthy(self) -> list[Server]:
        """The servers that may get work; starts a replacement when none is left."""
        healthy = [s for s in self.servers if s.healthy]
        if not healthy and self._replacements < _REPLACEMENTS:
            self._replacements += 1
            log.warning("no healthy delivery server left; starting a replacement")
            self.start(1)
            healthy = [self.servers[-1]]
        if not healthy:
            raise DeliveryError("no healthy delivery server left, and no replacement worked")
        return healthy

    def view(self, server: Server) -> ServerView:
        """What a router may know about ``server``."""
        return ServerView(
            server.index, server.name, server.source_address, server.inflight, self.capacity
        )

    def paused(self, server: Server) -> bool:
        return server.paused_until > self.clock()

    def hand_out(self, server: Server, portions: int) -> None:
        """``server`` takes ``portions`` more; an idle server's stall clock starts now."""
        if server.inflight == 0:
            server.last_progress = self.clock()
        server.inflight += portions

    # -- judging -----------------------------------------------------------------------------

    def returned(self, server: Server, outcomes: pa.Table, domain: str) -> None:
        """A portion came back from ``server``: it progresses; judge what it achieved."""
        server.last_progress = self.clock()
        server.unavailable_since = None
        self._judge(server, outcomes, domain)

    def _judge(self, server: Server, outcomes: pa.Table, domain: str) -> None:
        """Demote a server that keeps failing where the other servers succeed.

        Trouble with one domain only is the router's to handle (it demotes the pair), so
        the whole server is given up only when its streak spans two domains, or is long.
        """
        statuses = outcomes.column("status")
        if count(statuses, ACCEPTED) or count(statuses, FAILED) == outcomes.num_rows:
            server.bad_streak = 0
            server.bad_domains.clear()
            return
        server.bad_streak += 1
        server.bad_domains.add(domain)
        others_fine = any(s.healthy and s.bad_streak == 0 for s in self.servers if s is not server)
        widespread = len(server.bad_domains) >= 2 or server.bad_streak >= 3 * FAILURE_LIMIT
        if server.bad_streak >= FAILURE_LIMIT and widespread and others_fine and server.healthy:
            log.warning(
                "delivery server %s keeps failing (%d portions with nothing accepted) while "
                "others deliver; it gets no more work",
                server.name,
                server.bad_streak,
            )
            server.failures = FAILURE_LIMIT
            self.router.server_gone(server.name)

    def call_failed(self, server: Server, exc: BaseException) -> bool:
        """Charge ``server`` for a failed call unless Ray is restarting it; True if charged.
        A server that is no longer healthy is reported gone to the router."""
        if self.reattach(server, exc):
            return False
        charged = not self._restarting(server, exc)
        if charged:
            server.failures += 1
        if not server.healthy:
            self.router.server_gone(server.name)
        return charged

    def _restarting(self, server: Server, exc: BaseException) -> bool:
        """True while Ray restarts the server (its node was lost, or its process died).

        Every call it had in flight fails at once, and so does each call sent before it is
        back: counted as failures they would retire a server that comes back healthy (all
        of them, when one node hosted them) and fail portions that never reached it. It
        gets no work for a moment instead; after ``stall_timeout_s`` unavailable, its
        failures count again.
        """
        if not isinstance(exc, ActorUnavailableError):
            return False
        now = self.clock()
        if server.unavailable_since is None:
            server.unavailable_since = now
        server.paused_until = now + _RESTART_PAUSE_S
        return now - server.unavailable_since < self.spec.stall_timeout_s

    # -- watching ----------------------------------------------------------------------------

    def watch(self) -> None:
        """Heartbeats through the control group; replace servers that stall with work."""
        now = self.clock()
        timeout = self.spec.stall_timeout_s
        for server in self.servers:
            if not server.healthy:
                continue
            if server.heartbeat is not None:
                ready, _ = ray.wait([server.heartbeat], timeout=0)
                if ready:
                    # a dead actor shows in its calls; Ray restarts it
                    try:
                        self._heard(server, ray.get(ready[0]), now)
                    except (RayActorError, RayTaskError) as exc:
                        self.reattach(server, exc)  # a shared server that lost the campaign
                    server.heartbeat = None
                elif server.alive and now - server.heartbeat_sent > timeout:
                    self.replace(server, "its heartbeat went unanswered")
                    continue
            if server.heartbeat is None and now - server.heartbeat_sent >= _HEARTBEAT_S:
                server.heartbeat = server.handle.heartbeat.remote()
                server.heartbeat_sent = now
            if server.alive and server.inflight and now - server.last_progress > timeout:
                self.replace(server, f"no progress for {timeout:.0f} s")

    def _heard(self, server: Server, stats: ServerStats, now: float) -> None:
        seen = progress_seen(now, stats)
        if not server.alive:  # the stall clock starts once it runs
            server.alive = True
            seen = now
        server.unavailable_since, server.paused_until = None, 0.0  # back
        server.last_progress = max(server.last_progress, seen)
        server.backoff = list(stats.backoff)

    def final_backoff(self, timeout_s: float = 2.0) -> list[dict[str, Any]]:
        """Ask every healthy server once more (bounded): the backoff at the run's end."""
        asked = {s.handle.heartbeat.remote(): s for s in self.servers if s.healthy}
        if asked:  # one wait for all of them: the run's end waits timeout_s at most
            ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=timeout_s)
            for ref in ready:
                with contextlib.suppress(RayActorError, RayTaskError):
                    asked[ref].backoff = list(ray.get(ref).backoff)
        return self.backoff()

    def backoff(self) -> list[dict[str, Any]]:
        """MX hosts in backoff on any server (the latest word per MX: fewest connections)."""
        merged: dict[str, dict[str, Any]] = {}
        for server in self.servers:
            for entry in server.backoff:
                mx = str(entry["mx_host"])
                if mx not in merged or entry["connections"] < merged[mx]["connections"]:
                    merged[mx] = entry
        return [merged[mx] for mx in sorted(merged)]

    def replace(self, server: Server, why: str) -> None:
        """Stop a stalled server; its portions come back as failed calls."""
        log.warning("delivery server %s stalled (%s); reassigning its portions", server.name, why)
        server.failures = FAILURE_LIMIT
        self.router.server_gone(server.name)
        if isinstance(server.handle, CampaignHandle):
            # Shared: Ray restarts it for the others (whose calls fail and are settled from
            # their journals); this campaign gives it up.
            ray.kill(server.handle.actor, no_restart=False)
            return
        ray.kill(server.handle, no_restart=True)

    def journal(self, server: str) -> pl.DataFrame:
        """A server's journal states, re-read only when its files changed."""
        files = journal_files(self.run_dir, server)
        key = tuple(f.stat().st_size for f in files)
        cached = self._journals.get(server)
        if cached is None or cached[0] != key:
            cached = (key, journal_states(files))
            self._journals[server] = cached
        return cached[1]
