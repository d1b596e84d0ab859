"""cluster/: every launcher config is valid for Ray's own schema, keeps token auth on and its dashboard on
localhost; the KubeRay RayJob has what the operator needs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHERS = ["aws-gpu.yaml", "gcp-gpu.yaml"]


def ray_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def check_launcher(config: dict) -> None:
    jsonschema.validate(config, ray_schema())


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_configs_are_valid_and_secure(name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    check_launcher(config)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    for cmd in (c for c in starts if "ray start" in c):
        assert "RAY_AUTH_MODE=token" in cmd, cmd  # token auth on every node
    head = next(c for c in config["head_start_ray_commands"] if "--head" in c)
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in (CLUSTER / name).read_text()
    assert "~/.ray/auth_token" in config["file_mounts"]
    types = config["available_node_types"]
    workers = [t for n, t in types.items() if n != config["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] == 1 for t in workers)  # one replica per GPU node
    assert types[config["head_node_type"]]["resources"]["GPU"] == 0


def test_the_schema_check_catches_a_broken_config():
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    for broken in (lambda c: c.pop("provider"), lambda c: c.update(max_workrs=3),
                   lambda c: c["auth"].update(ssh_usr="x")):
        c = copy.deepcopy(config)
        broken(c)
        with pytest.raises(jsonschema.ValidationError):
            check_launcher(c)


def test_kuberay_rayjob_has_what_the_operator_needs():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert "rayif explain" in spec["entrypoint"] and "--gpu" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    major, minor, _ = (int(x) for x in cluster["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)  # token auth needs Ray 2.52 and KubeRay 1.5.1
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["template"]["spec"]["containers"][0]["image"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["replicas"] >= 1 and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] and container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "Dockerfile" in (CLUSTER / "kuberay-rayjob.yaml").read_text() and (CLUSTER / "Dockerfile").exists()
