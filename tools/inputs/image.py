"""An image with its identity: decoded pixels, content hash and where they came from."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from PIL import Image

IMAGE_ID_RE = re.compile(r"^img_[0-9a-f]{16}$")

Source = Literal["path", "url", "data", "id"]


def image_id(data: bytes) -> str:
    """Stable id of an image's original bytes."""
    return "img_" + hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class ImageInput:
    """An image as the model layers take it: pixels, content hash and source travel together.

    The hash keys the runtimes' caches (an encoded image is reused only for the same content);
    the URL lets an engine fetch the picture itself. Treat ``pixels`` as read-only.
    """

    pixels: Image.Image
    #: the content hash: the image_id of its bytes, or a hash of its pixels (``from_pixels``)
    hash: str
    #: the http(s) URL its bytes came from, if any
    url: str | None = None

    @classmethod
    def from_pixels(cls, image: Image.Image, url: str | None = None) -> ImageInput:
        """An image that did not come through the loader, known by a hash of its pixels."""
        digest = hashlib.blake2b(f"{image.mode}:{image.size}".encode(), digest_size=16)
        digest.update(image.tobytes())
        return cls(image, "px_" + digest.hexdigest(), url)

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.size


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded RGB image and where it came from. Treat ``image`` as read-only:
    the same object is shared through the store."""

    image: Image.Image
    image_id: str
    source: Source
    format: str
    #: the http(s) URL it was fetched from, when it was
    url: str | None = None

    @property
    def input(self) -> ImageInput:
        """The image with its identity, as the model layers take it."""
        return ImageInput(self.image, self.image_id, self.url)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def nbytes(self) -> int:
        return self.image.width * self.image.height * 3
