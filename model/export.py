"""Export a checkpoint to ONNX with its config as metadata, verified against PyTorch."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import ModelConfig
from model.infer import METADATA_KEY, sidecar_path
from model.networks import YoloV1, build_model
from model.preprocess import to_input

log = logging.getLogger(__name__)
OPSET = 17
TOLERANCE = 1e-4


class ExportMismatchError(RuntimeError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""


def load_checkpoint(path: str | Path) -> tuple[YoloV1, dict[str, Any]]:
    """Rebuild the network from the checkpoint's own config and load its weights."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def verify_onnx(
    onnx_path: str | Path, model: torch.nn.Module, inputs: list[np.ndarray], tol: float = TOLERANCE
) -> float:
    """Largest |ONNX Runtime - PyTorch| over ``inputs`` (each ``(N, 3, H, W)`` float32);
    raises :class:`ExportMismatchError` when it exceeds ``tol``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    worst = 0.0
    model = model.eval().float()
    for x in inputs:
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = sess.run(None, {name: x})[0]
        if got.shape != ref.shape:
            raise ExportMismatchError(f"ONNX output shape {got.shape} != PyTorch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    if not worst <= tol:
        raise ExportMismatchError(
            f"ONNX Runtime output differs from PyTorch by {worst:.3g} (tolerance {tol:g})"
        )
    return worst


def export_onnx(
    checkpoint: str | Path,
    out_path: str | Path,
    *,
    real_images: np.ndarray | None = None,
    opset: int = OPSET,
) -> dict[str, Any]:
    """Write ``out_path`` (ONNX) and its sidecar JSON; return the metadata.

    ``real_images``: ``(N, size, size, 3)`` uint8 used, with random input, to
    verify the export. On a mismatch both files are removed and
    :class:`ExportMismatchError` is raised.
    """
    import onnx

    model, ckpt = load_checkpoint(checkpoint)
    cfg = model.cfg
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, cfg.input_size, cfg.input_size)
    tmp = out_path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated, but it needs no extra
        # dependency (onnxscript) and exports this plain CNN exactly.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            opset_version=opset,
            input_names=["images"],
            output_names=["grid"],
            dynamic_axes={"images": {0: "batch"}, "grid": {0: "batch"}},
            dynamo=False,
        )
    history = ckpt.get("history", [])
    metadata = {
        "model_config": cfg.to_dict(),
        "input": {
            "name": "images",
            "shape": ["batch", 3, cfg.input_size, cfg.input_size],
            "pixels": "RGB, (x / 255 - mean) / std, resized (stretched) to input_size",
        },
        "output": {
            "name": "grid",
            "shape": ["batch", cfg.S, cfg.S, cfg.channels],
            "layout": cfg.layout,
        },
        "train_config": ckpt.get("train_config", {}),
        "training_metrics": history[-1] if history else {},
        "best_val_map50": ckpt.get("best_map"),
        "epochs_trained": len(history),
    }
    proto = onnx.load(str(tmp))
    _embed(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    rng = np.random.default_rng(0)
    inputs = [rng.normal(0, 1, (2, 3, cfg.input_size, cfg.input_size)).astype(np.float32)]
    if real_images is not None and len(real_images):
        inputs.append(to_input(real_images, cfg))
    try:
        worst = verify_onnx(tmp, model, inputs)
    except ExportMismatchError:
        tmp.unlink(missing_ok=True)
        raise
    metadata["export"] = {"opset": opset, "max_abs_diff_vs_torch": worst}
    tmp.replace(out_path)
    sidecar_path(out_path).write_text(json.dumps(metadata, indent=2))
    log.info("exported %s (max |onnx - torch| = %.2e)", out_path, worst)
    return metadata


def _embed(proto: Any, metadata: dict[str, Any]) -> None:
    """Set the model's metadata entry in an ONNX ``ModelProto`` (replacing any)."""
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = json.dumps(metadata)
            return
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)


def update_metadata(onnx_path: str | Path, **fields: Any) -> dict[str, Any]:
    """Set top-level metadata ``fields`` in an exported model, inside the ONNX file and in
    its sidecar alike; return the new metadata."""
    import onnx

    from model.infer import read_metadata

    onnx_path = Path(onnx_path)
    metadata = {**read_metadata(onnx_path), **fields}
    proto = onnx.load(str(onnx_path))
    _embed(proto, metadata)
    tmp = onnx_path.with_suffix(".tmp.onnx")
    onnx.save(proto, str(tmp))
    tmp.replace(onnx_path)
    sidecar_path(onnx_path).write_text(json.dumps(metadata, indent=2))
    return metadata


def slim_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Keep what is needed to rebuild, serve and fine-tune from: weights and configs."""
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    keep = ("model", "model_config", "train_config", "history", "best_map", "epoch")
    torch.save({k: ckpt[k] for k in keep if k in ckpt}, dst)
