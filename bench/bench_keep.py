"""Which epoch a fine-tuning job should keep: the new-class job of bench_finetune.py run
for its whole schedule (no early stopping), every epoch's kept weights scored, with
``keep_base`` applied as the job applies it, on the 400 held-out scenes; then each rule
(the last epoch, the best val mAP with patience, ...) picks from the same run. About
20 minutes a seed on 2 cores in float32. Run from bench/:
``python bench_keep.py SEED [EPOCHS]``. README's "Which epoch to keep" has the figures."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from bench_finetune import NEW_HELD_OUT, NEW_HELD_OUT_IMAGES, NEW_JOB
from common import DEFAULT_MODEL, log, setup_logging
from scenes import NEW, OLD, write_scenes

from model.config import FINETUNE, JobSpec, ModelConfig, TrainConfig
from model.data import read_dataset, to_arrays
from model.evaluate import Evaluator
from model.finetune import blend, load_job_dataset, prepare_model, run_finetune
from model.registry import ModelStore
from model.train import build_network, make_batch

Row = dict  # epoch, val_map, val_loss, held, ap (per class name)


def held_out_scorer(held: Path, cfg: ModelConfig, tc: TrainConfig) -> Callable:
    ds = read_dataset(held, "yolo")
    images, labels = to_arrays(ds, cfg.input_size)

    @torch.no_grad()
    def score(weights: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
        model = build_network(cfg, tc, weights).eval()
        ev = Evaluator(cfg.S, cfg.B, cfg.C)
        for s in range(0, len(images), 64):
            idx = np.arange(s, min(s + 64, len(images)))
            x, _ = make_batch(images, labels, idx, cfg, tc, None)
            ev.add(model(x).float().numpy(), labels[s : s + len(idx)], None)
        r = ev.result()
        return r.map, {ds.class_names[c]: ap for c, ap in r.ap.items()}

    return score


def trajectory(data: Path, held: Path, base: Path, overrides: dict, every: int = 1) -> list[Row]:
    """A job on ``data`` with the defaults but for ``overrides``, run for its whole
    schedule (no early stopping); epoch 0 and every ``every``-th epoch's kept weights,
    ``keep_base`` applied as the job applies it, scored on ``held``."""
    store = ModelStore(base / "store")
    store.ensure_default(DEFAULT_MODEL)
    spec = JobSpec(
        dataset_format="yolo",
        dataset_path=data,
        train=TrainConfig(**{**FINETUNE.to_dict(), "early_stop_patience": 0, **overrides}),
    )
    run, snaps = base / "run", base / "snaps"
    snaps.mkdir()

    def snapshot(p: dict) -> None:  # the epoch's kept weights, as last.pt has them
        m = p.get("epoch_metrics")
        if m and m["epoch"] > 0 and m["epoch"] % every == 0:
            ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
            torch.save(ckpt["model"], snaps / f"{m['epoch']}.pt")

    out = run_finetune(spec, run, store, progress=snapshot)
    cfg, start, base_classes = prepare_model(store, spec, load_job_dataset(spec))
    old = replace(cfg, class_names=base_classes, C=len(base_classes))
    score = held_out_scorer(held, cfg, spec.train)
    history = json.loads((run / "metrics.json").read_text())
    rows = []
    for epoch in range(0, out.epochs_trained + 1, every):
        w = start
        if epoch:
            w = torch.load(snaps / f"{epoch}.pt", map_location="cpu")
            w = blend(w, start, spec.train.keep_base, old, cfg)
        held_map, ap = score(w)
        h = history[epoch]
        val = {"val_map": h["val_map"], "val_loss": h["val"]["total"]}
        rows.append(Row(epoch=epoch, **val, held=held_map, ap=ap))
    return rows


def best_by(key: Callable[[Row], tuple], patience: int = 20) -> Callable:
    """The epoch with the highest ``key`` so far, stopping ``patience`` epochs after it."""

    def rule(rows: list[Row]) -> tuple[Row, int]:
        best = rows[1]
        for r in rows[1:]:
            if key(r) > key(best):
                best = r
            if r["epoch"] - best["epoch"] >= patience:
                return best, r["epoch"]
        return best, rows[-1]["epoch"]

    return rule


RULES: dict[str, Callable[[list[Row]], tuple[Row, int]]] = {
    "the last": lambda rows: (rows[-1], rows[-1]["epoch"]),
    # the previous default: a tie in val mAP goes to the lower val loss
    "best val mAP, patience 20": best_by(lambda r: (r["val_map"], -r["val_loss"])),
    "lowest val loss, patience 20": best_by(lambda r: (-r["val_loss"],)),
}


def main() -> None:
    setup_logging()
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else FINETUNE.epochs
    base = Path(tempfile.mkdtemp(prefix="bench-keep-"))
    data = write_scenes(base / "job", 200, NEW_JOB, OLD + NEW)
    held_out = write_scenes(base / "held", NEW_HELD_OUT_IMAGES, NEW_HELD_OUT, OLD + NEW)
    rows = trajectory(data, held_out, base, {"epochs": epochs, "seed": seed})
    held = np.array([r["held"] for r in rows])
    top = 1 + int(held[1:].argmax())
    log.info(
        "seed %d: held-out mAP@0.5 highest at epoch %d of %d (%.4f)", seed, top, epochs, held[top]
    )
    for name, rule in RULES.items():
        kept, stopped = rule(rows)
        worst = min(kept["ap"][c] - rows[0]["ap"][c] for c in OLD)
        log.info(
            "  %-30s kept epoch %2d (stopped at %2d): held-out mAP@0.5 %.4f, worst old class %+.4f",
            name, kept["epoch"], stopped, kept["held"], worst,
        )  # fmt: skip


if __name__ == "__main__":
    main()
