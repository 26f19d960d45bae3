from __future__ import annotations

import asyncio
import shutil
import stat
import uuid
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from app.schemas import DatasetSummary
from app.state import AuthDep, JobsDep, StateDep
from model.data import read_dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def safe_extract(
    archive: Path, dest: Path, *, max_entries: int, max_bytes: int, max_ratio: float
) -> None:
    """Unpack a zip refusing absolute paths, '..', links, too many entries, too many
    bytes in all, and entries that expand more than ``max_ratio`` times."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise HTTPException(422, "the upload is not a zip file") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            raise HTTPException(
                413, f"the zip has {len(infos)} entries; the limit is {max_entries}"
            )
        total = 0
        for info in infos:
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or "\\" in info.filename:
                raise HTTPException(422, f"unsafe path in the zip: {info.filename!r}")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise HTTPException(422, f"links are not allowed in the zip: {info.filename!r}")
            total += info.file_size
            if total > max_bytes:
                raise HTTPException(413, f"the zip expands past the limit of {max_bytes} bytes")
            if info.compress_size and info.file_size / info.compress_size > max_ratio:
                raise HTTPException(
                    413,
                    f"{info.filename!r} expands {info.file_size / info.compress_size:.0f}"
                    f" times; the limit is {max_ratio:g} (a zip bomb?)",
                )
        try:
            _write_entries(zf, infos, dest)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise HTTPException(422, f"the zip cannot be unpacked: {exc}") from exc


def _write_entries(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], dest: Path) -> None:
    """Write each entry, counting what really comes out, not what the header claims."""
    for info in infos:
        target = dest / info.filename
        if not target.resolve().is_relative_to(dest.resolve()):
            raise HTTPException(422, f"unsafe path in the zip: {info.filename!r}")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as out:
            written = 0
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > info.file_size:
                    raise HTTPException(422, f"{info.filename!r} is larger than its header says")
                out.write(chunk)


def _root_of(dest: Path) -> Path:
    """A zip often holds one top folder: use it as the data set root."""
    entries = [p for p in dest.iterdir() if not p.name.startswith(("__MACOSX", "."))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def _guess_format(root: Path) -> str:
    if (root / "Annotations").is_dir():
        return "voc"
    if any((root / n).exists() for n in ("classes.txt", "obj.names")) or any(
        p.suffix in (".yaml", ".yml") for p in root.glob("*.y*ml")
    ):
        return "yolo"
    if any(next(root.glob(g), None) for g in ("*.xml", "*/*.xml")):
        return "voc"  # XML beside the images (Roboflow's and LabelImg's exports)
    if any(next(root.glob(g), None) for g in ("*.json", "annotations/*.json", "*/*.json")):
        return "coco"
    raise HTTPException(
        422,
        "cannot tell the format: expected data.yaml (or another YAML file), classes.txt or "
        "obj.names (yolo), Annotations/ or .xml files (voc) or COCO .json files (./, "
        "annotations/ or one per split folder)",
    )


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": "a zip in YOLO, VOC or COCO form"},
                        "format": {"type": "string", "enum": ["yolo", "voc", "coco"],
                                   "description": "default: recognised from the files"},
                    },
                }
            }
        },
    }
}  # fmt: skip


async def _read_form(request: Request) -> tuple[UploadFile, str | None]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise HTTPException(415, "send multipart/form-data with a 'file' field (the zip)")
    try:
        form = await request.form(max_files=1, max_fields=10)
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from exc
    file, fmt = form.get("file"), form.get("format")
    if not isinstance(file, UploadFile):
        raise HTTPException(422, "the multipart body needs a 'file' field holding the zip")
    if fmt is not None and (not isinstance(fmt, str) or fmt not in ("yolo", "voc", "coco", "")):
        raise HTTPException(422, "format must be one of yolo, voc, coco")
    return file, fmt or None


@router.post(
    "",
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    response_model=DatasetSummary,
    summary="Upload a data set (zip)",
    responses={
        401: {"description": "API key needed"},
        413: {"description": "too large"},
        422: {"description": "not a usable data set"},
    },
)
async def upload(
    request: Request, state: StateDep, jobs: JobsDep, _auth: AuthDep
) -> DatasetSummary:
    """Multipart: ``file``, a zip in YOLO, VOC or COCO form, and optionally ``format``.
    The key is checked before the body is read (FastAPI would read a form declared as
    parameters first), so a refused upload costs no gigabytes."""
    file, format = await _read_form(request)
    s = state.settings
    dataset_id = uuid.uuid4().hex[:16]
    base = s.data_root / "uploads"
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{dataset_id}"
    tmp.mkdir()
    archive = base / f".tmp-{dataset_id}.zip"
    try:
        size = 0
        with open(archive, "wb") as out:
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > s.max_dataset_upload_bytes:
                    raise HTTPException(
                        413,
                        f"the upload exceeds {s.max_dataset_upload_bytes} bytes "
                        "(YOLOV1_MAX_DATASET_UPLOAD_MB)",
                    )
                out.write(chunk)
        await asyncio.to_thread(
            safe_extract,
            archive,
            tmp,
            max_entries=s.max_dataset_entries,
            max_bytes=int(s.max_dataset_mb * 1024 * 1024),
            max_ratio=s.max_compression_ratio,
        )
        root = _root_of(tmp)
        fmt = format or _guess_format(root)
        try:
            ds = await asyncio.to_thread(read_dataset, root, fmt)
        except ValueError as exc:
            raise HTTPException(422, f"not a usable {fmt} data set: {exc}") from exc
        if len(ds) == 0:
            raise HTTPException(
                422, f"no usable images in the {fmt} data set; skipped: {ds.skipped[:20]}"
            )
        if not any(len(r.labels) for r in ds.records):
            raise HTTPException(
                422,
                f"none of the {len(ds)} images of the {fmt} data set has a box to learn "
                f"from; skipped: {ds.skipped[:20]}",
            )
        final = base / dataset_id
        tmp.rename(final)
        path = final / root.relative_to(tmp) if root != tmp else final
        summary = {"id": dataset_id, "format": fmt, **ds.summary()}
        jobs.save_dataset({**summary, "path": str(path)})
        return DatasetSummary(**summary)
    finally:
        archive.unlink(missing_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
