"""The Label Studio ML backend protocol (label_studio_ml/api.py): which control and
image a project's labelling config names, where a task's image comes from, how this
backend signs in to Label Studio to read it, and detections as ``RectangleLabels``
results in percent of the image."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.errors import InputError
from app.sources import decode_base64, fetch_image, fetch_limits
from model.config import class_key
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
    """Which model classes the project labels, matched by name (``class_key``: case,
    spaces, ``_`` and ``-`` aside)."""
    if not labels:
        return dict(enumerate(class_names))
    by_key = {class_key(lab): lab for lab in labels}
    return {k: by_key[class_key(n)] for k, n in enumerate(class_names) if class_key(n) in by_key}


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


def yolo_lines(task: dict[str, Any], target: Target, names: list[str]) -> list[str] | None:
    """A task's newest annotation that was not skipped, as YOLO label lines
    (``class cx cy w h``, fractions of the image), or None when no annotation counts.
    Regions of the config's RectangleLabels only; a rotated rectangle gives the upright
    box around it; a label outside ``names`` is left out."""
    done = [
        a
        for a in task.get("annotations") or []
        if isinstance(a, dict) and not a.get("was_cancelled") and isinstance(a.get("result"), list)
    ]
    if not done:
        return None
    newest = max(done, key=lambda a: (str(a.get("updated_at") or ""), a.get("id") or 0))
    index = {n: k for k, n in enumerate(names)}
    lines = []
    for r in newest["result"]:
        if not isinstance(r, dict) or r.get("type") != "rectanglelabels":
            continue
        v = r.get("value")
        if r.get("from_name") != target.from_name:
            continue
        if not isinstance(v, dict) or not v.get("rectanglelabels"):
            continue
        k = index.get(v["rectanglelabels"][0])
        try:
            x, y, w, h = (float(v[key]) / 100 for key in ("x", "y", "width", "height"))
            rot = math.radians(float(v.get("rotation") or 0))
        except (KeyError, TypeError, ValueError):
            continue
        if k is None or not all(map(math.isfinite, (x, y, w, h, rot))) or w <= 0 or h <= 0:
            continue
        # Label Studio rotates about the top-left corner (x, y), in the image's pixels.
        pw, ph = (float(r.get(key) or 1) for key in ("original_width", "original_height"))
        c, sn = math.cos(rot), math.sin(rot)
        corners = [(dx * pw, dy * ph) for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))]
        xs = [x + (dx * c - dy * sn) / pw for dx, dy in corners]
        ys = [y + (dx * sn + dy * c) / ph for dx, dy in corners]
        x1, x2 = max(0.0, min(xs)), min(1.0, max(xs))
        y1, y2 = max(0.0, min(ys)), min(1.0, max(ys))
        if x2 > x1 and y2 > y1:
            lines.append(f"{k} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}")
    return lines


def jwt_claims(token: str) -> dict[str, Any] | None:
    """A JWT's payload, unverified (Label Studio checks it; we only read ``token_type``
    and ``exp``), or None when ``token`` is not a JWT (a legacy API token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


class StudioAuth:
    """The ``Authorization`` header for Label Studio's files.

    A legacy API token goes as ``Token <key>``. A personal access token (Label Studio
    1.20+, where legacy tokens are off by default) is a JWT refresh token that Label
    Studio refuses on its own: it is exchanged at ``/api/token/refresh/`` for an access
    token (valid minutes), sent as ``Bearer``, and exchanged again shortly before that
    one expires."""

    RENEW_BEFORE_S = 30.0

    def __init__(self, base_url: str, key: str | None, *, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout_s = timeout_s
        claims = jwt_claims(key) if key else None
        self.refresh_token = key if claims and claims.get("token_type") == "refresh" else None
        self._access: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def headers(self) -> dict[str, str]:
        if not self.key:
            return {}
        if self.refresh_token is None:
            # A legacy token, or an access token given as is.
            return {"Authorization": f"{'Bearer' if jwt_claims(self.key) else 'Token'} {self.key}"}
        async with self._lock:
            if self._access is None or time.time() > self._expires - self.RENEW_BEFORE_S:
                self._access, self._expires = await self._exchange()
        return {"Authorization": f"Bearer {self._access}"}

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET one of Label Studio's API routes (``/api/...``) as this backend's user."""
        url = self.base_url + path
        try:
            async with httpx.AsyncClient(timeout=max(self.timeout_s, 60.0)) as client:
                r = await client.get(url, params=params, headers=await self.headers())
        except httpx.HTTPError as exc:
            raise InputError(422, f"could not reach Label Studio at {url}: {exc}") from exc
        if r.status_code != 200:
            raise InputError(
                422, f"Label Studio answered {r.status_code} to GET {path}: {r.text[:300]}"
            )
        try:
            return r.json()
        except ValueError as exc:
            raise InputError(422, f"Label Studio's answer to GET {path} is not JSON") from exc

    async def _exchange(self) -> tuple[str, float]:
        url = f"{self.base_url}/api/token/refresh/"
        where = "YOLOV1_LABELSTUDIO_API_KEY (a personal access token)"
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                r = await client.post(url, json={"refresh": self.refresh_token})
        except httpx.HTTPError as exc:
            msg = f"could not reach Label Studio at {url} to use {where}: {exc}"
            raise InputError(422, msg) from exc
        try:
            access = r.json().get("access") if r.status_code == 200 else None
        except (ValueError, AttributeError):
            access = None
        if not isinstance(access, str):
            raise InputError(
                422,
                f"Label Studio refused {where} at {url} ({r.status_code}): make a new token "
                "in Label Studio (Account & Settings) and set it",
            )
        exp = (jwt_claims(access) or {}).get("exp")
        return access, float(exp) if isinstance(exp, int | float) else time.time() + 60


async def task_image(ref: str, settings: Any, studio: StudioAuth | None, where: str) -> bytes:
    """A data URL; a path on Label Studio (an uploaded file: /data/upload/...), fetched
    from YOLOV1_LABELSTUDIO_URL with its token; or a URL on an allowed host."""
    s = settings
    where = f"{where}.data"
    if ref.startswith("data:"):
        return decode_base64(ref, s.max_upload_bytes, where)
    fetch = {**fetch_limits(s), "where": where}
    if ref.startswith("/"):
        if studio is None:
            raise InputError(
                422,
                f"{where}: {ref!r} is a file on Label Studio; set YOLOV1_LABELSTUDIO_URL (and "
                "YOLOV1_LABELSTUDIO_API_KEY) so this backend can read it",
            )
        base = studio.base_url
        return await fetch_image(
            base + ref,
            allowed_hosts=[urlsplit(base).hostname or ""],
            headers=await studio.headers(),
            refused_hint=" (Label Studio refused YOLOV1_LABELSTUDIO_API_KEY: set a token of "
            "a user of that project, from Account & Settings)",
            **fetch,
        )
    return await fetch_image(ref, allowed_hosts=s.image_url_hosts, **fetch)
