"""Training a tiny model, checkpoint resume, ONNX export and its verification."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.config import ModelConfig
from model.data import shapes_dataset, to_arrays
from model.export import ExportMismatchError, export_onnx, load_checkpoint, verify_onnx
from model.infer import OnnxDetector, read_metadata
from model.networks import build_model
from model.preprocess import to_input
from model.shapes import CLASS_NAMES
from model.train import Data, TrainConfig, train

SIZE = 96


@pytest.fixture(scope="module")
def small_data():
    # Eight images with one or two objects each, in different cells of a 3x3 grid.
    ds = shapes_dataset(60, 99)

    def fits(r) -> bool:
        cells = {(min(int(cy * 3), 2), min(int(cx * 3), 2)) for _, cx, cy, _, _ in r.labels}
        return 1 <= len(r.labels) <= 2 and len(cells) == len(r.labels)

    ds.records = [r for r in ds.records if fits(r)][:8]
    X, L = to_arrays(ds, SIZE)
    return X, L


def _cfg():
    return ModelConfig(
        arch="tiny-yolov1",
        input_size=SIZE,
        S=3,
        B=2,
        C=5,
        class_names=list(CLASS_NAMES),
        head_activation="sigmoid",
        width=16,
    )


def test_overfits_a_handful_of_images(small_data, tmp_path):
    # fp32 and one full batch a step: with bf16 kernels or batches of 2-4 (batch-norm
    # statistics of a few images) the run is chaotic, and where it stands after a fixed
    # number of steps depends on the CPU's kernels (AMD vs Intel AMX). In this setting
    # seeds 0-3 all reach mAP 1.0 by epoch 100 of 150 and stay there.
    X, L = small_data
    tc = TrainConfig(
        epochs=150,
        batch_size=len(X),
        optimizer="adamw",
        learning_rate=3e-3,
        warmup_epochs=2,
        augment=False,
        weight_decay=0.0,
        amp=False,
    )
    r = train(_cfg(), tc, Data(X, L, X, L), tmp_path)
    first, last = r.history[0], r.history[-1]
    assert last.train["total"] < 0.02 * first.train["total"]
    maps = [round(h.val_map, 3) for h in r.history]
    assert r.best_map >= 0.95 and last.val_map >= 0.9, maps
    assert (tmp_path / "best.pt").exists() and (tmp_path / "curves.png").exists()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + tc.epochs


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_continues_exactly(small_data, tmp_path, ema_decay):
    from model.train import Cancelled

    X, L = small_data
    tc = TrainConfig(
        epochs=3, batch_size=4, optimizer="sgd", learning_rate=0.01, seed=3, ema_decay=ema_decay
    )
    full = train(_cfg(), tc, Data(X, L, X[:4], L[:4]), tmp_path / "full")
    # The same run, stopped at the first step of epoch 3 (2 steps an epoch) ...
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        train(
            _cfg(),
            tc,
            Data(X, L, X[:4], L[:4]),
            tmp_path / "part",
            should_cancel=lambda: next(calls) == 4,
        )
    # ... and continued from its last checkpoint ends exactly where the full run did.
    resumed = train(
        _cfg(),
        tc,
        Data(X, L, X[:4], L[:4]),
        tmp_path / "part",
        resume=tmp_path / "part" / "last.pt",
    )
    a = torch.load(full.last_checkpoint, weights_only=False)
    b = torch.load(resumed.last_checkpoint, weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    if ema_decay:  # "model" is the average (what is exported), "trained_model" resumes
        assert b["ema_updates"] == 6
        for k in a["trained_model"]:
            assert torch.equal(a["trained_model"][k], b["trained_model"][k]), k
        assert not torch.equal(b["model"]["head.3.weight"], b["trained_model"]["head.3.weight"])
    else:
        assert "trained_model" not in b
    assert resumed.history[-1].train == full.history[-1].train
    assert [h.epoch for h in resumed.history] == [1, 2, 3]


@pytest.mark.parametrize("warmup", [True, False])
def test_weight_average_starts_from_the_weights_unless_warming_up(warmup):
    from model.train import WeightAverage

    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(net.weight, 0.0)
    avg = WeightAverage(net, decay=0.9, warmup=warmup)
    torch.nn.init.constant_(net.weight, 1.0)
    avg.update(net)
    # The first step: with the ramp, decay (1 + 1) / (10 + 1) leaves 2/11 of the start;
    # without it (fine-tuning, where the start is a trained model) 0.9 of it stays.
    kept = 2 / 11 if warmup else 0.9
    assert avg.module.weight.item() == pytest.approx(1 - kept)


def test_a_short_jobs_average_ends_mostly_trained():
    from model.train import average_decay

    job = TrainConfig(ema_decay=0.995, ema_warmup=False)
    # 80 epochs of 10 or of 3 steps (the fine-tuning bench's two cases): as set.
    assert average_decay(job, 800) == average_decay(job, 240) == 0.995
    for steps in (1, 5, 30, 199):  # shorter: what is left of the start is at most 1/e
        assert average_decay(job, steps) ** steps <= math.exp(-1)
    assert average_decay(TrainConfig(ema_decay=0.995), 5) == 0.995  # the ramp does that


def test_cancel_check_stops_training(small_data, tmp_path):
    from model.train import Cancelled

    X, L = small_data
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        train(
            _cfg(),
            TrainConfig(epochs=5, batch_size=2),
            Data(X, L, X, L),
            tmp_path,
            should_cancel=cancel,
        )


def test_export_verifies_and_carries_metadata(small_data, tmp_path):
    X, L = small_data
    tc = TrainConfig(epochs=1, batch_size=4)
    r = train(_cfg(), tc, Data(X, L, X[:2], L[:2]), tmp_path)
    meta = export_onnx(r.best_checkpoint, tmp_path / "m.onnx", real_images=X[:2])
    assert meta["export"]["max_abs_diff_vs_torch"] <= 1e-4
    assert meta["export"]["opset"] >= 17
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["model_config"]["class_names"] == list(CLASS_NAMES)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    embedded = json.loads(sess.get_modelmeta().custom_metadata_map["yolov1_config"])
    assert embedded["model_config"] == side["model_config"]
    # dynamic batch axis
    out = sess.run(None, {"images": to_input(X[:3], _cfg())})[0]
    assert out.shape == (3, 3, 3, 15)
    (tmp_path / "m.json").unlink()  # metadata is still read from the ONNX file itself
    assert read_metadata(tmp_path / "m.onnx")["model_config"]["S"] == 3
    det = OnnxDetector(tmp_path / "m.onnx")
    assert det.provider == "CPUExecutionProvider"


def test_export_verification_catches_a_mismatch(small_data, tmp_path):
    X, L = small_data
    r = train(_cfg(), TrainConfig(epochs=1, batch_size=4), Data(X, L, X[:2], L[:2]), tmp_path)
    export_onnx(r.best_checkpoint, tmp_path / "m.onnx")
    model, _ = load_checkpoint(r.best_checkpoint)
    x = [to_input(X[:2], model.cfg)]
    assert verify_onnx(tmp_path / "m.onnx", model, x) <= 1e-4
    other = build_model(model.cfg)  # different weights
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        verify_onnx(tmp_path / "m.onnx", other, x)


def test_paper_networks_shapes():
    from model.networks import count_macs

    for arch, convs in (("yolov1", 24), ("fast-yolov1", 9)):
        cfg = ModelConfig(arch=arch, input_size=448, C=20)
        with torch.device("meta"):
            m = build_model(cfg)
            y = m(torch.zeros(2, 3, 448, 448))
        assert tuple(y.shape) == (2, 7, 7, 30)
        assert sum(isinstance(x, torch.nn.Conv2d) for x in m.modules()) == convs
        assert sum(isinstance(x, torch.nn.Linear) for x in m.modules()) == 2
        assert count_macs(m, 448) > 0
    assert np.isclose(
        sum(p.numel() for p in build_model(ModelConfig(arch="yolov1", C=20)).parameters()) / 1e6,
        271.7,
        atol=0.1,
    )


def test_a_time_limit_saves_the_weights_where_it_stopped(small_data, tmp_path):
    class TimeLimit(Exception):
        pass

    X, L = small_data
    calls = iter(range(100))

    def stop_at_step_3() -> bool:
        if next(calls) == 3:
            raise TimeLimit
        return False

    with pytest.raises(TimeLimit):
        train(
            _cfg(),
            TrainConfig(epochs=5, batch_size=2),
            Data(X, L, X, L),
            tmp_path,
            should_cancel=stop_at_step_3,
            checkpoint_on=(TimeLimit,),
        )
    ckpt = torch.load(tmp_path / "interrupted.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["step"]) == (0, 3)
    build_model(ModelConfig.from_dict(ckpt["model_config"])).load_state_dict(ckpt["model"])


def test_fine_tuning_controls_freeze_what_they_say(small_data, tmp_path):
    """A frozen backbone does not move in its frozen epochs, frozen batch norm keeps its
    statistics, and early stopping ends a run that stopped improving."""
    X, L = small_data
    cfg = _cfg()
    torch.manual_seed(0)
    start = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}
    tc = TrainConfig(
        epochs=1, batch_size=4, freeze_backbone_epochs=1, freeze_bn=True, learning_rate=1e-2
    )
    r = train(cfg, tc, Data(X, L, X[:2], L[:2]), tmp_path / "a", init_weights=start)
    after = torch.load(r.last_checkpoint, weights_only=False)["model"]
    for k, v in start.items():
        if k.startswith("features."):
            assert torch.equal(after[k], v), k  # weights and batch-norm statistics
    head_bn = [k for k in start if k.startswith("head.") and k.endswith("running_mean")]
    assert head_bn and all(torch.equal(after[k], start[k]) for k in head_bn)
    assert not torch.equal(after["head.3.weight"], start["head.3.weight"])  # the head trains
    # freeze_layers=2: the first two convolutions and their batch norms stay as they
    # started, every layer above them trains, and nothing frozen is in the optimizer.
    tc = TrainConfig(epochs=1, batch_size=4, freeze_layers=2, learning_rate=1e-2, ema_decay=0)
    r = train(cfg, tc, Data(X, L, X[:2], L[:2]), tmp_path / "f", init_weights=start)
    after = torch.load(r.last_checkpoint, weights_only=False)["model"]
    model = build_model(cfg)
    convs = [n for n, m in model.features.named_modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [n for n, m in model.features.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for name in (*convs[:2], *bns[:2]):
        for k in [k for k in start if k.startswith(f"features.{name}.")]:
            assert torch.equal(after[k], start[k]), k
    for name in (convs[2], bns[2]):
        assert not torch.equal(after[f"features.{name}.weight"], start[f"features.{name}.weight"])
    assert not torch.equal(after[f"features.{bns[2]}.running_mean"],
                           start[f"features.{bns[2]}.running_mean"])  # fmt: skip
    # Weights that do not move: no epoch improves on the first, so patience 2 stops
    # after epoch 3 of 10.
    tc = TrainConfig(
        epochs=10, batch_size=4, learning_rate=1e-12, freeze_bn=True, early_stop_patience=2
    )
    r = train(cfg, tc, Data(X, L, X[:2], L[:2]), tmp_path / "b")
    assert [h.epoch for h in r.history] == [1, 2, 3]
    # keep="last" keeps the schedule's end, whatever validation says (no baseline here,
    # so no early stopping either).
    tc = replace(tc, epochs=4, keep="last")
    r = train(cfg, tc, Data(X, L, X[:2], L[:2]), tmp_path / "c")
    assert r.best_epoch == 4 and r.best_checkpoint == r.last_checkpoint


def test_training_input_is_the_inference_input():
    """The trainer converts batches in torch; the numbers are the ONNX path's."""
    from model.train import to_tensor

    cfg = ModelConfig(input_size=64, C=5, mean=[0.1, 0.2, 0.3], std=[0.5, 0.6, 0.7])
    X = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    ref = torch.from_numpy(to_input(X, cfg))
    for channels_last in (True, False):
        assert torch.equal(to_tensor(X, cfg, channels_last), ref)
        # For a GPU the batch goes as a uint8 tensor and is converted where it lands.
        assert torch.equal(to_tensor(torch.from_numpy(X), cfg, channels_last), ref)


