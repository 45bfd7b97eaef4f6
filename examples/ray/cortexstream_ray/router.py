"""A Ray Serve request router that keeps requests sharing a prompt prefix on one replica.

The engine's prefix cache only helps a request that lands on the replica already holding its
prefix's KV blocks. This router remembers, for each prefix key it routed (`prefix.RoutingHint`),
the replica that took it, and sends a request to the replica that took its longest known prefix,
unless that replica is busy; a new prefix, or a busy owner, goes to the least-loaded replica.

Load is measured twice: Serve's live count of requests in flight on the replica
(`replica_queue_len_cache`: what the replica reported when it last accepted a request, plus and
minus what this router sent and saw finish since), which for `n=1` requests is the engine's
running plus waiting sequences; and the engine's own queue depth and running sequences, which
each replica reports through Serve's routing stats (`EngineReplica.record_routing_stats`, every
`request_routing_stats_period_s`). Ray 2.60's controller collects those stats on time but
passes them to routers only when the replica set changes, so they are stamped with the time
they were taken and ignored once older than `stats_max_age_s`: a stale "busy" must not keep a
replica out of work. A replica is busy when its (fresh) engine stats show requests waiting for a
running slot, or it has `busy_in_flight` requests in flight. Each router (one per gateway replica) keeps its own table: with several gateways, a prefix
may be owned by a different replica in each (docs/ray.md).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from .prefix import RoutingHint

log = logging.getLogger("ray.serve")

#: Default `busy_in_flight`: the engine's default number of running sequences.
DEFAULT_BUSY_IN_FLIGHT = 32
#: Default `max_prefixes`: prefix keys remembered (least recently routed forgotten first).
DEFAULT_MAX_PREFIXES = 100_000
#: Default `stats_max_age_s`: engine stats older than this are ignored.
DEFAULT_STATS_MAX_AGE_S = 3.0
#: The routing stats field holding when the engine stats were taken (seconds since the epoch).
STATS_TIME = "taken_at"


def routing_hint_of(pending_request: PendingRequest | None) -> RoutingHint:
    """The hint the gateway passed with the request (none for other callers)."""
    if pending_request is None:
        return RoutingHint()
    for value in (*pending_request.args, *pending_request.kwargs.values()):
        if isinstance(value, RoutingHint):
            return value
    return RoutingHint()


class PrefixAwareRouter(RequestRouter):
    """Prefix owner first, then least loaded (see the module documentation)."""

    def initialize_state(self, busy_in_flight: int = DEFAULT_BUSY_IN_FLIGHT,
                         max_prefixes: int = DEFAULT_MAX_PREFIXES,
                         stats_max_age_s: float = DEFAULT_STATS_MAX_AGE_S, **_: Any) -> None:
        if busy_in_flight < 1 or max_prefixes < 1 or not stats_max_age_s > 0:
            raise ValueError(f"busy_in_flight and max_prefixes must be at least 1 and stats_max_age_s > 0, "
                             f"got {busy_in_flight}, {max_prefixes} and {stats_max_age_s}")
        self._busy_in_flight = busy_in_flight
        self._max_prefixes = max_prefixes
        self._stats_max_age_s = stats_max_age_s
        self._owners: OrderedDict[str, ReplicaID] = OrderedDict()
        # When each replica last took a new prefix (a running count): among equally loaded
        # replicas the one that waited longest takes the next, so distinct prompts alternate.
        self._new_prefix_count = 0
        self._last_new_prefix: dict[ReplicaID, int] = {}

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        hint = routing_hint_of(pending_request)
        by_load = sorted(candidate_replicas, key=self._load_order)
        pinned = next((r for r in candidate_replicas if r.replica_id.unique_id == hint.replica), None)
        if pinned is not None:
            return [[pinned]]
        owner = self._owner(hint, candidate_replicas)
        if owner is not None and not self._busy(owner):
            return [[owner], [r for r in by_load if r is not owner]]
        # One rank each, least loaded first: Serve tries the next when one refuses.
        return [[replica] for replica in by_load]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        hint = routing_hint_of(pending_request)
        if not hint.prefix:
            return
        if self._owners.get(hint.prefix[0]) != replica_id:
            self._new_prefix_count += 1
            self._last_new_prefix[replica_id] = self._new_prefix_count
        for key in hint.prefix:
            self._owners[key] = replica_id
            self._owners.move_to_end(key)
        while len(self._owners) > self._max_prefixes:
            self._owners.popitem(last=False)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._forget(replica_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        alive = {r.replica_id for r in replicas}
        for gone in [r for r in self._last_new_prefix if r not in alive]:
            self._forget(gone)

    def _forget(self, replica_id: ReplicaID) -> None:
        """Its prefixes go with a dead replica's KV cache."""
        self._last_new_prefix.pop(replica_id, None)
        for key in [k for k, owner in self._owners.items() if owner == replica_id]:
            del self._owners[key]

    def _owner(self, hint: RoutingHint, candidates: list[RunningReplica]) -> RunningReplica | None:
        """The candidate that took the longest known prefix of `hint`."""
        by_id = {r.replica_id: r for r in candidates}
        for key in reversed(hint.prefix):
            owner = by_id.get(self._owners.get(key))
            if owner is not None:
                return owner
        return None

    def _in_flight(self, replica: RunningReplica) -> int:
        return self._replica_queue_len_cache.get(replica.replica_id) or 0

    def _engine_stat(self, replica: RunningReplica, name: str) -> int:
        """One of the replica's engine stats; 0 when they are missing or stale."""
        stats = replica.routing_stats or {}
        taken_at = stats.get(STATS_TIME)
        if not isinstance(taken_at, (int, float)) or time.time() - taken_at > self._stats_max_age_s:
            return 0
        value = stats.get(name, 0)
        return int(value) if isinstance(value, (int, float)) else 0

    def _busy(self, replica: RunningReplica) -> bool:
        return self._engine_stat(replica, "queue_depth") > 0 or self._in_flight(replica) >= self._busy_in_flight

    def _load_order(self, replica: RunningReplica) -> tuple:
        """Least loaded first: engine queue (a saturated engine), then requests in flight, then
        the longest since it took a new prefix (spreads distinct prompts), then a stable id.
        The engine's running sequences are not compared: a snapshot up to `stats_max_age_s` old
        is too coarse to order idle replicas (it would send a burst of short requests to the one
        that looked idle when it was taken); requests in flight count them live."""
        return (self._engine_stat(replica, "queue_depth"), self._in_flight(replica),
                self._last_new_prefix.get(replica.replica_id, 0), replica.replica_id.unique_id)
