"""Model hyperparameters, saved beside every checkpoint and ONNX file (no torch)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ARCHITECTURES = ("yolov1", "fast-yolov1", "tiny-yolov1")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network and pre/post-process its images."""

    arch: str = "tiny-yolov1"
    input_size: int = 224  # square network input; images are resized (stretched) to it
    S: int = 7
    B: int = 2
    C: int = 5
    class_names: list[str] = field(default_factory=list)
    # Pixels are fed as (rgb / 255 - mean) / std, channels first.
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    layout: str = "cells"  # output (N, S, S, 5B + C), see docs/loss.md
    # "sigmoid" squashes x, y, conf and class scores into [0, 1] inside the
    # network (still the loss's layout); "linear" is the paper's last layer.
    head_activation: str = "linear"
    width: int = 32  # channel multiplier of the tiny network

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if not self.class_names:
            self.class_names = [f"class{i}" for i in range(self.C)]
        if len(self.class_names) != self.C:
            raise ValueError(f"{len(self.class_names)} class names for C={self.C}")
        if self.head_activation not in ("linear", "sigmoid"):
            raise ValueError(f"head_activation must be linear or sigmoid: {self.head_activation}")

    @property
    def channels(self) -> int:
        return 5 * self.B + self.C

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
