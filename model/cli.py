"""``yolov1``: info, train, export, quantize, calibrate, detect, val, prune and make-shapes
from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("yolov1")

# The default model's recipe (`make model`): a tiny network on generated shapes.
_DEFAULT = dict(
    arch="tiny-yolov1",
    input_size=224,
    width=32,
    head_activation="sigmoid",
    train_images=12000,
    val_images=500,
    epochs=22,
    batch_size=32,
    optimizer="adamw",
    learning_rate=1e-3,
    weight_decay=5e-4,
)
PRESETS = {
    "default": _DEFAULT,
    # Its second stage (`--init` the first's weights): close-ups and thin outlines, which
    # the first stage's mixture lacks (objects up to 45 % of the short side, outlines of
    # 6-12 % of the shape), at a lower learning rate, so the rest is not forgotten.
    # Half its images scaled and shifted so that no whole shape is cut: the paper's
    # augmentation alone cut nine in ten of the shapes that fill the canvas.
    "closeups": {
        **_DEFAULT,
        "epochs": 3,
        "learning_rate": 1e-4,
        "ema_decay": 0.999,
        "keep_whole": 0.5,
    },
    "smoke": dict(
        arch="tiny-yolov1",
        input_size=64,
        width=8,
        head_activation="sigmoid",
        S=2,
        train_images=32,
        val_images=16,
        epochs=1,
        batch_size=16,
        optimizer="adamw",
        learning_rate=1e-3,
        weight_decay=5e-4,
    ),
}

DATA_SEED_TRAIN, DATA_SEED_VAL, DATA_SEED_TEST, DATA_SEED_CALIBRATE = 1, 2, 3, 4


def _shapes_level(spec: str) -> str | None:
    """The level a data spec names: 'shapes' is the training mixture, 'shapes:hard' a
    published level (model.shapes.LEVELS); None for a data set folder."""
    from model.shapes import LEVELS

    if spec != "shapes" and not spec.startswith("shapes:"):
        return None
    level = spec.partition(":")[2] or "train"
    if level not in LEVELS:
        raise SystemExit(f"unknown shapes level {level!r}; use one of {sorted(LEVELS)}")
    return level


def cmd_info(args: argparse.Namespace) -> None:
    import torch

    from model.config import ModelConfig
    from model.networks import build_model, count_macs

    size = args.input_size or (224 if args.arch == "tiny-yolov1" else 448)
    cfg = ModelConfig(arch=args.arch, input_size=size, S=args.S, B=args.B, C=args.C)
    with torch.device("meta"):
        model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, size)
    print(f"{args.arch}: input {size}x{size}, S={cfg.S} B={cfg.B} C={cfg.C}")
    print(f"parameters {params:,}")
    print(f"MACs per image {macs:,} ({macs / 1e9:.2f} G)")


def _load_split(args: argparse.Namespace, size: int):
    from model.data import difficult_flags, read_dataset, shapes_dataset, split_dataset, to_arrays
    from model.train import Data

    level = _shapes_level(args.data)
    if level:
        seed = args.seed * 1000
        tr = shapes_dataset(args.train_images, DATA_SEED_TRAIN + seed, level, size=size)
        va = shapes_dataset(args.val_images, DATA_SEED_VAL + seed, level, size=size)
    else:
        ds = read_dataset(args.data, args.format)
        for s in ds.skipped:
            log.warning("skipped %s", s)
        tr, va = split_dataset(ds, args.val_fraction, args.seed)
    Xtr, Ltr = to_arrays(tr, size, keep_difficult=False)
    Xva, Lva = to_arrays(va, size)
    return tr.class_names, Data(Xtr, Ltr, Xva, Lva, difficult_flags(va))


def cmd_train(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from model.config import ModelConfig, TrainConfig
    from model.train import train

    preset = dict(PRESETS[args.preset])
    for key in (
        "epochs",
        "batch_size",
        "learning_rate",
        "optimizer",
        "train_images",
        "val_images",
        "input_size",
        "arch",
    ):
        if getattr(args, key, None) is not None:
            preset[key] = getattr(args, key)
    args.train_images, args.val_images = preset["train_images"], preset["val_images"]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    init = None
    if args.init:
        start = torch.load(args.init, map_location="cpu", weights_only=False)
        init = start["model"]
        for key in ("arch", "input_size", "width", "head_activation", "S"):
            preset[key] = start["model_config"][key]
    names, data = _load_split(args, preset["input_size"])
    if init is not None and names != start["model_config"]["class_names"]:
        raise SystemExit(f"--init {args.init} knows {start['model_config']['class_names']}, "
                         f"the data {names}")  # fmt: skip
    cfg = ModelConfig(
        arch=preset["arch"],
        input_size=preset["input_size"],
        S=preset.get("S", 7),
        B=2,
        C=len(names),
        class_names=names,
        head_activation=preset["head_activation"],
        width=preset["width"],
    )
    tc = TrainConfig(
        epochs=preset["epochs"],
        batch_size=preset["batch_size"],
        optimizer=preset["optimizer"],
        learning_rate=preset["learning_rate"],
        weight_decay=preset["weight_decay"],
        ema_decay=preset.get("ema_decay", 0.0),
        keep_whole=preset.get("keep_whole", 0.0),
        seed=args.seed,
        amp=not args.no_amp,
    )
    n_train = len(data.train_images)
    log.info("training %s on %d images (%d validation)", cfg.arch, n_train, len(data.val_images))
    bar = tqdm(total=tc.epochs * -(-n_train // tc.batch_size), disable=not sys.stderr.isatty())

    def progress(p: dict) -> None:
        if "terms" in p:
            bar.update(1)
            bar.set_postfix(epoch=p["epoch"], loss=f"{p['loss']:.3f}")

    result = train(
        cfg, tc, data, args.out, resume=args.resume, init_weights=init, progress=progress
    )
    bar.close()
    print(f"best val mAP@0.5 {result.best_map:.4f}  checkpoint {result.best_checkpoint}")


def cmd_export(args: argparse.Namespace) -> None:
    from model.data import shapes_dataset, to_arrays
    from model.export import export_onnx, load_checkpoint, slim_checkpoint

    model, _ = load_checkpoint(args.checkpoint)
    real, _ = to_arrays(shapes_dataset(4, 12345), model.cfg.input_size)
    meta = export_onnx(args.checkpoint, args.out, real_images=real)
    if args.slim_checkpoint:
        slim_checkpoint(args.checkpoint, args.slim_checkpoint)
    print(f"wrote {args.out} (max |onnx - torch| {meta['export']['max_abs_diff_vs_torch']:.2e})")
    if args.int8:
        args.model, args.out = args.out, None
        cmd_quantize(args)


def _dataset(spec: str, fmt: str, n: int, seed: int):
    """'shapes[:level]' (n generated images of ``seed``) or a data set folder."""
    from model.data import read_dataset, shapes_dataset

    level = _shapes_level(spec)
    return shapes_dataset(n, seed, level) if level else read_dataset(spec, fmt)


def cmd_quantize(args: argparse.Namespace) -> None:
    import numpy as np

    from model.data import load_image
    from model.infer import OnnxDetector
    from model.quantize import QuantizationError, quantize_int8

    det = OnnxDetector(args.model)
    calib = _dataset(args.calib, args.format, args.calib_images, DATA_SEED_TRAIN)
    recs = calib.records[: args.calib_images]
    images = np.stack([det.preprocess(load_image(r)) for r in recs])
    held_out = _dataset(args.val, args.format, args.val_images, DATA_SEED_TEST)
    try:
        q = quantize_int8(
            args.model,
            images,
            lambda path: evaluate_onnx(str(path), held_out).map,
            out=args.out,
            max_map_drop=args.max_map_drop,
        )
    except QuantizationError as exc:
        raise SystemExit(f"quantization refused: {exc}") from None
    print(
        f"wrote {q.path}: mAP@0.5 int8 {q.int8_map50:.4f} vs fp32 {q.fp32_map50:.4f} "
        f"on {len(held_out)} held-out images ({q.calibration_images} calibration images)"
    )


def cmd_detect(args: argparse.Namespace) -> None:
    from model.infer import OnnxDetector, draw_detections
    from model.preprocess import decode_image

    det = OnnxDetector(args.model)
    img = decode_image(Path(args.image).read_bytes())
    found = det.detect([img], conf_threshold=args.conf, iou_threshold=args.iou)[0]
    for d in found:
        print(f"{d.class_name:10s} {d.confidence:.3f} " + " ".join(f"{v:.1f}" for v in d.box))
    if args.output:
        draw_detections(img, found).save(args.output)


def evaluate_onnx(model_path: str, ds, *, method: str = "all"):
    """VOC mAP@0.5 of an ONNX model on a data set, by ``model.evaluate``'s rules (no torch)."""
    return onnx_evaluator(model_path, ds).result(method=method)


