"""Decoding the cell layout and the IoU of boxes, written once for NumPy and torch.

The array namespace ``xp`` (``numpy`` or ``torch``) is passed in and only operations
both share are used, so the loss (``model.loss_core``), the decoder
(``model.boxes.decode_predictions``) and the box operations read boxes the same way.
"""

from __future__ import annotations

from typing import Any


def cell_boxes(xp: Any, box: Any, idx: Any) -> tuple[Any, Any, Any, Any]:
    """Decode predictor boxes ``(..., S, S, B, >=4)`` of ``(x, y, sqrt_w, sqrt_h, ...)``
    into ``(cx, cy, w, h)``, each ``(..., S, S, B)`` in fractions of the image: the
    centre is ``((col + x) / S, (row + y) / S)``, the size ``(sqrt_w², sqrt_h²)``.
    ``idx`` is ``0, 1, ..., S - 1`` as an array beside ``box`` (device and dtype)."""
    S = idx.shape[0]
    rows = xp.reshape(idx, (S, 1, 1))
    cols = xp.reshape(idx, (1, S, 1))
    cx = (cols + box[..., 0]) / S
    cy = (rows + box[..., 1]) / S
    return cx, cy, box[..., 2] ** 2, box[..., 3] ** 2


def iou_xyxy(xp: Any, a: Any, b: Any) -> Any:
    """IoU of broadcastable ``(..., 4)`` corner boxes ``(x1, y1, x2, y2)`` -> ``(...)``.

    Continuous coordinates (no VOC "+1" pixel); an empty union has IoU 0."""
    iw = xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0])
    ih = xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1])
    inter = xp.where(iw > 0, iw, 0.0) * xp.where(ih > 0, ih, 0.0)

    def area(r: Any) -> Any:
        w, h = r[..., 2] - r[..., 0], r[..., 3] - r[..., 1]
        return xp.where(w > 0, w, 0.0) * xp.where(h > 0, h, 0.0)

    union = area(a) + area(b) - inter
    return xp.where(union > 0, inter / xp.where(union > 0, union, 1.0), 0.0)


def corners(xp: Any, cx: Any, cy: Any, w: Any, h: Any) -> Any:
    """``(cx, cy, w, h)`` arrays of one shape -> ``(..., 4)`` corners."""
    return xp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
