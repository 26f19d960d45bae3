"""A fine-tuning job's whole course on held-out data: bench_finetune.py's new-class or
in-domain case run for its whole schedule (no early stopping) with the defaults but for
the overrides given, every eighth of the epochs scored (``keep_base`` applied, as the
job applies it) on the held-out scenes, with the worst old class's change from the base
model. About 11 minutes for the new-class case on 2 cores in float32. Run from bench/:
``python bench_trajectory.py new|in '{"seed": 1, "warmup_epochs": 1}'``. README's
fine-tuning section has the figures (the warm-up)."""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from bench_finetune import (
    IN_DOMAIN_HELD_OUT,
    IN_DOMAIN_JOB,
    NEW_HELD_OUT,
    NEW_HELD_OUT_IMAGES,
    NEW_JOB,
    fresh_store,
)
from bench_keep import held_out_scorer
from common import log, setup_logging
from scenes import NEW, OLD, write_scenes

from model.config import FINETUNE, JobSpec, TrainConfig
from model.finetune import blend, load_job_dataset, prepare_model, run_finetune


def data_sets(case: str, base: Path) -> tuple[Path, Path]:
    """(job data, held-out data) of bench_finetune.py's ``case``."""
    if case == "in":
        return (
            write_scenes(base / "job", 50, IN_DOMAIN_JOB, OLD),
            write_scenes(base / "held", 150, IN_DOMAIN_HELD_OUT, OLD),
        )
    return (
        write_scenes(base / "job", 200, NEW_JOB, OLD + NEW),
        write_scenes(base / "held", NEW_HELD_OUT_IMAGES, NEW_HELD_OUT, OLD + NEW),
    )


def main() -> None:
    setup_logging()
    case = sys.argv[1] if len(sys.argv) > 1 else "new"
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    base = Path(tempfile.mkdtemp(prefix="bench-trajectory-"))
    data, held = data_sets(case, base)
    store = fresh_store(base, "store")
    tc = TrainConfig(**{**FINETUNE.to_dict(), "early_stop_patience": 0, **overrides})
    spec = JobSpec(dataset_format="yolo", dataset_path=data, train=tc)
    run, snaps = base / "run", base / "snaps"
    snaps.mkdir()
    every = max(1, tc.epochs // 8)

    def snapshot(p: dict) -> None:  # the epoch's kept weights, as last.pt has them
        m = p.get("epoch_metrics")
        if m and m["epoch"] > 0 and m["epoch"] % every == 0:
            ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
            torch.save(ckpt["model"], snaps / f"{m['epoch']}.pt")

    run_finetune(spec, run, store, progress=snapshot)
    cfg, start, base_classes = prepare_model(store, spec, load_job_dataset(spec))
    old = replace(cfg, class_names=base_classes, C=len(base_classes))
    score = held_out_scorer(held, cfg, tc)
    history = json.loads((run / "metrics.json").read_text())
    held0, ap0 = score(start)
    log.info("%s %s: epoch 0 held-out mAP@0.5 %.4f", case, overrides, held0)
    for epoch in sorted(int(p.stem) for p in snaps.glob("*.pt")):
        w = blend(torch.load(snaps / f"{epoch}.pt"), start, tc.keep_base, old, cfg)
        held_map, ap = score(w)
        log.info(
            "%s %s: epoch %d held-out mAP@0.5 %.4f (val %.4f), worst old class %+.4f",
            case, overrides, epoch, held_map, history[epoch]["val_map"],
            min(ap[c] - ap0[c] for c in OLD),
        )  # fmt: skip


if __name__ == "__main__":
    main()
