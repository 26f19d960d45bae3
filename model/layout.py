"""Conversion between darknet's flat YOLOv1 output and the cell layout.

darknet's detection layer writes one flat vector per image: ``S*S*C`` class
scores, then ``S*S*B`` confidences, then ``S*S*B*4`` box values
``(x, y, sqrt_w, sqrt_h)``; cells are numbered ``row * S + col``. The cell
layout is ``(N, S, S, 5B + C)``: per cell B blocks of ``(x, y, sqrt_w, sqrt_h,
conf)`` then C class scores. Works on NumPy arrays and torch tensors alike.
"""

from __future__ import annotations

from typing import Any


def _cat(parts: list[Any], axis: int) -> Any:
    first = parts[0]
    if hasattr(first, "detach"):  # torch, imported only by whoever passed a tensor
        import torch

        return torch.cat(parts, dim=axis)
    import numpy as np

    return np.concatenate(parts, axis=axis)


def darknet_length(S: int, B: int, C: int) -> int:
    return S * S * (C + 5 * B)


def darknet_to_cells(flat: Any, *, S: int, B: int, C: int) -> Any:
    """``(N, S*S*(5B+C))`` darknet vectors -> ``(N, S, S, 5B + C)``."""
    L = darknet_length(S, B, C)
    if len(flat.shape) != 2 or flat.shape[1] != L:
        raise ValueError(
            f"darknet predictions must have shape (N, {L}) for S={S}, B={B}, C={C}, "
            f"got {tuple(flat.shape)}"
        )
    N = flat.shape[0]
    n_cls, n_conf = S * S * C, S * S * B
    cls = flat[:, :n_cls].reshape(N, S, S, C)
    conf = flat[:, n_cls : n_cls + n_conf].reshape(N, S, S, B, 1)
    coords = flat[:, n_cls + n_conf :].reshape(N, S, S, B, 4)
    boxes = _cat([coords, conf], axis=-1).reshape(N, S, S, 5 * B)  # (N, S, S, 5B)
    return _cat([boxes, cls], axis=-1)  # (N, S, S, 5B + C)


def cells_to_darknet(cells: Any, *, S: int, B: int, C: int) -> Any:
    """``(N, S, S, 5B + C)`` -> ``(N, S*S*(5B+C))`` darknet vectors."""
    if len(cells.shape) != 4 or tuple(cells.shape[1:]) != (S, S, 5 * B + C):
        raise ValueError(
            f"predictions must have shape (N, {S}, {S}, {5 * B + C}), got {tuple(cells.shape)}"
        )
    N = cells.shape[0]
    boxes = cells[..., : 5 * B].reshape(N, S, S, B, 5)
    parts = [
        cells[..., 5 * B :].reshape(N, -1),
        boxes[..., 4].reshape(N, -1),
        boxes[..., :4].reshape(N, -1),
    ]
    return _cat(parts, axis=1)
