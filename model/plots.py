"""Loss and mAP curves as PNG (matplotlib, Agg; no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(history: list[dict[str, Any]], path: str | Path | None = None) -> bytes:
    """``history``: per-epoch dicts with ``epoch``, ``train`` and ``val`` (loss terms
    with "total") and ``val_map``. Returns the PNG bytes (and writes ``path``)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [h["epoch"] for h in history]
    a.plot(ep, [h["train"].get("total", float("nan")) for h in history], "o-", label="train")
    a.plot(ep, [h.get("val", {}).get("total", float("nan")) for h in history], "o-", label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(ep, [h.get("val_map", float("nan")) for h in history], "o-", color="tab:green")
    b.set_xlabel("epoch")
    b.set_ylabel("val mAP@0.5")
    b.set_ylim(0, 1)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    if path is not None:
        Path(path).write_bytes(buf.getvalue())
    return buf.getvalue()