def onnx_evaluator(model_path: str, ds, *, batch_size: int = 32, every_class: bool = True):
    """An ONNX model's detections on a data set, ready to score."""
    import numpy as np

    from model.data import load_image
    from model.evaluate import Evaluator, class_columns, regrid_classes
    from model.infer import OnnxDetector

    det = OnnxDetector(model_path)
    cfg = det.cfg
    # Classes are matched by name: the data's classes the model does not know score 0
    # (as the base model does in a job's epoch 0), the model's others are not scored.
    try:
        cols = class_columns(cfg.class_names, ds.class_names)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    same = list(cfg.class_names) == list(ds.class_names)
    ev = Evaluator(cfg.S, cfg.B, len(ds.class_names), every_class=every_class)
    for start in range(0, len(ds), batch_size):
        recs = ds.records[start : start + batch_size]
        images = [load_image(r) for r in recs]
        grids = det.run(np.stack([det.preprocess(im) for im in images]))
        if not same:
            grids = regrid_classes(grids, cols, cfg.B)  # (n, S, S, 5B + C_data)
        ev.add(grids, [r.labels for r in recs], [r.difficult for r in recs])
        ev.sizes.extend(im.size for im in images)
    return ev


def cmd_val(args: argparse.Namespace) -> None:
    from model import coco
    from model.config import class_key
    from model.infer import read_metadata

    ds = _dataset(args.data, args.format, args.images, DATA_SEED_TEST)
    for s in ds.skipped:
        log.warning("skipped %s", s)

    ev = onnx_evaluator(args.model, ds)
    r, r11 = ev.result(), ev.result(method="11point")
    known = {class_key(n) for n in read_metadata(args.model)["model_config"]["class_names"]}
    for c, name in enumerate(ds.class_names):
        ap = r.ap.get(c)
        shown = "n/a" if ap is None else f"{ap:.4f}"
        note = "" if class_key(name) in known else "  (a class the model does not know)"
        print(f"{name:15s} AP@0.5 {shown}  objects {r.n_truth[c]}{note}")
    print(f"mAP@0.5 {r.map:.4f}  (VOC2007 11-point: {r11.map:.4f})")
    gt = coco.ground_truth(ev.truths, ev.sizes, ds.class_names)
    dets = coco.results(ev.detections, ev.sizes)
    c = coco.coco_map(gt, dets)
    print(f"COCO mAP@[.5:.95] {c['map']:.4f}  AP50 {c['map50']:.4f}  AP75 {c['map75']:.4f}")
    if args.save_json:
        out = Path(args.save_json)
        out.write_text(json.dumps(dets))
        gt_path = out.with_name(out.stem + "_gt.json")
        gt_path.write_text(json.dumps(gt))
        print(f"COCO results: {out}  ground truth: {gt_path}")


