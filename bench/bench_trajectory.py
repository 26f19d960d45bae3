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
from pathlib import Path

from bench_finetune import (
    IN_DOMAIN_HELD_OUT,
    IN_DOMAIN_JOB,
    NEW_HELD_OUT,
    NEW_HELD_OUT_IMAGES,
    NEW_JOB,
)
from bench_keep import trajectory
from common import log, setup_logging
from scenes import NEW, OLD, write_scenes

from model.config import FINETUNE


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
    epochs = overrides.get("epochs", FINETUNE.epochs)
    rows = trajectory(data, held, base, overrides, every=max(1, epochs // 8))
    for r in rows:
        log.info(
            "%s %s: epoch %d held-out mAP@0.5 %.4f (val %.4f), worst old class %+.4f",
            case, overrides, r["epoch"], r["held"], r["val_map"],
            min(r["ap"][c] - rows[0]["ap"][c] for c in OLD),
        )  # fmt: skip


if __name__ == "__main__":
    main()
