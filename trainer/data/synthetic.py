"""Builtin generated datasets: small labelled ImageFolders for tests, the demo and the acceptance check.

`builtin:shapes`: the class of an image is the kind of shape it shows (and, past the first ten classes,
whether the shape is filled with stripes). Everything else is a random nuisance drawn the same way for every
class: shape colour, size, rotation and position, background gradient, clutter lines and pixel noise. Raw
pixel statistics (and so a random network) are dominated by the nuisances; a model that learned invariance
to colour and geometry separates the classes by outline. A CNN learns outlines slowly: a few CPU minutes of supervised
training reach 24 to 43% on six classes (measured), so self-supervised learning cannot show in a short run here.

`builtin:textures`: the class is the pattern that fills the whole image (blobs, stripes, checks, dots, grid,
waves); its period, orientation and phase are random, and its two phases take their colours from two
smooth random colour fields (one light, one dark) that vary across the image. Every crop shows the class,
so a short self-supervised run can learn it: the demo and `benchmarks/eval_acceptance.py` use it. A random
resnet_tiny is a strong baseline here (kNN 57-63%, linear 66-69% on 6 classes at 32 px, measured); the demo
beats it with multi-crop (README, "Known limits"). Per-image global hue, saturation, contrast and brightness
shifts (the nuisances SwAV's colour jitter covers) were tried and not kept: they pulled the random trunk to
36% kNN but 20 to 60 epochs of pretraining did not learn the invariance either (29 to 35% kNN).

Every image is a pure function of (kind, seed, split, class, n).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from trainer import storage
from trainer.errors import UserError
from trainer.seeding import derive_seed

SUPERSAMPLE = 2  # draw at 2x then downsample: anti-aliased edges without per-shape care
JPEG_QUALITY = 90
WRITE_BATCH = 256  # files per fsspec `pipe` call: concurrent PUTs on S3, bounded memory
# Nuisance ranges. Shapes fill a good part of the image and the clutter and noise stay mild, so that a small
# trunk learns the outlines in minutes on a CPU; random colours and positions still defeat raw pixels.
SHAPE_EXTENT = (0.3, 0.45)  # shape radius as a fraction of the image side
MAX_CLUTTER_LINES = 2
MAX_NOISE_STD = 4.0  # pixel noise std (0-255 scale), drawn per image from [0, MAX_NOISE_STD]

Polygon = list[tuple[float, float]]


def _regular(sides: int, phase: float = 0.0) -> Polygon:
    return [(math.cos(phase + 2 * math.pi * k / sides), math.sin(phase + 2 * math.pi * k / sides))
            for k in range(sides)]


def _star(points: int = 5, inner: float = 0.42) -> Polygon:
    return [((1.0 if k % 2 == 0 else inner) * math.cos(math.pi * k / points - math.pi / 2),
             (1.0 if k % 2 == 0 else inner) * math.sin(math.pi * k / points - math.pi / 2))
            for k in range(2 * points)]


# Outlines in unit coordinates (roughly inside the unit disc); ellipse-based kinds are drawn separately.
POLYGONS: dict[str, Polygon] = {
    "square": [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)],
    "triangle": _regular(3, -math.pi / 2),
    "star": _star(),
    "cross": [(-0.3, -0.95), (0.3, -0.95), (0.3, -0.3), (0.95, -0.3), (0.95, 0.3), (0.3, 0.3), (0.3, 0.95),
              (-0.3, 0.95), (-0.3, 0.3), (-0.95, 0.3), (-0.95, -0.3), (-0.3, -0.3)],
    "arrow": [(-0.95, -0.22), (0.15, -0.22), (0.15, -0.65), (0.95, 0.0), (0.15, 0.65), (0.15, 0.22),
              (-0.95, 0.22)],
    "lshape": [(-0.7, -0.9), (-0.2, -0.9), (-0.2, 0.4), (0.7, 0.4), (0.7, 0.9), (-0.7, 0.9)],
    "hourglass": [(-0.7, -0.9), (0.7, -0.9), (0.08, 0.0), (0.7, 0.9), (-0.7, 0.9), (-0.08, 0.0)],
}
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "crescent", "arrow", "lshape", "hourglass"]
FILLS = ["solid", "striped"]
MAX_CLASSES = len(SHAPES) * len(FILLS)


def class_names(num_classes: int) -> list[str]:
    """The first `num_classes` classes: the ten solid shapes, then the ten striped ones."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise UserError(f"builtin:shapes has 2 to {MAX_CLASSES} classes, not {num_classes}; "
                        f"pass --num_classes between 2 and {MAX_CLASSES}")
    kinds = [(fill, shape) for fill in FILLS for shape in SHAPES][:num_classes]
    return [shape if fill == "solid" else f"{fill}_{shape}" for fill, shape in kinds]


