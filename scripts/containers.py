"""``make containers``: build the images, run the compose stack, check it, tear it down.

Needs a Docker engine (``dockerd``) and ``docker-compose`` (Debian's ``docker.io`` and
``docker-compose``), and debootstrap where the local base image is not built yet. No
registry is needed: the Python base is a Debian rootfs made with debootstrap and
imported, Redis is Debian's package on it, and torch's CPU wheel is served from this
machine (``/opt/wheels`` or ``TORCH_WHEELS``) when it is there. Every container, builds
included, uses host networking: all traffic stays on loopback.

Each step prints its time; the end prints the image sizes. Exit status 0: all passed.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".run" / "containers"
BASE = "yolov1/base-python:3.11"
IMAGES = {"redis": "yolov1/redis:local", "api": "yolov1/api:local", "worker": "yolov1/worker:local"}
PROJECT = "yolov1local"
API_PORT = int(os.environ.get("YOLOV1_LOCAL_API_PORT", "18000"))
GRPC_PORT = int(os.environ.get("YOLOV1_LOCAL_GRPC_PORT", "18001"))
REDIS_PORT = int(os.environ.get("YOLOV1_LOCAL_REDIS_PORT", "6390"))
KEY = "containers-key"
URL = f"http://127.0.0.1:{API_PORT}"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENV = {
    **os.environ,
    "DOCKER_BUILDKIT": "0",  # the classic builder: no frontend image to pull
    "COMPOSE_DOCKER_CLI_BUILD": "0",
    "YOLOV1_API_KEYS": KEY,
    "YOLOV1_LOCAL_API_PORT": str(API_PORT),
    "YOLOV1_LOCAL_GRPC_PORT": str(GRPC_PORT),
    "YOLOV1_LOCAL_REDIS_PORT": str(REDIS_PORT),
}
timings: list[tuple[str, float]] = []


def step(name: str):
    """Print and record how long the wrapped step took; stop at the first failure."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            print(f"--> {name}", flush=True)
            t0 = time.monotonic()
            out = fn(*args, **kwargs)
            dt = time.monotonic() - t0
            timings.append((name, dt))
            print(f"    ok in {dt:.1f} s", flush=True)
            return out

        return run

    return wrap


def sh(*argv: str, check: bool = True, quiet: bool = False, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, env=ENV, text=True, capture_output=True, **kw)
    if check and r.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(argv)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    if not quiet and r.stdout.strip():
        print("    " + r.stdout.strip().replace("\n", "\n    ")[-1500:])
    return r


def compose(*args: str, **kw) -> subprocess.CompletedProcess:
    files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "docker-compose.local.yml")]
    return sh("docker-compose", "-p", PROJECT, *files, *args, **kw)


def wait(what: str, pred, timeout: float = 180, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = pred()
            if got:
                return got
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: {what} within {timeout:.0f} s")
        time.sleep(every)


# --- images ----------------------------------------------------------------------------
def have_image(name: str) -> bool:
    return sh("docker", "image", "inspect", name, check=False, quiet=True).returncode == 0


@step("base image: Debian bookworm + Python 3.11 (debootstrap, docker import)")
def base_image() -> None:
    if have_image(BASE):
        print(f"    {BASE} exists; `docker rmi {BASE}` to make it again")
        return
    rootfs = WORK / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.mkdir(parents=True)
    sh(
        "debootstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,python3-pip,ca-certificates,passwd",
        "bookworm",
        str(rootfs),
        quiet=True,
    )
    # This machine's CA bundle: whatever it trusts to reach the package index, builds do.
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    for p in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        p.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "import", "-", BASE], stdin=tar.stdout, check=True, capture_output=True
    )
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)


