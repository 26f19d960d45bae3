"""``make soak``: the API and a worker under mixed traffic from 16 clients for a bounded
time (``SOAK_SECONDS``, default 120), with abusive requests mixed in. Prints, per window,
the detect p99 against the idle p99, the API's RSS, and the errors on valid traffic.
Not a test: it prints figures. Loopback only; Redis at ``SOAK_REDIS_URL``."""

from __future__ import annotations

import io
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.shapes import make_sample, sample_seed  # noqa: E402
from support.procs import DEFAULT_MODEL, Server, Worker  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", 120))
WINDOW = 30.0  # the first half of the run is valid traffic alone, the second adds abuse
REDIS_URL = os.environ.get("SOAK_REDIS_URL", "redis://127.0.0.1:6379/9")
KEY = {"Authorization": "Bearer soak"}


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def p99(xs: list[float]) -> float:
    return sorted(xs)[int(0.99 * (len(xs) - 1))] * 1000 if xs else float("nan")


def main() -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    base = Path(tempfile.mkdtemp(prefix="soak-"))
    env = {
        "YOLOV1_REDIS_URL": REDIS_URL,
        "YOLOV1_MODEL_STORE": str(base / "store"),
        "YOLOV1_DATA_ROOT": str(base),
        "YOLOV1_MODEL_PATH": str(DEFAULT_MODEL),
        "YOLOV1_API_KEYS": "soak",
        "YOLOV1_BODY_TIMEOUT_S": "5",
    }
    jpegs = []
    for i in range(16):
        buf = io.BytesIO()
        make_sample(sample_seed(7, i)).image.resize((640, 480)).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    loss = {"predictions": np.zeros((4, 7, 7, 15)).tolist(), "labels": [[]] * 4}
    abuse = [
        lambda c: c.post("/v1/loss", content=b'{"predictions": [[[[NaN]]]], "labels": [[]]}',
                         headers={"content-type": "application/json"}),
        lambda c: c.post("/v1/jobs", json={"dataset": {"format": "shapes"}},
                         headers={"Authorization": "Bearer s\xe9cret".encode("latin-1")}),
        lambda c: c.post("/v1/detect", params={"classes": "\u00b2"}, content=jpegs[0],
                         headers={"content-type": "image/jpeg"}),
        lambda c: c.post("/v1/detect", content=(b"x" * 2**20 for _ in range(40)),
                         headers={"content-type": "image/jpeg"}),
        lambda c: c.post("/v1/jobs", json={"dataset": {"format": "yolo", "path": "a" * 5000}},
                         headers=KEY),
        # the protocols: junk base64, a URL at cloud metadata, a tensor of the wrong
        # shape, a labelling config that is not XML
        lambda c: c.post("/v1/detect", json={"images": [{"base64": "%%%" * 1000}]}),
        lambda c: c.post("/v1/detect", json={"images": [{"url": "http://169.254.169.254/"}]}),
        lambda c: c.post("/v2/models/yolov1/infer", json={"inputs": [
            {"name": "images", "shape": [1, 3, 9, 9], "datatype": "FP32", "data": [0.0] * 243}]}),
        lambda c: c.post("/labelstudio/predict", json={
            "tasks": [{"data": {"image": "data:image/png;base64,AAAA"}}], "label_config": "<View"}),
    ]  # fmt: skip
    api, worker = Server(env), Worker(env, "soak")
    lock = threading.Lock()
    windows: dict[int, dict] = {}
    jobs_sent = [0.0]
    try:
        api.wait_ready()
        with httpx.Client(base_url=api.url, timeout=60) as c:
            idle = []
            for i in range(60):
                t = time.perf_counter()
                c.post("/v1/detect", content=jpegs[i % 16], headers={"content-type": "image/jpeg"})
                idle.append(time.perf_counter() - t)
        start = time.monotonic()

        def record(kind: str, seconds: float, ok: bool) -> None:
            w = int((time.monotonic() - start) // WINDOW)
            with lock:
                d = windows.setdefault(w, {"detect": [], "errors": 0, "abuse_5xx": 0, "n": 0})
                d["n"] += 1
                if kind == "detect" and ok:
                    d["detect"].append(seconds)
                if not ok:
                    d["errors" if kind != "abuse" else "abuse_5xx"] += 1

        def client(j: int) -> None:
            rng = random.Random(j)
            with httpx.Client(base_url=api.url, timeout=60) as c:
                while time.monotonic() - start < SECONDS:
                    roll = rng.random()
                    t = time.perf_counter()
                    abusing = time.monotonic() - start >= SECONDS / 2
                    try:
                        if roll < 0.05 and abusing:
                            r = rng.choice(abuse)(c)
                            record("abuse", 0, r.status_code < 500)
                            continue
                        if roll < 0.07 and time.monotonic() - jobs_sent[0] > 20:
                            jobs_sent[0] = time.monotonic()
                            body = {"dataset": {"format": "shapes", "images": 8}, "epochs": 1}
                            r = c.post("/v1/jobs", json=body, headers=KEY)
                            record("job", 0, r.status_code == 202)
                        elif roll < 0.25:
                            r = c.post("/v1/loss", json=loss)
                            record("loss", 0, r.status_code == 200)
                        else:
                            r = c.post("/v1/detect", content=jpegs[rng.randrange(16)],
                                       headers={"content-type": "image/jpeg"})  # fmt: skip
                            record("detect", time.perf_counter() - t, r.status_code == 200)
                    except httpx.HTTPError:
                        record("valid", 0, False)

        threads = [threading.Thread(target=client, args=(j,)) for j in range(16)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(WINDOW / 3)
            w = int((time.monotonic() - start) // WINDOW)
            with lock:
                windows.setdefault(w, {"detect": [], "errors": 0, "abuse_5xx": 0, "n": 0})
                windows[w]["rss"] = rss_mb(api.proc.pid)
        for t in threads:
            t.join()
    finally:
        worker.stop()
        api.stop()
    print(f"soak: 16 clients, {SECONDS:.0f} s; idle detect p99 {p99(idle):.1f} ms")
    half = int(SECONDS / 2 // WINDOW)
    calm = [x for w, d in windows.items() if w < half for x in d["detect"]]
    rough = [x for w, d in windows.items() if w >= half for x in d["detect"]]
    print(
        f"  detect p99 under 16 clients: valid traffic alone {p99(calm):.1f} ms, with abuse "
        f"mixed in {p99(rough):.1f} ms, ratio {p99(rough) / p99(calm):.2f} (target <= 2)"
    )
    for w, d in sorted(windows.items()):
        if not d["n"]:
            continue
        print(
            f"  {w * WINDOW:4.0f}-{(w + 1) * WINDOW:4.0f} s: {d['n']} requests, detect p99 "
            f"{p99(d['detect']):.1f} ms ({p99(d['detect']) / p99(idle):.1f}x idle, under 16 "
            f"clients), errors on valid traffic {d['errors']}, 5xx on abuse {d['abuse_5xx']}, "
            f"API RSS {d.get('rss', float('nan')):.0f} MB"
        )
    print(json.dumps({"median_idle_ms": statistics.median(idle) * 1000}))


if __name__ == "__main__":
    main()
