"""What each protocol costs over the plainest request: p50 latency of one 640x480 JPEG
through multipart, the raw body, JSON base64, the Python client, KServe v2 with
tritonclient (binary and JSON over HTTP, and gRPC), and Label Studio's predict, as
ratios to multipart measured in the same run against the same server."""

from __future__ import annotations

import base64
import io
import logging

import httpx
import numpy as np
from common import DEFAULT_MODEL, log, p50, setup_logging, timed
from PIL import Image

from support.procs import Server
from yolov1_client import Client

REPEAT = 60
ROUNDS = 6


def jpeg_640x480() -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    setup_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton

    from support.procs import free_port

    data = jpeg_640x480()
    b64 = base64.b64encode(data).decode()
    grpc_port = free_port()
    server = Server({"YOLOV1_MODEL_PATH": str(DEFAULT_MODEL), "YOLOV1_GRPC_PORT": str(grpc_port)})
    try:
        server.wait_ready()
        http = httpx.Client(base_url=server.url, timeout=30)
        client = Client(server.url)
        t = triton.InferenceServerClient(server.url.removeprefix("http://"))
        inp = triton.InferInput("image_bytes", [1], "BYTES")
        inp.set_data_from_numpy(np.array([data], dtype=object))
        out_bin = [triton.InferRequestedOutput("grid", binary_data=True)]
        g = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        g_inp = triton_grpc.InferInput("image_bytes", [1], "BYTES")
        g_inp.set_data_from_numpy(np.array([data], dtype=object))
        v2_json = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                               "data": [b64]}]}  # fmt: skip
        ls = {"tasks": [{"id": 1, "data": {"image": "data:image/jpeg;base64," + b64}}]}
        cases = {
            "multipart": lambda: http.post("/v1/detect", files={"image": ("a.jpg", data)}),
            "raw body": lambda: http.post(
                "/v1/detect", content=data, headers={"content-type": "image/jpeg"}
            ),
            "JSON base64": lambda: http.post("/v1/detect", json={"images": [{"base64": b64}]}),
            "format=coco": lambda: http.post(
                "/v1/detect", params={"format": "coco"}, files={"image": ("a.jpg", data)}
            ),
            "python client": lambda: client.detect(data),
            "kserve v2, tritonclient binary": lambda: t.infer("yolov1", [inp], outputs=out_bin),
            "kserve v2, JSON": lambda: http.post("/v2/models/yolov1/infer", json=v2_json),
            "kserve v2 gRPC, tritonclient": lambda: g.infer("yolov1", [g_inp]),
            "label studio predict": lambda: http.post("/labelstudio/predict", json=ls),
        }
        for fn in cases.values():  # every path once before timing any
            assert fn() is not None
        # Rounds of every case in turn: this shared machine drifts by a fifth within a
        # minute, which one long run per case took for a difference between protocols.
        runs: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(ROUNDS):
            for name, fn in cases.items():
                runs[name] += timed(fn, REPEAT // ROUNDS)
        times = {name: p50(r) for name, r in runs.items()}
        base = times["multipart"]
        log.info("640x480 JPEG, one client, p50 over %d requests; ratio to multipart:", REPEAT)
        for name, s in times.items():
            log.info("  %-32s %.2fx", name, s / base)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
