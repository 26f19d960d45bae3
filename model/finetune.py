"""A fine-tuning job from start to registered model version: the logic behind the
Celery task, callable directly (and tested directly)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from model.config import JobSpec, ModelConfig, TrainConfig, class_key
from model.data import (
    DetectionDataset,
    difficult_flags,
    read_dataset,
    shapes_dataset,
    split_dataset,
    to_arrays,
)
from model.evaluate import evaluate_grids
from model.export import export_onnx, slim_checkpoint
from model.networks import build_model
from model.registry import ModelStore
from model.train import Data, TrainResult, build_network, evaluate, train

log = logging.getLogger(__name__)


def output_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The state-dict keys of the layer that writes the grid: the head's last two
    entries (every head ends in a convolution or linear layer with a bias)."""
    return [k for k in state if k.startswith("head.")][-2:]


def channel_map(old: ModelConfig, new: ModelConfig) -> tuple[list[int], list[int]]:
    """(old channels, new channels) of the grid's box channels and of the classes both
    know, matched by name; the new network's other channels are classes the old lacks."""
    B = new.B
    old_index = {class_key(n): i for i, n in enumerate(old.class_names)}
    known = [
        (5 * B + old_index[class_key(n)], 5 * B + j)
        for j, n in enumerate(new.class_names)
        if class_key(n) in old_index
    ]
    return list(range(5 * B)) + [o for o, _ in known], list(range(5 * B)) + [n for _, n in known]


def known_classes(names: list[str], base: list[str]) -> list[int]:
    """Indices of ``names`` that the base model knows (by :func:`class_key`)."""
    keys = {class_key(n) for n in base}
    return [i for i, n in enumerate(names) if class_key(n) in keys]


