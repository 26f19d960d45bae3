"""The protocols other people's tools speak, each through HTTP against the real API
process: JSON/base64 and URL input, COCO results, KServe v2 (with tritonclient as an
independent client and the spec's own example requests), the Label Studio ML backend
(with the requests Label Studio sends), the Python client and the metrics."""

from __future__ import annotations

import base64
import http.server
import io
import json
import re
import socketserver
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model.shapes import make_sample, sample_seed
from support.procs import DEFAULT_MODEL, Server, free_port
from yolov1_client import APIError, Client

LIMIT_MB = 1.0


def _sample(k: int):
    return make_sample(sample_seed(777, k), "easy")


def _jwt(token_type: str, exp: float) -> str:
    """A JWT as Label Studio issues them (the signature is not ours to check)."""

    def part(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    payload = {"token_type": token_type, "exp": int(exp), "jti": str(time.time_ns())}
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


class ImageHost:
    """A real HTTP server on loopback: serves images, redirects, stalls and checks a
    token, as an image host or Label Studio would."""

    def __init__(
        self, files: dict[str, bytes], token: str | None = None, pat: str | None = None
    ) -> None:
        host = self
        self.files, self.token, self.requests = files, token, []
        # Label Studio 1.20+: a personal access token (a JWT refresh token) is exchanged
        # at /api/token/refresh/ for a short-lived access token, sent as Bearer.
        self.pat, self.refuse_refresh, self.issued = pat, False, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                host.requests.append((self.path, body))
                ok = self.path == "/api/token/refresh/" and body.get("refresh") == host.pat
                if not ok or host.refuse_refresh:
                    self.send_response(401)
                    self.end_headers()
                    return
                host.issued.append(_jwt("access", time.time() + 300))
                out = json.dumps({"access": host.issued[-1]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                host.requests.append((self.path, self.headers.get("Authorization")))
                if self.path.startswith("/redirect-to/"):
                    self.send_response(302)
                    self.send_header("Location", self.path[len("/redirect-to") :])
                    self.end_headers()
                    return
                if self.path.startswith("/redirect-away"):
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                    self.end_headers()
                    return
                if self.path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    time.sleep(3)
                    return
                accepted = {f"Token {host.token}", *(f"Bearer {a}" for a in host.issued)}
                if (host.token or host.pat) and self.headers.get("Authorization") not in accepted:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = host.files.get(self.path.split("?")[0])
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Threaded(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.httpd = Threaded(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def host() -> Iterator[ImageHost]:
    h = ImageHost(
        {
            "/a.jpg": _sample(1).encoded,
            "/big.jpg": b"\xff\xd8" + b"0" * int(2 * LIMIT_MB * 1024 * 1024),
            "/data/upload/3/task.jpg": _sample(5).encoded,
        },
        token=None,
    )
    yield h
    h.close()


@pytest.fixture(scope="module")
def studio() -> Iterator[ImageHost]:
    """Label Studio's file server: uploaded files need its API token."""
    h = ImageHost({"/data/upload/3/task.jpg": _sample(5).encoded}, token="ls-token")
    yield h
    h.close()


@pytest.fixture(scope="module")
def server(host, studio):
    s = Server(
        {
            "YOLOV1_MODEL_PATH": str(DEFAULT_MODEL),
            "YOLOV1_MAX_UPLOAD_MB": str(LIMIT_MB),
            "YOLOV1_IMAGE_URL_HOSTS": "127.0.0.1",
            "YOLOV1_IMAGE_URL_TIMEOUT_S": "1",
            "YOLOV1_LABELSTUDIO_URL": studio.url,
            "YOLOV1_LABELSTUDIO_API_KEY": "ls-token",
            "YOLOV1_GRPC_PORT": str(grpc_port := free_port()),
        }
    )
    s.grpc = f"127.0.0.1:{grpc_port}"
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- JSON input and COCO out -----------------------------------------------------------
def test_json_base64_gives_what_multipart_gives(client):
    s = _sample(1)
    ref = client.post("/v1/detect", files={"image": ("a.jpg", s.encoded)}).json()
    got = client.post("/v1/detect", json={"images": [{"base64": _b64(s.encoded)}]}).json()
    assert got["detections"] == ref["detections"] and len(ref["detections"]) >= 3
    url = "data:image/jpeg;base64," + _b64(s.encoded)
    got = client.post("/v1/detect", json={"images": [{"url": url}]}).json()
    assert got["detections"] == ref["detections"]
    # Options in the body, as JS clients send them; two images give a list.
    many = client.post(
        "/v1/detect",
        json={"images": [{"base64": _b64(s.encoded)}] * 2, "conf_threshold": 0.9},
    ).json()
    assert len(many) == 2 and all(d["confidence"] >= 0.9 for d in many[0]["detections"])
    assert len(many[0]["detections"]) < len(ref["detections"])


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"images": [{"base64": "not base64!"}]}, 422, "not valid base64"),
        ({"images": [{"base64": ""}]}, 422, "empty"),
        ({"images": [{"base64": _b64(b"plain text, not an image")}]}, 400, "image"),
        ({"images": []}, 422, "at least 1"),
        ({"images": [{"base64": "AAAA", "url": "http://x"}]}, 422, "exactly one"),
        ({"images": [{"url": "data:image/png,abc"}]}, 422, "base64"),
        ({"images": [{"url": "ftp://127.0.0.1/a.jpg"}]}, 422, "http"),
        ({"images": [{"url": "http://localhost/a.jpg"}]}, 422, "not in YOLOV1_IMAGE_URL_HOSTS"),
        ({"images": [{"url": "http://169.254.169.254/"}]}, 422, "not in YOLOV1_IMAGE_URL_HOSTS"),
        ({"images": [{"base64": "AAAA"}], "conf_threshold": 2}, 422, "less than or equal"),
        ({"images": [{"base64": "AAAA"}], "surprise": 1}, 422, "Extra inputs"),
    ],
)
def test_bad_json_input_is_a_clear_4xx(client, body, status, words):
    r = client.post("/v1/detect", json=body)
    assert r.status_code == status, r.text
    assert words in r.text


def test_image_urls_only_from_allowed_hosts_within_limits(client, host):
    ref = client.post("/v1/detect", files={"image": ("a.jpg", _sample(1).encoded)}).json()
    got = client.post("/v1/detect", json={"images": [{"url": f"{host.url}/a.jpg"}]}).json()
    assert got["detections"] == ref["detections"]
    # A redirect on the same host is followed; one to another host is not.
    r = client.post("/v1/detect", json={"images": [{"url": f"{host.url}/redirect-to/a.jpg"}]})
    assert r.status_code == 200 and r.json()["detections"] == ref["detections"]
    r = client.post("/v1/detect", json={"images": [{"url": f"{host.url}/redirect-away"}]})
    assert r.status_code == 422 and "another host" in r.text
    r = client.post("/v1/detect", json={"images": [{"url": f"{host.url}/big.jpg"}]})
    assert r.status_code == 413
    t0 = time.monotonic()
    r = client.post("/v1/detect", json={"images": [{"url": f"{host.url}/slow"}]})
    assert r.status_code == 422 and "within 1.0 s" in r.text and time.monotonic() - t0 < 2.5
    r = client.post("/v1/detect", json={"images": [{"url": f"{host.url}/missing.jpg"}]})
    assert r.status_code == 422 and "404" in r.text


def test_image_urls_are_off_by_default():
    s = Server({"YOLOV1_MODEL_PATH": str(DEFAULT_MODEL)})
    try:
        s.wait_ready()
        r = httpx.post(f"{s.url}/v1/detect", json={"images": [{"url": "http://127.0.0.1/a"}]})
        assert r.status_code == 422 and "off on this server" in r.text
    finally:
        s.stop()


def test_coco_results_are_the_detections_in_cocos_layout(client):
    s1, s2 = _sample(1), _sample(3)
    ref = [
        client.post("/v1/detect", files={"image": ("a.jpg", s.encoded)}).json() for s in (s1, s2)
    ]
    body = {
        "images": [{"base64": _b64(s1.encoded), "id": 17}, {"base64": _b64(s2.encoded), "id": 4}]
    }
    coco = client.post("/v1/detect", params={"format": "coco"}, json=body).json()
    assert len(coco) == sum(len(r["detections"]) for r in ref)
    for image_id, r in zip((17, 4), ref, strict=True):
        mine = [c for c in coco if c["image_id"] == image_id]
        for c, d in zip(mine, r["detections"], strict=True):
            b = d["box"]
            assert c["category_id"] == d["class_id"]
            assert c["score"] == pytest.approx(d["confidence"])
            assert c["bbox"] == pytest.approx(
                [b["x1"], b["y1"], b["x2"] - b["x1"], b["y2"] - b["y1"]]
            )
    # multipart: image ids are the images' positions
    r = client.post(
        "/v1/detect",
        params={"format": "coco"},
        files=[("image", ("a.jpg", s1.encoded)), ("image", ("b.jpg", s2.encoded))],
    ).json()
    assert {c["image_id"] for c in r} == {0, 1}


# --- KServe v2 -------------------------------------------------------------------------
def test_kserve_v2_with_tritonclient(server, client):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    t = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert t.is_server_live() and t.is_server_ready() and t.is_model_ready("yolov1")
    assert t.is_model_ready("yolov1", "1") and not t.is_model_ready("yolov1", "9")
    assert "binary_tensor_data" in t.get_server_metadata()["extensions"]
    md = t.get_model_metadata("yolov1")
    ins = {i["name"]: i for i in md["inputs"]}
    net = next(n for n in ins if n != "image_bytes")
    assert ins[net] == {"name": net, "datatype": "FP32", "shape": [-1, 3, 224, 224]}
    assert md["outputs"] == [{"name": "grid", "datatype": "FP32", "shape": [-1, 7, 7, 15]}]

    # Encoded images (BYTES) give the grid /v1/detect computes.
    jpegs = [_sample(1).encoded, _sample(3).encoded]
    inp = triton.InferInput("image_bytes", [2], "BYTES")
    inp.set_data_from_numpy(np.array(jpegs, dtype=object))
    res = t.infer("yolov1", [inp], outputs=[triton.InferRequestedOutput("grid")])
    grid = res.as_numpy("grid")
    assert grid.shape == (2, 7, 7, 15) and grid.dtype == np.float32
    for g, jpeg in zip(grid, jpegs, strict=True):
        raw = client.post(
            "/v1/detect", params={"include_raw": True}, files={"image": ("a.jpg", jpeg)}
        ).json()["raw"]
        np.testing.assert_allclose(g, np.asarray(raw, np.float32), atol=1e-5)

    # The network's own tensor, binary both ways and JSON both ways: the same grid.
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    a = triton.InferInput(net, list(x.shape), "FP32")
    a.set_data_from_numpy(x, binary_data=True)
    g_bin = t.infer("yolov1", [a]).as_numpy("grid")
    a.set_data_from_numpy(x, binary_data=False)
    out = [triton.InferRequestedOutput("grid", binary_data=False)]
    g_json = t.infer("yolov1", [a], outputs=out, model_version="1").as_numpy("grid")
    assert g_bin.shape == (3, 7, 7, 15)
    np.testing.assert_allclose(g_bin, g_json, atol=1e-6)

    bad = triton.InferInput(net, [1, 3, 10, 10], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 10, 10), np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        t.infer("yolov1", [bad])
    with pytest.raises(InferenceServerException, match="unknown model"):
        t.infer("resnet", [a])
    with pytest.raises(InferenceServerException, match="no version 9"):
        t.infer("yolov1", [a], model_version="9")


def test_kserve_v2_grpc_with_tritonclient(server, client):
    # The same protocol over gRPC, with Triton's gRPC client (the test process never
    # imports the server's own stubs: both declare package 'inference').
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    t = tg.InferenceServerClient(server.grpc)
    assert t.is_server_live() and t.is_server_ready() and t.is_model_ready("yolov1")
    assert t.is_model_ready("yolov1", "1") and not t.is_model_ready("yolov1", "9")
    assert not t.is_model_ready("resnet")
    meta = t.get_server_metadata()
    assert meta.name == "yolov1-service" and list(meta.extensions) == [
        "model_configuration",
        "statistics",
        "model_repository",
    ]
    md = t.get_model_metadata("yolov1")
    ins = {i.name: (i.datatype, list(i.shape)) for i in md.inputs}
    net = next(n for n in ins if n != "image_bytes")
    assert ins == {net: ("FP32", [-1, 3, 224, 224]), "image_bytes": ("BYTES", [-1, 1])}
    assert [(o.name, o.datatype, list(o.shape)) for o in md.outputs] == [
        ("grid", "FP32", [-1, 7, 7, 15])
    ]
    assert list(md.versions) == ["1"]

    # Encoded images and the network's tensor: the grids HTTP gives, the id echoed.
    jpegs = [_sample(1).encoded, _sample(3).encoded]
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    h = th.InferenceServerClient(server.url.removeprefix("http://"))
    for name, dtype, data in (("image_bytes", "BYTES", np.array(jpegs, dtype=object)),
                              (net, "FP32", x)):  # fmt: skip
        gi = tg.InferInput(name, list(data.shape), dtype)
        gi.set_data_from_numpy(data)
        res = t.infer("yolov1", [gi], request_id="r-7", outputs=[tg.InferRequestedOutput("grid")])
        hi = th.InferInput(name, list(data.shape), dtype)
        hi.set_data_from_numpy(data)
        want = h.infer("yolov1", [hi]).as_numpy("grid")
        assert res.as_numpy("grid").shape == (2, 7, 7, 15)
        np.testing.assert_allclose(res.as_numpy("grid"), want, atol=1e-5)
        assert res.get_response().id == "r-7" and res.get_response().model_version == "1"

    # Errors are the protocol's status codes, with the same words as over HTTP.
    bad = tg.InferInput("image_bytes", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    cases = [
        ("yolov1", [bad], "", "INVALID_ARGUMENT", "not a readable image"),
        ("resnet", [gi], "", "NOT_FOUND", "unknown model"),
        ("yolov1", [gi], "9", "NOT_FOUND", "no version 9"),
    ]
    small = tg.InferInput(net, [1, 3, 10, 10], "FP32")
    small.set_data_from_numpy(np.zeros((1, 3, 10, 10), np.float32))
    cases.append(("yolov1", [small], "", "INVALID_ARGUMENT", "shape"))
    for model, inputs, version, code, words in cases:
        with pytest.raises(InferenceServerException) as err:
            t.infer(model, inputs, model_version=version)
        assert err.value.status() == f"StatusCode.{code}" and words in err.value.message()


def test_kserve_v2_grpc_typed_contents_as_the_spec_allows(server):
    """Tensors in ``contents`` (typed fields) instead of ``raw_input_contents``, sent
    with the stubs Triton's client ships, as a hand-written request would be."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc))
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="yolov1"))
    net = next(i.name for i in meta.inputs if i.name != "image_bytes")
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    jpeg = _sample(2).encoded

    def infer(inp, raw=()):
        req = pb.ModelInferRequest(model_name="yolov1", inputs=[inp], raw_input_contents=raw)
        out = stub.ModelInfer(req)
        assert [o.name for o in out.outputs] == ["grid"] and list(out.outputs[0].shape)
        return np.frombuffer(out.raw_output_contents[0], "<f4").reshape(out.outputs[0].shape)

    T = pb.ModelInferRequest.InferInputTensor
    typed = infer(T(name=net, datatype="FP32", shape=x.shape,
                    contents=pb.InferTensorContents(fp32_contents=x.ravel())))  # fmt: skip
    raw = infer(T(name=net, datatype="FP32", shape=x.shape), [x.tobytes()])
    np.testing.assert_array_equal(typed, raw)
    by_contents = infer(T(name="image_bytes", datatype="BYTES", shape=[1],
                          contents=pb.InferTensorContents(bytes_contents=[jpeg])))  # fmt: skip
    assert by_contents.shape == (1, 7, 7, 15)
    with pytest.raises(grpc.RpcError) as err:  # two raw tensors for one input
        infer(T(name=net, datatype="FP32", shape=x.shape), [x.tobytes(), b""])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 raw_input_contents for 1 inputs" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # fewer values than the shape holds
        infer(T(name=net, datatype="FP32", shape=x.shape,
                contents=pb.InferTensorContents(fp32_contents=[1.0, 2.0])))  # fmt: skip
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_triton_perf_analyzer_drives_the_server(server, tmp_path, transport):
    """Triton's own load generator (the perf_analyzer binary in tritonclient's wheel):
    it reads the model's metadata and configuration (Triton's extension), then sends
    batches of 2 JPEGs from 2 threads (any error answer fails it), and reads the
    server's statistics (Triton's extension) to split the latency on the server."""
    import struct
    import subprocess
    import sys
    from pathlib import Path

    import nvidia.cuda_runtime

    exe = Path(sys.executable).with_name("perf_analyzer")
    jpeg = _sample(4).encoded  # a BYTES tensor as perf_analyzer takes it: length-prefixed
    data = {"data": [{"image_bytes": {"b64": _b64(struct.pack("<I", len(jpeg)) + jpeg)}}]}
    (tmp_path / "input.json").write_text(json.dumps(data))
    url = server.grpc if transport == "grpc" else server.url.removeprefix("http://")
    cudart = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    run = subprocess.run(
        [str(exe), "-m", "yolov1", "-u", url, "-i", transport, "-b", "2",
         "--concurrency-range", "2", "--measurement-mode", "count_windows",
         "--measurement-request-count", "20", "--stability-percentage", "999",
         "--max-trials", "3", "--input-data", str(tmp_path / "input.json"),
         "-f", str(tmp_path / "out.csv")],
        env={"LD_LIBRARY_PATH": str(cudart), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    # The server's side, from Triton's statistics extension: a request is 2 inferences
    # (give or take the requests in flight, 2 of them, as the window opens and closes).
    server_side = run.stdout.rsplit("Server:", 1)[1]
    inferences = int(re.search(r"Inference count: (\d+)", server_side)[1])
    requests = int(re.search(r"Successful request count: (\d+)", server_side)[1])
    assert requests > 0 and abs(inferences - 2 * requests) <= 4, server_side
    assert "compute infer" in server_side
    header, row = (tmp_path / "out.csv").read_text().splitlines()[:2]
    assert header.startswith("Concurrency,Inferences/Second") and float(row.split(",")[1]) > 0


def test_triton_model_configuration_extension(server):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    want = {"name": "yolov1", "platform": "onnxruntime_onnx", "max_batch_size": 16}
    http_cfg = th.InferenceServerClient(server.url.removeprefix("http://")).get_model_config(
        "yolov1"
    )
    grpc_cfg = tg.InferenceServerClient(server.grpc).get_model_config("yolov1", as_json=True)
    for cfg in (http_cfg, grpc_cfg["config"]):
        assert {k: cfg[k] for k in want} == want
        ins = {i["name"]: i for i in cfg["input"]}
        assert ins["image_bytes"]["data_type"] == "TYPE_STRING"
        assert [int(d) for d in ins["image_bytes"]["dims"]] == [1]
        assert all(i["optional"] for i in cfg["input"])
        out = cfg["output"][0]
        assert out["name"] == "grid" and [int(d) for d in out["dims"]] == [7, 7, 15]


def test_triton_statistics_extension_counts_what_ran(server, client):
    """Triton's statistics, read with tritonclient over HTTP and gRPC: an image through
    /v1/detect, one through /v2 over HTTP, one over gRPC and a tensor of two are four
    requests and five inferences; an undecodable image is a failure. Prometheus counts
    the same five images."""
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    h = th.InferenceServerClient(server.url.removeprefix("http://"))
    g = tg.InferenceServerClient(server.grpc)
    assert "statistics" in h.get_server_metadata()["extensions"]
    assert "statistics" in g.get_server_metadata(as_json=True)["extensions"]

    def totals() -> dict[str, int]:
        (m,) = h.get_inference_statistics("yolov1", "1")["model_stats"]
        out = {k: m[k] for k in ("inference_count", "execution_count", "last_inference")}
        for k, d in m["inference_stats"].items():
            out[k], out[k + "_ns"] = d["count"], d["ns"]
        return out

    def images() -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("yolov1_detect_images_total")
        )

    before, t0, images_before = totals(), time.time() * 1000, images()
    jpeg = _sample(2).encoded
    assert client.post(
        "/v1/detect", content=jpeg, headers={"content-type": "image/jpeg"}
    ).is_success
    img = th.InferInput("image_bytes", [1], "BYTES")
    img.set_data_from_numpy(np.array([jpeg], dtype=object))
    h.infer("yolov1", [img])
    gimg = tg.InferInput("image_bytes", [1], "BYTES")
    gimg.set_data_from_numpy(np.array([jpeg], dtype=object))
    g.infer("yolov1", [gimg])
    net = next(
        i["name"] for i in h.get_model_metadata("yolov1")["inputs"] if i["name"] != "image_bytes"
    )
    x = th.InferInput(net, [2, 3, 224, 224], "FP32")
    x.set_data_from_numpy(np.zeros((2, 3, 224, 224), np.float32))
    h.infer("yolov1", [x])
    img.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    with pytest.raises(InferenceServerException):
        h.infer("yolov1", [img])
    after = totals()
    d = {k: after[k] - before[k] for k in after}
    assert d["inference_count"] == 5 and d["execution_count"] == 4, d
    assert d["success"] == 4 and d["fail"] == 1, d
    # Equal counts, as perf_analyzer requires; detections were made for /v1/detect only.
    assert d["queue"] == d["compute_input"] == d["compute_infer"] == d["compute_output"] == 4, d
    assert d["compute_output_ns"] > 0, d
    assert d["success_ns"] >= d["compute_input_ns"] + d["compute_infer_ns"] > 0, d
    assert after["last_inference"] >= t0 - 1000
    assert images() == images_before + 5

    # gRPC reports the same numbers; unknown models and versions are the protocol's errors.
    grpc_stats = g.get_inference_statistics("yolov1", "1", as_json=True)["model_stats"][0]
    assert int(grpc_stats["inference_count"]) == after["inference_count"]
    assert int(grpc_stats["inference_stats"]["fail"]["count"]) == after["fail"]
    assert client.get("/v2/models/stats").json()["model_stats"][0]["name"] == "yolov1"
    for bad in ("/v2/models/resnet/stats", "/v2/models/yolov1/versions/9/stats"):
        r = client.get(bad)
        assert r.status_code == 404 and "error" in r.json()
    with pytest.raises(InferenceServerException, match="no version 9"):
        g.get_inference_statistics("yolov1", "9")


def test_triton_repository_index(server, client):
    """tritonclient's get_model_repository_index over HTTP and gRPC."""
    import tritonclient.grpc as tg
    import tritonclient.http as th

    want = {"name": "yolov1", "version": "1", "state": "READY", "reason": ""}
    assert th.InferenceServerClient(
        server.url.removeprefix("http://")
    ).get_model_repository_index() == [want]
    models = tg.InferenceServerClient(server.grpc).get_model_repository_index(as_json=True)[
        "models"
    ]
    assert [{**want, **m} for m in models] == [want]  # protobuf's JSON leaves out empty fields
    assert client.post("/v2/repository/index", json={"ready": True}).json() == [want]
    r = client.post("/v2/repository/index", content=b"[1, 2")
    assert r.status_code == 400 and "ready" in r.json()["error"]