def cmd_calibrate(args: argparse.Namespace) -> None:
    from model.export import update_metadata
    from model.metrics import score_at_precision

    ds = _dataset(args.data, args.format, args.images, DATA_SEED_CALIBRATE)
    # The detections the API returns: each box's best class, NMS at 0.5.
    ev = onnx_evaluator(args.model, ds, every_class=False)
    point = score_at_precision(ev.detections, ev.truths, len(ds.class_names), args.precision)
    if point is None:
        raise SystemExit(f"no score threshold reaches precision {args.precision} on {args.data}")
    update_metadata(args.model, calibration=point.calibration(args.precision, args.data, len(ds)))
    print(
        f"{args.model}: precision {point.precision:.3f} (target {args.precision}) from score "
        f"{point.threshold:.3f}, recall {point.recall:.3f} on {len(ds)} images of {args.data}; "
        "the API's default conf_threshold for this model"
    )


def cmd_prune(args: argparse.Namespace) -> None:
    from model.registry import ModelStore

    if args.keep < 1:
        raise SystemExit("--keep must be at least 1")
    store = ModelStore(args.store)
    removed = store.prune(args.keep)
    print(json.dumps({"removed": removed, "kept": store.versions()}))


def cmd_make_shapes(args: argparse.Namespace) -> None:
    from model.shapes import picture_grid, write_yolo_dataset

    _shapes_level(f"shapes:{args.level}")
    if args.grid:
        picture_grid(args.seed).save(args.out)
        print(json.dumps({"out": args.out, "seed": args.seed}))
        return
    write_yolo_dataset(args.out, args.images, args.seed, args.level)
    print(json.dumps({"out": args.out, "images": args.images, "seed": args.seed}))


