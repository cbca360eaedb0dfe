"""The one image decoder of the project: bytes -> lazily opened PIL image -> RGB, or BadImage saying why.

Staging validates every file with exactly these functions, so a staged dataset never holds an image the
trainer cannot decode. Opening only parses the header; pixels are decoded in `to_rgb`, which lets a caller
call JPEG `draft()` in between and decode at reduced size.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff",
                              ".webp", ".gif"})
# PIL's own warning threshold (about 89 megapixels); ImageNet's largest image is about a third of it.
MAX_IMAGE_PIXELS = int(os.environ.get("UNMIX_MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS or 89_478_485))
# PIL refuses at twice its limit before we see the size: keep its limit tied to ours so the env var works.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as image viewers show them
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class BadImage(Exception):
    """A file that is not a decodable image; the message is the reason, for logs and the manifest."""


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def open_image_bytes(data: bytes) -> Image.Image:
    """Parse the header of an encoded image (no pixel decode yet); BadImage when it cannot be one."""
    if not data:
        raise BadImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise BadImage(f"decompression-bomb guard: {error} Raise UNMIX_MAX_IMAGE_PIXELS only if the "
                           "file is trusted") from error
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            raise BadImage(f"not a readable image ({type(error).__name__}: {error})") from error
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImage(f"decompression-bomb guard: {width}x{height} = {width * height} pixels is over the "
                       f"limit of {MAX_IMAGE_PIXELS}; downscale the file or raise UNMIX_MAX_IMAGE_PIXELS")
    if width == 0 or height == 0:
        raise BadImage(f"image has no pixels ({width}x{height})")
    return image


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # PIL's convert("L") clips 16-bit values at 255 (a white image); scale the full range instead.
    values = np.asarray(image, dtype=np.uint32)
    return Image.fromarray((np.minimum(values, 65535) >> 8).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Decode the pixels, apply the EXIF orientation and convert any mode to 8-bit RGB."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; truncated files would pass as valid")
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, EOFError, SystemError) as error:
        raise BadImage(f"truncated or corrupt image data ({type(error).__name__}: {error})") from error
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


def decode(data: bytes, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Bytes -> RGB image. `draft_size` lets JPEG decode at a reduced scale no smaller than that size."""
    image = open_image_bytes(data)
    if draft_size is not None and image.format == "JPEG":
        image.draft("RGB", draft_size)
    return to_rgb(image)