def test_triton_load_serves_the_registrys_active_version_now(tmp_path):
    """tritonclient's load_model over HTTP and gRPC: the server follows the registry's
    active version by polling (here once an hour), and a load makes it switch now.
    Unloading is refused with the reason, as is a load that brings a configuration;
    an unknown model is the protocol's not-found."""
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    from model.registry import ModelStore

    store = ModelStore(tmp_path)
    store.ensure_default(DEFAULT_MODEL)
    v2 = store.register(
        {n: store.path(1) / n for n in ("model.onnx", "model.json")}, {"name": "copy"}
    )
    grpc_port = free_port()
    server = Server(
        {
            "YOLOV1_MODEL_PATH": str(DEFAULT_MODEL),
            "YOLOV1_MODEL_STORE": str(tmp_path),
            "YOLOV1_MODEL_POLL_S": "3600",
            "YOLOV1_GRPC_PORT": str(grpc_port),
        }
    )
    try:
        server.wait_ready()
        h = th.InferenceServerClient(server.url.removeprefix("http://"))
        g = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert "model_repository" in h.get_server_metadata()["extensions"]
        assert "model_repository" in g.get_server_metadata(as_json=True)["extensions"]

        def active() -> int:
            return httpx.get(f"{server.url}/v1/models").json()["active"]["version"]

        assert active() == 1
        store.set_active(v2)  # as another replica's activation, or a job's, would
        time.sleep(0.5)
        assert active() == 1  # the next poll is an hour away
        h.load_model("yolov1")
        assert active() == v2
        states = {m["version"]: m["state"] for m in h.get_model_repository_index()}
        assert states == {"1": "UNAVAILABLE", "2": "READY"}  # the swap let v1 go
        store.set_active(1)
        g.load_model("yolov1")
        assert active() == 1
        h.load_model("yolov1")  # nothing changed: still a success

        for client in (h, g):
            with pytest.raises(InferenceServerException, match="unloading is not served"):
                client.unload_model("yolov1")
            with pytest.raises(InferenceServerException, match="a load with config"):
                client.load_model("yolov1", config='{"max_batch_size": 4}')
            with pytest.raises(InferenceServerException, match="unknown model 'resnet'"):
                client.load_model("resnet")
        v3 = store.register(
            {n: store.path(1) / n for n in ("model.onnx", "model.json")}, {"name": "broken"}
        )
        (store.path(v3) / "model.onnx").write_bytes(b"not a model")
        store.set_active(v3)
        with pytest.raises(InferenceServerException, match="could not be loaded.*1 still serves"):
            h.load_model("yolov1")
        store.set_active(1)
        r = httpx.post(f"{server.url}/v2/repository/models/yolov1/load", content=b"[1")
        assert r.status_code == 400 and "parameters" in r.json()["error"]
        assert active() == 1  # still serving after every refusal
    finally:
        server.stop()


