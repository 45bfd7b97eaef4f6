"""The request router's choices on stand-in replicas (no cluster): the prefix owner first, the
least-loaded replica when the owner is busy or the prefix is new, stale engine stats ignored,
a dead replica's prefixes forgotten, a pinned replica honoured."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID
from ray.serve.request_router import PendingRequest, ReplicaID

from cortexstream_ray.prefix import RoutingHint  # conftest puts examples/ray on the path
from cortexstream_ray.router import STATS_TIME, PrefixAwareRouter

DEPLOYMENT = DeploymentID(name="EngineReplica", app_name="cortexstream")
SHARED = ("a1", "a2", "a3")


def replica(name: str, **engine_stats: float) -> SimpleNamespace:
    return SimpleNamespace(replica_id=ReplicaID(unique_id=name, deployment_id=DEPLOYMENT),
                           routing_stats={**engine_stats, STATS_TIME: time.time()} if engine_stats else {})


def request(hint: RoutingHint) -> PendingRequest:
    return SimpleNamespace(args=[{"path": "/"}, b"", hint], kwargs={})


@pytest.fixture
def router() -> PrefixAwareRouter:
    router = PrefixAwareRouter(DEPLOYMENT, DeploymentHandleSource.UNKNOWN, use_replica_queue_len_cache=True)
    router.initialize_state(busy_in_flight=4)
    return router


def route(router: PrefixAwareRouter, replicas: list, hint: RoutingHint) -> list[list[str]]:
    """The ranks `choose_replicas` returns, by name; the first is recorded as routed."""
    pending = request(hint)
    ranks = asyncio.run(router.choose_replicas(replicas, pending))
    router.on_request_routed(pending, ranks[0][0].replica_id, None)
    return [[r.replica_id.unique_id for r in rank] for rank in ranks]


def test_a_known_prefix_goes_to_its_owner_first(router):
    a, b = replica("a"), replica("b")
    first = route(router, [a, b], RoutingHint(prefix=SHARED))[0][0]
    # The owner stays first however the candidates are ordered, and a longer prompt with the
    # same leading blocks follows it.
    assert route(router, [b, a], RoutingHint(prefix=SHARED))[0] == [first]
    assert route(router, [b, a], RoutingHint(prefix=(*SHARED[:2], "other")))[0] == [first]


def test_new_prefixes_alternate_between_idle_replicas(router):
    a, b = replica("a"), replica("b")
    firsts = [route(router, [a, b], RoutingHint(prefix=(f"p{i}",)))[0][0] for i in range(4)]
    assert firsts == ["a", "b", "a", "b"]


def test_a_busy_owner_falls_back_to_the_least_loaded(router):
    a, b = replica("a"), replica("b")
    assert route(router, [a, b], RoutingHint(prefix=SHARED))[0] == ["a"]
    busy_a, idle_b = replica("a", queue_depth=3, running=32), replica("b", queue_depth=0, running=1)
    assert route(router, [busy_a, idle_b], RoutingHint(prefix=SHARED)) == [["b"], ["a"]]


def test_requests_in_flight_make_an_owner_busy(router):
    a, b = replica("a"), replica("b")
    assert route(router, [a, b], RoutingHint(prefix=SHARED))[0] == ["a"]
    router._replica_queue_len_cache.update(a.replica_id, 4)
    assert route(router, [a, b], RoutingHint(prefix=SHARED))[0] == ["b"]


def test_stale_engine_stats_are_ignored(router):
    a, b = replica("a"), replica("b")
    assert route(router, [a, b], RoutingHint(prefix=SHARED))[0] == ["a"]
    stale_a = replica("a", queue_depth=3)
    stale_a.routing_stats[STATS_TIME] -= 60
    assert route(router, [stale_a, b], RoutingHint(prefix=SHARED))[0] == ["a"]


def test_a_dead_replicas_prefixes_are_forgotten(router):
    a, b = replica("a"), replica("b")
    assert route(router, [a, b], RoutingHint(prefix=SHARED))[0] == ["a"]
    router.on_replica_actor_died(a.replica_id)
    c = replica("c")
    assert route(router, [b, c], RoutingHint(prefix=SHARED))[0][0] in {"b", "c"}
    assert route(router, [a, b, c], RoutingHint(prefix=SHARED))[0] != ["a"]


def test_a_pinned_replica_is_the_only_choice(router):
    a, b = replica("a"), replica("b")
    route(router, [a, b], RoutingHint(prefix=SHARED))
    assert route(router, [a, b], RoutingHint(prefix=SHARED, replica="b")) == [["b"]]


def test_a_request_without_a_prompt_goes_to_the_least_loaded(router):
    a, b = replica("a", queue_depth=2), replica("b")
    assert route(router, [a, b], RoutingHint())[0] == ["b"]
