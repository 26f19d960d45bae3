"""The Label Studio ML backend protocol (label_studio_ml/api.py): which control and
image a project's labelling config names, where a task's image comes from, and
detections as ``RectangleLabels`` results in percent of the image."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from app.errors import InputError
from model.infer import Detection

MAX_CONFIG_CHARS = 200_000


@dataclass
class Target:
    """A ``<RectangleLabels name=from_name toName=to_name>`` and the ``<Image>`` it
    labels, whose ``value="$key"`` names the task's data field holding the image."""

    from_name: str = "label"
    to_name: str = "image"
    data_key: str = "image"
    labels: list[str] = field(default_factory=list)  # empty: every class


def parse_config(label_config: str | None) -> Target:
    """The first RectangleLabels of the config (Label Studio's names otherwise)."""
    if not label_config:
        return Target()
    if len(label_config) > MAX_CONFIG_CHARS:
        raise InputError(413, f"label_config exceeds {MAX_CONFIG_CHARS} characters")
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as exc:
        raise InputError(422, f"label_config is not valid XML: {exc}") from exc
    images = {el.get("name"): el.get("value", "") for el in root.iter("Image")}
    for el in root.iter("RectangleLabels"):
        to_name = el.get("toName", "")
        if to_name not in images:
            raise InputError(422, f"RectangleLabels toName={to_name!r} names no <Image>")
        value = images[to_name]
        if not value.startswith("$"):
            raise InputError(422, f'<Image name={to_name!r}> needs value="$field"')
        labels = [lab.get("value", "") for lab in el.iter("Label") if lab.get("value")]
        return Target(el.get("name", "label"), to_name, value[1:], labels)
    raise InputError(422, "label_config has no <RectangleLabels> for an <Image>")


def class_to_label(class_names: list[str], labels: list[str]) -> dict[int, str]:
    """Which model classes the project labels, matched by name (case aside)."""
    if not labels:
        return dict(enumerate(class_names))
    by_lower = {lab.lower(): lab for lab in labels}
    return {k: by_lower[n.lower()] for k, n in enumerate(class_names) if n.lower() in by_lower}


def task_image_ref(task: Any, target: Target, i: int) -> str:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise InputError(422, f"tasks[{i}] needs a 'data' object")
    ref = task["data"].get(target.data_key)
    if not isinstance(ref, str) or not ref:
        raise InputError(
            422, f"tasks[{i}].data has no image at {target.data_key!r} (the config's $-field)"
        )
    return ref


def regions(
    detections: list[Detection],
    width: int,
    height: int,
    target: Target,
    labels: dict[int, str],
) -> list[dict[str, Any]]:
    """Boxes as RectangleLabels regions: x, y, width, height in percent of the image."""
    out = []
    for d in detections:
        if d.class_id not in labels:
            continue
        x1, y1, x2, y2 = d.box
        out.append(
            {
                "id": uuid.uuid4().hex[:10],
                "from_name": target.from_name,
                "to_name": target.to_name,
                "type": "rectanglelabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "x": 100.0 * x1 / width,
                    "y": 100.0 * y1 / height,
                    "width": 100.0 * (x2 - x1) / width,
                    "height": 100.0 * (y2 - y1) / height,
                    "rotation": 0,
                    "rectanglelabels": [labels[d.class_id]],
                },
                "score": d.confidence,
            }
        )
    return out


def prediction(result: list[dict[str, Any]], model_version: str) -> dict[str, Any]:
    """One task's prediction; its score (the mean of its regions') orders tasks in
    Label Studio's active learning."""
    scores = [r["score"] for r in result]
    return {
        "result": result,
        "score": sum(scores) / len(scores) if scores else 0.0,
        "model_version": model_version,
    }