@pytest.mark.parametrize("channels_last", [True, False])
def test_batches_are_the_same_whatever_the_number_of_workers(small_data, channels_last):
    """A GPU's batches are made by several threads: the same images, augmentation and
    labels, in the same order and memory format, as one thread makes them."""
    from model.train import Batches

    X, L = small_data
    tc = TrainConfig(epochs=2, batch_size=5, channels_last=channels_last, seed=3)
    one, three = (Batches(Data(X, L, X, L), _cfg(), tc, workers=w) for w in (1, 3))
    try:
        for epoch, step in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            i1, x1, l1 = one.get(epoch, step)
            i3, x3, l3 = three.get(epoch, step)
            assert np.array_equal(i1, i3) and torch.equal(x1, x3)
            assert x1.is_contiguous(memory_format=torch.channels_last) == channels_last
            assert x3.stride() == x1.stride()
            assert all(torch.equal(a, b) for a, b in zip(l1, l3, strict=True))
    finally:
        one.close()
        three.close()


def test_batches_for_a_device_go_as_uint8_and_labels_stay_on_the_cpu(small_data):
    """Off the CPU the threads leave images uint8 and the network input is made on the
    device (``meta`` here: shapes, dtype and layout, no values, as no GPU is at hand);
    labels stay where the loss builds its targets."""
    from model.train import Batches

    X, L = small_data
    tc = TrainConfig(epochs=1, batch_size=5, channels_last=True, seed=3)
    cpu, meta = (
        Batches(Data(X, L, X, L), _cfg(), tc, workers=2, device=torch.device(d))
        for d in ("cpu", "meta")
    )
    try:
        i1, x1, l1 = cpu.get(0, 0)
        i2, x2, l2 = meta.get(0, 0)
        assert np.array_equal(i1, i2)
        assert x2.device.type == "meta" and x2.dtype == torch.float32 and x2.shape == x1.shape
        assert x2.is_contiguous(memory_format=torch.channels_last)
        assert all(lab.device.type == "cpu" for lab in l2)
        assert all(torch.equal(a, b) for a, b in zip(l1, l2, strict=True))
    finally:
        cpu.close()
        meta.close()


