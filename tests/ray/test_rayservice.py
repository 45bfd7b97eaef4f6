"""examples/ray/rayservice.yaml is a well-formed KubeRay RayService whose Serve config Ray Serve
accepts and whose application builds (not deployed: no Kubernetes here)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from cortexstream_ray.deployment import RayServeOptions  # conftest puts examples/ray on the path

MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "ray" / "rayservice.yaml"
REQUIREMENTS = MANIFEST.parent / "requirements.txt"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def serve_config(manifest) -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_it_is_a_rayservice(manifest):
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayService"
    assert manifest["metadata"]["name"]
    assert isinstance(manifest["spec"]["serveConfigV2"], str), "serveConfigV2 is a YAML string"


def test_the_serve_config_imports_and_builds_the_application(serve_config):
    (application,) = serve_config.applications
    assert application.route_prefix == "/"
    module_name, builder_name = application.import_path.split(":")
    builder = getattr(importlib.import_module(module_name), builder_name)
    options = RayServeOptions.from_args(application.args)
    assert options.min_replicas <= options.max_replicas
    assert builder(application.args) is not None
    assert serve_config.http_options.port == 8000


def test_the_cluster_runs_the_pinned_ray_with_room_for_an_engine_replica(manifest, serve_config):
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert f"ray[serve]=={ray.__version__}" in REQUIREMENTS.read_text()

    head = cluster["headGroupSpec"]
    assert all(isinstance(value, str) for value in head["rayStartParams"].values()), "rayStartParams are strings"
    head_ports = {port["containerPort"] for port in containers(head)[0]["ports"]}
    assert serve_config.http_options.port in head_ports

    options = RayServeOptions.from_args(serve_config.applications[0].args)
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(value, str) for value in group["rayStartParams"].values())
        assert float(group["rayStartParams"]["num-cpus"]) >= options.replica_cpus
        (container,) = containers(group)
        assert container["image"] and container["name"]
        assert float(container["resources"]["limits"]["cpu"]) >= options.replica_cpus
        env = {item["name"]: item["value"] for item in container["env"]}
        assert "PYTHONPATH" in env, "the workers import cortexstream_ray"
