"""What the `planted_folder` fixture plants (a plain module: test folders import it by name, which a
conftest.py cannot offer, every folder's conftest sharing that module name)."""

from __future__ import annotations


def encoded(image, fmt: str, **options) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb as far as the header says."""
    import struct
    import zlib

    from PIL import Image

    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8  # after the PNG signature: length(4) type(4) payload(13) crc(4)
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21:ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4:ihdr + 21])))
    return bytes(data)


# Files planted in `planted_folder`: the undecodable ones, and the odd-but-valid ones with the checks a
# decoder must pass on them.
PLANTED_BAD = {"cats/truncated.jpg", "cats/empty.jpg", "dogs/notes.jpg", "dogs/huge.png"}
PLANTED_IGNORED = {".DS_Store", "cats/.hidden.jpg", "cats/README.txt", "dogs/._resource.jpg", "top.jpg"}
