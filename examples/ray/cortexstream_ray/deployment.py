"""The Serve application: `Gateway` (HTTP ingress) in front of `EngineReplica`s.

    serve run cortexstream_ray.deployment:app model=smollm2 min_replicas=1 max_replicas=4

Why two deployments: Serve's HTTP proxy hands a request to its ingress replica before reading
the body (the router sees only the URL and headers), and routing on the prompt needs the body.
So the gateway, which holds no engine, reads the body, computes its prefix key, and calls the
engine replicas through a handle whose router (`PrefixAwareRouter`) sees that key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from ray.exceptions import RayError
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortexstream.server.app import create_app
from cortexstream.server.errors import RETRY_AFTER_SECONDS, ApiError
from cortexstream.server.state import EngineOptions, ServerConfig
from cortexstream.server.streaming import CancellingStreamingResponse, ndjson_line, sse_event

from .prefix import PIN_HEADER, RoutingHint, routing_hint
from .relay import AsgiRelay, forwarded_scope
from .router import DEFAULT_BUSY_IN_FLIGHT, STATS_TIME, PrefixAwareRouter

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class RayServeOptions:
    """Everything the application is built from (`serve run ... name=value`, or a dict)."""

    model: str = "smollm2"
    embedding_model: str | None = None
    api_key: str | None = None
    engine: dict = field(default_factory=dict)
    """`EngineOptions` fields (max_running, kv_cache_tokens, ...); threads come from replica_cpus."""
    replica_cpus: float = 1.0
    """CPUs Ray reserves per engine replica; the engine runs that many threads (at least 1)."""
    num_replicas: int | None = None
    """A fixed number of engine replicas; None scales between min_replicas and max_replicas."""
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 16.0
    """Autoscaling target per replica: requests in flight, i.e. engine running + waiting sequences."""
    max_ongoing_requests: int = 64
    """Requests Serve sends one replica at most; the rest wait in the router."""
    busy_in_flight: int = DEFAULT_BUSY_IN_FLIGHT
    """A prefix's replica with this many requests in flight is busy: the request goes elsewhere."""
    routing_stats_period_s: float = 1.0
    """How often each replica reports its engine's queue depth and running sequences."""
    ready_timeout_s: float = 600.0
    """Seconds a replica may take to load its model before Serve counts it failed."""

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> RayServeOptions:
        """Options from `serve run` arguments (strings) or a dict; unknown names are an error."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
        values = {name: _parse(name, known[name].type, value) for name, value in args.items()}
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")

        for name in ("replica_cpus", "num_replicas", "max_replicas", "target_ongoing_requests",
                     "max_ongoing_requests", "busy_in_flight", "routing_stats_period_s", "ready_timeout_s"):
            positive(name)
        if self.min_replicas < 0 or self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas must be in 0..max_replicas ({self.max_replicas}), got {self.min_replicas}")
        engine_fields = {f.name for f in dataclasses.fields(EngineOptions)} - {"threads"}
        unknown = sorted(set(self.engine) - engine_fields)
        if unknown:
            raise ValueError(f"engine: unknown or reserved field(s) {', '.join(unknown)} "
                             "(threads follow replica_cpus)")

    def server_config(self, threads: int) -> ServerConfig:
        """The REST server's configuration for one replica running `threads` threads: what the
        command line `cortexstream-server --model M --embedding-model E --threads T` gives."""
        engine = EngineOptions(**self.engine, threads=threads)
        try:
            # The server on a model registry reads its models from the same command line.
            from cortexstream.server.served import command_line_models
        except ImportError:
            # The server of one engine (before the registry): one model and its embedding model.
            return ServerConfig(model=self.model, embedding_model=self.embedding_model, api_key=self.api_key,
                                engine=engine)
        return ServerConfig(models=command_line_models([self.model], self.embedding_model, engine),
                            api_key=self.api_key, engine=engine)


def _parse(name: str, annotation: str, value: Any) -> Any:
    """`serve run` passes strings: numbers, JSON objects and "none" (None) are converted, except
    `embedding_model=none`, which is the server's own word for "no embedding model"."""
    if not isinstance(value, str):
        return value
    if value.lower() == "none" and "None" in annotation and name != "embedding_model":
        return None
    try:
        if annotation.startswith("int"):
            return int(value)
        if annotation.startswith("float"):
            return float(value)
        if annotation == "dict":
            return json.loads(value)
    except ValueError as error:
        raise ValueError(f"{name}: cannot read {value!r} as {annotation}: {error}") from None
    return value


