"""The fine-tuning logic called directly: head rebuild by class name, registry."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from model.config import FINETUNE, JobSpec, ModelConfig
from model.finetune import adapt_head, run_finetune
from model.networks import build_model
from model.registry import ModelStore, RegistryError
from support.procs import DEFAULT_MODEL


def test_adapt_head_matches_classes_by_name():
    for arch, size in (("tiny-yolov1", 64), ("fast-yolov1", 64)):
        old = ModelConfig(
            arch=arch, input_size=size, S=2, C=3, class_names=["a", "b", "c"], width=8
        )
        new = ModelConfig(arch=arch, input_size=size, S=2, C=2, class_names=["c", "z"], width=8)
        base = build_model(old).state_dict()
        state, rebuilt = adapt_head(base, old, new)
        assert rebuilt
        model = build_model(new)
        model.load_state_dict(state)  # the shapes fit the new network
        x = torch.randn(1, 3, size, size)
        m_old = build_model(old).eval()
        m_old.load_state_dict(base)
        model.eval()
        with torch.no_grad():
            y_old, y_new = m_old(x), model(x)
        assert torch.allclose(y_new[..., :10], y_old[..., :10], atol=1e-5)  # boxes kept
        assert torch.allclose(y_new[..., 10], y_old[..., 12], atol=1e-5)  # "c" moved
        same, rebuilt = adapt_head(base, old, old)
        assert not rebuilt and all(torch.equal(same[k], base[k]) for k in base)
        # As many classes as before but not the same: matched by name all the same.
        swapped = ModelConfig(
            arch=arch, input_size=size, S=2, C=3, class_names=["c", "z", "a"], width=8
        )
        state, rebuilt = adapt_head(base, old, swapped)
        m_new = build_model(swapped).eval()
        m_new.load_state_dict(state)
        with torch.no_grad():
            y_new = m_new(x)
        assert rebuilt and torch.allclose(y_new[..., 10], y_old[..., 12], atol=1e-5)
        assert torch.allclose(y_new[..., 12], y_old[..., 10], atol=1e-5)


def test_class_names_match_whatever_their_case_and_separators():
    """A data set's ``Circle`` and ``traffic_light`` are the model's ``circle`` and
    ``traffic light``: their outputs carry over, evaluation scores them as known."""
    from model.config import class_key
    from model.evaluate import class_columns
    from model.finetune import channel_map, known_classes

    assert class_key(" Traffic_Light ") == class_key("traffic-light") == "traffic light"
    old = ModelConfig(S=2, C=3, class_names=["circle", "traffic light", "star"])
    new = ModelConfig(S=2, C=3, class_names=["Star", "hexagon", "CIRCLE"])
    src, dst = channel_map(old, new)
    assert src[10:] == [12, 10] and dst[10:] == [10, 12]  # star, circle; hexagon is new
    assert known_classes(new.class_names, old.class_names) == [0, 2]
    assert class_columns(old.class_names, ["Traffic_Light", "kite"]).tolist() == [1, -1]


def test_blend_moves_known_weights_back_and_keeps_new_outputs():
    from model.finetune import blend, output_keys

    old = ModelConfig(input_size=64, S=2, C=2, class_names=["a", "b"], width=8)
    new = ModelConfig(input_size=64, S=2, C=3, class_names=["b", "new", "a"], width=8)
    start, _ = adapt_head(build_model(old).state_dict(), old, new)
    trained = {k: v + 1.0 if v.dtype.is_floating_point else v + 1 for k, v in start.items()}
    out = blend(trained, start, 0.25, old, new)
    weight, bias = output_keys(start)
    assert (weight, bias) == ("head.3.weight", "head.3.bias")  # the 1x1 convolution
    for k, v in out.items():
        if not v.dtype.is_floating_point:
            assert torch.equal(v, trained[k]), k  # counters (batch-norm's) as trained
        elif k not in (weight, bias):
            assert torch.allclose(v, start[k] + 0.75), k
    fresh = 5 * new.B + 1  # "new": no base to move back to
    assert torch.equal(out[bias][fresh], trained[bias][fresh])
    assert torch.allclose(out[bias][: 5 * new.B], start[bias][: 5 * new.B] + 0.75)
    assert torch.allclose(out[weight][5 * new.B + 2], start[weight][5 * new.B + 2] + 0.75)


def test_every_training_field_of_a_job_is_a_field_of_the_api_request():
    # A hyperparameter the trainer takes (jobs.spec passes them through by name) and the
    # API's schema lacks could not be set, nor be seen in the console's "All options".
    from app.schemas import JobRequest
    from jobs.spec import TRAIN_FIELDS

    fields = JobRequest.model_fields
    assert [f for f in TRAIN_FIELDS if f not in fields] == []
    assert {f: fields[f].default for f in TRAIN_FIELDS} == {
        f: getattr(FINETUNE, f) for f in TRAIN_FIELDS
    }


def test_registry_atomic_versions_checksums_and_active(tmp_path):
    store = ModelStore(tmp_path)
    assert store.ensure_default(DEFAULT_MODEL) == 1
    assert store.versions() == [1] and store.active_version() == 1
    meta = store.verify(1)
    assert set(meta["sha256"]) >= {"model.onnx", "model.json"}
    v = store.register(
        {"model.onnx": DEFAULT_MODEL, "model.json": DEFAULT_MODEL.with_suffix(".json")},
        {"name": "x", "parent": 1},
    )
    assert v == 2 and store.meta(2)["parent"] == 1
    assert not [p for p in (tmp_path / "versions").iterdir() if p.name.startswith(".tmp")]
    store.set_active(2)
    assert store.active_version() == 2
    with open(store.onnx_path(2), "r+b") as f:
        f.seek(100)
        f.write(b"corrupt")
    with pytest.raises(RegistryError, match="checksum"):
        store.verify(2)
    with pytest.raises(RegistryError, match="does not exist"):
        store.set_active(9)


def test_a_new_release_of_the_default_model_is_registered_and_served(tmp_path):
    # A store seeded by an earlier release: the shipped model's files have changed since.
    from model.export import update_metadata

    store = ModelStore(tmp_path / "store")
    assert store.ensure_default(DEFAULT_MODEL) == 1
    assert store.ensure_default(DEFAULT_MODEL) == 1 and store.versions() == [1]
    release = tmp_path / "release"
    release.mkdir()
    for p in DEFAULT_MODEL.parent.iterdir():
        shutil.copyfile(p, release / p.name)
    update_metadata(release / "model.onnx", release_note="retrained")
    # It still served the shipped model: the new one is served, the old one kept.
    assert store.ensure_default(release / "model.onnx") == 2
    assert store.verify(2)["source"] == store.verify(1)["source"] == "shipped default model"
    assert store.ensure_default(release / "model.onnx") == 2 and store.versions() == [1, 2]
    # A version someone trained or chose stays served; the release is only registered.
    mine = store.register(
        {"model.onnx": DEFAULT_MODEL, "model.json": DEFAULT_MODEL.with_suffix(".json")},
        {"name": "mine", "parent": 1},
    )
    store.set_active(mine)
    update_metadata(release / "model.onnx", release_note="retrained again")
    assert store.ensure_default(release / "model.onnx") == mine
    assert store.versions() == [1, 2, 3, 4] and store.verify(4)["source"] == "shipped default model"
    # A release pruned away is not registered again at the next start.
    assert store.prune(0) == [2, 4] and store.versions() == [1, 3]
    assert store.ensure_default(release / "model.onnx") == mine and store.versions() == [1, 3]


def test_run_finetune_registers_a_version_with_a_rebuilt_head(tmp_path):
    from model.shapes import write_yolo_dataset

    store = ModelStore(tmp_path / "store")
    store.ensure_default(DEFAULT_MODEL)
    data = tmp_path / "data"
    write_yolo_dataset(str(data), 12, seed=5)
    # Rename the classes: two keep their names, three are new.
    (data / "data.yaml").write_text("names: [circle, square, hexagon, blob, ring]\n")
    spec = JobSpec(
        dataset_format="yolo",
        dataset_path=data,
        val_fraction=0.25,
        int8=True,
        train=replace(FINETUNE, epochs=3, batch_size=4, augment=False, keep_base=0.1),
    )
    seen = []
    out = run_finetune(spec, tmp_path / "run", store, progress=seen.append)
    # Epoch 0 is the base model on the same split: it knows none of the new classes.
    epochs = [p["epoch_metrics"] for p in seen if "epoch_metrics" in p]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert out.baseline_map50 == epochs[0]["val_map"]
    assert out.val_map50 > out.baseline_map50, out
    assert out.model_version == 2 and out.head_rebuilt is True and not out.activated
    meta = store.verify(2)
    assert meta["parent"] == 1 and meta["dataset"]["classes"][2] == "hexagon"
    side = json.loads((store.path(2) / "model.json").read_text())
    assert side["model_config"]["class_names"] == ["circle", "square", "hexagon", "blob", "ring"]
    # 3 validation images are too few to calibrate on: the base version's threshold stays.
    base_cal = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())["calibration"]
    assert side["calibration"]["conf_threshold"] == base_cal["conf_threshold"]
    assert side["calibration"]["inherited"].startswith("from the base version")
    assert meta["calibration"] == side["calibration"]
    assert any("epoch_metrics" in p for p in seen)
    # int8 asked for: registered beside the fp32 model, or refused with the figures.
    if meta["int8"] == "registered":
        assert {"model.int8.onnx", "model.int8.json"} <= set(meta["sha256"])
        q = json.loads((store.path(2) / "model.int8.json").read_text())["quantization"]
        assert q["fp32_map50"] - q["int8_map50"] <= 0.01
    else:
        assert meta["int8"].startswith("not registered: int8 mAP@0.5")
        assert not store.onnx_path(2, "int8").exists()
    # The kept epoch was blended back toward the base (keep_base), and the reason says so.
    assert "moved 10% of the way back to the base model's" in out.reason
    # The same job again, in another store: the same weights, the new classes' too (their
    # starting weights are drawn from the job's seed, not from torch's per-process one).
    again = ModelStore(tmp_path / "again")
    again.ensure_default(DEFAULT_MODEL)
    run_finetune(replace(spec, int8=False), tmp_path / "run2", again)
    assert again.verify(2)["int8"] == "not asked for" and not again.onnx_path(2, "int8").exists()
    a = torch.load(store.path(2) / "model.pt", weights_only=False)["model"]
    b = torch.load(again.path(2) / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_prune_keeps_the_newest_the_active_and_its_parent(tmp_path):
    store = ModelStore(tmp_path)
    store.ensure_default(DEFAULT_MODEL)
    files = {"model.onnx": DEFAULT_MODEL, "model.json": DEFAULT_MODEL.with_suffix(".json")}
    for parent in (1, 2, 3, 4, 5):
        store.register(files, {"name": f"v{parent + 1}", "parent": parent})
    store.set_active(3)  # whose parent is 2
    assert store.prune(2) == [1, 4]
    assert store.versions() == [2, 3, 5, 6] and store.active_version() == 3
    assert store.register(files, {"name": "next"}) == 7


def test_a_new_version_is_calibrated_on_the_jobs_validation_split(tmp_path):
    import numpy as np

    from model.data import shapes_dataset, to_arrays
    from model.finetune import calibrate_version
    from model.infer import OnnxDetector
    from model.train import Data

    model = tmp_path / "model.onnx"
    model.write_bytes(DEFAULT_MODEL.read_bytes())
    model.with_suffix(".json").write_bytes(DEFAULT_MODEL.with_suffix(".json").read_bytes())
    X, L = to_arrays(shapes_dataset(40, 17, "medium"), 224)
    data = Data(X[:0], [], X, L, [np.zeros(len(lab), bool) for lab in L])
    cal = calibrate_version(model, data, {"conf_threshold": 0.99})
    assert cal["data"] == "the job's validation split" and cal["images"] == 40
    assert cal["precision"] >= 0.9 and cal["conf_threshold"] < 0.99
    assert OnnxDetector(model).conf_threshold == cal["conf_threshold"]
    # Out of reach: the base version's threshold, said to be inherited.
    cal = calibrate_version(model, data, {"conf_threshold": 0.3}, precision=1.01)
    assert cal["conf_threshold"] == 0.3 and "not reached" in cal["inherited"]


def test_a_gain_within_one_validation_objects_worth_is_not_promoted():
    from pathlib import Path

    from model.finetune import decide
    from model.train import EpochMetrics, TrainResult

    def result(base: float, best: float) -> TrainResult:
        history = [EpochMetrics(0, {}, val_map=base), EpochMetrics(1, {}, val_map=best)]
        return TrainResult(Path("best.pt"), Path("last.pt"), history, best, 1)

    spec = JobSpec(dataset_format="shapes", auto_activate=True)
    # 40 validation objects: one hit or miss moves mAP by about 1/40 = 0.025.
    register, activate, why = decide(result(0.8886, 0.9048), spec, 40)
    assert not register and not activate and "too little to trust" in why and "40 objects" in why
    assert decide(result(0.8886, 0.9048), spec, 400)[:2] == (True, True)
    assert decide(result(0.55, 0.81), spec, 40)[:2] == (True, True)
    assert decide(result(0.9, 0.8), spec, 400)[0] is False
    # A job keeps its last epoch (the default): one that beat the base model on the way
    # but not at the end registers nothing, and says both.
    history = [EpochMetrics(0, {}, val_map=0.8), EpochMetrics(1, {}, val_map=0.85),
               EpochMetrics(2, {}, val_map=0.78)]  # fmt: skip
    assert spec.train.keep == "last"
    register, _, why = decide(TrainResult(Path("last.pt"), Path("last.pt"), history, 0.78, 2),
                              spec, 400)  # fmt: skip
    assert not register and "last epoch 2" in why and "epoch 1 read 0.8500 on the way" in why
    assert "stopped early, at epoch 2 of 80" in why  # spec.train.epochs is 80
