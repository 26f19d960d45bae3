"""Where an image in a JSON request comes from: base64 text, a ``data:`` URL, or (only
when the operator lists hosts) an http(s) URL the server fetches.

Fetching what a request names is server-side request forgery waiting to happen: a
URL can point at cloud metadata (169.254.169.254), an admin port on localhost or a
host inside the network. So URLs are off by default; when on, only listed hosts are
fetched, redirects are followed by hand and only to a listed host of the same name,
and the body is read within a size and time limit."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from app.errors import InputError
from app.limits import read_capped

DATA_URL = re.compile(r"^data:([\w/+.-]*)((?:;[\w=.-]+)*?)(;base64)?,", re.IGNORECASE)


def decode_base64(text: str, limit: int, where: str = "base64") -> bytes:
    """Base64 (standard or URL-safe alphabet, padding optional) or a ``data:`` URL -> bytes."""
    if text.startswith("data:"):
        return data_url_bytes(text, limit, where)
    if len(text) > limit * 4 // 3 + 4:
        raise InputError(413, f"{where}: the image exceeds the limit of {limit} bytes")
    s = "".join(text.split())  # line breaks, as MIME base64 has them
    s = s.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(422, f"{where} is not valid base64: {exc}") from exc
    if not data:
        raise InputError(422, f"{where} is empty")
    return data


def data_url_bytes(url: str, limit: int, where: str = "url") -> bytes:
    m = DATA_URL.match(url)
    if m is None:
        raise InputError(422, f"{where}: malformed data URL (want data:image/...;base64,...)")
    if not m.group(3):
        raise InputError(422, f"{where}: a data URL must be base64 (';base64,')")
    return decode_base64(url[m.end() :], limit, where)


def fetch_limits(settings: Any) -> dict[str, Any]:
    """``fetch_image``'s bounds from the service's settings."""
    return {
        "limit": settings.max_upload_bytes,
        "timeout_s": settings.image_url_timeout_s,
        "max_redirects": settings.image_url_max_redirects,
    }


def host_allowed(host: str, allowed: list[str]) -> bool:
    """``allowed`` holds exact host names, or ``.example.com`` for its subdomains."""
    host = host.lower().rstrip(".")
    for a in (a.lower() for a in allowed):
        if host == a or (a.startswith(".") and host.endswith(a)):
            return True
    return False


async def fetch_image(
    url: str,
    *,
    allowed_hosts: list[str],
    limit: int,
    timeout_s: float,
    max_redirects: int,
    where: str = "url",
    headers: dict[str, str] | None = None,
    refused_hint: str = "",
) -> bytes:
    """GET an image from an allowlisted host; every failure is a 422 that says why
    (``refused_hint`` is added where the host answers 401 or 403)."""
    if url.startswith("data:"):
        return data_url_bytes(url, limit, where)
    if len(url) > 4096:
        raise InputError(422, f"{where}: a URL of over 4096 characters")
    if not allowed_hosts:
        raise InputError(
            422,
            f"{where}: image URLs are off on this server (set YOLOV1_IMAGE_URL_HOSTS to "
            "the hosts it may fetch from); send the image as base64 instead",
        )
    try:
        # The whole fetch, redirects and a slow trickle of bytes included, in timeout_s.
        async with (
            asyncio.timeout(timeout_s),
            httpx.AsyncClient(follow_redirects=False, timeout=timeout_s, headers=headers) as client,
        ):
            for _ in range(max_redirects + 1):
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise InputError(422, f"{where}: only http(s) URLs with a host are fetched")
                if not host_allowed(parts.hostname, allowed_hosts):
                    raise InputError(
                        422, f"{where}: host {parts.hostname!r} is not in YOLOV1_IMAGE_URL_HOSTS"
                    )
                async with client.stream("GET", url) as r:
                    if r.is_redirect:
                        nxt = urljoin(url, r.headers.get("location", ""))
                        if urlsplit(nxt).hostname != parts.hostname:
                            raise InputError(
                                422,
                                f"{where}: redirected to another host "
                                f"({urlsplit(nxt).hostname!r}); not followed",
                            )
                        url = nxt
                        continue
                    if r.status_code != 200:
                        hint = refused_hint if r.status_code in (401, 403) else ""
                        msg = f"{where}: the image host answered {r.status_code}{hint}"
                        raise InputError(422, msg)
                    too_large = InputError(413, f"{where}: the image exceeds {limit} bytes")
                    length = r.headers.get("content-length", "")
                    if length.isdigit() and int(length) > limit:
                        raise too_large
                    return await read_capped(r.aiter_bytes(), limit, too_large)
            raise InputError(422, f"{where}: more than {max_redirects} redirects")
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise InputError(422, f"{where}: no image within {timeout_s} s") from exc
    except httpx.HTTPError as exc:
        raise InputError(422, f"{where}: could not fetch the image: {exc}") from exc