def _quantize_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--calib", default="shapes", help="calibration images: 'shapes' or a folder")
    s.add_argument("--calib-images", type=int, default=64)
    s.add_argument(
        "--val", default="shapes", help="held-out data for the check: 'shapes' or a folder"
    )
    s.add_argument("--val-images", type=int, default=300, help="shapes only")
    s.add_argument("--format", choices=["yolo", "voc", "coco"], default="yolo")
    s.add_argument("--max-map-drop", type=float, default=0.01, help="refuse if int8 loses more")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yolov1", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="parameters and MACs of an architecture")
    s.add_argument("arch", choices=["yolov1", "fast-yolov1", "tiny-yolov1"])
    s.add_argument("--input-size", type=int)
    s.add_argument("--S", type=int, default=7)
    s.add_argument("--B", type=int, default=2)
    s.add_argument("--C", type=int, default=20)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("train", help="train a detector")
    s.add_argument("--data", required=True, help="a data set folder, or 'shapes[:level]'")
    s.add_argument("--format", choices=["yolo", "voc", "coco"], default="yolo")
    s.add_argument("--preset", choices=sorted(PRESETS), default="default")
    s.add_argument("--out", default="runs/train")
    s.add_argument("--arch", choices=["yolov1", "fast-yolov1", "tiny-yolov1"])
    s.add_argument("--input-size", type=int)
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--learning-rate", type=float)
    s.add_argument("--optimizer", choices=["sgd", "adamw"])
    s.add_argument("--train-images", type=int, help="shapes only")
    s.add_argument("--val-images", type=int, help="shapes only")
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume", help="a last.pt to continue from")
    s.add_argument("--init", help="a checkpoint whose weights (and network) to start from")
    s.add_argument("--no-amp", action="store_true", help="plain fp32")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("export", help="checkpoint -> verified ONNX + sidecar JSON")
    s.add_argument("checkpoint")
    s.add_argument("out")
    s.add_argument("--slim-checkpoint", help="also write weights+config only to this path")
    s.add_argument("--int8", action="store_true", help="also write the verified int8 variant")
    _quantize_options(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("quantize", help="ONNX -> verified static int8 ONNX beside it")
    s.add_argument("model")
    s.add_argument("--out", help="default: MODEL with .int8.onnx")
    _quantize_options(s)
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("detect", help="detect objects in an image")
    s.add_argument("model")
    s.add_argument("image")
    s.add_argument("-o", "--output", help="write the image with boxes drawn (PNG)")
    s.add_argument("--conf", type=float, help="score threshold (default: the model's own)")
    s.add_argument("--iou", type=float, default=0.5)
    s.set_defaults(func=cmd_detect)

    s = sub.add_parser("val", help="per-class AP and mAP@0.5 of an ONNX model")
    s.add_argument("model")
    s.add_argument(
        "--data", required=True, help="a data set folder, or 'shapes[:level]' (held-out)"
    )
    s.add_argument("--format", choices=["yolo", "voc", "coco"], default="yolo")
    s.add_argument("--images", type=int, default=500, help="shapes only")
    s.add_argument(
        "--save-json",
        metavar="PATH",
        help="write the detections as a COCO results file (and PATH_gt.json, the truth)",
    )
    s.set_defaults(func=cmd_val)

    s = sub.add_parser(
        "calibrate",
        help="set a model's default score threshold: the lowest at which its detections "
        "reach a precision on held-out data",
    )
    s.add_argument("model")
    s.add_argument(
        "--data",
        default="shapes:hard",
        help="a data set folder, or 'shapes[:level]' (default: hard)",
    )
    s.add_argument("--format", choices=["yolo", "voc", "coco"], default="yolo")
    s.add_argument("--images", type=int, default=500, help="shapes only")
    s.add_argument("--precision", type=float, default=0.9)
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("prune", help="remove old model versions from a model store")
    s.add_argument("store", help="the store folder (YOLOV1_MODEL_STORE)")
    s.add_argument("--keep", type=int, default=5, help="newest versions to keep (>= 1)")
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("make-shapes", help="write a shapes data set in YOLO format")
    s.add_argument("out")
    s.add_argument("--images", type=int, default=100)
    s.add_argument("--seed", type=int, default=DATA_SEED_TEST)
    s.add_argument("--level", default="train", help="train (the mixture), easy, medium, hard")
    s.add_argument(
        "--grid", action="store_true", help="write OUT as a PNG: a row of images per level"
    )
    s.set_defaults(func=cmd_make_shapes)
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
