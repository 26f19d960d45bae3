"""ONNX Runtime inference with the shared pre- and post-processing (NumPy, no torch).

Used by ``yolov1 detect``/``yolov1 val`` and by the API, so all of them see
the same numbers.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.boxes import decode_predictions
from model.config import ModelConfig
from model.preprocess import resize_uint8, to_input

log = logging.getLogger(__name__)

METADATA_KEY = "yolov1_config"
# Where a model carries no calibration (``yolov1 calibrate``), detections need this score.
DEFAULT_CONF_THRESHOLD = 0.2


def sidecar_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def read_metadata(onnx_path: str | Path, session: Any | None = None) -> dict[str, Any]:
    """The model's metadata: the sidecar JSON if present, else the ONNX metadata."""
    side = sidecar_path(onnx_path)
    if side.exists():
        return json.loads(side.read_text())
    if session is None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ValueError(f"{onnx_path}: no {METADATA_KEY} metadata and no sidecar JSON")
    return json.loads(props[METADATA_KEY])


def default_providers() -> list[str]:
    """CUDA first when this ONNX Runtime build has it, then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@functools.cache
def preload_gpu_libraries() -> None:
    """Load CUDA and cuDNN from the ``nvidia-*`` wheels beside ``onnxruntime-gpu``
    (``pip install onnxruntime-gpu[cuda,cudnn]``) before a GPU session starts, as ONNX
    Runtime documents for a process that does not ``import torch`` first (the API never
    does): where its CUDA provider cannot find them it falls back to the CPU with only a
    log line. (1.31 found them on its own on an H200; loading them again costs nothing.)
    ONNX Runtime before 1.21 has no ``preload_dlls``."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # a broken install: the session's own error says more
            log.warning("onnxruntime.preload_dlls() failed: %s", exc)


@dataclass
class Detection:
    class_id: int
    class_name: str
    confidence: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the original image's pixels


class OnnxDetector:
    """A YOLOv1 ONNX model and its config, ready to run on images."""

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        spin: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(onnx_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            # Idle ORT threads spin-wait by default, taking the cores that decoding,
            # the event loop and other processes need between runs.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = providers or default_providers()
        if any(p in GPU_PROVIDERS for p in providers):
            preload_gpu_libraries()
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        self.metadata = read_metadata(self.path, self.session)
        self.cfg = ModelConfig.from_dict(self.metadata["model_config"])
        self.provider = self.session.get_providers()[0]
        if self.provider != providers[0]:
            log.warning("%s: asked for %s, running on %s", self.path, providers[0], self.provider)
        self.input_name = self.session.get_inputs()[0].name
        expected = ("N", self.cfg.S, self.cfg.S, self.cfg.channels)
        out_shape = self.session.get_outputs()[0].shape
        if len(out_shape) != 4 or tuple(out_shape[1:]) != expected[1:]:
            raise ValueError(
                f"{self.path}: output shape {out_shape} does not match config {expected}"
            )

    @property
    def conf_threshold(self) -> float:
        """The score at which this model's detections reached the precision it was
        calibrated for (``metadata["calibration"]``), else ``DEFAULT_CONF_THRESHOLD``."""
        cal = self.metadata.get("calibration") or {}
        return float(cal.get("conf_threshold", DEFAULT_CONF_THRESHOLD))

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """RGB image -> ``(size, size, 3)`` uint8 at the network's input size."""
        return resize_uint8(img, self.cfg.input_size)

    def run(self, batch_uint8: np.ndarray) -> np.ndarray:
        """``(N, size, size, 3)`` uint8 -> raw grid ``(N, S, S, 5B + C)`` float32."""
        x = to_input(batch_uint8, self.cfg)
        return self.session.run(None, {self.input_name: x})[0]

    def run_tensor(self, x: np.ndarray) -> np.ndarray:
        """The network input as it is, ``(N, 3, size, size)`` float32 -> ``(N, S, S, 5B + C)``."""
        return self.session.run(None, {self.input_name: x})[0]

    def postprocess(
        self,
        grid: np.ndarray,
        width: int,
        height: int,
        *,
        conf_threshold: float | None = None,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        classes: list[int] | None = None,
    ) -> list[Detection]:
        """One image's ``(S, S, 5B + C)`` grid -> detections in that image's pixels
        (``conf_threshold`` None: the model's own, :attr:`conf_threshold`)."""
        c = self.cfg
        if conf_threshold is None:
            conf_threshold = self.conf_threshold
        d = decode_predictions(
            grid,
            S=c.S,
            B=c.B,
            C=c.C,
            conf_threshold=conf_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
            classes=classes,
        )
        scale = np.array([width, height, width, height], dtype=np.float64)
        return [
            Detection(int(k), c.class_names[int(k)], float(s), tuple((b * scale).tolist()))
            for b, s, k in zip(d["boxes"], d["scores"], d["class_ids"], strict=True)
        ]

    def detect(self, images: list[Image.Image], **kwargs: Any) -> list[list[Detection]]:
        grids = self.run(np.stack([self.preprocess(im) for im in images]))
        return [
            self.postprocess(g, im.width, im.height, **kwargs)
            for g, im in zip(grids, images, strict=True)
        ]


def draw_detections(img: Image.Image, detections: list[Detection]) -> Image.Image:
    """A copy of ``img`` with boxes, class names and scores drawn."""
    from PIL import ImageDraw

    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    palette = [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
    ]
    for d in detections:
        colour = palette[d.class_id % len(palette)]
        draw.rectangle(d.box, outline=colour, width=max(2, round(min(img.size) / 200)))
        text = f"{d.class_name} {d.confidence:.2f}"
        x1, y1 = d.box[0], max(0.0, d.box[1] - 12)
        tb = draw.textbbox((x1, y1), text)
        draw.rectangle(tb, fill=colour)
        draw.text((x1, y1), text, fill=(0, 0, 0))
    return out