def test_the_bf16_choice_is_timed_once_and_leaves_the_random_state_alone():
    """Whether bf16 trains faster is a measurement (software bf16 on AVX-512 without
    AVX512-BF16 is 2x slower than float32), made once per process and network; it must
    not change what the job's seed draws afterwards, or runs on machines that time it
    and machines that do not would train different weights."""
    from model import train as tr

    cfg, tc = _cfg(), TrainConfig(batch_size=4, channels_last=True)
    before = torch.get_rng_state().clone()
    tr._bf16_faster.clear()
    faster = tr.bf16_pays(cfg, tc)
    assert torch.equal(torch.get_rng_state(), before)
    assert list(tr._bf16_faster.values()) == [faster]
    tr._bf16_faster[next(iter(tr._bf16_faster))] = not faster  # a second call reads it
    assert tr.bf16_pays(cfg, tc) is (not faster)
    tr._bf16_faster.clear()
    assert not tr.use_amp(TrainConfig(amp=False), cfg)


def test_the_best_epoch_breaks_a_map_tie_on_validation_loss():
    """A saturated split (mAP 1.0 epoch after epoch) must not freeze the best epoch at
    the first one to reach it."""
    from model.train import EpochMetrics, Progress, better

    def epoch(n: int, val_map: float, loss: float) -> EpochMetrics:
        return EpochMetrics(n, {}, {"total": loss}, val_map)

    state = Progress(best_map=1.0, best_epoch=8, history=[epoch(8, 1.0, 2.0)])
    assert better(epoch(9, 1.0, 1.5), state)  # the same mAP, a lower loss
    assert not better(epoch(9, 1.0, 2.5), state)
    assert not better(epoch(9, 0.99, 0.1), state)  # mAP comes first
    assert better(epoch(1, 0.5, 9.0), Progress())  # the first epoch beats nothing


