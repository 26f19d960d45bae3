"""Where a job's data set lives: one resolver, with the data-root check, for the API
(at submit time) and the worker (at run time)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.store import JobStore
from model.preprocess import IMAGE_SUFFIXES


class DatasetError(ValueError):
    """The data set reference cannot be used; the message says why."""


@dataclass(frozen=True)
class DatasetLocation:
    format: str  # "yolo" | "voc" | "coco" | "shapes"
    path: Path | None  # None for generated shapes
    dataset_id: str | None = None


def resolve_dataset(ref: dict[str, Any], store: JobStore, data_root: Path) -> DatasetLocation:
    """``ref`` is a job request's ``dataset``: ``{"format", "path" | "dataset_id"}``.
    A path must stay inside ``data_root`` and exist; an id must name an uploaded data
    set of that format."""
    fmt = ref["format"]
    if fmt == "shapes":
        return DatasetLocation("shapes", None)
    path, dataset_id = ref.get("path"), ref.get("dataset_id")
    if (path is None) == (dataset_id is None):
        raise DatasetError("dataset needs exactly one of 'path' or 'dataset_id'")
    if dataset_id is not None:
        rec = store.get_dataset(dataset_id)
        if rec is None:
            raise DatasetError(f"data set {dataset_id} does not exist")
        if rec["format"] != fmt:
            raise DatasetError(f"data set {dataset_id} is {rec['format']}, not {fmt}")
        return DatasetLocation(fmt, Path(rec["path"]), dataset_id)
    root = data_root.resolve()
    shown = path if len(path) <= 200 else f"{path[:200]}..."
    try:
        target = (root / path).resolve()
        inside = target.is_relative_to(root)
        exists = inside and target.exists()
    except (OSError, ValueError) as exc:  # NUL bytes, names too long
        raise DatasetError(f"dataset.path {shown!r} is not a usable path") from exc
    if not inside:
        raise DatasetError("dataset.path must stay inside the data root")
    if not exists:
        raise DatasetError(f"dataset.path {shown!r} does not exist under the data root")
    if not has_an_image(target):
        raise DatasetError(
            f"dataset.path {shown!r} holds no image file ({', '.join(IMAGE_SUFFIXES)}): "
            "nothing to train on"
        )
    return DatasetLocation(fmt, target)


def has_an_image(folder: Path, budget: int = 200_000) -> bool:
    """Whether any file under ``folder`` is an image, looking at no more than ``budget``
    entries (a submit must answer quickly; the reader says the rest at run time)."""
    stack, seen = [folder], 0
    while stack and seen < budget:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    seen += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                        return True
        except OSError:
            continue
    return seen >= budget  # too large to tell here: let the worker read it
