"""Decoding the cell layout and the IoU of boxes, written once for NumPy and torch.

The array namespace ``xp`` (``numpy`` or ``torch``) is passed in and only operations
both share are used, so the loss (``model.loss_core``), the decoder
(``model.boxes.decode_predictions``) and the box operations read boxes the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    return iou_parts(xp, [a[..., k] for k in range(4)], [b[..., k] for k in range(4)])


def iou_parts(xp: Any, a: Sequence[Any], b: Sequence[Any]) -> Any:
    """:func:`iou_xyxy` on corners given as four broadcastable arrays each
    (``x1, y1, x2, y2``, as :func:`corner_parts` makes them): no stacking, and no
    strided reads of a last axis of 4 (the loss's IoU took twice as long that way)."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = xp.minimum(ax2, bx2) - xp.maximum(ax1, bx1)
    ih = xp.minimum(ay2, by2) - xp.maximum(ay1, by1)
    inter = xp.where(iw > 0, iw, 0.0) * xp.where(ih > 0, ih, 0.0)

    def area(x1: Any, y1: Any, x2: Any, y2: Any) -> Any:
        w, h = x2 - x1, y2 - y1
        return xp.where(w > 0, w, 0.0) * xp.where(h > 0, h, 0.0)

    union = area(*a) + area(*b) - inter
    return xp.where(union > 0, inter / xp.where(union > 0, union, 1.0), 0.0)


def corner_parts(cx: Any, cy: Any, w: Any, h: Any) -> tuple[Any, Any, Any, Any]:
    """``(cx, cy, w, h)`` arrays of one shape -> ``x1, y1, x2, y2``, each that shape."""
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def corners(xp: Any, cx: Any, cy: Any, w: Any, h: Any) -> Any:
    """``(cx, cy, w, h)`` arrays of one shape -> ``(..., 4)`` corners."""
    return xp.stack(corner_parts(cx, cy, w, h), -1)