def _by_channel(w: torch.Tensor, channels: int) -> torch.Tensor:
    # The output layer's rows: (S*S, 5B+C) for a linear head, (5B+C) for a conv head.
    return w.reshape(w.shape[0] // channels, channels, *w.shape[1:])  # (cells, 5B + C, ...)


def adapt_head(
    state: dict[str, torch.Tensor], old: ModelConfig, new: ModelConfig, seed: int = 0
) -> tuple[dict[str, torch.Tensor], bool]:
    """Base weights for a network with ``new``'s classes, matched by name.

    Returns the state dict for ``build_model(new)`` and whether the class part
    of the head was rebuilt. Box channels and the channels of classes present
    in both are copied; new classes start from the new network's initialisation,
    drawn from ``seed`` (also when there are as many classes as before, but not
    the same).
    """
    if old.class_names == new.class_names:
        return dict(state), False
    # Seeded: a job run twice starts from the same weights (torch's own generator is
    # seeded afresh by every process).
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_model(new)
    target = net.state_dict()
    outputs = output_keys(target)
    src_ch, dst_ch = channel_map(old, new)
    out: dict[str, torch.Tensor] = {}
    for key, value in target.items():
        base = state.get(key)
        if key in outputs:
            new_w = _by_channel(value.clone(), new.channels)
            new_w[:, dst_ch] = _by_channel(base, old.channels)[:, src_ch]
            out[key] = new_w.reshape(value.shape)
        else:
            out[key] = base.clone() if base is not None and base.shape == value.shape else value
    return out, True


def blend(
    trained: dict[str, torch.Tensor],
    start: dict[str, torch.Tensor],
    share: float,
    old: ModelConfig,
    new: ModelConfig,
) -> dict[str, torch.Tensor]:
    """``trained`` moved ``share`` of the way back to the ``start`` weights (WiSE-FT,
    Wortsman et al. 2022: on the fine-tuning bench, 0.1 kept the old classes closer
    to where they were and lost nothing on the new). Outputs of classes the base
    model does not know have no base to move to: they stay as trained."""
    out = {
        k: (1 - share) * v + share * start[k] if v.dtype.is_floating_point else v
        for k, v in trained.items()
    }
    if old.class_names != new.class_names:
        _, known = channel_map(old, new)
        fresh = [c for c in range(new.channels) if c not in known]
        for key in output_keys(trained):
            w = _by_channel(out[key], new.channels)
            w[:, fresh] = _by_channel(trained[key], new.channels)[:, fresh]
    return out


def keep_some_base(
    result: TrainResult,
    start: dict[str, torch.Tensor],
    tc: TrainConfig,
    old: ModelConfig,
    new: ModelConfig,
    data: Data,
) -> TrainResult:
    """The kept epoch's weights blended back toward ``start`` (:func:`blend`), saved as
    ``blended.pt`` beside it and scored on the validation split: the result to judge."""
    ckpt = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
    ckpt["model"] = blend(ckpt["model"], start, tc.keep_base, old, new)
    model = build_network(new, tc, ckpt["model"])
    _, val_map = evaluate(model, data.val_images, data.val_labels, new, tc, data.val_difficult)
    ckpt["best_map"] = val_map
    path = result.best_checkpoint.with_name("blended.pt")
    torch.save(ckpt, path)
    return replace(result, best_checkpoint=path, best_map=val_map)


def load_job_dataset(spec: JobSpec) -> DetectionDataset:
    if spec.dataset_format == "shapes":
        return shapes_dataset(spec.shapes_images, 1000 + spec.train.seed)
    ds = read_dataset(spec.dataset_path, spec.dataset_format)
    if len(ds) < 2:
        raise ValueError(f"the data set has {len(ds)} usable images; at least 2 are needed")
    return ds


@dataclass
class Outcome:
    """What a job did, in the job record's words."""

    baseline_map50: float  # the base model on the job's validation split (epoch 0)
    val_map50: float  # the best trained epoch on the same split
    best_epoch: int
    epochs_trained: int
    head_rebuilt: bool
    model_version: int | None  # None: nothing was registered
    activated: bool
    reason: str  # why it was (not) registered and (not) activated, for a person


def prepare_model(
    store: ModelStore, spec: JobSpec, ds: DetectionDataset
) -> tuple[ModelConfig, dict[str, torch.Tensor], list[str]]:
    """The network for the job's classes, its starting weights (the base version's,
    with the class head rebuilt when the classes differ) and the base's classes."""
    base = torch.load(
        store.checkpoint_path(spec.base_version), map_location="cpu", weights_only=False
    )
    base_cfg = ModelConfig.from_dict(base["model_config"])
    cfg = replace(
        base_cfg,
        class_names=list(ds.class_names),
        C=len(ds.class_names),
        input_size=spec.image_size or base_cfg.input_size,
    )
    weights, _ = adapt_head(base["model"], base_cfg, cfg, spec.train.seed)
    return cfg, weights, base_cfg.class_names


def prepare_data(ds: DetectionDataset, spec: JobSpec, size: int) -> Data:
    tr, va = split_dataset(ds, spec.val_fraction, spec.train.seed)
    Xtr, Ltr = to_arrays(tr, size, keep_difficult=spec.train.keep_difficult)
    Xva, Lva = to_arrays(va, size)
    return Data(Xtr, Ltr, Xva, Lva, difficult_flags(va))


def decide(result: TrainResult, spec: JobSpec, val_objects: int) -> tuple[bool, bool, str]:
    """(register, activate, why): a version is registered only when a trained epoch
    beats the base model on the same validation split by more than one validation
    object's worth (``1 / val_objects``: a gain that small is one hit or miss, which a
    split of a few images turns up by chance), and activated only then and when the
    job asked for it."""
    base, best = result.history[0].val_map, result.best_map
    kept = f"{spec.train.keep} epoch {result.best_epoch}"  # "best epoch 12", "last epoch 80"
    if not best > base:
        top = max(result.history[1:], key=lambda h: h.val_map, default=None)
        if spec.train.keep == "last" and top is not None and top.val_map > base:
            what = (
                f"the {kept} (mAP@0.5 {best:.4f}) did not beat the base model ({base:.4f}) "
                f"on the validation split; epoch {top.epoch} read {top.val_map:.4f} on the "
                "way, but the job keeps the schedule's end (keep: last)"
            )
        else:
            what = (
                f"no epoch beat the base model on the validation split (base mAP@0.5 "
                f"{base:.4f}, {kept}: {best:.4f})"
            )
        last = result.history[-1].epoch
        if last < spec.train.epochs:
            what += f"; stopped early, at epoch {last} of {spec.train.epochs}"
        return False, False, f"{what}; nothing was registered and the served model is unchanged"
    margin = 1.0 / max(val_objects, 1)
    if not best - base > margin:
        return (
            False,
            False,
            f"the {kept} (mAP@0.5 {best:.4f}) beat the base model "
            f"({base:.4f}) by {best - base:.4f}, no more than one of the validation split's "
            f"{val_objects} objects can swing it ({margin:.4f}): too little to trust; nothing "
            "was registered and the served model is unchanged (a larger validation split "
            "tells smaller gains apart)",
        )
    gain = f"{kept}: mAP@0.5 {best:.4f} against the base model's {base:.4f}"
    if not spec.auto_activate:
        return True, False, f"{gain}; registered, not activated (auto_activate is off)"
    return True, True, f"{gain}; registered and activated"


def val_difficult(data: Data) -> list[np.ndarray]:
    """Each validation image's ``(k,)`` difficult flags (none when the data set has none)."""
    return data.val_difficult or [np.zeros(len(lab), bool) for lab in data.val_labels]


# A validation split with fewer objects than this says too little about where precision
# reaches 0.9: the new version keeps its base version's threshold instead.
CALIBRATION_MIN_OBJECTS = 30


def calibrate_version(
    onnx_path: Path, data: Data, base: dict | None, precision: float = 0.9
) -> dict | None:
    """The new version's default score threshold, as ``yolov1 calibrate`` finds it: the
    lowest at which its detections (best class, NMS) on the job's validation split are
    ``precision`` right. With too few objects there, or none reaching it, the base
    version's calibration (``base``) carries over. Written into the model's metadata."""
    from model.evaluate import Evaluator
    from model.export import update_metadata
    from model.infer import OnnxDetector
    from model.metrics import score_at_precision

    det = OnnxDetector(onnx_path)
    c = det.cfg
    difficult = val_difficult(data)
    ev = Evaluator(c.S, c.B, c.C, every_class=False)
    for i in range(0, len(data.val_images), 32):
        part = slice(i, i + 32)
        ev.add(det.run(data.val_images[part]), data.val_labels[part], difficult[part])
    objects = sum(int((~d).sum()) for d in difficult)
    point = score_at_precision(ev.detections, ev.truths, c.C, precision)
    if point is not None and objects >= CALIBRATION_MIN_OBJECTS:
        cal = point.calibration(precision, "the job's validation split", len(data.val_images))
    elif base is not None:
        why = "too few objects" if point is not None else f"precision {precision} not reached"
        cal = {**base, "inherited": f"from the base version: {why} ({objects} objects)"}
    else:
        return None
    update_metadata(onnx_path, calibration=cal)
    return cal


def register_version(
    store: ModelStore, spec: JobSpec, run_dir: Path, result: TrainResult, ds, cfg, rebuilt, data
) -> int:
    from model.infer import read_metadata

    export_onnx(result.best_checkpoint, run_dir / "model.onnx", real_images=data.val_images[:4])
    base = read_metadata(store.onnx_path(spec.base_version)).get("calibration")
    calibration = calibrate_version(run_dir / "model.onnx", data, base)
    slim_checkpoint(result.best_checkpoint, run_dir / "model.pt")
    files = {n: run_dir / n for n in ("model.onnx", "model.json", "model.pt")}
    # A version carries what its base carried unless the job says: a fine-tuned
    # default model keeps serving as int8 where YOLOV1_PRECISION=auto chose it.
    int8 = spec.int8
    if int8 is None:
        int8 = store.onnx_path(spec.base_version, "int8").exists()
    int8_note = quantize_version(run_dir, data) if int8 else None
    if int8_note is None and int8:
        files.update({n: run_dir / n for n in ("model.int8.onnx", "model.int8.json")})
    meta = {
        "name": f"finetune-{run_dir.name}",
        "parent": spec.base_version,
        "dataset": {
            "format": spec.dataset_format,
            "id": spec.dataset_id,
            "images": len(ds),
            "classes": cfg.class_names,
        },
        "hyperparameters": spec.train.to_dict(),
        "metrics": {
            "val_map50": result.best_map,
            "baseline_map50": result.history[0].val_map,
            "best_epoch": result.best_epoch,
            "history": [asdict(h) for h in result.history],
        },
        "head_rebuilt": rebuilt,
        "calibration": calibration,
        "int8": int8_note or ("registered" if int8 else int8_unasked(spec)),
    }
    return store.register(files, meta)


def int8_unasked(spec: JobSpec) -> str:
    if spec.int8 is False:
        return "not asked for"
    return "not made: the base version has none (set int8 to make one)"


def quantize_version(run_dir: Path, data: Data) -> str | None:
    """The int8 variant of ``run_dir/model.onnx``, calibrated on training images and
    checked on the validation split; None when written, else why not."""
    from model.infer import OnnxDetector
    from model.quantize import QuantizationError, quantize_int8

    def val_map(path: Path) -> float:
        det = OnnxDetector(path)
        grids = np.concatenate(
            [det.run(data.val_images[i : i + 32]) for i in range(0, len(data.val_images), 32)]
        )
        c = det.cfg
        return evaluate_grids(grids, data.val_labels, data.val_difficult, S=c.S, B=c.B, C=c.C).map

    try:
        quantize_int8(run_dir / "model.onnx", data.train_images[:64], val_map)
    except QuantizationError as exc:
        log.warning("no int8 variant: %s", exc)
        return f"not registered: {exc}"
    return None


def run_finetune(
    spec: JobSpec,
    run_dir: str | Path,
    store: ModelStore,
    *,
    progress: Callable[[dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_info: Callable[[dict], None] | None = None,
    checkpoint_on: tuple[type[BaseException], ...] = (),
) -> Outcome:
    """Validate the base model on the job's validation split (epoch 0), train from it
    (resuming from ``run_dir/last.pt`` when a previous attempt left one), then register
    and activate the result only as :func:`decide` says."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ds = load_job_dataset(spec)
    cfg, weights, base_classes = prepare_model(store, spec, ds)
    rebuilt = cfg.class_names != base_classes
    if on_info is not None:
        on_info(
            {
                "head_rebuilt": rebuilt,
                "classes": cfg.class_names,
                "skipped": ds.skipped[:100],
                "clipped": ds.clipped,
                "images": len(ds),
            }
        )
    data = prepare_data(ds, spec, cfg.input_size)
    last = run_dir / "last.pt"
    if last.exists():
        log.info("resuming from %s", last)
    result = train(
        cfg,
        spec.train,
        data,
        run_dir,
        resume=last if last.exists() else None,
        init_weights=weights,
        baseline=True,
        known_classes=known_classes(cfg.class_names, base_classes),
        progress=progress,
        should_cancel=should_cancel,
        checkpoint_on=checkpoint_on,
    )
    blended = ""
    if spec.train.keep_base > 0 and result.best_epoch > 0:
        old = replace(cfg, class_names=base_classes, C=len(base_classes))
        trained_map = result.best_map
        result = keep_some_base(result, weights, spec.train, old, cfg, data)
        blended = (
            f" (the kept epoch's weights moved {spec.train.keep_base:.0%} of the way back to "
            f"the base model's: val mAP@0.5 {trained_map:.4f} -> {result.best_map:.4f})"
        )
    val_objects = sum(int((~d).sum()) for d in val_difficult(data))
    register, activate, reason = decide(result, spec, val_objects)
    reason += blended
    version = (
        register_version(store, spec, run_dir, result, ds, cfg, rebuilt, data) if register else None
    )
    if activate:
        store.set_active(version)
    return Outcome(
        baseline_map50=result.history[0].val_map,
        val_map50=result.best_map,
        best_epoch=result.best_epoch,
        epochs_trained=len(result.history) - 1,
        head_rebuilt=rebuilt,
        model_version=version,
        activated=activate,
        reason=reason,
    )
