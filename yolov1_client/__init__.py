"""A small typed client for yolov1-service (needs only httpx and, for ``.npy``
predictions, NumPy; never torch or FastAPI).

    from yolov1_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as c:
        result = c.detect("photo.jpg", conf_threshold=0.3)
        job = c.submit_job({"dataset": {"format": "shapes", "images": 200}, "epochs": 3})
        done = c.wait(job, on_progress=lambda j: print(j["status"], j["progress"]))

Every error answer of the API raises :class:`APIError` with its status and message.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

__all__ = ["APIError", "Client", "ImageSource"]

ImageSource = bytes | str | Path  # file contents, or a path to the file
TERMINAL = ("succeeded", "failed", "cancelled")


class APIError(Exception):
    """An error answer: ``status`` (HTTP), ``detail`` (the API's message, or its list
    of validation errors) and the ``response`` itself."""

    def __init__(self, status: int, detail: Any, response: httpx.Response | None = None) -> None:
        self.status, self.detail, self.response = status, detail, response
        super().__init__(f"{status}: {detail}")


def _raise_for(r: httpx.Response) -> httpx.Response:
    if r.is_success:
        return r
    try:
        body = r.json()
        detail = body.get("detail", body.get("error", body)) if isinstance(body, dict) else body
    except ValueError:
        detail = r.text
    raise APIError(r.status_code, detail, r)


def _read(image: ImageSource) -> tuple[str, bytes]:
    if isinstance(image, bytes):
        return "image", image
    p = Path(image)
    return p.name, p.read_bytes()


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return _raise_for(self.http.request(method, path, **kw)).json()

    # --- detection ----------------------------------------------------------------------
    def detect(
        self,
        images: ImageSource | Sequence[ImageSource],
        *,
        conf_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str | int] | None = None,
        include_raw: bool = False,
        format: str = "json",
    ) -> Any:
        """One image (bytes or a path) gives one result; a list gives a list.
        ``format="coco"`` gives a COCO results list; ``"image"`` the PNG's bytes."""
        many = isinstance(images, list | tuple)
        files = [("image", _read(i)) for i in (images if many else [images])]
        params: dict[str, Any] = {"include_raw": include_raw, "format": format}
        for k, v in (
            ("conf_threshold", conf_threshold),
            ("iou_threshold", iou_threshold),
            ("max_detections", max_detections),
        ):
            if v is not None:
                params[k] = v
        if classes:
            params["classes"] = [str(c) for c in classes]
        r = _raise_for(self.http.post("/v1/detect", files=files, params=params))
        if format == "image":
            return r.content
        out = r.json()
        return [out] if many and isinstance(out, dict) else out

    # --- loss ---------------------------------------------------------------------------
    def loss(self, predictions: Any, labels: list[list[dict[str, Any]]], **options: Any) -> Any:
        """The YOLOv1 loss of ``predictions`` against ``labels``. A NumPy array goes as
        ``.npy`` (exact, compact); nested lists go as JSON. ``options``: ``grid``,
        ``lambda_coord``, ``lambda_noobj``, ``confidence_target``, ``layout``, ``metrics``."""
        if hasattr(predictions, "__array__") and not isinstance(predictions, list):
            import numpy as np

            buf = io.BytesIO()
            np.save(buf, np.asarray(predictions), allow_pickle=False)
            files = {
                "predictions": ("predictions.npy", buf.getvalue(), "application/octet-stream"),
                "labels": (None, json.dumps(labels), "application/json"),
                "options": (None, json.dumps(options), "application/json"),
            }
            return self._json("POST", "/v1/loss", files=files)
        return self._json(
            "POST", "/v1/loss", json={"predictions": predictions, "labels": labels, **options}
        )

    # --- jobs ---------------------------------------------------------------------------
    def submit_job(self, request: dict[str, Any]) -> str:
        """Queue a fine-tuning job (the body of ``POST /v1/jobs``); its id."""
        return self._json("POST", "/v1/jobs", json=request)["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(self, *, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        return self._json("GET", "/v1/jobs", params={"offset": offset, "limit": limit})

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/jobs/{job_id}")

    def events(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[dict[str, Any]]:
        """The job record at each change until it ends (server-sent events). Resumes
        after ``last_event_id`` (a record's ``rev``)."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id else {}
        timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        with self.http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
        ) as r:
            if not r.is_success:
                r.read()
                _raise_for(r)
            event, data = None, []
            for line in r.iter_lines():
                if line == "":
                    if event == "job" and data:
                        yield json.loads("\n".join(data))
                    if event == "end":
                        return
                    event, data = None, []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                # "id:" is the record's rev, also inside it; ":" lines are keep-alives

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Follow the job until it ends; ``on_progress`` gets the record at each change.
        A dropped stream is resumed where it stopped. Raises ``TimeoutError``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        rev = None
        while True:
            try:
                for rec in self.events(job_id, last_event_id=rev):
                    rev = rec.get("rev", rev)
                    if on_progress is not None:
                        on_progress(rec)
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id} still {rec['status']} after {timeout} s")
            except httpx.TransportError:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id}: no answer within {timeout} s") from None
                time.sleep(1.0)
                continue
            rec = self.job(job_id)
            if rec["status"] in TERMINAL:
                return rec

    # --- data sets and models -----------------------------------------------------------
    def upload_dataset(self, zip_file: ImageSource, *, format: str | None = None) -> dict[str, Any]:
        """Upload a data-set zip (YOLO, VOC or COCO); its summary, with the ``id`` a job's
        ``dataset`` names."""
        form = {"format": format} if format else None
        if isinstance(zip_file, bytes):
            files = {"file": ("dataset.zip", zip_file, "application/zip")}
            return self._json("POST", "/v1/datasets", files=files, data=form)
        with open(zip_file, "rb") as f:  # streamed, not read into memory
            files = {"file": (Path(zip_file).name, f, "application/zip")}
            return self._json("POST", "/v1/datasets", files=files, data=form)

    def models(self) -> dict[str, Any]:
        return self._json("GET", "/v1/models")

    def activate(self, version: int) -> dict[str, Any]:
        return self._json("POST", f"/v1/models/{version}/activate")

    def model(self, version: int) -> dict[str, Any]:
        """One version: parent, data set, hyperparameters, metrics and its files."""
        return self._json("GET", f"/v1/models/{version}")

    def download_model(self, version: int, dest: str | Path, *, name: str = "model.onnx") -> Path:
        """Stream one of a version's files (``model.onnx``, ``model.json``, ``model.pt``,
        ``model.int8.onnx``, ``model.int8.json``) to ``dest``, a file or a folder; it is
        checked against the SHA-256 the registry recorded, and only then put in place."""
        import base64
        import hashlib

        dest = Path(dest)
        if dest.is_dir():
            dest = dest / f"yolov1-v{version}-{name}"
        part = dest.with_name(dest.name + ".part")
        h = hashlib.sha256()
        try:
            with self.http.stream("GET", f"/v1/models/{version}/files/{name}") as r:
                if not r.is_success:
                    r.read()
                    _raise_for(r)
                with open(part, "wb") as f:
                    for chunk in r.iter_bytes():
                        h.update(chunk)
                        f.write(chunk)
                want = r.headers.get("repr-digest", "")
            if want.startswith("sha-256=:") and base64.b64decode(want[9:-1]) != h.digest():
                raise APIError(502, f"{name} of version {version} does not match its checksum")
        except BaseException:
            part.unlink(missing_ok=True)  # a broken or failed download leaves nothing
            raise
        part.replace(dest)
        return dest

    def ready(self) -> dict[str, Any]:
        return self._json("GET", "/readyz")