@contextlib.contextmanager
def wheel_server():
    """This machine's torch wheels over HTTP on loopback, for the worker's build."""
    folder = Path(os.environ.get("TORCH_WHEELS", "/opt/wheels"))
    if not any(folder.glob("torch-*.whl")):
        yield ""
        return

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    # A fixed port: the URL is a build argument, and a new one would void the build cache.
    port = int(os.environ.get("TORCH_WHEELS_PORT", "18099"))
    socketserver.TCPServer.allow_reuse_address = True
    with socketserver.TCPServer(("127.0.0.1", port), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
        httpd.shutdown()


def build(target: str | None, tag: str, *args: str, dockerfile: str = "Dockerfile") -> None:
    argv = ["docker", "build", "--network", "host", "-f", str(ROOT / dockerfile), "-t", tag]
    if target:
        argv += ["--target", target]
    sh(*argv, *args, str(ROOT), quiet=True)


@step("build redis (Debian's redis-server on the base)")
def build_redis() -> None:
    build(
        None,
        IMAGES["redis"],
        "--build-arg",
        f"BASE_IMAGE={BASE}",
        dockerfile="docker/redis.Dockerfile",
    )


@step("build api")
def build_api() -> None:
    build("api", IMAGES["api"], "--build-arg", f"PYTHON_IMAGE={BASE}")


@step("build worker (torch's CPU wheel)")
def build_worker(find_links: str) -> None:
    build(
        "worker",
        IMAGES["worker"],
        "--build-arg",
        f"PYTHON_IMAGE={BASE}",
        "--build-arg",
        "TORCH_INDEX=",
        "--build-arg",
        f"TORCH_FIND_LINKS={find_links}",
    )


# --- checks ----------------------------------------------------------------------------
def size_mb(image: str) -> float:
    return (
        int(sh("docker", "image", "inspect", "-f", "{{.Size}}", image, quiet=True).stdout) / 2**20
    )


def run_in(image: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    """A command in a throwaway container of ``image``, with no network at all."""
    return sh("docker", "run", "--rm", "--network", "none", image, *cmd, quiet=True, **kw)


@step("images: no torch in api, torch (CPU) in worker, neither runs as root")
def check_images() -> None:
    r = run_in(IMAGES["api"], "python", "-c", "import torch", check=False)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr, r.stderr
    code = "import torch; print(torch.__version__, torch.version.cuda)"
    r = run_in(IMAGES["worker"], "python", "-c", code)
    assert r.stdout.split()[1] == "None", f"the worker's torch is a CUDA build: {r.stdout}"
    for name in ("api", "worker"):
        uid = run_in(IMAGES[name], "id", "-u").stdout.strip()
        assert uid != "0", f"{name} runs as root"
        print(f"    {name}: uid {uid}, {size_mb(IMAGES[name]):.0f} MB")


def ready() -> bool:
    r = httpx.get(f"{URL}/readyz", timeout=3)
    return r.status_code == 200 and r.json()["dependencies"] == {"redis": "up"}


def health(service: str) -> list[str]:
    ids = compose("ps", "-q", service, quiet=True).stdout.split()
    return [
        sh("docker", "inspect", "-f", "{{.State.Health.Status}}", i, quiet=True).stdout.strip()
        for i in ids
    ]


@step("compose up (host networking, local images); /readyz and every health check")
def up() -> None:
    compose("up", "-d", "--no-build", quiet=True)
    wait("/readyz with Redis up", ready)
    for svc in ("redis", "api", "worker"):
        wait(f"{svc} healthy", lambda s=svc: health(s) and all(h == "healthy" for h in health(s)))
        print(f"    {svc}: {', '.join(health(svc))}")


@step("KServe v2 over gRPC (tritonclient): the model ready, a JPEG's grid")
def grpc_check() -> None:
    import numpy as np
    import tritonclient.grpc as tg

    t = tg.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
    wait("gRPC model ready", lambda: t.is_model_ready("yolov1"))
    buf = io.BytesIO()
    from model.shapes import make_sample, sample_seed

    make_sample(sample_seed(11, 0)).image.convert("RGB").save(buf, "JPEG")
    x = tg.InferInput("image_bytes", [1, 1], "BYTES")
    x.set_data_from_numpy(np.array([[buf.getvalue()]], dtype=object))
    grid = t.infer("yolov1", [x]).as_numpy("grid")
    assert grid.shape == (1, 7, 7, 15), grid.shape


def curl(*args: str) -> str:
    return sh("curl", "-sS", "--fail-with-body", *args, quiet=True).stdout


def scene_dataset() -> bytes:
    """A zip of a YOLO data set whose classes the default model only half knows: a
    1-epoch job beats its baseline, so it ends as a new version."""
    sys.path.insert(0, str(ROOT))
    from model.shapes import write_yolo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        write_yolo_dataset(f"{tmp}/renamed", 24, seed=5)
        Path(f"{tmp}/renamed/data.yaml").write_text(
            "names: [circle, square, hexagon, blob, ring]\n"
        )
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for p in Path(tmp).rglob("*"):
                if p.is_file():
                    z.write(p, str(p.relative_to(tmp)))
        return buf.getvalue()


def wait_job(job_id: str, timeout: float = 300) -> dict:
    done = ("succeeded", "failed", "cancelled")
    return wait(
        f"job {job_id} to end",
        lambda: (j := httpx.get(f"{URL}/v1/jobs/{job_id}").json())["status"] in done and j,
        timeout,
    )


@step("README examples: detect, loss, a 1-epoch job that ends as the active version, activation")
def readme_examples() -> str:
    sys.path.insert(0, str(ROOT))
    from model.shapes import make_sample

    photo = WORK / "photo.jpg"
    photo.write_bytes(make_sample(3).encoded)
    out = json.loads(curl("-F", f"image=@{photo}", f"{URL}/v1/detect?conf_threshold=0.2"))
    assert out["detections"], out
    print(f"    detect: {len(out['detections'])} boxes, model v{out['model']['version']}")
    grid = json.loads(curl("-F", f"image=@{photo}", f"{URL}/v1/detect?include_raw=true"))["raw"]
    body = json.dumps(
        {"predictions": [grid], "labels": [[{"class_id": 0, "box": [0.5, 0.5, 0.2, 0.2]}]]}
    )
    loss = json.loads(curl("-H", "Content-Type: application/json", "-d", body, f"{URL}/v1/loss"))
    print(f"    loss: {loss['loss']:.4f}")
    archive = WORK / "renamed.zip"
    archive.write_bytes(scene_dataset())
    ds = json.loads(
        curl("-H", f"Authorization: Bearer {KEY}", "-F", f"file=@{archive}", f"{URL}/v1/datasets")
    )
    job = json.loads(
        curl(
            "-H",
            f"Authorization: Bearer {KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(
                {
                    "dataset": {"format": "yolo", "dataset_id": ds["id"]},
                    "epochs": 1,
                    "batch_size": 8,
                    "augment": False,
                    "auto_activate": True,
                }
            ),
            f"{URL}/v1/jobs",
        )
    )
    rec = wait_job(job["id"])
    assert rec["status"] == "succeeded" and rec["result"]["activated"], rec
    version = rec["model_version"]
    wait(
        f"the API serving v{version}",
        lambda: httpx.get(f"{URL}/v1/models").json()["active"]["version"] == version,
        30,
    )
    print(f"    job {job['id'][:8]}: {rec['result']['reason']}")
    curl("-X", "POST", "-H", f"Authorization: Bearer {KEY}", f"{URL}/v1/models/1/activate")
    curl("-X", "POST", "-H", f"Authorization: Bearer {KEY}", f"{URL}/v1/models/{version}/activate")
    assert httpx.get(f"{URL}/v1/models").json()["active"]["version"] == version
    return job["id"]


@step("--scale worker=2: two workers answer on the one queue")
def scale_workers() -> None:
    compose("up", "-d", "--no-build", "--no-recreate", "--scale", "worker=2", quiet=True)
    wait("two healthy workers", lambda: health("worker") == ["healthy", "healthy"])
    wid = compose("ps", "-q", "worker", quiet=True).stdout.split()[0]
    r = sh(
        "docker",
        "exec",
        wid,
        "celery",
        "-A",
        "worker.celery_app",
        "inspect",
        "active_queues",
        "-j",
        quiet=True,
    )
    queues = json.loads(r.stdout)
    assert len(queues) == 2 and all(q[0]["name"] == "training" for q in queues.values()), queues
    print(f"    nodes: {', '.join(sorted(queues))}")


@step("Redis container restarted mid-job: the job still finishes")
def redis_restart() -> None:
    job = httpx.post(
        f"{URL}/v1/jobs",
        headers=AUTH,
        json={
            "dataset": {"format": "shapes", "images": 48},
            "epochs": 3,
            "batch_size": 8,
            "augment": False,
        },
    ).json()
    wait(
        "the job running",
        lambda: (httpx.get(f"{URL}/v1/jobs/{job['id']}").json()["progress"] or {}).get("step"),
        120,
        0.3,
    )
    compose("restart", "redis", quiet=True)
    rec = wait_job(job["id"])
    assert rec["status"] == "succeeded", rec
    print(f"    {rec['status']}: {rec['result']['reason']}")


@step("down, up: the model store and Redis' data are still there")
def persistence(job_id: str) -> None:
    before = httpx.get(f"{URL}/v1/models").json()
    compose("down", quiet=True)
    compose("up", "-d", "--no-build", quiet=True)
    wait("/readyz after up", ready)
    after = httpx.get(f"{URL}/v1/models").json()
    assert [v["version"] for v in after["versions"]] == [v["version"] for v in before["versions"]]
    assert after["active"]["version"] == before["active"]["version"]
    assert httpx.get(f"{URL}/v1/jobs/{job_id}").json()["status"] == "succeeded"
    print(
        f"    versions {[v['version'] for v in after['versions']]}, active "
        f"v{after['active']['version']}, job {job_id[:8]} kept"
    )


def ensure_engine() -> None:
    """Debian's docker.io, docker-compose and debootstrap, installed when missing (as
    root, with apt), and a Docker engine started when none answers."""
    need = [pkg for tool, pkg in (("dockerd", "docker.io"), ("docker-compose", "docker-compose"),
                                  ("debootstrap", "debootstrap"), ("curl", "curl"))
            if shutil.which(tool) is None]  # fmt: skip
    if need:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise SystemExit(f"missing: {', '.join(need)} (Debian packages)")
        print(f"--> installing {', '.join(need)}", flush=True)
        sh("apt-get", "install", "-y", "-q", *need, quiet=True)
    if sh("docker", "info", check=False, quiet=True).returncode == 0:
        return
    if os.geteuid() != 0:
        raise SystemExit("no Docker engine answers, and only root can start one here")
    print("--> starting dockerd", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    log = open(WORK / "dockerd.log", "a")  # noqa: SIM115 (it outlives this script)
    subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait("dockerd to answer", lambda: sh("docker", "info", check=False, quiet=True).returncode == 0,
         60)  # fmt: skip


def main() -> int:
    ensure_engine()
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    compose("down", "-v", check=False, quiet=True)
    try:
        base_image()
        build_redis()
        build_api()
        with wheel_server() as links:
            build_worker(links)
        check_images()
        up()
        grpc_check()
        job_id = readme_examples()
        scale_workers()
        redis_restart()
        persistence(job_id)
    finally:
        compose("down", "-v", check=False, quiet=True)
    print("\nimage sizes:")
    for tag in IMAGES.values():
        print(f"  {tag:24s} {size_mb(tag):7.0f} MB")
    print("steps:")
    for name, dt in timings:
        print(f"  {dt:7.1f} s  {name}")
    print(f"all passed in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
