"""The one image decoder of the project: bytes -> lazily opened PIL image -> RGB, or BadImage saying why.

Staging validates every file with exactly these functions, so a staged dataset never holds an image the
trainer cannot decode. Opening only parses the header; pixels are decoded in `to_rgb`, which can first put
a JPEG in draft mode to decode it at reduced size. Every step that touches the file's data (header,
EXIF, draft, pixels, mode conversion) runs inside `_guard`, so corrupt data surfaces only as BadImage.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageFile, ImageOps

ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as image viewers show them
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that transpose the axes
# What PIL's plugins raise on corrupt or truncated data (UnidentifiedImageError is an OSError). MemoryError is
# left out on purpose: the pixel limit bounds what a file can make PIL allocate, so it means the host is out
# of memory, which must stop the run rather than pass as a bad file.
CORRUPT_DATA_ERRORS = (OSError, ValueError, SyntaxError, EOFError, SystemError, struct.error, IndexError,
                       TypeError, ZeroDivisionError)


class BadImage(Exception):
    """A file that is not a decodable image; the message is the reason, for logs and the manifest."""


@contextmanager
def _guard(problem: str) -> Iterator[None]:
    """Turn whatever PIL raises on bad data into BadImage("<problem> (<error>)")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
        try:
            yield
        except Image.DecompressionBombError as error:
            raise BadImage(f"decompression-bomb guard: {error} Raise UNMIX_MAX_IMAGE_PIXELS only if the "
                           "file is trusted") from error
        except CORRUPT_DATA_ERRORS as error:
            raise BadImage(f"{problem} ({type(error).__name__}: {error})") from error


def open_image_bytes(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header of an encoded image (no pixel decode yet); BadImage when it cannot be one.

    `max_pixels` is UNMIX_MAX_IMAGE_PIXELS (env.current().max_image_pixels), which callers read once per
    source or shard: this runs per image.
    """
    if not data:
        raise BadImage("empty file")
    # UNMIX_MAX_IMAGE_PIXELS, default PIL's own warning threshold (about 89 megapixels); ImageNet's largest
    # image is about a third of it. PIL refuses at twice its limit before we see the size: its limit is ours,
    # set here because this may be a fresh (spawned) worker process.
    limit = Image.MAX_IMAGE_PIXELS = max_pixels
    with _guard("not a readable image"):
        image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > limit:
        raise BadImage(f"decompression-bomb guard: {width}x{height} = {width * height} pixels is over the "
                       f"limit of {limit}; downscale the file or raise UNMIX_MAX_IMAGE_PIXELS")
    if width == 0 or height == 0:
        raise BadImage(f"image has no pixels ({width}x{height})")
    return image


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # PIL's convert("L") clips 16-bit values at 255 (a white image); scale the full range instead.
    values = np.asarray(image, dtype=np.uint32)
    return Image.fromarray((np.minimum(values, 65535) >> 8).astype(np.uint8), mode="L")


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """The image's size after EXIF orientation. Reading EXIF can decode (PNG keeps it after the pixels)."""
    with _guard("corrupt EXIF or image data"):
        orientation = image.getexif().get(0x0112, 1)
    width, height = image.size
    return (height, width) if orientation in SWAPPED_ORIENTATIONS else (width, height)


def to_rgb(image: Image.Image, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode the pixels, apply the EXIF orientation and convert any mode to 8-bit RGB.

    `draft_size` lets a JPEG decode at the smallest reduced scale that is no smaller than that size.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; truncated files would pass as valid")
    if draft_size is not None and image.format == "JPEG":
        with _guard("corrupt JPEG header"):
            image.draft("RGB", draft_size)
    with _guard("truncated or corrupt image data"):
        image.load()
        return _convert_to_rgb(ImageOps.exif_transpose(image) or image)


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(image).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def decode(data: bytes, max_pixels: int, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Bytes -> RGB image (see `open_image_bytes` for `max_pixels`, `to_rgb` for `draft_size`)."""
    return to_rgb(open_image_bytes(data, max_pixels), draft_size)
