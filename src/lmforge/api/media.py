"""Images and videos in chat requests: OpenAI's `image_url` content parts (and `video_url`), read safely.

An image comes as a base64 data URI (`data:image/png;base64,...`), as the openai client sends a
local file. A server path (`/srv/images/cat.png` or `file:///srv/images/cat.png`) is read only
when `API_MEDIA_DIR` is set and the resolved path lies inside it; links that lead outside are
refused too. Remote `http(s)` URLs are never fetched: the server makes no requests on a client's
behalf. Each image is at most `API_MAX_IMAGE_BYTES` bytes and `API_MAX_IMAGE_PIXELS` pixels
(checked from its header, before it is decoded), and a request carries at most `API_MAX_IMAGES`
files. Every refusal is a 400 naming the content part.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lmforge.api.errors import ApiError
from lmforge.api.settings import ApiSettings

PART_KINDS = {"image_url": "images", "video_url": "videos"}


class MediaCollector:
    """The files of one request, in the order of their content parts, checked against the settings."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.images: list[Any] = []
        self.videos: list[Any] = []

    def add(self, part: dict[str, Any], param: str) -> str:
        """Read one `image_url`/`video_url` part; return the kind (`images` or `videos`)."""
        kind = PART_KINDS[part["type"]]
        if len(self.images) + len(self.videos) >= self.settings.max_images:
            raise ApiError(400, f"{param}: a request may carry at most {self.settings.max_images} images and videos "
                                "(API_MAX_IMAGES).", param=param)
        value = part.get(part["type"])
        url = value.get("url") if isinstance(value, dict) else value
        if not isinstance(url, str) or not url:
            raise ApiError(400, f"{param}.{part['type']}.url must be a string: a data URI "
                                "(data:image/png;base64,...) or a file path on the server.", param=param)
        if kind == "images":
            self.images.append(self._image(url, f"{param}.{part['type']}"))
        else:
            self.videos.append(self._local(url, f"{param}.{part['type']}", kind))
        return kind

    def _image(self, url: str, param: str) -> Any:
        if url.startswith("data:"):
            data = _data_uri(url, param, self.settings.max_image_bytes)
            self._check_picture(io.BytesIO(data), param)
            return {"bytes": data}
        path = self._local(url, param, "images")
        self._check_picture(path, param)
        return path

    def _local(self, url: str, param: str, kind: str) -> str:
        scheme = urlparse(url).scheme.lower()
        if scheme in ("http", "https", "ftp"):
            raise ApiError(400, f"{param}: the server does not fetch remote URLs; send the file as a base64 data URI "
                                "(data:image/png;base64,...).", param=param)
        if scheme == "data" and kind == "videos":
            raise ApiError(400, f"{param}: videos are read from files on the server (API_MEDIA_DIR), not data URIs.",
                           param=param)
        if scheme not in ("", "file"):
            raise ApiError(400, f"{param}: unsupported URL scheme '{scheme}'; use a data URI or a file path.",
                           param=param)
        root = self.settings.media_dir
        if root is None:
            raise ApiError(400, f"{param}: this server reads no files from its disk (API_MEDIA_DIR is not set); send "
                                "the image as a base64 data URI.", param=param)
        raw = unquote(urlparse(url).path) if scheme == "file" else url
        base = Path(root).resolve()
        path = (base / raw).resolve()  # an absolute `raw` stays absolute
        if path != base and base not in path.parents:
            raise ApiError(400, f"{param}: '{raw}' is outside the folder this server may read (API_MEDIA_DIR).",
                           param=param)
        if not path.is_file():
            raise ApiError(400, f"{param}: the file '{raw}' does not exist in API_MEDIA_DIR.", param=param)
        size = path.stat().st_size
        if size > self.settings.max_image_bytes:
            raise ApiError(400, f"{param}: the file is {size} bytes; this server takes at most "
                                f"{self.settings.max_image_bytes} (API_MAX_IMAGE_BYTES).", param=param)
        return os.fspath(path)

    def _check_picture(self, source: Any, param: str) -> None:
        """Refuse an unreadable image, or one with too many pixels, from its header alone."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(source) as picture:
                width, height = picture.size
        except UnidentifiedImageError:
            raise ApiError(400, f"{param}: not a readable image (an unknown format, or damaged data).",
                           param=param) from None
        except (OSError, Image.DecompressionBombError) as err:
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ApiError(400, f"{param}: not a readable image ({detail}).", param=param) from None
        if width * height > self.settings.max_image_pixels:
            raise ApiError(400, f"{param}: the image is {width}x{height} pixels; this server takes at most "
                                f"{self.settings.max_image_pixels} pixels (API_MAX_IMAGE_PIXELS).", param=param)


def _data_uri(url: str, param: str, limit: int) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise ApiError(400, f"{param}: a data URI must be base64 encoded: data:image/png;base64,<data>.", param=param)
    if not header[5:].startswith("image/"):
        raise ApiError(400, f"{param}: the data URI holds '{header[5:-7]}', not an image.", param=param)
    if len(payload) * 3 // 4 > limit + 3:  # refuse before decoding
        raise ApiError(400, f"{param}: the image is over {limit} bytes (API_MAX_IMAGE_BYTES).", param=param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}: the data URI's base64 payload is not valid.", param=param) from None
    if len(data) > limit:
        raise ApiError(400, f"{param}: the image is {len(data)} bytes; this server takes at most {limit} "
                            "(API_MAX_IMAGE_BYTES).", param=param)
    return data
