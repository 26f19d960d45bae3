"""The model registry: one folder per version under ``MODEL_STORE`` (no torch).

Layout::

    MODEL_STORE/
      versions/<n>/model.onnx   the exported model
      versions/<n>/model.json   its sidecar metadata (config, export check)
      versions/<n>/model.pt     the checkpoint (weights and configs) to fine-tune from
      versions/<n>/model.int8.onnx, model.int8.json   the int8 variant, where made
      versions/<n>/meta.json    version, name, parent, data set, hyperparameters,
                                metrics, created time, SHA-256 of each file
      active                    the active version number

A version is written to a temporary folder and renamed into place, and
``active`` is replaced atomically, so a reader never sees half a model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

FILES = ("model.onnx", "model.json", "model.pt", "model.int8.onnx", "model.int8.json")
# The store `make run` and the worker use unless YOLOV1_MODEL_STORE says otherwise.
DEFAULT_STORE = Path(__file__).resolve().parents[1] / "registry"


log = logging.getLogger(__name__)

# The source of a version registered from the shipped default model (ensure_default).
SHIPPED = "shipped default model"


class RegistryError(ValueError):
    """A missing, corrupt or mismatching model version."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    def versions(self) -> list[int]:
        return sorted(int(p.name) for p in self.versions_dir.iterdir() if p.name.isdigit())

    def path(self, version: int) -> Path:
        return self.versions_dir / str(version)

    def onnx_path(self, version: int, precision: str = "fp32") -> Path:
        """The version's model; ``precision="int8"`` its int8 variant (which may not exist)."""
        return self.path(version) / ("model.int8.onnx" if precision == "int8" else "model.onnx")

    def checkpoint_path(self, version: int) -> Path:
        return self.path(version) / "model.pt"

    def meta(self, version: int) -> dict[str, Any]:
        p = self.path(version) / "meta.json"
        if not p.exists():
            raise RegistryError(f"model version {version} does not exist")
        return json.loads(p.read_text())

    def register(self, files: dict[str, Path], meta: dict[str, Any]) -> int:
        """Copy ``files`` (names from :data:`FILES`) in as the next version; return it."""
        missing = [n for n in ("model.onnx", "model.json") if n not in files]
        if missing:
            raise RegistryError(f"a version needs {missing}")
        tmp = self.versions_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            sums = {}
            for name, src in files.items():
                if name not in FILES:
                    raise RegistryError(f"unexpected file {name}")
                shutil.copyfile(src, tmp / name)
                sums[name] = _sha256(tmp / name)
            while True:  # several writers may race for the next number
                version = max(self.versions(), default=0) + 1
                full = {**meta, "version": version, "created_at": time.time(), "sha256": sums}
                (tmp / "meta.json").write_text(json.dumps(full, indent=2))
                try:
                    os.rename(tmp, self.path(version))
                    return version
                except OSError:
                    if not self.path(version).exists():
                        raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def verify(self, version: int) -> dict[str, Any]:
        """Check every file against its recorded checksum; return the metadata."""
        meta = self.meta(version)
        for name, digest in meta.get("sha256", {}).items():
            p = self.path(version) / name
            if not p.exists():
                raise RegistryError(f"model version {version}: {name} is missing")
            if _sha256(p) != digest:
                raise RegistryError(f"model version {version}: {name} fails its checksum")
        return meta

    def active_version(self) -> int | None:
        p = self.root / "active"
        try:
            return int(p.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def set_active(self, version: int) -> None:
        self.meta(version)  # raises if it does not exist
        tmp = self.root / f".active-{uuid.uuid4().hex}"
        tmp.write_text(f"{version}\n")
        os.replace(tmp, self.root / "active")

    def prune(self, keep: int) -> list[int]:
        """Remove all but the newest ``keep`` versions, the active one and its parent;
        return the versions removed. Replicas serving a removed version keep it in
        memory; the store only forgets it."""
        versions = self.versions()
        active = self.active_version()
        kept = set(versions[-keep:]) if keep > 0 else set()
        if active is not None:
            kept.add(active)
            parent = self.meta(active).get("parent")
            if isinstance(parent, int):
                kept.add(parent)
        removed = [v for v in versions if v not in kept]
        for v in removed:
            # Rename first, so a reader never meets half a version.
            tmp = self.versions_dir / f".gone-{v}-{uuid.uuid4().hex}"
            self.path(v).rename(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        return removed

    def ensure_default(self, default_onnx: Path) -> int:
        """Register the shipped default model: as version 1 in an empty store, and again
        as a new version when the shipped one has changed since (a new release of the
        service). The new one is activated only while the store serves a shipped default
        model: a version someone trained or chose stays served. Returns the active one.
        Replicas starting together on one store register it once (a file lock)."""
        with open(self.root / ".ensure-default.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._ensure_default(default_onnx)

    def _ensure_default(self, default_onnx: Path) -> int:
        shipped = [v for v in self.versions() if self.meta(v).get("source") == SHIPPED]
        # Every shipped model the store has registered, pruned ones too (a pruned release
        # does not come back at the next start).
        seen_file = self.root / "shipped-sha256"
        seen = set(seen_file.read_text().split()) if seen_file.exists() else set()
        seen |= {self.meta(v).get("sha256", {}).get("model.onnx") for v in shipped}
        digest = _sha256(default_onnx)
        if digest not in seen:
            files = {"model.onnx": default_onnx, "model.json": default_onnx.with_suffix(".json")}
            for name, src in (
                ("model.pt", default_onnx.with_suffix(".pt")),
                ("model.int8.onnx", default_onnx.with_name("model.int8.onnx")),
                ("model.int8.json", default_onnx.with_name("model.int8.json")),
            ):
                if src.exists():
                    files[name] = src
            active = self.active_version()
            version = self.register(files, {"name": "default", "parent": None, "source": SHIPPED})
            with open(seen_file, "a") as f:
                f.write(digest + "\n")
            if active is None or active in shipped:
                self.set_active(version)
            if shipped:
                log.info("the shipped default model has changed: registered as version %d, %s",
                         version, "active" if self.active_version() == version
                         else f"version {active} stays active")  # fmt: skip
        if self.active_version() is None:
            self.set_active(self.versions()[0])
        return self.active_version()
