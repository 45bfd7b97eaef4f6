"""A Ray Serve request router that keeps requests sharing a prompt prefix on one replica.

The engine's prefix cache only helps a request that lands on the replica already holding its
prefix's KV blocks. This router remembers, for each prefix key it routed (`prefix.RoutingHint`),
the replica that took it, and sends a request to the replica that took its longest known prefix,
unless that replica is busy; a new prefix, or a busy owner, goes to the least-loaded replica.

Load is measured twice: the engine's own queue depth and running sequences, which each replica
reports through Serve's routing stats (`EngineReplica.record_routing_stats`, refreshed every
`request_routing_stats_period_s`), and Serve's live count of requests this router has in flight
on the replica (`replica_queue_len_cache`), which moves at once. A replica is busy when its
engine has requests waiting for a running slot, or this router has `busy_in_flight` requests on
it. Each router (one per gateway replica) keeps its own table: with several gateways, a prefix
may be owned by a different replica in each (docs/ray.md).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from .prefix import RoutingHint

log = logging.getLogger("ray.serve")

#: Default `busy_in_flight`: the engine's default number of running sequences.
DEFAULT_BUSY_IN_FLIGHT = 32
#: Default `max_prefixes`: prefix keys remembered (least recently routed forgotten first).
DEFAULT_MAX_PREFIXES = 100_000


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
                         max_prefixes: int = DEFAULT_MAX_PREFIXES, **_: Any) -> None:
        if busy_in_flight < 1 or max_prefixes < 1:
            raise ValueError(f"busy_in_flight and max_prefixes must be at least 1, "
                             f"got {busy_in_flight} and {max_prefixes}")
        self._busy_in_flight = busy_in_flight
        self._max_prefixes = max_prefixes
        self._owners: OrderedDict[str, ReplicaID] = OrderedDict()
        # New prefixes each replica took: the tie-break that spreads distinct prompts.
        self._prefixes_taken: Counter[ReplicaID] = Counter()

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
            self._prefixes_taken[replica_id] += 1
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
        for gone in [r for r in self._prefixes_taken if r not in alive]:
            self._forget(gone)

    def _forget(self, replica_id: ReplicaID) -> None:
        """Its prefixes go with a dead replica's KV cache."""
        self._prefixes_taken.pop(replica_id, None)
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

    @staticmethod
    def _engine_stat(replica: RunningReplica, name: str) -> int:
        stats = replica.routing_stats or {}
        value = stats.get(name, 0)
        return int(value) if isinstance(value, (int, float)) else 0

    def _busy(self, replica: RunningReplica) -> bool:
        return self._engine_stat(replica, "queue_depth") > 0 or self._in_flight(replica) >= self._busy_in_flight

    def _load_order(self, replica: RunningReplica) -> tuple:
        """Least loaded first: engine queue, then requests in flight, then engine running
        sequences, then fewest prefixes taken (spreads distinct prompts), then a stable id."""
        return (self._engine_stat(replica, "queue_depth"), self._in_flight(replica),
                self._engine_stat(replica, "running"), self._prefixes_taken[replica.replica_id],
                replica.replica_id.unique_id)
