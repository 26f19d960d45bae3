"""COCO out: the ground truth and results layouts, and mAP@[.5:.95] from pycocotools,
on a case small enough to work out by hand."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from model import coco
from model.evaluate import Evaluator
from model.metrics import ImageDetections, ImageTruth
from support.procs import DEFAULT_MODEL, ROOT


def _box(x: float, y: float, w: float, h: float, size=(200, 100)) -> list[float]:
    """Pixels [x, y, w, h] -> xyxy fractions of a ``size`` (width, height) image."""
    W, H = size
    return [x / W, y / H, (x + w) / W, (y + h) / H]


def test_map_over_iou_thresholds_by_hand():
    # Two objects of class 0. Detection A hits object 1 exactly (score 0.9); detection B
    # overlaps object 2 with IoU 0.714 (score 0.8): a match at IoU 0.50 .. 0.70 (five of
    # COCO's ten thresholds), a false positive at 0.75 .. 0.95.
    truth = ImageTruth(
        np.array([_box(10, 10, 50, 50), _box(100, 20, 60, 40)]), np.array([0, 0]), None
    )
    # Object 2 is 60 x 40; B is 60 x 40 shifted 10 px right: IoU = 50*40 / (2*2400 - 50*40).
    iou = 50 * 40 / (2 * 2400 - 50 * 40)
    assert 0.70 < iou < 0.75
    dets = ImageDetections(
        np.array([_box(10, 10, 50, 50), _box(110, 20, 60, 40)]),
        np.array([0.9, 0.8]),
        np.array([0, 0]),
    )
    gt = coco.ground_truth([truth], [(200, 100)], ["thing"])
    res = coco.results([dets], [(200, 100)])
    assert res[1]["bbox"] == pytest.approx([110, 20, 60, 40])
    assert gt["annotations"][1]["bbox"] == pytest.approx([100, 20, 60, 40])
    m = coco.coco_map(gt, res)
    # At each of the five lower thresholds both detections match: AP 1. At the five
    # higher ones only A does: precision 1 up to recall 0.5, then nothing; COCO's
    # 101 recall points 0, 0.01, .., 0.5 (51 of them) have precision 1: AP 51/101.
    assert m["map"] == pytest.approx((5 * 1.0 + 5 * 51 / 101) / 10, abs=1e-6)
    assert m["map50"] == pytest.approx(1.0) and m["map75"] == pytest.approx(51 / 101)


def test_difficult_objects_are_ignored_as_crowd_regions():
    truth = ImageTruth(
        np.array([_box(10, 10, 50, 50), _box(100, 20, 60, 40)]),
        np.array([0, 0]),
        np.array([False, True]),
    )
    found = np.array([_box(10, 10, 50, 50), _box(100, 20, 60, 40)])
    # The difficult object found, or missed: neither changes anything (VOC's rule).
    for boxes in (found, found[:1]):
        dets = ImageDetections(boxes, np.array([0.9, 0.8])[: len(boxes)], np.zeros(len(boxes)))
        gt = coco.ground_truth([truth], [(200, 100)], ["thing"])
        assert coco.coco_map(gt, coco.results([dets], [(200, 100)]))["map"] == pytest.approx(1.0)


def test_val_writes_coco_files_that_pycocotools_reads(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "dets.json"
    r = subprocess.run(
        [sys.executable, "-m", "model.cli", "val", str(DEFAULT_MODEL), "--data", "shapes",
         "--images", "40", "--save-json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("COCO mAP@[.5:.95]"))
    printed = float(line.split()[2])
    gt_path = tmp_path / "dets_gt.json"
    dets = json.loads(out.read_text())
    assert dets and set(dets[0]) == {"image_id", "category_id", "bbox", "score"}
    coco_gt = COCO(str(gt_path))
    ev = COCOeval(coco_gt, coco_gt.loadRes(str(out)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(printed, abs=1e-4) and 0.3 < printed < 1


def test_the_evaluator_and_coco_agree_on_a_perfect_model():
    S, B, C = 7, 2, 3
    ev = Evaluator(S, B, C)
    grid = np.zeros((1, S, S, 5 * B + C), np.float32)
    # one object, class 2, in cell (row 3, col 4): cx = (4 + 0.5) / 7, cy = (3 + 0.5) / 7
    grid[0, 3, 4, 0:5] = [0.5, 0.5, np.sqrt(0.2), np.sqrt(0.3), 1.0]
    grid[0, 3, 4, 5 * B + 2] = 1.0
    labels = np.array([[2, 4.5 / 7, 3.5 / 7, 0.2, 0.3]])
    ev.add(grid, [labels])
    assert ev.result().map == pytest.approx(1.0)
    gt = coco.ground_truth(ev.truths, [(448, 448)], ["a", "b", "c"])
    m = coco.coco_map(gt, coco.results(ev.detections, [(448, 448)]))
    assert m["map"] == pytest.approx(1.0) and m["map_small"] is None


def _val(capsys, model, data) -> dict[str, str]:
    from model.cli import main

    main(["val", str(model), "--data", str(data)])
    out = capsys.readouterr().out
    return {ln.split()[0]: ln for ln in out.splitlines() if " AP@0.5 " in ln}


def test_val_matches_classes_by_name_and_scores_unknown_ones_zero(tmp_path, capsys):
    """A data set with the model's classes in another order plus one it does not know
    (a job's data, before the job): each known class scores as on its own, the new one 0."""
    from model.shapes import CLASS_NAMES, write_yolo_dataset

    plain = tmp_path / "plain"
    write_yolo_dataset(str(plain), 30, seed=7, level="medium")
    before = _val(capsys, DEFAULT_MODEL, plain)

    names = ["hexagon", *reversed(CLASS_NAMES)]
    mixed = tmp_path / "mixed"
    (mixed / "labels").mkdir(parents=True)
    (mixed / "images").symlink_to(plain / "images")
    for f in sorted((plain / "labels").glob("*.txt")):
        rows = [ln.split() for ln in f.read_text().splitlines()]
        rows = [[str(names.index(CLASS_NAMES[int(r[0])])), *r[1:]] for r in rows]
        rows.append(["0", "0.9", "0.9", "0.1", "0.1"])  # a hexagon the model cannot know
        (mixed / "labels" / f.name).write_text("\n".join(" ".join(r) for r in rows) + "\n")
    (mixed / "data.yaml").write_text("names: [" + ", ".join(names) + "]\n")
    after = _val(capsys, DEFAULT_MODEL, mixed)

    for name in CLASS_NAMES:
        ap = before[name].split()[2]
        assert float(ap) > 0.5 and after[name].split()[2] == ap, (before[name], after[name])
    assert after["hexagon"].split()[2] == "0.0000" and "does not know" in after["hexagon"]

    (mixed / "data.yaml").write_text("names: [hexagon, ring]\n")
    for f in (mixed / "labels").glob("*.txt"):
        f.write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(SystemExit, match="share no name"):
        _val(capsys, DEFAULT_MODEL, mixed)
