"""How far to move a fine-tuned model back toward its base (``keep_base``): the
new-class job of bench_finetune.py run once without the blend, then its kept weights
blended at several shares and each scored on the 400 held-out scenes. About 4 minutes
a seed on 2 cores with bf16. Run from bench/: ``python bench_blend.py SEED``. README's
"Fine-tuning jobs" has the figures."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from bench_finetune import NEW_HELD_OUT, NEW_HELD_OUT_IMAGES, NEW_JOB
from bench_keep import held_out_scorer
from common import DEFAULT_MODEL, log, setup_logging
from scenes import NEW, OLD, write_scenes

from model.config import FINETUNE, JobSpec, TrainConfig
from model.finetune import blend, load_job_dataset, prepare_model, run_finetune
from model.registry import ModelStore

SHARES = (0.0, 0.05, 0.1, 0.15, 0.2)


def main() -> None:
    setup_logging()
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    base = Path(tempfile.mkdtemp(prefix="bench-blend-"))
    data = write_scenes(base / "job", 200, NEW_JOB, OLD + NEW)
    held = write_scenes(base / "held", NEW_HELD_OUT_IMAGES, NEW_HELD_OUT, OLD + NEW)
    store = ModelStore(base / "store")
    store.ensure_default(DEFAULT_MODEL)
    unblended = {**FINETUNE.to_dict(), "seed": seed, "keep_base": 0.0}
    spec = JobSpec(dataset_format="yolo", dataset_path=data, train=TrainConfig(**unblended))
    out = run_finetune(spec, base / "run", store)
    cfg, start, base_classes = prepare_model(store, spec, load_job_dataset(spec))
    old = replace(cfg, class_names=base_classes, C=len(base_classes))
    score = held_out_scorer(held, cfg, spec.train)
    _, before = score(start)
    kept = torch.load(base / "run" / "last.pt", map_location="cpu", weights_only=False)["model"]
    log.info("seed %d: kept epoch %d", seed, out.best_epoch)
    for share in SHARES:
        held_map, ap = score(blend(kept, start, share, old, cfg))
        worst = min(ap[c] - before[c] for c in OLD)
        log.info(
            "  keep_base %.2f: held-out mAP@0.5 %.4f, worst old class %+.4f | %s",
            share, held_map, worst, ", ".join(f"{c} {v:.3f}" for c, v in ap.items()),
        )  # fmt: skip


if __name__ == "__main__":
    main()