def test_early_stopping_counts_from_the_best_or_from_the_start():
    """keep="best" stops when no epoch has beaten the best for the patience; keep="last"
    runs the schedule out once any epoch has beaten the starting weights (epoch 0), and
    gives up only when none has."""
    from model.train import EpochMetrics, Progress, stop_early

    def run(maps: list[float], keep: str, best_epoch: int) -> Progress:
        h = [EpochMetrics(n, {}, {"total": 1.0}, m) for n, m in enumerate(maps)]
        return Progress(best_map=maps[best_epoch], best_epoch=best_epoch, history=h)

    best, last = (
        TrainConfig(keep="best", early_stop_patience=3),
        TrainConfig(keep="last", early_stop_patience=3),
    )
    climbing_then_flat = [0.5, 0.6, 0.7, 0.69, 0.68, 0.69]  # epochs 0-5, best 2
    assert stop_early(run(climbing_then_flat, "best", 2), best)
    assert not stop_early(run(climbing_then_flat, "last", 5), last)
    nowhere = [0.8, 0.7, 0.75, 0.79]  # no epoch beats the start (0.8)
    assert stop_early(run(nowhere, "last", 3), last)
    assert not stop_early(run(nowhere[:3], "last", 2), last)  # only 2 epochs so far
    assert not stop_early(run(nowhere, "last", 3), TrainConfig(keep="last"))  # patience 0
    with pytest.raises(ValueError, match="keep"):
        TrainConfig(keep="first")


