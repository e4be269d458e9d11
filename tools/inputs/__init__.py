"""What comes in: images from paths, URLs, data: URIs and image ids, safely.

This is the one place that turns a user's image reference into a decoded RGB
picture. It knows nothing of MCP or terminals: adapters catch ``VlmError`` and
print its message. Everything here assumes the reference may be hostile: paths
that escape the allowed folders, URLs that point into the local network, bodies
that never end, files that claim a billion pixels.

The package's modules, by what they do: ``policy`` (what may be read, and the caps),
``image`` (an image with its identity), ``store`` (decoded images by id), ``decode``
(bytes to pixels), ``files`` (local files and data: URIs), ``fetch`` (URLs), ``loader``
(references to images), ``shown`` (how a reference is quoted in a message).
"""

from __future__ import annotations

from .decode import decode_image
from .image import IMAGE_ID_RE, ImageInput, LoadedImage, image_id
from .loader import ImageLoader
from .policy import AccessPolicy, Limits
from .store import ImageStore

__all__ = [
    "IMAGE_ID_RE",
    "AccessPolicy",
    "ImageInput",
    "ImageLoader",
    "ImageStore",
    "Limits",
    "LoadedImage",
    "decode_image",
    "image_id",
]