def _mask(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """The shape's silhouette (L mode, 255 inside) at a random scale, rotation, aspect and position."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    extent = rng.uniform(*SHAPE_EXTENT)  # the shape stays inside the image
    radius = size * extent
    cx, cy = (size * rng.uniform(extent, 1 - extent) for _ in range(2))
    angle = rng.uniform(0, 2 * math.pi)
    stretch = rng.uniform(0.85, 1.15)  # mild aspect change: shapes stay recognisable
    cos, sin = math.cos(angle), math.sin(angle)

    def place(x: float, y: float) -> tuple[float, float]:
        x, y = x * stretch * radius, y / stretch * radius
        return cx + cos * x - sin * y, cy + sin * x + cos * y

    def disc(x: float, y: float, r: float, value: int) -> None:
        px, py = place(x, y)
        draw.ellipse([px - r * radius, py - r * radius, px + r * radius, py + r * radius], fill=value)

    if shape == "circle":
        disc(0, 0, 0.9, 255)
    elif shape == "ring":
        disc(0, 0, 0.95, 255)
        disc(0, 0, 0.55, 0)
    elif shape == "crescent":
        disc(0, 0, 0.95, 255)
        disc(0.45, 0, 0.8, 0)
    else:
        draw.polygon([place(x, y) for x, y in POLYGONS[shape]], fill=255)
    return mask


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _contrasting(rng: np.random.Generator, against: np.ndarray) -> np.ndarray:
    """A random colour far enough from `against` that the shape stays visible."""
    for _ in range(20):
        colour = _colour(rng)
        if np.abs(colour - against).sum() > 180:
            return colour
    return 255.0 - against


def _downsample_with_noise(picture: Image.Image, image_size: int, rng: np.random.Generator) -> Image.Image:
    """The supersampled drawing at `image_size`, plus pixel noise of a std drawn from [0, MAX_NOISE_STD]."""
    small = np.asarray(picture.resize((image_size, image_size), Image.BILINEAR), dtype=np.float32)
    noisy = small + rng.normal(0, rng.uniform(0, MAX_NOISE_STD), size=small.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def render(class_name: str, image_size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of `class_name` with every nuisance drawn from `rng`."""
    size = image_size * SUPERSAMPLE
    fill, _, shape = class_name.rpartition("_")
    top, bottom = _colour(rng), _colour(rng)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    background = top * (1 - ramp) + bottom * ramp
    canvas = np.broadcast_to(background, (size, size, 3)).copy()
    if rng.random() < 0.5:  # gradient direction is a nuisance too
        canvas = canvas.transpose(1, 0, 2).copy()

    picture = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(rng.integers(0, MAX_CLUTTER_LINES + 1)):  # clutter: thin lines that belong to no class
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, size=4))
        draw.line([x0, y0, x1, y1], fill=tuple(int(c) for c in _colour(rng)), width=int(rng.integers(1, 3)))

    mean_background = (top + bottom) / 2
    foreground = np.empty((size, size, 3), dtype=np.float64)
    foreground[:] = _contrasting(rng, mean_background)
    if fill == "striped":
        period = rng.uniform(0.08, 0.14) * size
        phase = rng.uniform(0, 2 * math.pi)
        theta = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        stripes = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase) > 0
        foreground[stripes] = _contrasting(rng, foreground[0, 0])
    mask = _mask(shape, size, rng)
    picture.paste(Image.fromarray(foreground.astype(np.uint8)), (0, 0), mask)

    return _downsample_with_noise(picture, image_size, rng)


TEXTURES = ["blobs", "stripes", "checks", "dots", "grid", "waves"]
TEXTURE_PERIOD = (0.2, 0.3)  # pattern period as a fraction of the image side
COLOUR_GRID = 8  # each colour field interpolates random colours on an 8 x 8 grid: no colour spans a crop
LIGHT, DARK = (110, 255), (0, 145)  # channel ranges of the two colour fields (they overlap a little)


def texture_names(num_classes: int) -> list[str]:
    if not 2 <= num_classes <= len(TEXTURES):
        raise UserError(f"builtin:textures has 2 to {len(TEXTURES)} classes, not {num_classes}; "
                        f"pass --num_classes between 2 and {len(TEXTURES)}")
    return TEXTURES[:num_classes]