@pytest.mark.parametrize("arch", ["tiny-yolov1", "fast-yolov1"])
def test_pool_before_activation_is_the_same_network(arch):
    """The trainer's order (max pool, then LeakyReLU) computes what the written order
    does, with the same state dict: the outputs bit for bit on any CPU. The gradients
    agree closely, not always bit for bit: where two negative values of one window round
    to the same activation, the pool passes the gradient to the first rather than the
    larger, and which values round so depends on the CPU's convolution kernels."""
    import copy

    from model.networks import pool_before_activation

    torch.manual_seed(0)
    written = build_model(ModelConfig(arch=arch, input_size=224, C=5)).train()
    trained = pool_before_activation(copy.deepcopy(written))
    assert list(trained.state_dict()) == list(written.state_dict())
    kinds = [type(m).__name__ for m in trained.features]
    assert "MaxPool2d" in kinds and ["LeakyReLU", "MaxPool2d"] not in [
        kinds[i : i + 2] for i in range(len(kinds) - 1)
    ]
    x = torch.randn(2, 3, 224, 224)
    torch.manual_seed(1)  # the same dropout masks (fast-yolov1's head has dropout)
    out_w = written(x)
    torch.manual_seed(1)
    out_t = trained(x)
    assert torch.equal(out_w, out_t)
    out_w.square().sum().backward()
    out_t.square().sum().backward()
    for (name, p), q in zip(written.named_parameters(), trained.parameters(), strict=True):
        # a tie moves one window's gradient to its neighbour: small against the whole
        drift = float((q.grad - p.grad).norm() / p.grad.norm().clamp_min(1e-12))
        assert drift < 1e-2, (name, drift)


def test_cli_second_stage_starts_from_the_first_stages_weights(tmp_path):
    """``yolov1 train --init``: the network and weights of the checkpoint named (as
    ``make model``'s second stage starts from its first). At learning rate 0 AdamW moves
    nothing (its weight decay scales with the rate), so the weights stay the start's."""
    from model.cli import main

    first, second = tmp_path / "first", tmp_path / "second"
    main(["train", "--data", "shapes", "--preset", "smoke", "--out", str(first)])
    start_from = ["--init", str(first / "best.pt"), "--learning-rate", "0"]
    main(["train", "--data", "shapes:train-closeups", "--preset", "smoke", "--train-images",
          "16", *start_from, "--out", str(second)])  # fmt: skip
    start = torch.load(first / "best.pt", weights_only=False)
    end = torch.load(second / "best.pt", weights_only=False)
    assert end["model_config"] == start["model_config"]
    weights = [k for k, v in start["model"].items() if k.endswith("weight")]
    assert weights and all(torch.equal(start["model"][k], end["model"][k]) for k in weights)