def replica_threads() -> int:
    """The CPUs Ray assigned this replica, as engine threads (at least one)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    return max(1, int(cpus))


#: The engine gauges the router reads (Prometheus names on /metrics, without the prefix).
LOAD_GAUGES = ("queue_depth", "running")


async def engine_load(relay: AsgiRelay, api_key: str | None) -> dict[str, int]:
    """The engine's queue depth and running sequences, from the app's /metrics (summed over
    models, should the app serve several)."""
    headers = [(b"authorization", f"Bearer {api_key}".encode())] if api_key else []
    status, body = await relay.call("GET", "/metrics", headers)
    if status != 200:
        return {}
    load = dict.fromkeys(LOAD_GAUGES, 0)
    for family in text_string_to_metric_families(body.decode()):
        name = family.name.removeprefix("cortexstream_")
        if name in load:
            load[name] += int(sum(sample.value for sample in family.samples))
    return load


@serve.deployment(name="EngineReplica")
class EngineReplica:
    """One engine serving the REST app; the gateway forwards requests to `forward`."""

    async def __init__(self, options: RayServeOptions) -> None:
        self._options = options
        self._relay = AsgiRelay(create_app(options.server_config(replica_threads())))
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        await self._relay.start(options.ready_timeout_s)
        log.info("engine replica %s serving %s", self._replica_id, options.model)

    async def forward(self, scope: dict, body: bytes, hint: RoutingHint):
        """The app's answer to one request as ASGI messages; the response names this replica."""
        replica_header = [(PIN_HEADER.encode(), self._replica_id.encode())]
        async for message in self._relay.stream(scope, body, replica_header):
            yield message

    async def record_routing_stats(self) -> dict[str, float]:
        """The engine's load for the router, read from the app's /metrics, and when."""
        return {**await engine_load(self._relay, self._options.api_key), STATS_TIME: time.time()}

    async def check_health(self) -> None:
        status, body = await self._relay.call("GET", "/health")
        if status != 200:
            raise RuntimeError(f"engine replica {self._replica_id} is unhealthy: {body.decode(errors='replace')}")

    async def __del__(self) -> None:
        await self._relay.close()


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class Gateway:
    """The HTTP ingress: forwards every request to an engine replica chosen on its prompt."""

    def __init__(self, engines: DeploymentHandle) -> None:
        self._engines = engines.options(method_name="forward", stream=True)

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        hint = routing_hint(request.url.path, body, request.headers.items())
        messages = self._engines.remote(forwarded_scope(request.scope), body, hint)
        return await relay_response(request.url.path, messages)


#: Response headers Serve's proxy sets itself: `x-request-id` is the request's id, which the proxy
#: also put in the request's headers, so the app's copy would only repeat it.
PROXY_HEADERS = frozenset({b"x-request-id"})


def replica_lost(error: BaseException) -> ApiError:
    return ApiError(503, f"the engine replica serving this request failed: {type(error).__name__}",
                    code="replica_lost", retry_after=RETRY_AFTER_SECONDS)


def _is_ollama(path: str) -> bool:
    return path.startswith("/api/")


async def relay_response(path: str, messages: DeploymentResponseGenerator) -> Response:
    """The replica's response, streamed through; a replica lost before it answered is a 503."""
    try:
        start = await messages.__anext__()
    except (RayError, StopAsyncIteration) as error:
        messages.cancel()
        failure = replica_lost(error)
        body = failure.ollama_body() if _is_ollama(path) else failure.openai_body()
        return JSONResponse(body, status_code=failure.status, headers={"Retry-After": str(failure.retry_after)})
    response = CancellingStreamingResponse(_bodies(path, start, messages), status_code=start["status"])
    response.raw_headers = [(name, value) for name, value in start.get("headers", [])
                            if name.lower() not in PROXY_HEADERS]
    return response


async def _bodies(path: str, start: dict, messages: DeploymentResponseGenerator):
    """The body chunks; a replica lost midway ends a stream with the API's error event (the
    OpenAI and Ollama clients raise it), and any other response by breaking the connection."""
    content_type = dict(start.get("headers", [])).get(b"content-type", b"").decode()
    try:
        async for message in messages:
            yield message.get("body", b"")
    except RayError as error:
        failure = replica_lost(error)
        log.warning("engine replica lost midway through %s: %s", path, error)
        if content_type.startswith("text/event-stream"):
            yield sse_event(failure.openai_body())
        elif content_type.startswith("application/x-ndjson"):
            yield ndjson_line(failure.ollama_body())
        else:
            raise
    finally:
        # The client left (or the stream ended): stop the replica's work at once.
        messages.cancel()


def build_app(options: RayServeOptions) -> serve.Application:
    """The application: a gateway bound to engine replicas routed by prefix."""
    router = RequestRouterConfig(
        request_router_class=PrefixAwareRouter,
        request_router_kwargs={"busy_in_flight": options.busy_in_flight,
                               "stats_max_age_s": 3 * options.routing_stats_period_s},
        request_routing_stats_period_s=options.routing_stats_period_s,
        request_routing_stats_timeout_s=max(5.0, options.routing_stats_period_s),
    )
    engines = EngineReplica.options(
        ray_actor_options={"num_cpus": options.replica_cpus},
        max_ongoing_requests=options.max_ongoing_requests,
        request_router_config=router,
        **scaling(options),
    ).bind(options)
    return Gateway.bind(engines)


def scaling(options: RayServeOptions) -> dict[str, Any]:
    """A fixed replica count, or autoscaling on requests in flight per replica: each request
    (n=1) is one engine sequence, running or waiting, so the target is a queue depth plus
    running sequences per replica."""
    if options.num_replicas is not None:
        return {"num_replicas": options.num_replicas}
    return {"autoscaling_config": AutoscalingConfig(
        min_replicas=options.min_replicas, max_replicas=options.max_replicas,
        target_ongoing_requests=options.target_ongoing_requests,
        upscale_delay_s=10.0, downscale_delay_s=120.0)}


def app(args: dict[str, str]) -> serve.Application:
    """The builder `serve run cortexstream_ray.deployment:app name=value ...` calls."""
    return build_app(RayServeOptions.from_args(args))
