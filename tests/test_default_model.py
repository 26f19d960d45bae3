"""The shipped default model: it loads, its metadata is complete, and it detects."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import torch

from model.cli import DATA_SEED_TEST, evaluate_onnx
from model.config import ModelConfig
from model.data import shapes_dataset
from model.networks import build_model
from model.shapes import CLASS_NAMES
from support.procs import DEFAULT_MODEL


def test_files_metadata_and_size():
    folder = DEFAULT_MODEL.parent
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total <= 20 * 1024 * 1024
    side = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    proto = onnx.load(str(DEFAULT_MODEL))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    embedded = json.loads({p.key: p.value for p in proto.metadata_props}["yolov1_config"])
    assert embedded["model_config"] == side["model_config"]
    cfg = ModelConfig.from_dict(side["model_config"])
    assert cfg.class_names == CLASS_NAMES and (cfg.S, cfg.B, cfg.C) == (7, 2, 5)
    assert cfg.layout == "cells" and len(cfg.mean) == 3 and len(cfg.std) == 3
    assert side["input"]["shape"][1:] == [3, cfg.input_size, cfg.input_size]
    assert side["export"]["max_abs_diff_vs_torch"] <= 1e-4
    sess = ort.InferenceSession(str(DEFAULT_MODEL), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    ckpt = torch.load(DEFAULT_MODEL.with_suffix(".pt"), weights_only=False)
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])  # rebuilt from its own metadata


def test_detects_held_out_shapes():
    # A quick check on 80 held-out images; README reports the 500-image number.
    ds = shapes_dataset(80, DATA_SEED_TEST)
    assert evaluate_onnx(str(DEFAULT_MODEL), ds).map >= 0.8
