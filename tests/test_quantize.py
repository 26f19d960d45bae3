"""The int8 variant: made by calibration, verified against fp32 on held-out data or
refused, carried by the registry and served when YOLOV1_PRECISION=int8."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest

from model.cli import DATA_SEED_TEST, evaluate_onnx
from model.data import shapes_dataset
from model.quantize import QuantizationError, quantize_int8
from model.registry import ModelStore
from model.shapes import make_sample, sample_seed
from support.procs import DEFAULT_MODEL, ROOT, Server

SHIPPED_INT8 = DEFAULT_MODEL.with_name("model.int8.onnx")


@pytest.fixture(scope="module")
def held_out():
    return shapes_dataset(120, DATA_SEED_TEST)


def test_the_shipped_int8_model_keeps_the_fp32_maps(held_out):
    meta = json.loads(SHIPPED_INT8.with_suffix(".json").read_text())
    q = meta["quantization"]
    assert q["fp32_map50"] - q["int8_map50"] <= 0.01 and q["calibration_images"] == 64
    fp32, int8 = (
        evaluate_onnx(str(DEFAULT_MODEL), held_out).map,
        evaluate_onnx(str(SHIPPED_INT8), held_out).map,
    )
    assert fp32 - int8 <= 0.01, (fp32, int8)
    assert SHIPPED_INT8.stat().st_size < DEFAULT_MODEL.stat().st_size / 3


def _int8_weights(path):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [
        inits[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0)).dtype == np.int8
    ]


def test_int8_weights_fit_in_7_bits_so_every_x86_cpu_computes_the_same():
    # AVX2 without VNNI sums uint8 x int8 products in pairs into int16, which
    # saturates past 32767: 255 * 64 * 2 fits, 255 * 127 * 2 does not.
    weights = _int8_weights(SHIPPED_INT8)
    assert len(weights) >= 8
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64


def test_quantize_writes_a_verified_variant(tmp_path):
    out = tmp_path / "model.int8.onnx"
    r = subprocess.run(
        [sys.executable, "-m", "model.cli", "quantize", str(DEFAULT_MODEL), "--out", str(out),
         "--calib-images", "64", "--val-images", "120", "--max-map-drop", "0.02"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.exists() and "int8" in r.stdout
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in _int8_weights(out)) <= 64
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["quantization"]["calibration_images"] == 64
    assert (
        side["model_config"]
        == json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())["model_config"]
    )


def test_a_variant_that_loses_too_much_is_refused_and_not_written(tmp_path, held_out):
    # Calibrated on blank images, the activation ranges are wrong for real ones.
    blank = np.zeros((8, 224, 224, 3), np.uint8)
    out = tmp_path / "model.int8.onnx"
    with pytest.raises(QuantizationError, match=r"int8 mAP@0.5 0\.[0-9]+ against fp32 0\.[0-9]+"):
        quantize_int8(DEFAULT_MODEL, blank, lambda p: evaluate_onnx(str(p), held_out).map, out=out)
    assert not out.exists()


def test_the_api_serves_the_int8_variant_when_asked(tmp_path):
    store = ModelStore(tmp_path / "store")
    v = store.ensure_default(DEFAULT_MODEL)
    assert store.onnx_path(v, "int8").exists()  # the registry carries it, checksummed
    assert "model.int8.onnx" in store.verify(v)["sha256"]
    jpeg = make_sample(sample_seed(99, 1), "easy").encoded
    answers = {}
    for precision in ("fp32", "int8"):
        s = Server({"YOLOV1_MODEL_PATH": str(DEFAULT_MODEL), "YOLOV1_PRECISION": precision,
                    "YOLOV1_MODEL_STORE": str(tmp_path / "store")})  # fmt: skip
        try:
            s.wait_ready()
            active = httpx.get(f"{s.url}/v1/models").json()["active"]
            assert active["precision"] == precision
            assert (active["quantization"] is not None) == (precision == "int8")
            answers[precision] = httpx.post(
                f"{s.url}/v1/detect", files={"image": ("a.jpg", jpeg)}
            ).json()["detections"]
        finally:
            s.stop()
    # auto: both timed at load; int8 serves only where it was AUTO_INT8_GAIN faster here.
    s = Server({"YOLOV1_MODEL_PATH": str(DEFAULT_MODEL), "YOLOV1_PRECISION": "auto",
                "YOLOV1_MODEL_STORE": str(tmp_path / "store")})  # fmt: skip
    try:
        s.wait_ready()
        active = httpx.get(f"{s.url}/v1/models").json()["active"]
        gain = float(re.search(r"\(([0-9.]+)x;", active["precision_reason"]).group(1))
        assert active["precision"] == ("int8" if gain >= 1.1 else "fp32"), active
        r = httpx.post(f"{s.url}/v1/detect", files={"image": ("a.jpg", jpeg)})
        assert r.status_code == 200 and r.json()["model"]["version"] == v
    finally:
        s.stop()
    fp32, int8 = answers["fp32"], answers["int8"]
    assert [d["class_name"] for d in fp32] == [d["class_name"] for d in int8] and fp32
    for a, b in zip(fp32, int8, strict=True):
        assert (
            abs(a["box"]["x1"] - b["box"]["x1"]) < 8
            and abs(a["confidence"] - b["confidence"]) < 0.1
        )
