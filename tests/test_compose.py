"""docker-compose.yml, its local override and the Dockerfile agree with each other and
with the code (targets, commands, environment variables). Building and running them
needs a Docker engine: ``make containers`` does that, outside the test suite."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.settings import Settings
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
TARGETS = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE, flags=re.M | re.I))
KNOWN_ENV = {
    f"YOLOV1_{name.upper()}" for name in (*Settings.model_fields, *WorkerSettings.model_fields)
}


def test_build_targets_exist():
    for name, svc in COMPOSE["services"].items():
        if "build" in svc:
            assert svc["build"]["target"] in TARGETS, name
    assert {"api", "worker", "api-gpu", "worker-gpu"} <= TARGETS


def test_environment_variables_are_settings():
    local = yaml.safe_load((ROOT / "docker-compose.local.yml").read_text())
    for name, svc in [*COMPOSE["services"].items(), *local["services"].items()]:
        for var in svc.get("environment", {}):
            assert var in KNOWN_ENV, f"{name}: {var} is not a setting"
    for var in re.findall(r"\b(YOLOV1_[A-Z_]+)=", DOCKERFILE):
        assert var in KNOWN_ENV, var


def test_commands_point_at_real_modules():
    assert 'CMD ["python", "-m", "app"]' in DOCKERFILE
    assert (ROOT / "app" / "__main__.py").exists()
    assert "worker.celery_app" in DOCKERFILE and (ROOT / "worker" / "celery_app.py").exists()
    from worker.celery_app import QUEUE

    assert f"-Q {QUEUE}" in DOCKERFILE


def test_api_image_has_no_torch_and_worker_has_it():
    stages = re.split(r"^FROM ", DOCKERFILE, flags=re.M)
    by_target = {re.match(r"\S+\s+AS\s+(\S+)", s, re.I).group(1): s for s in stages[1:]}
    for t in ("api", "api-gpu"):
        assert "torch" not in by_target[t]
    assert ".[api,worker,cpu]" in by_target["api"]
    assert ".[api,worker,gpu]" in by_target["api-gpu"]
    for t in ("worker", "worker-gpu"):
        assert "torch==2.13.0" in by_target[t]


def test_ports_are_published_by_default_and_not_on_host_networking():
    default = yaml.safe_load((ROOT / "docker-compose.override.yml").read_text())["services"]
    assert default["api"]["ports"] == ["8000:8000", "8001:8001"]  # HTTP, KServe gRPC
    api_env = COMPOSE["services"]["api"]["environment"]
    assert (api_env["YOLOV1_PORT"], api_env["YOLOV1_GRPC_PORT"]) == ("8000", "8001")
    local = yaml.safe_load((ROOT / "docker-compose.local.yml").read_text())["services"]
    for name, svc in local.items():
        assert svc["network_mode"] == "host", name
        assert "ports" not in svc and "ports" not in COMPOSE["services"][name], name


def test_services_scale_persist_and_share_volumes():
    svc = COMPOSE["services"]
    assert "--appendonly" in svc["redis"]["command"]
    worker = svc["worker"]
    assert "ports" not in worker and "container_name" not in worker  # --scale worker=N
    for name in ("api", "worker", "api-gpu", "worker-gpu"):
        mounts = {v.split(":")[1] for v in svc[name]["volumes"]}
        env = svc[name]["environment"]
        assert env["YOLOV1_MODEL_STORE"] in mounts and env["YOLOV1_DATA_ROOT"] in mounts
        assert env["YOLOV1_REDIS_URL"].startswith("redis://redis:")
        assert env["YOLOV1_API_KEYS"]
    for name in ("api-gpu", "worker-gpu"):
        devices = svc[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
