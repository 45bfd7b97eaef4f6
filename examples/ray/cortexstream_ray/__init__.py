"""cortexstream's REST server as Ray Serve replicas (see docs/ray.md).

`deployment.build_app(...)` (or the `app` builder `serve run cortexstream_ray.deployment:app`
uses) gives a Serve application of two deployments:

* `Gateway`, the HTTP ingress: reads each request's body once, computes its prefix routing key
  (`prefix.py`) and forwards the request to an engine replica, relaying the answer (streaming
  included) and turning a replica that dies mid-answer into a clean error.
* `EngineReplica`: one engine per replica (threads = the replica's CPUs) serving the same FastAPI
  app `cortexstream-server` serves (`create_app`), driven in-process over ASGI (`relay.py`).

Requests reach `EngineReplica` through `PrefixAwareRouter` (`router.py`): the replica that served
the longest prefix of the prompt, unless it is busy, then the least-loaded one.
"""
