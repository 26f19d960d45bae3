"""The Label Studio ML backend protocol (label_studio_ml/api.py): which control and
image a project's labelling config names, where a task's image comes from, how this
backend signs in to Label Studio to read it, and detections as ``RectangleLabels``
results in percent of the image."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import httpx

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