def test_kserve_v2_hand_written_requests_from_the_spec(client):
    """The spec's REST examples: a JSON tensor (flat or nested), an id echoed back."""
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["name"] == "yolov1-service"
    net = client.get("/v2/models/yolov1").json()["inputs"][0]["name"]
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    flat = {
        "id": "42",
        "inputs": [{"name": net, "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "data": x.ravel().tolist()}],
        "outputs": [{"name": "grid"}],
    }  # fmt: skip
    r = client.post("/v2/models/yolov1/infer", json=flat)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "42" and body["model_name"] == "yolov1"
    out = body["outputs"][0]
    assert out["name"] == "grid" and out["datatype"] == "FP32" and out["shape"] == [1, 7, 7, 15]
    assert len(out["data"]) == 7 * 7 * 15
    nested = {"inputs": [{**flat["inputs"][0], "data": x.tolist()}]}
    r2 = client.post("/v2/models/yolov1/versions/1/infer", json=nested).json()
    np.testing.assert_allclose(r2["outputs"][0]["data"], out["data"], atol=1e-6)
    image = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                         "data": [_b64(_sample(1).encoded)]}]}  # fmt: skip
    assert client.post("/v2/models/yolov1/infer", json=image).json()["outputs"][0]["shape"] == [
        1, 7, 7, 15,
    ]  # fmt: skip
    for body, status, words in [
        ({"inputs": []}, 400, "non-empty"),
        ({"inputs": [{**flat["inputs"][0], "data": [1.0, 2.0]}]}, 400, "values for shape"),
        ({"inputs": [{**flat["inputs"][0], "datatype": "FP8"}]}, 400, "unknown datatype"),
        ({"inputs": [{**flat["inputs"][0], "name": "x"}]}, 400, "unknown input"),
        ({"inputs": [{**flat["inputs"][0], "shape": [10**6, 3, 224, 224]}]}, 413, "elements"),
        ({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                      "data": [_b64(b"not an image")]}]}, 400, "image"),
    ]:  # fmt: skip
        r = client.post("/v2/models/yolov1/infer", json=body)
        assert r.status_code == status and words in r.json()["error"], r.text
    r = client.post("/v2/models/yolov1/infer", content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    assert client.get("/v2/models/yolov1/versions/abc").status_code == 404


# --- Label Studio ----------------------------------------------------------------------
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image">
    <Label value="Circle" background="green"/>
    <Label value="square" background="blue"/>
    <Label value="triangle"/>
    <Label value="cross"/>
    <Label value="Airplane"/>
  </RectangleLabels>
</View>"""


def test_label_studio_backend_as_label_studio_calls_it(client, studio):
    # GET /health, then POST /setup when the backend is connected to a project.
    assert client.get("/labelstudio/health").json()["status"] == "UP"
    setup = client.post(
        "/labelstudio/setup",
        json={"project": "3.1732000000", "schema": LABEL_CONFIG, "hostname": "http://x",
              "access_token": "abc", "model_version": None, "extra_params": None},
    )  # fmt: skip
    assert setup.status_code == 200 and setup.json()["model_version"] == "default-v1"
    # The versions Label Studio lists for the project (its ML settings' version menu).
    assert client.get("/labelstudio/versions").json() == {"versions": ["default-v1"]}
    s = _sample(5)
    task = {
        "id": 9,
        "data": {"image": "/data/upload/3/task.jpg"},
        "meta": {},
        "created_at": "2026-11-28T10:00:00.000000Z",
        "updated_at": "2026-11-28T10:00:00.000000Z",
        "is_labeled": False,
        "overlap": 1,
        "annotations": [],
        "predictions": [],
        "project": 3,
    }
    body = {
        "tasks": [
            task,
            {**task, "id": 10, "data": {"image": "data:image/jpeg;base64," + _b64(s.encoded)}},
        ],
        "model_version": "default-v1",
        "project": "3.1732000000",
        "label_config": LABEL_CONFIG,
        "params": {"login": None, "password": None, "context": None},
    }
    r = client.post("/labelstudio/predict", json=body)
    assert r.status_code == 200, (r.text, studio.requests)
    results = r.json()["results"]
    # The same picture, once as Label Studio's uploaded file and once as a data URL.
    assert len(results) == 2 and len(results[0]["result"]) == len(results[1]["result"])
    assert ("/data/upload/3/task.jpg", "Token ls-token") in studio.requests
    ref = client.post("/v1/detect", files={"image": ("a.jpg", s.encoded)}).json()
    names = {"circle": "Circle", "square": "square", "triangle": "triangle", "cross": "cross"}
    want = [d for d in ref["detections"] if d["class_name"] in names]
    pred = results[1]
    assert pred["model_version"] == "default-v1" and len(pred["result"]) == len(want) >= 2
    w, h = ref["image"]["width"], ref["image"]["height"]
    for region, d in zip(pred["result"], want, strict=True):
        v, b = region["value"], d["box"]
        assert region["type"] == "rectanglelabels" and region["from_name"] == "label"
        assert region["to_name"] == "image" and v["rectanglelabels"] == [names[d["class_name"]]]
        assert (region["original_width"], region["original_height"]) == (w, h)
        assert v["x"] == pytest.approx(100 * b["x1"] / w) and v["y"] == pytest.approx(
            100 * b["y1"] / h
        )
        assert v["width"] == pytest.approx(100 * (b["x2"] - b["x1"]) / w)
        assert v["height"] == pytest.approx(100 * (b["y2"] - b["y1"]) / h)
        assert 0 <= v["x"] <= 100 and region["score"] == pytest.approx(d["confidence"])
    assert pred["score"] == pytest.approx(np.mean([r["score"] for r in pred["result"]]))


def test_label_studio_training_is_off_unless_set(client):
    body = {"action": "START_TRAINING", "project": {"id": 3, "label_config": LABEL_CONFIG}}
    r = client.post("/labelstudio/webhook", json=body)
    assert r.status_code == 403 and "YOLOV1_LABELSTUDIO_TRAIN" in r.text, r.text


@pytest.mark.parametrize(
    "change, words",
    [
        ({"label_config": "<View><Image name='i' value='$image'/></View>"}, "no <RectangleLabels>"),
        ({"label_config": "<View"}, "not valid XML"),
        ({"tasks": [{"id": 1, "data": {"img": "x"}}]}, "no image at 'image'"),
        ({"tasks": [{"id": 1, "data": {"image": "http://10.0.0.1/a.jpg"}}]}, "not in YOLOV1_IMAGE"),
        ({"tasks": []}, "at least 1"),
        ({"params": {"conf_threshold": "high"}}, "params.conf_threshold must be a number"),
        ({"params": {"conf_threshold": 2}}, "params.conf_threshold must be a number"),
    ],
)
def test_label_studio_bad_requests_say_why(client, change, words):
    body = {"tasks": [{"id": 1, "data": {"image": "/data/upload/3/task.jpg"}}],
            "label_config": LABEL_CONFIG, **change}  # fmt: skip
    r = client.post("/labelstudio/predict", json=body)
    assert 400 <= r.status_code < 500 and words in r.text, r.text


def test_label_studio_personal_access_token_is_exchanged_for_access_tokens():
    # Label Studio 1.20+ turns legacy tokens off by default; what a user copies from
    # Account & Settings is a personal access token, refused on its own as a credential.
    pat = _jwt("refresh", time.time() + 10**8)
    studio = ImageHost({"/data/upload/4/t.jpg": _sample(5).encoded}, pat=pat)
    server = Server({"YOLOV1_MODEL_PATH": str(DEFAULT_MODEL),
                     "YOLOV1_LABELSTUDIO_URL": studio.url + "/",
                     "YOLOV1_LABELSTUDIO_API_KEY": pat})  # fmt: skip
    task = {"id": 1, "data": {"image": "/data/upload/4/t.jpg"}}
    body = {"tasks": [task, {**task, "id": 2}], "label_config": LABEL_CONFIG}
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as c:
            studio.refuse_refresh = True  # a revoked token: said, not a 500
            r = c.post("/labelstudio/predict", json={**body, "tasks": [task]})
            assert r.status_code == 422 and "Label Studio refused" in r.text, r.text
            studio.refuse_refresh = False
            for _ in range(2):
                r = c.post("/labelstudio/predict", json=body)
                assert r.status_code == 200, r.text
                assert [len(p["result"]) > 0 for p in r.json()["results"]] == [True, True]
    finally:
        server.stop()
        studio.close()
    refreshes = [b for path, b in studio.requests if path == "/api/token/refresh/"]
    # One refused, then one access token for both requests: it is valid for minutes.
    assert refreshes == [{"refresh": pat}] * 2 and len(studio.issued) == 1
    reads = [a for path, a in studio.requests if path == "/data/upload/4/t.jpg"]
    assert reads == [f"Bearer {studio.issued[0]}"] * 4


# --- the Python client -----------------------------------------------------------------
def test_python_client_detect_and_loss(server, client, tmp_path):
    s = _sample(1)
    path = tmp_path / "a.jpg"
    path.write_bytes(s.encoded)
    with Client(server.url) as c:
        one = c.detect(path, include_raw=True)
        assert (
            one["detections"]
            == client.post("/v1/detect", files={"image": ("a.jpg", s.encoded)}).json()["detections"]
        )
        two = c.detect([s.encoded, path], conf_threshold=0.5, classes=["circle", "square"])
        assert len(two) == 2 and all(
            d["class_name"] in ("circle", "square") for d in two[0]["detections"]
        )
        coco = c.detect(s.encoded, format="coco")
        assert len(coco) == len(one["detections"])
        assert c.detect(s.encoded, format="image")[:8] == b"\x89PNG\r\n\x1a\n"
        grid = np.asarray(one["raw"], np.float32)[None]
        labels = [[{"class_id": int(r[0]), "box": [float(v) for v in r[1:]]} for r in s.labels]]
        as_json = c.loss(grid.tolist(), labels)
        as_npy = c.loss(grid, labels)
        assert as_json["loss"] == pytest.approx(as_npy["loss"], rel=1e-6) and as_npy["loss"] > 0
        with pytest.raises(APIError) as e:
            c.detect(b"not an image")
        assert e.value.status == 400 and "image" in str(e.value.detail)
        with pytest.raises(APIError) as e:
            c.loss(grid, [[{"class_id": 99, "box": [0.5, 0.5, 0.1, 0.1]}]])
        assert e.value.status == 422
        with pytest.raises(APIError) as e:
            c.submit_job({"dataset": {"format": "shapes"}})
        assert e.value.status == 503 and "Redis" in str(e.value.detail)
        assert c.models()["active"]["version"] == 1 and c.ready()["status"] == "ready"


def test_client_imports_neither_torch_nor_fastapi():
    import subprocess
    import sys

    code = (
        "import sys, yolov1_client; "
        "print(sorted(m for m in ('torch', 'fastapi', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- metrics and the schema ------------------------------------------------------------
def test_metrics_have_units_prefixes_and_model_labels(client):
    client.post("/v1/detect", files={"image": ("a.jpg", _sample(1).encoded)})
    client.post("/v1/detect", json={"images": [{"base64": "!"}]})
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ours = [n for n in families if not n.startswith(("python_", "process_"))]
    assert ours and all(n.startswith("yolov1_") for n in ours), ours
    for name in ("yolov1_http_request_duration_seconds", "yolov1_inference_seconds",
                 "yolov1_inference_queue_seconds"):  # fmt: skip
        assert families[name].type == "histogram"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}  # fmt: skip
    model = (("model", "default"), ("version", "1"))
    assert samples[("yolov1_detect_images_total", model)] >= 1
    assert samples[("yolov1_inference_batch_size_count", model)] >= 1
    assert samples[("yolov1_inference_queue_seconds_count", model)] >= 1
    requests = {k[1]: v for k, v in samples.items() if k[0] == "yolov1_http_requests_total"}
    ok = (("code", "200"), ("method", "POST"), ("route", "/v1/detect"), ("status_class", "2xx"))
    bad = (("code", "422"), ("method", "POST"), ("route", "/v1/detect"), ("status_class", "4xx"))
    assert requests[ok] >= 1 and requests[bad] >= 1
    assert samples[("yolov1_http_requests_in_flight", ())] == 1  # this scrape itself
    info = [k for k in samples if k[0] == "yolov1_model_info"]
    assert dict(info[0][1])["provider"] == "CPUExecutionProvider"


def test_openapi_documents_every_protocol(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}",
              "/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}",
              "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
              "/labelstudio/health", "/labelstudio/setup", "/labelstudio/predict"):  # fmt: skip
        assert p in paths, p
    detect = paths["/v1/detect"]["post"]
    assert "application/json" in detect["requestBody"]["content"]
    assert "DetectRequest" in spec["components"]["schemas"]
    fmt = next(p for p in detect["parameters"] if p["name"] == "format")
    assert "coco" in json.dumps(fmt)
    assert "PredictRequest" in spec["components"]["schemas"]


def test_a_body_larger_than_any_image_is_refused_before_it_is_read(client):
    big = io.BytesIO(b"x" * int(3 * LIMIT_MB * 1024 * 1024))
    r = client.post(
        "/v1/detect", content=big.getvalue(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_every_series_is_documented_and_the_dashboard_uses_only_real_ones(client):
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "metrics.md").read_text()
    text = client.get("/metrics").text
    served = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(text)
        if f.name.startswith("yolov1_")
    }
    documented = set(re.findall(r"`(yolov1_[a-z_]+)`", doc))
    # the job series appear only with Redis (tests/test_worker.py scrapes them)
    assert served <= documented and documented - served <= {
        "yolov1_jobs", "yolov1_redis_up", "yolov1_training_images_per_second"
    }  # fmt: skip
    dash = json.loads((root / "docs" / "grafana" / "yolov1-service.json").read_text())
    used = {
        re.sub(r"_(bucket|sum|count)$", "", m)
        for p in dash["panels"]
        for t in p["targets"]
        for m in re.findall(r"yolov1_[a-z_]+", t["expr"])
    }
    assert used and used <= documented
