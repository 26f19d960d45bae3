"""A brute-force YOLOv1 loss written straight from docs/loss.md: plain Python
loops and ``math``, no vectorisation, no code shared with ``model/``."""

from __future__ import annotations

import math


def _iou(a, b):
    """IoU of two (cx, cy, w, h) boxes."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def reference_loss(pred, labels, S, B, C, lambda_coord=5.0, lambda_noobj=0.5, target="iou"):
    """``pred``: nested lists [N][S][S][5B+C]; ``labels``: [N] lists of
    (class_id, cx, cy, w, h). Returns a list of per-image dicts of the terms."""
    out = []
    for n in range(len(pred)):
        # Assign objects to cells: each box clipped to the image, then too small
        # ones skipped, then the first listed wins.
        cell_obj = {}
        dropped = 0
        for c, cx, cy, w, h in labels[n]:
            x1, x2 = min(max(cx - w / 2, 0.0), 1.0), min(max(cx + w / 2, 0.0), 1.0)
            y1, y2 = min(max(cy - h / 2, 0.0), 1.0), min(max(cy + h / 2, 0.0), 1.0)
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            if w < 0.005 or h < 0.005:
                dropped += 1
                continue
            row = min(int(math.floor(cy * S)), S - 1)
            col = min(int(math.floor(cx * S)), S - 1)
            if (row, col) in cell_obj:
                dropped += 1
            else:
                cell_obj[(row, col)] = (int(c), cx, cy, w, h)
        terms = dict(coord_xy=0.0, coord_wh=0.0, obj=0.0, noobj=0.0, **{"class": 0.0})
        for row in range(S):
            for col in range(S):
                cell = pred[n][row][col]
                responsible = None
                if (row, col) in cell_obj:
                    c, cx, cy, w, h = cell_obj[(row, col)]
                    truth = (cx, cy, w, h)
                    ious, rmses = [], []
                    for j in range(B):
                        x, y, sw, sh, _ = cell[5 * j : 5 * j + 5]
                        box = ((col + x) / S, (row + y) / S, sw * sw, sh * sh)
                        ious.append(_iou(box, truth))
                        sq = [(p - t) ** 2 for p, t in zip(box, truth, strict=True)]
                        rmses.append(math.sqrt(sum(sq)))
                    if max(ious) > 0:
                        responsible = ious.index(max(ious))
                    else:
                        responsible = rmses.index(min(rmses))
                    x, y, sw, sh, conf = cell[5 * responsible : 5 * responsible + 5]
                    tx, ty = cx * S - col, cy * S - row
                    terms["coord_xy"] += lambda_coord * ((x - tx) ** 2 + (y - ty) ** 2)
                    terms["coord_wh"] += lambda_coord * (
                        (sw - math.sqrt(w)) ** 2 + (sh - math.sqrt(h)) ** 2
                    )
                    conf_t = ious[responsible] if target == "iou" else 1.0
                    terms["obj"] += (conf - conf_t) ** 2
                    for k in range(C):
                        terms["class"] += (cell[5 * B + k] - (1.0 if k == c else 0.0)) ** 2
                for j in range(B):
                    if j != responsible:
                        terms["noobj"] += lambda_noobj * cell[5 * j + 4] ** 2
        terms["total"] = sum(terms.values())
        terms["dropped"] = dropped
        out.append(terms)
    return out