def _smooth_field(size: int, grid: int, low: float, high: float, channels: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Random values in [low, high] on a grid x grid lattice, bilinearly interpolated to size x size."""
    lattice = rng.uniform(low, high, size=(grid, grid, channels)).astype(np.uint8).squeeze()
    return np.asarray(Image.fromarray(lattice).resize((size, size), Image.BILINEAR), dtype=np.float64)


def _pattern(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The boolean mask of `texture` at a random period, orientation and phase."""
    if texture == "blobs":
        return _smooth_field(size, 4, 0, 255, 1, rng) > 128
    period = rng.uniform(*TEXTURE_PERIOD) * size
    theta = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cos, sin = math.cos(theta), math.sin(theta)
    u = (xx * cos + yy * sin) / period + rng.uniform(0, 1)  # pattern coordinates, in periods
    v = (yy * cos - xx * sin) / period + rng.uniform(0, 1)
    wave_u, wave_v = np.sin(2 * math.pi * u), np.sin(2 * math.pi * v)
    if texture == "stripes":
        return wave_u > 0
    if texture == "checks":
        return (wave_u > 0) ^ (wave_v > 0)
    if texture == "dots":
        return (wave_u > 0.5) & (wave_v > 0.5)
    if texture == "grid":
        return (wave_u > 0.7) | (wave_v > 0.7)
    if texture == "waves":
        return np.sin(2 * math.pi * (u + 0.25 * np.sin(math.pi * v))) > 0
    raise ValueError(f"unknown texture {texture!r}")


def render_texture(texture: str, image_size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of `texture`: the pattern's two phases coloured by a light and a dark colour field."""
    size = image_size * SUPERSAMPLE
    light = _smooth_field(size, COLOUR_GRID, *LIGHT, 3, rng)
    dark = _smooth_field(size, COLOUR_GRID, *DARK, 3, rng)
    picture = np.where(_pattern(texture, size, rng)[..., None], light, dark).astype(np.uint8)
    return _downsample_with_noise(Image.fromarray(picture), image_size, rng)


Renderer = Callable[[str, int, np.random.Generator], Image.Image]
# kind -> (class names for a class count, renderer of one image)
KINDS: dict[str, tuple[Callable[[int], list[str]], Renderer]] = {
    "shapes": (class_names, render),
    "textures": (texture_names, render_texture),
}
BUILTIN_PREFIX = "builtin:"  # `--source builtin:<kind>` generates the dataset instead of reading one
BUILTIN_SOURCES = [f"{BUILTIN_PREFIX}{kind}" for kind in KINDS]


def _images(render_image: Renderer, dest_url: str, split: str, classes: list[str], per_class: int,
            image_size: int, seed: int) -> Iterator[tuple[str, bytes]]:
    split_id = {"train": 0, "val": 1}[split]
    for label, name in enumerate(classes):
        for n in range(per_class):
            rng = np.random.default_rng(derive_seed(seed, split_id, label, n))
            buffer = io.BytesIO()
            render_image(name, image_size, rng).save(buffer, format="JPEG", quality=JPEG_QUALITY)
            yield storage.join(dest_url, split, name, f"{n:05d}.jpg"), buffer.getvalue()


def _write_all(files: Iterator[tuple[str, bytes]], dest_url: str) -> None:
    fs, _ = storage.filesystem(dest_url)
    batch: dict[str, bytes] = {}

    def flush() -> None:
        paths = {storage.filesystem(url)[1]: data for url, data in batch.items()}
        storage.with_retries(lambda: fs.pipe(paths), f"writing {len(paths)} images under {dest_url}")
        batch.clear()

    for url, data in files:
        batch[url] = data
        if len(batch) >= WRITE_BATCH:
            flush()
    if batch:
        flush()


def make_generated(kind: str, dest_url: str, num_classes: int = 10, train_per_class: int = 60,
                   val_per_class: int = 20, image_size: int = 64, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> None:
    """Write `builtin:<kind>` as `dest/train/<class>/<n>.jpg` and `dest/val/<class>/<n>.jpg` to any fsspec URL."""
    if kind not in KINDS:
        raise UserError(f"{BUILTIN_PREFIX}{kind} is not a generated dataset; choose one of: "
                        f"{', '.join(BUILTIN_SOURCES)}")
    if image_size < 16:
        raise UserError(f"builtin:{kind} needs --image_size of at least 16 px, not {image_size}")
    if train_per_class < 1 or val_per_class < 0:
        raise UserError(f"builtin:{kind} needs at least 1 training image per class and no negative counts")
    names, render_image = KINDS[kind]
    classes = names(num_classes)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        if storage.is_local(dest_url):
            for name in classes:
                storage.makedirs(storage.join(dest_url, split, name))
        _write_all(_images(render_image, dest_url, split, classes, per_class, image_size, seed), dest_url)
        if progress:
            progress(f"builtin:{kind}: wrote {per_class * len(classes)} {split} images to {dest_url}/{split}")


def make_shapes(dest_url: str, num_classes: int = 10, train_per_class: int = 60, val_per_class: int = 20,
                image_size: int = 64, seed: int = 0, progress: Callable[[str], None] | None = None) -> None:
    make_generated("shapes", dest_url, num_classes, train_per_class, val_per_class, image_size, seed, progress)
