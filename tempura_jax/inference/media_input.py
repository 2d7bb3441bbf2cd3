"""Media named in an OpenAI-style request, made into a local video file or
frame folder the data pipeline reads, under a policy the server sets:

- `data:` URLs with base64 mp4/webm (video) or jpeg/png (image) payloads;
- `file://` URLs and plain paths, only inside the media root (symlinks and
  `..` resolved first, so nothing outside it can be named);
- http(s), only when remote media is allowed, read up to the byte limit.

Each failure is a `RequestError` whose message says which part and why.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import shutil
import urllib.parse
from pathlib import Path

from PIL import Image, UnidentifiedImageError

VIDEO_TYPES = {"video/mp4": ".mp4", "video/webm": ".webm"}
IMAGE_TYPES = {"image/jpeg": ".jpg", "image/jpg": ".jpg", "image/png": ".png"}
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w-]+=[^;,]*)*)(;base64)?,(.*)$", re.S)


class RequestError(ValueError):
    """A bad request: the server answers 400 with this message."""


@dataclasses.dataclass(frozen=True)
class MediaPolicy:
    root: Path | None = None  # local paths must resolve inside it; None: no local paths
    allow_remote: bool = False
    max_bytes: int = 64 << 20  # per remote download
    timeout_s: float = 30.0


def _kinds(kind: str) -> dict[str, str]:
    return VIDEO_TYPES if kind == "video" else IMAGE_TYPES


def _decode_data_url(url: str, kind: str, where: str) -> tuple[bytes, str]:
    m = _DATA_URL.match(url)
    if not m:
        raise RequestError(f"{where}: malformed data: URL")
    mime, _, is_b64, payload = m.groups()
    mime = (mime or "").lower()
    if mime not in _kinds(kind):
        raise RequestError(f"{where}: data: URL type {mime or 'none'!r}; expected one of "
                           f"{', '.join(sorted(_kinds(kind)))}")  # fmt: skip
    if not is_b64:
        raise RequestError(f"{where}: data: URL must be base64-encoded")
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{where}: garbage base64 in the data: URL ({e})") from None
    if not raw:
        raise RequestError(f"{where}: empty data: URL")
    return raw, _kinds(kind)[mime]


def _local_path(url: str, policy: MediaPolicy, where: str) -> Path:
    if url.startswith("file://"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise RequestError(f"{where}: file:// URL names host {parsed.netloc!r}")
        text = urllib.parse.unquote(parsed.path)
    else:
        text = url
    if policy.root is None:
        raise RequestError(f"{where}: local media paths need the server's --media-root")
    root = policy.root.resolve()
    path = Path(text)
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root):
        raise RequestError(f"{where}: {text} is outside the media root")
    if not path.exists():
        raise RequestError(f"{where}: media not found: {text}")
    return path


def _download(url: str, kind: str, policy: MediaPolicy, where: str) -> tuple[bytes, str]:
    import httpx

    if not policy.allow_remote:
        raise RequestError(f"{where}: remote media is off (start the server with "
                           "--allow-remote-media)")  # fmt: skip
    chunks, size = [], 0
    try:
        with httpx.stream("GET", url, timeout=policy.timeout_s, follow_redirects=True) as r:
            if r.status_code != 200:
                raise RequestError(f"{where}: {url} answered HTTP {r.status_code}")
            mime = r.headers.get("content-type", "").split(";")[0].strip().lower()
            for chunk in r.iter_bytes():
                size += len(chunk)
                if size > policy.max_bytes:
                    raise RequestError(f"{where}: {url} is over the limit "
                                       f"max_request_bytes={policy.max_bytes}")  # fmt: skip
                chunks.append(chunk)
    except httpx.HTTPError as e:
        raise RequestError(f"{where}: could not fetch {url} ({e})") from None
    suffix = _kinds(kind).get(mime) or Path(urllib.parse.urlparse(url).path).suffix.lower()
    if suffix not in set(_kinds(kind).values()):
        raise RequestError(f"{where}: {url} is {mime or 'of unknown type'}, not a {kind}")
    return b"".join(chunks), suffix


def _check_image(path: Path, where: str) -> None:
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise RequestError(f"{where}: undecodable image ({e})") from None


def fetch_video(url: str, policy: MediaPolicy, workdir: Path, where: str) -> Path:
    """A local video file (or frame folder, for a path under the root)."""
    if url.startswith("data:"):
        raw, suffix = _decode_data_url(url, "video", where)
    elif url.startswith(("http://", "https://")):
        raw, suffix = _download(url, "video", policy, where)
    else:
        return _local_path(url, policy, where)
    out = workdir / f"video{suffix}"
    out.write_bytes(raw)
    return out


def fetch_images(urls: list[str], policy: MediaPolicy, workdir: Path, wheres: list[str]) -> Path:
    """A frame folder of the images in order (`0.png`, `1.jpg`, ...), read
    at the data config's folder_fps like any VER frame folder."""
    folder = workdir / "frames"
    folder.mkdir()
    for i, (url, where) in enumerate(zip(urls, wheres, strict=True)):
        if url.startswith("data:"):
            raw, suffix = _decode_data_url(url, "image", where)
        elif url.startswith(("http://", "https://")):
            raw, suffix = _download(url, "image", policy, where)
        else:
            src = _local_path(url, policy, where)
            suffix = src.suffix.lower()
            if src.is_dir() or suffix not in set(IMAGE_TYPES.values()) | {".jpeg"}:
                raise RequestError(f"{where}: {url} is not a .jpg or .png image")
            shutil.copyfile(src, folder / f"{i}{suffix}")
            _check_image(folder / f"{i}{suffix}", where)
            continue
        (folder / f"{i}{suffix}").write_bytes(raw)
        _check_image(folder / f"{i}{suffix}", where)
    return folder
